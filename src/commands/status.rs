//! `mailpack status` and `mailpack hold`: per owner, how recent and how healthy its backups are
//! (the archive, its status file and hold: formats/status.md), and legal holds placed or
//! released.

use std::path::{Path, PathBuf};

use crate::compact::{plan, PlanOptions};
use crate::error::{Error, Result};
use crate::spool::Owner;
use crate::store::status::{self, Drill, Failure};
use crate::store::{list_owner_archives, Archive, ArchivePaths};

pub struct StatusOptions {
    pub archive_dir: PathBuf,
    /// An owner whose last committed run is older than this many seconds is stale.
    pub stale_after: i64,
    pub now: i64,
    /// The compaction policy, for the weeks to the next forced compaction.
    pub policy: PlanOptions,
}

/// One owner as `status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct OwnerState {
    pub owner: String,
    pub kind: &'static str,
    pub archive: PathBuf,
    pub last_run: Option<u64>,
    pub last_run_time: Option<i64>,
    pub age_seconds: Option<i64>,
    pub runs: usize,
    pub archive_bytes: u64,
    pub live_percent: Option<f64>,
    /// Weeks until the policy compacts this archive even if nothing else changes; 0 when due
    /// now, `None` when nothing in it is dead.
    pub weeks_to_forced_compaction: Option<u64>,
    pub held: Option<String>,
    pub last_failure: Option<Failure>,
    pub last_drill: Option<Drill>,
    pub stale: bool,
    /// The last attempt failed (a failure later than the last success).
    pub failed: bool,
    pub drill_failed: bool,
    /// What could not be read (the archive, the status file), said for the operator.
    pub notes: Vec<String>,
}

impl OwnerState {
    pub fn flagged(&self) -> bool {
        self.stale || self.failed || self.drill_failed
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct StatusSummary {
    pub owners: usize,
    pub stale: usize,
    pub failed: usize,
    pub drill_failed: usize,
    pub held: usize,
    pub archive_bytes: u64,
    pub oldest_run_time: Option<i64>,
}

pub struct StatusReport {
    pub owners: Vec<OwnerState>,
    pub summary: StatusSummary,
    pub notices: Vec<String>,
}

/// Every owner with an archive (or only a status file: a first backup that failed) in the
/// directory.
pub fn status(options: &StatusOptions) -> Result<StatusReport> {
    let (own, notices) = list_owner_archives(&options.archive_dir)?;
    let mut owners: Vec<(Owner, ArchivePaths)> = own
        .into_iter()
        .filter_map(|(o, p)| o.map(|o| (o, p)))
        .collect();
    for (owner, paths) in status_only(&options.archive_dir)? {
        if !owners.iter().any(|(o, _)| *o == owner) {
            owners.push((owner, paths));
        }
    }
    let mut report = StatusReport {
        owners: Vec::new(),
        summary: StatusSummary::default(),
        notices,
    };
    for (owner, paths) in owners {
        let state = owner_state(&owner, &paths, options);
        let s = &mut report.summary;
        s.owners += 1;
        s.stale += usize::from(state.stale);
        s.failed += usize::from(state.failed);
        s.drill_failed += usize::from(state.drill_failed);
        s.held += usize::from(state.held.is_some());
        s.archive_bytes += state.archive_bytes;
        if let Some(t) = state.last_run_time {
            s.oldest_run_time = Some(s.oldest_run_time.map_or(t, |o: i64| o.min(t)));
        }
        report.owners.push(state);
    }
    Ok(report)
}

/// Owners with a status file whose archive is not among mailpack's: their first backup failed
/// before committing, or another program's file sits at the archive's name.
fn status_only(dir: &Path) -> Result<Vec<(Owner, ArchivePaths)>> {
    let mut out = Vec::new();
    for (sub, shared) in [
        (dir.to_path_buf(), false),
        (dir.join(crate::store::SHARED_DIR), true),
    ] {
        let Ok(read) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in read.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".status") else {
                continue;
            };
            let owner = match (shared, crate::store::decode_user(stem)) {
                (_, None) if shared && stem == crate::spool::SERVER_OWNER => Owner::Server,
                (false, Some(u)) => Owner::User(u),
                (true, Some(t)) => Owner::Shared(t),
                (_, None) => continue,
            };
            out.push((owner.clone(), ArchivePaths::for_owner(dir, &owner)?));
        }
    }
    Ok(out)
}

fn owner_state(owner: &Owner, paths: &ArchivePaths, options: &StatusOptions) -> OwnerState {
    let mut state = OwnerState {
        owner: owner.name().to_string(),
        kind: owner.kind(),
        archive: paths.archive.clone(),
        last_run: None,
        last_run_time: None,
        age_seconds: None,
        runs: 0,
        archive_bytes: 0,
        live_percent: None,
        weeks_to_forced_compaction: None,
        held: None,
        last_failure: None,
        last_drill: None,
        stale: false,
        failed: false,
        drill_failed: false,
        notes: Vec::new(),
    };
    let mut notices = Vec::new();
    match Archive::open_streamed(paths, &mut notices) {
        Ok(archive) => {
            state.runs = archive.runs().len();
            state.archive_bytes = archive.committed_len();
            if let Some(last) = archive.runs().last() {
                state.last_run = Some(last.run);
                state.last_run_time = Some(last.time);
            }
            let policy = PlanOptions {
                now: options.now,
                force: false,
                ..options.policy.clone()
            };
            match plan(&archive, &policy) {
                Ok(p) => {
                    state.live_percent = Some(p.live_percent);
                    state.weeks_to_forced_compaction = weeks_to_forced(
                        p.live_percent,
                        p.live_raw < p.total_raw,
                        &policy,
                        p.weeks_since_compaction,
                    );
                }
                Err(e) => state.notes.push(format!("live share unknown: {e}")),
            }
        }
        Err(Error::NotFound(_)) => state.notes.push("no archive yet".into()),
        Err(e) => state.notes.push(format!("archive unreadable: {e}")),
    }
    match status::read(&paths.archive) {
        Ok(Some(s)) => {
            state.failed = s.failing().is_some();
            state.last_failure = s.last_failure.clone();
            state.drill_failed = s.last_drill.as_ref().is_some_and(|d| !d.ok);
            state.last_drill = s.last_drill;
        }
        Ok(None) => {}
        Err(e) => state.notes.push(format!("status file unreadable: {e}")),
    }
    match status::hold(&paths.archive) {
        Ok(h) => state.held = h,
        Err(e) => state.notes.push(e.to_string()),
    }
    state.age_seconds = state.last_run_time.map(|t| options.now - t);
    state.stale = state
        .age_seconds
        .is_none_or(|age| age > options.stale_after);
    state
}

/// Weeks until `start + step × weeks` exceeds the live share, counted from now.
fn weeks_to_forced(live: f64, any_dead: bool, policy: &PlanOptions, since: u64) -> Option<u64> {
    if !any_dead {
        return None;
    }
    let start = f64::from(policy.threshold_start);
    let step = f64::from(policy.threshold_step.max(1));
    let at = if live < start {
        0
    } else {
        ((live - start) / step).floor() as u64 + 1
    };
    Some(at.saturating_sub(since))
}

/// `hold --user U [--release]`: returns whether the owner was held before.
pub fn hold(archive_dir: &Path, owner: &Owner, release: bool, reason: &str) -> Result<bool> {
    let paths = ArchivePaths::for_owner(archive_dir, owner)?;
    if !release && !paths.archive.exists() {
        return Err(Error::NotFound(format!(
            "an archive of {owner} at {}",
            paths.archive.display()
        )));
    }
    status::set_hold(&paths.archive, release, crate::time::now(), reason)
}

/// Parses `26h`, `90m`, `2d`, `1w`, `3600s` or plain seconds.
pub fn parse_duration(text: &str) -> Result<i64> {
    let (digits, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: i64 = digits
        .parse()
        .map_err(|_| Error::usage(format!("{text:?} is not a duration (26h, 90m, 2d, 1w)")))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(Error::usage(format!(
                "{text:?}: the unit is one of s, m, h, d, w"
            )))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| Error::usage(format!("{text:?} is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("26h").unwrap(), 26 * 3600);
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("2d").unwrap(), 172_800);
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3y").is_err());
    }

    #[test]
    fn the_forced_compaction_comes_when_the_threshold_passes_the_live_share() {
        let p = PlanOptions::default(); // 80 + 1 per week
        assert_eq!(weeks_to_forced(85.5, true, &p, 0), Some(6));
        assert_eq!(weeks_to_forced(85.5, true, &p, 4), Some(2));
        assert_eq!(weeks_to_forced(70.0, true, &p, 0), Some(0));
        assert_eq!(weeks_to_forced(100.0, false, &p, 0), None);
    }
}
