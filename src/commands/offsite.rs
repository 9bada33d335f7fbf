//! `push`, `pull`, and the read-only commands pointed at a bucket (`--archive-dir s3://…`):
//! options resolved into an `offsite` target, owners chosen, workers run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::offsite::{
    self, Bucket, BucketUrl, Identities, OffsiteKey, OwnerPulled, OwnerPushed, OwnerVerified,
    PushSettings, ReadOptions, Recipients,
};
use crate::progress::{OwnerProgress, Phase, Progress, Tally};
use crate::spool::Owner;
use crate::store::{list_owner_archives, Archive, ArchivePaths};

/// The environment variable naming the off-site key file for readers.
pub const KEY_ENV: &str = "MAILPACK_OFFSITE_KEY";

/// Where pushes go and how.
pub struct PushTarget {
    pub bucket: Bucket,
    key: OffsiteKey,
    recipients: Option<Recipients>,
    pub keep_generation_days: u64,
    pub lock_days: Option<u64>,
    pub dry_run: bool,
    state_dir: PathBuf,
    /// The off-site key file, when this push created it (tell the operator to keep a copy).
    pub key_created: Option<PathBuf>,
}

pub struct PushTargetOptions {
    pub archive_dir: PathBuf,
    pub url: String,
    pub key_file: Option<PathBuf>,
    pub recipients: Vec<String>,
    pub recipients_files: Vec<PathBuf>,
    pub keep_generation_days: u64,
    pub lock_days: Option<u64>,
    pub dry_run: bool,
}

impl PushTarget {
    pub fn connect(options: &PushTargetOptions) -> Result<PushTarget> {
        let url = BucketUrl::parse(&options.url)?;
        let recipients = Recipients::parse(&options.recipients, &options.recipients_files)?;
        let key_path = options
            .key_file
            .clone()
            .unwrap_or_else(|| options.archive_dir.join(offsite::KEY_FILE));
        let (key, created) = if options.dry_run {
            // Before any key exists nothing sealed can be read: every owner shows as new.
            (
                OffsiteKey::load(&key_path).or_else(|_| OffsiteKey::random())?,
                false,
            )
        } else {
            OffsiteKey::load_or_create(&key_path)?
        };
        let bucket = Bucket::open(&url)?;
        if let Some(days) = options.lock_days {
            refuse_lock(&bucket, days)?;
        }
        Ok(PushTarget {
            state_dir: offsite::state_dir(&options.archive_dir, &url),
            bucket,
            key,
            recipients,
            keep_generation_days: options.keep_generation_days,
            lock_days: options.lock_days,
            dry_run: options.dry_run,
            key_created: created.then_some(key_path),
        })
    }

    pub fn with_faults(mut self, faults: crate::io::Faults) -> PushTarget {
        self.bucket = self.bucket.with_faults(faults);
        self
    }

    /// Pushes one owner's archive.
    pub fn push(&self, owner: &Owner, paths: &ArchivePaths) -> Result<OwnerPushed> {
        self.push_counted(owner, paths, &Tally::unwatched())
    }

    /// As `push`; `progress` counts the bytes read for upload.
    pub fn push_counted(
        &self,
        owner: &Owner,
        paths: &ArchivePaths,
        progress: &Tally,
    ) -> Result<OwnerPushed> {
        let settings = PushSettings {
            key: &self.key,
            recipients: self.recipients.as_ref(),
            keep_generation_days: self.keep_generation_days,
            lock_days: self.lock_days,
            dry_run: self.dry_run,
            state_dir: self.state_dir.clone(),
            now: crate::time::now(),
        };
        offsite::push_owner_counted(&self.bucket, owner, paths, &settings, progress)
    }
}

/// `--lock-days` only where the store keeps a lock: a probe object is locked for a day and read
/// back; a store that does not report the lock (Garage, a bucket without object lock) is refused
/// by name before anything is uploaded (formats/offsite.md section 8).
fn refuse_lock(bucket: &Bucket, days: u64) -> Result<()> {
    let probe = format!("lock-probe/{}", crate::offsite::new_id()?);
    bucket.put(&probe, b"mailpack object-lock probe\n".to_vec())?;
    let until = crate::time::now() + 86_400;
    let kept = bucket
        .set_retention(&probe, until)
        .and_then(|()| bucket.retention(&probe));
    match kept {
        Ok(Some(r)) if r.mode.eq_ignore_ascii_case("COMPLIANCE") => Ok(()),
        other => {
            let _ = bucket.delete(&probe);
            let why = match other {
                Ok(Some(r)) => format!("it reports lock mode {:?}, not COMPLIANCE", r.mode),
                Ok(None) => "it accepted the retention but reports no lock on the object".into(),
                Err(e) => e.to_string(),
            };
            Err(Error::refused(format!(
                "--lock-days {days}: {} does not keep object locks ({why}); create the bucket \
                 with object lock enabled, or push without --lock-days",
                bucket.url()
            )))
        }
    }
}

/// One owner's result.
pub struct Pushed {
    pub owner: Owner,
    pub result: std::result::Result<OwnerPushed, Error>,
}

pub struct PushOptions {
    pub target: PushTargetOptions,
    pub owners: Vec<Owner>,
    pub jobs: usize,
    /// Counters for a progress display (issue 19), per owner as it uploads; `None`: nobody
    /// watches.
    pub progress: Option<Arc<Progress>>,
}

pub struct PushSummary {
    pub pushed: usize,
    pub failed: usize,
    pub bytes_sent: u64,
    pub requests: u64,
    pub key_created: Option<PathBuf>,
    pub notices: Vec<String>,
}

/// Pushes the archives of `options.owners` (all in the directory when empty), `jobs` at a
/// time; `on_owner` sees each result as it arrives.
pub fn push(
    options: &PushOptions,
    on_owner: &mut (dyn FnMut(Pushed) + Send),
) -> Result<PushSummary> {
    let target = PushTarget::connect(&options.target)?;
    push_with(&target, options, on_owner)
}

pub fn push_with(
    target: &PushTarget,
    options: &PushOptions,
    on_owner: &mut (dyn FnMut(Pushed) + Send),
) -> Result<PushSummary> {
    let dir = &options.target.archive_dir;
    let mut notices = Vec::new();
    let work: Vec<(Owner, ArchivePaths)> = if options.owners.is_empty() {
        let (own, skipped) = list_owner_archives(dir)?;
        notices.extend(skipped);
        own.into_iter()
            .filter_map(|(owner, paths)| owner.map(|o| (o, paths)))
            .collect()
    } else {
        options
            .owners
            .iter()
            .map(|o| Ok((o.clone(), ArchivePaths::for_owner(dir, o)?)))
            .collect::<Result<_>>()?
    };
    if let Some(progress) = &options.progress {
        progress.set_owners_total(work.len() as u64);
    }
    let next = AtomicUsize::new(0);
    let report = Mutex::new((0usize, 0usize, on_owner));
    let jobs = options.jobs.clamp(1, work.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((owner, paths)) = work.get(i) else {
                    break;
                };
                let tally = match &options.progress {
                    Some(p) => p.start(&owner.to_string(), Phase::Push),
                    None => OwnerProgress::unwatched(),
                };
                let result = target.push_counted(owner, paths, &tally);
                // Counted done before its result is reported.
                drop(tally);
                let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                if result.is_ok() {
                    r.0 += 1;
                } else {
                    r.1 += 1;
                }
                (r.2)(Pushed {
                    owner: owner.clone(),
                    result,
                });
            });
        }
    });
    let (pushed, failed, _) = report.into_inner().unwrap_or_else(|p| p.into_inner());
    let traffic = target.bucket.traffic();
    Ok(PushSummary {
        pushed,
        failed,
        bytes_sent: traffic.bytes_sent.load(Ordering::Relaxed),
        requests: traffic.requests.load(Ordering::Relaxed),
        key_created: target.key_created.clone(),
        notices,
    })
}

/// A bucket opened for reading.
pub struct OffsiteSource {
    pub bucket: Arc<Bucket>,
    key: OffsiteKey,
    identities: Option<Arc<Identities>>,
    generation: Option<String>,
}

impl OffsiteSource {
    /// Connects to `url` with the off-site key from `key_file` (or the file `$MAILPACK_OFFSITE_KEY`
    /// names) and the age identities in `identity`.
    pub fn connect(
        url: &str,
        key_file: Option<&Path>,
        identity: Option<&Path>,
        generation: Option<String>,
    ) -> Result<OffsiteSource> {
        let url = BucketUrl::parse(url)?;
        let key_file = match key_file {
            Some(f) => f.to_path_buf(),
            None => std::env::var_os(KEY_ENV)
                .map(PathBuf::from)
                .ok_or_else(|| {
                    Error::usage(format!(
                        "reading {url} needs the off-site key the pushes used: --offsite-key FILE \
                     (or {KEY_ENV}=FILE)"
                    ))
                })?,
        };
        let key = OffsiteKey::load(&key_file)?;
        let identities = identity.map(Identities::load).transpose()?.map(Arc::new);
        Ok(OffsiteSource {
            bucket: Arc::new(Bucket::open(&url)?),
            key,
            identities,
            generation,
        })
    }

    fn read_options(&self) -> ReadOptions<'_> {
        ReadOptions {
            key: &self.key,
            identities: self.identities.clone(),
            generation: self.generation.as_deref(),
        }
    }

    /// An owner's archive as the bucket's newest manifest (or `--generation`) has it.
    pub fn open(&self, owner: &Owner, notices: &mut Vec<String>) -> Result<Archive> {
        Ok(offsite::open_archive(&self.bucket, owner, &self.read_options(), notices)?.archive)
    }

    /// Every owner with a copy in the bucket.
    pub fn owners(&self) -> Result<Vec<Owner>> {
        offsite::list_owners(&self.bucket)
    }

    /// The owner's newest manifest (what `status` of a bucket shows), if it has one.
    pub fn latest(&self, owner: &Owner) -> Result<Option<crate::offsite::Manifest>> {
        Ok(offsite::latest_manifest(&self.bucket, owner, &self.key)?.map(|(m, _)| m))
    }

    pub fn verify(&self, owner: &Owner) -> Result<OwnerVerified> {
        offsite::verify_owner(&self.bucket, owner, &self.key, self.identities.clone())
    }

    pub fn pull(&self, owner: &Owner, archive_dir: &Path) -> Result<OwnerPulled> {
        offsite::pull_owner(
            &self.bucket,
            owner,
            archive_dir,
            &self.key,
            self.identities.as_deref(),
        )
    }

    pub fn bytes_fetched(&self) -> u64 {
        self.bucket.traffic().bytes_fetched.load(Ordering::Relaxed)
    }
}
