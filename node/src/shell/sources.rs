//! The sender's side of `fsnode send`: turns the operator's paths into the files to send, with
//! the facts the protocol's `start` carries (relative name, size, mode, mtime, mime) and, for
//! small files, the whole-file SHA-256 for `end`. Blocking IO: the node runs it on a worker
//! thread.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::core::names;
use crate::shell::store;

/// Files in one `send` request at most (a directory with more is refused, not truncated).
pub const MAX_FILES_PER_REQUEST: usize = 100_000;

/// Files up to this size are hashed before they are queued (a few milliseconds each). Larger
/// ones are queued unhashed and hashed while their first chunks go out, since `end` is the
/// only message that needs the hash: on a 1 GiB file that hides ~0.7 s of SHA-256 behind the
/// transfer instead of making the operator wait for it before the first byte moves.
pub const HASH_BEFORE_QUEUEING_MAX: u64 = 4 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    /// The name the receiver sees: the file name, or `dir/…/file` for a directory's files.
    pub name: String,
    pub size: u64,
    pub mode: u32,
    pub mtime: Option<i64>,
    pub mime: String,
    /// `None` for files over [`HASH_BEFORE_QUEUEING_MAX`], hashed later.
    pub sha256: Option<[u8; 32]>,
}

/// Every regular file named by `paths` (directories recursively, named relative to the
/// directory's parent so the receiver recreates the directory). Symbolic links are not
/// followed inside directories.
pub fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
            walk(path, &base, &mut files)?;
        } else if meta.is_file() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("{} has no UTF-8 file name", path.display()))?
                .to_owned();
            files.push(facts(path, name, &meta)?);
        } else {
            bail!("{} is neither a file nor a directory", path.display());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, base: &Path, files: &mut Vec<SourceFile>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            walk(&path, base, files)?;
        } else if meta.is_file() {
            if files.len() >= MAX_FILES_PER_REQUEST {
                bail!("more than {MAX_FILES_PER_REQUEST} files in one send; send fewer at a time");
            }
            let relative = path.strip_prefix(base).unwrap_or(&path);
            let name = relative
                .to_str()
                .with_context(|| format!("{} is not UTF-8", path.display()))?
                .to_owned();
            files.push(facts(&path, name, &meta)?);
        }
    }
    Ok(())
}

fn facts(path: &Path, name: String, meta: &fs::Metadata) -> anyhow::Result<SourceFile> {
    names::check_name(&name)
        .with_context(|| format!("{} cannot be sent under the name {name:?}", path.display()))?;
    let sha256 = if meta.len() <= HASH_BEFORE_QUEUEING_MAX {
        Some(store::hash_file(path).with_context(|| format!("cannot read {}", path.display()))?)
    } else {
        // Still readable now, so that an unreadable file is refused at once, not later.
        fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        None
    };
    Ok(SourceFile {
        path: path.to_path_buf(),
        mime: mime_guess::from_path(path)
            .first_or_octet_stream()
            .essence_str()
            .to_owned(),
        name,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        mtime: Some(meta.mtime()),
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn a_directory_sends_its_files_with_relative_names() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("photos");
        fs::create_dir_all(dir.join("2026")).unwrap();
        fs::write(dir.join("a.jpg"), b"jpeg").unwrap();
        fs::write(dir.join("2026/b.txt"), b"text").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        let files = collect(&[dir]).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["photos/2026/b.txt", "photos/a.jpg"]);
        assert_eq!(files[1].mime, "image/jpeg");
        assert_eq!(files[1].size, 4);
        assert_eq!(
            files[1].sha256,
            Some(<[u8; 32]>::from(Sha256::digest(b"jpeg")))
        );
    }

    #[test]
    fn large_files_are_queued_unhashed() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.bin");
        let file = fs::File::create(&big).unwrap();
        file.set_len(HASH_BEFORE_QUEUEING_MAX + 1).unwrap();
        let small = dir.path().join("small.bin");
        fs::write(&small, vec![0; HASH_BEFORE_QUEUEING_MAX as usize]).unwrap();
        let files = collect(&[big, small]).unwrap();
        assert_eq!(files[0].sha256, None);
        assert!(files[1].sha256.is_some());
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        let err = collect(&[PathBuf::from("/nonexistent/file")]).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/file"));
    }
}
