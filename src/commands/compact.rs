//! `mailpack compact`: the compaction policy over the selected archives, or with `dry_run` only
//! its plan. One archive's failure (busy, damaged) does not stop the others.

use crate::compact::{
    compact_counted, plan, CompactOptions, CompactOutcome, CompactPlan, PlanOptions,
};
use crate::error::Result;
use crate::progress::{OwnerProgress, Phase, Progress};
use crate::store::{Archive, ArchivePaths, WriterOptions};

use super::Selection;

pub struct CompactCommand {
    pub selection: Selection,
    pub plan: PlanOptions,
    pub writer: WriterOptions,
    pub dry_run: bool,
    /// Counters for a progress display (issue 19), per archive as it is rewritten; `None`:
    /// nobody watches.
    pub progress: Option<std::sync::Arc<Progress>>,
}

/// What happened to one archive.
pub enum ArchiveCompaction {
    Planned(CompactPlan),
    Ran(CompactOutcome),
}

/// Called with each archive's result and the repair notices its opening produced.
pub type OnArchive<'a> = dyn FnMut(&ArchivePaths, Result<ArchiveCompaction>, &[String]) + 'a;

/// Runs the command; `on_archive` sees each archive's result and the repair notices its opening
/// produced, as each finishes.
pub fn compact_archives(command: &CompactCommand, on_archive: &mut OnArchive) -> Result<()> {
    let mut skipped = Vec::new();
    let targets = command.selection.resolve_noting(&mut skipped)?;
    if let Some(progress) = &command.progress {
        progress.set_owners_total(targets.len() as u64);
    }
    for paths in targets {
        let tally = match &command.progress {
            Some(p) => p.start(&archive_name(&paths), Phase::Compact),
            None => OwnerProgress::unwatched(),
        };
        let mut notices = std::mem::take(&mut skipped);
        let result = if command.dry_run {
            Archive::open_streamed(&paths, &mut notices)
                .and_then(|a| plan(&a, &command.plan))
                .map(ArchiveCompaction::Planned)
        } else {
            let options = CompactOptions {
                plan: command.plan.clone(),
                writer: command.writer.clone(),
            };
            // The find index is left behind a rewrite: the next search walks the history
            // again, reusing every message's fields (formats/find-index.md section 1), so a
            // compaction's memory stays that of its own work.
            compact_counted(&paths, &options, &mut notices, &tally).map(ArchiveCompaction::Ran)
        };
        // Counted done before its result is reported.
        drop(tally);
        on_archive(&paths, result, &notices);
    }
    Ok(())
}

/// How progress names an archive: its file name (`alice.tar.gz`), or `shared/<file>`.
fn archive_name(paths: &ArchivePaths) -> String {
    let file = paths
        .archive
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let parent = paths.archive.parent().and_then(|p| p.file_name());
    match parent {
        Some(dir) if dir == crate::store::SHARED_DIR => {
            format!("{}/{file}", crate::store::SHARED_DIR)
        }
        _ => file.into_owned(),
    }
}
