//! What a data directory was created with (`ringkv.meta`): the partition
//! count its keys are laid out in; and, for a cluster node, the layout it
//! first served (`cluster.layout`).
//!
//! Every storage key starts with its partition (see [`super::keys`]), and the
//! partition of a key depends on the partition count, so the same data read
//! with another count would look lost. Like Riak's ring size and Cassandra's
//! `num_tokens`, the count is fixed when the directory is created: a start
//! with another `cluster.partitions` is refused with the count to use.
//!
//! A node's replicas are the partitions the layout gives it, and the layout
//! is computed from `cluster.nodes` (names, zones, capacities) and the
//! largest `n`. Edited while the cluster is stopped, the list gives another
//! assignment at the next start: keys would be looked for on nodes that
//! never held them, and nothing moves them there (membership changes are
//! DESIGN §6, not built yet). So the first start of a cluster node records
//! its layout's digest, and a start whose layout differs is refused with
//! both member lists, like a changed partition count.
//!
//! Invariant: once `ringkv.meta` or `cluster.layout` exists it is never
//! rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name under the data directory.
pub const META_FILE: &str = "ringkv.meta";
/// The layout a cluster node first served, under the data directory.
pub const LAYOUT_FILE: &str = "cluster.layout";
/// The only format this release writes and reads.
const META_FORMAT: u32 = 1;

/// The file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct DataDirMeta {
    format: u32,
    partitions: u32,
}

/// The layout a data directory was first served under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LayoutMeta {
    format: u32,
    /// [`crate::ring::Layout::digest`], in hex.
    digest: String,
    /// Replica set size of the layout.
    spread: u8,
    /// Each member as `name`, plus its zone and capacity when set.
    members: Vec<String>,
}

/// The layout a node is about to serve, as [`check_layout`] records it.
#[derive(Debug, Clone)]
pub(crate) struct LayoutRecord {
    /// [`crate::ring::Layout::digest`].
    pub(crate) digest: u64,
    /// [`crate::ring::Layout::spread`].
    pub(crate) spread: u8,
    /// Each member as `name`, plus its zone and capacity when set.
    pub(crate) members: Vec<String>,
}

/// Why a data directory cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The directory's keys are laid out in another partition count.
    #[error(
        "{path} says this data directory holds keys laid out in {created} partitions, but \
         cluster.partitions is {configured}: the partition count is fixed when a cluster is \
         created; set cluster.partitions = {created} (or start with an empty data directory)"
    )]
    PartitionsChanged {
        /// The metadata file.
        path: String,
        /// The count the directory was created with.
        created: u32,
        /// The configured count.
        configured: u32,
    },
    /// The layout computed now differs from the one the directory's data
    /// was placed by.
    #[error(
        "{path}: this data directory was written under a layout of {then}; cluster.nodes and \
         the keyspaces' largest n now give another, of {now}. Keys would be looked for on nodes \
         that never held them, and moving data between nodes needs membership changes \
         (join/leave), which this release does not have: restore cluster.nodes (and n) as they \
         were on every node, or start every node from an empty data directory"
    )]
    LayoutChanged {
        /// The layout file.
        path: String,
        /// The recorded layout, described.
        then: String,
        /// The configured layout, described.
        now: String,
    },
    /// The same members and `n` give another layout: the release changed
    /// how partitions are placed.
    #[error(
        "{path}: this data directory was written under a layout of {members} that this release \
         places differently (digest {then} there, {now} here): keys would be looked for on \
         nodes that never held them; run the release that wrote this data directory"
    )]
    PlacementChanged {
        /// The layout file.
        path: String,
        /// The members, described.
        members: String,
        /// The recorded digest.
        then: String,
        /// The digest computed now.
        now: String,
    },
    /// Written by another release, or not ours.
    #[error("{path}: unreadable ({reason}); this release reads format {META_FORMAT}")]
    Unreadable {
        /// The metadata file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The metadata file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Checks that `data_dir` was created with `partitions`, recording it when
/// the directory has no metadata yet (a new directory, or one from a release
/// before the file existed). Returns true when it recorded it.
pub fn check_partitions(data_dir: &Path, partitions: u32) -> Result<bool, MetaError> {
    let path = data_dir.join(META_FILE);
    let now = DataDirMeta {
        format: META_FORMAT,
        partitions,
    };
    let header = "# Written once when this data directory was created. Do not edit.";
    let Some(then) = recorded_or_record(data_dir, &path, &now, header)? else {
        return Ok(true);
    };
    if then.partitions != partitions {
        return Err(MetaError::PartitionsChanged {
            path: path.display().to_string(),
            created: then.partitions,
            configured: partitions,
        });
    }
    Ok(false)
}

/// Checks that `data_dir` holds data placed by `layout`, recording it when
/// the directory has no layout yet (a node's first start in a cluster, or a
/// directory from a release before the file existed). Returns true when it
/// recorded it.
pub(crate) fn check_layout(data_dir: &Path, layout: &LayoutRecord) -> Result<bool, MetaError> {
    let path = data_dir.join(LAYOUT_FILE);
    let now = LayoutMeta {
        format: META_FORMAT,
        digest: format!("{:016x}", layout.digest),
        spread: layout.spread,
        members: layout.members.clone(),
    };
    let header = "# Written once, when this data directory first served a cluster. Do not edit.";
    let Some(then) = recorded_or_record(data_dir, &path, &now, header)? else {
        return Ok(true);
    };
    if then.digest == now.digest {
        return Ok(false);
    }
    let path = path.display().to_string();
    if then.members == now.members && then.spread == now.spread {
        return Err(MetaError::PlacementChanged {
            path,
            members: format!("n = {} [{}]", now.spread, now.members.join(", ")),
            then: then.digest,
            now: now.digest,
        });
    }
    let describe = |m: &LayoutMeta| {
        format!(
            "{} nodes, n = {} [{}]",
            m.members.len(),
            m.spread,
            m.members.join(", ")
        )
    };
    Err(MetaError::LayoutChanged {
        path,
        then: describe(&then),
        now: describe(&now),
    })
}

/// A metadata file's contents: this release reads only [`META_FORMAT`].
trait Formatted: Serialize + serde::de::DeserializeOwned {
    fn format(&self) -> u32;
}

impl Formatted for DataDirMeta {
    fn format(&self) -> u32 {
        self.format
    }
}

impl Formatted for LayoutMeta {
    fn format(&self) -> u32 {
        self.format
    }
}

/// What `path` records, or, when there is no such file yet, `None` after
/// writing `now` there (under `header`), once and atomically: an existing
/// file is never rewritten.
fn recorded_or_record<T: Formatted>(
    data_dir: &Path,
    path: &Path,
    now: &T,
    header: &str,
) -> Result<Option<T>, MetaError> {
    let shown = || path.display().to_string();
    let io = |source| MetaError::Io {
        path: shown(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let unreadable = |reason| MetaError::Unreadable {
                path: shown(),
                reason,
            };
            let then: T = toml::from_str(&text).map_err(|e| unreadable(e.message().to_string()))?;
            if then.format() != META_FORMAT {
                return Err(unreadable(format!("format {}", then.format())));
            }
            Ok(Some(then))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let body = toml::to_string(now).expect("strings and integers always serialise");
            write_atomically(path, &format!("{header}\n{body}")).map_err(io)?;
            Ok(None)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes `text` to `path` so that a crash leaves either no file or the whole
/// file: a temporary file, fsynced, renamed over, then the directory fsynced.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp: PathBuf = path.to_path_buf().into_os_string().into();
    tmp.as_mut_os_string().push(".tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    // IMPORTANT: the contents must be on disk before the name points at them.
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_records_the_count_and_later_starts_must_match_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_partitions(dir.path(), 1024).unwrap(), "recorded");
        assert!(!check_partitions(dir.path(), 1024).unwrap(), "matched");
        let err = check_partitions(dir.path(), 2048).unwrap_err().to_string();
        assert!(
            err.contains("1024 partitions") && err.contains("cluster.partitions = 1024"),
            "{err}"
        );
        let text = std::fs::read_to_string(dir.path().join(META_FILE)).unwrap();
        assert!(
            text.contains("partitions = 1024"),
            "never rewritten: {text}"
        );
        assert!(!dir.path().join("ringkv.meta.tmp").exists());
    }

    #[test]
    fn a_crash_while_recording_leaves_no_file_and_the_next_start_records_it() {
        let dir = tempfile::tempdir().unwrap();
        // What a crash between writing the temporary file and renaming it
        // leaves behind: a partial temporary file and no metadata.
        std::fs::write(dir.path().join("ringkv.meta.tmp"), "format = 1\npart").unwrap();
        assert!(check_partitions(dir.path(), 512).unwrap(), "recorded");
        assert!(
            check_partitions(dir.path(), 1024).is_err(),
            "512 is fixed now"
        );
    }

    fn record(digest: u64, members: &[&str]) -> LayoutRecord {
        LayoutRecord {
            digest,
            spread: 3,
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn the_first_clustered_start_records_its_layout_and_a_changed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let three = record(7, &["node1", "node2", "node3"]);
        assert!(check_layout(dir.path(), &three).unwrap(), "recorded");
        assert!(!check_layout(dir.path(), &three).unwrap(), "matched");
        let four = record(8, &["node1", "node2", "node3", "node4"]);
        let err = check_layout(dir.path(), &four).unwrap_err().to_string();
        assert!(
            err.contains("3 nodes, n = 3 [node1, node2, node3]")
                && err.contains("4 nodes, n = 3 [node1, node2, node3, node4]")
                && err.contains("restore cluster.nodes"),
            "{err}"
        );
        let text = std::fs::read_to_string(dir.path().join(LAYOUT_FILE)).unwrap();
        assert!(text.contains("0000000000000007"), "never rewritten: {text}");
        assert!(!dir.path().join("cluster.layout.tmp").exists());
        let moved = record(9, &["node1", "node2", "node3"]);
        let err = check_layout(dir.path(), &moved).unwrap_err().to_string();
        assert!(
            err.contains("places differently") && err.contains("run the release that wrote"),
            "the same members: {err}"
        );
        // The partition count has its own file, untouched.
        assert!(check_partitions(dir.path(), 1024).unwrap());
        assert!(!check_layout(dir.path(), &three).unwrap());
    }

    #[test]
    fn another_format_or_garbage_is_refused_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(META_FILE);
        std::fs::write(&path, "format = 2\npartitions = 1024\n").unwrap();
        let err = check_partitions(dir.path(), 1024).unwrap_err().to_string();
        assert!(
            err.contains("format 2") && err.contains("reads format 1"),
            "{err}"
        );
        std::fs::write(&path, "not toml at all [").unwrap();
        assert!(matches!(
            check_partitions(dir.path(), 1024),
            Err(MetaError::Unreadable { .. })
        ));
    }
}
