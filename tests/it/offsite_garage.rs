//! The Garage fixture itself (support/garage.rs): a single node and a three-node cluster start,
//! take signed S3 requests, and the cluster keeps serving with one node down.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::support::garage::{GarageCluster, GarageServer, S3Client};

#[test]
fn single_node_put_get_list_copy_delete() {
    let g = GarageServer::start_single();
    assert!(
        g.endpoint().starts_with("http://127.0.0.1:"),
        "{}",
        g.endpoint()
    );
    assert_eq!(g.bucket(), "mailpack");
    assert_eq!(g.region(), "garage");
    assert!(g.list("").is_empty(), "a new bucket is empty");

    g.put("alice/seg/0001", b"first segment");
    g.put("alice/manifest", b"{}");
    g.put("alicebob/other", b"x");
    assert_eq!(g.get("alice/seg/0001"), b"first segment");
    assert_eq!(
        g.list("alice"),
        vec![
            ("alice/manifest".to_string(), 2),
            ("alice/seg/0001".to_string(), 13),
        ],
        "a prefix is whole path segments"
    );
    assert_eq!(g.list("").len(), 3);

    // The tampering a test of the untrusted bucket needs: replace, replay an old copy, remove.
    g.copy("alice/seg/0001", "alice/seg/0002");
    g.put("alice/seg/0001", b"forged");
    assert_eq!(g.get("alice/seg/0001"), b"forged");
    assert_eq!(g.get("alice/seg/0002"), b"first segment");
    g.delete("alice/seg/0001");
    assert_eq!(g.get_opt("alice/seg/0001"), None);
    g.delete("alice/seg/0001");

    // What a mailpack child process gets is enough to reach the same bucket.
    let env: std::collections::HashMap<String, String> = g.env().into_iter().collect();
    assert_eq!(env["AWS_ENDPOINT_URL"], g.endpoint());
    assert_eq!(env["AWS_REGION"], "garage");
    assert_eq!(env["AWS_ALLOW_HTTP"], "true");
    assert!(env["AWS_ACCESS_KEY_ID"].starts_with("GK"));
    let other = S3Client::new(
        &env["AWS_ENDPOINT_URL"],
        g.bucket(),
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
    );
    assert_eq!(other.get("alice/seg/0002"), b"first segment");
    assert_eq!(g.url("alice/"), "s3://mailpack/alice");

    let dir = g.dir().to_path_buf();
    assert!(dir.exists());
    drop(g);
    assert!(!dir.exists(), "Drop removes the server's directory");
}

#[test]
fn single_node_admin_side_and_garage_quirks() {
    let g = GarageServer::start_single();
    assert_eq!(g.s3().endpoint(), g.endpoint());
    assert!(g.cli(&["bucket", "list"]).contains("mailpack"));
    assert!(g
        .log()
        .contains("S3 API server listening on http://127.0.0.1:"));
    assert!(
        http_get(&g.admin_endpoint(), "/health").starts_with("HTTP/1.1 200"),
        "the admin API answers /health without a token"
    );

    let wrong = "0".repeat(64);
    assert_ne!(g.secret_key(), wrong);
    let intruder = S3Client::new(&g.endpoint(), g.bucket(), g.access_key(), &wrong);
    intruder
        .block_on(intruder.store().list_with_delimiter(None))
        .expect_err("a wrong secret must not list the bucket");

    // Garage 2.5.0 ignores If-None-Match on PutObject: a create-only put overwrites. A store
    // the off-site code must not rely on for correctness (issue 16).
    let path = ObjectPath::from("probe");
    g.put("probe", b"first");
    let second = g.s3().block_on(g.s3().store().put_opts(
        &path,
        PutPayload::from_static(b"second"),
        PutOptions::from(PutMode::Create),
    ));
    assert!(
        second.is_ok(),
        "Garage now honours If-None-Match: {second:?}"
    );
    assert_eq!(g.get("probe"), b"second");
}

/// A bare HTTP/1.1 GET; returns the whole response.
fn http_get(endpoint: &str, path: &str) -> String {
    let addr = endpoint
        .strip_prefix("http://")
        .expect("an http:// endpoint");
    let mut s = TcpStream::connect(addr).expect("connecting to the admin API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .expect("reading the admin API's answer");
    out
}

#[test]
fn cluster_of_three_serves_with_one_node_down() {
    let mut c = GarageCluster::start(3);
    assert_eq!(c.node_count(), 3);
    c.put("host1/alice/seg-1", b"written with all nodes up");
    for i in 0..3 {
        assert_eq!(
            c.s3_of(i).get("host1/alice/seg-1"),
            b"written with all nodes up",
            "read through node {i}"
        );
    }

    c.stop_node(0);
    assert!(!c.is_up(0));
    assert_eq!(
        c.endpoint(),
        c.endpoint_of(1),
        "endpoint() moves to a node that is up"
    );
    assert_eq!(c.env()[3].1, c.endpoint_of(1));
    assert_eq!(c.get("host1/alice/seg-1"), b"written with all nodes up");
    c.put("host1/alice/seg-2", b"written with node 0 down");
    assert_eq!(
        c.s3_of(2).get("host1/alice/seg-2"),
        b"written with node 0 down"
    );
    c.delete("host1/alice/seg-1");
    assert_eq!(c.s3_of(2).get_opt("host1/alice/seg-1"), None);

    c.start_node(0);
    assert!(c.is_up(0));
    assert_eq!(c.endpoint(), c.endpoint_of(0));
    // Node 0 missed the put and the delete; quorum reads through it still see both.
    for i in 0..3 {
        assert_eq!(
            c.s3_of(i).get("host1/alice/seg-2"),
            b"written with node 0 down",
            "read through node {i}"
        );
        assert_eq!(c.s3_of(i).get_opt("host1/alice/seg-1"), None, "node {i}");
    }
    // Listings can still show seg-1 (see GarageCluster::start_node) until a table sync.
    c.cli(1, &["repair", "--all-nodes", "--yes", "tables"]);
    let want = vec![("host1/alice/seg-2".to_string(), 24)];
    let t = Instant::now();
    while (0..3).any(|i| c.s3_of(i).list("host1") != want) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "listings after `repair tables`: {:?}",
            (0..3).map(|i| c.s3_of(i).list("host1")).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // With every node connected again, writes through the restarted node reach all of them.
    c.copy("host1/alice/seg-2", "host1/alice/seg-3");
    c.delete("host1/alice/seg-2");
    // Reads are quorum reads at once; a listing may lag while the delete reaches the third
    // replica (seen in CI: seg-2 listed through node 0 just after the delete), so it is waited
    // for, boundedly.
    assert_eq!(c.get_opt("host1/alice/seg-2"), None);
    let want = vec![("host1/alice/seg-3".to_string(), 24)];
    let t = Instant::now();
    while (0..3).any(|i| c.s3_of(i).list("host1") != want) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "listings after the delete: {:?}",
            (0..3).map(|i| c.s3_of(i).list("host1")).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.list("").len(), 1);

    // The restarted node is the same member (same id, dirs and ports), not a fourth one.
    let status = c.cli(1, &["status"]);
    assert_eq!(status.matches("127.0.0.1:").count(), 3, "{status}");
    assert!(!status.contains("FAILED NODES"), "{status}");
    assert!(c.dir_of(0).join("meta").is_dir());
    assert_eq!(c.log_of(0).matches("S3 API server listening").count(), 2);

    let env: std::collections::HashMap<String, String> = c.env_of(2).into_iter().collect();
    assert_eq!(env["AWS_ENDPOINT_URL"], c.endpoint_of(2));
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], c.secret_key());
    assert_eq!(env["AWS_REGION"], c.region());
    assert_eq!(c.url("host1"), "s3://mailpack/host1");
    let direct = S3Client::new(
        &c.endpoint_of(1),
        c.bucket(),
        c.access_key(),
        c.secret_key(),
    );
    assert_eq!(direct.get("host1/alice/seg-3"), b"written with node 0 down");
}
