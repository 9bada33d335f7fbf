//! `verify`: reads every byte of an archive and reports each problem with the entry and byte
//! offset: member integrity fields and gzip CRCs, tar header checksums, entry names, message
//! SHA-1s, commit markers, and agreement between the sidecar index and the archive.

use std::path::{Path, PathBuf};

use super::open::{
    check_tail, ends_with_run, open_consistent, open_with_frames, refuse_empty, scan_runs_with,
};
use super::sidecar::{BlockCursor, Frames, IndexRead};
use super::{Archive, ArchiveHandle, ArchivePaths};
use crate::archive::EntryRecord;
use crate::error::Result;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Problem {
    /// Byte offset in the archive file of the gzip member concerned.
    pub offset: u64,
    /// Offset within that member's decompressed bytes, when known.
    pub within: Option<u64>,
    /// The entry concerned, or the first entry the index places in that member.
    pub entry: Option<String>,
    pub detail: String,
}

#[derive(Debug, serde::Serialize)]
pub struct VerifyReport {
    pub archive: PathBuf,
    pub user: Option<String>,
    pub runs: u64,
    pub entries: u64,
    pub members: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
    /// Repairs made while opening (truncated tail, rebuilt index).
    pub repaired: Vec<String>,
}

pub fn verify(paths: &ArchivePaths) -> Result<VerifyReport> {
    // A current index is compared entry by entry as it streams out of its file, never held
    // (issue 19); any other goes the full way, which says what is wrong with it. One
    // generation, one handle: the open and the scan read the same bytes even if a compaction
    // renames a new archive over the name meanwhile.
    if let Some((source, Some(frames))) = open_with_frames(paths)? {
        let current = frames
            .runs
            .last()
            .is_some_and(|last| is_current(&source, last, &frames.archive_id, true));
        if current {
            return verify_scanned(
                paths,
                source,
                IndexSide::Streamed(&paths.index, &frames),
                Vec::new(),
            );
        }
    }
    let (source, index) = open_consistent(paths)?;
    verify_opened(paths, source, index)
}

/// Whether an index that reads `whole` (every byte a good block) ends where the archive does, at
/// the run it names: then an open would repair nothing and report nothing. Anything amiss (an
/// empty or foreign file, a damaged first member) is not current, and goes the full way, which
/// says what it is.
fn is_current(
    source: &ArchiveHandle,
    last: &crate::archive::CommittedRun,
    archive_id: &crate::archive::ArchiveId,
    whole: bool,
) -> bool {
    whole
        && refuse_empty(source).is_ok()
        && ends_with_run(source, last, archive_id).unwrap_or(false)
}

/// The index `verify` compares the archive with.
enum IndexSide<'a> {
    /// Read whole (`sidecar::read`): how a missing, torn, damaged or stale index is read.
    Read(&'a IndexRead),
    /// Current, read as frames: its entries are pulled from the file as the scan needs them.
    Streamed(&'a Path, &'a Frames),
}

/// The index's entries in the order the scan reaches them: entry `position` of the index's
/// run `good`, for the entry the scan just read.
struct IndexEntries<'a> {
    side: &'a IndexSide<'a>,
    cursor: Option<(usize, BlockCursor<'a>)>,
    /// Blocks that no longer read as they did when the frames were read.
    failed: Vec<(usize, crate::Error)>,
}

impl<'a> IndexEntries<'a> {
    /// Whether the index's entry at `good`, `position` differs from `e` (`false` when the
    /// index has no entry there: the counts are compared once the run is known good).
    fn differs(&mut self, good: usize, position: usize, e: &EntryRecord) -> bool {
        match self.side {
            IndexSide::Read(IndexRead::Valid { runs, .. }) => runs
                .get(good)
                .and_then(|r| r.entries.get(position))
                .is_some_and(|a| a != e),
            IndexSide::Read(_) => false,
            IndexSide::Streamed(path, frames) => {
                if self.failed.iter().any(|(b, _)| *b == good) {
                    return false;
                }
                if self.cursor.as_ref().is_none_or(|(b, _)| *b != good) {
                    self.cursor = None;
                    let Some(block) = frames.blocks.get(good) else {
                        return false;
                    };
                    match frames.file.cursor(path, block) {
                        Ok(c) => self.cursor = Some((good, c)),
                        Err(err) => {
                            self.failed.push((good, err));
                            return false;
                        }
                    }
                }
                let (_, cursor) = self.cursor.as_mut().expect("opened above");
                match cursor.next_entry() {
                    Ok(Some(a)) => a != *e,
                    Ok(None) => false,
                    Err(err) => {
                        self.cursor = None;
                        self.failed.push((good, err));
                        false
                    }
                }
            }
        }
    }
}

/// `verify` of an archive held elsewhere (an off-site copy), read through `source`, with its
/// index at `paths.index`.
pub fn verify_elsewhere(paths: &ArchivePaths, source: ArchiveHandle) -> Result<VerifyReport> {
    let index = super::sidecar::read(&paths.index)?;
    verify_opened(paths, source, index)
}

fn verify_opened(
    paths: &ArchivePaths,
    source: ArchiveHandle,
    index: IndexRead,
) -> Result<VerifyReport> {
    let mut repaired = Vec::new();
    // Opening repairs what may be repaired; damage inside committed data makes it fail, and the
    // scan below then names every problem.
    // An index that is current needs no open to say so: the open would repair nothing and
    // report nothing, and it would hold a second copy of every entry (issue 19).
    let current = match &index {
        IndexRead::Valid {
            runs,
            archive_id,
            good_len,
            file_len,
        } => runs
            .last()
            .is_some_and(|last| is_current(&source, last, archive_id, good_len == file_len)),
        _ => false,
    };
    if !current {
        let opened = Archive::load_read_only(paths, source.clone(), index.clone(), &mut repaired);
        match opened {
            Err(crate::Error::NotFound(what)) => return Err(crate::Error::NotFound(what)),
            // Not ours: nothing in it is checked as if it were an archive.
            Err(e @ crate::Error::Foreign { .. }) => return Err(e),
            _ => {}
        }
    }
    verify_scanned(paths, source, IndexSide::Read(&index), repaired)
}

/// Scans the archive, comparing it with `index` as it goes, and reports every problem.
fn verify_scanned(
    paths: &ArchivePaths,
    source: ArchiveHandle,
    index: IndexSide,
    repaired: Vec<String>,
) -> Result<VerifyReport> {
    // The index's runs, and each one's entry count: what a run the scan finds good is compared
    // with, frame and count, before its entries' disagreements are reported.
    let (index_runs, index_counts): (&[crate::archive::CommittedRun], Vec<usize>) = match &index {
        IndexSide::Read(IndexRead::Valid { runs, .. }) => {
            (runs, runs.iter().map(|r| r.entries.len()).collect())
        }
        IndexSide::Read(_) => (&[], Vec::new()),
        IndexSide::Streamed(_, frames) => (
            &frames.runs,
            frames.blocks.iter().map(|b| b.count as usize).collect(),
        ),
    };

    // Entries by member, to name what a damaged member holds: one name a member.
    let mut members: std::collections::BTreeMap<u64, String> = std::collections::BTreeMap::new();
    let mut entries = IndexEntries {
        side: &index,
        cursor: None,
        failed: Vec::new(),
    };
    for (k, run) in index_runs.iter().enumerate() {
        let mut note = |e: &EntryRecord| {
            members
                .entry(e.placement.member)
                .or_insert_with(|| e.name.clone());
        };
        match &index {
            IndexSide::Streamed(path, frames) => {
                let streamed = frames
                    .file
                    .stream_entries(path, &frames.blocks[k], &mut |e| {
                        note(&e);
                        Ok(())
                    });
                // Reported once, below; the comparison leaves the block alone.
                if let Err(e) = streamed {
                    entries.failed.push((k, e));
                }
            }
            _ => run.entries.iter().for_each(&mut note),
        }
        members
            .entry(run.marker_offset)
            .or_insert_with(|| format!("runs/{}", run.run));
    }

    // The scan hands each entry over as it reads it, and each is compared at once with the
    // index's entry in the same place, so no scanned run is held (issue 19): the entries being
    // read belong to the next good run (`good`), and their disagreements wait for its commit,
    // since a run that fails its commit checks is damage, reported as such, not compared.
    #[derive(Default)]
    struct Lockstep {
        good: usize,
        position: usize,
        pending: Vec<Problem>,
        /// Per good run, in order: the entries the index disagrees about.
        disagreements: Vec<Vec<Problem>>,
        // Each good run scanned, without entries, and how many it had.
        scanned: Vec<(crate::archive::CommittedRun, usize)>,
    }
    let state = std::cell::RefCell::new(Lockstep::default());
    let mut on_entry = |e: &crate::archive::EntryRecord| {
        members
            .entry(e.placement.member)
            .or_insert_with(|| e.name.clone());
        let mut st = state.borrow_mut();
        if entries.differs(st.good, st.position, e) {
            let run = index_runs[st.good].run;
            st.pending.push(Problem {
                offset: e.placement.member,
                within: Some(e.placement.header_at as u64),
                entry: Some(e.name.clone()),
                detail: format!(
                    "the index disagrees with the archive about this entry (run {run})"
                ),
            });
        }
        st.position += 1;
        Ok(())
    };
    let mut on_run = |run: crate::archive::CommittedRun| {
        let mut st = state.borrow_mut();
        // Only a good run reaches here: the entries since the last one are its own.
        let count = st.position;
        let pending = std::mem::take(&mut st.pending);
        st.disagreements.push(pending);
        st.scanned.push((run, count));
        st.position = 0;
        st.good += 1;
        Ok(())
    };
    let outcome = scan_runs_with(&source, 0, None, None, Some(&mut on_entry), &mut on_run)?;
    let Lockstep {
        mut disagreements,
        scanned,
        ..
    } = state.into_inner();
    for (run, _) in &scanned {
        members
            .entry(run.marker_offset)
            .or_insert_with(|| format!("runs/{}", run.run));
    }

    let tail = outcome.file_len.saturating_sub(outcome.committed_end);
    // A torn member after the last commit is what an interrupted writer leaves (a kill can cut
    // a write short): the same check a writer's open makes before cutting it decides whether it
    // is that, reported as the tail below, or damage.
    let interrupted_tail = tail > 0
        && check_tail(
            &source,
            outcome.committed_end,
            outcome.file_len,
            &outcome.damage,
        )
        .is_ok();
    let mut problems: Vec<Problem> = outcome
        .damage
        .iter()
        .filter(|d| !(interrupted_tail && d.offset >= outcome.committed_end))
        .map(|d| Problem {
            offset: d.offset,
            within: d.within,
            entry: d.entry.clone().or_else(|| members.get(&d.offset).cloned()),
            detail: d.detail.clone(),
        })
        .collect();

    if tail > 0
        && (interrupted_tail
            || outcome
                .damage
                .iter()
                .all(|d| d.offset < outcome.committed_end))
    {
        problems.push(Problem {
            offset: outcome.committed_end,
            within: None,
            entry: None,
            detail: format!("{tail} bytes after the last commit belong to no committed run (a writer may be running)"),
        });
    }

    problems.extend(entries.failed.into_iter().map(|(good, e)| {
        index_problem(
            index_runs.get(good).map_or(0, |r| r.marker_offset),
            e.to_string(),
        )
    }));
    match &index {
        IndexSide::Read(IndexRead::Missing) => {
            if !scanned.is_empty() {
                problems.push(index_problem(0, "the index is missing".into()))
            }
        }
        IndexSide::Read(IndexRead::Invalid(reason)) => {
            problems.push(index_problem(0, format!("the index is unusable: {reason}")))
        }
        // Only `reindex` makes one; a file's index never reads as this.
        IndexSide::Read(IndexRead::Floor { .. }) => {}
        IndexSide::Read(IndexRead::Valid { .. }) | IndexSide::Streamed(..) => {
            let runs = index_runs;
            for (i, (scanned, count)) in scanned.iter().enumerate() {
                let Some(indexed) = runs.get(i) else {
                    problems.push(index_problem(
                        scanned.marker_offset,
                        format!("the index lacks run {}", scanned.run),
                    ));
                    continue;
                };
                let same_frame = (
                    indexed.run,
                    indexed.start,
                    indexed.marker_offset,
                    indexed.end,
                    indexed.time,
                ) == (
                    scanned.run,
                    scanned.start,
                    scanned.marker_offset,
                    scanned.end,
                    scanned.time,
                );
                if !same_frame || index_counts[i] != *count {
                    problems.push(index_problem(
                        scanned.marker_offset,
                        format!(
                            "the index's run {} disagrees with the archive's run {}",
                            indexed.run, scanned.run
                        ),
                    ));
                    continue;
                }
                // Entry by entry, as the scan found them.
                problems.append(&mut disagreements[i]);
            }
            if runs.len() > scanned.len() {
                problems.push(index_problem(
                    outcome.committed_end,
                    format!(
                        "the index lists {} runs, the archive holds {}",
                        runs.len(),
                        scanned.len()
                    ),
                ));
            }
        }
    }
    if scanned.is_empty() {
        problems.push(index_problem(0, "the file holds no committed run".into()));
    }
    problems.sort_by_key(|p| (p.offset, p.within));

    Ok(VerifyReport {
        archive: paths.archive.clone(),
        user: paths.user.clone(),
        runs: scanned.len() as u64,
        entries: scanned.iter().map(|(_, n)| *n as u64).sum(),
        members: outcome.members,
        bytes: outcome.file_len,
        problems,
        repaired,
    })
}

fn index_problem(offset: u64, detail: String) -> Problem {
    Problem {
        offset,
        within: None,
        entry: None,
        detail,
    }
}
