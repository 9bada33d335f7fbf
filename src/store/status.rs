//! Owner status files and legal holds beside the archives (formats/status.md): what the last
//! backup and drill of each owner did, for `status`, and the hold marker compaction obeys.
//! Encoded and decoded here only.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{write_atomic, Faults};

const VERSION: u32 = 1;
/// The largest status file read.
const MAX_STATUS: u64 = 1 << 20;
/// The longest failure reason kept.
const MAX_REASON: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OwnerRecord {
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Success {
    pub time: i64,
    pub run: u64,
    pub seconds: f64,
    pub bytes_read: u64,
    pub messages_added: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub time: i64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Drill {
    pub time: i64,
    pub seed: u64,
    pub ok: bool,
    pub differences: u64,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OwnerStatus {
    pub version: u32,
    pub owner: OwnerRecord,
    #[serde(default)]
    pub last_success: Option<Success>,
    #[serde(default)]
    pub last_failure: Option<Failure>,
    #[serde(default)]
    pub last_drill: Option<Drill>,
    /// Whether the latest attempt (success or failure, whichever was recorded last) succeeded:
    /// two attempts can fall in the same second.
    #[serde(default)]
    pub last_attempt_ok: Option<bool>,
}

impl OwnerStatus {
    /// The failure of the latest attempt, if it failed.
    pub fn failing(&self) -> Option<&Failure> {
        match self.last_attempt_ok {
            Some(false) => self.last_failure.as_ref(),
            _ => None,
        }
    }
}

/// `<stem>.status` beside `<stem>.tar.gz`: like the index and the lock, it goes wherever the
/// archive is, so no owner shares one with another whatever their names.
pub fn status_path(archive: &Path) -> PathBuf {
    beside(archive, ".status")
}

/// `<stem>.heal` beside `<stem>.tar.gz`: the owner's next backup reads everything again.
pub fn heal_path(archive: &Path) -> PathBuf {
    beside(archive, ".heal")
}

/// Asks the owner's next backup for a full pass (`verify --against-spool` found something
/// missing).
pub fn request_heal(archive: &Path) -> Result<()> {
    write_atomic(&heal_path(archive), b"", &Faults::none())
}

/// Whether a full pass was asked for.
pub fn heal_requested(archive: &Path) -> bool {
    std::fs::symlink_metadata(heal_path(archive)).is_ok()
}

/// A full pass that began at `started` committed: a request made before then is done; a newer
/// one waits for the next run.
pub fn heal_done_if_older(archive: &Path, started: std::time::SystemTime) -> Result<()> {
    let path = heal_path(archive);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.modified().is_ok_and(|t| t <= started) => {
            crate::io::remove_if_present(&path, &Faults::none())
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", &path, e)),
    }
}

/// `<stem>.hold` beside `<stem>.tar.gz`.
pub fn hold_path(archive: &Path) -> PathBuf {
    beside(archive, ".hold")
}

/// `<stem><suffix>` beside `<stem>.tar.gz`: where each of an archive's own side files goes.
pub fn beside(archive: &Path, suffix: &str) -> PathBuf {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(super::naming::ARCHIVE_SUFFIX)
        .unwrap_or(&name);
    archive.with_file_name(format!("{stem}{suffix}"))
}

/// The status recorded for an archive; `Ok(None)` when there is none yet, an error naming the
/// file when it is unreadable.
pub fn read(archive: &Path) -> Result<Option<OwnerStatus>> {
    use fs2::FileExt;
    let path = status_path(archive);
    let file = match crate::io::open_own(&path) {
        Ok(f) => f,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    // Shared with other readers, not with `update`, which rewrites the file in place.
    FileExt::lock_shared(&file).map_err(|e| Error::io("lock", &path, e))?;
    let bytes = crate::io::read_capped(&file, &path, MAX_STATUS)?;
    decode(&path, &bytes).map(Some)
}

/// The first JSON value of the file: an update rewrites the file in place and only then cuts
/// it to its new length, so a reader in between (or a crash) may find the rest of a longer
/// old record after it.
fn decode(path: &Path, bytes: &[u8]) -> Result<OwnerStatus> {
    let status: OwnerStatus = serde_json::Deserializer::from_slice(bytes)
        .into_iter()
        .next()
        .unwrap_or_else(|| serde_json::from_slice(b""))
        .map_err(|e| Error::corrupt(path, e.column() as u64, format!("not a status file: {e}")))?;
    if status.version != VERSION {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            detail: format!("status file version {}", status.version),
        });
    }
    Ok(status)
}

/// Reads, changes and writes back an archive's status, under an exclusive `flock` of the
/// status file so a backup and a drill of the same owner do not interleave. An unreadable old
/// file is replaced: the record is for operators, the archive is the truth.
///
/// Written in place, without fsync: it is written after every owner's run, and replacing it
/// through a rename made ext4 write it out at once (`auto_da_alloc`), which on a server of many
/// owners cost more than the rest of a no-change run. A crash may leave it torn; `status` then
/// falls back on the archive (formats/status.md).
pub fn update(
    archive: &Path,
    owner: OwnerRecord,
    change: impl FnOnce(&mut OwnerStatus),
) -> Result<()> {
    use fs2::FileExt;
    use std::io::{Seek, SeekFrom, Write};
    let path = status_path(archive);
    let mut file = crate::io::open_own_or_create(&path)?;
    file.lock_exclusive()
        .map_err(|e| Error::io("lock", &path, e))?;
    // An old file too large to read is as unreadable as a torn one, and is cut below.
    let old = crate::io::read_capped(&file, &path, MAX_STATUS);
    let old_len = old.as_ref().map_or(u64::MAX, |b| b.len() as u64);
    let mut status = old.and_then(|b| decode(&path, &b)).unwrap_or_default();
    status.version = VERSION;
    status.owner = owner;
    change(&mut status);
    if let Some(f) = &mut status.last_failure {
        if f.reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !f.reason.is_char_boundary(cut) {
                cut -= 1;
            }
            f.reason.truncate(cut);
        }
    }
    let bytes = serde_json::to_vec_pretty(&status).expect("a status serializes");
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&bytes))
        .map_err(|e| Error::io("write", &path, e))?;
    if (bytes.len() as u64) < old_len {
        file.set_len(bytes.len() as u64)
            .map_err(|e| Error::io("truncate", &path, e))?;
    }
    Ok(())
}

/// The hold on an archive: `Some(text)` while held (the file's first line, possibly empty).
pub fn hold(archive: &Path) -> Result<Option<String>> {
    let path = hold_path(archive);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {
            // Its presence alone holds; the text is only shown.
            let text = crate::io::read_own_small(&path, 4096)
                .ok()
                .flatten()
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            Ok(Some(text.lines().next().unwrap_or_default().to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", &path, e)),
    }
}

/// Places a hold (`reason` after the time) or, with `release`, removes it. Returns whether the
/// archive was held before.
pub fn set_hold(archive: &Path, release: bool, now: i64, reason: &str) -> Result<bool> {
    let path = hold_path(archive);
    let was = hold(archive)?.is_some();
    if release {
        crate::io::remove_if_present(&path, &Faults::none())?;
        crate::io::fsync_dir(&crate::io::parent_dir(&path), &Faults::none())?;
    } else if !was {
        let line = format!("{now} {}\n", reason.replace(['\n', '\r'], " "));
        write_atomic(&path, line.as_bytes(), &Faults::none())?;
    }
    Ok(was)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_never_share_a_status_or_hold_file() {
        let dir = Path::new("/a");
        let user = super::super::ArchivePaths::for_user(dir, "shared-x").unwrap();
        let tree = super::super::ArchivePaths::for_shared(dir, "x").unwrap();
        let also = super::super::ArchivePaths::for_user(dir, "x").unwrap();
        let paths: Vec<PathBuf> = [&user, &tree, &also]
            .iter()
            .map(|p| status_path(&p.archive))
            .collect();
        assert_eq!(paths[0], Path::new("/a/shared-x.status"));
        assert_eq!(paths[1], Path::new("/a/shared/x.status"));
        assert_eq!(paths[2], Path::new("/a/x.status"));
        assert_eq!(hold_path(&tree.archive), Path::new("/a/shared/x.hold"));
    }

    #[test]
    fn a_failure_counts_until_the_next_success() {
        let mut s = OwnerStatus {
            last_failure: Some(Failure {
                time: 10,
                reason: "x".into(),
            }),
            ..OwnerStatus::default()
        };
        s.last_attempt_ok = Some(false);
        assert!(s.failing().is_some());
        s.last_attempt_ok = Some(true);
        s.last_success = Some(Success {
            time: 11,
            run: 1,
            seconds: 0.0,
            bytes_read: 0,
            messages_added: 0,
        });
        assert!(s.failing().is_none());
    }
}
