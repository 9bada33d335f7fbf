//! A private, real Cyrus IMAP 3.6 server on 127.0.0.1 for integration tests, and tiny std-only
//! clients to drive it: `server` starts and inspects the instance, `imap`, `lmtp` and `sieve`
//! speak its protocols. This module holds what they share and re-exports what tests use.
//! See CYRUS-FIXTURE.md for the traps this works around. Install the server with
//! `scripts/setup-cyrus`.

mod imap;
mod lmtp;
mod server;
mod sieve;

use std::fmt::Write as _;
use std::time::Duration;

use sha1::{Digest, Sha1};

pub use imap::{internaldate_epoch, mailbox_arg, mutf7_decode, mutf7_encode, Imap, MessageInfo};
pub use lmtp::Lmtp;
pub use server::{cyrus_ids, CyrusOptions, CyrusServer, Layout, VirtDomains, CYRUS_BIN, PASSWORD};

/// Network reads on test sockets never block longer than this; a hung server fails the test.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Lowercase hex SHA-1; of a message file, that is Cyrus's GUID of the message.
pub fn sha1_hex_of(data: &[u8]) -> String {
    let d = Sha1::digest(data);
    let mut s = String::with_capacity(40);
    for b in d.iter() {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

/// Converts bare LF line ends to CRLF, as Cyrus stores messages (and as the clients send them).
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut prev = 0u8;
    for &b in message {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// Standard base64 with padding, for SASL PLAIN in IMAP and ManageSieve.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
