// Decode the parts of range-coded streams made by codec/entropy.py, in Node (no browser):
//   node test/entropy.mjs CASES.json   → JSON: per case, the parts' symbols or the error
// CASES: [{ tables: [{ values, starts, offsets }], data: base64, parts: [{ ids, table }] }]
import { readFileSync } from "node:fs";
import { Decoder, TableSet } from "../src/entropy.js";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = cases.map((c) => {
  const tables = c.tables.map((t) => new TableSet(Uint32Array.from(t.values), t.starts, t.offsets));
  try {
    const dec = new Decoder(new Uint8Array(Buffer.from(c.data, "base64")));
    return { parts: c.parts.map((p) => Array.from(dec.readPart(Int32Array.from(p.ids), tables[p.table]))) };
  } catch (e) {
    return { error: e.message };
  }
});
console.log(JSON.stringify(out));
