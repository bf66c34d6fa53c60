//! A randomized history check on a real 3-process cluster: concurrent clients
//! on random coordinators with random levels (always `r + w > n` per key), one
//! node SIGKILLed and restarted mid-run; a checker then looks for stale reads.
//!
//! # The check
//! Every operation is recorded and replayed by the shared checker
//! (`checker.rs`, whose module docs state the rules exactly): no read
//! returns a value from nowhere or from the future, nil after an
//! acknowledged write, or a value older than a write acknowledged before
//! it began. Failed and lost writes may be returned (they may have been
//! applied), and a read may return a value newer than every acknowledged one.
//!
//! The rule against older values assumes versions follow real time between
//! writes that do not overlap, which is what issue 3 item 7 asks for: the
//! nodes share this machine's clock and stamp writes with microsecond HLCs,
//! so a write that begins after another was acknowledged gets the greater
//! version whichever coordinators they go through. (With the millisecond
//! HLCs of DESIGN.md section 4 this failed about one run in five, always
//! with under 0.2 ms between two writes; see docs/design/versions.md.)
//!
//! The levels satisfy `r + w > n` per key, not per operation pair: each key has
//! a regime (quorums mixed, `one`/`all` or `all`/`one`) drawn from the seed.
//! The nodes run fjall (`fsync everysec`, which writes to the OS before a
//! replica acknowledges, so SIGKILL loses nothing acknowledged): with the
//! memory engine a restarted node comes back empty, and a `W one` write held
//! only by it would be lost by design, not by a bug.
//!
//! One operation in four is a batch: a pipeline of plain GETs (or SETs) of
//! distinct keys after a CONSISTENCY that sets a level meeting every one of
//! their regimes, which a coordinator reads (or writes) as one batch per
//! replica (`ReadMany`, `WriteMany`). Each of its commands is an operation
//! of the history, begun when the pipeline was sent and completed when its
//! replies came back.
//!
//! After the run, every key must read the same value through every node at
//! `R all` within a bounded wait (a read at `all` merges every replica,
//! whatever read repair and anti-entropy have converged by then); those
//! final reads join the history and are checked too.
//!
//! # Reproducing
//! The test prints `RINGKV_TEST_SEED=<seed>`; run it again with that variable
//! set. The seed fixes each client's operations (keys, values, levels,
//! coordinators, pauses), the key regimes, the victim and the kill point. The
//! interleaving depends on timing and is not reproduced: a failure that needs
//! two writes within a narrow window may take many runs of its seed to recur.
//! `sim_history` runs the same kind of workload on in-process nodes under
//! tokio's paused clock, where a seed fixes the interleaving too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::checker::{
    Conns, FINAL_TASK, Kind, Op, Regime, Rng, SAME_CLOCK_SLACK, acked, assert_exercised,
    assert_no_violations, batch_levels, draw_batch, final_reads, key_regimes, live_coordinator,
    run_batch, seed, send_bounded, summary, wait_for_full_cluster,
};
use crate::cluster::TestCluster;

const NODES: usize = 3;
const TASKS: usize = 8;
const OPS_PER_TASK: usize = 600;
const KEYS: usize = 5;
/// The whole workload stops here, however many operations are left.
const RUN_LIMIT: Duration = Duration::from_secs(25);
/// One operation (connect included) gets at most this long.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the victim stays dead.
const DOWNTIME: Duration = Duration::from_secs(1);
/// How long the replicas get to agree at `R all` after the run.
const CONVERGE_LIMIT: Duration = Duration::from_secs(10);

fn key_name(key: usize) -> String {
    format!("hist-{key}")
}

/// State the clients and the controller share.
struct Shared {
    seed: u64,
    regimes: Vec<Regime>,
    deadline: Instant,
    /// Each node's RESP address while it runs (a restart picks a new port).
    addrs: Mutex<Vec<Option<SocketAddr>>>,
    completed: AtomicUsize,
}

/// What a client is about to do; drawn before any I/O so the seed fixes it.
struct Plan {
    node: usize,
    /// One key (a `KV.GET` or `KV.PUT`), or several distinct ones: a
    /// pipeline of plain GETs or SETs at the connection's levels, which the
    /// coordinator reads or writes as one batch.
    keys: Vec<usize>,
    kind: Kind,
    level: &'static str,
    pause: Duration,
}

fn plan_op(rng: &mut Rng, regimes: &[Regime]) -> Plan {
    let kind = if rng.below(2) == 0 {
        Kind::Write
    } else {
        Kind::Read
    };
    let keys = draw_batch(rng, KEYS).unwrap_or_else(|| vec![rng.below(KEYS)]);
    let levels = match keys.as_slice() {
        [key] => match kind {
            Kind::Write | Kind::Delete => regimes[*key].write_levels(),
            Kind::Read => regimes[*key].read_levels(),
        },
        _ => batch_levels(regimes, &keys, kind),
    };
    Plan {
        node: rng.below(NODES),
        keys,
        kind,
        level: rng.pick(levels),
        pause: Duration::from_micros(rng.below(3000) as u64),
    }
}

/// One client: `OPS_PER_TASK` operations, or fewer if the run deadline
/// passes; at two thirds it waits (bounded) for the victim to be back, so the
/// last third runs against a recovering cluster.
async fn client(task: usize, shared: Arc<Shared>, mut restarted: watch::Receiver<bool>) -> Vec<Op> {
    let mut rng = Rng::new(shared.seed, task as u64 + 1);
    let mut conns: Conns = (0..NODES).map(|_| None).collect();
    let mut ops = Vec::with_capacity(OPS_PER_TASK);
    for seq in 0..OPS_PER_TASK {
        if Instant::now() >= shared.deadline {
            break;
        }
        if seq == OPS_PER_TASK * 2 / 3 {
            let deadline = tokio::time::Instant::from_std(shared.deadline);
            let _ = tokio::time::timeout_at(deadline, restarted.wait_for(|up| *up)).await;
        }
        let plan = plan_op(&mut rng, &shared.regimes);
        tokio::time::sleep(plan.pause).await;
        if plan.keys.len() == 1 {
            ops.push(run_op(task, seq, plan, &shared, &mut conns).await);
        } else {
            ops.extend(run_batch_op(task, seq, plan, &shared, &mut conns).await);
        }
        shared.completed.fetch_add(1, Ordering::Relaxed);
    }
    ops
}

async fn run_op(task: usize, seq: usize, plan: Plan, shared: &Shared, conns: &mut Conns) -> Op {
    let (node, addr) = live_coordinator(&shared.addrs.lock().unwrap(), plan.node);
    let key = key_name(plan.keys[0]);
    let value = (plan.kind == Kind::Write).then(|| format!("{task}-{seq}"));
    let mut cmd = match &value {
        Some(v) => redis::cmd("KV.PUT").arg(&key).arg(v).arg("W").clone(),
        None => redis::cmd("KV.GET").arg(&key).arg("R").clone(),
    };
    cmd.arg(plan.level);
    let invoke = Instant::now();
    let outcome = send_bounded(&cmd, node, addr, conns, OP_TIMEOUT).await;
    Op {
        task,
        seq,
        node,
        key: plan.keys[0],
        kind: plan.kind,
        level: plan.level,
        value,
        invoke,
        complete: Instant::now(),
        outcome,
    }
}

/// A batch operation ([`run_batch`]) of `plan.keys`.
async fn run_batch_op(
    task: usize,
    seq: usize,
    plan: Plan,
    shared: &Shared,
    conns: &mut Conns,
) -> Vec<Op> {
    let coordinator = live_coordinator(&shared.addrs.lock().unwrap(), plan.node);
    let (keys, kind, level) = (&plan.keys, plan.kind, plan.level);
    let ids = (task, seq);
    run_batch(
        ids,
        coordinator,
        keys,
        &key_name,
        kind,
        level,
        conns,
        OP_TIMEOUT,
    )
    .await
}

// ---------------------------------------------------------------- controller

/// SIGKILLs the victim once a share of the operations is done, keeps it down
/// for [`DOWNTIME`], restarts it on its data and tells the clients.
async fn kill_and_restart(
    cluster: &mut TestCluster,
    shared: &Shared,
    victim: usize,
    kill_after_ops: usize,
    restarted: &watch::Sender<bool>,
) -> Option<(Instant, Instant)> {
    while shared.completed.load(Ordering::Relaxed) < kill_after_ops {
        if Instant::now() >= shared.deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shared.addrs.lock().unwrap()[victim] = None;
    let killed = Instant::now();
    cluster.kill(victim);
    tokio::time::sleep(DOWNTIME).await;
    // NOTE: the restart blocks until the child logs "ringkv ready".
    tokio::task::block_in_place(|| cluster.restart(victim));
    let back = Instant::now();
    shared.addrs.lock().unwrap()[victim] = Some(cluster.node(victim).resp_addr);
    restarted.send_replace(true);
    Some((killed, back))
}

// ---------------------------------------------------------------- the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_returns_a_value_older_than_a_write_acknowledged_before_it_began() {
    run_history().await;
}

/// The whole scenario, checked with no slack: the nodes share one clock
/// (see `checker.rs`).
async fn run_history() {
    let seed = seed();
    eprintln!("RINGKV_TEST_SEED={seed}");
    let mut rng = Rng::new(seed, 0);
    let regimes = key_regimes(&mut rng, &Regime::ALL, KEYS);
    let victim = rng.below(NODES);
    let total = TASKS * OPS_PER_TASK;
    let kill_after_ops = total / 4 + rng.below(total / 4);
    eprintln!(
        "regimes {regimes:?}; node{} dies after {kill_after_ops} of {total} operations",
        victim + 1
    );

    let mut cluster = TestCluster::start_with_engine(NODES, "fjall");
    let addrs: Vec<SocketAddr> = (0..NODES).map(|i| cluster.node(i).resp_addr).collect();
    wait_for_full_cluster(&addrs, CONVERGE_LIMIT, seed).await;
    let t0 = Instant::now();
    let shared = Arc::new(Shared {
        seed,
        regimes,
        deadline: t0 + RUN_LIMIT,
        addrs: Mutex::new(
            (0..NODES)
                .map(|i| Some(cluster.node(i).resp_addr))
                .collect(),
        ),
        completed: AtomicUsize::new(0),
    });
    let (restarted_tx, restarted_rx) = watch::channel(false);
    let clients: Vec<_> = (0..TASKS)
        .map(|task| tokio::spawn(client(task, shared.clone(), restarted_rx.clone())))
        .collect();
    let outage =
        kill_and_restart(&mut cluster, &shared, victim, kill_after_ops, &restarted_tx).await;
    let mut history = Vec::new();
    for c in clients {
        history.extend(c.await.expect("a client task panicked"));
    }
    let workload_ms = t0.elapsed().as_millis();
    let addrs: Vec<SocketAddr> = (0..NODES).map(|i| cluster.node(i).resp_addr).collect();
    let keys: Vec<String> = (0..KEYS).map(key_name).collect();
    history.extend(final_reads(&addrs, &keys, CONVERGE_LIMIT, seed).await.0);

    let (killed, back) =
        outage.unwrap_or_else(|| panic!("RINGKV_TEST_SEED={seed}: the run ended before the kill"));
    eprintln!(
        "workload {workload_ms} ms, node{} down {}..{} ms; {}",
        victim + 1,
        killed.duration_since(t0).as_millis(),
        back.duration_since(t0).as_millis(),
        summary(&history)
    );
    let done = history.iter().filter(|op| op.task != FINAL_TASK).count();
    assert!(
        done * 2 >= total,
        "RINGKV_TEST_SEED={seed}: only {done} of {total} operations ran within {RUN_LIMIT:?}"
    );
    let acked_writes = history
        .iter()
        .filter(|op| op.kind == Kind::Write && acked(op))
        .count();
    assert!(
        acked_writes * 4 >= done,
        "RINGKV_TEST_SEED={seed}: only {acked_writes} writes acknowledged; {}",
        summary(&history)
    );
    assert_exercised(&history, (killed, back), seed);
    let context = format!(
        "node{} down {}..{} us",
        victim + 1,
        killed.duration_since(t0).as_micros(),
        back.duration_since(t0).as_micros()
    );
    assert_no_violations(&history, SAME_CLOCK_SLACK, t0, &key_name, seed, &context);
}
