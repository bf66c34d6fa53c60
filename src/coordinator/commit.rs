//! Group commit: one engine flush covers the writes of every connection
//! waiting for it, the way Redis writes its AOF once per event-loop turn.
//!
//! Writers count their writes ([`GroupCommit::note_write`]); a connection that
//! must acknowledge writes awaits [`GroupCommit::commit`]. A flush to the OS
//! (`Buffer`) is a short write(2): the caller does it inline under a lock,
//! and skips it when another caller's flush already covered its writes
//! (a task hop cost more than it saved, measured). An fsync (`Sync`) goes to
//! the committer task instead: it yields first, so every connection that is
//! ready runs its batch and joins, then fsyncs once off the worker threads
//! and releases them all.
//! Invariant: `commit` returns `Ok` only after a flush that started after
//! every write the caller made; a failed flush fails every waiter it covered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::storage::{Durability, Engine, StorageError};

#[derive(Debug, Clone, Default)]
struct CommitState {
    /// Writes made durable so far.
    committed: u64,
    /// The last failed flush: the writes it covered and why.
    failure: Option<(u64, Arc<str>)>,
}

/// A commit that could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The engine's flush failed.
    #[error("flush failed: {0}")]
    Flush(Arc<str>),
    /// The store is closing.
    #[error("store is shutting down")]
    Closed,
}

/// Shared between the store, its connections and the committer task.
pub(crate) struct GroupCommit {
    engine: Arc<dyn Engine>,
    durability: Durability,
    // NOTE: blocking lock, never held across an await: it serialises the
    // short inline `Buffer` flush.
    inline_flush: Mutex<()>,
    written: AtomicU64,
    closed: AtomicBool,
    wake: Notify,
    state_tx: watch::Sender<CommitState>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("durability", &self.durability)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Commits for `engine` to `durability`, starting the committer task
    /// when fsyncs are needed. Must be called inside a tokio runtime.
    pub(crate) fn spawn(engine: Arc<dyn Engine>, durability: Durability) -> Arc<Self> {
        let group = Arc::new(Self {
            engine: engine.clone(),
            durability,
            inline_flush: Mutex::new(()),
            written: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            state_tx: watch::Sender::new(CommitState::default()),
        });
        // NOTE: Buffer commits flush inline (`flush_inline`) and never wake
        // the committer, so it only runs for Sync.
        if durability == Durability::Sync {
            tokio::spawn(run_committer(group.clone(), engine, durability));
        }
        group
    }

    /// Counts one applied write.
    pub(crate) fn note_write(&self) {
        self.written.fetch_add(1, Ordering::AcqRel);
    }

    /// Waits until every write counted so far is durable.
    pub(crate) async fn commit(&self) -> Result<(), CommitError> {
        let target = self.written.load(Ordering::Acquire);
        let mut state_rx = self.state_tx.subscribe();
        if state_rx.borrow().committed >= target {
            return Ok(());
        }
        if self.durability == Durability::Buffer {
            return self.flush_inline(target);
        }
        self.wake.notify_one();
        let covered = |s: &CommitState| {
            s.committed >= target || s.failure.as_ref().is_some_and(|(upto, _)| *upto >= target)
        };
        let state = state_rx
            .wait_for(covered)
            .await
            .map_err(|_| CommitError::Closed)?;
        if state.committed >= target {
            return Ok(());
        }
        let reason = state.failure.as_ref().map(|(_, why)| why.clone());
        Err(CommitError::Flush(
            reason.unwrap_or_else(|| "unknown".into()),
        ))
    }

    fn flush_inline(&self, target: u64) -> Result<(), CommitError> {
        let _flushing = self.inline_flush.lock();
        if self.state_tx.borrow().committed >= target {
            // Another caller's flush covered our writes while we waited.
            return Ok(());
        }
        let upto = self.written.load(Ordering::Acquire);
        self.engine.flush(Durability::Buffer).map_err(|e| {
            metrics::counter!("ringkv_commit_failures_total").increment(1);
            CommitError::Flush(e.to_string().into())
        })?;
        self.state_tx
            .send_modify(|s| s.committed = s.committed.max(upto));
        Ok(())
    }

    /// Stops the committer after its current flush.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

async fn run_committer(group: Arc<GroupCommit>, engine: Arc<dyn Engine>, durability: Durability) {
    loop {
        group.wake.notified().await;
        if group.closed.load(Ordering::Acquire) {
            return;
        }
        // NOTE: let every connection that is ready run its batch first, so
        // this one flush covers them all.
        tokio::task::yield_now().await;
        let upto = group.written.load(Ordering::Acquire);
        let result = match durability {
            Durability::Buffer => engine.flush(durability),
            Durability::Sync => {
                let engine = engine.clone();
                tokio::task::spawn_blocking(move || engine.flush(durability))
                    .await
                    .unwrap_or_else(|e| Err(StorageError::Task(e.to_string())))
            }
        };
        match result {
            Ok(()) => group
                .state_tx
                .send_modify(|s| s.committed = s.committed.max(upto)),
            Err(e) => {
                tracing::error!(error = %e, "commit flush failed");
                metrics::counter!("ringkv_commit_failures_total").increment(1);
                let why: Arc<str> = e.to_string().into();
                group
                    .state_tx
                    .send_modify(|s| s.failure = Some((upto, why)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{KeyValue, MemoryEngine};
    use bytes::Bytes;

    #[tokio::test]
    async fn commit_without_writes_is_immediate_and_with_writes_flushes() {
        let group = GroupCommit::spawn(Arc::new(MemoryEngine::new()), Durability::Buffer);
        group.commit().await.unwrap();
        group.note_write();
        group.note_write();
        group.commit().await.unwrap();
        assert_eq!(group.state_tx.borrow().committed, 2);
    }

    struct FailingEngine;

    impl Engine for FailingEngine {
        fn get(&self, _: &[u8]) -> Result<Option<Bytes>, StorageError> {
            Ok(None)
        }
        fn put(&self, _: Bytes, _: Bytes) -> Result<(), StorageError> {
            Ok(())
        }
        fn remove(&self, _: &[u8]) -> Result<(), StorageError> {
            Ok(())
        }
        fn scan(
            &self,
            _: &[u8],
            _: Option<&[u8]>,
            _: usize,
        ) -> Result<Vec<KeyValue>, StorageError> {
            Ok(Vec::new())
        }
        fn flush(&self, _: Durability) -> Result<(), StorageError> {
            Err(StorageError::Task("disk on fire".into()))
        }
        fn size_bytes(&self) -> u64 {
            0
        }
        fn kind(&self) -> &'static str {
            "failing"
        }
    }

    #[tokio::test]
    async fn a_failed_flush_fails_the_commit() {
        for durability in [Durability::Sync, Durability::Buffer] {
            let group = GroupCommit::spawn(Arc::new(FailingEngine), durability);
            group.note_write();
            let err = group.commit().await.unwrap_err();
            assert!(err.to_string().contains("disk on fire"), "{err}");
        }
    }

    #[tokio::test]
    async fn many_waiters_share_flushes() {
        let group = GroupCommit::spawn(Arc::new(MemoryEngine::new()), Durability::Sync);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let group = group.clone();
            tasks.push(tokio::spawn(async move {
                group.note_write();
                group.commit().await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(group.state_tx.borrow().committed, 50);
    }
}
