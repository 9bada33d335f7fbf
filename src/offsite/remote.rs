//! Reading an owner's archive from a bucket (formats/offsite.md section 8): the newest manifest
//! that opens, the index objects fetched whole and checked against their SHA-256, and the
//! archive's bytes read by range through a block cache, so restoring one message fetches the
//! blocks of its member and not the archive. The archive is then the same `store::Archive` a
//! local file gives, with every member CRC and entry SHA-1 checked as it is read.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::bucket::Bucket;
use super::crypt::{hex, Identities};
use super::layout::{manifest_dir, manifest_seq, owner_dir};
use super::manifest::{self, Generation, Manifest, OffsiteKey, Piece, MAX_MANIFEST};
use crate::error::{Error, Result};
use crate::io::PositionedRead;
use crate::spool::Owner;
use crate::store::{Archive, ArchiveHandle, ArchivePaths};

/// Plaintext block of a plain object read at a time.
const PLAIN_BLOCK: u64 = 256 << 10;
/// One age chunk of plaintext.
const AGE_BLOCK: u64 = 64 << 10;
const AGE_CHUNK_CIPHERTEXT: u64 = (64 << 10) + 16;
/// Read-ahead grows while reads are sequential, up to this many bytes per request.
const MAX_READ_AHEAD: u64 = 8 << 20;
/// Blocks kept in memory per open archive.
const CACHE_BYTES: u64 = 32 << 20;

/// The newest manifest of an owner, and its name relative to the target's prefix. `None` when
/// the owner has none (never pushed).
pub fn latest_manifest(
    bucket: &Bucket,
    owner: &Owner,
    key: &OffsiteKey,
) -> Result<Option<(Manifest, String)>> {
    let dir = owner_dir(owner)?;
    let mut seqs = manifest_names(bucket, &dir)?;
    let Some((seq, name)) = seqs.pop() else {
        return Ok(None);
    };
    Ok(Some((open_manifest(bucket, owner, &name, seq, key)?, name)))
}

/// The manifests of an owner's directory `dir`, as (seq, name relative to the target's
/// prefix), oldest first. Names that are not manifests are left out.
pub fn manifest_names(bucket: &Bucket, dir: &str) -> Result<Vec<(u64, String)>> {
    let mut seqs: Vec<(u64, String)> = bucket
        .list(&manifest_dir(dir))?
        .into_iter()
        .filter_map(|l| {
            let rel = l.key.strip_prefix(dir)?.strip_prefix('/')?;
            manifest_seq(rel).map(|seq| (seq, l.key.clone()))
        })
        .collect();
    seqs.sort();
    Ok(seqs)
}

pub fn open_manifest(
    bucket: &Bucket,
    owner: &Owner,
    name: &str,
    seq: u64,
    key: &OffsiteKey,
) -> Result<Manifest> {
    let bytes = bucket.get(name, MAX_MANIFEST)?;
    manifest::open(&bytes, name, &bucket.location(name), owner, seq, key)
}

/// How to read a bucket.
pub struct ReadOptions<'a> {
    pub key: &'a OffsiteKey,
    pub identities: Option<Arc<Identities>>,
    /// A retired generation to read instead of the current one.
    pub generation: Option<&'a str>,
}

/// An owner's archive opened from the bucket, with the manifest it was read through.
pub struct RemoteArchive {
    pub archive: Archive,
    pub manifest: Manifest,
    pub manifest_name: String,
    pub generation: String,
}

/// Opens an owner's archive from its newest manifest.
pub fn open_archive(
    bucket: &Arc<Bucket>,
    owner: &Owner,
    options: &ReadOptions,
    notices: &mut Vec<String>,
) -> Result<RemoteArchive> {
    let dir = owner_dir(owner)?;
    let (manifest, manifest_name) = latest_manifest(bucket, owner, options.key)?
        .ok_or_else(|| Error::NotFound(format!("an off-site copy at {}", bucket.location(&dir))))?;
    let generation = match options.generation {
        None => manifest.current.clone(),
        Some(id) => manifest.generation(id).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "generation {id} in {} (retained: {})",
                bucket.location(&manifest_name),
                std::iter::once(&manifest.current)
                    .chain(&manifest.retired)
                    .map(|g| g.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
    };
    notices.push(format!(
        "read {} (push {} of {})",
        bucket.location(&manifest_name),
        manifest.seq,
        crate::time::format_utc(manifest.time)
    ));
    let archive = open_generation(bucket, owner, &generation, options, notices)?;
    Ok(RemoteArchive {
        archive,
        generation: generation.id.clone(),
        manifest,
        manifest_name,
    })
}

/// Opens one generation: fetches and checks its index objects, then reads the archive by range.
pub fn open_generation(
    bucket: &Arc<Bucket>,
    owner: &Owner,
    generation: &Generation,
    options: &ReadOptions,
    notices: &mut Vec<String>,
) -> Result<Archive> {
    let opened = prepare_generation(bucket, owner, generation, options)?;
    Archive::open_elsewhere(&opened.paths, opened.handle.clone(), notices)
}

/// A generation ready to be read: its checked index in a private file, its archive by range.
pub struct PreparedGeneration {
    pub paths: ArchivePaths,
    pub handle: ArchiveHandle,
    _scratch: crate::io::ScratchDir,
}

pub fn prepare_generation(
    bucket: &Arc<Bucket>,
    owner: &Owner,
    generation: &Generation,
    options: &ReadOptions,
) -> Result<PreparedGeneration> {
    let dir = owner_dir(owner)?;
    if generation.encrypted && options.identities.is_none() {
        return Err(Error::usage(format!(
            "the off-site copy at {} is encrypted: give --identity FILE",
            bucket.location(&dir)
        )));
    }
    let mut index = Vec::new();
    fetch_whole(
        bucket,
        &dir,
        &generation.index,
        options.identities.as_deref(),
        &mut index,
    )?;
    if hex(&Sha256::digest(&index)) != generation.index_sha256 {
        return Err(Error::corrupt(
            bucket.location(&dir),
            0,
            "the index objects together do not hash to what the manifest says",
        ));
    }
    let scratch = crate::io::ScratchDir::new("offsite")?;
    let index_path = scratch.path().join("index.idx");
    std::fs::write(&index_path, &index).map_err(|e| Error::io("write", &index_path, e))?;
    let display = PathBuf::from(bucket.location(&dir));
    let paths = ArchivePaths {
        archive: display.clone(),
        index: index_path,
        lock: scratch.path().join("lock"),
        user: match owner {
            Owner::User(u) => Some(u.clone()),
            _ => None,
        },
    };
    let bytes = RangedArchive::new(bucket.clone(), &dir, generation, options.identities.clone());
    let handle = ArchiveHandle::from_remote(display, Arc::new(bytes));
    Ok(PreparedGeneration {
        paths,
        handle,
        _scratch: scratch,
    })
}

/// Writes the plaintext of `pieces` in order to `sink`, each object read whole (in large
/// ranges) and checked against its size and SHA-256; an encrypted one is decrypted on the way,
/// age authenticating every chunk. Bytes reach `sink` before the object's hash is complete:
/// callers write to a private place that becomes visible only after this returns `Ok`.
pub fn fetch_whole(
    bucket: &Bucket,
    dir: &str,
    pieces: &[Piece],
    identities: Option<&Identities>,
    sink: &mut dyn Write,
) -> Result<()> {
    for piece in pieces {
        let key = format!("{dir}/{}", piece.key);
        let location = bucket.location(&key);
        let hashed = Arc::new(Mutex::new(Hashed::default()));
        let mut object = RangedObject::new(bucket, key.clone(), piece.size);
        object.fetch_hint.store(WHOLE_FETCH, Ordering::Relaxed);
        object.hashed = Some(hashed.clone());
        let plain_len = piece.end - piece.start;
        let written = if piece.key.ends_with(super::layout::AGE_SUFFIX) {
            let ids = identities.ok_or_else(|| {
                Error::usage(format!("{location} is encrypted: give --identity FILE"))
            })?;
            let reader = ids.decrypt(object, &location)?;
            copy_checked(reader.take(plain_len + 1), sink, &location)?
        } else {
            copy_checked((&mut object).take(plain_len + 1), sink, &location)?
        };
        let state = hashed.lock().unwrap_or_else(|p| p.into_inner());
        if state.upto != piece.size {
            return Err(Error::corrupt(
                &location,
                state.upto,
                format!(
                    "holds {} bytes or more, the manifest says {} (truncated, extended or \
                     replaced)",
                    state.upto, piece.size
                ),
            ));
        }
        if hex(&state.hasher.clone().finalize()) != piece.sha256 {
            return Err(Error::corrupt(
                &location,
                0,
                "does not hash to the SHA-256 the manifest says (changed or replaced)",
            ));
        }
        if written != plain_len {
            return Err(Error::corrupt(
                &location,
                0,
                format!("holds {written} bytes of archive, the manifest says {plain_len}"),
            ));
        }
    }
    Ok(())
}

/// What one large ranged fetch asks for when an object is read whole.
const WHOLE_FETCH: u64 = 16 << 20;

fn copy_checked(mut from: impl Read, to: &mut dyn Write, location: &str) -> Result<u64> {
    super::copy_all(&mut from, to).map_err(|e| match e {
        super::CopyError::Read(e, at) => match e.downcast::<Error>() {
            Ok(inner) => inner,
            Err(e) => Error::corrupt(location, at, format!("reading it: {e}")),
        },
        super::CopyError::Write(e) => Error::io("write", "the copy being fetched", e),
    })
}

/// The SHA-256 of an object's bytes fetched in order from its start.
#[derive(Default)]
struct Hashed {
    hasher: Sha256,
    upto: u64,
}

/// Checks an object's bytes against its manifest entry: size and SHA-256.
pub fn check_object(bytes: &[u8], piece: &Piece, location: &str) -> Result<()> {
    if bytes.len() as u64 != piece.size {
        return Err(Error::corrupt(
            location,
            bytes.len().min(piece.size as usize) as u64,
            format!(
                "holds {} bytes, the manifest says {} (truncated or replaced)",
                bytes.len(),
                piece.size
            ),
        ));
    }
    if hex(&Sha256::digest(bytes)) != piece.sha256 {
        return Err(Error::corrupt(
            location,
            0,
            "does not hash to the SHA-256 the manifest says (changed or replaced)",
        ));
    }
    Ok(())
}

/// An archive's bytes read by range from a generation's data objects.
struct RangedArchive {
    bucket: Arc<Bucket>,
    dir: String,
    pieces: Vec<Piece>,
    len: u64,
    identities: Option<Arc<Identities>>,
    cache: Mutex<BlockCache>,
}

/// age's seekable reader over one encrypted object, and the read-ahead hint of the object
/// beneath it.
type DecryptingReader = (
    age::stream::StreamReader<RangedObject<Arc<Bucket>>>,
    Arc<AtomicU64>,
);

#[derive(Default)]
struct BlockCache {
    blocks: HashMap<(usize, u64), Arc<Vec<u8>>>,
    order: VecDeque<(usize, u64)>,
    bytes: u64,
    /// The block after the last one fetched, and the read-ahead in use.
    next: Option<(usize, u64)>,
    ahead: u64,
    /// One decrypting reader per encrypted object, kept so its header is read once.
    readers: HashMap<usize, DecryptingReader>,
}

impl RangedArchive {
    fn new(
        bucket: Arc<Bucket>,
        dir: &str,
        generation: &Generation,
        identities: Option<Arc<Identities>>,
    ) -> RangedArchive {
        RangedArchive {
            bucket,
            dir: dir.to_string(),
            pieces: generation.data.clone(),
            len: generation.archive_len,
            identities: identities.filter(|_| generation.encrypted),
            cache: Mutex::new(BlockCache::default()),
        }
    }

    fn block_len(&self, piece: usize) -> u64 {
        if self.pieces[piece].key.ends_with(super::layout::AGE_SUFFIX) {
            AGE_BLOCK
        } else {
            PLAIN_BLOCK
        }
    }

    /// Block `block` of object `piece`, fetched with read-ahead when reads are sequential.
    fn block(&self, piece: usize, block: u64) -> io::Result<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = cache.blocks.get(&(piece, block)) {
            return Ok(b.clone());
        }
        let block_len = self.block_len(piece);
        cache.ahead = if cache.next == Some((piece, block)) {
            (cache.ahead * 2).clamp(block_len, MAX_READ_AHEAD)
        } else {
            block_len
        };
        let p = &self.pieces[piece];
        let plain_len = p.end - p.start;
        let from = block * block_len;
        let to = (from + cache.ahead.max(block_len)).min(plain_len);
        let data = self.fetch(&mut cache, piece, from..to)?;
        let count = (to - from).div_ceil(block_len);
        let mut first = None;
        for i in 0..count {
            let lo = (i * block_len) as usize;
            let hi = ((i + 1) * block_len).min(to - from) as usize;
            let b = Arc::new(data[lo..hi].to_vec());
            if i == 0 {
                first = Some(b.clone());
            }
            cache.insert((piece, block + i), b);
        }
        cache.next = Some((piece, block + count));
        Ok(first.expect("at least one block"))
    }

    fn fetch(
        &self,
        cache: &mut BlockCache,
        piece: usize,
        range: std::ops::Range<u64>,
    ) -> io::Result<Vec<u8>> {
        let p = &self.pieces[piece];
        let key = format!("{}/{}", self.dir, p.key);
        let Some(ids) = &self.identities else {
            return self
                .bucket
                .get_range(&key, range)
                .map(|b| b.to_vec())
                .map_err(io::Error::other);
        };
        let (reader, hint) = match cache.readers.entry(piece) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let object = RangedObject::new(self.bucket.clone(), key.clone(), p.size);
                let hint = object.fetch_hint.clone();
                let reader = ids
                    .decrypt(object, &self.bucket.location(&key))
                    .map_err(io::Error::other)?;
                e.insert((reader, hint))
            }
        };
        let chunks = (range.end - range.start).div_ceil(AGE_BLOCK);
        hint.store(chunks * AGE_CHUNK_CIPHERTEXT, Ordering::Relaxed);
        reader.seek(SeekFrom::Start(range.start))?;
        let mut out = vec![0u8; (range.end - range.start) as usize];
        reader.read_exact(&mut out).map_err(|e| {
            io::Error::other(Error::corrupt(
                self.bucket.location(&key),
                range.start,
                format!("age payload: {e}"),
            ))
        })?;
        Ok(out)
    }
}

impl BlockCache {
    fn insert(&mut self, at: (usize, u64), block: Arc<Vec<u8>>) {
        self.bytes += block.len() as u64;
        if self.blocks.insert(at, block).is_none() {
            self.order.push_back(at);
        }
        while self.bytes > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.blocks.remove(&old) {
                self.bytes -= b.len() as u64;
            }
        }
    }
}

impl PositionedRead for RangedArchive {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let piece = self.pieces.partition_point(|p| p.end <= offset);
        let p = &self.pieces[piece];
        let inside = offset - p.start;
        let block_len = self.block_len(piece);
        let block = self.block(piece, inside / block_len)?;
        let at = (inside % block_len) as usize;
        let n = buf.len().min(block.len().saturating_sub(at));
        buf[..n].copy_from_slice(&block[at..at + n]);
        Ok(n)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// One object read by ranges as a `Read + Seek` stream, for age's seekable decrypting reader
/// and for whole reads. Each read outside the current window fetches `fetch_hint` bytes from
/// there; with `hashed`, windows fetched in order from the start are hashed as they come.
struct RangedObject<B> {
    bucket: B,
    key: String,
    size: u64,
    pos: u64,
    window_start: u64,
    window: Vec<u8>,
    fetch_hint: Arc<AtomicU64>,
    hashed: Option<Arc<Mutex<Hashed>>>,
}

impl<B: std::ops::Deref<Target = Bucket>> RangedObject<B> {
    fn new(bucket: B, key: String, size: u64) -> RangedObject<B> {
        RangedObject {
            bucket,
            key,
            size,
            pos: 0,
            window_start: 0,
            window: Vec::new(),
            // The header: one stanza per recipient, under 4 KiB for a few recipients.
            fetch_hint: Arc::new(AtomicU64::new(4096)),
            hashed: None,
        }
    }
}

impl<B: std::ops::Deref<Target = Bucket>> Read for RangedObject<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let in_window = self.pos >= self.window_start
            && self.pos < self.window_start + self.window.len() as u64;
        if !in_window {
            let hint = self.fetch_hint.load(Ordering::Relaxed);
            let end = (self.pos + hint.max(buf.len() as u64)).min(self.size);
            self.window = self
                .bucket
                .get_range(&self.key, self.pos..end)
                .map_err(io::Error::other)?
                .to_vec();
            self.window_start = self.pos;
            if let Some(hashed) = &self.hashed {
                let mut h = hashed.lock().unwrap_or_else(|p| p.into_inner());
                if h.upto == self.window_start {
                    h.hasher.update(&self.window);
                    h.upto += self.window.len() as u64;
                }
            }
        }
        let at = (self.pos - self.window_start) as usize;
        let n = buf.len().min(self.window.len() - at);
        buf[..n].copy_from_slice(&self.window[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<B> Seek for RangedObject<B> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek"))?;
        Ok(self.pos)
    }
}
