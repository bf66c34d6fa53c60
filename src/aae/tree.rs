//! TicTac Merkle trees: one per partition replica, updated in O(1) per write.
//!
//! A tree has a fixed shape: [`SEGMENTS`] leaves under [`BRANCHES`]
//! branches under one root. A key lives in one segment (a hash of its
//! storage key); a leaf is the XOR of the [`record_hash`]es of the keys in
//! its segment, a branch the XOR of its leaves, the root the XOR of the
//! branches. Because XOR is its own inverse and order-free, replacing a
//! record is `xor(hash(old) ^ hash(new))` on one leaf, its branch and the
//! root: no rebuild, no lock, and two replicas holding the same records have
//! equal trees whatever order the writes came in.
//!
//! Invariant (when no write is in flight): every tree equals the XOR over
//! the records stored in its (keyspace, partition) range, level by level.
//! Readers may see a write half-applied (leaf updated, root not yet); the
//! exchange treats that as a difference and finds nothing to repair.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_64;

use crate::coordinator::KeyspaceId;
use crate::version::{Payload, Record};

/// Leaves (segments) per tree.
pub const SEGMENTS: usize = 1024;
/// Branches per tree (the middle level).
pub const BRANCHES: usize = 32;
/// Leaves under one branch.
pub const SEGMENTS_PER_BRANCH: usize = SEGMENTS / BRANCHES;

/// Slots of a tree: root, then branches, then leaves.
const SLOTS: usize = 1 + BRANCHES + SEGMENTS;
const FIRST_BRANCH: usize = 1;
const FIRST_LEAF: usize = 1 + BRANCHES;

/// The segment of a storage key: a hash of it, independent of the ring hash
/// that picked its partition, so a partition's keys spread evenly.
pub fn segment_of(storage_key: &[u8]) -> usize {
    (xxh3_64(storage_key) % SEGMENTS as u64) as usize
}

/// What a tree knows of one stored record: xxh3 of the storage key, the
/// version, and the expiry, plus whether it is a tombstone when it has no
/// expiry. The value bytes are left out (a version names one write, so equal
/// versions hold equal values, and hashing 1 MiB values per write would cost
/// more than the write).
///
/// NOTE: an expired value and the same-version tombstone the expiry sweep
/// decays it into hash the same: both read as deleted from the same instant
/// on, so replicas that swept at different times are not different. Any
/// other change of version, expiry or kind is a difference.
pub fn record_hash(storage_key: &[u8], record: &Record) -> u64 {
    let kind: u8 = match (&record.payload, record.expiry_ms) {
        (_, Some(_)) => 2,
        (Payload::Value(_), None) => 0,
        (Payload::Tombstone, None) => 1,
    };
    // NOTE: one-shot over the bytes a streaming hasher would be fed (the
    // same hash): every write hashes its old and new record, and streaming
    // cost a coordinator 4% of its CPU on pipelined writes. Keys up to
    // INLINE_KEY bytes (most) need no allocation.
    const INLINE_KEY: usize = 200;
    const FIXED: usize = 4 + 8 + 4 + 1 + 8;
    let mut inline = [0u8; INLINE_KEY + FIXED];
    let mut spilled = Vec::new();
    let buf: &mut [u8] = if storage_key.len() <= INLINE_KEY {
        &mut inline[..storage_key.len() + FIXED]
    } else {
        spilled.resize(storage_key.len() + FIXED, 0);
        &mut spilled
    };
    let (len, rest) = buf.split_at_mut(4);
    len.copy_from_slice(&(storage_key.len() as u32).to_be_bytes());
    let (key, rest) = rest.split_at_mut(storage_key.len());
    key.copy_from_slice(storage_key);
    rest[..8].copy_from_slice(&record.version.timestamp.0.to_be_bytes());
    rest[8..12].copy_from_slice(&record.version.node.to_be_bytes());
    rest[12] = kind;
    rest[13..21].copy_from_slice(&record.expiry_ms.unwrap_or(0).to_be_bytes());
    xxh3_64(buf)
}

/// One partition replica's tree. Allocated on its first non-empty update:
/// an empty tree is all zeros.
#[derive(Debug, Default)]
pub struct Tree {
    slots: OnceLock<Box<[AtomicU64]>>,
}

impl Tree {
    /// XORs `delta` into `segment`'s leaf, its branch and the root.
    pub fn xor(&self, segment: usize, delta: u64) {
        assert!(segment < SEGMENTS, "segments come from segment_of");
        if delta == 0 {
            return;
        }
        let slots = self
            .slots
            .get_or_init(|| (0..SLOTS).map(|_| AtomicU64::new(0)).collect());
        slots[FIRST_LEAF + segment].fetch_xor(delta, Ordering::Relaxed);
        slots[FIRST_BRANCH + segment / SEGMENTS_PER_BRANCH].fetch_xor(delta, Ordering::Relaxed);
        slots[0].fetch_xor(delta, Ordering::Relaxed);
    }

    fn slot(&self, i: usize) -> u64 {
        self.slots
            .get()
            .map_or(0, |slots| slots[i].load(Ordering::Relaxed))
    }

    /// The root hash.
    pub fn root(&self) -> u64 {
        self.slot(0)
    }

    /// The [`BRANCHES`] branch hashes.
    pub fn branches(&self) -> Vec<u64> {
        (0..BRANCHES).map(|b| self.slot(FIRST_BRANCH + b)).collect()
    }

    /// The [`SEGMENTS_PER_BRANCH`] leaves under `branch` (< [`BRANCHES`]).
    pub fn leaves(&self, branch: usize) -> Vec<u64> {
        let first = branch * SEGMENTS_PER_BRANCH;
        (first..first + SEGMENTS_PER_BRANCH)
            .map(|s| self.slot(FIRST_LEAF + s))
            .collect()
    }

    /// Every level, root first (tests and restart checks).
    pub fn levels(&self) -> Vec<u64> {
        (0..SLOTS).map(|i| self.slot(i)).collect()
    }
}

/// The trees of one node: one per (keyspace, partition).
#[derive(Debug)]
pub struct Trees {
    partitions: usize,
    trees: Box<[Tree]>,
}

impl Trees {
    /// Empty trees for `keyspaces` keyspaces of `partitions` partitions.
    pub fn new(keyspaces: usize, partitions: u32) -> Self {
        let partitions = partitions as usize;
        Self {
            partitions,
            trees: (0..keyspaces * partitions)
                .map(|_| Tree::default())
                .collect(),
        }
    }

    /// The partition count `Q`.
    pub fn partitions(&self) -> u32 {
        self.partitions as u32
    }

    /// The tree of a partition replica; `None` for an unknown one.
    pub fn get(&self, ks: KeyspaceId, partition: u16) -> Option<&Tree> {
        let partition = usize::from(partition);
        if partition >= self.partitions {
            return None;
        }
        self.trees.get(ks * self.partitions + partition)
    }

    /// Accounts for `storage_key` changing from `old` to `new` (either may
    /// be absent). O(1): two hashes and three atomic XORs. Storage keys that
    /// name no partition of ours are ignored.
    pub fn update(
        &self,
        ks: KeyspaceId,
        storage_key: &[u8],
        old: Option<&Record>,
        new: Option<&Record>,
    ) {
        let &[hi, lo, ..] = storage_key else {
            return;
        };
        let Some(tree) = self.get(ks, u16::from_be_bytes([hi, lo])) else {
            return;
        };
        let hash = |r: Option<&Record>| r.map_or(0, |r| record_hash(storage_key, r));
        let delta = hash(old) ^ hash(new);
        if delta != 0 {
            tree.xor(segment_of(storage_key), delta);
        }
    }
}

/// Indexes where `ours` and `theirs` differ (a missing entry differs).
pub fn differing(ours: &[u64], theirs: &[u64]) -> Vec<usize> {
    (0..ours.len().max(theirs.len()))
        .filter(|&i| ours.get(i) != theirs.get(i))
        .collect()
}

/// Hashes packed as big-endian u64s, the wire form of a tree level.
pub fn pack(hashes: &[u64]) -> bytes::Bytes {
    hashes.iter().flat_map(|h| h.to_be_bytes()).collect()
}

/// The inverse of [`pack`]; `None` unless the length is a multiple of 8.
pub fn unpack(raw: &[u8]) -> Option<Vec<u64>> {
    if !raw.len().is_multiple_of(8) {
        return None;
    }
    raw.chunks_exact(8)
        .map(|c| c.try_into().ok().map(u64::from_be_bytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::storage::keys;
    use crate::version::{Timestamp, Version};

    use bytes::Bytes;
    use proptest::prelude::*;

    /// The hash as it was first computed: fed field by field to a streaming
    /// xxh3 (nodes of one cluster compare these hashes).
    fn streamed_hash(key: &[u8], record: &Record) -> u64 {
        let kind: u8 = match (&record.payload, record.expiry_ms) {
            (_, Some(_)) => 2,
            (Payload::Value(_), None) => 0,
            (Payload::Tombstone, None) => 1,
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&(key.len() as u32).to_be_bytes());
        hasher.update(key);
        hasher.update(&record.version.timestamp.0.to_be_bytes());
        hasher.update(&record.version.node.to_be_bytes());
        hasher.update(&[kind]);
        hasher.update(&record.expiry_ms.unwrap_or(0).to_be_bytes());
        hasher.digest()
    }

    #[test]
    fn the_record_hash_of_a_known_record_never_changes() {
        let version = Version {
            timestamp: Timestamp::from_us(1_700_000_000_000_000),
            node: 3,
        };
        let record = Record::value(version, Bytes::from_static(b"v"), Some(42));
        let golden = 2_987_827_578_411_140_641;
        assert_eq!(streamed_hash(b"\x00\x07key", &record), golden);
        assert_eq!(record_hash(b"\x00\x07key", &record), golden);
    }

    proptest! {
        #[test]
        fn the_record_hash_is_the_streamed_hash_of_its_fields(
            key_len in 0usize..2100,
            us in any::<u64>(),
            node in any::<u32>(),
            kind in 0u8..3,
            expiry in any::<u64>(),
        ) {
            let key = vec![b'k'; key_len];
            let version = Version { timestamp: Timestamp::from_us(us), node };
            let record = match kind {
                0 => Record::value(version, Bytes::from_static(b"v"), None),
                1 => Record::tombstone(version),
                _ => Record::value(version, Bytes::from_static(b"v"), Some(expiry)),
            };
            prop_assert_eq!(record_hash(&key, &record), streamed_hash(&key, &record));
        }
    }

    fn record(ms: u64, kind: u8) -> Record {
        let version = Version {
            timestamp: Timestamp::from_ms(ms),
            node: 1,
        };
        match kind % 3 {
            0 => Record::value(version, Bytes::from_static(b"v"), None),
            1 => Record::tombstone(version),
            _ => Record::value(version, Bytes::from_static(b"v"), Some(ms + 10)),
        }
    }

    fn storage_key(partition: u16, key: u16) -> Vec<u8> {
        keys::encode(partition, "default", &key.to_be_bytes())
    }

    /// A tree built from scratch over `stored`.
    fn rebuilt(stored: &BTreeMap<Vec<u8>, Record>) -> Trees {
        let trees = Trees::new(1, 4);
        for (key, record) in stored {
            trees.update(0, key, None, Some(record));
        }
        trees
    }

    fn all_levels(trees: &Trees) -> Vec<Vec<u64>> {
        (0..4).map(|p| trees.get(0, p).unwrap().levels()).collect()
    }

    proptest! {
        /// Incremental updates (puts, overwrites, deletes, in any order)
        /// leave the same tree as a rebuild over what ends up stored.
        #[test]
        fn incremental_equals_rebuild(
            ops in proptest::collection::vec((0u16..4, 0u16..64, proptest::option::of((0u64..1000, any::<u8>()))), 0..300)
        ) {
            let trees = Trees::new(1, 4);
            let mut stored = BTreeMap::new();
            for (partition, key, new) in ops {
                let key = storage_key(partition, key);
                let new = new.map(|(ms, kind)| record(ms, kind));
                let old = match &new {
                    Some(r) => stored.insert(key.clone(), r.clone()),
                    None => stored.remove(&key),
                };
                trees.update(0, &key, old.as_ref(), new.as_ref());
            }
            prop_assert_eq!(all_levels(&trees), all_levels(&rebuilt(&stored)));
        }

        /// The same records inserted in any order give the same tree, and
        /// each level is the XOR of the one below.
        #[test]
        fn order_independent_and_levels_consistent(
            entries in proptest::collection::btree_map((0u16..4, any::<u16>()), (0u64..1000, any::<u8>()), 0..200),
            seed in any::<u64>(),
        ) {
            let stored: BTreeMap<Vec<u8>, Record> = entries
                .into_iter()
                .map(|((p, k), (ms, kind))| (storage_key(p, k), record(ms, kind)))
                .collect();
            let mut shuffled: Vec<_> = stored.iter().collect();
            shuffled.sort_by_key(|(k, _)| xxh3_64(&[k.as_slice(), &seed.to_be_bytes()].concat()));
            let trees = Trees::new(1, 4);
            for (key, record) in shuffled {
                trees.update(0, key, None, Some(record));
            }
            prop_assert_eq!(all_levels(&trees), all_levels(&rebuilt(&stored)));
            for p in 0..4 {
                let tree = trees.get(0, p).unwrap();
                let branches = tree.branches();
                prop_assert_eq!(tree.root(), branches.iter().fold(0, |a, b| a ^ b));
                for (b, branch) in branches.iter().enumerate() {
                    prop_assert_eq!(*branch, tree.leaves(b).iter().fold(0, |a, l| a ^ l));
                }
            }
        }
    }

    #[test]
    fn one_differing_key_shows_in_exactly_its_branch_and_segment() {
        let (a, b) = (Trees::new(1, 4), Trees::new(1, 4));
        for k in 0..2000u16 {
            let key = storage_key(2, k);
            a.update(0, &key, None, Some(&record(5, 0)));
            b.update(0, &key, None, Some(&record(5, 0)));
        }
        assert_eq!(a.get(0, 2).unwrap().levels(), b.get(0, 2).unwrap().levels());
        let stale = storage_key(2, 777);
        b.update(0, &stale, Some(&record(5, 0)), Some(&record(6, 0)));
        let (ta, tb) = (a.get(0, 2).unwrap(), b.get(0, 2).unwrap());
        assert_ne!(ta.root(), tb.root());
        let segment = segment_of(&stale);
        let branches = differing(&ta.branches(), &tb.branches());
        assert_eq!(branches, [segment / SEGMENTS_PER_BRANCH]);
        let leaves = differing(&ta.leaves(branches[0]), &tb.leaves(branches[0]));
        assert_eq!(leaves, [segment % SEGMENTS_PER_BRANCH]);
        assert_eq!(a.get(0, 1).unwrap().root(), 0, "other partitions untouched");
    }

    #[test]
    fn decay_is_not_a_difference_but_other_changes_are() {
        let key = storage_key(0, 1);
        let value = record(5, 2);
        assert_eq!(
            record_hash(&key, &value),
            record_hash(&key, &value.decayed())
        );
        let plain = record(5, 0);
        for other in [record(5, 1), record(6, 0), record(5, 2)] {
            assert_ne!(record_hash(&key, &plain), record_hash(&key, &other));
        }
        assert_ne!(
            record_hash(&key, &plain),
            record_hash(&storage_key(0, 2), &plain)
        );
    }

    #[test]
    fn hashes_pack_and_unpack() {
        let hashes = vec![0, 1, u64::MAX, 0x0102_0304_0506_0708];
        assert_eq!(unpack(&pack(&hashes)).unwrap(), hashes);
        assert_eq!(unpack(&[1, 2, 3]), None);
        assert_eq!(differing(&[1, 2, 3], &[1, 5]), [1, 2]);
    }
}
