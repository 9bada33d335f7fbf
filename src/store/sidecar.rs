//! The sidecar index `<user>.idx` (formats/archive.md section 5): a log of one checksummed block
//! per committed run. It is only a cache of what a scan of the archive yields, so every way it
//! can be wrong (missing, torn, rotten, stale) ends in a rebuild, never in lost data.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use byteorder::{ByteOrder, LittleEndian as LE, ReadBytesExt};

use crate::archive::{ArchiveId, CommittedRun, EntryKind, EntryRecord, Placement, MAX_NAME};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::io::SourceStat;
use crate::io::{create_private, fsync_dir, write_atomic, DurableFile, Faults};

pub const MAGIC: &[u8; 8] = b"MAILPKIX";
pub const VERSION: u32 = 2;
/// Bytes of a block body before its entries.
const FRAME_LEN: usize = 52;
pub const HEADER_LEN: usize = 32;
pub const MAX_BLOCK: u32 = 256 << 20;

#[derive(Clone)]
pub enum IndexRead {
    Missing,
    /// Unusable as a whole; the reason is for the operator.
    Invalid(String),
    Valid {
        archive_id: ArchiveId,
        runs: Vec<CommittedRun>,
        /// Bytes of the file that hold good blocks; anything after is a torn append.
        good_len: u64,
        file_len: u64,
    },
    /// An index trusted only for how much was committed, not for what: `reindex` reads every
    /// entry again, but an archive that ends before `end` is still damage, not a tail.
    Floor {
        archive_id: ArchiveId,
        end: u64,
    },
}

pub fn encode_header(archive_id: &ArchiveId) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&archive_id.0);
    out
}

pub fn encode_block(run: &CommittedRun) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + run.entries.len() * 96);
    encode_frame(run, run.entries.len() as u64, &mut body);
    for e in &run.entries {
        encode_entry(e, &mut body);
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out
}

/// Writes one block entry by entry, in pieces of about 64 KiB, when its frame, entry count and
/// body length are known before its entries (a rewrite's copy, whose writer reported them):
/// memory holds one piece, whatever the run's size. What it writes is `encode_block`'s block
/// exactly, or `finish` fails.
pub struct BlockStream {
    piece: Vec<u8>,
    crc: crc32fast::Hasher,
    /// Bytes at the front of `piece` the CRC does not cover (the length field).
    uncovered: usize,
    body_len: u64,
    written: u64,
    count: u64,
    entries: u64,
}

const PIECE: usize = 64 << 10;

impl BlockStream {
    pub fn begin(frame: &CommittedRun, count: u64, body_len: u64) -> Result<BlockStream> {
        let len = u32::try_from(body_len)
            .ok()
            .filter(|&n| n <= MAX_BLOCK)
            .ok_or_else(|| {
                Error::refused(format!("a run's index block would be {body_len} bytes"))
            })?;
        let mut piece = Vec::with_capacity(PIECE + 512);
        piece.extend_from_slice(&len.to_le_bytes());
        encode_frame(frame, count, &mut piece);
        Ok(BlockStream {
            written: FRAME_LEN as u64,
            piece,
            crc: crc32fast::Hasher::new(),
            uncovered: 4,
            body_len,
            count,
            entries: 0,
        })
    }

    pub fn entry(
        &mut self,
        e: &EntryRecord,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let before = self.piece.len();
        encode_entry(e, &mut self.piece);
        self.written += (self.piece.len() - before) as u64;
        self.entries += 1;
        if self.piece.len() >= PIECE {
            self.flush(sink)?;
        }
        Ok(())
    }

    /// `entries` entry records already encoded (by `RunSpill`), appended as they are.
    fn encoded(
        &mut self,
        bytes: &[u8],
        entries: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        self.piece.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
        self.entries += entries;
        if self.piece.len() >= PIECE {
            self.flush(sink)?;
        }
        Ok(())
    }

    fn flush(&mut self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.crc.update(&self.piece[self.uncovered..]);
        self.uncovered = 0;
        sink(&self.piece)?;
        self.piece.clear();
        Ok(())
    }

    /// Ends the block with its CRC; fails if the entries were not the count and length
    /// promised to `begin`.
    pub fn finish(mut self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if self.written != self.body_len || self.entries != self.count {
            return Err(Error::refused(format!(
                "an index block promised {} entries in {} bytes and got {} in {}",
                self.count, self.body_len, self.entries, self.written
            )));
        }
        self.crc.update(&self.piece[self.uncovered..]);
        let crc = self.crc.clone().finalize();
        self.piece.extend_from_slice(&crc.to_le_bytes());
        sink(&self.piece)
    }
}

/// A block's frame: the run's fields and its entry count.
fn encode_frame(run: &CommittedRun, count: u64, body: &mut Vec<u8>) {
    body.extend_from_slice(&run.run.to_le_bytes());
    body.extend_from_slice(&run.start.to_le_bytes());
    body.extend_from_slice(&run.marker_offset.to_le_bytes());
    body.extend_from_slice(&run.end.to_le_bytes());
    body.extend_from_slice(&run.time.to_le_bytes());
    body.extend_from_slice(&run.compacted.unwrap_or(0).to_le_bytes());
    body.extend_from_slice(&(count as u32).to_le_bytes());
}

/// A digest of what a run's index block says (its frame and every entry with its placement),
/// built entry by entry: a rewrite compares each run of its copy with what it wrote through
/// this, holding 28 bytes a run and no run's entries (formats/compaction.md section 4).
pub struct BlockDigest {
    entries: sha1::Sha1,
    count: u64,
    /// Bytes of the entries' records.
    entries_len: u64,
    scratch: Vec<u8>,
}

impl Default for BlockDigest {
    fn default() -> Self {
        BlockDigest {
            entries: sha1::Sha1::default(),
            count: 0,
            entries_len: 0,
            scratch: Vec::with_capacity(256),
        }
    }
}

impl BlockDigest {
    pub fn add(&mut self, e: &EntryRecord) {
        use sha1::Digest;
        self.scratch.clear();
        encode_entry(e, &mut self.scratch);
        self.entries.update(&self.scratch);
        self.count += 1;
        self.entries_len += self.scratch.len() as u64;
    }

    /// Entries added so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The length of the block body these entries make (frame included).
    pub fn body_len(&self) -> u64 {
        FRAME_LEN as u64 + self.entries_len
    }

    /// The digest of `run`'s frame with the entries added (`run.entries` is not looked at).
    pub fn finish(self, run: &CommittedRun) -> [u8; 20] {
        use sha1::Digest;
        let mut frame = Vec::with_capacity(FRAME_LEN);
        encode_frame(run, self.count, &mut frame);
        let mut whole = sha1::Sha1::default();
        whole.update(&frame);
        whole.update(self.entries.finalize());
        whole.finalize().into()
    }

    /// The digest of a run held whole.
    #[cfg(test)]
    pub fn of(run: &CommittedRun) -> [u8; 20] {
        let mut digest = BlockDigest::default();
        for e in &run.entries {
            digest.add(e);
        }
        digest.finish(run)
    }
}

fn encode_entry(e: &EntryRecord, body: &mut Vec<u8>) {
    body.push(match e.kind {
        EntryKind::File => 1,
        EntryKind::Symlink => 2,
    });
    body.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
    body.extend_from_slice(e.name.as_bytes());
    body.extend_from_slice(&(e.target.len() as u16).to_le_bytes());
    body.extend_from_slice(e.target.as_bytes());
    body.extend_from_slice(&e.placement.member.to_le_bytes());
    body.extend_from_slice(&e.placement.header_at.to_le_bytes());
    body.extend_from_slice(&e.placement.data_at.to_le_bytes());
    body.extend_from_slice(&e.size.to_le_bytes());
    body.extend_from_slice(&e.sha1.0);
    match &e.stat {
        None => body.push(0),
        Some(s) => {
            body.push(1);
            body.extend_from_slice(&s.dev.to_le_bytes());
            body.extend_from_slice(&s.ino.to_le_bytes());
            body.extend_from_slice(&s.size.to_le_bytes());
            body.extend_from_slice(&s.mtime_ns.to_le_bytes());
            body.extend_from_slice(&s.ctime_ns.to_le_bytes());
        }
    }
}

fn decode_block(body: &[u8]) -> io::Result<CommittedRun> {
    let mut r = body;
    let run = r.read_u64::<LE>()?;
    let start = r.read_u64::<LE>()?;
    let marker_offset = r.read_u64::<LE>()?;
    let end = r.read_u64::<LE>()?;
    let time = r.read_i64::<LE>()?;
    let compacted = r.read_i64::<LE>()?;
    let count = r.read_u32::<LE>()?;
    // Each record is at least 50 bytes: a count larger than the body allows is damage.
    if count as usize > body.len() / 50 {
        return Err(bad("entry count larger than the block"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        entries.push(decode_entry(&mut r)?);
    }
    if !r.is_empty() {
        return Err(bad("trailing bytes in block"));
    }
    Ok(CommittedRun {
        run,
        start,
        marker_offset,
        end,
        time,
        compacted: (compacted != 0).then_some(compacted),
        entries,
    })
}

fn decode_entry(r: &mut &[u8]) -> io::Result<EntryRecord> {
    let kind = match r.read_u8()? {
        1 => EntryKind::File,
        2 => EntryKind::Symlink,
        _ => return Err(bad("unknown entry kind")),
    };
    let name = read_str(r)?;
    let target = read_str(r)?;
    let member = r.read_u64::<LE>()?;
    let header_at = r.read_u32::<LE>()?;
    let data_at = r.read_u64::<LE>()?;
    let size = r.read_u64::<LE>()?;
    let mut sha1 = [0u8; 20];
    r.read_exact(&mut sha1)?;
    let stat = match r.read_u8()? {
        0 => None,
        1 => Some(SourceStat {
            dev: r.read_u64::<LE>()?,
            ino: r.read_u64::<LE>()?,
            size: r.read_u64::<LE>()?,
            mtime_ns: r.read_i64::<LE>()?,
            ctime_ns: r.read_i64::<LE>()?,
        }),
        _ => return Err(bad("bad stat flag")),
    };
    Ok(EntryRecord {
        name,
        kind,
        target,
        placement: Placement {
            member,
            header_at,
            data_at,
        },
        size,
        sha1: Guid(sha1),
        stat: stat.map(Box::new),
    })
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn read_str(r: &mut &[u8]) -> io::Result<String> {
    let len = r.read_u16::<LE>()? as usize;
    if len > MAX_NAME || len > r.len() {
        return Err(bad("name length out of range"));
    }
    let (s, rest) = r.split_at(len);
    *r = rest;
    String::from_utf8(s.to_vec()).map_err(|_| bad("name is not UTF-8"))
}

fn rest_is_zero(reader: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().all(|&b| b == 0) => {}
            _ => return Ok(false),
        }
    }
}

/// Reads and checks the whole index.
pub fn read(path: &Path) -> Result<IndexRead> {
    let mut file = match crate::io::open_own(path) {
        Ok(f) => f,
        Err(Error::NotFound(_)) => return Ok(IndexRead::Missing),
        // A symlink or FIFO at the index's name is not read (nor followed); the index is
        // rebuilt from the archive.
        Err(Error::Foreign { detail, .. }) => return Ok(IndexRead::Invalid(detail)),
        Err(e) => return Err(e),
    };
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let mut header = [0u8; HEADER_LEN];
    if file.read_exact(&mut header).is_err() {
        return Ok(IndexRead::Invalid("index header is short".into()));
    }
    if &header[..8] != MAGIC {
        return Ok(IndexRead::Invalid("index magic is wrong".into()));
    }
    let version = LE::read_u32(&header[8..12]);
    if version != VERSION {
        return Ok(IndexRead::Invalid(format!(
            "index version {version} is not {VERSION}"
        )));
    }
    let archive_id = ArchiveId(header[16..32].try_into().expect("16 bytes"));
    let mut runs: Vec<CommittedRun> = Vec::new();
    let mut pos = HEADER_LEN as u64;
    let mut reader = io::BufReader::new(file);
    loop {
        let body_len = match reader.read_u32::<LE>() {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::io("read", path, e)),
        };
        // No block is empty (its frame alone is FRAME_LEN bytes): a zero length is where an
        // unsynced append's data did not reach the disk before a crash, and only zeros follow.
        if body_len == 0 {
            if rest_is_zero(&mut reader).map_err(|e| Error::io("read", path, e))? {
                break;
            }
            return Ok(IndexRead::Invalid(format!(
                "index block at byte {pos} is empty"
            )));
        }
        let is_last_possible = |needed: u64| pos + needed >= file_len;
        if body_len > MAX_BLOCK || pos + 8 + body_len as u64 > file_len {
            if is_last_possible(8 + body_len as u64) {
                break; // torn append
            }
            return Ok(IndexRead::Invalid(format!(
                "index block at byte {pos} is too long"
            )));
        }
        let mut body = vec![0u8; body_len as usize];
        let mut crc = [0u8; 4];
        reader
            .read_exact(&mut body)
            .and_then(|_| reader.read_exact(&mut crc))
            .map_err(|e| Error::io("read", path, e))?;
        let block_end = pos + 8 + body_len as u64;
        if crc32fast::hash(&body) != LE::read_u32(&crc) {
            // The last block is torn; or unsynced appends were cut short by a crash, leaving
            // zeros where their data did not reach the disk.
            if block_end == file_len
                || rest_is_zero(&mut reader).map_err(|e| Error::io("read", path, e))?
            {
                break;
            }
            return Ok(IndexRead::Invalid(format!(
                "index block at byte {pos} fails its CRC"
            )));
        }
        let run = match decode_block(&body) {
            Ok(run) => run,
            Err(e) => {
                return Ok(IndexRead::Invalid(format!(
                    "index block at byte {pos}: {e}"
                )))
            }
        };
        if let Some(prev) = runs.last() {
            if Some(run.run) != prev.run.checked_add(1) || run.start != prev.end {
                return Ok(IndexRead::Invalid(format!(
                    "index block at byte {pos} does not follow run {}",
                    prev.run
                )));
            }
        }
        runs.push(run);
        pos = block_end;
    }
    Ok(IndexRead::Valid {
        archive_id,
        runs,
        good_len: pos,
        file_len,
    })
}

/// What `find_latest` saw: the newest committed version of a name, and the last run's frame so
/// the caller can check the index is current before trusting the answer.
pub struct Lookup {
    pub archive_id: ArchiveId,
    pub found: Option<(u64, EntryRecord)>,
    pub last: Option<CommittedRun>,
}

/// Finds the latest version of `name` by streaming through the index in constant memory: the
/// cost is one sequential read of the index file, with no per-entry allocation. A hit is trusted
/// only after its block's CRC checks out. `None` when the index is missing or not fully valid
/// (the caller then falls back to a full open).
pub fn find_latest(path: &Path, name: &str) -> Result<Option<Lookup>> {
    let mut found = None;
    let mut hit = None;
    let frames = stream_blocks(path, &mut |frame, rec| {
        if let Some(frame) = frame {
            if let Some(entry) = hit.take() {
                found = Some((frame.run, entry));
            }
            return true;
        }
        let name_len = LE::read_u16(&rec[1..3]) as usize;
        if &rec[3..3 + name_len] == name.as_bytes() {
            match decode_entry(&mut &rec[..]) {
                Ok(e) => hit = Some(e),
                Err(_) => return false,
            }
        }
        true
    })?;
    Ok(frames.map(|f| Lookup {
        archive_id: f.archive_id,
        found,
        last: f.runs.last().cloned(),
    }))
}

/// Where one run's block lies in the index file, as a streamed read found it.
#[derive(Clone, Copy, Debug)]
pub struct BlockAt {
    /// Offset of the block's length field.
    pub offset: u64,
    pub body_len: u32,
    pub count: u32,
}

/// An index read without its entries: every block's frame and where it lies. Each block was
/// read through in full (every record checked to decode, the CRC checked), so entries can be
/// streamed from it again later (`IndexFile::stream_entries`) instead of being held in memory.
pub struct Frames {
    pub archive_id: ArchiveId,
    /// The runs, with no entries.
    pub runs: Vec<CommittedRun>,
    pub blocks: Vec<BlockAt>,
    /// Length of the file: every byte of it is a good block.
    pub len: u64,
    /// The file read, to stream entries from: the same generation as the frames.
    pub file: IndexFile,
}

/// The index file `read_frames` read, to read its blocks again: a small one (at most
/// `HELD_MAX` bytes, what most owners' indexes are) from the bytes read and checked then, a
/// larger one from the open file, a window at a time.
pub struct IndexFile {
    file: std::sync::Arc<File>,
    held: Option<Vec<u8>>,
}

/// The largest index kept in memory as read: a no-change run of a small owner then reads its
/// index with one call, not one per block per pass.
const HELD_MAX: u64 = 64 << 10;

/// Reads the whole index, keeping only frames. `None` unless every byte of the file is a good
/// block of consecutive runs (missing, torn, damaged or trailing bytes: the caller opens the
/// archive the full way, which sorts them out).
pub fn read_frames(path: &Path) -> Result<Option<Frames>> {
    let mut ok = true;
    let frames = stream_blocks(path, &mut |frame, rec| {
        if frame.is_none() {
            ok = decode_entry(&mut &rec[..]).is_ok();
        }
        ok
    })?;
    Ok(frames.filter(|_| ok))
}

/// Streams a file's blocks: `visit` gets each entry record's bytes (`None` frame), then, once
/// the block's CRC checks out, its frame; `false` from `visit` stops with `None`.
fn stream_blocks(
    path: &Path,
    visit: &mut dyn FnMut(Option<&CommittedRun>, &[u8]) -> bool,
) -> Result<Option<Frames>> {
    let mut file = match crate::io::open_own(path) {
        Ok(f) => f,
        Err(Error::NotFound(_) | Error::Foreign { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata().map_or(u64::MAX, |m| m.len());
    let read = |e| Error::io("read", path, e);
    let (found, held) = if len <= HELD_MAX {
        let mut bytes = Vec::with_capacity(len as usize + 1);
        (&mut file)
            .take(HELD_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > HELD_MAX {
            // Grew since the stat: read it as a large one.
            file.seek(SeekFrom::Start(0)).map_err(read)?;
            (
                parse_blocks(io::BufReader::new(&file), LOOKUP_CHUNK, visit),
                None,
            )
        } else {
            (parse_blocks(&bytes[..], bytes.len(), visit), Some(bytes))
        }
    } else {
        // The reads of lengths and CRCs between blocks come out of the buffer too.
        let window = window_for(len);
        (
            parse_blocks(io::BufReader::with_capacity(window, &file), window, visit),
            None,
        )
    };
    // Blocks end where the file does, or it is not a good index: a short read of the next
    // length field (1 to 3 stray bytes) ends the walk as the end of the file does.
    let file_len = match &held {
        Some(bytes) => bytes.len() as u64,
        None => file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len(),
    };
    Ok(found
        .map_err(read)?
        .filter(|(_, _, _, parsed)| *parsed == file_len)
        .map(|(archive_id, runs, blocks, len)| Frames {
            archive_id,
            runs,
            blocks,
            len,
            file: IndexFile {
                file: std::sync::Arc::new(file),
                held,
            },
        }))
}

type ParsedIndex = (ArchiveId, Vec<CommittedRun>, Vec<BlockAt>, u64);

fn parse_blocks<R: Read>(
    mut reader: R,
    window: usize,
    visit: &mut dyn FnMut(Option<&CommittedRun>, &[u8]) -> bool,
) -> io::Result<Option<ParsedIndex>> {
    let mut header = [0u8; HEADER_LEN];
    if reader.read_exact(&mut header).is_err()
        || &header[..8] != MAGIC
        || LE::read_u32(&header[8..12]) != VERSION
    {
        return Ok(None);
    }
    let archive_id = ArchiveId(header[16..32].try_into().expect("16 bytes"));
    let mut runs: Vec<CommittedRun> = Vec::new();
    let mut blocks = Vec::new();
    let mut file_len = HEADER_LEN as u64;
    let mut chunks = Chunks::new(reader, window_for(window as u64));
    while let Some(len) = chunks.raw(4)? {
        let body_len = LE::read_u32(&len);
        if body_len > MAX_BLOCK {
            return Ok(None);
        }
        let mut on_record = |rec: &[u8]| visit(None, rec);
        let Some((frame, count)) = scan_block(&mut chunks, body_len, &mut on_record)? else {
            // Torn, damaged or trailing bytes: let the full open sort it out.
            return Ok(None);
        };
        if let Some(prev) = runs.last() {
            if Some(frame.run) != prev.run.checked_add(1) || frame.start != prev.end {
                return Ok(None);
            }
        }
        if !visit(Some(&frame), &[]) {
            return Ok(None);
        }
        blocks.push(BlockAt {
            offset: file_len,
            body_len,
            count,
        });
        file_len += 8 + body_len as u64;
        runs.push(frame);
    }
    Ok(Some((archive_id, runs, blocks, file_len)))
}

impl IndexFile {
    /// A cursor over the entries of one block `read_frames` found, checked again as
    /// `stream_entries` checks them.
    pub fn cursor<'a>(&'a self, path: &'a Path, block: &BlockAt) -> Result<BlockCursor<'a>> {
        let window = window_for(block.body_len as u64 + 8);
        let reader: Box<dyn Read + 'a> = match &self.held {
            Some(bytes) => Box::new(bytes.get(block.offset as usize..).unwrap_or_default()),
            // At explicit offsets: cursors and passes share the file, never its position.
            None => Box::new(io::BufReader::with_capacity(
                window,
                crate::io::ReadAt::new(self.file.clone(), block.offset),
            )),
        };
        let mut cursor = BlockCursor {
            path,
            block: *block,
            chunks: Chunks::new(reader, window),
            left: 0,
            done: false,
        };
        let read = |e| Error::io("read", path, e);
        let started = match cursor.chunks.raw(4).map_err(read)? {
            Some(len) if LE::read_u32(&len) == block.body_len => {
                start_block(&mut cursor.chunks, block.body_len).map_err(read)?
            }
            _ => None,
        };
        match started {
            Some((_, count)) if count == block.count => cursor.left = count,
            _ => return Err(cursor.damaged("changed since it was read")),
        }
        Ok(cursor)
    }

    /// Streams the entries of one block `read_frames` found, in order, into `visit`, checking
    /// every record and the block's CRC again (a file read again may have rotted since):
    /// memory holds one entry and a window of the file, whatever the run's size. An entry
    /// handed over before a failed check is already out, so a caller acts on what it
    /// collected only after `Ok`.
    pub fn stream_entries(
        &self,
        path: &Path,
        block: &BlockAt,
        visit: &mut dyn FnMut(EntryRecord) -> Result<()>,
    ) -> Result<()> {
        let mut cursor = self.cursor(path, block)?;
        while let Some(entry) = cursor.next_entry()? {
            visit(entry)?;
        }
        Ok(())
    }
}

const LOOKUP_CHUNK: usize = 256 << 10;

/// The window for reading `len` bytes of index: all of them when that is less than
/// `LOOKUP_CHUNK`, but never less than one record and a frame.
fn window_for(len: u64) -> usize {
    (len.min(LOOKUP_CHUNK as u64) as usize).max(MAX_RECORD + FRAME_LEN)
}
/// The longest entry record: both names at their maximum, plus the stat.
const MAX_RECORD: usize = 1 + 2 + MAX_NAME + 2 + MAX_NAME + 48 + 1 + 40;

/// A window over the index file. Bytes of the current block go through the CRC as they are
/// loaded into the window, so each chunk is checksummed once.
struct Chunks<R: Read> {
    file: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the current block body not yet loaded into the window.
    block_left: u64,
    crc: crc32fast::Hasher,
}

impl<R: Read> Chunks<R> {
    fn new(file: R, window: usize) -> Chunks<R> {
        Chunks {
            file,
            buf: vec![0; window],
            start: 0,
            end: 0,
            block_left: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Makes at least `want` bytes of the current block available, if the block has them.
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        if self.end - self.start >= want {
            return Ok(true);
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end - self.start < want && self.block_left > 0 {
            let room = (self.buf.len() - self.end).min(self.block_left as usize);
            let n = self.file.read(&mut self.buf[self.end..self.end + room])?;
            if n == 0 {
                return Ok(false);
            }
            self.crc.update(&self.buf[self.end..self.end + n]);
            self.end += n;
            self.block_left -= n as u64;
        }
        Ok(self.end - self.start >= want)
    }

    /// The next entry record of the current block: where it lies in `buf` (until the next
    /// fill), the window moved past it. `None` when the block holds no whole record there.
    fn next_record(&mut self) -> io::Result<Option<std::ops::Range<usize>>> {
        let window = MAX_RECORD.min((self.end - self.start) + self.block_left as usize);
        if !self.fill(window)? {
            return Ok(None);
        }
        let Some(len) = record_len(&self.buf[self.start..self.end]) else {
            return Ok(None);
        };
        self.start += len;
        Ok(Some(self.start - len..self.start))
    }

    /// After a block's last record: whether the block ends there and its CRC matches.
    fn end_block(&mut self) -> io::Result<bool> {
        if self.start != self.end || self.block_left != 0 {
            return Ok(false);
        }
        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        Ok(matches!(self.raw(4)?, Some(stored) if LE::read_u32(&stored) == crc))
    }

    /// `n` bytes outside any block body (lengths and CRCs), `None` at a clean end of file.
    fn raw(&mut self, n: usize) -> io::Result<Option<Vec<u8>>> {
        debug_assert_eq!(self.end, self.start, "block fully consumed");
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            let k = self.file.read(&mut out[got..])?;
            if k == 0 {
                return Ok(None);
            }
            got += k;
        }
        Ok(Some(out))
    }
}

/// Reads one block body of `body_len` bytes and its CRC, handing each entry record's bytes to
/// `visit`: the frame (without entries) and the entry count. `Ok(None)` when the block is torn
/// or damaged, or `visit` said stop; the records handed over are trustworthy only after `Some`.
fn scan_block<R: Read>(
    c: &mut Chunks<R>,
    body_len: u32,
    visit: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<Option<(CommittedRun, u32)>> {
    let Some((frame, count)) = start_block(c, body_len)? else {
        return Ok(None);
    };
    for _ in 0..count {
        let Some(rec) = c.next_record()? else {
            return Ok(None);
        };
        if !visit(&c.buf[rec]) {
            return Ok(None);
        }
    }
    Ok(c.end_block()?.then_some((frame, count)))
}

/// Starts reading a block body of `body_len` bytes: its frame (without entries) and entry
/// count, or `None` when the body is too short to hold them.
fn start_block<R: Read>(
    c: &mut Chunks<R>,
    body_len: u32,
) -> io::Result<Option<(CommittedRun, u32)>> {
    c.start = 0;
    c.end = 0;
    c.block_left = body_len as u64;
    c.crc = crc32fast::Hasher::new();
    if !c.fill(FRAME_LEN)? {
        return Ok(None);
    }
    let mut f = &c.buf[c.start..c.start + FRAME_LEN];
    let frame = CommittedRun {
        run: f.read_u64::<LE>()?,
        start: f.read_u64::<LE>()?,
        marker_offset: f.read_u64::<LE>()?,
        end: f.read_u64::<LE>()?,
        time: f.read_i64::<LE>()?,
        compacted: match f.read_i64::<LE>()? {
            0 => None,
            t => Some(t),
        },
        entries: Vec::new(),
    };
    let count = f.read_u32::<LE>()?;
    c.start += FRAME_LEN;
    Ok(Some((frame, count)))
}

/// The entries of one block, pulled one at a time (`IndexFile::cursor`): what `verify`
/// compares with the entries its scan of the archive hands over, each as it comes.
pub struct BlockCursor<'a> {
    path: &'a Path,
    block: BlockAt,
    chunks: Chunks<Box<dyn Read + 'a>>,
    /// Entries not yet handed out.
    left: u32,
    done: bool,
}

impl BlockCursor<'_> {
    fn damaged(&self, detail: &str) -> Error {
        Error::corrupt(
            self.path,
            self.block.offset,
            format!("index block {detail}; `mailpack reindex` rebuilds it from the archive"),
        )
    }

    /// The next entry, `None` after the last, once the block's CRC has checked out. An error
    /// when the block no longer reads as it did when its frames were read.
    pub fn next_entry(&mut self) -> Result<Option<EntryRecord>> {
        if self.done {
            return Ok(None);
        }
        let read = |e| Error::io("read", self.path, e);
        if self.left == 0 {
            self.done = true;
            return match self.chunks.end_block().map_err(read)? {
                true => Ok(None),
                false => Err(self.damaged("fails its check (CRC, length or entry count)")),
            };
        }
        let decoded = self
            .chunks
            .next_record()
            .map_err(read)?
            .map(|rec| decode_entry(&mut &self.chunks.buf[rec]));
        match decoded {
            Some(Ok(entry)) => {
                self.left -= 1;
                Ok(Some(entry))
            }
            Some(Err(e)) => {
                self.done = true;
                Err(self.damaged(&format!("holds a bad entry ({e})")))
            }
            None => {
                self.done = true;
                Err(self.damaged("changed since it was read"))
            }
        }
    }
}

/// Length of the entry record at the start of `rec`, if all of it is there.
fn record_len(rec: &[u8]) -> Option<usize> {
    let name_len = LE::read_u16(rec.get(1..3)?) as usize;
    let t = 3 + name_len;
    let target_len = LE::read_u16(rec.get(t..t + 2)?) as usize;
    let stat_flag = t + 2 + target_len + 48;
    let len = stat_flag + 1 + if *rec.get(stat_flag)? == 1 { 40 } else { 0 };
    (name_len <= MAX_NAME && target_len <= MAX_NAME && len <= rec.len()).then_some(len)
}

/// Replaces the index with one holding `runs` (after a rebuild).
pub fn write_full(
    path: &Path,
    archive_id: &ArchiveId,
    runs: &[CommittedRun],
    faults: &Faults,
) -> Result<()> {
    let mut bytes = encode_header(archive_id);
    for run in runs {
        bytes.extend_from_slice(&encode_block(run));
    }
    write_atomic(path, &bytes, faults)
}

/// A run's entries, encoded as its index block holds them, gathered as a writer places them
/// (`ArchiveWriter::fold_placed_entries`): in memory up to a limit (1 MiB, some ten thousand
/// entries), then in an unlinked file beside the index, so a run of a million entries costs a
/// file rather than its entries in memory (issue 19, flat memory). `append_spilled` writes the
/// block from it: the same bytes `encode_block` makes of the run.
pub struct RunSpill {
    path: std::path::PathBuf,
    limit: usize,
    mem: Vec<u8>,
    file: Option<File>,
    spilled: u64,
    count: u64,
    /// The first write that failed: the block cannot be written from this spill.
    error: Option<String>,
}

impl RunSpill {
    /// A spill for the index at `index`; its file, when needed, is `<index>.spill`, removed as
    /// soon as it is open.
    pub fn new(index: &Path) -> RunSpill {
        RunSpill::with_limit(index, 1 << 20)
    }

    pub fn with_limit(index: &Path, limit: usize) -> RunSpill {
        let mut name = index.as_os_str().to_owned();
        name.push(".spill");
        RunSpill {
            path: name.into(),
            limit,
            mem: Vec::new(),
            file: None,
            spilled: 0,
            count: 0,
            error: None,
        }
    }

    pub fn add(&mut self, e: &EntryRecord) {
        encode_entry(e, &mut self.mem);
        self.count += 1;
        if self.mem.len() >= self.limit && self.error.is_none() {
            if let Err(e) = self.spill() {
                self.error = Some(format!("{}: {e}", self.path.display()));
            }
        }
    }

    fn spill(&mut self) -> std::result::Result<(), String> {
        use std::io::Write;
        if self.file.is_none() {
            let file = create_private(&self.path).map_err(|e| e.to_string())?;
            // Unlinked at once: nothing is left behind by a crash after this point.
            std::fs::remove_file(&self.path).map_err(|e| e.to_string())?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("just opened");
        file.write_all(&self.mem).map_err(|e| e.to_string())?;
        self.spilled += self.mem.len() as u64;
        self.mem.clear();
        Ok(())
    }

    /// Entries added since the last `clear`.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Forgets the run (after its block was written, or not).
    pub fn clear(&mut self) {
        self.mem = Vec::new();
        self.file = None;
        self.spilled = 0;
        self.count = 0;
        self.error = None;
    }

    /// The run's block, handed to `sink` (in one piece when nothing was spilled to the file).
    fn write_block(
        &mut self,
        frame: &CommittedRun,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        if let Some(e) = &self.error {
            return Err(Error::refused(format!(
                "the run's index entries could not be kept aside: {e}"
            )));
        }
        let body_len = FRAME_LEN as u64 + self.spilled + self.mem.len() as u64;
        let mut block = BlockStream::begin(frame, self.count, body_len)?;
        let Some(file) = self.file.as_mut() else {
            // Nothing went to the file: the block is written in one piece, as `append` does.
            let mut whole = Vec::with_capacity(body_len as usize + 8);
            let mut gather = |p: &[u8]| {
                whole.extend_from_slice(p);
                Ok(())
            };
            block.encoded(&self.mem, self.count, &mut gather)?;
            block.finish(&mut gather)?;
            return sink(&whole);
        };
        let read = |e: io::Error| Error::io("read", &self.path, e);
        file.seek(SeekFrom::Start(0)).map_err(read)?;
        let mut left = self.spilled;
        let mut piece = vec![0u8; PIECE];
        while left > 0 {
            let n = (left as usize).min(PIECE);
            file.read_exact(&mut piece[..n]).map_err(read)?;
            block.encoded(&piece[..n], 0, sink)?;
            left -= n as u64;
        }
        block.encoded(&self.mem, self.count, sink)?;
        block.finish(sink)
    }
}

/// As `append`, the block made from `spill` (its entries) and `frame` (the run, without
/// entries); the spill is cleared either way.
pub fn append_spilled(
    path: &Path,
    archive_id: &ArchiveId,
    good_len: u64,
    frame: &CommittedRun,
    spill: &mut RunSpill,
    faults: &Faults,
) -> Result<u64> {
    let written = append_with(path, archive_id, good_len, faults, &mut |sink| {
        spill.write_block(frame, sink)
    });
    spill.clear();
    written
}

/// Appends one run's block, cutting off a torn block first, and fsyncs. `good_len` is the length
/// of the index's valid part; 0 means the index does not exist yet.
pub fn append(
    path: &Path,
    archive_id: &ArchiveId,
    good_len: u64,
    run: &CommittedRun,
    faults: &Faults,
) -> Result<u64> {
    append_with(path, archive_id, good_len, faults, &mut |sink| {
        sink(&encode_block(run))
    })
}

/// Where a block is handed, a piece at a time.
type PieceSink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

/// The block `block` hands over, in pieces, to the end of the index (see `append`).
fn append_with(
    path: &Path,
    archive_id: &ArchiveId,
    good_len: u64,
    faults: &Faults,
    block: &mut dyn FnMut(&mut PieceSink) -> Result<()>,
) -> Result<u64> {
    let created = good_len == 0;
    let file = if created {
        create_private(path)?
    } else {
        crate::io::open_own_writable(path)?
    };
    let mut file = DurableFile::new(file, path, faults.clone());
    // The header and a block handed over in one piece go out in one write. A piece is held
    // back until the next arrives, so the last goes out with whatever precedes it.
    let mut held: Vec<u8> = Vec::new();
    if created {
        held.extend_from_slice(&encode_header(archive_id));
    } else {
        file.truncate(good_len)?;
    }
    file.seek(SeekFrom::Start(if created { 0 } else { good_len }))
        .map_err(|e| Error::io("seek", path, e))?;
    let mut written = if created { 0 } else { good_len };
    let mut pieces = 0u64;
    block(&mut |piece| {
        if pieces > 0 {
            file.write_all_at_end(&held)?;
            written += held.len() as u64;
            held.clear();
        }
        held.extend_from_slice(piece);
        pieces += 1;
        Ok(())
    })?;
    file.write_all_at_end(&held)?;
    written += held.len() as u64;
    // No fsync for an appended block (formats/archive.md section 7, step 6): the archive was
    // synced before it, so the index is never ahead of the archive, and a block a crash loses
    // or tears is rebuilt from the archive's tail on the next open. It was the second of the
    // two syncs of every run, most of the cost of a no-change run of many owners.
    if created {
        file.sync()?;
        fsync_dir(&crate::io::parent_dir(path), faults)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_run(run: u64, start: u64) -> CommittedRun {
        CommittedRun {
            run,
            start,
            marker_offset: start + 100,
            end: start + 200,
            time: 1_700_000_000,
            compacted: (run == 2).then_some(1_700_000_100),
            entries: vec![
                EntryRecord {
                    name: "folders/u1/cyrus.index".into(),
                    kind: EntryKind::File,
                    target: String::new(),
                    placement: Placement {
                        member: start,
                        header_at: 0,
                        data_at: 1536,
                    },
                    size: 42,
                    sha1: Guid::of(b"x"),
                    stat: Some(Box::new(SourceStat {
                        dev: 1,
                        ino: 2,
                        size: 42,
                        mtime_ns: 3,
                        ctime_ns: -4,
                    })),
                },
                EntryRecord {
                    name: "imap/INBOX".into(),
                    kind: EntryKind::Symlink,
                    target: "folders/u1".into(),
                    placement: Placement {
                        member: start,
                        header_at: 2048,
                        data_at: 2560,
                    },
                    size: 0,
                    sha1: Guid::ZERO,
                    stat: None,
                },
            ],
        }
    }

    #[test]
    fn blocks_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempdir();
        let path = dir.join("u.idx");
        let id = ArchiveId([9u8; 16]);
        let r1 = sample_run(1, 0);
        let r2 = sample_run(2, 200);
        let len1 = append(&path, &id, 0, &r1, &Faults::none()).unwrap();
        let len2 = append(&path, &id, len1, &r2, &Faults::none()).unwrap();
        let IndexRead::Valid {
            runs,
            good_len,
            archive_id,
            ..
        } = read(&path).unwrap()
        else {
            panic!()
        };
        assert_eq!((runs.len(), good_len, archive_id), (2, len2, id));
        assert_eq!(runs[1].entries, r2.entries);
        // Cut the last block anywhere: the first block survives.
        let full = std::fs::read(&path).unwrap();
        for cut in len1..len2 {
            std::fs::write(&path, &full[..cut as usize]).unwrap();
            let IndexRead::Valid { runs, good_len, .. } = read(&path).unwrap() else {
                panic!("cut {cut}")
            };
            assert_eq!((runs.len(), good_len), (1, len1), "cut {cut}");
        }
        // A flipped byte in the first block makes the whole index invalid.
        let mut rotten = full.clone();
        rotten[HEADER_LEN + 10] ^= 1;
        std::fs::write(&path, &rotten).unwrap();
        assert!(matches!(read(&path).unwrap(), IndexRead::Invalid(_)));
    }

    #[test]
    fn a_block_in_pieces_is_the_block() {
        let mut run = sample_run(3, 100);
        let one = run.entries[0].clone();
        run.entries = (0..3000).map(|_| one.clone()).collect();
        let mut digest = BlockDigest::default();
        run.entries.iter().for_each(|e| digest.add(e));
        let mut block = BlockStream::begin(&run, digest.count(), digest.body_len()).unwrap();
        let mut pieces = Vec::new();
        let mut sink = |p: &[u8]| {
            pieces.extend_from_slice(p);
            Ok(())
        };
        for e in &run.entries {
            block.entry(e, &mut sink).unwrap();
        }
        block.finish(&mut sink).unwrap();
        assert_eq!(pieces, encode_block(&run));
        let digest = BlockDigest::of(&run);
        run.entries[2999].placement.member += 1;
        assert_ne!(digest, BlockDigest::of(&run), "every entry counts");
    }

    /// What a crash can leave of appends that were not synced (formats/archive.md section 7):
    /// the file's new length without its data (zeros), or part of the data then zeros. The
    /// blocks before stay trusted; a non-zero byte after a zero length is still damage.
    #[test]
    fn unsynced_appends_lost_to_a_crash_read_as_a_torn_tail() {
        let dir = tempdir();
        let path = dir.join("u.idx");
        let id = ArchiveId([9u8; 16]);
        let len1 = append(&path, &id, 0, &sample_run(1, 0), &Faults::none()).unwrap();
        let len2 = append(&path, &id, len1, &sample_run(2, 200), &Faults::none()).unwrap();
        let full = std::fs::read(&path).unwrap();
        let block2 = (len2 - len1) as usize;
        for written in [0, 3, 4, 60, block2 - 1] {
            let mut crashed = full[..len1 as usize + written].to_vec();
            // Two appends' worth of length reached the disk, the rest of the data did not.
            crashed.resize(len1 as usize + 2 * block2, 0);
            std::fs::write(&path, &crashed).unwrap();
            let IndexRead::Valid { runs, good_len, .. } = read(&path).unwrap() else {
                panic!("{written} bytes written")
            };
            assert_eq!((runs.len(), good_len), (1, len1), "{written} bytes written");
        }
        let mut foreign = full[..len1 as usize].to_vec();
        foreign.extend_from_slice(&[0, 0, 0, 0, 7]);
        std::fs::write(&path, &foreign).unwrap();
        assert!(matches!(read(&path).unwrap(), IndexRead::Invalid(_)));
    }

    /// Frames read without entries, then the entries streamed block by block, give what a
    /// whole read gives; a byte that rots after the frames were read is an error naming the
    /// index file and the block's offset, never a different entry.
    #[test]
    fn streamed_entries_are_the_entries_and_rot_between_reads_is_caught() {
        let dir = tempdir();
        let path = dir.join("u.idx");
        let id = ArchiveId([9u8; 16]);
        let mut big = sample_run(2, 200);
        let one = big.entries[0].clone();
        big.entries = (0..5000u64)
            .map(|k| {
                let mut e = one.clone();
                e.placement.member = k;
                e
            })
            .collect();
        let len1 = append(&path, &id, 0, &sample_run(1, 0), &Faults::none()).unwrap();
        append(&path, &id, len1, &big, &Faults::none()).unwrap();
        let frames = read_frames(&path).unwrap().expect("a good index");
        assert_eq!(frames.runs.len(), 2);
        assert!(frames.runs.iter().all(|r| r.entries.is_empty()));
        assert_eq!(frames.blocks[1].count, 5000);
        let mut got = Vec::new();
        frames
            .file
            .stream_entries(&path, &frames.blocks[1], &mut |e| {
                got.push(e);
                Ok(())
            })
            .unwrap();
        assert_eq!(got, big.entries);

        let mut bytes = std::fs::read(&path).unwrap();
        let at = len1 as usize + 8 + FRAME_LEN + 300_000 % (bytes.len() - len1 as usize - 100);
        bytes[at] ^= 0x10;
        // Written in place: the open file sees it, as it would see rot.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
            .unwrap();
        let err = frames
            .file
            .stream_entries(&path, &frames.blocks[1], &mut |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains(&format!("{len1}")),
            "{err}"
        );
        assert!(read_frames(&path).unwrap().is_none());
    }

    /// A run's block written from a spill, in memory or through its file, is the block
    /// `append` writes from the run held whole; the spill's file is gone once open.
    #[test]
    fn a_spilled_run_appends_the_same_block() {
        let dir = tempdir();
        let id = ArchiveId([7u8; 16]);
        let mut big = sample_run(2, 200);
        let one = big.entries[0].clone();
        big.entries = (0..3000u64)
            .map(|k| {
                let mut e = one.clone();
                e.placement.member = 200 + k;
                e.name = format!("files/{k:040x}");
                e
            })
            .collect();
        let whole = dir.join("whole.idx");
        let len1 = append(&whole, &id, 0, &sample_run(1, 0), &Faults::none()).unwrap();
        let len2 = append(&whole, &id, len1, &big, &Faults::none()).unwrap();
        for limit in [1 << 30, 100, 64 << 10, 1] {
            let path = dir.join(format!("spilled-{limit}.idx"));
            assert_eq!(
                append(&path, &id, 0, &sample_run(1, 0), &Faults::none()).unwrap(),
                len1
            );
            let mut spill = RunSpill::with_limit(&path, limit);
            for e in &big.entries {
                spill.add(e);
            }
            assert_eq!(spill.count(), 3000);
            let frame = CommittedRun {
                entries: Vec::new(),
                ..big.clone()
            };
            let len =
                append_spilled(&path, &id, len1, &frame, &mut spill, &Faults::none()).unwrap();
            assert_eq!(len, len2, "limit {limit}");
            assert!(
                std::fs::read(&path).unwrap() == std::fs::read(&whole).unwrap(),
                "limit {limit}"
            );
            assert!(!spill.path.exists(), "limit {limit}");
            assert_eq!(spill.count(), 0);
        }
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mailpack-idx-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
