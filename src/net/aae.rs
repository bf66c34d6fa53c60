//! The anti-entropy messages (`crate::aae`): two replicas of a partition
//! compare their Merkle trees level by level, then trade only the records
//! of the segments that differ.
//!
//! Invariant: every answer is bounded: a level is at most `SEGMENTS` hashes,
//! and key lists and record batches stop at a byte budget, saying how far
//! they got, so no message outgrows the frame limit.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One step of a tree exchange, asked of the peer replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AaeRequest {
    /// "My root is `root`": answered [`AaeResponse::InSync`] if the peer's is
    /// equal, else with the peer's branch hashes.
    Branches {
        /// Keyspace name.
        keyspace: String,
        /// The partition.
        partition: u16,
        /// The asker's root hash.
        root: u64,
    },
    /// The leaf hashes under `branches`, one run of leaves per branch, in order.
    Leaves {
        /// Keyspace name.
        keyspace: String,
        /// The partition.
        partition: u16,
        /// Branch indexes.
        branches: Vec<u16>,
    },
    /// The keys of `segments` with their record hashes. Records dead since
    /// before `purgeable_before_ms` (past the tombstone grace, about to be
    /// purged) are left out on both sides, so a purge is never undone.
    Keys {
        /// Keyspace name.
        keyspace: String,
        /// The partition.
        partition: u16,
        /// Segment indexes.
        segments: Vec<u16>,
        /// The purge cutoff, ms since the epoch.
        purgeable_before_ms: u64,
    },
    /// The stored records of `keys`.
    Fetch {
        /// Keyspace name.
        keyspace: String,
        /// User keys.
        keys: Vec<Bytes>,
    },
    /// Merge these `(user key, encoded record)` pairs (never overwrite).
    Push {
        /// Keyspace name.
        keyspace: String,
        /// The records.
        records: Vec<(Bytes, Bytes)>,
    },
}

/// The peer's answer to an [`AaeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AaeResponse {
    /// The roots are equal: nothing to do.
    InSync,
    /// Hashes of a tree level, packed as big-endian u64s.
    Hashes(Bytes),
    /// The keys of the first `listed` segments asked for (all of them
    /// unless the byte budget ran out; always at least one).
    Keys {
        /// How many of the requested segments are listed, from the first.
        listed: u16,
        /// The keys of those segments.
        entries: Vec<KeyDigest>,
    },
    /// The encoded records of the first keys asked for, in order (`None`:
    /// not stored); fewer than asked once the byte budget ran out.
    Records(Vec<Option<Bytes>>),
    /// Every pushed record was merged and committed.
    Merged,
}

/// What an exchange compares of one stored record: its tree hash, and its
/// version so the newer side can send it without the older one sending too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDigest {
    /// The user key.
    pub key: Bytes,
    /// The record's hash in the tree (`crate::aae::tree::record_hash`).
    pub hash: u64,
    /// The record's version: HLC timestamp.
    pub timestamp: u64,
    /// The record's version: writer's node id.
    pub node: u32,
}
