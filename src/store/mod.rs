//! An archive with its sidecar index and writer lock (formats/archive.md sections 5 to 8): opening
//! (which repairs an uncommitted tail and rebuilds a bad index), looking entries up, reading them
//! by seeking, and committing runs in the documented durability order.

pub mod index;
mod lock;
mod naming;
mod rewrite;
mod verify;

pub use lock::{LockWait, WriterLock};
pub use naming::{decode_user, encode_user, list_archives, ArchivePaths};
pub use rewrite::{marker_fields, Rewriter, REWRITE_SUFFIX};
pub use verify::{verify, Problem, VerifyReport};

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::Path;

use crate::archive::{
    open_entry, ArchiveWriter, CommittedRun, EntryKind, EntryRecord, RunSummary, ScanEvent, Scanner,
};
use crate::error::{Error, Result};
use crate::guid::{Guid, HashingReader};
use crate::io::{fsync_dir, open_private, random_id, DurableFile, Faults};
use index::IndexRead;

/// One committed run as the store keeps it in memory.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunInfo {
    pub run: u64,
    pub start: u64,
    pub marker_offset: u64,
    pub end: u64,
    pub time: i64,
    /// Set on the newest run of a compaction: when it ran.
    pub compacted: Option<i64>,
    #[serde(skip)]
    pub entries: Range<usize>,
}

/// The committed state of one archive.
pub struct Archive {
    paths: ArchivePaths,
    archive_id: Option<[u8; 16]>,
    runs: Vec<RunInfo>,
    entries: Vec<EntryRecord>,
    /// Length of the index file's valid part, 0 when the next commit must create it.
    index_len: u64,
    /// SHA-1s of the stored message files, built on first use.
    files: std::cell::OnceCell<std::collections::HashSet<Guid>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Repair {
    /// The caller holds the writer lock: repair freely.
    Held,
    /// Repair only if the lock can be taken without waiting.
    IfFree,
}

/// What a scan of part of the archive found.
pub(crate) struct ScanOutcome {
    pub runs: Vec<CommittedRun>,
    pub archive_id: Option<[u8; 16]>,
    pub committed_end: u64,
    pub damage: Vec<crate::archive::scan::Damage>,
    pub members: u64,
    pub file_len: u64,
}

impl ScanOutcome {
    /// The first damage inside committed data: bytes before the last good commit.
    pub fn damage_in_committed(&self) -> Option<&crate::archive::scan::Damage> {
        self.damage.iter().find(|d| d.offset < self.committed_end)
    }
}

pub(crate) fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_id(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        id[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(id)
}

/// Scans from `from` (a member boundary), collecting complete runs that continue `prev`.
pub(crate) fn scan_runs(
    path: &Path,
    from: u64,
    prev: Option<(u64, u64)>,
    archive_id: Option<[u8; 16]>,
) -> Result<ScanOutcome> {
    let mut runs = Vec::new();
    let mut outcome = scan_runs_with(path, from, prev, archive_id, &mut |run| {
        runs.push(run);
        Ok(())
    })?;
    outcome.runs = runs;
    Ok(outcome)
}

/// As `scan_runs`, but hands each complete run to `on_run` as it is found instead of keeping
/// it, so memory holds one run's entries at a time.
pub(crate) fn scan_runs_with(
    path: &Path,
    from: u64,
    prev: Option<(u64, u64)>,
    archive_id: Option<[u8; 16]>,
    on_run: &mut dyn FnMut(CommittedRun) -> Result<()>,
) -> Result<ScanOutcome> {
    use crate::archive::scan::Damage;
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let scanner = Scanner::new(file, path, from).map_err(|e| Error::io("seek", path, e))?;
    let mut out = ScanOutcome {
        runs: Vec::new(),
        archive_id,
        committed_end: from,
        damage: Vec::new(),
        members: 0,
        file_len,
    };
    let mut expected_run = prev.map(|(run, _)| run + 1);
    let mut run_start = from;
    let mut pending: Vec<EntryRecord> = Vec::new();
    for event in scanner {
        match event {
            ScanEvent::Entry(e) => {
                if let (Some(run), Some(expected)) = (e.run, expected_run) {
                    if run != expected {
                        out.damage.push(Damage {
                            offset: e.record.placement.member,
                            within: Some(e.record.placement.header_at as u64),
                            entry: Some(e.record.name.clone()),
                            detail: format!("entry says run {run} but stands in run {expected}"),
                            torn: false,
                        });
                    }
                }
                pending.push(e.record);
            }
            ScanEvent::MemberEnd(m) => {
                out.members += 1;
                if let Err(detail) = m.integrity {
                    out.damage.push(Damage {
                        offset: m.offset,
                        within: None,
                        entry: None,
                        detail,
                        torn: false,
                    });
                }
            }
            ScanEvent::Damage(d) => out.damage.push(d),
            ScanEvent::Commit(m) => {
                let mut problems = Vec::new();
                let id = parse_id(&m.archive_id);
                match (out.archive_id, id) {
                    (Some(known), Some(id)) if known != id => problems.push(format!(
                        "archive-id {} is not this archive's {}",
                        m.archive_id,
                        hex_id(&known)
                    )),
                    (None, Some(id)) => out.archive_id = Some(id),
                    _ => {}
                }
                if let Some(expected) = expected_run {
                    if m.run != expected {
                        problems.push(format!(
                            "commit of run {} where run {expected} was due",
                            m.run
                        ));
                    }
                }
                if m.start != run_start {
                    problems.push(format!(
                        "commit says its run starts at {} but it starts at {run_start}",
                        m.start
                    ));
                }
                if m.entries != pending.len() as u64 {
                    problems.push(format!(
                        "commit counts {} entries but {} precede it",
                        m.entries,
                        pending.len()
                    ));
                }
                if problems.is_empty() {
                    on_run(CommittedRun {
                        run: m.run,
                        start: m.start,
                        marker_offset: m.member.offset,
                        end: m.member.end,
                        time: m.time,
                        compacted: m
                            .fields
                            .iter()
                            .find(|(k, _)| k == "compacted")
                            .and_then(|(_, v)| v.parse().ok()),
                        entries: std::mem::take(&mut pending),
                    })?;
                    out.committed_end = m.member.end;
                } else {
                    out.damage.push(Damage {
                        offset: m.member.offset,
                        within: Some(0),
                        entry: Some(format!("runs/{}", m.run)),
                        detail: problems.join("; "),
                        torn: false,
                    });
                    pending.clear();
                }
                expected_run = Some(m.run + 1);
                run_start = m.member.end;
            }
        }
    }
    Ok(out)
}

/// Does the member at `run.marker_offset` hold exactly this run's commit marker?
fn marker_matches(path: &Path, run: &CommittedRun, archive_id: &[u8; 16]) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let Ok(scanner) = Scanner::new(file, path, run.marker_offset) else {
        return false;
    };
    for event in scanner {
        match event {
            ScanEvent::Commit(m) => {
                return m.run == run.run
                    && m.member.end == run.end
                    && m.member.integrity.is_ok()
                    && parse_id(&m.archive_id) == Some(*archive_id)
            }
            ScanEvent::MemberEnd(_) | ScanEvent::Damage(_) => return false,
            ScanEvent::Entry(_) => {}
        }
    }
    false
}

impl Archive {
    /// Opens the committed state of an archive for reading. Takes no lock, except that a needed
    /// repair (truncating an uncommitted tail, writing a rebuilt index) is done if the writer
    /// lock is free; `notices` says what was repaired.
    pub fn open(paths: &ArchivePaths, notices: &mut Vec<String>) -> Result<Archive> {
        Archive::load(paths, Repair::IfFree, &Faults::none(), notices)
    }

    /// Rebuilds the index from the archive alone, whatever the current index says.
    pub fn reindex(
        paths: &ArchivePaths,
        wait: LockWait,
        notices: &mut Vec<String>,
    ) -> Result<Archive> {
        let _lock = WriterLock::acquire(&paths.lock, wait, &Faults::none())?;
        match std::fs::remove_file(&paths.index) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &paths.index, e)),
        }
        Archive::load(paths, Repair::Held, &Faults::none(), notices)
    }

    fn load(
        paths: &ArchivePaths,
        repair: Repair,
        faults: &Faults,
        notices: &mut Vec<String>,
    ) -> Result<Archive> {
        let path = &paths.archive;
        // The index is read before the archive's length: a commit in between then shows up as
        // a tail to scan rather than as an archive shorter than its index.
        let read = index::read(&paths.index)?;
        let file_len = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("archive {}", path.display())))
            }
            Err(e) => return Err(Error::io("stat", path, e)),
        };

        let mut rebuilt: Option<String> = None;
        let mut index_len = 0;
        let mut index_torn = false;
        let mut floor = 0;
        let mut known_runs = Vec::new();
        let mut known_id = None;
        match read {
            IndexRead::Valid {
                archive_id,
                runs,
                good_len,
                file_len: idx_len,
            } if !runs.is_empty() => {
                let last = runs.last().expect("not empty");
                if file_len < last.end {
                    rebuilt = Some(format!(
                        "the archive is shorter than its index says ({file_len} < {})",
                        last.end
                    ));
                } else if !marker_matches(path, last, &archive_id) {
                    rebuilt = Some(format!(
                        "the index's last commit is not at byte {} of the archive",
                        last.marker_offset
                    ));
                    // The index vouches that data up to its end was committed: a scan that
                    // cannot see that far has found damage, not a tail.
                    floor = last.end;
                } else {
                    index_len = good_len;
                    index_torn = good_len < idx_len;
                    known_id = Some(archive_id);
                    known_runs = runs;
                }
            }
            IndexRead::Valid { .. } | IndexRead::Missing => {
                if file_len > 0 {
                    rebuilt = Some("the index is missing".into());
                }
            }
            IndexRead::Invalid(reason) => {
                rebuilt = Some(format!("the index is unusable: {reason}"))
            }
        }

        let outcome = match known_runs.last() {
            Some(last) if rebuilt.is_none() => {
                if file_len > last.end {
                    scan_runs(path, last.end, Some((last.run, last.end)), known_id)?
                } else {
                    ScanOutcome {
                        runs: Vec::new(),
                        archive_id: known_id,
                        committed_end: last.end,
                        damage: Vec::new(),
                        members: 0,
                        file_len,
                    }
                }
            }
            _ => scan_runs(path, 0, None, None)?,
        };
        if let Some(d) = outcome.damage_in_committed() {
            return Err(damaged(path, d));
        }
        if outcome.committed_end < floor {
            let d = outcome.damage.first();
            return Err(match d {
                Some(d) => damaged(path, d),
                None => Error::corrupt(path, outcome.committed_end, "committed data ends early"),
            });
        }
        let tail = file_len.saturating_sub(outcome.committed_end);
        let new_runs = !outcome.runs.is_empty() && rebuilt.is_none();
        let needs_repair = tail > 0 || rebuilt.is_some() || new_runs || index_torn;

        let _guard = match (needs_repair, repair) {
            (false, _) | (true, Repair::Held) => None,
            (true, Repair::IfFree) => match WriterLock::try_existing_or_new(&paths.lock) {
                // Another writer's run may have landed since we looked: look again, locked.
                Some(lock) => {
                    let archive = Archive::load(paths, Repair::Held, faults, notices)?;
                    drop(lock);
                    return Ok(archive);
                }
                None => Some(()),
            },
        };
        let may_write = repair == Repair::Held;

        let mut runs = known_runs;
        runs.extend(outcome.runs);
        let archive_id = known_id.or(outcome.archive_id);
        if may_write {
            if tail > 0 {
                let (file, _) = open_private(path)?;
                let mut file = DurableFile::new(file, path, faults.clone());
                file.truncate(outcome.committed_end)?;
                file.sync()?;
                notices.push(format!(
                    "{}: removed {tail} bytes of an uncommitted run after byte {}",
                    path.display(),
                    outcome.committed_end
                ));
            }
            if let Some(reason) = &rebuilt {
                match &archive_id {
                    Some(id) if !runs.is_empty() => {
                        index::write_full(&paths.index, id, &runs, faults)?;
                        index_len = std::fs::metadata(&paths.index)
                            .map_err(|e| Error::io("stat", &paths.index, e))?
                            .len();
                    }
                    _ => {
                        let _ = std::fs::remove_file(&paths.index);
                        index_len = 0;
                    }
                }
                notices.push(format!(
                    "{}: rebuilt the index because {reason}",
                    paths.index.display()
                ));
            } else if new_runs || index_torn {
                let id = archive_id.expect("runs carry an archive id");
                index::write_full(&paths.index, &id, &runs, faults)?;
                index_len = std::fs::metadata(&paths.index)
                    .map_err(|e| Error::io("stat", &paths.index, e))?
                    .len();
                notices.push(format!(
                    "{}: brought the index up to date",
                    paths.index.display()
                ));
            }
        }
        Ok(Archive::from_runs(
            paths.clone(),
            archive_id,
            runs,
            if may_write { index_len } else { 0 },
        ))
    }

    fn from_runs(
        paths: ArchivePaths,
        archive_id: Option<[u8; 16]>,
        runs: Vec<CommittedRun>,
        index_len: u64,
    ) -> Archive {
        let mut archive = Archive {
            paths,
            archive_id,
            runs: Vec::with_capacity(runs.len()),
            entries: Vec::new(),
            index_len,
            files: std::cell::OnceCell::new(),
        };
        for run in runs {
            archive.push_run(run);
        }
        archive
    }

    fn push_run(&mut self, run: CommittedRun) {
        if let Some(files) = self.files.get_mut() {
            files.extend(run.entries.iter().filter_map(message_guid));
        }
        let first = self.entries.len();
        self.entries.extend(run.entries);
        self.runs.push(RunInfo {
            run: run.run,
            start: run.start,
            marker_offset: run.marker_offset,
            end: run.end,
            time: run.time,
            compacted: run.compacted,
            entries: first..self.entries.len(),
        });
    }

    pub fn paths(&self) -> &ArchivePaths {
        &self.paths
    }

    pub fn archive_id(&self) -> Option<String> {
        self.archive_id.as_ref().map(hex_id)
    }

    pub fn runs(&self) -> &[RunInfo] {
        &self.runs
    }

    pub fn entries_of(&self, run: &RunInfo) -> &[EntryRecord] {
        &self.entries[run.entries.clone()]
    }

    /// Bytes of the archive that belong to committed runs.
    pub fn committed_len(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.end)
    }

    fn next_run(&self) -> u64 {
        self.runs.last().map_or(1, |r| r.run + 1)
    }

    /// The latest committed version of `name` with the run that wrote it; a tombstone counts as
    /// a version (check `is_tombstone`).
    pub fn latest(&self, name: &str) -> Option<(u64, &EntryRecord)> {
        for run in self.runs.iter().rev() {
            if let Some(e) = self.entries[run.entries.clone()]
                .iter()
                .rev()
                .find(|e| e.name == name)
            {
                return Some((run.run, e));
            }
        }
        None
    }

    /// The names that exist as of run `at` (all runs when `None`), each at its latest version,
    /// sorted by name; tombstoned names are left out.
    pub fn state_at(&self, at: Option<u64>) -> Vec<(u64, &EntryRecord)> {
        let mut state: BTreeMap<&str, (u64, &EntryRecord)> = BTreeMap::new();
        for run in self
            .runs
            .iter()
            .take_while(|r| at.is_none_or(|at| r.run <= at))
        {
            for e in &self.entries[run.entries.clone()] {
                state.insert(&e.name, (run.run, e));
            }
        }
        state
            .into_values()
            .filter(|(_, e)| !e.is_tombstone())
            .collect()
    }

    /// Whether a message file with this SHA-1 is stored.
    pub fn has_file(&self, guid: &Guid) -> bool {
        self.files
            .get_or_init(|| self.entries.iter().filter_map(message_guid).collect())
            .contains(guid)
    }

    /// The data of `entry`, read by seeking to its member (see `read_entry`).
    pub fn read_entry<'a>(&'a self, entry: &'a EntryRecord) -> Result<impl Read + 'a> {
        read_entry(&self.paths, entry)
    }
}

/// The latest committed version of `name` and the run that wrote it (tombstones included). When
/// the index is current this streams through it without building it in memory, so the cost does
/// not depend on how much else the archive holds; otherwise it opens the archive fully (which
/// repairs what needs repairing).
pub fn find_latest(
    paths: &ArchivePaths,
    name: &str,
    notices: &mut Vec<String>,
) -> Result<Option<(u64, EntryRecord)>> {
    if let Some(lookup) = index::find_latest(&paths.index, name)? {
        if let Some(last) = &lookup.last {
            // Read after the index: a commit in between shows up as a longer archive.
            let len = std::fs::metadata(&paths.archive)
                .map(|m| m.len())
                .unwrap_or(0);
            if len == last.end && marker_matches(&paths.archive, last, &lookup.archive_id) {
                return Ok(lookup.found);
            }
        }
    }
    let archive = Archive::open(paths, notices)?;
    Ok(archive.latest(name).map(|(run, e)| (run, e.clone())))
}

/// The data of `entry`, read by seeking to its member. The SHA-1 is checked as the last byte is
/// read: a mismatch is an error rather than a silently wrong copy.
pub fn read_entry<'a>(paths: &'a ArchivePaths, entry: &'a EntryRecord) -> Result<impl Read + 'a> {
    if entry.kind != EntryKind::File {
        return Err(Error::usage(format!(
            "{} is a symlink, not a file",
            entry.name
        )));
    }
    let path = &paths.archive;
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let inner = open_entry(file, &entry.placement, entry.size).map_err(|e| {
        Error::corrupt(
            path,
            entry.placement.member,
            format!("entry {}: {e}", entry.name),
        )
    })?;
    Ok(CheckedEntry {
        inner: HashingReader::new(inner),
        expected: entry.sha1,
        size: entry.size,
        name: &entry.name,
        path,
        member: entry.placement.member,
    })
}

/// The decompressed bytes of the members of `path` from byte `from` (a member boundary) up to
/// byte `to`, or of the one member there when `to` is `None`. Every member's integrity field is
/// checked; a failure is an error naming the file and the member's offset.
pub fn decode_members(path: &Path, from: u64, to: Option<u64>) -> Result<Vec<u8>> {
    use crate::archive::{MemberError, MemberReader, MAX_MEMBER_RAW};
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut members = MemberReader::new(file, from).map_err(|e| Error::io("seek", path, e))?;
    let mut out = Vec::new();
    let mut raw = Vec::new();
    loop {
        match members.next_member(&mut raw) {
            Ok(Some(m)) => m
                .integrity
                .map_err(|detail| Error::corrupt(path, m.offset, detail))?,
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

fn message_guid(e: &EntryRecord) -> Option<Guid> {
    e.name.strip_prefix(crate::archive::FILES_DIR)?.parse().ok()
}

fn damaged(path: &Path, d: &crate::archive::scan::Damage) -> Error {
    let mut detail = d.detail.clone();
    if let Some(entry) = &d.entry {
        detail = format!("entry {entry}: {detail}");
    }
    if let Some(w) = d.within {
        detail = format!("{detail} (byte {w} of the member's data)");
    }
    Error::corrupt(
        path,
        d.offset,
        format!("{detail}; committed data is damaged, run `mailpack verify`"),
    )
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
        if n > 0 && self.inner.count() == self.size && self.inner.digest() != self.expected {
            return Err(io::Error::other(Error::corrupt(
                self.path,
                self.member,
                format!("entry {} does not hash to {}", self.name, self.expected),
            )));
        }
        Ok(n)
    }
}

/// Options for a writer.
#[derive(Clone)]
pub struct WriterOptions {
    pub wait: LockWait,
    pub level: u32,
    pub threads: usize,
    pub faults: Faults,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            wait: LockWait::No,
            level: 6,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            faults: Faults::none(),
        }
    }
}

/// The one writer of an archive: holds the lock for its whole life.
pub struct StoreWriter {
    archive: Archive,
    writer: ArchiveWriter,
    archive_id: [u8; 16],
    faults: Faults,
    poisoned: bool,
    _lock: WriterLock,
}

impl StoreWriter {
    /// Takes the writer lock and opens (creating if needed) the archive of `paths`, repairing
    /// any uncommitted tail first.
    pub fn open(
        paths: &ArchivePaths,
        options: &WriterOptions,
        notices: &mut Vec<String>,
    ) -> Result<StoreWriter> {
        let lock = WriterLock::acquire(&paths.lock, options.wait, &options.faults)?;
        let (file, created) = open_private(&paths.archive)?;
        if created {
            // fsync the directory so the new archive's name survives a crash.
            fsync_dir(&paths.dir(), &options.faults)?;
        }
        let archive = Archive::load(paths, Repair::Held, &options.faults, notices)?;
        let archive_id = match archive.archive_id {
            Some(id) => id,
            None => random_id()?,
        };
        let writer = ArchiveWriter::new(
            DurableFile::new(file, &paths.archive, options.faults.clone()),
            archive.committed_len(),
            archive.next_run(),
            hex_id(&archive_id),
            options.level,
            options.threads,
        )?;
        Ok(StoreWriter {
            archive,
            writer,
            archive_id,
            faults: options.faults.clone(),
            poisoned: false,
            _lock: lock,
        })
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    pub fn writer(&mut self) -> &mut ArchiveWriter {
        &mut self.writer
    }

    /// The committed state and the writer at once: a backup compares against the first while
    /// appending through the second.
    pub fn split(&mut self) -> (&Archive, &mut ArchiveWriter) {
        (&self.archive, &mut self.writer)
    }

    /// Commits the run: marker, fsync of the archive, then the index block and its fsync.
    pub fn commit(&mut self, summary: &RunSummary) -> Result<&RunInfo> {
        if self.poisoned {
            return Err(Error::Poisoned(self.archive.paths.archive.clone()));
        }
        let run = self.writer.commit(summary)?;
        // The run is durable in the archive now; if the index append fails, the next open
        // re-indexes it from the archive's tail.
        match index::append(
            &self.archive.paths.index,
            &self.archive_id,
            self.archive.index_len,
            &run,
            &self.faults,
        ) {
            Ok(len) => self.archive.index_len = len,
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        }
        self.archive.archive_id = Some(self.archive_id);
        self.archive.push_run(run);
        Ok(self.archive.runs.last().expect("just pushed"))
    }
}
