//! The in-memory engine: ordered maps sharded by key prefix.
//!
//! Invariant: a key lives in the shard of its 2-byte prefix (its partition
//! under the [`super::keys`] layout), and prefix ranges are contiguous in key
//! order, so a range scan visits prefixes in order and stays sorted.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use super::{Durability, Engine, KeyValue, StorageError};

const SHARDS: usize = 256;

/// Keys and values in RAM; lost on exit.
pub struct MemoryEngine {
    // NOTE: parking_lot locks, never held across an await: engine calls are synchronous.
    shards: Vec<RwLock<BTreeMap<Bytes, Bytes>>>,
    bytes: AtomicU64,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

/// The 2-byte prefix range a key sorts into. Keys shorter than two bytes sort
/// just before the prefix that starts with their bytes, i.e. inside the
/// previous prefix's range.
fn prefix_of(key: &[u8]) -> u16 {
    match key {
        [] | [0] => 0,
        [b] => (u16::from(*b) << 8) - 1,
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
    }
}

fn prefix_bounds(prefix: u16) -> (Vec<u8>, Option<Vec<u8>>) {
    let lo = if prefix == 0 {
        Vec::new()
    } else {
        prefix.to_be_bytes().to_vec()
    };
    (lo, prefix.checked_add(1).map(|p| p.to_be_bytes().to_vec()))
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(BTreeMap::new())).collect(),
            bytes: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &[u8]) -> &RwLock<BTreeMap<Bytes, Bytes>> {
        &self.shards[usize::from(prefix_of(key)) % SHARDS]
    }

    fn scan_prefix(
        &self,
        prefix: u16,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        out: &mut Vec<KeyValue>,
    ) {
        let (lo, hi) = prefix_bounds(prefix);
        let lo = lo.as_slice().max(start);
        let hi = match (hi.as_deref(), end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if hi.is_some_and(|hi| hi <= lo) {
            return;
        }
        let upper = hi.map_or(Bound::Unbounded, Bound::Excluded);
        let shard = self.shards[usize::from(prefix) % SHARDS].read();
        let range = shard.range::<[u8], _>((Bound::Included(lo), upper));
        for (k, v) in range.take(limit - out.len()) {
            out.push((k.clone(), v.clone()));
        }
    }
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(self.shard(key).read().get(key).cloned())
    }

    fn put(&self, key: Bytes, value: Bytes) -> Result<(), StorageError> {
        let added = (key.len() + value.len()) as u64;
        let key_len = key.len();
        let old = self.shard(&key).write().insert(key, value);
        self.bytes.fetch_add(added, Ordering::Relaxed);
        if let Some(old) = old {
            self.bytes
                .fetch_sub((key_len + old.len()) as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<(), StorageError> {
        if let Some(old) = self.shard(key).write().remove(key) {
            self.bytes
                .fetch_sub((key.len() + old.len()) as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let mut out = Vec::new();
        let last = end.map_or(u16::MAX, prefix_of);
        for prefix in prefix_of(start)..=last {
            if out.len() >= limit {
                break;
            }
            self.scan_prefix(prefix, start, end, limit, &mut out);
        }
        Ok(out)
    }

    fn flush(&self, _durability: Durability) -> Result<(), StorageError> {
        Ok(())
    }

    fn needs_flush(&self) -> bool {
        false
    }

    fn size_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_sort_into_the_previous_prefix() {
        assert_eq!(prefix_of(b""), 0);
        assert_eq!(prefix_of(&[0]), 0);
        assert_eq!(prefix_of(&[1]), 0x00ff);
        assert_eq!(prefix_of(&[1, 0]), 0x0100);
        let (lo, hi) = prefix_bounds(0x00ff);
        assert!(lo.as_slice() <= &[1u8][..] && &[1u8][..] < hi.unwrap().as_slice());
    }
}
