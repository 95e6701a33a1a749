//! The node's journal records: events (stamped with wall-clock time) and snapshots of the
//! folded state, stored with the `fsnode-journal` crate.

use serde::{Deserialize, Serialize};

use crate::core::state::{PeerState, TransferState};
use crate::core::{DeviceId, Stamped, State, TransferId};
use fsnode_journal::{Record, Seq, TornTail};

/// One journal record's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JournalEntry {
    Event(Stamped),
    /// The whole state as of this record (with the `SnapshotPart`s just before it, if any);
    /// replaces every record before it.
    Snapshot {
        time_ms: i64,
        state: State,
    },
    /// Devices and transfers of a snapshot too large for one record; the snapshot's last
    /// record (`Snapshot`) follows and holds the rest.
    SnapshotPart {
        #[serde(default)]
        peers: Vec<(DeviceId, PeerState)>,
        #[serde(default)]
        transfers: Vec<(TransferId, Box<TransferState>)>,
    },
}

impl JournalEntry {
    /// Wall-clock time of the record; `None` for a snapshot part (its snapshot's time is on
    /// the snapshot's last record).
    pub fn time_ms(&self) -> Option<i64> {
        match self {
            JournalEntry::Event(stamped) => Some(stamped.time_ms),
            JournalEntry::Snapshot { time_ms, .. } => Some(*time_ms),
            JournalEntry::SnapshotPart { .. } => None,
        }
    }
}

/// Encoded size a snapshot part aims for: far below the journal's 1 MiB record limit, so one
/// device or transfer of any size the protocol allows still fits beside the others.
pub const SNAPSHOT_PART_BYTES: usize = 256 * 1024;

/// Splits `state` into the records of one snapshot: `SnapshotPart`s of about
/// [`SNAPSHOT_PART_BYTES`] each with its devices and transfers, then a `Snapshot` with the rest.
/// A small state is one `Snapshot`. Never needs a record larger than the largest single device
/// or transfer plus a little. Lazy: each part is made when asked for, so a snapshot of any
/// size streams to the journal one part at a time (`Journal::snapshot_stream`).
pub fn snapshot_parts(state: &State, time_ms: i64) -> SnapshotParts<'_> {
    SnapshotParts {
        state,
        time_ms,
        peers: state.peers.iter().peekable(),
        transfers: state.transfers.iter().peekable(),
        scratch: Vec::new(),
        done: false,
    }
}

/// The parts of one snapshot, made one at a time ([`snapshot_parts`]).
pub struct SnapshotParts<'a> {
    state: &'a State,
    time_ms: i64,
    peers: std::iter::Peekable<std::collections::btree_map::Iter<'a, DeviceId, PeerState>>,
    transfers:
        std::iter::Peekable<std::collections::btree_map::Iter<'a, TransferId, Box<TransferState>>>,
    scratch: Vec<u8>,
    done: bool,
}

impl Iterator for SnapshotParts<'_> {
    type Item = JournalEntry;

    fn next(&mut self) -> Option<JournalEntry> {
        if self.done {
            return None;
        }
        let mut peers = Vec::new();
        let mut transfers = Vec::new();
        let mut bytes = 0usize;
        // Devices first, then transfers; a part is full once the next item would pass the
        // budget (a part always takes at least one item).
        while let Some((id, peer)) = self.peers.peek() {
            let len = encoded_len(&(id, peer), &mut self.scratch);
            if bytes + len > SNAPSHOT_PART_BYTES && !peers.is_empty() {
                return Some(JournalEntry::SnapshotPart { peers, transfers });
            }
            bytes += len;
            peers.push(((*id).clone(), (*peer).clone()));
            self.peers.next();
        }
        while let Some((id, transfer)) = self.transfers.peek() {
            let len = encoded_len(&(id, transfer), &mut self.scratch);
            if bytes + len > SNAPSHOT_PART_BYTES && (!peers.is_empty() || !transfers.is_empty()) {
                return Some(JournalEntry::SnapshotPart { peers, transfers });
            }
            bytes += len;
            transfers.push((**id, (*transfer).clone()));
            self.transfers.next();
        }
        self.done = true;
        let mut head = self.state.clone_without_maps();
        head.peers.extend(peers);
        head.transfers.extend(transfers);
        Some(JournalEntry::Snapshot {
            time_ms: self.time_ms,
            state: head,
        })
    }
}

/// The CBOR size of `item`. Encoding into memory fails only for values serde cannot
/// represent; such a value counts as empty here and the journal reports the error itself.
fn encoded_len<T: Serialize>(item: &T, scratch: &mut Vec<u8>) -> usize {
    scratch.clear();
    let _ = ciborium::into_writer(item, &mut *scratch);
    scratch.len()
}

/// Folds replayed records into state, stopping after `until` if given. Returns the state
/// and the sequence number of the last record folded.
///
/// A snapshot's parts are collected until its last record, which replaces the state; parts
/// without their last record (an interrupted snapshot, never counted by the journal) are
/// dropped.
pub fn fold<E>(
    records: impl Iterator<Item = Result<Record<JournalEntry>, E>>,
    until: Option<Seq>,
) -> Result<(State, Option<Seq>), E> {
    let mut folder = Fold::default();
    for record in records {
        let record = record?;
        if until.is_some_and(|until| record.seq > until) {
            break;
        }
        folder.apply(record.seq, record.payload);
    }
    Ok((folder.state, folder.last))
}

/// The fold of [`fold`], one record at a time (for readers that look at each record too).
#[derive(Default)]
pub struct Fold {
    pub state: State,
    pub last: Option<Seq>,
    peers: Vec<(DeviceId, PeerState)>,
    transfers: Vec<(TransferId, Box<TransferState>)>,
}

impl Fold {
    pub fn apply(&mut self, seq: Seq, payload: JournalEntry) {
        match payload {
            JournalEntry::Event(stamped) => {
                self.peers.clear();
                self.transfers.clear();
                self.state.apply(&stamped);
            }
            JournalEntry::SnapshotPart { peers, transfers } => {
                self.peers.extend(peers);
                self.transfers.extend(transfers);
            }
            JournalEntry::Snapshot {
                state: mut snapshot,
                ..
            } => {
                snapshot.peers.extend(self.peers.drain(..));
                snapshot.transfers.extend(self.transfers.drain(..));
                snapshot.normalize();
                self.state = snapshot;
            }
        }
        self.last = Some(seq);
    }
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
            ..Options::default()
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

#[cfg(test)]
mod bounded {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use fsnode_journal::{Journal, Options, Reader};
    use serde::Serialize;

    use super::*;
    use crate::core::state::{NodeInfo, RECENT_FINISHED, TransferStatus};
    use crate::core::{DeviceType, Direction, Event};

    fn peer(n: u8) -> DeviceId {
        DeviceId::from_sha256(&[n; 32])
    }

    fn id(n: u64) -> TransferId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.to_be_bytes());
        TransferId(b)
    }

    fn stamped(time_ms: i64, event: Event) -> Stamped {
        Stamped { time_ms, event }
    }

    fn queued(n: u64) -> Event {
        Event::TransferQueued {
            id: id(n),
            peer: peer(1),
            direction: Direction::Send,
            // Long names: the protocol's limit is 4 KiB of path; these make a big state.
            name: format!("{}/file-{n}.bin", "deep/".repeat(40)),
            size: 4096,
            path: Some(PathBuf::from(format!(
                "/srv/outbox/{}/file-{n}.bin",
                "d/".repeat(40)
            ))),
            mime: Some("application/octet-stream".into()),
            mode: Some(0o644),
            mtime: Some(1_700_000_000),
            sha256: Some([7; 32]),
            dir: None,
        }
    }

    /// Finished transfers leave state beyond the newest RECENT_FINISHED, whatever the history.
    #[test]
    fn finished_transfers_beyond_the_recent_ones_leave_state() {
        let mut state = State::default();
        for n in 0..5_000u64 {
            state.apply(&stamped(n as i64, queued(n)));
            let end = match n % 4 {
                0 => Event::TransferCompleted {
                    id: id(n),
                    path: None,
                },
                1 => Event::TransferFailed {
                    id: id(n),
                    reason: "x".into(),
                },
                2 => Event::TransferRejected {
                    id: id(n),
                    reason: "no".into(),
                    code: None,
                },
                _ => Event::TransferCancelled {
                    id: id(n),
                    by: crate::core::Side::Remote,
                    reason: "bye".into(),
                },
            };
            state.apply(&stamped(n as i64, end));
        }
        assert_eq!(state.transfers.len(), RECENT_FINISHED);
        assert_eq!(state.finished.len(), RECENT_FINISHED);
        // The newest are the ones kept, and every kept one is in the order.
        assert!(state.transfers.contains_key(&id(4_999)));
        assert!(!state.transfers.contains_key(&id(3_999)));
        // Live transfers are never dropped.
        state.apply(&stamped(9_000, queued(9_000)));
        for n in 10_000..12_000u64 {
            state.apply(&stamped(n as i64, queued(n)));
            state.apply(&stamped(
                n as i64,
                Event::TransferFailed {
                    id: id(n),
                    reason: "x".into(),
                },
            ));
        }
        assert_eq!(state.transfers[&id(9_000)].status, TransferStatus::Queued);
        assert_eq!(state.transfers.len(), RECENT_FINISHED + 1);
    }

    /// A state far larger than one record (100,000 queued sends with long names) is written as
    /// a snapshot in parts, none above the journal's limit, and folds back to the same state.
    #[test]
    fn a_large_snapshot_is_split_into_parts_under_the_record_limit() {
        let mut state = State::default();
        for n in 0..100_000u64 {
            state.apply(&stamped(n as i64, queued(n)));
        }
        let parts: Vec<JournalEntry> = snapshot_parts(&state, 42).collect();
        assert!(parts.len() > 10, "{} parts", parts.len());
        let limit = Options::default().max_record_bytes as usize;
        for part in &parts {
            let mut buf = Vec::new();
            ciborium::into_writer(part, &mut buf).unwrap();
            assert!(buf.len() <= SNAPSHOT_PART_BYTES + 8 * 1024 && buf.len() < limit);
        }
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::<JournalEntry>::open(dir.path(), Options::default()).unwrap();
        journal
            .append(&JournalEntry::Event(stamped(1, queued(0))))
            .unwrap()
            .wait()
            .unwrap();
        // Streamed (made part by part), as the node writes it.
        journal
            .snapshot_stream(|| snapshot_parts(&state, 42))
            .unwrap()
            .wait()
            .unwrap();
        journal
            .append(&JournalEntry::Event(stamped(
                7,
                Event::TransferFailed {
                    id: id(5),
                    reason: "x".into(),
                },
            )))
            .unwrap()
            .wait()
            .unwrap();
        journal.close().unwrap();
        let (journal, _) = Journal::<JournalEntry>::open(dir.path(), Options::default()).unwrap();
        let (back, _) = fold(journal.replay().unwrap(), None).unwrap();
        let mut expected = state.clone();
        expected.apply(&stamped(
            7,
            Event::TransferFailed {
                id: id(5),
                reason: "x".into(),
            },
        ));
        assert_eq!(back, expected);
    }

    /// The shape of `State` before finished transfers left it (no `finished` field).
    #[derive(Serialize, serde::Deserialize)]
    struct OldState {
        node: Option<NodeInfo>,
        peers: BTreeMap<DeviceId, PeerState>,
        transfers: BTreeMap<TransferId, TransferState>,
        starts: u64,
        policy_decisions: u64,
    }

    #[derive(Serialize, serde::Deserialize)]
    enum OldEntry {
        Event(Stamped),
        Snapshot { time_ms: i64, state: OldState },
    }

    /// A journal written by an earlier build (format version 1, one snapshot record holding
    /// every finished transfer) opens, and its state comes out bounded.
    #[test]
    fn a_journal_of_an_earlier_build_opens_and_its_history_leaves_state() {
        let mut state = State::default();
        state.apply(&stamped(
            0,
            Event::NodeStarted {
                device_id: peer(9),
                name: "old".into(),
                device_type: DeviceType::Server,
                version: "0.1.0".into(),
            },
        ));
        for n in 0..3_000u64 {
            state.apply(&stamped(n as i64, queued(n)));
        }
        let old = OldState {
            node: state.node.clone(),
            peers: state.peers.clone(),
            // Every one finished, as an old build kept them: 3,000 of them.
            transfers: state
                .transfers
                .iter()
                .map(|(k, t)| {
                    let mut t = TransferState::clone(t);
                    t.status = TransferStatus::Completed;
                    // Short names: an old build's snapshot had to fit in one record.
                    t.name = format!("f{}", t.updated_at_ms);
                    t.path = None;
                    (*k, t)
                })
                .collect(),
            starts: 1,
            policy_decisions: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::<OldEntry>::open(dir.path(), Options::default()).unwrap();
        journal
            .append(&OldEntry::Event(stamped(0, queued(99_999))))
            .unwrap()
            .wait()
            .unwrap();
        journal
            .snapshot(&OldEntry::Snapshot {
                time_ms: 5,
                state: old,
            })
            .unwrap()
            .wait()
            .unwrap();
        journal
            .append(&OldEntry::Event(stamped(
                6,
                Event::NodeStopped {
                    reason: "signal".into(),
                },
            )))
            .unwrap()
            .wait()
            .unwrap();
        journal.close().unwrap();
        // Format version 1 in every header, as the earlier build wrote them.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "seg") {
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
                std::fs::write(&path, bytes).unwrap();
            }
        }
        Reader::<JournalEntry>::open(dir.path(), Options::default())
            .unwrap()
            .verify()
            .unwrap();
        let (journal, _) = Journal::<JournalEntry>::open(dir.path(), Options::default()).unwrap();
        let (back, _) = fold(journal.replay().unwrap(), None).unwrap();
        assert_eq!(back.transfers.len(), RECENT_FINISHED);
        assert!(back.transfers.contains_key(&id(2_999)), "the newest stay");
        assert_eq!(back.node.as_ref().map(|n| n.running), Some(false));
        // And a new snapshot of it is small.
        let parts: Vec<JournalEntry> = snapshot_parts(&back, 10).collect();
        assert!(parts.len() <= 2, "{} parts", parts.len());
        journal.snapshot_parts(&parts).unwrap().wait().unwrap();
        journal.close().unwrap();
    }
}
