//! Integration tests: real servers on `127.0.0.1:0`, real clients.
//!
//! Tiers: `commands`, `limits` and `http` run an in-process node per test;
//! `durability` and `clients` run the `ringkv` binary as a child process;
//! `cluster`, `handoff`, `history` and `faults` run clusters of them;
//! `sim_history` runs in-process nodes under tokio's paused clock, so its
//! seed replays exactly; `checker` replays the histories the randomized ones
//! record.

mod checker;
mod clients;
mod cluster;
mod cluster_pipeline;
mod commands;
mod dev_cluster;
mod durability;
mod faults;
mod gossip;
mod handoff;
mod history;
mod http;
mod limits;
mod model;
mod net;
mod scheduling;
mod sim_history;
mod support;
