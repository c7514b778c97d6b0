// Reading numpy's .npz archives (a zip of .npy files) into typed arrays: the bundle's
// tables.npz and scale_path.npz. Integers wider than 32 bits become Float64Arrays; the
// format's bit limits keep them below 2^53, where that is exact.

import { inflateRaw } from "pako";

const DTYPES = {
  "<f4": [Float32Array, 4], "<f8": [Float64Array, 8], "<i2": [Int16Array, 2], "<i4": [Int32Array, 4],
  "<u4": [Uint32Array, 4], "<i8": [BigInt64Array, 8], "|u1": [Uint8Array, 1], "|i1": [Int8Array, 1],
};

/** One .npy file → { data, shape }. */
export function parseNpy(bytes) {
  if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== "NUMPY") throw new Error("not a .npy file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error("Fortran-ordered .npy is not supported");
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (!(descr in DTYPES)) throw new Error(`unsupported .npy dtype ${descr}`);
  const [Type, size] = DTYPES[descr];
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLength;
  const raw = bytes.slice(offset, offset + count * size); // a copy: aligned for the typed array
  let data = new Type(raw.buffer);
  if (Type === BigInt64Array) data = Float64Array.from(data, Number);
  return { data, shape };
}

/** A .npz archive (stored or deflated members) → { name: { data, shape } }. */
export function parseNpz(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = bytes.length - 22;
  while (eocd >= 0 && view.getUint32(eocd, true) !== 0x06054b50) eocd--;
  if (eocd < 0) throw new Error("not a zip archive");
  const entries = view.getUint16(eocd + 10, true);
  let pos = view.getUint32(eocd + 16, true);
  const out = {};
  for (let e = 0; e < entries; e++) {
    if (view.getUint32(pos, true) !== 0x02014b50) throw new Error("bad zip central directory");
    const method = view.getUint16(pos + 10, true);
    const compressed = view.getUint32(pos + 20, true);
    const nameLength = view.getUint16(pos + 28, true);
    const extraLength = view.getUint16(pos + 30, true);
    const commentLength = view.getUint16(pos + 32, true);
    const local = view.getUint32(pos + 42, true);
    const name = new TextDecoder().decode(bytes.subarray(pos + 46, pos + 46 + nameLength));
    pos += 46 + nameLength + extraLength + commentLength;
    const dataStart = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    let member = bytes.subarray(dataStart, dataStart + compressed);
    if (method === 8) member = inflateRaw(member);
    else if (method !== 0) throw new Error(`unsupported zip compression ${method}`);
    out[name.replace(/\.npy$/, "")] = parseNpy(member);
  }
  return out;
}
