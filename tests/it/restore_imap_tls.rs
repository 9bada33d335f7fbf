//! `restore --imap` over TLS against a real Cyrus 3.6 serving a certificate from a private CA
//! the test makes: implicit TLS and STARTTLS restores match the original messages (SHA-1,
//! flags, internal date) and a re-run adds nothing; an untrusted certificate is refused
//! unless `--imap-ca` or `--imap-insecure`; a server without STARTTLS gets no password unless
//! `--imap-allow-plaintext`; AUTHENTICATE PLAIN when offered, LOGIN otherwise. And the same
//! restores into a real Dovecot 2.3 (the private fixture, TLS on).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::backup::run_backup;
use crate::cyrus::{internaldate_epoch, CyrusOptions, CyrusServer};
use crate::spool_view::{imap_facts, populate, MailboxFacts};
use crate::support::dovecot::{DovecotOptions, DovecotServer};
use crate::support::tls::TestCa;
use crate::util::{ok, run, stderr, TempDir};

/// Never checked by the fixture (alwaystrue), so its only job is to be recognisable on the
/// wire.
const PASSWORD: &str = "pw-not-for-the-wire-7f3a";

/// A TLS Cyrus holding `populate`'s users, alice backed up.
struct Setup {
    work: TempDir,
    ca: TestCa,
    server: CyrusServer,
    password_file: PathBuf,
}

impl Setup {
    fn new(tag: &str, opts: CyrusOptions) -> Setup {
        let work = TempDir::new(tag);
        let ca = TestCa::new(&work.path().join("tls"));
        let server = CyrusServer::start(opts.with_tls(&ca.cert, &ca.key));
        populate(&server);
        run_backup(
            &server.config_path(),
            &work.path().join("archives"),
            &["alice"],
        );
        let password_file = work.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        Setup {
            work,
            ca,
            server,
            password_file,
        }
    }

    fn imaps(&self) -> String {
        format!("imaps://{}", self.server.imaps_addr().unwrap())
    }

    /// `mailpack restore --user alice --mailbox MAILBOX --imap ADDR … --folder FOLDER`.
    fn restore(&self, mailbox: &str, addr: &str, folder: &str, extra: &[&str]) -> Output {
        restore_cli(
            &self.work.path().join("archives"),
            &self.password_file,
            mailbox,
            addr,
            folder,
            extra,
        )
    }

    /// Lines where Cyrus logged a login by alice inside TLS (`… alice PLAIN+TLS User logged
    /// in …`): the restore's, as the harness's own sessions use no TLS.
    fn tls_logins(&self) -> Vec<String> {
        self.server
            .log()
            .lines()
            .filter(|l| l.contains("login:") && l.contains(" alice ") && l.contains("+TLS "))
            .map(str::to_string)
            .collect()
    }
}

fn restore_cli(
    archives: &Path,
    password_file: &Path,
    mailbox: &str,
    addr: &str,
    folder: &str,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "restore",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
        "--mailbox",
        mailbox,
        "--imap",
        addr,
        "--imap-user",
        "alice",
        "--imap-password-file",
        password_file.to_str().unwrap(),
        "--folder",
        folder,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// (SHA-1, sorted flags, internal date) of each message, sorted: a folder's content as a
/// multiset, whatever UIDs the restore got.
fn content(
    messages: impl Iterator<Item = (String, Vec<String>, i64)>,
) -> Vec<(String, Vec<String>, i64)> {
    let mut v: Vec<_> = messages.collect();
    v.sort();
    v
}

/// The restored folder holds exactly the original mailbox's messages, flags and dates.
pub fn assert_restored(server: &CyrusServer, folder: &str, original: &MailboxFacts) {
    let name = folder.replace('/', &server.separator().to_string());
    let got = server.imap("alice").fetch_all(&name);
    let got = content(
        got.into_iter()
            .map(|m| (m.sha1, m.flags, internaldate_epoch(&m.internaldate))),
    );
    let want = content(
        original
            .messages
            .iter()
            .map(|(_, flags, date, _, sha1)| (sha1.clone(), flags.clone(), *date)),
    );
    assert!(!want.is_empty());
    assert_eq!(got, want, "{folder}");
}

fn counts(o: &Output) -> String {
    ok(o).lines().last().unwrap_or_default().to_string()
}

#[test]
fn imaps_with_a_private_ca_restores_exactly_with_authenticate_plain_and_a_rerun_adds_nothing() {
    let s = Setup::new("imap-tls-imaps", CyrusOptions::default());
    let original = &imap_facts(&s.server, "alice").mailboxes["Archive"];
    let ca = s.ca.ca.to_str().unwrap();
    let first = s.restore("Archive", &s.imaps(), "Restored/tls", &["--imap-ca", ca]);
    let n = original.messages.len();
    assert_eq!(
        counts(&first),
        format!("1 mailboxes, {n} messages written, 0 already there")
    );
    assert!(!stderr(&first).contains("warning"), "{}", stderr(&first));
    assert_restored(&s.server, "Restored/tls", original);
    let logins = s.tls_logins();
    assert!(
        !logins.is_empty() && logins.iter().all(|l| l.contains(" PLAIN+TLS ")),
        "AUTHENTICATE PLAIN expected, never LOGIN: {logins:?}"
    );

    let again = s.restore("Archive", &s.imaps(), "Restored/tls", &["--imap-ca", ca]);
    assert_eq!(
        counts(&again),
        format!("1 mailboxes, 0 messages written, {n} already there")
    );
    assert_restored(&s.server, "Restored/tls", original);
}

#[test]
fn starttls_reads_capabilities_again_and_falls_back_to_login_without_auth_plain() {
    // Only LOGIN offered: the client must use the LOGIN command, and only inside TLS. (No
    // sieve: timsieved would offer no mechanism the harness speaks.)
    let opts = CyrusOptions {
        sieve: false,
        ..CyrusOptions::default()
    };
    let s = Setup::new("imap-tls-starttls", opts.with("sasl_mech_list", "LOGIN"));
    let original = &imap_facts(&s.server, "alice").mailboxes["INBOX"];
    let ca = s.ca.ca.to_str().unwrap();
    let n = original.messages.len();
    // Bare HOST:PORT on a port other than 993 means STARTTLS; imap:// says so explicitly.
    let bare = s.server.imap_addr().to_string();
    let first = s.restore("INBOX", &bare, "Restored/starttls", &["--imap-ca", ca]);
    assert_eq!(
        counts(&first),
        format!("1 mailboxes, {n} messages written, 0 already there")
    );
    assert_restored(&s.server, "Restored/starttls", original);
    let logins = s.tls_logins();
    assert!(
        !logins.is_empty() && logins.iter().all(|l| l.contains(" plaintext+TLS ")),
        "LOGIN inside TLS expected: {logins:?}"
    );
    let url = format!("imap://{}", s.server.imap_addr());
    let again = s.restore("INBOX", &url, "Restored/starttls", &["--imap-ca", ca]);
    assert_eq!(
        counts(&again),
        format!("1 mailboxes, 0 messages written, {n} already there")
    );
    assert_restored(&s.server, "Restored/starttls", original);
}

#[test]
fn an_untrusted_certificate_is_refused_unless_insecure_which_says_so() {
    let s = Setup::new("imap-tls-untrusted", CyrusOptions::default());
    for addr in [s.imaps(), format!("imap://{}", s.server.imap_addr())] {
        let refused = s.restore("Archive", &addr, "Restored/untrusted", &[]);
        assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
        let err = stderr(&refused);
        assert!(
            err.contains(&addr)
                && err.contains("certificate not trusted")
                && err.contains("--imap-ca"),
            "{err}"
        );
    }
    assert!(
        s.server.imap("alice").list("Restored*").is_empty(),
        "nothing may be created behind a refused certificate"
    );
    let insecure = s.restore(
        "Archive",
        &s.imaps(),
        "Restored/untrusted",
        &["--imap-insecure"],
    );
    let n = imap_facts(&s.server, "alice").mailboxes["Archive"]
        .messages
        .len();
    assert_eq!(
        counts(&insecure),
        format!("1 mailboxes, {n} messages written, 0 already there")
    );
    let err = stderr(&insecure);
    assert!(
        err.contains("warning:") && err.contains("NOT checked"),
        "{err}"
    );
    // A CA file that does not sign the server's certificate is no better than none.
    let other = TestCa::new(&s.work.path().join("other-ca"));
    let wrong = s.restore(
        "Archive",
        &s.imaps(),
        "Restored/untrusted",
        &["--imap-ca", other.ca.to_str().unwrap()],
    );
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        stderr(&wrong).contains("certificate not trusted"),
        "{}",
        stderr(&wrong)
    );
}

/// A listener that greets like an IMAP server without STARTTLS, answers whatever comes with
/// OK, and hands back every byte the client sent.
fn recording_server() -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] plain only\r\n")
            .unwrap();
        let mut seen = Vec::new();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            seen.extend_from_slice(&line);
            let tag = line
                .split(|&b| b == b' ')
                .next()
                .unwrap_or_default()
                .to_vec();
            let mut reply = tag;
            reply.extend_from_slice(b" OK done\r\n");
            if conn.write_all(&reply).is_err() {
                break;
            }
        }
        let _ = reader.read_to_end(&mut seen);
        seen
    });
    (addr, handle)
}

#[test]
fn a_server_without_starttls_gets_no_password_unless_plaintext_is_allowed() {
    let work = TempDir::new("imap-tls-plain");
    let password_file = work.path().join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let archives = work.path().join("archives");
    let server = CyrusServer::start(CyrusOptions::default());
    populate(&server);
    run_backup(&server.config_path(), &archives, &["alice"]);

    let (addr, recorded) = recording_server();
    let url = format!("imap://{addr}");
    let refused = restore_cli(
        &archives,
        &password_file,
        "Archive",
        &url,
        "Restored/plain",
        &[],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let err = stderr(&refused);
    assert!(
        err.contains(&url) && err.contains("STARTTLS") && err.contains("--imap-allow-plaintext"),
        "{err}"
    );
    let seen = String::from_utf8_lossy(&recorded.join().unwrap()).into_owned();
    // What the greeting offered in PLAIN, base64-encoded, must not have gone out either.
    assert!(!seen.contains(PASSWORD), "password sent in clear: {seen:?}");
    assert!(
        !seen.to_ascii_uppercase().contains("LOGIN")
            && !seen.to_ascii_uppercase().contains("AUTHENTICATE"),
        "a login was attempted in clear: {seen:?}"
    );

    // The real server without TLS: refused the same way, nothing created ...
    let plain = format!("imap://{}", server.imap_addr());
    let refused = restore_cli(
        &archives,
        &password_file,
        "Archive",
        &plain,
        "Restored/plain",
        &[],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("STARTTLS"),
        "{}",
        stderr(&refused)
    );
    assert!(server.imap("alice").list("Restored*").is_empty());
    // ... and restored when the operator allows clear text, with a warning.
    let allowed = restore_cli(
        &archives,
        &password_file,
        "Archive",
        &plain,
        "Restored/plain",
        &["--imap-allow-plaintext"],
    );
    let original = &imap_facts(&server, "alice").mailboxes["Archive"];
    assert_eq!(
        counts(&allowed),
        format!(
            "1 mailboxes, {} messages written, 0 already there",
            original.messages.len()
        )
    );
    assert!(
        stderr(&allowed).contains("warning:"),
        "{}",
        stderr(&allowed)
    );
    assert_restored(&server, "Restored/plain", original);
}

/// The folder on the Dovecot holds exactly the original Cyrus mailbox's messages.
fn assert_restored_dovecot(dovecot: &DovecotServer, folder: &str, original: &MailboxFacts) {
    let got = dovecot.imap("alice").fetch_all(folder);
    let got = content(
        got.into_iter()
            .map(|m| (m.sha1, m.flags, internaldate_epoch(&m.internaldate))),
    );
    let want = content(
        original
            .messages
            .iter()
            .map(|(_, flags, date, _, sha1)| (sha1.clone(), flags.clone(), *date)),
    );
    assert!(!want.is_empty());
    assert_eq!(got, want, "{folder} on Dovecot\n{}", dovecot.log());
}

#[test]
fn into_a_real_dovecot_over_imaps_and_starttls_exactly_once() {
    let s = Setup::new("imap-tls-dovecot", CyrusOptions::default());
    let facts = imap_facts(&s.server, "alice");
    let dovecot =
        DovecotServer::start(DovecotOptions::empty(&["alice"]).with_tls(&s.ca.cert, &s.ca.key));
    // Dovecot's own password for alice; the fixture's server ignores the Cyrus one.
    std::fs::write(&s.password_file, crate::support::dovecot::PASSWORD).unwrap();
    let ca = s.ca.ca.to_str().unwrap();
    let imaps = format!("imaps://{}", dovecot.imaps_addr().unwrap());
    let starttls = format!("imap://{}", dovecot.imap_addr());
    for (mailbox, addr, folder) in [
        ("INBOX", &imaps, "Restored/inbox"),
        ("Archive", &starttls, "Restored/archive"),
    ] {
        let original = &facts.mailboxes[mailbox];
        let n = original.messages.len();
        let first = s.restore(mailbox, addr, folder, &["--imap-ca", ca]);
        assert_eq!(
            counts(&first),
            format!("1 mailboxes, {n} messages written, 0 already there"),
            "{}",
            dovecot.log()
        );
        assert!(!stderr(&first).contains("warning"), "{}", stderr(&first));
        assert_restored_dovecot(&dovecot, folder, original);
        let again = s.restore(mailbox, addr, folder, &["--imap-ca", ca]);
        assert_eq!(
            counts(&again),
            format!("1 mailboxes, 0 messages written, {n} already there")
        );
        assert_restored_dovecot(&dovecot, folder, original);
    }
    // Dovecot logs the mechanism of each login, and ", TLS" when it was inside TLS.
    let log = dovecot.log();
    let logins: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Login: user=<alice>"))
        .collect();
    assert!(
        logins.len() >= 4
            && logins
                .iter()
                .filter(|l| l.contains("method=PLAIN") && l.contains(", TLS"))
                .count()
                >= 4,
        "{logins:#?}"
    );
}
