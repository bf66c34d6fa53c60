//! The quorum coordinator: any node coordinates any request (DESIGN.md §3).
//!
//! A write is stamped with this node's HLC, sent to all `n` primaries of the
//! key's partition in parallel and acknowledged once `w` of them merged it;
//! the rest finish in the background. A read asks the primaries and answers
//! once `r` replied, with the merge of what they hold. Only primaries count
//! (strict quorum). Invariant: with `r + w > n`, a read that starts after a
//! write was acknowledged meets at least one replica holding it, and merge
//! keeps the newest version, so it never returns anything older.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use parking_lot::RwLock;

use super::{
    Consistency, Decision, Entry, ExpiryUpdate, KeyspaceId, Keyspaces, Level, LocalStore,
    Placement, SetCondition, Store, StoreError, StoreStats, WriteCmd, WriteOutcome,
};
use crate::net::{NetError, Request, Response, Transport};
use crate::ring::{self, Layout};
use crate::version::{NodeId, Record, Version};

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
    transport: Arc<T>,
    me: Arc<str>,
    node_id: NodeId,
    partitions: u32,
    keyspaces: Keyspaces,
    // NOTE: a blocking lock held only to clone the Arc out, never across an await.
    layout: RwLock<Arc<Layout>>,
    /// Bounds the writes still on their way to replicas after the client
    /// was answered.
    late_writes: Arc<tokio::sync::Semaphore>,
}

/// Most writes that may still be reaching their remaining replicas after
/// their client was answered; past it, writes wait for every replica.
pub const MAX_LATE_WRITES: usize = 1024;

/// One replica's answer, or why there is none.
type ReplicaResult = (Arc<str>, Result<Response, String>);

/// The primaries of a key and the replication factor wanted.
struct Plan {
    primaries: Vec<Arc<str>>,
    n: usize,
}

impl<T: Transport> QuorumStore<T> {
    /// A coordinator over `local` (this node's replica) and `transport`.
    pub fn new(
        config: QuorumConfig,
        local: Arc<LocalStore>,
        transport: Arc<T>,
        layout: Layout,
    ) -> Self {
        Self {
            keyspaces: Store::keyspaces(&*local).clone(),
            local,
            transport,
            me: config.node_name.into(),
            node_id: config.node_id,
            partitions: config.partitions,
            layout: RwLock::new(Arc::new(layout)),
            late_writes: Arc::new(tokio::sync::Semaphore::new(MAX_LATE_WRITES)),
        }
    }

    /// Installs a newer layout.
    pub fn set_layout(&self, layout: Layout) {
        *self.layout.write() = Arc::new(layout);
    }

    /// The layout in force.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.read().clone()
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

    fn plan(&self, ks: KeyspaceId, key: &[u8]) -> Result<Plan, StoreError> {
        let n = self.keyspaces.get(ks).n as usize;
        let (_, layout, list) = self.preference(ks, key)?;
        let primaries = list
            .primaries
            .iter()
            .filter_map(|i| layout.node(*i).map(|spec| Arc::from(spec.name.as_str())))
            .collect();
        Ok(Plan { primaries, n })
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

    /// Sends `request` to the primaries and returns once `needed` answered
    /// well, or every primary was tried. Writes go to every primary at once
    /// (`to_all`), and unfinished calls keep running in the background so
    /// every replica gets the write. Reads go to `needed` primaries, this
    /// node first, and one more replica is asked for each that fails, so a
    /// healthy read costs `r` requests, not `n`.
    async fn fan_out(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        primaries: &[Arc<str>],
        request: Request,
        needed: usize,
        to_all: bool,
    ) -> (Vec<ReplicaResult>, Vec<ReplicaResult>) {
        let mut order: Vec<Arc<str>> = primaries.to_vec();
        // NOTE: the local replica answers without a network round trip.
        order.sort_by_key(|node| **node != *self.me);
        let mut waiting = order.into_iter();
        let mut calls = FuturesUnordered::new();
        let first = if to_all { primaries.len() } else { needed };
        for node in waiting.by_ref().take(first) {
            calls.push(self.call_replica(node, ks, key.clone(), request.clone()));
        }
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        while good.len() < needed {
            let Some((node, result)) = calls.next().await else {
                break;
            };
            match result {
                Ok(Response::Error(why)) | Err(why) => {
                    bad.push((node, Err(why)));
                    if let Some(next) = waiting.next() {
                        calls.push(self.call_replica(next, ks, key.clone(), request.clone()));
                    }
                }
                Ok(response) => good.push((node, Ok(response))),
            }
        }
        if to_all && !calls.is_empty() {
            match self.late_writes.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        while calls.next().await.is_some() {}
                        drop(permit);
                    });
                }
                Err(_) => {
                    // NOTE: too many writes are still reaching their last
                    // replicas: finish this one before answering, so an
                    // overloaded cluster slows its clients down instead of
                    // piling up (or dropping) replica writes.
                    metrics::counter!("ringkv_late_writes_waited_total").increment(1);
                    while calls.next().await.is_some() {}
                }
            }
        }
        (good, bad)
    }

    fn call_replica(
        &self,
        node: Arc<str>,
        ks: KeyspaceId,
        key: Bytes,
        request: Request,
    ) -> impl std::future::Future<Output = ReplicaResult> + Send + 'static {
        let local = (*node == *self.me).then(|| self.local.clone());
        let transport = self.transport.clone();
        async move {
            let result = match local {
                Some(local) => serve_locally(&local, ks, &key, request).await,
                None => transport
                    .call(&node, request)
                    .await
                    .map_err(|e: NetError| e.to_string()),
            };
            (node, result)
        }
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
        key: &Bytes,
        level: Level,
    ) -> Result<Option<Record>, StoreError> {
        let plan = self.plan(ks, key)?;
        let needed = Self::required(level, plan.n)?;
        let request = Request::Read {
            keyspace: self.keyspaces.get(ks).name.clone(),
            key: key.clone(),
        };
        let (good, bad) = self
            .fan_out(ks, key, &plan.primaries, request, needed, false)
            .await;
        if good.len() < needed {
            return Err(Self::unavailable("read", needed, good.len(), bad, &plan));
        }
        let mut merged: Option<Record> = None;
        let mut seen: Vec<(Arc<str>, Option<Record>)> = Vec::with_capacity(good.len());
        for (node, response) in good {
            let record = match response {
                Ok(Response::Record(Some(raw))) => Some(Record::decode(raw)?),
                _ => None,
            };
            if let Some(record) = &record {
                // NOTE: the HLC advances on every version it sees, so a write
                // this node stamps after reading orders after what it read. A
                // version too far ahead is refused (and logged) by observe().
                let _ = self.local.hlc().observe(record.version.timestamp);
                merged = Some(match merged {
                    Some(m) => m.merge(record.clone()),
                    None => record.clone(),
                });
            }
            seen.push((node, record));
        }
        if let Some(merged) = &merged {
            self.read_repair(ks, key, merged, seen).await;
        }
        Ok(merged)
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
        let stale: Vec<Arc<str>> = seen
            .into_iter()
            .filter(|(_, record)| record.as_ref() != Some(merged))
            .map(|(node, _)| node)
            .collect();
        if stale.is_empty() {
            return;
        }
        let request = Request::Write {
            keyspace: self.keyspaces.get(ks).name.clone(),
            key: key.clone(),
            record: merged.encode(),
        };
        let repairs = stale
            .into_iter()
            .map(|node| self.call_replica(node, ks, key.clone(), request.clone()));
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

    /// Writes `record` to the primaries of `key` at `level`.
    async fn quorum_write(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        record: Record,
        level: Level,
    ) -> Result<(), StoreError> {
        let plan = self.plan(ks, key)?;
        let needed = Self::required(level, plan.n)?;
        let request = Request::Write {
            keyspace: self.keyspaces.get(ks).name.clone(),
            key: key.clone(),
            record: record.encode(),
        };
        let (good, bad) = self
            .fan_out(ks, key, &plan.primaries, request, needed, true)
            .await;
        if good.len() < needed {
            return Err(Self::unavailable("write", needed, good.len(), bad, &plan));
        }
        Ok(())
    }
}

/// The coordinator's own replica answers without the network.
async fn serve_locally(
    local: &LocalStore,
    ks: KeyspaceId,
    key: &[u8],
    request: Request,
) -> Result<Response, String> {
    match request {
        Request::Ping => Ok(Response::Pong),
        Request::Read { .. } => local
            .read_stored(ks, key)
            .map(|r| Response::Record(r.map(|r| r.encode())))
            .map_err(|e| e.to_string()),
        Request::Write { record, .. } => {
            let record = Record::decode(record).map_err(|e| e.to_string())?;
            local
                .merge_stored(ks, key, record)
                .map_err(|e| e.to_string())?;
            local.commit().await.map_err(|e| e.to_string())?;
            Ok(Response::Written)
        }
        Request::Aae(_) => Err("anti-entropy requests are not coordinated".into()),
    }
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
        let key = Bytes::copy_from_slice(key);
        let record = self.quorum_read(ks, &key, consistency.read).await?;
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
            let record = self.quorum_read(ks, &key, consistency.read).await?;
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
        self.quorum_write(ks, &key, record, consistency.write)
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
        // Replica writes commit before they acknowledge (see serve_locally).
        Ok(())
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
        let replicas: Arc<HashMap<_, _>> = Arc::new(
            names
                .iter()
                .zip(&stores)
                .map(|(n, s)| (n.clone(), Arc::new(ReplicaHandler::new(s.clone()))))
                .collect(),
        );
        let layout = Layout::initial(64, names.iter().map(NodeSpec::new).collect()).unwrap();
        let down = Arc::new(parking_lot::Mutex::new(HashSet::new()));
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
                QuorumStore::new(config, store.clone(), Arc::new(net), layout.clone())
            })
            .collect();
        Cluster {
            coordinators,
            down,
            remote_reads,
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
        Consistency { read, write }
    }

    const QUORUM: Consistency = Consistency {
        read: Level::Quorum,
        write: Level::Quorum,
    };

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
        c.down.lock().insert("n2".into());
        c.remote_reads.store(0, SeqCst);
        let got = c.coordinators[0].get(0, b"k", QUORUM).await.unwrap();
        assert_eq!(got.unwrap().value, "v", "n3 answers for the failed n2");
        assert_eq!(c.remote_reads.load(SeqCst), 2);
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
