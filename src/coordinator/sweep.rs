//! The expiry sweep: reclaims expired values and purges old tombstones.
//!
//! One partition range at a time, a bounded batch per tick, on the blocking
//! pool, so requests never wait for it. An expired value decays into a
//! tombstone of the same version (see [`Record::decayed`]); a tombstone is
//! removed once it has been dead for `tombstone_grace_ms`. Invariant: the
//! sweep re-reads each record under its key's lock before changing it, so it
//! never undoes a write that raced with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{LocalStore, Store, StoreError};
use crate::periodic::Periodic;
use crate::ring::PartitionId;
use crate::storage::keys;
use crate::version::{Payload, Record};

/// Settings of the sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Pause between batches.
    pub interval: Duration,
    /// Entries examined per batch.
    pub batch: usize,
    /// How long a tombstone outlives its death, ms.
    pub tombstone_grace_ms: u64,
    /// Partition count `Q`.
    pub partitions: u32,
}

/// The running sweep; [`SweepHandle::shutdown`] stops it and waits for its
/// current batch (dropping it stops it without waiting).
#[derive(Debug)]
pub struct SweepHandle {
    worker: Periodic,
    /// Expired values reclaimed so far.
    pub reclaimed: Arc<AtomicU64>,
}

impl SweepHandle {
    /// Stops the sweep and waits for its current batch.
    pub async fn shutdown(self) {
        self.worker.shutdown().await;
    }
}

struct Cursor {
    partition: PartitionId,
    next_key: Vec<u8>,
}

impl Cursor {
    /// The first key of `partition`.
    fn at(partition: PartitionId) -> Self {
        Self {
            partition,
            next_key: keys::partition_range(partition).0,
        }
    }
}

/// Starts the sweep over `store`.
pub fn spawn_expiry_sweep(store: Arc<LocalStore>, config: SweepConfig) -> SweepHandle {
    let reclaimed = Arc::new(AtomicU64::new(0));
    let counter = reclaimed.clone();
    let period = config.interval;
    let worker = Periodic::spawn(period, Cursor::at(0), move |cursor| {
        let (store, cfg, counter) = (store.clone(), config.clone(), counter.clone());
        async move {
            let joined =
                tokio::task::spawn_blocking(move || sweep_batch(&store, &cfg, cursor, &counter))
                    .await;
            match joined {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "expiry sweep failed; starting over");
                    Cursor::at(0)
                }
                Err(e) => {
                    tracing::error!(error = %e, "expiry sweep task panicked; starting over");
                    Cursor::at(0)
                }
            }
        }
    });
    SweepHandle { worker, reclaimed }
}

/// Examines one batch from `cursor` on and returns where to go on.
fn sweep_batch(
    store: &LocalStore,
    config: &SweepConfig,
    cursor: Cursor,
    reclaimed: &AtomicU64,
) -> Result<Cursor, StoreError> {
    if store.engine().write_error().is_some() {
        // NOTE: the engine refuses writes until a restart (logged when its
        // fsync failed): nothing can be reclaimed, and starting over on
        // every tick would only log the refusal again.
        return Ok(cursor);
    }
    let (_, end) = keys::partition_range(cursor.partition);
    let page = store
        .engine()
        .scan(&cursor.next_key, end.as_deref(), config.batch)?;
    let now = store.hlc().wall_ms();
    for (raw_key, raw_record) in &page {
        let record = Record::decode(raw_record.clone())?;
        if record.dead_since_ms(now).is_none() {
            continue;
        }
        if sweep_key(store, config, raw_key, now)? {
            reclaimed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("ringkv_expired_keys_reclaimed_total").increment(1);
        }
    }
    match page.last() {
        Some((last, _)) if page.len() >= config.batch => Ok(Cursor {
            partition: cursor.partition,
            next_key: keys::successor(last),
        }),
        _ => Ok(Cursor::at(next_partition(
            cursor.partition,
            config.partitions,
        ))),
    }
}

fn next_partition(partition: PartitionId, partitions: u32) -> PartitionId {
    ((u32::from(partition) + 1) % partitions) as PartitionId
}

/// Re-checks one key under its lock; true if an expired value was reclaimed.
fn sweep_key(
    store: &LocalStore,
    config: &SweepConfig,
    raw_key: &bytes::Bytes,
    now: u64,
) -> Result<bool, StoreError> {
    let Some(decoded) = keys::decode(raw_key) else {
        return Ok(false);
    };
    let Some(ks) = Store::keyspaces(store).resolve(&decoded.keyspace) else {
        return Ok(false);
    };
    store.with_key_lock(ks, &decoded.key, |storage_key| {
        let Some(raw) = store.engine().get(storage_key)? else {
            return Ok(false);
        };
        let record = Record::decode(raw)?;
        let Some(dead_since) = record.dead_since_ms(now) else {
            return Ok(false);
        };
        if now.saturating_sub(dead_since) >= config.tombstone_grace_ms {
            store.replace_locked(ks, storage_key, Some(&record), None)?;
            Ok(false)
        } else if matches!(record.payload, Payload::Value(_)) {
            store.replace_locked(ks, storage_key, Some(&record), Some(&record.decayed()))?;
            Ok(true)
        } else {
            Ok(false)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::local::testing::memory_store;
    use crate::coordinator::{Consistency, ExpiryUpdate, SetCondition, Store, WriteCmd};
    use crate::version::ManualClock;
    use bytes::Bytes;

    fn config(grace: u64) -> SweepConfig {
        SweepConfig {
            interval: Duration::from_millis(1),
            batch: 3,
            tombstone_grace_ms: grace,
            partitions: 1024,
        }
    }

    fn sweep_all(store: &LocalStore, config: &SweepConfig) -> u64 {
        let reclaimed = AtomicU64::new(0);
        let mut cursor = Cursor::at(0);
        // Every partition at least once; partitions with many keys take more batches.
        for _ in 0..(config.partitions as usize * 4) {
            cursor = sweep_batch(store, config, cursor, &reclaimed).unwrap();
        }
        reclaimed.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn reclaims_expired_values_then_purges_after_grace() {
        let clock = Arc::new(ManualClock::new(1_000));
        let store = memory_store(clock.clone());
        for i in 0..20u32 {
            let expiry = if i % 2 == 0 {
                ExpiryUpdate::At(2_000)
            } else {
                ExpiryUpdate::Clear
            };
            let cmd = WriteCmd::Set {
                value: Bytes::from_static(b"v"),
                expiry,
                condition: SetCondition::Always,
            };
            store
                .write(0, &i.to_be_bytes(), cmd, Consistency::default())
                .await
                .unwrap();
        }
        assert_eq!(store.dbsize(0).await.unwrap(), 20);
        clock.set(3_000);
        assert_eq!(sweep_all(&store, &config(10_000)), 10);
        assert_eq!(store.dbsize(0).await.unwrap(), 10);
        assert_eq!(
            store.engine().scan(&[], None, 1000).unwrap().len(),
            20,
            "tombstones kept during grace"
        );
        clock.set(20_000);
        sweep_all(&store, &config(10_000));
        assert_eq!(
            store.engine().scan(&[], None, 1000).unwrap().len(),
            10,
            "tombstones purged after grace"
        );
        assert_eq!(store.dbsize(0).await.unwrap(), 10);
    }
}
