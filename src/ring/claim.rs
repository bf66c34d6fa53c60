//! Claim: the assignment of partitions to nodes behind a [`super::Layout`].
//!
//! Works on node indices only. Given each node's capacity and zone and the
//! previous owner of every partition (`None` for a new cluster or an owner
//! that left), it returns an owner for every partition such that:
//! - each node owns exactly its target, `floor` or `ceil` of its
//!   capacity-weighted share (the `ceil`s go first to nodes that already hold
//!   more than the `floor`, so they need not give anything up);
//! - a partition changes owner only if its owner left or is over target, so
//!   the number of moves is the minimum, orphans plus surpluses;
//! - where it can, no node and no zone owns two partitions less than
//!   `spread` apart, so preference lists are runs of consecutive owners.
//!
//! How: sweeps over the ring hand each open partition (orphaned, or owned by
//! a node over target) to the node under target that fits there and whose
//! zone, then itself, has the largest unmet fraction of its target (so zones
//! take turns around the ring). The first sweeps accept only clean fits (no
//! node or zone repeats within the window, and the lists reaching the
//! partition stop at `spread` nodes): the first releases only surplus
//! partitions whose owner repeats nearby (healing the spread that clusters
//! of `spread` nodes or fewer cannot have), the second paces releases and
//! gains evenly around the ring. Later sweeps relax zone, then node
//! distinctness, and the last takes the least-bad fit, so it always
//! finishes.

use std::cmp::Ordering;

use super::layout::NodeIndex;

/// What the claim needs to know about the nodes.
pub(super) struct ClaimInput<'a> {
    /// Weight per node, each at least 1.
    pub capacities: &'a [u32],
    /// Zone id per node, below `zone_count`.
    pub zones: &'a [u32],
    /// Number of distinct zone ids.
    pub zone_count: usize,
    /// The preference list length owners are spread for.
    pub spread: usize,
}

/// Owners for every partition; `previous[p]` is partition `p`'s owner in the
/// last layout (already renumbered to this node list) or `None`.
pub(super) fn claim(input: &ClaimInput<'_>, previous: Vec<Option<NodeIndex>>) -> Vec<NodeIndex> {
    let nodes = input.capacities.len();
    assert!(nodes > 0, "layouts validate that there is a node");
    let mut counts = vec![0u32; nodes];
    for owner in previous.iter().flatten() {
        counts[usize::from(*owner)] += 1;
    }
    let targets = targets(previous.len() as u64, input.capacities, &counts);
    let zone_sums = |values: &[u32]| {
        let mut sums = vec![0u64; input.zone_count];
        for (node, &value) in values.iter().enumerate() {
            sums[input.zones[node] as usize] += u64::from(value);
        }
        sums
    };
    let mut claim = Claim {
        zone_targets: zone_sums(&targets),
        zone_counts: zone_sums(&counts),
        owners: previous,
        counts,
        targets,
        zones: input.zones,
        node_window: input.spread.min(nodes),
        zone_window: input.spread.min(input.zone_count),
    };
    let sweeps = [
        (Level::Clean, Mode::Repair),
        (Level::Clean, Mode::Paced),
        (Level::Clean, Mode::Free),
        (Level::ZoneDistinct, Mode::Free),
        (Level::NodeDistinct, Mode::Free),
        (Level::Any, Mode::Free),
    ];
    for (level, mode) in sweeps {
        if claim.is_done() {
            break;
        }
        claim.sweep(level, mode);
    }
    assert!(claim.is_done(), "the last sweep fills every open partition");
    claim.owners.into_iter().flatten().collect()
}

/// Partitions per node: `floor(Q * capacity / total)`, plus one for as many
/// nodes as needed to sum to `Q`, chosen among nodes with a fractional share:
/// first those already above their floor (saves a move), then by the larger
/// fraction, then by index (name order).
pub(super) fn targets(partitions: u64, capacities: &[u32], current: &[u32]) -> Vec<u32> {
    let total: u64 = capacities.iter().map(|&c| u64::from(c)).sum();
    let exact = |i: usize| partitions * u64::from(capacities[i]);
    let mut targets: Vec<u32> = (0..capacities.len())
        .map(|i| (exact(i) / total) as u32)
        .collect();
    let given: u64 = targets.iter().map(|&t| u64::from(t)).sum();
    let extra = (partitions - given) as usize;
    let mut fractional: Vec<usize> = (0..capacities.len())
        .filter(|&i| exact(i) % total != 0)
        .collect();
    fractional.sort_by_key(|&i| {
        let above_floor = current.get(i).copied().unwrap_or(0) > targets[i];
        (!above_floor, std::cmp::Reverse(exact(i) % total), i)
    });
    for &i in fractional.iter().take(extra) {
        targets[i] += 1;
    }
    targets
}

/// How strict a sweep is about where a node may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// No repeats in the window and the lists reaching the spot stay short.
    Clean,
    /// No node and no zone repeats within the window.
    ZoneDistinct,
    /// No node repeats within the window.
    NodeDistinct,
    /// Anything; the least-bad fit wins.
    Any,
}

/// Which partitions of nodes over target a sweep releases. Orphans are
/// always open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Only those where the owner repeats within the window (fixes spread).
    Repair,
    /// Those, and each surplus node's partitions evenly around the ring.
    Paced,
    /// Any, first come first served.
    Free,
}

/// How bad it is to place a node at a partition; lower is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cost {
    node_repeats: u32,
    zone_repeats: u32,
    /// How many preference lists (of `spread` nodes) would include the node
    /// because of this partition; `spread` when the neighbourhood is clean.
    reach: u32,
}

struct Claim<'a> {
    /// Sum of targets per zone.
    zone_targets: Vec<u64>,
    /// Partitions owned per zone.
    zone_counts: Vec<u64>,
    owners: Vec<Option<NodeIndex>>,
    counts: Vec<u32>,
    targets: Vec<u32>,
    zones: &'a [u32],
    node_window: usize,
    zone_window: usize,
}

impl Claim<'_> {
    fn is_done(&self) -> bool {
        self.owners.iter().all(Option::is_some) && self.counts == self.targets
    }

    fn over_target(&self, node: NodeIndex) -> bool {
        let node = usize::from(node);
        self.counts[node] > self.targets[node]
    }

    fn fits(&self, cost: Cost, level: Level) -> bool {
        match level {
            Level::Clean => {
                cost.node_repeats == 0
                    && cost.zone_repeats == 0
                    && cost.reach as usize <= self.node_window
            }
            Level::ZoneDistinct => cost.node_repeats == 0 && cost.zone_repeats == 0,
            Level::NodeDistinct => cost.node_repeats == 0,
            Level::Any => true,
        }
    }

    /// One pass over the ring, handing open partitions to fitting nodes.
    /// `paced` releases each surplus node's partitions evenly around the ring
    /// (plus any where it repeats) instead of the first ones found.
    fn sweep(&mut self, level: Level, mode: Mode) {
        let mut pace = Pace::new(&self.counts, &self.targets);
        for p in 0..self.owners.len() {
            let current = self.owners[p];
            let mut paced = None;
            if let Some(owner) = current {
                if !self.over_target(owner) {
                    continue;
                }
                let due = pace.due(owner);
                let cost = self.cost(usize::from(owner), p);
                let repeats = cost.node_repeats + cost.zone_repeats > 0;
                let release = match mode {
                    Mode::Repair => repeats,
                    Mode::Paced => repeats || due,
                    Mode::Free => true,
                };
                if !release {
                    continue;
                }
                paced = (mode != Mode::Free).then_some(&pace);
            }
            if let Some(receiver) = self.pick_receiver(p, level, paced) {
                self.assign(p, receiver);
                pace.gained(receiver);
                if let Some(owner) = current {
                    pace.released(owner);
                }
            }
        }
    }

    fn assign(&mut self, p: usize, receiver: usize) {
        if let Some(old) = self.owners[p] {
            self.counts[usize::from(old)] -= 1;
            self.zone_counts[self.zones[usize::from(old)] as usize] -= 1;
        }
        self.counts[receiver] += 1;
        self.zone_counts[self.zones[receiver] as usize] += 1;
        self.owners[p] = Some(NodeIndex::try_from(receiver).expect("node counts fit NodeIndex"));
    }

    /// The node under target that fits best at `p`: the least cost at
    /// [`Level::Any`], otherwise the largest unmet fraction of its target,
    /// then the largest unmet count, then the lowest index.
    fn pick_receiver(&self, p: usize, level: Level, paced: Option<&Pace>) -> Option<usize> {
        let mut best: Option<(usize, Cost)> = None;
        let q = self.owners.len() as u64;
        for node in 0..self.counts.len() {
            if self.counts[node] >= self.targets[node] {
                continue;
            }
            if paced.is_some_and(|pace| !pace.receiver_due(node, p as u64, q)) {
                continue;
            }
            let cost = self.cost(node, p);
            if !self.fits(cost, level) {
                continue;
            }
            let better = match best {
                None => true,
                Some((_, b_cost)) if level == Level::Any && cost != b_cost => cost < b_cost,
                Some((b, _)) => self.compare_need(node, b) == Ordering::Greater,
            };
            if better {
                best = Some((node, cost));
            }
        }
        best.map(|(node, _)| node)
    }

    /// Orders nodes by the unmet fraction of their zone's target (so zones
    /// take turns around the ring), then of their own, then by unmet count.
    fn compare_need(&self, a: usize, b: usize) -> Ordering {
        let zone = |n: usize| self.zones[n] as usize;
        let zone_need = |n: usize| self.zone_targets[zone(n)] - self.zone_counts[zone(n)];
        let zone_target = |n: usize| self.zone_targets[zone(n)];
        let need = |n: usize| u64::from(self.targets[n] - self.counts[n]);
        let target = |n: usize| u64::from(self.targets[n]);
        let by_zone = (zone_need(a) * zone_target(b)).cmp(&(zone_need(b) * zone_target(a)));
        let by_node = (need(a) * target(b)).cmp(&(need(b) * target(a)));
        by_zone.then(by_node).then(need(a).cmp(&need(b)))
    }

    /// The cost of `node` owning `p`, ignoring `p`'s current owner.
    fn cost(&self, node: usize, p: usize) -> Cost {
        let q = self.owners.len();
        let zone = self.zones[node];
        let (mut node_repeats, mut zone_repeats) = (0, 0);
        for d in 1..self.node_window.max(self.zone_window) {
            for at in [(p + d) % q, (p + q - d % q) % q] {
                let Some(other) = self.owners[at].filter(|_| at != p) else {
                    continue;
                };
                let other = usize::from(other);
                if d < self.node_window && other == node {
                    node_repeats += 1;
                }
                if d < self.zone_window && self.zones[other] == zone {
                    zone_repeats += 1;
                }
            }
        }
        let reach = self.reach(node, p);
        Cost {
            node_repeats,
            zone_repeats,
            reach,
        }
    }

    /// How many preference lists would gain `node` through partition `p`:
    /// the list starting at `p` and each one before it whose walk has not
    /// met `node_window` distinct nodes in `zone_window` distinct zones by
    /// the time it reaches `p`.
    fn reach(&self, node: usize, p: usize) -> u32 {
        let q = self.owners.len();
        let limit = (2 * self.node_window + 2).min(q);
        let mut nodes_seen: Vec<usize> = Vec::with_capacity(limit);
        let mut zones_seen: Vec<u32> = Vec::with_capacity(limit);
        let mut reach = 1;
        for j in 1..limit {
            let Some(other) = self.owners[(p + q - j) % q] else {
                break;
            };
            let other = usize::from(other);
            if other == node {
                break;
            }
            if !nodes_seen.contains(&other) {
                nodes_seen.push(other);
            }
            if !zones_seen.contains(&self.zones[other]) {
                zones_seen.push(self.zones[other]);
            }
            if nodes_seen.len() >= self.node_window && zones_seen.len() >= self.zone_window {
                break;
            }
            reach += 1;
        }
        reach
    }
}

/// Spreads the moves of a paced sweep evenly around the ring: a surplus
/// node's `j`-th partition in ring order is due while fewer than
/// `surplus * (j + 1) / count` have been released, and a node under target
/// may take partition `p` only while it has gained fewer than
/// `need * (p + 1) / Q + 1`.
struct Pace {
    count: Vec<u64>,
    surplus: Vec<u64>,
    need: Vec<u64>,
    seen: Vec<u64>,
    released: Vec<u64>,
    gained: Vec<u64>,
}

impl Pace {
    fn new(counts: &[u32], targets: &[u32]) -> Self {
        let surplus = counts
            .iter()
            .zip(targets)
            .map(|(&c, &t)| u64::from(c.saturating_sub(t)))
            .collect();
        let need = counts
            .iter()
            .zip(targets)
            .map(|(&c, &t)| u64::from(t.saturating_sub(c)))
            .collect();
        Self {
            count: counts.iter().map(|&c| u64::from(c)).collect(),
            surplus,
            need,
            seen: vec![0; counts.len()],
            released: vec![0; counts.len()],
            gained: vec![0; counts.len()],
        }
    }

    /// Whether `owner`'s next partition in ring order is due for release.
    fn due(&mut self, owner: NodeIndex) -> bool {
        let o = usize::from(owner);
        self.seen[o] += 1;
        self.released[o] * self.count[o] < self.surplus[o] * self.seen[o]
    }

    fn released(&mut self, owner: NodeIndex) {
        self.released[usize::from(owner)] += 1;
    }

    fn gained(&mut self, node: usize) {
        self.gained[node] += 1;
    }

    /// Whether `node` is not ahead of its even share when reaching `p`.
    fn receiver_due(&self, node: usize, p: u64, q: u64) -> bool {
        self.gained[node] * q < self.need[node] * (p + 1) + q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_sum_to_q_and_prefer_nodes_already_above_floor() {
        // 10 over 3 equal nodes: floors 3, one node gets 4.
        assert_eq!(targets(10, &[1, 1, 1], &[0, 0, 0]), vec![4, 3, 3]);
        assert_eq!(targets(10, &[1, 1, 1], &[3, 3, 4]), vec![3, 3, 4]);
        // Larger fractions first: 10 * 3/6 = 5, 10 * 2/6 = 3.33, 10/6 = 1.67.
        assert_eq!(targets(10, &[3, 2, 1], &[0, 0, 0]), vec![5, 3, 2]);
    }

    #[test]
    fn equal_nodes_without_zones_round_robin() {
        let input = ClaimInput {
            capacities: &[1, 1, 1, 1],
            zones: &[0, 1, 2, 3],
            zone_count: 4,
            spread: 3,
        };
        let owners = claim(&input, vec![None; 16]);
        let expected: Vec<NodeIndex> = (0..16).map(|p| p % 4).collect();
        assert_eq!(owners, expected);
    }

    #[test]
    fn zones_interleave() {
        // Nodes 0, 1 in zone 0; 2, 3 in zone 1; and so on.
        let input = ClaimInput {
            capacities: &[1; 8],
            zones: &[0, 0, 1, 1, 2, 2, 3, 3],
            zone_count: 4,
            spread: 3,
        };
        let owners = claim(&input, vec![None; 64]);
        for p in 0..64 {
            let zone = |i: usize| input.zones[usize::from(owners[i % 64])];
            assert!(
                zone(p) != zone(p + 1) && zone(p) != zone(p + 2),
                "zones repeat at {p}: {owners:?}"
            );
        }
    }
}
