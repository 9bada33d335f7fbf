//! The two passes of a backup (formats/backup-entries.md). Pass 1 compares, without locks, the
//! stat of every metadata file with what the archive's latest state recorded; pass 2 reads only
//! what changed, under Cyrus's locks, and streams message files whose GUID the archive lacks,
//! checking each SHA-1. Reads the spool, writes only through the store's writer.

mod user;

pub use user::{backup_user, record_user_gone, UserOptions, UserReport};

use std::collections::HashMap;

use crate::archive::{EntryKind, EntryRecord, FILES_DIR};
use crate::entries::index_version_of;
use crate::error::Result;
use crate::guid::Guid;
use crate::io::SourceStat;
use crate::store::Archive;

/// What a run compares the spool with: the latest committed version of every name other than a
/// message's, the SHA-1s of the stored message files, and each mailbox index's versions since
/// its last full copy. Read in one pass over the archive's entries (streamed from the index
/// file when the writer opened it so), and owned: a message costs its 20 bytes here, not its
/// entry, so memory follows the spool, not the archive's history (issue 19).
pub struct Recorded {
    latest: HashMap<String, EntryRecord>,
    /// Sorted, without duplicates.
    files: Vec<Guid>,
    /// Per mailbox uniqueid: the stored versions of its `cyrus.index` (full copies and deltas,
    /// files only) from the newest full copy on.
    index_chains: HashMap<String, Vec<EntryRecord>>,
}

impl Recorded {
    pub fn of(archive: &Archive) -> Result<Recorded> {
        let mut recorded = Recorded {
            latest: HashMap::new(),
            files: Vec::new(),
            index_chains: HashMap::new(),
        };
        for run in archive.runs() {
            archive.for_each_entry(run, &mut |e| {
                if let Some(guid) = e.name.strip_prefix(FILES_DIR).and_then(|h| h.parse().ok()) {
                    recorded.files.push(guid);
                    return Ok(());
                }
                if e.kind == EntryKind::File {
                    if let Some((uid, delta)) = index_version_of(&e.name) {
                        let chain = recorded.index_chains.entry(uid.to_string()).or_default();
                        if !delta {
                            chain.clear();
                        }
                        chain.push(e.clone());
                    }
                }
                recorded.latest.insert(e.name.clone(), e.clone());
                Ok(())
            })?;
        }
        recorded.files.sort_unstable();
        recorded.files.dedup();
        recorded.files.shrink_to_fit();
        Ok(recorded)
    }

    pub fn get(&self, name: &str) -> Option<&EntryRecord> {
        self.latest.get(name).filter(|e| !e.is_tombstone())
    }

    pub fn stat(&self, name: &str) -> Option<SourceStat> {
        self.get(name).and_then(|e| e.stat.as_deref().copied())
    }

    /// Whether a message file with this SHA-1 is stored.
    pub fn has_file(&self, guid: &Guid) -> bool {
        self.files.binary_search(guid).is_ok()
    }

    /// The newest stored version of a mailbox's `cyrus.index`: a full copy or an index delta
    /// (formats/backup-entries.md, "Index deltas"), whichever came later.
    pub fn index_entry(&self, uniqueid: &str) -> Option<&EntryRecord> {
        let (full, delta) = crate::entries::index_names(uniqueid);
        let file = |name: &str| self.get(name).filter(|e| e.kind == EntryKind::File);
        crate::folders::newer(file(&full), file(&delta))
    }

    /// The versions `index_entry` is made of, oldest first: its full copy, then the deltas
    /// after it, up to it. `None` when there is no stored version.
    pub fn index_chain(&self, uniqueid: &str) -> Option<&[EntryRecord]> {
        let newest = self.index_entry(uniqueid)?;
        let chain = self.index_chains.get(uniqueid)?;
        let at = chain
            .iter()
            .rposition(|e| e.placement == newest.placement && e.name == newest.name)?;
        Some(&chain[..=at])
    }

    /// Names whose latest version is not a tombstone (message files aside).
    pub fn latest_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.latest
            .values()
            .filter(|e| !e.is_tombstone())
            .map(|e| e.name.as_str())
    }

    /// Live `imap/` names and the folder each points at.
    pub fn links(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
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
