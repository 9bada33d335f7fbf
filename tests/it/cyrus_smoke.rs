//! Proves the real-Cyrus fixture (support/cyrus/) against Cyrus 3.6: every operation later tests
//! rely on is performed and read back over IMAP (and on disk where it matters).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use crate::cyrus::{
    crlf, internaldate_epoch, mutf7_decode, mutf7_encode, sha1_hex_of, CyrusOptions, CyrusServer,
    Layout, VirtDomains,
};

fn message(subject: &str, body: &str) -> Vec<u8> {
    crlf(
        format!(
            "From: Sender <sender@example.org>\nTo: someone@example.org\nSubject: {subject}\n\
             Message-ID: <{subject}@mailpack.test>\nDate: Mon, 6 Jan 2020 10:00:00 +0000\n\n{body}\n"
        )
        .as_bytes(),
    )
}

/// LMTP to two users in one transaction stores one file hard-linked into both INBOXes.
fn check_multi_recipient_delivery(server: &CyrusServer, alice: &str, bob: &str) {
    let msg = message(
        "shared",
        "one file, two mailboxes\n.leading dot survives stuffing",
    );
    server.lmtp_deliver("sender@example.org", &[alice, bob], &msg);

    let a = server.imap(alice).fetch_all("INBOX");
    let b = server.imap(bob).fetch_all("INBOX");
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(a[0].uid, 1);
    assert_eq!(a[0].sha1, b[0].sha1, "both recipients got the same bytes");
    assert_eq!(a[0].size, b[0].size);

    // lmtpd prepends Return-Path/Received; what we sent must be the tail, unchanged.
    let body = {
        let mut c = server.imap(alice);
        c.examine("INBOX");
        c.fetch_body(1)
    };
    assert!(
        body.ends_with(&msg),
        "stored message does not end with the sent bytes"
    );
    assert_eq!(sha1_hex_of(&body), a[0].sha1);
    assert_eq!(body.len() as u64, a[0].size);

    let files = server.find_message_files(&a[0].sha1);
    assert_eq!(
        files.len(),
        2,
        "expected one spool file per INBOX: {files:?}"
    );
    let m0 = std::fs::metadata(&files[0]).unwrap();
    let m1 = std::fs::metadata(&files[1]).unwrap();
    assert_eq!(
        m0.ino(),
        m1.ino(),
        "{files:?} are not hard links of each other"
    );
    assert_eq!(m0.nlink(), 2);
    assert!(files.iter().all(|f| f.file_name().unwrap() == "1."));
}

#[test]
fn cyrus_uuid_layout_full_workflow() {
    let server = CyrusServer::start(CyrusOptions::default());
    server.create_user("alice");
    server.create_user("bob");

    let mut admin = server.admin();
    let users: Vec<String> = admin.list("user/%").into_iter().map(|e| e.name).collect();
    assert_eq!(users, ["user/alice", "user/bob"]);
    admin.logout();

    check_multi_recipient_delivery(&server, "alice", "bob");
    // 3.6 default layout: one directory per mailbox under uuid/<c1>/<c2>/<mailboxid>/.
    let inbox = server.imap("alice").examine("INBOX");
    let dir = server.mailbox_path("user/alice");
    let mid = &inbox.mailboxid;
    assert_eq!(
        dir,
        server
            .spool_dir()
            .join("uuid")
            .join(&mid[0..1])
            .join(&mid[1..2])
            .join(mid),
        "mbpath disagrees with the UUID layout"
    );
    assert!(dir.join("1.").is_file() && dir.join("cyrus.index").is_file());

    let mut c = server.imap("alice");
    let before = c.select("INBOX");
    assert_eq!((before.exists, before.uidnext), (1, 2));
    assert!(before.uidvalidity > 0 && before.highestmodseq > 0);

    // APPEND with flags and past internal dates comes back exactly as given.
    let m2 = message("appended", "appended body");
    let m3 = message("second", "another body");
    let uid2 = c.append(
        "INBOX",
        &["\\Seen", "\\Flagged", "$Label1"],
        Some("15-Mar-2019 08:09:10 +0000"),
        &m2,
    );
    let uid3 = c.append("INBOX", &[], Some("01-Jan-2020 10:00:00 +0100"), &m3);
    assert_eq!((uid2, uid3), (2, 3));
    let msgs = c.fetch_all("INBOX");
    assert_eq!(msgs.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 2, 3]);
    let got2 = &msgs[1];
    assert_eq!(got2.flags, ["$Label1", "\\Flagged", "\\Seen"]);
    assert_eq!(got2.internaldate, "15-Mar-2019 08:09:10 +0000");
    assert_eq!(got2.size, m2.len() as u64);
    assert_eq!(got2.sha1, sha1_hex_of(&m2));
    // The server shows dates in its own zone (TZ=UTC); the instant is preserved.
    assert_eq!(msgs[2].internaldate, " 1-Jan-2020 09:00:00 +0000");
    assert_eq!(
        internaldate_epoch(&msgs[2].internaldate),
        internaldate_epoch("01-Jan-2020 10:00:00 +0100")
    );
    assert!(msgs[2].flags.is_empty(), "{:?}", msgs[2].flags);
    // Cyrus sets a message file's mtime to its internal date.
    let f2 = server.find_message_files(&got2.sha1);
    assert_eq!(f2.len(), 1);
    assert_eq!(
        std::fs::metadata(&f2[0]).unwrap().mtime(),
        internaldate_epoch(&got2.internaldate)
    );

    // STORE.
    c.select("INBOX");
    c.uid_store("3", "+FLAGS", &["\\Answered", "$Forwarded"]);
    c.uid_store("2", "-FLAGS", &["\\Flagged"]);
    let msgs = c.fetch_all("INBOX");
    assert_eq!(msgs[1].flags, ["$Label1", "\\Seen"]);
    assert_eq!(msgs[2].flags, ["$Forwarded", "\\Answered"]);

    // COPY and MOVE (altnamespace: personal folders are top-level names).
    c.create("Archive");
    c.create("Archive/2019");
    c.select("INBOX");
    assert_eq!(c.uid_copy("2", "Archive"), [(2, 1)]);
    assert_eq!(c.uid_move("3", "Archive/2019"), [(3, 1)]);
    let inbox_now: Vec<u32> = c.fetch_all("INBOX").iter().map(|m| m.uid).collect();
    assert_eq!(inbox_now, [1, 2]);
    let arch = c.fetch_all("Archive");
    assert_eq!(arch.len(), 1);
    assert_eq!(
        (arch[0].uid, &arch[0].sha1, &arch[0].flags),
        (1, &got2.sha1, &msgs[1].flags)
    );
    assert_eq!(
        arch[0].internaldate, got2.internaldate,
        "COPY keeps the internal date"
    );
    let moved = c.fetch_all("Archive/2019");
    assert_eq!(
        (moved[0].sha1.as_str(), moved[0].flags.clone()),
        (msgs[2].sha1.as_str(), msgs[2].flags.clone())
    );
    // COPY within a partition hard-links.
    let copies = server.find_message_files(&got2.sha1);
    assert_eq!(copies.len(), 2);
    assert_eq!(std::fs::metadata(&copies[0]).unwrap().nlink(), 2);

    // EXPUNGE: the message disappears from IMAP, UIDNEXT does not go back; with delayed
    // expunge its file stays on disk.
    let sel = c.select("INBOX");
    c.uid_store("1", "+FLAGS", &["\\Deleted"]);
    assert_eq!(c.expunge(), [1]);
    let after = c.select("INBOX");
    assert_eq!(
        (after.exists, after.uidnext, after.uidvalidity),
        (1, sel.uidnext, sel.uidvalidity)
    );
    assert!(after.highestmodseq > sel.highestmodseq);
    assert_eq!(
        c.fetch_all("INBOX")
            .iter()
            .map(|m| m.uid)
            .collect::<Vec<_>>(),
        [2]
    );
    assert!(dir.join("1.").is_file(), "delayed expunge keeps the file");

    // STATUS agrees with SELECT.
    let st = c.status("INBOX", "MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ");
    assert_eq!(st["MESSAGES"], 1);
    assert_eq!(st["UIDNEXT"], after.uidnext as u64);
    assert_eq!(st["UIDVALIDITY"], after.uidvalidity as u64);
    assert_eq!(st["HIGHESTMODSEQ"], after.highestmodseq);

    // RENAME keeps UIDVALIDITY and content (and, in UUID mode, the directory).
    let arch_info = c.examine("Archive");
    c.unselect();
    c.rename("Archive", "Old Stuff");
    let renamed = c.examine("Old Stuff");
    assert_eq!(
        (renamed.uidvalidity, renamed.mailboxid.as_str()),
        (arch_info.uidvalidity, arch_info.mailboxid.as_str())
    );
    assert_eq!(c.fetch_all("Old Stuff")[0].sha1, got2.sha1);
    c.unselect();

    // SUBSCRIBE, LIST, LSUB; DELETE leaves the subscription behind (visible only in LIST).
    c.create("Scratch");
    for m in ["INBOX", "Old Stuff", "Scratch"] {
        c.subscribe(m);
    }
    c.delete("Scratch");
    let names: Vec<String> = c.list("*").into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["INBOX", "Old Stuff", "Old Stuff/2019"]);
    let lsub: Vec<String> = c.lsub("*").into_iter().map(|e| e.name).collect();
    assert_eq!(lsub, ["INBOX", "Old Stuff"]);
    let subs = c.list_subscribed();
    let scratch = subs
        .iter()
        .find(|e| e.name == "Scratch")
        .expect("stale subscription listed");
    assert!(scratch.has_flag("\\NonExistent"), "{scratch:?}");
    assert!(subs
        .iter()
        .find(|e| e.name == "INBOX")
        .unwrap()
        .has_flag("\\Subscribed"));

    // METADATA, including a non-ASCII value sent as a literal.
    c.set_metadata("INBOX", "/private/comment", Some("private note"));
    c.set_metadata(
        "Old Stuff",
        "/shared/comment",
        Some("gemeinsame Notiz: grüße"),
    );
    assert_eq!(
        c.get_metadata("INBOX", "/private/comment").as_deref(),
        Some("private note")
    );
    assert_eq!(
        c.get_metadata("Old Stuff", "/shared/comment").as_deref(),
        Some("gemeinsame Notiz: grüße")
    );
    assert_eq!(c.get_metadata("INBOX", "/shared/comment"), None);
    let all = c.get_all_metadata("Old Stuff");
    assert_eq!(
        all.get("/shared/comment").map(String::as_str),
        Some("gemeinsame Notiz: grüße")
    );
    c.set_metadata("INBOX", "/private/comment", None);
    assert_eq!(c.get_metadata("INBOX", "/private/comment"), None);

    // Special-use folders show up in LIST and as /private/specialuse metadata.
    c.create_special("Sent", "\\Sent");
    let sent = c.list("Sent").pop().unwrap();
    assert!(sent.has_flag("\\Sent"), "{sent:?}");
    assert_eq!(
        c.get_metadata("Sent", "/private/specialuse").as_deref(),
        Some("\\Sent")
    );

    // Raw commands and refusals.
    assert!(c
        .try_raw("SELECT \"No Such Box\"")
        .unwrap_err()
        .starts_with("NO"));
    assert!(c.raw("NAMESPACE")[0].starts_with("NAMESPACE"));
    c.logout();

    // The admin acting as alice (SASL PLAIN authzid) sees alice's mailboxes and \Seen.
    let mut proxy = crate::cyrus::Imap::connect(server.imap_addr());
    proxy.authenticate_plain("alice", "admin", "x");
    assert_eq!(proxy.fetch_all("INBOX")[0].flags, ["$Label1", "\\Seen"]);
    proxy.logout();

    // Sieve: upload, activate, list, read back; lmtpd then runs it (fileinto).
    let script = "require [\"fileinto\"];\r\nif header :contains \"subject\" \"[list]\" {\r\n  fileinto \"Old Stuff\";\r\n}\r\n";
    server.upload_sieve("alice", "main", script, true);
    server.upload_sieve("alice", "spare", "keep;\r\n", false);
    assert_eq!(
        server.list_sieve("alice"),
        [("main".to_string(), true), ("spare".to_string(), false)]
    );
    assert_eq!(server.get_sieve("alice", "main"), script);
    server.lmtp_deliver(
        "list@example.org",
        &["alice"],
        &message("[list] hello", "filed by sieve"),
    );
    let mut c = server.imap("alice");
    assert_eq!(
        c.fetch_all("Old Stuff").len(),
        2,
        "sieve fileinto did not run"
    );
    assert_eq!(c.fetch_all("INBOX").len(), 1);
    c.logout();
}

#[test]
fn cyrus_legacy_layout_hashed() {
    let opts = CyrusOptions {
        extra_partitions: vec!["second".into()],
        ..CyrusOptions::legacy()
    };
    let server = CyrusServer::start(opts);
    assert_eq!(server.options().layout, Layout::Legacy);
    server.create_user("alice");
    server.create_user("bob");
    check_multi_recipient_delivery(&server, "alice", "bob");

    // An admin can place a mailbox on another partition (CREATE's second argument).
    let mut admin = server.admin();
    admin.ok("CREATE \"user/alice/Far\" second");
    admin.logout();
    let mut c = server.imap("alice");
    let far = message("far", "on the second partition");
    c.append("Far", &[], None, &far);
    c.logout();
    let far_file = server.partition_path("second").join("a/user/alice/Far/1.");
    assert_eq!(std::fs::read(&far_file).unwrap(), far);
    assert!(server.message_files().contains(&far_file));

    let mut c = server.imap("alice");
    c.create("Sent");
    let uid = c.append(
        "Sent",
        &["\\Seen"],
        Some("02-Feb-2021 12:00:00 +0000"),
        &message("sent", "x"),
    );
    assert_eq!(uid, 1);
    c.logout();
    // Name-based directories, hashed by the first letter of the user; children nest inside.
    let spool = server.spool_dir();
    assert!(spool.join("a/user/alice/1.").is_file());
    assert!(spool.join("a/user/alice/Sent/1.").is_file());
    assert!(spool.join("b/user/bob/1.").is_file());
    assert_eq!(
        server.mailbox_path("user/alice/Sent"),
        spool.join("a/user/alice/Sent")
    );
    assert!(!spool.join("uuid").exists());
}

#[test]
fn cyrus_virtdomains_metapartition_restart() {
    let opts = CyrusOptions {
        virtdomains: VirtDomains::UserId,
        metapartition: true,
        ..Default::default()
    };
    let mut server = CyrusServer::start(opts);
    server.create_user("alice@example.com");
    server.create_user("bob@example.net");
    server.lmtp_deliver(
        "x@example.org",
        &["alice@example.com", "bob@example.net"],
        &message("vd", "virt"),
    );

    let mut c = server.imap("alice@example.com");
    let info = c.select("INBOX");
    assert_eq!(info.exists, 1);
    let uid = c.append(
        "INBOX",
        &["\\Draft"],
        Some("10-Oct-2010 10:10:10 +0000"),
        &message("draft", "d"),
    );
    let before = c.fetch_all("INBOX");
    let state = c.examine("INBOX");
    assert_eq!(
        (state.exists, state.uidnext, state.uidvalidity),
        (2, 3, info.uidvalidity)
    );
    c.logout();
    assert_eq!(before.len(), 2);
    assert_eq!(before[1].uid, uid);

    // Message files live in the data partition, cyrus.index in the metapartition.
    let data = server.mailbox_path("user/alice@example.com");
    let meta = server.mailbox_meta_path("user/alice@example.com");
    let meta_root = server.meta_partition_path("default").unwrap();
    assert!(data.starts_with(server.spool_dir()), "{}", data.display());
    assert!(meta.starts_with(&meta_root), "{}", meta.display());
    assert!(data.join("1.").is_file() && data.join("2.").is_file());
    assert!(meta.join("cyrus.index").is_file() && !data.join("cyrus.index").exists());
    let files = server.find_message_files(&before[0].sha1);
    assert_eq!(files.len(), 2);
    assert_eq!(std::fs::metadata(&files[0]).unwrap().nlink(), 2);

    // A stop/start keeps everything (what a restore test will do to a spool).
    server.stop();
    assert!(!server.is_running());
    server.restart();
    let mut c = server.imap("alice@example.com");
    assert_eq!(
        c.examine("INBOX"),
        state,
        "UIDVALIDITY/UIDNEXT/MODSEQ survive a restart"
    );
    assert_eq!(c.fetch_all("INBOX"), before);
    c.logout();

    // Tools run with the instance's own config.
    let dump = server.tool_ok("ctl_mboxlist", &["-d"]);
    assert!(dump.contains("example.com!user.alice"), "{dump}");
}

#[test]
fn cyrus_deliver_many_and_unicode_names() {
    let server = CyrusServer::start(CyrusOptions {
        sieve: false,
        ..Default::default()
    });
    assert!(server.sieve_addr().is_none());
    server.create_user("carol");
    let msgs: Vec<Vec<u8>> = (0..40)
        .map(|i| message(&format!("bulk{i}"), &"line\n".repeat(i * 10)))
        .collect();
    server.deliver_many("bulk@example.org", &["carol"], &msgs);

    let mut c = server.imap("carol");
    let got = c.fetch_all("INBOX");
    assert_eq!(
        got.iter().map(|m| m.uid).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<u32>>()
    );
    let distinct: BTreeSet<&str> = got.iter().map(|m| m.sha1.as_str()).collect();
    assert_eq!(distinct.len(), 40);

    // Names are UTF-8 in the API and modified UTF-7 on the wire.
    assert_eq!(mutf7_encode("Café & Crème"), "Caf&AOk- &- Cr&AOg-me");
    assert_eq!(mutf7_decode("Caf&AOk- &- Cr&AOg-me"), "Café & Crème");
    assert_eq!(mutf7_decode(&mutf7_encode("日本語/😀")), "日本語/😀");
    c.create("Café & Crème");
    c.uid_copy("1:3", "Café & Crème");
    let names: Vec<String> = c.list("*").into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["Café & Crème", "INBOX"]);
    assert_eq!(c.fetch_all("Café & Crème").len(), 3);
    assert!(c
        .raw("LIST \"\" \"*\"")
        .iter()
        .any(|l| l.contains("Caf&AOk- &- Cr&AOg-me")));
    c.logout();
}
