//! One IMAP session of a restore, over our own blocking socket: imap-codec encodes every
//! command and decodes every reply (its Fragmentizer splits lines from literals under
//! `MAX_RESPONSE`), this file decides the order. TLS comes first (implicit, or STARTTLS with
//! capabilities read again afterwards); without it no credential is sent unless the operator
//! allowed clear text. Any reply we cannot decode is `Error::Protocol`, never a panic.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use imap_codec::encode::{Encoder, Fragment};
use imap_codec::fragmentizer::{DecodeMessageError, Fragmentizer};
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{IString, Literal, LiteralMode};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::{Literal8, LiteralOrLiteral8};
use imap_codec::imap_types::fetch::{MessageDataItem, MessageDataItemName, Section};
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{
    Capability, Code, Data, GreetingKind, Response, Status, StatusKind,
};
use imap_codec::imap_types::IntoStatic;
use imap_codec::{AuthenticateDataCodec, CommandCodec, GreetingCodec, ResponseCodec};

use super::tls::{client_config, handshake, ImapAddr, Security, Stream};
use super::{ImapTarget, Present};
use crate::error::{Error, Result};
use crate::restore::export::ExportMessage;

/// Bytes of one server reply (a line with its literals) the client will hold; a FETCH of
/// headers or a status line is far smaller, so a longer one is refused, never allocated.
pub const MAX_RESPONSE: u32 = 256 << 20;

/// A server that stops answering for this long fails the restore instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes read from the socket at a time once TLS is up (or clear text was allowed).
const READ_CHUNK: usize = 16 << 10;

/// What the server's CAPABILITY says that changes what we send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub starttls: bool,
    pub login_disabled: bool,
    pub auth_plain: bool,
    pub sasl_ir: bool,
    pub literal_plus: bool,
    pub binary: bool,
}

impl Caps {
    fn of(list: &[Capability<'_>]) -> Caps {
        let mut caps = Caps::default();
        for c in list {
            match c {
                Capability::StartTls => caps.starttls = true,
                Capability::LoginDisabled => caps.login_disabled = true,
                Capability::Auth(AuthMechanism::Plain) => caps.auth_plain = true,
                Capability::SaslIr => caps.sasl_ir = true,
                Capability::LiteralPlus => caps.literal_plus = true,
                Capability::Binary => caps.binary = true,
                _ => {}
            }
        }
        caps
    }

    fn from_code(code: Option<&Code<'_>>) -> Option<Caps> {
        match code {
            Some(Code::Capability(list)) => Some(Caps::of(list.as_ref())),
            _ => None,
        }
    }
}

/// A command's untagged data and the code of its tagged OK.
struct Done {
    data: Vec<Data<'static>>,
    code: Option<Code<'static>>,
}

pub struct Session {
    stream: Stream,
    frag: Fragmentizer,
    next_tag: u32,
    /// `IMAP server imaps://host:port`, for errors.
    peer: String,
    caps: Caps,
    separator: char,
    /// Read one byte at a time: before STARTTLS, so nothing the server sends after its OK
    /// sits in our buffer to be taken later as if it had come through TLS.
    bytewise: bool,
}

fn connect_tcp(addr: &ImapAddr, peer: &str) -> Result<TcpStream> {
    let socket = addr.socket();
    let err = |e: std::io::Error| Error::io("connect to", &socket, e);
    let mut last = None;
    for a in socket.to_socket_addrs().map_err(err)? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT)).map_err(err)?;
                s.set_write_timeout(Some(IO_TIMEOUT)).map_err(err)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map(err).unwrap_or_else(|| {
        Error::protocol(peer.to_string(), format!("{socket} resolves to no address"))
    }))
}

impl Session {
    /// Connects, secures and logs in.
    ///
    /// # Errors
    /// `Refused` when the certificate is not trusted, or when the session would be in clear
    /// text and `allow_plaintext` is off (then nothing but CAPABILITY was sent);
    /// `Protocol` when the server refuses the login or says what it must not.
    pub fn open(target: &ImapTarget) -> Result<Session> {
        let addr = &target.addr;
        let peer = format!("IMAP server {addr}");
        // Built before connecting, so a bad --imap-ca fails before any traffic.
        let tls = client_config(&target.trust)?;
        let tcp = connect_tcp(addr, &peer)?;
        let stream = match addr.security {
            Security::Implicit => Stream::Tls(Box::new(handshake(tls.clone(), addr, tcp)?)),
            Security::StartTls => Stream::Plain(tcp),
        };
        let bytewise = !stream.is_tls();
        let mut s = Session {
            stream,
            frag: Fragmentizer::new(MAX_RESPONSE),
            next_tag: 1,
            peer,
            caps: Caps::default(),
            separator: '/',
            bytewise,
        };
        let (kind, caps) = s.read_greeting()?;
        s.caps = match caps {
            Some(c) => c,
            None => s.capability()?,
        };
        if !s.stream.is_tls() {
            if s.caps.starttls {
                s.command(CommandBody::StartTLS)?;
                let Stream::Plain(tcp) = std::mem::replace(&mut s.stream, Stream::Closed) else {
                    unreachable!("checked is_tls above");
                };
                s.stream = Stream::Tls(Box::new(handshake(tls, addr, tcp)?));
                // RFC 3501 6.2.1: what the server said before TLS may have been forged.
                s.caps = s.capability()?;
            } else if !target.allow_plaintext {
                return Err(Error::refused(format!(
                    "{}: offers no STARTTLS, so the password would cross the network in clear \
                     text: use imaps:// (port 993) if it has it, or --imap-allow-plaintext on \
                     a network you trust",
                    s.peer
                )));
            }
        }
        s.bytewise = false;
        if kind != GreetingKind::PreAuth {
            let code = s.authenticate(&target.user, &target.password)?;
            s.caps = match Caps::from_code(code.as_ref()) {
                Some(c) => c,
                None => s.capability()?,
            };
        }
        s.separator = s.separator()?;
        Ok(s)
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    fn fail(&self, detail: impl Into<String>) -> Error {
        Error::protocol(self.peer.clone(), detail)
    }

    /// Reads until the Fragmentizer holds one whole reply.
    fn fill(&mut self) -> Result<()> {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match self.frag.progress() {
                Some(_) if self.frag.is_message_complete() => break,
                Some(_) => {}
                None => {
                    let want = if self.bytewise { 1 } else { READ_CHUNK };
                    let n = match self.stream.read(&mut buf[..want]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Error::io("read from", &self.peer, e)),
                    };
                    if n == 0 {
                        return Err(self.fail("closed the connection"));
                    }
                    self.frag.enqueue_bytes(&buf[..n]);
                }
            }
        }
        if self.frag.is_max_message_size_exceeded() {
            return Err(self.fail(format!("sent a reply over {MAX_RESPONSE} bytes")));
        }
        Ok(())
    }

    /// The start of the reply that did not decode, for the error.
    fn undecodable(&self) -> Error {
        let bytes = self.frag.message_bytes();
        let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(&line[..line.len().min(200)]);
        self.fail(format!("a reply that is not IMAP: {:?}", line.trim_end()))
    }

    fn read_greeting(&mut self) -> Result<(GreetingKind, Option<Caps>)> {
        self.fill()?;
        let greeting = match self.frag.decode_message(&GreetingCodec::default()) {
            Ok(g) => g.into_static(),
            Err(_) => return Err(self.undecodable()),
        };
        if greeting.kind == GreetingKind::Bye {
            return Err(self.fail(format!("refused the connection: {}", greeting.text)));
        }
        Ok((greeting.kind, Caps::from_code(greeting.code.as_ref())))
    }

    fn read_response(&mut self) -> Result<Response<'static>> {
        self.fill()?;
        match self.frag.decode_message(&ResponseCodec::default()) {
            Ok(r) => Ok(r.into_static()),
            Err(DecodeMessageError::MessageTooLong { .. }) => {
                Err(self.fail(format!("sent a reply over {MAX_RESPONSE} bytes")))
            }
            Err(_) => Err(self.undecodable()),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Error::io("write to", &self.peer, e))
    }

    fn flush(&mut self) -> Result<()> {
        self.stream
            .flush()
            .map_err(|e| Error::io("write to", &self.peer, e))
    }

    fn tag(&mut self) -> String {
        let tag = format!("m{}", self.next_tag);
        self.next_tag += 1;
        tag
    }

    /// Sends a command, pausing at each synchronizing literal for the server's go-ahead.
    fn send(
        &mut self,
        tag: &str,
        body: CommandBody<'_>,
        data: &mut Vec<Data<'static>>,
    ) -> Result<()> {
        let name = body.name();
        let command = Command::new(tag, body).map_err(|_| self.fail("bad tag"))?;
        for fragment in CommandCodec::default().encode(&command) {
            match fragment {
                Fragment::Line { data: line } => self.write(&line)?,
                Fragment::Literal {
                    data: literal,
                    mode: LiteralMode::Sync,
                } => {
                    self.flush()?;
                    self.continuation(tag, name, data)?;
                    self.write(&literal)?;
                }
                Fragment::Literal {
                    data: literal,
                    mode: LiteralMode::NonSync,
                } => self.write(&literal)?,
            }
        }
        self.flush()
    }

    /// Waits for `+`; the command's tagged reply instead means the server refused it.
    fn continuation(&mut self, tag: &str, name: &str, data: &mut Vec<Data<'static>>) -> Result<()> {
        loop {
            match self.read_response()? {
                Response::CommandContinuationRequest(_) => return Ok(()),
                Response::Data(d) => data.push(d),
                Response::Status(Status::Tagged(t)) if t.tag.inner() == tag => {
                    return Err(self.fail(format!("{name}: {:?} {}", t.body.kind, t.body.text)));
                }
                Response::Status(Status::Bye(b)) => {
                    return Err(self.fail(format!("closed the session: {}", b.text)));
                }
                Response::Status(_) => {}
            }
        }
    }

    /// Reads to the command's tagged reply; NO and BAD are errors.
    fn finish(&mut self, tag: &str, name: &str, mut data: Vec<Data<'static>>) -> Result<Done> {
        loop {
            match self.read_response()? {
                Response::Data(d) => data.push(d),
                Response::Status(Status::Tagged(t)) if t.tag.inner() == tag => {
                    return match t.body.kind {
                        StatusKind::Ok => Ok(Done {
                            data,
                            code: t.body.code,
                        }),
                        kind => Err(self.fail(format!(
                            "{name}: {} {}",
                            if kind == StatusKind::No { "NO" } else { "BAD" },
                            t.body.text
                        ))),
                    };
                }
                Response::Status(Status::Tagged(t)) => {
                    return Err(self.fail(format!(
                        "answered tag {:?} while {tag} was the only command",
                        t.tag.inner()
                    )));
                }
                Response::Status(Status::Bye(b)) => {
                    return Err(self.fail(format!("closed the session: {}", b.text)));
                }
                Response::Status(Status::Untagged(_)) => {}
                Response::CommandContinuationRequest(_) => {
                    return Err(self.fail(format!("{name}: asked for data it was not offered")));
                }
            }
        }
    }

    fn command(&mut self, body: CommandBody<'_>) -> Result<Done> {
        let tag = self.tag();
        let name = body.name();
        let mut data = Vec::new();
        self.send(&tag, body, &mut data)?;
        self.finish(&tag, name, data)
    }

    fn capability(&mut self) -> Result<Caps> {
        let done = self.command(CommandBody::Capability)?;
        for d in &done.data {
            if let Data::Capability(list) = d {
                return Ok(Caps::of(list.as_ref()));
            }
        }
        Err(self.fail("CAPABILITY: no capability list"))
    }

    /// AUTHENTICATE PLAIN when offered, else LOGIN unless the server disabled it. Returns the
    /// tagged OK's code (servers put the new CAPABILITY there).
    fn authenticate(&mut self, user: &str, password: &str) -> Result<Option<Code<'static>>> {
        if self.caps.auth_plain {
            // SASL PLAIN: empty authorization identity, so the server uses the login's own.
            let mut response = Vec::with_capacity(user.len() + password.len() + 2);
            response.push(0);
            response.extend_from_slice(user.as_bytes());
            response.push(0);
            response.extend_from_slice(password.as_bytes());
            let tag = self.tag();
            let mut data = Vec::new();
            if self.caps.sasl_ir {
                let body = CommandBody::authenticate_with_ir(AuthMechanism::Plain, response);
                self.send(&tag, body, &mut data)?;
            } else {
                self.send(
                    &tag,
                    CommandBody::authenticate(AuthMechanism::Plain),
                    &mut data,
                )?;
                self.continuation(&tag, "AUTHENTICATE", &mut data)?;
                let line = AuthenticateDataCodec::default()
                    .encode(&AuthenticateData::r#continue(response))
                    .dump();
                self.write(&line)?;
                self.flush()?;
            }
            return Ok(self.finish(&tag, "AUTHENTICATE", data)?.code);
        }
        if self.caps.login_disabled {
            return Err(Error::refused(format!(
                "{}: offers neither AUTH=PLAIN nor LOGIN",
                self.peer
            )));
        }
        let body = CommandBody::login(user, password)
            .map_err(|_| Error::usage("the IMAP user or password holds a NUL or line break"))?;
        Ok(self.command(body)?.code)
    }

    fn separator(&mut self) -> Result<char> {
        let body = CommandBody::list("", "").map_err(|_| self.fail("LIST"))?;
        let done = self.command(body)?;
        for d in &done.data {
            if let Data::List {
                delimiter: Some(c), ..
            } = d
            {
                return Ok(c.inner());
            }
        }
        // A flat server (no delimiter) still takes a name; '/' is then part of it.
        Ok('/')
    }

    fn server_name(&self, folder: &str) -> Result<String> {
        if folder
            .bytes()
            .any(|b| b == b'\r' || b == b'\n' || b == 0 || b >= 0x80)
        {
            return Err(Error::usage(format!(
                "{folder:?}: IMAP folder names must be 7-bit (modified UTF-7) without line breaks"
            )));
        }
        Ok(folder.replace('/', &self.separator.to_string()))
    }

    /// Creates the folder (and its parents) if needed and fingerprints what it already holds.
    pub fn prepare_folder(&mut self, folder: &str) -> Result<Present> {
        let name = self.server_name(folder)?;
        let mailbox = || Mailbox::try_from(name.as_str()).map_err(|_| Error::usage("folder name"));
        if let Err(create_error) = self.command(CommandBody::Create {
            mailbox: mailbox()?,
        }) {
            // It may exist from an earlier, interrupted run: EXAMINE tells.
            if self
                .command(CommandBody::examine(mailbox()?).map_err(|_| self.fail("EXAMINE"))?)
                .is_err()
            {
                return Err(create_error);
            }
        }
        let examined =
            self.command(CommandBody::examine(mailbox()?).map_err(|_| self.fail("EXAMINE"))?)?;
        let exists = examined
            .data
            .iter()
            .any(|d| matches!(d, Data::Exists(n) if *n > 0));
        let mut present = Present::default();
        if exists {
            let items = vec![
                MessageDataItemName::Rfc822Size,
                MessageDataItemName::BodyExt {
                    section: Some(Section::Header(None)),
                    partial: None,
                    peek: true,
                },
            ];
            let body = CommandBody::fetch("1:*", items, true).map_err(|_| self.fail("FETCH"))?;
            for d in self.command(body)?.data {
                let Data::Fetch { items, .. } = d else {
                    continue;
                };
                let mut size = None;
                let mut header = None;
                for item in items.into_iter() {
                    match item {
                        MessageDataItem::Rfc822Size(n) => size = Some(u64::from(n)),
                        MessageDataItem::BodyExt {
                            section: Some(Section::Header(None)),
                            data,
                            ..
                        } => {
                            header = Some(match data.0 {
                                Some(IString::Literal(l)) => l.into_inner().into_owned(),
                                Some(IString::Quoted(q)) => q.inner().as_bytes().to_vec(),
                                _ => Vec::new(),
                            });
                        }
                        _ => {}
                    }
                }
                if let (Some(size), Some(header)) = (size, header) {
                    present.add(size, &header);
                }
            }
        }
        self.command(CommandBody::Close)?;
        Ok(present)
    }

    /// Why this message cannot go to this server as it is, if it cannot.
    pub fn unsendable(&self, bytes: &[u8]) -> Option<&'static str> {
        if Literal::validate(bytes).is_ok() || self.caps.binary {
            None
        } else {
            Some("holds NUL bytes and the server has no BINARY extension to take them")
        }
    }

    /// APPENDs one message with its flags (those IMAP lets a client set) and internal date.
    pub fn append(&mut self, folder: &str, m: &ExportMessage, bytes: &[u8]) -> Result<()> {
        let name = self.server_name(folder)?;
        let body = append_command(&name, m, bytes, self.caps)
            .ok_or_else(|| self.fail("APPEND: the message cannot be encoded"))?;
        self.command(body).map(|_| ())
    }

    pub fn logout(mut self) {
        let tag = self.tag();
        let _ = self.send(&tag, CommandBody::Logout, &mut Vec::new());
    }
}

/// The APPEND for one message: flags a client may set (never `\Recent`), the internal date,
/// and the bytes as a literal (`~{n}` under BINARY when they hold NULs); non-synchronizing
/// under LITERAL+, which saves a round trip per message.
fn append_command<'a>(
    name: &'a str,
    m: &'a ExportMessage,
    bytes: &'a [u8],
    caps: Caps,
) -> Option<CommandBody<'a>> {
    let flags: Vec<Flag<'a>> = m
        .flags
        .iter()
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .filter_map(|f| Flag::try_from(f.as_str()).ok())
        .collect();
    let secs = m.record.internaldate_ns.div_euclid(1_000_000_000);
    let date = (secs > 0)
        .then(|| chrono::DateTime::from_timestamp(secs, 0))
        .flatten()
        .and_then(|d| DateTime::try_from(d.fixed_offset()).ok());
    let mode = if caps.literal_plus {
        LiteralMode::NonSync
    } else {
        LiteralMode::Sync
    };
    let message = match Literal::try_from(bytes) {
        Ok(l) => LiteralOrLiteral8::Literal(match mode {
            LiteralMode::NonSync => l.into_non_sync(),
            LiteralMode::Sync => l,
        }),
        Err(_) if caps.binary => LiteralOrLiteral8::Literal8(Literal8 {
            data: bytes.into(),
            mode,
        }),
        Err(_) => return None,
    };
    Some(CommandBody::Append {
        mailbox: Mailbox::try_from(name).ok()?,
        flags,
        date,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::index::IndexRecord;
    use imap_codec::decode::Decoder;

    fn encoded(body: CommandBody<'_>) -> Vec<Vec<u8>> {
        let command = Command::new("m1", body).unwrap();
        CommandCodec::default()
            .encode(&command)
            .map(|f| match f {
                Fragment::Line { data } | Fragment::Literal { data, .. } => data,
            })
            .collect()
    }

    #[test]
    fn append_carries_flags_date_and_a_literal() {
        let record = IndexRecord {
            internaldate_ns: 1_795_352_709 * 1_000_000_000,
            ..Default::default()
        };
        let m = ExportMessage {
            record: &record,
            flags: vec![
                "\\Seen".into(),
                "\\Recent".into(),
                "$Label1".into(),
                "bad flag".into(),
            ],
            uidvalidity: 0,
        };
        let caps = Caps::default();
        let body = append_command("Restored/x", &m, b"hello", caps).unwrap();
        let parts = encoded(body);
        assert_eq!(
            String::from_utf8_lossy(&parts[0]),
            "m1 APPEND Restored/x (\\Seen $Label1) \"22-Nov-2026 13:05:09 +0000\" {5}\r\n"
        );
        assert_eq!(parts[1], b"hello");
        let plus = Caps {
            literal_plus: true,
            ..caps
        };
        let parts = encoded(append_command("INBOX", &m, b"hi", plus).unwrap());
        assert!(String::from_utf8_lossy(&parts[0]).ends_with("{2+}\r\n"));
        // NUL bytes: only as a BINARY literal8.
        assert!(append_command("x", &m, b"a\0b", caps).is_none());
        let binary = Caps {
            binary: true,
            ..caps
        };
        let parts = encoded(append_command("x", &m, b"a\0b", binary).unwrap());
        assert!(String::from_utf8_lossy(&parts[0]).ends_with("~{3}\r\n"));
    }

    #[test]
    fn capabilities_that_matter() {
        let caps = |s: &str| {
            let line = format!("* CAPABILITY {s}\r\n");
            match ResponseCodec::default().decode(line.as_bytes()) {
                Ok((_, Response::Data(Data::Capability(list)))) => Caps::of(list.as_ref()),
                other => panic!("{other:?}"),
            }
        };
        let c = caps("IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN SASL-IR LITERAL+ BINARY");
        assert_eq!(
            c,
            Caps {
                starttls: true,
                login_disabled: true,
                auth_plain: true,
                sasl_ir: true,
                literal_plus: true,
                binary: true,
            }
        );
        assert_eq!(caps("IMAP4rev1 AUTH=LOGIN X-FOO"), Caps::default());
    }
}
