//! Exchanges and rounds between in-process replicas (memory engine, the
//! in-memory network), a restart with the fjall engine, and the traffic
//! measurement.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::{FsyncPolicy, KeyspaceConfig};
use crate::coordinator::{
    Consistency, ExpiryUpdate, Keyspaces, LocalStore, LocalStoreConfig, ReplicaHandler,
    SetCondition, Store, WriteCmd,
};
use crate::net::{MemNetwork, MemTransport};
use crate::ring::{Layout, NodeSpec};
use crate::storage::{Engine, FjallEngine, MemoryEngine};
use crate::version::{Hlc, ManualClock, Record, Timestamp, Version};

const NOW_MS: u64 = 10_000_000;

fn open_store(engine: Arc<dyn Engine>, node: u32, partitions: u32, n: u32) -> Arc<LocalStore> {
    Arc::new(
        LocalStore::open(LocalStoreConfig {
            engine,
            hlc: Arc::new(Hlc::new(Arc::new(ManualClock::new(NOW_MS)), 60_000)),
            node,
            node_name: format!("n{node}"),
            partitions,
            keyspaces: Keyspaces::new(vec![
                KeyspaceConfig {
                    n,
                    ..Default::default()
                },
                KeyspaceConfig {
                    name: "other".into(),
                    n,
                    ..Default::default()
                },
            ]),
            fsync: FsyncPolicy::No,
        })
        .unwrap(),
    )
}

fn memory_store(node: u32, partitions: u32) -> Arc<LocalStore> {
    open_store(Arc::new(MemoryEngine::new()), node, partitions, 3)
}

fn version(ms: u64) -> Version {
    Version {
        timestamp: Timestamp::from_ms(ms),
        node: 7,
    }
}

fn value(ms: u64) -> Record {
    Record::value(version(ms), Bytes::from_static(b"value-16-bytes!!"), None)
}

fn key(i: u32) -> Bytes {
    Bytes::from(format!("key:{i:08}"))
}

/// Replica `a` (the initiator) and `b`, reachable as "b" from `a`'s transport.
struct Pair {
    a: Arc<LocalStore>,
    b: Arc<LocalStore>,
    to_b: MemTransport,
}

fn pair(partitions: u32) -> Pair {
    let (a, b) = (memory_store(1, partitions), memory_store(2, partitions));
    let net = MemNetwork::new(Duration::from_secs(30), 1);
    net.register("b", Arc::new(ReplicaHandler::new(b.clone())));
    Pair {
        a,
        b,
        to_b: net.transport("a"),
    }
}

impl Pair {
    fn both(&self, ks: usize, key: &[u8], record: Record) {
        self.a.merge_stored(ks, key, record.clone()).unwrap();
        self.b.merge_stored(ks, key, record).unwrap();
    }

    /// One exchange of every partition replica (both keyspaces), summed.
    async fn sync_all(&self, purgeable_before_ms: u64) -> ExchangeReport {
        let mut total = ExchangeReport::default();
        for ks in 0..Store::keyspaces(&*self.a).len() {
            for partition in 0..self.a.aae_trees().partitions() as u16 {
                let r = exchange(&self.a, &self.to_b, "b", ks, partition, purgeable_before_ms)
                    .await
                    .unwrap();
                total.segments += r.segments;
                total.pulled += r.pulled;
                total.pushed += r.pushed;
                total.bytes += r.bytes;
                total.round_trips += r.round_trips;
            }
        }
        total
    }

    fn trees_equal(&self) -> bool {
        all_levels(&self.a) == all_levels(&self.b)
    }
}

fn all_levels(store: &LocalStore) -> Vec<Vec<u64>> {
    let trees = store.aae_trees();
    (0..Store::keyspaces(store).len())
        .flat_map(|ks| {
            (0..trees.partitions() as u16).map(move |p| trees.get(ks, p).unwrap().levels())
        })
        .collect()
}

#[tokio::test]
async fn one_exchange_repairs_every_kind_of_difference_in_both_directions() {
    let p = pair(64);
    for i in 0..2000 {
        p.both(i as usize % 2, &key(i), value(1000));
    }
    // The expiry sweep decays an expired value into a same-version tombstone
    // on one replica only: not a difference.
    let expiring = Record::value(version(1000), Bytes::from_static(b"x"), Some(2000));
    p.both(0, b"expired", expiring.clone());
    p.a.merge_stored(0, b"expired", expiring.decayed()).unwrap();
    assert!(p.trees_equal(), "decay is not a difference");

    p.a.merge_stored(0, b"only-a", value(1000)).unwrap();
    p.b.merge_stored(1, b"only-b", value(1000)).unwrap();
    p.a.merge_stored(0, &key(10), value(2000)).unwrap(); // a newer
    p.b.merge_stored(0, &key(12), value(2000)).unwrap(); // b newer
    p.a.merge_stored(0, &key(14), Record::tombstone(version(2000)))
        .unwrap(); // deleted on a
    p.b.merge_stored(0, &key(16), Record::tombstone(version(900)))
        .unwrap(); // b: an older delete does not win
    p.b.merge_stored(0, &key(18), Record::tombstone(version(500)))
        .unwrap();
    p.a.merge_stored(0, &key(18), value(2000)).unwrap(); // b deleted, a rewrote later
    // Dead since before the purge cutoff and purged on b already: never moved.
    p.a.merge_stored(0, b"purged", Record::tombstone(version(100)))
        .unwrap();
    assert!(!p.trees_equal());

    let report = p.sync_all(200).await;
    assert_eq!((report.pushed, report.pulled), (4, 2), "{report:?}");
    for (ks, k) in [
        (0, Bytes::from_static(b"only-a")),
        (1, Bytes::from_static(b"only-b")),
        (0, key(10)),
        (0, key(12)),
        (0, key(14)),
        (0, key(16)),
        (0, key(18)),
    ] {
        let (a, b) = (
            p.a.read_stored(ks, &k).unwrap(),
            p.b.read_stored(ks, &k).unwrap(),
        );
        assert!(a.is_some() && a == b, "{k:?}: {a:?} vs {b:?}");
    }
    assert_eq!(
        p.a.read_stored(0, &key(14)).unwrap(),
        Some(Record::tombstone(version(2000)))
    );
    assert_eq!(p.b.read_stored(0, &key(18)).unwrap(), Some(value(2000)));
    assert_eq!(p.b.read_stored(0, &key(16)).unwrap(), Some(value(1000)));
    assert_eq!(
        p.b.read_stored(0, b"purged").unwrap(),
        None,
        "a purge is not undone"
    );

    p.a.merge_stored(0, b"purged", Record::tombstone(version(100)))
        .unwrap();
    let again = p.sync_all(200).await;
    assert_eq!((again.pushed, again.pulled), (0, 0), "{again:?}");
    p.b.merge_stored(0, b"purged", Record::tombstone(version(100)))
        .unwrap();
    assert!(p.trees_equal(), "converged");
    let idle = p.sync_all(200).await;
    assert_eq!(
        idle.round_trips, 128,
        "one round trip per partition replica"
    );
}

/// Divergences of `k` keys among `total`: half newer on `a`, half missing on `a`.
fn diverge(p: &Pair, k: u32, total: u32, ms: u64) {
    for j in 0..k {
        let i = j * (total / k.max(1));
        if j % 2 == 0 {
            p.a.merge_stored(0, &key(i), value(ms)).unwrap();
        } else {
            p.b.merge_stored(0, &key(total + i), value(ms)).unwrap();
        }
    }
}

/// What sending every key and record would cost (a lower bound: no framing).
fn full_copy_bytes(total: u32) -> u64 {
    (0..total)
        .map(|i| (key(i).len() + value(1000).encoded_len()) as u64)
        .sum()
}

#[tokio::test]
async fn repair_traffic_grows_with_divergent_keys_not_with_total_keys() {
    const TOTAL: u32 = 100_000;
    let p = pair(1024);
    for i in 0..TOTAL {
        p.both(0, &key(i), value(1000));
    }
    let idle = p.sync_all(0).await;
    assert_eq!((idle.pulled, idle.pushed), (0, 0));
    let mut costs = Vec::new();
    for (round, k) in [1u32, 100].into_iter().enumerate() {
        diverge(&p, k, TOTAL, 2000 + round as u64);
        let report = p.sync_all(0).await;
        assert_eq!(report.pulled + report.pushed, k as usize, "{report:?}");
        assert!(p.trees_equal());
        costs.push(report.bytes);
    }
    let full = full_copy_bytes(TOTAL);
    let per_key = |i: usize, k: u64| (costs[i] - idle.bytes) / k;
    println!(
        "{TOTAL} keys: idle sweep {} B, k=1 {} B, k=100 {} B, full copy {full} B",
        idle.bytes, costs[0], costs[1]
    );
    assert!(
        idle.bytes < 40_000,
        "idle sweep of 1024 partitions: {}",
        idle.bytes
    );
    assert!(per_key(0, 1) < 2_000, "one key: {} B", per_key(0, 1));
    assert!(
        per_key(1, 100) < 2_000,
        "per key of 100: {} B",
        per_key(1, 100)
    );
    assert!(costs[1] * 30 < full, "k=100 costs {} B of {full}", costs[1]);
}

/// Repair traffic for 1, 100 and 10 000 divergent keys among 1 million.
/// `cargo test --release --lib aae::tests::traffic -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a measurement: a million keys, about 6 s in a release build"]
async fn traffic_for_divergent_keys_among_a_million() {
    const TOTAL: u32 = 1_000_000;
    let p = pair(1024);
    for i in 0..TOTAL {
        p.both(0, &key(i), value(1000));
    }
    let full = full_copy_bytes(TOTAL);
    println!("{TOTAL} keys, 1024 partitions, full copy {full} B");
    println!("k\tbytes\tround trips\tbytes/k over idle\tsegments");
    let idle = p.sync_all(0).await;
    println!("0\t{}\t{}\t-\t0", idle.bytes, idle.round_trips);
    for (round, k) in [1u32, 100, 10_000].into_iter().enumerate() {
        diverge(&p, k, TOTAL, 2000 + round as u64);
        let r = p.sync_all(0).await;
        assert_eq!(r.pulled + r.pushed, k as usize);
        assert!(p.trees_equal());
        let per_key = (r.bytes - idle.bytes) / u64::from(k);
        println!(
            "{k}\t{}\t{}\t{per_key}\t{}",
            r.bytes, r.round_trips, r.segments
        );
    }
}

#[tokio::test]
async fn trees_rebuilt_by_the_start_up_scan_equal_the_incremental_ones() {
    let dir = tempfile::tempdir().unwrap();
    let open = || -> Arc<LocalStore> {
        let engine = Arc::new(FjallEngine::open(dir.path(), 8 << 20).unwrap());
        open_store(engine, 1, 64, 3)
    };
    let store = open();
    let consistency = Consistency {
        read: crate::coordinator::Level::One,
        write: crate::coordinator::Level::One,
        sloppy: false,
    };
    for i in 0..3000u32 {
        let expiry = match i % 3 {
            0 => ExpiryUpdate::At(NOW_MS + 1000),
            _ => ExpiryUpdate::Clear,
        };
        let cmd = WriteCmd::Set {
            value: Bytes::from(vec![b'v'; (i % 50) as usize]),
            expiry,
            condition: SetCondition::Always,
        };
        store
            .write((i % 2) as usize, &key(i), cmd, consistency)
            .await
            .unwrap();
    }
    for i in (0..3000u32).step_by(7) {
        store
            .write((i % 2) as usize, &key(i), WriteCmd::Delete, consistency)
            .await
            .unwrap();
    }
    store.merge_stored(0, b"merged", value(5)).unwrap();
    let before = all_levels(&store);
    assert!(before.iter().any(|l| l[0] != 0));
    store.sync_to_disk().unwrap();
    drop(store);
    // NOTE: the committer task drops its engine handle asynchronously.
    let mut reopened = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(engine) = FjallEngine::open(dir.path(), 8 << 20) {
            reopened = Some(open_store(Arc::new(engine), 1, 64, 3));
            break;
        }
    }
    let reopened = reopened.expect("fjall reopens");
    assert_eq!(all_levels(&reopened), before);
}

fn three_node_cluster(n: u32) -> (Vec<Arc<LocalStore>>, MemNetwork, Layout) {
    let net = MemNetwork::new(Duration::from_secs(30), 1);
    let stores: Vec<_> = (1..=3)
        .map(|i| open_store(Arc::new(MemoryEngine::new()), i, 64, n))
        .collect();
    for (i, store) in stores.iter().enumerate() {
        net.register(
            &format!("n{}", i + 1),
            Arc::new(ReplicaHandler::new(store.clone())),
        );
    }
    let names = ["n1", "n2", "n3"];
    let layout = Layout::initial(64, names.into_iter().map(NodeSpec::new).collect()).unwrap();
    (stores, net, layout)
}

fn scheduler(
    store: &Arc<LocalStore>,
    net: &MemNetwork,
    layout: &Layout,
    down: &'static [&'static str],
    interval: Duration,
) -> Scheduler<MemTransport> {
    let layout = Arc::new(layout.clone());
    Scheduler::new(
        AaeConfig {
            node_name: "n1".into(),
            interval,
            max_partitions_per_sec: 10_000,
            tombstone_grace_ms: 86_400_000,
        },
        store.clone(),
        Arc::new(net.transport("n1")),
        Arc::new(move || layout.clone()),
        Arc::new(move |peer: &str| !down.contains(&peer)),
    )
}

/// The primaries of `key` (keyspace `default`, n = 2).
fn primaries(layout: &Layout, key: &[u8]) -> Vec<String> {
    let partition = crate::ring::partition_of("default", key, 64);
    let list = layout.preference_list(partition, 2).unwrap();
    list.primaries
        .iter()
        .map(|&i| layout.node(i).unwrap().name.clone())
        .collect()
}

#[tokio::test]
async fn a_round_repairs_the_other_primaries_and_skips_peers_that_are_down() {
    let (stores, net, layout) = three_node_cluster(2);
    let mine: Vec<Bytes> = (0..600)
        .map(key)
        .filter(|k| primaries(&layout, k).contains(&"n1".to_owned()))
        .collect();
    for k in &mine {
        stores[0].merge_stored(0, k, value(1000)).unwrap();
    }
    let (_stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let partial = scheduler(&stores[0], &net, &layout, &["n3"], Duration::from_secs(60));
    let report = partial.round(&mut stop_rx).await;
    assert!(report.skipped_down > 0 && report.failed == 0, "{report:?}");
    assert!(
        stores[2]
            .aae_trees()
            .get(0, 0)
            .unwrap()
            .levels()
            .iter()
            .all(|&h| h == 0)
    );

    let full = scheduler(&stores[0], &net, &layout, &[], Duration::from_secs(60));
    let report = full.round(&mut stop_rx).await;
    assert_eq!(report.skipped_down, 0);
    for k in &mine {
        let holders = primaries(&layout, k);
        for (i, store) in stores.iter().enumerate() {
            let held = store.read_stored(0, k).unwrap().is_some();
            let primary = holders.contains(&format!("n{}", i + 1));
            assert_eq!(held, primary, "{k:?} on n{}", i + 1);
        }
    }
    let log = full.repair_log().last_exchanges();
    assert!(!log.is_empty() && log.iter().all(|e| e.error.is_none()));
    assert!(log.iter().any(|e| e.report.pushed > 0 && e.peer != "n1"));
}

#[tokio::test]
async fn the_spawned_task_runs_rounds_until_shut_down() {
    let (stores, net, layout) = three_node_cluster(3);
    stores[0].merge_stored(0, b"k", value(1000)).unwrap();
    let handle = spawn_aae(scheduler(
        &stores[0],
        &net,
        &layout,
        &[],
        Duration::from_millis(100),
    ));
    let log = handle.repair_log();
    for _ in 0..200 {
        if log.rounds() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(log.rounds() >= 1);
    handle.shutdown().await;
    for store in &stores {
        assert_eq!(store.read_stored(0, b"k").unwrap(), Some(value(1000)));
    }
}

#[test]
fn jitter_stays_within_twenty_percent_and_varies() {
    let base = Duration::from_secs(60);
    let pauses: Vec<_> = (0..100)
        .map(|r| schedule::jittered(base, "n1", r))
        .collect();
    assert!(
        pauses
            .iter()
            .all(|p| *p >= base.mul_f64(0.8) && *p < base.mul_f64(1.2))
    );
    assert!(pauses.iter().any(|p| *p < base) && pauses.iter().any(|p| *p > base));
    assert_ne!(schedule::jittered(base, "n2", 0), pauses[0]);
}
