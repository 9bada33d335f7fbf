//! `mailpack find` (issue 18) against a real Cyrus 3.6: messages found by decoded From, To/Cc,
//! Subject, exact Message-ID, internal date and mailbox across every run, with the copies'
//! histories (expunged, folder deleted, renamed); the find index is built by the first search,
//! kept current by backup and compaction, rebuilt when damaged, and always gives what a fresh
//! build gives. Each result restores with `restore --sha1`.

use std::path::Path;

use serde_json::Value;

use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::util::{ok, run, stderr, stdout, TempDir};

fn backup(server: &CyrusServer, dir: &Path) {
    ok(&run(&[
        "backup",
        "--config",
        server.config_path().to_str().unwrap(),
        "--archive-dir",
        dir.to_str().unwrap(),
    ]));
}

/// `find --json` for alice: the messages found and the summary.
fn find(dir: &Path, args: &[&str]) -> (Vec<Value>, Value, i32) {
    let o = run(&[
        &[
            "find",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--user",
            "alice",
            "--json",
        ][..],
        args,
    ]
    .concat());
    let code = o.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 1, "{}{}", stdout(&o), stderr(&o));
    let mut found = Vec::new();
    let mut summary = Value::Null;
    for line in stdout(&o).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["type"].as_str() {
            Some("message") => found.push(v["data"].clone()),
            Some("summary") => summary = v["data"].clone(),
            other => panic!("unexpected line type {other:?}: {line}"),
        }
    }
    assert_eq!(
        code == 1,
        found.is_empty(),
        "exit 1 exactly when nothing is found"
    );
    (found, summary, code)
}

fn subjects(found: &[Value]) -> Vec<String> {
    let mut s: Vec<String> = found
        .iter()
        .map(|m| m["subject"].as_str().unwrap_or("-").to_string())
        .collect();
    s.sort();
    s
}

fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn find_searches_every_run_by_decoded_headers_and_dates_and_its_index_stays_consistent() {
    let server = CyrusServer::start(CyrusOptions::default());
    let work = TempDir::new("find");
    let dir = work.path().join("archives");
    server.create_user("alice");
    let mut imap = server.imap("alice");
    imap.create("Projects");
    let invoice_march = b"From: =?UTF-8?Q?Bj=C3=B6rn_Bauer?= <bjorn@example.com>\r\n\
To: alice@example.org\r\n\
Subject: =?ISO-8859-1?Q?Rechnung_M=E4rz?= invoice 2026-03\r\n\
Message-ID: <inv-march@example.com>\r\n\
Date: Tue, 3 Mar 2026 09:15:00 +0000\r\n\r\nPlease pay.\r\n";
    let invoice_april = b"From: Bob <bob@example.com>\r\nTo: alice@example.org\r\n\
Subject: Invoice April\r\nMessage-ID: <inv-april@example.com>\r\n\
Date: Fri, 3 Apr 2026 09:15:00 +0000\r\n\r\nPay again.\r\n";
    let lunch = b"From: Carol <carol@example.com>\r\nTo: alice@example.org\r\n\
Cc: Dave Dent <dave@example.net>\r\nSubject: Lunch\r\nMessage-ID: <lunch@example.com>\r\n\r\nNoon?\r\n";
    let march_uid = imap.append(
        "INBOX",
        &[],
        Some("03-Mar-2026 09:16:00 +0000"),
        invoice_march,
    );
    let april_uid = imap.append(
        "INBOX",
        &["\\Seen"],
        Some("03-Apr-2026 09:16:00 +0000"),
        invoice_april,
    );
    imap.append("INBOX", &[], Some("10-Apr-2026 12:00:00 +0000"), lunch);
    imap.append(
        "Projects",
        &["$Work"],
        Some("11-Apr-2026 12:00:00 +0000"),
        lunch,
    );
    // Deleted before the first backup: Cyrus keeps it (delete_mode: delayed) and so does the
    // archive; its message is findable under the name it had.
    imap.create("Old");
    imap.append(
        "Old",
        &[],
        None,
        b"From: x@example.com\r\nSubject: ancient receipt\r\n\r\nx\r\n",
    );
    imap.delete("Old");
    backup(&server, &dir);

    // Run 2: the April invoice expunged, the March one flagged, Projects deleted.
    imap.select("INBOX");
    imap.uid_store(&april_uid.to_string(), "+FLAGS", &["\\Deleted"]);
    imap.uid_expunge(&april_uid.to_string());
    imap.uid_store(&march_uid.to_string(), "+FLAGS", &["\\Flagged"]);
    imap.unselect();
    imap.delete("Projects");
    backup(&server, &dir);

    // The first search builds the index.
    let (found, summary, _) = find(&dir, &["--from", "BJÖRN"]);
    assert_eq!(summary["index"], "built", "{summary}");
    assert_eq!(found.len(), 1, "{found:?}");
    let march = &found[0];
    assert_eq!(march["subject"], "Rechnung März invoice 2026-03");
    assert_eq!(march["from"], "Björn Bauer <bjorn@example.com>");
    assert_eq!(march["message_id"], "inv-march@example.com");
    assert_eq!(march["date"], 1_772_529_300);
    assert_eq!(march["live"], true);
    let copy = &march["copies"][0];
    assert_eq!(copy["mailbox"], "INBOX");
    assert_eq!(copy["uid"], march_uid);
    assert_eq!(copy["first_run"], 1);
    assert_eq!(copy["last_run"], 2);
    assert!(
        copy["flags"]
            .as_array()
            .unwrap()
            .contains(&Value::from("\\Flagged")),
        "{copy}"
    );
    let march_sha1 = march["sha1"].as_str().unwrap().to_string();
    assert_eq!(march_sha1, sha1_hex(invoice_march));
    let index_file = dir.join("alice.find");
    assert!(index_file.exists());

    // Subject words are decoded and case-folded; several runs are searched.
    let (found, summary, _) = find(&dir, &["--subject", "INVOICE"]);
    assert_eq!(summary["index"], "current");
    assert_eq!(
        subjects(&found),
        ["Invoice April", "Rechnung März invoice 2026-03"]
    );
    let (found, _, _) = find(&dir, &["--subject", "märz"]);
    assert_eq!(found.len(), 1);

    // The expunged April invoice: only it is "deleted", with when and how.
    let (found, _, _) = find(&dir, &["--subject", "invoice", "--deleted-only"]);
    assert_eq!(subjects(&found), ["Invoice April"]);
    let april = &found[0];
    assert_eq!(april["live"], false);
    let copy = &april["copies"][0];
    assert_eq!(copy["first_run"], 1);
    assert_eq!(copy["last_run"], 1);
    assert_eq!(copy["ended"]["how"], "expunged");
    assert_eq!(copy["ended"]["run"], 2);
    assert!(copy["ended"]["time"].as_i64().unwrap() > 1_700_000_000);

    // Cc is searched by --to; the copy in the deleted folder ended with it.
    let (found, _, _) = find(&dir, &["--to", "dave dent"]);
    assert_eq!(found.len(), 1, "{found:?}");
    let mut copies: Vec<(String, bool, String)> = found[0]["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["mailbox"].as_str().unwrap().to_string(),
                c["live"].as_bool().unwrap(),
                c["ended"]["how"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    copies.sort();
    assert_eq!(
        copies,
        [
            ("INBOX".to_string(), true, String::new()),
            ("Projects".to_string(), false, "folder_deleted".to_string())
        ]
    );
    let (found, _, _) = find(&dir, &["--mailbox", "Projects"]);
    assert_eq!(subjects(&found), ["Lunch"]);
    assert!(
        find(&dir, &["--mailbox", "Projects", "--subject", "invoice"])
            .0
            .is_empty()
    );

    let (found, _, _) = find(&dir, &["--mailbox", "Old", "--deleted-only"]);
    assert_eq!(subjects(&found), ["ancient receipt"]);
    let copy = &found[0]["copies"][0];
    assert_eq!(copy["mailbox"], "Old (deleted)", "{copy}");
    assert_eq!(copy["first_run"], Value::Null);
    assert_eq!(copy["ended"]["how"], "folder_deleted");

    // Message-ID is exact; internal dates bound.
    let (found, _, _) = find(&dir, &["--message-id", "<inv-march@example.com>"]);
    assert_eq!(found.len(), 1);
    let (found, _, code) = find(&dir, &["--message-id", "inv-march@example"]);
    assert!(found.is_empty());
    assert_eq!(code, 1);
    let (found, _, _) = find(&dir, &["--since", "2026-04-01", "--before", "2026-04-10"]);
    assert_eq!(subjects(&found), ["Invoice April"]);
    let (found, _, _) = find(
        &dir,
        &["--since", "2026-04-10T12:00", "--before", "2026-05-01"],
    );
    assert_eq!(subjects(&found), ["Lunch"]);

    // A result restores by its SHA-1, byte for byte.
    let out = work.path().join("eml");
    ok(&run(&[
        "restore",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "alice",
        "--sha1",
        &march_sha1,
        "--eml",
        out.to_str().unwrap(),
    ]));
    let restored: Vec<_> = walkdir::WalkDir::new(&out)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .collect();
    assert_eq!(restored.len(), 1);
    assert_eq!(
        sha1_hex(&std::fs::read(restored[0].path()).unwrap()),
        march_sha1
    );

    // A backup keeps an existing index current: the next search reads it as is and sees the
    // new run; it equals a fresh build.
    imap.append(
        "INBOX",
        &[],
        None,
        b"From: eve@example.com\r\nSubject: Invoice May\r\n\r\nx\r\n",
    );
    imap.logout();
    backup(&server, &dir);
    let (all_kept, summary, _) = find(&dir, &[]);
    assert_eq!(summary["index"], "current", "{summary}");
    assert_eq!(summary["runs"], 3);
    assert!(subjects(&all_kept).contains(&"Invoice May".to_string()));
    // Read as it streams (a current index keeps only what matches): the count of messages
    // indexed is the whole index's all the same.
    let (_, narrow, _) = find(&dir, &["--subject", "may"]);
    assert_eq!(narrow["index"], "current");
    assert!(
        summary["messages_indexed"].as_u64().is_some_and(|n| n >= 3),
        "{summary}"
    );
    assert_eq!(narrow["messages_indexed"], summary["messages_indexed"]);
    std::fs::remove_file(&index_file).unwrap();
    let (all_fresh, fresh, _) = find(&dir, &[]);
    assert_eq!(fresh["index"], "built");
    assert_eq!(fresh["messages_indexed"], summary["messages_indexed"]);
    assert_eq!(
        all_kept, all_fresh,
        "an index kept up to date equals a fresh build"
    );

    // A damaged index is rebuilt with a notice, and answers the same.
    let mut bytes = std::fs::read(&index_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&index_file, &bytes).unwrap();
    let o = run(&[
        "find",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "alice",
        "--subject",
        "invoice",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("rebuilding the find index"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("alice.find"),
        "the notice names the file: {}",
        stderr(&o)
    );
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    let (again, summary, _) = find(&dir, &[]);
    assert_eq!(summary["index"], "current");
    assert_eq!(again, all_fresh);

    // Compaction leaves the index as it is; it rewrote the archive (the old index versions are
    // dead once the clock is past the last run: `--keep-days 0` counts whole seconds), so the
    // next search finds the index behind it and walks the history again, and the result equals
    // a fresh build.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let compacted = run(&[
        "compact",
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "alice",
        "--force",
        "--keep-days",
        "0",
        "--json",
    ]);
    ok(&compacted);
    let rewritten = stdout(&compacted).contains("\"compacted\":true");
    let (after, summary, _) = find(&dir, &[]);
    assert!(rewritten, "{}", stdout(&compacted));
    assert_eq!(summary["index"], "built", "{summary}");
    let (_, summary, _) = find(&dir, &[]);
    assert_eq!(
        summary["index"], "current",
        "the search saved it: {summary}"
    );
    std::fs::remove_file(&index_file).unwrap();
    let (fresh, _, _) = find(&dir, &[]);
    assert_eq!(after, fresh);
    assert!(subjects(&fresh).contains(&"Rechnung März invoice 2026-03".to_string()));
}
