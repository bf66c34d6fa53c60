//! The RESP TCP server: accept loop, connection limit, and the connection loop.
//!
//! A connection reads whatever is ready, runs every complete command in it,
//! commits the batch's writes once (group commit), then writes all replies
//! with one flush: pipelining without a syscall per command. Invariant: no
//! reply to a write leaves before the commit that makes it durable succeeded;
//! if that commit fails the batch's replies are dropped and the connection is
//! closed with an error, so nothing unsynced is ever acknowledged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::Cmd;
use super::codec::{DecodeLimits, RequestDecoder};
use super::command::{Cx, dispatch};
use super::frame::{Frame, Protocol};
use super::pipeline;
use crate::config::FsyncPolicy;
use crate::coordinator::{Consistency, KeyspaceId, Store};

/// Settings of the RESP server.
#[derive(Debug, Clone)]
pub struct RespConfig {
    /// Listen address (port 0 picks a free one).
    pub addr: SocketAddr,
    /// Password for AUTH; `None` disables authentication.
    pub requirepass: Option<String>,
    /// Largest key.
    pub max_key_bytes: usize,
    /// Largest value.
    pub max_value_bytes: usize,
    /// Protocol limits.
    pub decode_limits: DecodeLimits,
    /// Most simultaneous clients.
    pub max_connections: usize,
    /// Reply bytes buffered before an early flush.
    pub max_reply_buffer_bytes: usize,
    /// Reported by INFO.
    pub node_name: String,
    /// Reported by INFO and CONFIG GET.
    pub fsync: FsyncPolicy,
    /// Reported by CONFIG GET.
    pub engine: &'static str,
}

/// One command in this many has its latency timed (reading the clock twice
/// per command cost ~7% of a pipelined GET); counts are exact.
pub(super) const LATENCY_SAMPLE_EVERY: u64 = 8;

/// Per-command metric handles, resolved once at start-up (the hot path must
/// not look metrics up by name). Indexed by `Cmd as usize`.
pub(super) struct CommandMetrics {
    per_cmd: Vec<(metrics::Counter, metrics::Counter, metrics::Histogram)>,
    unknown: metrics::Counter,
}

impl CommandMetrics {
    fn new() -> Self {
        let per_cmd = Cmd::ALL
            .iter()
            .map(|c| {
                let name = c.name();
                (
                    metrics::counter!("ringkv_commands_total", "cmd" => name),
                    metrics::counter!("ringkv_command_errors_total", "cmd" => name),
                    metrics::histogram!("ringkv_command_duration_seconds", "cmd" => name),
                )
            })
            .collect();
        let unknown = metrics::counter!("ringkv_command_errors_total", "cmd" => "unknown");
        Self { per_cmd, unknown }
    }

    /// Counts `cmd` and records `took`, its latency, if it was timed.
    pub(super) fn record(&self, cmd: Option<Cmd>, took: Option<std::time::Duration>, failed: bool) {
        let Some((calls, errors, latency)) = cmd.and_then(|c| self.per_cmd.get(c as usize)) else {
            self.unknown.increment(1);
            return;
        };
        calls.increment(1);
        if failed {
            errors.increment(1);
        }
        if let Some(took) = took {
            latency.record(took.as_secs_f64());
        }
    }
}

/// The connected clients, for CLIENT LIST and INFO.
#[derive(Default)]
pub(crate) struct ClientRegistry {
    // NOTE: touched only on connect, disconnect and CLIENT LIST; never across an await.
    clients: Mutex<HashMap<u64, SocketAddr>>,
}

impl ClientRegistry {
    pub(crate) fn count(&self) -> usize {
        self.clients.lock().len()
    }

    pub(crate) fn list(&self) -> String {
        let mut ids: Vec<_> = self
            .clients
            .lock()
            .iter()
            .map(|(id, a)| (*id, *a))
            .collect();
        ids.sort();
        ids.iter()
            .map(|(id, addr)| format!("id={id} addr={addr}\n"))
            .collect()
    }
}

/// What every connection of one server shares.
pub(crate) struct Shared<S> {
    pub store: Arc<S>,
    pub config: RespConfig,
    pub clients: ClientRegistry,
    pub started: Instant,
    pub total_commands: AtomicU64,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub(super) metrics: CommandMetrics,
}

/// One client connection's state.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub id: u64,
    pub addr: SocketAddr,
    pub proto: Protocol,
    pub keyspace: KeyspaceId,
    pub authenticated: bool,
    pub name: Option<Bytes>,
    pub consistency: Consistency,
    /// True once CONSISTENCY set the levels; SELECT then keeps them.
    pub levels_chosen: bool,
    pub quit: bool,
    /// Commands run on this connection (drives latency sampling).
    pub commands: u64,
}

impl Session {
    pub(crate) fn describe(&self) -> String {
        let name = self
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let resp = if self.proto == Protocol::Resp3 { 3 } else { 2 };
        format!(
            "id={} addr={} name={name} db={} resp={resp}\n",
            self.id, self.addr, self.keyspace
        )
    }
}

/// The levels a keyspace gives connections that did not choose their own.
pub(crate) fn keyspace_levels(ks: &crate::config::KeyspaceConfig) -> Consistency {
    Consistency {
        read: ks.read_level,
        write: ks.write_level,
        sloppy: false,
    }
}

/// A RESP server about to run.
pub struct RespServer<S: Store> {
    listener: TcpListener,
    shared: Arc<Shared<S>>,
}

/// A running RESP server.
#[derive(Debug)]
pub struct RespServerHandle {
    addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RespServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection after its current batch,
    /// and waits for the accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.task.await;
    }
}

impl<S: Store> RespServer<S> {
    /// Binds the listener.
    pub async fn bind(mut config: RespConfig, store: Arc<S>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.addr).await?;
        // NOTE: report the port actually bound (the config may say 0).
        config.addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store,
            config,
            clients: ClientRegistry::default(),
            started: Instant::now(),
            total_commands: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            metrics: CommandMetrics::new(),
        });
        Ok(Self { listener, shared })
    }

    /// Starts the accept loop.
    pub fn spawn(self) -> std::io::Result<RespServerHandle> {
        let addr = self.listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(self.listener, self.shared, shutdown_rx));
        tracing::info!(%addr, "resp server listening");
        Ok(RespServerHandle {
            addr,
            shutdown_tx,
            task,
        })
    }
}

async fn accept_loop<S: Store>(
    listener: TcpListener,
    shared: Arc<Shared<S>>,
    mut shutdown_rx: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut next_id = 1u64;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown_rx.changed() => break,
        };
        let (stream, addr) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // NOTE: EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%addr, max = shared.config.max_connections, "connection refused: too many clients");
            tokio::spawn(refuse(stream));
            continue;
        };
        let id = next_id;
        next_id += 1;
        shared.total_connections.fetch_add(1, Ordering::Relaxed);
        let (shared, shutdown_rx) = (shared.clone(), shutdown_rx.clone());
        connections.spawn(async move {
            shared.clients.clients.lock().insert(id, addr);
            metrics::gauge!("ringkv_connected_clients").increment(1.0);
            if let Err(e) = serve(stream, &shared, id, addr, shutdown_rx).await {
                tracing::debug!(client = id, error = %e, "connection ended with an error");
            }
            shared.clients.clients.lock().remove(&id);
            metrics::gauge!("ringkv_connected_clients").decrement(1.0);
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
}

async fn serve<S: Store>(
    mut stream: TcpStream,
    shared: &Arc<Shared<S>>,
    id: u64,
    addr: SocketAddr,
    mut shutdown_rx: watch::Receiver<bool>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut session = Session {
        id,
        addr,
        proto: Protocol::Resp2,
        keyspace: 0,
        authenticated: shared.config.requirepass.is_none(),
        name: None,
        consistency: keyspace_levels(shared.store.keyspaces().get(0)),
        levels_chosen: false,
        quit: false,
        commands: 0,
    };
    let mut decoder = RequestDecoder::new(shared.config.decode_limits.clone());
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    loop {
        let read = tokio::select! {
            read = stream.read_buf(&mut input) => read?,
            _ = shutdown_rx.changed() => return Ok(()),
        };
        if read == 0 {
            return Ok(());
        }
        let mut batch = Batch {
            output: &mut output,
            wrote: false,
        };
        let outcome = run_batch(
            shared,
            &mut session,
            &mut decoder,
            &mut input,
            &mut batch,
            &mut stream,
        )
        .await?;
        let wrote = batch.wrote;
        finish_batch(shared, &mut stream, &mut output, wrote).await?;
        if outcome == BatchEnd::Close {
            return Ok(());
        }
    }
}

/// The replies of a batch of requests, and whether it wrote.
pub(super) struct Batch<'a> {
    pub(super) output: &'a mut BytesMut,
    pub(super) wrote: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum BatchEnd {
    NeedInput,
    Close,
}

/// The next command: one carried over from a run, else one decoded from
/// `input`. A protocol error is answered and ends the connection.
fn next_command(
    session: &Session,
    decoder: &mut RequestDecoder,
    input: &mut BytesMut,
    carried: &mut Option<Vec<Bytes>>,
    output: &mut BytesMut,
) -> Result<Option<Vec<Bytes>>, BatchEnd> {
    if let Some(args) = carried.take() {
        return Ok(Some(args));
    }
    match decoder.decode(input) {
        Ok(found) => Ok(found),
        Err(e) => {
            tracing::debug!(client = session.id, error = %e, "protocol error; closing");
            Frame::error(format!("ERR {}", e.to_reply_text())).encode(session.proto, output);
            Err(BatchEnd::Close)
        }
    }
}

/// Runs every complete command in `input`, encoding replies into the batch.
async fn run_batch<S: Store>(
    shared: &Arc<Shared<S>>,
    session: &mut Session,
    decoder: &mut RequestDecoder,
    input: &mut BytesMut,
    batch: &mut Batch<'_>,
    stream: &mut TcpStream,
) -> std::io::Result<BatchEnd> {
    let concurrent = shared.store.concurrent_requests();
    let mut carried = None;
    loop {
        let args = match next_command(session, decoder, input, &mut carried, batch.output) {
            Ok(Some(args)) => args,
            Ok(None) => return Ok(BatchEnd::NeedInput),
            Err(end) => return Ok(end),
        };
        // NOTE: a protocol error that ends a run is answered after the
        // run's replies, as Redis answers the commands before it first.
        let mut error_reply = BytesMut::new();
        let gathered = if concurrent && session.authenticated {
            gather_run(
                args,
                session,
                decoder,
                input,
                &mut carried,
                &mut error_reply,
            )
        } else {
            Err(args)
        };
        match gathered {
            Ok(Gathered { commands, end }) => {
                if let [only] = commands.as_slice() {
                    // NOTE: a run of one (every unpipelined request) needs no
                    // session copy and no boxed future.
                    run_one(shared, session, only, batch).await;
                } else if let Some(kind) = pipeline::plain_kind(&commands) {
                    pipeline::run_plain(shared, session, kind, &commands, batch).await;
                } else {
                    pipeline::run_concurrently(shared, session, &commands, batch).await;
                }
                batch.output.extend_from_slice(&error_reply);
                if let Some(end) = end {
                    return Ok(end);
                }
            }
            Err(args) => {
                run_one(shared, session, &args, batch).await;
                if session.quit {
                    return Ok(BatchEnd::Close);
                }
            }
        }
        if batch.output.len() >= shared.config.max_reply_buffer_bytes {
            let wrote = std::mem::take(&mut batch.wrote);
            finish_batch(shared, stream, batch.output, wrote).await?;
        }
    }
}

/// The run that `first` starts: it and the decoded commands after it that
/// can join (at most [`pipeline::MAX_RUN`]), and how the batch ends if a
/// protocol error stopped it. Gives `first` back if it cannot start a run.
fn gather_run(
    first: Vec<Bytes>,
    session: &Session,
    decoder: &mut RequestDecoder,
    input: &mut BytesMut,
    carried: &mut Option<Vec<Bytes>>,
    output: &mut BytesMut,
) -> Result<Gathered, Vec<Bytes>> {
    let mut run = pipeline::Run::default();
    run.admit(first)?;
    let mut end = None;
    while run.len() < pipeline::MAX_RUN {
        match next_command(session, decoder, input, carried, output) {
            Ok(Some(next)) => {
                if let Err(refused) = run.admit(next) {
                    *carried = Some(refused);
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                end = Some(e);
                break;
            }
        }
    }
    Ok(Gathered {
        commands: run.into_commands(),
        end,
    })
}

/// A run gathered by [`gather_run`].
struct Gathered {
    commands: Vec<Vec<Bytes>>,
    /// How the batch ends, if a protocol error cut the run short.
    end: Option<BatchEnd>,
}

/// Runs one command and encodes its reply.
async fn run_one<S: Store>(
    shared: &Arc<Shared<S>>,
    session: &mut Session,
    args: &[Bytes],
    batch: &mut Batch<'_>,
) {
    shared.total_commands.fetch_add(1, Ordering::Relaxed);
    session.commands += 1;
    let started = session
        .commands
        .is_multiple_of(LATENCY_SAMPLE_EVERY)
        .then(Instant::now);
    let mut cx = Cx { shared, session };
    let (cmd, reply) = dispatch(&mut cx, args).await;
    let failed = matches!(reply, Frame::Error(_));
    shared
        .metrics
        .record(cmd, started.map(|at| at.elapsed()), failed);
    batch.wrote |= cmd.is_some_and(Cmd::is_write) && !failed;
    reply.encode(session.proto, batch.output);
}

/// Commits the batch's writes, then sends its replies.
async fn finish_batch<S: Store>(
    shared: &Arc<Shared<S>>,
    stream: &mut TcpStream,
    output: &mut BytesMut,
    wrote: bool,
) -> std::io::Result<()> {
    if wrote && let Err(e) = shared.store.commit().await {
        // IMPORTANT: the writes in this batch may not be durable; do not
        // acknowledge them.
        tracing::error!(error = %e, "commit failed; dropping the batch's replies and closing the connection");
        output.clear();
        Frame::error(format!(
            "ERR persistence failure, writes not acknowledged: {e}"
        ))
        .encode(Protocol::Resp2, output);
        stream.write_all(output).await?;
        return Err(std::io::Error::other(e.to_string()));
    }
    if !output.is_empty() {
        stream.write_all(output).await?;
        output.clear();
    }
    Ok(())
}
