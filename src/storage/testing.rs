//! Engines for tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;

use super::{Durability, Engine, KeyValue, MemoryEngine, StorageError};

/// The memory engine, counting flushes as if it were durable, whose flushes
/// can be made to fail.
#[derive(Default)]
pub(crate) struct CountingEngine {
    inner: MemoryEngine,
    /// Flushes asked for.
    pub(crate) flushes: AtomicUsize,
    /// Every flush fails (a full or broken disk).
    pub(crate) broken: AtomicBool,
    /// Writes are refused as after a failed journal fsync.
    pub(crate) lost_fsync: AtomicBool,
}

impl CountingEngine {
    fn check(&self) -> Result<(), StorageError> {
        match self.lost_fsync.load(Ordering::SeqCst) {
            true => Err(StorageError::Fsync("test: EIO".into())),
            false => Ok(()),
        }
    }
}

impl Engine for CountingEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        self.inner.get(key)
    }

    fn put(&self, key: Bytes, value: Bytes) -> Result<(), StorageError> {
        self.check()?;
        self.inner.put(key, value)
    }

    fn remove(&self, key: &[u8]) -> Result<(), StorageError> {
        self.check()?;
        self.inner.remove(key)
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.inner.scan(start, end, limit)
    }

    fn flush(&self, _durability: Durability) -> Result<(), StorageError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.broken.load(Ordering::SeqCst) {
            return Err(StorageError::Task("disk on fire".into()));
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn kind(&self) -> &'static str {
        "counting"
    }

    fn write_error(&self) -> Option<String> {
        self.check().err().map(|e| e.to_string())
    }
}
