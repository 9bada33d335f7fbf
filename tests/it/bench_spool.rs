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
    let mut files: Vec<PathBuf> = walk(&mail);
    files.sort();
    let mut server = CyrusServer::start(CyrusOptions::default());
    let folders = ["INBOX", "Archive", "Lists", "Receipts"];
    let names: Vec<String> = (0..users).map(|u| format!("user{u:03}")).collect();
    for name in &names {
        server.create_user(name);
        let mut imap = server.imap(name);
        for f in &folders[1..] {
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
                    let user = &names[i % names.len()];
                    let folder = folders[(i / names.len()) % folders.len()];
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
