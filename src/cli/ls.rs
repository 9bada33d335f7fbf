//! `mailpack ls`: the committed state, every run, or the mailboxes as of a time.

use std::path::PathBuf;

use clap::Args;

use super::output::{self, Printer};
use super::{selection, ArchiveArgs};
use crate::commands;
use crate::error::Error;

#[derive(Args, Debug)]
pub(super) struct LsArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Path of one archive file, instead of --archive-dir and --user.
    #[arg(value_name = "ARCHIVE")]
    file: Option<PathBuf>,
    /// Every committed run with all its entries, superseded versions and tombstones included.
    #[arg(long, conflicts_with = "at")]
    all: bool,
    /// The mailboxes and messages as of the newest run at or before TIME (Unix seconds or
    /// YYYY-MM-DD[THH:MM[:SS]] UTC): what a restore as of TIME brings back.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// JSON lines on stdout (formats/json-output.md).
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: LsArgs, p: &mut Printer) -> Result<u8, Error> {
    let offsite = match args.archive.bucket() {
        Some(url) => {
            let mut notices = Vec::new();
            let (_source, archive) = args.archive.open_offsite(&url, &mut notices)?;
            p.notices(&notices);
            Some(archive)
        }
        None => None,
    };
    if args.at.is_some() {
        let at = crate::restore::parse_time(args.at.as_deref().unwrap_or_default())?;
        let mut notices = Vec::new();
        let as_of = match &offsite {
            Some(archive) => commands::restore::as_of_archive(archive, Vec::new(), Some(at))?,
            None => {
                let paths = selection(&args.archive, args.file)?.one()?;
                commands::restore::as_of(&paths, Some(at), &mut notices)?
            }
        };
        p.notices(&notices);
        if args.json {
            for m in &as_of.mailboxes {
                p.json(
                    "mailbox",
                    &serde_json::json!({ "run": as_of.run, "time": as_of.time, "mailbox": m }),
                )?;
            }
        } else {
            p.line(&format!(
                "as of run {} ({})",
                as_of.run,
                output::utc(as_of.time)
            ))?;
            for m in &as_of.mailboxes {
                p.line(&output::mailbox_as_of_line(m))?;
                for msg in &m.messages {
                    p.line(&format!("  {}", output::message_as_of_line(msg)))?;
                }
            }
        }
        for r in &as_of.refused {
            p.note(&format!("refused: {r}"));
        }
        for d in &as_of.damage {
            p.note(d);
        }
        Ok(u8::from(
            !as_of.refused.is_empty() || !as_of.damage.is_empty(),
        ))
    } else {
        let listing = match &offsite {
            Some(archive) => commands::ls_archive(archive, Vec::new(), Vec::new(), args.all),
            None => commands::ls(&selection(&args.archive, args.file)?.one()?, args.all)?,
        };
        p.notices(&listing.notices);
        for d in &listing.damage {
            p.note(d);
        }
        if args.all {
            for run in &listing.runs {
                if args.json {
                    p.json("run", run)?;
                } else {
                    p.line(&format!(
                        "run {} time {} bytes {}..{} entries {}",
                        run.run,
                        output::utc(run.time),
                        run.start,
                        run.end,
                        run.entries.len()
                    ))?;
                    for e in &run.entries {
                        p.line(&format!("  {}", output::entry_line(e)))?;
                    }
                }
            }
        } else {
            for e in &listing.state {
                if args.json {
                    p.json("entry", e)?;
                } else {
                    p.line(&output::entry_line(e))?;
                }
            }
        }
        Ok(if listing.damage.is_empty() { 0 } else { 1 })
    }
}
