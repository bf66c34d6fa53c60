//! The read path: ask `r` primaries (this node's own replica in place
//! first), merge, and repair the stale replicas read (and, one read in
//! `repair_every`, the others in the background).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use super::{Liveness, Plan, QuorumStore, ReplicaResult};
use crate::coordinator::{KeyspaceId, Level, StoreError};
use crate::net::{Request, Response, Transport};
use crate::ring;
use crate::version::{Hlc, Record};

impl<T: Transport> QuorumStore<T> {
    /// Reads `key` at `level`: the merge of the records of `r` primaries.
    pub(super) async fn quorum_read(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        level: Level,
    ) -> Result<Option<Record>, StoreError> {
        let hash = ring::key_hash(&self.keyspaces.get(ks).name, key);
        let plan = self.plan_hashed(ks, hash)?;
        let needed = Self::required(level, plan.n)?;
        if let Some(record) = self.read_in_place(ks, hash, key, &plan, needed) {
            return Ok(record);
        }
        let key = Bytes::copy_from_slice(key);
        let mut up = UpMemo::new(&self.is_up);
        let mut read = self.begin_read(ks, hash, key, plan, needed, &mut up);
        self.read_rest(ks, &mut read, self.speculation_deadline())
            .await;
        let (key, plan) = (&read.key, &read.plan);
        self.settle_read(ks, key, plan, needed, read.good, read.bad)
            .await
    }

    /// When a read begun now speculates, if it does.
    pub(super) fn speculation_deadline(&self) -> Option<Instant> {
        self.speculate_after.map(|after| Instant::now() + after)
    }

    /// A read of one replica that this node holds, done in place with no
    /// fan-out (most reads at level one, and the hot path there), or `None`
    /// when the read needs other replicas or the local one failed.
    pub(super) fn read_in_place(
        &self,
        ks: KeyspaceId,
        hash: u64,
        key: &[u8],
        plan: &Plan,
        needed: usize,
    ) -> Option<Option<Record>> {
        if needed != 1 || !plan.local || self.own_replica_is_frozen() {
            return None;
        }
        let record = self.read_own(ks, hash, key).ok()?;
        if plan.primaries.len() > 1 && self.sample_background_repair() {
            let others = plan
                .primaries
                .iter()
                .filter(|p| ***p != *self.me)
                .cloned()
                .collect();
            let known = vec![(self.me.clone(), record.clone())];
            self.repair_in_background(ks, Bytes::copy_from_slice(key), known, others);
        }
        Some(record)
    }

    /// Whether this node's replica refuses writes until a restart (a
    /// journal fsync failed), so it holds nothing written since.
    fn own_replica_is_frozen(&self) -> bool {
        self.local.engine().write_error().is_some()
    }

    /// Starts a read of `key`: this node's replica read in place if it is a
    /// primary, and which primaries to ask next (this node first, then
    /// those gossip says are up: a node reported down would only cost a
    /// timeout). A healthy read costs `r` requests, not `n`.
    pub(super) fn begin_read(
        &self,
        ks: KeyspaceId,
        hash: u64,
        key: Bytes,
        plan: Arc<Plan>,
        needed: usize,
        up: &mut UpMemo<'_>,
    ) -> Read {
        let (mut good, mut bad) = (Vec::with_capacity(needed), Vec::new());
        let me = plan.primaries.iter().find(|node| ***node == *self.me);
        // NOTE: a replica that refuses writes (its fsync failed) misses
        // every write since: asked last, only when the others fall short
        // (n = 1, ALL, peers down), so a read at level one does not answer
        // from it. It still holds a version, only maybe an old one.
        let frozen = me.filter(|_| self.own_replica_is_frozen());
        // NOTE: otherwise this node's replica is read in place: no task, and
        // no encoding of the record to decode it again.
        if let Some(me) = me.filter(|_| frozen.is_none()) {
            match self.read_own(ks, hash, &key) {
                Ok(record) => good.push((me.clone(), record)),
                Err(why) => bad.push((me.clone(), Err(why))),
            }
        }
        // The other primaries, those up first, each group in preference
        // order, then a frozen own replica: the first ones still needed are
        // asked now.
        let want = needed.saturating_sub(good.len());
        let (mut asked, mut rest) = (Vec::with_capacity(want), Vec::new());
        let mut spare = 0;
        for up_now in [true, false] {
            for node in plan.primaries.iter() {
                if **node != *self.me && up.is_up(node) == up_now {
                    match asked.len() < want {
                        true => asked.push(node.clone()),
                        false => rest.push(node.clone()),
                    }
                }
            }
            if up_now {
                spare = rest.len();
            }
        }
        if let Some(me) = frozen {
            match asked.len() < want {
                true => asked.push(me.clone()),
                false => rest.push(me.clone()),
            }
        }
        Read {
            key,
            plan,
            needed,
            good,
            bad,
            asked,
            rest,
            spare,
            speculated: false,
        }
    }

    /// Asks `read.asked`, then `read.rest` in order, until `read.needed`
    /// answered well or none is left: one more for each that fails. If
    /// answers are still missing at `deadline` (read speculation), one more
    /// too, once per read, and only a spare primary (up, and not this
    /// node's frozen replica); the first answers count.
    pub(super) async fn read_rest(
        &self,
        ks: KeyspaceId,
        read: &mut Read,
        deadline: Option<Instant>,
    ) {
        let missing = read.needed.saturating_sub(read.good.len());
        if missing == 0 {
            return;
        }
        // NOTE: the spare primaries are right behind those asked.
        let spare_end = read.asked.len() + read.spare;
        let asked = std::mem::take(&mut read.asked);
        let mut waiting = asked.into_iter().chain(std::mem::take(&mut read.rest));
        let request = Request::Read {
            keyspace: self.keyspaces.get(ks).name.clone(),
            key: read.key.clone(),
        };
        let mut speculate = deadline.filter(|_| !read.speculated && missing < spare_end);
        if missing == 1 && speculate.is_none() {
            // NOTE: one answer missing (a quorum read with n = 3): the others
            // are asked one at a time, as the set below would, without it.
            for node in waiting {
                let (node, result) = self.call_replica(node, request.clone()).await;
                match accept_record(self.local.hlc(), result) {
                    Ok(record) => {
                        read.good.push((node, record));
                        break;
                    }
                    Err(why) => read.bad.push((node, Err(why))),
                }
            }
            return;
        }
        let mut calls = FuturesUnordered::new();
        let mut taken = 0;
        for node in waiting.by_ref().take(missing) {
            taken += 1;
            calls.push(self.call_replica(node, request.clone()));
        }
        while read.good.len() < read.needed {
            let answer = match speculate.filter(|_| taken < spare_end) {
                Some(at) => match tokio::time::timeout_at(at, calls.next()).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        speculate = None;
                        read.speculated = true;
                        metrics::counter!("ringkv_read_speculations_total").increment(1);
                        if let Some(node) = waiting.next() {
                            taken += 1;
                            calls.push(self.call_replica(node, request.clone()));
                        }
                        continue;
                    }
                },
                None => calls.next().await,
            };
            let Some((node, result)) = answer else {
                break;
            };
            match accept_record(self.local.hlc(), result) {
                Ok(record) => read.good.push((node, record)),
                Err(why) => {
                    read.bad.push((node, Err(why)));
                    if let Some(next) = waiting.next() {
                        taken += 1;
                        calls.push(self.call_replica(next, request.clone()));
                    }
                }
            }
        }
    }

    /// Ends a read that asked what it could: [`Self::conclude`], then the
    /// merged record written back to the stale replicas read.
    pub(super) async fn settle_read(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        plan: &Plan,
        needed: usize,
        seen: Vec<(Arc<str>, Option<Record>)>,
        bad: Vec<ReplicaResult>,
    ) -> Result<Option<Record>, StoreError> {
        let (merged, stale) = self.conclude(ks, key, plan, needed, seen, bad)?;
        if let (Some(merged), Some(seen)) = (&merged, stale) {
            self.read_repair(ks, key, merged, seen).await;
        }
        Ok(merged)
    }

    /// The merge of what `seen` holds, and `seen` again if a replica in it
    /// holds something older (for read repair to write the merge back to
    /// it); unavailable if fewer than `needed` answered. When the replicas
    /// read disagree, or one read in `repair_every`, the primaries not read
    /// are checked in the background.
    pub(super) fn conclude(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        plan: &Plan,
        needed: usize,
        seen: Vec<(Arc<str>, Option<Record>)>,
        bad: Vec<ReplicaResult>,
    ) -> Result<Concluded, StoreError> {
        if seen.len() < needed {
            return Err(Self::unavailable("read", needed, seen.len(), bad, plan));
        }
        let merged = merge_all(&seen);
        // NOTE: replicas that disagree suggest the unread ones are stale
        // too, so they are always checked; otherwise one read in
        // `repair_every` checks them.
        let disagree = seen
            .iter()
            .any(|(_, record)| record.as_ref() != merged.as_ref());
        if seen.len() < plan.primaries.len() && (disagree || self.sample_background_repair()) {
            let unread: Vec<Arc<str>> = plan
                .primaries
                .iter()
                .filter(|p| !seen.iter().any(|(node, _)| node == *p))
                .cloned()
                .collect();
            // NOTE: the replicas read hold `merged` once read repair ran.
            let known: Vec<(Arc<str>, Option<Record>)> = seen
                .iter()
                .map(|(node, _)| (node.clone(), merged.clone()))
                .collect();
            self.repair_in_background(ks, key.clone(), known, unread);
        }
        Ok((merged, disagree.then_some(seen)))
    }

    /// This node's replica of `key` (whose [`ring::key_hash`] is `hash`),
    /// taken as another replica's answer is: refused if it does not decode or
    /// is too far ahead of the clock (a clock that stepped back), and
    /// observed by the HLC, so a write decided on it is stamped after it.
    pub(super) fn read_own(
        &self,
        ks: KeyspaceId,
        hash: u64,
        key: &[u8],
    ) -> Result<Option<Record>, String> {
        let record = self
            .local
            .read_stored_hashed(ks, hash, key)
            .map_err(|e| e.to_string())?;
        observed(self.local.hlc(), record)
    }
}

/// What a read concluded: the merged record, and the replicas it read if
/// some of them need it written back.
type Concluded = (Option<Record>, Option<Vec<(Arc<str>, Option<Record>)>>);

/// Peers' liveness, asked once per node for all the keys of a read (it
/// takes the membership lock).
pub(super) struct UpMemo<'a> {
    is_up: &'a Liveness,
    seen: Vec<(Arc<str>, bool)>,
}

impl<'a> UpMemo<'a> {
    pub(super) fn new(is_up: &'a Liveness) -> Self {
        Self {
            is_up,
            seen: Vec::new(),
        }
    }

    fn is_up(&mut self, node: &Arc<str>) -> bool {
        if let Some((_, up)) = self.seen.iter().find(|(seen, _)| seen == node) {
            return *up;
        }
        let up = (self.is_up)(node);
        self.seen.push((node.clone(), up));
        up
    }
}

/// A read under way: what answered so far, who is being asked, and who is
/// left to ask if they fail.
pub(super) struct Read {
    pub(super) key: Bytes,
    pub(super) plan: Arc<Plan>,
    pub(super) needed: usize,
    pub(super) good: Vec<(Arc<str>, Option<Record>)>,
    pub(super) bad: Vec<ReplicaResult>,
    /// The replicas to ask now, one for each answer still needed.
    pub(super) asked: Vec<Arc<str>>,
    /// The other primaries, in the order they are asked if one fails.
    pub(super) rest: Vec<Arc<str>>,
    /// How many at the front of `rest` read speculation may ask: up, and
    /// not this node's frozen replica.
    pub(super) spare: usize,
    /// Read speculation asked one more already.
    pub(super) speculated: bool,
}

/// The merge (newest version) of the records `answers` hold, if any.
fn merge_all(answers: &[(Arc<str>, Option<Record>)]) -> Option<Record> {
    answers
        .iter()
        .filter_map(|(_, record)| record.clone())
        .reduce(Record::merge)
}

/// A replica's answer to a read as a record, or why it does not count:
/// an error, an answer that is not a record, a record that does not
/// decode, or a version too far ahead of this node's clock (refused and
/// logged by `observe`, never returned or spread by repair). The HLC
/// advances past every version accepted, so a write this node stamps
/// after reading orders after what it read.
pub(super) fn accept_record(
    hlc: &Hlc,
    result: Result<Response, String>,
) -> Result<Option<Record>, String> {
    let raw = match result {
        Ok(Response::Record(raw)) => raw,
        Ok(Response::Error(why)) | Err(why) => return Err(why),
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
    };
    let Some(raw) = raw else {
        return Ok(None);
    };
    let record = Record::decode(raw).map_err(|e| format!("corrupt record: {e}"))?;
    observed(hlc, Some(record))
}

/// `record`, refused if its version is too far ahead of `hlc`, which
/// otherwise advances past it: how any replica's record is taken, this
/// node's own included.
pub(super) fn observed(hlc: &Hlc, record: Option<Record>) -> Result<Option<Record>, String> {
    if let Some(record) = &record {
        hlc.observe(record.version.timestamp)
            .map_err(|e| e.to_string())?;
    }
    Ok(record)
}
