//! Opening an archive (formats/archive.md section 6): reading the index and the archive as one
//! generation, scanning for committed runs, and the trust rules that decide what an open may do:
//! cut an interrupted writer's tail, rebuild an index, or refuse committed data that is damaged.
//! `repair` holds the one explicit salvage.

use std::io::{self, Read};
use std::path::Path;

use super::sidecar::{self, IndexRead};
use super::{Archive, ArchiveHandle, ArchivePaths, WriterLock, WriterWait};
use crate::archive::scan::Damage;
use crate::archive::{member_header, HEADER_LEN, MAX_MEMBER_PAYLOAD};
use crate::archive::{ArchiveId, CommittedRun, EntryRecord, ScanEvent, Scanner};
use crate::error::{Error, Result};
use crate::io::{DurableFile, Faults};

/// What `load` may do about what it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// A reader: never writes; an uncommitted tail is ignored, a stale index rebuilt in memory.
    Read,
    /// The caller holds the writer lock: cut an interrupted run's tail, rewrite the index.
    Write,
}

/// What a scan of part of the archive found.
pub(crate) struct ScanOutcome {
    pub runs: Vec<CommittedRun>,
    pub archive_id: Option<ArchiveId>,
    pub committed_end: u64,
    pub damage: Vec<Damage>,
    pub members: u64,
    pub file_len: u64,
}

impl ScanOutcome {
    /// The first damage inside committed data: bytes before the last good commit.
    pub fn damage_in_committed(&self) -> Option<&Damage> {
        self.damage.iter().find(|d| d.offset < self.committed_end)
    }
}

/// Scans from `from` (a member boundary), collecting complete runs that continue `prev`.
pub(crate) fn scan_runs(
    source: &ArchiveHandle,
    from: u64,
    prev: Option<(u64, u64)>,
    archive_id: Option<ArchiveId>,
) -> Result<ScanOutcome> {
    let mut runs = Vec::new();
    let mut outcome = scan_runs_with(source, from, prev, archive_id, None, &mut |run| {
        runs.push(run);
        Ok(())
    })?;
    outcome.runs = runs;
    Ok(outcome)
}

/// Where a scan hands each entry as it is read.
pub(crate) type EntrySink<'a> = dyn FnMut(&EntryRecord) -> Result<()> + 'a;

/// As `scan_runs`, but hands each complete run to `on_run` as it is found instead of keeping
/// it, so memory holds one run's entries at a time. With `on_entry`, not even that: each entry
/// goes to `on_entry` as it is read, and `on_run` gets the run without entries. Entries of a
/// run that then fails its commit checks have gone out too: the caller acts only on runs.
pub(crate) fn scan_runs_with(
    source: &ArchiveHandle,
    from: u64,
    prev: Option<(u64, u64)>,
    archive_id: Option<ArchiveId>,
    mut on_entry: Option<&mut EntrySink>,
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
    let mut pending_count = 0u64;
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
                pending_count += 1;
                match on_entry.as_mut() {
                    Some(visit) => visit(&e.record)?,
                    None => pending.push(e.record),
                }
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
            ScanEvent::Commit(crate::archive::scan::ScannedMarker { marker: m, member }) => {
                let mut problems = Vec::new();
                let id = m.archive_id.parse::<ArchiveId>().ok();
                match (out.archive_id, id) {
                    (Some(known), Some(id)) if known != id => problems.push(format!(
                        "archive-id {} is not this archive's {}",
                        m.archive_id, known
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
                if m.entries != pending_count {
                    problems.push(format!(
                        "commit counts {} entries but {pending_count} precede it",
                        m.entries,
                    ));
                }
                if problems.is_empty() {
                    on_run(CommittedRun {
                        run: m.run,
                        start: m.start,
                        marker_offset: member.offset,
                        end: member.end,
                        time: m.time,
                        compacted: m
                            .fields
                            .iter()
                            .find(|(k, _)| k == "compacted")
                            .and_then(|(_, v)| v.parse().ok()),
                        entries: std::mem::take(&mut pending),
                    })?;
                    pending_count = 0;
                    out.committed_end = member.end;
                } else {
                    out.damage.push(Damage {
                        offset: member.offset,
                        within: Some(0),
                        entry: Some(format!("runs/{}", m.run)),
                        detail: problems.join("; "),
                        torn: false,
                    });
                    pending.clear();
                    pending_count = 0;
                }
                expected_run = Some(m.run.checked_add(1));
                run_start = member.end;
            }
        }
    }
    Ok(out)
}

/// Does the member at `run.marker_offset` hold exactly this run's commit marker?
pub(super) fn marker_matches(
    source: &ArchiveHandle,
    run: &CommittedRun,
    archive_id: &ArchiveId,
) -> bool {
    let Ok(scanner) = Scanner::new(source.reader_at(0), source.path(), run.marker_offset) else {
        return false;
    };
    for event in scanner {
        match event {
            ScanEvent::Commit(crate::archive::scan::ScannedMarker { marker: m, member }) => {
                return m.run == run.run
                    && member.end == run.end
                    && member.integrity.is_ok()
                    && m.archive_id.parse::<ArchiveId>().ok() == Some(*archive_id)
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

    /// Opens the committed state of an archive for reading, as `open` does, but leaves the
    /// entries in the index file when the index is current (every byte a good block, the last
    /// commit where it says, nothing after it): a pass over them (`for_each_entry`) reads the
    /// index again, so memory does not grow with the archive (formats/compaction.md section 4).
    /// Anything else opens the full way, which knows what to do about it.
    pub fn open_streamed(paths: &ArchivePaths, notices: &mut Vec<String>) -> Result<Archive> {
        if let Some((source, frames)) = open_with_frames(paths)? {
            refuse_empty(&source)?;
            if let Some(archive) = Archive::streamed_if_current(paths, source, frames, false)? {
                return Ok(archive);
            }
        }
        Archive::open(paths, notices)
    }

    /// A streamed archive over `source` when `frames` (its index, read without entries) is
    /// current; a writer's (`for_writer`) next commit appends its block after the frames.
    pub(super) fn streamed_if_current(
        paths: &ArchivePaths,
        source: ArchiveHandle,
        frames: Option<sidecar::Frames>,
        for_writer: bool,
    ) -> Result<Option<Archive>> {
        let Some(frames) = frames else {
            return Ok(None);
        };
        let Some(last) = frames.runs.last() else {
            return Ok(None);
        };
        if !ends_with_run(&source, last, &frames.archive_id)? {
            return Ok(None);
        }
        let index_len = if for_writer { frames.len } else { 0 };
        let mut archive = Archive::from_runs(
            paths.clone(),
            source,
            Some(frames.archive_id),
            frames.runs,
            index_len,
        );
        for (run, block) in archive.runs.iter_mut().zip(&frames.blocks) {
            run.entry_count = block.count as usize;
        }
        archive.streamed = Some(super::IndexStream {
            path: paths.index.clone(),
            file: Some(frames.file),
            blocks: frames.blocks,
        });
        Ok(Some(archive))
    }

    /// Opens an archive under its writer lock, as `load` does with `Access::Write` (cutting an
    /// interrupted tail, rebuilding a stale index); with `streamed`, the entries are left in
    /// the index file once it is current (`open_streamed`), read again by `for_each_entry`.
    pub(super) fn load_for_writer(
        paths: &ArchivePaths,
        source: ArchiveHandle,
        index_missing: bool,
        streamed: bool,
        faults: &Faults,
        notices: &mut Vec<String>,
    ) -> Result<Archive> {
        if streamed && !index_missing {
            let frames = sidecar::read_frames(&paths.index)?;
            if let Some(archive) =
                Archive::streamed_if_current(paths, source.clone(), frames, true)?
            {
                return Ok(archive);
            }
        }
        let index = if index_missing {
            IndexRead::Missing
        } else {
            sidecar::read(&paths.index)?
        };
        let mut full = Archive::load(paths, source, index, Access::Write, faults, notices)?;
        if !streamed {
            return Ok(full);
        }
        if full.runs.is_empty() {
            // Nothing to stream; what this writer commits is not kept either.
            full.streamed = Some(super::IndexStream {
                path: paths.index.clone(),
                file: None,
                blocks: Vec::new(),
            });
            return Ok(full);
        }
        // The full open brought the index up to date: stream from it, letting the entries go.
        let frames = sidecar::read_frames(&paths.index)?;
        Ok(Archive::streamed_if_current(paths, full.source.clone(), frames, true)?.unwrap_or(full))
    }

    /// Reads an archive already open as `source`, with the index read beside it.
    pub(super) fn load_read_only(
        paths: &ArchivePaths,
        source: ArchiveHandle,
        index: IndexRead,
        notices: &mut Vec<String>,
    ) -> Result<Archive> {
        refuse_empty(&source)?;
        Archive::load(paths, source, index, Access::Read, &Faults::none(), notices)
    }

    /// Reads an archive held elsewhere than in a local file (an off-site copy) through
    /// `source`, with its index read from `paths.index` (a private copy the caller fetched). The
    /// same trust rules apply as to a local archive read by `open`: nothing here writes.
    pub fn open_elsewhere(
        paths: &ArchivePaths,
        source: ArchiveHandle,
        notices: &mut Vec<String>,
    ) -> Result<Archive> {
        let index = sidecar::read(&paths.index)?;
        Archive::load_read_only(paths, source, index, notices)
    }

    /// Rebuilds the index from the archive alone, whatever the current index says. The old
    /// index still vouches for how much was committed: an archive that ends before that is
    /// damage for `repair`, not a tail to cut.
    pub fn reindex(
        paths: &ArchivePaths,
        wait: WriterWait,
        notices: &mut Vec<String>,
    ) -> Result<Archive> {
        let _lock = WriterLock::acquire_existing(&paths.archive, &paths.lock, wait)?;
        let source = ArchiveHandle::open_writable(&paths.archive)?;
        let index = match sidecar::read(&paths.index)? {
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

    pub(super) fn load(
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
        let mut floor: Option<(u64, ArchiveId)> = None;
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
                        sidecar::write_full(&paths.index, id, &runs, faults)?;
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
                sidecar::write_full(&paths.index, &id, &runs, faults)?;
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
}

/// Opens the archive and reads its index so that both belong to one generation: the archive is
/// opened first, and if a compaction renamed a new one into place before the index was read,
/// both are read again. A reader that keeps losing that race scans without the index.
/// The archive and its index read as frames (`None` when the index does not read whole), of one
/// generation: `None` when a compaction renamed a new archive over the name three times over.
pub(super) fn open_with_frames(
    paths: &ArchivePaths,
) -> Result<Option<(ArchiveHandle, Option<sidecar::Frames>)>> {
    for _ in 0..3 {
        let source = ArchiveHandle::open(&paths.archive)?;
        let frames = sidecar::read_frames(&paths.index)?;
        if source.is_current() {
            return Ok(Some((source, frames)));
        }
    }
    Ok(None)
}

/// Whether `source` is a mailpack archive that ends where `last` (an index's last run) does,
/// with that run's commit marker there: then the index describes it whole. A file that is not
/// an archive, or whose first member is damaged, is an error.
pub(super) fn ends_with_run(
    source: &ArchiveHandle,
    last: &CommittedRun,
    archive_id: &ArchiveId,
) -> Result<bool> {
    let len = source.len()?;
    check_signature(source, len)?;
    Ok(len == last.end && marker_matches(source, last, archive_id))
}

pub(super) fn open_consistent(paths: &ArchivePaths) -> Result<(ArchiveHandle, IndexRead)> {
    for _ in 0..3 {
        let source = ArchiveHandle::open(&paths.archive)?;
        let index = sidecar::read(&paths.index)?;
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
pub(super) fn check_signature(source: &ArchiveHandle, file_len: u64) -> Result<()> {
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
pub(super) fn check_tail(
    source: &ArchiveHandle,
    from: u64,
    len: u64,
    damage: &[Damage],
) -> Result<()> {
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
pub(super) fn refuse_empty(source: &ArchiveHandle) -> Result<()> {
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

pub(super) fn damaged(path: &Path, d: &Damage) -> Error {
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
