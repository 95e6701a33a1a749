// Unit tests of the page's codecs, run with Node's test runner by the Rust test
// `shell::web::tests::page_scripts_pass_their_unit_tests` (which passes the built SHA-256
// module's path in FSNODE_SHA256_WASM). Node's own `crypto` is the independent reference.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { encode, decode, CborError } from '../cbor.js';
import { loadSha256, Sha256, sha256, hex } from '../sha256.js';
import { base32, deviceIdFromFingerprint, verificationCode } from '../trust.js';
import { bytes as sizeText, duration, finishedSummary, idGroups, canPickFolders } from '../view.js';

await loadSha256(readFileSync(process.env.FSNODE_SHA256_WASM));

const bytes = (...b) => Uint8Array.from(b);

test('CBOR encodes the spec 4 subset in its shortest form', () => {
  assert.deepEqual(encode(0), bytes(0x00));
  assert.deepEqual(encode(23), bytes(0x17));
  assert.deepEqual(encode(24), bytes(0x18, 24));
  assert.deepEqual(encode(65535), bytes(0x19, 0xff, 0xff));
  assert.deepEqual(encode(65536), bytes(0x1a, 0, 1, 0, 0));
  assert.deepEqual(encode(2 ** 32), bytes(0x1b, 0, 0, 0, 1, 0, 0, 0, 0));
  assert.deepEqual(encode(-1), bytes(0x20));
  assert.deepEqual(encode(-500), bytes(0x39, 0x01, 0xf3));
  assert.deepEqual(encode(true), bytes(0xf5));
  assert.deepEqual(encode(false), bytes(0xf4));
  assert.deepEqual(encode(null), bytes(0xf6));
  assert.deepEqual(encode('t'), bytes(0x61, 0x74));
  assert.deepEqual(encode(bytes(1, 2)), bytes(0x42, 1, 2));
  // RFC 8949 appendix A: {"a": 1, "b": [2, 3]}
  assert.deepEqual(encode({ a: 1, b: [2, 3] }), bytes(0xa2, 0x61, 0x61, 0x01, 0x61, 0x62, 0x82, 0x02, 0x03));
  assert.throws(() => encode(1.5), CborError);
  assert.throws(() => encode(2 ** 60), CborError);
});

test('CBOR round-trips transfer messages, byte strings as views', () => {
  const id = randomBytes(16);
  const data = randomBytes(300000);
  const message = { t: 'chunk', id: new Uint8Array(id), index: 5_000_000_000, sha256: new Uint8Array(32), data: new Uint8Array(data) };
  const decoded = decode(encode(message));
  assert.equal(decoded.t, 'chunk');
  assert.equal(decoded.index, 5_000_000_000);
  assert.deepEqual(Buffer.from(decoded.id), id);
  assert.deepEqual(Buffer.from(decoded.data), data);
  assert.deepEqual(decode(encode({ t: 'done', id: new Uint8Array(16), ok: false, reason: 'é' })).reason, 'é');
});

test('CBOR decoding is strict: one item, definite, in range', () => {
  assert.throws(() => decode(bytes(0x01, 0x02)), /trailing/);
  assert.throws(() => decode(bytes(0x42, 1)), /truncated/);
  assert.throws(() => decode(bytes(0x5f, 0x41, 1, 0xff)), /indefinite/);
  assert.throws(() => decode(bytes(0xfb, 0, 0, 0, 0, 0, 0, 0, 0)), /floats/);
  assert.throws(() => decode(bytes(0xc0, 0x00)), /tags/);
  assert.throws(() => decode(bytes(0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)), /2\^53/);
  assert.throws(() => decode(bytes(0x62, 0xc3, 0x28)), /UTF-8/);
  assert.throws(() => decode(bytes(0xbb, 0, 0, 0, 1, 0, 0, 0, 0)), /longer/);
  assert.throws(() => decode(new Uint8Array(40).fill(0x81)), /deep/);
  assert.throws(() => decode(new Uint8Array(0)), /truncated/);
  // Unknown and non-text keys are kept or dropped, never fatal.
  assert.deepEqual({ ...decode(bytes(0xa2, 0x01, 0x02, 0x61, 0x74, 0x61, 0x78)) }, { t: 'x' });
});

test('SHA-256 from the sha2 wasm module matches Node, incremental or whole', async () => {
  for (const size of [0, 1, 55, 56, 64, 1000, 256 * 1024, 256 * 1024 + 1, 3 * 1024 * 1024 + 7]) {
    const data = randomBytes(size);
    const expected = createHash('sha256').update(data).digest('hex');
    assert.equal(hex(await sha256(new Uint8Array(data))), expected, `size ${size}`);
    const h = new Sha256();
    for (let at = 0; at < size; at += 100003) h.update(data.subarray(at, at + 100003));
    assert.equal(hex(h.finish()), expected, `incremental, size ${size}`);
  }
  // Many hashes at once use separate slots.
  const hashers = Array.from({ length: 10 }, () => new Sha256());
  hashers.forEach((h, i) => h.update(bytes(i)));
  hashers.forEach((h, i) => assert.equal(hex(h.finish()), createHash('sha256').update(bytes(i)).digest('hex')));
});

test('device ids are base32 of the fingerprint; the verification code matches core/trust.rs', () => {
  // RFC 4648 test vectors, lowercase and unpadded.
  const enc = (s) => base32(new TextEncoder().encode(s));
  assert.deepEqual(['', 'f', 'fo', 'foo', 'foob', 'fooba', 'foobar'].map(enc),
    ['', 'my', 'mzxq', 'mzxw6', 'mzxw6yq', 'mzxw6ytb', 'mzxw6ytboi']);
  const digest = createHash('sha256').update('a certificate').digest();
  const fingerprint = [...digest].map((b) => b.toString(16).toUpperCase().padStart(2, '0')).join(':');
  const id = deviceIdFromFingerprint(fingerprint);
  assert.equal(id.length, 52);
  assert.match(id, /^[a-z2-7]{52}$/);
  assert.throws(() => deviceIdFromFingerprint('AB:CD'));
  // The same derivation as core/trust.rs: sorted ids, a domain string, the first 8 bytes
  // big-endian modulo 10^8.
  const a = id;
  const b = base32(createHash('sha256').update('another').digest());
  const [first, second] = a <= b ? [a, b] : [b, a];
  const reference = createHash('sha256').update(`fsnode verification code v1\n${first}\n${second}`).digest();
  const number = (reference.readBigUInt64BE(0) % 100000000n).toString().padStart(8, '0');
  assert.equal(verificationCode(a, b), `${number.slice(0, 4)} ${number.slice(4)}`);
  assert.equal(verificationCode(a, b), verificationCode(b, a));
  // The vector that core/trust.rs's test `verification_code_matches_the_page` checks too.
  const zeros = base32(new Uint8Array(32));
  const ones = base32(new Uint8Array(32).fill(1));
  assert.equal(verificationCode(zeros, ones), process.env.FSNODE_CODE_VECTOR);
});

test('a finished row says how much, how long and the average rate', () => {
  assert.equal(sizeText(20 * 1048576), '20.0 MiB');
  assert.equal(duration(2.345), '2.3 s');
  assert.equal(duration(42.4), '42 s');
  assert.equal(duration(185), '3 min 5 s');
  assert.equal(duration(Infinity), '…');
  const t0 = 1_700_000_000_000;
  assert.equal(finishedSummary({ size: 20 * 1048576, startedAt: t0, finishedAt: t0 + 4000 }),
    '20.0 MiB in 4.0 s · 5.0 MiB/s average');
  // A resumed transfer: the rate of what moved since it resumed.
  assert.equal(finishedSummary({ size: 20 * 1048576, from: 10 * 1048576, startedAt: t0, finishedAt: t0 + 2000 }),
    '20.0 MiB in 2.0 s · 5.0 MiB/s average');
  // Rows stored before times were recorded show the size alone.
  assert.equal(finishedSummary({ size: 1024 }), '1.0 KiB');
});

test('the device id is shown in groups of 4 that together are the id', () => {
  const id = 'abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst';
  const groups = idGroups(id);
  assert.equal(groups.length, 13);
  assert.ok(groups.every((g) => g.length === 4));
  assert.equal(groups.join(''), id);
});

test('folders can be picked on desktop browsers only', () => {
  const input = { webkitdirectory: false };
  const desktop = { userAgent: 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36' };
  assert.equal(canPickFolders(input, desktop, {}), true);
  assert.equal(canPickFolders({}, desktop, { showDirectoryPicker() {} }), true);
  assert.equal(canPickFolders({}, desktop, {}), false, 'neither the attribute nor the API');
  const android = { userAgent: 'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36' };
  assert.equal(canPickFolders(input, android, {}), false);
  assert.equal(canPickFolders(input, { userAgent: desktop.userAgent, userAgentData: { mobile: true } }, {}), false);
  const iphone = { userAgent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148' };
  assert.equal(canPickFolders(input, iphone, {}), false);
  const ipad = { userAgent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.0 Safari/605.1.15', maxTouchPoints: 5 };
  assert.equal(canPickFolders(input, ipad, {}), false, 'iPadOS presents itself as a Mac');
  assert.equal(canPickFolders(input, { ...ipad, maxTouchPoints: 0 }, {}), true, 'a Mac');
});
