//! One function per subcommand. They take validated options, do the work through `store`, and
//! return values for the CLI to print; nothing here prints or chooses an exit code.

pub mod backup;
pub mod check_spool;
pub mod compact;
pub mod drill;
pub mod find;
pub mod offsite;
pub mod restore;
pub mod spool;
pub mod status;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::archive::{file_entry_name, Appended, EntryKind, EntryRecord, RunSummary};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::io::SourceStat;
use crate::spool::Owner;
use crate::store::{
    self, Archive, ArchivePaths, StoreWriter, VerifyReport, WriterOptions, WriterWait,
};

/// Which archive(s) a command is about.
#[derive(Clone, Debug)]
pub enum Selection {
    /// One archive file named directly.
    File(PathBuf),
    /// The archives of these owners in a directory; every archive there (users' and shared
    /// trees') when `owners` is empty.
    Dir { dir: PathBuf, owners: Vec<Owner> },
}

impl Selection {
    pub fn resolve(&self) -> Result<Vec<ArchivePaths>> {
        self.resolve_noting(&mut Vec::new())
    }

    /// As `resolve`; when every archive of a directory is meant, files there that are not
    /// mailpack archives are skipped with a notice each.
    pub fn resolve_noting(&self, notices: &mut Vec<String>) -> Result<Vec<ArchivePaths>> {
        match self {
            Selection::File(path) => Ok(vec![ArchivePaths::for_archive_file(path)?]),
            Selection::Dir { dir, owners } if owners.is_empty() => {
                let (own, skipped) = store::list_owner_archives(dir)?;
                notices.extend(skipped);
                Ok(own.into_iter().map(|(_, paths)| paths).collect())
            }
            Selection::Dir { dir, owners } => owners
                .iter()
                .map(|o| ArchivePaths::for_owner(dir, o))
                .collect(),
        }
    }

    /// Exactly one archive, for commands that read one.
    pub fn one(&self) -> Result<ArchivePaths> {
        match self {
            Selection::Dir { owners, .. } if owners.len() != 1 => Err(Error::usage(
                "name one archive: --user U, --shared NAME, or the path of an archive file",
            )),
            _ => Ok(self.resolve()?.remove(0)),
        }
    }
}

/// An entry as `ls` shows it.
#[derive(Debug, serde::Serialize)]
pub struct EntryView {
    pub run: u64,
    pub name: String,
    pub kind: EntryKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    pub member: u64,
    pub data_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStat>,
}

impl EntryView {
    fn new(run: u64, e: &EntryRecord) -> EntryView {
        EntryView {
            run,
            name: e.name.clone(),
            kind: e.kind,
            target: (e.kind == EntryKind::Symlink).then(|| e.target.clone()),
            size: e.size,
            sha1: (e.kind == EntryKind::File).then(|| e.sha1.to_hex()),
            member: e.placement.member,
            data_at: e.placement.data_at,
            source: e.stat.as_deref().copied(),
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct RunView {
    pub run: u64,
    pub time: i64,
    pub start: u64,
    pub end: u64,
    pub entries: Vec<EntryView>,
}

pub struct Listing {
    pub archive: PathBuf,
    /// With `--all`: every run and its entries, tombstones included.
    pub runs: Vec<RunView>,
    /// Otherwise: the committed state, latest version of each live name.
    pub state: Vec<EntryView>,
    pub notices: Vec<String>,
    /// On a damaged archive: what is damaged or lost. The listing then shows what still reads.
    pub damage: Vec<String>,
}

/// Opens an archive for reading; a damaged one is opened read-only in its degraded view, with
/// its problems returned beside it.
pub fn open_for_reading(
    paths: &ArchivePaths,
    notices: &mut Vec<String>,
) -> Result<(Archive, Vec<String>)> {
    or_degraded(paths, Archive::open(paths, notices))
}

/// The archive `opened`, or, when that found committed data damaged, its degraded view with
/// its problems.
fn or_degraded(paths: &ArchivePaths, opened: Result<Archive>) -> Result<(Archive, Vec<String>)> {
    match opened {
        Ok(archive) => Ok((archive, Vec::new())),
        Err(e @ Error::Corrupt { .. }) => {
            let (archive, mut damage) = Archive::open_degraded(paths)?;
            damage.insert(0, e.to_string());
            Ok((archive, damage))
        }
        Err(e) => Err(e),
    }
}

/// Opens an archive for a restore: as `open_for_reading`, with the message files split out of
/// the entries into a table by SHA-1 (`Archive::split_messages`), and the entries streamed from
/// the index when it is current, so memory follows the archive's names, not its messages or
/// its history (issue 19).
pub fn open_for_restore(
    paths: &ArchivePaths,
    notices: &mut Vec<String>,
) -> Result<(Archive, Vec<String>)> {
    let (archive, damage) = or_degraded(paths, Archive::open_streamed(paths, notices))?;
    Ok((archive.split_messages()?, damage))
}

pub fn ls(paths: &ArchivePaths, all: bool) -> Result<Listing> {
    let mut notices = Vec::new();
    let (archive, damage) = open_for_reading(paths, &mut notices)?;
    Ok(ls_archive(&archive, damage, notices, all))
}

/// `ls` of an archive already open (a local one, or an off-site copy).
pub fn ls_archive(
    archive: &Archive,
    damage: Vec<String>,
    notices: Vec<String>,
    all: bool,
) -> Listing {
    let mut listing = Listing {
        archive: archive.paths().archive.clone(),
        runs: Vec::new(),
        state: Vec::new(),
        notices,
        damage,
    };
    if all {
        for run in archive.runs() {
            listing.runs.push(RunView {
                run: run.run,
                time: run.time,
                start: run.start,
                end: run.end,
                entries: archive
                    .entries_of(run)
                    .iter()
                    .map(|e| EntryView::new(run.run, e))
                    .collect(),
            });
        }
    } else {
        listing.state = archive
            .state_at(None)
            .into_iter()
            .map(|(run, e)| EntryView::new(run, e))
            .collect();
    }
    listing
}

/// What `cat` wrote.
pub struct Served {
    pub bytes: u64,
    /// The archive is damaged (a notice says where); the entry still read and checked.
    pub degraded: bool,
}

/// Writes the latest committed version of an entry (a name, or a message SHA-1) to `out`. A
/// mailbox's `cyrus.index` is its newest version, rebuilt through the index deltas after its
/// newest full copy (formats/backup-entries.md, "Readers"), unless `as_stored` asks for the
/// entry as stored.
pub fn cat(
    paths: &ArchivePaths,
    spec: &str,
    as_stored: bool,
    out: &mut dyn Write,
    notices: &mut Vec<String>,
) -> Result<Served> {
    let name = match spec.parse::<Guid>() {
        Ok(guid) => file_entry_name(&guid),
        Err(()) => spec.to_string(),
    };
    // Only a mailbox with a delta is opened whole for its index: the lookup of the delta's name
    // seeks through the index file as the path below does.
    let has_delta = || {
        let (_, delta) = crate::entries::index_names(
            crate::entries::index_version_of(&name).map_or("", |(uid, _)| uid),
        );
        store::find_latest(paths, &delta, &mut Vec::new()).map_or(true, |found| {
            found.is_some_and(|(_, e, _)| !e.is_tombstone())
        })
    };
    if !as_stored && is_full_index_name(&name) && has_delta() {
        // Its notices (a stale index rebuilt in memory) are given once: here when this serves
        // the entry, else by the path below, which opens the archive again.
        let mut opening = Vec::new();
        match Archive::open(paths, &mut opening) {
            Ok(archive) => {
                if let Some(served) = cat_newest_index(&archive, &name, out)? {
                    notices.append(&mut opening);
                    return Ok(served);
                }
            }
            // A damaged archive: the entry as stored, by the degraded path below.
            Err(Error::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let (found, damage) = match store::find_latest(paths, &name, notices) {
        Ok(found) => (found, None),
        Err(e @ Error::Corrupt { .. }) => {
            // Restore day: serve the entry if it still reads, and say the archive is damaged.
            let (archive, _) = Archive::open_degraded(paths)?;
            let found = archive
                .latest(&name)
                .map(|(run, e)| (run, e.clone(), archive.handle().clone()));
            (found, Some(e))
        }
        Err(e) => return Err(e),
    };
    let (_, entry, source) =
        found
            .filter(|(_, e, _)| !e.is_tombstone())
            .ok_or_else(|| match &damage {
                Some(e) => Error::corrupt(
                    &paths.archive,
                    0,
                    format!("{name} does not read from this damaged archive ({e})"),
                ),
                None => Error::NotFound(format!("{name} in {}", paths.archive.display())),
            })?;
    let degraded = damage.is_some();
    if let Some(e) = damage {
        notices.push(format!("{e}; {name} still reads and was served"));
    }
    if entry.kind == EntryKind::Symlink {
        writeln!(out, "{}", entry.target).map_err(|e| Error::io("write", "standard output", e))?;
        return Ok(Served { bytes: 0, degraded });
    }
    let mut reader = source.read_entry(&entry)?;
    let bytes = io::copy(&mut reader, out).map_err(|e| match e.into_inner() {
        Some(inner) => match inner.downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => Error::io("copy", &paths.archive, io::Error::other(other)),
        },
        None => Error::io("copy", &paths.archive, io::Error::other("read failed")),
    })?;
    Ok(Served { bytes, degraded })
}

/// Whether `name` is the full-copy name of a mailbox's `cyrus.index`.
fn is_full_index_name(name: &str) -> bool {
    crate::entries::index_version_of(name).is_some_and(|(_, delta)| !delta)
}

/// `cat` of a mailbox's `cyrus.index` when a delta is its newest version: the version's exact
/// bytes, streamed out of the full copy and the deltas, every length and SHA-1 checked on the
/// way. `None` when the full copy is the newest version (or there is none): then the entry is
/// served as stored.
fn cat_newest_index(archive: &Archive, name: &str, out: &mut dyn Write) -> Result<Option<Served>> {
    let Some((uid, _)) = crate::entries::index_version_of(name) else {
        return Ok(None);
    };
    let (full, delta) = crate::entries::index_names(uid);
    let live = |n: &str| {
        archive
            .latest(n)
            .map(|(_, e)| e)
            .filter(|e| !e.is_tombstone() && e.kind == EntryKind::File)
    };
    let Some(newest) = crate::folders::newer(live(&full), live(&delta)) else {
        return Ok(None);
    };
    if !crate::entries::index_version_of(&newest.name).is_some_and(|(_, d)| d) {
        return Ok(None);
    }
    let chain = crate::folders::chain(archive, newest)?;
    let chain: Vec<&crate::archive::EntryRecord> = chain.iter().collect();
    let version = crate::folders::open_version(archive, &chain)?;
    version.stream(&mut |piece| {
        out.write_all(piece)
            .map_err(|e| Error::io("write", "standard output", e))
    })?;
    Ok(Some(Served {
        bytes: version.len,
        degraded: false,
    }))
}

/// `cat` from an archive already open (an off-site copy): the latest committed version of
/// the entry, read by seeking to its member; a mailbox's `cyrus.index` as `cat` gives it.
pub fn cat_archive(
    archive: &Archive,
    spec: &str,
    as_stored: bool,
    out: &mut dyn Write,
) -> Result<Served> {
    let name = match spec.parse::<Guid>() {
        Ok(guid) => file_entry_name(&guid),
        Err(()) => spec.to_string(),
    };
    if !as_stored && is_full_index_name(&name) {
        if let Some(served) = cat_newest_index(archive, &name, out)? {
            return Ok(served);
        }
    }
    let path = &archive.paths().archive;
    let (_, entry) = archive
        .latest(&name)
        .filter(|(_, e)| !e.is_tombstone())
        .ok_or_else(|| Error::NotFound(format!("{name} in {}", path.display())))?;
    if entry.kind == EntryKind::Symlink {
        writeln!(out, "{}", entry.target).map_err(|e| Error::io("write", "standard output", e))?;
        return Ok(Served {
            bytes: 0,
            degraded: false,
        });
    }
    let mut reader = archive.read_entry(entry)?;
    let bytes = io::copy(&mut reader, out).map_err(|e| match e.into_inner() {
        Some(inner) => match inner.downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => Error::io("copy", path, io::Error::other(other)),
        },
        None => Error::io("copy", path, io::Error::other("read failed")),
    })?;
    Ok(Served {
        bytes,
        degraded: false,
    })
}

/// Salvages a damaged archive (`store::repair`); an archive that opens cleanly is left alone.
pub fn repair(
    paths: &ArchivePaths,
    dry_run: bool,
    writer: &WriterOptions,
) -> Result<store::RepairReport> {
    store::repair(
        paths,
        &store::RepairOptions {
            dry_run,
            writer: writer.clone(),
            now: now(),
            host: hostname(),
        },
    )
}

pub fn verify(paths: &ArchivePaths) -> Result<VerifyReport> {
    store::verify(paths)
}

#[derive(Debug, serde::Serialize)]
pub struct ReindexReport {
    pub archive: PathBuf,
    pub runs: u64,
    pub entries: u64,
    pub notices: Vec<String>,
}

pub fn reindex(paths: &ArchivePaths, wait: WriterWait) -> Result<ReindexReport> {
    let mut notices = Vec::new();
    let archive = Archive::reindex(paths, wait, &mut notices)?;
    Ok(ReindexReport {
        archive: paths.archive.clone(),
        runs: archive.runs().len() as u64,
        entries: archive
            .runs()
            .iter()
            .map(|r| archive.entries_of(r).len() as u64)
            .sum(),
        notices,
    })
}

/// Files up to this size are read into memory once; larger ones are read twice (hash, copy).
const SMALL_FILE: u64 = 512 << 10;

/// What `put` stored.
#[derive(Debug, serde::Serialize)]
pub struct PutReport {
    pub archive: PathBuf,
    pub run: u64,
    pub added: Vec<String>,
    /// Message files the archive already held.
    pub already_stored: u64,
    pub bytes_read: u64,
    pub notices: Vec<String>,
    /// The run is committed but its index block could not be written (exit 1).
    pub index_stale: bool,
}

pub struct PutOptions {
    pub files: Vec<PathBuf>,
    /// Store the single file under this entry name instead of `files/<sha1>`.
    pub name: Option<String>,
    pub writer: WriterOptions,
}

/// Stores files in one committed run: as `files/<sha1>` (once per archive), or one file under
/// an explicit name. Each file is read once, hashed while it is copied.
pub fn put(paths: &ArchivePaths, options: &PutOptions) -> Result<PutReport> {
    if options.name.is_some() && options.files.len() != 1 {
        return Err(Error::usage("--name takes exactly one file"));
    }
    let mut notices = Vec::new();
    let mut store = StoreWriter::open(paths, &options.writer, &mut notices)?;
    let mut report = PutReport {
        archive: paths.archive.clone(),
        run: 0,
        added: Vec::new(),
        already_stored: 0,
        bytes_read: 0,
        notices: Vec::new(),
        index_stale: false,
    };
    let mut seen = std::collections::HashSet::new();
    for path in expand_files(&options.files)? {
        let path = &path;
        let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        let stat = options.name.as_ref().map(|_| SourceStat::of(&meta));
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        // The entry name holds the SHA-1, which the tar header needs before the data: small
        // files are read once into memory, large ones hashed first and then streamed.
        let small = meta.len() <= SMALL_FILE;
        let mut data = Vec::new();
        let guid = if small {
            io::Read::read_to_end(&mut file, &mut data).map_err(|e| Error::io("read", path, e))?;
            Guid::of(&data)
        } else {
            hash_file(path)?.0
        };
        report.bytes_read += meta.len();
        let name = match &options.name {
            Some(n) => n.clone(),
            None => {
                if !seen.insert(guid) || store.archive().has_file(&guid) {
                    report.already_stored += 1;
                    continue;
                }
                file_entry_name(&guid)
            }
        };
        let appended = if small {
            Appended::Stored(store.writer().append_bytes(&name, &data, stat, mtime)?)
        } else {
            store
                .writer()
                .append_reader(&name, &mut file, meta.len(), Some(guid), stat, mtime)?
        };
        if let Appended::Rejected(rejected) = appended {
            return Err(Error::Changed {
                path: path.clone(),
                detail: rejected.0,
            });
        }
        report.added.push(name);
    }
    let summary = RunSummary {
        time: now(),
        host: hostname(),
        counts: vec![("files".into(), report.added.len() as u64)],
        ..Default::default()
    };
    report.run = store.commit(&summary)?.run;
    if let Some(failure) = store.index_failure() {
        notices.push(format!("{}: {failure}", paths.archive.display()));
        report.index_stale = true;
    }
    report.notices = notices;
    Ok(report)
}

/// The regular files named, with directories walked in name order (symlinks not followed).
fn expand_files(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for root in roots {
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(root).to_path_buf();
                Error::io("walk", path, e.into())
            })?;
            if entry.file_type().is_file() {
                out.push(entry.into_path());
            }
        }
    }
    Ok(out)
}

fn hash_file(path: &Path) -> Result<(Guid, u64)> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut reader = crate::guid::HashingReader::new(io::BufReader::with_capacity(256 << 10, file));
    io::copy(&mut reader, &mut io::sink()).map_err(|e| Error::io("read", path, e))?;
    Ok(reader.finish())
}

/// Bytes of every archive in an archive directory (users', shared trees', the server's), by
/// their files' sizes.
pub fn archive_bytes(dir: &Path) -> u64 {
    store::list_owner_archives(dir)
        .map(|(own, _)| {
            own.iter()
                .filter_map(|(_, p)| std::fs::metadata(&p.archive).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub use crate::host::hostname;
pub use crate::time::now;
