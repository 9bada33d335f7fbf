//! `repair` under faults: a failed write, fsync, link or rename at any step leaves the damaged
//! archive or the repaired one under the archive's name, never loses the damaged bytes, and the
//! next repair finishes the job.

use std::collections::BTreeMap;
use std::path::Path;

use mailpack::archive::RunSummary;
use mailpack::io::{FaultOn, Faults};
use mailpack::store::{repair, ArchivePaths, RepairOptions, StoreWriter, WriterOptions};

use crate::util::{Rng, TempDir};

const NOW: i64 = 1_790_000_000;

/// Three runs of messages, then one flipped byte in the middle of run 2's first member.
fn damaged_archive(dir: &Path) -> ArchivePaths {
    let paths = ArchivePaths::for_user(dir, "u").unwrap();
    let mut rng = Rng::new(41);
    for run in 0..3 {
        let options = WriterOptions {
            threads: 1,
            ..WriterOptions::default()
        };
        let mut store = StoreWriter::open(&paths, &options, &mut Vec::new()).unwrap();
        for _ in 0..4 {
            let text = rng.mail_text(20_000);
            let name = format!("files/{}", mailpack::Guid::of(&text));
            store.writer().append_bytes(&name, &text, None, 0).unwrap();
        }
        store
            .commit(&RunSummary {
                time: NOW - 86_400 * (3 - run),
                host: "h".into(),
                ..Default::default()
            })
            .unwrap();
    }
    let start_of_run_2 = {
        let archive = mailpack::store::Archive::open(&paths, &mut Vec::new()).unwrap();
        archive.runs()[1].start
    };
    let mut bytes = std::fs::read(&paths.archive).unwrap();
    bytes[start_of_run_2 as usize + 500] ^= 0x20;
    std::fs::write(&paths.archive, bytes).unwrap();
    paths
}

fn options(faults: Faults) -> RepairOptions {
    RepairOptions {
        dry_run: false,
        writer: WriterOptions {
            threads: 1,
            faults,
            ..WriterOptions::default()
        },
        now: NOW,
        host: "h".into(),
    }
}

/// What a restore could read: every run's entries (name and SHA-1), without the list of what
/// the repair lost, which names less when a crash took the old index with it.
fn kept(paths: &ArchivePaths) -> Vec<(u64, String, String)> {
    let archive = mailpack::store::Archive::open(paths, &mut Vec::new()).unwrap();
    archive
        .runs()
        .iter()
        .flat_map(|r| {
            archive
                .entries_of(r)
                .iter()
                .filter(|e| !e.name.starts_with("repairs/"))
                .map(move |e| (r.run, e.name.clone(), e.sha1.to_string()))
        })
        .collect()
}

/// Every file in `dir` by name, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_fault_at_any_step_of_a_repair_keeps_the_damaged_bytes_and_a_retry_finishes() {
    let reference = TempDir::new("repair-ref");
    let paths = damaged_archive(reference.path());
    let damaged = std::fs::read(&paths.archive).unwrap();
    let report = repair(&paths, &options(Faults::none())).unwrap();
    assert!(report.needed && report.lost_anything(), "{report:?}");
    assert_eq!(
        report.lost_entries.len(),
        4,
        "the damaged member's four messages are named: {report:?}"
    );
    let repaired_state = kept(&paths);
    let aside = report.kept_aside.clone().unwrap();
    assert_eq!(std::fs::read(&aside).unwrap(), damaged);
    // The repaired archive opens, verifies, and lists what was lost for the next backup.
    let archive = mailpack::store::Archive::open(&paths, &mut Vec::new()).unwrap();
    assert_eq!(archive.repair_losses().unwrap().unwrap().len(), 4);
    assert!(mailpack::store::verify(&paths).unwrap().problems.is_empty());

    let mut failures = 0;
    for n in 1.. {
        let work = TempDir::new("repair-fault");
        let paths = damaged_archive(work.path());
        // Each archive has its own random archive-id, so its own bytes.
        let damaged = std::fs::read(&paths.archive).unwrap();
        let faults = Faults::fail_nth(n, FaultOn::Any);
        let result = repair(&paths, &options(faults.clone()));
        if faults.seen() < n {
            result.unwrap();
            break;
        }
        // A fault writing the index after the copy took the archive's name is reported, not
        // an error: the repair is done and the next open rebuilds the index.
        let reported = match &result {
            Err(_) => true,
            Ok(r) => r.index_failure.is_some() && r.notices.iter().any(|n| n.contains("index")),
        };
        assert!(reported, "fault {n} went unnoticed: {result:?}");
        failures += 1;
        let now = files(work.path());
        let was_repaired = now["u.tar.gz"] != damaged;
        if was_repaired {
            assert_eq!(
                kept(&paths),
                repaired_state,
                "fault {n}: the archive's name holds neither the damaged nor the repaired archive"
            );
        }
        assert!(
            now.iter()
                .any(|(name, bytes)| name.starts_with("u.tar.gz") && *bytes == damaged),
            "fault {n}: the damaged bytes lost their every name: {:?}",
            now.keys()
        );
        // The next repair (or, when the copy is already in place, nothing) finishes the job.
        let again = repair(&paths, &options(Faults::none())).unwrap();
        assert_eq!(again.needed, !was_repaired, "fault {n}: {again:?}");
        assert_eq!(
            kept(&paths),
            repaired_state,
            "fault {n}: the retry ({again:?})"
        );
        let problems = mailpack::store::verify(&paths).unwrap().problems;
        assert!(problems.is_empty(), "fault {n}: {problems:?}");
        assert!(
            files(work.path())
                .iter()
                .any(|(name, bytes)| name.contains(".damaged-") && *bytes == damaged),
            "fault {n}: no kept copy of the damaged archive after the retry"
        );
    }
    assert!(failures > 5, "only {failures} faults were injected");
}
