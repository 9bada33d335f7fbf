//! `mailpack put`: files stored as one committed run.

use std::path::PathBuf;

use clap::Args;

use super::output::Printer;
use super::{selection, writer_options, ArchiveArgs};
use crate::commands::{self, PutOptions};
use crate::error::Error;

#[derive(Args, Debug)]
pub(super) struct PutArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Store the single FILE under this entry name (with its source stat) instead of files/<sha1>.
    #[arg(long, value_name = "ENTRY")]
    name: Option<String>,
    /// Wait for a running writer instead of failing with "busy".
    #[arg(long)]
    wait: bool,
    /// Compression threads (default: every core).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// gzip compression level, 1 (fast) to 9 (small).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9))]
    level: u32,
    #[arg(long)]
    json: bool,
    /// Files to store; directories are walked.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

pub(super) fn run(args: PutArgs, p: &mut Printer) -> Result<u8, Error> {
    let paths = selection(&args.archive, None)?.one()?;
    let report = commands::put(
        &paths,
        &PutOptions {
            files: args.files,
            name: args.name,
            writer: writer_options(args.wait, args.jobs, args.level),
        },
    )?;
    p.notices(&report.notices);
    if args.json {
        p.json("put", &report)?;
    } else {
        p.line(&format!(
            "{}: run {} committed: {} entries added, {} already stored, {} bytes read",
            report.archive.display(),
            report.run,
            report.added.len(),
            report.already_stored,
            report.bytes_read
        ))?;
    }
    Ok(u8::from(report.index_stale))
}
