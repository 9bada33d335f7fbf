//! Tar header blocks and pax records as formats/archive.md section 3.2 writes them, and a strict
//! reader for them. Writing goes through `tar::Header` so the ustar fields are laid out by the
//! crate every Rust tar user relies on; reading is strict and reports instead of guessing.

use super::{EntryKind, MAX_NAME};
use crate::error::ParseError;

pub const BLOCK: usize = 512;

/// Rounds `n` up to a multiple of the tar block size.
pub fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// Bytes of the pax records (already formatted) plus the header blocks for one entry, appended to
/// `out`. The data and its padding are the caller's.
pub struct HeaderSpec<'a> {
    pub name: &'a str,
    pub kind: EntryKind,
    pub target: &'a str,
    pub size: u64,
    pub mtime: u64,
    /// Vendor or standard records besides path/linkpath/size, which are added when needed.
    pub pax: Vec<(String, String)>,
}

const USTAR_SIZE_MAX: u64 = 0o77777777777;

fn fits_ustar(s: &str) -> bool {
    s.len() <= 100 && s.is_ascii()
}

pub fn encode_headers(spec: &HeaderSpec, out: &mut Vec<u8>) {
    let mut records: Vec<(String, String)> = Vec::new();
    if !fits_ustar(spec.name) {
        records.push(("path".into(), spec.name.into()));
    }
    if !fits_ustar(spec.target) {
        records.push(("linkpath".into(), spec.target.into()));
    }
    if spec.size > USTAR_SIZE_MAX {
        records.push(("size".into(), spec.size.to_string()));
    }
    records.extend(spec.pax.iter().cloned());

    if !records.is_empty() {
        let mut body = Vec::new();
        for (k, v) in &records {
            push_pax_record(&mut body, k, v);
        }
        let block = ustar_block(
            "././@PaxHeader",
            tar::EntryType::XHeader,
            "",
            body.len() as u64,
            spec.mtime,
        );
        out.extend_from_slice(&block);
        out.extend_from_slice(&body);
        out.resize(
            out.len() + (padded(body.len() as u64) as usize - body.len()),
            0,
        );
    }
    let entry_type = match spec.kind {
        EntryKind::File => tar::EntryType::Regular,
        EntryKind::Symlink => tar::EntryType::Symlink,
    };
    let size = if spec.size > USTAR_SIZE_MAX {
        0
    } else {
        spec.size
    };
    let block = ustar_block(
        &ascii_placeholder(spec.name),
        entry_type,
        &ascii_placeholder(spec.target),
        size,
        spec.mtime,
    );
    out.extend_from_slice(&block);
}

fn ascii_placeholder(s: &str) -> String {
    if fits_ustar(s) {
        return s.to_string();
    }
    // The pax record carries the real name; the ustar field only has to be harmless.
    let mut p: String = s.chars().filter(|c| c.is_ascii() && *c != '\0').collect();
    p.truncate(100);
    p
}

fn ustar_block(name: &str, kind: tar::EntryType, link: &str, size: u64, mtime: u64) -> [u8; BLOCK] {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Symlink {
        0o777
    } else {
        0o600
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_cksum();
    *h.as_bytes()
}

fn push_pax_record(out: &mut Vec<u8>, key: &str, value: &str) {
    // "<len> <key>=<value>\n" where <len> counts itself: find the fixed point.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
}

/// A decoded ustar header block.
#[derive(Debug)]
pub enum Block {
    Zero,
    Header(RawHeader),
}

#[derive(Debug)]
pub struct RawHeader {
    pub typeflag: u8,
    pub name: String,
    pub link: String,
    pub size: u64,
    pub mtime: u64,
}

/// Decodes one header block. Error offsets count from the block's start: the field at fault.
pub fn decode_block(block: &[u8; BLOCK]) -> Result<Block, ParseError> {
    if block.iter().all(|&b| b == 0) {
        return Ok(Block::Zero);
    }
    let stored = parse_octal(&block[148..156])
        .ok_or_else(|| ParseError::new(148, "header checksum field is not octal"))?;
    let computed: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                b' ' as u64
            } else {
                b as u64
            }
        })
        .sum();
    if stored != computed {
        return Err(ParseError::new(
            148,
            format!("header checksum {stored} does not match computed {computed}"),
        ));
    }
    if &block[257..263] != b"ustar\0" && &block[257..263] != b"ustar " {
        return Err(ParseError::new(257, "not a ustar header"));
    }
    let size = if block[124] & 0x80 != 0 {
        // Base-256 (GNU): big-endian in the remaining bytes.
        let mut v: u64 = (block[124] & 0x7f) as u64;
        for &b in &block[125..136] {
            v = v
                .checked_mul(256)
                .ok_or_else(|| ParseError::new(124, "size overflows"))?
                | b as u64;
        }
        v
    } else {
        parse_octal(&block[124..136])
            .ok_or_else(|| ParseError::new(124, "size field is not octal"))?
    };
    let mtime = parse_octal(&block[136..148]).unwrap_or(0);
    let mut name = field_str(block, 0..100)?;
    let prefix = field_str(block, 345..500)?;
    if !prefix.is_empty() {
        name = format!("{prefix}/{name}");
    }
    let link = field_str(block, 157..257)?;
    Ok(Block::Header(RawHeader {
        typeflag: block[156],
        name,
        link,
        size,
        mtime,
    }))
}

/// The NUL-terminated text in `block[range]`.
fn field_str(block: &[u8; BLOCK], range: std::ops::Range<usize>) -> Result<String, ParseError> {
    let at = range.start as u64;
    let field = &block[range];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec())
        .map_err(|_| ParseError::new(at, "header name is not UTF-8"))
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: &[u8] = {
        let start = field.iter().position(|&b| b != b' ')?;
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|&b| b == 0 || b == b' ')
            .unwrap_or(rest.len());
        &rest[..end]
    };
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for &c in s {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

/// Parses pax records strictly: a record whose length does not match is corrupt. Error offsets
/// count from the body's start: the record at fault.
pub fn decode_pax(body: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let at = (body.len() - rest.len()) as u64;
        let bad = |detail: &str| ParseError::new(at, detail);
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("pax record has no length"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("pax record length is not a number"))?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("pax record length does not match its contents"));
        }
        let record = std::str::from_utf8(&rest[space + 1..len - 1])
            .map_err(|_| bad("pax record is not UTF-8"))?;
        let (k, v) = record
            .split_once('=')
            .ok_or_else(|| bad("pax record has no '='"))?;
        if k.len() > MAX_NAME || v.len() > MAX_NAME {
            return Err(bad("pax record too long"));
        }
        out.push((k.to_string(), v.to_string()));
        rest = &rest[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for v in ["", "x", "123456", &"y".repeat(95), &"z".repeat(994)] {
            let mut out = Vec::new();
            push_pax_record(&mut out, "path", v);
            let decoded = decode_pax(&out).unwrap();
            assert_eq!(decoded, vec![("path".to_string(), v.to_string())]);
        }
    }

    #[test]
    fn pax_errors_name_the_record() {
        let mut body = Vec::new();
        push_pax_record(&mut body, "path", "a");
        let second = body.len() as u64;
        body.extend_from_slice(b"8 path=b\n");
        assert_eq!(
            decode_pax(&body),
            Err(ParseError::new(
                second,
                "pax record length does not match its contents"
            ))
        );
    }

    #[test]
    fn headers_round_trip() {
        let long = format!("imap/{}", "déjà/".repeat(40));
        let spec = HeaderSpec {
            name: &long,
            kind: EntryKind::Symlink,
            target: "folders/abc",
            size: 0,
            mtime: 1_700_000_000,
            pax: vec![("MAILPACK.run".into(), "7".into())],
        };
        let mut out = Vec::new();
        encode_headers(&spec, &mut out);
        assert_eq!(out.len() % BLOCK, 0);
        let Block::Header(pax) = decode_block(out[..BLOCK].try_into().unwrap()).unwrap() else {
            panic!()
        };
        assert_eq!(pax.typeflag, b'x');
        let records = decode_pax(&out[BLOCK..BLOCK + pax.size as usize]).unwrap();
        assert!(records.contains(&("path".into(), long.clone())));
        let last: [u8; BLOCK] = out[out.len() - BLOCK..].try_into().unwrap();
        let Block::Header(h) = decode_block(&last).unwrap() else {
            panic!()
        };
        assert_eq!(
            (h.typeflag, h.link.as_str(), h.mtime),
            (b'2', "folders/abc", 1_700_000_000)
        );
    }

    #[test]
    fn checksum_is_verified() {
        let mut out = Vec::new();
        encode_headers(
            &HeaderSpec {
                name: "files/a",
                kind: EntryKind::File,
                target: "",
                size: 5,
                mtime: 0,
                pax: vec![],
            },
            &mut out,
        );
        let mut block: [u8; BLOCK] = out[..BLOCK].try_into().unwrap();
        block[3] ^= 1;
        let e = decode_block(&block).unwrap_err();
        assert!(e.detail.contains("checksum"));
        assert_eq!(e.offset, 148);
    }
}
