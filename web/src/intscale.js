// The integer scale path: ẑ → scale-table indexes, bit-exact with codec/intscale.py (index path
// version 2; Ballé, Johnston & Minnen, "Integer networks for data compression with
// latent-variable models", ICLR 2019). docs/FORMAT.md defines every step.
//
// Activations are integers held in Float64Arrays: every product and partial sum of a real file
// is an integer below 2^53 (the reason for the format's bit limits), where float64 arithmetic is
// exact in any order. Rescaling splits its product so that it stays exact too.

import { matmul } from "./matmul.js";

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

const CHUNK_ELEMENTS = 2 ** 22; // elements of one product's result (32 MiB of float64): bounds memory

/** Rows [r0, r1) of a padded (C, hp, wp) array, contiguous: the right operand of a product. */
function paddedRows(xp, c, hp, wp, r0, r1) {
  if (r0 === 0 && r1 === hp) return xp;
  const out = new Float64Array(c * (r1 - r0) * wp);
  for (let k = 0; k < c; k++) out.set(xp.subarray((k * hp + r0) * wp, (k * hp + r1) * wp), k * (r1 - r0) * wp);
  return out;
}

const tapMatrices = new WeakMap(); // per weight tensor: built once, reused by every band and file

/** Every tap's weights as rows of one matrix: row (ky·k + kx)·O + o, column c. */
function tapMatrix(w, transposed) {
  if (!tapMatrices.has(w)) tapMatrices.set(w, buildTapMatrix(w, transposed));
  return tapMatrices.get(w);
}

function buildTapMatrix(w, transposed) {
  const [a, b, k] = w.shape; // (O, C, k, k), or (C, O, k, k) when transposed
  const [o, c] = transposed ? [b, a] : [a, b];
  const m = new Float64Array(k * k * o * c);
  for (let oc = 0; oc < o; oc++) {
    for (let ic = 0; ic < c; ic++) {
      for (let t = 0; t < k * k; t++) {
        const src = transposed ? (ic * o + oc) * k * k + t : (oc * c + ic) * k * k + t;
        m[(t * o + oc) * c + ic] = w.data[src];
      }
    }
  }
  return { m, o, c, k };
}

/**
 * Exact Conv2d, stride 1, padding k//2: x (C, H, W), w (O, C, k, k) → (O, H, W).
 * One product per band of rows gives every tap's contribution at every padded position,
 * Y[tap] = W[tap] @ x_padded; the output is the sum of the k² shifted Y[tap] (as in Python).
 */
export async function conv2d(x, w) {
  const { m, o, c, k } = tapMatrix(w, false);
  const p = k >> 1;
  const { data: xp, hp, wp } = padded(x, p);
  const h = x.h, wd = x.w;
  const out = new Planes(o, h, wd);
  const step = Math.max(1, Math.floor(CHUNK_ELEMENTS / (k * k * o * wp)) - 2 * p);
  for (let r0 = 0; r0 < h; r0 += step) {
    const r1 = Math.min(h, r0 + step), n = r1 - r0, len = (n + 2 * p) * wp;
    const y = await matmul(m, k * k * o, c, paddedRows(xp, c, hp, wp, r0, r1 + 2 * p), len);
    for (let oc = 0; oc < o; oc++) {
      for (let t = 0; t < k * k; t++) {
        const ky = Math.floor(t / k), kx = t % k, base = (t * o + oc) * len;
        for (let j = 0; j < n; j++) {
          const src = base + (j + ky) * wp + kx, dst = (oc * h + r0 + j) * wd;
          for (let i = 0; i < wd; i++) out.data[dst + i] += y[src + i];
        }
      }
    }
  }
  return out;
}

/**
 * Exact ConvTranspose2d, stride 2, padding k//2, output padding 1: w (C, O, k, k) → (O, 2H, 2W).
 * Output (2j + r) receives tap t from input j + (r − t + p)/2 where that is whole (polyphase):
 * one product gives every tap at every input position, each output phase sums its taps.
 */
export async function convTranspose2d(x, w) {
  const { m, o, c, k } = tapMatrix(w, true);
  const p = k >> 1;
  const shift = (r, t) => ((r - t + p) % 2 === 0 ? (r - t + p) / 2 : null); // input offset, or none
  let pad = 0;
  for (let r = 0; r < 2; r++) for (let t = 0; t < k; t++) if (shift(r, t) !== null) pad = Math.max(pad, Math.abs(shift(r, t)));
  const { data: xp, hp, wp } = padded(x, pad);
  const h = x.h, wd = x.w, ow = 2 * wd;
  const out = new Planes(o, 2 * h, ow);
  const step = Math.max(1, Math.floor(CHUNK_ELEMENTS / (k * k * o * wp)) - 2 * pad);
  for (let r0 = 0; r0 < h; r0 += step) {
    const r1 = Math.min(h, r0 + step), n = r1 - r0, len = (n + 2 * pad) * wp;
    const y = await matmul(m, k * k * o, c, paddedRows(xp, c, hp, wp, r0, r1 + 2 * pad), len);
    for (let ky = 0; ky < k; ky++) {
      for (let kx = 0; kx < k; kx++) {
        for (let ry = 0; ry < 2; ry++) {
          const dy = shift(ry, ky);
          if (dy === null) continue;
          for (let rx = 0; rx < 2; rx++) {
            const dx = shift(rx, kx);
            if (dx === null) continue;
            for (let oc = 0; oc < o; oc++) {
              const base = ((ky * k + kx) * o + oc) * len;
              for (let j = 0; j < n; j++) {
                const src = base + (j + pad + dy) * wp + pad + dx;
                const dst = (oc * 2 * h + 2 * (r0 + j) + ry) * ow + rx;
                for (let i = 0; i < wd; i++) out.data[dst + 2 * i] += y[src + i];
              }
            }
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
export async function accumulate(z, p, zInv = null) {
  let x = new Planes(z.c, z.h, z.w, Float64Array.from(z.data, (v) => Math.min(ACT_MAX, Math.max(-ACT_MAX, v))));
  if (zInv) {
    const n = z.h * z.w;
    for (let c = 0; c < z.c; c++) {
      const g = Math.min(Z_INV_MAX, Math.max(0, zInv[c]));
      for (let i = c * n; i < (c + 1) * n; i++) x.data[i] = Math.min(X_MAX, Math.max(-X_MAX, x.data[i] * g));
    }
  }
  for (const layer of [0, 1]) {
    x = await convTranspose2d(x, p[`w${layer}`]);
    addBias(x, p[`b${layer}`].data);
    clip(rescale(x, p[`m${layer}`].data, p[`s${layer}`].data), -ACT_MAX, ACT_MAX);
    leakyRelu(x);
  }
  x = await conv2d(x, p.w2);
  return addBias(x, p.b2.data);
}


/** Scale-table index per y element (Int16Array of M × 4h × 4w), in bands of z rows. */
export async function indexes(z, p, zInv = null) {
  const M = p.thresholds.shape[0];
  const H = 4 * z.h, Wd = 4 * z.w;
  const out = new Int16Array(M * H * Wd);
  for (let r0 = 0; r0 < z.h; r0 += BAND) {
    const r1 = Math.min(z.h, r0 + BAND);
    const w0 = Math.max(0, r0 - BAND_MARGIN), w1 = Math.min(z.h, r1 + BAND_MARGIN);
    const acc = await accumulate(region(z, 0, z.c, w0, w1), p, zInv);
    const core = region(acc, 0, acc.c, 4 * (r0 - w0), 4 * (r1 - w0));
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

/** Rows [r0, r1) of channels [c0, c1) of a Planes, as a new one. */
function region(x, c0, c1, r0, r1) {
  const out = new Planes(c1 - c0, r1 - r0, x.w);
  for (let c = c0; c < c1; c++) {
    out.data.set(x.data.subarray((c * x.h + r0) * x.w, (c * x.h + r1) * x.w), (c - c0) * (r1 - r0) * x.w);
  }
  return out;
}

/**
 * What the slices of a channel-conditional model share (codec.intscale.hyper_state): h_s's σ
 * accumulator (M, 4h, 4w) and its requantization F, the first input of every slice network.
 */
export async function hyperState(z, p, zInv = null) {
  const M = p.thresholds.shape[0];
  const acc = new Planes(M, 4 * z.h, 4 * z.w);
  for (let r0 = 0; r0 < z.h; r0 += BAND) {
    const r1 = Math.min(z.h, r0 + BAND);
    const w0 = Math.max(0, r0 - BAND_MARGIN), w1 = Math.min(z.h, r1 + BAND_MARGIN);
    const band = region(await accumulate(region(z, 0, z.c, w0, w1), p, zInv), 0, M, 4 * (r0 - w0), 4 * (r1 - w0));
    for (let c = 0; c < M; c++) {
      acc.data.set(band.data.subarray(c * band.h * band.w, (c + 1) * band.h * band.w), (c * acc.h + 4 * r0) * acc.w);
    }
  }
  const f = new Planes(M, acc.h, acc.w, Float64Array.from(acc.data));
  clip(rescale(f, p.f_m.data, p.f_s.data), -ACT_MAX, ACT_MAX);
  return { acc, f };
}

const SLICE_BAND = 64, SLICE_MARGIN = 2; // rows of y per band of a slice network, and of context

/**
 * Scale-table indexes (Int16Array, (b − a) × H × W) of slice k from the shared state and the
 * integer symbols of the earlier slices (symbols: Planes of all M channels; only [0, a) is read).
 */
export async function sliceIndexes(k, state, symbols, p, bounds) {
  const { acc, f } = state;
  const [a, b] = bounds[k];
  const H = acc.h, Wd = acc.w;
  const out = new Int16Array((b - a) * H * Wd);
  const thresholds = { data: p.thresholds.data.subarray(a * p.thresholds.shape[1], b * p.thresholds.shape[1]),
    shape: [b - a, p.thresholds.shape[1]] };
  if (k === 0) {
    toIndexBand(region(acc, a, b, 0, H), thresholds, out, 0, H);
    return out;
  }
  const q = (name) => p[`k${k}_${name}`];
  for (let r0 = 0; r0 < H; r0 += SLICE_BAND) {
    const r1 = Math.min(H, r0 + SLICE_BAND);
    const w0 = Math.max(0, r0 - SLICE_MARGIN), w1 = Math.min(H, r1 + SLICE_MARGIN);
    const sym = clip(region(symbols, 0, a, w0, w1), -ACT_MAX, ACT_MAX);
    const x = rescale(await conv2d(region(f, 0, f.c, w0, w1), q("wf")), q("mf").data, q("sf").data);
    const s = rescale(await conv2d(sym, q("ws")), q("ms").data, q("ss").data);
    for (let i = 0; i < x.data.length; i++) x.data[i] += s.data[i];
    leakyRelu(clip(addBias(x, q("b1").data), -ACT_MAX, ACT_MAX));
    const ctx = addBias(rescale(await conv2d(x, q("w2")), q("m2").data, q("s2").data), q("b2").data);
    const core = region(acc, a, b, r0, r1);
    const c = region(ctx, 0, ctx.c, r0 - w0, r1 - w0);
    for (let i = 0; i < core.data.length; i++) core.data[i] += c.data[i];
    toIndexBand(core, thresholds, out, r0, H);
  }
  return out;
}
