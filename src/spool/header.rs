//! `cyrus.header` (formats/cyrus.md, "cyrus.header"): the magic, then either the old text
//! format (quota root and uniqueid, user flag names, ACL; written up to Cyrus 3.4) or the one
//! dlist line Cyrus 3.6+ writes. This module reads bytes and never writes.
//!
//! Both formats are read the way Cyrus reads them, quirks included, because the user flag
//! numbering in `cyrus.index` records only means what Cyrus's own reading of this file says.

use std::path::Path;

use crate::error::{Error, Result};
use crate::spool::dlist::{self, Dlist};
use crate::spool::index::MAX_USER_FLAGS;
use crate::spool::ParseError;

/// Identical in every Cyrus version.
pub const MAGIC: &[u8] = b"\xa1\x02\x8b\x0dCyrus mailbox header\n\
\"The best thing about this system was that it had lots of goals.\"\n\
\t--Jim Morris on Andrew\n";

/// Real headers are well under a kilobyte (128 flag names and an ACL); the bound only keeps a
/// hostile file from being read into memory whole.
pub const MAX_HEADER_FILE: u64 = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderFormat {
    /// Three lines: quota root TAB uniqueid; flag names; ACL.
    Text,
    /// One `%(...)` line (Cyrus 3.6+).
    Dlist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxHeader {
    pub format: HeaderFormat,
    pub quota_root: Option<String>,
    pub uniqueid: Option<String>,
    /// The internal name when the header was written (dlist only). Cyrus does not rewrite it
    /// on every rename, so `mailboxes.db` is the authority for names.
    pub name: Option<String>,
    /// The mailbox type string, e.g. `e` (email) plus flag letters (dlist only).
    pub mbtype: Option<String>,
    /// JMAP id (dlist, Cyrus 3.13+).
    pub jmapid: Option<String>,
    /// Name of user flag *i* at index *i*; `None` for an unused slot. Trailing unused slots are
    /// dropped, so the length is one past the highest named flag (at most `MAX_USER_FLAGS`).
    pub user_flags: Vec<Option<String>>,
    /// (identifier, rights) in file order. Informational: `mailboxes.db` holds the ACL Cyrus
    /// enforces.
    pub acl: Vec<(String, String)>,
}

pub fn parse(bytes: &[u8]) -> Result<MailboxHeader, ParseError> {
    if !bytes.starts_with(MAGIC) {
        let at = bytes
            .iter()
            .zip(MAGIC)
            .position(|(a, b)| a != b)
            .unwrap_or(bytes.len());
        return Err(ParseError::new(
            at as u64,
            "not a cyrus.header: the magic does not match",
        ));
    }
    let start = MAGIC.len();
    let first = line(bytes, start)?;
    if bytes.get(start) == Some(&b'%') {
        parse_dlist(first, start)
    } else {
        parse_text(bytes, first, start)
    }
}

/// The bytes from `from` to the next LF. Cyrus requires the LF on every line it reads.
fn line(bytes: &[u8], from: usize) -> Result<&[u8], ParseError> {
    let rest = bytes.get(from..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\n') {
        Some(n) => Ok(&rest[..n]),
        None => Err(ParseError::new(
            bytes.len() as u64,
            format!("line starting at byte {from} has no end-of-line"),
        )),
    }
}

fn utf8(bytes: &[u8], at: usize, what: &str) -> Result<String, ParseError> {
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| {
        ParseError::new(
            (at + e.valid_up_to()) as u64,
            format!("{what} is not UTF-8"),
        )
    })
}

fn parse_text(bytes: &[u8], first: &[u8], start: usize) -> Result<MailboxHeader, ParseError> {
    // Line 1: quota root, TAB, uniqueid. Headers from before uniqueids existed have no TAB;
    // Cyrus then wants a reconstruct but still reads the rest, and so does this.
    let (quota_root, uniqueid) = match first.iter().position(|&b| b == b'\t') {
        None => (first, None),
        Some(tab) => {
            let id_at = start + tab + 1;
            let rest = &first[tab + 1..];
            // Cyrus stops the uniqueid at a further TAB and ignores what follows.
            let id = rest.split(|&b| b == b'\t').next().unwrap_or_default();
            if id.is_empty() {
                return Err(ParseError::new(
                    id_at as u64,
                    "empty uniqueid after the TAB",
                ));
            }
            (&first[..tab], Some(utf8(id, id_at, "uniqueid")?))
        }
    };
    let quota_root = if quota_root.is_empty() {
        None
    } else {
        Some(utf8(quota_root, start, "quota root")?)
    };

    // Line 2: flag names, each followed by one space. Token k names flag k and an empty token
    // is an unused slot. Writers up to 3.4 skipped unused slots instead of writing an empty
    // token, which renumbers later flags; Cyrus then reads it as written, and so must we.
    let flags_at = start + first.len() + 1;
    let flags_line = line(bytes, flags_at)?;
    let mut user_flags = Vec::new();
    let mut token_at = flags_at;
    for token in flags_line.split(|&b| b == b' ').take(MAX_USER_FLAGS) {
        user_flags.push(if token.is_empty() {
            None
        } else {
            Some(utf8(token, token_at, "user flag name")?)
        });
        token_at += token.len() + 1;
    }
    trim_unused(&mut user_flags);

    // Line 3: identifier TAB rights TAB, repeated.
    let acl_at = flags_at + flags_line.len() + 1;
    let acl_line = line(bytes, acl_at)?;
    let mut acl = Vec::new();
    let mut pieces = acl_line.split(|&b| b == b'\t');
    let mut at = acl_at;
    while let Some(id) = pieces.next() {
        if id.is_empty() {
            // The trailing TAB leaves one empty piece; anything else here is damage.
            if at == acl_at + acl_line.len() {
                break;
            }
            return Err(ParseError::new(at as u64, "empty ACL identifier"));
        }
        let rights_at = at + id.len() + 1;
        let Some(rights) = pieces.next() else {
            return Err(ParseError::new(at as u64, "ACL identifier without rights"));
        };
        acl.push((
            utf8(id, at, "ACL identifier")?,
            utf8(rights, rights_at, "ACL rights")?,
        ));
        at = rights_at + rights.len() + 1;
    }

    Ok(MailboxHeader {
        format: HeaderFormat::Text,
        quota_root,
        uniqueid,
        name: None,
        mbtype: None,
        jmapid: None,
        user_flags,
        acl,
    })
}

/// Cyrus reads only the first line, so bytes after its LF are ignored here too.
fn parse_dlist(first: &[u8], start: usize) -> Result<MailboxHeader, ParseError> {
    let value =
        dlist::parse(first).map_err(|e| ParseError::new(e.offset + start as u64, e.detail))?;
    // The parsed tree carries no positions, so semantic errors name the start of the line.
    let err = |detail: String| ParseError::new(start as u64, detail);
    if !matches!(value, Dlist::Kv(_)) {
        return Err(err("cyrus.header dlist is not a key/value list".into()));
    }
    let mut h = MailboxHeader {
        format: HeaderFormat::Dlist,
        quota_root: None,
        uniqueid: None,
        name: None,
        mbtype: None,
        jmapid: None,
        user_flags: Vec::new(),
        acl: Vec::new(),
    };
    // Later duplicates win, as in Cyrus's reader; unknown keys are left for future versions.
    for (key, v) in value.entries() {
        let key_name = String::from_utf8_lossy(key);
        let text = |v: &Dlist| -> Result<Option<String>, ParseError> {
            match v {
                Dlist::Nil => Ok(None),
                Dlist::List(_) | Dlist::Kv(_) => Err(err(format!("{key_name} is not a string"))),
                _ => v
                    .text()
                    .map(Some)
                    .ok_or_else(|| err(format!("{key_name} is not UTF-8"))),
            }
        };
        match key.as_slice() {
            b"T" => h.mbtype = text(v)?,
            b"N" => h.name = text(v)?,
            b"I" => h.uniqueid = text(v)?,
            b"J" => h.jmapid = text(v)?,
            b"Q" => h.quota_root = text(v)?,
            b"A" => {
                let Dlist::Kv(entries) = v else {
                    return Err(err("A (ACL) is not a key/value list".into()));
                };
                h.acl.clear();
                for (id, rights) in entries {
                    let id = std::str::from_utf8(id)
                        .map_err(|_| err("an ACL identifier is not UTF-8".into()))?;
                    let rights = text(rights)?
                        .ok_or_else(|| err(format!("ACL entry {id} has no rights")))?;
                    h.acl.push((id.to_string(), rights));
                }
            }
            b"U" => {
                let Dlist::List(items) = v else {
                    return Err(err("U (user flags) is not a list".into()));
                };
                // Cyrus has no bound here and would overrun its 128-slot table.
                if items.len() > MAX_USER_FLAGS {
                    return Err(err(format!(
                        "{} user flags, more than the {MAX_USER_FLAGS} an index can hold",
                        items.len()
                    )));
                }
                h.user_flags = items
                    .iter()
                    .map(|item| Ok(text(item)?.filter(|name| !name.is_empty())))
                    .collect::<Result<_, ParseError>>()?;
                trim_unused(&mut h.user_flags);
            }
            _ => {}
        }
    }
    Ok(h)
}

fn trim_unused(flags: &mut Vec<Option<String>>) {
    while flags.last().is_some_and(Option::is_none) {
        flags.pop();
    }
}

/// Reads and parses the `cyrus.header` at `path`.
pub fn read(path: &Path) -> Result<MailboxHeader> {
    use super::file::{self, Follow};
    let (bytes, _) = file::read(path, Follow::No, file::HEADER_CAP)?
        .ok_or_else(|| Error::NotFound(path.display().to_string()))?;
    parse(&bytes).map_err(|e| e.in_file(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_magic(rest: &[u8]) -> Vec<u8> {
        [MAGIC, rest].concat()
    }

    fn names(flags: &[&str]) -> Vec<Option<String>> {
        flags
            .iter()
            .map(|f| (!f.is_empty()).then(|| f.to_string()))
            .collect()
    }

    #[test]
    fn magic_is_the_115_bytes_cyrus_writes() {
        assert_eq!(MAGIC.len(), 115);
        let e = parse(b"\xa1\x02\x8b\x0dCyrus mailbox HEADER").unwrap_err();
        assert_eq!(e.offset, 4 + 14);
    }

    #[test]
    fn text_format_as_cyrus_2_4_writes_it() {
        let h = parse(&with_magic(
            b"user.cassandane\tf4fca4c0-fc1d-4c57-a250-23acb743f93b\n\
              $Forwarded Junk  $Label \ncassandane\tlrswipkxtecdan\tanyone\tp\t\n",
        ))
        .unwrap();
        assert_eq!(h.format, HeaderFormat::Text);
        assert_eq!(h.quota_root.as_deref(), Some("user.cassandane"));
        assert_eq!(
            h.uniqueid.as_deref(),
            Some("f4fca4c0-fc1d-4c57-a250-23acb743f93b")
        );
        assert_eq!(h.user_flags, names(&["$Forwarded", "Junk", "", "$Label"]));
        assert_eq!(
            h.acl,
            [
                ("cassandane".to_string(), "lrswipkxtecdan".to_string()),
                ("anyone".to_string(), "p".to_string())
            ]
        );
        assert_eq!((h.name, h.mbtype, h.jmapid), (None, None, None));
    }

    #[test]
    fn text_format_edge_cases() {
        // No quota root; no flags.
        let h = parse(&with_magic(b"\tabc\n\nfred\tlrs\t\n")).unwrap();
        assert_eq!((h.quota_root, h.uniqueid.as_deref()), (None, Some("abc")));
        assert!(h.user_flags.is_empty());
        // Ancient header without a uniqueid.
        let h = parse(&with_magic(b"user.fred\n\n\n")).unwrap();
        assert_eq!(
            (h.quota_root.as_deref(), h.uniqueid),
            (Some("user.fred"), None)
        );
        assert!(h.acl.is_empty());
        // Flags beyond 128 are ignored, as Cyrus ignores them.
        let many: String = (0..130).map(|i| format!("f{i} ")).collect();
        let h = parse(&with_magic(format!("\tx\n{many}\n\n").as_bytes())).unwrap();
        assert_eq!(h.user_flags.len(), 128);
        assert_eq!(h.user_flags[127].as_deref(), Some("f127"));
    }

    #[test]
    fn text_format_damage() {
        let base = MAGIC.len() as u64;
        let cases: &[(&[u8], u64)] = &[
            (b"", base),
            (b"root\tid", base + 7),
            (b"root\tid\nflags", base + 13),
            (b"root\tid\n\nfred\tlrs\t", base + 18),
            (b"root\t\n\n\n", base + 5),
            (b"\tid\n\nfred\n", base + 5),
            (b"\tid\n\n\tlrs\t\n", base + 5),
            (b"\tid\n\xff\n\n", base + 4),
        ];
        for (rest, offset) in cases {
            let e = parse(&with_magic(rest)).expect_err(&String::from_utf8_lossy(rest));
            assert_eq!(
                e.offset,
                *offset,
                "{:?}: {e}",
                String::from_utf8_lossy(rest)
            );
        }
    }

    #[test]
    fn dlist_format_as_cyrus_3_6_writes_it() {
        let h = parse(&with_magic(
            b"%(T e N user.fred.Sent I 2f6c1b9e-6a2e-4bfb-9f8c-0c1f5b2e1d3a \
              J Mfoo Q user.fred A %(fred lrswipkxtecdan \"group:a b\" lrs) \
              U ($Label NIL Junk NIL))\n",
        ))
        .unwrap();
        assert_eq!(h.format, HeaderFormat::Dlist);
        assert_eq!(h.mbtype.as_deref(), Some("e"));
        assert_eq!(h.name.as_deref(), Some("user.fred.Sent"));
        assert_eq!(
            h.uniqueid.as_deref(),
            Some("2f6c1b9e-6a2e-4bfb-9f8c-0c1f5b2e1d3a")
        );
        assert_eq!(h.jmapid.as_deref(), Some("Mfoo"));
        assert_eq!(h.quota_root.as_deref(), Some("user.fred"));
        assert_eq!(h.acl[1], ("group:a b".to_string(), "lrs".to_string()));
        assert_eq!(h.user_flags, names(&["$Label", "", "Junk"]));
    }

    #[test]
    fn dlist_format_damage() {
        let base = MAGIC.len() as u64;
        let cases: &[(&[u8], u64)] = &[
            (b"%(T e", base + 5),
            (b"%(T e I\n", base + 7),
            (b"%(T e)x\n", base + 6),
            (b"%(T (e))\n", base),
            (b"%(A (x y))\n", base),
            (b"%(A %(fred NIL))\n", base),
            (b"%(U %(a b))\n", base),
            (b"%(I \"\xff\")\n", base),
            // Cyrus reads only up to the first LF, so a literal cannot survive in a header.
            (b"%(I {2}\r\nab)\n", base + 6),
        ];
        for (rest, offset) in cases {
            let e = parse(&with_magic(rest)).expect_err(&String::from_utf8_lossy(rest));
            assert_eq!(
                e.offset,
                *offset,
                "{:?}: {e}",
                String::from_utf8_lossy(rest)
            );
        }
        let many: String = (0..129).map(|i| format!("f{i} ")).collect();
        let e = parse(&with_magic(
            format!("%(U ({}))\n", many.trim_end()).as_bytes(),
        ));
        assert!(e.unwrap_err().detail.contains("129 user flags"));
    }

    #[test]
    fn every_prefix_is_handled() {
        for whole in [
            with_magic(b"user.fred\tabc\nA B \nfred\tlrs\t\n"),
            with_magic(b"%(T e I abc A %(fred lrs) U (A NIL B))\n"),
        ] {
            for cut in 0..whole.len() {
                let e = parse(&whole[..cut]).unwrap_err();
                assert!(e.offset <= cut as u64, "{cut}: {e}");
            }
            assert!(parse(&whole).is_ok());
        }
    }
}
