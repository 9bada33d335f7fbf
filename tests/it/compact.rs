//! The compactor: what a restore within the window still needs stays, byte for byte, and the
//! rest is dropped and counted by reason; deleted folders neither come back nor vanish early; a
//! fault at any write, fsync or rename leaves the old archive or the new one.

use std::collections::BTreeMap;
use std::io::Read;

use mailpack::archive::{file_entry_name, EntryKind, RunSummary};
use mailpack::compact::{compact, plan, CompactOptions, CompactOutcome, CompactPlan, PlanOptions};
use mailpack::io::{FaultOn, Faults};
use mailpack::store::{verify, Archive, ArchivePaths, StoreWriter, WriterOptions, WriterWait};
use mailpack::Guid;

use crate::util::{Rng, TempDir};
use mailpack::io::SourceStat;

const DAY: i64 = 86_400;

/// A minimal cyrus.index (minor version 17: 160-byte header, 112-byte records) holding
/// `records` as (uid, guid, system flags).
pub fn index_v17(records: &[(u32, Guid, u32)]) -> Vec<u8> {
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
        wait: WriterWait::FailIfBusy,
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
            ..Default::default()
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

/// What a restore as of `run` reads: every name alive then (`imap/`, `meta/`), the folders those
/// names point at, and the message files their index records reference (expunged ones too).
type RestoreView = BTreeMap<String, (EntryKind, String, Vec<u8>)>;

fn restore_view(archive: &Archive, run: u64) -> RestoreView {
    let state = archive.state_at(Some(run));
    let by_name: BTreeMap<&str, _> = state.iter().map(|(_, e)| (e.name.as_str(), *e)).collect();
    let read = |e: &mailpack::archive::EntryRecord| {
        let mut out = Vec::new();
        if e.kind == EntryKind::File {
            archive
                .read_entry(e)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        }
        out
    };
    let mut view = RestoreView::new();
    let mut folders = Vec::new();
    for (_, e) in &state {
        if e.name.starts_with("imap/") || e.name.starts_with("meta/") {
            view.insert(e.name.clone(), (e.kind, e.target.clone(), read(e)));
            if let Some(f) = e.target.strip_prefix("folders/") {
                folders.push(format!("folders/{f}/"));
            }
        }
    }
    for (_, e) in &state {
        if !folders.iter().any(|f| e.name.starts_with(f.as_str())) {
            continue;
        }
        let bytes = read(e);
        if e.name.ends_with("/cyrus.index") {
            let index = mailpack::spool::index::parse(&bytes).unwrap();
            for r in index.records.iter().filter(|r| !r.is_unlinked()) {
                let name = file_entry_name(&r.guid);
                let file = by_name
                    .get(name.as_str())
                    .unwrap_or_else(|| panic!("run {run}: {name} missing"));
                view.insert(name, (EntryKind::File, String::new(), read(file)));
            }
        }
        view.insert(e.name.clone(), (e.kind, e.target.clone(), bytes));
    }
    view
}

/// Every run with its entries, as an equality-comparable signature of an archive's content.
type Signature = Vec<(u64, i64, Vec<(String, EntryKind, String, Guid, u64)>)>;

fn signature(paths: &ArchivePaths) -> Signature {
    let archive = Archive::open(paths, &mut Vec::new()).unwrap();
    archive
        .runs()
        .iter()
        .map(|r| {
            (
                r.run,
                r.time,
                archive
                    .entries_of(r)
                    .iter()
                    .map(|e| (e.name.clone(), e.kind, e.target.clone(), e.sha1, e.size))
                    .collect(),
            )
        })
        .collect()
}

fn compact_options(now_day: i64, faults: Faults) -> CompactOptions {
    CompactOptions {
        plan: PlanOptions {
            now: now_day * DAY,
            force: true,
            ..PlanOptions::default()
        },
        writer: WriterOptions {
            wait: WriterWait::FailIfBusy,
            level: 6,
            threads: 2,
            faults,
        },
    }
}

const NOW: i64 = 75;

/// Ten weeks of a user's life, in runs whose members mix live and dead entries: expunges,
/// messages larger than a member (one kept, one dropped), a folder deleted long ago, a folder
/// renamed, a folder deleted inside the window and one recreated under the same name.
fn ten_weeks(paths: &ArchivePaths) {
    let mut rng = Rng::new(5);
    let mut m = |len: usize| rng.mail_text(len);
    let (a, b, c, d, e) = (
        m(2_500_000),
        m(1_500_000),
        m(300_000),
        m(400_000),
        m(200_000),
    );
    let (f, g, h, i) = (m(350_000), m(250_000), m(100_000), m(120_000));
    let gu = |x: &[u8]| Guid::of(x);
    run_at(
        paths,
        0,
        &[
            Op::Message(&a),
            Op::Message(&c),
            Op::Message(&b),
            Op::Message(&e),
            Op::Index("F", vec![(1, gu(&a), 0), (2, gu(&b), 0)]),
            Op::Link("imap/user/u", "folders/F"),
            Op::Index("G", vec![(1, gu(&c), 0)]),
            Op::Link("imap/user/u/Work", "folders/G"),
            Op::Index("H", vec![(1, gu(&e), 0)]),
            Op::Link("imap/user/u/Old", "folders/H"),
        ],
    );
    run_at(
        paths,
        10,
        &[
            Op::Message(&d),
            Op::Index(
                "F",
                vec![(1, gu(&a), EXPUNGED), (2, gu(&b), 0), (3, gu(&d), 0)],
            ),
        ],
    );
    run_at(paths, 20, &[Op::Link("imap/user/u/Work", "")]);
    run_at(
        paths,
        30,
        &[
            Op::Link("imap/user/u/New", "folders/H"),
            Op::Link("imap/user/u/Old", ""),
        ],
    );
    run_at(
        paths,
        40,
        &[
            Op::Message(&f),
            Op::Index(
                "F",
                vec![
                    (1, gu(&a), EXPUNGED | UNLINKED),
                    (2, gu(&b), 0),
                    (3, gu(&d), EXPUNGED | UNLINKED),
                    (4, gu(&f), 0),
                ],
            ),
        ],
    );
    run_at(
        paths,
        50,
        &[
            Op::Message(&g),
            Op::Message(&h),
            Op::Index("F", vec![(2, gu(&b), 0), (4, gu(&f), 0), (5, gu(&g), 0)]),
            Op::Index("P", vec![(1, gu(&h), 0)]),
            Op::Link("imap/user/u/Projects", "folders/P"),
        ],
    );
    run_at(paths, 60, &[Op::Link("imap/user/u/Projects", "")]);
    run_at(
        paths,
        65,
        &[
            Op::Message(&i),
            Op::Index("P2", vec![(1, gu(&i), 0)]),
            Op::Link("imap/user/u/Projects", "folders/P2"),
        ],
    );
    run_at(
        paths,
        70,
        &[Op::Index(
            "F",
            vec![(2, gu(&b), 0), (4, gu(&f), EXPUNGED), (5, gu(&g), 0)],
        )],
    );
}

#[test]
fn every_restore_state_in_the_window_survives_compaction_byte_for_byte() {
    let dir = TempDir::new("compact-states");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    ten_weeks(&paths);
    let before = Archive::open(&paths, &mut Vec::new()).unwrap();
    let window_start = (NOW - 30) * DAY;
    let in_window: Vec<u64> = before
        .runs()
        .iter()
        .filter(|r| r.time >= window_start)
        .map(|r| r.run)
        .collect();
    assert_eq!(in_window.len(), 4, "days 50, 60, 65 and 70");
    let views: Vec<RestoreView> = in_window
        .iter()
        .map(|&r| restore_view(&before, r))
        .collect();
    drop(before);

    let outcome = compact(
        &paths,
        &compact_options(NOW, Faults::none()),
        &mut Vec::new(),
    )
    .unwrap();
    assert!(outcome.compacted);
    assert!(outcome.bytes_after < outcome.bytes_before, "{outcome:?}");
    assert!(
        outcome.stretches_copied > 0 && outcome.members_rebuilt > 0,
        "{outcome:?}"
    );

    let after = Archive::open(&paths, &mut Vec::new()).unwrap();
    for (&run, view) in in_window.iter().zip(&views) {
        assert_eq!(&restore_view(&after, run), view, "restore as of run {run}");
    }
    let names: Vec<&str> = after
        .runs()
        .iter()
        .flat_map(|r| after.entries_of(r))
        .map(|e| e.name.as_str())
        .collect();
    // Work (folder G) was deleted on day 20, before the window and over 30 days ago: gone, name
    // and tombstone too. Projects' first folder, deleted on day 60, stays with its old name.
    assert!(!names
        .iter()
        .any(|n| n.starts_with("folders/G/") || *n == "imap/user/u/Work"));
    assert!(names.contains(&"folders/P/cyrus.index"));
    assert_eq!(after.runs().len(), 9, "every run keeps its commit marker");
    assert_eq!(after.runs().last().unwrap().compacted, Some(NOW * DAY));

    let report = verify(&paths).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // GNU tar still lists every entry of the rewritten archive.
    let listed = std::process::Command::new("tar")
        .args(["-tizf"])
        .arg(&paths.archive)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).lines().count();
    assert_eq!(listed, names.len() + after.runs().len());

    // Compacting again finds nothing dead.
    let again = plan(
        &after,
        &PlanOptions {
            now: NOW * DAY,
            ..PlanOptions::default()
        },
    )
    .unwrap();
    assert_eq!(again.live_raw, again.total_raw, "{:?}", again.dropped);
}

#[test]
fn a_fault_at_any_write_fsync_or_rename_leaves_the_old_or_the_new_archive() {
    let dir = TempDir::new("compact-faults");
    let original = dir.path().join("original");
    std::fs::create_dir(&original).unwrap();
    let paths = ArchivePaths::for_user(&original, "u").unwrap();
    ten_weeks(&paths);
    let old = signature(&paths);

    let copy = |tag: &str| {
        let to = dir.path().join(tag);
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir(&to).unwrap();
        for f in std::fs::read_dir(&original).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
        ArchivePaths::for_user(&to, "u").unwrap()
    };
    let clean = copy("clean");
    compact(
        &clean,
        &compact_options(NOW, Faults::none()),
        &mut Vec::new(),
    )
    .unwrap();
    let new = signature(&clean);
    assert_ne!(old, new);

    let mut outcomes = (0, 0);
    for n in 1.. {
        let paths = copy("faulted");
        let faults = Faults::fail_nth(n, FaultOn::Any);
        let result = compact(
            &paths,
            &compact_options(NOW, faults.clone()),
            &mut Vec::new(),
        );
        if faults.seen() < n {
            result.unwrap();
            break;
        }
        assert!(result.is_err(), "fault {n} went unnoticed");
        let state = signature(&paths);
        if state == old {
            outcomes.0 += 1;
        } else {
            assert!(
                state == new,
                "fault {n}: neither the old nor the new archive"
            );
            outcomes.1 += 1;
        }
        // A fault may leave the index missing; readers never write it, the next writer does.
        drop(
            mailpack::store::StoreWriter::open(
                &paths,
                &mailpack::store::WriterOptions::default(),
                &mut Vec::new(),
            )
            .unwrap(),
        );
        let report = verify(&paths).unwrap();
        assert!(
            report.problems.is_empty(),
            "fault {n}: {:?}",
            report.problems
        );
        // The next compaction (the nightly one) finishes the job.
        compact(
            &paths,
            &compact_options(NOW, Faults::none()),
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(signature(&paths), new, "fault {n}: the retry");
        assert!(!paths.rewrite_tmp().exists());
    }
    assert!(outcomes.0 > 10 && outcomes.1 > 0, "{outcomes:?}");
}

#[test]
fn a_leftover_copy_from_a_crash_is_replaced_and_a_busy_archive_is_left_alone() {
    let dir = TempDir::new("compact-leftover");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    ten_weeks(&paths);
    let old = signature(&paths);
    std::fs::write(
        paths.rewrite_tmp(),
        b"half a copy from a crashed compaction",
    )
    .unwrap();

    let held = StoreWriter::open(&paths, &WriterOptions::default(), &mut Vec::new()).unwrap();
    let busy = compact(
        &paths,
        &compact_options(NOW, Faults::none()),
        &mut Vec::new(),
    );
    assert!(
        matches!(busy, Err(mailpack::Error::Busy { .. })),
        "{:?}",
        busy.map(|o| o.compacted)
    );
    assert_eq!(signature(&paths), old);
    drop(held);

    let outcome = compact(
        &paths,
        &compact_options(NOW, Faults::none()),
        &mut Vec::new(),
    )
    .unwrap();
    assert!(outcome.compacted);
    assert!(!paths.rewrite_tmp().exists());
    assert!(verify(&paths).unwrap().problems.is_empty());
}

#[test]
fn the_policy_compacts_below_the_threshold_and_counts_weeks_from_the_last_compaction() {
    let dir = TempDir::new("compact-policy");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    ten_weeks(&paths);
    let unforced = |day: i64, start: u32| -> CompactOutcome {
        let mut options = compact_options(day, Faults::none());
        options.plan.force = false;
        options.plan.threshold_start = start;
        compact(&paths, &options, &mut Vec::new()).unwrap()
    };
    // First run on day 0: at day 75 that is 10 weeks, so the threshold is 90% (80 + 10).
    let first = plan_at(&paths, NOW).0;
    assert_eq!(
        (first.weeks_since_compaction, first.threshold_percent),
        (10, 90)
    );
    let live = first.live_percent;
    assert!(live < 90.0, "the scenario has enough dead weight: {live}");

    // A threshold start that puts 90 + 10 weeks under the live share leaves it alone.
    let skipped = unforced(NOW, (live as u32).saturating_sub(10).saturating_sub(1));
    assert!(!skipped.compacted, "{:?}", skipped.plan);
    let done = unforced(NOW, 80);
    assert!(done.compacted);

    // Weeks now count from this compaction: 3 weeks later the threshold is back to 83%.
    let later = plan_at(&paths, NOW + 21).0;
    assert_eq!(
        (later.weeks_since_compaction, later.threshold_percent),
        (3, 83)
    );
}

/// What a restore as of `run` would name: every live entry's name and SHA-1.
fn state_names(archive: &Archive, run: u64) -> BTreeMap<String, String> {
    archive
        .state_at(Some(run))
        .into_iter()
        .map(|(_, e)| (e.name.clone(), format!("{}{}", e.sha1, e.target)))
        .collect()
}

#[test]
fn gfs_retention_keeps_the_chosen_runs_restorable_byte_for_byte_and_drops_the_others() {
    let dir = TempDir::new("compact-gfs");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    ten_weeks(&paths);
    let before = Archive::open(&paths, &mut Vec::new()).unwrap();
    let mut options = compact_options(NOW, Faults::none());
    options.plan.keep_days = 0;
    options.plan.keep_deleted_days = 0;
    options.plan.gfs = mailpack::compact::Gfs {
        weekly: 3,
        ..Default::default()
    };
    let p = plan(&before, &options.plan).unwrap();
    let kept: Vec<u64> = p.runs.iter().filter(|d| d.kept).map(|d| d.run).collect();
    let dropped: Vec<u64> = p.runs.iter().filter(|d| !d.kept).map(|d| d.run).collect();
    assert!(kept.len() >= 3 && !dropped.is_empty(), "{:#?}", p.runs);
    assert_eq!(
        p.runs
            .iter()
            .filter(|d| d.why.iter().any(|w| w.starts_with("weekly ")))
            .count(),
        3,
        "{:#?}",
        p.runs
    );
    let views: BTreeMap<u64, RestoreView> = kept
        .iter()
        .map(|&r| (r, restore_view(&before, r)))
        .collect();
    let names: BTreeMap<u64, BTreeMap<String, String>> = dropped
        .iter()
        .map(|&r| (r, state_names(&before, r)))
        .collect();
    drop(before);

    let outcome = compact(&paths, &options, &mut Vec::new()).unwrap();
    assert!(outcome.compacted, "{outcome:?}");
    let after = Archive::open(&paths, &mut Vec::new()).unwrap();
    for (run, view) in &views {
        assert_eq!(&restore_view(&after, *run), view, "kept run {run} changed");
    }
    let gone = names
        .iter()
        .filter(|(run, was)| state_names(&after, **run) != **was)
        .count();
    assert!(gone > 0, "no dropped run lost anything");
    let report = verify(&paths).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // Without GFS, the same archive keeps fewer runs: retention is what kept them.
    let plain = plan(
        &after,
        &PlanOptions {
            now: NOW * DAY,
            keep_days: 0,
            keep_deleted_days: 0,
            ..PlanOptions::default()
        },
    )
    .unwrap();
    assert!(plain.runs.iter().filter(|d| d.kept).count() < kept.len());
}

/// Compaction reads entries from the index file a piece at a time when the index is current,
/// and opens the full way otherwise (formats/compaction.md section 4). Both ways make the same
/// archive, byte for byte, and the same plan: with a good index, a missing one, one that lags a
/// run behind, a torn one and a rotten one; each leaves a current index beside the copy.
#[test]
fn compaction_streaming_the_index_and_reading_it_whole_make_the_same_archive() {
    let dir = TempDir::new("compact-streamed");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    ten_weeks(&paths);
    let archive_bytes = std::fs::read(&paths.archive).unwrap();
    let good_index = std::fs::read(&paths.index).unwrap();
    let streamed = Archive::open_streamed(&paths, &mut Vec::new()).unwrap();
    assert!(streamed.is_streamed());
    let whole = Archive::open(&paths, &mut Vec::new()).unwrap();
    assert!(!whole.is_streamed());
    let options = compact_options(NOW, Faults::none());
    let plan_streamed = plan(&streamed, &options.plan).unwrap();
    let plan_whole = plan(&whole, &options.plan).unwrap();
    assert_eq!(plan_streamed.keep, plan_whole.keep);
    assert_eq!(plan_streamed.dropped, plan_whole.dropped);
    assert_eq!(
        (plan_streamed.total_raw, plan_streamed.live_raw),
        (plan_whole.total_raw, plan_whole.live_raw)
    );
    drop((streamed, whole));

    let reference = compact(&paths, &options, &mut Vec::new()).unwrap();
    assert!(reference.compacted && reference.entries_dropped > 0);
    let compacted = std::fs::read(&paths.archive).unwrap();
    let compacted_index = std::fs::read(&paths.index).unwrap();

    // The index of run 1 only (a later run's block then is missing), cut inside the last block,
    // and a flipped byte inside the first block.
    let first_block_end = {
        let len = u32::from_le_bytes(good_index[32..36].try_into().unwrap()) as usize;
        32 + 8 + len
    };
    let mut rotten = good_index.clone();
    rotten[60] ^= 1;
    let broken: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("missing", None),
        ("a run behind", Some(good_index[..first_block_end].to_vec())),
        ("torn", Some(good_index[..good_index.len() - 5].to_vec())),
        ("rotten", Some(rotten)),
    ];
    for (what, index) in broken {
        std::fs::write(&paths.archive, &archive_bytes).unwrap();
        match &index {
            Some(bytes) => std::fs::write(&paths.index, bytes).unwrap(),
            None => std::fs::remove_file(&paths.index).unwrap(),
        }
        assert!(
            !Archive::open_streamed(&paths, &mut Vec::new())
                .unwrap()
                .is_streamed(),
            "{what}: a stale index is not streamed"
        );
        let mut notices = Vec::new();
        let outcome = compact(&paths, &options, &mut notices).unwrap();
        assert_eq!(
            (outcome.entries_kept, outcome.entries_dropped),
            (reference.entries_kept, reference.entries_dropped),
            "{what}"
        );
        assert!(
            std::fs::read(&paths.archive).unwrap() == compacted,
            "{what}"
        );
        assert!(
            std::fs::read(&paths.index).unwrap() == compacted_index,
            "{what}"
        );
        assert!(verify(&paths).unwrap().problems.is_empty(), "{what}");
    }
}
