//! Tests of the journal as a whole: the API, damaged files, and properties of random streams.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scan::{FrameScan, ScanRules, Source};
use crate::segment::{self, SegmentFile};
use crate::{FRAME_HEADER_LEN, Journal, JournalError, Options, Reader, Record, RecordKind, Seq};

mod api;
mod damage;
mod props;
mod retention;

/// The record type of the tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Ev {
    Note(String),
    State { upto: Seq, text: String },
}

fn note(s: impl Into<String>) -> Ev {
    Ev::Note(s.into())
}

/// Small segments, so that a few records roll.
fn small() -> Options {
    Options {
        segment_bytes: 256,
        ..Options::default()
    }
}

fn open(dir: &Path, opts: Options) -> Journal<Ev> {
    match Journal::open(dir, opts) {
        Ok((journal, _)) => journal,
        Err(e) => panic!("open {}: {e:#?}", dir.display()),
    }
}

fn append_all(journal: &Journal<Ev>, records: impl IntoIterator<Item = Ev>) -> Vec<Seq> {
    let pending: Vec<_> = records
        .into_iter()
        .map(|r| journal.append(&r).expect("append"))
        .collect();
    pending
        .into_iter()
        .map(|p| p.wait().expect("durable"))
        .collect()
}

/// Collects a replay, panicking on any error.
fn records(replay: Result<crate::Replay<Ev>, JournalError>) -> Vec<Record<Ev>> {
    replay
        .expect("replay")
        .collect::<Result<Vec<_>, _>>()
        .expect("replayed records")
}

fn seqs(records: &[Record<Ev>]) -> Vec<Seq> {
    records.iter().map(|r| r.seq).collect()
}

/// Collects a replay up to its first error.
fn records_until_error(replay: crate::Replay<Ev>) -> (Vec<Record<Ev>>, Option<JournalError>) {
    let mut good = Vec::new();
    for item in replay {
        match item {
            Ok(r) => good.push(r),
            Err(e) => return (good, Some(e)),
        }
    }
    (good, None)
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir)
        .expect("list")
        .segments
        .into_iter()
        .map(|s| s.path)
        .collect()
}

fn reader(dir: &Path) -> Reader<Ev> {
    Reader::open(dir, Options::default()).expect("reader")
}

/// A frame's place in its segment file.
#[derive(Debug, Clone, Copy)]
struct FramePos {
    seq: Seq,
    kind: RecordKind,
    start: u64,
    end: u64,
}

/// The frames of one (intact) segment.
fn frames_of(path: &Path) -> Vec<FramePos> {
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    let first_seq = name[..20].parse().expect("segment name");
    let seg = SegmentFile {
        path: path.to_path_buf(),
        first_seq,
    };
    let rules = ScanRules {
        max_record_bytes: Options::default().max_record_bytes,
        tail_may_be_torn: false,
        buffer: 4096,
    };
    let mut scan = FrameScan::new(vec![Source::open(&seg, None).expect("open")], rules);
    let mut out = Vec::new();
    while let Some(f) = scan.next().expect("intact segment") {
        out.push(FramePos {
            seq: f.seq,
            kind: f.kind,
            start: f.offset,
            end: f.offset + (FRAME_HEADER_LEN + f.payload.len()) as u64,
        });
    }
    out
}

fn flip_bit(path: &Path, byte: u64, bit: u8) {
    let mut bytes = fs::read(path).expect("read");
    bytes[byte as usize] ^= 1 << bit;
    fs::write(path, bytes).expect("write");
}

fn truncate_file(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .expect("truncate");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}
