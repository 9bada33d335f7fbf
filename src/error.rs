//! The one error type of the library. Every variant names the file (and, for damaged input, the
//! byte offset) so an operator can act on it; there is no blanket `From<io::Error>` because that
//! would lose the path.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// An operating-system call failed on `path`.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// `path` is damaged at byte `offset` (for archives: the offset of the gzip member, with the
    /// position inside the member's decompressed bytes in `detail` where it helps).
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    /// A file that is not one of mailpack's own (another program's file, a symlink, a FIFO) at a
    /// name mailpack uses: left exactly as it is.
    Foreign { path: PathBuf, detail: String },
    /// A file in a format or version this build does not read.
    Unsupported { path: PathBuf, detail: String },
    /// Another writer holds the archive's lock.
    Busy { path: PathBuf },
    /// A source file changed while it was being copied; the caller may retry.
    Changed { path: PathBuf, detail: String },
    /// A name, entry or archive that does not exist.
    NotFound(String),
    /// An earlier write or fsync failed; the writer must be reopened, which repairs the tail.
    Poisoned(PathBuf),
    /// A peer broke its protocol: the agent, an IMAP or LMTP server said something it must not.
    Protocol { peer: String, detail: String },
    /// An object store (an off-site copy's bucket) failed a request after its retries, or
    /// answered something a store must not.
    Remote {
        op: &'static str,
        location: String,
        detail: String,
    },
    /// An external tool mailpack runs (`cyr_dbtool`, `quota`, ssh) failed.
    External { tool: String, detail: String },
    /// A configuration file mailpack was pointed at (imapd.conf) says something it cannot use.
    Config { path: PathBuf, detail: String },
    /// A rule mailpack keeps refuses the operation: the archive format cannot hold it (an entry
    /// name, a marker key, data that does not hash to its name, a run past the last number), or
    /// it would overwrite something already at the target.
    Refused(String),
    /// The request itself is wrong (bad name, bad argument).
    Usage(String),
}

impl Error {
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn corrupt(path: impl AsRef<Path>, offset: u64, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            offset,
            detail: detail.into(),
        }
    }

    pub fn usage(detail: impl Into<String>) -> Error {
        Error::Usage(detail.into())
    }

    pub fn refused(detail: impl Into<String>) -> Error {
        Error::Refused(detail.into())
    }

    pub fn config(path: impl AsRef<Path>, detail: impl Into<String>) -> Error {
        Error::Config {
            path: path.as_ref().to_path_buf(),
            detail: detail.into(),
        }
    }

    pub fn protocol(peer: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Protocol {
            peer: peer.into(),
            detail: detail.into(),
        }
    }

    pub fn remote(
        op: &'static str,
        location: impl Into<String>,
        detail: impl Into<String>,
    ) -> Error {
        Error::Remote {
            op,
            location: location.into(),
            detail: detail.into(),
        }
    }

    pub fn external(tool: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::External {
            tool: tool.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            Error::Corrupt {
                path,
                offset,
                detail,
            } => write!(
                f,
                "{} is damaged at byte {offset}: {detail}",
                path.display()
            ),
            Error::Foreign { path, detail } => {
                write!(f, "{} {detail}; left untouched", path.display())
            }
            Error::Unsupported { path, detail } => {
                write!(f, "{}: unsupported: {detail}", path.display())
            }
            Error::Busy { path } => write!(
                f,
                "{} is locked by another writer; retry later or pass --wait",
                path.display()
            ),
            Error::Changed { path, detail } => {
                write!(f, "{} changed while being read: {detail}", path.display())
            }
            Error::NotFound(what) => write!(f, "not found: {what}"),
            Error::Poisoned(path) => write!(
                f,
                "an earlier write to {} failed; reopen the archive to repair it",
                path.display()
            ),
            Error::Config { path, detail } => write!(f, "{}: {detail}", path.display()),
            Error::Protocol { peer, detail } => write!(f, "{peer}: {detail}"),
            Error::External { tool, detail } => write!(f, "{tool}: {detail}"),
            Error::Remote {
                op,
                location,
                detail,
            } => write!(f, "{op} {location}: {detail}"),
            Error::Refused(detail) | Error::Usage(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

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
