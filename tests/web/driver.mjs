// Drives the node's real page in headless Chromium for tests/e2e/browser.rs. Runs inside the
// browser host's network namespace. Reads one command per line on stdin, answers with one
// JSON line per command on stdout (`{"ok":true,...}` or `{"ok":false,"error":...}`).
//
// Environment: FSNODE_URL (the page), PLAYWRIGHT_DIR (where npm installed playwright-core),
// CHROMIUM (the browser binary), WORK_DIR (profile, downloads), FSNODE_WEB_DIR (optional: serve
// the page's files from this directory instead of the node's embedded copies).
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
//   receive NAME SECONDS       -> {ms}                    waits for NAME to be received and verified (no save)
//   clear-finished             -> {sends, receives, clearVisible, afterReload}  clicks "Clear finished" in both lists
//   cpu                        -> {renderer, all, threads} CPU seconds of the Chromium processes, and
//                                                          the busiest threads (process kind/thread name)
//   profile-start              ->  {}                     starts the page's JS CPU profiler (CDP)
//   profile-stop PATH          -> {top, idlePct}          stops it, writes PATH (.cpuprofile), top self times
//   page-floor MIB             -> {sha256MBs, idbMBs}     the page's own SHA-256 (wasm) and IndexedDB
//                                                          Blob-store rates over MIB of data, in the tab
//   baseline-upload URL PATH   -> {ms}                    POSTs PATH with fetch() from a tab on URL
//   baseline-download URL BYTES-> {ms}                    GETs URL/blob?bytes=BYTES with fetch(), reading it all
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
// FSNODE_WEB_DIR (for working on the page): its files replace the node's embedded ones of the
// same name (the node's headers kept), so a script change is measured without rebuilding the node.
if (process.env.FSNODE_WEB_DIR) {
  const dir = process.env.FSNODE_WEB_DIR;
  const local = (u) => {
    // Not the document itself: a fulfilled document loses its private address space, and
    // Chromium then blocks its fetches back to the node.
    const name = new URL(u).pathname.slice(1);
    const file = path.join(dir, name);
    return name !== '' && name !== 'index.html' && new URL(u).port === new URL(url).port && /^[\w.-]+$/.test(name) && fs.existsSync(file) ? file : null;
  };
  // Only the files the directory has are intercepted (an intercepted fetch() of anything else
  // would lose its address space and fail Chromium's private-network checks).
  await context.route((u) => local(u.href ?? u) !== null, async (route) => {
    const name = new URL(route.request().url()).pathname.slice(1);
    const file = local(route.request().url());
    const response = await route.fetch();
    const types = { js: 'text/javascript', wasm: 'application/wasm', svg: 'image/svg+xml', css: 'text/css', html: 'text/html' };
    const contentType = types[name.split('.').pop()] || 'application/octet-stream';
    return route.fulfill({ response, status: 200, contentType, body: fs.readFileSync(file) });
  });
}
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
      // The id wraps only between its groups: each group is one line box (one client rect).
      idGroups: document.querySelectorAll('#device-id span').length,
      idGroupsUnbroken: [...document.querySelectorAll('#device-id span')].every((g) => g.getClientRects().length === 1),
      idText: document.getElementById('device-id').textContent,
      copyVisible: visible('copy-id'),
      folderPickerVisible: visible('pick-folder-label'),
      clearSendsVisible: visible('clear-sends'),
      finishedMeta: document.querySelector('#sends li[data-state="done"] .meta')?.textContent ?? '',
      receivedMeta: document.querySelector('#receives li[data-state="done"] .meta')?.textContent ?? '',
      favicon: document.querySelector('link[rel="icon"]')?.getAttribute('href') ?? '',
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

/** Clicks both lists' "Clear finished"; answers what is left (rows, and stored records after a
 * reload of the page, which shows what IndexedDB still remembers). */
async function clearFinished() {
  await page.click('#clear-sends');
  await page.click('#clear-receives');
  // Clearing is done once each button hides itself (the stored records are deleted by then).
  await page.waitForFunction(() => document.getElementById('clear-sends').hidden
    && document.getElementById('clear-receives').hidden, null, { timeout: 20000, polling: 50 });
  const rows = () => page.evaluate(() => ({
    sends: document.querySelectorAll('#sends li').length,
    receives: document.querySelectorAll('#receives li').length,
    clearVisible: !document.getElementById('clear-sends').hidden || !document.getElementById('clear-receives').hidden,
  }));
  const now = await rows();
  await page.reload();
  await waitState('connected', 30);
  return { ...now, afterReload: await rows() };
}

/** Waits until NAME (the newest row of that name) is received and verified. */
async function receive(name, seconds) {
  const started = Date.now();
  const row = page.locator('#receives li').filter({ has: page.locator('.name', { hasText: name }) }).first();
  await row.and(page.locator('[data-state="done"]')).waitFor({ timeout: seconds * 1000 });
  return { ms: Date.now() - started };
}

/** CPU seconds (user + system, from /proc) of the Chromium processes this driver started: the
 * renderers, all of them, and every thread by process kind and thread name (the caller takes
 * differences between two calls). */
function chromiumCpu() {
  const ticks = 100; // USER_HZ
  const parents = new Map();
  const procs = new Map();
  const cpuOf = (stat) => {
    const after = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(after[11]) + Number(after[12])) / ticks;
  };
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      parents.set(Number(entry), ppid);
      const sub = /--utility-sub-type=([\w.]+)/.exec(cmdline)?.[1];
      const kind = sub ? sub.split('.').pop() : (/--type=([a-z-]+)/.exec(cmdline)?.[1] ?? 'browser');
      procs.set(Number(entry), { kind, cpu: cpuOf(stat) });
    } catch { /* ended meanwhile */ }
  }
  const mine = (pid) => {
    for (let p = parents.get(pid), hops = 0; p && hops < 16; p = parents.get(p), hops++) if (p === process.pid) return true;
    return false;
  };
  let renderer = 0;
  let all = 0;
  const threads = {};
  for (const [pid, { kind, cpu }] of procs) {
    if (!mine(pid)) continue;
    all += cpu;
    if (kind === 'renderer') renderer += cpu;
    try {
      for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
        const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
        const key = `${kind}/${name}`;
        threads[key] = (threads[key] || 0) + cpuOf(stat);
      }
    } catch { /* ended meanwhile */ }
  }
  return { renderer, all, threads };
}

let profiler = null;
async function profileStart() {
  profiler = await context.newCDPSession(page);
  await profiler.send('Profiler.enable');
  await profiler.send('Profiler.setSamplingInterval', { interval: 500 });
  await profiler.send('Profiler.start');
  return {};
}

/** Stops the profiler, writes the profile, and sums self time by function (name, file:line). */
async function profileStop(file) {
  if (!profiler) throw new Error('profile-start first');
  const { profile } = await profiler.send('Profiler.stop');
  await profiler.detach();
  profiler = null;
  fs.writeFileSync(file, JSON.stringify(profile));
  const self = new Map();
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const counts = new Map();
  for (const id of profile.samples) counts.set(id, (counts.get(id) || 0) + 1);
  let total = 0;
  for (const [id, n] of counts) {
    const node = byId.get(id);
    const f = node.callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url ? `${f.url.split('/').pop()}:${f.lineNumber + 1}` : ''}`.trim();
    self.set(key, (self.get(key) || 0) + n);
    total += n;
  }
  const top = [...self].sort((a, b) => b[1] - a[1]).slice(0, 15)
    .map(([name, n]) => [name, Math.round((1000 * n) / Math.max(1, total)) / 10]);
  return { top, idlePct: Math.round((1000 * (self.get('(idle)') || 0)) / Math.max(1, total)) / 10, samples: total };
}

/** The page's own costs, measured in the tab with the page's modules: SHA-256 (the wasm module
 * the page uses on http:// pages) and storing 128 KiB Blobs in IndexedDB one per transaction,
 * as the page stores received chunks. */
async function pageFloor(mib) {
  return page.evaluate(async (mib) => {
    const { loadSha256, Sha256 } = await import('/sha256.js');
    await loadSha256();
    const chunk = new Uint8Array(128 * 1024);
    crypto.getRandomValues(chunk.subarray(0, 65536));
    const n = (mib * 1024 * 1024) / chunk.length;
    let t0 = performance.now();
    for (let i = 0; i < n; i++) new Sha256().update(chunk).finish();
    const sha256MBs = (mib * 1048576) / 1e3 / (performance.now() - t0);
    const db = await new Promise((resolve, reject) => {
      const open = indexedDB.open('fsnode-floor', 1);
      open.onupgradeneeded = () => open.result.createObjectStore('chunks');
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
    t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const tx = db.transaction('chunks', 'readwrite');
      tx.objectStore('chunks').put(new Blob([chunk]), i);
      await new Promise((resolve, reject) => { tx.oncomplete = resolve; tx.onerror = () => reject(tx.error); });
    }
    const idbMBs = (mib * 1048576) / 1e3 / (performance.now() - t0);
    db.close();
    await new Promise((resolve) => { const d = indexedDB.deleteDatabase('fsnode-floor'); d.onsuccess = d.onerror = resolve; });
    return { sha256MBs: Math.round(sha256MBs * 10) / 10, idbMBs: Math.round(idbMBs * 10) / 10 };
  }, mib);
}

let baselinePage = null;
async function baselineTab(url) {
  if (!baselinePage) {
    baselinePage = await context.newPage();
    await baselinePage.goto(url);
  }
  return baselinePage;
}

/** The same bytes over plain HTTP from a tab: fetch() POSTs the picked file (read from disk as
 * the page reads a picked file). */
async function baselineUpload(url, file) {
  const tab = await baselineTab(url);
  await tab.setInputFiles('#file', file);
  const ms = await tab.evaluate(async () => {
    const t0 = performance.now();
    const response = await fetch('/upload', { method: 'POST', body: document.getElementById('file').files[0] });
    await response.text();
    if (!response.ok) throw new Error(`upload: ${response.status}`);
    return performance.now() - t0;
  });
  return { ms: Math.round(ms) };
}

/** fetch() GETs BYTES and reads the whole body as a stream. */
async function baselineDownload(url, bytes) {
  const tab = await baselineTab(url);
  const { ms, got } = await tab.evaluate(async (bytes) => {
    const t0 = performance.now();
    const response = await fetch(`/blob?bytes=${bytes}`);
    const reader = response.body.getReader();
    let got = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      got += value.length;
    }
    return { ms: performance.now() - t0, got };
  }, bytes);
  if (got !== bytes) throw new Error(`baseline download: ${got} of ${bytes} bytes`);
  return { ms: Math.round(ms) };
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
    else if (command === 'clear-finished') result = await clearFinished();
    else if (command === 'receive') result = await receive(args[0], Number(args[1] || 120));
    else if (command === 'cpu') result = chromiumCpu();
    else if (command === 'page-debug') result = await page.evaluate(() => { const d = { send: fsnodeDebug.send, receive: fsnodeDebug.receive }; fsnodeDebug.send = {}; fsnodeDebug.receive = {}; return d; });
    else if (command === 'profile-start') result = await profileStart();
    else if (command === 'profile-stop') result = await profileStop(args[0]);
    else if (command === 'page-floor') result = await pageFloor(Number(args[0] || 64));
    else if (command === 'baseline-upload') result = await baselineUpload(args[0], args[1]);
    else if (command === 'baseline-download') result = await baselineDownload(args[0], Number(args[1]));
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
