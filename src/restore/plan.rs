//! A restore in two steps, as a backup reads through its `Source`: a `Target` first plans what
//! it will write (`RestorePlan`, which is all `--dry-run` shows) without writing anything, and
//! then executes that plan. The request a plan is made for (`Request`) is the run, the
//! mailboxes and the message filter the command chose.

use crate::error::Result;
use crate::guid::Guid;
use crate::progress::Tally;
use crate::store::Archive;

use std::sync::Arc;

use super::{LostEntry, MailboxAt};

/// What a restore was asked for: mailboxes of one run, and which of their messages.
pub struct Request<'m> {
    /// The userid, or the shared tree's name when `shared`.
    pub user: &'m str,
    /// The archive is a shared tree's (formats/backup-entries.md, "Shared mailboxes"): it has
    /// no per-user files, and its mailboxes' names are the tree's.
    pub shared: bool,
    /// The run whose state is restored.
    pub run: u64,
    pub mailboxes: Vec<&'m MailboxAt>,
    /// Every mailbox of the user was chosen (no `--mailbox`): an exact restore then brings back
    /// the user's own files (seen, subscriptions, sieve, quota) too.
    pub whole_user: bool,
    pub messages: MessageFilter,
}

/// Which messages of the chosen mailboxes are restored: all of them when every field is `None`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageFilter {
    pub uid: Option<u32>,
    pub sha1: Option<Guid>,
    /// Those present at the first time and expunged (or gone) by the second.
    pub expunged_between: Option<(i64, i64)>,
}

impl MessageFilter {
    pub fn is_all(&self) -> bool {
        self.uid.is_none() && self.sha1.is_none() && self.expunged_between.is_none()
    }
}

/// What a restore will write, decided before anything is written. The public fields are what a
/// dry run reports; `steps` is the target's own typed account of the same writes.
#[derive(Debug)]
pub struct RestorePlan<S> {
    /// The mailboxes restored, as the report names them.
    pub mailboxes: Vec<String>,
    /// How many messages the plan writes.
    pub messages: u64,
    /// Names in the archive that the restore refuses to turn into paths, and why.
    pub refused: Vec<String>,
    /// Mailboxes (and other items) left out, with the reason.
    pub bad: Vec<String>,
    /// Archive entries that failed their checks, or that a mailbox needs and the archive lacks.
    pub lost: Vec<LostEntry>,
    /// Every file, database record or IMAP folder the plan writes, in order.
    pub writes: Vec<String>,
    /// Mailboxes already on the target as the archive has them (resuming an interrupted
    /// restore): left as they are.
    pub present: Vec<String>,
    pub steps: S,
    /// Counters a progress display reads, bumped per message written (issue 19).
    pub progress: Option<Arc<Tally>>,
}

impl<S> RestorePlan<S> {
    /// A plan with nothing decided yet but its steps.
    pub fn new(steps: S) -> RestorePlan<S> {
        RestorePlan {
            mailboxes: Vec::new(),
            messages: 0,
            refused: Vec::new(),
            bad: Vec::new(),
            lost: Vec::new(),
            writes: Vec::new(),
            present: Vec::new(),
            steps,
            progress: None,
        }
    }

    /// The same plan with other steps.
    pub fn with_steps<T>(self, steps: T) -> RestorePlan<T> {
        RestorePlan {
            mailboxes: self.mailboxes,
            messages: self.messages,
            refused: self.refused,
            bad: self.bad,
            lost: self.lost,
            writes: self.writes,
            present: self.present,
            steps,
            progress: self.progress,
        }
    }

    /// The same plan with its steps turned into others.
    pub fn map_steps<T>(self, f: impl FnOnce(S) -> T) -> RestorePlan<T> {
        RestorePlan {
            mailboxes: self.mailboxes,
            messages: self.messages,
            refused: self.refused,
            bad: self.bad,
            lost: self.lost,
            writes: self.writes,
            present: self.present,
            steps: f(self.steps),
            progress: self.progress,
        }
    }

    /// What a dry run reports: the plan's writes, nothing written.
    pub fn dry_run(self) -> Outcome {
        Outcome {
            mailboxes: self.mailboxes,
            refused: self.refused,
            bad: self.bad,
            lost: self.lost,
            writes: self.writes,
            present: self.present,
            ..Outcome::default()
        }
    }

    /// Splits the plan into the outcome its execution starts from (what the plan already
    /// found: mailboxes, refusals, losses; nothing written yet) and its steps.
    pub fn into_start(self) -> (Outcome, S) {
        let start = Outcome {
            mailboxes: self.mailboxes,
            refused: self.refused,
            bad: self.bad,
            lost: self.lost,
            present: self.present,
            progress: self.progress,
            ..Outcome::default()
        };
        (start, self.steps)
    }
}

/// What a restore wrote, or for a dry run would write.
#[derive(Debug, Default)]
pub struct Outcome {
    pub mailboxes: Vec<String>,
    pub messages_written: u64,
    /// Bytes of the messages written.
    pub bytes_written: u64,
    /// Messages a previous, interrupted run of the same restore already wrote.
    pub messages_already_there: u64,
    pub refused: Vec<String>,
    /// Messages (and mailboxes, user files) not restored, with the reason; the rest went on.
    pub bad: Vec<String>,
    pub lost: Vec<LostEntry>,
    /// Every file, database record or IMAP folder written, in order.
    pub writes: Vec<String>,
    /// Mailboxes found on the target as the archive has them, left as they are.
    pub present: Vec<String>,
    /// What the operator chose that weakens the restore's safety (an IMAP session without TLS
    /// or without a certificate check): said after the run, where it cannot be missed.
    pub warnings: Vec<String>,
    /// What the target's format could not hold of a restored message (a Maildir folder holds
    /// at most 26 keywords): each with its folder and how many messages lost it. The messages
    /// themselves were restored.
    pub not_carried: Vec<String>,
    /// The plan's progress counters, bumped by `count` (and by the export writer pool).
    pub progress: Option<Arc<Tally>>,
}

impl Outcome {
    /// Adds a lost entry once: messages stored once may be listed by several mailboxes.
    pub fn push_lost(&mut self, entry: LostEntry) {
        if !self.lost.iter().any(|l| l.entry == entry.entry) {
            self.lost.push(entry);
        }
    }

    /// Counts one message file of `len` bytes written, or found already there from an earlier
    /// run.
    pub fn count(&mut self, written: bool, len: usize) {
        if written {
            self.messages_written += 1;
            self.bytes_written += len as u64;
            if let Some(progress) = &self.progress {
                progress.message(len as u64);
            }
        } else {
            self.messages_already_there += 1;
        }
    }
}

/// Where a restore writes: a Cyrus server, an IMAP server, or files. `plan` reads the archive
/// and the target and writes nothing; `execute` writes what the plan says. `'a` is the borrow
/// of the archive the plan's message bytes come from.
pub trait Target<'a> {
    /// The target's own steps: what goes where, and where its bytes come from.
    type Steps;
    /// Plans restoring the request's mailboxes as `archive` held them at its run.
    fn plan(&self, archive: &'a Archive, request: &Request) -> Result<RestorePlan<Self::Steps>>;
    /// Writes what `plan` planned.
    fn execute(&self, plan: RestorePlan<Self::Steps>) -> Result<Outcome>;
}

/// A target that also takes a single message by SHA-1, outside any mailbox (`--sha1` alone).
/// An exact Cyrus restore does not: it places whole mailboxes.
pub trait MessageTarget<'a>: Target<'a> {
    /// Plans writing the message `sha1`, its bytes already read and checked, without flags:
    /// no mailbox says what they were.
    fn plan_message(&self, sha1: Guid, bytes: Vec<u8>) -> Result<RestorePlan<Self::Steps>>;
}
