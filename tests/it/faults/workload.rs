//! The fault scenarios' harness: a [`Scenario`] runs a cluster of real
//! processes with fault injection on, a seeded workload of concurrent
//! clients that records a history, and the controller's fault actions; its
//! [`Scenario::finish`] stops the load, measures convergence and checks the
//! history (`checker.rs`).
//!
//! Invariants: every wait is bounded; the workload stops by itself at
//! [`RUN_CAP`]; each fault action is logged with its time since the start,
//! and the log is part of every failure message, with the seed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;

use crate::checker::{
    Conns, FINAL_TASK, Kind, Op, Outcome, Regime, Rng, SAME_CLOCK_SLACK, acked,
    assert_no_violations, batch_levels, draw_batch, final_reads, key_regimes, live_coordinator,
    run_batch, seed, send_bounded, summary, wait_for_full_cluster,
};
use crate::cluster::TestCluster;
use crate::handoff::{ReplicaState, converged, inspect, wait_converged};
use crate::support::http_get;

/// Nodes per scenario (`n = 3`: every node is a primary of every key).
pub(crate) const NODES: usize = 3;
/// Concurrent clients.
const TASKS: usize = 6;
/// Keys of one batch of canaries (see [`Scenario::write_canaries`]).
const CANARIES: usize = 16;
/// Keys the clients share (few, so they collide often).
const KEYS: usize = 8;
/// One operation (connect included) gets at most this long; past it the
/// operation is lost (unknown).
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// The workload stops here whatever the controller does.
const RUN_CAP: Duration = Duration::from_secs(180);
/// The bound on convergence: once the last fault healed and the load
/// stopped, every replica of every key holds the same record within this.
pub(crate) const CONVERGE_BOUND: Duration = Duration::from_secs(30);
/// How long a node routed away from keeps no coordinated write in flight:
/// longer than the internode request timeout (1 s in `TestCluster`), so
/// every write it coordinated has reached or failed on every replica.
pub(crate) const DRAIN: Duration = Duration::from_millis(1500);

/// Whether the long soak mode is on (`RINGKV_SOAK=1`).
pub(crate) fn soak() -> bool {
    std::env::var("RINGKV_SOAK").is_ok_and(|v| v == "1")
}

/// `default`, or `soak` in the soak mode.
pub(crate) fn secs(default: u64, soak_secs: u64) -> Duration {
    Duration::from_secs(if soak() { soak_secs } else { default })
}

/// State the clients and the controller share.
struct Shared {
    seed: u64,
    prefix: &'static str,
    regimes: Vec<Regime>,
    stop: AtomicBool,
    deadline: Instant,
    /// Each node's RESP address while clients may use it (a restart picks a
    /// new port; a paused, drained or dead node is `None`).
    addrs: Mutex<Vec<Option<SocketAddr>>>,
}

fn key_name(prefix: &str, key: usize) -> String {
    format!("{prefix}-{key}")
}

/// One running scenario.
pub(crate) struct Scenario {
    pub name: &'static str,
    pub seed: u64,
    /// The controller's choices (victims, timings).
    pub rng: Rng,
    pub cluster: TestCluster,
    t0: Instant,
    shared: Arc<Shared>,
    clients: Vec<JoinHandle<Vec<Op>>>,
    events: Vec<String>,
    /// The checker's slack: the skew between the clocks (zero unless skewed).
    slack: Duration,
    healed: Instant,
    /// Canary keys written during a fault (their value is their name).
    canaries: Vec<String>,
    /// Heal-to-convergence times of the canaries, one per fault.
    convergence_times: Vec<Duration>,
}

impl Scenario {
    /// Starts `NODES` nodes on `engine` with fault injection, waits until
    /// every node reads at `R all`, and starts the clients; keys use levels
    /// from `regimes`.
    pub(crate) async fn start(
        name: &'static str,
        engine: &'static str,
        regimes: &[Regime],
    ) -> Scenario {
        let seed = seed();
        let stream = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        eprintln!("RINGKV_TEST_SEED={seed} (faults::{name}, soak={})", soak());
        let mut rng = Rng::new(seed, stream);
        let regimes = key_regimes(&mut rng, regimes, KEYS);
        let cluster = TestCluster::start_with_flags(
            NODES,
            engine,
            &["--enable-fault-injection", "--aae-interval-ms", "3000"],
        );
        let addrs: Vec<SocketAddr> = (0..NODES).map(|i| cluster.node(i).resp_addr).collect();
        wait_for_full_cluster(&addrs, CONVERGE_BOUND, seed).await;
        let t0 = Instant::now();
        let shared = Arc::new(Shared {
            seed: seed ^ stream,
            prefix: name,
            regimes,
            stop: AtomicBool::new(false),
            deadline: t0 + RUN_CAP,
            addrs: Mutex::new(addrs.into_iter().map(Some).collect()),
        });
        let clients = (0..TASKS)
            .map(|task| tokio::spawn(client(task, shared.clone())))
            .collect();
        let mut scenario = Scenario {
            name,
            seed,
            rng,
            cluster,
            t0,
            shared,
            clients,
            events: Vec::new(),
            slack: SAME_CLOCK_SLACK,
            healed: t0,
            canaries: Vec::new(),
            convergence_times: Vec::new(),
        };
        let regimes = format!("{:?}", scenario.shared.regimes);
        scenario.note(&format!("load started; key regimes {regimes}"));
        scenario
    }

    /// Logs a controller action with its time since the load started.
    pub(crate) fn note(&mut self, what: &str) {
        let line = format!("+{} ms {what}", self.t0.elapsed().as_millis());
        eprintln!("[faults::{}] {line}", self.name);
        self.events.push(line);
    }

    /// Lets the load run for `d`.
    pub(crate) async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Widens the checker's slack to cover clocks `skew` apart.
    pub(crate) fn allow_clock_skew(&mut self, skew: Duration) {
        self.slack = SAME_CLOCK_SLACK + skew;
    }

    /// Marks now as the time the last fault healed.
    pub(crate) fn healed(&mut self) {
        self.healed = Instant::now();
    }

    pub(crate) fn node_name(i: usize) -> String {
        format!("node{}", i + 1)
    }

    /// Clients stop (or resume) sending to node `i`.
    fn route(&self, i: usize, on: bool) {
        let addr = on.then(|| self.cluster.node(i).resp_addr);
        self.shared.addrs.lock().unwrap()[i] = addr;
    }

    /// SIGSTOP node `i`; clients route around it.
    pub(crate) fn pause(&mut self, i: usize) {
        self.route(i, false);
        self.cluster.pause(i);
        self.note(&format!("node{} paused (SIGSTOP)", i + 1));
    }

    /// SIGCONT node `i`; clients use it again.
    pub(crate) fn resume(&mut self, i: usize) {
        self.cluster.resume(i);
        self.route(i, true);
        self.healed();
        self.note(&format!("node{} resumed (SIGCONT)", i + 1));
    }

    /// Clients stop using node `i` as a coordinator, then its in-flight
    /// coordinated writes get [`DRAIN`] to reach every replica.
    pub(crate) async fn drain(&mut self, i: usize) {
        self.route(i, false);
        self.note(&format!("node{} drained of client traffic", i + 1));
        tokio::time::sleep(DRAIN).await;
    }

    /// SIGKILL node `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        self.route(i, false);
        self.cluster.kill(i);
        self.note(&format!("node{} killed (SIGKILL)", i + 1));
    }

    /// SIGTERM node `i` and wait for its clean exit.
    pub(crate) fn terminate(&mut self, i: usize) {
        self.route(i, false);
        tokio::task::block_in_place(|| self.cluster.terminate(i));
        self.note(&format!("node{} stopped (SIGTERM)", i + 1));
    }

    /// Deletes stopped node `i`'s data and hints.
    pub(crate) fn wipe(&mut self, i: usize) {
        self.cluster.wipe(i);
        self.note(&format!("node{} data dir wiped", i + 1));
    }

    /// Restarts stopped node `i` (blocks until it is ready); clients use it.
    pub(crate) fn restart(&mut self, i: usize) {
        // NOTE: the restart blocks until the child logs "ringkv ready".
        tokio::task::block_in_place(|| self.cluster.restart(i));
        self.route(i, true);
        self.healed();
        self.note(&format!("node{} restarted", i + 1));
    }

    /// Replaces node `i`'s faults with `spec`.
    pub(crate) async fn set_faults(&mut self, i: usize, spec: serde_json::Value) {
        self.cluster.set_faults(i, &spec).await;
        self.note(&format!("node{} faults = {spec}", i + 1));
    }

    /// Cuts node `i` off from every other node, both ways, calls and gossip.
    pub(crate) async fn isolate(&mut self, i: usize) {
        let others: Vec<String> = (0..NODES)
            .filter(|&j| j != i)
            .map(Self::node_name)
            .collect();
        for &j in &[(i + 1) % NODES, (i + 2) % NODES] {
            self.set_faults(j, json!({ "cut": [Self::node_name(i)] }))
                .await;
        }
        self.set_faults(i, json!({ "cut": others })).await;
    }

    /// Removes every link and clock fault of every node.
    pub(crate) async fn heal_links(&mut self) {
        for i in 0..NODES {
            self.cluster.set_faults(i, &json!({})).await;
        }
        self.healed();
        self.note("every link and clock healed");
    }

    /// Writes a batch of canary keys through node `via` at `W quorum`
    /// while a fault keeps some replica from taking them, so
    /// [`Scenario::measure_convergence`] can time their repair.
    pub(crate) async fn write_canaries(&mut self, via: usize) {
        let batch = self.convergence_times.len();
        let mut c = self.cluster.node(via).conn().await;
        let keys: Vec<String> = (0..CANARIES)
            .map(|k| format!("{}-canary-{batch}-{k}", self.name))
            .collect();
        for key in &keys {
            let reply =
                crate::support::q::<String>(&mut c, &["KV.PUT", key, key, "W", "quorum"]).await;
            assert!(
                reply.is_ok(),
                "RINGKV_TEST_SEED={}: canary {key} through node{} failed: {reply:?}; {}",
                self.seed,
                via + 1,
                self.events.join("; ")
            );
        }
        self.note(&format!(
            "{CANARIES} canaries written through node{}",
            via + 1
        ));
        self.canaries = keys;
    }

    /// Waits (bounded by [`CONVERGE_BOUND`] from the last heal) until every
    /// replica of every canary holds the canary's value, asked through node
    /// `via`; returns the time since the heal.
    pub(crate) async fn measure_convergence(&mut self, via: usize) -> Duration {
        let mut c = self.cluster.node(via).conn().await;
        let keys = std::mem::take(&mut self.canaries);
        assert!(!keys.is_empty(), "write_canaries first");
        loop {
            let mut pending = None;
            for key in &keys {
                let replicas = inspect(&mut c, key).await;
                let digest = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()));
                let holds = |r: &ReplicaState| r.1 == "value" && r.2.as_deref() == Some(&*digest);
                if !replicas.iter().all(holds) {
                    pending = Some((key, replicas));
                    break;
                }
            }
            let since_heal = self.healed.elapsed();
            let Some((key, replicas)) = pending else {
                self.note(&format!(
                    "canaries on every replica {since_heal:?} after the heal (bound \
                     {CONVERGE_BOUND:?})"
                ));
                self.convergence_times.push(since_heal);
                return since_heal;
            };
            assert!(
                since_heal < CONVERGE_BOUND,
                "RINGKV_TEST_SEED={}: canary {key} not on every replica {since_heal:?} after \
                 the heal: {replicas:?}; {}",
                self.seed,
                self.events.join("; ")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until no node holds a hint; returns how long it took.
    pub(crate) async fn wait_hints_delivered(&mut self) -> Duration {
        let start = Instant::now();
        loop {
            let mut queued = 0.0;
            for i in (0..NODES).filter(|&i| self.cluster.is_running(i)) {
                let (_, _, text) = http_get(self.cluster.node(i).http_addr, "/metrics").await;
                queued += metric(&text, "ringkv_hints_queued ");
            }
            if queued == 0.0 {
                let took = start.elapsed();
                self.note(&format!("no hint left anywhere after {took:?}"));
                return took;
            }
            assert!(
                start.elapsed() < CONVERGE_BOUND,
                "RINGKV_TEST_SEED={}: {queued} hints still queued after {CONVERGE_BOUND:?}; {}",
                self.seed,
                self.events.join("; ")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sum over running nodes of metric `series` (name and labels).
    pub(crate) async fn metric_sum(&self, series: &str) -> f64 {
        let mut sum = 0.0;
        for i in (0..NODES).filter(|&i| self.cluster.is_running(i)) {
            let (_, _, text) = http_get(self.cluster.node(i).http_addr, "/metrics").await;
            sum += metric(&text, series);
        }
        sum
    }

    /// Stops the load, then checks: replicas converge within
    /// [`CONVERGE_BOUND`] (on their own, or after read repair where
    /// `convergence` says anti-entropy is needed), every key reads the same
    /// through every node at `R all` and every replica holds that value,
    /// and the history has no lost write and no stale read.
    pub(crate) async fn finish(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut history = Vec::new();
        for c in std::mem::take(&mut self.clients) {
            history.extend(c.await.expect("a client task panicked"));
        }
        let load_ms = self.t0.elapsed().as_millis();
        self.note(&format!("load stopped: {}", summary(&history)));
        let keys: Vec<String> = (0..KEYS).map(|k| key_name(self.name, k)).collect();
        let mut con = self.cluster.node(0).conn().await;
        let stopped = Instant::now();
        // Replicas converge by hints, background repair and anti-entropy
        // alone, before any final read.
        match wait_converged(&mut con, &keys, CONVERGE_BOUND).await {
            Ok(took) => self.note(&format!(
                "replicas converged on their own {took:?} after the load stopped, {:?} after \
                 the last heal (bound {CONVERGE_BOUND:?})",
                self.healed.elapsed()
            )),
            Err((key, replicas)) => panic!(
                "RINGKV_TEST_SEED={}: {key} did not converge within {CONVERGE_BOUND:?} of the \
                 load stopping: {replicas:?}; {}",
                self.seed,
                self.events.join("; ")
            ),
        }
        let addrs: Vec<SocketAddr> = (0..NODES).map(|i| self.cluster.node(i).resp_addr).collect();
        let left = CONVERGE_BOUND.saturating_sub(stopped.elapsed());
        let (finals, agreed) = final_reads(&addrs, &keys, left, self.seed).await;
        history.extend(finals);
        self.check_replicas(&mut con, &keys, &agreed).await;
        self.note(&format!(
            "every replica of every key equal {:?} after the load stopped",
            stopped.elapsed()
        ));
        self.check_history(&history, load_ms);
        eprintln!(
            "[faults::{}] RINGKV_TEST_SEED={}: passed in {:?}; heal-to-convergence of the \
             canaries {:?} (bound {CONVERGE_BOUND:?})",
            self.name,
            self.seed,
            self.t0.elapsed(),
            self.convergence_times
        );
    }

    /// Every replica holds the value the final reads agreed on.
    async fn check_replicas(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
        keys: &[String],
        agreed: &[Option<String>],
    ) {
        for (key, value) in keys.iter().zip(agreed) {
            let replicas = inspect(con, key).await;
            let holds = |r: &ReplicaState| match value {
                Some(v) => {
                    let digest = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(v.as_bytes()));
                    r.1 == "value" && r.2.as_deref() == Some(digest.as_str())
                }
                None => r.1 == "tombstone" || r.1 == "missing",
            };
            assert!(
                converged(&replicas) && replicas.iter().all(holds),
                "RINGKV_TEST_SEED={}: after the final reads, {key} (read as {value:?}) is held \
                 as {replicas:?}; {}",
                self.seed,
                self.events.join("; ")
            );
        }
    }

    fn check_history(&self, history: &[Op], load_ms: u128) {
        let done = history.iter().filter(|op| op.task != FINAL_TASK).count();
        let acked_writes = history
            .iter()
            .filter(|op| op.kind == Kind::Write && acked(op))
            .count();
        eprintln!(
            "[faults::{}] load {load_ms} ms, {done} operations, {acked_writes} writes \
             acknowledged; checker slack {:?}",
            self.name, self.slack
        );
        assert!(
            acked_writes >= 50,
            "RINGKV_TEST_SEED={}: only {acked_writes} writes acknowledged: {}",
            self.seed,
            summary(history)
        );
        let prefix = self.name;
        let context = self.events.join("; ");
        assert_no_violations(
            history,
            self.slack,
            self.t0,
            &|k| key_name(prefix, k),
            self.seed,
            &context,
        );
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // NOTE: a failed scenario must not leave clients running against the
        // next test's ports; the cluster's processes die with `cluster`.
        self.shared.stop.store(true, Ordering::Relaxed);
        for c in &self.clients {
            c.abort();
        }
    }
}

/// The sum of the samples of `series` (a name followed by a space for the
/// unlabelled series).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------- clients

/// What a client is about to do; drawn before any I/O so the seed fixes it.
struct Plan {
    node: usize,
    key: usize,
    kind: Kind,
    read_level: &'static str,
    write_level: &'static str,
    /// Set for a batch operation (GETs or SETs only): its keys and level.
    batch: Option<(Vec<usize>, &'static str)>,
    pause: Duration,
}

fn plan_op(rng: &mut Rng, regimes: &[Regime]) -> Plan {
    let key = rng.below(KEYS);
    let kind = match rng.below(20) {
        0..9 => Kind::Write,
        9..11 => Kind::Delete,
        _ => Kind::Read,
    };
    let batch = draw_batch(rng, KEYS)
        .filter(|_| kind != Kind::Delete)
        .map(|keys| {
            let level = rng.pick(batch_levels(regimes, &keys, kind));
            (keys, level)
        });
    Plan {
        node: rng.below(NODES),
        key,
        kind,
        read_level: rng.pick(regimes[key].read_levels()),
        write_level: rng.pick(regimes[key].write_levels()),
        batch,
        pause: Duration::from_micros(rng.below(6000) as u64),
    }
}

/// One client: operations until told to stop or [`RUN_CAP`].
async fn client(task: usize, shared: Arc<Shared>) -> Vec<Op> {
    let mut rng = Rng::new(shared.seed, task as u64 + 1);
    let mut conns: Conns = (0..NODES).map(|_| None).collect();
    let mut ops = Vec::new();
    let mut seq = 0;
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < shared.deadline {
        let plan = plan_op(&mut rng, &shared.regimes);
        tokio::time::sleep(plan.pause).await;
        match &plan.batch {
            Some((keys, level)) => {
                let coordinator = live_coordinator(&shared.addrs.lock().unwrap(), plan.node);
                let key_name = |k| key_name(shared.prefix, k);
                let ids = (task, seq);
                let batch = run_batch(
                    ids,
                    coordinator,
                    keys,
                    &key_name,
                    plan.kind,
                    level,
                    &mut conns,
                    OP_TIMEOUT,
                );
                ops.extend(batch.await);
            }
            None => ops.push(run_op(task, seq, plan, &shared, &mut conns).await),
        }
        seq += 1;
    }
    ops
}

async fn run_op(task: usize, seq: usize, plan: Plan, shared: &Shared, conns: &mut Conns) -> Op {
    let (node, addr) = live_coordinator(&shared.addrs.lock().unwrap(), plan.node);
    let key = key_name(shared.prefix, plan.key);
    let value = (plan.kind == Kind::Write).then(|| format!("{task}-{seq}"));
    let mut cmd = match plan.kind {
        Kind::Write => redis::cmd("KV.PUT"),
        Kind::Delete => redis::cmd("KV.DEL"),
        Kind::Read => redis::cmd("KV.GET"),
    };
    cmd.arg(&key);
    if let Some(v) = &value {
        cmd.arg(v);
    }
    if plan.kind != Kind::Write {
        cmd.arg("R").arg(plan.read_level);
    }
    if plan.kind != Kind::Read {
        cmd.arg("W").arg(plan.write_level);
    }
    let invoke = Instant::now();
    let outcome = send_bounded(&cmd, node, addr, conns, OP_TIMEOUT).await;
    let complete = Instant::now();
    let (kind, level, outcome) = match (plan.kind, outcome) {
        // NOTE: a delete is a write of nil whatever it counted: one whose
        // read found nothing still writes its tombstone.
        (Kind::Delete, Outcome::Ok(_)) => (Kind::Delete, plan.write_level, Outcome::Ok(None)),
        (Kind::Read, outcome) => (Kind::Read, plan.read_level, outcome),
        (kind, outcome) => (kind, plan.write_level, outcome),
    };
    Op {
        task,
        seq,
        node,
        key: plan.key,
        kind,
        level,
        value,
        invoke,
        complete,
        outcome,
    }
}
