#!/usr/bin/env python3
"""Writes the hand-made seed corpora in fuzz/corpus/<target>/ (all but the journal's, which the
journal crate itself writes: see FUZZING.md). Deterministic; rerun after changing it.

Seeds are small, valid messages from spec sections 3 and 4 (and a few hostile ones), in each
target's input format (see the comment at the top of each fuzz_targets/*.rs)."""

import base64
import hashlib
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def device_id(n):
    return base64.b32encode(bytes([n] * 32)).decode().rstrip("=").lower()


def colon_hex(n):
    return ":".join(f"{n:02X}" for _ in range(32))


# --- minimal CBOR encoder (definite lengths, shortest forms), enough for spec 4's maps -------
def _head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for ai, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | ai]) + struct.pack(fmt, n)
    raise ValueError(n)


def cbor(v):
    if isinstance(v, bool):
        return b"\xf5" if v else b"\xf4"
    if isinstance(v, int):
        return _head(0, v) if v >= 0 else _head(1, -1 - v)
    if isinstance(v, bytes):
        return _head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return _head(3, len(b)) + b
    if isinstance(v, list):
        return _head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return _head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(v)


TID = bytes([7] * 16)


def sha(b):
    return hashlib.sha256(b).digest()


def transfer_messages():
    data = bytes(range(256)) * 4  # one 1 KiB chunk
    return {
        "start": {"t": "start", "id": TID, "name": "photos/cat.jpg", "size": 2048,
                  "chunk_size": 1024, "chunks": 2, "mime": "image/jpeg", "mode": 0o644,
                  "mtime": 1700000000, "start_chunk": 0},
        "accept": {"t": "accept", "id": TID, "start_chunk": 0, "window": 8},
        "reject": {"t": "reject", "id": TID, "reason": "the name has a \"..\" component"},
        "chunk": {"t": "chunk", "id": TID, "index": 0, "sha256": sha(data), "data": data},
        "progress": {"t": "progress", "id": TID, "next": 2},
        "resend": {"t": "resend", "id": TID, "index": 1},
        "end": {"t": "end", "id": TID, "sha256": sha(data * 2)},
        "done_ok": {"t": "done", "id": TID, "ok": True},
        "done_failed": {"t": "done", "id": TID, "ok": False, "reason": "hash mismatch"},
        "cancel": {"t": "cancel", "id": TID, "reason": "operator"},
        # Hostile or odd: unknown kind and keys, wrong types, a negative mtime, nesting.
        "unknown_kind": {"t": "ping", "id": TID, "x": [1, [2, [3, {"a": b""}]]]},
        "bad_id": {"t": "progress", "id": b"short", "next": 1},
        "negative_mtime": {"t": "start", "id": TID, "name": "a", "size": 0, "chunk_size": 1024,
                           "chunks": 0, "mime": "", "mtime": -1, "start_chunk": 0},
    }


def u16(n):
    return struct.pack("<H", n)


def transfer_wire():
    for name, msg in transfer_messages().items():
        write("transfer_wire", name, b"\x00\x00" + cbor(msg))
    # With an advertised limit of 64 bytes (little-endian prefix): a chunk that is too large.
    write("transfer_wire", "chunk_over_limit", u16(64) + cbor(transfer_messages()["chunk"]))
    write("transfer_wire", "not_a_map", b"\x00\x00" + cbor([1, 2, 3]))
    write("transfer_wire", "trailing_bytes", b"\x00\x00" + cbor({"t": "resend", "id": TID, "index": 0}) + b"\x00")


def receiver():
    # Header: size u16, chunk_extra, size_scale, durable_next, window.
    def header(size, window, durable=0):
        return u16(size) + bytes([0, 0, durable, window])

    chunk = lambda i, flags=0: bytes([1, i, flags])
    verify = lambda pick, ok=1: bytes([2, pick, ok])
    synced, end, finalized = bytes([5]), bytes([6]), bytes([7])
    # A whole 3-chunk transfer in order: chunk, verify, sync, ..., end, finalize.
    happy = header(3000, 4)
    for i in range(3):
        happy += chunk(i - 0) + verify(0)
    happy += synced + end + synced + finalized
    write("receiver", "happy_path", happy)
    # Out of order, one hash failure and a resend, end before the last sync.
    write("receiver", "resend", header(4096, 2) + chunk(1) + chunk(0) + verify(1, 0)
          + verify(0) + chunk(0) + verify(0) + synced + end + synced + finalized)
    # Hostile: beyond the window, out of range, wrong length; stray verifies and syncs.
    write("receiver", "hostile", header(8192, 2) + chunk(5) + chunk(0, 2) + chunk(0, 1)
          + bytes([3]) + struct.pack("<Q", 2**64 - 1) + b"\x01" + synced)
    # Real CBOR messages through the decoder: a chunk of an empty-ish file, end, cancel.
    msgs = transfer_messages()
    wire = header(1024, 1)
    for name in ("chunk", "end", "cancel"):
        b = cbor(msgs[name])
        wire += b"\x00" + u16(len(b)) + b
    write("receiver", "wire_messages", wire)
    # End, then the resend timer expiring (30 s) with chunks missing.
    write("receiver", "timeout", header(5000, 8, 1) + chunk(0) + end + bytes([11, 200]))


def signal():
    hello = lambda n, port=4000: (
        '{"type":"hello","v":1,"id":"%s","name":"peer-%d","device_type":"desktop","port":%d}\n'
        % (device_id(n), n, port))
    sdp = open(os.path.join(os.path.dirname(__file__), "datachannel_offer.sdp")).read()
    sdp1 = sdp.replace("FINGERPRINT", colon_hex(1))
    import json
    offer = json.dumps({"type": "offer", "sdp": sdp1, "seq": 1}) + "\n"
    answer = json.dumps({"type": "answer", "sdp": sdp1, "seq": 1}) + "\n"
    cand = ('{"type":"candidate","candidate":"candidate:1 1 udp 2130706431 10.77.0.2 5000 typ host",'
            '"sdpMid":"0","sdpMLineIndex":0}\n')
    end_cand = '{"type":"candidate","candidate":""}\n'
    bye = '{"type":"bye","reason":"busy"}\n'

    def bytes_step(peer, text, conn=0):
        b = text.encode() if isinstance(text, str) else text
        return bytes([0, peer, conn]) + u16(len(b)) + b

    def channel_step(peer, msg):
        b = cbor(msg)
        return bytes([1, peer]) + u16(len(b)) + b

    store = lambda ok=1: bytes([2, ok])
    wait = lambda s: bytes([3, s])
    # Control byte 1: the real line limit (an SDP is longer than the small one).
    write("signal", "trusted_session", b"\x01" + bytes_step(0, hello(1) + offer + cand + end_cand)
          + wait(5) + bytes_step(0, answer + bye))
    # One line cut into pieces across steps and connections.
    line = hello(1)
    write("signal", "split_lines", b"\x00" + bytes_step(0, line[:10]) + bytes_step(0, line[10:40])
          + bytes_step(0, line[40:] + bye))
    write("signal", "untrusted_offer", b"\x01" + bytes_step(1, hello(2) + offer) + wait(61)
          + bytes_step(1, offer.replace('"seq": 1', '"seq": 2')))
    write("signal", "unknown_peer_and_junk", b"\x00" + bytes_step(2, '{"type":"ping"}\n[1]\n\xff\n')
          + bytes_step(2, '{"type":"hello","v":2,"id":"x","port":1}\n')
          + bytes_step(2, '{"type":"offer","sdp":"v=0","seq":-1}\n'))
    write("signal", "too_long", b"\x00" + bytes_step(0, "x" * 600))
    # A transfer from the trusted peer over the data channel, with the shell's store results.
    m = transfer_messages()
    start = dict(m["start"], name="cat.jpg", size=1024, chunks=1, mode=0o644)
    write("signal", "channel_transfer", b"\x00" + channel_step(0, start) + store()
          + channel_step(0, m["chunk"]) + store() + store() + channel_step(0, m["end"])
          + store() + store() + wait(31))
    write("signal", "channel_hostile", b"\x00"
          + channel_step(0, dict(start, name="../escape"))
          + channel_step(0, dict(start, chunk_size=100))
          + channel_step(1, start) + channel_step(0, m["cancel"]))


def sdp():
    text = open(os.path.join(os.path.dirname(__file__), "datachannel_offer.sdp")).read()
    write("sdp", "datachannel_offer", text.replace("FINGERPRINT", colon_hex(0x5A)))
    write("sdp", "two_fingerprints", "v=0\r\na=fingerprint:sha-256 %s\r\na=fingerprint:SHA-256 %s\r\n"
          "a=fingerprint:sha-1 00:11\r\na=max-message-size:262144\r\n" % (colon_hex(1), colon_hex(2)))
    write("sdp", "missing", "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\n")
    write("sdp", "malformed", "a=fingerprint:sha-256 zz:00\na=max-message-size:lots\n")


def names():
    # Input: 16 bytes transfer id, u32 LE counter, then the name (UTF-8, the rest).
    prefix = bytes(range(16)) + struct.pack("<I", 1)
    for i, name in enumerate([
        "report.pdf", "photos/2024/cat.jpg", ".bashrc", "archive.tar.gz", "...", "..a/b..",
        "a" * 255, "€" * 85 + ".txt",
        # hostile
        "../escape", "/etc/passwd", "a//b", "a/./b", ".", "..", "a\0b", "..\\..\\x",
        "dir/", "a" * 256, "/".join(["d"] * 2049),
    ]):
        write("names", f"name{i:02}", prefix + name.encode())


def stream_frames():
    """Input: u16 limit (little-endian), a cut seed, then stream 0's bytes (spec 6)."""
    def frame(body):
        return struct.pack(">I", len(body)) + body

    msgs = transfer_messages()
    opening = cbor({"t": "progress", "id": bytes(16), "next": 0})
    stream = frame(opening) + b"".join(frame(cbor(m)) for m in msgs.values()) + frame(b"")
    write("stream_frames", "messages", u16(4096) + b"\x03" + stream)
    write("stream_frames", "one_byte_cuts", u16(4096) + b"\x00" + stream)
    write("stream_frames", "over_limit", u16(64) + b"\x05" + frame(opening) + struct.pack(">I", 65) + b"x" * 65)
    write("stream_frames", "huge_length", u16(65535) + b"\x01" + b"\xff\xff\xff\xff" + b"x" * 16)
    write("stream_frames", "torn_tail", u16(4096) + b"\x02" + frame(opening) + struct.pack(">I", 100) + b"y" * 10)


def localsend():
    # Input: a control byte (bit 0: a PIN is set; bit 1: the claimed device is trusted; bit 2:
    # the request carries the PIN), then a JSON body.
    import json
    fp = "AB" * 32
    info = {"alias": "phone", "version": "2.1", "deviceModel": "Pixel", "deviceType": "mobile",
            "fingerprint": fp, "port": 53317, "protocol": "https", "download": False}
    write("localsend", "announce", b"\x02" + json.dumps(dict(info, announce=True)).encode())
    write("localsend", "register-http", b"\x00" + json.dumps(dict(info, protocol="http")).encode())
    files = {
        "f1": {"id": "f1", "fileName": "photos/cat.jpg", "size": 300, "fileType": "image/jpeg",
               "sha256": "0f" * 32, "metadata": {"modified": "2021-01-01T12:34:56Z"}},
        "f2": {"id": "f2", "fileName": "../escape", "size": 1, "fileType": None, "sha256": None},
        "f3": {"id": "f3", "fileName": "note.txt", "size": 5, "fileType": "text/plain",
               "preview": "hello"},
    }
    prepare = json.dumps({"info": info, "files": files}).encode()
    for control in (0, 2, 3, 7):
        write("localsend", f"prepare{control}", bytes([control]) + prepare)
    write("localsend", "answer", b"\x00" + json.dumps({"sessionId": "s1", "files": {"f1": "t1"}}).encode())


if __name__ == "__main__":
    stream_frames()
    transfer_wire()
    receiver()
    signal()
    sdp()
    names()
    localsend()
