//! mailpack backs up Cyrus IMAP servers into one append-only `<user>.tar.gz` per user.
//!
//! Layers, each depending only on those below it:
//! - `cli`: argument parsing, printing, exit codes (the only layer that talks to a person);
//! - `commands`: one function per subcommand, returning values;
//! - `store`: an archive with its sidecar index, writer lock and recovery;
//! - `archive`: gzip members and tar entries, with no knowledge of Cyrus or the index;
//! - foundation: `error`, `guid`, `io`.

pub mod agent;
pub mod archive;
pub mod cli;
pub mod commands;
pub mod compact;
pub mod error;
pub mod guid;
pub mod io;
pub mod restore;
pub mod scan;
pub mod spool;
pub mod store;
pub mod time;

pub use error::{Error, Result};
pub use guid::Guid;
