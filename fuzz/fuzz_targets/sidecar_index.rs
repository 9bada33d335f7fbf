//! Any bytes as the sidecar index `<user>.idx` beside a real archive (or none): the index
//! readers and `Archive::open` must treat every field as hostile (block lengths, run numbers,
//! offsets past the archive, 2^40-byte sizes, name lengths) and end in an error or a rebuild,
//! never a panic, a hang or an allocation sized by a number in the file.
//!
//! Which archive lies beside the index: the header's flags word is never read by mailpack
//! (it is 0 in every index it writes), so its first byte picks one of `ARCHIVES` (1..=n) or no
//! archive (anything above n). When it is 0, as in real indexes, the archive whose id the
//! header names is used, or none when no archive has that id. The seeds are real indexes of
//! these archives, so the fuzzer starts from indexes that open.
//!
//! Random mutations almost always break a block's CRC, which stops the reader before the field
//! checks. So every input is tried twice: as given, and with each block's CRC recomputed over
//! its body as framed (formats/archive.md section 5), which lets mutated fields reach
//! `decode_block` and the store's checks against the archive.
#![no_main]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mailpack::archive::{ArchiveId, EntryKind};
use mailpack::store::sidecar::{self, IndexRead, HEADER_LEN};
use mailpack::store::{self, Archive, ArchivePaths};

/// Archives an index may describe (see fuzz/README.md for where they came from).
const ARCHIVES: &[&[u8]] = &[
    include_bytes!("../seeds/archive_open/mailpack-3runs.tar.gz"),
    include_bytes!("../seeds/archive_open/mailpack-3runs-cut-2000.tar.gz"),
    include_bytes!("../seeds/archive_open/mailpack-1run.tar.gz"),
    include_bytes!("../seeds/archive_open/fixture-ok.tar.gz"),
];

/// Archive-id of each of `ARCHIVES`, read from their first commit marker on first use.
fn archive_ids() -> &'static [Option<ArchiveId>] {
    static IDS: OnceLock<Vec<Option<ArchiveId>>> = OnceLock::new();
    IDS.get_or_init(|| {
        let paths = scratch();
        ARCHIVES
            .iter()
            .map(|bytes| {
                write_file(&paths.archive, bytes);
                remove(&paths.index);
                let mut notices = Vec::new();
                Archive::open(paths, &mut notices).ok()?.archive_id()
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let paths = scratch();
    let archive = pick_archive(data);
    exercise(paths, archive, data);
    let mut fixed = data.to_vec();
    fix_block_crcs(&mut fixed);
    if fixed != data {
        exercise(paths, archive, &fixed);
    }
});

fn pick_archive(data: &[u8]) -> Option<&'static [u8]> {
    let selector = data.get(12).copied().unwrap_or(0) as usize;
    if selector > 0 {
        return ARCHIVES.get(selector - 1).copied();
    }
    let id = ArchiveId(data.get(16..HEADER_LEN)?.try_into().ok()?);
    let k = archive_ids().iter().position(|a| *a == Some(id))?;
    Some(ARCHIVES[k])
}

fn exercise(paths: &ArchivePaths, archive: Option<&[u8]>, idx: &[u8]) {
    match archive {
        Some(bytes) => write_file(&paths.archive, bytes),
        None => remove(&paths.archive),
    }
    write_file(&paths.index, idx);

    // A name the index is likely to hold, so the streaming lookup decodes a hit.
    let name = match sidecar::read(&paths.index) {
        Ok(IndexRead::Valid { runs, .. }) => runs
            .iter()
            .rev()
            .find_map(|r| r.entries.last())
            .map(|e| e.name.clone()),
        _ => None,
    }
    .unwrap_or_else(|| "imap/INBOX/subscriptions".to_string());
    let _ = sidecar::find_latest(&paths.index, &name);
    let mut notices = Vec::new();
    // Trusts the index when its last run matches the archive, else opens (which may rewrite
    // the index): rewrite it before the next step.
    let _ = store::find_latest(paths, &name, &mut notices);

    if let Some(bytes) = archive {
        write_file(&paths.archive, bytes);
    }
    write_file(&paths.index, idx);
    if let Ok(archive) = Archive::open(paths, &mut notices) {
        // Entries a trusted index places are read where it says: sizes and offsets are
        // whatever the input holds.
        for run in archive.runs() {
            for entry in archive.entries_of(run) {
                if entry.kind != EntryKind::File {
                    continue;
                }
                if let Ok(mut r) = archive.read_entry(entry) {
                    let _ = io::copy(&mut r, &mut io::sink());
                }
            }
        }
    }
}

/// Walks the block framing after the header (body_len u32 LE | body | crc32 u32 LE) and
/// rewrites each complete block's CRC. Stops at the first block that leaves the input.
fn fix_block_crcs(bytes: &mut [u8]) {
    let mut pos = HEADER_LEN;
    loop {
        let Some(len) = bytes.get(pos..pos + 4) else {
            return;
        };
        let body_len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let body = pos + 4;
        let Some(crc_at) = body.checked_add(body_len) else {
            return;
        };
        if crc_at + 4 > bytes.len() {
            return;
        }
        let crc = crc32fast::hash(&bytes[body..crc_at]);
        bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        pos = crc_at + 4;
    }
}

/// One scratch directory per process (libFuzzer's `-jobs`/`-fork` run several), on tmpfs when
/// there is one.
fn scratch() -> &'static ArchivePaths {
    static PATHS: OnceLock<ArchivePaths> = OnceLock::new();
    PATHS.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "mailpack-fuzz-sidecar_index-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        ArchivePaths::for_archive_file(&dir.join("fuzz.tar.gz")).expect("archive paths")
    })
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).expect("create scratch file");
    f.write_all(data).expect("write scratch file");
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}
