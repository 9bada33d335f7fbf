//! Cyrus's own locks, taken the way Cyrus takes them (formats/cyrus.md, "Locking"): whole-file
//! fcntl locks in Cyrus's order, mailbox name lock then `cyrus.index`, both shared. fcntl locks
//! are taken as Linux OFD locks, which conflict with Cyrus's classic fcntl locks but belong to
//! the open file, not the process. Servers built `--with-lock=flock` are served by
//! `LockMethod::Flock`. mailpack's own archive lock (fs2/flock) never touches these files.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LockMethod {
    /// POSIX record locks over the whole file (Cyrus's default build).
    #[default]
    Fcntl,
    /// BSD flock (Cyrus built with `--with-lock=flock`).
    Flock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// How long to wait for a lock Cyrus holds before reporting the mailbox busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockWait {
    Forever,
    For(Duration),
}

/// A held lock on an open file; released when dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    method: LockMethod,
    path: PathBuf,
}

impl FileLock {
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens and locks the file at `path`. Afterwards the path is checked to still name the
    /// locked file: Cyrus replaces `cyrus.index` by rename on repack, and a lock on the old
    /// inode protects nothing. `Ok(None)` if the file does not exist.
    pub fn lock_stable(
        path: &Path,
        mode: LockMode,
        method: LockMethod,
        wait: LockWait,
    ) -> Result<Option<FileLock>> {
        // Bounded: a file replaced on every attempt means something is badly wrong.
        for _ in 0..16 {
            let Some(file) = open_for(path, mode)? else {
                return Ok(None);
            };
            let lock = FileLock::acquire(file, path, mode, method, wait)?;
            let held = lock
                .file
                .metadata()
                .map_err(|e| Error::io("stat", path, e))?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(lock))
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", path, e)),
            }
        }
        Err(Error::Changed {
            path: path.to_path_buf(),
            detail: "the file was replaced every time it was locked".into(),
        })
    }

    /// Locks a Cyrus lock file, creating it (and its folders) if Cyrus has not yet, owned like
    /// the lock directory, so Cyrus can always open it later even when mailpack runs as root.
    pub fn lock_lockfile(
        path: &Path,
        lock_root: &Path,
        mode: LockMode,
        method: LockMethod,
        wait: LockWait,
    ) -> Result<FileLock> {
        let file = match open_for(path, LockMode::Exclusive)? {
            Some(f) => f,
            None => create_like(path, lock_root)?,
        };
        FileLock::acquire(file, path, mode, method, wait)
    }

    /// Locks a Cyrus lock file only if it exists: a reader that must not write to the spool
    /// (the agent) opens lock files and never creates them. `Ok(None)` when it is missing.
    pub fn lock_existing_lockfile(
        path: &Path,
        mode: LockMode,
        method: LockMethod,
        wait: LockWait,
    ) -> Result<Option<FileLock>> {
        match open_for(path, mode)? {
            Some(file) => FileLock::acquire(file, path, mode, method, wait).map(Some),
            None => Ok(None),
        }
    }

    fn acquire(
        file: File,
        path: &Path,
        mode: LockMode,
        method: LockMethod,
        wait: LockWait,
    ) -> Result<FileLock> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let blocking = wait == LockWait::Forever;
            match raw_lock(&file, method, Some(mode), blocking) {
                Ok(()) => {
                    return Ok(FileLock {
                        file,
                        method,
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if is_contended(&e) => {
                    let LockWait::For(limit) = wait else {
                        unreachable!("blocking locks wait")
                    };
                    if start.elapsed() >= limit {
                        return Err(Error::Busy {
                            path: path.to_path_buf(),
                        });
                    }
                    std::thread::sleep(pause.min(limit.saturating_sub(start.elapsed())));
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(Error::io("lock", path, e)),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = raw_lock(&self.file, self.method, None, false);
    }
}

/// Opens a file to lock: without blocking, and only if it is a regular file (a FIFO at a lock
/// or index path would otherwise block the open forever, with the outer locks held), not
/// through a symlink (Cyrus creates these files and replaces them by rename, never as links).
/// `Ok(None)` when it does not exist.
fn open_for(path: &Path, mode: LockMode) -> Result<Option<File>> {
    use super::file::{open, Follow};
    // F_RDLCK needs read access only: never open Cyrus's data files for writing.
    let write = mode == LockMode::Exclusive;
    Ok(open(path, write, Follow::No)?.map(|(file, _)| file))
}

fn is_contended(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
        || e.kind() == io::ErrorKind::WouldBlock
}

/// `mode: None` unlocks.
fn raw_lock(file: &File, method: LockMethod, mode: Option<LockMode>, wait: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    loop {
        let rc = match method {
            LockMethod::Fcntl => {
                // SAFETY: a zeroed flock is a valid value; every field the kernel reads is set
                // below, and l_pid must be 0 for OFD locks.
                let mut fl: libc::flock = unsafe { std::mem::zeroed() };
                fl.l_type = match mode {
                    Some(LockMode::Shared) => libc::F_RDLCK,
                    Some(LockMode::Exclusive) => libc::F_WRLCK,
                    None => libc::F_UNLCK,
                } as libc::c_short;
                fl.l_whence = libc::SEEK_SET as libc::c_short;
                let cmd = if wait {
                    libc::F_OFD_SETLKW
                } else {
                    libc::F_OFD_SETLK
                };
                // SAFETY: fd is open for the life of `file`; fl outlives the call.
                unsafe { libc::fcntl(fd, cmd, &fl as *const libc::flock) }
            }
            LockMethod::Flock => {
                let op = match mode {
                    Some(LockMode::Shared) => libc::LOCK_SH,
                    Some(LockMode::Exclusive) => libc::LOCK_EX,
                    None => libc::LOCK_UN,
                } | if wait { 0 } else { libc::LOCK_NB };
                // SAFETY: fd is open for the life of `file`.
                unsafe { libc::flock(fd, op) }
            }
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Creates a lock file (and missing folders below `root`) owned by `root`'s owner, mode 0600.
fn create_like(path: &Path, root: &Path) -> Result<File> {
    let owner = std::fs::metadata(root).map_err(|e| Error::io("stat", root, e))?;
    let parent = crate::io::parent_dir(path);
    if !parent.exists() {
        let rel = parent.strip_prefix(root).map_err(|_| {
            Error::config(
                root,
                format!("lock file {} is outside the lock directory", path.display()),
            )
        })?;
        let mut dir = root.to_path_buf();
        for part in rel.components() {
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => chown_like(&dir, &owner)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create", &dir, e)),
            }
        }
    }
    // Cyrus may create it in the meantime; open_private then just opens it.
    let (file, created) = crate::io::open_private(path)?;
    if created {
        chown_like(path, &owner)?;
    }
    Ok(file)
}

fn chown_like(path: &Path, owner: &std::fs::Metadata) -> Result<()> {
    let me = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    if me.uid() == owner.uid() && me.gid() == owner.gid() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
        .map_err(|e| Error::io("chown", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mailpack-lock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn ofd_locks_exclude_each_other_within_one_process() {
        let d = temp("ofd");
        let p = d.join("cyrus.index");
        std::fs::write(&p, b"x").unwrap();
        let shared =
            FileLock::lock_stable(&p, LockMode::Shared, LockMethod::Fcntl, LockWait::Forever)
                .unwrap()
                .unwrap();
        // A second shared lock is fine; an exclusive one must wait (classic fcntl locks would
        // let the same process through).
        let again = FileLock::lock_stable(
            &p,
            LockMode::Shared,
            LockMethod::Fcntl,
            LockWait::For(Duration::ZERO),
        )
        .unwrap();
        assert!(again.is_some());
        let busy = FileLock::lock_stable(
            &p,
            LockMode::Exclusive,
            LockMethod::Fcntl,
            LockWait::For(Duration::from_millis(20)),
        );
        assert!(matches!(busy, Err(Error::Busy { .. })), "{busy:?}");
        // Closing another handle of the same file keeps our locks (the classic fcntl trap).
        drop(File::open(&p).unwrap());
        drop(again);
        let busy = FileLock::lock_stable(
            &p,
            LockMode::Exclusive,
            LockMethod::Fcntl,
            LockWait::For(Duration::from_millis(20)),
        );
        assert!(matches!(busy, Err(Error::Busy { .. })));
        drop(shared);
        assert!(FileLock::lock_stable(
            &p,
            LockMode::Exclusive,
            LockMethod::Fcntl,
            LockWait::For(Duration::ZERO)
        )
        .unwrap()
        .is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_replaced_file_is_locked_again_at_its_new_inode() {
        let d = temp("replace");
        let p = d.join("cyrus.index");
        std::fs::write(&p, b"old").unwrap();
        let lock =
            FileLock::lock_stable(&p, LockMode::Shared, LockMethod::Fcntl, LockWait::Forever)
                .unwrap()
                .unwrap();
        std::fs::write(d.join("cyrus.index.NEW"), b"new").unwrap();
        std::fs::rename(d.join("cyrus.index.NEW"), &p).unwrap();
        drop(lock);
        let lock =
            FileLock::lock_stable(&p, LockMode::Shared, LockMethod::Fcntl, LockWait::Forever)
                .unwrap()
                .unwrap();
        assert_eq!(
            lock.file().metadata().unwrap().ino(),
            std::fs::metadata(&p).unwrap().ino()
        );
        assert!(FileLock::lock_stable(
            &d.join("absent"),
            LockMode::Shared,
            LockMethod::Fcntl,
            LockWait::Forever
        )
        .unwrap()
        .is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_lock_files_are_created_with_the_lock_directory_owner() {
        let d = temp("create");
        let p = d.join("user").join("alice").join("Sent.lock");
        let lock = FileLock::lock_lockfile(
            &p,
            &d,
            LockMode::Shared,
            LockMethod::Flock,
            LockWait::Forever,
        )
        .unwrap();
        let (root, file) = (
            std::fs::metadata(&d).unwrap(),
            std::fs::metadata(&p).unwrap(),
        );
        assert_eq!((file.uid(), file.gid()), (root.uid(), root.gid()));
        assert_eq!(file.mode() & 0o777, 0o600);
        drop(lock);
        let _ = std::fs::remove_dir_all(&d);
    }
}
