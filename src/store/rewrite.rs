//! Replacing an archive with a rewritten copy (formats/compaction.md, "Rewrite"): the copy is
//! written beside the archive, checked by a full scan against what the writer says it wrote,
//! fsynced, and renamed over the original, all under the writer lock. The old index is removed
//! before the rename, so no crash can pair the new archive with the old index, and rebuilt after.

use std::path::{Path, PathBuf};

use super::open::{scan_runs_with, Access};
use super::{sidecar, Archive, ArchiveHandle, ArchivePaths, RunInfo, WriterLock, WriterOptions};
use crate::archive::{ArchiveId, ArchiveWriter, RunSummary, ScanEvent, Scanner};
use crate::error::{Error, Result};
use crate::io::{create_private, fsync_dir, remove_if_present, rename, DurableFile};

/// Suffix of the temporary file a rewrite fills, beside the archive. Its name does not end in
/// `.tar.gz`, so it is never mistaken for an archive; a crash leaves it behind, and the next
/// rewrite (which holds the lock, so no other can be writing it) truncates it.
pub const REWRITE_SUFFIX: &str = ".rewrite";

impl ArchivePaths {
    pub fn rewrite_tmp(&self) -> PathBuf {
        let mut name = self.archive.as_os_str().to_owned();
        name.push(REWRITE_SUFFIX);
        PathBuf::from(name)
    }
}

/// An archive locked for rewriting, with its committed state.
pub struct Rewriter {
    archive: Archive,
    archive_id: ArchiveId,
    options: WriterOptions,
    writer: Option<ArchiveWriter>,
    /// Each run written: its number and a digest of its index block (frame and every entry
    /// with its placement), so the check compares everything while holding 28 bytes a run.
    written: Vec<(u64, [u8; 20])>,
    /// The run being written, digested entry by entry as the writer places them.
    digest: std::sync::Arc<std::sync::Mutex<sidecar::BlockDigest>>,
    started: bool,
    finished: bool,
    _lock: WriterLock,
}

impl Rewriter {
    /// Takes the writer lock (waiting or not, as `options.wait` says) and opens the archive,
    /// repairing it first if needed. Nothing is written until `start`.
    pub fn begin(
        paths: &ArchivePaths,
        options: &WriterOptions,
        notices: &mut Vec<String>,
    ) -> Result<Rewriter> {
        let lock = WriterLock::acquire_existing(&paths.archive, &paths.lock, options.wait)?;
        let source = ArchiveHandle::open_writable(&paths.archive)?;
        let index = sidecar::read(&paths.index)?;
        let archive = Archive::load(
            paths,
            source,
            index,
            Access::Write,
            &options.faults,
            notices,
        )?;
        let archive_id = archive.archive_id.ok_or_else(|| {
            Error::NotFound(format!("committed runs in {}", paths.archive.display()))
        })?;
        Ok(Rewriter {
            archive,
            archive_id,
            options: options.clone(),
            writer: None,
            written: Vec::new(),
            digest: Default::default(),
            started: false,
            finished: false,
            _lock: lock,
        })
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// Creates (or truncates a leftover) temporary file and starts writing the copy at run 1's
    /// number, keeping the archive-id.
    pub fn start(&mut self) -> Result<()> {
        let tmp = self.archive.paths.rewrite_tmp();
        let file = create_private(&tmp)?;
        let first_run = self.archive.runs.first().map_or(1, |r| r.run);
        let mut writer = ArchiveWriter::new(
            DurableFile::new(file, &tmp, self.options.faults.clone()),
            0,
            first_run,
            self.archive_id.to_string(),
            self.options.level,
            self.options.threads,
        )?;
        writer.defer_sync();
        let digest = self.digest.clone();
        writer.fold_placed_entries(Box::new(move |e| {
            digest.lock().expect("never poisoned").add(e)
        }));
        self.writer = Some(writer);
        self.started = true;
        Ok(())
    }

    /// The committed state being rewritten and the writer of the copy.
    pub fn split(&mut self) -> (&Archive, &mut ArchiveWriter) {
        let writer = self.writer.as_mut().expect("start was called");
        (&self.archive, writer)
    }

    /// Ends the copy's run, which must be the source's next run in order.
    pub fn commit(&mut self, summary: &RunSummary) -> Result<()> {
        let writer = self.writer.as_mut().expect("start was called");
        let run = writer.commit(summary)?;
        let digest = std::mem::take(&mut *self.digest.lock().expect("never poisoned"));
        self.written.push((run.run, digest.finish(&run)));
        Ok(())
    }

    /// Checks, makes durable and installs the copy; returns the new committed length. A crash
    /// anywhere in here leaves the old archive or the new one, each openable.
    pub fn finish(mut self) -> Result<u64> {
        let paths = self.archive.paths.clone();
        let tmp = paths.rewrite_tmp();
        let index_tmp = index_tmp(&paths);
        let faults = self.options.faults.clone();
        let mut writer = self.writer.take().expect("start was called");
        assert_eq!(
            writer.pending_entries(),
            0,
            "a rewrite commits every run it starts before it finishes"
        );
        writer.sync()?;
        drop(writer);
        // Every run is written: the source's entries are not needed again, and the check below
        // holds the copy's largest run, so both at once would double the peak.
        self.archive.entries = Vec::new();
        self.archive.files = std::cell::OnceCell::new();
        let len = self.check_copy(&tmp, &index_tmp)?;

        // From here the old index must not outlive the old archive: remove it first (durably),
        // so whatever a crash leaves is either the old archive without an index (rebuilt on
        // open) or the new archive without one.
        remove_if_present(&paths.index, &faults)?;
        fsync_dir(&paths.dir(), &faults)?;
        rename(&tmp, &paths.archive, &faults)?;
        fsync_dir(&paths.dir(), &faults)?;
        rename(&index_tmp, &paths.index, &faults)?;
        fsync_dir(&paths.dir(), &faults)?;
        self.finished = true;
        Ok(len)
    }

    /// Scans the copy from its first byte (every member's integrity field and CRC, every tar
    /// header, every message's SHA-1 against its name, every metadata file's against its pax
    /// record) and compares each run found, entries and placements included, with what the
    /// writer reported writing. Writes the copy's index to `index_tmp` as it goes, so memory
    /// holds one run at a time.
    fn check_copy(&self, tmp: &Path, index_tmp: &Path) -> Result<u64> {
        let mut index_file = DurableFile::new(
            create_private(index_tmp)?,
            index_tmp,
            self.options.faults.clone(),
        );
        index_file.write_all_at_end(&sidecar::encode_header(&self.archive_id))?;
        let mut k = 0;
        let written = &self.written;
        let copy = ArchiveHandle::open(tmp)?;
        let outcome = scan_runs_with(&copy, 0, None, Some(self.archive_id), &mut |found| {
            let digest = sidecar::BlockDigest::of(&found);
            let same = written
                .get(k)
                .is_some_and(|(run, d)| *run == found.run && *d == digest);
            if !same {
                return Err(Error::corrupt(
                    tmp,
                    found.start,
                    format!(
                        "run {} of the rewritten copy differs from what was written",
                        found.run
                    ),
                ));
            }
            k += 1;
            sidecar::encode_block_in_pieces(&found, |piece| index_file.write_all_at_end(piece))
        })?;
        if let Some(d) = outcome.damage.first() {
            return Err(Error::corrupt(
                tmp,
                d.offset,
                format!("the rewritten copy fails its check: {}", d.detail),
            ));
        }
        if outcome.committed_end != outcome.file_len || k != self.written.len() {
            return Err(Error::corrupt(
                tmp,
                outcome.committed_end,
                format!(
                    "the rewritten copy holds {k} complete runs and {} bytes after them; {} runs \
                     were written",
                    outcome.file_len - outcome.committed_end,
                    self.written.len()
                ),
            ));
        }
        index_file.sync()?;
        Ok(outcome.committed_end)
    }
}

/// Where the copy's index is written before it is renamed into place.
fn index_tmp(paths: &ArchivePaths) -> PathBuf {
    let mut name = paths.index.as_os_str().to_owned();
    name.push(REWRITE_SUFFIX);
    PathBuf::from(name)
}

impl Drop for Rewriter {
    fn drop(&mut self) {
        // An abandoned copy is only clutter (a crash leaves it too, and the next rewrite
        // truncates it), but there is no reason to keep it.
        if self.started && !self.finished {
            self.writer = None;
            let _ = std::fs::remove_file(self.archive.paths.rewrite_tmp());
            let _ = std::fs::remove_file(index_tmp(&self.archive.paths));
        }
    }
}

impl Archive {
    /// The `key=value` lines of a run's commit marker, read by seeking to its member.
    pub fn marker_fields(&self, run: &RunInfo) -> Result<Vec<(String, String)>> {
        let path = self.source.path();
        let scanner = Scanner::new(self.source.reader_at(0), path, run.marker_offset)
            .map_err(|e| Error::io("seek", path, e))?;
        for event in scanner {
            match event {
                ScanEvent::Commit(crate::archive::scan::ScannedMarker { marker: m, .. })
                    if m.run == run.run =>
                {
                    return Ok(m.fields)
                }
                ScanEvent::Entry(_) => {}
                _ => break,
            }
        }
        Err(Error::corrupt(
            path,
            run.marker_offset,
            format!("no commit marker of run {} here", run.run),
        ))
    }
}
