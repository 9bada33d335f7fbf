//! An archive with its sidecar index and writer lock (formats/archive.md sections 5 to 8): opening
//! (which repairs an uncommitted tail and rebuilds a bad index), looking entries up, reading them
//! by seeking, and committing runs in the documented durability order.

pub mod index;
mod lock;
mod naming;
mod repair;
mod rewrite;
mod verify;

pub use lock::{LockWait, WriterLock};
pub use naming::{decode_user, encode_user, list_archives, list_own_archives, ArchivePaths};
pub use repair::{repair, RepairOptions, RepairReport, REPAIRS_DIR};
pub use rewrite::{Rewriter, REWRITE_SUFFIX};
pub use verify::{verify, Problem, VerifyReport};

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::archive::scan::Damage;
use crate::archive::{member_header, HEADER_LEN, MAX_MEMBER_PAYLOAD};
use crate::archive::{
    open_entry, ArchiveWriter, CommittedRun, EntryKind, EntryRecord, RunSummary, ScanEvent, Scanner,
};
use crate::error::{Error, Result};
use crate::guid::{Guid, HashingReader};
use crate::io::{fsync_dir, open_private, random_id, DurableFile, Faults, ReadAt};
use index::IndexRead;

/// Largest `repairs/<n>` list read back (names of lost entries, about 100 bytes each).
const MAX_REPAIR_LIST: u64 = 256 << 20;

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
    /// The generation of the archive file this state was read from; every read goes here.
    source: ArchiveHandle,
    archive_id: Option<[u8; 16]>,
    runs: Vec<RunInfo>,
    entries: Vec<EntryRecord>,
    /// Length of the index file's valid part, 0 when the next commit must create it.
    index_len: u64,
    /// SHA-1s of the stored message files, built on first use.
    files: std::cell::OnceCell<std::collections::HashSet<Guid>>,
}

/// What `load` may do about what it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// A reader: never writes; an uncommitted tail is ignored, a stale index rebuilt in memory.
    Read,
    /// The caller holds the writer lock: cut an interrupted run's tail, rewrite the index.
    Write,
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
    source: &ArchiveHandle,
    from: u64,
    prev: Option<(u64, u64)>,
    archive_id: Option<[u8; 16]>,
) -> Result<ScanOutcome> {
    let mut runs = Vec::new();
    let mut outcome = scan_runs_with(source, from, prev, archive_id, &mut |run| {
        runs.push(run);
        Ok(())
    })?;
    outcome.runs = runs;
    Ok(outcome)
}

/// As `scan_runs`, but hands each complete run to `on_run` as it is found instead of keeping
/// it, so memory holds one run's entries at a time.
pub(crate) fn scan_runs_with(
    source: &ArchiveHandle,
    from: u64,
    prev: Option<(u64, u64)>,
    archive_id: Option<[u8; 16]>,
    on_run: &mut dyn FnMut(CommittedRun) -> Result<()>,
) -> Result<ScanOutcome> {
    let path = source.path();
    let file_len = source.len()?;
    let scanner =
        Scanner::new(source.reader_at(0), path, from).map_err(|e| Error::io("seek", path, e))?;
    let mut out = ScanOutcome {
        runs: Vec::new(),
        archive_id,
        committed_end: from,
        damage: Vec::new(),
        members: 0,
        file_len,
    };
    // `None` inside: the previous run was numbered 2^64-1, so no run may follow it.
    let mut expected_run = prev.map(|(run, _)| run.checked_add(1));
    let mut run_start = from;
    let mut pending: Vec<EntryRecord> = Vec::new();
    for event in scanner {
        match event {
            ScanEvent::Entry(e) => {
                if let (Some(run), Some(expected)) = (e.run, expected_run) {
                    if Some(run) != expected {
                        out.damage.push(Damage {
                            offset: e.record.placement.member,
                            within: Some(e.record.placement.header_at as u64),
                            entry: Some(e.record.name.clone()),
                            detail: match expected {
                                Some(expected) => {
                                    format!("entry says run {run} but stands in run {expected}")
                                }
                                None => {
                                    format!("entry says run {run} but no run may follow 2^64-1")
                                }
                            },
                            torn: false,
                        });
                    }
                }
                pending.push(e.record);
            }
            ScanEvent::MemberEnd(m) => {
                out.members += 1;
                if let Err(crate::error::ParseError { detail, .. }) = m.integrity {
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
                match expected_run {
                    Some(Some(expected)) if m.run != expected => problems.push(format!(
                        "commit of run {} where run {expected} was due",
                        m.run
                    )),
                    Some(None) => problems.push(format!(
                        "commit of run {} after run 2^64-1, the last there can be",
                        m.run
                    )),
                    _ => {}
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
                expected_run = Some(m.run.checked_add(1));
                run_start = m.member.end;
            }
        }
    }
    Ok(out)
}

/// Does the member at `run.marker_offset` hold exactly this run's commit marker?
fn marker_matches(source: &ArchiveHandle, run: &CommittedRun, archive_id: &[u8; 16]) -> bool {
    let Ok(scanner) = Scanner::new(source.reader_at(0), source.path(), run.marker_offset) else {
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
    /// Opens the committed state of an archive for reading. Takes no lock and never writes:
    /// an uncommitted tail is left for the next writer, and a stale index is rebuilt in memory.
    /// The one file handle opened here serves every later read of this `Archive`, so a
    /// compaction renaming a new generation into place meanwhile changes nothing it reads.
    pub fn open(paths: &ArchivePaths, notices: &mut Vec<String>) -> Result<Archive> {
        let (source, index) = open_consistent(paths)?;
        Archive::load_read_only(paths, source, index, notices)
    }

    /// Reads an archive already open as `source`, with the index read beside it.
    fn load_read_only(
        paths: &ArchivePaths,
        source: ArchiveHandle,
        index: IndexRead,
        notices: &mut Vec<String>,
    ) -> Result<Archive> {
        refuse_empty(&source)?;
        Archive::load(paths, source, index, Access::Read, &Faults::none(), notices)
    }

    /// Rebuilds the index from the archive alone, whatever the current index says. The old
    /// index still vouches for how much was committed: an archive that ends before that is
    /// damage for `repair`, not a tail to cut.
    pub fn reindex(
        paths: &ArchivePaths,
        wait: LockWait,
        notices: &mut Vec<String>,
    ) -> Result<Archive> {
        let _lock = WriterLock::acquire_existing(&paths.archive, &paths.lock, wait)?;
        let source = ArchiveHandle::open_writable(&paths.archive)?;
        let index = match index::read(&paths.index)? {
            IndexRead::Valid {
                archive_id, runs, ..
            } if !runs.is_empty() => IndexRead::Floor {
                archive_id,
                end: runs.last().expect("not empty").end,
            },
            _ => IndexRead::Missing,
        };
        let archive = Archive::load(
            paths,
            source,
            index,
            Access::Write,
            &Faults::none(),
            notices,
        )?;
        Ok(archive)
    }

    fn load(
        paths: &ArchivePaths,
        source: ArchiveHandle,
        read: IndexRead,
        access: Access,
        faults: &Faults,
        notices: &mut Vec<String>,
    ) -> Result<Archive> {
        let path = &paths.archive;
        // The index was read before the archive's length: a commit in between then shows up
        // as a tail to scan rather than as an archive shorter than its index.
        let file_len = source.len()?;
        check_signature(&source, file_len)?;

        let mut rebuilt: Option<String> = None;
        let mut index_len = 0;
        let mut index_torn = false;
        // The index vouches that data up to here was committed: a scan that cannot see that
        // far has found damage or a cut, never a tail to remove.
        let mut floor: Option<(u64, [u8; 16])> = None;
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
                    floor = Some((last.end, archive_id));
                } else if !marker_matches(&source, last, &archive_id) {
                    rebuilt = Some(format!(
                        "the index's last commit is not at byte {} of the archive",
                        last.marker_offset
                    ));
                    floor = Some((last.end, archive_id));
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
            IndexRead::Floor { archive_id, end } => {
                rebuilt = Some("a rebuild was asked for".into());
                floor = Some((end, archive_id));
            }
        }

        let outcome = match known_runs.last() {
            Some(last) if rebuilt.is_none() => {
                if file_len > last.end {
                    scan_runs(&source, last.end, Some((last.run, last.end)), known_id)?
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
            _ => scan_runs(&source, 0, None, None)?,
        };
        if let Some(d) = outcome.damage_in_committed() {
            return Err(damaged(path, d));
        }
        if let Some((end, id)) = floor {
            // An index of another archive (another id) vouches for nothing here.
            let same_archive = outcome.archive_id.is_none_or(|found| found == id);
            if same_archive && outcome.committed_end < end {
                return Err(match outcome.damage.first() {
                    Some(d) => damaged(path, d),
                    None => Error::corrupt(
                        path,
                        outcome.committed_end,
                        format!(
                            "committed data ends early: the file is {file_len} bytes, its index \
                             says {end} were committed; run `mailpack repair` (it keeps this \
                             file)"
                        ),
                    ),
                });
            }
        }
        let tail = file_len.saturating_sub(outcome.committed_end);
        if tail > 0 {
            check_tail(&source, outcome.committed_end, file_len, &outcome.damage)?;
        }
        let new_runs = !outcome.runs.is_empty() && rebuilt.is_none();

        let mut runs = known_runs;
        runs.extend(outcome.runs);
        let archive_id = known_id.or(outcome.archive_id);
        if access == Access::Write {
            if tail > 0 {
                let file = source.writable()?;
                let mut file = DurableFile::new(file, path, faults.clone());
                file.truncate(outcome.committed_end)?;
                file.sync()?;
                notices.push(format!(
                    "{}: removed {tail} bytes of an interrupted run after byte {}",
                    path.display(),
                    outcome.committed_end
                ));
            }
            if let Some(reason) = &rebuilt {
                match &archive_id {
                    Some(id) if !runs.is_empty() => {
                        index::write_full(&paths.index, id, &runs, faults)?;
                        index_len = index_file_len(&paths.index)?;
                    }
                    _ => {
                        crate::io::remove_if_present(&paths.index, faults)?;
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
                index_len = index_file_len(&paths.index)?;
                notices.push(format!(
                    "{}: brought the index up to date",
                    paths.index.display()
                ));
            }
        }
        Ok(Archive::from_runs(
            paths.clone(),
            source,
            archive_id,
            runs,
            if access == Access::Write {
                index_len
            } else {
                0
            },
        ))
    }

    fn from_runs(
        paths: ArchivePaths,
        source: ArchiveHandle,
        archive_id: Option<[u8; 16]>,
        runs: Vec<CommittedRun>,
        index_len: u64,
    ) -> Archive {
        let mut archive = Archive {
            paths,
            source,
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

    /// The next run's number; `None` once the last run took the highest number there is.
    fn next_run(&self) -> Option<u64> {
        match self.runs.last() {
            None => Some(1),
            Some(r) => r.run.checked_add(1),
        }
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

    /// The file this state was read from.
    pub fn handle(&self) -> &ArchiveHandle {
        &self.source
    }

    /// The entries the repair that wrote the newest run lost (its `repairs/<n>` entry), when the
    /// newest run is a repair's: the next backup stores them again from the spool.
    pub fn repair_losses(&self) -> Result<Option<BTreeSet<String>>> {
        let Some(last) = self.runs.last() else {
            return Ok(None);
        };
        let name = format!("{REPAIRS_DIR}{}", last.run);
        let Some(entry) = self.entries_of(last).iter().find(|e| e.name == name) else {
            return Ok(None);
        };
        // The list is bounded by what the repair lost, but read with a cap all the same.
        let mut list = Vec::new();
        self.read_entry(entry)?
            .take(MAX_REPAIR_LIST)
            .read_to_end(&mut list)
            .map_err(|e| Error::io("read", &self.paths.archive, e))?;
        Ok(Some(repair::parse_losses(&list)))
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
    if let Some(lookup) = index::find_latest(&paths.index, name)? {
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
/// generation from start to end whatever is renamed over its name meanwhile.
#[derive(Clone)]
pub struct ArchiveHandle {
    path: PathBuf,
    file: Arc<File>,
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
    fn open_writable(path: &Path) -> Result<ArchiveHandle> {
        let file = crate::io::open_own_writable(path).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("archive {}", path.display())),
            e => e,
        })?;
        Ok(ArchiveHandle::from_file(path, file))
    }

    /// Wraps a file the caller opened (a writer's read-write handle).
    fn from_file(path: &Path, file: File) -> ArchiveHandle {
        ArchiveHandle {
            path: path.to_path_buf(),
            file: Arc::new(file),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    #[allow(clippy::len_without_is_empty)] // a length read by fstat can fail; no cheap is_empty
    pub fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("stat", &self.path, e))
    }

    pub fn reader_at(&self, pos: u64) -> ReadAt {
        ReadAt::new(self.file.clone(), pos)
    }

    /// A handle to the same open file for truncating a tail (writers only: theirs is opened
    /// read-write).
    fn writable(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(|e| Error::io("dup", &self.path, e))
    }

    /// Whether the name still leads to this generation (no rename replaced it since it was
    /// opened).
    fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), std::fs::symlink_metadata(&self.path)) {
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

/// Opens the archive and reads its index so that both belong to one generation: the archive is
/// opened first, and if a compaction renamed a new one into place before the index was read,
/// both are read again. A reader that keeps losing that race scans without the index.
fn open_consistent(paths: &ArchivePaths) -> Result<(ArchiveHandle, IndexRead)> {
    for _ in 0..3 {
        let source = ArchiveHandle::open(&paths.archive)?;
        let index = index::read(&paths.index)?;
        if source.is_current() {
            return Ok((source, index));
        }
    }
    Ok((ArchiveHandle::open(&paths.archive)?, IndexRead::Missing))
}

/// The first bytes mailpack writes in every member (formats/archive.md 3.1): gzip magic,
/// deflate, FLG=FEXTRA, MTIME 0, XFL 0, OS 255, XLEN 12, subfield "MP" of 8 bytes.
fn member_signature() -> [u8; 16] {
    member_header(0, 0)[..16].try_into().expect("16 bytes")
}

/// Refuses a file that does not begin with a mailpack member (or a torn prefix of one): another
/// program's file at an archive's name is never read as an archive, let alone cut.
fn check_signature(source: &ArchiveHandle, file_len: u64) -> Result<()> {
    let signature = member_signature();
    let mut head = [0u8; 16];
    let n = read_at_most(source, 0, &mut head)?;
    if head[..n] == signature[..n] {
        return Ok(());
    }
    // A mailpack member further on means this is an archive whose first header is damaged.
    let probe = file_len.min(2 << 20);
    let mut buf = vec![0u8; probe as usize];
    let n = read_at_most(source, 0, &mut buf)?;
    if buf[..n].windows(signature.len()).any(|w| w == signature) {
        return Err(Error::corrupt(
            source.path(),
            0,
            "the first member's header is damaged; run `mailpack repair` (it keeps this file)",
        ));
    }
    Err(Error::Foreign {
        path: source.path().to_path_buf(),
        detail: "is not a mailpack archive: it does not begin with a mailpack gzip member".into(),
    })
}

fn read_at_most(source: &ArchiveHandle, at: u64, buf: &mut [u8]) -> Result<usize> {
    let mut reader = source.reader_at(at);
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", source.path(), e)),
        }
    }
    Ok(n)
}

/// Checks that the bytes after the last commit (`from` to `len`) are what an interrupted writer
/// leaves, the only bytes any command may cut (formats/archive.md 6.2): intact mailpack members,
/// then at most one member the file ends inside (its deflate stream runs into the end of the
/// file), or zeros the file system filled in at the end (section 9). Anything else (a member
/// that decodes completely but fails its integrity field, one that does not decode without the
/// file's end explaining it, a commit marker, foreign bytes) is damage to report, not a tail.
fn check_tail(source: &ArchiveHandle, from: u64, len: u64, damage: &[Damage]) -> Result<()> {
    use crate::archive::{MemberError, MemberReader};
    let path = source.path();
    if let Some(d) = damage.iter().find(|d| {
        d.offset >= from
            && d.entry
                .as_deref()
                .is_some_and(|e| e.starts_with(crate::archive::RUNS_DIR))
    }) {
        return Err(damaged(path, d));
    }
    let zeros_from = zero_suffix_start(source, from, len)?;
    let signature = member_signature();
    let mut members =
        MemberReader::new(source.reader_at(0), from).map_err(|e| Error::io("seek", path, e))?;
    let mut raw = Vec::new();
    loop {
        let at = members.position();
        if at >= len || at >= zeros_from {
            return Ok(());
        }
        let mut head = [0u8; 16];
        let n = read_at_most(source, at, &mut head)?;
        if head[..n] != signature[..n] {
            return Err(not_a_tail(path, at, "bytes that are not a mailpack member"));
        }
        // Where the member's integrity field says it ends: a torn member must reach past the
        // end of the file (one that ends exactly there is complete, and damaged if it does not
        // decode), or into its zero-filled end.
        let mut field = [0u8; HEADER_LEN];
        let claimed_end = (read_at_most(source, at, &mut field)? == HEADER_LEN).then(|| {
            let payload = u64::from(u32::from_le_bytes(field[16..20].try_into().expect("4")));
            (payload <= MAX_MEMBER_PAYLOAD).then_some(at + HEADER_LEN as u64 + payload)
        });
        let reaches = |limit: u64| match claimed_end {
            None => true, // the file ends inside the header itself
            Some(Some(end)) => end > limit,
            Some(None) => false,
        };
        match members.next_member(&mut raw) {
            Ok(None) => return Ok(()),
            Ok(Some(m)) if m.integrity.is_ok() => {}
            Ok(Some(_)) => {
                return Err(not_a_tail(
                    path,
                    at,
                    "a complete member that fails its integrity field (damage, not an \
                     interrupted write)",
                ))
            }
            // The deflate stream runs into the end of the file: a torn append.
            Err(MemberError::Torn { .. }) if reaches(len) => return Ok(()),
            // Bytes that do not decode, explained by a zero-filled end of the file.
            Err(MemberError::Bad { .. }) if zeros_from < len && reaches(zeros_from) => {
                return Ok(())
            }
            Err(MemberError::Torn { detail, .. }) => {
                return Err(not_a_tail(
                    path,
                    at,
                    &format!("a member that ends before its integrity field says ({detail})"),
                ))
            }
            Err(MemberError::Bad { detail, .. }) => {
                return Err(not_a_tail(
                    path,
                    at,
                    &format!("a member that does not decode ({detail})"),
                ))
            }
            Err(MemberError::Io(e)) => return Err(Error::io("read", path, e)),
        }
    }
}

/// An empty file at an archive's name holds nothing to read: readers report it. (A writer that
/// commits nothing removes the file it created; only a crash leaves one, and the next writer
/// takes it as new.)
fn refuse_empty(source: &ArchiveHandle) -> Result<()> {
    if source.len()? == 0 {
        return Err(Error::Foreign {
            path: source.path().to_path_buf(),
            detail: "is empty and holds no committed run (a crash during a first backup \
                     leaves this; the next backup of the user writes it)"
                .into(),
        });
    }
    Ok(())
}

fn not_a_tail(path: &Path, at: u64, what: &str) -> Error {
    Error::corrupt(
        path,
        at,
        format!(
            "after the last commit the archive holds {what}; nothing was removed; run `mailpack \
             repair` (it keeps this file)"
        ),
    )
}

/// Fewest trailing zero bytes taken as a zero-filled end rather than data: a member's trailer
/// (CRC32 and length) often ends in a zero byte or two, never in eight.
const MIN_ZERO_FILL: u64 = 8;

/// Where the run of zero bytes that ends the file starts (`len` when it does not end in at
/// least `MIN_ZERO_FILL` zero bytes).
fn zero_suffix_start(source: &ArchiveHandle, from: u64, len: u64) -> Result<u64> {
    let start = zero_run_start(source, from, len)?;
    Ok(if len - start >= MIN_ZERO_FILL {
        start
    } else {
        len
    })
}

fn zero_run_start(source: &ArchiveHandle, from: u64, len: u64) -> Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > from {
        let start = end.saturating_sub(buf.len() as u64).max(from);
        let chunk = &mut buf[..(end - start) as usize];
        let n = read_at_most(source, start, chunk)?;
        let chunk = &chunk[..n];
        match chunk.iter().rposition(|&b| b != 0) {
            Some(i) => return Ok(start + i as u64 + 1),
            None => end = start,
        }
    }
    Ok(from)
}

fn index_file_len(path: &Path) -> Result<u64> {
    std::fs::symlink_metadata(path)
        .map(|m| m.len())
        .map_err(|e| Error::io("stat", path, e))
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
        format!(
            "{detail}; committed data is damaged and nothing was changed: `mailpack verify` \
             lists every problem, `mailpack repair` salvages what reads (it keeps this file)"
        ),
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
    /// Set when a committed run's index append failed: the run stands, the index is stale.
    index_failure: Option<String>,
    /// This writer created the archive file: if it commits nothing, it removes it again, so a
    /// refused user leaves no empty files behind.
    created: bool,
    lock: WriterLock,
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if self.created && self.archive.runs.is_empty() {
            let paths = &self.archive.paths;
            remove_created(&paths.archive, &self.archive.source.file);
            self.lock.remove_file(&paths.lock);
        }
    }
}

/// Removes an archive file this writer created, if it is still empty and still the file at
/// that name (never another file renamed there meanwhile).
fn remove_created(path: &Path, created: &File) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(ours), Ok(named)) = (created.metadata(), std::fs::symlink_metadata(path)) else {
        return;
    };
    if ours.dev() == named.dev() && ours.ino() == named.ino() && named.len() == 0 {
        let _ = std::fs::remove_file(path);
    }
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
        let loaded = (|| {
            if created {
                // fsync the directory so the new archive's name survives a crash.
                fsync_dir(&paths.dir(), &options.faults)?;
            }
            // An empty file is what a crash leaves between creating an archive and its first
            // member: a writer takes it as new (readers report it, `refuse_empty`).
            let source = ArchiveHandle::from_file(
                &paths.archive,
                file.try_clone()
                    .map_err(|e| Error::io("dup", &paths.archive, e))?,
            );
            // An index beside an archive that did not exist describes nothing here (its
            // archive was removed by hand): it is replaced by the first commit.
            let index = if created {
                IndexRead::Missing
            } else {
                index::read(&paths.index)?
            };
            Archive::load(
                paths,
                source,
                index,
                Access::Write,
                &options.faults,
                notices,
            )
        })();
        let archive = match loaded {
            Ok(archive) => archive,
            Err(e) => {
                if created {
                    remove_created(&paths.archive, &file);
                    lock.remove_file(&paths.lock);
                }
                return Err(e);
            }
        };
        let archive_id = match archive.archive_id {
            Some(id) => id,
            None => random_id()?,
        };
        let writer = ArchiveWriter::new(
            DurableFile::new(file, &paths.archive, options.faults.clone()),
            archive.committed_len(),
            archive.next_run().ok_or_else(|| {
                Error::usage(format!(
                    "{}: run numbers are exhausted; nothing was committed",
                    paths.archive.display()
                ))
            })?,
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
            index_failure: None,
            created,
            lock,
        })
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// Why the last commit's index block is missing, when it is (the run itself is committed).
    pub fn index_failure(&self) -> Option<&str> {
        self.index_failure.as_deref()
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
                // Committed all the same: report it, and let no further run append to an
                // index whose length is unknown (the next open rebuilds it).
                self.poisoned = true;
                self.index_failure = Some(format!(
                    "run {} is committed, but its index block was not written ({e}); the next \
                     open rebuilds the index",
                    run.run
                ));
            }
        }
        self.archive.archive_id = Some(self.archive_id);
        self.archive.push_run(run);
        Ok(self.archive.runs.last().expect("just pushed"))
    }
}
