//! Membership view and failure detection.
//!
//! Today membership is static (`cluster.nodes`) and liveness comes from a
//! [`PeerMonitor`] that pings every peer on a fixed interval through the
//! [`Transport`]: a peer that does not answer is marked down, one that
//! answers again is marked up. Gossip (chitchat) will replace the pings.
//! Invariant: liveness only ever informs routing and reporting; it never
//! changes the layout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::MemberConfig;
use crate::net::{Request, Response, Transport};
use crate::ring::Layout;

/// One node as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberView {
    /// Node name.
    pub name: String,
    /// Internode address.
    pub peer_addr: String,
    /// Zone, if any.
    pub zone: Option<String>,
    /// Up as this node sees it (this node is always up).
    pub up: bool,
    /// Milliseconds since this node last heard from it.
    pub last_seen_ms_ago: Option<u64>,
    /// Partitions whose token it holds in the layout.
    pub partitions_owned: u32,
}

/// The cluster as one node sees it (`GET /v1/cluster`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterView {
    /// The node answering.
    pub node: String,
    /// Version of the layout in force.
    pub layout_version: u64,
    /// Partition count `Q`.
    pub partitions: u32,
    /// Every member, sorted by name.
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone)]
struct Liveness {
    up: bool,
    last_seen: Option<Instant>,
}

/// Pings peers and remembers who answered.
#[derive(Debug)]
pub struct PeerMonitor {
    me: String,
    members: Vec<MemberConfig>,
    // NOTE: blocking lock, held only to read or update one entry, never across an await.
    liveness: RwLock<Vec<Liveness>>,
}

/// The running monitor task.
#[derive(Debug)]
pub struct MonitorHandle {
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MonitorHandle {
    /// Stops pinging.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.task.await;
    }
}

impl PeerMonitor {
    /// A monitor for `members` (this node, `me`, included), all assumed up.
    pub fn new(me: String, members: Vec<MemberConfig>) -> Arc<Self> {
        let liveness = members
            .iter()
            .map(|_| Liveness {
                up: true,
                last_seen: None,
            })
            .collect();
        Arc::new(Self {
            me,
            members,
            liveness: RwLock::new(liveness),
        })
    }

    /// Pings every peer each `interval` until shut down.
    pub fn spawn<T: Transport>(
        self: &Arc<Self>,
        transport: Arc<T>,
        interval: Duration,
    ) -> MonitorHandle {
        let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
        let monitor = self.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => monitor.probe_all(&*transport).await,
                    _ = shutdown_rx.changed() => return,
                }
            }
        });
        MonitorHandle { shutdown_tx, task }
    }

    async fn probe_all<T: Transport>(&self, transport: &T) {
        let probes = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.name != self.me)
            .map(|(i, m)| async move { (i, transport.call(&m.name, Request::Ping).await) });
        for (i, result) in futures_util::future::join_all(probes).await {
            let up = matches!(result, Ok(Response::Pong));
            self.record(i, up, result.err().map(|e| e.to_string()));
        }
    }

    fn record(&self, i: usize, up: bool, error: Option<String>) {
        let mut liveness = self.liveness.write();
        let Some(entry) = liveness.get_mut(i) else {
            return;
        };
        let name = &self.members[i].name;
        if entry.up != up {
            if up {
                tracing::info!(peer = %name, "peer is up");
            } else {
                tracing::warn!(peer = %name, error = error.as_deref().unwrap_or(""), "peer is down");
            }
            metrics::counter!("ringkv_peer_state_changes_total", "peer" => name.clone())
                .increment(1);
        }
        entry.up = up;
        if up {
            entry.last_seen = Some(Instant::now());
        }
    }

    /// True unless the last ping of `name` failed.
    pub fn is_up(&self, name: &str) -> bool {
        let liveness = self.liveness.read();
        self.members
            .iter()
            .zip(liveness.iter())
            .find(|(m, _)| m.name == name)
            .is_none_or(|(_, l)| l.up)
    }

    /// The cluster as this node sees it, under `layout`.
    pub fn view(&self, layout: &Layout) -> ClusterView {
        let counts = layout.partition_counts();
        let liveness = self.liveness.read();
        let mut members: Vec<MemberView> = self
            .members
            .iter()
            .zip(liveness.iter())
            .map(|(m, l)| {
                let me = m.name == self.me;
                let owned = layout
                    .index_of(&m.name)
                    .and_then(|i| counts.get(usize::from(i)).copied())
                    .unwrap_or(0);
                MemberView {
                    name: m.name.clone(),
                    peer_addr: m.peer_addr.to_string(),
                    zone: m.zone.clone(),
                    up: me || l.up,
                    last_seen_ms_ago: if me {
                        Some(0)
                    } else {
                        l.last_seen.map(|t| t.elapsed().as_millis() as u64)
                    },
                    partitions_owned: owned,
                }
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterView {
            node: self.me.clone(),
            layout_version: layout.version(),
            partitions: layout.partitions(),
            members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{NetError, PeerId};
    use crate::ring::NodeSpec;

    struct Flaky {
        down: parking_lot::Mutex<Vec<String>>,
    }

    impl Transport for Flaky {
        async fn call(&self, to: &PeerId, _request: Request) -> Result<Response, NetError> {
            if self.down.lock().iter().any(|d| d == to) {
                Err(NetError::Unreachable("refused".into()))
            } else {
                Ok(Response::Pong)
            }
        }
    }

    fn member(name: &str) -> MemberConfig {
        MemberConfig {
            name: name.into(),
            peer_addr: "127.0.0.1:1".parse().unwrap(),
            zone: None,
            capacity: 1,
        }
    }

    #[tokio::test]
    async fn marks_peers_down_and_up_and_reports_ownership() {
        let members = vec![member("a"), member("b"), member("c")];
        let monitor = PeerMonitor::new("a".into(), members);
        let net = Flaky {
            down: parking_lot::Mutex::new(vec!["c".into()]),
        };
        monitor.probe_all(&net).await;
        assert!(monitor.is_up("b") && !monitor.is_up("c"));
        let layout =
            Layout::initial(64, ["a", "b", "c"].into_iter().map(NodeSpec::new).collect()).unwrap();
        let view = monitor.view(&layout);
        assert_eq!(
            view.members.iter().map(|m| m.up).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(
            view.members.iter().map(|m| m.partitions_owned).sum::<u32>(),
            64
        );
        net.down.lock().clear();
        monitor.probe_all(&net).await;
        assert!(monitor.is_up("c"));
    }
}
