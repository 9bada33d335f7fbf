//! Issue 13's promise end to end with a spool: a byte flipped anywhere in the last two runs of a
//! backup archive is found by `verify`, `repair` keeps every other entry and the damaged bytes,
//! and the next backup of the same spool stores again what was lost, saying so.

use std::collections::BTreeMap;
use std::path::Path;

use mailpack::archive::{EntryKind, MemberReader};
use mailpack::store::{Archive, ArchivePaths};

use crate::util::{run, stderr, stdout, TempDir};

/// name -> (kind, symlink target, SHA-1) of every live entry.
type State = BTreeMap<String, (EntryKind, String, String)>;

fn state(dir: &Path) -> State {
    let paths = ArchivePaths::for_user(dir, "alice").unwrap();
    let archive = Archive::open(&paths, &mut Vec::new()).unwrap();
    archive
        .state_at(None)
        .into_iter()
        .map(|(_, e)| {
            (
                e.name.clone(),
                (e.kind, e.target.clone(), e.sha1.to_string()),
            )
        })
        .collect()
}

fn backup(config: &Path, dir: &Path) -> std::process::Output {
    run(&[
        "backup",
        "--config",
        config.to_str().unwrap(),
        "--archive-dir",
        dir.to_str().unwrap(),
        "--user",
        "alice",
        "--json",
    ])
}

/// (offset, end) of every gzip member of the archive.
fn members(archive: &Path) -> Vec<(u64, u64)> {
    let mut reader = MemberReader::new(std::fs::File::open(archive).unwrap(), 0).unwrap();
    let mut raw = Vec::new();
    let mut out = Vec::new();
    while let Some(m) = reader.next_member(&mut raw).unwrap() {
        out.push((m.offset, m.end));
    }
    out
}

fn json_lines(o: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn after_a_repair_the_next_backup_of_the_same_spool_heals_every_lost_entry() {
    let work = TempDir::new("trust-heal");
    let config = crate::agent::fixture_spool(work.path());
    let pristine = work.path().join("pristine");
    // Run 1 stores everything; run 2 the per-user files whose stat changed.
    let o = backup(&config, &pristine);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let spool = config.parent().unwrap().parent().unwrap();
    let user_dir = spool.join("conf/user/uuid/h/f/hf5h9jgv928xzgkhccsytw1m");
    for file in [
        user_dir.join("sub.db"),
        spool.join("conf/quota/a/user.alice"),
    ] {
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30))
            .unwrap();
    }
    let o = backup(&config, &pristine);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let paths = ArchivePaths::for_user(&pristine, "alice").unwrap();
    let archive = Archive::open(&paths, &mut Vec::new()).unwrap();
    assert_eq!(
        archive.runs().len(),
        2,
        "the spool change made no second run"
    );
    drop(archive);
    let want = state(&pristine);
    let original = std::fs::read(&paths.archive).unwrap();
    let index = std::fs::read(&paths.index).unwrap();

    let all = members(&paths.archive);
    assert!(all.len() >= 4, "{all:?}");
    let mut cases = 0;
    let mut healed_total = 0;
    for (n, &(start, end)) in all.iter().enumerate() {
        // The gzip magic, the integrity field, the deflate data, the CRC trailer.
        for at in [start + 1, start + 18, (start + end) / 2, end - 6] {
            for with_index in [true, false] {
                cases += 1;
                let what = format!("member {n} ({start}..{end}), byte {at}, index {with_index}");
                let dir = work.path().join(format!("case-{cases}"));
                std::fs::create_dir(&dir).unwrap();
                let case = ArchivePaths::for_user(&dir, "alice").unwrap();
                let mut damaged = original.clone();
                damaged[at as usize] ^= 0x40;
                std::fs::write(&case.archive, &damaged).unwrap();
                if with_index {
                    std::fs::write(&case.index, &index).unwrap();
                }

                let o = run(&["verify", case.archive.to_str().unwrap()]);
                assert_ne!(o.status.code(), Some(0), "{what}: verify: {}", stdout(&o));
                assert_eq!(std::fs::read(&case.archive).unwrap(), damaged, "{what}");

                let o = run(&[
                    "repair",
                    "--archive-dir",
                    dir.to_str().unwrap(),
                    "--user",
                    "alice",
                    "--json",
                ]);
                assert!(
                    matches!(o.status.code(), Some(0 | 1)),
                    "{what}: repair: {}{}",
                    stdout(&o),
                    stderr(&o)
                );
                let report = &json_lines(&o)[0]["data"];
                assert_eq!(report["needed"], true, "{what}: {report}");
                let aside = report["kept_aside"].as_str().unwrap();
                assert_eq!(
                    std::fs::read(aside).unwrap(),
                    damaged,
                    "{what}: the damaged bytes are kept"
                );
                let lost: Vec<String> = report["lost_entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["name"].as_str().unwrap().to_string())
                    .collect();
                // What the repair kept is the original minus what it reports lost (by name, or
                // by count when no index names what a member that does not decode held).
                let unnamed = report["lost_unnamed"].as_u64().unwrap();
                let kept = state(&dir);
                for (name, value) in &want {
                    if !lost.contains(name) && unnamed == 0 {
                        assert_eq!(kept.get(name), Some(value), "{what}: {name} not kept");
                    }
                }

                let o = backup(&config, &dir);
                assert_eq!(o.status.code(), Some(0), "{what}: backup: {}", stderr(&o));
                let user = json_lines(&o)
                    .into_iter()
                    .find(|l| l["type"] == "user")
                    .unwrap();
                let healed = user["data"]["healed"].as_u64().unwrap();
                let mut now = state(&dir);
                now.retain(|name, _| !name.starts_with("repairs/"));
                assert_eq!(now, want, "{what}: the backup did not heal (lost {lost:?})");
                let must_heal = lost
                    .iter()
                    .filter(|name| name.starts_with("files/") && want.contains_key(*name))
                    .count() as u64;
                assert!(
                    healed >= must_heal,
                    "{what}: healed {healed}, lost {lost:?}: {user}"
                );
                healed_total += healed;
                let o = run(&["verify", case.archive.to_str().unwrap()]);
                assert_eq!(o.status.code(), Some(0), "{what}: {}", stdout(&o));
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
    assert!(healed_total > 0, "no case lost and healed anything");
}
