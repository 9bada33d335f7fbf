//! Building the find index from an archive's runs (formats/find-index.md sections 4 and 5): which
//! copies of which messages were live in which runs, and how each ended.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;

use super::fields::{fields_of, Fields, HEADER_READ_MAX};
use super::file::{
    Copy, EndHow, Ended, FindIndex, Folder, FolderName, Head, Message, RunMark, RunTime,
};
use super::IndexUse;
use crate::archive::{EntryKind, EntryRecord};
use crate::entries::{parse_imap_entry, FOLDERS_DIR, IMAP_DIR};
use crate::guid::Guid;
use crate::restore::{read_all, Messages};
use crate::spool::index::IndexRecord;
use crate::spool::name::MboxName;
use crate::store::{Archive, RunInfo};

/// Cyrus's default `deletedprefix`: a delayed delete renames a mailbox below it. The archive does
/// not record the server's setting; a site that changed it sees such folders as renamed, not
/// deleted.
pub const DELETED_PREFIX: &str = "DELETED";

/// Messages longer than this are read only as far as their header, not whole.
const WHOLE_READ_MAX: u64 = crate::archive::MEMBER_TARGET as u64;

/// The archive's find index, from `previous` where it still matches (formats/find-index.md
/// section 4), and how it was had: anything but `Current` differs from `previous`.
pub fn up_to_date(
    archive: &Archive,
    previous: Option<FindIndex>,
    notices: &mut Vec<String>,
) -> (FindIndex, IndexUse) {
    let (archive_id, marks) = identity(archive);
    let mut used = IndexUse::Built;
    let walker = match previous {
        Some(p) if follows(&p.head, &archive_id, &marks) => {
            if p.head.runs.len() == marks.len() {
                return (p, IndexUse::Current);
            }
            used = IndexUse::Updated;
            Walker::resume(archive, p)
        }
        Some(p) => {
            let carry = p
                .messages
                .into_iter()
                .filter_map(|m| Some((m.sha1, m.fields?)))
                .collect();
            Walker::fresh(archive, &archive_id, carry)
        }
        None => Walker::fresh(archive, &archive_id, HashMap::new()),
    };
    let covered = walker.index.head.runs.len();
    let mut walker = walker;
    for run in &archive.runs()[covered..] {
        walker.walk(run, notices);
    }
    let mut index = walker.index;
    index.head.runs = marks;
    (index, used)
}

/// What a find index's head must say of `archive` to be its index: its archive-id and its runs.
pub(super) fn identity(archive: &Archive) -> (String, Vec<RunMark>) {
    let archive_id = archive
        .archive_id()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let marks = archive
        .runs()
        .iter()
        .map(|r| RunMark {
            run: r.run,
            time: r.time,
            end: r.end,
        })
        .collect();
    (archive_id, marks)
}

/// Whether a find index with `head` covers a prefix of the archive with this identity
/// (formats/find-index.md section 4): current when its runs are all of `marks`.
pub(super) fn follows(head: &Head, archive_id: &str, marks: &[RunMark]) -> bool {
    head.archive_id == archive_id
        && head.deleted_prefix == DELETED_PREFIX
        && marks.starts_with(&head.runs)
}

/// A folder's index records as of a run, and its user flag names by bit.
#[derive(Default)]
struct FolderRecords {
    records: Vec<IndexRecord>,
    keywords: Vec<Option<String>>,
}

struct Walker<'a> {
    archive: &'a Archive,
    files: Messages<'a>,
    index: FindIndex,
    /// Fields of a previous index, by SHA-1, not read again.
    carry: HashMap<String, Fields>,
    message_of: HashMap<String, usize>,
    folder_of: HashMap<String, u32>,
    /// Current `imap/` links: internal name to uniqueid.
    names: HashMap<String, String>,
    header_entry: HashMap<String, EntryRecord>,
    index_entry: HashMap<String, EntryRecord>,
    /// Open copies per folder: uid to (message, copy).
    open: HashMap<u32, HashMap<u32, (usize, usize)>>,
    previous_run: Option<u64>,
}

impl<'a> Walker<'a> {
    fn fresh(archive: &'a Archive, archive_id: &str, carry: HashMap<String, Fields>) -> Self {
        Walker {
            archive,
            files: Messages::new(archive),
            index: FindIndex {
                head: Head {
                    archive_id: archive_id.to_string(),
                    deleted_prefix: DELETED_PREFIX.to_string(),
                    runs: Vec::new(),
                },
                folders: Vec::new(),
                messages: Vec::new(),
            },
            carry,
            message_of: HashMap::new(),
            folder_of: HashMap::new(),
            names: HashMap::new(),
            header_entry: HashMap::new(),
            index_entry: HashMap::new(),
            open: HashMap::new(),
            previous_run: None,
        }
    }

    /// Picks up where `index` stopped: its open names and copies are the state after its last run.
    fn resume(archive: &'a Archive, index: FindIndex) -> Self {
        let mut w = Walker::fresh(archive, &index.head.archive_id, HashMap::new());
        w.previous_run = index.head.runs.last().map(|r| r.run);
        let covered = index.head.runs.len();
        for run in &archive.runs()[..covered] {
            for e in archive.entries_of(run) {
                w.note_folder_file(e);
            }
        }
        for (i, f) in index.folders.iter().enumerate() {
            w.folder_of.insert(f.uniqueid.clone(), i as u32);
            for n in f.names.iter().filter(|n| n.last.is_none()) {
                w.names.insert(n.name.clone(), f.uniqueid.clone());
            }
        }
        for (m, message) in index.messages.iter().enumerate() {
            w.message_of.insert(message.sha1.clone(), m);
            for (c, copy) in message.seen.iter().enumerate() {
                if copy.is_live() {
                    w.open
                        .entry(copy.folder)
                        .or_default()
                        .insert(copy.uid, (m, c));
                }
            }
        }
        w.index = index;
        w
    }

    /// Remembers the latest `cyrus.header` and `cyrus.index` of each folder; the folder's
    /// uniqueid when `e` is one of them.
    fn note_folder_file(&mut self, e: &EntryRecord) -> Option<String> {
        let rest = e.name.strip_prefix(FOLDERS_DIR)?;
        let (uid, file) = rest.split_once('/')?;
        if e.kind != EntryKind::File {
            return None;
        }
        let map = match file {
            "cyrus.header" => &mut self.header_entry,
            // Either name of the index: the newest version, full copy or delta.
            "cyrus.index" | "delta/cyrus.index" => &mut self.index_entry,
            _ => return None,
        };
        map.insert(uid.to_string(), e.clone());
        Some(uid.to_string())
    }

    fn walk(&mut self, run: &RunInfo, notices: &mut Vec<String>) {
        let at = RunTime {
            run: run.run,
            time: run.time,
        };
        let mut changed: BTreeSet<String> = BTreeSet::new();
        for e in self.archive.entries_of(run) {
            if e.name.starts_with(IMAP_DIR) {
                let Some(name) = parse_imap_entry(&e.name) else {
                    continue;
                };
                if e.is_tombstone() {
                    self.names.remove(&name.internal());
                } else if let Some(uid) = e.target.strip_prefix(FOLDERS_DIR) {
                    if !uid.is_empty() && !uid.contains('/') {
                        self.names.insert(name.internal(), uid.to_string());
                    }
                }
            } else if let Some(uid) = self.note_folder_file(e) {
                changed.insert(uid);
            }
        }
        let mut named: HashMap<&str, Vec<&str>> = HashMap::new();
        for (name, uid) in &self.names {
            named.entry(uid.as_str()).or_default().push(name.as_str());
        }
        let mut newly_named: Vec<(String, Vec<String>)> = named
            .iter()
            .filter(|(uid, _)| !self.folder_of.contains_key(**uid))
            .map(|(uid, names)| {
                (
                    uid.to_string(),
                    names.iter().map(|n| n.to_string()).collect(),
                )
            })
            .collect();
        newly_named.sort();
        for (uid, _) in &newly_named {
            let f = self.index.folders.len() as u32;
            self.index.folders.push(Folder {
                uniqueid: uid.clone(),
                names: Vec::new(),
                // Not live until its names say so, below.
                gone: Some(at),
            });
            self.folder_of.insert(uid.clone(), f);
        }
        let mut became_gone = Vec::new();
        for (f, folder) in self.index.folders.iter_mut().enumerate() {
            let now: &[&str] = named
                .get(folder.uniqueid.as_str())
                .map_or(&[], Vec::as_slice);
            for n in folder.names.iter_mut().filter(|n| n.last.is_none()) {
                if !now.contains(&n.name.as_str()) {
                    n.last = self.previous_run;
                }
            }
            let mut now_sorted = now.to_vec();
            now_sorted.sort_unstable();
            for name in now_sorted {
                let open = folder
                    .names
                    .iter()
                    .any(|n| n.last.is_none() && n.name == name);
                if !open && folder.names.len() < 64 {
                    folder.names.push(FolderName {
                        name: name.to_string(),
                        first: run.run,
                        last: None,
                    });
                }
            }
            let live = now
                .iter()
                .any(|n| !MboxName::from_internal(n).is_deleted(DELETED_PREFIX));
            match (folder.gone.is_none(), live) {
                (true, false) => {
                    folder.gone = Some(at);
                    became_gone.push(f as u32);
                }
                (false, true) => {
                    folder.gone = None;
                    // Reopens its copies from its latest index, stored now or before.
                    changed.insert(folder.uniqueid.clone());
                }
                _ => {}
            }
        }
        for f in became_gone {
            self.close_all(f, EndHow::FolderDeleted, at);
        }
        for uid in changed {
            let Some(&f) = self.folder_of.get(&uid) else {
                continue;
            };
            let gone = self.index.folders[f as usize].gone;
            match (self.records(&uid), gone) {
                (Ok(records), None) => self.apply(f, &records, at, notices),
                (Ok(records), Some(gone)) => self.add_never_live(f, &records, gone, notices),
                (Err(problem), _) => notices.push(problem),
            }
        }
        self.index.head.runs.push(RunMark {
            run: run.run,
            time: run.time,
            end: run.end,
        });
        self.previous_run = Some(run.run);
    }

    /// The folder's latest index records with its user flag names (each record's flag names
    /// are made as it is applied: a million records are not held twice), or what stopped them
    /// being read.
    fn records(&self, uid: &str) -> std::result::Result<FolderRecords, String> {
        let path = &self.archive.paths().archive;
        let Some(index_entry) = self.index_entry.get(uid) else {
            return Ok(FolderRecords::default());
        };
        let read = |e: &EntryRecord| {
            read_all(self.archive, e)
                .map_err(|err| format!("find: {}: {}: {err}", path.display(), e.name))
        };
        let keywords = match self.header_entry.get(uid) {
            Some(h) => {
                crate::spool::header::parse(&read(h)?)
                    .map_err(|err| format!("find: {}: {}: {err}", path.display(), h.name))?
                    .user_flags
            }
            None => Vec::new(),
        };
        // Parsed as it streams out of the archive, as a restore reads it.
        let index = crate::folders::index_file(self.archive, index_entry)
            .map_err(|err| format!("find: {}: {}: {err}", path.display(), index_entry.name))?;
        Ok(FolderRecords {
            records: index.records,
            keywords,
        })
    }

    fn apply(&mut self, f: u32, records: &FolderRecords, at: RunTime, notices: &mut Vec<String>) {
        let mut still_open: HashMap<u32, (usize, usize)> = HashMap::new();
        let mut was_open = self.open.remove(&f).unwrap_or_default();
        for r in &records.records {
            let flags = r.flag_names(&records.keywords);
            if r.guid == Guid::default() {
                // Before index version 10 a record has no SHA-1 to name its message by.
                continue;
            }
            let sha1 = r.guid.to_hex();
            let ended = r.is_expunged() || r.is_unlinked();
            if let Some((m, c)) = was_open.remove(&r.uid) {
                if self.index.messages[m].sha1 == sha1 {
                    let copy = &mut self.index.messages[m].seen[c];
                    copy.flags = flags;
                    if ended {
                        let secs = r.last_updated_ns.div_euclid(1_000_000_000);
                        let time = if secs > 0 { secs } else { at.time };
                        self.end(m, c, EndHow::Expunged, at, time);
                    } else {
                        still_open.insert(r.uid, (m, c));
                    }
                    continue;
                }
                self.end(m, c, EndHow::Vanished, at, at.time);
            }
            let m = self.message(&r.guid, &sha1, r.size, notices);
            if ended {
                let secs = r.last_updated_ns.div_euclid(1_000_000_000);
                let time = if secs > 0 { secs } else { at.time };
                self.add_ended(
                    m,
                    f,
                    r,
                    &flags,
                    Ended {
                        how: EndHow::Expunged,
                        run: at.run,
                        time,
                    },
                );
                continue;
            }
            let copies = &mut self.index.messages[m].seen;
            copies.push(Copy {
                folder: f,
                uid: r.uid,
                internaldate: r.internaldate_ns.div_euclid(1_000_000_000),
                first: Some(at.run),
                last: None,
                flags,
                ended: None,
            });
            still_open.insert(r.uid, (m, copies.len() - 1));
        }
        for (_, (m, c)) in was_open {
            self.end(m, c, EndHow::Vanished, at, at.time);
        }
        if !still_open.is_empty() {
            self.open.insert(f, still_open);
        }
    }

    /// The messages of a folder stored only while deleted (a delayed delete that happened
    /// before the archive's first run, say): findable, as copies never live, ended with it.
    fn add_never_live(
        &mut self,
        f: u32,
        records: &FolderRecords,
        gone: RunTime,
        notices: &mut Vec<String>,
    ) {
        for r in &records.records {
            if r.guid == Guid::default() || r.is_unlinked() {
                continue;
            }
            let flags = r.flag_names(&records.keywords);
            let m = self.message(&r.guid, &r.guid.to_hex(), r.size, notices);
            let how = if r.is_expunged() {
                EndHow::Expunged
            } else {
                EndHow::FolderDeleted
            };
            self.add_ended(
                m,
                f,
                r,
                &flags,
                Ended {
                    how,
                    run: gone.run,
                    time: gone.time,
                },
            );
        }
    }

    /// A copy never live in a run, already ended, unless the message has that record already.
    fn add_ended(&mut self, m: usize, f: u32, r: &IndexRecord, flags: &[String], ended: Ended) {
        let message = &mut self.index.messages[m];
        if message.seen.iter().any(|c| c.folder == f && c.uid == r.uid) {
            return;
        }
        message.seen.push(Copy {
            folder: f,
            uid: r.uid,
            internaldate: r.internaldate_ns.div_euclid(1_000_000_000),
            first: None,
            last: None,
            flags: flags.to_vec(),
            ended: Some(ended),
        });
    }

    fn close_all(&mut self, f: u32, how: EndHow, at: RunTime) {
        for (_, (m, c)) in self.open.remove(&f).unwrap_or_default() {
            self.end(m, c, how, at, at.time);
        }
    }

    fn end(&mut self, m: usize, c: usize, how: EndHow, at: RunTime, time: i64) {
        let copy = &mut self.index.messages[m].seen[c];
        copy.last = self.previous_run;
        copy.ended = Some(Ended {
            how,
            run: at.run,
            time,
        });
    }

    /// The message's number, added (with its header fields) when new.
    fn message(&mut self, guid: &Guid, sha1: &str, size: u64, notices: &mut Vec<String>) -> usize {
        if let Some(&m) = self.message_of.get(sha1) {
            return m;
        }
        let fields = match self.carry.remove(sha1) {
            Some(fields) => Some(fields),
            None => self.read_fields(guid, notices),
        };
        let m = self.index.messages.len();
        self.index.messages.push(Message {
            sha1: sha1.to_string(),
            size,
            fields,
            seen: Vec::new(),
        });
        self.message_of.insert(sha1.to_string(), m);
        m
    }

    fn read_fields(&self, guid: &Guid, notices: &mut Vec<String>) -> Option<Fields> {
        let e = self.files.entry(guid)?;
        let path = &self.archive.paths().archive;
        let result = if e.size <= WHOLE_READ_MAX {
            self.files.read(guid).map(|bytes| fields_of(&bytes))
        } else {
            let mut head = Vec::with_capacity(HEADER_READ_MAX);
            self.archive.read_entry(&e).and_then(|r| {
                r.take(HEADER_READ_MAX as u64)
                    .read_to_end(&mut head)
                    .map_err(|err| crate::restore::unwrap_io(err, path, &e))
                    .map(|_| fields_of(&head))
            })
        };
        match result {
            Ok(fields) => Some(fields),
            Err(err) => {
                notices.push(format!("find: {}: {}: {err}", path.display(), e.name));
                None
            }
        }
    }
}
