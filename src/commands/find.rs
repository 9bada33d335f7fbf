//! `mailpack find`: messages of every retained run found by header fields and dates, each with
//! where it was, when, and how it ended (formats/find-index.md); restore one with
//! `restore --sha1`.

use std::collections::HashMap;

use crate::error::Result;
use crate::find::{current_index, display_name, search, Ended, FindIndex, IndexUse, Query};
use crate::store::{Archive, ArchivePaths};

/// One copy of a found message: a UID of a mailbox and its life there.
#[derive(Debug, serde::Serialize)]
pub struct FoundCopy {
    /// The mailbox's name while the copy was live (its latest name if never live), as admins
    /// type it (`INBOX`, `Archive/2023`).
    pub mailbox: String,
    /// Every name the mailbox had while the copy was live, when it had more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_names: Vec<String>,
    pub uid: u32,
    pub internaldate: i64,
    pub first_run: Option<u64>,
    pub first_time: Option<i64>,
    pub last_run: Option<u64>,
    pub last_time: Option<i64>,
    pub live: bool,
    pub ended: Option<Ended>,
    pub flags: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct FoundMessage {
    pub sha1: String,
    pub size: u64,
    pub date: Option<i64>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
    /// Some copy is live as of the archive's last run.
    pub live: bool,
    pub copies: Vec<FoundCopy>,
}

pub struct FindOutcome {
    pub index: IndexUse,
    pub runs: usize,
    pub messages_indexed: usize,
    pub found: Vec<FoundMessage>,
    /// Damage seen while opening; the search covered what could be read.
    pub damage: Vec<String>,
}

/// Searches one local archive, keeping its find index beside it current.
pub fn find(paths: &ArchivePaths, query: &Query, notices: &mut Vec<String>) -> Result<FindOutcome> {
    // With both indexes current, the archive opens streamed (its runs, not its entries) and the
    // find index is searched as it streams: a search holds what it found (issue 19).
    // Otherwise the archive is opened whole (an open that found its index stale already did).
    let mut opening = Vec::new();
    let whole = match Archive::open_streamed(paths, &mut opening) {
        Ok(archive) if archive.is_streamed() => {
            if let Some((index, total)) = crate::find::search_current(&archive, query)? {
                let found = index
                    .messages
                    .iter()
                    .map(|m| found_message(&index, m))
                    .collect();
                return Ok(FindOutcome {
                    index: IndexUse::Current,
                    runs: index.head.runs.len(),
                    messages_indexed: total,
                    found,
                    damage: Vec::new(),
                });
            }
            None
        }
        Ok(archive) => {
            notices.append(&mut opening);
            Some(archive)
        }
        Err(_) => None,
    };
    let (archive, damage) = match whole {
        Some(archive) => (archive, Vec::new()),
        None => super::open_for_reading(paths, notices)?,
    };
    // A degraded view is a part of the archive: not worth keeping as its index.
    let save = damage.is_empty();
    let mut outcome = find_archive(&archive, query, save, notices)?;
    outcome.damage = damage;
    Ok(outcome)
}

/// Searches an archive already open; `save` keeps the find index beside a local one.
pub fn find_archive(
    archive: &Archive,
    query: &Query,
    save: bool,
    notices: &mut Vec<String>,
) -> Result<FindOutcome> {
    let (index, used) = current_index(archive, save, notices)?;
    let found = search(&index, query)?
        .into_iter()
        .map(|m| found_message(&index, m))
        .collect();
    Ok(FindOutcome {
        index: used,
        runs: index.head.runs.len(),
        messages_indexed: index.messages.len(),
        found,
        damage: Vec::new(),
    })
}

fn found_message(index: &FindIndex, m: &crate::find::Message) -> FoundMessage {
    let time_of: HashMap<u64, i64> = index.head.runs.iter().map(|r| (r.run, r.time)).collect();
    let newest = index.head.runs.last().map(|r| r.run);
    let copies = m
        .seen
        .iter()
        .map(|c| {
            let last = if c.is_live() { newest } else { c.last };
            let folder = &index.folders[c.folder as usize];
            // The names held during the copy's life; a never-live copy gets the latest name.
            let mut names: Vec<String> = folder
                .names
                .iter()
                .filter(|n| match (c.first, last) {
                    (Some(first), Some(last)) => {
                        n.first <= last && n.last.is_none_or(|l| l >= first)
                    }
                    _ => false,
                })
                .map(|n| display_name(&n.name))
                .collect();
            if names.is_empty() {
                names.extend(folder.names.last().map(|n| display_name(&n.name)));
            }
            let mailbox = names.pop().unwrap_or_else(|| folder.uniqueid.clone());
            names.retain(|n| *n != mailbox);
            names.dedup();
            FoundCopy {
                mailbox,
                other_names: names,
                uid: c.uid,
                internaldate: c.internaldate,
                first_run: c.first,
                first_time: c.first.and_then(|r| time_of.get(&r).copied()),
                last_run: last,
                last_time: last.and_then(|r| time_of.get(&r).copied()),
                live: c.is_live(),
                ended: c.ended,
                flags: c.flags.clone(),
            }
        })
        .collect();
    let f = m.fields.clone().unwrap_or_default();
    FoundMessage {
        sha1: m.sha1.clone(),
        size: m.size,
        date: f.date,
        from: f.from,
        to: f.to,
        subject: f.subject,
        message_id: f.message_id,
        live: m.seen.iter().any(crate::find::Copy::is_live),
        copies,
    }
}

/// Brings an owner's find index up to date after a backup or compaction changed its archive,
/// when it has one (the first search builds it). What went wrong is returned to report; it
/// never fails the run, which is committed by then.
pub fn refresh(paths: &ArchivePaths) -> Vec<String> {
    if std::fs::symlink_metadata(crate::find::find_index_path(&paths.archive)).is_err() {
        return Vec::new();
    }
    match Archive::open(paths, &mut Vec::new()) {
        Ok(archive) => crate::find::refresh_existing(&archive),
        Err(e) => vec![format!("find index not brought up to date: {e}")],
    }
}
