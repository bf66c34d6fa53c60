//! The HTTP front door: `GET /health`, `GET /metrics` (Prometheus text),
//! `GET /v1/cluster` (JSON: every node as this node sees it),
//! `GET /v1/repair` (JSON: this node's hints and anti-entropy exchanges);
//! with fault injection enabled (tests only), `GET`/`POST /v1/debug/faults`.
//!
//! Invariant: gauges that are cheap to read at scrape time (keys, engine
//! bytes) are set just before rendering, so they are never stale.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coordinator::{HintQueue, StoreStats};
use crate::fault_injection::{FaultInjector, FaultSpec};
use crate::membership::ClusterView;

/// Repair activity on one node (`GET /v1/repair`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairView {
    /// The node answering.
    pub node: String,
    /// Hints this node keeps, per target node.
    pub hints: BTreeMap<String, HintQueue>,
    /// Anti-entropy on this node; `None` when it is off (a single node, or
    /// `cluster.aae_interval_ms = 0`).
    pub anti_entropy: Option<AntiEntropyView>,
}

/// Anti-entropy as one node ran it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiEntropyView {
    /// Rounds completed since start-up.
    pub rounds: u64,
    /// Mean time between rounds, ms.
    pub interval_ms: u64,
    /// The last exchange of every (keyspace, partition) replica that had one.
    pub exchanges: Vec<PartitionExchange>,
}

/// The last anti-entropy exchange of one partition replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionExchange {
    /// Keyspace name.
    pub keyspace: String,
    /// Partition.
    pub partition: u16,
    /// The replica compared with.
    pub peer: String,
    /// When it finished, ms since the epoch.
    pub at_ms: u64,
    /// The trees were equal.
    pub in_sync: bool,
    /// Keys fetched from the peer and merged here.
    pub pulled: u64,
    /// Keys sent to the peer.
    pub pushed: u64,
    /// Bytes exchanged.
    pub bytes: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Buckets of the latency histograms, seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Installs the process-wide Prometheus recorder once and returns its handle.
///
/// Must run before the first metric handle is created, or that handle
/// records nowhere. A background thread drains histograms every 5 s.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok();
            handle
        })
        .clone()
}

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Name of this node.
    pub node_name: String,
    /// Keyspace names, in `StoreStats::keys` order.
    pub keyspace_names: Vec<String>,
    /// Reads the store's counters.
    pub stats: Arc<dyn Fn() -> StoreStats + Send + Sync>,
    /// Renders Prometheus text.
    pub metrics: PrometheusHandle,
    /// The cluster as this node sees it.
    pub cluster: Arc<dyn Fn() -> ClusterView + Send + Sync>,
    /// This node's repair activity.
    pub repair: Arc<dyn Fn() -> RepairView + Send + Sync>,
    /// The bearer token the admin routes (`/v1/...`) require, if any.
    pub admin_token: Option<Arc<str>>,
    /// The fault hooks, when `debug.fault_injection` is on (else the
    /// debug routes do not exist: 404).
    pub faults: Option<Arc<FaultInjector>>,
}

/// A running HTTP server.
#[derive(Debug)]
pub struct HttpServerHandle {
    addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HttpServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.task.await;
    }
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    let (status, body) = health_report(&state.node_name, &(state.stats)());
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// `/health`: 200 and `"status":"ok"`, or 503 and `"status":"write_error"`
/// with the error when this node's replica refuses writes (a journal fsync
/// failed): a load balancer or an alert notices. Such a node still serves
/// reads and coordinates writes to the other replicas.
fn health_report(node_name: &str, stats: &StoreStats) -> (StatusCode, String) {
    let mut body = serde_json::json!({
        "status": "ok",
        "node": node_name,
        "engine": stats.engine,
        "keys": stats.keys.iter().sum::<u64>(),
    });
    let status = match &stats.write_error {
        None => StatusCode::OK,
        Some(why) => {
            body["status"] = "write_error".into();
            body["error"] = why.as_str().into();
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (status, format!("{body}\n"))
}

async fn metrics_text(State(state): State<HttpState>) -> impl IntoResponse {
    let stats = (state.stats)();
    metrics::gauge!("ringkv_engine_bytes").set(stats.engine_bytes as f64);
    for (name, keys) in state.keyspace_names.iter().zip(&stats.keys) {
        metrics::gauge!("ringkv_keys", "keyspace" => name.clone()).set(*keys as f64);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn cluster(State(state): State<HttpState>) -> impl IntoResponse {
    let view = (state.cluster)();
    let body = serde_json::to_string_pretty(&view)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn repair(State(state): State<HttpState>) -> impl IntoResponse {
    let view = (state.repair)();
    let body = serde_json::to_string_pretty(&view)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    ([(header::CONTENT_TYPE, "application/json")], body)
}

fn json_reply(status: StatusCode, body: String) -> axum::response::Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn faults_json(faults: &FaultInjector) -> String {
    serde_json::to_string(&faults.current())
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}

/// `GET /v1/debug/faults`: the faults in force.
async fn get_faults(State(state): State<HttpState>) -> axum::response::Response {
    match &state.faults {
        Some(faults) => json_reply(StatusCode::OK, faults_json(faults)),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `POST /v1/debug/faults` with a [`FaultSpec`]: replaces every fault;
/// answers the faults now in force, or 400 and why.
async fn post_faults(
    State(state): State<HttpState>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let Some(faults) = &state.faults else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let applied = serde_json::from_slice::<FaultSpec>(&body)
        .map_err(|e| format!("bad fault spec: {e}"))
        .and_then(|spec| faults.apply(spec).map_err(|e| e.to_string()));
    match applied {
        Ok(()) => json_reply(StatusCode::OK, faults_json(faults)),
        Err(e) => json_reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": e }).to_string(),
        ),
    }
}

/// Lets a request to an admin route through only with the configured
/// bearer token (when one is configured); 401 otherwise.
async fn require_token(
    State(state): State<HttpState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(token) = &state.admin_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
            let body = serde_json::json!({
                "error": "this route needs an Authorization: Bearer <node.http_token> header"
            });
            return (
                StatusCode::UNAUTHORIZED,
                [
                    (header::WWW_AUTHENTICATE, "Bearer"),
                    (header::CONTENT_TYPE, "application/json"),
                ],
                body.to_string(),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds `addr` and serves until shut down.
pub async fn spawn_http(addr: SocketAddr, state: HttpState) -> std::io::Result<HttpServerHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let mut admin = Router::new()
        .route("/v1/cluster", get(cluster))
        .route("/v1/repair", get(repair));
    if state.faults.is_some() {
        admin = admin.route("/v1/debug/faults", get(get_faults).post(post_faults));
    }
    let admin = admin.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_token,
    ));
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(admin)
        .with_state(state);
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = shutdown_rx.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tracing::info!(%addr, "http server listening");
    Ok(HttpServerHandle {
        addr,
        shutdown_tx,
        task,
    })
}

#[cfg(test)]
mod health_tests {
    use super::*;

    fn stats(write_error: Option<&str>) -> StoreStats {
        StoreStats {
            engine: "fjall",
            engine_bytes: 0,
            keys: vec![2, 3],
            expired_reclaimed: 0,
            cluster: None,
            write_error: write_error.map(str::to_owned),
        }
    }

    #[test]
    fn health_is_ok_until_writes_are_refused_then_503_with_why() {
        let (status, body) = health_report("n1", &stats(None));
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["keys"], 5);

        let why = "journal fsync failed: fsync of /d/\"3\".jnl: EIO";
        let (status, body) = health_report("n1", &stats(Some(why)));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["status"], "write_error");
        assert_eq!(json["error"], why);
        assert_eq!(json["node"], "n1");
    }
}
