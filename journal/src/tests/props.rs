//! Property tests: random record streams, damaged at a random place in the last segment, recover
//! to exactly a prefix of what was appended, and the journal goes on from there.

use proptest::prelude::*;

use super::*;
use crate::SEGMENT_HEADER_LEN;

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Snapshot(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        9 => (0usize..2000).prop_map(Op::Append),
        1 => (0usize..2000).prop_map(Op::Snapshot),
    ];
    prop::collection::vec(op, 1..40)
}

fn opts(segment_bytes: u64) -> Options {
    Options {
        segment_bytes,
        ..Options::default()
    }
}

type Model = Vec<Record<Ev>>;

/// Appends the ops (snapshots included) without waiting in between, then closes.
fn write(dir: &Path, ops: &[Op], segment_bytes: u64) -> Model {
    let journal = open(dir, opts(segment_bytes));
    let mut model = Vec::new();
    let mut pending = Vec::new();
    for op in ops {
        let seq = model.len() as Seq + 1;
        let (kind, payload) = match *op {
            Op::Append(len) => (RecordKind::Event, note("e".repeat(len))),
            Op::Snapshot(len) => (
                RecordKind::Snapshot,
                Ev::State {
                    upto: seq - 1,
                    text: "s".repeat(len),
                },
            ),
        };
        let p = match kind {
            RecordKind::Event => journal.append(&payload),
            RecordKind::Snapshot => journal.snapshot(&payload),
            RecordKind::SnapshotPart => unreachable!("the ops write whole snapshots"),
        }
        .expect("append");
        assert_eq!(p.seq, seq);
        pending.push(p);
        model.push(Record { seq, kind, payload });
    }
    for p in pending {
        p.wait().expect("durable");
    }
    journal.close().expect("close");
    model
}

/// What `replay()` must yield from a list of records: from the newest snapshot on.
fn from_newest_snapshot(records: &[Record<Ev>]) -> &[Record<Ev>] {
    let start = records
        .iter()
        .rposition(|r| r.kind == RecordKind::Snapshot)
        .unwrap_or(0);
    &records[start..]
}

/// The damaged journal is reopened: it must hold exactly `surviving`, and go on at `next_seq`.
fn check_recovered(
    dir: &Path,
    segment_bytes: u64,
    surviving: &[Record<Ev>],
    next_seq: Seq,
    torn: bool,
) {
    let (journal, report) = Journal::<Ev>::open(dir, opts(segment_bytes)).expect("reopen");
    assert_eq!(report.truncated_tail.is_some(), torn, "{report:?}");
    assert_eq!(report.records, surviving.len() as u64);
    assert_eq!(report.last_seq, surviving.last().map(|r| r.seq));
    assert_eq!(
        records(journal.replay()).as_slice(),
        from_newest_snapshot(surviving)
    );
    assert_eq!(records(journal.replay_from(1)).as_slice(), surviving);

    let more: Vec<Ev> = (0..3).map(|i| note(format!("after-{i}"))).collect();
    let got = append_all(&journal, more.clone());
    assert_eq!(got, (next_seq..next_seq + 3).collect::<Vec<_>>());
    let mut expected: Vec<Record<Ev>> = surviving.to_vec();
    expected.extend(more.into_iter().zip(got).map(|(payload, seq)| Record {
        seq,
        kind: RecordKind::Event,
        payload,
    }));
    assert_eq!(
        records(journal.replay()).as_slice(),
        from_newest_snapshot(&expected)
    );
    journal.close().expect("close");

    let v = reader(dir).verify().expect("verify after recovery");
    assert_eq!((v.records, v.torn_tail), (expected.len() as u64, None));
    assert_eq!(records(reader(dir).replay_from(1)), expected);
}

/// Writes the stream and returns (model of what is on disk, last segment path, its frames).
fn prepare(dir: &Path, ops: &[Op], segment_bytes: u64) -> (Model, PathBuf, Vec<FramePos>) {
    let model = write(dir, ops, segment_bytes);
    // Compaction left exactly the records from the newest snapshot on.
    let on_disk = records(reader(dir).replay_from(1));
    assert_eq!(on_disk.as_slice(), from_newest_snapshot(&model));
    let last = segment_paths(dir).pop().expect("a segment");
    let frames = frames_of(&last);
    assert!(!frames.is_empty(), "the last segment holds the last record");
    assert_eq!(frames.last().map(|f| f.seq), model.last().map(|r| r.seq));
    (on_disk, last, frames)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_cut_anywhere_in_the_last_segment_recovers_a_prefix(
        ops in ops(),
        segment_bytes in prop_oneof![Just(2048u64), Just(8192), Just(1 << 20)],
        cut in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (on_disk, last, frames) = prepare(dir.path(), &ops, segment_bytes);
        let len = fs::metadata(&last).unwrap().len();
        let cut = cut % len;
        truncate_file(&last, cut);

        let first_in_last = frames[0].seq;
        let kept_in_last = frames.iter().filter(|f| f.end <= cut).count() as u64;
        let next_seq = first_in_last + kept_in_last;
        let surviving: Vec<Record<Ev>> = on_disk.into_iter().filter(|r| r.seq < next_seq).collect();
        let clean = cut == SEGMENT_HEADER_LEN || frames.iter().any(|f| f.start == cut);
        check_recovered(dir.path(), segment_bytes, &surviving, next_seq, !clean);
    }

    #[test]
    fn a_bit_flip_in_the_tail_frame_is_truncated_or_reported(
        ops in ops(),
        segment_bytes in prop_oneof![Just(2048u64), Just(1 << 20)],
        at in any::<u64>(),
        bit in 0u8..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (on_disk, last, frames) = prepare(dir.path(), &ops, segment_bytes);
        let tail = *frames.last().unwrap();
        let byte = tail.start + at % (tail.end - tail.start);
        flip_bit(&last, byte, bit);

        let surviving: Vec<Record<Ev>> = on_disk.into_iter().filter(|r| r.seq < tail.seq).collect();
        match Journal::<Ev>::open(dir.path(), opts(segment_bytes)) {
            Ok((journal, report)) => {
                let t = report.truncated_tail.clone().expect("the damaged frame is a torn tail");
                prop_assert_eq!((t.segment.as_path(), t.offset), (last.as_path(), tail.start));
                drop(journal);
                check_recovered(dir.path(), segment_bytes, &surviving, tail.seq, false);
            }
            Err(JournalError::Corrupt { segment, offset, reason }) => {
                // Only a shortened length field leaves non-zero bytes after the frame's end.
                prop_assert!(byte < tail.start + 4, "flip at {} (frame at {}): {}", byte, tail.start, reason);
                prop_assert_eq!((segment.as_path(), offset), (last.as_path(), tail.start));
                let (good, err) = records_until_error(reader(dir.path()).replay_from(1).unwrap());
                prop_assert_eq!(good, surviving);
                prop_assert!(err.is_some());
            }
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }
}
