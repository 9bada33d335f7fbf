//! Files placed into a Cyrus server's directories: created beside their final name under a
//! fresh temporary name, synced, given their mtime and the owner of the server's files, and
//! renamed into place.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The uid and gid that own the server's files (those of its configdirectory): everything the
/// restore creates gets them, so Cyrus can use it, and Cyrus's tools run as them.
#[derive(Clone, Copy)]
pub struct FileOwner {
    pub uid: u32,
    pub gid: u32,
}

impl FileOwner {
    pub fn of(path: &Path) -> Result<FileOwner> {
        let m = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
        Ok(FileOwner {
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    pub fn apply(&self, path: &Path) -> Result<()> {
        if unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| Error::io("chown", path, e))
    }
}

/// Creates the directories of `path` that are missing, owned like the server's. The missing
/// chain is built under a temporary name beside its first missing directory and renamed into
/// place once every level has its owner: a restore killed in between leaves no directory that
/// Cyrus cannot enter (a rerun would find it there and never fix its owner), only a stray
/// `<name>.mailpack-<random>` beside it.
pub fn create_dirs(path: &Path, owner: FileOwner) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.exists() {
        missing.push(p.to_path_buf());
        p = match p.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    let Some(top) = missing.last() else {
        return Ok(());
    };
    let id = crate::io::random_id()?;
    let suffix: String = id[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut name = top.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".mailpack-{suffix}"));
    let tmp_top = top.with_file_name(name);
    let built = (|| {
        for dir in missing.iter().rev() {
            use std::os::unix::fs::DirBuilderExt;
            let below = dir
                .strip_prefix(top)
                .expect("every missing directory is below the top");
            let tmp = tmp_top.join(below);
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .map_err(|e| Error::io("create", &tmp, e))?;
            owner.apply(&tmp)?;
        }
        Ok(())
    })();
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&tmp_top);
        return Err(e);
    }
    match fs::rename(&tmp_top, top) {
        Ok(()) => Ok(()),
        // Made meanwhile by someone else: theirs stands; what is below it is made again.
        Err(_) if top.is_dir() => {
            let _ = fs::remove_dir_all(&tmp_top);
            create_dirs(path, owner)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp_top);
            Err(Error::io("rename", &tmp_top, e))
        }
    }
}

/// Whether `place` makes the file durable before renaming it into place.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync, then rename: the file replaces one Cyrus may read at any moment.
    Now,
    /// Rename only: nothing refers to the file until the caller has synced the whole file
    /// system (`sync_fs`), which costs one flush instead of one per message.
    Later,
}

/// Writes a file beside its final name and renames it there, owned like the server's files,
/// with `mtime` (Cyrus reports a mailbox's index mtime as its `lastupdate`). The temporary name
/// is fresh and created exclusively, never through a link planted at a predictable name.
pub fn place(
    path: &Path,
    bytes: &[u8],
    mtime_ns: Option<i64>,
    owner: FileOwner,
    durability: Durability,
) -> Result<()> {
    let dir = crate::io::parent_dir(path);
    create_dirs(&dir, owner)?;
    let (tmp, mut file) = create_temp_beside(path)?;
    let written = (|| {
        file.write_all(bytes)
            .and_then(|_| match durability {
                Durability::Now => file.sync_data(),
                Durability::Later => Ok(()),
            })
            .map_err(|e| Error::io("write", &tmp, e))?;
        if let Some(ns) = mtime_ns {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
            file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
                .map_err(|e| Error::io("set the time of", &tmp, e))?;
        }
        owner.apply(&tmp)?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// A new file `<name>.mailpack-<random>` beside `path`, created with O_EXCL and O_NOFOLLOW.
fn create_temp_beside(path: &Path) -> Result<(PathBuf, fs::File)> {
    // A handful of tries: a clash with 64 random bits means someone is guessing, not chance.
    for _ in 0..4 {
        let id = crate::io::random_id()?;
        let suffix: String = id[..8].iter().map(|b| format!("{b:02x}")).collect();
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".mailpack-{suffix}"));
        let tmp = path.with_file_name(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create", &tmp, e)),
        }
    }
    Err(Error::io(
        "create a temporary name beside",
        path,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "every fresh name tried exists",
        ),
    ))
}

/// Flushes the file system holding `path` (`syncfs`), making every file placed there with
/// `Durability::Later` durable at once.
pub fn sync_fs(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(Error::io("sync", path, std::io::Error::last_os_error()));
    }
    Ok(())
}
