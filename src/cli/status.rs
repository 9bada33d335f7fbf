//! `mailpack status` and `mailpack hold`.

use std::path::PathBuf;

use clap::Args;

use super::compact::PolicyArgs;
use super::output::{self, Printer};
use crate::commands::status::{hold, parse_duration, status, StatusOptions};
use crate::error::Error;
use crate::spool::Owner;

#[derive(Args, Debug)]
pub(super) struct StatusArgs {
    /// Directory holding the archives, or an off-site copy (s3://BUCKET/PREFIX).
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: PathBuf,
    /// An owner whose last committed run is older than this is stale (exit 1): 26h, 90m, 2d.
    #[arg(long, value_name = "DURATION", default_value = "26h")]
    stale_after: String,
    /// Judge as of this time instead of now (Unix seconds or YYYY-MM-DD[THH:MM[:SS]] UTC).
    #[arg(long, value_name = "TIME")]
    now: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    read: super::offsite::ReadFlags,
    #[arg(long)]
    json: bool,
}

pub(super) fn run_status(args: StatusArgs, p: &mut Printer) -> Result<u8, Error> {
    let now = match &args.now {
        Some(t) => crate::restore::parse_time(t)?,
        None => crate::time::now(),
    };
    let stale_after = parse_duration(&args.stale_after)?;
    if crate::offsite::BucketUrl::is_bucket(&args.archive_dir) {
        let url = args.archive_dir.to_string_lossy().into_owned();
        return super::offsite::status_offsite(&args.read, &url, now, stale_after, args.json, p);
    }
    let options = StatusOptions {
        archive_dir: args.archive_dir.clone(),
        stale_after,
        now,
        policy: args.policy.options(false),
    };
    let report = status(&options)?;
    p.notices(&report.notices);
    for o in &report.owners {
        if args.json {
            p.json("owner-status", o)?;
            continue;
        }
        let who = match o.kind {
            "user" => o.owner.clone(),
            "shared" => format!("shared {}", o.owner),
            _ => "server".to_string(),
        };
        let last = match (o.last_run, o.last_run_time, o.age_seconds) {
            (Some(run), Some(t), Some(age)) => {
                format!("run {run} at {} ({} ago)", output::utc(t), age_text(age))
            }
            _ => "no committed run".into(),
        };
        let mut line = format!(
            "{who}: {last}, {} runs, {}",
            o.runs,
            output::bytes(o.archive_bytes)
        );
        if let Some(live) = o.live_percent {
            line.push_str(&format!(", live {live:.0}%"));
        }
        match o.weeks_to_forced_compaction {
            Some(0) => line.push_str(", compaction due"),
            Some(w) => line.push_str(&format!(", forced compaction in {w} weeks")),
            None => {}
        }
        match &o.last_drill {
            Some(d) if d.ok => line.push_str(&format!(", drill ok {}", output::utc(d.time))),
            Some(d) => line.push_str(&format!(
                ", DRILL FAILED {} ({} differences)",
                output::utc(d.time),
                d.differences
            )),
            None => line.push_str(", never drilled"),
        }
        if let Some(h) = &o.held {
            line.push_str(&format!(", on legal hold ({h})"));
        }
        if o.stale {
            line.push_str(", STALE");
        }
        if let (true, Some(f)) = (o.failed, &o.last_failure) {
            line.push_str(&format!(", FAILED {}: {}", output::utc(f.time), f.reason));
        }
        p.line(&line)?;
        for n in &o.notes {
            p.note(&format!("{who}: {n}"));
        }
    }
    let s = &report.summary;
    if args.json {
        p.json("status-summary", s)?;
    } else {
        p.line(&format!(
            "{} owners, {}: {} stale, {} failed, {} failed their drill, {} on hold",
            s.owners,
            output::bytes(s.archive_bytes),
            s.stale,
            s.failed,
            s.drill_failed,
            s.held
        ))?;
    }
    Ok(u8::from(s.stale + s.failed + s.drill_failed > 0))
}

pub(super) fn age_text(secs: i64) -> String {
    match secs {
        s if s < 0 => "in the future".into(),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[derive(Args, Debug)]
pub(super) struct HoldArgs {
    /// Directory holding the archives.
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: PathBuf,
    /// The user to hold.
    #[arg(
        long,
        value_name = "U",
        conflicts_with = "shared",
        required_unless_present = "shared"
    )]
    user: Option<String>,
    /// The shared mailbox tree to hold.
    #[arg(long, value_name = "NAME")]
    shared: Option<String>,
    /// Release the hold instead of placing it.
    #[arg(long)]
    release: bool,
    /// Why (kept in the hold file, shown by status).
    #[arg(long, value_name = "TEXT", default_value = "")]
    reason: String,
}

pub(super) fn run_hold(args: HoldArgs, p: &mut Printer) -> Result<u8, Error> {
    let owner = match (&args.user, &args.shared) {
        (Some(u), _) => Owner::User(u.clone()),
        (None, Some(t)) => Owner::Shared(t.clone()),
        (None, None) => unreachable!("clap requires one"),
    };
    let was = hold(&args.archive_dir, &owner, args.release, &args.reason)?;
    p.line(&match (args.release, was) {
        (false, false) => format!("{owner}: on legal hold; compaction drops nothing of it"),
        (false, true) => format!("{owner}: already on legal hold"),
        (true, true) => format!("{owner}: hold released"),
        (true, false) => format!("{owner}: was not on hold"),
    })?;
    Ok(0)
}
