//! mboxrd (`--mbox`): one file per mailbox, flags in `Status`, `X-Status` and `X-Keywords`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{ensure_dir, ExportMessage};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::restore::plan::{MessageTarget, Outcome, Request, RestorePlan, Target};
use crate::restore::select::{
    message_record, plan_copy, plan_message, read_message, CopySteps, Selected,
};
use crate::store::Archive;

/// `asctime` form for the mbox `From ` line: `Sun Nov 22 13:05:09 2026`.
fn asctime(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = crate::time::format_utc(t); // 2026-11-22T13:05:09Z
    let (y, m, d) = (&iso[0..4], &iso[5..7], &iso[8..10]);
    let month = MONTHS[m.parse::<usize>().unwrap_or(1) - 1];
    let weekday = DAYS[t.div_euclid(86_400).rem_euclid(7) as usize];
    format!(
        "{weekday} {month} {:>2} {} {y}",
        d.trim_start_matches('0'),
        &iso[11..19]
    )
}

/// One message in mboxrd form: the `From ` line, the message with CRLF turned into LF and every
/// line matching `^>*From ` given one more `>`, `Status`/`X-Status`/`X-Keywords` headers for the
/// flags (as mutt, Thunderbird and Python's `mailbox` read them), and a blank line.
pub fn mbox_entry(m: &ExportMessage, bytes: &[u8]) -> Vec<u8> {
    let secs = m.record.internaldate_ns.div_euclid(1_000_000_000);
    let mut out = format!("From MAILER-DAEMON {}\n", asctime(secs)).into_bytes();
    let text: Vec<u8> = {
        let mut v = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            v.push(bytes[i]);
            i += 1;
        }
        v
    };
    let mut status = String::new();
    let mut xstatus = String::new();
    let mut keywords = Vec::new();
    for f in &m.flags {
        match f.as_str() {
            "\\Seen" => status.push('R'),
            "\\Answered" => xstatus.push('A'),
            "\\Flagged" => xstatus.push('F'),
            "\\Deleted" => xstatus.push('D'),
            "\\Draft" => xstatus.push('T'),
            k if !k.starts_with('\\') => keywords.push(k.to_string()),
            _ => {}
        }
    }
    status.push('O');
    let mut flag_headers = format!("Status: {status}\n");
    if !xstatus.is_empty() {
        flag_headers.push_str(&format!("X-Status: {xstatus}\n"));
    }
    if !keywords.is_empty() {
        flag_headers.push_str(&format!("X-Keywords: {}\n", keywords.join(" ")));
    }
    let mut in_headers = true;
    let mut lines = text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        if last && line.is_empty() {
            break;
        }
        if in_headers && line.is_empty() {
            out.extend_from_slice(flag_headers.as_bytes());
            in_headers = false;
        }
        let quoted = line.iter().position(|&b| b != b'>').map(|i| &line[i..]);
        if quoted.is_some_and(|rest| rest.starts_with(b"From ")) {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    if in_headers {
        out.extend_from_slice(flag_headers.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// An mbox file being appended to: created new, so an existing file is never overwritten.
pub struct MboxFile {
    file: File,
    path: PathBuf,
}

impl MboxFile {
    pub fn create(path: &Path) -> Result<MboxFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::refused(format!(
                    "{} exists; an mbox export never overwrites a file",
                    path.display()
                )),
                _ => Error::io("create", path, e),
            })?;
        Ok(MboxFile {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, m: &ExportMessage, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(&mbox_entry(m, bytes))
            .map_err(|e| Error::io("write", &self.path, e))
    }

    pub fn finish(self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", &self.path, e))
    }
}

/// `--mbox PATH`: one mailbox makes PATH an mboxrd file; several make PATH a directory holding
/// `<levels>.mbox` per mailbox, its levels above the last as subdirectories.
pub struct MboxExport {
    pub path: PathBuf,
}

impl<'a> Target<'a> for MboxExport {
    type Steps = CopySteps<'a>;

    fn plan(&self, archive: &'a Archive, request: &Request) -> Result<RestorePlan<CopySteps<'a>>> {
        let mut plan = plan_copy(archive, request, |s, several| {
            let (_, file) = self.file_of(s, several)?;
            Some(file.display().to_string())
        })?;
        if let CopySteps::Mailboxes { selected, .. } = &plan.steps {
            let several = selected.len() > 1;
            for s in selected {
                if let Some((_, file)) = self.file_of(s, several) {
                    plan.writes.push(file.display().to_string());
                }
            }
        }
        Ok(plan)
    }

    fn execute(&self, plan: RestorePlan<CopySteps<'a>>) -> Result<Outcome> {
        let (mut out, steps) = plan.into_start();
        match steps {
            CopySteps::Mailboxes { messages, selected } => {
                let several = selected.len() > 1;
                for s in &selected {
                    let Some((dirs, file)) = self.file_of(s, several) else {
                        continue;
                    };
                    out.writes.push(file.display().to_string());
                    if several {
                        ensure_dir(&self.path, &dirs)?;
                    }
                    let mut mbox = MboxFile::create(&file)?;
                    for m in s.messages() {
                        let Some(bytes) = read_message(&messages, s, m.record, &mut out) else {
                            continue;
                        };
                        mbox.append(&m, &bytes)?;
                        out.count(true, bytes.len());
                    }
                    mbox.finish()?;
                }
            }
            CopySteps::Message { sha1, bytes } => {
                out.writes.push(self.path.display().to_string());
                let record = message_record(sha1, &bytes);
                let m = ExportMessage {
                    record: &record,
                    flags: Vec::new(),
                    uidvalidity: 0,
                };
                let mut mbox = MboxFile::create(&self.path)?;
                mbox.append(&m, &bytes)?;
                mbox.finish()?;
                out.count(true, bytes.len());
            }
        }
        Ok(out)
    }
}

impl MessageTarget<'_> for MboxExport {
    fn plan_message(&self, sha1: Guid, bytes: Vec<u8>) -> Result<RestorePlan<Self::Steps>> {
        Ok(plan_message(sha1, bytes, self.path.display().to_string()))
    }
}

impl MboxExport {
    /// The directories to create under the target (its levels above the last) and the mbox
    /// file of a mailbox; `None` for a mailbox without levels, which `safe_levels` never gives.
    fn file_of(&self, s: &Selected, several: bool) -> Option<(Vec<String>, PathBuf)> {
        if !several {
            return Some((Vec::new(), self.path.clone()));
        }
        let levels = s.export_levels();
        let (last, parents) = levels.split_last()?;
        let file = self
            .path
            .join(parents.join("/"))
            .join(format!("{last}.mbox"));
        Some((parents.to_vec(), file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::index::IndexRecord;

    fn record(uid: u32, date: i64) -> IndexRecord {
        IndexRecord {
            uid,
            internaldate_ns: date * 1_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn mboxrd_quotes_from_lines_and_carries_flags() {
        let r = record(1, 1_795_352_709);
        let m = ExportMessage {
            record: &r,
            flags: vec!["\\Flagged".into(), "\\Seen".into(), "Work".into()],
            uidvalidity: 1,
        };
        let out = mbox_entry(&m, b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nok\r\n");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "From MAILER-DAEMON Sun Nov 22 13:05:09 2026\nSubject: x\nStatus: RO\nX-Status: F\n\
             X-Keywords: Work\n\n>From here\n>>From there\nok\n\n"
        );
    }
}
