//! Executing a plan (formats/compaction.md, "Rewrite"): `compact` plans, then writes the copy
//! through `store::Rewriter`, which checks it and puts it in place. One pass over the archive in
//! file order, guided by the index: a stretch of members whose entries all stay is copied byte for
//! byte; a member with dropped entries is decompressed and its kept entries' tar bytes are packed
//! into new members; every commit marker is written again with its run's new `start` and
//! `entries`. Memory is one member at a time plus the index, whatever the archive's size.

use super::plan::{plan, CompactPlan, PlanOptions};
use crate::archive::{padded, RunSummary};
use crate::error::{Error, Result};
use crate::progress::Tally;
use crate::store::{ArchivePaths, Rewriter, RunInfo, WriterOptions};

#[derive(Clone)]
pub struct CompactOptions {
    pub plan: PlanOptions,
    pub writer: WriterOptions,
}

/// What one compaction did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompactOutcome {
    pub plan: CompactPlan,
    /// Whether the archive was rewritten (the policy may say to leave it).
    pub compacted: bool,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub entries_kept: u64,
    pub entries_dropped: u64,
    /// Stretches of members copied without recompressing, and members rebuilt.
    pub stretches_copied: u64,
    pub members_rebuilt: u64,
    /// The owner is under a legal hold (formats/status.md section 2): nothing was dropped. The
    /// hold file's text: when it was placed, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// Compacts one archive if the policy (or `force`) says so, under its writer lock.
pub fn compact(
    paths: &ArchivePaths,
    options: &CompactOptions,
    notices: &mut Vec<String>,
) -> Result<CompactOutcome> {
    compact_counted(paths, options, notices, &Tally::unwatched())
}

/// As `compact`; `progress` counts the old archive's bytes gone through (up to `bytes_before`)
/// and the message files kept.
pub fn compact_counted(
    paths: &ArchivePaths,
    options: &CompactOptions,
    notices: &mut Vec<String>,
    progress: &Tally,
) -> Result<CompactOutcome> {
    let mut rewriter = Rewriter::begin(paths, &options.writer, notices)?;
    let plan = plan(rewriter.archive(), &options.plan)?;
    let bytes_before = rewriter.archive().committed_len();
    let total: u64 = plan.keep.iter().map(|k| k.len() as u64).sum();
    let kept: u64 = plan
        .keep
        .iter()
        .map(|k| k.iter().filter(|&&b| b).count() as u64)
        .sum();
    let mut outcome = CompactOutcome {
        compacted: false,
        bytes_before,
        bytes_after: bytes_before,
        entries_kept: total,
        entries_dropped: 0,
        stretches_copied: 0,
        members_rebuilt: 0,
        held: None,
        plan,
    };
    // Looked at under the writer lock: a hold placed before this point is obeyed.
    outcome.held = crate::store::status::hold(&paths.archive)?;
    if !outcome.plan.compact || outcome.held.is_some() {
        return Ok(outcome);
    }
    rewriter.start()?;
    progress.set_bytes_total(bytes_before);
    let source_path = paths.archive.clone();
    let handle = rewriter.archive().handle().clone();
    let runs: Vec<RunInfo> = rewriter.archive().runs().to_vec();
    let last = runs.len().saturating_sub(1);
    for (r, run) in runs.iter().enumerate() {
        let keep = &outcome.plan.keep[r];
        let (archive, writer) = rewriter.split();
        // Entries whose first header lies in the same member, gathered as the run's entries
        // stream by; a group's bytes end at the next group's member, or at the commit marker.
        let mut copy = GroupCopy {
            handle: &handle,
            source_path: &source_path,
            writer,
            progress,
            stretches_copied: 0,
            members_rebuilt: 0,
        };
        let mut group: Vec<crate::archive::EntryRecord> = Vec::new();
        let mut group_keep: Vec<bool> = Vec::new();
        let mut i = 0;
        archive.for_each_entry(run, &mut |e| {
            if group
                .first()
                .is_some_and(|g| g.placement.member != e.placement.member)
            {
                copy.flush(&mut group, &mut group_keep, e.placement.member)?;
            }
            let kept = keep.get(i).copied().ok_or_else(|| {
                Error::corrupt(
                    &source_path,
                    run.start,
                    format!("run {} holds more entries than were planned", run.run),
                )
            })?;
            i += 1;
            group.push(e.clone());
            group_keep.push(kept);
            Ok(())
        })?;
        copy.flush(&mut group, &mut group_keep, run.marker_offset)?;
        outcome.stretches_copied += copy.stretches_copied;
        outcome.members_rebuilt += copy.members_rebuilt;
        let fields = rewriter.archive().marker_fields(run)?;
        let compacted_now = (r == last).then_some(options.plan.now);
        rewriter.commit(&RunSummary::from_marker(
            run.time,
            &fields,
            compacted_now.or(run.compacted),
        ))?;
    }
    outcome.bytes_after = rewriter.finish()?;
    progress.bytes_at_least(bytes_before);
    outcome.compacted = true;
    outcome.entries_kept = kept;
    outcome.entries_dropped = total - kept;
    Ok(outcome)
}

/// Copies the groups of one run into the rewrite.
struct GroupCopy<'a> {
    handle: &'a crate::store::ArchiveHandle,
    source_path: &'a std::path::Path,
    writer: &'a mut crate::archive::ArchiveWriter,
    progress: &'a Tally,
    stretches_copied: u64,
    members_rebuilt: u64,
}

impl GroupCopy<'_> {
    /// Writes the kept entries of one group (entries whose first header lies in the same
    /// member, their bytes ending at `end`) and empties it: all kept, the bytes are copied as
    /// they are; some kept, the member is decompressed and their tar bytes packed anew.
    fn flush(
        &mut self,
        group: &mut Vec<crate::archive::EntryRecord>,
        group_keep: &mut Vec<bool>,
        end: u64,
    ) -> Result<()> {
        let Some(first) = group.first() else {
            return Ok(());
        };
        let member = first.placement.member;
        let is_message =
            |e: &crate::archive::EntryRecord| e.name.starts_with(crate::archive::FILES_DIR);
        if group_keep.iter().all(|&k| k) {
            let messages = group.iter().filter(|e| is_message(e)).count() as u64;
            let mut source = self.handle.reader_at(member);
            let entries = std::mem::take(group);
            self.writer.append_members_verbatim(
                &mut source,
                end.saturating_sub(member),
                entries,
            )?;
            self.stretches_copied += 1;
            self.progress.add_messages(messages);
        } else if group_keep.iter().any(|&k| k) {
            let raw = self.handle.decode_members(member, Some(end))?;
            for (e, _) in group.drain(..).zip(group_keep.iter()).filter(|(_, &k)| k) {
                // Placements come from the index: checked arithmetic, so a hostile one is
                // an error rather than an overflow.
                let from = e.placement.header_at as usize;
                let to = usize::try_from(e.placement.data_at)
                    .ok()
                    .zip(usize::try_from(padded(e.size)).ok())
                    .and_then(|(at, len)| at.checked_add(len));
                let encoded = to.and_then(|to| raw.get(from..to)).ok_or_else(|| {
                    Error::corrupt(
                        self.source_path,
                        member,
                        format!("entry {} lies outside its member", e.name),
                    )
                })?;
                let message = is_message(&e);
                self.writer.append_encoded(encoded, e)?;
                if message {
                    self.progress.add_messages(1);
                }
            }
            self.members_rebuilt += 1;
        }
        group.clear();
        group_keep.clear();
        self.progress.bytes_at_least(end);
        Ok(())
    }
}
