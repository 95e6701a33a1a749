//! The data-channel messages of spec section 4 and their CBOR form.
//!
//! Every message is one CBOR map with text keys; `t` names the kind; `id` is a 16-byte byte string,
//! `sha256` a 32-byte byte string, `data` a byte string. Optional keys are omitted when absent.
//!
//! Encoding is written by hand (definite lengths, shortest integer forms, `t` first), so a chunk's
//! data is copied once, into the output. Decoding goes through serde over `ciborium` with a
//! visitor that keeps only the known keys and skips everything else without building it, so the
//! memory a message can make us allocate is bounded by its length, which is checked first.
//! Decoding never panics: any bytes give `Ok` or `Err`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::core::TransferId;

/// Smallest `chunk_size` (spec 4).
pub const MIN_CHUNK: u32 = 1024;
/// Largest `chunk_size` (spec 4).
pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;
/// The most `chunk_size_for` chooses (spec 4: 256 KiB).
pub const PREFERRED_MAX_CHUNK: u32 = 256 * 1024;
/// `a=max-message-size` when the SDP has none (spec 4).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 64 * 1024;
/// Room left in a message for everything but a chunk's data (spec 4: 1 KiB).
pub const MESSAGE_OVERHEAD: u64 = 1024;
/// The longest message `decode` takes: the largest legal chunk plus its overhead. Callers that
/// advertised a smaller `max-message-size` pass that to [`decode_within`].
pub const MAX_MESSAGE_LEN: usize = MAX_CHUNK as usize + MESSAGE_OVERHEAD as usize;
/// Nesting the decoder follows inside ignored values before giving up (messages are flat maps).
const RECURSION_LIMIT: usize = 16;

/// One data-channel message (spec 4's table).
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    Start {
        id: TransferId,
        name: String,
        size: u64,
        chunk_size: u32,
        chunks: u64,
        mime: String,
        mode: Option<u32>,
        mtime: Option<i64>,
        start_chunk: u64,
    },
    Accept {
        id: TransferId,
        start_chunk: u64,
        window: u32,
    },
    Reject {
        id: TransferId,
        reason: String,
        /// Why, for programs (spec 4); `None` from a peer that sends none, or a code this
        /// node does not know (forward compatibility).
        code: Option<RejectCode>,
    },
    Chunk {
        id: TransferId,
        index: u64,
        sha256: [u8; 32],
        data: Vec<u8>,
    },
    Progress {
        id: TransferId,
        next: u64,
    },
    Resend {
        id: TransferId,
        index: u64,
    },
    End {
        id: TransferId,
        sha256: [u8; 32],
    },
    Done {
        id: TransferId,
        ok: bool,
        reason: Option<String>,
    },
    Cancel {
        id: TransferId,
        reason: String,
    },
}

impl Message {
    /// The transfer the message is about (the caller routes on it).
    pub fn id(&self) -> TransferId {
        match self {
            Message::Start { id, .. }
            | Message::Accept { id, .. }
            | Message::Reject { id, .. }
            | Message::Chunk { id, .. }
            | Message::Progress { id, .. }
            | Message::Resend { id, .. }
            | Message::End { id, .. }
            | Message::Done { id, .. }
            | Message::Cancel { id, .. } => *id,
        }
    }

    /// The `t` key.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Start { .. } => "start",
            Message::Accept { .. } => "accept",
            Message::Reject { .. } => "reject",
            Message::Chunk { .. } => "chunk",
            Message::Progress { .. } => "progress",
            Message::Resend { .. } => "resend",
            Message::End { .. } => "end",
            Message::Done { .. } => "done",
            Message::Cancel { .. } => "cancel",
        }
    }
}

// Chunk data can be megabytes: show its length and hashes in hex, never the bytes.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Chunk {
                id,
                index,
                sha256,
                data,
            } => f
                .debug_struct("Chunk")
                .field("id", id)
                .field("index", index)
                .field("sha256", &hex::encode(sha256))
                .field("len", &data.len())
                .finish(),
            Message::End { id, sha256 } => f
                .debug_struct("End")
                .field("id", id)
                .field("sha256", &hex::encode(sha256))
                .finish(),
            Message::Start {
                id,
                name,
                size,
                chunk_size,
                chunks,
                mime,
                mode,
                mtime,
                start_chunk,
            } => f
                .debug_struct("Start")
                .field("id", id)
                .field("name", name)
                .field("size", size)
                .field("chunk_size", chunk_size)
                .field("chunks", chunks)
                .field("mime", mime)
                .field("mode", mode)
                .field("mtime", mtime)
                .field("start_chunk", start_chunk)
                .finish(),
            Message::Accept {
                id,
                start_chunk,
                window,
            } => f
                .debug_struct("Accept")
                .field("id", id)
                .field("start_chunk", start_chunk)
                .field("window", window)
                .finish(),
            Message::Reject { id, reason, code } => f
                .debug_struct("Reject")
                .field("id", id)
                .field("reason", reason)
                .field("code", code)
                .finish(),
            Message::Progress { id, next } => f
                .debug_struct("Progress")
                .field("id", id)
                .field("next", next)
                .finish(),
            Message::Resend { id, index } => f
                .debug_struct("Resend")
                .field("id", id)
                .field("index", index)
                .finish(),
            Message::Done { id, ok, reason } => f
                .debug_struct("Done")
                .field("id", id)
                .field("ok", ok)
                .field("reason", reason)
                .finish(),
            Message::Cancel { id, reason } => f
                .debug_struct("Cancel")
                .field("id", id)
                .field("reason", reason)
                .finish(),
        }
    }
}

/// Why bytes are not a message. Every one of these closes the data channel (spec 4).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not valid CBOR: {0}")]
    NotCbor(String),
    #[error("the CBOR item is not a map")]
    NotAMap,
    #[error("`{kind}` message without `{key}`")]
    Missing {
        kind: &'static str,
        key: &'static str,
    },
    #[error("`{kind}` message: bad `{key}`: {reason}")]
    BadValue {
        kind: &'static str,
        key: &'static str,
        reason: &'static str,
    },
    #[error("message of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// A known kind whose `id` is readable but another key is missing or mistyped: answered
    /// with `reject` `code: "invalid"` rather than closing the channel (spec 4).
    #[error("{error}")]
    Invalid {
        id: TransferId,
        error: Box<WireError>,
    },
}

impl WireError {
    /// The transfer a malformed message names, when its `id` could be read.
    pub fn readable_id(&self) -> Option<TransferId> {
        match self {
            WireError::Invalid { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// What is wrong, without the transfer it concerns.
    pub fn into_cause(self) -> WireError {
        match self {
            WireError::Invalid { error, .. } => *error,
            other => other,
        }
    }
}

/// The `code` of a `reject` (spec 4). `reason` is for humans and never parsed; programs
/// (the sender's pause on a full disk) look at this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The name is refused (its form, or a symbolic link on the way).
    Name,
    /// `size`, `chunk_size` and `chunks` disagree, or are out of bounds.
    Size,
    /// A resumed `start` differs from the first.
    Mismatch,
    /// The receiver cancelled this transfer.
    Cancelled,
    /// The receiver finished this transfer otherwise (failed or refused before).
    Finished,
    /// The receiver's policy declined the file.
    Policy,
    /// The receiver's disk is full: the sender pauses and asks again later.
    NoSpace,
    /// The message was malformed (a key missing or of the wrong type).
    Invalid,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Name => "name",
            RejectCode::Size => "size",
            RejectCode::Mismatch => "mismatch",
            RejectCode::Cancelled => "cancelled",
            RejectCode::Finished => "finished",
            RejectCode::Policy => "policy",
            RejectCode::NoSpace => "no_space",
            RejectCode::Invalid => "invalid",
        }
    }

    /// The code a wire string names; `None` for one this node does not know.
    pub fn from_wire(code: &str) -> Option<Self> {
        [
            RejectCode::Name,
            RejectCode::Size,
            RejectCode::Mismatch,
            RejectCode::Cancelled,
            RejectCode::Finished,
            RejectCode::Policy,
            RejectCode::NoSpace,
            RejectCode::Invalid,
        ]
        .into_iter()
        .find(|c| c.as_str() == code)
    }
}

/// The `chunk_size` a sender uses towards a peer whose SDP advertised `max_message_size`
/// (`None`: absent, meaning 64 KiB; `Some(0)`: no limit): the largest power of two
/// ≤ min(256 KiB, max-message-size − 1 KiB), and at least 1 KiB (spec 4).
pub fn chunk_size_for(max_message_size: Option<u64>) -> u32 {
    let room = match max_message_size {
        None => DEFAULT_MAX_MESSAGE_SIZE - MESSAGE_OVERHEAD,
        Some(0) => u64::from(PREFERRED_MAX_CHUNK),
        Some(size) => size.saturating_sub(MESSAGE_OVERHEAD),
    }
    .min(u64::from(PREFERRED_MAX_CHUNK));
    if room < u64::from(MIN_CHUNK) {
        return MIN_CHUNK;
    }
    let power = 1u64 << (63 - room.leading_zeros());
    // `room` ≤ 256 KiB, so the power of two fits.
    u32::try_from(power).unwrap_or(PREFERRED_MAX_CHUNK)
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// The message as one CBOR map (spec 4).
pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = Encoder(Vec::with_capacity(match message {
        Message::Chunk { data, .. } => data.len() + 96,
        _ => 128,
    }));
    match message {
        Message::Start {
            id,
            name,
            size,
            chunk_size,
            chunks,
            mime,
            mode,
            mtime,
            start_chunk,
        } => {
            out.map(8 + usize::from(mode.is_some()) + usize::from(mtime.is_some()));
            out.kind("start");
            out.id(id);
            out.key("name").text(name);
            out.key("size").uint(*size);
            out.key("chunk_size").uint(u64::from(*chunk_size));
            out.key("chunks").uint(*chunks);
            out.key("mime").text(mime);
            if let Some(mode) = mode {
                out.key("mode").uint(u64::from(*mode));
            }
            if let Some(mtime) = mtime {
                out.key("mtime").int(*mtime);
            }
            out.key("start_chunk").uint(*start_chunk);
        }
        Message::Accept {
            id,
            start_chunk,
            window,
        } => {
            out.map(4);
            out.kind("accept");
            out.id(id);
            out.key("start_chunk").uint(*start_chunk);
            out.key("window").uint(u64::from(*window));
        }
        Message::Reject { id, reason, code } => {
            out.map(3 + usize::from(code.is_some()));
            out.kind("reject");
            out.id(id);
            out.key("reason").text(reason);
            if let Some(code) = code {
                out.key("code").text(code.as_str());
            }
        }
        Message::Chunk {
            id,
            index,
            sha256,
            data,
        } => {
            out.map(5);
            out.kind("chunk");
            out.id(id);
            out.key("index").uint(*index);
            out.key("sha256").bytes(sha256);
            out.key("data").bytes(data);
        }
        Message::Progress { id, next } => {
            out.map(3);
            out.kind("progress");
            out.id(id);
            out.key("next").uint(*next);
        }
        Message::Resend { id, index } => {
            out.map(3);
            out.kind("resend");
            out.id(id);
            out.key("index").uint(*index);
        }
        Message::End { id, sha256 } => {
            out.map(3);
            out.kind("end");
            out.id(id);
            out.key("sha256").bytes(sha256);
        }
        Message::Done { id, ok, reason } => {
            out.map(3 + usize::from(reason.is_some()));
            out.kind("done");
            out.id(id);
            out.key("ok").bool(*ok);
            if let Some(reason) = reason {
                out.key("reason").text(reason);
            }
        }
        Message::Cancel { id, reason } => {
            out.map(3);
            out.kind("cancel");
            out.id(id);
            out.key("reason").text(reason);
        }
    }
    out.0
}

struct Encoder(Vec<u8>);

impl Encoder {
    fn head(&mut self, major: u8, n: u64) -> &mut Self {
        let major = major << 5;
        if n < 24 {
            self.0.push(major | n as u8);
        } else if let Ok(n) = u8::try_from(n) {
            self.0.extend_from_slice(&[major | 24, n]);
        } else if let Ok(n) = u16::try_from(n) {
            self.0.push(major | 25);
            self.0.extend_from_slice(&n.to_be_bytes());
        } else if let Ok(n) = u32::try_from(n) {
            self.0.push(major | 26);
            self.0.extend_from_slice(&n.to_be_bytes());
        } else {
            self.0.push(major | 27);
            self.0.extend_from_slice(&n.to_be_bytes());
        }
        self
    }

    fn map(&mut self, pairs: usize) {
        self.head(5, pairs as u64);
    }

    fn uint(&mut self, n: u64) {
        self.head(0, n);
    }

    fn int(&mut self, n: i64) {
        if n >= 0 {
            self.head(0, n.unsigned_abs());
        } else {
            // CBOR negative integers carry −1 − n.
            self.head(1, !(n as u64));
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.head(2, bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn text(&mut self, text: &str) {
        self.head(3, text.len() as u64);
        self.0.extend_from_slice(text.as_bytes());
    }

    fn bool(&mut self, value: bool) {
        self.0.push(if value { 0xf5 } else { 0xf4 });
    }

    fn key(&mut self, key: &str) -> &mut Self {
        self.text(key);
        self
    }

    fn kind(&mut self, kind: &str) {
        self.key("t").text(kind);
    }

    fn id(&mut self, id: &TransferId) {
        self.key("id").bytes(&id.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// One message, limited to [`MAX_MESSAGE_LEN`] bytes. `Ok(None)`: a well-formed map whose `t`
/// this version does not know (ignored, for forward compatibility). Unknown keys are ignored.
pub fn decode(bytes: &[u8]) -> Result<Option<Message>, WireError> {
    decode_within(bytes, MAX_MESSAGE_LEN)
}

/// [`decode`] with the caller's limit, typically the `max-message-size` it advertised
/// (0, "no limit" in SDP, means [`MAX_MESSAGE_LEN`]). Longer input is refused before any
/// decoding, so decoding allocates at most about `max_len` bytes.
pub fn decode_within(bytes: &[u8], max_len: usize) -> Result<Option<Message>, WireError> {
    let max = if max_len == 0 {
        MAX_MESSAGE_LEN
    } else {
        max_len
    };
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let Some(&first) = bytes.first() else {
        return Err(WireError::NotCbor("empty message".into()));
    };
    if first >> 5 != 5 {
        // Tell "valid CBOR, but not a map" from "not CBOR" by skipping the item.
        let mut rest = bytes;
        return match ciborium::de::from_reader_with_recursion_limit::<IgnoredAny, _>(
            &mut rest,
            RECURSION_LIMIT,
        ) {
            Ok(_) if rest.is_empty() => Err(WireError::NotAMap),
            Ok(_) => Err(WireError::NotCbor("bytes after the CBOR item".into())),
            Err(e) => Err(WireError::NotCbor(e.to_string())),
        };
    }
    let mut rest = bytes;
    let raw: Raw = ciborium::de::from_reader_with_recursion_limit(&mut rest, RECURSION_LIMIT)
        .map_err(|e| WireError::NotCbor(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::NotCbor("bytes after the CBOR map".into()));
    }
    raw.into_message()
}

/// A value of a known key, kept only as far as the message needs it.
#[derive(Debug)]
enum Field {
    Uint(u64),
    /// A negative integer that fits an i64.
    Neg(i64),
    Bytes(Vec<u8>),
    Text(String),
    Bool(bool),
    Null,
    /// Anything else (floats, big integers, arrays, maps, tags), skipped.
    Other,
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CBOR item")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Field, E> {
        Ok(Field::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field, E> {
        Ok(Field::Uint(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field, E> {
        Ok(match u64::try_from(v) {
            Ok(v) => Field::Uint(v),
            Err(_) => Field::Neg(v),
        })
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Field, E> {
        Ok(u64::try_from(v).map_or(Field::Other, Field::Uint))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Field, E> {
        Ok(match (u64::try_from(v), i64::try_from(v)) {
            (Ok(u), _) => Field::Uint(u),
            (_, Ok(i)) => Field::Neg(i),
            _ => Field::Other,
        })
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Field, E> {
        Ok(Field::Other)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        Ok(Field::Text(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Field, E> {
        Ok(Field::Text(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Field, E> {
        Ok(Field::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Field, E> {
        Ok(Field::Bytes(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<Field, E> {
        Ok(Field::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Field, E> {
        Ok(Field::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Field, A::Error> {
        // ciborium hands tags over as enums; skip the tagged item.
        IgnoredAny.visit_enum(data)?;
        Ok(Field::Other)
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

const KEYS: [&str; 18] = [
    "t",
    "id",
    "name",
    "size",
    "chunk_size",
    "chunks",
    "mime",
    "mode",
    "mtime",
    "start_chunk",
    "window",
    "reason",
    "index",
    "sha256",
    "data",
    "next",
    "ok",
    "code",
];

/// A map key: one of `KEYS` (by position) or something to skip.
enum Key {
    Known(usize),
    Unknown,
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(KEYS
            .iter()
            .position(|k| *k == v)
            .map_or(Key::Unknown, Key::Known))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Key, E> {
        self.visit_str(&v)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Key, E> {
        Ok(Key::Unknown)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Key, E> {
        Ok(Key::Unknown)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Key, E> {
        Ok(Key::Unknown)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Key, E> {
        Ok(Key::Unknown)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Key, E> {
        Ok(Key::Unknown)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Key, E> {
        Ok(Key::Unknown)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Key, E> {
        Ok(Key::Unknown)
    }
    fn visit_none<E: de::Error>(self) -> Result<Key, E> {
        Ok(Key::Unknown)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
        Ok(Key::Unknown)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Key::Unknown)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Key::Unknown)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Key, A::Error> {
        IgnoredAny.visit_enum(data)?;
        Ok(Key::Unknown)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

/// The known keys of one map, before the kind is known.
struct Raw {
    fields: [Option<Field>; KEYS.len()],
    /// A known key that appeared twice (a map with duplicate keys is not valid, RFC 8949 5.6).
    duplicate: Option<&'static str>,
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CBOR map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut raw = Raw {
            fields: Default::default(),
            duplicate: None,
        };
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Known(at) => {
                    let value = map.next_value::<Field>()?;
                    if raw.fields[at].replace(value).is_some() {
                        raw.duplicate.get_or_insert(KEYS[at]);
                    }
                }
                Key::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RawVisitor)
    }
}

/// Reads typed fields out of a `Raw` for one kind, with errors naming kind and key.
struct Fields {
    kind: &'static str,
    raw: Raw,
}

impl Fields {
    fn take(&mut self, key: &'static str) -> Option<Field> {
        let at = KEYS.iter().position(|k| *k == key)?;
        match self.raw.fields[at].take() {
            None | Some(Field::Null) => None,
            some => some,
        }
    }

    fn bad(&self, key: &'static str, reason: &'static str) -> WireError {
        WireError::BadValue {
            kind: self.kind,
            key,
            reason,
        }
    }

    fn missing(&self, key: &'static str) -> WireError {
        WireError::Missing {
            kind: self.kind,
            key,
        }
    }

    fn opt_u64(&mut self, key: &'static str) -> Result<Option<u64>, WireError> {
        match self.take(key) {
            None => Ok(None),
            Some(Field::Uint(n)) => Ok(Some(n)),
            Some(_) => Err(self.bad(key, "expected an unsigned integer")),
        }
    }

    fn u64(&mut self, key: &'static str) -> Result<u64, WireError> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_u32(&mut self, key: &'static str) -> Result<Option<u32>, WireError> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| self.bad(key, "does not fit 32 bits")),
        }
    }

    fn u32(&mut self, key: &'static str) -> Result<u32, WireError> {
        self.opt_u32(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_i64(&mut self, key: &'static str) -> Result<Option<i64>, WireError> {
        match self.take(key) {
            None => Ok(None),
            Some(Field::Neg(n)) => Ok(Some(n)),
            Some(Field::Uint(n)) => i64::try_from(n)
                .map(Some)
                .map_err(|_| self.bad(key, "does not fit a signed 64-bit integer")),
            Some(_) => Err(self.bad(key, "expected an integer")),
        }
    }

    fn opt_text(&mut self, key: &'static str) -> Result<Option<String>, WireError> {
        match self.take(key) {
            None => Ok(None),
            Some(Field::Text(text)) => Ok(Some(text)),
            Some(_) => Err(self.bad(key, "expected a text string")),
        }
    }

    fn text(&mut self, key: &'static str) -> Result<String, WireError> {
        self.opt_text(key)?.ok_or_else(|| self.missing(key))
    }

    fn bytes(&mut self, key: &'static str) -> Result<Vec<u8>, WireError> {
        match self.take(key) {
            None => Err(self.missing(key)),
            Some(Field::Bytes(bytes)) => Ok(bytes),
            Some(_) => Err(self.bad(key, "expected a byte string")),
        }
    }

    fn bool(&mut self, key: &'static str) -> Result<bool, WireError> {
        match self.take(key) {
            None => Err(self.missing(key)),
            Some(Field::Bool(b)) => Ok(b),
            Some(_) => Err(self.bad(key, "expected a boolean")),
        }
    }

    fn id(&mut self) -> Result<TransferId, WireError> {
        let bytes = self.bytes("id")?;
        bytes
            .try_into()
            .map(TransferId)
            .map_err(|_| self.bad("id", "expected 16 bytes"))
    }

    fn sha256(&mut self) -> Result<[u8; 32], WireError> {
        let bytes = self.bytes("sha256")?;
        bytes
            .try_into()
            .map_err(|_| self.bad("sha256", "expected 32 bytes"))
    }
}

impl Raw {
    fn into_message(mut self) -> Result<Option<Message>, WireError> {
        let t = match self.fields[0].take() {
            None | Some(Field::Null) => {
                return Err(WireError::Missing {
                    kind: "message",
                    key: "t",
                });
            }
            Some(Field::Text(t)) => t,
            Some(_) => {
                return Err(WireError::BadValue {
                    kind: "message",
                    key: "t",
                    reason: "expected a text string",
                });
            }
        };
        const KINDS: [&str; 9] = [
            "start", "accept", "reject", "chunk", "progress", "resend", "end", "done", "cancel",
        ];
        let Some(kind) = KINDS.iter().find(|k| **k == t).copied() else {
            return Ok(None);
        };
        if let Some(key) = self.duplicate {
            return Err(WireError::BadValue {
                kind,
                key,
                reason: "the key appears twice",
            });
        }
        let mut f = Fields { kind, raw: self };
        let id = f.id()?;
        f.message(id).map(Some).map_err(|error| WireError::Invalid {
            id,
            error: Box::new(error),
        })
    }
}

impl Fields {
    /// The message of `self.kind` about transfer `id`, from the remaining keys.
    fn message(&mut self, id: TransferId) -> Result<Message, WireError> {
        let f = self;
        let message = match f.kind {
            "start" => Message::Start {
                id,
                name: f.text("name")?,
                size: f.u64("size")?,
                chunk_size: f.u32("chunk_size")?,
                chunks: f.u64("chunks")?,
                mime: f.text("mime")?,
                mode: f.opt_u32("mode")?,
                mtime: f.opt_i64("mtime")?,
                start_chunk: f.u64("start_chunk")?,
            },
            "accept" => Message::Accept {
                id,
                start_chunk: f.u64("start_chunk")?,
                window: f.u32("window")?,
            },
            "reject" => Message::Reject {
                id,
                reason: f.text("reason")?,
                code: f
                    .opt_text("code")?
                    .as_deref()
                    .and_then(RejectCode::from_wire),
            },
            "chunk" => Message::Chunk {
                id,
                index: f.u64("index")?,
                sha256: f.sha256()?,
                data: f.bytes("data")?,
            },
            "progress" => Message::Progress {
                id,
                next: f.u64("next")?,
            },
            "resend" => Message::Resend {
                id,
                index: f.u64("index")?,
            },
            "end" => Message::End {
                id,
                sha256: f.sha256()?,
            },
            "done" => Message::Done {
                id,
                ok: f.bool("ok")?,
                reason: f.opt_text("reason")?,
            },
            _ => Message::Cancel {
                id,
                reason: f.text("reason")?,
            },
        };
        Ok(message)
    }
}

#[cfg(test)]
mod tests;
