//! `mailpack verify`: every byte of one or more archives, problems with entry and offset.

use std::path::PathBuf;

use clap::Args;

use super::output::Printer;
use super::{selection, ArchiveArgs};
use crate::commands;
use crate::error::Error;

#[derive(Args, Debug)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Path of one archive file; without it and without --user, every archive in --archive-dir.
    #[arg(value_name = "ARCHIVE")]
    file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: VerifyArgs, p: &mut Printer) -> Result<u8, Error> {
    let all = args.file.is_none() && args.archive.user.is_none();
    let selected = selection(&args.archive, args.file)?;
    let mut skipped = Vec::new();
    let targets = selected.resolve_noting(&mut skipped)?;
    p.notices(&skipped);
    if targets.is_empty() && all {
        p.note("no archives found");
    }
    let mut code = 0;
    for paths in &targets {
        let report = match commands::verify(paths) {
            Ok(r) => r,
            Err(e) => {
                p.error(&e);
                code = match e {
                    Error::Foreign { .. } | Error::Corrupt { .. } => code.max(1),
                    _ => 2,
                };
                continue;
            }
        };
        p.notices(&report.repaired);
        if !report.problems.is_empty() {
            code = code.max(1);
        }
        if args.json {
            p.json("verify", &report)?;
        } else {
            for problem in &report.problems {
                p.line(&format!(
                    "{}: byte {}{}{}: {}",
                    report.archive.display(),
                    problem.offset,
                    problem
                        .within
                        .map(|w| format!(" (+{w} in member)"))
                        .unwrap_or_default(),
                    problem
                        .entry
                        .as_ref()
                        .map(|e| format!(" entry {e}"))
                        .unwrap_or_default(),
                    problem.detail
                ))?;
            }
            p.line(&format!(
                "{}: {} runs, {} entries, {} members, {} bytes: {}",
                report.archive.display(),
                report.runs,
                report.entries,
                report.members,
                report.bytes,
                if report.problems.is_empty() {
                    "ok".to_string()
                } else {
                    format!("{} problems", report.problems.len())
                }
            ))?;
        }
    }
    Ok(code)
}
