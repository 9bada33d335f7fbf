//! Off-site copies (issue 16, formats/offsite.md) against a real Garage 2.5.0 on 127.0.0.1 and
//! real Cyrus servers: push, then read everything back from the bucket alone (verify, `ls --at`,
//! one message by `cat`, an exact `--to-cyrus` restore identical over IMAP); encryption; pushes
//! that upload only the growth and never touch older objects; pull byte for byte; compaction
//! generations kept for the grace period; a bucket that lies (tampered, deleted, replayed,
//! foreign objects); a push killed or failing at every upload; a cluster node down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use mailpack::commands::restore::restore_from;
use mailpack::io::{FaultOn, Faults};
use mailpack::offsite::{self, Bucket, BucketUrl, OffsiteKey, PushSettings, ReadOptions};
use mailpack::spool::Owner;
use mailpack::store::ArchivePaths;

use crate::cyrus::{CyrusOptions, CyrusServer};
use crate::restore::{backed_up_twice, full_facts};
use crate::support::garage::{GarageCluster, GarageServer};
use crate::support::moto::MotoServer;
use crate::util::{ok, stderr, stdout, TempDir};

/// Runs mailpack with the store's credentials and endpoint in its environment.
fn mp(env: &[(String, String)], args: &[&str]) -> Output {
    crate::util::bin()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args)
        .output()
        .expect("run mailpack")
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// key -> SHA-256 of every object under `prefix`.
fn objects(garage: &GarageServer, prefix: &str) -> BTreeMap<String, String> {
    garage
        .list(prefix)
        .into_iter()
        .map(|(k, _)| {
            let bytes = garage.get(&k);
            (k, sha256(&bytes))
        })
        .collect()
}

fn push(garage: &GarageServer, dir: &Path, prefix: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let url = garage.url(prefix);
    let o = mp(
        &garage.env(),
        &[
            &[
                "push",
                "--archive-dir",
                dir.to_str().unwrap(),
                "--to",
                &url,
                "--json",
            ][..],
            extra,
        ]
        .concat(),
    );
    ok(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn pushed_reports(lines: &[serde_json::Value]) -> BTreeMap<String, serde_json::Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "pushed")
        .map(|v| {
            (
                v["data"]["owner"].as_str().unwrap().to_string(),
                v["data"]["report"].clone(),
            )
        })
        .collect()
}

fn key_env(garage: &GarageServer, key: &Path) -> Vec<(String, String)> {
    let mut env = garage.env();
    env.push(("MAILPACK_OFFSITE_KEY".into(), key.display().to_string()));
    env
}

#[test]
fn a_pushed_user_reads_back_from_the_bucket_alone_and_restores_exactly_into_cyrus() {
    let garage = GarageServer::start_single();
    let (original, dir, first, second) = backed_up_twice("offsite-roundtrip");
    let local = ArchivePaths::for_user(dir.path(), "alice").unwrap();
    let archive_len = std::fs::metadata(&local.archive).unwrap().len();
    let first_run_time = {
        let a = mailpack::store::Archive::open(&local, &mut Vec::new()).unwrap();
        a.runs()[0].time
    };
    let ls_at_local = ok(&mp(
        &[],
        &[
            "ls",
            "--archive-dir",
            dir.path().to_str().unwrap(),
            "--user",
            "alice",
            "--at",
            &first_run_time.to_string(),
            "--json",
        ],
    ));
    let reports = pushed_reports(&push(&garage, dir.path(), "host1", &[]));
    assert_eq!(reports["alice"]["outcome"], "new-generation");
    assert_eq!(reports["alice"]["archive_bytes"], archive_len);

    // Everything below reads the bucket only: the local archives are gone.
    let key = dir.path().join("offsite.key");
    let kept_key = dir
        .path()
        .parent()
        .unwrap()
        .join(format!("{}-key", std::process::id()));
    std::fs::copy(&key, &kept_key).unwrap();
    let _cleanup = RemoveOnDrop(kept_key.clone());
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::remove_file(p).unwrap();
        }
    }
    let env = key_env(&garage, &kept_key);
    let url = garage.url("host1");
    let verified = ok(&mp(&env, &["verify", "--archive-dir", &url]));
    assert!(
        verified.contains("alice: push 1 of ") && verified.contains(": ok"),
        "{verified}"
    );
    let ls_at_remote = ok(&mp(
        &env,
        &[
            "ls",
            "--archive-dir",
            &url,
            "--user",
            "alice",
            "--at",
            &first_run_time.to_string(),
            "--json",
        ],
    ));
    assert_eq!(ls_at_remote, ls_at_local);

    // One message by SHA-1: its bytes, and only a small part of the archive fetched.
    let sha1 = first.facts.mailboxes["INBOX"].messages[0].4.clone();
    let o = mp(
        &env,
        &["cat", "--archive-dir", &url, "--user", "alice", &sha1],
    );
    let body = o.stdout.clone();
    ok(&o);
    assert_eq!(mailpack::guid::Guid::of(&body).to_string(), sha1);

    // Exactly into a fresh Cyrus from the bucket: identical over IMAP to the server.
    let fresh = CyrusServer::start(CyrusOptions::default());
    let o = mp(
        &env,
        &[
            "restore",
            "--archive-dir",
            &url,
            "--user",
            "alice",
            "--to-cyrus",
            "--config",
            fresh.config_path().to_str().unwrap(),
        ],
    );
    ok(&o);
    assert_eq!(full_facts(&fresh, "alice"), second);
    drop(original);

    // Without the off-site key nothing is read.
    let o = mp(
        &garage.env(),
        &["ls", "--archive-dir", &url, "--user", "alice"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("off-site key"), "{}", stderr(&o));
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A work area with one user's archive of `messages` random-bodied messages put into it.
fn archive_with(tag: &str, user: &str, messages: usize, seed: u64) -> (TempDir, PathBuf) {
    let work = TempDir::new(tag);
    let dir = work.path().join("archives");
    add_messages(&work, &dir, user, messages, seed);
    (work, dir)
}

fn add_messages(work: &TempDir, dir: &Path, user: &str, messages: usize, seed: u64) {
    let src = work.path().join(format!("src-{seed}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = crate::util::Rng::new(seed);
    for i in 0..messages {
        // Text that compresses like mail, not like noise.
        let words: Vec<String> = (0..2000 + (i * 37) % 3000)
            .map(|_| format!("w{}", rng.next() % 5000))
            .collect();
        std::fs::write(
            src.join(format!("m{i}")),
            format!("Subject: m{seed}.{i}\r\n\r\n{}\r\n", words.join(" ")),
        )
        .unwrap();
    }
    ok(&mp(
        &[],
        &[
            "put",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--user",
            user,
            src.to_str().unwrap(),
        ],
    ));
}

#[test]
fn a_second_push_uploads_only_the_growth_and_never_touches_the_first_pushs_objects() {
    let garage = GarageServer::start_single();
    let (work, dir) = archive_with("offsite-growth", "bob", 40, 1);
    push(&garage, &dir, "p", &[]);
    let before = objects(&garage, "p/");
    let archive = dir.join("bob.tar.gz");
    let len1 = std::fs::metadata(&archive).unwrap().len();

    // Nothing new: nothing sent, no request made.
    let lines = push(&garage, &dir, "p", &[]);
    assert_eq!(pushed_reports(&lines)["bob"]["outcome"], "unchanged");
    let summary = lines.iter().find(|v| v["type"] == "push-summary").unwrap();
    assert_eq!(summary["data"]["requests"], 0);
    assert_eq!(objects(&garage, "p/"), before);

    // A run without entries (a night with no change commits only its marker): nothing is sent
    // yet, no request made; the bucket's copy is still a prefix of the archive.
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    ok(&mp(
        &[],
        &[
            "put",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--user",
            "bob",
            empty.to_str().unwrap(),
        ],
    ));
    let lines = push(&garage, &dir, "p", &[]);
    assert_eq!(pushed_reports(&lines)["bob"]["outcome"], "unchanged");
    let summary = lines.iter().find(|v| v["type"] == "push-summary").unwrap();
    assert_eq!(summary["data"]["requests"], 0);
    assert_eq!(objects(&garage, "p/"), before);

    add_messages(&work, &dir, "bob", 3, 2);
    let len2 = std::fs::metadata(&archive).unwrap().len();
    // A dry run says what would go, and sends nothing.
    let dry = push(&garage, &dir, "p", &["--dry-run"]);
    assert_eq!(pushed_reports(&dry)["bob"]["outcome"], "uploaded");
    assert_eq!(pushed_reports(&dry)["bob"]["archive_bytes"], len2 - len1);
    assert_eq!(objects(&garage, "p/"), before);
    let lines = push(&garage, &dir, "p", &[]);
    let report = &pushed_reports(&lines)["bob"];
    assert_eq!(report["outcome"], "uploaded");
    assert_eq!(report["archive_bytes"], len2 - len1);
    let sent = lines.iter().find(|v| v["type"] == "push-summary").unwrap()["data"]["bytes_sent"]
        .as_u64()
        .unwrap();
    // The growth, its index block and a manifest; nothing of the first push again.
    assert!(
        sent < (len2 - len1) + 64 * 1024,
        "sent {sent} for {} of growth",
        len2 - len1
    );
    let after = objects(&garage, "p/");
    for (k, h) in &before {
        if k.contains("/m/") {
            continue; // the first manifest may go once two newer exist; it is not data
        }
        assert_eq!(after.get(k), Some(h), "{k} changed or vanished");
    }
    assert_eq!(after.len(), before.len() + 3, "{after:#?}");

    // Pull: byte for byte what was pushed, archive and index.
    let pulled = work.path().join("pulled");
    let key = dir.join("offsite.key");
    ok(&mp(
        &key_env(&garage, &key),
        &[
            "pull",
            "--from",
            &garage.url("p"),
            "--archive-dir",
            pulled.to_str().unwrap(),
        ],
    ));
    for f in ["bob.tar.gz", "bob.idx"] {
        assert_eq!(
            std::fs::read(pulled.join(f)).unwrap(),
            std::fs::read(dir.join(f)).unwrap(),
            "{f}"
        );
    }
    // status of the bucket: each owner's last push, stale only by the clock.
    let status = |extra: &[&str]| {
        mp(
            &key_env(&garage, &key),
            &[
                &["status", "--archive-dir", &garage.url("p"), "--json"][..],
                extra,
            ]
            .concat(),
        )
    };
    let o = status(&[]);
    let line: serde_json::Value = serde_json::from_str(ok(&o).lines().next().unwrap()).unwrap();
    assert_eq!(line["data"]["owner"], "bob");
    assert_eq!(line["data"]["seq"], 2);
    assert_eq!(line["data"]["archive_bytes"], len2);
    assert_eq!(line["data"]["stale"], false);
    let later = (mailpack::time::now() + 3 * 86_400).to_string();
    let o = status(&["--now", &later]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));

    // And a second pull refuses to overwrite.
    let o = mp(
        &key_env(&garage, &key),
        &[
            "pull",
            "--from",
            &garage.url("p"),
            "--archive-dir",
            pulled.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("never overwrites"), "{}", stderr(&o));
}

#[test]
fn an_encrypted_push_holds_no_plaintext_and_reads_only_with_the_identity() {
    let garage = GarageServer::start_single();
    let (work, dir) = archive_with("offsite-age", "carol", 20, 3);
    let id = work.path().join("id.txt");
    let o = std::process::Command::new("age-keygen")
        .args(["-o", id.to_str().unwrap()])
        .output()
        .expect("age-keygen (scripts/setup-garage installs age)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recipient = String::from_utf8(
        std::process::Command::new("age-keygen")
            .args(["-y", id.to_str().unwrap()])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    push(&garage, &dir, "enc", &["--recipient", recipient.trim()]);

    let body = std::fs::read(work.path().join("src-3/m5")).unwrap();
    let needle = &body[body.len() / 2..body.len() / 2 + 48];
    let listed = garage.list("enc/");
    assert!(listed.len() >= 3, "{listed:?}");
    for (k, _) in &listed {
        let bytes = garage.get(k);
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{k} holds plaintext"
        );
        assert!(
            !bytes.starts_with(&[0x1f, 0x8b]),
            "{k} is a plain gzip member"
        );
        if k.contains("/m/") {
            assert!(bytes.starts_with(b"MPOFFM01"), "{k}");
        } else {
            assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{k}");
        }
    }

    // Last resort without mailpack: age decrypts a data object into a piece GNU tar lists.
    let data_key = listed
        .iter()
        .find(|(k, _)| k.contains("/d/"))
        .unwrap()
        .0
        .clone();
    let sealed = work.path().join("data.age");
    std::fs::write(&sealed, garage.get(&data_key)).unwrap();
    let plain = std::process::Command::new("age")
        .args(["-d", "-i", id.to_str().unwrap(), sealed.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(plain.status.success());
    assert_eq!(
        plain.stdout,
        std::fs::read(dir.join("carol.tar.gz")).unwrap()
    );

    let env = key_env(&garage, &dir.join("offsite.key"));
    let url = garage.url("enc");
    let sha1 = mailpack::guid::Guid::of(&body).to_string();
    let o = mp(
        &env,
        &["cat", "--archive-dir", &url, "--user", "carol", &sha1],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--identity"), "{}", stderr(&o));
    let other = work.path().join("other.txt");
    std::process::Command::new("age-keygen")
        .args(["-o", other.to_str().unwrap()])
        .output()
        .unwrap();
    let o = mp(
        &env,
        &[
            "cat",
            "--archive-dir",
            &url,
            "--user",
            "carol",
            "--identity",
            other.to_str().unwrap(),
            &sha1,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = mp(
        &env,
        &[
            "cat",
            "--archive-dir",
            &url,
            "--user",
            "carol",
            "--identity",
            id.to_str().unwrap(),
            &sha1,
        ],
    );
    assert_eq!(o.stdout, body, "{}", stderr(&o));
    let o = mp(
        &env,
        &[
            "verify",
            "--archive-dir",
            &url,
            "--identity",
            id.to_str().unwrap(),
        ],
    );
    assert!(
        ok(&o).contains("carol: push 1 of ") && stdout(&o).contains("20 entries"),
        "{}",
        stdout(&o)
    );
}

/// Library-level access to the fixture's bucket, for what a test injects (the clock, faults).
fn bucket(garage: &GarageServer, prefix: &str) -> Arc<Bucket> {
    let url = BucketUrl::parse(&garage.url(prefix)).unwrap();
    Arc::new(Bucket::open_with(&url, &garage.env()).unwrap())
}

fn settings<'a>(key: &'a OffsiteKey, dir: &Path, now: i64) -> PushSettings<'a> {
    PushSettings {
        key,
        recipients: None,
        keep_generation_days: 30,
        lock_days: None,
        dry_run: false,
        state_dir: dir.join("offsite-state").join("test"),
        now,
    }
}

#[test]
fn a_compacted_archive_is_pushed_as_a_new_generation_and_the_old_one_goes_after_the_grace_period() {
    let garage = GarageServer::start_single();
    let (work, dir) = archive_with("offsite-gen", "dave", 12, 4);
    let owner = Owner::User("dave".into());
    let paths = ArchivePaths::for_user(&dir, "dave").unwrap();
    let (key, _) = OffsiteKey::load_or_create(&dir.join("offsite.key")).unwrap();
    let b = bucket(&garage, "g");
    let now = mailpack::time::now();
    let first = offsite::push_owner(&b, &owner, &paths, &settings(&key, &dir, now)).unwrap();
    assert_eq!(first.outcome, "new-generation");
    let old_objects = objects(&garage, "g/users/dave/d/");
    assert_eq!(old_objects.len(), 1);

    add_messages(&work, &dir, "dave", 2, 5);
    ok(&mp(
        &[],
        &[
            "compact",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--user",
            "dave",
            "--force",
            "--keep-days",
            "0",
        ],
    ));
    let second = offsite::push_owner(&b, &owner, &paths, &settings(&key, &dir, now + 60)).unwrap();
    assert_eq!(second.outcome, "new-generation");
    assert_ne!(second.generation, first.generation);
    // The old generation is kept and still readable.
    for (k, h) in &old_objects {
        assert_eq!(&sha256(&garage.get(k)), h);
    }
    let read = |generation: Option<&str>| {
        let options = ReadOptions {
            key: &key,
            identities: None,
            generation,
        };
        offsite::open_archive(&b, &owner, &options, &mut Vec::new()).map(|r| r.archive.runs().len())
    };
    assert_eq!(read(Some(first.generation.as_str())).unwrap(), 1);
    assert!(read(None).unwrap() >= 1);

    // Within the grace period, another push deletes nothing; after it, the old objects go.
    add_messages(&work, &dir, "dave", 1, 6);
    let third =
        offsite::push_owner(&b, &owner, &paths, &settings(&key, &dir, now + 29 * 86_400)).unwrap();
    assert_eq!(third.outcome, "uploaded");
    assert_eq!(objects(&garage, "g/users/dave/d/").len(), 3);
    add_messages(&work, &dir, "dave", 1, 7);
    let fourth =
        offsite::push_owner(&b, &owner, &paths, &settings(&key, &dir, now + 31 * 86_400)).unwrap();
    assert!(fourth.deleted >= 2, "{fourth:?}");
    let left = objects(&garage, "g/users/dave/d/");
    for k in old_objects.keys() {
        assert!(!left.contains_key(k), "{k} outlived the grace period");
    }
    assert!(read(Some(first.generation.as_str())).is_err());
    // The current generation still reads whole.
    let verified = offsite::verify_owner(&b, &owner, &key, None).unwrap();
    assert!(verified.bad.is_empty(), "{:?}", verified.bad);
    assert!(verified.archive.unwrap().problems.is_empty());
}

#[test]
fn runs_without_entries_wait_for_the_weekly_heartbeat_or_for_mail() {
    let garage = GarageServer::start_single();
    let (work, dir) = archive_with("offsite-heartbeat", "hal", 3, 50);
    let owner = Owner::User("hal".into());
    let paths = ArchivePaths::for_user(&dir, "hal").unwrap();
    let (key, _) = OffsiteKey::load_or_create(&dir.join("offsite.key")).unwrap();
    let b = bucket(&garage, "h");
    let now = mailpack::time::now();
    offsite::push_owner(&b, &owner, &paths, &settings(&key, &dir, now)).unwrap();
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let night = |n: i64| {
        ok(&mp(
            &[],
            &[
                "put",
                "--archive-dir",
                dir.to_str().unwrap(),
                "--user",
                "hal",
                empty.to_str().unwrap(),
            ],
        ));
        offsite::push_owner(&b, &owner, &paths, &settings(&key, &dir, now + n * 86_400)).unwrap()
    };
    for n in 1..7 {
        assert_eq!(night(n).outcome, "unchanged", "night {n}");
    }
    assert_eq!(garage.list("h/users/hal/m/").len(), 1);
    // A week on, the heartbeat sends the empty runs.
    let pushed = night(7);
    assert_eq!(pushed.outcome, "uploaded");
    assert_eq!(pushed.seq, 2);
    // Mail goes at once.
    add_messages(&work, &dir, "hal", 1, 51);
    let pushed = offsite::push_owner(
        &b,
        &owner,
        &paths,
        &settings(&key, &dir, now + 7 * 86_400 + 60),
    )
    .unwrap();
    assert_eq!(pushed.outcome, "uploaded");
    // The bucket reads back the whole archive, byte for byte.
    let pulled = work.path().join("pulled");
    ok(&mp(
        &key_env(&garage, &dir.join("offsite.key")),
        &[
            "pull",
            "--from",
            &garage.url("h"),
            "--archive-dir",
            pulled.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read(pulled.join("hal.tar.gz")).unwrap(),
        std::fs::read(&paths.archive).unwrap()
    );
}

#[test]
fn a_bucket_that_lies_is_caught_and_each_bad_object_is_named() {
    let garage = GarageServer::start_single();
    let (work, dir) = archive_with("offsite-lies", "erin", 10, 8);
    push(&garage, &dir, "t", &[]);
    add_messages(&work, &dir, "erin", 2, 9);
    push(&garage, &dir, "t", &[]);
    let (_other_work, other) = archive_with("offsite-lies-other", "frank", 3, 10);
    std::fs::copy(dir.join("offsite.key"), other.join("offsite.key")).unwrap();
    push(&garage, &other, "t", &[]);
    let env = key_env(&garage, &dir.join("offsite.key"));
    let url = garage.url("t");
    let verify = |owner: &str| mp(&env, &["verify", "--archive-dir", &url, "--user", owner]);
    let o = verify("erin");
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    let data: Vec<String> = garage
        .list("t/users/erin/d/")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(data.len(), 2);
    let original = garage.get(&data[0]);

    // Tampered: one byte flipped.
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    garage.put(&data[0], &flipped);
    let o = verify("erin");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!("bad object s3://mailpack/{}", data[0])),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("SHA-256"), "{}", stdout(&o));
    // A reader of the bucket does not take wrong bytes for mail either: every message comes
    // out exactly, or not at all.
    let mut refused = 0;
    for i in 0..10 {
        let body = std::fs::read(work.path().join(format!("src-8/m{i}"))).unwrap();
        let sha1 = mailpack::guid::Guid::of(&body).to_string();
        let o = mp(
            &env,
            &["cat", "--archive-dir", &url, "--user", "erin", &sha1],
        );
        if o.status.code() == Some(0) {
            assert_eq!(o.stdout, body);
        } else {
            refused += 1;
        }
    }
    assert!(refused > 0, "the flipped byte reached no message");

    // Truncated, then replaced by another owner's object, then deleted.
    garage.put(&data[0], &original[..original.len() - 10]);
    assert_eq!(verify("erin").status.code(), Some(1));
    let franks = garage.list("t/users/frank/d/")[0].0.clone();
    garage.copy(&franks, &data[0]);
    let o = verify("erin");
    assert_eq!(o.status.code(), Some(1));
    garage.delete(&data[0]);
    let o = verify("erin");
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains(&data[0]), "{}", stdout(&o));
    garage.put(&data[0], &original);
    assert_eq!(verify("erin").status.code(), Some(0));

    // Replayed: the first manifest copied as a newer push, or moved into another owner.
    let manifests: Vec<String> = garage
        .list("t/users/erin/m/")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let replay = manifests[0].replace("/00000000000000000001-", "/00000000000000000009-");
    garage.copy(&manifests[0], &replay);
    let o = mp(&env, &["ls", "--archive-dir", &url, "--user", "erin"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("fails authentication"),
        "{}",
        stderr(&o)
    );
    garage.delete(&replay);
    let foreign = format!(
        "t/users/erin/m/00000000000000000009-{}",
        garage.list("t/users/frank/m/")[0]
            .0
            .rsplit('-')
            .next()
            .unwrap()
    );
    garage.copy(&garage.list("t/users/frank/m/")[0].0, &foreign);
    let o = mp(&env, &["ls", "--archive-dir", &url, "--user", "erin"]);
    assert_ne!(o.status.code(), Some(0));
    garage.delete(&foreign);
    // A manifest sealed with another key (someone else's push into the same prefix).
    let (_stranger_work, stranger) = archive_with("offsite-lies-stranger", "erin", 1, 11);
    let o = mp(
        &garage.env(),
        &[
            "push",
            "--archive-dir",
            stranger.to_str().unwrap(),
            "--to",
            &url,
        ],
    );
    assert_ne!(
        o.status.code(),
        Some(0),
        "a push under another key went through: {}",
        stdout(&o)
    );
    assert_eq!(
        mp(&env, &["ls", "--archive-dir", &url, "--user", "erin"])
            .status
            .code(),
        Some(0)
    );

    // Rolled back: the newest manifest deleted. Readers then read the older push; the pushing
    // host notices at its next push with something to send.
    add_messages(&work, &dir, "erin", 1, 12);
    let newest = garage.list("t/users/erin/m/").last().unwrap().0.clone();
    garage.delete(&newest);
    let o = mp(
        &garage.env(),
        &["push", "--archive-dir", dir.to_str().unwrap(), "--to", &url],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("rolled back"), "{}", stderr(&o));
}

#[test]
fn a_push_failing_at_any_upload_leaves_the_bucket_at_its_last_push_and_the_next_completes() {
    let garage = GarageServer::start_single();
    let (work, dir) = archive_with("offsite-faults", "gina", 8, 12);
    let owner = Owner::User("gina".into());
    let paths = ArchivePaths::for_user(&dir, "gina").unwrap();
    let (key, _) = OffsiteKey::load_or_create(&dir.join("offsite.key")).unwrap();
    let url = BucketUrl::parse(&garage.url("f")).unwrap();
    let now = mailpack::time::now();
    let clean = Bucket::open_with(&url, &garage.env()).unwrap();
    offsite::push_owner(&clean, &owner, &paths, &settings(&key, &dir, now)).unwrap();
    add_messages(&work, &dir, "gina", 2, 13);
    let runs_after = |b: &Arc<Bucket>| {
        let options = ReadOptions {
            key: &key,
            identities: None,
            generation: None,
        };
        offsite::open_archive(b, &owner, &options, &mut Vec::new())
            .unwrap()
            .archive
            .runs()
            .len()
    };
    let reader = Arc::new(Bucket::open_with(&url, &garage.env()).unwrap());
    // Each upload request in turn fails (the data object, the index object, the manifest, a
    // deletion): the bucket still reads as the first push, then a clean push completes.
    let mut n = 1;
    loop {
        let faulty = Bucket::open_with(&url, &garage.env())
            .unwrap()
            .with_faults(Faults::fail_nth(n, FaultOn::Write));
        let result = offsite::push_owner(&faulty, &owner, &paths, &settings(&key, &dir, now + 1));
        if result.is_ok() {
            break;
        }
        assert_eq!(runs_after(&reader), 1, "after a failure at upload {n}");
        n += 1;
        assert!(n < 20, "the push never got through");
    }
    assert!(n > 3, "only {n} upload steps were failed");
    assert_eq!(runs_after(&reader), 2);
    let verified = offsite::verify_owner(&reader, &owner, &key, None).unwrap();
    assert!(verified.bad.is_empty(), "{:?}", verified.bad);
}

#[test]
fn a_push_killed_at_random_points_is_completed_by_the_next() {
    let garage = GarageServer::start_single();
    let (work, dir) = archive_with("offsite-kill", "hank", 30, 14);
    for (i, user) in ["ivy", "jack", "kate"].iter().enumerate() {
        add_messages(&work, &dir, user, 30, 20 + i as u64);
    }
    let url = garage.url("k");
    let mut rng = crate::util::Rng::new(99);
    for round in 0..6 {
        if round > 0 {
            add_messages(&work, &dir, "hank", 2, 100 + round);
        }
        let mut child = crate::util::bin()
            .envs(garage.env().iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["push", "--archive-dir", dir.to_str().unwrap(), "--to", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5 + rng.next() % 300));
        let _ = child.kill();
        let _ = child.wait();
    }
    push(&garage, &dir, "k", &[]);
    let env = key_env(&garage, &dir.join("offsite.key"));
    ok(&mp(&env, &["verify", "--archive-dir", &url]));
    let pulled = work.path().join("pulled");
    ok(&mp(
        &env,
        &[
            "pull",
            "--from",
            &url,
            "--archive-dir",
            pulled.to_str().unwrap(),
        ],
    ));
    for user in ["hank", "ivy", "jack", "kate"] {
        let f = format!("{user}.tar.gz");
        assert_eq!(
            std::fs::read(pulled.join(&f)).unwrap(),
            std::fs::read(dir.join(&f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn lock_days_is_refused_clearly_where_the_store_cannot_keep_a_lock() {
    let garage = GarageServer::start_single();
    let (_work, dir) = archive_with("offsite-lock", "lena", 1, 15);
    let o = mp(
        &garage.env(),
        &[
            "push",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--to",
            &garage.url("l"),
            "--lock-days",
            "30",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--lock-days 30"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not keep object locks"),
        "{}",
        stderr(&o)
    );
    let left: Vec<_> = garage.list("l/");
    assert!(left.is_empty(), "a refused push left {left:?}");
}

/// Object lock where the store has it (moto's S3 server: Garage has no object lock).
#[test]
fn lock_days_locks_every_new_object_and_renews_the_locks_of_live_ones() {
    let moto = MotoServer::start(&[("locked", true), ("plain", false)]);
    let (work, dir) = archive_with("offsite-locked", "mia", 5, 40);
    let o = mp(
        &moto.env(),
        &[
            "push",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--to",
            "s3://plain/p",
            "--lock-days",
            "7",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not keep object locks"),
        "{}",
        stderr(&o)
    );

    let now = mailpack::time::now();
    let o = mp(
        &moto.env(),
        &[
            "push",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--to",
            "s3://locked/p",
            "--lock-days",
            "7",
        ],
    );
    ok(&o);
    let locks = moto.locks("locked");
    let ours: Vec<_> = locks
        .iter()
        .filter(|(k, _, _)| k.starts_with("p/users/"))
        .collect();
    assert_eq!(ours.len(), 3, "{locks:?}");
    for (key, mode, until) in &ours {
        assert_eq!(mode.as_deref(), Some("COMPLIANCE"), "{key}");
        let until = until.unwrap();
        assert!(
            (now + 7 * 86_400 - 60..now + 7 * 86_400 + 60).contains(&until),
            "{key}"
        );
    }
    let data = &ours.iter().find(|(k, _, _)| k.contains("/d/")).unwrap().0;
    assert!(
        !moto.delete_version("locked", data),
        "a locked object was deleted"
    );

    // Five days on, the next push renews the first objects' locks (a week from then).
    add_messages(&work, &dir, "mia", 1, 41);
    let url = BucketUrl::parse("s3://locked/p").unwrap();
    let b = Bucket::open_with(&url, &moto.env()).unwrap();
    let (key, _) = OffsiteKey::load_or_create(&dir.join("offsite.key")).unwrap();
    let later = now + 5 * 86_400;
    let mut s = settings(&key, &dir, later);
    s.lock_days = Some(7);
    s.state_dir = mailpack::offsite::state_dir(&dir, &url);
    offsite::push_owner(
        &b,
        &Owner::User("mia".into()),
        &ArchivePaths::for_user(&dir, "mia").unwrap(),
        &s,
    )
    .unwrap();
    let renewed = moto.locks("locked");
    let first_data = renewed.iter().find(|(k, _, _)| k == data).unwrap();
    assert_eq!(first_data.2, Some(later + 7 * 86_400), "{renewed:?}");
}

#[test]
fn a_cluster_node_stopped_during_a_push_then_the_retry_completes_and_reads_work_with_it_down() {
    let mut cluster = GarageCluster::start(3);
    let (work, dir) = archive_with("offsite-cluster", "mona", 60, 16);
    let users = ["ned", "olga", "pete", "quin", "rosa", "sam", "tina"];
    for (i, user) in users.iter().enumerate() {
        add_messages(&work, &dir, user, 60, 30 + i as u64);
    }
    let url = cluster.url("c");
    let env = cluster.env_of(0);
    let child = crate::util::bin()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args([
            "push",
            "--archive-dir",
            dir.to_str().unwrap(),
            "--to",
            &url,
            "--jobs",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The node goes down once the first owner's manifest is stored: mid-push, with the other
    // owners still to come.
    let started = std::time::Instant::now();
    while !cluster.list("c/").iter().any(|(k, _)| k.contains("/m/")) {
        assert!(
            started.elapsed().as_secs() < 60,
            "the push stored no manifest"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    cluster.stop_node(2);
    let first = child.wait_with_output().unwrap();
    // Completed (quorum 2 of 3 still writes) or failed cleanly with an error, never a panic.
    assert!(
        matches!(first.status.code(), Some(0) | Some(2)),
        "{}{}",
        stdout(&first),
        stderr(&first)
    );
    assert!(!stderr(&first).contains("panicked"), "{}", stderr(&first));
    let o = mp(
        &env,
        &["push", "--archive-dir", dir.to_str().unwrap(), "--to", &url],
    );
    ok(&o);
    // With the node still down, everything reads.
    let mut kenv = env.clone();
    kenv.push((
        "MAILPACK_OFFSITE_KEY".into(),
        dir.join("offsite.key").display().to_string(),
    ));
    ok(&mp(&kenv, &["verify", "--archive-dir", &url]));
    let pulled = work.path().join("pulled");
    ok(&mp(
        &kenv,
        &[
            "pull",
            "--from",
            &url,
            "--archive-dir",
            pulled.to_str().unwrap(),
        ],
    ));
    for user in std::iter::once("mona").chain(users) {
        let f = format!("{user}.tar.gz");
        assert_eq!(
            std::fs::read(pulled.join(&f)).unwrap(),
            std::fs::read(dir.join(&f)).unwrap()
        );
    }
    cluster.start_node(2);
}

#[test]
fn two_mail_hosts_back_up_and_push_at_once_into_one_bucket() {
    let garage = GarageServer::start_single();
    let hosts: Vec<CyrusServer> = (0..2)
        .map(|_| CyrusServer::start(CyrusOptions::default()))
        .collect();
    for (i, server) in hosts.iter().enumerate() {
        for user in ["alice", "bob"] {
            server.create_user(user);
            let mail: Vec<Vec<u8>> = (0..5)
                .map(|m| {
                    format!("Subject: host {i} {user} {m}\r\n\r\nbody {i} {m}\r\n").into_bytes()
                })
                .collect();
            server.deliver_many("x@example.org", &[user], &mail);
        }
    }
    let work = TempDir::new("offsite-two-hosts");
    let children: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, server)| {
            crate::util::bin()
                .envs(garage.env().iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .args([
                    "backup",
                    "--config",
                    server.config_path().to_str().unwrap(),
                    "--archive-dir",
                    work.path().join(format!("host{i}")).to_str().unwrap(),
                    "--push",
                    &garage.url(&format!("host{i}")),
                    "--json",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        let out = ok(&o);
        assert_eq!(out.matches("\"type\":\"pushed\"").count(), 3, "{out}");
    }
    for i in 0..2 {
        let dir = work.path().join(format!("host{i}"));
        let env = key_env(&garage, &dir.join("offsite.key"));
        let url = garage.url(&format!("host{i}"));
        let out = ok(&mp(&env, &["verify", "--archive-dir", &url]));
        assert!(
            out.contains("alice: push 1 of ") && out.contains("bob: push 1 of "),
            "{out}"
        );
        // Each host's own mail, read back from its prefix (LMTP adds trace headers in front).
        let listed = ok(&mp(
            &env,
            &["ls", "--archive-dir", &url, "--user", "alice", "--json"],
        ));
        let files: Vec<String> = listed
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| v["data"]["name"].as_str().map(str::to_string))
            .filter(|n| n.starts_with("files/"))
            .collect();
        assert_eq!(files.len(), 5, "{listed}");
        let mut bodies = Vec::new();
        for f in &files {
            bodies.push(mp(&env, &["cat", "--archive-dir", &url, "--user", "alice", f]).stdout);
        }
        for m in 0..5 {
            let tail = format!("body {i} {m}\r\n");
            assert!(
                bodies.iter().any(|b| b.ends_with(tail.as_bytes())),
                "host {i} message {m} missing"
            );
        }
    }
}

#[test]
#[allow(deprecated)] // X25519 recipients are what the issue asks for
fn reading_one_message_from_the_bucket_fetches_its_member_not_the_archive() {
    let garage = GarageServer::start_single();
    let (work, dir) = archive_with("offsite-ranged", "pia", 300, 17);
    push(&garage, &dir, "r", &[]);
    let archive_len = std::fs::metadata(dir.join("pia.tar.gz")).unwrap().len();
    let index_len = std::fs::metadata(dir.join("pia.idx")).unwrap().len();
    let (key, _) = OffsiteKey::load_or_create(&dir.join("offsite.key")).unwrap();
    let b = bucket(&garage, "r");
    let owner = Owner::User("pia".into());
    let options = ReadOptions {
        key: &key,
        identities: None,
        generation: None,
    };
    let opened = offsite::open_archive(&b, &owner, &options, &mut Vec::new()).unwrap();
    let body = std::fs::read(work.path().join("src-17/m150")).unwrap();
    let name = mailpack::archive::file_entry_name(&mailpack::guid::Guid::of(&body));
    let before = b
        .traffic()
        .bytes_fetched
        .load(std::sync::atomic::Ordering::Relaxed);
    let (_, entry) = opened.archive.latest(&name).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut opened.archive.read_entry(entry).unwrap(), &mut got).unwrap();
    assert_eq!(got, body);
    let fetched = b
        .traffic()
        .bytes_fetched
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    // One member's blocks (members are about 1 MiB of mail), not the archive.
    assert!(
        fetched <= 2 * 1024 * 1024,
        "fetched {fetched} of {archive_len}"
    );
    assert!(
        archive_len > 4 * fetched,
        "archive {archive_len}, fetched {fetched}"
    );
    let _ = index_len;

    // Encrypted: the age header and the 64 KiB chunks covering the member, not the object.
    let id = age::x25519::Identity::generate();
    let id_file = work.path().join("id.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&id_file, id.to_string().expose_secret()).unwrap();
    }
    push(
        &garage,
        &dir,
        "renc",
        &["--recipient", &id.to_public().to_string()],
    );
    let be = bucket(&garage, "renc");
    let identities = Arc::new(mailpack::offsite::Identities::load(&id_file).unwrap());
    let options_enc = ReadOptions {
        key: &key,
        identities: Some(identities),
        generation: None,
    };
    let opened_enc = offsite::open_archive(&be, &owner, &options_enc, &mut Vec::new()).unwrap();
    let before = be
        .traffic()
        .bytes_fetched
        .load(std::sync::atomic::Ordering::Relaxed);
    let (_, entry) = opened_enc.archive.latest(&name).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut opened_enc.archive.read_entry(entry).unwrap(), &mut got)
        .unwrap();
    assert_eq!(got, body);
    let fetched = be
        .traffic()
        .bytes_fetched
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    assert!(
        fetched <= 2 * 1024 * 1024 + 4096,
        "fetched {fetched} of {archive_len}"
    );
    assert!(
        archive_len > 4 * fetched,
        "archive {archive_len}, fetched {fetched}"
    );
    // Restoring it through the same open archive as an .eml file.
    let mut o = crate::restore::options(
        &dir,
        "pia",
        mailpack::commands::restore::RestoreTarget::Eml(work.path().join("eml")),
    );
    o.sha1 = Some(mailpack::guid::Guid::of(&body));
    let report = restore_from(&opened.archive, &o).unwrap();
    assert_eq!(report.messages_written, 1);
}
