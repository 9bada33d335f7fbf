//! Progress of a long command (issue 19): counters that the workers of backup, restore, compact
//! and push bump as they go, and snapshots that the command line reads from another thread to
//! draw bars or print `--progress-json` lines (formats/json-output.md, "Progress"). Prints
//! nothing. The hot path is a relaxed add on counters only its own worker touches; the one lock
//! is taken when an owner starts or ends and when a snapshot is read.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// What is being done to an owner now. A backup with `--compact` or `--push` goes on to those
/// once its run committed; their work is not added to the backup's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Backup,
    Restore,
    Compact,
    Push,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Backup, Phase::Restore, Phase::Compact, Phase::Push];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Backup => "backup",
            Phase::Restore => "restore",
            Phase::Compact => "compact",
            Phase::Push => "push",
        }
    }
}

/// One owner's counters. What `bytes` and `messages` count depends on the command:
/// - backup: bytes read from the spool and messages stored (the run's `bytes_read` and
///   `messages_added`);
/// - restore: bytes and messages written (`bytes_written`, `messages_written`);
/// - compact: bytes of the old archive gone through, and message entries kept;
/// - push: archive and index bytes uploaded (before encryption); no messages.
#[derive(Debug)]
pub struct Tally {
    owner: String,
    phase: AtomicU8,
    bytes: AtomicU64,
    messages: AtomicU64,
    /// 0 while unknown.
    bytes_total: AtomicU64,
    messages_total: AtomicU64,
}

impl Tally {
    fn new(owner: &str, phase: Phase) -> Tally {
        Tally {
            owner: owner.to_string(),
            phase: AtomicU8::new(phase as u8),
            bytes: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            messages_total: AtomicU64::new(0),
        }
    }

    /// Counters nobody watches: for callers that want no progress.
    pub fn unwatched() -> Tally {
        Tally::new("", Phase::Backup)
    }

    /// One message done, of `bytes` bytes.
    pub fn message(&self, bytes: u64) {
        self.messages.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    pub fn add_messages(&self, n: u64) {
        self.messages.fetch_add(n, Relaxed);
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Relaxed);
    }

    /// Raises the counts to a report's running totals (never lowers them: snapshots stay
    /// monotone). For work that keeps its own counts, such as a backup run's report.
    pub fn reached(&self, bytes: u64, messages: u64) {
        self.bytes.fetch_max(bytes, Relaxed);
        self.messages.fetch_max(messages, Relaxed);
    }

    /// Raises the byte count to `n` (never lowers it: snapshots stay monotone).
    pub fn bytes_at_least(&self, n: u64) {
        self.bytes.fetch_max(n, Relaxed);
    }

    /// How many bytes this owner's work will count, once known.
    pub fn set_bytes_total(&self, n: u64) {
        self.bytes_total.store(n, Relaxed);
    }

    /// How many messages this owner's work will count, once known.
    pub fn set_messages_total(&self, n: u64) {
        self.messages_total.store(n, Relaxed);
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Relaxed);
    }

    /// `inner`, with every byte read from it added to the byte count.
    pub fn reader<R: std::io::Read>(&self, inner: R) -> CountingReader<'_, R> {
        CountingReader { inner, tally: self }
    }

    fn snapshot(&self) -> OwnerSnapshot {
        let nonzero = |n: u64| (n > 0).then_some(n);
        OwnerSnapshot {
            owner: self.owner.clone(),
            phase: Phase::ALL[self.phase.load(Relaxed) as usize % Phase::ALL.len()],
            bytes: self.bytes.load(Relaxed),
            messages: self.messages.load(Relaxed),
            bytes_total: nonzero(self.bytes_total.load(Relaxed)),
            messages_total: nonzero(self.messages_total.load(Relaxed)),
        }
    }
}

/// A reader that adds what it reads to a tally's bytes (`Tally::reader`).
pub struct CountingReader<'t, R> {
    inner: R,
    tally: &'t Tally,
}

impl<R: std::io::Read> std::io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.add_bytes(n as u64);
        Ok(n)
    }
}

/// A whole command's progress: the owners it will go through, those done, the counters of those
/// done, and the owners in progress.
#[derive(Debug)]
pub struct Progress {
    command: &'static str,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    owners_total: u64,
    owners_done: u64,
    /// Counters of the owners done.
    bytes: u64,
    messages: u64,
    active: Vec<Arc<Tally>>,
}

impl Progress {
    pub fn new(command: &'static str) -> Arc<Progress> {
        Arc::new(Progress {
            command,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds counts worth showing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_owners_total(&self, n: u64) {
        self.state().owners_total = n;
    }

    /// An owner's work begins; it counts as done when the returned handle is dropped.
    pub fn start(self: &Arc<Self>, owner: &str, phase: Phase) -> OwnerProgress {
        let tally = Arc::new(Tally::new(owner, phase));
        self.state().active.push(tally.clone());
        OwnerProgress {
            progress: Some(self.clone()),
            tally,
        }
    }

    /// The counters as of now: every count only ever grows from one snapshot to the next.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.state();
        let current: Vec<OwnerSnapshot> = state.active.iter().map(|t| t.snapshot()).collect();
        Snapshot {
            command: self.command,
            owners_done: state.owners_done,
            owners_total: state.owners_total,
            bytes: state.bytes + current.iter().map(|o| o.bytes).sum::<u64>(),
            messages: state.messages + current.iter().map(|o| o.messages).sum::<u64>(),
            current,
        }
    }
}

/// One owner's work in progress; derefs to its counters. Dropping it moves its counts into the
/// command's totals and counts the owner done.
#[derive(Debug)]
pub struct OwnerProgress {
    progress: Option<Arc<Progress>>,
    tally: Arc<Tally>,
}

impl OwnerProgress {
    /// The counters, to hand to work that outlives a borrow (a pool of writer threads).
    pub fn tally(&self) -> Arc<Tally> {
        self.tally.clone()
    }

    /// Counters nobody watches, done with when dropped.
    pub fn unwatched() -> OwnerProgress {
        OwnerProgress {
            progress: None,
            tally: Arc::new(Tally::unwatched()),
        }
    }
}

impl std::ops::Deref for OwnerProgress {
    type Target = Tally;
    fn deref(&self) -> &Tally {
        &self.tally
    }
}

impl Drop for OwnerProgress {
    fn drop(&mut self) {
        let Some(progress) = &self.progress else {
            return;
        };
        // Under the lock: a snapshot sees the owner's counts either in its row or in the totals,
        // never in both or neither.
        let mut state = progress.state();
        state.active.retain(|t| !Arc::ptr_eq(t, &self.tally));
        state.owners_done += 1;
        state.bytes += self.tally.bytes.load(Relaxed);
        state.messages += self.tally.messages.load(Relaxed);
    }
}

/// What `--progress-json` prints (formats/json-output.md, "Progress").
#[derive(Clone, Debug, serde::Serialize)]
pub struct Snapshot {
    pub command: &'static str,
    pub owners_done: u64,
    pub owners_total: u64,
    /// Over every owner, done and in progress.
    pub bytes: u64,
    pub messages: u64,
    /// The owners in progress, in the order they started.
    pub current: Vec<OwnerSnapshot>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct OwnerSnapshot {
    pub owner: String,
    pub phase: Phase,
    pub bytes: u64,
    pub messages: u64,
    /// Bytes this owner's work will count, when known (compact, push).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Messages this owner's work will count, when known (restore).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_total: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_move_from_the_owner_to_the_totals_when_it_is_done() {
        let progress = Progress::new("backup");
        progress.set_owners_total(2);
        let a = progress.start("a", Phase::Backup);
        let b = progress.start("b", Phase::Backup);
        a.message(10);
        b.message(5);
        b.add_bytes(1);
        let s = progress.snapshot();
        assert_eq!((s.owners_done, s.bytes, s.messages), (0, 16, 2));
        assert_eq!(s.current.len(), 2);
        drop(a);
        let s = progress.snapshot();
        assert_eq!((s.owners_done, s.bytes, s.messages), (1, 16, 2));
        assert_eq!(s.current.len(), 1);
        assert_eq!(s.current[0].owner, "b");
        b.set_phase(Phase::Push);
        b.bytes_at_least(3);
        assert_eq!(progress.snapshot().current[0].bytes, 6, "never lowered");
        assert_eq!(progress.snapshot().current[0].phase, Phase::Push);
        drop(b);
        let s = progress.snapshot();
        assert_eq!(
            (s.owners_done, s.owners_total, s.bytes, s.messages),
            (2, 2, 16, 2)
        );
        assert!(s.current.is_empty());
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let progress = Progress::new("restore");
        std::thread::scope(|scope| {
            for t in 0..4 {
                let progress = &progress;
                scope.spawn(move || {
                    let owner = progress.start(&format!("u{t}"), Phase::Restore);
                    for _ in 0..1000 {
                        owner.message(3);
                    }
                });
            }
        });
        let s = progress.snapshot();
        assert_eq!((s.owners_done, s.bytes, s.messages), (4, 12_000, 4000));
    }
}
