//! Replacing a small file atomically: a temporary file in the same directory, fsynced, renamed
//! over (or, for files that must never be replaced, linked into place), then the directory
//! fsynced, so a crash leaves either the old file or the new one.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Whether an existing file at the path may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    Allowed,
    /// Fail with `AlreadyExists` rather than replace (identity keys).
    Never,
}

pub fn write(path: &Path, bytes: &[u8], mode: u32, replace: Replace) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".fsnode-tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    match replace {
        Replace::Allowed => tmp.persist(path).map_err(|e| e.error)?,
        Replace::Never => tmp.persist_noclobber(path).map_err(|e| e.error)?,
    };
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_or_refuses_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write(&path, b"one", 0o600, Replace::Never).unwrap();
        let err = write(&path, b"two", 0o600, Replace::Never).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write(&path, b"three", 0o644, Replace::Allowed).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
