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

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use parking_lot::RwLock;

use super::ReplicaHandler;
use super::{
    Consistency, Decision, Entry, ExpiryUpdate, Hints, KeyspaceId, Keyspaces, Level, LocalStore,
    Placement, ReplicaView, SetCondition, Store, StoreError, StoreStats, WriteCmd, WriteOutcome,
};
use crate::net::Handler;
use crate::net::{NetError, Request, Response, Transport};
use crate::ring::{self, Layout};
use crate::version::{Hlc, NodeId, Record, Version};

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

/// The primaries of a key, the nodes that would stand in for them, and the
/// replication factor wanted.
struct Plan {
    primaries: Vec<Arc<str>>,
    fallbacks: Vec<Arc<str>>,
    n: usize,
    /// This node is one of the primaries.
    local: bool,
}

/// A layout and every plan it implies, computed once per layout so the
/// request path does no ring walk and no allocation to find replicas.
struct Routing {
    layout: Arc<Layout>,
    /// Per keyspace: the plan of every partition, or why the layout cannot
    /// place that keyspace's replicas.
    plans: Vec<Result<Vec<Arc<Plan>>, String>>,
}

impl Routing {
    fn new(layout: Layout, keyspaces: &Keyspaces, me: &str) -> Self {
        let plans = keyspaces
            .iter()
            .map(|config| {
                let n = config.n as usize;
                (0..layout.partitions())
                    .map(|partition| {
                        let list = layout
                            .preference_list(partition as ring::PartitionId, n)
                            .map_err(|e| e.to_string())?;
                        let names = |nodes: &[ring::NodeIndex]| -> Vec<Arc<str>> {
                            nodes
                                .iter()
                                .filter_map(|i| {
                                    layout.node(*i).map(|spec| Arc::from(spec.name.as_str()))
                                })
                                .collect()
                        };
                        let primaries = names(&list.primaries);
                        Ok(Arc::new(Plan {
                            local: primaries.iter().any(|p| **p == *me),
                            primaries,
                            fallbacks: names(&list.fallbacks),
                            n,
                        }))
                    })
                    .collect()
            })
            .collect();
        Self {
            layout: Arc::new(layout),
            plans,
        }
    }
}

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

    /// The key's partition, the layout in force and its preference list for
    /// the keyspace's `n`.
    fn preference(
        &self,
        ks: KeyspaceId,
        key: &[u8],
    ) -> Result<(ring::PartitionId, Arc<Layout>, ring::PreferenceList), StoreError> {
        let config = self.keyspaces.get(ks);
        let partition = ring::partition_of(&config.name, key, self.partitions);
        let layout = self.layout();
        let list = layout
            .preference_list(partition, config.n as usize)
            .map_err(|e| StoreError::Layout(e.to_string()))?;
        Ok((partition, layout, list))
    }

    fn plan(&self, ks: KeyspaceId, key: &[u8]) -> Result<Arc<Plan>, StoreError> {
        self.plan_hashed(ks, ring::key_hash(&self.keyspaces.get(ks).name, key))
    }

    /// [`Self::plan`] for a key whose [`ring::key_hash`] is `hash`.
    fn plan_hashed(&self, ks: KeyspaceId, hash: u64) -> Result<Arc<Plan>, StoreError> {
        let partition = ring::partition_of_hash(hash, self.partitions);
        let routing = self.routing.read();
        let plans = routing.plans[ks]
            .as_ref()
            .map_err(|e| StoreError::Layout(e.clone()))?;
        plans
            .get(usize::from(partition))
            .cloned()
            .ok_or_else(|| StoreError::Layout(format!("no partition {partition} in the layout")))
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

    /// Asks `needed` primaries for `request` (this node first, then those
    /// gossip says are up) and returns once `needed` answered well, or every
    /// primary was tried: one more replica is asked for each that fails, so
    /// a healthy read costs `r` requests, not `n`.
    async fn read_fan_out(
        &self,
        ks: KeyspaceId,
        hash: u64,
        key: &Bytes,
        primaries: &[Arc<str>],
        needed: usize,
    ) -> (Vec<(Arc<str>, Option<Record>)>, Vec<ReplicaResult>) {
        let mut order: Vec<Arc<str>> = primaries.to_vec();
        // NOTE: the local replica answers without a network round trip, and
        // a node gossip reports down would only cost a timeout.
        order.sort_by_cached_key(|node| {
            (
                **node != *self.me,
                **node != *self.me && !(self.is_up)(node),
            )
        });
        let mut waiting = order.into_iter().peekable();
        let (mut good, mut bad) = (Vec::with_capacity(needed), Vec::new());
        // NOTE: this node's replica is read in place: no task, and no
        // encoding of the record to decode it again.
        if let Some(me) = waiting.next_if(|node| **node == *self.me) {
            match self.read_own(ks, hash, key) {
                Ok(record) => good.push((me, record)),
                Err(why) => bad.push((me, Err(why))),
            }
        }
        if good.len() >= needed {
            return (good, bad);
        }
        let request = Request::Read {
            keyspace: self.keyspaces.get(ks).name.clone(),
            key: key.clone(),
        };
        if needed - good.len() == 1 {
            // NOTE: one answer missing (a quorum read with n = 3): the others
            // are asked one at a time, as the set below would, without it.
            for node in waiting {
                let (node, result) = self.call_replica(node, request.clone()).await;
                match accept_record(self.local.hlc(), result) {
                    Ok(record) => {
                        good.push((node, record));
                        break;
                    }
                    Err(why) => bad.push((node, Err(why))),
                }
            }
            return (good, bad);
        }
        let mut calls = FuturesUnordered::new();
        for node in waiting.by_ref().take(needed - good.len()) {
            calls.push(self.call_replica(node, request.clone()));
        }
        while good.len() < needed {
            let Some((node, result)) = calls.next().await else {
                break;
            };
            match accept_record(self.local.hlc(), result) {
                Ok(record) => good.push((node, record)),
                Err(why) => {
                    bad.push((node, Err(why)));
                    if let Some(next) = waiting.next() {
                        calls.push(self.call_replica(next, request.clone()));
                    }
                }
            }
        }
        (good, bad)
    }

    /// Sends the write to every primary at once and returns once `needed`
    /// acknowledged, or all failed. A primary that fails gets a hint: with
    /// `sloppy`, a fallback stands in for it (its stored hint counts toward
    /// `needed`; a primary gossip reports down is not even tried); otherwise,
    /// or when no fallback takes it, this node keeps the hint, uncounted.
    /// Unfinished calls keep running in the background and hint on failure
    /// too, so every primary gets the write sooner or later. This node's
    /// own replica is written in place, made durable by the caller's
    /// [`Store::commit`] like a local write.
    async fn write_fan_out(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        plan: &Plan,
        decoded: Record,
        needed: usize,
        sloppy: bool,
    ) -> (usize, Vec<ReplicaResult>, bool) {
        let record = decoded.encode();
        let keyspace = self.keyspaces.get(ks).name.clone();
        let hint_for = |target: &Arc<str>| Request::Hint {
            target: target.to_string(),
            keyspace: keyspace.clone(),
            key: key.clone(),
            record: record.clone(),
        };
        let write = Request::Write {
            keyspace: keyspace.clone(),
            key: key.clone(),
            record: record.clone(),
        };
        // NOTE: lazy: liveness is asked only when a primary fails.
        let mut stand_ins = plan
            .fallbacks
            .iter()
            .filter(|node| ***node == *self.me || (self.is_up)(node))
            .cloned();
        let mut calls = FuturesUnordered::new();
        let mut bad = Vec::new();
        let mut unhinted: Vec<Arc<str>> = Vec::new();
        let mut stand_in_calls = 0;
        let mut good = 0;
        for primary in &plan.primaries {
            if **primary == *self.me {
                // NOTE: a refusal here (clock skew, engine error) is this
                // node's own: a hint for itself would be refused too.
                match self.local.merge_stored(ks, key, decoded.clone()) {
                    Ok(()) => good += 1,
                    Err(e) => bad.push((primary.clone(), Err(e.to_string()))),
                }
            } else if sloppy && !(self.is_up)(primary) {
                bad.push((primary.clone(), Err("down (gossip)".to_string())));
                match stand_ins.next() {
                    Some(node) => {
                        stand_in_calls += 1;
                        calls.push(self.call_write(node, Some(primary.clone()), hint_for(primary)));
                    }
                    None => unhinted.push(primary.clone()),
                }
            } else {
                calls.push(self.call_write(primary.clone(), None, write.clone()));
            }
        }
        while good < needed {
            let Some((node, stand_in_for, result)) = calls.next().await else {
                break;
            };
            let (why, refused) = match result {
                Ok(Response::Written) => {
                    good += 1;
                    continue;
                }
                Err(why) => (why, false),
                Ok(Response::Error(why)) => (why, true),
                Ok(other) => (format!("unexpected answer {other:?}"), true),
            };
            bad.push((node.clone(), Err(why)));
            if refused && stand_in_for.is_none() {
                // NOTE: the primary itself answered and refused the write
                // (clock skew, unknown keyspace): a hint would be refused too.
                continue;
            }
            let target = stand_in_for.unwrap_or(node);
            match if sloppy { stand_ins.next() } else { None } {
                Some(next) => {
                    stand_in_calls += 1;
                    let request = hint_for(&target);
                    calls.push(self.call_write(next, Some(target), request));
                }
                None => unhinted.push(target),
            }
        }
        // NOTE: a kept or stood-in hint will reach its primary later, so a
        // failed write may still be applied.
        let hinted = !unhinted.is_empty() || stand_in_calls > 0;
        let hints = self.hints.clone();
        let me = self.me.clone();
        let hint_key = key.clone();
        let keep_hint = move |target: &Arc<str>| {
            if let Some(hints) = &hints
                && *target != me
                && let Err(e) = hints.add(target, &keyspace, &hint_key, record.clone())
            {
                tracing::error!(target_node = %target, error = %e, "could not keep a hint");
            }
        };
        for target in &unhinted {
            keep_hint(target);
        }
        let settle = move |(node, stand_in_for, result): WriteResult| match (result, stand_in_for) {
            (Ok(Response::Written), _) => {}
            // A primary's own refusal would refuse its hint too.
            (Ok(_), None) => {}
            (_, stand_in_for) => keep_hint(&stand_in_for.unwrap_or(node)),
        };
        self.finish_late(calls, settle).await;
        (good, bad, hinted)
    }

    /// Lets the calls of an acknowledged write that are still out finish,
    /// handing each answer to `settle`: in place for those already in, in a
    /// background task for the rest, or before returning when too many
    /// writes are still reaching their last replicas.
    async fn finish_late<Call>(
        &self,
        mut calls: FuturesUnordered<Call>,
        settle: impl Fn(WriteResult) + Send + 'static,
    ) where
        Call: std::future::Future<Output = WriteResult> + Send + 'static,
    {
        // NOTE: answers that came with the last acknowledgement (common in
        // a pipeline) need no background task.
        while let Some(Some(answer)) = calls.next().now_or_never() {
            settle(answer);
        }
        if calls.is_empty() {
            return;
        }
        let finish = async move {
            while let Some(answer) = calls.next().await {
                settle(answer);
            }
        };
        match self.late_writes.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    finish.await;
                    drop(permit);
                });
            }
            Err(_) => {
                // NOTE: too many writes are still reaching their last
                // replicas: finish this one before answering, so an
                // overloaded cluster slows its clients down instead of
                // piling up (or dropping) replica writes.
                metrics::counter!("ringkv_late_writes_waited_total").increment(1);
                finish.await;
            }
        }
    }

    /// One write call: to `node`, for itself or standing in for a primary.
    fn call_write(
        &self,
        node: Arc<str>,
        stand_in_for: Option<Arc<str>>,
        request: Request,
    ) -> impl std::future::Future<Output = WriteResult> + Send + 'static {
        let call = self.call_replica(node, request);
        async move {
            let (node, result) = call.await;
            (node, stand_in_for, result)
        }
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

    /// Reads `key` at `level`: the merge of the records of `r` primaries.
    async fn quorum_read(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        level: Level,
    ) -> Result<Option<Record>, StoreError> {
        let hash = ring::key_hash(&self.keyspaces.get(ks).name, key);
        let plan = self.plan_hashed(ks, hash)?;
        let needed = Self::required(level, plan.n)?;
        if needed == 1
            && plan.local
            && let Ok(record) = self.read_own(ks, hash, key)
        {
            // NOTE: a read of one replica that this node holds needs no
            // fan-out: it is most reads at level one, and the hot path there.
            if plan.primaries.len() > 1 && self.sample_background_repair() {
                let others = plan
                    .primaries
                    .iter()
                    .filter(|p| ***p != *self.me)
                    .cloned()
                    .collect();
                let known = vec![(self.me.clone(), record.clone())];
                self.repair_in_background(ks, Bytes::copy_from_slice(key), known, others);
            }
            return Ok(record);
        }
        let key = &Bytes::copy_from_slice(key);
        let (good, bad) = self
            .read_fan_out(ks, hash, key, &plan.primaries, needed)
            .await;
        if good.len() < needed {
            return Err(Self::unavailable("read", needed, good.len(), bad, &plan));
        }
        let mut merged: Option<Record> = None;
        let mut seen: Vec<(Arc<str>, Option<Record>)> = Vec::with_capacity(good.len());
        for (node, record) in good {
            if let Some(record) = &record {
                merged = Some(match merged {
                    Some(m) => m.merge(record.clone()),
                    None => record.clone(),
                });
            }
            seen.push((node, record));
        }
        // NOTE: replicas that disagree suggest the unread ones are stale
        // too, so they are always checked; otherwise one read in
        // `repair_every` checks them.
        let disagree = seen
            .iter()
            .any(|(_, record)| record.as_ref() != merged.as_ref());
        let background = (seen.len() < plan.primaries.len()
            && (disagree || self.sample_background_repair()))
        .then(|| {
            let unread: Vec<Arc<str>> = plan
                .primaries
                .iter()
                .filter(|p| !seen.iter().any(|(node, _)| node == *p))
                .cloned()
                .collect();
            // NOTE: the replicas read hold `merged` once repaired below.
            let known: Vec<(Arc<str>, Option<Record>)> = seen
                .iter()
                .map(|(node, _)| (node.clone(), merged.clone()))
                .collect();
            (known, unread)
        });
        if let Some(merged) = &merged {
            self.read_repair(ks, key, merged, seen).await;
        }
        if let Some((known, unread)) = background {
            self.repair_in_background(ks, key.clone(), known, unread);
        }
        Ok(merged)
    }

    /// This node's replica of `key` (whose [`ring::key_hash`] is `hash`),
    /// taken as another replica's answer is: refused if it does not decode or
    /// is too far ahead of the clock (a clock that stepped back), and
    /// observed by the HLC, so a write decided on it is stamped after it.
    fn read_own(&self, ks: KeyspaceId, hash: u64, key: &[u8]) -> Result<Option<Record>, String> {
        let record = self
            .local
            .read_stored_hashed(ks, hash, key)
            .map_err(|e| e.to_string())?;
        observed(self.local.hlc(), record)
    }

    /// True for the reads (one in `repair_every`) whose unread replicas are
    /// checked in the background.
    fn sample_background_repair(&self) -> bool {
        self.repair_every != 0
            && self
                .reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .is_multiple_of(self.repair_every)
    }

    /// Reads the primaries a quorum read did not ask and writes `merged` (or
    /// a newer record one of them holds) back to the stale ones, after the
    /// client was answered. Skipped when too many background writes are
    /// already running: anti-entropy repairs what this misses.
    fn repair_in_background(
        &self,
        ks: KeyspaceId,
        key: Bytes,
        known: Vec<(Arc<str>, Option<Record>)>,
        unread: Vec<Arc<str>>,
    ) {
        let Ok(permit) = self.late_writes.clone().try_acquire_owned() else {
            return;
        };
        let keyspace = self.keyspaces.get(ks).name.clone();
        let read = Request::Read {
            keyspace: keyspace.clone(),
            key: key.clone(),
        };
        let reads: Vec<_> = unread
            .into_iter()
            .map(|node| self.call_replica(node, read.clone()))
            .collect();
        let repairer = self.repairer();
        tokio::spawn(async move {
            let mut seen = known;
            for (node, result) in futures_util::future::join_all(reads).await {
                match accept_record(repairer.local.hlc(), result) {
                    Ok(record) => seen.push((node, record)),
                    Err(why) => {
                        tracing::debug!(peer = %node, %why, "background repair skips a replica")
                    }
                }
            }
            let merged = seen
                .iter()
                .filter_map(|(_, record)| record.clone())
                .reduce(Record::merge);
            if let Some(merged) = merged {
                repairer.repair(keyspace, key, &merged, seen).await;
            }
            drop(permit);
        });
    }

    /// Writes the merged record back to the replicas read that hold an older
    /// version (or none), and waits for them, so a later quorum read cannot
    /// return anything older than this one did (monotonic reads). A failed
    /// repair is counted and left to a later read.
    async fn read_repair(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        merged: &Record,
        seen: Vec<(Arc<str>, Option<Record>)>,
    ) {
        let keyspace = self.keyspaces.get(ks).name.clone();
        self.repairer()
            .repair(keyspace, key.clone(), merged, seen)
            .await;
    }

    fn repairer(&self) -> Repairer<T> {
        Repairer {
            local: self.local.clone(),
            replicas: self.replicas.clone(),
        }
    }

    /// Writes `record` to the primaries of `key` at `level`.
    async fn quorum_write(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        record: Record,
        level: Level,
        sloppy: bool,
    ) -> Result<(), StoreError> {
        let plan = self.plan(ks, key)?;
        let needed = Self::required(level, plan.n)?;
        let (good, bad, hinted) = self
            .write_fan_out(ks, key, &plan, record, needed, sloppy)
            .await;
        if good < needed {
            let mut error = Self::unavailable("write", needed, good, bad, &plan);
            if let StoreError::Unavailable(q) = &mut error {
                q.may_have_applied |= hinted;
            }
            return Err(error);
        }
        Ok(())
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

/// What read repair needs of the coordinator, owned, so it can also run
/// after the client was answered.
struct Repairer<T> {
    local: Arc<LocalStore>,
    replicas: Replicas<T>,
}

impl<T: Transport> Repairer<T> {
    /// Writes `merged` to every replica in `seen` that holds something else.
    async fn repair(
        &self,
        keyspace: String,
        key: Bytes,
        merged: &Record,
        seen: Vec<(Arc<str>, Option<Record>)>,
    ) {
        let stale: Vec<Arc<str>> = seen
            .into_iter()
            .filter(|(_, record)| record.as_ref() != Some(merged))
            .map(|(node, _)| node)
            .collect();
        if stale.is_empty() {
            return;
        }
        let request = Request::Write {
            keyspace,
            key,
            record: merged.encode(),
        };
        let repairs = stale
            .into_iter()
            .map(|node| self.replicas.call(node, request.clone()));
        for (node, result) in futures_util::future::join_all(repairs).await {
            match result {
                Ok(Response::Written) => {
                    metrics::counter!("ringkv_read_repairs_total").increment(1)
                }
                Ok(other) => tracing::warn!(peer = %node, response = ?other, "read repair refused"),
                Err(error) => {
                    metrics::counter!("ringkv_read_repair_failures_total").increment(1);
                    tracing::debug!(peer = %node, %error, "read repair failed");
                }
            }
        }
    }
}

/// A replica's answer to a read as a record, or why it does not count:
/// an error, an answer that is not a record, a record that does not
/// decode, or a version too far ahead of this node's clock (refused and
/// logged by `observe`, never returned or spread by repair). The HLC
/// advances past every version accepted, so a write this node stamps
/// after reading orders after what it read.
fn accept_record(hlc: &Hlc, result: Result<Response, String>) -> Result<Option<Record>, String> {
    let raw = match result {
        Ok(Response::Record(raw)) => raw,
        Ok(Response::Error(why)) | Err(why) => return Err(why),
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
    };
    let Some(raw) = raw else {
        return Ok(None);
    };
    let record = Record::decode(raw).map_err(|e| format!("corrupt record: {e}"))?;
    observed(hlc, Some(record))
}

/// `record`, refused if its version is too far ahead of `hlc`, which
/// otherwise advances past it: how any replica's record is taken, this
/// node's own included.
fn observed(hlc: &Hlc, record: Option<Record>) -> Result<Option<Record>, String> {
    if let Some(record) = &record {
        hlc.observe(record.version.timestamp)
            .map_err(|e| e.to_string())?;
    }
    Ok(record)
}

/// True when a command's effect does not depend on the current value, so
/// the coordinator can skip the read.
fn is_blind(cmd: &WriteCmd) -> bool {
    matches!(
        cmd,
        WriteCmd::Set {
            condition: SetCondition::Always,
            expiry: ExpiryUpdate::Clear | ExpiryUpdate::At(_),
            ..
        }
    )
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
        let version = Version {
            timestamp: self.local.hlc().now(),
            node: self.node_id,
        };
        let record = match cmd.evaluate(previous.as_ref(), now) {
            Decision::Skip => {
                return Ok(WriteOutcome {
                    applied: false,
                    previous,
                });
            }
            Decision::Put { value, expiry_ms } => Record::value(version, value, expiry_ms),
            Decision::Delete => Record::tombstone(version),
        };
        self.quorum_write(ks, &key, record, consistency.write, consistency.sloppy)
            .await?;
        Ok(WriteOutcome {
            applied: true,
            previous,
        })
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
        self.local.stats()
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

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::config::{FsyncPolicy, KeyspaceConfig};
    use crate::coordinator::{LocalStoreConfig, ReplicaHandler};
    use crate::net::{Handler, PeerId};
    use crate::ring::NodeSpec;
    use crate::storage::MemoryEngine;
    use crate::version::{Hlc, ManualClock};

    /// Calls replicas in-process; nodes in `down` are unreachable.
    struct TestNet {
        from: String,
        replicas: Arc<HashMap<String, Arc<ReplicaHandler>>>,
        down: Arc<parking_lot::Mutex<HashSet<String>>>,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Transport for TestNet {
        async fn call(&self, to: &PeerId, request: Request) -> Result<Response, NetError> {
            if matches!(request, Request::Read { .. }) {
                self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            if self.down.lock().contains(to) {
                return Err(NetError::Unreachable("connection refused".into()));
            }
            let handler = self
                .replicas
                .get(to)
                .ok_or_else(|| NetError::UnknownPeer(to.into()))?;
            Ok(handler.handle(&self.from, request).await)
        }
    }

    struct Cluster {
        coordinators: Vec<QuorumStore<TestNet>>,
        down: Arc<parking_lot::Mutex<HashSet<String>>>,
        remote_reads: Arc<std::sync::atomic::AtomicUsize>,
        /// Nodes gossip reports down (a subset of `down`, or not).
        gossip_down: Arc<parking_lot::Mutex<HashSet<String>>>,
        stores: Vec<Arc<LocalStore>>,
        hints: Vec<Arc<Hints>>,
        replicas: Arc<HashMap<String, Arc<ReplicaHandler>>>,
        /// Every node's wall clock (one, so tests control time).
        clock: Arc<ManualClock>,
    }

    impl Cluster {
        /// A transport from node `i`, as hint delivery uses it.
        fn net_from(&self, i: usize) -> TestNet {
            TestNet {
                from: format!("n{}", i + 1),
                replicas: self.replicas.clone(),
                down: self.down.clone(),
                reads: self.remote_reads.clone(),
            }
        }

        fn index(name: &str) -> usize {
            name[1..].parse::<usize>().unwrap() - 1
        }

        /// What node `name` stores for `key`.
        fn stored(&self, name: &str, key: &[u8]) -> Option<Record> {
            self.stores[Self::index(name)].read_stored(0, key).unwrap()
        }

        /// Stores on node `i`, behind its skew guard, a version of `key` ten
        /// hours ahead of the shared clock.
        fn plant_future_record(&self, i: usize, key: &[u8]) {
            let partition = ring::partition_of("default", key, 64);
            let storage_key = crate::storage::keys::encode(partition, "default", key);
            let future = Record::value(
                Version {
                    timestamp: crate::version::Timestamp::from_ms(1_000_000 + 36_000_000),
                    node: i as NodeId,
                },
                Bytes::from_static(b"from-the-future"),
                None,
            );
            self.stores[i]
                .engine()
                .put(storage_key.into(), future.encode())
                .unwrap();
        }

        /// Lets background replica writes and hinting finish.
        async fn settle(&self) {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        }
    }

    fn cluster(nodes: usize) -> Cluster {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
        let stores: Vec<Arc<LocalStore>> = names
            .iter()
            .enumerate()
            .map(|(i, _)| {
                Arc::new(
                    LocalStore::open(LocalStoreConfig {
                        engine: Arc::new(MemoryEngine::new()),
                        hlc: Arc::new(Hlc::new(clock.clone(), 60_000)),
                        node: i as NodeId,
                        node_name: names[i].clone(),
                        partitions: 64,
                        keyspaces: Keyspaces::new(vec![KeyspaceConfig::default()]),
                        fsync: FsyncPolicy::No,
                    })
                    .unwrap(),
                )
            })
            .collect();
        let hints: Vec<Arc<Hints>> = stores
            .iter()
            .map(|store| {
                let config = crate::coordinator::HintConfig {
                    window_ms: 3_600_000,
                    max_bytes_per_target: 1 << 20,
                    sync_each: false,
                };
                let engine = Arc::new(MemoryEngine::new());
                Arc::new(Hints::open(engine, config, store.hlc().clone()).unwrap())
            })
            .collect();
        let replicas: Arc<HashMap<_, _>> = Arc::new(
            names
                .iter()
                .zip(stores.iter().zip(&hints))
                .map(|(n, (s, h))| {
                    let handler = ReplicaHandler::new(s.clone()).with_hints(h.clone());
                    (n.clone(), Arc::new(handler))
                })
                .collect(),
        );
        let layout = Layout::initial(64, names.iter().map(NodeSpec::new).collect()).unwrap();
        let down = Arc::new(parking_lot::Mutex::new(HashSet::new()));
        let gossip_down = Arc::new(parking_lot::Mutex::new(HashSet::new()));
        let remote_reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let coordinators = names
            .iter()
            .zip(&stores)
            .enumerate()
            .map(|(i, (name, store))| {
                let net = TestNet {
                    from: name.clone(),
                    replicas: replicas.clone(),
                    down: down.clone(),
                    reads: remote_reads.clone(),
                };
                let config = QuorumConfig {
                    node_name: name.clone(),
                    node_id: i as NodeId,
                    partitions: 64,
                };
                let live = gossip_down.clone();
                QuorumStore::new(config, store.clone(), Arc::new(net), layout.clone())
                    .with_hints(hints[i].clone())
                    .with_liveness(Arc::new(move |node: &str| !live.lock().contains(node)))
                    .with_background_repair_every(0)
            })
            .collect();
        Cluster {
            coordinators,
            down,
            remote_reads,
            gossip_down,
            stores,
            hints,
            replicas,
            clock,
        }
    }

    fn set(value: &'static [u8]) -> WriteCmd {
        WriteCmd::Set {
            value: Bytes::from_static(value),
            expiry: ExpiryUpdate::Clear,
            condition: SetCondition::Always,
        }
    }

    fn levels(read: Level, write: Level) -> Consistency {
        Consistency {
            read,
            write,
            sloppy: false,
        }
    }

    const QUORUM: Consistency = Consistency {
        read: Level::Quorum,
        write: Level::Quorum,
        sloppy: false,
    };

    /// The memory engine, counting flushes as if it were durable.
    #[derive(Default)]
    struct CountingEngine {
        inner: MemoryEngine,
        flushes: std::sync::atomic::AtomicUsize,
        /// Every flush fails (a full or broken disk).
        broken: std::sync::atomic::AtomicBool,
    }

    impl crate::storage::Engine for CountingEngine {
        fn get(&self, key: &[u8]) -> Result<Option<Bytes>, crate::storage::StorageError> {
            self.inner.get(key)
        }
        fn put(&self, key: Bytes, value: Bytes) -> Result<(), crate::storage::StorageError> {
            self.inner.put(key, value)
        }
        fn remove(&self, key: &[u8]) -> Result<(), crate::storage::StorageError> {
            self.inner.remove(key)
        }
        fn scan(
            &self,
            start: &[u8],
            end: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<crate::storage::KeyValue>, crate::storage::StorageError> {
            self.inner.scan(start, end, limit)
        }
        fn flush(
            &self,
            _durability: crate::storage::Durability,
        ) -> Result<(), crate::storage::StorageError> {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::storage::StorageError::Task("disk on fire".into()));
            }
            Ok(())
        }
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn kind(&self) -> &'static str {
            "counting"
        }
    }

    /// A one-node coordinator over `engine`, the only replica of every key.
    fn lone_coordinator(engine: Arc<CountingEngine>) -> (QuorumStore<TestNet>, Arc<LocalStore>) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = Arc::new(
            LocalStore::open(LocalStoreConfig {
                engine,
                hlc: Arc::new(Hlc::new(clock, 60_000)),
                node: 0,
                node_name: "n1".into(),
                partitions: 64,
                keyspaces: Keyspaces::new(vec![KeyspaceConfig::default()]),
                fsync: FsyncPolicy::No,
            })
            .unwrap(),
        );
        let net = TestNet {
            from: "n1".into(),
            replicas: Arc::new(HashMap::new()),
            down: Default::default(),
            reads: Default::default(),
        };
        let layout = Layout::initial(64, vec![NodeSpec::new("n1")]).unwrap();
        let config = QuorumConfig {
            node_name: "n1".into(),
            node_id: 0,
            partitions: 64,
        };
        let coordinator = QuorumStore::new(config, store.clone(), Arc::new(net), layout);
        (coordinator, store)
    }

    #[tokio::test]
    async fn the_coordinators_own_replica_write_is_flushed_by_commit() {
        // NOTE: the coordinator writes its own replica in place and relies
        // on the caller's commit (once per batch) to make it durable.
        let engine = Arc::new(CountingEngine::default());
        let (coordinator, store) = lone_coordinator(engine.clone());
        let one = levels(Level::One, Level::One);
        coordinator.write(0, b"k", set(b"v"), one).await.unwrap();
        let before = engine.flushes.load(std::sync::atomic::Ordering::SeqCst);
        coordinator.commit().await.unwrap();
        let after = engine.flushes.load(std::sync::atomic::Ordering::SeqCst);
        assert!(after > before, "commit flushed the local replica write");
        assert!(store.read_stored(0, b"k").unwrap().is_some());
    }

    #[tokio::test]
    async fn a_cluster_write_whose_commit_fails_is_never_acknowledged() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let engine = Arc::new(CountingEngine::default());
        engine
            .broken
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (coordinator, _store) = lone_coordinator(engine);
        let config = crate::resp::RespConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            requirepass: None,
            max_key_bytes: 1024,
            max_value_bytes: 1024,
            decode_limits: crate::resp::codec::DecodeLimits::default(),
            max_connections: 10,
            max_reply_buffer_bytes: 1 << 20,
            node_name: "n1".into(),
            fsync: FsyncPolicy::No,
            engine: "counting",
        };
        let server = crate::resp::RespServer::bind(config, Arc::new(coordinator))
            .await
            .unwrap();
        let handle = server.spawn().unwrap();
        let mut client = tokio::net::TcpStream::connect(handle.local_addr())
            .await
            .unwrap();
        client.write_all(b"KV.PUT k v W one\r\n").await.unwrap();
        let mut reply = Vec::new();
        let wait = std::time::Duration::from_secs(10);
        tokio::time::timeout(wait, client.read_to_end(&mut reply))
            .await
            .expect("the connection is closed")
            .unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("-ERR persistence failure"), "{reply:?}");
        assert!(!reply.contains("+OK"), "{reply:?}");
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn a_write_for_a_down_primary_is_hinted_and_delivered_when_it_returns() {
        let c = cluster(3);
        c.down.lock().insert("n3".into());
        c.coordinators[0]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap();
        c.settle().await;
        assert_eq!(
            c.hints[0].queues()["n3"].hints,
            1,
            "the coordinator keeps the hint"
        );
        assert_eq!(c.stored("n3", b"k"), None);
        let net = c.net_from(0);
        let report = c.hints[0].deliver("n3", &net, 100).await.unwrap();
        assert_eq!(report.delivered, 0, "still down");
        c.down.lock().clear();
        let report = c.hints[0].deliver("n3", &net, 100).await.unwrap();
        assert_eq!(report.delivered, 1);
        assert_eq!(c.stored("n3", b"k"), c.stored("n1", b"k"));
        assert!(c.stored("n3", b"k").is_some());
        assert_eq!(c.hints[0].queues()["n3"].hints, 0);
        assert!(c.hints[1].queues().is_empty() && c.hints[2].queues().is_empty());
    }

    #[tokio::test]
    async fn a_sloppy_write_counts_hinted_copies_on_fallbacks() {
        let c = cluster(5);
        let placement = c.coordinators[0].placement(0, b"k").unwrap();
        let coordinator = Cluster::index(&placement.primaries[0]);
        let lost: Vec<String> = placement.primaries[1..].to_vec();
        c.down.lock().extend(lost.iter().cloned());
        // One lost primary is known down (not even tried), one only fails.
        c.gossip_down.lock().insert(lost[0].clone());
        let strict = c.coordinators[coordinator]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap_err();
        assert!(
            strict.to_string().contains("needed 2 replicas, 1 answered"),
            "{strict}"
        );
        c.settle().await;
        let sloppy = Consistency {
            sloppy: true,
            ..QUORUM
        };
        c.coordinators[coordinator]
            .write(0, b"k", set(b"w"), sloppy)
            .await
            .unwrap();
        c.settle().await;
        // The known-down primary's copy went straight to the first fallback
        // and counted; the other's hint is on the next fallback or, if the
        // quorum was met first, on the coordinator.
        let queues = c.hints[Cluster::index(&placement.fallbacks[0])].queues();
        assert_eq!(queues.len(), 1, "{queues:?}");
        assert_eq!(queues[&lost[0]].hints, 1, "{queues:?}");
        for target in &lost {
            assert_eq!(c.stored(target, b"k"), None);
        }
        let replicas = c.coordinators[coordinator].inspect(0, b"k").await.unwrap();
        let states: Vec<bool> = replicas.iter().map(|r| r.held.is_ok()).collect();
        assert_eq!(states, [true, false, false], "{replicas:?}");

        c.down.lock().clear();
        c.gossip_down.lock().clear();
        for (from, hints) in c.hints.iter().enumerate() {
            for target in hints.targets() {
                let report = hints
                    .deliver(&target, &c.net_from(from), 100)
                    .await
                    .unwrap();
                assert_eq!(report.failed, None);
            }
        }
        let all = levels(Level::All, Level::All);
        for coordinator in &c.coordinators {
            let got = coordinator.get(0, b"k", all).await.unwrap();
            assert_eq!(got.unwrap().value, "w");
        }
        let replicas = c.coordinators[0].inspect(0, b"k").await.unwrap();
        let first = replicas[0].held.clone().unwrap();
        assert!(first.is_some());
        assert!(
            replicas.iter().all(|r| r.held == Ok(first.clone())),
            "{replicas:?}"
        );
    }

    #[tokio::test]
    async fn a_sloppy_delete_works_with_one_primary_left() {
        let c = cluster(5);
        let placement = c.coordinators[0].placement(0, b"k").unwrap();
        let coordinator = Cluster::index(&placement.primaries[0]);
        c.coordinators[coordinator]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap();
        c.down
            .lock()
            .extend(placement.primaries[1..].iter().cloned());
        let sloppy = Consistency {
            sloppy: true,
            ..QUORUM
        };
        let strict = c.coordinators[coordinator]
            .write(0, b"k", WriteCmd::Delete, QUORUM)
            .await;
        assert!(
            strict.is_err(),
            "the strict read before DEL needs 2 replicas"
        );
        let out = c.coordinators[coordinator]
            .write(0, b"k", WriteCmd::Delete, sloppy)
            .await
            .unwrap();
        assert!(out.applied, "DEL saw the value on the live primary");
        c.down.lock().clear();
        for (from, hints) in c.hints.iter().enumerate() {
            for target in hints.targets() {
                hints
                    .deliver(&target, &c.net_from(from), 100)
                    .await
                    .unwrap();
            }
        }
        let all = levels(Level::All, Level::All);
        assert_eq!(c.coordinators[0].get(0, b"k", all).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failed_write_that_left_hints_says_it_may_have_been_applied() {
        let c = cluster(4);
        let placement = c.coordinators[0].placement(0, b"k").unwrap();
        let outsider = Cluster::index(&placement.fallbacks[0]);
        c.down.lock().extend(placement.primaries.iter().cloned());
        let err = c.coordinators[outsider]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap_err();
        let StoreError::Unavailable(q) = &err else {
            panic!("expected Unavailable, got {err}");
        };
        assert_eq!(q.acked, 0);
        assert!(q.may_have_applied, "hints will apply it: {err}");
        assert_eq!(c.hints[outsider].queues().len(), 3, "one hint per primary");
    }

    #[tokio::test]
    async fn a_replica_answer_from_too_far_in_the_future_does_not_count() {
        let c = cluster(3);
        c.coordinators[0]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap();
        // n2 holds a version ten hours ahead (written behind the skew guard).
        c.plant_future_record(1, b"k");
        // n3 is asked instead of the refused n2; nothing from the future is
        // returned or spread by read repair.
        let got = c.coordinators[0].get(0, b"k", QUORUM).await.unwrap();
        assert_eq!(got.unwrap().value, "v");
        let all = levels(Level::All, Level::All);
        let err = c.coordinators[0].get(0, b"k", all).await.unwrap_err();
        assert!(err.to_string().contains("n2"), "{err}");
        assert_eq!(c.stored("n3", b"k").unwrap().live_value(0).unwrap(), "v");
    }

    #[tokio::test]
    async fn the_coordinators_own_record_from_too_far_in_the_future_does_not_count() {
        let c = cluster(3);
        c.coordinators[0]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap();
        // n1, the coordinator, holds a version ten hours ahead of its clock
        // (as after its clock stepped back).
        c.plant_future_record(0, b"k");
        for level in [Level::One, Level::Quorum] {
            let got = c.coordinators[0].get(0, b"k", levels(level, level)).await;
            assert_eq!(got.unwrap().unwrap().value, "v", "at {level}");
        }
        let all = levels(Level::All, Level::All);
        let err = c.coordinators[0].get(0, b"k", all).await.unwrap_err();
        assert!(err.to_string().contains("n1"), "{err}");
    }

    #[tokio::test]
    async fn replicas_that_disagree_get_the_unread_ones_repaired_in_the_background() {
        let c = cluster(3);
        let all = levels(Level::All, Level::All);
        let one = levels(Level::One, Level::One);
        c.coordinators[0]
            .write(0, b"k", set(b"v"), all)
            .await
            .unwrap();
        c.down.lock().insert("n3".into());
        c.coordinators[0]
            .write(0, b"k", set(b"w"), QUORUM)
            .await
            .unwrap();
        c.down.lock().insert("n2".into());
        c.coordinators[0]
            .write(0, b"k", set(b"x"), one)
            .await
            .unwrap();
        // NOTE: the calls still running after the acknowledgement fail
        // while the nodes are down (and leave hints) whatever their order.
        c.settle().await;
        c.down.lock().clear();
        c.settle().await;
        // n1 holds x, n2 w, n3 v (its hints are never delivered here). A
        // quorum read through n1 reads n1 and n2 (gossip puts n3 last,
        // though it answers): they disagree, so n3 is checked after the
        // answer even with sampling off.
        c.gossip_down.lock().insert("n3".into());
        let got = c.coordinators[0].get(0, b"k", QUORUM).await.unwrap();
        assert_eq!(got.unwrap().value, "x");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(c.stored("n2", b"k"), c.stored("n1", b"k"), "read, repaired");
        assert_eq!(
            c.stored("n3", b"k"),
            c.stored("n1", b"k"),
            "not read, repaired in the background"
        );
    }

    #[tokio::test]
    async fn a_quorum_read_sometimes_repairs_the_replicas_it_did_not_read() {
        let c = cluster(3);
        let one = levels(Level::One, Level::One);
        c.down.lock().extend(["n2".to_string(), "n3".to_string()]);
        c.coordinators[0]
            .write(0, b"k", set(b"v"), one)
            .await
            .unwrap();
        c.down.lock().clear();
        let reader = QuorumStore::new(
            QuorumConfig {
                node_name: "n1".into(),
                node_id: 0,
                partitions: 64,
            },
            c.stores[0].clone(),
            Arc::new(c.net_from(0)),
            c.coordinators[0].layout().as_ref().clone(),
        )
        .with_background_repair_every(1);
        let got = reader.get(0, b"k", one).await.unwrap();
        assert_eq!(got.unwrap().value, "v");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            c.stored("n2", b"k"),
            c.stored("n1", b"k"),
            "repaired in the background"
        );
        assert_eq!(c.stored("n3", b"k"), c.stored("n1", b"k"));
    }

    #[tokio::test]
    async fn a_write_through_any_node_reads_back_through_every_node() {
        let c = cluster(3);
        for (i, writer) in c.coordinators.iter().enumerate() {
            let key = format!("key{i}");
            writer
                .write(0, key.as_bytes(), set(b"v"), QUORUM)
                .await
                .unwrap();
            for reader in &c.coordinators {
                let got = reader.get(0, key.as_bytes(), QUORUM).await.unwrap();
                assert_eq!(got.unwrap().value, "v");
            }
        }
    }

    #[tokio::test]
    async fn one_node_down_quorum_works_all_fails_with_causes() {
        let c = cluster(3);
        c.down.lock().insert("n3".into());
        let coordinator = &c.coordinators[0];
        coordinator.write(0, b"k", set(b"v"), QUORUM).await.unwrap();
        let got = coordinator.get(0, b"k", QUORUM).await.unwrap();
        assert_eq!(got.unwrap().value, "v");
        let all = levels(Level::All, Level::All);
        let err = coordinator
            .write(0, b"k", set(b"w"), all)
            .await
            .unwrap_err();
        let StoreError::Unavailable(q) = &err else {
            panic!("expected Unavailable, got {err}");
        };
        assert_eq!((q.needed, q.acked), (3, 2));
        assert_eq!(q.causes.len(), 1);
        assert_eq!(q.causes[0].0, "n3");
        assert!(q.causes[0].1.contains("unreachable"), "{err}");
        assert!(q.may_have_applied, "two replicas took the write");
        assert!(coordinator.get(0, b"k", all).await.is_err());
    }

    #[tokio::test]
    async fn two_nodes_down_quorum_fails_then_recovers() {
        let c = cluster(3);
        c.down.lock().extend(["n2".to_string(), "n3".to_string()]);
        let err = c.coordinators[0]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("needed 2 replicas, 1 answered"),
            "{err}"
        );
        let one = levels(Level::One, Level::One);
        c.coordinators[0]
            .write(0, b"k", set(b"v"), one)
            .await
            .unwrap();
        c.down.lock().clear();
        // NOTE: n2 never saw n1's versions; without time passing its write
        // could be versioned older (LWW by clock, docs/design/quorum.md).
        c.clock.advance(1);
        c.coordinators[1]
            .write(0, b"k", set(b"w"), QUORUM)
            .await
            .unwrap();
        let got = c.coordinators[2].get(0, b"k", QUORUM).await.unwrap();
        assert_eq!(got.unwrap().value, "w");
    }

    #[tokio::test]
    async fn conditional_writes_and_deletes_see_the_quorum() {
        let c = cluster(3);
        c.coordinators[0]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap();
        let nx = WriteCmd::Set {
            value: Bytes::from_static(b"other"),
            expiry: ExpiryUpdate::Clear,
            condition: SetCondition::IfAbsent,
        };
        let out = c.coordinators[1].write(0, b"k", nx, QUORUM).await.unwrap();
        assert!(!out.applied);
        assert_eq!(out.previous.unwrap().value, "v");
        let del = c.coordinators[2]
            .write(0, b"k", WriteCmd::Delete, QUORUM)
            .await
            .unwrap();
        assert!(del.applied);
        assert_eq!(c.coordinators[0].get(0, b"k", QUORUM).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_read_asks_r_replicas_local_first_and_escalates_on_failure() {
        use std::sync::atomic::Ordering::SeqCst;
        let c = cluster(3);
        c.coordinators[0]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap();
        c.remote_reads.store(0, SeqCst);
        let got = c.coordinators[0].get(0, b"k", QUORUM).await.unwrap();
        assert_eq!(got.unwrap().value, "v");
        assert_eq!(
            c.remote_reads.load(SeqCst),
            1,
            "quorum of 3 = local + one remote"
        );
        let one = levels(Level::One, Level::One);
        c.coordinators[0].get(0, b"k", one).await.unwrap();
        assert_eq!(
            c.remote_reads.load(SeqCst),
            1,
            "level one is served locally"
        );
        // NOTE: the remote primary asked first is the first in preference
        // order after n1.
        let placement = c.coordinators[0].placement(0, b"k").unwrap();
        let first = placement
            .primaries
            .iter()
            .find(|p| p.as_str() != "n1")
            .unwrap()
            .clone();
        c.down.lock().insert(first.clone());
        c.remote_reads.store(0, SeqCst);
        let got = c.coordinators[0].get(0, b"k", QUORUM).await.unwrap();
        assert_eq!(got.unwrap().value, "v", "the other remote answers");
        assert_eq!(c.remote_reads.load(SeqCst), 2);
        c.gossip_down.lock().insert(first);
        c.remote_reads.store(0, SeqCst);
        c.coordinators[0].get(0, b"k", QUORUM).await.unwrap();
        assert_eq!(
            c.remote_reads.load(SeqCst),
            1,
            "a node gossip reports down is asked last"
        );
    }

    #[tokio::test]
    async fn a_quorum_read_repairs_the_stale_replicas_it_read() {
        let c = cluster(3);
        c.down.lock().insert("n2".into());
        c.coordinators[0]
            .write(0, b"k", set(b"new"), QUORUM)
            .await
            .unwrap();
        c.down.lock().clear();
        // n2 missed the write; a read through n2 at `all` sees the newer
        // version elsewhere and writes it back to n2.
        let all = levels(Level::All, Level::All);
        let got = c.coordinators[1].get(0, b"k", all).await.unwrap();
        assert_eq!(got.unwrap().value, "new");
        let one = levels(Level::One, Level::One);
        let local = c.coordinators[1].get(0, b"k", one).await.unwrap();
        assert_eq!(
            local.map(|e| e.value),
            Some(Bytes::from_static(b"new")),
            "n2 was repaired"
        );
    }

    #[tokio::test]
    async fn impossible_levels_are_refused() {
        let c = cluster(3);
        let err = c.coordinators[0]
            .write(0, b"k", set(b"v"), levels(Level::Quorum, Level::Count(4)))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::BadLevel(_)), "{err}");
    }

    #[tokio::test]
    async fn fewer_nodes_than_n_is_reported() {
        let c = cluster(2);
        let all = levels(Level::All, Level::All);
        let err = c.coordinators[0]
            .write(0, b"k", set(b"v"), all)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("only 2 nodes hold replicas"),
            "{err}"
        );
        c.coordinators[0]
            .write(0, b"k", set(b"v"), QUORUM)
            .await
            .unwrap();
    }
}
