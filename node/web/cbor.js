// The subset of CBOR (RFC 8949) that the transfer protocol (spec 4) uses: maps with text
// keys, unsigned and negative integers, byte strings, text strings, booleans and null (arrays
// decode too, for forward compatibility). Definite lengths only; the decoder is strict:
// exactly one item, no trailing bytes, bounded nesting, integers within 2^53 (sizes and
// indexes of files; larger is an error rather than a silent rounding).

export class CborError extends Error {}

const MAX_DEPTH = 16;

/** Encodes a JS value: object (map, text keys), number (integer), Uint8Array, string, bool, null. */
export function encode(value) {
  const out = new Writer();
  put(out, value);
  return out.finish();
}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.len = 0;
  }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }
  bytes(u8) {
    this.reserve(u8.length);
    this.buf.set(u8, this.len);
    this.len += u8.length;
  }
  finish() {
    return this.buf.slice(0, this.len);
  }
}

function head(out, major, n) {
  const m = major << 5;
  if (n < 24) out.byte(m | n);
  else if (n < 0x100) {
    out.byte(m | 24);
    out.byte(n);
  } else if (n < 0x10000) {
    out.byte(m | 25);
    out.byte(n >>> 8);
    out.byte(n & 0xff);
  } else if (n < 0x100000000) {
    out.byte(m | 26);
    out.bytes([n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff]);
  } else {
    out.byte(m | 27);
    const big = BigInt(n);
    for (let shift = 56n; shift >= 0n; shift -= 8n) out.byte(Number((big >> shift) & 0xffn));
  }
}

function put(out, value) {
  if (value === null || value === undefined) out.byte(0xf6);
  else if (value === false) out.byte(0xf4);
  else if (value === true) out.byte(0xf5);
  else if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new CborError(`not an integer: ${value}`);
    if (value >= 0) head(out, 0, value);
    else head(out, 1, -1 - value);
  } else if (typeof value === 'string') {
    const utf8 = new TextEncoder().encode(value);
    head(out, 3, utf8.length);
    out.bytes(utf8);
  } else if (value instanceof Uint8Array) {
    head(out, 2, value.length);
    out.bytes(value);
  } else if (value instanceof ArrayBuffer) {
    put(out, new Uint8Array(value));
  } else if (Array.isArray(value)) {
    head(out, 4, value.length);
    for (const item of value) put(out, item);
  } else if (typeof value === 'object') {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    head(out, 5, entries.length);
    for (const [key, item] of entries) {
      put(out, key);
      put(out, item);
    }
  } else {
    throw new CborError(`cannot encode ${typeof value}`);
  }
}

/** Decodes exactly one CBOR item from `bytes` (Uint8Array or ArrayBuffer). Byte strings are
 * views into `bytes` (no copy). Throws CborError on anything outside the subset. */
export function decode(bytes) {
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const reader = { u8, pos: 0, view: new DataView(u8.buffer, u8.byteOffset, u8.byteLength) };
  const value = item(reader, 0);
  if (reader.pos !== u8.length) throw new CborError('trailing bytes after the CBOR item');
  return value;
}

function need(r, n) {
  if (r.pos + n > r.u8.length) throw new CborError('truncated CBOR');
}

function argument(r, info) {
  if (info < 24) return info;
  if (info === 24) {
    need(r, 1);
    return r.u8[r.pos++];
  }
  if (info === 25) {
    need(r, 2);
    const v = r.view.getUint16(r.pos);
    r.pos += 2;
    return v;
  }
  if (info === 26) {
    need(r, 4);
    const v = r.view.getUint32(r.pos);
    r.pos += 4;
    return v;
  }
  if (info === 27) {
    need(r, 8);
    const v = r.view.getBigUint64(r.pos);
    r.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CborError('integer beyond 2^53');
    return Number(v);
  }
  throw new CborError('indefinite lengths and reserved values are not used');
}

function item(r, depth) {
  if (depth > MAX_DEPTH) throw new CborError('CBOR nested too deep');
  need(r, 1);
  const initial = r.u8[r.pos++];
  const major = initial >> 5;
  const info = initial & 0x1f;
  switch (major) {
    case 0:
      return argument(r, info);
    case 1:
      return -1 - argument(r, info);
    case 2: {
      const n = argument(r, info);
      need(r, n);
      const out = r.u8.subarray(r.pos, r.pos + n);
      r.pos += n;
      return out;
    }
    case 3: {
      const n = argument(r, info);
      need(r, n);
      const text = new TextDecoder('utf-8', { fatal: true });
      let s;
      try {
        s = text.decode(r.u8.subarray(r.pos, r.pos + n));
      } catch {
        throw new CborError('text string is not UTF-8');
      }
      r.pos += n;
      return s;
    }
    case 4: {
      const n = argument(r, info);
      if (n > r.u8.length - r.pos) throw new CborError('array longer than the message');
      const out = [];
      for (let i = 0; i < n; i++) out.push(item(r, depth + 1));
      return out;
    }
    case 5: {
      const n = argument(r, info);
      if (n > r.u8.length - r.pos) throw new CborError('map longer than the message');
      const out = Object.create(null);
      for (let i = 0; i < n; i++) {
        const key = item(r, depth + 1);
        const value = item(r, depth + 1);
        // Non-text keys are ignored, as unknown keys are.
        if (typeof key === 'string') out[key] = value;
      }
      return out;
    }
    case 7:
      if (info === 20) return false;
      if (info === 21) return true;
      if (info === 22 || info === 23) return null;
      throw new CborError('floats and simple values are not used');
    default:
      throw new CborError('tags are not used');
  }
}
