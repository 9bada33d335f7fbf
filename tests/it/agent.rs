//! The agent: driven through in-memory pipes (every request, malformed and oversized frames,
//! unknown kinds, paths outside the spool, a peer that vanishes mid-transfer) and end to end
//! through a real sshd on 127.0.0.1 against a real Cyrus 3.6. A remote backup must give an
//! archive identical in content to a local backup of the same server state.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use mailpack::agent::{serve, LocalSource, RemoteSource, Source};
use mailpack::archive::EntryKind;
use mailpack::backup::{backup_user, UserOptions, UserReport};
use mailpack::spool::{LockOptions, Owner, Spool};
use mailpack::store::{Archive, ArchivePaths, StoreWriter, WriterOptions};
use mailpack::Guid;

use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::spool_view::populate;
use crate::util::TempDir;
use mailpack::io::SourceStat;

/// A copy of the committed real-Cyrus fixture spool (two users, many kinds of mailbox).
pub fn fixture_spool(dir: &Path) -> PathBuf {
    let spool = dir.join("spool");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/spools/uuid"))
        .arg(&spool)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    spool.join("etc/imapd.conf")
}

type Content = Vec<(String, EntryKind, String, Guid, u64, Option<SourceStat>)>;

/// An archive's latest state: every name with its kind, target, SHA-1, size and source stat.
fn content(dir: &Path, user: &str) -> Content {
    let archive =
        Archive::open(&ArchivePaths::for_user(dir, user).unwrap(), &mut Vec::new()).unwrap();
    archive
        .state_at(None)
        .into_iter()
        .map(|(_, e)| {
            (
                e.name.clone(),
                e.kind,
                e.target.clone(),
                e.sha1,
                e.size,
                e.stat.as_deref().copied(),
            )
        })
        .collect()
}

fn user_options() -> UserOptions {
    UserOptions {
        retries: 3,
        host: "test".into(),
        time: mailpack::commands::now(),
        allow_mass_delete: false,
        group_commit: false,
    }
}

fn backup_through(source: &mut dyn Source, dir: &Path, user: &str) -> mailpack::Result<UserReport> {
    let paths = ArchivePaths::for_user(dir, user).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let mut store = StoreWriter::open(&paths, &WriterOptions::default(), &mut Vec::new())?;
    backup_user(
        source,
        &Owner::User(user.to_string()),
        &mut store,
        &user_options(),
        &mut |_| Vec::new(),
        &mailpack::progress::Tally::unwatched(),
    )
}

fn local_backup(config: &Path, dir: &Path, user: &str) -> UserReport {
    let spool = Spool::open(config).unwrap();
    let annotations = spool.annotations().unwrap();
    let mut source = LocalSource::new(&spool, &annotations, LockOptions::default());
    backup_through(&mut source, dir, user).unwrap()
}

/// Read-ahead hints follow the list a backup gives with `prefetch`, but a fetch must return
/// the file asked for whatever the order: out of order, twice, not in the list at all, or
/// after a file was left half read. In process, and through an agent over pipes (where a file
/// left half read is dropped in the middle of a `DATA` frame, and the answers prefetched and
/// not asked for must be skipped to stay in step).
#[test]
fn fetches_return_the_file_asked_for_in_any_order_after_a_prefetch() {
    let work = TempDir::new("agent-ahead");
    let config = fixture_spool(work.path());
    let spool = Spool::open(&config).unwrap();
    let annotations = spool.annotations().unwrap();
    let mut local = LocalSource::new(&spool, &annotations, LockOptions::default());
    let checked = fetch_in_any_order(&mut local);
    assert!(
        checked >= 10,
        "the fixture has mailboxes with messages ({checked} fetched)"
    );
    let (mut client, agent) = piped(&config, false, None);
    assert_eq!(fetch_in_any_order(&mut client), checked);
    drop(client);
    agent.join().unwrap().unwrap();
}

/// Fetches every live message of every mailbox in a scrambled order; returns how many files
/// were read whole and checked by SHA-1.
fn fetch_in_any_order(source: &mut dyn Source) -> usize {
    let mut checked = 0;
    for user in source.users().unwrap() {
        for m in source
            .list_owner(&Owner::User(user.to_string()))
            .unwrap()
            .mailboxes
        {
            let Some(uniqueid) = m.uniqueid else { continue };
            let opened = source
                .open_mailbox(&Owner::User(user.to_string()), &uniqueid)
                .unwrap();
            let index = mailpack::spool::index::parse(&opened.index).unwrap();
            let live: Vec<(u32, Guid, bool)> = index
                .records
                .iter()
                .filter(|r| !r.is_expunged() && !r.guid.is_zero())
                .map(|r| (r.uid, r.guid, r.is_archived()))
                .collect();
            if live.len() < 2 {
                continue;
            }
            // The list names the first half. The first of them is read only in part; then the
            // fetches go backwards over all of them, then ask for the first again.
            source.prefetch(&live[..live.len() / 2]).unwrap();
            let (uid, guid, archived) = live[0];
            let mut part = [0u8; 10];
            source
                .fetch_message(uid, &guid, archived)
                .unwrap()
                .unwrap()
                .reader
                .read_exact(&mut part)
                .unwrap();
            for &(uid, guid, archived) in live.iter().rev().chain(&live[..1]) {
                let mut file = source
                    .fetch_message(uid, &guid, archived)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{user} {uniqueid} uid {uid}: gone"));
                let mut bytes = Vec::new();
                file.reader.read_to_end(&mut bytes).unwrap();
                assert_eq!(Guid::of(&bytes), guid, "{user} {uniqueid} uid {uid}");
                checked += 1;
            }
            source.close_mailbox().unwrap();
        }
    }
    checked
}

/// An agent serving `config` on a thread, and a client connected to it by pipes. `cut_after`
/// makes the agent's output fail after that many bytes, as a dropped connection would.
fn piped(
    config: &Path,
    compress: bool,
    cut_after: Option<u64>,
) -> (RemoteSource, std::thread::JoinHandle<mailpack::Result<()>>) {
    let (to_agent_r, to_agent_w) = std::io::pipe().unwrap();
    let (from_agent_r, from_agent_w) = std::io::pipe().unwrap();
    let config = config.to_path_buf();
    let agent = std::thread::spawn(move || {
        let spool = Spool::open(&config)?;
        let annotations = spool.annotations()?;
        let mut source = LocalSource::new(&spool, &annotations, LockOptions::default());
        let out = Cut {
            inner: from_agent_w,
            left: cut_after.unwrap_or(u64::MAX),
        };
        serve(&mut source, to_agent_r, out)
    });
    let client = RemoteSource::over(
        Box::new(from_agent_r),
        Box::new(to_agent_w),
        "pipes",
        compress,
    )
    .unwrap();
    (client, agent)
}

/// A writer that fails after `left` bytes.
struct Cut<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Cut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "connection cut by the test",
            ));
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        let n = self.inner.write(&buf[..n])?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A backup asks for the next users' listings before it commits the current user's run. Each
/// answer must be its user's listing, also when another request's answer had to get past it
/// first; asked for and not gone on to (another user, an error, the end of the session), it
/// must be dropped with the session in step.
#[test]
fn listings_asked_for_ahead_are_their_users_and_those_not_gone_on_to_are_dropped_in_step() {
    let work = TempDir::new("agent-listing-ahead");
    let config = fixture_spool(work.path());
    let (mut client, agent) = piped(&config, false, None);
    let users = client.users().unwrap();
    assert!(users.len() >= 2, "{users:?}");
    let direct: Vec<_> = users
        .iter()
        .map(|u| client.list_owner(&Owner::User(u.to_string())).unwrap())
        .collect();
    assert!(direct.iter().all(|l| !l.mailboxes.is_empty()), "{direct:?}");
    let ahead = |client: &mut RemoteSource, users: &[&str]| {
        let sent = client.traffic().1;
        let users: Vec<Owner> = users.iter().map(|u| Owner::User(u.to_string())).collect();
        client.list_ahead(&users).unwrap();
        assert!(client.traffic().1 > sent, "the requests leave at once");
    };
    let (first, second) = (users[0].as_str(), users[1].as_str());

    ahead(&mut client, &[first, second]);
    assert_eq!(
        client.list_owner(&Owner::User(first.to_string())).unwrap(),
        direct[0]
    );
    assert_eq!(
        client.list_owner(&Owner::User(second.to_string())).unwrap(),
        direct[1]
    );
    ahead(&mut client, &[first]);
    assert_eq!(
        client.list_owner(&Owner::User(second.to_string())).unwrap(),
        direct[1]
    );

    // A mailbox opened while two listings are on the wire, whose metadata is the one the
    // listing stats; the listings are still there afterwards.
    ahead(&mut client, &[second, first]);
    let mailbox = direct[0]
        .mailboxes
        .iter()
        .find(|m| m.uniqueid.is_some())
        .unwrap();
    let opened = client
        .open_mailbox(
            &Owner::User(first.to_string()),
            mailbox.uniqueid.as_deref().unwrap(),
        )
        .unwrap();
    assert_eq!(opened.stats, mailbox.stats);
    mailpack::spool::index::parse(&opened.index).unwrap();
    client.close_mailbox().unwrap();
    assert_eq!(
        client.list_owner(&Owner::User(second.to_string())).unwrap(),
        direct[1]
    );
    assert_eq!(
        client.list_owner(&Owner::User(first.to_string())).unwrap(),
        direct[0]
    );

    // The agent refuses a bad user name: asked ahead and skipped, the refusal goes with it;
    // asked ahead and gone on to, it is the answer.
    ahead(&mut client, &["../etc", second]);
    assert_eq!(
        client.list_owner(&Owner::User(second.to_string())).unwrap(),
        direct[1]
    );
    ahead(&mut client, &["../etc"]);
    let refused = client
        .list_owner(&Owner::User("../etc".to_string()))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("../etc"), "{refused}");
    assert_eq!(
        client.list_owner(&Owner::User(first.to_string())).unwrap(),
        direct[0]
    );

    // Still waiting at the end: the session ends cleanly.
    ahead(&mut client, &[first, second]);
    drop(client);
    agent.join().unwrap().unwrap();
}

#[test]
fn a_backup_through_the_agent_equals_a_local_one_and_a_quiet_run_sends_little() {
    let work = TempDir::new("agent-pipes");
    let config = fixture_spool(work.path());
    let local = work.path().join("local");
    let users = Spool::open(&config).unwrap().users();
    assert!(users.len() >= 2, "{users:?}");
    for compress in [false, true] {
        let remote = work.path().join(format!("remote-{compress}"));
        let (mut client, agent) = piped(&config, compress, None);
        assert_eq!(client.users().unwrap(), users);
        for user in &users {
            let expected = local_backup(&config, &local.join(format!("{compress}")), user);
            let got = backup_through(&mut client, &remote, user).unwrap();
            assert_eq!(
                (
                    got.mailboxes,
                    got.changed,
                    got.messages_added,
                    got.bytes_read
                ),
                (
                    expected.mailboxes,
                    expected.changed,
                    expected.messages_added,
                    expected.bytes_read
                ),
                "{user}"
            );
            assert_eq!(
                content(&remote, user),
                content(&local.join(format!("{compress}")), user),
                "{user}, compress {compress}"
            );
        }
        // A second run finds nothing changed: it opens nothing and the traffic is the listings.
        let before = client.traffic();
        let mut mailboxes = 0;
        for user in &users {
            let r = backup_through(&mut client, &remote, user).unwrap();
            assert_eq!(
                (r.message_files_read, r.metadata_files_read),
                (0, 0),
                "{r:?}"
            );
            mailboxes += r.mailboxes;
        }
        let (received, sent) = client.traffic();
        let per_mailbox = (received - before.0 + sent - before.1) / mailboxes;
        assert!(per_mailbox < 2048, "{per_mailbox} bytes per mailbox");
        drop(client);
        agent.join().unwrap().unwrap();
    }
}

/// Writes one frame by hand.
fn frame(w: &mut impl Write, kind: u8, payload: &[u8]) {
    w.write_all(&((payload.len() + 1) as u32).to_be_bytes())
        .unwrap();
    w.write_all(&[kind]).unwrap();
    w.write_all(payload).unwrap();
    w.flush().unwrap();
}

fn read_frame(r: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((body[0], body[1..].to_vec()))
}

/// A raw session: the agent on a thread, the test speaking frames itself.
fn raw_session(
    config: &Path,
) -> (
    std::io::PipeWriter,
    std::io::PipeReader,
    std::thread::JoinHandle<mailpack::Result<()>>,
) {
    let (to_agent_r, to_agent_w) = std::io::pipe().unwrap();
    let (from_agent_r, from_agent_w) = std::io::pipe().unwrap();
    let config = config.to_path_buf();
    let agent = std::thread::spawn(move || {
        let spool = Spool::open(&config)?;
        let annotations = spool.annotations()?;
        let mut source = LocalSource::new(&spool, &annotations, LockOptions::default());
        serve(&mut source, to_agent_r, from_agent_w)
    });
    (to_agent_w, from_agent_r, agent)
}

const HELLO: &[u8] = br#"{"protocol":"mailpack-agent","versions":[1],"compress":"none"}"#;

fn request(w: &mut impl Write, r: &mut impl Read, req: &str) -> (u8, serde_json::Value) {
    frame(w, 2, req.as_bytes());
    let (kind, payload) = read_frame(r).expect("a reply");
    (kind, serde_json::from_slice(&payload).unwrap_or_default())
}

#[test]
fn requests_answer_errors_in_band_and_paths_outside_the_spool_are_refused() {
    let work = TempDir::new("agent-requests");
    let config = fixture_spool(work.path());
    let spool = Spool::open(&config).unwrap();
    // alice's INBOX directory moved out of the spool and linked back: the agent must refuse it.
    let inbox = spool.inbox("alice").unwrap().clone();
    let inbox_dir = spool.mailbox_dir(&inbox).unwrap();
    let outside = work.path().join("outside");
    std::fs::rename(&inbox_dir, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &inbox_dir).unwrap();
    drop(spool);

    let (mut w, mut r, agent) = raw_session(&config);
    frame(&mut w, 1, HELLO);
    let (kind, hello) = read_frame(&mut r).unwrap();
    assert_eq!(kind, 1);
    assert!(String::from_utf8_lossy(&hello).contains("\"version\":1"));

    let (kind, v) = request(
        &mut w,
        &mut r,
        r#"{"op":"fetch","uid":1,"guid":"00","archived":false}"#,
    );
    assert_eq!((kind, v["kind"].as_str()), (6, Some("usage")), "{v}");
    let (kind, v) = request(&mut w, &mut r, r#"{"op":"list-user","user":"../../etc"}"#);
    assert_eq!((kind, v["kind"].as_str()), (6, Some("usage")), "{v}");
    let (kind, v) = request(
        &mut w,
        &mut r,
        r#"{"op":"open-mailbox","user":"alice","uniqueid":"nosuch"}"#,
    );
    assert_eq!((kind, v["kind"].as_str()), (6, Some("not-found")), "{v}");
    let uid = inbox.uniqueid.unwrap();
    let (kind, v) = request(
        &mut w,
        &mut r,
        &format!(r#"{{"op":"open-mailbox","user":"alice","uniqueid":"{uid}"}}"#),
    );
    assert_eq!((kind, v["kind"].as_str()), (6, Some("unsupported")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("outside"), "{v}");
    let (kind, v) = request(&mut w, &mut r, r#"{"op":"users"}"#);
    assert_eq!(kind, 3);
    assert!(v["users"].as_array().unwrap().len() >= 2, "{v}");
    let (kind, _) = request(&mut w, &mut r, r#"{"op":"bye"}"#);
    assert_eq!(kind, 3);
    agent.join().unwrap().unwrap();

    // Through a backup: the refused mailbox is skipped and said so; the rest is backed up.
    let (mut client, agent) = piped(&config, false, None);
    let report = backup_through(&mut client, &work.path().join("a"), "alice").unwrap();
    assert_eq!(report.skipped, 1, "{report:?}");
    assert!(report.problems[0].contains("outside"), "{report:?}");
    assert!(report.mailboxes > 1 && report.messages_added > 0);
    drop(client);
    agent.join().unwrap().unwrap();
}

#[test]
fn malformed_oversized_and_unknown_frames_end_the_session_with_a_reason() {
    let work = TempDir::new("agent-frames");
    let config = fixture_spool(work.path());
    type Sender = Box<dyn Fn(&mut std::io::PipeWriter)>;
    let cases: Vec<(&str, Sender)> = vec![
        (
            "frame of 4294967295 bytes",
            Box::new(|w| w.write_all(&[0xff, 0xff, 0xff, 0xff, 2]).unwrap()),
        ),
        ("unknown frame kind 99", Box::new(|w| frame(w, 99, b"{}"))),
        (
            "expected HELLO",
            Box::new(|w| frame(w, 2, br#"{"op":"users"}"#)),
        ),
        (
            "version 1 only",
            Box::new(|w| frame(w, 1, br#"{"protocol":"mailpack-agent","versions":[7]}"#)),
        ),
        (
            "not JSON",
            Box::new(|w| {
                frame(w, 1, HELLO);
                frame(w, 2, b"\xff\xfe");
            }),
        ),
        (
            "unknown op",
            Box::new(|w| {
                frame(w, 1, HELLO);
                frame(w, 2, br#"{"op":"format-disk"}"#);
            }),
        ),
        (
            "expected a REQUEST",
            Box::new(|w| {
                frame(w, 1, HELLO);
                frame(w, 4, b"data where a request belongs");
            }),
        ),
        (
            "inside a frame",
            Box::new(|w| {
                frame(w, 1, HELLO);
                w.write_all(&[0, 0, 0, 50, 2, b'{']).unwrap();
            }),
        ),
    ];
    for (reason, send) in cases {
        let (mut w, mut r, agent) = raw_session(&config);
        send(&mut w);
        drop(w);
        let mut abort = None;
        while let Some((kind, payload)) = read_frame(&mut r) {
            if kind == 7 {
                abort = Some(String::from_utf8_lossy(&payload).into_owned());
            }
        }
        let abort = abort.unwrap_or_else(|| panic!("no ABORT for {reason}"));
        assert!(abort.contains(reason), "{reason}: {abort}");
        let ended = agent.join().unwrap();
        assert!(ended.is_err(), "{reason}: the agent reports the error");
    }
}

#[test]
fn a_peer_that_vanishes_mid_transfer_commits_nothing_and_the_next_run_completes() {
    let work = TempDir::new("agent-cut");
    let config = fixture_spool(work.path());
    let local = work.path().join("local");
    let remote = work.path().join("remote");
    let expected = local_backup(&config, &local, "alice");
    // How many bytes a whole first run takes, to cut it in the middle of the messages.
    let (mut probe, agent) = piped(&config, false, None);
    backup_through(&mut probe, &work.path().join("probe"), "alice").unwrap();
    let total = probe.traffic().0;
    drop(probe);
    agent.join().unwrap().unwrap();

    for cut in [total / 3, total * 2 / 3, total - 10] {
        let (mut client, agent) = piped(&config, false, Some(cut));
        let failed = backup_through(&mut client, &remote, "alice");
        assert!(failed.is_err(), "cut at {cut} of {total} went unnoticed");
        drop(client);
        let _ = agent.join().unwrap();
        let paths = ArchivePaths::for_user(&remote, "alice").unwrap();
        if paths.archive.exists() {
            let archive = Archive::open(&paths, &mut Vec::new()).unwrap();
            assert!(
                archive.runs().is_empty(),
                "cut at {cut}: a partial run was committed"
            );
        }
    }
    let (mut client, agent) = piped(&config, false, None);
    let report = backup_through(&mut client, &remote, "alice").unwrap();
    assert_eq!(report.messages_added, expected.messages_added);
    assert_eq!(content(&remote, "alice"), content(&local, "alice"));
    drop(client);
    agent.join().unwrap().unwrap();
}

/// A private sshd on 127.0.0.1 that lets one key in as `cyrus`, forced to run the agent.
struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sshd(dir: &Path, agent_command: &str) -> Sshd {
    let keygen = |path: &Path| {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let (host_key, key) = (dir.join("host_key"), dir.join("client_key"));
    keygen(&host_key);
    keygen(&key);
    let public = std::fs::read_to_string(dir.join("client_key.pub")).unwrap();
    // What the README shows: the key may run the agent and nothing else.
    std::fs::write(
        dir.join("authorized_keys"),
        format!("restrict,command=\"{agent_command}\" {public}"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    // UsePAM: Debian locks the cyrus account's password ('!'); without PAM sshd refuses a locked
    // account even for key logins, with PAM (Debian's default) the key is enough.
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nStrictModes no\nUsePAM yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nAllowUsers cyrus\nLogLevel ERROR\n",
            host_key.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let sshd = Sshd { child, port, key };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return sshd;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("sshd did not listen on {port}");
}

/// Over a real sshd: a full remote backup, then changes to a few of many users, then remote
/// runs that find most users unchanged (the worker asks for their listings in batches; a
/// changed user sits inside a batch), then one with compression. The remote archives' latest
/// state must equal a local backup of the final server state, user for user.
#[test]
fn a_remote_backup_over_real_ssh_equals_a_local_backup_of_the_same_server() {
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    let many: Vec<String> = (0..30).map(|i| format!("user{i:02}")).collect();
    for user in &many {
        server.create_user(user);
    }
    let recipients: Vec<&str> = many.iter().map(String::as_str).collect();
    let mail = |subject: &str| {
        format!("From: someone@example.com\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\n\r\nHello.\r\n")
            .into_bytes()
    };
    server.deliver_many("someone@example.com", &recipients, &[mail("first")]);
    let work = TempDir::new("agent-ssh");
    let bin = env!("CARGO_BIN_EXE_mailpack");
    let sshd = start_sshd(
        work.path(),
        &format!("{bin} agent --config {}", server.config_path().display()),
    );
    let local = work.path().join("local");
    let remote = work.path().join("remote");
    let run = |args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let ssh = format!(
        "ssh -i {} -p {} -o BatchMode=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR cyrus@127.0.0.1 mailpack agent",
        sshd.key.display(),
        sshd.port
    );
    let remote_backup = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "--remote",
            ssh.as_str(),
            "--archive-dir",
            remote.to_str().unwrap(),
            "--json",
        ];
        args.extend(extra);
        run(&args)
    };
    remote_backup(&["--jobs", "1"]);

    // A flag on one user, a new message for another, both in the middle of the list.
    let mut imap = server.imap("user07");
    imap.select("INBOX");
    imap.uid_store("1", "+FLAGS", &["\\Flagged"]);
    imap.logout();
    server.lmtp_deliver("someone@example.com", &["user19"], &mail("second"));

    let changed = |json: &str| -> Vec<String> {
        let mut users: Vec<String> = json
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "user" && v["data"]["changed"].as_u64() != Some(0))
            .map(|v| v["data"]["user"].as_str().unwrap().to_string())
            .collect();
        users.sort();
        users
    };
    assert_eq!(
        changed(&remote_backup(&["--jobs", "1"])),
        ["user07", "user19"]
    );
    assert_eq!(
        changed(&remote_backup(&["--remote-compress"])),
        Vec::<String>::new()
    );

    run(&[
        "backup",
        "--config",
        server.config_path().to_str().unwrap(),
        "--archive-dir",
        local.to_str().unwrap(),
    ]);
    for user in ["alice", "bob"].into_iter().chain(recipients) {
        assert_eq!(content(&remote, user), content(&local, user), "{user}");
    }
}
