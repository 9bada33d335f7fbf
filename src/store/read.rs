//! The read path: one generation of an archive file read with `pread` (`ArchiveHandle`), entries
//! read back by seeking to their member and checked against their SHA-1 as they are read, and
//! the lookup of one name that streams through the index instead of opening the whole archive.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::open::marker_matches;
use super::sidecar;
use super::{message_guid, Archive, ArchivePaths};
use crate::archive::{open_entry, EntryKind, EntryRecord};
use crate::error::{Error, Result};
use crate::guid::{Guid, HashingReader};
use crate::io::{PositionedRead, ReadAt};

impl Archive {
    /// The data of `entry`, read by seeking to its member in this generation of the file
    /// (`ArchiveHandle::read_entry`).
    pub fn read_entry<'a>(&'a self, entry: &'a EntryRecord) -> Result<impl Read + 'a> {
        self.source.read_entry(entry)
    }

    /// The decompressed bytes of the members from `from` up to `to`
    /// (`ArchiveHandle::decode_members`).
    pub fn decode_members(&self, from: u64, to: Option<u64>) -> Result<Vec<u8>> {
        self.source.decode_members(from, to)
    }
}

/// The latest committed version of `name`, the run that wrote it (tombstones included), and the
/// archive generation to read it from. When the index is current this streams through it without
/// building it in memory, so the cost does not depend on how much else the archive holds;
/// otherwise it opens the archive fully (read-only).
pub fn find_latest(
    paths: &ArchivePaths,
    name: &str,
    notices: &mut Vec<String>,
) -> Result<Option<(u64, EntryRecord, ArchiveHandle)>> {
    let source = ArchiveHandle::open(&paths.archive)?;
    if let Some(lookup) = sidecar::find_latest(&paths.index, name)? {
        if let Some(last) = &lookup.last {
            // Read after the index: a commit in between shows up as a longer archive, a
            // compaction in between as a generation the name no longer leads to.
            if source.is_current()
                && source.len()? == last.end
                && marker_matches(&source, last, &lookup.archive_id)
            {
                return Ok(lookup.found.map(|(run, e)| (run, e, source)));
            }
        }
    }
    let archive = Archive::open(paths, notices)?;
    Ok(archive
        .latest(name)
        .map(|(run, e)| (run, e.clone(), archive.source.clone())))
}

/// One generation of an archive file, opened once (never through a symlink, never anything but
/// a regular file) and read with `pread` by everything that reads it, so a command sees that
/// generation from start to end whatever is renamed over its name meanwhile. An off-site copy
/// is read through the same handle (`from_remote`): its bytes come by ranged reads, and it
/// never has a file, so nothing that writes can be handed one.
#[derive(Clone)]
pub struct ArchiveHandle {
    path: PathBuf,
    bytes: Arc<dyn PositionedRead>,
    /// The local file, for writers and for the same-file checks; `None` for an off-site copy.
    pub(super) file: Option<Arc<File>>,
}

impl ArchiveHandle {
    /// Opens an existing archive read-only.
    pub fn open(path: &Path) -> Result<ArchiveHandle> {
        let file = crate::io::open_own(path).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("archive {}", path.display())),
            e => e,
        })?;
        Ok(ArchiveHandle::from_file(path, file))
    }

    /// Opens an existing archive read-write, for a writer holding the lock.
    pub(super) fn open_writable(path: &Path) -> Result<ArchiveHandle> {
        let file = crate::io::open_own_writable(path).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("archive {}", path.display())),
            e => e,
        })?;
        Ok(ArchiveHandle::from_file(path, file))
    }

    /// Wraps a file the caller opened (a writer's read-write handle).
    pub(super) fn from_file(path: &Path, file: File) -> ArchiveHandle {
        let file = Arc::new(file);
        ArchiveHandle {
            path: path.to_path_buf(),
            bytes: file.clone(),
            file: Some(file),
        }
    }

    /// An archive read from elsewhere than a local file (an off-site copy). `path` names it in
    /// messages (`s3://bucket/prefix/users/alice`).
    pub fn from_remote(path: PathBuf, bytes: Arc<dyn PositionedRead>) -> ArchiveHandle {
        ArchiveHandle {
            path,
            bytes,
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    #[allow(clippy::len_without_is_empty)] // a length read by fstat can fail; no cheap is_empty
    pub fn len(&self) -> Result<u64> {
        self.bytes
            .len()
            .map_err(|e| Error::io("stat", &self.path, e))
    }

    pub fn reader_at(&self, pos: u64) -> ReadAt {
        ReadAt::new(self.bytes.clone(), pos)
    }

    /// The local file this handle reads, for a writer or a same-file check.
    pub(super) fn local_file(&self) -> Result<&Arc<File>> {
        self.file.as_ref().ok_or_else(|| {
            Error::usage(format!(
                "{} is an off-site copy: only read-only commands can use it",
                self.path.display()
            ))
        })
    }

    /// A handle to the same open file for truncating a tail (writers only: theirs is opened
    /// read-write).
    pub(super) fn writable(&self) -> Result<File> {
        self.local_file()?
            .try_clone()
            .map_err(|e| Error::io("dup", &self.path, e))
    }

    /// Whether the name still leads to this generation (no rename replaced it since it was
    /// opened). An off-site copy is immutable: always.
    pub(super) fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(file) = &self.file else {
            return true;
        };
        match (file.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }

    /// The data of `entry`, read by seeking to its member. The bytes are checked as the last
    /// one is read, against the SHA-1 in the entry's name for a message file (so a tampered
    /// index cannot make wrong bytes look right) and against the recorded SHA-1 otherwise: a
    /// mismatch, or data ending early, is an error rather than a silently wrong copy.
    pub fn read_entry<'a>(&'a self, entry: &'a EntryRecord) -> Result<impl Read + 'a> {
        if entry.kind != EntryKind::File {
            return Err(Error::usage(format!(
                "{} is a symlink, not a file",
                entry.name
            )));
        }
        let path = &self.path;
        let inner = open_entry(self.reader_at(0), &entry.placement, entry.size).map_err(|e| {
            Error::corrupt(
                path,
                entry.placement.member,
                format!("entry {}: {e}", entry.name),
            )
        })?;
        Ok(CheckedEntry {
            inner: HashingReader::new(inner),
            expected: message_guid(entry).unwrap_or(entry.sha1),
            size: entry.size,
            name: &entry.name,
            path,
            member: entry.placement.member,
        })
    }

    /// The decompressed bytes of the members from byte `from` (a member boundary) up to byte
    /// `to`, or of the one member there when `to` is `None`. Every member's integrity field is
    /// checked; a failure is an error naming the file and the member's offset.
    pub fn decode_members(&self, from: u64, to: Option<u64>) -> Result<Vec<u8>> {
        use crate::archive::{MemberError, MemberReader, MAX_MEMBER_RAW};
        let path = &self.path;
        let mut members =
            MemberReader::new(self.reader_at(0), from).map_err(|e| Error::io("seek", path, e))?;
        let mut out = Vec::new();
        let mut raw = Vec::new();
        loop {
            match members.next_member(&mut raw) {
                Ok(Some(m)) => m.integrity.map_err(|e| e.in_file(path))?,
                Ok(None) => {
                    return Err(Error::corrupt(
                        path,
                        members.position(),
                        "archive ends early",
                    ))
                }
                Err(MemberError::Io(e)) => return Err(Error::io("read", path, e)),
                Err(MemberError::Torn { offset, detail } | MemberError::Bad { offset, detail }) => {
                    return Err(Error::corrupt(path, offset, detail))
                }
            }
            if out.is_empty() {
                std::mem::swap(&mut out, &mut raw);
            } else {
                out.extend_from_slice(&raw);
            }
            if out.len() > MAX_MEMBER_RAW {
                return Err(Error::corrupt(
                    path,
                    from,
                    "members hold more than a member's worth of data",
                ));
            }
            if to.is_none_or(|to| members.position() >= to) {
                return Ok(out);
            }
        }
    }
}

struct CheckedEntry<'a, R> {
    inner: HashingReader<R>,
    expected: Guid,
    size: u64,
    name: &'a str,
    path: &'a Path,
    member: u64,
}

impl<R: Read> Read for CheckedEntry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| {
            io::Error::other(Error::corrupt(
                self.path,
                self.member,
                format!("entry {}: {e}", self.name),
            ))
        })?;
        // Checked when the last byte arrives, and again at the end: an index claiming an empty
        // entry must not make its check vanish.
        let at_end = n == 0 || self.inner.count() == self.size;
        if at_end && self.inner.count() == self.size && self.inner.digest() != self.expected {
            return Err(io::Error::other(Error::corrupt(
                self.path,
                self.member,
                format!("entry {} does not hash to {}", self.name, self.expected),
            )));
        }
        Ok(n)
    }
}
