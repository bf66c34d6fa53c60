//! Where a key's replicas are: the plans (primaries, fallbacks, `n`) of
//! every partition, computed once per layout, so the request path does no
//! ring walk and no allocation to find replicas.

use std::sync::Arc;

use super::QuorumStore;
use crate::coordinator::{KeyspaceId, Keyspaces, StoreError};
use crate::net::Transport;
use crate::ring::{self, Layout};

/// The primaries of a key, the nodes that would stand in for them, and the
/// replication factor wanted.
pub(super) struct Plan {
    pub(super) primaries: Vec<Arc<str>>,
    pub(super) fallbacks: Vec<Arc<str>>,
    pub(super) n: usize,
    /// This node is one of the primaries.
    pub(super) local: bool,
}

/// A layout and every plan it implies, computed once per layout so the
/// request path does no ring walk and no allocation to find replicas.
pub(super) struct Routing {
    pub(super) layout: Arc<Layout>,
    /// Per keyspace: the plan of every partition, or why the layout cannot
    /// place that keyspace's replicas.
    plans: Vec<Result<Vec<Arc<Plan>>, String>>,
}

impl Routing {
    pub(super) fn new(layout: Layout, keyspaces: &Keyspaces, me: &str) -> Self {
        let plans = keyspaces
            .iter()
            .map(|config| {
                let n = config.n as usize;
                (0..layout.partitions())
                    .map(|partition| {
                        let list = layout
                            .preference_list(partition as ring::PartitionId, n)
                            .map_err(|e| e.to_string())?;
                        let names = |nodes: &[ring::NodeIndex]| -> Vec<Arc<str>> {
                            nodes
                                .iter()
                                .filter_map(|i| {
                                    layout.node(*i).map(|spec| Arc::from(spec.name.as_str()))
                                })
                                .collect()
                        };
                        let primaries = names(&list.primaries);
                        Ok(Arc::new(Plan {
                            local: primaries.iter().any(|p| **p == *me),
                            primaries,
                            fallbacks: names(&list.fallbacks),
                            n,
                        }))
                    })
                    .collect()
            })
            .collect();
        Self {
            layout: Arc::new(layout),
            plans,
        }
    }
}

impl<T: Transport> QuorumStore<T> {
    /// The key's partition, the layout in force and its preference list for
    /// the keyspace's `n`.
    pub(super) fn preference(
        &self,
        ks: KeyspaceId,
        key: &[u8],
    ) -> Result<(ring::PartitionId, Arc<Layout>, ring::PreferenceList), StoreError> {
        let config = self.keyspaces.get(ks);
        let partition = ring::partition_of(&config.name, key, self.partitions);
        let layout = self.layout();
        let list = layout
            .preference_list(partition, config.n as usize)
            .map_err(|e| StoreError::Layout(e.to_string()))?;
        Ok((partition, layout, list))
    }

    pub(super) fn plan(&self, ks: KeyspaceId, key: &[u8]) -> Result<Arc<Plan>, StoreError> {
        self.plan_hashed(ks, ring::key_hash(&self.keyspaces.get(ks).name, key))
    }

    /// [`Self::plan`] for a key whose [`ring::key_hash`] is `hash`.
    pub(super) fn plan_hashed(&self, ks: KeyspaceId, hash: u64) -> Result<Arc<Plan>, StoreError> {
        let partition = ring::partition_of_hash(hash, self.partitions);
        let routing = self.routing.read();
        let plans = routing.plans[ks]
            .as_ref()
            .map_err(|e| StoreError::Layout(e.clone()))?;
        plans
            .get(usize::from(partition))
            .cloned()
            .ok_or_else(|| StoreError::Layout(format!("no partition {partition} in the layout")))
    }
}
