//! Exact restore into a Cyrus 3.6 server, running or not (formats/restore.md, "Into Cyrus"):
//! the mailbox's files are placed where the target's own layout wants them, then its
//! `mailboxes.db` records (`I<uniqueid>` first, then `N<name>`, which makes it visible) and its
//! `annotations.db` rows are written through Cyrus's `cyr_dbtool batch`, which locks the
//! databases as Cyrus does and is binary-safe; then `quota -f` recounts usage. A mailbox that
//! exists on the target is never touched.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{folder_records, read_all, read_mailbox, restorable, MailboxAt, Messages};
use crate::archive::EntryKind;
use crate::error::{Error, Result};
use crate::scan::names::{FOLDER_ANNOTATIONS_DB, FOLDER_MAILBOXES_DB};
use crate::spool::cyrusdb::Record;
use crate::spool::mboxlist::{MailboxEntry, Mboxlist, MboxlistFormat};
use crate::spool::{MetaFile, Spool};
use crate::store::Archive;

/// Where Debian installs Cyrus's tools.
pub const DEFAULT_CYRUS_BIN: &str = "/usr/lib/cyrus/bin";

pub struct CyrusTarget {
    pub config: PathBuf,
    pub cyrus_bin: PathBuf,
}

/// What a restore into Cyrus wrote (or, dry, would write).
#[derive(Debug, Default, serde::Serialize)]
pub struct CyrusOutcome {
    pub mailboxes: Vec<String>,
    pub messages_written: u64,
    pub bad_messages: Vec<String>,
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
/// with `mtime` (Cyrus reports a mailbox's index mtime as its `lastupdate`).
fn place(path: &Path, bytes: &[u8], mtime_ns: Option<i64>, owner: Owner) -> Result<()> {
    let dir = crate::io::parent_dir(path);
    create_dirs(&dir, owner)?;
    let tmp = path.with_extension(format!("mailpack.{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_data())
        .map_err(|e| Error::io("write", &tmp, e))?;
    if let Some(ns) = mtime_ns {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
        file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .map_err(|e| Error::io("set the time of", &tmp, e))?;
    }
    drop(file);
    owner.apply(&tmp)?;
    fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))
}

/// One mailbox ready to place: its target entry (parsed from the stored records) and paths.
struct Planned<'a> {
    source: &'a MailboxAt,
    entry: MailboxEntry,
    records: Vec<Record>,
    data_dir: PathBuf,
    archive_dir: Option<PathBuf>,
}

fn plan_mailbox<'a>(archive: &Archive, spool: &Spool, m: &'a MailboxAt) -> Result<Planned<'a>> {
    let records = folder_records(archive, m, FOLDER_MAILBOXES_DB)?;
    let path = &archive.paths().archive;
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
    if let Some(existing) = spool
        .mboxlist
        .entries
        .iter()
        .filter(|e| !e.is_tombstone())
        .find(|e| e.name == entry.name || e.uniqueid == entry.uniqueid)
    {
        return Err(Error::usage(format!(
            "{} exists on the target as {} (uniqueid {}); a restore into Cyrus never overwrites a \
             mailbox: export it instead (--maildir, --mbox, --eml), or restore it additively with \
             --imap",
            entry.name,
            existing.name,
            existing.uniqueid.as_deref().unwrap_or("?")
        )));
    }
    let data_dir = spool.mailbox_dir(&entry).ok_or_else(|| {
        Error::usage(format!(
            "{}: the target has no partition {:?}",
            entry.name,
            entry.partition.as_deref().unwrap_or("")
        ))
    })?;
    let archive_dir = spool.archive_dir(&entry);
    Ok(Planned {
        source: m,
        entry,
        records,
        data_dir,
        archive_dir,
    })
}

/// The `cyr_dbtool batch` input that sets `records`: IMAP literals, binary-safe.
fn batch_input(records: &[&Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(format!("SET {{{}+}}\r\n", r.key.len()).as_bytes());
        out.extend_from_slice(&r.key);
        out.extend_from_slice(format!(" {{{}+}}\r\n", r.value.len()).as_bytes());
        out.extend_from_slice(&r.value);
        out.extend_from_slice(b"\r\n");
    }
    out
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

    fn set_records(&self, owner: Owner, db: &Path, records: &[&Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut cmd = self.tool(owner, "cyr_dbtool");
        // -n creates the database when the server has none yet (annotations.db on a server
        // where nobody ever set METADATA).
        cmd.arg("-n").arg(db).arg("twoskip").arg("batch");
        self.run(
            cmd,
            &batch_input(records),
            &format!("cyr_dbtool {}", db.display()),
        )
    }

    /// Restores `mailboxes` (and, with `user_files`, the user's seen state, subscriptions,
    /// sieve scripts and quota) as the archive held them. Checks every mailbox before writing
    /// anything: one that exists on the target stops the restore.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &self,
        archive: &Archive,
        messages: &Messages,
        user: &str,
        mailboxes: &[MailboxAt],
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
        let owner = Owner::of(&spool.config.configdirectory)?;
        let planned = mailboxes
            .iter()
            .map(|m| plan_mailbox(archive, &spool, m))
            .collect::<Result<Vec<_>>>()?;
        let mut out = CyrusOutcome::default();

        for p in &planned {
            out.mailboxes.push(p.entry.name.to_string());
            let data = read_mailbox(archive, p.source)?;
            for r in data.index.records.iter().filter(|r| restorable(r, true)) {
                let dir = match (&p.archive_dir, r.is_archived()) {
                    (Some(a), true) => a,
                    _ => &p.data_dir,
                };
                let path = dir.join(r.message_file_name());
                out.writes.push(path.display().to_string());
                if dry_run {
                    continue;
                }
                match messages.read(&r.guid) {
                    Ok(bytes) => {
                        place(&path, &bytes, Some(r.internaldate_ns), owner)?;
                        out.messages_written += 1;
                    }
                    Err(e) => out
                        .bad_messages
                        .push(format!("{} uid {}: {e}", p.entry.name, r.uid)),
                }
            }
            // The index last: Cyrus trusts what it lists, so everything it lists comes first.
            for file in [MetaFile::Header, MetaFile::Annotations, MetaFile::Index] {
                let Some(e) = p.source.file(file.file_name()) else {
                    continue;
                };
                let path = spool.meta_path(&p.entry, file).ok_or_else(|| {
                    Error::usage(format!("{}: no metadata path on the target", p.entry.name))
                })?;
                out.writes.push(path.display().to_string());
                if !dry_run {
                    let bytes = read_all(archive, e)?;
                    place(&path, &bytes, e.stat.map(|s| s.mtime_ns), owner)?;
                }
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
        let mut annotation_rows = Vec::new();
        for p in &planned {
            annotation_rows.extend(folder_records(archive, p.source, FOLDER_ANNOTATIONS_DB)?);
        }
        let annotations_db = spool.config.configdirectory.join("annotations.db");
        for (db, records) in [
            (&annotations_db, annotation_rows.iter().collect::<Vec<_>>()),
            (&mboxlist_db, ids),
            (&mboxlist_db, names),
        ] {
            for r in &records {
                out.writes.push(format!(
                    "{} record {}",
                    db.display(),
                    String::from_utf8_lossy(&r.key).replace(['\u{1f}', '\0'], "/")
                ));
            }
            if !dry_run {
                self.set_records(owner, db, &records)?;
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
                place(
                    &target,
                    &read_all(archive, e)?,
                    e.stat.map(|s| s.mtime_ns),
                    owner,
                )?;
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
                (EntryKind::File, Some(e)) => place(
                    &path,
                    &read_all(archive, &e)?,
                    e.stat.map(|s| s.mtime_ns),
                    owner,
                )?,
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
