// Drives the node's real page in headless Chromium for tests/e2e/browser.rs. Runs inside the
// browser host's network namespace. Reads one command per line on stdin, answers with one
// JSON line per command on stdout (`{"ok":true,...}` or `{"ok":false,"error":...}`).
//
// Environment: FSNODE_URL (the page), PLAYWRIGHT_DIR (where npm installed playwright-core),
// CHROMIUM (the browser binary), WORK_DIR (profile, downloads).
//
// Commands:
//   id                         -> {id, code, node}        once the page shows its identity
//   state STATE SECONDS        -> {state}                 waits for #state[data-state=STATE]
//   upload PATH                -> {ms, meta}              picks PATH, waits for the send to be done
//   upload-reload PATH FRACTION-> {ms, meta, reloadedAt}  reloads the tab mid-send, picks it again
//   drop NAME SIZE             -> {ms}                    drops a made-up file on the drop zone, waits for the send
//   upload-folder DIR          -> {ms, names}             picks DIR on the folder input, waits for every file
//   download NAME OUT [SECONDS]-> {ms, suggested}         waits (120 s) for NAME to be received, saves it
//   screenshot PATH            -> {checks}                360-px-wide screenshot + DOM checks, and at 1280 px
//   memory                     -> {jsHeap, rendererRss, browserRss}  now, in bytes
//   watch-memory               -> {}                      starts sampling memory every 200 ms
//   memory-peaks               -> {samples, jsHeap, rendererRss, browserRss}  peaks since watch-memory
//   candidates                 -> {candidates}            the ICE candidates the page signaled
//   quit
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import path from 'node:path';
import fs from 'node:fs';

const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR, 'node_modules') + '/');
const { chromium } = require('playwright-core');

const url = process.env.FSNODE_URL;
const work = process.env.WORK_DIR;
const context = await chromium.launchPersistentContext(path.join(work, 'profile'), {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  acceptDownloads: true,
  downloadsPath: path.join(work, 'downloads'),
  viewport: { width: 360, height: 800 },
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-default-apps', '--disable-features=Translate,MediaRouter,OptimizationHints',
  ],
});
const page = context.pages()[0] || (await context.newPage());
const consoleLines = [];
page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
await page.goto(url);

const reply = (value) => process.stdout.write(JSON.stringify(value) + '\n');
const text = (selector) => page.locator(selector).first().textContent();

async function waitState(state, seconds) {
  await page.waitForSelector(`#state[data-state="${state}"]`, { timeout: seconds * 1000 });
  return { state };
}

async function identity() {
  await page.waitForFunction(() => /^[a-z2-7]{52}$/.test(document.getElementById('device-id').textContent), null, { timeout: 20000 });
  await page.waitForFunction(() => /^\d{4} \d{4}$/.test(document.getElementById('code').textContent), null, { timeout: 20000 });
  return { id: await text('#device-id'), code: await text('#code'), node: await text('#node-name') };
}

function sendRow(name) {
  return page.locator('#sends li').filter({ has: page.locator('.name', { hasText: name }) }).first();
}

async function upload(file) {
  const started = Date.now();
  const name = path.basename(file);
  await page.setInputFiles('#pick-files', file);
  const row = sendRow(name);
  await row.and(page.locator('[data-state="done"]')).waitFor({ timeout: 120000 });
  return { ms: Date.now() - started, meta: await row.locator('.meta').textContent() };
}

/** The files under `dir` as the page names them: `basename(dir)/relative/path`. */
function folderNames(dir) {
  const out = [];
  const walk = (at, prefix) => {
    for (const entry of fs.readdirSync(at, { withFileTypes: true })) {
      if (entry.isDirectory()) walk(path.join(at, entry.name), `${prefix}${entry.name}/`);
      else if (entry.isFile()) out.push(`${prefix}${entry.name}`);
    }
  };
  walk(dir, `${path.basename(dir)}/`);
  return out.sort();
}

async function uploadFolder(dir) {
  const started = Date.now();
  const names = folderNames(dir);
  await page.setInputFiles('#pick-folder', dir);
  await page.waitForFunction(
    (names) => names.every((name) => [...document.querySelectorAll('#sends li')].some(
      (li) => li.querySelector('.name').textContent === name && li.dataset.state === 'done')),
    names, { timeout: 120000, polling: 100 });
  return { ms: Date.now() - started, names };
}

/** Drops a file made in the page (`size` bytes, byte i = i % 251) on the drop zone, as a script
 * can (real drag and drop of folders cannot be synthesized), and waits for its send. */
async function dropFile(name, size) {
  const started = Date.now();
  const dataTransfer = await page.evaluateHandle(({ name, size }) => {
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i++) bytes[i] = i % 251;
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type: 'application/octet-stream' }));
    return transfer;
  }, { name, size });
  await page.dispatchEvent('#drop', 'dragover', { dataTransfer });
  await page.dispatchEvent('#drop', 'drop', { dataTransfer });
  await sendRow(name).and(page.locator('[data-state="done"]')).waitFor({ timeout: 60000 });
  return { ms: Date.now() - started };
}

async function uploadReload(file, fraction) {
  const started = Date.now();
  const name = path.basename(file);
  await page.setInputFiles('#pick-files', file);
  await page.waitForFunction(
    ({ name, fraction }) => [...document.querySelectorAll('#sends li')].some(
      (li) => li.querySelector('.name').textContent === name && li.querySelector('progress').value >= fraction),
    { name, fraction }, { timeout: 60000, polling: 50 });
  const reloadedAt = await sendRow(name).locator('progress').evaluate((p) => p.value);
  const reloading = Date.now();
  await page.reload();
  await waitState('connected', 30);
  const reconnectMs = Date.now() - reloading;
  const paused = await sendRow(name).locator('.meta').textContent();
  await page.setInputFiles('#pick-files', file);
  const row = sendRow(name);
  await row.and(page.locator('[data-state="done"]')).waitFor({ timeout: 120000 });
  return { ms: Date.now() - started, reloadedAt, reconnectMs, paused, meta: await row.locator('.meta').textContent() };
}

async function download(name, out, seconds) {
  const started = Date.now();
  const row = page.locator('#receives li').filter({ has: page.locator('.name', { hasText: name }) }).first();
  await row.and(page.locator('[data-state="done"]')).waitFor({ timeout: seconds * 1000 });
  const received = Date.now() - started;
  if (peaks) peaks.atReceived = { rendererRss: peaks.rendererRss, browserRss: peaks.browserRss };
  const [dl] = await Promise.all([page.waitForEvent('download', { timeout: seconds * 1000 }), row.locator('a.download').click()]);
  await dl.saveAs(out);
  return { ms: received, suggested: dl.suggestedFilename() };
}

async function screenshot(file) {
  await page.screenshot({ path: file, fullPage: true });
  const checks = await page.evaluate(() => {
    const box = (id) => document.getElementById(id)?.getBoundingClientRect();
    const visible = (id) => { const b = box(id); return !!b && b.width > 0 && b.height > 0; };
    return {
      nodeName: document.getElementById('node-name').textContent,
      state: document.getElementById('state').dataset.state,
      deviceIdVisible: visible('device-id'),
      codeVisible: visible('code'),
      dropVisible: visible('drop'),
      sends: document.querySelectorAll('#sends li').length,
      receives: document.querySelectorAll('#receives li').length,
      // Nothing wider than a 360-px phone screen.
      scrollWidth: document.documentElement.scrollWidth,
    };
  });
  // The same page on a desktop screen: no overflow, and the content a readable column
  // (centred, not stretched across 1280 px).
  await page.setViewportSize({ width: 1280, height: 800 });
  checks.desktop = await page.evaluate(() => {
    const main = document.querySelector('main').getBoundingClientRect();
    return {
      scrollWidth: document.documentElement.scrollWidth,
      mainWidth: Math.round(main.width),
      mainLeft: Math.round(main.left),
      dropVisible: document.getElementById('drop').getBoundingClientRect().width > 0,
    };
  });
  await page.setViewportSize({ width: 360, height: 800 });
  return { checks };
}

let cdp = null;
async function jsHeap() {
  if (!cdp) {
    cdp = await context.newCDPSession(page);
    await cdp.send('Performance.enable');
  }
  const { metrics } = await cdp.send('Performance.getMetrics');
  return metrics.find((m) => m.name === 'JSHeapUsedSize')?.value ?? 0;
}

/** Anonymous resident memory of the Chromium processes this driver started (from /proc, in bytes):
 * the renderers (the tab) and all of them together (browser, GPU, network, storage...). */
function processRss() {
  const parents = new Map();
  const info = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      // Anonymous resident memory: the heaps, not the mapped files and shared libraries.
      const rss = /RssAnon:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${entry}/status`, 'utf8'));
      const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      parents.set(Number(entry), ppid);
      const kind = /--type=([a-z-]+)/.exec(cmdline)?.[1] ?? (/--utility-sub-type=([\w.]+)/.exec(cmdline)?.[1] || 'browser');
      const sub = /--utility-sub-type=([\w.]+)/.exec(cmdline)?.[1];
      info.set(Number(entry), { rss: rss ? Number(rss[1]) * 1024 : 0, renderer: kind === 'renderer', kind: sub ? sub.split('.').pop() : kind });
    } catch { /* the process ended meanwhile */ }
  }
  const mine = (pid) => {
    for (let p = parents.get(pid), hops = 0; p && hops < 16; p = parents.get(p), hops++) if (p === process.pid) return true;
    return false;
  };
  let rendererRss = 0;
  let browserRss = 0;
  const byKind = {};
  for (const [pid, { rss, renderer, kind }] of info) {
    if (!mine(pid)) continue;
    browserRss += rss;
    if (renderer) rendererRss += rss;
    byKind[kind] = (byKind[kind] || 0) + Math.round(rss / 1048576);
  }
  return { rendererRss, browserRss, byKind };
}

async function memory() {
  return { jsHeap: await jsHeap(), ...processRss() };
}

let peaks = null;
let watcher = null;
function watchMemory() {
  clearInterval(watcher);
  const started = Date.now();
  // `timeline`: one sample every 5 s, in MiB, to see where memory grows.
  peaks = { samples: 0, jsHeap: 0, rendererRss: 0, browserRss: 0, timeline: [] };
  let busy = false;
  watcher = setInterval(async () => {
    if (busy) return;
    busy = true;
    try {
      const now = await memory();
      peaks.samples += 1;
      for (const key of ['jsHeap', 'rendererRss', 'browserRss']) peaks[key] = Math.max(peaks[key], now[key]);
      if (peaks.samples % 25 === 1 && peaks.timeline.length < 200) {
        const mib = (v) => Math.round(v / 1048576);
        peaks.timeline.push([Math.round((Date.now() - started) / 1000), mib(now.rendererRss), mib(now.browserRss), now.byKind]);
      }
    } catch { /* the page is navigating */ } finally {
      busy = false;
    }
  }, 200);
  return {};
}

function memoryPeaks() {
  clearInterval(watcher);
  watcher = null;
  if (!peaks) throw new Error('watch-memory first');
  return peaks;
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const [command, ...args] = line.trim().split(' ');
  try {
    let result;
    if (command === 'id') result = await identity();
    else if (command === 'state') result = await waitState(args[0], Number(args[1] || 30));
    else if (command === 'upload') result = await upload(args[0]);
    else if (command === 'upload-folder') result = await uploadFolder(args[0]);
    else if (command === 'drop') result = await dropFile(args[0], Number(args[1]));
    else if (command === 'upload-reload') result = await uploadReload(args[0], Number(args[1]));
    else if (command === 'download') result = await download(args[0], args[1], Number(args[2] || 120));
    else if (command === 'screenshot') result = await screenshot(args[0]);
    else if (command === 'memory') result = await memory();
    else if (command === 'watch-memory') result = watchMemory();
    else if (command === 'memory-peaks') result = memoryPeaks();
    else if (command === 'candidates') result = { candidates: await page.evaluate(() => globalThis.fsnodeDebug.candidates) };
    else if (command === 'quit') break;
    else throw new Error(`unknown command ${command}`);
    reply({ ok: true, ...result });
  } catch (err) {
    reply({ ok: false, error: String(err.message || err), console: consoleLines.slice(-30),
      state: await page.locator('#state').textContent().catch(() => '?') });
  }
}
clearInterval(watcher);
await context.close();
