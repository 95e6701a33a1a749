//! Segment files: names, the 32-byte header, listing a directory, creating a segment durably.
//!
//! A segment is named `NNNNNNNNNNNNNNNNNNNN.seg`, the zero-padded (20 digits) sequence number of
//! the first record it holds, and starts with this header:
//!
//! | bytes  | field                                  |
//! |--------|----------------------------------------|
//! | 0..8   | magic `b"FSNJRNL\0"`                   |
//! | 8..12  | format version, u32 little-endian (1)  |
//! | 12..20 | first sequence number, u64 LE          |
//! | 20..32 | reserved, zero                         |

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::Seq;
use crate::error::JournalError;
use crate::error::OpFailure;

/// The first eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"FSNJRNL\0";
/// The format version this build writes and the newest it reads. Version 2 added snapshots in
/// parts (frame kind 3); version 1 segments are read unchanged.
pub const VERSION: u32 = 2;
/// Length of the segment header in bytes.
pub const HEADER_LEN: u64 = 32;

const SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".seg.tmp";
const NAME_DIGITS: usize = 20;

/// The segment file name for a segment whose first record is `first_seq`.
pub(crate) fn file_name(first_seq: Seq) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

/// Encodes a segment header.
pub(crate) fn encode_header(first_seq: Seq) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// Decodes and checks a segment header; returns the first sequence number it declares.
pub(crate) fn decode_header(
    segment: &Path,
    h: &[u8; HEADER_LEN as usize],
) -> Result<Seq, JournalError> {
    if h[0..8] != MAGIC {
        return Err(JournalError::corrupt(
            segment,
            0,
            "bad segment magic (not an fsnode journal segment, or its header is damaged)",
        ));
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version > VERSION {
        return Err(JournalError::UnsupportedVersion {
            segment: segment.to_path_buf(),
            found: version,
            supported: VERSION,
        });
    }
    if version == 0 {
        return Err(JournalError::corrupt(
            segment,
            8,
            "segment format version 0 does not exist",
        ));
    }
    if h[20..].iter().any(|&b| b != 0) {
        return Err(JournalError::corrupt(
            segment,
            20,
            "reserved header bytes are not zero",
        ));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[12..20]);
    let first_seq = u64::from_le_bytes(seq);
    if first_seq == 0 {
        return Err(JournalError::corrupt(
            segment,
            12,
            "segment header declares first seq 0",
        ));
    }
    Ok(first_seq)
}

/// A segment file found in a journal directory.
#[derive(Debug, Clone)]
pub(crate) struct SegmentFile {
    /// Full path of the file.
    pub path: PathBuf,
    /// First sequence number, from the file name.
    pub first_seq: Seq,
}

/// What a directory listing found.
pub(crate) struct Listing {
    /// Segments sorted by first sequence number.
    pub segments: Vec<SegmentFile>,
    /// Leftover temporary files of an interrupted segment creation.
    pub temporaries: Vec<PathBuf>,
}

/// Lists the segment files of a journal directory, sorted by first sequence number.
///
/// Files that do not end in `.seg` (the lock file, `.seg.tmp` leftovers, anything an operator
/// put there) are not segments. A `.seg` file whose name is not 20 digits is reported as corrupt
/// rather than ignored, so that a renamed segment never silently drops records.
pub(crate) fn list(dir: &Path) -> Result<Listing, JournalError> {
    let mut segments = Vec::new();
    let mut temporaries = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            temporaries.push(entry.path());
            continue;
        }
        let Some(stem) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        let path = entry.path();
        let first_seq = parse_stem(stem).ok_or_else(|| {
            JournalError::corrupt(
                &path,
                0,
                "segment file name is not a 20-digit sequence number above zero",
            )
        })?;
        segments.push(SegmentFile { path, first_seq });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(Listing {
        segments,
        temporaries,
    })
}

fn parse_stem(stem: &str) -> Option<Seq> {
    if stem.len() != NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().filter(|&s| s > 0)
}

/// Creates segment `first_seq` in `dir` durably: the header is written to a temporary file,
/// which is preallocated, fsynced and renamed into place, and then the directory is fsynced.
/// A segment file therefore never exists without its complete header.
///
/// Returns the open file (read + write) and its path.
pub(crate) fn create(
    dir: &Path,
    first_seq: Seq,
    preallocate: u64,
) -> Result<(File, PathBuf), OpFailure> {
    let name = file_name(first_seq);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let fail = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: io::Error| OpFailure {
            path: p,
            op,
            source: e,
        }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(fail("create segment", &tmp))?;
    file.write_all(&encode_header(first_seq))
        .map_err(fail("write segment header", &tmp))?;
    if preallocate > 0 {
        // An optimisation only: a file system without fallocate still gets a correct segment.
        let _ = preallocate_range(&file, HEADER_LEN, preallocate);
    }
    file.sync_all().map_err(fail("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(fail("rename segment", &tmp))?;
    sync_dir(dir).map_err(fail("fsync directory", dir))?;
    Ok((file, path))
}

/// Extends the file to cover `offset..offset + len` with allocated, zero-reading blocks.
pub(crate) fn preallocate_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len)
        .map_err(io::Error::from)
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence() {
        assert_eq!(file_name(1), "00000000000000000001.seg");
        assert_eq!(parse_stem("00000000000000000042"), Some(42));
        assert_eq!(parse_stem("0000000000000000042"), None);
        assert_eq!(parse_stem("00000000000000000000"), None);
        assert_eq!(parse_stem("0000000000000000004x"), None);
        assert_eq!(parse_stem(&format!("{:020}", u64::MAX)), Some(u64::MAX));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let p = Path::new("x.seg");
        let h = encode_header(77);
        assert_eq!(decode_header(p, &h).ok(), Some(77));

        let mut bad = h;
        bad[0] ^= 1;
        assert!(matches!(
            decode_header(p, &bad),
            Err(JournalError::Corrupt { offset: 0, .. })
        ));

        let mut v1 = h;
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            decode_header(p, &v1).ok(),
            Some(77),
            "version 1 segments still read"
        );

        let mut v2 = h;
        v2[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            decode_header(p, &v2),
            Err(JournalError::UnsupportedVersion {
                found: 3,
                supported: 2,
                ..
            })
        ));

        let mut reserved = h;
        reserved[31] = 1;
        assert!(matches!(
            decode_header(p, &reserved),
            Err(JournalError::Corrupt { offset: 20, .. })
        ));
    }
}
