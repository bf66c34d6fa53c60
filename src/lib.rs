//! ringkv: a Dynamo-style, leaderless, replicated key-value store that
//! speaks the Redis protocol.
//!
//! A node runs alone (a cluster of one, n = 1, its front doors over the
//! local store) or as a member of a static cluster, where any node
//! coordinates any request through the quorum coordinator
//! ([`coordinator::QuorumStore`]); both sit behind [`coordinator::Store`].
//!
//! # Layout
//! - [`config`]: the TOML configuration tree and its validation.
//! - [`ring`]: partitions and the layout (pure): which nodes hold a key.
//! - [`version`]: hybrid logical clocks and last-write-wins records (pure).
//! - [`storage`]: the `Engine` trait, the fjall and memory engines, key layout.
//! - [`net`]: internode requests and the `Transport` seam (TCP, in-memory with faults).
//! - [`membership`]: who is in the cluster and who is up (chitchat gossip).
//! - [`coordinator`]: the `Store` trait, the local store, the quorum
//!   coordinator, hinted handoff, command semantics, the expiry sweep.
//! - [`aae`]: anti-entropy: per-partition Merkle trees and their exchange.
//! - [`resp`]: the Redis protocol: codec, frames, commands, server.
//! - [`http`]: `/health`, `/metrics` and the `/v1/...` admin routes.
//! - [`node`]: wires one node together from a config; start and shutdown.
//! - [`periodic`]: background work on a fixed period (sweep, hints, fsync).
//! - [`fault_injection`]: test hooks (off by default) that cut, drop and
//!   delay a node's links and skew its clock.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod aae;
pub mod config;
pub mod coordinator;
pub mod fault_injection;
pub mod http;
pub mod membership;
pub mod net;
pub mod node;
pub mod periodic;
pub mod resp;
pub mod ring;
pub mod storage;
pub mod version;
