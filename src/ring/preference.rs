//! Preference lists: which nodes hold a partition's replicas, and what a new
//! layout moves.
//!
//! The walk of a partition lists every node once: its replica set in order,
//! then the members of the following partitions' sets met walking the ring
//! clockwise, then nodes holding no replica, by name. The `n` primaries are
//! taken from the walk, skipping a node whose zone is already used while
//! unused zones remain; skipped nodes fill the rest, in walk order, only once
//! every zone is used (a zone-less node is a zone of its own). For `n` up to
//! the spread that is a prefix of the replica set, which the claim orders
//! one node per zone first. Fallbacks are all other nodes in walk order.
//!
//! Invariants: primaries are `min(n, nodes)` distinct nodes in
//! `min(n, zones)` distinct zones; primaries then fallbacks list every node
//! exactly once. With `n` above the node count every node is a primary and
//! the coordinator reports the shortfall.

use serde::{Deserialize, Serialize};

use super::PartitionId;
use super::layout::{Layout, LayoutError, NodeIndex};

/// The replicas of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferenceList {
    /// The partition the list is for.
    pub partition: PartitionId,
    /// The `n` nodes that hold the partition (fewer only if the layout has
    /// fewer nodes), indexes into [`Layout::nodes`].
    pub primaries: Vec<NodeIndex>,
    /// Every other node in walk order: where hinted copies go.
    pub fallbacks: Vec<NodeIndex>,
}

/// A partition whose owner (token holder) changes between two layouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The partition.
    pub partition: PartitionId,
    /// Its owner in the old layout.
    pub from: String,
    /// Its owner in the new layout.
    pub to: String,
}

/// A partition whose primaries change between two layouts: the data that
/// must stream to `gained` before ownership flips.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMove {
    /// The partition.
    pub partition: PartitionId,
    /// Primaries in the new layout that were not in the old one.
    pub gained: Vec<String>,
    /// Primaries in the old layout that are not in the new one.
    pub lost: Vec<String>,
}

impl Layout {
    /// The `n` primaries and the fallbacks of `partition`.
    pub fn preference_list(
        &self,
        partition: PartitionId,
        n: usize,
    ) -> Result<PreferenceList, LayoutError> {
        let order = self.walk(partition)?;
        let primaries = self.select_primaries(&order, n);
        let mut primary = vec![false; self.nodes().len()];
        for &node in &primaries {
            primary[usize::from(node)] = true;
        }
        let fallbacks = order
            .into_iter()
            .filter(|&node| !primary[usize::from(node)])
            .collect();
        Ok(PreferenceList {
            partition,
            primaries,
            fallbacks,
        })
    }

    /// Every node once: the replica set of `partition`, the members of the
    /// following sets in ring order, then the nodes that hold nothing.
    fn walk(&self, partition: PartitionId) -> Result<Vec<NodeIndex>, LayoutError> {
        let q = self.owners().len();
        let start = usize::from(partition);
        if start >= q {
            return Err(LayoutError::PartitionOutOfRange {
                partition: u32::from(partition),
                partitions: self.partitions(),
            });
        }
        let mut seen = vec![false; self.nodes().len()];
        let mut order = Vec::with_capacity(self.nodes().len());
        for p in (start..q).chain(0..start) {
            if order.len() == self.owning_nodes() {
                break;
            }
            for &member in self.replica_set(p) {
                if !seen[usize::from(member)] {
                    seen[usize::from(member)] = true;
                    order.push(member);
                }
            }
        }
        let idle = (0..self.nodes().len()).filter(|&i| !seen[i]);
        order.extend(idle.map(|i| NodeIndex::try_from(i).expect("node count fits NodeIndex")));
        Ok(order)
    }

    /// Distinct zones first, then the skipped nodes and the rest in order.
    fn select_primaries(&self, order: &[NodeIndex], n: usize) -> Vec<NodeIndex> {
        let mut zone_used = vec![false; self.zone_count()];
        let mut zones_used = 0;
        let mut primaries = Vec::with_capacity(n.min(order.len()));
        let mut skipped = Vec::new();
        let mut rest = order.iter();
        while primaries.len() < n && zones_used < self.zone_count() {
            let Some(&node) = rest.next() else { break };
            let zone = self.zone_of(node);
            if zone_used[zone] {
                skipped.push(node);
            } else {
                zone_used[zone] = true;
                zones_used += 1;
                primaries.push(node);
            }
        }
        // NOTE: every zone is used now; skipped nodes precede the rest in
        // walk order, so this keeps the walk order among same-zone nodes.
        let needed = n.saturating_sub(primaries.len());
        primaries.extend(skipped.iter().chain(rest).take(needed));
        primaries
    }

    /// Partitions whose owner differs in `next`, in partition order.
    pub fn diff(&self, next: &Layout) -> Result<Vec<Move>, LayoutError> {
        self.check_same_partitions(next)?;
        let name = |layout: &Layout, p: usize| {
            let owner = layout.owners()[p];
            layout
                .node(owner)
                .map(|n| n.name.clone())
                .unwrap_or_default()
        };
        let mut moves = Vec::new();
        for p in 0..self.owners().len() {
            let (from, to) = (name(self, p), name(next, p));
            if from != to {
                let partition = PartitionId::try_from(p).expect("Q is at most 2^16");
                moves.push(Move {
                    partition,
                    from,
                    to,
                });
            }
        }
        Ok(moves)
    }

    /// Partitions whose `n` primaries change in `next`, in partition order.
    pub fn replica_moves(&self, next: &Layout, n: usize) -> Result<Vec<ReplicaMove>, LayoutError> {
        self.check_same_partitions(next)?;
        let mut moves = Vec::new();
        for p in 0..self.owners().len() {
            let partition = PartitionId::try_from(p).expect("Q is at most 2^16");
            let old = self.primary_names(partition, n)?;
            let new = next.primary_names(partition, n)?;
            let gained: Vec<String> = new.iter().filter(|x| !old.contains(x)).cloned().collect();
            let lost: Vec<String> = old.iter().filter(|x| !new.contains(x)).cloned().collect();
            if !gained.is_empty() || !lost.is_empty() {
                moves.push(ReplicaMove {
                    partition,
                    gained,
                    lost,
                });
            }
        }
        Ok(moves)
    }

    /// The number of partition replicas that must be copied to adopt `next`:
    /// (partition, node) pairs among `next`'s primaries not among ours.
    pub fn moved_replicas(&self, next: &Layout, n: usize) -> Result<usize, LayoutError> {
        let moves = self.replica_moves(next, n)?;
        Ok(moves.iter().map(|m| m.gained.len()).sum())
    }

    fn primary_names(&self, partition: PartitionId, n: usize) -> Result<Vec<String>, LayoutError> {
        let list = self.preference_list(partition, n)?;
        let names = list.primaries.iter().filter_map(|&i| self.node(i));
        Ok(names.map(|node| node.name.clone()).collect())
    }

    fn check_same_partitions(&self, next: &Layout) -> Result<(), LayoutError> {
        if self.partitions() == next.partitions() {
            Ok(())
        } else {
            Err(LayoutError::PartitionCountMismatch {
                left: self.partitions(),
                right: next.partitions(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::NodeSpec;
    use proptest::prelude::*;

    const N: usize = 3;
    const LIMIT: f64 = 1.1;

    fn nodes(count: usize, zones: usize) -> Vec<NodeSpec> {
        let node = |i: usize| {
            let spec = NodeSpec::new(format!("n{i:02}"));
            if zones == 0 {
                spec
            } else {
                spec.in_zone(format!("z{}", i % zones))
            }
        };
        (0..count).map(node).collect()
    }

    fn all_partitions(layout: &Layout) -> impl Iterator<Item = PartitionId> {
        (0..layout.partitions()).map(|p| p as PartitionId)
    }

    /// A layout of `k` equal nodes grown the way clusters grow: an initial
    /// layout of `start` nodes, then one join at a time.
    fn grown(q: u32, start: usize, k: usize) -> Layout {
        let all = nodes(k, 0);
        let mut layout = Layout::initial(q, all[..start].to_vec()).expect("valid");
        for size in start + 1..=k {
            layout = layout.with_nodes(all[..size].to_vec()).expect("valid");
        }
        layout
    }

    /// The layout after one more node joins, and the replicas that moves
    /// over the ideal `n * Q / k`.
    fn join(old: &Layout) -> (f64, Layout) {
        let k = old.nodes().len() + 1;
        let new = old.with_nodes(nodes(k, 0)).expect("valid");
        let moved = old.moved_replicas(&new, N).expect("same Q");
        let ideal = N as f64 * f64::from(old.partitions()) / k as f64;
        (moved as f64 / ideal, new)
    }

    /// The layout after node `gone` leaves, and the replicas that moves over
    /// the replicas the node held.
    fn leave(old: &Layout, gone: usize) -> (f64, Layout) {
        let mut rest = old.nodes().to_vec();
        rest.remove(gone);
        let new = old.with_nodes(rest).expect("valid");
        let gone = NodeIndex::try_from(gone).expect("small");
        let held = all_partitions(old)
            .filter(|&p| {
                let list = old.preference_list(p, N).expect("in range");
                list.primaries.contains(&gone)
            })
            .count();
        let moved = old.moved_replicas(&new, N).expect("same Q");
        (moved as f64 / held as f64, new)
    }

    #[test]
    fn more_replicas_than_nodes_takes_every_node() {
        let layout = Layout::initial(16, nodes(2, 0)).expect("valid");
        let list = layout.preference_list(5, 3).expect("in range");
        assert_eq!(list.primaries.len(), 2);
        assert!(list.fallbacks.is_empty());
    }

    #[test]
    fn bad_partitions_are_errors() {
        let layout = Layout::initial(16, nodes(3, 0)).expect("valid");
        assert_eq!(
            layout.preference_list(16, 3),
            Err(LayoutError::PartitionOutOfRange {
                partition: 16,
                partitions: 16
            })
        );
        let other = Layout::initial(32, nodes(3, 0)).expect("valid");
        assert_eq!(
            layout.diff(&other),
            Err(LayoutError::PartitionCountMismatch {
                left: 16,
                right: 32
            })
        );
        assert!(layout.moved_replicas(&other, 3).is_err());
    }

    #[test]
    fn same_zone_nodes_come_last() {
        // a and b share zone x, c is alone in y: b is primary only after c.
        let specs = vec![
            NodeSpec::new("a").in_zone("x"),
            NodeSpec::new("b").in_zone("x"),
            NodeSpec::new("c").in_zone("y"),
        ];
        let layout = Layout::initial(64, specs).expect("valid");
        for p in all_partitions(&layout) {
            let list = layout.preference_list(p, 2).expect("in range");
            let zones: Vec<_> = list.primaries.iter().map(|&i| layout.zone_of(i)).collect();
            assert_ne!(zones[0], zones[1], "partition {p}: {list:?}");
            assert_eq!(list.fallbacks.len(), 1);
        }
    }

    #[test]
    fn idle_nodes_are_fallbacks() {
        // Two partitions, four nodes: two own nothing but still serve hints.
        let layout = Layout::initial(2, nodes(4, 0)).expect("valid");
        let list = layout.preference_list(0, 2).expect("in range");
        assert_eq!(list.primaries.len() + list.fallbacks.len(), 4);
    }

    /// Grows a cluster one node at a time to 12 and shrinks it again; prints
    /// the worst replica-movement ratio (`cargo test -- --nocapture`).
    #[test]
    fn growth_and_shrink_move_few_replicas() {
        let mut worst = 0.0f64;
        for q in [64u32, 256, 1024] {
            let mut layout = grown(q, 1, 1);
            while layout.nodes().len() < 12 {
                let (ratio, next) = join(&layout);
                worst = worst.max(ratio);
                assert!(
                    ratio <= LIMIT,
                    "q {q} join to {:?}: {ratio:.3}",
                    next.nodes().len()
                );
                layout = next;
            }
            for gone in [5, 0, 7, 2, 3, 1, 4, 0] {
                let (ratio, next) = leave(&layout, gone);
                worst = worst.max(ratio);
                assert!(ratio <= LIMIT, "q {q} leave {gone}: {ratio:.3}");
                layout = next;
            }
        }
        println!("worst replica movement ratio over growth and shrink: {worst:.3}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn primaries_are_distinct_nodes_and_zones(count in 1usize..=12, zones in 0usize..=6, bits in prop::sample::select(vec![6u32, 8, 10]), seed in any::<u16>()) {
            let zones = zones.min(count);
            let layout = Layout::initial(1 << bits, nodes(count, zones)).expect("valid");
            let zone_total = if zones == 0 { count } else { zones };
            for n in 1..=count.min(5) {
                for p in all_partitions(&layout).filter(|p| (p ^ seed) % 7 == 0) {
                    let list = layout.preference_list(p, n).expect("in range");
                    let mut primaries = list.primaries.clone();
                    primaries.sort_unstable();
                    primaries.dedup();
                    prop_assert_eq!(primaries.len(), n);
                    let mut zone_ids: Vec<_> = primaries.iter().map(|&i| layout.zone_of(i)).collect();
                    zone_ids.sort_unstable();
                    zone_ids.dedup();
                    prop_assert_eq!(zone_ids.len(), n.min(zone_total), "{:?}", list);
                    let mut everyone: Vec<_> = list.primaries.iter().chain(&list.fallbacks).copied().collect();
                    everyone.sort_unstable();
                    prop_assert_eq!(everyone, (0..count as NodeIndex).collect::<Vec<_>>());
                }
            }
        }

        /// Adding the k-th node moves at most 1.1 x n*Q/k replicas (n = 3).
        #[test]
        fn a_join_moves_few_replicas(k in 2usize..=12, start in 1usize..=12, bits in prop::sample::select(vec![6u32, 8, 10])) {
            let old = grown(1 << bits, start.min(k - 1), k - 1);
            let (ratio, _) = join(&old);
            prop_assert!(ratio <= LIMIT, "join of node {k}: {ratio:.3}");
        }

        /// Removing a node moves at most 1.1 x the replicas it held (n = 3).
        #[test]
        fn a_leave_moves_few_replicas(k in 2usize..=12, start in 1usize..=12, gone in 0usize..12, bits in prop::sample::select(vec![6u32, 8, 10])) {
            let old = grown(1 << bits, start.min(k), k);
            let (ratio, _) = leave(&old, gone % k);
            prop_assert!(ratio <= LIMIT, "leave of node {gone} of {k}: {ratio:.3}");
        }
    }
}
