//! Partitioning: which of the `Q` fixed partitions a key belongs to.
//!
//! Pure, no I/O. `hash = xxh3_64(keyspace, 0x00, key)` and the top `log2(Q)`
//! bits of the hash pick the partition (DESIGN.md §2). Invariant: `Q` is a
//! power of two fixed when the cluster is created, so a key's partition never
//! changes for the life of the data.

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

mod claim;
mod flow;
mod layout;
mod order;
mod preference;
mod targets;

#[cfg(test)]
mod movement_tests;

pub use layout::{DEFAULT_SPREAD, Layout, LayoutError, MAX_NODES, MAX_SPREAD, NodeIndex, NodeSpec};
pub use preference::{Move, PreferenceList, ReplicaMove};

/// Index of a partition, `0..Q`.
pub type PartitionId = u16;

/// The largest supported partition count (partition ids fit in a `u16`).
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// Inputs up to this size are hashed from a stack buffer in one shot (the
/// streaming hasher costs several times more for short keys).
const ONE_SHOT_BYTES: usize = 256;

/// The 64-bit ring hash of a key in a keyspace.
pub fn key_hash(keyspace: &str, key: &[u8]) -> u64 {
    let len = keyspace.len() + 1 + key.len();
    if len <= ONE_SHOT_BYTES {
        let mut buf = [0u8; ONE_SHOT_BYTES];
        buf[..keyspace.len()].copy_from_slice(keyspace.as_bytes());
        buf[keyspace.len() + 1..len].copy_from_slice(key);
        return xxh3_64(&buf[..len]);
    }
    let mut hasher = Xxh3::new();
    hasher.update(keyspace.as_bytes());
    hasher.update(&[0x00]);
    hasher.update(key);
    hasher.digest()
}

/// The partition that owns `hash` when there are `partitions` of them.
///
/// `partitions` must be a power of two in `1..=MAX_PARTITIONS`
/// (validated at start-up by `Config::validate`).
pub fn partition_of_hash(hash: u64, partitions: u32) -> PartitionId {
    assert!(
        partitions.is_power_of_two() && partitions <= MAX_PARTITIONS,
        "partition count is validated at start-up"
    );
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        return 0;
    }
    (hash >> (64 - bits)) as PartitionId
}

/// The partition of `key` in `keyspace`.
pub fn partition_of(keyspace: &str, key: &[u8], partitions: u32) -> PartitionId {
    partition_of_hash(key_hash(keyspace, key), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keyspace_separates_hashes() {
        assert_ne!(key_hash("a", b"bc"), key_hash("ab", b"c"));
    }

    #[test]
    fn one_shot_and_streaming_hashes_agree() {
        let short = vec![7u8; 10];
        let long = vec![7u8; 1000];
        for key in [&short, &long] {
            let mut hasher = Xxh3::new();
            hasher.update(b"default");
            hasher.update(&[0]);
            hasher.update(key);
            assert_eq!(key_hash("default", key), hasher.digest());
        }
    }

    #[test]
    fn single_partition_is_zero() {
        assert_eq!(partition_of("default", b"k", 1), 0);
    }

    proptest! {
        #[test]
        fn partition_in_range(key in proptest::collection::vec(any::<u8>(), 0..64), bits in 0u32..=16) {
            let q = 1u32 << bits;
            prop_assert!(u32::from(partition_of("default", &key, q)) < q);
        }
    }

    #[test]
    fn partitions_are_roughly_even() {
        let q = 64u32;
        let mut counts = vec![0u32; q as usize];
        for i in 0..64_000u32 {
            counts[partition_of("default", &i.to_be_bytes(), q) as usize] += 1;
        }
        // 1000 expected per partition; xxh3 keeps every bucket well within 20%.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
