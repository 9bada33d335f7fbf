//! Issue 13, the archive side: committed data is never lost and bad input is refused loudly.
//! Foreign files and symlinks through every command, a byte-flip sweep over the last two runs
//! with and without the index (no command shortens the file; `repair` keeps every other entry,
//! reports the lost ones, and `put` heals them), an archive shorter than its index, index
//! records that lie (a 2^40-byte entry, a wrong SHA-1), a resync bomb, a reader racing a
//! compaction, the run-number limit, refused user names, read-only commands on a stale index,
//! and a commit whose index append fails. Every command runs under a watchdog, and a crash
//! (exit 101, a signal) fails the test wherever it happens.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mailpack::archive::{Appended, ArchiveWriter, RunSummary, ScanEvent, Scanner};
use mailpack::io::{DurableFile, Faults};
use mailpack::store::sidecar::{self, IndexRead};
use mailpack::store::{Archive, ArchivePaths};
use mailpack::Guid;

use crate::util::{bin, Rng, TempDir};

/// What one run of the binary gave.
struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        format!("{}{}", String::from_utf8_lossy(&self.stdout), self.stderr)
    }
}

/// Long enough for any command here on a slow machine; short enough that a hang fails the test.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Runs `mailpack args` and kills it after `WATCHDOG`, failing the test: cargo test has no
/// timeout, and an unbounded loop on hostile input must show up as a failure, not a hung run.
/// Exit codes other than 0, 1 and 2 (a panic's 101, an abort's signal) fail the test too.
fn mp_with(args: &[&str], setup: impl FnOnce(&mut std::process::Command)) -> Out {
    let mut cmd = bin();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    setup(&mut cmd);
    let mut child = cmd.spawn().expect("spawn mailpack");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mailpack {args:?} still running after {WATCHDOG:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = Out {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
    };
    assert!(
        matches!(status.code(), Some(0..=2)),
        "mailpack {args:?} crashed ({status}): {}",
        out.stderr
    );
    out
}

fn mp(args: &[&str]) -> Out {
    mp_with(args, |_| {})
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The names in a directory, sorted.
fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Writes `files` (name → bytes) under `dir` and returns their paths in name order.
fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    files
        .iter()
        .map(|(name, data)| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            s(&p).to_string()
        })
        .collect()
}

fn put(dir: &Path, user: &str, files: &[String]) -> Out {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec!["put", "--archive-dir", s(dir), "--user", user];
    args.extend(files.iter().map(|f| f.as_str()));
    mp(&args)
}

fn put_ok(dir: &Path, user: &str, files: &[String]) {
    let o = put(dir, user, files);
    assert_eq!(o.code, 0, "put: {}", o.text());
}

/// `files/<sha1>` of each content.
fn file_names<'a>(contents: impl IntoIterator<Item = &'a Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    contents
        .into_iter()
        .map(|c| (format!("files/{}", Guid::of(c)), c.clone()))
        .collect()
}

fn open(paths: &ArchivePaths) -> Archive {
    Archive::open(paths, &mut Vec::new()).unwrap()
}

fn read_all(archive: &Archive, name: &str) -> Vec<u8> {
    let (_, e) = archive
        .latest(name)
        .unwrap_or_else(|| panic!("{name} missing"));
    let mut v = Vec::new();
    archive
        .read_entry(e)
        .unwrap_or_else(|err| panic!("{name}: {err}"))
        .read_to_end(&mut v)
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    v
}

/// A member of the archive file and the entries whose bytes lie (partly) in it.
#[derive(Clone, Debug)]
struct MemberInfo {
    offset: u64,
    end: u64,
    /// The run whose range holds this member.
    run: u64,
    is_marker: bool,
}

/// Members, entries (name → offsets of the members their bytes span) and run ranges of an
/// undamaged archive, from one scan.
struct Layout {
    members: Vec<MemberInfo>,
    spans: BTreeMap<String, BTreeSet<u64>>,
    /// run → entry names (markers left out)
    run_entries: BTreeMap<u64, Vec<String>>,
}

fn layout(path: &Path) -> Layout {
    let file = std::fs::File::open(path).unwrap();
    let mut members = Vec::new();
    let mut spans: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    // Entries whose last member is the one being decoded.
    let mut pending: Vec<(String, u64)> = Vec::new();
    let mut in_run: Vec<String> = Vec::new();
    let mut run_entries = BTreeMap::new();
    let mut markers = BTreeMap::new(); // marker member offset → (run, start)
    let mut ends: Vec<(u64, u64)> = Vec::new();
    for ev in Scanner::new(file, path, 0).unwrap() {
        match ev {
            ScanEvent::Entry(e) => {
                pending.push((e.record.name.clone(), e.record.placement.member));
                in_run.push(e.record.name);
            }
            ScanEvent::Commit(mailpack::archive::scan::ScannedMarker { marker: m, member }) => {
                markers.insert(member.offset, (m.run, m.start));
                in_run.retain(|n| !n.starts_with("runs/"));
                run_entries.insert(m.run, std::mem::take(&mut in_run));
            }
            ScanEvent::Damage(d) => panic!("the undamaged archive has damage: {d:?}"),
            ScanEvent::MemberEnd(m) => {
                ends.push((m.offset, m.end));
                for (name, first) in pending.drain(..) {
                    // Members are contiguous: the entry spans every member from its first to
                    // this one.
                    let set = spans.entry(name).or_default();
                    set.insert(first);
                    set.insert(m.offset);
                }
            }
        }
    }
    // Fill the members between first and last of each multi-member entry.
    for set in spans.values_mut() {
        let (lo, hi) = (*set.first().unwrap(), *set.last().unwrap());
        for &(o, _) in &ends {
            if o >= lo && o <= hi {
                set.insert(o);
            }
        }
    }
    for &(offset, end) in &ends {
        let (run, is_marker) = match markers.get(&offset) {
            Some(&(run, _)) => (run, true),
            None => {
                let run = markers
                    .range(offset..)
                    .next()
                    .map(|(_, &(run, start))| {
                        assert!(start <= offset);
                        run
                    })
                    .expect("every member belongs to a committed run");
                (run, false)
            }
        };
        members.push(MemberInfo {
            offset,
            end,
            run,
            is_marker,
        });
    }
    spans.retain(|n, _| !n.starts_with("runs/"));
    Layout {
        members,
        spans,
        run_entries,
    }
}

/// Rewrites the index with `edit` applied to its entry records, every block's CRC recomputed:
/// an index that lies but passes every check of its own.
fn tamper_index(paths: &ArchivePaths, edit: impl Fn(&mut mailpack::archive::EntryRecord)) {
    let IndexRead::Valid {
        archive_id,
        mut runs,
        ..
    } = sidecar::read(&paths.index).unwrap()
    else {
        panic!("index not valid before tampering");
    };
    let mut bytes = sidecar::encode_header(&archive_id);
    for run in &mut runs {
        for e in &mut run.entries {
            edit(e);
        }
        bytes.extend(sidecar::encode_block(run));
    }
    std::fs::write(&paths.index, bytes).unwrap();
}

/// The compact UTC form repair names its kept-aside file with: 20261207T063000Z.
fn compact_utc(t: i64) -> String {
    mailpack::time::format_utc(t).replace(['-', ':'], "")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// 1. Foreign files and symlinks.

/// Every command that opens one archive, for user `u` in `d`, plus `verify FILE`.
fn every_command(d: &str, u: &str, file: &str, input: &str) -> Vec<Vec<String>> {
    let base = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.extend(["--archive-dir", d, "--user", u].map(String::from));
        v
    };
    let mut cmds = vec![
        base(&["ls"]),
        base(&["ls", "--all"]),
        base(&["cat"]),
        base(&["cat"]),
        base(&["verify"]),
        vec!["verify".into(), file.into()],
        vec!["ls".into(), file.into()],
        base(&["reindex"]),
        base(&["compact", "--dry-run"]),
        base(&["compact", "--force", "--keep-days", "0"]),
        base(&["put"]),
        base(&["repair", "--dry-run"]),
        base(&["repair"]),
    ];
    cmds[2].push("runs/1".into());
    cmds[3].push(Guid::of(b"foreign").to_string());
    cmds[10].push(input.into());
    cmds
}

/// The bytes of every regular file under `dir` (symlinks as their target), to compare before
/// and after.
fn tree(dir: &Path) -> BTreeMap<String, Result<Vec<u8>, PathBuf>> {
    names_in(dir)
        .into_iter()
        .map(|n| {
            let p = dir.join(&n);
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let v = if meta.file_type().is_symlink() {
                Err(std::fs::read_link(&p).unwrap())
            } else {
                Ok(std::fs::read(&p).unwrap())
            };
            (n, v)
        })
        .collect()
}

#[test]
fn foreign_files_and_symlinks_pass_every_command_unchanged() {
    let work = TempDir::new("trust-foreign");
    let mut rng = Rng::new(13);
    let input = work.path().join("input.eml");
    std::fs::write(&input, rng.mail_text(3000)).unwrap();

    // A GNU tar.gz of a few files.
    let tar_src = work.path().join("tar-src");
    std::fs::create_dir_all(&tar_src).unwrap();
    std::fs::write(tar_src.join("a.txt"), rng.mail_text(5000)).unwrap();
    std::fs::write(tar_src.join("b.bin"), rng.noise(20_000)).unwrap();
    let gnu = work.path().join("gnu.tar.gz");
    let ok = std::process::Command::new("tar")
        .args(["czf", s(&gnu), "-C", s(&tar_src), "."])
        .status()
        .unwrap()
        .success();
    assert!(ok, "GNU tar");

    // A real mailpack archive elsewhere, with an uncommitted tail of its own (a torn member):
    // reached through a symlink, even that tail must stay.
    let elsewhere_archive = {
        let d = work.path().join("elsewhere-mp");
        put_ok(&d, "other", &[s(&input).to_string()]);
        let p = ArchivePaths::for_user(&d, "other").unwrap().archive;
        let mut bytes = std::fs::read(&p).unwrap();
        let first_member: Vec<u8> = bytes[..200.min(bytes.len())].to_vec();
        bytes.extend_from_slice(&first_member[..100]);
        std::fs::write(&p, &bytes).unwrap();
        p
    };

    enum Kind {
        Bytes(Vec<u8>),
        Symlink(PathBuf),
    }
    let outside = work.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let foreign_target = outside.join("target.bin");
    std::fs::write(&foreign_target, rng.noise(50_000)).unwrap();
    let kinds: Vec<(&str, Kind)> = vec![
        ("gnu-tar", Kind::Bytes(std::fs::read(&gnu).unwrap())),
        ("random", Kind::Bytes(rng.noise(100_000))),
        ("zeros", Kind::Bytes(vec![0; 100_000])),
        ("symlink-foreign", Kind::Symlink(foreign_target.clone())),
        ("symlink-mailpack", Kind::Symlink(elsewhere_archive.clone())),
    ];
    for (label, kind) in kinds {
        let dir = work.path().join(format!("d-{label}"));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("victim.tar.gz");
        match &kind {
            Kind::Bytes(b) => std::fs::write(&archive, b).unwrap(),
            Kind::Symlink(t) => std::os::unix::fs::symlink(t, &archive).unwrap(),
        }
        let before = tree(&dir);
        let outside_before = tree(&outside);
        let elsewhere_before = std::fs::read(&elsewhere_archive).unwrap();
        let elsewhere_names = names_in(elsewhere_archive.parent().unwrap());
        for args in every_command(s(&dir), "victim", s(&archive), s(&input)) {
            let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
            let o = mp(&args);
            let what = format!("{label}: {args:?} (exit {}): {}", o.code, o.text());
            // Nothing in the directory changed; only a writer's lock file may appear.
            let mut after = tree(&dir);
            after.remove("victim.lock");
            assert!(after == before, "{what}\nfiles now {:?}", after.keys());
            assert!(
                tree(&outside) == outside_before,
                "{what}: file outside changed"
            );
            assert!(
                std::fs::read(&elsewhere_archive).unwrap() == elsewhere_before
                    && names_in(elsewhere_archive.parent().unwrap()) == elsewhere_names,
                "{what}: archive reached through the symlink changed"
            );
            match args[0] {
                "ls" | "cat" | "verify" => assert_ne!(o.code, 0, "{what}"),
                "put" => {
                    assert_eq!(o.code, 2, "{what}");
                }
                _ => {}
            }
        }
    }
}

/// An empty `<user>.tar.gz` holds no committed run: every reader reports it (non-zero) and no
/// command but a writer changes it. A crash between creating an archive and writing its first
/// member leaves exactly this file (a writer that commits nothing removes what it created), so
/// the next writer takes it as a new archive rather than blocking that user's backups.
#[test]
fn an_empty_archive_file_is_reported_by_readers_and_taken_as_new_by_a_writer() {
    let work = TempDir::new("trust-empty");
    let input = work.path().join("input.eml");
    std::fs::write(&input, Rng::new(12).mail_text(3000)).unwrap();
    let dir = work.path().join("archives");
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("victim.tar.gz");
    std::fs::write(&archive, b"").unwrap();
    let before = tree(&dir);
    for args in every_command(s(&dir), "victim", s(&archive), s(&input)) {
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        if args[0] == "put" {
            continue;
        }
        let o = mp(&args);
        let what = format!("{args:?} (exit {}): {}", o.code, o.text());
        let mut after = tree(&dir);
        after.remove("victim.lock");
        assert!(after == before, "{what}\nfiles now {:?}", after.keys());
        if matches!(args[0], "ls" | "cat" | "verify") {
            assert_ne!(o.code, 0, "{what}");
        }
    }
    let o = mp(&[
        "put",
        "--archive-dir",
        s(&dir),
        "--user",
        "victim",
        s(&input),
    ]);
    assert_eq!(o.code, 0, "{}", o.text());
    let o = mp(&["verify", "--archive-dir", s(&dir), "--user", "victim"]);
    assert_eq!(o.code, 0, "{}", o.text());
}

#[test]
fn verify_and_compact_of_a_directory_skip_a_foreign_tar_gz_and_check_the_rest() {
    let work = TempDir::new("trust-stray");
    let d = work.path().join("archives");
    let mut rng = Rng::new(14);
    let files = write_files(
        &work.path().join("src"),
        &BTreeMap::from([
            ("a".to_string(), rng.mail_text(4000)),
            ("b".to_string(), rng.noise(30_000)),
        ]),
    );
    put_ok(&d, "alice", &files);
    put_ok(&d, "bob", &files[..1]);
    let ok = std::process::Command::new("tar")
        .args([
            "czf",
            s(&d.join("stray.tar.gz")),
            "-C",
            s(&work.path().join("src")),
            ".",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let stray = std::fs::read(d.join("stray.tar.gz")).unwrap();

    let o = mp(&["verify", "--archive-dir", s(&d)]);
    let text = o.text();
    assert!(
        text.lines().any(|l| l.contains("alice.tar.gz")
            && l.contains("1 runs, 2 entries")
            && l.ends_with("ok")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("bob.tar.gz")
            && l.contains("1 runs, 1 entries")
            && l.ends_with("ok")),
        "{text}"
    );
    let about_stray: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("stray.tar.gz"))
        .collect();
    assert!(
        !about_stray.is_empty()
            && about_stray.iter().all(|l| {
                let l = l.to_lowercase();
                (l.contains("skip") || l.contains("foreign") || l.contains("not a mailpack"))
                    && !l.ends_with(": ok")
            }),
        "{text}"
    );
    assert!(std::fs::read(d.join("stray.tar.gz")).unwrap() == stray);

    for args in [
        &["compact", "--dry-run", "--archive-dir", s(&d)][..],
        &[
            "compact",
            "--force",
            "--keep-days",
            "0",
            "--archive-dir",
            s(&d),
        ][..],
    ] {
        let o = mp(args);
        assert!(o.text().contains("stray.tar.gz"), "{args:?}: {}", o.text());
        assert!(
            std::fs::read(d.join("stray.tar.gz")).unwrap() == stray,
            "{args:?}"
        );
        assert!(
            !names_in(&d)
                .iter()
                .any(|n| n.starts_with("stray.") && n != "stray.tar.gz" && n != "stray.lock"),
            "{args:?}: {:?}",
            names_in(&d)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The byte-flip sweep.

/// Three runs through `put`: small mail of several sizes, an incompressible entry longer than a
/// member in runs 1 and 2, a compressible 300 KB one in run 2. Returns the contents per run.
fn sweep_archive(dir: &Path, src: &Path) -> Vec<BTreeMap<String, Vec<u8>>> {
    let mut rng = Rng::new(1313);
    let mut runs = Vec::new();
    for (run, big) in [(1, Some(1_200_000)), (2, Some(1_100_000)), (3, None)] {
        let mut contents = Vec::new();
        for i in 0..4 {
            let len = 300 + rng.below(12_000) as usize;
            let mut m = rng.mail_text(len);
            m.extend_from_slice(format!("\r\nrun {run} message {i}\r\n").as_bytes());
            contents.push(m);
        }
        if let Some(len) = big {
            contents.push(rng.noise(len));
        }
        if run == 2 {
            contents.push(rng.mail_text(300_000));
        }
        let named = file_names(&contents);
        let paths = write_files(
            &src.join(format!("run{run}")),
            &named
                .iter()
                .map(|(n, c)| (n.replace('/', "-"), c.clone()))
                .collect(),
        );
        put_ok(dir, "u", &paths);
        runs.push(named);
    }
    runs
}

/// Parses a `repairs/<n>` entry: `<sha1-hex> <entry-name>` per line.
fn parse_repairs(body: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(body).expect("repairs entry is UTF-8");
    text.lines()
        .map(|l| {
            let (hex, name) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            assert!(
                hex.len() == 40
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "bad sha1 in {l:?}"
            );
            (hex.to_string(), name.to_string())
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum At {
    /// The second gzip magic byte: the member is no gzip member at all.
    Header,
    Middle,
    /// Inside the gzip trailer's ISIZE.
    Trailer,
}

#[test]
fn byte_flips_in_the_last_two_runs_never_shorten_and_repair_keeps_the_rest() {
    let work = TempDir::new("trust-sweep");
    let d = work.path().join("archives");
    let src = work.path().join("src");
    let runs = sweep_archive(&d, &src);
    let paths = ArchivePaths::for_user(&d, "u").unwrap();
    let all: BTreeMap<String, Vec<u8>> = runs
        .iter()
        .flatten()
        .map(|(n, c)| (n.clone(), c.clone()))
        .collect();
    let all_sources: Vec<String> = (1..=3)
        .flat_map(|r| {
            let dir = src.join(format!("run{r}"));
            names_in(&dir)
                .into_iter()
                .map(move |n| s(&dir.join(n)).to_string())
        })
        .collect();
    let good = std::fs::read(&paths.archive).unwrap();
    let good_index = std::fs::read(&paths.index).unwrap();
    let o = mp(&["verify", s(&paths.archive)]);
    assert_eq!(o.code, 0, "{}", o.text());

    let lay = layout(&paths.archive);
    assert_eq!(lay.run_entries.len(), 3);
    let last_two: Vec<&MemberInfo> = lay.members.iter().filter(|m| m.run >= 2).collect();
    // Run 2: its small entries, two members of the long one, the marker; run 3: entries, marker.
    assert!(last_two.len() >= 5, "{last_two:?}");
    assert!(
        lay.spans
            .values()
            .any(|s| s.len() >= 2 && s.iter().all(|o| last_two.iter().any(|m| m.offset == *o))),
        "no entry of the last two runs spans members"
    );
    let intact_probe = runs[0].keys().next().unwrap().clone();

    let mut cases = Vec::new();
    for (i, m) in last_two.iter().enumerate() {
        // Each member is hit at all three places; the index is present for some, absent for
        // others, alternating so that every member sees both.
        for (j, at) in [At::Header, At::Middle, At::Trailer]
            .into_iter()
            .enumerate()
        {
            cases.push(((*m).clone(), at, (i + j) % 2 == 0));
        }
    }
    for (m, at, with_index) in cases {
        let flip_at = match at {
            At::Header => m.offset + 1,
            At::Middle => m.offset + (m.end - m.offset) / 2,
            At::Trailer => m.end - 2,
        } as usize;
        let what = format!(
            "flip at {flip_at} ({at:?}) in member {}..{} of run {}{}, index {}",
            m.offset,
            m.end,
            m.run,
            if m.is_marker { " (marker)" } else { "" },
            if with_index { "present" } else { "absent" }
        );
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut damaged = good.clone();
        damaged[flip_at] ^= 0x20;
        std::fs::write(&paths.archive, &damaged).unwrap();
        if with_index {
            std::fs::write(&paths.index, &good_index).unwrap();
        }
        // Entries that may be lost: those with bytes in the damaged member, and, when it is a
        // commit marker, the run it closed (without it nothing says the run was committed).
        let touching: BTreeSet<String> = lay
            .spans
            .iter()
            .filter(|(_, members)| members.contains(&m.offset))
            .map(|(n, _)| n.clone())
            .chain(if m.is_marker {
                lay.run_entries[&m.run].clone()
            } else {
                Vec::new()
            })
            .collect();
        let unchanged = |step: &str, o: &Out| {
            let now = std::fs::read(&paths.archive).unwrap();
            assert!(
                now == damaged,
                "{what}: {step} changed the archive ({} -> {} bytes): {}",
                damaged.len(),
                now.len(),
                o.text()
            );
        };

        let o = mp(&["ls", "--archive-dir", s(&d), "--user", "u"]);
        unchanged("ls", &o);
        if !with_index {
            assert_eq!(o.code, 1, "{what}: ls: {}", o.text());
        }

        let o = mp(&["verify", s(&paths.archive), "--json"]);
        unchanged("verify", &o);
        assert_eq!(o.code, 1, "{what}: verify: {}", o.text());
        let first = String::from_utf8_lossy(&o.stdout);
        let report: serde_json::Value = serde_json::from_str(first.lines().next().unwrap_or("{}"))
            .unwrap_or_else(|e| panic!("{what}: verify --json: {e}: {first}"));
        let offsets: Vec<u64> = report["data"]["problems"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["offset"].as_u64()).collect())
            .unwrap_or_default();
        assert!(
            offsets.contains(&m.offset),
            "{what}: verify names {offsets:?}: {report}"
        );

        let o = mp(&["reindex", "--archive-dir", s(&d), "--user", "u"]);
        unchanged("reindex", &o);
        assert_ne!(o.code, 0, "{what}: reindex: {}", o.text());

        // An entry far from the damage comes out whole; one in the damaged member either
        // comes out whole or fails with exit 1 naming the archive, never wrong bytes.
        let o = mp(&["cat", "--archive-dir", s(&d), "--user", "u", &intact_probe]);
        unchanged("cat", &o);
        assert!(
            o.stdout == all[&intact_probe],
            "{what}: cat {intact_probe}: {}",
            o.stderr
        );
        assert!(o.code <= 1, "{what}: cat {intact_probe}: {}", o.stderr);
        if let Some(name) = touching.iter().next() {
            let o = mp(&["cat", "--archive-dir", s(&d), "--user", "u", name]);
            unchanged("cat", &o);
            if o.code == 0 {
                assert!(
                    o.stdout == all[name],
                    "{what}: cat {name} gave wrong bytes, exit 0"
                );
            } else {
                assert_eq!(o.code, 1, "{what}: cat {name}: {}", o.stderr);
                assert!(
                    o.stderr.contains("u.tar.gz"),
                    "{what}: cat {name}: {}",
                    o.stderr
                );
            }
        }

        // A writer: refuses and names the remedy, or (index present, damage not in what it
        // reads) appends; it never cuts or rewrites what is there.
        let o = put(&d, "u", &all_sources);
        let grown = std::fs::read(&paths.archive).unwrap();
        assert!(
            grown.len() >= damaged.len() && grown[..damaged.len()] == damaged[..],
            "{what}: put cut the archive: {}",
            o.text()
        );
        if o.code != 0 || !with_index {
            assert_eq!(o.code, 2, "{what}: put: {}", o.text());
            assert!(
                o.stderr.contains("mailpack repair"),
                "{what}: put: {}",
                o.stderr
            );
            assert!(grown == damaged, "{what}: put refused but wrote");
        }
        let damaged = grown;

        let before_dry = tree(&d);
        let o = mp(&["repair", "--dry-run", "--archive-dir", s(&d), "--user", "u"]);
        let dry_code = o.code;
        let mut after_dry = tree(&d);
        after_dry.remove("u.lock");
        let mut before_dry = before_dry;
        before_dry.remove("u.lock");
        assert!(
            after_dry == before_dry,
            "{what}: repair --dry-run changed files"
        );

        let started = compact_utc(now());
        let o = mp(&["repair", "--archive-dir", s(&d), "--user", "u"]);
        let ended = compact_utc(now());
        assert_eq!(
            o.code,
            dry_code,
            "{what}: repair and its dry run disagree: {}",
            o.text()
        );
        assert!(matches!(o.code, 0 | 1), "{what}: repair: {}", o.text());
        let repair_code = o.code;
        let report = o.text();
        // The damaged file is kept aside (its index may be kept beside it).
        let kept_aside: Vec<String> = names_in(&d)
            .into_iter()
            .filter(|n| n.starts_with("u.tar.gz.damaged-") && !n.ends_with(".idx"))
            .collect();
        assert_eq!(kept_aside.len(), 1, "{what}: {:?}", names_in(&d));
        let stamp = kept_aside[0].trim_start_matches("u.tar.gz.damaged-");
        assert!(
            stamp.len() == 16
                && stamp[..8].bytes().all(|b| b.is_ascii_digit())
                && &stamp[8..9] == "T"
                && stamp[9..15].bytes().all(|b| b.is_ascii_digit())
                && stamp.ends_with('Z')
                && started.as_str() <= stamp
                && stamp <= ended.as_str(),
            "{what}: kept aside as {stamp:?}, repair ran {started}..{ended}"
        );
        assert!(
            std::fs::read(d.join(&kept_aside[0])).unwrap() == damaged,
            "{what}: the damaged file kept aside differs"
        );

        let o = mp(&["verify", s(&paths.archive)]);
        assert_eq!(o.code, 0, "{what}: verify after repair: {}", o.text());
        let repaired = open(&paths);
        let present: BTreeSet<String> = repaired
            .state_at(None)
            .into_iter()
            .map(|(_, e)| e.name.clone())
            .filter(|n| n.starts_with("files/"))
            .collect();
        let lost: BTreeSet<String> = all
            .keys()
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        assert!(
            present.iter().all(|n| all.contains_key(n)),
            "{what}: {present:?}"
        );
        assert!(
            lost.is_subset(&touching),
            "{what}: lost {lost:?}, only {touching:?} could be"
        );
        // Exit 1 when something was lost; a marker re-made or a trailer that no entry needed
        // may cost nothing.
        if !lost.is_empty() {
            assert_eq!(
                repair_code, 1,
                "{what}: lost {lost:?} but repair exited 0: {report}"
            );
        }
        for name in &present {
            assert!(
                read_all(&repaired, name) == all[name],
                "{what}: {name} differs after repair"
            );
        }
        // With an index every lost entry has a name to report; without one, entries in a
        // member that does not decode have none, and the report counts them per run.
        for name in &lost {
            let run = (1..=3)
                .find(|&r| runs[r as usize - 1].contains_key(name))
                .unwrap();
            assert!(
                report.contains(name.as_str())
                    || (!with_index && report.contains(&format!("run {run}"))),
                "{what}: lost {name} (run {run}) not reported: {report}"
            );
        }
        // The newest run says what was lost, one `<sha1> <name>` per line.
        let newest = repaired.runs().last().unwrap();
        let repairs: Vec<&str> = repaired
            .entries_of(newest)
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| n.starts_with("repairs/"))
            .collect();
        assert!(repairs.len() <= 1, "{what}: {repairs:?}");
        if !lost.is_empty() {
            assert_eq!(
                repairs.len(),
                1,
                "{what}: lost {lost:?}, but no repairs/<n> in the newest run"
            );
        }
        for repairs in &repairs {
            let listed = parse_repairs(&read_all(&repaired, repairs));
            let listed_files: BTreeSet<String> = listed
                .iter()
                .filter(|(_, n)| n.starts_with("files/"))
                .map(|(hex, n)| {
                    assert_eq!(&n["files/".len()..], hex, "{what}: {n} listed with {hex}");
                    n.clone()
                })
                .collect();
            assert!(
                listed_files.is_subset(&lost),
                "{what}: {repairs} lists {listed_files:?}, lost {lost:?}"
            );
            if with_index {
                assert_eq!(listed_files, lost, "{what}: {repairs} lists");
            }
        }
        drop(repaired);

        // Heal through put: the same files again store exactly the lost ones.
        let o = put(&d, "u", &all_sources);
        assert_eq!(o.code, 0, "{what}: put after repair: {}", o.text());
        let healed = open(&paths);
        for name in &lost {
            assert!(
                read_all(&healed, name) == all[name],
                "{what}: {name} not healed"
            );
        }
        let present: BTreeSet<String> = healed
            .state_at(None)
            .into_iter()
            .map(|(_, e)| e.name.clone())
            .filter(|n| n.starts_with("files/"))
            .collect();
        assert_eq!(present, all.keys().cloned().collect(), "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. An archive shorter than its index.

/// The first file in `dir`.
fn src_file(dir: &Path) -> String {
    s(&dir.join(names_in(dir).into_iter().next().unwrap())).to_string()
}

#[test]
fn an_archive_cut_inside_run_one_is_reported_and_never_shortened() {
    let work = TempDir::new("trust-cut");
    let d = work.path().join("archives");
    let runs = sweep_archive(&d, &work.path().join("src"));
    let paths = ArchivePaths::for_user(&d, "u").unwrap();
    let good = std::fs::read(&paths.archive).unwrap();
    let good_index = std::fs::read(&paths.index).unwrap();
    let lay = layout(&paths.archive);
    let run1: Vec<&MemberInfo> = lay.members.iter().filter(|m| m.run == 1).collect();
    assert!(run1.len() >= 3, "{run1:?}");
    // Inside run 1's first member, and exactly at the boundary after it (a whole member gone
    // is no torn write either).
    let one_file = src_file(&work.path().join("src/run1"));
    for cut in [
        run1[0].offset + (run1[0].end - run1[0].offset) / 2,
        run1[0].end,
    ] {
        std::fs::write(&paths.archive, &good[..cut as usize]).unwrap();
        std::fs::write(&paths.index, &good_index).unwrap();
        for args in [
            &["ls", "--archive-dir", s(&d), "--user", "u"][..],
            &["ls", "--all", "--archive-dir", s(&d), "--user", "u"][..],
            &["verify", "--archive-dir", s(&d), "--user", "u"][..],
            &[
                "cat",
                "--archive-dir",
                s(&d),
                "--user",
                "u",
                runs[2].keys().next().unwrap(),
            ][..],
            &["put", "--archive-dir", s(&d), "--user", "u", &one_file][..],
        ] {
            let o = mp(args);
            let len = std::fs::metadata(&paths.archive).unwrap().len();
            assert_eq!(
                len,
                cut,
                "cut at {cut}: {args:?} changed the length: {}",
                o.text()
            );
            assert!(std::fs::read(&paths.archive).unwrap() == good[..cut as usize]);
            match args[0] {
                "put" => {
                    assert_eq!(o.code, 2, "cut at {cut}: put: {}", o.text());
                    assert!(o.stderr.contains("mailpack repair"), "{}", o.stderr);
                }
                _ => {
                    assert_eq!(o.code, 1, "cut at {cut}: {args:?}: {}", o.text());
                    assert!(
                        o.text().contains("u.tar.gz"),
                        "cut at {cut}: {args:?}: {}",
                        o.text()
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. An index that lies.

/// A backup of the committed Cyrus fixture spool (no server needed: the files are read
/// directly), for user alice.
fn backed_up_alice(work: &Path) -> (PathBuf, ArchivePaths) {
    let config = crate::agent::fixture_spool(work);
    let d = work.join("archives");
    let o = mp(&[
        "backup",
        "--config",
        s(&config),
        "--archive-dir",
        s(&d),
        "--user",
        "alice",
    ]);
    assert_eq!(o.code, 0, "backup: {}", o.text());
    let paths = ArchivePaths::for_user(&d, "alice").unwrap();
    (d, paths)
}

#[test]
fn an_index_recording_a_huge_entry_fails_cleanly() {
    let work = TempDir::new("trust-huge");
    let (d, paths) = backed_up_alice(work.path());
    let archive = open(&paths);
    let victim = archive
        .state_at(None)
        .into_iter()
        .map(|(_, e)| e.clone())
        .filter(|e| e.name.starts_with("files/"))
        .max_by_key(|e| e.size)
        .unwrap();
    drop(archive);
    tamper_index(&paths, |e| {
        if e.name == victim.name {
            e.size = 1 << 40;
        }
    });
    let o = mp(&[
        "cat",
        "--archive-dir",
        s(&d),
        "--user",
        "alice",
        &victim.name,
    ]);
    assert!(matches!(o.code, 1 | 2), "cat: {}", o.stderr);
    assert!(
        o.stderr.contains("alice.tar.gz") || o.stderr.contains("alice.idx"),
        "cat: {}",
        o.stderr
    );
    let target = work.path().join("eml");
    let o = mp(&[
        "restore",
        "--archive-dir",
        s(&d),
        "--user",
        "alice",
        "--eml",
        s(&target),
    ]);
    assert!(matches!(o.code, 1 | 2), "restore: {}", o.text());
    assert!(
        o.stderr.contains("alice.tar.gz") || o.stderr.contains("alice.idx"),
        "restore: {}",
        o.stderr
    );
    let o = mp(&["verify", "--archive-dir", s(&d), "--user", "alice"]);
    assert_eq!(o.code, 1, "verify: {}", o.text());
}

#[test]
fn cat_checks_the_bytes_against_the_sha1_in_the_name() {
    let work = TempDir::new("trust-sha1");
    let d = work.path().join("archives");
    let mut rng = Rng::new(15);
    let contents = vec![rng.mail_text(5000), rng.mail_text(7000)];
    let named = file_names(&contents);
    put_ok(
        &d,
        "u",
        &write_files(
            &work.path().join("src"),
            &named
                .iter()
                .map(|(n, c)| (n.replace('/', "-"), c.clone()))
                .collect(),
        ),
    );
    let paths = ArchivePaths::for_user(&d, "u").unwrap();
    let names: Vec<&String> = named.keys().collect();
    let (empty_one, short_one) = (names[0].clone(), names[1].clone());
    tamper_index(&paths, |e| {
        if e.name == empty_one {
            // What an empty file would be recorded as.
            e.size = 0;
            e.sha1 = Guid::of(b"");
        } else if e.name == short_one {
            e.size -= 1;
            e.sha1 = Guid::of(&named[&short_one][..named[&short_one].len() - 1]);
        }
    });
    for name in [&empty_one, &short_one] {
        let hex = &name["files/".len()..];
        for key in [name.as_str(), hex] {
            let o = mp(&["cat", "--archive-dir", s(&d), "--user", "u", key]);
            assert_eq!(
                o.code,
                1,
                "cat {key}: exit {}, {} bytes: {}",
                o.code,
                o.stdout.len(),
                o.stderr
            );
            assert!(
                o.stderr.contains("u.tar.gz") || o.stderr.contains("u.idx"),
                "cat {key}: {}",
                o.stderr
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Smaller properties.

/// A file of overlapping forged mailpack member headers, each with a correct `MP` length and
/// CRC, whose stored blocks all run, through relay blocks, into one deflate bomb of more than
/// `MAX_MEMBER_RAW`. A resync that decodes every candidate costs 64 MiB of inflation per 29
/// bytes of file: about 36,000 candidates here, many minutes; a bounded one reads it in
/// moments.
fn resync_bomb() -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    // The bomb: a raw deflate stream of more than 64 MiB of zeros, final block included.
    let zeros = vec![0u8; mailpack::archive::MAX_MEMBER_RAW + (1 << 20)];
    let mut c = Compress::new(Compression::best(), false);
    let mut bomb = Vec::with_capacity(256 << 10);
    let status = c
        .compress_vec(&zeros, &mut bomb, FlushCompress::Finish)
        .unwrap();
    assert_eq!(status, flate2::Status::StreamEnd);
    assert!(bomb.len() < 120 << 10, "bomb is {} bytes", bomb.len());

    const CAND: usize = 24 + 5; // member header, then a stored block header
    const REGION: usize = 60_000; // a stored block holds at most 65,535 bytes
    const REGIONS: usize = 17;
    let stored = |len: usize| {
        let len = u16::try_from(len).expect("stored block length");
        [
            0u8,
            len as u8,
            (len >> 8) as u8,
            !len as u8,
            (!len >> 8) as u8,
        ]
    };
    // Each region: candidates back to back, then a relay (a stored block header) that every
    // candidate's first block ends at; each relay's block spans the next region, the last
    // relay's block is empty and the bomb follows it.
    let mut file = Vec::new();
    let mut candidates = Vec::new();
    let mut relays = Vec::new();
    for _ in 0..REGIONS {
        let region_start = file.len();
        while file.len() + CAND <= region_start + REGION {
            candidates.push(file.len());
            file.extend_from_slice(&[0u8; CAND]);
        }
        relays.push(file.len());
        file.extend_from_slice(&[0u8; 5]);
    }
    for (i, &relay) in relays.iter().enumerate() {
        let region_start = if i == 0 { 0 } else { relays[i - 1] + 5 };
        for &c in candidates
            .iter()
            .filter(|&&c| c >= region_start && c < relay)
        {
            file[c + 24..c + CAND].copy_from_slice(&stored(relay - (c + CAND)));
        }
        let next = relays.get(i + 1).copied().unwrap_or(file.len());
        file[relay..relay + 5].copy_from_slice(&stored(next - (relay + 5)));
    }
    file.extend_from_slice(&bomb);
    // Trailer: the CRC and size of what a decoder would produce (it never gets that far).
    file.extend_from_slice(&[0u8; 8]);
    let end = file.len();
    // Headers, last first: a candidate's payload holds every later candidate's header.
    let mut suffix = crc32fast::Hasher::new(); // CRC of file[pos..end]
    let mut pos = end;
    for &c in candidates.iter().rev() {
        let payload_len = (end - (c + 24)) as u32;
        let mut seg = crc32fast::Hasher::new();
        seg.update(&file[c + 24..pos]);
        seg.combine(&suffix);
        suffix = seg;
        let crc = suffix.clone().finalize();
        let mut h = [0u8; 24];
        h[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]);
        h[10..12].copy_from_slice(&12u16.to_le_bytes());
        h[12..14].copy_from_slice(b"MP");
        h[14..16].copy_from_slice(&8u16.to_le_bytes());
        h[16..20].copy_from_slice(&payload_len.to_le_bytes());
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        file[c..c + 24].copy_from_slice(&h);
        // The suffix CRC now starts at c + 24; bytes c..c+24 belong to earlier payloads.
        let mut seg = crc32fast::Hasher::new();
        seg.update(&file[c..c + 24]);
        seg.combine(&suffix);
        suffix = seg;
        pos = c;
    }
    assert!(candidates.len() > 30_000, "{} candidates", candidates.len());
    file
}

#[test]
fn a_resync_bomb_is_read_in_time_proportional_to_its_size() {
    let work = TempDir::new("trust-bomb");
    let d = work.path().join("archives");
    std::fs::create_dir_all(&d).unwrap();
    let bytes = resync_bomb();
    // The construction is what it claims: the first candidate decodes through every relay into
    // the bomb (checked by a bounded decode here, not by mailpack).
    {
        let mut dec = flate2::read::GzDecoder::new(&bytes[..]);
        let mut sink = vec![0u8; 1 << 20];
        let mut total = 0usize;
        while total <= mailpack::archive::MAX_MEMBER_RAW {
            let n = dec.read(&mut sink).unwrap();
            assert!(n > 0, "the forged member ends after {total} bytes");
            total += n;
        }
    }
    let file = d.join("u.tar.gz");
    std::fs::write(&file, &bytes).unwrap();
    for args in [
        &["verify", s(&file)][..],
        &["ls", s(&file)][..],
        &["verify", "--archive-dir", s(&d)][..],
    ] {
        let o = mp(args);
        assert_ne!(o.code, 0, "{args:?}: {}", o.text());
        assert!(
            std::fs::read(&file).unwrap() == bytes,
            "{args:?} changed the file"
        );
    }
}

#[test]
fn a_reader_opened_before_a_compaction_reads_every_entry_after_it() {
    let work = TempDir::new("trust-stable");
    let d = work.path().join("archives");
    let src = work.path().join("src");
    let mut rng = Rng::new(16);
    let v1 = rng.noise(300_000);
    let v2 = rng.mail_text(2000);
    let messages = vec![
        rng.mail_text(40_000),
        rng.noise(1_200_000),
        rng.mail_text(900),
    ];
    let mut want = file_names(&messages);
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("v1"), &v1).unwrap();
    std::fs::write(src.join("v2"), &v2).unwrap();
    std::fs::create_dir_all(&d).unwrap();
    let msg_paths = write_files(
        &src.join("m"),
        &want
            .iter()
            .map(|(n, c)| (n.replace('/', "-"), c.clone()))
            .collect(),
    );
    let o = mp(&[
        "put",
        "--archive-dir",
        s(&d),
        "--user",
        "u",
        "--name",
        "meta/sub",
        s(&src.join("v1")),
    ]);
    assert_eq!(o.code, 0, "{}", o.text());
    put_ok(&d, "u", &msg_paths);
    let o = mp(&[
        "put",
        "--archive-dir",
        s(&d),
        "--user",
        "u",
        "--name",
        "meta/sub",
        s(&src.join("v2")),
    ]);
    assert_eq!(o.code, 0, "{}", o.text());
    let paths = ArchivePaths::for_user(&d, "u").unwrap();

    let archive = open(&paths);
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(&paths.archive).unwrap();
    let o = mp(&[
        "compact",
        "--force",
        "--keep-days",
        "0",
        "--archive-dir",
        s(&d),
        "--user",
        "u",
    ]);
    assert_eq!(o.code, 0, "compact: {}", o.text());
    let after = std::fs::metadata(&paths.archive).unwrap();
    assert!(
        after.ino() != before.ino() && after.len() < before.len(),
        "no compaction happened: {}",
        o.text()
    );

    // Every entry of every run, through the state opened before the rename.
    want.insert("meta/sub".into(), v1.clone());
    let mut seen_sub = Vec::new();
    for run in archive.runs() {
        for e in archive.entries_of(run) {
            let mut got = Vec::new();
            archive
                .read_entry(e)
                .unwrap_or_else(|err| panic!("{}: {err}", e.name))
                .read_to_end(&mut got)
                .unwrap_or_else(|err| panic!("{}: {err}", e.name));
            if e.name == "meta/sub" {
                seen_sub.push(got);
            } else {
                assert!(got == want[&e.name], "{} differs", e.name);
            }
        }
    }
    assert!(seen_sub == vec![v1, v2]);
}

/// An archive whose one run is numbered `run`, written by the library's archive writer.
fn archive_at_run(paths: &ArchivePaths, run: u64, data: &[u8]) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&paths.archive)
        .unwrap();
    let file = DurableFile::new(file, &paths.archive, Faults::none());
    let mut w = ArchiveWriter::new(
        file,
        0,
        run,
        "0123456789abcdef0123456789abcdef".into(),
        6,
        1,
    )
    .unwrap();
    let g = Guid::of(data);
    let appended = w
        .append_reader(
            &format!("files/{g}"),
            &mut &data[..],
            data.len() as u64,
            Some(g),
            None,
            1_700_000_000,
        )
        .unwrap();
    assert_eq!(appended, Appended::Stored(g));
    w.commit(&RunSummary {
        time: 1_700_000_000,
        host: "test".into(),
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn run_numbers_stop_at_the_limit_with_a_clear_refusal() {
    let work = TempDir::new("trust-runmax");
    let d = work.path().join("archives");
    std::fs::create_dir_all(&d).unwrap();
    let paths = ArchivePaths::for_user(&d, "u").unwrap();
    archive_at_run(&paths, u64::MAX - 1, b"first");
    let o = mp(&["ls", "--all", "--archive-dir", s(&d), "--user", "u"]);
    assert_eq!(o.code, 0, "{}", o.text());
    assert!(
        o.text().contains(&(u64::MAX - 1).to_string()),
        "{}",
        o.text()
    );

    // Run 2^64-1 may be written or refused; after it, nothing more, and the archive still
    // opens with no run numbered past the limit or wrapped to 0.
    let src = work.path().join("src");
    let files = write_files(
        &src,
        &BTreeMap::from([
            ("a".into(), b"second".to_vec()),
            ("b".into(), b"third".to_vec()),
        ]),
    );
    let o = put(&d, "u", &files[..1]);
    assert!(matches!(o.code, 0 | 2), "{}", o.text());
    let before = std::fs::read(&paths.archive).unwrap();
    let o = put(&d, "u", &files[1..]);
    assert_eq!(o.code, 2, "put past the last run number: {}", o.text());
    // The refusal names the last run, or the limit.
    let last = open(&paths).runs().last().unwrap().run;
    assert!(
        o.stderr.contains(&last.to_string()) || o.stderr.contains("2^64"),
        "{}",
        o.stderr
    );
    assert!(
        std::fs::read(&paths.archive).unwrap() == before,
        "the refused put wrote"
    );
    let o = mp(&["verify", "--archive-dir", s(&d), "--user", "u"]);
    assert_eq!(o.code, 0, "{}", o.text());
    let a = open(&paths);
    let runs: Vec<u64> = a.runs().iter().map(|r| r.run).collect();
    assert!(
        runs.first() == Some(&(u64::MAX - 1)) && runs.windows(2).all(|w| w[1] == w[0] + 1),
        "{runs:?}"
    );
}

#[test]
fn a_refused_user_name_leaves_no_files() {
    let work = TempDir::new("trust-names");
    let d = work.path().join("archives");
    std::fs::create_dir_all(&d).unwrap();
    let input = work.path().join("m");
    std::fs::write(&input, b"mail").unwrap();
    let config = crate::agent::fixture_spool(work.path());
    // 201 encoded bytes; 67 two-byte characters encode to 402.
    for user in ["a".repeat(201), "é".repeat(67)] {
        for args in [
            vec!["put", "--archive-dir", s(&d), "--user", &user, s(&input)],
            vec![
                "put",
                "--archive-dir",
                s(&d),
                "--user",
                &user,
                "--name",
                "meta/x",
                s(&input),
            ],
            vec![
                "backup",
                "--config",
                s(&config),
                "--archive-dir",
                s(&d),
                "--user",
                &user,
            ],
            vec!["ls", "--archive-dir", s(&d), "--user", &user],
            vec!["verify", "--archive-dir", s(&d), "--user", &user],
            vec!["reindex", "--archive-dir", s(&d), "--user", &user],
            vec![
                "compact",
                "--force",
                "--archive-dir",
                s(&d),
                "--user",
                &user,
            ],
            vec!["repair", "--archive-dir", s(&d), "--user", &user],
        ] {
            let o = mp(&args);
            assert_ne!(o.code, 0, "{args:?}: {}", o.text());
            assert!(names_in(&d).is_empty(), "{args:?} left {:?}", names_in(&d));
        }
    }
}

#[test]
fn ls_on_a_stale_index_rebuilds_in_memory_and_writes_nothing() {
    let work = TempDir::new("trust-stale");
    let d = work.path().join("archives");
    let mut rng = Rng::new(17);
    let contents = vec![rng.mail_text(3000), rng.mail_text(4000)];
    let named = file_names(&contents);
    let files = write_files(
        &work.path().join("src"),
        &named
            .iter()
            .map(|(n, c)| (n.replace('/', "-"), c.clone()))
            .collect(),
    );
    put_ok(&d, "u", &files[..1]);
    let paths = ArchivePaths::for_user(&d, "u").unwrap();
    let stale = std::fs::read(&paths.index).unwrap();
    put_ok(&d, "u", &files[1..]);
    // The index as a crash between the archive's fsync and the index append leaves it.
    std::fs::write(&paths.index, &stale).unwrap();
    let mtime = std::fs::metadata(&paths.index).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let archive_before = std::fs::read(&paths.archive).unwrap();

    let o = mp(&["ls", "--json", "--archive-dir", s(&d), "--user", "u"]);
    assert_eq!(o.code, 0, "{}", o.text());
    let listed: BTreeSet<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["data"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(listed, named.keys().cloned().collect::<BTreeSet<_>>());
    assert!(
        std::fs::read(&paths.index).unwrap() == stale,
        "ls rewrote the index"
    );
    assert_eq!(
        std::fs::metadata(&paths.index).unwrap().modified().unwrap(),
        mtime,
        "ls touched the index"
    );
    assert!(std::fs::read(&paths.archive).unwrap() == archive_before);
}

#[test]
fn a_committed_run_whose_index_append_fails_exits_1_and_is_indexed_next_time() {
    // Many tiny messages: their index records outgrow their compressed archive bytes, so a
    // file size limit between the two lets the archive commit and fails the index append.
    let work = TempDir::new("trust-idxfail");
    let mut contents: Vec<Vec<u8>> = (0..400)
        .map(|i| format!("message {i}\n").into_bytes())
        .collect();
    let first = contents.remove(0);
    let src = work.path().join("src");
    let named = file_names(&contents);
    let files = write_files(
        &src.join("many"),
        &named
            .iter()
            .map(|(n, c)| (n.replace('/', "-"), c.clone()))
            .collect(),
    );
    let one = write_files(
        &src.join("one"),
        &BTreeMap::from([("first".to_string(), first)]),
    );
    let extra = write_files(
        &src.join("extra"),
        &BTreeMap::from([("extra".to_string(), b"one more".to_vec())]),
    );

    // A twin archive shows how large both files grow.
    let twin = work.path().join("twin");
    put_ok(&twin, "u", &one);
    put_ok(&twin, "u", &files);
    let tp = ArchivePaths::for_user(&twin, "u").unwrap();
    let (a_len, i_len) = (
        std::fs::metadata(&tp.archive).unwrap().len(),
        std::fs::metadata(&tp.index).unwrap().len(),
    );
    assert!(i_len > a_len + 4096, "index {i_len} bytes, archive {a_len}");
    let limit = a_len + 2048;

    let d = work.path().join("archives");
    put_ok(&d, "u", &one);
    let paths = ArchivePaths::for_user(&d, "u").unwrap();
    let mut args = vec!["put", "--archive-dir", s(&d), "--user", "u"];
    args.extend(files.iter().map(|f| f.as_str()));
    let o = mp_with(&args, |cmd| unsafe {
        cmd.pre_exec(move || {
            // EFBIG instead of SIGXFSZ past the limit.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    });
    assert_eq!(o.code, 1, "{}", o.text());
    assert!(o.stderr.contains("u.idx"), "{}", o.stderr);
    // The run is committed: every message reads.
    let a = open(&paths);
    assert_eq!(a.runs().len(), 2);
    for (name, data) in &named {
        assert!(read_all(&a, name) == *data, "{name}");
    }
    drop(a);
    // The next writer's open indexes the run again.
    put_ok(&d, "u", &extra);
    let IndexRead::Valid { runs, .. } = sidecar::read(&paths.index).unwrap() else {
        panic!("index invalid after the next put");
    };
    assert_eq!(
        runs.iter()
            .map(|r| (r.run, r.entries.len()))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 399), (3, 1)]
    );
}
