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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockWait {
    /// Fail at once with `Error::Busy` when another writer holds it.
    No,
    /// Block until the other writer is done.
    Yes,
}

impl WriterLock {
    pub fn acquire(path: &Path, wait: LockWait, faults: &Faults) -> Result<WriterLock> {
        let (file, created) = open_private(path)?;
        if created {
            fsync_dir(&parent_dir(path), faults)?;
        }
        match wait {
            LockWait::Yes => file
                .lock_exclusive()
                .map_err(|e| Error::io("lock", path, e))?,
            LockWait::No => {
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
        Ok(WriterLock { file })
    }

    /// Takes the lock if nobody holds it, without creating the lock file. `None` when it is held
    /// elsewhere or cannot be opened (a reader without write access simply does not repair).
    pub fn try_existing_or_new(path: &Path) -> Option<WriterLock> {
        let (file, _) = open_private(path).ok()?;
        file.try_lock_exclusive().ok()?;
        Some(WriterLock { file })
    }
}
