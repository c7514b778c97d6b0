// A model bundle fetched over HTTP: the decoder's half of codec/session.py. Only what decoding
// needs is downloaded (manifest.json, tables.npz, scale_path.npz, hyper_decoder.onnx,
// decoder.onnx, and the slice graphs of a channel-conditional model, slice_priorK.onnx among them
// where the bundle has them); each file is checked
// against the manifest's SHA-256, and the manifest against its model id.

import * as ort from "onnxruntime-web";
import { OnicError, INDEX_PATH_VERSION } from "./container.js";
import { TableSet } from "./entropy.js";
import { parseNpz } from "./npz.js";

// Default models of earlier releases (codec/session.py RELEASED_MODELS), so that a file of one
// of them names the onic that decodes it.
export const RELEASED_MODELS = { "7895250cf0f9464f": "0.17.0", "89d8131d6e1d7e99": "0.16.0", "31341257384d06f6": "0.15.0", "655db73d43788480": "0.14.0", d9f1c4fad79f3113: "0.10.0", "818c8985caca739a": "0.9.3", f4e0675b7619d90d: "0.8.0", "4a3671d07ed71d8b": "0.7.0", c764899c3e2f711d: "0.6.0", "67f86249e7217281": "0.5.0", f6f2a403243faf67: "0.4.0", "437f2d1a68bffa42": "0.3.0", e3793b0615dd771e: "0.2.0", "8f88facf8bfd2f24": "0.1.0" };

async function sha256(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Python's json.dumps(files, sort_keys=True) of a flat {name: hex digest} object. */
function pythonJson(files) {
  const keys = Object.keys(files).sort();
  return "{" + keys.map((k) => `${JSON.stringify(k)}: ${JSON.stringify(files[k])}`).join(", ") + "}";
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new OnicError(`cannot read model bundle file ${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

export class Bundle {
  /** Use Bundle.load(url). */
  constructor(url, manifest, files, sessions) {
    this.url = url;
    this.manifest = manifest;
    this.modelId = manifest.model_id;
    this.decodes = new Set([this.modelId, ...(manifest.also_decodes || [])]);
    this.stride = Number(manifest.stride);
    this.M = Number(manifest.config.M);
    this.sessions = sessions;
    this.downloadBytes = Object.values(files).reduce((n, b) => n + b.length, 0);
    const t = parseNpz(files["tables.npz"].buffer);
    this.tables = t;
    this.zTables = new TableSet(t.z_values.data, t.z_starts.data, t.z_offsets.data);
    const yStarts = Array.from(t.y_starts.data, Number);
    const yOffsets = yStarts.slice(1).map((b, k) => -Math.floor((b - yStarts[k] - 1) / 2));
    this.yTables = new TableSet(t.y_values.data, yStarts, yOffsets);
    this.scalePath = parseNpz(files["scale_path.npz"].buffer);
    const version = this.scalePath.version.data[0];
    if (version !== INDEX_PATH_VERSION) {
      throw new OnicError(`model bundle ${url} has integer scale path version ${version}, ` +
        `this onic runs version ${INDEX_PATH_VERSION}`);
    }
    this.slices = [];
    if (this.scalePath.slices) {
      let a = 0;
      for (const size of this.scalePath.slices.data) { this.slices.push([a, a + Number(size)]); a += Number(size); }
    }
  }

  /** Fetch, verify and open the bundle in a folder URL (ending in "/"). */
  static async load(url, { verify = true, sessionOptions = {} } = {}) {
    const base = url.endsWith("/") ? url : url + "/";
    let manifest;
    try {
      manifest = await (await fetch(base + "manifest.json")).json();
    } catch (e) {
      throw new OnicError(`cannot read model bundle at ${base}: ${e.message}`);
    }
    const slices = (manifest.config && manifest.config.slices) || [];
    const graphs = ["hyper_decoder", "decoder"];
    // slice_priorK: the slice networks' μ_h part, in bundles of onic 0.11.0 on (export/bundle.py).
    const priors = "slice_prior0.onnx" in (manifest.files || {});
    slices.forEach((_, k) => {
      if (priors) graphs.push(`slice_prior${k}`);
      if (k) graphs.push(`slice_mean${k}`);
      graphs.push(`slice_lrp${k}`);
    });
    const names = ["tables.npz", "scale_path.npz", ...graphs.map((g) => `${g}.onnx`)];
    const files = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await fetchBytes(base + n)])));
    if (verify) {
      const listed = manifest.files || {};
      for (const n of names) {
        if (listed[n] !== (await sha256(files[n]))) {
          throw new OnicError(`model bundle ${base} is damaged: ${n} does not match its hash`);
        }
      }
      const id = (await sha256(new TextEncoder().encode(pythonJson(listed)))).slice(0, 16);
      if (id !== manifest.model_id) {
        throw new OnicError(`model bundle ${base} is damaged: manifest model id does not match its files`);
      }
    }
    const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all", ...sessionOptions };
    const sessions = {};
    for (const g of graphs) sessions[g] = await ort.InferenceSession.create(files[`${g}.onnx`], options);
    return new Bundle(base, manifest, files, sessions);
  }

  /** Refuse a file of another model in one line, naming the release whose default model it is. */
  checkDecodes(modelId) {
    if (this.decodes.has(modelId)) return;
    const release = RELEASED_MODELS[modelId];
    const hint = release ? ` (the default model of onic ${release}: decode it with that release)` : "";
    throw new OnicError(`model id mismatch: the file needs model ${modelId}${hint}, this onic has ${this.modelId}`);
  }

  get hasSlicePrior() {
    return "slice_prior0" in this.sessions;
  }

  get hasZGains() {
    return "z_gain" in this.tables;
  }

  /** The integer inverse gains on ẑ (N) of a quality, for models with gain units on z. */
  zInverseGains(quality) {
    const t = this.tables.z_inv_gain_q;
    const n = t.shape[1];
    const q = Math.min(Math.max(quality, 0), 100);
    return Array.from(t.data.subarray(q * n, (q + 1) * n), Number);
  }

  /** The inverse gain (M) of quality 0–100: exponential interpolation between rungs (Cui et al. 2021). */
  inverseGain(quality) {
    const lig = this.tables.log_inv_gain;
    const [rungs, m] = lig.shape;
    const floor = this.tables.position_floor ? Number(this.tables.position_floor.data[0]) : 0;
    const t = floor + (Math.min(Math.max(quality, 0), 100) / 100) * (rungs - 1 - floor);
    const i = Math.min(Math.floor(t), rungs - 2);
    const w = t - i;
    const out = new Float32Array(m);
    for (let c = 0; c < m; c++) out[c] = Math.exp(lig.data[i * m + c] * (1 - w) + lig.data[(i + 1) * m + c] * w);
    return out;
  }

  async run(graph, inputs) {
    const feeds = {};
    for (const [name, { data, dims }] of Object.entries(inputs)) feeds[name] = new ort.Tensor("float32", data, dims);
    const session = this.sessions[graph];
    // Only the first output: the hyper decoder's σ is the integer path's job, so it is not run.
    const name = session.outputNames[0];
    return (await session.run(feeds, [name]))[name];
  }
}
