// SHA-256 for the page: the `sha2` crate compiled to wasm (served by the node as
// /sha256.wasm; see node/web/sha256-wasm), because plain http:// LAN pages are not secure
// contexts and have no `crypto.subtle`. Where the page is a secure context, single digests
// use `crypto.subtle`; incremental hashes (a whole file) always use the module.

let module = null;

/** Loads the module once. `source` is a URL (the page) or the module's bytes (tests). */
export async function loadSha256(source = '/sha256.wasm') {
  if (module) return module;
  let instance;
  if (typeof source === 'string') {
    const response = await fetch(source);
    if (!response.ok) throw new Error(`cannot load ${source}: ${response.status}`);
    ({ instance } = await WebAssembly.instantiate(await response.arrayBuffer(), {}));
  } else {
    ({ instance } = await WebAssembly.instantiate(source, {}));
  }
  module = instance.exports;
  return module;
}

function exports() {
  if (!module) throw new Error('the SHA-256 module is not loaded (loadSha256 first)');
  return module;
}

/** An incremental SHA-256. */
export class Sha256 {
  constructor() {
    this.slot = exports().begin();
    if (this.slot < 0) throw new Error('too many hashes at once');
  }
  /** Adds bytes (Uint8Array or ArrayBuffer) of any length. */
  update(data) {
    const m = exports();
    const u8 = data instanceof Uint8Array ? data : new Uint8Array(data);
    const room = m.buffer_len();
    for (let at = 0; at < u8.length; at += room) {
      const part = u8.subarray(at, Math.min(u8.length, at + room));
      // The memory may have grown (and its buffer been replaced) since the last call.
      new Uint8Array(m.memory.buffer, m.buffer(), part.length).set(part);
      if (m.update(this.slot, part.length) !== 0) throw new Error('sha256 update failed');
    }
    return this;
  }
  /** The 32-byte digest; the hasher cannot be used after. */
  finish() {
    const m = exports();
    const ptr = m.finish(this.slot);
    if (ptr === 0) throw new Error('sha256 finish failed');
    this.slot = -1;
    return new Uint8Array(m.memory.buffer, ptr, 32).slice();
  }
  discard() {
    if (this.slot >= 0) exports().discard(this.slot);
    this.slot = -1;
  }
}

/** The digest of one buffer: `crypto.subtle` in secure contexts, else the wasm module. */
export async function sha256(data) {
  if (globalThis.isSecureContext && globalThis.crypto?.subtle) {
    return new Uint8Array(await crypto.subtle.digest('SHA-256', data));
  }
  return new Sha256().update(data).finish();
}

export function hex(u8) {
  return Array.from(u8, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
