// The demo page: drop or pick .onic files and see them decoded, with size, bpp, model id and
// decode time. Files listed by the server (onic view FILE) open at once. window.onic exposes
// the decoder to the browser tests.
import * as ort from "onnxruntime-web";
import { Bundle, decode, decodeLatents, OnicError } from "./src/onic.js";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
const params = new URLSearchParams(location.search);
if (params.get("threads")) ort.env.wasm.numThreads = Number(params.get("threads"));
const status = document.getElementById("status");
const out = document.getElementById("out");
const bundleUrl = params.get("bundle") || "./models/default/";
const ready = Bundle.load(bundleUrl);

function row(table, key, value) {
  const tr = table.insertRow();
  tr.insertCell().textContent = key;
  tr.insertCell().textContent = value;
}

async function show(name, bytes) {
  const item = document.createElement("div");
  item.className = "item";
  item.innerHTML = `<strong></strong>`;
  item.firstChild.textContent = name;
  out.prepend(item);
  try {
    const bundle = await ready;
    const { image, header, timings } = await decode(bytes, bundle);
    const table = document.createElement("table");
    row(table, "size", `${header.width} × ${header.height} ${header.mode}, quality ${header.quality}`);
    row(table, "file", `${bytes.length} bytes, ${(8 * bytes.length / (header.width * header.height)).toFixed(4)} bpp`);
    row(table, "model id", header.modelId);
    row(table, "decode", `${timings.total_ms.toFixed(0)} ms (entropy and integer path ${timings.entropy_and_integer_ms.toFixed(0)}, ` +
      `hyper decoder ${timings.hyper_decoder_ms.toFixed(0)}, synthesis ${timings.synthesis_ms.toFixed(0)})`);
    const canvas = document.createElement("canvas");
    canvas.width = header.width;
    canvas.height = header.height;
    canvas.getContext("2d").putImageData(image, 0, 0);
    item.append(table, canvas);
  } catch (e) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = e instanceof OnicError ? e.message : `error: ${e.message}`;
    item.append(p);
  }
}

async function showFiles(files) {
  for (const f of files) await show(f.name, new Uint8Array(await f.arrayBuffer()));
}

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); showFiles(e.dataTransfer.files); });
document.getElementById("pick").addEventListener("change", (e) => showFiles(e.target.files));

window.onic = { ready, decode, decodeLatents, OnicError, get threads() { return ort.env.wasm.numThreads; } };
ready.then(async (bundle) => {
  status.textContent = `Model ${bundle.modelId} loaded (${(bundle.downloadBytes / 1e6).toFixed(1)} MB).`;
  const listed = await fetch("./files.json").then((r) => (r.ok ? r.json() : []), () => []);
  for (const f of listed) await show(f.name, new Uint8Array(await (await fetch(f.url)).arrayBuffer()));
}, (e) => { status.textContent = e.message; status.className = "error"; });
