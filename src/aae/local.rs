//! What a replica does for an exchange, on either side: list the keys of
//! some segments, read records for the peer, merge the peer's records; and
//! [`serve`], which answers a peer's [`AaeRequest`]s with them.
//!
//! Invariant: records reach the store only through
//! [`LocalStore::merge_stored`], so an exchange can only ever move a replica
//! forward (merge is a join), never overwrite it.

use std::sync::Arc;

use bytes::Bytes;

use super::tree::{self, BRANCHES, SEGMENTS, record_hash, segment_of};
use super::{MAX_BATCH_BYTES, MAX_KEYS_BYTES, MAX_SEGMENTS_PER_REQUEST};
use crate::coordinator::{KeyspaceId, LocalStore, Store, StoreError};
use crate::net::{AaeRequest, AaeResponse, KeyDigest};
use crate::storage::keys;
use crate::version::Record;

/// Keys of a segment, with their record hashes and versions.
pub(crate) type Listing = Vec<KeyDigest>;

/// The keyspace's id on this node, by name.
pub(crate) fn keyspace_id(store: &LocalStore, name: &str) -> Result<KeyspaceId, String> {
    Store::keyspaces(store)
        .by_name(name)
        .ok_or_else(|| format!("unknown keyspace {name:?} on this node"))
}

/// `[start, end)` of the storage keys of one keyspace in one partition.
fn keyspace_range(partition: u16, keyspace: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = keys::encode(partition, keyspace, b"");
    let end = keys::prefix_end(&start);
    (start, end)
}

/// True when `record` has been dead since before `cutoff_ms`: past the
/// tombstone grace, so the sweep purges it and the exchange ignores it.
pub(crate) fn purgeable(record: &Record, cutoff_ms: u64) -> bool {
    // NOTE: u64::MAX as "now" makes any expiry count as passed; an expiry in
    // the future is above the cutoff anyway.
    record
        .dead_since_ms(u64::MAX)
        .is_some_and(|dead| dead < cutoff_ms)
}

/// The keys of `segments` (in that order) in the store's (keyspace,
/// partition) range, leaving out purgeable records. One range scan.
pub(crate) fn list_segments(
    store: &LocalStore,
    ks: KeyspaceId,
    partition: u16,
    segments: &[u16],
    purgeable_before_ms: u64,
) -> Result<Vec<Listing>, StoreError> {
    let mut slot_of = vec![usize::MAX; SEGMENTS];
    for (i, &s) in segments.iter().enumerate() {
        if let Some(slot) = slot_of.get_mut(usize::from(s)) {
            *slot = i;
        }
    }
    let mut listed = vec![Vec::new(); segments.len()];
    let name = &Store::keyspaces(store).get(ks).name;
    let (mut cursor, end) = keyspace_range(partition, name);
    let prefix_len = cursor.len();
    loop {
        let page = store.engine().scan(&cursor, end.as_deref(), 4096)?;
        let Some((last, _)) = page.last() else {
            return Ok(listed);
        };
        cursor = keys::successor(last);
        for (raw_key, raw_record) in page {
            let slot = slot_of[segment_of(&raw_key)];
            if slot == usize::MAX {
                continue;
            }
            let record = Record::decode(raw_record)?;
            if purgeable(&record, purgeable_before_ms) {
                continue;
            }
            listed[slot].push(KeyDigest {
                hash: record_hash(&raw_key, &record),
                key: raw_key.slice(prefix_len..),
                timestamp: record.version.timestamp.0,
                node: record.version.node,
            });
        }
    }
}

/// The stored records of a prefix of `keys`, stopping once the batch holds
/// [`MAX_BATCH_BYTES`] (always at least one).
pub(crate) fn read_records(
    store: &LocalStore,
    ks: KeyspaceId,
    keys: &[Bytes],
) -> Result<Vec<Option<Bytes>>, StoreError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for key in keys {
        if bytes >= MAX_BATCH_BYTES {
            break;
        }
        let record = store.read_stored(ks, key)?.map(|r| r.encode());
        bytes += key.len() + record.as_ref().map_or(0, Bytes::len);
        out.push(record);
    }
    Ok(out)
}

/// Merges encoded records into the store and commits them.
pub(crate) async fn merge_records(
    store: &LocalStore,
    ks: KeyspaceId,
    records: Vec<(Bytes, Bytes)>,
) -> Result<(), StoreError> {
    for (key, raw) in records {
        store.merge_stored_encoded(ks, &key, Record::decode(raw.clone())?, raw)?;
    }
    store.commit().await
}

/// Answers a peer's anti-entropy request against `store`.
pub async fn serve(store: &Arc<LocalStore>, request: AaeRequest) -> Result<AaeResponse, String> {
    match request {
        AaeRequest::Branches {
            keyspace,
            partition,
            root,
        } => {
            let tree = tree_of(store, &keyspace, partition)?;
            if tree.root() == root {
                return Ok(AaeResponse::InSync);
            }
            Ok(AaeResponse::Hashes(tree::pack(&tree.branches())))
        }
        AaeRequest::Leaves {
            keyspace,
            partition,
            branches,
        } => {
            let tree = tree_of(store, &keyspace, partition)?;
            let mut leaves = Vec::new();
            for branch in branches.into_iter().take(BRANCHES) {
                if usize::from(branch) >= BRANCHES {
                    return Err(format!("branch {branch} out of range"));
                }
                leaves.extend(tree.leaves(usize::from(branch)));
            }
            Ok(AaeResponse::Hashes(tree::pack(&leaves)))
        }
        AaeRequest::Keys {
            keyspace,
            partition,
            segments,
            purgeable_before_ms,
        } => serve_keys(store, &keyspace, partition, segments, purgeable_before_ms).await,
        AaeRequest::Fetch { keyspace, keys } => {
            let ks = keyspace_id(store, &keyspace)?;
            let store = store.clone();
            blocking(move || read_records(&store, ks, &keys))
                .await
                .map(AaeResponse::Records)
        }
        AaeRequest::Push { keyspace, records } => {
            let ks = keyspace_id(store, &keyspace)?;
            merge_records(store, ks, records)
                .await
                .map_err(|e| e.to_string())?;
            Ok(AaeResponse::Merged)
        }
    }
}

fn tree_of<'a>(
    store: &'a LocalStore,
    keyspace: &str,
    partition: u16,
) -> Result<&'a tree::Tree, String> {
    let ks = keyspace_id(store, keyspace)?;
    store
        .aae_trees()
        .get(ks, partition)
        .ok_or_else(|| format!("partition {partition} out of range"))
}

async fn serve_keys(
    store: &Arc<LocalStore>,
    keyspace: &str,
    partition: u16,
    segments: Vec<u16>,
    purgeable_before_ms: u64,
) -> Result<AaeResponse, String> {
    let ks = keyspace_id(store, keyspace)?;
    tree_of(store, keyspace, partition)?;
    if let Some(bad) = segments.iter().find(|&&s| usize::from(s) >= SEGMENTS) {
        return Err(format!("segment {bad} out of range"));
    }
    if segments.len() > MAX_SEGMENTS_PER_REQUEST {
        return Err(format!(
            "{} segments asked at once: at most {MAX_SEGMENTS_PER_REQUEST}",
            segments.len()
        ));
    }
    let mut segments = segments;
    segments.sort_unstable();
    segments.dedup();
    let store = store.clone();
    let listed =
        blocking(move || list_segments(&store, ks, partition, &segments, purgeable_before_ms))
            .await?;
    let (mut entries, mut bytes, mut count) = (Vec::new(), 0, 0u16);
    for segment in listed {
        if count > 0 && bytes >= MAX_KEYS_BYTES {
            break;
        }
        bytes += segment.iter().map(|d| d.key.len() + 24).sum::<usize>();
        entries.extend(segment);
        count += 1;
    }
    Ok(AaeResponse::Keys {
        listed: count,
        entries,
    })
}

/// Runs storage work on the blocking pool, off the request threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("anti-entropy task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_range_covers_exactly_its_keys() {
        let (start, end) = keyspace_range(7, "ab");
        let end = end.unwrap();
        let inside = keys::encode(7, "ab", &[0xff; 20]);
        assert!(inside >= start && inside < end);
        for outside in [
            keys::encode(7, "a", b"zzz"),
            keys::encode(7, "abc", b""),
            keys::encode(8, "ab", b""),
            keys::encode(6, "ab", &[0xff; 4]),
        ] {
            assert!(outside < start || outside >= end, "{outside:?}");
        }
        assert_eq!(keyspace_range(u16::MAX, "").1, Some(vec![0xff, 0xff, 1]));
    }
}
