//! A node joining a cluster through real NATS servers: the node list is
//! recorded by the first node, a node given another list refuses to start
//! (saying why), a node that finds no NATS fails within its timeout, and
//! `/readyz` and `/metrics` show the node's view.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{call, exchange, start};
use rookery_cluster::testing::Nats;

fn cluster_flags<'a>(nats: &'a str, node: &'a str, nodes: &'a str) -> Vec<&'a str> {
    vec![
        "--nats",
        nats,
        "--node-id",
        node,
        "--cluster-nodes",
        nodes,
        "--cluster-name",
        "e2e",
        "--cluster-kv-replicas",
        "1",
    ]
}

/// Runs the binary to its exit (it must not start); its exit code and
/// standard error.
fn refused_start(args: &[&str], within: Duration) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let data = dir.path().join("data");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", data.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn nodes_join_and_a_changed_node_list_is_refused() {
    let nats = Nats::start(1);
    let url = nats.urls()[0].clone();
    let one = start(&cluster_flags(&url, "1", "1,2,3"));
    let (s, v) = call(one.port, "GET", "/readyz", None, None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cluster"]["node"], 1, "{v}");
    assert_eq!(v["cluster"]["nodes"], serde_json::json!([1, 2, 3]));
    assert_eq!(v["cluster"]["nats"], "connected");
    let metrics = exchange(
        one.port,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(
        metrics.contains("rookery_cluster_nats_connected 1"),
        "{metrics}"
    );
    // The same set in another order joins.
    let two = start(&cluster_flags(&url, "2", "3,2,1"));
    assert_eq!(call(two.port, "GET", "/readyz", None, None).0, 200);
    // Another set is refused before anything serves.
    let (code, err) = refused_start(&cluster_flags(&url, "2", "1,2"), Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("created with nodes [1,2,3]") && err.contains("started with [1,2]"),
        "{err}"
    );
    // A single node has no cluster in its view.
    let single = start(&[]);
    let (_, v) = call(single.port, "GET", "/readyz", None, None);
    assert!(v.get("cluster").is_none(), "{v}");
}

#[test]
fn a_node_that_finds_no_nats_does_not_start() {
    let nowhere = format!("nats://127.0.0.1:{}", common::free_port());
    let mut args = cluster_flags(&nowhere, "1", "1");
    args.extend(["--cluster-connect-timeout-ms", "1000"]);
    let (code, err) = refused_start(&args, Duration::from_secs(10));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("connecting to NATS"), "{err}");
    // Flags that need --nats, without it: a configuration error (exit 2).
    let (code, err) = refused_start(&["--node-id", "1"], Duration::from_secs(10));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--nats"), "{err}");
}
