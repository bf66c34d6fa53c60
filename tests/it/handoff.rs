//! Hinted handoff across real processes: writes a dead primary missed are
//! kept as durable hints on the coordinator (they survive a kill -9 of the
//! coordinator itself) and delivered once the primary is back, which
//! `KV.INSPECT` shows replica by replica.

use std::time::{Duration, Instant};

use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::cluster::TestCluster;
use std::process::Command;

use crate::support::{http_get, map_pairs, ok, run_bounded};

/// One replica's state as `KV.INSPECT` reports it: node, state, digest and
/// timestamp (`None` where the reply has none).
pub(crate) type ReplicaState = (String, String, Option<String>, Option<String>);

/// What each primary of `key` holds, in preference order.
pub(crate) async fn inspect(con: &mut MultiplexedConnection, key: &str) -> Vec<ReplicaState> {
    let reply: Value = ok(con, &["KV.INSPECT", key]).await;
    let Value::Array(replicas) = reply else {
        panic!("KV.INSPECT answered {reply:?}");
    };
    let text = |v: &Value| match v {
        Value::Nil => None,
        other => Some(redis::from_redis_value::<String>(other.clone()).expect("text field")),
    };
    replicas
        .into_iter()
        .map(|replica| {
            let pairs = map_pairs(replica);
            let get = |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| text(v))
            };
            (
                get("node").expect("node field"),
                get("state").expect("state field"),
                get("digest"),
                get("timestamp"),
            )
        })
        .collect()
}

/// True when every replica holds the same record (state, digest, version).
pub(crate) fn converged(replicas: &[ReplicaState]) -> bool {
    replicas
        .windows(2)
        .all(|w| (&w[0].1, &w[0].2, &w[0].3) == (&w[1].1, &w[1].2, &w[1].3))
        && replicas.iter().all(|r| r.1 != "error")
}

/// Waits (bounded by `limit`) until every key in `keys` has converged as
/// seen from `con`; returns how long it took, or the first key that did not.
pub(crate) async fn wait_converged(
    con: &mut MultiplexedConnection,
    keys: &[String],
    limit: Duration,
) -> Result<Duration, (String, Vec<ReplicaState>)> {
    let start = Instant::now();
    loop {
        let mut pending = None;
        for key in keys {
            let replicas = inspect(con, key).await;
            if !converged(&replicas) {
                pending = Some((key.clone(), replicas));
                break;
            }
        }
        match pending {
            None => return Ok(start.elapsed()),
            Some(p) if start.elapsed() > limit => return Err(p),
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_a_dead_primary_survive_the_coordinators_crash_and_are_delivered() {
    let mut cluster = TestCluster::start_with_engine(3, "fjall");
    cluster.kill(2);
    let keys: Vec<String> = (0..50).map(|i| format!("hinted-{i}")).collect();
    {
        let mut c = cluster.node(0).conn().await;
        for key in &keys {
            assert_eq!(ok::<String>(&mut c, &["SET", key, key]).await, "OK");
        }
        let replicas = inspect(&mut c, &keys[0]).await;
        let node3 = replicas
            .iter()
            .find(|r| r.0 == "node3")
            .expect("node3 holds a replica");
        assert_eq!(node3.1, "error", "node3 is down: {replicas:?}");
        let (_, _, metrics) = http_get(cluster.node(0).http_addr, "/metrics").await;
        assert!(
            metric(&metrics, "ringkv_hints_queued ") >= 50.0,
            "hints queued on the coordinator:\n{metrics}"
        );
        let (status, _, body) = http_get(cluster.node(0).http_addr, "/v1/repair").await;
        assert_eq!(status, 200, "{body}");
        let repair: serde_json::Value = serde_json::from_str(&body).expect("/v1/repair is JSON");
        assert_eq!(repair["node"], "node1", "{repair}");
        assert!(
            repair["hints"]["node3"]["hints"].as_u64() >= Some(50),
            "{repair}"
        );
        assert!(
            repair["anti_entropy"].is_object(),
            "on by default: {repair}"
        );
        let output = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_ringkv")).args([
                "cluster",
                "repair-status",
                "--node",
                &cluster.node(0).http_addr.to_string(),
            ]),
            Duration::from_secs(10),
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let errors = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{text}{errors}");
        assert!(
            text.contains("HINTS FOR") && text.contains("node3"),
            "{text}"
        );
        assert!(text.contains("anti-entropy: every 60000 ms"), "{text}");
    }
    // The coordinator dies too: its hints must survive in its data dir.
    cluster.kill(0);
    cluster.restart(0);
    cluster.restart(2);
    let mut c = cluster.node(1).conn().await;
    let took = wait_converged(&mut c, &keys, Duration::from_secs(20))
        .await
        .unwrap_or_else(|(key, replicas)| panic!("{key} did not converge: {replicas:?}"));
    eprintln!("hints delivered, all replicas converged {took:?} after restart");
    let replicas = inspect(&mut c, &keys[7]).await;
    assert!(replicas.iter().all(|r| r.1 == "value"), "{replicas:?}");
    let (_, _, metrics) = http_get(cluster.node(0).http_addr, "/metrics").await;
    assert_eq!(metric(&metrics, "ringkv_hints_queued "), 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_does_not_come_back_when_a_replica_that_missed_the_delete_returns() {
    let mut cluster = TestCluster::start_with_engine(3, "fjall");
    let keys: Vec<String> = (0..20).map(|i| format!("deleted-{i}")).collect();
    {
        let mut c = cluster.node(0).conn().await;
        for key in &keys {
            assert_eq!(ok::<String>(&mut c, &["SET", key, "old"]).await, "OK");
        }
    }
    // node3 holds every key, then misses their deletes.
    cluster.kill(2);
    {
        let mut c = cluster.node(0).conn().await;
        for key in &keys {
            assert_eq!(ok::<i64>(&mut c, &["DEL", key]).await, 1);
        }
    }
    cluster.restart(2);
    let mut c1 = cluster.node(1).conn().await;
    let mut c3 = cluster.node(2).conn().await;
    // Quorum reads never see the value again, through any node, even
    // before the returning replica was repaired.
    for key in &keys {
        for c in [&mut c1, &mut c3] {
            let got: Option<String> = ok(c, &["GET", key]).await;
            assert_eq!(got, None, "{key} came back at quorum");
        }
    }
    wait_converged(&mut c1, &keys, Duration::from_secs(20))
        .await
        .unwrap_or_else(|(key, replicas)| panic!("{key} did not converge: {replicas:?}"));
    for key in &keys {
        let replicas = inspect(&mut c3, key).await;
        assert!(replicas.iter().all(|r| r.1 == "tombstone"), "{replicas:?}");
        let got: Option<String> = ok(&mut c3, &["KV.GET", key, "R", "one"]).await;
        assert_eq!(got, None, "{key} came back on the returning replica");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_refills_a_wiped_replica_without_any_read() {
    let mut cluster = TestCluster::start_with_flags(3, "fjall", &["--aae-interval-ms", "1000"]);
    let keys: Vec<String> = (0..300).map(|i| format!("aae-{i}")).collect();
    {
        let mut c = cluster.node(0).conn().await;
        for key in &keys {
            let put: String = ok(&mut c, &["KV.PUT", key, key, "W", "all"]).await;
            assert_eq!(put, "OK");
        }
        // A delete, too: the refilled replica must learn the tombstone.
        assert_eq!(
            ok::<i64>(&mut c, &["KV.DEL", &keys[0], "W", "all"]).await,
            1
        );
    }
    // Every write reached every replica, so no hint is left for node3:
    // after the wipe only anti-entropy can refill it.
    cluster.kill(2);
    cluster.wipe(2);
    cluster.restart(2);
    let mut c = cluster.node(0).conn().await;
    let took = wait_converged(&mut c, &keys, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(key, replicas)| panic!("{key} was not refilled: {replicas:?}"));
    eprintln!("anti-entropy refilled {} keys in {took:?}", keys.len());
    let replicas = inspect(&mut c, &keys[0]).await;
    assert!(replicas.iter().all(|r| r.1 == "tombstone"), "{replicas:?}");
    let (_, _, body) = http_get(cluster.node(2).http_addr, "/v1/repair").await;
    let repair: serde_json::Value = serde_json::from_str(&body).expect("/v1/repair is JSON");
    let exchanges = repair["anti_entropy"]["exchanges"]
        .as_array()
        .expect("exchanges listed");
    let pulled: u64 = exchanges.iter().filter_map(|e| e["pulled"].as_u64()).sum();
    let (_, _, others) = http_get(cluster.node(0).http_addr, "/v1/repair").await;
    let others: serde_json::Value = serde_json::from_str(&others).expect("JSON");
    let pushed: u64 = others["anti_entropy"]["exchanges"]
        .as_array()
        .expect("exchanges listed")
        .iter()
        .filter_map(|e| e["pushed"].as_u64())
        .sum();
    assert!(
        pulled + pushed > 0,
        "the repairs show in /v1/repair: {repair}"
    );
}
