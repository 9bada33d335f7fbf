//! The command line: parses arguments into library options, calls `commands`, prints results
//! (stdout) and diagnostics (stderr), and picks the exit code: 0 ok, 1 finished with problems or
//! skipped items, 2 fatal or usage error. Nothing below this module prints.

mod output;
mod restore;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::commands::{self, PutOptions, Selection};
use crate::error::Error;
use crate::store::{LockWait, WriterOptions};
use output::{Out, Printer};

#[derive(Parser, Debug)]
#[command(
    name = "mailpack",
    version,
    about = "Back up Cyrus IMAP mail into per-user append-only tar.gz archives"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the committed entries of an archive (latest version of each name), or every run.
    Ls(LsArgs),
    /// Write one entry (a name, or a message SHA-1) to standard output, by seeking to it.
    Cat(CatArgs),
    /// Check every byte of one or more archives and report problems with entry and offset.
    Verify(VerifyArgs),
    /// Rebuild the sidecar index of an archive from the archive alone.
    Reindex(ReindexArgs),
    /// Store files in an archive as one committed run (files/<sha1>, or one file by name).
    Put(PutArgs),
    /// Back up every user (or those named) of a Cyrus server, one committed run per user.
    Backup(BackupArgs),
    /// Rewrites archives keeping only what restores within the retention window need, when
    /// their live share is below the policy's threshold (or with --force); --dry-run shows the
    /// plan: what would be kept and dropped, and why.
    Compact(CompactArgs),
    /// Restore a user, mailboxes or one message as of a time: exactly into Cyrus, additively
    /// over IMAP, or out to Maildir, mbox or .eml files.
    Restore(Box<restore::RestoreArgs>),
    /// Serve this host's spool, read-only, to `mailpack backup --remote` over stdin/stdout
    /// (normally started by ssh; formats/protocol.md).
    Agent(AgentArgs),
    /// Look at a Cyrus spool as mailpack reads it, directly from disk under Cyrus's locks.
    #[command(subcommand)]
    Spool(SpoolCommand),
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// The server's imapd.conf.
    #[arg(long, default_value = crate::spool::config::DEFAULT_CONFIG, value_name = "FILE")]
    config: PathBuf,
    /// How the server was built to lock: fcntl (Cyrus's default) or flock.
    #[arg(long, value_enum, default_value_t = LockMethodArg::Fcntl)]
    lock_method: LockMethodArg,
    /// Seconds to wait for a lock Cyrus holds before answering that the mailbox is busy.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    lock_timeout: u64,
}

#[derive(Args, Debug)]
struct BackupArgs {
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
    /// Only these users (repeatable); default: every user on the server, and archives of users
    /// who are gone are marked so.
    #[arg(long, value_name = "U")]
    user: Vec<String>,
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
    /// JSON lines on stdout, one per user (formats/json-output.md).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CompactArgs {
    /// Directory holding the per-user archives.
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: Option<PathBuf>,
    /// Only these users' archives (repeatable); default: every archive in the directory.
    #[arg(long, value_name = "U")]
    user: Vec<String>,
    /// Print what would be kept and dropped, per archive, without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Compact even when the live share is above the threshold.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Wait for a backup writing an archive instead of skipping that archive as busy.
    #[arg(long)]
    wait: bool,
    /// gzip level for the members that are rebuilt, 1 (fast) to 9 (small).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9))]
    level: u32,
    #[arg(long)]
    json: bool,
}

/// The compaction policy, shared by `compact` and `backup --compact`.
#[derive(Args, Debug)]
struct PolicyArgs {
    /// Every metadata version committed within this many days is kept, plus the newest before.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    keep_days: i64,
    /// A deleted mailbox's data is kept this many days after its deletion.
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    keep_deleted_days: i64,
    /// Live share (percent) under which an archive is compacted, right after a compaction.
    #[arg(long, default_value_t = 80, value_name = "PERCENT",
          value_parser = clap::value_parser!(u32).range(0..=100))]
    threshold_start: u32,
    /// Points the threshold rises per week since the last compaction.
    #[arg(long, default_value_t = 1, value_name = "POINTS")]
    threshold_step: u32,
}

impl PolicyArgs {
    fn options(&self, force: bool) -> crate::compact::PlanOptions {
        crate::compact::PlanOptions {
            now: commands::now(),
            keep_days: self.keep_days,
            keep_deleted_days: self.keep_deleted_days,
            threshold_start: self.threshold_start,
            threshold_step: self.threshold_step,
            force,
        }
    }
}

#[derive(Subcommand, Debug)]
enum SpoolCommand {
    /// Users and their mailboxes (name, uniqueid, path, index version, message and expunged
    /// counts), subscriptions and seen state; with --messages, every index record.
    Ls(SpoolLsArgs),
}

#[derive(Args, Debug)]
struct SpoolLsArgs {
    /// The server's imapd.conf.
    #[arg(long, default_value = crate::spool::config::DEFAULT_CONFIG, value_name = "FILE")]
    config: PathBuf,
    /// Only these users (repeatable); default: every user, then shared mailboxes.
    #[arg(long, value_name = "U")]
    user: Vec<String>,
    /// Also list every index record (uid, guid, flags, internal date, size, modseq).
    #[arg(long)]
    messages: bool,
    /// How the server was built to lock: fcntl (Cyrus's default) or flock.
    #[arg(long, value_enum, default_value_t = LockMethodArg::Fcntl)]
    lock_method: LockMethodArg,
    /// Seconds to wait for a lock Cyrus holds before reporting the mailbox busy.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    lock_timeout: u64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LockMethodArg {
    Fcntl,
    Flock,
}

impl LockMethodArg {
    fn options(self, timeout: u64) -> crate::spool::LockOptions {
        crate::spool::LockOptions {
            method: match self {
                LockMethodArg::Fcntl => crate::spool::lock::LockMethod::Fcntl,
                LockMethodArg::Flock => crate::spool::lock::LockMethod::Flock,
            },
            wait: crate::spool::lock::LockWait::For(std::time::Duration::from_secs(timeout)),
        }
    }
}

#[derive(Args, Debug)]
struct ArchiveArgs {
    /// Directory holding the per-user archives.
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: Option<PathBuf>,
    /// The Cyrus userid whose archive is meant.
    #[arg(long, value_name = "U")]
    user: Option<String>,
}

#[derive(Args, Debug)]
struct LsArgs {
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

#[derive(Args, Debug)]
struct CatArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// [ARCHIVE] ENTRY: an archive file is optional; ENTRY is a name or a 40-digit SHA-1.
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    args: Vec<String>,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// Path of one archive file; without it and without --user, every archive in --archive-dir.
    #[arg(value_name = "ARCHIVE")]
    file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ReindexArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    #[arg(value_name = "ARCHIVE")]
    file: Option<PathBuf>,
    /// Wait for a running writer instead of failing with "busy".
    #[arg(long)]
    wait: bool,
}

#[derive(Args, Debug)]
struct PutArgs {
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

fn selection(args: &ArchiveArgs, file: Option<PathBuf>) -> Result<Selection, Error> {
    if let Some(file) = file {
        if args.user.is_some() {
            return Err(Error::usage(
                "give either an archive file or --user, not both",
            ));
        }
        return Ok(Selection::File(file));
    }
    let dir = args
        .archive_dir
        .clone()
        .ok_or_else(|| Error::usage("no archive named: pass --archive-dir DIR (or set MAILPACK_ARCHIVE_DIR) with --user U, or an archive file"))?;
    Ok(Selection::Dir {
        dir,
        users: args.user.iter().cloned().collect(),
    })
}

fn writer_options(wait: bool, jobs: Option<usize>, level: u32) -> WriterOptions {
    let mut options = WriterOptions {
        wait: if wait { LockWait::Yes } else { LockWait::No },
        level,
        ..WriterOptions::default()
    };
    if let Some(jobs) = jobs {
        options.threads = jobs.max(1);
    }
    options
}

/// Parses the command line, runs it, and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut printer = Printer::new();
    let code = match run(cli.command, &mut printer) {
        Ok(code) => code,
        Err(err) => {
            if !printer.stdout_closed() {
                printer.error(&err);
            }
            2
        }
    };
    if printer.stdout_closed() {
        // A closed pipe (`mailpack ls | head`) is not a failure of ours.
        return ExitCode::SUCCESS;
    }
    ExitCode::from(code)
}

fn run(command: Command, p: &mut Printer) -> Result<u8, Error> {
    match command {
        Command::Ls(args) if args.at.is_some() => {
            let paths = selection(&args.archive, args.file)?.one()?;
            let at = crate::restore::parse_time(args.at.as_deref().unwrap_or_default())?;
            let mut notices = Vec::new();
            let as_of = commands::restore::as_of(&paths, Some(at), &mut notices)?;
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
            Ok(if as_of.refused.is_empty() { 0 } else { 1 })
        }
        Command::Ls(args) => {
            let paths = selection(&args.archive, args.file)?.one()?;
            let listing = commands::ls(&paths, args.all)?;
            p.notices(&listing.notices);
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
            Ok(0)
        }
        Command::Cat(args) => {
            let (file, spec) = match args.args.as_slice() {
                [spec] => (None, spec.clone()),
                [file, spec] => (Some(PathBuf::from(file)), spec.clone()),
                _ => unreachable!("clap bounds the count"),
            };
            let paths = selection(&args.archive, file)?.one()?;
            let mut notices = Vec::new();
            let result = {
                let stdout = io::stdout();
                let mut out = Out::new(stdout.lock());
                let r = commands::cat(&paths, &spec, &mut out, &mut notices);
                if out.closed() {
                    p.mark_stdout_closed();
                }
                r.and_then(|n| {
                    out.flush()
                        .map(|_| n)
                        .map_err(|e| Error::io("write", "standard output", e))
                })
            };
            p.notices(&notices);
            match result {
                Err(_) if p.stdout_closed() => Ok(0),
                r => r.map(|_| 0),
            }
        }
        Command::Verify(args) => {
            let all = args.file.is_none() && args.archive.user.is_none();
            let selected = selection(&args.archive, args.file)?;
            let targets = selected.resolve()?;
            if targets.is_empty() && all {
                p.note("no archives found");
            }
            let mut code = 0;
            for paths in &targets {
                let report = match commands::verify(paths) {
                    Ok(r) => r,
                    Err(e) => {
                        p.error(&e);
                        code = 2;
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
        Command::Reindex(args) => {
            let selected = selection(&args.archive, args.file)?;
            let wait = if args.wait {
                LockWait::Yes
            } else {
                LockWait::No
            };
            let mut code = 0;
            for paths in selected.resolve()? {
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
        Command::Backup(args) => {
            use crate::commands::backup::{backup, BackupOptions, UserOutcome};
            use std::io::IsTerminal;
            let options = BackupOptions {
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
                jobs: args
                    .jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                locks: args.lock_method.options(args.lock_timeout),
                writer: writer_options(args.wait, None, args.level),
                compact: args.compact.then(|| args.policy.options(false)),
            };
            let tty = std::io::stderr().is_terminal() && !args.json;
            let started = std::time::Instant::now();
            let mut bytes = 0u64;
            let summary = backup(&options, &mut |outcome, done, total| {
                match outcome {
                    UserOutcome::Done(r, compaction) => {
                        bytes += r.bytes_read;
                        if tty {
                            eprint!("\r\x1b[K");
                        }
                        if args.json {
                            let _ = p.json("user", r);
                        } else {
                            let _ = p.line(&output::user_summary(r));
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
                                let _ =
                                    p.line(&format!("  {}", output::compaction_summary(outcome)));
                            }
                            Some(Err(error)) => {
                                p.note(&format!("{}: compaction failed: {error}", r.user))
                            }
                            None => {}
                        }
                    }
                    UserOutcome::Failed { user, error } => {
                        if tty {
                            eprint!("\r\x1b[K");
                        }
                        if args.json {
                            let _ = p.json(
                                "user-failed",
                                &serde_json::json!({ "user": user, "error": error }),
                            );
                        }
                        p.note(&format!("{user}: not backed up: {error}"));
                    }
                }
                if tty {
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    eprint!(
                        "users {done}/{total}, {} read, {}/s",
                        output::bytes(bytes),
                        output::bytes((bytes as f64 / secs) as u64)
                    );
                }
            })?;
            if tty {
                eprintln!();
            }
            Ok(if summary.failed > 0 || summary.with_problems > 0 {
                1
            } else {
                0
            })
        }
        Command::Compact(args) => {
            use crate::commands::compact::{compact_archives, ArchiveCompaction, CompactCommand};
            let command = CompactCommand {
                selection: Selection::Dir {
                    dir: args.archive_dir.clone().ok_or_else(|| {
                        Error::usage("pass --archive-dir DIR (or set MAILPACK_ARCHIVE_DIR)")
                    })?,
                    users: args.user.clone(),
                },
                plan: args.policy.options(args.force),
                writer: writer_options(args.wait, None, args.level),
                dry_run: args.dry_run,
            };
            let mut failed = false;
            compact_archives(&command, &mut |paths, result, notices| {
                p.notices(notices);
                let shown = match result {
                    Ok(result) if args.json => {
                        let (kind, value) = match &result {
                            ArchiveCompaction::Planned(plan) => ("plan", serde_json::json!(plan)),
                            ArchiveCompaction::Ran(outcome) => {
                                ("compaction", serde_json::json!(outcome))
                            }
                        };
                        p.json(
                            kind,
                            &serde_json::json!({ "archive": paths.archive, kind: value }),
                        )
                    }
                    Ok(ArchiveCompaction::Planned(plan)) => {
                        output::compaction_plan(p, &paths.archive, &plan)
                    }
                    Ok(ArchiveCompaction::Ran(outcome)) => {
                        p.line(&output::compaction_line(&paths.archive, &outcome))
                    }
                    Err(e) => {
                        p.error(&e);
                        failed = true;
                        Ok(())
                    }
                };
                if shown.is_err() {
                    failed = true;
                }
            })?;
            Ok(if failed { 1 } else { 0 })
        }
        Command::Restore(args) => restore::run(*args, p),
        Command::Agent(args) => {
            let spool = crate::spool::Spool::open(&args.config)?;
            let annotations = spool.annotations()?;
            let mut source = crate::agent::LocalSource::new(
                &spool,
                &annotations,
                args.lock_method.options(args.lock_timeout),
            );
            crate::agent::serve(&mut source, io::stdin().lock(), io::stdout().lock())?;
            Ok(0)
        }
        Command::Spool(SpoolCommand::Ls(args)) => {
            let listing = commands::spool::spool_ls(&commands::spool::SpoolLsOptions {
                config: args.config,
                users: args.user,
                messages: args.messages,
                locks: args.lock_method.options(args.lock_timeout),
            })?;
            let mut code = 0;
            for user in &listing.users {
                if !user.problems.is_empty() || user.mailboxes.iter().any(|m| m.problem.is_some()) {
                    code = 1;
                }
                if args.json {
                    p.json("user", user)?;
                    continue;
                }
                let layout = if user.legacy_layout {
                    "by name"
                } else {
                    "by uniqueid"
                };
                p.line(&format!("user {} ({layout})", user.user))?;
                for m in &user.mailboxes {
                    p.line(&format!("  {}", output::mailbox_line(m)))?;
                    for r in m.records.iter().flatten() {
                        p.line(&format!("    {}", output::record_line(r)))?;
                    }
                }
                if !user.subscriptions.is_empty() {
                    p.line(&format!(
                        "  subscriptions: {}",
                        user.subscriptions.join(", ")
                    ))?;
                }
                for s in &user.seen {
                    p.line(&format!("  seen in {}: {}", s.uniqueid, s.seen_uids))?;
                }
                for (resource, used, limit) in user.quota.iter().flat_map(|q| &q.resources) {
                    let limit = limit.map_or("unlimited".to_string(), |l| l.to_string());
                    p.line(&format!("  quota {resource}: used {used}, limit {limit}"))?;
                }
                for a in &user.annotations {
                    let scope = if a.userid.is_empty() {
                        "shared"
                    } else {
                        "private"
                    };
                    p.line(&format!(
                        "  metadata {} /{scope}{} = {:?}",
                        a.mailbox, a.entry, a.value
                    ))?;
                }
                if !user.sieve.scripts.is_empty() {
                    let active = user.sieve.active.as_deref().unwrap_or("none");
                    p.line(&format!(
                        "  sieve scripts: {} (active: {active})",
                        user.sieve.scripts.join(", ")
                    ))?;
                }
                for problem in &user.problems {
                    p.line(&format!("  problem: {problem}"))?;
                }
            }
            for m in &listing.shared {
                if m.problem.is_some() {
                    code = 1;
                }
                if args.json {
                    p.json("shared", m)?;
                } else {
                    p.line(&format!("shared {}", output::mailbox_line(m)))?;
                }
            }
            Ok(code)
        }
        Command::Put(args) => {
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
            Ok(0)
        }
    }
}

impl Printer {
    fn line(&mut self, s: &str) -> Result<(), Error> {
        self.out_line(s);
        Ok(())
    }
}
