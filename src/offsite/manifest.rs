//! The manifest of one push (formats/offsite.md section 4): which objects hold an owner's
//! archive and index, with their SHA-256, sealed under the off-site key with the object's name
//! as associated data. Encoded and decoded here only.

use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spool::Owner;

const MAGIC: &[u8; 8] = b"MPOFFM01";
const NONCE_LEN: usize = 24;
pub const FORMAT: &str = "mailpack-offsite";
pub const VERSION: u32 = 1;
/// The largest sealed manifest a reader fetches.
pub const MAX_MANIFEST: u64 = 64 << 20;
/// The most objects one generation may list (data and index together).
const MAX_PIECES: usize = 1_000_000;
/// The most retired generations one manifest carries.
const MAX_RETIRED: usize = 10_000;

/// The off-site key: seals manifests. Never sent to the store, never printed.
#[derive(Clone)]
pub struct OffsiteKey([u8; 32]);

impl OffsiteKey {
    /// Reads a key file: 64 hex digits and an optional newline.
    pub fn load(path: &Path) -> Result<OffsiteKey> {
        let bytes = crate::io::read_own_small(path, 4096)?.ok_or_else(|| {
            Error::NotFound(format!(
                "off-site key {} (give --offsite-key FILE, the key the pushes used)",
                path.display()
            ))
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let hex = text.trim_end_matches('\n');
        let bytes = hex.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(Error::config(path, "an off-site key is 64 hex digits"));
        }
        let mut key = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).expect("hex digits are ASCII");
            key[i] = u8::from_str_radix(s, 16).expect("checked hex digits");
        }
        Ok(OffsiteKey(key))
    }

    /// A key of the moment, for a dry run before any key exists.
    pub fn random() -> Result<OffsiteKey> {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&crate::io::random_id()?);
        key[16..].copy_from_slice(&crate::io::random_id()?);
        Ok(OffsiteKey(key))
    }

    /// Reads the key at `path`, creating it (mode 0600, exclusively) when there is none yet.
    /// Returns whether it was created, for the caller to tell the operator to keep a copy.
    pub fn load_or_create(path: &Path) -> Result<(OffsiteKey, bool)> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if path.exists() {
            return Ok((OffsiteKey::load(path)?, false));
        }
        let dir = crate::io::parent_dir(path);
        {
            use std::os::unix::fs::DirBuilderExt;
            // `backup --push` reads its key before the first run creates the archive directory.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::io("create", &dir, e))?;
        }
        let OffsiteKey(key) = OffsiteKey::random()?;
        let text: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        file.write_all(format!("{text}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("write", path, e))?;
        crate::io::fsync_dir(&crate::io::parent_dir(path), &crate::io::Faults::none())?;
        Ok((OffsiteKey(key), true))
    }

    /// A key from its 32 bytes (tests and fuzzing; operators use key files).
    pub fn from_bytes(key: [u8; 32]) -> OffsiteKey {
        OffsiteKey(key)
    }
}

impl std::fmt::Debug for OffsiteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OffsiteKey(..)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub kind: String,
    pub name: String,
}

impl OwnerRecord {
    pub fn of(owner: &Owner) -> OwnerRecord {
        OwnerRecord {
            kind: owner.kind().into(),
            name: owner.name().into(),
        }
    }
}

/// One object of a generation: archive or index bytes `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Relative to the owner's directory.
    pub key: String,
    pub start: u64,
    pub end: u64,
    /// Bytes of the object (of the age file when encrypted).
    pub size: u64,
    pub sha256: String,
    pub lock_until: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub id: String,
    pub archive_id: String,
    pub created: i64,
    pub retired: Option<i64>,
    pub encrypted: bool,
    /// SHA-256 of the sorted recipients, hex; empty when not encrypted.
    pub recipients: String,
    pub archive_len: u64,
    pub index_len: u64,
    pub runs: u64,
    pub tail_sha256: String,
    pub index_sha256: String,
    pub data: Vec<Piece>,
    pub index: Vec<Piece>,
}

impl Generation {
    /// Every object of the generation, data then index.
    pub fn pieces(&self) -> impl Iterator<Item = &Piece> {
        self.data.iter().chain(self.index.iter())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub owner: OwnerRecord,
    pub seq: u64,
    pub push: String,
    pub time: i64,
    pub host: String,
    pub current: Generation,
    pub retired: Vec<Generation>,
}

impl Manifest {
    /// The generation with this id, current or retired.
    pub fn generation(&self, id: &str) -> Option<&Generation> {
        std::iter::once(&self.current)
            .chain(self.retired.iter())
            .find(|g| g.id == id)
    }
}

fn cipher(key: &OffsiteKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new_from_slice(&key.0).expect("a 32-byte key")
}

/// The sealed bytes of `manifest` to be stored as `name` (relative to the target's prefix).
pub fn seal(manifest: &Manifest, name: &str, key: &OffsiteKey) -> Result<Vec<u8>> {
    seal_bytes(
        &serde_json::to_vec(manifest).expect("a manifest serializes"),
        name,
        key,
    )
}

/// The most JSON a manifest may inflate to.
pub const MAX_MANIFEST_JSON: u64 = 256 << 20;

/// The JSON compressed (zlib): a manifest lists every object of its generations, whose names
/// and hashes repeat much of each other, and one is stored with every push.
fn deflate(json: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(json).expect("writing to memory");
    z.finish().expect("writing to memory")
}

fn inflate(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(bytes)
        .take(MAX_MANIFEST_JSON + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("its compressed JSON does not inflate: {e}"))?;
    if out.len() as u64 > MAX_MANIFEST_JSON {
        return Err(format!("its JSON is larger than {MAX_MANIFEST_JSON} bytes"));
    }
    Ok(out)
}

/// Seals any bytes as a manifest would be (what `seal` does after encoding; fuzzing uses it to
/// reach the checks behind the authentication).
pub fn seal_bytes(json: &[u8], name: &str, key: &OffsiteKey) -> Result<Vec<u8>> {
    let compressed = deflate(json);
    let json = &compressed[..];
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..16].copy_from_slice(&crate::io::random_id()?);
    nonce[16..].copy_from_slice(&crate::io::random_id()?[..8]);
    let sealed = cipher(key)
        .encrypt(
            &nonce.into(),
            Payload {
                msg: json,
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| Error::refused("sealing a manifest failed"))?;
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens the manifest stored as `name`, checks it belongs to `owner` with push number `seq`,
/// and that its generations are well formed. `location` names it in errors.
pub fn open(
    bytes: &[u8],
    name: &str,
    location: &str,
    owner: &Owner,
    seq: u64,
    key: &OffsiteKey,
) -> Result<Manifest> {
    let bad = |detail: String| Error::corrupt(location, 0, detail);
    if bytes.len() < MAGIC.len() + NONCE_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("not a mailpack manifest (no MPOFFM01 magic)".into()));
    }
    let nonce: [u8; NONCE_LEN] = bytes[MAGIC.len()..MAGIC.len() + NONCE_LEN]
        .try_into()
        .expect("length checked");
    let json = cipher(key)
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &bytes[MAGIC.len() + NONCE_LEN..],
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| {
            bad(
                "fails authentication: changed, copied from another name, or sealed with \
                 another off-site key"
                    .into(),
            )
        })?;
    let json = inflate(&json).map_err(|e| bad(format!("authentic but unreadable: {e}")))?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| bad(format!("authentic but unreadable: {e}")))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "format {:?} is not {FORMAT:?}",
            manifest.format
        )));
    }
    if manifest.version != VERSION {
        return Err(Error::Unsupported {
            path: location.into(),
            detail: format!("off-site manifest version {}", manifest.version),
        });
    }
    if manifest.owner != OwnerRecord::of(owner) || manifest.seq != seq {
        return Err(bad(format!(
            "says it is push {} of {} {:?}, but is stored as push {seq} of another name",
            manifest.seq, manifest.owner.kind, manifest.owner.name
        )));
    }
    if manifest.retired.len() > MAX_RETIRED {
        return Err(bad(format!(
            "lists {} retired generations, more than {MAX_RETIRED}",
            manifest.retired.len()
        )));
    }
    for g in std::iter::once(&manifest.current).chain(manifest.retired.iter()) {
        check_generation(g).map_err(|d| bad(format!("generation {}: {d}", g.id)))?;
    }
    Ok(manifest)
}

fn check_generation(g: &Generation) -> std::result::Result<(), String> {
    if !super::layout::is_id(&g.id) {
        return Err("its id is not 32 hex digits".into());
    }
    if g.data.len() + g.index.len() > MAX_PIECES {
        return Err(format!("lists more than {MAX_PIECES} objects"));
    }
    for (what, pieces, len) in [
        ("data", &g.data, g.archive_len),
        ("index", &g.index, g.index_len),
    ] {
        let mut at = 0;
        for p in pieces {
            if p.start != at || p.end <= p.start {
                return Err(format!(
                    "its {what} objects do not cover bytes 0..{len} in order (at {at}: {}..{})",
                    p.start, p.end
                ));
            }
            if p.key.contains("..") || p.key.starts_with('/') {
                return Err(format!(
                    "object key {:?} leaves the owner's directory",
                    p.key
                ));
            }
            at = p.end;
        }
        if at != len {
            return Err(format!("its {what} objects end at {at}, not {len}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let piece = |key: &str, start, end| Piece {
            key: key.into(),
            start,
            end,
            size: end - start,
            sha256: "00".repeat(32),
            lock_until: None,
        };
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            owner: OwnerRecord::of(&Owner::User("alice".into())),
            seq: 3,
            push: "ab".repeat(16),
            time: 1,
            host: "h".into(),
            current: Generation {
                id: "cd".repeat(16),
                archive_id: "ef".repeat(16),
                created: 1,
                retired: None,
                encrypted: false,
                recipients: String::new(),
                archive_len: 100,
                index_len: 10,
                runs: 1,
                tail_sha256: String::new(),
                index_sha256: String::new(),
                data: vec![piece("d/a", 0, 60), piece("d/b", 60, 100)],
                index: vec![piece("i/a", 0, 10)],
            },
            retired: Vec::new(),
        }
    }

    #[test]
    fn a_sealed_manifest_opens_only_under_its_name_owner_and_key() {
        let key = OffsiteKey::from_bytes([7; 32]);
        let alice = Owner::User("alice".into());
        let name = "users/alice/m/00000000000000000003-x.mpm";
        let sealed = seal(&sample(), name, &key).unwrap();
        assert_eq!(open(&sealed, name, "l", &alice, 3, &key).unwrap(), sample());
        // Replayed under a newer number, or moved to another owner: refused.
        let other = "users/alice/m/00000000000000000009-x.mpm";
        assert!(open(&sealed, other, "l", &alice, 9, &key).is_err());
        assert!(open(&sealed, name, "l", &Owner::User("bob".into()), 3, &key).is_err());
        assert!(open(
            &sealed,
            name,
            "l",
            &alice,
            3,
            &OffsiteKey::from_bytes([8; 32])
        )
        .is_err());
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x20;
            assert!(
                open(&flipped, name, "l", &alice, 3, &key).is_err(),
                "byte {i}"
            );
        }
        assert!(open(&sealed[..sealed.len() - 1], name, "l", &alice, 3, &key).is_err());
    }

    #[test]
    fn pieces_must_cover_the_archive_in_order() {
        let key = OffsiteKey::from_bytes([7; 32]);
        let alice = Owner::User("alice".into());
        let mut m = sample();
        m.current.data[1].start = 61;
        let sealed = seal(&m, "n", &key).unwrap();
        let e = open(&sealed, "n", "l", &alice, 3, &key).unwrap_err();
        assert!(e.to_string().contains("do not cover"), "{e}");
    }
}
