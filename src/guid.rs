//! `Guid`: the SHA-1 of a file's bytes. Cyrus calls the SHA-1 of a message file its GUID, and the
//! archive names message entries by it; inside the program it is always this type, and hex
//! appears only at the edges (entry names, JSON, messages).

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha1::{Digest, Sha1};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 20]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 20]);

    pub fn of(bytes: &[u8]) -> Guid {
        Guid(Sha1::digest(bytes).into())
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 20]
    }

    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Parses exactly 40 lower-case hex digits: entry names must have one spelling.
impl FromStr for Guid {
    type Err = ();

    fn from_str(s: &str) -> Result<Guid, ()> {
        let bytes = s.as_bytes();
        if bytes.len() != 40 {
            return Err(());
        }
        let mut out = [0u8; 20];
        for (i, pair) in bytes.chunks(2).enumerate() {
            out[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Guid(out))
    }
}

fn hex_digit(c: u8) -> Result<u8, ()> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(()),
    }
}

/// Hashes everything read through it, so a copy and its SHA-1 take one pass.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha1,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha1::new(),
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The SHA-1 of what has been read so far.
    pub fn digest(&self) -> Guid {
        Guid(self.hasher.clone().finalize().into())
    }

    pub fn finish(self) -> (Guid, u64) {
        (Guid(self.hasher.finalize().into()), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_strictness() {
        let g = Guid::of(b"hello\n");
        assert_eq!(g.to_hex(), "f572d396fae9206628714fb2ce00f72e94f2258f");
        assert_eq!(g.to_hex().parse::<Guid>(), Ok(g));
        assert!("F572D396FAE9206628714FB2CE00F72E94F2258F"
            .parse::<Guid>()
            .is_err());
        assert!("f572".parse::<Guid>().is_err());
        assert!("g572d396fae9206628714fb2ce00f72e94f2258f"
            .parse::<Guid>()
            .is_err());
    }

    #[test]
    fn hashing_reader_matches_digest() {
        let data = vec![7u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish(), (Guid::of(&data), 100_000));
    }
}
