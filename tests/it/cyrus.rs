//! A private, real Cyrus IMAP 3.6 server on 127.0.0.1 for integration tests, and tiny std-only
//! IMAP, LMTP and ManageSieve clients to drive it. See CYRUS-FIXTURE.md for the traps this
//! works around. Install the server with `scripts/setup-cyrus`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

/// Debian's cyrus-common puts the daemons and tools here, not on PATH.
pub const CYRUS_BIN: &str = "/usr/lib/cyrus/bin";

/// Every test server shares this password; `sasl_pwcheck_method: alwaystrue` accepts any.
pub const PASSWORD: &str = "secret";

/// The admin user written into `admins:`.
pub const ADMIN: &str = "admin";

/// Network reads on test sockets never block longer than this; a hung server fails the test.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Also from the server's address; on loopback that is rarely what a test wants.
    On,
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
                    VirtDomains::On => "on",
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
}

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
        let run_as = run_as();
        let base = new_base_dir();
        let mut server = CyrusServer {
            base,
            opts,
            ports: Ports {
                imap: 0,
                lmtp: 0,
                sieve: 0,
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
    pub fn sieve_dir(&self) -> PathBuf {
        self.base.join("sieve")
    }
    pub fn lock_dir(&self) -> PathBuf {
        self.base.join("run/lock")
    }
    pub fn imap_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.imap))
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

    /// The last `n` lines of `log()`.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
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
                Some(p) if port_free(p.imap) && port_free(p.lmtp) && port_free(p.sieve) => p,
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

/// Cyrus refuses to run as root; when the tests are root, services run as Debian's `cyrus`
/// user (primary group `mail`). Otherwise they run as the current user.
fn run_as() -> Option<(u32, u32)> {
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
        let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(BASE_PREFIX) else {
                continue;
            };
            let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            let dir = e.path();
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

fn port_free(port: u16) -> bool {
    port != 0 && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Ports below the kernel's ephemeral range (32768+), so an outgoing connection elsewhere in
/// the test run cannot grab one between this check and master's bind.
fn pick_ports() -> Ports {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut chosen: Vec<u16> = Vec::new();
    while chosen.len() < 3 {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        let mut x =
            (std::process::id() as u64) << 32 ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos;
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        let port = 20000 + (x % 12000) as u16;
        if !chosen.contains(&port) && port_free(port) {
            chosen.push(port);
        }
    }
    Ports {
        imap: chosen[0],
        lmtp: chosen[1],
        sieve: chosen[2],
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

const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static const char *shim_ident = "";
void openlog(const char *ident, int option, int facility) {
  (void)option; (void)facility; if (ident) shim_ident = ident;
}
void closelog(void) {}
int setlogmask(int mask) { (void)mask; return 0xff; }
void vsyslog(int pri, const char *fmt, va_list ap) {
  const char *path = getenv("CYRUS_SYSLOG_FILE");
  if (!path) return;
  int saved = errno;
  char buf[8192];
  int n = snprintf(buf, sizeof buf, "%ld %s[%d] <%d>: ", (long)time(NULL), shim_ident,
                   (int)getpid(), pri & 7);
  if (n < 0) n = 0;
  if ((size_t)n < sizeof buf) {
    errno = saved; /* for %m */
    int m = vsnprintf(buf + n, sizeof buf - n, fmt, ap);
    if (m > 0) n += m;
  }
  if ((size_t)n > sizeof buf - 2) n = sizeof buf - 2;
  if (n > 0 && buf[n - 1] != '\n') buf[n++] = '\n';
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) { ssize_t w = write(fd, buf, n); (void)w; close(fd); }
  errno = saved;
}
void syslog(int pri, const char *fmt, ...) {
  va_list ap; va_start(ap, fmt); vsyslog(pri, fmt, ap); va_end(ap);
}
void __syslog_chk(int pri, int flag, const char *fmt, ...) {
  (void)flag; va_list ap; va_start(ap, fmt); vsyslog(pri, fmt, ap); va_end(ap);
}
void __vsyslog_chk(int pri, int flag, const char *fmt, va_list ap) {
  (void)flag; vsyslog(pri, fmt, ap);
}
"#;

// ---------------------------------------------------------------------------------------------
// Small helpers shared by the clients and tests

pub fn sha1_hex_of(data: &[u8]) -> String {
    let d = Sha1::digest(data);
    let mut s = String::with_capacity(40);
    for b in d.iter() {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

/// Converts bare LF line ends to CRLF, as Cyrus stores messages (and as the clients send them).
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut prev = 0u8;
    for &b in message {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// IMAP modified UTF-7 (RFC 3501 5.1.3) of a UTF-8 mailbox name. The mailbox helpers of `Imap`
/// apply this themselves; only `raw` commands need it by hand.
pub fn mutf7_encode(name: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    fn flush(out: &mut String, run: &mut Vec<u16>) {
        if run.is_empty() {
            return;
        }
        let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        for c in bytes.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..=c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out.push('-');
        run.clear();
    }
    let mut out = String::new();
    let mut run: Vec<u16> = Vec::new();
    for ch in name.chars() {
        if (' '..='~').contains(&ch) {
            flush(&mut out, &mut run);
            if ch == '&' {
                out.push_str("&-");
            } else {
                out.push(ch);
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(ch.encode_utf16(&mut buf));
        }
    }
    flush(&mut out, &mut run);
    out
}

/// Inverse of `mutf7_encode`; malformed input is returned unchanged.
pub fn mutf7_decode(s: &str) -> String {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b',' => 63,
            _ => return None,
        } as u32)
    }
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'&' {
            out.push(b[i] as char);
            i += 1;
            continue;
        }
        let Some(end) = b[i + 1..]
            .iter()
            .position(|&c| c == b'-')
            .map(|p| i + 1 + p)
        else {
            return s.to_string();
        };
        if end == i + 1 {
            out.push('&');
        } else {
            let (mut acc, mut bits, mut units) = (0u32, 0u32, Vec::new());
            for &c in &b[i + 1..end] {
                let Some(v) = val(c) else {
                    return s.to_string();
                };
                acc = acc << 6 | v;
                bits += 6;
                if bits >= 16 {
                    bits -= 16;
                    units.push((acc >> bits & 0xFFFF) as u16);
                }
            }
            match String::from_utf16(&units) {
                Ok(t) => out.push_str(&t),
                Err(_) => return s.to_string(),
            }
        }
        i = end + 1;
    }
    out
}

/// An IMAP quoted string (ASCII only; use literals for anything else).
pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// A mailbox name (UTF-8) as an IMAP argument.
pub fn mailbox_arg(name: &str) -> String {
    quote(&mutf7_encode(name))
}

/// Seconds since the epoch of an IMAP date-time (`"01-Jan-2020 10:00:00 +0100"`, the day may
/// be space-padded).
pub fn internaldate_epoch(s: &str) -> i64 {
    let s = s.trim().trim_matches('"').trim();
    let (date, rest) = s
        .split_once(' ')
        .unwrap_or_else(|| panic!("bad date-time {s:?}"));
    let (time, zone) = rest
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("bad date-time {s:?}"));
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    let day: i64 = d[0].trim().parse().unwrap();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m.eq_ignore_ascii_case(d[1]))
    .unwrap_or_else(|| panic!("bad month in {s:?}")) as i64
        + 1;
    let year: i64 = d[2].parse().unwrap();
    // Days from civil (proleptic Gregorian), Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let zh: i64 = zone[1..3].parse().unwrap();
    let zm: i64 = zone[3..5].parse().unwrap();
    days * 86400 + t[0] * 3600 + t[1] * 60 + t[2] - sign * (zh * 3600 + zm * 60)
}

/// Expands an IMAP sequence set without `*` (`1:3,7`) into numbers.
pub fn expand_set(set: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for part in set.split(',') {
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                v.extend(lo..=hi);
            }
            None => v.push(part.parse().unwrap()),
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// IMAP response data

/// One parsed IMAP data item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Atoms and numbers (`\Seen`, `UID`, `42`, `BODY[]`).
    Atom(String),
    /// Quoted strings and literals.
    Str(Vec<u8>),
    List(Vec<Value>),
    Nil,
}

impl Value {
    pub fn as_str(&self) -> Option<String> {
        match self {
            Value::Atom(a) => Some(a.clone()),
            Value::Str(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Atom(a) => Some(a.as_bytes()),
            Value::Str(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Atom(a) => a.parse().ok(),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    fn is_atom(&self, s: &str) -> bool {
        matches!(self, Value::Atom(a) if a.eq_ignore_ascii_case(s))
    }
}

/// Parses the data of one response line (with its literals inline as on the wire).
pub fn parse_values(data: &[u8]) -> Vec<Value> {
    let mut p = Parser { b: data, i: 0 };
    let mut out = Vec::new();
    loop {
        p.skip_sp();
        if p.i >= p.b.len() {
            break;
        }
        match p.value() {
            Some(v) => out.push(v),
            None => p.i += 1, // stray ')' : skip rather than loop forever
        }
    }
    out
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_sp(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<Value> {
        match *self.b.get(self.i)? {
            b'(' => {
                self.i += 1;
                let mut l = Vec::new();
                loop {
                    self.skip_sp();
                    match self.b.get(self.i) {
                        None => break,
                        Some(b')') => {
                            self.i += 1;
                            break;
                        }
                        _ => match self.value() {
                            Some(v) => l.push(v),
                            None => self.i += 1,
                        },
                    }
                }
                Some(Value::List(l))
            }
            b')' => None,
            b'"' => {
                self.i += 1;
                let mut s = Vec::new();
                while let Some(&c) = self.b.get(self.i) {
                    self.i += 1;
                    match c {
                        b'\\' => {
                            if let Some(&n) = self.b.get(self.i) {
                                s.push(n);
                                self.i += 1;
                            }
                        }
                        b'"' => break,
                        _ => s.push(c),
                    }
                }
                Some(Value::Str(s))
            }
            b'{' => {
                let close = self.b[self.i..].iter().position(|&c| c == b'}')? + self.i;
                let n: usize = std::str::from_utf8(&self.b[self.i + 1..close])
                    .ok()?
                    .trim_end_matches('+')
                    .parse()
                    .ok()?;
                let mut start = close + 1;
                if self.b[start..].starts_with(b"\r\n") {
                    start += 2;
                }
                let end = (start + n).min(self.b.len());
                self.i = end;
                Some(Value::Str(self.b[start..end].to_vec()))
            }
            _ => {
                let start = self.i;
                let mut depth = 0;
                while let Some(&c) = self.b.get(self.i) {
                    match c {
                        b'[' => depth += 1,
                        b']' if depth > 0 => depth -= 1,
                        b' ' | b'(' | b')' | b'\r' | b'\n' if depth == 0 => break,
                        _ => {}
                    }
                    self.i += 1;
                }
                let a = String::from_utf8_lossy(&self.b[start..self.i]).into_owned();
                if a.eq_ignore_ascii_case("NIL") {
                    Some(Value::Nil)
                } else {
                    Some(Value::Atom(a))
                }
            }
        }
    }
}

/// Every bracketed response code `[NAME args]` in a status text.
fn response_codes(text: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']') else {
            break;
        };
        let inner = &rest[open + 1..open + close];
        let (name, args) = inner.split_once(' ').unwrap_or((inner, ""));
        v.push((name.to_ascii_uppercase(), args.to_string()));
        rest = &rest[open + close + 1..];
    }
    v
}

/// The completion of one tagged command.
#[derive(Clone, Debug)]
pub struct Reply {
    /// `OK`, `NO` or `BAD`.
    pub status: String,
    /// Text after the status, including any `[CODE]`.
    pub text: String,
    /// Untagged responses without the leading `* `, literals inline as on the wire.
    pub untagged: Vec<Vec<u8>>,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        self.status == "OK"
    }
    /// Untagged responses as text (lossy UTF-8).
    pub fn lines(&self) -> Vec<String> {
        self.untagged
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
    /// Parsed untagged responses whose keyword (after an optional number) is `kw`.
    pub fn data(&self, kw: &str) -> Vec<Vec<Value>> {
        self.untagged
            .iter()
            .map(|l| parse_values(l))
            .filter(|v| match v.first() {
                Some(first) if first.is_atom(kw) => true,
                Some(Value::Atom(n)) if n.bytes().all(|b| b.is_ascii_digit()) => {
                    v.get(1).is_some_and(|k| k.is_atom(kw))
                }
                _ => false,
            })
            .collect()
    }
    /// Response codes from the tagged text and from untagged OK/NO lines.
    pub fn codes(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for l in self.lines() {
            if l.starts_with("OK [") || l.starts_with("NO [") || l.starts_with("BAD [") {
                v.extend(response_codes(&l));
            }
        }
        v.extend(response_codes(&self.text));
        v
    }
    pub fn code(&self, name: &str) -> Option<String> {
        self.codes()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, a)| a)
    }
}

/// SELECT / EXAMINE results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxInfo {
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// 0 if the server sent NOMODSEQ.
    pub highestmodseq: u64,
    pub exists: u32,
    /// Cyrus's MAILBOXID (= the uniqueid naming the UUID directory).
    pub mailboxid: String,
}

/// Per-message facts compared between servers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageInfo {
    pub uid: u32,
    /// Sorted; `\Recent` is left out because it depends on the session, not the mailbox.
    pub flags: Vec<String>,
    /// As the server shows it (the server runs with TZ=UTC, so `... +0000`).
    pub internaldate: String,
    pub size: u64,
    /// SHA-1 (hex) of `BODY.PEEK[]`, which is Cyrus's GUID of the message file.
    pub sha1: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListEntry {
    /// Name attributes as sent (`\HasNoChildren`, `\Subscribed`, `\NonExistent`, ...).
    pub flags: Vec<String>,
    pub delimiter: Option<char>,
    /// Decoded from modified UTF-7.
    pub name: String,
}

impl ListEntry {
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x.eq_ignore_ascii_case(f))
    }
}

/// A piece of a command: text is sent as-is, literals as `{n}` + bytes.
pub enum Part<'a> {
    Text(String),
    Literal(&'a [u8]),
}

// ---------------------------------------------------------------------------------------------
// IMAP client

/// A minimal synchronous IMAP client. Commands panic on I/O errors; the convenience helpers
/// also panic when the server answers NO/BAD (use `command`/`try_raw` to test refusals).
/// Mailbox names are UTF-8 and converted to modified UTF-7 by the helpers.
pub struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
    tag: u32,
    pub greeting: String,
    /// Untagged responses that arrived while waiting for a continuation.
    pending: Vec<Vec<u8>>,
}

impl Imap {
    pub fn connect(addr: SocketAddr) -> Imap {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("IMAP connect {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Imap {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            tag: 0,
            greeting: String::new(),
            pending: Vec::new(),
        };
        let g = c.read_response();
        c.greeting = String::from_utf8_lossy(&g).into_owned();
        assert!(
            c.greeting.starts_with("* OK"),
            "unexpected IMAP greeting {:?}",
            c.greeting
        );
        c
    }

    /// Reads one response line with any literals it announces, without the final CRLF.
    fn read_response(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self
                .r
                .read_until(b'\n', &mut line)
                .unwrap_or_else(|e| panic!("IMAP read: {e}"));
            assert!(
                n > 0,
                "IMAP server closed the connection; so far: {:?}",
                String::from_utf8_lossy(&out)
            );
            if line.ends_with(b"\r\n") {
                line.truncate(line.len() - 2);
            } else if line.ends_with(b"\n") {
                line.truncate(line.len() - 1);
            }
            let lit = literal_len(&line);
            out.extend_from_slice(&line);
            match lit {
                Some(len) => {
                    out.extend_from_slice(b"\r\n");
                    let start = out.len();
                    out.resize(start + len, 0);
                    self.r
                        .read_exact(&mut out[start..])
                        .unwrap_or_else(|e| panic!("IMAP literal read: {e}"));
                }
                None => return out,
            }
        }
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("A{:04}", self.tag)
    }

    /// Sends a command made of text and literal parts and collects everything up to its
    /// tagged completion. Literals are synchronizing (waits for `+`).
    pub fn command_parts(&mut self, parts: &[Part]) -> Reply {
        let tag = self.next_tag();
        let mut buf: Vec<u8> = format!("{tag} ").into_bytes();
        let mut untagged = std::mem::take(&mut self.pending);
        for part in parts {
            match part {
                Part::Text(t) => buf.extend_from_slice(t.as_bytes()),
                Part::Literal(data) => {
                    buf.extend_from_slice(format!("{{{}}}\r\n", data.len()).as_bytes());
                    self.w
                        .write_all(&buf)
                        .unwrap_or_else(|e| panic!("IMAP write: {e}"));
                    buf.clear();
                    loop {
                        let l = self.read_response();
                        if l.starts_with(b"+") {
                            break;
                        }
                        if l.starts_with(b"* ") {
                            untagged.push(l[2..].to_vec());
                            continue;
                        }
                        // The server refused the literal (e.g. too big): that is the reply.
                        return finish_reply(&tag, l, untagged);
                    }
                    buf.extend_from_slice(data);
                }
            }
        }
        buf.extend_from_slice(b"\r\n");
        self.w
            .write_all(&buf)
            .unwrap_or_else(|e| panic!("IMAP write: {e}"));
        loop {
            let l = self.read_response();
            if l.starts_with(b"* ") {
                untagged.push(l[2..].to_vec());
            } else if l.starts_with(tag.as_bytes()) {
                return finish_reply(&tag, l, untagged);
            }
            // Stray continuations are ignored.
        }
    }

    /// One command line (no literals), e.g. `command("NOOP")`.
    pub fn command(&mut self, cmd: &str) -> Reply {
        self.command_parts(&[Part::Text(cmd.to_string())])
    }

    /// Like `command`, panicking unless the answer is OK.
    pub fn ok(&mut self, cmd: &str) -> Reply {
        let r = self.command(cmd);
        assert!(r.is_ok(), "IMAP {cmd:?} failed: {} {}", r.status, r.text);
        r
    }

    /// Any command; returns its untagged responses as text, panicking unless OK.
    pub fn raw(&mut self, cmd: &str) -> Vec<String> {
        self.ok(cmd).lines()
    }

    /// Any command; `Err("NO ...")` instead of panicking.
    pub fn try_raw(&mut self, cmd: &str) -> Result<Vec<String>, String> {
        let r = self.command(cmd);
        if r.is_ok() {
            Ok(r.lines())
        } else {
            Err(format!("{} {}", r.status, r.text))
        }
    }

    pub fn login(&mut self, user: &str, pass: &str) {
        self.ok(&format!("LOGIN {} {}", quote(user), quote(pass)));
    }

    /// SASL PLAIN with an authorization identity: `authc` (e.g. the admin) acts as `authz`, so
    /// per-user state like \Seen is `authz`'s.
    pub fn authenticate_plain(&mut self, authz: &str, authc: &str, pass: &str) {
        let token = base64(format!("{authz}\0{authc}\0{pass}").as_bytes());
        self.ok(&format!("AUTHENTICATE PLAIN {token}"));
    }

    pub fn logout(mut self) {
        let _ = self.command("LOGOUT");
    }

    pub fn create(&mut self, mailbox: &str) {
        self.ok(&format!("CREATE {}", mailbox_arg(mailbox)));
    }

    /// CREATE with a special-use attribute (`\Sent`, `\Trash`, ...).
    pub fn create_special(&mut self, mailbox: &str, special_use: &str) {
        self.ok(&format!(
            "CREATE {} (USE ({special_use}))",
            mailbox_arg(mailbox)
        ));
    }

    pub fn delete(&mut self, mailbox: &str) {
        self.ok(&format!("DELETE {}", mailbox_arg(mailbox)));
    }

    pub fn rename(&mut self, from: &str, to: &str) {
        self.ok(&format!("RENAME {} {}", mailbox_arg(from), mailbox_arg(to)));
    }

    pub fn subscribe(&mut self, mailbox: &str) {
        self.ok(&format!("SUBSCRIBE {}", mailbox_arg(mailbox)));
    }

    pub fn unsubscribe(&mut self, mailbox: &str) {
        self.ok(&format!("UNSUBSCRIBE {}", mailbox_arg(mailbox)));
    }

    pub fn select(&mut self, mailbox: &str) -> MailboxInfo {
        let r = self.ok(&format!("SELECT {}", mailbox_arg(mailbox)));
        mailbox_info(&r)
    }

    /// Read-only select: does not clear \Recent or change anything.
    pub fn examine(&mut self, mailbox: &str) -> MailboxInfo {
        let r = self.ok(&format!("EXAMINE {}", mailbox_arg(mailbox)));
        mailbox_info(&r)
    }

    /// Leaves the selected mailbox without expunging (unlike CLOSE).
    pub fn unselect(&mut self) {
        self.ok("UNSELECT");
    }

    /// APPENDs a message (CRLF-normalized) and returns its UID from APPENDUID. `flags` like
    /// `["\\Seen", "$Label"]`; `internaldate` like `"01-Jan-2020 10:00:00 +0000"`.
    pub fn append(
        &mut self,
        mailbox: &str,
        flags: &[&str],
        internaldate: Option<&str>,
        message: &[u8],
    ) -> u32 {
        let msg = crlf(message);
        let mut head = format!("APPEND {} ", mailbox_arg(mailbox));
        if !flags.is_empty() {
            write!(head, "({}) ", flags.join(" ")).unwrap();
        }
        if let Some(d) = internaldate {
            write!(head, "{} ", quote(d)).unwrap();
        }
        let r = self.command_parts(&[Part::Text(head), Part::Literal(&msg)]);
        assert!(
            r.is_ok(),
            "APPEND to {mailbox} failed: {} {}",
            r.status,
            r.text
        );
        let code = r
            .code("APPENDUID")
            .unwrap_or_else(|| panic!("no APPENDUID in {:?}", r.text));
        code.split_whitespace()
            .nth(1)
            .and_then(|u| u.parse().ok())
            .expect("bad APPENDUID")
    }

    /// UID STORE on the selected mailbox; `op` is `+FLAGS`, `-FLAGS` or `FLAGS`.
    pub fn uid_store(&mut self, set: &str, op: &str, flags: &[&str]) {
        self.ok(&format!("UID STORE {set} {op} ({})", flags.join(" ")));
    }

    /// UID COPY from the selected mailbox; returns (source uid, destination uid) from COPYUID.
    pub fn uid_copy(&mut self, set: &str, dest: &str) -> Vec<(u32, u32)> {
        let r = self.ok(&format!("UID COPY {set} {}", mailbox_arg(dest)));
        copyuid_pairs(&r)
    }

    /// UID MOVE from the selected mailbox; returns (source uid, destination uid).
    pub fn uid_move(&mut self, set: &str, dest: &str) -> Vec<(u32, u32)> {
        let r = self.ok(&format!("UID MOVE {set} {}", mailbox_arg(dest)));
        copyuid_pairs(&r)
    }

    /// EXPUNGE of the selected mailbox; returns the expunged sequence numbers.
    pub fn expunge(&mut self) -> Vec<u32> {
        let r = self.ok("EXPUNGE");
        expunged(&r)
    }

    /// UID EXPUNGE (only the given \Deleted messages).
    pub fn uid_expunge(&mut self, set: &str) -> Vec<u32> {
        let r = self.ok(&format!("UID EXPUNGE {set}"));
        expunged(&r)
    }

    /// STATUS with items like `"MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ"`.
    pub fn status(&mut self, mailbox: &str, items: &str) -> BTreeMap<String, u64> {
        let r = self.ok(&format!("STATUS {} ({items})", mailbox_arg(mailbox)));
        let mut m = BTreeMap::new();
        for d in r.data("STATUS") {
            if let Some(l) = d.last().and_then(|v| v.as_list()) {
                for kv in l.chunks(2) {
                    if let [k, v] = kv {
                        m.insert(
                            k.as_str().unwrap().to_ascii_uppercase(),
                            v.as_u64().unwrap_or(0),
                        );
                    }
                }
            }
        }
        m
    }

    /// `LIST "" <pattern>`.
    pub fn list(&mut self, pattern: &str) -> Vec<ListEntry> {
        let r = self.ok(&format!("LIST \"\" {}", mailbox_arg(pattern)));
        list_entries(&r, "LIST")
    }

    /// `LIST (SUBSCRIBED) "" "*"`: also shows stale subscriptions as `\NonExistent`.
    pub fn list_subscribed(&mut self) -> Vec<ListEntry> {
        let r = self.ok("LIST (SUBSCRIBED) \"\" \"*\"");
        list_entries(&r, "LIST")
    }

    /// `LSUB "" <pattern>` (hides subscriptions of mailboxes that no longer exist).
    pub fn lsub(&mut self, pattern: &str) -> Vec<ListEntry> {
        let r = self.ok(&format!("LSUB \"\" {}", mailbox_arg(pattern)));
        list_entries(&r, "LSUB")
    }

    /// SETMETADATA of one entry (`/private/comment`, `/shared/...`); `None` removes it.
    pub fn set_metadata(&mut self, mailbox: &str, entry: &str, value: Option<&str>) {
        let head = format!("SETMETADATA {} ({} ", mailbox_arg(mailbox), quote(entry));
        let r = match value {
            None => self.command(&format!("{head}NIL)")),
            Some(v) if v.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                self.command(&format!("{head}{})", quote(v)))
            }
            Some(v) => self.command_parts(&[
                Part::Text(head),
                Part::Literal(v.as_bytes()),
                Part::Text(")".into()),
            ]),
        };
        assert!(
            r.is_ok(),
            "SETMETADATA {mailbox} {entry} failed: {} {}",
            r.status,
            r.text
        );
    }

    /// GETMETADATA of one entry; None when unset.
    pub fn get_metadata(&mut self, mailbox: &str, entry: &str) -> Option<String> {
        let r = self.ok(&format!(
            "GETMETADATA {} ({})",
            mailbox_arg(mailbox),
            quote(entry)
        ));
        metadata_map(&r).remove(entry)
    }

    /// Every /private and /shared entry set on the mailbox (`DEPTH infinity`).
    pub fn get_all_metadata(&mut self, mailbox: &str) -> BTreeMap<String, String> {
        let r = self.ok(&format!(
            "GETMETADATA (DEPTH infinity) {} (\"/private\" \"/shared\")",
            mailbox_arg(mailbox)
        ));
        metadata_map(&r)
    }

    /// UID, flags, internaldate, size and body SHA-1 of every message, by UID. Uses EXAMINE
    /// and BODY.PEEK so nothing changes on the server.
    pub fn fetch_all(&mut self, mailbox: &str) -> Vec<MessageInfo> {
        let info = self.examine(mailbox);
        if info.exists == 0 {
            return Vec::new();
        }
        let r = self.ok("UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])");
        // Unsolicited FETCHes may split one message's items; merge by sequence number.
        let mut by_seq: BTreeMap<u64, BTreeMap<String, Value>> = BTreeMap::new();
        for d in r.data("FETCH") {
            let seq = d[0].as_u64().unwrap_or(0);
            let Some(items) = d.get(2).and_then(|v| v.as_list()) else {
                continue;
            };
            let e = by_seq.entry(seq).or_default();
            for kv in items.chunks(2) {
                if let [k, v] = kv {
                    e.insert(
                        k.as_str().unwrap_or_default().to_ascii_uppercase(),
                        v.clone(),
                    );
                }
            }
        }
        let mut out = Vec::new();
        for (seq, m) in by_seq {
            let body = match m.get("BODY[]") {
                Some(v) => v.as_bytes().unwrap_or(b"").to_vec(),
                None => continue, // only a flag update for a message not in the range
            };
            let mut flags: Vec<String> = m
                .get("FLAGS")
                .and_then(|v| v.as_list())
                .unwrap_or(&[])
                .iter()
                .filter_map(|f| f.as_str())
                .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
                .collect();
            flags.sort();
            out.push(MessageInfo {
                uid: m
                    .get("UID")
                    .and_then(|v| v.as_u64())
                    .unwrap_or_else(|| panic!("no UID for seq {seq}")) as u32,
                flags,
                internaldate: m
                    .get("INTERNALDATE")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
                size: m.get("RFC822.SIZE").and_then(|v| v.as_u64()).unwrap_or(0),
                sha1: sha1_hex_of(&body),
            });
        }
        out.sort();
        out
    }

    /// The full message (`BODY.PEEK[]`) of one UID in the selected mailbox.
    pub fn fetch_body(&mut self, uid: u32) -> Vec<u8> {
        let r = self.ok(&format!("UID FETCH {uid} (UID BODY.PEEK[])"));
        for d in r.data("FETCH") {
            if let Some(items) = d.get(2).and_then(|v| v.as_list()) {
                for kv in items.chunks(2) {
                    if let [k, v] = kv {
                        if k.is_atom("BODY[]") {
                            return v.as_bytes().unwrap_or(b"").to_vec();
                        }
                    }
                }
            }
        }
        panic!("UID {uid} not found");
    }
}

fn finish_reply(tag: &str, line: Vec<u8>, untagged: Vec<Vec<u8>>) -> Reply {
    let s = String::from_utf8_lossy(&line).into_owned();
    let rest = s.strip_prefix(tag).unwrap_or(&s).trim_start();
    let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Reply {
        status: status.to_ascii_uppercase(),
        text: text.to_string(),
        untagged,
    }
}

/// `{123}` (or `{123+}`) at the end of a line announces a literal of that many bytes.
fn literal_len(line: &[u8]) -> Option<usize> {
    if !line.ends_with(b"}") {
        return None;
    }
    let open = line.iter().rposition(|&c| c == b'{')?;
    let inner = std::str::from_utf8(&line[open + 1..line.len() - 1]).ok()?;
    let digits = inner.strip_suffix('+').unwrap_or(inner);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn mailbox_info(r: &Reply) -> MailboxInfo {
    let num = |name: &str| r.code(name).and_then(|a| a.trim().parse::<u64>().ok());
    let exists = r
        .data("EXISTS")
        .iter()
        .filter_map(|d| d[0].as_u64())
        .next_back()
        .unwrap_or(0);
    MailboxInfo {
        uidvalidity: num("UIDVALIDITY").expect("no UIDVALIDITY in SELECT") as u32,
        uidnext: num("UIDNEXT").expect("no UIDNEXT in SELECT") as u32,
        highestmodseq: num("HIGHESTMODSEQ").unwrap_or(0),
        exists: exists as u32,
        mailboxid: r
            .code("MAILBOXID")
            .map(|a| a.trim_matches(|c| c == '(' || c == ')').to_string())
            .unwrap_or_default(),
    }
}

fn copyuid_pairs(r: &Reply) -> Vec<(u32, u32)> {
    let Some(code) = r.code("COPYUID") else {
        return Vec::new();
    };
    let f: Vec<&str> = code.split_whitespace().collect();
    if f.len() < 3 {
        return Vec::new();
    }
    expand_set(f[1]).into_iter().zip(expand_set(f[2])).collect()
}

fn expunged(r: &Reply) -> Vec<u32> {
    r.data("EXPUNGE")
        .iter()
        .filter_map(|d| d[0].as_u64())
        .map(|n| n as u32)
        .collect()
}

fn list_entries(r: &Reply, kw: &str) -> Vec<ListEntry> {
    let mut v = Vec::new();
    for d in r.data(kw) {
        if d.len() < 4 {
            continue;
        }
        let flags = d[1]
            .as_list()
            .unwrap_or(&[])
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        let delimiter = d[2].as_str().and_then(|s| s.chars().next());
        let name = mutf7_decode(&d[3].as_str().unwrap_or_default());
        v.push(ListEntry {
            flags,
            delimiter,
            name,
        });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn metadata_map(r: &Reply) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for d in r.data("METADATA") {
        if let Some(l) = d.get(2).and_then(|v| v.as_list()) {
            for kv in l.chunks(2) {
                if let [k, v] = kv {
                    if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                        m.insert(k, v);
                    }
                }
            }
        }
    }
    m
}

// ---------------------------------------------------------------------------------------------
// LMTP client

pub struct Lmtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Lmtp {
    /// Connects and sends LHLO.
    pub fn connect(addr: SocketAddr) -> Lmtp {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("LMTP connect {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut l = Lmtp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let (code, text) = l.reply();
        assert_eq!(code, 220, "LMTP greeting: {text}");
        let (code, text) = l.cmd("LHLO mailpack-tests");
        assert_eq!(code, 250, "LHLO: {text}");
        l
    }

    /// One (possibly multi-line) reply: code and the joined text.
    fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .r
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("LMTP read: {e}"));
            assert!(n > 0, "LMTP server closed the connection");
            let line = line.trim_end();
            text.push_str(line);
            text.push('\n');
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, text.trim_end().to_string());
            }
        }
    }

    fn cmd(&mut self, c: &str) -> (u16, String) {
        self.w
            .write_all(format!("{c}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("LMTP write: {e}"));
        self.reply()
    }

    /// One transaction; one result per recipient, in order. The message is CRLF-normalized and
    /// dot-stuffed on the way.
    pub fn deliver(
        &mut self,
        from: &str,
        recipients: &[&str],
        message: &[u8],
    ) -> Vec<Result<(), String>> {
        let (code, text) = self.cmd(&format!("MAIL FROM:<{from}>"));
        if code != 250 {
            return recipients
                .iter()
                .map(|_| Err(format!("MAIL FROM: {text}")))
                .collect();
        }
        let mut results: Vec<Result<(), String>> = Vec::new();
        for r in recipients {
            let (code, text) = self.cmd(&format!("RCPT TO:<{r}>"));
            results.push(if code == 250 {
                Ok(())
            } else {
                Err(format!("RCPT TO: {text}"))
            });
        }
        if results.iter().all(|r| r.is_err()) {
            self.cmd("RSET");
            return results;
        }
        let (code, text) = self.cmd("DATA");
        if code != 354 {
            self.cmd("RSET");
            return recipients
                .iter()
                .map(|_| Err(format!("DATA: {text}")))
                .collect();
        }
        let msg = crlf(message);
        let mut data = Vec::with_capacity(msg.len() + 64);
        for line in msg.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(b".") {
                data.push(b'.');
            }
            data.extend_from_slice(line);
        }
        if !data.ends_with(b"\r\n") {
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        self.w
            .write_all(&data)
            .unwrap_or_else(|e| panic!("LMTP write: {e}"));
        // LMTP answers DATA once per accepted recipient (RFC 2033), in RCPT order.
        for r in results.iter_mut() {
            if r.is_ok() {
                let (code, text) = self.reply();
                if code != 250 {
                    *r = Err(format!("after DATA: {text}"));
                }
            }
        }
        results
    }

    pub fn quit(mut self) {
        let _ = self.w.write_all(b"QUIT\r\n");
        let _ = self.reply();
    }
}

// ---------------------------------------------------------------------------------------------
// ManageSieve client (RFC 5804), enough for timsieved

pub struct ManageSieve {
    r: BufReader<TcpStream>,
    w: TcpStream,
    /// Capability lines from the greeting, e.g. `"SIEVE" "fileinto ..."`.
    pub capabilities: Vec<String>,
}

impl ManageSieve {
    pub fn connect(addr: SocketAddr) -> ManageSieve {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("sieve connect {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut m = ManageSieve {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            capabilities: Vec::new(),
        };
        let (status, lines) = m.response();
        assert!(
            status.starts_with("OK"),
            "sieve greeting: {status} {lines:?}"
        );
        m.capabilities = lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        m
    }

    /// Data lines (literals inline) and the final OK/NO/BYE line.
    fn response(&mut self) -> (String, Vec<Vec<u8>>) {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self
                .r
                .read_until(b'\n', &mut line)
                .unwrap_or_else(|e| panic!("sieve read: {e}"));
            assert!(n > 0, "sieve server closed the connection");
            while line.ends_with(b"\n") || line.ends_with(b"\r") {
                line.pop();
            }
            if let Some(len) = literal_len(&line) {
                let mut lit = vec![0; len];
                self.r
                    .read_exact(&mut lit)
                    .unwrap_or_else(|e| panic!("sieve literal read: {e}"));
                line.extend_from_slice(b"\r\n");
                line.extend_from_slice(&lit);
                // The rest of the line after the literal (usually just CRLF).
                let mut tail = Vec::new();
                self.r.read_until(b'\n', &mut tail).unwrap();
                while tail.ends_with(b"\n") || tail.ends_with(b"\r") {
                    tail.pop();
                }
                line.extend_from_slice(&tail);
            }
            let upper: Vec<u8> = line
                .iter()
                .take(3)
                .map(|b| b.to_ascii_uppercase())
                .collect();
            if upper.starts_with(b"OK") || upper.starts_with(b"NO") || upper.starts_with(b"BYE") {
                return (String::from_utf8_lossy(&line).into_owned(), lines);
            }
            lines.push(line);
        }
    }

    fn send(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.w
            .write_all(data)
            .unwrap_or_else(|e| panic!("sieve write: {e}"));
        let (status, lines) = self.response();
        if status.to_ascii_uppercase().starts_with("OK") {
            Ok(lines)
        } else {
            Err(status)
        }
    }

    /// SASL PLAIN; `authz` may be empty.
    pub fn authenticate(&mut self, authz: &str, authc: &str, pass: &str) -> Result<(), String> {
        let token = base64(format!("{authz}\0{authc}\0{pass}").as_bytes());
        self.send(format!("AUTHENTICATE \"PLAIN\" \"{token}\"\r\n").as_bytes())
            .map(|_| ())
    }

    pub fn put_script(&mut self, name: &str, script: &str) -> Result<(), String> {
        let body = crlf(script.as_bytes());
        let mut cmd = format!("PUTSCRIPT {} {{{}+}}\r\n", quote(name), body.len()).into_bytes();
        cmd.extend_from_slice(&body);
        cmd.extend_from_slice(b"\r\n");
        self.send(&cmd).map(|_| ())
    }

    /// Makes `name` the active script; `""` deactivates all.
    pub fn set_active(&mut self, name: &str) -> Result<(), String> {
        self.send(format!("SETACTIVE {}\r\n", quote(name)).as_bytes())
            .map(|_| ())
    }

    /// `(name, active)` pairs.
    pub fn list_scripts(&mut self) -> Vec<(String, bool)> {
        let lines = self
            .send(b"LISTSCRIPTS\r\n")
            .unwrap_or_else(|e| panic!("LISTSCRIPTS: {e}"));
        lines
            .iter()
            .filter_map(|l| {
                let v = parse_values(l);
                let name = v.first()?.as_str()?;
                let active = v.get(1).is_some_and(|a| a.is_atom("ACTIVE"));
                Some((name, active))
            })
            .collect()
    }

    pub fn get_script(&mut self, name: &str) -> Result<String, String> {
        let lines = self.send(format!("GETSCRIPT {}\r\n", quote(name)).as_bytes())?;
        let joined: Vec<u8> = lines.concat();
        match parse_values(&joined).first() {
            Some(v) => Ok(v.as_str().unwrap_or_default()),
            None => Err("empty GETSCRIPT answer".into()),
        }
    }

    pub fn delete_script(&mut self, name: &str) -> Result<(), String> {
        self.send(format!("DELETESCRIPT {}\r\n", quote(name)).as_bytes())
            .map(|_| ())
    }

    pub fn logout(mut self) {
        let _ = self.w.write_all(b"LOGOUT\r\n");
        let _ = self.response();
    }
}
