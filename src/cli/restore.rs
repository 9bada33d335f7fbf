//! `mailpack restore`: arguments, and the report printed afterwards.

use std::path::PathBuf;

use clap::{ArgGroup, Args};

use super::output::{self, Printer};
use crate::commands::restore::{restore, RestoreOptions, RestoreTarget};
use crate::error::Error;
use crate::restore::cyrus::{CyrusTarget, DEFAULT_CYRUS_BIN};
use crate::restore::imap::{ImapAddr, ImapTarget, Trust};
use crate::restore::parse_time;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").required(true)
    .args(["to_cyrus", "imap", "maildir", "mbox", "eml"])))]
pub struct RestoreArgs {
    /// Directory holding the per-user archives.
    #[arg(long, env = "MAILPACK_ARCHIVE_DIR", value_name = "DIR")]
    archive_dir: PathBuf,
    /// The Cyrus userid whose archive is read.
    #[arg(
        long,
        value_name = "U",
        required_unless_present_any = ["shared", "all"],
        conflicts_with_all = ["shared", "all"]
    )]
    user: Option<String>,
    /// The shared mailbox tree whose archive is read (`support`; `support@example.com` in a
    /// domain): `<archive-dir>/shared/<name>.tar.gz`. Its mailboxes are named in full
    /// (`support/tickets`).
    #[arg(long, value_name = "NAME", conflicts_with = "all")]
    shared: Option<String>,
    /// Every user and every shared tree with an archive in the directory: a whole server back
    /// after a disaster (into Cyrus: rerun after an interruption, it leaves what is already
    /// there and identical, and reports what differs; into files: one tree per owner).
    #[arg(long, conflicts_with_all = ["mailbox", "sha1", "uid", "expunged_between", "as_name", "imap", "run"])]
    all: bool,
    /// With --all: owners restored at once (default: the number of cores).
    #[arg(long, value_name = "N", requires = "all")]
    jobs: Option<usize>,
    /// Only this mailbox (repeatable): INBOX, a name under the INBOX with '/' between levels
    /// (Archive/2023), or a full name (user/alice/Archive). Default: every mailbox of the user.
    #[arg(long, value_name = "NAME")]
    mailbox: Vec<String>,
    /// Restore the state of the newest run at or before TIME: Unix seconds, or
    /// YYYY-MM-DD[THH:MM[:SS]] in UTC. Default: the newest run.
    #[arg(long, value_name = "TIME", conflicts_with = "run")]
    at: Option<String>,
    /// Restore the state of this run (as `mailpack ls --all` numbers them) instead of a time.
    #[arg(long, value_name = "N")]
    run: Option<u64>,
    /// Only the message with this SHA-1 (Cyrus GUID).
    #[arg(long, value_name = "SHA1")]
    sha1: Option<String>,
    /// Only the message with this UID (with one --mailbox).
    #[arg(long, value_name = "N", requires = "mailbox")]
    uid: Option<u32>,
    /// Only messages present at T1 and expunged (or gone) by T2.
    #[arg(long, num_args = 2, value_names = ["T1", "T2"])]
    expunged_between: Option<Vec<String>>,
    /// Print what would be written and where, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Exact restore into a Cyrus 3.6 server (running or not) through its files and databases.
    #[arg(long)]
    to_cyrus: bool,
    /// The target server's imapd.conf (with --to-cyrus).
    #[arg(long, default_value = crate::spool::config::DEFAULT_CONFIG, value_name = "FILE")]
    config: PathBuf,
    /// With --to-cyrus: overwrite a mailbox that exists on the target as the same mailbox (same
    /// name and uniqueid), under Cyrus's exclusive locks. Sessions that have it selected should
    /// select it again afterwards.
    #[arg(long, requires = "to_cyrus")]
    replace: bool,
    /// With --to-cyrus and one --mailbox: restore it under this name (under the user's INBOX,
    /// '/' between levels) as a new mailbox with a new uniqueid, beside whatever is there.
    #[arg(
        long = "as",
        value_name = "NAME",
        requires = "to_cyrus",
        requires = "mailbox"
    )]
    as_name: Option<String>,
    /// Where Cyrus's tools (cyr_dbtool, quota) are installed (with --to-cyrus).
    #[arg(long, default_value = DEFAULT_CYRUS_BIN, value_name = "DIR")]
    cyrus_bin: PathBuf,
    /// Additive restore into an IMAP server: APPEND with flags and internal dates, over TLS.
    /// `imaps://HOST[:PORT]` is implicit TLS (default port 993), `imap://HOST[:PORT]` STARTTLS
    /// (default 143); `HOST:PORT` is implicit TLS on port 993 and STARTTLS on any other.
    #[arg(long, value_name = "URL|HOST:PORT")]
    imap: Option<String>,
    /// IMAP login (with --imap).
    #[arg(long, value_name = "USER", requires = "imap")]
    imap_user: Option<String>,
    /// File holding the IMAP password (else the MAILPACK_IMAP_PASSWORD environment variable).
    #[arg(long, value_name = "FILE", requires = "imap")]
    imap_password_file: Option<PathBuf>,
    /// Trust only the CA certificate(s) in this PEM file for the IMAP server's certificate
    /// (a private CA), instead of the system's trust store.
    #[arg(
        long,
        value_name = "FILE",
        requires = "imap",
        conflicts_with = "imap_insecure"
    )]
    imap_ca: Option<PathBuf>,
    /// Do not check the IMAP server's certificate at all. Anyone on the path can then read
    /// the password and the mail; said again after the run.
    #[arg(long, requires = "imap")]
    imap_insecure: bool,
    /// Go on without TLS when the server offers no STARTTLS, sending the password and the
    /// mail in clear text. Without it such a server is refused before any credential is sent.
    #[arg(long, requires = "imap")]
    imap_allow_plaintext: bool,
    /// IMAP folder to restore into, levels separated by '/' (default Restored/<date>).
    #[arg(long, alias = "imap-folder", value_name = "FOLDER", requires = "imap")]
    folder: Option<String>,
    /// Export to a Maildir++ tree (flags in file names, keywords in dovecot-keywords).
    #[arg(long, value_name = "DIR")]
    maildir: Option<PathBuf>,
    /// Export to an mboxrd file (a directory of them when several mailboxes are restored).
    #[arg(long, value_name = "FILE")]
    mbox: Option<PathBuf>,
    /// Export one .eml file per message, a directory per mailbox.
    #[arg(long, value_name = "DIR")]
    eml: Option<PathBuf>,
    /// A JSON line on stdout (formats/json-output.md).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    progress: super::progress::ProgressArgs,
    #[command(flatten)]
    read: super::offsite::ReadFlags,
}

pub fn run(args: RestoreArgs, p: &mut Printer) -> Result<u8, Error> {
    let at = args.at.as_deref().map(parse_time).transpose()?;
    let target = if args.to_cyrus {
        RestoreTarget::Cyrus(CyrusTarget {
            config: args.config.clone(),
            cyrus_bin: args.cyrus_bin.clone(),
            replace: args.replace,
            rename_to: args.as_name.clone(),
            resume: false,
        })
    } else if let Some(addr) = &args.imap {
        let addr = ImapAddr::parse(addr)?;
        let user = args
            .imap_user
            .clone()
            .ok_or_else(|| Error::usage("--imap needs --imap-user"))?;
        let password = match &args.imap_password_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| Error::io("read", f, e))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            None => std::env::var("MAILPACK_IMAP_PASSWORD").map_err(|_| {
                Error::usage("--imap needs --imap-password-file or MAILPACK_IMAP_PASSWORD")
            })?,
        };
        let folder = args.folder.clone().unwrap_or_else(|| {
            let when = at.unwrap_or_else(crate::commands::now);
            format!("Restored/{}", &crate::restore::format_utc(when)[..10])
        });
        let trust = match (&args.imap_ca, args.imap_insecure) {
            (Some(ca), _) => Trust::Ca(ca.clone()),
            (None, true) => Trust::Insecure,
            (None, false) => Trust::System,
        };
        RestoreTarget::Imap(ImapTarget {
            addr,
            user,
            password,
            folder,
            trust,
            allow_plaintext: args.imap_allow_plaintext,
        })
    } else if let Some(d) = &args.maildir {
        RestoreTarget::Maildir(d.clone())
    } else if let Some(f) = &args.mbox {
        RestoreTarget::Mbox(f.clone())
    } else if let Some(d) = &args.eml {
        RestoreTarget::Eml(d.clone())
    } else {
        unreachable!("clap requires one target")
    };
    let expunged_between = match &args.expunged_between {
        Some(v) => Some((parse_time(&v[0])?, parse_time(&v[1])?)),
        None => None,
    };
    let sha1 = args
        .sha1
        .as_deref()
        .map(|s| {
            s.parse()
                .map_err(|_| Error::usage(format!("--sha1 {s:?} is not 40 hex digits")))
        })
        .transpose()?;
    let display = super::progress::Display::start("restore", args.progress, args.json, p);
    let options = RestoreOptions {
        progress: display.progress(),
        archive_dir: args.archive_dir,
        shared: args.shared.is_some(),
        user: args.user.or(args.shared).unwrap_or_default(),
        mailboxes: args.mailbox,
        at,
        at_run: args.run,
        sha1,
        uid: args.uid,
        expunged_between,
        target,
        dry_run: args.dry_run,
    };
    if args.all {
        if crate::offsite::BucketUrl::is_bucket(&options.archive_dir) {
            return Err(Error::usage(
                "restore --all reads a directory: `mailpack pull` the bucket into one first \
                 (every owner, byte for byte), then restore --all from it",
            ));
        }
        let jobs = args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let code = run_all(&options, jobs, args.json, p)?;
        display.finish(p);
        return Ok(code);
    }
    if let Some(progress) = &options.progress {
        progress.set_owners_total(1);
    }
    let report = if crate::offsite::BucketUrl::is_bucket(&options.archive_dir) {
        // From an off-site copy: the archive is opened from the bucket and read by range.
        let url = options.archive_dir.to_string_lossy().into_owned();
        let owner = if options.shared {
            crate::spool::Owner::Shared(options.user.clone())
        } else {
            crate::spool::Owner::User(options.user.clone())
        };
        let source = args.read.connect(&url)?;
        let mut notices = Vec::new();
        let archive = source.open(&owner, &mut notices)?;
        p.notices(&notices);
        let report = crate::commands::restore::restore_from(&archive, &options)?;
        p.note(&format!(
            "fetched {} from {url}",
            output::bytes(source.bytes_fetched())
        ));
        report
    } else {
        restore(&options)?
    };
    if args.json {
        p.json("restore", &report)?;
    } else {
        if let (Some(run), Some(time)) = (report.run, report.run_time) {
            p.out_line(&format!(
                "{}: as of run {run} ({})",
                report.user,
                output::utc(time)
            ));
        }
        if report.dry_run {
            for w in &report.writes {
                p.out_line(&format!("  would write {w}"));
            }
        }
        p.out_line(&format!(
            "{} mailboxes, {} messages written, {} already there{}",
            report.mailboxes.len(),
            report.messages_written,
            report.messages_already_there,
            if report.dry_run { " (dry run)" } else { "" }
        ));
    }
    display.finish(p);
    for w in &report.warnings {
        p.note(&format!("warning: {w}"));
    }
    for r in &report.refused {
        p.note(&format!("refused: {r}"));
    }
    for b in &report.bad {
        p.note(&format!("not restored: {b}"));
    }
    for l in &report.lost {
        p.note(&format!("lost: {l}"));
    }
    for d in &report.damage {
        p.note(&format!("damaged: {d}"));
    }
    for n in &report.not_carried {
        p.note(&format!("not carried: {n}"));
    }
    Ok(
        if report.bad.is_empty()
            && report.refused.is_empty()
            && report.lost.is_empty()
            && report.damage.is_empty()
            && report.not_carried.is_empty()
        {
            0
        } else {
            1
        },
    )
}

/// `--all`: a line per owner as each finishes (JSON with `--json`), and exit 1 when any owner had problems or failed.
fn run_all(
    options: &RestoreOptions,
    jobs: usize,
    json: bool,
    p: &mut Printer,
) -> Result<u8, Error> {
    let mut problems = false;
    crate::commands::restore::restore_all(options, jobs, &mut |restored| {
        let crate::commands::restore::OwnerRestored { owner, result, .. } = restored;
        match result {
            Ok(report) => {
                let clean = report.bad.is_empty()
                    && report.refused.is_empty()
                    && report.lost.is_empty()
                    && report.damage.is_empty()
                    && report.not_carried.is_empty();
                problems |= !clean;
                if json {
                    let _ = p.json("restore", &report);
                } else {
                    p.out_line(&format!(
                        "{owner}: {} mailboxes, {} messages written, {} already there, {} \
                         mailboxes left as they were{}",
                        report.mailboxes.len(),
                        report.messages_written,
                        report.messages_already_there,
                        report.present.len(),
                        if report.dry_run { " (dry run)" } else { "" }
                    ));
                }
                for b in report.bad.iter().chain(&report.refused) {
                    p.note(&format!("{owner}: not restored: {b}"));
                }
                for l in &report.lost {
                    p.note(&format!("{owner}: lost: {l}"));
                }
                for d in &report.damage {
                    p.note(&format!("{owner}: damaged: {d}"));
                }
                for n in &report.not_carried {
                    p.note(&format!("{owner}: not carried: {n}"));
                }
            }
            Err(e) => {
                problems = true;
                if json {
                    let _ = p.json(
                        "restore-failed",
                        &serde_json::json!({ "owner": owner.to_string(), "error": e.to_string() }),
                    );
                }
                p.note(&format!("{owner}: restore failed: {e}"));
            }
        }
    })?;
    Ok(u8::from(problems))
}
