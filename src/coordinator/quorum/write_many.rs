//! Batched writes: the blind writes of a pipelined run (or an MSET) are
//! stamped in order and written in place here when this node is a primary,
//! and the replica writes that go to one node travel as one
//! [`Request::WriteMany`]. Each write is acknowledged, hinted and failed as
//! a single strict-quorum write is (write.rs): acknowledged once `w`
//! primaries merged it, a hint kept here for each primary that could not be
//! reached (a primary's own refusal gets none), the rest finished in the
//! background. Sloppy writes are not batched.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

use super::write::written;
use super::{ByNode, Plan, QuorumStore, ReplicaResult};
use crate::coordinator::{KeyspaceId, Level, Store, StoreError, WriteCmd, WriteOutcome};
use crate::net::{Request, Response, Transport};
use crate::version::Record;

/// One write of a batch under way.
struct Pending {
    plan: Arc<Plan>,
    needed: usize,
    good: usize,
    bad: Vec<ReplicaResult>,
    /// Primaries that failed without refusing, so far: each gets a hint.
    unhinted: Vec<Arc<str>>,
}

/// A write of a batch: under way, not applied (its command decided so), or
/// refused before any replica was asked.
type Started = Result<Option<Pending>, StoreError>;

/// Each write's key and encoded record, shared with the calls that finish
/// after the client was answered.
type Encoded = Arc<Vec<(Bytes, Bytes)>>;

/// One write's outcome on one replica: written, or why not and whether the
/// replica answered and refused (`true`) rather than could not be reached.
type Outcome = Result<(), (String, bool)>;

/// A [`Request::WriteMany`]'s node, the writes it carried (indexes into the
/// batch) and its answer.
type BatchAnswer = (Arc<str>, Vec<usize>, Result<Response, String>);

impl<T: Transport> QuorumStore<T> {
    /// Applies each of `writes` (blind: none reads the current value) at
    /// `level`, in order: a key written twice ends with its later write.
    pub(super) async fn quorum_write_many(
        &self,
        ks: KeyspaceId,
        writes: Vec<(Bytes, WriteCmd)>,
        level: Level,
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        let now = Store::now_ms(self);
        let mut started: Vec<Started> = Vec::with_capacity(writes.len());
        let mut encoded = Vec::with_capacity(writes.len());
        let mut by_node = ByNode::default();
        for (key, cmd) in writes {
            let index = started.len();
            let (write, record) = match self.start_write(ks, &key, cmd, level, now) {
                Ok(Some((plan, needed, record))) => {
                    let mut write = Pending {
                        plan,
                        needed,
                        good: 0,
                        bad: Vec::new(),
                        unhinted: Vec::new(),
                    };
                    let raw = record.encode();
                    self.write_here_or_group(
                        ks,
                        &key,
                        (record, &raw),
                        index,
                        &mut write,
                        &mut by_node,
                    );
                    (Ok(Some(write)), raw)
                }
                Ok(None) => (Ok(None), Bytes::new()),
                Err(e) => (Err(e), Bytes::new()),
            };
            started.push(write);
            encoded.push((key, record));
        }
        let encoded: Encoded = Arc::new(encoded);
        let keyspace = self.keyspaces.get(ks).name.clone();
        let mut calls = FuturesUnordered::new();
        let size = |i: usize| encoded[i].0.len() + encoded[i].1.len();
        for (peer, members) in by_node.requests(size) {
            let request = Request::WriteMany {
                keyspace: keyspace.clone(),
                writes: members.iter().map(|&i| encoded[i].clone()).collect(),
            };
            let call = self.call_replica(peer, request);
            calls.push(call.map(move |(node, answer)| (node, members, answer)));
        }
        let waiting = |started: &[Started]| {
            started
                .iter()
                .any(|w| matches!(w, Ok(Some(w)) if w.good < w.needed))
        };
        while waiting(&started) {
            let Some((node, members, answer)) = calls.next().await else {
                break;
            };
            for (index, outcome) in outcomes(&members, answer) {
                let Ok(Some(write)) = &mut started[index] else {
                    continue;
                };
                match outcome {
                    Ok(()) => write.good += 1,
                    Err((why, refused)) => {
                        write.bad.push((node.clone(), Err(why)));
                        if !refused {
                            write.unhinted.push(node.clone());
                        }
                    }
                }
            }
        }
        self.hint_batch(keyspace, encoded, &started, calls).await;
        started.into_iter().map(Self::write_result).collect()
    }

    /// Stamps `cmd` and decides what it writes: the key's plan, the
    /// acknowledgements needed and the record, or `None` if it writes
    /// nothing.
    fn start_write(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        cmd: WriteCmd,
        level: Level,
        now: u64,
    ) -> Result<Option<(Arc<Plan>, usize, Record)>, StoreError> {
        let plan = self.plan(ks, key)?;
        let needed = Self::required(level, plan.n)?;
        Ok(self
            .stamp(cmd, None, now)
            .map(|record| (plan, needed, record)))
    }

    /// Merges `record` here in place if this node is a primary of `key`,
    /// and files write `index` under each other primary, for its batch.
    fn write_here_or_group(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        (record, raw): (Record, &Bytes),
        index: usize,
        write: &mut Pending,
        by_node: &mut ByNode,
    ) {
        for primary in &write.plan.primaries {
            if **primary != *self.me {
                by_node.add(primary, index);
                continue;
            }
            // IMPORTANT: merged, not yet durable: the connection commits
            // (Store::commit) before any reply leaves, as for a single write.
            // NOTE: a refusal here (clock skew, engine error) is this node's
            // own: a hint for itself would be refused too.
            match self
                .local
                .merge_stored_encoded(ks, key, record.clone(), raw.clone())
            {
                Ok(()) => write.good += 1,
                Err(e) => write.bad.push((primary.clone(), Err(e.to_string()))),
            }
        }
    }

    /// Keeps a hint for every primary that failed a write so far, and lets
    /// the `calls` still out finish ([`QuorumStore::finish_late`]), keeping
    /// a hint for each write they fail without a refusal.
    async fn hint_batch<Call>(
        &self,
        keyspace: String,
        encoded: Encoded,
        started: &[Started],
        calls: FuturesUnordered<Call>,
    ) where
        Call: std::future::Future<Output = BatchAnswer> + Send + 'static,
    {
        let keeper = self.hint_keeper();
        let writes = encoded.len();
        // NOTE: one flush of the hint store per target and per answer, not
        // one per write.
        let keep_hints = move |target: &Arc<str>, indexes: &mut dyn Iterator<Item = usize>| {
            let missed = indexes.map(|i| (&encoded[i].0[..], encoded[i].1.clone()));
            keeper.keep(target, &keyspace, missed);
        };
        let mut by_target = ByNode::default();
        for (index, write) in started.iter().enumerate() {
            if let Ok(Some(write)) = write {
                for target in &write.unhinted {
                    by_target.add(target, index);
                }
            }
        }
        for (target, indexes) in by_target.0 {
            keep_hints(&target, &mut indexes.into_iter());
        }
        let settle = move |(node, members, answer): BatchAnswer| {
            let mut missed = outcomes(&members, answer)
                .into_iter()
                .filter(|(_, outcome)| matches!(outcome, Err((_, false))))
                .map(|(index, _)| index);
            keep_hints(&node, &mut missed);
        };
        self.finish_late(calls, writes, settle).await;
    }

    /// What a client is told of one write of a batch.
    fn write_result(write: Started) -> Result<WriteOutcome, StoreError> {
        let applied = match write? {
            None => false,
            Some(write) if write.good >= write.needed => true,
            Some(write) => {
                let hinted = !write.unhinted.is_empty();
                let (needed, good) = (write.needed, write.good);
                return Err(Self::write_failed(
                    needed,
                    good,
                    write.bad,
                    &write.plan,
                    hinted,
                ));
            }
        };
        Ok(WriteOutcome {
            applied,
            previous: None,
        })
    }
}

/// Each write's outcome in a replica's answer to a [`Request::WriteMany`]
/// carrying `members`: written, or why not and whether the replica answered
/// and refused (`true`) rather than could not be reached (`false`).
fn outcomes(members: &[usize], answer: Result<Response, String>) -> Vec<(usize, Outcome)> {
    let every = match answer {
        Ok(Response::Outcomes(list)) if list.len() == members.len() => {
            return members
                .iter()
                .zip(list)
                .map(|(&index, refusal)| {
                    // NOTE: one write's refusal reads as a whole answer's.
                    let outcome = refusal.map_or(Ok(()), |why| written(Ok(Response::Error(why))));
                    (index, outcome)
                })
                .collect();
        }
        // NOTE: an answer that does not match the request says nothing of
        // what was applied: hinted, as if the replica were unreachable.
        Ok(Response::Outcomes(list)) => Err((
            format!("{} outcomes for {} writes", list.len(), members.len()),
            false,
        )),
        Ok(Response::Written) => Err(("unexpected answer Written".to_owned(), true)),
        answer => written(answer),
    };
    members
        .iter()
        .map(|&index| (index, every.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_write_of_an_answer_is_read_as_written_refused_or_unreached() {
        let members = [4, 7];
        let list = Ok(Response::Outcomes(vec![None, Some("skew".into())]));
        assert_eq!(
            outcomes(&members, list),
            vec![(4, Ok(())), (7, Err(("skew".into(), true)))]
        );
        let short = outcomes(&members, Ok(Response::Outcomes(vec![None])));
        assert!(
            short.iter().all(|(_, o)| matches!(o, Err((_, false)))),
            "hinted: {short:?}"
        );
        let refused = outcomes(&members, Ok(Response::Error("no keyspace".into())));
        assert!(refused.iter().all(|(_, o)| matches!(o, Err((_, true)))));
        let unreached = outcomes(&members, Err("timed out".into()));
        assert!(unreached.iter().all(|(_, o)| matches!(o, Err((_, false)))));
        let odd = outcomes(&members, Ok(Response::Written));
        assert!(odd.iter().all(|(_, o)| matches!(o, Err((_, true)))));
        // A replica that lost its fsync refuses until it restarts: hinted,
        // in a batch answer and as a whole answer alike.
        let lost = format!("storage: {}; ...", crate::storage::WRITES_REFUSED);
        let list = Ok(Response::Outcomes(vec![Some(lost.clone()), None]));
        assert_eq!(
            outcomes(&members, list),
            vec![(4, Err((lost.clone(), false))), (7, Ok(()))]
        );
        let whole = outcomes(&members, Ok(Response::Error(lost)));
        assert!(whole.iter().all(|(_, o)| matches!(o, Err((_, false)))));
    }
}
