//! A mailbox restored beside itself under a new name (`--as`): a fresh uniqueid, and every
//! place that names the mailbox or its uniqueid rewritten to match (cyrus.header, the index's
//! copy of the header's CRC, both mailboxes.db records, the annotation keys).

use std::path::Path;

use super::Planned;
use crate::error::{Error, Result};

/// 24 random `[0-9a-z]`, the form Cyrus gives uniqueids when built without libuuid.
fn new_uniqueid() -> Result<String> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let bytes = [crate::io::random_id()?, crate::io::random_id()?].concat();
    Ok(bytes[..24]
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect())
}

/// Replaces the values of `keys` at the top level of a dlist key/value list.
fn with_values(bytes: &[u8], changes: &[(&str, &str)]) -> std::result::Result<Vec<u8>, String> {
    use crate::spool::dlist::{self, Dlist};
    let trailing_newline = bytes.ends_with(b"\n");
    let mut value = dlist::parse(bytes).map_err(|e| e.to_string())?;
    let Dlist::Kv(entries) = &mut value else {
        return Err("not a key/value list".into());
    };
    for (key, new) in changes {
        let slot = entries
            .iter_mut()
            .find(|(k, _)| k == key.as_bytes())
            .ok_or_else(|| format!("no {key} field"))?;
        slot.1 = Dlist::Atom(new.as_bytes().to_vec());
    }
    let mut out = dlist::write(&value);
    if trailing_newline {
        out.push(b'\n');
    }
    Ok(out)
}

/// The index with `header_file_crc` (offset 96) set for a new `cyrus.header`, and the index
/// header's own CRC (its last four bytes) recomputed.
fn reseal_index(index: &[u8], header: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let parsed = crate::spool::index::parse(index).map_err(|e| e.to_string())?;
    if parsed.header.minor_version < 12 {
        return Err(format!(
            "index version {} has no header CRCs to reseal",
            parsed.header.minor_version
        ));
    }
    let size = parsed.header.start_offset as usize;
    let mut out = index.to_vec();
    out[96..100].copy_from_slice(&crc32fast::hash(header).to_be_bytes());
    let crc = crc32fast::hash(&out[..size - 4]);
    out[size - 4..size].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// The header, index and records of a mailbox restored as `name` with a fresh uniqueid: the
/// name and uniqueid fields of cyrus.header and of both mailboxes.db records, the annotation
/// keys, and the index's copy of the header's CRC all follow.
pub fn renamed(
    p: &mut Planned,
    name: crate::spool::name::MboxName,
    old_uid: &str,
    archive_path: &Path,
) -> Result<()> {
    let corrupt = |detail: String| Error::corrupt(archive_path, 0, detail);
    let uid = new_uniqueid()?;
    let internal = name.internal();
    let dbname = name.dbname();
    let magic_end = p.header.iter().position(|&b| b == b'%').ok_or_else(|| {
        corrupt(format!(
            "{}: cyrus.header is not the 3.6 format",
            p.entry.name
        ))
    })?;
    let (magic, line) = p.header.split_at(magic_end);
    let line = with_values(line, &[("N", &internal), ("I", &uid)])
        .map_err(|e| corrupt(format!("{}: cyrus.header: {e}", p.entry.name)))?;
    p.header = [magic, &line].concat();
    p.index = reseal_index(&p.index, &p.header)
        .map_err(|e| corrupt(format!("{}: cyrus.index: {e}", p.entry.name)))?;
    for r in &mut p.records {
        if r.key.starts_with(b"N") {
            r.key = [b"N".as_slice(), dbname.as_bytes()].concat();
            r.value = with_values(&r.value, &[("I", &uid)])
                .map_err(|e| corrupt(format!("{}: N record: {e}", p.entry.name)))?;
        } else {
            r.key = [b"I".as_slice(), uid.as_bytes()].concat();
            r.value = with_values(&r.value, &[("N", &dbname)])
                .map_err(|e| corrupt(format!("{}: I record: {e}", p.entry.name)))?;
        }
    }
    for r in &mut p.annotation_rows {
        if let Some(rest) = r.key.strip_prefix(old_uid.as_bytes()) {
            r.key = [uid.as_bytes(), rest].concat();
        }
    }
    p.entry.name = name;
    p.entry.uniqueid = Some(uid);
    Ok(())
}
