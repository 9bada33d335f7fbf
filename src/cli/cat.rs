//! `mailpack cat`: one entry to standard output, by seeking to it.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;

use super::output::{Out, Printer};
use super::{selection, ArchiveArgs};
use crate::commands;
use crate::error::Error;

#[derive(Args, Debug)]
pub(super) struct CatArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// [ARCHIVE] ENTRY: an archive file is optional; ENTRY is a name or a 40-digit SHA-1.
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// Print the entry exactly as stored. Without it, `folders/<uniqueid>/cyrus.index` is the
    /// mailbox's newest index, rebuilt through the index deltas stored after its newest full copy.
    #[arg(long)]
    as_stored: bool,
}

pub(super) fn run(args: CatArgs, p: &mut Printer) -> Result<u8, Error> {
    let (file, spec) = match args.args.as_slice() {
        [spec] => (None, spec.clone()),
        [file, spec] => (Some(PathBuf::from(file)), spec.clone()),
        _ => unreachable!("clap bounds the count"),
    };
    let mut notices = Vec::new();
    let bucket = match args.archive.bucket() {
        Some(url) => Some(args.archive.open_offsite(&url, &mut notices)?),
        None => None,
    };
    let offsite = bucket.as_ref().map(|(_, archive)| archive);
    let paths = match offsite {
        Some(_) => None,
        None => Some(selection(&args.archive, file)?.one()?),
    };
    let result = {
        let stdout = io::stdout();
        let mut out = Out::new(stdout.lock());
        let r = match (offsite, &paths) {
            (Some(archive), _) => commands::cat_archive(archive, &spec, args.as_stored, &mut out),
            (None, Some(paths)) => {
                commands::cat(paths, &spec, args.as_stored, &mut out, &mut notices)
            }
            (None, None) => unreachable!("one of the two is set above"),
        };
        if out.closed() {
            p.mark_stdout_closed();
        }
        r.and_then(|served| {
            out.flush()
                .map(|_| served)
                .map_err(|e| Error::io("write", "standard output", e))
        })
    };
    if let Some((source, _)) = &bucket {
        notices.push(format!(
            "fetched {}",
            super::output::bytes(source.bytes_fetched())
        ));
    }
    p.notices(&notices);
    match result {
        Err(_) if p.stdout_closed() => Ok(0),
        r => r.map(|served| u8::from(served.degraded)),
    }
}
