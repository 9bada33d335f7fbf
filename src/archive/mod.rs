//! The archive file: tar entries in a sequence of gzip members (formats/archive.md, sections 3
//! and 4). This layer knows nothing of Cyrus, the sidecar index or locks; it writes members in
//! order, scans them back with exact offsets, and reads one entry by seeking to its member.

mod deflate_pool;
mod id;
mod marker;
mod member;
mod pax;
mod reader;
pub mod scan;
mod tar;
mod writer;

pub use id::ArchiveId;
pub use marker::{Marker, RunSummary};
pub use member::{
    member_header, Member, MemberError, MemberReader, HEADER_LEN, MAX_MEMBER_PAYLOAD,
};
pub use reader::open_entry;
pub use scan::{ScanEvent, ScannedEntry, Scanner};
pub use tar::padded;
pub use writer::{Appended, ArchiveWriter, CommittedRun, EntryRejected, FoldEntry};

use crate::guid::Guid;
use crate::io::SourceStat;

/// Tar bytes per gzip member before the writer starts a new one.
pub const MEMBER_TARGET: usize = 1 << 20;
/// A member decompressing to more than this is reported as damaged rather than buffered.
pub const MAX_MEMBER_RAW: usize = 64 << 20;
/// Longest entry name or symlink target accepted.
pub const MAX_NAME: usize = 4096;
/// Largest commit marker body a reader will hold.
pub const MAX_MARKER: usize = 64 << 10;
/// Largest pax extended header a reader will hold.
pub const MAX_PAX: usize = 1 << 20;
/// Largest entry size a reader will step over (256 TiB): far past any message or metadata
/// file, and small enough that the size rounded up to tar blocks cannot overflow.
pub const MAX_ENTRY_SIZE: u64 = 1 << 48;

pub const FILES_DIR: &str = "files/";
pub const RUNS_DIR: &str = "runs/";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Symlink,
}

/// Where an entry's bytes are: the member holding its first header, that header's offset in the
/// member's decompressed bytes, and its data's offset counted from the same member start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    pub member: u64,
    pub header_at: u32,
    pub data_at: u64,
}

/// One entry as the index and the scanner describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    pub name: String,
    pub kind: EntryKind,
    pub target: String,
    pub placement: Placement,
    pub size: u64,
    /// SHA-1 of the data; zero for symlinks.
    pub sha1: Guid,
    /// Boxed: most entries (message files) carry none, and an inline one would cost every entry
    /// 40 bytes of the in-memory index (issue 19, flat memory).
    pub stat: Option<Box<SourceStat>>,
}

impl EntryRecord {
    pub fn is_tombstone(&self) -> bool {
        self.kind == EntryKind::Symlink && self.target.is_empty()
    }
}

/// Checks an entry name against formats/archive.md section 3.3.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("entry name length {} out of range", name.len()));
    }
    if name.contains('\0') {
        return Err("entry name contains NUL".into());
    }
    if name.starts_with('/') {
        return Err(format!("entry name {name:?} is absolute"));
    }
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "entry name {name:?} has an empty, '.' or '..' component"
            ));
        }
    }
    Ok(())
}

/// The entry name of a message file.
pub fn file_entry_name(guid: &Guid) -> String {
    format!("{FILES_DIR}{guid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("files/abc").is_ok());
        assert!(check_name("imap/INBOX/Sent items").is_ok());
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a/", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
