//! The durable engine: one fjall LSM keyspace in the data directory.
//!
//! Writes go to fjall's journal with manual persistence: callers group
//! commits by calling [`Engine::flush`] once per batch of requests (the way
//! Redis writes its AOF once per event-loop turn), and a `Sync` flush fsyncs.
//! Invariant: after `flush(Buffer)` returns, earlier writes survive a crash of
//! the process; after `flush(Sync)`, a crash of the machine.

use std::path::Path;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Durability, Engine, KeyValue, StorageError};

const DATA_KEYSPACE: &str = "data";

/// fjall under `data_dir`.
pub struct FjallEngine {
    db: Database,
    data: Keyspace,
}

impl std::fmt::Debug for FjallEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallEngine").finish_non_exhaustive()
    }
}

impl FjallEngine {
    /// Opens (creating or recovering) the database in `data_dir`.
    pub fn open(data_dir: &Path, cache_bytes: u64) -> Result<Self, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StorageError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let db = Database::builder(data_dir.join("fjall"))
            .manual_journal_persist(true)
            .cache_size(cache_bytes)
            .open()?;
        // IMPORTANT: manual persistence must be set on the keyspace too, or
        // every insert issues its own write(2) to the journal.
        let data = db.keyspace(DATA_KEYSPACE, || {
            KeyspaceCreateOptions::default().manual_journal_persist(true)
        })?;
        Ok(Self { db, data })
    }
}

impl Engine for FjallEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(self.data.get(key)?.map(Bytes::from))
    }

    fn put(&self, key: Bytes, value: Bytes) -> Result<(), StorageError> {
        Ok(self.data.insert(key, value)?)
    }

    fn remove(&self, key: &[u8]) -> Result<(), StorageError> {
        Ok(self.data.remove(key)?)
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let iter = match end {
            Some(end) => self.data.range(start..end),
            None => self.data.range(start..),
        };
        let mut out = Vec::new();
        for guard in iter.take(limit) {
            let (k, v) = guard.into_inner()?;
            out.push((Bytes::from(k), Bytes::from(v)));
        }
        Ok(out)
    }

    fn flush(&self, durability: Durability) -> Result<(), StorageError> {
        let mode = match durability {
            Durability::Buffer => PersistMode::Buffer,
            Durability::Sync => PersistMode::SyncData,
        };
        Ok(self.db.persist(mode)?)
    }

    fn size_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn kind(&self) -> &'static str {
        "fjall"
    }
}
