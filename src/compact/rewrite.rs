//! Applying a plan (formats/compaction.md, "Rewrite"). One pass over the archive in file order,
//! guided by the index: a stretch of members whose entries all stay is copied byte for byte; a
//! member with dropped entries is decompressed and its kept entries' tar bytes are packed into
//! new members; every commit marker is written again with its run's new `start` and `entries`.
//! Memory is one member at a time plus the index, whatever the archive's size.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use super::plan::{plan, CompactPlan, PlanOptions};
use crate::archive::{padded, RunSummary};
use crate::error::{Error, Result};
use crate::store::{decode_members, marker_fields, ArchivePaths, Rewriter, RunInfo, WriterOptions};

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
}

/// Compacts one archive if the policy (or `force`) says so, under its writer lock.
pub fn compact(
    paths: &ArchivePaths,
    options: &CompactOptions,
    notices: &mut Vec<String>,
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
        plan,
    };
    if !outcome.plan.compact {
        return Ok(outcome);
    }
    rewriter.start()?;
    let source_path = paths.archive.clone();
    let mut source = File::open(&source_path).map_err(|e| Error::io("open", &source_path, e))?;
    let runs: Vec<RunInfo> = rewriter.archive().runs().to_vec();
    let last = runs.len().saturating_sub(1);
    for (r, run) in runs.iter().enumerate() {
        let keep = &outcome.plan.keep[r];
        let (archive, writer) = rewriter.split();
        let entries = archive.entries_of(run);
        let mut i = 0;
        while i < entries.len() {
            // Entries whose first header lies in the same member, and where their bytes end: at
            // the next such group's member, or at the commit marker.
            let member = entries[i].placement.member;
            let mut j = i;
            while j < entries.len() && entries[j].placement.member == member {
                j += 1;
            }
            let end = entries
                .get(j)
                .map_or(run.marker_offset, |e| e.placement.member);
            let group = &entries[i..j];
            let group_keep = &keep[i..j];
            if group_keep.iter().all(|&k| k) {
                source
                    .seek(SeekFrom::Start(member))
                    .map_err(|e| Error::io("seek", &source_path, e))?;
                writer.append_members_verbatim(&mut source, end - member, group.to_vec())?;
                outcome.stretches_copied += 1;
            } else if group_keep.iter().any(|&k| k) {
                let raw = decode_members(&source_path, member, Some(end))?;
                for (e, _) in group.iter().zip(group_keep).filter(|(_, &k)| k) {
                    let from = e.placement.header_at as usize;
                    let to = e.placement.data_at as usize + padded(e.size) as usize;
                    let encoded = raw.get(from..to).ok_or_else(|| {
                        Error::corrupt(
                            &source_path,
                            member,
                            format!("entry {} lies outside its member", e.name),
                        )
                    })?;
                    writer.append_encoded(encoded, e.clone())?;
                }
                outcome.members_rebuilt += 1;
            }
            i = j;
        }
        let fields = marker_fields(paths, run)?;
        let compacted_now = (r == last).then_some(options.plan.now);
        rewriter.commit(&summary_from(run, &fields, compacted_now))?;
    }
    outcome.bytes_after = rewriter.finish()?;
    outcome.compacted = true;
    outcome.entries_kept = kept;
    outcome.entries_dropped = total - kept;
    Ok(outcome)
}

/// The marker of a rewritten run says what the original said, except for the bookkeeping the
/// writer recomputes (`start`, `entries`) and, on the newest run, when this compaction ran.
fn summary_from(
    run: &RunInfo,
    fields: &[(String, String)],
    compacted_now: Option<i64>,
) -> RunSummary {
    let mut summary = RunSummary {
        time: run.time,
        compacted: compacted_now.or(run.compacted),
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
