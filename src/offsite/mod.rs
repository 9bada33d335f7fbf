//! Off-site copies of archives in S3-compatible object storage (formats/offsite.md): `push`
//! uploads the committed bytes a bucket lacks as new immutable objects and a sealed manifest;
//! `pull` rebuilds local archives from them; the read-only commands read an archive from the
//! bucket by range. Sits beside `store` (it reads archives through it) and below `commands`;
//! its async S3 client stays inside `bucket.rs`.

mod bucket;
mod crypt;
mod layout;
pub mod manifest;
mod pull;
mod push;
mod remote;
mod verify;

pub use bucket::{Bucket, BucketUrl, Retention, Traffic};
pub use crypt::{Identities, Recipients};
pub use layout::{new_id, owner_dir};
pub use manifest::{Manifest, OffsiteKey};
pub use pull::{list_owners, pull_owner, OwnerPulled};
pub use push::{push_owner, push_owner_counted, OwnerPushed, PushSettings};
pub use remote::{latest_manifest, open_archive, ReadOptions, RemoteArchive};
pub use verify::{verify_owner, BucketProblem, OwnerVerified};

/// The directory below an archive directory that holds push state, one per target.
pub const STATE_DIR: &str = "offsite-state";
/// The off-site key's default file name in the archive directory.
pub const KEY_FILE: &str = "offsite.key";

/// `<archive-dir>/offsite-state/<first 16 hex digits of SHA-256 of the target>`.
pub fn state_dir(archive_dir: &std::path::Path, target: &BucketUrl) -> std::path::PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(target.to_string().as_bytes());
    archive_dir.join(STATE_DIR).join(crypt::hex(&digest[..8]))
}

/// Where a copy between a reader and a writer stopped: reading (after `u64` bytes), or writing.
enum CopyError {
    Read(std::io::Error, u64),
    Write(std::io::Error),
}

/// Copies `from` to its end into `to` through one 1 MiB buffer; the bytes copied.
fn copy_all(
    from: &mut dyn std::io::Read,
    to: &mut dyn std::io::Write,
) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e, total)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}
