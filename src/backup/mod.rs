//! The two passes of a backup (formats/backup-entries.md). Pass 1 compares, without locks, the
//! stat of every metadata file with what the archive's latest state recorded; pass 2 reads only
//! what changed, under Cyrus's locks, and streams message files whose GUID the archive lacks,
//! checking each SHA-1. Reads the spool, writes only through the store's writer.

mod user;

pub use user::{backup_user, record_user_gone, UserOptions, UserReport};

use std::collections::HashMap;

use crate::archive::{EntryKind, EntryRecord};
use crate::io::SourceStat;
use crate::store::Archive;

/// The latest committed version of every name in an archive.
pub struct Recorded<'a> {
    latest: HashMap<&'a str, &'a EntryRecord>,
}

impl<'a> Recorded<'a> {
    pub fn of(archive: &'a Archive) -> Recorded<'a> {
        let mut latest = HashMap::new();
        for run in archive.runs() {
            for e in archive.entries_of(run) {
                latest.insert(e.name.as_str(), e);
            }
        }
        Recorded { latest }
    }

    pub fn get(&self, name: &str) -> Option<&'a EntryRecord> {
        self.latest.get(name).copied().filter(|e| !e.is_tombstone())
    }

    pub fn stat(&self, name: &str) -> Option<SourceStat> {
        self.get(name).and_then(|e| e.stat.as_deref().copied())
    }

    /// The newest stored version of a mailbox's `cyrus.index`: a full copy or an index delta
    /// (formats/backup-entries.md, "Index deltas"), whichever came later.
    pub fn index_entry(&self, uniqueid: &str) -> Option<&'a EntryRecord> {
        let (full, delta) = crate::entries::index_names(uniqueid);
        crate::folders::newer(self.get(&full), self.get(&delta))
    }

    /// Names whose latest version is not a tombstone.
    pub fn latest_names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.latest
            .values()
            .filter(|e| !e.is_tombstone())
            .map(|e| e.name.as_str())
    }

    /// Live `imap/` names and the folder each points at.
    pub fn links(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.latest
            .values()
            .filter(|e| {
                e.kind == EntryKind::Symlink
                    && !e.target.is_empty()
                    && e.name.starts_with(crate::entries::IMAP_DIR)
            })
            .map(|e| (e.name.as_str(), e.target.as_str()))
    }
}

/// Whether a file is unchanged since it was stored: same size, mtime, ctime and inode. The
/// device number is left out (it can change across reboots without the file changing).
pub fn same_file(a: &SourceStat, b: &SourceStat) -> bool {
    (a.size, a.mtime_ns, a.ctime_ns, a.ino) == (b.size, b.mtime_ns, b.ctime_ns, b.ino)
}
