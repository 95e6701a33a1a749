// Identity as spec 1 defines it, and the verification code of core/trust.rs, for the page.

import { Sha256 } from './sha256.js';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

/** RFC 4648 base32, lowercase, no padding. */
export function base32(u8) {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of u8) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

/** The device id from an `a=fingerprint:sha-256` value (`AB:CD:…`, 32 bytes). */
export function deviceIdFromFingerprint(fingerprint) {
  const hexDigits = fingerprint.replace(/:/g, '');
  if (!/^[0-9a-fA-F]{64}$/.test(hexDigits)) throw new Error(`not a SHA-256 fingerprint: ${fingerprint}`);
  const bytes = new Uint8Array(32);
  for (let i = 0; i < 32; i++) bytes[i] = parseInt(hexDigits.slice(2 * i, 2 * i + 2), 16);
  return base32(bytes);
}

/** The device id of an RTCCertificate: its DTLS fingerprint, which is SHA-256 of its DER. */
export function deviceIdOf(certificate) {
  const fp = certificate.getFingerprints().find((f) => f.algorithm.toLowerCase() === 'sha-256');
  if (!fp) throw new Error('the certificate has no SHA-256 fingerprint');
  return deviceIdFromFingerprint(fp.value);
}

/** The 8-digit code both sides show for a pair (core/trust.rs `verification_code`). */
export function verificationCode(a, b) {
  const [first, second] = a <= b ? [a, b] : [b, a];
  const text = new TextEncoder().encode(`fsnode verification code v1\n${first}\n${second}`);
  const digest = new Sha256().update(text).finish();
  let number = 0n;
  for (let i = 0; i < 8; i++) number = (number << 8n) | BigInt(digest[i]);
  number %= 100000000n;
  const digits = number.toString().padStart(8, '0');
  return `${digits.slice(0, 4)} ${digits.slice(4)}`;
}

/** Perfect negotiation's role (spec 3.3): polite when our id sorts before the peer's. */
export function isPolite(me, peer) {
  return me < peer;
}
