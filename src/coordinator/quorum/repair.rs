//! Read repair: the merged record of a quorum read written back to the
//! replicas it read that hold something older, before the answer (monotonic
//! reads), and, for one read in `repair_every`, to the primaries it did not
//! read, after the answer.

use std::sync::Arc;

use bytes::Bytes;

use super::read::accept_record;
use super::{QuorumStore, Replicas};
use crate::coordinator::{KeyspaceId, LocalStore};
use crate::net::{Request, Response, Transport};
use crate::version::Record;

impl<T: Transport> QuorumStore<T> {
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
                Ok(Response::Error(why)) if crate::storage::refused_until_restart(&why) => {}
                Ok(other) => tracing::warn!(peer = %node, response = ?other, "read repair refused"),
                Err(error) => {
                    metrics::counter!("ringkv_read_repair_failures_total").increment(1);
                    tracing::debug!(peer = %node, %error, "read repair failed");
                }
            }
        }
    }
}
