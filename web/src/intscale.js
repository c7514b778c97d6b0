// The integer scale path: ẑ → scale-table indexes, bit-exact with codec/intscale.py (index path
// version 2; Ballé, Johnston & Minnen, "Integer networks for data compression with
// latent-variable models", ICLR 2019). docs/FORMAT.md defines every step.
//
// Activations are integers held in Float64Arrays: every product and partial sum of a real file
// is an integer below 2^53 (the reason for the format's bit limits), where float64 arithmetic is
// exact in any order. Rescaling splits its product so that it stays exact too.

export const INDEX_PATH_VERSION = 2;
const ACT_MAX = 2 ** 15 - 1;
const LEAKY_NUM = 41, LEAKY_SHIFT = 12;
const Z_INV_BITS = 12, Z_INV_MAX = 2 ** 16 - 1, X_MAX = 2 ** 30 - 1;
const ACC_MAX = 2 ** 47;
const T24 = 2 ** 24;
const BAND = 16, BAND_MARGIN = 2; // rows of z per band, and of context per side
export { Z_INV_BITS };

/** A (C, H, W) tensor of integers. */
export class Planes {
  constructor(c, h, w, data = new Float64Array(c * h * w)) {
    this.c = c; this.h = h; this.w = w; this.data = data;
  }
}

function padded(x, p) {
  const hp = x.h + 2 * p, wp = x.w + 2 * p;
  const out = new Float64Array(x.c * hp * wp);
  for (let c = 0; c < x.c; c++) {
    for (let y = 0; y < x.h; y++) {
      const src = (c * x.h + y) * x.w;
      out.set(x.data.subarray(src, src + x.w), (c * hp + y + p) * wp + p);
    }
  }
  return { data: out, hp, wp };
}

/**
 * acc[j] += Σ_taps w_t · xp[src_t + j] for j < n, four output channels at a time: one long loop
 * over the flattened padded plane per tap (the padding columns compute values nobody reads).
 */
function accumulateTaps(acc, accOffsets, xp, taps, n) {
  // taps: [srcOffset, w0, w1, w2, w3] per (input channel, tap); accOffsets: four output planes
  const [o0, o1, o2, o3] = accOffsets;
  for (const [src, w0, w1, w2, w3] of taps) {
    for (let j = 0; j < n; j++) {
      const v = xp[src + j];
      acc[o0 + j] += w0 * v;
      acc[o1 + j] += w1 * v;
      acc[o2 + j] += w2 * v;
      acc[o3 + j] += w3 * v;
    }
  }
}

/** Exact Conv2d, stride 1, padding k//2: w (O, C, k, k) as a flat array with its shape. */
export function conv2d(x, w) {
  const [o, c, k] = w.shape;
  const p = k >> 1;
  const { data: xp, hp, wp } = padded(x, p);
  const h = x.h, wd = x.w, n = h * wp;
  const acc = new Float64Array(4 * n);
  const out = new Planes(o, h, wd);
  for (let o0 = 0; o0 < o; o0 += 4) {
    acc.fill(0);
    const taps = [];
    for (let ic = 0; ic < c; ic++) {
      for (let ky = 0; ky < k; ky++) {
        for (let kx = 0; kx < k; kx++) {
          const ws = [0, 1, 2, 3].map((d) => (o0 + d < o ? w.data[(((o0 + d) * c + ic) * k + ky) * k + kx] : 0));
          if (ws.some((v) => v !== 0)) taps.push([(ic * hp + ky) * wp + kx, ...ws]);
        }
      }
    }
    accumulateTaps(acc, [0, n, 2 * n, 3 * n], xp, taps, n);
    for (let d = 0; d < 4 && o0 + d < o; d++) {
      for (let y = 0; y < h; y++) {
        out.data.set(acc.subarray(d * n + y * wp, d * n + y * wp + wd), ((o0 + d) * h + y) * wd);
      }
    }
  }
  return out;
}

/** Exact ConvTranspose2d, stride 2, padding k//2, output padding 1: w (C, O, k, k) → (O, 2H, 2W).
 * Per output phase (polyphase, as codec/intscale.py): no work on inserted zeros. */
export function convTranspose2d(x, w) {
  const [c, o, k] = w.shape;
  const p = k >> 1, pad = p;
  const { data: xp, hp, wp } = padded(x, pad);
  const h = x.h, wd = x.w, ow = 2 * wd, n = h * wp;
  const acc = new Float64Array(4 * n);
  const out = new Planes(o, 2 * h, ow);
  for (let ry = 0; ry < 2; ry++) {
    for (let rx = 0; rx < 2; rx++) {
      for (let o0 = 0; o0 < o; o0 += 4) {
        acc.fill(0);
        const taps = [];
        for (let ky = 0; ky < k; ky++) {
          if ((ry - ky + p) % 2 !== 0) continue;
          const dy = (ry - ky + p) / 2;
          for (let kx = 0; kx < k; kx++) {
            if ((rx - kx + p) % 2 !== 0) continue;
            const dx = (rx - kx + p) / 2;
            for (let ic = 0; ic < c; ic++) {
              const ws = [0, 1, 2, 3].map((d) => (o0 + d < o ? w.data[((ic * o + o0 + d) * k + ky) * k + kx] : 0));
              if (ws.some((v) => v !== 0)) taps.push([(ic * hp + pad + dy) * wp + pad + dx, ...ws]);
            }
          }
        }
        accumulateTaps(acc, [0, n, 2 * n, 3 * n], xp, taps, n);
        for (let d = 0; d < 4 && o0 + d < o; d++) {
          for (let y = 0; y < h; y++) {
            const dst = ((o0 + d) * 2 * h + 2 * y + ry) * ow + rx;
            const src = d * n + y * wp;
            for (let i = 0; i < wd; i++) out.data[dst + 2 * i] = acc[src + i];
          }
        }
      }
    }
  }
  return out;
}

/** floor((a·m + 2^(s−1)) / 2^s) exactly for |a| ≤ 2^47, 0 ≤ m < 2^15, 1 ≤ s ≤ 46. */
function roundShift(a, m, s) {
  const ah = Math.floor(a / T24), al = a - ah * T24; // a = ah·2^24 + al, 0 ≤ al < 2^24
  const A = ah * m, B = al * m + 2 ** (s - 1);
  if (s >= 24) return Math.floor((A + Math.floor(B / T24)) / 2 ** (s - 24));
  return A * 2 ** (24 - s) + Math.floor(B / 2 ** s); // beyond 2^53 only where the caller clips anyway
}

/** round(acc · mult / 2^shift) per channel (codec.intscale.rescale), in place. */
export function rescale(x, mult, shift) {
  const n = x.h * x.w;
  for (let c = 0; c < x.c; c++) {
    const m = mult[c], s = shift[c];
    for (let i = c * n; i < (c + 1) * n; i++) {
      const a = Math.min(ACC_MAX, Math.max(-ACC_MAX, x.data[i]));
      x.data[i] = roundShift(a, m, s);
    }
  }
  return x;
}

function clip(x, lo, hi) {
  for (let i = 0; i < x.data.length; i++) x.data[i] = Math.min(hi, Math.max(lo, x.data[i]));
  return x;
}

/** Negatives times 41/4096, rounded half up, in place. */
function leakyRelu(x) {
  const d = x.data;
  for (let i = 0; i < d.length; i++) {
    if (d[i] < 0) d[i] = Math.floor((d[i] * LEAKY_NUM + (1 << (LEAKY_SHIFT - 1))) / (1 << LEAKY_SHIFT));
  }
  return x;
}

function addBias(x, b) {
  const n = x.h * x.w;
  for (let c = 0; c < x.c; c++) for (let i = c * n; i < (c + 1) * n; i++) x.data[i] += b[c];
  return x;
}

/** ẑ symbols (N, h, w) → the σ layer's accumulator (M, 4h, 4w) (codec.intscale.accumulate). */
export function accumulate(z, p, zInv = null) {
  let x = new Planes(z.c, z.h, z.w, Float64Array.from(z.data, (v) => Math.min(ACT_MAX, Math.max(-ACT_MAX, v))));
  if (zInv) {
    const n = z.h * z.w;
    for (let c = 0; c < z.c; c++) {
      const g = Math.min(Z_INV_MAX, Math.max(0, zInv[c]));
      for (let i = c * n; i < (c + 1) * n; i++) x.data[i] = Math.min(X_MAX, Math.max(-X_MAX, x.data[i] * g));
    }
  }
  for (const layer of [0, 1]) {
    x = convTranspose2d(x, p[`w${layer}`]);
    addBias(x, p[`b${layer}`].data);
    clip(rescale(x, p[`m${layer}`].data, p[`s${layer}`].data), -ACT_MAX, ACT_MAX);
    leakyRelu(x);
  }
  x = conv2d(x, p.w2);
  return addBias(x, p.b2.data);
}

function rows(x, r0, r1) {
  return new Planes(x.c, r1 - r0, x.w, (() => {
    const out = new Float64Array(x.c * (r1 - r0) * x.w);
    for (let c = 0; c < x.c; c++) {
      out.set(x.data.subarray((c * x.h + r0) * x.w, (c * x.h + r1) * x.w), c * (r1 - r0) * x.w);
    }
    return out;
  })());
}

/** Scale-table index per y element (Int16Array of M × 4h × 4w), in bands of z rows. */
export function indexes(z, p, zInv = null) {
  const M = p.thresholds.shape[0];
  const H = 4 * z.h, Wd = 4 * z.w;
  const out = new Int16Array(M * H * Wd);
  for (let r0 = 0; r0 < z.h; r0 += BAND) {
    const r1 = Math.min(z.h, r0 + BAND);
    const w0 = Math.max(0, r0 - BAND_MARGIN), w1 = Math.min(z.h, r1 + BAND_MARGIN);
    const acc = accumulate(rows(z, w0, w1), p, zInv);
    const core = rows(acc, 4 * (r0 - w0), 4 * (r1 - w0));
    toIndexBand(core, p.thresholds, out, 4 * r0, H);
  }
  return out;
}

/** Per channel, the count of its thresholds below each accumulator, capped at the last index. */
function toIndexBand(acc, thresholds, out, row0, H) {
  const [, T] = thresholds.shape;
  const th = thresholds.data;
  const n = acc.h * acc.w;
  for (let c = 0; c < acc.c; c++) {
    const row = c * T;
    for (let i = 0; i < n; i++) {
      const v = acc.data[c * n + i];
      let lo = 0, hi = T;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (th[row + mid] < v) lo = mid + 1; else hi = mid;
      }
      out[(c * H + row0) * acc.w + i] = Math.min(lo, T - 1);
    }
  }
}
