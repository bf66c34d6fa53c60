//! The read path: ask `r` primaries (this node's own replica in place
//! first), merge, and repair the stale replicas read (and, one read in
//! `repair_every`, the others in the background).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::{QuorumStore, ReplicaResult, Replicas};
use crate::coordinator::{KeyspaceId, Level, LocalStore, StoreError};
use crate::net::{Request, Response, Transport};
use crate::ring;
use crate::version::{Hlc, Record};

impl<T: Transport> QuorumStore<T> {
    /// Asks `needed` primaries for `request` (this node first, then those
    /// gossip says are up) and returns once `needed` answered well, or every
    /// primary was tried: one more replica is asked for each that fails, so
    /// a healthy read costs `r` requests, not `n`.
    pub(super) async fn read_fan_out(
        &self,
        ks: KeyspaceId,
        hash: u64,
        key: &Bytes,
        primaries: &[Arc<str>],
        needed: usize,
    ) -> (Vec<(Arc<str>, Option<Record>)>, Vec<ReplicaResult>) {
        let mut order: Vec<Arc<str>> = primaries.to_vec();
        // NOTE: the local replica answers without a network round trip, and
        // a node gossip reports down would only cost a timeout.
        order.sort_by_cached_key(|node| {
            (
                **node != *self.me,
                **node != *self.me && !(self.is_up)(node),
            )
        });
        let mut waiting = order.into_iter().peekable();
        let (mut good, mut bad) = (Vec::with_capacity(needed), Vec::new());
        // NOTE: this node's replica is read in place: no task, and no
        // encoding of the record to decode it again.
        if let Some(me) = waiting.next_if(|node| **node == *self.me) {
            match self.read_own(ks, hash, key) {
                Ok(record) => good.push((me, record)),
                Err(why) => bad.push((me, Err(why))),
            }
        }
        if good.len() >= needed {
            return (good, bad);
        }
        let request = Request::Read {
            keyspace: self.keyspaces.get(ks).name.clone(),
            key: key.clone(),
        };
        if needed - good.len() == 1 {
            // NOTE: one answer missing (a quorum read with n = 3): the others
            // are asked one at a time, as the set below would, without it.
            for node in waiting {
                let (node, result) = self.call_replica(node, request.clone()).await;
                match accept_record(self.local.hlc(), result) {
                    Ok(record) => {
                        good.push((node, record));
                        break;
                    }
                    Err(why) => bad.push((node, Err(why))),
                }
            }
            return (good, bad);
        }
        let mut calls = FuturesUnordered::new();
        for node in waiting.by_ref().take(needed - good.len()) {
            calls.push(self.call_replica(node, request.clone()));
        }
        while good.len() < needed {
            let Some((node, result)) = calls.next().await else {
                break;
            };
            match accept_record(self.local.hlc(), result) {
                Ok(record) => good.push((node, record)),
                Err(why) => {
                    bad.push((node, Err(why)));
                    if let Some(next) = waiting.next() {
                        calls.push(self.call_replica(next, request.clone()));
                    }
                }
            }
        }
        (good, bad)
    }

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
        if needed == 1
            && plan.local
            && let Ok(record) = self.read_own(ks, hash, key)
        {
            // NOTE: a read of one replica that this node holds needs no
            // fan-out: it is most reads at level one, and the hot path there.
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
            return Ok(record);
        }
        let key = &Bytes::copy_from_slice(key);
        let (seen, bad) = self
            .read_fan_out(ks, hash, key, &plan.primaries, needed)
            .await;
        if seen.len() < needed {
            return Err(Self::unavailable("read", needed, seen.len(), bad, &plan));
        }
        let merged = merge_all(&seen);
        // NOTE: replicas that disagree suggest the unread ones are stale
        // too, so they are always checked; otherwise one read in
        // `repair_every` checks them.
        let disagree = seen
            .iter()
            .any(|(_, record)| record.as_ref() != merged.as_ref());
        let background = (seen.len() < plan.primaries.len()
            && (disagree || self.sample_background_repair()))
        .then(|| {
            let unread: Vec<Arc<str>> = plan
                .primaries
                .iter()
                .filter(|p| !seen.iter().any(|(node, _)| node == *p))
                .cloned()
                .collect();
            // NOTE: the replicas read hold `merged` once repaired below.
            let known: Vec<(Arc<str>, Option<Record>)> = seen
                .iter()
                .map(|(node, _)| (node.clone(), merged.clone()))
                .collect();
            (known, unread)
        });
        if let Some(merged) = &merged {
            self.read_repair(ks, key, merged, seen).await;
        }
        if let Some((known, unread)) = background {
            self.repair_in_background(ks, key.clone(), known, unread);
        }
        Ok(merged)
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

    /// True for the reads (one in `repair_every`) whose unread replicas are
    /// checked in the background.
    pub(super) fn sample_background_repair(&self) -> bool {
        self.repair_every != 0
            && self
                .reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .is_multiple_of(self.repair_every)
    }

    /// Reads the primaries a quorum read did not ask and writes `merged` (or
    /// a newer record one of them holds) back to the stale ones, after the
    /// client was answered. Skipped when too many background writes are
    /// already running: anti-entropy repairs what this misses.
    pub(super) fn repair_in_background(
        &self,
        ks: KeyspaceId,
        key: Bytes,
        known: Vec<(Arc<str>, Option<Record>)>,
        unread: Vec<Arc<str>>,
    ) {
        let Ok(permit) = self.late_writes.clone().try_acquire_owned() else {
            return;
        };
        let keyspace = self.keyspaces.get(ks).name.clone();
        let read = Request::Read {
            keyspace: keyspace.clone(),
            key: key.clone(),
        };
        let reads: Vec<_> = unread
            .into_iter()
            .map(|node| self.call_replica(node, read.clone()))
            .collect();
        let repairer = self.repairer();
        tokio::spawn(async move {
            let mut seen = known;
            for (node, result) in futures_util::future::join_all(reads).await {
                match accept_record(repairer.local.hlc(), result) {
                    Ok(record) => seen.push((node, record)),
                    Err(why) => {
                        tracing::debug!(peer = %node, %why, "background repair skips a replica")
                    }
                }
            }
            let merged = seen
                .iter()
                .filter_map(|(_, record)| record.clone())
                .reduce(Record::merge);
            if let Some(merged) = merged {
                repairer.repair(keyspace, key, &merged, seen).await;
            }
            drop(permit);
        });
    }

    /// Writes the merged record back to the replicas read that hold an older
    /// version (or none), and waits for them, so a later quorum read cannot
    /// return anything older than this one did (monotonic reads). A failed
    /// repair is counted and left to a later read.
    pub(super) async fn read_repair(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        merged: &Record,
        seen: Vec<(Arc<str>, Option<Record>)>,
    ) {
        let keyspace = self.keyspaces.get(ks).name.clone();
        self.repairer()
            .repair(keyspace, key.clone(), merged, seen)
            .await;
    }

    pub(super) fn repairer(&self) -> Repairer<T> {
        Repairer {
            local: self.local.clone(),
            replicas: self.replicas.clone(),
        }
    }
}

/// What read repair needs of the coordinator, owned, so it can also run
/// after the client was answered.
pub(super) struct Repairer<T> {
    local: Arc<LocalStore>,
    replicas: Replicas<T>,
}

impl<T: Transport> Repairer<T> {
    /// Writes `merged` to every replica in `seen` that holds something else.
    pub(super) async fn repair(
        &self,
        keyspace: String,
        key: Bytes,
        merged: &Record,
        seen: Vec<(Arc<str>, Option<Record>)>,
    ) {
        let stale: Vec<Arc<str>> = seen
            .into_iter()
            .filter(|(_, record)| record.as_ref() != Some(merged))
            .map(|(node, _)| node)
            .collect();
        if stale.is_empty() {
            return;
        }
        let request = Request::Write {
            keyspace,
            key,
            record: merged.encode(),
        };
        let repairs = stale
            .into_iter()
            .map(|node| self.replicas.call(node, request.clone()));
        for (node, result) in futures_util::future::join_all(repairs).await {
            match result {
                Ok(Response::Written) => {
                    metrics::counter!("ringkv_read_repairs_total").increment(1)
                }
                Ok(other) => tracing::warn!(peer = %node, response = ?other, "read repair refused"),
                Err(error) => {
                    metrics::counter!("ringkv_read_repair_failures_total").increment(1);
                    tracing::debug!(peer = %node, %error, "read repair failed");
                }
            }
        }
    }
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
