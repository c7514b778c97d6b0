// Entropy decoding of integer latents: a port of codec/entropy.py's decoder (docs/FORMAT.md,
// "Order within a section"). Symbols are grouped by table id (stable order), each group one
// categorical model; then the escape residuals of symbols on a table's end entries.

import { OnicError } from "./container.js";
import { RangeDecoder, categoricalCdf } from "./rangecoder.js";

const MAX_ESCAPE_BITS = 24;
export const SLACK_BITS = 96;
export const SLACK_PER_SYMBOL = 2 ** -10;

/** Ragged integer pmfs: values[starts[k]..starts[k+1]) is table k, its first symbol offsets[k]. */
export class TableSet {
  constructor(values, starts, offsets) {
    this.values = values;
    this.starts = Array.from(starts, Number);
    this.offsets = Array.from(offsets, Number);
    this.length = this.starts.length - 1;
    this.lengths = this.starts.slice(1).map((b, k) => b - this.starts[k]);
    if (this.offsets.length !== this.length || this.lengths.some((n) => n < 2)) {
      throw new Error("inconsistent entropy tables");
    }
    // Each table's 24-bit CDF as the coder quantizes it, and the information content
    // −log2 p of every entry under those probabilities (codec.entropy.TableSet.bits).
    this.cdfs = [];
    this.bits = new Float64Array(values.length);
    this.minBits = new Float64Array(this.length);
    for (let k = 0; k < this.length; k++) {
      const cdf = categoricalCdf(Float64Array.from(values.subarray(this.starts[k], this.starts[k + 1])));
      let min = Infinity;
      for (let i = 0; i < cdf.length - 1; i++) {
        const bits = 24 - Math.log2(cdf[i + 1] - cdf[i]);
        this.bits[this.starts[k] + i] = bits;
        min = Math.min(min, bits);
      }
      this.cdfs.push(cdf);
      this.minBits[k] = min;
    }
  }

  cdf(k) {
    return this.cdfs[k];
  }
}

/** Stable order grouping elements by table id (a counting sort), and each group's bounds. */
function groups(ids, nTables) {
  const bounds = new Float64Array(nTables + 1);
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i];
    if (t < 0 || t >= nTables) throw new Error("table id out of range");
    bounds[t + 1]++;
  }
  for (let k = 0; k < nTables; k++) bounds[k + 1] += bounds[k];
  const fill = bounds.slice(0, nTables);
  const order = new Uint32Array(ids.length);
  for (let i = 0; i < ids.length; i++) order[fill[ids[i]]++] = i;
  return { order, bounds };
}

/** Reads the parts of one range-coded section in order (codec.entropy.Decoder). */
export class Decoder {
  constructor(data) {
    if (data.length % 4) throw new OnicError("corrupt entropy-coded data (not whole 32-bit words)");
    const words = new Uint32Array(data.length / 4);
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < words.length; i++) words[i] = view.getUint32(4 * i, true);
    this.dec = new RangeDecoder(words);
    this.room = 8 * data.length + SLACK_BITS;
    this.read = 0;
  }

  spend(bits, count) {
    // Reading past the data gives zeros, never an error: a stream too short for its symbols shows
    // up as more information decoded than it has room for.
    this.read += bits - SLACK_PER_SYMBOL * count;
    if (this.read > this.room) {
      throw new OnicError(`corrupt entropy-coded data: ${this.room - SLACK_BITS} bits cannot hold the ` +
        "symbols of this image (the stream ends early)");
    }
  }

  /** The next part: Int32Array symbols, one per entry of ids (any integer typed array). */
  readPart(ids, tables) {
    const { order, bounds } = groups(ids, tables.length);
    const n = ids.length;
    const s = new Int32Array(n);
    const edge = new Int8Array(n); // −1: on the first entry, +1: on the last
    try {
      for (let k = 0; k < tables.length; k++) {
        const a = bounds[k], b = bounds[k + 1];
        if (a === b) continue;
        this.dec.decodeCategorical(tables.cdf(k), b - a, s, a);
        let bits = 0;
        const start = tables.starts[k], last = tables.lengths[k] - 1, offset = tables.offsets[k];
        for (let i = a; i < b; i++) {
          const idx = s[i];
          bits += tables.bits[start + idx];
          edge[i] = idx === 0 ? -1 : idx === last ? 1 : 0;
          s[i] = idx + offset;
        }
        this.spend(bits, b - a);
      }
      const esc = [];
      for (let i = 0; i < n; i++) if (edge[i]) esc.push(i);
      const { residual, bits } = this.residuals(esc.length);
      this.spend(bits, esc.length);
      esc.forEach((i, j) => { s[i] += edge[i] * residual[j]; });
    } catch (e) {
      if (e instanceof OnicError) throw e;
      throw new OnicError(`corrupt entropy-coded data (${e.message})`);
    }
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[order[i]] = s[i];
    return out;
  }

  residuals(count) {
    const nbits = new Array(count);
    for (let j = 0; j < count; j++) nbits[j] = this.dec.decodeUniform(MAX_ESCAPE_BITS + 1);
    const residual = nbits.map((b) => (b >= 1 ? 2 ** (b - 1) : 0));
    let bits = count * Math.log2(MAX_ESCAPE_BITS + 1);
    for (let j = 0; j < count; j++) {
      if (nbits[j] >= 2) residual[j] += this.dec.decodeUniform(2 ** (nbits[j] - 1));
      bits += Math.max(nbits[j] - 1, 0);
    }
    return { residual, bits };
  }
}

/** Refuse a section shorter than the fewest bits its count symbols can take (codec.entropy.check_room). */
export function checkRoom(data, minBits, count, section) {
  const room = 8 * data.length + SLACK_BITS + SLACK_PER_SYMBOL * count;
  if (minBits > room) {
    throw new OnicError(`truncated file: the ${section} section has ${data.length} bytes, ` +
      `an image of this size needs at least ${Math.trunc((minBits - SLACK_BITS) / 8)}`);
  }
}
