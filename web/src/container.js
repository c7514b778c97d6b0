// The .onic container: header, two entropy-coded sections, chunks, CRC32.
// A port of codec/bitstream.py (docs/FORMAT.md is the reference): the same checks in the
// same order, with the same messages, so that a file fails alike in Python and in a browser.
// Everything is validated before anything image-sized is allocated.

import { Inflate } from "pako";

export const FORMAT_VERSION = 2;
export const READ_VERSIONS = [1, 2];
export const INDEX_PATH_VERSION = 2;
export const MODES = { 1: "L", 2: "LA", 3: "RGB", 4: "RGBA" };
export const MAX_PIXELS = 2 ** 28;
export const MAX_SIDE = 65535;
export const PAD = 64;
const HEADER_SIZE = 32;
const CHUNK_SIZE = 8;
const CRC_SIZE = 4;
const KNOWN_CHUNKS = new Set(["ALPH", "iccp", "exif", "xmpp"]);

/** A file that is not a valid .onic stream (Python: codec.bitstream.OnicError). */
export class OnicError extends Error {
  constructor(message) {
    super(message);
    this.name = "OnicError";
  }
}

export function paddedArea(width, height) {
  return Math.ceil(width / PAD) * PAD * (Math.ceil(height / PAD) * PAD);
}

export function checkSize(width, height, maxPixels = MAX_PIXELS) {
  if (width < 1 || height < 1) throw new OnicError(`bad image size ${width}x${height}`);
  if (width > MAX_SIDE || height > MAX_SIDE) {
    throw new OnicError(`image of ${width}x${height} exceeds the limit of ${MAX_SIDE} pixels per side`);
  }
  const area = paddedArea(width, height);
  if (maxPixels != null && area > maxPixels) {
    throw new OnicError(`image of ${width}x${height} (padded to multiples of ${PAD}: ${area} ` +
      `pixels) exceeds the limit of ${maxPixels} pixels`);
  }
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Validate and decode the fixed 32-byte header. */
export function parseHeader(data, maxPixels = MAX_PIXELS) {
  const magic = String.fromCharCode(...data.subarray(0, 4));
  if (data.length < 4 || magic !== "ONIC") throw new OnicError("not an .onic file (bad magic)");
  if (data.length < HEADER_SIZE) {
    throw new OnicError(`truncated file: ${data.length} bytes, the header alone needs ${HEADER_SIZE}`);
  }
  const v = new DataView(data.buffer, data.byteOffset, HEADER_SIZE);
  const version = v.getUint8(4), mode = v.getUint8(5), quality = v.getUint8(6), indexPath = v.getUint8(7);
  const width = v.getUint32(16, true), height = v.getUint32(20, true);
  const zLength = v.getUint32(24, true), yLength = v.getUint32(28, true);
  if (!READ_VERSIONS.includes(version)) {
    throw new OnicError(`unsupported format version ${version} (this onic reads versions ${READ_VERSIONS.join(", ")})`);
  }
  if (!(mode in MODES)) throw new OnicError(`bad header: mode ${mode} is not 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)`);
  if (quality > 100) throw new OnicError(`bad header: quality ${quality} is above 100`);
  if (indexPath !== INDEX_PATH_VERSION) {
    throw new OnicError(`unsupported integer scale path version ${indexPath} ` +
      `(this onic runs version ${INDEX_PATH_VERSION})`);
  }
  if (width < 1 || height < 1) throw new OnicError(`bad header: image size ${width}x${height}`);
  checkSize(width, height, maxPixels);
  if (zLength % 4 || yLength % 4) throw new OnicError("bad header: section lengths must be multiples of 4");
  return { mode: MODES[mode], quality, modelId: hex(data.subarray(8, 16)), width, height, zLength, yLength,
    version, indexPath };
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** zlib.crc32 of bytes. */
export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const isAsciiLetter = (b) => (b >= 65 && b <= 90) || (b >= 97 && b <= 122);

/** Python's repr() of a bytes object, for messages that name a bad chunk type. */
function pyBytesRepr(bytes) {
  const s = Array.from(bytes);
  const quote = s.includes(39) && !s.includes(34) ? '"' : "'";
  let out = "b" + quote;
  for (const b of s) {
    if (b === 92) out += "\\\\";
    else if (b === quote.charCodeAt(0)) out += "\\" + quote;
    else if (b === 9) out += "\\t";
    else if (b === 10) out += "\\n";
    else if (b === 13) out += "\\r";
    else if (b < 32 || b >= 127) out += "\\x" + b.toString(16).padStart(2, "0");
    else out += String.fromCharCode(b);
  }
  return out + quote;
}

function parseChunks(region) {
  const chunks = new Map();
  const seen = new Set();
  const view = new DataView(region.buffer, region.byteOffset, region.byteLength);
  let pos = 0;
  while (pos < region.length) {
    if (region.length - pos < CHUNK_SIZE) {
      throw new OnicError(`bad chunk: ${region.length - pos} stray bytes after the sections`);
    }
    const kindBytes = region.subarray(pos, pos + 4);
    const length = view.getUint32(pos + 4, true);
    if (!Array.from(kindBytes).every(isAsciiLetter)) {
      throw new OnicError(`bad chunk: type ${pyBytesRepr(kindBytes)} is not four ASCII letters`);
    }
    const kind = String.fromCharCode(...kindBytes);
    if (length > region.length - pos - CHUNK_SIZE) {
      throw new OnicError(`bad chunk: ${kind} claims ${length} bytes, the file has fewer`);
    }
    if (seen.has(kind)) throw new OnicError(`bad chunk: ${kind} appears twice`);
    seen.add(kind);
    if (!KNOWN_CHUNKS.has(kind) && kind[0] === kind[0].toUpperCase()) {
      throw new OnicError(`unknown critical chunk ${kind} (needs a newer onic)`);
    }
    if (KNOWN_CHUNKS.has(kind)) chunks.set(kind, region.subarray(pos + CHUNK_SIZE, pos + CHUNK_SIZE + length));
    pos += CHUNK_SIZE + length;
  }
  return chunks;
}

/** The alpha plane, never inflating beyond the width × height the header states. */
export function inflateAlpha(chunk, width, height) {
  const size = width * height;
  const plane = new Uint8Array(size);
  let total = 0;
  const stop = {};
  const inflate = new Inflate();
  inflate.onData = (piece) => {
    const room = Math.min(piece.length, size + 1 - total);
    if (total + room <= size) plane.set(piece.subarray(0, room), total);
    total += room;
    if (total > size) throw stop; // Python stops at width × height + 1 bytes too
  };
  try {
    inflate.push(chunk, true);
  } catch (e) {
    if (e !== stop) throw e;
  }
  if (total <= size && inflate.err && inflate.err !== -5) { // -5: truncated, reported as a short plane
    throw new OnicError(`bad ALPH chunk: Error ${inflate.err} while decompressing data: ${inflate.msg}`);
  }
  if (total !== size || !inflate.ended || inflate.err) { // Python: len(plane) != size or not eof
    throw new OnicError(`bad ALPH chunk: inflates to ${total}+ bytes, expected ${size}`);
  }
  if (inflate.strm.avail_in) {
    throw new OnicError(`bad ALPH chunk: ${inflate.strm.avail_in} bytes after its zlib stream`);
  }
  return plane;
}

/** Validate the whole file (header, lengths, CRC, chunks) and split it into parts. */
export function unpack(data, maxPixels = MAX_PIXELS) {
  const header = parseHeader(data, maxPixels);
  const minSize = HEADER_SIZE + header.zLength + header.yLength + CRC_SIZE;
  if (data.length < minSize) {
    throw new OnicError(`truncated file: ${data.length} bytes, the header describes at least ${minSize}`);
  }
  const end = data.length - CRC_SIZE;
  const crc = new DataView(data.buffer, data.byteOffset + end, CRC_SIZE).getUint32(0, true);
  if (crc32(data.subarray(0, end)) !== crc) throw new OnicError("corrupt file: CRC32 mismatch");
  const zEnd = HEADER_SIZE + header.zLength;
  const yEnd = zEnd + header.yLength;
  const chunks = parseChunks(data.subarray(yEnd, end));
  const hasAlpha = header.mode === "LA" || header.mode === "RGBA";
  if (chunks.has("ALPH") !== hasAlpha) {
    throw new OnicError(`bad file: mode ${header.mode} ${hasAlpha ? "needs" : "forbids"} an ALPH chunk`);
  }
  const alpha = hasAlpha ? inflateAlpha(chunks.get("ALPH"), header.width, header.height) : null;
  return { header, z: data.subarray(HEADER_SIZE, zEnd), y: data.subarray(zEnd, yEnd), chunks, alpha };
}
