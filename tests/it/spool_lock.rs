//! Cyrus's locks, both ways, against a real Cyrus 3.6: while mailpack holds its shared locks a
//! Cyrus write to the mailbox waits, and while a write lock of Cyrus's kind (classic fcntl) is
//! held, mailpack waits. Waiting is observed in /proc/locks (a blocked request is listed with
//! `->`), never inferred from elapsed time.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mailpack::spool::lock::{FileLock, LockMethod, LockMode, LockWait};
use mailpack::spool::{LockOptions, MetaFile, Spool};

use crate::cyrus::{CyrusOptions, CyrusServer};

/// Waits (bounded) until /proc/locks shows a blocked request of `kind` on the file's inode.
fn wait_for_blocked(path: &Path, kind: &str) {
    let ino = std::fs::metadata(path).unwrap().ino();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let blocked = locks.lines().any(|l| {
            l.contains("->")
                && l.contains(kind)
                && l.split_whitespace()
                    .any(|f| f.rsplit(':').next() == Some(&ino.to_string()))
        });
        if blocked {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no blocked {kind} lock on {} in /proc/locks:\n{locks}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_cyrus_write_waits_for_mailpacks_shared_lock() {
    let server = CyrusServer::start(CyrusOptions::default());
    server.create_user("alice");
    server.lmtp_deliver("x@example.org", &["alice"], b"Subject: one\r\n\r\nbody\r\n");
    let spool = Spool::open(&server.config_path()).unwrap();
    let inbox = spool.inbox("alice").unwrap().clone();
    let index = spool.meta_path(&inbox, MetaFile::Index).unwrap();

    // Hold what backup pass 2 holds while reading metadata: the name lock and the index lock.
    let (_snapshot, name_lock) = spool.read_mailbox(&inbox, &LockOptions::default()).unwrap();
    let index_lock = FileLock::lock_stable(
        &index,
        LockMode::Shared,
        LockMethod::Fcntl,
        LockWait::Forever,
    )
    .unwrap()
    .unwrap();

    let (done_tx, done_rx) = mpsc::channel();
    let addr = server.imap_addr();
    let writer = std::thread::spawn(move || {
        let mut imap = crate::cyrus::Imap::connect(addr);
        imap.login("alice", "x");
        imap.select("INBOX");
        imap.uid_store("1", "+FLAGS", &["\\Flagged"]);
        done_tx.send(()).unwrap();
    });
    // imapd asks for an exclusive (WRITE) lock on cyrus.index and is made to wait.
    wait_for_blocked(&index, "WRITE");
    assert!(
        done_rx.try_recv().is_err(),
        "the STORE finished while mailpack held its lock"
    );
    drop(index_lock);
    drop(name_lock);
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the STORE completes once the lock is released");
    writer.join().unwrap();
    let mut imap = server.imap("alice");
    let msgs = imap.fetch_all("INBOX");
    assert!(msgs[0].flags.contains(&"\\Flagged".to_string()), "{msgs:?}");
}

#[test]
fn mailpack_waits_while_a_cyrus_style_write_lock_is_held() {
    let server = CyrusServer::start(CyrusOptions::default());
    server.create_user("bob");
    server.lmtp_deliver("x@example.org", &["bob"], b"Subject: two\r\n\r\nbody\r\n");
    let spool = Spool::open(&server.config_path()).unwrap();
    let inbox = spool.inbox("bob").unwrap().clone();
    let index = spool.meta_path(&inbox, MetaFile::Index).unwrap();

    // A classic POSIX write lock on cyrus.index, taken in another process exactly as Cyrus
    // takes it (fcntl F_SETLKW, whole file); the process holds it until its stdin closes.
    let mut holder = std::process::Command::new("python3")
        .arg("-c")
        .arg("import fcntl,sys\nf=open(sys.argv[1],'r+b')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.read()")
        .arg(&index)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");

    let (tx, rx) = mpsc::channel();
    let config = server.config_path();
    let reader = std::thread::spawn(move || {
        let spool = Spool::open(&config).unwrap();
        let inbox = spool.inbox("bob").unwrap().clone();
        let options = LockOptions {
            method: LockMethod::Fcntl,
            wait: LockWait::Forever,
        };
        let (snapshot, _lock) = spool.read_mailbox(&inbox, &options).unwrap();
        tx.send(snapshot.index.records.len()).unwrap();
    });
    // mailpack's shared OFD lock request waits behind the write lock.
    wait_for_blocked(&index, "READ");
    assert!(
        rx.try_recv().is_err(),
        "mailpack read the index under a write lock"
    );
    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30))
            .expect("mailpack proceeds after the release"),
        1
    );
    reader.join().unwrap();

    // With a bounded wait, mailpack gives up and says the mailbox is busy instead of reading.
    let _held = FileLock::lock_stable(
        &index,
        LockMode::Exclusive,
        LockMethod::Fcntl,
        LockWait::Forever,
    )
    .unwrap()
    .unwrap();
    let options = LockOptions {
        method: LockMethod::Fcntl,
        wait: LockWait::For(Duration::from_millis(200)),
    };
    match spool.read_mailbox(&inbox, &options) {
        Err(mailpack::Error::Busy { path }) => assert_eq!(path, index),
        other => panic!("expected busy, got {:?}", other.map(|_| ())),
    }
}
