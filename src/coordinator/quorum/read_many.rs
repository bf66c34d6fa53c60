//! The batched read path: the keys of a pipelined run of GETs (or an MGET)
//! read as [`QuorumStore::quorum_read`] reads one, except that the remote
//! reads going to one replica travel together as one [`Request::ReadMany`],
//! and a batch kept waiting past the read speculation delay sends its keys
//! on to their next primaries, batched again.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

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
            self.ask_batched(name, &mut reads).await;
            for (index, result) in self.settle_batched(ks, reads).await {
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
        let asked = asking.into_iter().map(|(index, read)| async move {
            let needed = read.needed;
            let (key, rest) = (&read.key, read.rest.into_iter());
            let (seen, bad) = self
                .read_rest(ks, key, rest, needed, read.good, read.bad)
                .await;
            let result = self
                .settle_read(ks, key, &read.plan, needed, seen, bad)
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
    /// really fails does). With read speculation, batches still out after
    /// its delay are given up, once: their reads ask their next primaries,
    /// batched again, and keep the slow replica last in `rest`.
    async fn ask_batched(&self, keyspace: &str, reads: &mut [(usize, Read)]) {
        let mut speculate = self.speculate_after;
        loop {
            let mut by_node = ByNode::default();
            let mut pending: Vec<Vec<Arc<str>>> = vec![Vec::new(); reads.len()];
            for (at, (_, read)) in reads.iter_mut().enumerate() {
                for peer in read.asked.drain(..) {
                    by_node.add(&peer, at);
                    pending[at].push(peer);
                }
            }
            let requests = by_node.requests(|at| reads[at].1.key.len());
            if requests.is_empty() {
                return;
            }
            let mut asks: FuturesUnordered<_> = requests
                .into_iter()
                .map(|(peer, members)| {
                    let keys = members.iter().map(|&at| reads[at].1.key.clone()).collect();
                    let ask = self.read_batch(keyspace, peer.clone(), keys);
                    ask.map(move |answers| (peer, members, answers))
                })
                .collect();
            let mut slow = false;
            loop {
                let answered = match speculate {
                    Some(after) => match tokio::time::timeout(after, asks.next()).await {
                        Ok(answered) => answered,
                        Err(_) => {
                            speculate = None;
                            // NOTE: worth it only if a read still waiting has
                            // another primary to ask (not at ALL).
                            let movable = pending
                                .iter()
                                .zip(reads.iter())
                                .any(|(slow, (_, read))| !slow.is_empty() && !read.rest.is_empty());
                            if movable {
                                slow = true;
                                break;
                            }
                            continue;
                        }
                    },
                    None => asks.next().await,
                };
                let Some((peer, members, answers)) = answered else {
                    break;
                };
                for &at in &members {
                    pending[at].retain(|p| *p != peer);
                }
                self.file_batch(reads, peer, members, answers);
            }
            if !slow {
                return;
            }
            let mut moved = 0;
            for (at, (_, read)) in reads.iter_mut().enumerate() {
                for slow_peer in pending[at].drain(..) {
                    if read.rest.is_empty() {
                        // NOTE: no other primary: the slow one is asked
                        // again, alone, after the batch.
                        read.rest.push(slow_peer);
                        continue;
                    }
                    read.asked.push(read.rest.remove(0));
                    read.rest.push(slow_peer);
                    moved += 1;
                }
            }
            metrics::counter!("ringkv_read_speculations_total").increment(moved);
        }
    }

    /// Files the answer of one replica's batch (`members` index `reads`)
    /// with each read it carried.
    fn file_batch(
        &self,
        reads: &mut [(usize, Read)],
        peer: Arc<str>,
        members: Vec<usize>,
        (records, failure): (Vec<Option<Bytes>>, Option<(String, bool)>),
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
                    read.rest.insert(0, peer.clone());
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
    async fn read_batch(
        &self,
        keyspace: &str,
        peer: Arc<str>,
        keys: Vec<Bytes>,
    ) -> (Vec<Option<Bytes>>, Option<(String, bool)>) {
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
