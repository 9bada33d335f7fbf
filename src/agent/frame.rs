//! Frames (formats/protocol.md section 2): a big-endian u32 length, a kind byte, a payload of at
//! most `MAX_FRAME` bytes, checked before anything is allocated. What the payloads hold is
//! proto.rs's.

use std::io::{self, Read, Write};

use crate::error::Error;

/// Largest payload of one frame.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest `DATA` payload the agent sends.
pub const CHUNK: usize = 256 << 10;
/// Buffer of the stream that carries files (the agent's output, the client's input): a chunk
/// and its framing fit, and small messages travel several to a system call, so ssh is woken
/// once per buffer rather than for each frame.
pub const STREAM_BUFFER: usize = CHUNK + (64 << 10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Hello = 1,
    Request = 2,
    Reply = 3,
    Data = 4,
    End = 5,
    Error = 6,
    Abort = 7,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Hello,
            2 => FrameKind::Request,
            3 => FrameKind::Reply,
            4 => FrameKind::Data,
            5 => FrameKind::End,
            6 => FrameKind::Error,
            7 => FrameKind::Abort,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the stream between frames.
    Closed,
    /// Bytes that are not a frame: too long, empty, unknown kind, or cut short.
    Protocol(String),
    Io(io::Error),
}

impl FrameError {
    /// The session with `peer` is over: it closed, or sent something that is not a frame.
    pub fn into_error(self, peer: &str) -> Error {
        match self {
            FrameError::Closed => Error::protocol(peer, "closed the connection"),
            FrameError::Protocol(detail) => {
                Error::protocol(peer, format!("protocol error: {detail}"))
            }
            FrameError::Io(e) => Error::protocol(peer, e.to_string()),
        }
    }
}

/// Reads one frame. The length is checked against `MAX_FRAME` before the payload is allocated.
pub fn read_frame(r: &mut impl Read) -> std::result::Result<Frame, FrameError> {
    let (kind, len) = read_header(r)?;
    read_rest(r, kind, len)
}

/// The payload of a frame whose header has been read.
pub fn read_rest(
    r: &mut impl Read,
    kind: FrameKind,
    len: usize,
) -> std::result::Result<Frame, FrameError> {
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(cut)?;
    Ok(Frame { kind, payload })
}

/// A frame's kind and payload length, checked; the payload follows on `r`. A reader of a
/// file's `DATA` frames reads their payload straight into its own buffer with `read_payload`.
pub fn read_header(r: &mut impl Read) -> std::result::Result<(FrameKind, usize), FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Protocol(
                    "stream ends inside a frame length".into(),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME + 1 {
        return Err(FrameError::Protocol(format!(
            "frame of {len} bytes (the limit is {})",
            MAX_FRAME + 1
        )));
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind).map_err(cut)?;
    let kind = FrameKind::from_byte(kind[0])
        .ok_or_else(|| FrameError::Protocol(format!("unknown frame kind {}", kind[0])))?;
    Ok((kind, len - 1))
}

/// Reads some of a payload whose header said `left` more bytes follow: at least one byte
/// when `out` is not empty, at most `left`.
pub fn read_payload(
    r: &mut impl Read,
    out: &mut [u8],
    left: usize,
) -> std::result::Result<usize, FrameError> {
    let want = out.len().min(left);
    loop {
        match r.read(&mut out[..want]) {
            Ok(0) if want > 0 => {
                return Err(FrameError::Protocol("stream ends inside a frame".into()))
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

fn cut(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Protocol("stream ends inside a frame".into())
    } else {
        FrameError::Io(e)
    }
}

pub fn write_frame(w: &mut impl Write, kind: FrameKind, payload: &[u8]) -> io::Result<()> {
    debug_assert!(payload.len() <= MAX_FRAME);
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
    head[4] = kind as u8;
    w.write_all(&head)?;
    w.write_all(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_bounded_before_allocation() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Reply, b"{}").unwrap();
        let f = read_frame(&mut &buf[..]).unwrap();
        assert_eq!(
            (f.kind, f.payload.as_slice()),
            (FrameKind::Reply, &b"{}"[..])
        );
        // A length of 4 GiB is refused from its four bytes alone.
        let huge = [0xff, 0xff, 0xff, 0xff, 3];
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(FrameError::Protocol(_))
        ));
        let unknown = [0, 0, 0, 1, 99];
        match read_frame(&mut &unknown[..]) {
            Err(FrameError::Protocol(m)) => assert!(m.contains("unknown frame kind 99")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_frame(&mut &buf[..3]),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(read_frame(&mut &[][..]), Err(FrameError::Closed)));
    }

    #[test]
    fn a_payload_read_in_pieces_stops_at_its_end_and_a_cut_one_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Data, b"hello world").unwrap();
        write_frame(&mut buf, FrameKind::End, b"{}").unwrap();
        let mut r = &buf[..];
        let (kind, mut left) = read_header(&mut r).unwrap();
        assert_eq!((kind, left), (FrameKind::Data, 11));
        let mut got = Vec::new();
        let mut piece = [0u8; 4];
        while left > 0 {
            let n = read_payload(&mut r, &mut piece, left).unwrap();
            got.extend_from_slice(&piece[..n]);
            left -= n;
        }
        assert_eq!(got, b"hello world");
        assert_eq!(read_frame(&mut r).unwrap().kind, FrameKind::End);

        let cut = &buf[..9];
        let mut r = cut;
        let (_, left) = read_header(&mut r).unwrap();
        let mut all = [0u8; 64];
        assert_eq!(read_payload(&mut r, &mut all, left).unwrap(), 4);
        match read_payload(&mut r, &mut all, left - 4) {
            Err(FrameError::Protocol(m)) => assert!(m.contains("inside a frame"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
