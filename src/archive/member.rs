//! One gzip member as formats/archive.md section 3.1 frames it, both ways. `compress_member`
//! encodes one (mailpack's header with its integrity field, raw deflate from libdeflate, the gzip
//! trailer) and chooses how hard deflate should work on it; `MemberReader` decodes an archive one member at a
//! time, knowing exactly where each member starts and ends in the file, so the scanner can give
//! every entry its member offset. Each member is held whole (bounded by `MAX_MEMBER_RAW`); the
//! writer keeps them near 1 MiB.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

use flate2::bufread::GzDecoder;

use super::MAX_MEMBER_RAW;
use crate::error::ParseError;

/// A decoded member: its byte range in the archive file, and whether its mailpack integrity
/// field (formats/archive.md section 3.1) vouches for every compressed byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u64,
    pub end: u64,
    /// `Err` says which byte range does not match what the writer recorded; its offset is the
    /// member's, as for every damaged member.
    pub integrity: Result<(), ParseError>,
}

/// Length of the fixed member header mailpack writes, FEXTRA included.
pub const HEADER_LEN: usize = 24;

/// The member header mailpack writes: gzip magic, deflate, FLG=FEXTRA, MTIME 0, XFL 0, OS 255,
/// XLEN 12, subfield "MP" of 8 bytes holding the payload length and CRC32.
pub fn member_header(payload_len: u32, payload_crc: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]);
    h[10..12].copy_from_slice(&12u16.to_le_bytes());
    h[12..14].copy_from_slice(b"MP");
    h[14..16].copy_from_slice(&8u16.to_le_bytes());
    h[16..20].copy_from_slice(&payload_len.to_le_bytes());
    h[20..24].copy_from_slice(&payload_crc.to_le_bytes());
    h
}

/// One gzip member framed as formats/archive.md section 3.1 says: a fixed header whose FEXTRA
/// field records the length and CRC32 of everything after it, so `verify` can vouch for every
/// byte of the file (the gzip CRC alone covers only the decompressed bytes). The deflate data is
/// made from the whole buffer at once, by libdeflate or, for base64 attachments, by zlib-rs's
/// Huffman-only coder (`choose_coding`; BENCHMARKS.md, "Compression: libdeflate against
/// zlib-rs").
pub fn compress_member(raw: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let (mut out, deflated_len) = match choose_coding(raw, level)? {
        Coding::Matched(level) => with_compressor(level, |c| {
            let mut out = vec![0u8; HEADER_LEN + c.deflate_compress_bound(raw.len()) + 8];
            let len = c
                .deflate_compress(raw, &mut out[HEADER_LEN..])
                .map_err(|e| io::Error::other(format!("deflate failed: {e}")))?;
            Ok((out, len))
        })?,
        Coding::HuffmanOnly => {
            let mut out = vec![0u8; HEADER_LEN + zlib_rs::compress_bound(raw.len()) + 8];
            let len = huffman_only(raw, &mut out[HEADER_LEN..])?;
            (out, len)
        }
    };
    out.truncate(HEADER_LEN + deflated_len);
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    let payload = &out[HEADER_LEN..];
    let header = member_header(payload.len() as u32, crc32fast::hash(payload));
    out[..HEADER_LEN].copy_from_slice(&header);
    Ok(out)
}

/// libdeflate's decompressor, called through `libdeflate_deflate_decompress_ex`, which also
/// says where the deflate data ended: `libdeflater` calls the plain function, which does not.
struct Inflater(std::ptr::NonNull<libdeflate_sys::libdeflate_decompressor>);

// SAFETY: a libdeflate decompressor holds no thread-bound state; it is used by one thread at a
// time through `&mut self`.
unsafe impl Send for Inflater {}

impl Inflater {
    /// `None` when libdeflate cannot allocate one.
    fn new() -> Option<Inflater> {
        // SAFETY: no arguments; a null result is handled.
        std::ptr::NonNull::new(unsafe { libdeflate_sys::libdeflate_alloc_decompressor() })
            .map(Inflater)
    }

    /// Inflates raw deflate data `input` into `out`: the input bytes the data took and the
    /// bytes it made, or `None` when it is not valid deflate data that fits `out`.
    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Option<(usize, usize)> {
        let (mut taken, mut made) = (0usize, 0usize);
        // SAFETY: the pointers and lengths describe live slices, and libdeflate writes only
        // within `out` and to the two counts.
        let result = unsafe {
            libdeflate_sys::libdeflate_deflate_decompress_ex(
                self.0.as_ptr(),
                input.as_ptr().cast(),
                input.len(),
                out.as_mut_ptr().cast(),
                out.len(),
                &mut taken,
                &mut made,
            )
        };
        (result == libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS).then_some((taken, made))
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: allocated by `libdeflate_alloc_decompressor`, freed once.
        unsafe { libdeflate_sys::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

/// How one member's deflate data is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    /// libdeflate at this level: string matching and Huffman coding.
    Matched(u32),
    /// Huffman coding alone, no string matching (zlib's `Z_HUFFMAN_ONLY`, from zlib-rs).
    HuffmanOnly,
}

/// Bytes of a base64 member's start coded both ways before it is Huffman-coded only.
const CODING_SAMPLE: usize = 32 << 10;

/// Mail attachments are base64 of already-compressed files: their bytes carry about 6 bits of
/// entropy each and no repeated strings, so string matching (most of deflate's time) gains
/// nothing over Huffman coding alone. A member that is mostly base64 lines is Huffman-coded
/// only, unless `CODING_SAMPLE` bytes from its middle come out at least 3% smaller from
/// libdeflate's fastest matching (base64 of text, say). Both sizes are integers, so the choice, and with it
/// the output, depends only on the input and the level.
fn choose_coding(raw: &[u8], level: u32) -> io::Result<Coding> {
    if base64_share(raw) < 0.7 {
        return Ok(Coding::Matched(level));
    }
    // From the middle: a member often starts with the end of a text message before the
    // attachment that fills it.
    let from = (raw.len() / 2).saturating_sub(CODING_SAMPLE / 2);
    let sample = &raw[from..raw.len().min(from + CODING_SAMPLE)];
    let mut buf = vec![0u8; zlib_rs::compress_bound(sample.len())];
    let huffman = huffman_only(sample, &mut buf)?;
    let matched = with_compressor(1, |c| {
        c.deflate_compress(sample, &mut buf)
            .map_err(|e| io::Error::other(format!("deflate failed: {e}")))
    })?;
    Ok(if matched * 100 < huffman * 97 {
        Coding::Matched(level)
    } else {
        Coding::HuffmanOnly
    })
}

/// Raw deflate of `raw` into `out` (at least `zlib_rs::compress_bound` long), Huffman-coded only.
fn huffman_only(raw: &[u8], out: &mut [u8]) -> io::Result<usize> {
    let config = zlib_rs::DeflateConfig {
        level: 6,
        method: zlib_rs::Method::Deflated,
        // Negative: raw deflate; the gzip framing is ours.
        window_bits: -15,
        mem_level: 8,
        strategy: zlib_rs::Strategy::HuffmanOnly,
    };
    let (deflated, rc) = zlib_rs::compress_slice(out, raw, config);
    if rc != zlib_rs::ReturnCode::Ok {
        return Err(io::Error::other(format!("deflate failed: {rc:?}")));
    }
    Ok(deflated.len())
}

/// Runs `f` with this thread's libdeflate compressor for `level` (made on first use and kept:
/// a compressor holds its match-finder tables, a few hundred KiB, and the deflate pool's workers
/// live as long as the writer).
fn with_compressor<T>(
    level: u32,
    f: impl FnOnce(&mut libdeflater::Compressor) -> io::Result<T>,
) -> io::Result<T> {
    use std::cell::RefCell;
    thread_local! {
        static COMPRESSORS: RefCell<Vec<(u32, libdeflater::Compressor)>> =
            const { RefCell::new(Vec::new()) };
    }
    let lvl = libdeflater::CompressionLvl::new(level as i32)
        .map_err(|_| io::Error::other(format!("compression level {level} out of range")))?;
    COMPRESSORS.with(|cell| {
        let mut compressors = cell.borrow_mut();
        let i = match compressors.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                compressors.push((level, libdeflater::Compressor::new(lvl)));
                compressors.len() - 1
            }
        };
        f(&mut compressors[i].1)
    })
}

/// The share of `raw` in lines of at least 60 base64 characters (MIME wraps at 76), a line's
/// one trailing CR not counted in its length; its newline counts towards the share. This runs
/// on every member, so it must cost little beside deflate: one pass with a byte table (about
/// three times `split` and `all`; bit masks of 64 bytes at a time were slower still).
fn base64_share(raw: &[u8]) -> f64 {
    const OTHER: u8 = 0;
    const B64: u8 = 1;
    const CR: u8 = 2;
    const LF: u8 = 3;
    const CLASS: [u8; 256] = {
        let mut t = [OTHER; 256];
        let mut i = 0;
        while i < 256 {
            let b = i as u8;
            if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
                t[i] = B64;
            }
            i += 1;
        }
        t[b'\r' as usize] = CR;
        t[b'\n' as usize] = LF;
        t
    };
    if raw.is_empty() {
        return 0.0;
    }
    let mut in_lines = 0usize;
    let mut line_start = 0usize;
    // Bytes of the current line that are not base64, and the class of its last byte.
    let mut other = 0usize;
    let mut last = OTHER;
    let mut close = |end: usize, other: usize, last: u8, line_start: usize| {
        let stripped = usize::from(last == CR);
        if end - line_start - stripped >= 60 && other == stripped {
            in_lines += end - line_start + 1;
        }
    };
    for (i, &b) in raw.iter().enumerate() {
        let class = CLASS[b as usize];
        if class == LF {
            close(i, other, last, line_start);
            line_start = i + 1;
            other = 0;
            last = OTHER;
        } else {
            other += usize::from(class != B64);
            last = class;
        }
    }
    close(raw.len(), other, last, line_start);
    in_lines as f64 / raw.len() as f64
}

#[derive(Debug)]
pub enum MemberError {
    /// The file ends inside this member: a torn append.
    Torn { offset: u64, detail: String },
    /// The member's bytes are wrong (bad header, deflate data, CRC or length).
    Bad { offset: u64, detail: String },
    /// Reading the file itself failed.
    Io(io::Error),
}

impl MemberError {
    pub fn offset(&self) -> Option<u64> {
        match self {
            MemberError::Torn { offset, .. } | MemberError::Bad { offset, .. } => Some(*offset),
            MemberError::Io(_) => None,
        }
    }
}

/// Counts bytes the decoder consumed, so the end of a member is known exactly even though the
/// buffer has read ahead.
struct Counted<R> {
    inner: BufReader<R>,
    consumed: u64,
    member_start: u64,
    head: Vec<u8>,
    payload_crc: crc32fast::Hasher,
}

impl<R> Counted<R> {
    fn start_member(&mut self) {
        self.member_start = self.consumed;
        self.head.clear();
        self.payload_crc = crc32fast::Hasher::new();
    }

    fn observe(&mut self, bytes: &[u8]) {
        observe(
            bytes,
            &mut self.consumed,
            self.member_start,
            &mut self.head,
            &mut self.payload_crc,
        );
    }

    fn integrity(&self) -> Result<(), ParseError> {
        let bad = |detail: &str| Err(ParseError::new(self.member_start, detail));
        let Some(payload_len) = (self.consumed - self.member_start).checked_sub(HEADER_LEN as u64)
        else {
            return bad("gzip member is shorter than the header mailpack writes");
        };
        let expected = member_header(payload_len as u32, self.payload_crc.clone().finalize());
        if self.head.len() < HEADER_LEN || self.head[..16] != expected[..16] {
            return bad("gzip member header is not the one mailpack writes");
        }
        if self.head[16..20] != expected[16..20] {
            return bad("gzip member length does not match its header");
        }
        if self.head[20..24] != expected[20..24] {
            return bad("compressed bytes do not match the member's checksum");
        }
        Ok(())
    }
}

/// Sees every byte the decoder takes: the header is kept, the rest is checksummed.
fn observe(
    bytes: &[u8],
    consumed: &mut u64,
    member_start: u64,
    head: &mut Vec<u8>,
    payload_crc: &mut crc32fast::Hasher,
) {
    let into_member = (*consumed - member_start) as usize;
    let head_room = HEADER_LEN.saturating_sub(into_member).min(bytes.len());
    head.extend_from_slice(&bytes[..head_room]);
    payload_crc.update(&bytes[head_room..]);
    *consumed += bytes.len() as u64;
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n]);
        Ok(n)
    }
}

impl<R: Read> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        let Counted {
            inner,
            consumed,
            member_start,
            head,
            payload_crc,
        } = self;
        observe(
            &inner.buffer()[..amt],
            consumed,
            *member_start,
            head,
            payload_crc,
        );
        inner.consume(amt);
    }
}

pub struct MemberReader<R> {
    input: Option<Counted<R>>,
    start: u64,
    /// libdeflate's decoder for whole members, made on first use.
    inflater: Option<Inflater>,
    /// One member's compressed payload (at most `MAX_MEMBER_PAYLOAD` bytes).
    packed: Vec<u8>,
    /// Whether `decode_whole` is tried first (tests compare it with the streaming path alone).
    whole_members: bool,
}

impl<R: Read + Seek> MemberReader<R> {
    /// Starts decoding at byte `offset` of `file`, which must be a member boundary.
    pub fn new(mut file: R, offset: u64) -> io::Result<Self> {
        file.seek(SeekFrom::Start(offset))?;
        Ok(MemberReader {
            input: Some(Counted {
                inner: BufReader::with_capacity(256 << 10, file),
                consumed: offset,
                member_start: offset,
                head: Vec::with_capacity(HEADER_LEN),
                payload_crc: crc32fast::Hasher::new(),
            }),
            start: offset,
            inflater: None,
            packed: Vec::new(),
            whole_members: true,
        })
    }

    /// Offset of the next member to decode.
    pub fn position(&self) -> u64 {
        self.input.as_ref().map_or(self.start, |c| c.consumed)
    }

    /// Decodes the next member into `raw` (cleared first). `Ok(None)` at a clean end of file.
    pub fn next_member(&mut self, raw: &mut Vec<u8>) -> Result<Option<Member>, MemberError> {
        self.next_member_within(raw, MAX_MEMBER_RAW)
    }

    /// As `next_member`, with a member decompressing to more than `limit` bytes reported as bad.
    fn next_member_within(
        &mut self,
        raw: &mut Vec<u8>,
        limit: usize,
    ) -> Result<Option<Member>, MemberError> {
        raw.clear();
        let input = self
            .input
            .as_mut()
            .expect("member reader used after an error");
        let offset = input.consumed;
        match input.fill_buf() {
            Ok([]) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(MemberError::Io(e)),
        }
        let mut counted = self.input.take().expect("checked above");
        counted.start_member();
        let whole = if self.whole_members {
            self.decode_whole(&mut counted, raw, limit)
        } else {
            Ok(false)
        };
        match whole {
            Ok(true) => {
                let end = counted.consumed;
                self.input = Some(counted);
                return Ok(Some(Member {
                    offset,
                    end,
                    integrity: Ok(()),
                }));
            }
            Ok(false) => {}
            Err(e) => {
                self.input = Some(counted);
                return Err(MemberError::Io(e));
            }
        }
        let mut decoder = GzDecoder::new(counted);
        let result = (&mut decoder).take(limit as u64 + 1).read_to_end(raw);
        let counted = decoder.into_inner();
        let end = counted.consumed;
        let integrity = counted.integrity();
        self.input = Some(counted);
        match result {
            Ok(_) if raw.len() > limit => Err(MemberError::Bad {
                offset,
                detail: format!("member decompresses to more than {limit} bytes"),
            }),
            Ok(_) => Ok(Some(Member {
                offset,
                end,
                integrity,
            })),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(MemberError::Torn {
                offset,
                detail: format!("file ends inside the gzip member ({e})"),
            }),
            Err(e) => Err(MemberError::Bad {
                offset,
                detail: format!("gzip member does not decode: {e}"),
            }),
        }
    }

    /// The fast path for mailpack's own members: one whose header names its payload's length
    /// and CRC32 (formats/archive.md section 3.1) is read whole, checked against them, and
    /// inflated by libdeflate in one call into a buffer of exactly its ISIZE, checked against the
    /// trailer's CRC32. `Ok(false)`, with the file rewound to the member's start and `raw`
    /// empty, for every other member (foreign, damaged, torn, or decompressing to more than
    /// `limit` bytes): the streaming decoder then reads it as before and says what is wrong and
    /// where it ends. Allocation is bounded by `MAX_MEMBER_PAYLOAD` and `limit` before any
    /// number from the file is used.
    ///
    /// The deflate data must end exactly before the trailer (`Inflater` says where it ended):
    /// a forged member whose deflate data ends earlier, with a trailer repeated at both places,
    /// would otherwise be read here as ending where its header says and by gzip earlier.
    fn decode_whole(
        &mut self,
        counted: &mut Counted<R>,
        raw: &mut Vec<u8>,
        limit: usize,
    ) -> io::Result<bool> {
        let offset = counted.member_start;
        if self.read_whole(counted, raw, limit)? {
            return Ok(true);
        }
        raw.clear();
        counted.inner.seek(SeekFrom::Start(offset))?;
        counted.consumed = offset;
        counted.start_member();
        Ok(false)
    }

    fn read_whole(
        &mut self,
        counted: &mut Counted<R>,
        raw: &mut Vec<u8>,
        limit: usize,
    ) -> io::Result<bool> {
        let mut head = [0u8; HEADER_LEN];
        if read_full(counted, &mut head)? < HEADER_LEN || head[..16] != member_header(0, 0)[..16] {
            return Ok(false);
        }
        let payload_len = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) as u64;
        if !(8..=MAX_MEMBER_PAYLOAD).contains(&payload_len) {
            return Ok(false);
        }
        self.packed.resize(payload_len as usize, 0);
        if read_full(counted, &mut self.packed)? < self.packed.len() || counted.integrity().is_err()
        {
            return Ok(false);
        }
        let (deflated, trailer) = self.packed.split_at(self.packed.len() - 8);
        let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let isize = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes")) as usize;
        if isize > limit {
            return Ok(false);
        }
        raw.resize(isize, 0);
        if self.inflater.is_none() {
            self.inflater = Inflater::new();
        }
        let Some(inflater) = self.inflater.as_mut() else {
            return Ok(false);
        };
        // The deflate data must end exactly where the trailer begins, as gzip would read it,
        // and fill exactly ISIZE bytes.
        Ok(
            inflater.inflate(deflated, raw) == Some((deflated.len(), isize))
                && crc32fast::hash(raw) == crc,
        )
    }

    /// After an error, finds the next offset after `from` where a mailpack member starts whose
    /// integrity field vouches for its bytes and which decodes, and positions the reader there.
    /// `None` when there is none. Only mailpack's own members are candidates: a member's header
    /// names its payload's length and CRC32, so a candidate is checked by one CRC over at most
    /// `MAX_MEMBER_PAYLOAD` bytes before anything is decompressed, and decompression is bounded
    /// by `MEMBER_TARGET`. CRC work is further bounded by `RESYNC_BUDGET` times the bytes passed
    /// over, so even a region packed with forged headers costs time in proportion to its size.
    pub fn resync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut file = self
            .input
            .take()
            .map(|c| c.inner.into_inner())
            .ok_or_else(|| io::Error::other("member reader lost its file"))?;
        let len = file.seek(SeekFrom::End(0))?;
        let signature = member_header(0, 0);
        let signature = &signature[..16];
        let mut candidate = from + 1;
        let mut window = vec![0u8; 64 << 10];
        let mut crc_work: u64 = 0;
        while candidate + HEADER_LEN as u64 <= len {
            file.seek(SeekFrom::Start(candidate))?;
            let n = read_full(&mut file, &mut window)?;
            let hit = window[..n]
                .windows(signature.len())
                .position(|w| w == signature);
            let Some(i) = hit else {
                if n < signature.len() {
                    break;
                }
                candidate += (n - signature.len() + 1) as u64;
                continue;
            };
            let at = candidate + i as u64;
            candidate = at + 1;
            let mut head = [0u8; HEADER_LEN];
            file.seek(SeekFrom::Start(at))?;
            if read_full(&mut file, &mut head)? < HEADER_LEN {
                break;
            }
            let payload_len = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) as u64;
            let payload_crc = u32::from_le_bytes(head[20..24].try_into().expect("4 bytes"));
            let payload_end = at + HEADER_LEN as u64 + payload_len;
            if payload_len > MAX_MEMBER_PAYLOAD || payload_end > len {
                continue;
            }
            crc_work += payload_len;
            if crc_work > RESYNC_BUDGET.saturating_mul((at - from).max(1 << 20)) {
                break;
            }
            if crc_of(&mut file, payload_len, &mut window)? != payload_crc {
                continue;
            }
            file.seek(SeekFrom::Start(at))?;
            let mut probe = MemberReader::new(file, at)?;
            let mut raw = Vec::new();
            let decoded = probe.next_member_within(&mut raw, super::MEMBER_TARGET);
            file = probe.into_file();
            if let Ok(Some(m)) = decoded {
                if m.integrity.is_ok() {
                    *self = MemberReader::new(file, at)?;
                    return Ok(Some(at));
                }
            }
        }
        *self = MemberReader::new(file, len)?;
        Ok(None)
    }

    pub fn into_file(self) -> R {
        self.input
            .map(|c| c.inner.into_inner())
            .expect("member reader lost its file")
    }
}

/// Longest payload (deflate data and trailer) of a member mailpack writes: `MEMBER_TARGET` bytes
/// of tar deflate to at most that plus 5 bytes per 16 KiB stored block; the rest is headroom.
pub const MAX_MEMBER_PAYLOAD: u64 =
    super::MEMBER_TARGET as u64 + (super::MEMBER_TARGET as u64 >> 6) + 1024;

/// CRC32 bytes a resync may check per byte it passes over. A real archive's next member is the
/// first candidate checked; only forged headers packed into damage ever spend this.
const RESYNC_BUDGET: u64 = 16;

/// CRC32 of the next `len` bytes of `r`.
fn crc_of(r: &mut impl Read, len: u64, buf: &mut [u8]) -> io::Result<u32> {
    let mut crc = crc32fast::Hasher::new();
    let mut left = len;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = read_full(r, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(crc.finalize())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::{Cursor, Read, Write};

    fn gz(data: &[u8]) -> Vec<u8> {
        compress_member(data, 6).unwrap()
    }

    #[test]
    fn foreign_members_decode_but_fail_the_integrity_check() {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(b"plain gzip").unwrap();
        let plain = e.finish().unwrap();
        let mut r = MemberReader::new(Cursor::new(plain), 0).unwrap();
        let mut raw = Vec::new();
        let m = r.next_member(&mut raw).unwrap().unwrap();
        assert_eq!(raw, b"plain gzip");
        assert!(m.integrity.is_err());
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let member = gz(&b"some mail text, repeated. ".repeat(200));
        for i in 0..member.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = member.clone();
                bad[i] ^= bit;
                let mut r = MemberReader::new(Cursor::new(bad), 0).unwrap();
                let mut raw = Vec::new();
                match r.next_member(&mut raw) {
                    Ok(Some(m)) => assert!(
                        m.integrity.is_err(),
                        "flip of byte {i} bit {bit:#x} unnoticed"
                    ),
                    Ok(None) => panic!("member vanished"),
                    Err(_) => {}
                }
            }
        }
    }

    /// Every member, error and integrity verdict of `file`, read with or without the
    /// whole-member path, members decoded at most `limit` bytes.
    fn read_all(file: &[u8], whole: bool, limit: usize) -> Vec<String> {
        let mut r = MemberReader::new(Cursor::new(file.to_vec()), 0).unwrap();
        r.whole_members = whole;
        let mut out = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..8 {
            match r.next_member_within(&mut raw, limit) {
                Ok(Some(m)) => out.push(format!("{m:?} {}", crc32fast::hash(&raw))),
                Ok(None) => break,
                Err(e) => {
                    out.push(format!(
                        "{:?} {}",
                        e.offset(),
                        matches!(e, MemberError::Torn { .. })
                    ));
                    match r.resync(e.offset().unwrap_or(0)) {
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                    r.whole_members = whole;
                }
            }
        }
        out
    }

    /// A forged member whose deflate data ends before its last 8 bytes, with its trailer
    /// repeated there and an `MP` field vouching for the whole: the whole-member path reads it
    /// as the streaming decoder (and gzip) does, ending after the first trailer.
    #[test]
    fn a_member_whose_deflate_data_ends_early_is_read_as_gzip_reads_it() {
        let raw = b"a message body, forged around".repeat(40);
        let mut deflated = vec![0u8; 4096];
        let n = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap())
            .deflate_compress(&raw, &mut deflated)
            .unwrap();
        deflated.truncate(n);
        let mut trailer = crc32fast::hash(&raw).to_le_bytes().to_vec();
        trailer.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        let payload = [&deflated[..], &trailer, &trailer].concat();
        let forged = [
            &member_header(payload.len() as u32, crc32fast::hash(&payload))[..],
            &payload,
        ]
        .concat();
        let file = [forged, gz(b"next")].concat();
        let whole = read_all(&file, true, MAX_MEMBER_RAW);
        assert_eq!(whole, read_all(&file, false, MAX_MEMBER_RAW));
        assert!(
            whole[0].contains(&format!("end: {}", HEADER_LEN + n + 8)),
            "{whole:?}"
        );
    }

    #[test]
    fn whole_members_read_exactly_as_the_streaming_decoder_reads_them() {
        let text =
            b"From: a@example.org\r\nSubject: hi\r\n\r\nhello there, mail text. ".repeat(300);
        let mut file = [gz(&text), gz(b"second"), gz(&[])].concat();
        let foreign = {
            let mut e = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(b"foreign member").unwrap();
            e.finish().unwrap()
        };
        file.extend_from_slice(&foreign);
        file.extend_from_slice(&gz(&text[..5000]));
        let clean = read_all(&file, true, MAX_MEMBER_RAW);
        assert_eq!(clean.len(), 5);
        assert_eq!(clean, read_all(&file, false, MAX_MEMBER_RAW));
        // A member past the limit is damage either way.
        assert_eq!(read_all(&file, true, 4000), read_all(&file, false, 4000));
        // Every single-byte change and every truncation: the same members, ends, verdicts.
        let second = gz(&text).len();
        for i in (0..second + 60).chain(file.len() - 80..file.len()) {
            for bit in [0x01u8, 0x10, 0x80] {
                let mut bad = file.clone();
                bad[i] ^= bit;
                assert_eq!(
                    read_all(&bad, true, MAX_MEMBER_RAW),
                    read_all(&bad, false, MAX_MEMBER_RAW),
                    "flip of byte {i} bit {bit:#x}"
                );
            }
        }
        for cut in (0..file.len()).step_by(7) {
            assert_eq!(
                read_all(&file[..cut], true, MAX_MEMBER_RAW),
                read_all(&file[..cut], false, MAX_MEMBER_RAW),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn members_are_found_with_exact_offsets() {
        let (a, b) = (gz(b"first member"), gz(&vec![b'x'; 300_000]));
        let file = [a.clone(), b.clone()].concat();
        let mut r = MemberReader::new(Cursor::new(file), 0).unwrap();
        let mut raw = Vec::new();
        let m1 = r.next_member(&mut raw).unwrap().unwrap();
        assert_eq!(
            (m1.offset, m1.end, raw.as_slice()),
            (0, a.len() as u64, &b"first member"[..])
        );
        assert_eq!(m1.integrity, Ok(()));
        let m2 = r.next_member(&mut raw).unwrap().unwrap();
        assert_eq!(
            (m2.offset, m2.end, raw.len()),
            (a.len() as u64, (a.len() + b.len()) as u64, 300_000)
        );
        assert!(r.next_member(&mut raw).unwrap().is_none());
        assert!(
            r.inflater.is_some(),
            "mailpack's members took the whole-member path"
        );
    }

    #[test]
    fn torn_and_bad_members_are_told_apart_and_resync_skips_damage() {
        let (a, b) = (gz(b"one"), gz(b"two"));
        let torn = [a.clone(), b[..b.len() - 3].to_vec()].concat();
        let mut r = MemberReader::new(Cursor::new(torn), 0).unwrap();
        let mut raw = Vec::new();
        r.next_member(&mut raw).unwrap();
        assert!(matches!(
            r.next_member(&mut raw),
            Err(MemberError::Torn { .. })
        ));

        let mut bad = [a.clone(), b.clone()].concat();
        bad[a.len() - 6] ^= 0x40; // inside the first member's CRC
        let mut r = MemberReader::new(Cursor::new(bad), 0).unwrap();
        assert!(matches!(
            r.next_member(&mut raw),
            Err(MemberError::Bad { offset: 0, .. })
        ));
        assert_eq!(r.resync(0).unwrap(), Some(a.len() as u64));
        r.next_member(&mut raw).unwrap().unwrap();
        assert_eq!(raw, b"two");
    }

    /// Micro-benchmark for issue 19, not a test (BENCHMARKS.md, "Compression: libdeflate against
    /// zlib-rs"; bench/fullbackup.sh runs it): the members of real archives
    /// (`MAILPACK_CODEC_ARCHIVES`, space-separated paths; at most `MAILPACK_CODEC_MB` MiB of tar
    /// bytes, default 192) decoded, then compressed and decompressed again on one thread by each
    /// candidate. Candidates take turns member by member, so a machine whose speed drifts (a
    /// shared VM) slows all of them alike. Members are split into text and base64
    /// (`base64_share` >= 0.7) because the writer treats them differently.
    #[test]
    #[ignore]
    fn codec_speed_on_real_members() {
        use std::time::{Duration, Instant};
        let paths = std::env::var("MAILPACK_CODEC_ARCHIVES").expect("MAILPACK_CODEC_ARCHIVES");
        let budget: usize = std::env::var("MAILPACK_CODEC_MB")
            .map(|v| v.parse().expect("MAILPACK_CODEC_MB"))
            .unwrap_or(192)
            << 20;
        let (mut text, mut b64) = (Vec::new(), Vec::new());
        let mut total = 0usize;
        'files: for path in paths.split_whitespace() {
            let mut r = MemberReader::new(std::fs::File::open(path).unwrap(), 0).unwrap();
            loop {
                let mut raw = Vec::new();
                if r.next_member(&mut raw).unwrap().is_none() {
                    break;
                }
                total += raw.len();
                if base64_share(&raw) >= 0.7 {
                    b64.push(raw);
                } else {
                    text.push(raw);
                }
                if total >= budget {
                    break 'files;
                }
            }
        }
        let mib = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64 / (1 << 20) as f64;
        println!(
            "members: text {} ({:.1} MiB), base64 {} ({:.1} MiB)",
            text.len(),
            mib(&text),
            b64.len(),
            mib(&b64)
        );

        type Deflate = Box<dyn FnMut(&[u8]) -> Vec<u8>>;
        let zlib = |level: u32, strategy: Option<zlib_rs::Strategy>| -> Deflate {
            Box::new(move |raw: &[u8]| {
                let strategy = strategy.unwrap_or_else(|| zlib_rs_strategy(raw, level));
                let mut out = vec![0u8; zlib_rs::compress_bound(raw.len())];
                let (d, rc) =
                    zlib_rs::compress_slice(&mut out, raw, zlib_rs_config(level, strategy));
                assert_eq!(rc, zlib_rs::ReturnCode::Ok);
                let n = d.len();
                out.truncate(n);
                out
            })
        };
        let libdeflate = |level: i32| -> Deflate {
            let mut c =
                libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
            Box::new(move |raw: &[u8]| {
                let mut out = vec![0u8; c.deflate_compress_bound(raw.len())];
                let n = c.deflate_compress(raw, &mut out).unwrap();
                out.truncate(n);
                out
            })
        };
        let mut candidates: Vec<(String, Deflate)> = vec![
            ("zlib-rs 6, strategy chosen (before)".into(), zlib(6, None)),
            (
                "zlib-rs 6".into(),
                zlib(6, Some(zlib_rs::Strategy::Default)),
            ),
            (
                "zlib-rs Huffman only".into(),
                zlib(6, Some(zlib_rs::Strategy::HuffmanOnly)),
            ),
            (
                "zlib-rs 1".into(),
                zlib(1, Some(zlib_rs::Strategy::Default)),
            ),
        ];
        for level in 1..=9 {
            candidates.push((format!("libdeflate {level}"), libdeflate(level)));
        }
        for level in [5, 6] {
            candidates.push((
                format!("compress_member {level} (after)"),
                Box::new(move |raw: &[u8]| {
                    let m = compress_member(raw, level).unwrap();
                    m[HEADER_LEN..m.len() - 8].to_vec()
                }),
            ));
        }

        #[derive(Clone, Copy, Default)]
        struct Tally {
            raw: usize,
            packed: usize,
            deflate: Duration,
            zlib_rs_inflate: Duration,
            libdeflate_inflate: Duration,
        }
        let n = candidates.len();
        let mut tally = vec![[Tally::default(); 2]; n];
        let mut out = vec![0u8; text.iter().chain(&b64).map(Vec::len).max().unwrap_or(0)];
        let mut inflater = libdeflater::Decompressor::new();
        let mut share_time = Duration::ZERO;
        for (class, members) in [&text, &b64].into_iter().enumerate() {
            for (i, m) in members.iter().enumerate() {
                let started = Instant::now();
                std::hint::black_box(base64_share(m));
                share_time += started.elapsed();
                for k in 0..n {
                    let c = (i + k) % n;
                    let t = &mut tally[c][class];
                    let started = Instant::now();
                    let packed = (candidates[c].1)(m);
                    t.deflate += started.elapsed();
                    let started = Instant::now();
                    let (d, rc) = zlib_rs::decompress_slice(
                        &mut out[..m.len()],
                        &packed,
                        zlib_rs::InflateConfig { window_bits: -15 },
                    );
                    t.zlib_rs_inflate += started.elapsed();
                    assert!(matches!(
                        rc,
                        zlib_rs::ReturnCode::Ok | zlib_rs::ReturnCode::StreamEnd
                    ));
                    assert_eq!(d.len(), m.len());
                    let started = Instant::now();
                    let len = inflater.deflate_decompress(&packed, &mut out[..m.len()]);
                    t.libdeflate_inflate += started.elapsed();
                    assert_eq!(len, Ok(m.len()));
                    t.raw += m.len();
                    t.packed += packed.len();
                }
            }
        }
        let rate = |bytes: usize, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
        println!(
            "{:36} {:>6} {:>7} {:>10} {:>14} {:>14}",
            "compressor", "class", "ratio", "deflate", "zlib-rs inflate", "libdeflate inflate"
        );
        for (c, (name, _)) in candidates.iter().enumerate() {
            for (class, t) in ["text", "base64"].iter().zip(&tally[c]) {
                if t.raw == 0 {
                    continue;
                }
                println!(
                    "{name:36} {class:>6} {:7.4} {:6.1} MB/s {:9.1} MB/s {:9.1} MB/s",
                    t.packed as f64 / t.raw as f64,
                    rate(t.raw, t.deflate),
                    rate(t.raw, t.zlib_rs_inflate),
                    rate(t.raw, t.libdeflate_inflate)
                );
            }
        }
        let all_raw: usize = text.iter().chain(&b64).map(Vec::len).sum();
        println!(
            "base64_share: {:.1} MB/s over all members",
            rate(all_raw, share_time)
        );

        // Whole members through MemberReader (file bytes, both CRCs, inflate), with and without
        // the whole-member path, member by member in turn.
        let file: Vec<u8> = text.iter().chain(&b64).flat_map(|m| gz(m)).collect();
        let mut whole = MemberReader::new(Cursor::new(&file[..]), 0).unwrap();
        let mut streaming = MemberReader::new(Cursor::new(&file[..]), 0).unwrap();
        streaming.whole_members = false;
        let (mut t_whole, mut t_streaming) = (Duration::ZERO, Duration::ZERO);
        let mut raw = Vec::new();
        loop {
            let started = Instant::now();
            let a = whole.next_member(&mut raw).unwrap();
            t_whole += started.elapsed();
            let started = Instant::now();
            let b = streaming.next_member(&mut raw).unwrap();
            t_streaming += started.elapsed();
            assert_eq!(a, b);
            if a.is_none() {
                break;
            }
        }
        println!(
            "MemberReader on members of compress_member 6: streaming (flate2, zlib-rs) {:.1} MB/s, whole (libdeflate) {:.1} MB/s",
            rate(all_raw, t_streaming),
            rate(all_raw, t_whole)
        );
    }

    fn round_trip(raw: &[u8]) -> Vec<u8> {
        let member = compress_member(raw, 6).unwrap();
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(&member[..]);
        std::io::Read::read_to_end(&mut d, &mut out).unwrap();
        out
    }

    #[test]
    fn base64_attachments_are_huffman_coded_and_text_is_not() {
        let mut state = 1u64;
        let mut noise = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        let random: Vec<u8> = (0..300_000).map(|_| noise()).collect();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = Vec::new();
        for chunk in random.chunks(57) {
            let mut line = String::new();
            for group in chunk.chunks(3) {
                let n = group.iter().fold(0u32, |acc, &b| acc << 8 | b as u32)
                    << (8 * (3 - group.len()));
                for i in 0..4 {
                    line.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            b64.extend_from_slice(line.as_bytes());
            b64.extend_from_slice(b"\r\n");
        }
        assert_eq!(choose_coding(&b64, 6).unwrap(), Coding::HuffmanOnly);
        assert_eq!(round_trip(&b64), b64);
        let text = b"Dear team, the quarterly report is attached. Regards, Alice\r\n".repeat(5000);
        assert_eq!(choose_coding(&text, 6).unwrap(), Coding::Matched(6));
        assert_eq!(choose_coding(&b64, 1).unwrap(), Coding::HuffmanOnly);
        assert_eq!(round_trip(&text), text);
        // Base64 of repetitive text: matching pays, so it is kept.
        let repetitive: Vec<u8> =
            b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWkFCQ0RF\r\n"
                .repeat(3000)
                .to_vec();
        assert_eq!(choose_coding(&repetitive, 6).unwrap(), Coding::Matched(6));
        assert!(compress_member(&repetitive, 6).unwrap().len() < repetitive.len() / 50);
        assert_eq!(round_trip(&repetitive), repetitive);
        assert_eq!(round_trip(&[]), Vec::<u8>::new());
    }

    #[test]
    fn base64_share_counts_as_the_line_by_line_definition() {
        fn by_lines(raw: &[u8]) -> f64 {
            if raw.is_empty() {
                return 0.0;
            }
            let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
            let mut in_lines = 0usize;
            for line in raw.split(|&b| b == b'\n') {
                let body = line.strip_suffix(b"\r").unwrap_or(line);
                if body.len() >= 60 && body.iter().all(|&b| is_b64(b)) {
                    in_lines += line.len() + 1;
                }
            }
            in_lines as f64 / raw.len() as f64
        }
        let mut state = 7u64;
        let pieces: [&[u8]; 9] = [
            b"QUJD", b"x+/=", b"\r", b"\n", b"\r\n", b" ", b"-", b"\r\r", b"Zz09",
        ];
        for round in 0..3000 {
            let mut raw = Vec::new();
            while raw.len() < round % 400 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let p = (state >> 33) as usize;
                // Mostly base64, so that lines near the 60-byte boundary are common.
                let piece = if p % 10 < 7 {
                    pieces[p % 2 * 8]
                } else {
                    pieces[p % 9]
                };
                raw.extend_from_slice(piece);
            }
            assert_eq!(
                base64_share(&raw),
                by_lines(&raw),
                "{:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        let line = [b"A".repeat(60), b"\r\n".to_vec()].concat();
        assert_eq!(base64_share(&line), 1.0);
        assert_eq!(base64_share(&line[..61]), by_lines(&line[..61]));
        assert_eq!(base64_share(&line[..59]), 0.0);
    }

    #[test]
    fn members_are_plain_gzip_with_the_mailpack_header_at_every_level() {
        let raw = b"Subject: hello\r\n\r\nsome mail text, repeated. ".repeat(4000);
        for level in 1..=9 {
            let member = compress_member(&raw, level).unwrap();
            let payload = &member[HEADER_LEN..];
            assert_eq!(
                member[..HEADER_LEN],
                member_header(payload.len() as u32, crc32fast::hash(payload))
            );
            let trailer = &member[member.len() - 8..];
            assert_eq!(trailer[..4], crc32fast::hash(&raw).to_le_bytes());
            assert_eq!(trailer[4..], (raw.len() as u32).to_le_bytes());
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&member[..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, raw);
        }
        assert!(compress_member(&raw, 13).is_err());
    }

    /// Today's member compression before issue 19 (zlib-rs at `level`, Huffman-only for a
    /// base64 member unless a sample shows matching saving 3%), kept as the reference side of
    /// `codec_speed_on_real_members`.
    fn zlib_rs_config(level: u32, strategy: zlib_rs::Strategy) -> zlib_rs::DeflateConfig {
        zlib_rs::DeflateConfig {
            level: level as i32,
            method: zlib_rs::Method::Deflated,
            window_bits: -15,
            mem_level: 8,
            strategy,
        }
    }

    fn zlib_rs_strategy(raw: &[u8], level: u32) -> zlib_rs::Strategy {
        use zlib_rs::Strategy;
        if level < 2 || base64_share(raw) < 0.7 {
            return Strategy::Default;
        }
        let sample = &raw[..raw.len().min(64 << 10)];
        let mut buf = vec![0u8; zlib_rs::compress_bound(sample.len())];
        let size = |buf: &mut [u8], strategy| {
            let (out, rc) = zlib_rs::compress_slice(buf, sample, zlib_rs_config(level, strategy));
            if rc == zlib_rs::ReturnCode::Ok {
                out.len()
            } else {
                usize::MAX
            }
        };
        let huffman = size(&mut buf, Strategy::HuffmanOnly);
        let matched = size(&mut buf, Strategy::Default);
        if (matched as f64) < huffman as f64 * 0.97 {
            Strategy::Default
        } else {
            Strategy::HuffmanOnly
        }
    }
}
