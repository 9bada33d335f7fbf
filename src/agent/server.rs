//! `mailpack agent`: serves a `Source` over frames (formats/protocol.md), one request at a
//! time, until `bye`, end of input, or a protocol error (answered with `ABORT`).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::frame::{base64, read_frame, write_frame, FrameError, FrameKind, CHUNK, STREAM_BUFFER};
use super::{Source, UserListing};
use crate::error::{Error, Result};
use crate::guid::HashingReader;
use crate::io::SourceStat;

pub const PROTOCOL: &str = "mailpack-agent";
pub const VERSION: u64 = 1;
/// Largest listing file a client accepts.
pub const MAX_LISTING: u64 = 256 << 20;

pub(crate) fn stat_json(s: &Option<SourceStat>) -> Value {
    match s {
        Some(s) => json!(s),
        None => Value::Null,
    }
}

pub(crate) fn listing_json(l: &UserListing) -> Value {
    let records = |rs: &[crate::spool::cyrusdb::Record]| -> Value {
        rs.iter()
            .map(|r| json!([base64(&r.key), base64(&r.value)]))
            .collect()
    };
    json!({
        "mailboxes": l.mailboxes.iter().map(|m| json!({
            "domain": m.name.domain,
            "parts": m.name.parts,
            "uniqueid": m.uniqueid,
            "records": records(&m.records),
            "annotations": records(&m.annotations),
            "stats": m.stats.iter().map(stat_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "user_files": l.user_files.iter().map(|f| json!({
            "entry": f.entry, "stat": f.stat, "link": f.link,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn error_json(e: &Error) -> Value {
    let (kind, extra) = match e {
        Error::Busy { path } => ("busy", json!({ "path": path })),
        Error::NotFound(what) => ("not-found", json!({ "what": what })),
        Error::Changed { path, detail } => ("changed", json!({ "path": path, "detail": detail })),
        Error::Corrupt {
            path,
            offset,
            detail,
        } => (
            "corrupt",
            json!({ "path": path, "offset": offset, "detail": detail }),
        ),
        // A foreign file travels as "unsupported": the backup host only needs to know the file
        // is not read, and the wire format stays as formats/protocol.md has it.
        Error::Unsupported { path, detail } | Error::Foreign { path, detail } => {
            ("unsupported", json!({ "path": path, "detail": detail }))
        }
        // A wrong imapd.conf on the mail host travels as "usage", as it did before it had its
        // own variant: the wire format stays as formats/protocol.md has it.
        Error::Usage(_) | Error::Config { .. } => ("usage", json!({})),
        // The backup host only needs the message of a failure on the agent's side.
        Error::Io { .. } | Error::Poisoned(_) | Error::Protocol { .. } | Error::External { .. } => {
            ("io", json!({}))
        }
    };
    let mut v = json!({ "kind": kind, "message": e.to_string() });
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

/// The error an `ERROR` frame describes, as the agent's own would have been.
pub(crate) fn error_from_json(v: &Value) -> Error {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let path = || PathBuf::from(s("path"));
    match s("kind").as_str() {
        "busy" => Error::Busy { path: path() },
        "not-found" => Error::NotFound(s("what")),
        "changed" => Error::Changed {
            path: path(),
            detail: s("detail"),
        },
        "corrupt" => Error::Corrupt {
            path: path(),
            offset: v.get("offset").and_then(Value::as_u64).unwrap_or(0),
            detail: s("detail"),
        },
        "unsupported" => Error::Unsupported {
            path: path(),
            detail: s("detail"),
        },
        _ => Error::usage(format!("agent: {}", s("message"))),
    }
}

/// The two directions of a session, with the deflate layer once agreed.
pub(crate) enum Inbound<R: Read> {
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

pub(crate) enum Outbound<W: Write> {
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

impl<R: Read> Inbound<R> {
    /// Whether more of the client's requests are already here (it sent several at once): then
    /// this answer waits in the buffer and goes out with theirs, in one write.
    fn has_buffered_input(&self) -> bool {
        match self {
            Inbound::Plain(r) => !r.buffer().is_empty(),
            // The decoder's own state is not visible; every answer is flushed.
            Inbound::Deflate(_) => false,
        }
    }

    pub(crate) fn into_deflate(self) -> Self {
        match self {
            Inbound::Plain(r) => Inbound::Deflate(flate2::read::DeflateDecoder::new(r)),
            other => other,
        }
    }
}

impl<W: Write> Outbound<W> {
    pub(crate) fn into_deflate(self) -> Self {
        match self {
            Outbound::Plain(w) => Outbound::Deflate(flate2::write::DeflateEncoder::new(
                w,
                flate2::Compression::fast(),
            )),
            other => other,
        }
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::usage(format!("agent output: {e}"))
}

fn send(out: &mut impl Write, kind: FrameKind, payload: &[u8]) -> Result<()> {
    write_frame(out, kind, payload).map_err(io_err)
}

fn send_json(out: &mut impl Write, kind: FrameKind, v: &Value) -> Result<()> {
    send(out, kind, v.to_string().as_bytes())
}

/// Streams `size` bytes from `r` as `DATA` frames and an `END` with their SHA-1.
fn send_file(out: &mut impl Write, r: &mut dyn Read, size: u64) -> Result<()> {
    let mut hashing = HashingReader::new(r.take(size));
    // Sized to the file: most messages are a few KiB, and zeroing a whole chunk for each would
    // cost more than sending it.
    let mut buf = vec![0u8; (size as usize).clamp(1, CHUNK)];
    loop {
        let n = hashing.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        send(out, FrameKind::Data, &buf[..n])?;
    }
    let sent = hashing.count();
    send_json(
        out,
        FrameKind::End,
        &json!({ "size": sent, "sha1": hashing.digest().to_string() }),
    )
}

/// A message request's fields (`{"uid", "guid", "archived"}`).
fn message_item(item: &Value) -> (u32, crate::guid::Guid, bool) {
    let uid = item["uid"].as_u64().unwrap_or(0) as u32;
    let guid = item["guid"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .unwrap_or(crate::guid::Guid::ZERO);
    (uid, guid, item["archived"].as_bool().unwrap_or(false))
}

/// Answers one message request: `REPLY {"size"}` and the file.
fn fetch_item(
    out: &mut impl Write,
    source: &mut dyn Source,
    (uid, guid, archived): (u32, crate::guid::Guid, bool),
) -> Result<()> {
    match source.fetch_message(uid, &guid, archived)? {
        Some(mut m) => {
            send_json(out, FrameKind::Reply, &json!({ "size": m.size }))?;
            send_file(out, &mut m.reader, m.size)
        }
        None => Err(Error::NotFound(format!("message file of uid {uid}"))),
    }
}

fn abort(out: &mut impl Write, reason: &str) -> Error {
    let _ = send(out, FrameKind::Abort, reason.as_bytes());
    let _ = out.flush();
    Error::usage(format!("agent: {reason}"))
}

/// Serves one session. Returns when the client says `bye` or closes its end; a protocol error
/// is answered with `ABORT` and returned.
pub fn serve<R: Read, W: Write>(source: &mut dyn Source, input: R, output: W) -> Result<()> {
    let mut inbound = Inbound::Plain(BufReader::new(input));
    let mut out = Outbound::Plain(BufWriter::with_capacity(STREAM_BUFFER, output));
    let hello = match read_frame(&mut inbound) {
        Ok(f) if f.kind == FrameKind::Hello => f,
        Ok(f) => {
            return Err(abort(
                &mut out,
                &format!("expected HELLO, got {:?}", f.kind),
            ))
        }
        Err(FrameError::Closed) => return Ok(()),
        Err(FrameError::Protocol(m)) => return Err(abort(&mut out, &m)),
        Err(FrameError::Io(e)) => return Err(io_err(e)),
    };
    let hello: Value = serde_json::from_slice(&hello.payload).unwrap_or(Value::Null);
    let versions_ok = hello["protocol"] == PROTOCOL
        && hello["versions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x.as_u64() == Some(VERSION)));
    if !versions_ok {
        return Err(abort(
            &mut out,
            &format!("this agent speaks {PROTOCOL} version {VERSION} only"),
        ));
    }
    let deflate = hello["compress"] == "deflate";
    send_json(
        &mut out,
        FrameKind::Hello,
        &json!({
            "protocol": PROTOCOL,
            "version": VERSION,
            "compress": if deflate { "deflate" } else { "none" },
            "host": crate::host::hostname(),
            "tool": format!("mailpack {}", env!("CARGO_PKG_VERSION")),
        }),
    )?;
    out.flush().map_err(io_err)?;
    if deflate {
        inbound = inbound.into_deflate();
        out = out.into_deflate();
    }

    loop {
        let frame = match read_frame(&mut inbound) {
            Ok(f) => f,
            Err(FrameError::Closed) => return Ok(()),
            Err(FrameError::Protocol(m)) => return Err(abort(&mut out, &m)),
            Err(FrameError::Io(e)) => return Err(io_err(e)),
        };
        if frame.kind != FrameKind::Request {
            return Err(abort(
                &mut out,
                &format!("expected a REQUEST, got {:?}", frame.kind),
            ));
        }
        let Ok(req) = serde_json::from_slice::<Value>(&frame.payload) else {
            return Err(abort(&mut out, "a REQUEST that is not JSON"));
        };
        let op = req["op"].as_str().unwrap_or_default().to_string();
        let text = |k: &str| req[k].as_str().unwrap_or_default().to_string();
        let result: Result<()> = match op.as_str() {
            "users" => source.users().and_then(|users| {
                send_json(&mut out, FrameKind::Reply, &json!({ "users": users }))
            }),
            "list-user" => source.list_user(&text("user")).and_then(|l| {
                send_json(&mut out, FrameKind::Reply, &json!({}))?;
                let doc = listing_json(&l).to_string().into_bytes();
                send_file(&mut out, &mut &doc[..], doc.len() as u64)
            }),
            "open-mailbox" => source
                .open_mailbox(&text("user"), &text("uniqueid"))
                .and_then(|m| {
                    send_json(
                        &mut out,
                        FrameKind::Reply,
                        &json!({ "stats": m.stats.iter().map(stat_json).collect::<Vec<_>>() }),
                    )?;
                    send_file(&mut out, &mut &m.header[..], m.header.len() as u64)?;
                    send_file(&mut out, &mut &m.index[..], m.index.len() as u64)?;
                    if let Some(a) = &m.annotations {
                        send_file(&mut out, &mut &a[..], a.len() as u64)?;
                    }
                    Ok(())
                }),
            "fetch" => fetch_item(&mut out, source, message_item(&req)),
            "fetch-many" => {
                let items: Vec<_> = req["items"]
                    .as_array()
                    .map(|a| a.iter().map(message_item).collect())
                    .unwrap_or_default();
                send_json(&mut out, FrameKind::Reply, &json!({ "count": items.len() }))?;
                // Lets the spool read ahead; a failure here only means no hints.
                let _ = source.prefetch(&items);
                // Each item is answered as a `fetch` would be; an error stops only that item.
                for &item in &items {
                    if let Err(e) = fetch_item(&mut out, source, item) {
                        send_json(&mut out, FrameKind::Error, &error_json(&e))?;
                    }
                }
                Ok(())
            }
            "close-mailbox" => source
                .close_mailbox()
                .and_then(|_| send_json(&mut out, FrameKind::Reply, &json!({}))),
            "read-user-file" => match source.read_user_file(&text("user"), &text("entry")) {
                Ok(Some((bytes, stat))) => {
                    send_json(&mut out, FrameKind::Reply, &json!({ "stat": stat }))
                        .and_then(|_| send_file(&mut out, &mut &bytes[..], bytes.len() as u64))
                }
                Ok(None) => Err(Error::NotFound(text("entry"))),
                Err(e) => Err(e),
            },
            "bye" => {
                send_json(&mut out, FrameKind::Reply, &json!({}))?;
                out.flush().map_err(io_err)?;
                return Ok(());
            }
            other => return Err(abort(&mut out, &format!("unknown op {other:?}"))),
        };
        if let Err(e) = result {
            send_json(&mut out, FrameKind::Error, &error_json(&e))?;
        }
        if !inbound.has_buffered_input() {
            out.flush().map_err(io_err)?;
        }
    }
}
