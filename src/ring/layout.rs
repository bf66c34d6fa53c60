//! Layout: which nodes hold each of the `Q` partitions, one version at a time.
//!
//! A [`Layout`] gives every partition a replica set of `r = min(spread,
//! nodes)` distinct nodes, in order; the first is the partition's owner
//! (token holder). Preference lists (`preference.rs`) take a prefix of the
//! set and continue clockwise for fallbacks. A layout is pure data (no I/O),
//! serialisable for gossip and persistence, and changes only through
//! [`Layout::with_nodes`], which an operator's command calls.
//!
//! Invariants, checked on construction and again on deserialisation:
//! - `Q` is a power of two in `1..=MAX_PARTITIONS`, there are `Q * r`
//!   members, every member indexes `nodes`, and each set's are distinct.
//! - `nodes` is sorted by name; names are unique and non-empty, capacities are
//!   at least 1, at most [`MAX_NODES`] nodes.
//!
//! Laws (the claim in `claim.rs` builds them, the property tests check them):
//! - Zones: each set covers `min(r, zones)` distinct zones, so with at least
//!   `r` zones no zone holds two replicas of a partition.
//! - Balance: each node holds `floor(s)` or `ceil(s)` replicas, where `s` is
//!   its exact share (`targets.rs`): `r * Q * capacity / total capacity`,
//!   capped at `Q` per node, and per zone at `Q` (at least `r` zones) or
//!   raised to `Q` (fewer zones, so every zone is in every set).
//! - Minimal movement: a join or leave copies the fewest replicas any layout
//!   obeying the two laws above could (an exact minimum-cost flow in
//!   `claim.rs`; measured in `movement_tests.rs`).
//! - Determinism: the same inputs give the same layout; ties are broken by
//!   node name order and partition index, never by chance.

use serde::{Deserialize, Serialize};

use super::MAX_PARTITIONS;
use super::claim::{self, ClaimInput};

/// Index of a node in [`Layout::nodes`] (valid for that layout only; names
/// are the identity that survives from one version to the next).
pub type NodeIndex = u16;

/// The largest number of nodes a layout may name.
pub const MAX_NODES: usize = 4096;

/// The replication factor the claim spreads owners for by default (the
/// default `n` of DESIGN.md §1).
pub const DEFAULT_SPREAD: u8 = 3;

/// The largest supported spread.
pub const MAX_SPREAD: u8 = 16;

/// A member of the layout: a node's stable name, its zone and its weight.
///
/// A node without a zone counts as a zone of its own when preference lists
/// look for distinct zones.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Stable node name, unique in the cluster.
    pub name: String,
    /// Failure domain (rack, availability zone); `None` is a zone of its own.
    #[serde(default)]
    pub zone: Option<String>,
    /// Relative weight: a node with capacity 2 owns twice the partitions of a
    /// node with capacity 1. At least 1; defaults to 1.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
}

fn default_capacity() -> u32 {
    1
}

impl NodeSpec {
    /// A node with no zone and capacity 1.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            zone: None,
            capacity: default_capacity(),
        }
    }

    /// The same node placed in `zone`.
    pub fn in_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// The same node with weight `capacity`.
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }
}

/// Why a layout could not be built, read or queried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A layout needs at least one node.
    #[error("a layout needs at least one node")]
    NoNodes,
    /// Too many nodes for [`NodeIndex`].
    #[error("{count} nodes is more than the maximum of {MAX_NODES}")]
    TooManyNodes {
        /// The number of nodes given.
        count: usize,
    },
    /// `Q` is not a power of two in `1..=MAX_PARTITIONS`.
    #[error("partition count {0} is not a power of two in 1..={MAX_PARTITIONS}")]
    BadPartitionCount(u32),
    /// The spread is outside `1..=MAX_SPREAD`.
    #[error("spread {0} is not in 1..={MAX_SPREAD}")]
    BadSpread(u8),
    /// Two nodes share a name.
    #[error("node name {0:?} appears more than once")]
    DuplicateNode(String),
    /// A node has an empty name.
    #[error("a node name must not be empty")]
    EmptyNodeName,
    /// A node has an empty zone name (use no zone instead).
    #[error("node {0:?} has an empty zone name; leave the zone out instead")]
    EmptyZone(String),
    /// A node has capacity 0.
    #[error("node {0:?} has capacity 0; capacity must be at least 1")]
    ZeroCapacity(String),
    /// A partition id is not below `Q`.
    #[error("partition {partition} is out of range for {partitions} partitions")]
    PartitionOutOfRange {
        /// The partition asked for.
        partition: u32,
        /// `Q` of the layout.
        partitions: u32,
    },
    /// Two layouts being compared have different `Q`.
    #[error(
        "layouts have {left} and {right} partitions; the count is fixed when the cluster is created"
    )]
    PartitionCountMismatch {
        /// `Q` of `self`.
        left: u32,
        /// `Q` of the other layout.
        right: u32,
    },
    /// The version number cannot grow any further.
    #[error("layout version {0} cannot be incremented")]
    VersionOverflow(u64),
    /// A deserialised layout breaks an invariant.
    #[error("malformed layout: {0}")]
    Malformed(String),
}

/// The versioned assignment of partitions to nodes.
///
/// Serialises as `{format, version, partitions, spread, nodes, replicas}` (the
/// replica sets flattened, `min(spread, nodes)` per partition) and is
/// validated when deserialised, so a layout from a peer or a disk upholds the
/// module invariants and preference lists never index out of bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LayoutRepr", into = "LayoutRepr")]
pub struct Layout {
    version: u64,
    partitions: u32,
    spread: u8,
    nodes: Vec<NodeSpec>,
    /// `replication` members per partition, partition by partition.
    replicas: Vec<NodeIndex>,
    /// Derived: members per partition, `min(spread, nodes)`.
    replication: usize,
    /// Derived: the first member of each partition.
    owners: Vec<NodeIndex>,
    /// Derived: zone id per node; zone-less nodes get ids of their own.
    zones: Vec<u32>,
    /// Derived: number of distinct zone ids.
    zone_count: usize,
    /// Derived: number of nodes that hold at least one replica.
    owning_nodes: usize,
}

/// The format of the serialised layout: 2 is replica sets (`replicas`,
/// `spread`); 1 was the clockwise walk of owners, which did not carry this
/// field (STYLE rule 10: a format change gets a new number, and a decoder
/// refuses numbers it does not know).
pub const LAYOUT_FORMAT: u8 = 2;

/// The persisted and gossiped shape of a [`Layout`].
#[derive(Serialize, Deserialize)]
struct LayoutRepr {
    format: u8,
    version: u64,
    partitions: u32,
    spread: u8,
    nodes: Vec<NodeSpec>,
    replicas: Vec<NodeIndex>,
}

impl From<Layout> for LayoutRepr {
    fn from(layout: Layout) -> Self {
        Self {
            format: LAYOUT_FORMAT,
            version: layout.version,
            partitions: layout.partitions,
            spread: layout.spread,
            nodes: layout.nodes,
            replicas: layout.replicas,
        }
    }
}

impl TryFrom<LayoutRepr> for Layout {
    type Error = LayoutError;

    fn try_from(repr: LayoutRepr) -> Result<Self, Self::Error> {
        if repr.format != LAYOUT_FORMAT {
            return Err(LayoutError::Malformed(format!(
                "layout format {} (this node reads format {LAYOUT_FORMAT})",
                repr.format
            )));
        }
        check_partitions(repr.partitions)?;
        check_spread(repr.spread)?;
        if repr.nodes.windows(2).any(|w| w[0].name > w[1].name) {
            return Err(LayoutError::Malformed(
                "nodes are not sorted by name".into(),
            ));
        }
        let nodes = validate_nodes(repr.nodes)?;
        let replication = replication(repr.spread, nodes.len());
        let expected = u64::from(repr.partitions) * replication as u64;
        if repr.replicas.len() as u64 != expected {
            return Err(LayoutError::Malformed(format!(
                "{} replicas for {} partitions of {replication}",
                repr.replicas.len(),
                repr.partitions
            )));
        }
        if let Some(bad) = repr
            .replicas
            .iter()
            .find(|&&o| usize::from(o) >= nodes.len())
        {
            return Err(LayoutError::Malformed(format!(
                "replica index {bad} but only {} nodes",
                nodes.len()
            )));
        }
        let repeats = |set: &[NodeIndex]| (1..set.len()).any(|i| set[..i].contains(&set[i]));
        if let Some(p) = repr.replicas.chunks(replication).position(repeats) {
            return Err(LayoutError::Malformed(format!(
                "partition {p} names a node twice"
            )));
        }
        Ok(Self::assemble(
            repr.version,
            repr.partitions,
            repr.spread,
            nodes,
            repr.replicas,
        ))
    }
}

impl Layout {
    /// The first layout (version 1) of a cluster of `partitions` partitions,
    /// with replica sets for the default replication factor
    /// [`DEFAULT_SPREAD`].
    pub fn initial(partitions: u32, nodes: Vec<NodeSpec>) -> Result<Layout, LayoutError> {
        Self::initial_with_spread(partitions, nodes, DEFAULT_SPREAD)
    }

    /// The first layout, with replica sets of `spread` nodes (use the largest
    /// `n` of any keyspace; a smaller `n` takes a prefix of each set). Later
    /// versions keep the spread.
    pub fn initial_with_spread(
        partitions: u32,
        nodes: Vec<NodeSpec>,
        spread: u8,
    ) -> Result<Layout, LayoutError> {
        check_partitions(partitions)?;
        check_spread(spread)?;
        let nodes = validate_nodes(nodes)?;
        let previous = vec![Vec::new(); partitions as usize];
        Ok(Self::claim(1, partitions, spread, nodes, &previous))
    }

    /// The next version for the node set `nodes` (a node joined, left, or
    /// changed zone or capacity): balanced again, moving as few replicas as
    /// possible. Nodes are matched to the current ones by name.
    pub fn with_nodes(&self, nodes: Vec<NodeSpec>) -> Result<Layout, LayoutError> {
        let version = self
            .version
            .checked_add(1)
            .ok_or(LayoutError::VersionOverflow(self.version))?;
        let nodes = validate_nodes(nodes)?;
        let previous = self.surviving_sets(&nodes);
        Ok(Self::claim(
            version,
            self.partitions,
            self.spread,
            nodes,
            &previous,
        ))
    }

    /// Each partition's current members that are in `nodes` (sorted by
    /// name), renumbered to index `nodes`.
    fn surviving_sets(&self, nodes: &[NodeSpec]) -> Vec<Vec<NodeIndex>> {
        let renumber: Vec<Option<NodeIndex>> = self
            .nodes
            .iter()
            .map(|old| {
                let found = nodes.binary_search_by(|new| new.name.cmp(&old.name));
                found.ok().map(to_index)
            })
            .collect();
        self.replicas
            .chunks(self.replication)
            .map(|set| {
                let kept = set
                    .iter()
                    .map(|&o| renumber.get(usize::from(o)).copied().flatten());
                kept.flatten().collect()
            })
            .collect()
    }

    /// The fewest replica copies any layout of `nodes` obeying the balance
    /// and zone laws needs from this one, certified by the flow's duals
    /// (the true optimum `movement_tests.rs` measures against).
    #[cfg(test)]
    pub(super) fn minimum_copies(&self, nodes: Vec<NodeSpec>) -> usize {
        let nodes = validate_nodes(nodes).expect("valid nodes");
        let previous = self.surviving_sets(&nodes);
        let copies = with_claim_input(self.spread, &nodes, |input| {
            claim::certified_minimum(input, &previous)
        });
        usize::try_from(copies).expect("a count")
    }

    /// A fingerprint of the whole assignment (xxh3 of the serialised
    /// layout): two nodes with the same version and different digests
    /// disagree about where data lives (different `cluster.nodes`, or
    /// binaries whose layouts differ), which gossip reports.
    pub fn digest(&self) -> u64 {
        let bytes = postcard::to_allocvec(self).expect("a layout always serialises");
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// The version number: 1 for the first layout, +1 per change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// `Q`, the number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The replication factor replica sets are built for.
    pub fn spread(&self) -> u8 {
        self.spread
    }

    /// The nodes, sorted by name; [`NodeIndex`] values index this slice.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The node at `index`, if any.
    pub fn node(&self, index: NodeIndex) -> Option<&NodeSpec> {
        self.nodes.get(usize::from(index))
    }

    /// The index of the node called `name`, if it is a member.
    pub fn index_of(&self, name: &str) -> Option<NodeIndex> {
        let found = self.nodes.binary_search_by(|n| n.name.as_str().cmp(name));
        found.ok().map(to_index)
    }

    /// The owner (token holder, first replica) of each partition, indexed by
    /// partition.
    pub fn owners(&self) -> &[NodeIndex] {
        &self.owners
    }

    /// The replica set of `partition` (`min(spread, nodes)` distinct nodes,
    /// one per zone first), or an empty slice if it is out of range.
    pub fn replica_set(&self, partition: usize) -> &[NodeIndex] {
        let r = self.replication;
        self.replicas
            .get(partition * r..(partition + 1) * r)
            .unwrap_or(&[])
    }

    /// How many partitions each node holds a replica of, indexed like
    /// [`Layout::nodes`].
    pub fn partition_counts(&self) -> Vec<u32> {
        owner_counts(&self.replicas, self.nodes.len())
    }

    /// How many partitions each node is the owner (first replica) of,
    /// indexed like [`Layout::nodes`].
    pub fn owned_counts(&self) -> Vec<u32> {
        owner_counts(&self.owners, self.nodes.len())
    }

    pub(super) fn zone_of(&self, node: NodeIndex) -> usize {
        self.zones.get(usize::from(node)).map_or(0, |&z| z as usize)
    }

    pub(super) fn zone_count(&self) -> usize {
        self.zone_count
    }

    pub(super) fn owning_nodes(&self) -> usize {
        self.owning_nodes
    }

    fn claim(
        version: u64,
        partitions: u32,
        spread: u8,
        nodes: Vec<NodeSpec>,
        previous: &[Vec<NodeIndex>],
    ) -> Layout {
        let replicas = with_claim_input(spread, &nodes, |input| claim::claim(input, previous));
        Self::assemble(version, partitions, spread, nodes, replicas)
    }

    fn assemble(
        version: u64,
        partitions: u32,
        spread: u8,
        nodes: Vec<NodeSpec>,
        replicas: Vec<NodeIndex>,
    ) -> Layout {
        let (zones, zone_count) = zone_ids(&nodes);
        let replication = replication(spread, nodes.len());
        let owning_nodes = owner_counts(&replicas, nodes.len())
            .iter()
            .filter(|&&c| c > 0)
            .count();
        let owners = replicas
            .chunks(replication)
            .map(|set| set.first().copied().unwrap_or_default())
            .collect();
        Layout {
            version,
            partitions,
            spread,
            nodes,
            replicas,
            replication,
            owners,
            zones,
            zone_count,
            owning_nodes,
        }
    }
}

/// Replicas per partition: the spread, or every node if there are fewer.
fn replication(spread: u8, nodes: usize) -> usize {
    usize::from(spread).min(nodes).max(1)
}

fn to_index(index: usize) -> NodeIndex {
    assert!(index < MAX_NODES, "node lists are validated to MAX_NODES");
    index as NodeIndex
}

fn owner_counts(owners: &[NodeIndex], nodes: usize) -> Vec<u32> {
    let mut counts = vec![0u32; nodes];
    for &o in owners {
        if let Some(c) = counts.get_mut(usize::from(o)) {
            *c += 1;
        }
    }
    counts
}

fn check_partitions(partitions: u32) -> Result<(), LayoutError> {
    if partitions.is_power_of_two() && partitions <= MAX_PARTITIONS {
        Ok(())
    } else {
        Err(LayoutError::BadPartitionCount(partitions))
    }
}

fn check_spread(spread: u8) -> Result<(), LayoutError> {
    if (1..=MAX_SPREAD).contains(&spread) {
        Ok(())
    } else {
        Err(LayoutError::BadSpread(spread))
    }
}

/// Sorts `nodes` by name and checks them.
fn validate_nodes(mut nodes: Vec<NodeSpec>) -> Result<Vec<NodeSpec>, LayoutError> {
    if nodes.is_empty() {
        return Err(LayoutError::NoNodes);
    }
    if nodes.len() > MAX_NODES {
        return Err(LayoutError::TooManyNodes { count: nodes.len() });
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = nodes.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(LayoutError::DuplicateNode(pair[0].name.clone()));
    }
    for node in &nodes {
        if node.name.is_empty() {
            return Err(LayoutError::EmptyNodeName);
        }
        if node.zone.as_deref() == Some("") {
            return Err(LayoutError::EmptyZone(node.name.clone()));
        }
        if node.capacity == 0 {
            return Err(LayoutError::ZeroCapacity(node.name.clone()));
        }
    }
    Ok(nodes)
}

/// Each node's (floor, ceiling) of replicas in a layout of `nodes` with `q`
/// partitions and sets of `spread`: what the claim balances to.
#[cfg(test)]
pub(super) fn replica_bounds_of(q: u32, spread: u8, nodes: &[NodeSpec]) -> Vec<(u32, u32)> {
    with_claim_input(spread, nodes, |input| input.bounds(q as usize))
}

/// Runs `f` on the claim's view of `nodes` for replica sets of `spread`.
fn with_claim_input<T>(spread: u8, nodes: &[NodeSpec], f: impl FnOnce(&ClaimInput<'_>) -> T) -> T {
    let (zones, zone_count) = zone_ids(nodes);
    let capacities: Vec<u32> = nodes.iter().map(|n| n.capacity).collect();
    f(&ClaimInput {
        capacities: &capacities,
        zones: &zones,
        zone_count,
        replicas: replication(spread, nodes.len()),
    })
}

/// Zone id per node and the number of ids: named zones are numbered in name
/// order, then each zone-less node gets an id of its own.
pub(super) fn zone_ids(nodes: &[NodeSpec]) -> (Vec<u32>, usize) {
    let mut named: Vec<&str> = nodes.iter().filter_map(|n| n.zone.as_deref()).collect();
    named.sort_unstable();
    named.dedup();
    let mut next_own = named.len();
    let ids = nodes
        .iter()
        .map(|node| {
            let id = match node.zone.as_deref() {
                Some(zone) => named.binary_search(&zone).unwrap_or(0),
                None => {
                    next_own += 1;
                    next_own - 1
                }
            };
            id as u32
        })
        .collect();
    (ids, next_own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn named(count: usize) -> Vec<NodeSpec> {
        (0..count)
            .map(|i| NodeSpec::new(format!("n{i:02}")))
            .collect()
    }

    #[test]
    fn rejects_bad_inputs() {
        assert_eq!(Layout::initial(64, vec![]), Err(LayoutError::NoNodes));
        for q in [0, 3, 100, MAX_PARTITIONS * 2] {
            assert_eq!(
                Layout::initial(q, named(2)),
                Err(LayoutError::BadPartitionCount(q))
            );
        }
        let dup = vec![NodeSpec::new("a"), NodeSpec::new("b"), NodeSpec::new("a")];
        assert_eq!(
            Layout::initial(64, dup),
            Err(LayoutError::DuplicateNode("a".into()))
        );
        let zero = vec![NodeSpec::new("a").with_capacity(0)];
        assert_eq!(
            Layout::initial(64, zero),
            Err(LayoutError::ZeroCapacity("a".into()))
        );
        assert_eq!(
            Layout::initial(64, vec![NodeSpec::new("")]),
            Err(LayoutError::EmptyNodeName)
        );
        assert_eq!(
            Layout::initial(64, vec![NodeSpec::new("a").in_zone("")]),
            Err(LayoutError::EmptyZone("a".into()))
        );
        assert_eq!(
            Layout::initial_with_spread(64, named(2), 0),
            Err(LayoutError::BadSpread(0))
        );
        let many = named(MAX_NODES + 1);
        assert_eq!(
            Layout::initial(64, many),
            Err(LayoutError::TooManyNodes {
                count: MAX_NODES + 1
            })
        );
        let layout = Layout::initial(64, named(2)).expect("valid");
        assert_eq!(layout.with_nodes(vec![]), Err(LayoutError::NoNodes));
    }

    #[test]
    fn error_messages_name_the_problem() {
        let msg = LayoutError::DuplicateNode("n1".into()).to_string();
        assert_eq!(msg, "node name \"n1\" appears more than once");
        let msg = LayoutError::BadPartitionCount(100).to_string();
        assert_eq!(
            msg,
            "partition count 100 is not a power of two in 1..=65536"
        );
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let nodes = vec![NodeSpec::new("b").in_zone("z1"), NodeSpec::new("a")];
        let layout = Layout::initial(16, nodes).expect("valid");
        let text = toml::to_string(&layout).expect("serialises");
        let back: Layout = toml::from_str(&text).expect("deserialises");
        assert_eq!(back, layout);

        let bad_owner = text.replace("replicas = [", "replicas = [7, ");
        assert!(toml::from_str::<Layout>(&bad_owner).is_err());
        let first = layout.replica_set(0).to_vec();
        let twice = text.replace(
            &format!("replicas = [{}, {}", first[0], first[1]),
            &format!("replicas = [{}, {}", first[0], first[0]),
        );
        let err = toml::from_str::<Layout>(&twice).expect_err("repeated node");
        assert!(err.to_string().contains("twice"), "{err}");
        let bad_q = text.replace("partitions = 16", "partitions = 12");
        assert!(toml::from_str::<Layout>(&bad_q).is_err());
        let old_format = text.replace("format = 2", "format = 1");
        let err = toml::from_str::<Layout>(&old_format).expect_err("old format");
        assert!(err.to_string().contains("layout format 1"), "{err}");
        let unsorted = "format = 2\nversion = 1\npartitions = 1\nspread = 3\nreplicas = [0]\n\
                        [[nodes]]\nname = \"b\"\n[[nodes]]\nname = \"a\"\n";
        let err = toml::from_str::<Layout>(unsorted).expect_err("unsorted nodes");
        assert!(err.to_string().contains("not sorted"), "{err}");
    }

    #[test]
    fn version_overflow_is_an_error() {
        let text = "format = 2\nversion = 18446744073709551615\npartitions = 1\nspread = 3\n\
                    replicas = [0]\n[[nodes]]\nname = \"a\"\n";
        let layout: Layout = toml::from_str(text).expect("valid layout");
        assert_eq!(
            layout.with_nodes(named(1)),
            Err(LayoutError::VersionOverflow(u64::MAX))
        );
    }

    #[test]
    fn more_nodes_than_partitions_still_balances() {
        // 4 partitions of 3 replicas over 6 nodes: 2 each.
        let layout = Layout::initial(4, named(6)).expect("valid");
        let counts = layout.partition_counts();
        assert!(counts.iter().all(|&c| c == 2), "{counts:?}");
    }

    #[test]
    fn fewer_nodes_than_the_spread_hold_everything() {
        let layout = Layout::initial(16, named(2)).expect("valid");
        assert_eq!(layout.partition_counts(), vec![16, 16]);
        assert_eq!(layout.replica_set(3).len(), 2);
        assert!(layout.replica_set(16).is_empty());
    }

    /// Each node holds the floor or the ceiling of its exact share
    /// (`targets.rs`), and every partition has `min(spread, nodes)`
    /// distinct nodes.
    fn assert_balanced(layout: &Layout) -> Result<(), TestCaseError> {
        let bounds = replica_bounds_of(layout.partitions(), layout.spread(), layout.nodes());
        for (i, &count) in layout.partition_counts().iter().enumerate() {
            let (floor, ceiling) = bounds[i];
            prop_assert!(
                (floor..=ceiling).contains(&count),
                "{} holds {count}, share {floor}..={ceiling}",
                layout.nodes()[i].name
            );
        }
        for p in 0..layout.partitions() as usize {
            let mut set = layout.replica_set(p).to_vec();
            set.sort_unstable();
            set.dedup();
            prop_assert_eq!(
                set.len(),
                replication(layout.spread(), layout.nodes().len())
            );
        }
        Ok(())
    }

    fn capacities() -> impl Strategy<Value = Vec<u32>> {
        proptest::collection::vec(1u32..=4, 1..=12)
    }

    fn weighted(caps: &[u32], zones: usize) -> Vec<NodeSpec> {
        let zoned = |i: usize, n: NodeSpec| match zones {
            0 => n,
            z => n.in_zone(format!("z{}", i % z)),
        };
        let nodes = caps.iter().enumerate();
        nodes
            .map(|(i, &c)| zoned(i, NodeSpec::new(format!("n{i:02}")).with_capacity(c)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn equal_capacity_is_floor_or_ceil(nodes in 1usize..=12, bits in prop::sample::select(vec![6u32, 8, 10]), zones in 0usize..=4) {
            let layout = Layout::initial(1 << bits, weighted(&vec![1; nodes], zones)).expect("valid");
            assert_balanced(&layout)?;
        }

        #[test]
        fn weighted_capacity_is_within_one(caps in capacities(), bits in prop::sample::select(vec![6u32, 8, 10])) {
            let layout = Layout::initial(1 << bits, weighted(&caps, 0)).expect("valid");
            assert_balanced(&layout)?;
        }

        /// Joins, leaves, zone and capacity changes at once stay balanced,
        /// and nodes that stay keep their replicas when nothing changes.
        #[test]
        fn changes_rebalance(before in capacities(), after in capacities(), zones in 0usize..=3, bits in prop::sample::select(vec![6u32, 8])) {
            let old = Layout::initial(1 << bits, weighted(&before, zones)).expect("valid");
            // Names overlap by index, so this joins, leaves and reweights at once.
            let new = old.with_nodes(weighted(&after, zones)).expect("valid");
            assert_balanced(&new)?;
            prop_assert_eq!(new.version(), old.version() + 1);
            let again = new.with_nodes(weighted(&after, zones)).expect("valid");
            prop_assert_eq!(new.moved_replicas(&again, usize::from(new.spread())), Ok(0));
        }

        #[test]
        fn deterministic_and_versioned(caps in capacities(), zones in 0usize..=3, bits in 4u32..=10) {
            let nodes = weighted(&caps, zones);
            let a = Layout::initial(1 << bits, nodes.clone()).expect("valid");
            let mut reversed = nodes.clone();
            reversed.reverse();
            let b = Layout::initial(1 << bits, reversed).expect("valid");
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.version(), 1);
            let fewer = nodes[1..].to_vec();
            if !fewer.is_empty() {
                let c = a.with_nodes(fewer.clone()).expect("valid");
                prop_assert_eq!(&c, &b.with_nodes(fewer).expect("valid"));
                prop_assert_eq!(c.version(), 2);
            }
            let same = a.with_nodes(nodes).expect("valid");
            prop_assert_eq!(same.version(), 2);
            prop_assert_eq!(same.owners(), a.owners());
        }
    }
}
