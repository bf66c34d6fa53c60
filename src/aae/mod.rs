//! Active anti-entropy (DESIGN.md §5): replicas of a partition find and
//! repair their differences in the background, with traffic that grows with
//! the difference, not with the data.
//!
//! - [`tree`]: one TicTac Merkle tree per partition replica (per keyspace
//!   and partition), updated in O(1) by every write in
//!   `LocalStore::replace_locked`, rebuilt only by the start-up scan.
//!
//! Invariant: a replica's tree equals the XOR over its stored records.

pub mod tree;

pub use tree::{Tree, Trees};
