//! The mailbox list, read from `mailboxes.db` itself (formats/cyrus.md, "Mailbox list"): the
//! 3.6+ layout (`N<dbname>` and `I<uniqueid>` records with dlist values), the 2.5–3.4 layout
//! (internal name → dlist), and the 2.x text layout (`<type> <partition> <acl>`).

use std::path::Path;

use super::cyrusdb::{self, Record};
use super::dlist::{self, Dlist};
use super::name::MboxName;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum MboxlistFormat {
    /// 3.6+: `N<dbname>` → dlist, `I<uniqueid>` → dlist with name history.
    ByIdAndName,
    /// 2.5–3.4: internal name → dlist.
    DlistByName,
    /// 2.0–2.4: internal name → `<type> <partition> <acl>`.
    TextByName,
}

/// One mailbox as mailboxes.db describes it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MailboxEntry {
    #[serde(serialize_with = "ser_name")]
    pub name: MboxName,
    pub uniqueid: Option<String>,
    pub partition: Option<String>,
    /// Cyrus's type letters: first the kind (`e` email, `f` sieve scripts, ...), then flags
    /// (`d` deleted tombstone, `l` legacy directories, `i` intermediate, `r` remote, ...).
    pub mbtype: String,
    pub uidvalidity: Option<u32>,
    pub acl: Vec<(String, String)>,
    pub createdmodseq: Option<u64>,
    pub foldermodseq: Option<u64>,
    pub mtime: Option<u64>,
    /// Whether the mailbox lives in the by-name (legacy) layout rather than by uniqueid: always
    /// before 3.6, and in 3.6+ when its type carries `l`.
    pub legacy_dirs: bool,
    /// 3.6+: the mailbox's `I<uniqueid>` record (name history), exactly as stored.
    #[serde(skip)]
    pub id_record: Option<(Vec<u8>, Vec<u8>)>,
    /// The record exactly as stored, so a restore can put it back byte for byte.
    #[serde(skip)]
    pub raw_key: Vec<u8>,
    #[serde(skip)]
    pub raw_value: Vec<u8>,
}

fn ser_name<S: serde::Serializer>(n: &MboxName, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&n.internal())
}

impl MailboxEntry {
    fn flags(&self) -> &str {
        self.mbtype.get(1..).unwrap_or("")
    }

    /// A name that no longer exists: left behind by RENAME or DELETE in 3.6+.
    pub fn is_tombstone(&self) -> bool {
        self.flags().contains('d')
    }

    pub fn is_intermediate(&self) -> bool {
        self.flags().contains('i')
    }

    /// The `#sieve` mailbox that holds a 3.6+ user's sieve scripts.
    pub fn is_sieve(&self) -> bool {
        self.mbtype.starts_with('f')
    }

    pub fn is_remote(&self) -> bool {
        self.flags().contains('r')
    }
}

/// The whole list, in key order, with how it was stored.
pub struct Mboxlist {
    pub format: MboxlistFormat,
    pub entries: Vec<MailboxEntry>,
}

impl Mboxlist {
    /// Reads `mailboxes.db` (twoskip, skiplist or flat).
    pub fn read(path: &Path) -> Result<Mboxlist> {
        let records = cyrusdb::read(path)?;
        Mboxlist::from_records(path, &records)
    }

    pub fn from_records(path: &Path, records: &[Record]) -> Result<Mboxlist> {
        let format = detect(records);
        let mut entries = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let bad = |detail: String| {
                Error::corrupt(
                    path,
                    0,
                    format!("record {i} ({}): {detail}", String::from_utf8_lossy(&r.key)),
                )
            };
            let entry = match format {
                MboxlistFormat::ByIdAndName => {
                    let Some(dbname) = r.key.strip_prefix(b"N") else {
                        continue;
                    };
                    let name = MboxName::from_dbname(&utf8(dbname).map_err(bad)?);
                    let mut e = from_dlist(name, r).map_err(bad)?;
                    e.legacy_dirs = e.mbtype.get(1..).is_some_and(|f| f.contains('l'));
                    e
                }
                MboxlistFormat::DlistByName => {
                    let name = MboxName::from_internal(&utf8(&r.key).map_err(bad)?);
                    from_dlist(name, r).map_err(bad)?
                }
                MboxlistFormat::TextByName => {
                    let name = MboxName::from_internal(&utf8(&r.key).map_err(bad)?);
                    from_text(name, r).map_err(bad)?
                }
            };
            entries.push(entry);
        }
        if format == MboxlistFormat::ByIdAndName {
            let by_id: std::collections::HashMap<&[u8], &Record> = records
                .iter()
                .filter_map(|r| Some((r.key.strip_prefix(b"I")?, r)))
                .collect();
            for e in entries.iter_mut().filter(|e| !e.is_tombstone()) {
                if let Some(r) = e
                    .uniqueid
                    .as_deref()
                    .and_then(|id| by_id.get(id.as_bytes()))
                {
                    e.id_record = Some((r.key.clone(), r.value.clone()));
                }
            }
        }
        Ok(Mboxlist { format, entries })
    }
}

fn utf8(b: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "name is not UTF-8".to_string())
}

/// 3.6+ lists hold `I<uniqueid>` records whose value names the mailbox (`N`); older ones don't.
fn detect(records: &[Record]) -> MboxlistFormat {
    let by_id = records.iter().any(|r| {
        r.key.first() == Some(&b'I')
            && dlist::parse(&r.value)
                .ok()
                .is_some_and(|d| d.get("N").is_some())
    });
    if by_id {
        return MboxlistFormat::ByIdAndName;
    }
    let dlist_values = records.iter().any(|r| r.value.starts_with(b"%("));
    if dlist_values {
        MboxlistFormat::DlistByName
    } else {
        MboxlistFormat::TextByName
    }
}

fn from_dlist(name: MboxName, r: &Record) -> std::result::Result<MailboxEntry, String> {
    let d = dlist::parse(&r.value).map_err(|e| format!("value: {e}"))?;
    let text = |k: &str| d.get(k).and_then(Dlist::text);
    let number = |k: &str| d.get(k).and_then(Dlist::number);
    let acl = match d.get("A") {
        Some(Dlist::Kv(items)) => items
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    v.text().unwrap_or_default(),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(MailboxEntry {
        name,
        uniqueid: text("I"),
        partition: text("P"),
        mbtype: text("T").unwrap_or_else(|| "e".into()),
        uidvalidity: number("V").and_then(|v| u32::try_from(v).ok()),
        acl,
        createdmodseq: number("C"),
        foldermodseq: number("F"),
        mtime: number("M"),
        legacy_dirs: true,
        id_record: None,
        raw_key: r.key.clone(),
        raw_value: r.value.clone(),
    })
}

/// 2.x: `<type number> <partition> <acl: id TAB rights TAB ...>`.
fn from_text(name: MboxName, r: &Record) -> std::result::Result<MailboxEntry, String> {
    let value = String::from_utf8_lossy(&r.value);
    let mut fields = value.splitn(3, ' ');
    let kind: u32 = fields
        .next()
        .and_then(|t| t.parse().ok())
        .ok_or("type is not a number")?;
    let partition = fields.next().ok_or("no partition")?.to_string();
    let acl_text = fields.next().unwrap_or("");
    let parts: Vec<&str> = acl_text.split('\t').filter(|s| !s.is_empty()).collect();
    let acl = parts
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect();
    // 2.x type bits: REMOTE 1, RESERVE 2, NETNEWS 4, MOVING 8, DELETED 16.
    let mut mbtype = String::from(if kind & 4 != 0 { "n" } else { "e" });
    for (bit, letter) in [(1, 'r'), (2, 'z'), (8, 'm'), (16, 'd')] {
        if kind & bit != 0 {
            mbtype.push(letter);
        }
    }
    Ok(MailboxEntry {
        name,
        uniqueid: None,
        partition: Some(partition),
        mbtype,
        uidvalidity: None,
        acl,
        createdmodseq: None,
        foldermodseq: None,
        mtime: None,
        legacy_dirs: true,
        id_record: None,
        raw_key: r.key.clone(),
        raw_value: r.value.clone(),
    })
}
