//! `mailpack push` and `mailpack pull`, the flags they share with `backup --push`, and the
//! reading of a bucket by `ls`, `cat`, `verify` and `restore` (`--archive-dir s3://…`).

use std::path::PathBuf;

use clap::Args;

use super::output::{self, Printer};
use crate::commands::offsite::{push, OffsiteSource, PushOptions, PushTargetOptions, Pushed};
use crate::error::Error;
use crate::spool::Owner;

/// Where pushes go, shared by `push` and `backup --push`.
#[derive(Args, Debug, Clone)]
pub(super) struct PushFlags {
    /// age X25519 recipient (age1…) to encrypt every uploaded object to (repeatable). The
    /// backup host needs only this public key; reading needs the identity.
    #[arg(long, value_name = "AGE_RECIPIENT", conflicts_with = "recipients_file")]
    recipient: Vec<String>,
    /// File of age recipients, one per line (# comments).
    #[arg(long, value_name = "F")]
    recipients_file: Option<PathBuf>,
    /// The off-site key that seals manifests (default: <archive-dir>/offsite.key, created on
    /// first use). Keep a copy off-site with the age identity: readers of the bucket need it.
    #[arg(long, value_name = "FILE")]
    offsite_key: Option<PathBuf>,
    /// Objects of a generation replaced by a compaction are deleted this many days later, so a
    /// point-in-time restore from the bucket keeps working meanwhile.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    keep_generation_days: u64,
    /// Lock every new object in compliance mode for N days, renewing live objects' locks;
    /// refused where the store does not keep locks.
    #[arg(long, value_name = "N")]
    lock_days: Option<u64>,
}

impl PushFlags {
    pub(super) fn target(
        &self,
        archive_dir: PathBuf,
        url: String,
        dry_run: bool,
    ) -> PushTargetOptions {
        PushTargetOptions {
            archive_dir,
            url,
            key_file: self.offsite_key.clone(),
            recipients: self.recipient.clone(),
            recipients_files: self.recipients_file.iter().cloned().collect(),
            keep_generation_days: self.keep_generation_days,
            lock_days: self.lock_days,
            dry_run,
        }
    }
}

#[derive(Args, Debug)]
pub(super) struct PushArgs {
    /// Directory holding the archives to push.
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: PathBuf,
    /// The bucket and prefix: s3://BUCKET/PREFIX. Endpoint and credentials come from
    /// AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    to: String,
    /// Only this user's archive (repeatable); every archive in the directory by default.
    #[arg(long, value_name = "U")]
    user: Vec<String>,
    /// Only this shared tree's archive (repeatable).
    #[arg(long, value_name = "NAME")]
    shared: Vec<String>,
    #[command(flatten)]
    flags: PushFlags,
    /// Owners pushed at once.
    #[arg(long, value_name = "N", default_value_t = 2)]
    jobs: usize,
    /// Say what would be uploaded, upload nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    progress: super::progress::ProgressArgs,
    /// Write this run's figures to PATH (Prometheus text format, atomically), for
    /// node_exporter's textfile collector.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

pub(super) fn print_pushed(p: &mut Printer, pushed: &Pushed, json: bool) -> Result<(), Error> {
    let who = pushed.owner.to_string();
    match &pushed.result {
        Ok(r) => {
            p.notices(&r.notices);
            if json {
                p.json(
                    "pushed",
                    &serde_json::json!({ "owner": pushed.owner.name(), "kind": pushed.owner.kind(), "report": r }),
                )
            } else {
                p.line(&format!(
                    "{who}: {} push {} generation {}: {} archive bytes, {} index bytes, {} objects ({}), {} deleted",
                    r.outcome,
                    r.seq,
                    &r.generation[..r.generation.len().min(8)],
                    r.archive_bytes,
                    r.index_bytes,
                    r.objects,
                    output::bytes(r.object_bytes),
                    r.deleted
                ))
            }
        }
        Err(e) => {
            p.note(&format!("{who}: push failed: {e}"));
            if json {
                p.json(
                    "push-failed",
                    &serde_json::json!({ "owner": pushed.owner.name(), "kind": pushed.owner.kind(), "error": e.to_string() }),
                )?;
            }
            Ok(())
        }
    }
}

pub(super) fn run_push(args: PushArgs, p: &mut Printer) -> Result<u8, Error> {
    let owners = args
        .user
        .iter()
        .map(|u| Owner::User(u.clone()))
        .chain(args.shared.iter().map(|t| Owner::Shared(t.clone())))
        .collect();
    let display = super::progress::Display::start("push", args.progress, args.json, p);
    let options = PushOptions {
        progress: display.progress(),
        target: args
            .flags
            .target(args.archive_dir.clone(), args.to.clone(), args.dry_run),
        owners,
        jobs: args.jobs.max(1),
    };
    let json = args.json;
    let mut lines = Vec::new();
    let started = crate::time::now();
    let clock = std::time::Instant::now();
    let summary = push(&options, &mut |pushed| lines.push(pushed))?;
    if let Some(path) = &args.metrics_file {
        let metrics = crate::metrics::RunMetrics {
            command: "push".into(),
            started,
            seconds: clock.elapsed().as_secs_f64(),
            owners_ok: summary.pushed as u64,
            owners_failed: summary.failed as u64,
            bytes_written: Some(summary.bytes_sent),
            ..Default::default()
        };
        crate::metrics::write_file(path, &metrics)?;
    }
    if let Some(key) = &summary.key_created {
        p.note(&format!(
            "created the off-site key {}: keep a copy off-site next to the age identity; \
             reading the bucket needs it",
            key.display()
        ));
    }
    p.notices(&summary.notices);
    for pushed in &lines {
        print_pushed(p, pushed, json)?;
    }
    display.finish(p);
    let line = format!(
        "pushed {} owners, {} failed: {} sent in {} requests",
        summary.pushed,
        summary.failed,
        output::bytes(summary.bytes_sent),
        summary.requests
    );
    if json {
        p.json(
            "push-summary",
            &serde_json::json!({
                "pushed": summary.pushed, "failed": summary.failed,
                "bytes_sent": summary.bytes_sent, "requests": summary.requests,
                "dry_run": args.dry_run,
            }),
        )?;
    } else {
        p.line(&line)?;
    }
    Ok(if summary.failed > 0 { 2 } else { 0 })
}

#[derive(Args, Debug)]
pub(super) struct PullArgs {
    /// The bucket and prefix pushed to: s3://BUCKET/PREFIX.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    from: String,
    /// Directory to rebuild the archives in (never overwrites an archive there).
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: PathBuf,
    /// Only this user (repeatable); every owner in the bucket by default.
    #[arg(long, value_name = "U")]
    user: Vec<String>,
    /// Only this shared tree (repeatable).
    #[arg(long, value_name = "NAME")]
    shared: Vec<String>,
    #[command(flatten)]
    read: ReadFlags,
    #[arg(long)]
    json: bool,
}

/// How to read a bucket: shared by every command that reads one.
#[derive(Args, Debug, Clone, Default)]
pub(super) struct ReadFlags {
    /// age identity file that decrypts an encrypted off-site copy.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// The off-site key the pushes used (or MAILPACK_OFFSITE_KEY=FILE).
    #[arg(long, value_name = "FILE")]
    offsite_key: Option<PathBuf>,
    /// Read this retained generation (an id from `verify`) instead of the newest.
    #[arg(long, value_name = "ID")]
    generation: Option<String>,
}

impl ReadFlags {
    pub(super) fn connect(&self, url: &str) -> Result<OffsiteSource, Error> {
        OffsiteSource::connect(
            url,
            self.offsite_key.as_deref(),
            self.identity.as_deref(),
            self.generation.clone(),
        )
    }
}

pub(super) fn run_pull(args: PullArgs, p: &mut Printer) -> Result<u8, Error> {
    let source = args.read.connect(&args.from)?;
    let mut owners: Vec<Owner> = args
        .user
        .iter()
        .map(|u| Owner::User(u.clone()))
        .chain(args.shared.iter().map(|t| Owner::Shared(t.clone())))
        .collect();
    if owners.is_empty() {
        owners = source.owners()?;
    }
    let mut code = 0;
    for owner in &owners {
        match source.pull(owner, &args.archive_dir) {
            Ok(r) => {
                if args.json {
                    p.json(
                        "pulled",
                        &serde_json::json!({ "owner": owner.name(), "kind": owner.kind(), "report": r }),
                    )?;
                } else {
                    p.line(&format!(
                        "{}: pulled push {}: {} runs, {} archive bytes, {} index bytes",
                        owner, r.seq, r.runs, r.archive_bytes, r.index_bytes
                    ))?;
                }
            }
            Err(e) => {
                p.note(&format!("{owner}: pull failed: {e}"));
                code = 2;
            }
        }
    }
    p.note(&format!(
        "fetched {}",
        output::bytes(source.bytes_fetched())
    ));
    Ok(code)
}

/// `status --archive-dir s3://…`: per owner, the newest push's time, age and what it holds.
pub(super) fn status_offsite(
    read: &ReadFlags,
    url: &str,
    now: i64,
    stale_after: i64,
    json: bool,
    p: &mut Printer,
) -> Result<u8, Error> {
    let source = read.connect(url)?;
    let mut stale = 0;
    let mut failed = 0;
    let owners = source.owners()?;
    for owner in &owners {
        let who = owner.to_string();
        match source.latest(owner) {
            Ok(Some(m)) => {
                let age = now - m.time;
                let is_stale = age > stale_after;
                stale += usize::from(is_stale);
                if json {
                    p.json(
                        "owner-status",
                        &serde_json::json!({
                            "owner": owner.name(), "kind": owner.kind(), "seq": m.seq,
                            "push_time": m.time, "age_seconds": age, "stale": is_stale,
                            "runs": m.current.runs, "archive_bytes": m.current.archive_len,
                            "generations": 1 + m.retired.len(), "encrypted": m.current.encrypted,
                        }),
                    )?;
                } else {
                    p.line(&format!(
                        "{who}: push {} at {} ({} ago), {} runs, {}, {} generations{}{}",
                        m.seq,
                        output::utc(m.time),
                        super::status::age_text(age),
                        m.current.runs,
                        output::bytes(m.current.archive_len),
                        1 + m.retired.len(),
                        if m.current.encrypted {
                            ", encrypted"
                        } else {
                            ""
                        },
                        if is_stale { ", STALE" } else { "" }
                    ))?;
                }
            }
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                p.note(&format!("{who}: {e}"));
            }
        }
    }
    p.line(&format!(
        "{} owners in {url}: {stale} stale, {failed} unreadable",
        owners.len()
    ))?;
    Ok(u8::from(stale + failed > 0))
}
