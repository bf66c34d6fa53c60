//! Concurrent execution of pipelined commands, for stores whose requests
//! wait on the network (the quorum coordinator).
//!
//! A run is a stretch of consecutive pipelined commands that read or blindly
//! write single keys (GET, KV.GET, a plain SET, KV.PUT) and do not depend on
//! each other: a key is only read, or only written, within the run. Its
//! commands are dispatched together and their replies encoded in request
//! order. Invariant: a run never holds both a read and a write of one key,
//! so no command can observe a later command's effect or miss an earlier
//! one's; blind writes of one key are stamped in request order (a write is
//! stamped before its first await), so the last one wins, as in Redis.

use std::collections::HashMap;

use bytes::Bytes;

use super::command::is;

/// The most commands one run holds.
pub(crate) const MAX_RUN: usize = 256;

/// How a command touches its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    BlindWrite,
}

/// The key and access of a command that may join a run, or `None`.
fn access(args: &[Bytes]) -> Option<(&Bytes, Access)> {
    let (name, rest) = args.split_first()?;
    match rest {
        [key] if is(name, "GET") => Some((key, Access::Read)),
        [key, ..] if is(name, "KV.GET") => Some((key, Access::Read)),
        [key, _value] if is(name, "SET") => Some((key, Access::BlindWrite)),
        [key, _value, ..] if is(name, "KV.PUT") => Some((key, Access::BlindWrite)),
        _ => None,
    }
}

/// The keys of a run being built, and how the run touches them.
#[derive(Debug, Default)]
pub(crate) struct Run {
    keys: HashMap<Bytes, Access>,
}

impl Run {
    /// Adds `args` to the run if it can join; false if it cannot.
    pub(crate) fn admit(&mut self, args: &[Bytes]) -> bool {
        let Some((key, access)) = access(args) else {
            return false;
        };
        match self.keys.get(key) {
            Some(existing) if *existing != access => false,
            Some(_) => true,
            None => {
                self.keys.insert(key.clone(), access);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn reads_and_blind_writes_of_distinct_keys_share_a_run() {
        let mut run = Run::default();
        assert!(run.admit(&cmd(&["SET", "a", "1"])));
        assert!(
            run.admit(&cmd(&["set", "a", "2"])),
            "writes of one key stay ordered by stamp"
        );
        assert!(run.admit(&cmd(&["GET", "b"])));
        assert!(run.admit(&cmd(&["KV.GET", "b", "R", "one"])));
        assert!(run.admit(&cmd(&["KV.PUT", "c", "v", "W", "all"])));
    }

    #[test]
    fn a_read_and_a_write_of_one_key_never_share_a_run() {
        let mut run = Run::default();
        assert!(run.admit(&cmd(&["SET", "a", "1"])));
        assert!(!run.admit(&cmd(&["GET", "a"])));
        let mut run = Run::default();
        assert!(run.admit(&cmd(&["GET", "a"])));
        assert!(!run.admit(&cmd(&["KV.PUT", "a", "v"])));
    }

    #[test]
    fn other_commands_never_join() {
        let mut run = Run::default();
        for words in [
            &["SET", "a", "1", "NX"][..],
            &["SET", "a", "1", "EX", "10"],
            &["DEL", "a"],
            &["MGET", "a", "b"],
            &["SELECT", "1"],
            &["GET"],
            &["INCR", "a"],
        ] {
            assert!(!run.admit(&cmd(words)), "{words:?}");
        }
    }
}
