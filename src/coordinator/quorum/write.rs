//! The write path: send the stamped record to every primary, answer after
//! `w` merged it (hints for the unreachable), finish the rest in the
//! background.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

use super::{Plan, QuorumStore, ReplicaResult, WriteResult};
use crate::coordinator::{ExpiryUpdate, KeyspaceId, Level, SetCondition, StoreError, WriteCmd};
use crate::net::{Request, Response, Transport};
use crate::storage::refused_until_restart;
use crate::version::Record;

impl<T: Transport> QuorumStore<T> {
    /// Sends the write to every primary at once and returns once `needed`
    /// acknowledged, or all failed. A primary that fails gets a hint: with
    /// `sloppy`, a fallback stands in for it (its stored hint counts toward
    /// `needed`; a primary gossip reports down is not even tried); otherwise,
    /// or when no fallback takes it, this node keeps the hint, uncounted.
    /// Unfinished calls keep running in the background and hint on failure
    /// too, so every primary gets the write sooner or later. This node's
    /// own replica is written in place, made durable by the caller's
    /// [`Store::commit`] like a local write.
    pub(super) async fn write_fan_out(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        plan: &Plan,
        decoded: Record,
        needed: usize,
        sloppy: bool,
    ) -> (usize, Vec<ReplicaResult>, bool) {
        let requests = Requests {
            keyspace: self.keyspaces.get(ks).name.clone(),
            key: key.clone(),
            record: decoded.encode(),
        };
        // NOTE: lazy: liveness is asked only when a primary fails.
        let mut stand_ins = plan
            .fallbacks
            .iter()
            .filter(|node| ***node == *self.me || (self.is_up)(node))
            .cloned();
        let mut calls = FuturesUnordered::new();
        let mut bad = Vec::new();
        let mut unhinted: Vec<Arc<str>> = Vec::new();
        let mut stand_in_calls = 0;
        let mut good = 0;
        // A hint of the write for `target` goes to the next stand-in (sloppy
        // writes), or stays with this node.
        let mut hand_over = |target: Arc<str>, calls: &mut FuturesUnordered<_>| {
            let stand_in = if sloppy { stand_ins.next() } else { None };
            match stand_in {
                Some(node) => {
                    stand_in_calls += 1;
                    let request = requests.hint_for(&target);
                    calls.push(self.call_write(node, Some(target), request));
                }
                None => unhinted.push(target),
            }
        };
        for primary in &plan.primaries {
            if **primary == *self.me {
                // NOTE: a refusal here (clock skew, engine error) is this
                // node's own, and hints are kept for peers only: after a
                // failed fsync, what this replica missed comes back by
                // anti-entropy once it restarts.
                let raw = requests.record.clone();
                match self
                    .local
                    .merge_stored_encoded(ks, key, decoded.clone(), raw)
                {
                    Ok(()) => good += 1,
                    Err(e) => bad.push((primary.clone(), Err(e.to_string()))),
                }
            } else if sloppy && !(self.is_up)(primary) {
                bad.push((primary.clone(), Err("down (gossip)".to_string())));
                hand_over(primary.clone(), &mut calls);
            } else {
                calls.push(self.call_write(primary.clone(), None, requests.write()));
            }
        }
        while good < needed {
            let Some((node, stand_in_for, result)) = calls.next().await else {
                break;
            };
            let Err((why, refused)) = written(result) else {
                good += 1;
                continue;
            };
            bad.push((node.clone(), Err(why)));
            if refused && stand_in_for.is_none() {
                // NOTE: the primary itself answered and refused the write
                // (clock skew, unknown keyspace): a hint would be refused too.
                continue;
            }
            hand_over(stand_in_for.unwrap_or(node), &mut calls);
        }
        // NOTE: a kept or stood-in hint will reach its primary later, so a
        // failed write may still be applied.
        let hinted = !unhinted.is_empty() || stand_in_calls > 0;
        self.hint_the_rest(requests, &unhinted, calls).await;
        (good, bad, hinted)
    }

    /// Keeps a hint for each primary in `unhinted` (no call carries the
    /// write to it) and, as the `calls` still out finish, for each that
    /// failed without refusing (a primary's own refusal would refuse its hint
    /// too), then lets them finish ([`QuorumStore::finish_late`]).
    async fn hint_the_rest<Call>(
        &self,
        requests: Requests,
        unhinted: &[Arc<str>],
        calls: FuturesUnordered<Call>,
    ) where
        Call: std::future::Future<Output = WriteResult> + Send + 'static,
    {
        let keeper = self.hint_keeper();
        let keep_hint = move |target: &Arc<str>| {
            let write = (&requests.key[..], requests.record.clone());
            keeper.keep(target, &requests.keyspace, [write]);
        };
        for target in unhinted {
            keep_hint(target);
        }
        let settle = move |(node, stand_in_for, result): WriteResult| match (
            written(result),
            stand_in_for,
        ) {
            (Ok(()), _) | (Err((_, true)), None) => {}
            (Err(_), stand_in_for) => keep_hint(&stand_in_for.unwrap_or(node)),
        };
        self.finish_late(calls, 1, settle).await;
    }

    /// What keeps hints for the writes a primary missed.
    pub(super) fn hint_keeper(&self) -> HintKeeper {
        HintKeeper {
            hints: self.hints.clone(),
            me: self.me.clone(),
        }
    }

    /// Lets the calls of acknowledged writes (`writes` of them) that are
    /// still out finish, handing each answer to `settle`: in place for those
    /// already in, in a background task for the rest, or before returning
    /// when too many writes are still reaching their last replicas.
    pub(super) async fn finish_late<Call, Answer>(
        &self,
        mut calls: FuturesUnordered<Call>,
        writes: usize,
        settle: impl Fn(Answer) + Send + 'static,
    ) where
        Call: std::future::Future<Output = Answer> + Send + 'static,
    {
        // NOTE: answers that came with the last acknowledgement (common in
        // a pipeline) need no background task.
        while let Some(Some(answer)) = calls.next().now_or_never() {
            settle(answer);
        }
        if calls.is_empty() {
            return;
        }
        let finish = async move {
            while let Some(answer) = calls.next().await {
                settle(answer);
            }
        };
        let permits = writes.clamp(1, super::MAX_LATE_WRITES) as u32;
        match self.late_writes.clone().try_acquire_many_owned(permits) {
            Ok(permit) => {
                tokio::spawn(async move {
                    finish.await;
                    drop(permit);
                });
            }
            Err(_) => {
                // NOTE: too many writes are still reaching their last
                // replicas: finish this one before answering, so an
                // overloaded cluster slows its clients down instead of
                // piling up (or dropping) replica writes.
                metrics::counter!("ringkv_late_writes_waited_total").increment(1);
                finish.await;
            }
        }
    }

    /// Why a write that `good` of the `needed` replicas acknowledged failed;
    /// `hinted` when a hint of it was kept (it will reach its primary later,
    /// so the write may still be applied).
    pub(super) fn write_failed(
        needed: usize,
        good: usize,
        bad: Vec<ReplicaResult>,
        plan: &Plan,
        hinted: bool,
    ) -> StoreError {
        let mut error = Self::unavailable("write", needed, good, bad, plan);
        if let StoreError::Unavailable(q) = &mut error {
            q.may_have_applied |= hinted;
        }
        error
    }

    /// One write call: to `node`, for itself or standing in for a primary.
    pub(super) fn call_write(
        &self,
        node: Arc<str>,
        stand_in_for: Option<Arc<str>>,
        request: Request,
    ) -> impl std::future::Future<Output = WriteResult> + Send + 'static {
        let call = self.call_replica(node, request);
        async move {
            let (node, result) = call.await;
            (node, stand_in_for, result)
        }
    }

    /// Writes `record` to the primaries of `key` at `level`.
    pub(super) async fn quorum_write(
        &self,
        ks: KeyspaceId,
        key: &Bytes,
        record: Record,
        level: Level,
        sloppy: bool,
    ) -> Result<(), StoreError> {
        let plan = self.plan(ks, key)?;
        let needed = Self::required(level, plan.n)?;
        let (good, bad, hinted) = self
            .write_fan_out(ks, key, &plan, record, needed, sloppy)
            .await;
        if good < needed {
            return Err(Self::write_failed(needed, good, bad, &plan, hinted));
        }
        Ok(())
    }
}

/// True when a command's effect does not depend on the current value, so
/// the coordinator can skip the read.
pub(super) fn is_blind(cmd: &WriteCmd) -> bool {
    matches!(
        cmd,
        WriteCmd::Set {
            condition: SetCondition::Always,
            expiry: ExpiryUpdate::Clear | ExpiryUpdate::At(_),
            ..
        }
    )
}

/// A replica's answer to a write call: `Ok` when it wrote the record (or
/// stored the hint), else why not and whether the replica answered and
/// refused (`true`) rather than could not be reached (`false`). A replica
/// that refuses every write until it restarts (its fsync failed) counts as
/// not reached, so it is hinted.
pub(super) fn written(result: Result<Response, String>) -> Result<(), (String, bool)> {
    match result {
        Ok(Response::Written) => Ok(()),
        Err(why) => Err((why, false)),
        // NOTE: a replica that lost its fsync refuses every write until it
        // restarts: hinted, as if unreachable, so it gets them then.
        Ok(Response::Error(why)) if refused_until_restart(&why) => Err((why, false)),
        Ok(Response::Error(why)) => Err((why, true)),
        Ok(other) => Err((format!("unexpected answer {other:?}"), true)),
    }
}

/// The requests of one write: to a primary, or a hint of it to a stand-in.
struct Requests {
    keyspace: String,
    key: Bytes,
    record: Bytes,
}

impl Requests {
    /// The write itself, for a primary.
    fn write(&self) -> Request {
        Request::Write {
            keyspace: self.keyspace.clone(),
            key: self.key.clone(),
            record: self.record.clone(),
        }
    }

    /// A hint of the write for `target`, to a stand-in.
    fn hint_for(&self, target: &Arc<str>) -> Request {
        Request::Hint {
            target: target.to_string(),
            keyspace: self.keyspace.clone(),
            key: self.key.clone(),
            record: self.record.clone(),
        }
    }
}

/// Keeps hints of writes (keyspace, key, encoded record) for a target
/// primary, unless the target is this node (its own refusal would refuse
/// the hint too); hints that cannot be kept are logged.
#[derive(Clone)]
pub(super) struct HintKeeper {
    hints: Option<Arc<crate::coordinator::Hints>>,
    me: Arc<str>,
}

impl HintKeeper {
    /// Keeps `writes` for `target`, with one flush.
    pub(super) fn keep<'k>(
        &self,
        target: &Arc<str>,
        keyspace: &str,
        writes: impl IntoIterator<Item = (&'k [u8], Bytes)>,
    ) {
        if let Some(hints) = &self.hints
            && *target != self.me
            && let Err(e) = hints.add_many(target, keyspace, writes)
            // NOTE: a hint store that lost its fsync says so once, in its
            // log and /health, not for every write.
            && !refused_until_restart(&e.to_string())
        {
            tracing::error!(target_node = %target, error = %e, "could not keep hints");
        }
    }
}
