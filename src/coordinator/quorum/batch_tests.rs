//! Batched reads and writes (`get_many` and `write_many`, one `ReadMany` or
//! `WriteMany` per replica): every key reads and writes as a single read or
//! write of it would, whatever the replicas do.

use std::sync::atomic::Ordering::SeqCst;

use super::tests::{QUORUM, cluster, levels, set};
use super::*;
use crate::coordinator::{ExpiryUpdate, SetCondition};

fn keys(count: usize) -> Vec<Bytes> {
    (0..count).map(|i| Bytes::from(format!("k{i}"))).collect()
}

/// The values `get_many` gives, and the errors as text.
async fn many(
    store: &QuorumStore<super::tests::TestNet>,
    keys: &[Bytes],
    consistency: Consistency,
) -> Vec<Result<Option<Bytes>, String>> {
    store
        .get_many(0, keys, consistency)
        .await
        .into_iter()
        .map(|entry| entry.map(|e| e.map(|e| e.value)).map_err(|e| e.to_string()))
        .collect()
}

/// The values single `get`s give, key by key.
async fn singles(
    store: &QuorumStore<super::tests::TestNet>,
    keys: &[Bytes],
    consistency: Consistency,
) -> Vec<Result<Option<Bytes>, String>> {
    let mut out = Vec::new();
    for key in keys {
        let entry = store.get(0, key, consistency).await;
        out.push(entry.map(|e| e.map(|e| e.value)).map_err(|e| e.to_string()));
    }
    out
}

#[tokio::test]
async fn a_batched_read_gives_what_single_reads_give_through_every_node_and_level() {
    // NOTE: five nodes and n = 3: a coordinator holds some keys and not
    // others, and the remote replicas differ from key to key.
    let c = cluster(5);
    let keys = keys(60);
    for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 4 != 0) {
        let value = Bytes::from(format!("v{i}"));
        let cmd = WriteCmd::Set {
            value,
            expiry: ExpiryUpdate::Clear,
            condition: SetCondition::Always,
        };
        c.coordinators[i % 5]
            .write(0, key, cmd, QUORUM)
            .await
            .unwrap();
    }
    for level in [Level::One, Level::Quorum, Level::All] {
        for coordinator in &c.coordinators {
            let consistency = levels(level, level);
            let before = c.batches.sent.load(SeqCst);
            c.remote_reads.store(0, SeqCst);
            let got = many(coordinator, &keys, consistency).await;
            let sent = c.batches.sent.load(SeqCst) - before;
            assert_eq!(
                c.remote_reads.load(SeqCst),
                0,
                "no key was read alone at {level}"
            );
            assert!(sent <= 4, "one request per other node at most: {sent}");
            assert_eq!(got, singles(coordinator, &keys, consistency).await);
            for (i, value) in got.iter().enumerate() {
                let want = (i % 4 != 0).then(|| Bytes::from(format!("v{i}")));
                assert_eq!(value.as_ref().unwrap(), &want, "k{i} at {level}");
            }
        }
    }
}

#[tokio::test]
async fn a_batched_read_asks_the_next_primary_for_a_replica_that_fails() {
    let c = cluster(3);
    let keys = keys(20);
    for key in &keys {
        c.coordinators[0]
            .write(0, key, set(b"v"), QUORUM)
            .await
            .unwrap();
    }
    let v = || Ok(Some(Bytes::from_static(b"v")));
    // n2 unreachable (gossip has not noticed): every key asks n3 alone.
    c.down.lock().insert("n2".into());
    let got = many(&c.coordinators[0], &keys, QUORUM).await;
    assert!(got.iter().all(|value| *value == v()), "{got:?}");
    let all = levels(Level::All, Level::All);
    for value in many(&c.coordinators[0], &keys, all).await {
        let why = value.unwrap_err();
        assert!(why.contains("n2: unreachable"), "{why}");
    }
    // n2 and n3 down: quorum fails for every key, with the causes.
    c.down.lock().insert("n3".into());
    for value in many(&c.coordinators[0], &keys, QUORUM).await {
        let why = value.unwrap_err();
        assert!(why.contains("needed 2 replicas, 1 answered"), "{why}");
        assert!(why.contains("n2") && why.contains("n3"), "{why}");
    }
    // n2 back, holding a version too far ahead for one key: that key's
    // answer does not count and n3 (back too) is asked instead.
    c.down.lock().clear();
    c.plant_future_record(1, b"k7");
    let got = many(&c.coordinators[0], &keys, QUORUM).await;
    assert!(got.iter().all(|value| *value == v()), "{got:?}");
}

#[tokio::test]
async fn a_short_batched_answer_has_the_rest_asked_again_together() {
    let c = cluster(3);
    let keys = keys(10);
    for key in &keys {
        c.coordinators[0]
            .write(0, key, set(b"v"), QUORUM)
            .await
            .unwrap();
    }
    c.batches.cut_short.store(true, SeqCst);
    c.remote_reads.store(0, SeqCst);
    let before = c.batches.sent.load(SeqCst);
    let got = many(&c.coordinators[0], &keys, QUORUM).await;
    let sent = c.batches.sent.load(SeqCst) - before;
    assert!(
        got.iter()
            .all(|value| *value == Ok(Some(Bytes::from_static(b"v")))),
        "{got:?}"
    );
    assert_eq!(c.remote_reads.load(SeqCst), 0, "no key was read alone");
    assert_eq!(
        sent,
        keys.len(),
        "each answer carried one record; the rest were asked again together"
    );
}

#[tokio::test]
async fn a_batched_read_repairs_the_stale_replicas_it_read() {
    let all = levels(Level::All, Level::All);
    let new = || Ok(Some(Bytes::from_static(b"new")));
    // n2 misses every write; a batched read at `all` writes the newer
    // versions back to it before answering, whether n2 is the coordinator
    // (its own replica, read in place) or a replica asked in a batch.
    for reader in [1, 0] {
        let c = cluster(3);
        let keys = keys(10);
        c.down.lock().insert("n2".into());
        for key in &keys {
            c.coordinators[0]
                .write(0, key, set(b"new"), QUORUM)
                .await
                .unwrap();
        }
        c.down.lock().clear();
        let got = many(&c.coordinators[reader], &keys, all).await;
        assert!(got.iter().all(|value| *value == new()), "{got:?}");
        for key in &keys {
            assert_eq!(c.stored("n2", key), c.stored("n1", key), "n2 repaired");
        }
    }
}

#[tokio::test]
async fn a_replica_answers_a_batch_in_order_within_one_frame() {
    let c = cluster(3);
    let big = Bytes::from(vec![b'x'; crate::net::MAX_BATCH_BYTES / 2 + 1]);
    for key in ["a", "b", "c"] {
        let cmd = WriteCmd::Set {
            value: big.clone(),
            expiry: ExpiryUpdate::Clear,
            condition: SetCondition::Always,
        };
        c.coordinators[0]
            .write(0, key.as_bytes(), cmd, QUORUM)
            .await
            .unwrap();
    }
    let ask = |keys: &[&'static str]| Request::ReadMany {
        keyspace: "default".into(),
        keys: keys
            .iter()
            .map(|k| Bytes::from_static(k.as_bytes()))
            .collect(),
    };
    let handler = &c.replicas["n2"];
    let Response::Records(records) = handler.handle("n1", ask(&["zz", "a", "b", "c"])).await else {
        panic!("not records");
    };
    assert_eq!(records.len(), 2, "a missing key, then one big record fits");
    assert!(records[0].is_none());
    let first = Record::decode(records[1].clone().unwrap()).unwrap();
    assert_eq!(first.live_value(0).unwrap(), &big);
    let Response::Records(records) = handler.handle("n1", ask(&["c", "b"])).await else {
        panic!("not records");
    };
    assert_eq!(records.len(), 1, "a first record always goes, alone if big");
    let unknown = Request::ReadMany {
        keyspace: "nope".into(),
        keys: vec![Bytes::from_static(b"a")],
    };
    let answer = handler.handle("n1", unknown).await;
    assert!(matches!(answer, Response::Error(why) if why.contains("unknown keyspace")));
}

fn set_of(value: &str) -> WriteCmd {
    WriteCmd::Set {
        value: Bytes::from(value.to_owned()),
        expiry: ExpiryUpdate::Clear,
        condition: SetCondition::Always,
    }
}

/// `write_many`'s outcomes: applied, or the error as text.
async fn write_many(
    store: &QuorumStore<super::tests::TestNet>,
    writes: Vec<(Bytes, WriteCmd)>,
    consistency: Consistency,
) -> Vec<Result<bool, String>> {
    store
        .write_many(0, writes, consistency)
        .await
        .into_iter()
        .map(|outcome| outcome.map(|o| o.applied).map_err(|e| e.to_string()))
        .collect()
}

#[tokio::test]
async fn batched_writes_reach_every_replica_and_the_last_write_of_a_key_wins() {
    let c = cluster(5);
    let keys = keys(40);
    for (round, coordinator) in c.coordinators.iter().enumerate() {
        // NOTE: every key twice in one batch: the later value must win.
        let mut writes: Vec<(Bytes, WriteCmd)> = Vec::new();
        for key in &keys {
            writes.push((key.clone(), set_of("stale")));
        }
        for key in &keys {
            writes.push((key.clone(), set_of(&format!("r{round}"))));
        }
        let outcomes = write_many(coordinator, writes, QUORUM).await;
        assert!(outcomes.iter().all(|o| *o == Ok(true)), "{outcomes:?}");
        c.settle().await;
        let all = levels(Level::All, Level::All);
        for reader in &c.coordinators {
            let got = many(reader, &keys, all).await;
            let want = Ok(Some(Bytes::from(format!("r{round}"))));
            assert!(
                got.iter().all(|value| *value == want),
                "round {round}: {got:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_batched_write_hints_an_unreachable_primary_and_fails_like_a_single_one() {
    let c = cluster(3);
    let keys = keys(12);
    let writes = |value: &str| -> Vec<(Bytes, WriteCmd)> {
        keys.iter().map(|k| (k.clone(), set_of(value))).collect()
    };
    c.down.lock().insert("n3".into());
    let outcomes = write_many(&c.coordinators[0], writes("v"), QUORUM).await;
    assert!(outcomes.iter().all(|o| *o == Ok(true)), "{outcomes:?}");
    c.settle().await;
    assert_eq!(
        c.hints[0].queues()["n3"].hints,
        keys.len() as u64,
        "the coordinator keeps a hint of every write for n3"
    );
    // At `all` each write fails, saying it may have been applied.
    let all = levels(Level::All, Level::All);
    for outcome in write_many(&c.coordinators[0], writes("w"), all).await {
        let why = outcome.unwrap_err();
        assert!(why.contains("needed 3 replicas, 2 answered"), "{why}");
        assert!(why.contains("n3: unreachable"), "{why}");
        assert!(why.contains("may have been applied"), "{why}");
    }
    // Two primaries down: the quorum fails for every write.
    c.down.lock().insert("n2".into());
    for outcome in write_many(&c.coordinators[0], writes("x"), QUORUM).await {
        let why = outcome.unwrap_err();
        assert!(why.contains("needed 2 replicas, 1 answered"), "{why}");
    }
    // Back: the hints deliver the newest value to n3.
    c.down.lock().clear();
    let net = c.net_from(0);
    c.hints[0].deliver("n3", &net, 1000).await.unwrap();
    for key in &keys {
        assert_eq!(c.stored("n3", key), c.stored("n1", key));
        assert_eq!(c.stored("n3", key).unwrap().live_value(0).unwrap(), "x");
    }
}

#[tokio::test]
async fn a_replica_merges_each_write_of_a_batch_and_refuses_the_bad_ones() {
    let c = cluster(3);
    let record = |ms: u64, value: &'static [u8]| {
        let version = Version {
            timestamp: crate::version::Timestamp::from_ms(ms),
            node: 7,
        };
        Record::value(version, Bytes::from_static(value), None).encode()
    };
    let request = Request::WriteMany {
        keyspace: "default".into(),
        writes: vec![
            (Bytes::from_static(b"a"), record(1_000_000, b"1")),
            (
                Bytes::from_static(b"b"),
                Bytes::from_static(b"not a record"),
            ),
            (Bytes::from_static(b"a"), record(1_000_001, b"2")),
            (
                Bytes::from_static(b"c"),
                record(1_000_000 + 36_000_000, b"future"),
            ),
        ],
    };
    let handler = &c.replicas["n2"];
    let Response::Outcomes(outcomes) = handler.handle("n1", request).await else {
        panic!("not outcomes");
    };
    assert_eq!(outcomes.len(), 4);
    assert!(
        outcomes[0].is_none() && outcomes[2].is_none(),
        "{outcomes:?}"
    );
    assert!(
        outcomes[1].is_some() && outcomes[3].is_some(),
        "{outcomes:?}"
    );
    assert_eq!(c.stored("n2", b"a").unwrap().live_value(0).unwrap(), "2");
    assert_eq!(c.stored("n2", b"c"), None, "too far ahead of the clock");
    let unknown = Request::WriteMany {
        keyspace: "nope".into(),
        writes: vec![(Bytes::from_static(b"a"), record(1_000_002, b"3"))],
    };
    let answer = handler.handle("n1", unknown).await;
    assert!(matches!(answer, Response::Error(why) if why.contains("unknown keyspace")));
}

#[tokio::test]
async fn a_refused_batched_write_gets_no_hint() {
    let c = cluster(3);
    let keys = keys(8);
    let writes: Vec<(Bytes, WriteCmd)> = keys.iter().map(|k| (k.clone(), set_of("v"))).collect();
    c.batches.refusing.lock().insert("n3".into());
    let outcomes = write_many(&c.coordinators[0], writes.clone(), QUORUM).await;
    assert!(outcomes.iter().all(|o| *o == Ok(true)), "{outcomes:?}");
    c.settle().await;
    assert!(
        c.hints[0].queues().get("n3").is_none_or(|q| q.hints == 0),
        "a refusal is not hinted"
    );
    // Both others refuse: the quorum fails (the coordinator's own copy is
    // applied, and said so) and still nothing is hinted.
    c.batches.refusing.lock().insert("n2".into());
    for outcome in write_many(&c.coordinators[0], writes, QUORUM).await {
        let why = outcome.unwrap_err();
        assert!(why.contains("n2: refused by the test"), "{why}");
        assert!(why.contains("n3: refused by the test"), "{why}");
    }
    c.settle().await;
    assert_eq!(c.hints[0].queued(), 0, "a refusal is not hinted");
}

#[tokio::test]
async fn a_key_asked_twice_in_a_batch_reads_the_same_twice() {
    let c = cluster(3);
    c.coordinators[0]
        .write(0, b"k", set(b"v"), QUORUM)
        .await
        .unwrap();
    let keys = vec![
        Bytes::from_static(b"k"),
        Bytes::from_static(b"x"),
        Bytes::from_static(b"k"),
    ];
    let got = many(&c.coordinators[1], &keys, QUORUM).await;
    let v = Ok(Some(Bytes::from_static(b"v")));
    assert_eq!(got, vec![v.clone(), Ok(None), v]);
}

#[tokio::test]
async fn sloppy_batched_writes_of_one_key_end_with_the_last() {
    let c = cluster(3);
    let sloppy = Consistency {
        sloppy: true,
        ..QUORUM
    };
    let writes = (0..20)
        .map(|i| (Bytes::from_static(b"k"), set_of(&format!("v{i}"))))
        .collect();
    let outcomes = write_many(&c.coordinators[0], writes, sloppy).await;
    assert!(outcomes.iter().all(|o| *o == Ok(true)), "{outcomes:?}");
    c.settle().await;
    let all = levels(Level::All, Level::All);
    let got = c.coordinators[2].get(0, b"k", all).await.unwrap();
    assert_eq!(got.unwrap().value, "v19");
}

#[test]
fn batched_requests_are_bounded_in_items_and_bytes_and_never_empty() {
    use crate::net::{MAX_BATCH_BYTES, MAX_BATCH_ITEMS};
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    let mut by_node = ByNode::default();
    for i in 0..(MAX_BATCH_ITEMS + 3) {
        by_node.add(&a, i);
    }
    by_node.add(&b, 0);
    let sizes: Vec<usize> = by_node
        .requests(|_| 1)
        .iter()
        .map(|(_, m)| m.len())
        .collect();
    assert_eq!(sizes, vec![MAX_BATCH_ITEMS, 3, 1]);

    let size = |i: usize| {
        [
            MAX_BATCH_BYTES / 2,
            MAX_BATCH_BYTES / 2,
            MAX_BATCH_BYTES * 2,
            10,
            10,
        ][i]
    };
    let mut by_node = ByNode::default();
    for i in 0..5 {
        by_node.add(&a, i);
    }
    let requests: Vec<Vec<usize>> = by_node.requests(size).into_iter().map(|(_, m)| m).collect();
    assert_eq!(requests, vec![vec![0, 1], vec![2], vec![3, 4]]);
}

#[tokio::test]
async fn a_batched_write_failing_after_its_answer_is_hinted_in_the_background() {
    let c = cluster(3);
    let keys = keys(16);
    let writes: Vec<(Bytes, WriteCmd)> = keys.iter().map(|k| (k.clone(), set_of("v"))).collect();
    c.batches.failing_late.lock().insert("n3".into());
    let outcomes = write_many(&c.coordinators[0], writes, QUORUM).await;
    assert!(outcomes.iter().all(|o| *o == Ok(true)), "{outcomes:?}");
    assert_eq!(c.hints[0].queued(), 0, "answered before n3 failed");
    for _ in 0..100 {
        if c.hints[0].queued() == keys.len() as u64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        c.hints[0].queued(),
        keys.len() as u64,
        "a hint per write, kept by the background finish"
    );
}
