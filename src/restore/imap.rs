//! Additive restore into any IMAP server (RFC 3501 APPEND with flags and internal date), into a
//! folder of its own. Resumable and idempotent: before appending, the folder's messages are
//! fingerprinted (size and SHA-1 of the header section, which holds the Received trail and
//! Message-ID) and each message to restore is skipped while a copy with its fingerprint is
//! still unclaimed, so a re-run after an interruption adds nothing twice, and a mailbox that
//! held two identical copies gets two. A reply the server must not give (or no reply) is
//! `Error::Protocol`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sha1::{Digest, Sha1};

use super::export::ExportMessage;
use super::plan::{MessageTarget, Outcome, Request, RestorePlan, Target};
use super::select::{message_record, plan_copy, plan_message, read_message, CopySteps};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::spool::index::IndexRecord;
use crate::store::Archive;

/// Bytes of one untagged response or literal the client will hold.
const MAX_LITERAL: usize = 256 << 20;

pub struct ImapTarget {
    /// `host:port`.
    pub addr: String,
    pub user: String,
    pub password: String,
    /// Folder the restore goes under, levels separated by `/` (`Restored/2026-11-22`).
    pub folder: String,
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
        let mut session = ImapSession::connect(self)?;
        match steps {
            CopySteps::Mailboxes { messages, selected } => {
                let several = selected.len() > 1;
                for s in &selected {
                    let folder = self.folder_for(&s.export_levels(), several);
                    out.writes.push(format!("imap {folder}"));
                    let mut present = session.prepare_folder(&folder)?;
                    for m in &s.messages() {
                        let Some(bytes) = read_message(&messages, s, m.record, &mut out) else {
                            continue;
                        };
                        if present.take(&bytes, m.record) {
                            out.messages_already_there += 1;
                            continue;
                        }
                        session.append(&folder, m, &bytes)?;
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

enum Part {
    Text(Vec<u8>),
    Literal(Vec<u8>),
}

pub struct ImapSession {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_tag: u32,
    separator: char,
    addr: String,
}

fn quoted(s: &str) -> Result<String> {
    if s.bytes()
        .any(|b| b == b'\r' || b == b'\n' || b == 0 || b >= 0x80)
    {
        return Err(Error::usage(format!(
            "{s:?}: folder names and credentials must be 7-bit without line breaks"
        )));
    }
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

fn imap_date(secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = super::format_utc(secs);
    let month = MONTHS[iso[5..7].parse::<usize>().unwrap_or(1) - 1];
    format!(
        "{}-{month}-{} {} +0000",
        &iso[8..10],
        &iso[0..4],
        &iso[11..19]
    )
}

impl ImapSession {
    pub fn connect(target: &ImapTarget) -> Result<ImapSession> {
        let err = |e: std::io::Error| Error::io("connect to", &target.addr, e);
        let stream = TcpStream::connect(&target.addr).map_err(err)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .map_err(err)?;
        let writer = stream.try_clone().map_err(err)?;
        let mut s = ImapSession {
            reader: BufReader::new(stream),
            writer,
            next_tag: 1,
            separator: '/',
            addr: target.addr.clone(),
        };
        let greeting = s.read_line()?;
        if !greeting.starts_with(b"* OK") && !greeting.starts_with(b"* PREAUTH") {
            return Err(s.fail(format!(
                "greeting: {}",
                String::from_utf8_lossy(&greeting).trim()
            )));
        }
        s.command(&format!(
            "LOGIN {} {}",
            quoted(&target.user)?,
            quoted(&target.password)?
        ))?;
        let list = s.command("LIST \"\" \"\"")?;
        for parts in &list {
            if let Some(Part::Text(t)) = parts.first() {
                let t = String::from_utf8_lossy(t);
                // * LIST (\Noselect) "/" ""
                if let Some(rest) = t.strip_prefix("* LIST ") {
                    if let Some(q) = rest.split('"').nth(1) {
                        if let Some(c) = q.chars().next() {
                            s.separator = c;
                        }
                    }
                }
            }
        }
        Ok(s)
    }

    /// The server said what it must not (or closed the connection, or refused a command).
    fn fail(&self, detail: String) -> Error {
        Error::protocol(format!("IMAP server {}", self.addr), detail)
    }

    fn read_line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LITERAL as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("read from", &self.addr, e))?;
        if n == 0 {
            return Err(self.fail("connection closed".into()));
        }
        Ok(line)
    }

    /// Reads one response line with its literals.
    fn read_response(&mut self) -> Result<Vec<Part>> {
        let mut parts = Vec::new();
        loop {
            let line = self.read_line()?;
            let literal = line
                .strip_suffix(b"}\r\n")
                .and_then(|l| l.iter().rposition(|&b| b == b'{').map(|i| &l[i + 1..]))
                .and_then(|d| std::str::from_utf8(d).ok()?.parse::<usize>().ok());
            parts.push(Part::Text(line));
            let Some(n) = literal else { break };
            if n > MAX_LITERAL {
                return Err(self.fail(format!("a literal of {n} bytes")));
            }
            let mut buf = vec![0u8; n];
            self.reader
                .read_exact(&mut buf)
                .map_err(|e| Error::io("read from", &self.addr, e))?;
            parts.push(Part::Literal(buf));
        }
        Ok(parts)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .map_err(|e| Error::io("write to", &self.addr, e))
    }

    /// Sends a command and returns its untagged responses; a NO or BAD is an error.
    fn command(&mut self, command: &str) -> Result<Vec<Vec<Part>>> {
        let tag = format!("m{}", self.next_tag);
        self.next_tag += 1;
        self.send(format!("{tag} {command}\r\n").as_bytes())?;
        self.finish(&tag, command)
    }

    fn finish(&mut self, tag: &str, what: &str) -> Result<Vec<Vec<Part>>> {
        let mut untagged = Vec::new();
        loop {
            let parts = self.read_response()?;
            let Some(Part::Text(first)) = parts.first() else {
                continue;
            };
            if first.starts_with(format!("{tag} ").as_bytes()) {
                let status = String::from_utf8_lossy(&first[tag.len() + 1..])
                    .trim()
                    .to_string();
                if status.starts_with("OK") {
                    return Ok(untagged);
                }
                let verb = what.split(' ').next().unwrap_or(what);
                return Err(self.fail(format!("{verb}: {status}")));
            }
            untagged.push(parts);
        }
    }

    fn server_name(&self, folder: &str) -> String {
        folder.replace('/', &self.separator.to_string())
    }

    /// Creates the folder (and its parents) if needed and fingerprints what it already holds.
    pub fn prepare_folder(&mut self, folder: &str) -> Result<Present> {
        let name = self.server_name(folder);
        let q = quoted(&name)?;
        if let Err(create_error) = self.command(&format!("CREATE {q}")) {
            // It may exist from an earlier, interrupted run: EXAMINE tells.
            if self.command(&format!("EXAMINE {q}")).is_err() {
                return Err(create_error);
            }
        }
        let examined = self.command(&format!("EXAMINE {q}"))?;
        let exists = examined.iter().any(|parts| {
            matches!(parts.first(), Some(Part::Text(t))
                if t.ends_with(b" EXISTS\r\n") && !t.starts_with(b"* 0 "))
        });
        let mut present = HashMap::new();
        if exists {
            let fetched = self.command("UID FETCH 1:* (RFC822.SIZE BODY.PEEK[HEADER])")?;
            for parts in fetched {
                let mut size = None;
                let mut header = None;
                for (i, p) in parts.iter().enumerate() {
                    if let Part::Text(t) = p {
                        let text = String::from_utf8_lossy(t);
                        if let Some(rest) = text.split("RFC822.SIZE ").nth(1) {
                            size = rest
                                .split(|c: char| !c.is_ascii_digit())
                                .next()
                                .and_then(|d| d.parse::<u64>().ok());
                        }
                        if text.trim_end().ends_with('}') && text.contains("BODY[HEADER]") {
                            if let Some(Part::Literal(h)) = parts.get(i + 1) {
                                header = Some(h.clone());
                            }
                        }
                    }
                }
                if let (Some(size), Some(header)) = (size, header) {
                    *present.entry(fingerprint(size, &header)).or_insert(0) += 1;
                }
            }
        }
        self.command("CLOSE")
            .or_else(|_| self.command("UNSELECT"))?;
        Ok(Present(present))
    }

    /// APPENDs one message with its flags (those IMAP lets a client set) and internal date.
    pub fn append(&mut self, folder: &str, m: &ExportMessage, bytes: &[u8]) -> Result<()> {
        let name = quoted(&self.server_name(folder))?;
        let flags: Vec<&str> = m
            .flags
            .iter()
            .map(String::as_str)
            .filter(|f| *f != "\\Recent")
            .filter(|f| {
                f.bytes().enumerate().all(|(i, b)| {
                    (b == b'\\' && i == 0) || (b > b' ' && b < 0x7f && !b"(){%*\"\\]".contains(&b))
                })
            })
            .collect();
        let secs = m.record.internaldate_ns.div_euclid(1_000_000_000);
        let date = if secs > 0 {
            format!(" \"{}\"", imap_date(secs))
        } else {
            String::new()
        };
        let tag = format!("m{}", self.next_tag);
        self.next_tag += 1;
        self.send(
            format!(
                "{tag} APPEND {name} ({}){date} {{{}}}\r\n",
                flags.join(" "),
                bytes.len()
            )
            .as_bytes(),
        )?;
        let cont = self.read_line()?;
        if !cont.starts_with(b"+") {
            return Err(self.fail(format!("APPEND: {}", String::from_utf8_lossy(&cont).trim())));
        }
        self.send(bytes)?;
        self.send(b"\r\n")?;
        self.finish(&tag, "APPEND").map(|_| ())
    }

    pub fn logout(mut self) {
        let _ = self.command("LOGOUT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_quoting() {
        assert_eq!(imap_date(1_795_352_709), "22-Nov-2026 13:05:09 +0000");
        assert_eq!(quoted("a\"b\\").unwrap(), "\"a\\\"b\\\\\"");
        assert!(quoted("a\r\nb").is_err());
    }

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
