// Exact integer matrix products in float64 through onnxruntime-web's MatMul: every product
// and partial sum of the integer scale path is an integer below 2^53, so any summation
// order (SIMD, threads) gives the same result. A one-off timing in Node, while training shared
// the cores: the 3×3 conv of 144 → 96 channels at 32×48, 57–73 ms here against 330 ms in loops.
// The one-node ONNX graph is written here (a few protobuf fields), not shipped as a file.

import * as ort from "onnxruntime-web";

function varint(n) {
  const out = [];
  while (n > 127) { out.push((n & 127) | 128); n = Math.floor(n / 128); }
  out.push(n);
  return out;
}

const text = (s) => Array.from(new TextEncoder().encode(s));
const field = (number, bytes) => [...varint(number * 8 + 2), ...varint(bytes.length), ...bytes];
const int = (number, value) => [...varint(number * 8), ...varint(value)];

function valueInfo(name, dims) {
  const shape = dims.flatMap((d) => field(1, field(2, text(d)))); // symbolic dimensions
  const tensor = [...int(1, 11), ...field(2, shape)]; // elem_type 11: double
  return [...field(1, text(name)), ...field(2, field(1, tensor))];
}

function matmulModel() {
  const node = [...field(1, text("a")), ...field(1, text("b")), ...field(2, text("c")), ...field(4, text("MatMul"))];
  const graph = [...field(1, node), ...field(2, text("matmul")), ...field(11, valueInfo("a", ["m", "k"])),
    ...field(11, valueInfo("b", ["k", "n"])), ...field(12, valueInfo("c", ["m", "n"]))];
  const opset = [...field(1, []), ...int(2, 17)];
  return new Uint8Array([...int(1, 8), ...field(7, graph), ...field(8, opset)]);
}

let session = null;

/** a (m × k) @ b (k × n), row-major Float64Arrays → Float64Array (m × n). */
export async function matmul(a, m, k, b, n) {
  session ??= ort.InferenceSession.create(matmulModel(), { executionProviders: ["wasm"] });
  const s = await session;
  const out = await s.run({ a: new ort.Tensor("float64", a, [m, k]), b: new ort.Tensor("float64", b, [k, n]) });
  return out.c.data;
}
