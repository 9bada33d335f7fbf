//! The twoskip format (Cyrus 2.5+, default for mailboxes.db, seen and annotations): a 64-byte
//! header and append-only records linked into a skiplist, with CRC32s over every byte.
//!
//! This reader walks the level-0 list of the committed part of the file (everything below the
//! header's `current_size`) and returns its live records in list order. It verifies the header
//! CRC and the head and tail CRC of every record it visits. It never writes and never runs
//! Cyrus's recovery; an uncommitted tail is simply not looked at.

use std::collections::HashSet;

use super::{at, be_u16, be_u32, be_u64, Record};
use crate::spool::ParseError;

/// The first 20 bytes of every twoskip file.
pub const MAGIC: &[u8; 20] = b"\xA1\x02\x8B\x0Dtwoskip file\0\0\0\0";

const HEADER_SIZE: usize = 64;
const OFFSET_VERSION: usize = 20;
const OFFSET_GENERATION: usize = 24;
const OFFSET_NUM_RECORDS: usize = 32;
const OFFSET_REPACK_SIZE: usize = 40;
const OFFSET_CURRENT_SIZE: usize = 48;
const OFFSET_FLAGS: usize = 56;
const OFFSET_CRC32: usize = 60;

/// The only format version Cyrus has written (it refuses anything newer).
const VERSION: u32 = 1;
/// Header flag set for the whole of a write transaction and cleared by its commit.
const FLAG_DIRTY: u32 = 1;
/// The dummy record, head of every list, always directly follows the header.
const DUMMY_OFFSET: usize = HEADER_SIZE;
/// Highest record level; a record of level L carries L + 1 pointers.
const MAX_LEVEL: u8 = 31;
const MAX_POINTERS: usize = MAX_LEVEL as usize + 1;

const TYPE_DUMMY: u8 = b'=';
const TYPE_RECORD: u8 = b'+';
const TYPE_DELETE: u8 = b'-';
const TYPE_COMMIT: u8 = b'$';

/// Lengths at these values mean "the real length follows as a u64".
const LONG_KEYLEN: u16 = u16::MAX;
const LONG_VALLEN: u32 = u32::MAX;

/// The header fields, as stored (all big-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub generation: u64,
    pub num_records: u64,
    pub repack_size: u64,
    pub current_size: u64,
    pub flags: u32,
}

impl Header {
    /// A writer was interrupted (or is running): counts in the header may be stale.
    pub fn is_dirty(&self) -> bool {
        self.flags & FLAG_DIRTY != 0
    }
}

/// Reads and checks the 64-byte header: magic, CRC and version.
pub fn header(bytes: &[u8]) -> Result<Header, ParseError> {
    let Some(raw) = bytes.get(..HEADER_SIZE) else {
        return Err(ParseError::new(
            at(bytes.len()),
            format!(
                "twoskip file ends after {} bytes, inside the {HEADER_SIZE}-byte header",
                bytes.len()
            ),
        ));
    };
    if !raw.starts_with(MAGIC) {
        return Err(ParseError::new(0, "not a twoskip file (bad magic)"));
    }
    let field32 = |offset| be_u32(raw, offset).unwrap_or_default();
    let field64 = |offset| be_u64(raw, offset).unwrap_or_default();
    let stored_crc = field32(OFFSET_CRC32);
    let computed_crc = crc32fast::hash(&raw[..OFFSET_CRC32]);
    if stored_crc != computed_crc {
        return Err(ParseError::new(
            at(OFFSET_CRC32),
            format!(
                "twoskip header CRC mismatch: stored {stored_crc:08x}, computed {computed_crc:08x}"
            ),
        ));
    }
    let header = Header {
        version: field32(OFFSET_VERSION),
        generation: field64(OFFSET_GENERATION),
        num_records: field64(OFFSET_NUM_RECORDS),
        repack_size: field64(OFFSET_REPACK_SIZE),
        current_size: field64(OFFSET_CURRENT_SIZE),
        flags: field32(OFFSET_FLAGS),
    };
    if header.version == 0 || header.version > VERSION {
        return Err(ParseError::new(
            at(OFFSET_VERSION),
            format!(
                "twoskip version {} is not supported (only {VERSION})",
                header.version
            ),
        ));
    }
    Ok(header)
}

/// One record as stored, borrowed from the file.
struct RawRecord<'a> {
    kind: u8,
    level: u8,
    /// nextloc[0] and nextloc[1] are the two alternative level-0 pointers; nextloc[i + 1] is
    /// the pointer for level i >= 1.
    next: [u64; MAX_POINTERS],
    key: &'a [u8],
    value: &'a [u8],
}

/// Reads the record at `offset` of `data` (the committed bytes only) and checks both CRCs.
fn read_record(data: &[u8], offset: usize) -> Result<RawRecord<'_>, ParseError> {
    let past_end = |what: &str| {
        ParseError::new(
            at(offset),
            format!(
                "twoskip record {what} runs past the committed end of the file ({} bytes)",
                data.len()
            ),
        )
    };
    let (Some(&kind), Some(&level), Some(short_keylen), Some(short_vallen)) = (
        data.get(offset),
        data.get(offset.wrapping_add(1)),
        be_u16(data, offset.wrapping_add(2)),
        be_u32(data, offset.wrapping_add(4)),
    ) else {
        return Err(past_end("header"));
    };
    if level > MAX_LEVEL {
        return Err(ParseError::new(
            at(offset) + 1,
            format!("twoskip record level {level} is above the maximum {MAX_LEVEL}"),
        ));
    }
    let mut pos = offset + 8;
    let mut keylen = u64::from(short_keylen);
    if short_keylen == LONG_KEYLEN {
        keylen = be_u64(data, pos).ok_or_else(|| past_end("key length"))?;
        pos += 8;
    }
    let mut vallen = u64::from(short_vallen);
    if short_vallen == LONG_VALLEN {
        vallen = be_u64(data, pos).ok_or_else(|| past_end("value length"))?;
        pos += 8;
    }
    let mut next = [0u64; MAX_POINTERS];
    for slot in next.iter_mut().take(usize::from(level) + 1) {
        *slot = be_u64(data, pos).ok_or_else(|| past_end("pointers"))?;
        pos += 8;
    }
    let crc_pos = pos;
    let (Some(head_crc), Some(tail_crc)) = (be_u32(data, crc_pos), be_u32(data, crc_pos + 4))
    else {
        return Err(past_end("CRCs"));
    };
    // The head CRC covers type, level, lengths and pointers: check it before trusting any of
    // them to locate the key and value.
    let computed_head = crc32fast::hash(&data[offset..crc_pos]);
    if computed_head != head_crc {
        return Err(ParseError::new(
            at(crc_pos),
            format!(
                "twoskip record at {offset}: head CRC mismatch: stored {head_crc:08x}, \
                 computed {computed_head:08x}"
            ),
        ));
    }
    let key_start = crc_pos + 8;
    let body_len = keylen
        .checked_add(vallen)
        .and_then(|n| n.checked_next_multiple_of(8))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| past_end("key and value"))?;
    let body_end = key_start
        .checked_add(body_len)
        .filter(|&end| end <= data.len())
        .ok_or_else(|| past_end("key and value"))?;
    let body = &data[key_start..body_end];
    let computed_tail = crc32fast::hash(body);
    if computed_tail != tail_crc {
        return Err(ParseError::new(
            at(crc_pos + 4),
            format!(
                "twoskip record at {offset}: tail CRC mismatch (key, value and padding): \
                 stored {tail_crc:08x}, computed {computed_tail:08x}"
            ),
        ));
    }
    // keylen + vallen <= body_len <= data.len(), so both fit in usize.
    let (key, rest) = body.split_at(keylen as usize);
    let value = &rest[..vallen as usize];
    Ok(RawRecord {
        kind,
        level,
        next,
        key,
        value,
    })
}

/// The committed successor at level 0. A writer only ever rewrites the one of the two level-0
/// pointers that is either already past `current_size` or the older one, so the larger pointer
/// below `current_size` is the committed link.
fn level0_next(record: &RawRecord, record_offset: usize, end: usize) -> Result<u64, ParseError> {
    let (a, b) = (record.next[0], record.next[1]);
    let end64 = at(end);
    let chosen = match (a < end64, b < end64) {
        (true, true) => a.max(b),
        (true, false) => a,
        (false, true) => b,
        (false, false) => {
            return Err(ParseError::new(
                at(record_offset) + 8,
                format!(
                    "twoskip record at {record_offset}: both level-0 pointers ({a}, {b}) point \
                     past the committed size {end}"
                ),
            ))
        }
    };
    Ok(chosen)
}

/// The committed live records in level-0 (key) order.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>, ParseError> {
    let header = header(bytes)?;
    let end = usize::try_from(header.current_size)
        .ok()
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            ParseError::new(
                at(bytes.len()),
                format!(
                    "twoskip file is {} bytes but its header says {} bytes are committed \
                     (truncated?)",
                    bytes.len(),
                    header.current_size
                ),
            )
        })?;
    if end <= DUMMY_OFFSET {
        return Err(ParseError::new(
            at(OFFSET_CURRENT_SIZE),
            format!("twoskip committed size {end} leaves no room for the dummy record"),
        ));
    }
    let data = &bytes[..end];

    let dummy = read_record(data, DUMMY_OFFSET)?;
    if dummy.kind != TYPE_DUMMY {
        return Err(ParseError::new(
            at(DUMMY_OFFSET),
            format!(
                "twoskip record at {DUMMY_OFFSET} has type {:?}, not the dummy '='",
                char::from(dummy.kind)
            ),
        ));
    }

    let mut records = Vec::new();
    // Every record is visited at most once, so a pointer cycle is an error, not a hang.
    let mut visited = HashSet::from([DUMMY_OFFSET]);
    let mut from = DUMMY_OFFSET;
    let mut next = level0_next(&dummy, DUMMY_OFFSET, end)?;
    while next != 0 {
        // next < end <= bytes.len(), so it fits in usize.
        let offset = next as usize;
        if offset < HEADER_SIZE || !offset.is_multiple_of(8) {
            return Err(ParseError::new(
                at(from),
                format!("twoskip record at {from} points to {offset}, which cannot start a record"),
            ));
        }
        if !visited.insert(offset) {
            return Err(ParseError::new(
                at(from),
                format!("twoskip level-0 list loops: record at {from} points back to {offset}"),
            ));
        }
        let record = read_record(data, offset)?;
        next = match record.kind {
            TYPE_RECORD => {
                records.push(Record {
                    key: record.key.to_vec(),
                    value: record.value.to_vec(),
                });
                level0_next(&record, offset, end)?
            }
            // A tombstone: its single pointer is the deleted record's successor.
            TYPE_DELETE => match record.next[0] {
                successor if successor < at(end) => successor,
                successor => {
                    return Err(ParseError::new(
                        at(offset) + 8,
                        format!(
                            "twoskip delete record at {offset} points to {successor}, past the \
                             committed size {end}"
                        ),
                    ))
                }
            },
            other => {
                let what = match other {
                    TYPE_DUMMY => "a second dummy".to_string(),
                    TYPE_COMMIT => "a commit record".to_string(),
                    _ => format!("unknown record type {other:#04x}"),
                };
                return Err(ParseError::new(
                    at(offset),
                    format!(
                        "twoskip level-0 list reaches {what} at {offset} (level {})",
                        record.level
                    ),
                ));
            }
        };
        from = offset;
    }

    // A clean header's count is exact; a dirty one was written mid-transaction.
    if !header.is_dirty() && records.len() as u64 != header.num_records {
        return Err(ParseError::new(
            at(OFFSET_NUM_RECORDS),
            format!(
                "twoskip header counts {} records but the list holds {}",
                header.num_records,
                records.len()
            ),
        ));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds twoskip files record by record, as Cyrus lays them out, for format tests.
    struct Builder {
        pub bytes: Vec<u8>,
    }

    impl Builder {
        /// A header placeholder and a dummy of level 31 whose first pointers are `dummy_next`.
        pub fn new(dummy_next: &[u64]) -> Builder {
            let mut b = Builder {
                bytes: vec![0; HEADER_SIZE],
            };
            let mut ptrs = [0u64; MAX_POINTERS];
            ptrs[..dummy_next.len()].copy_from_slice(dummy_next);
            b.push(TYPE_DUMMY, MAX_LEVEL, b"", b"", &ptrs);
            b
        }

        /// The bytes of one record with correct CRCs.
        pub fn record(kind: u8, level: u8, key: &[u8], value: &[u8], ptrs: &[u64]) -> Vec<u8> {
            assert_eq!(ptrs.len(), usize::from(level) + 1);
            let mut head = vec![kind, level];
            let long_key = key.len() >= usize::from(LONG_KEYLEN);
            let long_val = value.len() >= LONG_VALLEN as usize;
            let short_key = if long_key {
                LONG_KEYLEN
            } else {
                key.len() as u16
            };
            head.extend_from_slice(&short_key.to_be_bytes());
            let short_val = if long_val {
                LONG_VALLEN
            } else {
                value.len() as u32
            };
            head.extend_from_slice(&short_val.to_be_bytes());
            if long_key {
                head.extend_from_slice(&(key.len() as u64).to_be_bytes());
            }
            if long_val {
                head.extend_from_slice(&(value.len() as u64).to_be_bytes());
            }
            for p in ptrs {
                head.extend_from_slice(&p.to_be_bytes());
            }
            let mut tail = key.to_vec();
            tail.extend_from_slice(value);
            tail.resize(tail.len().next_multiple_of(8), 0);
            let mut out = head.clone();
            out.extend_from_slice(&crc32fast::hash(&head).to_be_bytes());
            out.extend_from_slice(&crc32fast::hash(&tail).to_be_bytes());
            out.extend_from_slice(&tail);
            out
        }

        /// Appends a record; returns its offset.
        pub fn push(&mut self, kind: u8, level: u8, key: &[u8], value: &[u8], ptrs: &[u64]) -> u64 {
            let offset = self.bytes.len() as u64;
            self.bytes
                .extend_from_slice(&Self::record(kind, level, key, value, ptrs));
            offset
        }

        /// The offset the next pushed record will get.
        pub fn next_offset(&self) -> u64 {
            self.bytes.len() as u64
        }

        /// Rewrites the record at `offset` with new pointers (as Cyrus's stitch does).
        pub fn repoint(
            &mut self,
            offset: u64,
            kind: u8,
            level: u8,
            key: &[u8],
            value: &[u8],
            ptrs: &[u64],
        ) {
            let rec = Self::record(kind, level, key, value, ptrs);
            let o = offset as usize;
            self.bytes[o..o + rec.len()].copy_from_slice(&rec);
        }

        pub fn finish(mut self, current_size: u64, num_records: u64, flags: u32) -> Vec<u8> {
            let mut h = [0u8; HEADER_SIZE];
            h[..20].copy_from_slice(MAGIC);
            h[OFFSET_VERSION..][..4].copy_from_slice(&VERSION.to_be_bytes());
            h[OFFSET_GENERATION..][..8].copy_from_slice(&1u64.to_be_bytes());
            h[OFFSET_NUM_RECORDS..][..8].copy_from_slice(&num_records.to_be_bytes());
            h[OFFSET_REPACK_SIZE..][..8].copy_from_slice(&current_size.to_be_bytes());
            h[OFFSET_CURRENT_SIZE..][..8].copy_from_slice(&current_size.to_be_bytes());
            h[OFFSET_FLAGS..][..4].copy_from_slice(&flags.to_be_bytes());
            let crc = crc32fast::hash(&h[..OFFSET_CRC32]);
            h[OFFSET_CRC32..].copy_from_slice(&crc.to_be_bytes());
            self.bytes[..HEADER_SIZE].copy_from_slice(&h);
            self.bytes
        }
    }

    fn rec(key: &str, value: &str) -> Record {
        Record {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    /// Size of a level-1 record with short key+value of `kv` bytes.
    fn size1(kv: usize) -> u64 {
        (8 + 16 + 8 + kv.next_multiple_of(8)) as u64
    }

    const DUMMY_SIZE: u64 = 8 + 32 * 8 + 8;

    #[test]
    fn empty_database() {
        let b = Builder::new(&[]);
        let len = b.next_offset();
        assert_eq!(len, HEADER_SIZE as u64 + DUMMY_SIZE);
        assert_eq!(parse(&b.finish(len, 0, 0)), Ok(vec![]));
    }

    /// Records are returned in list order, not file order: "c" is stored first.
    #[test]
    fn list_order_not_file_order() {
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let (c, a) = (first, first + size1(2));
        let b_off = a + size1(2);
        let mut b = Builder::new(&[a, 0]);
        b.push(TYPE_RECORD, 1, b"c", b"3", &[0, 0]);
        b.push(TYPE_RECORD, 1, b"a", b"1", &[b_off, 0]);
        b.push(TYPE_RECORD, 1, b"b", b"2", &[0, c]);
        let len = b.next_offset();
        let got = parse(&b.finish(len, 3, 0)).unwrap();
        assert_eq!(got, vec![rec("a", "1"), rec("b", "2"), rec("c", "3")]);
    }

    /// An interrupted transaction: the dummy's newer level-0 pointer and the new record lie
    /// past current_size; the older pointer is the committed link.
    #[test]
    fn uncommitted_pointer_and_tail_are_ignored() {
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let mut b = Builder::new(&[first, 0]);
        b.push(TYPE_RECORD, 1, b"k", b"old", &[0, 0]);
        let committed = b.next_offset();
        let newer = b.push(TYPE_RECORD, 1, b"a", b"new", &[first, 0]);
        b.repoint(HEADER_SIZE as u64, TYPE_DUMMY, MAX_LEVEL, b"", b"", &{
            let mut p = [0u64; MAX_POINTERS];
            p[0] = first;
            p[1] = newer;
            p
        });
        let file = b.finish(committed, 0, FLAG_DIRTY);
        assert_eq!(parse(&file), Ok(vec![rec("k", "old")]));
        // Cut at exactly the committed size: the same answer.
        assert_eq!(
            parse(&file[..committed as usize]),
            Ok(vec![rec("k", "old")])
        );
        // Any shorter and the committed data is gone.
        let err = parse(&file[..committed as usize - 1]).unwrap_err();
        assert_eq!(err.offset, committed - 1);
    }

    #[test]
    fn larger_committed_pointer_wins() {
        // Both pointers committed: the larger one is the newer link.
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let second = first + size1(2);
        let mut b = Builder::new(&[first, second]);
        b.push(TYPE_RECORD, 1, b"x", b"1", &[0, 0]);
        b.push(TYPE_RECORD, 1, b"y", b"2", &[0, 0]);
        let len = b.next_offset();
        assert_eq!(parse(&b.finish(len, 1, 0)), Ok(vec![rec("y", "2")]));
    }

    #[test]
    fn delete_records_are_followed_not_returned() {
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let x = first;
        let z = x + size1(2);
        let del = z + size1(2);
        let mut b = Builder::new(&[x, 0]);
        b.push(TYPE_RECORD, 1, b"x", b"1", &[del, 0]);
        b.push(TYPE_RECORD, 1, b"z", b"3", &[0, 0]);
        b.push(TYPE_DELETE, 0, b"", b"", &[z]);
        // A commit record is never linked; it just sits in the file.
        b.push(TYPE_COMMIT, 0, b"", b"", &[first]);
        let len = b.next_offset();
        assert_eq!(
            parse(&b.finish(len, 2, 0)),
            Ok(vec![rec("x", "1"), rec("z", "3")])
        );
    }

    #[test]
    fn long_key_and_value_lengths() {
        let key = vec![b'k'; 70_000];
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let mut b = Builder::new(&[first, 0]);
        b.push(TYPE_RECORD, 2, &key, b"v", &[0, 0, 0]);
        let len = b.next_offset();
        let got = parse(&b.finish(len, 1, 0)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, key);
        // The u16 length field holds the escape and the real length follows.
        let f = first as usize;
        let file = {
            let mut b = Builder::new(&[first, 0]);
            b.push(TYPE_RECORD, 2, &key, b"v", &[0, 0, 0]);
            b.bytes
        };
        assert_eq!(&file[f + 2..f + 4], &[0xFF, 0xFF]);
        assert_eq!(be_u64(&file, f + 8), Some(70_000));
    }

    #[test]
    fn crc_damage_is_reported() {
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let mut b = Builder::new(&[first, 0]);
        b.push(TYPE_RECORD, 1, b"key", b"value", &[0, 0]);
        let len = b.next_offset();
        let good = b.finish(len, 1, 0);
        assert!(parse(&good).is_ok());

        let mut header_hit = good.clone();
        header_hit[OFFSET_GENERATION] ^= 1;
        let err = parse(&header_hit).unwrap_err();
        assert_eq!(err.offset, OFFSET_CRC32 as u64);
        assert!(err.detail.contains("header CRC"), "{err}");

        let mut head_hit = good.clone();
        head_hit[first as usize + 8] ^= 0x80; // a pointer
        let err = parse(&head_hit).unwrap_err();
        assert!(err.detail.contains("head CRC"), "{err}");
        assert_eq!(err.offset, first + 24);

        let mut tail_hit = good.clone();
        tail_hit[first as usize + 32] ^= 1; // the key
        let err = parse(&tail_hit).unwrap_err();
        assert!(err.detail.contains("tail CRC"), "{err}");
        assert_eq!(err.offset, first + 28);

        let mut pad_hit = good;
        pad_hit[len as usize - 1] ^= 1; // padding is covered too
        assert!(parse(&pad_hit).unwrap_err().detail.contains("tail CRC"));
    }

    #[test]
    fn pointer_cycles_are_errors() {
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let second = first + size1(2);
        let mut b = Builder::new(&[first, 0]);
        b.push(TYPE_RECORD, 1, b"a", b"1", &[second, 0]);
        b.push(TYPE_RECORD, 1, b"b", b"2", &[first, 0]);
        let len = b.next_offset();
        let err = parse(&b.finish(len, 2, 0)).unwrap_err();
        assert!(err.detail.contains("loops"), "{err}");
        assert_eq!(err.offset, second);
    }

    #[test]
    fn bad_pointers_are_errors() {
        for pair in [[8u64, 0], [64, 0], [65, 0], [1 << 40, 1 << 40]] {
            let b = Builder::new(&pair);
            let len = b.next_offset();
            assert!(parse(&b.finish(len, 0, 0)).is_err(), "{pair:?}");
        }
        // One pointer past the committed size is an interrupted write: the other one counts.
        let b = Builder::new(&[1 << 40, 0]);
        let len = b.next_offset();
        assert_eq!(parse(&b.finish(len, 0, 0)), Ok(vec![]));
        // A list reaching a commit record.
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let mut b = Builder::new(&[first, 0]);
        b.push(TYPE_COMMIT, 1, b"", b"", &[0, 0]);
        let len = b.next_offset();
        let err = parse(&b.finish(len, 0, 0)).unwrap_err();
        assert!(err.detail.contains("commit"), "{err}");
    }

    #[test]
    fn record_count_checked_only_when_clean() {
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let mut b = Builder::new(&[first, 0]);
        b.push(TYPE_RECORD, 1, b"a", b"1", &[0, 0]);
        let len = b.next_offset();
        let bytes = b.bytes.clone();
        let err = parse(
            &Builder {
                bytes: bytes.clone(),
            }
            .finish(len, 5, 0),
        )
        .unwrap_err();
        assert_eq!(err.offset, OFFSET_NUM_RECORDS as u64);
        assert!(parse(&Builder { bytes }.finish(len, 5, FLAG_DIRTY)).is_ok());
    }

    #[test]
    fn header_checks() {
        assert!(parse(&MAGIC[..]).unwrap_err().detail.contains("inside"));
        let b = Builder::new(&[]);
        let len = b.next_offset();
        let good = b.finish(len, 0, 0);
        let mut v2 = good.clone();
        v2[OFFSET_VERSION + 3] = 2;
        let crc = crc32fast::hash(&v2[..OFFSET_CRC32]);
        v2[OFFSET_CRC32..HEADER_SIZE].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(parse(&v2).unwrap_err().offset, OFFSET_VERSION as u64);
        let h = header(&good).unwrap();
        assert_eq!(h.current_size, len);
        assert!(!h.is_dirty());
        // Truncated below current_size.
        assert_eq!(parse(&good[..100]).unwrap_err().offset, 100);
    }

    #[test]
    fn huge_lengths_do_not_allocate_or_panic() {
        let first = HEADER_SIZE as u64 + DUMMY_SIZE;
        let mut b = Builder::new(&[first, 0]);
        // keylen escape with an absurd u64 and a matching head CRC.
        let mut head = vec![TYPE_RECORD, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        head.extend_from_slice(&u64::MAX.to_be_bytes());
        head.extend_from_slice(&(u64::MAX - 3).to_be_bytes());
        head.extend_from_slice(&[0; 16]);
        let crc = crc32fast::hash(&head);
        b.bytes.extend_from_slice(&head);
        b.bytes.extend_from_slice(&crc.to_be_bytes());
        b.bytes.extend_from_slice(&[0; 4]);
        let len = b.next_offset();
        let err = parse(&b.finish(len, 1, 0)).unwrap_err();
        assert!(err.detail.contains("past the committed end"), "{err}");
    }
}
