//! `mailpack backup`: every user (or those named) of a Cyrus server into per-user archives, one
//! committed run per user, users in parallel; one user's failure does not stop the others.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::{LocalSource, RemoteSource, Source};
use crate::backup::{backup_user, record_user_gone, UserOptions, UserReport};
use crate::compact::{compact, CompactOptions, CompactOutcome, PlanOptions};
use crate::error::{Error, Result};
use crate::progress::{OwnerProgress, Phase, Progress, Tally};
use crate::spool::{LockOptions, Owner, Spool};
use crate::store::{list_owner_archives_checking, ArchivePaths, StoreWriter, WriterOptions};

/// How many users a worker claims at once after a quick run (one that read no message file):
/// their listings then cross in one round trip, which on a run that finds nothing changed is
/// most of the remote cost per user. Near the end of the list batches shrink to one user, so
/// the last users spread over the workers (and `Claims::take` lets an idle worker take what
/// another still holds).
const QUICK_BATCH: usize = 8;

/// Where the spool is read: here, or through an agent on the mail host.
#[derive(Clone, Debug)]
pub enum SpoolAccess {
    Local {
        config: PathBuf,
    },
    /// A command that starts an agent (`ssh cyrus@imap1 mailpack agent`), run with `sh -c`
    /// once per worker.
    Remote {
        command: String,
        compress: bool,
    },
}

pub struct BackupOptions {
    pub spool: SpoolAccess,
    pub archive_dir: PathBuf,
    /// Only these users; all users of the server (and archives of vanished users) when both
    /// this and `shared` are empty.
    pub users: Vec<String>,
    /// Only these shared trees (formats/backup-entries.md, "Shared mailboxes"); all of them
    /// when both this and `users` are empty.
    pub shared: Vec<String>,
    pub jobs: usize,
    pub locks: LockOptions,
    pub writer: WriterOptions,
    /// Run the compaction policy on each archive after its user's run committed.
    pub compact: Option<PlanOptions>,
    /// Tombstone even when a large share of the mailboxes or users vanish at once
    /// (`MASS_GONE_*` here, `scan::MASS_DELETE_*` per archive).
    pub allow_mass_delete: bool,
    /// Push each archive to this bucket right after its run (and compaction) committed.
    pub push: Option<crate::commands::offsite::PushTarget>,
    /// Counters for a progress display (issue 19), per owner as its run goes; `None`: nobody
    /// watches.
    pub progress: Option<Arc<Progress>>,
}

/// Users with archives here that the server no longer lists are marked gone (every name
/// tombstoned) only while the server still lists at least half of the users that have archives
/// here, or fewer than `MASS_GONE_MIN` of them vanish. Users leave a mail server a few at a
/// time; half of them vanishing in one night is an emptied, truncated or wrong mailboxes.db, or
/// a spool that is not mounted, and tombstones are what later let the compactor drop their mail.
/// A server that lists no user at all is never taken at its word.
pub const MASS_GONE_SHARE_PERCENT: usize = 50;
/// One or two users leaving a small server is ordinary.
pub const MASS_GONE_MIN: usize = 2;

/// One user's result, as it arrives.
pub enum UserOutcome {
    /// The run committed; with `--compact`, what the policy then did (or why it failed: the
    /// run stays committed either way).
    /// With `--push`, what the push of the archive then did (or why it failed: the run stays
    /// committed either way).
    Done(
        UserReport,
        Option<std::result::Result<Box<CompactOutcome>, String>>,
        Option<std::result::Result<Box<crate::offsite::OwnerPushed>, String>>,
    ),
    Failed {
        /// The userid, or "shared <tree>".
        user: String,
        error: String,
    },
}

pub struct BackupSummary {
    pub users: usize,
    pub failed: usize,
    pub with_problems: usize,
    /// Set when the users that vanished from the server were not marked gone (`MASS_GONE_*`),
    /// or the server listed no user at all: why, for the operator.
    pub refused: Option<MassGone>,
    /// `*.tar.gz` files in the archive directory that are not mailpack archives: left alone.
    pub foreign: Vec<String>,
}

/// Users with archives here that the server did not list, left as they were.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MassGone {
    /// Users with archives here that the server does not list (not marked gone this run).
    pub users: Vec<String>,
    /// Users with archives here.
    pub archives: usize,
    /// Users the server lists.
    pub on_server: usize,
    pub message: String,
}

/// Runs the backup; `on_user` sees each user's outcome as it finishes (the CLI prints it).
pub fn backup(
    options: &BackupOptions,
    on_user: &mut dyn FnMut(&UserOutcome, usize, usize),
) -> Result<BackupSummary> {
    // Local: the spool and its annotations are read once and shared by the workers' sources.
    let local = match &options.spool {
        SpoolAccess::Local { config } => {
            let spool = Spool::open(config)?;
            let annotations = spool.annotations()?;
            Some((spool, annotations))
        }
        SpoolAccess::Remote { .. } => None,
    };
    create_archive_dir(&options.archive_dir)?;
    // Opened before any archive is written: the group commit's `syncfs` goes through it, and
    // reports the write errors of the file system since (formats/archive.md 7.1).
    let dir = std::fs::File::open(&options.archive_dir)
        .map_err(|e| Error::io("open", &options.archive_dir, e))?;
    let open_source = || -> Result<Box<dyn Source + Send + '_>> {
        Ok(match (&options.spool, &local) {
            (SpoolAccess::Local { .. }, Some((spool, annotations))) => {
                Box::new(LocalSource::new(spool, annotations, options.locks))
            }
            (SpoolAccess::Remote { command, compress }, _) => {
                Box::new(RemoteSource::spawn(command, *compress)?)
            }
            _ => unreachable!("a local spool is opened above"),
        })
    };

    // With ssh every session costs a key exchange and a login, so the workers' sessions are
    // opened all at once, and the one that lists the users serves a worker too.
    let mut sessions: Vec<Box<dyn Source + Send + '_>> = match options.spool {
        SpoolAccess::Remote { .. } if options.jobs > 1 => std::thread::scope(|scope| {
            let opening: Vec<_> = (0..options.jobs)
                .map(|_| scope.spawn(open_source))
                .collect();
            opening
                .into_iter()
                .map(|h| h.join().expect("opening a session does not panic"))
                .collect::<Result<Vec<_>>>()
        })?,
        _ => vec![open_source()?],
    };
    let on_server: Vec<Owner> = sessions[0]
        .users()?
        .into_iter()
        .map(Owner::User)
        .chain(sessions[0].shared_trees()?.into_iter().map(Owner::Shared))
        .collect();
    let listed: std::collections::HashSet<&Owner> = on_server.iter().collect();
    let everyone = options.users.is_empty() && options.shared.is_empty();
    let spare = std::sync::Mutex::new(sessions);
    let mut work: Vec<(Owner, bool)> = if everyone {
        // The server's own annotations go with a backup of everything.
        on_server
            .iter()
            .cloned()
            .chain(std::iter::once(Owner::Server))
            .map(|o| (o, false))
            .collect()
    } else {
        options
            .users
            .iter()
            .map(|u| Owner::User(u.clone()))
            .chain(options.shared.iter().map(|t| Owner::Shared(t.clone())))
            .map(|o| {
                let gone = !listed.contains(&o);
                (o, gone)
            })
            .collect()
    };
    // A foreign file at an archive's name is neither an owner to mark gone nor one to count.
    let working: std::collections::HashSet<&Owner> = work.iter().map(|(o, _)| o).collect();
    let (own, foreign) =
        list_owner_archives_checking(&options.archive_dir, &|o| !working.contains(o))?;
    // The server's own archive is written with everything, never marked gone.
    let archived: Vec<Owner> = own
        .into_iter()
        .filter_map(|(owner, _)| owner)
        .filter(|o| *o != Owner::Server)
        .collect();
    let refused = mass_gone(&archived, &on_server, options.allow_mass_delete);
    if everyone {
        for owner in &archived {
            if !listed.contains(owner) {
                work.push((owner.clone(), true));
            }
        }
    }
    if refused.is_some() {
        work.retain(|(_, gone)| !gone);
    }
    // An owner named twice is backed up once: its first run may still hold the archive's lock
    // waiting for its group's sync when the second would start.
    let mut seen = std::collections::HashSet::new();
    work.retain(|(owner, _)| seen.insert(owner.clone()));
    let total = work.len();
    if let Some(progress) = &options.progress {
        progress.set_owners_total(total as u64);
    }
    let jobs = options.jobs.clamp(1, total.max(1));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut writer = options.writer.clone();
    // Every archive gets a deflate pool as wide as the machine: while one user's thread reads
    // and hashes files, the pools keep the cores compressing. The pools are bounded (two members
    // in flight per thread), so memory stays a few MiB per job.
    writer.threads = cores;
    let user_options = UserOptions {
        retries: 3,
        host: super::hostname(),
        time: super::now(),
        allow_mass_delete: options.allow_mass_delete,
        // What `--compact` and `--push` do after a run needs it durable first.
        group_commit: options.compact.is_none() && options.push.is_none(),
    };

    let claims = Claims::new(work.len(), jobs);
    // In process a listing costs no round trip, so there is nothing to batch.
    let batch_limit = match options.spool {
        SpoolAccess::Local { .. } => 1,
        SpoolAccess::Remote { .. } => QUICK_BATCH,
    };
    // Bounded: a run waiting for the group's sync holds its archive's files open, and workers
    // wait here while the collector syncs rather than open more.
    // Without the group commit a run is reported as soon as it is done.
    let group_max = if user_options.group_commit {
        group_commit_max(jobs)
    } else {
        jobs.max(1)
    };
    let (tx, rx) = mpsc::sync_channel::<Finished>(group_max);
    let mut summary = BackupSummary {
        users: total,
        failed: 0,
        with_problems: 0,
        refused,
        foreign,
    };
    std::thread::scope(|scope| {
        for worker in 0..jobs {
            let tx = tx.clone();
            let (work, claims, writer, user_options, open_source, spare) =
                (&work, &claims, &writer, &user_options, &open_source, &spare);
            scope.spawn(move || {
                // One source per worker: an agent session serves one request at a time. A
                // session that failed is replaced for the next user.
                let mut source: Option<Box<dyn Source + Send + '_>> =
                    spare.lock().expect("never poisoned").pop();
                while let Some(i) = claims.take(worker) {
                    let (owner, gone) = &work[i];
                    // The next users are claimed when this run is about to commit, and their
                    // listings asked for ahead; after a quick run (no message file read), a
                    // batch of them.
                    let mut claim_next = |report: &UserReport| {
                        let limit = if report.message_files_read == 0 {
                            batch_limit
                        } else {
                            1
                        };
                        claims
                            .claim(worker, limit)
                            .into_iter()
                            .map(|j| &work[j])
                            .filter(|(_, gone)| !gone)
                            .map(|(o, _)| o.clone())
                            .collect()
                    };
                    let tally = match &options.progress {
                        Some(p) => p.start(&owner.to_string(), Phase::Backup),
                        None => OwnerProgress::unwatched(),
                    };
                    let result = (|| {
                        if source.is_none() && !*gone {
                            source = Some(open_source()?);
                        }
                        one_user(
                            options,
                            source.as_deref_mut(),
                            writer,
                            user_options,
                            owner,
                            *gone,
                            &mut claim_next,
                            &tally,
                        )
                    })();
                    let outcome = match result {
                        Ok(Some((report, store))) if store.is_unsynced() => {
                            let unsynced = Unsynced {
                                owner: owner.clone(),
                                report,
                                store,
                                tally,
                            };
                            if tx.send(Finished::Unsynced(Box::new(unsynced))).is_err() {
                                return;
                            }
                            continue;
                        }
                        Ok(Some((mut report, store))) => {
                            drop(store);
                            tally.set_phase(Phase::Compact);
                            let compaction = options.compact.as_ref().map(|plan| {
                                compact_after_run(&options.archive_dir, owner, plan, writer)
                                    .map(Box::new)
                                    .map_err(|e| e.to_string())
                            });
                            // A run of only its marker changes nothing a search shows but the
                            // run list; the next refresh or search catches that up, without
                            // reading the whole find index now. After a rewrite the next search
                            // walks the history again, as after `compact`.
                            let rewritten = matches!(&compaction, Some(Ok(c)) if c.compacted);
                            if report.entries_stored > 0 && !rewritten {
                                if let Ok(paths) =
                                    ArchivePaths::for_owner(&options.archive_dir, owner)
                                {
                                    report.problems.extend(super::find::refresh(&paths));
                                }
                            }
                            tally.set_phase(Phase::Push);
                            let pushed = options.push.as_ref().map(|target| {
                                ArchivePaths::for_owner(&options.archive_dir, owner)
                                    .and_then(|paths| target.push(owner, &paths))
                                    .map(Box::new)
                                    .map_err(|e| e.to_string())
                            });
                            UserOutcome::Done(report, compaction, pushed)
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            source = None;
                            UserOutcome::Failed {
                                user: owner.to_string(),
                                error: e.to_string(),
                            }
                        }
                    };
                    record_status(&options.archive_dir, owner, &outcome);
                    // Counted done before its result is reported.
                    drop(tally);
                    if tx.send(Finished::Outcome(Box::new(outcome))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut done = 0;
        let mut report = |outcome: UserOutcome| {
            done += 1;
            match &outcome {
                UserOutcome::Done(r, c, pushed)
                    if !r.problems.is_empty()
                        || matches!(c, Some(Err(_)))
                        || matches!(pushed, Some(Err(_))) =>
                {
                    summary.with_problems += 1
                }
                UserOutcome::Failed { .. } => summary.failed += 1,
                _ => {}
            }
            on_user(&outcome, done, total);
        };
        // Runs that stored nothing wait here until a group of them is synced at once
        // (formats/archive.md section 7, "Group commit"): when the group is full, when its
        // oldest run has waited GROUP_WAIT, and when the workers are done.
        let mut group: Vec<Unsynced> = Vec::new();
        let mut oldest: Option<Instant> = None;
        loop {
            let message = match oldest {
                Some(since) => rx.recv_timeout(GROUP_WAIT.saturating_sub(since.elapsed())),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            let last = match message {
                Ok(Finished::Outcome(outcome)) => {
                    report(*outcome);
                    continue;
                }
                Ok(Finished::Unsynced(run)) => {
                    group.push(*run);
                    oldest.get_or_insert_with(Instant::now);
                    if group.len() < group_max {
                        continue;
                    }
                    false
                }
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            for outcome in commit_group(&options.archive_dir, &dir, std::mem::take(&mut group)) {
                report(outcome);
            }
            oldest = None;
            if last {
                break;
            }
        }
    });
    Ok(summary)
}

/// What a worker hands the collector for one owner.
enum Finished {
    Outcome(Box<UserOutcome>),
    /// A run of only its marker, committed once the collector's group is synced.
    Unsynced(Box<Unsynced>),
}

struct Unsynced {
    owner: Owner,
    report: UserReport,
    store: StoreWriter,
    tally: OwnerProgress,
}

/// How long a run that stored nothing may wait for others to share its sync: short beside what
/// a backup of many owners takes, long against one owner's quick run (well under a
/// millisecond), so groups fill before they time out.
const GROUP_WAIT: Duration = Duration::from_millis(50);

/// The largest group of runs synced at once: each holds its archive, index and lock files
/// open (four descriptors) until then, so the group stays within the open-files limit,
/// counting the runs the workers are in. (The CLI raises the soft limit first.)
fn group_commit_max(jobs: usize) -> usize {
    const MOST: usize = 512;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    let open_files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 16) as usize
    } else {
        1024
    };
    (open_files.saturating_sub(128 + 8 * jobs) / 8).clamp(1, MOST)
}

/// Makes a group's runs durable (`sync_group` through `dir`, the archive directory opened
/// before any run), writes their index blocks and reports them.
fn commit_group(
    archive_dir: &Path,
    dir: &std::fs::File,
    mut group: Vec<Unsynced>,
) -> Vec<UserOutcome> {
    let synced = {
        let mut stores: Vec<&mut StoreWriter> = group.iter_mut().map(|u| &mut u.store).collect();
        crate::store::sync_group(dir, &mut stores)
    };
    group
        .into_iter()
        .zip(synced)
        .map(|(mut run, synced)| {
            let outcome = match synced {
                Ok(()) => {
                    run.store.finish_grouped();
                    if let Some(failure) = run.store.index_failure() {
                        run.report.problems.push(failure.to_string());
                    }
                    drop(run.store);
                    UserOutcome::Done(run.report, None, None)
                }
                Err(e) => UserOutcome::Failed {
                    user: run.owner.to_string(),
                    error: format!(
                        "{e}; run {} may not have reached the disk and is not counted as done",
                        run.report.run.unwrap_or(0)
                    ),
                },
            };
            record_status(archive_dir, &run.owner, &outcome);
            drop(run.tally);
            outcome
        })
        .collect()
}

/// Whether marking the users with archives here that the server does not list as gone would be
/// a mass deletion (`MASS_GONE_*`), or the server lists nobody: then who and why.
fn mass_gone(archived: &[Owner], on_server: &[Owner], allow: bool) -> Option<MassGone> {
    let server: std::collections::HashSet<&Owner> = on_server.iter().collect();
    let gone: Vec<String> = archived
        .iter()
        .filter(|o| !server.contains(o))
        .map(Owner::to_string)
        .collect();
    if allow {
        return None;
    }
    let message = if !on_server.iter().any(|o| !o.is_shared()) {
        format!(
            "the server lists no user at all (an empty or wrong mailboxes.db?): nothing was \
             backed up, and none of the {} users with archives here was marked gone; if they \
             really all left, run again with --allow-mass-delete",
            gone.len()
        )
    } else if gone.len() >= MASS_GONE_MIN
        && gone.len() * 100 > archived.len() * MASS_GONE_SHARE_PERCENT
    {
        format!(
            "{} of the {} users with archives here are not on the server (it lists {}): more \
             likely an emptied or wrong mailboxes.db or an unmounted spool than users leaving, \
             so none of them was marked gone; if they really left, run again with \
             --allow-mass-delete",
            gone.len(),
            archived.len(),
            on_server.len()
        )
    } else {
        return None;
    };
    Some(MassGone {
        users: gone,
        archives: archived.len(),
        on_server: on_server.len(),
        message,
    })
}

/// Which worker backs up which user. Users are handed out in order from a shared cursor. A
/// worker may claim several at once into its own queue (their listings are then asked for in
/// one round trip); once the cursor has run out, an idle worker takes the last user of another
/// worker's queue, so no claimed user waits behind a slow run while a worker sits idle. (The
/// listing the owner asked for is then dropped unread by its source, see `Source::list_ahead`.)
struct Claims {
    next: AtomicUsize,
    total: usize,
    queues: Vec<Mutex<VecDeque<usize>>>,
}

impl Claims {
    fn new(total: usize, workers: usize) -> Claims {
        Claims {
            next: AtomicUsize::new(0),
            total,
            queues: (0..workers).map(|_| Mutex::default()).collect(),
        }
    }

    fn queue(&self, worker: usize) -> std::sync::MutexGuard<'_, VecDeque<usize>> {
        self.queues[worker].lock().expect("never poisoned")
    }

    /// The next user for `worker`: its own claims first, then the cursor, then another
    /// worker's last claim. `None` when every user has been taken.
    fn take(&self, worker: usize) -> Option<usize> {
        if let Some(i) = self.queue(worker).pop_front() {
            return Some(i);
        }
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        if i < self.total {
            return Some(i);
        }
        (0..self.queues.len())
            .filter(|&other| other != worker)
            .find_map(|other| self.queue(other).pop_back())
    }

    /// Claims the users `worker` takes next, up to `limit` of them (fewer near the end of the
    /// list, so the last users spread over the workers), unless it still holds claims.
    /// Returns the users newly claimed, in the order they will be taken.
    fn claim(&self, worker: usize, limit: usize) -> Vec<usize> {
        let mut queue = self.queue(worker);
        if !queue.is_empty() {
            return Vec::new();
        }
        let left = self.total.saturating_sub(self.next.load(Ordering::SeqCst));
        let batch = (left / (4 * self.queues.len())).clamp(1, limit.max(1));
        let first = self.next.fetch_add(batch, Ordering::SeqCst);
        queue.extend((first..first + batch).filter(|&i| i < self.total));
        queue.iter().copied().collect()
    }
}

#[allow(clippy::too_many_arguments)] // one call, in the worker loop above
fn one_user(
    options: &BackupOptions,
    source: Option<&mut (dyn Source + Send + '_)>,
    writer: &WriterOptions,
    user_options: &UserOptions,
    owner: &Owner,
    gone: bool,
    next_users: &mut dyn FnMut(&UserReport) -> Vec<Owner>,
    progress: &Tally,
) -> Result<Option<(UserReport, StoreWriter)>> {
    let paths = ArchivePaths::for_owner(&options.archive_dir, owner)?;
    if gone && !paths.archive.exists() {
        return Err(Error::NotFound(match owner {
            Owner::User(user) => format!("user {user} on the server"),
            Owner::Shared(tree) => format!("shared mailbox {tree} on the server"),
            Owner::Server => "the server".into(),
        }));
    }
    if !matches!(owner, Owner::User(_)) {
        create_archive_dir(&paths.dir())?;
    }
    let mut notices = Vec::new();
    let mut store = StoreWriter::open_streamed(&paths, writer, &mut notices)?;
    let mut report = match (gone, source) {
        (true, _) => match record_user_gone(&mut store, user_options, owner)? {
            Some(r) => r,
            None => return Ok(None),
        },
        (false, Some(source)) => backup_user(
            source,
            owner,
            &mut store,
            user_options,
            next_users,
            progress,
        )?,
        (false, None) => unreachable!("a source is opened for every user on the server"),
    };
    // Repairs made while opening are worth an operator's attention.
    report.problems.extend(notices);
    if let Some(failure) = store.index_failure() {
        report.problems.push(failure.to_string());
    }
    Ok(Some((report, store)))
}

/// Notes an owner's run in its status file (formats/status.md) for `mailpack status`. A status
/// file that cannot be written costs the record, never the run.
fn record_status(archive_dir: &Path, owner: &Owner, outcome: &UserOutcome) {
    use crate::store::status::{self, Failure, OwnerRecord, Success};
    let Ok(paths) = ArchivePaths::for_owner(archive_dir, owner) else {
        return;
    };
    let record = OwnerRecord {
        kind: owner.kind().to_string(),
        name: owner.name().to_string(),
    };
    let now = crate::time::now();
    let _ = status::update(&paths.archive, record, |s| match outcome {
        UserOutcome::Done(r, _, _) => {
            if let Some(run) = r.run {
                // A heal asked for before this run began made it a full pass: that request is
                // done. One asked for while it ran waits for the next run.
                let started = std::time::SystemTime::now()
                    .checked_sub(std::time::Duration::from_secs_f64(r.seconds.max(0.0)))
                    .unwrap_or(std::time::UNIX_EPOCH);
                let _ = status::heal_done_if_older(&paths.archive, started);
                s.last_attempt_ok = Some(true);
                s.last_success = Some(Success {
                    time: now,
                    run,
                    seconds: r.seconds,
                    bytes_read: r.bytes_read,
                    messages_added: r.messages_added,
                });
            }
        }
        UserOutcome::Failed { error, .. } => {
            s.last_attempt_ok = Some(false);
            s.last_failure = Some(Failure {
                time: now,
                reason: error.clone(),
            });
        }
    });
}

/// The policy, run once the user's run is committed and its writer gone. It takes the lock
/// afresh, so a writer that slips in between is simply waited for or reported busy.
fn compact_after_run(
    dir: &std::path::Path,
    owner: &Owner,
    plan: &PlanOptions,
    writer: &WriterOptions,
) -> Result<CompactOutcome> {
    let paths = ArchivePaths::for_owner(dir, owner)?;
    let options = CompactOptions {
        plan: PlanOptions {
            now: super::now(),
            ..plan.clone()
        },
        writer: writer.clone(),
    };
    compact(&paths, &options, &mut Vec::new())
}

fn create_archive_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io("create", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every user is taken exactly once, whatever mix of batches, cursor and stealing.
    #[test]
    fn every_user_is_taken_once_and_an_idle_worker_takes_another_workers_last_claim() {
        let claims = Claims::new(40, 2);
        let mut taken = Vec::new();
        let first = claims.take(0).unwrap();
        taken.push(first);
        // Worker 0 claims a batch: 39 left over 2 workers gives 4.
        let batch = claims.claim(0, QUICK_BATCH);
        assert_eq!(batch, [1, 2, 3, 4]);
        assert_eq!(
            claims.claim(0, QUICK_BATCH),
            Vec::<usize>::new(),
            "still holds claims"
        );
        // Worker 1 takes the rest from the cursor, then steals from the back of 0's queue.
        while let Some(i) = claims.take(1) {
            taken.push(i);
        }
        assert_eq!(&taken[taken.len() - 4..], [4, 3, 2, 1]);
        assert_eq!(claims.take(0), None);
        taken.sort();
        assert_eq!(taken, (0..40).collect::<Vec<_>>());

        // Near the end of the list a claim is one user, whatever the limit.
        let claims = Claims::new(10, 2);
        claims.take(0);
        assert_eq!(claims.claim(0, QUICK_BATCH), [1]);
        assert_eq!(claims.claim(1, 1), [2]);
    }
}
