//! Restore against real Cyrus 3.6 servers: a user backed up at two dates comes back into a fresh
//! server exactly as IMAP showed it at each date; a deleted folder comes back into the running
//! original; exports read back with Python's `mailbox` module; one message by SHA-1 and by UID;
//! what was expunged between two backups; an IMAP restore interrupted and resumed adds nothing
//! twice; a hostile archive writes nothing outside its target.

use std::collections::BTreeMap;
use std::path::Path;

use mailpack::commands::restore::{restore, RestoreOptions, RestoreReport, RestoreTarget};
use mailpack::restore::cyrus::{CyrusTarget, DEFAULT_CYRUS_BIN};
use mailpack::restore::imap::{ImapAddr, ImapTarget, Trust};

use crate::backup::run_backup;
use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::spool_view::{imap_facts, populate, UserFacts};
use crate::util::TempDir;

/// Everything the issue lists as "equal to the original": the mailbox facts of `imap_facts`
/// (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, per-UID flags, internal date, size, body SHA-1) and
/// subscriptions, plus quota, METADATA of every mailbox and the sieve scripts.
#[derive(Debug, PartialEq, Eq)]
pub struct FullFacts {
    pub facts: UserFacts,
    quota: Vec<String>,
    metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// ENVELOPE and BODYSTRUCTURE of every message: served from cyrus.cache, which a restore
    /// must make the server rebuild correctly.
    structure: BTreeMap<String, Vec<String>>,
    sieve: Vec<(String, bool, String)>,
}

pub fn full_facts(server: &CyrusServer, user: &str) -> FullFacts {
    let facts = imap_facts(server, user);
    let mut imap = server.imap(user);
    let sep = server.separator();
    let quota = imap
        .raw("GETQUOTAROOT INBOX")
        .into_iter()
        .filter(|l| l.starts_with("* QUOTA "))
        .collect();
    let mut metadata = BTreeMap::new();
    let mut structure = BTreeMap::new();
    for (name, m) in &facts.mailboxes {
        let server_name = name.replace('/', &sep.to_string());
        metadata.insert(name.clone(), imap.get_all_metadata(&server_name));
        if !m.messages.is_empty() {
            imap.examine(&server_name);
            structure.insert(
                name.clone(),
                imap.raw("UID FETCH 1:* (ENVELOPE BODYSTRUCTURE)"),
            );
            imap.unselect();
        }
    }
    drop(imap);
    let sieve = server
        .list_sieve(user)
        .into_iter()
        .map(|(name, active)| {
            let body = server.get_sieve(user, &name);
            (name, active, body)
        })
        .collect();
    FullFacts {
        facts,
        quota,
        metadata,
        structure,
        sieve,
    }
}

/// `reconstruct -n -G` (check only, with GUID verification) lists each mailbox it visits; any
/// other line is a problem it found.
fn assert_reconstruct_clean(server: &CyrusServer, user: &str) {
    let out = server.tool_ok("reconstruct", &["-n", "-G", "-u", user]);
    let problems: Vec<&str> = out
        .lines()
        .filter(|l| {
            let named = l.starts_with(&format!("user/{user}"))
                || l.starts_with(&format!("DELETED/user/{user}/"));
            !named || l.contains(": ")
        })
        .collect();
    assert!(problems.is_empty(), "reconstruct -n -G says:\n{out}");
    assert!(
        out.lines().count() > 1,
        "reconstruct visited nothing:\n{out}"
    );
}

pub fn options(dir: &Path, user: &str, target: RestoreTarget) -> RestoreOptions {
    RestoreOptions {
        archive_dir: dir.to_path_buf(),
        shared: false,
        user: user.to_string(),
        mailboxes: Vec::new(),
        at: None,
        at_run: None,
        sha1: None,
        uid: None,
        expunged_between: None,
        target,
        dry_run: false,
        progress: None,
    }
}

pub fn to_cyrus(server: &CyrusServer) -> RestoreTarget {
    RestoreTarget::Cyrus(CyrusTarget {
        config: server.config_path(),
        cyrus_bin: DEFAULT_CYRUS_BIN.into(),
        replace: false,
        rename_to: None,
        resume: false,
    })
}

fn run_restore(o: &RestoreOptions) -> RestoreReport {
    let report = restore(o).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.bad.is_empty() && report.refused.is_empty(),
        "{report:?}"
    );
    report
}

/// Changes between the two backups: flags, an expunge, a rename, a delete, new mail.
pub fn change(server: &CyrusServer) {
    let sep = server.separator();
    let mut a = server.imap("alice");
    a.select("INBOX");
    a.uid_store("7", "+FLAGS", &["\\Flagged", "$Important"]);
    a.uid_store("1", "-FLAGS", &["\\Seen"]);
    a.uid_store("8", "+FLAGS", &["\\Deleted"]);
    a.uid_expunge("8");
    a.unselect();
    a.rename("Old Stuff", &format!("Archive{sep}Older"));
    a.delete("Shared");
    a.unsubscribe("Archive");
    drop(a);
    server.lmtp_deliver(
        "x@example.org",
        &["alice"],
        b"From: x@example.org\r\nSubject: after the first backup\r\n\r\nnew mail\r\n",
    );
}

/// A populated server whose user alice was backed up, changed and backed up again, with what
/// IMAP showed of her at each backup.
pub fn backed_up_twice(tag: &str) -> (CyrusServer, TempDir, FullFacts, FullFacts) {
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    let dir = TempDir::new(tag);
    run_backup(&server.config_path(), dir.path(), &["alice"]);
    let first = full_facts(&server, "alice");
    change(&server);
    run_backup(&server.config_path(), dir.path(), &["alice"]);
    let second = full_facts(&server, "alice");
    (server, dir, first, second)
}

#[test]
fn a_user_comes_back_into_a_fresh_cyrus_exactly_as_at_each_backup() {
    let (_original, dir, first, second) = backed_up_twice("restore-roundtrip");
    assert_ne!(first.facts, second.facts);

    for (run, expected) in [(1, &first), (2, &second)] {
        let fresh = CyrusServer::start(CyrusOptions::default());
        let mut o = options(dir.path(), "alice", to_cyrus(&fresh));
        o.at_run = Some(run);
        let dry = RestoreOptions {
            dry_run: true,
            ..options(dir.path(), "alice", to_cyrus(&fresh))
        };
        let planned = run_restore(&dry);
        assert!(!planned.writes.is_empty());
        assert!(
            fresh.imap("alice").list("*").is_empty(),
            "a dry run writes nothing"
        );
        let report = run_restore(&o);
        assert!(report.messages_written > 0, "{report:?}");
        assert_eq!(&full_facts(&fresh, "alice"), expected, "run {run}");
        assert_reconstruct_clean(&fresh, "alice");
        // Restoring again would overwrite: refused, nothing touched.
        let again = restore(&o).unwrap_err().to_string();
        assert!(again.contains("exists on the target"), "{again}");
        assert_eq!(
            &full_facts(&fresh, "alice"),
            expected,
            "run {run} after the refusal"
        );
    }
}

#[test]
fn a_deleted_folder_comes_back_into_the_running_original() {
    let server = CyrusServer::start(
        CyrusOptions::default()
            .with("delete_mode", "immediate")
            .with("expunge_mode", "immediate"),
    );
    populate(&server);
    let dir = TempDir::new("restore-deleted");
    run_backup(&server.config_path(), dir.path(), &["alice"]);
    let before = full_facts(&server, "alice");
    let sep = server.separator();
    let mut a = server.imap("alice");
    a.delete(&format!("Archive{sep}2023"));
    drop(a);
    assert!(!imap_facts(&server, "alice")
        .mailboxes
        .contains_key("Archive/2023"));

    let mut o = options(dir.path(), "alice", to_cyrus(&server));
    o.mailboxes = vec!["Archive/2023".into()];
    let report = run_restore(&o);
    assert_eq!(report.mailboxes, vec!["user.alice.Archive.2023"]);
    let after = full_facts(&server, "alice");
    assert_eq!(after, before);
    assert_reconstruct_clean(&server, "alice");
}

/// Reads an export with Python's `mailbox` module: per folder, (subject, sorted flags) pairs.
fn python_read(kind: &str, path: &Path) -> String {
    let script = r#"
import mailbox, sys
kind, path = sys.argv[1], sys.argv[2]
def show(name, box):
    rows = []
    for key in box.keys():
        m = box[key]
        subj = m.get("Subject", "")
        flags = "".join(sorted(m.get_flags())) if hasattr(m, "get_flags") else ""
        rows.append(f"{subj}|{flags}")
    for r in sorted(rows):
        print(f"{name}: {r}")
if kind == "maildir":
    md = mailbox.Maildir(path, factory=None, create=False)
    show("INBOX", md)
    for f in sorted(md.list_folders()):
        show(f, md.get_folder(f))
else:
    show("mbox", mailbox.mbox(path, create=False))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(kind)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn exports_read_back_with_a_standard_reader_and_single_messages_come_out_by_seeking() {
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    let dir = TempDir::new("restore-export");
    run_backup(&server.config_path(), dir.path(), &["alice"]);
    let facts = imap_facts(&server, "alice");
    let out = TempDir::new("restore-export-out");

    // Maildir: every mailbox, flags as letters.
    let maildir = out.path().join("maildir");
    let report = run_restore(&options(
        dir.path(),
        "alice",
        RestoreTarget::Maildir(maildir.clone()),
    ));
    let total: usize = facts.mailboxes.values().map(|m| m.messages.len()).sum();
    assert_eq!(report.messages_written as usize, total);
    let listing = python_read("maildir", &maildir);
    assert_eq!(listing.lines().count(), total, "{listing}");
    // INBOX uid 1 is \Seen, uid 3 \Answered $Forwarded (R, and keyword a); the message
    // appended to Archive is \Seen \Flagged $Label1.
    for line in [
        "INBOX: message 0both|S\n",
        "INBOX: message 2both|Ra\n",
        "Archive: message 30appended|FSa\n",
    ] {
        assert!(listing.contains(line), "{line} not in {listing}");
    }
    let keywords = std::fs::read_to_string(maildir.join(".Archive/dovecot-keywords")).unwrap();
    assert_eq!(keywords, "0 $Label1\n");
    // A second run finds everything there and writes nothing.
    let again = run_restore(&options(
        dir.path(),
        "alice",
        RestoreTarget::Maildir(maildir.clone()),
    ));
    assert_eq!(
        (
            again.messages_written,
            again.messages_already_there as usize
        ),
        (0, total)
    );

    // mbox of one mailbox: Status/X-Status carry the flags.
    let mbox = out.path().join("archive.mbox");
    let mut o = options(dir.path(), "alice", RestoreTarget::Mbox(mbox.clone()));
    o.mailboxes = vec!["Archive".into()];
    run_restore(&o);
    let listing = python_read("mbox", &mbox);
    assert!(
        listing.contains("mbox: message 30appended|FOR"),
        "{listing}"
    );
    assert_eq!(
        listing.lines().count(),
        facts.mailboxes["Archive"].messages.len()
    );

    // One message by UID, and by SHA-1: byte-identical to what IMAP serves.
    let (uid, _, _, size, sha1) = facts.mailboxes["INBOX"].messages[2].clone();
    let eml = out.path().join("eml");
    let mut o = options(dir.path(), "alice", RestoreTarget::Eml(eml.clone()));
    o.mailboxes = vec!["INBOX".into()];
    o.uid = Some(uid);
    assert_eq!(run_restore(&o).messages_written, 1);
    let bytes = std::fs::read(eml.join("INBOX").join(format!("{uid}.eml"))).unwrap();
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(crate::cyrus::sha1_hex_of(&bytes), sha1);
    let mut o = options(dir.path(), "alice", RestoreTarget::Eml(eml.clone()));
    o.sha1 = Some(sha1.parse().unwrap());
    assert_eq!(run_restore(&o).messages_written, 1);
    assert_eq!(
        std::fs::read(eml.join(format!("{sha1}.eml"))).unwrap(),
        bytes
    );
}

#[test]
fn what_was_expunged_between_two_backups_goes_back_over_imap_once_even_when_resumed() {
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    let dir = TempDir::new("restore-imap");
    run_backup(&server.config_path(), dir.path(), &["alice"]);
    let before = imap_facts(&server, "alice");
    let mut a = server.imap("alice");
    a.select("INBOX");
    a.uid_store("2:3", "+FLAGS", &["\\Deleted"]);
    a.uid_expunge("2:3");
    drop(a);
    // Runs are told apart by their commit second: let the clock pass the first one.
    let first = mailpack::commands::now();
    while mailpack::commands::now() == first {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    run_backup(&server.config_path(), dir.path(), &["alice"]);

    let archive = mailpack::store::Archive::open(
        &mailpack::store::ArchivePaths::for_user(dir.path(), "alice").unwrap(),
        &mut Vec::new(),
    )
    .unwrap();
    let (t1, t2) = (archive.runs()[0].time, archive.runs()[1].time);
    let target = || {
        RestoreTarget::Imap(ImapTarget {
            addr: ImapAddr::parse(&format!("imap://{}", server.imap_addr())).unwrap(),
            user: "alice".into(),
            password: crate::cyrus::PASSWORD.into(),
            folder: "Restored/expunged".into(),
            trust: Trust::System,
            // The plain fixture offers no STARTTLS; TLS restores are in restore_imap_tls.rs.
            allow_plaintext: true,
        })
    };
    let mut o = options(dir.path(), "alice", target());
    o.at_run = Some(1);
    o.mailboxes = vec!["INBOX".into()];
    o.expunged_between = Some((t1, t2));
    // Interrupted: only the first message had gone in (the same restore, limited to one UID).
    let first_uid = before.mailboxes["INBOX"].messages[1].0;
    let partial = RestoreOptions {
        uid: Some(first_uid),
        ..options(dir.path(), "alice", target())
    };
    let partial = RestoreOptions {
        at_run: Some(1),
        mailboxes: vec!["INBOX".into()],
        expunged_between: Some((t1, t2)),
        ..partial
    };
    assert_eq!(run_restore(&partial).messages_written, 1);
    let resumed = run_restore(&o);
    assert_eq!(
        (resumed.messages_written, resumed.messages_already_there),
        (1, 1)
    );
    let again = run_restore(&o);
    assert_eq!(
        (again.messages_written, again.messages_already_there),
        (0, 2)
    );
    // Without --run, the messages come from the state at T1.
    let from_t1 = RestoreOptions {
        mailboxes: vec!["INBOX".into()],
        expunged_between: Some((t1, t2)),
        ..options(dir.path(), "alice", target())
    };
    let from_t1 = run_restore(&from_t1);
    assert_eq!((from_t1.run, from_t1.messages_already_there), (Some(1), 2));

    // `ls --at` shows what a restore as of each time brings back.
    let ls = |t: i64| {
        let o = crate::util::run(&[
            "ls",
            "--archive-dir",
            dir.path().to_str().unwrap(),
            "--user",
            "alice",
            "--at",
            &t.to_string(),
        ]);
        assert!(o.status.success(), "{}", crate::util::stderr(&o));
        crate::util::stdout(&o)
    };
    let (at1, at2) = (ls(t1), ls(t2));
    assert!(at1.starts_with("as of run 1 "), "{at1}");
    assert!(at2.starts_with("as of run 2 "), "{at2}");
    let uid3 = |listing: &str| {
        let inbox = listing
            .split("\nuser.alice ")
            .nth(1)
            .expect("INBOX listed")
            .to_string();
        inbox
            .lines()
            .find(|l| l.trim_start().starts_with("uid 3 "))
            .unwrap()
            .to_string()
    };
    assert!(!uid3(&at1).ends_with(" expunged"), "{at1}");
    assert!(uid3(&at2).ends_with(" expunged"), "{at2}");

    let sep = server.separator();
    let mut imap = server.imap("alice");
    let restored = imap.fetch_all(&format!("Restored{sep}expunged"));
    let expected: Vec<_> = before.mailboxes["INBOX"]
        .messages
        .iter()
        .filter(|m| m.0 == 2 || m.0 == 3)
        .map(|m| (m.1.clone(), m.3, m.4.clone()))
        .collect();
    let got: Vec<_> = restored
        .iter()
        .map(|m| (m.flags.clone(), m.size, m.sha1.clone()))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn a_hostile_archive_restores_nothing_outside_its_target_and_says_why() {
    let work = TempDir::new("restore-hostile");
    let config = crate::agent::fixture_spool(work.path());
    let archives = work.path().join("archives");
    run_backup(&config, &archives, &["alice"]);
    let paths = mailpack::store::ArchivePaths::for_user(&archives, "alice").unwrap();
    let inbox_folder = {
        let a = mailpack::store::Archive::open(&paths, &mut Vec::new()).unwrap();
        a.latest("imap/user/alice").unwrap().1.target.clone()
    };
    // Names a careless restore would follow out of its target. The archive layer already
    // refuses '..' components, absolute names and such link targets; these get past it.
    let mut w = mailpack::store::StoreWriter::open(
        &paths,
        &mailpack::store::WriterOptions::default(),
        &mut Vec::new(),
    )
    .unwrap();
    w.writer()
        .append_symlink(
            "imap/user/alice/%2E%2E/%2E%2E/%2E%2E/escaped",
            &inbox_folder,
            0,
        )
        .unwrap();
    w.writer()
        .append_symlink("imap/user/alice/Odd", "folders/not a uniqueid", 0)
        .unwrap();
    w.commit(&mailpack::archive::RunSummary::default()).unwrap();
    drop(w);

    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let target = out.join("maildir");
    let o = crate::util::run(&[
        "restore",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
        "--maildir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", crate::util::stderr(&o));
    let err = crate::util::stderr(&o);
    assert!(
        err.contains("refused: mailbox user.alice.^^.^^.^^.escaped"),
        "{err}"
    );
    assert!(err.contains("not folders/<uniqueid>"), "{err}");
    let summary = crate::util::stdout(&o);
    assert!(
        summary.contains(" mailboxes, ") && !summary.contains(" 0 messages written"),
        "{summary}"
    );
    let mut found: Vec<String> = walkdir::WalkDir::new(work.path())
        .into_iter()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .filter(|p| p.contains("escaped") || p.contains("Odd"))
        .collect();
    found.retain(|p| !p.starts_with(archives.to_str().unwrap()));
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        1,
        "only the target"
    );

    // An archive made by other tools with '../' and absolute names does not even open.
    let raw = work.path().join("raw");
    std::fs::create_dir(&raw).unwrap();
    let script = r#"
import io, tarfile, gzip, sys
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    for name in ["../../escape", "/tmp/mailpack-absolute", "imap/user/alice"]:
        data = b"evil"
        info = tarfile.TarInfo(name); info.size = len(data)
        t.addfile(info, io.BytesIO(data))
open(sys.argv[1], "wb").write(gzip.compress(buf.getvalue()))
"#;
    let made = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(raw.join("alice.tar.gz"))
        .status()
        .unwrap();
    assert!(made.success());
    let target = out.join("raw-target");
    let o = crate::util::run(&[
        "restore",
        "--archive-dir",
        raw.to_str().unwrap(),
        "--user",
        "alice",
        "--eml",
        target.to_str().unwrap(),
    ]);
    // A reader's finding (exit 1): the file is not a mailpack archive and nothing is read.
    assert_eq!(o.status.code(), Some(1));
    assert!(
        crate::util::stderr(&o).contains("alice.tar.gz")
            && crate::util::stderr(&o).contains("not a mailpack archive"),
        "{}",
        crate::util::stderr(&o)
    );
    assert!(!target.exists());
    assert!(!Path::new("/tmp/mailpack-absolute").exists());
    assert!(!work.path().parent().unwrap().join("escape").exists());
}

#[test]
fn replace_puts_back_an_older_state_in_place_and_as_restores_beside_under_a_new_name() {
    let (server, dir, first, second) = backed_up_twice("restore-replace");
    assert_ne!(
        first.facts.mailboxes["INBOX"],
        second.facts.mailboxes["INBOX"]
    );

    let cyrus = |replace: bool, rename_to: Option<&str>| {
        RestoreTarget::Cyrus(CyrusTarget {
            config: server.config_path(),
            cyrus_bin: DEFAULT_CYRUS_BIN.into(),
            replace,
            rename_to: rename_to.map(str::to_string),
            resume: false,
        })
    };
    // Without --replace the live INBOX stops the restore.
    let mut o = options(dir.path(), "alice", cyrus(false, None));
    o.at_run = Some(1);
    o.mailboxes = vec!["INBOX".into()];
    let refused = restore(&o).unwrap_err().to_string();
    assert!(refused.contains("--replace"), "{refused}");

    // --replace: the INBOX is as at the first backup, the rest as now.
    let mut o = options(dir.path(), "alice", cyrus(true, None));
    o.at_run = Some(1);
    o.mailboxes = vec!["INBOX".into()];
    run_restore(&o);
    let now = full_facts(&server, "alice");
    assert_eq!(now.facts.mailboxes["INBOX"], first.facts.mailboxes["INBOX"]);
    assert_eq!(now.metadata["INBOX"], first.metadata["INBOX"]);
    assert_eq!(now.structure["INBOX"], first.structure["INBOX"]);
    for (name, m) in &second.facts.mailboxes {
        if name != "INBOX" {
            assert_eq!(&now.facts.mailboxes[name], m, "{name} untouched");
        }
    }
    assert_reconstruct_clean(&server, "alice");

    // --as: the first backup's Archive beside today's, under a new name and uniqueid.
    let mut o = options(
        dir.path(),
        "alice",
        cyrus(false, Some("Archive from run 1")),
    );
    o.at_run = Some(1);
    o.mailboxes = vec!["Archive".into()];
    let report = run_restore(&o);
    assert_eq!(report.mailboxes, vec!["user.alice.Archive from run 1"]);
    let now = full_facts(&server, "alice");
    let copy = &now.facts.mailboxes["Archive from run 1"];
    assert_eq!(copy, &first.facts.mailboxes["Archive"]);
    assert_eq!(
        now.facts.mailboxes["Archive"],
        second.facts.mailboxes["Archive"]
    );
    let mut imap = server.imap("alice");
    let ids: Vec<String> = ["Archive", "Archive from run 1"]
        .iter()
        .map(|m| {
            imap.raw(&format!(
                "STATUS {} (MAILBOXID)",
                crate::cyrus::mailbox_arg(m)
            ))
            .join(" ")
        })
        .collect();
    drop(imap);
    assert_ne!(
        ids[0].split("MAILBOXID").nth(1),
        ids[1].split("MAILBOXID").nth(1),
        "{ids:?}"
    );
    assert_reconstruct_clean(&server, "alice");
}

#[test]
fn a_damaged_message_is_reported_with_its_offset_and_the_rest_is_restored() {
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    // A message larger than a gzip member gets members of its own: damage there touches no
    // other message.
    let mut big = b"From: big@example.org\r\nSubject: big\r\n\r\n".to_vec();
    let mut rng = crate::util::Rng::new(3);
    big.extend(rng.mail_text(1_500_000));
    server.lmtp_deliver("big@example.org", &["alice"], &big);
    let work = TempDir::new("restore-damaged");
    let archives = work.path().join("archives");
    run_backup(&server.config_path(), &archives, &["alice"]);
    let paths = mailpack::store::ArchivePaths::for_user(&archives, "alice").unwrap();
    let member = {
        // The server adds headers on delivery: the big one is the largest message file.
        let a = mailpack::store::Archive::open(&paths, &mut Vec::new()).unwrap();
        let e = a
            .runs()
            .iter()
            .flat_map(|r| a.entries_of(r))
            .filter(|e| e.name.starts_with("files/"))
            .max_by_key(|e| e.size)
            .unwrap();
        assert!(e.size > 1 << 20, "largest message {} bytes", e.size);
        e.placement.member
    };
    // One flipped bit in the deflate data of its first member.
    let mut bytes = std::fs::read(&paths.archive).unwrap();
    bytes[member as usize + 4000] ^= 0x10;
    std::fs::write(&paths.archive, &bytes).unwrap();

    let target = work.path().join("out");
    let o = crate::util::run(&[
        "restore",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
        "--eml",
        target.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", crate::util::stderr(&o));
    let report: serde_json::Value = serde_json::from_str(crate::util::stdout(&o).trim()).unwrap();
    let bad: Vec<&str> = report["data"]["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].contains("alice.tar.gz") && bad[0].contains(&member.to_string()),
        "{bad:?}"
    );
    let facts = imap_facts(&server, "alice");
    let visible: u64 = facts
        .mailboxes
        .values()
        .map(|m| m.messages.len() as u64)
        .sum();
    assert_eq!(
        report["data"]["messages_written"].as_u64().unwrap(),
        visible - 1,
        "{report}"
    );
    assert!(crate::util::stderr(&o).contains("not restored: "));
}
