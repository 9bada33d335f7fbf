//! Exports to files (formats/restore.md, "Exports"): Maildir++ folders, mboxrd files, or one
//! `.eml` per message, as the restore targets `MaildirExport`, `MboxExport` and `EmlExport`.
//! Every path is built under the target from checked name levels, every directory on the way is
//! created or must already be a real directory (a symlink planted in the target is refused, not
//! followed), and files are created new: a re-run after an interruption skips what is already
//! there.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::plan::{MessageTarget, Outcome, Request, RestorePlan, Target};
use super::select::{message_record, plan_copy, plan_message, read_message, CopySteps, Selected};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::spool::index::IndexRecord;
use crate::store::Archive;

/// One message to export, with what the format can carry of it.
pub struct ExportMessage<'a> {
    pub record: &'a IndexRecord,
    /// IMAP flag names (`\Seen`, `$Forwarded`, ...).
    pub flags: Vec<String>,
    pub uidvalidity: u32,
}

/// Creates `root/levels...` one component at a time. An existing component must be a real
/// directory: a symlink there could lead the restore out of its target.
pub fn ensure_dir(root: &Path, levels: &[String]) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    create_real_dir(&path)?;
    for level in levels {
        path.push(level);
        create_real_dir(&path)?;
    }
    Ok(path)
}

/// Something other than what an export makes sits at a path in its target: the caller's target
/// holds it, and it is left as it is.
fn not_followed(path: &Path, what: &str) -> Error {
    Error::usage(format!(
        "{} exists and is not {what} (a symlink is never followed)",
        path.display()
    ))
}

fn create_real_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
            if meta.file_type().is_dir() {
                Ok(())
            } else {
                Err(not_followed(path, "a directory"))
            }
        }
        Err(e) => Err(Error::io("create", path, e)),
    }
}

/// Writes `bytes` as the new file `path` (mode 0600) with `mtime`. `Ok(false)` when a previous,
/// interrupted run of the same export already wrote it: a regular file there whose bytes hash
/// to the same SHA-1 is kept. Anything else there (cut short by a crash before the export was
/// made durable, or planted) has its name removed and the file is created anew: a file is only
/// ever created exclusively (`O_EXCL`, `O_NOFOLLOW`), never opened for writing when it exists,
/// so a hard link or symlink at the name is never written through. Anything but a regular file
/// there (a symlink, a FIFO, a directory) is refused. Nothing is fsynced here: `sync_tree` makes
/// the whole export durable once at the end.
pub fn write_new(path: &Path, bytes: &[u8], mtime: Option<i64>) -> Result<bool> {
    // Two tries: the second follows removing what was there; something there again is a race
    // with another writer in the target, which is refused.
    for attempt in 0..2 {
        match create_exclusive(path) {
            Ok(mut file) => {
                file.write_all(bytes)
                    .map_err(|e| Error::io("write", path, e))?;
                if let Some(t) = mtime {
                    set_mtime(&file, path, t)?;
                }
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt == 0 => {
                if holds(path, bytes)? {
                    return Ok(false);
                }
                // Removing the name leaves any other link to that file as it was.
                fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
            }
            Err(e) => return Err(Error::io("create", path, e)),
        }
    }
    Err(Error::io(
        "create",
        path,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "it appeared again while the export replaced it; another process writes in the target",
        ),
    ))
}

fn create_exclusive(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Whether the regular file at `path` holds exactly `bytes`; an error when something other than
/// a regular file is there. Opened without following a symlink and without blocking on a FIFO,
/// and checked on the open descriptor, so what is read is what was checked.
fn holds(path: &Path, bytes: &[u8]) -> Result<bool> {
    use std::io::Read;
    let not_a_file = || not_followed(path, "a regular file");
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_a_file()),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(not_a_file());
    }
    if meta.len() != bytes.len() as u64 {
        return Ok(false);
    }
    // At most one byte more than expected is read, whatever the file grows to meanwhile.
    let mut there = Vec::with_capacity(bytes.len());
    file.take(bytes.len() as u64 + 1)
        .read_to_end(&mut there)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(crate::guid::Guid::of(&there) == crate::guid::Guid::of(bytes))
}

/// Writes files on a few threads. Creating a file is mostly kernel time, which more cores
/// share; reading and decoding the archive stays on the caller's thread, in order. The first
/// error stops nothing already queued but is returned by the next `submit` or by `finish`.
/// A file to write: where, what, and its mtime.
type WriteJob = (PathBuf, Vec<u8>, Option<i64>);

pub struct WritePool {
    tx: Option<std::sync::mpsc::SyncSender<WriteJob>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    state: std::sync::Arc<PoolState>,
}

#[derive(Default)]
struct PoolState {
    written: std::sync::atomic::AtomicU64,
    already_there: std::sync::atomic::AtomicU64,
    error: std::sync::Mutex<Option<Error>>,
}

impl WritePool {
    pub fn new(threads: usize) -> WritePool {
        use std::sync::{mpsc, Arc, Mutex};
        let (tx, rx) = mpsc::sync_channel::<WriteJob>(64);
        let rx = Arc::new(Mutex::new(rx));
        let state = Arc::new(PoolState::default());
        let workers = (0..threads.max(1))
            .map(|_| {
                let (rx, state) = (rx.clone(), state.clone());
                std::thread::spawn(move || loop {
                    let job = rx.lock().expect("no worker panics holding it").recv();
                    let Ok((path, bytes, mtime)) = job else {
                        return;
                    };
                    match write_new(&path, &bytes, mtime) {
                        Ok(true) => drop(
                            state
                                .written
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        ),
                        Ok(false) => drop(
                            state
                                .already_there
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        ),
                        Err(e) => {
                            let mut slot = state.error.lock().expect("no worker panics holding it");
                            slot.get_or_insert(e);
                        }
                    }
                })
            })
            .collect();
        WritePool {
            tx: Some(tx),
            workers,
            state,
        }
    }

    fn take_error(&self) -> Option<Error> {
        self.state
            .error
            .lock()
            .expect("no worker panics holding it")
            .take()
    }

    pub fn submit(&self, path: PathBuf, bytes: Vec<u8>, mtime: Option<i64>) -> Result<()> {
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        self.tx
            .as_ref()
            .expect("open until finish")
            .send((path, bytes, mtime))
            .expect("the writer threads receive until finish closes the queue");
        Ok(())
    }

    /// Waits for every queued file; returns how many were written and how many were there.
    pub fn finish(mut self) -> Result<(u64, u64)> {
        drop(self.tx.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        use std::sync::atomic::Ordering::Relaxed;
        Ok((
            self.state.written.load(Relaxed),
            self.state.already_there.load(Relaxed),
        ))
    }
}

/// Makes everything written under `root` durable with one `syncfs` of its filesystem, instead
/// of one fsync per message.
pub fn sync_tree(root: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(root).map_err(|e| Error::io("open", root, e))?;
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(Error::io("sync", root, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_mtime(file: &File, path: &Path, secs: i64) -> Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .map_err(|e| Error::io("set the time of", path, e))
}

/// Escapes one level for a file name: `%` as `%25` and `.` as `%2E`, so a level is never `.` or
/// `..`, never hidden, never ends like a message file (`<uid>.eml`) or an mbox (`<name>.mbox`)
/// and, in Maildir++, never reads as two levels.
fn escape_level(level: &str) -> String {
    level.replace('%', "%25").replace('.', "%2E")
}

/// The path components of a mailbox in an `--eml`, `--mbox` or `--imap` target: its levels below
/// the owner (`safe_levels`) escaped by `escape_level`. The owner's INBOX is `INBOX`; a folder
/// that is itself named `INBOX` (in any case) directly below it has its first letter escaped
/// (`%49NBOX`), so it never shares the INBOX's place. The mapping is one-to-one: two mailboxes
/// never map to the same components.
pub fn export_levels(levels: &[String], inbox: bool) -> Vec<String> {
    if inbox {
        return vec!["INBOX".into()];
    }
    levels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let escaped = escape_level(l);
            if i == 0 && l.eq_ignore_ascii_case("INBOX") {
                format!("%{:02X}{}", l.as_bytes()[0], &escaped[1..])
            } else {
                escaped
            }
        })
        .collect()
}

/// The Maildir++ folder name for a mailbox's levels under the INBOX (`None` for the INBOX
/// itself, which is the Maildir): `.` joins levels, so they are escaped by `escape_level`.
/// `levels` are the mailbox's raw levels (`safe_levels`); a folder named `INBOX` is `.INBOX`,
/// apart from the INBOX.
pub fn maildir_folder(levels: &[String], inbox: bool) -> Option<String> {
    if inbox {
        return None;
    }
    let escaped: Vec<String> = levels.iter().map(|l| escape_level(l)).collect();
    Some(format!(".{}", escaped.join(".")))
}

/// The Maildir info letters for the system flags (they must be in ASCII order) and the
/// keyword letters Dovecot's `dovecot-keywords` file assigns.
fn maildir_info(flags: &[String], keywords: &[String]) -> String {
    let mut letters: Vec<char> = Vec::new();
    for f in flags {
        match f.as_str() {
            "\\Draft" => letters.push('D'),
            "\\Flagged" => letters.push('F'),
            "\\Answered" => letters.push('R'),
            "\\Seen" => letters.push('S'),
            "\\Deleted" => letters.push('T'),
            k => {
                if let Some(i) = keywords.iter().position(|x| x == k) {
                    letters.push((b'a' + i as u8) as char);
                }
            }
        }
    }
    letters.sort_unstable();
    letters.into_iter().collect()
}

/// Maildir: one folder (the INBOX is the Maildir itself), `cur/` files named
/// `<internaldate>.M<uid>U<uidvalidity>.mailpack:2,<info>`, mtime = internal date, bytes as
/// stored. User flags become keyword letters `a`–`z` listed in `dovecot-keywords` (the first 26
/// in order of appearance; more cannot be carried).
pub struct MaildirFolder {
    dir: PathBuf,
    keywords: Vec<String>,
}

impl MaildirFolder {
    pub fn open(
        root: &Path,
        levels: &[String],
        inbox: bool,
        messages: &[ExportMessage],
    ) -> Result<Self> {
        let mut dir = ensure_dir(root, &[])?;
        if let Some(folder) = maildir_folder(levels, inbox) {
            dir = ensure_dir(root, &[folder])?;
        }
        for sub in ["cur", "new", "tmp"] {
            ensure_dir(&dir, &[sub.to_string()])?;
        }
        let mut keywords: Vec<String> = Vec::new();
        for m in messages {
            for f in &m.flags {
                if !f.starts_with('\\') && !keywords.contains(f) && keywords.len() < 26 {
                    keywords.push(f.clone());
                }
            }
        }
        if !keywords.is_empty() {
            let list: String = keywords
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{i} {k}\n"))
                .collect();
            let path = dir.join("dovecot-keywords");
            let _ = fs::remove_file(&path);
            write_new(&path, list.as_bytes(), None)?;
        }
        Ok(MaildirFolder { dir, keywords })
    }

    pub fn path_of(&self, m: &ExportMessage) -> PathBuf {
        self.dir.join("cur").join(format!(
            "{}.M{}U{}.mailpack:2,{}",
            m.record.internaldate_ns.div_euclid(1_000_000_000),
            m.record.uid,
            m.uidvalidity,
            maildir_info(&m.flags, &self.keywords)
        ))
    }

    /// Queued to be written straight into `cur/`: a restore target has no mail client reading
    /// it meanwhile, so Maildir's `tmp/` hand-over buys nothing but a second directory update.
    pub fn write(&self, pool: &WritePool, m: &ExportMessage, bytes: Vec<u8>) -> Result<()> {
        pool.submit(
            self.path_of(m),
            bytes,
            Some(m.record.internaldate_ns.div_euclid(1_000_000_000)),
        )
    }
}

/// `asctime` form for the mbox `From ` line: `Sun Nov 22 13:05:09 2026`.
fn asctime(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = super::format_utc(t); // 2026-11-22T13:05:09Z
    let (y, m, d) = (&iso[0..4], &iso[5..7], &iso[8..10]);
    let month = MONTHS[m.parse::<usize>().unwrap_or(1) - 1];
    let weekday = DAYS[t.div_euclid(86_400).rem_euclid(7) as usize];
    format!(
        "{weekday} {month} {:>2} {} {y}",
        d.trim_start_matches('0'),
        &iso[11..19]
    )
}

/// One message in mboxrd form: the `From ` line, the message with CRLF turned into LF and every
/// line matching `^>*From ` given one more `>`, `Status`/`X-Status`/`X-Keywords` headers for the
/// flags (as mutt, Thunderbird and Python's `mailbox` read them), and a blank line.
pub fn mbox_entry(m: &ExportMessage, bytes: &[u8]) -> Vec<u8> {
    let secs = m.record.internaldate_ns.div_euclid(1_000_000_000);
    let mut out = format!("From MAILER-DAEMON {}\n", asctime(secs)).into_bytes();
    let text: Vec<u8> = {
        let mut v = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            v.push(bytes[i]);
            i += 1;
        }
        v
    };
    let mut status = String::new();
    let mut xstatus = String::new();
    let mut keywords = Vec::new();
    for f in &m.flags {
        match f.as_str() {
            "\\Seen" => status.push('R'),
            "\\Answered" => xstatus.push('A'),
            "\\Flagged" => xstatus.push('F'),
            "\\Deleted" => xstatus.push('D'),
            "\\Draft" => xstatus.push('T'),
            k if !k.starts_with('\\') => keywords.push(k.to_string()),
            _ => {}
        }
    }
    status.push('O');
    let mut flag_headers = format!("Status: {status}\n");
    if !xstatus.is_empty() {
        flag_headers.push_str(&format!("X-Status: {xstatus}\n"));
    }
    if !keywords.is_empty() {
        flag_headers.push_str(&format!("X-Keywords: {}\n", keywords.join(" ")));
    }
    let mut in_headers = true;
    let mut lines = text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        if last && line.is_empty() {
            break;
        }
        if in_headers && line.is_empty() {
            out.extend_from_slice(flag_headers.as_bytes());
            in_headers = false;
        }
        let quoted = line.iter().position(|&b| b != b'>').map(|i| &line[i..]);
        if quoted.is_some_and(|rest| rest.starts_with(b"From ")) {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    if in_headers {
        out.extend_from_slice(flag_headers.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// An mbox file being appended to: created new, so an existing file is never overwritten.
pub struct MboxFile {
    file: File,
    path: PathBuf,
}

impl MboxFile {
    pub fn create(path: &Path) -> Result<MboxFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::usage(format!(
                    "{} exists; an mbox export never overwrites a file",
                    path.display()
                )),
                _ => Error::io("create", path, e),
            })?;
        Ok(MboxFile {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, m: &ExportMessage, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(&mbox_entry(m, bytes))
            .map_err(|e| Error::io("write", &self.path, e))
    }

    pub fn finish(self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", &self.path, e))
    }
}

/// `.eml`: `<dir>/<uid>.eml`, the message's bytes as stored, mtime = internal date.
pub fn eml_path(dir: &Path, record: &IndexRecord) -> PathBuf {
    dir.join(format!("{}.eml", record.uid))
}

/// A pool sized to the machine, made when the first file is queued.
fn writer_pool(slot: &mut Option<WritePool>) -> &WritePool {
    slot.get_or_insert_with(|| {
        WritePool::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// Waits for the pool's files, counts them, and makes the tree under `root` durable.
fn finish_export(pool: Option<WritePool>, root: &Path, out: &mut Outcome) -> Result<()> {
    if let Some(pool) = pool {
        let (written, there) = pool.finish()?;
        out.messages_written += written;
        out.messages_already_there += there;
    }
    if root.exists() {
        sync_tree(root)?;
    }
    Ok(())
}

/// `--maildir DIR`: a Maildir++ tree, the INBOX at its root and every other mailbox a
/// `.<levels>` folder (`maildir_folder`); a single message goes to `new/<sha1>.mailpack`.
pub struct MaildirExport {
    pub root: PathBuf,
}

impl<'a> Target<'a> for MaildirExport {
    type Steps = CopySteps<'a>;

    fn plan(&self, archive: &'a Archive, request: &Request) -> Result<RestorePlan<CopySteps<'a>>> {
        let root = &self.root;
        let mut plan = plan_copy(archive, request, |s, _| {
            Some(match maildir_folder(&s.levels, s.inbox) {
                Some(f) => root.join(f).display().to_string(),
                None => root.display().to_string(),
            })
        })?;
        // A file's name holds its flags, which are settled only when its folder is opened.
        if let CopySteps::Mailboxes { selected, .. } = &plan.steps {
            for s in selected {
                for (r, _) in &s.records {
                    plan.writes.push(format!("{root:?} {}", r.uid));
                }
            }
        }
        Ok(plan)
    }

    fn execute(&self, plan: RestorePlan<CopySteps<'a>>) -> Result<Outcome> {
        let (mut out, steps) = plan.into_start();
        match steps {
            CopySteps::Mailboxes { messages, selected } => {
                let mut pending = None;
                for s in &selected {
                    let exports = s.messages();
                    let folder = MaildirFolder::open(&self.root, &s.levels, s.inbox, &exports)?;
                    for m in &exports {
                        let Some(bytes) = read_message(&messages, s, m.record, &mut out) else {
                            continue;
                        };
                        out.writes.push(folder.path_of(m).display().to_string());
                        folder.write(writer_pool(&mut pending), m, bytes)?;
                    }
                }
                finish_export(pending, &self.root, &mut out)?;
            }
            CopySteps::Message { sha1, bytes } => {
                let path = self.message_path(sha1);
                out.writes.push(path.display().to_string());
                for sub in ["new", "cur", "tmp"] {
                    ensure_dir(&self.root, &[sub.to_string()])?;
                }
                out.count(write_new(&path, &bytes, None)?);
                sync_tree(&self.root)?;
            }
        }
        Ok(out)
    }
}

impl MessageTarget<'_> for MaildirExport {
    fn plan_message(&self, sha1: Guid, bytes: Vec<u8>) -> Result<RestorePlan<Self::Steps>> {
        let write = self.message_path(sha1).display().to_string();
        Ok(plan_message(sha1, bytes, write))
    }
}

impl MaildirExport {
    fn message_path(&self, sha1: Guid) -> PathBuf {
        self.root.join("new").join(format!("{sha1}.mailpack"))
    }
}

/// `--eml DIR`: one directory per mailbox (`export_levels`), one `<uid>.eml` per message; a
/// single message goes to `<sha1>.eml` at the top.
pub struct EmlExport {
    pub root: PathBuf,
}

impl<'a> Target<'a> for EmlExport {
    type Steps = CopySteps<'a>;

    fn plan(&self, archive: &'a Archive, request: &Request) -> Result<RestorePlan<CopySteps<'a>>> {
        let mut plan = plan_copy(archive, request, |s, _| {
            Some(self.dir_of(s).display().to_string())
        })?;
        if let CopySteps::Mailboxes { selected, .. } = &plan.steps {
            for s in selected {
                let dir = self.dir_of(s);
                for (r, _) in &s.records {
                    plan.writes.push(eml_path(&dir, r).display().to_string());
                }
            }
        }
        Ok(plan)
    }

    fn execute(&self, plan: RestorePlan<CopySteps<'a>>) -> Result<Outcome> {
        let (mut out, steps) = plan.into_start();
        match steps {
            CopySteps::Mailboxes { messages, selected } => {
                let mut pending = None;
                for s in &selected {
                    let dir = ensure_dir(&self.root, &s.export_levels())?;
                    for (record, _) in &s.records {
                        let Some(bytes) = read_message(&messages, s, record, &mut out) else {
                            continue;
                        };
                        let path = eml_path(&dir, record);
                        out.writes.push(path.display().to_string());
                        let secs = record.internaldate_ns.div_euclid(1_000_000_000);
                        writer_pool(&mut pending).submit(path, bytes, Some(secs))?;
                    }
                }
                finish_export(pending, &self.root, &mut out)?;
            }
            CopySteps::Message { sha1, bytes } => {
                let path = self.message_path(sha1);
                out.writes.push(path.display().to_string());
                ensure_dir(&self.root, &[])?;
                out.count(write_new(&path, &bytes, None)?);
                sync_tree(&self.root)?;
            }
        }
        Ok(out)
    }
}

impl MessageTarget<'_> for EmlExport {
    fn plan_message(&self, sha1: Guid, bytes: Vec<u8>) -> Result<RestorePlan<Self::Steps>> {
        let write = self.message_path(sha1).display().to_string();
        Ok(plan_message(sha1, bytes, write))
    }
}

impl EmlExport {
    fn dir_of(&self, s: &Selected) -> PathBuf {
        self.root.join(s.export_levels().join("/"))
    }

    fn message_path(&self, sha1: Guid) -> PathBuf {
        self.root.join(format!("{sha1}.eml"))
    }
}

/// `--mbox PATH`: one mailbox makes PATH an mboxrd file; several make PATH a directory holding
/// `<levels>.mbox` per mailbox, its levels above the last as subdirectories.
pub struct MboxExport {
    pub path: PathBuf,
}

impl<'a> Target<'a> for MboxExport {
    type Steps = CopySteps<'a>;

    fn plan(&self, archive: &'a Archive, request: &Request) -> Result<RestorePlan<CopySteps<'a>>> {
        let mut plan = plan_copy(archive, request, |s, several| {
            let (_, file) = self.file_of(s, several)?;
            Some(file.display().to_string())
        })?;
        if let CopySteps::Mailboxes { selected, .. } = &plan.steps {
            let several = selected.len() > 1;
            for s in selected {
                if let Some((_, file)) = self.file_of(s, several) {
                    plan.writes.push(file.display().to_string());
                }
            }
        }
        Ok(plan)
    }

    fn execute(&self, plan: RestorePlan<CopySteps<'a>>) -> Result<Outcome> {
        let (mut out, steps) = plan.into_start();
        match steps {
            CopySteps::Mailboxes { messages, selected } => {
                let several = selected.len() > 1;
                for s in &selected {
                    let Some((dirs, file)) = self.file_of(s, several) else {
                        continue;
                    };
                    out.writes.push(file.display().to_string());
                    if several {
                        ensure_dir(&self.path, &dirs)?;
                    }
                    let mut mbox = MboxFile::create(&file)?;
                    for m in &s.messages() {
                        let Some(bytes) = read_message(&messages, s, m.record, &mut out) else {
                            continue;
                        };
                        mbox.append(m, &bytes)?;
                        out.messages_written += 1;
                    }
                    mbox.finish()?;
                }
            }
            CopySteps::Message { sha1, bytes } => {
                out.writes.push(self.path.display().to_string());
                let record = message_record(sha1, &bytes);
                let m = ExportMessage {
                    record: &record,
                    flags: Vec::new(),
                    uidvalidity: 0,
                };
                let mut mbox = MboxFile::create(&self.path)?;
                mbox.append(&m, &bytes)?;
                mbox.finish()?;
                out.messages_written += 1;
            }
        }
        Ok(out)
    }
}

impl MessageTarget<'_> for MboxExport {
    fn plan_message(&self, sha1: Guid, bytes: Vec<u8>) -> Result<RestorePlan<Self::Steps>> {
        Ok(plan_message(sha1, bytes, self.path.display().to_string()))
    }
}

impl MboxExport {
    /// The directories to create under the target (its levels above the last) and the mbox
    /// file of a mailbox; `None` for a mailbox without levels, which `safe_levels` never gives.
    fn file_of(&self, s: &Selected, several: bool) -> Option<(Vec<String>, PathBuf)> {
        if !several {
            return Some((Vec::new(), self.path.clone()));
        }
        let levels = s.export_levels();
        let (last, parents) = levels.split_last()?;
        let file = self
            .path
            .join(parents.join("/"))
            .join(format!("{last}.mbox"));
        Some((parents.to_vec(), file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: u32, date: i64) -> IndexRecord {
        IndexRecord {
            uid,
            internaldate_ns: date * 1_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn mboxrd_quotes_from_lines_and_carries_flags() {
        let r = record(1, 1_795_352_709);
        let m = ExportMessage {
            record: &r,
            flags: vec!["\\Flagged".into(), "\\Seen".into(), "Work".into()],
            uidvalidity: 1,
        };
        let out = mbox_entry(&m, b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nok\r\n");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "From MAILER-DAEMON Sun Nov 22 13:05:09 2026\nSubject: x\nStatus: RO\nX-Status: F\n\
             X-Keywords: Work\n\n>From here\n>>From there\nok\n\n"
        );
    }

    #[test]
    fn maildir_names_keep_the_hierarchy_unambiguous() {
        assert_eq!(maildir_folder(&["INBOX".into()], true), None);
        assert_eq!(
            maildir_folder(&["INBOX".into()], false).as_deref(),
            Some(".INBOX")
        );
        assert_eq!(
            maildir_folder(&["a.b".into(), "c".into()], false).as_deref(),
            Some(".a%2Eb.c")
        );
        assert_eq!(
            maildir_info(
                &["\\Seen".into(), "\\Answered".into(), "k".into()],
                &["k".into()]
            ),
            "RSa"
        );
    }

    #[test]
    fn a_symlink_in_the_target_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("mailpack-export-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/tmp", dir.join("evil")).unwrap();
        assert!(ensure_dir(&dir, &["evil".into(), "x".into()]).is_err());
        std::os::unix::fs::symlink("/etc/passwd", dir.join("f")).unwrap();
        let f = dir.join("f");
        assert!(write_new(&f, b"x", None).is_err());
        // A file cut short by a crash is written again; a complete one is kept.
        let g = dir.join("g");
        fs::write(&g, b"hal").unwrap();
        assert!(write_new(&g, b"half a message", None).unwrap());
        assert!(!write_new(&g, b"half a message", None).unwrap());
        assert_eq!(fs::read(&g).unwrap(), b"half a message");
        assert_ne!(fs::read("/etc/passwd").unwrap(), b"x");
        // A hard link at the name is replaced, not written through.
        let outside = dir.join("outside");
        fs::write(&outside, b"precious").unwrap();
        let h = dir.join("h");
        fs::hard_link(&outside, &h).unwrap();
        assert!(write_new(&h, b"exported", None).unwrap());
        assert_eq!(fs::read(&h).unwrap(), b"exported");
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn export_levels_keep_every_mailbox_apart() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(export_levels(&l(&["INBOX"]), true), l(&["INBOX"]));
        assert_eq!(export_levels(&l(&["INBOX"]), false), l(&["%49NBOX"]));
        assert_eq!(
            export_levels(&l(&["inbox", "INBOX"]), false),
            l(&["%69nbox", "INBOX"])
        );
        assert_eq!(export_levels(&l(&["a.b"]), false), l(&["a%2Eb"]));
        assert_eq!(export_levels(&l(&["a%2Eb"]), false), l(&["a%252Eb"]));
        assert_eq!(
            export_levels(&l(&["..", "7.eml"]), false),
            l(&["%2E%2E", "7%2Eeml"])
        );
    }
}
