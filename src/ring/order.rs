//! Order: the slot order inside every replica set.
//!
//! The claim (`claim.rs`) decides which nodes hold a partition; this decides
//! in which order they are listed. The order matters because a keyspace
//! with `n` below the spread uses the first `n` members as its primaries
//! (and the first is the owner), so every prefix must be balanced too, not
//! only the whole sets: a layout that always lists its members by node
//! index would make the first node the owner of everything.
//!
//! Slots are filled one at a time, `0..r-1` (the last is what is left),
//! each by one minimum-cost flow (`flow.rs`):
//!
//! ```text
//! source -> partition p     capacity 1
//! p -> member n             capacity 1; cost 0 if n was among p's first
//!                           j+1 members before, else 1
//! n -> sink                 capacity floor(n's share), cost 0
//! n -> sink                 capacity 1 if the share is fractional, EXTRA
//! n -> sink                 capacity Q, cost OVER (only if it must)
//! ```
//!
//! A node's share of each slot is what it still has to place divided by the
//! slots left, so a node that holds `c` replicas is first in about `c / r`
//! sets, within the first two in about `2c / r`, and so on. While a set
//! still has zones not listed, slot `j` only takes a member of a new zone,
//! so any prefix has as many distinct zones as it can. The cost keeps every
//! prefix's members where they were (a keyspace with a smaller `n` moves
//! as little as the sets do); the overflow edge keeps a slot feasible when
//! zones force a node past its share (one node alone in its zone is in
//! every set, ahead of the spare members).

use super::claim::{scatter, to_index};
use super::flow::{Graph, capacity};
use super::layout::NodeIndex;

/// Cost of placing a node once past the floor of its share of a slot
/// (every partition saves at most one move, so balance comes first).
const EXTRA: i64 = 1 << 20;

/// Cost of placing a node past the ceiling of its share: more than any
/// other choice, so the share is exceeded only when zones force it.
const OVER: i64 = 1 << 40;

/// `sets[p]` (unordered members) listed in slot order. `previous[p]` is the
/// old order of partition `p`'s surviving members (empty for a new layout);
/// `zones[n]` is node `n`'s zone.
pub(super) fn order(
    zones: &[u32],
    previous: &[Vec<NodeIndex>],
    sets: Vec<Vec<usize>>,
) -> Vec<Vec<NodeIndex>> {
    let nodes = zones.len();
    let mut left = vec![0u64; nodes];
    for set in &sets {
        for &n in set {
            left[n] += 1;
        }
    }
    let r = sets.first().map_or(0, Vec::len);
    let mut remaining = sets;
    let mut ordered: Vec<Vec<NodeIndex>> = vec![Vec::with_capacity(r); remaining.len()];
    for slot in 0..r {
        let slots_left = (r - slot) as u64;
        let picks = if slots_left == 1 {
            remaining.iter().map(|set| set[0]).collect()
        } else {
            fill_slot(zones, previous, &remaining, &ordered, &left, slots_left)
        };
        for (p, n) in picks.into_iter().enumerate() {
            remaining[p].retain(|&m| m != n);
            ordered[p].push(to_index(n));
            left[n] -= 1;
        }
    }
    ordered
}

/// The member of each partition for the next slot.
fn fill_slot(
    zones: &[u32],
    previous: &[Vec<NodeIndex>],
    remaining: &[Vec<usize>],
    ordered: &[Vec<NodeIndex>],
    left: &[u64],
    slots_left: u64,
) -> Vec<usize> {
    let slot = ordered.first().map_or(0, Vec::len);
    let q = remaining.len();
    let mut graph = Graph::new();
    let (source, sink) = (graph.vertex(), graph.vertex());
    let node_vertex: Vec<_> = (0..zones.len()).map(|_| graph.vertex()).collect();
    for (n, &v) in node_vertex.iter().enumerate() {
        let (floor, ceiling) = (left[n] / slots_left, left[n].div_ceil(slots_left));
        graph.edge(v, sink, capacity(floor as i64), 0);
        graph.edge(v, sink, capacity((ceiling - floor) as i64), EXTRA);
        graph.edge(v, sink, capacity(q as i64), OVER);
    }
    let mut choices = Vec::with_capacity(q);
    for p in 0..q {
        let vertex = graph.vertex();
        graph.edge(source, vertex, 1, 0);
        let listed_zones: Vec<u32> = ordered[p].iter().map(|&m| zones[usize::from(m)]).collect();
        let new_zone = |n: usize| !listed_zones.contains(&zones[n]);
        let any_new_zone = remaining[p].iter().any(|&n| new_zone(n));
        let mut candidates: Vec<usize> = remaining[p]
            .iter()
            .copied()
            .filter(|&n| !any_new_zone || new_zone(n))
            .collect();
        // NOTE: a fixed pseudo-random order per partition, so that equal
        // costs do not always favour the lowest node index.
        candidates.sort_by_key(|&n| (scatter(p, n), n));
        let was_early = |n: usize| {
            previous[p]
                .iter()
                .take(slot + 1)
                .any(|&m| usize::from(m) == n)
        };
        let edges: Vec<(usize, usize)> = candidates
            .into_iter()
            .map(|n| {
                let cost = i64::from(!was_early(n));
                (n, graph.edge(vertex, node_vertex[n], 1, cost))
            })
            .collect();
        choices.push(edges);
    }
    let placed = graph.min_cost_max_flow(source, sink);
    assert_eq!(placed, q as i64, "every partition has a member left");
    choices
        .iter()
        .map(|edges| {
            edges
                .iter()
                .find(|&&(_, e)| graph.flow(e) > 0)
                .map(|&(n, _)| n)
                .expect("a full flow places one member per partition")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How often each node is in each slot.
    fn slot_counts(ordered: &[Vec<NodeIndex>], nodes: usize) -> Vec<Vec<u64>> {
        let r = ordered[0].len();
        let mut counts = vec![vec![0u64; nodes]; r];
        for set in ordered {
            for (slot, &n) in set.iter().enumerate() {
                counts[slot][usize::from(n)] += 1;
            }
        }
        counts
    }

    #[test]
    fn every_slot_is_balanced_when_every_node_is_in_every_set() {
        let sets = vec![vec![0, 1, 2]; 64];
        let ordered = order(&[0, 1, 2], &vec![Vec::new(); 64], sets);
        for counts in slot_counts(&ordered, 3) {
            assert!(counts.iter().all(|&c| (21..=22).contains(&c)), "{counts:?}");
        }
    }

    #[test]
    fn kept_prefixes_stay_and_new_zones_come_first() {
        // Zones: node 0 alone in zone 0, nodes 1..=3 in zone 1.
        let zones = [0, 1, 1, 1];
        let sets: Vec<Vec<usize>> = (0..30)
            .map(|p| vec![0, 1 + p % 3, 1 + (p + 1) % 3])
            .collect();
        let first = order(&zones, &vec![Vec::new(); 30], sets.clone());
        for set in &first {
            let (a, b) = (zones[usize::from(set[0])], zones[usize::from(set[1])]);
            assert_ne!(a, b, "the first two members span both zones: {set:?}");
        }
        let again = order(&zones, &first, sets);
        assert_eq!(again, first, "an unchanged layout keeps its order");
    }
}
