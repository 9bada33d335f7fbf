//! Golden archives in fixtures/archives and what mailpack must say about them in
//! fixtures/expected. `MAILPACK_BLESS=1 cargo test --test it fixtures` regenerates both; review
//! the diff before committing it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mailpack::archive::{file_entry_name, RunSummary};
use mailpack::io::Faults;
use mailpack::store::{verify, Archive, ArchivePaths, StoreWriter, WriterOptions, WriterWait};
use mailpack::Guid;

use crate::util::{Rng, TempDir};
use mailpack::io::SourceStat;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn blessing() -> bool {
    std::env::var_os("MAILPACK_BLESS").is_some()
}

/// Writes the sound fixture: three runs with messages, metadata, links and a tombstone.
fn make_ok(paths: &ArchivePaths) {
    let opts = WriterOptions {
        wait: WriterWait::FailIfBusy,
        level: 6,
        threads: 1,
        faults: Faults::none(),
    };
    let mut rng = Rng::new(42);
    let runs: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![
            ("msg", rng.mail_text(700)),
            ("msg", rng.mail_text(1200)),
            ("index", rng.noise(300)),
            ("link", b"imap/INBOX".to_vec()),
        ],
        vec![
            ("msg", rng.mail_text(400)),
            ("index", rng.noise(320)),
            ("tomb", b"imap/INBOX".to_vec()),
            ("link", b"imap/Inbox-renamed".to_vec()),
        ],
        vec![],
    ];
    for (i, ops) in runs.iter().enumerate() {
        let mut store = StoreWriter::open(paths, &opts, &mut Vec::new()).unwrap();
        for (kind, data) in ops {
            let w = store.writer();
            match *kind {
                "msg" => {
                    let g = Guid::of(data);
                    w.append_bytes(&file_entry_name(&g), data, None, 1_763_000_000)
                        .unwrap();
                }
                "index" => {
                    let stat = SourceStat {
                        dev: 2049,
                        ino: 77,
                        size: data.len() as u64,
                        mtime_ns: 1_763_000_000_000_000_000 + i as i64,
                        ctime_ns: 1_763_000_000_000_000_000 + i as i64,
                    };
                    w.append_bytes(
                        "folders/5f0c8a8e-0d4e-4c1e-9d8c-000000000001/cyrus.index",
                        data,
                        Some(stat),
                        1_763_000_000,
                    )
                    .unwrap();
                }
                "link" => w
                    .append_symlink(
                        std::str::from_utf8(data).unwrap(),
                        "folders/5f0c8a8e-0d4e-4c1e-9d8c-000000000001",
                        1_763_000_000,
                    )
                    .unwrap(),
                "tomb" => w
                    .append_symlink(std::str::from_utf8(data).unwrap(), "", 1_763_000_000)
                    .unwrap(),
                _ => unreachable!(),
            }
        }
        store
            .commit(&RunSummary {
                time: 1_763_000_000 + 86_400 * i as i64,
                host: "imap1.example.com".into(),
                counts: vec![],
                ..Default::default()
            })
            .unwrap();
    }
}

/// What `ls --all` and `verify` report, as stable text.
fn render(paths: &ArchivePaths) -> String {
    let mut out = String::new();
    let mut notices = Vec::new();
    match Archive::open(paths, &mut notices) {
        Ok(archive) => {
            for run in archive.runs() {
                writeln!(
                    out,
                    "run {} time {} bytes {}..{} marker {}",
                    run.run, run.time, run.start, run.end, run.marker_offset
                )
                .unwrap();
                for e in archive.entries_of(run) {
                    writeln!(
                        out,
                        "  {:?} {} -> {:?} size {} sha1 {} at {}+{}/{}",
                        e.kind,
                        e.name,
                        e.target,
                        e.size,
                        e.sha1,
                        e.placement.member,
                        e.placement.header_at,
                        e.placement.data_at
                    )
                    .unwrap();
                }
            }
        }
        Err(e) => writeln!(
            out,
            "open: {}",
            e.to_string()
                .replace(paths.archive.to_str().unwrap(), "ARCHIVE")
        )
        .unwrap(),
    }
    for n in notices {
        let n = n
            .replace(paths.archive.to_str().unwrap(), "ARCHIVE")
            .replace(paths.index.to_str().unwrap(), "INDEX");
        writeln!(out, "notice: {n}").unwrap();
    }
    let report = verify(paths).unwrap();
    writeln!(
        out,
        "verify: {} runs, {} entries, {} members, {} bytes",
        report.runs, report.entries, report.members, report.bytes
    )
    .unwrap();
    for p in report.problems {
        writeln!(
            out,
            "problem: byte {} within {:?} entry {:?}: {}",
            p.offset, p.within, p.entry, p.detail
        )
        .unwrap();
    }
    out
}

fn check(name: &str, make: &dyn Fn(&Path)) {
    let fixture = root().join("archives").join(format!("{name}.tar.gz"));
    let expected = root().join("expected").join(format!("{name}.txt"));
    if blessing() {
        make(&fixture);
    }
    // Work on a copy: opening repairs, and the fixture must stay as committed.
    let work = TempDir::new(&format!("fixture-{name}"));
    let copy = work.path().join(format!("{name}.tar.gz"));
    std::fs::copy(&fixture, &copy).unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
    let paths = ArchivePaths::for_archive_file(&copy).unwrap();
    let got = render(&paths);
    if blessing() {
        std::fs::write(&expected, &got).unwrap();
    }
    let want = std::fs::read_to_string(&expected)
        .unwrap_or_else(|e| panic!("{}: {e}", expected.display()));
    assert_eq!(
        got,
        want,
        "{name}: output differs from {}",
        expected.display()
    );
}

fn ok_bytes() -> Vec<u8> {
    std::fs::read(root().join("archives/ok.tar.gz")).unwrap()
}

#[test]
fn fixture_ok() {
    check("ok", &|dst| {
        let tmp = TempDir::new("bless-ok");
        let paths = ArchivePaths::for_user(tmp.path(), "ok").unwrap();
        make_ok(&paths);
        std::fs::copy(&paths.archive, dst).unwrap();
    });
}

#[test]
fn fixture_torn_tail() {
    check("torn-tail", &|dst| {
        // The sound archive plus the first 100 bytes of a member that never finished.
        let mut bytes = ok_bytes();
        let tmp = TempDir::new("bless-torn");
        let paths = ArchivePaths::for_user(tmp.path(), "t").unwrap();
        make_ok(&paths);
        let extra = std::fs::read(&paths.archive).unwrap();
        bytes.extend_from_slice(&extra[..100]);
        std::fs::write(dst, bytes).unwrap();
    });
}

#[test]
fn fixture_bad_member() {
    check("bad-member", &|dst| {
        // One flipped bit in the compressed bytes of run 1's first member.
        let mut bytes = ok_bytes();
        bytes[200] ^= 0x04;
        std::fs::write(dst, bytes).unwrap();
    });
}
