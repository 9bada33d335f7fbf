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
pub use view::{LockOptions, MailboxSnapshot, MetaFile, Spool};
