//! `mailpack drill`: an automatic restore test. Mailboxes picked at random (the seed is
//! reported, so a failure can be replayed) are restored from their archives into a private
//! scratch directory (never the live server): the mailbox's cyrus.header and cyrus.index as the
//! archive's latest run holds them, and every message file, each checked against its SHA-1 as it
//! is written. Then, unless only the archive is checked, the restored mailbox is compared with
//! the live one read under Cyrus's locks: a mailbox whose cyrus.index has the same stat as when
//! it was archived is unchanged, and then every record (UID, flags, dates, modseq, GUID, size),
//! the header, the annotations and every message's bytes must be identical; a mailbox changed
//! since is compared with what the archive's last run recorded only (step one). Each owner's
//! result goes to its status file (formats/status.md).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::restore::{mailboxes_at, read_all, MailboxAt};
use crate::spool::index::IndexRecord;
use crate::spool::{LockOptions, MetaFile, Owner, Spool};
use crate::store::{list_owner_archives, status, Archive, ArchivePaths};

pub struct DrillOptions {
    pub archive_dir: PathBuf,
    /// The live server; `None` with `--against-archive-only`.
    pub config: Option<PathBuf>,
    /// Mailboxes to drill; `None` for all.
    pub sample: Option<usize>,
    pub seed: u64,
    pub locks: LockOptions,
    pub now: i64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct MailboxDrill {
    pub owner: String,
    pub mailbox: String,
    pub uniqueid: String,
    pub messages: u64,
    /// `unchanged` (compared field by field with the live mailbox), `changed` (compared with
    /// the archive only), `locked` (Cyrus held it past the lock timeout: the archive only),
    /// `archive-only`, `gone` (no longer on the server, or, with a difference, only there).
    pub compared: &'static str,
    /// Each difference: what, where (uid, field) and the two values.
    pub differences: Vec<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct DrillReport {
    pub seed: u64,
    pub candidates: usize,
    pub mailboxes: Vec<MailboxDrill>,
    pub differences: u64,
}

/// A mailbox a drill can draw: one the archive's latest run holds, or one only the live
/// server has.
enum Candidate {
    Archived(MailboxAt),
    LiveOnly { name: String, uniqueid: String },
}

impl Candidate {
    fn name(&self) -> String {
        match self {
            Candidate::Archived(m) => m.name.internal(),
            Candidate::LiveOnly { name, .. } => name.clone(),
        }
    }
}

/// A small seeded generator (xorshift64*): the same seed picks the same mailboxes.
struct Picker(u64);

impl Picker {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

pub fn drill(options: &DrillOptions) -> Result<DrillReport> {
    let spool = options
        .config
        .as_ref()
        .map(|c| Spool::open(c))
        .transpose()?;
    let (own, _) = list_owner_archives(&options.archive_dir)?;
    // Owners and their archive paths; an archive is held open only while its own mailboxes
    // are listed or drilled, so memory does not grow with the number of owners.
    let mut archives: Vec<(Owner, ArchivePaths)> = Vec::new();
    let mut candidates: Vec<(usize, Candidate)> = Vec::new();
    let mut unreadable = Vec::new();
    for (owner, paths) in own {
        let Some(owner) = owner else { continue };
        let archive = match Archive::open_streamed(&paths, &mut Vec::new())
            .and_then(Archive::split_messages)
        {
            Ok(a) => a,
            Err(e) => {
                // Nothing of it can be restored: that is the drill's first finding.
                unreadable.push(MailboxDrill {
                    owner: owner.name().to_string(),
                    mailbox: String::new(),
                    compared: "archive-only",
                    differences: vec![format!("the archive does not open: {e}")],
                    ..MailboxDrill::default()
                });
                continue;
            }
        };
        let Some(last) = archive.runs().last() else {
            continue;
        };
        let (boxes, _) = mailboxes_at(&archive, last.run);
        let i = archives.len();
        // A live mailbox the archive's latest run lacks (a lost index version, a folder never
        // backed up) can be drawn too: it restores nothing, which is a finding.
        if let Some(spool) = &spool {
            let archived: std::collections::HashSet<&str> =
                boxes.iter().map(|m| m.uniqueid.as_str()).collect();
            for e in spool.mailboxes_of_owner(&owner) {
                if e.is_tombstone() || e.is_remote() {
                    continue;
                }
                if let Some(uid) = &e.uniqueid {
                    if !archived.contains(uid.as_str()) {
                        candidates.push((
                            i,
                            Candidate::LiveOnly {
                                name: e.name.internal(),
                                uniqueid: uid.clone(),
                            },
                        ));
                    }
                }
            }
        }
        candidates.extend(boxes.into_iter().map(|m| (i, Candidate::Archived(m))));
        archives.push((owner, paths));
    }
    let mut report = DrillReport {
        seed: options.seed,
        candidates: candidates.len(),
        ..DrillReport::default()
    };
    // A partial Fisher-Yates shuffle: the first `n` are the sample.
    let n = options
        .sample
        .unwrap_or(candidates.len())
        .min(candidates.len());
    let mut picker = Picker(options.seed ^ 0x9E37_79B9_7F4A_7C15);
    for i in 0..n {
        let j = i + (picker.next() % (candidates.len() - i) as u64) as usize;
        candidates.swap(i, j);
    }
    candidates.truncate(n);
    candidates.sort_by_key(|c| (c.0, c.1.name()));

    report.differences += unreadable.len() as u64;
    report.mailboxes.append(&mut unreadable);
    let scratch = crate::io::ScratchDir::new("drill")?;
    let mut per_owner: BTreeMap<usize, u64> = BTreeMap::new();
    let mut open: Option<(usize, Archive)> = None;
    for (i, candidate) in &candidates {
        let (owner, paths) = &archives[*i];
        if open.as_ref().is_none_or(|(j, _)| j != i) {
            open = None;
            match Archive::open_streamed(paths, &mut Vec::new()).and_then(Archive::split_messages) {
                Ok(a) => open = Some((*i, a)),
                Err(e) => {
                    *per_owner.entry(*i).or_default() += 1;
                    report.differences += 1;
                    report.mailboxes.push(MailboxDrill {
                        owner: owner.name().to_string(),
                        compared: "archive-only",
                        differences: vec![format!("the archive does not open: {e}")],
                        ..MailboxDrill::default()
                    });
                    continue;
                }
            }
        }
        let archive = &open.as_ref().expect("opened above").1;
        let m = match candidate {
            Candidate::Archived(m) => m,
            Candidate::LiveOnly { name, uniqueid } => {
                let result = MailboxDrill {
                    owner: owner.name().to_string(),
                    mailbox: name.clone(),
                    uniqueid: uniqueid.clone(),
                    compared: "gone",
                    differences: vec![
                        "on the server, but not in the archive's latest run (nothing to restore)"
                            .into(),
                    ],
                    ..MailboxDrill::default()
                };
                *per_owner.entry(*i).or_default() += 1;
                report.differences += 1;
                report.mailboxes.push(result);
                continue;
            }
        };
        let dir = scratch.path().join(format!("{i}-{}", m.uniqueid));
        let mut result = MailboxDrill {
            owner: owner.name().to_string(),
            mailbox: m.name.internal(),
            uniqueid: m.uniqueid.clone(),
            ..MailboxDrill::default()
        };
        let restored = restore_into(archive, m, &dir, &mut result);
        if let (Some(spool), Some(restored)) = (&spool, &restored) {
            compare_live(spool, owner, m, restored, &dir, options, &mut result);
        } else {
            result.compared = "archive-only";
        }
        let _ = std::fs::remove_dir_all(&dir);
        *per_owner.entry(*i).or_default() += result.differences.len() as u64;
        report.differences += result.differences.len() as u64;
        report.mailboxes.push(result);
    }
    for (i, differences) in per_owner {
        let (owner, paths) = &archives[i];
        let record = status::OwnerRecord {
            kind: owner.kind().to_string(),
            name: owner.name().to_string(),
        };
        let _ = status::update(&paths.archive, record, |s| {
            s.last_drill = Some(status::Drill {
                time: options.now,
                seed: options.seed,
                ok: differences == 0,
                differences,
            });
        });
    }
    Ok(report)
}

/// What was restored: the archived header and index, parsed.
struct Restored {
    data: crate::restore::MailboxData,
    index_entry_stat: Option<crate::io::SourceStat>,
    annotations: Option<Vec<u8>>,
    annotations_stat: Option<crate::io::SourceStat>,
    header_bytes: Vec<u8>,
}

/// Step one: the mailbox out of the archive into `dir`, every file checked as it is written.
fn restore_into(
    archive: &Archive,
    m: &MailboxAt,
    dir: &Path,
    result: &mut MailboxDrill,
) -> Option<Restored> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        result
            .differences
            .push(format!("scratch {}: {e}", dir.display()));
        return None;
    }
    let data = match crate::restore::read_mailbox(archive, m) {
        Ok(d) => d,
        Err(lost) => {
            result.differences.push(format!("metadata: {lost}"));
            return None;
        }
    };
    let bytes_of = |file: &str| m.file(file).and_then(|e| read_all(archive, e).ok());
    let header_bytes = bytes_of("cyrus.header").unwrap_or_default();
    // The index as of the run: a full copy, or reconstructed from its delta chain.
    let index_bytes = crate::restore::read_index(archive, m)
        .map(|(_, b)| b)
        .unwrap_or_default();
    for (name, bytes) in [
        ("cyrus.header", &header_bytes),
        ("cyrus.index", &index_bytes),
    ] {
        if let Err(e) = std::fs::write(dir.join(name), bytes) {
            result.differences.push(format!("scratch {name}: {e}"));
        }
    }
    // Messages are read member by member (a mailbox's were stored side by side), each checked
    // against its SHA-1.
    let messages = crate::restore::Messages::new(archive);
    for r in data.index.records.iter().filter(|r| !r.is_unlinked()) {
        result.messages += 1;
        if !messages.has(&r.guid) {
            result.differences.push(format!(
                "uid {}: message {} is not in the archive",
                r.uid, r.guid
            ));
            continue;
        }
        let written = messages.read(&r.guid).and_then(|bytes| {
            let path = dir.join(r.message_file_name());
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(&bytes))
                .map_err(|e| Error::io("write", &path, e))
        });
        if let Err(e) = written {
            result.differences.push(format!(
                "uid {}: message {} does not restore: {e}",
                r.uid, r.guid
            ));
        }
    }
    Some(Restored {
        index_entry_stat: m.index_entry().and_then(|e| e.stat.as_deref().copied()),
        annotations: bytes_of("cyrus.annotations"),
        annotations_stat: m
            .file("cyrus.annotations")
            .and_then(|e| e.stat.as_deref().copied()),
        data,
        header_bytes,
    })
}

/// Step two: the restored mailbox against the live one.
#[allow(clippy::too_many_arguments)] // one call, all of it context
fn compare_live(
    spool: &Spool,
    owner: &Owner,
    m: &MailboxAt,
    restored: &Restored,
    dir: &Path,
    options: &DrillOptions,
    result: &mut MailboxDrill,
) {
    let Some(e) = spool
        .mailboxes_of_owner(owner)
        .find(|e| e.uniqueid.as_deref() == Some(m.uniqueid.as_str()) && !e.is_tombstone())
    else {
        result.compared = "gone";
        return;
    };
    let (snapshot, _lock) = match spool.read_mailbox(e, &options.locks) {
        Ok(s) => s,
        Err(_) => {
            // Held by Cyrus past the lock timeout (live load): compared with the archive only.
            result.compared = "locked";
            return;
        }
    };
    let index_at = MetaFile::ALL
        .iter()
        .position(|f| *f == MetaFile::Index)
        .expect("index is a meta file");
    let unchanged = restored.index_entry_stat.is_some()
        && snapshot.stats[index_at] == restored.index_entry_stat;
    if !unchanged {
        result.compared = "changed";
        return;
    }
    result.compared = "unchanged";
    let live_h = &snapshot.index.header;
    let arch_h = &restored.data.index.header;
    for (field, a, l) in [
        (
            "uidvalidity",
            arch_h.uidvalidity as u64,
            live_h.uidvalidity as u64,
        ),
        ("last_uid", arch_h.last_uid as u64, live_h.last_uid as u64),
        ("highestmodseq", arch_h.highestmodseq, live_h.highestmodseq),
    ] {
        if a != l {
            result
                .differences
                .push(format!("index header {field}: archived {a}, live {l}"));
        }
    }
    if restored.header_bytes != snapshot.header_bytes {
        result
            .differences
            .push("cyrus.header differs from the live one".into());
    }
    let annotations_at = MetaFile::ALL
        .iter()
        .position(|f| *f == MetaFile::Annotations)
        .expect("annotations is a meta file");
    if snapshot.stats[annotations_at] == restored.annotations_stat
        && restored.annotations != snapshot.annotations_bytes
    {
        result
            .differences
            .push("cyrus.annotations differs from the live one".into());
    }
    let live: BTreeMap<u32, &IndexRecord> =
        snapshot.index.records.iter().map(|r| (r.uid, r)).collect();
    let archived: BTreeMap<u32, &IndexRecord> = restored
        .data
        .index
        .records
        .iter()
        .map(|r| (r.uid, r))
        .collect();
    let names_live = &snapshot.header.user_flags;
    let names_arch = &restored.data.header.user_flags;
    for (uid, l) in &live {
        let Some(a) = archived.get(uid) else {
            result
                .differences
                .push(format!("uid {uid}: live, not in the archive"));
            continue;
        };
        let mut diff = |field: &str, a: String, l: String| {
            if a != l {
                result
                    .differences
                    .push(format!("uid {uid} {field}: archived {a}, live {l}"));
            }
        };
        diff(
            "flags",
            a.flag_names(names_arch).join(" "),
            l.flag_names(names_live).join(" "),
        );
        diff(
            "internaldate",
            a.internaldate_ns.to_string(),
            l.internaldate_ns.to_string(),
        );
        diff("modseq", a.modseq.to_string(), l.modseq.to_string());
        diff("guid", a.guid.to_string(), l.guid.to_string());
        diff("size", a.size.to_string(), l.size.to_string());
        if l.is_unlinked() {
            continue;
        }
        // The message bytes: the restored file against the live one.
        let live_path = spool.mailbox_dir(e).map(|d| d.join(l.message_file_name()));
        let restored_hash = hash_file(&dir.join(a.message_file_name()));
        let live_hash = live_path.and_then(|p| hash_file(&p));
        if let (Some(r), Some(lh)) = (restored_hash, live_hash) {
            if r != lh {
                result.differences.push(format!(
                    "uid {uid}: restored message {r} differs from the live file {lh}"
                ));
            }
        }
    }
    for uid in archived.keys().filter(|u| !live.contains_key(u)) {
        result
            .differences
            .push(format!("uid {uid}: in the archive, not live"));
    }
}

/// The SHA-1 of a file, streamed; `None` when it is absent, not a regular file (opened without
/// blocking, never through a symlink) or unreadable.
fn hash_file(path: &Path) -> Option<Guid> {
    let (file, _) = crate::spool::file::open(path, false, crate::spool::file::Follow::No)
        .ok()
        .flatten()?;
    let mut reader = crate::guid::HashingReader::new(std::io::BufReader::new(file));
    std::io::copy(&mut reader, &mut std::io::sink()).ok()?;
    Some(reader.finish().0)
}
