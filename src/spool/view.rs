//! The spool as a whole: configuration and mailbox list, with the rules to find every
//! mailbox's and user's files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::config::Config;
use super::layout;
use super::mboxlist::{MailboxEntry, Mboxlist};
use super::name::{self, MboxName};
use super::user::UserFiles;
use super::Owner;
use crate::error::Result;

/// The metadata files of a mailbox that mailpack reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaFile {
    Header,
    Index,
    Annotations,
}

impl MetaFile {
    pub fn file_name(self) -> &'static str {
        match self {
            MetaFile::Header => "cyrus.header",
            MetaFile::Index => "cyrus.index",
            MetaFile::Annotations => "cyrus.annotations",
        }
    }

    /// The word `metapartition_files` uses for this file.
    fn meta_kind(self) -> &'static str {
        match self {
            MetaFile::Header => "header",
            MetaFile::Index => "index",
            MetaFile::Annotations => "annotations",
        }
    }

    pub const ALL: [MetaFile; 3] = [MetaFile::Header, MetaFile::Index, MetaFile::Annotations];
}

/// A Cyrus server's files as mailpack sees them: configuration and mailbox list, with the rules
/// to find every mailbox's and user's files.
pub struct Spool {
    pub config: Config,
    pub mboxlist: Mboxlist,
    /// Positions in `mboxlist.entries` of each user's mailboxes, in list order: computed once,
    /// because a backup asks for every user's mailboxes.
    by_owner: HashMap<String, Vec<usize>>,
    /// Positions of mailboxes that belong to no user.
    shared: Vec<usize>,
    /// Positions of each shared tree's mailboxes, in list order.
    by_tree: HashMap<String, Vec<usize>>,
}

impl Spool {
    /// Reads `imapd.conf` and the mailbox list it points to.
    pub fn open(config_path: &Path) -> Result<Spool> {
        let config = Config::read(config_path)?;
        let db = config.configdirectory.join("mailboxes.db");
        let mboxlist = Mboxlist::read(&db)?;
        let mut by_owner: HashMap<String, Vec<usize>> = HashMap::new();
        let mut shared = Vec::new();
        let mut by_tree: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in mboxlist.entries.iter().enumerate() {
            match e.name.owner(&config.deletedprefix) {
                Some(user) => by_owner.entry(user).or_default().push(i),
                None => {
                    shared.push(i);
                    if let Some(tree) = e.name.shared_tree(&config.deletedprefix) {
                        by_tree.entry(tree).or_default().push(i);
                    }
                }
            }
        }
        Ok(Spool {
            config,
            mboxlist,
            by_owner,
            shared,
            by_tree,
        })
    }

    /// Every user that owns at least one mailbox that exists (deleted-but-kept ones count),
    /// sorted.
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .by_owner
            .iter()
            .filter(|(_, ids)| {
                ids.iter()
                    .any(|&i| !self.mboxlist.entries[i].is_tombstone())
            })
            .map(|(user, _)| user.clone())
            .collect();
        users.sort();
        users
    }

    /// The user's mailboxes in list order: their tree, their `DELETED.` mailboxes, and the
    /// tombstones of names they used to have.
    pub fn mailboxes_of<'a>(&'a self, userid: &str) -> impl Iterator<Item = &'a MailboxEntry> + 'a {
        let ids = self.by_owner.get(userid).map_or(&[][..], Vec::as_slice);
        ids.iter().map(|&i| &self.mboxlist.entries[i])
    }

    /// Every shared tree with at least one mailbox that exists (deleted-but-kept ones count),
    /// sorted.
    pub fn shared_trees(&self) -> Vec<String> {
        let mut trees: Vec<String> = self
            .by_tree
            .iter()
            .filter(|(_, ids)| {
                ids.iter()
                    .any(|&i| !self.mboxlist.entries[i].is_tombstone())
            })
            .map(|(tree, _)| tree.clone())
            .collect();
        trees.sort();
        trees
    }

    /// A shared tree's mailboxes in list order: the tree, its `DELETED.` mailboxes, and the
    /// tombstones of names it used to have.
    pub fn mailboxes_of_tree<'a>(
        &'a self,
        tree: &str,
    ) -> impl Iterator<Item = &'a MailboxEntry> + 'a {
        let ids = self.by_tree.get(tree).map_or(&[][..], Vec::as_slice);
        ids.iter().map(|&i| &self.mboxlist.entries[i])
    }

    /// An owner's mailboxes: a user's or a shared tree's.
    pub fn mailboxes_of_owner<'a>(
        &'a self,
        owner: &Owner,
    ) -> Box<dyn Iterator<Item = &'a MailboxEntry> + 'a> {
        match owner {
            Owner::User(user) => Box::new(self.mailboxes_of(user)),
            Owner::Shared(tree) => Box::new(self.mailboxes_of_tree(tree)),
            Owner::Server => Box::new(std::iter::empty()),
        }
    }

    /// Mailboxes that belong to no user (shared folders).
    pub fn shared_mailboxes(&self) -> impl Iterator<Item = &MailboxEntry> + '_ {
        self.shared.iter().map(|&i| &self.mboxlist.entries[i])
    }

    pub fn inbox<'a>(&'a self, userid: &'a str) -> Option<&'a MailboxEntry> {
        self.mailboxes_of(userid)
            .find(|e| e.name.is_inbox() && !e.is_tombstone())
    }

    fn relative_dir(&self, e: &MailboxEntry) -> Option<PathBuf> {
        layout::mailbox_relative(&self.config, &e.name, e.uniqueid.as_deref(), e.legacy_dirs)
    }

    /// The directory holding the mailbox's message files.
    pub fn mailbox_dir(&self, e: &MailboxEntry) -> Option<PathBuf> {
        let root = self.config.partitions.get(e.partition.as_deref()?)?;
        Some(root.join(self.relative_dir(e)?))
    }

    /// The directory holding the mailbox's archived message files (`archivepartition-*`).
    pub fn archive_dir(&self, e: &MailboxEntry) -> Option<PathBuf> {
        let root = self.config.archivepartitions.get(e.partition.as_deref()?)?;
        Some(root.join(self.relative_dir(e)?))
    }

    /// Where a metadata file of the mailbox lives (metapartitions honoured).
    pub fn meta_path(&self, e: &MailboxEntry, file: MetaFile) -> Option<PathBuf> {
        let root = self
            .config
            .meta_root(e.partition.as_deref()?, file.meta_kind())?;
        Some(root.join(self.relative_dir(e)?).join(file.file_name()))
    }

    /// The mailbox's name lock file under `mboxname_lockpath`.
    pub fn lock_path(&self, e: &MailboxEntry) -> Option<PathBuf> {
        layout::mailbox_lock(&self.config, &e.name, e.uniqueid.as_deref(), e.legacy_dirs)
    }

    /// Where the user's own files are. By-uniqueid users (3.6+) keep them under their INBOX's
    /// uniqueid; others by name. If the expected file is absent and the other layout's exists
    /// (a spool mid-way through `relocate_by_id`), the existing one wins.
    pub fn user_files(&self, userid: &str) -> UserFiles {
        let inbox = self.inbox(userid);
        let legacy = inbox.is_none_or(|i| i.legacy_dirs);
        let uniqueid = inbox.and_then(|i| i.uniqueid.as_deref());
        let pick = |suffix: &str| {
            let by_name = layout::legacy_user_file(&self.config, userid, suffix);
            match uniqueid {
                Some(id) => {
                    let by_id = layout::uuid_user_file(&self.config, id, suffix);
                    let (first, second) = if legacy {
                        (by_name, by_id)
                    } else {
                        (by_id, by_name)
                    };
                    if !first.exists() && second.exists() {
                        second
                    } else {
                        first
                    }
                }
                None => by_name,
            }
        };
        let root = MboxName {
            domain: name::split_userid(userid).1.map(str::to_string),
            parts: vec!["user".into(), name::split_userid(userid).0.to_string()],
        };
        UserFiles {
            legacy,
            seen: pick("seen"),
            sub: pick("sub"),
            dav: pick("dav"),
            sieve_dir: layout::sieve_dir(&self.config, userid, uniqueid, legacy),
            quota: layout::quota_file(&self.config, &root),
        }
    }
}

impl Spool {
    /// The global `annotations.db`, grouped by mailbox.
    pub fn annotations(&self) -> Result<super::user::MailboxAnnotations> {
        let path = self.config.configdirectory.join("annotations.db");
        let records = super::user::read_db_if_present(&path)?.unwrap_or_default();
        Ok(super::user::MailboxAnnotations::from_records(records))
    }

    /// How `annotations.db` names the mailbox: its uniqueid from 3.6 on, its name before.
    pub fn annotation_key(&self, e: &MailboxEntry) -> Vec<u8> {
        match (&self.mboxlist.format, &e.uniqueid) {
            (super::mboxlist::MboxlistFormat::ByIdAndName, Some(id)) => id.clone().into_bytes(),
            _ => e.name.internal().into_bytes(),
        }
    }

    /// The user's entries in the global `annotations.db`: mailbox METADATA and special-use of
    /// their mailboxes.
    pub fn user_annotations(
        &self,
        userid: &str,
        all: &super::user::MailboxAnnotations,
    ) -> Vec<super::user::Annotation> {
        self.mailboxes_of(userid)
            .filter(|e| !e.is_tombstone())
            .flat_map(|e| all.of(&self.annotation_key(e)))
            .filter_map(super::user::parse_annotation)
            .collect()
    }
}

/// How to take Cyrus's locks.
#[derive(Clone, Copy, Debug)]
pub struct LockOptions {
    pub method: super::lock::LockMethod,
    pub wait: super::lock::LockWait,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            method: super::lock::LockMethod::Fcntl,
            wait: super::lock::LockWait::For(std::time::Duration::from_secs(60)),
        }
    }
}

/// A mailbox's metadata read consistently under Cyrus's locks.
pub struct MailboxSnapshot {
    pub header_bytes: Vec<u8>,
    pub index_bytes: Vec<u8>,
    /// Absent until the mailbox has held a message with an annotation.
    pub annotations_bytes: Option<Vec<u8>>,
    pub header: super::header::MailboxHeader,
    pub index: super::index::IndexFile,
    /// The stat of each file as read (same order as `MetaFile::ALL`).
    pub stats: [Option<crate::io::SourceStat>; 3],
}

impl Spool {
    /// Reads the mailbox's `cyrus.header`, `cyrus.index` and `cyrus.annotations` as Cyrus's own
    /// readers do: mailbox name lock shared, then `cyrus.index` shared (re-checked to be the file
    /// at the path), read everything, release the index lock. The name lock is returned still
    /// held: while it is, Cyrus unlinks no message file of the mailbox, so the caller can copy
    /// message files and then drop it.
    pub fn read_mailbox(
        &self,
        e: &MailboxEntry,
        locks: &LockOptions,
    ) -> Result<(MailboxSnapshot, super::lock::FileLock)> {
        let (snap, lock) = self.read_mailbox_locked(e, locks, true, true)?;
        Ok((snap, lock.expect("a created lock file is always locked")))
    }

    /// `read_mailbox`, creating a missing name lock file only if `create_lockfile` says so. A
    /// reader that must not write (the agent) passes false and, when the file is missing
    /// (no Cyrus process has locked the mailbox since its lock folder was made), reads under the
    /// index lock alone; the name lock then returned is `None`.
    ///
    /// Without `keep_records`, every record is still decoded and checked, but the snapshot's
    /// `index.records` is left empty: for a reader that walks the bytes itself (a backup), as a
    /// million parsed records cost more than the file (issue 19, flat memory).
    pub fn read_mailbox_locked(
        &self,
        e: &MailboxEntry,
        locks: &LockOptions,
        create_lockfile: bool,
        keep_records: bool,
    ) -> Result<(MailboxSnapshot, Option<super::lock::FileLock>)> {
        use super::file;
        use super::lock::{FileLock, LockMode};
        use crate::error::Error;

        let missing = |what: &str| Error::NotFound(format!("{what} of mailbox {}", e.name));
        let lock_path = self.lock_path(e).ok_or_else(|| missing("lock file"))?;
        let name_lock = if create_lockfile {
            Some(FileLock::lock_lockfile(
                &lock_path,
                &self.config.mboxname_lockpath,
                LockMode::Shared,
                locks.method,
                locks.wait,
            )?)
        } else {
            FileLock::lock_existing_lockfile(
                &lock_path,
                LockMode::Shared,
                locks.method,
                locks.wait,
            )?
        };

        let index_path = self
            .meta_path(e, MetaFile::Index)
            .ok_or_else(|| missing("cyrus.index"))?;
        let index_lock =
            FileLock::lock_stable(&index_path, LockMode::Shared, locks.method, locks.wait)?
                .ok_or_else(|| missing("cyrus.index"))?;
        let mut stats = [None, None, None];
        // Sizes come from the files' own stat: each is checked against the file's cap before
        // anything is allocated (a sparse file can claim a terabyte).
        let read_locked =
            |lock: &FileLock, cap: file::Cap| -> Result<(Vec<u8>, crate::io::SourceStat)> {
                let meta = lock
                    .file()
                    .metadata()
                    .map_err(|err| Error::io("stat", lock.path(), err))?;
                let bytes = file::read_capped(lock.file(), lock.path(), meta.len(), cap)?;
                Ok((bytes, crate::io::SourceStat::of(&meta)))
            };
        let (index_bytes, index_stat) = read_locked(&index_lock, file::INDEX_CAP)?;
        stats[1] = Some(index_stat);

        // cyrus.header is only ever replaced under the exclusive index lock we now exclude.
        let header_path = self
            .meta_path(e, MetaFile::Header)
            .ok_or_else(|| missing("cyrus.header"))?;
        let (header_bytes, header_meta) =
            file::read(&header_path, file::Follow::No, file::HEADER_CAP)?
                .ok_or_else(|| missing("cyrus.header"))?;
        stats[0] = Some(crate::io::SourceStat::of(&header_meta));

        let annotations_path = self
            .meta_path(e, MetaFile::Annotations)
            .ok_or_else(|| missing("cyrus.annotations"))?;
        let annotations_bytes = match FileLock::lock_stable(
            &annotations_path,
            LockMode::Shared,
            locks.method,
            locks.wait,
        )? {
            Some(lock) => {
                let (bytes, stat) = read_locked(&lock, file::ANNOTATIONS_CAP)?;
                stats[2] = Some(stat);
                Some(bytes)
            }
            None => None,
        };
        drop(index_lock);

        let index = if keep_records {
            super::index::parse(&index_bytes)
        } else {
            super::index::parse_records(&index_bytes).and_then(|(header, records)| {
                for record in records {
                    record?;
                }
                Ok(super::index::IndexFile {
                    header,
                    records: Vec::new(),
                })
            })
        }
        .map_err(|err| err.in_file(&index_path))?;
        let header =
            super::header::parse(&header_bytes).map_err(|err| err.in_file(&header_path))?;
        Ok((
            MailboxSnapshot {
                header_bytes,
                index_bytes,
                annotations_bytes,
                header,
                index,
                stats,
            },
            name_lock,
        ))
    }
}
