//! The `ringkv` command line: `ringkv server` runs a node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ringkv::config::{Config, EngineKind, FsyncPolicy};
use ringkv::node::Node;
use tracing_subscriber::EnvFilter;

mod cluster_cmd;
mod dev_cluster;

// NOTE: glibc's allocator grows per-thread arenas with an mprotect(2) per
// step, which cost a syscall per request batch while fjall's memtable grew;
// mimalloc does not (measured in bench/RESULTS.md). Built with `no_thp`:
// mimalloc otherwise asks for transparent huge pages, and every arena page
// it frees and touches again then faults in a zeroed 2 MiB page; in a
// 3-node dev cluster that was 4% of all CPU and doubled write p99 (5 ms to
// 2-3 ms without it, same throughput).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ringkv: a Dynamo-style replicated key-value store that speaks the Redis protocol.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node in the foreground (Ctrl-C or SIGTERM stops it cleanly).
    Server(Box<ServerArgs>),
    /// Run a local N-node cluster of separate processes on loopback.
    DevCluster(dev_cluster::DevClusterArgs),
    /// Inspect a running cluster.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
}

/// Flags override the config file; each flag can also be set through the
/// environment variable named in its help.
#[derive(Args, Debug)]
struct ServerArgs {
    /// TOML config file (every setting, see README); flags and RINGKV_* override it.
    #[arg(long, env = "RINGKV_CONFIG")]
    config: Option<PathBuf>,
    /// Name of this node [default: node1].
    #[arg(long, env = "RINGKV_NODE_NAME")]
    node_name: Option<String>,
    /// Redis-protocol listen address [default: 127.0.0.1:7379].
    #[arg(long, env = "RINGKV_RESP_ADDR")]
    resp_addr: Option<SocketAddr>,
    /// HTTP (health, metrics) listen address [default: 127.0.0.1:7380].
    #[arg(long, env = "RINGKV_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Internode listen address, in a cluster [default: 127.0.0.1:7381].
    #[arg(long, env = "RINGKV_PEER_ADDR")]
    peer_addr: Option<SocketAddr>,
    /// Gossip (UDP) listen address, in a cluster [default: the IP and port of --peer-addr].
    #[arg(long, env = "RINGKV_GOSSIP_ADDR")]
    gossip_addr: Option<SocketAddr>,
    /// Gossip address of a node to join through (repeatable; adds to cluster.seeds).
    #[arg(
        long = "join",
        value_name = "ADDR",
        env = "RINGKV_JOIN",
        value_delimiter = ','
    )]
    join: Vec<String>,
    /// Secret shared by every node of the cluster (at least 16 characters).
    #[arg(long, env = "RINGKV_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Data directory [default: ./ringkv-data].
    #[arg(long, env = "RINGKV_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Storage engine [default: fjall].
    #[arg(long, env = "RINGKV_ENGINE", value_enum)]
    engine: Option<EngineKind>,
    /// When writes are fsynced [default: everysec].
    #[arg(long, env = "RINGKV_FSYNC", value_enum)]
    fsync: Option<FsyncPolicy>,
    /// Password clients must send with AUTH.
    #[arg(long, env = "RINGKV_REQUIREPASS", hide_env_values = true)]
    requirepass: Option<String>,
    /// Bearer token the HTTP admin routes (/v1/...) require.
    #[arg(long, env = "RINGKV_HTTP_TOKEN", hide_env_values = true)]
    http_token: Option<String>,
    /// Largest value in bytes [default: 1048576].
    #[arg(long, env = "RINGKV_MAX_VALUE_BYTES")]
    max_value_bytes: Option<usize>,
    /// Largest key in bytes [default: 8192].
    #[arg(long, env = "RINGKV_MAX_KEY_BYTES")]
    max_key_bytes: Option<usize>,
    /// Most simultaneous client connections [default: 10000].
    #[arg(long, env = "RINGKV_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Mean ms between anti-entropy rounds in a cluster, 0 = off [default: 60000].
    #[arg(long, env = "RINGKV_AAE_INTERVAL_MS")]
    aae_interval_ms: Option<u64>,
    /// Threads serving requests, 0 = one per CPU core [default: 0].
    #[arg(long, env = "RINGKV_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Run the node's threads under SCHED_BATCH (node.sched_batch): for
    /// nodes sharing a machine, which then stop preempting each other on
    /// every message. `--sched-batch=false` turns off what a config file set
    /// [default: false].
    #[arg(
        long,
        env = "RINGKV_SCHED_BATCH",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    sched_batch: Option<bool>,
    /// Tests only: serve POST /v1/debug/faults (debug.fault_injection).
    #[arg(long, hide = true)]
    enable_fault_injection: bool,
}

impl ServerArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let set = |slot: &mut _, value: Option<_>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        let node = &mut config.node;
        if let Some(v) = self.node_name {
            node.name = v;
        }
        set(&mut node.resp_addr, self.resp_addr);
        set(&mut node.http_addr, self.http_addr);
        set(&mut node.peer_addr, self.peer_addr);
        if self.gossip_addr.is_some() {
            node.gossip_addr = self.gossip_addr;
        }
        config.cluster.seeds.extend(self.join);
        if self.cluster_secret.is_some() {
            config.cluster.secret = self.cluster_secret;
        }
        if let Some(v) = self.aae_interval_ms {
            config.cluster.aae_interval_ms = v;
        }
        if let Some(v) = self.worker_threads {
            node.worker_threads = v;
        }
        if let Some(v) = self.sched_batch {
            node.sched_batch = v;
        }
        if self.http_token.is_some() {
            node.http_token = self.http_token;
        }
        if self.requirepass.is_some() {
            node.requirepass = self.requirepass;
        }
        let storage = &mut config.storage;
        if let Some(v) = self.data_dir {
            storage.data_dir = v;
        }
        if let Some(v) = self.engine {
            storage.engine = v;
        }
        if let Some(v) = self.fsync {
            storage.fsync = v;
        }
        let limits = &mut config.limits;
        for (slot, value) in [
            (&mut limits.max_value_bytes, self.max_value_bytes),
            (&mut limits.max_key_bytes, self.max_key_bytes),
            (&mut limits.max_connections, self.max_connections),
        ] {
            if let Some(v) = value {
                *slot = v;
            }
        }
        if self.enable_fault_injection {
            config.debug.fault_injection = true;
        }
        config.validate()?;
        Ok(config)
    }
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("installing the SIGINT handler")?; Ok("SIGINT") }
        _ = term.recv() => Ok("SIGTERM"),
    }
}

async fn run_server(config: Config) -> anyhow::Result<()> {
    let node = Node::start(config.clone()).await?;
    tracing::info!(
        resp_addr = %node.resp_addr(),
        http_addr = %node.http_addr(),
        peer_addr = ?node.peer_addr(),
        engine = ?config.storage.engine,
        fsync = ?config.storage.fsync,
        data_dir = %config.storage.data_dir.display(),
        "ringkv ready"
    );
    let signal = wait_for_signal().await?;
    tracing::info!(
        signal,
        "shutting down: closing connections and flushing data"
    );
    node.shutdown().await.context("final flush failed")?;
    tracing::info!("shutdown complete");
    Ok(())
}

fn run_server_command(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    if config.node.sched_batch {
        // NOTE: before the runtime starts any thread: threads inherit it.
        match use_sched_batch() {
            Ok(()) => tracing::info!("threads run under SCHED_BATCH (node.sched_batch)"),
            Err(e) => {
                tracing::warn!(error = %e, "could not use SCHED_BATCH; the default scheduling policy stays")
            }
        }
    }
    // NOTE: one worker runs on tokio's current-thread scheduler, which skips
    // the work-stealing machinery, like Redis's single event loop.
    let mut builder = match config.node.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_server(config))
}

/// Puts the calling thread, and every thread it starts from now on, under
/// `SCHED_BATCH` (no wakeup preemption; no privilege needed).
#[cfg(target_os = "linux")]
fn use_sched_batch() -> std::io::Result<()> {
    // SAFETY: sched_param is plain old data (integers), for which all zeroes
    // is valid: priority 0, as SCHED_BATCH requires. sched_setscheduler(2)
    // acts on the calling thread (pid 0) and only reads `param`, which
    // outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        let param: libc::sched_param = std::mem::zeroed();
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn use_sched_batch() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SCHED_BATCH is a Linux scheduling policy",
    ))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("RINGKV_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // NOTE: colours only on a terminal: a node's log file (dev-cluster, a
    // service manager) stays plain text for grep and log shippers.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Server(args) => run_server_command(*args),
        Command::Cluster(command) => cluster_cmd::run(command),
        Command::DevCluster(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(dev_cluster::run(args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace: these
            // are operator-facing errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
