//! A read-only view of a Cyrus spool, read directly from disk as Cyrus itself reads it
//! (formats/cyrus.md): imapd.conf, the mailbox list, mailbox directories in both layouts,
//! cyrus.index of every version, cyrus.header, per-user state, and Cyrus's own locks. This
//! module never writes to the spool; the only files it may open for writing are Cyrus's existing
//! lock files, and it never creates one.

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

pub use view::{LockOptions, MailboxSnapshot, MetaFile, Spool};

use std::fmt;
use std::path::Path;

use crate::error::Error;

/// A problem found while parsing bytes, at a byte offset; the caller attaches the file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub offset: u64,
    pub detail: String,
}

impl ParseError {
    pub fn new(offset: u64, detail: impl Into<String>) -> ParseError {
        ParseError {
            offset,
            detail: detail.into(),
        }
    }

    /// The error for the file the bytes came from.
    pub fn in_file(self, path: &Path) -> Error {
        Error::corrupt(path, self.offset, self.detail)
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.detail)
    }
}
