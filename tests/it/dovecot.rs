//! A private Dovecot 2.3 (tests/it/support/dovecot.rs): the fixture itself, as an ordinary
//! writable server and with TLS.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use crate::cyrus::internaldate_epoch;
use crate::support::dovecot::{DovecotOptions, DovecotServer};
use crate::util::TempDir;

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
