#!/usr/bin/env python3
"""An independent fsnode peer on aiortc, written from the wire protocol alone
(`shared/spec/protocol.md`, version 1), never from fsnode's code.

It implements spec 1 (own ECDSA P-256 certificate in a file; device id = base32 of the SHA-256 of
its DER), 3.1-3.4 (line JSON over TCP, `hello` first, offers/answers with `seq`, trickled
candidates with `sdpMid`/`sdpMLineIndex`, fingerprint checks, perfect negotiation with the 1.5 s
polite wait, the pre-negotiated `fileshare` channel) and 4 (CBOR transfers both ways, resume,
cancel, the refused names and the strictness rules). It skips mDNS: it dials or is dialled.
With `--quic` it also implements 6 (`quic_link.py`): it offers and answers `a=x-fsnode-quic:1`,
and when both descriptions carry it, QUIC (aioquic) replaces DTLS and SCTP on the ICE-selected
pair; its `connected` event names the transport (`quic` or `datachannel`) and its QUIC role.

The test drives it with one JSON command per line on stdin (`{"cmd": "send", ...}`, see
`Peer.command`) and reads one JSON event per line on stdout (`{"ev": "connected", ...}`).
Where fsnode does something the spec forbids, the peer prints `{"ev": "violation", ...}` and
then behaves as a strict implementation (a browser) would; it never imitates a deviation.

Network safety: it refuses to start unless every non-loopback IPv4 address of its host is a
test-LAN address (10.77.0.0/16), binds signaling to `--bind` only, and gathers ICE host
candidates on that one address, with no STUN server and no mDNS.
"""

import argparse
import asyncio
import base64
import datetime
import hashlib
import io
import ipaddress
import json
import os
import secrets
import shutil
import sys
import time

try:
    import aioice.ice
    import cbor2
    import ifaddr
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.rtcdtlstransport import RTCCertificate
    from aiortc.sdp import candidate_from_sdp
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    import quic_link
except ImportError as missing:
    sys.exit(f"the interop peer needs aiortc, aioquic and cbor2 ({missing}): python3 -m pip install "
             "aiortc==1.16.0 aioquic==1.7.2 cbor2==6.3.0 (test.sh installs them)")

MAX_LINE = 256 * 1024  # spec 3.1
HELLO_TIMEOUT = 10.0  # spec 3.1
ANSWER_TIMEOUT = 10.0  # spec 3.3
RETRY_WAITS = (1.0, 2.0, 4.0)  # spec 3.3
POLITE_WAIT = 1.5  # spec 3.3
CANDIDATE_BUFFER = 64
CANDIDATE_TTL = 30.0
RECONNECT_BACKOFF = (1.0, 2.0, 4.0)
# aiortc advertises a=max-message-size:262144; messages above it close the channel (spec 4).
LOCAL_MAX_MESSAGE = 262144
DEFAULT_REMOTE_MAX_MESSAGE = 65536  # spec 4: when the attribute is absent
WINDOW = 64
END_RESEND_WAIT = 30.0
TEST_NET = ipaddress.ip_network("10.77.0.0/16")

REJECT_CODES = {"name", "size", "mismatch", "cancelled", "finished", "policy", "no_space", "invalid"}


def now():
    return time.monotonic()


# --- events and JSON forms of CBOR ----------------------------------------------------------


def jsonable(value):
    """CBOR values as JSON: byte strings become {"$hex": ...}, long ones {"$len": n}."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) > 64:
            return {"$len": len(value)}
        return {"$hex": bytes(value).hex()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return "NaN"
    return value


def from_json(value):
    """The inverse for commands: {"$hex": ...} becomes bytes."""
    if isinstance(value, dict):
        if set(value) == {"$hex"}:
            return bytes.fromhex(value["$hex"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def emit(ev, **fields):
    fields = {"ev": ev, "t": round(time.time(), 3), **fields}
    sys.stdout.write(json.dumps(jsonable(fields)) + "\n")
    sys.stdout.flush()


def violation(section, what, **fields):
    """fsnode broke a rule of spec `section`."""
    emit("violation", section=section, what=what, **fields)


# --- identity (spec 1) ----------------------------------------------------------------------


def b32(digest):
    return base64.b32encode(digest).decode().lower().rstrip("=")


def device_id_of(cert):
    return b32(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


def new_identity(key=None):
    """A self-signed certificate for `key` (a new P-256 key when None)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fsnode-interop-peer")])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def load_identity(path, below=None, above=None):
    """The identity in `path` (created, mode 0600, when missing). `below`/`above` ask for a new
    identity whose device id sorts before/after the given one (tries until it does)."""
    if os.path.exists(path):
        with open(path, "rb") as f:
            pem = f.read()
        key = serialization.load_pem_private_key(pem, password=None)
        cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE") :])
        return key, cert
    # The id hashes the certificate, so a new serial number is a new id: one key, many
    # signatures (cheap), until the order holds. An id near either end of the order (one of
    # fsnode's starting "zz", say) can take thousands of tries.
    key = None
    for _ in range(200_000):
        key, cert = new_identity(key)
        did = device_id_of(cert)
        if (below is None or did < below) and (above is None or did > above):
            break
    else:
        raise SystemExit("no identity with the requested id order in 200,000 tries")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key, cert


# --- SDP helpers ----------------------------------------------------------------------------


def sdp_lines(sdp):
    return [line for line in sdp.replace("\r\n", "\n").split("\n") if line]


def sha256_fingerprint_ids(sdp):
    """Device ids named by the SDP's `a=fingerprint:sha-256` lines (other hashes ignored)."""
    ids = []
    for line in sdp_lines(sdp):
        if line.lower().startswith("a=fingerprint:"):
            algorithm, _, value = line[len("a=fingerprint:") :].partition(" ")
            if algorithm.lower() == "sha-256":
                try:
                    ids.append(b32(bytes.fromhex(value.strip().replace(":", ""))))
                except ValueError:
                    ids.append("<unreadable>")
    return ids


def ice_credentials(sdp):
    ufrag = pwd = None
    for line in sdp_lines(sdp):
        if line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:") and pwd is None:
            pwd = line.split(":", 1)[1]
    return ufrag, pwd


def max_message_size(sdp):
    for line in sdp_lines(sdp):
        if line.startswith("a=max-message-size:"):
            try:
                return int(line.split(":", 1)[1])
            except ValueError:
                return DEFAULT_REMOTE_MAX_MESSAGE
    return DEFAULT_REMOTE_MAX_MESSAGE


def split_candidates(sdp):
    """(the SDP without candidate lines, the candidates, the data m-line's mid) for trickling."""
    kept, candidates, mid = [], [], "0"
    for line in sdp_lines(sdp):
        if line.startswith("a=candidate:"):
            candidates.append(line[2:])
        elif line == "a=end-of-candidates":
            continue
        else:
            if line.startswith("a=mid:"):
                mid = line.split(":", 1)[1]
            kept.append(line)
    return "\r\n".join(kept) + "\r\n", candidates, mid


# --- transfers (spec 4) ---------------------------------------------------------------------


class Invalid(Exception):
    """A known message with missing or wrongly typed keys (reject `invalid` if its id is readable)."""


def decode_message(data):
    """One CBOR item filling the whole message, or ValueError (the channel is closed)."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp).decode()
    except Exception as e:  # cbor2 raises several kinds on garbage
        raise ValueError(f"invalid CBOR: {e}") from e
    if fp.tell() != len(data):
        raise ValueError(f"{len(data) - fp.tell()} trailing bytes after the CBOR item")
    return item


def field(msg, key, kind, optional=False):
    if key not in msg:
        if optional:
            return None
        raise Invalid(f"missing {key}")
    value = msg[key]
    ok = {
        "u64": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64,
        "u32": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
        "i64": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63,
        "text": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "id": lambda v: isinstance(v, bytes) and len(v) == 16,
        "sha": lambda v: isinstance(v, bytes) and len(v) == 32,
        "bytes": lambda v: isinstance(v, bytes),
    }[kind](value)
    if not ok:
        raise Invalid(f"{key} is not a {kind}")
    return value


def refused_name(name, receive_dir):
    """Why spec 4 refuses `name`, or None."""
    if name == "":
        return "empty name"
    if "\x00" in name:
        return "NUL in name"
    if "\\" in name:
        return "backslash in name"
    if name.startswith("/"):
        return "absolute name"
    if len(name.encode()) > 4096:
        return "name over 4096 bytes"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"component {part!r}"
        if len(part.encode()) > 255:
            return "component over 255 bytes"
    root = os.path.realpath(receive_dir)
    target = os.path.realpath(os.path.join(receive_dir, name))
    if os.path.commonpath([root, target]) != root:
        return "resolves outside the receive directory"
    return None


def unused_name(path):
    """`path`, or `name (1).ext`, `name (2).ext`, ... (never overwrite)."""
    if not os.path.lexists(path):
        return path
    directory, base = os.path.split(path)
    dot = base.rfind(".")
    stem, ext = (base[:dot], base[dot:]) if dot > 0 else (base, "")
    for n in range(1, 10000):
        candidate = os.path.join(directory, f"{stem} ({n}){ext}")
        if not os.path.lexists(candidate):
            return candidate
    raise OSError("no free name")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


class Transfers:
    """Both sides of spec 4 for the one remote this peer talks to; state survives restarts in
    `state_dir/transfers.json` (what a receiver holds durably, what a sender believes)."""

    def __init__(self, state_dir, receive_dir, window):
        self.path = os.path.join(state_dir, "transfers.json")
        self.receive_dir = receive_dir
        self.window = window
        self.hold_progress = False
        self.channel = None  # (send function, remote max message size)
        self.sends = {}
        self.recvs = {}
        self.live = {}  # id -> in-memory state of an active receive (bitmap, failures)
        self.pause_after = {}  # id -> chunks to send before pausing (this process only)
        self.corrupt = {}  # id -> {chunk index: how many more sends of it to corrupt}
        if os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
            self.sends = saved.get("sends", {})
            self.recvs = saved.get("recvs", {})

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"sends": self.sends, "recvs": self.recvs}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- the channel

    def send_msg(self, msg):
        if self.channel is None:
            return False
        try:
            self.channel[0](cbor2.dumps(msg))
            return True
        except Exception as e:  # closed channel or aiortc refusing
            emit("send_error", error=str(e), t_msg=msg.get("t"))
            return False

    def on_open(self, send, remote_max):
        self.channel = (send, remote_max)
        for tid, s in self.sends.items():
            if s["state"] == "cancelling":
                self.send_msg({"t": "cancel", "id": bytes.fromhex(tid), "reason": "cancelled"})
            elif s["state"] in ("queued", "active"):
                self.send_start(tid)

    def on_close(self):
        self.channel = None
        for s in self.sends.values():
            if s["state"] == "active":
                s["state"] = "queued"
            s.pop("accepted", None)

    # -- sending

    def queue(self, path, name, tid=None, pause_after=None, start_extra=None, corrupt=None):
        size = os.path.getsize(path)
        tid = tid or secrets.token_bytes(16).hex()
        st = os.stat(path)
        if pause_after is not None:
            self.pause_after[tid] = pause_after
        if corrupt:
            self.corrupt[tid] = dict(corrupt)
        self.sends[tid] = {
            "path": path,
            "name": name,
            "size": size,
            "sha256": file_sha256(path).hex(),
            "chunk_size": None,
            "start_chunk": 0,
            "state": "queued",
            "mode": st.st_mode & 0o777,
            "mtime": int(st.st_mtime),
            "start_extra": start_extra or {},
        }
        self.save()
        emit("send_queued", id=tid, name=name, size=size)
        if self.channel is not None:
            self.send_start(tid)
        return tid

    def chunk_size_for(self, remote_max):
        limit = 256 * 1024 if remote_max == 0 else min(256 * 1024, remote_max - 1024)
        size = 1024
        while size * 2 <= limit:
            size *= 2
        return size

    def send_start(self, tid):
        s = self.sends[tid]
        if s["chunk_size"] is None:
            s["chunk_size"] = self.chunk_size_for(self.channel[1])
        cs = s["chunk_size"]
        msg = {
            "t": "start",
            "id": bytes.fromhex(tid),
            "name": s["name"],
            "size": s["size"],
            "chunk_size": cs,
            "chunks": -(-s["size"] // cs),
            "mime": "application/octet-stream",
            "mode": s["mode"],
            "mtime": s["mtime"],
            "start_chunk": s["start_chunk"],
        }
        msg.update(from_json(s["start_extra"]))
        if s["state"] == "queued":
            s["state"] = "active"
        self.save()
        self.send_msg(msg)
        emit("start_sent", id=tid, size=s["size"], chunk_size=cs, start_chunk=s["start_chunk"])

    def pump(self, tid):
        s = self.sends.get(tid)
        acc = s and s.get("accepted")
        if not acc or s["state"] != "active" or acc.get("paused"):
            return
        cs, chunks = s["chunk_size"], -(-s["size"] // s["chunk_size"])
        with open(s["path"], "rb") as f:
            while acc["next_send"] < chunks and acc["next_send"] < acc["acked"] + acc["window"]:
                if tid in self.pause_after and acc["sent"] >= self.pause_after[tid]:
                    acc["paused"] = True
                    emit("send_paused", id=tid, next_send=acc["next_send"])
                    return
                i = acc["next_send"]
                f.seek(i * cs)
                self.send_chunk(tid, i, f.read(cs))
                acc["next_send"] += 1
                acc["sent"] += 1
        if acc["next_send"] >= chunks and not acc.get("ended"):
            acc["ended"] = True
            self.send_msg({"t": "end", "id": bytes.fromhex(tid), "sha256": bytes.fromhex(s["sha256"])})

    def send_chunk(self, tid, index, data):
        digest = hashlib.sha256(data).digest()
        left = self.corrupt.get(tid, {}).get(str(index), 0)
        if left > 0:
            # The hash is the true one; the data has one byte flipped.
            self.corrupt[tid][str(index)] = left - 1
            data = bytes([data[0] ^ 0xFF]) + data[1:]
            emit("chunk_corrupted", id=tid, index=index)
        self.send_msg({"t": "chunk", "id": bytes.fromhex(tid), "index": index,
                       "sha256": digest, "data": data})

    def resend(self, tid, index):
        s = self.sends[tid]
        cs = s["chunk_size"]
        with open(s["path"], "rb") as f:
            f.seek(index * cs)
            self.send_chunk(tid, index, f.read(cs))

    def resume_sending(self, tid):
        s = self.sends.get(tid)
        if s and s.get("accepted"):
            s["accepted"]["paused"] = False
            self.pause_after.pop(tid, None)
            self.pump(tid)

    def cancel(self, tid):
        if tid in self.sends:
            self.sends[tid]["state"] = "cancelling"
            self.save()
            self.send_msg({"t": "cancel", "id": bytes.fromhex(tid), "reason": "cancelled by the test"})
        elif tid in self.recvs:
            r = self.recvs[tid]
            if r["state"] == "active":
                r["state"] = "cancelled"
                self.drop_part(tid)
                self.save()
            self.send_msg({"t": "cancel", "id": bytes.fromhex(tid), "reason": "cancelled by the test"})
        emit("cancel_sent", id=tid)

    def finish_send(self, tid, state, **fields):
        s = self.sends[tid]
        s["state"] = state
        s.pop("accepted", None)
        self.save()
        emit("send_" + state, id=tid, **fields)

    def on_sender_side(self, t, tid, msg):
        s = self.sends[tid]
        if t == "accept":
            start = field(msg, "start_chunk", "u64")
            window = field(msg, "window", "u32")
            if s["state"] in ("done", "rejected", "cancelled"):
                violation("4", "accept for a transfer that had finished", id=tid, state=s["state"])
                return
            if s["state"] != "active":
                return
            chunks = -(-s["size"] // s["chunk_size"])
            if start > chunks:
                violation("4", "accept.start_chunk beyond the file", id=tid, start_chunk=start)
                return
            s["start_chunk"] = start
            s["accepted"] = {"next_send": start, "acked": start, "window": max(1, window), "sent": 0}
            self.save()
            emit("accepted", id=tid, start_chunk=start, window=window)
            self.pump(tid)
        elif t == "progress":
            nxt = field(msg, "next", "u64")
            acc = s.get("accepted")
            if acc and nxt > acc["acked"]:
                acc["acked"] = nxt
                s["start_chunk"] = nxt
                self.save()
            emit("progress_in", id=tid, next=nxt)
            self.pump(tid)
        elif t == "resend":
            index = field(msg, "index", "u64")
            self.resend(tid, index)
        elif t == "done":
            ok = field(msg, "ok", "bool")
            reason = field(msg, "reason", "text", optional=True)
            if s["state"] == "cancelling":
                self.finish_send(tid, "cancelled", by="us", ok=ok, reason=reason)
            else:
                self.finish_send(tid, "done", ok=ok, reason=reason)
        elif t == "reject":
            reason = field(msg, "reason", "text")
            code = field(msg, "code", "text", optional=True)
            if code is not None and code not in REJECT_CODES:
                violation("4", "reject with an unknown code", id=tid, code=code)
            self.finish_send(tid, "rejected", code=code, reason=reason)
        elif t == "cancel":
            field(msg, "reason", "text")
            self.finish_send(tid, "cancelled", by="them", reason=msg.get("reason"))

    # -- receiving

    def part_path(self, tid):
        r = self.recvs[tid]
        final = os.path.join(self.receive_dir, r["name"])
        directory, base = os.path.split(final)
        suffix = f".{tid[:8]}.part"
        stem = base.encode()[: 255 - len(suffix)].decode(errors="ignore")
        return os.path.join(directory, stem + suffix)

    def drop_part(self, tid):
        try:
            os.unlink(self.part_path(tid))
        except OSError:
            pass
        self.live.pop(tid, None)

    def reject(self, tid, code, reason):
        self.send_msg({"t": "reject", "id": bytes.fromhex(tid), "reason": reason, "code": code})
        emit("reject_sent", id=tid, code=code, reason=reason)

    def on_start(self, tid, msg):
        name = field(msg, "name", "text")
        size = field(msg, "size", "u64")
        chunk_size = field(msg, "chunk_size", "u32")
        chunks = field(msg, "chunks", "u64")
        field(msg, "mime", "text")
        mode = field(msg, "mode", "u32", optional=True)
        mtime = field(msg, "mtime", "i64", optional=True)
        start_chunk = field(msg, "start_chunk", "u64")
        emit("start_in", id=tid, name=name, size=size, chunk_size=chunk_size, start_chunk=start_chunk)
        old = self.recvs.get(tid)
        if old is not None:
            if old["state"] == "done":
                self.send_msg({"t": "done", "id": bytes.fromhex(tid), "ok": True})
                return
            if old["state"] != "active":
                self.reject(tid, old.get("code", "finished"), f"transfer already {old['state']}")
                return
            if (old["name"], old["size"], old["chunk_size"]) != (name, size, chunk_size):
                self.reject(tid, "mismatch", "resumed start differs from the first")
                return
            live = self.live_state(tid)
            self.send_msg({"t": "accept", "id": bytes.fromhex(tid), "start_chunk": live["next"], "window": self.window})
            emit("recv_started", id=tid, name=name, start_chunk=live["next"], resumed=True)
            return
        why = refused_name(name, self.receive_dir)
        if why:
            self.recvs[tid] = {"state": "rejected", "code": "name", "name": name}
            self.save()
            self.reject(tid, "name", why)
            return
        if not (1024 <= chunk_size <= 4 * 1024 * 1024) or chunks != -(-size // chunk_size):
            self.recvs[tid] = {"state": "rejected", "code": "size", "name": name}
            self.save()
            self.reject(tid, "size", "size, chunk_size and chunks disagree")
            return
        if shutil.disk_usage(self.receive_dir).free < size:
            self.reject(tid, "no_space", "not enough free space")
            return
        self.recvs[tid] = {"state": "active", "name": name, "size": size, "chunk_size": chunk_size,
                           "chunks": chunks, "next": 0, "mode": mode, "mtime": mtime}
        part = self.part_path(tid)
        os.makedirs(os.path.dirname(part), exist_ok=True)
        with open(part, "wb"):
            pass
        self.save()
        self.live_state(tid)
        self.send_msg({"t": "accept", "id": bytes.fromhex(tid), "start_chunk": 0, "window": self.window})
        emit("recv_started", id=tid, name=name, start_chunk=0, resumed=False)

    def live_state(self, tid):
        if tid not in self.live:
            r = self.recvs[tid]
            self.live[tid] = {"next": r["next"], "have": set(range(r["next"])), "since": 0,
                              "failures": {}, "end": None, "end_timer": None, "floor": r["next"]}
        return self.live[tid]

    def progress(self, tid):
        r, live = self.recvs[tid], self.live[tid]
        if self.hold_progress:
            live["held"] = True
            return
        with open(self.part_path(tid), "r+b") as f:
            os.fsync(f.fileno())
        r["next"] = live["next"]
        self.save()
        self.send_msg({"t": "progress", "id": bytes.fromhex(tid), "next": live["next"]})
        emit("recv_progress", id=tid, next=live["next"])

    def release_progress(self):
        self.hold_progress = False
        for tid, live in list(self.live.items()):
            if live.pop("held", False):
                self.progress(tid)

    def on_chunk(self, tid, msg):
        index = field(msg, "index", "u64")
        digest = field(msg, "sha256", "sha")
        data = field(msg, "data", "bytes")
        r = self.recvs[tid]
        if r["state"] != "active":
            return
        live = self.live_state(tid)
        if index < live["floor"]:
            violation("4", "chunk below the accepted start_chunk", id=tid, index=index, start_chunk=live["floor"])
        if index >= r["chunks"]:
            violation("4", "chunk index beyond the file", id=tid, index=index)
            return
        expected = r["chunk_size"] if index < r["chunks"] - 1 else r["size"] - index * r["chunk_size"]
        if hashlib.sha256(data).digest() != digest or len(data) != expected:
            fails = live["failures"].get(index, 0) + 1
            live["failures"][index] = fails
            if fails >= 3:
                self.cancel(tid)
                return
            self.send_msg({"t": "resend", "id": bytes.fromhex(tid), "index": index})
            return
        with open(self.part_path(tid), "r+b") as f:
            f.seek(index * r["chunk_size"])
            f.write(data)
        live["have"].add(index)
        while live["next"] in live["have"]:
            live["next"] += 1
        live["since"] += 1
        if live["since"] >= max(1, self.window // 4):
            live["since"] = 0
            self.progress(tid)
        if live["end"] is not None:
            self.try_complete(tid)

    def on_end(self, tid, msg):
        digest = field(msg, "sha256", "sha")
        r = self.recvs[tid]
        if r["state"] != "active":
            return
        live = self.live_state(tid)
        live["end"] = digest
        self.progress(tid)
        if not self.try_complete(tid) and live["end_timer"] is None:
            live["end_timer"] = asyncio.get_event_loop().call_later(
                END_RESEND_WAIT, lambda: self.fail(tid, "resends did not arrive in time"))

    def try_complete(self, tid):
        r, live = self.recvs[tid], self.live[tid]
        if live["next"] < r["chunks"]:
            return False
        if live["end_timer"] is not None:
            live["end_timer"].cancel()
        part = self.part_path(tid)
        if file_sha256(part) != live["end"]:
            self.fail(tid, "whole-file hash differs")
            return True
        with open(part, "r+b") as f:
            f.truncate(r["size"])
            os.fsync(f.fileno())
        final = unused_name(os.path.join(self.receive_dir, r["name"]))
        os.rename(part, final)
        if r.get("mtime") is not None:
            os.utime(final, (r["mtime"], r["mtime"]))
        r["state"] = "done"
        r["path"] = final
        self.live.pop(tid, None)
        self.save()
        self.send_msg({"t": "done", "id": bytes.fromhex(tid), "ok": True})
        emit("recv_done", id=tid, path=final, sha256=live["end"].hex(), size=r["size"])
        return True

    def fail(self, tid, reason):
        r = self.recvs[tid]
        if r["state"] != "active":
            return
        r["state"] = "failed"
        r["code"] = "finished"
        self.drop_part(tid)
        self.save()
        self.send_msg({"t": "done", "id": bytes.fromhex(tid), "ok": False, "reason": reason})
        emit("recv_failed", id=tid, reason=reason)

    def on_cancel_as_receiver(self, tid, msg):
        r = self.recvs[tid]
        if r["state"] == "active":
            r["state"] = "cancelled"
            r["code"] = "cancelled"
            self.drop_part(tid)
            self.save()
        self.send_msg({"t": "done", "id": bytes.fromhex(tid), "ok": False, "reason": "cancelled"})
        emit("recv_cancelled", id=tid, reason=msg.get("reason"))

    # -- dispatch

    def on_message(self, data):
        """Handles one binary message; returns False when the channel must be closed."""
        if len(data) > LOCAL_MAX_MESSAGE:
            violation("4", "message over our advertised max-message-size", size=len(data))
            return False
        try:
            msg = decode_message(data)
        except ValueError as e:
            violation("4", "undecodable message", error=str(e))
            return False
        if not isinstance(msg, dict):
            return True
        t = msg.get("t")
        shown = dict(msg)
        emit("dc_in", msg=shown)
        if t not in ("start", "accept", "reject", "chunk", "progress", "resend", "end", "done", "cancel"):
            return True
        raw_id = msg.get("id")
        if not (isinstance(raw_id, bytes) and len(raw_id) == 16):
            violation("4", "known message without a readable id", t=t)
            return False
        tid = raw_id.hex()
        try:
            if t == "start":
                self.on_start(tid, msg)
            elif t in ("accept", "progress", "resend", "done", "reject") or (t == "cancel" and tid in self.sends):
                if tid in self.sends:
                    self.on_sender_side(t, tid, msg)
            elif t in ("chunk", "end", "cancel"):
                if tid in self.recvs:
                    {"chunk": self.on_chunk, "end": self.on_end, "cancel": self.on_cancel_as_receiver}[t](tid, msg)
        except Invalid as e:
            violation("4", "invalid message", t=t, error=str(e))
            self.reject(tid, "invalid", str(e))
        return True


# --- signaling and sessions (spec 3) --------------------------------------------------------


class Conn:
    counter = 0

    def __init__(self, reader, writer, outbound):
        Conn.counter += 1
        self.n = Conn.counter
        self.reader, self.writer, self.outbound = reader, writer, outbound
        self.remote_id = None
        self.closed = False

    def send(self, msg):
        if self.closed:
            return False
        try:
            self.writer.write((json.dumps(msg) + "\n").encode())
            return True
        except Exception:
            self.closed = True
            return False

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.writer.close()
            except Exception:
                pass


class Session:
    """One RTCPeerConnection and its pre-negotiated channel; with QUIC (spec 6) the same ICE
    transport carries a `quic_link.QuicLink` instead of DTLS and SCTP."""

    def __init__(self, peer, remote):
        self.peer, self.remote = peer, remote
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        # aiortc makes a fresh certificate per connection; ours is the device's identity.
        self.pc._RTCPeerConnection__certificates = [peer.certificate]
        self.dc = self.pc.createDataChannel("fileshare", negotiated=True, id=0, ordered=True)
        self.remote_creds = None
        self.remote_max = DEFAULT_REMOTE_MAX_MESSAGE
        self.open = False
        self.closed = False
        self.pending = []  # (arrival, candidate message) before the remote description
        self.local_quic = False  # our description carries a=x-fsnode-quic:1
        self.transport = "datachannel"
        self.quic = None  # the QuicLink once ICE selected a pair

        @self.dc.on("open")
        def on_open():
            peer.on_channel_open(remote, self, self.dc.send)

        @self.dc.on("message")
        def on_message(data):
            if not peer.on_channel_message(remote, self, data):
                self.dc.close()
                asyncio.ensure_future(self.close())

        @self.dc.on("close")
        def on_close():
            peer.on_session_lost(remote, self, "channel closed")

        @self.pc.on("connectionstatechange")
        def on_state():
            state = self.pc.connectionState
            emit("pc_state", state=state)
            if state in ("failed", "closed", "disconnected"):
                peer.on_session_lost(remote, self, "connection " + state)

    def local_sdp(self):
        sdp = self.pc.localDescription.sdp
        return quic_link.add_quic_attribute(sdp) if self.local_quic else sdp

    def use_quic(self, is_client):
        """Both descriptions carry the attribute: once ICE has selected a pair, QUIC runs on it
        where aiortc would start DTLS (and after it SCTP), which then never starts."""
        self.transport = "quic"
        dtls = self.pc.sctp.transport

        async def start_quic_instead_of_dtls(_remote_dtls_parameters):
            ice = dtls.transport
            if self.quic is not None or self.closed or ice.state != "completed":
                return
            args = self.peer.args
            controlling = ice._connection.ice_controlling
            if controlling != is_client:
                violation("6", "the ICE-controlling side is not the offerer", ice_controlling=controlling,
                          we_offered=is_client)
            cert, key = self.peer.quic_identity()
            self.quic = quic_link.QuicLink(
                owner=self, ice=ice._connection, is_client=controlling, certificate=cert,
                private_key=key, expected_id=self.remote.id, max_in=LOCAL_MAX_MESSAGE,
                report=emit, violation=violation, drop_all=args.quic_drop,
                keep_alive=not args.quic_no_keepalive)
            emit("ice_selected", transport="quic")
            self.quic.start()

        dtls.start = start_quic_instead_of_dtls

    # QuicLink's owner interface
    def quic_open(self, link):
        self.peer.on_channel_open(self.remote, self, link.send)

    def quic_message(self, data):
        return self.peer.on_channel_message(self.remote, self, data)

    def quic_lost(self, why):
        self.peer.on_session_lost(self.remote, self, why)

    def quic_handshake_failed(self):
        # Spec 6: the next offer from this node leaves out a=x-fsnode-quic.
        self.remote.quic_fallback_next = True

    async def close(self):
        self.closed = True
        if self.quic is not None:
            self.quic.stop()
        try:
            await self.pc.close()
        except Exception:
            pass


class Remote:
    def __init__(self, device_id):
        self.id = device_id
        self.conns = []
        self.dial_addr = None
        self.session = None  # the current (newest) session
        self.old_sessions = []
        self.seq = 0
        self.last_offer = None  # (seq, sdp) of the newest offer we sent
        self.outstanding = None  # (seq, sdp) of our unanswered offer
        self.retry_task = None
        self.making_offer = False
        self.ignore_offer = False
        self.answered = {}  # their offer seq -> (offer sdp, our answer sdp)
        self.offers_in = 0
        self.connected = False
        self.backoff = 0
        self.unauthorized = False
        self.held = None
        self.initiate_task = None
        self.quic_fallback_next = False  # a QUIC handshake timed out: leave QUIC out of the next offer


class Peer:
    def __init__(self, args):
        self.args = args
        os.makedirs(args.state, exist_ok=True)
        os.makedirs(args.receive_dir, exist_ok=True)
        key, cert = load_identity(os.path.join(args.state, "identity.pem"), args.id_below, args.id_above)
        self.key, self.cert = key, cert
        self.certificate = RTCCertificate(key=key, cert=cert)
        self.id = device_id_of(cert)
        self.remotes = {}
        self.transfers = Transfers(args.state, args.receive_dir, args.window)
        self.hold_first_offer = args.hold_first_offer

    def trusted(self, device_id):
        return not self.args.trust or device_id in self.args.trust

    def polite(self, remote):
        return self.id < remote.id  # spec 3.3: byte-wise on the 52-character ids

    def remote(self, device_id):
        if device_id not in self.remotes:
            self.remotes[device_id] = Remote(device_id)
        return self.remotes[device_id]

    def hello(self):
        return {"type": "hello", "v": 1, "id": self.id, "name": self.args.name,
                "device_type": "desktop", "port": self.args.port}

    # -- connections

    async def serve(self, reader, writer):
        conn = Conn(reader, writer, outbound=False)
        await self.run_conn(conn)

    async def dial(self, host, port):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_LINE + 1, local_addr=(self.args.bind, 0)), 5)
        except Exception as e:
            emit("dial_failed", addr=f"{host}:{port}", error=str(e))
            return None
        conn = Conn(reader, writer, outbound=True)
        conn.send(self.hello())
        emit("dialled", conn=conn.n, addr=f"{host}:{port}")
        asyncio.ensure_future(self.run_conn(conn))
        return conn

    async def run_conn(self, conn):
        peer_addr = conn.writer.get_extra_info("peername")
        try:
            line = await asyncio.wait_for(conn.reader.readline(), HELLO_TIMEOUT)
            hello = json.loads(line)
            if not isinstance(hello, dict) or hello.get("type") != "hello":
                violation("3.1", "first line is not hello", line=line[:200].decode(errors="replace"))
                return
            if hello.get("v") != 1 or type(hello.get("v")) is not int:
                violation("3.1", "hello v is not 1", v=hello.get("v"))
            for key in ("id", "name", "device_type"):
                if not isinstance(hello.get(key), str):
                    violation("3.1", "hello without " + key)
            if not isinstance(hello.get("port"), int):
                violation("3.1", "hello without an integer port")
            if not conn.outbound:
                conn.send(self.hello())
            remote = self.remote(hello["id"])
            conn.remote_id = remote.id
            remote.conns.append(conn)
            if isinstance(hello.get("port"), int) and hello["port"] > 0 and peer_addr:
                remote.dial_addr = (peer_addr[0], hello["port"])
            emit("hello", id=remote.id, conn=conn.n, outbound=conn.outbound, name=hello.get("name"),
                 port=hello.get("port"))
            self.maybe_initiate(remote, "hello")
            while True:
                line = await conn.reader.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    violation("3.1", "invalid JSON line")
                    break
                if isinstance(msg, dict):
                    await self.on_signal(remote, conn, msg)
        except (asyncio.TimeoutError, ValueError, ConnectionError, asyncio.LimitOverrunError) as e:
            emit("conn_error", conn=conn.n, error=type(e).__name__)
        finally:
            conn.close()
            if conn.remote_id and conn in self.remotes[conn.remote_id].conns:
                self.remotes[conn.remote_id].conns.remove(conn)
            emit("conn_closed", conn=conn.n)

    async def signal(self, remote, msg):
        """Sends on the newest open connection with `remote`, dialling when there is none."""
        for conn in reversed(remote.conns):
            if not conn.closed and conn.send(msg):
                return True
        if remote.dial_addr:
            conn = await self.dial(*remote.dial_addr)
            if conn:
                # The dialled connection registers itself once its hello arrives; send now.
                return conn.send(msg)
        emit("signal_undeliverable", type=msg.get("type"))
        return False

    async def send_description(self, remote, kind, seq, session):
        sdp = session.local_sdp()
        if self.args.no_trickle:
            await self.signal(remote, {"type": kind, "sdp": sdp, "seq": seq})
            return sdp
        stripped, candidates, mid = split_candidates(sdp)
        await self.signal(remote, {"type": kind, "sdp": stripped, "seq": seq})
        for c in candidates:
            await self.signal(remote, {"type": "candidate", "candidate": c, "sdpMid": mid, "sdpMLineIndex": 0})
        await self.signal(remote, {"type": "candidate", "candidate": "", "sdpMid": mid, "sdpMLineIndex": 0})
        return stripped

    # -- negotiation

    def maybe_initiate(self, remote, why):
        if self.args.no_initiate or not self.trusted(remote.id) or remote.unauthorized:
            return
        if remote.connected or remote.outstanding or remote.making_offer or remote.held:
            return
        if remote.initiate_task and not remote.initiate_task.done():
            return
        remote.initiate_task = asyncio.ensure_future(self.initiate_later(remote, why, 0.0))

    async def initiate_later(self, remote, why, delay):
        offers_before = remote.offers_in
        await asyncio.sleep(delay)
        if self.polite(remote) and not self.hold_first_offer:
            await asyncio.sleep(POLITE_WAIT)
            if remote.offers_in != offers_before:
                return
        if remote.offers_in != offers_before:
            return  # they initiated meanwhile: answering is enough
        if remote.connected or remote.outstanding or remote.making_offer:
            return
        if remote.session is not None and not remote.session.closed:
            return  # a session is being negotiated or connecting
        await self.offer(remote, why)

    async def offer(self, remote, why):
        session = Session(self, remote)
        if remote.session is not None:
            remote.old_sessions.append(remote.session)
        remote.session = session
        remote.making_offer = True
        try:
            await session.pc.setLocalDescription(await session.pc.createOffer())
        finally:
            remote.making_offer = False
        session.local_quic = self.args.quic and not remote.quic_fallback_next
        if self.args.quic and remote.quic_fallback_next:
            # Spec 6: after a QUIC handshake that did not complete, the next offer goes without.
            remote.quic_fallback_next = False
            emit("quic_left_out_of_offer")
        remote.seq += 1
        seq = remote.seq
        if self.hold_first_offer:
            self.hold_first_offer = False
            remote.held = (seq, session)
            emit("offer_held", seq=seq)
            asyncio.ensure_future(self.release_held(remote, 20.0))
            return
        await self.send_offer(remote, seq, session, why)

    async def release_held(self, remote, after):
        await asyncio.sleep(after)
        if remote.held:
            seq, session = remote.held
            remote.held = None
            await self.send_offer(remote, seq, session, "held offer timed out")

    async def send_offer(self, remote, seq, session, why):
        sdp = await self.send_description(remote, "offer", seq, session)
        remote.outstanding = (seq, sdp)
        remote.last_offer = (seq, sdp)
        emit("offer_sent", seq=seq, why=why, ufrag=ice_credentials(sdp)[0])
        if remote.retry_task:
            remote.retry_task.cancel()
        remote.retry_task = asyncio.ensure_future(self.retry_offer(remote, seq, sdp))

    async def retry_offer(self, remote, seq, sdp):
        await asyncio.sleep(ANSWER_TIMEOUT)
        for wait in RETRY_WAITS:
            if not remote.outstanding or remote.outstanding[0] != seq:
                return
            await asyncio.sleep(wait)
            if not remote.outstanding or remote.outstanding[0] != seq:
                return
            await self.signal(remote, {"type": "offer", "sdp": sdp, "seq": seq})
            emit("offer_retried", seq=seq)
            await asyncio.sleep(ANSWER_TIMEOUT)
        if remote.outstanding and remote.outstanding[0] == seq:
            remote.outstanding = None
            emit("negotiation_failed", seq=seq, reason="no answer")

    def quic_attribute(self, sdp, kind):
        """Whether the remote description offers QUIC (spec 6: media-level, exactly
        `a=x-fsnode-quic:1`); other forms are reported and count as absent."""
        found, others = quic_link.quic_attribute_of(sdp)
        if others:
            violation("6", f"an {kind} with a malformed or misplaced x-fsnode-quic attribute", lines=others)
        return found

    def quic_identity(self):
        """The certificate and key this peer presents in QUIC's TLS: its identity (spec 6), or
        with --quic-cert-other a fresh one (a peer whose QUIC key is not its SDP fingerprint)."""
        if self.args.quic_cert_other:
            key, cert = new_identity()
            return cert, key
        if self.args.quic_no_cert:
            return None, None
        return self.cert, self.key

    def check_fingerprint(self, conn, sdp, kind):
        ids = sha256_fingerprint_ids(sdp)
        if not ids or any(i != conn.remote_id for i in ids):
            violation("3.4", f"{kind} fingerprint does not match the hello id", ids=ids, hello=conn.remote_id)
            conn.close()
            return False
        return True

    async def on_signal(self, remote, conn, msg):
        kind = msg.get("type")
        if kind == "offer":
            await self.on_offer(remote, conn, msg)
        elif kind == "answer":
            await self.on_answer(remote, conn, msg)
        elif kind == "candidate":
            await self.on_candidate(remote, msg)
        elif kind == "bye":
            emit("bye_in", reason=msg.get("reason"))
            if msg.get("reason") == "unauthorized":
                # Our offer will not be answered: drop it, wait for them to initiate (spec 3.4).
                remote.unauthorized = True
                remote.outstanding = None
                if remote.retry_task:
                    remote.retry_task.cancel()
                if remote.session is not None and not remote.session.open:
                    session, remote.session = remote.session, None
                    await session.close()
        elif kind == "hello":
            violation("3.1", "a second hello on one connection")

    async def on_offer(self, remote, conn, msg):
        sdp, seq = msg.get("sdp"), msg.get("seq")
        if not isinstance(sdp, str) or not isinstance(seq, int) or isinstance(seq, bool):
            violation("3.2", "offer without a string sdp and an integer seq")
            return
        if not self.check_fingerprint(conn, sdp, "offer"):
            return
        remote.offers_in += 1
        remote.unauthorized = False
        creds = ice_credentials(sdp)
        offers_quic = self.quic_attribute(sdp, "offer")
        emit("offer_in", seq=seq, conn=conn.n, ufrag=creds[0], quic=offers_quic)
        if not self.trusted(remote.id):
            conn.send({"type": "bye", "reason": "unauthorized"})
            return
        if seq in remote.answered and remote.answered[seq][0] == sdp:
            await self.signal(remote, {"type": "answer", "sdp": remote.answered[seq][1], "seq": seq})
            emit("answer_repeated", seq=seq)
            return
        if remote.held:
            # Glare on purpose: our offer was made before theirs arrived; send it now.
            held_seq, held_session = remote.held
            remote.held = None
            await self.send_offer(remote, held_seq, held_session, "glare")
        session = remote.session
        collision = remote.making_offer or (
            session is not None and not session.closed and session.pc.signalingState != "stable")
        if collision and not self.polite(remote):
            remote.ignore_offer = True
            emit("offer_ignored", seq=seq)
            return
        remote.ignore_offer = False
        if collision:
            # aiortc has no rollback: dropping our offer's connection is the same on the wire.
            remote.outstanding = None
            if remote.retry_task:
                remote.retry_task.cancel()
            remote.session = None
            await session.close()
            emit("rolled_back", seq=remote.seq)
        same_session = (session is not None and not session.closed and session.remote_creds == creds
                        and remote.session is session)
        if not same_session:
            new = Session(self, remote)
            if remote.session is not None:
                remote.old_sessions.append(remote.session)
            remote.session = new
            session = new
        session.remote_creds = creds
        session.remote_max = max_message_size(sdp)
        # Spec 6: a node that can run QUIC carries the attribute in every answer.
        session.local_quic = self.args.quic
        if session.local_quic and offers_quic and session.quic is None:
            session.use_quic(is_client=False)
        await session.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self.flush_candidates(session)
        await session.pc.setLocalDescription(await session.pc.createAnswer())
        answer = await self.send_description(remote, "answer", seq, session)
        remote.answered[seq] = (sdp, answer)
        emit("answer_sent", seq=seq, new_session=not same_session)

    async def on_answer(self, remote, conn, msg):
        sdp, seq = msg.get("sdp"), msg.get("seq")
        if not isinstance(sdp, str) or not isinstance(seq, int):
            violation("3.2", "answer without a string sdp and an integer seq")
            return
        if not self.check_fingerprint(conn, sdp, "answer"):
            return
        if not remote.outstanding or remote.outstanding[0] != seq:
            emit("answer_ignored", seq=seq, sdp_sha256=hashlib.sha256(sdp.encode()).hexdigest())
            return
        remote.outstanding = None
        remote.ignore_offer = False
        if remote.retry_task:
            remote.retry_task.cancel()
        session = remote.session
        session.remote_creds = ice_credentials(sdp)
        session.remote_max = max_message_size(sdp)
        answers_quic = self.quic_attribute(sdp, "answer")
        if session.local_quic and answers_quic and session.quic is None:
            session.use_quic(is_client=True)
        await session.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        await self.flush_candidates(session)
        emit("answer_in", seq=seq, sdp_sha256=hashlib.sha256(sdp.encode()).hexdigest(), quic=answers_quic)

    async def on_candidate(self, remote, msg):
        cand = msg.get("candidate")
        if not isinstance(cand, str):
            violation("3.2", "candidate message without a candidate string")
            return
        if not isinstance(msg.get("sdpMid"), str) or not isinstance(msg.get("sdpMLineIndex"), int):
            # spec 3.2: MUST carry both; a browser rejects such a candidate, so do we.
            violation("3.2", "candidate without sdpMid/sdpMLineIndex", candidate=cand,
                      sdpMid=msg.get("sdpMid", "<absent>"), sdpMLineIndex=msg.get("sdpMLineIndex", "<absent>"))
            return
        session = remote.session
        if session is None or session.closed:
            return
        if session.pc.remoteDescription is None:
            session.pending = [(t, c) for t, c in session.pending if now() - t < CANDIDATE_TTL]
            if len(session.pending) < CANDIDATE_BUFFER:
                session.pending.append((now(), msg))
            return
        await self.add_candidate(session, msg)

    async def flush_candidates(self, session):
        pending, session.pending = session.pending, []
        for t, msg in pending:
            if now() - t < CANDIDATE_TTL:
                await self.add_candidate(session, msg)

    async def add_candidate(self, session, msg):
        text = msg["candidate"]
        try:
            if text == "":
                await session.pc.addIceCandidate(None)
                return
            body = text.split(":", 1)[1] if text.startswith("candidate:") else text
            candidate = candidate_from_sdp(body)
            if candidate.protocol.lower() != "udp" or candidate.ip.endswith(".local"):
                return  # no TCP candidates, no mDNS resolution
            candidate.sdpMid = msg["sdpMid"]
            candidate.sdpMLineIndex = msg["sdpMLineIndex"]
            await session.pc.addIceCandidate(candidate)
        except Exception as e:
            emit("candidate_error", candidate=text, error=str(e))

    # -- sessions

    def on_channel_open(self, remote, session, send):
        if session is not remote.session:
            return
        session.open = True
        remote.connected = True
        remote.backoff = 0
        role = None if session.quic is None else session.quic.role
        emit("connected", id=remote.id, remote_max=session.remote_max, transport=session.transport,
             quic_role=role)
        for old in remote.old_sessions:
            asyncio.ensure_future(old.close())
        remote.old_sessions = []
        self.transfers.on_open(send, session.remote_max)

    def on_channel_message(self, remote, session, data):
        """One message on the channel (or QUIC's stream 0); False: the channel must close."""
        if session is not remote.session:
            emit("stale_session_message")
            return True
        if isinstance(data, str):
            emit("dc_text_in", text=data[:200])
            return True
        if not self.transfers.on_message(data):
            emit("closing_channel", transport=session.transport)
            return False
        return True

    def on_session_lost(self, remote, session, why):
        if session.closed and session is not remote.session:
            return
        if session in remote.old_sessions:
            remote.old_sessions.remove(session)
            asyncio.ensure_future(session.close())
            return
        if session is not remote.session:
            return
        was_open = session.open
        remote.session = None
        remote.connected = False
        remote.outstanding = None
        self.transfers.on_close()
        asyncio.ensure_future(session.close())
        emit("disconnected", why=why, was_open=was_open)
        delay = RECONNECT_BACKOFF[min(remote.backoff, len(RECONNECT_BACKOFF) - 1)]
        remote.backoff += 1
        if not self.args.no_initiate and not remote.unauthorized and self.trusted(remote.id):
            remote.initiate_task = asyncio.ensure_future(self.initiate_later(remote, "reconnect", delay))

    def current(self):
        for remote in self.remotes.values():
            if remote.connected and remote.session:
                return remote
        return None

    # -- commands from the test

    async def command(self, cmd):
        name = cmd.get("cmd")
        t = self.transfers
        if name == "dial":
            host, port = cmd["addr"].rsplit(":", 1)
            await self.dial(host, int(port))
        elif name == "send":
            t.queue(cmd["path"], cmd["name"], cmd.get("id"), cmd.get("pause_after"), cmd.get("start_extra"),
                    cmd.get("corrupt"))
        elif name == "resume_send":
            t.resume_sending(cmd["id"])
        elif name == "restart":
            # Send `start` again for a transfer we know, finished ones included (spec 4).
            s = t.sends[cmd["id"]]
            s["state"] = "active" if s["state"] in ("queued", "active") else s["state"]
            t.send_start(cmd["id"])
        elif name == "cancel":
            t.cancel(cmd["id"])
        elif name == "hold_progress":
            t.hold_progress = True
        elif name == "release_progress":
            t.release_progress()
        elif name == "cbor":
            # `trailing`: hex bytes appended after the CBOR item (a strictness probe).
            blob = cbor2.dumps(from_json(cmd["msg"])) + bytes.fromhex(cmd.get("trailing", ""))
            ok = t.channel is not None
            if ok:
                t.channel[0](blob)
            emit("sent", ok=ok)
        elif name == "raw":
            ok = t.channel is not None
            if ok:
                t.channel[0](bytes.fromhex(cmd["hex"]))
            emit("sent", ok=ok)
        elif name == "text":
            remote = self.current()
            if remote is not None and remote.session.quic is not None:
                emit("sent", ok=False, why="QUIC's stream 0 has no text messages")
                return
            ok = t.channel is not None
            if ok:
                t.channel[0](cmd["text"])
            emit("sent", ok=ok)
        elif name == "frame":
            # QUIC only: bytes on stream 0 as given, no length prefix added (framing probes:
            # a prefix announcing more than the limit, a frame split across writes); `stream`
            # sends on another stream (one this side may open), `fin` ends the stream.
            remote = self.current()
            link = remote.session.quic if remote is not None else None
            if link is None:
                emit("sent", ok=False, why="no QUIC session")
                return
            link.send_raw(bytes.fromhex(cmd["hex"]), stream_id=cmd.get("stream", 0),
                          end_stream=cmd.get("fin", False))
            emit("sent", ok=True)
        elif name == "oversize":
            # One valid CBOR map of an unknown kind (ignored at any legal size), `extra` bytes
            # over the receiver's advertised max-message-size: only its size is wrong.
            remote = self.current()
            limit = remote.session.remote_max if remote else 0
            blob = padded_message((limit or LOCAL_MAX_MESSAGE) + cmd.get("extra", 1))
            if remote.session.quic is not None:
                remote.session.quic.send(blob)  # nothing on this side limits what it sends
            else:
                sctp = remote.session.pc.sctp
                saved = sctp._remote_max_message_size
                sctp._remote_max_message_size = 0  # aiortc would refuse: that is the point
                try:
                    remote.session.dc.send(blob)
                finally:
                    sctp._remote_max_message_size = saved
            emit("sent", ok=True, size=len(blob), limit=limit)
        elif name == "repeat_offer":
            # Our newest offer again, same seq and SDP (as a retry after a lost answer would be).
            remote = next((r for r in self.remotes.values() if r.last_offer), None)
            seq, sdp = remote.last_offer
            await self.signal(remote, {"type": "offer", "sdp": sdp, "seq": seq})
            emit("offer_repeated", seq=seq)
        elif name == "status":
            remote = self.current()
            emit("status", connected=remote is not None,
                 remote_max=remote.session.remote_max if remote else None,
                 transport=remote.session.transport if remote else None)
        elif name == "quit":
            raise SystemExit(0)
        else:
            emit("unknown_command", cmd=name)


def padded_message(total):
    """A CBOR map `{"t": "x-padding", "pad": <bytes>}` of exactly `total` bytes."""
    for pad in range(max(0, total - 40), total):
        blob = cbor2.dumps({"t": "x-padding", "pad": b"\x00" * pad})
        if len(blob) == total:
            return blob
    raise ValueError(f"cannot pad a message to {total} bytes")


def check_namespace(bind):
    """Refuse to run anywhere but in a test namespace (only lo and 10.77.x.x addresses)."""
    addresses = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                addresses.append(ipaddress.ip_address(ip.ip))
    if not addresses or any(a not in TEST_NET for a in addresses):
        raise SystemExit(f"refusing to run outside a test namespace (addresses {addresses})")
    if ipaddress.ip_address(bind) not in addresses:
        raise SystemExit(f"--bind {bind} is not an address of this host ({addresses})")


async def main(args):
    check_namespace(args.bind)
    # ICE host candidates on the namespace's address only; RTCConfiguration(iceServers=[])
    # keeps aiortc from its default STUN server.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.bind]
    peer = Peer(args)
    server = None
    if args.port:
        server = await asyncio.start_server(peer.serve, args.bind, args.port, limit=MAX_LINE + 1)
    emit("ready", id=peer.id, port=args.port)
    for addr in args.dial:
        host, port = addr.rsplit(":", 1)
        await peer.dial(host, int(port))
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            cmd = json.loads(line)
            await peer.command(cmd)
        except SystemExit:
            break
        except Exception as e:
            emit("command_error", error=f"{type(e).__name__}: {e}")
    if server:
        server.close()
    for remote in peer.remotes.values():
        if remote.session:
            await remote.session.close()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--state", required=True, help="directory for identity.pem and transfer state")
    p.add_argument("--receive-dir", required=True)
    p.add_argument("--bind", required=True, help="this namespace's LAN address")
    p.add_argument("--port", type=int, default=0, help="signaling port to listen on (0: none)")
    p.add_argument("--name", default="aiortc-peer")
    p.add_argument("--dial", action="append", default=[], help="HOST:PORT to dial at start")
    p.add_argument("--trust", action="append", default=[], help="device ids to trust (none: all)")
    p.add_argument("--window", type=int, default=WINDOW, help="window granted in accept")
    p.add_argument("--id-below", help="a new identity's id must sort before this id")
    p.add_argument("--id-above", help="a new identity's id must sort after this id")
    p.add_argument("--no-initiate", action="store_true", help="never offer first")
    p.add_argument("--no-trickle", action="store_true", help="candidates inside the SDP only")
    p.add_argument("--hold-first-offer", action="store_true",
                   help="prepare the first offer at once, send it when the remote's offer arrives (glare)")
    p.add_argument("--quic", action="store_true",
                   help="offer and answer a=x-fsnode-quic:1; run QUIC when both descriptions carry it (spec 6)")
    p.add_argument("--quic-drop", action="store_true",
                   help="with --quic: drop every QUIC datagram both ways (a broken QUIC path; the other "
                        "side's 5 s handshake timer decides)")
    p.add_argument("--quic-cert-other", action="store_true",
                   help="with --quic: present another key's certificate in QUIC's TLS than the SDP names")
    p.add_argument("--quic-no-cert", action="store_true",
                   help="with --quic: as QUIC client, present no certificate (an empty Certificate message)")
    p.add_argument("--quic-no-keepalive", action="store_true",
                   help="with --quic: send no PINGs on an idle connection (whether the other side's keep it up)")
    args = p.parse_args()
    if (args.quic_drop or args.quic_cert_other or args.quic_no_cert or args.quic_no_keepalive) \
            and not args.quic:
        p.error("--quic-drop, --quic-cert-other, --quic-no-cert and --quic-no-keepalive need --quic")
    return args


if __name__ == "__main__":
    import logging, os as _os
    if _os.environ.get('PEER_DEBUG_LOG'):
        logging.basicConfig(level=logging.DEBUG, filename=_os.environ['PEER_DEBUG_LOG'])
    asyncio.run(main(parse_args()))
