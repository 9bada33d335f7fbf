//! The one writer of an archive (formats/archive.md section 7): takes the writer lock, opens the
//! archive for writing (cutting an interrupted tail first), and commits each run in the
//! documented durability order: the marker, fsync of the archive, then the index block.

use std::fs::File;
use std::path::Path;

use super::sidecar;
use super::{Archive, ArchiveHandle, ArchivePaths, RunInfo, WriterLock, WriterWait};
use crate::archive::{ArchiveId, ArchiveWriter, CommittedRun, RunSummary};
use crate::error::{Error, Result};
use crate::io::{fsync_dir, open_private, DurableFile, FaultOn, Faults};

/// Options for a writer.
#[derive(Clone)]
pub struct WriterOptions {
    pub wait: WriterWait,
    pub level: u32,
    pub threads: usize,
    pub faults: Faults,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            wait: WriterWait::FailIfBusy,
            level: 6,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            faults: Faults::none(),
        }
    }
}

/// The one writer of an archive: holds the lock for its whole life.
pub struct StoreWriter {
    archive: Archive,
    writer: ArchiveWriter,
    archive_id: ArchiveId,
    faults: Faults,
    poisoned: bool,
    /// Set when a committed run's index append failed: the run stands, the index is stale.
    index_failure: Option<String>,
    /// This writer created the archive file: if it commits nothing, it removes it again, so a
    /// refused user leaves no empty files behind.
    created: bool,
    /// Where a streamed writer's run keeps its entries until its index block is written.
    spill: Option<std::sync::Arc<std::sync::Mutex<sidecar::RunSpill>>>,
    /// A run of only its marker, written by `commit_grouped` and waiting for `sync_group`.
    unsynced: Option<CommittedRun>,
    lock: WriterLock,
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if self.created && self.archive.runs.is_empty() {
            let paths = &self.archive.paths;
            if let Some(file) = &self.archive.source.file {
                remove_created(&paths.archive, file);
            }
            self.lock.remove_file(&paths.lock);
        }
    }
}

/// Removes an archive file this writer created, if it is still empty and still the file at
/// that name (never another file renamed there meanwhile).
fn remove_created(path: &Path, created: &File) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(ours), Ok(named)) = (created.metadata(), std::fs::symlink_metadata(path)) else {
        return;
    };
    if ours.dev() == named.dev() && ours.ino() == named.ino() && named.len() == 0 {
        let _ = std::fs::remove_file(path);
    }
}

impl StoreWriter {
    /// Takes the writer lock and opens (creating if needed) the archive of `paths`, repairing
    /// any uncommitted tail first.
    pub fn open(
        paths: &ArchivePaths,
        options: &WriterOptions,
        notices: &mut Vec<String>,
    ) -> Result<StoreWriter> {
        StoreWriter::open_with(paths, options, false, notices)
    }

    /// As `open`, leaving the committed entries in the index file when it is current
    /// (`Archive::open_streamed`): what a backup, which reads them once, opens, so its memory
    /// does not grow with the archive's history. `archive()` then answers through
    /// `for_each_entry`, not `entries_of`, `latest` or `state_at`.
    pub fn open_streamed(
        paths: &ArchivePaths,
        options: &WriterOptions,
        notices: &mut Vec<String>,
    ) -> Result<StoreWriter> {
        StoreWriter::open_with(paths, options, true, notices)
    }

    fn open_with(
        paths: &ArchivePaths,
        options: &WriterOptions,
        streamed: bool,
        notices: &mut Vec<String>,
    ) -> Result<StoreWriter> {
        let lock = WriterLock::acquire(&paths.lock, options.wait, &options.faults)?;
        let (file, created) = open_private(&paths.archive)?;
        let loaded = (|| {
            if created {
                // fsync the directory so the new archive's name survives a crash.
                fsync_dir(&paths.dir(), &options.faults)?;
            }
            // An empty file is what a crash leaves between creating an archive and its first
            // member: a writer takes it as new (readers report it, `refuse_empty`).
            let source = ArchiveHandle::from_file(
                &paths.archive,
                file.try_clone()
                    .map_err(|e| Error::io("dup", &paths.archive, e))?,
            );
            // An index beside an archive that did not exist describes nothing here (its
            // archive was removed by hand): it is replaced by the first commit.
            Archive::load_for_writer(paths, source, created, streamed, &options.faults, notices)
        })();
        let archive = match loaded {
            Ok(archive) => archive,
            Err(e) => {
                if created {
                    remove_created(&paths.archive, &file);
                    lock.remove_file(&paths.lock);
                }
                return Err(e);
            }
        };
        let archive_id = match archive.archive_id {
            Some(id) => id,
            None => ArchiveId::random()?,
        };
        let mut writer = ArchiveWriter::new(
            DurableFile::new(file, &paths.archive, options.faults.clone()),
            archive.committed_len(),
            archive.next_run().ok_or_else(|| {
                Error::refused(format!(
                    "{}: run numbers are exhausted; nothing was committed",
                    paths.archive.display()
                ))
            })?,
            archive_id.to_string(),
            options.level,
            options.threads,
        )?;
        // A streamed writer does not keep its run's entries either: each, once placed, is
        // encoded into the spill its index block is written from.
        let spill = streamed.then(|| {
            let spill =
                std::sync::Arc::new(std::sync::Mutex::new(sidecar::RunSpill::new(&paths.index)));
            let into = spill.clone();
            writer.fold_placed_entries(Box::new(move |e| {
                into.lock().expect("never poisoned").add(e)
            }));
            spill
        });
        Ok(StoreWriter {
            archive,
            writer,
            spill,
            unsynced: None,
            archive_id,
            faults: options.faults.clone(),
            poisoned: false,
            index_failure: None,
            created,
            lock,
        })
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// Why the last commit's index block is missing, when it is (the run itself is committed).
    pub fn index_failure(&self) -> Option<&str> {
        self.index_failure.as_deref()
    }

    pub fn writer(&mut self) -> &mut ArchiveWriter {
        &mut self.writer
    }

    /// The committed state and the writer at once: a backup compares against the first while
    /// appending through the second.
    pub fn split(&mut self) -> (&Archive, &mut ArchiveWriter) {
        (&self.archive, &mut self.writer)
    }

    /// Commits the run: marker, fsync of the archive, then the index block (not synced:
    /// formats/archive.md section 7).
    pub fn commit(&mut self, summary: &RunSummary) -> Result<&RunInfo> {
        if self.poisoned {
            return Err(Error::Poisoned(self.archive.paths.archive.clone()));
        }
        let run = self.writer.commit(summary)?;
        Ok(self.index_committed(run))
    }

    /// As `commit`, except that a run of only its marker is left unsynced: it is committed only
    /// once `sync_group` has synced it with other owners' such runs, and `finish_grouped` then
    /// writes its index block (formats/archive.md section 7, "Group commit"). A run with
    /// entries is committed at once, as `commit` does. Returns the run's number.
    pub fn commit_grouped(&mut self, summary: &RunSummary) -> Result<u64> {
        if self.poisoned {
            return Err(Error::Poisoned(self.archive.paths.archive.clone()));
        }
        // A new archive's first run, and any run with entries, is synced at once: only a marker
        // appended to durable bytes can wait for other owners' (section 7).
        if self.writer.pending_entries() > 0 || self.unsynced.is_some() || self.created {
            return self.commit(summary).map(|r| r.run);
        }
        let run = self.writer.commit_unsynced(summary)?;
        let number = run.run;
        self.unsynced = Some(run);
        // Hundreds of runs wait for their group: none keeps its committed entries' reader (a
        // small index is held whole), which nothing reads again before the writer is dropped.
        self.archive.streamed = None;
        Ok(number)
    }

    /// Whether a `commit_grouped` run waits for `sync_group`.
    pub fn is_unsynced(&self) -> bool {
        self.unsynced.is_some()
    }

    /// After `sync_group` synced this writer's run: writes its index block. The run was
    /// committed by the sync; `None` when there was no such run.
    pub fn finish_grouped(&mut self) -> Option<&RunInfo> {
        let run = self.unsynced.take()?;
        Some(self.index_committed(run))
    }

    /// fsyncs this writer's archive alone: how `sync_group` learns which archive a failed
    /// file-system sync failed.
    fn sync_alone(&mut self) -> Result<()> {
        let synced = self.writer.sync();
        if synced.is_err() {
            self.unsynced = None;
            self.poisoned = true;
        }
        synced
    }

    /// The second half of a commit, once the run is durable: its index block, then the run in
    /// the committed state.
    fn index_committed(&mut self, run: CommittedRun) -> &RunInfo {
        // The run is durable in the archive now; if the index append fails, the next open
        // re-indexes it from the archive's tail.
        let appended = match &self.spill {
            Some(spill) => sidecar::append_spilled(
                &self.archive.paths.index,
                &self.archive_id,
                self.archive.index_len,
                &run,
                &mut spill.lock().expect("never poisoned"),
                &self.faults,
            ),
            None => sidecar::append(
                &self.archive.paths.index,
                &self.archive_id,
                self.archive.index_len,
                &run,
                &self.faults,
            ),
        };
        match appended {
            Ok(len) => self.archive.index_len = len,
            Err(e) => {
                // Committed all the same: report it, and let no further run append to an
                // index whose length is unknown (the next open rebuilds it).
                self.poisoned = true;
                self.index_failure = Some(format!(
                    "run {} is committed, but its index block was not written ({e}); the next \
                     open rebuilds the index",
                    run.run
                ));
            }
        }
        self.archive.archive_id = Some(self.archive_id);
        self.archive.push_run(run);
        self.archive.runs.last().expect("just pushed")
    }
}

/// Makes the runs that `commit_grouped` left unsynced durable, all of them with one `syncfs`
/// instead of one `fsync` each (formats/archive.md section 7.1). `through` is a descriptor of
/// the archive directory opened before any of the writers wrote: `syncfs` reports the write
/// errors of the file system since its descriptor was opened (Linux 5.8 and later), so an
/// error on any of the group's archives is seen. An archive on another file system, and every
/// archive of a group whose `syncfs` failed (or where a fault is injected), is `fsync`ed alone,
/// so an error lands on the archive it concerns. Returns each writer's outcome, in order; a
/// writer whose sync failed is poisoned and its run is not to be reported committed.
pub fn sync_group(through: &File, writers: &mut [&mut StoreWriter]) -> Vec<Result<()>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let device = through.metadata().map(|m| m.dev()).ok();
    let (grouped, alone): (Vec<usize>, Vec<usize>) = (0..writers.len())
        .filter(|&i| writers[i].is_unsynced())
        .partition(|&i| {
            device.is_some() && writers[i].writer.file().metadata().map(|m| m.dev()).ok() == device
        });
    let synced = grouped.first().is_some_and(|&first| {
        !writers[first].faults.fires(FaultOn::Sync)
            // SAFETY: syncfs takes an open descriptor, which `through` is for the call.
            && unsafe { libc::syncfs(through.as_raw_fd()) } == 0
    });
    let mut outcomes: Vec<Result<()>> = (0..writers.len()).map(|_| Ok(())).collect();
    for i in grouped.into_iter().filter(|_| !synced).chain(alone) {
        outcomes[i] = writers[i].sync_alone();
    }
    outcomes
}
