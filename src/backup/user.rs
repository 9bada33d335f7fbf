//! One user's backup run: pass 1 (stat, compare, no locks), pass 2 (Cyrus's locks, metadata,
//! unknown message files), names, per-user files, commit.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use super::{same_file, Recorded};
use crate::agent::{MailboxListing, Source, UserFileListing};
use crate::archive::{file_entry_name, Appended, ArchiveWriter, RunSummary};
use crate::entries::{self, folder_entry, folder_target, imap_entry, index_delta, records_bytes};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::progress::Tally;
use crate::spool::{MetaFile, Owner};
use crate::store::{Archive, StoreWriter};

#[derive(Clone, Debug)]
pub struct UserOptions {
    /// How often a mailbox that changed under us is read again before it is skipped.
    pub retries: u32,
    pub host: String,
    pub time: i64,
    /// Write the tombstones even when a run would tombstone a large share of the archive's
    /// mailboxes at once (`MASS_DELETE_*`); `--allow-mass-delete`.
    pub allow_mass_delete: bool,
    /// Commit a run that stores nothing with `StoreWriter::commit_grouped`: the caller then
    /// makes it durable with `sync_group`, together with other owners' such runs.
    pub group_commit: bool,
}

/// A run that would tombstone more than half of the archive's live mailboxes, and at least
/// `MASS_DELETE_MIN` of them, writes no tombstone at all (rsync's `--max-delete`, as a share).
/// People delete folders one or a few at a time; a mailboxes.db that is empty, truncated or from
/// another server, or a spool whose partition is not mounted, makes them all vanish at once, and
/// a tombstone is what later lets the compactor drop the mail. Refusing wrongly costs one rerun
/// with `--allow-mass-delete`; accepting wrongly can cost the mail. Renames keep the mailbox's
/// uniqueid and do not count; neither do `DELETED.` mailboxes that Cyrus expires.
pub const MASS_DELETE_SHARE_PERCENT: usize = 50;
/// The fewest vanishing mailboxes that can be a mass deletion: a user with two or three folders
/// may delete one or two of them.
pub const MASS_DELETE_MIN: usize = 2;

/// What one user's run did; also what `--json` prints.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UserReport {
    /// The userid, or the shared tree's name when `shared`.
    pub user: String,
    /// The archive is a shared tree's (formats/backup-entries.md, "Shared mailboxes").
    pub shared: bool,
    /// The archive is the server's own (its server-wide annotations); `user` is `%server`.
    pub server: bool,
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
    /// Bytes exchanged with the agent during this user's run (0 for a local backup). The
    /// requests for the next users' listings, sent before this run commits, count here; a
    /// listing counts for the run that read it off the wire. Summed over a backup, exact.
    pub wire_bytes: u64,
    pub bytes_written: u64,
    /// Entries the run stored: 0 when it committed only its marker (nothing changed).
    pub entries_stored: u64,
    pub seconds: f64,
    /// The user no longer exists on the server; their names were tombstoned.
    pub gone: bool,
    /// Entries a `mailpack repair` had lost (its `repairs/<n>` entry) that this run stored again
    /// from the spool.
    pub healed: u64,
    /// The run would have tombstoned too many mailboxes at once and wrote no tombstone.
    pub mass_delete_refused: bool,
    pub problems: Vec<String>,
}

/// After a repair: which entry names the repair lost, and which of them this run stored again.
struct Healing {
    lost: Option<std::collections::BTreeSet<String>>,
    healed: std::collections::BTreeSet<String>,
}

impl Healing {
    /// A full pass: every mailbox and per-user file is read, whatever its stat says, so what the
    /// spool still has and the archive lost is stored again.
    fn full_pass(&self) -> bool {
        self.lost.is_some()
    }

    fn stored(&mut self, name: &str) {
        if self.lost.as_ref().is_some_and(|l| l.contains(name)) {
            self.healed.insert(name.to_string());
        }
    }
}

/// Backs up one user into `store` as one committed run, reading through `source` (the spool
/// in process, or an agent on the mail host). Problems with single mailboxes or messages are
/// reported and skipped; an error is returned only when the archive could not be written or
/// the source failed as a whole (then nothing of this run is committed).
///
/// `next_users` is asked, once this run needs nothing more from `source`, which users the caller
/// will back up next through it (given this run's report so far, to judge how long they may
/// take); their listings are asked for before this run commits.
///
/// `progress` follows the report's `bytes_read` and `messages_added` as the run goes.
pub fn backup_user(
    source: &mut dyn Source,
    owner: &Owner,
    store: &mut StoreWriter,
    options: &UserOptions,
    next_users: &mut dyn FnMut(&UserReport) -> Vec<Owner>,
    progress: &Tally,
) -> Result<UserReport> {
    let started = Instant::now();
    let start_len = store.archive().committed_len();
    let mut report = UserReport {
        user: owner.name().to_string(),
        shared: owner.is_shared(),
        server: *owner == Owner::Server,
        ..Default::default()
    };
    let traffic_before = source.traffic();
    let listing = source.list_owner(owner)?;
    let (archive, writer) = store.split();
    let recorded = Recorded::of(archive)?;
    let old_links: BTreeMap<&str, &str> = recorded.links().collect();
    let mut healing = Healing {
        lost: archive.repair_losses().unwrap_or_else(|e| {
            // Which entries were lost is unknown: a full pass stores whatever may be missing.
            report.problems.push(format!(
                "the list of entries the last repair lost does not read ({e}); reading every \
                 mailbox again"
            ));
            Some(Default::default())
        }),
        healed: Default::default(),
    };
    // `verify --against-spool` found something missing: a full pass, as after a repair.
    if healing.lost.is_none() && crate::store::status::heal_requested(&archive.paths().archive) {
        healing.lost = Some(Default::default());
    }
    let mut added: HashSet<Guid> = HashSet::new();
    let mut desired_links: BTreeMap<String, String> = BTreeMap::new();

    for m in &listing.mailboxes {
        report.mailboxes += 1;
        let Some(uid) = m.uniqueid.clone() else {
            report.skipped += 1;
            report.problems.push(format!(
                "{}: no uniqueid in the mailbox list (pre-2.5 server); skipped",
                m.name
            ));
            continue;
        };
        let link = imap_entry(&m.name);

        // Listed in mailboxes.db but without its files: an unmounted or wrong partition, or a
        // damaged mailbox. Reported every run, never taken as "unchanged", and its name is not
        // tombstoned (nor newly linked to a folder holding nothing).
        // `stats` is in `MetaFile::ALL` order: header, index, annotations.
        let absent: Vec<&str> = [(0, MetaFile::Header), (1, MetaFile::Index)]
            .into_iter()
            .filter(|(i, _)| m.stats[*i].is_none())
            .map(|(_, f)| f.file_name())
            .collect();
        if !absent.is_empty() {
            report.skipped += 1;
            report.problems.push(format!(
                "{} ({uid}): listed in mailboxes.db, but the spool has no {} for it (partition \
                 not mounted, or the mailbox damaged); skipped this run",
                m.name,
                absent.join(" and ")
            ));
            if let Some(old) = old_links.get(link.as_str()) {
                desired_links.insert(link, old.to_string());
            }
            continue;
        }
        desired_links.insert(link, folder_target(&uid));

        // The mailbox list records and mailbox annotations came with the listing: stored when
        // they differ from the last stored copy.
        for (file, records) in [
            (entries::FOLDER_MAILBOXES_DB, &m.records),
            (entries::FOLDER_ANNOTATIONS_DB, &m.annotations),
        ] {
            let name = folder_entry(&uid, file);
            let bytes = records_bytes(&records.iter().collect::<Vec<_>>());
            if store_if_different(writer, &recorded, &name, &bytes, options.time)? {
                healing.stored(&name);
            }
        }

        // Pass 1: the stats the listing carries.
        if !healing.full_pass() && !metadata_changed(m, &uid, &recorded) {
            continue;
        }
        report.changed += 1;
        Pass2 {
            source: &mut *source,
            archive,
            recorded: &recorded,
            writer,
            added: &mut added,
            options,
            report: &mut report,
            healing: &mut healing,
            progress,
        }
        .capture_mailbox(owner, m, &uid)?;
        progress.reached(report.bytes_read, report.messages_added);
    }

    // Names: new and renamed mailboxes get a link, vanished names a tombstone, unless that many
    // vanish at once that the spool, not the user, is more likely what changed.
    let time = options.time.max(0) as u64;
    for (name, target) in &desired_links {
        if old_links.get(name.as_str()) != Some(&target.as_str()) {
            writer.append_symlink(name, target, time)?;
            healing.stored(name);
        }
    }
    let refusal = mass_delete(&old_links, &desired_links);
    let tombstones = match refusal {
        Some((vanishing, live)) if !options.allow_mass_delete => {
            report.mass_delete_refused = true;
            report.problems.push(format!(
                "{vanishing} of the {live} mailboxes in the archive are gone from the server at \
                 once: more likely an emptied or wrong mailboxes.db or an unmounted partition \
                 than deletions, so no name was tombstoned this run; if they really were \
                 deleted, run again with --allow-mass-delete"
            ));
            false
        }
        _ => true,
    };
    if tombstones {
        for name in old_links.keys() {
            if !desired_links.contains_key(*name) {
                writer.append_symlink(name, "", time)?;
            }
        }
    }

    let mut listed_files = backup_user_files(
        source,
        &listing.user_files,
        &recorded,
        writer,
        time,
        &mut report,
        &mut healing,
    )?;
    if *owner == Owner::Server {
        // The server's own annotations: one entry, stored when it differs.
        let records = source.server_annotations()?;
        let bytes = records_bytes(&records.iter().collect::<Vec<_>>());
        let name = entries::meta_entry(entries::SERVER_ANNOTATIONS);
        if store_if_different(writer, &recorded, &name, &bytes, options.time)? {
            healing.stored(&name);
        }
        listed_files.insert(name);
    }
    if tombstones {
        // Per-user files that disappeared (a sieve script deleted, ...).
        for name in recorded
            .latest_names()
            .filter(|n| n.starts_with(entries::META_DIR) && !listed_files.contains(*n))
        {
            writer.append_symlink(name, "", time)?;
        }
    }
    report.healed = healing.healed.len() as u64;
    drop(recorded);
    // Over ssh the next listings' round trip then overlaps this commit (and, for a run with
    // entries, its sync). A request that cannot be sent is not this run's failure: the session
    // is broken, and the next user's own request reports it.
    let next = next_users(&report);
    if !next.is_empty() {
        let _ = source.list_ahead(&next);
    }
    let traffic = source.traffic();
    report.wire_bytes = traffic.0 + traffic.1 - traffic_before.0 - traffic_before.1;
    progress.reached(report.bytes_read, report.messages_added);
    commit(store, options, &mut report, start_len, started)?;
    Ok(report)
}

/// Records that a user is gone from the server: every live name and per-user file tombstoned.
pub fn record_user_gone(
    store: &mut StoreWriter,
    options: &UserOptions,
    owner: &Owner,
) -> Result<Option<UserReport>> {
    let started = Instant::now();
    let start_len = store.archive().committed_len();
    let (archive, writer) = store.split();
    let recorded = Recorded::of(archive)?;
    let live: Vec<String> = recorded
        .links()
        .map(|(n, _)| n.to_string())
        .chain(
            recorded
                .latest_names()
                .filter(|n| n.starts_with(entries::META_DIR))
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
        user: owner.name().to_string(),
        shared: owner.is_shared(),
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
    report.entries_stored = store.writer().pending_entries() as u64;
    let summary = RunSummary {
        time: options.time,
        host: options.host.clone(),
        counts,
        ..Default::default()
    };
    let run = if options.group_commit {
        store.commit_grouped(&summary)?
    } else {
        store.commit(&summary)?.run
    };
    report.run = Some(run);
    report.bytes_written = store.writer().written() - start_len;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(())
}

/// Appends `bytes` as `name` unless the latest stored version holds the same; says whether it did.
fn store_if_different(
    writer: &mut ArchiveWriter,
    recorded: &Recorded,
    name: &str,
    bytes: &[u8],
    time: i64,
) -> Result<bool> {
    if recorded.get(name).map(|e| e.sha1) == Some(Guid::of(bytes)) {
        return Ok(false);
    }
    writer.append_bytes(name, bytes, None, time.max(0) as u64)?;
    Ok(true)
}

/// Whether tombstoning the links that are not desired any more would be a mass deletion
/// (`MASS_DELETE_*`): then `(vanishing, live)` mailboxes. Mailboxes are counted by the folder a
/// link names, so a rename (same uniqueid, new name) vanishes nothing; names of deleted
/// mailboxes (`DELETED.user...`, which Cyrus expires on its own schedule) are left out of both
/// counts.
fn mass_delete(
    old_links: &BTreeMap<&str, &str>,
    desired: &BTreeMap<String, String>,
) -> Option<(usize, usize)> {
    let kept: HashSet<&str> = desired.values().map(String::as_str).collect();
    let live: HashSet<&str> = old_links
        .iter()
        .filter(|(name, _)| !is_deleted_mailbox(name))
        .map(|(_, target)| *target)
        .collect();
    let vanishing = live.iter().filter(|t| !kept.contains(*t)).count();
    (vanishing >= MASS_DELETE_MIN && vanishing * 100 > live.len() * MASS_DELETE_SHARE_PERCENT)
        .then_some((vanishing, live.len()))
}

/// `imap/DELETED/user/...`: a user's mailbox lives under `user.`; one deleted with
/// `delete_mode: delayed` under `<deletedprefix>.user.`, whatever the prefix is.
fn is_deleted_mailbox(link: &str) -> bool {
    entries::parse_imap_entry(link).is_some_and(|n| {
        n.parts.first().map(String::as_str) != Some("user")
            && n.parts.get(1).map(String::as_str) == Some("user")
    })
}

/// Pass 1: has any metadata file of the mailbox changed since it was stored?
fn metadata_changed(m: &MailboxListing, uid: &str, recorded: &Recorded) -> bool {
    MetaFile::ALL.iter().enumerate().any(|(i, f)| {
        let then = match f {
            // A delta carries the stat of the index file it stands for.
            MetaFile::Index => recorded
                .index_entry(uid)
                .and_then(|e| e.stat.as_deref().copied()),
            _ => recorded.stat(&folder_entry(uid, f.file_name())),
        };
        match (m.stats[i], then) {
            (Some(a), Some(b)) => !same_file(&a, &b),
            (None, None) => false,
            _ => true,
        }
    })
}

enum Capture {
    Done,
    /// Live records' files are not in the spool (uid, where the file was looked for): the
    /// mailbox may have changed under us, so it is read again; if they stay missing they are
    /// reported as missing.
    Missing(Vec<(u32, String)>),
}

/// A record of a mailbox's index whose message file a run must fetch: what of it the fetch needs.
struct WantedMessage {
    uid: u32,
    guid: Guid,
    archived: bool,
    expunged: bool,
    internaldate_ns: i64,
}

/// What pass 2 of one user's run works with.
struct Pass2<'a> {
    source: &'a mut dyn Source,
    archive: &'a Archive,
    recorded: &'a Recorded,
    writer: &'a mut ArchiveWriter,
    /// Message files appended in this run, not yet committed.
    added: &'a mut HashSet<Guid>,
    options: &'a UserOptions,
    report: &'a mut UserReport,
    healing: &'a mut Healing,
    progress: &'a Tally,
}

/// Errors that concern one mailbox or file on the mail host: reported, and the run goes on.
/// Anything else (the archive, or the agent session itself) ends the user's run.
fn is_local_problem(e: &Error) -> bool {
    matches!(
        e,
        Error::Busy { .. }
            | Error::Corrupt { .. }
            | Error::NotFound(_)
            | Error::Unsupported { .. }
            | Error::Changed { .. }
            | Error::Io { .. }
    )
}

impl Pass2<'_> {
    /// Pass 2 for one mailbox, with bounded retries.
    fn capture_mailbox(&mut self, owner: &Owner, m: &MailboxListing, uid: &str) -> Result<()> {
        let mut missing = Vec::new();
        for _ in 0..=self.options.retries {
            match self.capture_once(owner, m, uid)? {
                Capture::Done => return Ok(()),
                Capture::Missing(files) => missing = files,
            }
        }
        self.report.skipped += 1;
        for (msg_uid, path) in missing {
            self.report.problems.push(format!(
                "{}: uid {msg_uid}: message file {path} is missing (cyrus.index lists it, the \
                 spool has no such file; {} reads); the mailbox's metadata is not stored this run",
                m.name,
                self.options.retries + 1
            ));
        }
        Ok(())
    }

    fn capture_once(&mut self, owner: &Owner, m: &MailboxListing, uid: &str) -> Result<Capture> {
        let opened = match self.source.open_mailbox(owner, uid) {
            Ok(x) => x,
            Err(Error::Busy { path }) => {
                self.report.skipped += 1;
                self.report.problems.push(format!(
                    "{}: {} stayed locked; skipped this run",
                    m.name,
                    path.display()
                ));
                return Ok(Capture::Done);
            }
            Err(err) if is_local_problem(&err) => {
                self.report.skipped += 1;
                self.report
                    .problems
                    .push(format!("{}: {err}; skipped this run", m.name));
                return Ok(Capture::Done);
            }
            Err(err) => return Err(err),
        };
        self.report.metadata_files_read += 2 + opened.annotations.is_some() as u64;
        self.report.bytes_read += (opened.header.len()
            + opened.index.len()
            + opened.annotations.as_ref().map_or(0, Vec::len))
            as u64;
        // Message files first: a stored index must never reference a message the archive
        // lacks. The source holds the shared name lock meanwhile, so Cyrus unlinks none.
        // Records are decoded one at a time and only those whose message must be fetched are
        // kept, in a few bytes each: a parsed million-record index would cost more than its
        // bytes (issue 19, flat memory).
        let mut bad = false;
        let mut missing = Vec::new();
        let walked = crate::spool::index::parse_records(&opened.index).and_then(|(_, records)| {
            let mut wanted = Vec::new();
            for r in records {
                let r = r?;
                let have = r.is_unlinked()
                    || r.guid.is_zero()
                    || self.added.contains(&r.guid)
                    || self.recorded.has_file(&r.guid);
                if !have {
                    wanted.push(WantedMessage {
                        uid: r.uid,
                        guid: r.guid,
                        archived: r.is_archived(),
                        expunged: r.is_expunged(),
                        internaldate_ns: r.internaldate_ns,
                    });
                }
            }
            // One fetch per message, the record with its lowest uid: sorted by SHA-1 to drop
            // the others, then back into uid order, the index's (a set of every SHA-1 seen
            // would cost more than the list).
            wanted.sort_unstable_by_key(|w| (w.guid, w.uid));
            wanted.dedup_by_key(|w| w.guid);
            wanted.sort_unstable_by_key(|w| w.uid);
            Ok(wanted)
        });
        let wanted = match walked {
            Ok(wanted) => wanted,
            Err(err) => {
                self.source.close_mailbox()?;
                self.report.skipped += 1;
                self.report
                    .problems
                    .push(format!("{}: cyrus.index: {err}; skipped this run", m.name));
                return Ok(Capture::Done);
            }
        };
        // Asked for all at once, so a remote agent streams them without a round trip each.
        self.source.prefetch(
            &wanted
                .iter()
                .map(|r| (r.uid, r.guid, r.archived))
                .collect::<Vec<_>>(),
        )?;
        for r in wanted {
            let fetched = match self.source.fetch_message(r.uid, &r.guid, r.archived) {
                Ok(f) => f,
                Err(err) if is_local_problem(&err) => {
                    self.report
                        .problems
                        .push(format!("{}: uid {}: {err}", m.name, r.uid));
                    bad = true;
                    continue;
                }
                Err(err) => return Err(err),
            };
            let Some(mut file) = fetched else {
                if !r.expunged {
                    // The other files are still stored this time; a read again only asks for
                    // what is still missing.
                    missing.push((r.uid, r.archived));
                } // else cleaned up between the index read and now: nothing to keep
                continue;
            };
            self.report.message_files_read += 1;
            self.report.bytes_read += file.size;
            let mtime = (r.internaldate_ns.max(0) / 1_000_000_000) as u64;
            let appended = self.writer.append_reader(
                &file_entry_name(&r.guid),
                &mut file.reader,
                file.size,
                Some(r.guid),
                None,
                mtime,
            )?;
            drop(file);
            match appended {
                Appended::Stored(_) => {
                    self.added.insert(r.guid);
                    self.report.messages_added += 1;
                    self.healing.stored(&file_entry_name(&r.guid));
                }
                Appended::Rejected(rejected) => {
                    self.report.problems.push(format!(
                        "{}: uid {}: {}; the mailbox's metadata is not stored this run",
                        m.name, r.uid, rejected.0
                    ));
                    bad = true;
                }
            }
            self.progress
                .reached(self.report.bytes_read, self.report.messages_added);
        }
        let missing: Vec<(u32, String)> = missing
            .into_iter()
            .map(|(uid, archived)| (uid, self.source.message_file(uid, archived)))
            .collect();
        self.source.close_mailbox()?;
        if bad {
            self.report.skipped += 1;
            for (msg_uid, path) in missing {
                self.report.problems.push(format!(
                    "{}: uid {msg_uid}: message file {path} is missing (cyrus.index lists it, \
                     the spool has no such file)",
                    m.name
                ));
            }
            return Ok(Capture::Done);
        }
        if !missing.is_empty() {
            return Ok(Capture::Missing(missing));
        }
        let time = self.options.time.max(0) as u64;
        let files: [(MetaFile, Option<&Vec<u8>>); 3] = [
            (MetaFile::Header, Some(&opened.header)),
            (MetaFile::Index, Some(&opened.index)),
            (MetaFile::Annotations, opened.annotations.as_ref()),
        ];
        for (i, (file, bytes)) in files.into_iter().enumerate() {
            let name = folder_entry(uid, file.file_name());
            // No annotations file yet means nothing to store for it either.
            if let Some(bytes) = bytes {
                let mtime =
                    opened.stats[i].map_or(time, |s| (s.mtime_ns.max(0) / 1_000_000_000) as u64);
                if file == MetaFile::Index {
                    if let Some(delta) = self.index_delta(m, uid, bytes) {
                        let delta_name = entries::index_names(uid).1;
                        self.writer
                            .append_bytes(&delta_name, &delta, opened.stats[i], mtime)?;
                        self.healing.stored(&delta_name);
                        continue;
                    }
                }
                self.writer
                    .append_bytes(&name, bytes, opened.stats[i], mtime)?;
                self.healing.stored(&name);
                if file == MetaFile::Index {
                    // A full copy supersedes a delta a repair lost.
                    self.healing.stored(&entries::index_names(uid).1);
                }
            }
        }
        Ok(Capture::Done)
    }

    /// The index delta to store for the mailbox's new `cyrus.index` bytes, when the rules of
    /// formats/backup-entries.md ("Index deltas") allow one; `None`: store a full copy. The
    /// newest stored version is read back (full copy and the deltas after it, every SHA-1
    /// checked); if it does not read, the problem is reported and a full copy starts over.
    fn index_delta(&mut self, m: &MailboxListing, uid: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        if bytes.len() < index_delta::DELTA_MIN_INDEX || self.healing.full_pass() {
            return None;
        }
        let chain: Vec<&crate::archive::EntryRecord> =
            self.recorded.index_chain(uid)?.iter().collect();
        if chain.len() > index_delta::DELTA_CHAIN_FULL_EVERY {
            return None;
        }
        // The stored version streams past the new bytes block by block, so it is never held
        // (issue 19, flat memory); a delta ruled out half way stops the read.
        let mut encoder = index_delta::Encoder::new(bytes)?;
        let mut ruled_out = false;
        let streamed = crate::folders::open_version(self.archive, &chain).and_then(|version| {
            version.stream(&mut |piece| {
                if encoder.base_piece(piece) {
                    Ok(())
                } else {
                    ruled_out = true;
                    Err(Error::refused("no delta"))
                }
            })?;
            Ok((version.len, version.sha1))
        });
        match streamed {
            Ok((len, sha1)) => encoder.finish(len, &sha1),
            Err(_) if ruled_out => None,
            Err(err) => {
                self.report.problems.push(format!(
                    "{}: the stored cyrus.index does not read back ({err}); stored a full copy",
                    m.name
                ));
                None
            }
        }
    }
}

/// Seen, subscriptions, quota, the sieve index and the sieve directory: each read (under a
/// shared lock, by the source) when its stat changed since it was stored. Returns the names the
/// server listed, for the caller to tombstone those that disappeared.
fn backup_user_files(
    source: &mut dyn Source,
    listed: &[UserFileListing],
    recorded: &Recorded,
    writer: &mut ArchiveWriter,
    time: u64,
    report: &mut UserReport,
    healing: &mut Healing,
) -> Result<HashSet<String>> {
    let user = report.user.clone();
    let mut seen_names = HashSet::new();
    for f in listed {
        if crate::archive::check_name(&f.entry).is_err() || !f.entry.starts_with(entries::META_DIR)
        {
            report
                .problems
                .push(format!("{user}: {:?} is not a per-user file name", f.entry));
            continue;
        }
        seen_names.insert(f.entry.clone());
        if let Some(target) = &f.link {
            let old = recorded.get(&f.entry).map(|e| e.target.clone());
            if old.as_deref() != Some(target.as_str()) && crate::archive::check_name(target).is_ok()
            {
                writer.append_symlink(&f.entry, target, time)?;
                healing.stored(&f.entry);
            }
            continue;
        }
        if !healing.full_pass()
            && recorded
                .stat(&f.entry)
                .is_some_and(|then| same_file(&f.stat, &then))
        {
            continue;
        }
        let (bytes, stat) = match source.read_user_file(&user, &f.entry) {
            Ok(Some(x)) => x,
            Ok(None) => continue,
            Err(err) if is_local_problem(&err) => {
                report.problems.push(format!("{user}: {err}"));
                continue;
            }
            Err(err) => return Err(err),
        };
        report.metadata_files_read += 1;
        report.bytes_read += bytes.len() as u64;
        writer.append_bytes(
            &f.entry,
            &bytes,
            Some(stat),
            (stat.mtime_ns.max(0) / 1_000_000_000) as u64,
        )?;
        healing.stored(&f.entry);
    }
    Ok(seen_names)
}
