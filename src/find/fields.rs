//! The header fields a help desk searches by, read from a stored message's header
//! (formats/find-index.md section 2.3): decoded by mail-parser, each cut to a bounded length.

use mail_parser::{Address, MessageParser};

/// Bytes of a message read for its header: enough for any real header, and a bound on what a
/// hostile message can make the parser chew through.
pub const HEADER_READ_MAX: usize = 64 << 10;

/// Bytes kept of each field.
pub const FIELD_MAX: usize = 1024;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fields {
    /// The Date header, Unix seconds UTC.
    pub date: Option<i64>,
    pub from: Option<String>,
    /// To, then Cc.
    pub to: Option<String>,
    pub subject: Option<String>,
    /// Without angle brackets.
    pub message_id: Option<String>,
}

/// The fields of a message from its first bytes (at most `HEADER_READ_MAX` are looked at).
pub fn fields_of(message: &[u8]) -> Fields {
    let head = &message[..message.len().min(HEADER_READ_MAX)];
    let head = &head[..header_end(head)];
    let Some(parsed) = MessageParser::new().parse_headers(head) else {
        return Fields::default();
    };
    let to = [parsed.to(), parsed.cc()]
        .into_iter()
        .flatten()
        .map(addresses)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    Fields {
        date: parsed
            .date()
            .filter(|d| d.is_valid())
            .map(|d| d.to_timestamp()),
        from: parsed.from().map(addresses).and_then(bounded),
        to: bounded(to),
        subject: parsed.subject().map(str::to_string).and_then(bounded),
        message_id: parsed
            .message_id()
            .map(|id| id.trim_matches(|c| c == '<' || c == '>').to_string())
            .and_then(bounded),
    }
}

/// The end of the header section (after its blank line), or all of `head` when no blank line
/// falls within it.
fn header_end(head: &[u8]) -> usize {
    let crlf = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(head.len()),
    }
}

fn addresses(address: &Address) -> String {
    address
        .iter()
        .map(|a| match (a.name(), a.address()) {
            (Some(name), Some(addr)) => format!("{name} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(name), None) => name.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `None` for an empty field; otherwise the field cut to `FIELD_MAX` bytes at a character
/// boundary, control characters (a hostile header's line breaks, escapes) made spaces so one
/// result stays one line.
fn bounded(s: String) -> Option<String> {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut end = s.len().min(FIELD_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_string())
}

/// Lower case for case-insensitive matching.
pub fn folded(s: &str) -> String {
    s.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_words_are_decoded_and_addresses_joined() {
        let m = b"From: =?UTF-8?Q?Bj=C3=B6rn?= <bjorn@example.com>\r\n\
To: alice@example.com\r\nCc: \"Carol C\" <carol@example.com>\r\n\
Subject: =?ISO-8859-1?Q?Rechnung_M=E4rz?=\r\n\
Message-ID: <abc.123@example.com>\r\n\
Date: Tue, 3 Mar 2026 09:15:00 +0100\r\n\r\nbody\r\n";
        let f = fields_of(m);
        assert_eq!(f.from.as_deref(), Some("Björn <bjorn@example.com>"));
        assert_eq!(
            f.to.as_deref(),
            Some("alice@example.com, Carol C <carol@example.com>")
        );
        assert_eq!(f.subject.as_deref(), Some("Rechnung März"));
        assert_eq!(f.message_id.as_deref(), Some("abc.123@example.com"));
        assert_eq!(f.date, Some(1_772_525_700));
    }

    #[test]
    fn the_body_is_not_read_and_fields_are_bounded() {
        let long = "x".repeat(5000);
        let m = format!("Subject: {long}\r\n\r\nFrom: not@header\r\n");
        let f = fields_of(m.as_bytes());
        assert_eq!(f.subject.as_ref().map(String::len), Some(FIELD_MAX));
        assert_eq!(f.from, None);
        // Garbage is no error: just no fields.
        assert_eq!(fields_of(&[0xff; 300]).subject, None);
        let f = fields_of("Subject: a\u{1b}[31mb\r\n\r\n".as_bytes());
        assert_eq!(f.subject.as_deref(), Some("a [31mb"));
    }
}
