// Range decoding that gives exactly constriction's symbols (constriction 0.5, Bamler 2022:
// https://github.com/bamler-lab/constriction), written from its documented algorithm for the
// models onic uses: RangeDecoder<u32 words, u64 state>, 24-bit probabilities,
// Categorical(probabilities, perfect=False) and Uniform(size).
//
// Only point − lower (mod 2^64) matters to a decoder, so the state is that difference d and
// the range, each held as two 32-bit halves in plain numbers: no BigInt in the inner loop.
// Every intermediate value is an integer below 2^53, so each step is exact.

const PRECISION = 24;
const ONE = 2 ** PRECISION;
const W = 2 ** 32;

/** constriction's Categorical(p, perfect=False): the fixed-point CDF (length n + 1) of float probabilities. */
export function categoricalCdf(probabilities) {
  const n = probabilities.length;
  if (n < 2 || n >= ONE - 1) throw new Error("a categorical model needs 2 to 2^24 - 2 entries");
  let total = 0;
  for (let i = 0; i < n; i++) total += probabilities[i]; // sequential, as Rust's Iterator::sum
  if (!(total > 0) || !Number.isFinite(total)) throw new Error("probabilities must have a positive sum");
  const scale = (ONE - n) / total;
  const cdf = new Uint32Array(n + 1);
  let cumulative = 0;
  for (let i = 0; i < n; i++) {
    cdf[i] = Math.floor(cumulative * scale) + i; // float → u32 truncates; every entry keeps ≥ 1 slot
    cumulative += probabilities[i];
  }
  cdf[n] = ONE;
  return cdf;
}

export class RangeDecoder {
  /** words: Uint32Array of the compressed stream (constriction's get_compressed()). */
  constructor(words) {
    this.words = words;
    this.pos = 0;
    // point = the first two words (missing ones read as zeros); lower = 0; range = 2^64 − 1.
    this.dHi = this.next();
    this.dLo = this.next();
    this.rHi = W - 1;
    this.rLo = W - 1;
  }

  next() {
    return this.pos < this.words.length ? this.words[this.pos++] : (this.pos++, 0);
  }

  /** scale = range >> 24 as a number (< 2^40) and quantile = floor(d / scale), exact. */
  quantile() {
    const scale = this.rHi * 256 + Math.floor(this.rLo / ONE);
    let q = Math.floor((this.dHi * W + this.dLo) / scale); // within one of the truth
    // rem = d − q·scale, computed mod 2^48 (it lies in (−2^41, 2^41), so that is exact).
    const s1 = Math.floor(scale / ONE), s0 = scale % ONE;
    const M48 = 2 ** 48;
    const dMod = (this.dHi % 65536) * W + this.dLo;
    const pMod = (q * s0 + ((q * s1) % ONE) * ONE) % M48;
    let rem = (dMod - pMod) % M48;
    if (rem >= M48 / 2) rem -= M48;
    else if (rem < -M48 / 2) rem += M48;
    if (rem < 0) { q -= 1; rem += scale; } else if (rem >= scale) { q += 1; rem -= scale; }
    if (q >= ONE) throw new Error("invalid data (quantile out of range)");
    this._scale = scale;
    this._rem = rem;
    return q;
  }

  /** After quantile(): d −= scale·cumulative, range = scale·probability, then renormalize. */
  advance(q, cumulative, probability) {
    const scale = this._scale;
    [this.dHi, this.dLo] = mulAdd(q - cumulative, scale, this._rem);
    [this.rHi, this.rLo] = mulAdd(probability, scale, 0);
    if (this.rHi === 0) {
      // range < 2^32: shift in one word (d < range, so nothing spills over the top)
      this.rHi = this.rLo;
      this.rLo = 0;
      this.dHi = this.dLo;
      this.dLo = this.next();
    }
  }

  /** Decode count symbols of one categorical CDF into out[at..at+count) (0-based symbol indices). */
  decodeCategorical(cdf, count, out, at = 0) {
    const n = cdf.length - 1;
    for (let i = 0; i < count; i++) {
      const q = this.quantile();
      let lo = 0, hi = n; // the largest s with cdf[s] <= q
      while (hi - lo > 1) {
        const mid = (lo + hi) >>> 1;
        if (cdf[mid] <= q) lo = mid; else hi = mid;
      }
      this.advance(q, cdf[lo], cdf[lo + 1] - cdf[lo]);
      out[at + i] = lo;
    }
  }

  /** One symbol of constriction's Uniform(size) (2 ≤ size ≤ 2^24). */
  decodeUniform(size) {
    const per = Math.floor(ONE / size);
    const last = size - 1;
    const q = this.quantile();
    const guess = Math.floor(q / per);
    if (guess < last) {
      this.advance(q, guess * per, per);
      return guess;
    }
    this.advance(q, last * per, ONE - last * per);
    return last;
  }
}

/** x·s + r as (high, low) 32-bit halves, for x ≤ 2^24, s < 2^40, r < 2^40 and a result < 2^64. */
function mulAdd(x, s, r) {
  const s1 = Math.floor(s / ONE), s0 = s % ONE; // s = s1·2^24 + s0
  const a = x * s0 + (r % W); // < 2^49
  const b = x * s1; // < 2^40; contributes b·2^24
  const t = a + (b % 256) * ONE; // < 2^50
  const lo = t % W;
  const hi = Math.floor(t / W) + Math.floor(b / 256) + Math.floor(r / W);
  return [hi, lo];
}
