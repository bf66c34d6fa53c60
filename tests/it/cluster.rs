//! A real 3-process cluster on loopback: any node coordinates, quorum
//! survives one dead node, `all` does not, and a peer without the cluster
//! secret moves no data. [`TestCluster`] is also the fault tests' harness:
//! kill, terminate, pause, wipe and restart nodes, and set a node's link and
//! clock faults through its debug endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringkv::net::{NetError, PeerConfig, Request, TcpTransport, Transport};

use crate::support::{RawConn, Reply, ServerProcess, WAIT, err, free_ports, http_post, ok};

const SECRET: &str = "it-cluster-secret-0123";

pub(crate) struct TestCluster {
    dir: tempfile::TempDir,
    peer_ports: Vec<u16>,
    nodes: Vec<Option<ServerProcess>>,
    /// `memory`, or `fjall` when a restarted node must keep its data.
    engine: &'static str,
    /// Extra `ringkv server` flags of every node.
    flags: Vec<&'static str>,
}

fn write_config(dir: &Path, me: usize, peer_ports: &[u16], engine: &str) -> String {
    let data_dir = dir.join(format!("node{}-data", me + 1));
    let mut toml = format!(
        "[node]\nname = \"node{}\"\npeer_addr = \"127.0.0.1:{}\"\n[storage]\nengine = \"{engine}\"\n\
         data_dir = {:?}\n[cluster]\nsecret = \"{SECRET}\"\nrequest_timeout_ms = 1000\naae_max_partitions_per_sec = 1000\n",
        me + 1,
        peer_ports[me],
        data_dir.display().to_string()
    );
    for (i, port) in peer_ports.iter().enumerate() {
        toml.push_str(&format!(
            "[[cluster.nodes]]\nname = \"node{}\"\npeer_addr = \"127.0.0.1:{port}\"\n",
            i + 1
        ));
    }
    let path = dir.join(format!("node{}.toml", me + 1));
    std::fs::write(&path, toml).expect("write a node config");
    path.display().to_string()
}

impl TestCluster {
    fn start(size: usize) -> TestCluster {
        Self::start_with_engine(size, "memory")
    }

    /// Starts `size` nodes with `engine` (`memory` or `fjall`), each with
    /// its own data directory, kept across [`TestCluster::restart`].
    pub(crate) fn start_with_engine(size: usize, engine: &'static str) -> TestCluster {
        Self::start_with_flags(size, engine, &[])
    }

    /// Like [`TestCluster::start_with_engine`], every node run with `flags`
    /// too (e.g. `--enable-fault-injection`).
    pub(crate) fn start_with_flags(
        size: usize,
        engine: &'static str,
        flags: &[&'static str],
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let peer_ports = free_ports(size);
        let mut cluster = TestCluster {
            dir,
            peer_ports,
            nodes: Vec::new(),
            engine,
            flags: flags.to_vec(),
        };
        for i in 0..size {
            let node = cluster.spawn(i);
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    fn spawn(&self, i: usize) -> ServerProcess {
        let config = write_config(self.dir.path(), i, &self.peer_ports, self.engine);
        let mut args = vec!["--config", &config];
        args.extend(&self.flags);
        ServerProcess::start(&args)
    }

    /// Whether node `i` runs (it may be paused).
    pub(crate) fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// SIGSTOP: the process freezes with its sockets open, as in a long GC
    /// pause or a VM stall; peers see it stop answering.
    pub(crate) fn pause(&self, i: usize) {
        self.node(i).signal("STOP");
    }

    /// SIGCONT after [`TestCluster::pause`].
    pub(crate) fn resume(&self, i: usize) {
        self.node(i).signal("CONT");
    }

    /// SIGTERM: a clean shutdown (final fsync); waits until it exited.
    pub(crate) fn terminate(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("node is running");
        let status = node.terminate();
        assert!(
            status.success(),
            "node{} exited with {status} after SIGTERM; stderr:\n{}",
            i + 1,
            node.stderr()
        );
    }

    /// Deletes the data directory (data and hints) of stopped node `i`: a
    /// replaced disk.
    pub(crate) fn wipe(&self, i: usize) {
        assert!(self.nodes[i].is_none(), "node{} still runs", i + 1);
        let data_dir = self.dir.path().join(format!("node{}-data", i + 1));
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir).expect("wipe the data dir");
        }
    }

    /// Replaces node `i`'s faults with `spec` (`POST /v1/debug/faults`,
    /// nodes started with `--enable-fault-injection`); panics unless 200.
    pub(crate) async fn set_faults(&self, i: usize, spec: &serde_json::Value) {
        let body = spec.to_string();
        let (status, _, reply) = http_post(self.node(i).http_addr, "/v1/debug/faults", &body).await;
        assert_eq!(status, 200, "node{} refused faults {body}: {reply}", i + 1);
    }

    pub(crate) fn node(&self, i: usize) -> &ServerProcess {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub(crate) fn kill(&mut self, i: usize) {
        self.nodes[i].take().expect("node is running").kill9();
    }

    pub(crate) fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node{} still runs", i + 1);
        self.nodes[i] = Some(self.spawn(i));
    }

    fn peer_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.peer_ports[i]))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_written_through_any_node_reads_back_through_every_node() {
    let cluster = TestCluster::start(3);
    for writer in 0..3 {
        let mut c = cluster.node(writer).conn().await;
        let key = format!("key-from-{writer}");
        assert_eq!(ok::<String>(&mut c, &["SET", &key, "v"]).await, "OK");
        for reader in 0..3 {
            let mut r = cluster.node(reader).conn().await;
            let got: Option<String> = ok(&mut r, &["GET", &key]).await;
            assert_eq!(
                got.as_deref(),
                Some("v"),
                "{key} read through node{}",
                reader + 1
            );
        }
    }
    // Every node holds a replica of every key with n = 3.
    let mut c = cluster.node(1).conn().await;
    let placement = ok::<redis::Value>(&mut c, &["KV.WHERE", "key-from-0"]).await;
    let text = format!("{placement:?}");
    for name in ["node1", "node2", "node3"] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
}

/// Back-to-back writes through two coordinators at `W one`: the second
/// starts only after the first was acknowledged, but its coordinator has not
/// seen the first yet (the first coordinator's link to it is delayed), so
/// only the clocks order them. A read at `R all` (`r + w > n`) must return
/// the second every time. With millisecond HLC timestamps both writes often
/// got the same millisecond, and the tie went to the first coordinator's
/// higher node id: the later write was lost on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_before_another_began_is_versioned_before_it() {
    const ROUNDS: usize = 200;
    let cluster = TestCluster::start_with_flags(3, "memory", &["--enable-fault-injection"]);
    cluster
        .set_faults(1, &serde_json::json!({ "delay_ms": { "node1": 50 } }))
        .await;
    let mut first = RawConn::connect(cluster.node(1).resp_addr).await;
    let mut second = RawConn::connect(cluster.node(0).resp_addr).await;
    let mut reader = RawConn::connect(cluster.node(2).resp_addr).await;
    let ok_reply = Reply::Simple("OK".into());
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let key = format!("rt-{round}");
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        assert_eq!(first.cmd(&["KV.PUT", &key, &a, "W", "one"]).await, ok_reply);
        assert_eq!(
            second.cmd(&["KV.PUT", &key, &b, "W", "one"]).await,
            ok_reply
        );
        let got = reader.cmd(&["KV.GET", &key, "R", "all"]).await;
        if got != Reply::bulk(&b) {
            lost.push(format!("{key}: {got:?}"));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {ROUNDS} later writes lost to the earlier one: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_node_down_quorum_works_and_all_fails_with_causes() {
    let mut cluster = TestCluster::start(3);
    cluster.kill(2);
    let mut c = cluster.node(0).conn().await;
    assert_eq!(ok::<String>(&mut c, &["SET", "k", "v"]).await, "OK");
    let mut other = cluster.node(1).conn().await;
    assert_eq!(ok::<String>(&mut other, &["GET", "k"]).await, "v");
    let e = err(&mut c, &["KV.PUT", "k", "w", "W", "all"]).await;
    assert!(e.starts_with("UNAVAILABLE"), "{e}");
    assert!(e.contains("needed 3 replicas, 2 answered"), "{e}");
    assert!(e.contains("node3: unreachable"), "names the cause: {e}");
    assert!(e.contains("may have been applied"), "{e}");
    let e = err(&mut c, &["KV.GET", "k", "R", "all"]).await;
    assert!(e.starts_with("UNAVAILABLE"), "{e}");
    assert!(e.contains("read needed 3 replicas, 2 answered"), "{e}");
    assert!(e.contains("node3: unreachable"), "names the cause: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_nodes_down_quorum_fails_cleanly_and_recovers_when_they_return() {
    let mut cluster = TestCluster::start(3);
    cluster.kill(1);
    cluster.kill(2);
    let mut c = cluster.node(0).conn().await;
    let e = err(&mut c, &["SET", "k", "v"]).await;
    assert!(
        e.starts_with("UNAVAILABLE") && e.contains("needed 2 replicas, 1 answered"),
        "{e}"
    );
    let e = err(&mut c, &["GET", "k"]).await;
    assert!(
        e.starts_with("UNAVAILABLE") && e.contains("read needed 2 replicas, 1 answered"),
        "{e}"
    );
    cluster.restart(1);
    // The coordinator reconnects after its backoff (at most 2 s).
    // NOTE: a value the failed SET did not write: that one may sit on node1.
    let deadline = Instant::now() + WAIT;
    loop {
        match redis::cmd("SET")
            .arg("k")
            .arg("v2")
            .query_async::<String>(&mut c)
            .await
        {
            Ok(reply) => {
                assert_eq!(reply, "OK");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("UNAVAILABLE"), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("quorum did not recover within 20 s: {e}"),
        }
    }
    let mut back = cluster.node(1).conn().await;
    assert_eq!(ok::<String>(&mut back, &["GET", "k"]).await, "v2");
    // The last one back: every replica answers again, at ALL through it.
    cluster.restart(2);
    let mut last = cluster.node(2).conn().await;
    let deadline = Instant::now() + WAIT;
    loop {
        match redis::cmd("KV.GET")
            .arg("k")
            .arg("R")
            .arg("all")
            .query_async::<Option<String>>(&mut last)
            .await
        {
            Ok(got) => {
                assert_eq!(got.as_deref(), Some("v2"));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("UNAVAILABLE"), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("R all did not recover within 20 s: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_cluster_secret_cannot_write() {
    let cluster = TestCluster::start(3);
    let mut config = PeerConfig::new("node2", "not-the-cluster-secret");
    config.request_timeout = Duration::from_secs(2);
    let intruder = TcpTransport::new(config);
    intruder.set_peer("node1", cluster.peer_addr(0));
    let write = Request::Write {
        keyspace: "default".into(),
        key: Bytes::from_static(b"stolen"),
        record: Bytes::from_static(b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01v"),
    };
    let result = intruder.call("node1", write).await;
    assert!(
        matches!(
            result,
            Err(NetError::Auth(_)) | Err(NetError::Unreachable(_))
        ),
        "{result:?}"
    );
    let mut c = cluster.node(0).conn().await;
    let got: Option<String> = ok(&mut c, &["KV.GET", "stolen", "R", "one"]).await;
    assert_eq!(got, None, "an unauthenticated peer wrote data");
    assert!(
        cluster
            .node(0)
            .wait_for_log("peer refused: authentication failed"),
        "the refused peer is not logged:\n{}",
        cluster.node(0).stderr()
    );
}

/// Polls `node`'s `/v1/cluster` until `peer` shows `up == want`; returns how long it took.
pub(crate) async fn wait_for_liveness(
    cluster: &TestCluster,
    node: usize,
    peer: &str,
    want: bool,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < WAIT {
        let (status, _, body) =
            crate::support::http_get(cluster.node(node).http_addr, "/v1/cluster").await;
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).expect("/v1/cluster is JSON");
        let up = view["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == peer))
            .and_then(|m| m["up"].as_bool());
        if up == Some(want) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{peer} never showed up={want} on node{}", node + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_seen_down_within_5_s_and_up_within_5_s_of_its_return() {
    let mut cluster = TestCluster::start(3);
    let (status, _, body) =
        crate::support::http_get(cluster.node(0).http_addr, "/v1/cluster").await;
    assert_eq!(status, 200);
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["layout_version"], 1);
    let owned: u64 = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["partitions_owned"].as_u64().unwrap())
        .sum();
    assert_eq!(owned, 1024, "{body}");
    let held: u64 = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["partitions_held"].as_u64().unwrap())
        .sum();
    assert_eq!(held, 3 * 1024, "n = 3 replicas of each partition: {body}");
    let ids: std::collections::HashSet<u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "distinct node ids: {body}");

    // Peers are down until gossip hears from them: see node3 up first, or
    // the wait for "down" below would pass without detecting anything.
    wait_for_liveness(&cluster, 0, "node3", true).await;
    wait_for_liveness(&cluster, 0, "node2", true).await;
    let info = info_cluster(&cluster, 0).await;
    for line in [
        "cluster_enabled:1",
        "cluster_nodes:3",
        "cluster_nodes_up:3",
        "layout_version:1",
        "partitions:1024",
    ] {
        assert!(
            info.contains(&format!("{line}\r\n")),
            "{line} missing: {info}"
        );
    }
    let table = status_table(&cluster, 0);
    for i in 0..3 {
        let node = cluster.node(i);
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("node{} ", i + 1)))
            .unwrap_or_else(|| panic!("node{} missing from:\n{table}", i + 1));
        // NOTE: a peer's client address arrives by gossip shortly after it
        // is seen up; its own node lists it at once.
        assert!(line.contains(" up "), "{line}");
        assert!(line.contains(&cluster.peer_addr(i).to_string()), "{line}");
        if i == 0 {
            assert!(line.contains(&node.resp_addr.to_string()), "{line}");
        }
    }
    wait_for_liveness(&cluster, 1, "node3", true).await;
    cluster.kill(2);
    // NOTE: every survivor must see it, each on its own clock from the kill.
    let (down, down_on_2) = tokio::join!(
        wait_for_liveness(&cluster, 0, "node3", false),
        wait_for_liveness(&cluster, 1, "node3", false)
    );
    let down = down.max(down_on_2);
    let table = status_table(&cluster, 0);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node3 ") && l.contains(" DOWN ")),
        "{table}"
    );
    let info = info_cluster(&cluster, 0).await;
    assert!(info.contains("cluster_nodes_up:2\r\n"), "{info}");
    assert!(down < Duration::from_secs(5), "seen down after {down:?}");
    cluster.restart(2);
    let (up, up_on_2) = tokio::join!(
        wait_for_liveness(&cluster, 0, "node3", true),
        wait_for_liveness(&cluster, 1, "node3", true)
    );
    let up = up.max(up_on_2);
    assert!(up < Duration::from_secs(5), "seen up after {up:?}");
    eprintln!("node3 seen down after {down:?}, up {up:?} after its restart");
}

/// `ringkv cluster status` against node `i`'s HTTP address: its table.
fn status_table(cluster: &TestCluster, i: usize) -> String {
    let output = crate::support::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_ringkv")).args([
            "cluster",
            "status",
            "--node",
            &cluster.node(i).http_addr.to_string(),
        ]),
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}{errors}");
    assert!(
        text.contains("RESP ADDR") && text.contains("layout version 1, 1024 partitions, 3 nodes"),
        "{text}"
    );
    text
}

/// `INFO cluster` through node `i`.
async fn info_cluster(cluster: &TestCluster, i: usize) -> String {
    let mut c = cluster.node(i).conn().await;
    ok::<String>(&mut c, &["INFO", "cluster"]).await
}

/// `cluster.nodes` edited while a node was stopped would place keys on
/// nodes that never held them: the node refuses to start, naming both
/// member lists, and starts again once the list is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_member_list_is_refused_until_it_is_restored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(3);
    let config = write_config(dir.path(), 0, &ports[..2], "fjall");
    let node = ServerProcess::start(&["--config", &config]);
    let mut c = node.conn().await;
    assert_eq!(
        ok::<String>(&mut c, &["KV.PUT", "k", "v", "W", "one"]).await,
        "OK"
    );
    drop(c);
    node.kill9();

    let grown = write_config(dir.path(), 0, &ports, "fjall");
    let output = crate::support::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["server", "--config", &grown])
            .args(["--resp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]),
        Duration::from_secs(20),
    );
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "started with a third node: {errors}"
    );
    assert!(
        errors.contains("2 nodes, n = 3 [node1, node2]")
            && errors.contains("3 nodes, n = 3 [node1, node2, node3]")
            && errors.contains("restore cluster.nodes"),
        "{errors}"
    );

    let restored = write_config(dir.path(), 0, &ports[..2], "fjall");
    let node = ServerProcess::start(&["--config", &restored]);
    let mut c = node.conn().await;
    let got: Option<String> = ok(&mut c, &["KV.GET", "k", "R", "one"]).await;
    assert_eq!(got.as_deref(), Some("v"));
}
