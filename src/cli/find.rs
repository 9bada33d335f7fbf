//! `mailpack find`: messages of every retained run by sender, recipient, subject, Message-ID and
//! date, with where and when each was and how it ended.

use std::path::PathBuf;

use clap::Args;

use super::output::{self, Printer};
use super::{selection, ArchiveArgs};
use crate::commands::find::{FindOutcome, FoundCopy, FoundMessage};
use crate::error::Error;
use crate::find::Query;

#[derive(Args, Debug)]
pub(super) struct FindArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Path of one archive file, instead of --archive-dir and --user.
    #[arg(value_name = "ARCHIVE")]
    file: Option<PathBuf>,
    /// Text in a From address or name (case-insensitive, RFC 2047 words decoded).
    #[arg(long, value_name = "TEXT")]
    from: Option<String>,
    /// Text in a To or Cc address or name (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    to: Option<String>,
    /// Text in the Subject (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    subject: Option<String>,
    /// The Message-ID, exactly (angle brackets optional).
    #[arg(long, value_name = "ID")]
    message_id: Option<String>,
    /// Internal date at or after TIME (Unix seconds or YYYY-MM-DD[THH:MM[:SS]] UTC).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// Internal date before TIME.
    #[arg(long, value_name = "T")]
    before: Option<String>,
    /// Only copies in this mailbox (INBOX, Archive/2023, or a full name), under any name it had.
    #[arg(long, value_name = "NAME")]
    mailbox: Option<String>,
    /// Only messages no longer in any mailbox as of the last run (expunged, or folder deleted).
    #[arg(long)]
    deleted_only: bool,
    /// JSON lines on stdout (formats/json-output.md).
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: FindArgs, p: &mut Printer) -> Result<u8, Error> {
    let time = |t: &Option<String>| t.as_deref().map(crate::restore::parse_time).transpose();
    let query = Query {
        from: args.from.clone(),
        to: args.to.clone(),
        subject: args.subject.clone(),
        message_id: args.message_id.clone(),
        since: time(&args.since)?,
        before: time(&args.before)?,
        mailbox: args.mailbox.clone(),
        deleted_only: args.deleted_only,
    };
    let mut notices = Vec::new();
    let outcome = match args.archive.bucket() {
        Some(url) => {
            let (_source, archive) = args.archive.open_offsite(&url, &mut notices)?;
            notices.push(
                "a bucket keeps no find index: the whole archive was read (pull it to search it often)"
                    .into(),
            );
            crate::commands::find::find_archive(&archive, &query, false, &mut notices)?
        }
        None => {
            let paths = selection(&args.archive, args.file.clone())?.one()?;
            crate::commands::find::find(&paths, &query, &mut notices)?
        }
    };
    p.notices(&notices);
    p.notices(&outcome.damage);
    print(&outcome, args.json, p)?;
    // As grep: 1 when nothing matched, so scripts can tell.
    Ok(u8::from(outcome.found.is_empty()))
}

fn print(outcome: &FindOutcome, json: bool, p: &mut Printer) -> Result<(), Error> {
    for m in &outcome.found {
        if json {
            p.json("message", m)?;
        } else {
            p.line(&message_line(m))?;
        }
    }
    let summary = format!(
        "{} found among {} messages of {} runs (find index {})",
        outcome.found.len(),
        outcome.messages_indexed,
        outcome.runs,
        match outcome.index {
            crate::find::IndexUse::Current => "current",
            crate::find::IndexUse::Updated => "brought up to date",
            crate::find::IndexUse::Built => "built",
        }
    );
    if json {
        p.json(
            "summary",
            &serde_json::json!({
                "found": outcome.found.len(),
                "messages_indexed": outcome.messages_indexed,
                "runs": outcome.runs,
                "index": outcome.index,
                "damage": outcome.damage,
            }),
        )?;
    } else {
        p.note(&summary);
    }
    Ok(())
}

/// `<sha1> <size> <date> From … Subject … | <mailbox> uid N runs A–B <how it ended> (flags); …`
fn message_line(m: &FoundMessage) -> String {
    let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let copies: Vec<String> = m.copies.iter().map(copy_text).collect();
    format!(
        "{}  {}  {}  From: {}  Subject: {}  | {}",
        m.sha1,
        output::bytes(m.size),
        m.date.map_or_else(|| "-".into(), output::utc),
        or_dash(&m.from),
        or_dash(&m.subject),
        copies.join("; ")
    )
}

fn copy_text(c: &FoundCopy) -> String {
    let span = match (c.first_run, c.last_run) {
        (Some(a), Some(b)) => format!(
            "runs {a}-{b} ({} to {})",
            c.first_time.map_or_else(|| "?".into(), output::utc),
            c.last_time.map_or_else(|| "?".into(), output::utc)
        ),
        _ => "never live in a run".into(),
    };
    let state = match &c.ended {
        None => "live".to_string(),
        Some(e) => format!("{} {}", e.how.as_str(), output::utc(e.time)),
    };
    let mut text = format!("{} uid {} {span} {state}", c.mailbox, c.uid);
    if !c.other_names.is_empty() {
        text.push_str(&format!(" (also named {})", c.other_names.join(", ")));
    }
    text.push_str(&format!(" flags ({})", c.flags.join(" ")));
    text
}
