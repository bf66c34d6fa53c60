//! Property tests of the layout laws across joins and leaves, with and
//! without zones and with equal and unequal capacities.
//!
//! The ideal for a change is the fewest replica copies any layout obeying
//! the balance law (each node holds the floor or the ceiling of its exact
//! share, `targets.rs`) and the zone law could make: every node must end at
//! or above its new floor, and every replica a leaving node held or a node
//! above its new ceiling must drop is re-created somewhere, so
//! `ideal = max(sum of max(0, floor - old count), vacated + sum of
//! max(0, old count - ceiling))`.

use proptest::prelude::*;

use super::layout::zone_ids;
use super::targets::{Demand, replica_bounds, replica_shares};
use super::{Layout, NodeSpec, PartitionId};

const N: usize = 3;

/// The bound the issue asks for.
const LIMIT: f64 = 1.1;

/// NOTE: a regression guard, not the goal: the worst ratio measured today
/// with zones (1.36, a leave with 2 zones and unequal capacities; 1.33 for
/// a join of a small node with 4 zones at Q = 64). The 1.1 holds
/// without zones (or with one) for joins and leaves; the `#[ignore]`d
/// properties below check it everywhere and fail today.
const CURRENT_LIMIT: f64 = 1.4;

fn spec(i: usize, capacity: u32, zones: usize) -> NodeSpec {
    let node = NodeSpec::new(format!("n{i:02}")).with_capacity(capacity);
    if zones == 0 {
        node
    } else {
        node.in_zone(format!("z{}", i % zones))
    }
}

fn cluster(caps: &[u32], zones: usize) -> Vec<NodeSpec> {
    caps.iter()
        .enumerate()
        .map(|(i, &c)| spec(i, c, zones))
        .collect()
}

/// Replicas held per node for `n = N`, through the preference lists.
fn held(layout: &Layout) -> Vec<u32> {
    let mut counts = vec![0u32; layout.nodes().len()];
    for p in 0..layout.partitions() {
        let list = layout
            .preference_list(p as PartitionId, N)
            .expect("in range");
        for &node in &list.primaries {
            counts[usize::from(node)] += 1;
        }
    }
    counts
}

fn bounds(layout: &Layout) -> Vec<(u32, u32)> {
    let (zones, zone_count) = zone_ids(layout.nodes());
    let capacities: Vec<u32> = layout.nodes().iter().map(|n| n.capacity).collect();
    let demand = Demand {
        partitions: u64::from(layout.partitions()),
        replicas: N.min(layout.nodes().len()),
        capacities: &capacities,
        zones: &zones,
        zone_count,
    };
    replica_bounds(&replica_shares(&demand))
}

fn assert_balanced(layout: &Layout) -> Result<(), TestCaseError> {
    let counts = held(layout);
    for (i, &(floor, ceiling)) in bounds(layout).iter().enumerate() {
        prop_assert!(
            (floor..=ceiling).contains(&counts[i]),
            "{} holds {} replicas, bounds {floor}..={ceiling}; all {counts:?}",
            layout.nodes()[i].name,
            counts[i]
        );
    }
    Ok(())
}

/// The fewest copies any balanced layout needs to go from `old` to `new`.
fn ideal(old: &Layout, new: &Layout) -> u32 {
    let old_held = held(old);
    let (mut gains, mut losses) = (0u32, 0u32);
    for (j, node) in new.nodes().iter().enumerate() {
        let before = old
            .index_of(&node.name)
            .map_or(0, |i| old_held[usize::from(i)]);
        let (floor, ceiling) = bounds(new)[j];
        gains += floor.saturating_sub(before);
        losses += before.saturating_sub(ceiling);
    }
    let vacated: u32 = old
        .nodes()
        .iter()
        .zip(&old_held)
        .filter(|(node, _)| new.index_of(&node.name).is_none())
        .map(|(_, &h)| h)
        .sum();
    gains.max(losses + vacated)
}

fn ratio(old: &Layout, new: &Layout) -> f64 {
    let moved = old.moved_replicas(new, N).expect("same Q");
    let ideal = ideal(old, new);
    if ideal == 0 {
        return if moved == 0 { 1.0 } else { f64::INFINITY };
    }
    moved as f64 / f64::from(ideal)
}

/// A layout of `nodes` grown the way clusters grow: one node, then one
/// join at a time; checks balance at every step.
fn grown(q: u32, nodes: &[NodeSpec]) -> Result<Layout, TestCaseError> {
    let mut layout = Layout::initial(q, nodes[..1].to_vec()).expect("valid");
    for size in 2..=nodes.len() {
        layout = layout.with_nodes(nodes[..size].to_vec()).expect("valid");
        assert_balanced(&layout)?;
    }
    Ok(layout)
}

fn capacities(unequal: bool, count: usize, seed: u64) -> Vec<u32> {
    let cap = |i: usize| 1 + ((seed >> (2 * i)) & 3) as u32;
    (0..count)
        .map(|i| if unequal { cap(i) } else { 1 })
        .collect()
}

/// The bound `worst_movement_ratios` holds today for a configuration.
fn current_limit(zones: usize) -> f64 {
    if zones <= 1 { LIMIT } else { CURRENT_LIMIT }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every layout on the way (joins, then one leave) is balanced, with
    /// and without zones, equal and unequal capacities.
    #[test]
    fn joins_and_leaves_stay_balanced(k in 2usize..=12, gone in 0usize..12, zones in 0usize..=4, unequal in any::<bool>(), seed in any::<u64>(), bits in prop::sample::select(vec![6u32, 8, 10])) {
        let old = grown(1 << bits, &cluster(&capacities(unequal, k, seed), zones))?;
        let mut rest = old.nodes().to_vec();
        rest.remove(gone % k);
        assert_balanced(&old.with_nodes(rest).expect("valid"))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Adding the k-th node copies at most 1.1x the ideal (n = 3).
    #[test]
    #[ignore = "issue 3 item 1 is open: up to 1.33x with zones (docs/design/ring.md)"]
    fn a_join_moves_at_most_1_1x_ideal(k in 2usize..=12, zones in 0usize..=4, unequal in any::<bool>(), seed in any::<u64>(), bits in prop::sample::select(vec![6u32, 8, 10])) {
        let nodes = cluster(&capacities(unequal, k, seed), zones);
        let old = grown(1 << bits, &nodes[..k - 1])?;
        let new = old.with_nodes(nodes).expect("valid");
        let r = ratio(&old, &new);
        prop_assert!(r <= LIMIT, "join of node {k}: {r:.3}");
    }

    /// Removing a node copies at most 1.1x the ideal (n = 3).
    #[test]
    #[ignore = "issue 3 item 1 is open: up to 1.36x with zones (docs/design/ring.md)"]
    fn a_leave_moves_at_most_1_1x_ideal(k in 2usize..=12, gone in 0usize..12, zones in 0usize..=4, unequal in any::<bool>(), seed in any::<u64>(), bits in prop::sample::select(vec![6u32, 8, 10])) {
        let old = grown(1 << bits, &cluster(&capacities(unequal, k, seed), zones))?;
        let mut rest = old.nodes().to_vec();
        rest.remove(gone % k);
        let new = old.with_nodes(rest).expect("valid");
        let r = ratio(&old, &new);
        prop_assert!(r <= LIMIT, "leave of node {gone} of {k}: {r:.3}");
    }
}

/// Grows clusters to 12 nodes and shrinks them again for every zone count
/// and both capacity mixes, checking balance at each step; prints the worst
/// ratios (`cargo test --lib ring::movement_tests -- --nocapture`).
#[test]
fn worst_movement_ratios() {
    for zones in 0..=4usize {
        for unequal in [false, true] {
            let (mut worst_join, mut worst_leave) = (0.0f64, 0.0f64);
            for q in [64u32, 256, 1024] {
                let nodes = cluster(&capacities(unequal, 12, 0x9e37_79b9_7f4a_7c15), zones);
                let mut layout = Layout::initial(q, nodes[..1].to_vec()).expect("valid");
                for size in 2..=12 {
                    let next = layout.with_nodes(nodes[..size].to_vec()).expect("valid");
                    assert_balanced(&next).expect("balanced");
                    worst_join = worst_join.max(ratio(&layout, &next));
                    layout = next;
                }
                for gone in [5usize, 0, 7, 2, 3, 1, 4, 0] {
                    let mut rest = layout.nodes().to_vec();
                    rest.remove(gone);
                    let next = layout.with_nodes(rest).expect("valid");
                    assert_balanced(&next).expect("balanced");
                    worst_leave = worst_leave.max(ratio(&layout, &next));
                    layout = next;
                }
            }
            println!(
                "zones {zones} unequal {unequal}: join {worst_join:.3} leave {worst_leave:.3}"
            );
            let limit = current_limit(zones);
            assert!(worst_join <= limit, "zones {zones}: join {worst_join:.3}");
            assert!(
                worst_leave <= limit,
                "zones {zones}: leave {worst_leave:.3}"
            );
        }
    }
}
