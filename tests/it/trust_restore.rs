//! Issue 13, the restore side: sizes from a hostile index are bounded and reported with the
//! archive and member offset, never an abort; a restore reads one archive generation even when
//! a compaction renames a new one over it; exports never write through a link planted at a
//! predictable name; no two exported mailboxes share a place; and an entry that fails its checks
//! is reported as lost while the rest is restored.
//!
//! Archives come from real backups of the committed Cyrus fixture spool; hostile variants are
//! made by rewriting fields of the real sidecar index (formats/archive.md section 5) with the
//! block CRC recomputed, or by committing extra links through the store's own writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mailpack::commands::restore::{as_of, restore, restore_from, RestoreOptions, RestoreTarget};
use mailpack::spool::name::MboxName;
use mailpack::store::{Archive, ArchivePaths, StoreWriter, WriterOptions};

use crate::backup::run_backup;
use crate::util::{run, stderr, stdout, TempDir};

/// A backup of alice from a copy of the fixture spool: (work dir, archive dir, paths).
fn backed_up(tag: &str) -> (TempDir, PathBuf, ArchivePaths) {
    let work = TempDir::new(tag);
    let config = crate::agent::fixture_spool(work.path());
    let archives = work.path().join("archives");
    run_backup(&config, &archives, &["alice"]);
    let paths = ArchivePaths::for_user(&archives, "alice").unwrap();
    (work, archives, paths)
}

fn options(dir: &Path, target: RestoreTarget) -> RestoreOptions {
    RestoreOptions {
        archive_dir: dir.to_path_buf(),
        shared: false,
        user: "alice".into(),
        mailboxes: Vec::new(),
        at: None,
        at_run: None,
        sha1: None,
        uid: None,
        expunged_between: None,
        target,
        dry_run: false,
        progress: None,
    }
}

/// What a whole-user export writes, per mailbox (internal name): (uid, SHA-1) of every message
/// not expunged. Deleted mailboxes and `#sieve` are not exported.
fn exported(paths: &ArchivePaths) -> BTreeMap<String, Vec<(u32, String)>> {
    let now = as_of(paths, None, &mut Vec::new()).unwrap();
    now.mailboxes
        .into_iter()
        .filter(|m| !m.name.starts_with("DELETED.") && !m.name.ends_with(".#sieve"))
        .map(|m| {
            let msgs = m
                .messages
                .iter()
                .filter(|x| !x.expunged)
                .map(|x| (x.uid, x.sha1.clone()))
                .collect();
            (m.name, msgs)
        })
        .collect()
}

/// Where one entry's fields sit in the sidecar index, and the block holding it.
struct IndexField {
    body: std::ops::Range<usize>,
    member: u64,
    data_at_at: usize,
    size_at: usize,
    sha1_at: usize,
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

/// Finds the last record of `name` in the index bytes (formats/archive.md section 5).
fn find_in_index(idx: &[u8], name: &str) -> IndexField {
    let mut found = None;
    let mut pos = 32;
    while pos + 4 <= idx.len() {
        let body = pos + 4..pos + 4 + u32_at(idx, pos);
        let mut p = body.start + 48;
        let count = u32_at(idx, p);
        p += 4;
        for _ in 0..count {
            p += 1; // kind
            let name_len = u16_at(idx, p);
            let this = &idx[p + 2..p + 2 + name_len];
            p += 2 + name_len;
            p += 2 + u16_at(idx, p); // target
            let member = u64::from_le_bytes(idx[p..p + 8].try_into().unwrap());
            let field = IndexField {
                body: body.clone(),
                member,
                data_at_at: p + 12,
                size_at: p + 20,
                sha1_at: p + 28,
            };
            p += 8 + 4 + 8 + 8 + 20;
            let has_stat = idx[p];
            p += 1 + if has_stat == 1 { 40 } else { 0 };
            if this == name.as_bytes() {
                found = Some(field);
            }
        }
        assert_eq!(p, body.end, "index block parsed to its end");
        pos = body.end + 4;
    }
    found.unwrap_or_else(|| panic!("{name} not in the index"))
}

/// Rewrites fields of `name`'s record in the index and reseals its block's CRC, so the index
/// stays valid and only says something the archive does not back. Returns the member offset.
fn tamper_index(
    paths: &ArchivePaths,
    name: &str,
    edit: impl FnOnce(&mut [u8], &IndexField),
) -> u64 {
    let mut idx = std::fs::read(&paths.index).unwrap();
    let f = find_in_index(&idx, name);
    edit(&mut idx, &f);
    let crc = crc32fast::hash(&idx[f.body.clone()]);
    idx[f.body.end..f.body.end + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&paths.index, &idx).unwrap();
    f.member
}

fn restore_cli(archives: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "restore",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// A crash (abort 134, panic 101, a signal) is never an answer to bad input.
fn assert_no_crash(o: &std::process::Output) {
    assert!(
        matches!(o.status.code(), Some(0..=2)),
        "status {:?}\n{}",
        o.status,
        stderr(o)
    );
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn lost_entries(report: &serde_json::Value) -> Vec<(String, String, Option<u64>)> {
    report["data"]["lost"]
        .as_array()
        .unwrap_or_else(|| panic!("no lost list in {report}"))
        .iter()
        .map(|l| {
            (
                l["entry"].as_str().unwrap().to_string(),
                l["archive"].as_str().unwrap().to_string(),
                l["offset"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn a_size_from_a_hostile_index_is_refused_with_the_archive_and_member_never_allocated() {
    let (work, archives, paths) = backed_up("trust-size");
    let expected = exported(&paths);
    let inbox = &expected["user.alice"];
    let (huge, huge_sha1) = (format!("files/{}", inbox[0].1), inbox[0].1.clone());
    let far = format!("files/{}", inbox[1].1);
    let index_entry = {
        let a = Archive::open(&paths, &mut Vec::new()).unwrap();
        let link = a
            .latest("imap/user/alice/Archive")
            .unwrap()
            .1
            .target
            .clone();
        format!("{link}/cyrus.index")
    };
    let huge_member = tamper_index(&paths, &huge, |idx, f| {
        idx[f.size_at..f.size_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes())
    });
    let far_member = tamper_index(&paths, &far, |idx, f| {
        idx[f.data_at_at..f.data_at_at + 8].copy_from_slice(&(u64::MAX - 7).to_le_bytes())
    });
    let index_member = tamper_index(&paths, &index_entry, |idx, f| {
        idx[f.size_at..f.size_at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes())
    });

    // The library's entry reader refuses the size before reading or reserving anything.
    let archive = Archive::open(&paths, &mut Vec::new()).unwrap();
    let (_, e) = archive.latest(&huge).unwrap();
    assert_eq!(
        e.size,
        1 << 40,
        "the tampered index is what the store serves"
    );
    match mailpack::restore::read_all(&archive, e) {
        Err(mailpack::Error::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset), (paths.archive.clone(), huge_member))
        }
        other => panic!("{:?}", other.map(|b| b.len())),
    }
    drop(archive);

    // A whole-user export goes on without them: the two messages and the Archive mailbox,
    // whose cyrus.index cannot be read, are reported with file and member; the rest comes out.
    let out = work.path().join("eml");
    let o = restore_cli(&archives, &["--eml", out.to_str().unwrap(), "--json"]);
    assert_no_crash(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let report = json(&o);
    let lost = lost_entries(&report);
    let archive_path = paths.archive.display().to_string();
    for (name, member) in [
        (&huge, huge_member),
        (&far, far_member),
        (&index_entry, index_member),
    ] {
        assert!(
            lost.contains(&(name.clone(), archive_path.clone(), Some(member))),
            "{name} at {member} not in {lost:?}"
        );
    }
    // Every copy of the two messages is lost, in whatever mailbox lists them.
    let written: usize = expected
        .iter()
        .filter(|(name, _)| *name != "user.alice.Archive")
        .flat_map(|(_, msgs)| msgs)
        .filter(|(_, sha1)| *sha1 != inbox[0].1 && *sha1 != inbox[1].1)
        .count();
    assert_eq!(
        report["data"]["messages_written"].as_u64().unwrap() as usize,
        written,
        "{report}"
    );
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{archive_path} at byte {huge_member}")),
        "{err}"
    );

    // One message by SHA-1 is the whole restore: it stops, naming file and member, and writes
    // nothing.
    let out = work.path().join("one");
    let o = restore_cli(
        &archives,
        &["--sha1", &huge_sha1, "--eml", out.to_str().unwrap()],
    );
    assert_no_crash(&o);
    assert!(matches!(o.status.code(), Some(1 | 2)), "{}", stderr(&o));
    assert!(!out.exists());
    let err = stderr(&o);
    assert!(
        err.contains(&archive_path) && err.contains(&format!("byte {huge_member}")),
        "{err}"
    );
}

#[test]
fn a_restore_reads_the_generation_it_opened_while_a_compaction_renames_a_new_one_over_it() {
    let work = TempDir::new("trust-race");
    let config = crate::agent::fixture_spool(work.path());
    let archives = work.path().join("archives");
    // Files no mailbox lists, stored first: dead to the compactor, so every later offset moves.
    std::fs::create_dir(&archives).unwrap();
    let junk = work.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    let mut rng = crate::util::Rng::new(13);
    for i in 0..3 {
        std::fs::write(junk.join(format!("{i}")), rng.noise(400_000)).unwrap();
    }
    let o = run(&[
        "put",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
        junk.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    run_backup(&config, &archives, &["alice"]);
    let paths = ArchivePaths::for_user(&archives, "alice").unwrap();

    let fresh = work.path().join("fresh");
    let before = restore(&options(&archives, RestoreTarget::Eml(fresh.clone()))).unwrap();
    assert!(
        before.bad.is_empty() && before.lost.is_empty(),
        "{before:?}"
    );

    let archive = Archive::open(&paths, &mut Vec::new()).unwrap();
    let len_before = std::fs::metadata(&paths.archive).unwrap().len();
    let o = run(&[
        "compact",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
        "--force",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let len_after = std::fs::metadata(&paths.archive).unwrap().len();
    assert!(
        len_after + 1_000_000 < len_before,
        "compaction dropped the junk: {len_before} -> {len_after}"
    );

    let raced = work.path().join("raced");
    let after = restore_from(
        &archive,
        &options(&archives, RestoreTarget::Eml(raced.clone())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(after.bad.is_empty() && after.lost.is_empty(), "{after:?}");
    assert_eq!(after.messages_written, before.messages_written);
    assert_eq!(tree(&raced), tree(&fresh));

    // The single-message path reads through the same open generation.
    let one = work.path().join("one");
    let sha1 = exported(&paths)["user.alice"][0].1.clone();
    let mut o = options(&archives, RestoreTarget::Eml(one.clone()));
    o.sha1 = Some(sha1.parse().unwrap());
    let r = restore_from(&archive, &o).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.messages_written, 1);
}

/// Every file under `root` by relative path, with its bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn an_export_never_writes_through_a_link_planted_at_the_name_it_will_use() {
    let (work, archives, _paths) = backed_up("trust-links");
    for (format, flag) in [("eml", "--eml"), ("maildir", "--maildir")] {
        // Where this export puts its files, from a clean run.
        let clean = work.path().join(format!("{format}-clean"));
        let o = restore_cli(&archives, &[flag, clean.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let files = tree(&clean);
        let (name, bytes) = files
            .iter()
            .find(|(n, _)| n.ends_with(".eml") || n.contains("/cur/") || n.starts_with("cur/"))
            .unwrap();

        // A hard link to a file outside the target, at exactly that name.
        let target = work.path().join(format!("{format}-target"));
        let planted = target.join(name);
        std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
        let outside = work.path().join(format!("{format}-outside"));
        std::fs::write(&outside, b"precious, not part of any export\n").unwrap();
        std::fs::hard_link(&outside, &planted).unwrap();
        let o = restore_cli(&archives, &[flag, target.to_str().unwrap()]);
        assert_no_crash(&o);
        assert_eq!(
            std::fs::read(&outside).unwrap(),
            b"precious, not part of any export\n",
            "{format}: the file outside the target was written through"
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(&std::fs::read(&planted).unwrap(), bytes, "{format}: {name}");
        assert_eq!(tree(&target), files);

        // A symlink there is refused, never followed.
        let target = work.path().join(format!("{format}-symlinked"));
        let planted = target.join(name);
        std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
        let outside = work.path().join(format!("{format}-outside-2"));
        std::fs::write(&outside, b"also precious\n").unwrap();
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        let o = restore_cli(&archives, &[flag, target.to_str().unwrap()]);
        assert_no_crash(&o);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
        assert_eq!(std::fs::read(&outside).unwrap(), b"also precious\n");
    }
}

#[test]
fn no_two_exported_mailboxes_share_a_place() {
    let (work, archives, paths) = backed_up("trust-apart");
    // Folders whose names collide under a careless mapping: `INBOX` below the INBOX, `a.b`
    // beside `a` and `a/b`, and `9.eml` below `a` (a message file name of `a` in --eml).
    let folder_of = |a: &Archive, name: &str| a.latest(name).unwrap().1.target.clone();
    let links = {
        let a = Archive::open(&paths, &mut Vec::new()).unwrap();
        let archive = folder_of(&a, "imap/user/alice/Archive");
        let archive2023 = folder_of(&a, "imap/user/alice/Archive/2023");
        let shared = folder_of(&a, "imap/user/alice/Shared");
        vec![
            (vec!["INBOX"], archive.clone()),
            (vec!["a.b"], archive2023.clone()),
            (vec!["a"], shared.clone()),
            (vec!["a", "b"], archive2023),
            (vec!["a", "1.eml"], archive),
            (vec!["inbox"], shared),
        ]
    };
    let mut w = StoreWriter::open(&paths, &WriterOptions::default(), &mut Vec::new()).unwrap();
    for (levels, target) in &links {
        let mut parts = vec!["user".to_string(), "alice".to_string()];
        parts.extend(levels.iter().map(|l| l.to_string()));
        let name = mailpack::entries::imap_entry(&MboxName {
            domain: None,
            parts,
        });
        w.writer().append_symlink(&name, target, 0).unwrap();
    }
    w.commit(&mailpack::archive::RunSummary::default()).unwrap();
    drop(w);
    let expected = exported(&paths);
    let count = |name: &str| expected[name].len();
    let total: usize = expected.values().map(Vec::len).sum();
    assert!(count("user.alice.INBOX") > 0 && count("user.alice") > 0);

    // --eml: one directory per mailbox, the INBOX's files are the INBOX's.
    let eml = work.path().join("eml");
    let o = restore_cli(&archives, &["--eml", eml.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = json(&o);
    assert_eq!(
        (
            report["data"]["messages_written"].as_u64().unwrap() as usize,
            report["data"]["messages_already_there"].as_u64().unwrap()
        ),
        (total, 0),
        "{report}"
    );
    let files = tree(&eml);
    assert_eq!(files.len(), total, "{:?}", files.keys().collect::<Vec<_>>());
    let sha1_hex = |b: &[u8]| crate::cyrus::sha1_hex_of(b);
    let in_dir = |dir: &str| -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = files
            .iter()
            .filter_map(|(n, b)| {
                let (d, f) = n.rsplit_once('/')?;
                let uid = f.strip_suffix(".eml")?.parse().ok()?;
                (d == dir).then(|| (uid, sha1_hex(b)))
            })
            .collect();
        v.sort();
        v
    };
    let sorted = |name: &str| {
        let mut v = expected[name].clone();
        v.sort();
        v
    };
    for (dir, mailbox) in [
        ("INBOX", "user.alice"),
        ("%49NBOX", "user.alice.INBOX"),
        ("%69nbox", "user.alice.inbox"),
        ("a%2Eb", "user.alice.a^b"),
        ("a", "user.alice.a"),
        ("a/b", "user.alice.a.b"),
        ("a/1%2Eeml", "user.alice.a.1^eml"),
    ] {
        assert_eq!(in_dir(dir), sorted(mailbox), "{dir} holds {mailbox}");
    }

    // --maildir: the INBOX is the Maildir, every other mailbox a folder of its own.
    let maildir = work.path().join("maildir");
    let report = restore(&options(&archives, RestoreTarget::Maildir(maildir.clone()))).unwrap();
    assert!(
        report.refused.is_empty() && report.bad.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.messages_written as usize, total);
    let files = tree(&maildir);
    let in_cur = |folder: &str| {
        let prefix = if folder.is_empty() {
            "cur/".to_string()
        } else {
            format!("{folder}/cur/")
        };
        files
            .keys()
            .filter(|n| n.strip_prefix(&prefix).is_some_and(|f| !f.contains('/')))
            .count()
    };
    for (folder, mailbox) in [
        ("", "user.alice"),
        (".INBOX", "user.alice.INBOX"),
        (".inbox", "user.alice.inbox"),
        // Lowercase hex: the name Dovecot's listescape opens the folder by.
        (".a%2eb", "user.alice.a^b"),
        (".a", "user.alice.a"),
        (".a.b", "user.alice.a.b"),
        (".a.1%2eeml", "user.alice.a.1^eml"),
    ] {
        assert_eq!(in_cur(folder), count(mailbox), "{folder} holds {mailbox}");
    }

    // --mbox of several mailboxes: one file each.
    let mbox = work.path().join("mbox");
    let report = restore(&options(&archives, RestoreTarget::Mbox(mbox.clone()))).unwrap();
    assert!(
        report.refused.is_empty() && report.bad.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.messages_written as usize, total);
    let files = tree(&mbox);
    for (file, mailbox) in [
        ("INBOX.mbox", "user.alice"),
        ("%49NBOX.mbox", "user.alice.INBOX"),
        ("%69nbox.mbox", "user.alice.inbox"),
        ("a%2Eb.mbox", "user.alice.a^b"),
        ("a.mbox", "user.alice.a"),
        ("a/b.mbox", "user.alice.a.b"),
        ("a/1%2Eeml.mbox", "user.alice.a.1^eml"),
    ] {
        let froms = files[file]
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"From MAILER-DAEMON "))
            .count();
        assert_eq!(froms, count(mailbox), "{file} holds {mailbox}");
    }
}

#[test]
fn a_metadata_entry_that_fails_its_checks_is_reported_lost_and_the_rest_is_restored() {
    let (work, archives, paths) = backed_up("trust-lost");
    let expected = exported(&paths);
    let inbox_index = {
        let a = Archive::open(&paths, &mut Vec::new()).unwrap();
        format!(
            "{}/cyrus.index",
            a.latest("imap/user/alice").unwrap().1.target
        )
    };
    // The index now records another SHA-1 for the INBOX's cyrus.index than its bytes have.
    let member = tamper_index(&paths, &inbox_index, |idx, f| idx[f.sha1_at] ^= 0x01);

    let out = work.path().join("eml");
    let o = restore_cli(&archives, &["--eml", out.to_str().unwrap(), "--json"]);
    assert_no_crash(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let report = json(&o);
    assert_eq!(
        lost_entries(&report),
        vec![(
            inbox_index.clone(),
            paths.archive.display().to_string(),
            Some(member)
        )]
    );
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(
        report["data"]["messages_written"].as_u64().unwrap() as usize,
        total - expected["user.alice"].len(),
        "{report}"
    );
    assert!(!out.join("INBOX").exists());
    assert!(
        stderr(&o).contains(&format!("lost: {inbox_index} in ")),
        "{}",
        stderr(&o)
    );

    // `ls --at` lists every other mailbox and names the one it could not read (exit 1).
    let o = ls_at(&archives);
    assert_no_crash(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let listed = stdout(&o);
    for mailbox in expected.keys().filter(|m| *m != "user.alice") {
        assert!(
            listed.contains(&format!("{mailbox} uniqueid")),
            "{mailbox}: {listed}"
        );
    }
    assert!(!listed.contains("user.alice uniqueid"), "{listed}");
    assert!(
        stderr(&o).contains("user.alice: not listed: ") && stderr(&o).contains(&inbox_index),
        "{}",
        stderr(&o)
    );
}

/// `ls --at` of alice's archive as of now.
fn ls_at(archives: &Path) -> std::process::Output {
    run(&[
        "ls",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
        "--at",
        "2100-01-01",
    ])
}

#[test]
fn a_damaged_archive_restores_what_still_reads_and_reports_the_damage() {
    let work = TempDir::new("trust-degraded");
    let config = crate::agent::fixture_spool(work.path());
    let archives = work.path().join("archives");
    std::fs::create_dir(&archives).unwrap();
    // A file larger than a member, stored first: its members hold nothing else.
    let junk = work.path().join("junk");
    std::fs::write(&junk, crate::util::Rng::new(7).noise(1_500_000)).unwrap();
    let o = run(&[
        "put",
        "--archive-dir",
        archives.to_str().unwrap(),
        "--user",
        "alice",
        junk.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    run_backup(&config, &archives, &["alice"]);
    let paths = ArchivePaths::for_user(&archives, "alice").unwrap();
    let expected = exported(&paths);
    // One flipped byte inside the junk's first member, and no index to vouch for anything.
    let mut bytes = std::fs::read(&paths.archive).unwrap();
    bytes[4000] ^= 0x10;
    std::fs::write(&paths.archive, &bytes).unwrap();
    std::fs::remove_file(&paths.index).unwrap();

    let out = work.path().join("eml");
    let o = restore_cli(&archives, &["--eml", out.to_str().unwrap(), "--json"]);
    assert_no_crash(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let report = json(&o);
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(
        report["data"]["messages_written"].as_u64().unwrap() as usize,
        total,
        "{report}"
    );
    let damage = report["data"]["damage"].as_array().unwrap();
    assert!(!damage.is_empty(), "{report}");
    assert!(stderr(&o).contains("damaged: "), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&paths.archive).unwrap(),
        bytes,
        "a restore never changes the archive"
    );

    // `ls --at` on the damaged archive lists every mailbox (they all still read), says where
    // the damage is, exits 1, and changes nothing either.
    let o = ls_at(&archives);
    assert_no_crash(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let listed = stdout(&o);
    for mailbox in expected.keys() {
        assert!(
            listed.contains(&format!("{mailbox} uniqueid")),
            "{mailbox}: {listed}"
        );
    }
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&paths.archive).unwrap(), bytes);
}

/// Issue 14: a restore is planned, then the plan is executed; a dry run stops at the plan. For
/// the exports whose file names the plan knows in full, the dry run lists exactly what the real
/// run then writes, and it writes nothing.
#[test]
fn a_dry_run_lists_what_the_restore_then_writes_and_writes_nothing() {
    let (work, archives, _paths) = backed_up("trust-dry-run");
    for name in ["eml", "mbox"] {
        let dir = work.path().join(name);
        let target = |dir: PathBuf| match name {
            "eml" => RestoreTarget::Eml(dir),
            _ => RestoreTarget::Mbox(dir),
        };
        let dry = RestoreOptions {
            dry_run: true,
            ..options(&archives, target(dir.clone()))
        };
        let planned = restore(&dry).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!dir.exists(), "{name}: the dry run wrote");
        assert!(!planned.writes.is_empty(), "{name}: {planned:?}");
        let done = restore(&options(&archives, target(dir.clone())))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(done.bad.is_empty() && done.lost.is_empty(), "{done:?}");
        assert_eq!(planned.writes, done.writes, "{name}");
        assert_eq!(planned.mailboxes, done.mailboxes, "{name}");
        assert_eq!(planned.messages_written, 0, "{name}");
        assert!(done.messages_written > 0, "{name}: {done:?}");
    }
}
