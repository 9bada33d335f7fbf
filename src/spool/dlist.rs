//! Cyrus's "dlist" text syntax (formats/cyrus.md, "dlist"), as found in `cyrus.header` since
//! Cyrus 3.6 and in `mailboxes.db` values since 2.5: atoms, quoted strings, IMAP literals, `NIL`,
//! lists `( )` and key/value lists `%( )`. This module parses bytes already in memory and
//! serialises values the way Cyrus does (for a restore under a new name); it never touches a
//! file.
//!
//! Cyrus writes one space between items and prefers, in order, a bare atom, a quoted string
//! without escapes, and a literal. The reader here accepts what Cyrus's own readers accept
//! (backslash escapes in quoted strings, `{N}` and `{N+}` literals, keys in any string form),
//! and is bounded: nesting is limited to `MAX_DEPTH` and no allocation exceeds the input.

use crate::spool::ParseError;

/// Serialises as Cyrus's `dlist_printbuf` does: a bare atom when the bytes allow it, else a
/// quoted string, else a literal `{N+}\r\n`; one space between items.
pub fn write(value: &Dlist) -> Vec<u8> {
    let mut out = Vec::new();
    write_into(value, &mut out);
    out
}

fn write_string(bytes: &[u8], out: &mut Vec<u8>) {
    let atom_ok = !bytes.is_empty()
        && bytes.len() < 1024
        && bytes != b"NIL"
        && bytes
            .iter()
            .all(|&b| b > b' ' && b < 0x7f && !b"{()\"%*\\".contains(&b));
    let quote_ok = bytes.len() < 1024
        && bytes
            .iter()
            .all(|&b| (b' '..0x7f).contains(&b) && !b"\"%\\".contains(&b));
    if atom_ok {
        out.extend_from_slice(bytes);
    } else if quote_ok {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}+}}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
    }
}

fn write_into(value: &Dlist, out: &mut Vec<u8>) {
    match value {
        Dlist::Atom(b) | Dlist::Str(b) | Dlist::Literal(b) => write_string(b, out),
        Dlist::Nil => out.extend_from_slice(b"NIL"),
        Dlist::List(items) => {
            out.push(b'(');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                write_into(item, out);
            }
            out.push(b')');
        }
        Dlist::Kv(entries) => {
            out.extend_from_slice(b"%(");
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                write_string(k, out);
                out.push(b' ');
                write_into(v, out);
            }
            out.push(b')');
        }
    }
}

/// Deepest nesting of lists accepted. Cyrus's own values nest three levels at most; the bound
/// exists so that hostile input cannot exhaust the stack of the recursive parser.
pub const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dlist {
    /// A bare token, written by Cyrus for strings of 1–1023 safe bytes.
    Atom(Vec<u8>),
    /// A quoted string, with its escapes removed.
    Str(Vec<u8>),
    /// An IMAP literal `{N}\r\n` or `{N+}\r\n` followed by N bytes.
    Literal(Vec<u8>),
    /// The atom `NIL`: an absent value (a quoted `"NIL"` is a string).
    Nil,
    List(Vec<Dlist>),
    /// `%(key value ...)`, in file order; duplicate keys are kept.
    Kv(Vec<(Vec<u8>, Dlist)>),
}

impl Dlist {
    /// The value of the first `key` in a key/value list; `None` for other kinds of value.
    pub fn get(&self, key: &str) -> Option<&Dlist> {
        match self {
            Dlist::Kv(entries) => entries
                .iter()
                .find(|(k, _)| k.as_slice() == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The bytes of an atom, string or literal.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Dlist::Atom(b) | Dlist::Str(b) | Dlist::Literal(b) => Some(b),
            _ => None,
        }
    }

    /// `bytes()` when they are valid UTF-8.
    pub fn text(&self) -> Option<String> {
        self.bytes()
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    }

    /// `bytes()` read as an unsigned decimal number, the way Cyrus stores counters and times.
    pub fn number(&self) -> Option<u64> {
        let b = self.bytes()?;
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        b.iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    /// The items of a list; empty for anything else.
    pub fn items(&self) -> &[Dlist] {
        match self {
            Dlist::List(items) => items,
            _ => &[],
        }
    }

    /// The entries of a key/value list; empty for anything else.
    pub fn entries(&self) -> &[(Vec<u8>, Dlist)] {
        match self {
            Dlist::Kv(entries) => entries,
            _ => &[],
        }
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Dlist::Nil)
    }
}

/// Parses exactly one value. CR and LF may follow it (files end in a newline); anything else
/// after the value is an error, so a value cut or glued to garbage is never half-accepted.
pub fn parse(bytes: &[u8]) -> Result<Dlist, ParseError> {
    let mut p = Parser { bytes, pos: 0 };
    let value = p.value(0)?;
    if let Some(extra) = bytes[p.pos..]
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
    {
        return Err(p.error_at(p.pos + extra, "unexpected bytes after the dlist value"));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error_at(&self, pos: usize, detail: impl Into<String>) -> ParseError {
        ParseError::new(pos as u64, detail)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Dlist, ParseError> {
        match self.peek() {
            None => Err(self.error_at(self.pos, "dlist ends where a value was expected")),
            Some(b'(') => {
                let items = self.list(depth)?;
                Ok(Dlist::List(items))
            }
            Some(b'%') => self.kvlist(depth),
            Some(_) => self.string(true),
        }
    }

    fn enter(&self, depth: usize) -> Result<usize, ParseError> {
        if depth >= MAX_DEPTH {
            return Err(self.error_at(
                self.pos,
                format!("dlist nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(depth + 1)
    }

    fn list(&mut self, depth: usize) -> Result<Vec<Dlist>, ParseError> {
        let inner = self.enter(depth)?;
        let open = self.pos;
        self.pos += 1; // '('
        let mut items = Vec::new();
        loop {
            self.skip_spaces();
            match self.peek() {
                None => return Err(self.error_at(open, "list is not closed")),
                Some(b')') => {
                    self.pos += 1;
                    return Ok(items);
                }
                Some(_) => {
                    items.push(self.value(inner)?);
                    self.after_item()?;
                }
            }
        }
    }

    fn kvlist(&mut self, depth: usize) -> Result<Dlist, ParseError> {
        let start = self.pos;
        match self.bytes.get(start + 1) {
            Some(b'(') => {}
            Some(b'{') => {
                // Only the replication protocol sends `%{partition guid size}` file literals;
                // they have no place in the files mailpack reads.
                return Err(self.error_at(start, "dlist file literal %{...} is not supported"));
            }
            _ => return Err(self.error_at(start, "'%' not followed by '('")),
        }
        let inner = self.enter(depth)?;
        self.pos += 2;
        let mut entries = Vec::new();
        loop {
            self.skip_spaces();
            match self.peek() {
                None => return Err(self.error_at(start, "key/value list is not closed")),
                Some(b')') => {
                    self.pos += 1;
                    return Ok(Dlist::Kv(entries));
                }
                Some(_) => {
                    let key_at = self.pos;
                    // Cyrus prints keys as astrings, so a key needing quotes or a literal is
                    // legal; only a list in key position is not.
                    let key = match self.string(false)? {
                        Dlist::Atom(k) | Dlist::Str(k) | Dlist::Literal(k) => k,
                        _ => return Err(self.error_at(key_at, "key is not a string")),
                    };
                    if self.peek() != Some(b' ') {
                        return Err(self.error_at(self.pos, "key not followed by a space"));
                    }
                    self.skip_spaces();
                    let value = self.value(inner)?;
                    entries.push((key, value));
                    self.after_item()?;
                }
            }
        }
    }

    /// Items are separated by spaces; the only other thing that may follow one is the `)`
    /// closing its list.
    fn after_item(&self) -> Result<(), ParseError> {
        match self.peek() {
            Some(b' ') | Some(b')') | None => Ok(()),
            Some(_) => Err(self.error_at(self.pos, "expected a space or ')' after an item")),
        }
    }

    /// An atom, quoted string or literal. `nil_is_nil` is false for keys, where `NIL` is a name.
    fn string(&mut self, nil_is_nil: bool) -> Result<Dlist, ParseError> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            _ => self.atom(nil_is_nil),
        }
    }

    fn atom(&mut self, nil_is_nil: bool) -> Result<Dlist, ParseError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if matches!(b, b' ' | b'(' | b')' | b'\r' | b'\n') {
                break;
            }
            self.pos += 1;
        }
        let atom = &self.bytes[start..self.pos];
        if atom.is_empty() {
            let what = match self.peek() {
                Some(b) => format!("unexpected byte 0x{b:02x} where a value was expected"),
                None => "dlist ends where a value was expected".to_string(),
            };
            return Err(self.error_at(start, what));
        }
        if nil_is_nil && atom == b"NIL" {
            return Ok(Dlist::Nil);
        }
        Ok(Dlist::Atom(atom.to_vec()))
    }

    fn quoted(&mut self) -> Result<Dlist, ParseError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error_at(open, "quoted string is not closed")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Dlist::Str(out));
                }
                // As in Cyrus's reader, a backslash takes the next byte literally, whatever it is.
                Some(b'\\') => match self.bytes.get(self.pos + 1) {
                    Some(&b) => {
                        out.push(b);
                        self.pos += 2;
                    }
                    None => return Err(self.error_at(open, "quoted string is not closed")),
                },
                Some(b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> Result<Dlist, ParseError> {
        let open = self.pos;
        self.pos += 1;
        let digits_at = self.pos;
        let mut len: u64 = 0;
        while let Some(d) = self.peek().filter(u8::is_ascii_digit) {
            len = len
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or_else(|| self.error_at(digits_at, "literal length overflows"))?;
            self.pos += 1;
        }
        if self.pos == digits_at {
            return Err(self.error_at(open, "literal without a length"));
        }
        if self.peek() == Some(b'+') {
            self.pos += 1;
        }
        if self.bytes.get(self.pos..self.pos + 3) != Some(b"}\r\n".as_slice()) {
            return Err(self.error_at(self.pos, "literal length not followed by '}' CR LF"));
        }
        self.pos += 3;
        let left = self.bytes.len() - self.pos;
        // The length is checked against the bytes present before anything is copied, so a
        // hostile length cannot make us allocate.
        let n = usize::try_from(len)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| {
                self.error_at(
                    open,
                    format!("literal of {len} bytes runs past the end ({left} bytes left)"),
                )
            })?;
        let data = self.bytes[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(Dlist::Literal(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(s: &str) -> Dlist {
        Dlist::Atom(s.as_bytes().to_vec())
    }

    #[test]
    fn cyrus_values_serialise_back_to_their_bytes() {
        for line in [
            &b"%(T el N user.cassandane I c5575115-d09d-4d87-b74f-7d6b7a335dce A %(cassandane lrswipkxtecdan admin lrswipkxtecdan anyone p))"[..],
            b"%(T e I a6enf P default V 1795311870 C 1 F 11 M 1795311884 A %(alice lrswipkxtecdan bob lrsw))",
            b"%(T e N \"user.alice.Old Stuff\" U (NIL $Label1) H ())",
            b"%(K {3+}\r\na\"b)",
        ] {
            assert_eq!(write(&parse(line).unwrap()), line, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn cyrus_header_line_from_a_3_10_fixture() {
        let v = parse(
            b"%(T el N user.cassandane I c5575115-d09d-4d87-b74f-7d6b7a335dce \
              A %(cassandane lrswipkxtecdan admin lrswipkxtecdan anyone p))\n",
        )
        .unwrap();
        assert_eq!(v.get("T"), Some(&atom("el")));
        assert_eq!(v.get("N").and_then(Dlist::text).unwrap(), "user.cassandane");
        let acl = v.get("A").unwrap().entries();
        assert_eq!(acl.len(), 3);
        assert_eq!(acl[2], (b"anyone".to_vec(), atom("p")));
        assert_eq!(v.get("U"), None);
        assert_eq!(
            v.get("A").unwrap().get("admin"),
            Some(&atom("lrswipkxtecdan"))
        );
    }

    #[test]
    fn every_value_kind() {
        let v =
            parse(b"(a \"b c\" {3}\r\nx)y {0+}\r\n NIL \"NIL\" () %() (\\Seen (1 2)))").unwrap();
        assert_eq!(
            v,
            Dlist::List(vec![
                atom("a"),
                Dlist::Str(b"b c".to_vec()),
                Dlist::Literal(b"x)y".to_vec()),
                Dlist::Literal(Vec::new()),
                Dlist::Nil,
                Dlist::Str(b"NIL".to_vec()),
                Dlist::List(Vec::new()),
                Dlist::Kv(Vec::new()),
                Dlist::List(vec![
                    atom("\\Seen"),
                    Dlist::List(vec![atom("1"), atom("2")])
                ]),
            ])
        );
        assert_eq!(v.items().len(), 9);
        assert!(v.items()[4].is_nil());
        assert_eq!(v.items()[2].text().unwrap(), "x)y");
    }

    #[test]
    fn quoted_escapes_and_keys_in_any_string_form() {
        let v = parse(
            br#"%("a b" "x\"y\\z" {1+}
k 7 NIL NIL)"#,
        );
        // A bare LF after a literal's '}' is not CR LF.
        assert!(v.is_err());
        let v = parse(b"%(\"a b\" \"x\\\"y\\\\z\" {1+}\r\nk 7 NIL NIL)").unwrap();
        assert_eq!(v.get("a b"), Some(&Dlist::Str(b"x\"y\\z".to_vec())));
        assert_eq!(v.get("k").and_then(Dlist::number), Some(7));
        // NIL in key position is a key named NIL, in value position an absent value.
        assert_eq!(v.get("NIL"), Some(&Dlist::Nil));
    }

    #[test]
    fn mailboxes_db_value() {
        let value: &[u8] = b"%(A %(anyone lrs fred lrswipkxtecdan) \
              I 3a1b4d2c-7a8e-4b7e-9d1d-1c0e5f6a7b8c P default T e V 1595345698 F 1 \
              M 1595345698 H (%(V 1 N user.fred)))";
        // A trailing space is garbage, not a line end.
        let spaced = [value, b" "].concat();
        assert_eq!(parse(&spaced).unwrap_err().offset, value.len() as u64);
        let v = parse(&[value, b"\r\n"].concat()).unwrap();
        assert_eq!(v.get("V").and_then(Dlist::number), Some(1595345698));
        assert_eq!(v.get("P").and_then(Dlist::text).unwrap(), "default");
        let h = v.get("H").unwrap().items();
        assert_eq!(h[0].get("N").and_then(Dlist::text).unwrap(), "user.fred");
        assert_eq!(v.get("missing"), None);
        assert_eq!(atom("12a").number(), None);
        assert_eq!(atom("18446744073709551616").number(), None);
        assert_eq!(atom("18446744073709551615").number(), Some(u64::MAX));
    }

    #[test]
    fn errors_name_offsets() {
        let cases: &[(&[u8], u64)] = &[
            (b"", 0),
            (b"(a b", 0),
            (b"\"abc", 0),
            (b"{5}\r\nabc", 0),
            (b"{99999999999999999999999}\r\n", 1),
            (b"{}\r\n", 0),
            (b"{3}\nabc", 2),
            (b"a b", 1),
            (b"(a)b", 3),
            (b"%(k)", 3),
            (b"%(k v", 0),
            (b"%x", 0),
            (b"%{default abc 3}\r\nabc", 0),
            (b")", 0),
            (b"%((a) b)", 2),
        ];
        for (input, offset) in cases {
            let e = parse(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(
                e.offset,
                *offset,
                "{:?}: {e}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!("{}{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = "(".repeat(1_000_000);
        let e = parse(deep.as_bytes()).unwrap_err();
        assert_eq!(e.offset, MAX_DEPTH as u64);
        let deep_kv = "%(k ".repeat(MAX_DEPTH + 1);
        assert!(parse(deep_kv.as_bytes())
            .unwrap_err()
            .detail
            .contains("deeper"));
    }

    #[test]
    fn every_prefix_parses_or_fails_without_panic() {
        let sample: &[u8] = b"%(A %(anyone lrs) U (a NIL \"b c\" {2+}\r\nxy) Q user.fred)\r\n";
        for cut in 0..sample.len() {
            if let Err(e) = parse(&sample[..cut]) {
                assert!(e.offset <= cut as u64);
            }
        }
        assert!(parse(sample).is_ok());
    }
}
