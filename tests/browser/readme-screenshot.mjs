// Makes docs/dashboard.png, the README's picture of the dashboard: the demo runs for a few
// minutes with visitors coming and going; a third of the way in app-3 is drained (its sessions
// stay, new ones go elsewhere), at two thirds app-1 is stopped (its sessions move) and comes
// back 30 s later. The page is photographed at 1280 px wide just before the traffic ends. Not part of CI (it takes
// minutes); run it by hand after the page changes:
//
//   cargo build --example demo && node tests/browser/readme-screenshot.mjs [SECONDS]
//
// SECONDS (default 170) is how long the traffic runs; OUT overrides docs/dashboard.png.

import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(root, "target");
const demoBin = process.env.DEMO_BIN || path.join(targetDir, "debug", "examples", "demo");
const out = process.env.OUT || path.join(root, "docs", "dashboard.png");
const seconds = Number(process.argv[2] || 170);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const demo = spawn(demoBin, ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
const killer = setTimeout(() => { demo.kill("SIGKILL"); process.exit(1); }, (seconds + 60) * 1000);
let text = "";
demo.stdout.on("data", (d) => { text += d; });
let app, admin;
for (let i = 0; i < 100 && !(app && admin); i++) {
  await sleep(100);
  app = (/Open (http:\/\/\S+\/) in a browser/.exec(text) || [])[1];
  admin = (/Dashboard: (http:\/\/\S+\/)/.exec(text) || [])[1];
}
if (!app || !admin) throw new Error(`the demo printed no addresses: ${text}`);
console.log(`demo: app ${app}, dashboard ${admin}; traffic for ${seconds} s`);

const end = Date.now() + seconds * 1000;
const jars = new Map(); // instance -> a cookie jar pinned there
async function visitor() {
  while (Date.now() < end) {
    const jar = new Map();
    const loads = 10 + Math.floor(Math.random() * 50);
    for (let i = 0; i < loads && Date.now() < end; i++) {
      const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
      try {
        const r = await fetch(app, { headers: cookie ? { cookie } : {}, signal: AbortSignal.timeout(5000) });
        for (const c of r.headers.getSetCookie()) {
          const [pair] = c.split(";");
          const eq = pair.indexOf("=");
          jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
        }
        const at = (/<h1>(app-\d)<\/h1>/.exec(await r.text()) || [])[1];
        if (at) jars.set(at, new Map(jar));
      } catch { /* an instance stopped under us: the next load goes elsewhere */ }
      await sleep(150 + Math.random() * 700);
    }
  }
}
async function script() {
  await sleep(seconds * 333);
  await fetch(`${admin}backends/app-3/drain`, { method: "POST" });
  console.log("app-3 drained");
  await sleep(seconds * 333);
  const jar = jars.get("app-1");
  if (jar) {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
    await fetch(`${app}stop`, { method: "POST", headers: { cookie, "content-type": "application/x-www-form-urlencoded" }, body: "instance=app-1" });
    console.log("app-1 stopped for 30 s");
  }
}
async function photograph() {
  await sleep(seconds * 1000 - 12_000);
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 1180 } });
  await page.goto(admin);
  await page.waitForSelector("figure[data-chart=requests] svg path[data-series]");
  // While the traffic still runs, so the newest second is a busy one.
  await sleep(Math.max(0, end - Date.now() - 2000));
  await page.screenshot({ path: out });
  console.log(`saved ${out}`);
  return browser;
}
const [browser] = await Promise.all([photograph(), script(), ...Array.from({ length: 24 }, (_, i) => sleep(i * 150).then(visitor))]);
await browser.close();
demo.kill("SIGTERM");
await once(demo, "exit");
clearTimeout(killer);
