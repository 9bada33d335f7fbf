//! mailpack backs up Cyrus IMAP servers into one append-only `<user>.tar.gz` per user.
//!
//! Layers, each depending only on those below it (nothing imports `cli`; nothing below
//! `commands` imports it):
//! - `cli`: argument parsing, printing, exit codes (the only layer that talks to a person);
//! - `commands`: one function per subcommand, returning values;
//! - `find`: the help-desk search and its find index, reading archives through `restore`'s
//!   message readers;
//! - `backup` (the two passes of one user's backup), `restore`, `compact`: peers that never import each other;
//! - `offsite`: off-site copies of archives in S3-compatible storage (push, pull, ranged reads),
//!   built on `store`;
//! - `folders`: a mailbox's `cyrus.index` versions read back (full copies and index deltas),
//!   used by `backup`, `restore`, `compact` and `find`; built on `store`;
//! - `store`: an archive with its sidecar index, writer lock and recovery; `agent`: the spool
//!   read locally or over ssh, behind one `Source` interface;
//! - `entries`: the entry vocabulary (formats/backup-entries.md) both backup and restore use;
//! - `archive` (gzip members and tar entries, no knowledge of Cyrus or the index) and `spool`
//!   (Cyrus's files, read-only): never import each other;
//! - foundation: `error`, `guid`, `io`, `time`, `host`, `progress` (counters the CLI draws).

pub mod agent;
pub mod archive;
pub mod backup;
pub mod cli;
pub mod commands;
pub mod compact;
pub mod entries;
pub mod error;
pub mod find;
pub mod folders;
pub mod guid;
pub mod host;
pub mod io;
pub mod metrics;
pub mod offsite;
pub mod progress;
pub mod restore;
pub mod spool;
pub mod store;
pub mod time;

pub use error::{Error, Result};
pub use guid::Guid;
