//! Replacing an archive with a rewritten copy (formats/compaction.md, "Rewrite"): the copy is
//! written beside the archive, checked by a full scan against what the writer says it wrote,
//! fsynced, and renamed over the original, all under the writer lock. The old index is removed
//! before the rename, so no crash can pair the new archive with the old index, and rebuilt after.

use std::path::{Path, PathBuf};

use super::open::scan_runs_with;
use super::{sidecar, Archive, ArchiveHandle, ArchivePaths, RunInfo, WriterLock, WriterOptions};
use crate::archive::{ArchiveId, ArchiveWriter, CommittedRun, RunSummary, ScanEvent, Scanner};
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
    /// Each run written: its frame (no entries), a digest of its index block (frame and every
    /// entry with its placement), its entry count and the block's body length, so the check
    /// compares everything, and writes the copy's index, holding no run's entries.
    written: Vec<WrittenRun>,
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
        // Entries stay in the index file when it is current (formats/compaction.md section 4);
        // otherwise the full open repairs the tail or rebuilds the index first, and the entries
        // are let go once the index it wrote can be streamed.
        let archive =
            Archive::load_for_writer(paths, source, false, true, &options.faults, notices)?;
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
        let (count, body_len) = (digest.count(), digest.body_len());
        let frame = CommittedRun {
            entries: Vec::new(),
            ..run
        };
        self.written.push(WrittenRun {
            digest: digest.finish(&frame),
            frame,
            count,
            body_len,
        });
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
    /// writer reported writing. Writes the copy's index to `index_tmp` as it goes, entry by
    /// entry, so memory holds no run's entries: each block's frame, count and length come from
    /// the writer, and a run whose entries differ fails the comparison at its commit.
    fn check_copy(&self, tmp: &Path, index_tmp: &Path) -> Result<u64> {
        let index_file = std::cell::RefCell::new(DurableFile::new(
            create_private(index_tmp)?,
            index_tmp,
            self.options.faults.clone(),
        ));
        index_file
            .borrow_mut()
            .write_all_at_end(&sidecar::encode_header(&self.archive_id))?;
        let write = |piece: &[u8]| index_file.borrow_mut().write_all_at_end(piece);
        let written = &self.written;
        let differs = |run: u64, at: u64| {
            Error::corrupt(
                tmp,
                at,
                format!("run {run} of the rewritten copy differs from what was written"),
            )
        };
        // The run being read back: its position in `written`, digest and index block (started
        // at the run's first entry, or at its marker when it has none).
        let k = std::cell::Cell::new(0usize);
        let current: std::cell::RefCell<Option<(sidecar::BlockDigest, sidecar::BlockStream)>> =
            Default::default();
        let begin = |run: u64, at: u64| -> Result<(sidecar::BlockDigest, sidecar::BlockStream)> {
            let w = written.get(k.get()).ok_or_else(|| differs(run, at))?;
            Ok((
                sidecar::BlockDigest::default(),
                sidecar::BlockStream::begin(&w.frame, w.count, w.body_len)?,
            ))
        };
        let copy = ArchiveHandle::open(tmp)?;
        let mut on_entry = |e: &crate::archive::EntryRecord| {
            let mut current = current.borrow_mut();
            if current.is_none() {
                *current = Some(begin(k.get() as u64 + 1, e.placement.member)?);
            }
            let (digest, block) = current.as_mut().expect("just set");
            if digest.count() >= written[k.get()].count {
                return Err(differs(written[k.get()].frame.run, e.placement.member));
            }
            digest.add(e);
            block.entry(e, &mut |piece| write(piece))
        };
        let outcome = scan_runs_with(
            &copy,
            0,
            None,
            Some(self.archive_id),
            Some(&mut on_entry),
            &mut |found| {
                let taken = current.borrow_mut().take();
                let (digest, block) = match taken {
                    Some(both) => both,
                    None => begin(found.run, found.start)?,
                };
                let w = &written[k.get()];
                if found.run != w.frame.run || digest.finish(&found) != w.digest {
                    return Err(differs(found.run, found.start));
                }
                k.set(k.get() + 1);
                block.finish(&mut |piece| write(piece))
            },
        )?;
        let k = k.get();
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
        index_file.borrow_mut().sync()?;
        Ok(outcome.committed_end)
    }
}

/// What the rewrite's writer reported for one run of the copy.
struct WrittenRun {
    frame: CommittedRun,
    digest: [u8; 20],
    count: u64,
    body_len: u64,
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
