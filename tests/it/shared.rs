//! Shared mailboxes (issue 15, formats/backup-entries.md "Shared mailboxes"): each shared tree
//! of a real Cyrus server is backed up into its own archive under `shared/`, locally and through
//! the agent alike, with its messages, its mailboxes.db records (ACL included) and its
//! delayed-deleted mailboxes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mailpack::spool::{Owner, Spool};
use mailpack::store::{Archive, ArchivePaths};

use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::util::{run, stderr, stdout, TempDir};

/// A server with two users and two shared trees: `Announcements` (with mailboxes below it,
/// messages, an ACL open to everyone) and `support` (one of whose mailboxes was deleted with
/// delete_mode: delayed).
fn server_with_shared_trees() -> CyrusServer {
    let server = CyrusServer::start(CyrusOptions::default());
    for user in ["alice", "bob"] {
        server.create_user(user);
    }
    let mut admin = server.admin();
    for mailbox in [
        "Announcements",
        "Announcements/2024",
        "support",
        "support/Old",
    ] {
        admin.create(mailbox);
    }
    admin.ok("SETACL Announcements anyone lrsip");
    admin.ok("SETACL Announcements/2024 anyone lrsip");
    admin.ok("SETACL Announcements/2024 bob lrswipkxtecda");
    let mut alice = server.imap("alice");
    for (mailbox, n) in [("Announcements", 3), ("Announcements/2024", 2)] {
        for i in 0..n {
            alice.append(
                &format!("Shared Folders/{mailbox}"),
                &[],
                None,
                format!("Subject: {mailbox} {i}\r\n\r\nnews {i}\r\n").as_bytes(),
            );
        }
    }
    admin.ok("SETACL support/Old anyone lrsx");
    admin.delete("support/Old");
    server
}

fn backup(args: &[&str]) -> std::process::Output {
    let o = run(&[&["backup", "--json"][..], args].concat());
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    o
}

/// A backup of everything on `server` into a new archive directory: (its temp dir, the dir).
fn backed_up(server: &CyrusServer, tag: &str) -> (TempDir, std::path::PathBuf) {
    let work = TempDir::new(tag);
    let dir = work.path().join("archives");
    backup(&[
        "--config",
        server.config_path().to_str().unwrap(),
        "--archive-dir",
        dir.to_str().unwrap(),
    ]);
    (work, dir)
}

/// name -> (kind, target, sha1) of every live entry of an archive.
fn state(paths: &ArchivePaths) -> BTreeMap<String, (String, String)> {
    let archive = Archive::open(paths, &mut Vec::new()).unwrap();
    archive
        .state_at(None)
        .into_iter()
        .map(|(_, e)| (e.name.clone(), (e.target.clone(), e.sha1.to_string())))
        .collect()
}

fn entries_named(paths: &ArchivePaths, prefix: &str) -> Vec<String> {
    state(paths)
        .into_keys()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn every_shared_tree_is_backed_up_into_its_own_archive_locally_and_through_the_agent() {
    let server = server_with_shared_trees();
    let config = server.config_path();
    let work = TempDir::new("shared-backup");
    let local = work.path().join("local");
    let remote = work.path().join("remote");
    let agent = format!(
        "{} agent --config {}",
        env!("CARGO_BIN_EXE_mailpack"),
        config.display()
    );
    let o = backup(&[
        "--config",
        config.to_str().unwrap(),
        "--archive-dir",
        local.to_str().unwrap(),
    ]);
    // One JSON line per owner: the two users and the two trees.
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["type"] == "user")
        .collect();
    let owners: BTreeSet<(String, bool)> = lines
        .iter()
        .map(|v| {
            (
                v["data"]["user"].as_str().unwrap().to_string(),
                v["data"]["shared"].as_bool().unwrap(),
            )
        })
        .collect();
    // And the server's own archive (its server-wide annotations).
    assert_eq!(
        owners,
        [
            ("%server".to_string(), false),
            ("Announcements".to_string(), true),
            ("alice".to_string(), false),
            ("bob".to_string(), false),
            ("support".to_string(), true),
        ]
        .into()
    );
    backup(&[
        "--remote",
        &agent,
        "--archive-dir",
        remote.to_str().unwrap(),
    ]);

    let spool = Spool::open(&config).unwrap();
    for dir in [&local, &remote] {
        // A tree's archive lives under shared/, never beside the users'.
        assert!(!dir.join("Announcements.tar.gz").exists());
        assert!(!dir.join("support.tar.gz").exists());
        for tree in ["Announcements", "support"] {
            let paths = ArchivePaths::for_owner(dir, &Owner::Shared(tree.into())).unwrap();
            assert_eq!(
                paths.archive,
                dir.join("shared").join(format!("{tree}.tar.gz"))
            );
            let o = run(&["verify", paths.archive.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

            // Every message every mailbox of the tree lists is in the archive, checked.
            let files: BTreeSet<String> = entries_named(&paths, "files/").into_iter().collect();
            let mut messages = 0;
            for e in spool.mailboxes_of_tree(tree).filter(|e| !e.is_tombstone()) {
                let index = mailpack::spool::index::read(
                    &spool
                        .meta_path(e, mailpack::spool::MetaFile::Index)
                        .unwrap(),
                )
                .unwrap();
                for r in &index.records {
                    assert!(
                        files.contains(&format!("files/{}", r.guid)),
                        "{tree}: {} uid {} is not in the archive",
                        e.name,
                        r.uid
                    );
                    messages += 1;
                }
            }
            assert_eq!(messages, if tree == "Announcements" { 5 } else { 0 });
        }
        let announcements =
            ArchivePaths::for_owner(dir, &Owner::Shared("Announcements".into())).unwrap();
        assert_eq!(
            entries_named(&announcements, "imap/"),
            ["imap/Announcements", "imap/Announcements/2024"]
        );
        assert!(entries_named(&announcements, "meta/").is_empty());
        // The mailboxes.db records carry the ACL, so a restore can put it back.
        let archive = Archive::open(&announcements, &mut Vec::new()).unwrap();
        let mut acls = String::new();
        for (_, e) in archive.state_at(None) {
            if e.name.ends_with("/mailboxes.db") {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut archive.read_entry(e).unwrap(), &mut bytes)
                    .unwrap();
                acls.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        assert!(acls.contains("anyone") && acls.contains("bob"), "{acls}");
        let support = ArchivePaths::for_owner(dir, &Owner::Shared("support".into())).unwrap();
        let links = entries_named(&support, "imap/");
        assert_eq!(links.len(), 2, "{links:?}");
        assert!(
            links.contains(&"imap/support".to_string())
                && links[0].starts_with("imap/DELETED/support/Old/"),
            "{links:?}"
        );
        // Users' archives do not hold the shared mailboxes.
        let alice = ArchivePaths::for_user(dir, "alice").unwrap();
        assert!(entries_named(&alice, "imap/")
            .iter()
            .all(|n| n.starts_with("imap/user/alice")));
    }
    // The same archives either way, entry for entry.
    for tree in ["Announcements", "support"] {
        let owner = Owner::Shared(tree.into());
        assert_eq!(
            state(&ArchivePaths::for_owner(&local, &owner).unwrap()),
            state(&ArchivePaths::for_owner(&remote, &owner).unwrap()),
            "{tree}"
        );
    }

    // `--shared NAME` backs up that tree alone; `ls --shared` reads it.
    let one = work.path().join("one");
    backup(&[
        "--config",
        config.to_str().unwrap(),
        "--archive-dir",
        one.to_str().unwrap(),
        "--shared",
        "support",
    ]);
    let made: Vec<String> = walk(&one);
    assert_eq!(
        made,
        [
            "shared/support.idx",
            "shared/support.lock",
            "shared/support.status",
            "shared/support.tar.gz"
        ]
    );
    let o = run(&[
        "ls",
        "--archive-dir",
        local.to_str().unwrap(),
        "--shared",
        "Announcements",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("imap/Announcements/2024"),
        "{}",
        stdout(&o)
    );
    // `verify` of the whole directory checks the trees' archives too.
    let o = run(&["verify", "--archive-dir", local.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let verified: BTreeSet<String> = stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["data"]["archive"].as_str().unwrap().to_string()
        })
        .map(|a| a.strip_prefix(local.to_str().unwrap()).unwrap().to_string())
        .collect();
    assert_eq!(
        verified,
        [
            "/alice.tar.gz",
            "/bob.tar.gz",
            "/shared/%server.tar.gz",
            "/shared/Announcements.tar.gz",
            "/shared/support.tar.gz"
        ]
        .map(String::from)
        .into()
    );
    // A second run finds nothing changed in the trees either.
    let o = backup(&[
        "--config",
        config.to_str().unwrap(),
        "--archive-dir",
        local.to_str().unwrap(),
    ]);
    for l in stdout(&o).lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["type"] == "user" {
            assert_eq!(v["data"]["changed"], 0, "{v}");
        }
    }
}

/// Files below `dir`, relative, sorted.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            out.push(
                e.path()
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    out.sort();
    out
}

/// What IMAP shows of a shared mailbox, as the admin sees it: its state, every message, its ACL
/// and its METADATA.
#[derive(Debug, PartialEq, Eq)]
struct SharedFacts {
    uidvalidity: u32,
    uidnext: u32,
    highestmodseq: u64,
    mailboxid: String,
    messages: Vec<crate::cyrus::MessageInfo>,
    acl: Vec<String>,
    metadata: BTreeMap<String, String>,
}

fn shared_facts(server: &CyrusServer, mailboxes: &[&str]) -> BTreeMap<String, SharedFacts> {
    let mut admin = server.admin();
    mailboxes
        .iter()
        .map(|m| {
            let info = admin.examine(m);
            admin.unselect();
            let acl = admin
                .raw(&format!("GETACL {m}"))
                .into_iter()
                .filter(|l| l.starts_with("* ACL"))
                .collect();
            let facts = SharedFacts {
                uidvalidity: info.uidvalidity,
                uidnext: info.uidnext,
                highestmodseq: info.highestmodseq,
                mailboxid: info.mailboxid,
                messages: admin.fetch_all(m),
                acl,
                metadata: admin.get_all_metadata(m),
            };
            (m.to_string(), facts)
        })
        .collect()
}

#[test]
fn a_shared_tree_comes_back_exactly_into_a_fresh_server_and_a_deleted_mailbox_into_the_original() {
    let options = CyrusOptions::default()
        .with("delete_mode", "immediate")
        .with("expunge_mode", "immediate");
    let server = CyrusServer::start(options.clone());
    server.create_user("alice");
    let mut admin = server.admin();
    for mailbox in ["Announcements", "Announcements/2024"] {
        admin.create(mailbox);
        admin.ok(&format!("SETACL {mailbox} anyone lrsipx"));
    }
    admin.ok("SETACL Announcements alice lrswipkxtecda");
    // (No METADATA here: Cyrus 3.6.1's imapd dies on SETMETADATA of a shared mailbox, "assertion
    // failed: imap/mboxlist.c: 1088: user_isnamespacelocked(userid)", so it cannot be set up
    // over IMAP. The rows would travel as a user mailbox's do: annotations.db keyed by uniqueid.)
    let mut alice = server.imap("alice");
    for (mailbox, n) in [("Announcements", 3), ("Announcements/2024", 2)] {
        for i in 0..n {
            alice.append(
                &format!("Shared Folders/{mailbox}"),
                &["\\Flagged"][..(i % 2) as usize],
                Some("01-Jan-2024 10:00:00 +0000"),
                format!("Subject: {mailbox} {i}\r\n\r\nnews {i}\r\n").as_bytes(),
            );
        }
    }
    drop(alice);
    let mailboxes = ["Announcements", "Announcements/2024"];
    let before = shared_facts(&server, &mailboxes);
    assert_eq!(before["Announcements"].messages.len(), 3);
    let (work, dir) = backed_up(&server, "shared-restore");

    // Into a fresh server: the whole tree, exactly.
    let fresh = CyrusServer::start(options);
    let o = run(&[
        "restore",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--shared",
        "Announcements",
        "--to-cyrus",
        "--config",
        fresh.config_path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(shared_facts(&fresh, &mailboxes), before);
    let out = fresh.tool_ok("reconstruct", &["-n", "-G", "Announcements"]);
    assert!(
        out.lines().all(|l| !l.contains(": ")),
        "reconstruct -n -G says:\n{out}"
    );

    // A deleted shared mailbox alone, into the running original.
    let mut admin = server.admin();
    admin.delete("Announcements/2024");
    drop(admin);
    let o = run(&[
        "restore",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--shared",
        "Announcements",
        "--mailbox",
        "Announcements/2024",
        "--to-cyrus",
        "--config",
        server.config_path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(shared_facts(&server, &mailboxes), before);

    // And as files: one Maildir tree per mailbox of the tree.
    let maildir = work.path().join("maildir");
    let o = run(&[
        "restore",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--shared",
        "Announcements",
        "--maildir",
        maildir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let files: Vec<String> = walk(&maildir)
        .into_iter()
        .filter(|f| f.contains("/cur/") || f.starts_with("cur/") || f.contains("/new/"))
        .collect();
    assert_eq!(files.len(), 5, "{files:?}");
}

/// Adds the two shared trees of `server_with_shared_trees` to a populated server, and bob's
/// \Seen on one shared message.
fn add_shared_trees(server: &CyrusServer) {
    let mut admin = server.admin();
    for mailbox in [
        "Announcements",
        "Announcements/2024",
        "support",
        "support/Old",
    ] {
        admin.create(mailbox);
        admin.ok(&format!("SETACL {mailbox} anyone lrsip"));
    }
    // A per-user and a group ACL, and a mailbox deleted with delete_mode: delayed.
    admin.ok("SETACL support bob lrswipkxtecda");
    admin.ok("SETACL support group:staff lrs");
    admin.ok("SETACL support/Old anyone lrsx");
    admin.delete("support/Old");
    let mut alice = server.imap("alice");
    for i in 0..3 {
        alice.append(
            "Shared Folders/Announcements",
            &[],
            Some("02-Jan-2024 09:00:00 +0000"),
            format!("Subject: notice {i}\r\n\r\nnotice {i}\r\n").as_bytes(),
        );
    }
    // Each user's own \Seen of the same shared messages.
    let mut bob = server.imap("bob");
    bob.select("Shared Folders/Announcements");
    bob.ok("UID STORE 2 +FLAGS (\\Seen)");
    alice.select("Shared Folders/Announcements");
    alice.ok("UID STORE 1,3 +FLAGS (\\Seen)");
    // A server-wide annotation, which only the server's own archive holds.
    admin.ok("SETMETADATA \"\" (/shared/comment \"our mail server\")");
}

/// Everything IMAP and ManageSieve show of a whole server: each user's full facts (mailboxes,
/// messages, subscriptions, quota, METADATA, message structure, sieve), each shared mailbox's,
/// what alice and bob have seen of the shared one, and the server's own annotation.
fn server_facts(server: &CyrusServer) -> String {
    let mut out = String::new();
    for user in ["alice", "bob", "john.doe"] {
        out.push_str(&format!(
            "{user}: {:?}\n",
            crate::restore::full_facts(server, user)
        ));
    }
    out.push_str(&format!(
        "{:?}\n",
        shared_facts(server, &["Announcements", "Announcements/2024", "support"])
    ));
    for user in ["alice", "bob"] {
        let mut imap = server.imap(user);
        imap.examine("Shared Folders/Announcements");
        out.push_str(&format!(
            "{user} sees {:?}\n",
            imap.raw("UID FETCH 1:* (FLAGS)")
        ));
    }
    out
}

/// `reconstruct -n -G` (check only, GUIDs verified) finds nothing wrong with any user's or
/// shared mailbox: it lists each one it visits, and a problem is a line with a colon.
fn assert_reconstruct_clean(server: &CyrusServer) {
    for args in [
        &["-n", "-G", "-u", "alice"][..],
        &["-n", "-G", "-u", "bob"],
        &["-n", "-G", "Announcements"],
        &["-n", "-G", "support"],
    ] {
        let out = server.tool_ok("reconstruct", args);
        assert!(
            out.lines().all(|l| !l.contains(": ")),
            "reconstruct {args:?} says:\n{out}"
        );
    }
}

#[test]
fn restore_all_brings_a_whole_server_back_and_finishes_after_a_kill() {
    let options = CyrusOptions::default();
    let server = CyrusServer::start(options.clone());
    crate::spool_view::populate(&server);
    add_shared_trees(&server);
    let want = server_facts(&server);
    let (_work, dir) = backed_up(&server, "restore-all");
    let restore_all = |target: &CyrusServer| {
        let mut c = crate::util::bin();
        c.args([
            "restore",
            "--all",
            "--jobs",
            "2",
            "--json",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--to-cyrus",
            "--config",
            target.config_path().to_str().unwrap(),
        ]);
        c
    };

    // Straight through into a fresh server: one JSON line per owner, the server as it was.
    let fresh = CyrusServer::start(options.clone());
    let o = restore_all(&fresh).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let owners: BTreeSet<(String, bool)> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["data"]["user"].as_str().unwrap().to_string(),
                v["data"]["shared"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(owners.len(), 6, "{owners:?}");
    let bytes: u64 = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v["data"]["bytes_written"].as_u64().unwrap())
        .sum();
    assert!(bytes > 10_000, "{bytes} bytes of messages written");
    assert!(owners.contains(&("support".into(), true)), "{owners:?}");
    assert_eq!(server_facts(&fresh), want);
    assert_reconstruct_clean(&fresh);
    // Run again: everything is there already and identical, nothing is written.
    let o = restore_all(&fresh).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    for l in stdout(&o).lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["data"]["messages_written"], 0, "{v}");
        assert_eq!(v["data"]["bytes_written"], 0, "{v}");
        assert!(v["data"]["mailboxes"].as_array().unwrap().is_empty(), "{v}");
    }
    assert_eq!(server_facts(&fresh), want);

    // Killed part way, then run again: it finishes, nothing twice.
    for delay_ms in [5, 15, 25, 40, 60, 80, 100, 150, 200] {
        let target = CyrusServer::start(options.clone());
        let mut child = restore_all(&target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let o = restore_all(&target).output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "after a kill at {delay_ms} ms: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert_eq!(server_facts(&target), want, "after a kill at {delay_ms} ms");
        assert_reconstruct_clean(&target);
    }
}

/// How admins migrate: a backup of a server with name-based, hashed directories
/// (`mailbox_legacy_dirs`, `hashimapspool`) restored whole into a 3.6 uuid-layout server, and
/// back the other way.
#[test]
fn a_whole_server_moves_between_the_legacy_and_the_uuid_layout() {
    for (from, to) in [
        (CyrusOptions::legacy(), CyrusOptions::default()),
        (CyrusOptions::default(), CyrusOptions::legacy()),
    ] {
        let what = format!("{:?} -> {:?}", from.layout, to.layout);
        let source = CyrusServer::start(from);
        crate::spool_view::populate(&source);
        add_shared_trees(&source);
        let want = server_facts(&source);
        let (_work, dir) = backed_up(&source, "restore-layout");
        let target = CyrusServer::start(to);
        let o = run(&[
            "restore",
            "--all",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--to-cyrus",
            "--config",
            target.config_path().to_str().unwrap(),
        ]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{what}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert_eq!(server_facts(&target), want, "{what}");
        for user in ["alice", "bob"] {
            let out = target.tool_ok("reconstruct", &["-n", "-G", "-u", user]);
            assert!(
                out.lines().all(|l| !l.contains(": ")),
                "{what}: reconstruct -n -G -u {user} says:\n{out}"
            );
        }
    }
}

#[test]
fn restore_all_reports_a_mailbox_that_differs_and_exports_one_tree_per_owner() {
    let options = CyrusOptions::default();
    let server = CyrusServer::start(options.clone());
    crate::spool_view::populate(&server);
    add_shared_trees(&server);
    let (work, dir) = backed_up(&server, "restore-all-differs");
    let all = |extra: &[&str]| {
        run(&[
            &["restore", "--all", "--archive-dir", dir.to_str().unwrap()][..],
            extra,
        ]
        .concat())
    };

    // Into the running original, where one shared mailbox has changed since the backup: it is
    // reported and left as it is; everything else is there already and identical.
    let mut alice = server.imap("alice");
    alice.append(
        "Shared Folders/Announcements",
        &[],
        None,
        b"Subject: after the backup\r\n\r\nnew\r\n",
    );
    drop(alice);
    let changed = shared_facts(&server, &["Announcements"]);
    let o = all(&[
        "--to-cyrus",
        "--config",
        server.config_path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("Announcements: exists on the target; --replace overwrites it"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("0 messages written"), "{}", stdout(&o));
    assert_eq!(shared_facts(&server, &["Announcements"]), changed);

    // A dry run writes nothing; into files, one tree per owner.
    let files = work.path().join("files");
    let o = all(&["--dry-run", "--maildir", files.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(!files.exists());
    let o = all(&["--maildir", files.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let messages = |sub: &str| {
        walk(&files.join(sub))
            .into_iter()
            .filter(|f| f.contains("cur/") || f.contains("new/"))
            .count()
    };
    assert_eq!(messages("shared/Announcements"), 3);
    assert!(messages("alice") > 0 && messages("bob") > 0);
    assert_eq!(messages("shared/support"), 0);
    assert!(files.join("shared/support").is_dir());
}
