//! Restore drills (issue 17) against a real Cyrus 3.6: a healthy server passes while it is
//! being changed; a flipped byte in a message member, a lost index version and archived flags
//! that differ from the live ones in an unchanged mailbox are each found and named; the result
//! reaches `status` and the metrics file.

use std::path::Path;
use std::process::Output;

use mailpack::archive::RunSummary;
use mailpack::io::SourceStat;
use mailpack::store::{Archive, ArchivePaths, StoreWriter, WriterOptions};

use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::spool_view::populate;
use crate::util::{run, stderr, stdout, TempDir};

fn drill(server: &CyrusServer, dir: &Path, extra: &[&str]) -> Output {
    run(&[
        &[
            "drill",
            "--config",
            server.config_path().to_str().unwrap(),
            "--archive-dir",
            dir.to_str().unwrap(),
            "--all",
            "--seed",
            "7",
        ][..],
        extra,
    ]
    .concat())
}

fn backed_up(tag: &str) -> (CyrusServer, TempDir, std::path::PathBuf) {
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    // A message larger than a member, so that some members hold nothing but message bytes.
    let big: String = (0..40_000)
        .map(|i| format!("line {i} of an attachment-sized message body\r\n"))
        .collect();
    server.lmtp_deliver(
        "x@example.org",
        &["alice"],
        format!("Subject: big\r\n\r\n{big}").as_bytes(),
    );
    let work = TempDir::new(tag);
    let dir = work.path().join("archives");
    let o = run(&[
        "backup",
        "--config",
        server.config_path().to_str().unwrap(),
        "--archive-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    (server, work, dir)
}

#[test]
fn a_healthy_server_passes_its_drill_while_it_is_being_changed() {
    let (server, work, dir) = backed_up("drill-healthy");
    let o = drill(&server, &dir, &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("drill seed 7:"), "{out}");
    assert!(
        out.lines()
            .filter(|l| l.contains("unchanged: identical"))
            .count()
            >= 4,
        "{out}"
    );

    // Live load: flags and new mail while the drill runs; changed mailboxes are compared with
    // the archive, not reported.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let addr = server.imap_addr();
        let lmtp_addr = server.lmtp_addr();
        std::thread::spawn(move || {
            let mut imap = crate::cyrus::Imap::connect(addr);
            imap.login("alice", crate::cyrus::PASSWORD);
            imap.select("INBOX");
            let mut lmtp = crate::cyrus::Lmtp::connect(lmtp_addr);
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let op = if i.is_multiple_of(2) {
                    "+FLAGS"
                } else {
                    "-FLAGS"
                };
                imap.uid_store("1:*", op, &["$Churn"]);
                let _ = lmtp.deliver(
                    "x@example.org",
                    &["bob"],
                    format!("Subject: churn {i}\r\n\r\nbody {i}\r\n").as_bytes(),
                );
                i += 1;
            }
        })
    };
    let o = drill(&server, &dir, &[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("changed: identical"), "{}", stdout(&o));

    let st = run(&["status", "--archive-dir", dir.to_str().unwrap(), "--json"]);
    let alice = stdout(&st)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["data"]["owner"] == "alice")
        .unwrap();
    assert_eq!(alice["data"]["last_drill"]["ok"], true);
    assert_eq!(alice["data"]["last_drill"]["seed"], 7);
    let prom = work.path().join("drill.prom");
    let o = drill(&server, &dir, &["--metrics-file", prom.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("mailpack_drill_differences{command=\"drill\"} 0"),
        "{text}"
    );
}

/// The member of the first message file that shares its member with no metadata.
fn message_only_member(paths: &ArchivePaths) -> u64 {
    let a = Archive::open(paths, &mut Vec::new()).unwrap();
    let mut by_member: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for run in a.runs() {
        for e in a.entries_of(run) {
            by_member
                .entry(e.placement.member)
                .or_default()
                .push(e.name.clone());
        }
    }
    *by_member
        .iter()
        .find(|(_, names)| names.iter().all(|n| n.starts_with("files/")))
        .expect("a member of message files only")
        .0
}

#[test]
fn a_flipped_byte_in_a_message_member_and_a_lost_index_are_found() {
    let (server, _work, dir) = backed_up("drill-damage");
    let paths = ArchivePaths::for_user(&dir, "alice").unwrap();
    let member = message_only_member(&paths);
    let mut bytes = std::fs::read(&paths.archive).unwrap();
    bytes[member as usize + 60] ^= 0x10;
    std::fs::write(&paths.archive, &bytes).unwrap();
    let o = drill(&server, &dir, &[]);
    let dbg = run(&[
        "ls",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "alice",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "member {member}: {}{}\nls: {}",
        stdout(&o),
        stderr(&o),
        stderr(&dbg)
    );
    assert!(stdout(&o).contains("does not restore"), "{}", stdout(&o));
    let st = run(&["status", "--archive-dir", dir.to_str().unwrap()]);
    assert_eq!(st.status.code(), Some(1));
    assert!(stdout(&st).contains("DRILL FAILED"), "{}", stdout(&st));
    // A backup host that cannot see the spool finds it too, from the archive alone.
    let o = run(&[
        "drill",
        "--against-archive-only",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--all",
        "--seed",
        "7",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("does not restore"), "{}", stdout(&o));
    assert!(stdout(&o).contains("archive-only"), "{}", stdout(&o));

    // Undo, then lose the member holding INBOX's cyrus.index to damage and repair.
    bytes[member as usize + 60] ^= 0x10;
    std::fs::write(&paths.archive, &bytes).unwrap();
    let index_member = {
        let a = Archive::open(&paths, &mut Vec::new()).unwrap();
        let (_, e) = a
            .state_at(None)
            .into_iter()
            .find(|(_, e)| e.name.ends_with("/cyrus.index"))
            .unwrap();
        e.placement.member
    };
    bytes[index_member as usize + 60] ^= 0x10;
    std::fs::write(&paths.archive, &bytes).unwrap();
    let o = run(&[
        "repair",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "alice",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let o = drill(&server, &dir, &[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("metadata:") || stdout(&o).contains("not in the archive's latest run"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn archived_flags_that_differ_from_an_unchanged_live_mailbox_are_named() {
    let (server, _work, dir) = backed_up("drill-flags");
    // Stand in for a backup that stored wrong flags: INBOX's live cyrus.index with \Flagged
    // toggled on its first record (record CRC made right), stored with the live file's stat.
    let inbox = server.mailbox_meta_path("user/alice").join("cyrus.index");
    let live = std::fs::read(&inbox).unwrap();
    let meta = std::fs::metadata(&inbox).unwrap();
    let be = |at: usize| u32::from_be_bytes(live[at..at + 4].try_into().unwrap()) as usize;
    let (minor, start, record_size) = (be(8), be(12), be(16));
    // formats/cyrus.md: v16-v19 records are 112 bytes (system flags at 32, CRC at 108), v20's
    // 144 (36, 140).
    let (flags_at, crc_at) = match (minor, record_size) {
        (16..=19, 112) => (32, 108),
        (20, 144) => (36, 140),
        _ => panic!("index v{minor}, records of {record_size}"),
    };
    let mut forged = live.clone();
    let rec = start;
    forged[rec + flags_at + 3] ^= 0x02; // FLAG_FLAGGED in the big-endian system_flags word
    let crc = crc32fast::hash(&forged[rec..rec + crc_at]);
    forged[rec + crc_at..rec + crc_at + 4].copy_from_slice(&crc.to_be_bytes());

    let paths = ArchivePaths::for_user(&dir, "alice").unwrap();
    let uid = {
        let a = Archive::open(&paths, &mut Vec::new()).unwrap();
        let (_, e) = a
            .state_at(None)
            .into_iter()
            .find(|(_, e)| e.name.ends_with("/cyrus.index") && e.size == live.len() as u64)
            .map(|(r, e)| (r, e.clone()))
            .unwrap();
        e.name.clone()
    };
    let mut notices = Vec::new();
    let mut store = StoreWriter::open(&paths, &WriterOptions::default(), &mut notices).unwrap();
    store
        .writer()
        .append_bytes(&uid, &forged, Some(SourceStat::of(&meta)), 0)
        .unwrap();
    store
        .commit(&RunSummary {
            time: mailpack::time::now(),
            host: "test".into(),
            ..Default::default()
        })
        .unwrap();
    drop(store);

    let o = drill(&server, &dir, &[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.contains(" flags: archived ") && l.contains("\\Flagged")),
        "{out}"
    );
}
