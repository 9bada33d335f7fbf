//! Opening and reading a spool's files without trusting them (formats/cyrus.md, "Hostile
//! input"). A FIFO where Cyrus keeps a message file or a database blocks an ordinary `open` until
//! some writer appears, which may be never, while the caller holds Cyrus's mailbox lock; a
//! device reads forever; a sparse file claims any size its stat likes. So every spool file is
//! opened without blocking, checked with `fstat` to be a regular file before a byte is read, and
//! read with a named cap that the size it claims is checked against before anything is
//! allocated.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Largest `cyrus.index` read. A record is at most 160 bytes (version 20), so this holds over
/// 13 million messages: Cyrus maps the whole file for every access and no real mailbox comes
/// near. It stays under the 4 GiB a backup host accepts for one such file from an agent, so an
/// agent refuses (and reports) what the backup host would refuse by ending the session.
pub const MAX_INDEX_FILE: u64 = 2 << 30;

/// Largest `cyrus.annotations` (a per-mailbox twoskip database of message annotations) read:
/// tens of millions of annotations, far beyond any mailbox, and under the same 4 GiB.
pub const MAX_ANNOTATIONS_FILE: u64 = 2 << 30;

/// Largest per-user file read: seen and subscription databases hold a line per mailbox
/// (kilobytes), a quota file one line, sieve scripts a few kilobytes, and `dav.db` an index of the
/// user's scripts, calendars and contacts (megabytes for the busiest users).
pub const MAX_USER_FILE: u64 = 1 << 30;

/// Whether the last component of a path may be a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Configuration and global databases, which admins do link elsewhere.
    Yes,
    /// Files Cyrus itself creates or replaces by rename (message files, a mailbox's metadata,
    /// lock files, per-user files): a symlink there was not made by Cyrus.
    No,
}

/// Opens `path` for reading (and writing, with `write`), refusing without blocking anything that
/// is not a regular file. `Ok(None)` when it does not exist.
pub fn open(path: &Path, write: bool, follow: Follow) -> Result<Option<(File, Metadata)>> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if follow == Follow::No {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && follow == Follow::No => {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                detail: "a symlink where Cyrus keeps a regular file; refused".into(),
            })
        }
        // Opening a device can fail in ways of its own (ENXIO for a FIFO opened to write with no
        // reader, ENODEV, ...): what it is matters more than how opening it failed.
        Err(e) => {
            return Err(match std::fs::symlink_metadata(path) {
                Ok(m) if !m.file_type().is_file() => not_regular(path, &m),
                _ => Error::io("open", path, e),
            })
        }
    };
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(not_regular(path, &meta));
    }
    // O_NONBLOCK only had to get us through `open`; on a regular file it changes nothing, but
    // the descriptor goes on to readers that need not know it was ever set.
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL take and return ints and touch no memory of ours.
    unsafe {
        let fd = file.as_raw_fd();
        let now = libc::fcntl(fd, libc::F_GETFL);
        if now >= 0 {
            libc::fcntl(fd, libc::F_SETFL, now & !libc::O_NONBLOCK);
        }
    }
    Ok(Some((file, meta)))
}

fn not_regular(path: &Path, meta: &Metadata) -> Error {
    let t = meta.file_type();
    let what = if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    };
    Error::Unsupported {
        path: path.to_path_buf(),
        detail: format!("{what}, not a regular file; refused without reading it"),
    }
}

/// A named limit on how much of one file is read.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    /// The constant's name, so an operator can find it (and why it is what it is).
    pub name: &'static str,
    pub bytes: u64,
}

pub const INDEX_CAP: Cap = Cap {
    name: "MAX_INDEX_FILE",
    bytes: MAX_INDEX_FILE,
};
pub const ANNOTATIONS_CAP: Cap = Cap {
    name: "MAX_ANNOTATIONS_FILE",
    bytes: MAX_ANNOTATIONS_FILE,
};
pub const HEADER_CAP: Cap = Cap {
    name: "MAX_HEADER_FILE",
    bytes: super::header::MAX_HEADER_FILE,
};
pub const USER_FILE_CAP: Cap = Cap {
    name: "MAX_USER_FILE",
    bytes: MAX_USER_FILE,
};

/// The error for a file over its cap: `Unsupported`, so a backup reports it and skips the
/// mailbox (or file) it belongs to rather than failing the user.
pub fn too_large(path: &Path, size: u64, cap: Cap) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        detail: format!(
            "too large: {size} bytes, over the {}-byte limit ({}) for this file; no real \
             Cyrus server writes one this size, so it is not read",
            cap.bytes, cap.name
        ),
    }
}

/// Reads the whole of an open file of `size` bytes (its `fstat` size) with at most `cap` bytes:
/// the size is checked before anything is allocated, and the read stops past the cap in case
/// the file grows meanwhile.
pub fn read_capped(file: &File, path: &Path, size: u64, cap: Cap) -> Result<Vec<u8>> {
    if size > cap.bytes {
        return Err(too_large(path, size, cap));
    }
    // `size <= cap.bytes`: the allocation is bounded by the cap, not by the file.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(cap.bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > cap.bytes {
        return Err(too_large(path, bytes.len() as u64, cap));
    }
    Ok(bytes)
}

/// Opens and reads a whole spool file with a cap; `Ok(None)` when it does not exist.
pub fn read(path: &Path, follow: Follow, cap: Cap) -> Result<Option<(Vec<u8>, Metadata)>> {
    let Some((file, meta)) = open(path, false, follow)? else {
        return Ok(None);
    };
    let bytes = read_capped(&file, path, meta.len(), cap)?;
    Ok(Some((bytes, meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mailpack-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn fifos_sparse_giants_and_symlinks_are_refused_without_reading() {
        let d = temp("refuse");
        let fifo = d.join("seen.db");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A FIFO with no writer: an ordinary open would block here.
        let err = open(&fifo, false, Follow::No).unwrap_err().to_string();
        assert!(err.contains("a FIFO") && err.contains("seen.db"), "{err}");
        let err = open(&fifo, true, Follow::Yes).unwrap_err().to_string();
        assert!(err.contains("a FIFO"), "{err}");

        let big = d.join("cyrus.index");
        File::create(&big).unwrap().set_len(1 << 40).unwrap();
        let err = read(&big, Follow::No, INDEX_CAP).unwrap_err().to_string();
        assert!(
            err.contains("cyrus.index") && err.contains("MAX_INDEX_FILE"),
            "{err}"
        );

        let link = d.join("cyrus.header");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        let err = open(&link, false, Follow::No).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        assert!(open(&link, false, Follow::Yes).unwrap().is_some());
        assert!(open(&d.join("absent"), false, Follow::No)
            .unwrap()
            .is_none());
        assert!(open(&d, false, Follow::No).is_err());

        std::fs::write(d.join("ok"), b"hello").unwrap();
        let (bytes, _) = read(&d.join("ok"), Follow::No, HEADER_CAP)
            .unwrap()
            .unwrap();
        assert_eq!(bytes, b"hello");
        let tiny = Cap {
            name: "TINY",
            bytes: 4,
        };
        assert!(read(&d.join("ok"), Follow::No, tiny).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
