//! Histories of client operations and the checker that replays them; shared
//! by the randomized history test (`history.rs`) and the fault scenarios
//! (`faults/`).
//!
//! # What is recorded
//! Every operation with its invoke and completion time (`Instant` on the
//! test's clock), coordinator, key, level, the value it wrote (unique per
//! write) and its [`Outcome`]: acknowledged, refused by the server (an
//! error reply: "unknown", it may have been applied) or lost (no answer:
//! also unknown). A delete is a write of nil ([`Kind::Delete`]), whether it
//! answered 1 or 0: in a cluster, one whose read found nothing still writes
//! its tombstone.
//!
//! # The rules
//! A write's version is stamped by its coordinator after the request
//! arrived and before the coordinator answered, so a write that got *any*
//! answer (OK or an error reply) had its version fixed by its completion
//! time, whether or not it was applied; a lost write may be stamped later.
//! Write `x` is *older than* write `w` when `x` was answered more than
//! `slack` before `w` was invoked: then every sound version order puts `w`
//! after `x`. A successful read `r` of key `k` at a level with `r + w > n`
//! that returned `v` is a violation if:
//! 1. `v` was never written to `k`, or its write was invoked after `r`
//!    completed (a value from nowhere or from the future);
//! 2. `v` came from write `x`, and some write `w` to `k` with another value
//!    was acknowledged before `r` began and `x` is older than `w`;
//! 3. `v` is nil, and every way to explain it (no write ever applied, or a
//!    delete of `k` invoked before `r` ended) is older than a set of `k`
//!    acknowledged before `r` began (for "never written", any such set).
//!
//! Writes that overlap in real time may be ordered either way by
//! last-write-wins, and unknown writes may or may not be seen. Applied to
//! the final reads at `R all` after every fault healed (which start after
//! every write ended), rules 2 and 3 are "no acknowledged write is lost":
//! the final value of each key is its last acknowledged write or a write not
//! older than it.
//!
//! `slack` covers the one known gap of HLC versions (docs/design/quorum.md):
//! writes through different coordinators less than the clocks' skew (plus a
//! microsecond) apart may be versioned against real time. The nodes of one
//! machine share its clock, so the slack is zero unless a test skews a clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::support::{client_for, error_text, try_connect};

/// Writes that do not overlap in real time get HLC versions in real-time
/// order even from different coordinators: the later one's wall-clock
/// microsecond is past the earlier one's (one machine, one clock).
pub(crate) const SAME_CLOCK_SLACK: Duration = Duration::ZERO;
/// Operations of the final reads are credited to this "task".
pub(crate) const FINAL_TASK: usize = usize::MAX;

// ---------------------------------------------------------------- seed, PRNG

/// The seed from `RINGKV_TEST_SEED` (decimal or `0x` hex), else from the time.
pub(crate) fn seed() -> u64 {
    match std::env::var("RINGKV_TEST_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("bad RINGKV_TEST_SEED={text:?}: {e}"))
        }
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64;
            splitmix64(nanos ^ u64::from(std::process::id()))
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// splitmix64 as a stream: small, deterministic, good enough for choices.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64) -> Rng {
        Rng(splitmix64(seed ^ splitmix64(stream)))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------- levels

/// The levels one key is read and written at; `min r + min w > 3` within a
/// regime, so every read of the key meets every acknowledged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Regime {
    Quorums,
    ReadOneWriteAll,
    ReadAllWriteOne,
}

impl Regime {
    pub(crate) const ALL: [Regime; 3] = [
        Regime::Quorums,
        Regime::ReadOneWriteAll,
        Regime::ReadAllWriteOne,
    ];

    pub(crate) fn read_levels(self) -> &'static [&'static str] {
        match self {
            Regime::Quorums => &["two", "quorum", "all", "2"],
            Regime::ReadOneWriteAll => &["one", "1"],
            Regime::ReadAllWriteOne => &["all", "3"],
        }
    }

    pub(crate) fn write_levels(self) -> &'static [&'static str] {
        match self {
            Regime::Quorums => &["two", "quorum", "all", "3"],
            Regime::ReadOneWriteAll => &["all", "3"],
            Regime::ReadAllWriteOne => &["one", "1"],
        }
    }
}

/// `keys` regimes from `allowed`: each allowed one at least once (if there
/// are enough keys), the rest drawn, in a seeded order.
pub(crate) fn key_regimes(rng: &mut Rng, allowed: &[Regime], keys: usize) -> Vec<Regime> {
    let mut regimes: Vec<Regime> = allowed.iter().copied().take(keys).collect();
    while regimes.len() < keys {
        regimes.push(rng.pick(allowed));
    }
    for i in (1..regimes.len()).rev() {
        regimes.swap(i, rng.below(i + 1));
    }
    regimes
}

// ---------------------------------------------------------------- history

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A set of a unique value.
    Write,
    /// A delete: a write of nil.
    Delete,
    /// A get.
    Read,
}

impl Kind {
    fn writes(self) -> bool {
        matches!(self, Kind::Write | Kind::Delete)
    }
}

/// How an operation ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Acknowledged write, or a read with what it returned.
    Ok(Option<String>),
    /// The server answered with an error: a write may have been applied,
    /// but its version was fixed before this answer.
    Refused(String),
    /// No answer: a write may be stamped and applied at any later time.
    Lost(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Op {
    pub task: usize,
    pub seq: usize,
    pub node: usize,
    pub key: usize,
    pub kind: Kind,
    pub level: &'static str,
    /// The value a set wrote (`None` for reads and deletes).
    pub value: Option<String>,
    pub invoke: Instant,
    pub complete: Instant,
    pub outcome: Outcome,
}

/// One client's cached connections, one per node and address.
pub(crate) type Conns = Vec<Option<(SocketAddr, MultiplexedConnection)>>;

/// Node `wanted` if clients may use it (its address is set), else the next
/// one that they may; `None` for the address when none may.
pub(crate) fn live_coordinator(
    addrs: &[Option<SocketAddr>],
    wanted: usize,
) -> (usize, Option<SocketAddr>) {
    let nodes = addrs.len();
    (0..nodes)
        .map(|i| (wanted + i) % nodes)
        .find_map(|i| addrs[i].map(|a| (i, Some(a))))
        .unwrap_or((wanted, None))
}

/// Sends `cmd` to `addr` over the cached connection of `node` (reconnecting
/// when the address changed); a reply of nil, a bulk string or an integer
/// (rendered as text) is `Ok`.
pub(crate) async fn send(
    cmd: &redis::Cmd,
    node: usize,
    addr: Option<SocketAddr>,
    conns: &mut Conns,
) -> Outcome {
    let con = match connection(node, addr, conns).await {
        Ok(con) => con,
        Err(lost) => return lost,
    };
    outcome(cmd.query_async::<Option<String>>(con).await)
}

/// The cached connection of `node` to `addr` (reconnecting when the address
/// changed), or the outcome of an operation that cannot be sent.
async fn connection(
    node: usize,
    addr: Option<SocketAddr>,
    conns: &mut Conns,
) -> Result<&mut MultiplexedConnection, Outcome> {
    let Some(addr) = addr else {
        return Err(Outcome::Lost("every node is down".into()));
    };
    if conns[node].as_ref().is_none_or(|(a, _)| *a != addr) {
        match try_connect(&client_for(addr, "")).await {
            Ok(con) => conns[node] = Some((addr, con)),
            Err(e) => return Err(Outcome::Lost(format!("connect: {e}"))),
        }
    }
    Ok(&mut conns[node].as_mut().expect("connected above").1)
}

/// A reply as an operation's outcome: nil, a bulk string or an integer
/// (rendered as text) is `Ok`, an error reply `Refused`, no reply `Lost`.
fn outcome(reply: redis::RedisResult<Option<String>>) -> Outcome {
    match reply {
        Ok(reply) => Outcome::Ok(reply),
        Err(e) if e.code().is_some() && !e.is_io_error() => Outcome::Refused(error_text(&e)),
        Err(e) => Outcome::Lost(e.to_string()),
    }
}

/// Keys of a batch operation (a pipeline of plain GETs or SETs, which a
/// coordinator reads or writes as one batch per replica): 2 to `keys`
/// distinct keys, or `None` for a single-key operation (three in four).
pub(crate) fn draw_batch(rng: &mut Rng, keys: usize) -> Option<Vec<usize>> {
    if rng.below(4) != 0 {
        return None;
    }
    let (first, len) = (rng.below(keys), 2 + rng.below(keys - 1));
    Some((0..len).map(|i| (first + i) % keys).collect())
}

/// The levels a batch of `keys` may use for `kind`: their regime's when
/// they all mix quorums, else `all`, which meets every regime's other side.
pub(crate) fn batch_levels(
    regimes: &[Regime],
    keys: &[usize],
    kind: Kind,
) -> &'static [&'static str] {
    if !keys.iter().all(|&k| regimes[k] == Regime::Quorums) {
        return &["all"];
    }
    match kind {
        Kind::Read => Regime::Quorums.read_levels(),
        Kind::Write | Kind::Delete => Regime::Quorums.write_levels(),
    }
}

/// A batch operation as the history sees it: a pipeline of a CONSISTENCY
/// setting `level`, then a plain GET (or SET, of a value unique to `task`
/// and `seq`) per key; one operation per key, all begun when the pipeline
/// is sent and completed when its replies are in.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_batch(
    (task, seq): (usize, usize),
    (node, addr): (usize, Option<SocketAddr>),
    keys: &[usize],
    key_name: &(dyn Fn(usize) -> String + Sync),
    kind: Kind,
    level: &'static str,
    conns: &mut Conns,
    limit: Duration,
) -> Vec<Op> {
    let (read, write) = match kind {
        Kind::Read => (level, "all"),
        Kind::Write | Kind::Delete => ("all", level),
    };
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("CONSISTENCY")
        .arg("READ")
        .arg(read)
        .arg("WRITE")
        .arg(write)
        .ignore();
    let values: Vec<Option<String>> = (0..keys.len())
        .map(|j| (kind == Kind::Write).then(|| format!("{task}-{seq}.{j}")))
        .collect();
    for (&key, value) in keys.iter().zip(&values) {
        match value {
            Some(v) => pipe.cmd("SET").arg(key_name(key)).arg(v),
            None => pipe.cmd("GET").arg(key_name(key)),
        };
    }
    let invoke = Instant::now();
    let outcomes = send_pipeline_bounded(&pipe, keys.len(), node, addr, conns, limit).await;
    let complete = Instant::now();
    keys.iter()
        .zip(values)
        .zip(outcomes)
        .map(|((&key, value), outcome)| Op {
            task,
            seq,
            node,
            key,
            kind,
            level,
            value,
            invoke,
            complete,
            outcome,
        })
        .collect()
}

/// Sends `pipe` (`len` commands whose replies are not ignored) like
/// [`send_bounded`]: one outcome per command, each failing on its own; all
/// `Lost` when the pipeline got no answer within `limit`.
async fn send_pipeline_bounded(
    pipe: &redis::Pipeline,
    len: usize,
    node: usize,
    addr: Option<SocketAddr>,
    conns: &mut Conns,
    limit: Duration,
) -> Vec<Outcome> {
    let send = async {
        let con = connection(node, addr, conns).await?;
        match pipe
            .query_async::<Vec<redis::RedisResult<Option<String>>>>(con)
            .await
        {
            Ok(replies) if replies.len() == len => Ok(replies.into_iter().map(outcome).collect()),
            Ok(replies) => Err(Outcome::Lost(format!(
                "{} replies for {len}",
                replies.len()
            ))),
            Err(e) => Err(Outcome::Lost(e.to_string())),
        }
    };
    let lost = match tokio::time::timeout(limit, send).await {
        Ok(Ok(outcomes)) => return outcomes,
        Ok(Err(lost)) => lost,
        Err(_) => Outcome::Lost(format!("no answer within {limit:?}")),
    };
    conns[node] = None;
    vec![lost; len]
}

/// `send` bounded by `limit` (a timeout is a lost operation); drops the
/// cached connection of an operation that got no answer.
pub(crate) async fn send_bounded(
    cmd: &redis::Cmd,
    node: usize,
    addr: Option<SocketAddr>,
    conns: &mut Conns,
    limit: Duration,
) -> Outcome {
    let outcome = match tokio::time::timeout(limit, send(cmd, node, addr, conns)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Lost(format!("no answer within {limit:?}")),
    };
    if matches!(outcome, Outcome::Lost(_)) {
        conns[node] = None;
    }
    outcome
}

/// Waits until every node in `addrs` can read at `R all`: a node started
/// before its peers backs off from them for a while, and a run should begin
/// with a whole cluster.
pub(crate) async fn wait_for_full_cluster(addrs: &[SocketAddr], limit: Duration, seed: u64) {
    let deadline = Instant::now() + limit;
    let mut conns: Conns = addrs.iter().map(|_| None).collect();
    for (node, addr) in addrs.iter().enumerate() {
        let mut cmd = redis::cmd("KV.GET");
        cmd.arg("warmup").arg("R").arg("all");
        loop {
            let outcome = send_bounded(&cmd, node, Some(*addr), &mut conns, limit).await;
            if matches!(outcome, Outcome::Ok(_)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "RINGKV_TEST_SEED={seed}: node{} cannot read at R all within {limit:?} of \
                 the cluster start: {outcome:?}",
                node + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads every key through every node in `addrs` at `R all` until all
/// agree, retrying within `limit`; returns the reads made (for the checker)
/// and the agreed value of each key.
pub(crate) async fn final_reads(
    addrs: &[SocketAddr],
    keys: &[String],
    limit: Duration,
    seed: u64,
) -> (Vec<Op>, Vec<Option<String>>) {
    let mut ops = Vec::new();
    let mut agreed = Vec::new();
    let deadline = Instant::now() + limit;
    let mut conns: Conns = addrs.iter().map(|_| None).collect();
    for (key, name) in keys.iter().enumerate() {
        loop {
            let mut seen = Vec::new();
            for (node, addr) in addrs.iter().enumerate() {
                let mut cmd = redis::cmd("KV.GET");
                cmd.arg(name).arg("R").arg("all");
                let invoke = Instant::now();
                let outcome = send_bounded(&cmd, node, Some(*addr), &mut conns, limit).await;
                seen.push(outcome.clone());
                ops.push(Op {
                    task: FINAL_TASK,
                    seq: ops.len(),
                    node,
                    key,
                    kind: Kind::Read,
                    level: "all",
                    value: None,
                    invoke,
                    complete: Instant::now(),
                    outcome,
                });
            }
            let values: Vec<&Option<String>> = seen
                .iter()
                .filter_map(|o| match o {
                    Outcome::Ok(v) => Some(v),
                    _ => None,
                })
                .collect();
            if values.len() == addrs.len() && values.iter().all(|v| *v == values[0]) {
                agreed.push(values[0].clone());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "RINGKV_TEST_SEED={seed}: {name} did not read the same through every node at \
                 R all within {limit:?}; last answers (node1..): {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (ops, agreed)
}

// ---------------------------------------------------------------- checker

/// A rule broken by one read, with the operations that show it.
pub(crate) struct Violation {
    pub rule: &'static str,
    pub read: Op,
    pub witnesses: Vec<Op>,
}

/// When a write's version was fixed at the latest: when it got any answer.
fn fixed_by(w: &Op) -> Option<Instant> {
    match w.outcome {
        Outcome::Ok(_) | Outcome::Refused(_) => Some(w.complete),
        Outcome::Lost(_) => None,
    }
}

pub(crate) fn acked(op: &Op) -> bool {
    matches!(op.outcome, Outcome::Ok(_))
}

/// Applies the rules of the module docs to every successful read.
pub(crate) fn check(history: &[Op], slack: Duration) -> Vec<Violation> {
    let sets: HashMap<&str, &Op> = history
        .iter()
        .filter_map(|op| op.value.as_deref().map(|v| (v, op)))
        .collect();
    // NOTE: grouped by key, so a long soak history checks in seconds.
    let mut writes_of: HashMap<usize, Vec<&Op>> = HashMap::new();
    for w in history.iter().filter(|op| op.kind.writes()) {
        writes_of.entry(w.key).or_default().push(w);
    }
    let mut violations = Vec::new();
    for read in history.iter().filter(|op| op.kind == Kind::Read) {
        let Outcome::Ok(returned) = &read.outcome else {
            continue;
        };
        let writes = writes_of.get(&read.key).map_or(&[][..], Vec::as_slice);
        let acked_before: Vec<&Op> = writes
            .iter()
            .copied()
            .filter(|w| acked(w) && w.complete < read.invoke)
            .collect();
        let violation = |rule, witnesses: Vec<&Op>| Violation {
            rule,
            read: read.clone(),
            witnesses: witnesses.into_iter().cloned().collect(),
        };
        let found = match returned {
            Some(value) => check_value(value, read, &sets, &acked_before, slack),
            None => check_nil(read, writes, &acked_before, slack),
        };
        if let Some((rule, witnesses)) = found {
            violations.push(violation(rule, witnesses));
        }
    }
    violations
}

/// `w` is newer than a write fixed at `fixed`: invoked more than `slack` after.
fn newer(fixed: Instant, w: &Op, slack: Duration) -> bool {
    fixed + slack < w.invoke
}

type Found<'a> = Option<(&'static str, Vec<&'a Op>)>;

/// Rules 1 and 2 for a read that returned `value`.
fn check_value<'a>(
    value: &str,
    read: &Op,
    sets: &HashMap<&str, &'a Op>,
    acked_before: &[&'a Op],
    slack: Duration,
) -> Found<'a> {
    let Some(x) = sets.get(value).copied() else {
        return Some(("returned a value never written", vec![]));
    };
    if x.key != read.key || x.invoke > read.complete {
        return Some((
            "returned a value not written to this key before the read ended",
            vec![x],
        ));
    }
    let x_fixed = fixed_by(x)?;
    let newest = acked_before
        .iter()
        .filter(|w| w.value.as_deref() != Some(value) && newer(x_fixed, w, slack))
        .max_by_key(|w| w.complete)?;
    Some((
        "returned a value older than a write acknowledged before the read began",
        vec![x, newest],
    ))
}

/// Rule 3 for a read that returned nil.
fn check_nil<'a>(
    read: &Op,
    writes: &[&'a Op],
    acked_before: &[&'a Op],
    slack: Duration,
) -> Found<'a> {
    let acked_sets: Vec<&Op> = acked_before
        .iter()
        .copied()
        .filter(|w| w.kind == Kind::Write)
        .collect();
    let newest_set = acked_sets.iter().copied().max_by_key(|w| w.complete)?;
    let mut deletes = writes
        .iter()
        .filter(|d| d.kind == Kind::Delete && d.invoke <= read.complete);
    let explained = deletes.any(|d| match fixed_by(d) {
        None => true,
        Some(fixed) => !acked_sets.iter().any(|w| newer(fixed, w, slack)),
    });
    if explained {
        return None;
    }
    Some((
        "returned nil although a set was acknowledged after every delete that could explain it",
        vec![newest_set],
    ))
}

// ---------------------------------------------------------------- reporting

/// One line per operation, times in µs since `t0`.
pub(crate) fn describe(op: &Op, t0: Instant, key_name: &dyn Fn(usize) -> String) -> String {
    let us = |t: Instant| t.saturating_duration_since(t0).as_micros();
    let what = match op.kind {
        Kind::Write => format!("PUT {} W {}", op.value.as_deref().unwrap_or("?"), op.level),
        Kind::Delete => format!("DEL W {}", op.level),
        Kind::Read => format!("GET R {}", op.level),
    };
    let who = if op.task == FINAL_TASK {
        "final".to_owned()
    } else {
        format!("t{}#{}", op.task, op.seq)
    };
    format!(
        "[{:>9}us..{:>9}us] {who:>8} node{} {} {what} -> {:?}",
        us(op.invoke),
        us(op.complete),
        op.node + 1,
        key_name(op.key),
        op.outcome
    )
}

/// The violation and every operation on its key from the earliest witness
/// to the end of the read (at most 40 lines).
pub(crate) fn excerpt(
    v: &Violation,
    history: &[Op],
    t0: Instant,
    key_name: &(dyn Fn(usize) -> String + Sync),
) -> String {
    let from = v
        .witnesses
        .iter()
        .map(|w| w.invoke)
        .chain([v.read.invoke])
        .min()
        .expect("the read itself");
    let mut around: Vec<&Op> = history
        .iter()
        .filter(|op| op.key == v.read.key && op.complete >= from && op.invoke <= v.read.complete)
        .collect();
    around.sort_by_key(|op| op.invoke);
    let line = |op: &Op| describe(op, t0, key_name);
    let mut text = format!("{}\n  read:    {}\n", v.rule, line(&v.read));
    for w in &v.witnesses {
        text.push_str(&format!("  witness: {}\n", line(w)));
    }
    text.push_str("  history of the key in that window:\n");
    for op in around.iter().take(40) {
        text.push_str(&format!("    {}\n", line(op)));
    }
    text
}

/// Counts by kind and outcome, then the most common errors (truncated).
pub(crate) fn summary(history: &[Op]) -> String {
    let mut parts = Vec::new();
    let mut errors: HashMap<String, usize> = HashMap::new();
    for (kind, name) in [
        (Kind::Write, "write"),
        (Kind::Delete, "delete"),
        (Kind::Read, "read"),
    ] {
        let (mut ok, mut refused, mut lost) = (0, 0, 0);
        for op in history.iter().filter(|op| op.kind == kind) {
            let error = match &op.outcome {
                Outcome::Ok(_) => {
                    ok += 1;
                    continue;
                }
                Outcome::Refused(e) => {
                    refused += 1;
                    e
                }
                Outcome::Lost(e) => {
                    lost += 1;
                    e
                }
            };
            *errors.entry(error.chars().take(100).collect()).or_default() += 1;
        }
        parts.push(format!("{name} ok={ok} refused={refused} lost={lost}"));
    }
    let mut errors: Vec<(String, usize)> = errors.into_iter().collect();
    errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (error, count) in errors.iter().take(4) {
        parts.push(format!("{count}x {error:?}"));
    }
    parts.join(", ")
}

/// Panics unless `history` tested something: successful reads (one
/// operation in eight, final reads aside), and an acknowledged write and a
/// successful read within `outage` (invoked and completed in it). The
/// checker judges only successful reads, so a run whose reads all failed,
/// or that did nothing while a node was down, would pass untested.
pub(crate) fn assert_exercised(history: &[Op], outage: (Instant, Instant), seed: u64) {
    let done = history.iter().filter(|op| op.task != FINAL_TASK).count();
    let reads_ok = history
        .iter()
        .filter(|op| op.task != FINAL_TASK && op.kind == Kind::Read && acked(op))
        .count();
    assert!(
        reads_ok * 8 >= done,
        "RINGKV_TEST_SEED={seed}: only {reads_ok} of {done} operations were successful reads; {}",
        summary(history)
    );
    let (from, to) = outage;
    let during = |kind: Kind| {
        history
            .iter()
            .any(|op| op.kind == kind && acked(op) && op.invoke >= from && op.complete <= to)
    };
    assert!(
        during(Kind::Write) && during(Kind::Read),
        "RINGKV_TEST_SEED={seed}: no write acknowledged or no read answered during the outage; {}",
        summary(history)
    );
}

/// Checks `history` and panics with the first violations, seed first.
pub(crate) fn assert_no_violations(
    history: &[Op],
    slack: Duration,
    t0: Instant,
    key_name: &(dyn Fn(usize) -> String + Sync),
    seed: u64,
    context: &str,
) {
    let violations = check(history, slack);
    let report: Vec<String> = violations
        .iter()
        .take(5)
        .map(|v| excerpt(v, history, t0, key_name))
        .collect();
    assert!(
        violations.is_empty(),
        "RINGKV_TEST_SEED={seed}: {} stale, lost or impossible reads (first {} below); {context}\n{}",
        violations.len(),
        report.len(),
        report.join("\n")
    );
}

// ---------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;

    struct At(Instant);

    impl At {
        fn op(&self, seq: usize, kind: Kind, value: Option<&str>, span: (u64, u64)) -> Op {
            let at = |ms: u64| self.0 + Duration::from_millis(ms);
            Op {
                task: 0,
                seq,
                node: 0,
                key: 0,
                kind,
                level: "quorum",
                value: value.map(str::to_owned),
                invoke: at(span.0),
                complete: at(span.1),
                outcome: Outcome::Ok(None),
            }
        }
    }

    fn ok(v: Option<&str>) -> Outcome {
        Outcome::Ok(v.map(str::to_owned))
    }

    fn rules(history: &[Op], slack: Duration) -> Vec<&'static str> {
        check(history, slack).into_iter().map(|v| v.rule).collect()
    }

    #[test]
    fn the_checker_flags_stale_and_impossible_reads_and_accepts_overlaps() {
        let t = At(Instant::now());
        let a = t.op(0, Kind::Write, Some("a"), (0, 10));
        let b = t.op(1, Kind::Write, Some("b"), (20, 30));
        // Overlapping `b`: either order is fine.
        let mut c = t.op(2, Kind::Write, Some("c"), (25, 35));
        c.outcome = Outcome::Refused("UNAVAILABLE".into());
        let read = |seq, start, value: Option<&str>| {
            let mut r = t.op(seq, Kind::Read, None, (start, start + 5));
            r.outcome = ok(value);
            r
        };
        let base = vec![a, b, c];
        let verdict = |r: Op| {
            let mut h = base.clone();
            h.push(r);
            rules(&h, Duration::ZERO)
        };
        assert!(verdict(read(3, 40, Some("b"))).is_empty());
        assert!(
            verdict(read(3, 40, Some("c"))).is_empty(),
            "a refused write may be applied"
        );
        assert!(
            verdict(read(3, 15, Some("a"))).is_empty(),
            "b not acknowledged yet"
        );
        assert!(
            verdict(read(3, 22, Some("b"))).is_empty(),
            "b in flight may be seen"
        );
        assert_eq!(
            verdict(read(3, 40, Some("a"))).len(),
            1,
            "a is older than b"
        );
        assert_eq!(verdict(read(3, 40, None)).len(), 1, "nil after acks");
        assert_eq!(verdict(read(3, 40, Some("zz"))).len(), 1, "never written");
        assert_eq!(
            verdict(read(3, 12, Some("c"))).len(),
            1,
            "c invoked after the read ended"
        );
        let mut stale = base.clone();
        stale.push(read(3, 40, Some("a")));
        assert!(
            check(&stale, Duration::from_millis(15)).is_empty(),
            "a answered 10 ms before b began: within a 15 ms slack"
        );
        assert_eq!(check(&stale, Duration::from_millis(5)).len(), 1);
    }

    #[test]
    fn deletes_explain_nil_until_a_later_set_is_acknowledged() {
        let t = At(Instant::now());
        let a = t.op(0, Kind::Write, Some("a"), (0, 10));
        let del = t.op(1, Kind::Delete, None, (20, 30));
        let read = |start, value: Option<&str>| {
            let mut r = t.op(9, Kind::Read, None, (start, start + 5));
            r.outcome = ok(value);
            r
        };
        let h = |extra: Vec<Op>| [vec![a.clone(), del.clone()], extra].concat();
        assert!(rules(&h(vec![read(40, None)]), Duration::ZERO).is_empty());
        assert_eq!(
            rules(&h(vec![read(40, Some("a"))]), Duration::ZERO),
            ["returned a value older than a write acknowledged before the read began"],
            "an acknowledged delete hides the older set"
        );
        let b = t.op(2, Kind::Write, Some("b"), (50, 60));
        assert_eq!(
            rules(&h(vec![b.clone(), read(70, None)]), Duration::ZERO).len(),
            1,
            "a set acknowledged after the delete: nil is stale"
        );
        let mut lost_del = t.op(3, Kind::Delete, None, (55, 65));
        lost_del.outcome = Outcome::Lost("timeout".into());
        assert!(
            rules(&h(vec![b, lost_del, read(70, None)]), Duration::ZERO).is_empty(),
            "a lost delete may be stamped after b"
        );
    }
}
