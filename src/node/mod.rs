//! One ringkv node wired together from a [`Config`]: engine, store, expiry
//! sweep, fsync task, RESP and HTTP servers; in a cluster also the peer
//! server, gossip and anti-entropy.
//!
//! Invariant: [`Node::shutdown`] stops the front doors before the final
//! fsync, so every write acknowledged before it returns is on disk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::aae::{AaeHandle, RepairLog};
use crate::config::{Config, ConfigError, EngineKind, FsyncPolicy};
use crate::coordinator::{
    Hints, Keyspaces, LocalStore, LocalStoreConfig, MAX_LATE_WRITES, Store, StoreError,
    SweepConfig, SweepHandle, spawn_expiry_sweep,
};
use crate::fault_injection::FaultInjector;
use crate::http::{
    AntiEntropyView, HttpServerHandle, HttpState, PartitionExchange, RepairView, metrics_handle,
    spawn_http,
};
use crate::membership::{ClusterView, MemberView, MembershipHandle};
use crate::net::PeerServerHandle;
use crate::periodic::Periodic;
use crate::resp::codec::DecodeLimits;
use crate::resp::{RespConfig, RespServer, RespServerHandle};
use crate::storage::meta::{MetaError, check_partitions};
use crate::storage::{Engine, FjallEngine, MemoryEngine, StorageError};
use crate::version::{Clock, Hlc, SystemClock, node_id};
use cluster::{HintParts, announce_client_addrs, start_cluster};

mod cluster;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The storage engine could not open.
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    /// The store could not load.
    #[error("cannot load data: {0}")]
    Store(#[from] StoreError),
    /// The data directory was created for another layout of keys.
    #[error(transparent)]
    DataDir(#[from] MetaError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running node.
pub struct Node {
    store: Arc<LocalStore>,
    resp: RespServerHandle,
    http: HttpServerHandle,
    peer: Option<PeerServerHandle>,
    membership: Option<MembershipHandle>,
    hints: Option<HintParts>,
    aae: Option<AaeHandle>,
    sweep: SweepHandle,
    fsync_task: Option<Periodic>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("resp", &self.resp.local_addr())
            .field("http", &self.http.local_addr())
            .finish_non_exhaustive()
    }
}

fn open_engine(config: &Config) -> Result<Arc<dyn Engine>, StorageError> {
    Ok(match config.storage.engine {
        EngineKind::Memory => Arc::new(MemoryEngine::new()),
        EngineKind::Fjall => Arc::new(open_fjall(
            config,
            &config.storage.data_dir,
            config.storage.cache_bytes,
        )?),
    })
}

/// Journal bytes between two background fsyncs (Redis fsyncs its AOF
/// rewrite every 4 MB for the same reason: no long fsync later).
const JOURNAL_SYNC_BYTES: u64 = 4 << 20;

/// A fjall database in `dir`; under `everysec` its journal is also fsynced
/// in the background every [`JOURNAL_SYNC_BYTES`]. (`always` fsyncs every
/// commit already; `no` leaves fsyncs to the OS.)
pub(crate) fn open_fjall(
    config: &Config,
    dir: &std::path::Path,
    cache_bytes: u64,
) -> Result<FjallEngine, StorageError> {
    let engine = FjallEngine::open(dir, cache_bytes)?;
    match config.storage.fsync {
        FsyncPolicy::Everysec => engine.with_incremental_sync(JOURNAL_SYNC_BYTES),
        FsyncPolicy::Always | FsyncPolicy::No => Ok(engine),
    }
}

/// The fault hooks, if `debug.fault_injection` is on.
fn fault_injector(config: &Config) -> Option<Arc<FaultInjector>> {
    if !config.debug.fault_injection {
        return None;
    }
    tracing::warn!(
        "fault injection enabled: POST /v1/debug/faults can cut this node's links and skew its clock; \
         for tests only"
    );
    let seed = node_id(&config.node.name).into();
    Some(Arc::new(FaultInjector::new(
        config.node.name.clone(),
        config.cluster.nodes.clone(),
        seed,
    )))
}

/// The node's own replica store over `engine`, its HLC reading `clock`.
fn open_store(
    config: &Config,
    engine: Arc<dyn Engine>,
    keyspaces: Keyspaces,
    clock: Arc<dyn Clock>,
) -> Result<Arc<LocalStore>, StoreError> {
    Ok(Arc::new(LocalStore::open(LocalStoreConfig {
        engine,
        hlc: Arc::new(Hlc::new(clock, config.limits.max_clock_skew_ms)),
        node: node_id(&config.node.name),
        node_name: config.node.name.clone(),
        partitions: config.cluster.partitions,
        keyspaces,
        fsync: config.storage.fsync,
    })?))
}

/// `GET /v1/repair`: the hints queued here and the anti-entropy rounds.
fn repair_view(
    config: &Config,
    hints: Option<Arc<Hints>>,
    aae: Option<&AaeHandle>,
) -> Arc<dyn Fn() -> RepairView + Send + Sync> {
    let repair_log = aae.map(AaeHandle::repair_log);
    let node_name = config.node.name.clone();
    let aae_interval_ms = config.cluster.aae_interval_ms;
    Arc::new(move || RepairView {
        node: node_name.clone(),
        hints: hints.as_ref().map(|h| h.queues()).unwrap_or_default(),
        anti_entropy: repair_log
            .as_ref()
            .map(|log| anti_entropy_view(log, aae_interval_ms)),
    })
}

impl Node {
    /// Validates `config`, opens the data and starts serving.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        config.validate()?;
        if config.storage.engine == EngineKind::Fjall
            && check_partitions(&config.storage.data_dir, config.cluster.partitions)?
        {
            tracing::info!(
                partitions = config.cluster.partitions,
                data_dir = %config.storage.data_dir.display(),
                "partition count recorded in the data directory; it is fixed from now on"
            );
        }
        let layout = cluster::cluster_layout(&config)?;
        let metrics = metrics_handle();
        let engine = open_engine(&config)?;
        let engine_kind = engine.kind();
        let keyspaces = Keyspaces::new(config.all_keyspaces());
        let faults = fault_injector(&config);
        let clock: Arc<dyn Clock> = match &faults {
            Some(faults) => faults.clock(),
            None => Arc::new(SystemClock),
        };
        let store = open_store(&config, engine, keyspaces.clone(), clock)?;
        let keys: u64 = store.stats().keys.iter().sum();
        tracing::info!(engine = engine_kind, keys, "data loaded");
        let sweep = spawn_expiry_sweep(
            store.clone(),
            SweepConfig {
                interval: Duration::from_millis(config.storage.expiry_sweep_interval_ms),
                batch: config.storage.expiry_sweep_batch,
                tombstone_grace_ms: config.storage.tombstone_grace_ms,
                partitions: config.cluster.partitions,
            },
        );
        let (resp, peer, membership, aae, cluster_view, hints) = if let Some(layout) = layout {
            let parts =
                start_cluster(&config, layout, engine_kind, store.clone(), faults.as_ref()).await?;
            (
                parts.resp,
                Some(parts.peer),
                Some(parts.membership),
                parts.aae,
                parts.view,
                Some(parts.hints),
            )
        } else {
            let resp = start_resp(&config, engine_kind, store.clone()).await?;
            let view = single_node_view(&config, resp.local_addr());
            (resp, None, None, None, view, None)
        };
        let fsync_task = (config.storage.fsync == FsyncPolicy::Everysec).then(|| {
            let hints = hints.as_ref().map(|h| h.hints.clone());
            fsync_every_second(store.clone(), hints)
        });
        let repair = repair_view(
            &config,
            hints.as_ref().map(|h| h.hints.clone()),
            aae.as_ref(),
        );
        let stats_store = store.clone();
        let http_state = HttpState {
            node_name: config.node.name.clone(),
            keyspace_names: keyspaces.iter().map(|k| k.name.clone()).collect(),
            stats: Arc::new(move || stats_store.stats()),
            metrics,
            cluster: cluster_view,
            repair,
            admin_token: config.node.http_token.as_deref().map(Arc::from),
            faults,
        };
        let http = spawn_http(config.node.http_addr, http_state)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.node.http_addr,
                source,
            })?;
        announce_client_addrs(&config, membership.as_ref(), &resp, &http).await;
        Ok(Node {
            store,
            resp,
            http,
            peer,
            membership,
            hints,
            aae,
            sweep,
            fsync_task,
        })
    }

    /// Where the RESP server listens.
    pub fn resp_addr(&self) -> SocketAddr {
        self.resp.local_addr()
    }

    /// Where the HTTP server listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Where the internode server listens, in a cluster.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().map(PeerServerHandle::local_addr)
    }

    /// Anti-entropy's per-partition last exchanges, in a cluster with
    /// anti-entropy on (for `GET /v1/repair`).
    pub fn repair_log(&self) -> Option<Arc<RepairLog>> {
        self.aae.as_ref().map(AaeHandle::repair_log)
    }

    /// Stops serving, then fsyncs everything.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        if let Some(aae) = self.aae {
            aae.shutdown().await;
        }
        self.resp.shutdown().await;
        if let Some(peer) = self.peer {
            peer.shutdown().await;
        }
        if let Some(membership) = self.membership {
            membership.shutdown().await;
        }
        self.http.shutdown().await;
        if let Some(HintParts {
            hints,
            delivery,
            background,
        }) = self.hints
        {
            // NOTE: late replica writes may still be turning into hints;
            // wait (bounded) for them before the last fsync of the hints.
            let all = MAX_LATE_WRITES as u32;
            if tokio::time::timeout(SHUTDOWN_DRAIN, background.acquire_many(all))
                .await
                .is_err()
            {
                tracing::warn!("background replica writes still running at shutdown");
            }
            delivery.shutdown().await;
            match tokio::task::spawn_blocking(move || hints.sync_to_disk()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "fsync of hints at shutdown failed"),
                Err(e) => tracing::error!(error = %e, "fsync of hints at shutdown: task failed"),
            }
        }
        self.sweep.shutdown().await;
        if let Some(task) = self.fsync_task {
            task.shutdown().await;
        }
        // IMPORTANT: the last step, after no more writes can arrive.
        let store = self.store;
        tokio::task::spawn_blocking(move || store.sync_to_disk())
            .await
            .map_err(|e| {
                StoreError::Storage(StorageError::DataDir {
                    path: "shutdown".into(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?
    }
}

/// What `GET /v1/repair` shows of the anti-entropy log.
fn anti_entropy_view(log: &RepairLog, interval_ms: u64) -> AntiEntropyView {
    AntiEntropyView {
        rounds: log.rounds(),
        interval_ms,
        exchanges: log
            .last_exchanges()
            .into_iter()
            .map(|e| PartitionExchange {
                keyspace: e.keyspace,
                partition: e.partition,
                peer: e.peer,
                at_ms: e.at_ms,
                in_sync: e.report.in_sync,
                pulled: e.report.pulled as u64,
                pushed: e.report.pushed as u64,
                bytes: e.report.bytes,
                error: e.error,
            })
            .collect(),
    }
}

type ViewFn = Arc<dyn Fn() -> ClusterView + Send + Sync>;

/// Longest wait at shutdown for background replica writes to finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// A node alone: it owns every partition and is up.
fn single_node_view(config: &Config, resp_addr: SocketAddr) -> ViewFn {
    let view = ClusterView {
        node: config.node.name.clone(),
        layout_version: 1,
        layout_digest: String::new(),
        partitions: config.cluster.partitions,
        members: vec![MemberView {
            name: config.node.name.clone(),
            node_id: node_id(&config.node.name),
            partitions_held: config.cluster.partitions,
            peer_addr: String::new(),
            zone: None,
            up: true,
            last_seen_ms_ago: Some(0),
            partitions_owned: config.cluster.partitions,
            gossip_addr: None,
            resp_addr: Some(resp_addr.to_string()),
            // NOTE: the HTTP listener is bound after this view is made.
            http_addr: (config.node.http_addr.port() != 0)
                .then(|| config.node.http_addr.to_string()),
            layout_version: Some(1),
            layout_digest: None,
            layout_mismatch: false,
        }],
    };
    Arc::new(move || view.clone())
}

async fn start_resp<S: Store>(
    config: &Config,
    engine: &'static str,
    store: Arc<S>,
) -> Result<RespServerHandle, StartError> {
    let l = &config.limits;
    let resp_config = RespConfig {
        addr: config.node.resp_addr,
        requirepass: config.node.requirepass.clone(),
        max_key_bytes: l.max_key_bytes,
        max_value_bytes: l.max_value_bytes,
        decode_limits: DecodeLimits {
            max_bulk_bytes: l.max_bulk_bytes,
            max_multibulk_len: l.max_multibulk_len,
            max_inline_bytes: l.max_inline_bytes,
        },
        max_connections: l.max_connections,
        max_reply_buffer_bytes: l.max_reply_buffer_bytes,
        node_name: config.node.name.clone(),
        fsync: config.storage.fsync,
        engine,
    };
    let bind_err = |source| StartError::Bind {
        addr: config.node.resp_addr,
        source,
    };
    RespServer::bind(resp_config, store)
        .await
        .map_err(bind_err)?
        .spawn()
        .map_err(bind_err)
}

/// The `everysec` policy: fsync the data (and the hints, in a cluster) once
/// a second off the request path.
///
/// The data and the hints are fsynced apart, so one failing does not stop
/// the other; a failure is logged when it starts, not every second (a failed
/// fsync is final: every later one fails the same way until a restart).
fn fsync_every_second(store: Arc<LocalStore>, hints: Option<Arc<Hints>>) -> Periodic {
    Periodic::spawn(Duration::from_secs(1), [false; 2], move |failing| {
        let (store, hints) = (store.clone(), hints.clone());
        async move {
            let synced = tokio::task::spawn_blocking(move || {
                [
                    store.sync_to_disk(),
                    hints.map_or(Ok(()), |h| h.sync_to_disk()),
                ]
            });
            let results = match synced.await {
                Ok(results) => results,
                Err(e) => {
                    tracing::error!(error = %e, "background fsync task failed");
                    return failing;
                }
            };
            let mut now_failing = failing;
            for ((what, result), was) in ["data", "hints"].iter().zip(results).zip(&mut now_failing)
            {
                match result {
                    Ok(()) => *was = false,
                    Err(e) => {
                        if !*was {
                            tracing::error!(of = what, error = %e, "background fsync failed");
                        }
                        *was = true;
                    }
                }
            }
            now_failing
        }
    })
}
