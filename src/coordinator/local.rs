//! The store of a single node: every keyspace has one replica, here.
//!
//! Invariant: all writes of one key go through the key's stripe lock, so the
//! read-evaluate-write of a command is atomic, and `live_keys` moves exactly
//! when a key changes between holding a value and holding none. Every engine
//! write goes through `replace_locked`, which also keeps the anti-entropy
//! trees ([`crate::aae::Trees`]) equal to what is stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use super::commit::GroupCommit;
use super::{
    Consistency, Decision, Entry, KeyspaceId, Keyspaces, Level, Placement, ReplicaView, Store,
    StoreError, StoreStats, WriteCmd, WriteOutcome,
};
use crate::aae::Trees;
use crate::config::FsyncPolicy;
use crate::ring;
use crate::storage::{Durability, Engine, keys};
use crate::version::{Hlc, NodeId, Payload, Record, Version};

const LOCK_STRIPES: usize = 4096;

/// What a [`LocalStore`] is built from.
pub struct LocalStoreConfig {
    /// The engine holding the data.
    pub engine: Arc<dyn Engine>,
    /// This node's clock.
    pub hlc: Arc<Hlc>,
    /// This node's id (ties between equal timestamps).
    pub node: NodeId,
    /// This node's name.
    pub node_name: String,
    /// Partition count `Q`.
    pub partitions: u32,
    /// The keyspaces served.
    pub keyspaces: Keyspaces,
    /// The fsync policy [`Store::commit`] applies.
    pub fsync: FsyncPolicy,
}

/// A single node's store over one engine.
pub struct LocalStore {
    engine: Arc<dyn Engine>,
    hlc: Arc<Hlc>,
    node: NodeId,
    node_name: String,
    partitions: u32,
    keyspaces: Keyspaces,
    // NOTE: std-style blocking locks, never held across an await; they only
    // cover the synchronous read-evaluate-write of one key.
    stripes: Box<[Mutex<()>]>,
    live_keys: Box<[AtomicI64]>,
    /// Shares engine flushes between connections.
    group: Arc<GroupCommit>,
    /// One anti-entropy tree per (keyspace, partition), lock-free.
    trees: Trees,
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        self.group.close();
    }
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("engine", &self.engine.kind())
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Where a key lives and which lock guards it.
struct Located {
    storage_key: Bytes,
    stripe: usize,
}

impl LocalStore {
    /// Opens the store, counting the keys already in the engine. Must be
    /// called inside a tokio runtime (it starts the committer task).
    pub fn open(config: LocalStoreConfig) -> Result<Self, StoreError> {
        let durability = match config.fsync {
            FsyncPolicy::Always => Durability::Sync,
            FsyncPolicy::Everysec | FsyncPolicy::No => Durability::Buffer,
        };
        let engine_for_commits = config.engine.clone();
        let store = Self {
            trees: Trees::new(config.keyspaces.len(), config.partitions),
            live_keys: (0..config.keyspaces.len())
                .map(|_| AtomicI64::new(0))
                .collect(),
            engine: config.engine,
            hlc: config.hlc,
            node: config.node,
            node_name: config.node_name,
            partitions: config.partitions,
            keyspaces: config.keyspaces,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            group: GroupCommit::spawn(engine_for_commits, durability),
        };
        store.count_keys()?;
        Ok(store)
    }

    /// The engine underneath (for the expiry sweep).
    pub(crate) fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The node's clock.
    pub fn hlc(&self) -> &Arc<Hlc> {
        &self.hlc
    }

    /// The anti-entropy trees, kept equal to what is stored.
    pub fn aae_trees(&self) -> &Trees {
        &self.trees
    }

    /// Counts the live keys and builds the anti-entropy trees: the one
    /// start-up scan.
    fn count_keys(&self) -> Result<(), StoreError> {
        let mut cursor = Vec::new();
        loop {
            let page = self.engine.scan(&cursor, None, 4096)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            cursor = keys::successor(last);
            for (raw_key, raw_record) in page {
                let Some(decoded) = keys::decode(&raw_key) else {
                    continue;
                };
                let record = Record::decode(raw_record)?;
                let id = self.keyspaces.resolve(&decoded.keyspace);
                if let Some(id) = id {
                    self.trees.update(id, &raw_key, None, Some(&record));
                }
                if let (Some(id), Payload::Value(_)) = (id, &record.payload) {
                    self.live_keys[id].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn locate(&self, ks: KeyspaceId, key: &[u8]) -> Located {
        let hash = ring::key_hash(&self.keyspaces.get(ks).name, key);
        self.locate_hashed(ks, hash, key)
    }

    /// [`Self::locate`] for a key whose [`ring::key_hash`] is known.
    fn locate_hashed(&self, ks: KeyspaceId, hash: u64, key: &[u8]) -> Located {
        let name = &self.keyspaces.get(ks).name;
        let partition = ring::partition_of_hash(hash, self.partitions);
        Located {
            storage_key: Bytes::from(keys::encode(partition, name, key)),
            stripe: (hash as usize) % LOCK_STRIPES,
        }
    }

    /// The stored record of `key`, tombstones and expired values included.
    /// Read without the key's stripe lock, like a local GET: the engine
    /// returns the record before or after a concurrent write, never a mix.
    pub fn read_stored(&self, ks: KeyspaceId, key: &[u8]) -> Result<Option<Record>, StoreError> {
        self.read_record(&self.locate(ks, key).storage_key)
    }

    /// The stored record of `key` as the engine holds it (encoded), or none:
    /// what a replica sends a coordinator, which decodes and checks it.
    pub fn read_stored_raw(&self, ks: KeyspaceId, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self.engine.get(&self.locate(ks, key).storage_key)?)
    }

    /// [`Self::read_stored`] for a key whose [`ring::key_hash`] is known.
    pub(crate) fn read_stored_hashed(
        &self,
        ks: KeyspaceId,
        hash: u64,
        key: &[u8],
    ) -> Result<Option<Record>, StoreError> {
        self.read_record(&self.locate_hashed(ks, hash, key).storage_key)
    }

    pub(crate) fn read_record(&self, storage_key: &[u8]) -> Result<Option<Record>, StoreError> {
        match self.engine.get(storage_key)? {
            Some(raw) => Ok(Some(Record::decode(raw)?)),
            None => Ok(None),
        }
    }

    /// Replaces the stored record of `storage_key` under its stripe lock,
    /// keeping the key count and the anti-entropy tree right. Used by writes,
    /// replica merges and the expiry sweep.
    pub(crate) fn replace_locked(
        &self,
        ks: KeyspaceId,
        storage_key: &Bytes,
        old: Option<&Record>,
        new: Option<&Record>,
    ) -> Result<(), StoreError> {
        self.replace_locked_encoded(ks, storage_key, old, new.map(|r| (r, r.encode())))
    }

    /// [`Self::replace_locked`] with the new record's encoded form, stored
    /// as it is.
    pub(crate) fn replace_locked_encoded(
        &self,
        ks: KeyspaceId,
        storage_key: &Bytes,
        old: Option<&Record>,
        new: Option<(&Record, Bytes)>,
    ) -> Result<(), StoreError> {
        let new = match new {
            Some((record, raw)) => {
                debug_assert!(record.is_encoded_as(&raw));
                self.engine.put(storage_key.clone(), raw)?;
                Some(record)
            }
            None => {
                self.engine.remove(storage_key)?;
                None
            }
        };
        self.trees.update(ks, storage_key, old, new);
        let is_value =
            |r: Option<&Record>| r.is_some_and(|r| matches!(r.payload, Payload::Value(_)));
        match (is_value(old), is_value(new)) {
            (false, true) => self.live_keys[ks].fetch_add(1, Ordering::Relaxed),
            (true, false) => self.live_keys[ks].fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
        self.group.note_write();
        Ok(())
    }

    /// Runs `f` with the lock of the stripe that guards `stripe_of(storage_key)`.
    pub(crate) fn with_key_lock<T>(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        f: impl FnOnce(&Bytes) -> T,
    ) -> T {
        let located = self.locate(ks, key);
        let _guard = self.stripes[located.stripe].lock();
        f(&located.storage_key)
    }

    fn write_sync(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        cmd: &WriteCmd,
    ) -> Result<WriteOutcome, StoreError> {
        self.with_key_lock(ks, key, |storage_key| {
            let now_us = self.hlc.wall_us();
            let now = now_us / 1000;
            let old = self.read_record(storage_key)?;
            let previous = Entry::from_record(old.as_ref(), now);
            let version = || Version {
                timestamp: self.hlc.now_at(now_us),
                node: self.node,
            };
            let new = match cmd.evaluate(previous.as_ref(), now) {
                Decision::Skip => {
                    return Ok(WriteOutcome {
                        applied: false,
                        previous,
                    });
                }
                Decision::Put { value, expiry_ms } => Record::value(version(), value, expiry_ms),
                Decision::Delete => Record::tombstone(version()),
            };
            // NOTE: merge, not overwrite: a stored record from the future (a
            // clock that stepped back) must not be silently replaced by an older one.
            let merged = match &old {
                Some(old) => old.clone().merge(new),
                None => new,
            };
            self.replace_locked(ks, storage_key, old.as_ref(), Some(&merged))?;
            Ok(WriteOutcome {
                applied: true,
                previous,
            })
        })
    }

    /// fsyncs everything written so far (the `everysec` task and shutdown).
    pub fn sync_to_disk(&self) -> Result<(), StoreError> {
        Ok(self.engine.flush(Durability::Sync)?)
    }
}

/// A single node holds one replica: a level needing more can never be met.
fn check_single_replica(level: Level) -> Result<(), StoreError> {
    match level.required(1) {
        1 => Ok(()),
        needed => Err(StoreError::BadLevel(format!(
            "consistency level {level} needs {needed} replicas but this node serves n=1"
        ))),
    }
}

impl Store for LocalStore {
    fn keyspaces(&self) -> &Keyspaces {
        &self.keyspaces
    }

    async fn get(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<Entry>, StoreError> {
        check_single_replica(consistency.read)?;
        let record = self.read_stored(ks, key)?;
        Ok(Entry::from_record(record.as_ref(), self.hlc.wall_ms()))
    }

    async fn write(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        cmd: WriteCmd,
        consistency: Consistency,
    ) -> Result<WriteOutcome, StoreError> {
        check_single_replica(consistency.read)?;
        check_single_replica(consistency.write)?;
        self.write_sync(ks, key, &cmd)
    }

    async fn dbsize(&self, ks: KeyspaceId) -> Result<u64, StoreError> {
        Ok(self.live_keys[ks].load(Ordering::Relaxed).max(0) as u64)
    }

    async fn commit(&self) -> Result<(), StoreError> {
        if !self.engine.needs_flush() {
            return Ok(());
        }
        Ok(self.group.commit().await?)
    }

    fn replication(&self, _ks: KeyspaceId) -> u32 {
        1
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            engine: self.engine.kind(),
            engine_bytes: self.engine.size_bytes(),
            keys: self
                .live_keys
                .iter()
                .map(|k| k.load(Ordering::Relaxed).max(0) as u64)
                .collect(),
            expired_reclaimed: 0,
            cluster: None,
            write_error: self.engine.write_error(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.hlc.wall_ms()
    }

    async fn inspect(&self, ks: KeyspaceId, key: &[u8]) -> Result<Vec<ReplicaView>, StoreError> {
        Ok(vec![ReplicaView {
            node: self.node_name.clone(),
            held: self.read_stored(ks, key).map_err(|e| e.to_string()),
        }])
    }

    fn placement(&self, ks: KeyspaceId, key: &[u8]) -> Result<Placement, StoreError> {
        let name = &self.keyspaces.get(ks).name;
        Ok(Placement {
            partition: ring::partition_of(name, key, self.partitions),
            primaries: vec![self.node_name.clone()],
            fallbacks: Vec::new(),
        })
    }
}

/// Helpers for building a store in tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::config::KeyspaceConfig;
    use crate::storage::MemoryEngine;
    use crate::version::ManualClock;
    use bytes::Bytes;

    pub(crate) fn memory_store(clock: Arc<ManualClock>) -> LocalStore {
        LocalStore::open(LocalStoreConfig {
            engine: Arc::new(MemoryEngine::new()),
            hlc: Arc::new(Hlc::new(clock, 60_000)),
            node: 1,
            node_name: "n1".into(),
            partitions: 1024,
            keyspaces: Keyspaces::new(vec![
                KeyspaceConfig::default(),
                KeyspaceConfig {
                    name: "other".into(),
                    ..Default::default()
                },
            ]),
            fsync: FsyncPolicy::Everysec,
        })
        .unwrap()
    }

    pub(crate) fn set(value: &'static [u8]) -> WriteCmd {
        WriteCmd::Set {
            value: Bytes::from_static(value),
            expiry: super::super::ExpiryUpdate::Clear,
            condition: super::super::SetCondition::Always,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::coordinator::{Consistency, ExpireCondition, ExpiryUpdate, SetCondition};
    use crate::version::ManualClock;
    use bytes::Bytes;

    #[tokio::test]
    async fn set_get_delete_and_count() {
        let store = memory_store(Arc::new(ManualClock::new(1_000)));
        assert_eq!(
            store.get(0, b"k", Consistency::default()).await.unwrap(),
            None
        );
        assert!(
            store
                .write(0, b"k", set(b"v"), Consistency::default())
                .await
                .unwrap()
                .applied
        );
        assert_eq!(
            store
                .get(0, b"k", Consistency::default())
                .await
                .unwrap()
                .unwrap()
                .value,
            "v"
        );
        assert_eq!(
            store.get(1, b"k", Consistency::default()).await.unwrap(),
            None,
            "keyspaces are separate"
        );
        assert_eq!(store.dbsize(0).await.unwrap(), 1);
        let out = store
            .write(0, b"k", WriteCmd::Delete, Consistency::default())
            .await
            .unwrap();
        assert_eq!(out.previous.unwrap().value, "v");
        assert_eq!(
            store.get(0, b"k", Consistency::default()).await.unwrap(),
            None
        );
        assert_eq!(store.dbsize(0).await.unwrap(), 0);
        assert!(
            !store
                .write(0, b"k", WriteCmd::Delete, Consistency::default())
                .await
                .unwrap()
                .applied
        );
    }

    #[tokio::test]
    async fn expired_key_is_never_returned() {
        let clock = Arc::new(ManualClock::new(1_000));
        let store = memory_store(clock.clone());
        let cmd = WriteCmd::Set {
            value: Bytes::from_static(b"v"),
            expiry: ExpiryUpdate::At(1_500),
            condition: SetCondition::Always,
        };
        store
            .write(0, b"k", cmd, Consistency::default())
            .await
            .unwrap();
        clock.set(1_500);
        assert!(
            store
                .get(0, b"k", Consistency::default())
                .await
                .unwrap()
                .is_some()
        );
        clock.set(1_501);
        assert_eq!(
            store.get(0, b"k", Consistency::default()).await.unwrap(),
            None
        );
        let nx = WriteCmd::Set {
            value: Bytes::from_static(b"w"),
            expiry: ExpiryUpdate::Clear,
            condition: SetCondition::IfAbsent,
        };
        assert!(
            store
                .write(0, b"k", nx, Consistency::default())
                .await
                .unwrap()
                .applied,
            "an expired key is absent"
        );
        assert_eq!(store.dbsize(0).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn expire_in_the_past_deletes() {
        let store = memory_store(Arc::new(ManualClock::new(1_000)));
        store
            .write(0, b"k", set(b"v"), Consistency::default())
            .await
            .unwrap();
        let cmd = WriteCmd::Expire {
            at_ms: Some(10),
            condition: ExpireCondition::Always,
        };
        assert!(
            store
                .write(0, b"k", cmd, Consistency::default())
                .await
                .unwrap()
                .applied
        );
        assert_eq!(
            store.get(0, b"k", Consistency::default()).await.unwrap(),
            None
        );
        assert_eq!(store.dbsize(0).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_stored_record_from_the_future_is_not_overwritten_by_an_older_write() {
        let clock = Arc::new(ManualClock::new(10_000));
        let store = memory_store(clock.clone());
        store
            .write(0, b"k", set(b"future"), Consistency::default())
            .await
            .unwrap();
        // A fresh node with a clock behind, over the same data, must still order
        // its writes after what it reads: the HLC has not seen that record, but
        // merge keeps whichever version is greater.
        clock.set(5_000);
        store
            .write(0, b"k", set(b"later"), Consistency::default())
            .await
            .unwrap();
        assert_eq!(
            store
                .get(0, b"k", Consistency::default())
                .await
                .unwrap()
                .unwrap()
                .value,
            "later"
        );
    }

    #[tokio::test]
    async fn key_count_is_rebuilt_on_open() {
        let engine: Arc<dyn Engine> = Arc::new(crate::storage::MemoryEngine::new());
        let open = |engine: Arc<dyn Engine>| {
            LocalStore::open(LocalStoreConfig {
                engine,
                hlc: Arc::new(Hlc::new(Arc::new(ManualClock::new(1_000)), 60_000)),
                node: 1,
                node_name: "n1".into(),
                partitions: 1024,
                keyspaces: Keyspaces::new(vec![Default::default()]),
                fsync: FsyncPolicy::No,
            })
            .unwrap()
        };
        let store = open(engine.clone());
        for i in 0..100u32 {
            store
                .write(0, &i.to_be_bytes(), set(b"v"), Consistency::default())
                .await
                .unwrap();
        }
        store
            .write(
                0,
                &7u32.to_be_bytes(),
                WriteCmd::Delete,
                Consistency::default(),
            )
            .await
            .unwrap();
        drop(store);
        assert_eq!(open(engine).dbsize(0).await.unwrap(), 99);
    }
}
