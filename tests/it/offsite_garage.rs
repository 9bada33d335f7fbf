//! The Garage fixture itself (support/garage.rs): a single node and a three-node cluster start,
//! take signed S3 requests, and the cluster keeps serving with one node down.

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
fn single_node_wrong_secret_is_refused() {
    let g = GarageServer::start_single();
    let wrong = "0".repeat(64);
    let s3 = S3Client::new(&g.endpoint(), g.bucket(), g.access_key(), &wrong);
    let err = s3
        .block_on(object_store::ObjectStore::list_with_delimiter(
            s3.store(),
            None,
        ))
        .expect_err("a wrong secret must not list the bucket");
    assert!(!err.to_string().is_empty());
}

#[test]
fn cluster_of_three_serves_with_one_node_down() {
    let mut c = GarageCluster::start(3);
    assert_eq!(c.len(), 3);
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
    assert_eq!(c.list("host1").len(), 2);

    c.start_node(0);
    assert!(c.is_up(0));
    assert_eq!(c.endpoint(), c.endpoint_of(0));
    // Node 0 missed this write; a quorum read through it still finds it.
    assert_eq!(
        c.s3_of(0).get("host1/alice/seg-2"),
        b"written with node 0 down"
    );
    c.delete("host1/alice/seg-1");
    assert_eq!(c.s3_of(2).get_opt("host1/alice/seg-1"), None);
}
