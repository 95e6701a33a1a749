//! The node's journal records: events (stamped with wall-clock time) and snapshots of the
//! folded state, stored with the `fsnode-journal` crate.

use serde::{Deserialize, Serialize};

use crate::core::{Stamped, State};
use fsnode_journal::{Record, Seq, TornTail};

/// One journal record's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JournalEntry {
    Event(Stamped),
    /// The whole state as of this record; replaces every record before it.
    Snapshot {
        time_ms: i64,
        state: State,
    },
}

impl JournalEntry {
    pub fn time_ms(&self) -> i64 {
        match self {
            JournalEntry::Event(stamped) => stamped.time_ms,
            JournalEntry::Snapshot { time_ms, .. } => *time_ms,
        }
    }
}

/// Folds replayed records into state, stopping after `until` if given. Returns the state
/// and the sequence number of the last record folded.
pub fn fold<E>(
    records: impl Iterator<Item = Result<Record<JournalEntry>, E>>,
    until: Option<Seq>,
) -> Result<(State, Option<Seq>), E> {
    let mut state = State::default();
    let mut last = None;
    for record in records {
        let record = record?;
        if until.is_some_and(|until| record.seq > until) {
            break;
        }
        match record.payload {
            JournalEntry::Event(stamped) => state.apply(&stamped),
            JournalEntry::Snapshot {
                state: snapshot, ..
            } => state = snapshot,
        }
        last = Some(record.seq);
    }
    Ok((state, last))
}

/// One line for operators about a torn journal tail.
pub fn describe_torn(torn: &TornTail) -> String {
    format!(
        "{} bytes at offset {} of {} ({})",
        torn.bytes,
        torn.offset,
        torn.segment.display(),
        torn.reason
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use fsnode_journal::{Journal, Options, Reader};

    use super::*;
    use crate::core::{Authority, DeviceId, DeviceType, Direction, Event, TransferId};

    /// A small journal of real records: three segments (the middle one starts with a snapshot).
    fn write_small_journal(dir: &Path) -> Options {
        let opts = Options {
            max_record_bytes: 1024 * 1024,
            segment_bytes: 600,
            preallocate_bytes: 0,
        };
        let (journal, _) = Journal::<JournalEntry>::open(dir, opts.clone()).unwrap();
        let peer = DeviceId::from_sha256(&[1; 32]);
        let id = TransferId([7; 16]);
        let events = [
            Event::NodeStarted {
                device_id: DeviceId::from_sha256(&[0; 32]),
                name: "me".into(),
                device_type: DeviceType::Server,
                version: "0.1.0".into(),
            },
            Event::PeerDiscovered {
                peer: peer.clone(),
                name: "peer-1".into(),
                device_type: DeviceType::Desktop,
                addresses: vec!["10.77.0.2".parse().unwrap()],
                port: 4001,
            },
            Event::PeerAuthorized {
                peer: peer.clone(),
                name: Some("peer-1".into()),
                by: Authority::Operator,
            },
            Event::TransferQueued {
                id,
                peer: peer.clone(),
                direction: Direction::Receive,
                name: "photos/cat.jpg".into(),
                size: 3000,
                path: None,
                mime: None,
                mode: Some(0o644),
                mtime: Some(1_700_000_000),
                sha256: None,
                dir: None,
            },
            Event::TransferStarted {
                id,
                chunk_size: 1024,
                chunks: 3,
                start_chunk: 0,
            },
            Event::ChunksDurable {
                id,
                start: 0,
                end: 2,
            },
        ];
        let mut state = State::default();
        for (i, event) in events.into_iter().enumerate() {
            let stamped = Stamped {
                time_ms: 1_700_000_000_000 + i as i64,
                event,
            };
            state.apply(&stamped);
            journal
                .append(&JournalEntry::Event(stamped))
                .unwrap()
                .wait()
                .unwrap();
        }
        let snapshot = JournalEntry::Snapshot {
            time_ms: 1_700_000_000_100,
            state,
        };
        journal.snapshot(&snapshot).unwrap().wait().unwrap();
        for event in [
            Event::ChunksDurable {
                id,
                start: 2,
                end: 3,
            },
            Event::TransferCompleted {
                id,
                path: Some("/srv/receive/photos/cat.jpg".into()),
            },
            Event::NodeStopped {
                reason: "signal".into(),
            },
        ] {
            let stamped = Stamped {
                time_ms: 1_700_000_000_200,
                event,
            };
            journal
                .append(&JournalEntry::Event(stamped))
                .unwrap()
                .wait()
                .unwrap();
        }
        journal.close().unwrap();
        opts
    }

    /// Writes the journal fuzz target's seeds (fuzz/corpus/journal/, see FUZZING.md): a real
    /// journal's segments back to back after the target's control byte, whole and with a torn
    /// tail. Run with `FSNODE_FUZZ_SEEDS=fuzz/corpus/journal cargo test -p fsnode --lib
    /// write_journal_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes the fuzz seeds; run by hand"]
    fn write_journal_fuzz_seeds() {
        let out = std::env::var_os("FSNODE_FUZZ_SEEDS").expect("FSNODE_FUZZ_SEEDS names a dir");
        let out = Path::new(&out);
        let dir = tempfile::tempdir().unwrap();
        let opts = write_small_journal(dir.path());
        let mut segments: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segments.sort();
        let report = Reader::<JournalEntry>::open(dir.path(), opts)
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!(report.torn_tail, None);
        let mut all = Vec::new();
        for segment in &segments {
            all.extend(std::fs::read(segment).unwrap());
        }
        std::fs::create_dir_all(out).unwrap();
        // Control byte 0x80: name segments after their headers, default limits, then recover.
        std::fs::write(out.join("clean"), [&[0x80], &all[..]].concat()).unwrap();
        std::fs::write(
            out.join("torn_tail"),
            [&[0x80], &all[..all.len() - 7]].concat(),
        )
        .unwrap();
        let mut zero_tail = [&[0x80], &all[..]].concat();
        zero_tail.extend([0; 40]);
        std::fs::write(out.join("zero_filled_tail"), zero_tail).unwrap();
        let last = std::fs::read(segments.last().unwrap()).unwrap();
        std::fs::write(out.join("one_segment"), [&[0x80], &last[..]].concat()).unwrap();
    }

    #[test]
    fn a_small_journal_folds_to_the_state_it_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let opts = write_small_journal(dir.path());
        let reader = Reader::<JournalEntry>::open(dir.path(), opts).unwrap();
        let (state, last) = fold(reader.replay().unwrap(), None).unwrap();
        assert_eq!(last, Some(10));
        let peer = DeviceId::from_sha256(&[1; 32]);
        assert!(state.peers[&peer].trusted);
    }
}
