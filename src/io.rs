//! File plumbing shared by the writers: files that can be made to fail on purpose (so crash
//! safety is proven by fault injection, not hoped for), directory fsync, atomic replacement.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Which operations a `Faults` plan counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOn {
    Write,
    Sync,
    /// Renames and removals: the steps that switch which file a name means.
    Rename,
    Any,
}

/// A countdown shared by every file a writer touches: the Nth counted operation fails. A failing
/// write first writes half of its buffer, as a torn write at power loss would. Production code
/// passes `Faults::none()`, which costs one branch per call.
#[derive(Clone, Default)]
pub struct Faults(Option<Arc<FaultPlan>>);

struct FaultPlan {
    on: FaultOn,
    remaining: AtomicU64,
    seen: AtomicU64,
}

impl Faults {
    pub fn none() -> Faults {
        Faults(None)
    }

    /// Fail the `n`th (1-based) operation of kind `on`.
    pub fn fail_nth(n: u64, on: FaultOn) -> Faults {
        Faults(Some(Arc::new(FaultPlan {
            on,
            remaining: AtomicU64::new(n),
            seen: AtomicU64::new(0),
        })))
    }

    /// How many counted operations happened so far (to size a sweep).
    pub fn seen(&self) -> u64 {
        self.0.as_ref().map_or(0, |p| p.seen.load(Ordering::SeqCst))
    }

    pub(crate) fn fires(&self, op: FaultOn) -> bool {
        let Some(plan) = &self.0 else { return false };
        if plan.on != FaultOn::Any && plan.on != op {
            return false;
        }
        plan.seen.fetch_add(1, Ordering::SeqCst);
        plan.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
            .map(|before| before == 1)
            .unwrap_or(false)
    }
}

fn injected() -> io::Error {
    io::Error::other("injected fault")
}

/// A file whose writes and fsyncs go through a fault plan.
pub struct DurableFile {
    file: File,
    path: PathBuf,
    faults: Faults,
}

impl DurableFile {
    pub fn new(file: File, path: &Path, faults: Faults) -> DurableFile {
        DurableFile {
            file,
            path: path.to_path_buf(),
            faults,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sync(&mut self) -> Result<()> {
        if self.faults.fires(FaultOn::Sync) {
            return Err(Error::io("fsync", &self.path, injected()));
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync", &self.path, e))
    }

    pub fn write_all_at_end(&mut self, buf: &[u8]) -> Result<()> {
        self.write_all(buf)
            .map_err(|e| Error::io("write", &self.path, e))
    }

    /// Cuts the file to `len` bytes and positions it there. A file already that long is left
    /// alone: truncating to the same length still dirties the inode (its times), which every
    /// no-change run of every owner would then commit to the journal.
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        let now = self
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &self.path, e))?
            .len();
        if now != len {
            self.file
                .set_len(len)
                .map_err(|e| Error::io("truncate", &self.path, e))?;
        }
        self.file
            .seek(SeekFrom::Start(len))
            .map_err(|e| Error::io("seek", &self.path, e))?;
        Ok(())
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Write for DurableFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.faults.fires(FaultOn::Write) {
            let half = buf.len() / 2;
            if half > 0 {
                self.file.write_all(&buf[..half])?;
            }
            return Err(injected());
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Read for DurableFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for DurableFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Opens `path` for reading and appending, creating it with mode 0600 if absent. Returns whether
/// it was created, so the caller can fsync the directory.
pub fn open_private(path: &Path) -> Result<(File, bool)> {
    // The file exists on every run but an owner's first: opening it first costs one call then.
    let existing = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(NO_FOLLOW)
            .open(path)
    };
    let (file, created) = match existing() {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(NO_FOLLOW)
            .open(path)
        {
            Ok(f) => (f, true),
            // Created by another process in between.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => existing()
                .map(|f| (f, false))
                .map_err(|e| open_error(path, e))?,
            Err(e) => return Err(Error::io("create", path, e)),
        },
        Err(e) => return Err(open_error(path, e)),
    };
    ensure_regular(&file, path)?;
    Ok((file, created))
}

/// Flags for every open of mailpack's own files: a symlink planted at an archive's or index's
/// name is refused (ELOOP) rather than followed to a file that is not ours, and a FIFO or device
/// there cannot block the open.
const NO_FOLLOW: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

/// Opens one of mailpack's own files read-only, refusing symlinks and anything not a regular
/// file, so no reader can block on a FIFO or be led to a file elsewhere.
pub fn open_own(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(NO_FOLLOW)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    ensure_regular(&file, path)?;
    Ok(file)
}

/// As `open_own`, read-write, creating the file (mode 0600) when it is absent: for mailpack's
/// own records that are rewritten in place.
pub fn open_own_or_create(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(NO_FOLLOW)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    ensure_regular(&file, path)?;
    Ok(file)
}

/// As `open_own`, read-write, for a writer holding the lock (never creates the file).
pub fn open_own_writable(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(NO_FOLLOW)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    ensure_regular(&file, path)?;
    Ok(file)
}

fn open_error(path: &Path, e: io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return Error::Foreign {
            path: path.to_path_buf(),
            detail: "is a symbolic link; mailpack opens its own files only by their real name"
                .into(),
        };
    }
    if e.kind() == io::ErrorKind::NotFound {
        return Error::NotFound(path.display().to_string());
    }
    Error::io("open", path, e)
}

fn ensure_regular(file: &File, path: &Path) -> Result<()> {
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::Foreign {
            path: path.to_path_buf(),
            detail: "is not a regular file, so not a mailpack archive".into(),
        });
    }
    Ok(())
}

/// Reads at a given offset without moving a shared position: a local file (`pread`), or an
/// archive's off-site copy read by ranges (`offsite::remote`). Whatever reads an archive reads
/// it through this, so the read path is the same for both.
#[allow(clippy::len_without_is_empty)] // a length read by fstat or a manifest; no cheap is_empty
pub trait PositionedRead: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn len(&self) -> io::Result<u64>;
}

impl PositionedRead for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// A reader with its own position over bytes shared by many readers: every read is a
/// positioned read, so all of a command's reads go to the one generation of the archive it
/// opened, even if a compaction renames a new one into its place meanwhile.
pub struct ReadAt {
    bytes: Arc<dyn PositionedRead>,
    pos: u64,
}

impl ReadAt {
    pub fn new(bytes: Arc<dyn PositionedRead>, pos: u64) -> ReadAt {
        ReadAt { bytes, pos }
    }
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.bytes.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ReadAt {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.bytes.len()?.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start or past 2^64",
            )
        })?;
        Ok(self.pos)
    }
}

/// Creates `path` for reading and writing with mode 0600, replacing a file left there: the
/// temporary files of an atomic replace or a rewrite, whose leftovers from a crash are stale. The
/// old name is removed rather than the file truncated, so a hard link or symlink planted at the
/// name leads nowhere: the file it leads to is never written.
pub fn create_private(path: &Path) -> Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", path, e)),
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(NO_FOLLOW)
        .open(path)
        .map_err(|e| Error::io("create", path, e))
}

/// Makes the directory entries under `dir` durable (a created or renamed file survives a crash).
pub fn fsync_dir(dir: &Path, faults: &Faults) -> Result<()> {
    if faults.fires(FaultOn::Sync) {
        return Err(Error::io("fsync", dir, injected()));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file: write a
/// temporary file beside it, fsync, rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], faults: &Faults) -> Result<()> {
    let dir = parent_dir(path);
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = DurableFile::new(create_private(&tmp)?, &tmp, faults.clone());
        file.write_all_at_end(bytes)?;
        file.sync()?;
        rename(&tmp, path, faults)?;
        fsync_dir(&dir, faults)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path` with `bytes` through a temporary file and a rename, without syncing: for
/// records that a crash may lose or leave empty (they are rebuilt or ignored, never trusted),
/// written by every run and so kept off its fsyncs.
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = create_private(&tmp)
        .and_then(|mut f| f.write_all(bytes).map_err(|e| Error::io("write", &tmp, e)))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The whole of one of mailpack's own small files (state, records, keys): never through a
/// symlink, never anything but a regular file, at most `cap` bytes. `Ok(None)` when absent.
pub fn read_own_small(path: &Path, cap: u64) -> Result<Option<Vec<u8>>> {
    let file = match open_own(path) {
        Ok(f) => f,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    read_capped(&file, path, cap).map(Some)
}

/// The rest of one of mailpack's own small files, already open as `file` (at `path`): at most
/// `cap` bytes, or an error naming the file when it holds more.
pub fn read_capped(file: &File, path: &Path, cap: u64) -> Result<Vec<u8>> {
    // Sized from the file's length, so a small file is read in one call, not grown into.
    let hint = file.metadata().map_or(0, |m| m.len()).min(cap) as usize;
    let mut bytes = Vec::with_capacity(hint + 1);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::corrupt(
            path,
            cap,
            format!("larger than the {cap} bytes such a file may hold"),
        ));
    }
    Ok(bytes)
}

/// A private (0700) directory under the system's temporary directory, removed with everything
/// in it when dropped: where a command puts what it fetched or restored only to check it.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Result<ScratchDir> {
        let id: String = random_id()?.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("mailpack-{tag}-{}-{id}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create", &dir, e))?;
        Ok(ScratchDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Renames `from` over `to`, through the fault plan.
pub fn rename(from: &Path, to: &Path, faults: &Faults) -> Result<()> {
    if faults.fires(FaultOn::Rename) {
        return Err(Error::io("rename", from, injected()));
    }
    fs::rename(from, to).map_err(|e| Error::io("rename", from, e))
}

/// Gives the file at `from` the further name `to` (which must not exist), through the fault plan.
pub fn hard_link(from: &Path, to: &Path, faults: &Faults) -> Result<()> {
    if faults.fires(FaultOn::Rename) {
        return Err(Error::io("link", to, injected()));
    }
    fs::hard_link(from, to).map_err(|e| Error::io("link", to, e))
}

/// Removes `path` if it exists, through the fault plan.
pub fn remove_if_present(path: &Path, faults: &Faults) -> Result<()> {
    if faults.fires(FaultOn::Rename) {
        return Err(Error::io("remove", path, injected()));
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// 16 random bytes from the kernel, for archive ids.
pub fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(|e| Error::io("read", "/dev/urandom", e))?;
    Ok(id)
}

/// The stat of the file an entry was copied from, recorded so the next run can tell whether the
/// source changed without opening it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SourceStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl SourceStat {
    pub fn of(meta: &std::fs::Metadata) -> SourceStat {
        use std::os::unix::fs::MetadataExt;
        SourceStat {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_plan_fires_once_on_the_nth_matching_op() {
        let f = Faults::fail_nth(3, FaultOn::Write);
        assert!(!f.fires(FaultOn::Write));
        assert!(!f.fires(FaultOn::Sync));
        assert!(!f.fires(FaultOn::Write));
        assert!(f.fires(FaultOn::Write));
        assert!(!f.fires(FaultOn::Write));
        assert_eq!(f.seen(), 4);
    }
}
