//! Membership view and failure detection by gossip (chitchat).
//!
//! Every node runs a chitchat instance on UDP (`node.gossip_addr`) and
//! publishes its internode TCP address, zone and layout version; scuttlebutt
//! spreads them and a phi-accrual detector decides who is live. A sync task
//! ([`gossip`]) copies chitchat's view into [`Membership`] every gossip
//! interval, logs up/down transitions and points the TCP transport at the
//! newest address of each peer. The layout members are still `cluster.nodes`.
//!
//! Invariant: liveness only ever informs routing and reporting; it never
//! changes the layout.
//!
//! NOTE: gossip is **not** authenticated by the cluster secret. The chitchat
//! cluster id contains a hash of the secret, so nodes of different clusters
//! do not gossip together by mistake, but anyone who can send UDP datagrams to
//! a gossip port can forge liveness or a peer's TCP address. That can mislead
//! routing (a denial of service), not data: the TCP data path still proves
//! the secret on every connection, so a forged address only gets refused
//! handshakes. Keep gossip ports on a trusted network.

mod filter;
pub mod gossip;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub use filter::{FilteredGossipTransport, GossipBlocklist};
pub use gossip::{GossipConfig, MembershipHandle, digest_hex, spawn_gossip};

use crate::config::MemberConfig;
use crate::ring::Layout;

/// One node as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberView {
    /// Node name.
    pub name: String,
    /// The node's id in versions (breaks timestamp ties; a hash of the name).
    #[serde(default)]
    pub node_id: u32,
    /// Partitions it holds a replica of in the layout (owned or not).
    #[serde(default)]
    pub partitions_held: u32,
    /// Internode address (as gossiped, else as configured).
    pub peer_addr: String,
    /// Zone, if any.
    pub zone: Option<String>,
    /// Up as this node sees it (this node is always up).
    pub up: bool,
    /// Milliseconds since this node last heard from it.
    pub last_seen_ms_ago: Option<u64>,
    /// Partitions whose token it holds in the layout.
    pub partitions_owned: u32,
    /// Gossip (UDP) address, once heard from.
    #[serde(default)]
    pub gossip_addr: Option<String>,
    /// Redis-protocol address clients connect to, once heard from.
    #[serde(default)]
    pub resp_addr: Option<String>,
    /// HTTP (admin, metrics) address, once heard from.
    #[serde(default)]
    pub http_addr: Option<String>,
    /// Layout version the node says it runs, once heard from.
    #[serde(default)]
    pub layout_version: Option<u64>,
    /// Digest (hex) of the layout the node says it runs, once heard from.
    #[serde(default)]
    pub layout_digest: Option<String>,
    /// True if it runs this node's layout version with a different
    /// assignment: the two disagree about where data lives.
    #[serde(default)]
    pub layout_mismatch: bool,
}

/// The cluster as one node sees it (`GET /v1/cluster`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterView {
    /// The node answering.
    pub node: String,
    /// Version of the layout in force.
    pub layout_version: u64,
    /// Digest (hex) of the layout in force.
    #[serde(default)]
    pub layout_digest: String,
    /// Partition count `Q`.
    pub partitions: u32,
    /// Every member, sorted by name.
    pub members: Vec<MemberView>,
}

/// What gossip says about one peer at one instant (its newest generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    pub name: String,
    pub up: bool,
    pub generation: u64,
    pub heartbeat: u64,
    pub gossip_addr: SocketAddr,
    pub peer_addr: Option<SocketAddr>,
    pub resp_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub zone: Option<String>,
    pub layout_version: Option<u64>,
    pub layout_digest: Option<u64>,
}

#[derive(Debug, Clone)]
struct PeerState {
    up: bool,
    last_seen: Option<Instant>,
    seen: Option<Observation>,
}

/// Who is in the cluster (`cluster.nodes`) and who is up (gossip).
#[derive(Debug)]
pub struct Membership {
    me: String,
    members: Vec<MemberConfig>,
    // NOTE: blocking lock, held only to read or update entries, never across an await.
    peers: RwLock<HashMap<String, PeerState>>,
    /// The gossip address this node advertises, once gossip started.
    own_gossip_addr: RwLock<Option<SocketAddr>>,
    /// The (version, digest) of the layout this node runs.
    own_layout: RwLock<Option<(u64, u64)>>,
    /// This node's (RESP, HTTP) addresses, once bound.
    own_client_addrs: RwLock<Option<(SocketAddr, SocketAddr)>>,
}

impl Membership {
    /// The membership of `members` (this node, `me`, included); peers are
    /// down until gossip hears from them.
    pub fn new(me: String, members: Vec<MemberConfig>) -> Arc<Self> {
        let peers = members
            .iter()
            .filter(|m| m.name != me)
            .map(|m| {
                let state = PeerState {
                    up: false,
                    last_seen: None,
                    seen: None,
                };
                (m.name.clone(), state)
            })
            .collect();
        Arc::new(Self {
            me,
            members,
            peers: RwLock::new(peers),
            own_gossip_addr: RwLock::new(None),
            own_layout: RwLock::new(None),
            own_client_addrs: RwLock::new(None),
        })
    }

    /// Records the layout this node runs, to compare with its peers'.
    pub fn set_own_layout(&self, version: u64, digest: u64) {
        *self.own_layout.write() = Some((version, digest));
    }

    /// True if `seen` runs this node's layout version with another digest.
    fn mismatched(own: Option<(u64, u64)>, seen: &Observation) -> bool {
        match (own, seen.layout_version, seen.layout_digest) {
            (Some((version, digest)), Some(v), Some(d)) => v == version && d != digest,
            _ => false,
        }
    }

    /// Records the gossip address this node advertises (for [`Self::view`]).
    pub fn set_own_gossip_addr(&self, addr: SocketAddr) {
        *self.own_gossip_addr.write() = Some(addr);
    }

    /// Records the RESP and HTTP addresses this node serves clients at.
    pub fn set_own_client_addrs(&self, resp: SocketAddr, http: SocketAddr) {
        *self.own_client_addrs.write() = Some((resp, http));
    }

    /// Applies one round of observations; returns the peers whose TCP
    /// address is new or changed, for the transport to follow.
    pub(crate) fn observe(&self, observations: Vec<Observation>) -> Vec<(String, SocketAddr)> {
        let now = Instant::now();
        let mut moved = Vec::new();
        let own_layout = *self.own_layout.read();
        let mut peers = self.peers.write();
        let mut seen_names = Vec::with_capacity(observations.len());
        for obs in observations {
            let Some(state) = peers.get_mut(&obs.name) else {
                tracing::debug!(peer = %obs.name, "gossip from a node outside cluster.nodes ignored");
                continue;
            };
            seen_names.push(obs.name.clone());
            let before = state.seen.as_ref();
            let beat = before
                .is_none_or(|b| (b.generation, b.heartbeat) != (obs.generation, obs.heartbeat));
            if obs.up && beat {
                state.last_seen = Some(now);
            }
            if let Some(addr) = obs.peer_addr
                && before.and_then(|b| b.peer_addr) != Some(addr)
            {
                moved.push((obs.name.clone(), addr));
            }
            let was = before.is_some_and(|b| Self::mismatched(own_layout, b));
            Self::transition(&obs.name, state, obs.up, obs.generation);
            if !was && Self::mismatched(own_layout, &obs) {
                // IMPORTANT: same version, different sets: quorums computed
                // by the two nodes need not intersect.
                tracing::error!(
                    peer = %obs.name,
                    version = obs.layout_version,
                    peer_digest = digest_hex(obs.layout_digest.unwrap_or_default()),
                    own_digest = digest_hex(own_layout.map_or(0, |(_, d)| d)),
                    "peer runs the same layout version with a different assignment: \
                     check that every node has the same cluster.nodes and the same ringkv release"
                );
            }
            state.seen = Some(obs);
        }
        let mismatched = peers
            .values()
            .filter_map(|p| p.seen.as_ref())
            .filter(|seen| Self::mismatched(own_layout, seen))
            .count();
        metrics::gauge!("ringkv_layout_mismatched_peers").set(mismatched as f64);
        // A peer gossip forgot entirely (garbage-collected) is down.
        for (name, state) in peers.iter_mut() {
            if !seen_names.contains(name) {
                let generation = state.seen.as_ref().map_or(0, |s| s.generation);
                Self::transition(name, state, false, generation);
            }
        }
        let live = peers.values().filter(|p| p.up).count();
        metrics::gauge!("ringkv_live_peers").set(live as f64);
        moved
    }

    fn transition(name: &str, state: &mut PeerState, up: bool, generation: u64) {
        if state.up == up {
            return;
        }
        state.up = up;
        if up {
            tracing::info!(peer = %name, generation, "peer is up");
        } else {
            tracing::warn!(peer = %name, generation, "peer is down");
        }
        metrics::counter!("ringkv_peer_state_changes_total", "peer" => name.to_owned())
            .increment(1);
    }

    /// True if `name` is this node, not a member, or live by gossip.
    pub fn is_up(&self, name: &str) -> bool {
        name == self.me || self.peers.read().get(name).is_none_or(|p| p.up)
    }

    /// The gossip address `name` was last heard from, if ever.
    pub fn gossip_addr(&self, name: &str) -> Option<SocketAddr> {
        let peers = self.peers.read();
        peers.get(name)?.seen.as_ref().map(|s| s.gossip_addr)
    }

    /// The cluster as this node sees it, under `layout`.
    pub fn view(&self, layout: &Layout) -> ClusterView {
        // NOTE: once per view: a digest serialises the whole layout.
        let digest = layout.digest();
        let own = Some((layout.version(), digest));
        let counts = layout.owned_counts();
        let held = layout.partition_counts();
        let peers = self.peers.read();
        let mut members: Vec<MemberView> = self
            .members
            .iter()
            .map(|m| {
                let index = layout.index_of(&m.name).map(usize::from);
                let count_of = |counts: &[u32]| index.and_then(|i| counts.get(i).copied());
                let mut view = MemberView {
                    name: m.name.clone(),
                    node_id: crate::version::node_id(&m.name),
                    partitions_held: count_of(&held).unwrap_or(0),
                    peer_addr: m.peer_addr.to_string(),
                    zone: m.zone.clone(),
                    up: true,
                    last_seen_ms_ago: Some(0),
                    partitions_owned: count_of(&counts).unwrap_or(0),
                    gossip_addr: None,
                    resp_addr: None,
                    http_addr: None,
                    layout_version: None,
                    layout_digest: None,
                    layout_mismatch: false,
                };
                if m.name == self.me {
                    view.layout_version = Some(layout.version());
                    view.layout_digest = Some(digest_hex(digest));
                    view.gossip_addr = self.own_gossip_addr.read().map(|a| a.to_string());
                    if let Some((resp, http)) = *self.own_client_addrs.read() {
                        view.resp_addr = Some(resp.to_string());
                        view.http_addr = Some(http.to_string());
                    }
                } else if let Some(p) = peers.get(&m.name) {
                    view.up = p.up;
                    view.last_seen_ms_ago = p.last_seen.map(|t| t.elapsed().as_millis() as u64);
                    if let Some(seen) = &p.seen {
                        if let Some(addr) = seen.peer_addr {
                            view.peer_addr = addr.to_string();
                        }
                        if seen.zone.is_some() {
                            view.zone = seen.zone.clone();
                        }
                        view.gossip_addr = Some(seen.gossip_addr.to_string());
                        view.resp_addr = seen.resp_addr.map(|a| a.to_string());
                        view.http_addr = seen.http_addr.map(|a| a.to_string());
                        view.layout_version = seen.layout_version;
                        view.layout_digest = seen.layout_digest.map(digest_hex);
                        view.layout_mismatch = Self::mismatched(own, seen);
                    }
                }
                view
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterView {
            node: self.me.clone(),
            layout_version: layout.version(),
            layout_digest: digest_hex(digest),
            partitions: layout.partitions(),
            members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::NodeSpec;

    fn member(name: &str) -> MemberConfig {
        MemberConfig {
            name: name.into(),
            peer_addr: "127.0.0.1:1".parse().unwrap(),
            zone: None,
            capacity: 1,
        }
    }

    fn obs(name: &str, up: bool, heartbeat: u64, port: u16) -> Observation {
        Observation {
            name: name.into(),
            up,
            generation: 1,
            heartbeat,
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            peer_addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            resp_addr: Some(SocketAddr::from(([127, 0, 0, 1], port + 1))),
            http_addr: None,
            zone: Some("z".into()),
            layout_version: Some(1),
            layout_digest: None,
        }
    }

    #[test]
    fn a_peer_with_the_same_layout_version_and_another_digest_is_flagged() {
        let members = vec![member("a"), member("b"), member("c")];
        let m = Membership::new("a".into(), members);
        let layout =
            Layout::initial(64, ["a", "b", "c"].into_iter().map(NodeSpec::new).collect()).unwrap();
        m.set_own_layout(layout.version(), layout.digest());
        let with = |name: &str, version: u64, digest: u64| Observation {
            layout_version: Some(version),
            layout_digest: Some(digest),
            ..obs(name, true, 1, 2)
        };
        m.observe(vec![
            with("b", 1, layout.digest()),
            with("c", 1, layout.digest() ^ 1),
        ]);
        let view = m.view(&layout);
        let flags: Vec<bool> = view.members.iter().map(|m| m.layout_mismatch).collect();
        assert_eq!(flags, [false, false, true]);
        assert_eq!(
            view.members[1].layout_digest.as_deref(),
            Some(view.layout_digest.as_str())
        );
        // A newer version elsewhere is a change in progress, not a mismatch.
        m.observe(vec![with("c", 2, 7)]);
        assert!(!m.view(&layout).members[2].layout_mismatch);
    }

    #[test]
    fn equal_layouts_have_equal_digests_and_different_ones_differ() {
        let nodes = |names: &[&str]| names.iter().map(|n| NodeSpec::new(*n)).collect();
        let a = Layout::initial(64, nodes(&["a", "b", "c"])).unwrap();
        let same = Layout::initial(64, nodes(&["a", "b", "c"])).unwrap();
        let other = Layout::initial(64, nodes(&["a", "b", "d"])).unwrap();
        assert_eq!(a.digest(), same.digest());
        assert_ne!(a.digest(), other.digest());
    }

    #[test]
    fn observations_mark_peers_up_and_down_and_report_moves() {
        let members = vec![member("a"), member("b"), member("c")];
        let m = Membership::new("a".into(), members);
        assert!(m.is_up("a") && !m.is_up("b"), "peers start down");
        let moved = m.observe(vec![obs("b", true, 1, 2), obs("c", false, 1, 3)]);
        assert_eq!(moved.len(), 2, "first addresses are news");
        assert!(m.is_up("b") && !m.is_up("c"));
        let layout =
            Layout::initial(64, ["a", "b", "c"].into_iter().map(NodeSpec::new).collect()).unwrap();
        let view = m.view(&layout);
        assert_eq!(
            view.members.iter().map(|m| m.up).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(view.members[1].peer_addr, "127.0.0.1:2");
        assert_eq!(view.members[1].resp_addr.as_deref(), Some("127.0.0.1:3"));
        assert_eq!(view.members[1].zone.as_deref(), Some("z"));
        assert_eq!(view.members[0].resp_addr, None, "not bound yet");
        m.set_own_client_addrs(
            "127.0.0.1:7379".parse().unwrap(),
            "127.0.0.1:7479".parse().unwrap(),
        );
        let own = &m.view(&layout).members[0];
        assert_eq!(own.resp_addr.as_deref(), Some("127.0.0.1:7379"));
        assert_eq!(own.http_addr.as_deref(), Some("127.0.0.1:7479"));
        assert_eq!(
            view.members.iter().map(|m| m.partitions_owned).sum::<u32>(),
            64
        );
        // Same addresses: nothing to move. A new port for c: one move.
        let moved = m.observe(vec![obs("b", true, 2, 2), obs("c", true, 2, 9)]);
        assert_eq!(moved, [("c".to_string(), "127.0.0.1:9".parse().unwrap())]);
        assert!(m.is_up("c"));
        // b vanishes from gossip: down.
        m.observe(vec![obs("c", true, 3, 9)]);
        assert!(!m.is_up("b"));
        assert!(m.is_up("stranger"), "non-members are not judged");
    }
}
