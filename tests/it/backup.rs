//! `mailpack backup` against a real Cyrus 3.6: the archive's latest state equals the spool, a
//! second run with no change reads no file, changes (new mail, flags, rename, delete) are picked
//! up, every committed state stays consistent while a writer works on the server, and a killed
//! backup loses nothing and the next run completes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use mailpack::backup::UserReport;
use mailpack::commands::backup::{backup, BackupOptions, SpoolAccess, UserOutcome};
use mailpack::entries::{folder_entry, imap_entry};
use mailpack::spool::{LockOptions, MetaFile, Spool};
use mailpack::store::{Archive, ArchivePaths, WriterOptions};

use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::spool_view::populate;
use crate::util::TempDir;

pub fn run_backup(config: &Path, dir: &Path, users: &[&str]) -> BTreeMap<String, UserReport> {
    let options = BackupOptions {
        spool: SpoolAccess::Local {
            config: config.to_path_buf(),
        },
        archive_dir: dir.to_path_buf(),
        users: users.iter().map(|s| s.to_string()).collect(),
        shared: Vec::new(),
        jobs: 2,
        locks: LockOptions::default(),
        writer: WriterOptions::default(),
        compact: None,
        allow_mass_delete: false,
        push: None,
        progress: None,
    };
    let mut reports = BTreeMap::new();
    // The server's own archive (its annotations) is not a user's.
    backup(&options, &mut |outcome, _, _| match outcome {
        UserOutcome::Done(r, _, _) if r.server => {}
        UserOutcome::Done(r, _, _) => drop(reports.insert(r.user.clone(), r.clone())),
        UserOutcome::Failed { user, error } => panic!("{user}: {error}"),
    })
    .unwrap();
    reports
}

fn read_all(archive: &Archive, name: &str) -> Option<Vec<u8>> {
    let (_, e) = archive.latest(name).filter(|(_, e)| !e.is_tombstone())?;
    let mut out = Vec::new();
    archive
        .read_entry(e)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    Some(out)
}

/// The archive's latest state equals the spool as it is now: names, metadata bytes, messages.
fn assert_archive_equals_spool(config: &Path, dir: &Path, user: &str) {
    let spool = Spool::open(config).unwrap();
    let archive =
        Archive::open(&ArchivePaths::for_user(dir, user).unwrap(), &mut Vec::new()).unwrap();
    let mut live_names = Vec::new();
    for e in spool.mailboxes_of(user).filter(|e| !e.is_tombstone()) {
        let uid = e.uniqueid.as_deref().unwrap();
        let link = imap_entry(&e.name);
        live_names.push(link.clone());
        let (_, entry) = archive
            .latest(&link)
            .unwrap_or_else(|| panic!("{link} missing"));
        assert_eq!(entry.target, format!("folders/{uid}"), "{link}");
        for f in MetaFile::ALL {
            let on_disk = std::fs::read(spool.meta_path(e, f).unwrap()).ok();
            assert_eq!(
                read_all(&archive, &folder_entry(uid, f.file_name())),
                on_disk,
                "{} {}",
                e.name,
                f.file_name()
            );
        }
        let index =
            mailpack::spool::index::read(&spool.meta_path(e, MetaFile::Index).unwrap()).unwrap();
        for r in index.records.iter().filter(|r| !r.is_unlinked()) {
            assert!(
                archive.has_file(&r.guid),
                "{} uid {} ({}) not in the archive",
                e.name,
                r.uid,
                r.guid
            );
            let data = read_all(&archive, &format!("files/{}", r.guid)).unwrap();
            assert_eq!(mailpack::Guid::of(&data), r.guid);
        }
    }
    // No live name in the archive that the spool does not have.
    for run in archive.runs() {
        for e in archive
            .entries_of(run)
            .iter()
            .filter(|e| e.name.starts_with("imap/"))
        {
            let (_, latest) = archive.latest(&e.name).unwrap();
            assert_eq!(
                !latest.is_tombstone(),
                live_names.contains(&e.name),
                "{}",
                e.name
            );
        }
    }
    let files = spool.user_files(user);
    assert_eq!(
        read_all(&archive, "meta/sub"),
        std::fs::read(&files.sub).ok(),
        "{user} subscriptions"
    );
    assert_eq!(
        read_all(&archive, "meta/seen"),
        std::fs::read(&files.seen).ok(),
        "{user} seen"
    );
    assert_eq!(
        read_all(&archive, "meta/quota"),
        std::fs::read(&files.quota).ok(),
        "{user} quota"
    );
}

#[test]
fn a_backup_captures_the_spool_and_a_second_run_reads_nothing() {
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    let dir = TempDir::new("backup");
    let first = run_backup(&server.config_path(), dir.path(), &[]);
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        ["alice", "bob", "john.doe"]
    );
    // Delivered once to alice and bob together: stored once in each archive, and COPY inside
    // alice's account does not store it twice.
    assert!(
        first["alice"].messages_added > 0 && first["alice"].problems.is_empty(),
        "{:?}",
        first["alice"]
    );
    for user in ["alice", "bob", "john.doe"] {
        assert_archive_equals_spool(&server.config_path(), dir.path(), user);
    }
    let alice = Archive::open(
        &ArchivePaths::for_user(dir.path(), "alice").unwrap(),
        &mut Vec::new(),
    )
    .unwrap();
    let messages = alice
        .state_at(None)
        .iter()
        .filter(|(_, e)| e.name.starts_with("files/"))
        .count() as u64;
    assert_eq!(
        messages, first["alice"].messages_added,
        "each message file stored once"
    );
    assert!(alice.latest("meta/sieve/defaultbc").is_some());

    let second = run_backup(&server.config_path(), dir.path(), &[]);
    for (user, r) in &second {
        assert_eq!(
            (
                r.message_files_read,
                r.metadata_files_read,
                r.bytes_read,
                r.messages_added,
                r.changed
            ),
            (0, 0, 0, 0, 0),
            "{user}: {r:?}"
        );
        let archive = Archive::open(
            &ArchivePaths::for_user(dir.path(), user).unwrap(),
            &mut Vec::new(),
        )
        .unwrap();
        let last = archive.runs().last().unwrap();
        assert_eq!(
            archive.entries_of(last).len(),
            0,
            "{user}: the no-change run wrote more than its commit marker"
        );
        // Committed through the group commit (formats/archive.md 7.1): reported only once
        // synced, with its index block written after, so the index is current.
        assert_eq!(Some(last.run), r.run, "{user}");
        let paths = ArchivePaths::for_user(dir.path(), user).unwrap();
        let frames = mailpack::store::sidecar::read_frames(&paths.index)
            .unwrap()
            .unwrap_or_else(|| panic!("{user}: the index is not current"));
        assert_eq!(frames.runs.last().map(|f| f.run), r.run, "{user}");
    }
}

#[test]
fn changes_are_picked_up_and_only_new_messages_are_fetched() {
    let server = CyrusServer::start(CyrusOptions::legacy());
    populate(&server);
    let dir = TempDir::new("backup-changes");
    run_backup(&server.config_path(), dir.path(), &["alice"]);
    let sep = server.separator();
    let mut a = server.imap("alice");
    a.select("INBOX");
    a.uid_store("7", "+FLAGS", &["\\Flagged"]);
    a.uid_copy("7:8", "Archive");
    a.rename("Old Stuff", &format!("Archive{sep}Older"));
    a.delete("Shared");
    drop(a);
    server.lmtp_deliver(
        "x@example.org",
        &["alice"],
        b"Subject: new\r\n\r\nnew mail\r\n",
    );
    let report = &run_backup(&server.config_path(), dir.path(), &["alice"])["alice"];
    // One new message; the copies already had their GUIDs in the archive.
    assert_eq!(report.messages_added, 1, "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
    assert_archive_equals_spool(&server.config_path(), dir.path(), "alice");
    let archive = Archive::open(
        &ArchivePaths::for_user(dir.path(), "alice").unwrap(),
        &mut Vec::new(),
    )
    .unwrap();
    let gone = archive.latest("imap/user/alice/Old Stuff").unwrap().1;
    assert!(gone.is_tombstone());
    assert!(archive
        .state_at(None)
        .iter()
        .any(|(_, e)| e.name.starts_with("imap/DELETED/user/alice/Shared/")));
}

/// Every stored version of every cyrus.index parses with valid CRCs and all its retained
/// messages are in the archive (as of that run).
fn assert_every_committed_state_consistent(dir: &Path, user: &str) {
    let archive =
        Archive::open(&ArchivePaths::for_user(dir, user).unwrap(), &mut Vec::new()).unwrap();
    let mut files: std::collections::HashSet<String> = Default::default();
    for run in archive.runs() {
        for e in archive.entries_of(run) {
            if e.name.starts_with("files/") {
                files.insert(e.name.clone());
            }
        }
        for e in archive
            .entries_of(run)
            .iter()
            .filter(|e| e.name.ends_with("/cyrus.index"))
        {
            let mut bytes = Vec::new();
            archive
                .read_entry(e)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            let index = mailpack::spool::index::parse(&bytes)
                .unwrap_or_else(|err| panic!("run {} {}: {err}", run.run, e.name));
            for r in index.records.iter().filter(|r| !r.is_unlinked()) {
                assert!(
                    files.contains(&format!("files/{}", r.guid)),
                    "run {} {}: uid {} missing",
                    run.run,
                    e.name,
                    r.uid
                );
            }
        }
    }
}

#[test]
fn every_committed_state_is_consistent_while_the_server_is_busy() {
    let server = CyrusServer::start(CyrusOptions::default());
    for u in ["alice", "bob"] {
        server.create_user(u);
    }
    let dir = TempDir::new("backup-load");
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut runs = 0;
    std::thread::scope(|scope| {
        let (server, done) = (&server, &done);
        scope.spawn(move || {
            // A bounded workload that keeps delivering, flagging, expunging and renaming.
            let sep = server.separator();
            let mut imap = server.imap("alice");
            imap.create("Work");
            let mut name = "Work".to_string();
            for i in 0..300 {
                server.lmtp_deliver(
                    "x@example.org",
                    &["alice", "bob"],
                    format!("Subject: load {i}\r\n\r\n{}\r\n", "x".repeat(i % 97)).as_bytes(),
                );
                if i % 5 == 0 {
                    imap.select("INBOX");
                    imap.uid_store("1:*", "+FLAGS", &["\\Seen"]);
                    imap.uid_copy(&format!("{}", i / 5 + 1), &name);
                }
                if i % 11 == 0 {
                    imap.select("INBOX");
                    imap.uid_store(&format!("{}", i / 2 + 1), "+FLAGS", &["\\Deleted"]);
                    imap.expunge();
                }
                if i % 37 == 0 {
                    let next = format!("Work{sep}{i}");
                    imap.unselect();
                    imap.rename(&name, &next);
                    name = next;
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // Back up in a loop for as long as the writer works (bounded by its 300 steps).
        while !done.load(std::sync::atomic::Ordering::SeqCst) && runs < 1000 {
            run_backup(&server.config_path(), dir.path(), &["alice", "bob"]);
            runs += 1;
        }
    });
    assert!(runs >= 3, "only {runs} backups ran during the workload");
    for user in ["alice", "bob"] {
        assert_every_committed_state_consistent(dir.path(), user);
    }
    // With the server quiet again, one more run makes the archive equal to the spool.
    run_backup(&server.config_path(), dir.path(), &["alice", "bob"]);
    for user in ["alice", "bob"] {
        assert_archive_equals_spool(&server.config_path(), dir.path(), user);
    }
}

#[test]
fn a_killed_backup_loses_nothing_and_the_next_run_completes() {
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    let big: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            format!(
                "Subject: big {i}\r\n\r\n{}\r\n",
                "attachment line\r\n".repeat(4000 + i)
            )
            .into_bytes()
        })
        .collect();
    server.deliver_many("x@example.org", &["alice"], &big);
    let dir = TempDir::new("backup-kill");
    let mut rng = crate::util::Rng::new(99);
    for round in 0..8 {
        let mut child = crate::util::bin()
            .args([
                "backup",
                "--config",
                server.config_path().to_str().unwrap(),
                "--archive-dir",
                dir.path().to_str().unwrap(),
                "--jobs",
                "1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.below(150)));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever was committed opens and is consistent.
        for paths in mailpack::store::list_archives(dir.path()).unwrap() {
            let user = paths.user.clone().unwrap();
            // A kill between creating the archive and its first member leaves an empty file:
            // nothing was committed, readers report it and the next backup takes it as new.
            let empty = std::fs::metadata(&paths.archive).unwrap().len() == 0;
            if !empty {
                assert_every_committed_state_consistent(dir.path(), &user);
            }
            // Readers never repair: an interrupted run's tail, a first run that never
            // committed, or an index the killed run did not bring up to date are reported as
            // such (the next backup mends them); nothing else may be.
            let problems: Vec<_> = match mailpack::store::verify(&paths) {
                Ok(report) => report
                    .problems
                    .into_iter()
                    .filter(|p| {
                        !(p.detail.contains("belong to no committed run")
                            || p.detail.contains("holds no committed run")
                            || p.detail.contains("the index"))
                    })
                    .collect(),
                Err(e) if empty => {
                    assert!(e.to_string().contains("is empty"), "{e}");
                    Vec::new()
                }
                Err(e) => panic!("round {round} {user}: {e}"),
            };
            assert!(problems.is_empty(), "round {round} {user}: {problems:?}");
        }
    }
    run_backup(&server.config_path(), dir.path(), &[]);
    let fresh = TempDir::new("backup-fresh");
    run_backup(&server.config_path(), fresh.path(), &[]);
    for user in ["alice", "bob", "john.doe"] {
        assert_archive_equals_spool(&server.config_path(), dir.path(), user);
        let state = |d: &Path| -> Vec<(String, String, String)> {
            let a =
                Archive::open(&ArchivePaths::for_user(d, user).unwrap(), &mut Vec::new()).unwrap();
            a.state_at(None)
                .into_iter()
                .map(|(_, e)| (e.name.clone(), e.target.clone(), e.sha1.to_hex()))
                .collect()
        };
        assert_eq!(
            state(dir.path()),
            state(fresh.path()),
            "{user}: interrupted runs left a different result"
        );
    }
}

#[test]
fn a_corrupt_or_vanished_message_file_skips_only_its_mailbox() {
    let server = CyrusServer::start(CyrusOptions::default());
    for u in ["alice", "bob"] {
        server.create_user(u);
    }
    let mut imap = server.imap("alice");
    imap.create("Other");
    imap.append("Other", &[], None, b"Subject: fine\r\n\r\nfine\r\n");
    drop(imap);
    server.lmtp_deliver(
        "x@example.org",
        &["alice"],
        b"Subject: one\r\n\r\nfirst\r\n",
    );
    server.lmtp_deliver(
        "x@example.org",
        &["alice"],
        b"Subject: two\r\n\r\nsecond\r\n",
    );
    server.lmtp_deliver("x@example.org", &["bob"], b"Subject: bob\r\n\r\nbob's\r\n");
    let spool = Spool::open(&server.config_path()).unwrap();
    let inbox = spool.inbox("alice").unwrap();
    let dir_of_inbox = spool.mailbox_dir(inbox).unwrap();
    // Same size, other bytes: the SHA-1 no longer matches the GUID in the index.
    let one = dir_of_inbox.join("1.");
    let mut bytes = std::fs::read(&one).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x20;
    std::fs::write(&one, &bytes).unwrap();

    let dir = TempDir::new("backup-corrupt");
    let reports = run_backup(&server.config_path(), dir.path(), &[]);
    let alice = &reports["alice"];
    assert!(
        alice
            .problems
            .iter()
            .any(|p| p.contains("uid 1") && p.contains("expected")),
        "{alice:?}"
    );
    assert_eq!(alice.skipped, 1, "{alice:?}");
    assert!(reports["bob"].problems.is_empty());
    let archive = Archive::open(
        &ArchivePaths::for_user(dir.path(), "alice").unwrap(),
        &mut Vec::new(),
    )
    .unwrap();
    let uid = inbox.uniqueid.as_deref().unwrap();
    assert!(
        archive.latest(&folder_entry(uid, "cyrus.index")).is_none(),
        "an index whose message is wrong was stored"
    );
    let other = spool
        .mailboxes_of("alice")
        .find(|e| e.name.parts.last().map(String::as_str) == Some("Other"))
        .unwrap();
    assert!(
        archive
            .latest(&folder_entry(
                other.uniqueid.as_deref().unwrap(),
                "cyrus.index"
            ))
            .is_some(),
        "the sound mailbox was skipped too"
    );
    assert!(archive
        .state_at(None)
        .iter()
        .all(|(_, e)| !e.name.starts_with("files/")
            || mailpack::Guid::of(&read_all(&archive, &e.name).unwrap()).to_hex() == e.name[6..]));

    // A live record whose file is gone: read again a bounded number of times, then skipped
    // and reported as missing (issue 13).
    std::fs::write(&one, &bytes[..0]).unwrap();
    std::fs::remove_file(&one).unwrap();
    let reports = run_backup(&server.config_path(), dir.path(), &["alice"]);
    assert!(
        reports["alice"]
            .problems
            .iter()
            .any(|p| p.contains("uid 1") && p.contains("is missing")),
        "{:?}",
        reports["alice"]
    );
}

#[test]
fn a_user_removed_from_the_server_is_recorded_as_gone() {
    let server = CyrusServer::start(CyrusOptions::default().with("delete_mode", "immediate"));
    for u in ["alice", "carol"] {
        server.create_user(u);
    }
    server.lmtp_deliver(
        "x@example.org",
        &["alice", "carol"],
        b"Subject: hi\r\n\r\nhello\r\n",
    );
    let dir = TempDir::new("backup-gone");
    run_backup(&server.config_path(), dir.path(), &[]);
    let mut admin = server.admin();
    admin.ok(&format!(
        "SETACL {} admin x",
        crate::cyrus::mailbox_arg(&server.user_mailbox("carol"))
    ));
    admin.delete(&server.user_mailbox("carol"));
    drop(admin);
    let reports = run_backup(&server.config_path(), dir.path(), &[]);
    assert!(reports["carol"].gone, "{:?}", reports["carol"]);
    let carol = Archive::open(
        &ArchivePaths::for_user(dir.path(), "carol").unwrap(),
        &mut Vec::new(),
    )
    .unwrap();
    assert!(
        carol
            .state_at(None)
            .iter()
            .all(|(_, e)| !e.name.starts_with("imap/")),
        "names still live"
    );
    // History stays: as of the first run, carol's INBOX and message are there.
    assert!(carol
        .state_at(Some(1))
        .iter()
        .any(|(_, e)| e.name == "imap/user/carol"));
    // Reported once: a later run has nothing more to record for carol.
    assert!(!run_backup(&server.config_path(), dir.path(), &[]).contains_key("carol"));
}

#[test]
fn a_busy_archive_fails_only_its_own_user() {
    let server = CyrusServer::start(CyrusOptions::default());
    for u in ["alice", "bob"] {
        server.create_user(u);
    }
    let dir = TempDir::new("backup-busy");
    let bob = ArchivePaths::for_user(dir.path(), "bob").unwrap();
    let _held = mailpack::store::WriterLock::acquire(
        &bob.lock,
        mailpack::store::WriterWait::FailIfBusy,
        &mailpack::io::Faults::none(),
    )
    .unwrap();
    let options = BackupOptions {
        spool: SpoolAccess::Local {
            config: server.config_path(),
        },
        archive_dir: dir.path().to_path_buf(),
        users: vec![],
        shared: vec![],
        jobs: 2,
        locks: LockOptions::default(),
        writer: WriterOptions::default(),
        compact: None,
        allow_mass_delete: false,
        push: None,
        progress: None,
    };
    let mut outcomes = Vec::new();
    let summary = backup(&options, &mut |o, _, _| {
        outcomes.push(match o {
            // The server's own archive (its annotations) is not a user's.
            UserOutcome::Done(r, _, _) if r.server => return,
            UserOutcome::Done(r, _, _) => (r.user.clone(), None),
            UserOutcome::Failed { user, error } => (user.clone(), Some(error.clone())),
        })
    })
    .unwrap();
    outcomes.sort();
    assert_eq!(summary.failed, 1);
    assert_eq!(outcomes[0], ("alice".to_string(), None));
    assert_eq!(outcomes[1].0, "bob");
    assert!(
        outcomes[1]
            .1
            .as_ref()
            .unwrap()
            .contains("locked by another writer"),
        "{outcomes:?}"
    );
}

#[test]
fn compaction_after_expunges_and_a_deleted_folder_keeps_what_the_spool_holds() {
    let server = CyrusServer::start(
        CyrusOptions::default()
            .with("expunge_mode", "immediate")
            .with("delete_mode", "immediate"),
    );
    populate(&server);
    let dir = TempDir::new("backup-compact");
    run_backup(&server.config_path(), dir.path(), &["alice"]);
    let mut a = server.imap("alice");
    a.select("INBOX");
    a.uid_store("1:3", "+FLAGS", &["\\Deleted"]);
    assert!(!a.expunge().is_empty());
    a.unselect();
    a.delete("Shared");
    drop(a);
    run_backup(&server.config_path(), dir.path(), &["alice"]);

    let paths = ArchivePaths::for_user(dir.path(), "alice").unwrap();
    let plan = mailpack::compact::PlanOptions {
        // A day on, with nothing retained beyond the latest state: the first run's metadata,
        // the expunged messages and the deleted folder are all dead.
        now: mailpack::commands::now() + 86_400,
        keep_days: 0,
        keep_deleted_days: 0,
        force: true,
        ..Default::default()
    };
    let outcome = mailpack::compact::compact(
        &paths,
        &mailpack::compact::CompactOptions {
            plan,
            writer: WriterOptions::default(),
        },
        &mut Vec::new(),
    )
    .unwrap();
    assert!(outcome.compacted, "{:?}", outcome.plan);
    assert!(
        outcome.plan.dropped.expunged_beyond_retention.0 > 0,
        "{:?}",
        outcome.plan.dropped
    );
    assert!(
        outcome.plan.dropped.deleted_mailboxes.0 > 0,
        "{:?}",
        outcome.plan.dropped
    );
    assert!(outcome.bytes_after < outcome.bytes_before);
    assert_archive_equals_spool(&server.config_path(), dir.path(), "alice");
    assert_every_committed_state_consistent(dir.path(), "alice");

    // `backup --compact` runs the policy after the run; with the defaults nothing is due yet.
    let out = crate::util::run(&[
        "backup",
        "--config",
        server.config_path().to_str().unwrap(),
        "--archive-dir",
        dir.path().to_str().unwrap(),
        "--user",
        "alice",
        "--compact",
        "--json",
    ]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    let lines = crate::util::stdout(&out);
    let compaction = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "compaction")
        .unwrap_or_else(|| panic!("no compaction line in {lines}"));
    assert_eq!(compaction["data"]["user"], "alice");
    assert_eq!(compaction["data"]["compaction"]["compacted"], false);
    assert_eq!(
        compaction["data"]["compaction"]["plan"]["threshold_percent"], 80,
        "weeks count from the compaction just made: {compaction}"
    );
}
