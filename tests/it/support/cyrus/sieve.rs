//! The ManageSieve client (RFC 5804), enough for timsieved. ManageSieve strings, literals and
//! atoms are IMAP's (RFC 5804 section 1.2), so it reads them with the IMAP parser.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::imap::{literal_len, parse_values, quote};
use super::{base64, crlf, IO_TIMEOUT};

/// A synchronous ManageSieve session. I/O errors panic; most commands return a refusal as `Err`.
pub struct ManageSieve {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl ManageSieve {
    pub fn connect(addr: SocketAddr) -> ManageSieve {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("sieve connect {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut m = ManageSieve {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        // The greeting lists the capabilities; no test needs them.
        let (status, lines) = m.response();
        assert!(
            status.starts_with("OK"),
            "sieve greeting: {status} {lines:?}"
        );
        m
    }

    /// Data lines (literals inline) and the final OK/NO/BYE line.
    fn response(&mut self) -> (String, Vec<Vec<u8>>) {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self
                .r
                .read_until(b'\n', &mut line)
                .unwrap_or_else(|e| panic!("sieve read: {e}"));
            assert!(n > 0, "sieve server closed the connection");
            while line.ends_with(b"\n") || line.ends_with(b"\r") {
                line.pop();
            }
            if let Some(len) = literal_len(&line) {
                let mut lit = vec![0; len];
                self.r
                    .read_exact(&mut lit)
                    .unwrap_or_else(|e| panic!("sieve literal read: {e}"));
                line.extend_from_slice(b"\r\n");
                line.extend_from_slice(&lit);
                // The rest of the line after the literal (usually just CRLF).
                let mut tail = Vec::new();
                self.r.read_until(b'\n', &mut tail).unwrap();
                while tail.ends_with(b"\n") || tail.ends_with(b"\r") {
                    tail.pop();
                }
                line.extend_from_slice(&tail);
            }
            let upper: Vec<u8> = line
                .iter()
                .take(3)
                .map(|b| b.to_ascii_uppercase())
                .collect();
            if upper.starts_with(b"OK") || upper.starts_with(b"NO") || upper.starts_with(b"BYE") {
                return (String::from_utf8_lossy(&line).into_owned(), lines);
            }
            lines.push(line);
        }
    }

    fn send(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.w
            .write_all(data)
            .unwrap_or_else(|e| panic!("sieve write: {e}"));
        let (status, lines) = self.response();
        if status.to_ascii_uppercase().starts_with("OK") {
            Ok(lines)
        } else {
            Err(status)
        }
    }

    /// SASL PLAIN; `authz` may be empty.
    pub fn authenticate(&mut self, authz: &str, authc: &str, pass: &str) -> Result<(), String> {
        let token = base64(format!("{authz}\0{authc}\0{pass}").as_bytes());
        self.send(format!("AUTHENTICATE \"PLAIN\" \"{token}\"\r\n").as_bytes())
            .map(|_| ())
    }

    pub fn put_script(&mut self, name: &str, script: &str) -> Result<(), String> {
        let body = crlf(script.as_bytes());
        let mut cmd = format!("PUTSCRIPT {} {{{}+}}\r\n", quote(name), body.len()).into_bytes();
        cmd.extend_from_slice(&body);
        cmd.extend_from_slice(b"\r\n");
        self.send(&cmd).map(|_| ())
    }

    /// Makes `name` the active script; `""` deactivates all.
    pub fn set_active(&mut self, name: &str) -> Result<(), String> {
        self.send(format!("SETACTIVE {}\r\n", quote(name)).as_bytes())
            .map(|_| ())
    }

    /// `(name, active)` pairs.
    pub fn list_scripts(&mut self) -> Vec<(String, bool)> {
        let lines = self
            .send(b"LISTSCRIPTS\r\n")
            .unwrap_or_else(|e| panic!("LISTSCRIPTS: {e}"));
        lines
            .iter()
            .filter_map(|l| {
                let v = parse_values(l);
                let name = v.first()?.as_str()?;
                let active = v.get(1).is_some_and(|a| a.is_atom("ACTIVE"));
                Some((name, active))
            })
            .collect()
    }

    pub fn get_script(&mut self, name: &str) -> Result<String, String> {
        let lines = self.send(format!("GETSCRIPT {}\r\n", quote(name)).as_bytes())?;
        let joined: Vec<u8> = lines.concat();
        match parse_values(&joined).first() {
            Some(v) => Ok(v.as_str().unwrap_or_default()),
            None => Err("empty GETSCRIPT answer".into()),
        }
    }

    pub fn logout(mut self) {
        let _ = self.w.write_all(b"LOGOUT\r\n");
        let _ = self.response();
    }
}
