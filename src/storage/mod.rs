//! Storage engines: an ordered, durable byte map under every replica.
//!
//! The [`Engine`] trait is the storage seam (STYLE.md rule 7): the fjall LSM
//! ([`FjallEngine`], durable, the default) and an in-memory map
//! ([`MemoryEngine`]) implement it, and one test suite runs against both.
//! Keys are laid out by [`keys`] so that one partition is one contiguous
//! range, and [`meta`] keeps the partition count a data directory was created
//! with. Invariant: a [`Engine::flush`] with [`Durability::Sync`] returns only
//! once every earlier write is on stable storage.

mod fjall_engine;
pub mod keys;
mod memory;
pub mod meta;
#[cfg(test)]
mod suite;
#[cfg(test)]
pub(crate) mod testing;

use bytes::Bytes;

pub use fjall_engine::FjallEngine;
pub use memory::MemoryEngine;

/// How far [`Engine::flush`] pushes earlier writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Into the operating system: survives a crash of the process.
    Buffer,
    /// Onto the disk (fsync): survives a crash of the machine.
    Sync,
}

/// A storage failure. Always reported to the client, never swallowed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The LSM engine failed.
    #[error("fjall: {0}")]
    Fjall(#[from] fjall::Error),
    /// The journal could not be fsynced, now or earlier: durability can no
    /// longer be promised until the node restarts.
    #[error("{WRITES_REFUSED}; writes cannot be made durable until a restart: {0}")]
    Fsync(String),
    /// A background storage task failed.
    #[error("storage task failed: {0}")]
    Task(String),
    /// The data directory could not be used.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// How a refusal for [`StorageError::Fsync`] begins, also in the text a
/// replica answers a peer with: such a refusal lasts until the replica
/// restarts, so peers keep a hint for it as for a replica they cannot reach.
pub const WRITES_REFUSED: &str = "journal fsync failed";

/// Whether `why`, a replica's refusal of a write, is [`WRITES_REFUSED`].
pub fn refused_until_restart(why: &str) -> bool {
    why.contains(WRITES_REFUSED)
}

/// One key and its stored bytes.
pub type KeyValue = (Bytes, Bytes);

/// An ordered byte map. Implementations are internally synchronized.
pub trait Engine: Send + Sync + 'static {
    /// The stored bytes of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError>;

    /// Stores `value` under `key`, replacing what was there. Both are owned
    /// so engines can keep them without copying.
    fn put(&self, key: Bytes, value: Bytes) -> Result<(), StorageError>;

    /// Removes `key` (physically: callers write tombstone records instead
    /// when a delete must replicate).
    fn remove(&self, key: &[u8]) -> Result<(), StorageError>;

    /// Up to `limit` entries with `start <= key < end` (no end: to the last
    /// key), in key order.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError>;

    /// Makes every earlier write at least as durable as `durability`.
    fn flush(&self, durability: Durability) -> Result<(), StorageError>;

    /// False when [`Engine::flush`] has nothing to do (RAM-only engines), so
    /// callers can skip waiting for it.
    fn needs_flush(&self) -> bool {
        true
    }

    /// Bytes the engine occupies (on disk, or in memory for the memory engine).
    fn size_bytes(&self) -> u64;

    /// `"fjall"` or `"memory"`.
    fn kind(&self) -> &'static str;

    /// Why writes are refused until a restart (a journal fsync failed), if
    /// they are.
    fn write_error(&self) -> Option<String> {
        None
    }
}
