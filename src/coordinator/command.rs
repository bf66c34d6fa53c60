//! Write commands and their meaning, as a pure function of the current entry.
//!
//! Invariant: [`WriteCmd::evaluate`] is the only place that decides what a
//! SET, DEL or EXPIRE does to a key, so the local store and the quorum
//! coordinator give every command the same Redis semantics.

use bytes::Bytes;

use super::Entry;

/// What happens to a key's expiry on SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryUpdate {
    /// KEEPTTL: keep the current expiry.
    Keep,
    /// No expiry.
    Clear,
    /// Expire at this absolute time, ms since the epoch.
    At(u64),
}

/// SET's NX / XX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    /// Always write.
    Always,
    /// NX: only if the key does not exist.
    IfAbsent,
    /// XX: only if it exists.
    IfPresent,
}

/// EXPIRE's NX / XX / GT / LT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCondition {
    /// Always set.
    Always,
    /// NX: only if the key has no expiry.
    IfNone,
    /// XX: only if it has one.
    IfSome,
    /// GT: only if the new expiry is later (no expiry counts as infinite).
    Later,
    /// LT: only if the new expiry is sooner.
    Sooner,
}

/// A mutation of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteCmd {
    /// SET and friends.
    Set {
        /// The new value.
        value: Bytes,
        /// What becomes of the expiry.
        expiry: ExpiryUpdate,
        /// NX / XX.
        condition: SetCondition,
    },
    /// DEL, UNLINK, GETDEL.
    Delete,
    /// The EXPIRE family (`at_ms: Some`), PERSIST (`None`), GETEX.
    Expire {
        /// New absolute expiry, or `None` to remove it.
        at_ms: Option<u64>,
        /// NX / XX / GT / LT.
        condition: ExpireCondition,
    },
}

/// What a command does, given the current live entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to write; the command reports "not applied".
    Skip,
    /// Write this value.
    Put {
        /// The value.
        value: Bytes,
        /// Its expiry.
        expiry_ms: Option<u64>,
    },
    /// Write a tombstone.
    Delete,
}

impl WriteCmd {
    /// The decision for this command when the key currently holds `current`
    /// (`None`: absent, deleted or expired) at wall time `now_ms`.
    pub fn evaluate(&self, current: Option<&Entry>, now_ms: u64) -> Decision {
        match self {
            WriteCmd::Set {
                value,
                expiry,
                condition,
            } => {
                let allowed = match condition {
                    SetCondition::Always => true,
                    SetCondition::IfAbsent => current.is_none(),
                    SetCondition::IfPresent => current.is_some(),
                };
                if !allowed {
                    return Decision::Skip;
                }
                let expiry_ms = match expiry {
                    ExpiryUpdate::Keep => current.and_then(|c| c.expiry_ms),
                    ExpiryUpdate::Clear => None,
                    ExpiryUpdate::At(at) => Some(*at),
                };
                if expiry_ms.is_some_and(|at| at <= now_ms) {
                    // NOTE: Redis deletes a key whose new expiry is already in the past.
                    return Decision::Delete;
                }
                Decision::Put {
                    value: value.clone(),
                    expiry_ms,
                }
            }
            WriteCmd::Delete => match current {
                Some(_) => Decision::Delete,
                None => Decision::Skip,
            },
            WriteCmd::Expire { at_ms, condition } => {
                let Some(current) = current else {
                    return Decision::Skip;
                };
                expire(current, *at_ms, *condition, now_ms)
            }
        }
    }
}

fn expire(
    current: &Entry,
    at_ms: Option<u64>,
    condition: ExpireCondition,
    now_ms: u64,
) -> Decision {
    let Some(at) = at_ms else {
        // PERSIST: only a key with an expiry changes.
        return match current.expiry_ms {
            Some(_) => Decision::Put {
                value: current.value.clone(),
                expiry_ms: None,
            },
            None => Decision::Skip,
        };
    };
    let allowed = match (condition, current.expiry_ms) {
        (ExpireCondition::Always, _) => true,
        (ExpireCondition::IfNone, old) => old.is_none(),
        (ExpireCondition::IfSome, old) => old.is_some(),
        (ExpireCondition::Later, old) => old.is_some_and(|old| at > old),
        (ExpireCondition::Sooner, old) => old.is_none_or(|old| at < old),
    };
    if !allowed {
        Decision::Skip
    } else if at <= now_ms {
        Decision::Delete
    } else {
        Decision::Put {
            value: current.value.clone(),
            expiry_ms: Some(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expiry_ms: Option<u64>) -> Entry {
        Entry {
            value: Bytes::from_static(b"v"),
            expiry_ms,
        }
    }

    fn set(condition: SetCondition, expiry: ExpiryUpdate) -> WriteCmd {
        WriteCmd::Set {
            value: Bytes::from_static(b"new"),
            expiry,
            condition,
        }
    }

    fn put(expiry_ms: Option<u64>) -> Decision {
        Decision::Put {
            value: Bytes::from_static(b"new"),
            expiry_ms,
        }
    }

    #[test]
    fn set_conditions() {
        let e = entry(None);
        let nx = set(SetCondition::IfAbsent, ExpiryUpdate::Clear);
        let xx = set(SetCondition::IfPresent, ExpiryUpdate::Clear);
        assert_eq!(nx.evaluate(Some(&e), 0), Decision::Skip);
        assert_eq!(nx.evaluate(None, 0), put(None));
        assert_eq!(xx.evaluate(None, 0), Decision::Skip);
        assert_eq!(xx.evaluate(Some(&e), 0), put(None));
    }

    #[test]
    fn set_expiry_updates() {
        let e = entry(Some(500));
        let keep = set(SetCondition::Always, ExpiryUpdate::Keep);
        assert_eq!(keep.evaluate(Some(&e), 100), put(Some(500)));
        assert_eq!(keep.evaluate(None, 100), put(None));
        let clear = set(SetCondition::Always, ExpiryUpdate::Clear);
        assert_eq!(clear.evaluate(Some(&e), 100), put(None));
        let past = set(SetCondition::Always, ExpiryUpdate::At(50));
        assert_eq!(past.evaluate(Some(&e), 100), Decision::Delete);
    }

    #[test]
    fn delete_only_existing() {
        assert_eq!(WriteCmd::Delete.evaluate(None, 0), Decision::Skip);
        assert_eq!(
            WriteCmd::Delete.evaluate(Some(&entry(None)), 0),
            Decision::Delete
        );
    }

    #[test]
    fn expire_conditions_follow_redis() {
        let exp = |at, condition| WriteCmd::Expire {
            at_ms: Some(at),
            condition,
        };
        let no_ttl = entry(None);
        let ttl = entry(Some(1000));
        let applied = |d: Decision| d != Decision::Skip;
        assert!(applied(
            exp(2000, ExpireCondition::IfNone).evaluate(Some(&no_ttl), 0)
        ));
        assert!(!applied(
            exp(2000, ExpireCondition::IfNone).evaluate(Some(&ttl), 0)
        ));
        assert!(!applied(
            exp(2000, ExpireCondition::IfSome).evaluate(Some(&no_ttl), 0)
        ));
        assert!(applied(
            exp(2000, ExpireCondition::Later).evaluate(Some(&ttl), 0)
        ));
        assert!(!applied(
            exp(2000, ExpireCondition::Later).evaluate(Some(&no_ttl), 0)
        ));
        assert!(!applied(
            exp(500, ExpireCondition::Later).evaluate(Some(&ttl), 0)
        ));
        assert!(applied(
            exp(500, ExpireCondition::Sooner).evaluate(Some(&ttl), 0)
        ));
        assert!(applied(
            exp(500, ExpireCondition::Sooner).evaluate(Some(&no_ttl), 0)
        ));
        assert!(!applied(
            exp(2000, ExpireCondition::Always).evaluate(None, 0)
        ));
        assert_eq!(
            exp(10, ExpireCondition::Always).evaluate(Some(&ttl), 20),
            Decision::Delete
        );
    }

    #[test]
    fn persist_only_changes_keys_with_expiry() {
        let persist = WriteCmd::Expire {
            at_ms: None,
            condition: ExpireCondition::Always,
        };
        assert_eq!(persist.evaluate(Some(&entry(None)), 0), Decision::Skip);
        assert_eq!(
            persist.evaluate(Some(&entry(Some(9))), 0),
            Decision::Put {
                value: Bytes::from_static(b"v"),
                expiry_ms: None
            }
        );
    }
}
