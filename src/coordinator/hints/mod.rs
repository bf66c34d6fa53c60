//! Hinted handoff (DESIGN.md §5): a write meant for a primary that did not
//! take it is kept here, durably, and delivered (merged) when that primary is
//! seen alive again.
//!
//! Hints live in their own engine (a second fjall database under
//! `data_dir/hints`, or memory), keyed `[target length][target][sequence]` so
//! each target's queue is one contiguous range in arrival order. Sequence
//! numbers restart after the largest found at start-up.
//!
//! Invariants:
//! - A hint is only ever delivered as a [`Request::Write`], which the target
//!   merges, so delivering one twice, late, or after a newer write is harmless.
//! - Hints are bounded by age (`hint_window`) and by bytes per target; past
//!   either bound they are dropped and counted (anti-entropy repairs what
//!   they would have), and a client write is never refused because of them.
//! - A hint is removed only after its target acknowledged it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::storage::keys::prefix_end;
use crate::storage::{Durability, Engine, StorageError};
use crate::version::Hlc;

mod delivery;
pub use delivery::{HintDeliveryHandle, spawn_hint_delivery};

/// Bounds on the hints kept.
#[derive(Debug, Clone, Copy)]
pub struct HintConfig {
    /// Hints older than this are dropped, ms.
    pub window_ms: u64,
    /// Most bytes of hints kept per target.
    pub max_bytes_per_target: u64,
    /// fsync every hint before it is acknowledged (`fsync = always`);
    /// otherwise hints reach the OS at once and the disk with the node's
    /// periodic fsync.
    pub sync_each: bool,
}

/// One target's queue as `GET /v1/repair` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintQueue {
    /// Hints waiting.
    pub hints: u64,
    /// Their bytes (keys and values as stored).
    pub bytes: u64,
    /// Creation time of the oldest, ms since the epoch.
    pub oldest_ms: Option<u64>,
    /// Hints delivered to it since start-up.
    pub delivered: u64,
    /// Hints for it dropped since start-up (too old, or the queue full).
    pub dropped: u64,
}

/// Format of a stored hint: this byte, then the postcard of [`StoredHint`].
const HINT_FORMAT: u8 = 1;

/// What is stored per hint.
#[derive(Debug, Serialize, Deserialize)]
struct StoredHint {
    created_ms: u64,
    keyspace: String,
    key: Bytes,
    record: Bytes,
}

/// The hints this node keeps for other nodes.
pub struct Hints {
    engine: Arc<dyn Engine>,
    config: HintConfig,
    hlc: Arc<Hlc>,
    next_seq: AtomicU64,
    // NOTE: blocking lock, held only to update counters, never across an await.
    queues: Mutex<BTreeMap<String, HintQueue>>,
}

impl std::fmt::Debug for Hints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hints")
            .field("engine", &self.engine.kind())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn queue_prefix(target: &str) -> Vec<u8> {
    let name = &target.as_bytes()[..target.len().min(255)];
    let mut prefix = Vec::with_capacity(1 + name.len() + 8);
    prefix.push(name.len() as u8);
    prefix.extend_from_slice(name);
    prefix
}

/// The target and sequence number of a stored hint key.
fn decode_key(raw: &[u8]) -> Option<(&str, u64)> {
    let (&len, rest) = raw.split_first()?;
    let len = usize::from(len);
    let name = std::str::from_utf8(rest.get(..len)?).ok()?;
    let seq = u64::from_be_bytes(rest.get(len..len + 8)?.try_into().ok()?);
    Some((name, seq))
}

fn codec_error(e: postcard::Error) -> StoreError {
    StoreError::Storage(StorageError::Task(format!("hint codec: {e}")))
}

fn encode_hint(hint: &StoredHint) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(hint, vec![HINT_FORMAT]).map_err(codec_error)
}

/// A stored hint, or `None` when its bytes are not a hint this version
/// reads (it is then dropped and counted, never retried forever).
fn decode_hint(raw: &[u8]) -> Option<StoredHint> {
    match raw.split_first() {
        Some((&HINT_FORMAT, body)) => postcard::from_bytes(body).ok(),
        _ => None,
    }
}

/// Hints read from a queue at once.
const PAGE: usize = 256;

/// Hints sent to a target concurrently while delivering.
const DELIVERY_CONCURRENCY: usize = 32;

/// What one delivery round did for a target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Hints the target acknowledged.
    pub delivered: u64,
    /// Hints dropped as older than the window.
    pub expired: u64,
    /// Hints dropped because the target answered with a refusal.
    pub refused: u64,
    /// Hints dropped because they could not be decoded.
    pub corrupt: u64,
    /// Why delivery stopped early, if it did.
    pub failed: Option<String>,
}

impl Hints {
    /// Opens the hints kept in `engine`, counting each target's queue.
    pub fn open(
        engine: Arc<dyn Engine>,
        config: HintConfig,
        hlc: Arc<Hlc>,
    ) -> Result<Self, StoreError> {
        let mut queues: BTreeMap<String, HintQueue> = BTreeMap::new();
        let mut max_seq = None;
        let mut cursor = Vec::new();
        loop {
            let page = engine.scan(&cursor, None, 4096)?;
            let Some((last, _)) = page.last() else { break };
            cursor = crate::storage::keys::successor(last);
            for (raw_key, raw_value) in &page {
                let (Some((target, seq)), Some(hint)) =
                    (decode_key(raw_key), decode_hint(raw_value))
                else {
                    tracing::warn!("unreadable hint dropped at start-up");
                    metrics::counter!("ringkv_hints_dropped_total", "reason" => "corrupt")
                        .increment(1);
                    engine.remove(raw_key)?;
                    continue;
                };
                max_seq = max_seq.max(Some(seq));
                let queue = queues.entry(target.to_owned()).or_default();
                queue.hints += 1;
                queue.bytes += (raw_key.len() + raw_value.len()) as u64;
                queue.oldest_ms = Some(
                    queue
                        .oldest_ms
                        .map_or(hint.created_ms, |o| o.min(hint.created_ms)),
                );
            }
        }
        let hints = Self {
            engine,
            config,
            hlc,
            next_seq: AtomicU64::new(max_seq.map_or(0, |s| s + 1)),
            queues: Mutex::new(queues),
        };
        hints.publish_gauges();
        Ok(hints)
    }

    /// Keeps `record` (encoded) of `keyspace`/`key` for `target`. Returns
    /// false when the target's queue is full and the hint was dropped.
    pub fn add(
        &self,
        target: &str,
        keyspace: &str,
        key: &[u8],
        record: Bytes,
    ) -> Result<bool, StoreError> {
        Ok(self.add_many(target, keyspace, [(key, record)])? == 1)
    }

    /// Keeps each of `writes` (key, encoded record) of `keyspace` for
    /// `target`, as [`Self::add`] does one, with one flush for them all (a
    /// batch of writes a primary missed). Returns how many were kept; the
    /// others were dropped because the target's queue is full. On an error
    /// the writes not yet stored are dropped (and counted), while those
    /// stored stay kept and counted: delivering one twice is harmless.
    pub fn add_many<'k>(
        &self,
        target: &str,
        keyspace: &str,
        writes: impl IntoIterator<Item = (&'k [u8], Bytes)>,
    ) -> Result<usize, StoreError> {
        let created_ms = self.hlc.wall_ms();
        let prefix = queue_prefix(target);
        let (mut kept, mut full, mut lost) = (0, 0u64, 0u64);
        let mut failed = None;
        for (key, record) in writes {
            if failed.is_some() {
                lost += 1;
                continue;
            }
            let hint = StoredHint {
                created_ms,
                keyspace: keyspace.to_owned(),
                key: Bytes::copy_from_slice(key),
                record,
            };
            match self.store_one(target, &prefix, &hint) {
                Ok(true) => kept += 1,
                Ok(false) => full += 1,
                Err(e) => {
                    lost += 1;
                    failed = Some(e);
                }
            }
        }
        if kept > 0 {
            // NOTE: into the OS at once, so a crash of this process keeps
            // them; onto the disk now only under `fsync = always`.
            let durability = if self.config.sync_each {
                Durability::Sync
            } else {
                Durability::Buffer
            };
            if let Err(e) = self.engine.flush(durability) {
                failed.get_or_insert(e.into());
            }
            metrics::counter!("ringkv_hints_stored_total").increment(kept as u64);
            self.publish_gauges();
        }
        self.count_dropped(target, full, lost);
        failed.map_or(Ok(kept), Err)
    }

    /// Stores one hint for `target`, counted in its queue before it is
    /// written (a delivery that finds it then finds it counted); false, and
    /// not stored, when the queue is full.
    fn store_one(
        &self,
        target: &str,
        prefix: &[u8],
        hint: &StoredHint,
    ) -> Result<bool, StoreError> {
        let value = encode_hint(hint)?;
        let mut raw_key = prefix.to_vec();
        raw_key.extend_from_slice(&self.next_seq.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        let size = (raw_key.len() + value.len()) as u64;
        {
            let mut queues = self.queues.lock();
            let queue = queues.entry(target.to_owned()).or_default();
            if queue.bytes + size > self.config.max_bytes_per_target {
                return Ok(false);
            }
            queue.hints += 1;
            queue.bytes += size;
            queue.oldest_ms.get_or_insert(hint.created_ms);
        }
        if let Err(e) = self.engine.put(raw_key.into(), value.into()) {
            let mut queues = self.queues.lock();
            if let Some(queue) = queues.get_mut(target) {
                queue.hints = queue.hints.saturating_sub(1);
                queue.bytes = queue.bytes.saturating_sub(size);
            }
            return Err(e.into());
        }
        Ok(true)
    }

    /// Counts hints for `target` dropped because its queue was `full`, or
    /// `lost` to an error.
    fn count_dropped(&self, target: &str, full: u64, lost: u64) {
        if full + lost == 0 {
            return;
        }
        self.queues
            .lock()
            .entry(target.to_owned())
            .or_default()
            .dropped += full + lost;
        if full > 0 {
            metrics::counter!("ringkv_hints_dropped_total", "reason" => "full").increment(full);
            tracing::warn!(
                target_node = target,
                dropped = full,
                limit = self.config.max_bytes_per_target,
                "hint queue full: hints dropped (anti-entropy will repair the keys)"
            );
        }
        if lost > 0 {
            metrics::counter!("ringkv_hints_dropped_total", "reason" => "error").increment(lost);
        }
    }

    /// Hints waiting, over every target.
    pub fn queued(&self) -> u64 {
        self.queues.lock().values().map(|q| q.hints).sum()
    }

    /// Every target with hints waiting, and its queue.
    pub fn queues(&self) -> BTreeMap<String, HintQueue> {
        self.queues.lock().clone()
    }

    /// Targets with hints waiting.
    pub fn targets(&self) -> Vec<String> {
        self.queues
            .lock()
            .iter()
            .filter(|(_, q)| q.hints > 0)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// fsyncs the hints (shutdown, and the node's once-a-second fsync).
    pub fn sync_to_disk(&self) -> Result<(), StoreError> {
        Ok(self.engine.flush(Durability::Sync)?)
    }

    fn publish_gauges(&self) {
        let (hints, bytes) = self
            .queues
            .lock()
            .values()
            .fold((0, 0), |(h, b), q| (h + q.hints, b + q.bytes));
        metrics::gauge!("ringkv_hints_queued").set(hints as f64);
        metrics::gauge!("ringkv_hints_queued_bytes").set(bytes as f64);
    }

    /// Removes a hint delivered or dropped. An error leaves it queued and
    /// counted; the caller stops its round.
    fn forget(
        &self,
        target: &str,
        raw_key: &[u8],
        size: u64,
        delivered: bool,
    ) -> Result<(), StorageError> {
        // NOTE: counters only; the caller counts the drop reason in metrics.
        self.engine.remove(raw_key)?;
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get_mut(target) {
            queue.hints = queue.hints.saturating_sub(1);
            queue.bytes = queue.bytes.saturating_sub(size);
            if delivered {
                queue.delivered += 1;
            } else {
                queue.dropped += 1;
            }
            if queue.hints == 0 {
                queue.oldest_ms = None;
            }
        }
        Ok(())
    }

    /// Why the hint store refuses writes until a restart, if it does.
    pub fn write_error(&self) -> Option<String> {
        self.engine.write_error()
    }

    /// Drops every queue's hints older than the window (they are at the
    /// front: queues are in arrival order), for targets that stay down.
    pub fn drop_expired(&self) -> Result<u64, StoreError> {
        let now = self.hlc.wall_ms();
        let mut dropped = 0;
        let mut failed = None;
        'targets: for target in self.targets() {
            let prefix = queue_prefix(&target);
            let end = prefix_end(&prefix);
            let mut cursor = prefix.clone();
            'queue: loop {
                let page = self.engine.scan(&cursor, end.as_deref(), PAGE)?;
                let Some((last, _)) = page.last() else { break };
                cursor = crate::storage::keys::successor(last);
                for (raw_key, raw_value) in page {
                    let size = (raw_key.len() + raw_value.len()) as u64;
                    // NOTE: an unreadable hint is dropped like an expired one.
                    if let Some(hint) = decode_hint(&raw_value)
                        && now.saturating_sub(hint.created_ms) <= self.config.window_ms
                    {
                        break 'queue;
                    }
                    if let Err(e) = self.forget(&target, &raw_key, size, false) {
                        failed = Some(e);
                        break 'targets;
                    }
                    dropped += 1;
                }
            }
        }
        if dropped > 0 {
            metrics::counter!("ringkv_hints_dropped_total", "reason" => "expired")
                .increment(dropped);
            tracing::warn!(dropped, "hints older than the hint window dropped");
            self.publish_gauges();
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{NetError, PeerId, Request, Response, Transport};
    use crate::storage::testing::CountingEngine;
    use crate::storage::{FjallEngine, MemoryEngine};
    use crate::version::ManualClock;

    /// Answers writes for `up` targets and records them.
    #[derive(Default)]
    struct Recorder {
        up: Mutex<bool>,
        got: Mutex<Vec<(String, Bytes)>>,
    }

    impl Transport for Recorder {
        async fn call(&self, to: &PeerId, request: Request) -> Result<Response, NetError> {
            if !*self.up.lock() {
                return Err(NetError::Unreachable("connection refused".into()));
            }
            let Request::Write { key, .. } = request else {
                return Ok(Response::Error("unexpected".into()));
            };
            if key.starts_with(b"refuse") {
                return Ok(Response::Error("timestamp too far ahead".into()));
            }
            if key.starts_with(b"lost-fsync") {
                let why = format!(
                    "storage: {}; until a restart",
                    crate::storage::WRITES_REFUSED
                );
                return Ok(Response::Error(why));
            }
            self.got.lock().push((to.to_owned(), key));
            Ok(Response::Written)
        }
    }

    fn config() -> HintConfig {
        HintConfig {
            window_ms: 10_000,
            max_bytes_per_target: 1 << 20,
            sync_each: false,
        }
    }

    /// Keeps a hint of each of `keys` for `target`, in order.
    fn queue(hints: &Hints, target: &str, keys: &[&str]) {
        for key in keys {
            let kept = hints.add(target, "default", key.as_bytes(), Bytes::from_static(b"r"));
            assert!(kept.unwrap(), "{key} kept");
        }
    }

    fn hlc(clock: &Arc<ManualClock>) -> Arc<Hlc> {
        Arc::new(Hlc::new(clock.clone(), 60_000))
    }

    #[tokio::test]
    async fn hints_are_delivered_in_order_once_the_target_answers() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let hints = Hints::open(Arc::new(MemoryEngine::new()), config(), hlc(&clock)).unwrap();
        for i in 0..300u32 {
            assert!(
                hints
                    .add(
                        "node2",
                        "default",
                        &i.to_be_bytes(),
                        Bytes::from_static(b"r")
                    )
                    .unwrap()
            );
        }
        hints
            .add("node3", "default", b"x", Bytes::from_static(b"r"))
            .unwrap();
        let net = Recorder::default();
        let report = hints.deliver("node2", &net, 1000).await.unwrap();
        assert_eq!(report.delivered, 0);
        assert!(report.failed.unwrap().contains("refused"));
        assert_eq!(hints.queues()["node2"].hints, 300);

        *net.up.lock() = true;
        let report = hints.deliver("node2", &net, 1000).await.unwrap();
        assert_eq!(report.delivered, 300);
        let got = net.got.lock().clone();
        let keys: Vec<Bytes> = got.iter().map(|(_, k)| k.clone()).collect();
        let expected: Vec<Bytes> = (0..300u32)
            .map(|i| Bytes::copy_from_slice(&i.to_be_bytes()))
            .collect();
        assert_eq!(keys, expected, "oldest first, node3's queue untouched");
        assert!(got.iter().all(|(to, _)| to == "node2"));
        let queues = hints.queues();
        assert_eq!(queues["node2"].hints, 0);
        assert_eq!(queues["node2"].bytes, 0);
        assert_eq!(queues["node2"].delivered, 300);
        assert_eq!(queues["node3"].hints, 1);
        assert_eq!(hints.targets(), ["node3"]);
    }

    #[tokio::test]
    async fn a_batch_of_hints_is_kept_with_one_flush_up_to_the_byte_bound() {
        use std::sync::atomic::Ordering::SeqCst;
        let clock = Arc::new(ManualClock::new(1_000_000));
        let small = HintConfig {
            window_ms: 10_000,
            max_bytes_per_target: 500,
            sync_each: false,
        };
        let engine = Arc::new(CountingEngine::default());
        let hints = Hints::open(engine.clone(), small, hlc(&clock)).unwrap();
        let record = Bytes::from(vec![7u8; 60]);
        let keys: Vec<[u8; 1]> = (0..10u8).map(|i| [i]).collect();
        let writes = keys.iter().map(|k| (&k[..], record.clone()));
        let kept = hints.add_many("node2", "default", writes).unwrap();
        assert_eq!(engine.flushes.load(SeqCst), 1, "one flush for the batch");
        let queue = &hints.queues()["node2"];
        let size = queue.bytes / kept as u64;
        assert_eq!(queue.bytes, size * kept as u64, "hints of one size");
        assert!(
            queue.bytes <= 500 && queue.bytes + size > 500,
            "filled to the bound"
        );
        assert_eq!(queue.hints, kept as u64);
        assert_eq!(queue.dropped, 10 - kept as u64);
        let net = Recorder::default();
        *net.up.lock() = true;
        let report = hints.deliver("node2", &net, 1000).await.unwrap();
        assert_eq!(report.delivered, kept as u64);

        // A flush that fails: an error, but what was stored stays counted
        // (it is in the engine and would be delivered).
        engine.broken.store(true, SeqCst);
        let writes = keys.iter().take(3).map(|k| (&k[..], record.clone()));
        assert!(hints.add_many("node3", "default", writes).is_err());
        assert_eq!(hints.queues()["node3"].hints, 3);
        let stored = engine.scan(&queue_prefix("node3"), None, 100).unwrap();
        assert_eq!(stored.len(), 3);
    }

    #[tokio::test]
    async fn hints_past_the_window_or_the_byte_bound_are_dropped() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let small = HintConfig {
            window_ms: 10_000,
            max_bytes_per_target: 200,
            sync_each: false,
        };
        let hints = Hints::open(Arc::new(MemoryEngine::new()), small, hlc(&clock)).unwrap();
        let record = Bytes::from(vec![7u8; 60]);
        assert!(hints.add("node2", "default", b"a", record.clone()).unwrap());
        assert!(hints.add("node2", "default", b"b", record.clone()).unwrap());
        assert!(
            !hints.add("node2", "default", b"c", record.clone()).unwrap(),
            "queue full"
        );
        assert!(
            hints.add("node3", "default", b"c", record.clone()).unwrap(),
            "per target"
        );
        assert_eq!(hints.queues()["node2"].dropped, 1);

        clock.advance(5_000);
        assert!(
            hints
                .add("node3", "default", b"d", Bytes::from_static(b"r"))
                .unwrap()
        );
        clock.advance(6_000);
        assert_eq!(
            hints.drop_expired().unwrap(),
            3,
            "all but node3's newer hint"
        );
        assert_eq!(hints.queues()["node3"].hints, 1);
        let net = Recorder::default();
        *net.up.lock() = true;
        clock.advance(5_000);
        let report = hints.deliver("node3", &net, 10).await.unwrap();
        assert_eq!(report.expired, 1);
        assert_eq!(report.delivered, 0);
        assert!(net.got.lock().is_empty(), "an expired hint is never sent");
    }

    #[tokio::test]
    async fn hints_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        {
            let engine = Arc::new(FjallEngine::open(dir.path(), 1 << 20).unwrap());
            let hints = Hints::open(engine, config(), hlc(&clock)).unwrap();
            hints
                .add("node2", "default", b"a", Bytes::from_static(b"r1"))
                .unwrap();
            hints
                .add("node2", "default", b"b", Bytes::from_static(b"r2"))
                .unwrap();
            hints.sync_to_disk().unwrap();
        }
        let engine = Arc::new(FjallEngine::open(dir.path(), 1 << 20).unwrap());
        let hints = Hints::open(engine, config(), hlc(&clock)).unwrap();
        assert_eq!(hints.queues()["node2"].hints, 2);
        hints
            .add("node2", "default", b"c", Bytes::from_static(b"r3"))
            .unwrap();
        let net = Recorder::default();
        *net.up.lock() = true;
        hints.deliver("node2", &net, 10).await.unwrap();
        let keys: Vec<Bytes> = net.got.lock().iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(
            keys,
            ["a", "b", "c"],
            "sequence numbers continue after a restart"
        );
    }

    #[tokio::test]
    async fn refused_and_unreadable_hints_are_dropped_without_blocking_the_queue() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let engine = Arc::new(MemoryEngine::new());
        let hints = Hints::open(engine.clone(), config(), hlc(&clock)).unwrap();
        queue(&hints, "node2", &["a", "refuse-me", "b"]);
        // A hint of an unknown format (a newer version, or damage).
        let mut raw_key = queue_prefix("node2");
        raw_key.extend_from_slice(&u64::MAX.to_be_bytes());
        engine
            .put(raw_key.into(), Bytes::from_static(b"\x09junk"))
            .unwrap();
        let hints = Hints::open(engine, config(), hlc(&clock)).unwrap();
        assert_eq!(
            hints.queues()["node2"].hints,
            3,
            "the unreadable one is dropped at open"
        );

        let net = Recorder::default();
        *net.up.lock() = true;
        let report = hints.deliver("node2", &net, 100).await.unwrap();
        assert_eq!((report.delivered, report.refused), (2, 1));
        assert_eq!(report.failed, None);
        let keys: Vec<Bytes> = net.got.lock().iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(
            keys,
            ["a", "b"],
            "the refused hint did not stop the one behind it"
        );
        assert_eq!(hints.queues()["node2"].hints, 0);
        assert_eq!(hints.queues()["node2"].dropped, 1);
    }

    #[tokio::test]
    async fn a_target_that_lost_its_fsync_keeps_its_hints_for_after_its_restart() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let hints = Hints::open(Arc::new(MemoryEngine::new()), config(), hlc(&clock)).unwrap();
        queue(&hints, "node2", &["a", "lost-fsync", "b"]);
        let net = Recorder::default();
        *net.up.lock() = true;
        let report = hints.deliver("node2", &net, 100).await.unwrap();
        // NOTE: one chunk goes out at once: "b" went with it.
        assert_eq!((report.delivered, report.refused), (2, 0));
        let failed = report.failed.unwrap();
        assert!(failed.contains(crate::storage::WRITES_REFUSED), "{failed}");
        assert_eq!(
            hints.queues()["node2"].hints,
            1,
            "kept for after the restart"
        );
        assert_eq!(hints.queues()["node2"].dropped, 0);
    }

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
        let key = {
            let mut k = queue_prefix("node2");
            k.extend_from_slice(&u64::MAX.to_be_bytes());
            k
        };
        assert_eq!(decode_key(&key), Some(("node2", u64::MAX)));
        assert!(key < prefix_end(&queue_prefix("node2")).unwrap());
    }
}
