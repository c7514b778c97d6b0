// Decode files in headless Chromium through the demo page and print what the Python tests
// compare: symbol hashes, pixel differences against a reference, errors.
//
//   node test/browser.mjs BASE_URL TASKS.json [THREADS [PICK]]
// TASKS: [{ name, url, ref?, repeat? }]; ref: raw RGBA to compare with; repeat: decodes to time
// (the first is a warm-up, then the median). THREADS: onnxruntime-web's (0: its own default).
// PICK: a local .onic file to choose with the page's file picker, as a person would; the
// text the page then shows is returned as "picked".
// Chromium: $ONIC_CHROMIUM, else chromium on PATH.
import { existsSync, readFileSync } from "node:fs";
import { delimiter, join } from "node:path";
import { chromium } from "playwright-core";

const [base, tasksFile, threads, pick] = process.argv.slice(2);
const tasks = JSON.parse(readFileSync(tasksFile, "utf8"));
const onPath = (name) => (process.env.PATH || "").split(delimiter).map((d) => join(d, name)).find(existsSync);
const executablePath = process.env.ONIC_CHROMIUM || onPath("chromium") || onPath("chromium-browser");
if (!executablePath) throw new Error("Chromium not found: install it (apt-get install chromium) or set ONIC_CHROMIUM");
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(Number(threads) ? `${base}?threads=${threads}` : base);
  const results = await page.evaluate(async (tasks) => {
    const { ready, decode, decodeLatents, OnicError } = window.onic;
    const bundle = await ready;
    const hex = async (a) => Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", a)),
      (b) => b.toString(16).padStart(2, "0")).join("");
    const out = [];
    for (const t of tasks) {
      const bytes = new Uint8Array(await (await fetch(t.url)).arrayBuffer());
      try {
        const lat = await decodeLatents(bytes, bundle);
        const r = { name: t.name, z: await hex(lat.zSymbols), y: await hex(lat.ySymbols) };
        const d = await decode(bytes, bundle);
        Object.assign(r, { width: d.image.width, height: d.image.height, ms: d.timings.total_ms,
          icc: d.icc ? d.icc.length : 0, exif: d.exif ? d.exif.length : 0, xmp: d.xmp ? d.xmp.length : 0 });
        if (t.repeat) {
          const runs = [];
          for (let i = 0; i < t.repeat; i++) runs.push((await decode(bytes, bundle)).timings);
          runs.sort((a, b) => a.total_ms - b.total_ms);
          r.timings = runs[Math.floor(runs.length / 2)];
        }
        if (t.ref) {
          const ref = new Uint8Array(await (await fetch(t.ref)).arrayBuffer());
          let maxDiff = ref.length === d.image.data.length ? 0 : 256, differing = 0;
          for (let i = 0; i < ref.length && maxDiff < 256; i++) {
            const diff = Math.abs(ref[i] - d.image.data[i]);
            if (diff) { differing++; maxDiff = Math.max(maxDiff, diff); }
          }
          Object.assign(r, { maxDiff, differing });
        }
        out.push(r);
      } catch (e) {
        out.push({ name: t.name, error: e.message, onic: e instanceof OnicError });
      }
    }
    return { results: out, bundle: bundle.modelId, downloadBytes: bundle.downloadBytes,
      threads: window.onic.threads, userAgent: navigator.userAgent };
  }, tasks);
  if (pick) {
    await page.setInputFiles("#pick", pick);
    const item = page.locator(".item").first();
    await item.locator("canvas, .error").first().waitFor({ timeout: 120000 });
    results.picked = await item.innerText();
  }
  results.pageErrors = errors;
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
}
