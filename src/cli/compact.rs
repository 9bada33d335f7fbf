//! `mailpack compact`: the compaction policy over archives, or its plan with `--dry-run`.

use std::path::PathBuf;

use clap::Args;

use super::output::{self, Printer};
use super::writer_options;
use crate::commands::{self, Selection};
use crate::error::Error;

#[derive(Args, Debug)]
pub(super) struct CompactArgs {
    /// Directory holding the per-user archives.
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: Option<PathBuf>,
    /// Only these users' archives (repeatable); default: every archive in the directory.
    #[arg(long, value_name = "U")]
    user: Vec<String>,
    /// Only this shared mailbox tree's archive (repeatable).
    #[arg(long, value_name = "NAME")]
    shared: Vec<String>,
    /// Print what would be kept and dropped, per archive, without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Compact even when the live share is above the threshold.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Wait for a backup writing an archive instead of skipping that archive as busy.
    #[arg(long)]
    wait: bool,
    /// gzip level for the members that are rebuilt, 1 (fast) to 9 (small).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9))]
    level: u32,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    progress: super::progress::ProgressArgs,
    /// Write this run's figures to PATH (Prometheus text format, atomically), for
    /// node_exporter's textfile collector.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

/// The compaction policy, shared by `compact` and `backup --compact`.
#[derive(Args, Debug)]
pub(super) struct PolicyArgs {
    /// Every metadata version committed within this many days is kept, plus the newest before.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    keep_days: i64,
    /// A deleted mailbox's data is kept this many days after its deletion.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    keep_deleted_days: i64,
    /// Live share (percent) under which an archive is compacted, right after a compaction.
    #[arg(long, default_value_t = 80, value_name = "PERCENT",
          value_parser = clap::value_parser!(u32).range(0..=100))]
    threshold_start: u32,
    /// Points the threshold rises per week since the last compaction.
    #[arg(long, default_value_t = 1, value_name = "POINTS")]
    threshold_step: u32,
    /// Also keep restorable the newest run of each of the last N days (before the window).
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_daily: u32,
    /// … of each of the last N ISO weeks.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_weekly: u32,
    /// … of each of the last N months.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_monthly: u32,
    /// … of each of the last N years.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_yearly: u32,
}

impl PolicyArgs {
    pub(super) fn options(&self, force: bool) -> crate::compact::PlanOptions {
        crate::compact::PlanOptions {
            now: commands::now(),
            keep_days: self.keep_days,
            keep_deleted_days: self.keep_deleted_days,
            threshold_start: self.threshold_start,
            threshold_step: self.threshold_step,
            force,
            gfs: crate::compact::Gfs {
                daily: self.keep_daily,
                weekly: self.keep_weekly,
                monthly: self.keep_monthly,
                yearly: self.keep_yearly,
            },
        }
    }
}

pub(super) fn run(args: CompactArgs, p: &mut Printer) -> Result<u8, Error> {
    use crate::commands::compact::{compact_archives, ArchiveCompaction, CompactCommand};
    let display = super::progress::Display::start("compact", args.progress, args.json, p);
    let command = CompactCommand {
        progress: display.progress(),
        selection: Selection::Dir {
            dir: args.archive_dir.clone().ok_or_else(|| {
                Error::usage("pass --archive-dir DIR (or set MAILPACK_ARCHIVE_DIR)")
            })?,
            owners: args
                .user
                .iter()
                .map(|u| crate::spool::Owner::User(u.clone()))
                .chain(
                    args.shared
                        .iter()
                        .map(|t| crate::spool::Owner::Shared(t.clone())),
                )
                .collect(),
        },
        plan: args.policy.options(args.force),
        writer: writer_options(args.wait, None, args.level),
        dry_run: args.dry_run,
    };
    let mut failed = false;
    let mut metrics = crate::metrics::RunMetrics {
        command: "compact".into(),
        started: commands::now(),
        archive_bytes: Some(0),
        ..Default::default()
    };
    let clock = std::time::Instant::now();
    compact_archives(&command, &mut |paths, result, notices| {
        p.notices(notices);
        match &result {
            Ok(r) => {
                metrics.owners_ok += 1;
                let (bytes, live) = match r {
                    ArchiveCompaction::Planned(plan) => (plan.archive_bytes, plan.live_percent),
                    ArchiveCompaction::Ran(o) => (
                        o.bytes_after,
                        if o.compacted {
                            100.0
                        } else {
                            o.plan.live_percent
                        },
                    ),
                };
                *metrics.archive_bytes.get_or_insert(0) += bytes;
                let share = live / 100.0;
                metrics.live_share = Some(metrics.live_share.map_or(share, |l: f64| l.min(share)));
            }
            Err(_) => metrics.owners_failed += 1,
        }
        let shown = match result {
            Ok(result) if args.json => {
                let (kind, value) = match &result {
                    ArchiveCompaction::Planned(plan) => ("plan", serde_json::json!(plan)),
                    ArchiveCompaction::Ran(outcome) => ("compaction", serde_json::json!(outcome)),
                };
                p.json(
                    kind,
                    &serde_json::json!({ "archive": paths.archive, kind: value }),
                )
            }
            Ok(ArchiveCompaction::Planned(plan)) => {
                output::compaction_plan(p, &paths.archive, &plan)
            }
            Ok(ArchiveCompaction::Ran(outcome)) => {
                p.line(&output::compaction_line(&paths.archive, &outcome))
            }
            Err(e) => {
                p.error(&e);
                failed = true;
                Ok(())
            }
        };
        if shown.is_err() {
            failed = true;
        }
    })?;
    display.finish(p);
    metrics.seconds = clock.elapsed().as_secs_f64();
    if let Some(path) = &args.metrics_file {
        crate::metrics::write_file(path, &metrics)?;
    }
    Ok(if failed { 1 } else { 0 })
}
