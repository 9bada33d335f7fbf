//! A mailbox's `cyrus.index` read back from an archive (formats/backup-entries.md, "Index
//! deltas"): its versions are the full copies `folders/<uniqueid>/cyrus.index` and the deltas
//! `folders/<uniqueid>/delta/cyrus.index` together, in archive order; a delta is reconstructed
//! from the full copy before it and the deltas between, every length and SHA-1 checked. Every
//! reader of an index (restore, `ls --at`, drill, `verify --against-spool`, find, compaction,
//! and backup for the version a delta is made against) goes through here, so none of them can
//! read a full copy older than a delta, or a delta's payload, as the mailbox's index.
//!
//! Sits above `store` (it reads entries) and below `backup`, `restore` and `compact`.

use std::io::Read;

use crate::archive::{EntryKind, EntryRecord};
use crate::entries::index_delta::{self, MAX_DELTA_CHAIN};
use crate::entries::index_version_of;
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::store::Archive;

/// One version of a mailbox's index, as the backup read it.
pub struct IndexVersion {
    pub bytes: Vec<u8>,
    pub sha1: Guid,
    /// Deltas applied after the full copy to make it (0: a full copy).
    pub deltas: usize,
}

/// Where an entry stands in archive order.
fn position(e: &EntryRecord) -> (u64, u32) {
    (e.placement.member, e.placement.header_at)
}

/// Whether `e` is a version of some mailbox's index, and a delta.
pub fn is_index_delta(e: &EntryRecord) -> bool {
    e.kind == EntryKind::File && index_version_of(&e.name).is_some_and(|(_, delta)| delta)
}

/// The newer of two versions (archive order); either may be absent.
pub fn newer<'a>(
    a: Option<&'a EntryRecord>,
    b: Option<&'a EntryRecord>,
) -> Option<&'a EntryRecord> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if position(b) > position(a) { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The most records a version's header may reserve up front.
const MAX_RECORDS_RESERVE: u64 = 1 << 20;

/// The most a size recorded in the index may reserve up front.
const MAX_EXACT_RESERVE: u64 = 256 << 20;

/// An entry's bytes, checked: the size the archive can back, its SHA-1 as it is read, and
/// again, length and SHA-1, on the whole.
fn read_checked(archive: &Archive, e: &EntryRecord) -> Result<Vec<u8>> {
    let path = &archive.paths().archive;
    let corrupt = |detail: String| Error::corrupt(path, e.placement.member, detail);
    if e.placement.member >= archive.committed_len() {
        return Err(corrupt(format!(
            "entry {} lies past the committed archive",
            e.name
        )));
    }
    // Exactly the recorded size, up to a cap on what a number in the index may reserve: a large
    // index read by doubling would hold up to twice its size (issue 19, flat memory).
    let mut out = Vec::with_capacity(e.size.min(MAX_EXACT_RESERVE) as usize);
    archive
        .read_entry(e)?
        .take(e.size)
        .read_to_end(&mut out)
        .map_err(
            |err| match err.into_inner().map(|i| i.downcast::<Error>()) {
                Some(Ok(ours)) => *ours,
                Some(Err(other)) => corrupt(format!("{}: {other}", e.name)),
                None => corrupt(format!("{}: read failed", e.name)),
            },
        )?;
    if out.len() as u64 != e.size || Guid::of(&out) != e.sha1 {
        return Err(corrupt(format!(
            "entry {} does not read back as its {} bytes with SHA-1 {}",
            e.name, e.size, e.sha1
        )));
    }
    Ok(out)
}

/// The version `e` stands for, given the version before it (`previous`: its bytes and SHA-1)
/// when `e` is a delta; a delta turns those bytes into the new version in place. A full copy
/// needs nothing before it, and `previous` is let go before it is read.
pub fn next_version(
    archive: &Archive,
    previous: Option<(Vec<u8>, Guid)>,
    e: &EntryRecord,
) -> Result<(Vec<u8>, Guid)> {
    let previous = previous.filter(|_| is_index_delta(e));
    let bytes = read_checked(archive, e)?;
    if !is_index_delta(e) {
        let sha1 = e.sha1;
        return Ok((bytes, sha1));
    }
    let path = &archive.paths().archive;
    let Some((base, base_sha1)) = previous else {
        return Err(Error::corrupt(
            path,
            e.placement.member,
            format!("{}: an index delta with no version before it", e.name),
        ));
    };
    let result = index_delta::apply_in_place(&bytes, base, &base_sha1).map_err(|detail| {
        Error::corrupt(path, e.placement.member, format!("{}: {detail}", e.name))
    })?;
    let sha1 = Guid::of(&result);
    Ok((result, sha1))
}

/// The versions of `e`'s mailbox index from the nearest full copy up to `e` itself, oldest
/// first: `[e]` for a full copy. `e` must be an entry of `archive` (a clone will do).
pub fn chain(archive: &Archive, e: &EntryRecord) -> Result<Vec<EntryRecord>> {
    let path = &archive.paths().archive;
    let corrupt = |detail: String| Error::corrupt(path, e.placement.member, detail);
    let Some((uid, delta)) = index_version_of(&e.name).filter(|_| e.kind == EntryKind::File) else {
        return Err(Error::usage(format!(
            "{} is not a version of a cyrus.index",
            e.name
        )));
    };
    if !delta {
        return Ok(vec![e.clone()]);
    }
    let runs = archive.runs();
    let Some(r) = runs
        .iter()
        .rposition(|run| run.start <= e.placement.member && e.placement.member < run.end)
    else {
        return Err(corrupt(format!("{} is in no committed run", e.name)));
    };
    let entries = archive.entries_of(&runs[r]);
    let Some(i) = entries
        .iter()
        .position(|x| x.placement == e.placement && x.name == e.name)
    else {
        return Err(corrupt(format!("{} is not where the index says", e.name)));
    };
    let mut out = vec![e.clone()];
    let earlier = entries[..i].iter().rev().chain(
        runs[..r]
            .iter()
            .rev()
            .flat_map(|run| archive.entries_of(run).iter().rev()),
    );
    for x in earlier {
        if x.kind != EntryKind::File {
            continue;
        }
        let Some((u, is_delta)) = index_version_of(&x.name) else {
            continue;
        };
        if u != uid {
            continue;
        }
        out.push(x.clone());
        if !is_delta {
            out.reverse();
            return Ok(out);
        }
        if out.len() > MAX_DELTA_CHAIN {
            return Err(corrupt(format!(
                "{}: more than {MAX_DELTA_CHAIN} index deltas follow its full copy",
                e.name
            )));
        }
    }
    Err(corrupt(format!(
        "{}: no full copy of the index is stored before this delta",
        e.name
    )))
}

/// The exact bytes of the index version `e` stands for (a full copy or a delta of `archive`),
/// reconstructed through its chain with every check of the spec; an error names the archive
/// and the byte offset of the member of the version that failed.
pub fn index_bytes(archive: &Archive, e: &EntryRecord) -> Result<IndexVersion> {
    let chain = chain(archive, e)?;
    let mut current: Option<(Vec<u8>, Guid)> = None;
    for x in &chain {
        current = Some(next_version(archive, current.take(), x)?);
    }
    let (bytes, sha1) = current.expect("a chain holds at least the version asked for");
    Ok(IndexVersion {
        bytes,
        sha1,
        deltas: chain.len() - 1,
    })
}

/// An index version ready to stream (`open_version`): its full copy, the payloads of the deltas
/// after it (read and SHA-1 checked), and the length and SHA-1 the version must come to.
pub struct VersionStream<'a> {
    archive: &'a Archive,
    full: &'a EntryRecord,
    last: &'a EntryRecord,
    payloads: Vec<Vec<u8>>,
    pub len: u64,
    pub sha1: Guid,
}

/// The index version `chain` makes (a full copy, then the deltas after it up to the version
/// wanted, oldest first), ready to stream: only its deltas' payloads are read here.
pub fn open_version<'a>(
    archive: &'a Archive,
    chain: &[&'a EntryRecord],
) -> Result<VersionStream<'a>> {
    let path = &archive.paths().archive;
    let (full, deltas) = match chain.split_first() {
        Some((full, deltas))
            if !is_index_delta(full) && deltas.iter().all(|e| is_index_delta(e)) =>
        {
            (*full, deltas)
        }
        _ => {
            let at = chain.first().map_or(0, |e| e.placement.member);
            return Err(Error::corrupt(
                path,
                at,
                "an index version's chain does not start at a full copy",
            ));
        }
    };
    let last = *chain.last().expect("not empty");
    let corrupt = |detail: String| Error::corrupt(path, last.placement.member, detail);
    if full.placement.member >= archive.committed_len() {
        return Err(corrupt(format!(
            "entry {} lies past the committed archive",
            full.name
        )));
    }
    let payloads = deltas
        .iter()
        .map(|e| read_checked(archive, e))
        .collect::<Result<Vec<_>>>()?;
    let (mut len, mut sha1) = (full.size, full.sha1);
    if let Some(p) = payloads.last() {
        let head = index_delta::read_head(p).map_err(|d| corrupt(format!("{}: {d}", last.name)))?;
        (len, sha1) = (head.result_size, head.result_sha1);
    }
    Ok(VersionStream {
        archive,
        full,
        last,
        payloads,
        len,
        sha1,
    })
}

impl VersionStream<'_> {
    /// Hands `sink` the version's bytes, in order and in pieces, as they stream out of the
    /// archive: the version is never held, only its deltas' payloads (issue 19, flat memory).
    /// Every check of `index_bytes` is made on the way (the full copy's and each payload's
    /// length and SHA-1, the result's); on an error, what `sink` was given is not to be
    /// trusted. An error from `sink` stops the stream and is returned as it is.
    pub fn stream(&self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let full = self.full;
        let mut failure: Option<Error> = None;
        let mut reader = self.archive.read_entry(full)?.take(full.size);
        let streamed = index_delta::stream_chain(
            &mut reader,
            full.size,
            &full.sha1,
            &self.payloads,
            &mut |piece| {
                sink(piece).map_err(|e| {
                    let text = e.to_string();
                    failure = Some(e);
                    text
                })
            },
        );
        if let Some(e) = failure {
            return Err(e);
        }
        streamed.map_err(|d| {
            Error::corrupt(
                &self.archive.paths().archive,
                self.last.placement.member,
                format!(
                    "{} (through {} deltas from the full copy at byte {}): {d}",
                    self.last.name,
                    self.payloads.len(),
                    full.placement.member
                ),
            )
        })
    }
}

/// Hands `visit` every record of the index version `chain` makes (as `stream_version` streams
/// it), decoded and checked one at a time, every record's CRC included.
pub fn for_each_record(
    archive: &Archive,
    chain: &[&EntryRecord],
    visit: &mut dyn FnMut(crate::spool::index::IndexRecord) -> Result<()>,
) -> Result<()> {
    for_each_record_with_header(archive, chain, &mut |_, _| {}, visit)
}

/// The index version `e` stands for (as `index_bytes` reads it), parsed as it streams out of
/// the archive, its bytes never held whole: what a restore and `find` read a mailbox's index
/// as (issue 19, flat memory).
pub fn index_file(archive: &Archive, e: &EntryRecord) -> Result<crate::spool::index::IndexFile> {
    let chain = chain(archive, e)?;
    let chain: Vec<&EntryRecord> = chain.iter().collect();
    let chain = &chain[..];
    let mut header = None;
    let records = std::cell::RefCell::new(Vec::new());
    for_each_record_with_header(
        archive,
        chain,
        &mut |h, count| {
            // `count` is the file's own number, checked only against a length the archive's
            // index or a delta head states: reserved up to a cap, and grown past it only by
            // records that really decode.
            records
                .borrow_mut()
                .reserve_exact(count.min(MAX_RECORDS_RESERVE) as usize);
            header = Some(h);
        },
        &mut |r| {
            records.borrow_mut().push(r);
            Ok(())
        },
    )?;
    let header = header.ok_or_else(|| {
        let last = chain.last().map_or(0, |e| e.placement.member);
        Error::corrupt(
            &archive.paths().archive,
            last,
            "an index version without a header",
        )
    })?;
    Ok(crate::spool::index::IndexFile {
        header,
        records: records.into_inner(),
    })
}

/// `for_each_record`, handing the header and the record count to `on_header` first.
fn for_each_record_with_header(
    archive: &Archive,
    chain: &[&EntryRecord],
    on_header: &mut dyn FnMut(crate::spool::index::IndexHeader, u64),
    visit: &mut dyn FnMut(crate::spool::index::IndexRecord) -> Result<()>,
) -> Result<()> {
    use crate::spool::index::{parse_head, MAX_STREAMED_START, MAX_STREAMED_STRIDE};
    let Some(last) = chain.last() else {
        return Err(Error::usage("no version of a cyrus.index to read"));
    };
    let path = &archive.paths().archive;
    let corrupt = |detail: String| Error::corrupt(path, last.placement.member, detail);
    let version = open_version(archive, chain)?;
    // The version's length, which the header's checks need before the bytes are all there.
    let len = version.len;
    // The header is gathered (at most MAX_STREAMED_START bytes), then one record slot at a
    // time; both are capped, as the numbers that size them come from the file.
    let head_want = len.min(MAX_STREAMED_START) as usize;
    let mut head: Vec<u8> = Vec::with_capacity(head_want);
    let mut shape = None;
    let mut slot: Vec<u8> = Vec::new();
    let mut next_record = 0u64;
    let bad = |err: crate::spool::ParseError| corrupt(format!("{}: {err}", last.name));
    let mut take = |mut piece: &[u8]| -> Result<()> {
        if shape.is_none() {
            let n = (head_want - head.len()).min(piece.len());
            head.extend_from_slice(&piece[..n]);
            piece = &piece[n..];
            if head.len() < head_want {
                return Ok(());
            }
            let (header, s) = parse_head(&head, len).map_err(bad)?;
            if s.start > head.len() as u64 || s.stride > MAX_STREAMED_STRIDE || s.stride == 0 {
                return Err(corrupt(format!(
                    "{}: records at {} of {} bytes each are beyond what is read of an index \
                     a piece at a time",
                    last.name, s.start, s.stride
                )));
            }
            on_header(header, s.count);
            slot.reserve_exact(s.stride as usize);
            slot.extend_from_slice(&head[s.start as usize..]);
            head = Vec::new();
            shape = Some(s);
        }
        let s = shape.as_ref().expect("set above");
        loop {
            if next_record >= s.count {
                return Ok(());
            }
            let n = (s.stride as usize - slot.len().min(s.stride as usize)).min(piece.len());
            slot.extend_from_slice(&piece[..n]);
            piece = &piece[n..];
            while slot.len() >= s.stride as usize && next_record < s.count {
                visit(
                    s.decode(next_record, &slot[..s.stride as usize])
                        .map_err(bad)?,
                )?;
                next_record += 1;
                slot.drain(..s.stride as usize);
            }
            if piece.is_empty() {
                return Ok(());
            }
        }
    };
    // The stream makes exactly `len` bytes or fails; what is left to check is that they held
    // every record the header counts.
    version.stream(&mut take)?;
    if shape.as_ref().is_none_or(|s| next_record != s.count) {
        return Err(corrupt(format!(
            "{}: the index version does not read back as {len} bytes of whole records",
            last.name
        )));
    }
    Ok(())
}
