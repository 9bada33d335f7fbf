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

/// Starts a real Cyrus over a spool a benchmark generator made and kept (its runtime folders
/// made again, its files Cyrus's). Only what is not Cyrus's already is chowned: chown changes
/// ctime, and every mailbox whose metadata ctime changed would count as changed for the backup
/// being measured; with `skip_messages`, message files (`<uid>.`) are not even looked at,
/// which a million of them makes worth it.
pub fn serve_kept_spool(spool: &std::path::Path, skip_messages: bool) -> CyrusServer {
    for dir in [
        "conf/socket",
        "conf/log",
        "conf/proc",
        "conf/db",
        "run/lock",
    ] {
        std::fs::create_dir_all(spool.join(dir)).unwrap();
    }
    if crate::cyrus::cyrus_ids().is_some() {
        let mut find = std::process::Command::new("find");
        find.arg(spool);
        if skip_messages {
            find.args([
                "-regextype",
                "posix-extended",
                "!",
                "-regex",
                ".*/[0-9]+\\.",
            ]);
        }
        let status = find
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
    }
    let path = |p: &str| spool.join(p).to_str().unwrap().to_string();
    CyrusServer::start(
        CyrusOptions::default()
            .with("configdirectory", &path("conf"))
            .with("partition-default", &path("spool"))
            .with("sievedir", &path("sieve"))
            .with("mboxname_lockpath", &path("run/lock")),
    )
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
    let mut server = serve_kept_spool(&spool, false);
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

/// Issue 15's benchmark (BENCHMARKS.md, "Disaster recovery"; `bench/recovery.sh` runs it and
/// times the peer): `mailpack restore --all --to-cyrus` of the per-user archives of the bench
/// spool (`MAILPACK_BENCH_ARCHIVES`) into a fresh, empty, running Cyrus with the bench spool's
/// layout, with `--jobs 1` and `--jobs 2` (`MAILPACK_BENCH_JOBS`), `MAILPACK_BENCH_RUNS` rounds,
/// each run into its own server, under `/usr/bin/time` for wall time and peak RSS. After each run
/// sample users are compared over IMAP with the source spool (`MAILPACK_BENCH_SPOOL`, read from
/// its files) and every user's message count with the source's. With `MAILPACK_BENCH_PEER` (the
/// peer's extracted and reconstructed copy, as bench/recovery.sh leaves it) a server is started on
/// that copy too and the same users compared, to show the peer's path gives a working server.
/// Times are printed, never asserted.
#[test]
#[ignore]
fn restore_all_bench() {
    use crate::spool_view::{imap_facts, mailpack_facts};
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}"));
    let spool = PathBuf::from(env("MAILPACK_BENCH_SPOOL"));
    let archives = PathBuf::from(env("MAILPACK_BENCH_ARCHIVES"));
    let bin = std::env::var("MAILPACK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/mailpack")
        });
    let runs: usize = std::env::var("MAILPACK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let jobs: Vec<usize> = std::env::var("MAILPACK_BENCH_JOBS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .map(|j| j.trim().parse().expect("MAILPACK_BENCH_JOBS"))
        .collect();
    let source_conf = spool.join("etc/imapd.conf");
    let users: Vec<String> = (0..100).map(|u| format!("user{u:03}")).collect();
    let samples = ["user000", "user057", "user099"];
    let source: std::collections::BTreeMap<&str, _> = samples
        .iter()
        .map(|u| (*u, mailpack_facts(&source_conf, u)))
        .collect();
    let count = |f: &crate::spool_view::UserFacts| -> usize {
        f.mailboxes.values().map(|m| m.messages.len()).sum()
    };
    // Every user's message count in the source, from its files.
    let source_counts: Vec<usize> = users
        .iter()
        .map(|u| count(&mailpack_facts(&source_conf, u)))
        .collect();
    eprintln!(
        "source: {} messages for {} users",
        source_counts.iter().sum::<usize>(),
        users.len()
    );
    let mut problems: Vec<String> = Vec::new();
    let mut check = |what: &str, server: &CyrusServer, all: bool| {
        for u in samples {
            let got = imap_facts(server, u);
            let want = &source[u];
            if count(&got) != count(want) {
                problems.push(format!(
                    "{what}: {u} has {} messages over IMAP, the source {}",
                    count(&got),
                    count(want)
                ));
            } else if &got != want {
                problems.push(format!(
                    "{what}: {u} has the source's {} messages but differs: {:?}",
                    count(want),
                    diff_facts(want, &got)
                ));
            } else {
                eprintln!(
                    "{what}: {u}: {} messages, identical to the source over IMAP",
                    count(&got)
                );
            }
        }
        if all {
            let config = server.config_path();
            let differ: Vec<&String> = users
                .iter()
                .zip(&source_counts)
                .filter(|(u, n)| count(&mailpack_facts(&config, u)) != **n)
                .map(|(u, _)| u)
                .collect();
            if differ.is_empty() {
                eprintln!("{what}: every user's message count equals the source's");
            } else {
                problems.push(format!("{what}: message counts differ for {differ:?}"));
            }
        }
    };
    if let Ok(peer) = std::env::var("MAILPACK_BENCH_PEER") {
        let peer = PathBuf::from(peer);
        let path = |p: &str| peer.join(p).to_str().unwrap().to_string();
        let mut server = CyrusServer::start(
            CyrusOptions::default()
                .with("configdirectory", &path("conf"))
                .with("partition-default", &path("spool"))
                .with("sievedir", &path("sieve"))
                .with("mboxname_lockpath", &path("run/lock")),
        );
        check("peer (tar -xzf + reconstruct)", &server, false);
        server.stop();
    }
    // Untimed: the archives read into the page cache, so every run starts alike.
    let warm = || {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cat '{}'/* > /dev/null", archives.display()))
            .status()
            .unwrap();
        assert!(status.success());
    };
    let mut results: Vec<(usize, f64, u64)> = Vec::new();
    for round in 0..runs {
        for &j in &jobs {
            let mut server = CyrusServer::start(CyrusOptions::default());
            warm();
            let out = std::process::Command::new("/usr/bin/time")
                .args(["-f", "%e %M %U %S"])
                .arg(&bin)
                .args(["restore", "--all", "--to-cyrus", "--json", "--config"])
                .arg(server.config_path())
                .arg("--archive-dir")
                .arg(&archives)
                .args(["--jobs", &j.to_string()])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "restore --all --jobs {j} failed ({}):\nstdout tail: {}\nstderr: {stderr}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            let last = stderr.lines().last().unwrap_or_default();
            let mut f = last.split_whitespace();
            let secs: f64 = f.next().and_then(|s| s.parse().ok()).expect(last);
            let rss: u64 = f.next().and_then(|s| s.parse().ok()).expect(last);
            let cpu: f64 = f.map(|s| s.parse::<f64>().expect(last)).sum();
            let owners = String::from_utf8_lossy(&out.stdout).lines().count();
            eprintln!(
                "round {round}: mailpack restore --all --to-cyrus --jobs {j}: {secs:.2} s, peak RSS {rss} KiB, CPU (user+sys) {cpu:.2} s, {owners} JSON lines"
            );
            // One line per run for bench/recovery.sh to collect.
            println!("RUN mailpack jobs={j} secs={secs:.2} rss_kib={rss} cpu_s={cpu:.2}");
            check(&format!("mailpack --jobs {j}"), &server, round == 0);
            results.push((j, secs, rss));
            server.stop();
        }
    }
    for &j in &jobs {
        let mut t: Vec<f64> = results.iter().filter(|r| r.0 == j).map(|r| r.1).collect();
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let rss = results
            .iter()
            .filter(|r| r.0 == j)
            .map(|r| r.2)
            .max()
            .unwrap();
        let median = if t.len() % 2 == 1 {
            t[t.len() / 2]
        } else {
            (t[t.len() / 2 - 1] + t[t.len() / 2]) / 2.0
        };
        // One line per --jobs for bench/recovery.sh to collect.
        println!("RESULT mailpack jobs={j} median_s={median:.2} runs={t:?} max_rss_kib={rss}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Where two users' facts first differ, for a failure message of reasonable size.
fn diff_facts(want: &crate::spool_view::UserFacts, got: &crate::spool_view::UserFacts) -> String {
    if want.subscriptions != got.subscriptions {
        return format!(
            "subscriptions {:?} vs {:?}",
            want.subscriptions, got.subscriptions
        );
    }
    for (name, w) in &want.mailboxes {
        let Some(g) = got.mailboxes.get(name) else {
            return format!("mailbox {name} missing");
        };
        if (w.uidvalidity, w.uidnext, w.highestmodseq)
            != (g.uidvalidity, g.uidnext, g.highestmodseq)
        {
            return format!(
                "{name}: uidvalidity/uidnext/highestmodseq {:?} vs {:?}",
                (w.uidvalidity, w.uidnext, w.highestmodseq),
                (g.uidvalidity, g.uidnext, g.highestmodseq)
            );
        }
        if let Some((a, b)) = w.messages.iter().zip(&g.messages).find(|(a, b)| a != b) {
            return format!("{name}: {a:?} vs {b:?}");
        }
    }
    format!(
        "mailboxes {:?} vs {:?}",
        want.mailboxes.keys().collect::<Vec<_>>(),
        got.mailboxes.keys().collect::<Vec<_>>()
    )
}

/// Builds the many-owners benchmark spool (BENCHMARKS.md, "Many owners"): not a test, so it is
/// ignored; `bench/many-owners.sh` runs it. `MAILPACK_BENCH_USERS` users (default 20,000), each
/// with INBOX, Sent and Archive, created over IMAP by a real Cyrus, and three small messages per
/// user delivered over LMTP to 100 recipients per transaction (one file hard-linked into each
/// INBOX, as a mailing list arrives).
#[test]
#[ignore]
fn make_many_owners_spool() {
    let dest = PathBuf::from(std::env::var("MAILPACK_BENCH_SPOOL").expect("MAILPACK_BENCH_SPOOL"));
    let users: usize = std::env::var("MAILPACK_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut server = CyrusServer::start(CyrusOptions::default());
    let sep = server.separator();
    let names: Vec<String> = (0..users).map(|u| format!("u{u:05}")).collect();
    let workers = 2;
    std::thread::scope(|scope| {
        for w in 0..workers {
            let (names, server) = (&names, &server);
            scope.spawn(move || {
                let mut admin = server.admin();
                for name in names.iter().skip(w).step_by(workers) {
                    let inbox = server.user_mailbox(name);
                    admin.create(&inbox);
                    admin.create(&format!("{inbox}{sep}Sent"));
                    admin.create(&format!("{inbox}{sep}Archive"));
                }
                admin.logout();
            });
        }
    });
    let mut lmtp = Lmtp::connect(server.lmtp_addr());
    for m in 0..3 {
        for chunk in names.chunks(100) {
            let rcpts: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let body = format!(
                "From: list@example.org\r\nTo: staff@example.org\r\nSubject: notice {m} to {}\r\n\
                 Message-ID: <{m}.{}@example.org>\r\n\r\nA short note, number {m}.\r\n",
                chunk[0], chunk[0]
            );
            for result in lmtp.deliver("list@example.org", &rcpts, body.as_bytes()) {
                result.unwrap_or_else(|e| panic!("{}: {e}", chunk[0]));
            }
        }
    }
    lmtp.quit();
    server.stop();
    let _ = std::fs::remove_dir_all(&dest);
    crate::spool_view::copy_spool(server.base_dir(), &dest);
    eprintln!("many-owners spool: {users} users in {}", dest.display());
}
