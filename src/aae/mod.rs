//! Active anti-entropy (DESIGN.md §5): replicas of a partition find and
//! repair their differences in the background, with traffic that grows with
//! the difference, not with the data. See `docs/design/antientropy.md`.
//!
//! - [`tree`]: one TicTac Merkle tree per partition replica (per keyspace
//!   and partition), updated in O(1) by every write in
//!   `LocalStore::replace_locked`, rebuilt only by the start-up scan.
//! - [`exchange`]: one exchange with a peer: compare roots, descend into the
//!   differing branches, trade only the differing keys.
//! - `local`: the replica's side of an exchange, and [`serve`] for peers.
//! - [`schedule`]: the periodic, jittered, rate-limited rounds, and the
//!   per-partition [`RepairLog`].
//!
//! Invariants: a replica's tree equals the XOR over its stored records; an
//! exchange only merges (`LocalStore::merge_stored`), on both sides, so it
//! never loses a write and is safe to repeat or interrupt; records past the
//! tombstone grace are never moved, so a purge is never undone.

mod exchange;
mod local;
pub mod schedule;
pub mod tree;

pub use exchange::{ExchangeError, ExchangeReport, exchange};
pub use local::serve;
pub use schedule::{
    AaeConfig, AaeHandle, IsUpFn, LastExchange, LayoutFn, RepairLog, RoundReport, Scheduler,
    spawn_aae,
};
pub use tree::{Tree, Trees};

/// Segments listed per `Keys` request at most.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 64;
/// Keys asked for per `Fetch` request at most.
pub const MAX_KEYS_PER_FETCH: usize = 1024;
/// A `Fetch` answer or a `Push` stops growing at about this many bytes.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// A `Keys` answer stops adding segments at about this many bytes.
pub const MAX_KEYS_BYTES: usize = 4 << 20;

#[cfg(test)]
mod tests;
