//! One user's backup run: pass 1 (stat, compare, no locks), pass 2 (Cyrus's locks, metadata,
//! unknown message files), names, per-user files, commit.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::names::{self, folder_entry, folder_target, imap_entry, meta_entry, records_bytes};
use super::{same_file, Recorded};
use crate::archive::{file_entry_name, ArchiveWriter, RunSummary, SourceStat};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::spool::cyrusdb::Record;
use crate::spool::lock::{FileLock, LockMode};
use crate::spool::mboxlist::MailboxEntry;
use crate::spool::user::MailboxAnnotations;
use crate::spool::{LockOptions, MetaFile, Spool};
use crate::store::{Archive, StoreWriter};

#[derive(Clone, Debug)]
pub struct UserOptions {
    pub locks: LockOptions,
    /// How often a mailbox that changed under us is read again before it is skipped.
    pub retries: u32,
    pub host: String,
    pub time: i64,
}

/// What one user's run did; also what `--json` prints.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UserReport {
    pub user: String,
    pub run: Option<u64>,
    pub mailboxes: u64,
    pub changed: u64,
    pub skipped: u64,
    pub messages_added: u64,
    /// Message files opened (0 on a run with nothing new).
    pub message_files_read: u64,
    /// Metadata and per-user files read (0 when nothing changed).
    pub metadata_files_read: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    /// The user no longer exists on the server; their names were tombstoned.
    pub gone: bool,
    pub problems: Vec<String>,
}

/// Backs up one user into `store` as one committed run. Problems with single mailboxes or
/// messages are reported and skipped; an error is returned only when the archive itself could
/// not be written (then nothing of this run is committed).
pub fn backup_user(
    spool: &Spool,
    user: &str,
    store: &mut StoreWriter,
    annotations: &MailboxAnnotations,
    options: &UserOptions,
) -> Result<UserReport> {
    let started = Instant::now();
    let start_len = store.archive().committed_len();
    let mut report = UserReport {
        user: user.to_string(),
        ..Default::default()
    };
    let (archive, writer) = store.split();
    let recorded = Recorded::of(archive);
    let mut added: HashSet<Guid> = HashSet::new();
    let mut desired_links: BTreeMap<String, String> = BTreeMap::new();

    let mailboxes: Vec<&MailboxEntry> = spool
        .mailboxes_of(user)
        .filter(|e| !e.is_tombstone() && !e.is_remote())
        .collect();
    for e in mailboxes {
        report.mailboxes += 1;
        let Some(uid) = e.uniqueid.clone() else {
            report.skipped += 1;
            report.problems.push(format!(
                "{}: no uniqueid in the mailbox list (pre-2.5 server); skipped",
                e.name
            ));
            continue;
        };
        desired_links.insert(imap_entry(&e.name), folder_target(&uid));

        // The mailbox list record and mailbox annotations: cheap, no lock, stored on change.
        let mut db_records = vec![Record {
            key: e.raw_key.clone(),
            value: e.raw_value.clone(),
        }];
        if let Some((k, v)) = &e.id_record {
            db_records.push(Record {
                key: k.clone(),
                value: v.clone(),
            });
        }
        store_if_different(
            writer,
            &recorded,
            &folder_entry(&uid, names::FOLDER_MAILBOXES_DB),
            &records_bytes(&db_records.iter().collect::<Vec<_>>()),
            options.time,
        )?;
        let mine: Vec<&Record> = annotations.of(&spool.annotation_key(e)).iter().collect();
        store_if_different(
            writer,
            &recorded,
            &folder_entry(&uid, names::FOLDER_ANNOTATIONS_DB),
            &records_bytes(&mine),
            options.time,
        )?;

        // Pass 1: stat only.
        if !metadata_changed(spool, e, &uid, &recorded) {
            continue;
        }
        report.changed += 1;
        Pass2 {
            spool,
            archive,
            writer,
            added: &mut added,
            options,
            report: &mut report,
        }
        .capture_mailbox(e, &uid)?;
    }

    // Names: new and renamed mailboxes get a link, vanished names a tombstone.
    let old_links: BTreeMap<&str, &str> = recorded.links().collect();
    for (name, target) in &desired_links {
        if old_links.get(name.as_str()) != Some(&target.as_str()) {
            writer.append_symlink(name, target, options.time.max(0) as u64)?;
        }
    }
    for name in old_links.keys() {
        if !desired_links.contains_key(*name) {
            writer.append_symlink(name, "", options.time.max(0) as u64)?;
        }
    }

    backup_user_files(spool, user, &recorded, writer, options, &mut report)?;
    drop(recorded);
    commit(store, options, &mut report, start_len, started)?;
    Ok(report)
}

/// Records that a user is gone from the server: every live name and per-user file tombstoned.
pub fn record_user_gone(
    store: &mut StoreWriter,
    options: &UserOptions,
    user: &str,
) -> Result<Option<UserReport>> {
    let started = Instant::now();
    let start_len = store.archive().committed_len();
    let (archive, writer) = store.split();
    let recorded = Recorded::of(archive);
    let live: Vec<String> = recorded
        .links()
        .map(|(n, _)| n.to_string())
        .chain(
            recorded
                .latest_names()
                .filter(|n| n.starts_with(names::META_DIR))
                .map(str::to_string),
        )
        .collect();
    if live.is_empty() {
        return Ok(None);
    }
    for name in &live {
        writer.append_symlink(name, "", options.time.max(0) as u64)?;
    }
    drop(recorded);
    let mut report = UserReport {
        user: user.to_string(),
        gone: true,
        ..Default::default()
    };
    commit(store, options, &mut report, start_len, started)?;
    Ok(Some(report))
}

fn commit(
    store: &mut StoreWriter,
    options: &UserOptions,
    report: &mut UserReport,
    start_len: u64,
    started: Instant,
) -> Result<()> {
    let mut counts = vec![
        ("mailboxes".to_string(), report.mailboxes),
        ("changed".to_string(), report.changed),
        ("messages".to_string(), report.messages_added),
        ("bytes-read".to_string(), report.bytes_read),
        ("problems".to_string(), report.problems.len() as u64),
    ];
    if report.gone {
        counts.push(("user-gone".to_string(), 1));
    }
    let run = store.commit(&RunSummary {
        time: options.time,
        host: options.host.clone(),
        counts,
        ..Default::default()
    })?;
    report.run = Some(run.run);
    report.bytes_written = run.end - start_len;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(())
}

fn store_if_different(
    writer: &mut ArchiveWriter,
    recorded: &Recorded,
    name: &str,
    bytes: &[u8],
    time: i64,
) -> Result<()> {
    if recorded.get(name).map(|e| e.sha1) == Some(Guid::of(bytes)) {
        return Ok(());
    }
    writer.append_bytes(name, bytes, None, time.max(0) as u64)?;
    Ok(())
}

fn stat_path(path: &Path) -> Option<SourceStat> {
    std::fs::metadata(path).ok().map(|m| SourceStat::of(&m))
}

/// Pass 1: has any metadata file of the mailbox changed since it was stored?
fn metadata_changed(spool: &Spool, e: &MailboxEntry, uid: &str, recorded: &Recorded) -> bool {
    MetaFile::ALL.iter().any(|&f| {
        let now = spool.meta_path(e, f).and_then(|p| stat_path(&p));
        let then = recorded.stat(&folder_entry(uid, f.file_name()));
        match (now, then) {
            (Some(a), Some(b)) => !same_file(&a, &b),
            (None, None) => false,
            _ => true,
        }
    })
}

enum Capture {
    Done,
    /// A live record's file vanished: the mailbox changed under us; read it again.
    Again,
}

/// What pass 2 of one user's run works with.
struct Pass2<'a> {
    spool: &'a Spool,
    archive: &'a Archive,
    writer: &'a mut ArchiveWriter,
    /// Message files appended in this run, not yet committed.
    added: &'a mut HashSet<Guid>,
    options: &'a UserOptions,
    report: &'a mut UserReport,
}

impl Pass2<'_> {
    /// Pass 2 for one mailbox, with bounded retries.
    fn capture_mailbox(&mut self, e: &MailboxEntry, uid: &str) -> Result<()> {
        for _ in 0..=self.options.retries {
            match self.capture_once(e, uid)? {
                Capture::Done => return Ok(()),
                Capture::Again => continue,
            }
        }
        self.report.skipped += 1;
        self.report.problems.push(format!(
            "{}: changed on every one of {} reads; skipped this run",
            e.name,
            self.options.retries + 1
        ));
        Ok(())
    }

    fn capture_once(&mut self, e: &MailboxEntry, uid: &str) -> Result<Capture> {
        let (snap, name_lock) = match self.spool.read_mailbox(e, &self.options.locks) {
            Ok(x) => x,
            Err(Error::Busy { path }) => {
                self.report.skipped += 1;
                self.report.problems.push(format!(
                    "{}: {} stayed locked; skipped this run",
                    e.name,
                    path.display()
                ));
                return Ok(Capture::Done);
            }
            Err(
                err @ (Error::Corrupt { .. }
                | Error::NotFound(_)
                | Error::Unsupported { .. }
                | Error::Changed { .. }),
            ) => {
                self.report.skipped += 1;
                self.report
                    .problems
                    .push(format!("{}: {err}; skipped this run", e.name));
                return Ok(Capture::Done);
            }
            Err(err) => return Err(err),
        };
        self.report.metadata_files_read += 2 + snap.annotations_bytes.is_some() as u64;
        self.report.bytes_read += (snap.header_bytes.len()
            + snap.index_bytes.len()
            + snap.annotations_bytes.as_ref().map_or(0, Vec::len))
            as u64;

        // Message files first: a stored index must never reference a message the self.archive lacks.
        // The shared name lock is held throughout, so Cyrus unlinks none of them meanwhile.
        let data_dir = self.spool.mailbox_dir(e);
        let archive_dir = self.spool.archive_dir(e);
        let mut bad = false;
        for r in snap.index.records.iter().filter(|r| !r.is_unlinked()) {
            if r.guid.is_zero() || self.added.contains(&r.guid) || self.archive.has_file(&r.guid) {
                continue;
            }
            let dir = if r.is_archived() {
                archive_dir.as_ref()
            } else {
                data_dir.as_ref()
            };
            let Some(path) = dir.map(|d| d.join(r.message_file_name())) else {
                self.report.problems.push(format!(
                    "{}: uid {} has no directory to read from",
                    e.name, r.uid
                ));
                bad = true;
                continue;
            };
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    if r.is_expunged() {
                        continue; // cleaned up between the index read and now: nothing to keep
                    }
                    drop(name_lock);
                    return Ok(Capture::Again);
                }
                Err(err) => {
                    self.report
                        .problems
                        .push(Error::io("open", &path, err).to_string());
                    bad = true;
                    continue;
                }
            };
            let meta = file
                .metadata()
                .map_err(|err| Error::io("stat", &path, err))?;
            self.report.message_files_read += 1;
            self.report.bytes_read += meta.len();
            let mtime = (r.internaldate_ns.max(0) / 1_000_000_000) as u64;
            match self.writer.append_reader(
                &file_entry_name(&r.guid),
                &mut file,
                meta.len(),
                Some(r.guid),
                None,
                mtime,
            )? {
                Ok(_) => {
                    self.added.insert(r.guid);
                    self.report.messages_added += 1;
                }
                Err(rejected) => {
                    self.report.problems.push(format!(
                        "{}: uid {} ({}): {}; the mailbox's metadata is not stored this run",
                        e.name,
                        r.uid,
                        path.display(),
                        rejected.0
                    ));
                    bad = true;
                }
            }
        }
        drop(name_lock);
        if bad {
            self.report.skipped += 1;
            return Ok(Capture::Done);
        }
        let time = self.options.time.max(0) as u64;
        let files: [(MetaFile, Option<&Vec<u8>>); 3] = [
            (MetaFile::Header, Some(&snap.header_bytes)),
            (MetaFile::Index, Some(&snap.index_bytes)),
            (MetaFile::Annotations, snap.annotations_bytes.as_ref()),
        ];
        for (i, (file, bytes)) in files.into_iter().enumerate() {
            let name = folder_entry(uid, file.file_name());
            // No annotations file yet means nothing to store for it either.
            if let Some(bytes) = bytes {
                let mtime =
                    snap.stats[i].map_or(time, |s| (s.mtime_ns.max(0) / 1_000_000_000) as u64);
                self.writer
                    .append_bytes(&name, bytes, snap.stats[i], mtime)?;
            }
        }
        Ok(Capture::Done)
    }
}

/// Seen, subscriptions, quota, the sieve index and the sieve directory, each read under a shared
/// lock when its stat changed.
fn backup_user_files(
    spool: &Spool,
    user: &str,
    recorded: &Recorded,
    writer: &mut ArchiveWriter,
    options: &UserOptions,
    report: &mut UserReport,
) -> Result<()> {
    let files = spool.user_files(user);
    let mut present: Vec<(String, PathBuf)> = vec![
        (meta_entry("seen"), files.seen.clone()),
        (meta_entry("sub"), files.sub.clone()),
        (meta_entry("quota"), files.quota.clone()),
        (meta_entry("dav.db"), files.dav.clone()),
    ];
    if let Ok(dir) = std::fs::read_dir(&files.sieve_dir) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if crate::archive::check_name(&name).is_ok() {
                present.push((meta_entry(&format!("sieve/{name}")), entry.path()));
            }
        }
    }
    let mut seen_names = HashSet::new();
    for (entry, path) in present {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        seen_names.insert(entry.clone());
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| Error::io("readlink", &path, e))?;
            let target = target.to_string_lossy().into_owned();
            let old = recorded.get(&entry).map(|e| e.target.clone());
            if old.as_deref() != Some(target.as_str())
                && crate::archive::check_name(&target).is_ok()
            {
                writer.append_symlink(&entry, &target, options.time.max(0) as u64)?;
            }
            continue;
        }
        let now = SourceStat::of(&meta);
        if recorded
            .stat(&entry)
            .is_some_and(|then| same_file(&now, &then))
        {
            continue;
        }
        let lock = match FileLock::lock_stable(
            &path,
            LockMode::Shared,
            options.locks.method,
            options.locks.wait,
        ) {
            Ok(Some(lock)) => lock,
            Ok(None) => continue,
            Err(err) => {
                report.problems.push(format!("{user}: {err}"));
                continue;
            }
        };
        let stat = SourceStat::of(
            &lock
                .file()
                .metadata()
                .map_err(|e| Error::io("stat", &path, e))?,
        );
        let mut bytes = Vec::with_capacity(stat.size as usize);
        io::Read::read_to_end(&mut lock.file(), &mut bytes)
            .map_err(|e| Error::io("read", &path, e))?;
        drop(lock);
        report.metadata_files_read += 1;
        report.bytes_read += bytes.len() as u64;
        writer.append_bytes(
            &entry,
            &bytes,
            Some(stat),
            (stat.mtime_ns.max(0) / 1_000_000_000) as u64,
        )?;
    }
    // Per-user files that disappeared (a sieve script deleted, ...).
    for name in recorded
        .latest_names()
        .filter(|n| n.starts_with(names::META_DIR))
    {
        if !seen_names.contains(name) {
            writer.append_symlink(name, "", options.time.max(0) as u64)?;
        }
    }
    Ok(())
}
