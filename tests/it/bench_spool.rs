//! Builds the benchmark spool with a real Cyrus (BENCHMARKS.md): not a test, so it is ignored;
//! `bench/make-spool.sh` runs it. Mailboxes are created over IMAP and mail delivered over LMTP,
//! many messages per connection, some to several recipients (hard links), then a share of the
//! messages is flagged and some expunged, as a day of real use would.

use std::path::PathBuf;

use crate::cyrus::{CyrusOptions, CyrusServer, Lmtp};

#[test]
#[ignore]
fn make_bench_spool() {
    let dest = PathBuf::from(std::env::var("MAILPACK_BENCH_SPOOL").expect("MAILPACK_BENCH_SPOOL"));
    let mail = PathBuf::from(std::env::var("MAILPACK_BENCH_MAIL").expect("MAILPACK_BENCH_MAIL"));
    let users: usize = std::env::var("MAILPACK_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // The first FIXED messages go to a folder "Fixed" of the first user, so that archives of
    // different sizes share one mailbox of known size (the restore benchmark).
    let fixed: usize = std::env::var("MAILPACK_BENCH_FIXED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut files: Vec<PathBuf> = walk(&mail);
    files.sort();
    let mut server = CyrusServer::start(CyrusOptions::default());
    let folders = ["INBOX", "Archive", "Lists", "Receipts"];
    let names: Vec<String> = (0..users).map(|u| format!("user{u:03}")).collect();
    for name in &names {
        server.create_user(name);
        let mut imap = server.imap(name);
        for f in folders[1..].iter().chain((fixed > 0).then_some(&"Fixed")) {
            imap.create(f);
            // Lets LMTP file `user+Folder` straight into the folder.
            imap.ok(&format!("SETACL {f} anyone p"));
        }
        imap.subscribe("INBOX");
        drop(imap);
    }
    let addr = server.lmtp_addr();
    let workers = 2;
    std::thread::scope(|scope| {
        for w in 0..workers {
            let (files, names) = (&files, &names);
            scope.spawn(move || {
                let mut lmtp = Lmtp::connect(addr);
                for (i, path) in files.iter().enumerate().skip(w).step_by(workers) {
                    let data = std::fs::read(path).unwrap();
                    let (user, folder) = if i < fixed {
                        (&names[0], "Fixed")
                    } else {
                        (
                            &names[i % names.len()],
                            folders[(i / names.len()) % folders.len()],
                        )
                    };
                    let rcpt = if folder == "INBOX" {
                        user.clone()
                    } else {
                        format!("{user}+{folder}")
                    };
                    let mut rcpts = vec![rcpt];
                    if i % 40 == 0 {
                        rcpts.push(names[(i + 1) % names.len()].clone());
                    }
                    let r: Vec<&str> = rcpts.iter().map(String::as_str).collect();
                    for result in lmtp.deliver("bench@example.org", &r, &data) {
                        result.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    }
                }
                lmtp.quit();
            });
        }
    });
    // A day of use: most of INBOX read, some flagged, some deleted and expunged.
    for name in &names {
        let mut imap = server.imap(name);
        let info = imap.select("INBOX");
        if info.exists > 0 {
            imap.uid_store("1:*", "+FLAGS", &["\\Seen"]);
            let every_seventh: Vec<String> = (1..info.uidnext)
                .step_by(7)
                .map(|u| u.to_string())
                .collect();
            imap.uid_store(&every_seventh.join(","), "+FLAGS", &["\\Flagged"]);
        }
        drop(imap);
    }
    server.stop();
    let _ = std::fs::remove_dir_all(&dest);
    crate::spool_view::copy_spool(server.base_dir(), &dest);
    eprintln!(
        "bench spool: {} messages for {users} users in {}",
        files.len(),
        dest.display()
    );
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Changes the benchmark spool as a day of mail would: `MAILPACK_BENCH_NEW` new messages
/// delivered and as many messages' flags changed, by a real Cyrus running on that spool.
#[test]
#[ignore]
fn change_bench_spool() {
    let spool = PathBuf::from(std::env::var("MAILPACK_BENCH_SPOOL").expect("MAILPACK_BENCH_SPOOL"));
    let n: usize = std::env::var("MAILPACK_BENCH_NEW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    for dir in [
        "conf/socket",
        "conf/log",
        "conf/proc",
        "conf/db",
        "run/lock",
    ] {
        std::fs::create_dir_all(spool.join(dir)).unwrap();
    }
    // Only what is not Cyrus's already: chown changes ctime, and every mailbox whose metadata
    // ctime changed would count as changed for the backup being measured.
    let status = std::process::Command::new("find")
        .arg(&spool)
        .args([
            "(",
            "!",
            "-user",
            "cyrus",
            "-o",
            "!",
            "-group",
            "mail",
            ")",
            "-exec",
            "chown",
            "cyrus:mail",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let path = |p: &str| spool.join(p).to_str().unwrap().to_string();
    let mut server = CyrusServer::start(
        CyrusOptions::default()
            .with("configdirectory", &path("conf"))
            .with("partition-default", &path("spool"))
            .with("sievedir", &path("sieve"))
            .with("mboxname_lockpath", &path("run/lock")),
    );
    let users: Vec<String> = (0..100).map(|u| format!("user{u:03}")).collect();
    let mut lmtp = Lmtp::connect(server.lmtp_addr());
    for i in 0..n {
        let msg = format!(
            "Subject: new today {i}\r\nMessage-ID: <new.{i}@example.org>\r\n\r\n{}\r\n",
            "a line of new mail\r\n".repeat(50 + i % 400)
        );
        for r in lmtp.deliver(
            "bench@example.org",
            &[users[i % users.len()].as_str()],
            msg.as_bytes(),
        ) {
            r.unwrap();
        }
    }
    lmtp.quit();
    let per_user = n / users.len();
    for u in &users {
        let mut imap = server.imap(u);
        let info = imap.select("Archive");
        if info.exists > 0 {
            let uids: Vec<String> = (1..info.uidnext)
                .step_by(((info.uidnext as usize) / per_user.max(1)).max(1))
                .take(per_user)
                .map(|x| x.to_string())
                .collect();
            imap.uid_store(&uids.join(","), "+FLAGS", &["$Reviewed"]);
        }
    }
    server.stop();
    eprintln!("changed: {n} new messages, about {n} flag changes");
}
