//! File I/O inside one directory through a directory fd: every open is relative to the fd
//! and refuses symlinks, so a directory swapped for a symlink after we checked it, or a
//! symlinked or hard-linked auth.json, can never redirect a read or a write. Writes are
//! temp (O_EXCL, 0600) → fsync → rename → fsync(dir), so readers see the old or the new
//! file, never a torn one.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::core::authfile::MAX_AUTH_BYTES;

/// Why a directory or file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Refused for safety; says what is wrong and how to fix it.
    #[error("{path}: {problem}; fix: {fix}")]
    Unsafe { path: PathBuf, problem: String, fix: String },
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path}: lock is held by another process (gave up after {waited:?})")]
    Busy { path: PathBuf, waited: Duration },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl DirError {
    fn io(path: PathBuf, errno: Errno) -> Self {
        DirError::Io { path, source: io::Error::from(errno) }
    }
}

/// Identity of a file on disk (tests use it to prove a file was not replaced).
/// Bytes of a file read safely.
#[derive(Clone, PartialEq, Eq)]
pub struct FileRead {
    pub bytes: Vec<u8>,
}

/// A held flock; released on drop.
pub struct Lock {
    _guard: Flock<OwnedFd>,
    /// Whether another holder made us wait.
    pub waited: bool,
}

/// An open directory whose files we read and replace safely.
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
    owner: u32,
}

const TEMP_MARK: &str = ".tmp-caa-";
/// The suffix of [`SafeDir::write_swapped`]'s spare file.
const SPARE_MARK: &str = ".spare-caa";
/// How long a writer or reader of a reused inode waits for the directory's lock: the
/// holders only write a small file and fsync it.
const DIR_LOCK_WAIT: Duration = Duration::from_secs(1);

impl SafeDir {
    /// Open `path`, which must be a real directory (not a symlink) owned by `owner` and
    /// not writable by others.
    pub fn open(path: &Path, owner: u32) -> Result<SafeDir, DirError> {
        let unsafe_dir =
            |problem: String, fix: &str| DirError::Unsafe { path: path.to_path_buf(), problem, fix: fix.to_string() };
        let raw = openat(
            None,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ENOENT => DirError::Missing { path: path.to_path_buf() },
            // With O_DIRECTORY Linux reports a final symlink as ENOTDIR, not ELOOP.
            Errno::ELOOP | Errno::ENOTDIR if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) => {
                unsafe_dir(
                    "is a symlink".into(),
                    "make CODEX_HOME a real directory, or configure codex_home as the symlink's target",
                )
            }
            Errno::ENOTDIR => unsafe_dir("is not a directory".into(), "make it a directory"),
            e => DirError::io(path.to_path_buf(), e),
        })?;
        // SAFETY: openat just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let st = fstat(fd.as_raw_fd()).map_err(|e| DirError::io(path.to_path_buf(), e))?;
        if st.st_uid != owner {
            return Err(unsafe_dir(
                format!("is owned by uid {}, not the account's uid {owner}", st.st_uid),
                "chown it to the account's user",
            ));
        }
        if st.st_mode & 0o002 != 0 {
            return Err(unsafe_dir("is writable by others".into(), "chmod o-w on it"));
        }
        Ok(SafeDir { fd, path: path.to_path_buf(), owner })
    }

    /// Create `path` (mode 0700, parents as needed) for our own state, then open it.
    pub fn create_private(path: &Path) -> Result<SafeDir, DirError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| DirError::Io { path: path.to_path_buf(), source })?;
        SafeDir::open(path, nix::unistd::geteuid().as_raw())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn child(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn open_at(&self, name: &str, flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
        let raw = openat(
            Some(self.fd.as_raw_fd()),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::from_bits_truncate(mode),
        )?;
        // SAFETY: openat just returned this fd and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    fn refuse(&self, name: &str, problem: String, fix: &str) -> DirError {
        DirError::Unsafe { path: self.child(name), problem, fix: fix.to_string() }
    }

    /// Check that an open file is one we may read and replace.
    fn check_file(&self, name: &str, st: &FileStat) -> Result<(), DirError> {
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(self.refuse(name, "is not a regular file".into(), "replace it with the real file"));
        }
        if st.st_nlink > 1 {
            return Err(self.refuse(
                name,
                format!("has {} hard links", st.st_nlink),
                "give it a single link: cp it to a new file and mv that over it",
            ));
        }
        if st.st_uid != self.owner {
            return Err(self.refuse(
                name,
                format!("is owned by uid {}, not the account's uid {}", st.st_uid, self.owner),
                "chown it to the account's user",
            ));
        }
        if st.st_size as u64 > MAX_AUTH_BYTES {
            return Err(self.refuse(name, "is larger than 1 MiB".into(), "replace it with a real Codex auth.json"));
        }
        Ok(())
    }

    /// Read a file if it exists; refuses symlinks, FIFOs and devices, hard links, files
    /// of another owner and files over 1 MiB.
    pub fn read(&self, name: &str) -> Result<Option<FileRead>, DirError> {
        let fd = match self.open_at(name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => {
                return Err(self.refuse(name, "is a symlink".into(), "replace the symlink with the real file"));
            }
            Err(Errno::EACCES) => {
                // Unreadable is usually someone else's file (a hard link to it, say):
                // refuse it as unsafe, not as a transient error retried forever.
                let st = fstatat(Some(self.fd.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW);
                st.map_or(Ok(()), |st| self.check_file(name, &st))?;
                return Err(DirError::io(self.child(name), Errno::EACCES));
            }
            Err(e) => return Err(DirError::io(self.child(name), e)),
        };
        let st = fstat(fd.as_raw_fd()).map_err(|e| DirError::io(self.child(name), e))?;
        self.check_file(name, &st)?;
        let mut bytes = Vec::with_capacity(st.st_size as usize);
        File::from(fd)
            .take(MAX_AUTH_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| DirError::Io { path: self.child(name), source })?;
        if bytes.len() as u64 > MAX_AUTH_BYTES {
            return Err(self.refuse(
                name,
                "grew past 1 MiB while being read".into(),
                "replace it with a real Codex auth.json",
            ));
        }
        Ok(Some(FileRead { bytes }))
    }

    /// Take an exclusive flock on `name` (created 0600 if missing). With `wait` None a
    /// held lock is `Busy` at once; otherwise we poll until the deadline, so nothing can
    /// block us forever. A lock file that is not a regular file of the account's user (a
    /// directory, symlink or FIFO planted there) is refused: the commit could not use it.
    pub fn lock(&self, name: &str, wait: Option<Duration>) -> Result<Lock, DirError> {
        let not_a_lock = |what: &str| {
            self.refuse(name, format!("is {what}, not a lock file"), "remove it (it is recreated as needed)")
        };
        let fd =
            self.open_at(name, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NONBLOCK, 0o600).map_err(|e| match e {
                Errno::ELOOP => not_a_lock("a symlink"),
                Errno::EISDIR => not_a_lock("a directory"),
                Errno::EACCES => self.refuse(
                    name,
                    "cannot be opened by the account's user".into(),
                    "remove it or chown it to the account's user",
                ),
                e => DirError::io(self.child(name), e),
            })?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| DirError::io(self.child(name), e))?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(not_a_lock("a special file"));
        }
        if st.st_uid != self.owner {
            return Err(self.refuse(
                name,
                format!("is owned by uid {}, not the account's uid {}", st.st_uid, self.owner),
                "remove it or chown it to the account's user",
            ));
        }
        let started = Instant::now();
        let (mut fd, mut waited) = (fd, false);
        loop {
            match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
                Ok(guard) => {
                    return Ok(Lock { _guard: guard, waited });
                }
                Err((back, Errno::EWOULDBLOCK)) => {
                    let elapsed = started.elapsed();
                    match wait {
                        Some(limit) if elapsed < limit => {
                            (fd, waited) = (back, true);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => {
                            return Err(DirError::Busy { path: self.child(name), waited: elapsed });
                        }
                    }
                }
                Err((_, e)) => return Err(DirError::io(self.child(name), e)),
            }
        }
    }

    /// Replace `name` atomically with `bytes`, mode 0600, owned by whoever we run as
    /// (the account's user). On any error the old file is untouched and the temp removed.
    /// Temps of `name` that a killed writer left behind are removed first (see
    /// [`SafeDir::remove_old_temps`]): the sidecar, status.json and the rest do not
    /// accumulate them.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), DirError> {
        let reserved = self.reserve(name, 0)?;
        if let Some(fd) = reserved.fd.as_ref() {
            self.remove_old_temps(name, fd);
        }
        reserved.replace(bytes)
    }

    /// Remove temps of `name` last modified more than a minute before `fresh` (our own new
    /// temp: its mtime is "now" on this file system's clock). A write takes milliseconds,
    /// so an older temp belongs to a writer that was killed; a younger one may be another
    /// writer's in flight (these files are not always written under the cycle lock).
    fn remove_old_temps(&self, name: &str, fresh: &OwnedFd) -> usize {
        const STALE_AFTER_SECS: i64 = 60;
        let Ok(now) = fstat(fresh.as_raw_fd()) else { return 0 };
        let prefix = format!(".{name}{TEMP_MARK}");
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd())) else {
            return 0;
        };
        let dir = Some(self.fd.as_raw_fd());
        let old = |n: &str| {
            fstatat(dir, n, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| st.st_mtime < now.st_mtime - STALE_AFTER_SECS)
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix) && old(n))
            .filter(|n| unlinkat(dir, n.as_str(), UnlinkatFlags::NoRemoveDir).is_ok())
            .count()
    }

    /// Like [`SafeDir::write_atomic`], but through a spare file kept beside `name` (our
    /// private `.{name}.spare-caa`) instead of a new temp: the spare is overwritten, fsynced
    /// and exchanged with `name` (`RENAME_EXCHANGE`), so it then holds the previous version
    /// for the next write. No inode is created and none freed per write: on ext4 without a
    /// journal every new inode is allocated past all inodes freed in the last minutes, which
    /// under many accounts' churn was a quarter of a refresh's CPU. Writers take turns on the
    /// directory's flock, and so do readers through [`SafeDir::read_locked`], which see the old
    /// file or the new one (a reader without the lock that keeps the old file open across the
    /// *next* write could see that write torn). For files that hold no secret (a spare keeps
    /// the previous version); anything unusual about the spare (not ours, linked, special), or
    /// a lock held for over a second, falls back to [`SafeDir::write_atomic`].
    pub fn write_swapped(&self, name: &str, bytes: &[u8]) -> Result<(), DirError> {
        // Two writers of one spare would tear it: they take turns (see `with_dir_lock`).
        self.with_dir_lock(true, || self.swap_in(name, bytes)).unwrap_or_else(|| self.write_atomic(name, bytes))
    }

    fn swap_in(&self, name: &str, bytes: &[u8]) -> Result<(), DirError> {
        use nix::fcntl::{RenameFlags, renameat2};
        let spare = format!(".{name}{SPARE_MARK}");
        let Some(fd) = self.open_spare(&spare) else {
            let _ = unlinkat(Some(self.fd.as_raw_fd()), spare.as_str(), UnlinkatFlags::NoRemoveDir);
            return self.write_atomic(name, bytes);
        };
        let dir = Some(self.fd.as_raw_fd());
        write_fd(fd, bytes, true).map_err(|source| DirError::Io { path: self.child(name), source })?;
        match renameat2(dir, spare.as_str(), dir, name, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => {}
            // The first write: there is nothing to exchange with yet.
            Err(Errno::ENOENT) => {
                renameat(dir, spare.as_str(), dir, name).map_err(|e| DirError::io(self.child(name), e))?
            }
            Err(e) => return Err(DirError::io(self.child(name), e)),
        }
        fsync(self.fd.as_raw_fd()).map_err(|e| DirError::io(self.path.clone(), e))
    }

    /// Like [`SafeDir::read`], for a file written by [`SafeDir::write_swapped`]: the read
    /// takes turns with its writers, so it cannot meet the old inode being rewritten as the
    /// next spare.
    pub fn read_locked(&self, name: &str) -> Result<Option<FileRead>, DirError> {
        self.with_dir_lock(false, || self.read(name)).unwrap_or_else(|| self.read(name))
    }

    /// Run `f` holding this directory's flock, exclusive for a writer that reuses an inode
    /// (in place, or through the spare), shared for a reader of such files. Waits at most
    /// [`DIR_LOCK_WAIT`]; None if the lock stayed held (the caller then takes the path that
    /// needs no lock: a new temp file, or a plain read).
    fn with_dir_lock<R>(&self, exclusive: bool, f: impl FnOnce() -> R) -> Option<R> {
        let arg = if exclusive { FlockArg::LockExclusiveNonblock } else { FlockArg::LockSharedNonblock };
        let until = Instant::now() + DIR_LOCK_WAIT;
        let mut fd = self.fd.try_clone().ok()?;
        loop {
            match Flock::lock(fd, arg) {
                Ok(_guard) => return Some(f()),
                Err((back, Errno::EWOULDBLOCK)) if Instant::now() < until => {
                    fd = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => return None,
            }
        }
    }

    /// The spare of [`SafeDir::write_swapped`], created if missing; None unless it passes
    /// the checks of every file we read ([`SafeDir::check_file`]).
    fn open_spare(&self, spare: &str) -> Option<OwnedFd> {
        let fd = self.open_at(spare, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NONBLOCK, 0o600).ok()?;
        self.check_file(spare, &fstat(fd.as_raw_fd()).ok()?).is_ok().then_some(fd)
    }

    /// Like [`SafeDir::write_atomic`] without the two fsyncs, for files whose newest version
    /// is worth little after a crash (a fresh check's status, the sidecar, the schedule): a
    /// power cut may bring back the old one. When `bytes` differ from the file only in digits
    /// at the same places (a timestamp moved on), they are written over it in place
    /// ([`same_shape`]): replacing a file frees its old blocks, which on a file system mounted
    /// with `discard` waits for the disk in the rename — most of a fresh check's time on such
    /// a machine. Readers then see the old bytes, the new, or, if a read or a power cut tears
    /// the write, the same JSON with some digits of each; else the old file or the new one.
    pub fn replace_quietly(&self, name: &str, bytes: &[u8]) -> Result<(), DirError> {
        if self.with_dir_lock(true, || self.overwrite_same_shape(name, bytes)) == Some(true) {
            return Ok(());
        }
        self.reserve(name, 0)?.put(bytes, false)
    }

    /// Write `bytes` over `name` in place if it passes [`SafeDir::check_file`], is 0600 and
    /// its content has [`same_shape`]; false (nothing written) otherwise.
    fn overwrite_same_shape(&self, name: &str, bytes: &[u8]) -> bool {
        use std::os::unix::fs::FileExt;
        let Ok(fd) = self.open_at(name, OFlag::O_RDWR | OFlag::O_NONBLOCK, 0) else { return false };
        let Ok(st) = fstat(fd.as_raw_fd()) else { return false };
        if self.check_file(name, &st).is_err()
            || st.st_mode & 0o7777 != 0o600
            || st.st_size as u64 != bytes.len() as u64
        {
            return false;
        }
        let f = File::from(fd);
        let mut old = Vec::with_capacity(bytes.len());
        if (&f).take(bytes.len() as u64 + 1).read_to_end(&mut old).is_err() || !same_shape(&old, bytes) {
            return false;
        }
        // A failed write leaves digits of both, still the same shape; the replace then
        // puts the whole new file in its place.
        f.write_all_at(bytes, 0).is_ok()
    }

    /// Set aside room for a later [`Reserved::replace`] of `name`: an O_EXCL temp file
    /// with `size` bytes allocated now. Taken before a refresh token is spent, so a full
    /// file system fails here (no request sent) instead of after the POST.
    pub fn reserve(&self, name: &str, size: u64) -> Result<Reserved, DirError> {
        let dirfd = self.fd.try_clone().map_err(|source| DirError::Io { path: self.path.clone(), source })?;
        let (tmp, fd) = self.create_temp(name)?;
        let reserved = Reserved { dirfd, dir: self.path.clone(), target: name.to_string(), tmp, fd: Some(fd) };
        allocate(reserved.fd.as_ref().expect("just set"), size).map_err(|e| DirError::io(self.child(name), e))?;
        Ok(reserved)
    }

    /// Create `name` with `bytes` (0600, fsync'ed) unless it exists: the file appears
    /// whole or not at all, and of several writers racing exactly one creates it (a rename
    /// that never replaces). Returns whether we created it.
    pub fn write_new(&self, name: &str, bytes: &[u8]) -> Result<bool, DirError> {
        use nix::fcntl::{RenameFlags, renameat2};
        let (tmp, fd) = self.create_temp(name)?;
        let dir = Some(self.fd.as_raw_fd());
        let renamed =
            write_sync(fd, bytes).map_err(|source| DirError::Io { path: self.child(name), source }).and_then(|()| {
                match renameat2(dir, tmp.as_str(), dir, name, RenameFlags::RENAME_NOREPLACE) {
                    Ok(()) => Ok(true),
                    Err(Errno::EEXIST) => Ok(false),
                    Err(e) => Err(DirError::io(self.child(name), e)),
                }
            });
        if !matches!(renamed, Ok(true)) {
            let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        let created = renamed?;
        if created {
            fsync(self.fd.as_raw_fd()).map_err(|e| DirError::io(self.path.clone(), e))?;
        }
        Ok(created)
    }

    /// An O_EXCL temp file next to `name`; a squatted name is skipped, never reused.
    fn create_temp(&self, name: &str) -> Result<(String, OwnedFd), DirError> {
        for _ in 0..32 {
            let tmp = format!(".{name}{TEMP_MARK}{:016x}", fastrand::u64(..));
            match self.open_at(&tmp, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, 0o600) {
                Ok(fd) => return Ok((tmp, fd)),
                Err(Errno::EEXIST) | Err(Errno::ELOOP) => continue,
                Err(e) => return Err(DirError::io(self.child(name), e)),
            }
        }
        Err(self.refuse(name, "could not create a unique temp file".into(), "remove stray .*.tmp-caa-* files"))
    }

    /// Remove temp files a killed writer of ours left behind. Call only while holding
    /// the cycle lock, so no writer of ours is mid-write.
    pub fn remove_stale_temps(&self, name: &str) -> usize {
        let prefix = format!(".{name}{TEMP_MARK}");
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd())) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .filter(|n| unlinkat(Some(self.fd.as_raw_fd()), n.as_str(), UnlinkatFlags::NoRemoveDir).is_ok())
            .count()
    }
}

/// `size` bytes of real blocks for `fd`: fallocate, or zeros where the file system has no
/// fallocate. The content is overwritten from offset 0 and truncated before the rename.
fn allocate(fd: &OwnedFd, size: u64) -> Result<(), Errno> {
    use std::os::unix::fs::FileExt;
    if size == 0 {
        return Ok(());
    }
    match nix::fcntl::fallocate(fd.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, size as i64) {
        Err(Errno::EOPNOTSUPP) => {
            let f = File::from(fd.try_clone().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?);
            let errno = |e: io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(0));
            f.write_all_at(&vec![0u8; size as usize], 0).map_err(errno)?;
            f.sync_all().map_err(errno)
        }
        r => r,
    }
}

/// Room for one atomic replacement of a file in a [`SafeDir`] (see [`SafeDir::reserve`]).
/// Dropped unused, its temp file is removed. It keeps its own handle on the directory.
pub struct Reserved {
    dirfd: OwnedFd,
    dir: PathBuf,
    target: String,
    tmp: String,
    fd: Option<OwnedFd>,
}

impl Reserved {
    /// Write `bytes` into the reserved temp (0600), fsync, rename it over the target and
    /// fsync the directory. On error the target is untouched and the temp removed.
    pub fn replace(self, bytes: &[u8]) -> Result<(), DirError> {
        self.put(bytes, true)
    }

    fn put(mut self, bytes: &[u8], durable: bool) -> Result<(), DirError> {
        let fd = self.fd.take().expect("a reservation is replaced once");
        let dirfd = self.dirfd.as_raw_fd();
        let target = self.dir.join(&self.target);
        let is_auth = self.target == crate::core::contract::AUTH_FILE;
        write_fd(fd, bytes, durable)
            .and_then(|()| {
                if is_auth {
                    crate::sys::fault::point(crate::sys::fault::Step::AfterTempWrite);
                }
                renameat(Some(dirfd), self.tmp.as_str(), Some(dirfd), self.target.as_str()).map_err(io::Error::from)
            })
            .map_err(|source| DirError::Io { path: target, source })?;
        // Renamed: nothing left to remove on drop.
        self.tmp.clear();
        if is_auth {
            crate::sys::fault::point(crate::sys::fault::Step::AfterRename);
        }
        // The rename is durable only once the directory entry is on disk.
        if durable { fsync(dirfd).map_err(|e| DirError::io(self.dir.clone(), e)) } else { Ok(()) }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            let _ = unlinkat(Some(self.dirfd.as_raw_fd()), self.tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Whether `new` may be written over `old` in place: the same length, and every byte that
/// differs is an ASCII digit in both. Then every mix of the two (a read racing the write, a
/// write torn by a power cut) is made of the same tokens at the same places: when both are
/// JSON, so is any mix (a number's first digit is non-zero in both whenever it has more
/// than one, so no leading zero can appear), with the same structure and keys.
pub fn same_shape(old: &[u8], new: &[u8]) -> bool {
    old.len() == new.len() && old.iter().zip(new).all(|(a, b)| a == b || (a.is_ascii_digit() && b.is_ascii_digit()))
}

fn write_sync(fd: OwnedFd, bytes: &[u8]) -> io::Result<()> {
    write_fd(fd, bytes, true)
}

fn write_fd(fd: OwnedFd, bytes: &[u8], durable: bool) -> io::Result<()> {
    use std::io::Seek;
    // The umask may have narrowed or (via ACL defaults) widened the create mode.
    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o600))?;
    let mut f = File::from(fd);
    // Over the reserved blocks from the start; whatever the reservation held past our
    // length goes.
    f.seek(io::SeekFrom::Start(0))?;
    f.write_all(bytes)?;
    f.set_len(bytes.len() as u64)?;
    if durable { f.sync_all() } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn write_new_creates_once_and_never_replaces() {
        let t = tempfile::tempdir().unwrap();
        let d = SafeDir::open(t.path(), me()).unwrap();
        assert!(d.write_new("instance-id", b"first\n").unwrap());
        assert!(!d.write_new("instance-id", b"second\n").unwrap(), "an existing file is kept");
        assert_eq!(std::fs::read(t.path().join("instance-id")).unwrap(), b"first\n");
        let md = std::fs::metadata(t.path().join("instance-id")).unwrap();
        assert_eq!((md.mode() & 0o777, md.nlink()), (0o600, 1));
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "no temp left");
        // Racing writers: exactly one creates it, every one then reads the same content.
        let created: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let d = SafeDir::open(t.path(), me()).unwrap();
                    s.spawn(move || usize::from(d.write_new("raced", format!("{i}").as_bytes()).unwrap()))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(created, 1);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 2, "no temp left");
    }

    #[test]
    fn atomic_write_is_0600_and_replaces() {
        let t = tempfile::tempdir().unwrap();
        let d = SafeDir::open(t.path(), me()).unwrap();
        std::fs::write(t.path().join("auth.json"), b"old").unwrap();
        std::fs::set_permissions(t.path().join("auth.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
        d.write_atomic("auth.json", b"new").unwrap();
        assert_eq!(std::fs::read(t.path().join("auth.json")).unwrap(), b"new");
        let md = std::fs::metadata(t.path().join("auth.json")).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "no temp left");
    }

    fn inode(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    /// A quiet write that only moves digits keeps the inode (no block is freed); any other
    /// change, or a file that is not our private single-link one, is replaced as before.
    #[test]
    fn replace_quietly_overwrites_in_place_only_when_digits_move() {
        let t = tempfile::tempdir().unwrap();
        let d = SafeDir::open(t.path(), me()).unwrap();
        let p = t.path().join("status.json");
        d.replace_quietly("status.json", br#"{"at":"2026-12-01T19:59:59Z","n":10}"#).unwrap();
        let first = inode(&p);
        d.replace_quietly("status.json", br#"{"at":"2026-12-01T20:00:00Z","n":27}"#).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), br#"{"at":"2026-12-01T20:00:00Z","n":27}"#);
        assert_eq!(inode(&p), first, "written in place");
        // Another length, or a letter changed: a new file.
        d.replace_quietly("status.json", br#"{"at":"2026-12-01T20:00:00Z","n":270}"#).unwrap();
        let second = inode(&p);
        assert_ne!(second, first);
        d.replace_quietly("status.json", br#"{"at":"2026-12-01T20:00:00Z","m":270}"#).unwrap();
        assert_ne!(inode(&p), second);
        assert_eq!(std::fs::read(&p).unwrap(), br#"{"at":"2026-12-01T20:00:00Z","m":270}"#);
        // Not 0600, or hard-linked: replaced (which also fixes the mode and the link).
        let third = inode(&p);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        d.replace_quietly("status.json", br#"{"at":"2026-12-01T20:00:01Z","m":270}"#).unwrap();
        let md = std::fs::metadata(&p).unwrap();
        assert_ne!(md.ino(), third);
        assert_eq!(md.mode() & 0o777, 0o600);
        std::fs::hard_link(&p, t.path().join("elsewhere")).unwrap();
        d.replace_quietly("status.json", br#"{"at":"2026-12-01T20:00:02Z","m":270}"#).unwrap();
        assert_eq!(std::fs::read(t.path().join("elsewhere")).unwrap(), br#"{"at":"2026-12-01T20:00:01Z","m":270}"#);
        assert_eq!(std::fs::metadata(&p).unwrap().nlink(), 1);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 2, "no temp left");
    }

    /// Which JSON keys a document has, recursively: the structure a mix must keep.
    fn shape(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Object(m) => m.iter().map(|(k, v)| format!("{k}:{}", shape(v))).collect(),
            serde_json::Value::Array(a) => a.iter().map(shape).collect(),
            serde_json::Value::Number(_) => "n".into(),
            serde_json::Value::String(_) => "s".into(),
            other => other.to_string(),
        }
    }

    proptest::proptest! {
        /// The claim of [`same_shape`]: two JSON documents that differ only in digits mix
        /// (byte by byte, any choice) into a JSON document of the same shape.
        #[test]
        fn any_mix_of_same_shape_json_is_json_of_that_shape(
            ints in proptest::collection::vec(0u64..100_000_000_000, 1..6),
            floats in proptest::collection::vec(0.0f64..1e6, 0..3),
            stamps in proptest::collection::vec(0i64..4_000_000_000, 0..4),
            digits in proptest::collection::vec(proptest::prelude::any::<u8>(), 64),
            mask in proptest::collection::vec(proptest::prelude::any::<bool>(), 512),
        ) {
            let stamp = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap().to_rfc3339();
            let doc = serde_json::json!({
                "ints": ints, "floats": floats, "at": stamps.iter().map(|s| stamp(*s)).collect::<Vec<_>>(),
                "nested": {"n": ints[0], "neg": -(ints[0] as i64)},
            });
            let old = serde_json::to_vec_pretty(&doc).unwrap();
            let mut new = old.clone();
            for (k, b) in new.iter_mut().filter(|b| b.is_ascii_digit()).enumerate() {
                if digits[k % digits.len()] % 3 == 0 {
                    *b = b'0' + digits[(k + 1) % digits.len()] % 10;
                }
            }
            let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&new);
            proptest::prop_assume!(parsed.is_ok(), "a digit change made a number invalid by itself");
            proptest::prop_assert!(same_shape(&old, &new));
            let pick = |(i, (a, b)): (usize, (&u8, &u8))| if mask[i % mask.len()] { *a } else { *b };
            let mix: Vec<u8> = old.iter().zip(&new).enumerate().map(pick).collect();
            let mixed: serde_json::Value = serde_json::from_slice(&mix).expect("a mix is JSON");
            proptest::prop_assert_eq!(shape(&mixed), shape(&doc));
        }
    }

    #[test]
    fn same_shape_is_digits_only() {
        assert!(same_shape(b"{\"a\":12}", b"{\"a\":90}"));
        assert!(!same_shape(b"{\"a\":12}", b"{\"a\":1}"));
        assert!(!same_shape(b"{\"a\":12}", b"{\"b\":12}"));
        assert!(!same_shape(b"{\"a\":12}", b"{\"a\":1.}"));
        assert!(!same_shape(b"\"ab\"", b"\"a1\""));
    }

    /// A swapped write leaves the target and one spare; neither inode is new after the
    /// first two writes, and the target always holds the newest bytes, 0600.
    #[test]
    fn write_swapped_reuses_two_inodes_and_falls_back_on_a_strange_spare() {
        let t = tempfile::tempdir().unwrap();
        let d = SafeDir::open(t.path(), me()).unwrap();
        let (p, spare) = (t.path().join("status.json"), t.path().join(".status.json.spare-caa"));
        d.write_swapped("status.json", b"first, a longer one").unwrap();
        assert!(!spare.exists(), "the first write renames its spare into place");
        d.write_swapped("status.json", b"second").unwrap();
        let inodes = [inode(&p), inode(&spare)];
        assert_eq!(std::fs::read(&spare).unwrap(), b"first, a longer one");
        for (i, text) in ["third", "fourth, longer than the rest", "5"].iter().enumerate() {
            d.write_swapped("status.json", text.as_bytes()).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), text.as_bytes());
            let now = [inode(&p), inode(&spare)];
            assert_eq!(now, if i % 2 == 0 { [inodes[1], inodes[0]] } else { inodes });
            assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        }
        // A spare that is a link to another file is never written through.
        std::fs::remove_file(&spare).unwrap();
        std::fs::write(t.path().join("other"), b"keep me").unwrap();
        std::fs::hard_link(t.path().join("other"), &spare).unwrap();
        d.write_swapped("status.json", b"sixth").unwrap();
        assert_eq!(std::fs::read(t.path().join("other")).unwrap(), b"keep me");
        assert_eq!(std::fs::read(&p).unwrap(), b"sixth");
        std::os::unix::fs::symlink(t.path().join("other"), &spare).unwrap();
        d.write_swapped("status.json", b"seventh").unwrap();
        assert_eq!(std::fs::read(t.path().join("other")).unwrap(), b"keep me");
        assert_eq!(std::fs::read(&p).unwrap(), b"seventh");
    }

    /// Writers racing on one file (a one-shot command beside the daemon, say) through the
    /// spare and in place: every read sees one writer's whole bytes, never a mix of two.
    #[test]
    fn racing_swapped_and_in_place_writers_never_show_a_mix() {
        let t = tempfile::tempdir().unwrap();
        let versions: Vec<Vec<u8>> = (0..6)
            .map(|w| format!("{{\"writer\":\"{}\",\"at\":\"00\"}}", "abcdef".repeat(w + 1)).into_bytes())
            .collect();
        SafeDir::open(t.path(), me()).unwrap().write_swapped("s.json", &versions[0]).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            let reader = sc.spawn(|| {
                let mut reads = 0;
                let dir = SafeDir::open(t.path(), me()).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = dir.read_locked("s.json").unwrap().unwrap().bytes;
                    let whole = versions.iter().any(|v| {
                        v.len() == got.len() && same_shape(v, &got) // "at" may move in place
                    });
                    assert!(whole, "a torn read: {}", String::from_utf8_lossy(&got));
                    reads += 1;
                }
                reads
            });
            let writers: Vec<_> = (0..versions.len())
                .map(|w| {
                    let (dir, v) = (SafeDir::open(t.path(), me()).unwrap(), &versions[w]);
                    sc.spawn(move || {
                        for i in 0..200 {
                            if i % 3 == 0 {
                                let mut moved = v.clone();
                                let at = moved.len() - 4;
                                moved[at..at + 2].copy_from_slice(format!("{:02}", i % 100).as_bytes());
                                dir.replace_quietly("s.json", &moved).unwrap();
                            } else {
                                dir.write_swapped("s.json", v).unwrap();
                            }
                        }
                    })
                })
                .collect();
            writers.into_iter().for_each(|h| h.join().unwrap());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(reader.join().unwrap() > 0);
        });
    }

    #[test]
    fn refuses_symlink_hardlink_fifo_and_big_files() {
        let t = tempfile::tempdir().unwrap();
        let d = SafeDir::open(t.path(), me()).unwrap();
        std::fs::write(t.path().join("real"), b"{}").unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).unwrap();
        assert!(matches!(d.read("link"), Err(DirError::Unsafe { ref problem, .. }) if problem.contains("symlink")));
        std::fs::hard_link(t.path().join("real"), t.path().join("hard")).unwrap();
        assert!(matches!(d.read("hard"), Err(DirError::Unsafe { ref problem, .. }) if problem.contains("hard links")));
        nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(d.read("fifo"), Err(DirError::Unsafe { ref problem, .. }) if problem.contains("regular")));
        std::fs::write(t.path().join("big"), vec![b' '; (MAX_AUTH_BYTES + 1) as usize]).unwrap();
        assert!(matches!(d.read("big"), Err(DirError::Unsafe { ref problem, .. }) if problem.contains("1 MiB")));
        assert!(d.read("absent").unwrap().is_none());
    }

    #[test]
    fn refuses_symlinked_or_world_writable_dir() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        assert!(matches!(SafeDir::open(&t.path().join("link"), me()), Err(DirError::Unsafe { .. })));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = SafeDir::open(&real, me()).err().unwrap().to_string();
        assert!(e.contains("writable by others") && e.contains("chmod o-w"), "{e}");
        assert!(matches!(SafeDir::open(&real, me() + 1), Err(DirError::Unsafe { .. })));
        assert!(matches!(SafeDir::open(&t.path().join("nope"), me()), Err(DirError::Missing { .. })));
    }

    #[test]
    fn lock_is_exclusive_and_times_out() {
        let t = tempfile::tempdir().unwrap();
        let d = SafeDir::open(t.path(), me()).unwrap();
        let held = d.lock("l", None).unwrap();
        assert!(!held.waited);
        assert!(matches!(d.lock("l", None), Err(DirError::Busy { .. })));
        assert!(matches!(d.lock("l", Some(Duration::from_millis(60))), Err(DirError::Busy { .. })));
        drop(held);
        assert!(d.lock("l", Some(Duration::from_millis(60))).is_ok());
    }

    #[test]
    fn stale_temps_are_removed_and_squatted_names_skipped() {
        let t = tempfile::tempdir().unwrap();
        let d = SafeDir::open(t.path(), me()).unwrap();
        std::fs::write(t.path().join(".auth.json.tmp-caa-0000000000000001"), b"x").unwrap();
        assert_eq!(d.remove_stale_temps("auth.json"), 1);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    /// A killed writer of the sidecar (or status.json…) leaves a temp: the next write of the
    /// same file removes it once it is a minute old; a young one may be in flight: kept.
    #[test]
    fn write_atomic_removes_old_temps_of_the_same_file_only() {
        let t = tempfile::tempdir().unwrap();
        let d = SafeDir::open(t.path(), me()).unwrap();
        let old_time = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000); // 2001: long stale
        let temp = |n: &str, old: bool| {
            let f = std::fs::File::create(t.path().join(n)).unwrap();
            if old {
                f.set_modified(old_time).unwrap();
            }
        };
        temp(".auth_refresh_status.json.tmp-caa-0000000000000001", true);
        temp(".auth_refresh_status.json.tmp-caa-0000000000000002", false);
        temp(".status.json.tmp-caa-0000000000000003", true);
        d.write_atomic("auth_refresh_status.json", b"{}").unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".auth_refresh_status.json.tmp-caa-0000000000000002",
                ".status.json.tmp-caa-0000000000000003",
                "auth_refresh_status.json"
            ]
        );
    }
}
