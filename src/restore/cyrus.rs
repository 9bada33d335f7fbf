//! Exact restore into a Cyrus 3.6 server, running or not (formats/restore.md, "Into Cyrus"):
//! the mailbox's files are placed where the target's own layout wants them, then its
//! `mailboxes.db` records (`I<uniqueid>` first, then `N<name>`, which makes it visible) and its
//! `annotations.db` rows are written through Cyrus's `cyr_dbtool batch`, which locks the
//! databases as Cyrus does and is binary-safe; then `quota -f` recounts usage. A mailbox that
//! exists on the target is touched only with `replace`, and then under Cyrus's exclusive locks.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{folder_records, read_all, restorable, LostEntry, MailboxAt, Messages};
use crate::archive::EntryKind;
use crate::entries::{FOLDER_ANNOTATIONS_DB, FOLDER_MAILBOXES_DB};
use crate::error::{Error, Result};
use crate::io::{remove_if_present, Faults};
use crate::spool::cyrusdb::Record;
use crate::spool::mboxlist::{MailboxEntry, Mboxlist, MboxlistFormat};
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
}

/// What a restore into Cyrus wrote (or, dry, would write).
#[derive(Debug, Default, serde::Serialize)]
pub struct CyrusOutcome {
    pub mailboxes: Vec<String>,
    pub messages_written: u64,
    pub bad_messages: Vec<String>,
    /// Archive entries that failed their checks; a mailbox whose metadata is among them is not
    /// restored, the others are.
    pub lost: Vec<LostEntry>,
    pub user_files: Vec<String>,
    /// Every file and database record, in the order written.
    pub writes: Vec<String>,
}

/// The uid and gid that own the server's files (those of its configdirectory): everything the
/// restore creates gets them, so Cyrus can use it, and Cyrus's tools run as them.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Owner {
    fn of(path: &Path) -> Result<Owner> {
        let m = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
        Ok(Owner {
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    fn apply(&self, path: &Path) -> Result<()> {
        if unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| Error::io("chown", path, e))
    }
}

/// Creates the directories of `path` that are missing, owned like the server's.
fn create_dirs(path: &Path, owner: Owner) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.exists() {
        missing.push(p.to_path_buf());
        p = match p.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    for dir in missing.iter().rev() {
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => owner.apply(dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create", dir, e)),
        }
    }
    Ok(())
}

/// Writes a file beside its final name and renames it there, owned like the server's files,
/// with `mtime` (Cyrus reports a mailbox's index mtime as its `lastupdate`). The temporary name
/// is fresh and created exclusively, never through a link planted at a predictable name.
fn place(path: &Path, bytes: &[u8], mtime_ns: Option<i64>, owner: Owner) -> Result<()> {
    let dir = crate::io::parent_dir(path);
    create_dirs(&dir, owner)?;
    let (tmp, mut file) = create_temp_beside(path)?;
    let written = (|| {
        file.write_all(bytes)
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io("write", &tmp, e))?;
        if let Some(ns) = mtime_ns {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
            file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
                .map_err(|e| Error::io("set the time of", &tmp, e))?;
        }
        owner.apply(&tmp)?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// A new file `<name>.mailpack-<random>` beside `path`, created with O_EXCL and O_NOFOLLOW.
fn create_temp_beside(path: &Path) -> Result<(PathBuf, fs::File)> {
    // A handful of tries: a clash with 64 random bits means someone is guessing, not chance.
    for _ in 0..4 {
        let id = crate::io::random_id()?;
        let suffix: String = id[..8].iter().map(|b| format!("{b:02x}")).collect();
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".mailpack-{suffix}"));
        let tmp = path.with_file_name(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create", &tmp, e)),
        }
    }
    Err(Error::usage(format!(
        "{}: could not create a fresh temporary name beside it",
        path.display()
    )))
}

/// Reports a user file that failed its checks; the restore goes on without it.
fn lose(archive: &Archive, e: &crate::archive::EntryRecord, err: &Error, out: &mut CyrusOutcome) {
    let lost = LostEntry::of(&archive.paths().archive, e, err);
    out.bad_messages
        .push(format!("{}: not restored: {lost}", e.name));
    out.lost.push(lost);
}

/// How a planned mailbox meets the target.
enum Mode {
    /// Nothing there under its name or uniqueid.
    Fresh,
    /// The same mailbox is there (same name and uniqueid): replaced in place.
    Replace(Box<MailboxEntry>),
}

/// One mailbox ready to place: its target entry, records and metadata (rewritten when it is
/// restored under a new name), and paths.
struct Planned<'a> {
    source: &'a MailboxAt,
    entry: MailboxEntry,
    mode: Mode,
    records: Vec<Record>,
    annotation_rows: Vec<Record>,
    header: Vec<u8>,
    index: Vec<u8>,
    /// cyrus.annotations with its mtime, when the archive has one.
    annotations: Option<(Vec<u8>, Option<i64>)>,
    data_dir: PathBuf,
    archive_dir: Option<PathBuf>,
}

/// 24 random `[0-9a-z]`, the form Cyrus gives uniqueids when built without libuuid.
fn new_uniqueid() -> Result<String> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let bytes = [crate::io::random_id()?, crate::io::random_id()?].concat();
    Ok(bytes[..24]
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect())
}

/// Replaces the values of `keys` at the top level of a dlist key/value list.
fn with_values(bytes: &[u8], changes: &[(&str, &str)]) -> std::result::Result<Vec<u8>, String> {
    use crate::spool::dlist::{self, Dlist};
    let trailing_newline = bytes.ends_with(b"\n");
    let mut value = dlist::parse(bytes).map_err(|e| e.to_string())?;
    let Dlist::Kv(entries) = &mut value else {
        return Err("not a key/value list".into());
    };
    for (key, new) in changes {
        let slot = entries
            .iter_mut()
            .find(|(k, _)| k == key.as_bytes())
            .ok_or_else(|| format!("no {key} field"))?;
        slot.1 = Dlist::Atom(new.as_bytes().to_vec());
    }
    let mut out = dlist::write(&value);
    if trailing_newline {
        out.push(b'\n');
    }
    Ok(out)
}

/// The index with `header_file_crc` (offset 96) set for a new `cyrus.header`, and the index
/// header's own CRC (its last four bytes) recomputed.
fn reseal_index(index: &[u8], header: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let parsed = crate::spool::index::parse(index).map_err(|e| e.to_string())?;
    if parsed.header.minor_version < 12 {
        return Err(format!(
            "index version {} has no header CRCs to reseal",
            parsed.header.minor_version
        ));
    }
    let size = parsed.header.start_offset as usize;
    let mut out = index.to_vec();
    out[96..100].copy_from_slice(&crc32fast::hash(header).to_be_bytes());
    let crc = crc32fast::hash(&out[..size - 4]);
    out[size - 4..size].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// The header, index and records of a mailbox restored as `name` with a fresh uniqueid: the
/// name and uniqueid fields of cyrus.header and of both mailboxes.db records, the annotation
/// keys, and the index's copy of the header's CRC all follow.
fn renamed(p: &mut Planned, name: crate::spool::name::MboxName, archive_path: &Path) -> Result<()> {
    let corrupt = |detail: String| Error::corrupt(archive_path, 0, detail);
    let old_uid = p.source.uniqueid.clone();
    let uid = new_uniqueid()?;
    let internal = name.internal();
    let dbname = name.dbname();
    let magic_end = p.header.iter().position(|&b| b == b'%').ok_or_else(|| {
        corrupt(format!(
            "{}: cyrus.header is not the 3.6 format",
            p.entry.name
        ))
    })?;
    let (magic, line) = p.header.split_at(magic_end);
    let line = with_values(line, &[("N", &internal), ("I", &uid)])
        .map_err(|e| corrupt(format!("{}: cyrus.header: {e}", p.entry.name)))?;
    p.header = [magic, &line].concat();
    p.index = reseal_index(&p.index, &p.header)
        .map_err(|e| corrupt(format!("{}: cyrus.index: {e}", p.entry.name)))?;
    for r in &mut p.records {
        if r.key.starts_with(b"N") {
            r.key = [b"N".as_slice(), dbname.as_bytes()].concat();
            r.value = with_values(&r.value, &[("I", &uid)])
                .map_err(|e| corrupt(format!("{}: N record: {e}", p.entry.name)))?;
        } else {
            r.key = [b"I".as_slice(), uid.as_bytes()].concat();
            r.value = with_values(&r.value, &[("N", &dbname)])
                .map_err(|e| corrupt(format!("{}: I record: {e}", p.entry.name)))?;
        }
    }
    for r in &mut p.annotation_rows {
        if let Some(rest) = r.key.strip_prefix(old_uid.as_bytes()) {
            r.key = [uid.as_bytes(), rest].concat();
        }
    }
    p.entry.name = name;
    p.entry.uniqueid = Some(uid);
    Ok(())
}

/// A mailbox's plan, or the archive entry it needs that failed its checks (the restore reports
/// it and goes on with the other mailboxes). Everything else wrong is an error that stops it.
fn plan_mailbox<'a>(
    archive: &Archive,
    spool: &Spool,
    m: &'a MailboxAt,
    target: &CyrusTarget,
    user: &str,
) -> Result<std::result::Result<Planned<'a>, LostEntry>> {
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
                e.stat.map(|s| s.mtime_ns),
            )),
            None => None,
        };
        Ok((
            folder_records(archive, m, FOLDER_MAILBOXES_DB)?,
            folder_records(archive, m, FOLDER_ANNOTATIONS_DB)?,
            file("cyrus.header")?,
            file("cyrus.index")?,
            annotations,
        ))
    };
    let (records, annotation_rows, header, index, annotations) = match read() {
        Ok(r) => r,
        Err(lost) => return Ok(Err(lost)),
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
    let mut p = Planned {
        source: m,
        entry: entry.clone(),
        mode: Mode::Fresh,
        records,
        annotation_rows,
        header,
        index,
        annotations,
        data_dir: PathBuf::new(),
        archive_dir: None,
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
        renamed(&mut p, name, path)?;
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
            let what = if existing.name == p.entry.name && existing.uniqueid == p.entry.uniqueid {
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
            return Err(Error::usage(format!(
                "{}: {what}; or export it (--maildir, --mbox, --eml) or restore it additively \
                 (--imap)",
                p.entry.name
            )));
        }
    };
    p.data_dir = spool.mailbox_dir(&p.entry).ok_or_else(|| {
        Error::usage(format!(
            "{}: the target has no partition {:?}",
            p.entry.name,
            p.entry.partition.as_deref().unwrap_or("")
        ))
    })?;
    p.archive_dir = spool.archive_dir(&p.entry);
    Ok(Ok(p))
}

/// The `cyr_dbtool batch` input that sets `records` and deletes `deletes`: IMAP literals,
/// binary-safe.
fn batch_input(records: &[&Record], deletes: &[Vec<u8>]) -> Vec<u8> {
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

impl CyrusTarget {
    fn tool(&self, owner: Owner, name: &str) -> Command {
        let mut cmd = Command::new(self.cyrus_bin.join(name));
        cmd.arg("-C").arg(&self.config);
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::process::CommandExt;
            cmd.uid(owner.uid).gid(owner.gid);
        }
        cmd
    }

    fn run(&self, mut cmd: Command, input: &[u8], what: &str) -> Result<()> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("run", &self.cyrus_bin, e))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input)
            .map_err(|e| Error::io("write to", &self.cyrus_bin, e))?;
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("wait for", &self.cyrus_bin, e))?;
        if !out.status.success() {
            return Err(Error::usage(format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn update_db(
        &self,
        owner: Owner,
        db: &Path,
        records: &[&Record],
        deletes: &[Vec<u8>],
    ) -> Result<()> {
        if records.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let mut cmd = self.tool(owner, "cyr_dbtool");
        // -n creates the database when the server has none yet (annotations.db on a server
        // where nobody ever set METADATA).
        cmd.arg("-n").arg(db).arg("twoskip").arg("batch");
        self.run(
            cmd,
            &batch_input(records, deletes),
            &format!("cyr_dbtool {}", db.display()),
        )
    }

    /// Restores `mailboxes` (and, with `user_files`, the user's seen state, subscriptions,
    /// sieve scripts and quota) as the archive held them. Checks every mailbox before writing
    /// anything: one that exists on the target stops the restore unless `replace` allows it.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &self,
        archive: &Archive,
        messages: &Messages,
        user: &str,
        mailboxes: &[&MailboxAt],
        user_files: bool,
        at_run: u64,
        dry_run: bool,
    ) -> Result<CyrusOutcome> {
        let spool = Spool::open(&self.config)?;
        if spool.mboxlist.format != MboxlistFormat::ByIdAndName
            && !spool.mboxlist.entries.is_empty()
        {
            return Err(Error::Unsupported {
                path: self.config.clone(),
                detail: "restore into Cyrus supports the 3.6 mailboxes.db layout only".into(),
            });
        }
        if self.rename_to.is_some() && (mailboxes.len() != 1 || user_files) {
            return Err(Error::usage("--as restores exactly one --mailbox"));
        }
        let owner = Owner::of(&spool.config.configdirectory)?;
        let mut out = CyrusOutcome::default();
        let mut planned = Vec::new();
        for m in mailboxes {
            match plan_mailbox(archive, &spool, m, self, user)? {
                Ok(p) => planned.push(p),
                Err(lost) => {
                    out.bad_messages
                        .push(format!("mailbox {}: not restored: {lost}", m.name));
                    out.lost.push(lost);
                }
            }
        }
        let annotations = if planned.iter().any(|p| matches!(p.mode, Mode::Replace(_))) {
            Some(spool.annotations()?)
        } else {
            None
        };
        let mut annotation_deletes: Vec<Vec<u8>> = Vec::new();

        for p in &planned {
            out.mailboxes.push(p.entry.name.to_string());
            self.place_mailbox(archive, messages, &spool, p, owner, dry_run, &mut out)?;
            if let (Mode::Replace(existing), Some(all)) = (&p.mode, &annotations) {
                let key = spool.annotation_key(existing);
                annotation_deletes.extend(
                    all.of(&key)
                        .iter()
                        .filter(|r| !p.annotation_rows.iter().any(|k| k.key == r.key))
                        .map(|r| r.key.clone()),
                );
            }
        }

        // Records: I before N, so a crash in between leaves only an I record, as cyr_expire
        // does, which the next restore overwrites.
        let mboxlist_db = spool.config.configdirectory.join("mailboxes.db");
        let mut ids: Vec<&Record> = Vec::new();
        let mut names: Vec<&Record> = Vec::new();
        for p in &planned {
            for r in &p.records {
                if r.key.starts_with(b"I") {
                    ids.push(r);
                } else {
                    names.push(r);
                }
            }
        }
        let annotation_rows: Vec<&Record> =
            planned.iter().flat_map(|p| &p.annotation_rows).collect();
        let annotations_db = spool.config.configdirectory.join("annotations.db");
        for (db, records, deletes) in [
            (&annotations_db, annotation_rows, annotation_deletes),
            (&mboxlist_db, ids, Vec::new()),
            (&mboxlist_db, names, Vec::new()),
        ] {
            for key in &deletes {
                out.writes.push(format!(
                    "{} delete {}",
                    db.display(),
                    String::from_utf8_lossy(key).replace(['\u{1f}', '\0'], "/")
                ));
            }
            for r in &records {
                out.writes.push(format!(
                    "{} record {}",
                    db.display(),
                    String::from_utf8_lossy(&r.key).replace(['\u{1f}', '\0'], "/")
                ));
            }
            if !dry_run {
                self.update_db(owner, db, &records, &deletes)?;
            }
        }

        if user_files {
            self.restore_user_files(archive, user, at_run, owner, dry_run, &mut out)?;
        }
        if !dry_run && !planned.is_empty() {
            // Placed files are not counted in the quota until the server recounts them.
            let mut cmd = self.tool(owner, "quota");
            cmd.arg("-f").arg("-u").arg(user);
            self.run(cmd, b"", "quota -f")?;
        }
        Ok(out)
    }

    /// Message files, then cyrus.annotations, cyrus.header and cyrus.index last: Cyrus trusts
    /// what the index lists, so everything it lists comes first. A mailbox being replaced is
    /// held under Cyrus's exclusive name and index locks throughout, its stale cache removed
    /// (Cyrus rebuilds entries from the message files) and its files that the restored index
    /// does not list removed.
    #[allow(clippy::too_many_arguments)]
    fn place_mailbox(
        &self,
        archive: &Archive,
        messages: &Messages,
        spool: &Spool,
        p: &Planned,
        owner: Owner,
        dry_run: bool,
        out: &mut CyrusOutcome,
    ) -> Result<()> {
        use crate::spool::lock::{FileLock, LockMethod, LockMode, LockWait};
        let meta = |file: MetaFile| {
            spool.meta_path(&p.entry, file).ok_or_else(|| {
                Error::usage(format!("{}: no metadata path on the target", p.entry.name))
            })
        };
        let mut _locks = Vec::new();
        if let (Mode::Replace(existing), false) = (&p.mode, dry_run) {
            let lock_path = spool.lock_path(existing).ok_or_else(|| {
                Error::usage(format!("{}: no lock path on the target", p.entry.name))
            })?;
            _locks.push(FileLock::lock_lockfile(
                &lock_path,
                &spool.config.mboxname_lockpath,
                LockMode::Exclusive,
                LockMethod::Fcntl,
                LockWait::Forever,
            )?);
            if let Some(l) = FileLock::lock_stable(
                &meta(MetaFile::Index)?,
                LockMode::Exclusive,
                LockMethod::Fcntl,
                LockWait::Forever,
            )? {
                _locks.push(l);
            }
        }
        let data = crate::spool::index::parse(&p.index).map_err(|e| {
            Error::corrupt(
                &archive.paths().archive,
                0,
                format!("{}: cyrus.index: {e}", p.entry.name),
            )
        })?;
        let mut listed = std::collections::HashSet::new();
        for r in data.records.iter().filter(|r| restorable(r, true)) {
            let dir = match (&p.archive_dir, r.is_archived()) {
                (Some(a), true) => a,
                _ => &p.data_dir,
            };
            let path = dir.join(r.message_file_name());
            listed.insert(path.clone());
            out.writes.push(path.display().to_string());
            if dry_run {
                continue;
            }
            if matches!(p.mode, Mode::Replace(_))
                && fs::metadata(&path).is_ok_and(|m| m.len() == r.size)
            {
                continue; // a message file never changes under its uid
            }
            match messages.read(&r.guid) {
                Ok(bytes) => {
                    place(&path, &bytes, Some(r.internaldate_ns), owner)?;
                    out.messages_written += 1;
                }
                Err(e) => {
                    out.bad_messages
                        .push(format!("{} uid {}: {e}", p.entry.name, r.uid));
                    if let Some(lost) = messages.lost(&r.guid, &e) {
                        if !out.lost.iter().any(|l| l.entry == lost.entry) {
                            out.lost.push(lost);
                        }
                    }
                }
            }
        }
        if let Mode::Replace(_) = p.mode {
            for dir in std::iter::once(&p.data_dir).chain(p.archive_dir.as_ref()) {
                for (_, path) in message_files(dir) {
                    if !listed.contains(&path) {
                        out.writes.push(format!("remove {}", path.display()));
                        if !dry_run {
                            fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                        }
                    }
                }
            }
        }
        let header_mtime = p
            .source
            .file(MetaFile::Header.file_name())
            .and_then(|e| e.stat.map(|s| s.mtime_ns));
        let index_mtime = p
            .source
            .file(MetaFile::Index.file_name())
            .and_then(|e| e.stat.map(|s| s.mtime_ns));
        let annotations_path = meta(MetaFile::Annotations)?;
        out.writes.push(annotations_path.display().to_string());
        if !dry_run {
            match &p.annotations {
                Some((bytes, mtime)) => place(&annotations_path, bytes, *mtime, owner)?,
                None => remove_if_present(&annotations_path, &Faults::none())?,
            }
        }
        let header_path = meta(MetaFile::Header)?;
        out.writes.push(header_path.display().to_string());
        if !dry_run {
            place(&header_path, &p.header, header_mtime, owner)?;
        }
        if let Mode::Replace(_) = p.mode {
            let cache = crate::io::parent_dir(&meta(MetaFile::Index)?).join("cyrus.cache");
            out.writes.push(format!("remove {}", cache.display()));
            if !dry_run {
                remove_if_present(&cache, &Faults::none())?;
            }
        }
        let index_path = meta(MetaFile::Index)?;
        out.writes.push(index_path.display().to_string());
        if !dry_run {
            place(&index_path, &p.index, index_mtime, owner)?;
        }
        Ok(())
    }

    /// seen, subscriptions, sieve scripts and the quota file, where the target keeps them for
    /// this user (found after the mailboxes' records are in, since 3.6 files them by the
    /// INBOX's uniqueid).
    fn restore_user_files(
        &self,
        archive: &Archive,
        user: &str,
        at_run: u64,
        owner: Owner,
        dry_run: bool,
        out: &mut CyrusOutcome,
    ) -> Result<()> {
        let spool = Spool::open(&self.config)?;
        let files = spool.user_files(user);
        let state = archive.state_at(Some(at_run));
        let mut sieve: BTreeMap<String, (EntryKind, String, Option<crate::archive::EntryRecord>)> =
            BTreeMap::new();
        for (_, e) in &state {
            let target = match e.name.as_str() {
                "meta/seen" => files.seen.clone(),
                "meta/sub" => files.sub.clone(),
                "meta/quota" => files.quota.clone(),
                "meta/dav.db" => files.dav.clone(),
                name => {
                    if let Some(script) = name.strip_prefix("meta/sieve/") {
                        if script.contains('/') || script.starts_with('.') {
                            out.bad_messages
                                .push(format!("{name}: not a sieve file name; not restored"));
                        } else {
                            sieve.insert(
                                script.to_string(),
                                (e.kind, e.target.clone(), Some((*e).clone())),
                            );
                        }
                    }
                    continue;
                }
            };
            if e.kind != EntryKind::File {
                continue;
            }
            out.user_files.push(e.name.clone());
            out.writes.push(target.display().to_string());
            if !dry_run {
                match read_all(archive, e) {
                    Ok(bytes) => place(&target, &bytes, e.stat.map(|s| s.mtime_ns), owner)?,
                    Err(err) => lose(archive, e, &err, out),
                }
            }
        }
        for (name, (kind, link, entry)) in sieve {
            let path = files.sieve_dir.join(&name);
            out.user_files.push(format!("meta/sieve/{name}"));
            out.writes.push(path.display().to_string());
            if dry_run {
                continue;
            }
            match (kind, entry) {
                (EntryKind::File, Some(e)) => match read_all(archive, &e) {
                    Ok(bytes) => place(&path, &bytes, e.stat.map(|s| s.mtime_ns), owner)?,
                    Err(err) => lose(archive, &e, &err, out),
                },
                (EntryKind::Symlink, _) => {
                    // defaultbc names a script beside it; anything else would leave the dir.
                    if link.is_empty() || link.contains('/') || link.starts_with('.') {
                        out.bad_messages.push(format!(
                            "meta/sieve/{name}: link {link:?} leaves the sieve dir"
                        ));
                        continue;
                    }
                    create_dirs(&files.sieve_dir, owner)?;
                    let _ = fs::remove_file(&path);
                    std::os::unix::fs::symlink(&link, &path)
                        .map_err(|e| Error::io("symlink", &path, e))?;
                    owner.apply(&path)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
