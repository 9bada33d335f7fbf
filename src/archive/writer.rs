//! Appends entries to an archive as gzip members and commits a run with its marker
//! (formats/archive.md sections 3 and 4). Members are deflated on a small thread pool
//! (deflate_pool.rs) and written strictly in order, so the output bytes do not depend on the
//! thread count. The writer never decides durability on its own: `commit` fsyncs the archive and
//! nothing else; the store writes the index after it.

use std::io::{self, Read};
use std::path::PathBuf;

use sha1::{Digest, Sha1};

use super::deflate_pool::DeflatePool;
use super::marker::{self, RunSummary};
use super::pax::PaxMeta;
use super::tar::{encode_headers, padded, HeaderSpec};
use super::{check_name, EntryKind, EntryRecord, Placement, FILES_DIR, MEMBER_TARGET};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::io::DurableFile;
use crate::io::SourceStat;

/// Takes each entry of a run, placed, when the writer no longer keeps them
/// (`ArchiveWriter::fold_placed_entries`).
pub type FoldEntry = Box<dyn FnMut(&EntryRecord) + Send>;

/// A run made durable by `commit`.
#[derive(Clone, Debug)]
pub struct CommittedRun {
    pub run: u64,
    pub start: u64,
    pub marker_offset: u64,
    pub end: u64,
    pub time: i64,
    /// The marker's `compacted` time, when a compaction wrote it.
    pub compacted: Option<i64>,
    pub entries: Vec<EntryRecord>,
}

/// A source that did not match what the caller expected (size or SHA-1). Nothing of it stays in
/// the archive and the writer remains usable.
#[derive(Debug, PartialEq, Eq)]
pub struct EntryRejected(pub String);

/// What became of an entry the writer was asked to copy from a source.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// The entry is in the run, with the SHA-1 its data hashed to.
    Stored(Guid),
    /// The source did not match; nothing of it was kept.
    Rejected(EntryRejected),
}

/// The header-relevant facts of an entry about to be appended.
struct NewEntry<'a> {
    name: &'a str,
    kind: EntryKind,
    target: &'a str,
    size: u64,
    sha1: Guid,
    stat: Option<SourceStat>,
    mtime: u64,
}

impl<'a> NewEntry<'a> {
    fn file(name: &'a str, size: u64, sha1: Guid, stat: Option<SourceStat>, mtime: u64) -> Self {
        NewEntry {
            name,
            kind: EntryKind::File,
            target: "",
            size,
            sha1,
            stat,
            mtime,
        }
    }
}

struct PendingEntry {
    record: EntryRecord,
    seq: u64,
}

pub struct ArchiveWriter {
    file: DurableFile,
    archive_id: String,
    run: u64,
    run_start: u64,
    written: u64,
    /// Tar bytes of the member being filled.
    member: Vec<u8>,
    seq: u64,
    first_seq: u64,
    member_offsets: Vec<u64>,
    entries: Vec<PendingEntry>,
    /// Set by `fold_placed_entries`: each entry goes here once its member is placed, instead of
    /// waiting in `entries` for the commit.
    fold: Option<FoldEntry>,
    /// Entries of this run already given to `fold`.
    folded: u64,
    deflate_pool: DeflatePool,
    poisoned: bool,
    /// Whether `commit` fsyncs. A compaction writes many runs into a temporary file that only
    /// counts once it is renamed, so one fsync before the rename does for all of them.
    sync_on_commit: bool,
}

impl ArchiveWriter {
    /// Continues the archive in `file`, whose committed length is `end` and whose next run is
    /// `run`. The caller has truncated any uncommitted tail and holds the writer lock.
    pub fn new(
        mut file: DurableFile,
        end: u64,
        run: u64,
        archive_id: String,
        level: u32,
        threads: usize,
    ) -> Result<ArchiveWriter> {
        file.truncate(end)?;
        Ok(ArchiveWriter {
            file,
            archive_id,
            run,
            run_start: end,
            written: end,
            member: Vec::new(),
            seq: 0,
            first_seq: 0,
            member_offsets: Vec::new(),
            entries: Vec::new(),
            fold: None,
            folded: 0,
            deflate_pool: DeflatePool::new(level, threads),
            poisoned: false,
            sync_on_commit: true,
        })
    }

    pub fn run(&self) -> u64 {
        self.run
    }

    /// Stops `commit` from fsyncing; the caller then calls `sync` before relying on the file.
    pub fn defer_sync(&mut self) {
        self.sync_on_commit = false;
    }

    /// fsyncs the archive file.
    pub fn sync(&mut self) -> Result<()> {
        self.check()?;
        let r = self.file.sync();
        self.poison_on_err(r)
    }

    /// Bytes written so far, committed or not.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends an entry already encoded as tar bytes (its headers, data and padding, as another
    /// archive holds them), keeping every header byte. `record` describes it as it stood there;
    /// only its placement is recomputed. The entry must fit in one member.
    pub fn append_encoded(&mut self, encoded: &[u8], record: EntryRecord) -> Result<()> {
        self.check()?;
        let header_len = record.placement.data_at - record.placement.header_at as u64;
        if encoded.len() > MEMBER_TARGET || encoded.len() as u64 != header_len + padded(record.size)
        {
            return Err(Error::refused(format!(
                "{}: {} encoded bytes do not fit one member or do not match the record",
                record.name,
                encoded.len()
            )));
        }
        let r = (|| {
            if !self.member.is_empty() && self.member.len() + encoded.len() > MEMBER_TARGET {
                self.close_member()?;
            }
            let header_at = self.member.len();
            self.member.extend_from_slice(encoded);
            let mut record = record;
            record.placement = Placement {
                member: 0,
                header_at: header_at as u32,
                data_at: header_at as u64 + header_len,
            };
            self.entries.push(PendingEntry {
                record,
                seq: self.seq,
            });
            Ok(())
        })();
        self.poison_on_err(r)
    }

    /// Copies `len` bytes of whole gzip members from `source` as they are, without
    /// recompressing. `records` are the entries whose first header lies in the first copied
    /// member, with placements relative to it (which a verbatim copy keeps).
    pub fn append_members_verbatim(
        &mut self,
        source: &mut dyn Read,
        len: u64,
        records: Vec<EntryRecord>,
    ) -> Result<()> {
        self.check()?;
        let r = (|| {
            if !self.member.is_empty() {
                self.close_member()?;
            }
            // Members already queued for compression come first in the file.
            self.drain()?;
            let seq = self.seq;
            self.seq += 1;
            self.first_seq_check(seq);
            self.member_offsets.push(self.written);
            let mut buf = vec![0u8; (len.min(MEMBER_TARGET as u64)) as usize];
            let mut left = len;
            while left > 0 {
                let n = (buf.len() as u64).min(left) as usize;
                source
                    .read_exact(&mut buf[..n])
                    .map_err(|e| Error::io("read", self.file.path(), e))?;
                self.file.write_all_at_end(&buf[..n])?;
                self.written += n as u64;
                left -= n as u64;
            }
            for record in records {
                self.entries.push(PendingEntry { record, seq });
            }
            self.fold_placed();
            Ok(())
        })();
        self.poison_on_err(r)
    }

    fn first_seq_check(&self, seq: u64) {
        debug_assert_eq!(seq, self.first_seq + self.member_offsets.len() as u64);
    }

    fn path(&self) -> PathBuf {
        self.file.path().to_path_buf()
    }

    fn check(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned(self.path()));
        }
        Ok(())
    }

    fn poison_on_err<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    /// Appends a symlink; an empty target is a tombstone.
    pub fn append_symlink(&mut self, name: &str, target: &str, mtime: u64) -> Result<()> {
        self.check()?;
        check_name(name).map_err(Error::refused)?;
        if !target.is_empty() {
            check_name(target).map_err(Error::refused)?;
        }
        let entry = NewEntry {
            name,
            kind: EntryKind::Symlink,
            target,
            size: 0,
            sha1: Guid::ZERO,
            stat: None,
            mtime,
        };
        let r = self.append_small(entry, &[]);
        self.poison_on_err(r)
    }

    /// Appends `data` as a regular file.
    pub fn append_bytes(
        &mut self,
        name: &str,
        data: &[u8],
        stat: Option<SourceStat>,
        mtime: u64,
    ) -> Result<Guid> {
        self.check()?;
        check_name(name).map_err(Error::refused)?;
        let sha1 = Guid::of(data);
        check_files_name(name, &sha1)?;
        let r = if self.entry_len(name, "", data.len() as u64, stat.is_some())
            <= MEMBER_TARGET as u64
        {
            let entry = NewEntry::file(name, data.len() as u64, sha1, stat, mtime);
            self.append_small(entry, data)
        } else {
            let appended = self.append_large(
                name,
                &mut &data[..],
                data.len() as u64,
                Some(sha1),
                stat,
                mtime,
            );
            match appended {
                Ok(Appended::Stored(_)) => Ok(()),
                Ok(Appended::Rejected(rejected)) => Err(Error::refused(rejected.0)),
                Err(e) => Err(e),
            }
        };
        self.poison_on_err(r).map(|_| sha1)
    }

    /// Copies exactly `size` bytes of `source` as a regular file, hashing on the way. If the
    /// source is shorter or longer than `size`, or `expect` is given and differs from the SHA-1,
    /// the entry is rejected and leaves no trace; the writer stays usable.
    pub fn append_reader(
        &mut self,
        name: &str,
        source: &mut dyn Read,
        size: u64,
        expect: Option<Guid>,
        stat: Option<SourceStat>,
        mtime: u64,
    ) -> Result<Appended> {
        self.check()?;
        check_name(name).map_err(Error::refused)?;
        if self.entry_len(name, "", size, stat.is_some()) <= MEMBER_TARGET as u64 {
            let mut data = Vec::with_capacity(size as usize);
            let read = source
                .take(size)
                .read_to_end(&mut data)
                .and_then(|_| probe_extra(source));
            let extra = match read {
                Ok(extra) => extra,
                Err(e) => return Ok(rejected(format!("read failed: {e}"))),
            };
            if let Some(mismatch) = size_mismatch(size, data.len() as u64, extra) {
                return Ok(Appended::Rejected(mismatch));
            }
            let sha1 = Guid::of(&data);
            if let Some(expect) = expect {
                if expect != sha1 {
                    return Ok(rejected(format!(
                        "data hashes to {sha1}, expected {expect}"
                    )));
                }
            }
            if let Err(e) = check_files_name(name, &sha1) {
                return Ok(rejected(e.to_string()));
            }
            let entry = NewEntry::file(name, size, sha1, stat, mtime);
            let r = self.append_small(entry, &data);
            return self.poison_on_err(r).map(|_| Appended::Stored(sha1));
        }
        let r = self.append_large(name, source, size, expect, stat, mtime);
        self.poison_on_err(r)
    }

    fn headers(&self, e: &NewEntry) -> Vec<u8> {
        let sha_for_pax = (e.kind == EntryKind::File).then_some(e.sha1);
        let mut out = Vec::with_capacity(1024);
        encode_headers(
            &HeaderSpec {
                name: e.name,
                kind: e.kind,
                target: e.target,
                size: e.size,
                mtime: e.mtime,
                pax: PaxMeta::for_entry(e.name, self.run, sha_for_pax, e.stat).encode(),
            },
            &mut out,
        );
        out
    }

    /// Upper bound of an entry's encoded length, to choose the small or the streaming path.
    fn entry_len(&self, name: &str, target: &str, size: u64, has_stat: bool) -> u64 {
        let probe_stat = has_stat.then(SourceStat::default);
        let headers = self.headers(&NewEntry {
            name,
            kind: EntryKind::File,
            target,
            size,
            sha1: Guid::ZERO,
            stat: probe_stat,
            mtime: 0,
        });
        // Stat values may be longer than the probe's zeros: one more block covers them.
        headers.len() as u64 + 512 + padded(size)
    }

    fn append_small(&mut self, e: NewEntry, data: &[u8]) -> Result<()> {
        let headers = self.headers(&e);
        let total = headers.len() + padded(data.len() as u64) as usize;
        if !self.member.is_empty() && self.member.len() + total > MEMBER_TARGET {
            self.close_member()?;
        }
        let header_at = self.member.len();
        self.member.extend_from_slice(&headers);
        self.member.extend_from_slice(data);
        self.member.resize(header_at + total, 0);
        self.entries.push(PendingEntry {
            record: EntryRecord {
                name: e.name.to_string(),
                kind: e.kind,
                target: e.target.to_string(),
                placement: Placement {
                    member: 0,
                    header_at: header_at as u32,
                    data_at: (header_at + headers.len()) as u64,
                },
                size: e.size,
                sha1: e.sha1,
                stat: e.stat.map(Box::new),
            },
            seq: self.seq,
        });
        Ok(())
    }

    /// Streams an entry longer than one member into consecutive members, after a savepoint so a
    /// rejected source can be rolled back by truncating uncommitted bytes.
    fn append_large(
        &mut self,
        name: &str,
        source: &mut dyn Read,
        size: u64,
        expect: Option<Guid>,
        stat: Option<SourceStat>,
        mtime: u64,
    ) -> Result<Appended> {
        if !self.member.is_empty() {
            self.close_member()?;
        }
        self.drain()?;
        let save_written = self.written;
        let save_seq = self.seq;
        let save_offsets = self.member_offsets.len();

        // The SHA-1 pax record needs the digest before the data; message entries carry none,
        // others (metadata files) are small and never come here unless huge, so hash first.
        let sha_for_pax = if name.starts_with(FILES_DIR) {
            None
        } else {
            expect
        };
        if !name.starts_with(FILES_DIR) && expect.is_none() {
            return Ok(rejected(format!(
                "{name}: entries over {MEMBER_TARGET} bytes outside {FILES_DIR} need their SHA-1 up front"
            )));
        }
        let headers = self.headers(&NewEntry {
            name,
            kind: EntryKind::File,
            target: "",
            size,
            sha1: sha_for_pax.unwrap_or(Guid::ZERO),
            stat,
            mtime,
        });
        let first_seq = self.seq;
        self.member.extend_from_slice(&headers);
        let mut hasher = Sha1::new();
        let mut remaining = size;
        let mut buf = vec![0u8; 64 << 10];
        let mut failure: Option<String> = None;
        while remaining > 0 {
            let want = (buf.len() as u64).min(remaining) as usize;
            let n = match source.read(&mut buf[..want]) {
                Ok(0) => {
                    failure = Some(format!("source ended {remaining} bytes early"));
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failure = Some(format!("read failed: {e}"));
                    break;
                }
            };
            hasher.update(&buf[..n]);
            remaining -= n as u64;
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                let room = MEMBER_TARGET - self.member.len();
                let take = room.min(chunk.len());
                self.member.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.member.len() == MEMBER_TARGET {
                    self.close_member()?;
                }
            }
        }
        let sha1 = Guid(hasher.finalize().into());
        if failure.is_none() {
            match probe_extra(source) {
                Ok(true) => failure = Some("source is longer than its size".into()),
                Ok(false) => {}
                Err(e) => failure = Some(format!("read failed: {e}")),
            }
        }
        if failure.is_none() {
            if let Some(expect) = expect {
                if expect != sha1 {
                    failure = Some(format!("data hashes to {sha1}, expected {expect}"));
                }
            }
        }
        if failure.is_none() {
            if let Err(e) = check_files_name(name, &sha1) {
                failure = Some(e.to_string());
            }
        }
        if let Some(reason) = failure {
            // Roll back: nothing of this entry is committed, so cutting the file is safe.
            self.member.clear();
            self.drain()?;
            self.file.truncate(save_written)?;
            self.written = save_written;
            self.seq = save_seq;
            self.member_offsets.truncate(save_offsets);
            return Ok(rejected(reason));
        }
        let pad = (padded(size) - size) as usize;
        self.member.resize(self.member.len() + pad, 0);
        self.entries.push(PendingEntry {
            record: EntryRecord {
                name: name.to_string(),
                kind: EntryKind::File,
                target: String::new(),
                placement: Placement {
                    member: 0,
                    header_at: 0,
                    data_at: headers.len() as u64,
                },
                size,
                sha1,
                stat: stat.map(Box::new),
            },
            seq: first_seq,
        });
        if !self.member.is_empty() {
            self.close_member()?;
        }
        Ok(Appended::Stored(sha1))
    }

    fn close_member(&mut self) -> Result<()> {
        // The next member's buffer grows as it fills (copying it as it doubles costs little
        // beside deflating it): a run of only its marker, of which a backup of many owners
        // holds hundreds until their group is synced, then holds no empty megabyte.
        let raw = std::mem::take(&mut self.member);
        let seq = self.seq;
        self.seq += 1;
        self.deflate_pool.submit(seq, raw);
        while self.deflate_pool.in_flight() > self.deflate_pool.max_in_flight() {
            self.write_next()?;
        }
        Ok(())
    }

    fn write_next(&mut self) -> Result<()> {
        let (seq, compressed) = self
            .deflate_pool
            .next_done()
            .expect("a member is in flight");
        let compressed = compressed.map_err(|e| Error::io("compress", self.file.path(), e))?;
        debug_assert_eq!(seq, self.first_seq + self.member_offsets.len() as u64);
        self.member_offsets.push(self.written);
        self.file.write_all_at_end(&compressed)?;
        self.written += compressed.len() as u64;
        self.fold_placed();
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        while self.deflate_pool.in_flight() > 0 {
            self.write_next()?;
        }
        Ok(())
    }

    /// Number of entries appended to the run so far.
    pub fn pending_entries(&self) -> usize {
        self.folded as usize + self.entries.len()
    }

    /// From now on, each entry is handed to `fold` with its final placement as soon as the
    /// member holding its first header is written, and not kept: `commit` then returns a run
    /// without entries. For a rewrite, which needs only a digest of each run; without it a run of
    /// a million entries would be held whole until its commit (issue 19, flat memory).
    pub fn fold_placed_entries(&mut self, fold: FoldEntry) {
        self.fold = Some(fold);
    }

    /// Hands the entries whose first member is written to `fold`, in order.
    fn fold_placed(&mut self) {
        let Some(fold) = self.fold.as_mut() else {
            return;
        };
        let placed = self
            .entries
            .iter()
            .take_while(|p| ((p.seq - self.first_seq) as usize) < self.member_offsets.len())
            .count();
        for p in self.entries.drain(..placed) {
            let mut record = p.record;
            record.placement.member = self.member_offsets[(p.seq - self.first_seq) as usize];
            fold(&record);
        }
        self.folded += placed as u64;
    }

    /// Writes the commit marker in its own member and fsyncs the archive: after this returns the
    /// run survives a crash.
    pub fn commit(&mut self, summary: &RunSummary) -> Result<CommittedRun> {
        self.check()?;
        let r = self.commit_inner(summary, self.sync_on_commit);
        self.poison_on_err(r)
    }

    /// Writes the commit marker without the fsync: the run is committed once the caller has
    /// made the file durable (the store's group commit, formats/archive.md section 7).
    pub fn commit_unsynced(&mut self, summary: &RunSummary) -> Result<CommittedRun> {
        self.check()?;
        let r = self.commit_inner(summary, false);
        self.poison_on_err(r)
    }

    /// The archive file being written.
    pub fn file(&self) -> &std::fs::File {
        self.file.file()
    }

    fn commit_inner(&mut self, summary: &RunSummary, sync: bool) -> Result<CommittedRun> {
        if self.run == u64::MAX {
            // The last number is never used, so no run number can ever wrap.
            return Err(Error::refused(format!(
                "{}: run numbers are exhausted (the last run is {}); nothing was committed",
                self.file.path().display(),
                u64::MAX - 1
            )));
        }
        if !self.member.is_empty() {
            self.close_member()?;
        }
        self.member = marker::encode(
            self.run,
            &self.archive_id,
            self.pending_entries() as u64,
            self.run_start,
            summary,
        )?;
        self.close_member()?;
        self.drain()?;
        // The run is committed only once its marker is on stable storage.
        if sync {
            self.file.sync()?;
        }

        let marker_offset = *self.member_offsets.last().expect("the marker was written");
        self.fold_placed();
        self.folded = 0;
        let entries = std::mem::take(&mut self.entries)
            .into_iter()
            .map(|p| {
                let mut record = p.record;
                record.placement.member = self.member_offsets[(p.seq - self.first_seq) as usize];
                record
            })
            .collect();
        let committed = CommittedRun {
            run: self.run,
            start: self.run_start,
            marker_offset,
            end: self.written,
            time: summary.time,
            compacted: summary.compacted,
            entries,
        };
        self.run += 1;
        self.run_start = self.written;
        self.first_seq = self.seq;
        self.member_offsets.clear();
        Ok(committed)
    }
}

fn check_files_name(name: &str, sha1: &Guid) -> Result<()> {
    if let Some(hex) = name.strip_prefix(FILES_DIR) {
        if hex.parse::<Guid>().ok() != Some(*sha1) {
            return Err(Error::refused(format!(
                "{name}: data hashes to {sha1}, not to its name"
            )));
        }
    }
    Ok(())
}

fn probe_extra(source: &mut dyn Read) -> io::Result<bool> {
    let mut one = [0u8; 1];
    loop {
        match source.read(&mut one) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn rejected(reason: String) -> Appended {
    Appended::Rejected(EntryRejected(reason))
}

fn size_mismatch(expected: u64, got: u64, extra: bool) -> Option<EntryRejected> {
    if got < expected {
        Some(EntryRejected(format!(
            "source has {got} bytes, expected {expected}"
        )))
    } else if extra {
        Some(EntryRejected(format!(
            "source is longer than {expected} bytes"
        )))
    } else {
        None
    }
}
