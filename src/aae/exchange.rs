//! One exchange: this replica and a peer compare one partition's trees,
//! descend only into differing branches, and trade only the differing keys.
//!
//! Steps (each one request): roots (the peer answers `InSync` or its 32
//! branch hashes); the leaves of the differing branches; the `(key, hash)`
//! lists of the differing segments; then pull (fetch the peer's records of
//! keys where it differs and merge them here) and push (send ours where the
//! peer still differs, for it to merge). Invariant: both sides only merge,
//! so an exchange is safe to repeat, interrupt or race with writes; after a
//! complete exchange with no concurrent writes both trees are equal.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::local::{Listing, blocking, list_segments, merge_records, purgeable};
use super::tree::{SEGMENTS_PER_BRANCH, differing, record_hash, unpack};
use super::{MAX_BATCH_BYTES, MAX_KEYS_PER_FETCH, MAX_SEGMENTS_PER_REQUEST};
use crate::coordinator::{KeyspaceId, LocalStore, Store, StoreError};
use crate::net::{AaeRequest, AaeResponse, KeyDigest, NetError, Request, Response, Transport};
use crate::storage::keys;

/// What one exchange did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeReport {
    /// The roots were equal: one round trip, nothing else.
    pub in_sync: bool,
    /// Leaves (segments) that differed.
    pub segments: usize,
    /// Records fetched from the peer and merged here.
    pub pulled: usize,
    /// Records sent to the peer for it to merge.
    pub pushed: usize,
    /// Encoded bytes of every request and response (postcard, as on the wire,
    /// without the frame's length prefix and envelope).
    pub bytes: u64,
    /// Requests made.
    pub round_trips: u32,
}

/// Why an exchange stopped. Whatever was merged before stays merged.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The peer could not be asked.
    #[error("peer unreachable: {0}")]
    Net(#[from] NetError),
    /// The peer answered with an error.
    #[error("peer failed: {0}")]
    Peer(String),
    /// The peer answered something that does not fit the question.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// This replica's store failed.
    #[error("local store: {0}")]
    Store(String),
}

impl From<StoreError> for ExchangeError {
    fn from(e: StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

/// One exchange's requests, metered.
struct Session<'a, T: Transport> {
    transport: &'a T,
    peer: &'a str,
    store: &'a Arc<LocalStore>,
    ks: KeyspaceId,
    keyspace: String,
    partition: u16,
    purgeable_before_ms: u64,
    report: ExchangeReport,
}

fn wire_size<V: Serialize>(value: &V) -> u64 {
    postcard::experimental::serialized_size(value).map_or(0, |n| n as u64)
}

/// Compares partition `partition` of keyspace `ks` with `peer` and repairs
/// both sides. Records dead since before `purgeable_before_ms` are ignored
/// (the sweep purges them; moving them would undo the purge).
pub async fn exchange<T: Transport>(
    store: &Arc<LocalStore>,
    transport: &T,
    peer: &str,
    ks: KeyspaceId,
    partition: u16,
    purgeable_before_ms: u64,
) -> Result<ExchangeReport, ExchangeError> {
    let mut session = Session {
        transport,
        peer,
        store,
        ks,
        keyspace: Store::keyspaces(&**store).get(ks).name.clone(),
        partition,
        purgeable_before_ms,
        report: ExchangeReport::default(),
    };
    let result = session.run().await;
    record_metrics(&session.report, result.is_ok());
    result.map(|()| session.report)
}

fn record_metrics(report: &ExchangeReport, ok: bool) {
    let outcome = match (ok, report.in_sync) {
        (false, _) => "error",
        (true, true) => "in_sync",
        (true, false) => "compared",
    };
    metrics::counter!("ringkv_aae_exchanges_total", "outcome" => outcome).increment(1);
    metrics::counter!("ringkv_aae_bytes_total").increment(report.bytes);
    metrics::counter!("ringkv_aae_differing_segments_total").increment(report.segments as u64);
    metrics::counter!("ringkv_aae_keys_repaired_total", "direction" => "pulled")
        .increment(report.pulled as u64);
    metrics::counter!("ringkv_aae_keys_repaired_total", "direction" => "pushed")
        .increment(report.pushed as u64);
}

impl<T: Transport> Session<'_, T> {
    async fn call(&mut self, request: AaeRequest) -> Result<AaeResponse, ExchangeError> {
        let request = Request::Aae(request);
        self.report.bytes += wire_size(&request);
        self.report.round_trips += 1;
        let response = self.transport.call(self.peer, request).await?;
        self.report.bytes += wire_size(&response);
        match response {
            Response::Aae(answer) => Ok(answer),
            Response::Error(why) => Err(ExchangeError::Peer(why)),
            other => Err(ExchangeError::Protocol(format!("{other:?}"))),
        }
    }

    fn hashes(answer: AaeResponse, expected: usize) -> Result<Vec<u64>, ExchangeError> {
        match answer {
            AaeResponse::Hashes(raw) => unpack(&raw)
                .filter(|h| h.len() == expected)
                .ok_or_else(|| ExchangeError::Protocol(format!("{} hash bytes", raw.len()))),
            other => Err(ExchangeError::Protocol(format!("{other:?}"))),
        }
    }

    async fn run(&mut self) -> Result<(), ExchangeError> {
        let trees = self.store.aae_trees();
        let tree = trees
            .get(self.ks, self.partition)
            .ok_or_else(|| ExchangeError::Store(format!("no partition {}", self.partition)))?;
        let answer = self
            .call(AaeRequest::Branches {
                keyspace: self.keyspace.clone(),
                partition: self.partition,
                root: tree.root(),
            })
            .await?;
        if answer == AaeResponse::InSync {
            self.report.in_sync = true;
            return Ok(());
        }
        let ours = tree.branches();
        let branches = differing(&ours, &Self::hashes(answer, ours.len())?);
        if branches.is_empty() {
            return Ok(()); // NOTE: a write landed between the two reads.
        }
        let answer = self
            .call(AaeRequest::Leaves {
                keyspace: self.keyspace.clone(),
                partition: self.partition,
                branches: branches.iter().map(|&b| b as u16).collect(),
            })
            .await?;
        let theirs = Self::hashes(answer, branches.len() * SEGMENTS_PER_BRANCH)?;
        let mut segments = Vec::new();
        for (i, &branch) in branches.iter().enumerate() {
            let run = &theirs[i * SEGMENTS_PER_BRANCH..(i + 1) * SEGMENTS_PER_BRANCH];
            for leaf in differing(&tree.leaves(branch), run) {
                segments.push((branch * SEGMENTS_PER_BRANCH + leaf) as u16);
            }
        }
        self.report.segments = segments.len();
        for chunk in segments.chunks(MAX_SEGMENTS_PER_REQUEST) {
            self.repair_segments(chunk).await?;
        }
        Ok(())
    }

    /// Lists `segments` on both sides and repairs the keys that differ.
    async fn repair_segments(&mut self, mut segments: &[u16]) -> Result<(), ExchangeError> {
        while !segments.is_empty() {
            let answer = self
                .call(AaeRequest::Keys {
                    keyspace: self.keyspace.clone(),
                    partition: self.partition,
                    segments: segments.to_vec(),
                    purgeable_before_ms: self.purgeable_before_ms,
                })
                .await?;
            let AaeResponse::Keys { listed, entries } = answer else {
                return Err(ExchangeError::Protocol(format!("{answer:?}")));
            };
            let listed = usize::from(listed).clamp(1, segments.len());
            let (done, rest) = segments.split_at(listed);
            segments = rest;
            let (store, ks, partition, cutoff) = (
                self.store.clone(),
                self.ks,
                self.partition,
                self.purgeable_before_ms,
            );
            let done = done.to_vec();
            let ours = blocking(move || list_segments(&store, ks, partition, &done, cutoff))
                .await
                .map_err(ExchangeError::Store)?;
            let ours: Listing = ours.into_iter().flatten().collect();
            self.repair_keys(ours, entries).await?;
        }
        Ok(())
    }

    /// Pulls what the peer holds newer (or only it holds), then pushes what
    /// we hold newer (or only we hold). Equal versions with different hashes
    /// (which one write never produces) go both ways and merge decides.
    async fn repair_keys(&mut self, ours: Listing, theirs: Listing) -> Result<(), ExchangeError> {
        let ours: HashMap<Bytes, KeyDigest> =
            ours.into_iter().map(|d| (d.key.clone(), d)).collect();
        let theirs: HashMap<Bytes, KeyDigest> =
            theirs.into_iter().map(|d| (d.key.clone(), d)).collect();
        let version = |d: &KeyDigest| (d.timestamp, d.node);
        let pull: Vec<Bytes> = theirs
            .values()
            .filter(|t| match ours.get(&t.key) {
                None => true,
                Some(o) => o.hash != t.hash && version(o) <= version(t),
            })
            .map(|t| t.key.clone())
            .collect();
        let push: Vec<Bytes> = ours
            .values()
            .filter(|o| match theirs.get(&o.key) {
                None => true,
                Some(t) => o.hash != t.hash && version(o) >= version(t),
            })
            .map(|o| o.key.clone())
            .collect();
        self.pull(&pull).await?;
        let theirs = theirs.into_iter().map(|(k, d)| (k, d.hash)).collect();
        self.push(&push, &theirs).await
    }

    /// Fetches the peer's records of `keys` and merges them here.
    async fn pull(&mut self, mut keys: &[Bytes]) -> Result<(), ExchangeError> {
        while !keys.is_empty() {
            let ask = &keys[..keys.len().min(MAX_KEYS_PER_FETCH)];
            let answer = self
                .call(AaeRequest::Fetch {
                    keyspace: self.keyspace.clone(),
                    keys: ask.to_vec(),
                })
                .await?;
            let AaeResponse::Records(records) = answer else {
                return Err(ExchangeError::Protocol(format!("{answer:?}")));
            };
            if records.is_empty() || records.len() > ask.len() {
                return Err(ExchangeError::Protocol(format!(
                    "{} records for {} keys",
                    records.len(),
                    ask.len()
                )));
            }
            let got: Vec<(Bytes, Bytes)> = ask
                .iter()
                .zip(&records)
                .filter_map(|(k, r)| Some((k.clone(), r.clone()?)))
                .collect();
            self.report.pulled += got.len();
            merge_records(self.store, self.ks, got).await?;
            keys = &keys[records.len()..];
        }
        Ok(())
    }

    /// Sends our records of `candidates` where the peer still differs after the pull.
    async fn push(
        &mut self,
        candidates: &[Bytes],
        theirs: &HashMap<Bytes, u64>,
    ) -> Result<(), ExchangeError> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for key in candidates {
            let Some(record) = self.store.read_stored(self.ks, key)? else {
                continue;
            };
            let storage_key = keys::encode(self.partition, &self.keyspace, key);
            let hash = record_hash(&storage_key, &record);
            if theirs.get(key) == Some(&hash) || purgeable(&record, self.purgeable_before_ms) {
                continue;
            }
            let encoded = record.encode();
            bytes += key.len() + encoded.len();
            batch.push((key.clone(), encoded));
            if bytes >= MAX_BATCH_BYTES {
                self.send(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.send(batch).await?;
        }
        Ok(())
    }

    async fn send(&mut self, records: Vec<(Bytes, Bytes)>) -> Result<(), ExchangeError> {
        let count = records.len();
        let answer = self
            .call(AaeRequest::Push {
                keyspace: self.keyspace.clone(),
                records,
            })
            .await?;
        if answer != AaeResponse::Merged {
            return Err(ExchangeError::Protocol(format!("{answer:?}")));
        }
        self.report.pushed += count;
        Ok(())
    }
}
