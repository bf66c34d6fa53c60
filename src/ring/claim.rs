//! Claim: the replica set of every partition behind a [`super::Layout`].
//!
//! Works on node indices only. Each partition gets `r` slots; given each
//! node's capacity and zone and the previous members of every partition
//! (already renumbered to this node list, departed nodes dropped), it fills
//! every slot so that:
//! - the nodes of a partition are distinct and cover `min(r, zones)`
//!   distinct zones (distinct zones when there are at least `r`);
//! - each node holds the floor or the ceiling of its exact share
//!   (`targets.rs`) whenever the steps below find a way to (the property
//!   tests check that they do);
//! - a previous member keeps its slot unless it left or holds more than its
//!   ceiling, and a node takes new slots only while below its floor unless
//!   a slot has no other taker, so a change copies close to the fewest
//!   replicas the balance law allows.
//!
//! How, in deterministic steps (ties go to the lower node index):
//! 1. every empty slot takes the fitting node furthest below its share,
//!    preferring nodes below their floor, then nodes below their ceiling;
//! 2. sweeps hand slots of nodes above their ceiling to fitting nodes below
//!    their floor, then below their ceiling, slots filled in this claim
//!    first (handing those on again copies nothing extra);
//! 3. a node still outside its bounds trades through the cheapest chain of
//!    hand-overs `a -> b -> ... -> z`, each taking a slot of the next, so
//!    only the ends change counts; a chain's cost is the number of slots it
//!    takes that were kept from the previous layout (0-1 breadth-first
//!    search).
//!
//! Finally each set lists one node per zone first, so any prefix of it
//! (the primaries for a smaller `n`) has as many distinct zones as it can.

use std::collections::VecDeque;

use super::layout::NodeIndex;
use super::targets::{Demand, replica_bounds, replica_shares};

/// What the claim needs to know about the nodes.
pub(super) struct ClaimInput<'a> {
    /// Weight per node, each at least 1.
    pub capacities: &'a [u32],
    /// Zone id per node, below `zone_count`.
    pub zones: &'a [u32],
    /// Number of distinct zone ids.
    pub zone_count: usize,
    /// Replicas per partition, in `1..=nodes`.
    pub replicas: usize,
}

/// The members of every partition, `replicas` per partition in slot order,
/// flattened. `previous[p]` lists partition `p`'s surviving members.
pub(super) fn claim(input: &ClaimInput<'_>, previous: &[Vec<NodeIndex>]) -> Vec<NodeIndex> {
    let nodes = input.capacities.len();
    assert!(
        nodes > 0 && (1..=nodes).contains(&input.replicas),
        "layouts validate that there is a node and clamp replicas to the node count"
    );
    let mut claim = Claim {
        slots: vec![None; previous.len() * input.replicas],
        fresh: vec![true; previous.len() * input.replicas],
        replicas: input.replicas,
        counts: vec![0; nodes],
        shares: Vec::new(),
        bounds: Vec::new(),
        zones: input.zones,
        required_zones: input.replicas.min(input.zone_count),
    };
    for (p, members) in previous.iter().enumerate() {
        for &member in members {
            claim.keep(p, usize::from(member));
        }
    }
    let demand = Demand {
        partitions: previous.len() as u64,
        replicas: input.replicas,
        capacities: input.capacities,
        zones: input.zones,
        zone_count: input.zone_count,
    };
    claim.shares = replica_shares(&demand);
    claim.bounds = replica_bounds(&claim.shares);
    claim.fill_empty_slots();
    for taker in [Tier::BelowFloor, Tier::BelowCeiling] {
        claim.sweep_surplus(taker, true);
        claim.sweep_surplus(taker, false);
    }
    claim.chain_to_floors();
    claim.chain_from_ceilings();
    claim.zones_first();
    let slots = claim.slots.into_iter();
    slots.map(|s| to_index(s.unwrap_or(0))).collect()
}

/// A fixed pseudo-random order of nodes per partition (splitmix64).
fn scatter(partition: usize, node: usize) -> u64 {
    let mut x = ((partition as u64) << 32 | node as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn to_index(node: usize) -> NodeIndex {
    NodeIndex::try_from(node).expect("node counts are validated to fit NodeIndex")
}

/// Which nodes may take a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    /// Below the floor of their share.
    BelowFloor,
    /// Below the ceiling of their share.
    BelowCeiling,
    /// Any node (the slot has no other taker).
    Any,
}

struct Claim<'a> {
    /// Member per slot; partition `p` owns `slots[p * replicas..][..replicas]`.
    slots: Vec<Option<usize>>,
    /// Whether a slot's member is new in this claim (so handing it on again
    /// copies nothing extra).
    fresh: Vec<bool>,
    replicas: usize,
    counts: Vec<u32>,
    /// Exact replica share per node.
    shares: Vec<f64>,
    /// Floor and ceiling of each share.
    bounds: Vec<(u32, u32)>,
    zones: &'a [u32],
    /// Distinct zones a full set must cover: `min(replicas, zones)`.
    required_zones: usize,
}

impl Claim<'_> {
    fn set(&self, p: usize) -> &[Option<usize>] {
        &self.slots[p * self.replicas..(p + 1) * self.replicas]
    }

    fn partitions(&self) -> usize {
        self.slots.len() / self.replicas
    }

    /// Keeps a previous member in the first free slot if it still fits.
    fn keep(&mut self, p: usize, node: usize) {
        let free = self.set(p).iter().position(Option::is_none);
        if let Some(s) = free.filter(|&s| self.fits(p, s, node)) {
            self.put(p * self.replicas + s, node);
            self.fresh[p * self.replicas + s] = false;
        }
    }

    fn put(&mut self, slot: usize, node: usize) {
        if let Some(old) = self.slots[slot] {
            self.counts[old] -= 1;
        }
        self.counts[node] += 1;
        self.slots[slot] = Some(node);
        self.fresh[slot] = true;
    }

    /// Whether `node` may take slot `s` of partition `p` (whatever is there
    /// now leaves): not already a member, and the set can still cover the
    /// required zones with the slots left empty.
    fn fits(&self, p: usize, s: usize, node: usize) -> bool {
        let set = self.set(p);
        let others = set
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != s)
            .map(|(_, m)| *m);
        let mut zones_seen: Vec<u32> = vec![self.zones[node]];
        let mut empty = 0;
        for other in others {
            match other {
                None => empty += 1,
                Some(o) if o == node => return false,
                Some(o) if !zones_seen.contains(&self.zones[o]) => zones_seen.push(self.zones[o]),
                Some(_) => {}
            }
        }
        zones_seen.len() + empty >= self.required_zones
    }

    fn in_tier(&self, node: usize, tier: Tier) -> bool {
        let (floor, ceiling) = self.bounds[node];
        match tier {
            Tier::BelowFloor => self.counts[node] < floor,
            Tier::BelowCeiling => self.counts[node] < ceiling,
            Tier::Any => true,
        }
    }

    fn above_ceiling(&self, node: usize) -> bool {
        self.counts[node] > self.bounds[node].1
    }

    /// How far below its share `node` is, relative to the share.
    fn deficit(&self, node: usize) -> f64 {
        let share = self.shares[node].max(f64::MIN_POSITIVE);
        (share - f64::from(self.counts[node])) / share
    }

    /// The fitting node in `tier` furthest below its share, if any.
    fn pick(&self, p: usize, s: usize, tier: Tier) -> Option<usize> {
        let candidates = (0..self.counts.len())
            .filter(|&n| self.in_tier(n, tier))
            .filter(|&n| self.fits(p, s, n));
        // NOTE: ties go by a fixed hash of (partition, node) rather than by
        // index, so sets mix nodes evenly and a node's replicas share
        // partitions with many others (a leave then has takers everywhere).
        let tie = |n: usize| scatter(p, n);
        candidates.max_by(|&a, &b| {
            let by_deficit = self.deficit(a).total_cmp(&self.deficit(b));
            by_deficit.then(tie(b).cmp(&tie(a))).then(b.cmp(&a))
        })
    }

    /// Whether every empty slot of `p` must go to a zone the set lacks.
    fn tight(&self, p: usize) -> bool {
        let set = self.set(p);
        let mut zones_seen: Vec<u32> = Vec::with_capacity(set.len());
        for &m in set.iter().flatten() {
            if !zones_seen.contains(&self.zones[m]) {
                zones_seen.push(self.zones[m]);
            }
        }
        let empty = set.iter().filter(|m| m.is_none()).count();
        empty > 0 && zones_seen.len() + empty <= self.required_zones
    }

    /// Step 1: every empty slot gets a member, slots whose zone is forced
    /// first (so nodes of scarce zones are not used up elsewhere).
    fn fill_empty_slots(&mut self) {
        for tight_only in [true, false] {
            for slot in 0..self.slots.len() {
                let (p, s) = (slot / self.replicas, slot % self.replicas);
                if self.slots[slot].is_some() || (tight_only && !self.tight(p)) {
                    continue;
                }
                let tiers = [Tier::BelowFloor, Tier::BelowCeiling, Tier::Any];
                let found = tiers.into_iter().find_map(|tier| self.pick(p, s, tier));
                // NOTE: `replicas <= nodes` and a node of every missing zone
                // is free to take the slot, so a fitting node always exists.
                if let Some(node) = found {
                    self.put(slot, node);
                }
            }
        }
    }

    /// Step 2: hand slots of nodes above their ceiling to fitting nodes in
    /// `taker` until a sweep changes nothing; `fresh_only` hands on only
    /// slots filled in this claim.
    fn sweep_surplus(&mut self, taker: Tier, fresh_only: bool) {
        loop {
            let mut changed = false;
            for slot in 0..self.slots.len() {
                let Some(owner) = self.slots[slot] else {
                    continue;
                };
                if !self.above_ceiling(owner) || (fresh_only && !self.fresh[slot]) {
                    continue;
                }
                let (p, s) = (slot / self.replicas, slot % self.replicas);
                if let Some(node) = self.pick(p, s, taker) {
                    self.put(slot, node);
                    changed = true;
                }
            }
            if !changed {
                return;
            }
        }
    }

    /// Step 3a: each node below its floor gains a slot through the cheapest
    /// chain ending at a node that can spare one (above its floor).
    fn chain_to_floors(&mut self) {
        let mut stuck = vec![false; self.counts.len()];
        // NOTE: every applied chain moves one node one step towards its
        // bounds and none away, so this bound only guards against a bug.
        for _ in 0..self.slots.len() {
            let below = |n: usize| self.in_tier(n, Tier::BelowFloor) && !stuck[n];
            let Some(start) = (0..self.counts.len()).find(|&n| below(n)) else {
                return;
            };
            let spare = |c: &Claim<'_>, n: usize| c.counts[n] > c.bounds[n].0 && n != start;
            match self.find_chain(&[start], spare) {
                Some(chain) => self.apply_chain(&chain),
                None => stuck[start] = true,
            }
        }
    }

    /// Step 3b: nodes above their ceiling give slots through the cheapest
    /// chains starting at any node below its ceiling.
    fn chain_from_ceilings(&mut self) {
        for _ in 0..self.slots.len() {
            let starts: Vec<usize> = (0..self.counts.len())
                .filter(|&n| self.in_tier(n, Tier::BelowCeiling))
                .collect();
            let chain = self.find_chain(&starts, |c, n| c.above_ceiling(n));
            match chain {
                Some(chain) if !chain.is_empty() => self.apply_chain(&chain),
                _ => return,
            }
        }
    }

    /// Hand-overs `(taker, slot)` from one of `starts` to a node for which
    /// `end` holds, in chain order: the chain taking the fewest slots kept
    /// from the previous layout (each costs one more copy; fresh ones cost
    /// nothing), ending above a ceiling if it can, found by a 0-1
    /// breadth-first search.
    fn find_chain(
        &self,
        starts: &[usize],
        end: impl Fn(&Self, usize) -> bool,
    ) -> Option<Vec<(usize, usize)>> {
        let nodes = self.counts.len();
        let mut came_from: Vec<Option<(usize, usize)>> = vec![None; nodes];
        let mut cost = vec![usize::MAX; nodes];
        let mut done = vec![false; nodes];
        for &start in starts {
            cost[start] = 0;
        }
        let mut queue: VecDeque<usize> = starts.iter().copied().collect();
        while let Some(taker) = queue.pop_front() {
            if std::mem::replace(&mut done[taker], true) {
                continue;
            }
            for slot in 0..self.slots.len() {
                let Some(giver) = self.slots[slot] else {
                    continue;
                };
                let step = usize::from(!self.fresh[slot]);
                let reached = cost[taker] + step;
                if done[giver] || reached >= cost[giver] {
                    continue;
                }
                let (p, s) = (slot / self.replicas, slot % self.replicas);
                if !self.fits(p, s, taker) {
                    continue;
                }
                cost[giver] = reached;
                came_from[giver] = Some((taker, slot));
                if step == 0 {
                    queue.push_front(giver);
                } else {
                    queue.push_back(giver);
                }
            }
        }
        let ends = (0..nodes).filter(|&n| end(self, n) && came_from[n].is_some());
        let last = ends.min_by_key(|&n| (cost[n], !self.above_ceiling(n), n))?;
        let mut chain = Vec::new();
        let mut at = last;
        while let Some((taker, slot)) = came_from[at] {
            chain.push((taker, slot));
            at = taker;
        }
        chain.reverse();
        Some(chain)
    }

    /// Applies a chain from its far end, so each giver first gains the slot
    /// it will hand on; a step that no longer fits stops the chain (counts
    /// stay consistent, and the next search starts from the new state).
    fn apply_chain(&mut self, chain: &[(usize, usize)]) {
        for &(taker, slot) in chain.iter().rev() {
            let (p, s) = (slot / self.replicas, slot % self.replicas);
            if !self.fits(p, s, taker) {
                return;
            }
            self.put(slot, taker);
        }
    }

    /// Reorders each set so the first member of each zone comes first, in
    /// slot order otherwise (a no-op when the zones are already distinct).
    fn zones_first(&mut self) {
        for p in 0..self.partitions() {
            let set: Vec<Option<usize>> = self.set(p).to_vec();
            let mut seen: Vec<u32> = Vec::with_capacity(set.len());
            let (mut first, mut rest) = (Vec::new(), Vec::new());
            for member in set.into_iter().flatten() {
                if seen.contains(&self.zones[member]) {
                    rest.push(Some(member));
                } else {
                    seen.push(self.zones[member]);
                    first.push(Some(member));
                }
            }
            first.extend(rest);
            let range = p * self.replicas..(p + 1) * self.replicas;
            self.slots[range].copy_from_slice(&first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(owners: &[NodeIndex], replicas: usize) -> Vec<Vec<NodeIndex>> {
        owners.chunks(replicas).map(<[NodeIndex]>::to_vec).collect()
    }

    #[test]
    fn equal_nodes_get_equal_shares_and_distinct_zones() {
        // Nodes 0, 1 in zone 0; 2, 3 in zone 1; and so on.
        let input = ClaimInput {
            capacities: &[1; 8],
            zones: &[0, 0, 1, 1, 2, 2, 3, 3],
            zone_count: 4,
            replicas: 3,
        };
        let flat = claim(&input, &vec![Vec::new(); 64]);
        let mut counts = [0; 8];
        for set in sets(&flat, 3) {
            let mut zones: Vec<u32> = set.iter().map(|&n| input.zones[usize::from(n)]).collect();
            zones.sort_unstable();
            zones.dedup();
            assert_eq!(zones.len(), 3, "{set:?}");
            for n in set {
                counts[usize::from(n)] += 1;
            }
        }
        assert_eq!(counts, [24; 8]);
    }

    #[test]
    fn unchanged_inputs_keep_every_set() {
        let input = ClaimInput {
            capacities: &[1, 2, 3, 1, 2],
            zones: &[0, 1, 2, 0, 1],
            zone_count: 3,
            replicas: 3,
        };
        let first = claim(&input, &vec![Vec::new(); 256]);
        let again = claim(&input, &sets(&first, 3));
        assert_eq!(first, again);
    }
}
