//! The one implementation of reading a spool for a backup: pass 1 (stat), pass 2 (Cyrus's
//! locks), message files, per-user files. Read-only: it opens only files inside the folders
//! imapd.conf names, creates nothing (not even a missing Cyrus lock file) and writes nothing.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{MailboxListing, MessageFile, OpenedMailbox, Source, UserFileListing, UserListing};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::io::SourceStat;
use crate::spool::cyrusdb::Record;
use crate::spool::file::{self, Follow};
use crate::spool::lock::{FileLock, LockMode};
use crate::spool::mboxlist::MailboxEntry;
use crate::spool::user::MailboxAnnotations;
use crate::spool::Owner;
use crate::spool::{LockOptions, MetaFile, Spool};

/// The mailbox pass 2 has open: its name lock (when Cyrus had made the lock file) and where its
/// message files are.
struct Open {
    _name_lock: Option<FileLock>,
    data_dir: Option<PathBuf>,
    archive_dir: Option<PathBuf>,
    ahead: Readahead,
}

impl Open {
    fn message_path(&self, uid: u32, archived: bool) -> Option<PathBuf> {
        let dir = if archived {
            self.archive_dir.as_ref()
        } else {
            self.data_dir.as_ref()
        };
        dir.map(|d| d.join(format!("{uid}.")))
    }

    /// Keeps the kernel reading the next `READAHEAD_FILES` wanted files.
    fn hint_ahead(&mut self) {
        let until = (self.ahead.next + READAHEAD_FILES).min(self.ahead.wanted.len());
        self.ahead.hinted = self.ahead.hinted.max(self.ahead.next);
        while self.ahead.hinted < until {
            let (uid, archived) = self.ahead.wanted[self.ahead.hinted];
            self.ahead.hinted += 1;
            if let Some(path) = self.message_path(uid, archived) {
                hint_willneed(&path);
            }
        }
    }
}

/// Message files the kernel is asked to read ahead of the one being sent.
const READAHEAD_FILES: usize = 16;
/// Of each such file, the first bytes; sequential readahead takes over for the rest, and the
/// window stays bounded when a mailbox holds large attachments.
const READAHEAD_BYTES: libc::off_t = 1 << 20;

/// The message files a backup said it will fetch, in order. Without hints, a spool that is not
/// in the page cache is read one file at a time, each read waiting for the disk; with them the
/// disk has the next files queued while this one is hashed and compressed (BENCHMARKS.md,
/// "Reading a spool that is not in the page cache": 8.47 s to 7.08 s, about a warm run's time).
#[derive(Default)]
struct Readahead {
    wanted: Vec<(u32, bool)>,
    /// Index in `wanted` of the next file expected.
    next: usize,
    /// Files in `wanted[..hinted]` have been hinted.
    hinted: usize,
}

/// Asks the kernel to start reading the head of `path`. Only a hint: a file that is gone or
/// not a plain file is simply not read ahead, and nothing is read into this process.
fn hint_willneed(path: &Path) {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open for the call.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            0,
            READAHEAD_BYTES,
            libc::POSIX_FADV_WILLNEED,
        )
    };
}

pub struct LocalSource<'a> {
    spool: &'a Spool,
    annotations: &'a MailboxAnnotations,
    locks: LockOptions,
    /// The folders imapd.conf names, resolved: nothing outside them is opened.
    roots: Vec<PathBuf>,
    open: Option<Open>,
}

fn stat_of(path: &Path) -> Option<SourceStat> {
    std::fs::metadata(path).ok().map(|m| SourceStat::of(&m))
}

/// A user name that cannot be turned into a path outside the user's own folders.
fn check_user(user: &str) -> Result<()> {
    if user.is_empty() || user.contains('/') || user.contains('\0') || user.starts_with('.') {
        return Err(Error::usage(format!("{user:?} is not a user name")));
    }
    Ok(())
}

impl<'a> LocalSource<'a> {
    pub fn new(
        spool: &'a Spool,
        annotations: &'a MailboxAnnotations,
        locks: LockOptions,
    ) -> LocalSource<'a> {
        let c = &spool.config;
        let roots = [&c.configdirectory, &c.sievedir, &c.mboxname_lockpath]
            .into_iter()
            .chain(c.partitions.values())
            .chain(c.metapartitions.values())
            .chain(c.archivepartitions.values())
            .filter_map(|p| p.canonicalize().ok())
            .collect();
        LocalSource {
            spool,
            annotations,
            locks,
            roots,
            open: None,
        }
    }

    /// Refuses a path that does not lie, symlinks resolved, inside the spool's folders.
    fn allowed(&self, path: &Path) -> Result<PathBuf> {
        let real = match path.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(path.display().to_string()))
            }
            Err(e) => return Err(Error::io("resolve", path, e)),
        };
        if self.roots.iter().any(|r| real.starts_with(r)) {
            Ok(real)
        } else {
            Err(Error::Unsupported {
                path: path.to_path_buf(),
                detail: "outside the folders imapd.conf names; refused".into(),
            })
        }
    }

    fn mailbox(&self, owner: &Owner, uniqueid: &str) -> Result<&'a MailboxEntry> {
        self.spool
            .mailboxes_of_owner(owner)
            .find(|e| !e.is_tombstone() && e.uniqueid.as_deref() == Some(uniqueid))
            .ok_or_else(|| Error::NotFound(format!("mailbox {uniqueid} of {owner}")))
    }

    fn user_file_paths(&self, user: &str) -> Vec<(String, PathBuf)> {
        let files = self.spool.user_files(user);
        let mut out = vec![
            ("meta/seen".to_string(), files.seen.clone()),
            ("meta/sub".to_string(), files.sub.clone()),
            ("meta/quota".to_string(), files.quota.clone()),
            ("meta/dav.db".to_string(), files.dav.clone()),
        ];
        if let Ok(dir) = std::fs::read_dir(&files.sieve_dir) {
            let mut sieve: Vec<(String, PathBuf)> = dir
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().to_str()?.to_string();
                    crate::archive::check_name(&name).ok()?;
                    Some((format!("meta/sieve/{name}"), entry.path()))
                })
                .collect();
            sieve.sort();
            out.extend(sieve);
        }
        out
    }
}

impl Source for LocalSource<'_> {
    fn users(&mut self) -> Result<Vec<String>> {
        Ok(self.spool.users())
    }

    fn shared_trees(&mut self) -> Result<Vec<String>> {
        Ok(self.spool.shared_trees())
    }

    fn server_annotations(&mut self) -> Result<Vec<Record>> {
        Ok(self.annotations.of(b"").to_vec())
    }

    fn list_owner(&mut self, owner: &Owner) -> Result<UserListing> {
        check_user(owner.name())?;
        let mut listing = UserListing::default();
        for e in self
            .spool
            .mailboxes_of_owner(owner)
            .filter(|e| !e.is_tombstone() && !e.is_remote())
        {
            let mut records = vec![Record {
                key: e.raw_key.clone(),
                value: e.raw_value.clone(),
            }];
            if let Some((k, v)) = &e.id_record {
                records.push(Record {
                    key: k.clone(),
                    value: v.clone(),
                });
            }
            let mut stats = [None, None, None];
            for (i, f) in MetaFile::ALL.iter().enumerate() {
                stats[i] = self.spool.meta_path(e, *f).and_then(|p| stat_of(&p));
            }
            listing.mailboxes.push(MailboxListing {
                name: e.name.clone(),
                uniqueid: e.uniqueid.clone(),
                records,
                annotations: self.annotations.of(&self.spool.annotation_key(e)).to_vec(),
                stats,
            });
        }
        let Owner::User(user) = owner else {
            // A shared tree has no per-user files.
            return Ok(listing);
        };
        for (entry, path) in self.user_file_paths(user) {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let link = if meta.file_type().is_symlink() {
                let target =
                    std::fs::read_link(&path).map_err(|e| Error::io("readlink", &path, e))?;
                Some(target.to_string_lossy().into_owned())
            } else {
                None
            };
            listing.user_files.push(UserFileListing {
                entry,
                stat: SourceStat::of(&meta),
                link,
            });
        }
        Ok(listing)
    }

    fn open_mailbox(&mut self, owner: &Owner, uniqueid: &str) -> Result<OpenedMailbox> {
        check_user(owner.name())?;
        self.open = None;
        let e = self.mailbox(owner, uniqueid)?;
        for f in MetaFile::ALL {
            if let Some(p) = self.spool.meta_path(e, f).filter(|p| p.exists()) {
                self.allowed(&p)?;
            }
        }
        // The backup walks the index's records itself, from the bytes.
        let (snap, name_lock) = self
            .spool
            .read_mailbox_locked(e, &self.locks, false, false)?;
        // The folders are checked once; a message file is then `<digits>.` inside one of them,
        // opened without following a symlink, so it cannot lead elsewhere either.
        let checked = |dir: Option<PathBuf>| -> Result<Option<PathBuf>> {
            match dir {
                Some(d) => match self.allowed(&d) {
                    Ok(real) => Ok(Some(real)),
                    Err(Error::NotFound(_)) => Ok(None),
                    Err(e) => Err(e),
                },
                None => Ok(None),
            }
        };
        self.open = Some(Open {
            _name_lock: name_lock,
            data_dir: checked(self.spool.mailbox_dir(e))?,
            archive_dir: checked(self.spool.archive_dir(e))?,
            ahead: Readahead::default(),
        });
        Ok(OpenedMailbox {
            header: snap.header_bytes,
            index: snap.index_bytes,
            annotations: snap.annotations_bytes,
            stats: snap.stats,
        })
    }

    fn prefetch(&mut self, messages: &[(u32, Guid, bool)]) -> Result<()> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| Error::usage("prefetch without an open mailbox"))?;
        open.ahead = Readahead {
            wanted: messages.iter().map(|&(uid, _, a)| (uid, a)).collect(),
            ..Readahead::default()
        };
        open.hint_ahead();
        Ok(())
    }

    fn fetch_message(
        &mut self,
        uid: u32,
        _guid: &Guid,
        archived: bool,
    ) -> Result<Option<MessageFile<'_>>> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| Error::usage("fetch without an open mailbox"))?;
        let ahead = &mut open.ahead;
        if let Some(at) = ahead.wanted[ahead.next..]
            .iter()
            .position(|&w| w == (uid, archived))
        {
            ahead.next += at + 1;
            open.hint_ahead();
        }
        let Some(path) = open.message_path(uid, archived) else {
            return Err(Error::NotFound(format!("a folder for uid {uid}")));
        };
        // Without blocking and regular files only: a FIFO here would otherwise block the open,
        // and the backup with it, while the mailbox's name lock is held.
        let Some((file, meta)) = file::open(&path, false, Follow::No)? else {
            return Ok(None);
        };
        let size = meta.len();
        Ok(Some(MessageFile {
            size,
            reader: Box::new(file),
        }))
    }

    fn message_file(&self, uid: u32, archived: bool) -> String {
        match self
            .open
            .as_ref()
            .and_then(|o| o.message_path(uid, archived))
        {
            Some(path) => path.display().to_string(),
            None => format!("{uid}."),
        }
    }

    fn close_mailbox(&mut self) -> Result<()> {
        self.open = None;
        Ok(())
    }

    fn read_user_file(&mut self, user: &str, entry: &str) -> Result<Option<(Vec<u8>, SourceStat)>> {
        check_user(user)?;
        let Some((_, path)) = self
            .user_file_paths(user)
            .into_iter()
            .find(|(e, _)| e == entry)
        else {
            return Ok(None);
        };
        match self.allowed(&path) {
            Ok(_) => {}
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        let Some(lock) =
            FileLock::lock_stable(&path, LockMode::Shared, self.locks.method, self.locks.wait)?
        else {
            return Ok(None);
        };
        let meta = lock
            .file()
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?;
        let bytes = file::read_capped(lock.file(), &path, meta.len(), file::USER_FILE_CAP)?;
        Ok(Some((bytes, SourceStat::of(&meta))))
    }
}
