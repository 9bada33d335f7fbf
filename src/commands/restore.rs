//! `mailpack restore`: a user, some mailboxes, one message, or what was expunged between two
//! times, as an archive held them at a chosen time, into Cyrus, an IMAP server or files.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::restore::cyrus::CyrusTarget;
use crate::restore::export::{
    eml_path, ensure_dir, export_levels, maildir_folder, sync_tree, write_new, ExportMessage,
    MaildirFolder, MboxFile, WritePool,
};
use crate::restore::imap::{ImapSession, ImapTarget};
use crate::restore::{
    find_mailbox, mailboxes_at, prealloc, read_all, read_mailbox, restorable, run_at, safe_levels,
    LostEntry, MailboxAt, Messages,
};
use crate::spool::index::IndexRecord;
use crate::store::{find_latest, Archive, ArchivePaths};

pub enum RestoreTarget {
    Cyrus(CyrusTarget),
    Imap(ImapTarget),
    Maildir(PathBuf),
    Mbox(PathBuf),
    Eml(PathBuf),
}

pub struct RestoreOptions {
    pub archive_dir: PathBuf,
    pub user: String,
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
}

/// What a restore did, or with `dry_run` would do.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    pub user: String,
    /// The run restored and its commit time.
    pub run: Option<u64>,
    pub run_time: Option<i64>,
    pub mailboxes: Vec<String>,
    pub messages_written: u64,
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
}

/// One mailbox's messages selected for a restore, with their flags.
struct Selected<'a> {
    mailbox: &'a MailboxAt,
    /// The name's levels below its owner, each checked to be one path component.
    levels: Vec<String>,
    /// The owner's INBOX itself (not a folder that is merely named INBOX).
    inbox: bool,
    uidvalidity: u32,
    records: Vec<(IndexRecord, Vec<String>)>,
}

pub fn restore(options: &RestoreOptions) -> Result<RestoreReport> {
    let paths = ArchivePaths::for_user(&options.archive_dir, &options.user)?;
    if let (Some(sha1), None) = (options.sha1, options.uid) {
        if options.mailboxes.is_empty() {
            let mut report = new_report(options);
            match restore_one_by_sha1(options, &paths, sha1, &mut report) {
                // The lookup could not open a damaged archive: its degraded view may still
                // hold the message (below).
                Err(Error::Corrupt { .. }) if report.run.is_none() => {}
                other => return other.map(|_| report),
            }
        }
    }
    // A damaged archive is read in its degraded view: what still reads is restored, and the
    // damage is reported (exit 1).
    let (archive, damage) = crate::commands::open_for_reading(&paths, &mut Vec::new())?;
    let mut report = restore_from(&archive, options)?;
    report.damage = damage;
    Ok(report)
}

fn new_report(options: &RestoreOptions) -> RestoreReport {
    RestoreReport {
        user: options.user.clone(),
        dry_run: options.dry_run,
        ..Default::default()
    }
}

/// As `restore`, from an archive already open: every byte comes from that one generation of it,
/// whatever happens to the file's name meanwhile (a compaction renaming a new copy over it).
/// `options.archive_dir` is not used.
pub fn restore_from(archive: &Archive, options: &RestoreOptions) -> Result<RestoreReport> {
    let paths = archive.paths();
    let mut report = new_report(options);
    if let (Some(sha1), None) = (options.sha1, options.uid) {
        if options.mailboxes.is_empty() {
            let name = crate::archive::file_entry_name(&sha1);
            let (run, entry) = archive
                .latest(&name)
                .filter(|(_, e)| e.kind == crate::archive::EntryKind::File)
                .ok_or_else(|| {
                    Error::NotFound(format!("message {sha1} in {}", paths.archive.display()))
                })?;
            report.run = Some(run);
            let bytes = read_all(archive, entry)?;
            write_one(options, sha1, &bytes, &mut report)?;
            return Ok(report);
        }
    }
    let run =
        match options.at_run {
            Some(n) => archive.runs().iter().find(|r| r.run == n).ok_or_else(|| {
                Error::NotFound(format!("run {n} in {}", paths.archive.display()))
            })?,
            // What was expunged between T1 and T2 starts from the state at T1.
            None => run_at(
                archive,
                options.at.or(options.expunged_between.map(|(t1, _)| t1)),
            )?,
        };
    report.run = Some(run.run);
    report.run_time = Some(run.time);
    let (all, refused) = mailboxes_at(archive, run.run);
    report.refused.extend(refused);

    let deleted_prefix = "DELETED";
    let owned: Vec<&MailboxAt> = all
        .iter()
        .filter(|m| m.name.owner(deleted_prefix).as_deref() == Some(options.user.as_str()))
        .collect();
    let whole_user = options.mailboxes.is_empty();
    let chosen: Vec<&MailboxAt> = if whole_user {
        // Mailboxes deleted with delete_mode: delayed, and the #sieve mailbox where 3.6 keeps
        // sieve scripts, are part of an exact server restore, but not of a copy to read.
        owned
            .into_iter()
            .filter(|m| {
                matches!(options.target, RestoreTarget::Cyrus(_))
                    || !(m.name.is_deleted(deleted_prefix)
                        || m.name.parts.get(2).is_some_and(|l| l == "#sieve"))
            })
            .collect()
    } else {
        let mut out = Vec::new();
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
            out.push(m);
        }
        out
    };

    if let RestoreTarget::Cyrus(target) = &options.target {
        if options.expunged_between.is_some() || options.uid.is_some() || options.sha1.is_some() {
            return Err(Error::usage(
                "--to-cyrus restores whole mailboxes; for single messages or expunged ones use \
                 --imap, --maildir, --mbox or --eml",
            ));
        }
        let messages = Messages::new(archive);
        let outcome = target.restore(
            archive,
            &messages,
            &options.user,
            &chosen,
            whole_user,
            run.run,
            options.dry_run,
        )?;
        report.mailboxes = outcome.mailboxes;
        report.messages_written = outcome.messages_written;
        report.bad = outcome.bad_messages;
        report.lost = outcome.lost;
        report.writes = outcome.writes;
        return Ok(report);
    }

    let mut selected = Vec::new();
    for m in chosen {
        let levels = match safe_levels(&m.name) {
            Ok(l) => l,
            Err(why) => {
                report.refused.push(why);
                continue;
            }
        };
        // A mailbox whose metadata fails its checks is reported and left out; the others go on.
        let data = match read_mailbox(archive, m) {
            Ok(d) => d,
            Err(lost) => {
                not_restored(&mut report, m, lost);
                continue;
            }
        };
        let mut records: Vec<(IndexRecord, Vec<String>)> = data
            .index
            .records
            .iter()
            .filter(|r| restorable(r, false))
            .filter(|r| options.uid.is_none_or(|u| r.uid == u))
            .filter(|r| options.sha1.is_none_or(|g| r.guid == g))
            .map(|r| (r.clone(), r.flag_names(&data.header.user_flags)))
            .collect();
        if let Some((t1, t2)) = options.expunged_between {
            records = match expunged_between(archive, m, records, t1, t2)? {
                Ok(r) => r,
                Err(lost) => {
                    not_restored(&mut report, m, lost);
                    continue;
                }
            };
        }
        selected.push(Selected {
            mailbox: m,
            levels,
            inbox: m.name.is_inbox(),
            uidvalidity: data.index.header.uidvalidity,
            records,
        });
    }
    let selected = apart(options, selected, &mut report);
    if options.uid.is_some() && selected.iter().all(|s| s.records.is_empty()) {
        return Err(Error::NotFound(format!(
            "uid {} in {} as of run {}",
            options.uid.unwrap_or(0),
            options.mailboxes.join(", "),
            run.run
        )));
    }
    let messages = Messages::new(archive);
    write_selected(options, &messages, &selected, &mut report)?;
    Ok(report)
}

/// Adds a lost entry once: messages stored once may be listed by several mailboxes.
/// A mailbox left out because an entry it needs did not read: reported, and the entry listed.
fn not_restored(report: &mut RestoreReport, m: &MailboxAt, lost: LostEntry) {
    report.bad.push(format!(
        "mailbox {}: not restored: {lost}",
        m.name.relative('/')
    ));
    push_lost(&mut report.lost, lost);
}

fn push_lost(lost: &mut Vec<LostEntry>, entry: LostEntry) {
    if !lost.iter().any(|l| l.entry == entry.entry) {
        lost.push(entry);
    }
}

/// Where a mailbox goes in a file or IMAP target, to tell two apart that would share it.
fn destination(options: &RestoreOptions, s: &Selected, several: bool) -> Option<String> {
    Some(match &options.target {
        RestoreTarget::Maildir(root) => match maildir_folder(&s.levels, s.inbox) {
            Some(f) => root.join(f).display().to_string(),
            None => root.display().to_string(),
        },
        RestoreTarget::Eml(root) => root
            .join(export_levels(&s.levels, s.inbox).join("/"))
            .display()
            .to_string(),
        RestoreTarget::Mbox(path) if several => {
            let levels = export_levels(&s.levels, s.inbox);
            let (last, parents) = levels.split_last()?;
            path.join(parents.join("/"))
                .join(format!("{last}.mbox"))
                .display()
                .to_string()
        }
        RestoreTarget::Mbox(path) => path.display().to_string(),
        RestoreTarget::Imap(t) => t.folder_for(&export_levels(&s.levels, s.inbox), several),
        RestoreTarget::Cyrus(_) => return None,
    })
}

/// The mapping from names to paths keeps mailboxes apart (formats/restore.md, "Exports"); this
/// is the guard behind it: a mailbox that would still land where an earlier one did is refused
/// rather than mixed into it or written over it.
fn apart<'a>(
    options: &RestoreOptions,
    selected: Vec<Selected<'a>>,
    report: &mut RestoreReport,
) -> Vec<Selected<'a>> {
    let several = selected.len() > 1;
    let mut taken: std::collections::HashMap<String, String> = Default::default();
    let mut out = Vec::with_capacity(selected.len());
    for s in selected {
        if let Some(dest) = destination(options, &s, several) {
            let name = s.mailbox.name.to_string();
            if let Some(first) = taken.get(&dest) {
                report.refused.push(format!(
                    "mailbox {name}: would share {dest} with mailbox {first}; not restored"
                ));
                continue;
            }
            taken.insert(dest, name);
        }
        out.push(s);
    }
    out
}

/// Of `records` (the mailbox as of `t1`), those that are gone or expunged as of `t2`. The inner
/// error is the later state's metadata that failed its checks.
#[allow(clippy::type_complexity)]
fn expunged_between(
    archive: &Archive,
    m: &MailboxAt,
    records: Vec<(IndexRecord, Vec<String>)>,
    t1: i64,
    t2: i64,
) -> Result<std::result::Result<Vec<(IndexRecord, Vec<String>)>, LostEntry>> {
    if t2 < t1 {
        return Err(Error::usage(
            "--expunged-between wants the earlier time first",
        ));
    }
    let later = run_at(archive, Some(t2))?;
    let (then, _) = mailboxes_at(archive, later.run);
    let still: std::collections::HashSet<u32> = match then.iter().find(|x| x.uniqueid == m.uniqueid)
    {
        Some(later_m) => match read_mailbox(archive, later_m) {
            Ok(data) => data
                .index
                .records
                .iter()
                .filter(|r| !r.is_expunged())
                .map(|r| r.uid)
                .collect(),
            Err(lost) => return Ok(Err(lost)),
        },
        None => Default::default(),
    };
    Ok(Ok(records
        .into_iter()
        .filter(|(r, _)| !still.contains(&r.uid))
        .collect()))
}

fn write_selected(
    options: &RestoreOptions,
    messages: &Messages,
    selected: &[Selected],
    report: &mut RestoreReport,
) -> Result<()> {
    let several = selected.len() > 1;
    let mut pool: Option<WritePool> = None;
    let new_pool = || WritePool::new(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut imap = match &options.target {
        RestoreTarget::Imap(t) if !options.dry_run => Some(ImapSession::connect(t)?),
        _ => None,
    };
    for s in selected {
        report.mailboxes.push(s.mailbox.name.relative('/'));
        let exports: Vec<ExportMessage> = s
            .records
            .iter()
            .map(|(r, f)| ExportMessage {
                record: r,
                flags: f.clone(),
                uidvalidity: s.uidvalidity,
            })
            .collect();
        let levels = export_levels(&s.levels, s.inbox);
        let read = |m: &ExportMessage, report: &mut RestoreReport| -> Option<Vec<u8>> {
            match messages.read(&m.record.guid) {
                Ok(b) => Some(b),
                Err(e) => {
                    report.bad.push(format!(
                        "{} uid {}: {e}",
                        s.mailbox.name.relative('/'),
                        m.record.uid
                    ));
                    if let Some(lost) = messages.lost(&m.record.guid, &e) {
                        push_lost(&mut report.lost, lost);
                    }
                    None
                }
            }
        };
        match &options.target {
            RestoreTarget::Maildir(root) => {
                if options.dry_run {
                    for m in &exports {
                        report.writes.push(format!("{root:?} {}", m.record.uid));
                    }
                    continue;
                }
                let folder = MaildirFolder::open(root, &s.levels, s.inbox, &exports)?;
                for m in &exports {
                    let Some(bytes) = read(m, report) else {
                        continue;
                    };
                    report.writes.push(folder.path_of(m).display().to_string());
                    folder.write(pool.get_or_insert_with(new_pool), m, bytes)?;
                }
            }
            RestoreTarget::Eml(root) => {
                let dir = root.join(levels.join("/"));
                if options.dry_run {
                    for m in &exports {
                        report
                            .writes
                            .push(eml_path(&dir, m.record).display().to_string());
                    }
                    continue;
                }
                let dir = ensure_dir(root, &levels)?;
                for m in &exports {
                    let Some(bytes) = read(m, report) else {
                        continue;
                    };
                    let path = eml_path(&dir, m.record);
                    report.writes.push(path.display().to_string());
                    let secs = m.record.internaldate_ns.div_euclid(1_000_000_000);
                    pool.get_or_insert_with(new_pool)
                        .submit(path, bytes, Some(secs))?;
                }
            }
            RestoreTarget::Mbox(path) => {
                // One mailbox: PATH is the file. Several: PATH is a directory holding
                // `<levels>.mbox` per mailbox, sub-levels as subdirectories.
                let file = if several {
                    let Some((last, parents)) = levels.split_last() else {
                        continue; // safe_levels never gives none
                    };
                    let dir = if options.dry_run {
                        path.join(parents.join("/"))
                    } else {
                        ensure_dir(path, parents)?
                    };
                    dir.join(format!("{last}.mbox"))
                } else {
                    path.clone()
                };
                report.writes.push(file.display().to_string());
                if options.dry_run {
                    continue;
                }
                let mut mbox = MboxFile::create(&file)?;
                for m in &exports {
                    let Some(bytes) = read(m, report) else {
                        continue;
                    };
                    mbox.append(m, &bytes)?;
                    report.messages_written += 1;
                }
                mbox.finish()?;
            }
            RestoreTarget::Imap(target) => {
                let folder = target.folder_for(&levels, several);
                report.writes.push(format!("imap {folder}"));
                let Some(session) = imap.as_mut() else {
                    continue;
                };
                let present = session.prepare_folder(&folder)?;
                let mut present = present;
                for m in &exports {
                    let Some(bytes) = read(m, report) else {
                        continue;
                    };
                    if present.take(&bytes, m.record) {
                        report.messages_already_there += 1;
                        continue;
                    }
                    session.append(&folder, m, &bytes)?;
                    report.messages_written += 1;
                }
            }
            RestoreTarget::Cyrus(_) => unreachable!("handled before"),
        }
    }
    if let Some(session) = imap {
        session.logout();
    }
    if let Some(pool) = pool {
        let (written, there) = pool.finish()?;
        report.messages_written += written;
        report.messages_already_there += there;
    }
    if !options.dry_run {
        if let RestoreTarget::Maildir(root) | RestoreTarget::Eml(root) = &options.target {
            if root.exists() {
                sync_tree(root)?;
            }
        }
    }
    Ok(())
}

fn count(report: &mut RestoreReport, written: bool) {
    if written {
        report.messages_written += 1;
    } else {
        report.messages_already_there += 1;
    }
}

/// One message by SHA-1, found through the index and read by seeking (no scan, no full open
/// when the index is current), written without flags: no mailbox context says what they were.
fn restore_one_by_sha1(
    options: &RestoreOptions,
    paths: &ArchivePaths,
    sha1: Guid,
    report: &mut RestoreReport,
) -> Result<()> {
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
    write_one(options, sha1, &bytes, report)
}

/// Writes the one message of a `--sha1` restore, without flags: no mailbox says what they were.
fn write_one(
    options: &RestoreOptions,
    sha1: Guid,
    bytes: &[u8],
    report: &mut RestoreReport,
) -> Result<()> {
    let record = IndexRecord {
        uid: 0,
        guid: sha1,
        size: bytes.len() as u64,
        ..Default::default()
    };
    let m = ExportMessage {
        record: &record,
        flags: Vec::new(),
        uidvalidity: 0,
    };
    let target_file = |dir: &std::path::Path| dir.join(format!("{sha1}.eml"));
    match &options.target {
        RestoreTarget::Eml(dir) | RestoreTarget::Maildir(dir) => {
            let path = match &options.target {
                RestoreTarget::Maildir(_) => dir.join("new").join(format!("{sha1}.mailpack")),
                _ => target_file(dir),
            };
            report.writes.push(path.display().to_string());
            if !options.dry_run {
                let parent = crate::io::parent_dir(&path);
                let rel: Vec<String> = parent
                    .strip_prefix(dir)
                    .ok()
                    .map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                ensure_dir(dir, &rel)?;
                if let RestoreTarget::Maildir(_) = &options.target {
                    for sub in ["cur", "tmp"] {
                        ensure_dir(dir, &[sub.to_string()])?;
                    }
                }
                count(report, write_new(&path, bytes, None)?);
                sync_tree(dir)?;
            }
        }
        RestoreTarget::Mbox(path) => {
            report.writes.push(path.display().to_string());
            if !options.dry_run {
                let mut mbox = MboxFile::create(path)?;
                mbox.append(&m, bytes)?;
                mbox.finish()?;
                report.messages_written += 1;
            }
        }
        RestoreTarget::Imap(target) => {
            let folder = target.folder_for(&[], false);
            report.writes.push(format!("imap {folder}"));
            if !options.dry_run {
                let mut session = ImapSession::connect(target)?;
                let mut present = session.prepare_folder(&folder)?;
                if present.take(bytes, &record) {
                    report.messages_already_there += 1;
                } else {
                    session.append(&folder, &m, bytes)?;
                    report.messages_written += 1;
                }
                session.logout();
            }
        }
        RestoreTarget::Cyrus(_) => {
            return Err(Error::usage(
                "--to-cyrus restores whole mailboxes; --sha1 goes to --imap, --maildir, --mbox \
                 or --eml",
            ))
        }
    }
    Ok(())
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
    let (archive, damage) = crate::commands::open_for_reading(paths, notices)?;
    let run = run_at(&archive, at)?;
    let (mailboxes, refused) = mailboxes_at(&archive, run.run);
    let mut out = AsOf {
        run: run.run,
        time: run.time,
        mailboxes: Vec::new(),
        refused,
        damage,
    };
    for m in &mailboxes {
        let data = match read_mailbox(&archive, m) {
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
