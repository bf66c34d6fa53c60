//! Property tests of the layout laws across joins and leaves, with and
//! without zones and with equal and unequal capacities.
//!
//! Two yardsticks for the replicas a change copies (counted in (partition,
//! node) pairs among the `n = 3` primaries):
//! - the **formula**, a lower bound from counts alone: every node must end
//!   at or above its new floor, and every replica a leaving node held or a
//!   node above its new ceiling must drop is re-created somewhere, so
//!   `formula = max(sum of max(0, floor - old count), vacated + sum of
//!   max(0, old count - ceiling))` (less the replicas a shrinking set
//!   sheds below `n` nodes);
//! - the **optimum**, the fewest copies any layout obeying the balance and
//!   zone laws needs from the old layout, computed by the claim's flow and
//!   certified by its duals (`Layout::minimum_copies`). It is at least the
//!   formula and can exceed it: which partitions a node shares with which
//!   others (and, with zones, which zones a set already covers) can force
//!   hand-over chains no count-based bound sees.
//!
//! The 1.1x bound of the issue is checked against the optimum everywhere,
//! and against the formula where the formula is attainable (equal
//! capacities without zones). [`unavoidable`] shows where it is not: from
//! replica counts alone, a floor under the worst leave of any layout.

use proptest::prelude::*;

use super::layout::zone_ids;
use super::{Layout, NodeSpec, PartitionId};

const N: usize = 3;

/// The bound the issue asks for.
const LIMIT: f64 = 1.1;

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
    bounds_of(layout.partitions(), layout.nodes())
}

/// Each node's floor and ceiling in a layout of `nodes` with `q` partitions.
fn bounds_of(q: u32, nodes: &[NodeSpec]) -> Vec<(u32, u32)> {
    super::layout::replica_bounds_of(q, N as u8, nodes)
}

fn assert_balanced(layout: &Layout) -> Result<(), TestCaseError> {
    assert_sets_spread(layout)?;
    let counts = held(layout);
    for (i, &(floor, ceiling)) in bounds(layout).iter().enumerate() {
        prop_assert!(
            (floor..=ceiling).contains(&counts[i]),
            "{} holds {} replicas, bounds {floor}..={ceiling}; all {counts:?}",
            layout.nodes()[i].name,
            counts[i]
        );
    }
    assert_prefixes_balanced(layout, &counts)
}

/// Every replica set holds distinct nodes in as many distinct zones as it
/// can (a zone-less node is a zone of its own), in every layout a change
/// produces, not only the first.
fn assert_sets_spread(layout: &Layout) -> Result<(), TestCaseError> {
    let (zones, zone_count) = zone_ids(layout.nodes());
    for p in 0..layout.partitions() as usize {
        let set = layout.replica_set(p);
        let mut nodes: Vec<_> = set.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        prop_assert_eq!(
            nodes.len(),
            set.len(),
            "partition {} repeats a node: {:?}",
            p,
            set
        );
        let mut in_zones: Vec<u32> = set.iter().map(|&n| zones[usize::from(n)]).collect();
        in_zones.sort_unstable();
        in_zones.dedup();
        prop_assert_eq!(
            in_zones.len(),
            set.len().min(zone_count),
            "partition {} spans too few zones: {:?}",
            p,
            set
        );
    }
    Ok(())
}

/// Without zone constraints (no zones, one zone, or every node a zone of
/// its own), the first `j` members of the sets (the primaries of a
/// keyspace with `n = j`) hold each node's share of its replicas, `j / N`
/// of them, within `j`.
fn assert_prefixes_balanced(layout: &Layout, counts: &[u32]) -> Result<(), TestCaseError> {
    let (_, zone_count) = zone_ids(layout.nodes());
    let nodes = layout.nodes().len();
    if (1 < zone_count && zone_count < nodes) || nodes < N {
        return Ok(());
    }
    for j in 1..N {
        let mut prefix = vec![0u32; counts.len()];
        for p in 0..layout.partitions() as usize {
            for &n in &layout.replica_set(p)[..j] {
                prefix[usize::from(n)] += 1;
            }
        }
        for (i, (&got, &total)) in prefix.iter().zip(counts).enumerate() {
            let share = f64::from(total) * j as f64 / N as f64;
            prop_assert!(
                (f64::from(got) - share).abs() <= j as f64,
                "{} is in the first {j} members {got} times, share {share:.1}; all {prefix:?}",
                layout.nodes()[i].name
            );
        }
    }
    Ok(())
}

/// The count-based lower bound on the copies from `old` to `new`.
fn formula(old: &Layout, new: &Layout) -> u32 {
    formula_for(old, new.nodes())
}

/// [`formula`] for a change of `old` to the (sorted, validated) `nodes`.
fn formula_for(old: &Layout, nodes: &[NodeSpec]) -> u32 {
    let old_held = held(old);
    let new_bounds = bounds_of(old.partitions(), nodes);
    let (mut gains, mut losses) = (0u32, 0u32);
    for (j, node) in nodes.iter().enumerate() {
        let before = old
            .index_of(&node.name)
            .map_or(0, |i| old_held[usize::from(i)]);
        let (floor, ceiling) = new_bounds[j];
        gains += floor.saturating_sub(before);
        losses += before.saturating_sub(ceiling);
    }
    let vacated: u32 = old
        .nodes()
        .iter()
        .zip(&old_held)
        .filter(|(node, _)| !nodes.iter().any(|n| n.name == node.name))
        .map(|(_, &h)| h)
        .sum();
    // NOTE: below `N` nodes a set shrinks with the cluster, and the
    // replicas it sheds need no new copy.
    let set_size = |layout: &Layout| N.min(layout.nodes().len()) as u32;
    let new_size = N.min(nodes.len()) as u32;
    let shed = set_size(old).saturating_sub(new_size) * old.partitions();
    gains.max((losses + vacated).saturating_sub(shed))
}

/// A lower bound, from the replica counts of `layout` alone, on the worst
/// ratio over the formula among the leaves of its nodes: no layout with
/// these counts (so no balanced layout of these nodes) does better for
/// every leaver. `None` when a leave shrinks the sets.
///
/// Why: when `x` leaves (`r` unchanged), the copies are the `held(x)`
/// vacated places plus one per survivor the new layout drops. Survivor `n`
/// must gain `need_n(x) = floor' - held` replicas, and enters a set without
/// dropping anyone only if `x` was in it and `n` was not (with distinct
/// zones: `n`'s zone was not), so `copies(x) >= held(x) + sum_n max(0,
/// need_n(x) - |L_n & P_x|)`, `L_n` the sets lacking `n` and `P_x` those
/// holding `x`. That alone is never above the formula: the old layout may
/// have put `x` exactly where each grower needs it. But for a group `G` of
/// leavers, `sum over x in G of |L_n & P_x| <= m * |L_n|`, `m` the most
/// members of `G` a set can hold, and `|L_n| = Q - held(n)` whatever the
/// structure: the sets lacking `n` cannot all hold every leaver. The worst
/// ratio in `G` is at least the ratio of the sums. Every group is tried.
fn unavoidable(layout: &Layout) -> Option<f64> {
    let counts = LeaveCounts::new(layout)?;
    let k = counts.held.len();
    let mut best = 1.0f64;
    for mask in 1u32..(1 << k) {
        let group: Vec<usize> = (0..k).filter(|&x| mask >> x & 1 == 1).collect();
        let formula: i64 = group.iter().map(|&x| counts.formula[x]).sum();
        if formula == 0 {
            continue;
        }
        let vacated: i64 = group.iter().map(|&x| counts.held[x]).sum();
        let drops = counts
            .node_drops(&group)
            .max(counts.zone_drops(&group))
            .max(counts.surplus_drops(&group));
        best = best.max(formula.max(vacated + drops) as f64 / formula as f64);
    }
    Some(best)
}

/// What [`unavoidable`] needs to know about each possible leave.
struct LeaveCounts {
    q: i64,
    held: Vec<i64>,
    zones: Vec<u32>,
    zone_count: usize,
    /// `need[x][n]`: what survivor `n` must gain when `x` leaves.
    need: Vec<Vec<i64>>,
    /// `zone_most[x][z]`: the most zone `z` may hold once `x` leaves.
    zone_most: Vec<Vec<i64>>,
    /// `formula[x]`: the formula for the leave of `x`.
    formula: Vec<i64>,
    /// Whether zones stay distinct in every set once `x` leaves.
    distinct_after: Vec<bool>,
}

impl LeaveCounts {
    fn new(layout: &Layout) -> Option<Self> {
        let k = layout.nodes().len();
        if k <= N {
            return None;
        }
        let held: Vec<i64> = held(layout).iter().map(|&h| i64::from(h)).collect();
        let (zones, zone_count) = zone_ids(layout.nodes());
        let mut counts = Self {
            q: i64::from(layout.partitions()),
            need: vec![vec![0; k]; k],
            zone_most: vec![vec![0; zone_count]; k],
            formula: vec![0; k],
            distinct_after: vec![false; k],
            held,
            zones,
            zone_count,
        };
        for x in 0..k {
            let mut rest = layout.nodes().to_vec();
            rest.remove(x);
            let new_bounds = bounds_of(layout.partitions(), &rest);
            for (j, n) in (0..k).filter(|&n| n != x).enumerate() {
                let (floor, ceiling) = new_bounds[j];
                counts.need[x][n] = (i64::from(floor) - counts.held[n]).max(0);
                counts.zone_most[x][counts.zones[n] as usize] += i64::from(ceiling);
            }
            counts.formula[x] = i64::from(formula_for(layout, &rest));
            counts.distinct_after[x] = zone_count >= N && zone_ids(&rest).1 >= N;
        }
        Some(counts)
    }

    /// How many members of `group` one set can hold.
    fn per_set(&self, group: &[usize]) -> i64 {
        let mut spanned: Vec<u32> = group.iter().map(|&x| self.zones[x]).collect();
        spanned.sort_unstable();
        spanned.dedup();
        let distinct = self.zone_count >= N;
        let m = if distinct { spanned.len() } else { group.len() };
        m.min(N) as i64
    }

    /// Drops forced, summed over `group`, by each node's growth.
    fn node_drops(&self, group: &[usize]) -> i64 {
        let nodes = 0..self.held.len();
        let forced = nodes.map(|n| {
            let others: Vec<usize> = group.iter().copied().filter(|&x| x != n).collect();
            let wanted: i64 = others.iter().map(|&x| self.need[x][n]).sum();
            (wanted - self.per_set(&others) * (self.q - self.held[n])).max(0)
        });
        forced.sum()
    }

    /// The same per zone, with distinct zones: a set takes a member of
    /// zone `z` only where it lacks `z` (leavers outside `z` whose leave
    /// keeps zones distinct).
    fn zone_drops(&self, group: &[usize]) -> i64 {
        if self.zone_count < N {
            return 0;
        }
        let forced = (0..self.zone_count as u32).map(|z| {
            let members: Vec<usize> = self.members(z).collect();
            let zone_held: i64 = members.iter().map(|&n| self.held[n]).sum();
            let others: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&x| self.zones[x] != z && self.distinct_after[x])
                .collect();
            let wanted: i64 = others
                .iter()
                .map(|&x| members.iter().map(|&n| self.need[x][n]).sum::<i64>())
                .sum();
            (wanted - self.per_set(&others) * (self.q - zone_held)).max(0)
        });
        forced.sum()
    }

    /// With two zones and `r = 3` every set holds one or two members of
    /// zone `z`, `H_z - Q` sets two. Once `x` of `z` leaves (`z` keeping a
    /// node), at most `T'_z - Q` sets may hold two, so the others that kept
    /// two survivors drop one: `H_z - T'_z - |M_z & P_x|` drops, `M_z` the
    /// sets holding two, each of which holds two members of `z`.
    fn surplus_drops(&self, group: &[usize]) -> i64 {
        if self.zone_count != 2 || N != 3 {
            return 0;
        }
        let forced = (0..2u32).map(|z| {
            let leavers: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&x| self.zones[x] == z && self.members(z).count() > 1)
                .collect();
            let zone_held: i64 = self.members(z).map(|n| self.held[n]).sum();
            let over: i64 = leavers
                .iter()
                .map(|&x| zone_held - self.zone_most[x][z as usize])
                .sum();
            (over - leavers.len().min(2) as i64 * (zone_held - self.q)).max(0)
        });
        forced.sum()
    }

    fn members(&self, zone: u32) -> impl Iterator<Item = usize> + '_ {
        (0..self.held.len()).filter(move |&n| self.zones[n] == zone)
    }
}

/// Copies made, over the formula and over the certified optimum.
fn ratios(old: &Layout, new: &Layout) -> (f64, f64) {
    let moved = old.moved_replicas(new, N).expect("same Q");
    let optimum = old.minimum_copies(new.nodes().to_vec());
    let formula = formula(old, new) as usize;
    assert!(
        formula <= optimum,
        "the formula is a lower bound: {formula} > {optimum}"
    );
    let over = |ideal: usize| match (moved, ideal) {
        (0, _) => 1.0,
        (_, 0) => f64::INFINITY,
        _ => moved as f64 / ideal as f64,
    };
    (over(formula), over(optimum))
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

    /// Adding the k-th node copies at most 1.1x the optimum (n = 3), and
    /// at most 1.1x the formula without zones, whatever the capacities.
    #[test]
    fn a_join_moves_at_most_1_1x_ideal(k in 2usize..=12, zones in 0usize..=4, unequal in any::<bool>(), seed in any::<u64>(), bits in prop::sample::select(vec![6u32, 8, 10])) {
        let nodes = cluster(&capacities(unequal, k, seed), zones);
        let old = grown(1 << bits, &nodes[..k - 1])?;
        let new = old.with_nodes(nodes).expect("valid");
        let (by_formula, by_optimum) = ratios(&old, &new);
        // NOTE: the optimum comes from the same flow as the claim, so this
        // is a consistency check (the layout copies exactly what the
        // certified minimum says), not an independent bound.
        prop_assert!(by_optimum == 1.0, "join of node {k}: {by_optimum:.3} of the optimum");
        if zones <= 1 {
            prop_assert!(by_formula <= LIMIT, "join of node {k}: {by_formula:.3} of the formula");
        }
    }

    /// Removing a node copies at most 1.1x the optimum (n = 3), and at most
    /// 1.1x the formula with equal capacities and no zones. (With unequal
    /// capacities a leave can exceed the count formula while matching the
    /// optimum: 1.108x for 7 nodes of capacities 1-4 at Q = 64, found by
    /// this test with 400 cases; docs/design/ring.md.)
    #[test]
    fn a_leave_moves_at_most_1_1x_ideal(k in 2usize..=12, gone in 0usize..12, zones in 0usize..=4, unequal in any::<bool>(), seed in any::<u64>(), bits in prop::sample::select(vec![6u32, 8, 10])) {
        let old = grown(1 << bits, &cluster(&capacities(unequal, k, seed), zones))?;
        let mut rest = old.nodes().to_vec();
        rest.remove(gone % k);
        let new = old.with_nodes(rest).expect("valid");
        let (by_formula, by_optimum) = ratios(&old, &new);
        prop_assert!(by_optimum == 1.0, "leave of node {gone} of {k}: {by_optimum:.3} of the optimum");
        if !unequal && zones <= 1 {
            prop_assert!(by_formula <= LIMIT, "leave of node {gone} of {k}: {by_formula:.3} of the formula");
        }
    }
}

/// Grows clusters to 12 nodes and shrinks them again for every zone count
/// and both capacity mixes, checking balance at each step; prints the worst
/// ratios over the formula and over the optimum
/// (`cargo test --lib ring::movement_tests -- --nocapture`).
#[test]
fn worst_movement_ratios() {
    for zones in 0..=4usize {
        for unequal in [false, true] {
            let (mut worst_join, mut worst_leave) = ((0.0f64, 0.0f64), (0.0f64, 0.0f64));
            let worst = |w: &mut (f64, f64), r: (f64, f64)| *w = (w.0.max(r.0), w.1.max(r.1));
            for q in [64u32, 256, 1024] {
                let nodes = cluster(&capacities(unequal, 12, 0x9e37_79b9_7f4a_7c15), zones);
                let mut layout = Layout::initial(q, nodes[..1].to_vec()).expect("valid");
                for size in 2..=12 {
                    let next = layout.with_nodes(nodes[..size].to_vec()).expect("valid");
                    assert_balanced(&next).expect("balanced");
                    worst(&mut worst_join, ratios(&layout, &next));
                    layout = next;
                }
                for gone in [5usize, 0, 7, 2, 3, 1, 4, 0] {
                    let mut rest = layout.nodes().to_vec();
                    rest.remove(gone);
                    let next = layout.with_nodes(rest).expect("valid");
                    assert_balanced(&next).expect("balanced");
                    worst(&mut worst_leave, ratios(&layout, &next));
                    layout = next;
                }
            }
            println!(
                "zones {zones} unequal {unequal}: join {:.3} (optimum {:.3}), leave {:.3} (optimum {:.3})",
                worst_join.0, worst_join.1, worst_leave.0, worst_leave.1
            );
            assert!(worst_join.1 <= LIMIT, "zones {zones}: join {worst_join:?}");
            assert!(
                worst_leave.1 <= LIMIT,
                "zones {zones}: leave {worst_leave:?}"
            );
            if !unequal && zones <= 1 {
                assert!(worst_join.0 <= LIMIT && worst_leave.0 <= LIMIT);
            }
        }
    }
}

/// Leaves whose worst case no layout can bring within 1.1x of the formula:
/// with zones, equal capacities. Seven nodes in four zones (three pairs and
/// a single): once a node of a pair leaves, the other two pairs' zones must
/// be in every set, and each set lacking one of them holds just one node of
/// the leaver's pair, so the worst of the two leaves copies at least ~1.33x
/// the formula whatever the layout. Seven nodes in two zones (four and
/// three) hit the same wall through the sets holding two nodes of a zone.
#[test]
fn zones_can_put_the_formula_out_of_reach() {
    for (zones, bits, at_least) in [(4usize, 8u32, 1.3f64), (2, 6, 1.2)] {
        let layout = grown(1 << bits, &cluster(&[1; 7], zones)).expect("balanced");
        let bound = unavoidable(&layout).expect("leaves keep r");
        let worst = (0..7)
            .map(|gone| {
                let mut rest = layout.nodes().to_vec();
                rest.remove(gone);
                ratios(&layout, &layout.with_nodes(rest).expect("valid")).0
            })
            .fold(0.0f64, f64::max);
        println!(
            "zones {zones}, Q = {}: worst leave {worst:.3}, unavoidable {bound:.3}",
            1 << bits
        );
        assert!(bound >= at_least, "zones {zones}: bound {bound:.3}");
        assert!(worst >= bound - 1e-9, "the bound holds for this layout too");
    }
}

/// The grid behind docs/design/ring.md: every join and every leave of
/// clusters grown to 2..=12 nodes, 0..=4 zones, equal capacities and 4
/// capacity seeds, `Q = 2^b` for `b` in `RING_GRID_BITS` (default
/// `6,8,10`; about 5 minutes in debug). Prints the worst ratios over the
/// formula and the worst [`unavoidable`] bound, and checks that bound
/// against every layout
/// (`cargo test --lib ring::movement_tests::movement_grid -- --ignored --nocapture`).
#[test]
#[ignore]
fn movement_grid() {
    let bits: Vec<u32> = std::env::var("RING_GRID_BITS")
        .unwrap_or_else(|_| "6,8,10".into())
        .split(',')
        .map(|b| b.trim().parse().expect("RING_GRID_BITS lists exponents"))
        .collect();
    let seeds = [
        0x9e37_79b9_7f4a_7c15u64,
        0x1234_5678_9abc_def1,
        0xdead_beef_cafe_f00d,
        0x0f0f_3c3c_a5a5_9669,
    ];
    for zones in 0..=4usize {
        for unequal in [false, true] {
            // Equal capacities ignore the seed.
            let seeds = if unequal { &seeds[..] } else { &seeds[..1] };
            let mut worst = GridWorst::default();
            for &seed in seeds {
                for &b in &bits {
                    let nodes = cluster(&capacities(unequal, 12, seed), zones);
                    grid_run(1 << b, &nodes, &mut worst);
                }
            }
            println!(
                "zones {zones} unequal {unequal}: join {:.3}, leave {:.3} (unavoidable {:.3})",
                worst.join, worst.leave, worst.unavoidable
            );
        }
    }
}

#[derive(Default)]
struct GridWorst {
    join: f64,
    leave: f64,
    unavoidable: f64,
}

/// Grows `nodes` one join at a time and tries every leave on the way.
fn grid_run(q: u32, nodes: &[NodeSpec], worst: &mut GridWorst) {
    let mut layout = Layout::initial(q, nodes[..1].to_vec()).expect("valid");
    for size in 2..=nodes.len() {
        let next = layout.with_nodes(nodes[..size].to_vec()).expect("valid");
        worst.join = worst.join.max(ratios(&layout, &next).0);
        layout = next;
        let mut leaves = 0.0f64;
        for gone in 0..size {
            let mut rest = layout.nodes().to_vec();
            rest.remove(gone);
            let after = layout.with_nodes(rest).expect("valid");
            leaves = leaves.max(ratios(&layout, &after).0);
        }
        let bound = unavoidable(&layout).unwrap_or(1.0);
        assert!(
            leaves >= bound - 1e-9,
            "bound {bound} above measured {leaves}"
        );
        worst.leave = worst.leave.max(leaves);
        worst.unavoidable = worst.unavoidable.max(bound);
    }
}

/// Time and size of a layout at scale (`cargo test --release --lib
/// ring::movement_tests::claim_at_scale -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement: run in release"]
fn claim_at_scale() {
    for (q, nodes) in [
        (1024u32, 64usize),
        (4096, 256),
        (65536, 16),
        (16384, 64),
        (1024, 1024),
    ] {
        let specs = cluster(&vec![1; nodes], 0);
        let started = std::time::Instant::now();
        let layout = Layout::initial(q, specs.clone()).expect("valid");
        let first = started.elapsed();
        let mut fewer = specs;
        fewer.remove(nodes / 2);
        let started = std::time::Instant::now();
        let next = layout.with_nodes(fewer).expect("valid");
        println!(
            "Q {q} nodes {nodes}: initial {first:?}, one leave {:?} (version {})",
            started.elapsed(),
            next.version()
        );
    }
}
