//! `cyrus.index` of every minor version Cyrus has shipped (6–10, 12–20; formats/cyrus.md,
//! "cyrus.index"): the header and all records, with every header and record CRC checked for
//! v12+. This module owns the per-version layout tables; it reads bytes and never writes.
//!
//! Layouts are tables of offsets rather than code per version, as in Cyrus's own
//! `imap/index_file.c`, because versions differ mostly by where a field sits. All integers are
//! big-endian and read byte-wise: several u64 fields before v19 are not 8-aligned.

use std::path::Path;

use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::spool::ParseError;

// System flags: the low 16 bits of a record's flags word are IMAP flags.
pub const FLAG_ANSWERED: u32 = 1 << 0;
pub const FLAG_FLAGGED: u32 = 1 << 1;
/// The IMAP `\Deleted` flag: the message is still live until it is expunged.
pub const FLAG_DELETED: u32 = 1 << 2;
pub const FLAG_DRAFT: u32 = 1 << 3;
/// Stored in the index since v12 (the owner's, or everyone's with `OPT_IMAP_SHAREDSEEN`).
pub const FLAG_SEEN: u32 = 1 << 4;
// Internal flags: the high 16 bits, never shown over IMAP.
pub const FLAG_SNOOZED: u32 = 1 << 26;
pub const FLAG_SPLITCONVERSATION: u32 = 1 << 27;
pub const FLAG_NEEDS_CLEANUP: u32 = 1 << 28;
/// The message file lives on the archive partition, not the spool partition.
pub const FLAG_ARCHIVED: u32 = 1 << 29;
/// The message file is deleted or about to be: do not expect it on disk.
pub const FLAG_UNLINKED: u32 = 1 << 30;
/// The record is expunged (invisible to IMAP); its file stays until it is also unlinked.
pub const FLAG_EXPUNGED: u32 = 1 << 31;

// Header `options` bits.
pub const OPT_POP3_NEW_UIDL: u32 = 1 << 0;
pub const OPT_IMAP_CONDSTORE: u32 = 1 << 1;
pub const OPT_IMAP_SHAREDSEEN: u32 = 1 << 2;
pub const OPT_IMAP_DUPDELIVER: u32 = 1 << 3;
pub const OPT_IMAP_HAS_ALARMS: u32 = 1 << 4;
pub const OPT_NEEDS_UNLINK: u32 = 1 << 29;
pub const OPT_NEEDS_REPACK: u32 = 1 << 30;
/// The mailbox is being deleted.
pub const OPT_DELETED: u32 = 1 << 31;

/// User flags per record: four u32 words, and as many names in `cyrus.header`.
pub const MAX_USER_FLAGS: usize = 128;
pub const MIN_MINOR_VERSION: u32 = 6;
pub const MAX_MINOR_VERSION: u32 = 20;

/// Generation, format, minor_version, start_offset, record_size, num_records: the same in every
/// version, and enough to choose the layout.
const BASE_HEADER_SIZE: usize = 24;
const NANOS_PER_SEC: i64 = 1_000_000_000;

const SYSTEM_FLAG_NAMES: [(u32, &str); 5] = [
    (FLAG_ANSWERED, "\\Answered"),
    (FLAG_FLAGGED, "\\Flagged"),
    (FLAG_DELETED, "\\Deleted"),
    (FLAG_DRAFT, "\\Draft"),
    (FLAG_SEEN, "\\Seen"),
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexHeader {
    pub minor_version: u32,
    /// Bumped by each repack; `cyrus.cache` starts with the same number.
    pub generation: u32,
    pub start_offset: u32,
    pub record_size: u32,
    /// Records in the file, expunged ones included.
    pub num_records: u32,
    pub last_appenddate_ns: i64,
    pub last_uid: u32,
    pub quota_mailbox_used: u64,
    pub pop3_last_login_ns: i64,
    pub uidvalidity: u32,
    pub deleted: u32,
    pub answered: u32,
    pub flagged: u32,
    /// Non-expunged records; before v12 not stored and equal to `num_records`.
    pub exists: u32,
    pub options: u32,
    pub leaked_cache_records: u32,
    pub highestmodseq: u64,
    /// Before v12 not stored and equal to `highestmodseq`.
    pub deletedmodseq: u64,
    pub first_expunged_ns: i64,
    pub last_repack_time_ns: i64,
    /// CRC-32 of the whole `cyrus.header` when this index was written; 0 = unknown.
    pub header_file_crc: u32,
    pub sync_crc_basic: u32,
    pub recentuid: u32,
    pub recenttime_ns: i64,
    pub pop3_show_after_ns: i64,
    pub quota_annot_used: u64,
    pub sync_crc_annot: u32,
    pub unseen: u32,
    pub createdmodseq: u64,
    /// Before v17 not stored and equal to `last_repack_time_ns`.
    pub changes_epoch_ns: i64,
    pub quota_deleted_used: u64,
    pub quota_expunged_used: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexRecord {
    pub uid: u32,
    pub internaldate_ns: i64,
    pub sentdate_ns: i64,
    /// Bytes of the message file as stored (CRLF line ends).
    pub size: u64,
    pub header_size: u32,
    /// 0 before v12, where the slot held the body offset instead.
    pub gmtime_ns: i64,
    pub last_updated_ns: i64,
    /// The on-disk word: IMAP flags in the low 16 bits, Cyrus's internal flags in the high 16.
    pub system_flags: u32,
    pub user_flags: [u32; 4],
    pub savedate_ns: i64,
    /// SHA-1 of the message file; zero before v10.
    pub guid: Guid,
    pub modseq: u64,
    pub cid: u64,
    pub createdmodseq: u64,
    pub basecid: u64,
    /// With the high bits Cyrus 3.2+ keeps in the upper half of the cache version word.
    pub cache_offset: u64,
    pub cache_version: u32,
    pub cache_crc: u32,
}

impl IndexRecord {
    pub fn is_expunged(&self) -> bool {
        self.system_flags & FLAG_EXPUNGED != 0
    }

    pub fn is_unlinked(&self) -> bool {
        self.system_flags & FLAG_UNLINKED != 0
    }

    pub fn is_archived(&self) -> bool {
        self.system_flags & FLAG_ARCHIVED != 0
    }

    /// The record's flags by IMAP name: the system flags `\Answered \Flagged \Deleted \Draft
    /// \Seen` that are set, then every set user flag that has a name in `user_flag_names`
    /// (indexed like `MailboxHeader::user_flags`; a set bit without a name is not shown, as in
    /// Cyrus). The list is sorted bytewise, the order a client that sorts `FETCH FLAGS` sees, so
    /// it compares equal to such a list; `\Recent` is per session and never included.
    pub fn flag_names(&self, user_flag_names: &[Option<String>]) -> Vec<String> {
        let mut names: Vec<String> = SYSTEM_FLAG_NAMES
            .iter()
            .filter(|(bit, _)| self.system_flags & bit != 0)
            .map(|(_, name)| (*name).to_string())
            .collect();
        for (i, name) in user_flag_names.iter().enumerate().take(MAX_USER_FLAGS) {
            if let Some(name) = name {
                if self.user_flags[i / 32] & (1 << (i % 32)) != 0 {
                    names.push(name.clone());
                }
            }
        }
        names.sort();
        names
    }

    /// The message file's name in the mailbox directory.
    pub fn message_file_name(&self) -> String {
        format!("{}.", self.uid)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub header: IndexHeader,
    pub records: Vec<IndexRecord>,
}

/// Where each header field sits in one minor version; `None` = not stored in that version.
/// `wide` (v20) means times are u64 nanoseconds and `quota_annot_used` is a u64; otherwise
/// times are u32 seconds and `quota_annot_used` a u32.
#[derive(Clone, Copy)]
struct HeaderLayout {
    size: usize,
    crc: Option<usize>,
    wide: bool,
    last_appenddate: Option<usize>,
    last_uid: Option<usize>,
    quota_mailbox_used: Option<usize>,
    pop3_last_login: Option<usize>,
    uidvalidity: Option<usize>,
    deleted: Option<usize>,
    answered: Option<usize>,
    flagged: Option<usize>,
    exists: Option<usize>,
    options: Option<usize>,
    leaked_cache_records: Option<usize>,
    highestmodseq: Option<usize>,
    deletedmodseq: Option<usize>,
    first_expunged: Option<usize>,
    last_repack_time: Option<usize>,
    header_file_crc: Option<usize>,
    sync_crc_basic: Option<usize>,
    recentuid: Option<usize>,
    recenttime: Option<usize>,
    pop3_show_after: Option<usize>,
    quota_annot_used: Option<usize>,
    sync_crc_annot: Option<usize>,
    unseen: Option<usize>,
    createdmodseq: Option<usize>,
    changes_epoch: Option<usize>,
    quota_deleted_used: Option<usize>,
    quota_expunged_used: Option<usize>,
}

const HEADER_V6: HeaderLayout = HeaderLayout {
    size: 76,
    crc: None,
    wide: false,
    last_appenddate: Some(24),
    last_uid: Some(28),
    quota_mailbox_used: Some(32),
    pop3_last_login: Some(40),
    uidvalidity: Some(44),
    deleted: Some(48),
    answered: Some(52),
    flagged: Some(56),
    exists: None,
    options: Some(60),
    leaked_cache_records: Some(64),
    highestmodseq: None,
    deletedmodseq: None,
    first_expunged: None,
    last_repack_time: None,
    header_file_crc: None,
    sync_crc_basic: None,
    recentuid: None,
    recenttime: None,
    pop3_show_after: None,
    quota_annot_used: None,
    sync_crc_annot: None,
    unseen: None,
    createdmodseq: None,
    changes_epoch: None,
    quota_deleted_used: None,
    quota_expunged_used: None,
};

const HEADER_V8: HeaderLayout = HeaderLayout {
    size: 92,
    highestmodseq: Some(68),
    ..HEADER_V6
};

const HEADER_V9: HeaderLayout = HeaderLayout {
    size: 96,
    ..HEADER_V8
};

const HEADER_V12: HeaderLayout = HeaderLayout {
    size: 128,
    crc: Some(124),
    deletedmodseq: Some(76),
    exists: Some(84),
    first_expunged: Some(88),
    last_repack_time: Some(92),
    header_file_crc: Some(96),
    sync_crc_basic: Some(100),
    recentuid: Some(104),
    recenttime: Some(108),
    ..HEADER_V9
};

const HEADER_V13: HeaderLayout = HeaderLayout {
    pop3_show_after: Some(112),
    quota_annot_used: Some(116),
    sync_crc_annot: Some(120),
    ..HEADER_V12
};

const HEADER_V14: HeaderLayout = HeaderLayout {
    size: 160,
    crc: Some(156),
    unseen: Some(124),
    ..HEADER_V13
};

const HEADER_V16: HeaderLayout = HeaderLayout {
    createdmodseq: Some(128),
    ..HEADER_V14
};

const HEADER_V17: HeaderLayout = HeaderLayout {
    changes_epoch: Some(136),
    ..HEADER_V16
};

const HEADER_V18: HeaderLayout = HeaderLayout {
    quota_deleted_used: Some(140),
    quota_expunged_used: Some(148),
    ..HEADER_V17
};

/// v19 moved fields so every u64 is 8-aligned.
const HEADER_V19: HeaderLayout = HeaderLayout {
    exists: Some(60),
    options: Some(64),
    leaked_cache_records: Some(68),
    highestmodseq: Some(72),
    deletedmodseq: Some(80),
    quota_deleted_used: Some(136),
    quota_expunged_used: Some(144),
    changes_epoch: Some(152),
    ..HEADER_V18
};

/// v20 widened times to u64 nanoseconds and moved most fields again.
const HEADER_V20: HeaderLayout = HeaderLayout {
    size: 192,
    crc: Some(188),
    wide: true,
    last_appenddate: Some(24),
    last_uid: Some(88),
    quota_mailbox_used: Some(32),
    pop3_last_login: Some(40),
    uidvalidity: Some(92),
    deleted: Some(48),
    answered: Some(52),
    flagged: Some(56),
    exists: Some(60),
    options: Some(64),
    leaked_cache_records: Some(68),
    highestmodseq: Some(72),
    deletedmodseq: Some(80),
    first_expunged: Some(168),
    last_repack_time: Some(176),
    header_file_crc: Some(96),
    sync_crc_basic: Some(100),
    recentuid: Some(184),
    recenttime: Some(104),
    pop3_show_after: Some(112),
    quota_annot_used: Some(152),
    sync_crc_annot: Some(120),
    unseen: Some(124),
    createdmodseq: Some(128),
    changes_epoch: Some(160),
    quota_deleted_used: Some(136),
    quota_expunged_used: Some(144),
};

/// Where each record field sits; `wide` (v20) means times are u64 nanoseconds and `size` is
/// a u64.
#[derive(Clone, Copy)]
struct RecordLayout {
    size: usize,
    crc: Option<usize>,
    wide: bool,
    uid: usize,
    internaldate: usize,
    sentdate: usize,
    message_size: usize,
    header_size: usize,
    gmtime: Option<usize>,
    cache_offset: usize,
    last_updated: usize,
    system_flags: usize,
    user_flags: usize,
    savedate: Option<usize>,
    cache_version: usize,
    guid: Option<usize>,
    modseq: Option<usize>,
    cid: Option<usize>,
    createdmodseq: Option<usize>,
    basecid: Option<usize>,
    cache_crc: Option<usize>,
}

/// Bytes 20..24 held the body offset (`content_offset`) before v12, not gmtime; 52..56 held
/// `content_lines` until v15. Neither is exposed.
const RECORD_V6: RecordLayout = RecordLayout {
    size: 60,
    crc: None,
    wide: false,
    uid: 0,
    internaldate: 4,
    sentdate: 8,
    message_size: 12,
    header_size: 16,
    gmtime: None,
    cache_offset: 24,
    last_updated: 28,
    system_flags: 32,
    user_flags: 36,
    savedate: None,
    cache_version: 56,
    guid: None,
    modseq: None,
    cid: None,
    createdmodseq: None,
    basecid: None,
    cache_crc: None,
};

/// v7 added a 12-byte id at 60 that later versions dropped; it is skipped.
const RECORD_V7: RecordLayout = RecordLayout {
    size: 72,
    ..RECORD_V6
};

const RECORD_V8: RecordLayout = RecordLayout {
    size: 80,
    modseq: Some(72),
    ..RECORD_V7
};

const RECORD_V10: RecordLayout = RecordLayout {
    size: 88,
    guid: Some(60),
    modseq: Some(80),
    ..RECORD_V6
};

const RECORD_V12: RecordLayout = RecordLayout {
    size: 96,
    crc: Some(92),
    gmtime: Some(20),
    cache_crc: Some(88),
    ..RECORD_V10
};

const RECORD_V13: RecordLayout = RecordLayout {
    size: 104,
    crc: Some(100),
    cid: Some(88),
    cache_crc: Some(96),
    ..RECORD_V12
};

const RECORD_V15: RecordLayout = RecordLayout {
    savedate: Some(52),
    ..RECORD_V13
};

const RECORD_V16: RecordLayout = RecordLayout {
    size: 112,
    crc: Some(108),
    createdmodseq: Some(96),
    cache_crc: Some(104),
    ..RECORD_V15
};

const RECORD_V20: RecordLayout = RecordLayout {
    size: 144,
    crc: Some(140),
    wide: true,
    uid: 0,
    internaldate: 8,
    sentdate: 16,
    message_size: 24,
    header_size: 32,
    gmtime: Some(104),
    cache_offset: 4,
    last_updated: 112,
    system_flags: 36,
    user_flags: 40,
    savedate: Some(120),
    cache_version: 56,
    guid: Some(60),
    modseq: Some(80),
    cid: Some(88),
    createdmodseq: Some(96),
    basecid: Some(128),
    cache_crc: Some(136),
};

/// The layouts of one minor version. 11 was Fastmail-internal and never shipped, and Cyrus
/// itself reads nothing older than 6.
fn layouts(minor_version: u32) -> Option<(&'static HeaderLayout, &'static RecordLayout)> {
    Some(match minor_version {
        6 => (&HEADER_V6, &RECORD_V6),
        7 => (&HEADER_V6, &RECORD_V7),
        8 => (&HEADER_V8, &RECORD_V8),
        9 => (&HEADER_V9, &RECORD_V8),
        10 => (&HEADER_V9, &RECORD_V10),
        12 => (&HEADER_V12, &RECORD_V12),
        13 => (&HEADER_V13, &RECORD_V13),
        14 => (&HEADER_V14, &RECORD_V13),
        15 => (&HEADER_V14, &RECORD_V15),
        16 => (&HEADER_V16, &RECORD_V16),
        17 => (&HEADER_V17, &RECORD_V16),
        18 => (&HEADER_V18, &RECORD_V16),
        19 => (&HEADER_V19, &RECORD_V16),
        20 => (&HEADER_V20, &RECORD_V20),
        _ => return None,
    })
}

/// The header and record sizes Cyrus writes for `minor_version`; `None` if unsupported.
pub fn expected_sizes(minor_version: u32) -> Option<(u32, u32)> {
    layouts(minor_version).map(|(h, r)| (h.size as u32, r.size as u32))
}

/// A window of the file with its absolute position, so every error names a file offset.
/// Reads past the window are errors rather than panics even though callers size the window
/// from the layout first.
struct Fields<'a> {
    buf: &'a [u8],
    base: u64,
}

impl Fields<'_> {
    fn at(&self, off: usize) -> u64 {
        self.base + off as u64
    }

    fn bytes<const N: usize>(&self, off: usize) -> Result<[u8; N], ParseError> {
        off.checked_add(N)
            .and_then(|end| self.buf.get(off..end))
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ParseError::new(self.at(off), "field runs past the end of the data"))
    }

    fn u32(&self, off: usize) -> Result<u32, ParseError> {
        self.bytes::<4>(off).map(u32::from_be_bytes)
    }

    fn u64(&self, off: usize) -> Result<u64, ParseError> {
        self.bytes::<8>(off).map(u64::from_be_bytes)
    }

    fn opt_u32(&self, off: Option<usize>) -> Result<u32, ParseError> {
        off.map_or(Ok(0), |o| self.u32(o))
    }

    fn opt_u64(&self, off: Option<usize>) -> Result<u64, ParseError> {
        off.map_or(Ok(0), |o| self.u64(o))
    }

    /// A u64 that older versions stored in 32 bits.
    fn opt_u32_or_u64(&self, off: Option<usize>, wide: bool) -> Result<u64, ParseError> {
        match off {
            None => Ok(0),
            Some(o) if wide => self.u64(o),
            Some(o) => self.u32(o).map(u64::from),
        }
    }

    /// A time as i64 nanoseconds: u32 seconds before v20, u64 nanoseconds from v20 on.
    fn opt_time(&self, off: Option<usize>, wide: bool) -> Result<i64, ParseError> {
        match off {
            None => Ok(0),
            // u32::MAX seconds in nanoseconds is about 4.3e18, inside i64.
            Some(o) if !wide => self.u32(o).map(|s| i64::from(s) * NANOS_PER_SEC),
            Some(o) => {
                let ns = self.u64(o)?;
                i64::try_from(ns).map_err(|_| {
                    ParseError::new(
                        self.at(o),
                        format!("time of {ns} ns is beyond what mailpack can represent"),
                    )
                })
            }
        }
    }

    fn time(&self, off: usize, wide: bool) -> Result<i64, ParseError> {
        self.opt_time(Some(off), wide)
    }

    /// Checks the CRC-32 stored at `crc_at` against the bytes before it.
    fn check_crc(&self, crc_at: usize, what: &str) -> Result<(), ParseError> {
        let stored = self.u32(crc_at)?;
        let covered = self
            .buf
            .get(..crc_at)
            .ok_or_else(|| ParseError::new(self.at(crc_at), "CRC field past the end"))?;
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(ParseError::new(
                self.at(crc_at),
                format!("{what} CRC mismatch: stored {stored:08x}, computed {computed:08x}"),
            ));
        }
        Ok(())
    }
}

/// Parses a whole `cyrus.index`. Checks, in order: the minor version, the header length, the
/// header CRC (v12+), that `start_offset` and `record_size` are at least the version's sizes,
/// that the file holds `num_records` records, and each record's CRC (v12+).
pub fn parse(bytes: &[u8]) -> Result<IndexFile, ParseError> {
    let (header, records) = parse_records(bytes)?;
    // `records` checked that the file holds them all, so the allocation is bounded by the file.
    let mut all = Vec::with_capacity(header.num_records as usize);
    for record in records {
        all.push(record?);
    }
    Ok(IndexFile {
        header,
        records: all,
    })
}

/// The records of a `cyrus.index`, decoded one at a time: what a reader that needs each record
/// once (compaction's reference walk) uses, so a million-record index costs no more memory than
/// its bytes. Each record's CRC is checked as it is decoded.
pub struct Records<'a> {
    bytes: &'a [u8],
    shape: RecordShape,
    next: u64,
}

impl Iterator for Records<'_> {
    type Item = Result<IndexRecord, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.shape.count {
            return None;
        }
        let n = self.next;
        self.next += 1;
        let at = self.shape.start + n * self.shape.stride;
        let decoded = usize::try_from(at)
            .map_err(|_| ParseError::new(at, "record offset does not fit in memory"))
            .and_then(|from| {
                let slot = self.bytes.get(from..).unwrap_or_default();
                self.shape.decode(n, slot)
            });
        if decoded.is_err() {
            // One error ends the walk: the file is not trusted past it.
            self.next = self.shape.count;
        }
        Some(decoded)
    }
}

/// The checked header of a `cyrus.index` and its records, decoded as they are read (the
/// checks of `parse`, the per-record ones as each record comes).
pub fn parse_records(bytes: &[u8]) -> Result<(IndexHeader, Records<'_>), ParseError> {
    let (header, shape) = parse_head(bytes, bytes.len() as u64)?;
    Ok((
        header,
        Records {
            bytes,
            shape,
            next: 0,
        },
    ))
}

/// Where a `cyrus.index`'s records lie and how each decodes: what a reader that sees the file
/// a piece at a time (compaction's walk over an index rebuilt from deltas) needs after the
/// header, so it never holds the file.
pub struct RecordShape {
    layout: &'static RecordLayout,
    /// Offset of the first record, bytes per record slot, and how many there are.
    pub start: u64,
    pub stride: u64,
    pub count: u64,
}

/// The most header bytes a streamed reader collects before the first record.
pub const MAX_STREAMED_START: u64 = 1 << 16;
/// The largest record slot a streamed reader collects.
pub const MAX_STREAMED_STRIDE: u64 = 1 << 16;

impl RecordShape {
    /// Decodes record `n` (0-based) from the `stride` bytes of its slot, with the checks
    /// `parse_records` makes.
    pub fn decode(&self, n: u64, slot: &[u8]) -> Result<IndexRecord, ParseError> {
        let at = self.start + n * self.stride;
        let window = slot
            .get(..self.layout.size)
            .ok_or_else(|| ParseError::new(at, "record runs past the end of the file"))?;
        let rec = Fields {
            buf: window,
            base: at,
        };
        if let Some(crc_at) = self.layout.crc {
            let uid = rec.u32(self.layout.uid)?;
            rec.check_crc(crc_at, &format!("record {} (uid {uid})", n + 1))?;
        }
        decode_record(&rec, self.layout)
    }
}

/// The checked header of a `cyrus.index` of `len` bytes from `bytes`, which hold at least the
/// header (the whole file will do): every check `parse_records` makes before the records.
pub fn parse_head(bytes: &[u8], len: u64) -> Result<(IndexHeader, RecordShape), ParseError> {
    let file = Fields {
        buf: bytes,
        base: 0,
    };
    if len < BASE_HEADER_SIZE as u64 || bytes.len() < BASE_HEADER_SIZE {
        return Err(ParseError::new(
            len,
            format!("file of {len} bytes ends inside the {BASE_HEADER_SIZE}-byte base header"),
        ));
    }
    let minor_version = file.u32(8)?;
    let (hl, rl) = layouts(minor_version).ok_or_else(|| {
        ParseError::new(
            8,
            format!("unsupported cyrus.index minor version {minor_version}"),
        )
    })?;
    if len < hl.size as u64 || bytes.len() < hl.size {
        return Err(ParseError::new(
            len,
            format!(
                "file of {len} bytes ends inside the {}-byte header of minor version \
                 {minor_version}",
                hl.size
            ),
        ));
    }
    let header_bytes = Fields {
        buf: &bytes[..hl.size],
        base: 0,
    };
    // The CRC comes before the size checks because it covers start_offset, record_size and
    // num_records: damage to any of them is then reported as what it is.
    if let Some(crc_at) = hl.crc {
        header_bytes.check_crc(crc_at, "header")?;
    }
    let header = decode_header(&header_bytes, hl, minor_version)?;

    // Cyrus 3.10+ insists on the exact sizes (allowing only a v19 header with v20-sized
    // records, written by a 2025 development build); older Cyrus did not check at all. A
    // larger value only means bytes that this layout does not read.
    if (header.start_offset as usize) < hl.size {
        return Err(ParseError::new(
            12,
            format!(
                "start_offset {} is smaller than the {}-byte header of minor version \
                 {minor_version}",
                header.start_offset, hl.size
            ),
        ));
    }
    if (header.record_size as usize) < rl.size {
        return Err(ParseError::new(
            16,
            format!(
                "record_size {} is smaller than the {}-byte record of minor version \
                 {minor_version}",
                header.record_size, rl.size
            ),
        ));
    }
    let start = u64::from(header.start_offset);
    let stride = u64::from(header.record_size);
    let end = u64::from(header.num_records)
        .checked_mul(stride)
        .and_then(|n| n.checked_add(start))
        .ok_or_else(|| ParseError::new(20, "num_records * record_size overflows"))?;
    if end > len {
        let (at, what) = if len < start {
            (len, "before the first record".to_string())
        } else {
            let whole = (len - start) / stride;
            (
                start + whole * stride,
                format!("inside record {}", whole + 1),
            )
        };
        return Err(ParseError::new(
            at,
            format!(
                "file of {len} bytes ends {what}: {} records of {stride} bytes from \
                 {start} need {end} bytes",
                header.num_records
            ),
        ));
    }

    // `end <= len`, so the number of records is bounded by the file.
    let count = u64::from(header.num_records);
    Ok((
        header,
        RecordShape {
            layout: rl,
            start,
            stride,
            count,
        },
    ))
}

fn decode_header(
    f: &Fields,
    l: &HeaderLayout,
    minor_version: u32,
) -> Result<IndexHeader, ParseError> {
    let w = l.wide;
    let mut h = IndexHeader {
        minor_version,
        generation: f.u32(0)?,
        start_offset: f.u32(12)?,
        record_size: f.u32(16)?,
        num_records: f.u32(20)?,
        last_appenddate_ns: f.opt_time(l.last_appenddate, w)?,
        last_uid: f.opt_u32(l.last_uid)?,
        quota_mailbox_used: f.opt_u64(l.quota_mailbox_used)?,
        pop3_last_login_ns: f.opt_time(l.pop3_last_login, w)?,
        uidvalidity: f.opt_u32(l.uidvalidity)?,
        deleted: f.opt_u32(l.deleted)?,
        answered: f.opt_u32(l.answered)?,
        flagged: f.opt_u32(l.flagged)?,
        exists: f.opt_u32(l.exists)?,
        options: f.opt_u32(l.options)?,
        leaked_cache_records: f.opt_u32(l.leaked_cache_records)?,
        highestmodseq: f.opt_u64(l.highestmodseq)?,
        deletedmodseq: f.opt_u64(l.deletedmodseq)?,
        first_expunged_ns: f.opt_time(l.first_expunged, w)?,
        last_repack_time_ns: f.opt_time(l.last_repack_time, w)?,
        header_file_crc: f.opt_u32(l.header_file_crc)?,
        sync_crc_basic: f.opt_u32(l.sync_crc_basic)?,
        recentuid: f.opt_u32(l.recentuid)?,
        recenttime_ns: f.opt_time(l.recenttime, w)?,
        pop3_show_after_ns: f.opt_time(l.pop3_show_after, w)?,
        quota_annot_used: f.opt_u32_or_u64(l.quota_annot_used, w)?,
        sync_crc_annot: f.opt_u32(l.sync_crc_annot)?,
        unseen: f.opt_u32(l.unseen)?,
        createdmodseq: f.opt_u64(l.createdmodseq)?,
        changes_epoch_ns: f.opt_time(l.changes_epoch, w)?,
        quota_deleted_used: f.opt_u64(l.quota_deleted_used)?,
        quota_expunged_used: f.opt_u64(l.quota_expunged_used)?,
    };
    // Fields a version does not store but whose value is defined by older ones, as Cyrus
    // derives them when it reads such a file.
    if l.exists.is_none() {
        h.exists = h.num_records;
    }
    if l.deletedmodseq.is_none() {
        h.deletedmodseq = h.highestmodseq;
    }
    if l.changes_epoch.is_none() {
        h.changes_epoch_ns = h.last_repack_time_ns;
    }
    Ok(h)
}

fn decode_record(f: &Fields, l: &RecordLayout) -> Result<IndexRecord, ParseError> {
    let w = l.wide;
    let cache_version_word = f.u32(l.cache_version)?;
    let mut user_flags = [0u32; 4];
    for (i, word) in user_flags.iter_mut().enumerate() {
        *word = f.u32(l.user_flags + 4 * i)?;
    }
    let guid = match l.guid {
        Some(o) => Guid(f.bytes::<20>(o)?),
        None => Guid::ZERO,
    };
    Ok(IndexRecord {
        uid: f.u32(l.uid)?,
        internaldate_ns: f.time(l.internaldate, w)?,
        sentdate_ns: f.time(l.sentdate, w)?,
        size: f.opt_u32_or_u64(Some(l.message_size), w)?,
        header_size: f.u32(l.header_size)?,
        gmtime_ns: f.opt_time(l.gmtime, w)?,
        last_updated_ns: f.time(l.last_updated, w)?,
        system_flags: f.u32(l.system_flags)?,
        user_flags,
        savedate_ns: f.opt_time(l.savedate, w)?,
        guid,
        modseq: f.opt_u64(l.modseq)?,
        cid: f.opt_u64(l.cid)?,
        createdmodseq: f.opt_u64(l.createdmodseq)?,
        basecid: f.opt_u64(l.basecid)?,
        // Cyrus 3.2+ (in every index version) stores bits 32..47 of the cache offset in the
        // high half of the cache version word; older writers left it zero.
        cache_offset: u64::from(f.u32(l.cache_offset)?)
            | (u64::from(cache_version_word & 0xffff_0000) << 16),
        cache_version: cache_version_word & 0xffff,
        cache_crc: f.opt_u32(l.cache_crc)?,
    })
}

/// Reads and parses the `cyrus.index` at `path`; damage is reported with the path and offset.
pub fn read(path: &Path) -> Result<IndexFile> {
    use super::file::{self, Follow};
    let (bytes, _) = file::read(path, Follow::No, file::INDEX_CAP)?
        .ok_or_else(|| Error::NotFound(path.display().to_string()))?;
    parse(&bytes).map_err(|e| e.in_file(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal v17 file written field by field from the tables in formats/, independent of
    /// the layout constants above.
    fn v17_file(records: &[(u32, u32, [u8; 20])]) -> Vec<u8> {
        let mut h = vec![0u8; 160];
        let put32 =
            |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_be_bytes());
        put32(&mut h, 0, 3); // generation
        put32(&mut h, 8, 17);
        put32(&mut h, 12, 160);
        put32(&mut h, 16, 112);
        put32(&mut h, 20, records.len() as u32);
        put32(&mut h, 28, 42); // last_uid
        put32(&mut h, 44, 1234567); // uidvalidity
        put32(&mut h, 84, records.len() as u32); // exists
        h[68..76].copy_from_slice(&9u64.to_be_bytes()); // highestmodseq
        put32(&mut h, 92, 1_600_000_000); // last_repack_time
        put32(&mut h, 136, 1_700_000_000); // changes_epoch
        let crc = crc32fast::hash(&h[..156]);
        put32(&mut h, 156, crc);
        for (uid, flags, guid) in records {
            let mut r = vec![0u8; 112];
            put32(&mut r, 0, *uid);
            put32(&mut r, 4, 1_500_000_000); // internaldate
            put32(&mut r, 12, 321); // size
            put32(&mut r, 24, 0xdead_beef); // cache_offset low
            put32(&mut r, 32, *flags);
            put32(&mut r, 36, 0b101); // user flags 0 and 2
            put32(&mut r, 56, 0x0001_000a); // cache offset bits 32.., cache version 10
            r[60..80].copy_from_slice(guid);
            r[80..88].copy_from_slice(&7u64.to_be_bytes());
            let crc = crc32fast::hash(&r[..108]);
            put32(&mut r, 108, crc);
            h.extend_from_slice(&r);
        }
        h
    }

    #[test]
    fn v17_fields_and_derivations() {
        let bytes = v17_file(&[
            (5, FLAG_SEEN | FLAG_ANSWERED, [7; 20]),
            (42, FLAG_EXPUNGED, [8; 20]),
        ]);
        let f = parse(&bytes).unwrap();
        assert_eq!(f.header.minor_version, 17);
        assert_eq!(f.header.generation, 3);
        assert_eq!(f.header.last_uid, 42);
        assert_eq!(f.header.uidvalidity, 1234567);
        assert_eq!(f.header.highestmodseq, 9);
        assert_eq!(f.header.exists, 2);
        assert_eq!(f.header.last_repack_time_ns, 1_600_000_000 * NANOS_PER_SEC);
        assert_eq!(f.header.changes_epoch_ns, 1_700_000_000 * NANOS_PER_SEC);
        let r = &f.records[0];
        assert_eq!(r.uid, 5);
        assert_eq!(r.internaldate_ns, 1_500_000_000 * NANOS_PER_SEC);
        assert_eq!(r.size, 321);
        assert_eq!(r.cache_offset, 0x1_dead_beef);
        assert_eq!(r.cache_version, 10);
        assert_eq!(r.guid, Guid([7; 20]));
        assert_eq!(r.modseq, 7);
        assert_eq!(r.message_file_name(), "5.");
        assert!(!r.is_expunged());
        assert!(f.records[1].is_expunged());
        let names = [
            Some("$Label".to_string()),
            None,
            Some("Important".to_string()),
        ];
        assert_eq!(
            r.flag_names(&names),
            ["$Label", "Important", "\\Answered", "\\Seen"]
        );
        // A set bit with no name (index 2 missing from a short table) is not shown.
        assert_eq!(
            r.flag_names(&names[..1]),
            ["$Label", "\\Answered", "\\Seen"]
        );
    }

    #[test]
    fn damage_is_reported_at_its_offset() {
        let good = v17_file(&[(1, 0, [1; 20])]);
        let mut bad = good.clone();
        bad[160 + 4] ^= 1;
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.offset, 160 + 108);
        assert!(e.detail.contains("record 1 (uid 1) CRC mismatch"), "{e}");

        let mut bad = good.clone();
        bad[30] ^= 1;
        let e = parse(&bad).unwrap_err();
        assert_eq!((e.offset, e.detail.contains("header CRC")), (156, true));

        let mut bad = good.clone();
        bad[11] = 11;
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.offset, 8);
        assert_eq!(e.detail, "unsupported cyrus.index minor version 11");

        let e = parse(&good[..good.len() - 1]).unwrap_err();
        assert_eq!(e.offset, 160);
        assert!(e.detail.contains("inside record 1"), "{e}");
        assert_eq!(parse(&good[..10]).unwrap_err().offset, 10);
        assert_eq!(parse(&good[..100]).unwrap_err().offset, 100);
    }

    #[test]
    fn every_prefix_and_bit_flip_is_handled() {
        let good = v17_file(&[(1, 0, [1; 20]), (2, FLAG_DELETED, [2; 20])]);
        for cut in 0..good.len() {
            let e = parse(&good[..cut]).unwrap_err();
            assert!(e.offset <= cut as u64, "{cut}: {e}");
        }
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[byte] ^= 1 << bit;
                let r = parse(&b);
                if !(8..12).contains(&byte) {
                    assert!(
                        r.unwrap_err().detail.contains("CRC mismatch"),
                        "{byte}/{bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn sizes_per_version() {
        assert_eq!(expected_sizes(12), Some((128, 96)));
        assert_eq!(expected_sizes(19), Some((160, 112)));
        assert_eq!(expected_sizes(20), Some((192, 144)));
        assert_eq!(expected_sizes(11), None);
        assert_eq!(expected_sizes(5), None);
        assert_eq!(expected_sizes(21), None);
    }
}
