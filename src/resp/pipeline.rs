//! Concurrent execution of pipelined commands, for stores whose requests
//! wait on the network (the quorum coordinator): runs are gathered here and
//! run together, a run of plain GETs or SETs as one batch of keys.
//!
//! A run is a stretch of consecutive pipelined commands that read or blindly
//! write single keys (GET, KV.GET, a plain SET, KV.PUT) and do not depend on
//! each other: a key is only read, or only written, within the run. Its
//! commands are dispatched together and their replies encoded in request
//! order. Invariant: a run never holds both a read and a write of one key,
//! so no command can observe a later command's effect or miss an earlier
//! one's; blind writes of one key are stamped in request order (a write is
//! stamped before its first await), so the last one wins, as in Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use super::Cmd;
use super::command::{Cx, dispatch, is};
use super::frame::Frame;
use super::server::{Batch, LATENCY_SAMPLE_EVERY, Session, Shared};
use super::string_cmds;
use crate::coordinator::Store;

/// The most commands one run holds.
pub(crate) const MAX_RUN: usize = 256;

/// How a command touches its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    BlindWrite,
}

/// The key and access of a command that may join a run, or `None`.
fn access(args: &[Bytes]) -> Option<(&Bytes, Access)> {
    let (name, rest) = args.split_first()?;
    match rest {
        [key] if is(name, "GET") => Some((key, Access::Read)),
        [key, ..] if is(name, "KV.GET") => Some((key, Access::Read)),
        [key, _value] if is(name, "SET") => Some((key, Access::BlindWrite)),
        [key, _value, ..] if is(name, "KV.PUT") => Some((key, Access::BlindWrite)),
        _ => None,
    }
}

/// The command every command of a run is in its plain form (`GET key`, or
/// `SET key value` with no option), if they all are: such a run is read or
/// written as one batch of keys.
pub(crate) fn plain_kind(commands: &[Vec<Bytes>]) -> Option<Cmd> {
    let kind = |args: &Vec<Bytes>| match args.as_slice() {
        [name, _key] if is(name, "GET") => Some(Cmd::Get),
        [name, _key, _value] if is(name, "SET") => Some(Cmd::Set),
        _ => None,
    };
    let first = kind(commands.first()?)?;
    commands[1..]
        .iter()
        .all(|args| kind(args) == Some(first))
        .then_some(first)
}

/// The commands of a run being built, and how the run touches their keys.
#[derive(Debug, Default)]
pub(crate) struct Run {
    commands: Vec<Vec<Bytes>>,
    /// Each key's access, built once the run mixes reads and writes (a run
    /// of only reads or only writes cannot conflict, and skips the hashing);
    /// empty until then.
    keys: HashMap<Bytes, Access>,
}

impl Run {
    /// Adds `args` to the run if it can join; gives them back if not.
    pub(crate) fn admit(&mut self, args: Vec<Bytes>) -> Result<(), Vec<Bytes>> {
        let Some((key, access)) = access(&args) else {
            return Err(args);
        };
        if self.keys.is_empty() {
            match self.commands.first().and_then(|first| self::access(first)) {
                Some((_, kind)) if kind != access => {
                    for command in &self.commands {
                        if let Some((key, kind)) = self::access(command) {
                            self.keys.insert(key.clone(), kind);
                        }
                    }
                }
                _ => {
                    self.commands.push(args);
                    return Ok(());
                }
            }
        }
        match self.keys.get(key) {
            Some(existing) if *existing != access => return Err(args),
            Some(_) => {}
            None => {
                self.keys.insert(key.clone(), access);
            }
        }
        self.commands.push(args);
        Ok(())
    }

    /// How many commands the run holds.
    pub(crate) fn len(&self) -> usize {
        self.commands.len()
    }

    /// The run's commands, in request order.
    pub(crate) fn into_commands(self) -> Vec<Vec<Bytes>> {
        self.commands
    }
}

/// Runs a [`Run`] of independent commands together and encodes
/// their replies in request order. They only read the session, so each gets
/// its own copy.
///
/// Each command is polled once as it is dispatched: one that needs no
/// network (a level-one read of a local key) is done then, and only those
/// still waiting are driven together afterwards.
pub(super) async fn run_concurrently<S: Store>(
    shared: &Arc<Shared<S>>,
    session: &mut Session,
    commands: &[Vec<Bytes>],
    batch: &mut Batch<'_>,
) {
    let started = Instant::now();
    let first = count_run(shared, session, commands.len());
    let snapshot = &*session;
    let mut replies: Vec<Option<(Option<Cmd>, Frame)>> = Vec::with_capacity(commands.len());
    // NOTE: FuturesUnordered polls only the commands that were woken
    // (join_all polls every one on each wake-up).
    let mut waiting = futures_util::stream::FuturesUnordered::new();
    for (index, args) in commands.iter().enumerate() {
        let mut own = snapshot.clone();
        let mut command = Box::pin(async move {
            let mut cx = Cx {
                shared,
                session: &mut own,
            };
            dispatch(&mut cx, args).await
        });
        let polled = std::future::poll_fn(|cx| Poll::Ready(command.as_mut().poll(cx))).await;
        match polled {
            Poll::Ready(reply) => replies.push(Some(reply)),
            Poll::Pending => {
                replies.push(None);
                waiting.push(async move { (index, command.await) });
            }
        }
    }
    while let Some((index, reply)) = waiting.next().await {
        replies[index] = Some(reply);
    }
    // NOTE: not data from the network: every slot is filled once `waiting`
    // is drained, and a reply must never shift onto another request.
    let replies = replies
        .into_iter()
        .map(|reply| reply.expect("every command of a run has answered"));
    encode_run(shared, session, first, started.elapsed(), replies, batch);
}

/// Runs a run of plain `GET key`s or `SET key value`s (`kind`) as one read
/// or write of many keys (a cluster sends those going to one replica
/// together) and encodes their replies in request order.
pub(super) async fn run_plain<S: Store>(
    shared: &Arc<Shared<S>>,
    session: &mut Session,
    kind: Cmd,
    commands: &[Vec<Bytes>],
    batch: &mut Batch<'_>,
) {
    let started = Instant::now();
    let first = count_run(shared, session, commands.len());
    let mut cx = Cx { shared, session };
    let replies = match kind {
        Cmd::Set => string_cmds::set_run(&mut cx, commands).await,
        _ => string_cmds::get_run(&mut cx, commands).await,
    };
    let replies = replies.into_iter().map(|reply| (Some(kind), reply));
    encode_run(shared, session, first, started.elapsed(), replies, batch);
}

/// Counts a run of `len` commands in the server's and the session's totals;
/// returns the session's count before it.
fn count_run<S: Store>(shared: &Arc<Shared<S>>, session: &mut Session, len: usize) -> u64 {
    shared
        .total_commands
        .fetch_add(len as u64, Ordering::Relaxed);
    let first = session.commands;
    session.commands += len as u64;
    first
}

/// Records and encodes the replies of a run whose first command was number
/// `first + 1` of the session, all sampled with the run's latency.
fn encode_run<S: Store>(
    shared: &Arc<Shared<S>>,
    session: &Session,
    first: u64,
    elapsed: Duration,
    replies: impl Iterator<Item = (Option<Cmd>, Frame)>,
    batch: &mut Batch<'_>,
) {
    for (number, (cmd, reply)) in (first + 1..).zip(replies) {
        let failed = matches!(reply, Frame::Error(_));
        let sampled = number
            .is_multiple_of(LATENCY_SAMPLE_EVERY)
            .then_some(elapsed);
        shared.metrics.record(cmd, sampled, failed);
        batch.wrote |= cmd.is_some_and(Cmd::is_write) && !failed;
        reply.encode(session.proto, batch.output);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn reads_and_blind_writes_of_distinct_keys_share_a_run() {
        let mut run = Run::default();
        assert!(run.admit(cmd(&["SET", "a", "1"])).is_ok());
        assert!(
            run.admit(cmd(&["set", "a", "2"])).is_ok(),
            "writes of one key stay ordered by stamp"
        );
        assert!(run.admit(cmd(&["GET", "b"])).is_ok());
        assert!(run.admit(cmd(&["KV.GET", "b", "R", "one"])).is_ok());
        assert!(run.admit(cmd(&["KV.PUT", "c", "v", "W", "all"])).is_ok());
    }

    #[test]
    fn a_read_and_a_write_of_one_key_never_share_a_run() {
        let mut run = Run::default();
        assert!(run.admit(cmd(&["SET", "a", "1"])).is_ok());
        assert!(run.admit(cmd(&["GET", "a"])).is_err());
        let mut run = Run::default();
        assert!(run.admit(cmd(&["GET", "a"])).is_ok());
        assert!(run.admit(cmd(&["KV.PUT", "a", "v"])).is_err());
    }

    #[test]
    fn a_conflict_is_found_when_a_run_of_one_kind_first_mixes() {
        // NOTE: a run of only reads (or only writes) keeps no key index;
        // the first command of the other kind must still see every key.
        let mut run = Run::default();
        for key in ["a", "b", "c"] {
            assert!(run.admit(cmd(&["GET", key])).is_ok());
        }
        assert!(run.admit(cmd(&["SET", "b", "1"])).is_err());
        assert!(run.admit(cmd(&["SET", "d", "1"])).is_ok());
        assert!(run.admit(cmd(&["GET", "d"])).is_err());
        assert!(run.admit(cmd(&["GET", "c"])).is_ok());
        assert_eq!(run.len(), 5);

        let mut run = Run::default();
        for key in ["a", "b"] {
            assert!(run.admit(cmd(&["SET", key, "1"])).is_ok());
        }
        assert!(run.admit(cmd(&["GET", "a"])).is_err());
        assert!(run.admit(cmd(&["KV.GET", "z"])).is_ok());
        assert!(run.admit(cmd(&["KV.PUT", "z", "v"])).is_err());
        assert_eq!(run.into_commands().len(), 3);
    }

    #[test]
    fn only_a_run_of_one_plain_command_is_a_batch() {
        let run = |commands: &[&[&str]]| -> Vec<Vec<Bytes>> {
            commands.iter().map(|words| cmd(words)).collect()
        };
        let gets = run(&[&["GET", "a"], &["get", "b"]]);
        assert_eq!(plain_kind(&gets), Some(Cmd::Get));
        let sets = run(&[&["SET", "a", "1"], &["set", "b", "2"]]);
        assert_eq!(plain_kind(&sets), Some(Cmd::Set));
        for mixed in [
            run(&[&["GET", "a"], &["SET", "b", "1"]]),
            run(&[&["SET", "a", "1"], &["KV.PUT", "b", "1"]]),
            run(&[&["GET", "a"], &["KV.GET", "b"]]),
            run(&[&["SET", "a", "1"], &["SET", "b", "1", "EX", "10"]]),
        ] {
            assert_eq!(plain_kind(&mixed), None, "{mixed:?}");
        }
    }

    #[test]
    fn other_commands_never_join() {
        let mut run = Run::default();
        for words in [
            &["SET", "a", "1", "NX"][..],
            &["SET", "a", "1", "EX", "10"],
            &["DEL", "a"],
            &["MGET", "a", "b"],
            &["SELECT", "1"],
            &["GET"],
            &["INCR", "a"],
        ] {
            assert!(run.admit(cmd(words)).is_err(), "{words:?}");
        }
    }
}
