//! Maildir++ (`--maildir`): flags in the file names, keywords in `dovecot-keywords`.

use std::fs;
use std::path::{Path, PathBuf};

use super::{
    ensure_dir, escape_level, finish_export, sync_tree, write_new, writer_pool, ExportMessage,
    WritePool,
};
use crate::error::Result;
use crate::guid::Guid;
use crate::restore::plan::{MessageTarget, Outcome, Request, RestorePlan, Target};
use crate::restore::select::{plan_copy, plan_message, read_message, CopySteps};
use crate::store::Archive;

/// The Maildir++ folder name for a mailbox's levels under the INBOX (`None` for the INBOX
/// itself, which is the Maildir): `.` joins levels, so they are escaped by `escape_level`.
/// `levels` are the mailbox's raw levels (`safe_levels`); a folder named `INBOX` is `.INBOX`,
/// apart from the INBOX.
pub fn maildir_folder(levels: &[String], inbox: bool) -> Option<String> {
    if inbox {
        return None;
    }
    let escaped: Vec<String> = levels.iter().map(|l| escape_level(l)).collect();
    Some(format!(".{}", escaped.join(".")))
}

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
                if let Some(i) = keywords.iter().position(|x| x == k) {
                    letters.push((b'a' + i as u8) as char);
                }
            }
        }
    }
    letters.sort_unstable();
    letters.into_iter().collect()
}

/// Maildir: one folder (the INBOX is the Maildir itself), `cur/` files named
/// `<internaldate>.M<uid>U<uidvalidity>.mailpack:2,<info>`, mtime = internal date, bytes as
/// stored. User flags become keyword letters `a`–`z` listed in `dovecot-keywords` (the first 26
/// in order of appearance; more cannot be carried).
pub struct MaildirFolder {
    dir: PathBuf,
    keywords: Vec<String>,
}

impl MaildirFolder {
    pub fn open(
        root: &Path,
        levels: &[String],
        inbox: bool,
        messages: &[ExportMessage],
    ) -> Result<Self> {
        let mut dir = ensure_dir(root, &[])?;
        if let Some(folder) = maildir_folder(levels, inbox) {
            dir = ensure_dir(root, &[folder])?;
        }
        for sub in ["cur", "new", "tmp"] {
            ensure_dir(&dir, &[sub.to_string()])?;
        }
        let mut keywords: Vec<String> = Vec::new();
        for m in messages {
            for f in &m.flags {
                if !f.starts_with('\\') && !keywords.contains(f) && keywords.len() < 26 {
                    keywords.push(f.clone());
                }
            }
        }
        if !keywords.is_empty() {
            let list: String = keywords
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{i} {k}\n"))
                .collect();
            let path = dir.join("dovecot-keywords");
            let _ = fs::remove_file(&path);
            write_new(&path, list.as_bytes(), None)?;
        }
        Ok(MaildirFolder { dir, keywords })
    }

    pub fn path_of(&self, m: &ExportMessage) -> PathBuf {
        self.dir.join("cur").join(format!(
            "{}.M{}U{}.mailpack:2,{}",
            m.record.internaldate_ns.div_euclid(1_000_000_000),
            m.record.uid,
            m.uidvalidity,
            maildir_info(&m.flags, &self.keywords)
        ))
    }

    /// Queued to be written straight into `cur/`: a restore target has no mail client reading
    /// it meanwhile, so Maildir's `tmp/` hand-over buys nothing but a second directory update.
    pub fn write(&self, pool: &WritePool, m: &ExportMessage, bytes: Vec<u8>) -> Result<()> {
        pool.submit(
            self.path_of(m),
            bytes,
            Some(m.record.internaldate_ns.div_euclid(1_000_000_000)),
        )
    }
}

/// `--maildir DIR`: a Maildir++ tree, the INBOX at its root and every other mailbox a
/// `.<levels>` folder (`maildir_folder`); a single message goes to `new/<sha1>.mailpack`.
pub struct MaildirExport {
    pub root: PathBuf,
}

impl<'a> Target<'a> for MaildirExport {
    type Steps = CopySteps<'a>;

    fn plan(&self, archive: &'a Archive, request: &Request) -> Result<RestorePlan<CopySteps<'a>>> {
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
                for (r, _) in &s.records {
                    plan.writes.push(format!("{root:?} {}", r.uid));
                }
            }
        }
        Ok(plan)
    }

    fn execute(&self, plan: RestorePlan<CopySteps<'a>>) -> Result<Outcome> {
        let (mut out, steps) = plan.into_start();
        match steps {
            CopySteps::Mailboxes { messages, selected } => {
                let mut pending = None;
                for s in &selected {
                    let exports = s.messages();
                    let folder = MaildirFolder::open(&self.root, &s.levels, s.inbox, &exports)?;
                    for m in &exports {
                        let Some(bytes) = read_message(&messages, s, m.record, &mut out) else {
                            continue;
                        };
                        out.writes.push(folder.path_of(m).display().to_string());
                        folder.write(writer_pool(&mut pending), m, bytes)?;
                    }
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

impl MessageTarget<'_> for MaildirExport {
    fn plan_message(&self, sha1: Guid, bytes: Vec<u8>) -> Result<RestorePlan<Self::Steps>> {
        let write = self.message_path(sha1).display().to_string();
        Ok(plan_message(sha1, bytes, write))
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

    #[test]
    fn maildir_names_keep_the_hierarchy_unambiguous() {
        assert_eq!(maildir_folder(&["INBOX".into()], true), None);
        assert_eq!(
            maildir_folder(&["INBOX".into()], false).as_deref(),
            Some(".INBOX")
        );
        assert_eq!(
            maildir_folder(&["a.b".into(), "c".into()], false).as_deref(),
            Some(".a%2Eb.c")
        );
        assert_eq!(
            maildir_info(
                &["\\Seen".into(), "\\Answered".into(), "k".into()],
                &["k".into()]
            ),
            "RSa"
        );
    }
}
