//! The batched read path: the keys of a pipelined run of GETs (or an MGET)
//! read as [`QuorumStore::quorum_read`] reads one, except that the remote
//! reads going to one replica travel together as one [`Request::ReadMany`],
//! and a batch kept waiting past the read speculation delay sends its keys
//! on to their next primaries, batched again.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::read::{Read, UpMemo, accept_record};
use super::{ByNode, QuorumStore};
use crate::coordinator::{KeyspaceId, Level, StoreError};
use crate::net::{Request, Response, Transport};
use crate::ring;
use crate::version::Record;

impl<T: Transport> QuorumStore<T> {
    /// Reads `keys` at `level`, each as [`Self::quorum_read`] would, except
    /// that the remote reads going to one replica travel together as one
    /// [`Request::ReadMany`] (a pipelined run of GETs, an MGET). A key whose
    /// answer in a batch is missing or does not count asks the next
    /// primaries one at a time, as a single read does.
    pub(super) async fn quorum_read_many(
        &self,
        ks: KeyspaceId,
        keys: &[Bytes],
        level: Level,
    ) -> Vec<Result<Option<Record>, StoreError>> {
        let name = &self.keyspaces.get(ks).name;
        let mut done: Vec<Option<Result<Option<Record>, StoreError>>> = Vec::new();
        let mut reads = Vec::new();
        let mut up = UpMemo::new(&self.is_up);
        for (index, key) in keys.iter().enumerate() {
            let hash = ring::key_hash(name, key);
            let begun = self.plan_hashed(ks, hash).and_then(|plan| {
                let needed = Self::required(level, plan.n)?;
                Ok(match self.read_in_place(ks, hash, key, &plan, needed) {
                    Some(record) => Some(record),
                    None => {
                        let read = self.begin_read(ks, hash, key.clone(), plan, needed, &mut up);
                        reads.push((index, read));
                        None
                    }
                })
            });
            done.push(match begun {
                Ok(Some(record)) => Some(Ok(record)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            });
        }
        if !reads.is_empty() {
            let deadline = self.speculation_deadline();
            self.ask_batched(name, &mut reads, deadline).await;
            for (index, result) in self.settle_batched(ks, reads, deadline).await {
                done[index] = Some(result);
            }
        }
        done.into_iter()
            .map(|result| result.expect("every key of a batched read is answered"))
            .collect()
    }

    /// Ends the reads of a batch once their batched answers are in: most
    /// end here, answered and agreeing, with no future; a future only for
    /// those that must ask on or repair.
    async fn settle_batched(
        &self,
        ks: KeyspaceId,
        reads: Vec<(usize, Read)>,
        deadline: Option<Instant>,
    ) -> Vec<(usize, Result<Option<Record>, StoreError>)> {
        let mut settled = Vec::with_capacity(reads.len());
        let (mut asking, mut repairing) = (Vec::new(), Vec::new());
        for (index, read) in reads {
            if read.good.len() < read.needed {
                asking.push((index, read));
                continue;
            }
            let (plan, needed) = (&read.plan, read.needed);
            match self.conclude(ks, &read.key, plan, needed, read.good, read.bad) {
                Ok((Some(merged), Some(seen))) => repairing.push((index, read.key, merged, seen)),
                Ok((merged, _)) => settled.push((index, Ok(merged))),
                Err(e) => settled.push((index, Err(e))),
            }
        }
        let asked = asking.into_iter().map(|(index, mut read)| async move {
            self.read_rest(ks, &mut read, deadline).await;
            let (key, plan, needed) = (&read.key, &read.plan, read.needed);
            let result = self
                .settle_read(ks, key, plan, needed, read.good, read.bad)
                .await;
            (index, result)
        });
        let repaired = repairing
            .into_iter()
            .map(|(index, key, merged, seen)| async move {
                self.read_repair(ks, &key, &merged, seen).await;
                (index, Ok(Some(merged)))
            });
        let (asked, repaired) = futures_util::future::join(
            futures_util::future::join_all(asked),
            futures_util::future::join_all(repaired),
        )
        .await;
        settled.extend(asked);
        settled.extend(repaired);
        settled
    }

    /// Sends each replica [`Request::ReadMany`]s for the keys of `reads`
    /// that ask it, all replicas at once, and files every answer with its
    /// read. A replica that answers a batch's first keys only is asked for
    /// the rest again; keys it refused as a batch go back to the front of
    /// their read's `rest`, to be asked alone (where only a key that
    /// really fails does). Reads still short of answers at `deadline` (read
    /// speculation) ask their spare primaries too, batched again, while
    /// the batches already out stay out: the first answers count.
    async fn ask_batched(
        &self,
        keyspace: &str,
        reads: &mut [(usize, Read)],
        deadline: Option<Instant>,
    ) {
        // NOTE: per read, the replicas whose batch is still out.
        let mut pending: Vec<Vec<Arc<str>>> = vec![Vec::new(); reads.len()];
        let mut asks = FuturesUnordered::new();
        self.send_batches(keyspace, reads, &mut pending, &mut asks);
        let mut speculate = deadline;
        loop {
            let waiting = |(_, read): &(usize, Read), pending: &Vec<Arc<str>>| {
                !pending.is_empty() && read.good.len() < read.needed
            };
            if !reads.iter().zip(&pending).any(|(read, p)| waiting(read, p)) {
                return;
            }
            let answered = match speculate {
                Some(at) => match tokio::time::timeout_at(at, asks.next()).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        speculate = None;
                        let mut moved = 0;
                        for (read, p) in reads.iter_mut().zip(&pending) {
                            if waiting(read, p) && !read.1.speculated {
                                moved += speculate_read(&mut read.1, p.len());
                            }
                        }
                        if moved > 0 {
                            metrics::counter!("ringkv_read_speculations_total").increment(moved);
                            self.send_batches(keyspace, reads, &mut pending, &mut asks);
                        }
                        continue;
                    }
                },
                None => asks.next().await,
            };
            let Some((peer, members, answers)) = answered else {
                return;
            };
            for &at in &members {
                pending[at].retain(|p| *p != peer);
            }
            self.file_batch(reads, peer, members, answers);
        }
    }

    /// Sends one [`Request::ReadMany`] per replica for the keys of the
    /// reads that ask it (`asked`, drained), noting it in `pending`.
    fn send_batches<'a>(
        &'a self,
        keyspace: &'a str,
        reads: &mut [(usize, Read)],
        pending: &mut [Vec<Arc<str>>],
        asks: &mut FuturesUnordered<BoxFuture<'a, BatchAnswer>>,
    ) {
        let mut by_node = ByNode::default();
        for (at, (_, read)) in reads.iter_mut().enumerate() {
            for peer in read.asked.drain(..) {
                by_node.add(&peer, at);
                pending[at].push(peer);
            }
        }
        for (peer, members) in by_node.requests(|at| reads[at].1.key.len()) {
            let keys = members.iter().map(|&at| reads[at].1.key.clone()).collect();
            let ask = self.read_batch(keyspace, peer.clone(), keys);
            asks.push(ask.map(move |answers| (peer, members, answers)).boxed());
        }
    }

    /// Files the answer of one replica's batch (`members` index `reads`)
    /// with each read it carried.
    fn file_batch(
        &self,
        reads: &mut [(usize, Read)],
        peer: Arc<str>,
        members: Vec<usize>,
        (records, failure): Records,
    ) {
        let hlc = self.local.hlc();
        let mut asked_alone = 0;
        let mut records = records.into_iter();
        for at in members {
            let read = &mut reads[at].1;
            let answer = match (records.next(), &failure) {
                (Some(raw), _) => accept_record(hlc, Ok(Response::Record(raw))),
                (None, Some((why, false))) => Err(why.clone()),
                (None, _) => {
                    // NOTE: it answered, so it is up: a spare primary too.
                    read.rest.insert(0, peer.clone());
                    read.spare += 1;
                    asked_alone += 1;
                    continue;
                }
            };
            match answer {
                Ok(record) => read.good.push((peer.clone(), record)),
                Err(why) => read.bad.push((peer.clone(), Err(why))),
            }
        }
        if asked_alone > 0 {
            metrics::counter!("ringkv_batch_read_retries_total", "reason" => "refused")
                .increment(asked_alone);
        }
    }

    /// The records `peer` holds of `keys`, in order, asking again for those
    /// an answer left out; short when it failed, with why and whether it
    /// answered and refused (`true`) rather than could not be reached.
    async fn read_batch(&self, keyspace: &str, peer: Arc<str>, keys: Vec<Bytes>) -> Records {
        let mut records = Vec::with_capacity(keys.len());
        while records.len() < keys.len() {
            let left = keys.len() - records.len();
            let request = Request::ReadMany {
                keyspace: keyspace.to_owned(),
                keys: keys[records.len()..].to_vec(),
            };
            let failure = match self.call_replica(peer.clone(), request).await.1 {
                Ok(Response::Records(more)) if !more.is_empty() && more.len() <= left => {
                    if more.len() < left {
                        metrics::counter!("ringkv_batch_read_retries_total", "reason" => "cut_short")
                            .increment(1);
                    }
                    records.extend(more);
                    continue;
                }
                Ok(Response::Records(more)) => {
                    (format!("{} records for {left} keys", more.len()), true)
                }
                Ok(Response::Error(why)) => (why, true),
                Ok(other) => (format!("unexpected answer {other:?}"), true),
                Err(why) => (why, false),
            };
            return (records, Some(failure));
        }
        (records, None)
    }
}

/// A replica's records for a batch's keys, in order; short when it failed,
/// with why and whether it answered and refused (`true`).
type Records = (Vec<Option<Bytes>>, Option<(String, bool)>);

/// A batch's replica, the reads it carried (indexes) and its records.
type BatchAnswer = (Arc<str>, Vec<usize>, Records);

/// Read speculation for one read kept waiting on `slow` batches: as many of
/// its spare primaries, moved to `asked`. Returns how many.
fn speculate_read(read: &mut Read, slow: usize) -> u64 {
    read.speculated = true;
    let moved = slow.min(read.spare);
    read.asked.extend(read.rest.drain(..moved));
    read.spare -= moved;
    moved as u64
}
