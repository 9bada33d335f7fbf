//! The flat format (default for subscription `.sub` files): one `key TAB value LF` line per
//! record, kept sorted by Cyrus, with the bytes NUL, TAB, CR and LF written as 0xFF followed by
//! (0x80 | byte) and 0xFF itself as 0xFF 0xFF (Cyrus 2.5+; older files have no escapes).
//!
//! This reader returns the lines in file order and never writes. It is stricter than Cyrus in
//! one way only: an escape Cyrus never writes (0xFF followed by anything else, or a lone 0xFF
//! at the end of a field) is an error rather than silently decoded, because `detect` relies on
//! flat parsing to tell text from garbage.

use super::{at, Record};
use crate::spool::ParseError;

const ESCAPE: u8 = 0xFF;
/// The bytes Cyrus escapes, other than 0xFF itself.
const ESCAPED: [u8; 4] = [b'\0', b'\t', b'\r', b'\n'];

/// All records, in file order.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>, ParseError> {
    let mut records = Vec::new();
    let mut line_start = 0usize;
    while let Some(rest) = bytes.get(line_start..).filter(|r| !r.is_empty()) {
        let Some(line_len) = rest.iter().position(|&b| b == b'\n') else {
            return Err(ParseError::new(
                at(bytes.len()),
                format!("flat line starting at byte {line_start} has no LF (truncated?)"),
            ));
        };
        let line = &rest[..line_len];
        // Cyrus reads lines as C strings: a raw NUL would cut the line short there.
        if let Some(nul) = line.iter().position(|&b| b == 0) {
            return Err(ParseError::new(
                at(line_start + nul),
                "raw NUL byte in a flat line (Cyrus writes NUL as 0xFF 0x80)",
            ));
        }
        let Some(tab) = line.iter().position(|&b| b == b'\t') else {
            return Err(ParseError::new(
                at(line_start),
                "flat line has no TAB between key and value",
            ));
        };
        let key = unescape(&line[..tab], line_start)?;
        let value = unescape(&line[tab + 1..], line_start + tab + 1)?;
        records.push(Record { key, value });
        line_start += line_len + 1;
    }
    Ok(records)
}

/// Decodes one escaped field that starts at byte `field_offset` of the file.
pub fn unescape(field: &[u8], field_offset: usize) -> Result<Vec<u8>, ParseError> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().enumerate();
    while let Some((i, &b)) = bytes.next() {
        if b != ESCAPE {
            out.push(b);
            continue;
        }
        let bad = |detail: String| ParseError::new(at(field_offset + i), detail);
        match bytes.next() {
            Some((_, &ESCAPE)) => out.push(ESCAPE),
            Some((_, &e)) if ESCAPED.contains(&(e & 0x7F)) && e & 0x80 != 0 => out.push(e & 0x7F),
            Some((_, &e)) => {
                return Err(bad(format!(
                    "invalid flat escape 0xFF {e:#04x} (Cyrus escapes only NUL, TAB, CR, LF \
                     and 0xFF)"
                )))
            }
            None => return Err(bad("flat field ends inside an escape (lone 0xFF)".into())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cyrus's encoding, for building test files.
    fn escape(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in raw {
            if b == ESCAPE {
                out.extend_from_slice(&[ESCAPE, ESCAPE]);
            } else if ESCAPED.contains(&b) {
                out.extend_from_slice(&[ESCAPE, 0x80 | b]);
            } else {
                out.push(b);
            }
        }
        out
    }

    fn rec(key: &[u8], value: &[u8]) -> Record {
        Record {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn plain_lines_in_file_order() {
        let got = parse(b"Nuser\x1ffred\t\nINBOX.Sent\tyes\n").unwrap();
        assert_eq!(
            got,
            vec![rec(b"Nuser\x1ffred", b""), rec(b"INBOX.Sent", b"yes")]
        );
        assert_eq!(parse(b""), Ok(vec![]));
    }

    #[test]
    fn escapes_round_trip_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut file = escape(&all);
        file.push(b'\t');
        file.extend_from_slice(&escape(b"\xff\xff\t\n\r\0x"));
        file.push(b'\n');
        assert!(!file[..file.len() - 1].contains(&b'\n'));
        assert_eq!(parse(&file), Ok(vec![rec(&all, b"\xff\xff\t\n\r\0x")]));
    }

    #[test]
    fn escape_layout_is_cyrus_s() {
        assert_eq!(
            escape(b"\0\t\r\n\xff"),
            b"\xff\x80\xff\x89\xff\x8d\xff\x8a\xff\xff"
        );
    }

    #[test]
    fn only_the_first_tab_separates() {
        // Pre-2.5 files do not escape; a raw TAB in a value stays in the value, as in Cyrus.
        assert_eq!(parse(b"k\ta\tb\n"), Ok(vec![rec(b"k", b"a\tb")]));
        assert_eq!(parse(b"k\tcr\r\n"), Ok(vec![rec(b"k", b"cr\r")]));
    }

    #[test]
    fn damage_is_located() {
        let err = parse(b"a\t1\nb\t2").unwrap_err();
        assert_eq!(err.offset, 7);
        assert!(err.detail.contains("byte 4"), "{err}");
        assert_eq!(parse(b"a\t1\nnotab\n").unwrap_err().offset, 4);
        assert_eq!(parse(b"a\t1\nb\0\t2\n").unwrap_err().offset, 5);
        assert_eq!(parse(b"a\t1\nb\t2\xff\x41\n").unwrap_err().offset, 7);
        assert_eq!(parse(b"ab\xff\t2\n").unwrap_err().offset, 2);
        assert_eq!(parse(b"\n").unwrap_err().offset, 0);
        // 0x80|'a' is not an escape Cyrus writes.
        assert!(parse(b"\xff\xe1\t\n").is_err());
    }
}
