//! The entry vocabulary of formats/backup-entries.md: the `imap/`, `folders/` and `meta/` names a
//! backup writes and a restore reads, and the records format for raw cyrusdb records. It sits
//! below both the backup passes and restore, so neither depends on the other.

pub mod index_delta;

use crate::spool::cyrusdb::Record;
use crate::spool::name::MboxName;

pub const IMAP_DIR: &str = "imap/";
pub const FOLDERS_DIR: &str = "folders/";
pub const META_DIR: &str = "meta/";
pub const FOLDER_MAILBOXES_DB: &str = "mailboxes.db";
pub const FOLDER_ANNOTATIONS_DB: &str = "annotations.db";
/// `meta/<this>` in the server's own archive: the server's annotations, in the records format.
pub const SERVER_ANNOTATIONS: &str = "server-annotations.db";
const RECORDS_MAGIC: &str = "mailpack-records 1\n";

/// `folders/<uniqueid>/delta/cyrus.index` → `folders/<uniqueid>/cyrus.index`, and the other
/// way: the two names of one mailbox's index versions (formats/backup-entries.md, "Index
/// deltas").
pub fn index_names(uniqueid: &str) -> (String, String) {
    (
        folder_entry(uniqueid, index_delta::INDEX_FILE),
        folder_entry(uniqueid, index_delta::INDEX_DELTA_FILE),
    )
}

/// The uniqueid of an entry that is a version of a mailbox's `cyrus.index` (full copy or
/// delta), and whether it is a delta.
pub fn index_version_of(name: &str) -> Option<(&str, bool)> {
    let (uid, file) = name.strip_prefix(FOLDERS_DIR)?.split_once('/')?;
    match file {
        index_delta::INDEX_FILE => Some((uid, false)),
        index_delta::INDEX_DELTA_FILE => Some((uid, true)),
        _ => None,
    }
}

pub fn folder_entry(uniqueid: &str, file: &str) -> String {
    format!("{FOLDERS_DIR}{uniqueid}/{file}")
}

/// The folder a link target names.
pub fn folder_target(uniqueid: &str) -> String {
    format!("{FOLDERS_DIR}{uniqueid}")
}

pub fn meta_entry(file: &str) -> String {
    format!("{META_DIR}{file}")
}

/// `imap/<levels joined by '/'>`, each level escaped so every name has one valid entry name.
pub fn imap_entry(name: &MboxName) -> String {
    let mut out = String::from(IMAP_DIR);
    let mut levels: Vec<String> = name.parts.iter().map(|p| escape_level(p)).collect();
    if let Some(domain) = &name.domain {
        if let Some(first) = levels.first_mut() {
            *first = format!("{}!{first}", escape_level(domain));
        }
    }
    out.push_str(&levels.join("/"));
    out
}

fn escape_level(level: &str) -> String {
    match level {
        "." => return "%2E".into(),
        ".." => return "%2E%2E".into(),
        "" => return "%".into(),
        _ => {}
    }
    level
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('!', "%21")
}

/// The mailbox name an `imap/` entry stands for: `imap_entry` reversed. `None` when the entry
/// is not one `imap_entry` could have written (an unknown escape, say).
pub fn parse_imap_entry(entry: &str) -> Option<MboxName> {
    let rest = entry.strip_prefix(IMAP_DIR)?;
    let mut levels = rest.split('/');
    let first = levels.next()?;
    let (domain, first) = match first.split_once('!') {
        Some((d, f)) => (Some(unescape_level(d)?), f),
        None => (None, first),
    };
    let mut parts = vec![unescape_level(first)?];
    for level in levels {
        parts.push(unescape_level(level)?);
    }
    let name = MboxName { domain, parts };
    (imap_entry(&name) == entry).then_some(name)
}

fn unescape_level(level: &str) -> Option<String> {
    match level {
        "%" => return Some(String::new()),
        "%2E" => return Some(".".into()),
        "%2E%2E" => return Some("..".into()),
        _ => {}
    }
    let mut out = String::with_capacity(level.len());
    let mut rest = level;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "2F" => '/',
            "21" => '!',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The records format: a header line, then `<keylen> <vallen>\n<key><value>\n` per record.
pub fn records_bytes(records: &[&Record]) -> Vec<u8> {
    let mut out = RECORDS_MAGIC.as_bytes().to_vec();
    for r in records {
        out.extend_from_slice(format!("{} {}\n", r.key.len(), r.value.len()).as_bytes());
        out.extend_from_slice(&r.key);
        out.extend_from_slice(&r.value);
        out.push(b'\n');
    }
    out
}

/// Reads the records format back (for restore and tests).
pub fn parse_records(bytes: &[u8]) -> Option<Vec<Record>> {
    let mut rest = bytes.strip_prefix(RECORDS_MAGIC.as_bytes())?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&rest[..nl]).ok()?;
        let (k, v) = line.split_once(' ')?;
        let (k, v): (usize, usize) = (k.parse().ok()?, v.parse().ok()?);
        let end = (nl + 1).checked_add(k.checked_add(v)?.checked_add(1)?)?;
        let body = rest.get(nl + 1..end)?;
        if body.last() != Some(&b'\n') {
            return None;
        }
        out.push(Record {
            key: body[..k].to_vec(),
            value: body[k..k + v].to_vec(),
        });
        rest = &rest[end..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lengths_near_the_limit_are_refused_not_overflowed() {
        let huge = format!("{RECORDS_MAGIC}{} {}\nab\n", usize::MAX, 1);
        assert!(parse_records(huge.as_bytes()).is_none());
        let huge = format!("{RECORDS_MAGIC}1 {}\nab\n", usize::MAX - 1);
        assert!(parse_records(huge.as_bytes()).is_none());
    }

    #[test]
    fn imap_names_are_valid_entry_names() {
        for (name, entry) in [
            ("user.alice", "imap/user/alice"),
            ("user.alice.Archive.2023", "imap/user/alice/Archive/2023"),
            (
                "DELETED.user.alice.X.6B02336D",
                "imap/DELETED/user/alice/X/6B02336D",
            ),
            ("example.com!user.bob", "imap/example.com!user/bob"),
        ] {
            let e = imap_entry(&MboxName::from_internal(name));
            assert_eq!(e, entry);
            assert!(crate::archive::check_name(&e).is_ok());
        }
        let odd = MboxName {
            domain: None,
            parts: vec!["user".into(), "a/b%".into(), "..".into()],
        };
        let e = imap_entry(&odd);
        assert_eq!(e, "imap/user/a%2Fb%25/%2E%2E");
        assert!(crate::archive::check_name(&e).is_ok());
        assert_eq!(parse_imap_entry(&e), Some(odd));
        for name in ["user.alice", "example.com!user.bob.Sent", "user.x^y.a!b"] {
            let name = MboxName::from_internal(name);
            assert_eq!(parse_imap_entry(&imap_entry(&name)), Some(name));
        }
        for bad in ["imap/user/%41", "imap/user/%", "files/x", "imap/a/%2"] {
            if bad == "imap/user/%" {
                // An empty level is how an empty Cyrus level is written: it parses.
                assert!(parse_imap_entry(bad).is_some());
                continue;
            }
            assert_eq!(parse_imap_entry(bad), None, "{bad}");
        }
    }

    #[test]
    fn records_round_trip_binary_data() {
        let a = Record {
            key: b"Nuser\x1falice".to_vec(),
            value: b"%(T e)\n\0".to_vec(),
        };
        let b = Record {
            key: vec![],
            value: vec![0xff; 3],
        };
        let bytes = records_bytes(&[&a, &b]);
        assert_eq!(parse_records(&bytes).unwrap(), vec![a, b]);
        assert!(parse_records(&bytes[..bytes.len() - 1]).is_none());
    }
}
