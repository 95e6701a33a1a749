//! The journal reader (`journal/`): `Reader::open`, `replay`, `replay_from` and `verify` over
//! arbitrary segment files. None may panic; a torn tail is only ever reported for the end of
//! the last segment; `verify` and a full replay agree; and a journal `verify` accepts is one
//! `Journal::open` recovers to exactly the records `verify` counted.
//!
//! Input: one control byte, then the segment files' bytes back to back. The input is split
//! before every occurrence of the segment magic `FSNJRNL\0`, so the concatenated segments of a
//! real journal directory (the seed) come apart into those segments. Each piece is written as
//! `NNNNNNNNNNNNNNNNNNNN.seg`, named after the first sequence number in its header (or, with
//! control bit 0, after its position, so names and headers can disagree).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fsnode::record::JournalEntry;
use fsnode_journal::{Journal, JournalError, MAGIC, Options, Reader};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        // tmpfs where there is one: the target writes a directory per input.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        tempfile::Builder::new()
            .prefix("fsnode-fuzz-journal")
            .tempdir_in(base)
            .expect("a scratch directory")
    })
    .path()
}

fn split_segments(bytes: &[u8]) -> Vec<&[u8]> {
    let mut starts: Vec<usize> = bytes
        .windows(MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == MAGIC)
        .map(|(i, _)| i)
        .collect();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    starts
        .iter()
        .zip(starts.iter().skip(1).chain([&bytes.len()]))
        .map(|(&a, &b)| &bytes[a..b])
        .collect()
}

fn options(control: u8) -> Options {
    Options {
        max_record_bytes: match (control >> 1) & 3 {
            0 | 1 => Options::default().max_record_bytes,
            2 => 64,
            _ => 1,
        },
        segment_bytes: 64 * 1024,
        preallocate_bytes: 0,
        ..Options::default()
    }
}

fn last_segment(dir: &Path) -> Option<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.pop()
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    if rest.is_empty() && control & 0x10 == 0 {
        return;
    }
    let dir = scratch().join("j");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("create the journal directory");
    if !rest.is_empty() {
        for (position, segment) in split_segments(rest).into_iter().enumerate() {
            let from_header = segment
                .get(12..20)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
            let seq = match from_header {
                Some(seq) if control & 1 == 0 => seq,
                _ => position as u64 + 1,
            };
            let name = if control & 0x20 != 0 && position == 0 {
                "not-a-number.seg".to_string()
            } else {
                format!("{seq:020}.seg")
            };
            std::fs::write(dir.join(name), segment).expect("write a segment");
        }
    }
    if control & 0x40 != 0 {
        // Files a journal directory may hold besides segments.
        std::fs::write(dir.join("journal.lock"), b"").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
    }
    let opts = options(control);
    let reader = Reader::<JournalEntry>::open(&dir, opts.clone()).expect("open a directory");
    let last = last_segment(&dir);

    let verified = reader.verify();
    if let Ok(report) = &verified {
        assert!(report.records >= report.snapshots);
        assert_eq!(report.first_seq.is_some(), report.records > 0);
        if let (Some(first), Some(last_seq)) = (report.first_seq, report.last_seq) {
            assert!(first <= last_seq);
        }
        if let Some(torn) = &report.torn_tail {
            assert_eq!(
                Some(&torn.segment),
                last.as_ref(),
                "torn tail not in the last segment"
            );
            let len = std::fs::metadata(&torn.segment).unwrap().len();
            assert_eq!(torn.offset + torn.bytes, len, "{torn:?}");
        }
    }

    // A full replay (every segment) agrees with `verify`.
    let full = reader.replay_from(0);
    if let Ok(mut replay) = full {
        let mut records = 0u64;
        let mut last_seq = None;
        let mut failed = None;
        for item in replay.by_ref() {
            assert!(failed.is_none(), "replay went on after {failed:?}");
            match item {
                Ok(record) => {
                    if let Some(prev) = last_seq {
                        assert!(record.seq > prev, "seq {} after {prev}", record.seq);
                    }
                    last_seq = Some(record.seq);
                    records += 1;
                }
                Err(JournalError::Decode { seq, .. }) => {
                    if let Some(prev) = last_seq {
                        assert!(seq > prev);
                    }
                    last_seq = Some(seq);
                }
                Err(e) => failed = Some(e),
            }
        }
        assert!(records <= rest.len() as u64 / 18 + 1);
        if let Ok(report) = &verified {
            assert!(failed.is_none(), "verify passed, replay failed: {failed:?}");
            assert_eq!(records, report.records);
            assert_eq!(last_seq, report.last_seq);
            assert_eq!(replay.torn_tail(), report.torn_tail.as_ref());
        }
    }

    // Replay from the newest snapshot: never panics, never yields after an error.
    if let Ok(replay) = reader.replay() {
        let mut ended = false;
        for item in replay {
            assert!(!ended, "replay went on after an error");
            if let Err(e) = item
                && !matches!(e, JournalError::Decode { .. })
            {
                ended = true;
            }
        }
    }

    // Recovery: a journal that verifies opens, the torn tail (if any) is cut, and what is left
    // verifies clean with the same records.
    if let Ok(report) = verified
        && control & 0x80 != 0
        && control & 0x20 == 0
    {
        let _ = std::fs::remove_file(dir.join("journal.lock"));
        let (journal, open) = Journal::<JournalEntry>::open(&dir, opts.clone())
            .unwrap_or_else(|e| panic!("verify passed ({report:?}) but open failed: {e}"));
        // A snapshot in parts whose last part is missing reads as records to a reader, but
        // open drops it whole (journal/README.md): then fewer records remain.
        let dropped_snapshot = open
            .truncated_tail
            .as_ref()
            .is_some_and(|t| t.reason.contains("snapshot written in parts"));
        if !dropped_snapshot {
            assert_eq!(open.truncated_tail, report.torn_tail);
        }
        journal.close().expect("close");
        let again = Reader::<JournalEntry>::open(&dir, opts)
            .unwrap()
            .verify()
            .expect("verifies after recovery");
        assert_eq!(again.torn_tail, None);
        if dropped_snapshot {
            assert!(again.last_seq <= report.last_seq);
        } else {
            assert_eq!(again.last_seq, report.last_seq);
        }
    }
});
