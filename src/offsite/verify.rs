//! `verify --archive-dir s3://…`: every manifest of an owner opened, every object of every
//! retained generation read whole against its size and SHA-256 (and decrypted when an identity
//! is given), objects no manifest names listed, and the current generation's archive checked
//! entry by entry as a local one is.

use std::sync::Arc;

use super::bucket::Bucket;
use super::crypt::Identities;
use super::layout::owner_dir;
use super::manifest::OffsiteKey;
use super::remote::{fetch_whole, manifest_names, open_manifest, prepare_generation, ReadOptions};
use crate::error::Result;
use crate::spool::Owner;
use crate::store::VerifyReport;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BucketProblem {
    pub object: String,
    pub problem: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct OwnerVerified {
    /// The newest manifest that opens: its push number and time.
    pub seq: u64,
    pub time: i64,
    pub manifests: usize,
    pub objects: usize,
    pub object_bytes: u64,
    pub bad: Vec<BucketProblem>,
    /// Objects no manifest names (left by an interrupted push; deleted by a later push).
    pub unreferenced: Vec<String>,
    /// The archive check of the current generation, when its objects were readable.
    #[serde(skip)]
    pub archive: Option<VerifyReport>,
    pub notices: Vec<String>,
}

pub fn verify_owner(
    bucket: &Arc<Bucket>,
    owner: &Owner,
    key: &OffsiteKey,
    identities: Option<Arc<Identities>>,
) -> Result<OwnerVerified> {
    let dir = owner_dir(owner)?;
    let mut out = OwnerVerified::default();
    let names = manifest_names(bucket, &dir)?;
    out.manifests = names.len();
    if names.is_empty() {
        return Err(crate::error::Error::NotFound(format!(
            "an off-site copy at {}",
            bucket.location(&dir)
        )));
    }
    let mut newest = None;
    for (seq, name) in &names {
        match open_manifest(bucket, owner, name, *seq, key) {
            Ok(m) => newest = Some(m),
            Err(e) => out.bad.push(BucketProblem {
                object: bucket.location(name),
                problem: e.to_string(),
            }),
        }
    }
    let Some(manifest) = newest else {
        return Ok(out);
    };
    out.seq = manifest.seq;
    out.time = manifest.time;
    let mut named = std::collections::HashSet::new();
    let mut current_ok = true;
    for g in std::iter::once(&manifest.current).chain(&manifest.retired) {
        for piece in g.pieces() {
            let key = format!("{dir}/{}", piece.key);
            named.insert(key.clone());
            out.objects += 1;
            out.object_bytes += piece.size;
            let encrypted = piece.key.ends_with(super::layout::AGE_SUFFIX);
            let checked = if encrypted && identities.is_none() {
                // Without the identity, size and SHA-256 are still checked.
                fetch_whole(
                    bucket,
                    &dir,
                    std::slice::from_ref(piece),
                    None,
                    &mut std::io::sink(),
                )
                .or_else(|e| match e {
                    crate::error::Error::Usage(_) => check_undecrypted(bucket, &key, piece),
                    e => Err(e),
                })
            } else {
                fetch_whole(
                    bucket,
                    &dir,
                    std::slice::from_ref(piece),
                    identities.as_deref(),
                    &mut std::io::sink(),
                )
            };
            if let Err(e) = checked {
                if g.id == manifest.current.id {
                    current_ok = false;
                }
                out.bad.push(BucketProblem {
                    object: bucket.location(&key),
                    problem: e.to_string(),
                });
            }
        }
    }
    for listed in bucket.list(&format!("{dir}/"))? {
        let is_manifest = listed.key[dir.len()..].starts_with("/m/");
        if !is_manifest && !named.contains(&listed.key) {
            out.unreferenced.push(bucket.location(&listed.key));
        }
    }
    let can_read = !manifest.current.encrypted || identities.is_some();
    if current_ok && can_read {
        let options = ReadOptions {
            key,
            identities,
            generation: None,
        };
        let prepared = prepare_generation(bucket, owner, &manifest.current, &options)?;
        out.archive = Some(crate::store::verify_elsewhere(
            &prepared.paths,
            prepared.handle.clone(),
        )?);
    } else if !can_read {
        out.notices.push(format!(
            "{}: encrypted; objects checked against their SHA-256 only (give --identity to \
             decrypt and check every entry)",
            bucket.location(&dir)
        ));
    }
    Ok(out)
}

/// An encrypted object checked without its identity: size and SHA-256 of the ciphertext.
fn check_undecrypted(bucket: &Bucket, key: &str, piece: &super::manifest::Piece) -> Result<()> {
    let bytes = bucket.get(key, piece.size)?;
    super::remote::check_object(&bytes, piece, &bucket.location(key))
}
