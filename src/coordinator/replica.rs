//! The replica side of replication: raw record reads and merges on the local
//! store, served to other nodes through [`ReplicaHandler`].
//!
//! Invariant: a replica only ever merges ([`Record::merge`]), so applying the
//! same write twice, or writes in any order, converges to the same record; a
//! write is acknowledged only after it is committed under the fsync policy.

use std::sync::Arc;

use bytes::Bytes;

use super::{Hints, KeyspaceId, LocalStore, Store, StoreError};
use crate::net::{Handler, MAX_BATCH_BYTES, PeerId, Request, Response};
use crate::version::Record;

impl LocalStore {
    /// Merges `record` into what is stored for `key`. Refuses a record whose
    /// timestamp is too far ahead of this node's clock; otherwise advances
    /// the clock past it, so later local writes order after it.
    pub fn merge_stored(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        record: Record,
    ) -> Result<(), StoreError> {
        self.merge_record(ks, key, record, None)
    }

    /// [`Self::merge_stored`] of a record whose encoded form the caller
    /// holds (`raw`, which decodes to `record`): stored as it is when
    /// `record` wins and `raw` is in the current format, instead of encoding
    /// it again.
    pub(crate) fn merge_stored_encoded(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        record: Record,
        raw: Bytes,
    ) -> Result<(), StoreError> {
        self.merge_record(ks, key, record, Some(raw))
    }

    /// The merge of both: `record` is encoded only if it wins and `raw`
    /// (when given) cannot be stored as it is.
    fn merge_record(
        &self,
        ks: KeyspaceId,
        key: &[u8],
        record: Record,
        raw: Option<Bytes>,
    ) -> Result<(), StoreError> {
        self.hlc().observe(record.version.timestamp)?;
        self.with_key_lock(ks, key, |storage_key| {
            let old = self.read_record(storage_key)?;
            let merged = match &old {
                Some(old) => old.clone().merge(record),
                None => record,
            };
            if old.as_ref() == Some(&merged) {
                return Ok(());
            }
            // NOTE: a merge returns one of its two records: not the old one,
            // so the incoming one, whose encoding is `raw`.
            let raw = raw
                .filter(|raw| merged.is_encoded_as(raw))
                .unwrap_or_else(|| merged.encode());
            self.replace_locked_encoded(ks, storage_key, old.as_ref(), Some((&merged, raw)))
        })
    }
}

/// Keeps a sloppy-quorum write for `target`, after checking it as a write
/// would be checked here (known keyspace, a record that decodes, a version
/// not too far ahead), so a hint is never kept that its target must refuse.
/// A full queue is a refusal: the coordinator must not count a copy that is
/// not kept.
pub(crate) fn store_hint(
    store: &LocalStore,
    hints: Option<&Hints>,
    target: &str,
    keyspace: &str,
    key: &[u8],
    record: Bytes,
) -> Result<Response, String> {
    let hints = hints.ok_or("this node keeps no hints")?;
    if Store::keyspaces(store).by_name(keyspace).is_none() {
        return Err(format!("unknown keyspace {keyspace:?} on this node"));
    }
    let decoded = Record::decode(record.clone()).map_err(|e| format!("corrupt record: {e}"))?;
    store
        .hlc()
        .observe(decoded.version.timestamp)
        .map_err(|e| e.to_string())?;
    match hints.add(target, keyspace, key, record) {
        Ok(true) => Ok(Response::Written),
        Ok(false) => Err(format!("hint queue for {target} is full")),
        Err(e) => Err(e.to_string()),
    }
}

/// Serves [`Request`]s from other nodes against the local store.
pub struct ReplicaHandler {
    store: Arc<LocalStore>,
    hints: Option<Arc<Hints>>,
}

impl ReplicaHandler {
    /// A handler over `store`.
    pub fn new(store: Arc<LocalStore>) -> Self {
        Self { store, hints: None }
    }

    /// Keeps hints (sloppy-quorum writes for other nodes) in `hints`;
    /// without it hint requests are refused.
    pub fn with_hints(mut self, hints: Arc<Hints>) -> Self {
        self.hints = Some(hints);
        self
    }

    fn keyspace(&self, name: &str) -> Result<KeyspaceId, String> {
        Store::keyspaces(&*self.store)
            .by_name(name)
            .ok_or_else(|| format!("unknown keyspace {name:?} on this node"))
    }

    /// Merges each of `writes`, then commits them all at once: the outcome
    /// of each (`None` when merged), or why none could be.
    async fn write_many(
        &self,
        keyspace: &str,
        writes: Vec<(Bytes, Bytes)>,
    ) -> Result<Vec<Option<String>>, String> {
        let ks = self.keyspace(keyspace)?;
        let outcomes = writes
            .into_iter()
            .map(|(key, record)| self.merge(ks, &key, record).err())
            .collect();
        // IMPORTANT: the writes are acknowledged only once committed.
        self.commit_with_peers().await?;
        Ok(outcomes)
    }

    fn merge(&self, ks: KeyspaceId, key: &[u8], raw: Bytes) -> Result<(), String> {
        let record = Record::decode(raw.clone()).map_err(|e| e.to_string())?;
        self.store
            .merge_stored_encoded(ks, key, record, raw)
            .map_err(|e| e.to_string())
    }

    async fn write(&self, keyspace: &str, key: &Bytes, record: Bytes) -> Result<(), String> {
        let ks = self.keyspace(keyspace)?;
        self.merge(ks, key, record)?;
        self.commit_with_peers().await
    }

    /// Commits merged writes once the others that arrived with them merged.
    async fn commit_with_peers(&self) -> Result<(), String> {
        // NOTE: let the other writes that arrived with this one apply first
        // (a peer's frames come in batches; this yield makes each write its
        // own task and lets the peer server read on), so
        // one flush of the journal covers them all instead of one write(2)
        // each (measured: a quarter of a replica's CPU). A coordinator's own
        // replica write does not come here: it is merged in place and
        // committed with the client's batch.
        tokio::task::yield_now().await;
        self.store.commit().await.map_err(|e| e.to_string())
    }

    /// The stored records of the first of `keys`, in order: as many as fit
    /// in [`MAX_BATCH_BYTES`], up to the first that cannot be read, and
    /// always the first (or why it cannot be read).
    fn read_many(&self, keyspace: &str, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>, String> {
        let ks = self.keyspace(keyspace)?;
        let mut records = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        for key in keys {
            let record = match self.store.read_stored_raw(ks, key) {
                Ok(record) => record,
                // NOTE: the keys before it are answered; it and the rest are
                // asked again, where it fails alone.
                Err(_) if !records.is_empty() => break,
                Err(e) => return Err(e.to_string()),
            };
            bytes += record.as_ref().map_or(0, Bytes::len);
            if bytes > MAX_BATCH_BYTES && !records.is_empty() {
                break;
            }
            records.push(record);
        }
        Ok(records)
    }
}

impl Handler for ReplicaHandler {
    async fn handle(&self, from: &PeerId, request: Request) -> Response {
        let result = match request {
            Request::Ping => return Response::Pong,
            Request::Read { keyspace, key } => self
                .keyspace(&keyspace)
                .and_then(|ks| {
                    self.store
                        .read_stored_raw(ks, &key)
                        .map_err(|e| e.to_string())
                })
                .map(Response::Record),
            Request::ReadMany { keyspace, keys } => {
                self.read_many(&keyspace, &keys).map(Response::Records)
            }
            Request::WriteMany { keyspace, writes } => self
                .write_many(&keyspace, writes)
                .await
                .map(Response::Outcomes),
            Request::Write {
                keyspace,
                key,
                record,
            } => self
                .write(&keyspace, &key, record)
                .await
                .map(|()| Response::Written),
            Request::Hint {
                target,
                keyspace,
                key,
                record,
            } => store_hint(
                &self.store,
                self.hints.as_deref(),
                &target,
                &keyspace,
                &key,
                record,
            ),
            Request::Aae(request) => crate::aae::serve(&self.store, request)
                .await
                .map(Response::Aae),
        };
        result.unwrap_or_else(|e| {
            // NOTE: refusals after a failed fsync are not logged per request:
            // the failure was, once.
            if !crate::storage::refused_until_restart(&e) {
                tracing::warn!(peer = %from, error = %e, "replica request failed");
            }
            Response::Error(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::Consistency;
    use crate::coordinator::local::testing::memory_store;
    use crate::version::{ManualClock, Timestamp, Version};

    fn record(ms: u64, value: &'static [u8]) -> Record {
        Record::value(
            Version {
                timestamp: Timestamp::from_ms(ms),
                node: 9,
            },
            Bytes::from_static(value),
            None,
        )
    }

    #[tokio::test]
    async fn merges_keep_the_newest_in_any_order() {
        let store = memory_store(Arc::new(ManualClock::new(10_000)));
        store.merge_stored(0, b"k", record(20, b"new")).unwrap();
        store.merge_stored(0, b"k", record(10, b"old")).unwrap();
        store.merge_stored(0, b"k", record(20, b"new")).unwrap();
        let got = store.get(0, b"k", Consistency::default()).await.unwrap();
        assert_eq!(got.unwrap().value, "new");
        assert_eq!(store.dbsize(0).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn an_encoded_record_is_stored_as_sent_only_when_it_wins() {
        let store = memory_store(Arc::new(ManualClock::new(10_000)));
        let raw_of = |ms, value| {
            let record = record(ms, value);
            let raw = record.encode();
            (record, raw)
        };
        let (newer, newer_raw) = raw_of(20, b"new");
        store
            .merge_stored_encoded(0, b"k", newer, newer_raw.clone())
            .unwrap();
        let stored = store.read_stored_raw(0, b"k").unwrap().unwrap();
        assert_eq!(stored, newer_raw);
        assert_eq!(
            stored.as_ptr(),
            newer_raw.as_ptr(),
            "the sent bytes, not a copy"
        );

        let (older, older_raw) = raw_of(10, b"old");
        store
            .merge_stored_encoded(0, b"k", older, older_raw)
            .unwrap();
        assert_eq!(store.read_stored_raw(0, b"k").unwrap().unwrap(), newer_raw);

        // The millisecond format of an older node is stored re-encoded.
        let (newest, raw) = raw_of(30, b"newest");
        let mut old_format = raw.to_vec();
        old_format[0] = 1;
        old_format[2..10].copy_from_slice(&((30u64 << 16).to_be_bytes()));
        let sent = Bytes::from(old_format);
        let decoded = Record::decode(sent.clone()).unwrap();
        assert_eq!(
            decoded.version.timestamp.ms(),
            newest.version.timestamp.ms()
        );
        store
            .merge_stored_encoded(0, b"k", decoded.clone(), sent)
            .unwrap();
        let stored = store.read_stored_raw(0, b"k").unwrap().unwrap();
        assert_eq!(stored, decoded.encode(), "rewritten in the current format");
    }

    #[tokio::test]
    async fn a_record_from_the_far_future_is_refused() {
        let store = memory_store(Arc::new(ManualClock::new(10_000)));
        let err = store
            .merge_stored(0, b"k", record(10_000_000, b"x"))
            .unwrap_err();
        assert!(matches!(err, StoreError::ClockSkew(_)), "{err}");
        assert!(store.read_stored(0, b"k").unwrap().is_none());
    }

    #[tokio::test]
    async fn handler_reads_and_writes() {
        let store = Arc::new(memory_store(Arc::new(ManualClock::new(10_000))));
        let handler = ReplicaHandler::new(store.clone());
        let write = Request::Write {
            keyspace: "default".into(),
            key: Bytes::from_static(b"k"),
            record: record(5, b"v").encode(),
        };
        assert_eq!(handler.handle("n2", write).await, Response::Written);
        let read = Request::Read {
            keyspace: "default".into(),
            key: Bytes::from_static(b"k"),
        };
        assert_eq!(
            handler.handle("n2", read).await,
            Response::Record(Some(record(5, b"v").encode()))
        );
        let bad = Request::Read {
            keyspace: "nope".into(),
            key: Bytes::from_static(b"k"),
        };
        assert!(matches!(
            handler.handle("n2", bad).await,
            Response::Error(_)
        ));
    }
}
