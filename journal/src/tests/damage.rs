//! Damaged directories: torn tails, bit flips, short and foreign files, newer formats.

use super::*;
use crate::frame::{self, FrameHeader};

/// A closed journal with `n` records of about 100 bytes, in one segment or (with `small()`)
/// several.
fn journal_with(dir: &Path, n: usize, opts: Options) {
    let journal = open(dir, opts);
    let text = "r".repeat(90);
    append_all(&journal, (0..n).map(|i| note(format!("{i:03}{text}"))));
    journal.close().unwrap();
}

fn expect_corrupt(
    result: Result<impl std::fmt::Debug, JournalError>,
    segment: &Path,
    offset: u64,
) -> String {
    match result {
        Err(JournalError::Corrupt {
            segment: s,
            offset: o,
            reason,
        }) => {
            assert_eq!(
                (s.as_path(), o),
                (segment, offset),
                "corrupt at the wrong place: {reason}"
            );
            reason
        }
        other => panic!(
            "expected Corrupt at {}:{offset}, got {other:?}",
            segment.display()
        ),
    }
}

#[test]
fn torn_tail_at_every_offset_of_the_last_frame() {
    let base = tempfile::tempdir().unwrap();
    journal_with(base.path(), 5, Options::default());
    let path = segment_paths(base.path()).remove(0);
    let name = path.file_name().unwrap().to_owned();
    let bytes = fs::read(&path).unwrap();
    let frames = frames_of(&path);
    let last = frames[4];
    assert_eq!(last.end as usize, bytes.len());

    for cut in last.start + 1..last.end {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(&name);
        fs::write(&seg, &bytes[..cut as usize]).unwrap();

        // A reader reports it and modifies nothing.
        let v = reader(dir.path()).verify().unwrap();
        let torn = v.torn_tail.expect("torn tail reported");
        assert_eq!(
            (torn.offset, torn.bytes, v.records),
            (last.start, cut - last.start, 4),
            "cut {cut}"
        );
        assert_eq!(fs::metadata(&seg).unwrap().len(), cut);
        let mut replay = reader(dir.path()).replay().unwrap();
        assert_eq!(
            seqs(&replay.by_ref().collect::<Result<Vec<_>, _>>().unwrap()),
            vec![1, 2, 3, 4]
        );
        assert_eq!(replay.torn_tail().map(|t| t.offset), Some(last.start));

        // The writer truncates it, keeps every earlier record and continues the sequence.
        let (journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
        let t = report.truncated_tail.expect("truncation reported");
        assert_eq!(
            (t.segment.as_path(), t.offset, t.bytes),
            (seg.as_path(), last.start, cut - last.start)
        );
        assert_eq!((report.records, report.last_seq), (4, Some(4)));
        assert_eq!(fs::metadata(&seg).unwrap().len(), last.start, "cut {cut}");
        assert_eq!(append_all(&journal, [note("again")]), vec![5]);
        let r = records(journal.replay());
        assert_eq!(seqs(&r), vec![1, 2, 3, 4, 5]);
        assert_eq!(r[4].payload, note("again"));
        journal.close().unwrap();
        assert_eq!(reader(dir.path()).verify().unwrap().torn_tail, None);
    }
}

#[test]
fn a_cut_at_a_frame_boundary_is_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 5, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    truncate_file(&path, frames_of(&path)[3].start);
    let (journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert_eq!((report.records, report.truncated_tail), (3, None));
    assert_eq!(append_all(&journal, [note("4")]), vec![4]);
}

#[test]
fn a_bit_flip_in_a_middle_segment_is_corruption_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 12, small());
    let paths = segment_paths(dir.path());
    assert!(paths.len() >= 3, "{paths:?}");
    let middle = &paths[1];
    let frames = frames_of(middle);
    assert!(frames.len() >= 2);
    let hit = frames[1];
    flip_bit(middle, hit.start + FRAME_HEADER_LEN as u64 + 10, 3);
    let files_before: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();

    let reason = expect_corrupt(
        Journal::<Ev>::open(dir.path(), small()).map(|_| ()),
        middle,
        hit.start,
    );
    assert!(reason.contains("CRC"), "{reason}");
    let files_after: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(
        files_before == files_after,
        "a failed open modifies nothing"
    );

    // The records before the damage are still readable, then the error.
    let (good, err) = records_until_error(reader(dir.path()).replay_from(1).unwrap());
    assert_eq!(seqs(&good), (1..hit.seq).collect::<Vec<_>>());
    expect_corrupt(err.map_or(Ok(()), Err), middle, hit.start);
    expect_corrupt(reader(dir.path()).verify(), middle, hit.start);
}

#[test]
fn damage_before_the_last_frame_of_the_last_segment_is_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 5, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let frames = frames_of(&path);
    flip_bit(&path, frames[2].start + 20, 0);
    let reason = expect_corrupt(
        Journal::<Ev>::open(dir.path(), Options::default()).map(|_| ()),
        &path,
        frames[2].start,
    );
    assert!(reason.contains("not a torn write"), "{reason}");
    let (good, err) = records_until_error(reader(dir.path()).replay().unwrap());
    assert_eq!(seqs(&good), vec![1, 2]);
    assert!(err.is_some());
}

#[test]
fn a_zero_length_last_segment_is_torn_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 3, Options::default());
    let empty = dir.path().join("00000000000000000004.seg");
    fs::write(&empty, b"").unwrap();

    let v = reader(dir.path()).verify().unwrap();
    let torn = v.torn_tail.unwrap();
    assert_eq!(
        (torn.segment.as_path(), torn.offset, torn.bytes),
        (empty.as_path(), 0, 0)
    );
    assert_eq!(v.records, 3);

    let (journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert_eq!(
        report.truncated_tail.map(|t| t.segment),
        Some(empty.clone())
    );
    assert_eq!(
        (report.records, report.last_seq, report.segments),
        (3, Some(3), 2)
    );
    assert_eq!(append_all(&journal, [note("4")]), vec![4]);
    journal.close().unwrap();
    assert_eq!(
        frames_of(&empty).len(),
        1,
        "the record went into the rewritten segment"
    );
    assert_eq!(
        seqs(&records(reader(dir.path()).replay())),
        vec![1, 2, 3, 4]
    );
}

#[test]
fn a_last_segment_shorter_than_its_header_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 12, small());
    let paths = segment_paths(dir.path());
    let last = paths.last().unwrap();
    let first_seq = frames_of(last)[0].seq;
    truncate_file(last, 10);
    let (journal, report) = Journal::<Ev>::open(dir.path(), small()).unwrap();
    let t = report.truncated_tail.unwrap();
    assert_eq!((t.offset, t.bytes), (0, 10));
    assert_eq!(report.last_seq, Some(first_seq - 1));
    assert_eq!(append_all(&journal, [note("n")]), vec![first_seq]);
}

/// Found by the journal fuzz target: `verify` called a short last segment a torn tail although
/// its name did not continue the previous segment, while `Journal::open` refused it as corrupt.
#[test]
fn a_headerless_last_segment_whose_name_skips_seqs_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 3, Options::default());
    let stray = dir.path().join("00000000000000000009.seg");
    fs::write(&stray, [0u8; 20]).unwrap();
    let reason = expect_corrupt(reader(dir.path()).verify(), &stray, 0);
    assert!(reason.contains("header is missing"), "{reason}");
    expect_corrupt(
        Journal::<Ev>::open(dir.path(), Options::default()).map(|_| ()),
        &stray,
        0,
    );
    // Replay yields the intact records, then the error.
    let items: Vec<_> = reader(dir.path()).replay_from(0).unwrap().collect();
    assert_eq!(items.len(), 4);
    assert!(matches!(items[3], Err(JournalError::Corrupt { .. })));
}

#[test]
fn a_zero_length_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 12, small());
    let paths = segment_paths(dir.path());
    truncate_file(&paths[1], 0);
    let reason = expect_corrupt(
        Journal::<Ev>::open(dir.path(), small()).map(|_| ()),
        &paths[1],
        0,
    );
    assert!(
        reason.contains("shorter than its 32-byte header"),
        "{reason}"
    );
    expect_corrupt(reader(dir.path()).verify(), &paths[1], 0);
}

#[test]
fn a_missing_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 12, small());
    let paths = segment_paths(dir.path());
    fs::remove_file(&paths[1]).unwrap();
    let reason = expect_corrupt(
        Journal::<Ev>::open(dir.path(), small()).map(|_| ()),
        &paths[2],
        0,
    );
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn an_intact_record_over_the_reader_limit_is_never_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), Options::default());
    append_all(&journal, [note("small"), note("x".repeat(500))]);
    journal.close().unwrap();
    let path = segment_paths(dir.path()).remove(0);
    let before = fs::read(&path).unwrap();
    let tight = Options {
        max_record_bytes: 100,
        ..Options::default()
    };
    let big = frames_of(&path)[1];
    let reason = expect_corrupt(
        Journal::<Ev>::open(dir.path(), tight.clone()).map(|_| ()),
        &path,
        big.start,
    );
    assert!(
        reason.contains("max_record_bytes") && reason.contains("intact"),
        "{reason}"
    );
    assert!(fs::read(&path).unwrap() == before, "nothing truncated");
    expect_corrupt(
        Reader::<Ev>::open(dir.path(), tight).unwrap().verify(),
        &path,
        big.start,
    );
}

#[test]
fn a_length_over_the_max_is_damage_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 12, small());
    let paths = segment_paths(dir.path());
    let middle = &paths[1];
    let hit = frames_of(middle)[0];
    let mut bytes = fs::read(middle).unwrap();
    bytes[hit.start as usize..hit.start as usize + 4]
        .copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    fs::write(middle, bytes).unwrap();
    let reason = expect_corrupt(
        Journal::<Ev>::open(dir.path(), small()).map(|_| ()),
        middle,
        hit.start,
    );
    assert!(reason.contains("past the end"), "{reason}");

    // Within the file but over the max, in the last segment with more frames after it.
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 5, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let hit = frames_of(&path)[1];
    let mut bytes = fs::read(&path).unwrap();
    bytes[hit.start as usize..hit.start as usize + 4].copy_from_slice(&200u32.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let opts = Options {
        max_record_bytes: 150,
        ..Options::default()
    };
    let reason = expect_corrupt(
        Journal::<Ev>::open(dir.path(), opts).map(|_| ()),
        &path,
        hit.start,
    );
    assert!(reason.contains("more than max_record_bytes"), "{reason}");
}

#[test]
fn a_newer_format_version_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 3, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let check = |r: Result<(), JournalError>| match r {
        Err(JournalError::UnsupportedVersion {
            segment,
            found: 3,
            supported: 2,
        }) => assert_eq!(segment, path),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    };
    check(Journal::<Ev>::open(dir.path(), Options::default()).map(|_| ()));
    check(reader(dir.path()).verify().map(|_| ()));
    check(reader(dir.path()).replay().map(|_| ()));
    let message = reader(dir.path()).verify().unwrap_err().to_string();
    assert!(message.contains("newer fsnode"), "{message}");
}

#[test]
fn bad_magic_and_foreign_names_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 3, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    flip_bit(&path, 2, 1);
    expect_corrupt(
        Journal::<Ev>::open(dir.path(), Options::default()).map(|_| ()),
        &path,
        0,
    );
    flip_bit(&path, 2, 1);

    let odd = dir.path().join("latest.seg");
    fs::write(&odd, b"").unwrap();
    expect_corrupt(reader(dir.path()).verify(), &odd, 0);
    fs::remove_file(&odd).unwrap();
    // Other files are not segments.
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    assert_eq!(reader(dir.path()).verify().unwrap().records, 3);

    // A header whose first seq disagrees with the file name.
    let renamed = dir.path().join("00000000000000000009.seg");
    fs::rename(&path, &renamed).unwrap();
    let reason = expect_corrupt(reader(dir.path()).verify(), &renamed, 12);
    assert!(reason.contains("file name"), "{reason}");
}

#[test]
fn garbage_after_a_valid_prefix() {
    // Garbage whose "length" runs past the end of the file: a torn tail.
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 3, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let end = fs::metadata(&path).unwrap().len();
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0xAB; 100]);
    fs::write(&path, &bytes).unwrap();
    let (journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    let t = report.truncated_tail.unwrap();
    assert_eq!((t.offset, t.bytes, report.records), (end, 100, 3));
    assert_eq!(fs::metadata(&path).unwrap().len(), end);
    assert_eq!(append_all(&journal, [note("4")]), vec![4]);
    journal.close().unwrap();

    // A plausible frame header followed by more non-zero bytes: corruption.
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 3, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let end = fs::metadata(&path).unwrap().len();
    let mut bytes = fs::read(&path).unwrap();
    let fake = FrameHeader {
        len: 10,
        crc: 0x1234_5678,
        seq: 4,
        kind: 1,
    };
    bytes.extend_from_slice(&fake.encode());
    bytes.extend_from_slice(&[0x5A; 40]);
    fs::write(&path, &bytes).unwrap();
    expect_corrupt(
        Journal::<Ev>::open(dir.path(), Options::default()).map(|_| ()),
        &path,
        end,
    );
    let (good, err) = records_until_error(reader(dir.path()).replay().unwrap());
    assert_eq!((seqs(&good), err.is_some()), (vec![1, 2, 3], true));

    // Zeros (the end-of-data marker) followed by junk, in the last segment: a torn tail.
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 3, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let end = fs::metadata(&path).unwrap().len();
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0; 64]);
    bytes.extend_from_slice(b"junk");
    fs::write(&path, &bytes).unwrap();
    let v = reader(dir.path()).verify().unwrap();
    assert_eq!(v.torn_tail.map(|t| (t.offset, t.bytes)), Some((end, 68)));
    let (_, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert_eq!(report.truncated_tail.map(|t| t.offset), Some(end));
    assert_eq!(report.records, 3);
}

#[test]
fn zeros_after_the_data_are_preallocated_space() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 3, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let end = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(end + 10_000)
        .unwrap();
    let v = reader(dir.path()).verify().unwrap();
    assert_eq!((v.records, v.torn_tail), (3, None));
    let (journal, report) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert_eq!((report.records, report.truncated_tail), (3, None));
    assert_eq!(append_all(&journal, [note("4")]), vec![4]);
    journal.close().unwrap();
    assert_eq!(
        frames_of(&path)[3].start,
        end,
        "appended where the data ended"
    );
}

/// Rewrites frame `index` of a segment with a new seq/kind and a valid CRC.
pub(super) fn rewrite_frame(path: &Path, index: usize, seq: Seq, kind: u8) {
    let f = frames_of(path)[index];
    let mut bytes = fs::read(path).unwrap();
    let body = f.start as usize + FRAME_HEADER_LEN;
    let payload = bytes[body..f.end as usize].to_vec();
    let header = FrameHeader {
        len: payload.len() as u32,
        crc: frame::checksum(seq, kind, &payload),
        seq,
        kind,
    };
    bytes[f.start as usize..body].copy_from_slice(&header.encode());
    fs::write(path, bytes).unwrap();
}

#[test]
fn an_intact_frame_with_the_wrong_seq_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 12, small());
    let paths = segment_paths(dir.path());
    let hit = frames_of(&paths[0])[1];
    rewrite_frame(&paths[0], 1, hit.seq + 1, 1);
    let reason = expect_corrupt(reader(dir.path()).verify(), &paths[0], hit.start);
    assert!(reason.contains("expected"), "{reason}");
}

#[test]
fn a_snapshot_must_start_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 5, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let hit = frames_of(&path)[2];
    rewrite_frame(&path, 2, hit.seq, 2);
    let reason = expect_corrupt(reader(dir.path()).verify(), &path, hit.start);
    assert!(reason.contains("snapshot"), "{reason}");
}

#[test]
fn an_intact_frame_that_does_not_decode_is_a_decode_error() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::<String>::open(dir.path(), Options::default())
        .unwrap()
        .0;
    for s in ["a", "b", "c"] {
        journal.append(&s.to_string()).unwrap().wait().unwrap();
    }
    journal.close().unwrap();
    // Read as the wrong type: every record is intact but none decodes.
    let r = Reader::<u64>::open(dir.path(), Options::default()).unwrap();
    match r.verify() {
        Err(JournalError::Decode {
            seq: 1, offset: 32, ..
        }) => {}
        other => panic!("expected Decode, got {other:?}"),
    }
    let items: Vec<_> = r.replay().unwrap().collect();
    assert_eq!(items.len(), 3, "a decode error does not end the replay");
    assert!(
        items
            .iter()
            .all(|i| matches!(i, Err(JournalError::Decode { .. })))
    );
}

#[test]
fn random_bytes_never_panic() {
    // Segments full of arbitrary bytes (with a valid header) produce values or errors.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = segment::encode_header(1).to_vec();
        let len = (next() % 300) as usize;
        bytes.extend((0..len).map(|_| {
            let b = next() as u8;
            // Mostly small values, so that lengths are plausible sometimes.
            if round % 2 == 0 { b % 4 } else { b }
        }));
        fs::write(dir.path().join(segment::file_name(1)), &bytes).unwrap();
        let _ = reader(dir.path()).verify();
        let _ = reader(dir.path()).replay().map(|r| r.count());
        let _ = Journal::<Ev>::open(dir.path(), Options::default());
    }
}

/// A repair after a bit flip in the middle of the only segment: the damaged frame and every
/// frame after it are cut (counted beforehand), moved aside, and the journal opens and goes on.
#[test]
fn repair_truncates_a_bit_flip_mid_segment_and_keeps_what_it_cuts() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 6, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let frames = frames_of(&path);
    let before = fs::read(&path).unwrap();
    flip_bit(&path, frames[2].start + 20, 3);
    let damage = reader(dir.path()).damage().unwrap().expect("damage found");
    assert_eq!(
        (damage.segment.as_path(), damage.offset),
        (path.as_path(), frames[2].start)
    );
    assert_eq!((damage.records_kept, damage.records_lost), (2, 4));
    let keep = tempfile::tempdir().unwrap();
    let repaired = crate::repair(dir.path(), &Options::default(), keep.path())
        .unwrap()
        .expect("repaired");
    assert_eq!(repaired.damage, damage);
    assert_eq!(fs::metadata(&path).unwrap().len(), frames[2].start);
    // The cut bytes, as they were on disk (the flipped bit included).
    let cut = fs::read(&repaired.kept_in[0]).unwrap();
    assert_eq!(cut.len() as u64, before.len() as u64 - frames[2].start);
    assert_eq!(cut[21..], before[frames[2].start as usize + 21..]);
    let (journal, _) = Journal::<Ev>::open(dir.path(), Options::default()).unwrap();
    assert_eq!(seqs(&records(journal.replay())), vec![1, 2]);
    assert_eq!(append_all(&journal, [note("on")]), vec![3]);
    journal.close().unwrap();
    assert_eq!(reader(dir.path()).damage().unwrap(), None);
}

/// Damage in an earlier segment: that segment is cut at the damage and every later segment is
/// moved aside whole; what the later segments held is counted as lost.
#[test]
fn repair_of_damage_in_an_earlier_segment_moves_the_later_ones_aside() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 12, small());
    let paths = segment_paths(dir.path());
    assert!(paths.len() >= 3, "{paths:?}");
    let frames = frames_of(&paths[1]);
    flip_bit(&paths[1], frames[0].start + 18, 1);
    let total = 12;
    let damage = reader(dir.path()).damage().unwrap().expect("damage found");
    assert_eq!(damage.segment, paths[1]);
    assert_eq!(damage.later_segments, paths[2..].to_vec());
    assert_eq!(damage.records_kept + damage.records_lost, total);
    let keep = tempfile::tempdir().unwrap();
    let repaired = crate::repair(dir.path(), &small(), keep.path())
        .unwrap()
        .expect("repaired");
    assert_eq!(repaired.kept_in.len(), 1 + paths.len() - 2);
    assert!(paths[2..].iter().all(|p| !p.exists()));
    let (journal, report) = Journal::<Ev>::open(dir.path(), small()).unwrap();
    assert_eq!(report.records, damage.records_kept);
    journal.close().unwrap();
}

/// A torn tail is not damage: the writer drops it when it opens, so a repair does nothing.
#[test]
fn repair_leaves_a_torn_tail_to_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), 3, Options::default());
    let path = segment_paths(dir.path()).remove(0);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    assert_eq!(reader(dir.path()).damage().unwrap(), None);
    let keep = tempfile::tempdir().unwrap();
    assert_eq!(
        crate::repair(dir.path(), &Options::default(), keep.path()).unwrap(),
        None
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), len - 3);
}
