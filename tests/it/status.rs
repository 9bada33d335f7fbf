//! Knowing the backups work (issue 17, the parts landed so far): `status` per owner against a
//! real Cyrus's backups (fresh, stale by the clock given, failed), legal holds that compaction
//! obeys, and `--metrics-file` read back with the Prometheus project's own text-format parser.

use std::path::Path;
use std::process::Output;

use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::util::{ok, run, stderr, stdout, TempDir};

fn server_with(users: &[&str]) -> CyrusServer {
    let server = CyrusServer::start(CyrusOptions::default());
    for (i, user) in users.iter().enumerate() {
        server.create_user(user);
        let mail: Vec<Vec<u8>> = (0..4)
            .map(|m| format!("Subject: {user} {m}\r\n\r\nbody {i} {m}\r\n").into_bytes())
            .collect();
        server.deliver_many("x@example.org", &[user], &mail);
    }
    server
}

fn backup(server: &CyrusServer, dir: &Path, extra: &[&str]) -> Output {
    run(&[
        &[
            "backup",
            "--config",
            server.config_path().to_str().unwrap(),
            "--archive-dir",
            dir.to_str().unwrap(),
        ][..],
        extra,
    ]
    .concat())
}

fn status(dir: &Path, extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
    let o = run(&[
        &["status", "--archive-dir", dir.to_str().unwrap(), "--json"][..],
        extra,
    ]
    .concat());
    let lines = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (o.status.code(), lines)
}

fn owner<'a>(lines: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    &lines
        .iter()
        .find(|v| v["type"] == "owner-status" && v["data"]["owner"] == name)
        .unwrap_or_else(|| panic!("no status line for {name}: {lines:#?}"))["data"]
}

#[test]
fn status_says_which_owners_are_fresh_stale_or_failed() {
    let server = server_with(&["alice", "bob"]);
    let work = TempDir::new("status");
    let dir = work.path().join("archives");
    ok(&backup(&server, &dir, &[]));
    let (code, lines) = status(&dir, &[]);
    assert_eq!(code, Some(0), "{lines:#?}");
    let alice = owner(&lines, "alice");
    assert_eq!(alice["stale"], false);
    assert_eq!(alice["failed"], false);
    assert_eq!(alice["runs"], 1);
    assert!(alice["archive_bytes"].as_u64().unwrap() > 0);
    assert!(alice["live_percent"].as_f64().unwrap() > 99.0);
    let summary = lines
        .iter()
        .find(|v| v["type"] == "status-summary")
        .unwrap();
    assert_eq!(
        summary["data"]["owners"], 3,
        "two users and the server: {lines:#?}"
    );

    // A day and three hours on, with the default 26h: everyone is stale (exit 1); with 2d not.
    let last = alice["last_run_time"].as_i64().unwrap();
    let later = (last + 27 * 3600).to_string();
    let (code, lines) = status(&dir, &["--now", &later]);
    assert_eq!(code, Some(1));
    assert_eq!(owner(&lines, "bob")["stale"], true);
    let (code, _) = status(&dir, &["--now", &later, "--stale-after", "2d"]);
    assert_eq!(code, Some(0));

    // bob's archive replaced by another program's file: his next backup fails, and says why.
    std::fs::remove_file(dir.join("bob.tar.gz")).unwrap();
    std::fs::remove_file(dir.join("bob.idx")).unwrap();
    std::fs::write(dir.join("bob.tar.gz"), b"not an archive at all").unwrap();
    let o = backup(&server, &dir, &[]);
    assert_ne!(o.status.code(), Some(0));
    let (code, lines) = status(&dir, &[]);
    assert_eq!(code, Some(1));
    let bob = owner(&lines, "bob");
    assert_eq!(bob["failed"], true, "{bob:#}");
    assert!(
        bob["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("bob.tar.gz"),
        "{bob:#}"
    );
    assert_eq!(owner(&lines, "alice")["failed"], false);
    // The plain output names him too.
    let o = run(&["status", "--archive-dir", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("bob:") && l.contains("FAILED")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_held_user_keeps_everything_through_compaction_until_released() {
    let server = server_with(&["carol"]);
    let work = TempDir::new("hold");
    let dir = work.path().join("archives");
    ok(&backup(&server, &dir, &[]));
    // Expunge everything so a forced compaction would drop the messages; the first run must
    // fall outside a retention of 0 days, which counts in seconds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut imap = server.imap("carol");
    imap.select("INBOX");
    imap.uid_store("1:*", "+FLAGS", &["\\Deleted"]);
    imap.expunge();
    drop(imap);
    ok(&backup(&server, &dir, &[]));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let archive = dir.join("carol.tar.gz");
    let before = std::fs::read(&archive).unwrap();

    ok(&run(&[
        "hold",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "carol",
        "--reason",
        "case 1234",
    ]));
    let o = run(&[
        "compact",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--force",
        "--keep-days",
        "0",
        "--keep-deleted-days",
        "0",
    ]);
    assert!(ok(&o).contains("legal hold"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        before,
        "a held archive changed"
    );
    let (_, lines) = status(&dir, &[]);
    assert!(owner(&lines, "carol")["held"]
        .as_str()
        .unwrap()
        .contains("case 1234"));
    // backup --compact obeys it too.
    ok(&backup(&server, &dir, &["--compact", "--keep-days", "0"]));
    assert_eq!(
        &std::fs::read(&archive).unwrap()[..before.len()],
        &before[..],
        "a held archive was rewritten"
    );

    ok(&run(&[
        "hold",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "carol",
        "--release",
    ]));
    let o = run(&[
        "compact",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--force",
        "--keep-days",
        "0",
        "--keep-deleted-days",
        "0",
    ]);
    assert!(ok(&o).contains("compacted"), "{}", stdout(&o));
    assert!(std::fs::metadata(&archive).unwrap().len() < before.len() as u64);
}

/// Parses a metrics file with prometheus_client's parser (the Prometheus project's Python
/// client): (name, labels as "k=v,…", value) per sample.
fn parse_metrics(path: &Path) -> Vec<(String, String, f64)> {
    let python = crate::support::moto::bin_dir().join("python");
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
        \x20   assert f.type == 'gauge', f.type\n\
        \x20   for s in f.samples:\n\
        \x20       print(s.name, ','.join('%s=%s' % kv for kv in sorted(s.labels.items())), s.value)\n";
    let o = std::process::Command::new(&python)
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .expect("run the tools virtualenv's python (scripts/setup-python-tools)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            (
                f.next().unwrap().to_string(),
                f.next().unwrap().to_string(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn value(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in {samples:#?}"))
        .2
}

#[test]
fn metrics_files_parse_as_prometheus_text_and_say_what_the_run_did() {
    let server = server_with(&["dan", "eve"]);
    let work = TempDir::new("metrics");
    let dir = work.path().join("archives");
    let prom = work.path().join("backup.prom");
    let o = backup(
        &server,
        &dir,
        &["--metrics-file", prom.to_str().unwrap(), "--json"],
    );
    ok(&o);
    let added: u64 = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "user")
        .map(|v| v["data"]["messages_added"].as_u64().unwrap())
        .sum();
    let m = parse_metrics(&prom);
    assert_eq!(
        value(&m, "mailpack_last_run_owners", "command=backup,result=ok"),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "mailpack_last_run_owners",
            "command=backup,result=failed"
        ),
        0.0
    );
    assert_eq!(
        value(&m, "mailpack_last_run_messages_added", "command=backup"),
        added as f64
    );
    assert_eq!(added, 8);
    assert_eq!(
        value(&m, "mailpack_last_run_success", "command=backup"),
        1.0
    );
    let success = value(
        &m,
        "mailpack_last_success_timestamp_seconds",
        "command=backup",
    );
    let archives: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("shared")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(
        value(&m, "mailpack_archive_bytes", "command=backup"),
        archives as f64
    );

    // A failed run: success 0, and the last success time carried over.
    std::fs::remove_file(dir.join("eve.tar.gz")).unwrap();
    std::fs::remove_file(dir.join("eve.idx")).unwrap();
    std::fs::write(dir.join("eve.tar.gz"), b"foreign").unwrap();
    let o = backup(&server, &dir, &["--metrics-file", prom.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    let m = parse_metrics(&prom);
    assert_eq!(
        value(&m, "mailpack_last_run_success", "command=backup"),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "mailpack_last_run_owners",
            "command=backup,result=failed"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "mailpack_last_success_timestamp_seconds",
            "command=backup"
        ),
        success
    );

    // compact and verify write theirs.
    let cprom = work.path().join("compact.prom");
    ok(&run(&[
        "compact",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "dan",
        "--metrics-file",
        cprom.to_str().unwrap(),
    ]));
    let m = parse_metrics(&cprom);
    assert_eq!(
        value(&m, "mailpack_last_run_owners", "command=compact,result=ok"),
        1.0
    );
    let live = value(&m, "mailpack_archive_live_ratio", "command=compact");
    assert!((0.0..=1.0).contains(&live));
    let vprom = work.path().join("verify.prom");
    ok(&run(&[
        "verify",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "dan",
        "--metrics-file",
        vprom.to_str().unwrap(),
    ]));
    let m = parse_metrics(&vprom);
    assert_eq!(
        value(&m, "mailpack_last_run_owners", "command=verify,result=ok"),
        1.0
    );
    assert_eq!(
        value(&m, "mailpack_last_run_read_bytes", "command=verify"),
        std::fs::metadata(dir.join("dan.tar.gz")).unwrap().len() as f64
    );
}

fn check(server: &CyrusServer, dir: &Path) -> (Option<i32>, String) {
    let o = run(&[
        "verify",
        "--against-spool",
        "--config",
        server.config_path().to_str().unwrap(),
        "--archive-dir",
        dir.to_str().unwrap(),
    ]);
    (o.status.code(), format!("{}{}", stdout(&o), stderr(&o)))
}

#[test]
fn verify_against_spool_finds_what_the_archive_lacks_and_the_next_backup_heals_it() {
    let server = server_with(&["fay", "gus"]);
    let work = TempDir::new("against-spool");
    let dir = work.path().join("archives");
    ok(&backup(&server, &dir, &[]));
    let (code, out) = check(&server, &dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("fay: 1 mailboxes, 4 messages: ok"), "{out}");

    // A mailbox made after the backup is named.
    let mut imap = server.imap("gus");
    imap.create("Later");
    drop(imap);
    let (code, out) = check(&server, &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("gus: mailbox user.gus.Later is not in the archive"),
        "{out}"
    );
    ok(&backup(&server, &dir, &["--user", "gus"]));

    // Damage where fay's messages are, and let repair drop what no longer reads.
    let paths = mailpack::store::ArchivePaths::for_user(&dir, "fay").unwrap();
    let member = {
        let a = mailpack::store::Archive::open(&paths, &mut Vec::new()).unwrap();
        a.state_at(None)
            .into_iter()
            .find(|(_, e)| e.name.starts_with("files/"))
            .unwrap()
            .1
            .placement
            .member
    };
    let mut bytes = std::fs::read(&paths.archive).unwrap();
    bytes[member as usize + 40] ^= 0x55;
    std::fs::write(&paths.archive, &bytes).unwrap();
    let o = run(&[
        "repair",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "fay",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));

    let (code, out) = check(&server, &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is not stored"), "{out}");
    assert!(
        out.contains("the next backup reads everything again"),
        "{out}"
    );
    assert!(dir.join("fay.heal").exists());
    assert!(out.contains("gus: 2 mailboxes, 4 messages: ok"), "{out}");

    ok(&backup(&server, &dir, &[]));
    let (code, out) = check(&server, &dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(!dir.join("fay.heal").exists());
    // And the healed archive reads through.
    ok(&run(&[
        "verify",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "fay",
    ]));
}
