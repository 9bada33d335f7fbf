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
    /// Check the archives against the live server instead of reading every byte: every message
    /// the server's indexes list (and every one the archives' latest indexes list) is stored,
    /// every mailbox has its folder; owners missing something are marked for their next backup
    /// to read everything again.
    #[arg(long, requires = "config")]
    against_spool: bool,
    /// The server's imapd.conf (with --against-spool).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write this run's figures to PATH (Prometheus text format, atomically), for
    /// node_exporter's textfile collector.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

pub(super) fn run(args: VerifyArgs, p: &mut Printer) -> Result<u8, Error> {
    let mut metrics = crate::metrics::RunMetrics {
        command: "verify".into(),
        started: crate::time::now(),
        bytes_read: Some(0),
        archive_bytes: Some(0),
        ..Default::default()
    };
    let clock = std::time::Instant::now();
    let code = if args.against_spool {
        against_spool(&args, p, &mut metrics)?
    } else if let Some(url) = args.archive.bucket() {
        verify_offsite(&args, &url, p, &mut metrics)?
    } else {
        verify_local(&args, p, &mut metrics)?
    };
    metrics.seconds = clock.elapsed().as_secs_f64();
    if let Some(path) = &args.metrics_file {
        crate::metrics::write_file(path, &metrics)?;
    }
    Ok(code)
}

fn verify_local(
    args: &VerifyArgs,
    p: &mut Printer,
    metrics: &mut crate::metrics::RunMetrics,
) -> Result<u8, Error> {
    let all = args.file.is_none() && args.archive.user.is_none();
    let selected = selection(&args.archive, args.file.clone())?;
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
                metrics.owners_failed += 1;
                p.error(&e);
                code = match e {
                    Error::Foreign { .. } | Error::Corrupt { .. } => code.max(1),
                    _ => 2,
                };
                continue;
            }
        };
        p.notices(&report.repaired);
        *metrics.bytes_read.get_or_insert(0) += report.bytes;
        *metrics.archive_bytes.get_or_insert(0) += report.bytes;
        if report.problems.is_empty() {
            metrics.owners_ok += 1;
        } else {
            metrics.owners_failed += 1;
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

/// `verify --archive-dir s3://…`: every object of every retained generation against the
/// manifest, then the current generation entry by entry.
fn verify_offsite(
    args: &VerifyArgs,
    url: &str,
    p: &mut Printer,
    metrics: &mut crate::metrics::RunMetrics,
) -> Result<u8, Error> {
    let source = args.archive.read.connect(url)?;
    let owners = match (&args.archive.user, &args.archive.shared) {
        (None, None) => source.owners()?,
        _ => vec![args.archive.one_owner()?],
    };
    if owners.is_empty() {
        p.note(&format!("no off-site copies in {url}"));
    }
    let mut code = 0;
    for owner in &owners {
        let who = owner.to_string();
        let report = match source.verify(owner) {
            Ok(r) => r,
            Err(e) => {
                metrics.owners_failed += 1;
                p.error(&e);
                code = match e {
                    Error::Corrupt { .. } | Error::NotFound(_) => code.max(1),
                    _ => 2,
                };
                continue;
            }
        };
        p.notices(&report.notices);
        let problems = report.archive.as_ref().map_or(0, |a| a.problems.len());
        *metrics.bytes_read.get_or_insert(0) += report.object_bytes;
        *metrics.archive_bytes.get_or_insert(0) += report.object_bytes;
        if !report.bad.is_empty() || problems > 0 {
            metrics.owners_failed += 1;
            code = code.max(1);
        } else {
            metrics.owners_ok += 1;
        }
        if args.json {
            p.json(
                "verify-offsite",
                &serde_json::json!({
                    "owner": owner.name(), "report": &report, "archive": &report.archive,
                }),
            )?;
            continue;
        }
        for bad in &report.bad {
            p.line(&format!(
                "{who}: bad object {}: {}",
                bad.object, bad.problem
            ))?;
        }
        for u in &report.unreferenced {
            p.line(&format!(
                "{who}: unreferenced object {u} (left by an interrupted push)"
            ))?;
        }
        if let Some(a) = &report.archive {
            for problem in &a.problems {
                p.line(&format!(
                    "{who}: {}: byte {}: {}",
                    a.archive.display(),
                    problem.offset,
                    problem.detail
                ))?;
            }
        }
        p.line(&format!(
            "{who}: push {} of {}, {} manifests, {} objects ({} bytes){}: {}",
            report.seq,
            super::output::utc(report.time),
            report.manifests,
            report.objects,
            report.object_bytes,
            report
                .archive
                .as_ref()
                .map(|a| format!(", {} runs, {} entries", a.runs, a.entries))
                .unwrap_or_default(),
            if report.bad.is_empty() && problems == 0 {
                "ok".to_string()
            } else {
                format!("{} problems", report.bad.len() + problems)
            }
        ))?;
    }
    Ok(code)
}

fn against_spool(
    args: &VerifyArgs,
    p: &mut Printer,
    metrics: &mut crate::metrics::RunMetrics,
) -> Result<u8, Error> {
    use crate::commands::check_spool::{check_spool, SpoolCheckOptions};
    let options = SpoolCheckOptions {
        config: args.config.clone().expect("clap requires --config"),
        archive_dir: args
            .archive
            .archive_dir
            .clone()
            .ok_or_else(|| Error::usage("pass --archive-dir DIR"))?,
        locks: crate::spool::LockOptions::default(),
        dry_run: false,
    };
    let checks = check_spool(&options)?;
    let mut code = 0;
    for c in &checks {
        if c.missing() {
            metrics.owners_failed += 1;
            code = 1;
        } else {
            metrics.owners_ok += 1;
        }
        if args.json {
            p.json("spool-check", c)?;
            continue;
        }
        let who = if c.kind == "shared" {
            format!("shared {}", c.owner)
        } else {
            c.owner.clone()
        };
        if let Some(e) = &c.error {
            p.line(&format!("{who}: not checked: {e}"))?;
        }
        for m in &c.mailboxes_missing {
            p.line(&format!("{who}: mailbox {m} is not in the archive"))?;
        }
        for (m, uid, sha1) in &c.messages_missing {
            p.line(&format!(
                "{who}: {m} uid {uid}: message {sha1} is not stored"
            ))?;
        }
        for (m, what) in &c.archived_missing {
            p.line(&format!(
                "{who}: {m}: the archive's own index lists {what}, which it lacks"
            ))?;
        }
        for u in &c.unchecked {
            p.note(&format!("{who}: not checked this time: {u}"));
        }
        p.line(&format!(
            "{who}: {} mailboxes, {} messages: {}",
            c.mailboxes,
            c.messages,
            if c.missing() {
                if c.marked_for_heal {
                    "missing data; the next backup reads everything again".to_string()
                } else {
                    "missing data".to_string()
                }
            } else {
                "ok".to_string()
            }
        ))?;
    }
    Ok(code)
}
