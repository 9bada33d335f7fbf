//! The archive and store through the library: round trips, GNU tar interoperability, crash
//! recovery by truncation sweep and fault injection, corruption reports, index rebuilds, locks.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use mailpack::archive::{file_entry_name, Appended, RunSummary};
use mailpack::io::{FaultOn, Faults};
use mailpack::store::{verify, Archive, ArchivePaths, StoreWriter, WriterOptions, WriterWait};
use mailpack::{Error, Guid};

use crate::util::{Rng, TempDir};
use mailpack::io::SourceStat;

#[derive(Clone, Debug, PartialEq)]
enum Want {
    File(Vec<u8>),
    Link(String),
}

/// What a reader must see: name → content, tombstoned names absent.
type Model = BTreeMap<String, Want>;

enum Op {
    File(String, Vec<u8>),
    Message(Vec<u8>),
    Link(String, String),
    Tombstone(String),
}

fn options(threads: usize, faults: Faults) -> WriterOptions {
    WriterOptions {
        wait: WriterWait::FailIfBusy,
        level: 6,
        threads,
        faults,
    }
}

fn summary(time: i64) -> RunSummary {
    RunSummary {
        time,
        host: "test-host".into(),
        counts: vec![("files".into(), 1)],
        ..Default::default()
    }
}

/// Applies `ops` as one run; updates `model` only if the commit returned Ok.
fn write_run(
    paths: &ArchivePaths,
    ops: &[Op],
    opts: &WriterOptions,
    model: &mut Model,
) -> mailpack::Result<u64> {
    let mut notices = Vec::new();
    let mut store = StoreWriter::open(paths, opts, &mut notices)?;
    let mut next = model.clone();
    for op in ops {
        match op {
            Op::File(name, data) => {
                let stat = SourceStat {
                    dev: 1,
                    ino: data.len() as u64,
                    size: data.len() as u64,
                    mtime_ns: 1_700_000_000_000_000_001,
                    ctime_ns: 5,
                };
                store
                    .writer()
                    .append_bytes(name, data, Some(stat), 1_700_000_000)?;
                next.insert(name.clone(), Want::File(data.clone()));
            }
            Op::Message(data) => {
                let guid = Guid::of(data);
                let name = file_entry_name(&guid);
                let r = store.writer().append_reader(
                    &name,
                    &mut &data[..],
                    data.len() as u64,
                    Some(guid),
                    None,
                    1_700_000_000,
                )?;
                assert_eq!(r, Appended::Stored(guid), "message accepted");
                next.insert(name, Want::File(data.clone()));
            }
            Op::Link(name, target) => {
                store.writer().append_symlink(name, target, 1_700_000_000)?;
                next.insert(name.clone(), Want::Link(target.clone()));
            }
            Op::Tombstone(name) => {
                store.writer().append_symlink(name, "", 1_700_000_000)?;
                next.remove(name);
            }
        }
    }
    let run = store
        .commit(&summary(1_700_000_000 + model.len() as i64))?
        .run;
    *model = next;
    Ok(run)
}

fn assert_matches(archive: &Archive, model: &Model) {
    let state = archive.state_at(None);
    let names: Vec<&str> = state.iter().map(|(_, e)| e.name.as_str()).collect();
    let want: Vec<&str> = model.keys().map(|s| s.as_str()).collect();
    assert_eq!(names, want, "names differ");
    for (_, entry) in state {
        match &model[&entry.name] {
            Want::File(data) => {
                let mut got = Vec::new();
                archive
                    .read_entry(entry)
                    .unwrap()
                    .read_to_end(&mut got)
                    .unwrap();
                assert!(got == *data, "content of {} differs", entry.name);
            }
            Want::Link(target) => assert_eq!(&entry.target, target),
        }
    }
}

fn open(paths: &ArchivePaths) -> (Archive, Vec<String>) {
    let mut notices = Vec::new();
    let a = Archive::open(paths, &mut notices).unwrap();
    (a, notices)
}

/// Three runs exercising every entry shape: small and multi-member entries, long and non-ASCII
/// names, links, a rename with tombstone, a superseded metadata version.
fn three_runs(paths: &ArchivePaths, rng: &mut Rng, threads: usize) -> Model {
    let mut model = Model::new();
    let opts = options(threads, Faults::none());
    let mut ops = vec![
        Op::File("folders/u-1/cyrus.index".into(), rng.noise(3000)),
        Op::File(
            "folders/u-1/cyrus.header".into(),
            b"\xa1\x02\x8b\x0dCyrus mailbox header\n".to_vec(),
        ),
        Op::Link("imap/INBOX".into(), "folders/u-1".into()),
        Op::File("meta/subscriptions".into(), b"user.jane.Sent\n".to_vec()),
    ];
    for i in 0..300 {
        let len = 200 + rng.below(20_000) as usize;
        let mut m = rng.mail_text(len);
        m.extend_from_slice(format!("\r\nmessage {i}\r\n").as_bytes());
        ops.push(Op::Message(m));
    }
    ops.push(Op::Message(rng.noise(2_500_000))); // spans three members
    write_run(paths, &ops, &opts, &mut model).unwrap();

    let long = format!(
        "imap/{}",
        "Ünïcödé folder/".repeat(12).trim_end_matches('/')
    );
    let ops = vec![
        Op::File("folders/u-1/cyrus.index".into(), rng.noise(3100)),
        Op::Link(long, "folders/u-2".into()),
        Op::Link("imap/Archive".into(), "folders/u-1".into()),
        Op::Tombstone("imap/INBOX".into()),
        Op::Message(rng.mail_text(5000)),
    ];
    write_run(paths, &ops, &opts, &mut model).unwrap();
    write_run(paths, &[], &opts, &mut model).unwrap(); // a daily run with no change
    model
}

#[test]
fn round_trip_of_many_entries_in_three_runs() {
    let dir = TempDir::new("roundtrip");
    let paths = ArchivePaths::for_user(dir.path(), "jane.doe@example.com").unwrap();
    let model = three_runs(&paths, &mut Rng::new(1), 2);
    let (archive, notices) = open(&paths);
    assert!(notices.is_empty(), "{notices:?}");
    assert_eq!(archive.runs().len(), 3);
    assert_matches(&archive, &model);
    // As of run 1, INBOX still existed and the long name did not.
    let at1: Vec<_> = archive
        .state_at(Some(1))
        .into_iter()
        .map(|(_, e)| e.name.clone())
        .collect();
    assert!(at1.contains(&"imap/INBOX".to_string()));
    assert!(!at1.contains(&"imap/Archive".to_string()));
    let report = verify(&paths).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.runs, report.entries), (3, 4 + 301 + 5));
    // Private mail: owner-only files.
    use std::os::unix::fs::PermissionsExt;
    for p in [&paths.archive, &paths.index, &paths.lock] {
        assert_eq!(
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
    }
}

#[test]
fn output_bytes_do_not_depend_on_the_thread_count() {
    let (a, b) = (TempDir::new("threads1"), TempDir::new("threads4"));
    let pa = ArchivePaths::for_user(a.path(), "u").unwrap();
    let pb = ArchivePaths::for_user(b.path(), "u").unwrap();
    three_runs(&pa, &mut Rng::new(7), 1);
    three_runs(&pb, &mut Rng::new(7), 4);
    let (ba, bb) = (
        std::fs::read(&pa.archive).unwrap(),
        std::fs::read(&pb.archive).unwrap(),
    );
    // Only the commit markers differ: each holds the archive's random id, which may even
    // compress to another length. Every run's entry members are byte for byte the same.
    let (oa, ob) = (open(&pa).0, open(&pb).0);
    assert_eq!(oa.runs().len(), ob.runs().len());
    for (ra, rb) in oa.runs().iter().zip(ob.runs()) {
        assert!(ra.marker_offset - ra.start > 0 || ra.run == 3);
        assert!(
            ba[ra.start as usize..ra.marker_offset as usize]
                == bb[rb.start as usize..rb.marker_offset as usize],
            "run {}",
            ra.run
        );
    }
}

fn gnu_tar(args: &[&str]) -> std::process::Output {
    Command::new("tar")
        .args(args)
        .output()
        .expect("GNU tar is installed by the project's setup")
}

#[test]
fn gnu_tar_lists_and_extracts_the_archive() {
    let dir = TempDir::new("gnutar");
    let paths = ArchivePaths::for_user(dir.path(), "jane").unwrap();
    let model = three_runs(&paths, &mut Rng::new(2), 2);
    let (archive, _) = open(&paths);

    let gz = Command::new("gzip")
        .arg("-t")
        .arg(&paths.archive)
        .status()
        .unwrap();
    assert!(gz.success(), "gzip -t fails");

    let list = gnu_tar(&["-tizf", paths.archive.to_str().unwrap()]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut expected = Vec::new();
    for run in archive.runs() {
        expected.extend(archive.entries_of(run).iter().map(|e| e.name.clone()));
        expected.push(format!("runs/{}", run.run));
    }
    assert_eq!(listed, expected);

    // Extraction gives back every stored file; the one tombstone is the only complaint, since
    // Linux cannot make a symlink with an empty target.
    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    let x = gnu_tar(&[
        "-xizf",
        paths.archive.to_str().unwrap(),
        "-C",
        out.to_str().unwrap(),
        "--warning=no-unknown-keyword",
    ]);
    let complaints: Vec<String> = String::from_utf8_lossy(&x.stderr)
        .lines()
        .filter(|l| !l.contains("Exiting with failure status"))
        .map(String::from)
        .collect();
    assert_eq!(complaints.len(), 1, "{complaints:?}");
    assert!(
        complaints[0].contains("imap/INBOX") && complaints[0].contains("symlink"),
        "{complaints:?}"
    );
    for (name, want) in &model {
        let path = out.join(name);
        match want {
            Want::File(data) => assert!(std::fs::read(&path).unwrap() == *data, "{name}"),
            Want::Link(target) => {
                assert_eq!(std::fs::read_link(&path).unwrap().to_str().unwrap(), target)
            }
        }
    }
}

/// Opens the archive as a writer would (which cuts an interrupted run's tail and rewrites a
/// stale index) and closes it again; returns what it repaired.
fn writer_repairs(paths: &ArchivePaths) -> Vec<String> {
    let mut notices = Vec::new();
    drop(StoreWriter::open(paths, &options(1, Faults::none()), &mut notices).unwrap());
    notices
}

fn copy_prefix(src: &ArchivePaths, len: u64, dst: &ArchivePaths, with_index: Option<&[u8]>) {
    let bytes = std::fs::read(&src.archive).unwrap();
    std::fs::write(&dst.archive, &bytes[..len as usize]).unwrap();
    match with_index {
        Some(idx) => std::fs::write(&dst.index, idx).unwrap(),
        None => {
            let _ = std::fs::remove_file(&dst.index);
        }
    }
}

#[test]
fn truncation_anywhere_in_the_last_run_gives_the_previous_commit() {
    let dir = TempDir::new("trunc");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    let mut rng = Rng::new(3);
    let mut model = Model::new();
    let opts = options(2, Faults::none());
    let first: Vec<Op> = (0..20).map(|_| Op::Message(rng.mail_text(3000))).collect();
    write_run(&paths, &first, &opts, &mut model).unwrap();
    let model_1 = model.clone();
    let index_1 = std::fs::read(&paths.index).unwrap();
    let second = vec![
        Op::File("folders/u-1/cyrus.index".into(), rng.noise(700)),
        Op::Message(rng.mail_text(1500)),
        Op::Link("imap/Sent".into(), "folders/u-1".into()),
    ];
    write_run(&paths, &second, &opts, &mut model).unwrap();
    let index_2 = std::fs::read(&paths.index).unwrap();
    let (archive, _) = open(&paths);
    let (start, end) = (archive.runs()[1].start, archive.runs()[1].end);
    drop(archive);

    let work = TempDir::new("trunc-work");
    let cut_paths = ArchivePaths::for_user(work.path(), "u").unwrap();
    for cut in start..end {
        // With the index of run 1 (crash before the index update), the index of run 2 (archive
        // lost its tail, index did not), or no index at all.
        for index in [Some(&index_1[..]), Some(&index_2[..]), None] {
            copy_prefix(&paths, cut, &cut_paths, index);
            if index == Some(&index_2[..]) {
                // The index vouches for run 2, so the cut is damage, not a tail: refused by a
                // reader and a writer alike, and the file is left exactly as it is.
                let mut notices = Vec::new();
                match Archive::open(&cut_paths, &mut notices) {
                    Err(Error::Corrupt { .. }) => {}
                    other => panic!("cut {cut}: expected damage, got {:?}", other.map(|_| ())),
                }
                assert!(StoreWriter::open(&cut_paths, &opts, &mut notices).is_err());
                assert_eq!(std::fs::metadata(&cut_paths.archive).unwrap().len(), cut);
                continue;
            }
            // A reader sees the previous commit and leaves the file as it is.
            let mut notices = Vec::new();
            let archive = Archive::open(&cut_paths, &mut notices)
                .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            assert_eq!(archive.runs().len(), 1, "cut {cut}");
            assert_matches(&archive, &model_1);
            drop(archive);
            assert_eq!(std::fs::metadata(&cut_paths.archive).unwrap().len(), cut);
            // verify names it as what it is, an interrupted run's bytes, and nothing else (a
            // member cut short used to be reported as damage at its offset).
            if cut > start {
                let report = mailpack::store::verify(&cut_paths).unwrap();
                let unexplained: Vec<_> = report
                    .problems
                    .iter()
                    .filter(|p| {
                        !(p.detail.contains("belong to no committed run")
                            || p.detail.contains("the index"))
                    })
                    .collect();
                assert!(unexplained.is_empty(), "cut {cut}: {unexplained:?}");
                assert!(
                    report
                        .problems
                        .iter()
                        .any(|p| p.offset == start
                            && p.detail.contains("belong to no committed run")),
                    "cut {cut}: {:?}",
                    report.problems
                );
            }
            // The next writer cuts the interrupted run's tail.
            let notices = writer_repairs(&cut_paths);
            assert_eq!(
                std::fs::metadata(&cut_paths.archive).unwrap().len(),
                start,
                "tail not removed at cut {cut}"
            );
            if cut > start {
                assert!(
                    notices.iter().any(|n| n.contains("interrupted")),
                    "cut {cut}: {notices:?}"
                );
            }
        }
        // The next append succeeds and lands after the previous commit.
        {
            let mut m = model_1.clone();
            write_run(
                &cut_paths,
                &[Op::Message(format!("after cut {cut}").into_bytes())],
                &options(1, Faults::none()),
                &mut m,
            )
            .unwrap();
            let (archive, notices) = open(&cut_paths);
            assert!(notices.is_empty(), "{notices:?}");
            assert_eq!(archive.runs().len(), 2);
            assert_matches(&archive, &m);
        }
    }
}

#[test]
fn an_uncommitted_run_is_dropped_and_a_reader_leaves_a_busy_writers_tail_alone() {
    let dir = TempDir::new("uncommitted");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    let mut model = Model::new();
    write_run(
        &paths,
        &[Op::Message(b"one".to_vec())],
        &options(1, Faults::none()),
        &mut model,
    )
    .unwrap();
    let committed = std::fs::metadata(&paths.archive).unwrap().len();

    let mut notices = Vec::new();
    let mut store = StoreWriter::open(&paths, &options(1, Faults::none()), &mut notices).unwrap();
    let big = Rng::new(4).noise(3 << 20); // several members reach the file before any commit
    let guid = Guid::of(&big);
    let appended = store
        .writer()
        .append_reader(
            &file_entry_name(&guid),
            &mut &big[..],
            big.len() as u64,
            Some(guid),
            None,
            0,
        )
        .unwrap();
    assert_eq!(appended, Appended::Stored(guid));
    assert!(std::fs::metadata(&paths.archive).unwrap().len() > committed);

    // While the writer holds its lock, readers see the committed state and do not cut its tail.
    let (archive, notices) = open(&paths);
    assert!(notices.is_empty(), "{notices:?}");
    assert_matches(&archive, &model);
    assert!(std::fs::metadata(&paths.archive).unwrap().len() > committed);

    // A second writer is refused at once.
    match StoreWriter::open(&paths, &options(1, Faults::none()), &mut Vec::new()) {
        Err(Error::Busy { .. }) => {}
        other => panic!("expected busy, got {:?}", other.map(|_| ())),
    }
    drop(store); // dies without committing
                 // A reader still leaves the tail alone; the next writer cuts it.
    let (archive, notices) = open(&paths);
    assert!(notices.is_empty(), "{notices:?}");
    assert!(std::fs::metadata(&paths.archive).unwrap().len() > committed);
    assert_matches(&archive, &model);
    let notices = writer_repairs(&paths);
    assert!(
        notices.iter().any(|n| n.contains("interrupted")),
        "{notices:?}"
    );
    assert_eq!(std::fs::metadata(&paths.archive).unwrap().len(), committed);
}

#[test]
fn a_waiting_writer_proceeds_when_the_first_one_finishes() {
    let dir = TempDir::new("wait");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    let first = StoreWriter::open(&paths, &options(1, Faults::none()), &mut Vec::new()).unwrap();
    let p2 = paths.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut opts = options(1, Faults::none());
        opts.wait = WriterWait::UntilFree;
        let mut s = StoreWriter::open(&p2, &opts, &mut Vec::new()).unwrap();
        tx.send(()).unwrap();
        s.writer().append_symlink("imap/X", "folders/x", 0).unwrap();
        s.commit(&summary(1)).unwrap().run
    });
    // The waiter cannot get in while the first writer lives.
    assert!(rx
        .recv_timeout(std::time::Duration::from_millis(300))
        .is_err());
    drop(first);
    assert_eq!(waiter.join().unwrap(), 1);
}

/// Runs a whole writer session with the Nth I/O operation failing.
fn session_with_fault(
    paths: &ArchivePaths,
    n: u64,
    on: FaultOn,
    rng_seed: u64,
    model: &mut Model,
) -> (bool, Model, bool) {
    let mut rng = Rng::new(rng_seed);
    let ops = vec![
        Op::File("folders/u-1/cyrus.index".into(), rng.noise(2000)),
        Op::Message(rng.mail_text(200_000)),
        Op::Message(rng.noise(1_500_000)),
        Op::Link("imap/Drafts".into(), "folders/u-1".into()),
        Op::Tombstone("imap/Old".into()),
    ];
    let before = model.clone();
    let faults = Faults::fail_nth(n, on);
    let mut opts = options(2, faults.clone());
    opts.faults = faults.clone();
    let result = write_run(paths, &ops, &opts, model);
    let mut after = before.clone();
    for op in &ops {
        match op {
            Op::File(name, d) => drop(after.insert(name.clone(), Want::File(d.clone()))),
            Op::Message(d) => {
                drop(after.insert(file_entry_name(&Guid::of(d)), Want::File(d.clone())))
            }
            Op::Link(name, t) => drop(after.insert(name.clone(), Want::Link(t.clone()))),
            Op::Tombstone(name) => drop(after.remove(name)),
        }
    }
    *model = before;
    // Once `n` passes the number of counted operations, no fault fired: the sweep is done.
    (result.is_ok(), after, faults.seen() >= n)
}

#[test]
fn a_failed_write_or_fsync_at_any_point_leaves_the_last_commit() {
    for on in [FaultOn::Write, FaultOn::Sync] {
        let mut n = 1;
        loop {
            let dir = TempDir::new("faults");
            let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
            let mut model = Model::new();
            write_run(
                &paths,
                &[
                    Op::Message(b"committed before".to_vec()),
                    Op::Link("imap/Old".into(), "folders/o".into()),
                ],
                &options(1, Faults::none()),
                &mut model,
            )
            .unwrap();
            let before = model.clone();
            let (ok, after, fired) = session_with_fault(&paths, n, on, 5, &mut model);
            // Reopen without faults: the state is the old or the new commit, never a mixture,
            // and the new one whenever commit said Ok.
            // The next writer's open repairs what the fault left (a torn tail, a stale index).
            let mut notices = Vec::new();
            drop(
                StoreWriter::open(&paths, &options(1, Faults::none()), &mut notices)
                    .unwrap_or_else(|e| panic!("{on:?} #{n}: {e}")),
            );
            let archive =
                Archive::open(&paths, &mut notices).unwrap_or_else(|e| panic!("{on:?} #{n}: {e}"));
            let runs = archive.runs().len();
            match (ok, runs) {
                (true, 2) => assert_matches(&archive, &after),
                (false, 1) => assert_matches(&archive, &before),
                // The archive fsync succeeded and the index update failed: the run is durable.
                (false, 2) => assert_matches(&archive, &after),
                _ => panic!("{on:?} #{n}: ok={ok} with {runs} runs"),
            }
            let report = verify(&paths).unwrap();
            assert!(
                report.problems.is_empty(),
                "{on:?} #{n}: {:?}",
                report.problems
            );
            // And the archive takes the next run.
            let mut m = if runs == 2 {
                after.clone()
            } else {
                before.clone()
            };
            write_run(
                &paths,
                &[Op::Message(b"next".to_vec())],
                &options(1, Faults::none()),
                &mut m,
            )
            .unwrap();
            assert_matches(&open(&paths).0, &m);
            if !fired {
                assert!(ok, "{on:?} #{n}: failed without a fault");
                break; // n passed the number of operations: every one has been failed once
            }
            n += 1;
        }
        // Writes: members, marker, index block; syncs: the archive only (an appended index
        // block is not synced: formats/archive.md section 7).
        let least = if on == FaultOn::Write { 4 } else { 1 };
        assert!(n > least, "{on:?}: only {} operations were counted", n - 1);
    }
}

/// Group commit (formats/archive.md 7.1): runs of only their marker wait for one sync of
/// their group; their index blocks are written only after it, a run with entries is synced at
/// once, and a failed file-system sync falls back to each archive's own fsync, so the error
/// lands on the archive whose sync failed and the others commit.
#[test]
fn grouped_marker_runs_commit_after_one_sync_and_a_failed_sync_names_its_archive() {
    let dir = TempDir::new("group");
    let users = ["ann", "ben", "cat", "dan"];
    let paths: Vec<ArchivePaths> = users
        .iter()
        .map(|u| ArchivePaths::for_user(dir.path(), u).unwrap())
        .collect();
    let mut models: Vec<Model> = Vec::new();
    for p in &paths {
        let mut model = Model::new();
        write_run(
            p,
            &[Op::Message(p.archive.display().to_string().into_bytes())],
            &options(1, Faults::none()),
            &mut model,
        )
        .unwrap();
        models.push(model);
    }
    let through = std::fs::File::open(dir.path()).unwrap();
    let index_len = |p: &ArchivePaths| std::fs::metadata(&p.index).unwrap().len();
    let before: Vec<u64> = paths.iter().map(index_len).collect();

    // ann's plan fails the group's syncfs (her first sync), ben's fails his own fsync after it.
    let plans = [
        Faults::fail_nth(1, FaultOn::Sync),
        Faults::fail_nth(1, FaultOn::Sync),
        Faults::none(),
        Faults::none(),
    ];
    let mut stores: Vec<StoreWriter> = paths
        .iter()
        .zip(&plans)
        .map(|(p, f)| {
            StoreWriter::open_streamed(p, &options(1, f.clone()), &mut Vec::new()).unwrap()
        })
        .collect();
    // dan's run stores an entry: committed (and synced) at once.
    stores[3]
        .writer()
        .append_symlink("imap/INBOX", "folders/x", 1_700_000_000)
        .unwrap();
    for store in &mut stores {
        assert_eq!(store.commit_grouped(&summary(1_700_000_100)).unwrap(), 2);
    }
    let waiting: Vec<bool> = stores.iter().map(StoreWriter::is_unsynced).collect();
    assert_eq!(waiting, [true, true, true, false]);
    for k in 0..3 {
        assert_eq!(
            index_len(&paths[k]),
            before[k],
            "{}: index block before the sync",
            users[k]
        );
    }
    assert!(
        index_len(&paths[3]) > before[3],
        "dan's run indexed at once"
    );

    let outcomes = {
        let mut refs: Vec<&mut StoreWriter> = stores.iter_mut().collect();
        mailpack::store::sync_group(&through, &mut refs)
    };
    let ok: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, true, true], "{outcomes:?}");
    let failed = outcomes[1].as_ref().unwrap_err().to_string();
    assert!(
        failed.contains(&paths[1].archive.display().to_string()),
        "{failed}"
    );
    for (k, store) in stores.iter_mut().enumerate() {
        let finished = store.finish_grouped().map(|r| r.run);
        assert_eq!(finished, [Some(2), None, Some(2), None][k], "{}", users[k]);
    }
    drop(stores);
    for k in [0, 2, 3] {
        let frames = mailpack::store::sidecar::read_frames(&paths[k].index)
            .unwrap()
            .expect("a current index");
        assert_eq!(
            frames.runs.len(),
            2,
            "{}: the grouped run's index block",
            users[k]
        );
        let (archive, notices) = open(&paths[k]);
        assert!(notices.is_empty(), "{}: {notices:?}", users[k]);
        assert_eq!(archive.runs().len(), 2);
    }
    // ben's marker was written but its sync failed: whatever reached the file, the next writer
    // opens a consistent archive and verify finds nothing wrong.
    drop(StoreWriter::open(&paths[1], &options(1, Faults::none()), &mut Vec::new()).unwrap());
    for p in &paths {
        let report = verify(p).unwrap();
        assert!(
            report.problems.is_empty(),
            "{}: {:?}",
            p.archive.display(),
            report.problems
        );
    }
    assert_matches(&open(&paths[1]).0, &models[1]);
}

/// `verify` of an archive whose index is current compares each scanned entry with the index's
/// as it streams out of the index file (issue 19): an index that is well-formed (every CRC
/// good) but says something else about an entry, or holds an entry fewer in a run, is named
/// with the run and the entry, small (held) or large (read again from the file) alike.
#[test]
fn verify_names_an_index_that_disagrees_with_the_archive_small_or_large() {
    use mailpack::store::sidecar::{self, IndexRead};
    for messages in [3usize, 3000] {
        let dir = TempDir::new("verify-index");
        let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
        let mut rng = Rng::new(11);
        let mut model = Model::new();
        let opts = options(1, Faults::none());
        let first: Vec<Op> = (0..messages)
            .map(|i| Op::Message(format!("message {i}\r\n").into_bytes()))
            .collect();
        write_run(&paths, &first, &opts, &mut model).unwrap();
        let second = [
            Op::File("folders/u-1/cyrus.index".into(), rng.noise(900)),
            Op::Link("imap/INBOX".into(), "folders/u-1".into()),
        ];
        write_run(&paths, &second, &opts, &mut model).unwrap();
        assert!(verify(&paths).unwrap().problems.is_empty());
        let IndexRead::Valid {
            runs, archive_id, ..
        } = sidecar::read(&paths.index).unwrap()
        else {
            panic!("a good index");
        };

        // Run 2's first entry says another size.
        let mut forged = runs.clone();
        forged[1].entries[0].size += 1;
        sidecar::write_full(&paths.index, &archive_id, &forged, &Faults::none()).unwrap();
        let problems = verify(&paths).unwrap().problems;
        assert_eq!(problems.len(), 1, "{messages}: {problems:?}");
        assert_eq!(
            problems[0].entry.as_deref(),
            Some("folders/u-1/cyrus.index"),
            "{problems:?}"
        );
        assert!(problems[0].detail.contains("disagrees") && problems[0].detail.contains("run 2"));

        // Run 1 lacks its last message in the index.
        let mut forged = runs.clone();
        forged[0].entries.pop();
        sidecar::write_full(&paths.index, &archive_id, &forged, &Faults::none()).unwrap();
        let problems = verify(&paths).unwrap().problems;
        assert!(
            problems.iter().any(|p| p
                .detail
                .contains("the index's run 1 disagrees with the archive's run 1")),
            "{messages}: {problems:?}"
        );

        // The index as it was: nothing to say.
        sidecar::write_full(&paths.index, &archive_id, &runs, &Faults::none()).unwrap();
        assert!(verify(&paths).unwrap().problems.is_empty());

        // Two stray bytes after the last block (shorter than a length field) are not a current
        // index but a torn tail, what a crash during an index append leaves
        // (formats/archive.md section 7): verify goes the full way and finds the archive
        // sound, and the next writer puts the index right.
        let mut bytes = std::fs::read(&paths.index).unwrap();
        bytes.extend_from_slice(&[7, 7]);
        std::fs::write(&paths.index, &bytes).unwrap();
        assert!(sidecar::read_frames(&paths.index).unwrap().is_none());
        let report = verify(&paths).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        drop(StoreWriter::open(&paths, &opts, &mut Vec::new()).unwrap());
        assert!(sidecar::read_frames(&paths.index).unwrap().is_some());
    }
}

#[test]
fn a_poisoned_writer_refuses_further_writes() {
    let dir = TempDir::new("poison");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    let faults = Faults::fail_nth(1, FaultOn::Write);
    let mut store = StoreWriter::open(&paths, &options(1, faults), &mut Vec::new()).unwrap();
    let big = Rng::new(9).noise(2 << 20);
    let guid = Guid::of(&big);
    assert!(store
        .writer()
        .append_reader(
            &file_entry_name(&guid),
            &mut &big[..],
            big.len() as u64,
            Some(guid),
            None,
            0
        )
        .is_err());
    assert!(matches!(
        store.writer().append_symlink("imap/A", "folders/a", 0),
        Err(Error::Poisoned(_))
    ));
    assert!(matches!(store.commit(&summary(0)), Err(Error::Poisoned(_))));
    drop(store);
    let (archive, _) = open(&paths);
    assert_eq!(archive.runs().len(), 0);
}

#[test]
fn a_source_that_changes_size_or_hash_is_rejected_without_trace() {
    let dir = TempDir::new("reject");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    let mut store =
        StoreWriter::open(&paths, &options(2, Faults::none()), &mut Vec::new()).unwrap();
    let mut rng = Rng::new(11);
    let small = rng.mail_text(5000);
    let big = rng.noise(3 << 20);
    for data in [&small, &big] {
        let guid = Guid::of(data);
        let name = file_entry_name(&guid);
        // Shorter than announced, longer than announced, wrong content.
        let short = store
            .writer()
            .append_reader(
                &name,
                &mut &data[..data.len() - 1],
                data.len() as u64,
                Some(guid),
                None,
                0,
            )
            .unwrap();
        assert!(matches!(short, Appended::Rejected(_)));
        let long = store
            .writer()
            .append_reader(
                &name,
                &mut &data[..],
                data.len() as u64 - 1,
                Some(guid),
                None,
                0,
            )
            .unwrap();
        assert!(matches!(long, Appended::Rejected(_)));
        let mut other = data.clone();
        other[100] ^= 1;
        let wrong = store
            .writer()
            .append_reader(
                &name,
                &mut &other[..],
                data.len() as u64,
                Some(guid),
                None,
                0,
            )
            .unwrap();
        assert!(matches!(wrong, Appended::Rejected(_)));
        let stored = store
            .writer()
            .append_reader(
                &name,
                &mut &data[..],
                data.len() as u64,
                Some(guid),
                None,
                0,
            )
            .unwrap();
        assert_eq!(stored, Appended::Stored(guid));
    }
    store.commit(&summary(0)).unwrap();
    drop(store);
    let (archive, _) = open(&paths);
    assert_eq!(archive.runs()[0].entries.len(), 2);
    let report = verify(&paths).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn member_of(archive: &Archive, offset: u64) -> u64 {
    let mut starts: Vec<u64> = Vec::new();
    for run in archive.runs() {
        starts.extend(archive.entries_of(run).iter().map(|e| e.placement.member));
        starts.push(run.marker_offset);
    }
    starts.sort();
    *starts.iter().rev().find(|&&s| s <= offset).unwrap()
}

#[test]
fn a_flipped_byte_anywhere_is_named_by_verify_and_never_panics() {
    let dir = TempDir::new("flip");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    let mut rng = Rng::new(6);
    let mut model = Model::new();
    let ops: Vec<Op> = (0..6)
        .map(|i| Op::Message(rng.mail_text(300 + i * 50)))
        .chain([Op::Link("imap/INBOX".into(), "folders/u".into())])
        .collect();
    write_run(&paths, &ops, &options(1, Faults::none()), &mut model).unwrap();
    write_run(
        &paths,
        &[Op::File("meta/seen".into(), b"seen state".to_vec())],
        &options(1, Faults::none()),
        &mut model,
    )
    .unwrap();
    let (archive, _) = open(&paths);
    let original = std::fs::read(&paths.archive).unwrap();
    let index = std::fs::read(&paths.index).unwrap();
    let work = TempDir::new("flip-work");
    let wpaths = ArchivePaths::for_user(work.path(), "u").unwrap();
    for offset in 0..original.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = original.clone();
            bad[offset] ^= bit;
            std::fs::write(&wpaths.archive, &bad).unwrap();
            std::fs::write(&wpaths.index, &index).unwrap();
            // Opening must not panic, and must never cut committed data.
            let _ = Archive::open(&wpaths, &mut Vec::new());
            assert_eq!(
                std::fs::metadata(&wpaths.archive).unwrap().len(),
                original.len() as u64,
                "byte {offset} bit {bit:#x}: committed data cut"
            );
            let report = verify(&wpaths).unwrap();
            let member = member_of(&archive, offset as u64);
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.offset == member && p.entry.is_some()),
                "byte {offset} bit {bit:#x} (member {member}): {:?}",
                report.problems
            );
        }
    }
}

#[test]
fn a_missing_stale_or_corrupt_index_is_rebuilt_with_the_same_answers() {
    let dir = TempDir::new("index");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    let mut rng = Rng::new(8);
    let mut model = Model::new();
    let opts = options(2, Faults::none());
    write_run(
        &paths,
        &[
            Op::Message(rng.mail_text(900)),
            Op::Link("imap/A".into(), "folders/a".into()),
        ],
        &opts,
        &mut model,
    )
    .unwrap();
    let index_1 = std::fs::read(&paths.index).unwrap();
    write_run(
        &paths,
        &[
            Op::Message(rng.noise(1_300_000)),
            Op::Tombstone("imap/A".into()),
        ],
        &opts,
        &mut model,
    )
    .unwrap();
    let good_index = std::fs::read(&paths.index).unwrap();

    let check = |setup: &dyn Fn(), expect_notice: &str| {
        setup();
        // A reader rebuilds the index in memory only: same answers, the file as it was.
        let stale = std::fs::read(&paths.index).ok();
        let (archive, notices) = open(&paths);
        assert!(notices.is_empty(), "a reader wrote: {notices:?}");
        assert_matches(&archive, &model);
        assert_eq!(
            std::fs::read(&paths.index).ok(),
            stale,
            "a reader wrote the index"
        );
        drop(archive);
        // The next writer rewrites it.
        let notices = writer_repairs(&paths);
        assert!(
            notices.iter().any(|n| n.contains(expect_notice)),
            "{expect_notice}: {notices:?}"
        );
        assert_eq!(
            std::fs::read(&paths.index).unwrap(),
            good_index,
            "{expect_notice}: index not restored"
        );
        let (archive, notices) = open(&paths);
        assert_matches(&archive, &model);
        assert!(
            writer_repairs(&paths).is_empty() && notices.is_empty(),
            "second open repaired again: {notices:?}"
        );
    };
    check(&|| std::fs::remove_file(&paths.index).unwrap(), "missing");
    check(
        &|| std::fs::write(&paths.index, &index_1).unwrap(),
        "up to date",
    );
    check(
        &|| {
            let mut rotten = good_index.clone();
            rotten[40] ^= 0x10;
            std::fs::write(&paths.index, rotten).unwrap();
        },
        "unusable",
    );
    check(
        &|| std::fs::write(&paths.index, &good_index[..good_index.len() - 3]).unwrap(),
        "up to date",
    );
    // An index from another archive altogether.
    let other = TempDir::new("index-other");
    let other_paths = ArchivePaths::for_user(other.path(), "u").unwrap();
    let mut other_model = Model::new();
    write_run(
        &other_paths,
        &[Op::Message(b"x".to_vec())],
        &opts,
        &mut other_model,
    )
    .unwrap();
    write_run(
        &other_paths,
        &[Op::Message(b"y".to_vec())],
        &opts,
        &mut other_model,
    )
    .unwrap();
    write_run(
        &other_paths,
        &[Op::Message(b"z".to_vec())],
        &opts,
        &mut other_model,
    )
    .unwrap();
    let foreign = std::fs::read(&other_paths.index).unwrap();
    check(
        &|| std::fs::write(&paths.index, &foreign).unwrap(),
        "rebuilt",
    );
}

#[test]
fn archives_of_awkward_user_names_live_side_by_side() {
    let dir = TempDir::new("names");
    let users = [
        "jane.doe@example.com",
        "josé",
        ".hidden",
        "a/b",
        "100%",
        "UPPER",
        "upper",
    ];
    for (i, user) in users.iter().enumerate() {
        let paths = ArchivePaths::for_user(dir.path(), user).unwrap();
        let mut model = Model::new();
        write_run(
            &paths,
            &[Op::Message(format!("mail of {i}").into_bytes())],
            &options(1, Faults::none()),
            &mut model,
        )
        .unwrap();
    }
    let listed = mailpack::store::list_archives(dir.path()).unwrap();
    let mut names: Vec<String> = listed.iter().map(|p| p.user.clone().unwrap()).collect();
    names.sort();
    let mut want: Vec<String> = users.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
    for paths in listed {
        let (archive, _) = open(&paths);
        assert_eq!(archive.runs().len(), 1);
        assert!(!Path::new(&paths.archive)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with('.'));
    }
}

#[test]
fn the_streaming_lookup_agrees_with_the_full_index_and_falls_back_when_stale() {
    use mailpack::store::find_latest;
    let dir = TempDir::new("lookup");
    let paths = ArchivePaths::for_user(dir.path(), "u").unwrap();
    three_runs(&paths, &mut Rng::new(12), 2);
    let (archive, _) = open(&paths);
    let mut names: Vec<String> = archive
        .runs()
        .iter()
        .flat_map(|r| archive.entries_of(r).iter().map(|e| e.name.clone()))
        .collect();
    names.push("files/0000000000000000000000000000000000000000".into());
    let expect =
        |archive: &Archive, name: &str| archive.latest(name).map(|(run, e)| (run, e.clone()));
    for name in &names {
        assert_eq!(
            find_latest(&paths, name, &mut Vec::new())
                .unwrap()
                .map(|(run, e, _)| (run, e)),
            expect(&archive, name),
            "{name}"
        );
    }
    // Stale index (one run behind): the lookup must see the newer version, through the full open.
    let index_3 = std::fs::read(&paths.index).unwrap();
    let mut model = Model::new();
    for (_, e) in archive.state_at(None) {
        if e.kind == mailpack::archive::EntryKind::File {
            let mut data = Vec::new();
            archive
                .read_entry(e)
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            model.insert(e.name.clone(), Want::File(data));
        } else {
            model.insert(e.name.clone(), Want::Link(e.target.clone()));
        }
    }
    write_run(
        &paths,
        &[Op::File(
            "folders/u-1/cyrus.index".into(),
            b"newest".to_vec(),
        )],
        &options(1, Faults::none()),
        &mut model,
    )
    .unwrap();
    std::fs::write(&paths.index, &index_3).unwrap();
    let (run, entry, _) = find_latest(&paths, "folders/u-1/cyrus.index", &mut Vec::new())
        .unwrap()
        .unwrap();
    assert_eq!((run, entry.size), (4, 6));
    // A damaged index: same answer again.
    let mut rotten = std::fs::read(&paths.index).unwrap();
    let at = rotten.len() / 2;
    rotten[at] ^= 0x40;
    std::fs::write(&paths.index, &rotten).unwrap();
    let (run, _, _) = find_latest(&paths, "folders/u-1/cyrus.index", &mut Vec::new())
        .unwrap()
        .unwrap();
    assert_eq!(run, 4);
}
