//! Progress while backup, restore, compact and push run (issue 19), read from the counters the
//! commands bump (`crate::progress`) by a ticker thread: on a terminal, bars on stderr, one per
//! owner in progress under a line for the whole command (indicatif); with `--progress-json`, a
//! `progress` JSON line on stderr every couple of seconds and a final one
//! (formats/json-output.md, "Progress"). Everything goes to stderr: stdout carries only results.
//! Bars are drawn only when stderr is a terminal and neither `--json` nor `--progress-json` is
//! given; otherwise (cron) a one-line summary goes to stderr once a minute, so a long run in a
//! log still shows it moving.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::{self, Printer};
use crate::progress::{OwnerSnapshot, Progress, Snapshot};

/// Milliseconds between `--progress-json` lines; for tests, which cannot wait two seconds a
/// line. Not documented as an option: the interval is not part of the format.
const INTERVAL_ENV: &str = "MAILPACK_PROGRESS_INTERVAL_MS";
const JSON_INTERVAL: Duration = Duration::from_secs(2);
/// Between one-line summaries when stderr is not a terminal: often enough to see a long run
/// move in a log, rare enough not to fill it.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// How often the bars are refreshed from the counters (indicatif itself draws at most 20 times
/// a second).
const BAR_INTERVAL: Duration = Duration::from_millis(150);
/// Owners shown with a bar of their own; the rest are counted on one line.
const MAX_OWNER_BARS: usize = 12;

#[derive(Args, Debug, Clone, Copy)]
pub(super) struct ProgressArgs {
    /// Print a `progress` JSON line on stderr every 2 seconds while the command runs, and a
    /// final one at the end: owners done, bytes and messages so far, and the owners in progress
    /// (formats/json-output.md). Bars on a terminal are left out then.
    #[arg(long)]
    progress_json: bool,
}

/// The progress display of one command; `finish` it after the last result line.
pub(super) struct Display {
    progress: Option<Arc<Progress>>,
    json: bool,
    bars: Option<MultiProgress>,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Display {
    /// Starts the display `args` and the terminal ask for. `json_output`: the command prints
    /// `--json` lines, so no bars are drawn.
    pub(super) fn start(
        command: &'static str,
        args: ProgressArgs,
        json_output: bool,
        p: &mut Printer,
    ) -> Display {
        let bars = !args.progress_json && !json_output && std::io::stderr().is_terminal();
        let mut display = Display {
            progress: None,
            json: args.progress_json,
            bars: None,
            stop: None,
            ticker: None,
        };
        let progress = Progress::new(command);
        let (stop, stopped) = mpsc::channel::<()>();
        let ticker = if bars {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            // Result lines and notes are printed with the bars cleared, then the bars redrawn.
            p.set_bars(Some(multi.clone()));
            display.bars = Some(multi.clone());
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut view = BarsView::new(multi);
                loop {
                    view.update(&progress.snapshot());
                    if stopped.recv_timeout(BAR_INTERVAL) != Err(mpsc::RecvTimeoutError::Timeout) {
                        view.clear();
                        return;
                    }
                }
            })
        } else if args.progress_json {
            let interval = std::env::var(INTERVAL_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(JSON_INTERVAL, Duration::from_millis);
            let progress = progress.clone();
            std::thread::spawn(move || loop {
                if stopped.recv_timeout(interval) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                if let Ok(line) =
                    output::json_line("progress", &JsonProgress::of(progress.snapshot(), false))
                {
                    output::progress_line(&line);
                }
            })
        } else {
            let progress = progress.clone();
            let started = Instant::now();
            std::thread::spawn(move || loop {
                if stopped.recv_timeout(SUMMARY_INTERVAL) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                let line = summary_line(&progress.snapshot(), started.elapsed());
                output::progress_line(&format!("mailpack: progress: {line}"));
            })
        };
        display.progress = Some(progress);
        display.stop = Some(stop);
        display.ticker = Some(ticker);
        display
    }

    /// The counters for the command to bump; `None` when nothing is shown.
    pub(super) fn progress(&self) -> Option<Arc<Progress>> {
        self.progress.clone()
    }

    fn stop(&mut self, p: &mut Printer) {
        drop(self.stop.take());
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        if self.bars.take().is_some() {
            p.set_bars(None);
        }
    }

    /// Stops the display; with `--progress-json`, prints the final progress line (after the
    /// command's last result line, before its summary notes).
    pub(super) fn finish(mut self, p: &mut Printer) {
        self.stop(p);
        if let (true, Some(progress)) = (self.json, &self.progress) {
            if let Ok(line) =
                output::json_line("progress", &JsonProgress::of(progress.snapshot(), true))
            {
                output::progress_line(&line);
            }
        }
    }
}

impl Drop for Display {
    /// A command that failed stops its display without a final line.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

/// A progress line's data: the snapshot, and whether it is the command's last.
#[derive(serde::Serialize)]
struct JsonProgress {
    #[serde(flatten)]
    snapshot: Snapshot,
    #[serde(rename = "final")]
    last: bool,
}

impl JsonProgress {
    fn of(snapshot: Snapshot, last: bool) -> JsonProgress {
        JsonProgress { snapshot, last }
    }
}

/// The bars on the terminal: a line for the command, then one per owner in progress.
struct BarsView {
    multi: MultiProgress,
    top: ProgressBar,
    owners: HashMap<String, ProgressBar>,
    more: Option<ProgressBar>,
    started: Instant,
}

impl BarsView {
    fn new(multi: MultiProgress) -> BarsView {
        let top = multi.add(ProgressBar::new(0).with_style(line_style()));
        BarsView {
            multi,
            top,
            owners: HashMap::new(),
            more: None,
            started: Instant::now(),
        }
    }

    fn update(&mut self, s: &Snapshot) {
        self.top
            .set_message(summary_line(s, self.started.elapsed()));
        let shown: Vec<&OwnerSnapshot> = s.current.iter().take(MAX_OWNER_BARS).collect();
        let gone: Vec<String> = self
            .owners
            .keys()
            .filter(|name| !shown.iter().any(|o| &o.owner == *name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(bar) = self.owners.remove(&name) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
        }
        for o in shown {
            let bar = self.owners.entry(o.owner.clone()).or_insert_with(|| {
                let bar = ProgressBar::new(0).with_style(line_style());
                match &self.more {
                    Some(more) => self.multi.insert_before(more, bar),
                    None => self.multi.add(bar),
                }
            });
            owner_bar(bar, o);
        }
        let hidden = s.current.len().saturating_sub(MAX_OWNER_BARS);
        match (&self.more, hidden) {
            (None, 0) => {}
            (Some(more), 0) => {
                more.finish_and_clear();
                self.multi.remove(more);
                self.more = None;
            }
            (Some(more), n) => more.set_message(format!("  and {n} more owners")),
            (None, n) => {
                let more = self.multi.add(ProgressBar::new(0).with_style(line_style()));
                more.set_message(format!("  and {n} more owners"));
                self.more = Some(more);
            }
        }
    }

    fn clear(&mut self) {
        for bar in self.owners.values().chain(self.more.iter()) {
            bar.finish_and_clear();
        }
        self.top.finish_and_clear();
        let _ = self.multi.clear();
    }
}

/// One owner's bar: a gauge when its work's size is known (compact, push: bytes; restore:
/// messages), else its counts.
fn owner_bar(bar: &ProgressBar, o: &OwnerSnapshot) {
    let counts = format!(
        "{} {}: {} messages, {}",
        o.phase.name(),
        o.owner,
        o.messages,
        output::bytes(o.bytes)
    );
    let gauge = match (o.bytes_total, o.messages_total) {
        (Some(total), _) => Some((o.bytes.min(total), total)),
        (None, Some(total)) => Some((o.messages.min(total), total)),
        (None, None) => None,
    };
    match gauge {
        Some((pos, len)) => {
            if bar.length() != Some(len) {
                bar.set_style(gauge_style());
                bar.set_length(len);
            }
            bar.set_position(pos);
            bar.set_message(counts);
        }
        None => {
            if bar.length() != Some(0) {
                bar.set_style(line_style());
                bar.set_length(0);
            }
            bar.set_message(format!("  {counts}"));
        }
    }
}

fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("{wide_msg}").expect("a valid template")
}

fn gauge_style() -> ProgressStyle {
    ProgressStyle::with_template("  [{bar:24}] {percent:>3}% {wide_msg}")
        .expect("a valid template")
        .progress_chars("=> ")
}

/// The whole command on one line: owners done of all, messages, bytes, rate, time.
fn summary_line(s: &Snapshot, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let total = match s.owners_total {
        0 => "?".to_string(), // still listing the owners
        n => n.to_string(),
    };
    format!(
        "{}: {}/{total} owners, {} messages, {} ({}/s), {}",
        s.command,
        s.owners_done,
        s.messages,
        output::bytes(s.bytes),
        output::bytes((s.bytes as f64 / secs) as u64),
        clock(elapsed)
    )
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
