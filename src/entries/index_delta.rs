//! The `cyrus.index` delta of formats/backup-entries.md ("Index deltas"): a version of a
//! mailbox's index stored as the blocks (header, record slots) that differ from the version
//! stored before it. Pure bytes: finding the base in an archive is `crate::folders`' job.
//!
//! Every field of a payload is checked before anything is allocated for it, the base is
//! checked against the length and SHA-1 the delta names, and the result against the length and
//! SHA-1 recorded when the backup read the file: `apply` returns the exact bytes or an error.

use crate::guid::Guid;

/// `folders/<uniqueid>/<this>`: the name a delta is stored under.
pub const INDEX_DELTA_FILE: &str = "delta/cyrus.index";
/// `folders/<uniqueid>/<this>`: the name a full copy is stored under.
pub const INDEX_FILE: &str = "cyrus.index";
pub const MAGIC: &[u8; 8] = b"MPIXDLTA";
/// At byte 8, where a `cyrus.index` holds its minor version: no Cyrus version is this, so every
/// index parser refuses a delta instead of misreading it.
pub const NOT_A_MINOR_VERSION: [u8; 4] = [0xff; 4];
pub const VERSION: u32 = 1;
/// The largest index a delta may describe.
pub const MAX_INDEX_SIZE: u64 = 1 << 30;
/// The largest header length and record size a delta may use as its blocks.
pub const MAX_BLOCK: u32 = 65536;
/// A reader follows at most this many versions back from a delta to its full copy.
pub const MAX_DELTA_CHAIN: usize = 64;
/// A writer stores a full copy after this many deltas in a row.
pub const DELTA_CHAIN_FULL_EVERY: usize = 16;
/// Indexes smaller than this are always stored whole.
pub const DELTA_MIN_INDEX: usize = 64 * 1024;
/// Bytes of a payload before its runs.
const FIXED: usize = 84;

/// The fixed part of a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaHead {
    pub base_size: u64,
    pub base_sha1: Guid,
    pub result_size: u64,
    pub result_sha1: Guid,
    pub head_len: u32,
    pub block_len: u32,
    pub run_count: u32,
}

/// Where blocks begin in a file of `len` bytes cut into a `head`-byte block and `block`-byte
/// blocks after it.
#[derive(Clone, Copy)]
struct Blocks {
    head: u64,
    block: u64,
    len: u64,
}

impl Blocks {
    fn count(&self) -> u64 {
        if self.len == 0 {
            0
        } else if self.len <= self.head {
            1
        } else {
            1 + (self.len - self.head).div_ceil(self.block)
        }
    }

    /// The first byte of block `i` (or the file's length when `i` is past the last block).
    fn start(&self, i: u64) -> u64 {
        if i == 0 {
            0
        } else {
            // i ≤ count ≤ 2^30 + 1 and block ≤ 2^16: no overflow.
            (self.head + (i - 1) * self.block).min(self.len)
        }
    }
}

/// `start_offset` and `record_size` from a `cyrus.index` header (big-endian at 12 and 16).
pub fn geometry(index: &[u8]) -> Option<(u32, u32)> {
    let h = u32::from_be_bytes(index.get(12..16)?.try_into().ok()?);
    let r = u32::from_be_bytes(index.get(16..20)?.try_into().ok()?);
    Some((h, r))
}

/// The delta that makes `result` from `base` (whose SHA-1 is `base_sha1`), when the rules of
/// the spec allow one: `result` at least `DELTA_MIN_INDEX` and at most `MAX_INDEX_SIZE` bytes,
/// the same `start_offset` and `record_size` in both (at least 24, and 1 to `MAX_BLOCK`), and
/// a payload less than half of `result`. `None`: store a full copy.
pub fn encode(base: &[u8], base_sha1: &Guid, result: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = Encoder::new(result)?;
    encoder.base_piece(base).then_some(())?;
    encoder.finish(base.len() as u64, base_sha1)
}

/// `encode` with the base given a piece at a time, in order (as `stream_chain` makes it), so
/// the base version is never held: each piece is compared with the result at the same offset,
/// block by block, and only which blocks changed is kept.
pub struct Encoder<'r> {
    result: &'r [u8],
    blocks: Blocks,
    /// Bytes of the base seen so far.
    seen: u64,
    /// One bit per block of the result: changed.
    changed: Vec<u64>,
    /// Bytes of the changed blocks so far, and the size under which a payload must stay.
    data_len: u64,
    limit: u64,
    /// The base's geometry was checked (its first 20 bytes seen).
    head: Vec<u8>,
}

impl<'r> Encoder<'r> {
    /// `None` when the rules of the spec say a full copy whatever the base (size, geometry).
    pub fn new(result: &'r [u8]) -> Option<Encoder<'r>> {
        if result.len() < DELTA_MIN_INDEX || result.len() as u64 > MAX_INDEX_SIZE {
            return None;
        }
        let (head, block) = geometry(result)?;
        if !(24..=MAX_BLOCK).contains(&head) || !(1..=MAX_BLOCK).contains(&block) {
            return None;
        }
        let blocks = Blocks {
            head: head as u64,
            block: block as u64,
            len: result.len() as u64,
        };
        Some(Encoder {
            result,
            blocks,
            seen: 0,
            changed: vec![0; blocks.count().div_ceil(64) as usize],
            data_len: 0,
            limit: result.len() as u64 / 2,
            head: Vec::with_capacity(20),
        })
    }

    /// The block holding byte `at` of the result.
    fn block_of(&self, at: u64) -> u64 {
        if at < self.blocks.head {
            0
        } else {
            1 + (at - self.blocks.head) / self.blocks.block
        }
    }

    fn mark(&mut self, i: u64) {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if self.changed[word] & bit == 0 {
            self.changed[word] |= bit;
            self.data_len += self.blocks.start(i + 1) - self.blocks.start(i);
        }
    }

    fn is_changed(&self, i: u64) -> bool {
        self.changed[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }

    /// The next piece of the base. `false`: a delta is ruled out already (another geometry, or
    /// too many changed bytes); the rest of the base need not be read.
    pub fn base_piece(&mut self, mut piece: &[u8]) -> bool {
        if self.head.len() < 20 {
            let n = (20 - self.head.len()).min(piece.len());
            self.head.extend_from_slice(&piece[..n]);
            if self.head.len() == 20 && geometry(&self.head) != geometry(self.result) {
                return false;
            }
        }
        let len = self.result.len() as u64;
        while !piece.is_empty() && self.seen < len {
            let i = self.block_of(self.seen);
            let end = self.blocks.start(i + 1);
            let n = ((end - self.seen) as usize).min(piece.len());
            let at = self.seen as usize;
            if !self.is_changed(i) && piece[..n] != self.result[at..at + n] {
                self.mark(i);
            }
            self.seen += n as u64;
            piece = &piece[n..];
        }
        // Bytes of the base past the result's end change nothing of it.
        self.seen += piece.len() as u64;
        FIXED as u64 + self.data_len < self.limit
    }

    /// The payload, once the whole base (`base_len` bytes, SHA-1 `base_sha1`) was given; `None`
    /// when the rules say a full copy.
    pub fn finish(mut self, base_len: u64, base_sha1: &Guid) -> Option<Vec<u8>> {
        if self.seen != base_len || self.head.len() < 20.min(base_len as usize) {
            return None;
        }
        if geometry(&self.head) != geometry(self.result) {
            return None;
        }
        // Blocks the base does not reach in full are changed.
        if base_len < self.result.len() as u64 {
            for i in self.block_of(base_len)..self.blocks.count() {
                self.mark(i);
            }
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in 0..self.blocks.count() {
            if !self.is_changed(i) {
                continue;
            }
            match runs.last_mut() {
                Some((first, count)) if *first + *count == i => *count += 1,
                _ => runs.push((i, 1)),
            }
            if (FIXED + 8 * runs.len()) as u64 + self.data_len >= self.limit {
                return None;
            }
        }
        let (head, block) = geometry(self.result)?;
        let result = self.result;
        let mut out = Vec::with_capacity(FIXED + 8 * runs.len() + self.data_len as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&NOT_A_MINOR_VERSION);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&base_len.to_le_bytes());
        out.extend_from_slice(&base_sha1.0);
        out.extend_from_slice(&(result.len() as u64).to_le_bytes());
        out.extend_from_slice(&Guid::of(result).0);
        out.extend_from_slice(&head.to_le_bytes());
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for (first, count) in runs {
            // Both below 2^31: the block count of a file of at most 1 GiB.
            out.extend_from_slice(&(first as u32).to_le_bytes());
            out.extend_from_slice(&(count as u32).to_le_bytes());
            let (s, e) = (self.blocks.start(first), self.blocks.start(first + count));
            out.extend_from_slice(&result[s as usize..e as usize]);
        }
        ((out.len() as u64) < self.limit).then_some(out)
    }
}

/// One run of changed blocks: the bytes `start..end` of the result, found at `data_at` in the
/// payload.
struct ChangedRun {
    start: u64,
    end: u64,
    data_at: usize,
}

/// A payload's runs, checked: in order, inside the result's blocks, their bytes present, and
/// nothing after the last.
fn changed_runs(payload: &[u8], head: &DeltaHead) -> Result<Vec<ChangedRun>, String> {
    // A delta cannot make more bytes than it and its base hold.
    if head.result_size > head.base_size.saturating_add(payload.len() as u64) {
        return Err(format!(
            "index delta makes {} bytes out of a {}-byte base and {} bytes of its own",
            head.result_size,
            head.base_size,
            payload.len()
        ));
    }
    let blocks = Blocks {
        head: head.head_len as u64,
        block: head.block_len as u64,
        len: head.result_size,
    };
    let count = blocks.count();
    let mut at = FIXED;
    let mut next_block = 0u64;
    // Each run takes at least 9 payload bytes, so the payload bounds the count.
    let mut runs = Vec::with_capacity((head.run_count as usize).min(payload.len() / 9));
    for k in 0..head.run_count {
        let fields = payload
            .get(at..at + 8)
            .ok_or_else(|| format!("index delta ends in run {k} of {}", head.run_count))?;
        let first = u32_at(fields, 0) as u64;
        let n = u32_at(fields, 4) as u64;
        at += 8;
        if n == 0 || first < next_block || first + n > count {
            return Err(format!(
                "index delta run {k} (blocks {first}+{n}) is out of order or outside the \
                 {count} blocks of a {}-byte file",
                head.result_size
            ));
        }
        let (start, end) = (blocks.start(first), blocks.start(first + n));
        let len = (end - start) as usize;
        if payload.len() - at < len {
            return Err(format!(
                "index delta run {k} needs {len} bytes, {} remain",
                payload.len() - at
            ));
        }
        runs.push(ChangedRun {
            start,
            end,
            data_at: at,
        });
        at += len;
        next_block = first + n;
    }
    if at != payload.len() {
        return Err(format!(
            "index delta has {} bytes after its last run",
            payload.len() - at
        ));
    }
    Ok(runs)
}

/// Hands `sink` the bytes of the version that `payloads` (the deltas after a full copy, in
/// order) make of the full copy read from `base` (`base_len` bytes, SHA-1 `base_sha1`), in
/// order and in pieces, without holding either version: each byte is the newest delta's that
/// changed it, else the full copy's. The heads must chain (each delta's base is the version
/// before it, by length and SHA-1), the full copy must read back as its length and SHA-1, and
/// the bytes made must hash to the last delta's result: an error otherwise, after which what
/// `sink` was given is not to be trusted. The versions in between are not made, so a chain
/// `apply` would refuse in the middle can stream here, but only to exactly the recorded
/// result.
pub fn stream_chain(
    base: &mut dyn std::io::Read,
    base_len: u64,
    base_sha1: &Guid,
    payloads: &[Vec<u8>],
    sink: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    use sha1::Digest;
    if payloads.len() > MAX_DELTA_CHAIN {
        return Err(format!(
            "more than {MAX_DELTA_CHAIN} index deltas follow a full copy"
        ));
    }
    let mut deltas = Vec::with_capacity(payloads.len());
    let (mut len, mut sha1) = (base_len, *base_sha1);
    for payload in payloads {
        let head = read_head(payload)?;
        if head.base_size != len || head.base_sha1 != sha1 {
            return Err(format!(
                "index delta applies to a version of {} bytes with SHA-1 {}, not to the \
                 version stored before it ({len} bytes, SHA-1 {sha1})",
                head.base_size, head.base_sha1
            ));
        }
        (len, sha1) = (head.result_size, head.result_sha1);
        deltas.push((changed_runs(payload, &head)?, payload.as_slice()));
    }
    let final_len = len;
    let mut cursors = vec![0usize; deltas.len()];
    let mut made = sha1::Sha1::default();
    let mut base_hash = sha1::Sha1::default();
    let mut base_read = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let mut read_base = |to: u64, emit: bool, sink: &mut dyn FnMut(&[u8]) -> Result<(), String>| {
        while base_read < to {
            let n = ((to - base_read) as usize).min(buf.len());
            base.read_exact(&mut buf[..n])
                .map_err(|e| format!("full copy of the index ends early: {e}"))?;
            base_hash.update(&buf[..n]);
            base_read += n as u64;
            if emit {
                sink(&buf[..n])?;
            }
        }
        Ok::<(), String>(())
    };
    let mut x = 0u64;
    while x < final_len {
        // Each delta's first run that ends after x.
        for (d, (runs, _)) in deltas.iter().enumerate() {
            while runs.get(cursors[d]).is_some_and(|r| r.end <= x) {
                cursors[d] += 1;
            }
        }
        let covering = (0..deltas.len())
            .rev()
            .find(|&d| deltas[d].0.get(cursors[d]).is_some_and(|r| r.start <= x));
        // Up to where the answer stays the same: the next start of a run of a newer delta.
        let newer_start = |from: usize| {
            (from..deltas.len())
                .filter_map(|d| deltas[d].0.get(cursors[d]).map(|r| r.start))
                .filter(|&s| s > x)
                .min()
                .unwrap_or(u64::MAX)
        };
        match covering {
            Some(d) => {
                let run = &deltas[d].0[cursors[d]];
                let y = run.end.min(newer_start(d + 1)).min(final_len);
                let from = run.data_at + (x - run.start) as usize;
                let piece = &deltas[d].1[from..from + (y - x) as usize];
                made.update(piece);
                sink(piece)?;
                x = y;
            }
            None => {
                let y = newer_start(0).min(final_len);
                if y > base_len {
                    return Err(format!(
                        "index delta copies bytes {x}..{y} from a {base_len}-byte full copy"
                    ));
                }
                read_base(x, false, sink)?;
                let mut emit = |piece: &[u8]| {
                    made.update(piece);
                    sink(piece)
                };
                read_base(y, true, &mut emit)?;
                x = y;
            }
        }
    }
    read_base(base_len, false, sink)?;
    let mut extra = [0u8; 1];
    if base.read(&mut extra).map_err(|e| e.to_string())? != 0 {
        return Err(format!(
            "full copy of the index is longer than its {base_len} bytes"
        ));
    }
    if Guid(base_hash.finalize().into()) != *base_sha1 {
        return Err(format!(
            "full copy of the index does not hash to {base_sha1}"
        ));
    }
    if !deltas.is_empty() && Guid(made.finalize().into()) != sha1 {
        return Err(format!("index delta result does not hash to {sha1}"));
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    Guid(b[at..at + 20].try_into().expect("20 bytes"))
}

/// Whether `bytes` begin as a delta payload does (its magic).
pub fn is_delta(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The fixed part of a payload, checked: magic, the byte-8 marker, version, sizes and block
/// geometry in range.
pub fn read_head(payload: &[u8]) -> Result<DeltaHead, String> {
    if payload.len() < FIXED {
        return Err(format!(
            "index delta of {} bytes is shorter than its {FIXED}-byte head",
            payload.len()
        ));
    }
    if &payload[..8] != MAGIC || payload[8..12] != NOT_A_MINOR_VERSION {
        return Err("not an index delta (bad magic)".into());
    }
    let version = u32_at(payload, 12);
    if version != VERSION {
        return Err(format!("index delta version {version} is not {VERSION}"));
    }
    let head = DeltaHead {
        base_size: u64_at(payload, 16),
        base_sha1: guid_at(payload, 24),
        result_size: u64_at(payload, 44),
        result_sha1: guid_at(payload, 52),
        head_len: u32_at(payload, 72),
        block_len: u32_at(payload, 76),
        run_count: u32_at(payload, 80),
    };
    if head.result_size > MAX_INDEX_SIZE {
        return Err(format!(
            "index delta makes {} bytes, more than {MAX_INDEX_SIZE}",
            head.result_size
        ));
    }
    if !(1..=MAX_BLOCK).contains(&head.head_len) || !(1..=MAX_BLOCK).contains(&head.block_len) {
        return Err(format!(
            "index delta blocks {}/{} out of range",
            head.head_len, head.block_len
        ));
    }
    Ok(head)
}

/// The version `payload` makes from `base`, whose SHA-1 the caller knows (`base_sha1`: it
/// checked those bytes when it read or made them). Every check of the spec is made; the result
/// hashes to the SHA-1 the delta records or this is an error.
pub fn apply(payload: &[u8], base: &[u8], base_sha1: &Guid) -> Result<Vec<u8>, String> {
    apply_in_place(payload, base.to_vec(), base_sha1)
}

/// As `apply`, turning `base` itself into the result: the bytes a delta does not change stay
/// where they are, so a large index is never held twice (issue 19, flat memory).
pub fn apply_in_place(
    payload: &[u8],
    mut base: Vec<u8>,
    base_sha1: &Guid,
) -> Result<Vec<u8>, String> {
    let head = read_head(payload)?;
    if head.base_size != base.len() as u64 || head.base_sha1 != *base_sha1 {
        return Err(format!(
            "index delta applies to a version of {} bytes with SHA-1 {}, not to the version \
             stored before it ({} bytes, SHA-1 {})",
            head.base_size,
            head.base_sha1,
            base.len(),
            base_sha1
        ));
    }
    let base_len = base.len() as u64;
    let runs = changed_runs(payload, &head)?;
    // The result's bytes are made in order; `done` is how far. A byte the delta does not carry
    // is the base's at the same offset, already in place, so it must lie inside the base.
    base.resize(head.result_size as usize, 0);
    let mut out = base;
    let mut done = 0u64;
    let copy_base = |done: &mut u64, to: u64| -> Result<(), String> {
        let from = *done;
        if from == to {
            return Ok(());
        }
        if to > base_len {
            return Err(format!(
                "index delta copies bytes {from}..{to} from a {base_len}-byte base"
            ));
        }
        *done = to;
        Ok(())
    };
    for run in &runs {
        copy_base(&mut done, run.start)?;
        let len = (run.end - run.start) as usize;
        out[run.start as usize..run.end as usize]
            .copy_from_slice(&payload[run.data_at..run.data_at + len]);
        done = run.end;
    }
    copy_base(&mut done, head.result_size)?;
    if Guid::of(&out) != head.result_sha1 {
        return Err(format!(
            "index delta result does not hash to {}",
            head.result_sha1
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v17-shaped index: a 160-byte header, `n` records of 104 bytes, record `i` filled with
    /// a pattern of `i` and `salt`.
    fn index(n: u32, salt: u8) -> Vec<u8> {
        let mut out = vec![0u8; 160];
        out[8..12].copy_from_slice(&17u32.to_be_bytes());
        out[12..16].copy_from_slice(&160u32.to_be_bytes());
        out[16..20].copy_from_slice(&104u32.to_be_bytes());
        out[20..24].copy_from_slice(&n.to_be_bytes());
        out[100] = salt;
        for i in 0..n {
            let mut rec = [0u8; 104];
            rec[..4].copy_from_slice(&(i + 1).to_be_bytes());
            for (j, b) in rec[4..].iter_mut().enumerate() {
                *b = (i as usize * 7 + j) as u8;
            }
            out.extend_from_slice(&rec);
        }
        out
    }

    fn flip_records(bytes: &mut [u8], every: usize) {
        let n = (bytes.len() - 160) / 104;
        for i in (0..n).step_by(every) {
            bytes[160 + i * 104 + 50] ^= 0x20;
        }
        bytes[60] ^= 1;
    }

    #[test]
    fn one_percent_of_records_changed_makes_a_small_delta_that_applies_exactly() {
        let base = index(5000, 1);
        let mut new = base.clone();
        flip_records(&mut new, 100);
        let d = encode(&base, &Guid::of(&base), &new).expect("a delta");
        // 50 records and the header, with 8 bytes a run.
        assert!(d.len() < FIXED + 50 * (104 + 8) + 160 + 8, "{}", d.len());
        assert_eq!(apply(&d, &base, &Guid::of(&base)).unwrap(), new);
        assert_eq!(read_head(&d).unwrap().result_sha1, Guid::of(&new));
    }

    #[test]
    fn appended_records_truncation_and_a_tail_apply_exactly() {
        let base = index(1000, 1);
        // New messages: one run of new records.
        let mut grown = index(1010, 2);
        grown[160..160 + 1000 * 104].copy_from_slice(&base[160..]);
        let d = encode(&base, &Guid::of(&base), &grown).unwrap();
        assert_eq!(apply(&d, &base, &Guid::of(&base)).unwrap(), grown);
        // Fewer records (a shorter file) and a partial tail block.
        let mut shorter = base[..base.len() - 3 * 104 - 40].to_vec();
        shorter[100] = 9;
        let d = encode(&base, &Guid::of(&base), &shorter).unwrap();
        assert_eq!(apply(&d, &base, &Guid::of(&base)).unwrap(), shorter);
        // A longer tail than the base had.
        let mut tail = base.clone();
        tail.extend_from_slice(b"tail");
        let d = encode(&base, &Guid::of(&base), &tail).unwrap();
        assert_eq!(apply(&d, &base, &Guid::of(&base)).unwrap(), tail);
    }

    fn streamed(full: &[u8], payloads: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        stream_chain(
            &mut &full[..],
            full.len() as u64,
            &Guid::of(full),
            payloads,
            &mut |piece| {
                out.extend_from_slice(piece);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// A chain streamed from its full copy makes exactly what applying its deltas one by one
    /// makes, through growth, truncation, regrowth and changes that overlap from version to
    /// version; a broken link anywhere is refused.
    #[test]
    fn a_streamed_chain_is_the_chain_applied() {
        let mut versions = vec![index(3000, 1)];
        let mut next = versions[0].clone();
        flip_records(&mut next, 97);
        versions.push(next.clone());
        next.extend_from_slice(&index(3020, 3)[160 + 3000 * 104..]);
        flip_records(&mut next, 61);
        versions.push(next.clone());
        next.truncate(next.len() - 30 * 104 - 17);
        next[100] ^= 4;
        versions.push(next.clone());
        next.extend_from_slice(&vec![0x5a; 104 * 12 + 33]);
        flip_records(&mut next, 89);
        versions.push(next.clone());
        let payloads: Vec<Vec<u8>> = versions
            .windows(2)
            .map(|w| encode(&w[0], &Guid::of(&w[0]), &w[1]).expect("a delta"))
            .collect();
        for k in 0..payloads.len() {
            assert_eq!(
                streamed(&versions[0], &payloads[..=k]).unwrap(),
                versions[k + 1],
                "version {}",
                k + 1
            );
        }
        assert_eq!(streamed(&versions[0], &[]).unwrap(), versions[0]);
        // A payload out of order, a damaged full copy, a damaged payload.
        let swapped = vec![payloads[1].clone(), payloads[0].clone()];
        assert!(streamed(&versions[0], &swapped).is_err());
        let mut bad_full = versions[0].clone();
        bad_full[5000] ^= 1;
        let mut out = Vec::new();
        let r = stream_chain(
            &mut &bad_full[..],
            bad_full.len() as u64,
            &Guid::of(&versions[0]),
            &payloads,
            &mut |p| {
                out.extend_from_slice(p);
                Ok(())
            },
        );
        assert!(r.unwrap_err().contains("does not hash"));
        for at in [FIXED + 3, FIXED + 20, payloads[2].len() - 1] {
            let mut bad = payloads.clone();
            bad[2][at] ^= 0x40;
            // Up to the damaged delta's own version: a later delta may overwrite the bytes a
            // flip hit, and then the version it makes is still exact.
            assert!(streamed(&versions[0], &bad[..=2]).is_err(), "flip at {at}");
        }
    }

    /// The base given a piece at a time, in pieces of any size, makes the payload `encode`
    /// makes from it whole, through growth and truncation, and the same refusals.
    #[test]
    fn a_base_fed_in_pieces_encodes_as_the_whole_base() {
        let base = index(3000, 1);
        let mut flipped = base.clone();
        flip_records(&mut flipped, 97);
        let mut grown = flipped.clone();
        grown.extend_from_slice(&vec![7u8; 104 * 9 + 5]);
        let shorter = flipped[..flipped.len() - 104 * 4 - 3].to_vec();
        let mut most = base.clone();
        flip_records(&mut most, 2);
        for result in [&flipped, &grown, &shorter, &most, &base] {
            for from in [&base, &shorter, &grown] {
                let whole = encode(from, &Guid::of(from), result);
                for piece in [1usize, 7, 104, 4096, from.len()] {
                    let mut encoder = Encoder::new(result).expect("large enough");
                    let mut going = true;
                    for chunk in from.chunks(piece) {
                        if !encoder.base_piece(chunk) {
                            going = false;
                            break;
                        }
                    }
                    let streamed = if going {
                        encoder.finish(from.len() as u64, &Guid::of(from))
                    } else {
                        None
                    };
                    assert_eq!(streamed, whole, "pieces of {piece}");
                }
            }
        }
        assert!(encode(&base, &Guid::of(&base), &most).is_none());
    }

    #[test]
    fn full_copies_when_the_rules_say_so() {
        let base = index(1000, 1);
        let g = Guid::of(&base);
        // Small index.
        assert!(encode(&index(10, 1), &Guid::of(&index(10, 1)), &index(10, 2)).is_none());
        // Most records changed.
        let mut new = base.clone();
        flip_records(&mut new, 2);
        assert!(encode(&base, &g, &new).is_none());
        // Another record size.
        let mut other = base.clone();
        other[16..20].copy_from_slice(&144u32.to_be_bytes());
        assert!(encode(&base, &g, &other).is_none());
        // A header length under 24.
        let mut odd = base.clone();
        odd[12..16].copy_from_slice(&8u32.to_be_bytes());
        let mut odd_base = base.clone();
        odd_base[12..16].copy_from_slice(&8u32.to_be_bytes());
        assert!(encode(&odd_base, &Guid::of(&odd_base), &odd).is_none());
        // Unchanged: a delta of just the head, still smaller.
        let same = encode(&base, &g, &base).unwrap();
        assert_eq!(same.len(), FIXED);
        assert_eq!(apply(&same, &base, &g).unwrap(), base);
    }

    #[test]
    fn the_wrong_base_is_refused_not_patched() {
        let base = index(1000, 1);
        let mut new = base.clone();
        flip_records(&mut new, 100);
        let d = encode(&base, &Guid::of(&base), &new).unwrap();
        let other = index(1000, 3);
        let err = apply(&d, &other, &Guid::of(&other)).unwrap_err();
        assert!(err.contains("not to the version stored before it"), "{err}");
        let err = apply(&d, &base[..base.len() - 1], &Guid::of(&base)).unwrap_err();
        assert!(err.contains("applies to a version"), "{err}");
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_an_error_never_wrong_bytes() {
        let base = index(700, 1);
        let g = Guid::of(&base);
        let mut new = base.clone();
        flip_records(&mut new, 50);
        new.truncate(new.len() - 104);
        let d = encode(&base, &g, &new).unwrap();
        for i in 0..d.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = d.clone();
                bad[i] ^= bit;
                match apply(&bad, &base, &g) {
                    Ok(out) => panic!("byte {i} bit {bit:#x}: applied ({} bytes)", out.len()),
                    Err(e) => assert!(!e.is_empty()),
                }
            }
        }
        for len in 0..d.len() {
            assert!(apply(&d[..len], &base, &g).is_err(), "truncated to {len}");
        }
        let mut longer = d.clone();
        longer.push(0);
        assert!(apply(&longer, &base, &g).is_err());
    }

    #[test]
    fn hostile_heads_are_refused_before_allocating() {
        let base = index(700, 1);
        let g = Guid::of(&base);
        let mut new = base.clone();
        flip_records(&mut new, 50);
        let d = encode(&base, &g, &new).unwrap();
        let with = |at: usize, bytes: &[u8]| {
            let mut bad = d.clone();
            bad[at..at + bytes.len()].copy_from_slice(bytes);
            apply(&bad, &base, &g)
        };
        // A result far larger than base and delta could hold.
        assert!(with(44, &(MAX_INDEX_SIZE).to_le_bytes())
            .unwrap_err()
            .contains("bytes out of"));
        assert!(with(44, &u64::MAX.to_le_bytes())
            .unwrap_err()
            .contains("more than"));
        assert!(with(72, &0u32.to_le_bytes()).is_err());
        assert!(with(76, &(MAX_BLOCK + 1).to_le_bytes()).is_err());
        assert!(with(80, &u32::MAX.to_le_bytes()).is_err());
        // A run whose count would overflow.
        assert!(with(FIXED, &[0xff; 8]).is_err());
    }

    #[test]
    fn a_cyrus_index_parser_refuses_a_delta() {
        let base = index(700, 1);
        let mut new = base.clone();
        flip_records(&mut new, 50);
        let d = encode(&base, &Guid::of(&base), &new).unwrap();
        assert!(crate::spool::index::parse(&d).is_err());
        assert!(is_delta(&d) && !is_delta(&base));
    }
}
