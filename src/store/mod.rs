//! An archive with its sidecar index and writer lock (formats/archive.md sections 5 to 8): opening
//! (a reader never writes; only a writer holding the lock cuts an interrupted tail or rewrites a
//! bad index), looking entries up, reading them by seeking, and committing runs in the
//! documented durability order. This file holds the
//! committed state (`Archive`, `RunInfo`); `open` builds it and decides what may be cut or
//! rebuilt (with `repair`, the trust rules of section 6), `read` reads entries back, `writer`
//! commits new runs.

mod lock;
mod naming;
mod open;
mod read;
mod repair;
mod rewrite;
pub mod sidecar;
pub mod status;
mod verify;
mod writer;

pub use lock::{WriterLock, WriterWait};
pub use naming::{
    decode_user, encode_user, list_archives, list_own_archives, list_owner_archives,
    list_owner_archives_checking, ArchivePaths, SHARED_DIR,
};
pub use read::{find_latest, ArchiveHandle};
pub use repair::{repair, RepairOptions, RepairReport, REPAIRS_DIR};
pub use rewrite::{Rewriter, REWRITE_SUFFIX};
pub use verify::{verify, verify_elsewhere, Problem, VerifyReport};
pub use writer::{sync_group, StoreWriter, WriterOptions};

use std::collections::BTreeMap;
use std::ops::Range;

use crate::archive::{ArchiveId, CommittedRun, EntryRecord};
use crate::guid::Guid;

/// One committed run as the store keeps it in memory.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunInfo {
    pub run: u64,
    pub start: u64,
    pub marker_offset: u64,
    pub end: u64,
    pub time: i64,
    /// Set on the newest run of a compaction: when it ran.
    pub compacted: Option<i64>,
    #[serde(skip)]
    pub entries: Range<usize>,
    /// How many entries the run holds (also when they were left in the index file).
    #[serde(skip)]
    pub entry_count: usize,
}

/// The committed state of one archive.
pub struct Archive {
    paths: ArchivePaths,
    /// The generation of the archive file this state was read from; every read goes here.
    source: ArchiveHandle,
    archive_id: Option<ArchiveId>,
    runs: Vec<RunInfo>,
    entries: Vec<EntryRecord>,
    /// Length of the index file's valid part, 0 when the next commit must create it.
    index_len: u64,
    /// SHA-1s of the stored message files, built on first use.
    files: std::cell::OnceCell<std::collections::HashSet<Guid>>,
    /// Set when the entries were left in the index file (`open_streamed`): each pass over a
    /// run's entries reads its block again, so memory does not grow with the archive.
    streamed: Option<IndexStream>,
    /// Set by `split_messages`: the message files, out of `entries`, by SHA-1.
    messages: Option<Vec<StoredMessage>>,
}

/// A stored message file as a restore looks it up by SHA-1: 48 bytes where its entry would take
/// about 200 (issue 19, flat memory).
#[derive(Clone, Copy, Debug)]
pub struct StoredMessage {
    pub guid: Guid,
    /// The run that stored it.
    pub run: u64,
    pub placement: crate::archive::Placement,
    pub size: u64,
}

impl StoredMessage {
    /// The entry this message is stored as (message files carry no stat).
    pub fn entry(&self) -> EntryRecord {
        EntryRecord {
            name: crate::archive::file_entry_name(&self.guid),
            kind: crate::archive::EntryKind::File,
            target: String::new(),
            placement: self.placement,
            size: self.size,
            sha1: self.guid,
            stat: None,
        }
    }
}

/// The index file a streamed archive's entries are read from, and where each run's block is.
struct IndexStream {
    path: std::path::PathBuf,
    /// `None` for an archive with no runs when it was opened.
    file: Option<sidecar::IndexFile>,
    blocks: Vec<sidecar::BlockAt>,
}

impl Archive {
    fn from_runs(
        paths: ArchivePaths,
        source: ArchiveHandle,
        archive_id: Option<ArchiveId>,
        runs: Vec<CommittedRun>,
        index_len: u64,
    ) -> Archive {
        let mut archive = Archive {
            paths,
            source,
            archive_id,
            runs: Vec::with_capacity(runs.len()),
            entries: Vec::new(),
            index_len,
            files: std::cell::OnceCell::new(),
            streamed: None,
            messages: None,
        };
        // Exactly as many slots as entries: growing by doubling would hold up to twice the
        // index, and one and a half times it while moving (issue 19, flat memory).
        archive
            .entries
            .reserve_exact(runs.iter().map(|r| r.entries.len()).sum());
        for run in runs {
            archive.push_run(run);
        }
        archive
    }

    fn push_run(&mut self, run: CommittedRun) {
        if let Some(files) = self.files.get_mut() {
            files.extend(run.entries.iter().filter_map(message_guid));
        }
        let first = self.entries.len();
        let entry_count = run.entries.len();
        // A streamed archive keeps no entries: a run committed through it is not read back
        // (`for_each_entry` says so).
        if self.streamed.is_none() {
            self.entries.extend(run.entries);
        }
        self.runs.push(RunInfo {
            run: run.run,
            start: run.start,
            marker_offset: run.marker_offset,
            end: run.end,
            time: run.time,
            compacted: run.compacted,
            entries: first..self.entries.len(),
            entry_count,
        });
    }

    pub fn paths(&self) -> &ArchivePaths {
        &self.paths
    }

    pub fn archive_id(&self) -> Option<ArchiveId> {
        self.archive_id
    }

    pub fn runs(&self) -> &[RunInfo] {
        &self.runs
    }

    /// A run's entries held in memory. A streamed archive (`open_streamed`) holds none: its
    /// readers go through `for_each_entry`.
    pub fn entries_of(&self, run: &RunInfo) -> &[EntryRecord] {
        debug_assert!(self.streamed.is_none(), "entries_of on a streamed archive");
        &self.entries[run.entries.clone()]
    }

    /// Hands each entry of `run` (one of `runs()`) to `visit`, in archive order, from memory
    /// or, for a streamed archive, from the index file, one at a time and checked as it is
    /// read. Something collected from entries before an error must not be acted on.
    pub fn for_each_entry(
        &self,
        run: &RunInfo,
        visit: &mut dyn FnMut(&EntryRecord) -> crate::error::Result<()>,
    ) -> crate::error::Result<()> {
        let Some(stream) = &self.streamed else {
            return self.entries[run.entries.clone()].iter().try_for_each(visit);
        };
        let block = self
            .runs
            .binary_search_by_key(&run.run, |r| r.run)
            .ok()
            .and_then(|k| stream.blocks.get(k))
            .zip(stream.file.as_ref())
            .ok_or_else(|| {
                crate::error::Error::refused(format!(
                    "{}: run {} was committed after its entries were last read",
                    self.paths.archive.display(),
                    run.run
                ))
            })?;
        let (block, file) = block;
        file.stream_entries(&stream.path, block, &mut |e| visit(&e))
    }

    /// Whether the entries were left in the index file.
    pub fn is_streamed(&self) -> bool {
        self.streamed.is_some()
    }

    /// This archive with its message files taken out of the entries into a table by SHA-1 (the
    /// first copy of each, in archive order), the other entries kept: what a restore reads,
    /// which looks messages up by SHA-1 and walks only the other names. `entries_of`,
    /// `latest` and `state_at` then see no `files/` entries; `stored_message` and `has_file`
    /// answer for them. A streamed archive's entries are read here, each once.
    pub fn split_messages(mut self) -> crate::error::Result<Archive> {
        if self.messages.is_some() {
            return Ok(self);
        }
        let mut kept: Vec<EntryRecord> = Vec::new();
        let mut messages: Vec<StoredMessage> = Vec::new();
        let mut ranges = Vec::with_capacity(self.runs.len());
        let mut route =
            |run: u64, e: EntryRecord, kept: &mut Vec<EntryRecord>| match message_guid(&e) {
                Some(guid) => messages.push(StoredMessage {
                    guid,
                    run,
                    placement: e.placement,
                    size: e.size,
                }),
                None => kept.push(e),
            };
        if self.streamed.is_some() {
            for run in &self.runs {
                let first = kept.len();
                self.for_each_entry(run, &mut |e| {
                    route(run.run, e.clone(), &mut kept);
                    Ok(())
                })?;
                ranges.push(first..kept.len());
            }
        } else {
            let mut entries = std::mem::take(&mut self.entries).into_iter();
            for run in &self.runs {
                let first = kept.len();
                for e in entries.by_ref().take(run.entries.len()) {
                    route(run.run, e, &mut kept);
                }
                ranges.push(first..kept.len());
            }
        }
        // The first copy of each: a stable sort by SHA-1 keeps archive order among copies.
        messages.sort_by_key(|m| m.guid);
        messages.dedup_by_key(|m| m.guid);
        messages.shrink_to_fit();
        kept.shrink_to_fit();
        for (run, range) in self.runs.iter_mut().zip(ranges) {
            run.entries = range;
        }
        self.entries = kept;
        self.streamed = None;
        self.files = std::cell::OnceCell::new();
        self.messages = Some(messages);
        Ok(self)
    }

    /// The stored message file with this SHA-1 (its first copy): from the table when the
    /// messages were split out (`split_messages`), else found among the entries (an archive
    /// a restore was handed already open, as an off-site copy is).
    pub fn stored_message(&self, guid: &Guid) -> Option<StoredMessage> {
        if let Some(table) = &self.messages {
            let k = table.binary_search_by(|m| m.guid.cmp(guid)).ok()?;
            return Some(table[k]);
        }
        let name = crate::archive::file_entry_name(guid);
        self.runs.iter().find_map(|run| {
            self.entries_of(run)
                .iter()
                .find(|e| e.name == name && e.kind == crate::archive::EntryKind::File)
                .map(|e| StoredMessage {
                    guid: *guid,
                    run: run.run,
                    placement: e.placement,
                    size: e.size,
                })
        })
    }

    /// Whether the message files were split out of the entries.
    pub fn messages_split(&self) -> bool {
        self.messages.is_some()
    }

    /// Bytes of the archive that belong to committed runs.
    pub fn committed_len(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.end)
    }

    /// The next run's number; `None` once the last run took the highest number there is.
    fn next_run(&self) -> Option<u64> {
        match self.runs.last() {
            None => Some(1),
            Some(r) => r.run.checked_add(1),
        }
    }

    /// The latest committed version of `name` with the run that wrote it; a tombstone counts as
    /// a version (check `is_tombstone`).
    pub fn latest(&self, name: &str) -> Option<(u64, &EntryRecord)> {
        for run in self.runs.iter().rev() {
            if let Some(e) = self.entries[run.entries.clone()]
                .iter()
                .rev()
                .find(|e| e.name == name)
            {
                return Some((run.run, e));
            }
        }
        None
    }

    /// The names that exist as of run `at` (all runs when `None`), each at its latest version,
    /// sorted by name; tombstoned names are left out.
    pub fn state_at(&self, at: Option<u64>) -> Vec<(u64, &EntryRecord)> {
        let mut state: BTreeMap<&str, (u64, &EntryRecord)> = BTreeMap::new();
        for run in self
            .runs
            .iter()
            .take_while(|r| at.is_none_or(|at| r.run <= at))
        {
            for e in &self.entries[run.entries.clone()] {
                state.insert(&e.name, (run.run, e));
            }
        }
        state
            .into_values()
            .filter(|(_, e)| !e.is_tombstone())
            .collect()
    }

    /// Whether a message file with this SHA-1 is stored. Not for a streamed archive, whose
    /// entries are not held (a backup asks `backup::Recorded`).
    pub fn has_file(&self, guid: &Guid) -> bool {
        debug_assert!(self.streamed.is_none(), "has_file on a streamed archive");
        if self.messages.is_some() {
            return self.stored_message(guid).is_some();
        }
        self.files
            .get_or_init(|| self.entries.iter().filter_map(message_guid).collect())
            .contains(guid)
    }

    /// The sidecar index of this committed state in its canonical encoding (formats/archive.md
    /// section 5: header, one block per run), whatever the index file on disk holds: what an
    /// off-site copy stores beside the archive's bytes.
    pub fn encode_index(&self) -> Vec<u8> {
        let Some(archive_id) = self.archive_id else {
            return Vec::new();
        };
        let mut out = sidecar::encode_header(&archive_id);
        for run in &self.runs {
            out.extend_from_slice(&sidecar::encode_block(&CommittedRun {
                run: run.run,
                start: run.start,
                marker_offset: run.marker_offset,
                end: run.end,
                time: run.time,
                compacted: run.compacted,
                entries: self.entries[run.entries.clone()].to_vec(),
            }));
        }
        out
    }

    /// The file this state was read from.
    pub fn handle(&self) -> &ArchiveHandle {
        &self.source
    }
}

fn message_guid(e: &EntryRecord) -> Option<Guid> {
    e.name.strip_prefix(crate::archive::FILES_DIR)?.parse().ok()
}
