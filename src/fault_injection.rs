//! Fault injection in the real binary, for the fault tests: off unless
//! `debug.fault_injection` (`ringkv server --enable-fault-injection`).
//!
//! A node's [`FaultInjector`] holds the faults it applies to its own traffic:
//! internode calls go through a [`FaultyTransport`] reading its
//! [`FaultTable`], gossip datagrams through a filter reading its
//! [`GossipBlocklist`], and the HLC reads an [`OffsetClock`]. A partition is
//! made by telling every node about its side (`POST /v1/debug/faults`).
//!
//! Invariant: [`FaultInjector::apply`] replaces every fault at once, so the
//! state is exactly the last spec applied; the empty spec heals everything.
//! A refused spec changes nothing.
//!
//! [`FaultyTransport`]: crate::net::FaultyTransport

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::MemberConfig;
use crate::membership::{GossipBlocklist, Membership};
use crate::net::FaultTable;
use crate::version::{OffsetClock, SystemClock};

/// Longest delay a spec may put on a link, ms.
pub const MAX_DELAY_MS: u64 = 60_000;
/// Largest clock offset a spec may set, ms (one day).
pub const MAX_CLOCK_OFFSET_MS: i64 = 86_400_000;

/// Every fault of one node, as `POST /v1/debug/faults` takes it (JSON).
/// Peers are named as in `cluster.nodes`; each fault covers both
/// directions of the link between this node and the peer, for the calls
/// and gossip this node makes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// Peers cut off: calls to them fail at once (`unreachable`), and gossip
    /// datagrams to and from them are dropped, so they are seen down.
    pub cut: Vec<String>,
    /// Per peer, the probability in [0, 1] that a request to it, or its
    /// response, is lost (the call then times out; a lost response means
    /// the request was applied).
    pub drop: BTreeMap<String, f64>,
    /// Per peer, a delay added to each request to it and to each response
    /// from it, ms (a round trip costs twice this).
    pub delay_ms: BTreeMap<String, u64>,
    /// Added to this node's wall clock (the HLC's physical time, expiry),
    /// ms; negative is behind.
    pub clock_offset_ms: i64,
}

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    /// A peer that is not in `cluster.nodes`, or this node itself.
    #[error("{0:?} is not a peer of this node (cluster.nodes, this node excluded)")]
    UnknownPeer(String),
    /// A value out of its range.
    #[error("{0}")]
    OutOfRange(String),
}

/// The faults of one node and the hooks they act through.
#[derive(Debug)]
pub struct FaultInjector {
    me: String,
    members: Vec<MemberConfig>,
    links: FaultTable,
    gossip: GossipBlocklist,
    clock: Arc<OffsetClock<SystemClock>>,
    /// Where gossip last heard each peer from (set once gossip runs).
    membership: OnceLock<Arc<Membership>>,
    // NOTE: a plain mutex, held to swap the spec, never across an await.
    current: Mutex<FaultSpec>,
}

impl FaultInjector {
    /// No faults yet, for node `me` of `members`; drop decisions derive
    /// from `seed`.
    pub fn new(me: impl Into<String>, members: Vec<MemberConfig>, seed: u64) -> Self {
        Self {
            me: me.into(),
            members,
            links: FaultTable::new(seed),
            gossip: GossipBlocklist::default(),
            clock: Arc::new(OffsetClock::new(SystemClock)),
            membership: OnceLock::new(),
            current: Mutex::new(FaultSpec::default()),
        }
    }

    /// The link faults, for the node's [`crate::net::FaultyTransport`].
    pub fn links(&self) -> &FaultTable {
        &self.links
    }

    /// The gossip blocklist, for the node's gossip transport.
    pub fn gossip_blocklist(&self) -> &GossipBlocklist {
        &self.gossip
    }

    /// The skewable clock, for the node's HLC.
    pub fn clock(&self) -> Arc<OffsetClock<SystemClock>> {
        self.clock.clone()
    }

    /// Lets cuts find peers at the gossip address they were heard from.
    pub fn follow_membership(&self, membership: Arc<Membership>) {
        let _ = self.membership.set(membership);
    }

    /// The faults in force.
    pub fn current(&self) -> FaultSpec {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Checks `spec`, then replaces every fault with it.
    pub fn apply(&self, spec: FaultSpec) -> Result<(), FaultSpecError> {
        self.check(&spec)?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let me = self.me.as_str();
        self.links.heal_all();
        for peer in &spec.cut {
            self.links.cut_both(me, peer);
        }
        for (peer, p) in &spec.drop {
            self.links.set_drop_probability(me, peer, *p);
            self.links.set_drop_probability(peer, me, *p);
        }
        for (peer, ms) in &spec.delay_ms {
            let delay = Duration::from_millis(*ms);
            self.links.set_delay(me, peer, delay);
            self.links.set_delay(peer, me, delay);
        }
        self.gossip
            .set(spec.cut.iter().flat_map(|peer| self.gossip_addrs(peer)));
        self.clock.set_offset_ms(spec.clock_offset_ms);
        tracing::warn!(
            cut = ?spec.cut,
            drop = ?spec.drop,
            delay_ms = ?spec.delay_ms,
            clock_offset_ms = spec.clock_offset_ms,
            "fault injection: faults replaced"
        );
        *current = spec;
        Ok(())
    }

    fn check(&self, spec: &FaultSpec) -> Result<(), FaultSpecError> {
        let peers = spec
            .cut
            .iter()
            .chain(spec.drop.keys())
            .chain(spec.delay_ms.keys());
        for peer in peers {
            if peer == &self.me || !self.members.iter().any(|m| &m.name == peer) {
                return Err(FaultSpecError::UnknownPeer(peer.clone()));
            }
        }
        let range = |msg: String| Err(FaultSpecError::OutOfRange(msg));
        if let Some((peer, p)) = spec.drop.iter().find(|(_, p)| !(0.0..=1.0).contains(*p)) {
            return range(format!("drop[{peer:?}] = {p}: must be between 0 and 1"));
        }
        if let Some((peer, ms)) = spec.delay_ms.iter().find(|(_, ms)| **ms > MAX_DELAY_MS) {
            return range(format!("delay_ms[{peer:?}] = {ms}: at most {MAX_DELAY_MS}"));
        }
        if spec.clock_offset_ms.abs() > MAX_CLOCK_OFFSET_MS {
            return range(format!(
                "clock_offset_ms = {}: at most {MAX_CLOCK_OFFSET_MS} either way",
                spec.clock_offset_ms
            ));
        }
        Ok(())
    }

    /// Where `peer` gossips: its `peer_addr` (the default gossip address)
    /// and the address gossip last heard it from.
    fn gossip_addrs(&self, peer: &str) -> Vec<SocketAddr> {
        let configured = self
            .members
            .iter()
            .filter(|m| m.name == peer)
            .map(|m| m.peer_addr);
        let heard = self.membership.get().and_then(|m| m.gossip_addr(peer));
        configured.chain(heard).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Clock;

    fn injector() -> FaultInjector {
        let members = (1..=3)
            .map(|i| MemberConfig {
                name: format!("n{i}"),
                peer_addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                zone: None,
                capacity: 1,
            })
            .collect();
        FaultInjector::new("n1", members, 7)
    }

    fn spec(json: &str) -> FaultSpec {
        serde_json::from_str(json).expect("valid spec")
    }

    #[test]
    fn a_spec_replaces_every_fault_and_the_empty_one_heals() {
        let f = injector();
        let before = f.clock().now_ms();
        f.apply(spec(
            r#"{"cut":["n2"],"drop":{"n3":0.5},"delay_ms":{"n3":20},"clock_offset_ms":-5000}"#,
        ))
        .unwrap();
        assert!(f.links().is_cut("n1", "n2") && f.links().is_cut("n2", "n1"));
        assert!(!f.links().is_cut("n1", "n3"));
        let n2: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        assert!(f.gossip_blocklist().is_blocked(&n2));
        assert!(f.clock().now_ms() + 4000 < before + 1000, "clock is behind");
        assert_eq!(f.current().delay_ms["n3"], 20);

        f.apply(spec(r#"{"cut":["n3"]}"#)).unwrap();
        assert!(!f.links().is_cut("n1", "n2"), "replace-all: n2 healed");
        assert!(f.links().is_cut("n3", "n1"));
        assert!(!f.gossip_blocklist().is_blocked(&n2));
        assert_eq!(f.clock().offset_ms(), 0);

        f.apply(FaultSpec::default()).unwrap();
        assert!(!f.links().is_active(), "the empty spec heals everything");
    }

    #[test]
    fn bad_specs_are_refused_and_change_nothing() {
        let f = injector();
        f.apply(spec(r#"{"cut":["n2"]}"#)).unwrap();
        for (json, want) in [
            (r#"{"cut":["n9"]}"#, "\"n9\" is not a peer"),
            (r#"{"cut":["n1"]}"#, "\"n1\" is not a peer"),
            (r#"{"drop":{"n2":1.5}}"#, "between 0 and 1"),
            (r#"{"delay_ms":{"n2":600000}}"#, "at most"),
            (r#"{"clock_offset_ms":-100000000}"#, "either way"),
        ] {
            let err = f.apply(spec(json)).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        assert_eq!(f.current().cut, ["n2"], "a refused spec changes nothing");
        assert!(serde_json::from_str::<FaultSpec>(r#"{"partition":1}"#).is_err());
    }
}
