//! Test helpers, std only: temporary directories, a seeded generator, running the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("mailpack-it-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: reproducible pseudo-random data without a crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Text that compresses like mail: words from a small vocabulary, lines of ~70 chars.
    pub fn mail_text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "the",
            "meeting",
            "invoice",
            "attached",
            "please",
            "regards",
            "tomorrow",
            "project",
            "review",
            "budget",
            "Received:",
            "from",
            "by",
            "with",
            "ESMTP",
            "id",
            "for",
            "thanks",
            "quarterly",
            "report",
            "deadline",
            "server",
            "mailbox",
            "backup",
            "Subject:",
            "Re:",
        ];
        let mut out = Vec::with_capacity(len + 16);
        let mut line = 0;
        while out.len() < len {
            let w = WORDS[self.below(WORDS.len() as u64) as usize];
            out.extend_from_slice(w.as_bytes());
            line += w.len() + 1;
            if line > 70 {
                out.extend_from_slice(b"\r\n");
                line = 0;
            } else {
                out.push(b' ');
            }
        }
        out.truncate(len);
        out
    }

    /// Incompressible bytes, like an attachment already compressed.
    pub fn noise(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailpack"))
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run mailpack")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stdout of a command that must have exited 0 (else a panic showing both streams).
pub fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(o), stderr(o));
    stdout(o)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
