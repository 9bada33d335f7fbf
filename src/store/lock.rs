//! The writer lock: an exclusive flock on `<user>.lock` (formats/archive.md section 7). The kernel
//! drops it when the process dies, so there is never a stale lock to clean up. This is mailpack's
//! own lock; Cyrus's files are never locked with it.

use std::fs::File;
use std::path::Path;

use fs2::FileExt;

use crate::error::{Error, Result};
use crate::io::{fsync_dir, open_private, parent_dir, Faults};

pub struct WriterLock {
    file: File,
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // Unlock explicitly: a flock belongs to the open file description, which a child
        // forked by another thread shares until it execs, so closing our handle alone could
        // leave the archive locked for a moment after we are done.
        let _ = FileExt::unlock(&self.file);
    }
}

fn still_named(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
        _ => false,
    }
}

/// What taking the writer lock does when another writer holds it. (Cyrus's own locks have their
/// bounded wait, `spool::lock::LockWait`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterWait {
    /// Fail at once with `Error::Busy`.
    FailIfBusy,
    /// Block until the other writer is done.
    UntilFree,
}

impl WriterLock {
    pub fn acquire(path: &Path, wait: WriterWait, faults: &Faults) -> Result<WriterLock> {
        loop {
            let (file, created) = open_private(path)?;
            if created {
                fsync_dir(&parent_dir(path), faults)?;
            }
            match wait {
                WriterWait::UntilFree => file
                    .lock_exclusive()
                    .map_err(|e| Error::io("lock", path, e))?,
                WriterWait::FailIfBusy => {
                    if let Err(e) = file.try_lock_exclusive() {
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
                        {
                            return Err(Error::Busy {
                                path: path.to_path_buf(),
                            });
                        }
                        return Err(Error::io("lock", path, e));
                    }
                }
            }
            // A writer that created an archive and committed nothing removes both files again
            // (`remove_unused`), so the file locked here may have lost its name meanwhile:
            // then the lock guards nothing, and the name is opened afresh.
            if still_named(&file, path) {
                return Ok(WriterLock { file });
            }
        }
    }

    /// As `acquire`, for a command that works on an existing archive only: when the archive does
    /// not exist, it says so without creating a lock file beside nothing.
    pub fn acquire_existing(archive: &Path, path: &Path, wait: WriterWait) -> Result<WriterLock> {
        if std::fs::symlink_metadata(archive).is_err() {
            return Err(Error::NotFound(format!("archive {}", archive.display())));
        }
        WriterLock::acquire(path, wait, &Faults::none())
    }

    /// Removes the lock file while holding it; see `acquire` for why that is safe.
    pub fn remove_file(&self, path: &Path) {
        if still_named(&self.file, path) {
            let _ = std::fs::remove_file(path);
        }
    }
}
