//! Any bytes through format detection and the twoskip, skiplist and flat readers: the result
//! may be an error, never a panic, a hang or a runaway allocation.
//!
//! Random mutations almost always break a twoskip CRC, which stops the reader before the
//! interesting part (pointer walking, tombstones, the two level-0 pointers). So every twoskip
//! input is parsed twice: as given, and with all checksums recomputed, which lets mutated
//! lengths, levels and pointers reach the list walk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpack::spool::cyrusdb;

fuzz_target!(|data: &[u8]| {
    let parsed = cyrusdb::parse(data);
    // Detection must agree with parsing about what the bytes are.
    if parsed.is_ok() && cyrusdb::detect(data).is_none() {
        panic!("parse accepted bytes that detect rejects");
    }
    if data.starts_with(cyrusdb::twoskip::MAGIC) {
        let mut fixed = data.to_vec();
        fix_twoskip_crcs(&mut fixed);
        let _ = cyrusdb::parse(&fixed);
    }
});

/// Recomputes the header CRC and, scanning records in file order from the dummy, every head
/// and tail CRC it can locate. Stops at the first record whose lengths leave the file.
fn fix_twoskip_crcs(bytes: &mut [u8]) {
    if bytes.len() < 64 {
        return;
    }
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_be_bytes());
    let mut offset = 64usize;
    while let Some(len) = fix_record(bytes, offset) {
        offset += len;
    }
}

fn fix_record(bytes: &mut [u8], offset: usize) -> Option<usize> {
    let be64 = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(
            b.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    let head = bytes.get(offset..offset.checked_add(8)?)?;
    let level = usize::from(head[1]).min(31);
    let mut keylen = u64::from(u16::from_be_bytes([head[2], head[3]]));
    let mut vallen = u64::from(u32::from_be_bytes([head[4], head[5], head[6], head[7]]));
    let mut pos = offset + 8;
    if keylen == u64::from(u16::MAX) {
        keylen = be64(bytes, pos)?;
        pos += 8;
    }
    if vallen == u64::from(u32::MAX) {
        vallen = be64(bytes, pos)?;
        pos += 8;
    }
    let crc_pos = pos.checked_add(8 * (level + 1))?;
    let body_len =
        usize::try_from(keylen.checked_add(vallen)?.checked_next_multiple_of(8)?).ok()?;
    let end = crc_pos.checked_add(8)?.checked_add(body_len)?;
    if end > bytes.len() {
        return None;
    }
    let head_crc = crc32fast::hash(&bytes[offset..crc_pos]);
    let tail_crc = crc32fast::hash(&bytes[crc_pos + 8..end]);
    bytes[crc_pos..crc_pos + 4].copy_from_slice(&head_crc.to_be_bytes());
    bytes[crc_pos + 4..crc_pos + 8].copy_from_slice(&tail_crc.to_be_bytes());
    Some(end - offset)
}
