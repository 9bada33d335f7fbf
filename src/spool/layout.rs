//! Where Cyrus keeps each file (formats/cyrus.md, "Directory layouts"): mailbox directories in
//! the legacy by-name layout and the 3.6+ by-uniqueid layout (mixed in one spool), metadata on
//! metapartitions, mailbox name lock files, and per-user files (seen, subscriptions, sieve,
//! quota). Pure path arithmetic: nothing here touches the disk.

use std::path::{Path, PathBuf};

use super::config::Config;
use super::name::{split_userid, MboxName};

/// Cyrus's `dir_hash_c`: the one-character directory that spreads names over subdirectories.
pub fn dir_hash(name: &str, fulldirhash: bool) -> String {
    let name = name.split('.').next().unwrap_or("");
    if fulldirhash {
        let mut n: u32 = 0;
        for b in name.bytes() {
            n = ((n << 3) ^ (n >> 5)) ^ b as u32;
        }
        return ((b'A' + (n % 23) as u8) as char).to_string();
    }
    match name.bytes().next().map(|b| b.to_ascii_lowercase()) {
        Some(c) if c.is_ascii_lowercase() => (c as char).to_string(),
        _ => "q".into(),
    }
}

/// The domain, unless it is the server's default domain (which Cyrus stores without one).
fn real_domain<'a>(config: &Config, domain: Option<&'a str>) -> Option<&'a str> {
    domain.filter(|d| config.defaultdomain.as_deref() != Some(*d))
}

/// The by-name path of `name` below `root` (Cyrus's `mboxname_datapath` for legacy mailboxes,
/// also used for name lock files).
pub fn legacy_relative(config: &Config, name: &MboxName) -> PathBuf {
    let mut path = PathBuf::new();
    if let Some(domain) = real_domain(config, name.domain.as_deref()) {
        path.push("domain");
        if config.hashimapspool {
            path.push(dir_hash(domain, config.fulldirhash));
        }
        path.push(domain);
    }
    if config.hashimapspool {
        let idx = if name.parts.len() >= 2 {
            &name.parts[1]
        } else {
            &name.parts[0]
        };
        path.push(dir_hash(idx, config.fulldirhash));
    }
    for part in &name.parts {
        path.push(part.replace('.', "^"));
    }
    path
}

/// The by-uniqueid path (3.6+): `uuid/<c0>/<c1>/<uniqueid>`.
pub fn uuid_relative(uniqueid: &str) -> PathBuf {
    let mut chars = uniqueid.chars();
    let c0 = chars.next().unwrap_or('_');
    let c1 = chars.next().unwrap_or('_');
    Path::new("uuid")
        .join(c0.to_string())
        .join(c1.to_string())
        .join(uniqueid)
}

/// The mailbox's directory below a partition-like root.
pub fn mailbox_relative(
    config: &Config,
    name: &MboxName,
    uniqueid: Option<&str>,
    legacy: bool,
) -> Option<PathBuf> {
    if legacy {
        Some(legacy_relative(config, name))
    } else {
        uniqueid.map(uuid_relative)
    }
}

/// The name lock file of a mailbox: keyed by uniqueid for by-uniqueid mailboxes, by name for
/// legacy ones, laid out like a legacy mailbox path below `mboxname_lockpath`.
pub fn mailbox_lock(
    config: &Config,
    name: &MboxName,
    uniqueid: Option<&str>,
    legacy: bool,
) -> Option<PathBuf> {
    let lock_name = if legacy {
        name.clone()
    } else {
        MboxName {
            domain: None,
            parts: vec![uniqueid?.to_string()],
        }
    };
    let mut path = config
        .mboxname_lockpath
        .join(legacy_relative(config, &lock_name));
    let mut file = path.file_name()?.to_os_string();
    file.push(".lock");
    path.set_file_name(file);
    Some(path)
}

/// Per-user database files, in the legacy by-name place.
pub fn legacy_user_file(config: &Config, userid: &str, suffix: &str) -> PathBuf {
    let (local, domain) = split_userid(userid);
    let mut path = config.configdirectory.clone();
    if let Some(domain) = real_domain(config, domain) {
        path.push("domain");
        path.push(dir_hash(domain, config.fulldirhash));
        path.push(domain);
    }
    path.push("user");
    path.push(dir_hash(local, config.fulldirhash));
    path.push(format!("{local}.{suffix}"));
    path
}

/// Per-user database files of a 3.6+ by-uniqueid user, keyed by the INBOX's uniqueid.
pub fn uuid_user_file(config: &Config, inbox_uniqueid: &str, suffix: &str) -> PathBuf {
    config
        .configdirectory
        .join("user")
        .join(uuid_relative(inbox_uniqueid))
        .join(format!("{suffix}.db"))
}

/// The user's sieve directory (compiled scripts, `defaultbc`, and before 3.6 the sources).
pub fn sieve_dir(
    config: &Config,
    userid: &str,
    inbox_uniqueid: Option<&str>,
    legacy: bool,
) -> PathBuf {
    if let (false, Some(id)) = (legacy, inbox_uniqueid) {
        return config.sievedir.join(uuid_relative(id));
    }
    let (local, domain) = split_userid(userid);
    let mut path = config.sievedir.clone();
    match real_domain(config, domain) {
        Some(domain) => {
            path.push("domain");
            path.push(dir_hash(domain, config.fulldirhash));
            path.push(domain);
            path.push(dir_hash(local, config.fulldirhash));
            path.push(local);
        }
        None => {
            path.push(dir_hash(userid, config.fulldirhash));
            path.push(userid);
        }
    }
    path
}

/// The quotalegacy file of a quota root (`user.alice` → `<conf>/quota/a/user.alice`).
pub fn quota_file(config: &Config, root: &MboxName) -> PathBuf {
    let mut path = config.configdirectory.clone();
    if let Some(domain) = real_domain(config, root.domain.as_deref()) {
        path.push("domain");
        path.push(dir_hash(domain, config.fulldirhash));
        path.push(domain);
    }
    path.push("quota");
    let bare = MboxName {
        domain: None,
        parts: root.parts.clone(),
    };
    let internal = bare.internal();
    let hashed = internal.strip_prefix("user.").unwrap_or(&internal);
    path.push(dir_hash(hashed, config.fulldirhash));
    path.push(internal);
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut raw = BTreeMap::new();
        raw.insert("configdirectory".to_string(), "/c".to_string());
        raw.insert("partition-default".to_string(), "/s".to_string());
        raw.insert("mboxname_lockpath".to_string(), "/l".to_string());
        raw.insert("sievedir".to_string(), "/v".to_string());
        for (k, v) in extra {
            raw.insert(k.to_string(), v.to_string());
        }
        Config::from_raw(Path::new("/etc/imapd.conf"), raw).unwrap()
    }

    #[test]
    fn hash_letters() {
        assert_eq!(dir_hash("alice", false), "a");
        assert_eq!(dir_hash("Bob", false), "b");
        assert_eq!(dir_hash("*U*alice", false), "q");
        assert_eq!(dir_hash("7up", false), "q");
        assert_eq!(dir_hash("fred.smith", false), "f");
        // n = ((n << 3) ^ (n >> 5)) ^ b over "ab": 97, then (776 ^ 3) ^ 98 = 873; 873 % 23 = 22.
        assert_eq!(dir_hash("ab", true), "W");
    }

    #[test]
    fn legacy_and_uuid_paths_match_what_cyrus_36_writes() {
        // Observed on a real 3.6.1 (shared/reference/cyrus-real-server.md section 3).
        let hashed = config(&[("hashimapspool", "yes")]);
        let sent = MboxName::from_internal("user.alice.Sent");
        assert_eq!(
            legacy_relative(&hashed, &sent),
            PathBuf::from("a/user/alice/Sent")
        );
        let deleted = MboxName::from_internal("DELETED.user.alice.Scratch.6B0234C3");
        assert_eq!(
            legacy_relative(&hashed, &deleted),
            PathBuf::from("u/DELETED/user/alice/Scratch/6B0234C3")
        );
        assert_eq!(
            mailbox_lock(&hashed, &sent, None, true).unwrap(),
            PathBuf::from("/l/a/user/alice/Sent.lock")
        );
        assert_eq!(
            mailbox_lock(&hashed, &MboxName::from_internal("user.alice"), None, true).unwrap(),
            PathBuf::from("/l/a/user/alice.lock")
        );
        let plain = config(&[]);
        assert_eq!(
            uuid_relative("6erctn9iiw4demxtjmv0qaiq"),
            PathBuf::from("uuid/6/e/6erctn9iiw4demxtjmv0qaiq")
        );
        assert_eq!(
            mailbox_lock(&plain, &sent, Some("6erctn9iiw4demxtjmv0qaiq"), false).unwrap(),
            PathBuf::from("/l/6erctn9iiw4demxtjmv0qaiq.lock")
        );
        assert_eq!(
            legacy_user_file(&plain, "alice", "seen"),
            PathBuf::from("/c/user/a/alice.seen")
        );
        assert_eq!(
            uuid_user_file(&plain, "6erctn9iiw4demxtjmv0qaiq", "sub"),
            PathBuf::from("/c/user/uuid/6/e/6erctn9iiw4demxtjmv0qaiq/sub.db")
        );
        assert_eq!(
            sieve_dir(&plain, "alice", None, true),
            PathBuf::from("/v/a/alice")
        );
        assert_eq!(
            quota_file(&plain, &MboxName::from_internal("user.alice")),
            PathBuf::from("/c/quota/a/user.alice")
        );
        let dom = MboxName::from_internal("example.com!user.bob.Sent");
        assert_eq!(
            legacy_relative(&plain, &dom),
            PathBuf::from("domain/example.com/user/bob/Sent")
        );
        assert_eq!(
            legacy_user_file(&plain, "bob@example.com", "sub"),
            PathBuf::from("/c/domain/e/example.com/user/b/bob.sub")
        );
    }
}
