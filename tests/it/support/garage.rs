//! Private, real Garage 2.5.0 object stores on 127.0.0.1 for the off-site tests (issue 16):
//! `GarageServer` (one node, set up by Garage itself) and `GarageCluster` (several nodes,
//! replication factor 3, set up with the garage CLI), plus `S3Client`, a small synchronous S3
//! client over `object_store` for tests that look into or tamper with the bucket.
//!
//! The binary comes from `scripts/setup-garage` (or `MAILPACK_GARAGE`). A missing binary is a
//! panic, never a skip: an off-site test that silently passes without a store proves nothing.
//! Servers listen on 127.0.0.1 only, live in a private directory under the temp dir, and are
//! killed and removed by Drop, which also runs when a test panics.

use crate::support::port_free;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use tokio::runtime::Runtime;

/// The Garage release the tests are written against (`scripts/setup-garage` builds it).
pub const GARAGE_VERSION: &str = "2.5.0";

/// Garage checks the SigV4 region against its `s3_region`; clients must use the same string.
pub const REGION: &str = "garage";

/// The bucket every fixture creates. Garage refuses names shorter than 3 characters.
pub const BUCKET: &str = "mailpack";

/// How long a start (or a restart of one cluster node) may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many lines of a node's log go into a panic message.
const LOG_TAIL_LINES: usize = 60;

const DIR_PREFIX: &str = "mailpack-garage-";

// ---------------------------------------------------------------------------------------------
// The binary

/// The garage binary: `$MAILPACK_GARAGE`, else where `scripts/setup-garage` installs it. Panics
/// when it is missing or is not 2.5.0.
pub fn garage_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = match std::env::var_os("MAILPACK_GARAGE") {
            Some(p) => PathBuf::from(p),
            None => default_bin(),
        };
        if !bin.is_file() {
            panic!(
                "no Garage binary at {}: run scripts/setup-garage (builds garage {GARAGE_VERSION} \
                 once, about 10 minutes) or set MAILPACK_GARAGE to a garage {GARAGE_VERSION} binary",
                bin.display()
            );
        }
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("running {} --version: {e}", bin.display()));
        let version = String::from_utf8_lossy(&out.stdout);
        // The CLI flags and the single-node bootstrap used here are those of this release.
        assert!(
            version.contains(GARAGE_VERSION),
            "{} is not garage {GARAGE_VERSION} (it says {:?}): run scripts/setup-garage",
            bin.display(),
            version.trim()
        );
        bin
    })
    .clone()
}

/// Mirrors the cache location of `scripts/setup-garage`.
fn default_bin() -> PathBuf {
    let tools = match std::env::var_os("MAILPACK_TOOLS") {
        Some(t) => PathBuf::from(t),
        None => {
            let cache = match std::env::var_os("XDG_CACHE_HOME") {
                Some(c) => PathBuf::from(c),
                None => {
                    let home = std::env::var_os("HOME")
                        .expect("HOME is not set: set MAILPACK_GARAGE to the garage binary");
                    PathBuf::from(home).join(".cache")
                }
            };
            cache.join("mailpack-tools")
        }
    };
    tools.join(format!("garage-{GARAGE_VERSION}/bin/garage"))
}

// ---------------------------------------------------------------------------------------------
// Single node

/// One Garage node with replication factor 1 whose layout, key and bucket Garage creates itself
/// at start (`server --single-node --default-bucket`).
pub struct GarageServer {
    node: Node,
    base: PathBuf,
    creds: Credentials,
    s3: S3Client,
}

impl GarageServer {
    /// Starts the node and returns once a signed ListObjectsV2 on the bucket answers.
    pub fn start_single() -> GarageServer {
        let bin = garage_bin();
        reap_stale_dirs();
        let base = new_base_dir();
        let creds = Credentials::random();
        let rpc_secret = random_hex(32);
        let rt = Arc::new(new_runtime());
        let mut node = Node::new(&base, "node", &bin);
        node.extra_env = vec![
            ("GARAGE_DEFAULT_ACCESS_KEY".into(), creds.access_key.clone()),
            ("GARAGE_DEFAULT_SECRET_KEY".into(), creds.secret_key.clone()),
            ("GARAGE_DEFAULT_BUCKET".into(), BUCKET.into()),
        ];
        node.server_args = vec!["--single-node".into(), "--default-bucket".into()];
        let mut last_err = String::new();
        // Ports are checked free before the start, but another process may take one before
        // Garage binds it; only that race is worth another try with new ports.
        for attempt in 1..=4 {
            node.ports = pick_ports(&[]);
            node.write_config(1, &rpc_secret);
            node.spawn();
            let probe = S3Client::probe(rt.clone(), &node.endpoint(), &creds);
            match wait_until(&mut [&mut node], || probe.ping()) {
                Ok(()) => {
                    let s3 = S3Client::with_runtime(rt, &node.endpoint(), &creds);
                    return GarageServer {
                        node,
                        base,
                        creds,
                        s3,
                    };
                }
                Err(e) => {
                    last_err = format!("attempt {attempt}: {e}");
                    node.kill();
                    if !node.lost_port_race() {
                        break;
                    }
                    node.clear_log();
                }
            }
        }
        let diag = node.diagnostics();
        let _ = std::fs::remove_dir_all(&base);
        panic!("Garage single node did not come up ({last_err})\n{diag}");
    }

    /// `http://127.0.0.1:PORT`, the S3 API.
    pub fn endpoint(&self) -> String {
        self.node.endpoint()
    }

    /// `http://127.0.0.1:PORT`, the admin API (no admin token is configured: only `/health`
    /// and `/metrics` answer).
    pub fn admin_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.node.ports.admin)
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    pub fn access_key(&self) -> &str {
        &self.creds.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.creds.secret_key
    }

    pub fn region(&self) -> &str {
        REGION
    }

    /// The variables a `mailpack` child process reads its S3 credentials and endpoint from.
    pub fn env(&self) -> Vec<(String, String)> {
        self.creds.env(&self.endpoint())
    }

    /// `s3://BUCKET/PREFIX`, the form mailpack's `--to` and `--archive-dir` take.
    pub fn url(&self, prefix: &str) -> String {
        s3_url(prefix)
    }

    pub fn s3(&self) -> &S3Client {
        &self.s3
    }

    pub fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        self.s3.list(prefix)
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.s3.get(key)
    }

    pub fn get_opt(&self, key: &str) -> Option<Vec<u8>> {
        self.s3.get_opt(key)
    }

    pub fn put(&self, key: &str, bytes: &[u8]) {
        self.s3.put(key, bytes)
    }

    pub fn delete(&self, key: &str) {
        self.s3.delete(key)
    }

    pub fn copy(&self, from: &str, to: &str) {
        self.s3.copy(from, to)
    }

    /// Runs the garage CLI against this node (`garage -c <config> ARGS`); returns stdout and
    /// panics with stderr and the log on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.node
            .cli(args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.node.diagnostics()))
    }

    /// The node's private directory (config, metadata, data, log).
    pub fn dir(&self) -> &Path {
        &self.node.dir
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.node.log()
    }
}

impl Drop for GarageServer {
    fn drop(&mut self) {
        self.node.kill();
        remove_base_dir(&self.base);
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster

/// Several Garage nodes on loopback with replication factor 3 (default consistency: reads and
/// writes need 2 of 3 nodes), set up the way an admin does it: start every node, connect them,
/// assign and apply a layout, import a key, create the bucket and allow the key on it.
pub struct GarageCluster {
    nodes: Vec<Node>,
    base: PathBuf,
    creds: Credentials,
    clients: Vec<S3Client>,
    rt: Arc<Runtime>,
}

impl GarageCluster {
    /// Starts `n` nodes (at least 3: replication factor 3 needs three nodes to apply a layout)
    /// and returns once every node answers a signed ListObjectsV2 on the bucket.
    pub fn start(n: usize) -> GarageCluster {
        assert!(
            n >= 3,
            "replication factor 3 needs at least 3 nodes, asked for {n}"
        );
        let bin = garage_bin();
        reap_stale_dirs();
        let base = new_base_dir();
        let creds = Credentials::random();
        let rpc_secret = random_hex(32);
        let rt = Arc::new(new_runtime());
        let mut cluster = GarageCluster {
            nodes: (0..n)
                .map(|i| Node::new(&base, &format!("node{i}"), &bin))
                .collect(),
            base,
            creds,
            clients: Vec::new(),
            rt,
        };
        // From here on a panic drops `cluster`, which kills whatever was started.
        for i in 0..n {
            cluster.launch_new(i, &rpc_secret);
        }
        cluster.setup_layout_key_bucket();
        cluster.clients = cluster
            .nodes
            .iter()
            .map(|node| {
                S3Client::with_runtime(cluster.rt.clone(), &node.endpoint(), &cluster.creds)
            })
            .collect();
        for i in 0..n {
            cluster.wait_s3(i);
        }
        cluster.wait_connected();
        cluster
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Kills node `i` with SIGKILL, as a crash or a pulled plug would, and waits for it to die.
    /// Its directory and ports are kept for `start_node`.
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Restarts node `i` with its old directory, ports and identity, and returns once it
    /// answers a signed ListObjectsV2 itself and every running node is connected to every
    /// other one.
    ///
    /// What it missed while down is not copied to it now, as in a real cluster: GETs through
    /// any node are right (quorum reads merge the replicas), but ListObjects filters deleted
    /// objects out on each replica before merging, so an object deleted while node `i` was down
    /// is listed again through node `i` (and through others whose quorum includes it) until
    /// Garage's anti-entropy sync, every 10 minutes. A test that asserts on listings after an
    /// outage runs `cli(j, &["repair", "--all-nodes", "--yes", "tables"])` first; that sync
    /// runs in the background (about 0.1 s for a test's few objects), so poll for the result.
    pub fn start_node(&mut self, i: usize) {
        assert!(!self.is_up(i), "node {i} is already running");
        let node = &self.nodes[i];
        for port in [node.ports.rpc, node.ports.s3, node.ports.admin] {
            assert!(
                port_free(port),
                "cannot restart Garage node {i}: its port {port} was taken by another process"
            );
        }
        self.nodes[i].spawn();
        self.wait_s3(i);
        self.wait_connected();
    }

    /// Whether node `i`'s process is running (not whether the cluster considers it healthy).
    pub fn is_up(&mut self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// The S3 endpoint of the first node that is running: node 0 unless it was stopped.
    pub fn endpoint(&self) -> String {
        self.nodes[self.up_index()].endpoint()
    }

    /// The S3 endpoint of node `i`, running or not.
    pub fn endpoint_of(&self, i: usize) -> String {
        self.nodes[i].endpoint()
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    pub fn access_key(&self) -> &str {
        &self.creds.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.creds.secret_key
    }

    pub fn region(&self) -> &str {
        REGION
    }

    /// The variables a `mailpack` child process needs, pointing at `endpoint()`.
    pub fn env(&self) -> Vec<(String, String)> {
        self.creds.env(&self.endpoint())
    }

    /// Like `env`, pointing at node `i`.
    pub fn env_of(&self, i: usize) -> Vec<(String, String)> {
        self.creds.env(&self.endpoint_of(i))
    }

    /// `s3://BUCKET/PREFIX`, the form mailpack's `--to` and `--archive-dir` take.
    pub fn url(&self, prefix: &str) -> String {
        s3_url(prefix)
    }

    /// The client of the node `endpoint()` names.
    pub fn s3(&self) -> &S3Client {
        &self.clients[self.up_index()]
    }

    /// The client of node `i`, running or not.
    pub fn s3_of(&self, i: usize) -> &S3Client {
        &self.clients[i]
    }

    pub fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        self.s3().list(prefix)
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.s3().get(key)
    }

    pub fn get_opt(&self, key: &str) -> Option<Vec<u8>> {
        self.s3().get_opt(key)
    }

    pub fn put(&self, key: &str, bytes: &[u8]) {
        self.s3().put(key, bytes)
    }

    pub fn delete(&self, key: &str) {
        self.s3().delete(key)
    }

    pub fn copy(&self, from: &str, to: &str) {
        self.s3().copy(from, to)
    }

    /// Runs the garage CLI through node `i` (`garage -c <its config> ARGS`); returns stdout and
    /// panics with stderr and the logs on failure.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        self.nodes[i]
            .cli(args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()))
    }

    /// Node `i`'s private directory.
    pub fn dir_of(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }

    /// Everything node `i` logged so far, over all its runs.
    pub fn log_of(&self, i: usize) -> String {
        self.nodes[i].log()
    }

    // -- internals ---------------------------------------------------------------------------

    fn up_index(&self) -> usize {
        // Only our own kill clears `child`; a node that crashed by itself still counts as up
        // here (finding out needs `&mut` for try_wait), and shows in the next request's error.
        self.nodes
            .iter()
            .position(|n| n.child.is_some())
            .expect("every Garage node of the cluster is stopped")
    }

    /// Starts node `i` for the first time, retrying with new ports if one was taken.
    fn launch_new(&mut self, i: usize, rpc_secret: &str) {
        let taken: Vec<u16> = self.nodes[..i]
            .iter()
            .flat_map(|n| [n.ports.rpc, n.ports.s3, n.ports.admin])
            .collect();
        let mut last_err = String::new();
        for attempt in 1..=4 {
            let node = &mut self.nodes[i];
            node.ports = pick_ports(&taken);
            node.write_config(3, rpc_secret);
            node.spawn();
            // The node key is written at start; once `node id` reads it and the S3 port
            // accepts connections, the node is up (it cannot answer S3 before the layout).
            let cfg = node.config.clone();
            let bin = node.bin.clone();
            let s3 = node.ports.s3;
            let mut id = String::new();
            let res = wait_until(&mut [&mut *node], || {
                let out = Command::new(&bin)
                    .arg("-c")
                    .arg(&cfg)
                    .args(["node", "id", "-q"])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("running garage node id: {e}"))?;
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
                }
                std::net::TcpStream::connect(("127.0.0.1", s3))
                    .map_err(|e| format!("S3 port {s3}: {e}"))?;
                id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                Ok(())
            });
            match res {
                Ok(()) => {
                    node.id = id;
                    return;
                }
                Err(e) => {
                    last_err = format!("attempt {attempt}: {e}");
                    node.kill();
                    if !node.lost_port_race() {
                        break;
                    }
                    node.clear_log();
                }
            }
        }
        panic!(
            "Garage cluster node {i} did not start ({last_err})\n{}",
            self.nodes[i].diagnostics()
        );
    }

    fn setup_layout_key_bucket(&mut self) {
        // Node 0 learns the others; Garage then tells every node about every other one.
        for i in 1..self.nodes.len() {
            let other = self.nodes[i].id.clone();
            self.retry_cli(0, &["node", "connect", &other], "node connect");
        }
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", "1G"];
        // `node id` prints `<64 hex>@<addr>`; layout commands take the id (or a prefix).
        let ids: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.id.split('@').next().unwrap_or(&n.id).to_string())
            .collect();
        assign.extend(ids.iter().map(String::as_str));
        self.retry_cli(0, &assign, "layout assign");
        self.retry_cli(0, &["layout", "apply", "--version", "1"], "layout apply");
        let key = self.creds.access_key.clone();
        let secret = self.creds.secret_key.clone();
        // A key with an id chosen here, so the test knows it without parsing CLI output.
        self.retry_cli(
            0,
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "mailpack-test",
                &key,
                &secret,
            ],
            "key import",
        );
        self.retry_cli(0, &["bucket", "create", BUCKET], "bucket create");
        self.retry_cli(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", &key,
            ],
            "bucket allow",
        );
    }

    /// Runs a setup command, retrying while the cluster is still converging (a new layout
    /// reaches the other nodes a moment after `apply`); a retry of a command that did succeed
    /// the first time reports "already exists", which counts as done.
    fn retry_cli(&self, i: usize, args: &[&str], what: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.nodes[i].cli(args) {
                Ok(_) => return,
                Err(e) if tries > 1 && e.contains("already exist") => return,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!(
                    "Garage cluster setup failed at {what} after {tries} tries: {e}\n{}",
                    self.diagnostics()
                ),
            }
        }
    }

    fn wait_s3(&mut self, i: usize) {
        let probe = S3Client::probe(self.rt.clone(), &self.nodes[i].endpoint(), &self.creds);
        if let Err(e) = wait_until(&mut [&mut self.nodes[i]], || probe.ping()) {
            panic!(
                "Garage cluster node {i} does not answer S3 requests: {e}\n{}",
                self.diagnostics()
            );
        }
    }

    /// Waits until every running node has a connection to every other running node.
    ///
    /// A node answers S3 as soon as it reaches a quorum (itself and one peer), but a write is
    /// only sent to the nodes it is connected to, and the one it misses stays stale until
    /// Garage's anti-entropy sync, every 10 minutes. For a delete that matters: ListObjects
    /// filters out deleted objects on each replica before merging the answers, so a replica
    /// without the delete marker keeps listing the object (a GET is right: it merges first).
    /// Waiting here keeps such surprises to the nodes a test stops on purpose.
    fn wait_connected(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_up(i)).collect();
        let want = running.len() as u64;
        let deadline = Instant::now() + START_TIMEOUT;
        for &i in &running {
            loop {
                let seen = self.nodes[i]
                    .cli(&["json-api", "GetClusterHealth"])
                    .and_then(|out| {
                        let v: serde_json::Value = serde_json::from_str(&out)
                            .map_err(|e| format!("GetClusterHealth answer {out:?}: {e}"))?;
                        v["storageNodesUp"]
                            .as_u64()
                            .ok_or_else(|| format!("no storageNodesUp in {out}"))
                    });
                match seen {
                    Ok(up) if up >= want => break,
                    _ if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    other => panic!(
                        "Garage node {i} is not connected to all {want} running nodes after \
                         {START_TIMEOUT:?} ({other:?})\n{}",
                        self.diagnostics()
                    ),
                }
            }
        }
    }

    fn diagnostics(&self) -> String {
        self.nodes
            .iter()
            .map(Node::diagnostics)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        remove_base_dir(&self.base);
    }
}

// ---------------------------------------------------------------------------------------------
// Synchronous S3 client

/// A blocking S3 client for one endpoint and the fixture's bucket, for tests that read, plant,
/// replace or remove objects behind mailpack's back. Every failure is a panic naming the call.
/// Synchronous only: it runs its own runtime, which tokio forbids inside another one.
pub struct S3Client {
    rt: Arc<Runtime>,
    store: AmazonS3,
    endpoint: String,
}

impl S3Client {
    /// A client with its own runtime, for a bucket that is not one of these fixtures'.
    pub fn new(endpoint: &str, bucket: &str, access_key: &str, secret_key: &str) -> S3Client {
        let rt = Arc::new(new_runtime());
        let store = build_store(endpoint, bucket, access_key, secret_key, false);
        S3Client {
            rt,
            store,
            endpoint: endpoint.into(),
        }
    }

    fn with_runtime(rt: Arc<Runtime>, endpoint: &str, creds: &Credentials) -> S3Client {
        let store = build_store(
            endpoint,
            BUCKET,
            &creds.access_key,
            &creds.secret_key,
            false,
        );
        S3Client {
            rt,
            store,
            endpoint: endpoint.into(),
        }
    }

    /// A client that fails fast, for polling a server that is still starting.
    fn probe(rt: Arc<Runtime>, endpoint: &str, creds: &Credentials) -> S3Client {
        let store = build_store(endpoint, BUCKET, &creds.access_key, &creds.secret_key, true);
        S3Client {
            rt,
            store,
            endpoint: endpoint.into(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The underlying store, for a test that needs more than these calls (ranged reads,
    /// multipart); run its futures with `block_on`.
    pub fn store(&self) -> &AmazonS3 {
        &self.store
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Every object under `prefix` (recursively), sorted by key, with its size. `prefix` is
    /// whole path segments, as in object_store: "a/b" lists "a/b/…", not "a/bc". "" lists all.
    pub fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        let p = (!prefix.is_empty()).then(|| object_path(prefix));
        let metas: Vec<_> = self
            .rt
            .block_on(self.store.list(p.as_ref()).try_collect())
            .unwrap_or_else(|e| panic!("S3 list {prefix:?} at {}: {e}", self.endpoint));
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        out.sort();
        out
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.get_opt(key)
            .unwrap_or_else(|| panic!("S3 get {key:?} at {}: no such object", self.endpoint))
    }

    /// `None` when the object does not exist; any other failure panics.
    pub fn get_opt(&self, key: &str) -> Option<Vec<u8>> {
        let path = object_path(key);
        let res = self.rt.block_on(async {
            let r = self.store.get(&path).await?;
            r.bytes().await
        });
        match res {
            Ok(b) => Some(b.to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("S3 get {key:?} at {}: {e}", self.endpoint),
        }
    }

    pub fn put(&self, key: &str, bytes: &[u8]) {
        let path = object_path(key);
        let payload = PutPayload::from(bytes.to_vec());
        self.rt
            .block_on(self.store.put(&path, payload))
            .unwrap_or_else(|e| panic!("S3 put {key:?} at {}: {e}", self.endpoint));
    }

    /// Deleting a missing object succeeds, as in S3.
    pub fn delete(&self, key: &str) {
        let path = object_path(key);
        self.rt
            .block_on(self.store.delete(&path))
            .unwrap_or_else(|e| panic!("S3 delete {key:?} at {}: {e}", self.endpoint));
    }

    /// Server-side copy; overwrites `to`.
    pub fn copy(&self, from: &str, to: &str) {
        let (f, t) = (object_path(from), object_path(to));
        self.rt
            .block_on(self.store.copy(&f, &t))
            .unwrap_or_else(|e| panic!("S3 copy {from:?} to {to:?} at {}: {e}", self.endpoint));
    }

    /// One signed ListObjectsV2 of at most one key.
    fn ping(&self) -> Result<(), String> {
        self.rt
            .block_on(self.store.list_with_delimiter(None))
            .map(|_| ())
            .map_err(|e| format!("ListObjectsV2 at {}: {e}", self.endpoint))
    }
}

fn build_store(
    endpoint: &str,
    bucket: &str,
    access_key: &str,
    secret_key: &str,
    fail_fast: bool,
) -> AmazonS3 {
    // Tampering helpers ride out a short hiccup (a cluster re-electing after a node was
    // killed) but fail a test within seconds rather than object_store's default 3 minutes.
    let (retry, timeout) = if fail_fast {
        (
            RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            },
            Duration::from_secs(2),
        )
    } else {
        (
            RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 5,
                retry_timeout: Duration::from_secs(15),
            },
            Duration::from_secs(10),
        )
    };
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_access_key_id(access_key)
        .with_secret_access_key(secret_key)
        .with_region(REGION)
        .with_retry(retry)
        // with_client_options replaces all client options, including the builder's own
        // with_allow_http: allow plain http here, or every request fails with "builder error".
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_timeout(timeout)
                .with_connect_timeout(Duration::from_secs(2)),
        )
        .build()
        .unwrap_or_else(|e| panic!("building an S3 client for {endpoint}: {e}"))
}

fn object_path(key: &str) -> ObjectPath {
    ObjectPath::parse(key).unwrap_or_else(|e| panic!("{key:?} is not a valid object key: {e}"))
}

/// object_store is async; the tests are not. One current-thread runtime per fixture keeps the
/// connection pool on the runtime that drives it and spawns no threads.
fn new_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("building a tokio runtime for the S3 client: {e}"))
}

fn s3_url(prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("s3://{BUCKET}")
    } else {
        format!("s3://{BUCKET}/{prefix}")
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

struct Credentials {
    access_key: String,
    secret_key: String,
}

impl Credentials {
    /// Shaped like keys Garage generates (`GK` + 24 hex, 64 hex), so nothing in mailpack can
    /// get away with assumptions a real Garage key would break.
    fn random() -> Credentials {
        Credentials {
            access_key: format!("GK{}", random_hex(12)),
            secret_key: random_hex(32),
        }
    }

    fn env(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_ENDPOINT_URL", endpoint),
            // object_store refuses http:// endpoints unless told otherwise.
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap_or_else(|e| panic!("reading /dev/urandom: {e}"));
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// One node process

#[derive(Clone, Copy, Default)]
struct Ports {
    rpc: u16,
    s3: u16,
    admin: u16,
}

struct Node {
    name: String,
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    ports: Ports,
    /// `<64 hex node id>@127.0.0.1:<rpc port>`, once known.
    id: String,
    server_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    fn new(base: &Path, name: &str, bin: &Path) -> Node {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Node {
            name: name.into(),
            bin: bin.into(),
            config: dir.join("garage.toml"),
            dir,
            ports: Ports::default(),
            id: String::new(),
            server_args: Vec::new(),
            extra_env: Vec::new(),
            child: None,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    fn write_config(&self, replication_factor: u32, rpc_secret: &str) {
        let d = self.dir.display();
        let Ports { rpc, s3, admin } = self.ports;
        // sqlite: lmdb maps a large file per node, and sqlite survives the SIGKILLs of the
        // fault tests. No root_domain: clients use path-style requests only.
        let config = format!(
            "metadata_dir = \"{d}/meta\"\n\
             data_dir = \"{d}/data\"\n\
             db_engine = \"sqlite\"\n\
             replication_factor = {replication_factor}\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{rpc_secret}\"\n\
             \n\
             [s3_api]\n\
             s3_region = \"{REGION}\"\n\
             api_bind_addr = \"127.0.0.1:{s3}\"\n\
             \n\
             [admin]\n\
             api_bind_addr = \"127.0.0.1:{admin}\"\n"
        );
        std::fs::write(&self.config, config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.config.display()));
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("garage.log")
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "Garage {} is already running",
            self.name
        );
        // Appended, so a restarted node's log keeps what happened before the restart.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path().display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup of the log file: {e}"));
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c")
            .arg(&self.config)
            .arg("server")
            .args(&self.server_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            // The tests' own RUST_LOG (e.g. mailpack=debug) must not silence Garage's log.
            .env("RUST_LOG", "netapp=info,garage=info")
            // Garage colours its log even into a file; panic messages quote it.
            .env("NO_COLOR", "1")
            .env_remove("GARAGE_RPC_HOST")
            .env_remove("GARAGE_RPC_SECRET")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        // For `reap_stale_dirs` after a test process that was killed before its Drop ran.
        let _ = std::fs::write(self.dir.join("garage.pid"), child.id().to_string());
        self.child = Some(child);
    }

    /// SIGKILL and reap; a no-op when not running.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                // It died on its own: reap it so a restart is possible.
                self.kill();
                false
            }
            None => false,
        }
    }

    /// Garage does not exit when its S3 or admin port is taken: it logs the error and keeps
    /// running without that API, so the log is the only sign.
    fn lost_port_race(&self) -> bool {
        self.log().contains("Address already in use")
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("GARAGE_RPC_HOST")
            .env_remove("GARAGE_RPC_SECRET")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running garage {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {} ({}) failed with {}: {}{}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        }
    }

    /// Before a retry with new ports, so the next attempt's failure is judged on its own log.
    fn clear_log(&self) {
        let _ = std::fs::write(self.log_path(), b"");
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// For panic messages: where the node lives and the end of its log.
    fn diagnostics(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!(
            "--- Garage {} in {} (s3 {}, rpc {}, admin {}), last lines of its log:\n{tail}",
            self.name,
            self.dir.display(),
            self.ports.s3,
            self.ports.rpc,
            self.ports.admin
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `ready` until it succeeds or `START_TIMEOUT` passes; fails early when one of `nodes`
/// exits or could not bind a port, since it will not become ready then.
fn wait_until(
    nodes: &mut [&mut Node],
    mut ready: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        for node in nodes.iter_mut() {
            if let Some(Ok(Some(st))) = node.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("Garage {} exited with {st}", node.name));
            }
            if node.lost_port_race() {
                return Err(format!("Garage {}: a port is already in use", node.name));
            }
        }
        let err = match ready() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!("not ready after {START_TIMEOUT:?}: {err}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and directories

/// Three free ports below the kernel's ephemeral range (32768+), so an outgoing connection
/// elsewhere in the test run cannot grab one between this check and Garage's bind, and a
/// restarted node can bind its old ports again. Port 0 would not do: Garage must be told its
/// ports in the config, and a node's RPC port must stay the same across restarts.
fn pick_ports(taken: &[u16]) -> Ports {
    // 20000..32000, the range the Cyrus fixture also uses; both check before use.
    let chosen = crate::support::pick_free_ports(3, 20000..32000, taken);
    Ports {
        rpc: chosen[0],
        s3: chosen[1],
        admin: chosen[2],
    }
}

fn new_base_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

fn remove_base_dir(base: &Path) {
    if std::env::var_os("MAILPACK_KEEP_GARAGE").is_some() {
        eprintln!("keeping Garage test directory {}", base.display());
        return;
    }
    let _ = std::fs::remove_dir_all(base);
}

/// Servers and directories left by a test process that was killed (so no Drop ran): kill the
/// servers and remove the directories. Once per test process.
fn reap_stale_dirs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for base in crate::support::dirs_of_dead_test_processes(DIR_PREFIX) {
            for node in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                let Ok(pid) = std::fs::read_to_string(node.path().join("garage.pid")) else {
                    continue;
                };
                let Ok(pid) = pid.trim().parse::<i32>() else {
                    continue;
                };
                // Only if that pid still is this node's garage, not a recycled pid.
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let config = node.path().join("garage.toml");
                if String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy()) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = std::fs::remove_dir_all(&base);
        }
    });
}
