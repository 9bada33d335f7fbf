//! Restore (issue 6): what an archive held as of a run, read back mailbox by mailbox, and
//! written out to a Cyrus server (`cyrus`), an IMAP server (`imap`) or files (`export`), each a
//! `plan::Target` that plans first and then executes the plan; copies (files, IMAP) choose
//! their messages through `select`. Everything that comes out of an archive is treated as
//! untrusted: names become paths only through `safe_levels`, and every message's SHA-1 is
//! checked as it is read.

pub mod cyrus;
pub mod export;
pub mod imap;
pub mod plan;
pub mod select;

pub use crate::time::{format_utc, parse_time};

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::archive::{EntryKind, EntryRecord};
use crate::entries::index_delta::{INDEX_DELTA_FILE, INDEX_FILE};
use crate::entries::{
    parse_imap_entry, FOLDERS_DIR, FOLDER_ANNOTATIONS_DB, FOLDER_MAILBOXES_DB, IMAP_DIR,
};
use crate::error::{Error, Result};
use crate::guid::Guid;
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

    /// The entry of the mailbox's `cyrus.index` as of the run: a full copy, or an index delta
    /// (read it with `read_index`, never as the file itself). It carries that version's stat.
    pub fn index_entry(&self) -> Option<&EntryRecord> {
        self.files
            .get(INDEX_FILE)
            .or_else(|| self.files.get(INDEX_DELTA_FILE))
    }
}

/// Of a folder's files, keeps only the newer of its index's two names (formats/backup-entries.md,
/// "Index deltas"): a full copy older than a delta must not be read as the mailbox's index, and
/// a delta older than a full copy is no longer its state.
fn newest_index_only(files: &mut BTreeMap<String, EntryRecord>) {
    let newest = crate::folders::newer(files.get(INDEX_FILE), files.get(INDEX_DELTA_FILE))
        .map(|e| e.name.clone());
    files.retain(|file, e| {
        !(file == INDEX_FILE || file == INDEX_DELTA_FILE) || Some(&e.name) == newest.as_ref()
    });
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
    for files in folders.values_mut() {
        newest_index_only(files);
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

/// The most a read of one entry reserves before its bytes arrive. Sizes come from the index,
/// which a damaged or hostile file can set to anything: beyond this the buffer grows only as
/// the bytes really come out of the archive.
pub const ENTRY_PREALLOC_CAP: u64 = crate::archive::MEMBER_TARGET as u64;

/// Deflate cannot expand data by more than about 1032:1 (a 258-byte match per two bits), so an
/// entry cannot hold more than this many bytes per compressed byte from its member onwards.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Checks that an entry's recorded placement and size can fit in the `archive_len` bytes of the
/// archive file it names: a size read from the index is believed only as far as the archive
/// could back it, so a bad one is an error naming the file and member, not an allocation.
pub fn check_entry_fits(path: &Path, archive_len: u64, e: &EntryRecord) -> Result<()> {
    let member = e.placement.member;
    let room = archive_len
        .checked_sub(member)
        .filter(|&n| n > 0)
        .map(|n| n.saturating_mul(MAX_DEFLATE_RATIO));
    let end = e.placement.data_at.checked_add(e.size);
    match (room, end) {
        (Some(room), Some(end)) if end <= room => Ok(()),
        _ => Err(Error::corrupt(
            path,
            member,
            format!(
                "entry {}: the index says {} bytes at byte {} of the member's data, more than \
                 the {} bytes of {} from that member on can hold",
                e.name,
                e.size,
                e.placement.data_at,
                archive_len.saturating_sub(member),
                path.display()
            ),
        )),
    }
}

/// The initial capacity for an entry of `size` bytes: never more than `ENTRY_PREALLOC_CAP`.
pub fn prealloc(size: u64) -> Vec<u8> {
    // Both bounds are small, so the cast cannot truncate.
    Vec::with_capacity(size.min(ENTRY_PREALLOC_CAP) as usize)
}

/// An entry's bytes, SHA-1 checked. The size is checked against the archive first, and the
/// buffer grows with the bytes that really arrive (at most `size` of them).
pub fn read_all(archive: &Archive, e: &EntryRecord) -> Result<Vec<u8>> {
    let path = &archive.paths().archive;
    check_entry_fits(path, archive.committed_len(), e)?;
    let mut out = prealloc(e.size);
    archive
        .read_entry(e)?
        .take(e.size)
        .read_to_end(&mut out)
        .map_err(|err| unwrap_io(err, path, e))?;
    Ok(out)
}

/// Errors from a checked entry reader carry our own error inside an io::Error.
pub fn unwrap_io(err: std::io::Error, path: &Path, e: &EntryRecord) -> Error {
    match err.into_inner() {
        Some(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::corrupt(path, e.placement.member, format!("{}: {other}", e.name)),
        },
        None => Error::corrupt(path, e.placement.member, format!("{}: read failed", e.name)),
    }
}

/// An archive entry a restore could not use: it failed its checks (or is missing where the
/// mailbox needs it). The restore goes on without it and reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LostEntry {
    /// The entry name (`files/<sha1>`, `folders/<uniqueid>/cyrus.index`, ...).
    pub entry: String,
    /// The archive file read.
    pub archive: PathBuf,
    /// Byte offset in `archive` of the damage (the member's offset), when there is one.
    pub offset: Option<u64>,
    pub detail: String,
}

impl LostEntry {
    /// The loss of `e` from the error its read gave.
    pub fn of(archive: &Path, e: &EntryRecord, err: &Error) -> LostEntry {
        let (offset, detail) = match err {
            Error::Corrupt { offset, detail, .. } => (*offset, detail.clone()),
            other => (e.placement.member, other.to_string()),
        };
        LostEntry {
            entry: e.name.clone(),
            archive: archive.to_path_buf(),
            offset: Some(offset),
            detail,
        }
    }

    /// `e`, whose bytes read and checked but do not parse as what they should be.
    pub fn damaged(archive: &Path, e: &EntryRecord, detail: String) -> LostEntry {
        LostEntry {
            entry: e.name.clone(),
            archive: archive.to_path_buf(),
            offset: Some(e.placement.member),
            detail,
        }
    }

    /// An entry a mailbox needs that the archive does not hold as of the run.
    pub fn missing(archive: &Path, entry: String) -> LostEntry {
        LostEntry {
            entry,
            archive: archive.to_path_buf(),
            offset: None,
            detail: "not in the archive as of this run".into(),
        }
    }
}

impl std::fmt::Display for LostEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offset {
            Some(at) => write!(
                f,
                "{} in {} at byte {at}: {}",
                self.entry,
                self.archive.display(),
                self.detail
            ),
            None => write!(
                f,
                "{} in {}: {}",
                self.entry,
                self.archive.display(),
                self.detail
            ),
        }
    }
}

impl From<LostEntry> for Error {
    fn from(l: LostEntry) -> Error {
        match l.offset {
            Some(at) => Error::corrupt(&l.archive, at, format!("{}: {}", l.entry, l.detail)),
            None => Error::NotFound(format!("{} in {}", l.entry, l.archive.display())),
        }
    }
}

/// The mailbox's cyrus.header and cyrus.index, parsed. A failure names the entry that failed,
/// so a restore can report it and go on with the other mailboxes.
pub fn read_mailbox(
    archive: &Archive,
    m: &MailboxAt,
) -> std::result::Result<MailboxData, LostEntry> {
    let path = &archive.paths().archive;
    let entry = |file: &str| {
        m.file(file)
            .ok_or_else(|| LostEntry::missing(path, format!("{FOLDERS_DIR}{}/{file}", m.uniqueid)))
    };
    let header_entry = entry("cyrus.header")?;
    let read = |e: &EntryRecord| read_all(archive, e).map_err(|err| LostEntry::of(path, e, &err));
    let header = crate::spool::header::parse(&read(header_entry)?)
        .map_err(|err| LostEntry::damaged(path, header_entry, err.to_string()))?;
    // Parsed as it streams out of the archive (through its deltas), so the bytes and the
    // records of a large index are never held at once.
    let index_entry = m.index_entry().ok_or_else(|| {
        LostEntry::missing(path, format!("{FOLDERS_DIR}{}/{INDEX_FILE}", m.uniqueid))
    })?;
    let index = crate::folders::index_file(archive, index_entry)
        .map_err(|err| LostEntry::of(path, index_entry, &err))?;
    Ok(MailboxData { header, index })
}

/// The exact bytes of the mailbox's `cyrus.index` as of the run, with the entry that holds
/// them: a full copy as stored, or a delta reconstructed through its chain with every SHA-1
/// checked (`crate::folders::index_bytes`). A failure names the entry, archive and offset.
pub fn read_index<'m>(
    archive: &Archive,
    m: &'m MailboxAt,
) -> std::result::Result<(&'m EntryRecord, Vec<u8>), LostEntry> {
    let path = &archive.paths().archive;
    let e = m.index_entry().ok_or_else(|| {
        LostEntry::missing(path, format!("{FOLDERS_DIR}{}/{INDEX_FILE}", m.uniqueid))
    })?;
    if crate::folders::is_index_delta(e) {
        crate::folders::index_bytes(archive, e)
            .map(|v| (e, v.bytes))
            .map_err(|err| LostEntry::of(path, e, &err))
    } else {
        // A full copy: read exactly as every version before index deltas did.
        read_all(archive, e)
            .map(|b| (e, b))
            .map_err(|err| LostEntry::of(path, e, &err))
    }
}

/// The raw cyrusdb records a backup stored for a mailbox (`mailboxes.db` or `annotations.db`).
pub fn folder_records(
    archive: &Archive,
    m: &MailboxAt,
    which: &str,
) -> std::result::Result<Vec<crate::spool::cyrusdb::Record>, LostEntry> {
    debug_assert!(which == FOLDER_MAILBOXES_DB || which == FOLDER_ANNOTATIONS_DB);
    let Some(e) = m.file(which) else {
        return Ok(Vec::new());
    };
    let path = &archive.paths().archive;
    let bytes = read_all(archive, e).map_err(|err| LostEntry::of(path, e, &err))?;
    crate::entries::parse_records(&bytes)
        .ok_or_else(|| LostEntry::damaged(path, e, "not in the records format".to_string()))
}

/// The message files of an archive by SHA-1, to read many by seeking without a lookup each.
/// The last gzip member decoded is kept: a mailbox's messages were stored side by side, so a
/// restore of many decodes each member once instead of once per message in it.
pub struct Messages<'a> {
    archive: &'a Archive,
    /// Empty when the archive's messages were split out (`Archive::split_messages`): it looks
    /// them up itself, in a fraction of the memory.
    by_guid: std::collections::HashMap<Guid, &'a EntryRecord>,
    member: std::cell::RefCell<Option<(u64, Vec<u8>)>>,
}

impl<'a> Messages<'a> {
    pub fn new(archive: &'a Archive) -> Messages<'a> {
        let mut by_guid = std::collections::HashMap::new();
        let runs = if archive.messages_split() {
            &[][..]
        } else {
            archive.runs()
        };
        for run in runs {
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
        self.entry(guid).is_some()
    }

    /// The message's bytes, SHA-1 checked: a mismatch, or a member that fails its own checks,
    /// is an error naming the archive and the member's offset.
    pub fn read(&self, guid: &Guid) -> Result<Vec<u8>> {
        self.read_entry(guid).map(|(_, bytes)| bytes)
    }

    /// The entry a message is stored as.
    pub fn entry(&self, guid: &Guid) -> Option<std::borrow::Cow<'a, EntryRecord>> {
        if self.archive.messages_split() {
            return self
                .archive
                .stored_message(guid)
                .map(|m| std::borrow::Cow::Owned(m.entry()));
        }
        self.by_guid
            .get(guid)
            .map(|e| std::borrow::Cow::Borrowed(*e))
    }

    fn read_entry(&self, guid: &Guid) -> Result<(std::borrow::Cow<'a, EntryRecord>, Vec<u8>)> {
        let e = self
            .entry(guid)
            .ok_or_else(|| Error::NotFound(format!("message {guid} in the archive")))?;
        // Placement numbers come from the index: checked arithmetic, and anything that does not
        // lie within one member's worth of data goes the streamed, size-checked way.
        let span = usize::try_from(e.placement.data_at)
            .ok()
            .zip(usize::try_from(e.size).ok())
            .and_then(|(start, len)| Some((start, start.checked_add(len)?)))
            .filter(|&(_, end)| end <= crate::archive::MEMBER_TARGET);
        let Some((start, end)) = span else {
            // Longer than a member: streamed across its members.
            let bytes = read_all(self.archive, &e)?;
            return Ok((e, bytes));
        };
        let path = &self.archive.paths().archive;
        let mut cached = self.member.borrow_mut();
        if cached.as_ref().map(|(at, _)| *at) != Some(e.placement.member) {
            *cached = None;
            let raw = self.archive.decode_members(e.placement.member, None)?;
            *cached = Some((e.placement.member, raw));
        }
        let raw = match cached.as_ref() {
            Some((_, raw)) => raw,
            None => unreachable!("filled above"),
        };
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
        Ok((e, data.to_vec()))
    }

    /// What a failed `read` of `guid` lost: the entry that failed its checks, or `None` when
    /// the archive holds no such message at all.
    pub fn lost(&self, guid: &Guid, err: &Error) -> Option<LostEntry> {
        let e = self.entry(guid)?;
        Some(LostEntry::of(&self.archive.paths().archive, &e, err))
    }
}

/// Which records of an index a restore writes: every record still in the mailbox (expunged
/// ones only when asked, as an exact Cyrus restore keeps them), never an unlinked one, whose
/// file is gone.
pub fn restorable(record: &IndexRecord, with_expunged: bool) -> bool {
    !record.is_unlinked() && (with_expunged || !record.is_expunged())
}
