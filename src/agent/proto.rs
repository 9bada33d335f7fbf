//! What travels inside the agent's frames (formats/protocol.md sections 3 and 4): one type per
//! JSON payload, each encoded and decoded here only, so the agent (server.rs) and the backup
//! host (remote.rs) share one definition; how an error crosses the wire; the protocol's
//! constants; and the stream layers a session runs over. Frames themselves are frame.rs's.
//! Names follow bupstash and 9P: a `T…` is sent by the client, an `R…` by the agent.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{MailboxListing, UserFileListing, UserListing};
use crate::error::Error;
use crate::guid::Guid;
use crate::io::SourceStat;
use crate::spool::cyrusdb::Record;
use crate::spool::name::MboxName;

pub const PROTOCOL: &str = "mailpack-agent";
pub const VERSION: u64 = 1;
/// Largest listing file a client accepts.
pub const MAX_LISTING: u64 = 256 << 20;

/// A JSON payload: the same encode and decode on both ends.
pub trait Message: Serialize + DeserializeOwned {
    /// Written through a `serde_json::Value`, whose objects keep their keys sorted (serde_json
    /// without `preserve_order`): the bytes are the ones the protocol has always had, whatever
    /// order a struct declares its fields in. `wire_bytes_are_pinned` holds them.
    fn encode(&self) -> Vec<u8> {
        let value = serde_json::to_value(self)
            .expect("a message is plain JSON: string keys, strings and numbers only");
        serde_json::to_vec(&value).expect("a JSON value writes to memory")
    }

    /// Fields this version does not know are ignored, as the spec asks of a consumer.
    fn decode(payload: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(payload)
    }
}

// Section 3, the handshake.

/// `"compress"` of both `HELLO`s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compress {
    Deflate,
    /// Also what an agent makes of a method it does not know: it answers without compression,
    /// and a client that asked for one sees it refused.
    #[default]
    #[serde(other)]
    None,
}

/// The client's `HELLO`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct THello {
    pub protocol: String,
    pub versions: Vec<u64>,
    #[serde(default)]
    pub compress: Compress,
}

/// The agent's `HELLO`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RHello {
    pub protocol: String,
    pub version: u64,
    pub compress: Compress,
    pub host: String,
    pub tool: String,
}

impl Message for THello {}
impl Message for RHello {}

// Section 4, requests and their replies.

/// A `REQUEST`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum TRequest {
    /// Answered with `RUsers`.
    Users,
    /// Answered with `REmpty` and the user's listing as a file (`RListing`).
    ListUser { user: String },
    /// Answered with `ROpenMailbox` and the mailbox's metadata files.
    OpenMailbox { user: String, uniqueid: String },
    /// Answered with `RSharedTrees`.
    SharedTrees,
    /// Answered with `RServerAnnotations`.
    ServerAnnotations,
    /// As `list-user`, for a shared tree (its listing has no per-user files).
    ListShared { tree: String },
    /// As `open-mailbox`, for a mailbox of a shared tree.
    OpenSharedMailbox { tree: String, uniqueid: String },
    /// Answered with `RFetch` and the message file.
    Fetch(TFetch),
    /// Answered with `RFetchMany`, then for each item what `Fetch` would answer.
    FetchMany { items: Vec<TFetch> },
    /// Answered with `REmpty`.
    CloseMailbox,
    /// Answered with `RReadUserFile` and the file.
    ReadUserFile { user: String, entry: String },
    /// Answered with `REmpty`; the agent then exits.
    Bye,
    /// An op this agent does not know (a newer client's): the agent aborts. Never sent.
    #[serde(other)]
    Unknown,
}

/// A message of the open mailbox, in `fetch` and in `fetch-many`'s items.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TFetch {
    pub uid: u32,
    /// The agent reads by uid; the GUID is what the client checks the file against (`REnd`),
    /// so one the agent cannot parse is no reason to refuse the request.
    #[serde(serialize_with = "guid_hex::serialize")]
    #[serde(deserialize_with = "guid_hex::deserialize_or_zero")]
    pub guid: Guid,
    pub archived: bool,
}

/// Why a `REQUEST` payload is not a request this agent serves.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// Not JSON: the session is over.
    NotJson,
    /// An op this agent does not know (`""` when there is none): the session is over.
    UnknownOp(String),
    /// A known op whose fields are missing or not of their type: the client asked wrongly,
    /// answered with an `ERROR` and the session goes on.
    Fields { op: String, detail: String },
}

impl TRequest {
    /// The request a `REQUEST` payload holds, or what is wrong with it.
    pub fn from_payload(payload: &[u8]) -> Result<TRequest, BadRequest> {
        /// The op alone, when the whole request did not decode.
        #[derive(Deserialize)]
        struct Op {
            op: String,
        }
        let op = || serde_json::from_slice::<Op>(payload).map(|o| o.op).ok();
        match TRequest::decode(payload) {
            Ok(TRequest::Unknown) => Err(BadRequest::UnknownOp(op().unwrap_or_default())),
            Ok(request) => Ok(request),
            Err(e) if e.is_syntax() || e.is_eof() => Err(BadRequest::NotJson),
            // An unknown op decodes as `Unknown`; a payload that fails with a string op
            // therefore names a known one.
            Err(e) => match op() {
                Some(op) => Err(BadRequest::Fields {
                    op,
                    detail: e.to_string(),
                }),
                None => Err(BadRequest::UnknownOp(String::new())),
            },
        }
    }
}

/// The `REPLY` to `users`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RUsers {
    pub users: Vec<String>,
}

/// The `REPLY` to `shared-trees`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RSharedTrees {
    pub trees: Vec<String>,
}

/// The `REPLY` to `server-annotations`: the annotations.db records of the server itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RServerAnnotations {
    #[serde(with = "records_base64")]
    pub records: Vec<Record>,
}

/// The `REPLY` to `list-user`, `close-mailbox` and `bye`: `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct REmpty {}

/// The `REPLY` to `open-mailbox`: the stats of cyrus.header, cyrus.index and
/// cyrus.annotations (`None`: absent, and its file is not sent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ROpenMailbox {
    pub stats: [Option<SourceStat>; 3],
}

/// The `REPLY` to `fetch`, and to each item of `fetch-many`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RFetch {
    pub size: u64,
}

/// The `REPLY` to `fetch-many`: how many answers follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RFetchMany {
    pub count: u64,
}

/// The `REPLY` to `read-user-file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RReadUserFile {
    pub stat: SourceStat,
}

/// The `END` of a file: its size and SHA-1 as the agent read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct REnd {
    pub size: u64,
    #[serde(with = "guid_hex")]
    pub sha1: Guid,
}

impl Message for TRequest {}
impl Message for RUsers {}
impl Message for RSharedTrees {}
impl Message for RServerAnnotations {}
impl Message for REmpty {}
impl Message for ROpenMailbox {}
impl Message for RFetch {}
impl Message for RFetchMany {}
impl Message for RReadUserFile {}
impl Message for REnd {}

/// An `ERROR`: `kind` says which error the client rebuilds, from the fields that kind has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RError {
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl Message for RError {}

impl RError {
    /// How the agent sends one of its errors.
    pub fn from_error(e: &Error) -> RError {
        // Lossy: a path that is not UTF-8 cannot be a JSON string; `message` names it too.
        let text = |p: &std::path::Path| Some(p.to_string_lossy().into_owned());
        let (kind, path, what, detail, offset) = match e {
            Error::Busy { path } => ("busy", text(path), None, None, None),
            Error::NotFound(what) => ("not-found", None, Some(what.clone()), None, None),
            Error::Changed { path, detail } => {
                ("changed", text(path), None, Some(detail.clone()), None)
            }
            Error::Corrupt {
                path,
                offset,
                detail,
            } => (
                "corrupt",
                text(path),
                None,
                Some(detail.clone()),
                Some(*offset),
            ),
            // A foreign file travels as "unsupported": the backup host only needs to know the
            // file is not read, and the wire format stays as formats/protocol.md has it.
            Error::Unsupported { path, detail } | Error::Foreign { path, detail } => {
                ("unsupported", text(path), None, Some(detail.clone()), None)
            }
            // A wrong imapd.conf on the mail host travels as "usage", as it did before it had
            // its own variant.
            // A wrong imapd.conf and a refusal travel as "usage", as they did before they had
            // their own variants.
            Error::Usage(_) | Error::Config { .. } | Error::Refused(_) => {
                ("usage", None, None, None, None)
            }
            // The backup host only needs the message of a failure on the agent's side.
            Error::Io { .. }
            | Error::Poisoned(_)
            | Error::Protocol { .. }
            | Error::Remote { .. }
            | Error::External { .. } => ("io", None, None, None, None),
        };
        RError {
            kind: kind.to_string(),
            message: e.to_string(),
            path,
            what,
            detail,
            offset,
        }
    }

    /// The error an `ERROR` describes, as the agent's own would have been where its kind
    /// carries one: a mailbox busy or damaged on the mail host is then skipped exactly as in a
    /// local backup. A field the kind should have and lacks is left empty.
    pub fn into_error(self) -> Error {
        let RError {
            kind,
            message,
            path,
            what,
            detail,
            offset,
        } = self;
        let path = PathBuf::from(path.unwrap_or_default());
        let detail = detail.unwrap_or_default();
        match kind.as_str() {
            "busy" => Error::Busy { path },
            "not-found" => Error::NotFound(what.unwrap_or_default()),
            "changed" => Error::Changed { path, detail },
            "corrupt" => Error::Corrupt {
                path,
                offset: offset.unwrap_or(0),
                detail,
            },
            "unsupported" => Error::Unsupported { path, detail },
            "usage" => Error::usage(format!("agent: {message}")),
            // The agent failed at something of its own (reading the spool, say).
            "io" => Error::external("agent", message),
            // A kind this version does not know: the agent broke the protocol it agreed to.
            _ => Error::protocol("agent", message),
        }
    }
}

// The listing: the file after `list-user`'s reply.

/// A user's listing as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RListing {
    pub mailboxes: Vec<RMailbox>,
    pub user_files: Vec<RUserFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RMailbox {
    pub domain: Option<String>,
    pub parts: Vec<String>,
    pub uniqueid: Option<String>,
    #[serde(with = "records_base64")]
    pub records: Vec<Record>,
    #[serde(with = "records_base64")]
    pub annotations: Vec<Record>,
    pub stats: [Option<SourceStat>; 3],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RUserFile {
    pub entry: String,
    pub stat: SourceStat,
    pub link: Option<String>,
}

impl Message for RListing {}

impl From<&UserListing> for RListing {
    fn from(l: &UserListing) -> RListing {
        RListing {
            mailboxes: l
                .mailboxes
                .iter()
                .map(|m| RMailbox {
                    domain: m.name.domain.clone(),
                    parts: m.name.parts.clone(),
                    uniqueid: m.uniqueid.clone(),
                    records: m.records.clone(),
                    annotations: m.annotations.clone(),
                    stats: m.stats,
                })
                .collect(),
            user_files: l
                .user_files
                .iter()
                .map(|f| RUserFile {
                    entry: f.entry.clone(),
                    stat: f.stat,
                    link: f.link.clone(),
                })
                .collect(),
        }
    }
}

impl From<RListing> for UserListing {
    fn from(l: RListing) -> UserListing {
        UserListing {
            mailboxes: l
                .mailboxes
                .into_iter()
                .map(|m| MailboxListing {
                    name: MboxName {
                        domain: m.domain,
                        parts: m.parts,
                    },
                    uniqueid: m.uniqueid,
                    records: m.records,
                    annotations: m.annotations,
                    stats: m.stats,
                })
                .collect(),
            user_files: l
                .user_files
                .into_iter()
                .map(|f| UserFileListing {
                    entry: f.entry,
                    stat: f.stat,
                    link: f.link,
                })
                .collect(),
        }
    }
}

/// A GUID as its 40 hex digits.
mod guid_hex {
    use super::*;

    pub fn serialize<S: Serializer>(guid: &Guid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(guid)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Guid, D::Error> {
        let hex = String::deserialize(d)?;
        hex.parse()
            .map_err(|()| D::Error::custom(format!("{hex:?} is not a SHA-1 in hex")))
    }

    pub fn deserialize_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Guid, D::Error> {
        Ok(String::deserialize(d)?.parse().unwrap_or(Guid::ZERO))
    }
}

/// Database records as `[key, value]` pairs of base64 strings: they are bytes, not text.
mod records_base64 {
    use super::*;

    pub fn serialize<S: Serializer>(records: &[Record], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(records.iter().map(|r| [base64(&r.key), base64(&r.value)]))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Record>, D::Error> {
        let bytes = |s: &str| unbase64(s).ok_or_else(|| D::Error::custom("a record not in base64"));
        Vec::<(String, String)>::deserialize(d)?
            .iter()
            .map(|(key, value)| {
                Ok(Record {
                    key: bytes(key)?,
                    value: bytes(value)?,
                })
            })
            .collect()
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64, standard alphabet, padded.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                B64.iter().position(|&x| x == c)? as u32
            };
            n |= v << (18 - 6 * i);
        }
        for i in 0..3 - pad {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

// The two directions of a session, with the deflate layer once agreed (section 3).

pub enum Inbound<R: Read> {
    Plain(BufReader<R>),
    Deflate(flate2::read::DeflateDecoder<BufReader<R>>),
}

impl<R: Read> Read for Inbound<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Inbound::Plain(r) => r.read(buf),
            Inbound::Deflate(r) => r.read(buf),
        }
    }
}

impl<R: Read> Inbound<R> {
    /// Whether more of the peer's frames are already here (it sent several at once): then an
    /// answer can wait in the buffer and go out with theirs, in one write.
    pub fn has_buffered_input(&self) -> bool {
        match self {
            Inbound::Plain(r) => !r.buffer().is_empty(),
            // The decoder's own state is not visible; every answer is flushed.
            Inbound::Deflate(_) => false,
        }
    }

    pub fn into_deflate(self) -> Self {
        match self {
            Inbound::Plain(r) => Inbound::Deflate(flate2::read::DeflateDecoder::new(r)),
            other => other,
        }
    }
}

pub enum Outbound<W: Write> {
    Plain(BufWriter<W>),
    Deflate(flate2::write::DeflateEncoder<BufWriter<W>>),
}

impl<W: Write> Write for Outbound<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Outbound::Plain(w) => w.write(buf),
            Outbound::Deflate(w) => w.write(buf),
        }
    }

    /// After a frame: a sync flush, so the peer can decode it without waiting for more.
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Outbound::Plain(w) => w.flush(),
            Outbound::Deflate(w) => w.flush(),
        }
    }
}

impl<W: Write> Outbound<W> {
    pub fn into_deflate(self) -> Self {
        match self {
            Outbound::Plain(w) => Outbound::Deflate(flate2::write::DeflateEncoder::new(
                w,
                flate2::Compression::fast(),
            )),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";

    fn guid() -> Guid {
        SHA1.parse().expect("40 hex digits")
    }

    fn stat() -> SourceStat {
        SourceStat {
            dev: 2049,
            ino: 131,
            size: 4096,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: -5,
        }
    }

    fn listing() -> UserListing {
        UserListing {
            mailboxes: vec![MailboxListing {
                name: MboxName {
                    domain: None,
                    parts: vec!["user".into(), "alice".into(), "Sent".into()],
                },
                uniqueid: Some("4c9a1f0e-1".into()),
                records: vec![Record {
                    key: b"user.alice.Sent".to_vec(),
                    value: b"%(A %(alice lrswipkxtecdan))".to_vec(),
                }],
                annotations: vec![Record {
                    key: vec![0, 255],
                    value: b"x".to_vec(),
                }],
                stats: [Some(stat()), None, Some(stat())],
            }],
            user_files: vec![
                UserFileListing {
                    entry: "meta/seen".into(),
                    stat: stat(),
                    link: None,
                },
                UserFileListing {
                    entry: "meta/sieve/defaultbc".into(),
                    stat: stat(),
                    link: Some("main.bc".into()),
                },
            ],
        }
    }

    fn round_trips<T: Message + PartialEq + std::fmt::Debug>(message: T) {
        let bytes = message.encode();
        let back = T::decode(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&bytes)));
        assert_eq!(back, message, "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn every_message_round_trips() {
        round_trips(THello {
            protocol: PROTOCOL.into(),
            versions: vec![VERSION],
            compress: Compress::Deflate,
        });
        round_trips(RHello {
            protocol: PROTOCOL.into(),
            version: VERSION,
            compress: Compress::None,
            host: "imap1".into(),
            tool: "mailpack 0.1.0".into(),
        });
        let fetch = TFetch {
            uid: 7,
            guid: guid(),
            archived: true,
        };
        for request in [
            TRequest::Users,
            TRequest::ListUser {
                user: "alice".into(),
            },
            TRequest::OpenMailbox {
                user: "alice".into(),
                uniqueid: "4c9a1f0e-1".into(),
            },
            TRequest::Fetch(fetch),
            TRequest::FetchMany {
                items: vec![fetch, TFetch { uid: 8, ..fetch }],
            },
            TRequest::CloseMailbox,
            TRequest::ReadUserFile {
                user: "alice".into(),
                entry: "meta/sieve/main.bc".into(),
            },
            TRequest::Bye,
        ] {
            round_trips(request);
        }
        round_trips(RUsers {
            users: vec!["alice".into(), "bob".into()],
        });
        round_trips(REmpty {});
        round_trips(ROpenMailbox {
            stats: [Some(stat()), Some(stat()), None],
        });
        round_trips(RFetch { size: 1 << 40 });
        round_trips(RFetchMany { count: 2 });
        round_trips(RReadUserFile { stat: stat() });
        round_trips(REnd {
            size: 12,
            sha1: guid(),
        });
        round_trips(RError::from_error(&Error::corrupt("/spool/x", 96, "bad")));
        round_trips(RListing::from(&listing()));
        let back = RListing::decode(&RListing::from(&listing()).encode()).expect("a listing");
        assert_eq!(UserListing::from(back), listing());
    }

    #[test]
    fn every_error_kind_is_rebuilt_as_the_agents_own() {
        let path = PathBuf::from("/var/spool/imap/a/user/alice/cyrus.index");
        for e in [
            Error::Busy { path: path.clone() },
            Error::NotFound("message file of uid 7".into()),
            Error::Changed {
                path: path.clone(),
                detail: "replaced".into(),
            },
            Error::corrupt(&path, 96, "bad record"),
            Error::Unsupported {
                path: path.clone(),
                detail: "outside the folders imapd.conf names; refused".into(),
            },
        ] {
            let wire = RError::decode(&RError::from_error(&e).encode()).expect("an ERROR");
            let back = wire.into_error();
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        // A foreign file travels as unsupported.
        let foreign = Error::Foreign {
            path: path.clone(),
            detail: "is a FIFO".into(),
        };
        let back = RError::from_error(&foreign).into_error();
        assert!(matches!(back, Error::Unsupported { .. }), "{back:?}");
        // The rest keep their message, prefixed with whose it is.
        let usage = RError::from_error(&Error::usage("\"..\" is not a user name")).into_error();
        assert!(matches!(usage, Error::Usage(_)), "{usage:?}");
        assert_eq!(usage.to_string(), "agent: \"..\" is not a user name");
        let io = Error::io("read", &path, std::io::Error::other("disk on fire"));
        let back = RError::from_error(&io).into_error();
        assert!(matches!(back, Error::External { .. }), "{back:?}");
        assert_eq!(back.to_string(), format!("agent: {io}"));
        let unknown = RError::decode(br#"{"kind":"on-fire","message":"too hot","extra":1}"#)
            .expect("unknown fields are ignored")
            .into_error();
        assert!(matches!(unknown, Error::Protocol { .. }), "{unknown:?}");
        assert_eq!(unknown.to_string(), "agent: too hot");
    }

    /// The bytes mailpack 0.1 (before these types) sent for these messages, byte for byte.
    #[test]
    fn wire_bytes_are_pinned() {
        let stat_json =
            r#"{"ctime_ns":-5,"dev":2049,"ino":131,"mtime_ns":1700000000123456789,"size":4096}"#;
        let fetch = TFetch {
            uid: 7,
            guid: guid(),
            archived: false,
        };
        let pinned: Vec<(Vec<u8>, String)> = vec![
            (
                THello {
                    protocol: PROTOCOL.into(),
                    versions: vec![VERSION],
                    compress: Compress::Deflate,
                }
                .encode(),
                r#"{"compress":"deflate","protocol":"mailpack-agent","versions":[1]}"#.into(),
            ),
            (
                RHello {
                    protocol: PROTOCOL.into(),
                    version: VERSION,
                    compress: Compress::None,
                    host: "imap1".into(),
                    tool: "mailpack 0.1.0".into(),
                }
                .encode(),
                r#"{"compress":"none","host":"imap1","protocol":"mailpack-agent","tool":"mailpack 0.1.0","version":1}"#.into(),
            ),
            (TRequest::Users.encode(), r#"{"op":"users"}"#.into()),
            (
                TRequest::OpenMailbox {
                    user: "alice".into(),
                    uniqueid: "4c9a1f0e-1".into(),
                }
                .encode(),
                r#"{"op":"open-mailbox","uniqueid":"4c9a1f0e-1","user":"alice"}"#.into(),
            ),
            (
                TRequest::Fetch(fetch).encode(),
                format!(r#"{{"archived":false,"guid":"{SHA1}","op":"fetch","uid":7}}"#),
            ),
            (
                TRequest::FetchMany {
                    items: vec![TFetch {
                        archived: true,
                        ..fetch
                    }],
                }
                .encode(),
                format!(r#"{{"items":[{{"archived":true,"guid":"{SHA1}","uid":7}}],"op":"fetch-many"}}"#),
            ),
            (
                TRequest::ReadUserFile {
                    user: "alice".into(),
                    entry: "meta/seen".into(),
                }
                .encode(),
                r#"{"entry":"meta/seen","op":"read-user-file","user":"alice"}"#.into(),
            ),
            (REmpty {}.encode(), "{}".into()),
            (
                ROpenMailbox {
                    stats: [Some(stat()), None, None],
                }
                .encode(),
                format!(r#"{{"stats":[{stat_json},null,null]}}"#),
            ),
            (
                REnd {
                    size: 12,
                    sha1: guid(),
                }
                .encode(),
                format!(r#"{{"sha1":"{SHA1}","size":12}}"#),
            ),
            (
                RError::from_error(&Error::corrupt("/spool/alice/cyrus.index", 96, "bad record"))
                    .encode(),
                r#"{"detail":"bad record","kind":"corrupt","message":"/spool/alice/cyrus.index is damaged at byte 96: bad record","offset":96,"path":"/spool/alice/cyrus.index"}"#.into(),
            ),
            (
                RError::from_error(&Error::usage("\"..\" is not a user name")).encode(),
                r#"{"kind":"usage","message":"\"..\" is not a user name"}"#.into(),
            ),
            (
                RListing::from(&listing()).encode(),
                format!(
                    r#"{{"mailboxes":[{{"annotations":[["AP8=","eA=="]],"domain":null,"parts":["user","alice","Sent"],"records":[["dXNlci5hbGljZS5TZW50","JShBICUoYWxpY2UgbHJzd2lwa3h0ZWNkYW4pKQ=="]],"stats":[{stat_json},null,{stat_json}],"uniqueid":"4c9a1f0e-1"}}],"user_files":[{{"entry":"meta/seen","link":null,"stat":{stat_json}}},{{"entry":"meta/sieve/defaultbc","link":"main.bc","stat":{stat_json}}}]}}"#
                ),
            ),
        ];
        for (encoded, expected) in pinned {
            assert_eq!(String::from_utf8(encoded).expect("JSON is UTF-8"), expected);
        }
    }

    #[test]
    fn a_request_is_served_refused_in_band_or_ends_the_session() {
        let parse = |s: &str| TRequest::from_payload(s.as_bytes());
        // Fields this version does not know are ignored.
        assert_eq!(
            parse(r#"{"op":"list-user","user":"alice","since":3}"#),
            Ok(TRequest::ListUser {
                user: "alice".into()
            })
        );
        assert_eq!(parse(r#"{"op":"bye","now":true}"#), Ok(TRequest::Bye));
        // The agent reads by uid: a GUID it cannot parse does not refuse the request.
        assert_eq!(
            parse(r#"{"op":"fetch","uid":1,"guid":"00","archived":false}"#),
            Ok(TRequest::Fetch(TFetch {
                uid: 1,
                guid: Guid::ZERO,
                archived: false
            }))
        );
        assert_eq!(parse("\u{ff}"), Err(BadRequest::NotJson));
        assert_eq!(parse(r#"{"op":"users""#), Err(BadRequest::NotJson));
        assert_eq!(
            parse(r#"{"op":"format-disk","disk":"sda"}"#),
            Err(BadRequest::UnknownOp("format-disk".into()))
        );
        assert_eq!(
            parse(r#"{"user":"x"}"#),
            Err(BadRequest::UnknownOp("".into()))
        );
        assert_eq!(parse("[1]"), Err(BadRequest::UnknownOp("".into())));
        match parse(r#"{"op":"open-mailbox","user":"alice"}"#) {
            Err(BadRequest::Fields { op, detail }) => {
                assert_eq!(op, "open-mailbox");
                assert!(detail.contains("uniqueid"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"op":"fetch","uid":"one","guid":"00","archived":false}"#),
            Err(BadRequest::Fields { .. })
        ));
    }

    #[test]
    fn compression_the_agent_does_not_know_is_none() {
        let hello =
            THello::decode(br#"{"protocol":"mailpack-agent","versions":[1],"compress":"zstd"}"#)
                .expect("a HELLO");
        assert_eq!(hello.compress, Compress::None);
        let hello =
            THello::decode(br#"{"protocol":"mailpack-agent","versions":[1]}"#).expect("a HELLO");
        assert_eq!(hello.compress, Compress::None);
    }

    #[test]
    fn a_listing_whose_records_are_not_base64_is_refused() {
        let bad = br#"{"mailboxes":[{"annotations":[],"domain":null,"parts":["user","a"],"records":[["!!!!","AA=="]],"stats":[null,null,null],"uniqueid":null}],"user_files":[]}"#;
        let e = RListing::decode(bad).expect_err("not base64");
        assert!(e.to_string().contains("base64"), "{e}");
        let short = br#"{"mailboxes":[{"annotations":[],"domain":null,"parts":["user","a"],"records":[],"stats":[null,null],"uniqueid":null}],"user_files":[]}"#;
        assert!(RListing::decode(short).is_err(), "two stats of three");
    }

    #[test]
    fn base64_round_trips() {
        for data in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            &[0, 255, 31],
        ] {
            assert_eq!(unbase64(&base64(data)).unwrap(), data);
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert!(
            unbase64("Zm8").is_none() && unbase64("Z===").is_none() && unbase64("Zm!=").is_none()
        );
    }
}
