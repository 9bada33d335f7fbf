//! The LMTP client (RFC 2033) that delivers test mail to lmtpd.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use super::{crlf, IO_TIMEOUT};

/// A synchronous LMTP session. I/O errors panic; refused recipients are returned.
pub struct Lmtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Lmtp {
    /// Connects and sends LHLO.
    pub fn connect(addr: SocketAddr) -> Lmtp {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("LMTP connect {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut l = Lmtp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let (code, text) = l.reply();
        assert_eq!(code, 220, "LMTP greeting: {text}");
        let (code, text) = l.cmd("LHLO mailpack-tests");
        assert_eq!(code, 250, "LHLO: {text}");
        l
    }

    /// One (possibly multi-line) reply: code and the joined text.
    fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .r
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("LMTP read: {e}"));
            assert!(n > 0, "LMTP server closed the connection");
            let line = line.trim_end();
            text.push_str(line);
            text.push('\n');
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, text.trim_end().to_string());
            }
        }
    }

    fn cmd(&mut self, c: &str) -> (u16, String) {
        self.w
            .write_all(format!("{c}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("LMTP write: {e}"));
        self.reply()
    }

    /// One transaction; one result per recipient, in order. The message is CRLF-normalized and
    /// dot-stuffed on the way.
    pub fn deliver(
        &mut self,
        from: &str,
        recipients: &[&str],
        message: &[u8],
    ) -> Vec<Result<(), String>> {
        let (code, text) = self.cmd(&format!("MAIL FROM:<{from}>"));
        if code != 250 {
            return recipients
                .iter()
                .map(|_| Err(format!("MAIL FROM: {text}")))
                .collect();
        }
        let mut results: Vec<Result<(), String>> = Vec::new();
        for r in recipients {
            let (code, text) = self.cmd(&format!("RCPT TO:<{r}>"));
            results.push(if code == 250 {
                Ok(())
            } else {
                Err(format!("RCPT TO: {text}"))
            });
        }
        if results.iter().all(|r| r.is_err()) {
            self.cmd("RSET");
            return results;
        }
        let (code, text) = self.cmd("DATA");
        if code != 354 {
            self.cmd("RSET");
            return recipients
                .iter()
                .map(|_| Err(format!("DATA: {text}")))
                .collect();
        }
        let msg = crlf(message);
        let mut data = Vec::with_capacity(msg.len() + 64);
        for line in msg.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(b".") {
                data.push(b'.');
            }
            data.extend_from_slice(line);
        }
        if !data.ends_with(b"\r\n") {
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        self.w
            .write_all(&data)
            .unwrap_or_else(|e| panic!("LMTP write: {e}"));
        // LMTP answers DATA once per accepted recipient (RFC 2033), in RCPT order.
        for r in results.iter_mut() {
            if r.is_ok() {
                let (code, text) = self.reply();
                if code != 250 {
                    *r = Err(format!("after DATA: {text}"));
                }
            }
        }
        results
    }

    pub fn quit(mut self) {
        let _ = self.w.write_all(b"QUIT\r\n");
        let _ = self.reply();
    }
}
