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

    /// Like [`SafeDir::write_atomic`] without the two fsyncs: readers see the old file or
    /// the new one, never a torn one, but a power cut may bring back the old one. For files
    /// whose newest version is worth nothing after a crash (a fresh check's status).
    pub fn replace_quietly(&self, name: &str, bytes: &[u8]) -> Result<(), DirError> {
        self.reserve(name, 0)?.put(bytes, false)
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
