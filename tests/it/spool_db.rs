//! `mailpack::spool::cyrusdb` against databases written by a real Cyrus 3.6: every file is
//! dumped with Cyrus's own `cyr_dbtool` and must parse to exactly the same records in the same
//! order; truncated and bit-flipped copies must never panic.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mailpack::spool::cyrusdb::{self, DbFormat, Record};

use crate::cyrus::{cyrus_ids, CyrusOptions, CyrusServer, CYRUS_BIN};
use crate::util::Rng;

/// Runs `cyr_dbtool` against one file with a batch script on stdin (the only binary-safe way
/// in and out: keys and values travel as IMAP literals).
struct DbTool {
    config: PathBuf,
    dir: PathBuf,
    /// `-M`: Cyrus's mailbox sort order (hierarchy '.' first) instead of the backend's default.
    mbox_sort: bool,
}

impl DbTool {
    fn new(server: &CyrusServer) -> DbTool {
        DbTool {
            config: server.config_path(),
            dir: server.config_dir(),
            mbox_sort: false,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `cyr_dbtool <file> <backend> <action>`; returns (success, stdout, stderr).
    fn run(
        &self,
        file: &Path,
        backend: &str,
        action: &str,
        stdin: &[u8],
    ) -> (bool, Vec<u8>, String) {
        let mut cmd = Command::new(Path::new(CYRUS_BIN).join("cyr_dbtool"));
        cmd.arg("-C")
            .arg(&self.config)
            .arg("-n")
            .args(self.mbox_sort.then_some("-M"))
            .arg(file)
            .arg(backend)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir(&self.dir);
        if let Some((uid, gid)) = cyrus_ids() {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().expect("running cyr_dbtool");
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), out.stdout, stderr)
    }

    fn batch(&self, file: &Path, backend: &str, script: &Script) {
        let (ok, _, stderr) = self.run(file, backend, "batch", &script.0);
        assert!(
            ok && !stderr.contains("FAILED"),
            "cyr_dbtool batch: {stderr}"
        );
    }

    /// Cyrus's own view of the database, in its order.
    fn show(&self, file: &Path, backend: &str) -> Vec<Record> {
        let (ok, out, stderr) = self.run(file, backend, "batch", b"SHOW\n");
        assert!(
            ok && !stderr.contains("FAILED"),
            "cyr_dbtool SHOW: {stderr}"
        );
        parse_show(&out)
    }
}

/// A cyr_dbtool batch script.
#[derive(Default)]
struct Script(Vec<u8>);

impl Script {
    fn literal(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(format!("{{{}+}}\r\n", bytes.len()).as_bytes());
        self.0.extend_from_slice(bytes);
    }
    fn set(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b"SET ");
        self.literal(key);
        self.0.push(b' ');
        self.literal(value);
        self.0.push(b'\n');
        self
    }
    fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b"DELETE ");
        self.literal(key);
        self.0.push(b'\n');
        self
    }
    fn line(&mut self, command: &str) -> &mut Self {
        self.0.extend_from_slice(command.as_bytes());
        self.0.push(b'\n');
        self
    }
}

/// Parses `SHOW` output: one `key SP value LF` per record, each an atom, a quoted string
/// (Cyrus never escapes inside it) or a `{n}` literal.
fn parse_show(out: &[u8]) -> Vec<Record> {
    fn item(out: &[u8], pos: &mut usize) -> Vec<u8> {
        match out[*pos] {
            b'"' => {
                let end = *pos + 1 + out[*pos + 1..].iter().position(|&b| b == b'"').unwrap();
                let s = out[*pos + 1..end].to_vec();
                *pos = end + 1;
                s
            }
            b'{' => {
                let close = *pos + out[*pos..].iter().position(|&b| b == b'}').unwrap();
                let n: usize = std::str::from_utf8(&out[*pos + 1..close])
                    .unwrap()
                    .trim_end_matches('+')
                    .parse()
                    .unwrap();
                assert_eq!(&out[close + 1..close + 3], b"\r\n");
                let start = close + 3;
                *pos = start + n;
                out[start..start + n].to_vec()
            }
            _ => {
                let end = *pos
                    + out[*pos..]
                        .iter()
                        .position(|&b| b == b' ' || b == b'\n')
                        .unwrap();
                let s = out[*pos..end].to_vec();
                *pos = end;
                s
            }
        }
    }
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < out.len() {
        let key = item(out, &mut pos);
        assert_eq!(out[pos], b' ', "SHOW output at {pos}");
        pos += 1;
        let value = item(out, &mut pos);
        assert_eq!(out[pos], b'\n', "SHOW output at {pos}");
        pos += 1;
        records.push(Record { key, value });
    }
    records
}

fn show_keys(records: &[Record]) -> String {
    let keys: Vec<String> = records
        .iter()
        .take(8)
        .map(|r| String::from_utf8_lossy(&r.key[..r.key.len().min(24)]).into_owned())
        .collect();
    format!("{} records, first keys {keys:?}", records.len())
}

/// Asserts the parser and Cyrus agree record for record, in order.
#[track_caller]
fn assert_same(ours: &[Record], cyrus: &[Record], what: &str) {
    assert_eq!(
        ours.len(),
        cyrus.len(),
        "{what}: ours {} / cyrus {}",
        show_keys(ours),
        show_keys(cyrus)
    );
    for (i, (a, b)) in ours.iter().zip(cyrus).enumerate() {
        assert!(
            a == b,
            "{what}: record {i} differs: ours key {:?} ({} byte value), cyrus key {:?} ({} byte value)",
            String::from_utf8_lossy(&a.key[..a.key.len().min(40)]),
            a.value.len(),
            String::from_utf8_lossy(&b.key[..b.key.len().min(40)]),
            b.value.len()
        );
    }
}

fn bytes_of(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `bytes` as a new file the cyrus user can open (for handing copies to cyr_dbtool).
fn write_for_cyrus(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    if let Some((uid, gid)) = cyrus_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// A workload exercising what the formats must get right, applied to `model` as well.
/// Returns keys that exist afterwards, for later edits.
fn heavy_workload(
    tool: &DbTool,
    file: &Path,
    backend: &str,
    model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) {
    let mut rng = Rng::new(0x5eed);
    // Many keys in one transaction: tall skiplists, and a skiplist checkpoint afterwards.
    let mut s = Script::default();
    s.line("BEGIN");
    for i in 0..1500u32 {
        let key = format!("key-{i:05}").into_bytes();
        let value = format!("value {i} {}", rng.next()).into_bytes();
        s.set(&key, &value);
        model.insert(key, value);
    }
    s.line("COMMIT");
    tool.batch(file, backend, &s);

    // Binary keys and values, one auto-committed transaction each.
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let mut big = vec![0u8; 200 * 1024];
    for b in big.iter_mut() {
        *b = rng.next() as u8;
    }
    let long_key: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let binary: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"nul\0in\0key".to_vec(), b"tab\tlf\ncr\r".to_vec()),
        (b"\xff\xfe high bytes".to_vec(), all_bytes.clone()),
        (b"\x01\x1f\x1d control".to_vec(), b"".to_vec()),
        (all_bytes.clone(), b"every byte as key".to_vec()),
        (b"big-value".to_vec(), big),
        (long_key, b"a key longer than 65535 bytes".to_vec()),
    ];
    let mut s = Script::default();
    for (k, v) in &binary {
        s.set(k, v);
        model.insert(k.clone(), v.clone());
    }
    tool.batch(file, backend, &s);

    // Deletes, replacements, and an aborted transaction.
    let mut s = Script::default();
    for i in (0..1500u32).step_by(7) {
        let key = format!("key-{i:05}").into_bytes();
        s.delete(&key);
        model.remove(&key);
    }
    for i in (3..1500u32).step_by(11) {
        let key = format!("key-{i:05}").into_bytes();
        let value = format!("replaced {i}").into_bytes();
        s.set(&key, &value);
        model.insert(key, value);
    }
    s.delete(b"nul\0in\0key");
    model.remove(b"nul\0in\0key".as_slice());
    s.line("BEGIN");
    s.set(b"aborted", b"never visible");
    s.delete(b"key-00001");
    s.line("ABORT");
    tool.batch(file, backend, &s);
}

fn model_records(model: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Record> {
    model
        .iter()
        .map(|(k, v)| Record {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

fn sorted(mut records: Vec<Record>) -> Vec<Record> {
    records.sort_by(|a, b| a.key.cmp(&b.key));
    records
}

/// twoskip: many keys, binary data, long keys and values, deletes, replaces and an abort.
#[test]
fn twoskip_matches_cyr_dbtool() {
    let server = start_server();
    let tool = DbTool::new(&server);
    let file = tool.path("mp-twoskip.db");
    let mut model = BTreeMap::new();
    heavy_workload(&tool, &file, "twoskip", &mut model);

    let bytes = bytes_of(&file);
    assert_eq!(cyrusdb::detect(&bytes), Some(DbFormat::Twoskip));
    let ours = cyrusdb::parse(&bytes).unwrap();
    assert_same(&ours, &tool.show(&file, "twoskip"), "twoskip vs cyr_dbtool");
    // twoskip's order is plain byte order, so the model agrees in order too.
    assert_same(&ours, &model_records(&model), "twoskip vs model");
    assert_same(
        &cyrusdb::twoskip::parse(&bytes).unwrap(),
        &ours,
        "format-specific entry point",
    );
    assert_same(&cyrusdb::read(&file).unwrap(), &ours, "read()");
    // The long key really used the 64-bit length escape.
    let long = bytes.windows(8).any(|w| w == 70_000u64.to_be_bytes());
    assert!(long, "no 64-bit key length in the file");
}

/// A twoskip writer killed mid-transaction (`cyr_dbtool damage`) leaves a dirty header and an
/// uncommitted tail: we see exactly the committed records, and so does Cyrus after recovery.
#[test]
fn twoskip_interrupted_transaction() {
    let server = start_server();
    let tool = DbTool::new(&server);
    let file = tool.path("mp-crash.db");
    let mut s = Script::default();
    for i in 0..300u32 {
        s.set(format!("k{i:04}").as_bytes(), format!("v{i}").as_bytes());
    }
    tool.batch(&file, "twoskip", &s);
    let (ok, _, _) = tool.run(&file, "twoskip", "repack", b"");
    assert!(ok);
    let committed = cyrusdb::parse(&bytes_of(&file)).unwrap();
    assert_eq!(committed.len(), 300);

    // A real transaction that rewrites pointers in place, committed ...
    let before = bytes_of(&file);
    let mut s = Script::default();
    s.line("BEGIN");
    for i in (0..300u32).step_by(3) {
        s.delete(format!("k{i:04}").as_bytes());
    }
    for i in 0..40u32 {
        s.set(format!("k{:04}x", i * 7).as_bytes(), b"new");
    }
    s.line("COMMIT");
    tool.batch(&file, "twoskip", &s);
    let after = bytes_of(&file);
    let header_of = |b: &[u8]| cyrusdb::twoskip::header(b).unwrap();
    assert_eq!(
        header_of(&before).generation,
        header_of(&after).generation,
        "no repack between the two states"
    );
    // ... then put back the old header as a crash before the final header write leaves it:
    // old current_size, DIRTY set (the first append dirtied it), CRC valid.
    let mut crashed = after.clone();
    crashed[..64].copy_from_slice(&before[..64]);
    crashed[56..60].copy_from_slice(&1u32.to_be_bytes());
    let crc = crc32fast::hash(&crashed[..60]);
    crashed[60..64].copy_from_slice(&crc.to_be_bytes());
    assert_same(
        &cyrusdb::parse(&crashed).unwrap(),
        &committed,
        "header rolled back",
    );
    // Cut anywhere from the committed size on: still the committed records.
    let committed_size = header_of(&before).current_size as usize;
    for cut in [
        committed_size,
        committed_size + 1,
        (committed_size + after.len()) / 2,
    ] {
        assert_same(&cyrusdb::parse(&crashed[..cut]).unwrap(), &committed, "cut");
    }
    // Cyrus's recovery agrees.
    let copy = tool.path("mp-crash-copy.db");
    write_for_cyrus(&copy, &crashed);
    assert_same(
        &tool.show(&copy, "twoskip"),
        &committed,
        "cyrus after recovery",
    );

    // cyr_dbtool's own crash: starts a transaction, appends, and dies.
    let damaged = tool.path("mp-damage.db");
    write_for_cyrus(&damaged, &after);
    let (ok, _, _) = tool.run(&damaged, "twoskip", "damage", b"");
    assert!(!ok, "damage is expected to die mid-transaction");
    let damaged_bytes = bytes_of(&damaged);
    let h = header_of(&damaged_bytes);
    assert!(h.is_dirty() && (h.current_size as usize) < damaged_bytes.len());
    let expected = cyrusdb::parse(&after).unwrap();
    let ours = cyrusdb::parse(&damaged_bytes).unwrap();
    assert_same(&ours, &expected, "after damage");
    assert!(!ours.iter().any(|r| r.key == b"INVALID"));
    assert_same(
        &tool.show(&damaged, "twoskip"),
        &expected,
        "cyrus recovered damage",
    );
}

/// skiplist: same workload; the INORDER section comes from the checkpoint after the big
/// transaction, the later changes stay in the log.
#[test]
fn skiplist_matches_cyr_dbtool() {
    let server = start_server();
    let tool = DbTool::new(&server);
    let file = tool.path("mp-skiplist.db");
    let mut model = BTreeMap::new();
    heavy_workload(&tool, &file, "skiplist", &mut model);

    let bytes = bytes_of(&file);
    assert_eq!(cyrusdb::detect(&bytes), Some(DbFormat::Skiplist));
    // Both sections present: INORDER nodes (type 1) right after the dummy, and a log.
    let max_level = u32::from_be_bytes(bytes[28..32].try_into().unwrap()) as usize;
    let first_node = 48 + 12 + 4 * max_level + 4;
    assert_eq!(
        bytes[first_node..first_node + 4],
        [0, 0, 0, 1],
        "INORDER after the dummy"
    );
    let log_start = u32::from_be_bytes(bytes[40..44].try_into().unwrap()) as usize;
    assert!(
        log_start > first_node && log_start < bytes.len(),
        "a log after the INORDER nodes"
    );
    let ours = cyrusdb::parse(&bytes).unwrap();
    assert_same(
        &ours,
        &tool.show(&file, "skiplist"),
        "skiplist vs cyr_dbtool",
    );
    // skiplist sorts bytes as signed chars: same set as the model, different order.
    assert_same(
        &sorted(ours.clone()),
        &model_records(&model),
        "skiplist vs model",
    );
    assert_ne!(
        ours,
        model_records(&model),
        "signed order differs from byte order"
    );

    // Crash before COMMIT: a transaction's pointer rewrites are on disk, its COMMIT is not.
    let before = bytes;
    let mut s = Script::default();
    s.line("BEGIN");
    for i in [2u32, 3, 4, 5, 6, 9, 10, 12, 13, 1498, 1499] {
        s.delete(format!("key-{i:05}").as_bytes());
    }
    s.set(b"key-00003", b"re-added");
    s.set(b"key-00008", b"replaced in the crashed txn");
    s.set(b"key-00002a", b"new");
    s.line("COMMIT");
    tool.batch(&file, "skiplist", &s);
    let after = bytes_of(&file);
    assert!(after.len() > before.len() && after.ends_with(&[0, 0, 0, 255]));
    assert_eq!(after[40..48], before[40..48], "no checkpoint in between");
    let uncommitted = &after[..after.len() - 4];
    let expected = cyrusdb::parse(&before).unwrap();
    assert_same(
        &cyrusdb::parse(uncommitted).unwrap(),
        &expected,
        "crash before COMMIT",
    );
    // Until recovery runs, Cyrus's own readers follow the in-place pointers and see the
    // uncommitted state. After a crash, the restart's `ctl_cyrusdb -r` makes every later open
    // recover; a last-recovery stamp of 0 in the copy's header does the same here.
    let copy = tool.path("mp-skiplist-crash.db");
    write_for_cyrus(&copy, uncommitted);
    let dirty_read = tool.show(&copy, "skiplist");
    assert_same(
        &dirty_read,
        &cyrusdb::parse(&after).unwrap(),
        "cyrus before recovery",
    );
    let mut stale = uncommitted.to_vec();
    stale[44..48].copy_from_slice(&[0; 4]);
    write_for_cyrus(&copy, &stale);
    assert_same(
        &tool.show(&copy, "skiplist"),
        &expected,
        "cyrus after recovery",
    );
    assert!(
        bytes_of(&copy).len() < stale.len(),
        "recovery truncated the partial transaction"
    );

    let damaged = tool.path("mp-skiplist-damage.db");
    write_for_cyrus(&damaged, &after);
    let (ok, _, _) = tool.run(&damaged, "skiplist", "damage", b"");
    assert!(!ok, "damage is expected to die mid-transaction");
    let expected = cyrusdb::parse(&after).unwrap();
    assert_same(
        &cyrusdb::parse(&bytes_of(&damaged)).unwrap(),
        &expected,
        "after damage",
    );
}

/// Databases opened with Cyrus's mailbox sort order (as 2.x did for mailboxes.db) keep that
/// order, also when an interrupted transaction has to be undone: the reader follows the list,
/// it does not re-sort.
#[test]
fn skiplist_mailbox_order_survives_a_crash() {
    let server = start_server();
    let mut tool = DbTool::new(&server);
    tool.mbox_sort = true;
    let file = tool.path("mp-mboxsort.db");
    let names = [
        "user.a",
        "user.a-b",
        "user.a.b",
        "user.a.b.c",
        "user.a0",
        "user.aa",
        "user.b",
        "user.b-x",
        "user.b.x",
        "user.b.x.y",
        "user.b.y",
        "user.c",
        "user.c.d-e",
        "user.c.d.e",
    ];
    let mut s = Script::default();
    s.line("BEGIN");
    for (i, name) in names.iter().enumerate() {
        s.set(name.as_bytes(), format!("0 default {i}").as_bytes());
    }
    s.line("COMMIT");
    tool.batch(&file, "skiplist", &s);
    let before = bytes_of(&file);
    let ours = cyrusdb::parse(&before).unwrap();
    assert_same(&ours, &tool.show(&file, "skiplist"), "mailbox order");
    let signed_order = {
        let mut v = ours.clone();
        v.sort_by_key(|r| r.key.iter().map(|&b| b as i8).collect::<Vec<_>>());
        v
    };
    assert_ne!(
        ours, signed_order,
        "mailbox order differs from the default order"
    );

    let mut s = Script::default();
    s.line("BEGIN");
    for name in [
        "user.a.b",
        "user.a-b",
        "user.b.x",
        "user.b-x",
        "user.b.x.y",
        "user.c.d.e",
    ] {
        s.delete(name.as_bytes());
    }
    s.set(b"user.a.c", b"new").set(b"user.c.d-e", b"replaced");
    s.line("COMMIT");
    tool.batch(&file, "skiplist", &s);
    let after = bytes_of(&file);
    assert!(after.ends_with(&[0, 0, 0, 255]) && after.len() > before.len());
    let mut crashed = after[..after.len() - 4].to_vec();
    let recovered = cyrusdb::parse(&crashed).unwrap();
    assert_same(&recovered, &ours, "crash undone, mailbox order kept");
    crashed[44..48].copy_from_slice(&[0; 4]);
    let copy = tool.path("mp-mboxsort-crash.db");
    write_for_cyrus(&copy, &crashed);
    assert_same(
        &tool.show(&copy, "skiplist"),
        &recovered,
        "cyrus recovery agrees",
    );
}

/// flat: Cyrus's escaping of NUL, TAB, CR, LF and 0xFF.
#[test]
fn flat_matches_cyr_dbtool() {
    let server = start_server();
    let tool = DbTool::new(&server);
    let file = tool.path("mp-flat.sub");
    let mut model = BTreeMap::new();
    let mut s = Script::default();
    let all_bytes: Vec<u8> = (1..=255u8).collect();
    for (k, v) in [
        (b"Nuser\x1falice\x1fSent".to_vec(), b"".to_vec()),
        (b"tab\tkey".to_vec(), b"lf\nvalue\r\n".to_vec()),
        (b"nul\0key".to_vec(), b"\xff\xff".to_vec()),
        (all_bytes.clone(), all_bytes.clone()),
        (b"gone".to_vec(), b"x".to_vec()),
    ] {
        s.set(&k, &v);
        model.insert(k, v);
    }
    s.delete(b"gone");
    model.remove(b"gone".as_slice());
    tool.batch(&file, "flat", &s);
    let bytes = bytes_of(&file);
    assert_eq!(cyrusdb::detect(&bytes), Some(DbFormat::Flat));
    assert!(
        bytes.windows(2).any(|w| w == [0xFF, 0x80]),
        "NUL escaped on disk"
    );
    let ours = cyrusdb::parse(&bytes).unwrap();
    assert_same(&ours, &tool.show(&file, "flat"), "flat vs cyr_dbtool");
    assert_same(&sorted(ours), &model_records(&model), "flat vs model");
}

/// Every database a running 3.6 server keeps (mailboxes.db, annotations, per-mailbox
/// cyrus.annotations, subscriptions, seen, ...) parses to what cyr_dbtool shows.
#[test]
fn server_databases_match_cyr_dbtool() {
    for (label, opts) in [
        ("default", CyrusOptions::default()),
        (
            "skiplist",
            CyrusOptions::legacy()
                .with("mboxlist_db", "skiplist")
                .with("annotation_db", "skiplist")
                .with("seenstate_db", "skiplist")
                .with("subscription_db", "flat"),
        ),
    ] {
        let mut server = CyrusServer::start(opts);
        populate(&server);
        server.stop();
        let mailboxes = server.config_dir().join("mailboxes.db");
        let records = cyrusdb::read(&mailboxes).unwrap();
        let names: Vec<String> = records
            .iter()
            .filter(|r| r.key.first() == Some(&b'N'))
            .map(|r| String::from_utf8_lossy(&r.key[1..]).replace('\x1f', "/"))
            .collect();
        for want in [
            "user/alice",
            "user/alice/Sent",
            "user/alice/Archive/2019",
            "user/bob",
            "user/bob/Work",
            "user/carol",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{label}: {want} not in {names:?}"
            );
        }
        // 3.6 keeps an I<uniqueid> record per mailbox next to its N<name> record.
        let ids = records
            .iter()
            .filter(|r| r.key.first() == Some(&b'I'))
            .count();
        assert_eq!(ids, names.len(), "{label}");

        let checked = compare_all_databases(&server, label);
        assert!(
            checked.iter().any(|(p, _)| p.ends_with("mailboxes.db")),
            "{label}"
        );
        assert!(
            checked.iter().any(|(_, f)| *f == DbFormat::Flat),
            "{label}: no flat db seen"
        );
        let expected_format = if label == "default" {
            DbFormat::Twoskip
        } else {
            DbFormat::Skiplist
        };
        assert!(
            checked
                .iter()
                .any(|(p, f)| p.ends_with("mailboxes.db") && *f == expected_format),
            "{label}: mailboxes.db format"
        );
        assert!(checked.len() >= 5, "{label}: only {checked:?}");
    }
}

fn populate(server: &CyrusServer) {
    for user in ["alice", "bob", "carol"] {
        server.create_user(user);
    }
    let mut alice = server.imap("alice");
    for folder in ["Sent", "Archive", "Archive/2019", "Café & Crème"] {
        alice.create(folder);
        alice.subscribe(folder);
    }
    alice.set_metadata("INBOX", "/private/comment", Some("alice's inbox"));
    alice.set_metadata("Sent", "/shared/comment", Some("shared note"));
    alice.raw("SETACL INBOX bob lrs");
    alice.logout();
    let mut bob = server.imap("bob");
    bob.create("Work");
    bob.subscribe("Work");
    bob.subscribe("Other Users/alice");
    bob.logout();
    server.lmtp_deliver(
        "sender@example.org",
        &["alice", "bob"],
        &crate::cyrus::crlf(b"From: s@example.org\nSubject: hi\n\nbody\n"),
    );
    // bob reads alice's INBOX: his \Seen for it lives in his seen db.
    let mut bob = server.imap("bob");
    bob.select("Other Users/alice");
    bob.uid_store("1", "+FLAGS", &["\\Seen"]);
    bob.logout();
    let mut admin = server.admin();
    admin.set_metadata("", "/shared/comment", Some("server note"));
    admin.logout();
}

/// Compares every cyrusdb file under the server's directories with cyr_dbtool's view.
fn compare_all_databases(server: &CyrusServer, label: &str) -> Vec<(PathBuf, DbFormat)> {
    let tool = DbTool::new(server);
    let mut checked = Vec::new();
    let mut files = Vec::new();
    collect_files(server.base_dir(), &mut files);
    for path in files {
        let bytes = bytes_of(&path);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let format = match cyrusdb::detect(&bytes) {
            Some(DbFormat::Flat) if name.ends_with(".sub") || name == "sub.db" => DbFormat::Flat,
            Some(DbFormat::Flat) | None => continue,
            Some(f) => f,
        };
        let backend = match format {
            DbFormat::Twoskip => "twoskip",
            DbFormat::Skiplist => "skiplist",
            DbFormat::Flat => "flat",
        };
        // cyr_dbtool may run recovery on a file it opens: give it a copy.
        let copy = tool.path("mp-compare.db");
        write_for_cyrus(&copy, &bytes);
        let ours =
            cyrusdb::parse(&bytes).unwrap_or_else(|e| panic!("{label}: {}: {e}", path.display()));
        let what = format!("{label}: {}", path.display());
        assert_same(&ours, &tool.show(&copy, backend), &what);
        std::fs::remove_file(&copy).unwrap();
        checked.push((path, format));
    }
    checked
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            collect_files(&entry.path(), out);
        } else if ty.is_file() {
            out.push(entry.path());
        }
    }
}

/// A server whose config lets cyr_dbtool take values over the default 128 KiB literal limit.
fn start_server() -> CyrusServer {
    CyrusServer::start(CyrusOptions::default().with("maxliteral", "4194304"))
}

/// Small Cyrus-made files for the damage sweeps: a twoskip and a skiplist with a few dozen
/// records, deletes and a replace.
fn small_files(tool: &DbTool) -> (Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    for backend in ["twoskip", "skiplist"] {
        let file = tool.path(&format!("mp-small-{backend}.db"));
        let mut s = Script::default();
        for i in 0..40u32 {
            s.set(
                format!("k{i:02}").as_bytes(),
                format!("value {i}").as_bytes(),
            );
        }
        s.delete(b"k05")
            .delete(b"k17")
            .set(b"k20", b"replaced")
            .set(b"\xffbin\0", b"\0\t\n");
        tool.batch(&file, backend, &s);
        out.push(bytes_of(&file));
    }
    let skiplist = out.pop().unwrap();
    (out.pop().unwrap(), skiplist)
}

/// Every prefix of a Cyrus-made file: never a panic; a twoskip prefix is readable exactly when
/// it still holds the committed size, and then it is the whole database.
#[test]
fn truncation_sweep() {
    let server = start_server();
    let (twoskip, skiplist) = small_files(&DbTool::new(&server));
    let full = cyrusdb::parse(&twoskip).unwrap();
    let committed = cyrusdb::twoskip::header(&twoskip).unwrap().current_size as usize;
    assert_eq!(committed, twoskip.len());
    for cut in 0..=twoskip.len() {
        let result = cyrusdb::parse(&twoskip[..cut]);
        match cut {
            0 => assert_eq!(result, Ok(vec![])), // an empty file is an empty flat db
            c if c < committed => {
                let err = result.unwrap_err();
                assert!(err.offset <= cut as u64, "cut {cut}: {err}");
            }
            _ => assert_eq!(result.as_ref(), Ok(&full), "cut {cut}"),
        }
    }
    let full = cyrusdb::parse(&skiplist).unwrap();
    assert_eq!(full.len(), 39);
    for cut in 0..=skiplist.len() {
        match cyrusdb::parse(&skiplist[..cut]) {
            // A prefix that parses is an earlier committed state: a subset of the records.
            Ok(records) => assert!(
                records.iter().all(|r| full.contains(r)
                    || r.key == b"k05"
                    || r.key == b"k17"
                    || r.key == b"k20"),
                "cut {cut}"
            ),
            Err(err) => assert!(err.offset <= cut as u64, "cut {cut}: {err}"),
        }
    }
    assert_eq!(cyrusdb::parse(&skiplist).unwrap(), full);
}

/// One flipped bit anywhere in a small twoskip: never a panic; damage inside what is read is
/// reported (mostly as a CRC mismatch), and a flip the reader does not look at changes nothing.
#[test]
fn bit_flip_sweep() {
    let server = start_server();
    let tool = DbTool::new(&server);
    let (twoskip, skiplist) = small_files(&tool);
    let full = cyrusdb::parse(&twoskip).unwrap();
    let mut crc_reports = 0;
    let mut errors = 0;
    for i in 0..twoskip.len() {
        for bit in [0u8, 7] {
            let mut damaged = twoskip.clone();
            damaged[i] ^= 1 << bit;
            match cyrusdb::parse(&damaged) {
                Ok(records) => assert_eq!(
                    records, full,
                    "byte {i} bit {bit} changed the data silently"
                ),
                Err(err) => {
                    errors += 1;
                    if err.detail.contains("CRC") {
                        crc_reports += 1;
                    }
                    assert!((err.offset as usize) < twoskip.len(), "byte {i}: {err}");
                }
            }
        }
        // Every header byte is checked.
        if i < 64 {
            let mut damaged = twoskip.clone();
            damaged[i] ^= 0x10;
            assert!(cyrusdb::parse(&damaged).is_err(), "header byte {i}");
        }
    }
    assert!(errors > twoskip.len(), "only {errors} flips detected");
    assert!(
        crc_reports * 10 > errors * 9,
        "{crc_reports} of {errors} errors name a CRC"
    );
    // The skiplist has no checksums: flips must simply never panic.
    for i in 0..skiplist.len() {
        let mut damaged = skiplist.clone();
        damaged[i] ^= 0x81;
        let _ = cyrusdb::parse(&damaged);
    }
}
