// The node's page: this browser tab as an fsnode peer (spec 1, 3, 3.5 and 4).
//
// Identity: an ECDSA P-256 RTCCertificate made once and kept in IndexedDB; the device id is
// its DTLS fingerprint in base32. Signaling: JSON messages over the WebSocket /signal, with
// perfect negotiation. Transfers: CBOR messages on the pre-negotiated `fileshare` channel.
// Files sent are read in slices (never whole); files received are stored chunk by chunk in
// IndexedDB (on disk, not in the tab's memory) and offered for download only after the
// whole-file hash matched.

import { encode, decode } from './cbor.js';
import { loadSha256, Sha256, sha256, hex, equalBytes } from './sha256.js';
import { deviceIdOf, verificationCode, isPolite } from './trust.js';
import { bytes, duration, finishedSummary, idGroups, canPickFolders } from './view.js';

// --- limits and timings (spec 3.3, 4; README "Limits") --------------------------------------
const ANSWER_TIMEOUT_MS = 10000;
const OFFER_RETRY_DELAYS_MS = [1000, 2000, 4000];
const UNTRUSTED_RETRY_MS = 4000;
const RECONNECT_DELAYS_MS = [1000, 2000, 4000, 8000, 15000];
const CANDIDATE_BUFFER = 64;
const RECEIVE_WINDOW = 64;
const MAX_CHUNK_FAILURES = 3;
const RESEND_WAIT_MS = 30000;
const SEND_BUFFER_HIGH = 4 * 1024 * 1024;
const SEND_BUFFER_LOW = 1024 * 1024;
const ACTIVE_SENDS = 4;
const MAX_MESSAGE_DEFAULT = 64 * 1024;
// A picked file is read this much at a time (several chunks: every read is a trip to the
// browser's file storage).
const READ_BYTES = 1024 * 1024;
// Verified chunks kept in memory until the whole-file hash has taken them (more are read back
// from IndexedDB): the hash runs alongside the receive without holding the file.
const HASH_IN_HAND = 8;
/** Received chunks stored in one IndexedDB transaction at most. */
const STORE_BATCH = 16;
const CERT_LIFETIME_MS = 365 * 24 * 3600 * 1000;

const $ = (id) => document.getElementById(id);

// --- IndexedDB --------------------------------------------------------------------------------
function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error('transaction aborted'));
  });
}

function openDb() {
  const open = indexedDB.open('fsnode', 1);
  open.onupgradeneeded = () => {
    const db = open.result;
    db.createObjectStore('kv');
    db.createObjectStore('sends', { keyPath: 'key' });
    db.createObjectStore('receives', { keyPath: 'idHex' });
    // Key [idHex, index]: one Blob per verified chunk of a received file.
    db.createObjectStore('chunks');
  };
  return request(open);
}

let db;
async function get(store, key) {
  return request(db.transaction(store).objectStore(store).get(key));
}
async function put(store, value, key) {
  const tx = db.transaction(store, 'readwrite');
  tx.objectStore(store).put(value, key);
  return done(tx);
}
async function all(store) {
  return request(db.transaction(store).objectStore(store).getAll());
}
async function deleteChunks(idHex) {
  const tx = db.transaction('chunks', 'readwrite');
  tx.objectStore('chunks').delete(IDBKeyRange.bound([idHex, 0], [idHex, Infinity]));
  return done(tx);
}

// --- identity -----------------------------------------------------------------------------------
async function loadIdentity() {
  let cert = await get('kv', 'certificate');
  if (!cert || cert.expires < Date.now() + 24 * 3600 * 1000) {
    cert = await RTCPeerConnection.generateCertificate({
      name: 'ECDSA',
      namedCurve: 'P-256',
      expires: CERT_LIFETIME_MS,
    });
    await put('kv', cert, 'certificate');
  }
  return { cert, id: deviceIdOf(cert) };
}

function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? 'Edge' : /Firefox\//.test(ua) ? 'Firefox'
    : /Chrom(e|ium)\//.test(ua) ? 'Chromium' : /Safari\//.test(ua) ? 'Safari' : 'Browser';
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS'
    : /Windows/.test(ua) ? 'Windows' : /Mac OS/.test(ua) ? 'macOS' : /Linux/.test(ua) ? 'Linux' : '';
  return `${browser}${os ? ' on ' + os : ''}`.slice(0, 63);
}

function isMobile() {
  return /Android|iPhone|iPad|Mobile/.test(navigator.userAgent);
}

// --- the page's state ---------------------------------------------------------------------------
const me = { id: null, cert: null };
let node = null; // the node's hello
let ws = null;
let session = null; // one RTCPeerConnection and its channel
let reconnects = 0;
let trusted = null; // null unknown, false refused, true connected once
// Offer numbers only grow, across sessions and reloads: the node answers a repeated `seq`
// with the answer it gave before (spec 3.3), so a new session must never reuse one.
let lastSeq = Date.now();
// What the page signaled, for tests and for curious operators (devtools console).
globalThis.fsnodeDebug = { candidates: [], send: {}, receive: {} };
/** Adds `ms` (and one more) to a timing counter in fsnodeDebug (read by the benchmark). */
function tally(group, name, ms = 0) {
  const t = (fsnodeDebug[group][name] ||= { n: 0, ms: 0 });
  t.n += 1;
  t.ms += ms;
}

function setState(state, text) {
  const el = $('state');
  el.dataset.state = state;
  el.textContent = text || state;
}

function showError(text) {
  const el = $('error');
  el.hidden = !text;
  el.textContent = text || '';
}

function showTrustHelp(show) {
  $('trust-help').hidden = !show;
}

// --- signaling over WebSocket (spec 3.5) ---------------------------------------------------------
function signal(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function connectSignaling() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/signal`);
  ws = socket;
  setState('connecting', 'connecting…');
  socket.onopen = () => {
    signal({ type: 'hello', v: 1, id: me.id, name: deviceName(),
      device_type: isMobile() ? 'mobile' : 'desktop', port: 0 });
  };
  socket.onmessage = (event) => {
    if (typeof event.data !== 'string') return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      socket.close();
      return;
    }
    onSignal(message).catch((err) => console.warn('signaling:', err));
  };
  socket.onclose = () => {
    if (ws !== socket) return;
    ws = null;
    closeSession('signaling closed');
    setState('offline', 'node unreachable');
    const delay = RECONNECT_DELAYS_MS[Math.min(reconnects, RECONNECT_DELAYS_MS.length - 1)];
    reconnects += 1;
    setTimeout(connectSignaling, delay);
  };
}

async function onSignal(m) {
  switch (m.type) {
    case 'hello':
      if (m.v !== 1 || typeof m.id !== 'string') return;
      node = m;
      reconnects = 0;
      $('node-name').textContent = m.name || 'fsnode';
      document.title = `${m.name || 'fsnode'} · fsnode`;
      $('code').textContent = verificationCode(me.id, m.id);
      startSession();
      return;
    case 'offer':
      return session?.onOffer(m);
    case 'answer':
      return session?.onAnswer(m);
    case 'candidate':
      return session?.onCandidate(m);
    case 'bye':
      if (m.reason === 'unauthorized') {
        // Also what the node says at once when its operator removes this device's trust.
        setState('untrusted', trusted ? 'no longer trusted' : 'not trusted yet');
        trusted = false;
        showTrustHelp(true);
        closeSession('unauthorized');
        setTimeout(() => { if (!session && node) startSession(); }, UNTRUSTED_RETRY_MS);
      }
      return;
    default:
      return; // unknown types are ignored (spec 3.1)
  }
}

// --- WebRTC with perfect negotiation (spec 3.3) ------------------------------------------------
function startSession() {
  closeSession('new session');
  session = new Session();
}

function closeSession(reason) {
  if (!session) return;
  const old = session;
  session = null;
  old.close(reason);
}

class Session {
  constructor() {
    this.polite = isPolite(me.id, node.id);
    this.pc = new RTCPeerConnection({ certificates: [me.cert], iceServers: [] });
    this.channel = this.pc.createDataChannel('fileshare', { negotiated: true, id: 0, ordered: true });
    this.channel.binaryType = 'arraybuffer';
    this.channel.bufferedAmountLowThreshold = SEND_BUFFER_LOW;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.offer = null; // the outstanding offer {sdp, seq}
    this.retries = 0;
    this.timer = null;
    this.pending = []; // candidates before the remote description
    this.maxMessage = MAX_MESSAGE_DEFAULT;
    this.closed = false;
    this.pc.onicecandidate = ({ candidate }) => {
      if (this.closed) return;
      if (candidate && candidate.candidate) {
        if (fsnodeDebug.candidates.length < 32) fsnodeDebug.candidates.push(candidate.candidate);
        signal({ type: 'candidate', candidate: candidate.candidate,
          sdpMid: candidate.sdpMid ?? '0', sdpMLineIndex: candidate.sdpMLineIndex ?? 0 });
      } else {
        signal({ type: 'candidate', candidate: '', sdpMid: '0', sdpMLineIndex: 0 });
      }
    };
    this.pc.onnegotiationneeded = () => this.makeOffer();
    this.pc.onconnectionstatechange = () => {
      const state = this.pc.connectionState;
      if (state === 'failed' || state === 'closed' || state === 'disconnected') {
        if (session === this) {
          closeSession(`connection ${state}`);
          setState('connecting', 'reconnecting…');
          setTimeout(() => { if (!session && node) startSession(); }, 1000);
        }
      }
    };
    this.channel.onopen = () => {
      if (session !== this) return;
      trusted = true;
      showTrustHelp(false);
      showError('');
      setState('connected', 'connected');
      transfers.onChannelOpen(this);
    };
    this.channel.onclose = () => transfers.onChannelClosed(this);
    this.channel.onmessage = (event) => {
      if (typeof event.data === 'string') return; // text is ignored (spec 4)
      let message;
      try {
        message = decode(event.data);
      } catch (err) {
        console.warn('invalid CBOR from the node; closing the channel', err);
        this.channel.close();
        return;
      }
      transfers.onMessage(this, message).catch((err) => console.warn('transfer:', err));
    };
  }

  send(message) {
    if (this.channel.readyState !== 'open') return false;
    this.channel.send(encode(message));
    return true;
  }

  async makeOffer() {
    if (this.closed) return;
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      if (this.closed || this.pc.signalingState !== 'have-local-offer') return;
      lastSeq += 1;
      this.offer = { type: 'offer', sdp: this.pc.localDescription.sdp, seq: lastSeq };
      this.retries = 0;
      signal(this.offer);
      this.armAnswerTimer();
    } catch (err) {
      console.warn('offer:', err);
    } finally {
      this.makingOffer = false;
    }
  }

  armAnswerTimer() {
    clearTimeout(this.timer);
    const wait = this.retries === 0 ? ANSWER_TIMEOUT_MS : OFFER_RETRY_DELAYS_MS[this.retries - 1] + ANSWER_TIMEOUT_MS;
    this.timer = setTimeout(() => {
      if (this.closed || !this.offer) return;
      if (this.retries >= OFFER_RETRY_DELAYS_MS.length) {
        setState('failed', 'no answer from the node');
        closeSession('no answer');
        setTimeout(() => { if (!session && node) startSession(); }, 5000);
        return;
      }
      this.retries += 1;
      signal(this.offer); // the same SDP and seq (spec 3.3)
      this.armAnswerTimer();
    }, wait);
  }

  async onOffer(m) {
    if (typeof m.sdp !== 'string') return;
    const collision = this.makingOffer || this.pc.signalingState !== 'stable';
    this.ignoreOffer = !this.polite && collision;
    if (this.ignoreOffer) return;
    clearTimeout(this.timer);
    this.offer = null;
    await this.pc.setRemoteDescription({ type: 'offer', sdp: m.sdp }); // rolls back our offer
    this.learnMaxMessage(m.sdp);
    await this.flushCandidates();
    await this.pc.setLocalDescription();
    signal({ type: 'answer', sdp: this.pc.localDescription.sdp, seq: m.seq });
  }

  async onAnswer(m) {
    if (!this.offer || m.seq !== this.offer.seq || typeof m.sdp !== 'string') return;
    if (this.pc.signalingState !== 'have-local-offer') return;
    clearTimeout(this.timer);
    this.offer = null;
    await this.pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
    this.learnMaxMessage(m.sdp);
    await this.flushCandidates();
  }

  async onCandidate(m) {
    if (typeof m.candidate !== 'string' || m.candidate === '') return;
    const init = { candidate: m.candidate, sdpMid: m.sdpMid ?? '0', sdpMLineIndex: m.sdpMLineIndex ?? 0 };
    if (!this.pc.remoteDescription) {
      if (this.pending.length < CANDIDATE_BUFFER) this.pending.push(init);
      return;
    }
    try {
      await this.pc.addIceCandidate(init);
    } catch (err) {
      if (!this.ignoreOffer) console.warn('candidate:', err);
    }
  }

  async flushCandidates() {
    const pending = this.pending;
    this.pending = [];
    for (const init of pending) {
      try {
        await this.pc.addIceCandidate(init);
      } catch (err) {
        console.warn('candidate:', err);
      }
    }
  }

  learnMaxMessage(sdp) {
    const match = /^a=max-message-size:(\d+)/m.exec(sdp);
    this.maxMessage = match ? Number(match[1]) : MAX_MESSAGE_DEFAULT;
  }

  /** The chunk size for sending (spec 4): the largest power of two within the peer's limit. */
  chunkSize() {
    const limit = this.maxMessage === 0 ? 256 * 1024 : Math.min(256 * 1024, this.maxMessage - 1024);
    let size = 1024;
    while (size * 2 <= limit) size *= 2;
    return size;
  }

  close(reason) {
    this.closed = true;
    clearTimeout(this.timer);
    try { this.channel.close(); } catch { /* already closed */ }
    try { this.pc.close(); } catch { /* already closed */ }
    transfers.onChannelClosed(this, reason);
  }
}

// --- formatting ---------------------------------------------------------------------------------
function randomId() {
  return crypto.getRandomValues(new Uint8Array(16));
}

function fromHex(text) {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** A list item with a name, a progress bar, a status line and a button slot. */
class Row {
  constructor(list, name) {
    this.li = document.createElement('li');
    this.li.innerHTML = '<div class="top"><span class="name"></span><span class="actions"></span></div>' +
      '<progress max="1" value="0"></progress><span class="meta"></span>';
    this.li.querySelector('.name').textContent = name;
    this.bar = this.li.querySelector('progress');
    this.meta = this.li.querySelector('.meta');
    this.actions = this.li.querySelector('.actions');
    list.prepend(this.li);
  }
  update(state, fraction, text) {
    this.li.dataset.state = state;
    this.bar.value = Math.max(0, Math.min(1, fraction));
    this.meta.textContent = text;
  }
  remove() {
    this.li.remove();
  }
  action(label, onClick, secondary = true) {
    this.actions.textContent = '';
    if (!label) return;
    const button = document.createElement('button');
    button.textContent = label;
    if (secondary) button.className = 'secondary';
    button.onclick = onClick;
    this.actions.append(button);
    return button;
  }
}

/** Rate over the last few seconds, and time left. */
class Meter {
  constructor() { this.samples = []; }
  sample(done) {
    const now = performance.now();
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
  }
  rate() {
    if (this.samples.length < 2) return 0;
    const [t0, d0] = this.samples[0];
    const [t1, d1] = this.samples[this.samples.length - 1];
    return t1 > t0 ? ((d1 - d0) * 1000) / (t1 - t0) : 0;
  }
  text(done, total) {
    const rate = this.rate();
    const left = rate > 0 ? (total - done) / rate : Infinity;
    return `${bytes(done)} of ${bytes(total)} · ${bytes(rate)}/s · ${duration(left)} left`;
  }
}

// --- sending (this page is the sender of spec 4) --------------------------------------------------
class Outgoing {
  constructor(file, name, record) {
    this.file = file;
    this.name = name;
    this.key = `${name}\n${file.size}\n${file.lastModified}`;
    this.record = record || {
      key: this.key, idHex: hex(randomId()), name, size: file.size, chunkSize: 0,
      next: 0, state: 'queued', mtime: Math.floor(file.lastModified / 1000), mime: file.type || 'application/octet-stream',
    };
    this.id = fromHex(this.record.idHex);
    this.state = this.record.state === 'done' ? 'done' : 'queued';
    this.cursor = 0;
    this.window = 1;
    this.resends = [];
    this.endSent = false;
    this.pumping = false;
    this.source = null;
    this.meter = new Meter();
    this.row = new Row($('sends'), name);
    this.row.li.dataset.id = this.record.idHex;
    this.render();
  }

  get chunks() {
    return this.record.chunkSize ? Math.ceil(this.record.size / this.record.chunkSize) : 0;
  }

  render(text) {
    const r = this.record;
    const fraction = r.size ? (r.next * (r.chunkSize || 1)) / r.size : this.state === 'done' ? 1 : 0;
    const doneBytes = Math.min(r.size, r.next * (r.chunkSize || 0));
    const status = text || {
      queued: 'waiting for the node',
      starting: 'asking the node…',
      sending: this.meter.text(doneBytes, r.size),
      verifying: 'the node is checking the file…',
      done: `sent ${finishedSummary({ size: r.size, from: r.legFrom, startedAt: r.legStartedAt, finishedAt: r.finishedAt })}${r.resumedFrom ? ` (resumed at ${bytes(r.resumedFrom * r.chunkSize)})` : ''}`,
      cancelled: 'cancelled',
      failed: `failed: ${this.reason || ''}`,
    }[this.state];
    this.row.update(this.state, this.state === 'done' ? 1 : fraction, status);
    showClearButtons();
    if (['queued', 'starting', 'sending', 'verifying'].includes(this.state)) {
      if (!this.cancelButton) this.cancelButton = this.row.action('Cancel', () => this.cancel());
    } else if (this.cancelButton) {
      this.row.action(null);
      this.cancelButton = null;
    }
  }

  async persist() {
    this.record.state = this.state;
    await put('sends', this.record);
  }

  /** Sends `start` (again after a reconnect: the same id, name, size and chunk size). */
  begin(s) {
    if (this.state === 'done' || this.state === 'cancelled' || this.state === 'failed') return;
    if (this.record.cancelPending) {
      s.send({ t: 'cancel', id: this.id, reason: 'cancelled by the user' });
      return;
    }
    if (!this.record.chunkSize) this.record.chunkSize = s.chunkSize();
    if (!this.source) this.source = new SendSource(this.file, this.record.chunkSize);
    this.state = 'starting';
    this.endSent = false;
    this.resends = [];
    s.send({
      t: 'start', id: this.id, name: this.name, size: this.record.size, chunk_size: this.record.chunkSize,
      chunks: this.chunks, mime: this.record.mime, mtime: this.record.mtime, start_chunk: this.record.next,
    });
    this.persist();
    this.render();
  }

  onAccept(s, m) {
    if (this.state !== 'starting' && this.state !== 'sending') return;
    const start = Number(m.start_chunk);
    if (!Number.isSafeInteger(start) || start < 0 || start > this.chunks) return;
    if (start > 0 && !this.record.resumedFrom) this.record.resumedFrom = start;
    this.record.next = start;
    this.record.legFrom = Math.min(this.record.size, start * this.record.chunkSize);
    this.record.legStartedAt = Date.now();
    this.cursor = start;
    this.window = Math.max(1, Math.min(1024, Number(m.window) || 1));
    this.state = 'sending';
    this.meter.sample(start * this.record.chunkSize);
    this.render();
    this.pump(s);
  }

  onProgress(s, m) {
    if (this.stalledAt) { tally('send', 'windowStallEnd', performance.now() - this.stalledAt); this.stalledAt = 0; }
    const next = Number(m.next);
    if (!Number.isSafeInteger(next) || next > this.chunks) return;
    if (next > this.record.next) {
      this.record.next = next;
      this.meter.sample(Math.min(this.record.size, next * this.record.chunkSize));
      this.persist();
    }
    this.render();
    this.pump(s);
  }

  onResend(s, m) {
    const index = Number(m.index);
    if (Number.isSafeInteger(index) && index < this.chunks && this.resends.length < this.window) {
      this.resends.push(index);
      this.pump(s);
    }
  }

  onDone(m) {
    this.state = m.ok === true ? 'done' : m.reason === 'cancelled' ? 'cancelled' : 'failed';
    this.reason = typeof m.reason === 'string' ? m.reason : '';
    if (this.state === 'done') this.record.next = this.chunks;
    this.record.finishedAt = Date.now();
    this.record.cancelPending = false;
    this.source?.discard();
    this.source = null;
    this.persist();
    this.render();
    scheduleSends();
  }

  onReject(m) {
    this.source?.discard();
    this.source = null;
    this.state = m.code === 'cancelled' ? 'cancelled' : 'failed';
    this.reason = `${typeof m.reason === 'string' ? m.reason : 'refused'}${m.code ? ` (${m.code})` : ''}`;
    this.record.cancelPending = false;
    this.persist();
    this.render();
    scheduleSends();
  }

  cancel() {
    this.record.cancelPending = true;
    const s = session;
    if (s && s.send({ t: 'cancel', id: this.id, reason: 'cancelled by the user' })) {
      this.state = 'verifying';
      this.render('cancelling…');
    } else {
      this.state = 'cancelled';
      this.render();
    }
    this.persist();
  }

  /** Sends chunks while the window and the channel's buffer allow. */
  async pump(s) {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.state === 'sending' && session === s && !s.closed) {
        if (s.channel.bufferedAmount > SEND_BUFFER_HIGH) {
          const t0 = performance.now();
          await bufferedLow(s.channel);
          tally('send', 'bufferedWait', performance.now() - t0);
          continue;
        }
        let index;
        if (this.resends.length) index = this.resends.shift();
        else if (this.cursor < this.chunks && this.cursor < this.record.next + this.window) index = this.cursor++;
        else {
          if (this.cursor < this.chunks) { tally('send', 'windowStall'); this.stalledAt = performance.now(); }
          break;
        }
        let t0 = performance.now();
        if (!this.source) break;
        const data = await this.source.chunk(index);
        tally('send', 'read', performance.now() - t0);
        t0 = performance.now();
        const digest = await sha256(data);
        tally('send', 'hash', performance.now() - t0);
        if (this.state !== 'sending' || session !== s) break;
        t0 = performance.now();
        s.send({ t: 'chunk', id: this.id, index, sha256: digest, data });
        tally('send', 'encodeSend', performance.now() - t0);
      }
      if (this.state === 'sending' && this.cursor >= this.chunks && !this.endSent && session === s) {
        this.endSent = true;
        const digest = this.source ? await this.source.digest() : null;
        if (digest && session === s && this.state === 'sending') {
          s.send({ t: 'end', id: this.id, sha256: digest });
          this.state = 'verifying';
          this.render();
        } else {
          this.endSent = false;
        }
      }
    } catch (err) {
      if (this.state === 'sending') {
        this.source?.discard();
        this.source = null;
        this.state = 'failed';
        this.reason = `cannot read the file: ${err.message || err}`;
        this.render();
      }
    } finally {
      this.pumping = false;
    }
  }
}

function bufferedLow(channel) {
  return new Promise((resolve) => {
    const finish = () => {
      channel.removeEventListener('bufferedamountlow', finish);
      channel.removeEventListener('close', finish);
      resolve();
    };
    channel.addEventListener('bufferedamountlow', finish);
    channel.addEventListener('close', finish);
  });
}

/** A picked file as its send reads it: READ_BYTES at a time, handed out chunk by chunk, and
 * the whole file's SHA-256 fed from the same reads while chunks come in order from the start
 * (so a file is read and hashed for `end` in the same pass as it is sent; a resumed send
 * catches up from where the whole-file hash stands when `end` is due). One caller at a time
 * (the send's pump). */
class SendSource {
  constructor(file, chunkSize) {
    this.file = file;
    this.chunkSize = chunkSize;
    this.buffer = null;
    this.bufferFrom = 0;
    this.whole = new Sha256();
    this.wholeAt = 0;
  }

  async read(from, to) {
    return new Uint8Array(await this.file.slice(from, to).arrayBuffer());
  }

  /** Chunk `index`'s bytes. */
  async chunk(index) {
    const size = this.file.size;
    const from = index * this.chunkSize;
    const to = Math.min(size, from + this.chunkSize);
    if (!this.buffer || from < this.bufferFrom || to > this.bufferFrom + this.buffer.length) {
      this.buffer = await this.read(from, Math.min(size, from + Math.max(READ_BYTES, this.chunkSize)));
      this.bufferFrom = from;
      if (this.buffer.length < to - from) throw new Error('the file is shorter than when it was picked');
    }
    const data = this.buffer.subarray(from - this.bufferFrom, to - this.bufferFrom);
    if (this.whole && from === this.wholeAt) {
      this.whole.update(data);
      this.wholeAt = to;
    }
    return data;
  }

  /** The whole file's SHA-256 (reading what the sending did not feed it). */
  async digest() {
    if (!this.whole) throw new Error('the file hash was discarded');
    while (this.wholeAt < this.file.size) {
      const to = Math.min(this.file.size, this.wholeAt + READ_BYTES);
      this.whole.update(await this.read(this.wholeAt, to));
      this.wholeAt = to;
    }
    const digest = this.whole.finish();
    this.whole = null;
    return digest;
  }

  discard() {
    this.whole?.discard();
    this.whole = null;
    this.buffer = null;
  }
}

// --- receiving (this page is the receiver of spec 4) ----------------------------------------------
const NAME_LIMITS = { component: 255, total: 4096 };

function validName(name) {
  if (typeof name !== 'string' || name === '' || name.startsWith('/') || name.includes('\\') || name.includes('\0')) return false;
  const utf8 = new TextEncoder();
  if (utf8.encode(name).length > NAME_LIMITS.total) return false;
  return name.split('/').every((c) => c !== '' && c !== '.' && c !== '..' && utf8.encode(c).length <= NAME_LIMITS.component);
}

function isUint(v) {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

class Incoming {
  constructor(record) {
    this.record = record;
    this.id = fromHex(record.idHex);
    this.have = new Set(); // verified and stored indexes at or after `next`
    // The whole-file hash, fed in order as `next` advances: chunks [0, hashed) are in it. A
    // reloaded page starts it again from the stored chunks.
    this.hasher = null;
    this.hashed = 0;
    this.hashError = null;
    this.hashing = Promise.resolve();
    this.inHand = new Map(); // index -> verified bytes not yet hashed (at most HASH_IN_HAND)
    this.failures = new Map();
    this.sinceProgress = 0;
    this.expected = null;
    this.meter = new Meter();
    this.row = new Row($('receives'), record.name);
    this.row.li.dataset.id = record.idHex;
    this.render();
  }

  get chunks() {
    return this.record.chunks;
  }

  render() {
    const r = this.record;
    const doneBytes = Math.min(r.size, r.next * r.chunkSize);
    const text = {
      receiving: this.meter.text(doneBytes, r.size),
      verifying: 'checking the whole file…',
      done: `${finishedSummary({ size: r.size, from: r.legFrom, startedAt: r.legStartedAt, finishedAt: r.finishedAt })} · verified`,
      failed: `failed: ${r.reason || ''}`,
      cancelled: 'cancelled',
    }[r.state];
    this.row.update(r.state, r.state === 'done' ? 1 : r.size ? doneBytes / r.size : 0, text);
    showClearButtons();
    if (r.state === 'done' && !this.link) {
      this.row.actions.textContent = '';
      this.link = document.createElement('a');
      this.link.className = 'button download';
      this.link.textContent = 'Save';
      this.link.href = '#';
      this.link.download = r.name.split('/').pop();
      this.link.onclick = (event) => this.download(event);
      this.row.actions.append(this.link);
    } else if (r.state === 'receiving' && !this.row.actions.firstChild) {
      this.row.action('Cancel', () => this.cancel('cancelled by the user'));
    } else if (r.state !== 'receiving' && r.state !== 'done') {
      this.row.action(null);
    }
  }

  async persist() {
    await put('receives', this.record);
  }

  /** Stores a verified chunk. Chunks that arrive while a transaction commits wait and go
   * together in the next one (at most STORE_BATCH): one commit per batch instead of one per
   * chunk. Resolves once the chunk's transaction committed. */
  store(index, data) {
    if (!this.batch || this.batch.items.length >= STORE_BATCH) {
      const batch = { items: [] };
      const previous = this.lastStore || Promise.resolve();
      batch.done = previous.then(() => {
        if (this.batch === batch) this.batch = null; // sealed: later chunks start the next one
        const tx = db.transaction('chunks', 'readwrite');
        const chunks = tx.objectStore('chunks');
        for (const [i, bytes] of batch.items) chunks.put(new Blob([bytes]), [this.record.idHex, i]);
        return done(tx);
      });
      this.lastStore = batch.done.catch(() => {});
      this.batch = batch;
    }
    this.batch.items.push([index, data]);
    return this.batch.done;
  }

  async onChunk(s, m) {
    if (this.record.state !== 'receiving') return;
    const r = this.record;
    if (!isUint(m.index) || !(m.sha256 instanceof Uint8Array) || !(m.data instanceof Uint8Array)) {
      s.send({ t: 'reject', id: this.id, reason: 'malformed chunk', code: 'invalid' });
      return;
    }
    const index = m.index;
    if (index >= r.chunks || index < r.next || this.have.has(index) || index >= r.next + RECEIVE_WINDOW) return;
    const expectedLength = index === r.chunks - 1 ? r.size - index * r.chunkSize : r.chunkSize;
    let t0 = performance.now();
    const digest = await sha256(m.data);
    tally('receive', 'hash', performance.now() - t0);
    if (m.data.length !== expectedLength || !equalBytes(digest, m.sha256)) {
      const failures = (this.failures.get(index) || 0) + 1;
      this.failures.set(index, failures);
      if (failures >= MAX_CHUNK_FAILURES) {
        s.send({ t: 'cancel', id: this.id, reason: `chunk ${index} failed its hash ${failures} times` });
        await this.fail(`chunk ${index} failed its hash ${failures} times`, 'failed');
      } else {
        s.send({ t: 'resend', id: this.id, index });
      }
      return;
    }
    // Stored as a Blob: Chromium keeps large blobs on disk, so the file never sits in memory.
    t0 = performance.now();
    await this.store(index, m.data);
    tally('receive', 'store', performance.now() - t0);
    if (this.record.state !== 'receiving') return;
    this.have.add(index);
    if (this.inHand.size < HASH_IN_HAND) this.inHand.set(index, m.data);
    while (this.have.has(r.next)) {
      this.have.delete(r.next);
      r.next += 1;
    }
    this.hashTo(r.next);
    this.meter.sample(Math.min(r.size, r.next * r.chunkSize));
    this.sinceProgress += 1;
    if (this.sinceProgress >= Math.max(1, Math.floor(RECEIVE_WINDOW / 4))) {
      this.sinceProgress = 0;
      t0 = performance.now();
      await this.persist();
      tally('receive', 'persist', performance.now() - t0);
      s.send({ t: 'progress', id: this.id, next: r.next });
    }
    this.render();
    if (this.expected && r.next === r.chunks) this.finish(s);
  }

  async onEnd(s, m) {
    if (this.record.state !== 'receiving') return;
    if (!(m.sha256 instanceof Uint8Array) || m.sha256.length !== 32) {
      s.send({ t: 'reject', id: this.id, reason: 'malformed end', code: 'invalid' });
      return;
    }
    this.expected = m.sha256.slice();
    await this.persist();
    s.send({ t: 'progress', id: this.id, next: this.record.next });
    if (this.record.next === this.record.chunks) {
      this.finish(s);
    } else {
      clearTimeout(this.resendTimer);
      this.resendTimer = setTimeout(() => {
        if (this.record.state === 'receiving' && this.record.next < this.record.chunks) {
          const reason = 'chunks missing 30 s after end';
          s.send({ t: 'done', id: this.id, ok: false, reason });
          this.fail(reason, 'failed');
        }
      }, RESEND_WAIT_MS);
    }
  }

  /** Feeds chunks [hashed, upto) to the whole-file hash, in order, one at a time: from memory
   * when still in hand, else read back from IndexedDB. Calls are chained, never concurrent. */
  hashTo(upto) {
    this.hashing = this.hashing.then(async () => {
      if (this.hashError) return;
      try {
        if (!this.hasher) {
          this.hasher = new Sha256();
          this.hashed = 0;
        }
        while (this.hashed < upto && this.hasher && ['receiving', 'verifying'].includes(this.record.state)) {
          const index = this.hashed;
          let data = this.inHand.get(index);
          if (data) {
            this.inHand.delete(index);
          } else {
            const blob = await get('chunks', [this.record.idHex, index]);
            if (!blob) throw new Error(`chunk ${index} is missing from storage`);
            data = await blob.arrayBuffer();
          }
          if (!this.hasher) return;
          this.hasher.update(data);
          this.hashed = index + 1;
        }
      } catch (err) {
        this.hashError = String(err.message || err);
      }
    });
    return this.hashing;
  }

  /** Completes the whole-file hash (already fed up to `next` while receiving) and checks it. */
  async finish(s) {
    if (this.finishing) return;
    this.finishing = true;
    clearTimeout(this.resendTimer);
    const r = this.record;
    r.state = 'verifying';
    this.render();
    await this.hashTo(r.chunks);
    if (this.hashError || !this.hasher || this.hashed !== r.chunks) {
      const reason = this.hashError || 'the whole-file hash was interrupted';
      s.send({ t: 'done', id: this.id, ok: false, reason });
      await this.fail(reason, 'failed');
      return;
    }
    const hasher = this.hasher;
    this.hasher = null;
    const digest = hasher.finish();
    this.inHand.clear();
    if (!equalBytes(digest, this.expected)) {
      const reason = 'the whole-file hash differs';
      s.send({ t: 'done', id: this.id, ok: false, reason });
      await this.fail(reason, 'failed');
      return;
    }
    r.state = 'done';
    r.sha256 = hex(digest);
    r.finishedAt = Date.now();
    await this.persist();
    s.send({ t: 'progress', id: this.id, next: r.chunks });
    s.send({ t: 'done', id: this.id, ok: true });
    this.render();
  }

  async fail(reason, state) {
    this.record.state = state;
    this.record.reason = reason;
    this.hasher?.discard();
    this.hasher = null;
    this.inHand.clear();
    await deleteChunks(this.record.idHex);
    await this.persist();
    this.render();
  }

  async cancel(reason) {
    session?.send({ t: 'cancel', id: this.id, reason });
    await this.fail(reason, 'cancelled');
  }

  async download(event) {
    event.preventDefault();
    const r = this.record;
    const parts = [];
    for (let i = 0; i < r.chunks; i++) {
      const blob = await get('chunks', [r.idHex, i]);
      if (!blob) return showError(`${r.name}: a stored chunk is missing`);
      parts.push(blob);
    }
    const url = URL.createObjectURL(new Blob(parts, { type: r.mime || 'application/octet-stream' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = r.name.split('/').pop();
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }
}

// --- the transfer table -----------------------------------------------------------------------------
const transfers = {
  sends: new Map(), // idHex -> Outgoing
  receives: new Map(), // idHex -> Incoming

  onChannelOpen(s) {
    scheduleSends(s);
    for (const t of this.sends.values()) if (t.record.cancelPending) t.begin(s);
  },

  onChannelClosed(s) {
    for (const t of this.sends.values()) {
      if (t.state === 'starting' || t.state === 'sending' || t.state === 'verifying') {
        t.state = 'queued';
        t.render('paused: waiting for the connection');
      }
    }
  },

  async onMessage(s, m) {
    if (m === null || typeof m !== 'object' || typeof m.t !== 'string') {
      s.channel.close();
      return;
    }
    if (!(m.id instanceof Uint8Array) || m.id.length !== 16) {
      if (['start', 'accept', 'reject', 'chunk', 'progress', 'resend', 'end', 'done', 'cancel'].includes(m.t)) s.channel.close();
      return;
    }
    const idHex = hex(m.id);
    const out = this.sends.get(idHex);
    const inc = this.receives.get(idHex);
    switch (m.t) {
      case 'accept': return out?.onAccept(s, m);
      case 'progress': return out?.onProgress(s, m);
      case 'resend': return out?.onResend(s, m);
      case 'done': return out?.onDone(m);
      case 'reject': return out?.onReject(m);
      case 'start': return this.onStart(s, m, idHex);
      case 'chunk': return inc?.onChunk(s, m);
      case 'end': return inc?.onEnd(s, m);
      case 'cancel':
        if (out) return out.onDone({ ok: false, reason: 'cancelled' });
        if (inc && inc.record.state === 'receiving') {
          await inc.fail(typeof m.reason === 'string' ? m.reason : 'cancelled by the node', 'cancelled');
          s.send({ t: 'done', id: m.id, ok: false, reason: 'cancelled' });
        }
        return;
      default:
        return; // unknown kinds are ignored
    }
  },

  async onStart(s, m, idHex) {
    const reject = (code, reason) => s.send({ t: 'reject', id: m.id, reason, code });
    if (!isUint(m.size) || !isUint(m.chunk_size) || !isUint(m.chunks) || typeof m.name !== 'string') {
      return reject('invalid', 'malformed start');
    }
    const known = this.receives.get(idHex)?.record || (await get('receives', idHex));
    if (known) {
      if (known.name !== m.name || known.size !== m.size || known.chunkSize !== m.chunk_size) {
        return reject('mismatch', 'this transfer was started with another name, size or chunk size');
      }
      if (known.state === 'done') return s.send({ t: 'done', id: m.id, ok: true });
      if (known.state === 'cancelled') return reject('cancelled', 'cancelled');
      if (known.state === 'failed') return reject('finished', known.reason || 'failed');
    }
    if (!validName(m.name)) return reject('name', 'the name is not a safe relative path');
    if (m.chunk_size < 1024 || m.chunk_size > 4 * 1024 * 1024 || m.chunks !== Math.ceil(m.size / m.chunk_size)) {
      return reject('size', 'size, chunk size and chunk count disagree');
    }
    if (!known) {
      const estimate = await navigator.storage?.estimate?.();
      if (estimate && estimate.quota - estimate.usage < m.size) {
        return reject('no_space', `this browser has ${bytes(estimate.quota - estimate.usage)} of storage left`);
      }
    }
    let t = this.receives.get(idHex);
    if (!t) {
      const record = known || {
        idHex, name: m.name, size: m.size, chunkSize: m.chunk_size, chunks: m.chunks,
        mime: typeof m.mime === 'string' ? m.mime.slice(0, 200) : 'application/octet-stream',
        next: 0, state: 'receiving', startedAt: Date.now(),
      };
      await put('receives', record);
      t = new Incoming(record);
      this.receives.set(idHex, t);
    }
    t.record.legFrom = Math.min(t.record.size, t.record.next * t.record.chunkSize);
    t.record.legStartedAt = Date.now();
    t.sinceProgress = 0;
    t.have.clear();
    for (const index of t.inHand.keys()) if (index >= t.record.next) t.inHand.delete(index);
    t.finishing = false;
    t.meter.sample(t.record.next * t.record.chunkSize);
    s.send({ t: 'accept', id: m.id, start_chunk: t.record.next, window: RECEIVE_WINDOW });
    t.render();
  },
};

/** Starts queued sends while fewer than ACTIVE_SENDS are under way. */
function scheduleSends(s = session) {
  if (!s || s.channel.readyState !== 'open') return;
  const active = [...transfers.sends.values()].filter((t) => ['starting', 'sending', 'verifying'].includes(t.state));
  let room = ACTIVE_SENDS - active.length;
  for (const t of transfers.sends.values()) {
    if (room <= 0) break;
    if (t.state === 'queued' && t.file) {
      t.begin(s);
      room -= 1;
    }
  }
}

/** Files picked or dropped: a send each, resuming a paused one with the same name, size and time. */
async function addFiles(entries) {
  for (const { file, name } of entries) {
    const key = `${name}\n${file.size}\n${file.lastModified}`;
    let existing = [...transfers.sends.values()].find((t) => t.key === key && t.state !== 'done' && t.state !== 'cancelled' && t.state !== 'failed');
    if (existing && existing.file) continue; // already sending
    const record = await get('sends', key);
    const resumable = record && !['done', 'cancelled', 'failed'].includes(record.state) ? record : null;
    if (existing) {
      existing.source?.discard();
      existing.source = null;
      existing.file = file;
      existing.state = 'queued';
      existing.render();
      continue;
    }
    const t = new Outgoing(file, name, resumable);
    t.state = 'queued';
    transfers.sends.set(t.record.idHex, t);
    await t.persist();
  }
  scheduleSends();
}

/** Walks dropped folders (webkitGetAsEntry), keeping relative paths. */
async function droppedFiles(items) {
  const out = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, name: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  };
  const entries = [...items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  for (const entry of entries) await walk(entry, '');
  return out;
}

/** The id in groups of 4 (one inline block each: a narrow screen wraps between groups only);
 * its text is still the id, for selecting and copying. */
function showDeviceId(id) {
  const el = $('device-id');
  el.textContent = '';
  for (const group of idGroups(id)) {
    const span = document.createElement('span');
    span.textContent = group;
    el.append(span);
  }
  $('copy-id').onclick = () => copyText(id, $('copy-id'));
}

/** Copies text: the Clipboard API where the page is a secure context, else a selected
 * off-screen text area and `execCommand` (plain http:// LAN pages have no Clipboard API). */
async function copyText(text, button) {
  let ok = false;
  try {
    if (navigator.clipboard && globalThis.isSecureContext) {
      await navigator.clipboard.writeText(text);
      ok = true;
    }
  } catch { /* fall back below */ }
  if (!ok) {
    const area = document.createElement('textarea');
    area.value = text;
    area.setAttribute('readonly', '');
    area.style.position = 'fixed';
    area.style.left = '-1000px';
    document.body.append(area);
    area.select();
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    area.remove();
  }
  button.textContent = ok ? 'Copied' : 'Select and copy';
  setTimeout(() => { button.textContent = 'Copy'; }, 2000);
}

const FINISHED = ['done', 'cancelled', 'failed'];

/** Shows each list's "Clear finished" only while it has finished rows. */
function showClearButtons() {
  const sends = $('clear-sends');
  const receives = $('clear-receives');
  if (!sends || !receives) return;
  sends.hidden = ![...transfers.sends.values()].some((t) => FINISHED.includes(t.state));
  receives.hidden = ![...transfers.receives.values()].some((t) => FINISHED.includes(t.record.state));
}

/** Removes finished sends from the list and forgets them (a picked file is sent anew). */
async function clearFinishedSends() {
  for (const [idHex, t] of [...transfers.sends]) {
    if (!FINISHED.includes(t.state)) continue;
    const tx = db.transaction('sends', 'readwrite');
    tx.objectStore('sends').delete(t.key);
    await done(tx);
    transfers.sends.delete(idHex);
    t.row.remove();
  }
  showClearButtons();
}

/** Removes finished receives and their stored chunks (the browser's copy of a received file:
 * save it first). */
async function clearFinishedReceives() {
  for (const [idHex, t] of [...transfers.receives]) {
    if (!FINISHED.includes(t.record.state)) continue;
    await deleteChunks(idHex);
    const tx = db.transaction('receives', 'readwrite');
    tx.objectStore('receives').delete(idHex);
    await done(tx);
    transfers.receives.delete(idHex);
    t.row.remove();
  }
  showClearButtons();
}

function wireInputs() {
  $('pick-folder-label').hidden = !canPickFolders($('pick-folder'), navigator, window);
  $('clear-sends').onclick = () => clearFinishedSends().catch((err) => showError(String(err.message || err)));
  $('clear-receives').onclick = () => clearFinishedReceives().catch((err) => showError(String(err.message || err)));
  const picked = (input) => () => {
    const entries = [...input.files].map((file) => ({ file, name: file.webkitRelativePath || file.name }));
    input.value = '';
    addFiles(entries);
  };
  $('pick-files').onchange = picked($('pick-files'));
  $('pick-folder').onchange = picked($('pick-folder'));
  const drop = $('drop');
  drop.ondragover = (event) => { event.preventDefault(); drop.classList.add('over'); };
  drop.ondragleave = () => drop.classList.remove('over');
  drop.ondrop = async (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    const items = event.dataTransfer.items;
    const walked = items && items.length && items[0].webkitGetAsEntry ? await droppedFiles(items) : [];
    // Without entries (an older browser, or a drop made by a script) the plain file list.
    const entries = walked.length ? walked
      : [...event.dataTransfer.files].map((file) => ({ file, name: file.name }));
    addFiles(entries);
  };
}

/** Shows what IndexedDB remembers: sends to resume (the file must be picked again), history. */
async function restore() {
  const sends = (await all('sends')).sort((a, b) => (a.updated || 0) - (b.updated || 0));
  for (const record of sends) {
    const placeholder = { size: record.size, lastModified: 0, type: record.mime };
    const t = new Outgoing(placeholder, record.name, record);
    t.key = record.key;
    t.file = null;
    t.state = ['done', 'cancelled', 'failed'].includes(record.state) ? record.state : 'queued';
    transfers.sends.set(record.idHex, t);
    if (t.state === 'queued') t.render(record.cancelPending ? 'cancelling…' : 'paused: pick the same file again to resume');
  }
  for (const record of await all('receives')) {
    const t = new Incoming(record);
    transfers.receives.set(record.idHex, t);
  }
}

async function main() {
  try {
    if (!('RTCPeerConnection' in window) || !('indexedDB' in window)) {
      throw new Error('this browser lacks WebRTC or IndexedDB');
    }
    await loadSha256();
    db = await openDb();
    Object.assign(me, await loadIdentity());
    showDeviceId(me.id);
    $('trust-command').textContent = `fsnode trust add ${me.id.slice(0, 12)}`;
    $('send-command').textContent = `fsnode send FILE --to ${me.id.slice(0, 12)}`;
    wireInputs();
    await restore();
    connectSignaling();
  } catch (err) {
    setState('failed', 'cannot start');
    showError(String(err.message || err));
  }
}

main();
