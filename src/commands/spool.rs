//! `mailpack spool ls`: what mailpack sees in a Cyrus spool, read directly from disk under
//! Cyrus's locks: users, mailboxes with their index version and counts, optionally every record.

use std::path::PathBuf;

use crate::error::Result;
use crate::spool::file;
use crate::spool::index::IndexRecord;
use crate::spool::mboxlist::MailboxEntry;
use crate::spool::user::{
    parse_quota, read_seen, read_sieve_dir, read_subscriptions, read_user_db, Quota, SeenEntry,
    SieveFiles,
};
use crate::spool::{LockOptions, MetaFile, Spool};

#[derive(Debug, serde::Serialize)]
pub struct SpoolListing {
    pub config: PathBuf,
    pub users: Vec<UserView>,
    /// Mailboxes outside any user's tree, when listing the whole spool.
    pub shared: Vec<MailboxView>,
}

#[derive(Debug, serde::Serialize)]
pub struct UserView {
    pub user: String,
    pub legacy_layout: bool,
    pub mailboxes: Vec<MailboxView>,
    /// Full internal names the user subscribes to (including stale ones Cyrus keeps).
    pub subscriptions: Vec<String>,
    /// Seen state for mailboxes the user does not own.
    pub seen: Vec<SeenEntry>,
    pub quota: Option<Quota>,
    /// Mailbox METADATA and special-use from the global annotations.db.
    pub annotations: Vec<AnnotationView>,
    pub sieve: SieveFiles,
    pub files: crate::spool::user::UserFiles,
    pub problems: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct AnnotationView {
    pub mailbox: String,
    pub entry: String,
    pub userid: String,
    /// UTF-8 values as text; others as lower-case hex prefixed `hex:`.
    pub value: String,
}

#[derive(Debug, serde::Serialize)]
pub struct MailboxView {
    pub name: String,
    pub uniqueid: Option<String>,
    pub partition: Option<String>,
    pub mbtype: String,
    pub path: Option<PathBuf>,
    /// A name left behind by RENAME or DELETE: no files.
    pub tombstone: bool,
    pub index_version: Option<u32>,
    pub uidvalidity: Option<u32>,
    pub last_uid: Option<u32>,
    pub highestmodseq: Option<u64>,
    pub messages: Option<u64>,
    pub expunged: Option<u64>,
    pub user_flags: Vec<Option<String>>,
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<RecordView>>,
}

#[derive(Debug, serde::Serialize)]
pub struct RecordView {
    pub uid: u32,
    pub guid: String,
    pub flags: Vec<String>,
    pub internaldate: i64,
    pub size: u64,
    pub modseq: u64,
    pub expunged: bool,
    pub unlinked: bool,
    pub archived: bool,
}

pub struct SpoolLsOptions {
    pub config: PathBuf,
    pub users: Vec<String>,
    pub messages: bool,
    pub locks: LockOptions,
}

pub fn spool_ls(options: &SpoolLsOptions) -> Result<SpoolListing> {
    let spool = Spool::open(&options.config)?;
    // Read once for all users; a damaged annotations.db is a problem of every user, not fatal.
    let all_annotations = spool.annotations();
    let users = if options.users.is_empty() {
        spool.users()
    } else {
        options.users.clone()
    };
    let mut listing = SpoolListing {
        config: options.config.clone(),
        users: Vec::new(),
        shared: Vec::new(),
    };
    for user in users {
        let files = spool.user_files(&user);
        let mut problems = Vec::new();
        let subscriptions = match read_user_db(&files.sub) {
            Ok(Some(records)) => read_subscriptions(&records, &user)
                .iter()
                .map(|n| n.internal())
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        let seen = match read_user_db(&files.seen) {
            Ok(Some(records)) => read_seen(&records),
            Ok(None) => Vec::new(),
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        let quota = match file::read(&files.quota, file::Follow::No, file::USER_FILE_CAP) {
            Ok(Some((bytes, _))) => match parse_quota(&bytes) {
                Ok(q) => Some(q),
                Err(e) => {
                    problems.push(e.in_file(&files.quota).to_string());
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let annotations = match &all_annotations {
            Ok(all) => spool
                .user_annotations(&user, all)
                .into_iter()
                .map(|a| AnnotationView {
                    mailbox: a.mailbox,
                    entry: a.entry,
                    userid: a.userid,
                    value: match String::from_utf8(a.value) {
                        Ok(text) => text,
                        Err(e) => format!(
                            "hex:{}",
                            e.into_bytes()
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<String>()
                        ),
                    },
                })
                .collect(),
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        let sieve = read_sieve_dir(&files.sieve_dir).unwrap_or_else(|e| {
            problems.push(e.to_string());
            SieveFiles::default()
        });
        let mailboxes = spool
            .mailboxes_of(&user)
            .map(|e| mailbox_view(&spool, e, options))
            .collect();
        listing.users.push(UserView {
            user,
            legacy_layout: files.legacy,
            mailboxes,
            subscriptions,
            seen,
            quota,
            annotations,
            sieve,
            files,
            problems,
        });
    }
    if options.users.is_empty() {
        listing.shared = spool
            .shared_mailboxes()
            .map(|e| mailbox_view(&spool, e, options))
            .collect();
    }
    Ok(listing)
}

fn mailbox_view(spool: &Spool, e: &MailboxEntry, options: &SpoolLsOptions) -> MailboxView {
    let mut view = MailboxView {
        name: e.name.internal(),
        uniqueid: e.uniqueid.clone(),
        partition: e.partition.clone(),
        mbtype: e.mbtype.clone(),
        path: spool.mailbox_dir(e),
        tombstone: e.is_tombstone(),
        index_version: None,
        uidvalidity: e.uidvalidity,
        last_uid: None,
        highestmodseq: None,
        messages: None,
        expunged: None,
        user_flags: Vec::new(),
        problem: None,
        records: None,
    };
    if e.is_tombstone() || e.is_remote() || spool.meta_path(e, MetaFile::Index).is_none() {
        return view;
    }
    match spool.read_mailbox(e, &options.locks) {
        Ok((snapshot, _name_lock)) => {
            let h = &snapshot.index.header;
            view.index_version = Some(h.minor_version);
            view.uidvalidity = Some(h.uidvalidity);
            view.last_uid = Some(h.last_uid);
            view.highestmodseq = Some(h.highestmodseq);
            let expunged = snapshot
                .index
                .records
                .iter()
                .filter(|r| r.is_expunged())
                .count() as u64;
            view.expunged = Some(expunged);
            view.messages = Some(snapshot.index.records.len() as u64 - expunged);
            view.user_flags = snapshot.header.user_flags.clone();
            if options.messages {
                view.records = Some(
                    snapshot
                        .index
                        .records
                        .iter()
                        .map(|r| record_view(r, &snapshot.header.user_flags))
                        .collect(),
                );
            }
        }
        Err(err) => view.problem = Some(err.to_string()),
    }
    view
}

fn record_view(r: &IndexRecord, names: &[Option<String>]) -> RecordView {
    RecordView {
        uid: r.uid,
        guid: r.guid.to_hex(),
        flags: r.flag_names(names),
        internaldate: r.internaldate_ns.div_euclid(1_000_000_000),
        size: r.size,
        modseq: r.modseq,
        expunged: r.is_expunged(),
        unlinked: r.is_unlinked(),
        archived: r.is_archived(),
    }
}
