//! `push`: the committed bytes of an owner's archive the bucket lacks, uploaded as new objects,
//! then a new manifest naming them (formats/offsite.md sections 1 to 7). The upload order makes
//! every stop harmless: objects first, the manifest that names them last, the local state after.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bucket::Bucket;
use super::crypt::{hex, Recipients};
use super::layout::{manifest_name, new_id, owner_dir, piece_name};
use super::manifest::{self, Generation, Manifest, OffsiteKey, OwnerRecord, Piece};
use super::remote::{latest_manifest, manifest_names};
use crate::error::{Error, Result};
use crate::progress::Tally;
use crate::spool::Owner;
use crate::store::{Archive, ArchivePaths};

/// The bytes at the end of the pushed range whose hash tells a continued generation from a
/// rewritten one: the last commit marker lies there.
const TAIL: u64 = 64 << 10;
const DAY: i64 = 86_400;

pub struct PushSettings<'a> {
    pub key: &'a OffsiteKey,
    pub recipients: Option<&'a Recipients>,
    pub keep_generation_days: u64,
    pub lock_days: Option<u64>,
    pub dry_run: bool,
    /// `<archive-dir>/offsite-state/<target>/`: the local state (formats/offsite.md section 6).
    pub state_dir: PathBuf,
    pub now: i64,
}

/// What a push did for one owner.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct OwnerPushed {
    /// `unchanged`, `uploaded`, `new-generation` (or, with `--dry-run`, what would be done).
    pub outcome: &'static str,
    pub seq: u64,
    pub generation: String,
    /// Archive bytes uploaded (plaintext), index bytes uploaded, and bytes sent for both
    /// (ciphertext when encrypted).
    pub archive_bytes: u64,
    pub index_bytes: u64,
    pub object_bytes: u64,
    pub objects: u64,
    /// Objects of retired generations and stale manifests deleted.
    pub deleted: u64,
    pub notices: Vec<String>,
}

/// The local state of one owner's pushes.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Debug)]
struct PushState {
    seq: u64,
    manifest: String,
    generation: String,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    recipients: String,
    /// What the bucket's newest manifest holds of the generation, and when it was stored: lets
    /// a push that would only add runs without entries (the commit markers of nights without
    /// change) wait, with no request, until there is something to send or the heartbeat is due.
    #[serde(default)]
    archive_id: String,
    #[serde(default)]
    archive_len: u64,
    #[serde(default)]
    tail_sha256: String,
    #[serde(default)]
    pushed_at: i64,
}

fn stat_of(path: &Path) -> Option<(u64, u64, u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    ))
}

fn state_path(settings: &PushSettings, owner: &Owner) -> Result<PathBuf> {
    Ok(settings
        .state_dir
        .join(format!("{}.json", owner_dir(owner)?.replace('/', "-"))))
}

fn read_state(path: &Path) -> Option<PushState> {
    let bytes = crate::io::read_own_small(path, 1 << 20).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Pushes one owner's archive.
pub fn push_owner(
    bucket: &Bucket,
    owner: &Owner,
    paths: &ArchivePaths,
    settings: &PushSettings,
) -> Result<OwnerPushed> {
    push_owner_counted(bucket, owner, paths, settings, &Tally::unwatched())
}

/// As `push_owner`; `progress` counts the archive and index bytes read for upload.
pub fn push_owner_counted(
    bucket: &Bucket,
    owner: &Owner,
    paths: &ArchivePaths,
    settings: &PushSettings,
    progress: &Tally,
) -> Result<OwnerPushed> {
    let dir = owner_dir(owner)?;
    let state_file = state_path(settings, owner)?;
    // One push of an owner to a target at a time from this host: two at once would both store
    // manifest seq+1.
    let _pushing = if settings.dry_run {
        None
    } else {
        Some(lock_owner(&state_file)?)
    };
    let state = read_state(&state_file);
    let recipients_print = settings
        .recipients
        .map(|r| r.fingerprint().to_string())
        .unwrap_or_default();
    let stat = stat_of(&paths.archive);
    if let (Some(st), Some((dev, ino, size, mtime_ns))) = (&state, stat) {
        if (st.dev, st.ino, st.size, st.mtime_ns) == (dev, ino, size, mtime_ns)
            && st.recipients == recipients_print
        {
            return Ok(OwnerPushed {
                outcome: "unchanged",
                seq: st.seq,
                generation: st.generation.clone(),
                ..OwnerPushed::default()
            });
        }
    }
    let mut notices = Vec::new();
    let archive = Archive::open(paths, &mut notices)?;
    let Some(archive_id) = archive.archive_id().filter(|_| !archive.runs().is_empty()) else {
        return Err(Error::NotFound(format!(
            "a committed run in {}",
            paths.archive.display()
        )));
    };
    if let Some(st) = &state {
        if only_empty_runs_since(st, &archive, &recipients_print, settings) {
            if !settings.dry_run {
                let mut kept = latest_state_from(st, stat);
                kept.recipients = recipients_print.clone();
                write_state(&state_file, &kept)?;
            }
            return Ok(OwnerPushed {
                outcome: "unchanged",
                seq: st.seq,
                generation: st.generation.clone(),
                notices,
                ..OwnerPushed::default()
            });
        }
    }
    let latest = latest_manifest(bucket, owner, settings.key)?;
    if let (Some(st), latest_seq) = (&state, latest.as_ref().map_or(0, |(m, _)| m.seq)) {
        if latest_seq < st.seq {
            return Err(Error::refused(format!(
                "{}: the bucket's newest manifest is push {latest_seq}, but push {} was \
                 stored from here: manifests were deleted or the bucket rolled back; check it \
                 (verify --archive-dir) and remove {} to push anew",
                bucket.location(&dir),
                st.seq,
                state_file.display()
            )));
        }
    }
    let latest_time = latest.as_ref().map_or(0, |(m, _)| m.time);
    let committed = archive.committed_len();
    let index = archive.encode_index();
    let handle = archive.handle();
    let continues = |g: &Generation| -> Result<bool> {
        if g.archive_id != archive_id.to_string()
            || committed < g.archive_len
            || (index.len() as u64) < g.index_len
            || g.encrypted != settings.recipients.is_some()
            || g.recipients != recipients_print
        {
            return Ok(false);
        }
        Ok(tail_sha256(handle, g.archive_len)? == g.tail_sha256
            && hex(&Sha256::digest(&index[..g.index_len as usize])) == g.index_sha256)
    };
    let push = new_id()?;
    let (previous, mut generation, mut retired, outcome) = match latest {
        Some((m, _)) if continues(&m.current)? => (
            Some(m.seq),
            m.current.clone(),
            m.retired.clone(),
            "uploaded",
        ),
        Some((m, _)) => {
            let mut old = m.current.clone();
            old.retired = Some(settings.now);
            let mut retired = m.retired.clone();
            retired.push(old);
            (
                Some(m.seq),
                fresh(settings, archive_id, &recipients_print)?,
                retired,
                "new-generation",
            )
        }
        None => (
            None,
            fresh(settings, archive_id, &recipients_print)?,
            Vec::new(),
            "new-generation",
        ),
    };
    let seq = previous.map_or(1, |s| s + 1);
    let mut report = OwnerPushed {
        outcome,
        seq,
        generation: generation.id.clone(),
        notices,
        ..OwnerPushed::default()
    };
    if outcome == "uploaded"
        && committed == generation.archive_len
        && index.len() as u64 == generation.index_len
    {
        report.outcome = "unchanged";
        report.seq = seq - 1;
        if !settings.dry_run {
            write_state(
                &state_file,
                &latest_state(
                    seq - 1,
                    &dir,
                    &generation,
                    stat,
                    &recipients_print,
                    latest_time,
                ),
            )?;
        }
        return Ok(report);
    }
    report.archive_bytes = committed - generation.archive_len;
    report.index_bytes = index.len() as u64 - generation.index_len;
    if settings.dry_run {
        return Ok(report);
    }

    let lock_until = settings.lock_days.map(|d| settings.now + d as i64 * DAY);
    let data_range = generation.archive_len..committed;
    progress.set_bytes_total(report.archive_bytes + report.index_bytes);
    let mut data_source = progress.reader(
        handle
            .reader_at(data_range.start)
            .take(data_range.end - data_range.start),
    );
    let data = upload_piece(
        bucket,
        &dir,
        'd',
        &generation.id,
        data_range,
        &push,
        settings,
        &mut data_source,
        lock_until,
    )?;
    let index_range = generation.index_len..index.len() as u64;
    let mut index_source = progress.reader(&index[index_range.start as usize..]);
    let index_piece = upload_piece(
        bucket,
        &dir,
        'i',
        &generation.id,
        index_range,
        &push,
        settings,
        &mut index_source,
        lock_until,
    )?;
    for p in [&data, &index_piece] {
        report.object_bytes += p.size;
        report.objects += 1;
    }
    generation.data.push(data);
    generation.index.push(index_piece);
    generation.archive_len = committed;
    generation.index_len = index.len() as u64;
    generation.runs = archive.runs().len() as u64;
    generation.tail_sha256 = tail_sha256(handle, committed)?;
    generation.index_sha256 = hex(&Sha256::digest(&index));

    // Retired generations past their grace period (and every lock) go now; their objects are
    // deleted before the manifest that no longer names them is stored.
    let grace = settings.keep_generation_days as i64 * DAY;
    let (expired, kept): (Vec<Generation>, Vec<Generation>) = retired.drain(..).partition(|g| {
        g.retired.is_some_and(|t| t + grace <= settings.now)
            && g.pieces()
                .all(|p| p.lock_until.is_none_or(|l| l <= settings.now))
    });
    retired = kept;
    // Live objects keep a lock as long as `--lock-days` from now: a generation's first objects
    // are as old as the generation, and newer runs still need them. Renewed once half the
    // period has passed.
    if let (Some(days), Some(until)) = (settings.lock_days, lock_until) {
        let renew_before = settings.now + days as i64 * DAY / 2;
        for p in generation
            .data
            .iter_mut()
            .chain(generation.index.iter_mut())
        {
            if p.lock_until.is_none_or(|l| l < renew_before) {
                bucket.set_retention(&format!("{dir}/{}", p.key), until)?;
                p.lock_until = Some(until);
            }
        }
    }
    for g in &expired {
        for p in g.pieces() {
            bucket.delete(&format!("{dir}/{}", p.key))?;
            report.deleted += 1;
        }
    }

    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        owner: OwnerRecord::of(owner),
        seq,
        push: push.clone(),
        time: settings.now,
        host: crate::host::hostname(),
        current: generation.clone(),
        retired,
    };
    let name = format!("{dir}/{}", manifest_name(seq, &push));
    bucket.put(&name, manifest::seal(&manifest, &name, settings.key)?)?;
    if let Some(until) = lock_until {
        bucket.set_retention(&name, until)?;
    }
    write_state(
        &state_file,
        &latest_state(
            seq,
            &dir,
            &generation,
            stat,
            &recipients_print,
            settings.now,
        ),
    )?;

    // Manifests older than the previous one are redundant (the newest lists a superset of what
    // they name); one older is kept for a reader that listed just before this push.
    for (old_seq, old_name) in manifest_names(bucket, &dir)? {
        if old_seq + 1 < seq {
            bucket.delete(&old_name)?;
            report.deleted += 1;
        }
    }
    // Objects no manifest names are what an interrupted push left; once past the grace period
    // nobody can be uploading them any more.
    let named: std::collections::HashSet<String> = std::iter::once(&manifest.current)
        .chain(&manifest.retired)
        .flat_map(|g| g.pieces().map(|p| format!("{dir}/{}", p.key)))
        .collect();
    for listed in bucket.list(&format!("{dir}/"))? {
        let is_manifest = listed.key[dir.len()..].starts_with("/m/");
        if !is_manifest && !named.contains(&listed.key) && listed.modified + grace <= settings.now {
            bucket.delete(&listed.key)?;
            report.deleted += 1;
        }
    }
    Ok(report)
}

/// The state after a push. `stat` is the archive file's as it was before the push read it: a
/// run committed while the push ran changes the file, so the next push looks again.
fn latest_state(
    seq: u64,
    dir: &str,
    generation: &Generation,
    stat: Option<(u64, u64, u64, i128)>,
    recipients: &str,
    pushed_at: i64,
) -> PushState {
    let (dev, ino, size, mtime_ns) = stat.unwrap_or_default();
    PushState {
        seq,
        manifest: format!("{dir}/m/{seq:020}"),
        generation: generation.id.clone(),
        dev,
        ino,
        size,
        mtime_ns,
        recipients: recipients.to_string(),
        archive_id: generation.archive_id.clone(),
        archive_len: generation.archive_len,
        tail_sha256: generation.tail_sha256.clone(),
        pushed_at,
    }
}

/// The state of the same push with the archive file's new stat (it grew by empty runs only).
fn latest_state_from(state: &PushState, stat: Option<(u64, u64, u64, i128)>) -> PushState {
    let (dev, ino, size, mtime_ns) = stat.unwrap_or_default();
    PushState {
        dev,
        ino,
        size,
        mtime_ns,
        seq: state.seq,
        manifest: state.manifest.clone(),
        generation: state.generation.clone(),
        recipients: state.recipients.clone(),
        archive_id: state.archive_id.clone(),
        archive_len: state.archive_len,
        tail_sha256: state.tail_sha256.clone(),
        pushed_at: state.pushed_at,
    }
}

/// How long a push may wait while the archive grows only by runs without entries: the bucket
/// then still shows each owner alive at least weekly (`status` of a bucket), and locks are
/// renewed in time (a quarter of `--lock-days`).
fn heartbeat(settings: &PushSettings) -> i64 {
    let week = 7 * DAY;
    match settings.lock_days {
        Some(days) => week.min((days as i64 * DAY / 4).max(DAY / 4)),
        None => week,
    }
}

/// Whether everything the archive holds beyond what the bucket has (per the local state) is
/// runs without entries, the bucket's part is still this archive's prefix, and the heartbeat is
/// not due: then nothing needs sending yet.
fn only_empty_runs_since(
    state: &PushState,
    archive: &Archive,
    recipients: &str,
    settings: &PushSettings,
) -> bool {
    let Some(archive_id) = archive.archive_id() else {
        return false;
    };
    if state.archive_len == 0
        || state.archive_id != archive_id.to_string()
        || state.recipients != recipients
        || settings.now - state.pushed_at >= heartbeat(settings)
        || archive.committed_len() < state.archive_len
    {
        return false;
    }
    let newer = archive.runs().iter().filter(|r| r.end > state.archive_len);
    let mut any = false;
    for run in newer {
        if run.start < state.archive_len || !archive.entries_of(run).is_empty() {
            return false;
        }
        any = true;
    }
    if !any {
        return false;
    }
    tail_sha256(archive.handle(), state.archive_len).is_ok_and(|h| h == state.tail_sha256)
}

/// SHA-256 (hex) of the archive's last `TAIL` bytes before `end`: where its last commit marker
/// lies, so equal hashes mean the same run ended there (a compaction or repair rewrites it).
fn tail_sha256(handle: &crate::store::ArchiveHandle, end: u64) -> Result<String> {
    let from = end - end.min(TAIL);
    let mut tail = Vec::new();
    handle
        .reader_at(from)
        .take(end - from)
        .read_to_end(&mut tail)
        .map_err(|e| Error::io("read", handle.path(), e))?;
    Ok(hex(&Sha256::digest(&tail)))
}

/// mailpack's own lock file beside the state file (flock).
fn lock_owner(state_file: &Path) -> Result<std::fs::File> {
    use fs2::FileExt;
    let dir = crate::io::parent_dir(state_file);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let path = state_file.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("create", &path, e))?;
    file.lock_exclusive()
        .map_err(|e| Error::io("lock", &path, e))?;
    Ok(file)
}

fn write_state(path: &Path, state: &PushState) -> Result<()> {
    let dir = crate::io::parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    // A cache (formats/offsite.md section 6): a crash that loses it costs one comparison.
    crate::io::write_replace(path, &serde_json::to_vec(state).expect("state serializes"))
}

fn fresh(
    settings: &PushSettings,
    archive_id: crate::archive::ArchiveId,
    recipients: &str,
) -> Result<Generation> {
    Ok(Generation {
        id: new_id()?,
        archive_id: archive_id.to_string(),
        created: settings.now,
        retired: None,
        encrypted: settings.recipients.is_some(),
        recipients: recipients.to_string(),
        archive_len: 0,
        index_len: 0,
        runs: 0,
        tail_sha256: String::new(),
        index_sha256: String::new(),
        data: Vec::new(),
        index: Vec::new(),
    })
}

#[allow(clippy::too_many_arguments)] // one call per kind of object, in one place
fn upload_piece(
    bucket: &Bucket,
    dir: &str,
    kind: char,
    generation: &str,
    range: std::ops::Range<u64>,
    push: &str,
    settings: &PushSettings,
    source: &mut dyn Read,
    lock_until: Option<i64>,
) -> Result<Piece> {
    let encrypted = settings.recipients.is_some();
    let rel = piece_name(kind, generation, range.clone(), push, encrypted);
    let key = format!("{dir}/{rel}");
    let mut upload = bucket.upload(&key)?;
    let copied = match settings.recipients {
        Some(r) => {
            let mut sealed = r.encrypt_into(&mut upload)?;
            let n = copy(source, &mut sealed, &key, bucket)?;
            sealed.finish().map_err(|e| upload_error(e, &key, bucket))?;
            n
        }
        None => copy(source, &mut upload, &key, bucket)?,
    };
    if copied != range.end - range.start {
        return Err(Error::corrupt(
            bucket.location(&key),
            copied,
            "the archive ended before its committed length while it was pushed",
        ));
    }
    let (size, sha256) = upload.finish()?;
    if let Some(until) = lock_until {
        bucket.set_retention(&key, until)?;
    }
    Ok(Piece {
        key: rel,
        start: range.start,
        end: range.end,
        size,
        sha256: hex(&sha256),
        lock_until,
    })
}

fn upload_error(e: std::io::Error, key: &str, bucket: &Bucket) -> Error {
    match e.downcast::<Error>() {
        Ok(inner) => inner,
        Err(e) => Error::remote("upload", bucket.location(key), e.to_string()),
    }
}

fn copy(from: &mut dyn Read, to: &mut dyn Write, key: &str, bucket: &Bucket) -> Result<u64> {
    super::copy_all(from, to).map_err(|e| match e {
        super::CopyError::Read(e, _) => Error::io("read", "the archive being pushed", e),
        super::CopyError::Write(e) => upload_error(e, key, bucket),
    })
}
