//! Internode messaging: the requests replicas send each other, and the
//! [`Transport`] seam they travel through.
//!
//! The coordinator only sees [`Transport`]; the TCP implementation and the
//! fault-injecting one used by tests live behind it (STYLE.md rule 7).
//!
//! - `frame`: the versioned wire format and the batching writer.
//! - `auth`: the cluster-secret handshake.
//! - `tcp` / `server`: [`TcpTransport`] and [`spawn_peer_server`].
//! - `aae`: the anti-entropy messages ([`AaeRequest`], [`AaeResponse`]).
//! - `memory` / `fault`: [`MemNetwork`] for socket-free cluster tests, the
//!   [`FaultTable`] of cut, delayed and lossy links, [`FaultyTransport`].
//!
//! Invariant: a [`Transport::call`] resolves exactly once, with the peer's
//! [`Response`] or a [`NetError`] that says why there is none; it never
//! waits longer than the transport's request timeout.

use std::future::Future;

mod aae;
mod auth;
mod fault;
mod frame;
mod memory;
mod server;
mod tcp;

pub use aae::{AaeRequest, AaeResponse, KeyDigest};
pub use fault::{FaultTable, FaultyTransport};
pub use frame::PROTOCOL_VERSION;
pub use memory::{BoxedHandler, MemNetwork, MemTransport};
pub use server::{PeerServerHandle, bind_peer_server, spawn_peer_server};
pub use tcp::{MAX_CALL_OVERRUN, PeerConfig, TcpTransport};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's name: its identity in the layout and on the wire.
pub type PeerId = str;

/// What one replica asks another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness probe.
    Ping,
    /// The stored record of a key (an encoded [`crate::version::Record`],
    /// tombstones and expired values included), or none.
    Read {
        /// Keyspace name.
        keyspace: String,
        /// User key.
        key: Bytes,
    },
    /// Merge this encoded [`crate::version::Record`] into the replica.
    Write {
        /// Keyspace name.
        keyspace: String,
        /// User key.
        key: Bytes,
        /// The encoded record.
        record: Bytes,
    },
    /// Keep this write as a hint for `target`, a primary that missed it,
    /// and deliver it when `target` is alive (sloppy quorum: the receiver
    /// is a fallback standing in for `target`). Answered with
    /// [`Response::Written`] once the hint is stored.
    Hint {
        /// The primary the write is for.
        target: String,
        /// Keyspace name.
        keyspace: String,
        /// User key.
        key: Bytes,
        /// The encoded record.
        record: Bytes,
    },
    /// One step of an anti-entropy exchange (appended last so the older
    /// variants keep their wire tags).
    Aae(AaeRequest),
    /// The stored records of several keys of one keyspace, as [`Request::Read`]
    /// gives each: a coordinator's reads of one pipelined run (or MGET) that go
    /// to the same replica travel as one request.
    ReadMany {
        /// Keyspace name.
        keyspace: String,
        /// User keys.
        keys: Vec<Bytes>,
    },
    /// Merge each encoded record into the replica, as [`Request::Write`]
    /// does one, then commit once: a coordinator's replica writes of one
    /// pipelined run (or MSET) that go to the same replica.
    WriteMany {
        /// Keyspace name.
        keyspace: String,
        /// Each user key and its encoded record, in stamping order.
        writes: Vec<(Bytes, Bytes)>,
    },
}

/// Most bytes of keys and records one batched request or answer carries
/// ([`Request::ReadMany`], [`Request::WriteMany`], [`Response::Records`])
/// unless its first item alone is larger: a quarter of the transport's
/// frame limit, so a batch never fails to fit where its requests one by one
/// would fit.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Most keys one batched request carries: bounds a replica's work for one
/// request and its answer (a refusal is a message per write).
pub const MAX_BATCH_ITEMS: usize = 1024;

/// A replica's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong,
    /// Answer to [`Request::Read`].
    Record(Option<Bytes>),
    /// Answer to [`Request::Write`]: merged and as durable as the replica's
    /// fsync policy promises.
    Written,
    /// The replica failed the request.
    Error(String),
    /// Answer to [`Request::Aae`].
    Aae(AaeResponse),
    /// Answer to [`Request::ReadMany`]: the records of its first keys, in
    /// request order, at least one. Shorter than the request past
    /// [`MAX_BATCH_BYTES`] of records, or when a key after the first could
    /// not be read; the coordinator asks for the rest again.
    Records(Vec<Option<Bytes>>),
    /// Answer to [`Request::WriteMany`], one per write in request order:
    /// `None` when merged (and as durable as [`Response::Written`] says),
    /// else why the replica refused it.
    Outcomes(Vec<Option<String>>),
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// No answer within the request timeout (the request may have been applied).
    #[error("timed out")]
    Timeout,
    /// The peer could not be reached (connection refused, reset, no route).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer is not in this node's view of the cluster.
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// Too many requests already in flight to this peer.
    #[error("overloaded: {0} requests in flight")]
    Overloaded(usize),
    /// The peer did not prove it knows the cluster secret, or refused ours.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A frame could not be encoded or decoded.
    #[error("bad frame: {0}")]
    Codec(String),
    /// The transport is shutting down.
    #[error("transport closed")]
    Closed,
}

/// `work`, or [`NetError::Timeout`] if it has not finished by `deadline`.
pub(crate) async fn before<T>(
    deadline: tokio::time::Instant,
    work: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(NetError::Timeout))
}

/// Sends requests to peers.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to `to` and waits for its answer.
    fn call(
        &self,
        to: &PeerId,
        request: Request,
    ) -> impl Future<Output = Result<Response, NetError>> + Send;
}

/// Serves requests from peers.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `from`.
    fn handle(&self, from: &PeerId, request: Request) -> impl Future<Output = Response> + Send;
}
