//! Exports to files (formats/restore.md, "Exports"): Maildir++ folders (`maildir`), mboxrd
//! files (`mbox`), or one `.eml` per message (`eml`), each a restore target. This module holds
//! what they share: where a mailbox goes (`export_levels`) and how a file is written. Every
//! path is built under the target from checked name levels, every directory on the way is
//! created or must already be a real directory (a symlink planted in the target is refused, not
//! followed), and files are created new: a re-run after an interruption skips what is already
//! there.

mod eml;
mod maildir;
mod mbox;

pub use eml::EmlExport;
pub use maildir::MaildirExport;
pub use mbox::MboxExport;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::plan::Outcome;
use crate::error::{Error, Result};
use crate::progress::Tally;
use crate::spool::index::IndexRecord;

/// One message to export, with what the format can carry of it.
pub struct ExportMessage<'a> {
    pub record: &'a IndexRecord,
    /// IMAP flag names (`\Seen`, `$Forwarded`, ...).
    pub flags: Vec<String>,
    pub uidvalidity: u32,
}

/// Creates `root/levels...` one component at a time. An existing component must be a real
/// directory: a symlink there could lead the restore out of its target.
pub fn ensure_dir(root: &Path, levels: &[String]) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    create_real_dir(&path)?;
    for level in levels {
        path.push(level);
        create_real_dir(&path)?;
    }
    Ok(path)
}

/// Something other than what an export makes sits at a path in its target: the caller's target
/// holds it, and it is left as it is.
fn not_followed(path: &Path, what: &str) -> Error {
    Error::refused(format!(
        "{} exists and is not {what} (a symlink is never followed)",
        path.display()
    ))
}

fn create_real_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
            if meta.file_type().is_dir() {
                Ok(())
            } else {
                Err(not_followed(path, "a directory"))
            }
        }
        Err(e) => Err(Error::io("create", path, e)),
    }
}

/// Writes `bytes` as the new file `path` (mode 0600) with `mtime`. `Ok(false)` when a previous,
/// interrupted run of the same export already wrote it: a regular file there whose bytes hash
/// to the same SHA-1 is kept. Anything else there (cut short by a crash before the export was
/// made durable, or planted) has its name removed and the file is created anew: a file is only
/// ever created exclusively (`O_EXCL`, `O_NOFOLLOW`), never opened for writing when it exists,
/// so a hard link or symlink at the name is never written through. Anything but a regular file
/// there (a symlink, a FIFO, a directory) is refused. Nothing is fsynced here: `sync_tree` makes
/// the whole export durable once at the end.
pub fn write_new(path: &Path, bytes: &[u8], mtime: Option<i64>) -> Result<bool> {
    // Two tries: the second follows removing what was there; something there again is a race
    // with another writer in the target, which is refused.
    for attempt in 0..2 {
        match create_exclusive(path) {
            Ok(mut file) => {
                file.write_all(bytes)
                    .map_err(|e| Error::io("write", path, e))?;
                if let Some(t) = mtime {
                    set_mtime(&file, path, t)?;
                }
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt == 0 => {
                if holds(path, bytes)? {
                    return Ok(false);
                }
                // Removing the name leaves any other link to that file as it was.
                fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
            }
            Err(e) => return Err(Error::io("create", path, e)),
        }
    }
    Err(Error::io(
        "create",
        path,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "it appeared again while the export replaced it; another process writes in the target",
        ),
    ))
}

fn create_exclusive(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Whether the regular file at `path` holds exactly `bytes`; an error when something other than
/// a regular file is there. Opened without following a symlink and without blocking on a FIFO,
/// and checked on the open descriptor, so what is read is what was checked.
fn holds(path: &Path, bytes: &[u8]) -> Result<bool> {
    use std::io::Read;
    let not_a_file = || not_followed(path, "a regular file");
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_a_file()),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(not_a_file());
    }
    if meta.len() != bytes.len() as u64 {
        return Ok(false);
    }
    // At most one byte more than expected is read, whatever the file grows to meanwhile.
    let mut there = Vec::with_capacity(bytes.len());
    file.take(bytes.len() as u64 + 1)
        .read_to_end(&mut there)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(crate::guid::Guid::of(&there) == crate::guid::Guid::of(bytes))
}

/// A file to write: where, what, and its mtime.
type WriteJob = (PathBuf, Vec<u8>, Option<i64>);

/// Writes files on a few threads. Creating a file is mostly kernel time, which more cores
/// share; reading and decoding the archive stays on the caller's thread, in order. The first
/// error stops nothing already queued but is returned by the next `submit` or by `finish`.
pub struct WritePool {
    tx: Option<std::sync::mpsc::SyncSender<WriteJob>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    state: std::sync::Arc<PoolState>,
}

#[derive(Default)]
struct PoolState {
    written: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    already_there: std::sync::atomic::AtomicU64,
    error: std::sync::Mutex<Option<Error>>,
}

impl WritePool {
    /// `progress` is bumped per file written.
    pub fn new(threads: usize, progress: Option<Arc<Tally>>) -> WritePool {
        use std::sync::{mpsc, Arc, Mutex};
        let (tx, rx) = mpsc::sync_channel::<WriteJob>(64);
        let rx = Arc::new(Mutex::new(rx));
        let state = Arc::new(PoolState::default());
        let workers = (0..threads.max(1))
            .map(|_| {
                let (rx, state, progress) = (rx.clone(), state.clone(), progress.clone());
                std::thread::spawn(move || loop {
                    let job = rx.lock().expect("no worker panics holding it").recv();
                    let Ok((path, bytes, mtime)) = job else {
                        return;
                    };
                    match write_new(&path, &bytes, mtime) {
                        Ok(true) => {
                            use std::sync::atomic::Ordering::Relaxed;
                            state.written.fetch_add(1, Relaxed);
                            state.bytes.fetch_add(bytes.len() as u64, Relaxed);
                            if let Some(progress) = &progress {
                                progress.message(bytes.len() as u64);
                            }
                        }
                        Ok(false) => drop(
                            state
                                .already_there
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        ),
                        Err(e) => {
                            let mut slot = state.error.lock().expect("no worker panics holding it");
                            slot.get_or_insert(e);
                        }
                    }
                })
            })
            .collect();
        WritePool {
            tx: Some(tx),
            workers,
            state,
        }
    }

    fn take_error(&self) -> Option<Error> {
        self.state
            .error
            .lock()
            .expect("no worker panics holding it")
            .take()
    }

    pub fn submit(&self, path: PathBuf, bytes: Vec<u8>, mtime: Option<i64>) -> Result<()> {
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        self.tx
            .as_ref()
            .expect("open until finish")
            .send((path, bytes, mtime))
            .expect("the writer threads receive until finish closes the queue");
        Ok(())
    }

    /// Waits for every queued file; returns how many were written, how many were there, and
    /// the bytes written.
    pub fn finish(mut self) -> Result<(u64, u64, u64)> {
        drop(self.tx.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        use std::sync::atomic::Ordering::Relaxed;
        Ok((
            self.state.written.load(Relaxed),
            self.state.already_there.load(Relaxed),
            self.state.bytes.load(Relaxed),
        ))
    }
}

/// Makes everything written under `root` durable with one `syncfs` of its filesystem, instead
/// of one fsync per message.
pub fn sync_tree(root: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(root).map_err(|e| Error::io("open", root, e))?;
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(Error::io("sync", root, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_mtime(file: &File, path: &Path, secs: i64) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .map_err(|e| Error::io("set the time of", path, e))
}

/// Escapes one level for a file name: `%` as `%25` and `.` as `%2E`, so a level is never `.` or
/// `..`, never hidden, never ends like a message file (`<uid>.eml`) or an mbox (`<name>.mbox`)
/// and never reads as two levels on an IMAP server whose separator is `.`. Maildir++ folders
/// are named as Dovecot names them instead (`maildir::dovecot_level`).
fn escape_level(level: &str) -> String {
    level.replace('%', "%25").replace('.', "%2E")
}

/// The path components of a mailbox in an `--eml`, `--mbox` or `--imap` target: its levels below
/// the owner (`safe_levels`) escaped by `escape_level`. The owner's INBOX is `INBOX`; a folder
/// that is itself named `INBOX` (in any case) directly below it has its first letter escaped
/// (`%49NBOX`), so it never shares the INBOX's place. The mapping is one-to-one: two mailboxes
/// never map to the same components.
pub fn export_levels(levels: &[String], inbox: bool) -> Vec<String> {
    if inbox {
        return vec!["INBOX".into()];
    }
    levels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let escaped = escape_level(l);
            if i == 0 && l.eq_ignore_ascii_case("INBOX") {
                format!("%{:02X}{}", l.as_bytes()[0], &escaped[1..])
            } else {
                escaped
            }
        })
        .collect()
}

/// A pool sized to the machine, made when the first file is queued.
fn writer_pool<'p>(slot: &'p mut Option<WritePool>, out: &Outcome) -> &'p WritePool {
    slot.get_or_insert_with(|| {
        WritePool::new(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            out.progress.clone(),
        )
    })
}

/// Waits for the pool's files, counts them, and makes the tree under `root` durable.
fn finish_export(pool: Option<WritePool>, root: &Path, out: &mut Outcome) -> Result<()> {
    if let Some(pool) = pool {
        let (written, there, bytes) = pool.finish()?;
        out.messages_written += written;
        out.messages_already_there += there;
        out.bytes_written += bytes;
    }
    if root.exists() {
        sync_tree(root)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_in_the_target_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("mailpack-export-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/tmp", dir.join("evil")).unwrap();
        assert!(ensure_dir(&dir, &["evil".into(), "x".into()]).is_err());
        std::os::unix::fs::symlink("/etc/passwd", dir.join("f")).unwrap();
        let f = dir.join("f");
        assert!(write_new(&f, b"x", None).is_err());
        // A file cut short by a crash is written again; a complete one is kept.
        let g = dir.join("g");
        fs::write(&g, b"hal").unwrap();
        assert!(write_new(&g, b"half a message", None).unwrap());
        assert!(!write_new(&g, b"half a message", None).unwrap());
        assert_eq!(fs::read(&g).unwrap(), b"half a message");
        assert_ne!(fs::read("/etc/passwd").unwrap(), b"x");
        // A hard link at the name is replaced, not written through.
        let outside = dir.join("outside");
        fs::write(&outside, b"precious").unwrap();
        let h = dir.join("h");
        fs::hard_link(&outside, &h).unwrap();
        assert!(write_new(&h, b"exported", None).unwrap());
        assert_eq!(fs::read(&h).unwrap(), b"exported");
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn export_levels_keep_every_mailbox_apart() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(export_levels(&l(&["INBOX"]), true), l(&["INBOX"]));
        assert_eq!(export_levels(&l(&["INBOX"]), false), l(&["%49NBOX"]));
        assert_eq!(
            export_levels(&l(&["inbox", "INBOX"]), false),
            l(&["%69nbox", "INBOX"])
        );
        assert_eq!(export_levels(&l(&["a.b"]), false), l(&["a%2Eb"]));
        assert_eq!(export_levels(&l(&["a%2Eb"]), false), l(&["a%252Eb"]));
        assert_eq!(
            export_levels(&l(&["..", "7.eml"]), false),
            l(&["%2E%2E", "7%2Eeml"])
        );
    }
}
