// The dashboard (GET / on the admin listener) in a real browser: headless Chromium (Debian's
// `chromium`, driven by playwright-core).
//
// 1. The page alone, on fixture.json served from here: a backend id made of markup is shown as
//    text and never runs; the "shutting down" and "unreachable" banners appear.
// 2. The demo (target/debug/examples/demo): cookie-keeping clients send traffic; once it has
//    stopped, every number the page shows agrees with /backends and /metrics, and the charts
//    have data. Drain, Enable, Handoff and Reload are pressed (the confirm dialog accepted, or
//    dismissed: then nothing happens) and their results shown; a foreign page's POST is refused.
//    Screenshots: target/dashboard.png (1280x900) and target/dashboard-phone.png (390x844).
// 3. The demo with `[admin] token`: the page asks for the token, a wrong one is refused, the
//    right one shows the data and the page's POSTs carry it.
//
// Run: `npm ci --prefix tests/browser && cargo build --example demo && node tests/browser/dashboard.mjs`.
// CHROMIUM (default /usr/bin/chromium), DEMO_BIN and CARGO_TARGET_DIR override the paths.
// Prints one line per check and "dashboard: N passed, M failed"; exits non-zero on a failure.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync, mkdirSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(process.env.CARGO_TARGET_DIR) : path.join(root, "target");
const demoBin = process.env.DEMO_BIN || path.join(targetDir, "debug", "examples", "demo");
const chromiumBin = process.env.CHROMIUM || "/usr/bin/chromium";
const pagePath = path.join(root, "src", "admin", "dashboard.html");
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const WHOLE_RUN_MS = 120_000;
const STEP_MS = 10_000;

let passed = 0;
let failed = 0;
const children = new Set();
const servers = new Set();
let browser = null;

// The whole run is bounded: past WHOLE_RUN_MS everything is killed and the run fails.
const watchdog = setTimeout(() => {
  console.log(`dashboard: FAILED: the run took longer than ${WHOLE_RUN_MS / 1000} s`);
  failed++;
  cleanup().finally(() => finish());
}, WHOLE_RUN_MS);

function ok(what) {
  passed++;
  console.log(`ok - ${what}`);
}

// Fails the run with a message that says what was expected and what was seen.
class CheckFailed extends Error {}
function check(what, cond, seen) {
  if (!cond) throw new CheckFailed(`${what}${seen === undefined ? "" : `; saw: ${typeof seen === "string" ? seen : JSON.stringify(seen)}`}`);
  ok(what);
}

// Polls `fn` until it returns a truthy value (which it returns), or fails with the last value
// or error seen. Everything that waits for the page or the server goes through here.
async function eventually(what, fn, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e instanceof CheckFailed ? e.message : String(e && e.stack || e);
    }
    if (Date.now() > deadline) throw new CheckFailed(`${what}: not within ${ms} ms; last: ${typeof last === "string" ? last : JSON.stringify(last)}`);
    await sleep(150);
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- The demo -----------------------------------------------------------------------------

// Starts the demo on free ports and returns its app and admin URLs (read from what it prints).
async function startDemo(extraArgs = [], env = {}) {
  const child = spawn(demoBin, ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", ...extraArgs], {
    env: { ...process.env, RUST_LOG: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  let out = "", err = "";
  child.stdout.on("data", (d) => { out += d; });
  child.stderr.on("data", (d) => { err += d; });
  child.on("exit", () => children.delete(child));
  try {
    await once(child, "spawn"); // rejects with the "error" event, e.g. no such file
  } catch (e) {
    throw new CheckFailed(`cannot start the demo ${demoBin}: ${e.message} (build it: cargo build --example demo)`);
  }
  const urls = await eventually("the demo prints its addresses", () => {
    if (child.exitCode !== null) throw new CheckFailed(`the demo exited with ${child.exitCode}: ${err.trim().slice(-500)}`);
    const app = /Open (http:\/\/\S+\/) in a browser/.exec(out);
    const admin = /Dashboard: (http:\/\/\S+\/)/.exec(out);
    return app && admin && { app: app[1], admin: admin[1] };
  }, 15_000);
  return { child, ...urls, log: () => err };
}

async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const exited = await Promise.race([once(child, "exit").then(() => true), sleep(7000).then(() => false)]);
  if (!exited) child.kill("SIGKILL");
}

async function get(url, headers = {}) {
  const r = await fetch(url, { headers, signal: AbortSignal.timeout(5000) });
  return { status: r.status, body: await r.text() };
}
async function getJson(url, headers) {
  const r = await get(url, headers);
  if (r.status !== 200) throw new CheckFailed(`GET ${url}: ${r.status} ${r.body}`);
  return JSON.parse(r.body);
}

// One visitor with its own cookie jar: returns which instance served each of `n` page loads.
async function visitor(url, n, gapMs) {
  const jar = new Map();
  const served = [];
  for (let i = 0; i < n; i++) {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
    const r = await fetch(url, { headers: cookie ? { cookie } : {}, signal: AbortSignal.timeout(5000) });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(";");
      const eq = pair.indexOf("=");
      jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
    }
    const body = await r.text();
    if (r.status !== 200) throw new CheckFailed(`GET ${url} answered ${r.status}: ${body.slice(0, 200)}`);
    served.push((/<h1>(app-\d)<\/h1>/.exec(body) || [, "?"])[1]);
    await sleep(gapMs);
  }
  return served;
}

// The value of one sample of `name` for `backend` in a Prometheus text exposition.
function metric(text, name, backend, extra = "") {
  for (const line of text.split("\n")) {
    if (line.startsWith(`${name}{`) && line.includes(`backend="${backend}"`) && line.includes(extra)) {
      return Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return undefined;
}

// ---- The page -----------------------------------------------------------------------------

async function newPage(viewport, opts = {}) {
  const context = await browser.newContext({ viewport, ...opts });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  // Script errors; not the browser's notes on answers like 401 or 409, which the page handles.
  page.on("console", (m) => { if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text()); });
  return { page, context, errors };
}

// Every backend row as the page shows it: the first text of each cell (the pill of health and
// state, the number without its thousands separators).
function rowsShown(page) {
  return page.$$eval("tr[data-backend]", (rows) => rows.map((r) => {
    const cells = {};
    for (const td of r.querySelectorAll("td[data-field]")) {
      cells[td.dataset.field] = (td.firstChild ? td.firstChild.textContent : "").trim();
    }
    return { id: r.dataset.backend, pool: r.closest("[data-pool]").dataset.pool, ...cells };
  }));
}
const numberShown = (s) => Number(String(s).replace(/,/g, ""));

// Presses `action` on backend `id` (or the Reload button), answers the confirm dialog, and
// returns the result box once it shows an answer.
async function press(page, id, action, accept = true) {
  const button = id ? page.locator(`tr[data-backend="${id}"] button[data-action="${action}"]`) : page.locator("#reload");
  let question = null;
  const dialog = page.waitForEvent("dialog").then(async (d) => {
    question = { type: d.type(), message: d.message() };
    await (accept ? d.accept() : d.dismiss());
  });
  const before = await page.locator("#result-title").textContent();
  await button.click();
  await dialog;
  check(`${id ? `${action} ${id}` : action}: the page asks first (${question.type})`,
    question.type === "confirm" && question.message.toLowerCase().includes(action === "handoff" ? "hand off" : action), question);
  if (!accept) return null;
  return eventually(`${action} ${id}: the page shows the answer`, async () => {
    const box = await page.evaluate(() => {
      const r = document.getElementById("result");
      return { hidden: r.hidden, status: r.dataset.status, title: r.querySelector("#result-title").textContent,
        body: r.querySelector("#result-body").textContent, role: r.getAttribute("role") };
    });
    return !box.hidden && box.status && box.title !== before && box;
  });
}

// ---- 1. The page on a fixture -------------------------------------------------------------

async function fixtureRun() {
  console.log("# the page on tests/browser/fixture.json");
  const evil = `<img src=x onerror="window.__pwned=1">"'&`;
  const fixture = JSON.parse(readFileSync(path.join(here, "fixture.json"), "utf8"));
  const pool = fixture.pools[0];
  const old = pool.backends[0].id;
  pool.backends[0].id = evil;
  for (const k of ["requests", "errors"]) {
    pool.series[k][evil] = pool.series[k][old];
    delete pool.series[k][old];
  }
  const page0 = readFileSync(pagePath);
  let answer = "ok"; // ok | stopping | down
  const server = http.createServer((req, res) => {
    if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      return res.end(page0);
    }
    if (req.url === "/dashboard.json" && answer !== "down") {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
      return res.end(JSON.stringify({ ...fixture, stopping: answer === "stopping" }));
    }
    res.writeHead(503, { "content-type": "text/plain" });
    res.end("unavailable\n");
  });
  servers.add(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const url = `http://127.0.0.1:${server.address().port}/`;
  const { page, context, errors } = await newPage({ width: 1280, height: 900 });
  try {
    await page.goto(url);
    await page.waitForSelector("tr[data-backend]");
    const rows = await rowsShown(page);
    check("every backend of the fixture's two pools has a row", rows.length === 5 && new Set(rows.map((r) => r.pool)).size === 2, rows.map((r) => r.id));
    const shown = rows.find((r) => r.id === evil);
    check("a backend id made of markup is shown as text", shown && shown.id === evil, rows.map((r) => r.id));
    const injected = await page.evaluate(() => ({ pwned: window.__pwned, imgs: document.querySelectorAll("main img").length }));
    check("and nothing in it ran or became an element", injected.pwned === undefined && injected.imgs === 0, injected);
    const legend = await page.locator(`[data-pool="default"] figure[data-chart="requests"] .legend li[data-series]`).allTextContents();
    check("the requests chart's legend names it as text too", legend.some((t) => t.startsWith(evil)), legend);
    const charts = await page.$$eval("figure[data-chart]", (fs) => fs.map((f) => f.dataset.chart));
    check("each pool has its five charts and the latency chart stands alone for two pools",
      charts.filter((c) => c === "requests").length === 2 && charts.filter((c) => c === "latency").length === 1 &&
      (await page.locator("#whole").isVisible()), charts);
    const outcomes = await page.locator(`[data-pool="default"] figure[data-chart="outcomes"] path[data-series]`).evaluateAll((ps) => ps.map((p) => p.dataset.series).sort());
    check("the outcomes chart draws only the reasons seen in the window", JSON.stringify(outcomes) === JSON.stringify(["draining", "expired_idle", "new", "refreshed", "valid"]), outcomes);
    const drain = await page.locator(`tr[data-backend="app-3"] td[data-field="drain"]`).textContent();
    check("a drained backend says so, and how long it has been draining", drain.includes("drained: safe to stop") && drain.includes("draining for 1 min 35 s"), drain);
    check("the stopping and unreachable banners are hidden while all is well",
      !(await page.locator("#banner-stopping").isVisible()) && !(await page.locator("#banner-unreachable").isVisible()));
    answer = "stopping";
    await page.locator("#banner-stopping").waitFor({ state: "visible" });
    ok("a stopping instance gets its banner");
    answer = "down";
    await page.locator("#banner-unreachable").waitFor({ state: "visible" });
    const banner = await page.locator("#banner-unreachable").textContent();
    check("an unreachable instance gets its banner, and the rows stay", banner.includes("Cannot get data") && (await page.locator("tr[data-backend]").count()) === 5, banner);
    check("no script error on the page", errors.length === 0, errors);
  } finally {
    await context.close();
    server.close();
    servers.delete(server);
  }
}

// ---- 2. The demo --------------------------------------------------------------------------

async function demoRun() {
  console.log("# the demo: traffic, numbers, actions, screenshots");
  const demo = await startDemo();
  try {
    const { page, context, errors } = await newPage({ width: 1280, height: 900 });
    await page.goto(demo.admin);
    await page.waitForSelector("tr[data-backend]");
    const ids = await eventually("the three instances are up", async () => {
      const bs = await getJson(`${demo.admin}backends`);
      return bs.length === 3 && bs.every((b) => b.health === "up") && bs.map((b) => b.id);
    });
    ok(`the page lists the demo's backends (${ids.join(", ")})`);

    // Traffic: 12 visitors, 25 page loads each over about 5 s, while the page watches.
    const visitors = 12, loads = 25;
    const served = await Promise.all(Array.from({ length: visitors }, () => visitor(demo.app, loads, 200)));
    const sent = visitors * loads;
    check("every visitor stayed on the instance that served it first", served.every((s) => s.every((x) => x === s[0] && x !== "?")), served.map((s) => [...new Set(s)].join("+")));

    // Traffic has stopped: the page must agree with /backends and /metrics exactly.
    const agreed = await eventually("the page shows what /backends and /metrics say", async () => {
      const [backends, metrics, rows] = await Promise.all([getJson(`${demo.admin}backends`), get(`${demo.admin}metrics`), rowsShown(page)]);
      const m = metrics.body;
      const diffs = [];
      for (const b of backends) {
        const r = rows.find((x) => x.id === b.id);
        if (!r) { diffs.push(`${b.id}: no row`); continue; }
        const want = { address: b.address, health: b.health, state: b.state, requests: b.requests, sessions: b.sessions,
          in_flight: b.in_flight };
        const got = { address: r.address, health: r.health, state: r.state, requests: numberShown(r.requests),
          sessions: numberShown(r.sessions), in_flight: numberShown(r.in_flight) };
        for (const k of Object.keys(want)) if (want[k] !== got[k]) diffs.push(`${b.id} ${k}: page ${got[k]}, /backends ${want[k]}`);
        const fromMetrics = { requests: metric(m, "stickyd_backend_requests_total", b.id), sessions: metric(m, "stickyd_backend_sessions", b.id),
          health: metric(m, "stickyd_backend_up", b.id) === 1 ? "up" : "down",
          state: ["active", "draining", "disabled"].find((s) => metric(m, "stickyd_backend_admin_state", b.id, `state="${s}"`) === 1) };
        for (const k of Object.keys(fromMetrics)) if (fromMetrics[k] !== got[k]) diffs.push(`${b.id} ${k}: page ${got[k]}, /metrics ${fromMetrics[k]}`);
      }
      if (rows.length !== backends.length) diffs.push(`${rows.length} rows for ${backends.length} backends`);
      if (diffs.length) throw new CheckFailed(diffs.join("; "));
      return { backends, rows };
    });
    const total = agreed.rows.reduce((a, r) => a + numberShown(r.requests), 0);
    check(`the page's rows agree with /backends and /metrics: ids, health, state, requests, sessions (${agreed.rows.map((r) => `${r.id} ${r.requests} req ${r.sessions} sessions`).join(", ")})`, true);
    check(`the requests shown add up to the ${sent} page loads sent`, total === sent, total);
    const sessions = agreed.rows.reduce((a, r) => a + numberShown(r.sessions), 0);
    // Sessions are estimated per backend (64 registers, ~13%): a collision can lose one or two.
    check(`the sessions shown add up to about the ${visitors} visitors (${sessions})`, Math.abs(sessions - visitors) <= 3, sessions);

    // The charts have data.
    const drawn = await page.$$eval("figure[data-chart]", (fs) => Object.fromEntries(fs.map((f) => [f.dataset.chart,
      [...f.querySelectorAll("svg path[data-series]")].map((p) => [p.dataset.series, p.getAttribute("d").length])])));
    const series = (c) => (drawn[c] || []).filter(([, len]) => len > 20).map(([s]) => s).sort();
    check("the requests chart draws a band for each backend", JSON.stringify(series("requests")) === JSON.stringify([...ids].sort()), drawn.requests);
    check("the latency chart draws p50 and p99", JSON.stringify(series("latency")) === JSON.stringify(["p50", "p99"]), drawn.latency);
    check("the outcomes chart draws new sessions and valid cookies", ["new", "valid"].every((s) => series("outcomes").includes(s)), drawn.outcomes);
    check("the imbalance chart has a line", series("imbalance").length === 1, drawn.imbalance);
    const legend = await page.locator(`figure[data-chart="requests"] .legend li[data-series="total"] b`).textContent();
    check("the requests chart's legend totals the newest second", /^\d+$/.test(legend.replace(/,/g, "")), legend);
    const titles = await page.locator("figure[data-chart] h3").allTextContents();
    check("every chart says what it shows", titles.length === 6 && titles.every((t) => t.length > 10), titles);

    await page.screenshot({ path: path.join(targetDir, "dashboard.png") });
    ok(`screenshot ${path.join(targetDir, "dashboard.png")}`);

    // Actions. A dismissed confirm sends nothing.
    const [first, second] = ids;
    await press(page, first, "disable", false);
    await sleep(300);
    const still = (await getJson(`${demo.admin}backends/${first}`)).state;
    check(`a dismissed "Disable ${first}" changes nothing`, still === "active", still);

    const drained = await press(page, second, "drain");
    check(`Drain ${second}: the page shows 200 and the backend's JSON`, drained.status === "200" && drained.title.includes("200") && drained.body.includes('"draining"'), drained);
    check("the result area is a live status region", drained.role === "status");
    await eventually(`${second}'s state cell turns to draining`, async () => (await rowsShown(page)).find((r) => r.id === second).state === "draining");
    const b2 = await getJson(`${demo.admin}backends/${second}`);
    check(`and /backends agrees: draining, set by the api`, b2.state === "draining" && b2.state_source === "api" && b2.draining_since > 0, b2);
    const drainCell = await page.locator(`tr[data-backend="${second}"] td[data-field="drain"]`).textContent();
    check("the drain column shows the drain", /in progress|drained/.test(drainCell), drainCell);
    check("the Drain button is disabled while draining", await page.locator(`tr[data-backend="${second}"] button[data-action="drain"]`).isDisabled());

    const handoff = await press(page, first, "handoff");
    check("Handoff without replication: the page shows the 409 and why", handoff.status === "409" && handoff.body.includes("does not replicate"), handoff);

    const enabled = await press(page, second, "enable");
    check(`Enable ${second}: 200`, enabled.status === "200", enabled);
    await eventually(`${second}'s state cell turns back to active`, async () => (await rowsShown(page)).find((r) => r.id === second).state === "active");
    check("and /backends agrees", (await getJson(`${demo.admin}backends/${second}`)).state === "active");

    const reloaded = await press(page, null, "reload");
    check("Reload: 200 and the backend count", reloaded.status === "200" && reloaded.body.includes('"reloaded"'), reloaded);

    // The cross-origin rules hold in a browser: a page of another origin (the demo app, on
    // another port) cannot disable a backend, even blind (no-cors).
    const foreign = await context.newPage();
    await foreign.goto(demo.app);
    await foreign.evaluate((u) => fetch(u, { method: "POST", mode: "no-cors" }).catch(() => null), `${demo.admin}backends/${first}/disable`);
    await sleep(300);
    const after = (await getJson(`${demo.admin}backends/${first}`)).state;
    check(`a POST from another origin's page leaves ${first} active`, after === "active", after);
    await foreign.close();
    check("no script error on the page", errors.length === 0, errors);

    // The phone.
    const phone = await newPage({ width: 390, height: 844 }, { deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    await phone.page.goto(demo.admin);
    await phone.page.waitForSelector("figure[data-chart=requests] svg path[data-series]");
    const fit = await phone.page.evaluate(() => ({ page: document.documentElement.scrollWidth, table: document.querySelector(".table-wrap").scrollWidth,
      svg: document.querySelector("figure svg").getBoundingClientRect().width }));
    check("on a phone the page fits the screen's width (the table scrolls inside it)", fit.page <= 390 && fit.svg <= 390, fit);
    await phone.page.screenshot({ path: path.join(targetDir, "dashboard-phone.png") });
    ok(`screenshot ${path.join(targetDir, "dashboard-phone.png")}`);
    await phone.context.close();
    await context.close();
  } catch (e) {
    if (e instanceof CheckFailed) e.message += `\n--- the demo's log (last lines) ---\n${demo.log().trim().split("\n").slice(-20).join("\n")}`;
    throw e;
  } finally {
    await stop(demo.child);
  }
}

// ---- 3. The demo with a token -------------------------------------------------------------

async function tokenRun() {
  console.log("# the demo with [admin] token");
  const token = randomBytes(24).toString("base64url");
  const demo = await startDemo(["--admin-token", "env:STICKYD_DEMO_ADMIN_TOKEN"], { STICKYD_DEMO_ADMIN_TOKEN: token });
  try {
    const plain = await get(`${demo.admin}dashboard.json`);
    check("dashboard.json without the token: 401", plain.status === 401, plain.status);
    const { page, context, errors } = await newPage({ width: 1280, height: 900 });
    await page.goto(demo.admin);
    await page.locator("#token-form").waitFor({ state: "visible" });
    check("the page asks for the token and shows no data", (await page.locator("tr[data-backend]").count()) === 0);

    await page.fill("#token-input", `${token}x`);
    await page.click("#token-submit");
    await eventually("a wrong token is refused and asked again", async () =>
      (await page.locator("#token-form").isVisible()) && (await page.locator("#token-form").getAttribute("data-refused")) === "true");
    const msg = await page.locator("#token-message").textContent();
    check("a wrong token is refused, and the page says so", msg.includes("refused") && (await page.locator("tr[data-backend]").count()) === 0, msg);

    await page.fill("#token-input", token);
    await page.click("#token-submit");
    await page.waitForSelector("tr[data-backend]");
    check("the right token shows the data", !(await page.locator("#token-form").isVisible()) && (await page.locator("tr[data-backend]").count()) === 3);
    const id = await page.locator("tr[data-backend]").first().getAttribute("data-backend");
    const drained = await press(page, id, "drain");
    check("the page's POST carries the token: Drain answers 200", drained.status === "200", drained);
    const state = (await getJson(`${demo.admin}backends/${id}`, { authorization: `Bearer ${token}` })).state;
    check("and the backend is draining", state === "draining", state);

    await page.reload();
    await page.waitForSelector("tr[data-backend]");
    check("the token is asked once: a reload of the page keeps it for this tab", !(await page.locator("#token-form").isVisible()));
    check("no script error on the page", errors.length === 0, errors);
    await context.close();
  } finally {
    await stop(demo.child);
  }
}

async function cleanup() {
  for (const s of servers) s.close();
  if (browser) await browser.close().catch(() => {});
  browser = null;
  await Promise.all([...children].map(stop));
}

function finish() {
  console.log(`dashboard: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

process.on("SIGINT", () => { failed++; cleanup().finally(finish); });
process.on("SIGTERM", () => { failed++; cleanup().finally(finish); });

try {
  mkdirSync(targetDir, { recursive: true });
  browser = await chromium.launch({ executablePath: chromiumBin, args: CHROMIUM_ARGS, timeout: 30_000 });
  console.log(`# ${chromiumBin} ${browser.version()}, demo ${demoBin}`);
  await fixtureRun();
  await demoRun();
  await tokenRun();
} catch (e) {
  failed++;
  console.log(`dashboard: FAILED: ${e instanceof CheckFailed ? e.message : e && e.stack || e}`);
} finally {
  clearTimeout(watchdog);
  await cleanup();
  finish();
}
