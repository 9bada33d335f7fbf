//! The agent (issue 7, formats/protocol.md): everything a backup reads from a mail host, behind
//! one interface, `Source`. `LocalSource` is the one implementation of scanning and locking;
//! a local backup calls it in process, and `mailpack agent` serves it over frames on
//! stdin/stdout to a `RemoteSource` on the backup host.

mod frame;
mod local;
mod proto;
mod remote;
mod server;

pub use frame::{Frame, FrameKind, MAX_FRAME};
pub use local::LocalSource;
pub use remote::RemoteSource;
pub use server::serve;

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::Result;
use crate::guid::Guid;
use crate::io::SourceStat;
use crate::spool::cyrusdb::Record;
use crate::spool::name::MboxName;
use crate::spool::Owner;

/// What the pipes on either side of ssh are widened to (Linux's default unprivileged maximum).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// A pipe holds 64 KiB by default. Between the agent and sshd, and between ssh and the backup,
/// that made each side wake the other for every few frames, and ssh buffer (and grow and shrink
/// its buffers for) whatever did not fit: a sixth of a remote backup's CPU went to ssh. A 1 MiB
/// pipe cut that by a quarter (BENCHMARKS.md, "Remote backup over ssh"). Best effort: on a
/// descriptor that is not a pipe, or over an admin's lower limit, nothing changes.
pub fn widen_pipe(fd: BorrowedFd<'_>) {
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours; failure is harmless.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
}

/// One mailbox as pass 1 sees it: enough to decide, without opening anything, whether it
/// changed since the last run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxListing {
    pub name: MboxName,
    /// `None` on pre-2.5 servers, whose mailboxes cannot be backed up.
    pub uniqueid: Option<String>,
    /// The raw mailboxes.db records (`N` and `I` on 3.6, the one record before).
    pub records: Vec<Record>,
    /// The mailbox's rows of the global annotations.db.
    pub annotations: Vec<Record>,
    /// cyrus.header, cyrus.index, cyrus.annotations (absent: `None`).
    pub stats: [Option<SourceStat>; 3],
}

/// A per-user file (seen, subscriptions, quota, dav.db, sieve scripts) as pass 1 sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserFileListing {
    /// The archive entry it is stored as (`meta/seen`, `meta/sieve/main.bc`, ...).
    pub entry: String,
    pub stat: SourceStat,
    /// For a symlink (sieve's `defaultbc`): its target.
    pub link: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserListing {
    pub mailboxes: Vec<MailboxListing>,
    pub user_files: Vec<UserFileListing>,
}

/// A mailbox's metadata read under Cyrus's locks (pass 2). The source keeps the mailbox's name
/// lock until `close_mailbox`, so the message files its index lists stay.
pub struct OpenedMailbox {
    pub header: Vec<u8>,
    pub index: Vec<u8>,
    pub annotations: Option<Vec<u8>>,
    pub stats: [Option<SourceStat>; 3],
}

/// A message file being read: exactly `size` bytes.
pub struct MessageFile<'a> {
    pub size: u64,
    pub reader: Box<dyn Read + 'a>,
}

/// What a backup reads from a mail host.
pub trait Source {
    /// Every user with at least one existing mailbox, sorted.
    fn users(&mut self) -> Result<Vec<String>>;
    /// Every shared tree with at least one existing mailbox, sorted (formats/backup-entries.md,
    /// "Shared mailboxes").
    fn shared_trees(&mut self) -> Result<Vec<String>>;
    /// The annotations of the server itself (not of a mailbox): its `annotations.db` records
    /// whose mailbox is empty.
    fn server_annotations(&mut self) -> Result<Vec<crate::spool::cyrusdb::Record>>;
    /// Pass 1 for a whole owner: mailboxes with their records and metadata stats, and for a
    /// user the per-user files with theirs. Opens no mailbox.
    fn list_owner(&mut self, owner: &Owner) -> Result<UserListing>;
    /// Says that `list_owner` will be called for these owners next, in this order, so a remote
    /// agent can send their listings while the caller finishes other work (a commit). Asking
    /// for anything else first is allowed; a listing the caller does not go on to is dropped.
    fn list_ahead(&mut self, _owners: &[Owner]) -> Result<()> {
        Ok(())
    }
    /// Pass 2: the mailbox's metadata under Cyrus's locks; its name lock stays held.
    fn open_mailbox(&mut self, owner: &Owner, uniqueid: &str) -> Result<OpenedMailbox>;
    /// Says which messages of the open mailbox `fetch_message` will be asked for next, in that
    /// order, so a remote agent can send them back to back. The caller may stop early; the
    /// source then discards the rest.
    fn prefetch(&mut self, _messages: &[(u32, Guid, bool)]) -> Result<()> {
        Ok(())
    }
    /// A message file of the open mailbox; `None` when it is gone.
    fn fetch_message(
        &mut self,
        uid: u32,
        guid: &Guid,
        archived: bool,
    ) -> Result<Option<MessageFile<'_>>>;
    /// Where the open mailbox keeps the message file of `uid`, for a report that it is missing:
    /// the full path when the spool is read here, else the file's name.
    fn message_file(&self, uid: u32, _archived: bool) -> String {
        format!("{uid}.")
    }
    /// Releases the open mailbox's name lock.
    fn close_mailbox(&mut self) -> Result<()>;
    /// A per-user file read under a shared lock, with its stat as read; `None` when gone.
    fn read_user_file(&mut self, user: &str, entry: &str) -> Result<Option<(Vec<u8>, SourceStat)>>;
    /// Bytes received and sent on the wire so far (0 for a source in process).
    fn traffic(&self) -> (u64, u64) {
        (0, 0)
    }
}
