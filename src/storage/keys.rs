//! The storage key layout: `[partition u16 BE][keyspace len u8][keyspace][user key]`.
//!
//! Invariant: every key of one partition, in every keyspace, sorts inside
//! [`partition_range`], so streaming or rebuilding a partition is one range scan.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ring::PartitionId;

/// The longest keyspace name the layout can hold.
pub const MAX_KEYSPACE_NAME_BYTES: usize = u8::MAX as usize;

/// The storage key of `key` in `keyspace`, which lives in `partition`.
pub fn encode(partition: PartitionId, keyspace: &str, key: &[u8]) -> Vec<u8> {
    assert!(
        keyspace.len() <= MAX_KEYSPACE_NAME_BYTES,
        "keyspace names are validated at start-up"
    );
    let mut out = Vec::with_capacity(3 + keyspace.len() + key.len());
    out.put_u16(partition);
    out.put_u8(keyspace.len() as u8);
    out.put_slice(keyspace.as_bytes());
    out.put_slice(key);
    out
}

/// A storage key taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedKey {
    /// The partition.
    pub partition: PartitionId,
    /// The keyspace name.
    pub keyspace: String,
    /// The user's key.
    pub key: Bytes,
}

/// Parses a storage key; `None` if it is not one of ours.
pub fn decode(raw: &Bytes) -> Option<DecodedKey> {
    let partition = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    let ks_len = usize::from(*raw.get(2)?);
    let keyspace = std::str::from_utf8(raw.get(3..3 + ks_len)?).ok()?;
    Some(DecodedKey {
        partition,
        keyspace: keyspace.to_owned(),
        key: raw.slice(3 + ks_len..),
    })
}

/// `[start, end)` covering every storage key of `partition`; `end` is `None`
/// for the last partition id.
pub fn partition_range(partition: PartitionId) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = partition.to_be_bytes().to_vec();
    let end = partition.checked_add(1).map(|p| p.to_be_bytes().to_vec());
    (start, end)
}

/// The smallest key above every key that starts with `prefix` (the end of
/// a prefix range), or `None` when there is none (the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The smallest key strictly greater than `key` (to resume a scan).
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = BytesMut::with_capacity(key.len() + 1);
    next.put_slice(key);
    next.put_u8(0);
    next.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(p in any::<u16>(), ks in "[a-z0-9_]{1,20}", key in proptest::collection::vec(any::<u8>(), 0..32)) {
            let raw = Bytes::from(encode(p, &ks, &key));
            let d = decode(&raw).unwrap();
            prop_assert_eq!(d.partition, p);
            prop_assert_eq!(d.keyspace, ks);
            prop_assert_eq!(&d.key[..], &key[..]);
        }

        #[test]
        fn partition_keys_sort_inside_its_range(p in any::<u16>(), ks in "[a-z]{1,8}", key in proptest::collection::vec(any::<u8>(), 0..32)) {
            let raw = encode(p, &ks, &key);
            let (start, end) = partition_range(p);
            prop_assert!(raw >= start);
            if let Some(end) = end {
                prop_assert!(raw < end);
            }
        }
    }
}
