//! Versions of stored objects: hybrid logical clocks and last-write-wins records.
//!
//! Pure, no I/O except behind the [`Clock`] seam. Invariant: every stored
//! object is a join-semilattice ([`Record::merge`] is commutative, associative
//! and idempotent), so writes, repair, handoff and streaming may all just merge.

mod hlc;
mod record;

pub use hlc::{Clock, ClockSkewError, Hlc, ManualClock, OffsetClock, SystemClock, Timestamp};
pub use record::{NodeId, Payload, Record, RecordError, Version, node_id};
