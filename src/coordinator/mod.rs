//! The store interface the front doors (RESP, HTTP) call, and its local
//! implementation.
//!
//! Front doors never touch an [`crate::storage::Engine`]: they call a
//! [`Store`]. Today that is [`LocalStore`], a cluster of one with n = 1; the
//! quorum coordinator implements the same trait. Invariant: a `Store` call
//! that returns `Ok` for a write has applied it on the node's engine, and it
//! is as durable as the fsync policy promises once [`Store::commit`] returns.

mod command;
mod commit;
mod hints;
mod level;
mod local;
mod quorum;
mod replica;
mod sweep;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::KeyspaceConfig;
use crate::storage::StorageError;
use crate::version::{ClockSkewError, RecordError};

pub use command::{Decision, ExpireCondition, ExpiryUpdate, SetCondition, WriteCmd};
pub use commit::CommitError;
pub use hints::{Delivery, HintConfig, HintDeliveryHandle, HintQueue, Hints, spawn_hint_delivery};
pub use level::{Consistency, Level};
pub use local::{LocalStore, LocalStoreConfig};
pub use quorum::{Liveness, MAX_LATE_WRITES, QuorumConfig, QuorumError, QuorumStore};
pub use replica::ReplicaHandler;
pub use sweep::{SweepConfig, SweepHandle, spawn_expiry_sweep};

/// A live value as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// Absolute expiry, ms since the epoch.
    pub expiry_ms: Option<u64>,
}

impl Entry {
    /// What a client sees of `record` at wall time `now_ms`: its value and
    /// expiry if it is live, nothing if it is a tombstone or expired.
    pub fn from_record(record: Option<&crate::version::Record>, now_ms: u64) -> Option<Entry> {
        let record = record?;
        record.live_value(now_ms).map(|value| Entry {
            value: value.clone(),
            expiry_ms: record.expiry_ms,
        })
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteOutcome {
    /// False when a condition (NX, XX, GT, ...) or a missing key stopped it.
    pub applied: bool,
    /// The live entry before the write.
    pub previous: Option<Entry>,
}

/// Index of a keyspace in [`Keyspaces`]; 0 is always `default`.
pub type KeyspaceId = usize;

/// The keyspaces this node serves, `default` first.
#[derive(Debug, Clone)]
pub struct Keyspaces {
    list: Arc<[KeyspaceConfig]>,
}

impl Keyspaces {
    /// From a validated config's [`crate::config::Config::all_keyspaces`].
    pub fn new(list: Vec<KeyspaceConfig>) -> Self {
        assert!(
            list.first().is_some_and(|k| k.name == "default"),
            "the default keyspace always comes first"
        );
        Self { list: list.into() }
    }

    /// Looks a keyspace up by name, or by number as in Redis's SELECT.
    pub fn resolve(&self, name_or_index: &str) -> Option<KeyspaceId> {
        if let Some(i) = self.list.iter().position(|k| k.name == name_or_index) {
            return Some(i);
        }
        name_or_index
            .parse::<usize>()
            .ok()
            .filter(|&i| i < self.list.len())
    }

    /// Looks a keyspace up by its exact name (as peers send it).
    pub fn by_name(&self, name: &str) -> Option<KeyspaceId> {
        self.list.iter().position(|k| k.name == name)
    }

    /// The keyspace's configuration. Ids come from [`Keyspaces::resolve`].
    pub fn get(&self, id: KeyspaceId) -> &KeyspaceConfig {
        &self.list[id]
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Never true: `default` always exists.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// All of them, `default` first.
    pub fn iter(&self) -> impl Iterator<Item = &KeyspaceConfig> {
        self.list.iter()
    }
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed.
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    /// A stored record could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(#[from] RecordError),
    /// Writes could not be made durable.
    #[error("{0}")]
    Commit(#[from] CommitError),
    /// Too few replicas answered.
    #[error("{0}")]
    Unavailable(#[from] QuorumError),
    /// A consistency level that this keyspace can never meet.
    #[error("{0}")]
    BadLevel(String),
    /// The layout could not place the key.
    #[error("layout: {0}")]
    Layout(String),
    /// A timestamp too far in the future.
    #[error("{0}")]
    ClockSkew(#[from] ClockSkewError),
}

/// Where a key lives: its partition, the nodes holding its replicas, and
/// the nodes that would stand in for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The key's partition.
    pub partition: u16,
    /// The `n` primaries, in preference order.
    pub primaries: Vec<String>,
    /// The other nodes, in the order they would stand in.
    pub fallbacks: Vec<String>,
}

/// What one replica holds of a key (`KV.INSPECT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    /// The node holding the replica.
    pub node: String,
    /// Its stored record (tombstones and expired values included), or why
    /// it could not say.
    pub held: Result<Option<crate::version::Record>, String>,
}

/// Counters a store reports for INFO and metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Engine kind.
    pub engine: &'static str,
    /// Engine bytes.
    pub engine_bytes: u64,
    /// Keys per keyspace, in [`Keyspaces`] order (values, including expired
    /// ones the sweep has not reclaimed yet, as Redis counts them).
    pub keys: Vec<u64>,
    /// Keys that have an expiry (approximate).
    pub expired_reclaimed: u64,
    /// The cluster as this node sees it; `None` on a single node.
    pub cluster: Option<ClusterStats>,
    /// Why this node's replica refuses writes until a restart, if it does.
    pub write_error: Option<String>,
}

/// What `INFO cluster` reports of a clustered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStats {
    /// Nodes in the layout.
    pub nodes: usize,
    /// Of those, up as this node sees them (itself included).
    pub nodes_up: usize,
    /// Version of the layout this node runs.
    pub layout_version: u64,
    /// Partitions `Q`.
    pub partitions: u32,
    /// Partitions whose first replica this node is.
    pub partitions_owned: u32,
    /// Hints this node keeps for other nodes.
    pub hints_queued: u64,
}

/// Reads and writes keys; implemented locally today and by the quorum
/// coordinator in a cluster.
pub trait Store: Send + Sync + 'static {
    /// The keyspaces served.
    fn keyspaces(&self) -> &Keyspaces;

    /// The live entry of `key`, if any.
    fn get(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;

    /// The live entries of `keys`, in order, each as [`Store::get`] reads it
    /// (a cluster sends the reads that go to one replica together).
    fn get_many(
        &self,
        ks: KeyspaceId,
        keys: &[Bytes],
        consistency: Consistency,
    ) -> impl Future<Output = Vec<Result<Option<Entry>, StoreError>>> + Send {
        async move {
            let mut entries = Vec::with_capacity(keys.len());
            for key in keys {
                entries.push(self.get(ks, key, consistency).await);
            }
            entries
        }
    }

    /// Applies `cmd` to `key` atomically with respect to other writes of it.
    fn write(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        cmd: WriteCmd,
        consistency: Consistency,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;

    /// Applies each of `writes` as [`Store::write`] would, stamped in order
    /// (a key written twice ends with its later write); a cluster sends the
    /// replica writes that go to one node together.
    fn write_many(
        &self,
        ks: KeyspaceId,
        writes: Vec<(Bytes, WriteCmd)>,
        consistency: Consistency,
    ) -> impl Future<Output = Vec<Result<WriteOutcome, StoreError>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(writes.len());
            for (key, cmd) in writes {
                outcomes.push(self.write(ks, &key, cmd, consistency).await);
            }
            outcomes
        }
    }

    /// Number of keys in the keyspace.
    fn dbsize(&self, ks: KeyspaceId) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Makes earlier acknowledged writes as durable as the fsync policy says;
    /// called once per batch of requests, before replies go out.
    fn commit(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The replication factor this node serves a keyspace with.
    fn replication(&self, ks: KeyspaceId) -> u32;

    /// Counters for INFO and /metrics.
    fn stats(&self) -> StoreStats;

    /// True when requests wait on other nodes, so a connection should run
    /// independent pipelined commands concurrently rather than one by one.
    fn concurrent_requests(&self) -> bool {
        false
    }

    /// What each primary of `key` holds (`KV.INSPECT`), in preference order.
    fn inspect(
        &self,
        ks: KeyspaceId,
        key: &[u8],
    ) -> impl Future<Output = Result<Vec<ReplicaView>, StoreError>> + Send;

    /// Where `key` lives (`KV.WHERE`).
    fn placement(&self, ks: KeyspaceId, key: &[u8]) -> Result<Placement, StoreError>;

    /// Wall-clock ms as the store sees it (expiry arithmetic).
    fn now_ms(&self) -> u64;
}
