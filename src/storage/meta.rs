//! What a data directory was created with (`ringkv.meta`): the partition
//! count its keys are laid out in.
//!
//! Every storage key starts with its partition (see [`super::keys`]), and the
//! partition of a key depends on the partition count, so the same data read
//! with another count would look lost. Like Riak's ring size and Cassandra's
//! `num_tokens`, the count is fixed when the directory is created: a start
//! with another `cluster.partitions` is refused with the count to use.
//! Invariant: once `ringkv.meta` exists it is never rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name under the data directory.
pub const META_FILE: &str = "ringkv.meta";
/// The only format this release writes and reads.
const META_FORMAT: u32 = 1;

/// The file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct DataDirMeta {
    format: u32,
    partitions: u32,
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
    let shown = path.display().to_string();
    let io = |source| MetaError::Io {
        path: shown.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let meta = parse(&text).map_err(|reason| MetaError::Unreadable {
                path: shown.clone(),
                reason,
            })?;
            if meta.partitions != partitions {
                return Err(MetaError::PartitionsChanged {
                    path: shown,
                    created: meta.partitions,
                    configured: partitions,
                });
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let meta = DataDirMeta {
                format: META_FORMAT,
                partitions,
            };
            write_atomically(&path, &render(meta)).map_err(io)?;
            Ok(true)
        }
        Err(e) => Err(io(e)),
    }
}

fn parse(text: &str) -> Result<DataDirMeta, String> {
    let meta: DataDirMeta = toml::from_str(text).map_err(|e| e.message().to_string())?;
    if meta.format != META_FORMAT {
        return Err(format!("format {}", meta.format));
    }
    Ok(meta)
}

fn render(meta: DataDirMeta) -> String {
    let body = toml::to_string(&meta).expect("two integers always serialise");
    format!("# Written once when this data directory was created. Do not edit.\n{body}")
}

/// Writes `text` to `path` so that a crash leaves either no file or the whole
/// file: a temporary file, fsynced, renamed over, then the directory fsynced.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("meta.tmp");
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
