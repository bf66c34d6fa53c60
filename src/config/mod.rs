//! Configuration: one serde TOML tree, validated at start-up.
//!
//! Precedence: built-in defaults < the TOML file < `RINGKV_*` environment
//! variables < command-line flags (the last two are applied by the binary).
//! Invariant: a [`Config`] that passed [`Config::validate`] is internally
//! consistent; nothing downstream re-checks it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod validate;

use crate::coordinator::Level;

/// The whole configuration of one node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's identity and addresses.
    pub node: NodeConfig,
    /// Where and how data is stored.
    pub storage: StorageConfig,
    /// Bounds on everything a client can send.
    pub limits: LimitsConfig,
    /// Cluster-wide constants.
    pub cluster: ClusterConfig,
    /// Keyspaces besides `default` (which always exists; listing it here
    /// overrides its properties).
    pub keyspaces: Vec<KeyspaceConfig>,
    /// Test hooks, all off by default.
    pub debug: DebugConfig,
}

/// Hooks for the fault tests; never for production.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Serve `POST /v1/debug/faults`, which cuts, drops and delays links to
    /// peers (internode calls and gossip) and skews this node's clock
    /// (`ringkv server --enable-fault-injection`). Default: false.
    pub fault_injection: bool,
}

/// Identity and listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique name of this node in the cluster. Default: `node1`.
    pub name: String,
    /// Redis-protocol listener. Default: `127.0.0.1:7379`.
    pub resp_addr: SocketAddr,
    /// HTTP listener (health, metrics). Default: `127.0.0.1:7380`.
    pub http_addr: SocketAddr,
    /// Internode listener, used when `cluster.nodes` is set. Default: `127.0.0.1:7381`.
    pub peer_addr: SocketAddr,
    /// Gossip (UDP) listener, also the address peers gossip back to, used
    /// when `cluster.nodes` is set. Default: the IP and port of `peer_addr`
    /// (UDP and TCP share the port number).
    pub gossip_addr: Option<SocketAddr>,
    /// Password clients must give with AUTH before anything else. Default: none.
    pub requirepass: Option<String>,
    /// Bearer token the HTTP admin routes (`/v1/...`) require in an
    /// `Authorization: Bearer <token>` header; `/health` and `/metrics` stay
    /// open. Default: none (the admin routes are open too).
    pub http_token: Option<String>,
    /// Threads serving requests; 0 means one per CPU core. Default: 0.
    pub worker_threads: usize,
    /// Run every thread of the node under Linux's `SCHED_BATCH` policy, so
    /// a message from a node on the same machine does not preempt this one
    /// in the middle of a batch (the scheduler's wakeup preemption). For
    /// nodes that share a machine, as `ringkv dev-cluster` starts them
    /// (measured on 2 cores, 3 nodes: quorum SET about 10% and GET 2-15%
    /// faster; level one unchanged; bench/RESULTS.md). Default: false.
    pub sched_batch: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "node1".into(),
            resp_addr: SocketAddr::from(([127, 0, 0, 1], 7379)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7380)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 7381)),
            gossip_addr: None,
            requirepass: None,
            http_token: None,
            worker_threads: 0,
            sched_batch: false,
        }
    }
}

/// Which storage engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Durable LSM on disk (default).
    Fjall,
    /// RAM only; everything is lost on exit.
    Memory,
}

/// When writes reach the disk, as Redis's `appendfsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync before every reply that acknowledges a write.
    Always,
    /// fsync once a second (default): a machine crash loses about a second.
    Everysec,
    /// Leave it to the operating system.
    No,
}

/// Storage settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Data directory. Default: `./ringkv-data`.
    pub data_dir: PathBuf,
    /// Engine. Default: `fjall`.
    pub engine: EngineKind,
    /// Fsync policy. Default: `everysec`.
    pub fsync: FsyncPolicy,
    /// Block cache of the fjall engine, bytes. Default: 64 MiB.
    pub cache_bytes: u64,
    /// How often the expiry sweep visits the next partition, ms. Default: 10.
    pub expiry_sweep_interval_ms: u64,
    /// Entries the sweep examines per visit at most. Default: 1000.
    pub expiry_sweep_batch: usize,
    /// How long tombstones and expired values are kept before being purged,
    /// ms. Default: 86 400 000 (1 day).
    pub tombstone_grace_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./ringkv-data"),
            engine: EngineKind::Fjall,
            fsync: FsyncPolicy::Everysec,
            cache_bytes: 64 << 20,
            expiry_sweep_interval_ms: 10,
            expiry_sweep_batch: 1000,
            tombstone_grace_ms: 86_400_000,
        }
    }
}

/// Limits on client input and resources.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest key, bytes. Default: 8192.
    pub max_key_bytes: usize,
    /// Largest value, bytes. Default: 1 MiB.
    pub max_value_bytes: usize,
    /// Largest bulk string the protocol accepts, bytes; past it the
    /// connection is closed with a protocol error. Default: 16 MiB.
    pub max_bulk_bytes: usize,
    /// Most arguments in one command. Default: 1 048 576.
    pub max_multibulk_len: usize,
    /// Longest inline command line, bytes. Default: 65 536.
    pub max_inline_bytes: usize,
    /// Most simultaneous client connections. Default: 10 000.
    pub max_connections: usize,
    /// Bytes of replies a connection may buffer before they are written out.
    /// Default: 1 MiB.
    pub max_reply_buffer_bytes: usize,
    /// A timestamp further ahead than this is refused, ms. Default: 60 000.
    pub max_clock_skew_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_key_bytes: 8192,
            max_value_bytes: 1 << 20,
            max_bulk_bytes: 16 << 20,
            max_multibulk_len: 1 << 20,
            max_inline_bytes: 64 << 10,
            max_connections: 10_000,
            max_reply_buffer_bytes: 1 << 20,
            max_clock_skew_ms: 60_000,
        }
    }
}

/// The cluster this node belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Number of partitions `Q`, a power of two, fixed when the cluster is
    /// created: a data directory records it (`ringkv.meta`) and refuses to
    /// start with another. Default: 1024.
    pub partitions: u32,
    /// The secret every node proves it knows before any data moves between
    /// them. Required when `nodes` is set.
    pub secret: Option<String>,
    /// Every node of the cluster, this one included (static membership; the
    /// layout is computed from this list). Empty: a single node with n = 1.
    pub nodes: Vec<MemberConfig>,
    /// Longest a coordinator waits for a replica, ms. Default: 2000.
    pub request_timeout_ms: u64,
    /// Gossip addresses (`ip:port` or `host:port`) contacted to join the
    /// cluster; `ringkv server --join` adds to them. Default: empty, meaning
    /// the other `nodes`, each at its `peer_addr` (gossip port = peer port).
    pub seeds: Vec<String>,
    /// Time between gossip rounds, ms; failure detection takes about 8-10
    /// rounds. Default: 250.
    pub gossip_interval_ms: u64,
    /// How long a hint (a write kept for a primary that missed it) is kept
    /// for delivery, ms; older hints are dropped and anti-entropy repairs
    /// the difference. Default: 10 800 000 (3 h).
    pub hint_window_ms: u64,
    /// Most bytes of hints kept for one target node; past it new hints for
    /// that node are dropped (counted), client writes never refused.
    /// Default: 256 MiB.
    pub hint_max_bytes_per_target: u64,
    /// Mean time between anti-entropy rounds, ms (each round compares every
    /// partition this node holds with its other replicas; jittered by
    /// ±20 %); 0 turns anti-entropy off. Default: 60 000.
    pub aae_interval_ms: u64,
    /// Most anti-entropy partition exchanges started per second. Default: 100.
    pub aae_max_partitions_per_sec: u32,
    /// One quorum read in this many also reads, after answering, the
    /// primaries it did not ask and repairs the stale ones; 0 turns this off
    /// (anti-entropy still repairs them). Default: 100.
    pub background_read_repair_every: u64,
    /// A quorum read still short of answers this long after it asked its
    /// replicas asks the next primaries too, once (speculative retry), so a
    /// stalled replica costs a read this long, not `request_timeout_ms`;
    /// 0 turns it off, and so does a value not below `request_timeout_ms`
    /// (logged at start). Default: 50.
    pub read_speculation_ms: u64,
}

impl ClusterConfig {
    /// How long a read waits before it speculates, if it does: off at 0,
    /// and off (it could never fire) at or above the request timeout.
    pub fn read_speculation(&self) -> Option<std::time::Duration> {
        (self.read_speculation_ms > 0 && self.read_speculation_ms < self.request_timeout_ms)
            .then(|| std::time::Duration::from_millis(self.read_speculation_ms))
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            partitions: 1024,
            secret: None,
            nodes: Vec::new(),
            request_timeout_ms: 2000,
            seeds: Vec::new(),
            gossip_interval_ms: 250,
            hint_window_ms: 3 * 3_600_000,
            hint_max_bytes_per_target: 256 << 20,
            aae_interval_ms: 60_000,
            aae_max_partitions_per_sec: 100,
            background_read_repair_every: 100,
            read_speculation_ms: 50,
        }
    }
}

/// One member of a static cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The node's name (its `node.name`).
    pub name: String,
    /// Its internode address (its `node.peer_addr`).
    pub peer_addr: SocketAddr,
    /// Its zone; replicas of a partition go to distinct zones first.
    #[serde(default)]
    pub zone: Option<String>,
    /// Relative share of partitions. Default: 1.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
}

fn default_capacity() -> u32 {
    1
}

/// Most (partition, node) pairs a layout may have: the claim's flow has one
/// edge per pair (measured in release: 0.25-0.45 s for a layout at 2^20
/// pairs, `ring::movement_tests::claim_at_scale`).
pub const MAX_LAYOUT_PAIRS: u64 = 1 << 20;

/// Longest node name, bytes (hint queues and frames carry it with a
/// one-byte length).
pub const MAX_NODE_NAME_BYTES: usize = 255;

/// Shortest cluster secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;

/// A keyspace and its properties.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyspaceConfig {
    /// Name (1 to 255 bytes of `[A-Za-z0-9_-]`).
    pub name: String,
    /// Replication factor. Default: 3 (a single node serves with n = 1).
    pub n: u32,
    /// Default TTL for new keys, seconds; 0 means none. Default: 0.
    pub default_ttl_secs: u64,
    /// Read level of connections using this keyspace, until they choose
    /// their own with CONSISTENCY. Default: `quorum`.
    pub read_level: Level,
    /// Write level, likewise. Default: `quorum`.
    pub write_level: Level,
}

impl Default for KeyspaceConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            n: 3,
            default_ttl_secs: 0,
            read_level: Level::Quorum,
            write_level: Level::Quorum,
        }
    }
}

/// A configuration that can't be used, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said, with line and column.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; missing fields take their defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Longest time between two anti-entropy exchanges of one partition
    /// replica, ms: the interval plus its 20% jitter plus one round (every
    /// partition of every keyspace with each other replica, at
    /// `aae_max_partitions_per_sec`). `None` when anti-entropy is off. A
    /// round slowed by timeouts or a peer that stays down can take longer:
    /// the grace must cover such outages too.
    pub fn aae_period_ms(&self) -> Option<u64> {
        let c = &self.cluster;
        if c.aae_interval_ms == 0 {
            return None;
        }
        // NOTE: a round compares each partition with each other replica.
        let nodes = c.nodes.len().max(1) as u64;
        let peers: u64 = self
            .all_keyspaces()
            .iter()
            .map(|k| u64::from(k.n).min(nodes).saturating_sub(1).max(1))
            .sum();
        let exchanges = u64::from(c.partitions) * peers;
        let round_ms = exchanges * 1000 / u64::from(c.aae_max_partitions_per_sec.max(1));
        Some(c.aae_interval_ms + c.aae_interval_ms / 5 + round_ms)
    }

    /// True when this node is part of a multi-node cluster.
    pub fn is_clustered(&self) -> bool {
        !self.cluster.nodes.is_empty()
    }

    /// Where this node gossips: `node.gossip_addr`, else `node.peer_addr`.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.node.gossip_addr.unwrap_or(self.node.peer_addr)
    }

    /// Gossip seeds: `cluster.seeds`, else every other member's `peer_addr`.
    pub fn gossip_seeds(&self) -> Vec<String> {
        if !self.cluster.seeds.is_empty() {
            return self.cluster.seeds.clone();
        }
        self.cluster
            .nodes
            .iter()
            .filter(|m| m.name != self.node.name)
            .map(|m| m.peer_addr.to_string())
            .collect()
    }

    /// Every keyspace, `default` first, then the others in file order.
    pub fn all_keyspaces(&self) -> Vec<KeyspaceConfig> {
        let default = self
            .keyspaces
            .iter()
            .find(|k| k.name == "default")
            .cloned()
            .unwrap_or_default();
        std::iter::once(default)
            .chain(
                self.keyspaces
                    .iter()
                    .filter(|k| k.name != "default")
                    .cloned(),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn parses_partial_toml() {
        let c: Config = toml::from_str(
            "[storage]\nengine = \"memory\"\n[[keyspaces]]\nname = \"cache\"\nn = 1\n",
        )
        .unwrap();
        assert_eq!(c.storage.engine, EngineKind::Memory);
        assert_eq!(c.storage.fsync, FsyncPolicy::Everysec);
        let names: Vec<_> = c.all_keyspaces().into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["default", "cache"]);
        assert!(
            !c.debug.fault_injection,
            "fault injection is off by default"
        );
        let c: Config = toml::from_str("[debug]\nfault_injection = true\n").unwrap();
        assert!(c.debug.fault_injection);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = toml::from_str::<Config>("[storage]\nengin = \"memory\"\n").unwrap_err();
        assert!(err.to_string().contains("engin"), "{err}");
    }

    fn member(name: &str, port: u16) -> MemberConfig {
        MemberConfig {
            name: name.into(),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            zone: None,
            capacity: 1,
        }
    }

    #[test]
    fn cluster_membership_is_checked() {
        let mut c = Config::default();
        c.cluster.nodes = vec![member("node1", 1), member("node2", 2)];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("cluster.secret")
        );
        c.cluster.secret = Some("0123456789abcdef".into());
        c.validate().unwrap();
        c.node.name = "node9".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("not in cluster.nodes")
        );
        c.node.name = "node1".into();
        assert_eq!(c.gossip_seeds(), ["127.0.0.1:2"]);
        assert_eq!(c.gossip_addr(), c.node.peer_addr);
        c.cluster.seeds = vec!["seed.example".into()];
        assert!(c.validate().unwrap_err().to_string().contains("host:port"));
        c.cluster.seeds = vec!["seed.example:7381".into()];
        assert_eq!(c.gossip_seeds(), ["seed.example:7381"]);
        c.cluster.aae_interval_ms = 50;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("aae_interval_ms")
        );
        c.cluster.aae_interval_ms = 0;
        c.validate().unwrap();
        c.cluster.aae_max_partitions_per_sec = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("aae_max_partitions_per_sec")
        );
        c.cluster.aae_max_partitions_per_sec = 1;
        c.cluster.nodes.push(member("node2", 3));
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        c.cluster.nodes.pop();
        c.validate().unwrap();
        c.storage.tombstone_grace_ms = c.cluster.hint_window_ms;
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("tombstone_grace_ms"), "{error}");
        assert!(error.contains("hint_window_ms"), "{error}");
        c.cluster.hint_window_ms = 1000;
        c.cluster.aae_interval_ms = 60_000;
        c.cluster.aae_max_partitions_per_sec = 100;
        // 1024 partitions at 100 a second: a round takes 10.24 s.
        assert_eq!(c.aae_period_ms(), Some(60_000 + 12_000 + 10_240));
        c.storage.tombstone_grace_ms = 82_240;
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("anti-entropy period"), "{error}");
        c.storage.tombstone_grace_ms = 82_241;
        c.validate().unwrap();
        c.cluster.aae_interval_ms = 0;
        c.storage.tombstone_grace_ms = 63_100;
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("max_clock_skew_ms"), "{error}");
        c.storage.tombstone_grace_ms = 63_101;
        c.validate().unwrap();
    }

    #[test]
    fn read_speculation_is_off_at_zero_and_when_it_could_never_fire() {
        let mut c = ClusterConfig::default();
        assert_eq!(
            c.read_speculation(),
            Some(std::time::Duration::from_millis(50))
        );
        c.read_speculation_ms = 0;
        assert_eq!(c.read_speculation(), None);
        c.read_speculation_ms = 50;
        c.request_timeout_ms = 50;
        assert_eq!(c.read_speculation(), None);
    }

    #[test]
    fn layouts_too_large_to_compute_are_refused() {
        let mut c = Config::default();
        c.cluster.secret = Some("0123456789abcdef".into());
        c.cluster.nodes = (0..32u16)
            .map(|i| member(&format!("node{i}"), 1000 + i))
            .collect();
        c.node.name = "node0".into();
        c.cluster.partitions = 1 << 15;
        c.validate().unwrap();
        c.cluster.partitions = 1 << 16;
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("use fewer partitions"), "{error}");
    }

    #[test]
    fn node_names_are_bounded() {
        let mut c = Config::default();
        c.node.name = "n".repeat(MAX_NODE_NAME_BYTES);
        c.validate().unwrap();
        c.node.name.push('n');
        let error = c.validate().unwrap_err().to_string();
        assert!(error.contains("at most 255"), "{error}");
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let mut c = Config::default();
        c.cluster.partitions = 1000;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("power of two")
        );
        let mut c = Config::default();
        c.limits.max_value_bytes = 64 << 20;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_bulk_bytes")
        );
        let mut c = Config::default();
        c.keyspaces.push(KeyspaceConfig {
            name: "bad name".into(),
            ..Default::default()
        });
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("keyspace name")
        );
    }
}
