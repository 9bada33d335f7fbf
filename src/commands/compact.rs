//! `mailpack compact`: the compaction policy over the selected archives, or with `dry_run` only
//! its plan. One archive's failure (busy, damaged) does not stop the others.

use crate::compact::{compact, plan, CompactOptions, CompactOutcome, CompactPlan, PlanOptions};
use crate::error::Result;
use crate::store::{Archive, ArchivePaths, WriterOptions};

use super::Selection;

pub struct CompactCommand {
    pub selection: Selection,
    pub plan: PlanOptions,
    pub writer: WriterOptions,
    pub dry_run: bool,
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
    for paths in targets {
        let mut notices = std::mem::take(&mut skipped);
        let result = if command.dry_run {
            Archive::open(&paths, &mut notices)
                .and_then(|a| plan(&a, &command.plan))
                .map(ArchiveCompaction::Planned)
        } else {
            let options = CompactOptions {
                plan: command.plan.clone(),
                writer: command.writer.clone(),
            };
            let ran = compact(&paths, &options, &mut notices).map(ArchiveCompaction::Ran);
            if ran.is_ok() {
                notices.extend(super::find::refresh(&paths));
            }
            ran
        };
        on_archive(&paths, result, &notices);
    }
    Ok(())
}
