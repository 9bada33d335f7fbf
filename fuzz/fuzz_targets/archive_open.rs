//! Any bytes as a `<user>.tar.gz` with no sidecar index: opening must either refuse or give a
//! committed state whose entries read back (or fail with an error), and `verify` must report,
//! never panic, hang or allocate more than the input justifies. The scanner that both are built
//! on is also driven directly over the bytes in memory, so its events are checked without the
//! file system in the way.
//!
//! The file is the real public path: `ArchivePaths::for_archive_file` + `Archive::open`, which
//! may repair (truncate a tail, write an index) when the writer lock is free. The bytes are
//! written again and the index removed before each step, so every step sees the input itself.
#![no_main]

use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mailpack::archive::{EntryKind, ScanEvent, Scanner};
use mailpack::store::{self, Archive, ArchivePaths};

fuzz_target!(|data: &[u8]| {
    let paths = paths();

    put(paths, data);
    let mut notices = Vec::new();
    if let Ok(archive) = Archive::open(paths, &mut notices) {
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

    put(paths, data);
    let _ = store::verify(paths);

    let Ok(scanner) = Scanner::new(Cursor::new(data), Path::new("fuzz.tar.gz"), 0) else {
        return;
    };
    for event in scanner {
        // Every offset the scanner reports is a member start inside the input.
        let at = match &event {
            ScanEvent::Entry(e) => e.record.placement.member,
            ScanEvent::Commit(mailpack::archive::scan::ScannedMarker { member, .. }) => {
                member.offset
            }
            ScanEvent::Damage(d) => d.offset,
            ScanEvent::MemberEnd(m) => m.offset,
        };
        assert!(
            at <= data.len() as u64,
            "event at {at} past the input: {event:?}"
        );
    }
});

/// One scratch directory per process (libFuzzer's `-jobs`/`-fork` run several), on tmpfs when
/// there is one: every execution rewrites the archive, so a disk would be the bottleneck.
fn paths() -> &'static ArchivePaths {
    static PATHS: OnceLock<ArchivePaths> = OnceLock::new();
    PATHS.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("mailpack-fuzz-archive_open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        ArchivePaths::for_archive_file(&dir.join("fuzz.tar.gz")).expect("archive paths")
    })
}

/// Writes `data` as the archive, with no index beside it.
fn put(paths: &ArchivePaths, data: &[u8]) {
    match std::fs::remove_file(&paths.index) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", paths.index.display()),
    }
    let mut f = std::fs::File::create(&paths.archive).expect("create scratch archive");
    f.write_all(data).expect("write scratch archive");
}
