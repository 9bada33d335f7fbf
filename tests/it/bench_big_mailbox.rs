//! Issue 19 ("Scale"): one Cyrus mailbox of a million messages, for `bench/big-mailbox.sh`. Not
//! tests, so ignored. Delivering a million messages over LMTP would take hours, so a real Cyrus
//! delivers a varied sample and the rest are copies of the sample's files under new UIDs, each
//! made unique; Cyrus's own `reconstruct` then indexes them, so every byte of cyrus.index and
//! cyrus.cache is Cyrus's, and the count is checked over IMAP before the spool is kept.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cyrus::{cyrus_ids, CyrusOptions, CyrusServer, Lmtp};
use crate::util::Rng;

const USER: &str = "big";

/// The one message `bench/big-mailbox.sh` searches for with `find --subject`; its copies make
/// MESSAGES / SAMPLE hits.
const NEEDLE_SUBJECT: &str = "Invoice 4711 for March";
const NEEDLE_INDEX: usize = 7;

/// STORE ranges per command: a million-record STORE in one command outlasts the fixture's 30 s
/// read timeout.
const STORE_CHUNK: u32 = 50_000;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .map(|v| {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{key}={v}"))
        })
        .unwrap_or(default)
}

/// Builds the big-mailbox spool (`MAILPACK_BENCH_SPOOL`): user `big` with INBOX holding exactly
/// `MAILPACK_BENCH_MESSAGES` messages (default 1,000,000) and an Archive folder with a twentieth
/// of the sample. `MAILPACK_BENCH_SAMPLE` (default 2,000) messages are delivered over LMTP; the
/// rest of INBOX are their files copied under new UIDs, each with an `X-Copy-Of:` line and its
/// own Message-ID (so every copy has its own SHA-1 and Cyrus GUID), dated over ten years by
/// mtime, which reconstruct takes as the internal date. 99% of INBOX ends up \Seen, none
/// \Flagged (`change_big_mailbox_flags` flags 1% and counts them).
#[test]
#[ignore]
fn make_big_mailbox_spool() {
    let dest = PathBuf::from(std::env::var("MAILPACK_BENCH_SPOOL").expect("MAILPACK_BENCH_SPOOL"));
    let messages = env_usize("MAILPACK_BENCH_MESSAGES", 1_000_000);
    let sample = env_usize("MAILPACK_BENCH_SAMPLE", 2_000).clamp(1, messages);
    let started = Instant::now();
    let mut phase = Instant::now();
    let mut lap = |name: &str| {
        eprintln!(
            "big mailbox: {name}: {:.1} s",
            phase.elapsed().as_secs_f64()
        );
        phase = Instant::now();
    };

    let mut server = CyrusServer::start(CyrusOptions::default());
    server.create_user(USER);
    let mut imap = server.imap(USER);
    imap.create("Archive");
    // Lets LMTP file `big+Archive` straight into the folder.
    imap.ok("SETACL Archive anyone p");
    imap.subscribe("INBOX");
    imap.subscribe("Archive");
    imap.logout();
    let archive_share = sample / 20;
    let workers = 2;
    std::thread::scope(|scope| {
        for w in 0..workers {
            let server = &server;
            scope.spawn(move || {
                let mut lmtp = Lmtp::connect(server.lmtp_addr());
                let rcpt_archive = format!("{USER}+Archive");
                for i in (w..sample + archive_share).step_by(workers) {
                    let mut rng = Rng::new(i as u64 + 1);
                    let data = sample_message(&mut rng, i);
                    let rcpt = if i < sample { USER } else { &rcpt_archive };
                    for result in lmtp.deliver("bench@example.org", &[rcpt], &data) {
                        result.unwrap_or_else(|e| {
                            panic!("message {i}: {e}\n{}", server.diagnostics())
                        });
                    }
                }
                lmtp.quit();
            });
        }
    });
    let mut imap = server.imap(USER);
    let info = imap.select("INBOX");
    assert_eq!(info.exists as usize, sample, "INBOX after LMTP");
    // A few answered and a few deleted-but-kept, as a used mailbox has; \Flagged stays unset so
    // that the flag-change benchmark can count exactly what it flagged.
    let answered: Vec<String> = (1..info.uidnext)
        .step_by(13)
        .map(|u| u.to_string())
        .collect();
    imap.uid_store(&answered.join(","), "+FLAGS.SILENT", &["\\Answered"]);
    let first_new_uid = info.uidnext;
    imap.logout();
    lap(&format!(
        "delivered {sample} to INBOX and {archive_share} to Archive over LMTP"
    ));

    server.stop();
    let inbox = server.mailbox_path(&server.user_mailbox(USER));
    let samples = read_samples(&inbox, first_new_uid);
    assert_eq!(
        samples.len(),
        sample,
        "message files in {}",
        inbox.display()
    );
    let copies = messages - sample;
    let bytes = write_copies(&inbox, &samples, first_new_uid, copies);
    lap(&format!(
        "wrote {copies} copies ({:.2} GB) into {}",
        bytes as f64 / 1e9,
        inbox.display()
    ));

    let out = server.tool("reconstruct", &[&server.user_mailbox(USER)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "big mailbox: reconstruct exited {}, {} stdout lines (first: {:?}), stderr: {:?}",
        out.status,
        stdout.lines().count(),
        stdout.lines().take(3).collect::<Vec<_>>(),
        stderr.lines().take(5).collect::<Vec<_>>()
    );
    assert!(
        out.status.success(),
        "reconstruct failed\n{}",
        server.diagnostics()
    );
    lap("reconstruct");

    server.restart();
    lap("restart (the fixture chowns the tree)");
    let mut imap = server.imap(USER);
    let status = imap.status("INBOX", "MESSAGES UIDNEXT");
    eprintln!("big mailbox: STATUS INBOX {status:?}");
    assert_eq!(
        status["MESSAGES"],
        messages as u64,
        "INBOX messages after reconstruct\n{}",
        server.diagnostics()
    );
    let uidnext = status["UIDNEXT"] as u32;
    assert_eq!(uidnext as usize, first_new_uid as usize + copies);
    imap.select("INBOX");
    // Cyrus must serve exactly the bytes written, at the date given.
    for uid in [
        first_new_uid,
        first_new_uid + copies as u32 / 2,
        uidnext - 1,
    ] {
        if uid < first_new_uid || copies == 0 {
            continue;
        }
        let file = std::fs::read(inbox.join(format!("{uid}."))).unwrap();
        assert!(imap.fetch_body(uid) == file, "uid {uid}: IMAP body differs");
        let date = imap.raw(&format!("UID FETCH {uid} (INTERNALDATE)"));
        eprintln!("big mailbox: uid {uid}: {} bytes, {date:?}", file.len());
    }
    let read_upto = (uidnext - 1).saturating_sub(messages as u32 / 100);
    let mut from = 1;
    while from <= read_upto {
        let to = (from + STORE_CHUNK - 1).min(read_upto);
        imap.ok(&format!("UID STORE {from}:{to} +FLAGS.SILENT (\\Seen)"));
        from = to + 1;
    }
    imap.logout();
    lap(&format!("STATUS checked; \\Seen set on uids 1:{read_upto}"));

    server.stop();
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    // copy_spool copies file by file, which took 139 s for 95,000 messages here: INBOX's
    // directory is moved out of its way and into the copy by rename instead (same file system).
    let parked = dest.with_extension("inbox-parked");
    let _ = std::fs::remove_dir_all(&parked);
    let inbox_in_dest = dest.join(inbox.strip_prefix(server.base_dir()).unwrap());
    let moved = match std::fs::rename(&inbox, &parked) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("big mailbox: cannot move INBOX aside ({e}); copying it");
            false
        }
    };
    crate::spool_view::copy_spool(server.base_dir(), &dest);
    if moved {
        std::fs::rename(&parked, &inbox_in_dest).unwrap();
        // As copy_spool leaves everything else.
        let status = std::process::Command::new("chown")
            .args(["-R", "root:root"])
            .arg(&inbox_in_dest)
            .status()
            .unwrap();
        assert!(status.success());
    }
    drop(server);
    lap(&format!("copied the spool to {}", dest.display()));
    eprintln!(
        "big mailbox: {messages} messages in INBOX of {USER}, spool {}, total {:.1} s",
        dest.display(),
        started.elapsed().as_secs_f64()
    );
}

/// The sample's message files (`<uid>.` below `first_new_uid`), by uid, each split where a copy
/// gets its own Message-ID.
fn read_samples(inbox: &Path, first_new_uid: u32) -> Vec<(u32, Vec<u8>, usize)> {
    let mut out = Vec::new();
    for uid in 1..first_new_uid {
        let data = match std::fs::read(inbox.join(format!("{uid}."))) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}/{uid}.: {e}", inbox.display()),
        };
        let head_end = find(&data, b"\r\n\r\n").expect("a header block");
        let at = find(&data[..head_end], b"\r\nMessage-ID: <").expect("a Message-ID") + 15;
        out.push((uid, data, at));
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes copy k of sample k % len as `<first_new_uid + k>.`, owned by the user Cyrus runs as,
/// with an mtime rising with the uid over ten years (reconstruct's internal date). No fsync:
/// the spool is rebuilt if the machine dies. Returns the bytes written.
fn write_copies(
    inbox: &Path,
    samples: &[(u32, Vec<u8>, usize)],
    first_new_uid: u32,
    copies: usize,
) -> u64 {
    let ids = cyrus_ids();
    let span = 10 * 365 * 86_400u64;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let first_date = now - span - 86_400;
    let workers = 2;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    let mut buf = Vec::new();
                    let mut bytes = 0u64;
                    for k in (w..copies).step_by(workers) {
                        let (src_uid, data, at) = &samples[k % samples.len()];
                        let uid = first_new_uid as usize + k;
                        buf.clear();
                        write!(buf, "X-Copy-Of: uid {src_uid}, copy {k}\r\n").unwrap();
                        buf.extend_from_slice(&data[..*at]);
                        write!(buf, "c{k}.").unwrap();
                        buf.extend_from_slice(&data[*at..]);
                        let path = inbox.join(format!("{uid}."));
                        let mut f = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&path)
                            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                        if let Some((u, g)) = ids {
                            std::os::unix::fs::fchown(&f, Some(u), Some(g)).unwrap();
                        }
                        f.write_all(&buf).unwrap();
                        let date = first_date + span * k as u64 / copies as u64;
                        f.set_modified(UNIX_EPOCH + Duration::from_secs(date))
                            .unwrap();
                        bytes += buf.len() as u64;
                    }
                    bytes
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "I",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "meeting",
    "invoice",
    "attached",
    "please",
    "regards",
    "tomorrow",
    "project",
    "review",
    "budget",
    "quarterly",
    "report",
    "deadline",
    "server",
    "mailbox",
    "backup",
    "schedule",
    "customer",
    "order",
    "shipping",
    "account",
    "password",
    "reset",
    "thanks",
    "hello",
    "team",
    "update",
    "release",
    "notes",
    "agenda",
    "minutes",
];

/// Senders, some with RFC 2047 names, as `find --from` has to decode them.
const FROM: &[&str] = &[
    "Alice Martin <alice@example.com>",
    "Bob Example <bob@example.net>",
    "=?UTF-8?Q?Jos=C3=A9_Garc=C3=ADa?= <jose@example.es>",
    "=?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.de>",
    "Carol Smith <carol@example.org>",
    "noreply@shop.example.com",
    "Dave Jones <dave@example.co.uk>",
    "\"Support Team\" <support@vendor.example>",
    "Erin Lee <erin@example.com>",
    "newsletter@lists.example.org",
];

const MONTHS: &[&str] = &[
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn uniform(rng: &mut Rng) -> f64 {
    (rng.next() >> 11) as f64 / (1u64 << 53) as f64
}

/// Log-uniform in lo..hi, as message sizes are.
fn log_uniform(rng: &mut Rng, lo: f64, hi: f64) -> usize {
    (lo.ln() + uniform(rng) * (hi.ln() - lo.ln())).exp() as usize
}

fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn text(rng: &mut Rng, size: usize) -> String {
    let mut out = String::with_capacity(size + 80);
    while out.len() < size {
        let n = 6 + rng.below(8) as usize;
        out.push_str(&words(rng, n));
        out.push_str("\r\n");
    }
    out
}

fn base64_lines(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len() * 4 / 3 + data.len() / 38 + 8);
    for line in data.chunks(57) {
        for c in line.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                s.push(if i <= c.len() {
                    T[(n >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        s.push_str("\r\n");
    }
    s
}

/// Sample message `i`, deterministic from `rng`. Sizes are kept below real mail's (text bodies
/// 1-12 KB log-uniform, 1% with a 20-200 KB incompressible attachment, ~6 KB on average) so
/// that a million of them, with the archives, restic's repository and a restore beside them,
/// fit the benchmark machine's disk.
fn sample_message(rng: &mut Rng, i: usize) -> Vec<u8> {
    let (from, subject) = if i == NEEDLE_INDEX {
        (FROM[1].to_string(), NEEDLE_SUBJECT.to_string())
    } else {
        let from = FROM[rng.below(FROM.len() as u64) as usize].to_string();
        let subject = match rng.below(100) {
            0..=19 => format!("Re: {}", words(rng, 4)),
            20..=24 => format!("Fwd: {}", words(rng, 5)),
            25..=27 => format!(
                "=?UTF-8?Q?R=C3=A9union_{}?=",
                words(rng, 2).replace(' ', "_")
            ),
            _ => {
                let n = 3 + rng.below(5) as usize;
                words(rng, n)
            }
        };
        (from, subject)
    };
    let mut h = format!(
        "From: {from}\r\nTo: Big Mailbox <big@example.com>\r\nSubject: {subject}\r\n\
         Date: {} {} {} {:02}:{:02}:{:02} +0000\r\nMessage-ID: <{i}.{:x}@example.org>\r\n",
        1 + rng.below(28),
        MONTHS[rng.below(12) as usize],
        2016 + rng.below(11),
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.next() >> 16,
    );
    if rng.below(5) == 0 {
        h.push_str(&format!(
            "Cc: {}\r\n",
            FROM[rng.below(FROM.len() as u64) as usize]
        ));
    }
    if subject.starts_with("Re:") {
        h.push_str(&format!(
            "In-Reply-To: <{}.{:x}@example.org>\r\n",
            i / 2,
            rng.next() >> 20
        ));
    }
    if from.starts_with("newsletter") {
        h.push_str("List-Id: <news.lists.example.org>\r\nList-Unsubscribe: <mailto:leave@lists.example.org>\r\n");
    }
    h.push_str("MIME-Version: 1.0\r\n");
    let body_size = log_uniform(rng, 1_000.0, 12_000.0);
    let body = text(rng, body_size);
    let roll = rng.below(100);
    let msg = if roll == 0 {
        let att_size = log_uniform(rng, 20_000.0, 200_000.0);
        let att = rng.noise(att_size);
        format!(
            "{h}Content-Type: multipart/mixed; boundary=\"=_m{i}\"\r\n\r\n--=_m{i}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n--=_m{i}\r\n\
             Content-Type: application/pdf; name=\"scan-{i}.pdf\"\r\n\
             Content-Disposition: attachment; filename=\"scan-{i}.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}--=_m{i}--\r\n",
            base64_lines(&att)
        )
    } else if roll < 11 {
        let html = body.replace("\r\n", "</p>\r\n<p>");
        format!(
            "{h}Content-Type: multipart/alternative; boundary=\"=_a{i}\"\r\n\r\n--=_a{i}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n--=_a{i}\r\n\
             Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>{html}</p></body></html>\r\n\
             --=_a{i}--\r\n"
        )
    } else {
        format!("{h}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}")
    };
    msg.into_bytes()
}

/// The flag change of `bench/big-mailbox.sh`: a real Cyrus started on the spool copy
/// `MAILPACK_BENCH_SPOOL` sets \Flagged on `MAILPACK_BENCH_PERCENT` (default 1) percent of the
/// big user's INBOX, spread evenly, and the flagged count is checked. The copy's message files
/// may be hard links into the kept spool, so only the other files are handed to the cyrus user:
/// STORE never opens a message file.
#[test]
#[ignore]
fn change_big_mailbox_flags() {
    let spool = PathBuf::from(std::env::var("MAILPACK_BENCH_SPOOL").expect("MAILPACK_BENCH_SPOOL"));
    let percent = env_usize("MAILPACK_BENCH_PERCENT", 1).clamp(1, 100);
    let started = Instant::now();
    let mut server = crate::bench_spool::serve_kept_spool(&spool, true);
    let mut imap = server.imap(USER);
    let info = imap.select("INBOX");
    let step = 100 / percent as u32;
    let uids: Vec<u32> = (1..info.uidnext).step_by(step as usize).collect();
    for chunk in uids.chunks(2_000) {
        let set: Vec<String> = chunk.iter().map(u32::to_string).collect();
        imap.ok(&format!(
            "UID STORE {} +FLAGS.SILENT (\\Flagged)",
            set.join(",")
        ));
    }
    let count = imap.raw("SEARCH RETURN (COUNT) FLAGGED");
    let flagged: usize = count
        .iter()
        .find_map(|l| l.split("COUNT ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ESEARCH COUNT in {count:?}"));
    imap.logout();
    server.stop();
    eprintln!(
        "changed: \\Flagged on {} of {} messages (every {step}th uid), {flagged} flagged now, in {:.1} s",
        uids.len(),
        info.exists,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(flagged, uids.len(), "flagged count over IMAP");
}
