//! The command line: parses arguments into library options, calls `commands`, prints results
//! (stdout) and diagnostics (stderr), and picks the exit code: 0 ok, 1 finished with problems or
//! skipped items, 2 fatal or usage error. Nothing below this module prints.

mod agent;
mod backup;
mod cat;
mod compact;
mod drill;
mod find;
mod ls;
mod offsite;
mod output;
mod progress;
mod put;
mod reindex;
mod repair;
mod restore;
mod spool;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::commands::Selection;
use crate::error::Error;
use crate::spool::Owner;
use crate::store::{WriterOptions, WriterWait};
use output::Printer;

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
    Ls(ls::LsArgs),
    /// Write one entry (a name, or a message SHA-1) to standard output, by seeking to it.
    Cat(cat::CatArgs),
    /// Find messages in every retained run (expunged ones and deleted folders included) by
    /// From, To, Subject, Message-ID and date; restore one with `restore --sha1`.
    Find(find::FindArgs),
    /// Check every byte of one or more archives and report problems with entry and offset.
    Verify(verify::VerifyArgs),
    /// Rebuild the sidecar index of an archive from the archive alone.
    Reindex(reindex::ReindexArgs),
    /// Salvage a damaged archive: keep the damaged file aside, write a new archive with every
    /// committed entry that still reads, and report exactly what was lost.
    Repair(repair::RepairArgs),
    /// Store files in an archive as one committed run (files/<sha1>, or one file by name).
    Put(put::PutArgs),
    /// Back up every user (or those named) of a Cyrus server, one committed run per user.
    Backup(Box<backup::BackupArgs>),
    /// Compact archives whose live share fell below the policy's threshold, keeping what
    /// restores within the retention window need; --dry-run shows what would go and why.
    Compact(compact::CompactArgs),
    /// Restore a user, mailboxes or one message as of a time: exactly into Cyrus, additively
    /// over IMAP, or out to Maildir, mbox or .eml files.
    Restore(Box<restore::RestoreArgs>),
    /// Upload the committed bytes of archives that a bucket lacks (S3-compatible object
    /// storage), as new objects and a sealed manifest; optionally age-encrypted.
    Push(offsite::PushArgs),
    /// Rebuild local archives and indexes from a bucket, byte for byte what was pushed.
    Pull(offsite::PullArgs),
    /// Per owner: the last committed run and its age, the last failure, runs, size, live share,
    /// weeks to the next forced compaction, the last drill, legal hold; exit 1 if any owner is
    /// stale, failed last time or failed its drill.
    Status(status::StatusArgs),
    /// Restore test: sampled mailboxes restored from their archives into a scratch directory and
    /// compared with the live server (unchanged mailboxes field by field); exit 1 on any
    /// difference. The seed is printed to replay a run.
    Drill(drill::DrillArgs),
    /// Place (or with --release remove) a legal hold: compaction drops nothing of that owner.
    Hold(status::HoldArgs),
    /// Serve this host's spool, read-only, to `mailpack backup --remote` over stdin/stdout
    /// (normally started by ssh; formats/protocol.md).
    Agent(agent::AgentArgs),
    /// Look at a Cyrus spool as mailpack reads it, directly from disk under Cyrus's locks.
    #[command(subcommand)]
    Spool(spool::SpoolCommand),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LockMethodArg {
    Fcntl,
    Flock,
}

impl LockMethodArg {
    pub(super) fn options(self, timeout: u64) -> crate::spool::LockOptions {
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
pub(super) struct ArchiveArgs {
    /// Directory holding the per-user archives.
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: Option<PathBuf>,
    /// The Cyrus userid whose archive is meant.
    #[arg(long, value_name = "U", conflicts_with = "shared")]
    user: Option<String>,
    /// The shared mailbox tree whose archive is meant (`support`; `support@example.com` in a
    /// domain): `<archive-dir>/shared/<name>.tar.gz`.
    #[arg(long, value_name = "NAME")]
    shared: Option<String>,
    #[command(flatten)]
    read: offsite::ReadFlags,
}

impl ArchiveArgs {
    /// The bucket, when --archive-dir names one (s3://BUCKET/PREFIX) rather than a directory.
    fn bucket(&self) -> Option<String> {
        self.archive_dir
            .as_deref()
            .filter(|d| crate::offsite::BucketUrl::is_bucket(d))
            .map(|d| d.to_string_lossy().into_owned())
    }

    /// The one owner named, for reading a bucket.
    fn one_owner(&self) -> Result<Owner, Error> {
        match (&self.user, &self.shared) {
            (Some(u), None) => Ok(Owner::User(u.clone())),
            (None, Some(t)) => Ok(Owner::Shared(t.clone())),
            _ => Err(Error::usage(
                "name one archive in the bucket: --user U or --shared NAME",
            )),
        }
    }

    /// Opens the named owner's archive from the bucket --archive-dir names.
    /// The bucket stays open beside the archive: its counters say what the reads fetched.
    fn open_offsite(
        &self,
        url: &str,
        notices: &mut Vec<String>,
    ) -> Result<
        (
            crate::commands::offsite::OffsiteSource,
            crate::store::Archive,
        ),
        Error,
    > {
        let owner = self.one_owner()?;
        let source = self.read.connect(url)?;
        let archive = source.open(&owner, notices)?;
        Ok((source, archive))
    }
}

pub(super) fn selection(args: &ArchiveArgs, file: Option<PathBuf>) -> Result<Selection, Error> {
    if let Some(file) = file {
        if args.user.is_some() || args.shared.is_some() {
            return Err(Error::usage(
                "give either an archive file or --user/--shared, not both",
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
        owners: args
            .user
            .iter()
            .map(|u| Owner::User(u.clone()))
            .chain(args.shared.iter().map(|t| Owner::Shared(t.clone())))
            .collect(),
    })
}

pub(super) fn writer_options(wait: bool, jobs: Option<usize>, level: u32) -> WriterOptions {
    let mut options = WriterOptions {
        wait: if wait {
            WriterWait::UntilFree
        } else {
            WriterWait::FailIfBusy
        },
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
    // Readers report damage (and foreign files) as a finding, exit 1; for a writer it means
    // nothing was committed, exit 2.
    let reader = matches!(
        cli.command,
        Command::Ls(_)
            | Command::Cat(_)
            | Command::Find(_)
            | Command::Verify(_)
            | Command::Restore(_)
    );
    let code = match run(cli.command, &mut printer) {
        Ok(code) => code,
        Err(err) => {
            if !printer.stdout_closed() {
                printer.error(&err);
            }
            match err {
                Error::Corrupt { .. } | Error::Foreign { .. } if reader => 1,
                _ => 2,
            }
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
        Command::Ls(args) => ls::run(args, p),
        Command::Cat(args) => cat::run(args, p),
        Command::Find(args) => find::run(args, p),
        Command::Verify(args) => verify::run(args, p),
        Command::Reindex(args) => reindex::run(args, p),
        Command::Repair(args) => repair::run(args, p),
        Command::Put(args) => put::run(args, p),
        Command::Backup(args) => backup::run(*args, p),
        Command::Compact(args) => compact::run(args, p),
        Command::Restore(args) => restore::run(*args, p),
        Command::Agent(args) => agent::run(args, p),
        Command::Push(args) => offsite::run_push(args, p),
        Command::Status(args) => status::run_status(args, p),
        Command::Hold(args) => status::run_hold(args, p),
        Command::Drill(args) => drill::run(args, p),
        Command::Pull(args) => offsite::run_pull(args, p),
        Command::Spool(command) => spool::run(command, p),
    }
}

impl Printer {
    fn line(&mut self, s: &str) -> Result<(), Error> {
        self.out_line(s);
        Ok(())
    }
}
