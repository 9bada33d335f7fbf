//! `verify --against-spool`: a whole-server check without restoring. Every message GUID the live
//! indexes list (read under Cyrus's locks) must be stored in its owner's archive, every mailbox
//! on the server must have its folder in the archive's latest state, and every GUID the
//! archive's latest indexes list must be stored too. What is missing is reported, and the owner
//! is marked so that its next backup reads every mailbox again and stores what the spool still
//! has (formats/status.md section 3). "Stored" means present in the committed index at a place
//! inside the committed archive; reading every byte back is `verify`'s job.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use crate::error::Result;
use crate::guid::Guid;
use crate::spool::{LockOptions, Owner, Spool};
use crate::store::{status, Archive, ArchivePaths};

pub struct SpoolCheckOptions {
    pub config: PathBuf,
    pub archive_dir: PathBuf,
    pub locks: LockOptions,
    /// Report only; mark nothing for healing.
    pub dry_run: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct OwnerCheck {
    pub owner: String,
    pub kind: &'static str,
    pub mailboxes: u64,
    pub messages: u64,
    /// Mailboxes on the server with no folder in the archive's latest state.
    pub mailboxes_missing: Vec<String>,
    /// (mailbox, uid, sha1) of live messages whose file the archive lacks.
    pub messages_missing: Vec<(String, u32, String)>,
    /// (mailbox, sha1) of messages the archive's own latest indexes list and it lacks.
    pub archived_missing: Vec<(String, String)>,
    /// Mailboxes that could not be read (locked, damaged): not checked this time.
    pub unchecked: Vec<String>,
    /// Marked for its next backup to read everything again.
    pub marked_for_heal: bool,
    pub error: Option<String>,
}

impl OwnerCheck {
    pub fn missing(&self) -> bool {
        !self.mailboxes_missing.is_empty()
            || !self.messages_missing.is_empty()
            || !self.archived_missing.is_empty()
            || self.error.is_some()
    }
}

/// Checks every user and shared tree of the server against its archive.
pub fn check_spool(options: &SpoolCheckOptions) -> Result<Vec<OwnerCheck>> {
    let spool = Spool::open(&options.config)?;
    let owners: Vec<Owner> = spool
        .users()
        .into_iter()
        .map(Owner::User)
        .chain(spool.shared_trees().into_iter().map(Owner::Shared))
        .collect();
    let mut out = Vec::new();
    for owner in owners {
        let mut check = OwnerCheck {
            owner: owner.name().to_string(),
            kind: owner.kind(),
            ..OwnerCheck::default()
        };
        if let Err(e) = check_owner(&spool, &owner, options, &mut check) {
            check.error = Some(e.to_string());
        }
        if check.missing() && !options.dry_run {
            if let Ok(paths) = ArchivePaths::for_owner(&options.archive_dir, &owner) {
                check.marked_for_heal = status::request_heal(&paths.archive).is_ok();
            }
        }
        out.push(check);
    }
    Ok(out)
}

fn check_owner(
    spool: &Spool,
    owner: &Owner,
    options: &SpoolCheckOptions,
    check: &mut OwnerCheck,
) -> Result<()> {
    let paths = ArchivePaths::for_owner(&options.archive_dir, owner)?;
    let archive = Archive::open(&paths, &mut Vec::new())?;
    let committed = archive.committed_len();
    let stored: HashSet<Guid> = archive
        .state_at(None)
        .into_iter()
        .filter_map(|(_, e)| {
            let guid: Guid = e
                .name
                .strip_prefix(crate::archive::FILES_DIR)?
                .parse()
                .ok()?;
            (e.placement.member < committed).then_some(guid)
        })
        .collect();
    let Some(last) = archive.runs().last() else {
        return Ok(());
    };
    let (archived, _) = crate::restore::mailboxes_at(&archive, last.run);
    let folders: BTreeSet<&str> = archived.iter().map(|m| m.uniqueid.as_str()).collect();
    for m in &archived {
        match crate::restore::read_mailbox(&archive, m) {
            Ok(data) => {
                for r in &data.index.records {
                    if !r.is_unlinked() && !r.guid.is_zero() && !stored.contains(&r.guid) {
                        check
                            .archived_missing
                            .push((m.name.internal(), r.guid.to_string()));
                    }
                }
            }
            Err(lost) => check
                .archived_missing
                .push((m.name.internal(), format!("its index: {lost}"))),
        }
    }
    for e in spool.mailboxes_of_owner(owner) {
        if e.is_tombstone() || e.is_remote() {
            continue;
        }
        check.mailboxes += 1;
        let name = e.name.internal();
        match &e.uniqueid {
            Some(uid) if folders.contains(uid.as_str()) => {}
            _ => check.mailboxes_missing.push(name.clone()),
        }
        let snapshot = match spool.read_mailbox(e, &options.locks) {
            Ok((snapshot, _name_lock)) => snapshot,
            Err(err) => {
                check.unchecked.push(format!("{name}: {err}"));
                continue;
            }
        };
        for r in &snapshot.index.records {
            if r.is_unlinked() || r.guid.is_zero() {
                continue;
            }
            check.messages += 1;
            if !stored.contains(&r.guid) {
                check
                    .messages_missing
                    .push((name.clone(), r.uid, r.guid.to_string()));
            }
        }
    }
    Ok(())
}
