//! Targets: how many partition replicas each node should hold.
//!
//! Every partition has `r` replicas on `r` distinct nodes, so a node holds at
//! most `Q` replicas. Zones add a second limit: with at least `r` zones the
//! replicas of a partition sit in `r` distinct zones, so a zone holds at most
//! `Q`; with fewer zones every partition has a replica in every zone, so a
//! zone holds at least `Q` and at most `Q * (r - zones + 1)`.
//!
//! The exact share of a node is the capacity-weighted water-fill under those
//! limits: `min(Q, lambda * capacity)`, with each zone's sum clamped to its
//! limits and `lambda` chosen so that the shares sum to `r * Q`; a clamped
//! zone splits its total the same way with a `lambda` of its own.
//! Invariant: the shares sum to `r * Q`, no node's exceeds `Q` and each
//! zone's stays within its limits, so some layout gives every node the floor
//! or the ceiling of its share.

/// Shares within this of an integer count as that integer.
const EPSILON: f64 = 1e-6;

/// Bisection steps; far more than f64 precision needs, and deterministic.
const STEPS: usize = 200;

/// What the targets depend on.
pub(super) struct Demand<'a> {
    /// `Q`.
    pub partitions: u64,
    /// Replicas per partition, `min(spread, nodes)`.
    pub replicas: usize,
    /// Weight per node, each at least 1.
    pub capacities: &'a [u32],
    /// Zone id per node, below `zone_count`.
    pub zones: &'a [u32],
    /// Number of distinct zone ids.
    pub zone_count: usize,
}

impl Demand<'_> {
    /// The least and most replicas zone `z` may hold, as integers.
    fn zone_limits(&self) -> (u64, u64) {
        let (q, r, z) = (
            self.partitions,
            self.replicas as u64,
            self.zone_count as u64,
        );
        if z >= r { (0, q) } else { (q, q * (r - z + 1)) }
    }

    fn members(&self, zone: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.zones.len()).filter(move |&i| self.zones[i] as usize == zone)
    }

    /// `sum over nodes of min(Q, lambda * capacity)` for the nodes `of`.
    fn filled(&self, lambda: f64, of: impl Iterator<Item = usize>) -> f64 {
        let q = self.partitions as f64;
        of.map(|i| (lambda * f64::from(self.capacities[i])).min(q))
            .sum()
    }

    /// The `lambda` at which `sum(lambda)` reaches `goal` (`sum` grows with
    /// `lambda` and reaches every node's cap by `Q / min capacity`).
    fn solve(&self, goal: f64, sum: impl Fn(f64) -> f64) -> f64 {
        let min_cap = self.capacities.iter().copied().min().unwrap_or(1).max(1);
        let (mut lo, mut hi) = (0.0f64, self.partitions as f64 / f64::from(min_cap));
        for _ in 0..STEPS {
            let mid = (lo + hi) / 2.0;
            if sum(mid) < goal { lo = mid } else { hi = mid }
        }
        hi
    }
}

/// The exact (real) replica share of every node.
pub(super) fn replica_shares(demand: &Demand<'_>) -> Vec<f64> {
    let (lo, hi) = demand.zone_limits();
    let (lo, hi) = (lo as f64, hi as f64);
    let total = (demand.partitions * demand.replicas as u64) as f64;
    let zone_total = |lambda: f64, z: usize| demand.filled(lambda, demand.members(z)).clamp(lo, hi);
    let all_zones = |lambda: f64| (0..demand.zone_count).map(|z| zone_total(lambda, z)).sum();
    let lambda = demand.solve(total, all_zones);
    let q = demand.partitions as f64;
    let mut shares = vec![0.0; demand.capacities.len()];
    for z in 0..demand.zone_count {
        let goal = zone_total(lambda, z);
        // NOTE: a zone held at one of its limits shares that total by a
        // lambda of its own; an unclamped zone uses the global one.
        let own = demand.solve(goal, |l| demand.filled(l, demand.members(z)));
        let unclamped = (demand.filled(lambda, demand.members(z)) - goal).abs() < EPSILON;
        let lambda_z = if unclamped { lambda } else { own };
        for i in demand.members(z) {
            shares[i] = (lambda_z * f64::from(demand.capacities[i])).min(q);
        }
    }
    shares
}

/// The least and most replicas each node may hold: the floor and the
/// ceiling of its exact share.
pub(super) fn replica_bounds(shares: &[f64]) -> Vec<(u32, u32)> {
    let bound = |x: f64| x.max(0.0) as u32;
    let bounds = shares.iter();
    bounds
        .map(|&s| (bound((s + EPSILON).floor()), bound((s - EPSILON).ceil())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand<'a>(replicas: usize, caps: &'a [u32], zones: &'a [u32]) -> Demand<'a> {
        let zone_count = zones.iter().max().map_or(0, |&z| z as usize + 1);
        Demand {
            partitions: 64,
            replicas,
            capacities: caps,
            zones,
            zone_count,
        }
    }

    fn rounded(d: &Demand<'_>) -> Vec<u32> {
        replica_shares(d).iter().map(|s| s.round() as u32).collect()
    }

    #[test]
    fn equal_nodes_share_equally() {
        let d = demand(3, &[1; 4], &[0, 1, 2, 3]);
        assert_eq!(rounded(&d), vec![48; 4]);
        assert_eq!(replica_bounds(&[48.0, 47.5]), vec![(48, 48), (47, 48)]);
    }

    #[test]
    fn a_node_holds_each_partition_at_most_once() {
        // Capacity 4 of 7 wants 110 of 192 replicas; it can hold only 64.
        let d = demand(3, &[4, 1, 1, 1], &[0, 1, 2, 3]);
        let shares = replica_shares(&d);
        assert_eq!(rounded(&d), vec![64, 43, 43, 43]);
        assert!((shares.iter().sum::<f64>() - 192.0).abs() < 1e-6);
    }

    #[test]
    fn a_big_zone_is_capped_and_its_nodes_split_the_cap() {
        // Zone 0 has half the capacity but may hold only one replica per
        // partition: 64 of 192, 32 per node; the other zones share 128.
        let d = demand(3, &[1; 4], &[0, 0, 1, 2]);
        assert_eq!(rounded(&d), vec![32, 32, 64, 64]);
    }

    #[test]
    fn with_fewer_zones_than_replicas_every_zone_holds_each_partition() {
        // Zone 1 is one small node but must hold a replica of everything.
        let d = demand(3, &[3, 3, 1], &[0, 0, 1]);
        assert_eq!(rounded(&d), vec![64, 64, 64]);
        let d = demand(3, &[2, 2, 2, 1], &[0, 0, 0, 1]);
        let shares = replica_shares(&d);
        assert!((shares[3] - 64.0).abs() < 1e-6, "{shares:?}");
        assert!(
            (shares.iter().sum::<f64>() - 192.0).abs() < 1e-6,
            "{shares:?}"
        );
    }
}
