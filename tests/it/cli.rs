//! The `mailpack` binary: commands, output, exit codes (0 ok, 1 problems, 2 fatal or usage).

use std::path::Path;

use mailpack::io::Faults;
use mailpack::store::{ArchivePaths, WriterLock, WriterWait};
use mailpack::Guid;

use crate::util::{run, stderr, stdout, Rng, TempDir};

fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn put_ls_cat_verify_reindex() {
    let dir = TempDir::new("cli");
    let src = TempDir::new("cli-src");
    let d = dir.path().to_str().unwrap();
    let mut rng = Rng::new(21);
    let a = rng.mail_text(4000);
    let b = rng.noise(1_200_000);
    let fa = write(src.path(), "a.eml", &a);
    let fb = write(src.path(), "b.eml", &b);
    let fdup = write(src.path(), "a-copy.eml", &a);

    let o = run(&[
        "put",
        "--archive-dir",
        d,
        "--user",
        "jane@example.com",
        &fa,
        &fb,
        &fdup,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("run 1 committed: 2 entries added, 1 already stored"),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "put",
        "--archive-dir",
        d,
        "--user",
        "jane@example.com",
        "--name",
        "meta/subscriptions",
        &fa,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let o = run(&[
        "ls",
        "--archive-dir",
        d,
        "--user",
        "jane@example.com",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|v| v["data"]["name"].as_str().unwrap())
        .collect();
    let (ga, gb) = (Guid::of(&a), Guid::of(&b));
    let mut want = vec![
        format!("files/{ga}"),
        format!("files/{gb}"),
        "meta/subscriptions".to_string(),
    ];
    want.sort();
    assert_eq!(names, want);
    assert!(lines.iter().all(|v| v["type"] == "entry"));
    let meta = lines
        .iter()
        .find(|v| v["data"]["name"] == "meta/subscriptions")
        .unwrap();
    assert_eq!(meta["data"]["run"], 2);
    assert!(meta["data"]["source"]["ino"].as_u64().unwrap() > 0);

    let o = run(&[
        "ls",
        "--all",
        "--archive-dir",
        d,
        "--user",
        "jane@example.com",
    ]);
    assert!(
        stdout(&o).lines().filter(|l| l.starts_with("run ")).count() == 2,
        "{}",
        stdout(&o)
    );

    // cat by SHA-1, by name, and through the archive path.
    let archive = ArchivePaths::for_user(dir.path(), "jane@example.com")
        .unwrap()
        .archive;
    let o = run(&[
        "cat",
        "--archive-dir",
        d,
        "--user",
        "jane@example.com",
        &gb.to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout == b);
    let o = run(&["cat", archive.to_str().unwrap(), "meta/subscriptions"]);
    assert!(o.stdout == a);
    let o = run(&[
        "cat",
        archive.to_str().unwrap(),
        "files/0000000000000000000000000000000000000000",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    let o = run(&["verify", "--archive-dir", d]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 runs, 3 entries"), "{}", stdout(&o));

    // One flipped byte: exit 1, and the report names the offset and the entry.
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x20;
    std::fs::write(&archive, &bytes).unwrap();
    let o = run(&["verify", archive.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    let problems = report["data"]["problems"].as_array().unwrap();
    assert!(!problems.is_empty());
    // The first problem is the member holding the flipped byte, named by its entry; a
    // multi-member entry may add its continuation members after it.
    assert!(
        problems[0]["offset"].as_u64().unwrap() <= at as u64,
        "{problems:?}"
    );
    assert!(
        problems[0]["entry"]
            .as_str()
            .is_some_and(|e| e.starts_with("files/")),
        "{problems:?}"
    );
    bytes[at] ^= 0x20;
    std::fs::write(&archive, &bytes).unwrap();

    // reindex by hand, from the archive alone.
    let o = run(&["reindex", "--archive-dir", d, "--user", "jane@example.com"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("2 runs, 3 entries indexed"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_busy_archive_is_reported_at_once_and_usage_errors_exit_2() {
    let dir = TempDir::new("busy");
    let src = TempDir::new("busy-src");
    let d = dir.path().to_str().unwrap();
    let f = write(src.path(), "m", b"message");
    let paths = ArchivePaths::for_user(dir.path(), "bob").unwrap();
    let lock = WriterLock::acquire(&paths.lock, WriterWait::FailIfBusy, &Faults::none()).unwrap();
    let o = run(&["put", "--archive-dir", d, "--user", "bob", &f]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("locked by another writer"),
        "{}",
        stderr(&o)
    );
    drop(lock);
    let o = run(&["put", "--archive-dir", d, "--user", "bob", &f]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    for args in [
        &["ls"][..],
        &["ls", "--archive-dir", d][..],
        &["frobnicate"][..],
        &["cat"][..],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let o = run(&["ls", "--archive-dir", d, "--user", "nobody"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
}

#[test]
fn archive_dir_comes_from_the_environment() {
    let dir = TempDir::new("env");
    let src = TempDir::new("env-src");
    let f = write(src.path(), "m", b"hello");
    let o = crate::util::bin()
        .env("MAILPACK_ARCHIVE_DIR", dir.path())
        .args(["put", "--user", "carol", &f])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dir.path().join("carol.tar.gz").exists());
}
