//! `ringkv dev-cluster`: a local N-node cluster of separate processes on
//! loopback, in one command.
//!
//! Node i (from 1) serves RESP on `base_port + i - 1`, HTTP on
//! `base_port + 100 + i - 1` and internode traffic on `base_port + 200 + i - 1`.
//! Each node's config and data live in `<data-dir>/node<i>/`, its log in
//! `<data-dir>/node<i>/ringkv.log`. Ctrl-C (or SIGTERM) stops every node it
//! started, by pid, and waits for them.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

/// Offset of the HTTP ports from the RESP ports.
const HTTP_PORT_OFFSET: u16 = 100;
/// Offset of the internode ports from the RESP ports.
const PEER_PORT_OFFSET: u16 = 200;
/// How long a node may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long nodes get to stop after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Flags of `ringkv dev-cluster`.
#[derive(Args, Debug)]
pub struct DevClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// RESP port of node 1; node i listens on base + i - 1 (HTTP on +100, peers on +200).
    #[arg(long, default_value_t = 7379)]
    base_port: u16,
    /// Directory holding every node's config, data and log.
    #[arg(long, default_value = "./ringkv-dev")]
    data_dir: PathBuf,
    /// Storage engine of every node.
    #[arg(long, default_value = "fjall")]
    engine: String,
    /// Fsync policy of every node.
    #[arg(long, default_value = "everysec")]
    fsync: String,
    /// Replication factor of the default keyspace [default: 3, or the
    /// number of nodes when fewer].
    #[arg(long)]
    replication: Option<u32>,
    /// Read level of the default keyspace (one, two, quorum, all, N).
    #[arg(long, default_value = "quorum")]
    read_level: String,
    /// Write level of the default keyspace.
    #[arg(long, default_value = "quorum")]
    write_level: String,
    /// Request threads of each node [default: the machine's cores divided
    /// by the number of nodes, at least 1: the nodes share this machine].
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Leave the nodes under the default scheduling policy. By default they
    /// run under SCHED_BATCH (node.sched_batch), so nodes sharing this
    /// machine do not preempt each other on every message.
    #[arg(long)]
    no_sched_batch: bool,
}

/// Worker threads per node: the cores shared out among the nodes, so N
/// local processes do not each start a thread per core and then fight over
/// them (measured on 2 cores with 3 nodes: quorum GET/SET 20-35% faster with
/// one thread each than with two).
fn worker_threads(args: &DevClusterArgs) -> usize {
    args.worker_threads.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores / usize::from(args.nodes.max(1))).max(1)
    })
}

struct NodePorts {
    name: String,
    resp: u16,
    http: u16,
    peer: u16,
}

/// The default keyspace's replication factor: as asked, or 3 capped at the
/// nodes there are (a 1-node dev cluster keeps one copy and still answers
/// at quorum). More copies than nodes could never be placed: refused.
fn replication(args: &DevClusterArgs) -> anyhow::Result<u32> {
    match args.replication {
        None => Ok(DEFAULT_REPLICATION.min(u32::from(args.nodes))),
        Some(0) => bail!("--replication must be at least 1"),
        Some(n) if n > u32::from(args.nodes) => bail!(
            "--replication {n} needs at least {n} nodes, and --nodes is {}",
            args.nodes
        ),
        Some(n) => Ok(n),
    }
}

/// Copies of each key when `--replication` is not given.
const DEFAULT_REPLICATION: u32 = 3;

fn plan(args: &DevClusterArgs) -> anyhow::Result<Vec<NodePorts>> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    replication(args)?;
    let last = u32::from(args.base_port) + u32::from(PEER_PORT_OFFSET) + u32::from(args.nodes) - 1;
    if last > u32::from(u16::MAX) {
        bail!(
            "--base-port {} is too high for {} nodes",
            args.base_port,
            args.nodes
        );
    }
    Ok((0..args.nodes)
        .map(|i| NodePorts {
            name: format!("node{}", i + 1),
            resp: args.base_port + i,
            http: args.base_port + HTTP_PORT_OFFSET + i,
            peer: args.base_port + PEER_PORT_OFFSET + i,
        })
        .collect())
}

/// A secret for this run, unguessable enough for a loopback dev cluster.
fn dev_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    let a = h.finish();
    h.write_u64(a);
    format!("dev-{a:016x}{:016x}", h.finish())
}

fn write_config(
    args: &DevClusterArgs,
    nodes: &[NodePorts],
    me: &NodePorts,
    secret: &str,
) -> anyhow::Result<PathBuf> {
    let dir = args.data_dir.join(&me.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let data_dir = dir.join("data");
    let mut toml = format!(
        "# Written by `ringkv dev-cluster`; rewritten on every start.\n\
         [node]\nname = \"{}\"\nresp_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\nworker_threads = {}\nsched_batch = {}\n\n\
         [storage]\ndata_dir = {:?}\nengine = \"{}\"\nfsync = \"{}\"\n\n\
         [cluster]\nsecret = \"{secret}\"\n",
        me.name,
        me.resp,
        me.http,
        me.peer,
        worker_threads(args),
        !args.no_sched_batch,
        data_dir.display().to_string(),
        args.engine,
        args.fsync
    );
    for node in nodes {
        let _ = write!(
            toml,
            "\n[[cluster.nodes]]\nname = \"{}\"\npeer_addr = \"127.0.0.1:{}\"\n",
            node.name, node.peer
        );
    }
    let _ = write!(
        toml,
        "\n[[keyspaces]]\nname = \"default\"\nn = {}\nread_level = {:?}\nwrite_level = {:?}\n",
        replication(args)?,
        args.read_level,
        args.write_level
    );
    let path = dir.join("ringkv.toml");
    std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn spawn_node(config: &Path, log: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("finding the ringkv executable")?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(exe)
        .args(["server", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .context("starting a node")
}

fn wait_listening(port: u16, child: &mut Child) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("node exited during start-up with {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "nothing listens on {addr} after {} s",
        START_TIMEOUT.as_secs()
    )
}

/// Sends SIGTERM to every child, waits, then kills the stragglers.
fn stop_all(children: &mut [(String, Child)]) {
    for (_, child) in children.iter() {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet waited).
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for (name, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!("{name} stopped ({status})");
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    eprintln!("{name} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

/// Waits for Ctrl-C or SIGTERM. A node that dies (killed to try a failure,
/// say) is reported and the others keep running; when none is left, it returns.
async fn wait_for_stop(children: &mut [(String, Child)]) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut exited = vec![false; children.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = poll.tick() => {}
        }
        for ((name, child), seen) in children.iter_mut().zip(exited.iter_mut()) {
            if !*seen && let Some(status) = child.try_wait()? {
                *seen = true;
                eprintln!("{name} exited ({status}); the other nodes keep running");
            }
        }
        if exited.iter().all(|e| *e) {
            eprintln!("every node has exited");
            return Ok(());
        }
    }
}

/// Runs the dev cluster until Ctrl-C.
pub async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    let nodes = plan(&args)?;
    let secret = dev_secret();
    let mut children: Vec<(String, Child)> = Vec::new();
    let result = start_all(&args, &nodes, &secret, &mut children);
    if let Err(e) = result {
        stop_all(&mut children);
        return Err(e);
    }
    println!(
        "ringkv dev cluster: {} nodes, data and logs under {}",
        nodes.len(),
        args.data_dir.display()
    );
    for node in &nodes {
        println!(
            "  {}: resp 127.0.0.1:{}  http 127.0.0.1:{}  peer 127.0.0.1:{}   redis-cli -p {}",
            node.name, node.resp, node.http, node.peer, node.resp
        );
    }
    println!("Ctrl-C stops every node.");
    wait_for_stop(&mut children).await?;
    stop_all(&mut children);
    Ok(())
}

fn start_all(
    args: &DevClusterArgs,
    nodes: &[NodePorts],
    secret: &str,
    children: &mut Vec<(String, Child)>,
) -> anyhow::Result<()> {
    for node in nodes {
        let config = write_config(args, nodes, node, secret)?;
        let log = args.data_dir.join(&node.name).join("ringkv.log");
        let child = spawn_node(&config, &log)?;
        children.push((node.name.clone(), child));
    }
    for (node, (_, child)) in nodes.iter().zip(children.iter_mut()) {
        let log = args.data_dir.join(&node.name).join("ringkv.log");
        wait_listening(node.resp, child).with_context(|| {
            format!(
                "{} did not start; see {}{}",
                node.name,
                log.display(),
                log_tail(&log)
            )
        })?;
    }
    Ok(())
}

/// The last lines of a node's log, to show why it did not start.
fn log_tail(log: &std::path::Path) -> String {
    const LINES: usize = 5;
    let Ok(text) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    if tail.is_empty() {
        return String::new();
    }
    let mut shown = format!(", which ends:\n  {}", tail.join("\n  "));
    if tail.iter().any(|line| line.contains("cluster.layout")) {
        // NOTE: the commonest cause here: another --nodes or --replication
        // over the data of an earlier run.
        shown.push_str(
            "\n(dev-cluster keeps every node's data under --data-dir: for a cluster of \
             another shape, pass a new --data-dir or remove the old one)",
        );
    }
    shown
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DevClusterArgs,
    }

    fn args(flags: &[&str]) -> DevClusterArgs {
        Cli::parse_from(std::iter::once("dev-cluster").chain(flags.iter().copied())).args
    }

    #[test]
    fn replication_defaults_to_three_capped_at_the_nodes() {
        assert_eq!(replication(&args(&[])).unwrap(), 3);
        assert_eq!(replication(&args(&["--nodes", "5"])).unwrap(), 3);
        assert_eq!(replication(&args(&["--nodes", "1"])).unwrap(), 1);
        assert_eq!(replication(&args(&["--nodes", "2"])).unwrap(), 2);
        assert_eq!(
            replication(&args(&["--nodes", "5", "--replication", "5"])).unwrap(),
            5
        );
        let more = replication(&args(&["--nodes", "2", "--replication", "3"])).unwrap_err();
        assert!(
            more.to_string().contains("needs at least 3 nodes"),
            "{more}"
        );
        assert!(plan(&args(&["--nodes", "2", "--replication", "3"])).is_err());
        assert!(replication(&args(&["--replication", "0"])).is_err());
    }
}
