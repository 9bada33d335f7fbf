//! Restore (issue 6): what an archive held as of a run, read back mailbox by mailbox, and
//! written out to a Cyrus server (`cyrus`), an IMAP server (`imap`) or files (`export`).
//! Everything that comes out of an archive is treated as untrusted: names become paths only
//! through `safe_levels`, and every message's SHA-1 is checked as it is read.

pub mod cyrus;
pub mod export;
pub mod imap;

pub use crate::time::{format_utc, parse_time};

use std::collections::BTreeMap;
use std::io::Read;

use crate::archive::{EntryKind, EntryRecord};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::scan::names::{
    parse_imap_entry, FOLDERS_DIR, FOLDER_ANNOTATIONS_DB, FOLDER_MAILBOXES_DB, IMAP_DIR,
};
use crate::spool::header::MailboxHeader;
use crate::spool::index::{IndexFile, IndexRecord};
use crate::spool::name::MboxName;
use crate::store::{Archive, RunInfo};

/// The run a restore "as of `at`" reads: the newest committed at or before `at` (the newest of
/// all when `at` is `None`).
pub fn run_at(archive: &Archive, at: Option<i64>) -> Result<&RunInfo> {
    let runs = archive.runs();
    let found = match at {
        None => runs.last(),
        Some(t) => runs.iter().rev().find(|r| r.time <= t),
    };
    found.ok_or_else(|| match (at, runs.first()) {
        (Some(t), Some(first)) => Error::NotFound(format!(
            "a run at or before {} in {} (the first is from {})",
            format_utc(t),
            archive.paths().archive.display(),
            format_utc(first.time)
        )),
        _ => Error::NotFound(format!(
            "committed runs in {}",
            archive.paths().archive.display()
        )),
    })
}

/// A mailbox as of one run: its name then, and the latest version of each of its files.
#[derive(Clone, Debug)]
pub struct MailboxAt {
    pub name: MboxName,
    /// The `imap/…` entry that names it.
    pub entry: String,
    pub uniqueid: String,
    pub files: BTreeMap<String, EntryRecord>,
}

impl MailboxAt {
    pub fn file(&self, name: &str) -> Option<&EntryRecord> {
        self.files.get(name)
    }
}

/// Checks that an archive-supplied uniqueid is one path component Cyrus could have made.
fn safe_uniqueid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The mailboxes named as of `run`, sorted by name. A link whose target is not a well-formed
/// `folders/<uniqueid>` is refused with the reason, not followed.
pub fn mailboxes_at(archive: &Archive, run: u64) -> (Vec<MailboxAt>, Vec<String>) {
    let state = archive.state_at(Some(run));
    let mut folders: BTreeMap<&str, BTreeMap<String, EntryRecord>> = BTreeMap::new();
    for (_, e) in &state {
        if let Some(rest) = e.name.strip_prefix(FOLDERS_DIR) {
            if let Some((uid, file)) = rest.split_once('/') {
                if e.kind == EntryKind::File {
                    folders
                        .entry(uid)
                        .or_default()
                        .insert(file.to_string(), (*e).clone());
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for (_, e) in &state {
        if !e.name.starts_with(IMAP_DIR) || e.kind != EntryKind::Symlink {
            continue;
        }
        let Some(name) = parse_imap_entry(&e.name) else {
            refused.push(format!("{}: not a mailbox name mailpack writes", e.name));
            continue;
        };
        let uid = match e.target.strip_prefix(FOLDERS_DIR) {
            Some(uid) if safe_uniqueid(uid) => uid,
            _ => {
                refused.push(format!(
                    "{}: link target {:?} is not folders/<uniqueid>",
                    e.name, e.target
                ));
                continue;
            }
        };
        let Some(files) = folders.get(uid) else {
            refused.push(format!(
                "{}: folder {uid} has no files as of run {run}",
                e.name
            ));
            continue;
        };
        out.push(MailboxAt {
            name,
            entry: e.name.clone(),
            uniqueid: uid.to_string(),
            files: files.clone(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, refused)
}

/// Finds a mailbox by what an admin types: `INBOX`, a name relative to the user's INBOX with
/// `/` between levels (`Archive/2023`), or a full name (`user/alice/Archive`).
pub fn find_mailbox<'a>(
    mailboxes: &[&'a MailboxAt],
    user: &str,
    wanted: &str,
) -> Option<&'a MailboxAt> {
    let (local, domain) = crate::spool::name::split_userid(user);
    let mut parts: Vec<String> = vec!["user".into(), local.to_string()];
    if !wanted.eq_ignore_ascii_case("INBOX") {
        parts.extend(wanted.split('/').map(str::to_string));
    }
    let relative = MboxName {
        domain: domain.map(str::to_string),
        parts,
    };
    let full = MboxName {
        domain: domain.map(str::to_string),
        parts: wanted.split('/').map(str::to_string).collect(),
    };
    let find = |name: &MboxName| mailboxes.iter().copied().find(|m| m.name == *name);
    find(&relative).or_else(|| find(&full))
}

/// The levels of a mailbox name relative to its owner (`INBOX` for the INBOX), each checked to
/// be usable as one path component: never empty, `.`, `..`, nor holding `/` or NUL. A name from
/// a hostile archive that fails is refused with the reason.
pub fn safe_levels(name: &MboxName) -> std::result::Result<Vec<String>, String> {
    let parts: Vec<String> = if name.parts.len() >= 2 && name.parts[0] == "user" {
        if name.parts.len() == 2 {
            vec!["INBOX".into()]
        } else {
            name.parts[2..].to_vec()
        }
    } else {
        name.parts.clone()
    };
    for p in &parts {
        if p.is_empty() || p == "." || p == ".." || p.contains('/') || p.contains('\0') {
            return Err(format!(
                "mailbox {name}: level {p:?} cannot be a path component"
            ));
        }
    }
    Ok(parts)
}

/// A mailbox's metadata as of the run, parsed.
pub struct MailboxData {
    pub header: MailboxHeader,
    pub index: IndexFile,
}

pub fn read_all(archive: &Archive, e: &EntryRecord) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(e.size as usize);
    archive
        .read_entry(e)?
        .read_to_end(&mut out)
        .map_err(|err| unwrap_io(err, archive, e))?;
    Ok(out)
}

/// Errors from a checked entry reader carry our own error inside an io::Error.
fn unwrap_io(err: std::io::Error, archive: &Archive, e: &EntryRecord) -> Error {
    match err.into_inner() {
        Some(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::corrupt(
                &archive.paths().archive,
                e.placement.member,
                format!("{}: {other}", e.name),
            ),
        },
        None => Error::corrupt(
            &archive.paths().archive,
            e.placement.member,
            format!("{}: read failed", e.name),
        ),
    }
}

pub fn read_mailbox(archive: &Archive, m: &MailboxAt) -> Result<MailboxData> {
    let corrupt = |e: &EntryRecord, detail: String| {
        Error::corrupt(&archive.paths().archive, e.placement.member, detail)
    };
    let header_entry = m
        .file("cyrus.header")
        .ok_or_else(|| Error::NotFound(format!("cyrus.header of {}", m.name)))?;
    let index_entry = m
        .file("cyrus.index")
        .ok_or_else(|| Error::NotFound(format!("cyrus.index of {}", m.name)))?;
    let header = crate::spool::header::parse(&read_all(archive, header_entry)?)
        .map_err(|err| corrupt(header_entry, format!("{}: {err}", header_entry.name)))?;
    let index = crate::spool::index::parse(&read_all(archive, index_entry)?)
        .map_err(|err| corrupt(index_entry, format!("{}: {err}", index_entry.name)))?;
    Ok(MailboxData { header, index })
}

/// The raw cyrusdb records a backup stored for a mailbox (`mailboxes.db` or `annotations.db`).
pub fn folder_records(
    archive: &Archive,
    m: &MailboxAt,
    which: &str,
) -> Result<Vec<crate::spool::cyrusdb::Record>> {
    debug_assert!(which == FOLDER_MAILBOXES_DB || which == FOLDER_ANNOTATIONS_DB);
    let Some(e) = m.file(which) else {
        return Ok(Vec::new());
    };
    let bytes = read_all(archive, e)?;
    crate::scan::names::parse_records(&bytes).ok_or_else(|| {
        Error::corrupt(
            &archive.paths().archive,
            e.placement.member,
            format!("{}: not in the records format", e.name),
        )
    })
}

/// The message files of an archive by SHA-1, to read many by seeking without a lookup each.
/// The last gzip member decoded is kept: a mailbox's messages were stored side by side, so a
/// restore of many decodes each member once instead of once per message in it.
pub struct Messages<'a> {
    archive: &'a Archive,
    by_guid: std::collections::HashMap<Guid, &'a EntryRecord>,
    member: std::cell::RefCell<Option<(u64, Vec<u8>)>>,
}

impl<'a> Messages<'a> {
    pub fn new(archive: &'a Archive) -> Messages<'a> {
        let mut by_guid = std::collections::HashMap::new();
        for run in archive.runs() {
            for e in archive.entries_of(run) {
                if e.kind != EntryKind::File {
                    continue;
                }
                if let Some(guid) = e
                    .name
                    .strip_prefix(crate::archive::FILES_DIR)
                    .and_then(|h| h.parse::<Guid>().ok())
                {
                    by_guid.entry(guid).or_insert(e);
                }
            }
        }
        Messages {
            archive,
            by_guid,
            member: std::cell::RefCell::new(None),
        }
    }

    pub fn has(&self, guid: &Guid) -> bool {
        self.by_guid.contains_key(guid)
    }

    /// The message's bytes, SHA-1 checked: a mismatch, or a member that fails its own checks,
    /// is an error naming the archive and the member's offset.
    pub fn read(&self, guid: &Guid) -> Result<Vec<u8>> {
        let e = self
            .by_guid
            .get(guid)
            .ok_or_else(|| Error::NotFound(format!("message {guid} in the archive")))?;
        let start = e.placement.data_at as usize;
        let end = start + e.size as usize;
        if end > crate::archive::MEMBER_TARGET {
            // Longer than a member: streamed across its members.
            return read_all(self.archive, e);
        }
        let path = &self.archive.paths().archive;
        let mut cached = self.member.borrow_mut();
        if cached.as_ref().map(|(at, _)| *at) != Some(e.placement.member) {
            *cached = None;
            let raw = crate::store::decode_members(path, e.placement.member, None)?;
            *cached = Some((e.placement.member, raw));
        }
        let raw = &cached.as_ref().expect("filled above").1;
        let data = raw.get(start..end).ok_or_else(|| {
            Error::corrupt(
                path,
                e.placement.member,
                format!("{} lies outside its member", e.name),
            )
        })?;
        if Guid::of(data) != *guid {
            return Err(Error::corrupt(
                path,
                e.placement.member,
                format!("{} does not hash to its name", e.name),
            ));
        }
        Ok(data.to_vec())
    }
}

/// Which records of an index a restore writes: every record still in the mailbox (expunged
/// ones only when asked, as an exact Cyrus restore keeps them), never an unlinked one, whose
/// file is gone.
pub fn restorable(record: &IndexRecord, with_expunged: bool) -> bool {
    !record.is_unlinked() && (with_expunged || !record.is_expunged())
}
