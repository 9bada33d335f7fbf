//! `mailpack backup`: every user of a server (local or through an agent), a run each.

use std::path::PathBuf;

use clap::Args;

use super::compact::PolicyArgs;
use super::output::{self, Printer};
use super::{writer_options, LockMethodArg};
use crate::error::Error;

#[derive(Args, Debug)]
pub(super) struct BackupArgs {
    /// The server's imapd.conf.
    #[arg(long, default_value = crate::spool::config::DEFAULT_CONFIG, value_name = "FILE",
          conflicts_with = "remote")]
    config: PathBuf,
    /// Read the spool through an agent on the mail host: a command run with `sh -c` that starts
    /// one, e.g. 'ssh cyrus@imap1 mailpack agent' (one session per job).
    #[arg(long, value_name = "COMMAND")]
    remote: Option<String>,
    /// Compress the agent sessions' traffic (deflate), for slow links.
    #[arg(long, requires = "remote")]
    remote_compress: bool,
    /// Directory holding the per-user archives (created if missing, mode 0700).
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: PathBuf,
    /// Only these users (repeatable); default: every user and every shared mailbox tree on the
    /// server, and archives of those who are gone are marked so.
    #[arg(long, value_name = "U")]
    user: Vec<String>,
    /// Only this shared mailbox tree (repeatable): a top-level mailbox that belongs to no user,
    /// with the mailboxes below it (`support`, `support@example.com` in a domain). Its archive
    /// is `<archive-dir>/shared/<name>.tar.gz`.
    #[arg(long, value_name = "NAME")]
    shared: Vec<String>,
    /// Users backed up at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Wait for another writer of an archive instead of skipping that user as busy.
    #[arg(long)]
    wait: bool,
    /// How the server was built to lock: fcntl (Cyrus's default) or flock.
    #[arg(long, value_enum, default_value_t = LockMethodArg::Fcntl)]
    lock_method: LockMethodArg,
    /// Seconds to wait for a lock Cyrus holds before skipping the mailbox for this run.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    lock_timeout: u64,
    /// gzip compression level, 1 (fast) to 9 (small).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9))]
    level: u32,
    /// After each user's run commits, compact that archive if the policy says so.
    #[arg(long)]
    compact: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Write the tombstones even when more than half of an archive's mailboxes (at least 2), or
    /// of the users with archives here, vanish from the server in one run; without it such a
    /// run tombstones nothing and exits 1 (an emptied mailboxes.db, an unmounted partition).
    #[arg(long)]
    allow_mass_delete: bool,
    /// Push each archive to this bucket right after its run commits (as `mailpack push`).
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    push: Option<String>,
    #[command(flatten)]
    push_flags: super::offsite::PushFlags,
    /// JSON lines on stdout, one per user (formats/json-output.md).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    progress: super::progress::ProgressArgs,
    /// Write this run's figures to PATH (Prometheus text format, atomically), for
    /// node_exporter's textfile collector.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

pub(super) fn run(args: BackupArgs, p: &mut Printer) -> Result<u8, Error> {
    raise_open_files_limit();
    use crate::commands::backup::{backup, BackupOptions, UserOutcome};
    let push = match &args.push {
        Some(url) => Some(crate::commands::offsite::PushTarget::connect(
            &args
                .push_flags
                .target(args.archive_dir.clone(), url.clone(), false),
        )?),
        None => None,
    };
    if let Some(key) = push.as_ref().and_then(|t| t.key_created.as_ref()) {
        p.note(&format!(
            "created the off-site key {}: keep a copy off-site next to the age identity; \
             reading the bucket needs it",
            key.display()
        ));
    }
    let display = super::progress::Display::start("backup", args.progress, args.json, p);
    let options = BackupOptions {
        progress: display.progress(),
        push,
        spool: match args.remote {
            Some(command) => crate::commands::backup::SpoolAccess::Remote {
                command,
                compress: args.remote_compress,
            },
            None => crate::commands::backup::SpoolAccess::Local {
                config: args.config,
            },
        },
        archive_dir: args.archive_dir,
        users: args.user,
        shared: args.shared,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        locks: args.lock_method.options(args.lock_timeout),
        writer: writer_options(args.wait, None, args.level),
        compact: args.compact.then(|| args.policy.options(false)),
        allow_mass_delete: args.allow_mass_delete,
    };
    let started = std::time::Instant::now();
    let mut metrics = crate::metrics::RunMetrics {
        command: "backup".into(),
        started: crate::time::now(),
        bytes_read: Some(0),
        bytes_written: Some(0),
        messages_added: Some(0),
        ..Default::default()
    };
    let archive_dir = options.archive_dir.clone();
    let summary = backup(&options, &mut |outcome, _, _| match outcome {
        UserOutcome::Done(r, compaction, pushed) => {
            metrics.owners_ok += 1;
            *metrics.bytes_read.get_or_insert(0) += r.bytes_read;
            *metrics.bytes_written.get_or_insert(0) += r.bytes_written;
            *metrics.messages_added.get_or_insert(0) += r.messages_added;
            if args.json {
                let _ = p.json("user", r);
            } else {
                let _ = p.line(&output::user_summary(r));
                if r.healed > 0 {
                    let _ = p.line(&format!(
                        "  healed {} entries the last repair had lost",
                        r.healed
                    ));
                }
                for problem in &r.problems {
                    p.note(&format!("{}: {problem}", r.user));
                }
            }
            match compaction {
                Some(Ok(outcome)) if args.json => {
                    let _ = p.json(
                        "compaction",
                        &serde_json::json!({ "user": r.user, "compaction": outcome }),
                    );
                }
                Some(Ok(outcome)) => {
                    let _ = p.line(&format!("  {}", output::compaction_summary(outcome)));
                }
                Some(Err(error)) => p.note(&format!("{}: compaction failed: {error}", r.user)),
                None => {}
            }
            match pushed {
                Some(Ok(pushed)) if args.json => {
                    let _ = p.json(
                        "pushed",
                        &serde_json::json!({ "owner": r.user, "report": pushed }),
                    );
                }
                Some(Ok(pushed)) => {
                    let _ = p.line(&format!(
                        "  pushed: {} (push {}, {} archive bytes, {} objects)",
                        pushed.outcome, pushed.seq, pushed.archive_bytes, pushed.objects
                    ));
                }
                Some(Err(error)) => p.note(&format!("{}: push failed: {error}", r.user)),
                None => {}
            }
        }
        UserOutcome::Failed { user, error } => {
            metrics.owners_failed += 1;
            if args.json {
                let _ = p.json(
                    "user-failed",
                    &serde_json::json!({ "user": user, "error": error }),
                );
            }
            p.note(&format!("{user}: not backed up: {error}"));
        }
    })?;
    display.finish(p);
    if let Some(path) = &args.metrics_file {
        metrics.seconds = started.elapsed().as_secs_f64();
        metrics.archive_bytes = Some(crate::commands::archive_bytes(&archive_dir));
        crate::metrics::write_file(path, &metrics)?;
    }
    p.notices(&summary.foreign);
    if let Some(refused) = &summary.refused {
        if args.json {
            p.json("mass-delete-refused", refused)?;
        }
        p.note(&refused.message);
    }
    Ok(
        if summary.failed > 0 || summary.with_problems > 0 || summary.refused.is_some() {
            1
        } else {
            0
        },
    )
}

/// Raises the soft limit on open files to the hard one (as far as 65,536): a backup of many
/// owners holds a group of archives open until their commits are synced together
/// (formats/archive.md 7.1), and the default soft limit of 1,024 is there for programs that use
/// `select`, which mailpack does not. Left as it is when it cannot be raised.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let wanted = limit.rlim_max.min(1 << 16);
            if wanted > limit.rlim_cur {
                limit.rlim_cur = wanted;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}
