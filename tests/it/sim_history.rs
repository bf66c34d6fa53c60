//! The randomized history test, replayable: three in-process nodes (memory
//! engine, the in-memory network with a seeded delay and a seeded loss of
//! one message in 500 on every link) under a current-thread runtime with
//! tokio's clock paused, so a seed fixes not only every client's operations
//! but their whole interleaving. Many concurrent clients write, delete and
//! read a few keys through random coordinators at random levels with
//! `r + w > n`; one node is cut off (killed: every link to it fails, clients
//! and gossip stop using it) and comes back (its store intact, as after a
//! restart with its disk) mid-run; then every fault heals, hints are
//! delivered and every key is read at `R all` through every node. The
//! shared [`crate::checker`] replays the history.
//!
//! `history` runs the same kind of workload on real processes, where
//! timing is the machine's; this one is what makes a failing seed
//! reproduce: it runs its seed twice and fails if the two histories differ
//! by as much as one operation's timing or answer.
//!
//! # Reproducing
//! It prints `RINGKV_TEST_SEED=<seed>`; run it again with that variable set:
//! `RINGKV_TEST_SEED=<seed> cargo test --test it sim_history -- --nocapture`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use ringkv::config::{FsyncPolicy, KeyspaceConfig};
use ringkv::coordinator::{
    Consistency, ExpiryUpdate, HintConfig, Hints, Keyspaces, Level, LocalStore, LocalStoreConfig,
    QuorumConfig, QuorumStore, ReplicaHandler, SetCondition, Store, StoreError, WriteCmd,
};
use ringkv::net::{MemNetwork, MemTransport};
use ringkv::ring::{Layout, NodeSpec};
use ringkv::storage::MemoryEngine;
use ringkv::version::{Clock, Hlc};
use tokio::time::Instant;

use crate::checker::{
    FINAL_TASK, Kind, Op, Outcome, Regime, Rng, SAME_CLOCK_SLACK, acked, assert_exercised,
    assert_no_violations, key_regimes, seed, summary,
};

const NODES: usize = 3;
const KEYS: usize = 6;
const CLIENTS: usize = 12;
const OPS_PER_CLIENT: usize = 250;
/// Each message on a link is lost with this probability (the caller times
/// out; a lost answer leaves its request applied).
const LOSS: f64 = 0.002;
const PARTITIONS: u32 = 64;
/// A call not answered within this is a timeout (tokio's paused clock).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// A read short of answers this long asks one more primary: a lost message
/// makes it speculate.
const SPECULATION: Duration = Duration::from_millis(5);

fn name(i: usize) -> String {
    format!("node{}", i + 1)
}

fn key_name(key: usize) -> String {
    format!("sim-{key}")
}

/// Wall time that follows tokio's clock, shared by every node: paused, it
/// moves only when every task waits, by exactly as much as they wait.
struct SimClock {
    start: Instant,
}

impl Clock for SimClock {
    fn now_us(&self) -> u64 {
        1_700_000_000_000_000 + self.start.elapsed().as_micros() as u64
    }
}

struct Node {
    store: QuorumStore<MemTransport>,
    hints: Arc<Hints>,
}

/// Three nodes on `net`, every key on all three (n = 3); gossip's view is
/// `down`.
fn start_nodes(net: &MemNetwork, down: &Arc<Mutex<HashSet<String>>>) -> Vec<Node> {
    let clock: Arc<dyn Clock> = Arc::new(SimClock {
        start: Instant::now(),
    });
    let names: Vec<String> = (0..NODES).map(name).collect();
    let layout = Layout::initial(PARTITIONS, names.iter().map(NodeSpec::new).collect()).unwrap();
    names
        .iter()
        .enumerate()
        .map(|(i, node_name)| {
            let local = Arc::new(
                LocalStore::open(LocalStoreConfig {
                    engine: Arc::new(MemoryEngine::new()),
                    hlc: Arc::new(Hlc::new(clock.clone(), 60_000)),
                    node: i as u32,
                    node_name: node_name.clone(),
                    partitions: PARTITIONS,
                    keyspaces: Keyspaces::new(vec![KeyspaceConfig::default()]),
                    fsync: FsyncPolicy::No,
                })
                .unwrap(),
            );
            let hint_config = HintConfig {
                window_ms: 3_600_000,
                max_bytes_per_target: 64 << 20,
                sync_each: false,
            };
            let hints = Arc::new(
                Hints::open(
                    Arc::new(MemoryEngine::new()),
                    hint_config,
                    local.hlc().clone(),
                )
                .unwrap(),
            );
            let handler = ReplicaHandler::new(local.clone()).with_hints(hints.clone());
            net.register(node_name, Arc::new(handler));
            let config = QuorumConfig {
                node_name: node_name.clone(),
                node_id: i as u32,
                partitions: PARTITIONS,
            };
            let gossip = down.clone();
            let store = QuorumStore::new(
                config,
                local,
                Arc::new(net.transport(node_name)),
                layout.clone(),
            )
            .with_hints(hints.clone())
            .with_liveness(Arc::new(move |peer: &str| !gossip.lock().contains(peer)))
            .with_read_speculation(Some(SPECULATION));
            Node { store, hints }
        })
        .collect()
}

fn level(text: &str) -> Level {
    Level::parse(text).unwrap_or_else(|| panic!("bad level {text}"))
}

fn outcome<T>(result: Result<T, StoreError>, value: impl FnOnce(T) -> Option<String>) -> Outcome {
    match result {
        Ok(got) => Outcome::Ok(value(got)),
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

/// One client: `OPS_PER_CLIENT` operations drawn from its own stream of the
/// seed, each on a live coordinator.
async fn client(
    task: usize,
    seed: u64,
    nodes: Arc<Vec<Node>>,
    regimes: Arc<Vec<Regime>>,
    down: Arc<Mutex<HashSet<String>>>,
) -> Vec<Op> {
    let mut rng = Rng::new(seed, task as u64 + 1);
    let mut history = Vec::with_capacity(OPS_PER_CLIENT);
    for seq in 0..OPS_PER_CLIENT {
        tokio::time::sleep(Duration::from_micros(rng.below(2_000) as u64)).await;
        let key = rng.below(KEYS);
        let draw = rng.below(10);
        let wanted = rng.below(NODES);
        // NOTE: clients use only nodes that are up, as a load balancer would.
        let node = (0..NODES)
            .map(|i| (wanted + i) % NODES)
            .find(|&i| !down.lock().contains(&name(i)))
            .expect("a node is up");
        let invoke = Instant::now();
        let (kind, level_name, value, outcome) = run_op(
            &nodes[node].store,
            &mut rng,
            regimes[key],
            key,
            (task, seq),
            draw,
        )
        .await;
        history.push(Op {
            task,
            seq,
            node,
            key,
            kind,
            level: level_name,
            value,
            invoke: invoke.into_std(),
            complete: Instant::now().into_std(),
            outcome,
        });
    }
    history
}

/// What one operation was and how it ended.
type Done = (Kind, &'static str, Option<String>, Outcome);

/// Runs one operation on `key` through `store`: a write (`draw` 0-4, of a
/// value unique to the client's `(task, seq)`), a delete (5) or a read,
/// at levels drawn from the key's `regime`.
async fn run_op(
    store: &QuorumStore<MemTransport>,
    rng: &mut Rng,
    regime: Regime,
    key: usize,
    (task, seq): (usize, usize),
    draw: usize,
) -> Done {
    let raw_key = key_name(key);
    if draw == 5 {
        // A delete: a write of nil, whether its read found the key or not.
        let level_name = rng.pick(regime.write_levels());
        let consistency = Consistency {
            read: level(rng.pick(regime.read_levels())),
            write: level(level_name),
            sloppy: false,
        };
        let result = write_committed(store, &raw_key, WriteCmd::Delete, consistency).await;
        return (Kind::Delete, level_name, None, outcome(result, |_| None));
    }
    if draw < 5 {
        let level_name = rng.pick(regime.write_levels());
        let value = format!("t{task}-{seq}");
        let consistency = Consistency {
            read: Level::Quorum,
            write: level(level_name),
            sloppy: false,
        };
        let cmd = WriteCmd::Set {
            value: Bytes::from(value.clone()),
            expiry: ExpiryUpdate::Clear,
            condition: SetCondition::Always,
        };
        let result = write_committed(store, &raw_key, cmd, consistency).await;
        return (
            Kind::Write,
            level_name,
            Some(value),
            outcome(result, |_| None),
        );
    }
    let level_name = rng.pick(regime.read_levels());
    let consistency = Consistency {
        read: level(level_name),
        write: Level::Quorum,
        sloppy: false,
    };
    let result = store.get(0, raw_key.as_bytes(), consistency).await;
    let read = outcome(result, |entry| {
        entry.map(|e| String::from_utf8_lossy(&e.value).into_owned())
    });
    (Kind::Read, level_name, None, read)
}

/// A write, acknowledged only once committed, as a connection does.
async fn write_committed(
    store: &QuorumStore<MemTransport>,
    key: &str,
    cmd: WriteCmd,
    consistency: Consistency,
) -> Result<(), StoreError> {
    store.write(0, key.as_bytes(), cmd, consistency).await?;
    store.commit().await
}

/// Heals every fault, delivers every node's hints, then reads every key
/// back through every node at ALL: those reads, for the history.
async fn heal_and_read_back(net: &MemNetwork, nodes: &[Node], seed: u64) -> Vec<Op> {
    let mut finals = Vec::with_capacity(NODES * KEYS);
    net.heal_all();
    for (i, node) in nodes.iter().enumerate() {
        let transport = net.transport(&name(i));
        for target in node.hints.targets() {
            let report = node
                .hints
                .deliver(&target, &transport, usize::MAX)
                .await
                .unwrap();
            assert_eq!(report.failed, None, "RINGKV_TEST_SEED={seed}: {report:?}");
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        for key in 0..KEYS {
            let all = Consistency {
                read: Level::All,
                write: Level::All,
                sloppy: false,
            };
            let invoke = Instant::now();
            let result = node.store.get(0, key_name(key).as_bytes(), all).await;
            finals.push(Op {
                task: FINAL_TASK,
                seq: i * KEYS + key,
                node: i,
                key,
                kind: Kind::Read,
                level: "all",
                value: None,
                invoke: invoke.into_std(),
                complete: Instant::now().into_std(),
                outcome: outcome(result, |entry| {
                    entry.map(|e| String::from_utf8_lossy(&e.value).into_owned())
                }),
            });
        }
    }
    finals
}

/// One run of `seed`: the history, the victim, and when it was cut off and
/// back (since the start).
async fn simulate(seed: u64) -> (Vec<Op>, std::time::Instant, usize, Duration, Duration) {
    let t0 = Instant::now();
    let mut rng = Rng::new(seed, 0);
    let net = MemNetwork::new(REQUEST_TIMEOUT, seed);
    for a in 0..NODES {
        for b in 0..NODES {
            if a != b {
                let delay = Duration::from_micros(50 + rng.below(1_500) as u64);
                net.set_delay(&name(a), &name(b), delay);
                net.set_drop_probability(&name(a), &name(b), LOSS);
            }
        }
    }
    let down = Arc::new(Mutex::new(HashSet::new()));
    let nodes = Arc::new(start_nodes(&net, &down));
    let regimes = Arc::new(key_regimes(&mut rng, &Regime::ALL, KEYS));
    let victim = rng.below(NODES);
    let kill_at = Duration::from_millis(20 + rng.below(60) as u64);
    let outage = Duration::from_millis(30 + rng.below(60) as u64);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|task| {
            let (nodes, regimes, down) = (nodes.clone(), regimes.clone(), down.clone());
            tokio::spawn(client(task, seed, nodes, regimes, down))
        })
        .collect();
    tokio::time::sleep(kill_at).await;
    // Killed: no link to or from it works, and gossip reports it down.
    net.isolate(&name(victim));
    down.lock().insert(name(victim));
    tokio::time::sleep(outage).await;
    net.rejoin(&name(victim));
    down.lock().clear();

    let mut history = Vec::new();
    for c in clients {
        history.extend(c.await.expect("a client task panicked"));
    }
    history.extend(heal_and_read_back(&net, &nodes, seed).await);
    (history, t0.into_std(), victim, kill_at, kill_at + outage)
}

/// `simulate(seed)` on a fresh current-thread runtime with tokio's clock
/// paused: the same seed gives the same run.
fn run(seed: u64) -> (Vec<Op>, std::time::Instant, usize, Duration, Duration) {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(simulate(seed))
}

/// An operation as text, times from the run's start: equal for equal runs.
fn canonical(op: &Op, t0: std::time::Instant) -> String {
    let us = |t: std::time::Instant| t.duration_since(t0).as_micros();
    format!(
        "{} {} n{} k{} {:?} {} {:?} {}..{} {:?}",
        op.task,
        op.seq,
        op.node,
        op.key,
        op.kind,
        op.level,
        op.value,
        us(op.invoke),
        us(op.complete),
        op.outcome
    )
}

#[test]
fn a_seeded_in_process_history_replays_identically_and_reads_nothing_stale() {
    let seed = seed();
    eprintln!("RINGKV_TEST_SEED={seed}");
    let (history, t0, victim, killed, back) = run(seed);
    let (again, t0_again, ..) = run(seed);
    let first: Vec<String> = history.iter().map(|op| canonical(op, t0)).collect();
    let second: Vec<String> = again.iter().map(|op| canonical(op, t0_again)).collect();
    if let Some(i) = (0..first.len().max(second.len())).find(|&i| first.get(i) != second.get(i)) {
        panic!(
            "RINGKV_TEST_SEED={seed}: two runs of one seed differ at operation {i}:\n  {:?}\n  {:?}",
            first.get(i),
            second.get(i)
        );
    }
    eprintln!(
        "node{} cut off {}..{} ms (simulated); {}",
        victim + 1,
        killed.as_millis(),
        back.as_millis(),
        summary(&history)
    );

    let done = history.iter().filter(|op| op.task != FINAL_TASK).count();
    assert_eq!(done, CLIENTS * OPS_PER_CLIENT);
    assert_exercised(&history, (t0 + killed, t0 + back), seed);
    let finals_ok = history
        .iter()
        .filter(|op| op.task == FINAL_TASK && acked(op))
        .count();
    assert_eq!(
        finals_ok,
        NODES * KEYS,
        "RINGKV_TEST_SEED={seed}: every final read at ALL answers"
    );
    let context = format!(
        "node{} cut off {}..{} us (simulated)",
        victim + 1,
        killed.as_micros(),
        back.as_micros()
    );
    assert_no_violations(&history, SAME_CLOCK_SLACK, t0, &key_name, seed, &context);
}
