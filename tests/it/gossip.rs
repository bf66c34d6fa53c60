//! Gossip membership across real processes: a node that moved its internode
//! port and joined through one seed is found by every peer, and the data
//! path follows the address gossip revealed (not the one in the config).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{ServerProcess, WAIT, free_ports, http_get, ok};

const SECRET: &str = "it-gossip-secret-0123456";

/// A config for node `me` (from 1) listing every node at `ports`.
fn write_config(dir: &Path, me: usize, ports: &[u16]) -> String {
    let mut toml = format!(
        "[node]\nname = \"node{me}\"\npeer_addr = \"127.0.0.1:{}\"\n[storage]\nengine = \"memory\"\n\
         [cluster]\nsecret = \"{SECRET}\"\nrequest_timeout_ms = 1000\n",
        ports[me - 1]
    );
    for (i, port) in ports.iter().enumerate() {
        toml.push_str(&format!(
            "[[cluster.nodes]]\nname = \"node{}\"\npeer_addr = \"127.0.0.1:{port}\"\n",
            i + 1
        ));
    }
    let path = dir.join(format!("node{me}.toml"));
    std::fs::write(&path, toml).expect("write a node config");
    path.display().to_string()
}

/// node3's entry in `node`'s `/v1/cluster`, once it is up and its client
/// addresses (published once its listeners are bound) arrived.
async fn node3_as_seen_by(node: &ServerProcess) -> Option<serde_json::Value> {
    let (status, _, body) = http_get(node.http_addr, "/v1/cluster").await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("/v1/cluster is JSON");
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == "node3" && m["up"] == true && !m["resp_addr"].is_null())
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_node_joining_through_one_seed_is_found_and_reached_by_every_peer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(4);
    let (listed, moved) = (&ports[..3], ports[3]);
    let node1 = ServerProcess::start(&["--config", &write_config(dir.path(), 1, listed)]);
    let node2 = ServerProcess::start(&["--config", &write_config(dir.path(), 2, listed)]);
    // node3 listens (TCP and UDP) on a port nobody's config knows, and knows
    // only node1's gossip address.
    let moved_addr = format!("127.0.0.1:{moved}");
    let seed = format!("127.0.0.1:{}", listed[0]);
    let node3 = ServerProcess::start(&[
        "--config",
        &write_config(dir.path(), 3, listed),
        "--peer-addr",
        &moved_addr,
        "--join",
        &seed,
    ]);

    let started = Instant::now();
    for (name, node) in [("node1", &node1), ("node2", &node2)] {
        loop {
            if let Some(seen) = node3_as_seen_by(node).await {
                assert_eq!(seen["peer_addr"], moved_addr.as_str(), "{name}: {seen}");
                assert_eq!(seen["gossip_addr"], moved_addr.as_str(), "{name}: {seen}");
                // Client addresses spread too, so `cluster status` on any
                // node tells where to point redis-cli at node3.
                assert_eq!(
                    seen["resp_addr"],
                    node3.resp_addr.to_string().as_str(),
                    "{name}: {seen}"
                );
                assert_eq!(
                    seen["http_addr"],
                    node3.http_addr.to_string().as_str(),
                    "{name}: {seen}"
                );
                assert_eq!(seen["layout_version"], 1, "{name}: {seen}");
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "{name} never saw node3 up at {moved_addr}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("node3 found by both peers in {:?}", started.elapsed());
    let myself = node3_as_seen_by(&node3)
        .await
        .expect("node3 sees itself up");
    assert_eq!(myself["gossip_addr"], moved_addr.as_str(), "{myself}");
    assert_eq!(
        myself["resp_addr"],
        node3.resp_addr.to_string().as_str(),
        "{myself}"
    );

    // Writes to all three replicas reach node3 at the gossiped address: its
    // configured address has no listener.
    let mut c1 = node1.conn().await;
    let mut c2 = node2.conn().await;
    assert_eq!(
        ok::<String>(&mut c1, &["KV.PUT", "k", "v", "W", "all"]).await,
        "OK"
    );
    let got: Option<String> = ok(&mut c2, &["KV.GET", "k", "R", "all"]).await;
    assert_eq!(got.as_deref(), Some("v"));
}
