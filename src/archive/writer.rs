//! Appends entries to an archive as gzip members and commits a run with its marker
//! (formats/archive.md sections 3 and 4). Members are deflated on a small thread pool and written
//! strictly in order, so the output bytes do not depend on the thread count. The writer never
//! decides durability on its own: `commit` fsyncs the archive and nothing else; the store writes
//! the index after it.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha1::{Digest, Sha1};

use super::member::{member_header, HEADER_LEN};
use super::tar::{encode_headers, padded, HeaderSpec};
use super::{
    check_name, EntryKind, EntryRecord, Placement, FILES_DIR, MARKER_FORMAT, MEMBER_TARGET,
    PAX_PREFIX, RUNS_DIR,
};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::io::DurableFile;
use crate::io::SourceStat;

/// What the commit marker records besides the run bookkeeping.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub time: i64,
    pub host: String,
    /// Written as `count.<name>=<value>`; names are `[a-z0-9.-]+`.
    pub counts: Vec<(String, u64)>,
    /// The `tool` line; `None` writes this build's. A compaction keeps the original writer's.
    pub tool: Option<String>,
    /// When a compaction wrote this marker (the `compacted` key).
    pub compacted: Option<i64>,
    /// Further `key=value` lines, kept as they are: a compaction carries over keys it does not
    /// know, so a newer writer's facts survive an older compactor.
    pub extra: Vec<(String, String)>,
}

impl RunSummary {
    /// The summary that writes a marker again as it was (a compaction's or a repair's copy of
    /// a run): the original writer's host, tool, counters and unknown keys, and `compacted`.
    pub fn from_marker(
        time: i64,
        fields: &[(String, String)],
        compacted: Option<i64>,
    ) -> RunSummary {
        let mut summary = RunSummary {
            time,
            compacted,
            ..Default::default()
        };
        for (k, v) in fields {
            match k.as_str() {
                "format" | "archive-id" | "run" | "time" | "entries" | "start" | "compacted" => {}
                "host" => summary.host = v.clone(),
                "tool" => summary.tool = Some(v.clone()),
                _ => match (k.strip_prefix("count."), v.parse::<u64>()) {
                    (Some(name), Ok(n)) => summary.counts.push((name.to_string(), n)),
                    _ => summary.extra.push((k.clone(), v.clone())),
                },
            }
        }
        summary
    }
}

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
#[derive(Debug)]
pub struct EntryRejected(pub String);

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
    deflater: Deflater,
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
            member: Vec::with_capacity(MEMBER_TARGET + 4096),
            seq: 0,
            first_seq: 0,
            member_offsets: Vec::new(),
            entries: Vec::new(),
            deflater: Deflater::new(level, threads),
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
            return Err(Error::usage(format!(
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
        check_name(name).map_err(Error::usage)?;
        if !target.is_empty() {
            check_name(target).map_err(Error::usage)?;
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
        check_name(name).map_err(Error::usage)?;
        let sha1 = Guid::of(data);
        check_files_name(name, &sha1)?;
        let r = if self.entry_len(name, "", data.len() as u64, stat.is_some())
            <= MEMBER_TARGET as u64
        {
            let entry = NewEntry::file(name, data.len() as u64, sha1, stat, mtime);
            self.append_small(entry, data)
        } else {
            self.append_large(
                name,
                &mut &data[..],
                data.len() as u64,
                Some(sha1),
                stat,
                mtime,
            )
            .map(|r| r.map(|_| ()).map_err(|e| Error::usage(e.0)))
            .and_then(|r| r)
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
    ) -> Result<Result<Guid, EntryRejected>> {
        self.check()?;
        check_name(name).map_err(Error::usage)?;
        if self.entry_len(name, "", size, stat.is_some()) <= MEMBER_TARGET as u64 {
            let mut data = Vec::with_capacity(size as usize);
            let read = source
                .take(size)
                .read_to_end(&mut data)
                .and_then(|_| probe_extra(source));
            let extra = match read {
                Ok(extra) => extra,
                Err(e) => return Ok(Err(EntryRejected(format!("read failed: {e}")))),
            };
            if let Some(rejected) = size_mismatch(size, data.len() as u64, extra) {
                return Ok(Err(rejected));
            }
            let sha1 = Guid::of(&data);
            if let Some(expect) = expect {
                if expect != sha1 {
                    return Ok(Err(EntryRejected(format!(
                        "data hashes to {sha1}, expected {expect}"
                    ))));
                }
            }
            if let Err(e) = check_files_name(name, &sha1) {
                return Ok(Err(EntryRejected(e.to_string())));
            }
            let entry = NewEntry::file(name, size, sha1, stat, mtime);
            let r = self.append_small(entry, &data);
            return self.poison_on_err(r).map(|_| Ok(sha1));
        }
        let r = self.append_large(name, source, size, expect, stat, mtime);
        self.poison_on_err(r)
    }

    fn pax_for(
        &self,
        name: &str,
        sha1: Option<Guid>,
        stat: Option<SourceStat>,
    ) -> Vec<(String, String)> {
        let mut pax = Vec::new();
        let is_message = name.starts_with(FILES_DIR);
        if is_message && stat.is_none() {
            return pax;
        }
        pax.push((format!("{PAX_PREFIX}run"), self.run.to_string()));
        if let (Some(sha1), false) = (sha1, is_message) {
            pax.push((format!("{PAX_PREFIX}sha1"), sha1.to_string()));
        }
        if let Some(s) = stat {
            pax.push((format!("{PAX_PREFIX}dev"), s.dev.to_string()));
            pax.push((format!("{PAX_PREFIX}ino"), s.ino.to_string()));
            pax.push((format!("{PAX_PREFIX}size"), s.size.to_string()));
            pax.push((
                format!("{PAX_PREFIX}mtime"),
                super::scan::format_time(s.mtime_ns),
            ));
            pax.push((
                format!("{PAX_PREFIX}ctime"),
                super::scan::format_time(s.ctime_ns),
            ));
        }
        pax
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
                pax: self.pax_for(e.name, sha_for_pax, e.stat),
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
                stat: e.stat,
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
    ) -> Result<Result<Guid, EntryRejected>> {
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
            return Ok(Err(EntryRejected(format!(
                "{name}: entries over {MEMBER_TARGET} bytes outside {FILES_DIR} need their SHA-1 up front"
            ))));
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
            return Ok(Err(EntryRejected(reason)));
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
                stat,
            },
            seq: first_seq,
        });
        if !self.member.is_empty() {
            self.close_member()?;
        }
        Ok(Ok(sha1))
    }

    fn close_member(&mut self) -> Result<()> {
        let raw = std::mem::replace(&mut self.member, Vec::with_capacity(MEMBER_TARGET + 4096));
        let seq = self.seq;
        self.seq += 1;
        self.deflater.submit(seq, raw);
        while self.deflater.in_flight() > self.deflater.max_in_flight() {
            self.write_next()?;
        }
        Ok(())
    }

    fn write_next(&mut self) -> Result<()> {
        let (seq, compressed) = self.deflater.next_done().expect("a member is in flight");
        let compressed = compressed.map_err(|e| Error::io("compress", self.file.path(), e))?;
        debug_assert_eq!(seq, self.first_seq + self.member_offsets.len() as u64);
        self.member_offsets.push(self.written);
        self.file.write_all_at_end(&compressed)?;
        self.written += compressed.len() as u64;
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        while self.deflater.in_flight() > 0 {
            self.write_next()?;
        }
        Ok(())
    }

    /// Number of entries appended to the run so far.
    pub fn pending_entries(&self) -> usize {
        self.entries.len()
    }

    /// Writes the commit marker in its own member and fsyncs the archive: after this returns the
    /// run survives a crash.
    pub fn commit(&mut self, summary: &RunSummary) -> Result<CommittedRun> {
        self.check()?;
        let r = self.commit_inner(summary);
        self.poison_on_err(r)
    }

    fn commit_inner(&mut self, summary: &RunSummary) -> Result<CommittedRun> {
        if self.run == u64::MAX {
            // The last number is never used, so no run number can ever wrap.
            return Err(Error::usage(format!(
                "{}: run numbers are exhausted (the last run is {}); nothing was committed",
                self.file.path().display(),
                u64::MAX - 1
            )));
        }
        if !self.member.is_empty() {
            self.close_member()?;
        }
        let mut body = String::new();
        body.push_str(&format!("format={MARKER_FORMAT}\n"));
        body.push_str(&format!("archive-id={}\n", self.archive_id));
        body.push_str(&format!("run={}\n", self.run));
        body.push_str(&format!("time={}\n", summary.time));
        body.push_str(&format!("host={}\n", summary.host.replace('\n', " ")));
        match &summary.tool {
            Some(tool) => body.push_str(&format!("tool={}\n", tool.replace('\n', " "))),
            None => body.push_str(&format!("tool=mailpack {}\n", env!("CARGO_PKG_VERSION"))),
        }
        body.push_str(&format!("entries={}\n", self.entries.len()));
        body.push_str(&format!("start={}\n", self.run_start));
        for (k, v) in &summary.counts {
            if !marker_key_ok(k) {
                return Err(Error::usage(format!(
                    "counter name {k:?} is not [a-z0-9.-]+"
                )));
            }
            body.push_str(&format!("count.{k}={v}\n"));
        }
        if let Some(t) = summary.compacted {
            body.push_str(&format!("compacted={t}\n"));
        }
        for (k, v) in &summary.extra {
            if !marker_key_ok(k) || v.contains('\n') {
                return Err(Error::usage(format!(
                    "marker line {k:?}={v:?} is not key=value"
                )));
            }
            body.push_str(&format!("{k}={v}\n"));
        }
        let name = format!("{RUNS_DIR}{}", self.run);
        let headers = encode_marker_headers(&name, body.len() as u64, self.run, summary.time);
        let mut raw = headers;
        raw.extend_from_slice(body.as_bytes());
        raw.resize(padded(raw.len() as u64) as usize, 0);
        self.member = raw;
        self.close_member()?;
        self.drain()?;
        // The run is committed only once its marker is on stable storage.
        if self.sync_on_commit {
            self.file.sync()?;
        }

        let marker_offset = *self.member_offsets.last().expect("the marker was written");
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

/// Marker keys are `[a-z0-9.-]+` (formats/archive.md section 4).
fn marker_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

fn encode_marker_headers(name: &str, size: u64, run: u64, time: i64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_headers(
        &HeaderSpec {
            name,
            kind: EntryKind::File,
            target: "",
            size,
            mtime: time.max(0) as u64,
            pax: vec![(format!("{PAX_PREFIX}run"), run.to_string())],
        },
        &mut out,
    );
    out
}

fn check_files_name(name: &str, sha1: &Guid) -> Result<()> {
    if let Some(hex) = name.strip_prefix(FILES_DIR) {
        if hex.parse::<Guid>().ok() != Some(*sha1) {
            return Err(Error::usage(format!(
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

type Job = (Vec<u8>, mpsc::SyncSender<io::Result<Vec<u8>>>);

/// Compresses members on `threads` workers; results are collected in submission order.
struct Deflater {
    level: u32,
    jobs: Option<mpsc::SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    in_flight: VecDeque<(u64, mpsc::Receiver<io::Result<Vec<u8>>>)>,
    threads: usize,
}

impl Deflater {
    fn new(level: u32, threads: usize) -> Deflater {
        let threads = threads.max(1);
        let mut deflater = Deflater {
            level,
            jobs: None,
            workers: Vec::new(),
            in_flight: VecDeque::new(),
            threads,
        };
        if threads > 1 {
            let (tx, rx) = mpsc::sync_channel::<Job>(threads * 2);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..threads {
                let rx = Arc::clone(&rx);
                deflater.workers.push(std::thread::spawn(move || loop {
                    let job = rx.lock().map(|r| r.recv());
                    let Ok(Ok((raw, reply))) = job else { return };
                    let _ = reply.send(compress_member(&raw, level));
                }));
            }
            deflater.jobs = Some(tx);
        }
        deflater
    }

    fn max_in_flight(&self) -> usize {
        if self.threads > 1 {
            self.threads * 2
        } else {
            0
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn submit(&mut self, seq: u64, raw: Vec<u8>) {
        let (tx, rx) = mpsc::sync_channel(1);
        match &self.jobs {
            Some(jobs) => {
                if let Err(mpsc::SendError((raw, reply))) = jobs.send((raw, tx)) {
                    // Workers gone (cannot happen while we hold the sender): compress here.
                    let _ = reply.send(compress_member(&raw, self.level));
                }
            }
            None => {
                let _ = tx.send(compress_member(&raw, self.level));
            }
        }
        self.in_flight.push_back((seq, rx));
    }

    fn next_done(&mut self) -> Option<(u64, io::Result<Vec<u8>>)> {
        let (seq, rx) = self.in_flight.pop_front()?;
        let result = rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("compression worker died")));
        Some((seq, result))
    }
}

impl Drop for Deflater {
    fn drop(&mut self) {
        self.in_flight.clear();
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One gzip member framed as formats/archive.md section 3.1 says: a fixed header whose FEXTRA
/// field records the length and CRC32 of everything after it, so `verify` can vouch for every
/// byte of the file (the gzip CRC alone covers only the decompressed bytes).
pub(crate) fn compress_member(raw: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let strategy = choose_strategy(raw, level);
    let mut out = vec![0u8; HEADER_LEN + zlib_rs::compress_bound(raw.len()) + 8];
    let deflated_len = {
        let (deflated, rc) =
            zlib_rs::compress_slice(&mut out[HEADER_LEN..], raw, deflate_config(level, strategy));
        if rc != zlib_rs::ReturnCode::Ok {
            return Err(io::Error::other(format!("deflate failed: {rc:?}")));
        }
        deflated.len()
    };
    out.truncate(HEADER_LEN + deflated_len);
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    let payload = &out[HEADER_LEN..];
    let header = member_header(payload.len() as u32, crc32fast::hash(payload));
    out[..HEADER_LEN].copy_from_slice(&header);
    Ok(out)
}

fn deflate_config(level: u32, strategy: zlib_rs::Strategy) -> zlib_rs::DeflateConfig {
    zlib_rs::DeflateConfig {
        level: level as i32,
        method: zlib_rs::Method::Deflated,
        // Negative: raw deflate; the gzip framing is ours.
        window_bits: -15,
        mem_level: 8,
        strategy,
    }
}

/// Bytes of a sample tried both ways before a member is Huffman-coded only.
const STRATEGY_SAMPLE: usize = 64 << 10;

/// Mail attachments are base64 of already-compressed files: their bytes carry about 6 bits of
/// entropy each and no repeated strings, so string matching (most of deflate's time) gains
/// nothing over Huffman coding alone. A member that is mostly base64 lines is Huffman-coded only,
/// unless a sample shows that matching does pay (base64 of text, say). Output stays standard
/// deflate and depends only on the input.
fn choose_strategy(raw: &[u8], level: u32) -> zlib_rs::Strategy {
    use zlib_rs::Strategy;
    if level < 2 || base64_share(raw) < 0.7 {
        return Strategy::Default;
    }
    let sample = &raw[..raw.len().min(STRATEGY_SAMPLE)];
    let mut buf = vec![0u8; zlib_rs::compress_bound(sample.len())];
    let size = |buf: &mut [u8], strategy| {
        let (out, rc) = zlib_rs::compress_slice(buf, sample, deflate_config(level, strategy));
        if rc == zlib_rs::ReturnCode::Ok {
            out.len()
        } else {
            usize::MAX
        }
    };
    let huffman = size(&mut buf, Strategy::HuffmanOnly);
    let matched = size(&mut buf, Strategy::Default);
    if (matched as f64) < huffman as f64 * 0.97 {
        Strategy::Default
    } else {
        Strategy::HuffmanOnly
    }
}

/// The share of `raw` in lines of at least 60 base64 characters (MIME wraps at 76).
fn base64_share(raw: &[u8]) -> f64 {
    if raw.is_empty() {
        return 0.0;
    }
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
    let mut in_lines = 0usize;
    for line in raw.split(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\r").unwrap_or(line);
        if body.len() >= 60 && body.iter().all(|&b| is_b64(b)) {
            in_lines += line.len() + 1;
        }
    }
    in_lines as f64 / raw.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(raw: &[u8]) -> Vec<u8> {
        let member = compress_member(raw, 6).unwrap();
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(&member[..]);
        std::io::Read::read_to_end(&mut d, &mut out).unwrap();
        out
    }

    #[test]
    fn base64_attachments_are_huffman_coded_and_text_is_not() {
        let mut state = 1u64;
        let mut noise = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        let random: Vec<u8> = (0..300_000).map(|_| noise()).collect();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = Vec::new();
        for chunk in random.chunks(57) {
            let mut line = String::new();
            for group in chunk.chunks(3) {
                let n = group.iter().fold(0u32, |acc, &b| acc << 8 | b as u32)
                    << (8 * (3 - group.len()));
                for i in 0..4 {
                    line.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            b64.extend_from_slice(line.as_bytes());
            b64.extend_from_slice(b"\r\n");
        }
        assert_eq!(choose_strategy(&b64, 6), zlib_rs::Strategy::HuffmanOnly);
        assert_eq!(round_trip(&b64), b64);
        let text = b"Dear team, the quarterly report is attached. Regards, Alice\r\n".repeat(5000);
        assert_eq!(choose_strategy(&text, 6), zlib_rs::Strategy::Default);
        assert_eq!(round_trip(&text), text);
        // Base64 of repetitive text: matching still pays, so it is kept.
        let repetitive: Vec<u8> =
            b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWkFCQ0RF\r\n"
                .repeat(3000)
                .to_vec();
        assert_eq!(choose_strategy(&repetitive, 6), zlib_rs::Strategy::Default);
        assert_eq!(round_trip(&[]), Vec::<u8>::new());
    }
}
