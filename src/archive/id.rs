//! `ArchiveId`: the 16 random bytes fixed when an archive is created (formats/archive.md section
//! 4, the commit marker's `archive-id`; section 5, the index header). Every marker and the index
//! carry it, so neither is taken for another archive's; inside the program it is always this
//! type, and hex appears only at the edges (the marker's text, messages).

use std::fmt;
use std::str::FromStr;

use crate::error::Result;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArchiveId(pub [u8; 16]);

impl ArchiveId {
    /// A new id from the kernel's random source, for an archive's first run.
    pub fn random() -> Result<ArchiveId> {
        Ok(ArchiveId(crate::io::random_id()?))
    }
}

impl fmt::Display for ArchiveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ArchiveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArchiveId({self})")
    }
}

/// Parses exactly 32 hex digits. Upper-case digits are accepted as the commit marker scanner
/// accepts them, though mailpack writes lower case only.
impl FromStr for ArchiveId {
    type Err = ();

    fn from_str(s: &str) -> Result<ArchiveId, ()> {
        let bytes = s.as_bytes();
        if bytes.len() != 32 {
            return Err(());
        }
        let mut out = [0u8; 16];
        for (i, pair) in bytes.chunks(2).enumerate() {
            out[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(ArchiveId(out))
    }
}

fn hex_digit(c: u8) -> Result<u8, ()> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ArchiveId([
            0x00, 0x01, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba,
            0xdc, 0xfe,
        ]);
        let hex = id.to_string();
        assert_eq!(hex, "00017f80abcdefff1032547698badcfe");
        assert_eq!(hex.parse::<ArchiveId>(), Ok(id));
        assert_eq!(hex.to_uppercase().parse::<ArchiveId>(), Ok(id));
        for bad in [
            "",
            "00",
            &hex[1..],
            &format!("{hex}0"),
            &hex.replace('a', "g"),
        ] {
            assert_eq!(bad.parse::<ArchiveId>(), Err(()), "{bad:?}");
        }
        assert!(format!("+{}", &hex[1..]).parse::<ArchiveId>().is_err());
    }
}
