//! The file store (spec section 4, "Receiver storage" and "Completion"): where received files
//! go, their `.part` files, verified positioned writes, the whole-file check and the
//! non-overwriting rename into place; and, for senders, reading and hashing chunks.
//!
//! Every function here blocks; the node calls them from worker threads (`smol::unblock`).
//! Names are checked by [`crate::core::names`]; this module adds what needs the file system:
//! no component under the receive directory may be a symbolic link.

use std::fs::{DirBuilder, File, FileTimes, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::core::TransferId;
use crate::core::names::{self, NameError};

/// Mode of the directories the store creates (less the umask).
const DIR_MODE: u32 = 0o755;
/// Mode of a `.part` file while it is incomplete.
const PART_MODE: u32 = 0o600;
/// Read buffer for whole-file hashing.
const HASH_BUFFER: usize = 1 << 20;
/// How many `name (n).ext` variants [`PartFile::finalize`] tries before giving up.
const MAX_VARIANTS: u32 = 10_000;

/// Why a file could not be stored. Paths are relative to the receive directory (they are the
/// sender's own name, or a prefix of it), so the messages can go back as `reject` or `done`
/// reasons without revealing where the receiver keeps its files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{} is a symbolic link in the receive directory; refusing to store through it", path.display())]
    Symlink { path: PathBuf },
    #[error("{} exists and is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the whole-file SHA-256 does not match")]
    HashMismatch,
    #[error("no free name for {} after {MAX_VARIANTS} numbered variants", path.display())]
    NoFreeName { path: PathBuf },
}

/// The receive directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Directory syncs shared by the files finishing in the same directory.
    dir_syncs: Arc<DirSyncs>,
}

/// Group commit for directories: the renames of many files finishing at once in one
/// directory share one `fsync` of it, instead of one each (a directory of small files).
///
/// A caller's rename is done before it asks; it returns once an `fsync` of the directory that
/// *started* after it asked has succeeded, so its rename is durable. Whoever finds no sync
/// running starts one covering everyone who asked so far; the rest wait for it.
#[derive(Debug, Default)]
pub struct DirSyncs {
    dirs: std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<DirSync>>>,
    /// `fsync`s of directories run so far.
    runs: std::sync::atomic::AtomicU64,
}

/// Directories with a sync state kept at most; beyond it the idle ones are dropped.
const MAX_SYNCED_DIRS: usize = 1024;

#[derive(Debug, Default)]
struct DirSync {
    state: std::sync::Mutex<SyncRound>,
    finished: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct SyncRound {
    /// Requests so far (each caller's number is its place).
    asked: u64,
    /// Every request up to this one is covered by a successful sync.
    synced: u64,
    running: bool,
}

impl DirSyncs {
    /// Makes everything renamed in `dir` (opened as `fd`) before this call durable.
    pub fn sync(&self, dir: &Path, fd: &OwnedFd) -> io::Result<()> {
        let entry = {
            let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            if dirs.len() >= MAX_SYNCED_DIRS {
                dirs.retain(|_, d| Arc::strong_count(d) > 1);
            }
            Arc::clone(dirs.entry(dir.to_path_buf()).or_default())
        };
        entry.sync(fd, &self.runs)
    }

    /// Directory `fsync`s run so far (each covers every request made before it started).
    pub fn runs(&self) -> u64 {
        self.runs.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl DirSync {
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncRound> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sync(&self, fd: &OwnedFd, runs: &std::sync::atomic::AtomicU64) -> io::Result<()> {
        let mut round = self.lock();
        round.asked += 1;
        let mine = round.asked;
        loop {
            if round.synced >= mine {
                return Ok(());
            }
            if round.running {
                round = self.finished.wait(round).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            round.running = true;
            let covers = round.asked;
            drop(round);
            let result = rustix::fs::fsync(fd);
            runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            round = self.lock();
            round.running = false;
            if result.is_ok() {
                round.synced = round.synced.max(covers);
            }
            self.finished.notify_all();
            // A failure is this caller's; the others try again themselves.
            result?;
        }
    }
}

impl Store {
    /// Opens the receive directory, creating it (mode 0o755, and any missing parents) if needed.
    pub fn new(root: PathBuf) -> io::Result<Self> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&root)?;
        Ok(Self {
            root,
            dir_syncs: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates and deletes a file in the receive directory: one on a read-only file system,
    /// or that this user may not write, is found at start, not by every transfer that follows.
    pub fn check_writable(&self) -> io::Result<()> {
        let probe = self
            .root
            .join(format!(".fsnode-write-check-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)?;
        std::fs::remove_file(&probe)
    }

    /// The directory syncs shared by its files (for statistics and tests).
    pub fn dir_syncs(&self) -> &DirSyncs {
        &self.dir_syncs
    }

    /// Checks `name` (spec section 4, "Names") and resolves it to its final directory and `.part`
    /// file, creating missing directories (mode 0o755). Refuses a name that would leave the
    /// receive directory through a symbolic link: any existing component under the root that is
    /// a symbolic link — a directory, the final name or the `.part` file — is refused, wherever
    /// it points. (The root itself may be a symbolic link.)
    ///
    /// No check-then-use: each directory is opened relative to its parent's descriptor with
    /// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or `O_NOFOLLOW` on one component
    /// where the kernel lacks `openat2`), and the `.part` file is later opened, measured and
    /// deleted relative to the final directory's descriptor, so a symbolic link swapped in
    /// after the check is never followed.
    pub fn prepare(&self, name: &str, id: &TransferId) -> Result<PartFile, StoreError> {
        let components = names::check_name(name)?;
        let (final_name, directories) = components.split_last().expect("never empty");
        let mut dir = self.root.clone();
        let mut shown = PathBuf::new();
        let mut dir_fd = open_root(&self.root)?;
        for component in directories {
            dir.push(component);
            shown.push(component);
            dir_fd = open_directory_beneath(&dir_fd, component, &shown, &dir)?;
        }
        let part_name = names::part_name(final_name, id);
        for leaf in [final_name.as_str(), &part_name] {
            refuse_symlink(&dir_fd, leaf, &shown.join(leaf), &dir.join(leaf))?;
        }
        Ok(PartFile {
            dir_syncs: Arc::clone(&self.dir_syncs),
            part_path: dir.join(&part_name),
            dir,
            dir_fd: Arc::new(dir_fd),
            part_name,
            final_name: final_name.clone(),
            shown: shown.join(final_name),
        })
    }

    /// Free bytes for an unprivileged user on the receive directory's file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.root)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

/// The receive directory itself, as a descriptor names beneath it are resolved from (the root
/// may be a symbolic link; what is under it may not).
fn open_root(root: &Path) -> Result<OwnedFd, StoreError> {
    rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StoreError::Io {
        path: root.to_path_buf(),
        source: e.into(),
    })
}

/// Opens the directory `component` (one name, no `/`) beneath `parent`, creating it if
/// missing; refuses a symbolic link or a non-directory there, atomically with the open.
/// `shown`: its name in the receive directory (refusals say it); `path`: the whole path (I/O
/// errors say it).
fn open_directory_beneath(
    parent: &OwnedFd,
    component: &str,
    shown: &Path,
    path: &Path,
) -> Result<OwnedFd, StoreError> {
    let io_error = |e: Errno| StoreError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let mut created = false;
    loop {
        let opened = match rustix::fs::openat2(
            parent,
            component,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        ) {
            // Kernels before 5.6: one component with O_NOFOLLOW follows no link either.
            Err(Errno::NOSYS) => rustix::fs::openat(
                parent,
                component,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ),
            other => other,
        };
        match opened {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) if !created => {
                match rustix::fs::mkdirat(parent, component, Mode::from_raw_mode(DIR_MODE)) {
                    // Created concurrently (another transfer into the same directory): open it.
                    Ok(()) | Err(Errno::EXIST) => created = true,
                    Err(e) => return Err(io_error(e)),
                }
            }
            Err(Errno::LOOP | Errno::XDEV | Errno::NOTDIR) => {
                // Refused already; say why (the verdict above does not depend on this).
                let is_link = rustix::fs::statat(parent, component, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                return Err(if is_link {
                    StoreError::Symlink {
                        path: shown.to_path_buf(),
                    }
                } else {
                    StoreError::NotADirectory {
                        path: shown.to_path_buf(),
                    }
                });
            }
            Err(e) => return Err(io_error(e)),
        }
    }
}

/// Refuses `leaf` in `dir` if it is a symbolic link (the final name, the `.part` file). The
/// `.part` file is opened with `O_NOFOLLOW` besides, so a link made after this check is still
/// not followed; the final name is only ever the target of a no-replace rename, which does not
/// follow one either.
fn refuse_symlink(dir: &OwnedFd, leaf: &str, shown: &Path, path: &Path) -> Result<(), StoreError> {
    match rustix::fs::statat(dir, leaf, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            Err(StoreError::Symlink {
                path: shown.to_path_buf(),
            })
        }
        Ok(_) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// A file being received: its final directory and name, and its `.part` file.
#[derive(Clone, Debug)]
pub struct PartFile {
    /// The file's final directory (under the receive directory).
    pub dir: PathBuf,
    /// The sender's file name (the last component of its name); the file gets this name or a
    /// numbered variant of it.
    pub final_name: String,
    /// `<dir>/<final_name>.<first 8 hex digits of id>.part`
    pub part_path: PathBuf,
    /// The final directory, opened when the name was resolved: the `.part` file is reached
    /// relative to it, never by path, so nothing swapped in on the way is followed.
    dir_fd: Arc<OwnedFd>,
    /// `<final_name>.<first 8 hex digits of id>.part`, in `dir_fd`.
    part_name: String,
    /// The sender's name, relative to the receive directory, for error messages.
    shown: PathBuf,
    dir_syncs: Arc<DirSyncs>,
}

impl PartFile {
    /// Opens the `.part` file for writing, creating it (mode 0o600) if needed. Never truncates:
    /// a resumed transfer keeps what it holds. Does not follow a symbolic link.
    pub fn open(&self) -> io::Result<PartWriter> {
        let fd = rustix::fs::openat(
            &*self.dir_fd,
            self.part_name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(PART_MODE),
        )?;
        Ok(PartWriter {
            file: File::from(fd),
        })
    }

    /// The `.part` file's current size; 0 if there is none.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a size read from the file system, not a collection"
    )]
    pub fn len(&self) -> io::Result<u64> {
        match rustix::fs::statat(
            &*self.dir_fd,
            self.part_name.as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(u64::try_from(st.st_size).unwrap_or(0)),
            Err(Errno::NOENT) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes the `.part` file occupies on disk (holes take none); 0 if there is none.
    pub fn allocated(&self) -> io::Result<u64> {
        match rustix::fs::statat(
            &*self.dir_fd,
            self.part_name.as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(u64::try_from(st.st_blocks).unwrap_or(0) * 512),
            Err(Errno::NOENT) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the `.part` file; a missing one is fine.
    pub fn delete(&self) -> io::Result<()> {
        match rustix::fs::unlinkat(&*self.dir_fd, self.part_name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Completes the file (spec section 4, "Completion"): checks the `.part` file's SHA-256
    /// against `expected`, applies `mode` and `mtime` (unix seconds), syncs it, renames it to
    /// its final name without ever replacing an existing file (`name`, then `name (1).ext`,
    /// `name (2).ext`, …) and syncs the directory. Returns the final path.
    ///
    /// The mode and mtime are set on the open file before the rename, so the file appears under
    /// its final name already complete. On [`StoreError::HashMismatch`] nothing is renamed and
    /// the `.part` file is left for the caller to delete.
    pub fn finalize(
        &self,
        expected: &[u8; 32],
        mode: u32,
        mtime: Option<i64>,
    ) -> Result<PathBuf, StoreError> {
        self.finalize_hashed(expected, mode, mtime, WholeFileHash::new())
    }

    /// [`finalize`](Self::finalize), with the whole-file hash already run over the file's
    /// first `hashed.len()` bytes as they were written: only the rest is read back.
    pub fn finalize_hashed(
        &self,
        expected: &[u8; 32],
        mode: u32,
        mtime: Option<i64>,
        hashed: WholeFileHash,
    ) -> Result<PathBuf, StoreError> {
        self.finalize_checking(Some(expected), mode, mtime, hashed)
    }

    /// [`finalize_hashed`](Self::finalize_hashed), checking the hash only when one is
    /// `expected` (a LocalSend sender may give none).
    pub fn finalize_checking(
        &self,
        expected: Option<&[u8; 32]>,
        mode: u32,
        mtime: Option<i64>,
        hashed: WholeFileHash,
    ) -> Result<PathBuf, StoreError> {
        let io_error = |source| StoreError::Io {
            path: self.part_path.clone(),
            source,
        };
        let fd = rustix::fs::openat(
            &*self.dir_fd,
            self.part_name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error(e.into()))?;
        let file = File::from(fd);
        let actual = hashed.finish(&file).map_err(io_error)?;
        if expected.is_some_and(|expected| actual != *expected) {
            return Err(StoreError::HashMismatch);
        }
        file.set_permissions(Permissions::from_mode(mode & 0o7777))
            .map_err(io_error)?;
        if let Some(seconds) = mtime {
            file.set_times(FileTimes::new().set_modified(unix_time(seconds)))
                .map_err(io_error)?;
        }
        file.sync_all().map_err(io_error)?;
        drop(file);

        let Some(final_path) = self.rename_into_place(false).map_err(io_error)? else {
            return Err(StoreError::NoFreeName {
                path: self.shown.clone(),
            });
        };
        // Shared with the other files finishing in this directory now.
        self.dir_syncs
            .sync(&self.dir, &self.dir_fd)
            .map_err(io_error)?;
        Ok(final_path)
    }

    /// [`finalize_hashed`](Self::finalize_hashed) for a transfer that had finished before
    /// (its completion was not journaled when the node stopped): if the final name or one of
    /// its numbered variants already holds a regular file of the same size and SHA-256, that
    /// file is the result and the `.part` is deleted; otherwise it finalizes as usual.
    pub fn finalize_adopting(
        &self,
        expected: &[u8; 32],
        mode: u32,
        mtime: Option<i64>,
        hashed: WholeFileHash,
    ) -> Result<PathBuf, StoreError> {
        let io_error = |source| StoreError::Io {
            path: self.part_path.clone(),
            source,
        };
        let size = self.len().map_err(io_error)?;
        for name in self.final_names() {
            // Looked at relative to the directory the `.part` lives in, never by path: a
            // symbolic link swapped in on the way is not followed.
            let Ok(stat) =
                rustix::fs::statat(&*self.dir_fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                // The first free name: the finished file would have taken an earlier one.
                break;
            };
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
                || u64::try_from(stat.st_size).ok() != Some(size)
            {
                continue;
            }
            let same = rustix::fs::openat(
                &*self.dir_fd,
                name.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io::Error::from)
            .and_then(|fd| WholeFileHash::new().finish(&File::from(fd)))
            .is_ok_and(|sha| sha == *expected);
            if same {
                self.delete().map_err(io_error)?;
                rustix::fs::fsync(&*self.dir_fd).map_err(|e| io_error(e.into()))?;
                return Ok(self.dir.join(&name));
            }
        }
        self.finalize_hashed(expected, mode, mtime, hashed)
    }

    /// The names the file may get, in order: `final_name`, then its numbered variants up to
    /// [`MAX_VARIANTS`] (spec 4: the final name never overwrites an existing file).
    fn final_names(&self) -> impl Iterator<Item = String> + '_ {
        (0..=MAX_VARIANTS).map(|n| match n {
            0 => self.final_name.clone(),
            n => names::numbered(&self.final_name, n),
        })
    }

    /// Renames the `.part` file to the first free name of `final_name`, `numbered(final_name, 1)`,
    /// …; `None` if none of the first [`MAX_VARIANTS`] is free. Atomic no-replace rename
    /// (`renameat2(RENAME_NOREPLACE)`); on file systems without it, link then unlink, which
    /// cannot replace either (`use_link` starts there). Both names are relative to the final
    /// directory's descriptor, never paths: nothing swapped in on the way is followed.
    fn rename_into_place(&self, mut use_link: bool) -> io::Result<Option<PathBuf>> {
        let dir = &*self.dir_fd;
        let part = self.part_name.as_str();
        for name in self.final_names() {
            if !use_link {
                match rustix::fs::renameat_with(
                    dir,
                    part,
                    dir,
                    name.as_str(),
                    RenameFlags::NOREPLACE,
                ) {
                    Ok(()) => return Ok(Some(self.dir.join(&name))),
                    Err(Errno::EXIST) => continue,
                    Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => use_link = true,
                    Err(e) => return Err(e.into()),
                }
            }
            match rustix::fs::linkat(dir, part, dir, name.as_str(), AtFlags::empty()) {
                Ok(()) => {
                    rustix::fs::unlinkat(dir, part, AtFlags::empty())?;
                    return Ok(Some(self.dir.join(&name)));
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }
}

fn unix_time(seconds: i64) -> SystemTime {
    let offset = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        UNIX_EPOCH + offset
    } else {
        UNIX_EPOCH - offset
    }
}

/// The whole-file SHA-256 of a `.part` file, run over the chunks as they are written (they
/// arrive in order on an ordered channel), so that completing a large file does not read it
/// all back. It advances only over a contiguous prefix; whatever is not covered (a resumed
/// transfer's earlier bytes, chunks after an out-of-order one) is read from the file at the end.
#[derive(Clone, Debug, Default)]
pub struct WholeFileHash {
    hasher: Sha256,
    len: u64,
    /// A write landed elsewhere than at `len`: stop here, read the rest at the end.
    stopped: bool,
}

impl WholeFileHash {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes covered so far (from offset 0).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `data` was written (verified) at `offset`.
    pub fn wrote(&mut self, offset: u64, data: &[u8]) {
        if self.stopped || offset + data.len() as u64 <= self.len {
            // Already covered (a rewrite of the same verified chunk) or past a gap.
            return;
        }
        if offset != self.len {
            self.stopped = true;
            return;
        }
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    /// The file's SHA-256: the bytes covered, then `file` read from there to its end.
    fn finish(mut self, file: &File) -> io::Result<[u8; 32]> {
        let rest = file.metadata()?.len().saturating_sub(self.len);
        let mut buffer = vec![0; hash_buffer_for(rest)];
        let mut offset = self.len;
        loop {
            match file.read_at(&mut buffer, offset) {
                Ok(0) => return Ok(self.hasher.finalize().into()),
                Ok(n) => {
                    self.hasher.update(&buffer[..n]);
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// An open `.part` file taking verified chunks.
#[derive(Debug)]
pub struct PartWriter {
    file: File,
}

impl PartWriter {
    /// Writes `data` at `offset` if its SHA-256 is `expected`; returns `false` (having written
    /// nothing) if not.
    ///
    /// A chunk of zeros is not written: the `.part` has its full size from the start
    /// ([`PartWriter::reserve`]), so the range reads as zeros already, and a sparse source
    /// stays sparse here. What the range may hold instead is this same chunk, written by an
    /// earlier attempt (every chunk written was verified first), so skipping never leaves
    /// other bytes behind. Durable progress comes from the journal, never from the file, so a
    /// hole is never taken for data received.
    pub fn write_chunk(&self, offset: u64, data: &[u8], expected: &[u8; 32]) -> io::Result<bool> {
        if <[u8; 32]>::from(Sha256::digest(data)) != *expected {
            return Ok(false);
        }
        if !data.iter().all(|&b| b == 0) {
            self.file.write_all_at(data, offset)?;
        }
        Ok(true)
    }

    /// Gives the `.part` its final size (a hole where nothing was written), so that chunks of
    /// zeros need not be written; never shortens it. The size is made durable with the next
    /// [`PartWriter::sync`] (`fdatasync` covers a size change).
    pub fn reserve(&self, size: u64) -> io::Result<()> {
        if self.file.metadata()?.len() < size {
            self.file.set_len(size)?;
        }
        Ok(())
    }

    /// Writes `data` at `offset` (a LocalSend upload: no chunk hash to check).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Makes every write so far durable (`fdatasync`).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Sender side: chunk `index` of a file of `size` bytes cut into `chunk_size` chunks (the last
/// one shorter), and its SHA-256. An index past the last chunk is `InvalidInput` (an empty file
/// has no chunks); a file shorter than `size` is `UnexpectedEof`.
pub fn read_chunk(
    file: &File,
    index: u64,
    chunk_size: u32,
    size: u64,
) -> io::Result<(Vec<u8>, [u8; 32])> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    if chunk_size == 0 {
        return Err(invalid("chunk size 0"));
    }
    let offset = index
        .checked_mul(u64::from(chunk_size))
        .filter(|&offset| offset < size)
        .ok_or_else(|| invalid("chunk index past the end of the file"))?;
    let len = (size - offset).min(u64::from(chunk_size));
    let mut data = vec![0; usize::try_from(len).expect("at most a u32")];
    file.read_exact_at(&mut data, offset)?;
    let digest = Sha256::digest(&data).into();
    Ok((data, digest))
}

/// Sender side: the SHA-256 of a whole file.
pub fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    hash_reader(&File::open(path)?)
}

/// A read buffer for hashing `len` more bytes: [`HASH_BUFFER`] at most, and no more than the
/// file needs (a zeroed 1 MiB per small file was a large part of what a directory of small
/// files cost).
fn hash_buffer_for(len: u64) -> usize {
    usize::try_from(len.saturating_add(1))
        .unwrap_or(HASH_BUFFER)
        .clamp(4096, HASH_BUFFER)
}

fn hash_reader(mut file: &File) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; hash_buffer_for(file.metadata()?.len())];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;
    use std::fs;

    const ID: TransferId = TransferId([
        0xc0, 0xff, 0xee, 0x01, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
    ]);

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("receive")).unwrap();
        (dir, store)
    }

    /// Writes `data` into a fresh `.part` file for `name` as one chunk.
    fn receive(store: &Store, name: &str, data: &[u8]) -> PartFile {
        let part = store.prepare(name, &ID).unwrap();
        let writer = part.open().unwrap();
        assert!(writer.write_chunk(0, data, &sha(data)).unwrap());
        writer.sync().unwrap();
        part
    }

    #[test]
    fn new_creates_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        let store = Store::new(root.clone()).unwrap();
        assert!(root.is_dir());
        assert_eq!(store.root(), root);
        Store::new(root).unwrap(); // existing is fine
        fs::write(dir.path().join("file"), "").unwrap();
        assert!(Store::new(dir.path().join("file")).is_err());
    }

    #[test]
    fn prepare_checks_the_name() {
        let (_dir, store) = store();
        let err = store.prepare("../x", &ID).unwrap_err();
        assert!(matches!(err, StoreError::Name(NameError::DotDot)));
        assert_eq!(err.to_string(), "the name has a \"..\" component");
        assert!(matches!(
            store.prepare("/etc/passwd", &ID),
            Err(StoreError::Name(NameError::Absolute))
        ));
    }

    #[test]
    fn prepare_refuses_a_symlink_pointing_outside() {
        let (dir, store) = store();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        symlink(&elsewhere, store.root().join("evil")).unwrap();
        let err = store.prepare("evil/x", &ID).unwrap_err();
        assert!(
            matches!(&err, StoreError::Symlink { path } if path == Path::new("evil")),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "evil is a symbolic link in the receive directory; refusing to store through it"
        );
        assert!(store.prepare("evil/deeper/x", &ID).is_err());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    /// A directory swapped for a symbolic link to outside while files are being received into
    /// it (the check-then-use race): nothing is ever written, renamed or linked outside the
    /// receive directory, whatever the interleaving, because the `.part` is opened, renamed
    /// into place and synced relative to the directory descriptor that was resolved without
    /// following links.
    #[test]
    fn a_directory_swapped_for_a_symlink_mid_receive_never_leaks_outside() {
        let (dir, store) = store();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = store.root().to_path_buf();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (real, link, moved) = (root.join("d"), root.join("d.link"), root.join("d.real"));
        fs::create_dir(&real).unwrap();
        symlink(&outside, &link).unwrap();
        let swapper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut swaps = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && swaps < 200_000 {
                    // d: real directory -> symlink to outside -> real directory ...
                    let _ = fs::rename(&real, &moved);
                    let _ = fs::rename(&link, &real);
                    std::thread::yield_now();
                    let _ = fs::rename(&real, &link);
                    let _ = fs::rename(&moved, &real);
                    swaps += 1;
                }
            })
        };
        let mut received = 0;
        // 2,000 tries, and more (bounded) until one got through: on a loaded machine the
        // swapper can leave `d` a link for every one of the first 2,000.
        for i in 0..50_000u32 {
            if i >= 2_000 && received > 0 {
                break;
            }
            let name = format!("d/f{i}");
            let Ok(part) = store.prepare(&name, &ID) else {
                continue; // refused: a link was there when it was resolved
            };
            if let Ok(writer) = part.open() {
                let data = b"payload";
                if writer.write_chunk(0, data, &sha(data)).unwrap_or(false) {
                    drop(writer);
                    if part.finalize(&sha(data), 0o600, None).is_ok() {
                        received += 1;
                    }
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing written through the link ({received} files received inside)"
        );
        assert!(
            received > 0,
            "no file was finalized: the race was not exercised"
        );
    }

    #[test]
    fn prepare_refuses_a_symlink_anywhere() {
        let (_dir, store) = store();
        let root = store.root();
        fs::create_dir_all(root.join("a/b")).unwrap();
        // A link that stays inside the root is refused as well.
        symlink(root.join("a"), root.join("a/b/loop")).unwrap();
        let err = store.prepare("a/b/loop/x", &ID).unwrap_err();
        assert!(
            matches!(&err, StoreError::Symlink { path } if path == Path::new("a/b/loop")),
            "{err:?}"
        );
        // The final name itself, even a dangling link.
        symlink("/nonexistent", root.join("a/target.txt")).unwrap();
        let err = store.prepare("a/target.txt", &ID).unwrap_err();
        assert!(matches!(&err, StoreError::Symlink { path } if path == Path::new("a/target.txt")));
        // The .part file: writing through it would follow the link.
        let part = names::part_name("f", &ID);
        symlink("/tmp/whatever", root.join(&part)).unwrap();
        assert!(matches!(
            store.prepare("f", &ID),
            Err(StoreError::Symlink { .. })
        ));
        // A regular file where a directory is needed.
        fs::write(root.join("plain"), "").unwrap();
        assert!(matches!(
            store.prepare("plain/x", &ID),
            Err(StoreError::NotADirectory { .. })
        ));
    }

    #[test]
    fn prepare_creates_nested_directories_and_names_the_part_file() {
        let (_dir, store) = store();
        let part = store.prepare("photos/2024/beach.jpg", &ID).unwrap();
        let dir = store.root().join("photos/2024");
        assert!(dir.is_dir());
        let mode = fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o700, 0o700);
        assert_eq!(mode & !0o755, 0, "0o755 less the umask: {mode:o}");
        assert_eq!(part.dir, dir);
        assert_eq!(part.final_name, "beach.jpg");
        assert_eq!(part.part_path, dir.join("beach.jpg.c0ffee01.part"));
        assert!(!part.part_path.exists(), "prepare creates no file");
        // Again, with the directories existing.
        store.prepare("photos/2024/sunset.jpg", &ID).unwrap();
    }

    #[test]
    fn open_creates_a_private_part_file_and_writes_verified_chunks() {
        let (_dir, store) = store();
        let part = store.prepare("data.bin", &ID).unwrap();
        assert_eq!(part.len().unwrap(), 0);
        let writer = part.open().unwrap();
        let meta = fs::metadata(&part.part_path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Out of order: the second chunk first.
        assert!(writer.write_chunk(4, b"5678", &sha(b"5678")).unwrap());
        assert!(writer.write_chunk(0, b"1234", &sha(b"1234")).unwrap());
        writer.sync().unwrap();
        assert_eq!(fs::read(&part.part_path).unwrap(), b"12345678");
        assert_eq!(part.len().unwrap(), 8);
    }

    #[test]
    fn a_chunk_with_the_wrong_hash_writes_nothing() {
        let (_dir, store) = store();
        let part = store.prepare("data.bin", &ID).unwrap();
        let writer = part.open().unwrap();
        assert!(!writer.write_chunk(0, b"evil", &sha(b"good")).unwrap());
        assert!(!writer.write_chunk(100, b"evil", &[0; 32]).unwrap());
        assert_eq!(part.len().unwrap(), 0);
    }

    #[test]
    fn reopening_keeps_what_the_part_file_holds() {
        let (_dir, store) = store();
        let part = receive(&store, "resume.bin", b"first");
        let again = store.prepare("resume.bin", &ID).unwrap();
        let writer = again.open().unwrap();
        assert_eq!(again.len().unwrap(), 5);
        assert!(writer.write_chunk(5, b"second", &sha(b"second")).unwrap());
        assert_eq!(fs::read(&part.part_path).unwrap(), b"firstsecond");
    }

    /// The crash window at completion: the file was renamed into place, then the node stopped
    /// before journaling the completion; the resumed transfer receives the file again. It must
    /// end as the same file, not as `name (1).ext`, while a different file of the same name
    /// still gets a numbered variant.
    #[test]
    fn a_transfer_finished_before_a_crash_adopts_its_own_file() {
        let (_dir, store) = store();
        let first = receive(&store, "photo.jpg", b"pixels")
            .finalize(&sha(b"pixels"), 0o644, None)
            .unwrap();
        assert_eq!(first, store.root().join("photo.jpg"));
        // A stranger's file under the next name: same size, other bytes; skipped, not adopted.
        fs::write(store.root().join("photo (1).jpg"), b"PIXELS").unwrap();

        let again = receive(&store, "photo.jpg", b"pixels");
        let path = again
            .finalize_adopting(&sha(b"pixels"), 0o644, None, WholeFileHash::new())
            .unwrap();
        assert_eq!(path, first);
        assert!(!again.part_path.exists(), "the .part is gone");
        assert!(!store.root().join("photo (2).jpg").exists());
        assert_eq!(fs::read(&first).unwrap(), b"pixels");

        // Other contents under the same name: finalized as usual, never over the old file.
        let other = receive(&store, "photo.jpg", b"other!")
            .finalize_adopting(&sha(b"other!"), 0o644, None, WholeFileHash::new())
            .unwrap();
        assert_eq!(other, store.root().join("photo (2).jpg"));
        assert_eq!(fs::read(&first).unwrap(), b"pixels");
    }

    #[test]
    fn finalize_renames_and_applies_mode_and_mtime() {
        let (_dir, store) = store();
        let part = receive(&store, "docs/report.pdf", b"contents");
        let path = part
            .finalize(&sha(b"contents"), 0o640, Some(1_600_000_000))
            .unwrap();
        assert_eq!(path, store.root().join("docs/report.pdf"));
        assert_eq!(fs::read(&path).unwrap(), b"contents");
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(meta.mtime(), 1_600_000_000);
        assert!(!part.part_path.exists());
        assert_eq!(part.len().unwrap(), 0);
    }

    #[test]
    fn finalize_handles_an_empty_file_and_an_old_mtime() {
        let (_dir, store) = store();
        let part = store.prepare("empty", &ID).unwrap();
        part.open().unwrap();
        let path = part.finalize(&sha(b""), 0o600, Some(-86_400)).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(fs::metadata(&path).unwrap().mtime(), -86_400);
        let untouched = store.prepare("no-mtime", &ID).unwrap();
        untouched.open().unwrap();
        untouched.finalize(&sha(b""), 0o644, None).unwrap();
    }

    #[test]
    fn finalize_never_overwrites() {
        let (_dir, store) = store();
        let root = store.root().to_path_buf();
        fs::write(root.join("name.ext"), "original").unwrap();
        let first = receive(&store, "name.ext", b"one")
            .finalize(&sha(b"one"), 0o644, None)
            .unwrap();
        assert_eq!(first, root.join("name (1).ext"));
        let second = receive(&store, "name.ext", b"two")
            .finalize(&sha(b"two"), 0o644, None)
            .unwrap();
        assert_eq!(second, root.join("name (2).ext"));
        assert_eq!(fs::read(root.join("name.ext")).unwrap(), b"original");
        assert_eq!(fs::read(&first).unwrap(), b"one");
        assert_eq!(fs::read(&second).unwrap(), b"two");
        // A directory or a dangling link in the way is skipped too, never followed.
        fs::create_dir(root.join("README")).unwrap();
        symlink("/nonexistent/target", root.join("README (1)")).unwrap();
        let third = receive(&store, "README", b"three")
            .finalize(&sha(b"three"), 0o644, None)
            .unwrap();
        assert_eq!(third, root.join("README (2)"));
        assert!(!Path::new("/nonexistent/target").exists());
    }

    #[test]
    fn the_link_fallback_never_overwrites_either() {
        let (_dir, store) = store();
        let root = store.root().to_path_buf();
        fs::write(root.join("a.txt"), "original").unwrap();
        let part = receive(&store, "a.txt", b"new");
        let path = part.rename_into_place(true).unwrap().unwrap();
        assert_eq!(path, root.join("a (1).txt"));
        assert_eq!(fs::read(root.join("a.txt")).unwrap(), b"original");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!part.part_path.exists());
    }

    /// The running hash gives the same answer as reading the file, whether the chunks came in
    /// order, out of order, or after a resume (earlier bytes already in the `.part`).
    #[test]
    fn finalize_with_a_running_hash_checks_the_whole_file() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let orders: [&[usize]; 3] = [&[0, 1, 2, 3], &[0, 2, 1, 3], &[2, 3]];
        for (case, order) in orders.iter().enumerate() {
            let (_dir, store) = store();
            let part = store.prepare(&format!("f{case}.bin"), &ID).unwrap();
            let writer = part.open().unwrap();
            let mut hashed = WholeFileHash::new();
            if case == 2 {
                // Resumed: the first half is already in the .part, not seen by this hash.
                writer
                    .write_chunk(0, &data[..5000], &sha(&data[..5000]))
                    .unwrap();
            }
            for &i in *order {
                let range = i * 2500..(i + 1) * 2500;
                let chunk = &data[range.clone()];
                assert!(
                    writer
                        .write_chunk(range.start as u64, chunk, &sha(chunk))
                        .unwrap()
                );
                hashed.wrote(range.start as u64, chunk);
            }
            let bad = hashed.clone();
            assert!(matches!(
                part.finalize_hashed(&sha(b"other"), 0o644, None, bad),
                Err(StoreError::HashMismatch)
            ));
            let path = part
                .finalize_hashed(&sha(&data), 0o644, None, hashed)
                .unwrap();
            assert_eq!(fs::read(path).unwrap(), data);
        }
    }

    /// A file that is mostly zeros (a sparse source) arrives sparse: the `.part` has its full
    /// size from the start and chunks of zeros are not written, yet the file reads back
    /// whole and its SHA-256 matches; a zero chunk written again on a resume changes nothing.
    #[test]
    fn chunks_of_zeros_stay_holes() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, store) = store();
        let part = store.prepare("sparse.img", &ID).unwrap();
        let writer = part.open().unwrap();
        const CHUNK: usize = 256 * 1024;
        const SIZE: usize = 64 * CHUNK; // 16 MiB
        writer.reserve(SIZE as u64).unwrap();
        let mut whole = vec![0u8; SIZE];
        whole[5 * CHUNK..5 * CHUNK + 11].copy_from_slice(b"not a zero!");
        whole[SIZE - 3..].copy_from_slice(b"end");
        for (i, chunk) in whole.chunks(CHUNK).enumerate() {
            assert!(
                writer
                    .write_chunk((i * CHUNK) as u64, chunk, &sha(chunk))
                    .unwrap()
            );
        }
        // A resumed transfer writes a zero chunk again, and a data chunk again.
        let zeros = &whole[..CHUNK];
        assert!(writer.write_chunk(0, zeros, &sha(zeros)).unwrap());
        let data = &whole[5 * CHUNK..6 * CHUNK];
        assert!(
            writer
                .write_chunk((5 * CHUNK) as u64, data, &sha(data))
                .unwrap()
        );
        writer.sync().unwrap();
        drop(writer);
        assert_eq!(part.len().unwrap(), SIZE as u64);
        let allocated = part.allocated().unwrap();
        assert!(allocated < 1024 * 1024, "{allocated} bytes allocated");
        let path = part.finalize(&sha(&whole), 0o644, None).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), SIZE as u64);
        assert!(
            meta.blocks() * 512 < 1024 * 1024,
            "{} blocks",
            meta.blocks()
        );
        assert_eq!(fs::read(&path).unwrap(), whole);
    }

    #[test]
    fn finalize_with_the_wrong_hash_fails_and_renames_nothing() {
        let (_dir, store) = store();
        let part = receive(&store, "bad.bin", b"received");
        let err = part.finalize(&sha(b"sent"), 0o644, None).unwrap_err();
        assert!(matches!(err, StoreError::HashMismatch), "{err:?}");
        assert_eq!(err.to_string(), "the whole-file SHA-256 does not match");
        assert!(!store.root().join("bad.bin").exists());
        assert!(part.part_path.exists(), "the caller deletes the .part");
        part.delete().unwrap();
        assert!(!part.part_path.exists());
    }

    #[test]
    fn finalize_without_a_part_file_is_an_io_error_naming_the_file() {
        let (_dir, store) = store();
        let part = store.prepare("dir/gone.txt", &ID).unwrap();
        let err = part.finalize(&sha(b""), 0o644, None).unwrap_err();
        // The whole path of the `.part`: an operator can go and look.
        assert!(
            matches!(&err, StoreError::Io { path, source }
                if *path == part.part_path && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(part.part_path.starts_with(store.root().join("dir")));
        let named = format!("{}: ", part.part_path.display());
        assert!(err.to_string().starts_with(&named), "{err}");
    }

    #[test]
    fn delete_removes_the_part_file_and_tolerates_none() {
        let (_dir, store) = store();
        let part = receive(&store, "x", b"data");
        part.delete().unwrap();
        assert!(!part.part_path.exists());
        part.delete().unwrap();
        assert_eq!(part.len().unwrap(), 0);
    }

    #[test]
    fn read_chunk_cuts_the_file_and_hashes_each_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("source");
        let content: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &content).unwrap();
        let file = File::open(&path).unwrap();
        let size = content.len() as u64;
        let (first, first_hash) = read_chunk(&file, 0, 1024, size).unwrap();
        assert_eq!(first, content[..1024]);
        assert_eq!(first_hash, sha(&content[..1024]));
        let (middle, middle_hash) = read_chunk(&file, 1, 1024, size).unwrap();
        assert_eq!(middle, content[1024..2048]);
        assert_eq!(middle_hash, sha(&content[1024..2048]));
        let (last, last_hash) = read_chunk(&file, 2, 1024, size).unwrap();
        assert_eq!(last, content[2048..]);
        assert_eq!(last.len(), 452);
        assert_eq!(last_hash, sha(&content[2048..]));
        let past = read_chunk(&file, 3, 1024, size).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            read_chunk(&file, u64::MAX, 1024, size).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        // The file shrank since its size was taken.
        let shrunk = read_chunk(&file, 2, 1024, size + 10).unwrap_err();
        assert_eq!(shrunk.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(hash_file(&path).unwrap(), sha(&content));
    }

    #[test]
    fn read_chunk_of_an_empty_file_and_an_exact_multiple() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        fs::write(&empty, "").unwrap();
        let file = File::open(&empty).unwrap();
        assert_eq!(
            read_chunk(&file, 0, 1024, 0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "an empty file has no chunks"
        );
        assert_eq!(hash_file(&empty).unwrap(), sha(b""));
        let exact = dir.path().join("exact");
        fs::write(&exact, [7u8; 2048]).unwrap();
        let file = File::open(&exact).unwrap();
        let (last, _) = read_chunk(&file, 1, 1024, 2048).unwrap();
        assert_eq!(last.len(), 1024);
        assert!(read_chunk(&file, 2, 1024, 2048).is_err());
    }

    #[test]
    fn hash_file_streams_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large");
        let content = vec![0x5a; HASH_BUFFER * 2 + 17];
        fs::write(&path, &content).unwrap();
        assert_eq!(hash_file(&path).unwrap(), sha(&content));
    }

    #[test]
    fn free_bytes_is_positive() {
        let (_dir, store) = store();
        assert!(store.free_bytes().unwrap() > 0);
    }

    /// Files finishing at once in one directory share its `fsync`s: every finalize returns
    /// with its rename covered, with fewer directory syncs than files.
    #[test]
    fn files_finishing_together_share_directory_syncs() {
        let (_dir, store) = store();
        let store = Arc::new(store);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for n in 0..20 {
                        let data = format!("file {t} {n}").into_bytes();
                        let part = receive(&store, &format!("same/f-{t}-{n}"), &data);
                        part.finalize(&sha(&data), 0o644, None).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let files = fs::read_dir(store.root().join("same")).unwrap().count();
        assert_eq!(files, 160);
        let runs = store.dir_syncs().runs();
        assert!((1..=160).contains(&runs), "{runs} directory syncs");
    }
}
