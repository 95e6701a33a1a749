use ciborium::Value;
use proptest::prelude::*;

use super::*;

const ID: TransferId = TransferId([0x5a; 16]);

fn every_kind() -> Vec<Message> {
    vec![
        Message::Start {
            id: ID,
            name: "photos/cat.jpg".into(),
            size: 1_000_000,
            chunk_size: 65536,
            chunks: 16,
            mime: "image/jpeg".into(),
            mode: Some(0o644),
            mtime: Some(1_700_000_000),
            start_chunk: 3,
        },
        Message::Start {
            id: ID,
            name: "empty".into(),
            size: 0,
            chunk_size: 1024,
            chunks: 0,
            mime: "application/octet-stream".into(),
            mode: None,
            mtime: Some(-5),
            start_chunk: 0,
        },
        Message::Accept {
            id: ID,
            start_chunk: 7,
            window: 16,
        },
        Message::Reject {
            id: ID,
            reason: "mismatch".into(),
            code: Some(RejectCode::Mismatch),
        },
        Message::Chunk {
            id: ID,
            index: u64::MAX,
            sha256: [7; 32],
            data: (0..5000u32).map(|i| i as u8).collect(),
        },
        Message::Chunk {
            id: ID,
            index: 0,
            sha256: [0; 32],
            data: Vec::new(),
        },
        Message::Progress { id: ID, next: 300 },
        Message::Resend {
            id: ID,
            index: 70000,
        },
        Message::End {
            id: ID,
            sha256: [0xee; 32],
        },
        Message::Done {
            id: ID,
            ok: true,
            reason: None,
        },
        Message::Done {
            id: ID,
            ok: false,
            reason: Some("cancelled".into()),
        },
        Message::Cancel {
            id: ID,
            reason: "operator".into(),
        },
        Message::Reject {
            id: ID,
            reason: "a peer that sends no code".into(),
            code: None,
        },
    ]
}

fn value_of(bytes: &[u8]) -> Value {
    ciborium::from_reader(bytes).unwrap()
}

fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

fn map_of(value: &Value) -> Vec<(String, Value)> {
    value
        .as_map()
        .expect("a map")
        .iter()
        .map(|(k, v)| (k.as_text().expect("text keys").to_owned(), v.clone()))
        .collect()
}

fn get<'a>(map: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Encodes `message`, lets `edit` change the map, and decodes the result.
fn decode_edited(
    message: &Message,
    edit: impl FnOnce(&mut Vec<(Value, Value)>),
) -> Result<Option<Message>, WireError> {
    let mut value = value_of(&encode(message));
    let Value::Map(entries) = &mut value else {
        panic!("not a map")
    };
    edit(entries);
    decode(&to_bytes(&value))
}

fn set(entries: &mut Vec<(Value, Value)>, key: &str, value: Value) {
    entries.retain(|(k, _)| k.as_text() != Some(key));
    entries.push((Value::Text(key.into()), value));
}

fn remove(entries: &mut Vec<(Value, Value)>, key: &str) {
    entries.retain(|(k, _)| k.as_text() != Some(key));
}

#[test]
fn every_kind_round_trips() {
    for message in every_kind() {
        let bytes = encode(&message);
        assert_eq!(decode(&bytes), Ok(Some(message.clone())), "{message:?}");
    }
}

#[test]
fn keys_are_the_spec_names_and_t_is_the_kind() {
    let expected: [(&str, &[&str]); 13] = [
        (
            "start",
            &[
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
            ],
        ),
        (
            "start",
            &[
                "t",
                "id",
                "name",
                "size",
                "chunk_size",
                "chunks",
                "mime",
                "mtime",
                "start_chunk",
            ],
        ),
        ("accept", &["t", "id", "start_chunk", "window"]),
        ("reject", &["t", "id", "reason", "code"]),
        ("chunk", &["t", "id", "index", "sha256", "data"]),
        ("chunk", &["t", "id", "index", "sha256", "data"]),
        ("progress", &["t", "id", "next"]),
        ("resend", &["t", "id", "index"]),
        ("end", &["t", "id", "sha256"]),
        ("done", &["t", "id", "ok"]),
        ("done", &["t", "id", "ok", "reason"]),
        ("cancel", &["t", "id", "reason"]),
        ("reject", &["t", "id", "reason"]),
    ];
    for (message, (kind, keys)) in every_kind().iter().zip(expected) {
        let map = map_of(&value_of(&encode(message)));
        let names: Vec<&str> = map.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, keys, "{kind}");
        assert_eq!(get(&map, "t"), Some(&Value::Text(kind.into())));
        assert_eq!(message.kind(), kind);
        assert_eq!(message.id(), ID);
        // The id is a 16-byte byte string.
        assert_eq!(get(&map, "id"), Some(&Value::Bytes(ID.0.to_vec())));
    }
}

#[test]
fn value_types_follow_the_table() {
    let all = every_kind();
    let start = map_of(&value_of(&encode(&all[0])));
    assert_eq!(get(&start, "size"), Some(&Value::Integer(1_000_000.into())));
    assert_eq!(get(&start, "mode"), Some(&Value::Integer(0o644.into())));
    assert_eq!(
        get(&start, "name"),
        Some(&Value::Text("photos/cat.jpg".into()))
    );
    let negative = map_of(&value_of(&encode(&all[1])));
    assert_eq!(get(&negative, "mtime"), Some(&Value::Integer((-5).into())));
    let chunk = map_of(&value_of(&encode(&all[4])));
    assert_eq!(get(&chunk, "sha256"), Some(&Value::Bytes(vec![7; 32])));
    assert!(matches!(get(&chunk, "data"), Some(Value::Bytes(d)) if d.len() == 5000));
    assert_eq!(get(&chunk, "index"), Some(&Value::Integer(u64::MAX.into())));
    let done = map_of(&value_of(&encode(&all[9])));
    assert_eq!(get(&done, "ok"), Some(&Value::Bool(true)));
}

#[test]
fn integers_use_their_shortest_form() {
    // {"t": "progress", "id": h'5a…', "next": 23} with 23 in the initial byte.
    let bytes = encode(&Message::Progress { id: ID, next: 23 });
    assert_eq!(bytes[0], 0xa3, "map of 3");
    assert_eq!(*bytes.last().unwrap(), 0x17);
    for next in [
        24u64,
        255,
        256,
        65535,
        65536,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
    ] {
        let bytes = encode(&Message::Progress { id: ID, next });
        let mut canonical = Vec::new();
        ciborium::into_writer(&value_of(&bytes), &mut canonical).unwrap();
        assert_eq!(bytes, canonical, "next = {next}");
    }
}

#[test]
fn decoding_a_message_written_by_another_encoder() {
    // Keys in another order, plus unknown keys of every shape: ignored.
    let value = Value::Map(vec![
        (Value::Text("window".into()), Value::Integer(8.into())),
        (
            Value::Text("future".into()),
            Value::Map(vec![(Value::Integer(1.into()), Value::Array(vec![]))]),
        ),
        (Value::Integer(9.into()), Value::Text("integer key".into())),
        (
            Value::Text("tagged".into()),
            Value::Tag(42, Box::new(Value::Bytes(vec![1, 2]))),
        ),
        (Value::Text("id".into()), Value::Bytes(ID.0.to_vec())),
        (Value::Text("start_chunk".into()), Value::Integer(2.into())),
        (Value::Text("t".into()), Value::Text("accept".into())),
    ]);
    assert_eq!(
        decode(&to_bytes(&value)),
        Ok(Some(Message::Accept {
            id: ID,
            start_chunk: 2,
            window: 8
        }))
    );
}

#[test]
fn indefinite_length_items_are_accepted() {
    // {_ "t": "resend", "id": h'5a…', "index": 1 } with an indefinite map and chunked bytes.
    let mut bytes = vec![0xbf, 0x61, b't', 0x66];
    bytes.extend_from_slice(b"resend");
    bytes.extend_from_slice(&[0x62, b'i', b'd', 0x5f, 0x48]);
    bytes.extend_from_slice(&ID.0[..8]);
    bytes.push(0x48);
    bytes.extend_from_slice(&ID.0[8..]);
    bytes.push(0xff);
    bytes.extend_from_slice(&[0x65, b'i', b'n', b'd', b'e', b'x', 0x01, 0xff]);
    assert_eq!(
        decode(&bytes),
        Ok(Some(Message::Resend { id: ID, index: 1 }))
    );
}

#[test]
fn an_unknown_kind_is_ignored() {
    let value = Value::Map(vec![
        (Value::Text("t".into()), Value::Text("pause".into())),
        (Value::Text("id".into()), Value::Integer(1.into())),
    ]);
    assert_eq!(decode(&to_bytes(&value)), Ok(None));
    // Even without any other key.
    let value = Value::Map(vec![(Value::Text("t".into()), Value::Text("x".into()))]);
    assert_eq!(decode(&to_bytes(&value)), Ok(None));
}

#[test]
fn missing_keys_are_errors() {
    for message in every_kind() {
        let map = map_of(&value_of(&encode(&message)));
        for (key, _) in &map {
            if key == "mode"
                || key == "mtime"
                || key == "code"
                || (key == "reason" && message.kind() == "done")
            {
                // Optional keys: absent is fine.
                let decoded = decode_edited(&message, |e| remove(e, key))
                    .unwrap()
                    .unwrap();
                assert_eq!(decoded.kind(), message.kind());
                continue;
            }
            let result = decode_edited(&message, |e| remove(e, key));
            if key != "t" && key != "id" {
                // The id is readable: the receiver can answer `reject` `invalid` (spec 4).
                assert_eq!(
                    result.as_ref().map_err(WireError::readable_id).err(),
                    Some(Some(ID)),
                    "{message:?} without {key}"
                );
            }
            let result = result.map_err(WireError::into_cause);
            let expected_kind = if key == "t" {
                "message"
            } else {
                message.kind()
            };
            let expected_key: &str = key;
            assert!(
                matches!(result, Err(WireError::Missing { kind, key }) if kind == expected_kind && key == expected_key),
                "{message:?} without {key}: {result:?}"
            );
        }
    }
}

#[test]
fn mistyped_values_are_errors() {
    let all = every_kind();
    let bad = |message: &Message, key: &str, value: Value| {
        let result =
            decode_edited(message, |e| set(e, key, value.clone())).map_err(WireError::into_cause);
        assert!(
            matches!(result, Err(WireError::BadValue { key: k, .. }) if k == key),
            "{key} = {value:?}: {result:?}"
        );
    };
    let start = &all[0];
    bad(start, "id", Value::Bytes(vec![1; 15]));
    bad(start, "id", Value::Bytes(vec![1; 17]));
    bad(start, "id", Value::Text(ID.to_string()));
    bad(start, "size", Value::Integer((-1).into()));
    bad(start, "size", Value::Text("12".into()));
    bad(start, "size", Value::Float(12.0));
    bad(
        start,
        "chunk_size",
        Value::Integer((u64::from(u32::MAX) + 1).into()),
    );
    bad(
        start,
        "mode",
        Value::Integer((u64::from(u32::MAX) + 1).into()),
    );
    bad(start, "mtime", Value::Integer(u64::MAX.into()));
    bad(start, "mtime", Value::Text("yesterday".into()));
    bad(start, "name", Value::Bytes(b"a".to_vec()));
    bad(start, "t", Value::Integer(1.into()));
    let chunk = &all[4];
    bad(chunk, "sha256", Value::Bytes(vec![0; 31]));
    bad(
        chunk,
        "sha256",
        Value::Tag(2, Box::new(Value::Bytes(vec![0; 32]))),
    );
    bad(chunk, "data", Value::Text("abc".into()));
    bad(chunk, "data", Value::Array(vec![Value::Integer(1.into())]));
    bad(chunk, "index", Value::Bool(true));
    let done = &all[9];
    bad(done, "ok", Value::Integer(1.into()));
    bad(done, "reason", Value::Integer(1.into()));
}

#[test]
fn a_duplicate_known_key_is_an_error() {
    let result = decode_edited(&Message::Progress { id: ID, next: 1 }, |e| {
        e.push((Value::Text("next".into()), Value::Integer(2.into())))
    });
    assert!(matches!(
        result,
        Err(WireError::BadValue { key: "next", .. })
    ));
}

#[test]
fn garbage_is_an_error() {
    assert!(matches!(decode(&[]), Err(WireError::NotCbor(_))));
    assert!(matches!(decode(b"hello"), Err(WireError::NotCbor(_))));
    assert!(matches!(decode(&[0xff]), Err(WireError::NotCbor(_))));
    // A text string, an array, an integer: valid CBOR, not a map.
    assert_eq!(
        decode(&to_bytes(&Value::Text("t".into()))),
        Err(WireError::NotAMap)
    );
    assert_eq!(
        decode(&to_bytes(&Value::Array(vec![]))),
        Err(WireError::NotAMap)
    );
    assert_eq!(decode(&[0x01]), Err(WireError::NotAMap));
    // A map cut short anywhere.
    let bytes = encode(&every_kind()[4]);
    for len in 1..bytes.len() {
        assert!(
            matches!(decode(&bytes[..len]), Err(WireError::NotCbor(_))),
            "cut at {len}"
        );
    }
    // Bytes after the map.
    let mut long = encode(&Message::Progress { id: ID, next: 1 });
    long.push(0);
    assert!(matches!(decode(&long), Err(WireError::NotCbor(_))));
    // A declared length far beyond the input.
    let huge = [
        0xa1, 0x61, b't', 0x5b, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(matches!(decode(&huge), Err(WireError::NotCbor(_))));
    // Nested deeper than any message needs.
    let mut deep = vec![0xa1, 0x61, b'x'];
    deep.extend(std::iter::repeat_n(0x81, 10_000));
    deep.push(0);
    assert!(matches!(decode(&deep), Err(WireError::NotCbor(_))));
    // Invalid UTF-8 in a text key.
    assert!(matches!(
        decode(&[0xa1, 0x61, 0xff, 0x00]),
        Err(WireError::NotCbor(_))
    ));
}

#[test]
fn messages_over_the_limit_are_refused_before_decoding() {
    let message = Message::Chunk {
        id: ID,
        index: 0,
        sha256: [0; 32],
        data: vec![0; 2000],
    };
    let bytes = encode(&message);
    assert_eq!(
        decode_within(&bytes, 1500),
        Err(WireError::TooLarge {
            len: bytes.len(),
            max: 1500
        })
    );
    assert_eq!(
        decode_within(&bytes, bytes.len()),
        Ok(Some(message.clone()))
    );
    assert_eq!(decode_within(&bytes, 0), Ok(Some(message)));
    let too_big = vec![0u8; MAX_MESSAGE_LEN + 1];
    assert!(matches!(decode(&too_big), Err(WireError::TooLarge { .. })));
}

#[test]
fn chunk_size_follows_the_max_message_size_rule() {
    const KIB: u64 = 1024;
    let table: [(Option<u64>, u32); 12] = [
        // Absent: 64 KiB, minus 1 KiB = 63 KiB, rounded down to a power of two.
        (None, 32 * 1024),
        // 0: no limit, so 256 KiB.
        (Some(0), 256 * 1024),
        // min(256 KiB, 255 KiB) = 255 KiB → 128 KiB.
        (Some(256 * KIB), 128 * 1024),
        (Some(257 * KIB), 256 * 1024),
        (Some(1 << 30), 256 * 1024),
        (Some(u64::MAX), 256 * 1024),
        (Some(65 * KIB), 64 * 1024),
        (Some(65 * KIB - 1), 32 * 1024),
        (Some(64 * KIB), 32 * 1024),
        (Some(2 * KIB), 1024),
        // Too small for the rule: at least 1 KiB.
        (Some(1500), 1024),
        (Some(1), 1024),
    ];
    for (max_message_size, chunk) in table {
        assert_eq!(
            chunk_size_for(max_message_size),
            chunk,
            "{max_message_size:?}"
        );
        assert!(chunk.is_power_of_two());
        assert!((MIN_CHUNK..=MAX_CHUNK).contains(&chunk));
    }
}

#[test]
fn debug_output_never_prints_chunk_data() {
    let message = Message::Chunk {
        id: ID,
        index: 1,
        sha256: [0xab; 32],
        data: b"secret file contents".to_vec(),
    };
    let text = format!("{message:?}");
    assert!(!text.contains("secret") && !text.contains("115, 101"));
    assert!(text.contains("len: 20"));
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_messages(
        which in 0usize..12,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = encode(&every_kind()[which]);
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        let cut = cut % (bytes.len() + 1);
        let _ = decode(&bytes[..cut]);
        let _ = decode(&bytes);
    }

    #[test]
    fn progress_and_resend_round_trip(next in any::<u64>(), index in any::<u64>(), id in any::<[u8; 16]>()) {
        let id = TransferId(id);
        for message in [Message::Progress { id, next }, Message::Resend { id, index }] {
            prop_assert_eq!(decode(&encode(&message)), Ok(Some(message.clone())));
        }
    }

    #[test]
    fn start_round_trips(
        name in ".{0,40}",
        size in any::<u64>(),
        chunk_size in any::<u32>(),
        mode in proptest::option::of(any::<u32>()),
        mtime in proptest::option::of(any::<i64>()),
    ) {
        let message = Message::Start {
            id: ID, name, size, chunk_size, chunks: size / 3, mime: "text/plain".into(), mode, mtime, start_chunk: 1,
        };
        prop_assert_eq!(decode(&encode(&message)), Ok(Some(message.clone())));
    }
}
