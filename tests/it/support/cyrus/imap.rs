//! The IMAP client: response data (`Value`, `Reply` and the typed results of the helpers),
//! IMAP's string syntax (quoted strings, literals, modified UTF-7 mailbox names, date-times,
//! sequence sets) and `Imap`, a synchronous session. ManageSieve reuses the string syntax.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::{base64, crlf, sha1_hex_of, IO_TIMEOUT};

// ---------------------------------------------------------------------------------------------
// IMAP string syntax

/// IMAP modified UTF-7 (RFC 3501 5.1.3) of a UTF-8 mailbox name. The mailbox helpers of `Imap`
/// apply this themselves; only `raw` commands need it by hand.
pub fn mutf7_encode(name: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    fn flush(out: &mut String, run: &mut Vec<u16>) {
        if run.is_empty() {
            return;
        }
        let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        for c in bytes.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..=c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out.push('-');
        run.clear();
    }
    let mut out = String::new();
    let mut run: Vec<u16> = Vec::new();
    for ch in name.chars() {
        if (' '..='~').contains(&ch) {
            flush(&mut out, &mut run);
            if ch == '&' {
                out.push_str("&-");
            } else {
                out.push(ch);
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(ch.encode_utf16(&mut buf));
        }
    }
    flush(&mut out, &mut run);
    out
}

/// Inverse of `mutf7_encode`; malformed input is returned unchanged.
pub fn mutf7_decode(s: &str) -> String {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b',' => 63,
            _ => return None,
        } as u32)
    }
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'&' {
            out.push(b[i] as char);
            i += 1;
            continue;
        }
        let Some(end) = b[i + 1..]
            .iter()
            .position(|&c| c == b'-')
            .map(|p| i + 1 + p)
        else {
            return s.to_string();
        };
        if end == i + 1 {
            out.push('&');
        } else {
            let (mut acc, mut bits, mut units) = (0u32, 0u32, Vec::new());
            for &c in &b[i + 1..end] {
                let Some(v) = val(c) else {
                    return s.to_string();
                };
                acc = acc << 6 | v;
                bits += 6;
                if bits >= 16 {
                    bits -= 16;
                    units.push((acc >> bits & 0xFFFF) as u16);
                }
            }
            match String::from_utf16(&units) {
                Ok(t) => out.push_str(&t),
                Err(_) => return s.to_string(),
            }
        }
        i = end + 1;
    }
    out
}

/// An IMAP quoted string (ASCII only; use literals for anything else).
pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// A mailbox name (UTF-8) as an IMAP argument.
pub fn mailbox_arg(name: &str) -> String {
    quote(&mutf7_encode(name))
}

/// Seconds since the epoch of an IMAP date-time (`"01-Jan-2020 10:00:00 +0100"`, the day may
/// be space-padded).
pub fn internaldate_epoch(s: &str) -> i64 {
    let s = s.trim().trim_matches('"').trim();
    let (date, rest) = s
        .split_once(' ')
        .unwrap_or_else(|| panic!("bad date-time {s:?}"));
    let (time, zone) = rest
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("bad date-time {s:?}"));
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    let day: i64 = d[0].trim().parse().unwrap();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m.eq_ignore_ascii_case(d[1]))
    .unwrap_or_else(|| panic!("bad month in {s:?}")) as i64
        + 1;
    let year: i64 = d[2].parse().unwrap();
    // Days from civil (proleptic Gregorian), Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let zh: i64 = zone[1..3].parse().unwrap();
    let zm: i64 = zone[3..5].parse().unwrap();
    days * 86400 + t[0] * 3600 + t[1] * 60 + t[2] - sign * (zh * 3600 + zm * 60)
}

/// Expands an IMAP sequence set without `*` (`1:3,7`) into numbers.
pub fn expand_set(set: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for part in set.split(',') {
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                v.extend(lo..=hi);
            }
            None => v.push(part.parse().unwrap()),
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// IMAP response data

/// One parsed IMAP data item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Atoms and numbers (`\Seen`, `UID`, `42`, `BODY[]`).
    Atom(String),
    /// Quoted strings and literals.
    Str(Vec<u8>),
    List(Vec<Value>),
    Nil,
}

impl Value {
    pub fn as_str(&self) -> Option<String> {
        match self {
            Value::Atom(a) => Some(a.clone()),
            Value::Str(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Atom(a) => Some(a.as_bytes()),
            Value::Str(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Atom(a) => a.parse().ok(),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn is_atom(&self, s: &str) -> bool {
        matches!(self, Value::Atom(a) if a.eq_ignore_ascii_case(s))
    }
}

/// Parses the data of one response line (with its literals inline as on the wire).
pub fn parse_values(data: &[u8]) -> Vec<Value> {
    let mut p = Parser { b: data, i: 0 };
    let mut out = Vec::new();
    loop {
        p.skip_sp();
        if p.i >= p.b.len() {
            break;
        }
        match p.value() {
            Some(v) => out.push(v),
            None => p.i += 1, // stray ')' : skip rather than loop forever
        }
    }
    out
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_sp(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<Value> {
        match *self.b.get(self.i)? {
            b'(' => {
                self.i += 1;
                let mut l = Vec::new();
                loop {
                    self.skip_sp();
                    match self.b.get(self.i) {
                        None => break,
                        Some(b')') => {
                            self.i += 1;
                            break;
                        }
                        _ => match self.value() {
                            Some(v) => l.push(v),
                            None => self.i += 1,
                        },
                    }
                }
                Some(Value::List(l))
            }
            b')' => None,
            b'"' => {
                self.i += 1;
                let mut s = Vec::new();
                while let Some(&c) = self.b.get(self.i) {
                    self.i += 1;
                    match c {
                        b'\\' => {
                            if let Some(&n) = self.b.get(self.i) {
                                s.push(n);
                                self.i += 1;
                            }
                        }
                        b'"' => break,
                        _ => s.push(c),
                    }
                }
                Some(Value::Str(s))
            }
            b'{' => {
                let close = self.b[self.i..].iter().position(|&c| c == b'}')? + self.i;
                let n: usize = std::str::from_utf8(&self.b[self.i + 1..close])
                    .ok()?
                    .trim_end_matches('+')
                    .parse()
                    .ok()?;
                let mut start = close + 1;
                if self.b[start..].starts_with(b"\r\n") {
                    start += 2;
                }
                let end = (start + n).min(self.b.len());
                self.i = end;
                Some(Value::Str(self.b[start..end].to_vec()))
            }
            _ => {
                let start = self.i;
                let mut depth = 0;
                while let Some(&c) = self.b.get(self.i) {
                    match c {
                        b'[' => depth += 1,
                        b']' if depth > 0 => depth -= 1,
                        b' ' | b'(' | b')' | b'\r' | b'\n' if depth == 0 => break,
                        _ => {}
                    }
                    self.i += 1;
                }
                let a = String::from_utf8_lossy(&self.b[start..self.i]).into_owned();
                if a.eq_ignore_ascii_case("NIL") {
                    Some(Value::Nil)
                } else {
                    Some(Value::Atom(a))
                }
            }
        }
    }
}

/// Every bracketed response code `[NAME args]` in a status text.
fn response_codes(text: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']') else {
            break;
        };
        let inner = &rest[open + 1..open + close];
        let (name, args) = inner.split_once(' ').unwrap_or((inner, ""));
        v.push((name.to_ascii_uppercase(), args.to_string()));
        rest = &rest[open + close + 1..];
    }
    v
}

/// The completion of one tagged command.
#[derive(Clone, Debug)]
pub struct Reply {
    /// `OK`, `NO` or `BAD`.
    pub status: String,
    /// Text after the status, including any `[CODE]`.
    pub text: String,
    /// Untagged responses without the leading `* `, literals inline as on the wire.
    pub untagged: Vec<Vec<u8>>,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        self.status == "OK"
    }
    /// Untagged responses as text (lossy UTF-8).
    pub fn lines(&self) -> Vec<String> {
        self.untagged
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
    /// Parsed untagged responses whose keyword (after an optional number) is `kw`.
    pub fn data(&self, kw: &str) -> Vec<Vec<Value>> {
        self.untagged
            .iter()
            .map(|l| parse_values(l))
            .filter(|v| match v.first() {
                Some(first) if first.is_atom(kw) => true,
                Some(Value::Atom(n)) if n.bytes().all(|b| b.is_ascii_digit()) => {
                    v.get(1).is_some_and(|k| k.is_atom(kw))
                }
                _ => false,
            })
            .collect()
    }
    /// Response codes from the tagged text and from untagged OK/NO lines.
    pub fn codes(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for l in self.lines() {
            if l.starts_with("OK [") || l.starts_with("NO [") || l.starts_with("BAD [") {
                v.extend(response_codes(&l));
            }
        }
        v.extend(response_codes(&self.text));
        v
    }
    pub fn code(&self, name: &str) -> Option<String> {
        self.codes()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, a)| a)
    }
}

/// SELECT / EXAMINE results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxInfo {
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// 0 if the server sent NOMODSEQ.
    pub highestmodseq: u64,
    pub exists: u32,
    /// Cyrus's MAILBOXID (= the uniqueid naming the UUID directory).
    pub mailboxid: String,
}

/// Per-message facts compared between servers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageInfo {
    pub uid: u32,
    /// Sorted; `\Recent` is left out because it depends on the session, not the mailbox.
    pub flags: Vec<String>,
    /// As the server shows it (the server runs with TZ=UTC, so `... +0000`).
    pub internaldate: String,
    pub size: u64,
    /// SHA-1 (hex) of `BODY.PEEK[]`, which is Cyrus's GUID of the message file.
    pub sha1: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListEntry {
    /// Name attributes as sent (`\HasNoChildren`, `\Subscribed`, `\NonExistent`, ...).
    pub flags: Vec<String>,
    /// Decoded from modified UTF-7.
    pub name: String,
}

impl ListEntry {
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x.eq_ignore_ascii_case(f))
    }
}

/// A piece of a command: text is sent as-is, literals as `{n}` + bytes.
pub enum Part<'a> {
    Text(String),
    Literal(&'a [u8]),
}

// ---------------------------------------------------------------------------------------------
// IMAP client

/// A minimal synchronous IMAP client. Commands panic on I/O errors; the convenience helpers
/// also panic when the server answers NO/BAD (use `command`/`try_raw` to test refusals).
/// Mailbox names are UTF-8 and converted to modified UTF-7 by the helpers.
pub struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
    tag: u32,
}

impl Imap {
    pub fn connect(addr: SocketAddr) -> Imap {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("IMAP connect {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Imap {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            tag: 0,
        };
        let greeting = String::from_utf8_lossy(&c.read_response()).into_owned();
        assert!(
            greeting.starts_with("* OK"),
            "unexpected IMAP greeting {greeting:?}"
        );
        c
    }

    /// Reads one response line with any literals it announces, without the final CRLF.
    fn read_response(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self
                .r
                .read_until(b'\n', &mut line)
                .unwrap_or_else(|e| panic!("IMAP read: {e}"));
            assert!(
                n > 0,
                "IMAP server closed the connection; so far: {:?}",
                String::from_utf8_lossy(&out)
            );
            if line.ends_with(b"\r\n") {
                line.truncate(line.len() - 2);
            } else if line.ends_with(b"\n") {
                line.truncate(line.len() - 1);
            }
            let lit = literal_len(&line);
            out.extend_from_slice(&line);
            match lit {
                Some(len) => {
                    out.extend_from_slice(b"\r\n");
                    let start = out.len();
                    out.resize(start + len, 0);
                    self.r
                        .read_exact(&mut out[start..])
                        .unwrap_or_else(|e| panic!("IMAP literal read: {e}"));
                }
                None => return out,
            }
        }
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("A{:04}", self.tag)
    }

    /// Sends a command made of text and literal parts and collects everything up to its
    /// tagged completion. Literals are synchronizing (waits for `+`).
    pub fn command_parts(&mut self, parts: &[Part]) -> Reply {
        let tag = self.next_tag();
        let mut buf: Vec<u8> = format!("{tag} ").into_bytes();
        let mut untagged = Vec::new();
        for part in parts {
            match part {
                Part::Text(t) => buf.extend_from_slice(t.as_bytes()),
                Part::Literal(data) => {
                    buf.extend_from_slice(format!("{{{}}}\r\n", data.len()).as_bytes());
                    self.w
                        .write_all(&buf)
                        .unwrap_or_else(|e| panic!("IMAP write: {e}"));
                    buf.clear();
                    loop {
                        let l = self.read_response();
                        if l.starts_with(b"+") {
                            break;
                        }
                        if l.starts_with(b"* ") {
                            untagged.push(l[2..].to_vec());
                            continue;
                        }
                        // The server refused the literal (e.g. too big): that is the reply.
                        return finish_reply(&tag, l, untagged);
                    }
                    buf.extend_from_slice(data);
                }
            }
        }
        buf.extend_from_slice(b"\r\n");
        self.w
            .write_all(&buf)
            .unwrap_or_else(|e| panic!("IMAP write: {e}"));
        loop {
            let l = self.read_response();
            if l.starts_with(b"* ") {
                untagged.push(l[2..].to_vec());
            } else if l.starts_with(tag.as_bytes()) {
                return finish_reply(&tag, l, untagged);
            }
            // Stray continuations are ignored.
        }
    }

    /// One command line (no literals), e.g. `command("NOOP")`.
    pub fn command(&mut self, cmd: &str) -> Reply {
        self.command_parts(&[Part::Text(cmd.to_string())])
    }

    /// Like `command`, panicking unless the answer is OK.
    pub fn ok(&mut self, cmd: &str) -> Reply {
        let r = self.command(cmd);
        assert!(r.is_ok(), "IMAP {cmd:?} failed: {} {}", r.status, r.text);
        r
    }

    /// Any command; returns its untagged responses as text, panicking unless OK.
    pub fn raw(&mut self, cmd: &str) -> Vec<String> {
        self.ok(cmd).lines()
    }

    /// Any command; `Err("NO ...")` instead of panicking.
    pub fn try_raw(&mut self, cmd: &str) -> Result<Vec<String>, String> {
        let r = self.command(cmd);
        if r.is_ok() {
            Ok(r.lines())
        } else {
            Err(format!("{} {}", r.status, r.text))
        }
    }

    pub fn login(&mut self, user: &str, pass: &str) {
        self.ok(&format!("LOGIN {} {}", quote(user), quote(pass)));
    }

    /// SASL PLAIN with an authorization identity: `authc` (e.g. the admin) acts as `authz`, so
    /// per-user state like \Seen is `authz`'s.
    pub fn authenticate_plain(&mut self, authz: &str, authc: &str, pass: &str) {
        let token = base64(format!("{authz}\0{authc}\0{pass}").as_bytes());
        self.ok(&format!("AUTHENTICATE PLAIN {token}"));
    }

    pub fn logout(mut self) {
        let _ = self.command("LOGOUT");
    }

    pub fn create(&mut self, mailbox: &str) {
        self.ok(&format!("CREATE {}", mailbox_arg(mailbox)));
    }

    /// CREATE with a special-use attribute (`\Sent`, `\Trash`, ...).
    pub fn create_special(&mut self, mailbox: &str, special_use: &str) {
        self.ok(&format!(
            "CREATE {} (USE ({special_use}))",
            mailbox_arg(mailbox)
        ));
    }

    pub fn delete(&mut self, mailbox: &str) {
        self.ok(&format!("DELETE {}", mailbox_arg(mailbox)));
    }

    pub fn rename(&mut self, from: &str, to: &str) {
        self.ok(&format!("RENAME {} {}", mailbox_arg(from), mailbox_arg(to)));
    }

    pub fn subscribe(&mut self, mailbox: &str) {
        self.ok(&format!("SUBSCRIBE {}", mailbox_arg(mailbox)));
    }

    pub fn unsubscribe(&mut self, mailbox: &str) {
        self.ok(&format!("UNSUBSCRIBE {}", mailbox_arg(mailbox)));
    }

    pub fn select(&mut self, mailbox: &str) -> MailboxInfo {
        let r = self.ok(&format!("SELECT {}", mailbox_arg(mailbox)));
        mailbox_info(&r)
    }

    /// Read-only select: does not clear \Recent or change anything.
    pub fn examine(&mut self, mailbox: &str) -> MailboxInfo {
        let r = self.ok(&format!("EXAMINE {}", mailbox_arg(mailbox)));
        mailbox_info(&r)
    }

    /// Leaves the selected mailbox without expunging (unlike CLOSE).
    pub fn unselect(&mut self) {
        self.ok("UNSELECT");
    }

    /// APPENDs a message (CRLF-normalized) and returns its UID from APPENDUID. `flags` like
    /// `["\\Seen", "$Label"]`; `internaldate` like `"01-Jan-2020 10:00:00 +0000"`.
    pub fn append(
        &mut self,
        mailbox: &str,
        flags: &[&str],
        internaldate: Option<&str>,
        message: &[u8],
    ) -> u32 {
        let msg = crlf(message);
        let mut head = format!("APPEND {} ", mailbox_arg(mailbox));
        if !flags.is_empty() {
            write!(head, "({}) ", flags.join(" ")).unwrap();
        }
        if let Some(d) = internaldate {
            write!(head, "{} ", quote(d)).unwrap();
        }
        let r = self.command_parts(&[Part::Text(head), Part::Literal(&msg)]);
        assert!(
            r.is_ok(),
            "APPEND to {mailbox} failed: {} {}",
            r.status,
            r.text
        );
        let code = r
            .code("APPENDUID")
            .unwrap_or_else(|| panic!("no APPENDUID in {:?}", r.text));
        code.split_whitespace()
            .nth(1)
            .and_then(|u| u.parse().ok())
            .expect("bad APPENDUID")
    }

    /// UID STORE on the selected mailbox; `op` is `+FLAGS`, `-FLAGS` or `FLAGS`.
    pub fn uid_store(&mut self, set: &str, op: &str, flags: &[&str]) {
        self.ok(&format!("UID STORE {set} {op} ({})", flags.join(" ")));
    }

    /// UID COPY from the selected mailbox; returns (source uid, destination uid) from COPYUID.
    pub fn uid_copy(&mut self, set: &str, dest: &str) -> Vec<(u32, u32)> {
        let r = self.ok(&format!("UID COPY {set} {}", mailbox_arg(dest)));
        copyuid_pairs(&r)
    }

    /// UID MOVE from the selected mailbox; returns (source uid, destination uid).
    pub fn uid_move(&mut self, set: &str, dest: &str) -> Vec<(u32, u32)> {
        let r = self.ok(&format!("UID MOVE {set} {}", mailbox_arg(dest)));
        copyuid_pairs(&r)
    }

    /// EXPUNGE of the selected mailbox; returns the expunged sequence numbers.
    pub fn expunge(&mut self) -> Vec<u32> {
        let r = self.ok("EXPUNGE");
        expunged(&r)
    }

    /// UID EXPUNGE (only the given \Deleted messages).
    pub fn uid_expunge(&mut self, set: &str) -> Vec<u32> {
        let r = self.ok(&format!("UID EXPUNGE {set}"));
        expunged(&r)
    }

    /// STATUS with items like `"MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ"`.
    pub fn status(&mut self, mailbox: &str, items: &str) -> BTreeMap<String, u64> {
        let r = self.ok(&format!("STATUS {} ({items})", mailbox_arg(mailbox)));
        let mut m = BTreeMap::new();
        for d in r.data("STATUS") {
            if let Some(l) = d.last().and_then(|v| v.as_list()) {
                for kv in l.chunks(2) {
                    if let [k, v] = kv {
                        m.insert(
                            k.as_str().unwrap().to_ascii_uppercase(),
                            v.as_u64().unwrap_or(0),
                        );
                    }
                }
            }
        }
        m
    }

    /// `LIST "" <pattern>`.
    pub fn list(&mut self, pattern: &str) -> Vec<ListEntry> {
        let r = self.ok(&format!("LIST \"\" {}", mailbox_arg(pattern)));
        list_entries(&r, "LIST")
    }

    /// `LIST (SUBSCRIBED) "" "*"`: also shows stale subscriptions as `\NonExistent`.
    pub fn list_subscribed(&mut self) -> Vec<ListEntry> {
        let r = self.ok("LIST (SUBSCRIBED) \"\" \"*\"");
        list_entries(&r, "LIST")
    }

    /// `LSUB "" <pattern>` (hides subscriptions of mailboxes that no longer exist).
    pub fn lsub(&mut self, pattern: &str) -> Vec<ListEntry> {
        let r = self.ok(&format!("LSUB \"\" {}", mailbox_arg(pattern)));
        list_entries(&r, "LSUB")
    }

    /// SETMETADATA of one entry (`/private/comment`, `/shared/...`); `None` removes it.
    pub fn set_metadata(&mut self, mailbox: &str, entry: &str, value: Option<&str>) {
        let head = format!("SETMETADATA {} ({} ", mailbox_arg(mailbox), quote(entry));
        let r = match value {
            None => self.command(&format!("{head}NIL)")),
            Some(v) if v.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                self.command(&format!("{head}{})", quote(v)))
            }
            Some(v) => self.command_parts(&[
                Part::Text(head),
                Part::Literal(v.as_bytes()),
                Part::Text(")".into()),
            ]),
        };
        assert!(
            r.is_ok(),
            "SETMETADATA {mailbox} {entry} failed: {} {}",
            r.status,
            r.text
        );
    }

    /// GETMETADATA of one entry; None when unset.
    pub fn get_metadata(&mut self, mailbox: &str, entry: &str) -> Option<String> {
        let r = self.ok(&format!(
            "GETMETADATA {} ({})",
            mailbox_arg(mailbox),
            quote(entry)
        ));
        metadata_map(&r).remove(entry)
    }

    /// Every /private and /shared entry set on the mailbox (`DEPTH infinity`).
    pub fn get_all_metadata(&mut self, mailbox: &str) -> BTreeMap<String, String> {
        let r = self.ok(&format!(
            "GETMETADATA (DEPTH infinity) {} (\"/private\" \"/shared\")",
            mailbox_arg(mailbox)
        ));
        metadata_map(&r)
    }

    /// UID, flags, internaldate, size and body SHA-1 of every message, by UID. Uses EXAMINE
    /// and BODY.PEEK so nothing changes on the server.
    pub fn fetch_all(&mut self, mailbox: &str) -> Vec<MessageInfo> {
        let info = self.examine(mailbox);
        if info.exists == 0 {
            return Vec::new();
        }
        let r = self.ok("UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])");
        // Unsolicited FETCHes may split one message's items; merge by sequence number.
        let mut by_seq: BTreeMap<u64, BTreeMap<String, Value>> = BTreeMap::new();
        for d in r.data("FETCH") {
            let seq = d[0].as_u64().unwrap_or(0);
            let Some(items) = d.get(2).and_then(|v| v.as_list()) else {
                continue;
            };
            let e = by_seq.entry(seq).or_default();
            for kv in items.chunks(2) {
                if let [k, v] = kv {
                    e.insert(
                        k.as_str().unwrap_or_default().to_ascii_uppercase(),
                        v.clone(),
                    );
                }
            }
        }
        let mut out = Vec::new();
        for (seq, m) in by_seq {
            let body = match m.get("BODY[]") {
                Some(v) => v.as_bytes().unwrap_or(b"").to_vec(),
                None => continue, // only a flag update for a message not in the range
            };
            let mut flags: Vec<String> = m
                .get("FLAGS")
                .and_then(|v| v.as_list())
                .unwrap_or(&[])
                .iter()
                .filter_map(|f| f.as_str())
                .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
                .collect();
            flags.sort();
            out.push(MessageInfo {
                uid: m
                    .get("UID")
                    .and_then(|v| v.as_u64())
                    .unwrap_or_else(|| panic!("no UID for seq {seq}")) as u32,
                flags,
                internaldate: m
                    .get("INTERNALDATE")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
                size: m.get("RFC822.SIZE").and_then(|v| v.as_u64()).unwrap_or(0),
                sha1: sha1_hex_of(&body),
            });
        }
        out.sort();
        out
    }

    /// The full message (`BODY.PEEK[]`) of one UID in the selected mailbox.
    pub fn fetch_body(&mut self, uid: u32) -> Vec<u8> {
        let r = self.ok(&format!("UID FETCH {uid} (UID BODY.PEEK[])"));
        for d in r.data("FETCH") {
            if let Some(items) = d.get(2).and_then(|v| v.as_list()) {
                for kv in items.chunks(2) {
                    if let [k, v] = kv {
                        if k.is_atom("BODY[]") {
                            return v.as_bytes().unwrap_or(b"").to_vec();
                        }
                    }
                }
            }
        }
        panic!("UID {uid} not found");
    }
}

fn finish_reply(tag: &str, line: Vec<u8>, untagged: Vec<Vec<u8>>) -> Reply {
    let s = String::from_utf8_lossy(&line).into_owned();
    let rest = s.strip_prefix(tag).unwrap_or(&s).trim_start();
    let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Reply {
        status: status.to_ascii_uppercase(),
        text: text.to_string(),
        untagged,
    }
}

/// `{123}` (or `{123+}`) at the end of a line announces a literal of that many bytes.
pub(super) fn literal_len(line: &[u8]) -> Option<usize> {
    if !line.ends_with(b"}") {
        return None;
    }
    let open = line.iter().rposition(|&c| c == b'{')?;
    let inner = std::str::from_utf8(&line[open + 1..line.len() - 1]).ok()?;
    let digits = inner.strip_suffix('+').unwrap_or(inner);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn mailbox_info(r: &Reply) -> MailboxInfo {
    let num = |name: &str| r.code(name).and_then(|a| a.trim().parse::<u64>().ok());
    let exists = r
        .data("EXISTS")
        .iter()
        .filter_map(|d| d[0].as_u64())
        .next_back()
        .unwrap_or(0);
    MailboxInfo {
        uidvalidity: num("UIDVALIDITY").expect("no UIDVALIDITY in SELECT") as u32,
        uidnext: num("UIDNEXT").expect("no UIDNEXT in SELECT") as u32,
        highestmodseq: num("HIGHESTMODSEQ").unwrap_or(0),
        exists: exists as u32,
        mailboxid: r
            .code("MAILBOXID")
            .map(|a| a.trim_matches(|c| c == '(' || c == ')').to_string())
            .unwrap_or_default(),
    }
}

fn copyuid_pairs(r: &Reply) -> Vec<(u32, u32)> {
    let Some(code) = r.code("COPYUID") else {
        return Vec::new();
    };
    let f: Vec<&str> = code.split_whitespace().collect();
    if f.len() < 3 {
        return Vec::new();
    }
    expand_set(f[1]).into_iter().zip(expand_set(f[2])).collect()
}

fn expunged(r: &Reply) -> Vec<u32> {
    r.data("EXPUNGE")
        .iter()
        .filter_map(|d| d[0].as_u64())
        .map(|n| n as u32)
        .collect()
}

fn list_entries(r: &Reply, kw: &str) -> Vec<ListEntry> {
    let mut v = Vec::new();
    for d in r.data(kw) {
        if d.len() < 4 {
            continue;
        }
        let flags = d[1]
            .as_list()
            .unwrap_or(&[])
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        let name = mutf7_decode(&d[3].as_str().unwrap_or_default());
        v.push(ListEntry { flags, name });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn metadata_map(r: &Reply) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for d in r.data("METADATA") {
        if let Some(l) = d.get(2).and_then(|v| v.as_list()) {
            for kv in l.chunks(2) {
                if let [k, v] = kv {
                    if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                        m.insert(k, v);
                    }
                }
            }
        }
    }
    m
}
