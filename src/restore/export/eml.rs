//! One `.eml` per message (`--eml`), a directory per mailbox.

use std::path::{Path, PathBuf};

use super::{ensure_dir, finish_export, sync_tree, write_new, writer_pool};
use crate::error::Result;
use crate::guid::Guid;
use crate::restore::plan::{MessageTarget, Outcome, Request, RestorePlan, Target};
use crate::restore::select::{plan_copy, plan_message, read_message, CopySteps, Selected};
use crate::spool::index::IndexRecord;
use crate::store::Archive;

/// `.eml`: `<dir>/<uid>.eml`, the message's bytes as stored, mtime = internal date.
pub fn eml_path(dir: &Path, record: &IndexRecord) -> PathBuf {
    dir.join(format!("{}.eml", record.uid))
}

/// `--eml DIR`: one directory per mailbox (`export_levels`), one `<uid>.eml` per message; a
/// single message goes to `<sha1>.eml` at the top.
pub struct EmlExport {
    pub root: PathBuf,
}

impl<'a> Target<'a> for EmlExport {
    type Steps = CopySteps<'a>;

    fn plan(&self, archive: &'a Archive, request: &Request) -> Result<RestorePlan<CopySteps<'a>>> {
        let mut plan = plan_copy(archive, request, |s, _| {
            Some(self.dir_of(s).display().to_string())
        })?;
        if let CopySteps::Mailboxes { selected, .. } = &plan.steps {
            for s in selected {
                let dir = self.dir_of(s);
                for r in &s.records {
                    plan.writes.push(eml_path(&dir, r).display().to_string());
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
                    let dir = ensure_dir(&self.root, &s.export_levels())?;
                    for record in &s.records {
                        let Some(bytes) = read_message(&messages, s, record, &mut out) else {
                            continue;
                        };
                        let path = eml_path(&dir, record);
                        out.writes.push(path.display().to_string());
                        let secs = record.internaldate_ns.div_euclid(1_000_000_000);
                        writer_pool(&mut pending, &out).submit(path, bytes, Some(secs))?;
                    }
                }
                finish_export(pending, &self.root, &mut out)?;
            }
            CopySteps::Message { sha1, bytes } => {
                let path = self.message_path(sha1);
                out.writes.push(path.display().to_string());
                ensure_dir(&self.root, &[])?;
                out.count(write_new(&path, &bytes, None)?, bytes.len());
                sync_tree(&self.root)?;
            }
        }
        Ok(out)
    }
}

impl MessageTarget<'_> for EmlExport {
    fn plan_message(&self, sha1: Guid, bytes: Vec<u8>) -> Result<RestorePlan<Self::Steps>> {
        let write = self.message_path(sha1).display().to_string();
        Ok(plan_message(sha1, bytes, write))
    }
}

impl EmlExport {
    fn dir_of(&self, s: &Selected) -> PathBuf {
        self.root.join(s.export_levels().join("/"))
    }

    fn message_path(&self, sha1: Guid) -> PathBuf {
        self.root.join(format!("{sha1}.eml"))
    }
}
