//! `mailpack reindex`: the sidecar index rebuilt from the archive alone.

use std::path::PathBuf;

use clap::Args;

use super::output::Printer;
use super::{selection, ArchiveArgs};
use crate::commands;
use crate::error::Error;
use crate::store::WriterWait;

#[derive(Args, Debug)]
pub(super) struct ReindexArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    #[arg(value_name = "ARCHIVE")]
    file: Option<PathBuf>,
    /// Wait for a running writer instead of failing with "busy".
    #[arg(long)]
    wait: bool,
}

pub(super) fn run(args: ReindexArgs, p: &mut Printer) -> Result<u8, Error> {
    let selected = selection(&args.archive, args.file)?;
    let wait = if args.wait {
        WriterWait::UntilFree
    } else {
        WriterWait::FailIfBusy
    };
    let mut code = 0;
    let mut skipped = Vec::new();
    let targets = selected.resolve_noting(&mut skipped)?;
    p.notices(&skipped);
    for paths in targets {
        match commands::reindex(&paths, wait) {
            Ok(report) => {
                p.notices(&report.notices);
                p.line(&format!(
                    "{}: {} runs, {} entries indexed",
                    report.archive.display(),
                    report.runs,
                    report.entries
                ))?;
            }
            Err(e) => {
                p.error(&e);
                code = 2;
            }
        }
    }
    Ok(code)
}
