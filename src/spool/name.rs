//! Mailbox names as Cyrus stores them: an optional domain and a list of hierarchy components.
//! mailboxes.db 3.6+ separates components with 0x1F and the domain with 0x1D ("dbname"); older
//! versions and cyrus.header use the internal dot form, where a literal '.' inside a component
//! is written '^' and the domain is a `domain!` prefix.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MboxName {
    pub domain: Option<String>,
    pub parts: Vec<String>,
}

const DB_SEP: char = '\u{1f}';
const DB_DOMAIN_SEP: char = '\u{1d}';

impl MboxName {
    /// From a 3.6+ mailboxes.db name (`user\x1falice\x1fSent`, `example.com\x1duser\x1fbob`).
    pub fn from_dbname(dbname: &str) -> MboxName {
        let (domain, rest) = match dbname.split_once(DB_DOMAIN_SEP) {
            Some((d, rest)) => (Some(d.to_string()), rest),
            None => (None, dbname),
        };
        MboxName {
            domain,
            parts: rest.split(DB_SEP).map(str::to_string).collect(),
        }
    }

    /// From the internal dot form (`user.john^doe.Sent`, `example.com!user.bob`).
    pub fn from_internal(internal: &str) -> MboxName {
        let (domain, rest) = match internal.split_once('!') {
            Some((d, rest)) => (Some(d.to_string()), rest),
            None => (None, internal),
        };
        MboxName {
            domain,
            parts: rest.split('.').map(|p| p.replace('^', ".")).collect(),
        }
    }

    /// The internal dot form, as Cyrus's tools print it.
    pub fn internal(&self) -> String {
        let body: Vec<String> = self.parts.iter().map(|p| p.replace('.', "^")).collect();
        match &self.domain {
            Some(d) => format!("{d}!{}", body.join(".")),
            None => body.join("."),
        }
    }

    /// The 3.6+ mailboxes.db form.
    pub fn dbname(&self) -> String {
        let body = self.parts.join(&DB_SEP.to_string());
        match &self.domain {
            Some(d) => format!("{d}{DB_DOMAIN_SEP}{body}"),
            None => body,
        }
    }

    /// The userid owning this name, for `user.<id>...` and `<deletedprefix>.user.<id>...`.
    pub fn owner(&self, deletedprefix: &str) -> Option<String> {
        let parts: &[String] = match self.parts.first().map(String::as_str) {
            Some(p) if p == deletedprefix => &self.parts[1..],
            _ => &self.parts,
        };
        if parts.len() < 2 || parts[0] != "user" || parts[1].is_empty() {
            return None;
        }
        Some(match &self.domain {
            Some(d) => format!("{}@{d}", parts[1]),
            None => parts[1].clone(),
        })
    }

    /// The shared tree of a name that belongs to no user (formats/backup-entries.md, "Shared
    /// mailboxes"): its top-level name, with the domain after `@` like a userid. A mailbox
    /// deleted with delete_mode: delayed belongs to the tree it was deleted from. `None` for a
    /// user's name, and for `user` or the deleted prefix alone, which no tree can be named.
    pub fn shared_tree(&self, deletedprefix: &str) -> Option<String> {
        if self.owner(deletedprefix).is_some() {
            return None;
        }
        let parts: &[String] = match self.parts.first().map(String::as_str) {
            Some(p) if p == deletedprefix => &self.parts[1..],
            _ => &self.parts,
        };
        let top = parts.first().filter(|t| !t.is_empty() && *t != "user")?;
        if *top == deletedprefix {
            return None;
        }
        Some(match &self.domain {
            Some(d) => format!("{top}@{d}"),
            None => top.clone(),
        })
    }

    /// Whether this is `<deletedprefix>.…` (a mailbox deleted with delete_mode: delayed).
    pub fn is_deleted(&self, deletedprefix: &str) -> bool {
        self.parts.len() > 1 && self.parts[0] == deletedprefix
    }

    /// Whether this is a user's INBOX (`user.<id>`).
    pub fn is_inbox(&self) -> bool {
        self.parts.len() == 2 && self.parts[0] == "user"
    }

    /// The name relative to its owner's INBOX ("INBOX", "Sent", "Archive/2023" with `sep`).
    pub fn relative(&self, sep: char) -> String {
        if self.parts.len() >= 2 && self.parts[0] == "user" {
            if self.parts.len() == 2 {
                return "INBOX".into();
            }
            return self.parts[2..].join(&sep.to_string());
        }
        self.parts.join(&sep.to_string())
    }
}

impl fmt::Display for MboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.internal())
    }
}

/// Splits a userid into local part and domain (`bob@example.com`).
pub fn split_userid(userid: &str) -> (&str, Option<&str>) {
    match userid.rsplit_once('@') {
        Some((local, domain)) if !domain.is_empty() => (local, Some(domain)),
        _ => (userid, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_trees_are_named_by_their_top_level_and_domain() {
        for (name, tree) in [
            ("Announcements", Some("Announcements")),
            ("Announcements.2024.Q1", Some("Announcements")),
            ("example.com!support.tickets", Some("support@example.com")),
            ("DELETED.Announcements.6B02336D", Some("Announcements")),
            (
                "example.com!DELETED.support.6B02336D",
                Some("support@example.com"),
            ),
            ("user.alice", None),
            ("user.alice.Sent", None),
            ("DELETED.user.alice.Sent.6B02336D", None),
            ("example.com!user.bob", None),
            ("user", None),
            ("DELETED", None),
            ("DELETED.DELETED", None),
        ] {
            assert_eq!(
                MboxName::from_internal(name)
                    .shared_tree("DELETED")
                    .as_deref(),
                tree,
                "{name}"
            );
        }
    }

    #[test]
    fn forms_convert_both_ways() {
        let n = MboxName::from_dbname("user\u{1f}john.doe\u{1f}Sent");
        assert_eq!(n.internal(), "user.john^doe.Sent");
        assert_eq!(MboxName::from_internal("user.john^doe.Sent"), n);
        assert_eq!(n.owner("DELETED").as_deref(), Some("john.doe"));
        assert_eq!(n.relative('/'), "Sent");
        let d = MboxName::from_dbname("example.com\u{1d}user\u{1f}bob");
        assert_eq!(d.internal(), "example.com!user.bob");
        assert_eq!(d.owner("DELETED").as_deref(), Some("bob@example.com"));
        assert!(d.is_inbox());
        assert_eq!(d.dbname(), "example.com\u{1d}user\u{1f}bob");
        let del = MboxName::from_internal("DELETED.user.alice.Scratch.6B02336D");
        assert!(del.is_deleted("DELETED"));
        assert_eq!(del.owner("DELETED").as_deref(), Some("alice"));
        assert_eq!(
            MboxName::from_internal("shared.news").owner("DELETED"),
            None
        );
    }
}
