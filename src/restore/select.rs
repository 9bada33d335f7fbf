//! Which messages a copy of the chosen mailboxes (files or an IMAP server) holds: each
//! mailbox's records as of the run, filtered by uid, SHA-1 or what was expunged between two
//! times. A mailbox whose name cannot become a path, whose metadata fails its checks, or that
//! would land where another one does, is left out and reported; the others go on.

use std::collections::{HashMap, HashSet};

use super::export::{export_levels, ExportMessage};
use super::plan::{Outcome, Request, RestorePlan};
use super::{
    mailboxes_at, read_mailbox, restorable, run_at, safe_levels, LostEntry, MailboxAt, Messages,
};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::spool::index::IndexRecord;
use crate::spool::name::MboxName;
use crate::store::Archive;

/// One mailbox's messages selected for a copy, with their flags.
#[derive(Debug)]
pub struct Selected {
    pub name: MboxName,
    /// The name's levels below its owner, each checked to be one path component.
    pub levels: Vec<String>,
    /// The owner's INBOX itself (not a folder that is merely named INBOX).
    pub inbox: bool,
    pub uidvalidity: u32,
    /// The UID the mailbox gives its next message (`last_uid` + 1 of its `cyrus.index`): what
    /// IMAP shows as UIDNEXT, and above every UID it ever gave, expunged ones included.
    pub uidnext: u32,
    /// The records copied, moved out of the parsed index: their flag names are made as each
    /// message is written (`messages`), so a million-message mailbox is not held twice.
    pub records: Vec<IndexRecord>,
    /// The mailbox's user flag names, by bit (its `cyrus.header`'s).
    pub user_flag_names: Vec<Option<String>>,
}

impl Selected {
    /// The mailbox's place in a file or IMAP target (`export_levels`).
    pub fn export_levels(&self) -> Vec<String> {
        export_levels(&self.levels, self.inbox)
    }

    /// The messages with what a copy of them carries, one at a time.
    pub fn messages(&self) -> impl Iterator<Item = ExportMessage<'_>> + '_ {
        self.records.iter().map(|r| ExportMessage {
            record: r,
            flags: r.flag_names(&self.user_flag_names),
            uidvalidity: self.uidvalidity,
        })
    }
}

/// The steps of a copy: what it writes and where the bytes come from.
pub enum CopySteps<'a> {
    /// The selected mailboxes, each message read from the archive as it is written.
    Mailboxes {
        messages: Messages<'a>,
        selected: Vec<Selected>,
    },
    /// One message by SHA-1 (`--sha1` alone), already read and checked.
    Message { sha1: Guid, bytes: Vec<u8> },
}

/// The record a single message is written as: no mailbox gives it a uid, flags or date.
pub fn message_record(sha1: Guid, bytes: &[u8]) -> IndexRecord {
    IndexRecord {
        uid: 0,
        guid: sha1,
        size: bytes.len() as u64,
        ..Default::default()
    }
}

/// A copy's plan for `request`: its mailboxes and messages (see `select`), with no writes yet.
pub fn plan_copy<'a>(
    archive: &'a Archive,
    request: &Request,
    destination: impl Fn(&Selected, bool) -> Option<String>,
) -> Result<RestorePlan<CopySteps<'a>>> {
    let mut plan = RestorePlan::new(());
    let selected = select(archive, request, &mut plan, destination)?;
    Ok(plan.with_steps(CopySteps::Mailboxes {
        messages: Messages::new(archive),
        selected,
    }))
}

/// A copy's plan for one message by SHA-1: written to `write`, without flags.
pub fn plan_message<'a>(sha1: Guid, bytes: Vec<u8>, write: String) -> RestorePlan<CopySteps<'a>> {
    let mut plan = RestorePlan::new(CopySteps::Message { sha1, bytes });
    plan.messages = 1;
    plan.writes.push(write);
    plan
}

/// A selected message's bytes, SHA-1 checked; `None` when they do not read, which is reported
/// in `out` (and the entry listed as lost) while the rest of the copy goes on.
pub fn read_message(
    messages: &Messages,
    s: &Selected,
    record: &IndexRecord,
    out: &mut Outcome,
) -> Option<Vec<u8>> {
    match messages.read(&record.guid) {
        Ok(b) => Some(b),
        Err(e) => {
            out.bad
                .push(format!("{} uid {}: {e}", s.name.relative('/'), record.uid));
            if let Some(lost) = messages.lost(&record.guid, &e) {
                out.push_lost(lost);
            }
            None
        }
    }
}

/// The mailboxes and messages of `request` for a copy: each mailbox left out goes to the plan
/// as refused (its name) or bad and lost (its metadata), and the plan's `mailboxes` and
/// `messages` are set from what is selected. `destination` says where a mailbox lands in the
/// target (given whether several are copied), to keep two from landing in one place.
fn select<S>(
    archive: &Archive,
    request: &Request,
    plan: &mut RestorePlan<S>,
    destination: impl Fn(&Selected, bool) -> Option<String>,
) -> Result<Vec<Selected>> {
    let filter = &request.messages;
    let mut selected = Vec::new();
    for m in &request.mailboxes {
        let levels = match safe_levels(&m.name) {
            Ok(l) => l,
            Err(why) => {
                plan.refused.push(why);
                continue;
            }
        };
        // A mailbox whose metadata fails its checks is reported and left out; the others go on.
        let mut data = match read_mailbox(archive, m) {
            Ok(d) => d,
            Err(lost) => {
                not_restored(plan, m, lost);
                continue;
            }
        };
        let mut records = std::mem::take(&mut data.index.records);
        records.retain(|r| {
            restorable(r, false)
                && filter.uid.is_none_or(|u| r.uid == u)
                && filter.sha1.is_none_or(|g| r.guid == g)
        });
        if records.len() < records.capacity() / 2 {
            records.shrink_to_fit();
        }
        if let Some((t1, t2)) = filter.expunged_between {
            records = match expunged_between(archive, m, records, t1, t2)? {
                Ok(r) => r,
                Err(lost) => {
                    not_restored(plan, m, lost);
                    continue;
                }
            };
        }
        selected.push(Selected {
            name: m.name.clone(),
            levels,
            inbox: m.name.is_inbox(),
            uidvalidity: data.index.header.uidvalidity,
            uidnext: data.index.header.last_uid.saturating_add(1),
            records,
            user_flag_names: data.header.user_flags,
        });
    }
    let selected = apart(selected, &mut plan.refused, destination);
    plan.mailboxes = selected.iter().map(|s| s.name.relative('/')).collect();
    plan.messages = selected.iter().map(|s| s.records.len() as u64).sum();
    Ok(selected)
}

/// A mailbox left out because an entry it needs did not read: reported, and the entry listed.
fn not_restored<S>(plan: &mut RestorePlan<S>, m: &MailboxAt, lost: LostEntry) {
    plan.bad.push(format!(
        "mailbox {}: not restored: {lost}",
        m.name.relative('/')
    ));
    if !plan.lost.iter().any(|l| l.entry == lost.entry) {
        plan.lost.push(lost);
    }
}

/// The mapping from names to paths keeps mailboxes apart (formats/restore.md, "Exports"); this
/// is the guard behind it: a mailbox that would still land where an earlier one did is refused
/// rather than mixed into it or written over it.
fn apart(
    selected: Vec<Selected>,
    refused: &mut Vec<String>,
    destination: impl Fn(&Selected, bool) -> Option<String>,
) -> Vec<Selected> {
    let several = selected.len() > 1;
    let mut taken: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(selected.len());
    for s in selected {
        if let Some(dest) = destination(&s, several) {
            let name = s.name.to_string();
            if let Some(first) = taken.get(&dest) {
                refused.push(format!(
                    "mailbox {name}: would share {dest} with mailbox {first}; not restored"
                ));
                continue;
            }
            taken.insert(dest, name);
        }
        out.push(s);
    }
    out
}

/// Of `records` (the mailbox as of `t1`), those that are gone or expunged as of `t2`. The inner
/// error is the later state's metadata that failed its checks.
fn expunged_between(
    archive: &Archive,
    m: &MailboxAt,
    records: Vec<IndexRecord>,
    t1: i64,
    t2: i64,
) -> Result<std::result::Result<Vec<IndexRecord>, LostEntry>> {
    if t2 < t1 {
        return Err(Error::usage(
            "--expunged-between wants the earlier time first",
        ));
    }
    let later = run_at(archive, Some(t2))?;
    let (then, _) = mailboxes_at(archive, later.run);
    let still: HashSet<u32> = match then.iter().find(|x| x.uniqueid == m.uniqueid) {
        Some(later_m) => match read_mailbox(archive, later_m) {
            Ok(data) => data
                .index
                .records
                .iter()
                .filter(|r| !r.is_expunged())
                .map(|r| r.uid)
                .collect(),
            Err(lost) => return Ok(Err(lost)),
        },
        None => Default::default(),
    };
    Ok(Ok(records
        .into_iter()
        .filter(|r| !still.contains(&r.uid))
        .collect()))
}
