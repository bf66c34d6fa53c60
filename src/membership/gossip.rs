//! The chitchat instance of one node and the task that copies its view into
//! [`Membership`].
//!
//! Failure detection timings (defaults, loopback): a gossip round every
//! 250 ms to up to 3 live peers (plus a seed and, sometimes, a dead node);
//! phi = time since the last heartbeat / mean heartbeat interval, and a peer
//! is down once phi > [`PHI_THRESHOLD`]. Heartbeats of a peer arrive every
//! ~125-250 ms, so a killed node is declared down ~1.5-2.5 s after its last
//! heartbeat, and the sync task notices within one more interval. A restarted
//! node has a new generation id (its start time in ms), so it is a new chitchat
//! node: it is live after two heartbeats, ~0.5 s after its first gossip round.
//! The dead generation lingers, unreported, until [`DEAD_NODE_GRACE`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::Transport as GossipTransport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion, spawn_chitchat,
};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::{Membership, Observation};

/// Chitchat key of the node's internode (TCP) address.
pub const KEY_PEER_ADDR: &str = "peer_addr";
/// Chitchat key of the node's zone (empty: none).
pub const KEY_ZONE: &str = "zone";
/// Chitchat key of the node's Redis-protocol (client) address.
pub const KEY_RESP_ADDR: &str = "resp_addr";
/// Chitchat key of the node's HTTP (admin, metrics) address.
pub const KEY_HTTP_ADDR: &str = "http_addr";
/// Chitchat key of the layout version the node runs.
pub const KEY_LAYOUT_VERSION: &str = "layout_version";
/// Chitchat key of the digest ([`crate::ring::Layout::digest`], hex) of
/// the layout the node runs.
pub const KEY_LAYOUT_DIGEST: &str = "layout_digest";

/// A layout digest as gossiped and shown: 16 hex digits.
pub fn digest_hex(digest: u64) -> String {
    format!("{digest:016x}")
}

/// Phi above which a peer is down. With heartbeats every ~0.2 s this is
/// ~2 s of silence: under the 5 s bar, above scheduler hiccups on 2 cores.
pub const PHI_THRESHOLD: f64 = 10.0;
/// Heartbeat intervals kept per peer for the phi estimate.
const SAMPLING_WINDOW: usize = 100;
/// How long a dead generation of a node is kept before it is forgotten.
pub const DEAD_NODE_GRACE: Duration = Duration::from_secs(600);

/// What a node gossips and how.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's name (the chitchat node id).
    pub node_name: String,
    /// Distinguishes this run from earlier ones; must grow across restarts
    /// (the start time in ms).
    pub generation: u64,
    /// UDP address to bind.
    pub listen_addr: SocketAddr,
    /// UDP address peers gossip back to.
    pub advertise_addr: SocketAddr,
    /// Gossip addresses (`ip:port` or `host:port`) to contact first.
    pub seeds: Vec<String>,
    /// The cluster secret; only a hash of it is gossiped, as the cluster id.
    pub cluster_secret: String,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Internode TCP address published to peers.
    pub peer_addr: SocketAddr,
    /// Zone published to peers.
    pub zone: Option<String>,
    /// Layout version published to peers.
    pub layout_version: u64,
    /// Layout digest published to peers.
    pub layout_digest: u64,
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The UDP socket could not be opened.
    #[error("cannot start gossip on {addr}: {reason}")]
    Start {
        /// The listen address.
        addr: SocketAddr,
        /// What chitchat said.
        reason: String,
    },
}

/// Called with a peer's name and TCP address when gossip reveals a new one.
pub type OnPeerAddr = Box<dyn Fn(&str, SocketAddr) + Send + Sync>;

/// The running gossip: chitchat's server and the sync task.
pub struct MembershipHandle {
    chitchat: ChitchatHandle,
    membership: Arc<Membership>,
    shutdown_tx: watch::Sender<bool>,
    sync_task: JoinHandle<()>,
}

impl std::fmt::Debug for MembershipHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipHandle")
            .field("id", self.chitchat.chitchat_id())
            .finish_non_exhaustive()
    }
}

impl MembershipHandle {
    /// Publishes a new layout (its version and digest) to the cluster.
    pub async fn publish_layout(&self, version: u64, digest: u64) {
        self.chitchat
            .with_chitchat(|c| {
                let state = c.self_node_state();
                state.set(KEY_LAYOUT_VERSION, version);
                state.set(KEY_LAYOUT_DIGEST, digest_hex(digest));
            })
            .await;
    }

    /// Publishes the addresses clients reach this node at (its RESP and
    /// HTTP listeners), once they are bound.
    pub async fn publish_client_addrs(&self, resp: SocketAddr, http: SocketAddr) {
        self.membership.set_own_client_addrs(resp, http);
        self.chitchat
            .with_chitchat(|c| {
                let state = c.self_node_state();
                state.set(KEY_RESP_ADDR, resp.to_string());
                state.set(KEY_HTTP_ADDR, http.to_string());
            })
            .await;
    }

    /// Stops syncing and gossiping; peers will see this node down.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.sync_task.await;
        if let Err(e) = self.chitchat.shutdown().await {
            tracing::warn!(error = %e, "gossip stopped with an error");
        }
    }
}

/// The chitchat cluster id: nodes whose ids differ refuse each other's gossip.
pub fn cluster_id(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"ringkv-cluster-id\0")
        .chain_update(secret.as_bytes())
        .finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("ringkv-{hex}")
}

fn chitchat_config(config: &GossipConfig) -> ChitchatConfig {
    let interval = config.gossip_interval;
    ChitchatConfig {
        chitchat_id: ChitchatId::new(
            config.node_name.as_str(),
            config.generation,
            config.advertise_addr,
        ),
        cluster_id: cluster_id(&config.cluster_secret),
        gossip_interval: interval,
        listen_addr: config.listen_addr,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: PHI_THRESHOLD,
            sampling_window_size: SAMPLING_WINDOW,
            // NOTE: a gap longer than this (a pause) is not a sample, so one
            // stall does not inflate the mean and slow later detection.
            max_interval: interval * 8,
            initial_interval: interval,
            dead_node_grace_period: DEAD_NODE_GRACE,
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V0,
    }
}

/// Starts gossiping over `transport` and a task that keeps `membership` in
/// step and calls `on_peer_addr` for new peer addresses.
pub async fn spawn_gossip(
    config: GossipConfig,
    membership: Arc<Membership>,
    transport: &dyn GossipTransport,
    on_peer_addr: OnPeerAddr,
) -> Result<MembershipHandle, GossipError> {
    let initial = vec![
        (KEY_PEER_ADDR.to_owned(), config.peer_addr.to_string()),
        (KEY_ZONE.to_owned(), config.zone.clone().unwrap_or_default()),
        (
            KEY_LAYOUT_VERSION.to_owned(),
            config.layout_version.to_string(),
        ),
        (
            KEY_LAYOUT_DIGEST.to_owned(),
            digest_hex(config.layout_digest),
        ),
    ];
    let chitchat = spawn_chitchat(chitchat_config(&config), initial, transport)
        .await
        .map_err(|e| GossipError::Start {
            addr: config.listen_addr,
            reason: format!("{e:#}"),
        })?;
    tracing::info!(
        gossip_addr = %config.advertise_addr,
        generation = config.generation,
        seeds = ?config.seeds,
        "gossip started"
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let sync_task = tokio::spawn(sync_loop(
        chitchat.chitchat(),
        membership.clone(),
        on_peer_addr,
        config.gossip_interval,
        shutdown_rx,
    ));
    Ok(MembershipHandle {
        chitchat,
        membership,
        shutdown_tx,
        sync_task,
    })
}

/// Copies chitchat's view into `membership` every interval, and at once when
/// the set of live nodes or their state changes.
async fn sync_loop(
    chitchat: Arc<Mutex<Chitchat>>,
    membership: Arc<Membership>,
    on_peer_addr: OnPeerAddr,
    interval: Duration,
    mut shutdown_rx: watch::Receiver<bool>,
) {
    let mut live_rx = chitchat.lock().await.live_nodes_watcher();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = live_rx.changed() => if changed.is_err() { return },
            _ = shutdown_rx.changed() => return,
        }
        let observations = observe(&*chitchat.lock().await, &membership.me);
        for (name, addr) in membership.observe(observations) {
            tracing::info!(peer = %name, %addr, "peer address learned by gossip");
            on_peer_addr(&name, addr);
        }
    }
}

/// One observation per peer name: its newest live generation, else its
/// newest generation.
fn observe(chitchat: &Chitchat, me: &str) -> Vec<Observation> {
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut newest: HashMap<&str, (bool, &ChitchatId, &NodeState)> = HashMap::new();
    for (id, state) in chitchat.node_states() {
        if &*id.node_id == me {
            continue;
        }
        let up = live.contains(id);
        let entry = newest.entry(&id.node_id).or_insert((up, id, state));
        if (up, id.generation_id) > (entry.0, entry.1.generation_id) {
            *entry = (up, id, state);
        }
    }
    newest
        .into_iter()
        .map(|(name, (up, id, state))| Observation {
            name: name.to_owned(),
            up,
            generation: id.generation_id,
            heartbeat: u64::from(state.heartbeat()),
            gossip_addr: id.gossip_advertise_addr,
            peer_addr: state.get(KEY_PEER_ADDR).and_then(|a| a.parse().ok()),
            resp_addr: state.get(KEY_RESP_ADDR).and_then(|a| a.parse().ok()),
            http_addr: state.get(KEY_HTTP_ADDR).and_then(|a| a.parse().ok()),
            zone: state
                .get(KEY_ZONE)
                .filter(|z| !z.is_empty())
                .map(str::to_owned),
            layout_version: state.get(KEY_LAYOUT_VERSION).and_then(|v| v.parse().ok()),
            layout_digest: state
                .get(KEY_LAYOUT_DIGEST)
                .and_then(|d| u64::from_str_radix(d, 16).ok()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use chitchat::transport::ChannelTransport;

    use super::*;
    use crate::config::MemberConfig;

    const SECRET: &str = "unit-test-secret-0123";

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn members() -> Vec<MemberConfig> {
        (1..=3)
            .map(|i| MemberConfig {
                name: format!("n{i}"),
                peer_addr: addr(9000 + i),
                zone: None,
                capacity: 1,
            })
            .collect()
    }

    type Learned = Arc<parking_lot::Mutex<Vec<(String, SocketAddr)>>>;

    /// Node `i` of 3, gossiping on port 100 + i, seeded with node 1.
    async fn start(
        i: u16,
        net: &ChannelTransport,
        secret: &str,
    ) -> (Arc<Membership>, MembershipHandle, Learned) {
        let name = format!("n{i}");
        let membership = Membership::new(name.clone(), members());
        let learned: Learned = Arc::default();
        let sink = learned.clone();
        let config = GossipConfig {
            node_name: name,
            generation: 1,
            listen_addr: addr(100 + i),
            advertise_addr: addr(100 + i),
            seeds: vec![addr(101).to_string()],
            cluster_secret: secret.into(),
            gossip_interval: Duration::from_millis(50),
            peer_addr: addr(9100 + i),
            zone: Some(format!("z{i}")),
            layout_version: 7,
            layout_digest: 0xabc0 + u64::from(i),
        };
        let handle = spawn_gossip(
            config,
            membership.clone(),
            net,
            Box::new(move |n, a| sink.lock().push((n.to_owned(), a))),
        )
        .await
        .expect("gossip starts on the channel transport");
        (membership, handle, learned)
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !cond() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "timed out waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    #[tokio::test]
    async fn three_members_converge_and_a_stopped_one_is_marked_down() {
        let net = ChannelTransport::default();
        let (m1, h1, learned1) = start(1, &net, SECRET).await;
        let (m2, h2, _) = start(2, &net, SECRET).await;
        let (m3, h3, _) = start(3, &net, SECRET).await;
        let all_up = || {
            ["n1", "n2", "n3"]
                .iter()
                .all(|n| m1.is_up(n) && m2.is_up(n) && m3.is_up(n))
        };
        wait_until("every member sees every other up", all_up).await;
        let layout = crate::ring::Layout::initial(
            16,
            ["n1", "n2", "n3"]
                .into_iter()
                .map(crate::ring::NodeSpec::new)
                .collect(),
        )
        .unwrap();
        wait_until("n2 learns n3's state", || {
            let view = m2.view(&layout);
            let n3 = &view.members[2];
            n3.peer_addr == "127.0.0.1:9103"
                && n3.zone.as_deref() == Some("z3")
                && n3.layout_version == Some(7)
                && n3.layout_digest.as_deref() == Some("000000000000abc3")
        })
        .await;
        wait_until("n1 hands both addresses to the transport", || {
            let mut got = learned1.lock().clone();
            got.sort();
            got == [("n2".into(), addr(9102)), ("n3".into(), addr(9103))]
        })
        .await;

        h2.publish_layout(8, 0xabc2).await;
        wait_until("a new layout version spreads", || {
            m3.view(&layout).members[1].layout_version == Some(8)
        })
        .await;

        h3.shutdown().await;
        let down = wait_until("n1 and n2 see n3 down", || {
            !m1.is_up("n3") && !m2.is_up("n3")
        })
        .await;
        assert!(down < Duration::from_secs(5), "n3 seen down after {down:?}");
        assert!(m1.is_up("n2"), "the survivors stay up");
        h1.shutdown().await;
        h2.shutdown().await;
    }

    #[tokio::test]
    async fn nodes_with_another_secret_do_not_join() {
        let net = ChannelTransport::default();
        let (m1, h1, _) = start(1, &net, SECRET).await;
        let (m2, h2, _) = start(2, &net, "some-other-cluster-secret").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!m1.is_up("n2") && !m2.is_up("n1"));
        assert_ne!(cluster_id(SECRET), cluster_id("some-other-cluster-secret"));
        assert!(!cluster_id(SECRET).contains(SECRET));
        h1.shutdown().await;
        h2.shutdown().await;
    }
}
