//! The Redis-protocol front door: RESP2/RESP3 framing, the command table and
//! the TCP server.
//!
//! Commands call a [`crate::coordinator::Store`], never an engine. Invariant:
//! every reply is produced by exactly one command, in request order, and a
//! write's reply leaves the server only after [`crate::coordinator::Store::commit`].

pub mod codec;
mod command;
mod conn_cmds;
pub mod frame;
mod key_cmds;
mod kv_cmds;
mod pipeline;
mod server;
mod server_cmds;
mod string_cmds;

pub use command::Cmd;
pub use server::{RespConfig, RespServer, RespServerHandle};
