//! `mailpack agent`: serves a `Source` over frames (formats/protocol.md), one request at a
//! time, until `bye`, end of input, or a protocol error (answered with `ABORT`).

use std::io::{BufReader, BufWriter, Read, Write};

use super::frame::{read_frame, write_frame, FrameError, FrameKind, CHUNK, STREAM_BUFFER};
use super::proto::{
    BadRequest, Compress, Inbound, Message, Outbound, REmpty, REnd, RError, RFetch, RFetchMany,
    RHello, RListing, ROpenMailbox, RReadUserFile, RServerAnnotations, RSharedTrees, RUsers,
    TFetch, THello, TRequest, PROTOCOL, VERSION,
};
use super::Source;
use crate::error::{Error, Result};
use crate::guid::HashingReader;
use crate::spool::Owner;

/// The agent's errors name it: its stderr is the backup's (through ssh), so the operator sees
/// them next to the backup's own.
const AGENT: &str = "agent";

fn io_err(e: std::io::Error) -> Error {
    // Writing failed: the client went away.
    Error::protocol("agent output", e.to_string())
}

fn send(out: &mut impl Write, kind: FrameKind, payload: &[u8]) -> Result<()> {
    write_frame(out, kind, payload).map_err(io_err)
}

fn send_message(out: &mut impl Write, kind: FrameKind, message: &impl Message) -> Result<()> {
    send(out, kind, &message.encode())
}

fn send_reply(out: &mut impl Write, reply: &impl Message) -> Result<()> {
    send_message(out, FrameKind::Reply, reply)
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
    let end = REnd {
        size: hashing.count(),
        sha1: hashing.digest(),
    };
    send_message(out, FrameKind::End, &end)
}

fn send_bytes(out: &mut impl Write, bytes: &[u8]) -> Result<()> {
    send_file(out, &mut &bytes[..], bytes.len() as u64)
}

/// Answers one message request: `REPLY {"size"}` and the file.
fn fetch_item(out: &mut impl Write, source: &mut dyn Source, item: TFetch) -> Result<()> {
    match source.fetch_message(item.uid, &item.guid, item.archived)? {
        Some(mut m) => {
            send_reply(out, &RFetch { size: m.size })?;
            send_file(out, &mut m.reader, m.size)
        }
        None => Err(Error::NotFound(format!("message file of uid {}", item.uid))),
    }
}

fn abort(out: &mut impl Write, reason: &str) -> Error {
    let _ = send(out, FrameKind::Abort, reason.as_bytes());
    let _ = out.flush();
    Error::protocol(AGENT, reason)
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
    let Some(hello) = THello::decode(&hello.payload)
        .ok()
        .filter(|h| h.protocol == PROTOCOL && h.versions.contains(&VERSION))
    else {
        return Err(abort(
            &mut out,
            &format!("this agent speaks {PROTOCOL} version {VERSION} only"),
        ));
    };
    let answer = RHello {
        protocol: PROTOCOL.into(),
        version: VERSION,
        compress: hello.compress,
        host: crate::host::hostname(),
        tool: format!("mailpack {}", env!("CARGO_PKG_VERSION")),
    };
    send_message(&mut out, FrameKind::Hello, &answer)?;
    out.flush().map_err(io_err)?;
    if hello.compress == Compress::Deflate {
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
        let result = match TRequest::from_payload(&frame.payload) {
            Ok(TRequest::Bye) => {
                send_reply(&mut out, &REmpty {})?;
                out.flush().map_err(io_err)?;
                return Ok(());
            }
            Ok(request) => answer_request(&mut out, source, request),
            Err(BadRequest::NotJson) => {
                return Err(abort(&mut out, "a REQUEST that is not JSON"));
            }
            Err(BadRequest::UnknownOp(op)) => {
                return Err(abort(&mut out, &format!("unknown op {op:?}")));
            }
            Err(BadRequest::Fields { op, detail }) => {
                Err(Error::usage(format!("a bad {op} request: {detail}")))
            }
        };
        if let Err(e) = result {
            send_message(&mut out, FrameKind::Error, &RError::from_error(&e))?;
        }
        if !inbound.has_buffered_input() {
            out.flush().map_err(io_err)?;
        }
    }
}

/// Answers one request: its `REPLY` and files, or the source's error for the caller to send.
fn list_owner(out: &mut impl Write, source: &mut dyn Source, owner: &Owner) -> Result<()> {
    let listing = source.list_owner(owner)?;
    send_reply(out, &REmpty {})?;
    send_bytes(out, &RListing::from(&listing).encode())
}

fn open_mailbox(
    out: &mut impl Write,
    source: &mut dyn Source,
    owner: &Owner,
    uniqueid: &str,
) -> Result<()> {
    let m = source.open_mailbox(owner, uniqueid)?;
    send_reply(out, &ROpenMailbox { stats: m.stats })?;
    send_bytes(out, &m.header)?;
    send_bytes(out, &m.index)?;
    if let Some(a) = &m.annotations {
        send_bytes(out, a)?;
    }
    Ok(())
}

fn answer_request(out: &mut impl Write, source: &mut dyn Source, request: TRequest) -> Result<()> {
    match request {
        TRequest::Users => send_reply(
            out,
            &RUsers {
                users: source.users()?,
            },
        ),
        TRequest::SharedTrees => send_reply(
            out,
            &RSharedTrees {
                trees: source.shared_trees()?,
            },
        ),
        TRequest::ServerAnnotations => send_reply(
            out,
            &RServerAnnotations {
                records: source.server_annotations()?,
            },
        ),
        TRequest::ListUser { user } => list_owner(out, source, &Owner::User(user)),
        TRequest::ListShared { tree } => list_owner(out, source, &Owner::Shared(tree)),
        TRequest::OpenMailbox { user, uniqueid } => {
            open_mailbox(out, source, &Owner::User(user), &uniqueid)
        }
        TRequest::OpenSharedMailbox { tree, uniqueid } => {
            open_mailbox(out, source, &Owner::Shared(tree), &uniqueid)
        }
        TRequest::Fetch(item) => fetch_item(out, source, item),
        TRequest::FetchMany { items } => {
            let count = items.len() as u64;
            send_reply(out, &RFetchMany { count })?;
            // Lets the spool read ahead; a failure here only means no hints.
            let wanted: Vec<_> = items.iter().map(|i| (i.uid, i.guid, i.archived)).collect();
            let _ = source.prefetch(&wanted);
            // Each item is answered as a `fetch` would be; an error stops only that item.
            for item in items {
                if let Err(e) = fetch_item(out, source, item) {
                    send_message(out, FrameKind::Error, &RError::from_error(&e))?;
                }
            }
            Ok(())
        }
        TRequest::CloseMailbox => {
            source.close_mailbox()?;
            send_reply(out, &REmpty {})
        }
        TRequest::ReadUserFile { user, entry } => match source.read_user_file(&user, &entry)? {
            Some((bytes, stat)) => {
                send_reply(out, &RReadUserFile { stat })?;
                send_bytes(out, &bytes)
            }
            None => Err(Error::NotFound(entry)),
        },
        TRequest::Bye | TRequest::Unknown => {
            unreachable!("serve answers bye and refuses an unknown op itself")
        }
    }
}
