//! The find index file `<stem>.find` (formats/find-index.md section 2): its records, and the
//! one place they are encoded and decoded.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use serde::{Deserialize, Serialize};

use super::fields::Fields;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"MPFINDX\n";
const VERSION: u32 = 1;
/// Decompressed JSON a reader accepts.
const MAX_JSON: u64 = 4 << 30;
/// One line (a message with all its copies).
const MAX_LINE: u64 = 16 << 20;
const MAX_RUNS: usize = 1_000_000;
const MAX_FOLDERS: usize = 1_000_000;
const MAX_NAMES: usize = 64;

/// `<stem>.find` beside `<stem>.tar.gz`.
pub fn find_index_path(archive: &Path) -> PathBuf {
    crate::store::status::beside(archive, ".find")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMark {
    pub run: u64,
    pub time: i64,
    pub end: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub archive_id: String,
    pub deleted_prefix: String,
    pub runs: Vec<RunMark>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FolderName {
    /// Cyrus's internal form, as in the archive's `imap/` entries.
    pub name: String,
    pub first: u64,
    pub last: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunTime {
    pub run: u64,
    pub time: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Folder {
    pub uniqueid: String,
    pub names: Vec<FolderName>,
    pub gone: Option<RunTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndHow {
    Expunged,
    Vanished,
    FolderDeleted,
}

impl EndHow {
    pub fn as_str(self) -> &'static str {
        match self {
            EndHow::Expunged => "expunged",
            EndHow::Vanished => "vanished",
            EndHow::FolderDeleted => "folder deleted",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    pub how: EndHow,
    pub run: u64,
    pub time: i64,
}

/// One copy of a message: a record (UID) of a folder, and when it was live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Copy {
    pub folder: u32,
    pub uid: u32,
    pub internaldate: i64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub flags: Vec<String>,
    pub ended: Option<Ended>,
}

impl Copy {
    /// Live as of the last covered run.
    pub fn is_live(&self) -> bool {
        self.ended.is_none() && self.first.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// 40 hex digits.
    pub sha1: String,
    pub size: u64,
    pub fields: Option<Fields>,
    pub seen: Vec<Copy>,
}

/// The whole find index of one archive.
#[derive(Clone, Debug, PartialEq)]
pub struct FindIndex {
    pub head: Head,
    pub folders: Vec<Folder>,
    pub messages: Vec<Message>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Head(Head),
    Folder(Folder),
    Message(Message),
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum LineRef<'a> {
    Head(&'a Head),
    Folder(&'a Folder),
    Message(&'a Message),
}

/// The file's bytes.
pub fn encode(index: &FindIndex) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 << 10);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    // Fast deflate: the file is rewritten after every backup of the owner, and read whole.
    let mut z = ZlibEncoder::new(out, flate2::Compression::fast());
    let lines = std::iter::once(LineRef::Head(&index.head))
        .chain(index.folders.iter().map(LineRef::Folder))
        .chain(index.messages.iter().map(LineRef::Message));
    for line in lines {
        // Writing JSON into memory cannot fail.
        let _ = serde_json::to_writer(&mut z, &line);
        let _ = z.write_all(b"\n");
    }
    z.finish().unwrap_or_default()
}

/// Reads and checks a find index: `Ok(None)` when there is none; an error (naming the file and
/// where) when it cannot be used, which the caller answers by rebuilding.
pub fn read(path: &Path) -> Result<Option<FindIndex>> {
    let file = match crate::io::open_own(path) {
        Ok(f) => f,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    decode(BufReader::new(file), path).map(Some)
}

pub fn decode(input: impl Read, path: &Path) -> Result<FindIndex> {
    let mut all = |_: &Head, _: &[Folder], _: &Message| Some(true);
    let (index, _) = decode_filtered(input, path, &mut all)?.expect("never stopped");
    Ok(index)
}

/// What `decode_filtered` asks of each message line: `None` stops the reading (the caller has
/// no use for the rest), `Some(false)` leaves the message out.
pub type Keep<'a> = dyn FnMut(&Head, &[Folder], &Message) -> Option<bool> + 'a;

/// As `decode`, keeping only the messages `keep` wants, with every check `decode` makes: a
/// search of a large index then holds its folders and what it found, not every message. Also
/// returns how many message lines the file holds; `None` when `keep` stopped the reading.
pub fn decode_filtered(
    mut input: impl Read,
    path: &Path,
    keep: &mut Keep,
) -> Result<Option<(FindIndex, usize)>> {
    let bad = |at: u64, what: String| Error::corrupt(path, at, what);
    let mut lead = [0u8; 12];
    input
        .read_exact(&mut lead)
        .map_err(|_| bad(0, "shorter than the find index header".into()))?;
    if &lead[..8] != MAGIC {
        return Err(bad(0, "not a find index (bad magic)".into()));
    }
    let version = u32::from_le_bytes([lead[8], lead[9], lead[10], lead[11]]);
    if version != VERSION {
        return Err(bad(8, format!("unsupported find index version {version}")));
    }
    let mut json = BufReader::new(ZlibDecoder::new(input).take(MAX_JSON + 1));
    let mut line = Vec::new();
    let mut at: u64 = 0;
    let mut head = None;
    let mut folders = Vec::new();
    let mut messages = Vec::new();
    let mut message_lines = 0usize;
    let mut number = 0u64;
    loop {
        line.clear();
        let n = (&mut json)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| bad(12, format!("compressed body: {e}")))?;
        if n == 0 {
            break;
        }
        number += 1;
        let where_ = format!("JSON line {number} (decompressed byte {at})");
        at += n as u64;
        if at > MAX_JSON {
            return Err(bad(12, format!("more than {MAX_JSON} bytes of JSON")));
        }
        if line.last() != Some(&b'\n') {
            return Err(bad(12, format!("{where_}: too long or not ended")));
        }
        let parsed: Line =
            serde_json::from_slice(&line).map_err(|e| bad(12, format!("{where_}: {e}")))?;
        match (parsed, &head) {
            (Line::Head(h), None) if number == 1 => {
                if h.runs.len() > MAX_RUNS {
                    return Err(bad(12, format!("{where_}: more than {MAX_RUNS} runs")));
                }
                head = Some(h);
            }
            (Line::Folder(f), Some(_)) if message_lines == 0 => {
                if folders.len() >= MAX_FOLDERS || f.names.len() > MAX_NAMES {
                    return Err(bad(12, format!("{where_}: too many folders or names")));
                }
                folders.push(f);
            }
            (Line::Message(m), Some(h)) => {
                let known = m.sha1.len() == 40
                    && m.sha1.bytes().all(|b| b.is_ascii_hexdigit())
                    && m.seen.iter().all(|c| (c.folder as usize) < folders.len());
                if !known {
                    return Err(bad(
                        12,
                        format!("{where_}: bad SHA-1 or a folder number out of range"),
                    ));
                }
                message_lines += 1;
                match keep(h, &folders, &m) {
                    None => return Ok(None),
                    Some(true) => messages.push(m),
                    Some(false) => {}
                }
            }
            _ => return Err(bad(12, format!("{where_}: out of order"))),
        }
    }
    let head = head.ok_or_else(|| bad(12, "no head line".into()))?;
    Ok(Some((
        FindIndex {
            head,
            folders,
            messages,
        },
        message_lines,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FindIndex {
        FindIndex {
            head: Head {
                archive_id: "00112233445566778899aabbccddeeff".into(),
                deleted_prefix: "DELETED".into(),
                runs: vec![RunMark {
                    run: 1,
                    time: 1_765_000_000,
                    end: 4096,
                }],
            },
            folders: vec![Folder {
                uniqueid: "u1".into(),
                names: vec![FolderName {
                    name: "user.alice".into(),
                    first: 1,
                    last: None,
                }],
                gone: None,
            }],
            messages: vec![Message {
                sha1: "a".repeat(40),
                size: 10,
                fields: Some(Fields {
                    subject: Some("Invoice".into()),
                    ..Fields::default()
                }),
                seen: vec![Copy {
                    folder: 0,
                    uid: 1,
                    internaldate: 5,
                    first: Some(1),
                    last: None,
                    flags: vec!["\\Seen".into()],
                    ended: Some(Ended {
                        how: EndHow::Expunged,
                        run: 2,
                        time: 7,
                    }),
                }],
            }],
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_an_error_or_the_same_index() {
        let index = sample();
        let bytes = encode(&index);
        let p = Path::new("x.find");
        assert_eq!(decode(&bytes[..], p).unwrap(), index);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                // Adler-32 and the JSON checks leave no flipped byte unnoticed but those that
                // decode to the same records (none here): anything else is an error, never a
                // panic.
                if let Ok(got) = decode(&b[..], p) {
                    assert_eq!(got, index, "byte {i} bit {bit:#x}");
                }
            }
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], p).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn copies_must_name_a_folder_and_lines_come_in_order() {
        let mut index = sample();
        index.messages[0].seen[0].folder = 1;
        assert!(decode(&encode(&index)[..], Path::new("x")).is_err());
        let mut index = sample();
        index.messages[0].sha1 = "zz".into();
        assert!(decode(&encode(&index)[..], Path::new("x")).is_err());
    }
}
