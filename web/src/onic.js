// Decode .onic files in a web browser: the steps of codec/api.py's decompress, in the same
// order, with the same checks. Integer work (container, range decoding, integer scale path)
// is exact, so the symbols equal the Python decoder's; the float graphs run in
// onnxruntime-web and may move a pixel by a level, as another onnxruntime build would.
//
//   import { Bundle, decode } from "onic-web";
//   const bundle = await Bundle.load("models/default/");
//   const { image } = await decode(new Uint8Array(await file.arrayBuffer()), bundle);
//   canvas.getContext("2d").putImageData(image, 0, 0);

import { Bundle } from "./bundle.js";
import { MAX_PIXELS, OnicError, parseHeader, unpack } from "./container.js";
import { Decoder, checkRoom } from "./entropy.js";
import { Planes, Z_INV_BITS, hyperState, indexes, sliceIndexes } from "./intscale.js";

export { Bundle, OnicError, MAX_PIXELS, parseHeader };

const LATENT = 16, HYPER = 4; // pixels per latent of y; latents of y per latent of z
const TILE = 512, MARGIN = 32; // synthesis tiles: core and context in pixels (codec/tiling.py)
const BAND = 16, BAND_MARGIN = 4; // rows of z per band of the hyper decoder, and of context

/** Entropy-decode a file: { header, container, zSymbols, ySymbols } with their shapes. Integer work only. */
export async function decodeLatents(data, bundle, { maxPixels = MAX_PIXELS } = {}) {
  const c = data.header ? data : unpack(data instanceof ArrayBuffer ? new Uint8Array(data) : data, maxPixels);
  const h = c.header;
  bundle.checkDecodes(h.modelId);
  const s = bundle.stride;
  const nZ = bundle.zTables.length;
  const zShape = [nZ, Math.ceil(h.height / s), Math.ceil(h.width / s)];
  const zCount = zShape[1] * zShape[2];
  // Both sections must have room for their symbols before anything image-sized exists.
  checkRoom(c.z, zCount * bundle.zTables.minBits.reduce((a, b) => a + b, 0), nZ * zCount, "hyperprior");
  const yCount = bundle.M * zCount * (s / LATENT) ** 2;
  checkRoom(c.y, yCount * Math.min(...bundle.yTables.minBits), yCount, "latent");
  const zIds = new Int32Array(nZ * zCount);
  for (let k = 0; k < nZ; k++) zIds.fill(k, k * zCount, (k + 1) * zCount);
  const zSymbols = new Decoder(c.z).readPart(zIds, bundle.zTables);
  const zInv = bundle.hasZGains ? bundle.zInverseGains(h.quality) : null;
  const z = new Planes(...zShape, Float64Array.from(zSymbols));
  const yShape = [bundle.M, zShape[1] * HYPER, zShape[2] * HYPER];
  const dec = new Decoder(c.y);
  if (!bundle.slices.length) {
    const ids = await indexes(z, bundle.scalePath, zInv);
    return { header: h, container: c, zSymbols, zShape, ySymbols: dec.readPart(ids, bundle.yTables), yShape };
  }
  // Channel-conditional: slice k's indexes need the symbols of the slices before it.
  const state = await hyperState(z, bundle.scalePath, zInv);
  const symbols = new Planes(...yShape);
  const plane = yShape[1] * yShape[2];
  for (let k = 0; k < bundle.slices.length; k++) {
    const ids = await sliceIndexes(k, state, symbols, bundle.scalePath, bundle.slices);
    symbols.data.set(dec.readPart(ids, bundle.yTables), bundle.slices[k][0] * plane);
  }
  return { header: h, container: c, zSymbols, zShape, ySymbols: Int32Array.from(symbols.data), yShape };
}

function spans(size, core, margin) {
  const out = [];
  for (let a = 0; a < size; a += core) {
    const b = Math.min(a + core, size);
    out.push([a, b, Math.max(0, a - margin), Math.min(size, b + margin)]);
  }
  return out;
}

/** Rows [r0, r1) of a (C, H, W) Float32Array. */
function rowSlice(data, c, h, w, r0, r1) {
  const out = new Float32Array(c * (r1 - r0) * w);
  for (let k = 0; k < c; k++) out.set(data.subarray((k * h + r0) * w, (k * h + r1) * w), k * (r1 - r0) * w);
  return out;
}

/**
 * A graph over bands of rows, margin rows of context per side (codec/tiling.py _row_bands):
 * inputs { name: { data, c, h, w } } with h = rows·rowsIn → Float32Array (C', rows·rowsOut, w').
 */
async function rowBands(bundle, graph, rows, band, margin, rowsIn, rowsOut, inputs) {
  const run = async (r0, r1) => bundle.run(graph, Object.fromEntries(Object.entries(inputs).map(([name, t]) => [name, {
    data: r0 === 0 && r1 === rows && t.data.byteOffset === 0 ? t.data : rowSlice(t.data, t.c, t.h, t.w, r0 * rowsIn, r1 * rowsIn),
    dims: [1, t.c, (r1 - r0) * rowsIn, t.w] }])));
  if (rows <= band + 2 * margin) return (await run(0, rows)).data;
  let out = null;
  for (const [r0, r1, w0, w1] of spans(rows, band, margin)) {
    const t = await run(w0, w1);
    const [, c, th, tw] = t.dims;
    out ??= new Float32Array(c * rows * rowsOut * tw);
    for (let k = 0; k < c; k++) {
      const src = (k * th + (r0 - w0) * rowsOut) * tw;
      out.set(t.data.subarray(src, src + (r1 - r0) * rowsOut * tw), (k * rows * rowsOut + r0 * rowsOut) * tw);
    }
  }
  return out;
}

/** μ (M, 4h, 4w) from the ẑ symbols by the hyper decoder, in bands of z rows. */
async function hyperDecode(bundle, zSymbols, zShape, quality) {
  const [n, zh, zw] = zShape;
  const z = Float32Array.from(zSymbols);
  if (bundle.hasZGains) {
    const g = bundle.zInverseGains(quality);
    for (let k = 0; k < n; k++) {
      const f = Math.fround(g[k] / 2 ** Z_INV_BITS);
      for (let i = k * zh * zw; i < (k + 1) * zh * zw; i++) z[i] *= f;
    }
  }
  return rowBands(bundle, "hyper_decoder", zh, BAND, BAND_MARGIN, 1, HYPER, { z_hat: { data: z, c: n, h: zh, w: zw } });
}

const Y_BAND = 16, Y_MARGIN = 2; // rows of y per band of a slice graph, and of context

/**
 * The inputs besides ŷ of slice k's mean and lrp graphs (codec/tiling.py _slice_inputs): each its
 * channels of slice_priorK's output where the bundle has those graphs, else μ_h (onic 0.10 bundles).
 */
async function sliceInputs(bundle, mu_h, k) {
  if (!bundle.hasSlicePrior) return [{}, { mu_h }];
  const { h, w } = mu_h;
  const prior = await rowBands(bundle, `slice_prior${k}`, h, Y_BAND, Y_MARGIN, 1, 1, { mu_h });
  const c = prior.length / (h * w) / (k ? 2 : 1);
  const part = (data) => ({ prior: { data, c, h, w } });
  return [part(prior.subarray(0, c * h * w)), part(prior.subarray(prior.length - c * h * w))];
}

/** ŷ of a channel-conditional model, slice by slice (Minnen & Singh 2020; codec/tiling.py). */
async function conditionalLatents(bundle, muH, ySymbols, m, h, w) {
  const yHat = new Float32Array(m * h * w);
  const plane = h * w;
  const mu_h = { data: muH, c: m, h, w };
  for (const [k, [a, b]] of bundle.slices.entries()) {
    const [mean, lrp] = await sliceInputs(bundle, mu_h, k);
    const mu = k ? await rowBands(bundle, `slice_mean${k}`, h, Y_BAND, Y_MARGIN, 1, 1,
      { mu_h, ...mean, y_prev: { data: yHat.subarray(0, a * plane), c: a, h, w } })
      : muH.subarray(a * plane, b * plane);
    for (let i = 0; i < (b - a) * plane; i++) yHat[a * plane + i] = mu[i] + ySymbols[a * plane + i];
    yHat.set(await rowBands(bundle, `slice_lrp${k}`, h, Y_BAND, Y_MARGIN, 1, 1,
      { ...lrp, y_upto: { data: yHat.subarray(0, b * plane), c: b, h, w } }), a * plane);
  }
  return yHat;
}

/** numpy's rint (half to even) of x·255, clipped to 0–255; NaN → 0. */
function toLevel(v) {
  const x = v * 255;
  if (!(x > 0)) return 0; // NaN and negatives
  if (x >= 255) return 255;
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 ? r - 1 : r;
}

/** ŷ (M, lh, lw) → RGBA pixels (height × width × 4), tile by tile for large images (codec/tiling.py). */
async function synthesize(bundle, yHat, m, lh, lw, invGain, height, width) {
  const rgba = new Uint8ClampedArray(width * height * 4);
  const gain = { data: invGain, dims: [1, m, 1, 1] };
  const whole = lh * LATENT * lw * LATENT <= 2 * (TILE + 2 * MARGIN) ** 2;
  const core = TILE / LATENT, margin = MARGIN / LATENT;
  const rowSpans = whole ? [[0, lh, 0, lh]] : spans(lh, core, margin);
  const colSpans = whole ? [[0, lw, 0, lw]] : spans(lw, core, margin);
  for (const [r0, r1, wr0, wr1] of rowSpans) {
    for (const [c0, c1, wc0, wc1] of colSpans) {
      if (r0 * LATENT >= height || c0 * LATENT >= width) continue; // stride padding only
      const th = wr1 - wr0, tw = wc1 - wc0;
      const tile = new Float32Array(m * th * tw);
      for (let k = 0; k < m; k++) {
        for (let y = 0; y < th; y++) {
          const src = (k * lh + wr0 + y) * lw + wc0;
          tile.set(yHat.subarray(src, src + tw), (k * th + y) * tw);
        }
      }
      const x = (await bundle.run("decoder", { y_hat: { data: tile, dims: [1, m, th, tw] }, inv_gain: gain })).data;
      const ph = th * LATENT, pw = tw * LATENT, plane = ph * pw;
      const top = (r0 - wr0) * LATENT, left = (c0 - wc0) * LATENT;
      const rows = Math.min(r1 * LATENT, height) - r0 * LATENT, cols = Math.min(c1 * LATENT, width) - c0 * LATENT;
      for (let y = 0; y < rows; y++) {
        for (let i = 0; i < cols; i++) {
          const src = (top + y) * pw + left + i;
          const dst = ((r0 * LATENT + y) * width + c0 * LATENT + i) * 4;
          rgba[dst] = toLevel(x[src]);
          rgba[dst + 1] = toLevel(x[plane + src]);
          rgba[dst + 2] = toLevel(x[2 * plane + src]);
          rgba[dst + 3] = 255;
        }
      }
    }
  }
  return rgba;
}

/**
 * Decode .onic bytes (Uint8Array or ArrayBuffer) with a Bundle: { image, header, icc, exif, xmp, timings }.
 * image is an ImageData (RGBA; gray files have R = G = B, files without alpha A = 255).
 */
export async function decode(data, bundle, { maxPixels = MAX_PIXELS } = {}) {
  const t0 = performance.now();
  const lat = await decodeLatents(data, bundle, { maxPixels });
  const t1 = performance.now();
  const h = lat.header;
  const [m, lh, lw] = lat.yShape;
  let yHat = await hyperDecode(bundle, lat.zSymbols, lat.zShape, h.quality);
  if (bundle.slices.length) yHat = await conditionalLatents(bundle, yHat, lat.ySymbols, m, lh, lw);
  else for (let i = 0; i < yHat.length; i++) yHat[i] += lat.ySymbols[i];
  const t2 = performance.now();
  const rgba = await synthesize(bundle, yHat, m, lh, lw, bundle.inverseGain(h.quality), h.height, h.width);
  if (h.mode === "L" || h.mode === "LA") {
    // Pillow's RGB → L: (R·19595 + G·38470 + B·7471 + 2^15) >> 16
    for (let i = 0; i < rgba.length; i += 4) {
      const l = (rgba[i] * 19595 + rgba[i + 1] * 38470 + rgba[i + 2] * 7471 + 0x8000) >>> 16;
      rgba[i] = rgba[i + 1] = rgba[i + 2] = l;
    }
  }
  const alpha = lat.container.alpha;
  if (alpha) for (let i = 0; i < alpha.length; i++) rgba[4 * i + 3] = alpha[i];
  const image = typeof ImageData !== "undefined" ? new ImageData(rgba, h.width, h.height)
    : { data: rgba, width: h.width, height: h.height };
  const chunks = lat.container.chunks;
  const t3 = performance.now();
  return {
    image, header: h,
    icc: chunks.get("iccp") || null, exif: chunks.get("exif") || null, xmp: chunks.get("xmpp") || null,
    timings: { entropy_and_integer_ms: t1 - t0, hyper_decoder_ms: t2 - t1, synthesis_ms: t3 - t2, total_ms: t3 - t0 },
  };
}
