//! A private, real Dovecot 2.3 IMAP server on 127.0.0.1 for integration tests: it serves Maildir++
//! trees (a `--maildir` export, one per user) or starts empty as an ordinary writable IMAP server
//! (for APPENDs), optionally with TLS (STARTTLS on the plain port, implicit TLS on a second one).
//!
//! Install with `scripts/setup-dovecot`: Debian's dovecot-core plus the IMAP binaries of
//! dovecot-imapd unpacked into a cache (the package itself conflicts with cyrus-imapd). A missing
//! install is a panic, never a skip. Nothing of /etc/dovecot is read; every instance lives in its
//! own directory under the temp dir, listens on 127.0.0.1 only, and is stopped (TERM, then KILL)
//! and removed by Drop, which also runs when a test panics.
//!
//! Layout Dovecot is given: `mail = maildir:<mail root>/%u` (Maildir++: the INBOX is the root,
//! folders are `.<level>.<level>` directories), names in the IMAP namespace separated by `/`, the
//! listescape plugin with `%` so `%2e` on disk is a `.` in a name (as mailpack's export writes).
//! Users come from a passwd-file with PLAIN passwords. The mail tree is served as the `mail` user
//! when the tests run as root (the tree is chowned to it at start; Dovecot refuses uid 0 for
//! mail), else as the current user.
//!
//! TLS mode (`DovecotOptions::tls`): `ssl = yes` with the given PEM certificate and key and
//! `disable_plaintext_auth = yes`: the plain port offers STARTTLS, the `imaps` port (a second
//! free port) speaks TLS from the first byte. Dovecot counts a connection whose remote address
//! is its own local address as secured, and every client here connects from 127.0.0.1 to
//! 127.0.0.1: so LOGIN in the clear is still accepted on the plain port (no LOGINDISABLED), which
//! is how `imap()` reads the content back in either mode. A test of a client's refusal to send
//! a password in the clear must therefore check the client, not rely on the server refusing.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cyrus::Imap;

/// Every user's password (passwd-file, PLAIN scheme).
pub const PASSWORD: &str = "dovecot-test-password";

/// The Dovecot release the fixture's configuration is written for.
pub const DOVECOT_SERIES: &str = "2.3.";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DIR_PREFIX: &str = "mailpack-dovecot-";
const MASTER: &str = "/usr/sbin/dovecot";

/// A certificate and its key, PEM files, for the TLS mode.
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Default)]
pub struct DovecotOptions {
    /// Serve `<mail_root>/<user>` as each user's Maildir++ (what `restore --maildir` wrote for
    /// that user). `None`: an empty tree of the instance's own, where users' mailboxes appear as
    /// they are created over IMAP.
    pub mail_root: Option<PathBuf>,
    /// Users who can log in (with `PASSWORD`).
    pub users: Vec<String>,
    pub tls: Option<Tls>,
}

impl DovecotOptions {
    pub fn serving(mail_root: &Path, users: &[&str]) -> DovecotOptions {
        DovecotOptions {
            mail_root: Some(mail_root.to_path_buf()),
            users: users.iter().map(|u| u.to_string()).collect(),
            tls: None,
        }
    }

    pub fn empty(users: &[&str]) -> DovecotOptions {
        DovecotOptions {
            mail_root: None,
            users: users.iter().map(|u| u.to_string()).collect(),
            tls: None,
        }
    }

    pub fn with_tls(mut self, cert: &Path, key: &Path) -> DovecotOptions {
        self.tls = Some(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        });
        self
    }
}

/// A running private Dovecot.
pub struct DovecotServer {
    main: Instance,
    mail_root: PathBuf,
    base: PathBuf,
}

impl DovecotServer {
    pub fn start(options: DovecotOptions) -> DovecotServer {
        let bins = imap_binaries();
        reap_stale_instances();
        let base = new_base_dir();
        let ids = mail_ids();
        let mail_root = match &options.mail_root {
            Some(r) => r.clone(),
            None => {
                let r = base.join("mail");
                std::fs::create_dir(&r).unwrap();
                r
            }
        };
        // Dovecot drops to the mail uid before it opens a mailbox: the tree must be its own.
        chown_tree(&mail_root, ids.uid, ids.gid);
        let mut passwd = String::new();
        for u in &options.users {
            assert!(
                !u.contains(':') && !u.contains('\n') && !u.is_empty(),
                "user name {u:?} cannot go into a passwd-file"
            );
            passwd.push_str(&format!("{u}:{{PLAIN}}{PASSWORD}\n"));
        }
        std::fs::write(base.join("passwd"), passwd).unwrap();
        let home = base.join("home");
        std::fs::create_dir(&home).unwrap();
        chown_tree(&home, ids.uid, ids.gid);
        let shared = Shared {
            bins,
            ids,
            mail_root: mail_root.clone(),
            passwd: base.join("passwd"),
            home,
        };
        let main = Instance::start(&base.join("main"), &shared, options.tls.as_ref());
        DovecotServer {
            main,
            mail_root,
            base,
        }
    }

    /// The plain IMAP port (STARTTLS offered in TLS mode).
    pub fn imap_addr(&self) -> SocketAddr {
        self.main.addr(self.main.ports.imap)
    }

    /// The implicit-TLS port; `None` without TLS.
    pub fn imaps_addr(&self) -> Option<SocketAddr> {
        self.main.ports.imaps.map(|p| self.main.addr(p))
    }

    /// A logged-in IMAP session as `user` on the plain port, without TLS (see the module's
    /// note on TLS mode).
    pub fn imap(&self, user: &str) -> Imap {
        let mut c = Imap::connect(self.imap_addr());
        c.login(user, PASSWORD);
        c
    }

    /// The tree served: `<mail_root>/<user>` is a user's Maildir++.
    pub fn mail_root(&self) -> &Path {
        &self.mail_root
    }

    /// The instance's logs, for panic messages.
    pub fn log(&self) -> String {
        self.main.log()
    }

    /// Stops the server; also done by Drop.
    pub fn stop(&mut self) {
        self.main.stop();
    }
}

impl Drop for DovecotServer {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("MAILPACK_KEEP_DOVECOT").is_some() {
            eprintln!("keeping Dovecot test instance at {}", self.base.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

// ---------------------------------------------------------------------------------------------
// One dovecot master

struct Shared {
    bins: PathBuf,
    ids: Ids,
    mail_root: PathBuf,
    passwd: PathBuf,
    home: PathBuf,
}

#[derive(Clone, Copy)]
struct Ports {
    imap: u16,
    imaps: Option<u16>,
}

struct Instance {
    dir: PathBuf,
    child: Option<Child>,
    ports: Ports,
}

impl Instance {
    fn start(dir: &Path, shared: &Shared, tls: Option<&Tls>) -> Instance {
        std::fs::create_dir(dir).unwrap();
        let mut last = String::new();
        // Ports are checked free first, but another process may take one before Dovecot binds
        // it; only that race is worth another try with new ports.
        for _ in 0..4 {
            let picked = pick_ports(if tls.is_some() { 2 } else { 1 });
            let ports = Ports {
                imap: picked[0],
                imaps: picked.get(1).copied(),
            };
            std::fs::write(dir.join("dovecot.conf"), config(dir, shared, tls, ports)).unwrap();
            let _ = std::fs::remove_file(dir.join("dovecot.log"));
            let out = std::fs::File::create(dir.join("master.out")).unwrap();
            let child = Command::new(MASTER)
                .arg("-F")
                .arg("-c")
                .arg(dir.join("dovecot.conf"))
                .env("TZ", "UTC")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                // Its own process group, so a KILL fallback reaches every child it started.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {MASTER}: {e}; run scripts/setup-dovecot"));
            let mut inst = Instance {
                dir: dir.to_path_buf(),
                child: Some(child),
                ports,
            };
            match inst.wait_ready() {
                Ok(()) => return inst,
                Err(why) => {
                    last = format!("{why}\n{}", inst.log());
                    inst.stop();
                    if !last.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("private Dovecot did not start: {last}");
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Ready when the plain port greets with `* OK` (and the TLS port accepts connections).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("dovecot exited with {status}"));
                }
            }
            if greets(self.addr(self.ports.imap))
                && self
                    .ports
                    .imaps
                    .is_none_or(|p| TcpStream::connect(self.addr(p)).is_ok())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no IMAP greeting within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "--- {} ---\n{}--- master output ---\n{}",
            self.dir.join("dovecot.log").display(),
            read("dovecot.log"),
            read("master.out")
        )
    }

    /// TERM to the master (it stops its children), then KILL to the group if it lingers.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Children that outlived the master (they exit on their own once it is gone) are not
        // waited for; the group gets a KILL so none holds the mail tree after the test.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

fn greets(addr: SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"* OK"
}

/// The instance's configuration: nothing of /etc/dovecot is read.
fn config(dir: &Path, shared: &Shared, tls: Option<&Tls>, ports: Ports) -> String {
    let d = |p: &Path| p.display().to_string();
    let bin = |name: &str| d(&shared.bins.join(name));
    let Ids {
        uid,
        gid,
        ref user,
        ref group,
    } = shared.ids;
    let (ssl, imaps) = match (tls, ports.imaps) {
        (Some(t), Some(port)) => (
            format!(
                "ssl = yes\nssl_cert = <{}\nssl_key = <{}\ndisable_plaintext_auth = yes\n",
                d(&t.cert),
                d(&t.key)
            ),
            format!("  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {port}\n    ssl = yes\n  }}\n"),
        ),
        _ => (
            "ssl = no\ndisable_plaintext_auth = no\n".to_string(),
            "  inet_listener imaps {\n    port = 0\n  }\n".to_string(),
        ),
    };
    // As root Dovecot's own unprivileged users (dovecot, dovenull) run the login and auth
    // processes; as anyone else everything runs as that user.
    let internal = if unsafe { libc::geteuid() } == 0 {
        String::new()
    } else {
        format!(
            "default_internal_user = {user}\ndefault_internal_group = {group}\n\
             default_login_user = {user}\n"
        )
    };
    let services: String = [
        "imap",
        "imap-hibernate",
        "imap-urlauth",
        "imap-urlauth-login",
        "imap-urlauth-worker",
    ]
    .iter()
    .map(|s| format!("service {s} {{\n  executable = {}\n}}\n", bin(s)))
    .collect();
    let name = dir
        .strip_prefix(std::env::temp_dir())
        .unwrap_or(dir)
        .display()
        .to_string()
        .replace('/', "-");
    format!(
        r#"# Written by the test fixture tests/it/support/dovecot.rs
instance_name = {name}
base_dir = {base}
state_dir = {state}
log_path = {log}
protocols = imap
listen = 127.0.0.1
{ssl}auth_mechanisms = plain login
{internal}first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
mail_plugins = listescape
namespace inbox {{
  inbox = yes
  prefix =
  separator = /
}}
plugin {{
  listescape_char = "%%"
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}/%u mail=maildir:{mail}/%u
}}
service imap-login {{
  executable = {login}
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
{imaps}}}
{services}"#,
        base = d(&dir.join("run")),
        state = d(&dir.join("state")),
        log = d(&dir.join("dovecot.log")),
        passwd = d(&shared.passwd),
        home = d(&shared.home),
        mail = d(&shared.mail_root),
        login = bin("imap-login"),
        port = ports.imap,
    )
}

// ---------------------------------------------------------------------------------------------
// Install, users, directories, ports

/// `usr/lib/dovecot` of the unpacked dovecot-imapd matching the installed dovecot-core (where
/// `scripts/setup-dovecot` puts it). Panics with the way out when either is missing.
fn imap_binaries() -> PathBuf {
    static BINS: OnceLock<PathBuf> = OnceLock::new();
    BINS.get_or_init(|| {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", "dovecot-core"])
            .output();
        let version = match out {
            Ok(o) if o.status.success() && !o.stdout.is_empty() => {
                String::from_utf8_lossy(&o.stdout).into_owned()
            }
            _ => panic!("dovecot-core is not installed: run scripts/setup-dovecot"),
        };
        assert!(
            Path::new(MASTER).is_file(),
            "no {MASTER}: run scripts/setup-dovecot"
        );
        let v = Command::new(MASTER)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert!(
            v.starts_with(DOVECOT_SERIES),
            "{MASTER} is not Dovecot {DOVECOT_SERIES}x (it says {v:?})"
        );
        let bins = tools_dir()
            .join("dovecot-imapd")
            .join(version.replace(':', "_"))
            .join("usr/lib/dovecot");
        assert!(
            bins.join("imap").is_file() && bins.join("imap-login").is_file(),
            "no IMAP binaries for dovecot-core {version} in {}: run scripts/setup-dovecot",
            bins.display()
        );
        bins
    })
    .clone()
}

/// Mirrors the cache location of `scripts/setup-dovecot`.
fn tools_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("MAILPACK_TOOLS") {
        return PathBuf::from(t);
    }
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache"),
    };
    cache.join("mailpack-tools")
}

#[derive(Clone)]
struct Ids {
    uid: u32,
    gid: u32,
    user: String,
    group: String,
}

/// Who owns and serves the mail: `mail` as root, else the current user.
fn mail_ids() -> Ids {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    let euid = unsafe { libc::geteuid() };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.len() > 3
                && if euid == 0 {
                    f[0] == "mail"
                } else {
                    f[2].parse() == Ok(euid)
                }
        });
    let Some(f) = entry else {
        panic!("no passwd entry for the mail user (uid {euid})");
    };
    let (uid, gid): (u32, u32) = (f[2].parse().unwrap(), f[3].parse().unwrap());
    let group = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|g| g.len() > 2 && g[2].parse() == Ok(gid))
        .map(|g| g[0].to_string())
        .unwrap_or_else(|| f[0].to_string());
    Ids {
        uid,
        gid,
        user: f[0].to_string(),
        group,
    }
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let meta = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

fn new_base_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Instances left by a test process that was killed (so its Drop never ran): stop their master
/// and remove the directory. Runs once per test process.
fn reap_stale_instances() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for dir in crate::support::dirs_of_dead_test_processes(DIR_PREFIX) {
            for inst in ["main"] {
                let conf = dir.join(inst).join("dovecot.conf");
                let Ok(pid) = std::fs::read_to_string(dir.join(inst).join("run/master.pid")) else {
                    continue;
                };
                let Ok(pid) = pid.trim().parse::<i32>() else {
                    continue;
                };
                // Only a master that really is this instance's.
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&*conf.to_string_lossy()) {
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

/// `n` distinct free ports below the kernel's ephemeral range (32768+), so an outgoing
/// connection elsewhere in the test run cannot take one between this check and Dovecot's bind.
/// 32000–32767: the Cyrus fixture picks from 20000–31999.
fn pick_ports(n: usize) -> Vec<u16> {
    crate::support::pick_free_ports(n, 32000..32768, &[])
}
