//! `mailpack restore`: a user, some mailboxes, one message, or what was expunged between two
//! times, as an archive held them at a chosen time, into Cyrus, an IMAP server or files. This
//! module chooses the run and the mailboxes (or the one message); the target plans the restore
//! and, unless it is a dry run, executes the plan (`restore::plan`). Also `ls --at`: what a
//! restore as of a time brings back.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::progress::{OwnerProgress, Phase, Progress};
use crate::restore::cyrus::CyrusTarget;
use crate::restore::export::{EmlExport, MaildirExport, MboxExport};
use crate::restore::imap::ImapTarget;
use crate::restore::plan::{MessageFilter, MessageTarget, Outcome, Request, Target};
use crate::restore::{
    find_mailbox, mailboxes_at, prealloc, read_all, read_mailbox, restorable, run_at, LostEntry,
    MailboxAt,
};
use crate::spool::Owner;
use crate::store::{find_latest, Archive, ArchivePaths, RunInfo};

pub enum RestoreTarget {
    Cyrus(CyrusTarget),
    Imap(ImapTarget),
    Maildir(PathBuf),
    Mbox(PathBuf),
    Eml(PathBuf),
}

pub struct RestoreOptions {
    pub archive_dir: PathBuf,
    /// The userid, or the shared tree's name when `shared`.
    pub user: String,
    /// Restore a shared mailbox tree's archive (`--shared NAME`), not a user's.
    pub shared: bool,
    /// Only these mailboxes (see `restore::find_mailbox` for the spelling); all when empty.
    pub mailboxes: Vec<String>,
    pub at: Option<i64>,
    /// A run by number (as `ls --all` lists them) instead of a time.
    pub at_run: Option<u64>,
    pub sha1: Option<Guid>,
    pub uid: Option<u32>,
    pub expunged_between: Option<(i64, i64)>,
    pub target: RestoreTarget,
    pub dry_run: bool,
    /// Counters for a progress display (issue 19): an owner's messages as they are written;
    /// `None`: nobody watches.
    pub progress: Option<std::sync::Arc<Progress>>,
}

/// What a restore did, or with `dry_run` would do.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    /// The userid, or the shared tree's name when `shared`.
    pub user: String,
    pub shared: bool,
    /// The run restored and its commit time.
    pub run: Option<u64>,
    pub run_time: Option<i64>,
    pub mailboxes: Vec<String>,
    pub messages_written: u64,
    /// Bytes of the messages written.
    pub bytes_written: u64,
    /// Messages a previous, interrupted run of the same restore already wrote.
    pub messages_already_there: u64,
    /// Messages whose bytes failed their SHA-1 (or are missing): skipped, the rest went on.
    pub bad: Vec<String>,
    /// Names in the archive that a restore refuses to turn into paths, and why.
    pub refused: Vec<String>,
    /// Archive entries that failed their checks (or that a mailbox needs and the archive lacks):
    /// each with the archive file and byte offset. The restore went on without them.
    pub lost: Vec<LostEntry>,
    /// On a damaged archive, read in its degraded view: what is damaged or lost there. The
    /// restore brought back what still reads.
    pub damage: Vec<String>,
    pub dry_run: bool,
    /// Where each file and record went (or would go).
    pub writes: Vec<String>,
    /// Mailboxes already on the target as the archive has them (`--all` resuming an
    /// interrupted restore): left as they are.
    pub present: Vec<String>,
    /// Safety the operator gave up for this restore (`--imap-insecure`,
    /// `--imap-allow-plaintext` used): printed after the run.
    pub warnings: Vec<String>,
    /// What the target's format could not hold of messages it restored (keywords beyond the 26
    /// a Maildir folder can name), per folder; makes the exit code 1.
    pub not_carried: Vec<String>,
}

impl RestoreReport {
    fn new(options: &RestoreOptions) -> RestoreReport {
        RestoreReport {
            user: options.user.clone(),
            shared: options.shared,
            dry_run: options.dry_run,
            ..Default::default()
        }
    }

    /// Adds what the target wrote (or for a dry run would write).
    fn add(&mut self, outcome: Outcome) {
        self.mailboxes.extend(outcome.mailboxes);
        self.messages_written += outcome.messages_written;
        self.bytes_written += outcome.bytes_written;
        self.messages_already_there += outcome.messages_already_there;
        self.refused.extend(outcome.refused);
        self.bad.extend(outcome.bad);
        self.lost.extend(outcome.lost);
        self.writes.extend(outcome.writes);
        self.present.extend(outcome.present);
        self.warnings.extend(outcome.warnings);
        self.not_carried.extend(outcome.not_carried);
    }
}

pub fn restore(options: &RestoreOptions) -> Result<RestoreReport> {
    let progress = owner_progress(options, &owner(options).to_string());
    let paths = ArchivePaths::for_owner(&options.archive_dir, &owner(options))?;
    if let (Some(sha1), None) = (options.sha1, options.uid) {
        if options.mailboxes.is_empty() {
            let mut report = RestoreReport::new(options);
            match read_one_by_sha1(&paths, sha1, &mut report) {
                Ok(bytes) => {
                    report.add(restore_message(options, sha1, bytes, &progress)?);
                    return Ok(report);
                }
                // The lookup could not open a damaged archive: its degraded view may still
                // hold the message (below).
                Err(Error::Corrupt { .. }) if report.run.is_none() => {}
                Err(e) => return Err(e),
            }
        }
    }
    // A damaged archive is read in its degraded view: what still reads is restored, and the
    // damage is reported (exit 1).
    let (archive, damage) = crate::commands::open_for_restore(&paths, &mut Vec::new())?;
    let mut report = restore_counted(&archive, options, &progress)?;
    report.damage = damage;
    Ok(report)
}

/// The owner's counters in `options.progress`, or counters nobody watches.
fn owner_progress(options: &RestoreOptions, name: &str) -> OwnerProgress {
    match &options.progress {
        Some(p) => p.start(name, Phase::Restore),
        None => OwnerProgress::unwatched(),
    }
}

/// As `restore`, from an archive already open: every byte comes from that one generation of it,
/// whatever happens to the file's name meanwhile (a compaction renaming a new copy over it).
/// `options.archive_dir` is not used.
pub fn restore_from(archive: &Archive, options: &RestoreOptions) -> Result<RestoreReport> {
    let progress = owner_progress(options, &owner(options).to_string());
    restore_counted(archive, options, &progress)
}

fn restore_counted(
    archive: &Archive,
    options: &RestoreOptions,
    progress: &OwnerProgress,
) -> Result<RestoreReport> {
    let paths = archive.paths();
    let mut report = RestoreReport::new(options);
    if let (Some(sha1), None) = (options.sha1, options.uid) {
        if options.mailboxes.is_empty() {
            let stored = archive.stored_message(&sha1).ok_or_else(|| {
                Error::NotFound(format!("message {sha1} in {}", paths.archive.display()))
            })?;
            report.run = Some(stored.run);
            let bytes = read_all(archive, &stored.entry())?;
            report.add(restore_message(options, sha1, bytes, progress)?);
            return Ok(report);
        }
    }
    let run = choose_run(archive, options)?;
    report.run = Some(run.run);
    report.run_time = Some(run.time);
    let (all, refused) = mailboxes_at(archive, run.run);
    report.refused.extend(refused);
    let (mailboxes, whole_user) = choose_mailboxes(options, &all, run)?;
    let messages = MessageFilter {
        uid: options.uid,
        sha1: options.sha1,
        expunged_between: options.expunged_between,
    };
    if matches!(options.target, RestoreTarget::Cyrus(_)) && !messages.is_all() {
        return Err(Error::usage(
            "--to-cyrus restores whole mailboxes; for single messages or expunged ones use \
             --imap, --maildir, --mbox or --eml",
        ));
    }
    let request = Request {
        user: &options.user,
        shared: options.shared,
        run: run.run,
        mailboxes,
        whole_user,
        messages,
    };
    let outcome = match &options.target {
        RestoreTarget::Cyrus(t) => restore_mailboxes(t, archive, &request, options, progress),
        RestoreTarget::Imap(t) => restore_mailboxes(t, archive, &request, options, progress),
        RestoreTarget::Maildir(root) => {
            let target = MaildirExport { root: root.clone() };
            restore_mailboxes(&target, archive, &request, options, progress)
        }
        RestoreTarget::Mbox(path) => {
            let target = MboxExport { path: path.clone() };
            restore_mailboxes(&target, archive, &request, options, progress)
        }
        RestoreTarget::Eml(root) => {
            let target = EmlExport { root: root.clone() };
            restore_mailboxes(&target, archive, &request, options, progress)
        }
    }?;
    report.add(outcome);
    Ok(report)
}

/// One owner of `restore --all` done: its report (or why it failed), and how far along the
/// whole restore is.
pub struct OwnerRestored {
    pub owner: Owner,
    pub result: Result<RestoreReport>,
    pub done: usize,
    pub total: usize,
}

/// `restore --all`: every user and every shared tree with an archive in the directory, `jobs`
/// of them at a time, each restored as `restore` would restore it alone (into Cyrus as a
/// resumable restore: what is already there and identical is left, what differs is reported;
/// into files, one tree per owner under the target). `options.user`, `shared`, `mailboxes` and
/// the message filters are not used. `on_owner` sees each owner's result as it finishes, with
/// the count done and the total.
pub fn restore_all(
    options: &RestoreOptions,
    jobs: usize,
    on_owner: &mut dyn FnMut(OwnerRestored),
) -> Result<usize> {
    if matches!(options.target, RestoreTarget::Imap(_)) {
        return Err(Error::usage(
            "--all restores into Cyrus (--to-cyrus) or into files (--maildir, --mbox, --eml)",
        ));
    }
    let (archived, _) = crate::store::list_owner_archives(&options.archive_dir)?;
    // The server's own annotations go back into a server; an export has nowhere to put them.
    let into_cyrus = matches!(options.target, RestoreTarget::Cyrus(_));
    let owners: Vec<Owner> = archived
        .into_iter()
        .filter_map(|(owner, _)| owner)
        .filter(|o| into_cyrus || *o != Owner::Server)
        .collect();
    // Files: the owners' trees go below the target, which is made first (mode 0700: mail).
    if let (
        false,
        RestoreTarget::Maildir(root) | RestoreTarget::Mbox(root) | RestoreTarget::Eml(root),
    ) = (options.dry_run, &options.target)
    {
        use std::os::unix::fs::DirBuilderExt;
        let shared = root.join(crate::store::SHARED_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&shared)
            .map_err(|e| Error::io("create", &shared, e))?;
    }
    let total = owners.len();
    if let Some(progress) = &options.progress {
        progress.set_owners_total(total as u64);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, total.max(1)) {
            let (tx, next, owners) = (tx.clone(), &next, &owners);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(owner) = owners.get(i) else { return };
                let result = match owner {
                    Owner::Server => restore_server(options),
                    _ => restore(&one_owner(options, owner)),
                };
                if tx.send((owner.clone(), result)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        for (done, (owner, result)) in rx.into_iter().enumerate() {
            on_owner(OwnerRestored {
                owner,
                result,
                done: done + 1,
                total,
            });
        }
    });
    Ok(total)
}

/// The server's own annotations (its archive's `meta/server-annotations.db` as of the run)
/// back into the Cyrus target's annotations.db.
fn restore_server(options: &RestoreOptions) -> Result<RestoreReport> {
    let _progress = owner_progress(options, &Owner::Server.to_string());
    let RestoreTarget::Cyrus(target) = &options.target else {
        unreachable!("only a Cyrus target takes the server's annotations")
    };
    let paths = ArchivePaths::for_owner(&options.archive_dir, &Owner::Server)?;
    let (archive, damage) = crate::commands::open_for_restore(&paths, &mut Vec::new())?;
    let run = run_at(&archive, options.at)?;
    let mut report = RestoreReport {
        user: Owner::Server.name().to_string(),
        run: Some(run.run),
        run_time: Some(run.time),
        dry_run: options.dry_run,
        damage,
        ..Default::default()
    };
    let name = crate::entries::meta_entry(crate::entries::SERVER_ANNOTATIONS);
    let entry = archive
        .state_at(Some(run.run))
        .into_iter()
        .find(|(_, e)| e.name == name && !e.is_tombstone())
        .map(|(_, e)| e);
    let records = match entry {
        Some(e) => {
            let bytes = read_all(&archive, e)?;
            crate::entries::parse_records(&bytes).ok_or_else(|| {
                Error::corrupt(
                    &paths.archive,
                    e.placement.member,
                    format!("{name}: not in the records format"),
                )
            })?
        }
        None => Vec::new(),
    };
    report.add(target.restore_server_annotations(records, options.dry_run)?);
    Ok(report)
}

/// The options that restore one owner of `restore --all`.
fn one_owner(options: &RestoreOptions, owner: &Owner) -> RestoreOptions {
    // Files: one tree per owner, named as its archive is (shared trees under shared/).
    let below = |root: &std::path::Path| -> PathBuf {
        let name = crate::store::encode_user(owner.name()).unwrap_or_else(|_| owner.name().into());
        match owner {
            Owner::User(_) => root.join(name),
            Owner::Shared(_) | Owner::Server => root.join(crate::store::SHARED_DIR).join(name),
        }
    };
    let target = match &options.target {
        RestoreTarget::Cyrus(t) => RestoreTarget::Cyrus(CyrusTarget {
            config: t.config.clone(),
            cyrus_bin: t.cyrus_bin.clone(),
            replace: t.replace,
            rename_to: None,
            resume: true,
        }),
        RestoreTarget::Maildir(root) => RestoreTarget::Maildir(below(root)),
        RestoreTarget::Mbox(root) => RestoreTarget::Mbox(below(root)),
        RestoreTarget::Eml(root) => RestoreTarget::Eml(below(root)),
        RestoreTarget::Imap(_) => unreachable!("refused above"),
    };
    RestoreOptions {
        archive_dir: options.archive_dir.clone(),
        user: owner.name().to_string(),
        shared: owner.is_shared(),
        mailboxes: Vec::new(),
        at: options.at,
        at_run: None,
        sha1: None,
        uid: None,
        expunged_between: None,
        target,
        dry_run: options.dry_run,
        progress: options.progress.clone(),
    }
}

fn owner(options: &RestoreOptions) -> Owner {
    if options.shared {
        Owner::Shared(options.user.clone())
    } else {
        Owner::User(options.user.clone())
    }
}

/// The run a restore reads: the one numbered, else the newest at or before the time asked. What
/// was expunged between T1 and T2 starts from the state at T1.
fn choose_run<'a>(archive: &'a Archive, options: &RestoreOptions) -> Result<&'a RunInfo> {
    match options.at_run {
        Some(n) => archive.runs().iter().find(|r| r.run == n).ok_or_else(|| {
            Error::NotFound(format!("run {n} in {}", archive.paths().archive.display()))
        }),
        None => run_at(
            archive,
            options.at.or(options.expunged_between.map(|(t1, _)| t1)),
        ),
    }
}

/// The user's mailboxes a restore is asked for, of those `all` held as of `run`, and whether
/// that is every mailbox of the user.
fn choose_mailboxes<'m>(
    options: &RestoreOptions,
    all: &'m [MailboxAt],
    run: &RunInfo,
) -> Result<(Vec<&'m MailboxAt>, bool)> {
    let deleted_prefix = "DELETED";
    let owned: Vec<&MailboxAt> = all
        .iter()
        .filter(|m| {
            let of = if options.shared {
                m.name.shared_tree(deleted_prefix)
            } else {
                m.name.owner(deleted_prefix)
            };
            of.as_deref() == Some(options.user.as_str())
        })
        .collect();
    if options.mailboxes.is_empty() {
        // Mailboxes deleted with delete_mode: delayed, and the #sieve mailbox where 3.6 keeps
        // sieve scripts, are part of an exact server restore, but not of a copy to read.
        let exact = matches!(options.target, RestoreTarget::Cyrus(_));
        let chosen = owned
            .into_iter()
            .filter(|m| {
                exact
                    || !(m.name.is_deleted(deleted_prefix)
                        || m.name.parts.get(2).is_some_and(|l| l == "#sieve"))
            })
            .collect();
        // A tree has no per-user files: restoring all of it is not a whole user's restore.
        return Ok((chosen, !options.shared));
    }
    let mut chosen = Vec::new();
    for wanted in &options.mailboxes {
        let m = find_mailbox(&owned, &options.user, wanted).ok_or_else(|| {
            Error::NotFound(format!(
                "mailbox {wanted:?} of {} as of run {} ({}); it had: {}",
                options.user,
                run.run,
                crate::restore::format_utc(run.time),
                owned
                    .iter()
                    .map(|m| m.name.relative('/'))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        chosen.push(m);
    }
    Ok((chosen, false))
}

/// Has `target` plan the request and, unless this is a dry run, execute the plan.
fn restore_mailboxes<'a, T: Target<'a>>(
    target: &T,
    archive: &'a Archive,
    request: &Request,
    options: &RestoreOptions,
    progress: &OwnerProgress,
) -> Result<Outcome> {
    let mut plan = target.plan(archive, request)?;
    progress.set_messages_total(plan.messages);
    plan.progress = Some(progress.tally());
    if let (Some(uid), 0) = (request.messages.uid, plan.messages) {
        return Err(Error::NotFound(format!(
            "uid {uid} in {} as of run {}",
            options.mailboxes.join(", "),
            request.run
        )));
    }
    if options.dry_run {
        Ok(plan.dry_run())
    } else {
        target.execute(plan)
    }
}

/// Restores the one message of a `--sha1` restore, its bytes read and checked.
fn restore_message(
    options: &RestoreOptions,
    sha1: Guid,
    bytes: Vec<u8>,
    progress: &OwnerProgress,
) -> Result<Outcome> {
    match &options.target {
        RestoreTarget::Cyrus(_) => Err(Error::usage(
            "--to-cyrus restores whole mailboxes; --sha1 goes to --imap, --maildir, --mbox or \
             --eml",
        )),
        RestoreTarget::Imap(t) => write_message(t, sha1, bytes, options.dry_run, progress),
        RestoreTarget::Maildir(root) => {
            let target = MaildirExport { root: root.clone() };
            write_message(&target, sha1, bytes, options.dry_run, progress)
        }
        RestoreTarget::Mbox(path) => {
            let target = MboxExport { path: path.clone() };
            write_message(&target, sha1, bytes, options.dry_run, progress)
        }
        RestoreTarget::Eml(root) => {
            let target = EmlExport { root: root.clone() };
            write_message(&target, sha1, bytes, options.dry_run, progress)
        }
    }
}

fn write_message<'a, T: MessageTarget<'a>>(
    target: &T,
    sha1: Guid,
    bytes: Vec<u8>,
    dry_run: bool,
    progress: &OwnerProgress,
) -> Result<Outcome> {
    let mut plan = target.plan_message(sha1, bytes)?;
    plan.progress = Some(progress.tally());
    if dry_run {
        Ok(plan.dry_run())
    } else {
        target.execute(plan)
    }
}

/// One message by SHA-1, found through the index and read by seeking (no scan, no full open
/// when the index is current). The report gets its run once the message is found.
fn read_one_by_sha1(
    paths: &ArchivePaths,
    sha1: Guid,
    report: &mut RestoreReport,
) -> Result<Vec<u8>> {
    let name = crate::archive::file_entry_name(&sha1);
    let (run, entry, source) = find_latest(paths, &name, &mut Vec::new())?
        .filter(|(_, e, _)| e.kind == crate::archive::EntryKind::File)
        .ok_or_else(|| Error::NotFound(format!("message {sha1} in {}", paths.archive.display())))?;
    report.run = Some(run);
    // The size is the index's word: believed only as far as the archive file could back it,
    // and the buffer grows with the bytes that really arrive.
    crate::restore::check_entry_fits(source.path(), source.len()?, &entry)?;
    let mut bytes = prealloc(entry.size);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(source.read_entry(&entry)?, entry.size),
        &mut bytes,
    )
    .map_err(|e| crate::restore::unwrap_io(e, source.path(), &entry))?;
    Ok(bytes)
}

/// A mailbox as `ls --at` shows it: what a restore as of that time brings back.
#[derive(Debug, serde::Serialize)]
pub struct MailboxAsOf {
    pub name: String,
    pub uniqueid: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: u64,
    pub messages: Vec<MessageAsOf>,
}

#[derive(Debug, serde::Serialize)]
pub struct MessageAsOf {
    pub uid: u32,
    pub sha1: String,
    pub size: u64,
    pub internaldate: i64,
    pub flags: Vec<String>,
    /// Expunged but not yet removed from the spool (delayed expunge): restorable.
    pub expunged: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct AsOf {
    pub run: u64,
    pub time: i64,
    pub mailboxes: Vec<MailboxAsOf>,
    pub refused: Vec<String>,
    /// Where the archive is damaged, and each mailbox that could not be read from it (exit 1).
    /// What is listed still read and checked.
    pub damage: Vec<String>,
}

/// The mailboxes and messages an archive held as of `at` (the newest run at or before it). On
/// a damaged archive, every mailbox that still reads is listed and the rest are named in
/// `damage`.
pub fn as_of(paths: &ArchivePaths, at: Option<i64>, notices: &mut Vec<String>) -> Result<AsOf> {
    let (archive, damage) = crate::commands::open_for_restore(paths, notices)?;
    as_of_archive(&archive, damage, at)
}

/// `as_of` of an archive already open (a local one, or an off-site copy).
pub fn as_of_archive(archive: &Archive, damage: Vec<String>, at: Option<i64>) -> Result<AsOf> {
    let run = run_at(archive, at)?;
    let (mailboxes, refused) = mailboxes_at(archive, run.run);
    let mut out = AsOf {
        run: run.run,
        time: run.time,
        mailboxes: Vec::new(),
        refused,
        damage,
    };
    for m in &mailboxes {
        let data = match read_mailbox(archive, m) {
            Ok(data) => data,
            Err(lost) => {
                out.damage
                    .push(format!("{}: not listed: {lost}", m.name.internal()));
                continue;
            }
        };
        let h = &data.index.header;
        out.mailboxes.push(MailboxAsOf {
            name: m.name.internal(),
            uniqueid: m.uniqueid.clone(),
            uidvalidity: h.uidvalidity,
            uidnext: h.last_uid + 1,
            highestmodseq: h.highestmodseq,
            messages: data
                .index
                .records
                .iter()
                .filter(|r| restorable(r, true))
                .map(|r| MessageAsOf {
                    uid: r.uid,
                    sha1: r.guid.to_string(),
                    size: r.size,
                    internaldate: r.internaldate_ns.div_euclid(1_000_000_000),
                    flags: r.flag_names(&data.header.user_flags),
                    expunged: r.is_expunged(),
                })
                .collect(),
        });
    }
    Ok(out)
}
