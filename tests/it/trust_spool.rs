//! Issue 13, the spool's side: a spool is input like any other. A sparse terabyte, a FIFO, a
//! mailbox without its files, a message file that is gone, an emptied mailboxes.db: each is
//! reported by name, the rest is backed up, nothing blocks, no Cyrus lock stays held, and nothing
//! is tombstoned on the word of a spool that lost its mailboxes. A backup after a repair stores
//! again what the repair lost. Every case runs the real binary, locally and through the agent.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mailpack::archive::{EntryKind, RunSummary};
use mailpack::entries::imap_entry;
use mailpack::spool::mboxlist::MailboxEntry;
use mailpack::spool::{MetaFile, Spool};
use mailpack::store::{Archive, ArchivePaths, StoreWriter, WriterOptions};

use crate::agent::fixture_spool;
use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::util::{bin, TempDir};

/// Far longer than any run here takes on a loaded machine. Not a timing assertion: it only turns
/// a run that blocks forever (the bug) into a failed test instead of a hung suite.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// Runs `cmd` to its end, output into files (so a full pipe cannot block it), failing the test if
/// it never ends.
fn run_guarded(mut cmd: Command, dir: &Path, tag: &str) -> Output {
    let (out, err) = (
        dir.join(format!("{tag}.out")),
        dir.join(format!("{tag}.err")),
    );
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    let mut child = cmd.spawn().expect("run mailpack");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Output {
                status,
                stdout: std::fs::read(&out).unwrap(),
                stderr: std::fs::read(&err).unwrap(),
            };
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{tag}: mailpack never finished (blocked); stderr: {}",
                String::from_utf8_lossy(&std::fs::read(&err).unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn agent_command(config: &Path) -> String {
    format!(
        "{} agent --config {} --lock-timeout 3600",
        env!("CARGO_BIN_EXE_mailpack"),
        config.display()
    )
}

/// The two ways to back up: in process, and through an agent (the same reading code on the
/// other end of the wire). `--lock-timeout` is long: it must not be what ends a blocked read.
#[derive(Clone, Copy, Debug)]
enum Via {
    Local,
    Agent,
}

fn backup(via: Via, config: &Path, archives: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("backup");
    match via {
        Via::Local => c.arg("--config").arg(config),
        Via::Agent => c.arg("--remote").arg(agent_command(config)),
    };
    c.arg("--archive-dir")
        .arg(archives)
        .args(["--jobs", "1", "--lock-timeout", "3600"])
        .args(extra);
    c
}

fn spool_ls(config: &Path) -> Command {
    let mut c = bin();
    c.args(["spool", "ls", "--lock-timeout", "3600", "--config"])
        .arg(config);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether the output names `path` (as given, or resolved: the agent reports message files by
/// their resolved folder).
fn names_path(out: &str, path: &Path) -> bool {
    let real = path
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .map(|d| d.join(path.file_name().unwrap()));
    out.contains(&path.display().to_string())
        || real.is_some_and(|r| out.contains(&r.display().to_string()))
}

fn open_archive(dir: &Path, user: &str) -> Option<Archive> {
    let paths = ArchivePaths::for_user(dir, user).unwrap();
    paths
        .archive
        .exists()
        .then(|| Archive::open(&paths, &mut Vec::new()).unwrap())
}

/// Live names (latest version not a tombstone) of a user's archive; empty when there is none.
fn live_names(dir: &Path, user: &str) -> BTreeSet<String> {
    open_archive(dir, user).map_or_else(BTreeSet::new, |a| {
        a.state_at(None)
            .into_iter()
            .map(|(_, e)| e.name.clone())
            .collect()
    })
}

fn mailbox<'a>(spool: &'a Spool, name: &str) -> &'a MailboxEntry {
    spool
        .mboxlist
        .entries
        .iter()
        .find(|e| e.name.internal() == name && !e.is_tombstone())
        .unwrap_or_else(|| panic!("{name} not in the fixture"))
}

fn folder(e: &MailboxEntry, file: &str) -> String {
    format!("folders/{}/{file}", e.uniqueid.as_deref().unwrap())
}

/// Every live mailbox of `user` is in the archive: link and stored index.
fn assert_backed_up(dir: &Path, spool: &Spool, user: &str, except: &[&str]) {
    let names = live_names(dir, user);
    for e in spool.mailboxes_of(user).filter(|e| !e.is_tombstone()) {
        if except.contains(&e.name.internal().as_str()) {
            continue;
        }
        assert!(
            names.contains(&imap_entry(&e.name)),
            "{user}: {} link",
            e.name
        );
        assert!(
            names.contains(&folder(e, "cyrus.index")),
            "{user}: {} index not stored: {names:?}",
            e.name
        );
    }
}

const USERS: [&str; 3] = ["alice", "bob", "john.doe"];

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "{path:?}");
}

/// Which file of the fixture a case spoils, and whose it is: a mailbox's (that mailbox is
/// skipped) or a user's own (that file is not stored; the user's mailboxes are).
struct Case {
    tag: &'static str,
    user: &'static str,
    mailbox: Option<&'static str>,
    entry: Option<&'static str>,
    path: fn(&Spool) -> PathBuf,
}

fn meta(spool: &Spool, name: &str, file: MetaFile) -> PathBuf {
    spool.meta_path(mailbox(spool, name), file).unwrap()
}

#[test]
fn a_sparse_terabyte_spool_file_is_refused_by_name_and_the_other_users_are_backed_up() {
    let cases = [
        Case {
            tag: "header",
            user: "alice",
            mailbox: Some("user.alice"),
            entry: None,
            path: |s| meta(s, "user.alice", MetaFile::Header),
        },
        Case {
            tag: "index",
            user: "alice",
            mailbox: Some("user.alice"),
            entry: None,
            path: |s| meta(s, "user.alice", MetaFile::Index),
        },
        Case {
            tag: "annotations",
            user: "alice",
            mailbox: Some("user.alice"),
            entry: None,
            path: |s| meta(s, "user.alice", MetaFile::Annotations),
        },
        Case {
            tag: "sub",
            user: "bob",
            mailbox: None,
            entry: Some("meta/sub"),
            path: |s| s.user_files("bob").sub,
        },
        Case {
            tag: "seen",
            user: "bob",
            mailbox: None,
            entry: Some("meta/seen"),
            path: |s| s.user_files("bob").seen,
        },
    ];
    for case in &cases {
        let work = TempDir::new(&format!("trust-sparse-{}", case.tag));
        let config = fixture_spool(work.path());
        let spool = Spool::open(&config).unwrap();
        let path = (case.path)(&spool);
        let file = File::options().write(true).open(&path).unwrap();
        file.set_len(1 << 40).unwrap();
        drop(file);

        let ls = run_guarded(spool_ls(&config), work.path(), "ls");
        let out = text(&ls);
        assert_eq!(ls.status.code(), Some(1), "{}: spool ls: {out}", case.tag);
        assert!(
            names_path(&out, &path) && out.contains("too large"),
            "{}: spool ls does not name the file: {out}",
            case.tag
        );

        for via in [Via::Local, Via::Agent] {
            let dir = work.path().join(format!("{via:?}"));
            let o = run_guarded(backup(via, &config, &dir, &[]), work.path(), "backup");
            let out = text(&o);
            assert_eq!(o.status.code(), Some(1), "{} {via:?}: {out}", case.tag);
            assert!(
                names_path(&out, &path) && out.contains("too large"),
                "{} {via:?}: the file is not named: {out}",
                case.tag
            );
            for user in USERS {
                let except: Vec<&str> = case
                    .mailbox
                    .filter(|_| user == case.user)
                    .into_iter()
                    .collect();
                assert_backed_up(&dir, &spool, user, &except);
            }
            let names = live_names(&dir, case.user);
            if let Some(name) = case.mailbox {
                assert!(
                    !names.contains(&folder(mailbox(&spool, name), "cyrus.index")),
                    "{} {via:?}: {name} stored anyway",
                    case.tag
                );
            }
            if let Some(entry) = case.entry {
                assert!(!names.contains(entry), "{} {via:?}: {entry}", case.tag);
            }
        }
    }
}

#[test]
fn fifos_in_the_spool_are_refused_without_blocking() {
    let cases = [
        Case {
            tag: "message",
            user: "alice",
            mailbox: Some("user.alice"),
            entry: None,
            path: |s| s.mailbox_dir(mailbox(s, "user.alice")).unwrap().join("1."),
        },
        Case {
            tag: "header",
            user: "alice",
            mailbox: Some("user.alice.Archive"),
            entry: None,
            path: |s| meta(s, "user.alice.Archive", MetaFile::Header),
        },
        Case {
            tag: "index",
            user: "alice",
            mailbox: Some("user.alice"),
            entry: None,
            path: |s| meta(s, "user.alice", MetaFile::Index),
        },
        Case {
            tag: "lock",
            user: "alice",
            mailbox: Some("user.alice"),
            entry: None,
            path: |s| s.lock_path(mailbox(s, "user.alice")).unwrap(),
        },
        Case {
            tag: "seen",
            user: "bob",
            mailbox: None,
            entry: Some("meta/seen"),
            path: |s| s.user_files("bob").seen,
        },
    ];
    for case in &cases {
        let work = TempDir::new(&format!("trust-fifo-{}", case.tag));
        let config = fixture_spool(work.path());
        let spool = Spool::open(&config).unwrap();
        let path = (case.path)(&spool);
        mkfifo(&path);

        // `spool ls` opens no message file; every other FIFO is its problem too.
        let ls = run_guarded(spool_ls(&config), work.path(), "ls");
        let out = text(&ls);
        if case.tag == "message" {
            assert_eq!(ls.status.code(), Some(0), "spool ls: {out}");
        } else {
            assert_eq!(ls.status.code(), Some(1), "{}: spool ls: {out}", case.tag);
            assert!(
                names_path(&out, &path) && out.contains("FIFO"),
                "{}: {out}",
                case.tag
            );
        }

        for via in [Via::Local, Via::Agent] {
            let dir = work.path().join(format!("{via:?}"));
            let o = run_guarded(backup(via, &config, &dir, &[]), work.path(), "backup");
            let out = text(&o);
            assert_eq!(o.status.code(), Some(1), "{} {via:?}: {out}", case.tag);
            assert!(
                names_path(&out, &path) && out.contains("FIFO"),
                "{} {via:?}: the FIFO is not named: {out}",
                case.tag
            );
            for user in USERS {
                let except: Vec<&str> = case
                    .mailbox
                    .filter(|_| user == case.user)
                    .into_iter()
                    .collect();
                assert_backed_up(&dir, &spool, user, &except);
            }
            let names = live_names(&dir, case.user);
            if let Some(name) = case.mailbox {
                assert!(
                    !names.contains(&folder(mailbox(&spool, name), "cyrus.index")),
                    "{} {via:?}: {name} stored anyway",
                    case.tag
                );
            }
            if let Some(entry) = case.entry {
                assert!(!names.contains(entry), "{} {via:?}: {entry}", case.tag);
            }
        }
    }
}

/// With a real Cyrus: a message file that is a FIFO is refused by an agent that stays connected,
/// and the agent then holds no lock of the mailbox: Cyrus delivers into it at once.
#[test]
fn a_fifo_message_file_leaves_no_cyrus_lock_held() {
    use mailpack::agent::RemoteSource;
    use mailpack::backup::{backup_user, UserOptions};
    use mailpack::spool::lock::{FileLock, LockMethod, LockMode, LockWait};

    let server = CyrusServer::start(CyrusOptions::default());
    server.create_user("dave");
    for i in 0..3 {
        server.lmtp_deliver(
            "x@example.org",
            &["dave"],
            format!("Subject: m{i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
    }
    let fifo = server.mailbox_path(&server.user_mailbox("dave")).join("2.");
    assert!(fifo.exists(), "{fifo:?}");
    mkfifo(&fifo);
    let work = TempDir::new("trust-fifo-cyrus");

    // Locally, through the binary.
    let o = run_guarded(
        backup(
            Via::Local,
            &server.config_path(),
            &work.path().join("local"),
            &["--user", "dave"],
        ),
        work.path(),
        "local",
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FIFO") && out.contains("uid 2"), "{out}");

    // Through an agent session that is still open afterwards.
    let agent = agent_command(&server.config_path());
    let archives = work.path().join("agent");
    std::fs::create_dir_all(&archives).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut source = RemoteSource::spawn(&agent, false).unwrap();
        let paths = ArchivePaths::for_user(&archives, "dave").unwrap();
        let mut store =
            StoreWriter::open(&paths, &WriterOptions::default(), &mut Vec::new()).unwrap();
        let options = UserOptions {
            retries: 3,
            host: "test".into(),
            time: mailpack::commands::now(),
            allow_mass_delete: false,
            group_commit: false,
        };
        let report = backup_user(
            &mut source,
            &mailpack::spool::Owner::User("dave".into()),
            &mut store,
            &options,
            &mut |_| Vec::new(),
            &mailpack::progress::Tally::unwatched(),
        );
        drop(store);
        let _ = tx.send((report.map_err(|e| e.to_string()), source));
    });
    let (report, source) = match rx.recv_timeout(HANG_GUARD) {
        Ok(x) => x,
        Err(_) => {
            // Let the blocked agent go before failing.
            let _ = File::options().write(true).open(&fifo);
            panic!("the backup through the agent blocked on the FIFO");
        }
    };
    let report = report.unwrap();
    assert_eq!(report.skipped, 1, "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("FIFO") && p.contains("uid 2")),
        "{report:?}"
    );

    // The session is open, and neither the mailbox's name lock nor its index is held.
    let spool = Spool::open(&server.config_path()).unwrap();
    let inbox = mailbox(&spool, "user.dave");
    let now = LockWait::For(Duration::ZERO);
    let name_lock = FileLock::lock_existing_lockfile(
        &spool.lock_path(inbox).unwrap(),
        LockMode::Exclusive,
        LockMethod::Fcntl,
        now,
    );
    // Cyrus made the lock file when it delivered: it is there to be locked.
    assert!(
        matches!(name_lock, Ok(Some(_))),
        "name lock still held: {name_lock:?}"
    );
    drop(name_lock);
    let index = FileLock::lock_stable(
        &spool.meta_path(inbox, MetaFile::Index).unwrap(),
        LockMode::Exclusive,
        LockMethod::Fcntl,
        now,
    );
    assert!(
        matches!(index, Ok(Some(_))),
        "index still locked: {index:?}"
    );
    drop(index);
    server.lmtp_deliver(
        "x@example.org",
        &["dave"],
        b"Subject: while the agent is connected\r\n\r\nhello\r\n",
    );
    drop(source);
}

#[test]
fn mailboxes_without_their_files_are_reported_on_the_first_run_and_never_tombstoned() {
    // A first backup of a spool whose partition is empty (not mounted): every mailbox named.
    let work = TempDir::new("trust-unmounted");
    let config = fixture_spool(work.path());
    let spool = Spool::open(&config).unwrap();
    let partition = spool.config.partitions.get("default").unwrap().clone();
    for entry in std::fs::read_dir(&partition).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    for via in [Via::Local, Via::Agent] {
        let dir = work.path().join(format!("{via:?}"));
        let o = run_guarded(backup(via, &config, &dir, &[]), work.path(), "backup");
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{via:?}: {out}");
        for user in USERS {
            for e in spool.mailboxes_of(user).filter(|e| !e.is_tombstone()) {
                let line = out
                    .lines()
                    .find(|l| l.contains(&format!("{} (", e.name)))
                    .unwrap_or_else(|| panic!("{via:?}: {} not reported: {out}", e.name));
                assert!(line.contains("no cyrus.header"), "{line}");
            }
            let names = live_names(&dir, user);
            assert!(
                !names
                    .iter()
                    .any(|n| n.starts_with("imap/") || n.ends_with("cyrus.index")),
                "{via:?} {user}: {names:?}"
            );
        }
    }

    // After a good backup, one mailbox folder gone: reported, and its name stays live.
    let work = TempDir::new("trust-missing-folder");
    let config = fixture_spool(work.path());
    let spool = Spool::open(&config).unwrap();
    let archive_box = mailbox(&spool, "user.alice.Archive");
    for via in [Via::Local, Via::Agent] {
        let dir = work.path().join(format!("{via:?}"));
        let o = run_guarded(backup(via, &config, &dir, &[]), work.path(), "first");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    std::fs::remove_dir_all(spool.mailbox_dir(archive_box).unwrap()).unwrap();
    for via in [Via::Local, Via::Agent] {
        let dir = work.path().join(format!("{via:?}"));
        let before = live_names(&dir, "alice");
        let o = run_guarded(backup(via, &config, &dir, &[]), work.path(), "second");
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{via:?}: {out}");
        assert!(
            out.contains("user.alice.Archive (") && out.contains("no cyrus.header"),
            "{via:?}: {out}"
        );
        assert_eq!(live_names(&dir, "alice"), before, "{via:?}");
    }
}

#[test]
fn an_emptied_mailboxes_db_tombstones_nothing_without_allow_mass_delete() {
    let work = TempDir::new("trust-emptied-db");
    let config = fixture_spool(work.path());
    let spool = Spool::open(&config).unwrap();
    for via in [Via::Local, Via::Agent] {
        let dir = work.path().join(format!("{via:?}"));
        let o = run_guarded(backup(via, &config, &dir, &[]), work.path(), "first");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let db = spool.config.configdirectory.join("mailboxes.db");
    File::create(&db).unwrap();
    for via in [Via::Local, Via::Agent] {
        let dir = work.path().join(format!("{via:?}"));
        let before: Vec<_> = USERS.iter().map(|u| live_names(&dir, u)).collect();
        let o = run_guarded(
            backup(via, &config, &dir, &["--json"]),
            work.path(),
            "emptied",
        );
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{via:?}: {out}");
        assert!(
            out.contains("--allow-mass-delete") && out.contains("\"mass-delete-refused\""),
            "{via:?}: {out}"
        );
        let after: Vec<_> = USERS.iter().map(|u| live_names(&dir, u)).collect();
        assert_eq!(after, before, "{via:?}: names were tombstoned");

        // Naming a user the server does not list is no way around it.
        let o = run_guarded(
            backup(via, &config, &dir, &["--user", "bob"]),
            work.path(),
            "emptied-bob",
        );
        assert_eq!(o.status.code(), Some(1), "{via:?}: {}", text(&o));
        assert_eq!(live_names(&dir, "bob"), before[1], "{via:?}");
    }

    // The admin says they really are gone.
    let dir = work.path().join("Local");
    let o = run_guarded(
        backup(Via::Local, &config, &dir, &["--allow-mass-delete"]),
        work.path(),
        "allowed",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for user in USERS {
        let names = live_names(&dir, user);
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("imap/") || n.starts_with("meta/")),
            "{user}: {names:?}"
        );
    }
}

/// With a real Cyrus (`delete_mode: immediate`): renames and single deletions are tombstoned as
/// ever; most of a user's mailboxes vanishing at once is refused until `--allow-mass-delete`,
/// while the rest of that run (new mail) is still committed.
#[test]
fn most_of_a_users_mailboxes_vanishing_at_once_is_refused() {
    let server = CyrusServer::start(CyrusOptions::default().with("delete_mode", "immediate"));
    server.create_user("carol");
    let mut imap = server.imap("carol");
    for name in ["A", "A/x", "A/y", "B"] {
        imap.create(name);
    }
    imap.logout();
    let work = TempDir::new("trust-mass-delete");
    let dir = work.path().join("archives");
    let config = server.config_path();
    let run = |extra: &[&str], tag: &str| {
        let mut args = vec!["--user", "carol"];
        args.extend_from_slice(extra);
        run_guarded(backup(Via::Local, &config, &dir, &args), work.path(), tag)
    };
    let links = || -> BTreeSet<String> {
        live_names(&dir, "carol")
            .into_iter()
            .filter(|n| n.starts_with("imap/"))
            .collect()
    };
    let o = run(&[], "first");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(links().len(), 5, "{:?}", links());

    // A rename of a folder with two children: three names change, no mailbox vanishes.
    let mut imap = server.imap("carol");
    imap.rename("A", "Z");
    imap.logout();
    let o = run(&[], "rename");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(links().contains("imap/user/carol/Z/x"), "{:?}", links());
    assert!(!links().contains("imap/user/carol/A"), "{:?}", links());

    // One deletion of five.
    let mut imap = server.imap("carol");
    imap.delete("B");
    imap.logout();
    let o = run(&[], "delete-one");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(links().len(), 4, "{:?}", links());

    // Three of four at once: refused, though the new message is stored.
    let mut imap = server.imap("carol");
    for name in ["Z/x", "Z/y", "Z"] {
        imap.delete(name);
    }
    imap.logout();
    server.lmtp_deliver("x@example.org", &["carol"], b"Subject: new\r\n\r\nnew\r\n");
    let before = links();
    let o = run(&["--json"], "delete-most");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("3 of the 4 mailboxes") && out.contains("--allow-mass-delete"),
        "{out}"
    );
    assert!(out.contains("\"mass_delete_refused\":true"), "{out}");
    assert!(out.contains("\"messages_added\":1"), "{out}");
    assert_eq!(links(), before);

    let o = run(&["--allow-mass-delete"], "allowed");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        links(),
        BTreeSet::from(["imap/user/carol".to_string()]),
        "{:?}",
        links()
    );
}

#[test]
fn a_missing_message_file_is_reported_with_its_path_uid_and_mailbox() {
    let work = TempDir::new("trust-missing-message");
    let config = fixture_spool(work.path());
    let spool = Spool::open(&config).unwrap();
    let inbox = mailbox(&spool, "user.alice");
    let gone = spool.mailbox_dir(inbox).unwrap().join("3.");
    std::fs::remove_file(&gone).unwrap();
    let index =
        mailpack::spool::index::read(&spool.meta_path(inbox, MetaFile::Index).unwrap()).unwrap();
    for via in [Via::Local, Via::Agent] {
        let dir = work.path().join(format!("{via:?}"));
        let o = run_guarded(
            backup(via, &config, &dir, &["--user", "alice"]),
            work.path(),
            "backup",
        );
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{via:?}: {out}");
        let line = out
            .lines()
            .find(|l| l.contains("uid 3"))
            .unwrap_or_else(|| panic!("{via:?}: uid 3 not reported: {out}"));
        assert!(
            line.contains("user.alice:") && line.contains("missing"),
            "{line}"
        );
        match via {
            Via::Local => assert!(names_path(line, &gone), "{line}"),
            // The wire carries no paths; the file's name it has.
            Via::Agent => assert!(line.contains("3."), "{line}"),
        }
        assert!(!out.contains("changed on every"), "{out}");
        // The mailbox's other messages are stored; its metadata is not.
        let archive = open_archive(&dir, "alice").unwrap();
        for r in index
            .records
            .iter()
            .filter(|r| r.uid != 3 && !r.is_unlinked())
        {
            assert!(archive.has_file(&r.guid), "{via:?}: uid {}", r.uid);
        }
        assert!(!live_names(&dir, "alice").contains(&folder(inbox, "cyrus.index")));
    }
}

/// An archive as `mailpack repair` leaves it: the entries that still read, then a run whose
/// `repairs/<n>` lists what was lost. The next backup reads every mailbox, so even files whose
/// mailbox did not change since are stored again, and says how many.
#[test]
fn a_backup_after_a_repair_stores_again_what_the_repair_lost() {
    let work = TempDir::new("trust-heal");
    let config = fixture_spool(work.path());
    let spool = Spool::open(&config).unwrap();
    let full = work.path().join("full");
    let o = run_guarded(
        backup(Via::Local, &config, &full, &["--user", "alice"]),
        work.path(),
        "full",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let whole = open_archive(&full, "alice").unwrap();

    // Lost: message files of two mailboxes whose metadata is intact and unchanged, so only a
    // full pass finds them (pass 1 compares metadata stats and would skip both mailboxes).
    let first_message = |name: &str| {
        let e = mailbox(&spool, name);
        let index =
            mailpack::spool::index::read(&spool.meta_path(e, MetaFile::Index).unwrap()).unwrap();
        format!("files/{}", index.records[0].guid)
    };
    let lost: BTreeSet<String> = [
        first_message("user.alice.Archive"),
        first_message("user.alice.Archive.2023"),
    ]
    .into();
    assert_eq!(lost.len(), 2);

    for via in [Via::Local, Via::Agent] {
        let dir = work.path().join(format!("{via:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = ArchivePaths::for_user(&dir, "alice").unwrap();
        let mut store =
            StoreWriter::open(&paths, &WriterOptions::default(), &mut Vec::new()).unwrap();
        let mut listing = String::new();
        for (_, e) in whole.state_at(None) {
            if lost.contains(&e.name) {
                listing.push_str(&format!("{} {}\n", e.sha1, e.name));
                continue;
            }
            match e.kind {
                EntryKind::Symlink => store.writer().append_symlink(&e.name, &e.target, 0),
                _ => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut whole.read_entry(e).unwrap(), &mut bytes)
                        .unwrap();
                    store
                        .writer()
                        .append_bytes(&e.name, &bytes, e.stat.as_deref().copied(), 0)
                        .map(drop)
                }
            }
            .unwrap();
        }
        store.commit(&RunSummary::default()).unwrap();
        store
            .writer()
            .append_bytes("repairs/2", listing.as_bytes(), None, 0)
            .unwrap();
        store.commit(&RunSummary::default()).unwrap();
        drop(store);
        let repaired = open_archive(&dir, "alice").unwrap();
        assert_eq!(
            repaired.repair_losses().unwrap(),
            Some(lost.clone()),
            "the store does not read repairs/<n> (Archive::repair_losses)"
        );
        drop(repaired);

        let o = run_guarded(
            backup(via, &config, &dir, &["--user", "alice", "--json"]),
            work.path(),
            "heal",
        );
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{via:?}: {out}");
        assert!(out.contains("\"healed\":2"), "{via:?}: {out}");
        let names = live_names(&dir, "alice");
        for name in &lost {
            assert!(names.contains(name), "{via:?}: {name} not stored again");
        }
        let mut healed = live_names(&dir, "alice");
        healed.retain(|n| !n.starts_with("repairs/"));
        assert_eq!(healed, live_names(&full, "alice"), "{via:?}");

        // The newest run is no repair's any more: back to skipping unchanged mailboxes.
        let o = run_guarded(
            backup(via, &config, &dir, &["--user", "alice", "--json"]),
            work.path(),
            "after",
        );
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{out}");
        assert!(
            out.contains("\"healed\":0") && out.contains("\"changed\":0"),
            "{via:?}: {out}"
        );
    }
}
