//! [`Config::validate`]: every field and their combinations, checked once at
//! start-up, each failure saying what to change.

use super::{Config, ConfigError, MAX_LAYOUT_PAIRS, MAX_NODE_NAME_BYTES, MIN_SECRET_BYTES};
use crate::ring::MAX_PARTITIONS;
use crate::storage::keys::MAX_KEYSPACE_NAME_BYTES;

impl Config {
    /// Checks every field and their combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        let l = &self.limits;
        let q = self.cluster.partitions;
        if !q.is_power_of_two() || q > MAX_PARTITIONS {
            return fail(format!(
                "cluster.partitions = {q}: must be a power of two between 1 and {MAX_PARTITIONS}"
            ));
        }
        let pairs = u64::from(q) * self.cluster.nodes.len() as u64;
        if pairs > MAX_LAYOUT_PAIRS {
            return fail(format!(
                "cluster.partitions = {q} with {} nodes is {pairs} (partition, node) pairs, more than \
                 {MAX_LAYOUT_PAIRS}: the layout would take too long and too much memory to compute; \
                 use fewer partitions",
                self.cluster.nodes.len()
            ));
        }
        if l.max_key_bytes == 0 || l.max_key_bytes > l.max_bulk_bytes {
            return fail(format!(
                "limits.max_key_bytes = {}: must be between 1 and limits.max_bulk_bytes ({})",
                l.max_key_bytes, l.max_bulk_bytes
            ));
        }
        if l.max_value_bytes > l.max_bulk_bytes {
            return fail(format!(
                "limits.max_value_bytes = {} is larger than limits.max_bulk_bytes = {}: raise max_bulk_bytes too",
                l.max_value_bytes, l.max_bulk_bytes
            ));
        }
        if l.max_connections == 0 || l.max_multibulk_len == 0 || l.max_inline_bytes < 16 {
            return fail(
                "limits.max_connections and max_multibulk_len must be at least 1, max_inline_bytes at least 16"
                    .into(),
            );
        }
        if self.storage.expiry_sweep_interval_ms == 0 || self.storage.expiry_sweep_batch == 0 {
            return fail(
                "storage.expiry_sweep_interval_ms and expiry_sweep_batch must be at least 1".into(),
            );
        }
        if self.node.name.is_empty() {
            return fail("node.name must not be empty".into());
        }
        if let Some(long) = std::iter::once(&self.node.name)
            .chain(self.cluster.nodes.iter().map(|m| &m.name))
            .find(|name| name.len() > MAX_NODE_NAME_BYTES)
        {
            return fail(format!(
                "node name {long:?} is {} bytes: at most {MAX_NODE_NAME_BYTES}",
                long.len()
            ));
        }
        if self.node.http_token.as_deref() == Some("") {
            return fail(
                "node.http_token is empty: remove it to leave the admin routes open, or set a token"
                    .into(),
            );
        }
        if self.node.requirepass.as_deref() == Some("") {
            return fail(
                "node.requirepass is empty: remove it to disable AUTH, or set a password".into(),
            );
        }
        self.validate_cluster()?;
        self.validate_keyspaces()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.nodes.is_empty() {
            return Ok(());
        }
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if c.secret.as_ref().is_none_or(|s| s.len() < MIN_SECRET_BYTES) {
            return fail(format!(
                "cluster.secret must be set to at least {MIN_SECRET_BYTES} characters when cluster.nodes is set (all nodes share it)"
            ));
        }
        if !c.nodes.iter().any(|m| m.name == self.node.name) {
            return fail(format!(
                "node.name {:?} is not in cluster.nodes: list every node, this one included",
                self.node.name
            ));
        }
        let mut names = std::collections::HashSet::new();
        for m in &c.nodes {
            if !names.insert(m.name.as_str()) {
                return fail(format!("cluster.nodes lists {:?} twice", m.name));
            }
        }
        if c.request_timeout_ms == 0 {
            return fail("cluster.request_timeout_ms must be at least 1".into());
        }
        if !(10..=60_000).contains(&c.gossip_interval_ms) {
            return fail(format!(
                "cluster.gossip_interval_ms = {}: must be between 10 and 60000",
                c.gossip_interval_ms
            ));
        }
        if c.aae_interval_ms != 0 && c.aae_interval_ms < 100 {
            return fail(format!(
                "cluster.aae_interval_ms = {}: must be at least 100, or 0 to turn anti-entropy off",
                c.aae_interval_ms
            ));
        }
        if c.aae_max_partitions_per_sec == 0 {
            return fail("cluster.aae_max_partitions_per_sec must be at least 1".into());
        }
        if self.gossip_addr().port() == 0 {
            return fail(
                "node.gossip_addr (or node.peer_addr, its default) needs a fixed port: peers gossip back to it"
                    .into(),
            );
        }
        if c.hint_window_ms == 0 || c.hint_max_bytes_per_target == 0 {
            return fail(
                "cluster.hint_window_ms and cluster.hint_max_bytes_per_target must be at least 1"
                    .into(),
            );
        }
        let grace = self.storage.tombstone_grace_ms;
        // NOTE: a hint's age is measured on its holder's clock and a
        // tombstone's on its replica's, so the skew allowed between them
        // and a delivery that waits a request timeout (plus the sweep that
        // ends it) count too.
        let call_ms = c.request_timeout_ms + crate::net::MAX_CALL_OVERRUN.as_millis() as u64;
        let hint_bound = c.hint_window_ms + self.limits.max_clock_skew_ms + call_ms;
        if grace <= hint_bound {
            return fail(format!(
                "storage.tombstone_grace_ms = {grace} must be longer than cluster.hint_window_ms + \
                 limits.max_clock_skew_ms + cluster.request_timeout_ms + 100 ms = {hint_bound}: \
                 a hint delivered after its tombstone was purged would bring a deleted key back"
            ));
        }
        if let Some(period) = self.aae_period_ms()
            && grace <= period
        {
            return fail(format!(
                "storage.tombstone_grace_ms = {grace} must be longer than the anti-entropy period \
                 ({period} ms: cluster.aae_interval_ms + 20% jitter + one round at \
                 aae_max_partitions_per_sec): a replica must be compared before its tombstones are purged"
            ));
        }
        if let Some(seed) = c.seeds.iter().find(|s| !s.contains(':')) {
            return fail(format!(
                "cluster.seeds entry {seed:?} is not host:port (a gossip address)"
            ));
        }
        Ok(())
    }

    fn validate_keyspaces(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for ks in &self.keyspaces {
            let valid_name = !ks.name.is_empty()
                && ks.name.len() <= MAX_KEYSPACE_NAME_BYTES
                && ks
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_name {
                return Err(ConfigError::Invalid(format!(
                    "keyspace name {:?}: use 1 to {MAX_KEYSPACE_NAME_BYTES} characters of A-Z a-z 0-9 _ -",
                    ks.name
                )));
            }
            if !seen.insert(ks.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "keyspace {:?} is listed twice",
                    ks.name
                )));
            }
            if ks.n == 0 {
                return Err(ConfigError::Invalid(format!(
                    "keyspace {:?}: n must be at least 1",
                    ks.name
                )));
            }
            for level in [ks.read_level, ks.write_level] {
                if level.required(ks.n) > ks.n {
                    return Err(ConfigError::Invalid(format!(
                        "keyspace {:?}: level {level} needs more than n = {} replicas",
                        ks.name, ks.n
                    )));
                }
            }
        }
        Ok(())
    }
}
