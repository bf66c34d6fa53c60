//! `ringkv dev-cluster`: one command starts N node processes on loopback,
//! prints a ready `redis-cli` line per node, serves a key written through
//! one node from every node, and stops them all on Ctrl-C (SIGINT).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{WAIT, client_for, connect, ok};

/// Kills the dev-cluster (and so, through its Ctrl-C path, its nodes) if the
/// test fails before stopping it.
struct DevCluster(Child);

impl Drop for DevCluster {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + WAIT;
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A base port P with P..P+2, P+100..P+102 and P+200..P+202 free, below
/// the kernel's ephemeral range (32768 and up) that the other tests' port 0
/// and `free_ports` draw from, so they cannot take these meanwhile.
fn free_base() -> u16 {
    for attempt in 0..500u32 {
        let base = 10_000 + ((std::process::id() * 7919 + attempt * 104_729) % 20_000) as u16;
        let ok = [0u16, 1, 2, 100, 101, 102, 200, 201, 202]
            .iter()
            .all(|off| {
                std::net::TcpListener::bind(("127.0.0.1", base + off)).is_ok()
                    && std::net::UdpSocket::bind(("127.0.0.1", base + off)).is_ok()
            });
        if ok {
            return base;
        }
    }
    panic!("no free base port for a dev cluster");
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_starts_three_nodes_that_serve_each_other_and_stops_them_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = free_base();
    let child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args([
            "dev-cluster",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringkv dev-cluster");
    let mut cluster = DevCluster(child);
    let stdout = cluster.0.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("Ctrl-C")) {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("dev-cluster printed no ready banner: {printed:?}"));
        printed.push(line);
    }
    for i in 0..3u16 {
        let wanted = format!("redis-cli -p {}", base + i);
        assert!(
            printed
                .iter()
                .any(|l| l.contains(&wanted) && l.contains(&format!("node{}", i + 1))),
            "{wanted} missing from {printed:?}"
        );
    }
    let config = std::fs::read_to_string(dir.path().join("node1").join("ringkv.toml"))
        .expect("node1's config");
    assert!(config.contains("worker_threads"), "{config}");
    assert!(config.contains("sched_batch = true"), "{config}");

    let resp = |i: u16| SocketAddr::from(([127, 0, 0, 1], base + i));
    let mut c1 = connect(&client_for(resp(0), "")).await;
    assert_eq!(ok::<String>(&mut c1, &["SET", "dev-key", "v"]).await, "OK");
    for i in 0..3 {
        let mut c = connect(&client_for(resp(i), "")).await;
        let got: Option<String> = ok(&mut c, &["GET", "dev-key"]).await;
        assert_eq!(got.as_deref(), Some("v"), "read through node{}", i + 1);
    }

    let status = Command::new("kill")
        .args(["-INT", &cluster.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = cluster.0.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "dev-cluster did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "dev-cluster exited with {exit}");
    for i in 0..3 {
        assert!(
            !listening(base + i),
            "node{} still listens after Ctrl-C",
            i + 1
        );
    }
}
