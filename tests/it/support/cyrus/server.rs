//! The private Cyrus instance: `CyrusOptions` (what goes into imapd.conf), `CyrusServer`
//! (directories, ports, starting and stopping master, running Cyrus tools, logged-in sessions)
//! and the syslog shim that gives a test Cyrus's log.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use crate::support::port_free;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::imap::Imap;
use super::lmtp::Lmtp;
use super::sha1_hex_of;
use super::sieve::ManageSieve;

/// Debian's cyrus-common puts the daemons and tools here, not on PATH.
pub const CYRUS_BIN: &str = "/usr/lib/cyrus/bin";

/// Every test server shares this password; `sasl_pwcheck_method: alwaystrue` accepts any.
pub const PASSWORD: &str = "secret";

/// The admin user written into `admins:`.
const ADMIN: &str = "admin";

/// How long `start` waits for IMAP, LMTP and sieve to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

extern "C" {
    // std already links libc; declaring the two calls we need avoids a crate dependency.
    fn kill(pid: i32, sig: i32) -> i32;
    fn geteuid() -> u32;
}
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

// ---------------------------------------------------------------------------------------------
// Options

/// Where Cyrus puts mailbox directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// 3.6 default: `uuid/<c1>/<c2>/<mailboxid>/` per mailbox.
    Uuid,
    /// `mailbox_legacy_dirs: yes`: directories named after the mailbox (`user/alice/Sent/`).
    Legacy,
}

/// The `virtdomains` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtDomains {
    Off,
    /// Domain taken from the login / recipient only (`alice@example.com`).
    UserId,
}

#[derive(Clone, Debug)]
pub struct CyrusOptions {
    pub layout: Layout,
    pub hashimapspool: bool,
    pub fulldirhash: bool,
    pub virtdomains: VirtDomains,
    pub defaultdomain: Option<String>,
    /// 3.6 built-in default is yes (Debian's shipped imapd.conf says no).
    pub altnamespace: bool,
    /// 3.6 built-in default is yes: `/` separates levels and `.` may appear in names.
    pub unixhierarchysep: bool,
    /// Put cyrus.header/index/cache/annotations under a separate `meta/` tree.
    pub metapartition: bool,
    /// Additional partitions `partition-<name>` (each gets its own directory).
    pub extra_partitions: Vec<String>,
    /// Start timsieved (ManageSieve) on its own port.
    pub sieve: bool,
    /// Extra or overriding imapd.conf lines; a key given here replaces the fixture's default.
    pub extra_config: Vec<(String, String)>,
    /// TLS: (certificate chain PEM, private key PEM), copied into the instance. The plain IMAP
    /// port then offers STARTTLS and an `imaps` service (implicit TLS) listens on its own port.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for CyrusOptions {
    fn default() -> Self {
        CyrusOptions {
            layout: Layout::Uuid,
            hashimapspool: false,
            fulldirhash: false,
            virtdomains: VirtDomains::Off,
            defaultdomain: None,
            altnamespace: true,
            unixhierarchysep: true,
            metapartition: false,
            extra_partitions: Vec::new(),
            sieve: true,
            extra_config: Vec::new(),
            tls: None,
        }
    }
}

impl CyrusOptions {
    /// Name-based directories with hashing, as an upgraded 3.x server would have.
    pub fn legacy() -> Self {
        CyrusOptions {
            layout: Layout::Legacy,
            hashimapspool: true,
            ..Default::default()
        }
    }

    /// Serves TLS with this certificate chain and key (both PEM).
    pub fn with_tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.extra_config.push((key.to_string(), value.to_string()));
        self
    }

    fn imapd_conf(&self, base: &Path) -> String {
        let b = |p: &str| base.join(p).to_str().unwrap().to_string();
        let yn = |v: bool| if v { "yes" } else { "no" }.to_string();
        let mut kv: Vec<(String, String)> = vec![
            ("configdirectory".into(), b("conf")),
            ("defaultpartition".into(), "default".into()),
            ("partition-default".into(), b("spool")),
            ("sievedir".into(), b("sieve")),
            ("proc_path".into(), b("run/proc")),
            ("mboxname_lockpath".into(), b("run/lock")),
            ("lmtpsocket".into(), b("conf/socket/lmtp")),
            ("idlesocket".into(), b("conf/socket/idle")),
            ("notifysocket".into(), b("conf/socket/notify")),
            ("admins".into(), ADMIN.into()),
            ("allowplaintext".into(), "yes".into()),
            // libsasl2 on Debian is built with alwaystrue; no saslauthd or sasldb needed.
            ("sasl_pwcheck_method".into(), "alwaystrue".into()),
            ("sasl_mech_list".into(), "PLAIN LOGIN".into()),
            ("umask".into(), "077".into()),
            ("servername".into(), "cyrus-test".into()),
            ("altnamespace".into(), yn(self.altnamespace)),
            ("unixhierarchysep".into(), yn(self.unixhierarchysep)),
            ("hashimapspool".into(), yn(self.hashimapspool)),
            ("fulldirhash".into(), yn(self.fulldirhash)),
            (
                "mailbox_legacy_dirs".into(),
                yn(self.layout == Layout::Legacy),
            ),
            (
                "virtdomains".into(),
                match self.virtdomains {
                    VirtDomains::Off => "off",
                    VirtDomains::UserId => "userid",
                }
                .into(),
            ),
            // Written out although they are the 3.6 defaults: tests rely on expunged files and
            // deleted mailboxes staying on disk.
            ("expunge_mode".into(), "delayed".into()),
            ("delete_mode".into(), "delayed".into()),
            // Otherwise lmtpd silently drops a second delivery of the same Message-ID to a
            // mailbox, which surprises tests that reuse a message.
            ("duplicatesuppression".into(), "0".into()),
        ];
        if let Some(d) = &self.defaultdomain {
            kv.push(("defaultdomain".into(), d.clone()));
        }
        if self.tls.is_some() {
            kv.push(("tls_server_cert".into(), b(TLS_CERT)));
            kv.push(("tls_server_key".into(), b(TLS_KEY)));
        }
        if self.metapartition {
            kv.push(("metapartition-default".into(), b("meta")));
            kv.push((
                "metapartition_files".into(),
                "header index cache expunge squat annotations".into(),
            ));
        }
        for p in &self.extra_partitions {
            kv.push((format!("partition-{p}"), b(&format!("spool-{p}"))));
            if self.metapartition {
                kv.push((format!("metapartition-{p}"), b(&format!("meta-{p}"))));
            }
        }
        // Cyrus rejects a key given twice, so overrides replace rather than append.
        for (k, v) in &self.extra_config {
            match kv.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.clone(),
                None => kv.push((k.clone(), v.clone())),
            }
        }
        let mut s = String::new();
        for (k, v) in kv {
            writeln!(s, "{k}: {v}").unwrap();
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The server

#[derive(Clone, Copy, Debug)]
struct Ports {
    imap: u16,
    lmtp: u16,
    sieve: u16,
    /// Implicit TLS; only served with `CyrusOptions::tls`.
    imaps: u16,
}

/// Where `CyrusOptions::tls` files are copied (readable by the cyrus user, unlike a root
/// test's 0600 key).
const TLS_CERT: &str = "etc/tls-cert.pem";
const TLS_KEY: &str = "etc/tls-key.pem";

/// A running private Cyrus instance. Stopped, and its directory removed, on drop (set
/// `MAILPACK_KEEP_CYRUS=1` to keep the directory for a post-mortem).
pub struct CyrusServer {
    base: PathBuf,
    opts: CyrusOptions,
    ports: Ports,
    master: Option<Child>,
    run_as: Option<(u32, u32)>,
}

impl CyrusServer {
    /// True when the Debian packages the fixture needs are installed.
    pub fn available() -> bool {
        ["master", "imapd", "lmtpd", "timsieved", "ctl_cyrusdb"]
            .iter()
            .all(|b| Path::new(CYRUS_BIN).join(b).exists())
    }

    pub fn start(opts: CyrusOptions) -> CyrusServer {
        assert!(
            Self::available(),
            "Cyrus IMAP is not installed ({CYRUS_BIN}/master missing): run scripts/setup-cyrus"
        );
        reap_stale_instances();
        let run_as = cyrus_ids();
        let base = new_base_dir();
        let mut server = CyrusServer {
            base,
            opts,
            ports: Ports {
                imap: 0,
                lmtp: 0,
                sieve: 0,
                imaps: 0,
            },
            master: None,
            run_as,
        };
        server.prepare_dirs();
        server.launch(None);
        server
    }

    /// Stops the server, keeping its files (for inspecting or copying a quiescent spool).
    pub fn stop(&mut self) {
        let Some(mut child) = self.master.take() else {
            return;
        };
        let pid = child.id() as i32;
        // master kills and reaps its own children on SIGTERM, so nothing is left as a zombie.
        unsafe { kill(pid, SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread_sleep_ms(20),
                _ => break,
            }
        }
        unsafe { kill(-pid, SIGKILL) };
        let _ = child.wait();
    }

    /// Starts a stopped server again on the same files (and the same ports when still free).
    /// Files a root test wrote into the tree meanwhile are handed to the cyrus user first.
    pub fn restart(&mut self) {
        self.stop();
        self.fix_ownership();
        let prev = self.ports;
        self.launch(Some(prev));
    }

    /// chowns the whole instance tree to the user the services run as (a no-op when the tests
    /// are not root). Needed after a root test copied or restored files into the spool.
    pub fn fix_ownership(&self) {
        if let Some((uid, gid)) = self.run_as {
            chown_tree(&self.base, uid, gid);
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.master.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn options(&self) -> &CyrusOptions {
        &self.opts
    }
    pub fn base_dir(&self) -> &Path {
        &self.base
    }
    /// The imapd.conf every Cyrus tool must be given with `-C`.
    pub fn config_path(&self) -> PathBuf {
        self.base.join("etc/imapd.conf")
    }
    pub fn cyrus_conf_path(&self) -> PathBuf {
        self.base.join("etc/cyrus.conf")
    }
    /// `configdirectory` (mailboxes.db, annotations.db, user/, quota/, ...).
    pub fn config_dir(&self) -> PathBuf {
        self.base.join("conf")
    }
    /// `partition-default`.
    pub fn spool_dir(&self) -> PathBuf {
        self.base.join("spool")
    }
    /// Message-file directory of a partition (`default` or one of `extra_partitions`).
    pub fn partition_path(&self, name: &str) -> PathBuf {
        if name == "default" {
            self.spool_dir()
        } else {
            self.base.join(format!("spool-{name}"))
        }
    }
    /// Metadata directory of a partition, when `metapartition` is on.
    pub fn meta_partition_path(&self, name: &str) -> Option<PathBuf> {
        if !self.opts.metapartition {
            return None;
        }
        Some(if name == "default" {
            self.base.join("meta")
        } else {
            self.base.join(format!("meta-{name}"))
        })
    }
    /// All `partition-*` message directories.
    pub fn partitions(&self) -> Vec<(String, PathBuf)> {
        let mut v = vec![("default".to_string(), self.spool_dir())];
        for p in &self.opts.extra_partitions {
            v.push((p.clone(), self.partition_path(p)));
        }
        v
    }
    pub fn imap_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.imap))
    }
    /// The implicit-TLS IMAP port; None when started without `tls`.
    pub fn imaps_addr(&self) -> Option<SocketAddr> {
        self.opts
            .tls
            .is_some()
            .then(|| SocketAddr::from(([127, 0, 0, 1], self.ports.imaps)))
    }
    pub fn lmtp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.lmtp))
    }
    /// None when started with `sieve: false`.
    pub fn sieve_addr(&self) -> Option<SocketAddr> {
        self.opts
            .sieve
            .then(|| SocketAddr::from(([127, 0, 0, 1], self.ports.sieve)))
    }
    /// The hierarchy separator clients see.
    pub fn separator(&self) -> char {
        if self.opts.unixhierarchysep {
            '/'
        } else {
            '.'
        }
    }
    /// The admin-visible name of a user's INBOX (`user/alice`).
    pub fn user_mailbox(&self, user: &str) -> String {
        format!("user{}{}", self.separator(), user)
    }

    /// Everything Cyrus logged (through the syslog shim) plus master's stdout/stderr.
    pub fn log(&self) -> String {
        let mut s = String::new();
        match std::fs::read(self.base.join("log/syslog")) {
            Ok(b) => s.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => {
                s.push_str("(no syslog captured: the LD_PRELOAD shim needs a C compiler `cc`)\n")
            }
        }
        if let Ok(b) = std::fs::read(self.base.join("log/master.out")) {
            if !b.is_empty() {
                s.push_str("--- master stdout/stderr ---\n");
                s.push_str(&String::from_utf8_lossy(&b));
            }
        }
        s
    }

    /// For panic messages: the first error/warning lines Cyrus logged (a crash-looping
    /// service buries the cause under repeats), the syslog tail, and master's stderr tail.
    pub fn diagnostics(&self) -> String {
        let syslog = std::fs::read(self.base.join("log/syslog"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|_| "(no syslog captured: the LD_PRELOAD shim needs `cc`)".into());
        let lines: Vec<&str> = syslog.lines().collect();
        let serious: Vec<&str> = lines
            .iter()
            .filter(|l| {
                ["<0>", "<1>", "<2>", "<3>", "<4>"]
                    .iter()
                    .any(|p| l.contains(p))
            })
            .take(25)
            .copied()
            .collect();
        let out = std::fs::read(self.base.join("log/master.out"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let out: Vec<&str> = out.lines().collect();
        format!(
            "--- first errors/warnings in {}/log/syslog ---\n{}\n--- syslog tail ---\n{}\n\
             --- master stdout/stderr tail ---\n{}",
            self.base.display(),
            serious.join("\n"),
            lines[lines.len().saturating_sub(15)..].join("\n"),
            out[out.len().saturating_sub(8)..].join("\n"),
        )
    }

    /// Runs a Cyrus tool from /usr/lib/cyrus/bin as the cyrus user with `-C <imapd.conf>`
    /// prepended to `args` (forgetting `-C` makes tools use the system /etc/imapd.conf).
    pub fn tool(&self, name: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(Path::new(CYRUS_BIN).join(name));
        cmd.arg("-C").arg(self.config_path()).args(args);
        self.as_cyrus(&mut cmd);
        cmd.stdin(Stdio::null());
        cmd.output()
            .unwrap_or_else(|e| panic!("running {name}: {e}"))
    }

    /// Like `tool`, panicking with the output and log on a non-zero exit; returns stdout.
    pub fn tool_ok(&self, name: &str, args: &[&str]) -> String {
        let o = self.tool(name, args);
        assert!(
            o.status.success(),
            "{name} {args:?} failed ({}):\nstdout: {}\nstderr: {}\nlog tail:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.diagnostics()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The data directory of a mailbox (admin-visible name, e.g. `user/alice/Sent`), via
    /// `mbpath`.
    pub fn mailbox_path(&self, mailbox: &str) -> PathBuf {
        PathBuf::from(self.tool_ok("mbpath", &["-l", "-D", mailbox]).trim())
    }

    /// The metadata directory of a mailbox (differs from `mailbox_path` with a metapartition).
    pub fn mailbox_meta_path(&self, mailbox: &str) -> PathBuf {
        PathBuf::from(self.tool_ok("mbpath", &["-l", "-M", mailbox]).trim())
    }

    /// A logged-in IMAP session as `user` (any user; the password is not checked).
    pub fn imap(&self, user: &str) -> Imap {
        let mut c = Imap::connect(self.imap_addr());
        c.login(user, PASSWORD);
        c
    }

    /// A logged-in IMAP session as the admin.
    pub fn admin(&self) -> Imap {
        self.imap(ADMIN)
    }

    /// Creates `user/<name>` (the user's INBOX) as admin.
    pub fn create_user(&self, user: &str) {
        let mut a = self.admin();
        a.create(&self.user_mailbox(user));
        a.logout();
    }

    /// One LMTP transaction with one RCPT TO per recipient, so Cyrus stores a single spool file
    /// hard-linked into each INBOX (same partition). Recipients are user names (`alice`,
    /// `alice@example.com` with virtdomains, or `alice+Folder` for plus-addressing). Panics if
    /// any recipient is refused. The message is sent with CRLF line ends (see `crlf`); lmtpd
    /// prepends Return-Path and Received headers to what it stores.
    pub fn lmtp_deliver(&self, from: &str, recipients: &[&str], message: &[u8]) {
        let mut l = Lmtp::connect(self.lmtp_addr());
        let res = l.deliver(from, recipients, message);
        self.check_lmtp(recipients, &res);
        l.quit();
    }

    /// Many LMTP transactions on one connection (each message to all `recipients`).
    pub fn deliver_many<M: AsRef<[u8]>>(&self, from: &str, recipients: &[&str], messages: &[M]) {
        let mut l = Lmtp::connect(self.lmtp_addr());
        for m in messages {
            let res = l.deliver(from, recipients, m.as_ref());
            self.check_lmtp(recipients, &res);
        }
        l.quit();
    }

    fn check_lmtp(&self, recipients: &[&str], res: &[Result<(), String>]) {
        for (r, res) in recipients.iter().zip(res) {
            if let Err(e) = res {
                panic!(
                    "LMTP delivery to {r} failed: {e}\nlog tail:\n{}",
                    self.diagnostics()
                );
            }
        }
    }

    /// A ManageSieve session authenticated as `user`.
    pub fn sieve(&self, user: &str) -> ManageSieve {
        let addr = self.sieve_addr().expect("server started with sieve: false");
        let mut s = ManageSieve::connect(addr);
        s.authenticate("", user, PASSWORD)
            .unwrap_or_else(|e| panic!("sieve auth as {user}: {e}\n{}", self.diagnostics()));
        s
    }

    /// Uploads (PUTSCRIPT) a sieve script for `user` and optionally makes it the active one.
    pub fn upload_sieve(&self, user: &str, name: &str, script: &str, activate: bool) {
        let mut s = self.sieve(user);
        s.put_script(name, script)
            .unwrap_or_else(|e| panic!("PUTSCRIPT {name} for {user}: {e}"));
        if activate {
            s.set_active(name)
                .unwrap_or_else(|e| panic!("SETACTIVE {name} for {user}: {e}"));
        }
        s.logout();
    }

    /// `(name, active)` for each of the user's scripts, sorted by name.
    pub fn list_sieve(&self, user: &str) -> Vec<(String, bool)> {
        let mut s = self.sieve(user);
        let mut v = s.list_scripts();
        s.logout();
        v.sort();
        v
    }

    pub fn get_sieve(&self, user: &str, name: &str) -> String {
        let mut s = self.sieve(user);
        let v = s
            .get_script(name)
            .unwrap_or_else(|e| panic!("GETSCRIPT {name}: {e}"));
        s.logout();
        v
    }

    /// Every message file (`<uid>.`) in the message partitions, sorted.
    pub fn message_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (_, p) in self.partitions() {
            walk_files(&p, &mut |path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.len() > 1
                    && name.ends_with('.')
                    && name[..name.len() - 1].bytes().all(|b| b.is_ascii_digit())
                {
                    out.push(path.to_path_buf());
                }
            });
        }
        out.sort();
        out
    }

    /// Message files whose content has the given SHA-1 (Cyrus's GUID), sorted.
    pub fn find_message_files(&self, sha1_hex: &str) -> Vec<PathBuf> {
        self.message_files()
            .into_iter()
            .filter(|p| {
                std::fs::read(p)
                    .map(|b| sha1_hex_of(&b) == sha1_hex)
                    .unwrap_or(false)
            })
            .collect()
    }

    // -- internals ---------------------------------------------------------------------------

    fn as_cyrus(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.env("CYRUS_SYSLOG_FILE", self.base.join("log/syslog"));
        // INTERNALDATE is shown in the server's local zone; a fixed zone keeps it predictable.
        cmd.env("TZ", "UTC");
        if let Some(shim) = syslog_shim() {
            cmd.env("LD_PRELOAD", shim);
        }
        cmd.current_dir(&self.base);
    }

    fn prepare_dirs(&self) {
        let mut dirs = vec![
            "etc",
            "conf",
            "conf/db",
            "conf/socket",
            "conf/log",
            "conf/msg",
            "spool",
            "sieve",
            "run",
            "run/proc",
            "run/lock",
            "log",
        ]
        .into_iter()
        .map(|d| self.base.join(d))
        .collect::<Vec<_>>();
        if let Some(m) = self.meta_partition_path("default") {
            dirs.push(m);
        }
        for p in &self.opts.extra_partitions {
            dirs.push(self.partition_path(p));
            if let Some(m) = self.meta_partition_path(p) {
                dirs.push(m);
            }
        }
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        std::fs::write(self.config_path(), self.opts.imapd_conf(&self.base)).unwrap();
        if let Some((cert, key)) = &self.opts.tls {
            std::fs::copy(cert, self.base.join(TLS_CERT)).unwrap();
            std::fs::copy(key, self.base.join(TLS_KEY)).unwrap();
        }
        std::fs::write(self.base.join("log/master.out"), b"").unwrap();
        if let Some((uid, gid)) = self.run_as {
            chown_tree(&self.base, uid, gid);
        }
    }

    fn write_cyrus_conf(&self) {
        let conf = self.config_path();
        let conf = conf.to_str().unwrap();
        // master does not pass its -C on, so every cmd needs its own.
        let mut s = format!(
            "START {{\n  recover cmd=\"ctl_cyrusdb -C {conf} -r\"\n}}\n\
             SERVICES {{\n  imap cmd=\"imapd -C {conf}\" listen=\"127.0.0.1:{}\" prefork=0\n  \
             lmtp cmd=\"lmtpd -C {conf} -a\" listen=\"127.0.0.1:{}\" prefork=0\n",
            self.ports.imap, self.ports.lmtp
        );
        if self.opts.sieve {
            writeln!(
                s,
                "  sieve cmd=\"timsieved -C {conf}\" listen=\"127.0.0.1:{}\" prefork=0",
                self.ports.sieve
            )
            .unwrap();
        }
        if self.opts.tls.is_some() {
            // -s: TLS from the first byte (imaps).
            writeln!(
                s,
                "  imaps cmd=\"imapd -s -C {conf}\" listen=\"127.0.0.1:{}\" prefork=0",
                self.ports.imaps
            )
            .unwrap();
        }
        // No EVENTS: checkpoints and expiry would change the spool behind a test's back.
        s.push_str("}\nEVENTS {\n}\n");
        std::fs::write(self.cyrus_conf_path(), s).unwrap();
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(self.cyrus_conf_path(), Some(uid), Some(gid)).unwrap();
        }
    }

    fn launch(&mut self, mut reuse: Option<Ports>) {
        let mut last_err = String::new();
        for attempt in 0..4 {
            self.ports = match reuse.take() {
                Some(p)
                    if port_free(p.imap)
                        && port_free(p.lmtp)
                        && port_free(p.sieve)
                        && port_free(p.imaps) =>
                {
                    p
                }
                _ => pick_ports(),
            };
            self.write_cyrus_conf();
            // master must create and lock its pid file itself; it cannot open one owned by
            // root (e.g. left by a root `cp -a` of a stopped instance).
            let _ = std::fs::remove_file(self.base.join("run/master.pid"));
            let out = std::fs::OpenOptions::new()
                .append(true)
                .open(self.base.join("log/master.out"))
                .unwrap();
            let mut cmd = Command::new(Path::new(CYRUS_BIN).join("master"));
            cmd.arg("-C")
                .arg(self.config_path())
                .arg("-M")
                .arg(self.cyrus_conf_path())
                .arg("-p")
                .arg(self.base.join("run/master.pid"))
                // -D: stay in the foreground as our child and keep stdout/stderr.
                .arg("-D")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                // Own process group, so a last-resort SIGKILL reaches every service process.
                .process_group(0);
            self.as_cyrus(&mut cmd);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawning cyrus master: {e}"));
            self.master = Some(child);
            match self.wait_ready() {
                Ok(()) => return,
                Err(e) => {
                    last_err = format!("attempt {}: {e}", attempt + 1);
                    self.stop();
                    // Only a lost port race is worth retrying; anything else is a real failure.
                    let log = self.log();
                    let port_problem = e.contains("not a Cyrus")
                        || log.contains("Address already in use")
                        || log.contains("unable to bind");
                    if !port_problem {
                        break;
                    }
                    let _ = std::fs::write(self.base.join("log/syslog"), b"");
                }
            }
        }
        panic!(
            "Cyrus master did not come up ({last_err}) in {}\n{}",
            self.base.display(),
            self.diagnostics()
        );
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut checks: Vec<(&str, u16, &str)> = vec![
            ("IMAP", self.ports.imap, "* OK"),
            ("LMTP", self.ports.lmtp, "220 "),
        ];
        if self.opts.sieve {
            checks.push(("sieve", self.ports.sieve, "\"IMPLEMENTATION\""));
        }
        if self.opts.tls.is_some() {
            // Only a TCP connect: the greeting comes after a TLS handshake.
            checks.push(("imaps", self.ports.imaps, ""));
        }
        for (what, port, expect) in checks {
            loop {
                if let Some(Ok(Some(st))) = self.master.as_mut().map(|c| c.try_wait()) {
                    return Err(format!("master exited with {st}"));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{what} on port {port} did not answer within {START_TIMEOUT:?}"
                    ));
                }
                // master keeps running without a service whose port was taken; fail fast.
                let log = std::fs::read(self.base.join("log/syslog")).unwrap_or_default();
                if String::from_utf8_lossy(&log).contains("unable to bind") {
                    return Err("a service port is already in use (unable to bind)".into());
                }
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    if expect.is_empty() {
                        break;
                    }
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut line = String::new();
                    let _ = BufReader::new(&s).read_line(&mut line);
                    if line.starts_with(expect) && line.contains("Cyrus") {
                        let bye: &[u8] = match what {
                            "IMAP" => b"Z LOGOUT\r\n",
                            "LMTP" => b"QUIT\r\n",
                            _ => b"LOGOUT\r\n",
                        };
                        let _ = (&s).write_all(bye);
                        break;
                    }
                    if !line.is_empty() {
                        return Err(format!(
                            "{what} port {port} is not a Cyrus server: {line:?}"
                        ));
                    }
                }
                thread_sleep_ms(25);
            }
        }
        Ok(())
    }
}

impl Drop for CyrusServer {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("MAILPACK_KEEP_CYRUS").is_some() {
            eprintln!("keeping Cyrus test instance at {}", self.base.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn thread_sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The uid and gid Cyrus services and tools run as. Cyrus refuses to run as root; when the tests
/// are root, that is Debian's `cyrus` user (primary group `mail`). `None` when the tests are not
/// root: then they run as the current user.
pub fn cyrus_ids() -> Option<(u32, u32)> {
    if unsafe { geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "cyrus" {
            return Some((f[2].parse().unwrap(), f[3].parse().unwrap()));
        }
    }
    panic!("running as root but there is no `cyrus` user: run scripts/setup-cyrus");
}

const BASE_PREFIX: &str = "mailpack-cyrus-";

fn new_base_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = std::env::temp_dir();
    let s = tmp.to_str().expect("temp dir is not UTF-8");
    // cyrus.conf's cmd="..." cannot quote, so a space in the path breaks every service.
    assert!(
        !s.contains(char::is_whitespace),
        "temp dir {s:?} contains whitespace; set TMPDIR"
    );
    if unsafe { geteuid() } == 0 {
        // The cyrus user must be able to traverse every ancestor of its base dir.
        let mut p = tmp.clone();
        loop {
            let mode = std::fs::metadata(&p).map(|m| m.mode()).unwrap_or(0);
            assert!(
                mode & 0o001 != 0,
                "{} is not searchable by the cyrus user; set TMPDIR (e.g. /tmp)",
                p.display()
            );
            if !p.pop() {
                break;
            }
        }
    }
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = tmp.join(format!("{BASE_PREFIX}{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Instances left by a test process that was killed (so its Drop never ran): stop their
/// master and remove the directory. Runs once per test process.
fn reap_stale_instances() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for dir in crate::support::dirs_of_dead_test_processes(BASE_PREFIX) {
            if let Ok(pid) = std::fs::read_to_string(dir.join("run/master.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // Only kill it if it really is this instance's master.
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let needle = dir.join("etc/imapd.conf");
                    if String::from_utf8_lossy(&cmdline).contains(needle.to_str().unwrap()) {
                        unsafe { kill(pid, SIGTERM) };
                        thread_sleep_ms(500);
                        unsafe { kill(-pid, SIGKILL) };
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    // lchown: the sieve dir holds a `defaultbc` symlink that may dangle.
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

fn walk_files(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_files(&p, f),
            Ok(t) if t.is_file() => f(&p),
            _ => {}
        }
    }
}

/// Ports below the kernel's ephemeral range (32768+), so an outgoing connection elsewhere in
/// the test run cannot grab one between this check and master's bind.
fn pick_ports() -> Ports {
    let chosen = crate::support::pick_free_ports(4, 20000..32000, &[]);
    Ports {
        imap: chosen[0],
        lmtp: chosen[1],
        sieve: chosen[2],
        imaps: chosen[3],
    }
}

/// Cyrus only logs through syslog(3) and there is no syslogd here, so an LD_PRELOAD shim
/// appends every message to $CYRUS_SYSLOG_FILE. Built once per test process with `cc`; without
/// a compiler the server still runs, just without logs.
fn syslog_shim() -> Option<PathBuf> {
    static SHIM: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        let key = &sha1_hex_of(SHIM_C.as_bytes())[..12];
        let so = std::env::temp_dir().join(format!("mailpack-cyrus-syslog-{key}.so"));
        if so.exists() {
            return Some(so);
        }
        let tmp =
            std::env::temp_dir().join(format!("mailpack-syslog-build-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).ok()?;
        let src = tmp.join("shim.c");
        std::fs::write(&src, SHIM_C).ok()?;
        let out = tmp.join("shim.so");
        let ok = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let res = if ok {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755));
            // Rename is atomic, so concurrent test processes never load a half-written file.
            std::fs::rename(&out, &so).ok().map(|_| so)
        } else {
            None
        };
        let _ = std::fs::remove_dir_all(&tmp);
        res
    })
    .clone()
}

/// The shim's source, compiled by `syslog_shim`.
const SHIM_C: &str = include_str!("syslog_shim.c");
