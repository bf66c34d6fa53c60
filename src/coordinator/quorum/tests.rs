//! Quorum coordinator tests: in-process 3-node clusters over the in-memory transport.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::config::{FsyncPolicy, KeyspaceConfig};
use crate::coordinator::{ExpiryUpdate, LocalStoreConfig, ReplicaHandler, SetCondition};
use crate::net::{Handler, PeerId};
use crate::ring::NodeSpec;
use crate::storage::MemoryEngine;
use crate::storage::testing::CountingEngine;
use crate::version::{Hlc, ManualClock};

/// Calls replicas in-process; nodes in `down` are unreachable.
pub(super) struct TestNet {
    from: String,
    replicas: Arc<HashMap<String, Arc<ReplicaHandler>>>,
    down: Arc<parking_lot::Mutex<HashSet<String>>>,
    reads: Arc<std::sync::atomic::AtomicUsize>,
    batches: Arc<Batches>,
}

/// What the batched reads of a test cluster did.
#[derive(Default)]
pub(super) struct Batches {
    /// `Request::ReadMany`s sent.
    pub(super) sent: std::sync::atomic::AtomicUsize,
    /// Their answers keep only their first record, as a replica does when
    /// the records would not fit one frame.
    pub(super) cut_short: std::sync::atomic::AtomicBool,
    /// Nodes that answer every write (single or batched) with a refusal.
    pub(super) refusing: parking_lot::Mutex<HashSet<String>>,
    /// Nodes whose calls fail as unreachable, but only after 20 ms: after
    /// the other replicas answered.
    pub(super) failing_late: parking_lot::Mutex<HashSet<String>>,
    /// Nodes that answer, but only after a second (paused, overloaded).
    pub(super) slow: parking_lot::Mutex<HashSet<String>>,
    /// Reads (`Read` or `ReadMany`) each node was sent.
    pub(super) reads_to: parking_lot::Mutex<HashMap<String, usize>>,
}

impl Transport for TestNet {
    async fn call(&self, to: &PeerId, request: Request) -> Result<Response, NetError> {
        use std::sync::atomic::Ordering::SeqCst;
        if matches!(request, Request::Read { .. } | Request::ReadMany { .. }) {
            *self
                .batches
                .reads_to
                .lock()
                .entry(to.to_owned())
                .or_default() += 1;
        }
        match request {
            Request::Read { .. } => self.reads.fetch_add(1, SeqCst),
            Request::ReadMany { .. } => self.batches.sent.fetch_add(1, SeqCst),
            _ => 0,
        };
        if self.down.lock().contains(to) {
            return Err(NetError::Unreachable("connection refused".into()));
        }
        if self.batches.slow.lock().contains(to) {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        if self.batches.failing_late.lock().contains(to) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            return Err(NetError::Unreachable("connection reset".into()));
        }
        let handler = self
            .replicas
            .get(to)
            .ok_or_else(|| NetError::UnknownPeer(to.into()))?;
        let write = matches!(request, Request::Write { .. } | Request::WriteMany { .. });
        if write && self.batches.refusing.lock().contains(to) {
            return Ok(Response::Error("refused by the test".into()));
        }
        match handler.handle(&self.from, request).await {
            Response::Records(mut records) if self.batches.cut_short.load(SeqCst) => {
                records.truncate(1);
                Ok(Response::Records(records))
            }
            response => Ok(response),
        }
    }
}

pub(super) struct Cluster {
    pub(super) coordinators: Vec<QuorumStore<TestNet>>,
    /// Every node's engine, to break.
    pub(super) engines: Vec<Arc<CountingEngine>>,
    pub(super) down: Arc<parking_lot::Mutex<HashSet<String>>>,
    pub(super) remote_reads: Arc<std::sync::atomic::AtomicUsize>,
    pub(super) batches: Arc<Batches>,
    /// Nodes gossip reports down (a subset of `down`, or not).
    pub(super) gossip_down: Arc<parking_lot::Mutex<HashSet<String>>>,
    stores: Vec<Arc<LocalStore>>,
    pub(super) hints: Vec<Arc<Hints>>,
    pub(super) replicas: Arc<HashMap<String, Arc<ReplicaHandler>>>,
    /// Every node's wall clock (one, so tests control time).
    clock: Arc<ManualClock>,
}

impl Cluster {
    /// A transport from node `i`, as hint delivery uses it.
    pub(super) fn net_from(&self, i: usize) -> TestNet {
        TestNet {
            from: format!("n{}", i + 1),
            replicas: self.replicas.clone(),
            down: self.down.clone(),
            reads: self.remote_reads.clone(),
            batches: self.batches.clone(),
        }
    }

    fn index(name: &str) -> usize {
        name[1..].parse::<usize>().unwrap() - 1
    }

    /// What node `name` stores for `key`.
    pub(super) fn stored(&self, name: &str, key: &[u8]) -> Option<Record> {
        self.stores[Self::index(name)].read_stored(0, key).unwrap()
    }

    /// Stores on node `i`, behind its skew guard, a version of `key` ten
    /// hours ahead of the shared clock.
    pub(super) fn plant_future_record(&self, i: usize, key: &[u8]) {
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
    pub(super) async fn settle(&self) {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }
}

pub(super) fn cluster(nodes: usize) -> Cluster {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
    let engines: Vec<Arc<CountingEngine>> = names.iter().map(|_| Arc::default()).collect();
    let stores: Vec<Arc<LocalStore>> = names
        .iter()
        .enumerate()
        .map(|(i, _)| {
            Arc::new(
                LocalStore::open(LocalStoreConfig {
                    engine: engines[i].clone(),
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
    let batches = Arc::new(Batches::default());
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
                batches: batches.clone(),
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
        engines,
        down,
        remote_reads,
        batches,
        gossip_down,
        stores,
        hints,
        replicas,
        clock,
    }
}

pub(super) fn set(value: &'static [u8]) -> WriteCmd {
    WriteCmd::Set {
        value: Bytes::from_static(value),
        expiry: ExpiryUpdate::Clear,
        condition: SetCondition::Always,
    }
}

pub(super) fn levels(read: Level, write: Level) -> Consistency {
    Consistency {
        read,
        write,
        sloppy: false,
    }
}

pub(super) const QUORUM: Consistency = Consistency {
    read: Level::Quorum,
    write: Level::Quorum,
    sloppy: false,
};

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
        batches: Default::default(),
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
async fn a_delete_the_read_saw_nothing_for_still_buries_a_write_on_an_unread_replica() {
    let c = cluster(3);
    // A write that failed its quorum after reaching one replica: the one
    // n1's quorum read does not ask (its second remote primary).
    let placement = c.coordinators[0].placement(0, b"k").unwrap();
    let remotes: Vec<&String> = placement.primaries.iter().filter(|p| *p != "n1").collect();
    let unread = Cluster::index(remotes[1]);
    let partial = Record::value(
        Version {
            timestamp: crate::version::Timestamp::from_ms(999_000),
            node: unread as NodeId,
        },
        Bytes::from_static(b"maybe-applied"),
        None,
    );
    c.stores[unread].merge_stored(0, b"k", partial).unwrap();

    let del = c.coordinators[0]
        .write(0, b"k", WriteCmd::Delete, QUORUM)
        .await
        .unwrap();
    assert!(!del.applied, "the read saw no key: DEL counts none");
    c.settle().await;
    let all = levels(Level::All, Level::All);
    assert_eq!(
        c.coordinators[0].get(0, b"k", all).await.unwrap(),
        None,
        "the partial write stays deleted"
    );
    assert!(c.stored(remotes[1], b"k").unwrap().payload == crate::version::Payload::Tombstone);
}

#[tokio::test(start_paused = true)]
async fn a_read_kept_waiting_by_a_slow_replica_asks_the_next_primary_after_the_speculation_delay() {
    let mut c = cluster(3);
    for key in [&b"k"[..], b"a", b"b"] {
        c.coordinators[0]
            .write(0, key, set(b"v"), QUORUM)
            .await
            .unwrap();
    }
    // NOTE: the remote primary n1 asks first for "k" is the first after n1.
    let first = remote_primaries(&c, 0, b"k").remove(0);
    c.batches.slow.lock().insert(first.clone());
    let started = tokio::time::Instant::now();
    let got = c.coordinators[0].get(0, b"k", QUORUM).await.unwrap();
    assert_eq!(got.unwrap().value, "v");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "without speculation the read waits for the slow replica"
    );

    let speculating = c
        .coordinators
        .remove(0)
        .with_read_speculation(Some(std::time::Duration::from_millis(20)));
    let started = tokio::time::Instant::now();
    let got = speculating.get(0, b"k", QUORUM).await.unwrap();
    assert_eq!(got.unwrap().value, "v");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(20)
            && waited < std::time::Duration::from_secs(1),
        "answered by the next primary after 20 ms: {waited:?}"
    );

    // Batched (a pipelined run of GETs, an MGET): every remote the batch
    // asked is slow, so its keys go to their next primaries, batched.
    c.batches.slow.lock().clear();
    for node in ["n2", "n3"] {
        c.batches.slow.lock().insert(node.to_owned());
    }
    let keys = [
        Bytes::from_static(b"k"),
        Bytes::from_static(b"a"),
        Bytes::from_static(b"b"),
    ];
    let waited = timed_get_many(&speculating, &keys).await;
    assert!(
        waited >= std::time::Duration::from_secs(1),
        "both remotes slow: the first slow answer counts: {waited:?}"
    );
    // NOTE: only the remote "k" asks first stays slow.
    c.batches.slow.lock().retain(|node| *node == first);
    let waited = timed_get_many(&speculating, &keys).await;
    assert!(
        waited < std::time::Duration::from_secs(1),
        "one remote slow: the batch's keys it held go to the other: {waited:?}"
    );
}

/// How long a quorum `get_many` of `keys` took (tokio's clock); each must
/// read "v".
async fn timed_get_many(store: &QuorumStore<TestNet>, keys: &[Bytes]) -> std::time::Duration {
    let started = tokio::time::Instant::now();
    let got = store.get_many(0, keys, QUORUM).await;
    for entry in got {
        assert_eq!(entry.unwrap().unwrap().value, "v");
    }
    started.elapsed()
}

/// The primaries of `key` other than `me`, in preference order.
fn remote_primaries(c: &Cluster, me: usize, key: &[u8]) -> Vec<String> {
    let placement = c.coordinators[me].placement(0, key).unwrap();
    let me = format!("n{}", me + 1);
    placement
        .primaries
        .into_iter()
        .filter(|p| *p != me)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn read_speculation_asks_each_replica_at_most_once_and_only_spare_ones() {
    let mut c = cluster(5);
    // A key n1 holds no replica of: a quorum read needs two remote answers.
    let key = (0..100u32)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|k| remote_primaries(&c, 0, k).len() == 3)
        .unwrap();
    c.coordinators[1]
        .write(0, &key, set(b"v"), QUORUM)
        .await
        .unwrap();
    let remotes = remote_primaries(&c, 0, &key);
    c.batches.slow.lock().extend(remotes[..2].iter().cloned());
    let speculating = c
        .coordinators
        .remove(0)
        .with_read_speculation(Some(std::time::Duration::from_millis(20)));
    let got = speculating.get(0, &key, QUORUM).await.unwrap();
    assert_eq!(got.unwrap().value, "v");
    let keys = [Bytes::from(key.clone())];
    let got = speculating.get_many(0, &keys, QUORUM).await;
    assert_eq!(got[0].as_ref().unwrap().as_ref().unwrap().value, "v");
    let reads_to = c.batches.reads_to.lock().clone();
    for node in &remotes {
        assert_eq!(
            reads_to.get(node),
            Some(&2),
            "one read and one batch each, no replica asked twice: {reads_to:?}"
        );
    }

    // A primary gossip reports down is no spare: the read waits instead.
    let c = cluster(3);
    c.coordinators[0]
        .write(0, b"k", set(b"v"), QUORUM)
        .await
        .unwrap();
    let remotes = remote_primaries(&c, 0, b"k");
    c.batches.slow.lock().insert(remotes[0].clone());
    c.gossip_down.lock().insert(remotes[1].clone());
    c.batches.reads_to.lock().clear();
    let mut coordinators = c.coordinators;
    let speculating = coordinators
        .remove(0)
        .with_read_speculation(Some(std::time::Duration::from_millis(20)));
    let started = tokio::time::Instant::now();
    speculating.get(0, b"k", QUORUM).await.unwrap();
    speculating
        .get_many(0, &[Bytes::from_static(b"k")], QUORUM)
        .await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert_eq!(
        c.batches.reads_to.lock().get(&remotes[1]),
        None,
        "never asked"
    );
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
    let first = remote_primaries(&c, 0, b"k").remove(0);
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

#[tokio::test]
async fn a_replica_that_lost_its_fsync_is_hinted_and_never_answers_a_read_from_what_it_missed() {
    let c = cluster(3);
    c.coordinators[0]
        .write(0, b"k", set(b"v1"), QUORUM)
        .await
        .unwrap();
    c.settle().await;
    c.engines[2]
        .lost_fsync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // n3 refuses until it restarts: the write misses `all`, and n3 gets a
    // hint for then, as if it could not be reached.
    let err = c.coordinators[0]
        .write(0, b"k", set(b"v2"), levels(Level::One, Level::All))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("journal fsync failed"), "{err}");
    c.settle().await;
    assert_eq!(c.hints[0].queues()["n3"].hints, 1, "hinted, not dropped");
    let held = c.stored("n3", b"k").unwrap();
    assert_eq!(held.live_value(0).map(|v| &v[..]), Some(&b"v1"[..]));
    // A read at level one through n3 asks another replica instead of its
    // own, which missed v2.
    let got = c.coordinators[2]
        .get(0, b"k", levels(Level::One, Level::One))
        .await
        .unwrap();
    assert_eq!(got.unwrap().value, "v2");
    // Asked last, it still counts where the others fall short: ALL, and a
    // read at level one with both others unreachable.
    let all = levels(Level::All, Level::All);
    let got = c.coordinators[2].get(0, b"k", all).await.unwrap();
    assert_eq!(got.unwrap().value, "v2");
    c.down.lock().extend(["n1".to_owned(), "n2".to_owned()]);
    let got = c.coordinators[2]
        .get(0, b"k", levels(Level::One, Level::One))
        .await
        .unwrap();
    assert_eq!(
        got.unwrap().value,
        "v1",
        "what it holds, rather than nothing"
    );
}
