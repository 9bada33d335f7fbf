//! A private Dovecot 2.3 (tests/it/support/dovecot.rs): the fixture itself, as an ordinary
//! writable server and with TLS; and `restore --maildir` of real Cyrus users served by it as
//! Cyrus served them (formats/restore.md, "Maildir for Dovecot").

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

use crate::cyrus::{internaldate_epoch, CyrusOptions, CyrusServer, Imap};
use crate::spool_view::populate;
use crate::support::dovecot::{DovecotOptions, DovecotServer};
use crate::util::TempDir;
use crate::util::{ok, run, stderr, stdout};

#[test]
fn dovecot_fixture_starts_takes_mail_lists_it_and_stops() {
    let mut server = DovecotServer::start(DovecotOptions::empty(&["alice"]));
    let addr = server.imap_addr();
    let mut imap = server.imap("alice");
    imap.create("Projects/Café Crème");
    imap.create("a.b");
    imap.append(
        "Projects/Café Crème",
        &["\\Seen", "$Label1"],
        Some(" 1-Jan-2020 10:00:00 +0000"),
        b"From: x@example.org\r\nSubject: hello\r\n\r\nbody\r\n",
    );
    let names: Vec<String> = imap.list("*").into_iter().map(|e| e.name).collect();
    for want in ["INBOX", "Projects", "Projects/Café Crème", "a.b"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let got = imap.fetch_all("Projects/Café Crème");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].flags, ["$Label1", "\\Seen"]);
    assert_eq!(
        internaldate_epoch(&got[0].internaldate),
        internaldate_epoch(" 1-Jan-2020 10:00:00 +0000")
    );
    imap.logout();
    // On disk: Maildir++ with `.` between levels, mUTF-7, and `%2e` for a dot in a name.
    let home = server.mail_root().join("alice");
    assert!(home.join(".Projects.Caf&AOk- Cr&AOg-me/cur").is_dir());
    assert!(home.join(".a%2eb").is_dir(), "{}", server.log());
    // Another instance serves the tree it left behind, as it serves an export.
    let tree = TempDir::new("dovecot-fixture-tree");
    let root = tree.path().join("mail");
    std::fs::rename(server.mail_root(), &root).unwrap();
    server.stop();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
    let again = DovecotServer::start(DovecotOptions::serving(&root, &["alice"]));
    assert_eq!(again.imap("alice").fetch_all("Projects/Café Crème"), got);
}

/// A self-signed certificate for 127.0.0.1 and localhost, made with the openssl tool.
pub fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl (install it: scripts/setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[test]
fn dovecot_fixture_with_tls_offers_starttls_and_implicit_tls_with_the_given_certificate() {
    let dir = TempDir::new("dovecot-tls");
    let (cert, key) = self_signed(dir.path());
    let server = DovecotServer::start(DovecotOptions::empty(&["alice"]).with_tls(&cert, &key));

    // The plain port offers STARTTLS.
    let mut s = std::net::TcpStream::connect(server.imap_addr()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut greeting = [0u8; 512];
    let n = s.read(&mut greeting).unwrap();
    let greeting = String::from_utf8_lossy(&greeting[..n]).into_owned();
    assert!(greeting.contains("STARTTLS"), "{greeting}");
    drop(s);

    // STARTTLS and the imaps port both present the given certificate.
    let imaps = server.imaps_addr().expect("an imaps port in TLS mode");
    for (addr, starttls) in [(imaps, false), (server.imap_addr(), true)] {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-quiet", "-verify_return_error", "-CAfile"])
            .arg(&cert)
            .args(["-verify_ip", "127.0.0.1", "-connect"])
            .arg(addr.to_string());
        if starttls {
            cmd.args(["-starttls", "imap"]);
        }
        let mut client = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let login = format!(
            "a LOGIN alice {}\r\nb LOGOUT\r\n",
            crate::support::dovecot::PASSWORD
        );
        client
            .stdin
            .take()
            .unwrap()
            .write_all(login.as_bytes())
            .unwrap();
        let out = client.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("a OK") && text.contains("b OK"),
            "starttls {starttls}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A plain client still logs in from 127.0.0.1 (Dovecot counts a connection from its own
    // address as secured) and sees the same tree.
    let mut imap = server.imap("alice");
    imap.create("Written");
    imap.append("Written", &[], None, b"Subject: in the clear\r\n\r\nx\r\n");
    assert_eq!(imap.fetch_all("Written").len(), 1);
    assert!(server
        .mail_root()
        .join("alice/.Written/dovecot-uidlist")
        .is_file());
}

// ---------------------------------------------------------------------------------------------
// Cyrus → `restore --maildir` → Dovecot

/// What a client that syncs by UID sees of one folder.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FolderFacts {
    uidvalidity: u32,
    uidnext: u32,
    /// (uid, sorted flags without \Recent, internal date in seconds, size, SHA-1 of BODY[])
    messages: Vec<(u32, Vec<String>, i64, u64, String)>,
}

/// A user's own folders as an IMAP server shows them (other users' and shared folders left
/// out), and their subscriptions as LSUB shows them. Both servers' namespaces use `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    folders: BTreeMap<String, FolderFacts>,
    /// Every name LIST shows, selectable or not (a level that is no mailbox).
    listed: Vec<(String, bool)>,
    lsub: Vec<String>,
}

fn own(name: &str) -> bool {
    !name.starts_with("Other Users") && !name.starts_with("Shared Folders")
}

fn seen_over_imap(imap: &mut Imap) -> Seen {
    let mut folders = BTreeMap::new();
    let mut listed = Vec::new();
    for entry in imap.list("*") {
        if !own(&entry.name) {
            continue;
        }
        let selectable = !entry.has_flag("\\NoSelect") && !entry.has_flag("\\NonExistent");
        listed.push((entry.name.clone(), selectable));
        if !selectable {
            continue;
        }
        let info = imap.examine(&entry.name);
        let messages = imap
            .fetch_all(&entry.name)
            .into_iter()
            .map(|m| {
                (
                    m.uid,
                    m.flags,
                    internaldate_epoch(&m.internaldate),
                    m.size,
                    m.sha1,
                )
            })
            .collect();
        folders.insert(
            entry.name,
            FolderFacts {
                uidvalidity: info.uidvalidity,
                uidnext: info.uidnext,
                messages,
            },
        );
    }
    let mut lsub: Vec<String> = imap
        .lsub("*")
        .into_iter()
        .filter(|e| own(&e.name) && !e.has_flag("\\NonExistent"))
        .map(|e| e.name)
        .collect();
    lsub.sort();
    listed.sort();
    Seen {
        folders,
        listed,
        lsub,
    }
}

/// Keywords for the folder that holds more than a Maildir folder can: `kw01`–`kw24` on all
/// three messages, `kw25`–`kw26` on two, `kw27`–`kw30` on the first only. Carried by use, the
/// last four are the ones left out; carried in order of first appearance (the first message's
/// keywords first), `kw25` and `kw26` would be.
fn keyword_sets() -> [Vec<String>; 3] {
    let kw = |r: std::ops::RangeInclusive<u32>| r.map(|i| format!("kw{i:02}")).collect::<Vec<_>>();
    let mut first = kw(1..=24);
    first.extend(kw(27..=30));
    [first, kw(1..=26), kw(1..=26)]
}

const NOT_CARRIED: [&str; 4] = ["kw27", "kw28", "kw29", "kw30"];

/// Beyond `populate`: a folder with a dot in its name, one with 30 keywords and UIDNEXT above
/// its last message (the newest expunged), a draft, a subscription to a folder since deleted
/// (Cyrus keeps it, LSUB hides it), and bob subscribed to alice's shared folder.
fn add_dovecot_cases(server: &CyrusServer) {
    let mut a = server.imap("alice");
    a.create("Odd.Name");
    a.subscribe("Odd.Name");
    a.append(
        "Odd.Name",
        &["\\Draft"],
        Some("29-Feb-2024 23:59:59 -0500"),
        b"From: d@example.org\r\nSubject: a draft\r\n\r\nunfinished\r\n",
    );
    a.create("Many Keywords");
    for (i, set) in keyword_sets().iter().enumerate() {
        let flags: Vec<&str> = set.iter().map(String::as_str).collect();
        a.append(
            "Many Keywords",
            &flags,
            Some(&format!("0{}-Mar-2021 12:00:00 +0000", i + 1)),
            format!("From: k@example.org\r\nSubject: keywords {i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
    }
    let last = a.append(
        "Many Keywords",
        &["\\Seen"],
        None,
        b"From: k@example.org\r\nSubject: expunged\r\n\r\ngone\r\n",
    );
    a.select("Many Keywords");
    a.uid_store(&last.to_string(), "+FLAGS", &["\\Deleted"]);
    a.uid_expunge(&last.to_string());
    a.unselect();
    a.create("Gone");
    a.subscribe("Gone");
    a.delete("Gone");
    drop(a);
    let mut b = server.imap("bob");
    b.subscribe("Other Users/alice/Shared");
    drop(b);
}

#[test]
fn a_maildir_export_is_served_by_dovecot_with_cyrus_uids_flags_dates_and_subscriptions() {
    let cyrus = CyrusServer::start(CyrusOptions::default());
    populate(&cyrus);
    add_dovecot_cases(&cyrus);
    let users = ["alice", "bob", "john.doe"];
    let work = TempDir::new("dovecot-export");
    let archives = work.path().join("archives");
    ok(&run(&[
        "backup",
        "--config",
        cyrus.config_path().to_str().unwrap(),
        "--archive-dir",
        archives.to_str().unwrap(),
    ]));
    let expected: BTreeMap<&str, Seen> = users
        .iter()
        .map(|u| (*u, seen_over_imap(&mut cyrus.imap(u))))
        .collect();
    // The cases are there to be compared.
    let alice = &expected["alice"];
    let many = &alice.folders["Many Keywords"];
    assert_eq!(many.messages.len(), 3);
    assert_eq!(many.uidnext, 5, "the last UID was expunged");
    assert!(alice.lsub.contains(&"Odd.Name".to_string()), "{alice:?}");
    // Cyrus made the level above a new mailbox a mailbox of its own: exported as a folder.
    assert!(
        alice.listed.contains(&("Projects".to_string(), true)),
        "{:?}",
        alice.listed
    );
    assert!(alice.folders["INBOX"]
        .messages
        .windows(2)
        .any(|w| w[1].0 > w[0].0 + 1));

    let exports = work.path().join("maildir");
    std::fs::create_dir(&exports).unwrap();
    for user in users {
        let target = exports.join(user);
        let o = run(&[
            "restore",
            "--archive-dir",
            archives.to_str().unwrap(),
            "--user",
            user,
            "--maildir",
            target.to_str().unwrap(),
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_str(stdout(&o).trim())
            .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&o), stderr(&o)));
        let not_carried: Vec<String> = report["data"]["not_carried"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        if user == "alice" {
            // Keywords beyond 26 are reported per folder and make the exit code 1.
            assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
            assert_eq!(not_carried.len(), NOT_CARRIED.len(), "{not_carried:?}");
            for (line, kw) in not_carried.iter().zip(NOT_CARRIED) {
                assert!(
                    line.starts_with(&format!("Many Keywords: keyword {kw} on 1 message")),
                    "{line}"
                );
            }
            assert!(stderr(&o).contains("not carried: Many Keywords: keyword kw30"));
        } else {
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            assert!(not_carried.is_empty(), "{not_carried:?}");
        }
        for field in ["bad", "refused", "lost"] {
            assert_eq!(report["data"][field], serde_json::json!([]), "{report}");
        }
    }

    let dovecot = DovecotServer::start(DovecotOptions::serving(&exports, &users));
    for user in users {
        let got = seen_over_imap(&mut dovecot.imap(user));
        let mut want = expected[user].clone();
        if user == "alice" {
            for m in &mut want.folders.get_mut("Many Keywords").unwrap().messages {
                m.1.retain(|f| !NOT_CARRIED.contains(&f.as_str()));
            }
        }
        assert_eq!(got.lsub, want.lsub, "{user}: subscriptions");
        assert_eq!(got.listed, want.listed, "{user}: LIST");
        assert_eq!(
            got.folders.keys().collect::<Vec<_>>(),
            want.folders.keys().collect::<Vec<_>>(),
            "{user}: folders\n{}",
            dovecot.log()
        );
        for (name, w) in &want.folders {
            assert_eq!(&got.folders[name], w, "{user}: {name}\n{}", dovecot.log());
        }
    }
    // What Dovecot was given, as the format says.
    let many = exports.join("alice/.Many Keywords");
    let uidlist = std::fs::read_to_string(many.join("dovecot-uidlist")).unwrap();
    assert!(
        uidlist.starts_with(&format!(
            "3 V{} N5",
            expected["alice"].folders["Many Keywords"].uidvalidity
        )),
        "{uidlist}"
    );
    assert!(exports.join("alice/.Odd%2eName/cur").is_dir());
}
