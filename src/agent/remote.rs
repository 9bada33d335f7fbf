//! The backup host's side of the protocol (formats/protocol.md): a `Source` whose every call is
//! a request to an agent, normally `ssh host mailpack agent` started with `sh -c`.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::frame::{
    read_header, read_payload, read_rest, write_frame, Frame, FrameError, FrameKind, STREAM_BUFFER,
};
use super::proto::{
    Compress, Inbound, Message, Outbound, REmpty, REnd, RError, RFetch, RFetchMany, RHello,
    RListing, ROpenMailbox, RReadUserFile, RServerAnnotations, RSharedTrees, RUsers, TFetch,
    THello, TRequest, MAX_LISTING, PROTOCOL, VERSION,
};
use super::{MessageFile, OpenedMailbox, Source, UserListing};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::io::SourceStat;
use crate::spool::Owner;

type BoxRead = Box<dyn Read + Send>;
type BoxWrite = Box<dyn Write + Send>;

/// Counts the bytes that pass, for the wire-traffic report.
struct Counted<T> {
    inner: T,
    count: Arc<AtomicU64>,
}

impl<T: Read> Read for Counted<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<T: Write> Write for Counted<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct RemoteSource {
    inbound: Inbound<BoxRead>,
    out: Outbound<BoxWrite>,
    child: Option<Child>,
    peer: String,
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    /// Set when a reply could not be read to its end: the stream is out of step.
    broken: bool,
    /// Messages asked for by `fetch-many` whose answers have not been read yet, in order.
    pending: std::collections::VecDeque<(u32, Guid)>,
    /// Owners whose `list-user` or `list-shared` was sent ahead, answers not read yet, in
    /// order.
    ahead: std::collections::VecDeque<Owner>,
    /// Listings asked for ahead and read off the wire (to let another request's answer
    /// through) before their user's run asked for them, in order: at most one batch of them.
    listed: std::collections::VecDeque<(Owner, Result<UserListing>)>,
}

impl RemoteSource {
    /// Starts `command` with `sh -c` (normally `ssh user@host mailpack agent`) and greets it.
    /// The agent's stderr goes to ours.
    pub fn spawn(command: &str, compress: bool) -> Result<RemoteSource> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::external("sh", format!("cannot start {command:?}: {e}")))?;
        let input = child.stdout.take().expect("piped");
        super::widen_pipe(input.as_fd());
        let output = child.stdin.take().expect("piped");
        let mut source = RemoteSource::over(Box::new(input), Box::new(output), command, compress)?;
        source.child = Some(child);
        Ok(source)
    }

    /// Speaks to an agent over any pair of streams (tests use in-memory pipes).
    pub fn over(
        input: BoxRead,
        output: BoxWrite,
        peer: &str,
        compress: bool,
    ) -> Result<RemoteSource> {
        let received = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let input: BoxRead = Box::new(Counted {
            inner: input,
            count: received.clone(),
        });
        let output: BoxWrite = Box::new(Counted {
            inner: output,
            count: sent.clone(),
        });
        let mut s = RemoteSource {
            inbound: Inbound::Plain(BufReader::with_capacity(STREAM_BUFFER, input)),
            out: Outbound::Plain(BufWriter::new(output)),
            child: None,
            peer: format!("agent {peer:?}"),
            received,
            sent,
            broken: false,
            pending: std::collections::VecDeque::new(),
            ahead: Default::default(),
            listed: Default::default(),
        };
        let compress = if compress {
            Compress::Deflate
        } else {
            Compress::None
        };
        let hello = THello {
            protocol: PROTOCOL.into(),
            versions: vec![VERSION],
            compress,
        };
        s.send_all(FrameKind::Hello, [hello.encode()])?;
        let hello = s.frame()?;
        if hello.kind != FrameKind::Hello {
            return Err(s.unexpected(&hello));
        }
        let Some(hello) = RHello::decode(&hello.payload)
            .ok()
            .filter(|h| h.version == VERSION)
        else {
            return Err(Error::protocol(
                &s.peer,
                format!("does not speak {PROTOCOL} version {VERSION}"),
            ));
        };
        if compress == Compress::Deflate {
            if hello.compress != Compress::Deflate {
                return Err(Error::protocol(&s.peer, "refused compression"));
            }
            s.inbound = std::mem::replace(
                &mut s.inbound,
                Inbound::Plain(BufReader::new(Box::new(io::empty()))),
            )
            .into_deflate();
            s.out = std::mem::replace(
                &mut s.out,
                Outbound::Plain(BufWriter::new(Box::new(io::sink()))),
            )
            .into_deflate();
        }
        Ok(s)
    }

    /// Frames in one write. A write that failed may have sent some of them: the stream is then
    /// out of step.
    fn send_all(
        &mut self,
        kind: FrameKind,
        payloads: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<()> {
        let out = &mut self.out;
        let sent = payloads
            .into_iter()
            .try_for_each(|payload| write_frame(&mut *out, kind, &payload))
            .and_then(|_| out.flush());
        sent.map_err(|e| {
            self.broken = true;
            Error::protocol(&self.peer, e.to_string())
        })
    }

    fn frame(&mut self) -> Result<Frame> {
        let (kind, len) = self.header()?;
        self.rest_of_frame(kind, len)
    }

    fn out_of_step(&self) -> Error {
        Error::protocol(&self.peer, "the session is out of step")
    }

    /// A read from the stream that failed leaves it somewhere inside a frame: out of step.
    fn in_step<T>(&mut self, read: std::result::Result<T, FrameError>) -> Result<T> {
        read.map_err(|e| {
            self.broken = true;
            e.into_error(&self.peer)
        })
    }

    /// The next frame's kind and payload length, for a payload read with `payload` (a file's
    /// `DATA`, straight into the reader's buffer) or `rest_of_frame`.
    fn header(&mut self) -> Result<(FrameKind, usize)> {
        if self.broken {
            return Err(self.out_of_step());
        }
        let header = read_header(&mut self.inbound);
        self.in_step(header)
    }

    /// Some of the payload `header` announced, `left` bytes of which are still to come.
    fn payload(&mut self, out: &mut [u8], left: usize) -> Result<usize> {
        let read = read_payload(&mut self.inbound, out, left);
        self.in_step(read)
    }

    fn rest_of_frame(&mut self, kind: FrameKind, len: usize) -> Result<Frame> {
        let frame = read_rest(&mut self.inbound, kind, len);
        self.in_step(frame)
    }

    fn unexpected(&mut self, f: &Frame) -> Error {
        self.broken = true;
        match f.kind {
            FrameKind::Abort => Error::protocol(
                &self.peer,
                format!("aborted: {}", String::from_utf8_lossy(&f.payload)),
            ),
            kind => Error::protocol(&self.peer, format!("unexpected {kind:?} frame")),
        }
    }

    /// Sends a request; returns its `REPLY`, or the agent's error.
    fn request<T: Message>(&mut self, request: &TRequest) -> Result<T> {
        self.read_listings_sent_ahead(self.ahead.len())?;
        self.discard_pending()?;
        self.send_all(FrameKind::Request, [request.encode()])?;
        self.answer()
    }

    /// Reads one answer: a `REPLY`, or an `ERROR` turned back into the agent's error.
    fn answer<T: Message>(&mut self) -> Result<T> {
        let f = self.frame()?;
        match f.kind {
            // What follows the REPLY (files) cannot be told apart without it.
            FrameKind::Reply => T::decode(&f.payload).map_err(|e| {
                self.broken = true;
                Error::protocol(&self.peer, format!("bad REPLY: {e}"))
            }),
            FrameKind::Error => Err(self.agent_error(&f.payload)),
            _ => Err(self.unexpected(&f)),
        }
    }

    /// The error an `ERROR` frame carries. The frame was read whole: the session stays in step.
    fn agent_error(&self, payload: &[u8]) -> Error {
        match RError::decode(payload) {
            Ok(error) => error.into_error(),
            Err(e) => Error::protocol(&self.peer, format!("bad ERROR: {e}")),
        }
    }

    /// Reads the answers to the first `n` listings asked for ahead and keeps them for their
    /// users' runs. A user's error is kept as its answer; a broken stream is the caller's.
    fn read_listings_sent_ahead(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            let Some(user) = self.ahead.pop_front() else {
                break;
            };
            let listing = self.answer_listing();
            match listing {
                Err(e) if self.broken => return Err(e),
                listing => self.listed.push_back((user, listing)),
            }
        }
        Ok(())
    }

    /// Reads and drops the answers to messages prefetched but never asked for (the caller
    /// stopped early), so the next request's answer is the next thing on the wire.
    fn discard_pending(&mut self) -> Result<()> {
        while self.pending.pop_front().is_some() {
            match self.answer::<RFetch>() {
                Ok(_) => drop(FileStream::new(self, u64::MAX, None)),
                Err(e) if self.broken => return Err(e),
                Err(_) => {}
            }
            if self.broken {
                return Err(self.out_of_step());
            }
        }
        Ok(())
    }

    /// Reads the answer to a `list-user`: its `REPLY` and the listing after it.
    fn answer_listing(&mut self) -> Result<UserListing> {
        self.answer::<REmpty>()?;
        let doc = self.read_file(MAX_LISTING)?;
        let listing = RListing::decode(&doc)
            .map_err(|e| Error::protocol(&self.peer, format!("bad listing: {e}")))?;
        Ok(listing.into())
    }

    /// Reads a whole file of at most `max` bytes and checks its `END`.
    fn read_file(&mut self, max: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let read = FileStream::new(self, max, None).read_to_end(&mut out);
        read.map_err(|e| self.file_error(e))?;
        Ok(out)
    }

    /// The error a `FileStream` read failed with: every one it makes carries ours.
    fn file_error(&self, e: io::Error) -> Error {
        let text = e.to_string();
        match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(error)) => *error,
            _ => Error::protocol(&self.peer, text),
        }
    }
}

/// A file arriving as `DATA` frames; the `END` frame is checked (size and SHA-1 of what
/// arrived) before the reader reports end of file. Dropped early, it reads on to the `END` so
/// the session stays in step.
struct FileStream<'a> {
    source: &'a mut RemoteSource,
    /// For a message, the SHA-1 it must have: the `END` must name it, and the archive writer
    /// hashes the bytes and checks them against it anyway, so hashing here too would only
    /// spend the time twice.
    expected: Option<Guid>,
    hasher: sha1::Sha1,
    count: u64,
    /// Bytes of the current `DATA` frame not read yet: they are read straight into the
    /// caller's buffer, with no copy of the frame of our own.
    left: usize,
    done: bool,
    max: u64,
}

impl<'a> FileStream<'a> {
    fn new(source: &'a mut RemoteSource, max: u64, expected: Option<Guid>) -> FileStream<'a> {
        FileStream {
            source,
            expected,
            hasher: sha1::Sha1::default(),
            count: 0,
            left: 0,
            done: false,
            max,
        }
    }

    fn next_frame(&mut self) -> io::Result<()> {
        let (kind, len) = self.source.header().map_err(io::Error::other)?;
        if kind == FrameKind::Data {
            self.count += len as u64;
            if self.count > self.max {
                self.source.broken = true;
                return Err(io::Error::other(Error::protocol(
                    &self.source.peer,
                    format!("a file longer than {} bytes", self.max),
                )));
            }
            self.left = len;
            return Ok(());
        }
        let f = self
            .source
            .rest_of_frame(kind, len)
            .map_err(io::Error::other)?;
        match f.kind {
            FrameKind::End => {
                self.done = true;
                let refused = |detail: String| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        Error::protocol(&self.source.peer, detail),
                    )
                };
                let end = REnd::decode(&f.payload).map_err(|e| refused(format!("bad END: {e}")))?;
                let digest = match self.expected {
                    Some(guid) => guid,
                    None => Guid(sha1::Digest::finalize(std::mem::take(&mut self.hasher)).into()),
                };
                if end.size != self.count || end.sha1 != digest {
                    return Err(refused(format!(
                        "the file arrived as {} bytes with SHA-1 {digest}; the agent sent {} with {}",
                        self.count, end.size, end.sha1
                    )));
                }
                Ok(())
            }
            FrameKind::Error => {
                self.done = true;
                Err(io::Error::other(self.source.agent_error(&f.payload)))
            }
            _ => {
                let e = self.source.unexpected(&f);
                Err(io::Error::other(e))
            }
        }
    }
}

impl Read for FileStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            if self.done {
                return Ok(0);
            }
            self.next_frame()?;
        }
        let n = self
            .source
            .payload(out, self.left)
            .map_err(io::Error::other)?;
        if self.expected.is_none() {
            sha1::Digest::update(&mut self.hasher, &out[..n]);
        }
        self.left -= n;
        Ok(n)
    }
}

impl Drop for FileStream<'_> {
    fn drop(&mut self) {
        let mut skipped = [0u8; 8192];
        while !self.done && !self.source.broken {
            if self.left > 0 {
                match self.source.payload(&mut skipped, self.left) {
                    Ok(n) => self.left -= n,
                    Err(_) => return,
                }
            } else if self.next_frame().is_err() && !self.done {
                self.source.broken = true;
            }
        }
    }
}

impl Source for RemoteSource {
    fn users(&mut self) -> Result<Vec<String>> {
        let reply: RUsers = self.request(&TRequest::Users)?;
        Ok(reply.users)
    }

    /// Listings asked for ahead are used in the order they were asked for, and one for a user
    /// the caller did not go on to is dropped. A listing is as of when the agent answered,
    /// which may be a few runs earlier: a change after it is seen by the next backup, exactly
    /// as a change made just after any listing is.
    fn shared_trees(&mut self) -> Result<Vec<String>> {
        let reply: RSharedTrees = self.request(&TRequest::SharedTrees)?;
        Ok(reply.trees)
    }

    fn server_annotations(&mut self) -> Result<Vec<crate::spool::cyrusdb::Record>> {
        let reply: RServerAnnotations = self.request(&TRequest::ServerAnnotations)?;
        Ok(reply.records)
    }

    fn list_owner(&mut self, owner: &Owner) -> Result<UserListing> {
        if *owner == Owner::Server {
            // The server's own archive holds no mailbox; nothing to list.
            return Ok(UserListing::default());
        }
        loop {
            if let Some((listed, listing)) = self.listed.pop_front() {
                if listed == *owner {
                    return listing;
                }
            } else if self.ahead.is_empty() {
                self.list_ahead(std::slice::from_ref(owner))?;
            } else {
                self.read_listings_sent_ahead(1)?;
            }
        }
    }

    fn list_ahead(&mut self, owners: &[Owner]) -> Result<()> {
        self.discard_pending()?;
        // One write for them all: the agent answers them back to back, and ssh carries them
        // as one packet each way.
        let owners: Vec<&Owner> = owners.iter().filter(|o| **o != Owner::Server).collect();
        let requests = owners.iter().map(|owner| match owner {
            Owner::User(user) => TRequest::ListUser { user: user.clone() }.encode(),
            Owner::Shared(tree) => TRequest::ListShared { tree: tree.clone() }.encode(),
            Owner::Server => unreachable!("left out above"),
        });
        self.send_all(FrameKind::Request, requests)?;
        self.ahead.extend(owners.into_iter().cloned());
        Ok(())
    }

    fn open_mailbox(&mut self, owner: &Owner, uniqueid: &str) -> Result<OpenedMailbox> {
        let request = match owner {
            Owner::User(user) => TRequest::OpenMailbox {
                user: user.clone(),
                uniqueid: uniqueid.into(),
            },
            Owner::Shared(tree) => TRequest::OpenSharedMailbox {
                tree: tree.clone(),
                uniqueid: uniqueid.into(),
            },
            Owner::Server => {
                return Err(Error::NotFound(format!(
                    "mailbox {uniqueid} of the server itself"
                )))
            }
        };
        let ROpenMailbox { stats } = self.request(&request)?;
        let max = crate::archive::MAX_MEMBER_RAW as u64;
        let header = self.read_file(max)?;
        let index = self.read_file(u32::MAX as u64)?;
        let annotations = match stats[2] {
            Some(_) => Some(self.read_file(u32::MAX as u64)?),
            None => None,
        };
        Ok(OpenedMailbox {
            header,
            index,
            annotations,
            stats,
        })
    }

    fn prefetch(&mut self, messages: &[(u32, Guid, bool)]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let items = messages
            .iter()
            .map(|&(uid, guid, archived)| TFetch {
                uid,
                guid,
                archived,
            })
            .collect();
        self.request::<RFetchMany>(&TRequest::FetchMany { items })?;
        self.pending = messages.iter().map(|(u, g, _)| (*u, *g)).collect();
        Ok(())
    }

    fn fetch_message(
        &mut self,
        uid: u32,
        guid: &Guid,
        archived: bool,
    ) -> Result<Option<MessageFile<'_>>> {
        let reply = if self.pending.front() == Some(&(uid, *guid)) {
            self.pending.pop_front();
            self.answer()
        } else {
            self.request(&TRequest::Fetch(TFetch {
                uid,
                guid: *guid,
                archived,
            }))
        };
        let size = match reply {
            Ok(RFetch { size }) => size,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(MessageFile {
            size,
            reader: Box::new(FileStream::new(self, size, Some(*guid))),
        }))
    }

    fn close_mailbox(&mut self) -> Result<()> {
        self.request::<REmpty>(&TRequest::CloseMailbox).map(|_| ())
    }

    fn read_user_file(&mut self, user: &str, entry: &str) -> Result<Option<(Vec<u8>, SourceStat)>> {
        let request = TRequest::ReadUserFile {
            user: user.into(),
            entry: entry.into(),
        };
        let stat = match self.request(&request) {
            Ok(RReadUserFile { stat }) => stat,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bytes = self.read_file(u32::MAX as u64)?;
        Ok(Some((bytes, stat)))
    }

    /// Bytes received from and sent to the agent so far (after compression, as on the wire).
    fn traffic(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }
}

impl Drop for RemoteSource {
    fn drop(&mut self) {
        if !self.broken {
            let _ = self.request::<REmpty>(&TRequest::Bye);
        }
        if let Some(mut child) = self.child.take() {
            // Closing our ends lets an agent that is still reading see end of file.
            self.out = Outbound::Plain(BufWriter::new(Box::new(io::sink())));
            let _ = child.wait();
        }
    }
}
