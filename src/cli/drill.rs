//! `mailpack drill`: an automatic restore test of sampled mailboxes.

use std::path::PathBuf;

use clap::Args;

use super::output::Printer;
use crate::commands::drill::{drill, DrillOptions};
use crate::error::Error;

#[derive(Args, Debug)]
pub(super) struct DrillArgs {
    /// The live server's imapd.conf (compared with what is restored).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "against_archive_only"
    )]
    config: Option<PathBuf>,
    /// Directory holding the archives.
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: PathBuf,
    /// Mailboxes to drill, picked at random.
    #[arg(long, value_name = "N", default_value_t = 20, conflicts_with = "all")]
    sample: usize,
    /// Every mailbox of every archive.
    #[arg(long)]
    all: bool,
    /// The random seed (printed by every run, to replay a failure).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Restore and check against the archive alone (a backup host that cannot see the spool).
    #[arg(long, conflicts_with = "config")]
    against_archive_only: bool,
    /// Seconds to wait for a lock Cyrus holds before comparing that mailbox with the archive only.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    lock_timeout: u64,
    #[arg(long)]
    json: bool,
    /// Write this run's figures to PATH (Prometheus text format, atomically).
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

pub(super) fn run(args: DrillArgs, p: &mut Printer) -> Result<u8, Error> {
    let started = crate::time::now();
    let clock = std::time::Instant::now();
    let seed = args.seed.unwrap_or_else(|| {
        (started as u64).wrapping_mul(6_364_136_223_846_793_005) ^ u64::from(std::process::id())
    });
    let options = DrillOptions {
        archive_dir: args.archive_dir.clone(),
        config: args.config.clone(),
        sample: (!args.all).then_some(args.sample),
        seed,
        locks: super::LockMethodArg::Fcntl.options(args.lock_timeout),
        now: started,
    };
    let report = drill(&options)?;
    for m in &report.mailboxes {
        if args.json {
            p.json("drill", m)?;
            continue;
        }
        for d in &m.differences {
            p.line(&format!("{} {}: {d}", m.owner, m.mailbox))?;
        }
        p.line(&format!(
            "{} {}: {} messages restored, {}: {}",
            m.owner,
            m.mailbox,
            m.messages,
            m.compared,
            if m.differences.is_empty() {
                "identical".to_string()
            } else {
                format!("{} differences", m.differences.len())
            }
        ))?;
    }
    let summary = format!(
        "drill seed {}: {} of {} mailboxes, {} differences",
        report.seed,
        report.mailboxes.len(),
        report.candidates,
        report.differences
    );
    if args.json {
        p.json(
            "drill-summary",
            &serde_json::json!({ "seed": report.seed, "mailboxes": report.mailboxes.len(),
                "candidates": report.candidates, "differences": report.differences }),
        )?;
    } else {
        p.line(&summary)?;
    }
    if let Some(path) = &args.metrics_file {
        let failed = report
            .mailboxes
            .iter()
            .filter(|m| !m.differences.is_empty())
            .count() as u64;
        crate::metrics::write_file(
            path,
            &crate::metrics::RunMetrics {
                command: "drill".into(),
                started,
                seconds: clock.elapsed().as_secs_f64(),
                owners_ok: report.mailboxes.len() as u64 - failed,
                owners_failed: failed,
                drill_differences: Some(report.differences),
                ..Default::default()
            },
        )?;
    }
    Ok(u8::from(report.differences > 0))
}
