//! A bucket behind a synchronous interface: `object_store`'s S3 client (SigV4, retries with
//! backoff, multipart uploads, ranged GETs, listing, credentials and endpoint from the usual
//! `AWS_*` variables) driven by one private tokio runtime, so nothing async leaks out of the
//! off-site module. Keys are relative to the target's prefix.

use std::io::{self, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::io::{FaultOn, Faults};

/// Objects larger than this go up as multipart uploads of parts this size.
pub const PART_SIZE: usize = 16 << 20;
/// The most objects one listing returns before mailpack stops and says so: an owner's directory
/// holds a handful per push, so more means something else writes there.
const MAX_LISTED: usize = 4_000_000;

/// `s3://BUCKET/PREFIX`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl BucketUrl {
    pub fn parse(url: &str) -> Result<BucketUrl> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::usage(format!("{url} is not an s3://BUCKET/PREFIX address")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(Error::usage(format!(
                "{url}: {bucket:?} is not a bucket name (3 to 63 of a-z 0-9 . -)"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() && StorePath::parse(&prefix).is_err() {
            return Err(Error::usage(format!(
                "{url}: the prefix {prefix:?} holds characters object stores reserve"
            )));
        }
        Ok(BucketUrl {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// Whether a command-line directory argument names a bucket rather than a directory.
    pub fn is_bucket(arg: &std::path::Path) -> bool {
        arg.to_str().is_some_and(|s| s.starts_with("s3://"))
    }
}

impl std::fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// One object of a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Relative to the target's prefix.
    pub key: String,
    pub size: u64,
    /// Unix seconds.
    pub modified: i64,
}

/// Counters of what crossed the wire, for reports and benchmarks.
#[derive(Default)]
pub struct Traffic {
    pub requests: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_fetched: AtomicU64,
}

pub struct Bucket {
    url: BucketUrl,
    store: Arc<AmazonS3>,
    /// For the requests `object_store` has no call for (object lock), sent as presigned URLs.
    http: object_store::client::HttpClient,
    runtime: tokio::runtime::Runtime,
    traffic: Traffic,
    /// Fault injection for tests: counted per upload request (`FaultOn::Write`).
    faults: Faults,
}

impl Bucket {
    /// Connects to the bucket with credentials, region and endpoint from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`; path-style addressing). No request is made yet.
    pub fn open(url: &BucketUrl) -> Result<Bucket> {
        Bucket::open_with(url, &[])
    }

    /// As `open`, with `AWS_*` settings given here taking the place of the environment's (a
    /// program that talks to several stores at once; the tests).
    pub fn open_with(url: &BucketUrl, settings: &[(String, String)]) -> Result<Bucket> {
        let location = url.to_string();
        let setting = |name: &str| {
            settings
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(name).ok())
        };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
        for (name, value) in settings {
            if let Ok(key) = name.to_ascii_lowercase().parse() {
                builder = builder.with_config(key, value);
            }
        }
        if setting("AWS_REGION").is_none() && setting("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        let plain_http = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .filter_map(|v| setting(v))
            .any(|e| e.starts_with("http://"));
        let client_options = ClientOptions::new()
            .with_allow_http(plain_http)
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(300));
        let store = builder
            .with_retry(RetryConfig {
                max_retries: 10,
                retry_timeout: Duration::from_secs(180),
                ..RetryConfig::default()
            })
            .with_client_options(client_options.clone())
            .build()
            .map_err(|e| Error::remote("connect to", &location, e.to_string()))?;
        let http = {
            use object_store::client::HttpConnector;
            object_store::client::ReqwestConnector::default()
                .connect(&client_options)
                .map_err(|e| Error::remote("connect to", &location, e.to_string()))?
        };
        // Two workers: uploads of several owners (`--jobs`) share them; each caller blocks on
        // its own request, so this is concurrency for the sockets, not more CPU.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mailpack-offsite")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the off-site runtime for", &location, e))?;
        Ok(Bucket {
            url: url.clone(),
            store: Arc::new(store),
            http,
            runtime,
            traffic: Traffic::default(),
            faults: Faults::none(),
        })
    }

    pub fn with_faults(mut self, faults: Faults) -> Bucket {
        self.faults = faults;
        self
    }

    pub fn url(&self) -> &BucketUrl {
        &self.url
    }

    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The full address of a key, for messages.
    pub fn location(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    fn path(&self, key: &str) -> Result<StorePath> {
        let full = if self.url.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.url.prefix)
        };
        StorePath::parse(&full)
            .map_err(|e| Error::usage(format!("{}: not a usable key: {e}", self.location(key))))
    }

    fn fail(&self, op: &'static str, key: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => {
                Error::NotFound(format!("object {}", self.location(key)))
            }
            e => Error::remote(op, self.location(key), e.to_string()),
        }
    }

    fn count(&self, sent: usize, fetched: usize) {
        self.traffic.requests.fetch_add(1, Ordering::Relaxed);
        self.traffic
            .bytes_sent
            .fetch_add(sent as u64, Ordering::Relaxed);
        self.traffic
            .bytes_fetched
            .fetch_add(fetched as u64, Ordering::Relaxed);
    }

    fn injected(&self, key: &str) -> Result<()> {
        if self.faults.fires(FaultOn::Write) {
            return Err(Error::remote(
                "upload",
                self.location(key),
                "injected fault",
            ));
        }
        Ok(())
    }

    /// Stores `data` at `key` in one request.
    pub fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let path = self.path(key)?;
        self.injected(key)?;
        let len = data.len();
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(data)))
            .map_err(|e| self.fail("upload", key, e))?;
        self.count(len, 0);
        Ok(())
    }

    /// A writer that uploads what is written to `key`: in one request when it ends up smaller
    /// than a part, as a multipart upload otherwise. Nothing exists at `key` until `finish`.
    pub fn upload(&self, key: &str) -> Result<Upload<'_>> {
        Ok(Upload {
            bucket: self,
            key: key.to_string(),
            path: self.path(key)?,
            buffer: Vec::new(),
            multipart: None,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// The whole object at `key`, refused if it is larger than `max` bytes.
    pub fn get(&self, key: &str, max: u64) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let bytes = self.runtime.block_on(async {
            let got = self.store.get(&path).await?;
            if got.meta.size > max {
                return Ok(Err(got.meta.size));
            }
            got.bytes().await.map(Ok)
        });
        match bytes.map_err(|e| self.fail("download", key, e))? {
            Ok(b) => {
                self.count(0, b.len());
                Ok(b.to_vec())
            }
            Err(size) => Err(Error::refused(format!(
                "{} holds {size} bytes, more than the {max} such an object may",
                self.location(key)
            ))),
        }
    }

    /// Bytes `range` of the object at `key`.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        let want = range.end - range.start;
        let bytes = self
            .runtime
            .block_on(self.store.get_range(&path, range.clone()))
            .map_err(|e| self.fail("download", key, e))?;
        self.count(0, bytes.len());
        if bytes.len() as u64 != want {
            return Err(Error::remote(
                "download",
                self.location(key),
                format!(
                    "asked for bytes {}..{}, got {} bytes",
                    range.start,
                    range.end,
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }

    /// Every object under `dir` (a key prefix ending in `/`, or empty), relative to the target's
    /// prefix.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let prefix = match (dir.is_empty(), self.url.prefix.is_empty()) {
            (true, true) => None,
            (true, false) => Some(
                StorePath::parse(&self.url.prefix)
                    .map_err(|e| Error::usage(format!("{}: {e}", self.url)))?,
            ),
            (false, _) => Some(self.path(dir.trim_end_matches('/'))?),
        };
        let strip = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        let listed = self.runtime.block_on(async {
            let mut out = Vec::new();
            let mut stream = self.store.list(prefix.as_ref());
            while let Some(meta) = stream.try_next().await? {
                if out.len() >= MAX_LISTED {
                    return Ok(None);
                }
                out.push(Listed {
                    key: meta.location.to_string(),
                    size: meta.size,
                    modified: meta.last_modified.timestamp(),
                });
            }
            Ok(Some(out))
        });
        self.count(0, 0);
        let listed = listed
            .map_err(|e| self.fail("list", dir, e))?
            .ok_or_else(|| {
                Error::refused(format!(
                    "{} holds more than {MAX_LISTED} objects",
                    self.location(dir)
                ))
            })?;
        Ok(listed
            .into_iter()
            .filter_map(|l| {
                let key = l.key.strip_prefix(&strip)?.to_string();
                Some(Listed { key, ..l })
            })
            .collect())
    }

    /// The "directories" right below `dir` (keys up to the next `/`), relative to the target's
    /// prefix, without their trailing `/`.
    pub fn list_dirs(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.path(dir.trim_end_matches('/'))?;
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&path)))
            .map_err(|e| self.fail("list", dir, e))?;
        self.count(0, 0);
        let strip = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.as_ref().strip_prefix(&strip).map(str::to_string))
            .collect())
    }

    /// Deletes the object at `key`; an object already gone is not an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        self.injected(key)?;
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.count(0, 0);
                Ok(())
            }
            Err(e) => Err(self.fail("delete", key, e)),
        }
    }
}

/// What a store says of an object's lock (HEAD: `x-amz-object-lock-mode`,
/// `x-amz-object-lock-retain-until-date`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub mode: String,
    pub until: String,
}

impl Bucket {
    /// Sends one request `object_store` has no call for, signed as a presigned URL with
    /// `headers` bound to the signature. Returns the status and the response headers.
    fn presigned(
        &self,
        method: http::Method,
        key: &str,
        query: &[(&str, &str)],
        headers: http::HeaderMap,
        body: Vec<u8>,
    ) -> Result<(u16, http::HeaderMap)> {
        use object_store::signer::Signer;
        let path = self.path(key)?;
        let mut options = object_store::signer::SignedUrlOptions::new()
            .with_query(query.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (name, value) in &headers {
            options = options.with_signed_header(name.clone(), value.clone());
        }
        let url = self
            .runtime
            .block_on(self.store.signed_url_opts(
                method.clone(),
                &path,
                Duration::from_secs(300),
                &options,
            ))
            .map_err(|e| self.fail("sign a request for", key, e))?;
        let mut request = http::Request::builder().method(method).uri(url.as_str());
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let request = request
            .body(object_store::client::HttpRequestBody::from(body))
            .map_err(|e| Error::remote("build a request for", self.location(key), e.to_string()))?;
        let response = self
            .runtime
            .block_on(self.http.execute(request))
            .map_err(|e| Error::remote("request", self.location(key), e.to_string()))?;
        self.count(0, 0);
        Ok((response.status().as_u16(), response.headers().clone()))
    }

    /// Locks the object at `key` until `until` (Unix seconds) in compliance mode
    /// (`PutObjectRetention`); extends a lock already there.
    pub fn set_retention(&self, key: &str, until: i64) -> Result<()> {
        use base64::Engine;
        self.injected(key)?;
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            crate::time::format_utc(until)
        )
        .into_bytes();
        let mut headers = http::HeaderMap::new();
        // Stores require a checksum of a retention request's body.
        let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
        headers.insert(
            "x-amz-checksum-sha256",
            http::HeaderValue::from_str(&checksum).expect("base64 is a header value"),
        );
        headers.insert(
            "x-amz-sdk-checksum-algorithm",
            http::HeaderValue::from_static("SHA256"),
        );
        let (status, _) =
            self.presigned(http::Method::PUT, key, &[("retention", "")], headers, body)?;
        if !(200..300).contains(&status) {
            return Err(Error::remote(
                "lock",
                self.location(key),
                format!("the store answered {status} to PutObjectRetention"),
            ));
        }
        Ok(())
    }

    /// The lock the store reports for the object at `key`, if any.
    pub fn retention(&self, key: &str) -> Result<Option<Retention>> {
        let (status, headers) = self.presigned(
            http::Method::HEAD,
            key,
            &[],
            http::HeaderMap::new(),
            Vec::new(),
        )?;
        if !(200..300).contains(&status) {
            return Err(Error::remote(
                "look at",
                self.location(key),
                format!("the store answered {status} to HEAD"),
            ));
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(
            match (
                header("x-amz-object-lock-mode"),
                header("x-amz-object-lock-retain-until-date"),
            ) {
                (Some(mode), Some(until)) => Some(Retention { mode, until }),
                _ => None,
            },
        )
    }
}

/// An object being uploaded; see `Bucket::upload`.
pub struct Upload<'b> {
    bucket: &'b Bucket,
    key: String,
    path: StorePath,
    buffer: Vec<u8>,
    multipart: Option<Box<dyn object_store::MultipartUpload>>,
    hasher: Sha256,
    size: u64,
}

impl Upload<'_> {
    fn send_part(&mut self) -> Result<()> {
        let bucket = self.bucket;
        bucket.injected(&self.key)?;
        if self.multipart.is_none() {
            let started = bucket
                .runtime
                .block_on(bucket.store.put_multipart(&self.path))
                .map_err(|e| bucket.fail("start the upload of", &self.key, e))?;
            self.multipart = Some(started);
        }
        let part = std::mem::take(&mut self.buffer);
        let len = part.len();
        let upload = self.multipart.as_mut().expect("started above");
        bucket
            .runtime
            .block_on(upload.put_part(PutPayload::from(part)))
            .map_err(|e| bucket.fail("upload a part of", &self.key, e))?;
        bucket.count(len, 0);
        Ok(())
    }

    /// Completes the upload: the object exists from here on. Returns its size and SHA-256.
    pub fn finish(mut self) -> Result<(u64, [u8; 32])> {
        let bucket = self.bucket;
        if self.multipart.is_none() {
            let data = std::mem::take(&mut self.buffer);
            bucket.put(&self.key, data)?;
        } else {
            if !self.buffer.is_empty() {
                self.send_part()?;
            }
            bucket.injected(&self.key)?;
            let upload = self.multipart.as_mut().expect("multipart");
            bucket
                .runtime
                .block_on(upload.complete())
                .map_err(|e| bucket.fail("complete the upload of", &self.key, e))?;
            self.multipart = None;
        }
        let digest = std::mem::take(&mut self.hasher).finalize();
        Ok((self.size, digest.into()))
    }
}

impl Write for Upload<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = PART_SIZE - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if self.buffer.len() == PART_SIZE {
            self.send_part().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload<'_> {
    /// An upload dropped unfinished (an error on the way) is aborted, so its parts do not wait
    /// for the store's lifecycle rules.
    fn drop(&mut self) {
        if let Some(mut upload) = self.multipart.take() {
            let _ = self.bucket.runtime.block_on(upload.abort());
        }
    }
}
