//! Which entries are live (formats/compaction.md). Live = everything a restore "as of any
//! committed run within the retention window" needs: every metadata version committed inside
//! the window plus the newest one before it; every message a kept `cyrus.index` version
//! references (expunged records included, unlinked ones not); a deleted mailbox's data until
//! `keep_deleted_days` after its deletion; tombstones until their mailbox's data ages out; every
//! commit marker. Everything else is dead.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::archive::{EntryKind, EntryRecord, FILES_DIR};
use crate::entries::{index_names, index_version_of};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::store::Archive;

const DAY: i64 = 86_400;
const WEEK: i64 = 7 * DAY;

#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub now: i64,
    pub keep_days: i64,
    pub keep_deleted_days: i64,
    /// Live share (percent) under which an archive is compacted, right after a compaction.
    pub threshold_start: u32,
    /// Points the threshold rises per week since the last compaction.
    pub threshold_step: u32,
    pub force: bool,
    /// Beyond the window: the newest run of each of the last N days, weeks, months and years
    /// stays restorable (restic's `--keep-daily` … semantics, counted back from the newest run).
    pub gfs: Gfs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Gfs {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

/// Whether a run stays restorable after compaction, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunDecision {
    pub run: u64,
    pub time: i64,
    pub kept: bool,
    pub why: Vec<String>,
}

/// Names the calendar bucket (day, ISO week, month, year) an instant falls in.
type BucketLabel = fn(i64) -> String;

/// For each run, the retention buckets that keep it (empty: none does).
fn gfs_reasons(runs: &[crate::store::RunInfo], gfs: &Gfs) -> Vec<Vec<String>> {
    use crate::time::calendar_buckets;
    let mut reasons = vec![Vec::new(); runs.len()];
    let kinds: [(&str, u32, BucketLabel); 4] = [
        ("daily", gfs.daily, |t| {
            crate::time::format_utc(calendar_buckets(t).day * 86_400)[..10].to_string()
        }),
        ("weekly", gfs.weekly, |t| {
            let (y, w) = calendar_buckets(t).week;
            format!("{y}-W{w:02}")
        }),
        ("monthly", gfs.monthly, |t| {
            let (y, m) = calendar_buckets(t).month;
            format!("{y}-{m:02}")
        }),
        ("yearly", gfs.yearly, |t| {
            calendar_buckets(t).year.to_string()
        }),
    ];
    for (kind, n, bucket) in kinds {
        let mut last: Option<String> = None;
        let mut count = 0;
        for (idx, run) in runs.iter().enumerate().rev() {
            if count >= n {
                break;
            }
            let b = bucket(run.time);
            if last.as_ref() != Some(&b) {
                reasons[idx].push(format!("{kind} {b}"));
                last = Some(b);
                count += 1;
            }
        }
    }
    reasons
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            now: 0,
            keep_days: 30,
            keep_deleted_days: 30,
            threshold_start: 80,
            threshold_step: 1,
            force: false,
            gfs: Gfs::default(),
        }
    }
}

/// The threshold in force `weeks` after the last compaction: `start + step × weeks`, at most 100,
/// so with the defaults every archive with anything dead is compacted within 20 weeks.
pub fn threshold_percent(start: u32, step: u32, weeks: u64) -> u32 {
    (start as u64 + step as u64 * weeks).min(100) as u32
}

/// Counts and bytes (uncompressed tar bytes) of what a compaction would drop, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    pub old_metadata_versions: (u64, u64),
    pub expunged_beyond_retention: (u64, u64),
    pub deleted_mailboxes: (u64, u64),
    pub duplicate_copies: (u64, u64),
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CompactPlan {
    pub archive_bytes: u64,
    /// Uncompressed tar bytes of every entry, and of the live ones.
    pub total_raw: u64,
    pub live_raw: u64,
    pub live_percent: f64,
    pub threshold_percent: u32,
    pub weeks_since_compaction: u64,
    /// Whether the policy (or `force`) says to compact now.
    pub compact: bool,
    /// Estimated archive size after compaction (scaled by the live share).
    pub estimated_bytes_after: u64,
    pub dropped: Dropped,
    /// For every run: whether a restore as of it still works after compaction, and why.
    pub runs: Vec<RunDecision>,
    /// For every run, which of its entries stay (same order as the archive).
    #[serde(skip)]
    pub keep: Vec<Vec<bool>>,
}

fn run_decisions(
    runs: &[crate::store::RunInfo],
    gfs: &[Vec<String>],
    window_start: i64,
    keep_days: i64,
) -> Vec<RunDecision> {
    let newest_before = runs.iter().rposition(|r| r.time < window_start);
    runs.iter()
        .enumerate()
        .map(|(i, r)| {
            let mut why = Vec::new();
            if r.time >= window_start {
                why.push(format!("within --keep-days {keep_days}"));
            }
            if Some(i) == newest_before {
                why.push("the state when the --keep-days window opens".into());
            }
            why.extend(gfs[i].iter().cloned());
            RunDecision {
                run: r.run,
                time: r.time,
                kept: !why.is_empty(),
                why,
            }
        })
        .collect()
}

fn raw_size(e: &EntryRecord) -> u64 {
    e.placement.data_at - e.placement.header_at as u64 + e.size.div_ceil(512) * 512
}

/// Whether `e` is an index delta (formats/backup-entries.md, "Index deltas").
fn is_delta(e: &EntryRecord) -> bool {
    crate::folders::is_index_delta(e)
}

fn folder_of(name: &str) -> Option<&str> {
    name.strip_prefix("folders/")?.split('/').next()
}

pub fn plan(archive: &Archive, options: &PlanOptions) -> Result<CompactPlan> {
    let window_start = options.now - options.keep_days * DAY;
    let runs = archive.runs();
    // Runs before the window that retention keeps restorable: the state as of each must stay.
    let gfs = gfs_reasons(runs, &options.gfs);
    let anchors: Vec<i64> = runs
        .iter()
        .zip(&gfs)
        .filter(|(r, why)| r.time < window_start && !why.is_empty())
        .map(|(r, _)| r.time)
        .collect();
    let earliest_anchor = anchors.iter().copied().min();

    // First pass over the entries (streamed from the index when the archive is): every entry
    // other than a message, with its run and position. Messages, most of the entries, are
    // decided by reference in the second pass, so they are never held (section 4).
    let mut meta: Vec<(usize, usize, EntryRecord)> = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        let mut i = 0;
        archive.for_each_entry(run, &mut |e| {
            if !e.name.starts_with(FILES_DIR) {
                meta.push((r, i, e.clone()));
            }
            i += 1;
            Ok(())
        })?;
    }

    // Every version of every name other than a message's, in commit order, as positions in
    // `meta`. The two names of a mailbox's index (full copy, delta) are one name here: their
    // versions together, in archive order, are the index's versions (formats/compaction.md
    // rule 1).
    let mut index_keys: HashMap<&str, String> = HashMap::new();
    for (_, _, e) in &meta {
        if let Some((uid, true)) = index_version_of(&e.name) {
            index_keys
                .entry(e.name.as_str())
                .or_insert_with(|| index_names(uid).0);
        }
    }
    let mut versions: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (m, (_, _, e)) in meta.iter().enumerate() {
        let key = index_keys
            .get(e.name.as_str())
            .map_or(e.name.as_str(), |k| k.as_str());
        versions.entry(key).or_default().push(m);
    }
    let entry = |m: usize| &meta[m].2;
    let run_of = |m: usize| meta[m].0;

    // When each folder stopped being named: the run after which no live link points at it.
    let mut linked_until: HashMap<&str, Option<i64>> = HashMap::new();
    for (name, vs) in &versions {
        if !name.starts_with("imap/") {
            continue;
        }
        for (k, &v) in vs.iter().enumerate() {
            let e = entry(v);
            let Some(folder) = e.target.strip_prefix("folders/") else {
                continue;
            };
            // This link held from its run until the next version of the name, if any.
            let until = vs.get(k + 1).map(|&n| runs[run_of(n)].time);
            let slot = linked_until.entry(folder).or_insert(Some(i64::MIN));
            *slot = match (*slot, until) {
                (None, _) | (_, None) => None,
                (Some(a), Some(b)) => Some(a.max(b)),
            };
        }
    }
    // A folder deleted inside the window stays, whatever `keep_deleted_days` says: a restore
    // at any run in the window must see what that run saw.
    let aged_out = |folder: &str| match linked_until.get(folder) {
        Some(Some(deleted)) => {
            *deleted < window_start
                && options.now - deleted > options.keep_deleted_days * DAY
                // A kept run from before the deletion still shows the folder.
                && earliest_anchor.is_none_or(|a| a >= *deleted)
        }
        _ => false,
    };
    // A deleted folder still kept is restored by its old name: keep the links that named it.
    let retained_deleted =
        |folder: &str| matches!(linked_until.get(folder), Some(Some(_))) && !aged_out(folder);

    let mut meta_keep = vec![false; meta.len()];
    let mut dropped = Dropped::default();
    let add = |slot: &mut (u64, u64), e: &EntryRecord| {
        slot.0 += 1;
        slot.1 += raw_size(e);
    };

    // Metadata, names and per-user files.
    for (name, vs) in &versions {
        let folder = folder_of(name).or_else(|| {
            // A name whose every version pointed at aged-out folders goes with them.
            let targets: Vec<&str> = vs
                .iter()
                .filter_map(|&v| entry(v).target.strip_prefix("folders/"))
                .collect();
            (name.starts_with("imap/")
                && !targets.is_empty()
                && targets.iter().all(|f| aged_out(f)))
            .then(|| targets[0])
        });
        if let Some(f) = folder {
            if aged_out(f) {
                for &v in vs {
                    add(&mut dropped.deleted_mailboxes, entry(v));
                }
                continue;
            }
        }
        let newest_before = vs
            .iter()
            .rposition(|&v| runs[run_of(v)].time < window_start);
        // The version each retained run before the window sees.
        let anchored: Vec<usize> = anchors
            .iter()
            .filter_map(|&a| vs.iter().rposition(|&v| runs[run_of(v)].time <= a))
            .collect();
        let mut kept: Vec<bool> = vs
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                let names_deleted_folder = entry(v)
                    .target
                    .strip_prefix("folders/")
                    .is_some_and(retained_deleted);
                runs[run_of(v)].time >= window_start
                    || Some(k) == newest_before
                    || anchored.contains(&k)
                    || names_deleted_folder
            })
            .collect();
        // Rule 1a: a kept index delta keeps every version back to its full copy.
        for k in (0..vs.len()).rev() {
            if kept[k] && is_delta(entry(vs[k])) && k > 0 {
                kept[k - 1] = true;
            }
        }
        for (k, &v) in vs.iter().enumerate() {
            if kept[k] {
                meta_keep[v] = true;
            } else {
                add(&mut dropped.old_metadata_versions, entry(v));
            }
        }
    }

    // Messages referenced by a kept index version, and those only aged-out folders referenced
    // (so that the report can say why they go).
    let mut referenced = GuidSet::default();
    let mut referenced_by_deleted = GuidSet::default();
    for (name, vs) in &versions {
        let Some((_, false)) = index_version_of(name) else {
            continue;
        };
        let of_aged_out = folder_of(name).is_some_and(aged_out);
        let wanted = |&v: &usize| entry(v).kind == EntryKind::File && (meta_keep[v] || of_aged_out);
        // The versions since the last full copy: each wanted one streams from that copy
        // through them, so no version of a large index is ever held (section 4).
        let mut chain: Vec<&EntryRecord> = Vec::new();
        for &v in vs {
            let e = entry(v);
            if e.kind != EntryKind::File {
                chain.clear();
                continue;
            }
            if !is_delta(e) {
                chain.clear();
            } else if chain.is_empty() {
                return Err(Error::corrupt(
                    &archive.paths().archive,
                    e.placement.member,
                    format!("{}: an index delta with no version before it", e.name),
                ));
            }
            chain.push(e);
            if !wanted(&v) {
                continue;
            }
            let set = if meta_keep[v] {
                &mut referenced
            } else {
                &mut referenced_by_deleted
            };
            set.begin_version();
            crate::folders::for_each_record(archive, &chain, &mut |record| {
                if !record.is_unlinked() {
                    set.insert(record.guid);
                }
                Ok(())
            })?;
            set.end_version();
        }
    }

    // Second pass: every entry's keep bit, and the sizes. A message is kept when a kept index
    // version references it and it is the first copy of its name.
    let mut referenced = referenced.sealed();
    let mut referenced_by_deleted = referenced_by_deleted.sealed();
    let mut other_seen: HashSet<Guid> = HashSet::new();
    let mut odd_names_seen: HashSet<String> = HashSet::new();
    let mut keep: Vec<Vec<bool>> = Vec::with_capacity(runs.len());
    let mut next_meta = meta.iter().zip(&meta_keep).peekable();
    let mut total_raw = 0u64;
    let mut live_raw = 0u64;
    for (r, run) in runs.iter().enumerate() {
        let mut run_keep = Vec::with_capacity(run.entry_count);
        archive.for_each_entry(run, &mut |e| {
            let i = run_keep.len();
            total_raw += raw_size(e);
            let kept = match e.name.strip_prefix(FILES_DIR) {
                None => match next_meta.next() {
                    Some(((mr, mi, me), &k)) if (*mr, *mi) == (r, i) && me.name == e.name => k,
                    _ => {
                        return Err(Error::corrupt(
                            &archive.paths().index,
                            0,
                            format!("the index changed between two reads (at {})", e.name),
                        ))
                    }
                },
                Some(hex) => {
                    // Whether this is the first copy of the name, and what references it.
                    let (first, slot) = match hex.parse::<Guid>() {
                        Ok(g) => match referenced.first_sight(&g) {
                            Some(first) => (first, None),
                            None => match referenced_by_deleted.first_sight(&g) {
                                Some(first) => (first, Some(&mut dropped.deleted_mailboxes)),
                                None => (
                                    other_seen.insert(g),
                                    Some(&mut dropped.expunged_beyond_retention),
                                ),
                            },
                        },
                        Err(_) => (
                            odd_names_seen.insert(e.name.clone()),
                            Some(&mut dropped.expunged_beyond_retention),
                        ),
                    };
                    match (first, slot) {
                        (true, None) => true,
                        (true, Some(slot)) => {
                            add(slot, e);
                            false
                        }
                        (false, _) => {
                            add(&mut dropped.duplicate_copies, e);
                            false
                        }
                    }
                }
            };
            if kept {
                live_raw += raw_size(e);
            }
            run_keep.push(kept);
            Ok(())
        })?;
        keep.push(run_keep);
    }
    let live_percent = if total_raw == 0 {
        100.0
    } else {
        live_raw as f64 * 100.0 / total_raw as f64
    };
    let since = runs
        .iter()
        .filter_map(|r| r.compacted)
        .max()
        .or(runs.first().map(|r| r.time))
        .unwrap_or(options.now);
    let weeks = ((options.now - since).max(0) / WEEK) as u64;
    let threshold = threshold_percent(options.threshold_start, options.threshold_step, weeks);
    let archive_bytes = archive.committed_len();
    Ok(CompactPlan {
        archive_bytes,
        total_raw,
        live_raw,
        live_percent,
        threshold_percent: threshold,
        weeks_since_compaction: weeks,
        compact: live_raw < total_raw && (options.force || live_percent < threshold as f64),
        estimated_bytes_after: if total_raw == 0 {
            archive_bytes
        } else {
            (archive_bytes as u128 * live_raw as u128 / total_raw as u128) as u64
        },
        dropped,
        runs: run_decisions(runs, &gfs, window_start, options.keep_days),
        keep,
    })
}

/// GUIDs referenced by index versions, in 20 bytes each and no more: a sorted vector, grown
/// one version at a time by the GUIDs that version adds (successive versions of an index share
/// nearly all of theirs), so a million messages cost 20 MB rather than a hash set's 44 MB.
#[derive(Default)]
struct GuidSet {
    sorted: Vec<Guid>,
    /// The current version's GUIDs not yet in `sorted`.
    fresh: Vec<Guid>,
}

impl GuidSet {
    fn begin_version(&mut self) {
        self.fresh.clear();
    }

    fn insert(&mut self, guid: Guid) {
        if self.sorted.binary_search(&guid).is_err() {
            self.fresh.push(guid);
        }
    }

    fn end_version(&mut self) {
        self.fresh.sort_unstable();
        self.fresh.dedup();
        if self.sorted.is_empty() {
            self.sorted = std::mem::take(&mut self.fresh);
            self.sorted.shrink_to_fit();
            return;
        }
        self.sorted.reserve_exact(self.fresh.len());
        self.sorted.append(&mut self.fresh);
        self.sorted.sort_unstable();
        self.fresh = Vec::new();
    }

    /// The set, with one bit per GUID for "a copy was seen".
    fn sealed(self) -> SealedGuids {
        let seen = vec![0u64; self.sorted.len().div_ceil(64)];
        SealedGuids {
            sorted: self.sorted,
            seen,
        }
    }
}

struct SealedGuids {
    sorted: Vec<Guid>,
    seen: Vec<u64>,
}

impl SealedGuids {
    /// `None` when `guid` is not in the set; else whether this is the first time it is asked.
    fn first_sight(&mut self, guid: &Guid) -> Option<bool> {
        let k = self.sorted.binary_search(guid).ok()?;
        let (word, bit) = (k / 64, 1u64 << (k % 64));
        let first = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_rises_a_point_a_week_and_stops_at_100() {
        assert_eq!(threshold_percent(80, 1, 0), 80);
        assert_eq!(threshold_percent(80, 1, 7), 87);
        assert_eq!(threshold_percent(80, 1, 20), 100);
        assert_eq!(threshold_percent(80, 1, 500), 100);
        assert_eq!(threshold_percent(90, 2, 3), 96);
    }
}
