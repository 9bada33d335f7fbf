//! Additive restore into any IMAP server (RFC 3501 APPEND with flags and internal date), into a
//! folder of its own, over TLS unless the operator allows clear text (`tls` connects and
//! checks the certificate, `session` speaks IMAP through imap-codec). Resumable and idempotent:
//! before appending, the folder's messages are fingerprinted (size and SHA-1 of the header
//! section, which holds the Received trail and Message-ID) and each message to restore is
//! skipped while a copy with its fingerprint is still unclaimed, so a re-run after an
//! interruption adds nothing twice, and a mailbox that held two identical copies gets two. A
//! reply the server must not give (or no reply) is `Error::Protocol`.

mod session;
pub mod tls;

use std::collections::HashMap;

use sha1::{Digest, Sha1};

use self::session::Session;
pub use self::session::MAX_RESPONSE;
pub use self::tls::{ImapAddr, Security, Trust};
use super::export::ExportMessage;
use super::plan::{MessageTarget, Outcome, Request, RestorePlan, Target};
use super::select::{message_record, plan_copy, plan_message, read_message, CopySteps};
use crate::error::Result;
use crate::guid::Guid;
use crate::spool::index::IndexRecord;
use crate::store::Archive;

pub struct ImapTarget {
    pub addr: ImapAddr,
    pub user: String,
    pub password: String,
    /// Folder the restore goes under, levels separated by `/` (`Restored/2026-11-22`).
    pub folder: String,
    pub trust: Trust,
    /// Go on in clear text when the server offers no STARTTLS (`--imap-allow-plaintext`).
    pub allow_plaintext: bool,
}

impl ImapTarget {
    /// The folder for a mailbox: the target folder itself for a single mailbox, else the
    /// mailbox's levels under it (`Restored/2026-11-22/Archive/2023`).
    pub fn folder_for(&self, levels: &[String], several: bool) -> String {
        if !several || levels.is_empty() {
            return self.folder.clone();
        }
        format!("{}/{}", self.folder.trim_end_matches('/'), levels.join("/"))
    }
}

impl<'a> Target<'a> for ImapTarget {
    type Steps = CopySteps<'a>;

    fn plan(&self, archive: &'a Archive, request: &Request) -> Result<RestorePlan<CopySteps<'a>>> {
        let mut plan = plan_copy(archive, request, |s, several| {
            Some(self.folder_for(&s.export_levels(), several))
        })?;
        if let CopySteps::Mailboxes { selected, .. } = &plan.steps {
            let several = selected.len() > 1;
            for s in selected {
                let folder = self.folder_for(&s.export_levels(), several);
                plan.writes.push(format!("imap {folder}"));
            }
        }
        Ok(plan)
    }

    fn execute(&self, plan: RestorePlan<CopySteps<'a>>) -> Result<Outcome> {
        let (mut out, steps) = plan.into_start();
        let mut session = Session::open(self)?;
        if self.trust == Trust::Insecure {
            out.warnings.push(format!(
                "{}: certificate NOT checked (--imap-insecure): anyone on the path could have \
                 read the password and the mail",
                self.addr
            ));
        }
        if !session.is_tls() {
            out.warnings.push(format!(
                "{}: no TLS (--imap-allow-plaintext): password and mail crossed the network in \
                 clear text",
                self.addr
            ));
        }
        match steps {
            CopySteps::Mailboxes { messages, selected } => {
                let several = selected.len() > 1;
                for s in &selected {
                    let folder = self.folder_for(&s.export_levels(), several);
                    out.writes.push(format!("imap {folder}"));
                    let mut present = session.prepare_folder(&folder)?;
                    for m in s.messages() {
                        let Some(bytes) = read_message(&messages, s, m.record, &mut out) else {
                            continue;
                        };
                        if present.take(&bytes, m.record) {
                            out.messages_already_there += 1;
                            continue;
                        }
                        if let Some(why) = session.unsendable(&bytes) {
                            out.bad
                                .push(format!("{folder}: uid {}: {why}", m.record.uid));
                            continue;
                        }
                        session.append(&folder, &m, &bytes)?;
                        out.count(true, bytes.len());
                    }
                }
            }
            CopySteps::Message { sha1, bytes } => {
                let folder = self.folder_for(&[], false);
                out.writes.push(format!("imap {folder}"));
                let record = message_record(sha1, &bytes);
                let mut present = session.prepare_folder(&folder)?;
                if present.take(&bytes, &record) {
                    out.messages_already_there += 1;
                } else if let Some(why) = session.unsendable(&bytes) {
                    out.bad.push(format!("{folder}: {sha1}: {why}"));
                } else {
                    let m = ExportMessage {
                        record: &record,
                        flags: Vec::new(),
                        uidvalidity: 0,
                    };
                    session.append(&folder, &m, &bytes)?;
                    out.count(true, bytes.len());
                }
            }
        }
        session.logout();
        Ok(out)
    }
}

impl MessageTarget<'_> for ImapTarget {
    fn plan_message(&self, sha1: Guid, bytes: Vec<u8>) -> Result<RestorePlan<Self::Steps>> {
        let write = format!("imap {}", self.folder_for(&[], false));
        Ok(plan_message(sha1, bytes, write))
    }
}

/// The fingerprints of a folder's messages that a restore has not matched yet.
#[derive(Default)]
pub struct Present(HashMap<(u64, [u8; 20]), u32>);

fn header_section(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| message.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
        .unwrap_or(message.len());
    &message[..end]
}

fn fingerprint(size: u64, header: &[u8]) -> (u64, [u8; 20]) {
    (size, Sha1::digest(header).into())
}

impl Present {
    /// Counts one message found in the folder.
    fn add(&mut self, size: u64, header: &[u8]) {
        *self.0.entry(fingerprint(size, header)).or_insert(0) += 1;
    }

    /// Whether a copy of `message` is already in the folder; if so that copy is claimed.
    pub fn take(&mut self, message: &[u8], _record: &IndexRecord) -> bool {
        let key = fingerprint(message.len() as u64, header_section(message));
        match self.0.get_mut(&key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_copies_are_counted_not_merged() {
        let msg = b"Subject: x\r\n\r\nbody\r\n";
        let mut present = Present(HashMap::from([(
            fingerprint(msg.len() as u64, header_section(msg)),
            1,
        )]));
        let r = IndexRecord::default();
        assert!(present.take(msg, &r));
        assert!(!present.take(msg, &r), "the second copy is still to append");
    }
}
