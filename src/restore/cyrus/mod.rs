//! Exact restore into a Cyrus 3.6 server, running or not (formats/restore.md, "Into Cyrus"):
//! the mailbox's files are placed where the target's own layout wants them, then its
//! `mailboxes.db` records (`I<uniqueid>` first, then `N<name>`, which makes it visible) and its
//! `annotations.db` rows are written through Cyrus's `cyr_dbtool batch`, which locks the
//! databases as Cyrus does and is binary-safe; then `quota -f` recounts usage. A mailbox that
//! exists on the target is touched only with `replace`, and then under Cyrus's exclusive locks.
//! The plan checks every mailbox against the target before anything is written.

mod place;
mod rename;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use self::place::{create_dirs, place, sync_fs, Durability, FileOwner};
use super::plan::{Outcome, Request, RestorePlan, Target};
use super::{folder_records, read_all, restorable, LostEntry, MailboxAt, Messages};
use crate::archive::{EntryKind, EntryRecord};
use crate::entries::{FOLDER_ANNOTATIONS_DB, FOLDER_MAILBOXES_DB};
use crate::error::{Error, Result};
use crate::io::{remove_if_present, Faults};
use crate::spool::cyrusdb::Record;
use crate::spool::index::IndexRecord;
use crate::spool::mboxlist::{MailboxEntry, Mboxlist, MboxlistFormat};
use crate::spool::user::UserFiles;
use crate::spool::{MetaFile, Spool};
use crate::store::Archive;

/// Where Debian installs Cyrus's tools.
pub const DEFAULT_CYRUS_BIN: &str = "/usr/lib/cyrus/bin";

pub struct CyrusTarget {
    pub config: PathBuf,
    pub cyrus_bin: PathBuf,
    /// Overwrite a mailbox that exists on the target as the same mailbox (same name and
    /// uniqueid), under Cyrus's exclusive locks.
    pub replace: bool,
    /// Restore the one selected mailbox under this name (relative to the user's INBOX, `/`
    /// between levels) as a new mailbox with a new uniqueid.
    pub rename_to: Option<String>,
    /// Finishing an interrupted restore (`restore --all`): a mailbox already on the target with
    /// the same name, uniqueid and cyrus.index is left as it is and counted as present; one
    /// that differs is reported and left alone (unless `replace`), never an error that stops
    /// the other mailboxes.
    pub resume: bool,
}

/// What a restore into Cyrus writes: each mailbox's files, the database records, and for a
/// whole user their own files; and the archive and server they come from and go to.
pub struct CyrusSteps<'a> {
    archive: &'a Archive,
    messages: Messages<'a>,
    /// The target as it was when planned.
    spool: Spool,
    owner: FileOwner,
    /// The userid, or the shared tree's name when `shared`.
    user: String,
    shared: bool,
    /// Mailboxes left out, each with its report line: an entry they need failed its checks.
    left_out: Vec<(String, LostEntry)>,
    /// Resuming: mailboxes left alone because something else is on the target in their place.
    conflicts: Vec<String>,
    mailboxes: Vec<Planned>,
    databases: Vec<DbUpdate>,
    /// The user's own files, for a whole-user restore.
    user_files: Option<UserFilesPlan>,
}

/// How a planned mailbox meets the target.
enum Mode {
    /// Nothing there under its name or uniqueid.
    Fresh,
    /// The same mailbox is there (same name and uniqueid): replaced in place.
    Replace(Box<MailboxEntry>),
}

/// One mailbox ready to place: its target entry, records and metadata (rewritten when it is
/// restored under a new name), and where its files go.
struct Planned {
    entry: MailboxEntry,
    mode: Mode,
    records: Vec<Record>,
    annotation_rows: Vec<Record>,
    header: Vec<u8>,
    index: Vec<u8>,
    /// cyrus.annotations with its mtime, when the archive has one.
    annotations: Option<(Vec<u8>, Option<i64>)>,
    /// The archived mtimes of cyrus.header and cyrus.index, which the placed copies keep.
    header_mtime: Option<i64>,
    index_mtime: Option<i64>,
    paths: MailboxPaths,
}

/// Where a mailbox's files go on the target.
#[derive(Default)]
struct MailboxPaths {
    data_dir: PathBuf,
    archive_dir: Option<PathBuf>,
    /// Every message file the index lists, with its record.
    messages: Vec<(PathBuf, IndexRecord)>,
    annotations: PathBuf,
    header: PathBuf,
    index: PathBuf,
    /// Message files there that the restored index does not list, as found when planning: a
    /// mailbox being replaced loses them (its execution looks again under the locks).
    stale: Vec<PathBuf>,
}

impl MailboxPaths {
    /// Message files in the mailbox's directories that its index does not list.
    fn unlisted(&self) -> Vec<PathBuf> {
        let listed: HashSet<&PathBuf> = self.messages.iter().map(|(path, _)| path).collect();
        std::iter::once(&self.data_dir)
            .chain(self.archive_dir.as_ref())
            .flat_map(|dir| message_files(dir))
            .map(|(_, path)| path)
            .filter(|path| !listed.contains(path))
            .collect()
    }
}

impl Planned {
    fn replaces(&self) -> bool {
        matches!(self.mode, Mode::Replace(_))
    }

    /// The stale cache of a mailbox being replaced: Cyrus rebuilds it from the message files.
    fn cache(&self) -> PathBuf {
        crate::io::parent_dir(&self.paths.index).join("cyrus.cache")
    }

    /// What placing the mailbox writes, in order, `stale` being the unlisted files it removes.
    fn writes(&self, stale: &[PathBuf]) -> Vec<String> {
        let mut out: Vec<String> = self
            .paths
            .messages
            .iter()
            .map(|(path, _)| path.display().to_string())
            .collect();
        if self.replaces() {
            out.extend(stale.iter().map(|p| format!("remove {}", p.display())));
        }
        out.push(self.paths.annotations.display().to_string());
        out.push(self.paths.header.display().to_string());
        if self.replaces() {
            out.push(format!("remove {}", self.cache().display()));
        }
        out.push(self.paths.index.display().to_string());
        out
    }
}

/// One `cyr_dbtool batch` run on one database: keys deleted, then records set.
struct DbUpdate {
    db: PathBuf,
    deletes: Vec<Vec<u8>>,
    records: Vec<Record>,
}

impl DbUpdate {
    fn writes(&self) -> impl Iterator<Item = String> + '_ {
        let key = |k: &[u8]| String::from_utf8_lossy(k).replace(['\u{1f}', '\0'], "/");
        let deletes = self
            .deletes
            .iter()
            .map(move |k| format!("{} delete {}", self.db.display(), key(k)));
        let records = self
            .records
            .iter()
            .map(move |r| format!("{} record {}", self.db.display(), key(&r.key)));
        deletes.chain(records)
    }
}

/// Which of the user's own files an archive entry is.
#[derive(Clone, Copy)]
enum UserFileKind {
    Seen,
    Subscriptions,
    Quota,
    Dav,
}

impl UserFileKind {
    fn of(entry: &str) -> Option<UserFileKind> {
        Some(match entry {
            "meta/seen" => UserFileKind::Seen,
            "meta/sub" => UserFileKind::Subscriptions,
            "meta/quota" => UserFileKind::Quota,
            "meta/dav.db" => UserFileKind::Dav,
            _ => return None,
        })
    }

    fn path(self, files: &UserFiles) -> &Path {
        match self {
            UserFileKind::Seen => &files.seen,
            UserFileKind::Subscriptions => &files.sub,
            UserFileKind::Quota => &files.quota,
            UserFileKind::Dav => &files.dav,
        }
    }
}

/// One step of restoring the user's own files, in the archive's order.
enum UserFileStep {
    File(UserFileKind, EntryRecord),
    /// A `meta/sieve/` entry whose name is not one file name: refused.
    Refused(String),
}

impl UserFileStep {
    fn refusal(name: &str) -> String {
        format!("{name}: not a sieve file name; not restored")
    }
}

/// The user's own files as of the run. Where they go is known only once the mailboxes' records
/// are in (3.6 files them under the INBOX's uniqueid), so the paths are looked up then.
struct UserFilesPlan {
    steps: Vec<UserFileStep>,
    /// Sieve scripts, and `defaultbc` links to them, by file name.
    sieve: BTreeMap<String, EntryRecord>,
}

impl UserFilesPlan {
    fn of(archive: &Archive, run: u64) -> UserFilesPlan {
        let mut plan = UserFilesPlan {
            steps: Vec::new(),
            sieve: BTreeMap::new(),
        };
        for (_, e) in &archive.state_at(Some(run)) {
            if let Some(kind) = UserFileKind::of(&e.name) {
                if e.kind == EntryKind::File {
                    plan.steps.push(UserFileStep::File(kind, (*e).clone()));
                }
            } else if let Some(script) = e.name.strip_prefix("meta/sieve/") {
                if script.contains('/') || script.starts_with('.') {
                    plan.steps.push(UserFileStep::Refused(e.name.clone()));
                } else {
                    plan.sieve.insert(script.to_string(), (*e).clone());
                }
            }
        }
        plan
    }
}

/// A mailbox's plan, or the archive entry it needs that failed its checks (the restore reports
/// it and goes on with the other mailboxes). Everything else wrong is an error that stops it.
fn plan_mailbox(
    archive: &Archive,
    spool: &Spool,
    m: &MailboxAt,
    target: &CyrusTarget,
    user: &str,
) -> Result<std::result::Result<Planned, NotPlanned>> {
    let path = &archive.paths().archive;
    // Everything read from the archive is read first, so a loss stops nothing but this mailbox.
    let read = || -> std::result::Result<_, LostEntry> {
        let file = |name: &str| {
            let e = m.file(name).ok_or_else(|| {
                LostEntry::missing(path, format!("folders/{}/{name}", m.uniqueid))
            })?;
            read_all(archive, e).map_err(|err| LostEntry::of(path, e, &err))
        };
        let annotations = match m.file(MetaFile::Annotations.file_name()) {
            Some(e) => Some((
                read_all(archive, e).map_err(|err| LostEntry::of(path, e, &err))?,
                e.stat.as_deref().map(|s| s.mtime_ns),
            )),
            None => None,
        };
        Ok((
            folder_records(archive, m, FOLDER_MAILBOXES_DB)?,
            folder_records(archive, m, FOLDER_ANNOTATIONS_DB)?,
            file("cyrus.header")?,
            super::read_index(archive, m)?.1,
            annotations,
        ))
    };
    let (records, annotation_rows, header, index, annotations) = match read() {
        Ok(r) => r,
        Err(lost) => return Ok(Err(NotPlanned::Lost(lost))),
    };
    let list = Mboxlist::from_records(path, &records)?;
    if list.format != MboxlistFormat::ByIdAndName || records.len() != 2 {
        return Err(Error::Unsupported {
            path: path.clone(),
            detail: format!(
                "{}: its backup holds no Cyrus 3.6 mailboxes.db records (N and I); an exact \
                 restore into Cyrus needs them",
                m.name
            ),
        });
    }
    let entry = list
        .entries
        .into_iter()
        .next()
        .ok_or_else(|| Error::corrupt(path, 0, format!("{}: no N record", m.name)))?;
    if entry.uniqueid.as_deref() != Some(m.uniqueid.as_str()) {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "{}: its mailboxes.db record names uniqueid {:?}, the archive {}",
                m.name, entry.uniqueid, m.uniqueid
            ),
        ));
    }
    let mtime = |file: MetaFile| {
        let e = match file {
            // The newest version of the index: a full copy or a delta, with its file's stat.
            MetaFile::Index => m.index_entry(),
            _ => m.file(file.file_name()),
        };
        e.and_then(|e| e.stat.as_deref().map(|s| s.mtime_ns))
    };
    let mut p = Planned {
        entry,
        mode: Mode::Fresh,
        records,
        annotation_rows,
        header,
        index,
        annotations,
        header_mtime: mtime(MetaFile::Header),
        index_mtime: mtime(MetaFile::Index),
        paths: MailboxPaths::default(),
    };
    if let Some(new_name) = &target.rename_to {
        let (local, domain) = crate::spool::name::split_userid(user);
        let mut parts = vec!["user".to_string(), local.to_string()];
        parts.extend(new_name.split('/').map(str::to_string));
        let name = crate::spool::name::MboxName {
            domain: domain.map(str::to_string),
            parts,
        };
        crate::restore::safe_levels(&name).map_err(Error::usage)?;
        rename::renamed(&mut p, name, &m.uniqueid, path)?;
    }
    let live = |e: &&MailboxEntry| !e.is_tombstone();
    let by_name = spool
        .mboxlist
        .entries
        .iter()
        .filter(live)
        .find(|e| e.name == p.entry.name);
    let by_id = spool
        .mboxlist
        .entries
        .iter()
        .filter(live)
        .find(|e| e.uniqueid == p.entry.uniqueid);
    p.mode = match (by_name, by_id) {
        (None, None) => Mode::Fresh,
        (Some(n), Some(i)) if n.name == i.name && target.replace => {
            Mode::Replace(Box::new(n.clone()))
        }
        (Some(existing), _) | (None, Some(existing)) => {
            let same = existing.name == p.entry.name && existing.uniqueid == p.entry.uniqueid;
            if target.resume && same {
                let there = spool
                    .meta_path(existing, MetaFile::Index)
                    .and_then(|path| std::fs::read(path).ok());
                if there.as_deref() == Some(&p.index[..]) {
                    return Ok(Err(NotPlanned::Present));
                }
            }
            let what = if same {
                "exists on the target; --replace overwrites it".to_string()
            } else if existing.name == p.entry.name {
                format!(
                    "exists on the target as another mailbox (uniqueid {}); delete it first, or \
                     restore with --as NAME",
                    existing.uniqueid.as_deref().unwrap_or("?")
                )
            } else {
                format!(
                    "exists on the target under the name {} (same uniqueid); rename it back \
                     first, or restore with --as NAME",
                    existing.name
                )
            };
            let refusal = format!(
                "{}: {what}; or export it (--maildir, --mbox, --eml) or restore it additively \
                 (--imap)",
                p.entry.name
            );
            if target.resume {
                return Ok(Err(NotPlanned::Conflict(refusal)));
            }
            return Err(Error::refused(refusal));
        }
    };
    p.paths = mailbox_paths(archive, spool, &p)?;
    Ok(Ok(p))
}

/// Why a mailbox is not in the plan.
enum NotPlanned {
    /// An entry it needs failed its checks.
    Lost(LostEntry),
    /// Resuming: it is on the target already, identical.
    Present,
    /// Resuming: something else is on the target under its name or uniqueid.
    Conflict(String),
}

/// Where the target's layout puts the planned mailbox's files.
fn mailbox_paths(archive: &Archive, spool: &Spool, p: &Planned) -> Result<MailboxPaths> {
    let data_dir = spool.mailbox_dir(&p.entry).ok_or_else(|| {
        Error::NotFound(format!(
            "partition {:?} on the target, for {}",
            p.entry.partition.as_deref().unwrap_or(""),
            p.entry.name
        ))
    })?;
    let meta = |file: MetaFile| {
        spool
            .meta_path(&p.entry, file)
            .expect("a mailbox with a data directory has its partition, so its metadata paths")
    };
    let archive_dir = spool.archive_dir(&p.entry);
    let index = crate::spool::index::parse(&p.index).map_err(|e| {
        Error::corrupt(
            &archive.paths().archive,
            0,
            format!("{}: cyrus.index: {e}", p.entry.name),
        )
    })?;
    let messages = index
        .records
        .into_iter()
        .filter(|r| restorable(r, true))
        .map(|r| {
            let dir = match (&archive_dir, r.is_archived()) {
                (Some(a), true) => a,
                _ => &data_dir,
            };
            (dir.join(r.message_file_name()), r)
        })
        .collect();
    let mut paths = MailboxPaths {
        data_dir,
        archive_dir,
        messages,
        annotations: meta(MetaFile::Annotations),
        header: meta(MetaFile::Header),
        index: meta(MetaFile::Index),
        stale: Vec::new(),
    };
    if p.replaces() {
        paths.stale = paths.unlisted();
    }
    Ok(paths)
}

/// The `cyr_dbtool batch` input that sets `records` and deletes `deletes`: IMAP literals,
/// binary-safe.
fn batch_input(records: &[Record], deletes: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for key in deletes {
        out.extend_from_slice(format!("DELETE {{{}+}}\r\n", key.len()).as_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(b"\r\n");
    }
    for r in records {
        out.extend_from_slice(format!("SET {{{}+}}\r\n", r.key.len()).as_bytes());
        out.extend_from_slice(&r.key);
        out.extend_from_slice(format!(" {{{}+}}\r\n", r.value.len()).as_bytes());
        out.extend_from_slice(&r.value);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Message files in a mailbox directory (`<uid>.`), by uid.
fn message_files(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    read.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name();
        let uid = name.to_str()?.strip_suffix('.')?.parse().ok()?;
        Some((uid, e.path()))
    })
    .collect()
}

/// Reports an archive entry that failed its checks; the restore goes on without it.
fn lose(archive: &Archive, e: &EntryRecord, err: &Error, out: &mut Outcome) {
    let lost = LostEntry::of(&archive.paths().archive, e, err);
    out.bad.push(format!("{}: not restored: {lost}", e.name));
    out.lost.push(lost);
}

impl<'a> Target<'a> for CyrusTarget {
    type Steps = CyrusSteps<'a>;

    /// Plans `request.mailboxes` (and, for a whole user, the user's seen state, subscriptions,
    /// sieve scripts and quota) as the archive held them. Every mailbox is checked against the
    /// target: one that exists there stops the restore unless `replace` allows it.
    fn plan(&self, archive: &'a Archive, request: &Request) -> Result<RestorePlan<CyrusSteps<'a>>> {
        let spool = Spool::open(&self.config)?;
        if spool.mboxlist.format != MboxlistFormat::ByIdAndName
            && !spool.mboxlist.entries.is_empty()
        {
            return Err(Error::Unsupported {
                path: self.config.clone(),
                detail: "restore into Cyrus supports the 3.6 mailboxes.db layout only".into(),
            });
        }
        if self.rename_to.is_some() && (request.mailboxes.len() != 1 || request.whole_user) {
            return Err(Error::usage("--as restores exactly one --mailbox"));
        }
        if self.rename_to.is_some() && request.shared {
            return Err(Error::usage(
                "--as renames a user's mailbox, not a shared one",
            ));
        }
        let owner = FileOwner::of(&spool.config.configdirectory)?;
        let mut left_out = Vec::new();
        let mut planned = Vec::new();
        let (mut present, mut conflicts) = (Vec::new(), Vec::new());
        for m in &request.mailboxes {
            match plan_mailbox(archive, &spool, m, self, request.user)? {
                Ok(p) => planned.push(p),
                Err(NotPlanned::Lost(lost)) => {
                    left_out.push((format!("mailbox {}: not restored: {lost}", m.name), lost))
                }
                Err(NotPlanned::Present) => present.push(m.name.internal()),
                Err(NotPlanned::Conflict(why)) => conflicts.push(why),
            }
        }
        let databases = databases(&spool, &planned)?;
        let user_files = request
            .whole_user
            .then(|| UserFilesPlan::of(archive, request.run));

        let mut plan = RestorePlan::new(());
        for (bad, lost) in &left_out {
            plan.bad.push(bad.clone());
            plan.lost.push(lost.clone());
        }
        plan.bad.extend(conflicts.iter().cloned());
        plan.present = present;
        for p in &planned {
            plan.mailboxes.push(p.entry.name.to_string());
            plan.messages += p.paths.messages.len() as u64;
            plan.writes.extend(p.writes(&p.paths.stale));
        }
        for db in &databases {
            plan.writes.extend(db.writes());
        }
        if let Some(user_files) = &user_files {
            // Where they would go as the target stands now.
            let files = spool.user_files(request.user);
            for step in &user_files.steps {
                match step {
                    UserFileStep::File(kind, _) => {
                        plan.writes.push(kind.path(&files).display().to_string())
                    }
                    UserFileStep::Refused(name) => plan.bad.push(UserFileStep::refusal(name)),
                }
            }
            for name in user_files.sieve.keys() {
                let path = files.sieve_dir.join(name);
                plan.writes.push(path.display().to_string());
            }
        }
        Ok(plan.with_steps(CyrusSteps {
            archive,
            messages: Messages::new(archive),
            spool,
            owner,
            user: request.user.to_string(),
            shared: request.shared,
            left_out,
            conflicts,
            mailboxes: planned,
            databases,
            user_files,
        }))
    }

    fn execute(&self, plan: RestorePlan<CyrusSteps<'a>>) -> Result<Outcome> {
        // The report is built from the steps, not from the plan's lists: a real run reports
        // what fails in the order it meets it (a message that does not read comes before a
        // sieve file refused).
        let steps = plan.steps;
        let mut out = Outcome {
            mailboxes: plan.mailboxes,
            present: plan.present,
            progress: plan.progress,
            ..Outcome::default()
        };
        for (bad, lost) in steps.left_out.iter().cloned() {
            out.bad.push(bad);
            out.lost.push(lost);
        }
        out.bad.extend(steps.conflicts.iter().cloned());
        for p in &steps.mailboxes {
            self.place_mailbox(&steps, p, &mut out)?;
        }
        // Every file placed, durable before any record names it: one flush per file system.
        let mut synced = HashSet::new();
        for p in &steps.mailboxes {
            for dir in [&p.paths.data_dir, &crate::io::parent_dir(&p.paths.index)] {
                use std::os::unix::fs::MetadataExt;
                let dev = fs::metadata(dir)
                    .map_err(|e| Error::io("stat", dir, e))?
                    .dev();
                if synced.insert(dev) {
                    sync_fs(dir)?;
                }
            }
        }
        for db in &steps.databases {
            out.writes.extend(db.writes());
            self.update_db(steps.owner, db)?;
        }
        if let Some(user_files) = &steps.user_files {
            self.restore_user_files(&steps, user_files, &mut out)?;
        }
        // Placed files are not counted in the quota until the server recounts them; a resumed
        // restore recounts too, since the run it resumes may have stopped just before that.
        if !steps.mailboxes.is_empty() || !out.present.is_empty() {
            let mut cmd = self.tool(steps.owner, "quota");
            // A tree's quota root is its top-level mailbox, named as Cyrus's tools name it.
            let root = if steps.shared {
                let (top, domain) = crate::spool::name::split_userid(&steps.user);
                crate::spool::name::MboxName {
                    domain: domain.map(str::to_string),
                    parts: vec![top.to_string()],
                }
                .internal()
            } else {
                steps.user.clone()
            };
            let what = if steps.shared {
                cmd.arg("-f").arg(&root);
                format!("-f {root}")
            } else {
                cmd.arg("-f").arg("-u").arg(&root);
                format!("-f -u {root}")
            };
            self.run(cmd, b"", "quota", &what)?;
        }
        Ok(out)
    }
}

/// The database updates for the planned mailboxes, in the order they are run: annotations.db
/// rows (the stale ones of a replaced mailbox deleted first), then every `I<uniqueid>` record,
/// then the `N<name>` records, so a crash in between leaves only `I` records, as cyr_expire
/// does, which the next restore overwrites.
fn databases(spool: &Spool, planned: &[Planned]) -> Result<Vec<DbUpdate>> {
    let annotations = if planned.iter().any(Planned::replaces) {
        Some(spool.annotations()?)
    } else {
        None
    };
    let mut annotation_deletes: Vec<Vec<u8>> = Vec::new();
    if let Some(all) = &annotations {
        for p in planned {
            if let Mode::Replace(existing) = &p.mode {
                let key = spool.annotation_key(existing);
                annotation_deletes.extend(
                    all.of(&key)
                        .iter()
                        .filter(|r| !p.annotation_rows.iter().any(|k| k.key == r.key))
                        .map(|r| r.key.clone()),
                );
            }
        }
    }
    let (ids, names): (Vec<Record>, Vec<Record>) = planned
        .iter()
        .flat_map(|p| p.records.iter().cloned())
        .partition(|r| r.key.starts_with(b"I"));
    let annotation_rows = planned
        .iter()
        .flat_map(|p| p.annotation_rows.iter().cloned())
        .collect();
    let mboxlist_db = spool.config.configdirectory.join("mailboxes.db");
    let annotations_db = spool.config.configdirectory.join("annotations.db");
    Ok(vec![
        DbUpdate {
            db: annotations_db,
            deletes: annotation_deletes,
            records: annotation_rows,
        },
        DbUpdate {
            db: mboxlist_db.clone(),
            deletes: Vec::new(),
            records: ids,
        },
        DbUpdate {
            db: mboxlist_db,
            deletes: Vec::new(),
            records: names,
        },
    ])
}

impl CyrusTarget {
    /// Writes the server's own annotations (records of annotations.db whose mailbox is empty)
    /// back through `cyr_dbtool`; setting a row that is there already changes nothing, so a
    /// rerun is harmless.
    pub fn restore_server_annotations(
        &self,
        records: Vec<Record>,
        dry_run: bool,
    ) -> Result<Outcome> {
        let spool = Spool::open(&self.config)?;
        let update = DbUpdate {
            db: spool.config.configdirectory.join("annotations.db"),
            deletes: Vec::new(),
            records,
        };
        let out = Outcome {
            writes: update.writes().collect(),
            ..Outcome::default()
        };
        if !dry_run {
            let owner = FileOwner::of(&spool.config.configdirectory)?;
            self.update_db(owner, &update)?;
        }
        Ok(out)
    }

    fn tool(&self, owner: FileOwner, name: &str) -> Command {
        let mut cmd = Command::new(self.cyrus_bin.join(name));
        cmd.arg("-C").arg(&self.config);
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::process::CommandExt;
            cmd.uid(owner.uid).gid(owner.gid);
        }
        cmd
    }

    /// Runs the tool `name` (made by `tool`) with `input` on its stdin; `what` says what it
    /// was asked to do, for the error when it fails.
    fn run(&self, mut cmd: Command, input: &[u8], name: &str, what: &str) -> Result<()> {
        let failed = |detail: String| Error::external(name, detail);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let path = self.cyrus_bin.join(name);
                failed(format!("cannot run {}: {e}", path.display()))
            })?;
        child
            .stdin
            .take()
            .expect("stdin was set to a pipe above")
            .write_all(input)
            .map_err(|e| failed(format!("{what}: writing its input: {e}")))?;
        let out = child
            .wait_with_output()
            .map_err(|e| failed(format!("{what}: waiting for it: {e}")))?;
        if !out.status.success() {
            return Err(failed(format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn update_db(&self, owner: FileOwner, update: &DbUpdate) -> Result<()> {
        if update.records.is_empty() && update.deletes.is_empty() {
            return Ok(());
        }
        let mut cmd = self.tool(owner, "cyr_dbtool");
        // -n creates the database when the server has none yet (annotations.db on a server
        // where nobody ever set METADATA).
        cmd.arg("-n").arg(&update.db).arg("twoskip").arg("batch");
        self.run(
            cmd,
            &batch_input(&update.records, &update.deletes),
            "cyr_dbtool",
            &format!("batch on {}", update.db.display()),
        )
    }

    /// Message files, then cyrus.annotations, cyrus.header and cyrus.index last: Cyrus trusts
    /// what the index lists, so everything it lists comes first. A mailbox being replaced is
    /// held under Cyrus's exclusive name and index locks throughout, its stale cache removed
    /// (Cyrus rebuilds entries from the message files) and its files that the restored index
    /// does not list removed.
    fn place_mailbox(&self, steps: &CyrusSteps, p: &Planned, out: &mut Outcome) -> Result<()> {
        use crate::spool::lock::{FileLock, LockMethod, LockMode, LockWait};
        let owner = steps.owner;
        // A new mailbox is invisible to Cyrus until its records are written, after `execute`
        // has synced the file systems once; one being replaced is read while it is written.
        let durability = if p.replaces() {
            Durability::Now
        } else {
            Durability::Later
        };
        let mut _locks = Vec::new();
        if let Mode::Replace(existing) = &p.mode {
            let lock_path = steps.spool.lock_path(existing).ok_or_else(|| {
                Error::NotFound(format!(
                    "a name lock path on the target for {}",
                    p.entry.name
                ))
            })?;
            _locks.push(FileLock::lock_lockfile(
                &lock_path,
                &steps.spool.config.mboxname_lockpath,
                LockMode::Exclusive,
                LockMethod::Fcntl,
                LockWait::Forever,
            )?);
            if let Some(l) = FileLock::lock_stable(
                &p.paths.index,
                LockMode::Exclusive,
                LockMethod::Fcntl,
                LockWait::Forever,
            )? {
                _locks.push(l);
            }
        }
        // Under the locks, what is there now is what goes.
        let stale = if p.replaces() {
            p.paths.unlisted()
        } else {
            Vec::new()
        };
        out.writes.extend(p.writes(&stale));
        for (path, r) in &p.paths.messages {
            if p.replaces() && fs::metadata(path).is_ok_and(|m| m.len() == r.size) {
                continue; // a message file never changes under its uid
            }
            match steps.messages.read(&r.guid) {
                Ok(bytes) => {
                    place(path, &bytes, Some(r.internaldate_ns), owner, durability)?;
                    out.count(true, bytes.len());
                }
                Err(e) => {
                    out.bad.push(format!("{} uid {}: {e}", p.entry.name, r.uid));
                    if let Some(lost) = steps.messages.lost(&r.guid, &e) {
                        out.push_lost(lost);
                    }
                }
            }
        }
        for path in &stale {
            fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
        }
        match &p.annotations {
            Some((bytes, mtime)) => place(&p.paths.annotations, bytes, *mtime, owner, durability)?,
            None => remove_if_present(&p.paths.annotations, &Faults::none())?,
        }
        place(
            &p.paths.header,
            &p.header,
            p.header_mtime,
            owner,
            durability,
        )?;
        if p.replaces() {
            remove_if_present(&p.cache(), &Faults::none())?;
        }
        place(&p.paths.index, &p.index, p.index_mtime, owner, durability)?;
        Ok(())
    }

    /// seen, subscriptions, sieve scripts and the quota file, where the target keeps them for
    /// this user (found now that the mailboxes' records are in, since 3.6 files them by the
    /// INBOX's uniqueid).
    fn restore_user_files(
        &self,
        steps: &CyrusSteps,
        plan: &UserFilesPlan,
        out: &mut Outcome,
    ) -> Result<()> {
        let (archive, owner) = (steps.archive, steps.owner);
        let spool = Spool::open(&self.config)?;
        let files = spool.user_files(&steps.user);
        for step in &plan.steps {
            match step {
                UserFileStep::File(kind, e) => {
                    let target = kind.path(&files);
                    out.writes.push(target.display().to_string());
                    match read_all(archive, e) {
                        Ok(bytes) => place(
                            target,
                            &bytes,
                            e.stat.as_deref().map(|s| s.mtime_ns),
                            owner,
                            Durability::Now,
                        )?,
                        Err(err) => lose(archive, e, &err, out),
                    }
                }
                UserFileStep::Refused(name) => out.bad.push(UserFileStep::refusal(name)),
            }
        }
        for (name, e) in &plan.sieve {
            let path = files.sieve_dir.join(name);
            out.writes.push(path.display().to_string());
            match e.kind {
                EntryKind::File => match read_all(archive, e) {
                    Ok(bytes) => place(
                        &path,
                        &bytes,
                        e.stat.as_deref().map(|s| s.mtime_ns),
                        owner,
                        Durability::Now,
                    )?,
                    Err(err) => lose(archive, e, &err, out),
                },
                EntryKind::Symlink => {
                    // defaultbc names a script beside it; anything else would leave the dir.
                    let link = &e.target;
                    if link.is_empty() || link.contains('/') || link.starts_with('.') {
                        out.bad.push(format!(
                            "meta/sieve/{name}: link {link:?} leaves the sieve dir"
                        ));
                        continue;
                    }
                    create_dirs(&files.sieve_dir, owner)?;
                    let _ = fs::remove_file(&path);
                    std::os::unix::fs::symlink(link, &path)
                        .map_err(|e| Error::io("symlink", &path, e))?;
                    owner.apply(&path)?;
                }
            }
        }
        Ok(())
    }
}
