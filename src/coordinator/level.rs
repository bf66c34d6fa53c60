//! Consistency levels: how many replicas must answer a read or a write.
//!
//! Invariant: [`Level::required`] is at least 1 and, for a valid level, at
//! most `n`; `quorum` is `n / 2 + 1`, so a quorum read meets a quorum write.

use std::fmt;

/// A read or write consistency level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Level {
    /// One replica.
    One,
    /// Two replicas.
    Two,
    /// A majority: `n / 2 + 1`.
    Quorum,
    /// Every replica.
    All,
    /// An explicit count.
    Count(u32),
}

impl Level {
    /// Parses `one|two|quorum|all|<integer>` (case-insensitive).
    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_lowercase().as_str() {
            "one" => Some(Level::One),
            "two" => Some(Level::Two),
            "quorum" => Some(Level::Quorum),
            "all" => Some(Level::All),
            other => other.parse().ok().filter(|&c| c > 0).map(Level::Count),
        }
    }

    /// Replicas needed out of `n`; may exceed `n` for `two` or a large
    /// count, which the caller reports as unsatisfiable.
    pub fn required(self, n: u32) -> u32 {
        match self {
            Level::One => 1,
            Level::Two => 2,
            Level::Quorum => n / 2 + 1,
            Level::All => n.max(1),
            Level::Count(c) => c,
        }
    }
}

/// The read and write levels of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consistency {
    /// Replicas that must answer a read.
    pub read: Level,
    /// Replicas that must acknowledge a write.
    pub write: Level,
    /// Sloppy quorum for writes: hinted copies on fallbacks count toward
    /// `write` when primaries fail.
    pub sloppy: bool,
}

impl Default for Consistency {
    /// `quorum` for both, so `r + w > n`: reads see acknowledged writes.
    fn default() -> Self {
        Self {
            read: Level::Quorum,
            write: Level::Quorum,
            sloppy: false,
        }
    }
}

impl TryFrom<String> for Level {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Level::parse(&text).ok_or_else(|| {
            format!("invalid consistency level {text:?}: use one, two, quorum, all or a positive integer")
        })
    }
}

impl From<Level> for String {
    fn from(level: Level) -> String {
        level.to_string()
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::One => f.write_str("one"),
            Level::Two => f.write_str("two"),
            Level::Quorum => f.write_str("quorum"),
            Level::All => f.write_str("all"),
            Level::Count(c) => write!(f, "{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_counts() {
        assert_eq!(Level::parse("QUORUM"), Some(Level::Quorum));
        assert_eq!(Level::parse("2"), Some(Level::Count(2)));
        assert_eq!(Level::parse("0"), None);
        assert_eq!(Level::parse("most"), None);
        assert_eq!(Level::Quorum.required(3), 2);
        assert_eq!(Level::Quorum.required(1), 1);
        assert_eq!(Level::All.required(3), 3);
        assert_eq!(Level::Quorum.to_string(), "quorum");
    }
}
