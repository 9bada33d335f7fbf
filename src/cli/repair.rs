//! `mailpack repair`: the explicit salvage of a damaged archive (formats/archive.md 6.3).

use std::path::PathBuf;

use clap::Args;

use super::output::Printer;
use super::{selection, writer_options, ArchiveArgs};
use crate::commands;
use crate::error::Error;

#[derive(Args, Debug)]
pub(super) struct RepairArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Path of one archive file; without it and without --user, every archive in --archive-dir
    /// (those that open cleanly are left as they are).
    #[arg(value_name = "ARCHIVE")]
    file: Option<PathBuf>,
    /// Say what would be kept and lost; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Wait for a running writer instead of failing with "busy".
    #[arg(long)]
    wait: bool,
    /// JSON lines on stdout (formats/json-output.md).
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: RepairArgs, p: &mut Printer) -> Result<u8, Error> {
    let mut skipped = Vec::new();
    let targets = selection(&args.archive, args.file)?.resolve_noting(&mut skipped)?;
    p.notices(&skipped);
    let writer = writer_options(args.wait, None, 6);
    let mut code = 0;
    for paths in &targets {
        let report = match commands::repair(paths, args.dry_run, &writer) {
            Ok(r) => r,
            Err(e) => {
                p.error(&e);
                code = 2;
                continue;
            }
        };
        p.notices(&report.notices);
        if report.lost_anything() || report.index_failure.is_some() {
            code = code.max(1);
        }
        if args.json {
            p.json("repair", &report)?;
            continue;
        }
        let name = report.archive.display().to_string();
        if !report.needed {
            p.line(&format!(
                "{name}: opens cleanly ({} runs, {} entries); nothing to repair",
                report.runs_kept, report.entries_kept
            ))?;
            continue;
        }
        if let Some(reason) = &report.reason {
            p.line(&format!("{name}: {reason}"))?;
        }
        for d in &report.damage {
            p.line(&format!(
                "{name}: damaged at byte {}{}: {}",
                d.offset,
                d.entry
                    .as_ref()
                    .map(|e| format!(" entry {e}"))
                    .unwrap_or_default(),
                d.detail
            ))?;
        }
        for r in &report.lost_runs {
            p.line(&format!("{name}: run {}: {}", r.run, r.detail))?;
        }
        for e in &report.lost_entries {
            p.line(&format!(
                "{name}: lost {} (run {}, sha1 {})",
                e.name, e.run, e.sha1
            ))?;
        }
        let verb = if report.dry_run { "would keep" } else { "kept" };
        p.line(&format!(
            "{name}: {verb} {} runs and {} entries; {} entries lost{}{}",
            report.runs_kept,
            report.entries_kept,
            report.lost_entries.len() as u64 + report.lost_unnamed,
            if report.lost_unnamed > 0 {
                format!(" ({} not named: no usable index)", report.lost_unnamed)
            } else {
                String::new()
            },
            match &report.kept_aside {
                Some(aside) => format!("; the damaged file is kept as {}", aside.display()),
                None if report.dry_run => "; nothing was changed (--dry-run)".into(),
                None => String::new(),
            }
        ))?;
    }
    Ok(code)
}
