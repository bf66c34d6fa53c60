//! The TCP [`Transport`]: one persistent, authenticated connection per peer,
//! many requests in flight on it, matched to their callers by request id.
//!
//! Invariants: every pending call is resolved exactly once (by its response,
//! by the connection's failure, or by its deadline: the connection task
//! sweeps expired calls every `request_timeout / 10`, at most 100 ms, so a
//! call times out between its deadline and one sweep later); a peer never has more than `max_in_flight_per_peer` calls in
//! flight; after a failed connect, calls to that peer fail fast with
//! `Unreachable` until the backoff window has passed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::auth::{FrameReader, authenticated, client_handshake, handshake_reader, read_frame};
use super::before;
use super::frame::{Frame, encode_frame, write_loop};
use super::{NetError, PeerId, Request, Response, Transport};

/// Settings shared by the peer client and the peer server.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// This node's name, proven to peers in the handshake.
    pub node_name: String,
    /// The shared cluster secret both ends prove they know.
    pub cluster_secret: String,
    /// Longest a call waits for its answer, connecting included, plus at
    /// most one sweep of its connection (a tenth of this, at most 100 ms).
    /// Default 2 s.
    pub request_timeout: Duration,
    /// Longest a connect plus handshake may take (client side). Default 1 s.
    pub connect_timeout: Duration,
    /// Longest a server waits for a connecting peer's handshake. Default 1 s.
    pub handshake_timeout: Duration,
    /// Most calls in flight to one peer; a further call waits up to half the
    /// request timeout for one to finish, then gets `Overloaded`. Default 1024.
    pub max_in_flight_per_peer: usize,
    /// Most requests one server connection handles at once; past it the
    /// server stops reading that connection until one finishes. Default 1024.
    pub max_in_flight_per_connection: usize,
    /// Largest frame, either direction. Default 16 MiB + 64 KiB (a 16 MiB
    /// record plus its key and envelope).
    pub max_frame_bytes: usize,
    /// Frames queued for one connection's writer. Default 1024.
    pub write_queue_frames: usize,
    /// Most simultaneous inbound peer connections. Default 256.
    pub max_connections: usize,
    /// First reconnect backoff after a failure. Default 50 ms.
    pub reconnect_backoff_min: Duration,
    /// Backoff doubles per consecutive failure up to this. Default 2 s.
    pub reconnect_backoff_max: Duration,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            cluster_secret: String::new(),
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            max_in_flight_per_peer: 1024,
            max_in_flight_per_connection: 1024,
            max_frame_bytes: 16 * 1024 * 1024 + 64 * 1024,
            write_queue_frames: 1024,
            max_connections: 256,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
        }
    }
}

impl PeerConfig {
    /// A default config for `node_name` with `cluster_secret`.
    pub fn new(node_name: impl Into<String>, cluster_secret: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            cluster_secret: cluster_secret.into(),
            ..Self::default()
        }
    }

    /// Backoff after `failures` consecutive failed connects (>= 1).
    fn backoff(&self, failures: u32) -> Duration {
        let doubling = 1u32 << failures.saturating_sub(1).min(16);
        self.reconnect_backoff_min
            .saturating_mul(doubling)
            .min(self.reconnect_backoff_max)
    }
}

/// The calls waiting on one connection: request id -> (deadline, answer).
// NOTE: a plain mutex: held only to insert/remove entries, never across an
// await. Deadlines are swept by the connection task instead of a timer per
// call: a tokio timeout per call cost 3-8% of a coordinator's CPU.
type Pending = Mutex<HashMap<u64, (Instant, oneshot::Sender<Result<Response, NetError>>)>>;

/// One live (or just-failed) connection to a peer.
struct Conn {
    addr: SocketAddr,
    frames_tx: mpsc::Sender<Bytes>,
    pending: Arc<Pending>,
    task: JoinHandle<()>,
}

impl Conn {
    fn is_alive(&self) -> bool {
        !self.task.is_finished() && !self.frames_tx.is_closed()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
        fail_all(&self.pending, &closed());
    }
}

/// Removes a call's pending entry however the call ends (answer, timeout,
/// or the caller dropping its future).
struct PendingGuard {
    pending: Arc<Pending>,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

/// Decrements the in-flight gauge however the call ends (the caller may
/// drop its future midway).
struct InFlightGauge<'a>(&'a metrics::Gauge);

impl Drop for InFlightGauge<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// How often a connection fails its expired calls: a tenth of the request
/// timeout, between 1 ms and 100 ms.
fn sweep_period(request_timeout: Duration) -> Duration {
    (request_timeout / 10).clamp(Duration::from_millis(1), MAX_CALL_OVERRUN)
}

/// The most a call can outlast its request timeout: one sweep period.
pub const MAX_CALL_OVERRUN: Duration = Duration::from_millis(100);

fn closed() -> NetError {
    NetError::Unreachable("connection closed".into())
}

/// Fails the calls whose deadline has passed, every `period`; never returns.
async fn sweep_expired(pending: &Pending, period: Duration) -> std::convert::Infallible {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let expired: Vec<_> = {
            let mut pending = pending.lock();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, (deadline, _))| *deadline <= now)
                .map(|(&id, _)| id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id))
                .collect()
        };
        for (_, tx) in expired {
            let _ = tx.send(Err(NetError::Timeout));
        }
    }
}

/// Fails every call still waiting when the connection task ends, however
/// it ends (an error, an abort, a panic).
struct FailAllOnExit<'a>(&'a Pending);

impl Drop for FailAllOnExit<'_> {
    fn drop(&mut self) {
        fail_all(self.0, &closed());
    }
}

fn fail_all(pending: &Pending, err: &NetError) {
    let waiters: Vec<_> = pending.lock().drain().map(|(_, (_, tx))| tx).collect();
    for tx in waiters {
        let _ = tx.send(Err(err.clone()));
    }
}

/// Connection state of one peer.
enum LinkState {
    Idle,
    Connected(Arc<Conn>),
    Backoff {
        until: Instant,
        failures: u32,
        cause: String,
    },
}

/// Everything this node keeps about one peer.
struct PeerSlot {
    name: String,
    in_flight: Arc<Semaphore>,
    // NOTE: an async mutex: held across the connect so concurrent callers
    // wait for one connect attempt instead of racing several.
    link: tokio::sync::Mutex<LinkState>,
    /// The live connection, if any: the lock-free-ish fast path that skips
    /// `link` on every call.
    // NOTE: a plain mutex: a pointer copy under it, never held across an await.
    current: Mutex<Option<Arc<Conn>>>,
    calls: metrics::Counter,
    errors: metrics::Counter,
    in_flight_gauge: metrics::Gauge,
}

impl PeerSlot {
    /// The live connection to `addr`, if there is one.
    fn live(&self, addr: SocketAddr) -> Option<Arc<Conn>> {
        let current = self.current.lock();
        let conn = current.as_ref()?;
        (conn.is_alive() && conn.addr == addr).then(|| conn.clone())
    }
}

struct Inner {
    config: PeerConfig,
    // NOTE: plain locks: lookups only, never held across an await.
    addrs: RwLock<HashMap<String, SocketAddr>>,
    slots: RwLock<HashMap<String, Arc<PeerSlot>>>,
    next_id: AtomicU64,
}

/// The production [`Transport`]: authenticated TCP to peers known by name.
/// Cheap to clone; clones share connections and the peer map.
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("node_name", &self.inner.config.node_name)
            .field("peers", &*self.inner.addrs.read())
            .finish()
    }
}

impl TcpTransport {
    /// A transport with no peers yet; connections are made on first use.
    pub fn new(config: PeerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                addrs: RwLock::new(HashMap::new()),
                slots: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The settings this transport runs with.
    pub fn config(&self) -> &PeerConfig {
        &self.inner.config
    }

    /// Adds `name` at `addr`, or moves it there. Moving closes the old
    /// connection (its calls fail with `Unreachable`) and forgets any backoff.
    pub fn set_peer(&self, name: &str, addr: SocketAddr) {
        let old = self.inner.addrs.write().insert(name.to_owned(), addr);
        if old.is_some_and(|old| old != addr) {
            self.close_slot(name);
        }
    }

    /// Forgets `name`; its connection is closed and later calls get `UnknownPeer`.
    pub fn remove_peer(&self, name: &str) {
        self.inner.addrs.write().remove(name);
        self.close_slot(name);
    }

    fn close_slot(&self, name: &str) {
        let Some(slot) = self.inner.slots.write().remove(name) else {
            return;
        };
        if let Some(conn) = slot.current.lock().take() {
            conn.task.abort();
            fail_all(
                &conn.pending,
                &NetError::Unreachable(format!("peer {name} moved or removed")),
            );
        }
    }

    /// The address `name` is known at.
    pub fn peer_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inner.addrs.read().get(name).copied()
    }

    fn slot(&self, name: &str) -> Arc<PeerSlot> {
        if let Some(slot) = self.inner.slots.read().get(name) {
            return slot.clone();
        }
        let mut slots = self.inner.slots.write();
        slots
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(PeerSlot {
                    name: name.to_owned(),
                    in_flight: Arc::new(Semaphore::new(self.inner.config.max_in_flight_per_peer)),
                    link: tokio::sync::Mutex::new(LinkState::Idle),
                    current: Mutex::new(None),
                    calls: metrics::counter!("ringkv_peer_calls_total", "peer" => name.to_owned()),
                    errors: metrics::counter!("ringkv_peer_call_errors_total", "peer" => name.to_owned()),
                    in_flight_gauge: metrics::gauge!("ringkv_peer_in_flight", "peer" => name.to_owned()),
                })
            })
            .clone()
    }

    async fn call_on(
        &self,
        slot: &PeerSlot,
        addr: SocketAddr,
        request: Request,
        deadline: Instant,
    ) -> Result<Response, NetError> {
        // NOTE: the waiting and connecting paths are boxed, so the future
        // of every call (moved into each coordinator fan-out) stays small.
        let _permit = match slot.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => Box::pin(before(deadline, self.wait_for_room(slot))).await?,
        };
        let conn = match slot.live(addr) {
            Some(conn) => conn,
            None => Box::pin(before(deadline, self.connection(slot, addr))).await?,
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let body = encode_frame(&Frame::Request { id, request })?;
        if body.len() > self.inner.config.max_frame_bytes {
            return Err(NetError::Codec(format!(
                "request of {} bytes exceeds max_frame_bytes {}",
                body.len(),
                self.inner.config.max_frame_bytes
            )));
        }
        let (answer_tx, answer_rx) = oneshot::channel();
        conn.pending.lock().insert(id, (deadline, answer_tx));
        let _guard = PendingGuard {
            pending: conn.pending.clone(),
            id,
        };
        match conn.frames_tx.try_send(body) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(body)) => {
                let send = async { conn.frames_tx.send(body).await.map_err(|_| closed()) };
                Box::pin(before(deadline, send)).await?;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
        }
        match answer_rx.await {
            Ok(answer) => answer,
            Err(_) => Err(closed()),
        }
    }

    /// Backpressure, not failure: waits (bounded) for one of the calls in
    /// flight to `slot`'s peer to finish, so a burst slows the callers
    /// instead of failing them.
    async fn wait_for_room(&self, slot: &PeerSlot) -> Result<OwnedSemaphorePermit, NetError> {
        metrics::counter!("ringkv_peer_in_flight_waits_total").increment(1);
        let wait = self.inner.config.request_timeout / 2;
        match tokio::time::timeout(wait, slot.in_flight.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(NetError::Closed),
            Err(_) => {
                metrics::counter!("ringkv_peer_overloaded_total").increment(1);
                Err(NetError::Overloaded(
                    self.inner.config.max_in_flight_per_peer,
                ))
            }
        }
    }

    /// The live connection to `slot`'s peer at `addr`, connecting if there
    /// is none and the backoff window allows.
    async fn connection(&self, slot: &PeerSlot, addr: SocketAddr) -> Result<Arc<Conn>, NetError> {
        if let Some(conn) = slot.live(addr) {
            return Ok(conn);
        }
        let mut link = slot.link.lock().await;
        let failures = match &*link {
            LinkState::Connected(conn) if conn.is_alive() && conn.addr == addr => {
                return Ok(conn.clone());
            }
            LinkState::Backoff {
                until,
                failures,
                cause,
            } => {
                if Instant::now() < *until {
                    return Err(NetError::Unreachable(format!("{} (backing off)", cause)));
                }
                *failures
            }
            LinkState::Connected(_) | LinkState::Idle => 0,
        };
        let config = &self.inner.config;
        let connect =
            tokio::time::timeout(config.connect_timeout, connect(config, &slot.name, addr));
        let result = match connect.await {
            Ok(result) => result,
            Err(_) => Err(NetError::Unreachable(format!(
                "connect to {addr} timed out"
            ))),
        };
        match result {
            Ok(conn) => {
                tracing::debug!(peer = %slot.name, %addr, "peer connected");
                let conn = Arc::new(conn);
                *link = LinkState::Connected(conn.clone());
                *slot.current.lock() = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                let failures = failures.saturating_add(1);
                let backoff = config.backoff(failures);
                tracing::warn!(peer = %slot.name, %addr, error = %e, failures, ?backoff, "peer connect failed");
                metrics::counter!("ringkv_peer_connect_failures_total").increment(1);
                *slot.current.lock() = None;
                *link = LinkState::Backoff {
                    until: Instant::now() + backoff,
                    failures,
                    // NOTE: the bare reason: it is wrapped in `Unreachable` again
                    // when a call fails during the backoff.
                    cause: match &e {
                        NetError::Unreachable(why) => why.clone(),
                        other => other.to_string(),
                    },
                };
                Err(e)
            }
        }
    }
}

/// Connects, authenticates, and starts the connection's reader and writer.
async fn connect(config: &PeerConfig, expected: &str, addr: SocketAddr) -> Result<Conn, NetError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| NetError::Unreachable(format!("{addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = handshake_reader(read_half);
    let server = client_handshake(
        &mut reader,
        &mut write_half,
        &config.node_name,
        &config.cluster_secret,
    )
    .await?;
    if server != expected {
        return Err(NetError::Unreachable(format!(
            "{addr} is node {server:?}, not {expected:?}"
        )));
    }
    authenticated(&mut reader, config.max_frame_bytes);
    let (frames_tx, frames_rx) = mpsc::channel(config.write_queue_frames.max(1));
    let pending = Arc::new(Pending::default());
    let task = tokio::spawn(run_client_conn(
        reader,
        write_half,
        frames_rx,
        pending.clone(),
        config.max_frame_bytes,
        sweep_period(config.request_timeout),
        server,
    ));
    Ok(Conn {
        addr,
        frames_tx,
        pending,
        task,
    })
}

/// Runs one client connection until either half fails, then fails every
/// call still waiting on it.
async fn run_client_conn(
    mut reader: FrameReader<OwnedReadHalf>,
    write_half: tokio::net::tcp::OwnedWriteHalf,
    frames_rx: mpsc::Receiver<Bytes>,
    pending: Arc<Pending>,
    max_frame_bytes: usize,
    sweep_every: Duration,
    peer: String,
) {
    let _fail_rest = FailAllOnExit(&pending);
    let read = async {
        loop {
            match read_frame(&mut reader).await? {
                Frame::Response { id, response } => {
                    // A missing id is a call that already timed out: drop it.
                    if let Some((_, tx)) = pending.lock().remove(&id) {
                        let _ = tx.send(Ok(response));
                    }
                }
                other => {
                    return Err::<(), _>(NetError::Codec(format!(
                        "unexpected frame from server: {other:?}"
                    )));
                }
            }
        }
    };
    let result = tokio::select! {
        r = read => r,
        w = write_loop(write_half, frames_rx, max_frame_bytes) => w,
        never = sweep_expired(&pending, sweep_every) => match never {},
    };
    let err = match result {
        Err(e @ NetError::Codec(_)) => {
            tracing::warn!(%peer, error = %e, "closing peer connection after bad frame");
            e
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "peer connection closed");
            NetError::Unreachable(e.to_string())
        }
        Ok(()) => closed(),
    };
    fail_all(&pending, &err);
}

impl Transport for TcpTransport {
    async fn call(&self, to: &PeerId, request: Request) -> Result<Response, NetError> {
        let addr = self
            .peer_addr(to)
            .ok_or_else(|| NetError::UnknownPeer(to.to_owned()))?;
        let slot = self.slot(to);
        let deadline = Instant::now() + self.inner.config.request_timeout;
        slot.in_flight_gauge.increment(1.0);
        let _in_flight = InFlightGauge(&slot.in_flight_gauge);
        let result = self.call_on(&slot, addr, request, deadline).await;
        slot.calls.increment(1);
        if result.is_err() {
            slot.errors.increment(1);
        }
        result
    }
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
