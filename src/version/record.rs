//! The stored record: a last-write-wins register with expiry and tombstones.
//!
//! On disk and on the wire a record is
//! `[format=2][flags][timestamp u64 BE][node u32 BE]([expiry_ms u64 BE])[value...]`;
//! `flags` bit 0 marks a tombstone, bit 1 says an expiry follows. Format 1 is
//! the same with a millisecond timestamp ([`Timestamp::from_ms_format`]); it
//! is still read, and rewritten as format 2 by the next write of its key.
//! Invariant: [`Record::merge`] keeps the record with the greatest
//! [`Version`], so it is commutative, associative and idempotent.

use std::cmp::Ordering;

use bytes::{BufMut, Bytes, BytesMut};

use super::Timestamp;

/// Identifies the node that coordinated a write; breaks timestamp ties.
pub type NodeId = u32;

/// The id of the node named `name` in versions (a hash of the name): it
/// breaks ties between equal timestamps, and `cluster status` shows it.
pub fn node_id(name: &str) -> NodeId {
    (xxhash_rust::xxh3::xxh3_64(name.as_bytes()) >> 32) as NodeId
}

/// Millisecond timestamps (48 + 16 bits): read, never written.
const FORMAT_V1: u8 = 1;
/// Microsecond timestamps (52 + 12 bits, see [`Timestamp`]).
const FORMAT_V2: u8 = 2;
const FLAG_TOMBSTONE: u8 = 0b01;
const FLAG_EXPIRY: u8 = 0b10;
const HEADER_LEN: usize = 1 + 1 + 8 + 4;

/// The version of a write: its HLC timestamp, ties broken by the writer's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// When the coordinator accepted the write.
    pub timestamp: Timestamp,
    /// Which node coordinated it.
    pub node: NodeId,
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A value (possibly empty).
    Value(Bytes),
    /// The key was deleted.
    Tombstone,
}

/// One version of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Orders concurrent writes.
    pub version: Version,
    /// Absolute expiry in ms since the epoch; the record reads as deleted from then on.
    pub expiry_ms: Option<u64>,
    /// The value or a tombstone.
    pub payload: Payload,
}

/// A stored record that can't be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its header says.
    #[error("record truncated ({len} bytes)")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// Written by a newer ringkv.
    #[error("unknown record format version {0}")]
    UnknownFormat(u8),
}

impl Record {
    /// A value written at `version`.
    pub fn value(version: Version, value: Bytes, expiry_ms: Option<u64>) -> Self {
        Self {
            version,
            expiry_ms,
            payload: Payload::Value(value),
        }
    }

    /// A delete written at `version`.
    pub fn tombstone(version: Version) -> Self {
        Self {
            version,
            expiry_ms: None,
            payload: Payload::Tombstone,
        }
    }

    /// The value if the record is live at wall time `now_ms`.
    ///
    /// NOTE: like Redis, a key is expired once `now_ms > expiry_ms`.
    pub fn live_value(&self, now_ms: u64) -> Option<&Bytes> {
        match &self.payload {
            Payload::Value(v) if !self.is_expired(now_ms) => Some(v),
            _ => None,
        }
    }

    /// True when the record has an expiry that has passed.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expiry_ms.is_some_and(|at| now_ms > at)
    }

    /// True for a tombstone or an expired value.
    pub fn is_dead(&self, now_ms: u64) -> bool {
        self.live_value(now_ms).is_none()
    }

    /// When this record started acting as a tombstone, if it does: its write
    /// time for a delete, its expiry for an expired value.
    pub fn dead_since_ms(&self, now_ms: u64) -> Option<u64> {
        match self.payload {
            Payload::Tombstone => Some(self.expiry_ms.unwrap_or(self.version.timestamp.ms())),
            Payload::Value(_) => self.expiry_ms.filter(|_| self.is_expired(now_ms)),
        }
    }

    /// The reclaimed form of an expired value: a tombstone with the same
    /// version and expiry, so every replica decays it identically and the
    /// decayed form wins a merge with the original (equal versions, greater
    /// encoding), without beating any later write.
    pub fn decayed(&self) -> Record {
        Record {
            version: self.version,
            expiry_ms: self.expiry_ms,
            payload: Payload::Tombstone,
        }
    }

    /// The join of two records: the one with the greater version.
    ///
    /// Commutative, associative and idempotent. Two records with the same
    /// version come from the same write and are equal; should they differ
    /// anyway (corruption, a bug), the encoded bytes decide so the laws hold.
    pub fn merge(self, other: Record) -> Record {
        match self.version.cmp(&other.version) {
            Ordering::Greater => self,
            Ordering::Less => other,
            // NOTE: equal versions almost always hold equal records (every
            // replica a quorum read agrees on): no encoding to compare then.
            Ordering::Equal if self == other => self,
            Ordering::Equal => {
                if self.encode() >= other.encode() {
                    self
                } else {
                    other
                }
            }
        }
    }

    /// Size of the encoded record.
    pub fn encoded_len(&self) -> usize {
        let value_len = match &self.payload {
            Payload::Value(v) => v.len(),
            Payload::Tombstone => 0,
        };
        HEADER_LEN + if self.expiry_ms.is_some() { 8 } else { 0 } + value_len
    }

    /// The versioned binary form.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        let mut flags = 0;
        if self.payload == Payload::Tombstone {
            flags |= FLAG_TOMBSTONE;
        }
        if self.expiry_ms.is_some() {
            flags |= FLAG_EXPIRY;
        }
        out.put_u8(FORMAT_V2);
        out.put_u8(flags);
        out.put_u64(self.version.timestamp.0);
        out.put_u32(self.version.node);
        if let Some(at) = self.expiry_ms {
            out.put_u64(at);
        }
        if let Payload::Value(v) = &self.payload {
            out.put_slice(v);
        }
        out.freeze()
    }

    /// True when `raw`, which decodes to this record, is in the current
    /// format ([`Record::encode`]'s), so it may be stored as it is instead of
    /// encoded again (a copy of the value per write on every replica).
    pub fn is_encoded_as(&self, raw: &[u8]) -> bool {
        raw.first() == Some(&FORMAT_V2) && raw.len() == self.encoded_len()
    }

    /// Parses [`Record::encode`]'s output; the value shares `raw`'s memory.
    pub fn decode(raw: Bytes) -> Result<Record, RecordError> {
        let truncated = RecordError::Truncated { len: raw.len() };
        let header = raw.get(..HEADER_LEN).ok_or(truncated.clone())?;
        let [format, flags, rest @ ..] = header else {
            return Err(truncated);
        };
        let raw_timestamp = u64::from_be_bytes(array(rest, 0)?);
        let timestamp = match *format {
            FORMAT_V2 => Timestamp(raw_timestamp),
            FORMAT_V1 => Timestamp::from_ms_format(raw_timestamp),
            other => return Err(RecordError::UnknownFormat(other)),
        };
        let node = u32::from_be_bytes(array(rest, 8)?);
        let mut at = HEADER_LEN;
        let expiry_ms = if flags & FLAG_EXPIRY != 0 {
            let bytes = raw.get(at..at + 8).ok_or(truncated)?;
            at += 8;
            Some(u64::from_be_bytes(array(bytes, 0)?))
        } else {
            None
        };
        let payload = if flags & FLAG_TOMBSTONE != 0 {
            Payload::Tombstone
        } else {
            Payload::Value(raw.slice(at..))
        };
        Ok(Record {
            version: Version { timestamp, node },
            expiry_ms,
            payload,
        })
    }
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], RecordError> {
    bytes
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(RecordError::Truncated { len: bytes.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            0u64..4,
            0u32..3,
            proptest::option::of(0u64..100),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        )
            .prop_map(|(ts, node, expiry_ms, value)| Record {
                version: Version {
                    timestamp: Timestamp(ts),
                    node,
                },
                expiry_ms,
                payload: value.map_or(Payload::Tombstone, |v| Payload::Value(v.into())),
            })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_record(), b in arb_record()) {
            prop_assert_eq!(a.clone().merge(b.clone()), b.merge(a));
        }

        #[test]
        fn merge_is_associative(a in arb_record(), b in arb_record(), c in arb_record()) {
            prop_assert_eq!(
                a.clone().merge(b.clone()).merge(c.clone()),
                a.merge(b.merge(c))
            );
        }

        #[test]
        fn merge_is_idempotent(a in arb_record()) {
            prop_assert_eq!(a.clone().merge(a.clone()), a);
        }

        #[test]
        fn encode_decode_round_trips(a in arb_record()) {
            prop_assert_eq!(Record::decode(a.encode()).unwrap(), a);
        }

        #[test]
        fn decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Record::decode(raw.into());
        }
    }

    #[test]
    fn newer_version_wins_regardless_of_value() {
        let v = |ts, node| Version {
            timestamp: Timestamp(ts),
            node,
        };
        let old = Record::value(v(5, 9), Bytes::from_static(b"zzz"), None);
        let new = Record::value(v(6, 1), Bytes::from_static(b"aaa"), None);
        assert_eq!(old.clone().merge(new.clone()), new);
        let tie_low = Record::value(v(6, 0), Bytes::from_static(b"zzz"), None);
        assert_eq!(
            tie_low.merge(new.clone()),
            new,
            "ties go to the higher node id"
        );
    }

    #[test]
    fn expiry_makes_value_dead_after_deadline() {
        let r = Record::value(
            Version {
                timestamp: Timestamp::from_ms(1),
                node: 0,
            },
            Bytes::from_static(b"v"),
            Some(100),
        );
        assert!(r.live_value(100).is_some());
        assert!(r.live_value(101).is_none());
        assert_eq!(r.dead_since_ms(150), Some(100));
        assert_eq!(r.dead_since_ms(50), None);
    }

    #[test]
    fn decayed_value_wins_over_original_but_not_over_later_writes() {
        let v = |ts| Version {
            timestamp: Timestamp::from_ms(ts),
            node: 1,
        };
        let original = Record::value(v(10), Bytes::from_static(b"v"), Some(100));
        let decayed = original.decayed();
        assert_eq!(original.clone().merge(decayed.clone()), decayed);
        assert_eq!(decayed.dead_since_ms(0), Some(100));
        let later = Record::value(v(50), Bytes::from_static(b"w"), None);
        assert_eq!(decayed.merge(later.clone()), later);
    }

    #[test]
    fn a_millisecond_format_record_reads_with_its_timestamp_converted() {
        let record = Record::value(
            Version {
                timestamp: Timestamp(0),
                node: 7,
            },
            Bytes::from_static(b"v"),
            Some(5),
        );
        let mut raw = record.encode().to_vec();
        assert_eq!(raw[0], FORMAT_V2);
        raw[0] = FORMAT_V1;
        // 1_700_000_000_123 ms, logical 0x1005: 1 us and logical 5 into the ms.
        let old = (1_700_000_000_123u64 << 16) | 0x1005;
        raw[2..10].copy_from_slice(&old.to_be_bytes());
        let read = Record::decode(raw.into()).unwrap();
        assert_eq!(
            read.version.timestamp,
            Timestamp((1_700_000_000_123_001 << 12) | 5)
        );
        assert_eq!(read.version.timestamp.ms(), 1_700_000_000_123);
        assert_eq!((read.version.node, read.expiry_ms), (7, Some(5)));
        assert_eq!(read.encode()[0], FORMAT_V2, "rewritten in the new format");
        let mut old_format = read.encode().to_vec();
        old_format[0] = FORMAT_V1;
        assert!(
            !read.is_encoded_as(&old_format),
            "kept only in the new format"
        );
        assert!(read.is_encoded_as(&read.encode()));
    }

    #[test]
    fn unknown_format_is_an_error() {
        let mut raw = Record::tombstone(Version {
            timestamp: Timestamp(1),
            node: 1,
        })
        .encode()
        .to_vec();
        raw[0] = 9;
        assert_eq!(
            Record::decode(raw.into()),
            Err(RecordError::UnknownFormat(9))
        );
    }
}
