//! `repair`: the one explicit salvage of a damaged archive (formats/archive.md section 6.3). It
//! keeps the damaged file aside under a name of its own, never deleted by mailpack, and writes a
//! new archive holding every committed entry that still reads and checks, with its run; what is
//! lost is reported and recorded in the new archive (`repairs/<n>`) so the next backup can
//! store it again from the spool.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::open::{check_tail, damaged, scan_runs, Access};
use super::sidecar::{self, IndexRead};
use super::{Archive, ArchiveHandle, ArchivePaths, WriterLock, WriterOptions};
use crate::archive::scan::Damage;
use crate::archive::{
    ArchiveId, ArchiveWriter, EntryKind, RunSummary, ScanEvent, ScannedEntry, Scanner,
};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::io::{create_private, fsync_dir, hard_link, rename, DurableFile};

/// Directory of the entries that list what a repair lost.
pub const REPAIRS_DIR: &str = "repairs/";

/// Largest `repairs/<n>` list read back (names of lost entries, about 100 bytes each).
const MAX_REPAIR_LIST: u64 = 256 << 20;

/// One entry a repair could not keep.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LostEntry {
    pub name: String,
    /// SHA-1 of its data as the index recorded it (zero for symlinks).
    pub sha1: String,
    pub run: u64,
}

/// A run whose entries did not all survive, or whose commit marker is gone.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LostRun {
    pub run: u64,
    pub detail: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DamageFound {
    pub offset: u64,
    pub entry: Option<String>,
    pub detail: String,
}

#[derive(Debug, serde::Serialize)]
pub struct RepairReport {
    pub archive: PathBuf,
    pub user: Option<String>,
    /// False when the archive opened cleanly: nothing was (or would be) done.
    pub needed: bool,
    pub dry_run: bool,
    /// Why the archive does not open (the first problem), when it does not.
    pub reason: Option<String>,
    /// Where the damaged file (and its index) were kept.
    pub kept_aside: Option<PathBuf>,
    pub runs_kept: u64,
    pub entries_kept: u64,
    pub lost_entries: Vec<LostEntry>,
    /// Entries lost that no usable index names (counted from the commit markers).
    pub lost_unnamed: u64,
    pub lost_runs: Vec<LostRun>,
    pub damage: Vec<DamageFound>,
    pub bytes_before: u64,
    pub bytes_after: Option<u64>,
    /// The repaired archive is in place but its index could not be written: the next open
    /// rebuilds it (exit 1, like a committed run whose index append failed).
    pub index_failure: Option<String>,
    /// What was mended on an archive that needed no repair (a tail cut, an index rebuilt).
    pub notices: Vec<String>,
}

impl RepairReport {
    fn new(paths: &ArchivePaths, dry_run: bool, bytes_before: u64) -> RepairReport {
        RepairReport {
            archive: paths.archive.clone(),
            user: paths.user.clone(),
            needed: false,
            dry_run,
            reason: None,
            kept_aside: None,
            runs_kept: 0,
            entries_kept: 0,
            lost_entries: Vec::new(),
            lost_unnamed: 0,
            lost_runs: Vec::new(),
            damage: Vec::new(),
            bytes_before,
            bytes_after: None,
            index_failure: None,
            notices: Vec::new(),
        }
    }

    /// Whether anything committed is missing from the repaired archive.
    pub fn lost_anything(&self) -> bool {
        !self.lost_entries.is_empty() || !self.lost_runs.is_empty()
    }
}

pub struct RepairOptions {
    pub dry_run: bool,
    pub writer: WriterOptions,
    /// The repair's own time: the suffix of the kept file and the `repaired` marker key.
    pub now: i64,
    pub host: String,
}

/// What a full scan salvaged: the runs, each damaged place, and the archive id its markers
/// carry (none when no marker reads).
struct Salvage {
    runs: Vec<SalvagedRun>,
    damage: Vec<Damage>,
    archive_id: Option<ArchiveId>,
}

/// A run as the salvage found it: its marker's facts and the entries before it that read.
struct SalvagedRun {
    run: u64,
    /// Where its commit marker's member starts and ends (0 for a lost marker).
    marker_offset: u64,
    end: u64,
    time: i64,
    fields: Vec<(String, String)>,
    entries: Vec<ScannedEntry>,
    /// Entries the marker counts; more than `entries` holds means some were lost.
    counted: u64,
}

/// Repairs the archive of `paths` as formats/archive.md section 6.3 says, under its writer lock.
pub fn repair(paths: &ArchivePaths, options: &RepairOptions) -> Result<RepairReport> {
    let _lock = WriterLock::acquire_existing(&paths.archive, &paths.lock, options.writer.wait)?;
    let source = ArchiveHandle::open(&paths.archive)?;
    let bytes_before = source.len()?;
    let mut report = RepairReport::new(paths, options.dry_run, bytes_before);
    let index = sidecar::read(&paths.index)?;
    let indexed = match &index {
        IndexRead::Valid { runs, .. } => Some(runs.clone()),
        _ => None,
    };
    // The open checks only what it must (the index's last commit, a tail); a repair reads every
    // byte, as `verify` does, to find damage anywhere.
    let problem =
        match Archive::load_read_only(paths, source.clone(), index.clone(), &mut Vec::new()) {
            Ok(archive) => {
                report.runs_kept = archive.runs().len() as u64;
                report.entries_kept = archive.entries.len() as u64;
                first_damage(&source, bytes_before)?
            }
            // A foreign file is not ours to rewrite, even aside.
            Err(e @ Error::Foreign { .. }) => return Err(e),
            Err(e @ Error::Corrupt { .. }) => Some(e.to_string()),
            Err(e) => return Err(e),
        };
    let Some(problem) = problem else {
        // Nothing damaged: only what any writer mends (an interrupted tail, a missing or stale
        // index) is mended, unless this is a dry run.
        if !options.dry_run {
            let writable = ArchiveHandle::open_writable(&paths.archive)?;
            Archive::load(
                paths,
                writable,
                index,
                Access::Write,
                &options.writer.faults,
                &mut report.notices,
            )?;
        }
        return Ok(report);
    };
    report.reason = Some(problem);
    report.needed = true;

    let Salvage {
        runs: salvaged,
        damage,
        archive_id,
    } = salvage(&source, bytes_before)?;
    report.damage = damage
        .iter()
        .map(|d| DamageFound {
            offset: d.offset,
            entry: d.entry.clone(),
            detail: d.detail.clone(),
        })
        .collect();
    let archive_id = archive_id.ok_or_else(|| {
        Error::corrupt(
            &paths.archive,
            0,
            "no commit marker of this archive reads; nothing can be salvaged (the file is left \
             as it is)",
        )
    })?;
    let plan = plan_runs(salvaged, &mut report);
    account_losses(&plan, indexed.as_deref(), &mut report);
    report.runs_kept = plan.len() as u64;
    report.entries_kept = plan.iter().map(|r| r.entries.len() as u64).sum();
    if options.dry_run {
        return Ok(report);
    }
    write_repaired(paths, &source, &archive_id, &plan, options, &mut report)?;
    Ok(report)
}

impl Archive {
    /// A read-only view of a damaged archive for restore day: every committed entry that still
    /// reads and checks, in its run (as `repair` would keep them), and a line per problem found.
    /// Nothing is written. Use it only after `open` failed with `Error::Corrupt`.
    pub fn open_degraded(paths: &ArchivePaths) -> Result<(Archive, Vec<String>)> {
        let source = ArchiveHandle::open(&paths.archive)?;
        let len = source.len()?;
        let Salvage {
            runs: salvaged,
            damage,
            archive_id,
        } = salvage(&source, len)?;
        let mut report = RepairReport::new(paths, true, len);
        let plan = plan_runs(salvaged, &mut report);
        let indexed = match sidecar::read(&paths.index)? {
            IndexRead::Valid { runs, .. } => Some(runs),
            _ => None,
        };
        account_losses(&plan, indexed.as_deref(), &mut report);
        let mut problems: Vec<String> = damage
            .iter()
            .map(|d| {
                format!(
                    "{}: damaged at byte {}{}: {}",
                    paths.archive.display(),
                    d.offset,
                    d.entry
                        .as_ref()
                        .map(|e| format!(" (entry {e})"))
                        .unwrap_or_default(),
                    d.detail
                )
            })
            .collect();
        problems.extend(
            report
                .lost_runs
                .iter()
                .map(|r| format!("{}: run {}: {}", paths.archive.display(), r.run, r.detail)),
        );
        problems.extend(report.lost_entries.iter().map(|e| {
            format!(
                "{}: lost entry {} of run {}",
                paths.archive.display(),
                e.name,
                e.run
            )
        }));
        let mut start = 0;
        let runs = plan
            .into_iter()
            .map(|r| {
                let run = crate::archive::CommittedRun {
                    run: r.run,
                    start,
                    marker_offset: r.marker_offset,
                    end: r.end.max(start),
                    time: r.time,
                    compacted: None,
                    entries: r.entries.into_iter().map(|e| e.record).collect(),
                };
                start = run.end;
                run
            })
            .collect();
        Ok((
            Archive::from_runs(paths.clone(), source, archive_id, runs, 0),
            problems,
        ))
    }

    /// The entries the repair that wrote the newest run lost (its `repairs/<n>` entry), when the
    /// newest run is a repair's: the next backup stores them again from the spool.
    pub fn repair_losses(&self) -> Result<Option<BTreeSet<String>>> {
        let Some(last) = self.runs.last() else {
            return Ok(None);
        };
        let name = format!("{REPAIRS_DIR}{}", last.run);
        let mut found = None;
        self.for_each_entry(last, &mut |e| {
            if e.name == name {
                found = Some(e.clone());
            }
            Ok(())
        })?;
        let Some(entry) = found.as_ref() else {
            return Ok(None);
        };
        // The list is bounded by what the repair lost, but read with a cap all the same.
        let mut list = Vec::new();
        self.read_entry(entry)?
            .take(MAX_REPAIR_LIST)
            .read_to_end(&mut list)
            .map_err(|e| Error::io("read", &self.paths.archive, e))?;
        Ok(Some(parse_losses(&list)))
    }
}

/// The first damage a full scan finds before the end of the last commit, or after it where the
/// bytes are not an interrupted writer's tail.
fn first_damage(source: &ArchiveHandle, len: u64) -> Result<Option<String>> {
    let outcome = scan_runs(source, 0, None, None)?;
    if let Some(d) = outcome.damage_in_committed() {
        return Ok(Some(damaged(source.path(), d).to_string()));
    }
    if outcome.committed_end < len {
        if let Err(e) = check_tail(source, outcome.committed_end, len, &outcome.damage) {
            return Ok(Some(e.to_string()));
        }
    }
    Ok(None)
}

/// Reads the whole file and collects every entry that reads and checks, grouped by the commit
/// marker that follows it. Entries after the last marker are kept only when what follows the
/// last marker is not an interrupted write (then it was committed data whose marker is lost).
fn salvage(source: &ArchiveHandle, len: u64) -> Result<Salvage> {
    let path = source.path();
    let scanner =
        Scanner::new(source.reader_at(0), path, 0).map_err(|e| Error::io("seek", path, e))?;
    let mut runs: Vec<SalvagedRun> = Vec::new();
    let mut damage = Vec::new();
    let mut pending = Vec::new();
    let mut archive_id: Option<ArchiveId> = None;
    let mut last_end = 0;
    for event in scanner {
        match event {
            ScanEvent::Entry(e) => pending.push(e),
            ScanEvent::MemberEnd(m) => {
                if let Err(crate::error::ParseError { detail, .. }) = m.integrity {
                    damage.push(Damage {
                        offset: m.offset,
                        within: None,
                        entry: None,
                        detail,
                        torn: false,
                    });
                }
            }
            ScanEvent::Damage(d) => damage.push(d),
            ScanEvent::Commit(crate::archive::scan::ScannedMarker { marker: m, member }) => {
                let id = m.archive_id.parse::<ArchiveId>().ok();
                if archive_id.is_none() {
                    archive_id = id;
                }
                if id != archive_id {
                    damage.push(Damage {
                        offset: member.offset,
                        within: Some(0),
                        entry: Some(format!("runs/{}", m.run)),
                        detail: "commit marker of another archive".into(),
                        torn: false,
                    });
                    continue;
                }
                last_end = member.end;
                runs.push(SalvagedRun {
                    run: m.run,
                    marker_offset: member.offset,
                    end: member.end,
                    time: m.time,
                    fields: m.fields,
                    entries: std::mem::take(&mut pending),
                    counted: m.entries,
                });
            }
        }
    }
    if !pending.is_empty() {
        let tail_damage: Vec<Damage> = damage
            .iter()
            .filter(|d| d.offset >= last_end)
            .cloned()
            .collect();
        if check_tail(source, last_end, len, &tail_damage).is_err() {
            let (run, time) = runs
                .last()
                .map_or((1, 0), |r| (r.run.saturating_add(1), r.time));
            runs.push(SalvagedRun {
                run,
                marker_offset: len,
                end: len,
                time,
                fields: Vec::new(),
                counted: pending.len() as u64,
                entries: pending,
            });
        }
    }
    Ok(Salvage {
        runs,
        damage,
        archive_id,
    })
}

/// Orders the salvaged runs into consecutive run numbers, as an archive must have them. A run
/// whose marker is lost becomes an empty run of its number (its entries, which cannot be told
/// from the next run's, stay in the next run); a run number seen again is folded into the
/// previous run.
fn plan_runs(salvaged: Vec<SalvagedRun>, report: &mut RepairReport) -> Vec<SalvagedRun> {
    let mut plan: Vec<SalvagedRun> = Vec::new();
    for mut run in salvaged {
        let Some(prev) = plan.last_mut() else {
            plan.push(run);
            continue;
        };
        let next = prev.run.saturating_add(1);
        if run.run < next {
            report.lost_runs.push(LostRun {
                run: run.run,
                detail: format!(
                    "a second commit marker of run {} after run {}; its entries were kept in run \
                     {}",
                    run.run, prev.run, prev.run
                ),
            });
            prev.entries.extend(run.entries);
            prev.counted += run.counted;
            continue;
        }
        let gap = run.run - next;
        if gap > MAX_LOST_MARKERS {
            // Run numbers that far apart are a damaged number, not that many lost runs.
            report.lost_runs.push(LostRun {
                run: run.run,
                detail: format!("renumbered {next}: its marker's run number does not follow"),
            });
            run.run = next;
        } else {
            let time = prev.time;
            for lost in next..run.run {
                report.lost_runs.push(LostRun {
                    run: lost,
                    detail: format!(
                        "its commit marker is lost; what of it still reads was kept in run {}",
                        run.run
                    ),
                });
                plan.push(SalvagedRun {
                    run: lost,
                    marker_offset: 0,
                    end: 0,
                    time,
                    fields: Vec::new(),
                    entries: Vec::new(),
                    counted: 0,
                });
            }
        }
        plan.push(run);
    }
    plan
}

/// Most consecutive lost commit markers a repair stands in for with empty runs.
const MAX_LOST_MARKERS: u64 = 64;

/// Names what is missing: from the index where one reads (every entry it lists that the salvage
/// did not find), else by count from the commit markers.
fn account_losses(
    plan: &[SalvagedRun],
    indexed: Option<&[crate::archive::CommittedRun]>,
    report: &mut RepairReport,
) {
    let kept: BTreeSet<(&str, Guid, &str)> = plan
        .iter()
        .flat_map(|r| &r.entries)
        .map(|e| {
            (
                e.record.name.as_str(),
                e.record.sha1,
                e.record.target.as_str(),
            )
        })
        .collect();
    let mut named = false;
    if let Some(runs) = indexed {
        named = true;
        for run in runs {
            for e in &run.entries {
                if !kept.contains(&(e.name.as_str(), e.sha1, e.target.as_str())) {
                    report.lost_entries.push(LostEntry {
                        name: e.name.clone(),
                        sha1: e.sha1.to_string(),
                        run: run.run,
                    });
                }
            }
        }
    }
    for run in plan {
        let found = run.entries.len() as u64;
        if run.counted > found {
            if !named {
                report.lost_unnamed += run.counted - found;
            }
            report.lost_runs.push(LostRun {
                run: run.run,
                detail: format!(
                    "{} of its {} entries do not read{}",
                    run.counted - found,
                    run.counted,
                    if named {
                        ""
                    } else {
                        " (no usable index names them)"
                    }
                ),
            });
        }
    }
    report.lost_runs.sort_by_key(|r| r.run);
}

fn write_repaired(
    paths: &ArchivePaths,
    source: &ArchiveHandle,
    archive_id: &ArchiveId,
    plan: &[SalvagedRun],
    options: &RepairOptions,
    report: &mut RepairReport,
) -> Result<()> {
    let faults = &options.writer.faults;
    let tmp = paths.rewrite_tmp();
    let first_run = plan.first().map_or(1, |r| r.run);
    let mut writer = ArchiveWriter::new(
        DurableFile::new(create_private(&tmp)?, &tmp, faults.clone()),
        0,
        first_run,
        archive_id.to_string(),
        options.writer.level,
        options.writer.threads,
    )?;
    writer.defer_sync();
    let result = (|| {
        for run in plan {
            for e in &run.entries {
                let kept = copy_entry(&mut writer, source, e)?;
                if !kept {
                    report.lost_entries.push(LostEntry {
                        name: e.record.name.clone(),
                        sha1: e.record.sha1.to_string(),
                        run: run.run,
                    });
                }
            }
            let compacted = run
                .fields
                .iter()
                .find(|(k, _)| k == "compacted")
                .and_then(|(_, v)| v.parse().ok());
            writer.commit(&RunSummary::from_marker(run.time, &run.fields, compacted))?;
        }
        if report.lost_anything() {
            let n = writer.run();
            let mut list = String::new();
            for lost in &report.lost_entries {
                list.push_str(&format!("{} {}\n", lost.sha1, lost.name));
            }
            writer.append_bytes(
                &format!("{REPAIRS_DIR}{n}"),
                list.as_bytes(),
                None,
                options.now.max(0) as u64,
            )?;
            let mut summary = RunSummary {
                time: options.now,
                host: options.host.clone(),
                ..Default::default()
            };
            summary
                .extra
                .push(("repaired".into(), options.now.to_string()));
            summary.counts.push((
                "lost-entries".into(),
                report.lost_entries.len() as u64 + report.lost_unnamed,
            ));
            writer.commit(&summary)?;
        }
        writer.sync()
    })();
    drop(writer);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The copy must open cleanly before it replaces anything.
    let copy = ArchiveHandle::open(&tmp)?;
    let outcome = scan_runs(&copy, 0, None, Some(*archive_id))?;
    if let Some(d) = outcome.damage.first() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::corrupt(
            &tmp,
            d.offset,
            format!("the repaired copy fails its check: {}", d.detail),
        ));
    }

    // Keep the damaged file under a new name first (a hard link: both names lead to the same
    // bytes until the copy is renamed over the archive's name), so no crash can leave the
    // archive's name empty or the damaged bytes without a name.
    let aside = aside_name(&paths.archive, options.now);
    let dir = paths.dir();
    let mut index_aside = aside.as_os_str().to_owned();
    index_aside.push(".idx");
    let replaced = (|| {
        // The name must still lead to the bytes that were salvaged: the lock keeps mailpack's
        // writers out, not someone's `mv`.
        if !source.is_current() {
            return Err(Error::corrupt(
                &paths.archive,
                0,
                "the archive was replaced while it was being repaired; nothing was changed",
            ));
        }
        hard_link(&paths.archive, &aside, faults)?;
        fsync_dir(&dir, faults)?;
        if std::fs::symlink_metadata(&paths.index).is_ok() {
            rename(&paths.index, Path::new(&index_aside), faults)?;
            fsync_dir(&dir, faults)?;
        }
        rename(&tmp, &paths.archive, faults)
    })();
    if let Err(e) = replaced {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(&dir, faults)?;
    report.kept_aside = Some(aside);
    report.bytes_after = Some(outcome.file_len);
    report.runs_kept = outcome.runs.len() as u64;
    // The repair is done once the copy has the archive's name; an index is only a cache.
    if let Err(e) = sidecar::write_full(&paths.index, archive_id, &outcome.runs, faults) {
        report.notices.push(format!(
            "{}: the repaired archive is in place, but its index could not be written ({e}); \
             the next command that opens it rebuilds it",
            paths.index.display()
        ));
        report.index_failure = Some(e.to_string());
    }
    Ok(())
}

/// Appends one salvaged entry, its data read again and checked. `false` when it no longer reads.
fn copy_entry(
    writer: &mut ArchiveWriter,
    source: &ArchiveHandle,
    e: &ScannedEntry,
) -> Result<bool> {
    let r = &e.record;
    if r.kind == EntryKind::Symlink {
        writer.append_symlink(&r.name, &r.target, e.mtime)?;
        return Ok(true);
    }
    let mut data = match source.read_entry(r) {
        Ok(data) => data,
        Err(Error::Corrupt { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let appended = writer.append_reader(
        &r.name,
        &mut data,
        r.size,
        Some(r.sha1),
        r.stat.as_deref().copied(),
        e.mtime,
    )?;
    Ok(matches!(appended, crate::archive::Appended::Stored(_)))
}

/// `<archive>.damaged-<UTC time>`, with `-2`, `-3`... when a repair in the same second left one.
fn aside_name(archive: &Path, now: i64) -> PathBuf {
    let stamp: String = crate::time::format_utc(now)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let base = format!("{}.damaged-{stamp}", archive.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 2;
    while std::fs::symlink_metadata(&candidate).is_ok() {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// What `Archive::repair_losses` reads: the lost names listed in a `repairs/<n>` entry.
fn parse_losses(list: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(list)
        .lines()
        .filter_map(|line| line.split_once(' ').map(|(_, name)| name.to_string()))
        .collect()
}
