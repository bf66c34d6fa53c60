//! The quorum coordinator: any node coordinates any request (DESIGN.md §3).
//!
//! A write is stamped with this node's HLC, sent to all `n` primaries of the
//! key's partition in parallel and acknowledged once `w` of them merged it;
//! the rest finish in the background. A primary that cannot be reached gets
//! a hint (docs/design/handoff.md): kept by this node, or, for a `sloppy`
//! write, by a live fallback whose stored hint counts toward `w`. A read asks
//! `r` primaries (this node first, then those gossip says are up) and
//! answers with the merge of what they hold, after writing it back to the
//! stale ones it read; one read in `repair_every` also repairs the others
//! in the background.
//!
//! Invariants:
//! - With `r + w > n` and strict quorum, a read that starts after a write
//!   was acknowledged meets at least one replica holding it, and merge keeps
//!   the newest version, so it never returns anything older.
//! - Only primaries count toward `w` unless the write is sloppy; then each
//!   counted stand-in holds a durable hint for a distinct failed primary.
//! - A replica's answer counts toward `r` only if it is a record that decodes
//!   and whose version is not too far ahead of this node's clock.
//! - A failed write that left a hint anywhere says it may have been applied.
//!
//! This file holds the types and the [`Store`] impl; where a key's replicas
//! are is in `routing.rs`, the read path in `read.rs` (batched reads in
//! `read_many.rs`), the write path in `write.rs` (batched writes in
//! `write_many.rs`), read repair in `repair.rs`.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::RwLock;

use super::ReplicaHandler;
use super::{
    ClusterStats, Consistency, Decision, Entry, Hints, KeyspaceId, Keyspaces, Level, LocalStore,
    Placement, ReplicaView, Store, StoreError, StoreStats, WriteCmd, WriteOutcome,
};
use crate::net::Handler;
use crate::net::{NetError, Request, Response, Transport};
use crate::ring::{self, Layout};
use crate::version::{NodeId, Record, Version};
use routing::{Plan, Routing};
use write::is_blind;

#[cfg(test)]
mod batch_tests;
mod read;
mod read_many;
mod repair;
mod routing;
#[cfg(test)]
mod tests;
mod write;
mod write_many;

/// Why a quorum was not reached: what was needed, what answered, and why
/// each other replica did not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct QuorumError {
    /// `"read"` or `"write"`.
    pub op: &'static str,
    /// Replicas that had to answer.
    pub needed: usize,
    /// Replicas that did.
    pub acked: usize,
    /// Each failed replica and why.
    pub causes: Vec<(String, String)>,
    /// True when a write may have been applied on some replicas anyway.
    pub may_have_applied: bool,
}

impl QuorumError {
    fn describe(&self) -> String {
        let causes: Vec<String> = self
            .causes
            .iter()
            .map(|(node, why)| format!("{node}: {why}"))
            .collect();
        let mut text = format!(
            "{} needed {} replicas, {} answered; {}",
            self.op,
            self.needed,
            self.acked,
            causes.join(", ")
        );
        if self.may_have_applied {
            text.push_str("; the write may have been applied on some replicas");
        }
        text
    }
}

/// The settings of a [`QuorumStore`].
pub struct QuorumConfig {
    /// This node's name in the layout.
    pub node_name: String,
    /// This node's id in versions.
    pub node_id: NodeId,
    /// Partition count `Q`.
    pub partitions: u32,
}

/// A [`Store`] that replicates over a cluster.
pub struct QuorumStore<T: Transport> {
    local: Arc<LocalStore>,
    replicas: Replicas<T>,
    me: Arc<str>,
    node_id: NodeId,
    partitions: u32,
    keyspaces: Keyspaces,
    // NOTE: a blocking lock held only to clone the Arc out, never across an await.
    routing: RwLock<Arc<Routing>>,
    /// Bounds the writes still on their way to replicas after the client
    /// was answered.
    late_writes: Arc<tokio::sync::Semaphore>,
    /// Where writes for failed primaries are kept (none: not kept).
    hints: Option<Arc<Hints>>,
    /// Whether gossip says a node is up.
    is_up: Liveness,
    /// Quorum reads so far (samples the background repair).
    reads: std::sync::atomic::AtomicU64,
    /// One read in this many also checks the primaries it did not ask (0: none).
    repair_every: u64,
    /// A read still short of answers after this asks the next primaries too
    /// (None: never).
    speculate_after: Option<std::time::Duration>,
}

/// Whether a node is up, as gossip sees it.
pub type Liveness = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Most writes that may still be reaching their remaining replicas after
/// their client was answered; past it, writes wait for every replica.
pub const MAX_LATE_WRITES: usize = 1024;

/// One quorum read in this many repairs the replicas it did not read, by
/// default. Measured (bench/RESULTS.md): one in ten cost a level-one GET a
/// quarter of its throughput (each sampled read asks `n - r` more replicas).
pub const DEFAULT_REPAIR_EVERY: u64 = 100;

/// One replica's answer, or why there is none.
type ReplicaResult = (Arc<str>, Result<Response, String>);

/// A write call's node, the primary it stood in for (if it did) and its
/// answer, or why there is none.
type WriteResult = (Arc<str>, Option<Arc<str>>, Result<Response, String>);

impl<T: Transport> QuorumStore<T> {
    /// A coordinator over `local` (this node's replica) and `transport`.
    pub fn new(
        config: QuorumConfig,
        local: Arc<LocalStore>,
        transport: Arc<T>,
        layout: Layout,
    ) -> Self {
        let keyspaces = Store::keyspaces(&*local).clone();
        let me: Arc<str> = config.node_name.into();
        Self {
            routing: RwLock::new(Arc::new(Routing::new(layout, &keyspaces, &me))),
            keyspaces,
            replicas: Replicas {
                handler: Arc::new(ReplicaHandler::new(local.clone())),
                transport,
                me: me.clone(),
            },
            local,
            me,
            node_id: config.node_id,
            partitions: config.partitions,
            late_writes: Arc::new(tokio::sync::Semaphore::new(MAX_LATE_WRITES)),
            hints: None,
            is_up: Arc::new(|_| true),
            reads: std::sync::atomic::AtomicU64::new(0),
            repair_every: DEFAULT_REPAIR_EVERY,
            speculate_after: None,
        }
    }

    /// Keeps hints for failed primaries in `hints`.
    pub fn with_hints(mut self, hints: Arc<Hints>) -> Self {
        let handler = ReplicaHandler::new(self.local.clone()).with_hints(hints.clone());
        self.replicas.handler = Arc::new(handler);
        self.hints = Some(hints);
        self
    }

    /// Asks `is_up` whether a node is alive (default: every node is).
    pub fn with_liveness(mut self, is_up: Liveness) -> Self {
        self.is_up = is_up;
        self
    }

    /// After one quorum read in `every` (0: never), reads the primaries it
    /// did not ask in the background and repairs the stale ones.
    pub fn with_background_repair_every(mut self, every: u64) -> Self {
        self.repair_every = every;
        self
    }

    /// A quorum read still short of answers `after` it asked its replicas
    /// asks the next primaries too (Cassandra's speculative retry), once: a
    /// replica that stalls (paused, overloaded, or cut off while gossip
    /// still sees it up) costs a read `after`, not the request timeout.
    /// None (the default): never.
    pub fn with_read_speculation(mut self, after: Option<std::time::Duration>) -> Self {
        self.speculate_after = after;
        self
    }

    /// Installs a newer layout.
    pub fn set_layout(&self, layout: Layout) {
        let routing = Arc::new(Routing::new(layout, &self.keyspaces, &self.me));
        *self.routing.write() = routing;
    }

    /// The permits of the background replica writes and repairs: all
    /// `MAX_LATE_WRITES` are free once none is running (shutdown waits so).
    pub fn background_writes(&self) -> Arc<tokio::sync::Semaphore> {
        self.late_writes.clone()
    }

    /// The layout in force.
    pub fn layout(&self) -> Arc<Layout> {
        self.routing.read().layout.clone()
    }

    /// A new version from this node's clock.
    fn version(&self) -> Version {
        Version {
            timestamp: self.local.hlc().now(),
            node: self.node_id,
        }
    }

    /// Stamps `cmd` with this node's HLC and decides, against `previous`,
    /// the record it writes; `None` when it writes nothing.
    fn stamp(&self, cmd: WriteCmd, previous: Option<&Entry>, now: u64) -> Option<Record> {
        let version = self.version();
        match cmd.evaluate(previous, now) {
            Decision::Skip => None,
            Decision::Put { value, expiry_ms } => Some(Record::value(version, value, expiry_ms)),
            Decision::Delete => Some(Record::tombstone(version)),
        }
    }

    fn required(level: Level, n: usize) -> Result<usize, StoreError> {
        let needed = level.required(n as u32) as usize;
        if needed > n {
            return Err(StoreError::BadLevel(format!(
                "consistency level {level} needs {needed} replicas but the keyspace has n={n}"
            )));
        }
        Ok(needed)
    }

    fn call_replica(
        &self,
        node: Arc<str>,
        request: Request,
    ) -> impl std::future::Future<Output = ReplicaResult> + Send + 'static {
        self.replicas.call(node, request)
    }

    fn unavailable(
        op: &'static str,
        needed: usize,
        good: usize,
        bad: Vec<ReplicaResult>,
        plan: &Plan,
    ) -> StoreError {
        let mut causes: Vec<(String, String)> = bad
            .into_iter()
            .map(|(node, r)| (node.to_string(), r.err().unwrap_or_default()))
            .collect();
        if plan.primaries.len() < plan.n {
            causes.push((
                "layout".into(),
                format!(
                    "only {} nodes hold replicas (n={})",
                    plan.primaries.len(),
                    plan.n
                ),
            ));
        }
        let may_have_applied =
            op == "write" && (good > 0 || causes.iter().any(|(_, why)| why.contains("timed out")));
        StoreError::Unavailable(QuorumError {
            op,
            needed,
            acked: good,
            causes,
            may_have_applied,
        })
    }
}

/// Reaches any replica: this node's own through its [`ReplicaHandler`]
/// (the same code that serves peers, without the network), the others
/// through the transport.
struct Replicas<T> {
    handler: Arc<ReplicaHandler>,
    transport: Arc<T>,
    me: Arc<str>,
}

impl<T> Clone for Replicas<T> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            transport: self.transport.clone(),
            me: self.me.clone(),
        }
    }
}

impl<T: Transport> Replicas<T> {
    /// Sends `request` to `node`: `Err` when it could not be reached, its
    /// answer (possibly a refusal) otherwise.
    ///
    /// The call is boxed once here: fan-outs move it into their sets, and a
    /// transport call future is large (measured: moving it was 9% of a
    /// coordinator's CPU on pipelined writes).
    fn call(&self, node: Arc<str>, request: Request) -> BoxFuture<'static, ReplicaResult> {
        let local = (*node == *self.me).then(|| (self.handler.clone(), self.me.clone()));
        let transport = self.transport.clone();
        Box::pin(async move {
            let result = match local {
                Some((handler, me)) => Ok(handler.handle(&me, request).await),
                None => transport
                    .call(&node, request)
                    .await
                    .map_err(|e: NetError| e.to_string()),
            };
            (node, result)
        })
    }
}

/// Items of a batch (indexes) by the node they go to, in first-seen order.
#[derive(Default)]
struct ByNode(Vec<(Arc<str>, Vec<usize>)>);

impl ByNode {
    /// Files item `index` under `node`.
    fn add(&mut self, node: &Arc<str>, index: usize) {
        match self.0.iter_mut().find(|(n, _)| n == node) {
            Some((_, items)) => items.push(index),
            None => self.0.push((node.clone(), vec![index])),
        }
    }

    /// Each node's items split into requests of at most
    /// [`crate::net::MAX_BATCH_ITEMS`] items and
    /// [`crate::net::MAX_BATCH_BYTES`] (`size` of each), none empty.
    fn requests(self, size: impl Fn(usize) -> usize) -> Vec<(Arc<str>, Vec<usize>)> {
        use crate::net::{MAX_BATCH_BYTES, MAX_BATCH_ITEMS};
        let mut requests = Vec::new();
        for (node, items) in self.0 {
            let mut current: Vec<usize> = Vec::new();
            let mut bytes = 0;
            for index in items {
                let full =
                    current.len() == MAX_BATCH_ITEMS || bytes + size(index) > MAX_BATCH_BYTES;
                if full && !current.is_empty() {
                    requests.push((node.clone(), std::mem::take(&mut current)));
                    bytes = 0;
                }
                bytes += size(index);
                current.push(index);
            }
            if !current.is_empty() {
                requests.push((node, current));
            }
        }
        requests
    }
}

impl<T: Transport> Store for QuorumStore<T> {
    fn keyspaces(&self) -> &Keyspaces {
        &self.keyspaces
    }

    async fn get(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<Entry>, StoreError> {
        let record = self.quorum_read(ks, key, consistency.read).await?;
        Ok(Entry::from_record(record.as_ref(), self.now_ms()))
    }

    async fn get_many(
        &self,
        ks: KeyspaceId,
        keys: &[Bytes],
        consistency: Consistency,
    ) -> Vec<Result<Option<Entry>, StoreError>> {
        let records = self.quorum_read_many(ks, keys, consistency.read).await;
        let now = self.now_ms();
        records
            .into_iter()
            .map(|record| Ok(Entry::from_record(record?.as_ref(), now)))
            .collect()
    }

    async fn write(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        cmd: WriteCmd,
        consistency: Consistency,
    ) -> Result<WriteOutcome, StoreError> {
        let key = Bytes::copy_from_slice(key);
        let now = self.now_ms();
        let previous = if is_blind(&cmd) {
            None
        } else {
            // NOTE: a sloppy write must succeed while any replica answers,
            // so the read it decides on (DEL's count, NX, XX, GET) asks one.
            let level = if consistency.sloppy {
                Level::One
            } else {
                consistency.read
            };
            let record = self.quorum_read(ks, &key, level).await?;
            Entry::from_record(record.as_ref(), now)
        };
        let delete = matches!(cmd, WriteCmd::Delete);
        let (record, applied) = match self.stamp(cmd, previous.as_ref(), now) {
            Some(record) => (record, true),
            // IMPORTANT: a delete writes its tombstone even when the read
            // found no live value (and counts no key deleted): a write that
            // failed its quorum may sit on a replica the read did not ask
            // (its client was told it may have been applied), and would come
            // back through read repair or anti-entropy after this delete
            // answered. Cassandra and Riak write every delete's tombstone too.
            None if delete => {
                metrics::counter!("ringkv_deletes_of_unseen_keys_total").increment(1);
                (Record::tombstone(self.version()), false)
            }
            None => {
                return Ok(WriteOutcome {
                    applied: false,
                    previous,
                });
            }
        };
        self.quorum_write(ks, &key, record, consistency.write, consistency.sloppy)
            .await?;
        Ok(WriteOutcome { applied, previous })
    }

    async fn write_many(
        &self,
        ks: KeyspaceId,
        writes: Vec<(Bytes, WriteCmd)>,
        consistency: Consistency,
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        if !writes.iter().all(|(_, cmd)| is_blind(cmd)) {
            // NOTE: a write that reads first is stamped after its read: one
            // at a time keeps them in order.
            let mut outcomes = Vec::with_capacity(writes.len());
            for (key, cmd) in writes {
                outcomes.push(self.write(ks, &key, cmd, consistency).await);
            }
            return outcomes;
        }
        if consistency.sloppy {
            // NOTE: blind writes are stamped on their first poll, before any
            // await, and join_all polls them in order.
            let each = writes
                .iter()
                .map(|(key, cmd)| self.write(ks, key, cmd.clone(), consistency));
            return futures_util::future::join_all(each).await;
        }
        self.quorum_write_many(ks, writes, consistency.write).await
    }

    async fn dbsize(&self, ks: KeyspaceId) -> Result<u64, StoreError> {
        // NOTE: the keys this node holds a replica of; a cluster-wide count
        // would need every node and still double-count replicas.
        self.local.dbsize(ks).await
    }

    async fn commit(&self) -> Result<(), StoreError> {
        // NOTE: other nodes' replica writes commit before they acknowledge
        // (ReplicaHandler); this node's are written in place by the fan-out
        // and committed here, once per batch of requests.
        self.local.commit().await
    }

    fn replication(&self, ks: KeyspaceId) -> u32 {
        self.keyspaces.get(ks).n
    }

    fn stats(&self) -> StoreStats {
        let layout = self.layout();
        let owned = layout
            .index_of(&self.me)
            .and_then(|i| layout.owned_counts().get(usize::from(i)).copied())
            .unwrap_or(0);
        let cluster = ClusterStats {
            nodes: layout.nodes().len(),
            nodes_up: layout
                .nodes()
                .iter()
                .filter(|n| (self.is_up)(&n.name))
                .count(),
            layout_version: layout.version(),
            partitions: layout.partitions(),
            partitions_owned: owned,
            hints_queued: self.hints.as_ref().map_or(0, |h| h.queued()),
        };
        let mut stats = self.local.stats();
        let hints_error = self.hints.as_ref().and_then(|h| h.write_error());
        stats.write_error = stats
            .write_error
            .or(hints_error.map(|e| format!("hint store: {e}")));
        StoreStats {
            cluster: Some(cluster),
            ..stats
        }
    }

    fn now_ms(&self) -> u64 {
        self.local.now_ms()
    }

    fn concurrent_requests(&self) -> bool {
        true
    }

    async fn inspect(&self, ks: KeyspaceId, key: &[u8]) -> Result<Vec<ReplicaView>, StoreError> {
        let plan = self.plan(ks, key)?;
        let read = Request::Read {
            keyspace: self.keyspaces.get(ks).name.clone(),
            key: Bytes::copy_from_slice(key),
        };
        let reads = plan
            .primaries
            .iter()
            .map(|node| self.call_replica(node.clone(), read.clone()));
        Ok(futures_util::future::join_all(reads)
            .await
            .into_iter()
            .map(|(node, result)| ReplicaView {
                node: node.to_string(),
                held: match result {
                    Ok(Response::Record(raw)) => raw
                        .map(Record::decode)
                        .transpose()
                        .map_err(|e| format!("corrupt record: {e}")),
                    Ok(Response::Error(why)) | Err(why) => Err(why),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                },
            })
            .collect())
    }

    fn placement(&self, ks: KeyspaceId, key: &[u8]) -> Result<Placement, StoreError> {
        let (partition, layout, list) = self.preference(ks, key)?;
        let names = |nodes: &[ring::NodeIndex]| -> Vec<String> {
            nodes
                .iter()
                .filter_map(|i| layout.node(*i).map(|spec| spec.name.clone()))
                .collect()
        };
        Ok(Placement {
            partition,
            primaries: names(&list.primaries),
            fallbacks: names(&list.fallbacks),
        })
    }
}
