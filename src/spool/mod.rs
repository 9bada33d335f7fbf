//! A read-only view of a Cyrus spool, read directly from disk as Cyrus itself reads it
//! (formats/cyrus.md): imapd.conf, the mailbox list, mailbox directories in both layouts,
//! cyrus.index of every version, cyrus.header, per-user state, and Cyrus's own locks. This
//! module never writes mail or metadata. The only files it opens for writing are Cyrus's lock
//! files: `lock_existing_lockfile` (backup, the agent) never creates one; `lock_lockfile`
//! (restore into a running server, `spool ls`) creates a missing one owned like the lock
//! directory, exactly as Cyrus would, so Cyrus can open it later.

pub mod config;
pub mod cyrusdb;
pub mod dlist;
pub mod file;
pub mod header;
pub mod index;
pub mod layout;
pub mod lock;
pub mod mboxlist;
pub mod name;
pub mod user;
mod view;

pub use crate::error::ParseError;

/// The name of the server's own archive: `%` followed by a letter is no encoding a user's or
/// a tree's name can produce.
pub const SERVER_OWNER: &str = "%server";

/// Who an archive belongs to (formats/backup-entries.md, "Shared mailboxes"): a user, with
/// their mailboxes and per-user files, or a shared tree, with the mailboxes below a top-level
/// mailbox that belongs to no user.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    User(String),
    Shared(String),
    /// The server itself: its server-wide annotations (no mailboxes, no per-user files).
    Server,
}

impl Owner {
    /// The userid, the tree's name, or `%server` (a name no user or tree can have: formats/
    /// backup-entries.md, "Shared mailboxes").
    pub fn name(&self) -> &str {
        match self {
            Owner::User(name) | Owner::Shared(name) => name,
            Owner::Server => SERVER_OWNER,
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Owner::Shared(_))
    }

    /// `user`, `shared` or `server`: how files and JSON name the kind of owner.
    pub fn kind(&self) -> &'static str {
        match self {
            Owner::User(_) => "user",
            Owner::Shared(_) => "shared",
            Owner::Server => "server",
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::User(user) => f.write_str(user),
            Owner::Shared(tree) => write!(f, "shared {tree}"),
            Owner::Server => f.write_str("server annotations"),
        }
    }
}
pub use view::{LockOptions, MailboxSnapshot, MetaFile, Spool};
