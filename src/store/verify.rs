//! `verify`: reads every byte of an archive and reports each problem with the entry and byte
//! offset: member integrity fields and gzip CRCs, tar header checksums, entry names, message
//! SHA-1s, commit markers, and agreement between the sidecar index and the archive.

use std::path::PathBuf;

use super::open::{
    check_signature, check_tail, marker_matches, open_consistent, refuse_empty, scan_runs_with,
};
use super::sidecar::IndexRead;
use super::{Archive, ArchiveHandle, ArchivePaths};
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
    // One generation, one handle: the open and the scan read the same bytes even if a
    // compaction renames a new archive over the name meanwhile.
    let (source, index) = open_consistent(paths)?;
    verify_opened(paths, source, index)
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
        } => {
            let len = source.len()?;
            // Anything amiss (an empty or foreign file, a damaged first member) goes the full
            // way below, which says what it is.
            refuse_empty(&source).is_ok()
                && check_signature(&source, len).is_ok()
                && runs.last().is_some_and(|last| {
                    good_len == file_len
                        && len == last.end
                        && marker_matches(&source, last, archive_id)
                })
        }
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
    let index_runs: &[crate::archive::CommittedRun] = match &index {
        IndexRead::Valid { runs, .. } => runs,
        _ => &[],
    };

    // Entries by member, to name what a damaged member holds.
    let mut members: std::collections::BTreeMap<u64, String> = std::collections::BTreeMap::new();
    for run in index_runs {
        for e in &run.entries {
            members
                .entry(e.placement.member)
                .or_insert_with(|| e.name.clone());
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
        let indexed = index_runs
            .get(st.good)
            .and_then(|r| r.entries.get(st.position));
        if indexed.is_some_and(|a| a != e) {
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

    match &index {
        IndexRead::Missing => {
            if !scanned.is_empty() {
                problems.push(index_problem(0, "the index is missing".into()))
            }
        }
        IndexRead::Invalid(reason) => {
            problems.push(index_problem(0, format!("the index is unusable: {reason}")))
        }
        // Only `reindex` makes one; a file's index never reads as this.
        IndexRead::Floor { .. } => {}
        IndexRead::Valid { runs, .. } => {
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
                if !same_frame || indexed.entries.len() != *count {
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
