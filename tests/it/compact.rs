//! The compaction plan (read-only so far): what a restore within the window still needs stays,
//! the rest is counted by reason; deleted folders neither come back nor vanish early.

use mailpack::archive::{file_entry_name, RunSummary, SourceStat};
use mailpack::compact::{plan, CompactPlan, PlanOptions};
use mailpack::io::Faults;
use mailpack::store::{Archive, ArchivePaths, LockWait, StoreWriter, WriterOptions};
use mailpack::Guid;

use crate::util::TempDir;

const DAY: i64 = 86_400;

/// A minimal cyrus.index (minor version 17) holding `records` as (uid, guid, system flags).
fn index_v17(records: &[(u32, Guid, u32)]) -> Vec<u8> {
    let mut out = vec![0u8; 160];
    out[8..12].copy_from_slice(&17u32.to_be_bytes());
    out[12..16].copy_from_slice(&160u32.to_be_bytes());
    out[16..20].copy_from_slice(&112u32.to_be_bytes());
    out[20..24].copy_from_slice(&(records.len() as u32).to_be_bytes());
    let crc = crc32fast::hash(&out[..156]);
    out[156..160].copy_from_slice(&crc.to_be_bytes());
    for (uid, guid, flags) in records {
        let mut r = vec![0u8; 112];
        r[0..4].copy_from_slice(&uid.to_be_bytes());
        r[32..36].copy_from_slice(&flags.to_be_bytes());
        r[60..80].copy_from_slice(&guid.0);
        let crc = crc32fast::hash(&r[..108]);
        r[108..112].copy_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&r);
    }
    out
}

const EXPUNGED: u32 = 1 << 31;
const UNLINKED: u32 = 1 << 30;

enum Op<'a> {
    Message(&'a [u8]),
    Index(&'a str, Vec<(u32, Guid, u32)>),
    Link(&'a str, &'a str),
}

fn run_at(paths: &ArchivePaths, day: i64, ops: &[Op]) {
    let opts = WriterOptions {
        wait: LockWait::No,
        level: 6,
        threads: 1,
        faults: Faults::none(),
    };
    let mut store = StoreWriter::open(paths, &opts, &mut Vec::new()).unwrap();
    for op in ops {
        let w = store.writer();
        match op {
            Op::Message(data) => drop(
                w.append_bytes(&file_entry_name(&Guid::of(data)), data, None, 0)
                    .unwrap(),
            ),
            Op::Index(folder, records) => {
                let stat = SourceStat {
                    ino: day as u64,
                    ..Default::default()
                };
                w.append_bytes(
                    &format!("folders/{folder}/cyrus.index"),
                    &index_v17(records),
                    Some(stat),
                    0,
                )
                .unwrap();
            }
            Op::Link(name, target) => w.append_symlink(name, target, 0).unwrap(),
        }
    }
    store
        .commit(&RunSummary {
            time: day * DAY,
            host: "h".into(),
            counts: vec![],
        })
        .unwrap();
}

fn plan_at(paths: &ArchivePaths, day: i64) -> (CompactPlan, Archive) {
    let archive = Archive::open(paths, &mut Vec::new()).unwrap();
    let p = plan(
        &archive,
        &PlanOptions {
            now: day * DAY,
            ..PlanOptions::default()
        },
    )
    .unwrap();
    (p, archive)
}

fn kept(p: &CompactPlan, archive: &Archive) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for (r, run) in archive.runs().iter().enumerate() {
        for (i, e) in archive.entries_of(run).iter().enumerate() {
            if p.keep[r][i] {
                out.push((run.run, e.name.clone()));
            }
        }
    }
    out
}

#[test]
fn old_index_versions_and_messages_only_they_needed_are_dead() {
    let dir = TempDir::new("compact-plan");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    let (a, b, c, d) = (
        &b"message a"[..],
        &b"message b"[..],
        &b"message c"[..],
        &b"message d"[..],
    );
    let g = |m: &[u8]| Guid::of(m);
    run_at(
        &paths,
        0,
        &[
            Op::Message(a),
            Op::Message(b),
            Op::Index("F", vec![(1, g(a), 0), (2, g(b), 0)]),
            Op::Link("imap/user/u", "folders/F"),
        ],
    );
    // Day 10: a expunged and already unlinked; c arrives.
    run_at(
        &paths,
        10,
        &[
            Op::Message(c),
            Op::Index(
                "F",
                vec![(1, g(a), EXPUNGED | UNLINKED), (2, g(b), 0), (3, g(c), 0)],
            ),
        ],
    );
    // Day 50: b expunged but its file kept (delayed expunge): still restorable, still live.
    run_at(
        &paths,
        50,
        &[
            Op::Message(d),
            Op::Index("F", vec![(2, g(b), EXPUNGED), (3, g(c), 0), (4, g(d), 0)]),
        ],
    );

    let (p, archive) = plan_at(&paths, 60);
    let names = kept(&p, &archive);
    let f = |s: &str| s.to_string();
    // Window starts at day 30: the day-50 index, plus the newest before the window (day 10).
    assert!(
        names.contains(&(2, f("folders/F/cyrus.index")))
            && names.contains(&(3, f("folders/F/cyrus.index"))),
        "{names:?}"
    );
    assert!(!names.contains(&(1, f("folders/F/cyrus.index"))));
    assert!(
        names.contains(&(1, f("imap/user/u"))),
        "the only version of a live name stays"
    );
    for m in [b, c, d] {
        assert!(
            names.iter().any(|(_, n)| *n == file_entry_name(&g(m))),
            "{names:?}"
        );
    }
    assert!(
        !names.iter().any(|(_, n)| *n == file_entry_name(&g(a))),
        "a is needed by no kept index"
    );
    assert_eq!(p.dropped.old_metadata_versions.0, 1);
    assert_eq!(p.dropped.expunged_beyond_retention.0, 1);
    assert!(p.live_percent < 100.0 && p.live_percent > 0.0);

    // As of day 35 the window starts at day 5: the day-0 index is the newest version before the
    // window, so it stays, and message a with it.
    let (p, _) = plan_at(&paths, 35);
    assert_eq!(
        (
            p.dropped.old_metadata_versions.0,
            p.dropped.expunged_beyond_retention.0
        ),
        (0, 0)
    );
    let (p, _) = plan_at(&paths, 20);
    assert_eq!(
        (
            p.dropped.old_metadata_versions.0,
            p.dropped.expunged_beyond_retention.0
        ),
        (0, 0),
        "nothing dies inside the window"
    );
    assert!(!p.compact);
}

#[test]
fn a_deleted_folder_is_kept_for_its_grace_period_then_dropped_and_never_revived() {
    let dir = TempDir::new("compact-deleted");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    let (old, new) = (
        &b"in the deleted folder"[..],
        &b"in the recreated folder"[..],
    );
    run_at(
        &paths,
        0,
        &[
            Op::Message(old),
            Op::Index("OLD", vec![(1, Guid::of(old), 0)]),
            Op::Link("imap/user/u/Projects", "folders/OLD"),
        ],
    );
    // Day 5: Projects deleted (tombstone); day 8: a new Projects, another uniqueid.
    run_at(&paths, 5, &[Op::Link("imap/user/u/Projects", "")]);
    run_at(
        &paths,
        8,
        &[
            Op::Message(new),
            Op::Index("NEW", vec![(1, Guid::of(new), 0)]),
            Op::Link("imap/user/u/Projects", "folders/NEW"),
        ],
    );

    // Day 20: the deleted folder is within its 30 days: all of it stays, apart from the new one.
    let (p, archive) = plan_at(&paths, 20);
    let names = kept(&p, &archive);
    assert!(
        names.iter().any(|(_, n)| n == "folders/OLD/cyrus.index"),
        "{names:?}"
    );
    assert!(names
        .iter()
        .any(|(_, n)| *n == file_entry_name(&Guid::of(old))));
    assert_eq!(p.dropped.deleted_mailboxes.0, 0);

    // Day 40: deleted 35 days ago: its index and message go; the recreated folder's history,
    // under the same name, is untouched and the name still points at it.
    let (p, archive) = plan_at(&paths, 40);
    let names = kept(&p, &archive);
    assert!(
        !names.iter().any(|(_, n)| n.starts_with("folders/OLD/")),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|(_, n)| *n == file_entry_name(&Guid::of(old))),
        "{names:?}"
    );
    assert!(names.iter().any(|(_, n)| n == "folders/NEW/cyrus.index"));
    assert!(names
        .iter()
        .any(|(_, n)| *n == file_entry_name(&Guid::of(new))));
    let latest_projects: Vec<_> = names
        .iter()
        .filter(|(_, n)| n == "imap/user/u/Projects")
        .collect();
    assert_eq!(
        latest_projects.last().unwrap().0,
        3,
        "the name's newest version (to NEW) stays: {names:?}"
    );
    // And nothing a restore at any run within the window needs is dropped: at day 40 the window
    // starts at day 10, and as of run 3 the state is Projects -> NEW with NEW's message.
    assert!(p.dropped.deleted_mailboxes.0 >= 1);
}
