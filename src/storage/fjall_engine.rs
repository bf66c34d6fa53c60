//! The durable engine: one fjall LSM keyspace in the data directory.
//!
//! Writes go to fjall's journal with manual persistence: callers group
//! commits by calling [`Engine::flush`] once per batch of requests (the way
//! Redis writes its AOF once per event-loop turn), and a `Sync` flush fsyncs.
//! Invariant: after `flush(Buffer)` returns, earlier writes survive a crash of
//! the process; after `flush(Sync)`, a crash of the machine.
//!
//! A `Sync` flush fsyncs the journal outside fjall's journal lock
//! ([`JournalSync`]), so writers no longer wait for ringkv's fsyncs. With
//! [`FjallEngine::with_incremental_sync`], the journal is also fsynced in the
//! background every few MiB written, so the fsyncs fjall itself still makes
//! under its lock (when a memtable is flushed or the journal rotated) find
//! little to write.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Durability, Engine, KeyValue, StorageError};

const DATA_KEYSPACE: &str = "data";

/// fjall under `data_dir`.
pub struct FjallEngine {
    db: Database,
    data: Keyspace,
    journal: Arc<JournalSync>,
    incremental: Option<IncrementalSync>,
}

/// The background fsync of [`FjallEngine::with_incremental_sync`].
struct IncrementalSync {
    /// Bytes written between two background fsyncs.
    every_bytes: u64,
    /// Wakes the thread; dropping it stops the thread.
    wake: SyncSender<()>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for FjallEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallEngine").finish_non_exhaustive()
    }
}

impl FjallEngine {
    /// Opens (creating or recovering) the database in `data_dir`.
    pub fn open(data_dir: &Path, cache_bytes: u64) -> Result<Self, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StorageError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let db_dir = data_dir.join("fjall");
        let db = Database::builder(&db_dir)
            .manual_journal_persist(true)
            .cache_size(cache_bytes)
            .open()?;
        // IMPORTANT: manual persistence must be set on the keyspace too, or
        // every insert issues its own write(2) to the journal.
        let data = db.keyspace(DATA_KEYSPACE, || {
            KeyspaceCreateOptions::default().manual_journal_persist(true)
        })?;
        Ok(Self {
            db,
            data,
            journal: Arc::new(JournalSync::new(db_dir)),
            incremental: None,
        })
    }

    /// Also fsyncs the journal in the background once `every_bytes` of keys
    /// and values were written since the last fsync, like Redis's
    /// incremental fsync of its AOF rewrite (every 4 MB); RocksDB's
    /// `wal_bytes_per_sync` does the same with `sync_file_range`.
    ///
    /// Why: fjall fsyncs the journal under its journal lock when it flushes a
    /// memtable or starts a journal, and every write waits for that lock.
    /// Under `everysec` a second of journal was left to write then: with
    /// 1 KiB values, node-wide stalls of up to 60 ms every 1.5 s (measured
    /// with `perf record -e sched:sched_switch`). Durability only gains.
    pub fn with_incremental_sync(mut self, every_bytes: u64) -> Result<Self, StorageError> {
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let thread = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || {
                for () in woken {
                    // NOTE: a failure is logged and kept by `JournalSync`: every
                    // later `Sync` flush reports it.
                    let _ = journal.sync(&db);
                }
            })
            .map_err(|e| StorageError::Task(format!("journal-sync thread: {e}")))?;
        self.incremental = Some(IncrementalSync {
            every_bytes,
            wake,
            thread,
        });
        Ok(self)
    }

    /// Counts `bytes` written, waking the background fsync when they make
    /// the unsynced journal reach its threshold.
    fn written(&self, bytes: usize) {
        let Some(inc) = &self.incremental else { return };
        let bytes = bytes as u64;
        let before = self
            .journal
            .unsynced_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        if before < inc.every_bytes && before + bytes >= inc.every_bytes {
            // NOTE: full means a wake-up is already pending.
            if let Err(TrySendError::Disconnected(())) = inc.wake.try_send(()) {
                tracing::error!("journal-sync thread is gone");
            }
        }
    }
}

impl Drop for FjallEngine {
    fn drop(&mut self) {
        if let Some(inc) = self.incremental.take() {
            drop(inc.wake);
            // NOTE: joined so the database is closed when the engine is gone
            // (a reopen of the directory must not find it still held).
            let _ = inc.thread.join();
        }
    }
}

impl Engine for FjallEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(self.data.get(key)?.map(Bytes::from))
    }

    fn put(&self, key: Bytes, value: Bytes) -> Result<(), StorageError> {
        self.journal.check()?;
        let bytes = key.len() + value.len();
        self.data
            .insert(key, value)
            .map_err(|e| self.journal.fjall_error(e))?;
        self.written(bytes);
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<(), StorageError> {
        self.journal.check()?;
        self.data
            .remove(key)
            .map_err(|e| self.journal.fjall_error(e))?;
        self.written(key.len());
        Ok(())
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let iter = match end {
            Some(end) => self.data.range(start..end),
            None => self.data.range(start..),
        };
        let mut out = Vec::new();
        for guard in iter.take(limit) {
            let (k, v) = guard.into_inner()?;
            out.push((Bytes::from(k), Bytes::from(v)));
        }
        Ok(out)
    }

    fn flush(&self, durability: Durability) -> Result<(), StorageError> {
        match durability {
            // Hands the buffered journal to the kernel (one write(2), under
            // fjall's journal lock).
            Durability::Buffer => self
                .db
                .persist(PersistMode::Buffer)
                .map_err(|e| self.journal.fjall_error(e)),
            Durability::Sync => self.journal.sync(&self.db),
        }
    }

    fn size_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn kind(&self) -> &'static str {
        "fjall"
    }

    fn write_error(&self) -> Option<String> {
        self.journal.check().err().map(|e| e.to_string())
    }
}

/// fsyncs fjall's active journal through a handle of its own.
///
/// fjall's `persist(SyncData)` holds the journal lock through the fdatasync,
/// so every write to the node waited for the disk: under `everysec`, stalls
/// of 17-19 ms once a second (`perf trace`), the p99 of 1 KiB writes. Here
/// the journal's buffer is first handed to the kernel under the lock
/// (`PersistMode::Buffer`), then the file is fsynced without it, the way
/// Redis fsyncs its AOF from a background thread while writes go on.
///
/// IMPORTANT: this relies on two facts of fjall 3's journal (which is why
/// Cargo.toml pins fjall's exact version): the active journal is the
/// highest-numbered `<id>.jnl` in the database folder (pinned by the tests
/// below), and `journal::writer::Writer::rotate` fsyncs the journal it seals
/// before it creates the next one (read in its source; a test cannot see an
/// fsync). So the highest-numbered journal found after the `Buffer` persist
/// is either the one that took the writes, or a later one that exists only
/// because that one was already fsynced.
struct JournalSync {
    dir: PathBuf,
    /// Bytes of keys and values written since the last fsync began (counted
    /// only with an incremental sync).
    unsynced_bytes: AtomicU64,
    /// The journal fsynced last: its id and a handle of our own.
    /// NOTE: a std mutex held through the fsync on purpose: it orders the
    /// fsyncs, so the failure check under it sees every earlier failure.
    active: Mutex<Option<(u64, File)>>,
    /// fsyncs that succeeded (tests).
    syncs: AtomicU64,
    /// The first failed fsync. After it, no later fsync can be trusted (the
    /// kernel may have dropped the pages it failed to write), so every `Sync`
    /// flush fails until a restart, as fjall poisons itself.
    failed: OnceLock<String>,
}

impl JournalSync {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            unsynced_bytes: AtomicU64::new(0),
            active: Mutex::new(None),
            syncs: AtomicU64::new(0),
            failed: OnceLock::new(),
        }
    }

    /// Fails once an fsync failed: writes the node can no longer make
    /// durable are refused, as Redis refuses them after a failed AOF fsync.
    fn check(&self) -> Result<(), StorageError> {
        match self.failed.get() {
            Some(first) => Err(StorageError::Fsync(first.clone())),
            None => Ok(()),
        }
    }

    /// fsyncs everything written to the journal so far.
    fn sync(&self, db: &Database) -> Result<(), StorageError> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        // NOTE: checked under the lock: a failed fsync consumes the kernel's
        // error, so a second fsync right after it would wrongly succeed.
        self.check()?;
        self.unsynced_bytes.store(0, Ordering::Relaxed);
        db.persist(PersistMode::Buffer)
            .map_err(|e| self.fjall_error(e))?;
        let open_id = active.as_ref().map(|(id, _)| *id);
        let Some((id, path)) = self.newest_journal(open_id).map_err(|e| self.io(e))? else {
            // NOTE: no journal where fjall 3 keeps it: fsync under fjall's
            // lock rather than promise what was not done.
            return db
                .persist(PersistMode::SyncData)
                .map_err(|e| self.fjall_error(e));
        };
        if open_id != Some(id) {
            let file = File::open(&path).map_err(|e| self.io(e))?;
            *active = Some((id, file));
        }
        if let Some((_, file)) = active.as_ref() {
            let started = std::time::Instant::now();
            file.sync_data().map_err(|e| self.fail(&path, &e))?;
            metrics::histogram!("ringkv_journal_fsync_seconds")
                .record(started.elapsed().as_secs_f64());
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        // NOTE: fjall poisons itself when its own journal fsync or rotation
        // fails; asking again makes such a failure fail this flush too.
        db.persist(PersistMode::Buffer)
            .map_err(|e| self.fjall_error(e))?;
        Ok(())
    }

    /// The active journal: after `open_id`, found by name (one stat each, no
    /// file descriptor); without it, by listing the folder.
    fn newest_journal(&self, open_id: Option<u64>) -> std::io::Result<Option<(u64, PathBuf)>> {
        let Some(mut id) = open_id else {
            return newest_journal(&self.dir);
        };
        while self.dir.join(format!("{}.jnl", id + 1)).try_exists()? {
            id += 1;
        }
        Ok(Some((id, self.dir.join(format!("{id}.jnl")))))
    }

    /// An error finding or opening the journal: this flush fails, nothing
    /// was lost, later flushes try again.
    fn io(&self, source: std::io::Error) -> StorageError {
        StorageError::DataDir {
            path: self.dir.display().to_string(),
            source,
        }
    }

    /// A fjall error of a journal operation (insert, remove, persist) as a
    /// storage error. An I/O error there stops fjall for good (it poisons
    /// itself, and later calls say only `Poisoned`), as a failed write or
    /// fsync of its journal: then writes are refused as after a failed fsync
    /// of ours, and the node says so (`Engine::write_error`).
    fn fjall_error(&self, e: fjall::Error) -> StorageError {
        if !matches!(e, fjall::Error::Poisoned | fjall::Error::Io(_)) {
            return e.into();
        }
        // NOTE: once failed, fjall says `Poisoned` to every later call:
        // counted and logged once.
        if let Err(failed) = self.check() {
            return failed;
        }
        self.remember(format!("fjall's journal: {e}"))
    }

    /// A failed fsync: remembered, so every later `Sync` flush fails too.
    fn fail(&self, path: &Path, e: &std::io::Error) -> StorageError {
        self.remember(format!("fsync of {}: {e}", path.display()))
    }

    /// Counts and logs a failure that stops writes until a restart, and
    /// keeps the first one, which every later refusal reports.
    fn remember(&self, message: String) -> StorageError {
        metrics::counter!("ringkv_journal_fsync_failures_total").increment(1);
        tracing::error!(error = %message, "journal write or fsync failed; writes are refused until a restart");
        StorageError::Fsync(self.failed.get_or_init(|| message).clone())
    }
}

/// The highest-numbered `<id>.jnl` in `dir`.
fn newest_journal(dir: &Path) -> std::io::Result<Option<(u64, PathBuf)>> {
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id
            && newest.as_ref().is_none_or(|(best, _)| id > *best)
        {
            newest = Some((id, path));
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_holds(path: &Path, needle: &[u8]) -> bool {
        let bytes = std::fs::read(path).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_newest_journal_is_the_one_that_takes_writes() {
        let dir = tempfile::tempdir().unwrap();
        let e = FjallEngine::open(dir.path(), 1 << 20).unwrap();
        let value = b"journal-probe-0123456789";
        e.put(Bytes::from_static(b"k"), Bytes::from_static(value))
            .unwrap();
        e.flush(Durability::Sync).unwrap();
        let (id, path) = newest_journal(&dir.path().join("fjall")).unwrap().unwrap();
        assert!(
            journal_holds(&path, value),
            "{} lacks the write",
            path.display()
        );
        let synced = e.journal.active.lock().unwrap().as_ref().map(|(i, _)| *i);
        assert_eq!(synced, Some(id));
    }

    #[test]
    fn after_a_journal_rotation_the_sync_moves_to_the_higher_numbered_journal() {
        let dir = tempfile::tempdir().unwrap();
        let e = FjallEngine::open(dir.path(), 1 << 20).unwrap();
        // NOTE: fjall 3 starts a journal when a flush finds the active one
        // past 64 MB.
        // (Bytes that do not compress, or the journal stays small.)
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mib: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mib = Bytes::from(mib);
        e.put(Bytes::from_static(b"a"), Bytes::from_static(b"first"))
            .unwrap();
        e.flush(Durability::Sync).unwrap();
        let first = e.journal.active.lock().unwrap().as_ref().map(|(i, _)| *i);
        let first = first.unwrap();
        for i in 0..70u32 {
            e.put(Bytes::copy_from_slice(&i.to_be_bytes()), mib.clone())
                .unwrap();
        }
        e.data.rotate_memtable_and_wait().unwrap();
        let value = b"after-rotation-probe";
        e.put(Bytes::from_static(b"b"), Bytes::from_static(value))
            .unwrap();
        e.flush(Durability::Sync).unwrap();
        let (second, path) = newest_journal(&dir.path().join("fjall")).unwrap().unwrap();
        assert!(
            second > first,
            "a rotation starts a higher-numbered journal"
        );
        assert!(journal_holds(&path, value));
        let synced = e.journal.active.lock().unwrap().as_ref().map(|(i, _)| *i);
        assert_eq!(synced, Some(second));
    }

    #[test]
    fn the_incremental_sync_fsyncs_in_the_background_once_enough_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let e = FjallEngine::open(dir.path(), 1 << 20)
            .unwrap()
            .with_incremental_sync(4096)
            .unwrap();
        let synced = |e: &FjallEngine| e.journal.syncs.load(Ordering::Relaxed) > 0;
        e.put(Bytes::from_static(b"k"), Bytes::from(vec![1u8; 1000]))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!synced(&e), "below the threshold nothing is fsynced");
        for i in 0..4u8 {
            e.put(Bytes::from(vec![i]), Bytes::from(vec![2u8; 1000]))
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !synced(&e) {
            assert!(std::time::Instant::now() < deadline, "no background fsync");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(e.journal.unsynced_bytes.load(Ordering::Relaxed), 0);
        // The thread is joined on drop: the directory opens again at once.
        drop(e);
        let e = FjallEngine::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(e.get(&[3]).unwrap().map(|v| v.len()), Some(1000));
    }

    #[test]
    fn a_failed_fsync_fails_every_later_sync_flush() {
        let dir = tempfile::tempdir().unwrap();
        let e = FjallEngine::open(dir.path(), 1 << 20).unwrap();
        let err = e
            .journal
            .fail(Path::new("/x/1.jnl"), &std::io::Error::other("EIO"));
        assert!(err.to_string().contains("EIO"), "{err}");
        let later = e.flush(Durability::Sync).unwrap_err();
        assert!(later.to_string().contains("/x/1.jnl: EIO"), "{later}");
        e.flush(Durability::Buffer).unwrap();
    }

    #[test]
    fn after_a_failed_fsync_writes_are_refused_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let e = FjallEngine::open(dir.path(), 1 << 20).unwrap();
        e.put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
            .unwrap();
        assert_eq!(e.write_error(), None);
        e.journal
            .fail(Path::new("/x/1.jnl"), &std::io::Error::other("EIO"));
        let why = e.write_error().unwrap();
        assert!(why.contains("/x/1.jnl: EIO"), "{why}");
        let refused = e
            .put(Bytes::from_static(b"k"), Bytes::from_static(b"w"))
            .unwrap_err();
        assert!(matches!(refused, StorageError::Fsync(_)), "{refused}");
        assert!(matches!(e.remove(b"k"), Err(StorageError::Fsync(_))));
        assert_eq!(e.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
