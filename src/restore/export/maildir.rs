//! Maildir++ (`--maildir`) as Dovecot 2.3 reads it (formats/restore.md, "Maildir for
//! Dovecot"): flags in the file names, keywords in `dovecot-keywords`, Cyrus's UIDs, UIDVALIDITY
//! and UIDNEXT in `dovecot-uidlist`, subscriptions in `subscriptions`. Never writes Dovecot's
//! own index files: Dovecot builds them from these on first access.

use std::path::{Path, PathBuf};

use super::{
    ensure_dir, finish_export, sync_tree, write_new, writer_pool, ExportMessage, WritePool,
};
use crate::archive::{EntryKind, EntryRecord};
use crate::error::Result;
use crate::guid::Guid;
use crate::restore::plan::{MessageTarget, Outcome, Request, RestorePlan, Target};
use crate::restore::select::{plan_copy, plan_message, read_message, CopySteps, Selected};
use crate::restore::{read_all, LostEntry};
use crate::spool::cyrusdb;
use crate::spool::file::USER_FILE_CAP;
use crate::spool::user::read_subscriptions;
use crate::store::Archive;

/// The Maildir++ folder name for a mailbox's levels under the INBOX (`None` for the INBOX
/// itself, which is the Maildir): `.` joins levels, each escaped by `dovecot_level`. `levels`
/// are the mailbox's raw levels (`safe_levels`); a folder named `INBOX` is `.INBOX`, apart from
/// the INBOX.
pub fn maildir_folder(levels: &[String], inbox: bool) -> Option<String> {
    if inbox {
        return None;
    }
    let escaped: Vec<String> = levels.iter().map(|l| dovecot_level(l)).collect();
    Some(format!(".{}", escaped.join(".")))
}

/// One level as Dovecot's listescape plugin (with `%` as its character) names it on disk, so
/// that Dovecot finds the folder under the name it lists: `%` and two lowercase hex digits for
/// `.` (which would split the level in Maildir++), `%` and `/`, and for a `~` starting the
/// level (Dovecot's `mailbox_list_escape_name_params`). Dovecot reads upper-case hex too, but
/// opens a folder by the name it writes, and file names are case-sensitive.
fn dovecot_level(level: &str) -> String {
    let mut out = String::with_capacity(level.len());
    for (i, c) in level.chars().enumerate() {
        match c {
            '.' | '%' | '/' => out.push_str(&format!("%{:02x}", c as u32)),
            '~' if i == 0 => out.push_str("%7e"),
            c => out.push(c),
        }
    }
    out
}

/// The most keywords one Maildir folder can carry: file names hold them as the letters `a`–`z`
/// (Dovecot's `MAILDIR_MAX_KEYWORDS`); Dovecot keeps any more only in its own index files,
/// which an export does not write.
pub const MAX_KEYWORDS: usize = 26;

/// Per folder: the keyword letters (`a` + position) Dovecot reads back through it.
pub const KEYWORDS_NAME: &str = "dovecot-keywords";
/// Per folder: UIDVALIDITY, next UID and each file's UID (Dovecot's uidlist, version 3).
pub const UIDLIST_NAME: &str = "dovecot-uidlist";
/// At the root: the subscribed folders (Dovecot's subscription file, version 2).
pub const SUBSCRIPTIONS_NAME: &str = "subscriptions";

/// The Maildir info letters for the system flags (they must be in ASCII order) and the
/// keyword letters Dovecot's `dovecot-keywords` file assigns.
fn maildir_info(flags: &[String], keywords: &[String]) -> String {
    let mut letters: Vec<char> = Vec::new();
    for f in flags {
        match f.as_str() {
            "\\Draft" => letters.push('D'),
            "\\Flagged" => letters.push('F'),
            "\\Answered" => letters.push('R'),
            "\\Seen" => letters.push('S'),
            "\\Deleted" => letters.push('T'),
            k => {
                if let Some(i) = keywords.iter().position(|x| x.eq_ignore_ascii_case(k)) {
                    // i < MAX_KEYWORDS, so the letter is one of a–z.
                    letters.push((b'a' + i as u8) as char);
                }
            }
        }
    }
    letters.sort_unstable();
    letters.dedup();
    letters.into_iter().collect()
}

/// The keywords a folder carries and those it cannot: ranked by how many of its messages have
/// them (ties by first appearance), the first `MAX_KEYWORDS` carried, so the fewest flags are
/// lost. Keywords are compared without case, as IMAP and Dovecot do.
fn rank_keywords<'m>(
    messages: impl Iterator<Item = ExportMessage<'m>>,
) -> (Vec<String>, Vec<(String, usize)>) {
    let mut counted: Vec<(String, usize)> = Vec::new();
    for m in messages {
        for f in m.flags.iter().filter(|f| !f.starts_with('\\')) {
            match counted.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(f)) {
                Some((_, n)) => *n += 1,
                None => counted.push((f.clone(), 1)),
            }
        }
    }
    // A stable sort keeps first appearance among equal counts.
    counted.sort_by_key(|c| std::cmp::Reverse(c.1));
    let rest = counted.split_off(counted.len().min(MAX_KEYWORDS));
    (counted.into_iter().map(|(k, _)| k).collect(), rest)
}

/// The `dovecot-uidlist` of a folder: version 3, `V<uidvalidity> N<next uid>`, then
/// `<uid> :<base name>` in ascending UID order. `files` must be sorted by UID.
fn uidlist(uidvalidity: u32, next_uid: u32, files: &[(u32, String)]) -> String {
    let mut out = format!("3 V{uidvalidity} N{next_uid}\n");
    for (uid, base) in files {
        out.push_str(&format!("{uid} :{base}\n"));
    }
    out
}

/// One subscription line of Dovecot's file: the folder's on-disk levels (as `maildir_folder`
/// writes them, without the leading dot) joined by TAB, each with TAB, CR, LF and 0x01 escaped
/// as Dovecot's `str_append_tabescaped` does.
fn subscription_line(levels: &[String], inbox: bool) -> String {
    if inbox {
        return "INBOX".into();
    }
    let escaped: Vec<String> = levels
        .iter()
        .map(|l| {
            let mut out = String::with_capacity(l.len());
            for c in dovecot_level(l).chars() {
                match c {
                    '\u{1}' => out.push_str("\u{1}1"),
                    '\t' => out.push_str("\u{1}t"),
                    '\r' => out.push_str("\u{1}r"),
                    '\n' => out.push_str("\u{1}n"),
                    c => out.push(c),
                }
            }
            out
        })
        .collect();
    escaped.join("\t")
}

/// Maildir: one folder (the INBOX is the Maildir itself), `cur/` files named
/// `<internaldate>.M<uid>U<uidvalidity>.mailpack,S=<size>:2,<info>`, mtime = internal date,
/// bytes as stored. Keywords become letters `a`–`z` listed in `dovecot-keywords` (the 26 most
/// used in the folder; the others are reported, `not_carried`). `finish` writes the uidlist of
/// the files written.
pub struct MaildirFolder {
    dir: PathBuf,
    keywords: Vec<String>,
    /// Keywords the folder cannot carry, with how many of its messages have each.
    pub not_carried: Vec<(String, usize)>,
    uidvalidity: u32,
    uidnext: u32,
    /// (uid, base name) of every file queued.
    files: Vec<(u32, String)>,
}

impl MaildirFolder {
    pub fn open<'m>(
        root: &Path,
        levels: &[String],
        inbox: bool,
        uidvalidity: u32,
        uidnext: u32,
        messages: impl Iterator<Item = ExportMessage<'m>>,
    ) -> Result<Self> {
        let mut dir = ensure_dir(root, &[])?;
        if let Some(folder) = maildir_folder(levels, inbox) {
            dir = ensure_dir(root, &[folder])?;
        }
        for sub in ["cur", "new", "tmp"] {
            ensure_dir(&dir, &[sub.to_string()])?;
        }
        let (keywords, not_carried) = rank_keywords(messages);
        if !keywords.is_empty() {
            let list: String = keywords
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{i} {k}\n"))
                .collect();
            write_new(&dir.join(KEYWORDS_NAME), list.as_bytes(), None)?;
        }
        Ok(MaildirFolder {
            dir,
            keywords,
            not_carried,
            uidvalidity,
            uidnext,
            files: Vec::new(),
        })
    }

    /// The part of a file's name before `:2,`, which Dovecot's uidlist names it by. `,S=` gives
    /// Dovecot the size without a stat.
    fn base_name(&self, m: &ExportMessage, size: usize) -> String {
        format!(
            "{}.M{}U{}.mailpack,S={size}",
            m.record.internaldate_ns.div_euclid(1_000_000_000),
            m.record.uid,
            m.uidvalidity,
        )
    }

    pub fn path_of(&self, m: &ExportMessage, size: usize) -> PathBuf {
        self.dir.join("cur").join(format!(
            "{}:2,{}",
            self.base_name(m, size),
            maildir_info(&m.flags, &self.keywords)
        ))
    }

    /// Queued to be written straight into `cur/`: a restore target has no mail client reading
    /// it meanwhile, so Maildir's `tmp/` hand-over buys nothing but a second directory update.
    pub fn write(&mut self, pool: &WritePool, m: &ExportMessage, bytes: Vec<u8>) -> Result<()> {
        self.files
            .push((m.record.uid, self.base_name(m, bytes.len())));
        pool.submit(
            self.path_of(m, bytes.len()),
            bytes,
            Some(m.record.internaldate_ns.div_euclid(1_000_000_000)),
        )
    }

    /// Writes the folder's `dovecot-uidlist`, so Dovecot shows Cyrus's UIDVALIDITY, UIDs and
    /// UIDNEXT instead of numbering the messages afresh (which would make every client that
    /// syncs by UID download the folder again). Its next UID is Cyrus's, not one past the last
    /// message exported, so a UID Cyrus gave an expunged message is never given again.
    /// Dovecot refuses a zero UIDVALIDITY; a folder with one gets no uidlist (Dovecot then
    /// numbers it itself).
    pub fn finish(mut self) -> Result<Vec<(String, usize)>> {
        if self.uidvalidity != 0 {
            self.files.sort_unstable();
            self.files.dedup_by_key(|f| f.0);
            // Dovecot's UIDs stop below 2^32 - 1; Cyrus's never reach it either.
            let max = self.files.last().map_or(0, |f| f.0);
            let next = self.uidnext.max(max.saturating_add(1));
            let list = uidlist(self.uidvalidity, next, &self.files);
            write_new(&self.dir.join(UIDLIST_NAME), list.as_bytes(), None)?;
        }
        Ok(self.not_carried)
    }
}

/// `--maildir DIR`: a Maildir++ tree, the INBOX at its root and every other mailbox a
/// `.<levels>` folder (`maildir_folder`); a single message goes to `new/<sha1>.mailpack`.
pub struct MaildirExport {
    pub root: PathBuf,
}

/// A Maildir export's steps: the copy, and for a whole user the subscriptions file to turn
/// into Dovecot's.
pub struct MaildirSteps<'a> {
    copy: CopySteps<'a>,
    subscriptions: Option<Subscriptions<'a>>,
}

struct Subscriptions<'a> {
    archive: &'a Archive,
    entry: &'a EntryRecord,
    user: String,
}

impl<'a> Target<'a> for MaildirExport {
    type Steps = MaildirSteps<'a>;

    fn plan(
        &self,
        archive: &'a Archive,
        request: &Request,
    ) -> Result<RestorePlan<MaildirSteps<'a>>> {
        let root = &self.root;
        let mut plan = plan_copy(archive, request, |s, _| {
            Some(match maildir_folder(&s.levels, s.inbox) {
                Some(f) => root.join(f).display().to_string(),
                None => root.display().to_string(),
            })
        })?;
        // A file's name holds its flags, which are settled only when its folder is opened.
        if let CopySteps::Mailboxes { selected, .. } = &plan.steps {
            for s in selected {
                for r in &s.records {
                    plan.writes.push(format!("{root:?} {}", r.uid));
                }
            }
        }
        // Only a whole user's export says what they subscribed to: a part of the tree would
        // list folders that are not there.
        let subscriptions = if request.whole_user && !request.shared {
            archive
                .state_at(Some(request.run))
                .into_iter()
                .map(|(_, e)| e)
                .find(|e| e.name == SUBSCRIPTIONS_ENTRY && e.kind == EntryKind::File)
                .map(|entry| Subscriptions {
                    archive,
                    entry,
                    user: request.user.to_string(),
                })
        } else {
            None
        };
        if subscriptions.is_some() {
            plan.writes
                .push(root.join(SUBSCRIPTIONS_NAME).display().to_string());
        }
        Ok(plan.map_steps(|copy| MaildirSteps {
            copy,
            subscriptions,
        }))
    }

    fn execute(&self, plan: RestorePlan<MaildirSteps<'a>>) -> Result<Outcome> {
        let (mut out, steps) = plan.into_start();
        match steps.copy {
            CopySteps::Mailboxes { messages, selected } => {
                let mut pending = None;
                for s in &selected {
                    let mut folder = MaildirFolder::open(
                        &self.root,
                        &s.levels,
                        s.inbox,
                        s.uidvalidity,
                        s.uidnext,
                        s.messages(),
                    )?;
                    for m in s.messages() {
                        let Some(bytes) = read_message(&messages, s, m.record, &mut out) else {
                            continue;
                        };
                        out.writes
                            .push(folder.path_of(&m, bytes.len()).display().to_string());
                        folder.write(writer_pool(&mut pending, &out), &m, bytes)?;
                    }
                    for (keyword, count) in folder.finish()? {
                        out.not_carried.push(format!(
                            "{}: keyword {keyword} on {count} message(s): a Maildir folder \
                             carries at most {MAX_KEYWORDS} keywords",
                            s.name.relative('/')
                        ));
                    }
                }
                if let Some(subs) = &steps.subscriptions {
                    write_subscriptions(&self.root, subs, &selected, &mut out)?;
                }
                finish_export(pending, &self.root, &mut out)?;
            }
            CopySteps::Message { sha1, bytes } => {
                let path = self.message_path(sha1);
                out.writes.push(path.display().to_string());
                for sub in ["new", "cur", "tmp"] {
                    ensure_dir(&self.root, &[sub.to_string()])?;
                }
                out.count(write_new(&path, &bytes, None)?, bytes.len());
                sync_tree(&self.root)?;
            }
        }
        Ok(out)
    }
}

/// The archive entry of the user's Cyrus subscriptions database (formats/backup-entries.md).
const SUBSCRIPTIONS_ENTRY: &str = "meta/sub";

/// Dovecot's `subscriptions` file from the user's Cyrus one: the subscribed mailboxes that are
/// in this export, in the database's order. Subscriptions to other users' or shared mailboxes,
/// and Cyrus's stale ones (to mailboxes since deleted or renamed, which Cyrus keeps and LSUB
/// hides), have no folder in the tree and are left out. A database that does not read is
/// reported (and its entry listed as lost); the export goes on without the file.
fn write_subscriptions(
    root: &Path,
    subs: &Subscriptions,
    selected: &[Selected],
    out: &mut Outcome,
) -> Result<()> {
    let e = subs.entry;
    if e.size > USER_FILE_CAP.bytes {
        out.bad.push(format!(
            "{}: not restored: {} bytes, more than {} ({})",
            e.name, e.size, USER_FILE_CAP.bytes, USER_FILE_CAP.name
        ));
        return Ok(());
    }
    let bytes = match read_all(subs.archive, e) {
        Ok(b) => b,
        Err(err) => {
            let lost = LostEntry::of(&subs.archive.paths().archive, e, &err);
            out.bad.push(format!("{}: not restored: {lost}", e.name));
            out.push_lost(lost);
            return Ok(());
        }
    };
    let records = match cyrusdb::parse(&bytes) {
        Ok(r) => r,
        Err(err) => {
            out.bad.push(format!("{}: not restored: {err}", e.name));
            return Ok(());
        }
    };
    // Dovecot's version 2 header is these five bytes, an empty line included.
    let mut file = String::from("V\t2\n\n");
    let mut listed: Vec<String> = Vec::new();
    for name in read_subscriptions(&records, &subs.user) {
        let internal = name.internal();
        if listed.contains(&internal) {
            continue;
        }
        if let Some(s) = selected.iter().find(|s| s.name.internal() == internal) {
            file.push_str(&subscription_line(&s.levels, s.inbox));
            file.push('\n');
            listed.push(internal);
        }
    }
    let path = root.join(SUBSCRIPTIONS_NAME);
    ensure_dir(root, &[])?;
    write_new(&path, file.as_bytes(), None)?;
    Ok(())
}

impl MessageTarget<'_> for MaildirExport {
    fn plan_message(&self, sha1: Guid, bytes: Vec<u8>) -> Result<RestorePlan<Self::Steps>> {
        let write = self.message_path(sha1).display().to_string();
        Ok(
            plan_message(sha1, bytes, write).map_steps(|copy| MaildirSteps {
                copy,
                subscriptions: None,
            }),
        )
    }
}

impl MaildirExport {
    fn message_path(&self, sha1: Guid) -> PathBuf {
        self.root.join("new").join(format!("{sha1}.mailpack"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::index::IndexRecord;

    #[test]
    fn maildir_names_keep_the_hierarchy_unambiguous() {
        assert_eq!(maildir_folder(&["INBOX".into()], true), None);
        assert_eq!(
            maildir_folder(&["INBOX".into()], false).as_deref(),
            Some(".INBOX")
        );
        assert_eq!(
            maildir_folder(&["a.b".into(), "c".into()], false).as_deref(),
            Some(".a%2eb.c")
        );
        assert_eq!(
            maildir_folder(&["~x%y".into(), "a~".into()], false).as_deref(),
            Some(".%7ex%25y.a~")
        );
        assert_eq!(
            maildir_info(
                &["\\Seen".into(), "\\Answered".into(), "k".into()],
                &["k".into()]
            ),
            "RSa"
        );
    }

    #[test]
    fn the_most_used_keywords_are_carried_and_the_rest_counted() {
        let r = IndexRecord::default();
        let message = |r, flags: &[&str]| ExportMessage {
            record: r,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            uidvalidity: 7,
        };
        let names: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        // k26..k29 first (by name they would come last), but on one message only.
        let mut rare = all[26..].to_vec();
        rare.push("\\Seen");
        let msgs = vec![
            message(&r, &rare),
            message(&r, &all[..26]),
            message(&r, &all[..26]),
            message(&r, &["K00"]),
        ];
        let (carried, rest) = rank_keywords(msgs.into_iter());
        assert_eq!(carried.len(), MAX_KEYWORDS);
        assert_eq!(carried[0], "k00", "used most, counted without case");
        assert!(carried.iter().all(|k| k.as_str() < "k26"), "{carried:?}");
        assert_eq!(
            rest,
            (26..30).map(|i| (format!("k{i}"), 1)).collect::<Vec<_>>()
        );
        assert_eq!(maildir_info(&["K01".into(), "k01".into()], &carried), "b");
    }

    #[test]
    fn uidlist_and_subscription_lines_are_as_dovecot_reads_them() {
        assert_eq!(
            uidlist(
                1700000000,
                9,
                &[(3, "1.M3U1700000000.mailpack,S=10".into())]
            ),
            "3 V1700000000 N9\n3 :1.M3U1700000000.mailpack,S=10\n"
        );
        assert_eq!(subscription_line(&["INBOX".into()], true), "INBOX");
        assert_eq!(
            subscription_line(&["a.b".into(), "c\td".into(), "Caf&AOk-".into()], false),
            "a%2eb\tc\u{1}td\tCaf&AOk-"
        );
    }
}
