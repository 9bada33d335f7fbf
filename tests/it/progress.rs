//! `--progress-json` (issue 19) against a real Cyrus: progress lines whose counts only grow and
//! (on stderr) whose final line adds up to the result lines of backup, restore (into Cyrus and into files),
//! compact and push (to a Garage bucket); and bars on a terminal that leave the result lines on
//! stdout intact.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::spool_view::populate;
use crate::util::TempDir;

/// A progress line every few milliseconds, so even a short run shows several.
const FAST: (&str, &str) = ("MAILPACK_PROGRESS_INTERVAL_MS", "5");

fn run(args: &[&str]) -> Output {
    crate::util::bin()
        .args(args)
        .env(FAST.0, FAST.1)
        .output()
        .expect("run mailpack")
}

/// Every stdout line, parsed (a command that prints JSON lines prints nothing else there), then
/// the progress lines from stderr, where they go: stdout carries only results.
fn lines(o: &Output) -> Vec<Value> {
    let parse =
        |l: &str| -> Value { serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")) };
    let mut out: Vec<Value> = crate::util::stdout(o).lines().map(parse).collect();
    assert!(
        out.iter().all(|l| l["type"] != "progress"),
        "a progress line on stdout"
    );
    out.extend(progress_lines(o));
    out
}

/// The `progress` JSON lines on stderr.
fn progress_lines(o: &Output) -> Vec<Value> {
    crate::util::stderr(o)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// The progress lines of `lines`, checked: the command named, counts that never go down, one
/// final line and it the last of them. Returns the final line's data.
fn checked_progress(lines: &[Value], command: &str) -> Value {
    let progress: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "progress")
        .map(|l| &l["data"])
        .collect();
    assert!(!progress.is_empty(), "no progress line in {lines:?}");
    let mut before = [0u64; 3];
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["command"], command, "{p}");
        let now = [
            p["owners_done"].as_u64().unwrap(),
            p["bytes"].as_u64().unwrap(),
            p["messages"].as_u64().unwrap(),
        ];
        for k in 0..3 {
            assert!(
                now[k] >= before[k],
                "a count went down: {before:?} then {p}"
            );
        }
        before = now;
        let owners_total = p["owners_total"].as_u64().unwrap();
        assert!(now[0] <= owners_total || owners_total == 0, "{p}");
        let current = p["current"].as_array().unwrap();
        let in_progress: (u64, u64) = current.iter().fold((0, 0), |(b, m), o| {
            (
                b + o["bytes"].as_u64().unwrap(),
                m + o["messages"].as_u64().unwrap(),
            )
        });
        assert!(in_progress.0 <= now[1] && in_progress.1 <= now[2], "{p}");
        assert_eq!(p["final"], i == progress.len() - 1, "{p}");
    }
    let last = progress[progress.len() - 1].clone();
    assert_eq!(last["owners_done"], last["owners_total"], "{last}");
    assert_eq!(last["current"].as_array().unwrap().len(), 0, "{last}");
    last
}

fn sum(lines: &[Value], kind: &str, field: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l["type"] == kind)
        .map(|l| {
            l["data"][field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} in {l}"))
        })
        .sum()
}

/// A server with a few users, some big messages for alice (a backup that takes a while), and a
/// first backup of it in `dir`.
fn backed_up_server(dir: &Path) -> (CyrusServer, Vec<Value>) {
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    let big: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            format!(
                "Subject: big {i}\r\n\r\n{}\r\n",
                "attachment line\r\n".repeat(3000 + i)
            )
            .into_bytes()
        })
        .collect();
    server.deliver_many("x@example.org", &["alice"], &big);
    let o = run(&[
        "backup",
        "--config",
        server.config_path().to_str().unwrap(),
        "--archive-dir",
        dir.to_str().unwrap(),
        "--jobs",
        "2",
        "--json",
        "--progress-json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::stderr(&o));
    (server, lines(&o))
}

#[test]
fn backup_restore_and_compact_progress_lines_grow_and_add_up_to_the_results() {
    let dir = TempDir::new("progress");
    let archives = dir.path().join("archives");
    let (server, backup) = backed_up_server(&archives);
    let last = checked_progress(&backup, "backup");
    let users = backup.iter().filter(|l| l["type"] == "user").count() as u64;
    assert!(users >= 2, "{backup:?}");
    assert_eq!(last["owners_total"], users, "{last}");
    let added = sum(&backup, "user", "messages_added");
    assert!(added >= 40, "{backup:?}");
    assert_eq!(last["messages"], added, "{last}");
    assert_eq!(last["bytes"], sum(&backup, "user", "bytes_read"), "{last}");

    // Without --json: the human lines and the progress lines, one JSON object per line.
    let o = run(&[
        "backup",
        "--config",
        server.config_path().to_str().unwrap(),
        "--archive-dir",
        archives.to_str().unwrap(),
        "--progress-json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::stderr(&o));
    let out = crate::util::stdout(&o);
    assert!(out.lines().any(|l| l.starts_with("alice: run 2:")), "{out}");
    assert!(
        !out.contains("\"progress\""),
        "progress stays off stdout: {out}"
    );
    let last = checked_progress(&progress_lines(&o), "backup");
    assert_eq!(last["messages"], 0, "nothing new: {last}");

    // Restore of one user into files (the writer pool's path).
    let maildir = dir.path().join("maildir");
    let o = run(&[
        "restore",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
        "--maildir",
        maildir.to_str().unwrap(),
        "--json",
        "--progress-json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::stderr(&o));
    let restored = lines(&o);
    let last = checked_progress(&restored, "restore");
    assert_eq!(last["owners_total"], 1, "{last}");
    let written = sum(&restored, "restore", "messages_written");
    assert!(written >= 40, "{restored:?}");
    assert_eq!(last["messages"], written, "{last}");
    assert_eq!(
        last["bytes"],
        sum(&restored, "restore", "bytes_written"),
        "{last}"
    );

    // Every owner back into a fresh Cyrus (each message placed through the plan's count).
    let fresh = CyrusServer::start(CyrusOptions::default());
    let o = run(&[
        "restore",
        "--all",
        "--to-cyrus",
        "--config",
        fresh.config_path().to_str().unwrap(),
        "--archive-dir",
        archives.to_str().unwrap(),
        "--jobs",
        "2",
        "--json",
        "--progress-json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::stderr(&o));
    let restored = lines(&o);
    let last = checked_progress(&restored, "restore");
    let owners = restored.iter().filter(|l| l["type"] == "restore").count() as u64;
    assert_eq!(last["owners_total"], owners, "{last}");
    let written = sum(&restored, "restore", "messages_written");
    assert!(written >= 40, "{restored:?}");
    assert_eq!(last["messages"], written, "{last}");
    assert_eq!(
        last["bytes"],
        sum(&restored, "restore", "bytes_written"),
        "{last}"
    );

    // Compaction of every archive: the bytes of the archives rewritten. A flag change and one
    // more run leave an old version of alice's INBOX index to drop.
    let mut alice = server.imap("alice");
    alice.select("INBOX");
    alice.uid_store("1:*", "+FLAGS", &["\\Flagged"]);
    drop(alice);
    let o = run(&[
        "backup",
        "--config",
        server.config_path().to_str().unwrap(),
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::stderr(&o));
    // With --keep-days 0 the newest run is the state the window opens with once the clock has
    // moved past its second; the run before it, and its INBOX index, can go then.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = run(&[
        "compact",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--force",
        "--keep-days",
        "0",
        "--json",
        "--progress-json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::stderr(&o));
    let compacted = lines(&o);
    let last = checked_progress(&compacted, "compact");
    let outcomes: Vec<&Value> = compacted
        .iter()
        .filter(|l| l["type"] == "compaction")
        .map(|l| &l["data"]["compaction"])
        .collect();
    assert_eq!(last["owners_total"], outcomes.len() as u64, "{last}");
    let rewritten: u64 = outcomes
        .iter()
        .filter(|c| c["compacted"] == true)
        .map(|c| c["bytes_before"].as_u64().unwrap())
        .sum();
    assert!(rewritten > 0, "{compacted:?}");
    assert_eq!(last["bytes"], rewritten, "{last}");
    let kept: u64 = outcomes
        .iter()
        .filter(|c| c["compacted"] == true)
        .map(|c| c["entries_kept"].as_u64().unwrap())
        .sum();
    let messages = last["messages"].as_u64().unwrap();
    assert!(
        messages >= 40 && messages < kept,
        "{last}, {kept} entries kept"
    );
}

/// On a terminal the bars go to stderr; stdout, sent to a file, holds the result lines alone.
#[test]
fn bars_on_a_terminal_leave_the_result_lines_on_stdout_intact() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no `script` to give the command a terminal");
        return;
    }
    let dir = TempDir::new("progress-tty");
    let archives = dir.path().join("archives");
    let (server, _) = backed_up_server(&archives);
    server.lmtp_deliver("x@example.org", &["alice"], b"Subject: new\r\n\r\nnew\r\n");
    let out = dir.path().join("stdout");
    let err = dir.path().join("typescript");
    let command = format!(
        "{} backup --config {} --archive-dir {} > {}",
        env!("CARGO_BIN_EXE_mailpack"),
        server.config_path().display(),
        archives.display(),
        out.display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &command])
        .arg(&err)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let stdout = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(!lines.is_empty(), "{stdout:?}");
    for line in &lines {
        assert!(!line.contains('\x1b') && !line.contains('\r'), "{line:?}");
        assert!(line.contains(": run "), "{line:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("alice: run 2:") && l.contains(" 1 messages added")),
        "{stdout}"
    );
}

/// Push: the bytes read for upload add up to the `pushed` lines' archive and index bytes.
#[test]
fn push_progress_lines_add_up_to_the_bytes_pushed() {
    let garage = crate::support::garage::GarageServer::start_single();
    let work = TempDir::new("progress-push");
    let dir = work.path().join("archives");
    std::fs::create_dir_all(&dir).unwrap();
    for user in ["amy", "ben"] {
        let src = work.path().join(format!("src-{user}"));
        std::fs::create_dir_all(&src).unwrap();
        let mut rng = crate::util::Rng::new(user.len() as u64);
        for i in 0..30 {
            std::fs::write(src.join(format!("m{i}")), rng.mail_text(20_000 + i * 500)).unwrap();
        }
        crate::util::ok(&run(&[
            "put",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--user",
            user,
            src.to_str().unwrap(),
        ]));
    }
    let o = crate::util::bin()
        .envs(garage.env())
        .env(FAST.0, FAST.1)
        .args([
            "push",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--to",
            &garage.url("p"),
            "--jobs",
            "2",
            "--json",
            "--progress-json",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", crate::util::stderr(&o));
    let pushed = lines(&o);
    let last = checked_progress(&pushed, "push");
    let reports: Vec<&Value> = pushed
        .iter()
        .filter(|l| l["type"] == "pushed")
        .map(|l| &l["data"]["report"])
        .collect();
    assert_eq!(last["owners_total"], reports.len() as u64, "{last}");
    let bytes: u64 = reports
        .iter()
        .map(|r| r["archive_bytes"].as_u64().unwrap() + r["index_bytes"].as_u64().unwrap())
        .sum();
    assert!(bytes > 0, "{pushed:?}");
    assert_eq!(last["bytes"], bytes, "{last}");
    assert_eq!(last["messages"], 0, "{last}");
    let results: Vec<&Value> = pushed.iter().filter(|l| l["type"] != "progress").collect();
    assert_eq!(
        results.last().unwrap()["type"],
        "push-summary",
        "the summary closes the results"
    );
}
