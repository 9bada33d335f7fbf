//! Readers for Cyrus's key-value database files ("cyrusdb"): mailboxes.db, seen and
//! subscription files, annotations and the like, in the three on-disk formats Cyrus 2.x–3.x
//! writes: twoskip, skiplist and flat (formats/cyrus.md section 7).
//!
//! This module owns format detection and the record type every reader returns. It only reads:
//! it never writes, locks, truncates or "recovers" a database file, even when Cyrus itself
//! would repair it on open. It must never panic or over-allocate on hostile bytes: every length
//! and pointer taken from a file is checked against the bytes actually present, and every walk
//! over pointers is bounded.

pub mod flat;
pub mod skiplist;
pub mod twoskip;

use std::path::Path;

use super::file::{Cap, Follow};
use super::ParseError;
use crate::error::Error;

/// The largest database file `read` loads. Whole files are parsed in memory, and no Cyrus
/// database of a sane server comes near this; a bigger file is far more likely a mistake (or
/// an attack) than a mailbox list.
pub const MAX_DB_BYTES: u64 = 4 << 30;

/// The on-disk formats mailpack reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbFormat {
    Twoskip,
    Skiplist,
    Flat,
}

/// One live key/value pair of a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// The four bytes every binary cyrusdb format starts with.
const BINARY_MAGIC_PREFIX: [u8; 4] = [0xA1, 0x02, 0x8B, 0x0D];

/// What the first bytes of a file say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Magic {
    Twoskip,
    Skiplist,
    /// A recognisable database format mailpack does not read, by name.
    Unsupported(&'static str),
    /// No binary magic: flat text, or nothing Cyrus wrote.
    None,
}

fn classify(bytes: &[u8]) -> Magic {
    let head = &bytes[..bytes.len().min(twoskip::MAGIC.len())];
    let prefix_len = head.len().min(BINARY_MAGIC_PREFIX.len());
    // A file cut off inside the magic still counts as binary, so the truncation is reported
    // by the right reader instead of as "not flat text".
    if !head.is_empty() && head[..prefix_len] == BINARY_MAGIC_PREFIX[..prefix_len] {
        if twoskip::MAGIC.starts_with(head) {
            return Magic::Twoskip;
        }
        if skiplist::MAGIC.starts_with(head) {
            return Magic::Skiplist;
        }
        if b"\xA1\x02\x8B\x0Dtwomfile\0\0\0\0".starts_with(&head[..head.len().min(16)]) {
            return Magic::Unsupported("a twom database (Cyrus 3.12+)");
        }
        return Magic::Unsupported("a cyrusdb file with an unknown binary magic");
    }
    if bytes.starts_with(b"SQLite format 3\0") {
        return Magic::Unsupported("an SQLite database");
    }
    if is_berkeley_db(bytes) {
        return Magic::Unsupported("a Berkeley DB file (Cyrus's old \"berkeley\" backend)");
    }
    Magic::None
}

/// Berkeley DB keeps its magic at byte 12 in the writer's native byte order.
fn is_berkeley_db(bytes: &[u8]) -> bool {
    const MAGICS: [u32; 3] = [0x0005_3162, 0x0006_1561, 0x0004_2253]; // btree, hash, queue
    match be_u32(bytes, 12) {
        Some(word) => MAGICS.iter().any(|&m| word == m || word.swap_bytes() == m),
        None => false,
    }
}

/// The format of a database file by its content: binary formats by magic; `Flat` when there is
/// no binary magic and the whole file parses as flat text (an empty file is an empty flat db).
pub fn detect(bytes: &[u8]) -> Option<DbFormat> {
    match classify(bytes) {
        Magic::Twoskip => Some(DbFormat::Twoskip),
        Magic::Skiplist => Some(DbFormat::Skiplist),
        Magic::Unsupported(_) => None,
        Magic::None => flat::parse(bytes).ok().map(|_| DbFormat::Flat),
    }
}

/// Detects the format and returns the committed, live records in the database's key order.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>, ParseError> {
    match classify(bytes) {
        Magic::Twoskip => twoskip::parse(bytes),
        Magic::Skiplist => skiplist::parse(bytes),
        Magic::Unsupported(what) => Err(ParseError::new(
            0,
            format!("{what}, which mailpack does not read"),
        )),
        Magic::None => flat::parse(bytes).map_err(|e| {
            ParseError::new(
                e.offset,
                format!(
                    "no twoskip or skiplist magic, and not flat text either: {}",
                    e.detail
                ),
            )
        }),
    }
}

/// Reads and parses the database file at `path`. Files over `MAX_DB_BYTES` and files in a
/// recognised but unsupported format are refused as `Error::Unsupported`; damage is
/// `Error::Corrupt` naming the file and byte offset.
pub fn read(path: &Path) -> crate::Result<Vec<Record>> {
    read_capped(path, DB_CAP)?.ok_or_else(|| {
        Error::io(
            "open",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

/// `MAX_DB_BYTES` as a cap for `read_capped`.
pub const DB_CAP: Cap = Cap {
    name: "MAX_DB_BYTES",
    bytes: MAX_DB_BYTES,
};

/// `read` with a cap of the caller's (a per-user database is far smaller than the mailbox
/// list); `Ok(None)` when the file does not exist. A FIFO or device is refused without
/// blocking, and the size is checked before anything is read.
pub fn read_capped(path: &Path, cap: Cap) -> crate::Result<Option<Vec<Record>>> {
    let Some((bytes, _)) = super::file::read(path, Follow::Yes, cap)? else {
        return Ok(None);
    };
    if let Magic::Unsupported(what) = classify(&bytes) {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            detail: format!("{what}, which mailpack does not read"),
        });
    }
    parse(&bytes).map(Some).map_err(|e| e.in_file(path))
}

// Bounds-checked big-endian readers shared by the binary formats: `None` when the bytes run out
// (or the offset arithmetic would overflow), never a panic.

fn be_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    let raw = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_be_bytes(raw.try_into().ok()?))
}

fn be_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let raw = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_be_bytes(raw.try_into().ok()?))
}

fn be_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let raw = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

/// A byte offset for an error message (usize → u64 is lossless on every supported target).
fn at(offset: usize) -> u64 {
    offset as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_magic_and_falls_back_to_flat() {
        assert_eq!(detect(twoskip::MAGIC), Some(DbFormat::Twoskip));
        assert_eq!(detect(skiplist::MAGIC), Some(DbFormat::Skiplist));
        // Cut off inside the magic: still binary, so the reader reports the truncation.
        assert_eq!(detect(&twoskip::MAGIC[..9]), Some(DbFormat::Twoskip));
        assert_eq!(detect(&[0xA1]), Some(DbFormat::Twoskip));
        assert_eq!(detect(b""), Some(DbFormat::Flat));
        assert_eq!(detect(b"user.fred\t\n"), Some(DbFormat::Flat));
        assert_eq!(detect(b"no tab here\n"), None);
        assert_eq!(detect(b"\xA1\x02\x8B\x0Dtwomfile\0\0\0\0rest"), None);
        assert_eq!(detect(b"\xA1\x02\x8B\x0Dsomething else\0\0"), None);
        assert_eq!(detect(b"SQLite format 3\0...."), None);
        let mut bdb = vec![0u8; 32];
        bdb[12..16].copy_from_slice(&0x0005_3162u32.to_le_bytes());
        assert_eq!(detect(&bdb), None);
    }

    #[test]
    fn empty_file_is_an_empty_flat_db() {
        assert_eq!(parse(b""), Ok(vec![]));
    }

    #[test]
    fn unsupported_formats_are_named() {
        let err = parse(b"\xA1\x02\x8B\x0Dtwomfile\0\0\0\0").unwrap_err();
        assert_eq!(err.offset, 0);
        assert!(err.detail.contains("twom"), "{err}");
        let err = parse(b"\x00\x01binary junk").unwrap_err();
        assert!(err.detail.contains("not flat text"), "{err}");
    }

    #[test]
    fn read_refuses_unsupported_and_names_the_file() {
        let dir =
            std::env::temp_dir().join(format!("mailpack-cyrusdb-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let twom = dir.join("twom.db");
        std::fs::write(&twom, b"\xA1\x02\x8B\x0Dtwomfile\0\0\0\0").unwrap();
        assert!(matches!(read(&twom), Err(Error::Unsupported { .. })));
        let bad = dir.join("bad.db");
        std::fs::write(&bad, b"key-without-tab\n").unwrap();
        match read(&bad) {
            Err(Error::Corrupt { path, offset, .. }) => {
                assert_eq!(path, bad);
                assert_eq!(offset, 0);
            }
            other => panic!("{other:?}"),
        }
        let good = dir.join("good.sub");
        std::fs::write(&good, b"a\t1\nb\t\n").unwrap();
        assert_eq!(read(&good).unwrap().len(), 2);
        assert!(matches!(read(&dir.join("missing")), Err(Error::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readers_never_read_past_the_end() {
        assert_eq!(be_u32(&[1, 2, 3], 0), None);
        assert_eq!(be_u64(&[0; 8], usize::MAX - 2), None);
        assert_eq!(be_u16(&[1, 2], 0), Some(0x0102));
    }
}
