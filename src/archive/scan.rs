//! Reads an archive front to back (or from a member boundary on) and reports every entry with
//! its exact placement, every commit marker, and every piece of damage, without stopping at the
//! first problem. Recovery, reindex and verify are all built on this one pass.

use std::collections::VecDeque;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use super::marker::{self, marker_run, Marker};
use super::member::{Member, MemberError, MemberReader};
use super::pax::PaxMeta;
use super::tar::{decode_block, decode_pax, padded, Block, RawHeader, BLOCK};
use super::{
    check_name, EntryKind, EntryRecord, Placement, FILES_DIR, MAX_ENTRY_SIZE, MAX_MARKER, MAX_PAX,
};
use crate::guid::Guid;

#[derive(Debug)]
pub enum ScanEvent {
    /// A complete, well-formed entry.
    Entry(ScannedEntry),
    /// A complete commit marker, alone in its member.
    Commit(ScannedMarker),
    /// Something is wrong at `offset` (a member start); scanning went on after it.
    Damage(Damage),
    /// A member decoded completely.
    MemberEnd(Member),
}

#[derive(Debug)]
pub struct ScannedEntry {
    pub record: EntryRecord,
    pub run: Option<u64>,
    pub mtime: u64,
}

/// A commit marker as the scanner found it: what it says, and the member it stands alone in.
#[derive(Debug, Clone)]
pub struct ScannedMarker {
    pub marker: Marker,
    pub member: Member,
}

#[derive(Debug, Clone)]
pub struct Damage {
    /// Offset of the gzip member where the problem is.
    pub offset: u64,
    /// Offset inside the member's decompressed bytes, when known.
    pub within: Option<u64>,
    pub entry: Option<String>,
    pub detail: String,
    /// The file ends inside a member (a torn append) rather than holding wrong bytes.
    pub torn: bool,
}

/// Where in the decompressed stream a member starts.
#[derive(Clone, Copy)]
struct MemberPos {
    offset: u64,
    stream_start: u64,
}

struct Partial {
    name: String,
    kind: EntryKind,
    target: String,
    size: u64,
    mtime: u64,
    member: MemberPos,
    header_stream: u64,
    data_stream: u64,
    pax: Vec<(String, String)>,
}

type PendingPax = (Vec<(String, String)>, MemberPos, u64);

enum State {
    Header,
    PaxBody {
        remaining: u64,
        pad: u64,
    },
    Data {
        remaining: u64,
        pad: u64,
    },
    Padding {
        remaining: u64,
    },
    /// After a tar-level error the rest of the member cannot be trusted.
    SkipMember,
}

pub struct Scanner<R> {
    path: PathBuf,
    members: MemberReader<R>,
    events: VecDeque<ScanEvent>,
    raw: Vec<u8>,
    done: bool,
    state: State,
    stream: u64,
    header: Vec<u8>,
    pax_buf: Vec<u8>,
    /// Records of a pax header waiting for its entry, where that header started.
    pending_pax: Option<PendingPax>,
    partial: Option<Partial>,
    hasher: Sha1,
    marker_body: Vec<u8>,
    /// A marker whose data ended in this member: committed if nothing follows it in the member.
    pending_marker: Option<Partial>,
    entry_after_marker: bool,
}

impl<R: Read + Seek> Scanner<R> {
    /// Scans `file` from `offset`, which must be a member boundary (0, or a committed length).
    pub fn new(file: R, path: &Path, offset: u64) -> std::io::Result<Self> {
        Ok(Scanner {
            path: path.to_path_buf(),
            members: MemberReader::new(file, offset)?,
            events: VecDeque::new(),
            raw: Vec::new(),
            done: false,
            state: State::Header,
            stream: 0,
            header: Vec::with_capacity(BLOCK),
            pax_buf: Vec::new(),
            pending_pax: None,
            partial: None,
            hasher: Sha1::new(),
            marker_body: Vec::new(),
            pending_marker: None,
            entry_after_marker: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reset_tar(&mut self) {
        self.state = State::Header;
        self.header.clear();
        self.pending_pax = None;
        self.partial = None;
        self.pending_marker = None;
        self.entry_after_marker = false;
    }

    fn damage(&mut self, offset: u64, within: Option<u64>, entry: Option<String>, detail: String) {
        self.events.push_back(ScanEvent::Damage(Damage {
            offset,
            within,
            entry,
            detail,
            torn: false,
        }));
    }

    fn fill(&mut self) {
        let mut raw = std::mem::take(&mut self.raw);
        match self.members.next_member(&mut raw) {
            Ok(None) => {
                if self.partial.is_some() || !self.header.is_empty() || self.pending_pax.is_some() {
                    let at = self.members.position();
                    self.events.push_back(ScanEvent::Damage(Damage {
                        offset: at,
                        within: None,
                        entry: self.partial.as_ref().map(|p| p.name.clone()),
                        detail: "archive ends inside an entry".into(),
                        torn: true,
                    }));
                }
                self.done = true;
            }
            Ok(Some(member)) => {
                let pos = MemberPos {
                    offset: member.offset,
                    stream_start: self.stream,
                };
                self.feed(pos, &raw);
                self.stream += raw.len() as u64;
                self.finish_member(member);
            }
            Err(MemberError::Io(e)) => {
                self.damage(
                    self.members.position(),
                    None,
                    None,
                    format!("read error: {e}"),
                );
                self.done = true;
            }
            Err(err) => {
                let offset = err.offset().unwrap_or(0);
                let (torn, detail) = match err {
                    MemberError::Torn { detail, .. } => (true, detail),
                    MemberError::Bad { detail, .. } => (false, detail),
                    MemberError::Io(_) => unreachable!(),
                };
                self.events.push_back(ScanEvent::Damage(Damage {
                    offset,
                    within: None,
                    entry: self.partial.as_ref().map(|p| p.name.clone()),
                    detail,
                    torn,
                }));
                self.reset_tar();
                if torn {
                    self.done = true;
                } else {
                    match self.members.resync(offset) {
                        Ok(Some(_)) => {}
                        Ok(None) => self.done = true,
                        Err(e) => {
                            self.damage(offset, None, None, format!("read error: {e}"));
                            self.done = true;
                        }
                    }
                }
            }
        }
        self.raw = raw;
    }

    fn finish_member(&mut self, member: Member) {
        if matches!(self.state, State::SkipMember) {
            self.reset_tar();
        }
        if let Some(partial) = self.pending_marker.take() {
            let clean = !self.entry_after_marker
                && matches!(self.state, State::Header)
                && self.header.is_empty()
                && self.pending_pax.is_none()
                && partial.header_stream == partial.member.stream_start;
            if clean {
                let name_run = marker_run(&partial.name).expect("only markers are pending");
                match marker::decode(name_run, partial.size, &self.marker_body) {
                    Ok(marker) => self.events.push_back(ScanEvent::Commit(ScannedMarker {
                        marker,
                        member: member.clone(),
                    })),
                    // The damage is placed at the marker's header, as for any other entry.
                    Err(e) => self.damage(
                        member.offset,
                        Some(partial.header_stream - partial.member.stream_start),
                        Some(partial.name.clone()),
                        e.detail,
                    ),
                }
            } else {
                self.damage(
                    member.offset,
                    None,
                    Some(partial.name.clone()),
                    "commit marker does not stand alone in its gzip member".into(),
                );
            }
        }
        self.entry_after_marker = false;
        self.events.push_back(ScanEvent::MemberEnd(member));
    }

    fn feed(&mut self, pos: MemberPos, raw: &[u8]) {
        let mut i = 0usize;
        while i < raw.len() {
            let here = pos.stream_start + i as u64;
            match self.state {
                State::SkipMember => return,
                State::Header => {
                    let want = BLOCK - self.header.len();
                    let take = want.min(raw.len() - i);
                    if self.header.is_empty() && self.pending_marker.is_some() {
                        self.entry_after_marker = true;
                    }
                    self.header.extend_from_slice(&raw[i..i + take]);
                    i += take;
                    if self.header.len() == BLOCK {
                        let block: [u8; BLOCK] = self.header[..].try_into().expect("one block");
                        self.header.clear();
                        let header_stream = here + take as u64 - BLOCK as u64;
                        self.on_header(pos, header_stream, &block);
                    }
                }
                State::PaxBody { remaining, pad } => {
                    let take = (remaining.min((raw.len() - i) as u64)) as usize;
                    self.pax_buf.extend_from_slice(&raw[i..i + take]);
                    i += take;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        let records = decode_pax(&self.pax_buf);
                        self.pax_buf.clear();
                        match records {
                            Ok(records) => {
                                if let Some(p) = &mut self.pending_pax {
                                    p.0 = records;
                                }
                                self.state = State::Padding { remaining: pad };
                            }
                            Err(e) => {
                                let (_, mpos, start) =
                                    self.pending_pax.take().expect("pax pending");
                                // Placed at the pax header, as every entry's damage is.
                                let within = Some(start - mpos.stream_start);
                                self.damage(mpos.offset, within, None, e.detail);
                                self.state = State::SkipMember;
                            }
                        }
                    } else {
                        self.state = State::PaxBody { remaining, pad };
                    }
                }
                State::Data { remaining, pad } => {
                    let take = (remaining.min((raw.len() - i) as u64)) as usize;
                    let chunk = &raw[i..i + take];
                    self.hasher.update(chunk);
                    if self.marker_body.len() + chunk.len() <= MAX_MARKER {
                        self.marker_body.extend_from_slice(chunk);
                    }
                    i += take;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        self.state = State::Padding { remaining: pad };
                        self.finish_entry();
                    } else {
                        self.state = State::Data { remaining, pad };
                    }
                }
                State::Padding { remaining } => {
                    let take = (remaining.min((raw.len() - i) as u64)) as usize;
                    i += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::Header
                    } else {
                        State::Padding { remaining }
                    };
                }
            }
        }
    }

    fn on_header(&mut self, pos: MemberPos, header_stream: u64, block: &[u8; BLOCK]) {
        let within = header_stream.saturating_sub(pos.stream_start);
        let raw = match decode_block(block) {
            Ok(Block::Zero) => return,
            Ok(Block::Header(h)) => h,
            Err(e) => {
                self.damage(pos.offset, Some(within), None, e.detail);
                self.pending_pax = None;
                self.state = State::SkipMember;
                return;
            }
        };
        if raw.typeflag == b'x' {
            if self.pending_pax.is_some() {
                self.damage(
                    pos.offset,
                    Some(within),
                    None,
                    "two pax headers in a row".into(),
                );
            }
            if raw.size > MAX_PAX as u64 {
                self.damage(
                    pos.offset,
                    Some(within),
                    None,
                    format!("pax header of {} bytes", raw.size),
                );
                self.state = State::SkipMember;
                return;
            }
            self.pending_pax = Some((Vec::new(), pos, header_stream));
            self.state = if raw.size == 0 {
                State::Header
            } else {
                State::PaxBody {
                    remaining: raw.size,
                    pad: padded(raw.size) - raw.size,
                }
            };
            return;
        }
        let (pax, member, start) = match self.pending_pax.take() {
            Some((records, mpos, start)) => (records, mpos, start),
            None => (Vec::new(), pos, header_stream),
        };
        self.start_entry(raw, pax, member, start, header_stream + BLOCK as u64);
    }

    fn start_entry(
        &mut self,
        raw: RawHeader,
        pax: Vec<(String, String)>,
        member: MemberPos,
        header_stream: u64,
        data_stream: u64,
    ) {
        let mut name = raw.name;
        let mut target = raw.link;
        let mut size = raw.size;
        let mut bad: Option<String> = None;
        for (k, v) in &pax {
            match k.as_str() {
                "path" => name = v.clone(),
                "linkpath" => target = v.clone(),
                "size" => match v.parse() {
                    Ok(s) => size = s,
                    Err(_) => bad = Some(format!("pax size {v:?} is not a number")),
                },
                _ => {}
            }
        }
        let kind = match raw.typeflag {
            b'0' | 0 => EntryKind::File,
            b'2' => EntryKind::Symlink,
            other => {
                bad = Some(format!("unsupported tar entry type {:?}", other as char));
                EntryKind::File
            }
        };
        if kind == EntryKind::Symlink && size != 0 {
            bad = Some("symlink entry with data".into());
        }
        if let Err(e) = check_name(&name) {
            bad = Some(e);
        }
        let within = header_stream - member.stream_start;
        if size > MAX_ENTRY_SIZE {
            // No entry this large was ever written: the size field is damaged, and the entry
            // cannot be stepped over.
            self.damage(
                member.offset,
                Some(within),
                Some(name),
                format!("entry size {size} is beyond any mailpack writes ({MAX_ENTRY_SIZE})"),
            );
            self.state = State::SkipMember;
            return;
        }
        if let Some(detail) = bad {
            // The size is still known, so the entry can be stepped over.
            self.damage(member.offset, Some(within), Some(name.clone()), detail);
        }
        self.hasher = Sha1::new();
        self.marker_body.clear();
        self.partial = Some(Partial {
            name,
            kind,
            target,
            size,
            mtime: raw.mtime,
            member,
            header_stream,
            data_stream,
            pax,
        });
        if size == 0 {
            self.state = State::Header;
            self.finish_entry();
        } else {
            self.state = State::Data {
                remaining: size,
                pad: padded(size) - size,
            };
        }
    }

    fn finish_entry(&mut self) {
        let partial = self.partial.take().expect("an entry is open");
        let digest = std::mem::replace(&mut self.hasher, Sha1::new()).finalize();
        let sha1 = if partial.kind == EntryKind::File {
            Guid(digest.into())
        } else {
            Guid::ZERO
        };
        let within = partial.header_stream - partial.member.stream_start;
        let mut problems = Vec::new();
        if check_name(&partial.name).is_err()
            || partial.kind == EntryKind::Symlink && partial.size != 0
        {
            return; // already reported by start_entry
        }
        if let Some(hex) = partial.name.strip_prefix(FILES_DIR) {
            match hex.parse::<Guid>() {
                Ok(named) if named == sha1 => {}
                Ok(_) => problems.push(format!("data hashes to {sha1}, not to its name")),
                Err(_) => problems.push("files/ entry not named by a SHA-1".to_string()),
            }
        }
        let pax = PaxMeta::decode(&partial.pax);
        match &pax {
            Ok(meta) => {
                if let Some(claimed) = meta.sha1 {
                    if claimed != sha1 {
                        problems.push(format!("data hashes to {sha1}, pax record says {claimed}"));
                    }
                }
            }
            Err(e) => problems.push(e.clone()),
        }
        if marker_run(&partial.name).is_some() {
            if partial.kind != EntryKind::File {
                problems.push("commit marker is not a regular file".into());
            } else if problems.is_empty() {
                self.pending_marker = Some(partial);
                return;
            }
        }
        if !problems.is_empty() {
            self.damage(
                partial.member.offset,
                Some(within),
                Some(partial.name.clone()),
                problems.join("; "),
            );
            return;
        }
        let meta = pax.expect("checked above");
        self.events.push_back(ScanEvent::Entry(ScannedEntry {
            record: EntryRecord {
                name: partial.name,
                kind: partial.kind,
                target: partial.target,
                placement: Placement {
                    member: partial.member.offset,
                    header_at: within as u32,
                    data_at: partial.data_stream - partial.member.stream_start,
                },
                size: partial.size,
                sha1,
                stat: meta.stat.map(Box::new),
            },
            run: meta.run,
            mtime: partial.mtime,
        }));
    }
}

impl<R: Read + Seek> Iterator for Scanner<R> {
    type Item = ScanEvent;

    fn next(&mut self) -> Option<ScanEvent> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            self.fill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_size_past_the_cap_is_damage_not_an_overflow() {
        for size in [u64::MAX, MAX_ENTRY_SIZE + 1] {
            let mut tar = Vec::new();
            super::super::tar::encode_headers(
                &super::super::tar::HeaderSpec {
                    name: "files/0000000000000000000000000000000000000000",
                    kind: EntryKind::File,
                    target: "",
                    size,
                    mtime: 0,
                    pax: Vec::new(),
                },
                &mut tar,
            );
            tar.extend_from_slice(&[b'x'; 1024]);
            let member = super::super::member::compress_member(&tar, 6).unwrap();
            let scanner =
                Scanner::new(std::io::Cursor::new(member), Path::new("t.tar.gz"), 0).unwrap();
            let damage: Vec<Damage> = scanner
                .filter_map(|e| match e {
                    ScanEvent::Damage(d) => Some(d),
                    _ => None,
                })
                .collect();
            assert!(
                damage
                    .iter()
                    .any(|d| d.offset == 0 && d.detail.contains("entry size")),
                "{size}: {damage:?}"
            );
        }
    }
}
