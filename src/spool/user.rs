//! A user's own state outside their mailboxes (formats/cyrus.md, "Per-user files"): seen
//! state for mailboxes they do not own, subscriptions, quota, sieve scripts, and where each
//! lives for by-name (legacy) and by-uniqueid (3.6+) users. `conversations` and `counters` are
//! rebuildable by Cyrus and are left out.

use std::path::PathBuf;

use super::cyrusdb::{self, Record};
use super::name::MboxName;
use crate::error::Result;

/// Where a user's files are; a path may not exist (a user who never subscribed has no sub db).
#[derive(Clone, Debug, serde::Serialize)]
pub struct UserFiles {
    /// Whether the user's INBOX lives by name (pre-3.6 layout) rather than by uniqueid.
    pub legacy: bool,
    pub seen: PathBuf,
    pub sub: PathBuf,
    /// 3.6+: SQLite db whose `sieve_scripts` table indexes the `#sieve` mailbox.
    pub dav: PathBuf,
    pub sieve_dir: PathBuf,
    /// quotalegacy file of the user's quota root.
    pub quota: PathBuf,
}

/// One line of a seen db: the user's seen state in a mailbox they do not own.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SeenEntry {
    /// The mailbox's uniqueid (the db key).
    pub uniqueid: String,
    pub lastread: u64,
    pub lastuid: u32,
    pub lastchange: u64,
    /// IMAP sequence set of seen UIDs, as stored.
    pub seen_uids: String,
}

/// Reads a seen db (`seen.db` or legacy `<user>.seen`).
pub fn read_seen(records: &[Record]) -> Vec<SeenEntry> {
    records
        .iter()
        .filter_map(|r| {
            let value = String::from_utf8_lossy(&r.value);
            let mut f = value.splitn(5, ' ');
            if f.next()? != "1" {
                return None;
            }
            Some(SeenEntry {
                uniqueid: String::from_utf8_lossy(&r.key).into_owned(),
                lastread: f.next()?.parse().ok()?,
                lastuid: f.next()?.parse().ok()?,
                lastchange: f.next()?.parse().ok()?,
                seen_uids: f.next().unwrap_or("").trim_end().to_string(),
            })
        })
        .collect()
}

/// Reads a subscriptions db into full mailbox names. 3.6+ keys are `N` + the name relative to
/// the user with 0x1F separators (`NINBOX\x1fArchive`); older keys are internal names.
pub fn read_subscriptions(records: &[Record], userid: &str) -> Vec<MboxName> {
    let (local, domain) = super::name::split_userid(userid);
    records
        .iter()
        .filter(|r| !r.key.starts_with(b"\x1f"))
        .map(|r| {
            let key = String::from_utf8_lossy(&r.key);
            match key.strip_prefix('N') {
                Some(rel) if rel.contains('\u{1f}') || rel == "INBOX" || !rel.contains('.') => {
                    let mut parts: Vec<String> = rel.split('\u{1f}').map(str::to_string).collect();
                    if parts.first().map(String::as_str) == Some("INBOX") {
                        parts.splice(0..1, ["user".to_string(), local.to_string()]);
                    }
                    MboxName {
                        domain: domain.map(str::to_string),
                        parts,
                    }
                }
                _ => MboxName::from_internal(&key),
            }
        })
        .collect()
}

/// Reads a global db file (`annotations.db`) if it exists: `Ok(None)` when absent.
pub fn read_db_if_present(path: &std::path::Path) -> Result<Option<Vec<Record>>> {
    cyrusdb::read_capped(path, cyrusdb::DB_CAP)
}

/// Reads a per-user db file (seen, subscriptions) if it exists, within `MAX_USER_FILE`.
pub fn read_user_db(path: &std::path::Path) -> Result<Option<Vec<Record>>> {
    cyrusdb::read_capped(path, super::file::USER_FILE_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &[u8], v: &[u8]) -> Record {
        Record {
            key: k.to_vec(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn seen_and_subscription_records() {
        let seen = read_seen(&[
            rec(b"abc", b"1 1700000000 7 1700000001 1:5,7"),
            rec(b"bad", b"2 x"),
        ]);
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].lastuid, seen[0].seen_uids.as_str()), (7, "1:5,7"));
        let subs = read_subscriptions(
            &[
                rec(b"\x1fVER\x1f", b"2"),
                rec(b"NINBOX", b""),
                rec(b"NINBOX\x1fArchive\x1f2023", b""),
                rec(b"user.bob.Shared", b""),
            ],
            "alice",
        );
        let names: Vec<String> = subs.iter().map(|n| n.internal()).collect();
        assert_eq!(
            names,
            ["user.alice", "user.alice.Archive.2023", "user.bob.Shared"]
        );
    }
}

/// A quota root's usage and limits from its quotalegacy file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Quota {
    /// `(resource, used, limit)`: `STORAGE` used in bytes and limited in KiB, `MESSAGE`,
    /// `X-ANNOTATION-STORAGE`, `X-NUM-FOLDERS`; a limit of `None` means unlimited.
    pub resources: Vec<(String, u64, Option<i64>)>,
}

/// Parses a quotalegacy file: 2.5+ writes `%(S (used limit) M (used [limit]) ...)`, older
/// versions two lines, storage used in bytes then the limit in KiB.
pub fn parse_quota(bytes: &[u8]) -> Result<Quota, super::ParseError> {
    use super::dlist::{self, Dlist};
    fn name(k: &str) -> &str {
        match k {
            "S" => "STORAGE",
            "M" => "MESSAGE",
            "AS" => "X-ANNOTATION-STORAGE",
            "NF" => "X-NUM-FOLDERS",
            other => other,
        }
    }
    if bytes.starts_with(b"%(") {
        let d = dlist::parse(bytes)?;
        let mut resources = Vec::new();
        if let Dlist::Kv(items) = &d {
            for (k, v) in items {
                let k = String::from_utf8_lossy(k);
                if k == "MODSEQ" {
                    continue;
                }
                let nums: Vec<Option<i64>> = v
                    .items()
                    .iter()
                    .map(|x| x.text().and_then(|t| t.parse().ok()))
                    .collect();
                let used = nums.first().copied().flatten().unwrap_or(0).max(0) as u64;
                let limit = nums.get(1).copied().flatten().filter(|l| *l >= 0);
                resources.push((name(&k).to_string(), used, limit));
            }
        }
        return Ok(Quota { resources });
    }
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    let used: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| super::ParseError::new(0, "quota file has no usage line"))?;
    let limit: Option<i64> = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .filter(|l: &i64| *l >= 0);
    Ok(Quota {
        resources: vec![("STORAGE".into(), used, limit)],
    })
}

/// The global `annotations.db` grouped by mailbox (the key's first field: the uniqueid in 3.6+,
/// the internal name before), read once per run so that looking up one mailbox does not scan
/// every record of the server.
#[derive(Default)]
pub struct MailboxAnnotations {
    by_mailbox: std::collections::HashMap<Vec<u8>, Vec<Record>>,
}

impl MailboxAnnotations {
    pub fn from_records(records: Vec<Record>) -> MailboxAnnotations {
        let mut by_mailbox: std::collections::HashMap<Vec<u8>, Vec<Record>> = Default::default();
        for r in records {
            let mailbox = r.key.split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
            by_mailbox.entry(mailbox).or_default().push(r);
        }
        MailboxAnnotations { by_mailbox }
    }

    /// The records of one mailbox, in database order.
    pub fn of(&self, mailbox: &[u8]) -> &[Record] {
        self.by_mailbox.get(mailbox).map_or(&[], Vec::as_slice)
    }
}

/// One entry of the global `annotations.db` (mailbox METADATA, special-use, ...).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Annotation {
    /// The mailbox: its uniqueid (3.6+) or internal name (before 3.6).
    pub mailbox: String,
    /// `/comment`, `/specialuse`, `/vendor/...`: without the `/private` or `/shared` prefix.
    pub entry: String,
    /// Empty for `/shared` values; the user for `/private` ones (3.6+ writes `[.OwNeR.]` for
    /// the mailbox owner).
    pub userid: String,
    pub value: Vec<u8>,
}

/// Decodes an `annotations.db` record: key `<mailbox>\0<entry>\0<userid>\0`; value a length
/// written as a native `unsigned long` holding a big-endian u32 (8 bytes on 64-bit builds, 4 on
/// 32-bit), the value, NUL, the content type, NUL, then a modseq.
pub fn parse_annotation(r: &Record) -> Option<Annotation> {
    let mut fields = r.key.split(|&b| b == 0);
    let mailbox = String::from_utf8_lossy(fields.next()?).into_owned();
    let entry = String::from_utf8_lossy(fields.next()?).into_owned();
    let userid = String::from_utf8_lossy(fields.next()?).into_owned();
    let len = u32::from_be_bytes(r.value.get(..4)?.try_into().ok()?) as usize;
    // The 64-bit layout has 4 zero bytes of padding and room for the value after them.
    let start: usize = if r.value.get(4..8) == Some(&[0, 0, 0, 0]) && r.value.len() >= 8 + len {
        8
    } else {
        4
    };
    let value = r.value.get(start..start.checked_add(len)?)?.to_vec();
    Some(Annotation {
        mailbox,
        entry,
        userid,
        value,
    })
}

/// What the user's sieve directory says: scripts present and the active one.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SieveFiles {
    /// Script names with a compiled `.bc` or (before 3.6) a `.script` source.
    pub scripts: Vec<String>,
    /// The script `defaultbc` points at.
    pub active: Option<String>,
}

pub fn read_sieve_dir(dir: &std::path::Path) -> Result<SieveFiles> {
    let mut files = SieveFiles::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(crate::error::Error::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| crate::error::Error::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "defaultbc" {
            let target = std::fs::read_link(entry.path())
                .map_err(|e| crate::error::Error::io("readlink", entry.path(), e))?;
            files.active = target
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".bc").to_string());
        } else if let Some(stem) = name
            .strip_suffix(".bc")
            .or_else(|| name.strip_suffix(".script"))
        {
            if !files.scripts.iter().any(|s| s == stem) {
                files.scripts.push(stem.to_string());
            }
        }
    }
    files.scripts.sort();
    Ok(files)
}
