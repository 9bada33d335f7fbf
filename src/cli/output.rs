//! Printing: results on stdout (plain lines or JSON lines), diagnostics on stderr. A closed
//! stdout pipe is remembered so the command can stop quietly.

use std::io::{self, Write};

use crate::commands::EntryView;
use crate::error::Error;

pub struct Printer {
    closed: bool,
    /// Progress bars on stderr (`cli::progress`): cleared while a line is printed, then redrawn.
    bars: Option<indicatif::MultiProgress>,
}

impl Printer {
    pub fn new() -> Printer {
        Printer {
            closed: false,
            bars: None,
        }
    }

    pub(super) fn set_bars(&mut self, bars: Option<indicatif::MultiProgress>) {
        self.bars = bars;
    }

    /// Runs `f` with the progress bars (if any) cleared from the terminal.
    fn above_bars<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bars {
            Some(bars) => bars.suspend(f),
            None => f(),
        }
    }

    pub fn out_line(&mut self, s: &str) {
        if self.closed {
            return;
        }
        if let Err(e) = self.above_bars(|| write_line(s)) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                self.closed = true;
            }
        }
    }

    /// One JSON line: `{"type": kind, "data": value}` (formats/json-output.md).
    pub fn json<T: serde::Serialize>(&mut self, kind: &str, value: &T) -> Result<(), Error> {
        let line = json_line(kind, value)?;
        self.out_line(&line);
        Ok(())
    }

    pub fn notices(&mut self, notices: &[String]) {
        for n in notices {
            self.note(n);
        }
    }

    pub fn note(&mut self, s: &str) {
        self.above_bars(|| eprintln!("mailpack: {s}"));
    }

    pub fn error(&mut self, e: &Error) {
        self.above_bars(|| eprintln!("mailpack: error: {e}"));
    }

    pub fn stdout_closed(&self) -> bool {
        self.closed
    }

    pub fn mark_stdout_closed(&mut self) {
        self.closed = true;
    }
}

/// One line on stdout, written whole under the stdout lock.
fn write_line(s: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let mut line = String::with_capacity(s.len() + 1);
    line.push_str(s);
    line.push('\n');
    out.write_all(line.as_bytes())?;
    out.flush()
}

/// `{"type": kind, "data": value}` as one line.
pub fn json_line<T: serde::Serialize>(kind: &str, value: &T) -> Result<String, Error> {
    serde_json::to_string(&serde_json::json!({ "type": kind, "data": value }))
        .map_err(|e| Error::usage(format!("cannot encode JSON: {e}")))
}

/// A progress line on stderr (house rule: stdout carries only results), written whole under
/// the stderr lock so it never cuts into a note.
pub(super) fn progress_line(s: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(format!("{s}\n").as_bytes());
}

/// A writer for entry data on stdout that remembers a closed pipe.
pub struct Out<W: Write> {
    inner: io::BufWriter<W>,
    closed: bool,
}

impl<W: Write> Out<W> {
    pub fn new(w: W) -> Self {
        Out {
            inner: io::BufWriter::with_capacity(256 << 10, w),
            closed: false,
        }
    }

    pub fn closed(&self) -> bool {
        self.closed
    }
}

impl<W: Write> Write for Out<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| {
            if e.kind() == io::ErrorKind::BrokenPipe {
                self.closed = true;
            }
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| {
            if e.kind() == io::ErrorKind::BrokenPipe {
                self.closed = true;
            }
        })
    }
}

pub fn entry_line(e: &EntryView) -> String {
    match &e.target {
        Some(t) if t.is_empty() => format!("run {:<4} tombstone {}", e.run, e.name),
        Some(t) => format!("run {:<4} link {:>10} {} -> {}", e.run, "", e.name, t),
        None => format!("run {:<4} file {:>10} {}", e.run, e.size, e.name),
    }
}

pub fn user_summary(r: &crate::backup::UserReport) -> String {
    if r.gone {
        return format!(
            "{}: gone from the server; names tombstoned in run {}",
            r.user,
            r.run.unwrap_or(0)
        );
    }
    format!(
        "{}: run {}: {} mailboxes, {} changed, {} skipped, {} messages added, {} read, {} written{}, {:.2}s{}",
        r.user,
        r.run.unwrap_or(0),
        r.mailboxes,
        r.changed,
        r.skipped,
        r.messages_added,
        bytes(r.bytes_read),
        bytes(r.bytes_written),
        if r.wire_bytes > 0 { format!(", {} over the wire", bytes(r.wire_bytes)) } else { String::new() },
        r.seconds,
        if r.problems.is_empty() { String::new() } else { format!(", {} problems", r.problems.len()) }
    )
}

/// Bytes in binary units, for people.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn mailbox_line(m: &crate::commands::spool::MailboxView) -> String {
    if m.tombstone {
        return format!("{} (gone: {})", m.name, m.mbtype);
    }
    let mut line = format!(
        "{} {} {} v{} messages {} expunged {}",
        m.name,
        m.uniqueid.as_deref().unwrap_or("-"),
        m.mbtype,
        m.index_version.map_or("?".into(), |v| v.to_string()),
        m.messages.map_or("?".into(), |v| v.to_string()),
        m.expunged.map_or("?".into(), |v| v.to_string()),
    );
    if let Some(path) = &m.path {
        line.push_str(&format!(" {}", path.display()));
    }
    if let Some(problem) = &m.problem {
        line.push_str(&format!(" PROBLEM: {problem}"));
    }
    line
}

pub fn record_line(r: &crate::commands::spool::RecordView) -> String {
    let state = if r.unlinked {
        " unlinked"
    } else if r.expunged {
        " expunged"
    } else {
        ""
    };
    format!(
        "uid {} {} {} size {} modseq {} ({}){state}",
        r.uid,
        r.guid,
        utc(r.internaldate),
        r.size,
        r.modseq,
        r.flags.join(" ")
    )
}

/// Unix seconds as an RFC 3339 UTC time, without a date crate.
pub fn utc(secs: i64) -> String {
    crate::time::format_utc(secs)
}

/// The dry-run report of one archive: the decision, then drops by reason.
pub fn compaction_plan(
    p: &mut Printer,
    archive: &std::path::Path,
    plan: &crate::compact::CompactPlan,
) -> Result<(), Error> {
    p.out_line(&format!(
        "{}: {}, live {:.1}% (threshold {}% after {} weeks): {}; about {} after",
        archive.display(),
        bytes(plan.archive_bytes),
        plan.live_percent,
        plan.threshold_percent,
        plan.weeks_since_compaction,
        if plan.compact {
            "would compact"
        } else {
            "would leave as is"
        },
        bytes(plan.estimated_bytes_after)
    ));
    let d = &plan.dropped;
    for (what, (n, raw)) in [
        ("old metadata versions", d.old_metadata_versions),
        (
            "messages expunged beyond retention",
            d.expunged_beyond_retention,
        ),
        ("deleted mailboxes' entries", d.deleted_mailboxes),
        ("duplicate copies", d.duplicate_copies),
    ] {
        if n > 0 {
            p.out_line(&format!("  drop {n} {what} ({} uncompressed)", bytes(raw)));
        }
    }
    for d in &plan.runs {
        p.out_line(&format!(
            "  run {} ({}): {}",
            d.run,
            utc(d.time),
            if d.kept {
                format!("kept: {}", d.why.join(", "))
            } else {
                "dropped: no retention rule keeps it restorable".to_string()
            }
        ));
    }
    Ok(())
}

/// One line for a compaction that ran (or that the policy skipped).
pub fn compaction_line(archive: &std::path::Path, o: &crate::compact::CompactOutcome) -> String {
    format!("{}: {}", archive.display(), compaction_summary(o))
}

pub fn compaction_summary(o: &crate::compact::CompactOutcome) -> String {
    if let Some(hold) = &o.held {
        format!("left as is: under a legal hold ({hold}); nothing is dropped while held")
    } else if o.compacted {
        format!(
            "compacted {} -> {} ({} entries kept, {} dropped; {} stretches copied as they were, {} members rebuilt)",
            bytes(o.bytes_before),
            bytes(o.bytes_after),
            o.entries_kept,
            o.entries_dropped,
            o.stretches_copied,
            o.members_rebuilt
        )
    } else {
        format!(
            "left as is: live {:.1}% is not below the threshold {}% ({} weeks since the last compaction)",
            o.plan.live_percent, o.plan.threshold_percent, o.plan.weeks_since_compaction
        )
    }
}

/// A mailbox as `ls --at` shows it.
pub fn mailbox_as_of_line(m: &crate::commands::restore::MailboxAsOf) -> String {
    format!(
        "{} uniqueid {} uidvalidity {} uidnext {} highestmodseq {}: {} messages",
        m.name,
        m.uniqueid,
        m.uidvalidity,
        m.uidnext,
        m.highestmodseq,
        m.messages.len()
    )
}

/// A message as `ls --at` shows it.
pub fn message_as_of_line(m: &crate::commands::restore::MessageAsOf) -> String {
    format!(
        "uid {} {} size {} date {} flags ({}){}",
        m.uid,
        m.sha1,
        m.size,
        utc(m.internaldate),
        m.flags.join(" "),
        if m.expunged { " expunged" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
