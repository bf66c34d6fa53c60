//! The clustered half of a node: the static layout, the peer server,
//! gossip membership, hinted handoff, anti-entropy and the quorum
//! coordinator behind the RESP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{StartError, ViewFn, node_id, start_resp};
use crate::aae::{AaeConfig, AaeHandle, Scheduler, spawn_aae};
use crate::config::{Config, ConfigError, EngineKind, FsyncPolicy};
use crate::coordinator::{
    HintConfig, HintDeliveryHandle, Hints, LocalStore, QuorumConfig, QuorumStore, ReplicaHandler,
    spawn_hint_delivery,
};
use crate::fault_injection::FaultInjector;
use crate::http::HttpServerHandle;
use crate::membership::{
    FilteredGossipTransport, GossipConfig, Membership, MembershipHandle, spawn_gossip,
};
use crate::net::{
    FaultTable, FaultyTransport, PeerConfig, PeerServerHandle, TcpTransport, bind_peer_server,
};
use crate::resp::RespServerHandle;
use crate::ring::{Layout, NodeSpec};
use crate::storage::meta::{LayoutRecord, check_layout};
use crate::storage::{Engine, MemoryEngine, StorageError};
use crate::version::{Clock, SystemClock};

/// Hint block cache: hints are written once and read once, in order.
const HINT_CACHE_BYTES: u64 = 4 << 20;

/// How often hints are offered to the targets that are up.
const HINT_DELIVERY_INTERVAL: Duration = Duration::from_secs(1);

/// The hints engine: its own database under `data_dir/hints`, so hint
/// churn never compacts with the data.
fn open_hint_engine(config: &Config) -> Result<Arc<dyn Engine>, StorageError> {
    Ok(match config.storage.engine {
        EngineKind::Memory => Arc::new(MemoryEngine::new()),
        EngineKind::Fjall => Arc::new(super::open_fjall(
            config,
            &config.storage.data_dir.join("hints"),
            HINT_CACHE_BYTES,
        )?),
    })
}

/// The layout of a static cluster: computed from `cluster.nodes`, the same
/// on every node.
fn static_layout(config: &Config) -> Result<Layout, StartError> {
    let specs = config
        .cluster
        .nodes
        .iter()
        .map(|m| {
            let spec = NodeSpec::new(m.name.clone()).with_capacity(m.capacity);
            match &m.zone {
                Some(zone) => spec.in_zone(zone.clone()),
                None => spec,
            }
        })
        .collect();
    let max_n = config
        .all_keyspaces()
        .iter()
        .map(|k| k.n)
        .max()
        .unwrap_or(1);
    let spread = max_n.clamp(1, u32::from(crate::ring::MAX_SPREAD)) as u8;
    Layout::initial_with_spread(config.cluster.partitions, specs, spread)
        .map_err(|e| StartError::Config(ConfigError::Invalid(format!("cluster layout: {e}"))))
}

/// The read speculation delay, saying so when a configured one is off
/// because it is not below the request timeout.
fn read_speculation(config: &Config) -> Option<Duration> {
    let speculation = config.cluster.read_speculation();
    if config.cluster.read_speculation_ms > 0 && speculation.is_none() {
        tracing::warn!(
            read_speculation_ms = config.cluster.read_speculation_ms,
            request_timeout_ms = config.cluster.request_timeout_ms,
            "read speculation off: its delay is not below the request timeout"
        );
    }
    speculation
}

/// The layout of a clustered node (none for a single node), computed once
/// for the whole start. On fjall it must be the one this node's data was
/// placed by ([`crate::storage::meta`]; recorded on the first start), so it
/// is checked before the data is opened. The memory engine keeps nothing
/// across starts: nothing to check.
pub(super) fn cluster_layout(config: &Config) -> Result<Option<Layout>, StartError> {
    if !config.is_clustered() {
        return Ok(None);
    }
    let layout = static_layout(config)?;
    if config.storage.engine == EngineKind::Fjall {
        check_recorded_layout(config, &layout)?;
    }
    Ok(Some(layout))
}

/// Refuses `layout` unless it is the one this node's data was placed by;
/// records it on the first start.
fn check_recorded_layout(config: &Config, layout: &Layout) -> Result<(), StartError> {
    let members = config
        .cluster
        .nodes
        .iter()
        .map(|m| {
            let mut described = m.name.clone();
            if let Some(zone) = &m.zone {
                described.push_str(&format!(" (zone {zone})"));
            }
            if m.capacity != 1 {
                described.push_str(&format!(" (capacity {})", m.capacity));
            }
            described
        })
        .collect();
    let record = LayoutRecord {
        digest: layout.digest(),
        spread: layout.spread(),
        members,
    };
    if check_layout(&config.storage.data_dir, &record)? {
        tracing::info!(
            data_dir = %config.storage.data_dir.display(),
            "cluster layout recorded in the data directory; a start with another cluster.nodes \
             will be refused"
        );
    }
    Ok(())
}

/// What a clustered node runs besides the single-node parts.
pub(super) struct ClusterParts {
    pub(super) resp: RespServerHandle,
    pub(super) peer: PeerServerHandle,
    pub(super) membership: MembershipHandle,
    pub(super) aae: Option<AaeHandle>,
    pub(super) view: ViewFn,
    pub(super) hints: HintParts,
}

/// The hinted-handoff parts of a clustered node.
pub(super) struct HintParts {
    pub(super) hints: Arc<Hints>,
    pub(super) delivery: HintDeliveryHandle,
    /// Permits of the coordinator's background replica writes.
    pub(super) background: Arc<tokio::sync::Semaphore>,
}

/// Starts the internode server, gossip membership and a RESP server over
/// the quorum coordinator.
pub(super) async fn start_cluster(
    config: &Config,
    layout: Layout,
    engine: &'static str,
    local: Arc<LocalStore>,
    faults: Option<&Arc<FaultInjector>>,
) -> Result<ClusterParts, StartError> {
    let secret = config.cluster.secret.clone().unwrap_or_default();
    let mut peer_config = PeerConfig::new(config.node.name.clone(), secret.clone());
    peer_config.request_timeout = Duration::from_millis(config.cluster.request_timeout_ms);
    let transport = cluster_transport(config, &peer_config, faults);
    tracing::info!(
        nodes = config.cluster.nodes.len(),
        partitions = layout.partitions(),
        version = layout.version(),
        "cluster layout computed"
    );
    let layout_version = layout.version();
    let layout_digest = layout.digest();
    let membership = Membership::new(config.node.name.clone(), config.cluster.nodes.clone());
    membership.set_own_layout(layout_version, layout_digest);
    let hints = open_hints(config, &local)?;
    let live = membership.clone();
    let is_up: crate::coordinator::Liveness = Arc::new(move |name: &str| live.is_up(name));
    let quorum = Arc::new(
        QuorumStore::new(
            quorum_config(config),
            local.clone(),
            transport.clone(),
            layout,
        )
        .with_hints(hints.clone())
        .with_liveness(is_up.clone())
        .with_background_repair_every(config.cluster.background_read_repair_every)
        .with_read_speculation(read_speculation(config)),
    );
    let background = quorum.background_writes();
    let delivery = spawn_hint_delivery(
        hints.clone(),
        transport.clone(),
        is_up,
        HINT_DELIVERY_INTERVAL,
    );
    let handler = Arc::new(ReplicaHandler::new(local.clone()).with_hints(hints.clone()));
    let peer = bind_peer_server(config.node.peer_addr, peer_config, handler)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.node.peer_addr,
            source,
        })?;
    let membership_handle = start_gossip(
        config,
        secret,
        peer.local_addr(),
        (layout_version, layout_digest),
        &membership,
        &transport,
        faults,
    )
    .await?;
    let aae = cluster_aae(config, local, transport, &quorum, &membership);
    let view_store = quorum.clone();
    let view: ViewFn = Arc::new(move || membership.view(&view_store.layout()));
    let resp = start_resp(config, engine, quorum).await?;
    Ok(ClusterParts {
        resp,
        peer,
        membership: membership_handle,
        aae,
        view,
        hints: HintParts {
            hints,
            delivery,
            background,
        },
    })
}

/// Who this node is to the quorum coordinator.
fn quorum_config(config: &Config) -> QuorumConfig {
    QuorumConfig {
        node_name: config.node.name.clone(),
        node_id: node_id(&config.node.name),
        partitions: config.cluster.partitions,
    }
}

/// The internode transport: TCP to the configured peer addresses (gossip
/// replaces them with what each peer publishes), under the fault layer.
fn cluster_transport(
    config: &Config,
    peer_config: &PeerConfig,
    faults: Option<&Arc<FaultInjector>>,
) -> Arc<FaultyTransport<TcpTransport>> {
    // NOTE: without fault injection the table stays empty and the fault
    // layer costs one atomic load per call.
    let links = faults.map_or_else(FaultTable::default, |f| f.links().clone());
    let transport = Arc::new(FaultyTransport::new(
        TcpTransport::new(peer_config.clone()),
        config.node.name.clone(),
        links,
        peer_config.request_timeout,
    ));
    for member in &config.cluster.nodes {
        if member.name != config.node.name {
            transport.inner().set_peer(&member.name, member.peer_addr);
        }
    }
    transport
}

/// The hint store, with the hints an earlier run left to deliver.
fn open_hints(config: &Config, local: &LocalStore) -> Result<Arc<Hints>, StartError> {
    let hints = Arc::new(Hints::open(
        open_hint_engine(config)?,
        HintConfig {
            window_ms: config.cluster.hint_window_ms,
            max_bytes_per_target: config.cluster.hint_max_bytes_per_target,
            sync_each: config.storage.fsync == FsyncPolicy::Always,
        },
        local.hlc().clone(),
    )?);
    let queued = hints.queued();
    if queued > 0 {
        tracing::info!(
            hints = queued,
            "hints loaded, to deliver when their targets are up"
        );
    }
    Ok(hints)
}

/// Starts gossip (through the fault layer's blocklist when faults are on);
/// the transport follows the peer addresses it reveals.
async fn start_gossip(
    config: &Config,
    secret: String,
    bound_peer_addr: SocketAddr,
    layout: (u64, u64),
    membership: &Arc<Membership>,
    transport: &Arc<FaultyTransport<TcpTransport>>,
    faults: Option<&Arc<FaultInjector>>,
) -> Result<MembershipHandle, StartError> {
    let gossip = gossip_config(config, secret, bound_peer_addr, layout);
    let gossip_addr = gossip.listen_addr;
    membership.set_own_gossip_addr(gossip.advertise_addr);
    let follow = transport.clone();
    let udp = chitchat::transport::UdpTransport;
    let filtered;
    let gossip_transport: &dyn chitchat::transport::Transport = match faults {
        Some(faults) => {
            faults.follow_membership(membership.clone());
            filtered = FilteredGossipTransport::new(udp, faults.gossip_blocklist().clone());
            &filtered
        }
        None => &udp,
    };
    spawn_gossip(
        gossip,
        membership.clone(),
        gossip_transport,
        Box::new(move |name, addr| follow.inner().set_peer(name, addr)),
    )
    .await
    .map_err(|e| StartError::Bind {
        addr: gossip_addr,
        source: std::io::Error::other(e.to_string()),
    })
}

/// The anti-entropy scheduler, unless `cluster.aae_interval_ms` is 0.
fn cluster_aae(
    config: &Config,
    local: Arc<LocalStore>,
    transport: Arc<FaultyTransport<TcpTransport>>,
    quorum: &Arc<QuorumStore<FaultyTransport<TcpTransport>>>,
    membership: &Arc<Membership>,
) -> Option<AaeHandle> {
    (config.cluster.aae_interval_ms > 0).then(|| {
        let layout_store = quorum.clone();
        let up = membership.clone();
        spawn_aae(Scheduler::new(
            AaeConfig {
                node_name: config.node.name.clone(),
                interval: Duration::from_millis(config.cluster.aae_interval_ms),
                max_partitions_per_sec: config.cluster.aae_max_partitions_per_sec,
                tombstone_grace_ms: config.storage.tombstone_grace_ms,
            },
            local,
            transport,
            Arc::new(move || layout_store.layout()),
            Arc::new(move |peer: &str| up.is_up(peer)),
        ))
    })
}

/// Gossips where clients reach this node, once its listeners are bound.
pub(super) async fn announce_client_addrs(
    config: &Config,
    membership: Option<&MembershipHandle>,
    resp: &RespServerHandle,
    http: &HttpServerHandle,
) {
    if let Some(membership) = membership {
        let resp_addr = advertised(config, resp.local_addr());
        let http_addr = advertised(config, http.local_addr());
        membership.publish_client_addrs(resp_addr, http_addr).await;
    }
}

/// `addr` as peers and clients should use it: an unspecified listen IP
/// (`0.0.0.0`) becomes the IP of this node's `cluster.nodes` entry.
fn advertised(config: &Config, mut addr: SocketAddr) -> SocketAddr {
    let me = config
        .cluster
        .nodes
        .iter()
        .find(|m| m.name == config.node.name);
    if addr.ip().is_unspecified()
        && let Some(me) = me
    {
        addr.set_ip(me.peer_addr.ip());
    }
    addr
}

/// What this node gossips. An unspecified listen IP (`0.0.0.0`) is
/// advertised as the IP of this node's `cluster.nodes` entry.
fn gossip_config(
    config: &Config,
    secret: String,
    bound_peer_addr: SocketAddr,
    (layout_version, layout_digest): (u64, u64),
) -> GossipConfig {
    let me = config
        .cluster
        .nodes
        .iter()
        .find(|m| m.name == config.node.name);
    let advertise = |addr| advertised(config, addr);
    let listen_addr = config.gossip_addr();
    GossipConfig {
        node_name: config.node.name.clone(),
        generation: SystemClock.now_ms(),
        listen_addr,
        advertise_addr: advertise(listen_addr),
        seeds: config.gossip_seeds(),
        cluster_secret: secret,
        gossip_interval: Duration::from_millis(config.cluster.gossip_interval_ms),
        peer_addr: advertise(bound_peer_addr),
        zone: me.and_then(|m| m.zone.clone()),
        layout_version,
        layout_digest,
    }
}
