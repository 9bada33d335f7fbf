//! mailpack's reading of a real Cyrus 3.6 spool, straight from disk, must agree with what the
//! server itself reports over IMAP: mailbox names, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, and per
//! message UID, flags, internal date, size and GUID (SHA-1 of the body), subscriptions and seen
//! state. Both directory layouts; and the committed fixture spools against their recorded view.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mailpack::spool::name::MboxName;
use mailpack::spool::user::{read_db_if_present, read_seen, read_subscriptions};
use mailpack::spool::{LockOptions, Spool};

use crate::cyrus::{internaldate_epoch, mutf7_decode, CyrusOptions, CyrusServer, Layout};

/// One mailbox as the comparison sees it.
#[derive(Debug, PartialEq, Eq, Clone, serde::Serialize, serde::Deserialize)]
pub struct MailboxFacts {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: u64,
    /// (uid, sorted flags, internaldate seconds, size, sha1)
    pub messages: Vec<(u32, Vec<String>, i64, u64, String)>,
}

#[derive(Debug, PartialEq, Eq, Clone, serde::Serialize, serde::Deserialize)]
pub struct UserFacts {
    /// Keyed by the name relative to the user, '/' separated, UTF-8.
    pub mailboxes: BTreeMap<String, MailboxFacts>,
    pub subscriptions: Vec<String>,
}

/// Fills a server with everything the backup must get right.
pub fn populate(server: &CyrusServer) {
    let sep = server.separator();
    let users: &[&str] = if server.options().unixhierarchysep {
        &["alice", "bob", "john.doe"]
    } else {
        &["alice", "bob"]
    };
    for u in users {
        server.create_user(u);
    }
    let msg = |i: usize, extra: &str| {
        format!(
            "From: sender{i}@example.org\r\nTo: alice@example.com\r\nSubject: message {i}{extra}\r\nMessage-ID: <{i}.{extra}@example.org>\r\n\r\nBody of message {i}.\r\n{}\r\n",
            "line of text ".repeat(i * 7 % 50)
        )
        .into_bytes()
    };
    // One transaction to two users: Cyrus hard-links the file into both INBOXes.
    let shared: Vec<Vec<u8>> = (0..4).map(|i| msg(i, "both")).collect();
    server.deliver_many("sender@example.org", &["alice", "bob"], &shared);
    let own: Vec<Vec<u8>> = (4..10).map(|i| msg(i, "alice")).collect();
    server.deliver_many("sender@example.org", &["alice"], &own);
    server.lmtp_deliver(
        "sender@example.org",
        &[users[users.len() - 1]],
        &msg(20, "last"),
    );

    let mut a = server.imap("alice");
    let archive = "Archive".to_string();
    let year = format!("Archive{sep}2023");
    let cafe = format!("Projects{sep}Café Crème");
    for m in [
        &archive,
        &year,
        &cafe,
        &"Scratch".to_string(),
        &"ToDelete".to_string(),
        &"Shared".to_string(),
    ] {
        a.create(m);
    }
    a.append(
        &archive,
        &["\\Seen", "\\Flagged", "$Label1"],
        Some(" 1-Jan-2020 10:00:00 +0000"),
        &msg(30, "appended"),
    );
    a.append(
        &cafe,
        &["\\Answered"],
        Some("15-Jun-2019 08:30:00 +0200"),
        &msg(31, "café"),
    );
    a.select("INBOX");
    a.uid_store("1:2", "+FLAGS", &["\\Seen"]);
    a.uid_store("3", "+FLAGS", &["$Forwarded", "\\Answered"]);
    a.uid_copy("1:2", &archive);
    a.uid_move("4", &year);
    a.uid_store("5", "+FLAGS", &["\\Deleted"]);
    a.uid_expunge("5");
    a.uid_store("6", "+FLAGS", &["\\Deleted"]);
    a.rename("Scratch", "Old Stuff");
    a.delete("ToDelete");
    for m in ["INBOX", &archive, &cafe] {
        a.subscribe(m);
    }
    a.set_metadata(&archive, "/private/comment", Some("kept for the auditors"));
    a.set_metadata("INBOX", "/shared/comment", Some("shared note"));
    a.create_special("Sent", "\\Sent");
    a.append("Shared", &[], None, &msg(40, "shared"));
    a.ok("SETACL Shared bob lrs");
    drop(a);
    let mut admin = server.admin();
    admin.ok(&format!(
        "SETQUOTA {} (STORAGE 100000)",
        crate::cyrus::mailbox_arg(&server.user_mailbox("alice"))
    ));
    drop(admin);

    // bob's seen state in alice's folder lands in bob's seen db, keyed by its uniqueid.
    let mut b = server.imap("bob");
    b.subscribe("INBOX");
    let other = format!("Other Users{sep}alice{sep}Shared");
    b.select(&other);
    b.uid_store("1", "+FLAGS", &["\\Seen"]);
    drop(b);

    if server.options().sieve {
        server.upload_sieve("alice", "main", "require [\"fileinto\"];\nif header :contains \"subject\" \"auditor\" { fileinto \"Archive\"; }\n", true);
    }
}

/// What IMAP says about the user's own mailboxes.
pub fn imap_facts(server: &CyrusServer, user: &str) -> UserFacts {
    let mut imap = server.imap(user);
    let sep = server.separator();
    let mut mailboxes = BTreeMap::new();
    for entry in imap.list("*") {
        if entry.has_flag("\\NoSelect")
            || entry.has_flag("\\NonExistent")
            || entry.name.starts_with("Other Users")
            || entry.name.starts_with("Shared Folders")
        {
            continue;
        }
        let info = imap.examine(&entry.name);
        let messages = imap
            .fetch_all(&entry.name)
            .into_iter()
            .map(|m| {
                (
                    m.uid,
                    m.flags,
                    internaldate_epoch(&m.internaldate),
                    m.size,
                    m.sha1,
                )
            })
            .collect();
        mailboxes.insert(
            entry.name.replace(sep, "/"),
            MailboxFacts {
                uidvalidity: info.uidvalidity,
                uidnext: info.uidnext,
                highestmodseq: info.highestmodseq,
                messages,
            },
        );
    }
    let mut subscriptions: Vec<String> = imap
        .list_subscribed()
        .into_iter()
        .map(|e| e.name.replace(sep, "/"))
        .collect();
    subscriptions.sort();
    UserFacts {
        mailboxes,
        subscriptions,
    }
}

/// The same facts, read by mailpack from the files alone.
pub fn mailpack_facts(config: &Path, user: &str) -> UserFacts {
    let spool = Spool::open(config).unwrap_or_else(|e| panic!("{e}"));
    let deleted = spool.config.deletedprefix.clone();
    let relative = |n: &MboxName| -> String {
        let rel = n.relative('/');
        rel.split('/')
            .map(mutf7_decode)
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut mailboxes = BTreeMap::new();
    for e in spool.mailboxes_of(user) {
        if e.is_tombstone() || e.is_sieve() || e.name.is_deleted(&deleted) {
            continue;
        }
        let (snap, _name_lock) = spool
            .read_mailbox(e, &LockOptions::default())
            .unwrap_or_else(|err| panic!("{}: {err}", e.name));
        let h = &snap.index.header;
        let messages = snap
            .index
            .records
            .iter()
            .filter(|r| !r.is_expunged())
            .map(|r| {
                let mut flags = r.flag_names(&snap.header.user_flags);
                flags.sort();
                (
                    r.uid,
                    flags,
                    r.internaldate_ns.div_euclid(1_000_000_000),
                    r.size,
                    r.guid.to_hex(),
                )
            })
            .collect();
        mailboxes.insert(
            relative(&e.name),
            MailboxFacts {
                uidvalidity: h.uidvalidity,
                uidnext: h.last_uid + 1,
                highestmodseq: h.highestmodseq,
                messages,
            },
        );
    }
    let files = spool.user_files(user);
    let subs = read_db_if_present(&files.sub).unwrap().unwrap_or_default();
    let mut subscriptions: Vec<String> = read_subscriptions(&subs, user)
        .iter()
        .map(relative)
        .collect();
    subscriptions.sort();
    UserFacts {
        mailboxes,
        subscriptions,
    }
}

fn users_of(server: &CyrusServer) -> Vec<&'static str> {
    if server.options().unixhierarchysep {
        vec!["alice", "bob", "john.doe"]
    } else {
        vec!["alice", "bob"]
    }
}

fn check_live(options: CyrusOptions) {
    let server = CyrusServer::start(options);
    populate(&server);
    for user in users_of(&server) {
        let imap = imap_facts(&server, user);
        let ours = mailpack_facts(&server.config_path(), user);
        assert!(!imap.mailboxes.is_empty());
        assert_eq!(
            ours, imap,
            "user {user}: mailpack's view differs from IMAP's"
        );
    }
    // bob's seen state for alice's shared folder.
    let spool = Spool::open(&server.config_path()).unwrap();
    let shared = spool
        .mailboxes_of("alice")
        .find(|e| e.name.parts.last().map(String::as_str) == Some("Shared"))
        .unwrap();
    let seen = read_seen(
        &read_db_if_present(&spool.user_files("bob").seen)
            .unwrap()
            .expect("bob has a seen db"),
    );
    let entry = seen
        .iter()
        .find(|s| Some(&s.uniqueid) == shared.uniqueid.as_ref())
        .expect("seen entry for alice's Shared");
    assert_eq!(entry.seen_uids, "1");
    // Deleted and renamed mailboxes are in the list the way Cyrus keeps them.
    let names: Vec<String> = spool
        .mailboxes_of("alice")
        .map(|e| e.name.internal())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("DELETED.user.alice.ToDelete.")),
        "{names:?}"
    );
    assert!(
        spool
            .mailboxes_of("alice")
            .any(|e| e.is_tombstone() && e.name.internal() == "user.alice.Scratch"),
        "{names:?}"
    );
    assert!(
        spool.mailboxes_of("alice").any(|e| e.is_sieve()),
        "{names:?}"
    );

    // Quota, METADATA, special-use and sieve, each against what the server says.
    let files = spool.user_files("alice");
    let quota = mailpack::spool::user::parse_quota(&std::fs::read(&files.quota).unwrap()).unwrap();
    let storage = quota.resources.iter().find(|r| r.0 == "STORAGE").unwrap();
    let mut imap = server.imap("alice");
    let reply = imap.raw("GETQUOTAROOT INBOX");
    let line = reply
        .iter()
        .find(|l| l.starts_with("QUOTA "))
        .unwrap_or_else(|| panic!("{reply:?}"));
    let nums: Vec<u64> = line
        .rsplit('(')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        (storage.1 / 1024, storage.2),
        (nums[0], Some(nums[1] as i64)),
        "{line}"
    );
    let annotations = spool.user_annotations("alice", &spool.annotations().unwrap());
    let uid_of = |rel: &str| {
        spool
            .mailboxes_of("alice")
            .find(|e| !e.is_tombstone() && e.name.relative('/') == rel)
            .unwrap()
            .uniqueid
            .clone()
            .unwrap()
    };
    let value = |mailbox: &str, entry: &str, shared: bool| {
        annotations
            .iter()
            .find(|a| {
                a.mailbox == uid_of(mailbox) && a.entry == entry && a.userid.is_empty() == shared
            })
            .map(|a| String::from_utf8(a.value.clone()).unwrap())
    };
    let sep = server.separator();
    assert_eq!(
        value("Archive", "/comment", false),
        imap.get_metadata("Archive", "/private/comment")
    );
    assert_eq!(
        value("INBOX", "/comment", true),
        imap.get_metadata("INBOX", "/shared/comment")
    );
    assert_eq!(
        value("Archive", "/comment", false).as_deref(),
        Some("kept for the auditors")
    );
    let listed = imap.raw("LIST \"\" \"*\" RETURN (SPECIAL-USE)");
    let sent_line = listed
        .iter()
        .find(|l| l.ends_with("Sent") || l.ends_with("Sent\""))
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert!(sent_line.contains("\\Sent"), "{sent_line}");
    assert_eq!(
        value("Sent", "/specialuse", false).as_deref(),
        Some("\\Sent")
    );
    let _ = sep;
    drop(imap);
    if server.options().sieve {
        let ours = mailpack::spool::user::read_sieve_dir(&files.sieve_dir).unwrap();
        let theirs = server.list_sieve("alice");
        assert_eq!(
            ours.scripts,
            theirs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
        );
        assert_eq!(
            ours.active,
            theirs
                .iter()
                .find(|(_, active)| *active)
                .map(|(n, _)| n.clone())
        );
    }
}

#[test]
fn mailpack_reads_a_uuid_layout_spool_as_imap_sees_it() {
    check_live(CyrusOptions::default());
}

#[test]
fn mailpack_reads_a_legacy_hashed_spool_as_imap_sees_it() {
    let options = CyrusOptions::legacy();
    assert_eq!(options.layout, Layout::Legacy);
    check_live(options);
}

#[test]
fn mailpack_reads_a_spool_with_a_metapartition() {
    check_live(CyrusOptions {
        metapartition: true,
        ..CyrusOptions::default()
    });
}

/// Committed spools (fixtures/spools/<name>) and the IMAP view recorded when they were made.
fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/spools")
        .join(name)
}

/// `MAILPACK_BLESS=1 cargo test --test it spool_view::bless` regenerates the fixture spools from
/// a real Cyrus 3.6; review the diff.
#[test]
fn bless_fixture_spools() {
    if std::env::var_os("MAILPACK_BLESS").is_none() {
        return;
    }
    for (name, options) in [
        ("uuid", CyrusOptions::default()),
        ("legacy", CyrusOptions::legacy()),
    ] {
        let mut server = CyrusServer::start(options);
        populate(&server);
        let mut recorded = BTreeMap::new();
        for user in users_of(&server) {
            recorded.insert(user.to_string(), imap_facts(&server, user));
        }
        server.stop();
        let dst = fixture_dir(name);
        let _ = std::fs::remove_dir_all(&dst);
        copy_spool(server.base_dir(), &dst);
        std::fs::write(
            dst.join("imap-view.json"),
            serde_json::to_string_pretty(&recorded).unwrap(),
        )
        .unwrap();
    }
}

/// Copies what a reader needs (configdirectory, partitions, sieve dir) and writes an imapd.conf
/// with paths relative to itself, so the copy works wherever the repository is.
pub fn copy_spool(base: &Path, dst: &Path) {
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(base)
        .arg(dst)
        .status()
        .unwrap();
    assert!(status.success());
    for junk in [
        "conf/socket",
        "conf/db.backup1",
        "conf/db.backup2",
        "log",
        "run/proc",
        "run/master.pid",
        "conf/log",
        "conf/proc",
    ] {
        let p = dst.join(junk);
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
    }
    // Lock files are Cyrus's runtime state; keep the empty directory.
    let lock = dst.join("run/lock");
    let _ = std::fs::remove_dir_all(&lock);
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(lock.join(".keep"), b"").unwrap();
    let conf = std::fs::read_to_string(dst.join("etc/imapd.conf")).unwrap();
    let base_str = format!("{}/", base.display());
    std::fs::write(dst.join("etc/imapd.conf"), conf.replace(&base_str, "../")).unwrap();
    let status = std::process::Command::new("chown")
        .args(["-R", "root:root"])
        .arg(dst)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn committed_fixture_spools_read_as_recorded() {
    for name in ["uuid", "legacy"] {
        let src = fixture_dir(name);
        let recorded: BTreeMap<String, UserFacts> =
            serde_json::from_str(&std::fs::read_to_string(src.join("imap-view.json")).unwrap())
                .unwrap();
        // Reading takes locks, which may create lock files: work on a copy.
        let work = crate::util::TempDir::new(&format!("spool-{name}"));
        let copy = work.path().join(name);
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        for (user, facts) in recorded {
            assert_eq!(
                mailpack_facts(&copy.join("etc/imapd.conf"), &user),
                facts,
                "fixture {name}, user {user}"
            );
        }
    }
}

/// An upgraded server: users made while `mailbox_legacy_dirs` was on stay by name, users made
/// after it was turned off live by uniqueid, in the same spool.
#[test]
fn mailpack_reads_a_spool_that_mixes_both_layouts() {
    let mut server = CyrusServer::start(CyrusOptions::legacy());
    populate(&server);
    let conf = std::fs::read_to_string(server.config_path()).unwrap();
    assert!(conf.contains("mailbox_legacy_dirs: yes"), "{conf}");
    std::fs::write(
        server.config_path(),
        conf.replace("mailbox_legacy_dirs: yes", "mailbox_legacy_dirs: no"),
    )
    .unwrap();
    server.restart();
    server.create_user("carol");
    server.lmtp_deliver(
        "x@example.org",
        &["carol", "alice"],
        b"Subject: after the upgrade\r\n\r\nhello\r\n",
    );
    let spool = Spool::open(&server.config_path()).unwrap();
    assert!(spool.inbox("alice").unwrap().legacy_dirs);
    assert!(!spool.inbox("carol").unwrap().legacy_dirs);
    assert!(spool
        .mailbox_dir(spool.inbox("carol").unwrap())
        .unwrap()
        .to_str()
        .unwrap()
        .contains("/uuid/"));
    for user in ["alice", "bob", "carol"] {
        assert_eq!(
            mailpack_facts(&server.config_path(), user),
            imap_facts(&server, user),
            "user {user}"
        );
    }
}

/// Shared trees as formats/backup-entries.md names them: each top-level mailbox that belongs to
/// no user with everything below it, and what was deleted from it, on a real server.
#[test]
fn shared_mailboxes_are_grouped_into_trees_by_their_top_level_name() {
    let server = CyrusServer::start(CyrusOptions::default());
    server.create_user("alice");
    let mut a = server.admin();
    for mailbox in [
        "Announcements",
        "Announcements/2024",
        "Announcements/2024/Q1",
        "support",
        "support/Old",
    ] {
        a.create(mailbox);
    }
    // An admin administers shared mailboxes; a user posts to one whose ACL lets them.
    a.ok("SETACL Announcements anyone lrsip");
    // altnamespace: a user sees shared mailboxes under "Shared Folders".
    server.imap("alice").append(
        "Shared Folders/Announcements",
        &[],
        None,
        b"Subject: hello\r\n\r\nall hands\r\n",
    );
    a.ok("SETACL support/Old anyone lrsx");
    a.delete("support/Old");
    let spool = Spool::open(&server.config_path()).unwrap();
    assert_eq!(spool.shared_trees(), ["Announcements", "support"]);
    assert!(!spool
        .users()
        .iter()
        .any(|u| u == "Announcements" || u == "support"));
    let names = |tree: &str| -> Vec<String> {
        spool
            .mailboxes_of_tree(tree)
            .filter(|e| !e.is_tombstone())
            .map(|e| e.name.internal())
            .collect()
    };
    assert_eq!(
        names("Announcements"),
        [
            "Announcements",
            "Announcements.2024",
            "Announcements.2024.Q1"
        ]
    );
    // In list order, which is mailboxes.db's: the deleted prefix may sort first.
    let mut support = names("support");
    support.sort();
    assert_eq!(support.len(), 2, "{support:?}");
    assert!(
        support[0].starts_with("DELETED.support.Old."),
        "the delayed-deleted mailbox stays with its tree: {support:?}"
    );
    assert_eq!(support[1], "support");
    // Every shared mailbox is in exactly one tree, and none is a user's.
    let in_trees: usize = spool
        .shared_trees()
        .iter()
        .map(|t| spool.mailboxes_of_tree(t).count())
        .sum();
    assert_eq!(in_trees, spool.shared_mailboxes().count());
    assert!(spool
        .mailboxes_of("alice")
        .all(|e| e.name.shared_tree("DELETED").is_none()));
}
