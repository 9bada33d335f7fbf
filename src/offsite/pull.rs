//! `pull`: local archives and indexes rebuilt from a bucket, byte for byte what was pushed
//! (formats/offsite.md section 8). Each file is written under a temporary name, synced, checked
//! and renamed into place; an archive already at the name is never overwritten.

use std::path::Path;

use super::bucket::Bucket;
use super::crypt::Identities;
use super::layout::owner_dir;
use super::manifest::OffsiteKey;
use super::remote::{fetch_whole, latest_manifest};
use crate::error::{Error, Result};
use crate::io::{create_private, fsync_dir, Faults};
use crate::spool::Owner;
use crate::store::{Archive, ArchivePaths};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct OwnerPulled {
    pub seq: u64,
    pub generation: String,
    pub archive_bytes: u64,
    pub index_bytes: u64,
    pub runs: usize,
}

/// Pulls one owner's current generation into `archive_dir`.
pub fn pull_owner(
    bucket: &Bucket,
    owner: &Owner,
    archive_dir: &Path,
    key: &OffsiteKey,
    identities: Option<&Identities>,
) -> Result<OwnerPulled> {
    let dir = owner_dir(owner)?;
    let (manifest, _) = latest_manifest(bucket, owner, key)?
        .ok_or_else(|| Error::NotFound(format!("an off-site copy at {}", bucket.location(&dir))))?;
    let g = &manifest.current;
    let paths = ArchivePaths::for_owner(archive_dir, owner)?;
    for existing in [&paths.archive, &paths.index] {
        if std::fs::symlink_metadata(existing).is_ok() {
            return Err(Error::refused(format!(
                "{} exists; pull never overwrites a local file (move it away first)",
                existing.display()
            )));
        }
    }
    let target_dir = paths.dir();
    std::fs::create_dir_all(&target_dir).map_err(|e| Error::io("create", &target_dir, e))?;
    let tmp_archive = paths.archive.with_extension("gz.pulling");
    let tmp_index = paths.index.with_extension("idx.pulling");
    let result = (|| {
        for (tmp, pieces) in [(&tmp_archive, &g.data), (&tmp_index, &g.index)] {
            let mut file = std::io::BufWriter::with_capacity(1 << 20, create_private(tmp)?);
            fetch_whole(bucket, &dir, pieces, identities, &mut file)?;
            let file = file
                .into_inner()
                .map_err(|e| Error::io("write", tmp, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io("fsync", tmp, e))?;
        }
        // The pulled pair must open as an archive before it takes the names.
        let check = ArchivePaths {
            archive: tmp_archive.clone(),
            index: tmp_index.clone(),
            lock: paths.lock.clone(),
            user: paths.user.clone(),
        };
        let archive = Archive::open(&check, &mut Vec::new())?;
        if archive.committed_len() != g.archive_len {
            return Err(Error::corrupt(
                &tmp_archive,
                archive.committed_len(),
                format!(
                    "pulled copy commits {} bytes, the manifest says {}",
                    archive.committed_len(),
                    g.archive_len
                ),
            ));
        }
        let runs = archive.runs().len();
        drop(archive);
        // Index first: an archive without its index is still whole (the index is rebuilt),
        // never the other way round.
        rename_new(&tmp_index, &paths.index)?;
        if let Err(e) = rename_new(&tmp_archive, &paths.archive) {
            // The index is ours, made a moment ago: it must not stay behind without its archive.
            let _ = std::fs::remove_file(&paths.index);
            return Err(e);
        }
        fsync_dir(&target_dir, &Faults::none())?;
        Ok(runs)
    })();
    let runs = match result {
        Ok(runs) => runs,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_archive);
            let _ = std::fs::remove_file(&tmp_index);
            return Err(e);
        }
    };
    Ok(OwnerPulled {
        seq: manifest.seq,
        generation: g.id.clone(),
        archive_bytes: g.archive_len,
        index_bytes: g.index_len,
        runs,
    })
}

/// Renames `from` to `to` only if nothing is at `to` (a hard link, then the removal of the
/// temporary name), so a file that appeared meanwhile is never replaced.
fn rename_new(from: &Path, to: &Path) -> Result<()> {
    std::fs::hard_link(from, to).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::refused(format!(
            "{} appeared while pulling; left as it is",
            to.display()
        )),
        _ => Error::io("link", to, e),
    })?;
    std::fs::remove_file(from).map_err(|e| Error::io("remove", from, e))
}

/// Every owner with a directory in the bucket.
pub fn list_owners(bucket: &Bucket) -> Result<Vec<Owner>> {
    let mut owners = Vec::new();
    for top in ["users", "shared"] {
        for dir in bucket.list_dirs(top)? {
            if let Some(owner) = super::layout::owner_of_dir(&dir) {
                owners.push(owner);
            }
        }
    }
    if !bucket.list("server/m/")?.is_empty() {
        owners.push(Owner::Server);
    }
    Ok(owners)
}
