//! The thread pool that deflates the writer's members. Members go out in the order they came
//! in, whatever order the workers finish them in, and each is compressed by `compress_member`
//! alone, so the archive's bytes do not depend on the thread count. With one thread nothing is
//! spawned and members are compressed on the caller's thread; with more, the threads start with
//! the first large member.

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::member::compress_member;

type Job = (Vec<u8>, mpsc::SyncSender<io::Result<Vec<u8>>>);

/// Members smaller than this are compressed on the caller's thread while no worker has been
/// started: starting threads costs more than deflating a few KiB.
const INLINE_MAX: usize = 64 << 10;

/// Compresses members on `threads` workers; results are collected in submission order.
pub(super) struct DeflatePool {
    level: u32,
    jobs: Option<mpsc::SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    in_flight: VecDeque<(u64, mpsc::Receiver<io::Result<Vec<u8>>>)>,
    threads: usize,
}

impl DeflatePool {
    pub(super) fn new(level: u32, threads: usize) -> DeflatePool {
        DeflatePool {
            level,
            jobs: None,
            workers: Vec::new(),
            in_flight: VecDeque::new(),
            threads: threads.max(1),
        }
    }

    /// Starts the workers, on the first member worth them: a run that commits only small
    /// members (a no-change run's commit marker) starts no thread at all, which on a server of
    /// many owners was most of such a run's cost (BENCHMARKS.md, "Many owners").
    fn start_workers(&mut self) {
        let (tx, rx) = mpsc::sync_channel::<Job>(self.threads * 2);
        let rx = Arc::new(Mutex::new(rx));
        let level = self.level;
        for _ in 0..self.threads {
            let rx = Arc::clone(&rx);
            self.workers.push(std::thread::spawn(move || loop {
                let job = rx.lock().map(|r| r.recv());
                let Ok(Ok((raw, reply))) = job else { return };
                let _ = reply.send(compress_member(&raw, level));
            }));
        }
        self.jobs = Some(tx);
    }

    /// How many members may wait before the writer writes one out: two per worker keep every
    /// worker busy while the writer is at the disk; without workers there is nothing to wait for.
    pub(super) fn max_in_flight(&self) -> usize {
        if self.threads > 1 {
            self.threads * 2
        } else {
            0
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Queues member `seq`'s tar bytes for compression. Until a member of at least
    /// `INLINE_MAX` bytes comes, members are compressed here, on the caller's thread.
    pub(super) fn submit(&mut self, seq: u64, raw: Vec<u8>) {
        if self.jobs.is_none() && self.threads > 1 && raw.len() >= INLINE_MAX {
            self.start_workers();
        }
        let (tx, rx) = mpsc::sync_channel(1);
        match &self.jobs {
            Some(jobs) => {
                if let Err(mpsc::SendError((raw, reply))) = jobs.send((raw, tx)) {
                    // Workers gone (cannot happen while we hold the sender): compress here.
                    let _ = reply.send(compress_member(&raw, self.level));
                }
            }
            None => {
                let _ = tx.send(compress_member(&raw, self.level));
            }
        }
        self.in_flight.push_back((seq, rx));
    }

    /// The oldest submitted member, compressed; waits for it if it is not done yet.
    pub(super) fn next_done(&mut self) -> Option<(u64, io::Result<Vec<u8>>)> {
        let (seq, rx) = self.in_flight.pop_front()?;
        let result = rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("compression worker died")));
        Some((seq, result))
    }
}

impl Drop for DeflatePool {
    fn drop(&mut self) {
        self.in_flight.clear();
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_come_back_in_order_and_the_same_on_any_thread_count() {
        let members: Vec<Vec<u8>> = (0..20u8)
            // Small members first (compressed inline), then ones past INLINE_MAX (which start
            // the workers) mixed with small ones.
            .map(|i| {
                vec![
                    i;
                    1000 + 5000 * (i as usize % 4)
                        + if i > 5 { 30_000 * (i as usize % 3) } else { 0 }
                ]
            })
            .collect();
        let run = |threads: usize| {
            let mut pool = DeflatePool::new(6, threads);
            let mut out = Vec::new();
            for (seq, raw) in members.iter().enumerate() {
                pool.submit(seq as u64, raw.clone());
                while pool.in_flight() > pool.max_in_flight() {
                    out.push(pool.next_done().unwrap());
                }
            }
            while let Some(done) = pool.next_done() {
                out.push(done);
            }
            out.into_iter()
                .map(|(seq, r)| (seq, r.unwrap()))
                .collect::<Vec<_>>()
        };
        let one = run(1);
        assert_eq!(
            one.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        assert_eq!(one, run(4));
        assert_eq!(one[3].1, compress_member(&members[3], 6).unwrap());
    }
}
