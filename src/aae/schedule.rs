//! The anti-entropy scheduler: every `interval` (jittered ±20 %), one round
//! over every partition replica this node holds under the layout in force,
//! exchanging with each other primary that is up, at most
//! `max_partitions_per_sec` exchanges a second.
//!
//! Invariant: a round only reads the layout and liveness; it never changes
//! ownership, and a peer that is down is skipped (counted), not waited for.
//! The last exchange of every partition replica is kept in a [`RepairLog`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::exchange::{ExchangeReport, exchange};
use crate::coordinator::{LocalStore, Store};
use crate::net::Transport;
use crate::ring::Layout;

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct AaeConfig {
    /// This node's name in the layout.
    pub node_name: String,
    /// Mean pause between rounds (`cluster.aae_interval_ms`).
    pub interval: Duration,
    /// Most partition exchanges started per second
    /// (`cluster.aae_max_partitions_per_sec`).
    pub max_partitions_per_sec: u32,
    /// Records dead longer than this are left to the sweep's purge
    /// (`storage.tombstone_grace_ms`).
    pub tombstone_grace_ms: u64,
}

/// The layout in force, read at the start of every round.
pub type LayoutFn = Arc<dyn Fn() -> Arc<Layout> + Send + Sync>;
/// Whether a peer is up (gossip).
pub type IsUpFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The last exchange of one partition replica (for `GET /v1/repair`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastExchange {
    /// Keyspace name.
    pub keyspace: String,
    /// The partition.
    pub partition: u16,
    /// The peer compared with.
    pub peer: String,
    /// When it finished, ms since the epoch.
    pub at_ms: u64,
    /// What it did (bytes and repairs up to the failure, if it failed).
    pub report: ExchangeReport,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Per-partition "last exchange" records and round counts.
#[derive(Debug, Default)]
pub struct RepairLog {
    // NOTE: a blocking lock held only to insert or copy, never across an await.
    last: Mutex<BTreeMap<(String, u16), LastExchange>>,
    rounds: AtomicU64,
}

impl RepairLog {
    /// The last exchange of every partition replica that had one, by
    /// keyspace and partition.
    pub fn last_exchanges(&self) -> Vec<LastExchange> {
        self.last.lock().values().cloned().collect()
    }

    /// Rounds completed since start.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    fn record(&self, entry: LastExchange) {
        let key = (entry.keyspace.clone(), entry.partition);
        self.last.lock().insert(key, entry);
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Exchanges run (in sync or not).
    pub exchanges: usize,
    /// Exchanges skipped because the peer was down.
    pub skipped_down: usize,
    /// Exchanges that failed.
    pub failed: usize,
    /// Records merged here / sent to peers.
    pub pulled: usize,
    /// Records sent to peers.
    pub pushed: usize,
    /// Encoded bytes exchanged.
    pub bytes: u64,
}

/// Runs rounds over one node's partition replicas.
pub struct Scheduler<T: Transport> {
    config: AaeConfig,
    store: Arc<LocalStore>,
    transport: Arc<T>,
    layout: LayoutFn,
    is_up: IsUpFn,
    log: Arc<RepairLog>,
}

impl<T: Transport> Scheduler<T> {
    /// A scheduler for `store`, reaching peers through `transport`.
    pub fn new(
        config: AaeConfig,
        store: Arc<LocalStore>,
        transport: Arc<T>,
        layout: LayoutFn,
        is_up: IsUpFn,
    ) -> Self {
        Self {
            config,
            store,
            transport,
            layout,
            is_up,
            log: Arc::new(RepairLog::default()),
        }
    }

    /// The log of last exchanges.
    pub fn repair_log(&self) -> Arc<RepairLog> {
        self.log.clone()
    }

    /// The (keyspace, partition, peer) exchanges this node starts under
    /// `layout`: every partition it is a primary of, with each other primary.
    fn plan(&self, layout: &Layout) -> Vec<(usize, u16, String)> {
        let me = self.config.node_name.as_str();
        let mut plan = Vec::new();
        for (ks, keyspace) in Store::keyspaces(&*self.store).iter().enumerate() {
            for partition in 0..layout.partitions() {
                let partition = partition as u16;
                let Ok(list) = layout.preference_list(partition, keyspace.n as usize) else {
                    continue;
                };
                let names: Vec<&str> = list
                    .primaries
                    .iter()
                    .filter_map(|&i| layout.node(i).map(|n| n.name.as_str()))
                    .collect();
                if !names.contains(&me) {
                    continue;
                }
                for peer in names.into_iter().filter(|&p| p != me) {
                    plan.push((ks, partition, peer.to_owned()));
                }
            }
        }
        plan
    }

    /// One round; returns early (with what it did) once `stop_rx` says so.
    pub async fn round(&self, stop_rx: &mut watch::Receiver<bool>) -> RoundReport {
        let layout = (self.layout)();
        let rate = f64::from(self.config.max_partitions_per_sec.max(1));
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report = RoundReport::default();
        for (ks, partition, peer) in self.plan(&layout) {
            if !(self.is_up)(&peer) {
                report.skipped_down += 1;
                metrics::counter!("ringkv_aae_skipped_peer_down_total").increment(1);
                continue;
            }
            tokio::select! {
                _ = pace.tick() => {}
                _ = stop_rx.changed() => return report,
            }
            let now = self.store.hlc().wall_ms();
            let cutoff = now.saturating_sub(self.config.tombstone_grace_ms);
            let result =
                exchange(&self.store, &*self.transport, &peer, ks, partition, cutoff).await;
            let (done, error) = match result {
                Ok(done) => (done, None),
                Err(e) => {
                    tracing::debug!(%peer, partition, error = %e, "anti-entropy exchange failed");
                    report.failed += 1;
                    (ExchangeReport::default(), Some(e.to_string()))
                }
            };
            report.exchanges += 1;
            report.pulled += done.pulled;
            report.pushed += done.pushed;
            report.bytes += done.bytes;
            self.log.record(LastExchange {
                keyspace: Store::keyspaces(&*self.store).get(ks).name.clone(),
                partition,
                peer,
                at_ms: self.store.hlc().wall_ms(),
                report: done,
                error,
            });
        }
        self.log.rounds.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ringkv_aae_rounds_total").increment(1);
        report
    }
}

/// The running scheduler; [`AaeHandle::shutdown`] stops it.
#[derive(Debug)]
pub struct AaeHandle {
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
    log: Arc<RepairLog>,
}

impl AaeHandle {
    /// Per-partition last exchanges, for `GET /v1/repair`.
    pub fn repair_log(&self) -> Arc<RepairLog> {
        self.log.clone()
    }

    /// Stops the scheduler, abandoning the exchange in progress (safe: it
    /// only merges).
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.task.await;
    }
}

/// `interval` scaled by a factor in [0.8, 1.2) drawn from the node's name
/// and the round number, so nodes do not compare in lockstep.
pub fn jittered(interval: Duration, node: &str, round: u64) -> Duration {
    let seed = xxhash_rust::xxh3::xxh3_64_with_seed(node.as_bytes(), round);
    let unit = (seed >> 11) as f64 / (1u64 << 53) as f64;
    interval.mul_f64(0.8 + 0.4 * unit)
}

/// Starts the scheduler: the first round one (jittered) interval from now.
pub fn spawn_aae<T: Transport>(scheduler: Scheduler<T>) -> AaeHandle {
    let (shutdown_tx, mut stop_rx) = watch::channel(false);
    let log = scheduler.repair_log();
    let task = tokio::spawn(async move {
        let config = &scheduler.config;
        for round in 0.. {
            let pause = jittered(config.interval, &config.node_name, round);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop_rx.changed() => return,
            }
            let report = scheduler.round(&mut stop_rx).await;
            tracing::debug!(
                exchanges = report.exchanges,
                skipped_down = report.skipped_down,
                failed = report.failed,
                pulled = report.pulled,
                pushed = report.pushed,
                bytes = report.bytes,
                "anti-entropy round done"
            );
            if *stop_rx.borrow() {
                return;
            }
        }
    });
    AaeHandle {
        shutdown_tx,
        task,
        log,
    }
}
