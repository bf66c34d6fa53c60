//! Pipelines against a cluster node: independent commands run concurrently,
//! yet every reply is what running them one by one would give.

use redis::Value;

use crate::support::Reply;

use crate::cluster::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_keep_their_order_semantics() {
    let cluster = TestCluster::start_with_engine(3, "memory");
    let mut c = cluster.node(0).conn().await;
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg("a")
        .arg("1")
        .cmd("SET")
        .arg("a")
        .arg("2")
        .cmd("GET")
        .arg("a")
        .cmd("GET")
        .arg("b")
        .cmd("SET")
        .arg("b")
        .arg("x")
        .cmd("GET")
        .arg("b")
        .cmd("KV.PUT")
        .arg("c")
        .arg("y")
        .arg("W")
        .arg("all")
        .cmd("SET")
        .arg("a")
        .arg("3")
        .arg("NX")
        .cmd("KV.GET")
        .arg("c")
        .arg("R")
        .arg("all")
        .cmd("DEL")
        .arg("a")
        .cmd("GET")
        .arg("a");
    let replies: Vec<Value> = pipe.query_async(&mut c).await.expect("pipeline");
    let ok = || Value::Okay;
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    assert_eq!(
        replies,
        vec![
            ok(),
            ok(),
            bulk("2"),
            Value::Nil,
            ok(),
            bulk("x"),
            ok(),
            Value::Nil,
            bulk("y"),
            Value::Int(1),
            Value::Nil,
        ]
    );
    // Many writes of one key in one pipeline: the last one wins everywhere.
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg("hot").arg(i.to_string()).ignore();
    }
    pipe.cmd("KV.GET").arg("hot").arg("R").arg("all");
    let (last,): (String,) = pipe.query_async(&mut c).await.expect("pipeline");
    assert_eq!(last, "199");
    for node in 1..3 {
        let mut other = cluster.node(node).conn().await;
        let got: String = redis::cmd("KV.GET")
            .arg("hot")
            .arg("R")
            .arg("all")
            .query_async(&mut other)
            .await
            .unwrap();
        assert_eq!(got, "199", "through node{}", node + 1);
    }
}

/// Level-one reads of local keys answer at once while reads at `all` wait
/// on the network; the replies still come back in request order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_keep_request_order_when_some_commands_answer_at_once() {
    let cluster = TestCluster::start_with_engine(3, "memory");
    let mut c = cluster.node(0).conn().await;
    let mut pipe = redis::pipe();
    for i in 0..40 {
        pipe.cmd("KV.PUT")
            .arg(format!("k{i}"))
            .arg(format!("v{i}"))
            .arg("W")
            .arg("all")
            .ignore();
    }
    let () = pipe.query_async(&mut c).await.expect("writes");
    let mut pipe = redis::pipe();
    for i in 0..40 {
        let level = if i % 3 == 0 { "all" } else { "one" };
        pipe.cmd("KV.GET").arg(format!("k{i}")).arg("R").arg(level);
    }
    let replies: Vec<String> = pipe.query_async(&mut c).await.expect("reads");
    let expected: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
    assert_eq!(replies, expected);
}

/// A protocol error at the end of a pipeline is answered after the replies
/// to the commands before it, as Redis does, then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_error_after_a_pipelined_run_comes_after_its_replies() {
    let cluster = TestCluster::start_with_engine(3, "memory");
    let mut raw = crate::support::RawConn::connect(cluster.node(0).resp_addr).await;
    let mut input = crate::support::encode_command(&[b"SET", b"a", b"1"]);
    input.extend(crate::support::encode_command(&[b"GET", b"a"]));
    input.extend(crate::support::encode_command(&[b"GET", b"b"]));
    input.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$-5\r\n");
    raw.send(&input).await;
    assert_eq!(raw.read_reply().await, Reply::Simple("OK".into()));
    assert_eq!(raw.read_reply().await, Reply::bulk("1"));
    assert_eq!(raw.read_reply().await, Reply::Bulk(None));
    assert_eq!(
        raw.read_reply().await,
        Reply::Error("ERR Protocol error: invalid bulk length".into())
    );
    raw.expect_closed().await;
}

/// A pipelined run of GETs is read as one batch per replica; every reply is
/// still its own key's, in request order, through any node and with a node
/// killed, and each GET fails on its own once the quorum is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_run_of_gets_answers_every_key_in_order() {
    let mut cluster = TestCluster::start_with_engine(3, "memory");
    let mut c = cluster.node(0).conn().await;
    let mut pipe = redis::pipe();
    for i in (0..300).filter(|i| i % 5 != 0) {
        pipe.cmd("SET")
            .arg(format!("k{i}"))
            .arg(format!("v{i}"))
            .ignore();
    }
    let () = pipe.query_async(&mut c).await.expect("writes");
    // NOTE: 300 GETs: more than one run (at most 256 commands each).
    let gets = || {
        let mut pipe = redis::pipe();
        for i in 0..300 {
            pipe.cmd("GET").arg(format!("k{i}"));
        }
        pipe
    };
    let expected: Vec<Value> = (0..300)
        .map(|i| match i % 5 {
            0 => Value::Nil,
            _ => Value::BulkString(format!("v{i}").into_bytes()),
        })
        .collect();
    for node in 0..3 {
        let mut conn = cluster.node(node).conn().await;
        let got: Vec<Value> = gets().query_async(&mut conn).await.expect("reads");
        assert_eq!(got, expected, "through node{}", node + 1);
    }
    let mut raw = crate::support::RawConn::connect(cluster.node(0).resp_addr).await;
    let mut input = crate::support::encode_command(&[b"GET", b"k1"]);
    input.extend(crate::support::encode_command(&[b"GET", b""]));
    input.extend(crate::support::encode_command(&[b"GET", b"k2"]));
    raw.send(&input).await;
    assert_eq!(raw.read_reply().await, Reply::bulk("v1"));
    assert_eq!(
        raw.read_reply().await,
        Reply::Error("ERR empty keys are not allowed".into())
    );
    assert_eq!(raw.read_reply().await, Reply::bulk("v2"));

    // A run of SETs with a bad one in the middle: it fails alone.
    let mut input = crate::support::encode_command(&[b"SET", b"s1", b"a"]);
    input.extend(crate::support::encode_command(&[b"SET", b"", b"b"]));
    input.extend(crate::support::encode_command(&[b"SET", b"s2", b"c"]));
    input.extend(crate::support::encode_command(&[b"GET", b"s2"]));
    raw.send(&input).await;
    assert_eq!(raw.read_reply().await, Reply::Simple("OK".into()));
    assert_eq!(
        raw.read_reply().await,
        Reply::Error("ERR empty keys are not allowed".into())
    );
    assert_eq!(raw.read_reply().await, Reply::Simple("OK".into()));
    assert_eq!(raw.read_reply().await, Reply::bulk("c"));

    cluster.kill(2);
    let got: Vec<Value> = gets().query_async(&mut c).await.expect("reads");
    assert_eq!(got, expected, "with node3 killed");

    cluster.kill(1);
    let mut input = Vec::new();
    for key in ["k1", "k2", "k3"] {
        input.extend(crate::support::encode_command(&[b"GET", key.as_bytes()]));
    }
    raw.send(&input).await;
    for _ in 0..3 {
        match raw.read_reply().await {
            Reply::Error(why) => assert!(why.starts_with("UNAVAILABLE"), "{why}"),
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        }
    }
}

/// A pipelined run of SETs is written as one batch per replica: with a
/// node killed every write is acknowledged and hinted, and once the node
/// returns the hints bring it every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_run_of_sets_is_hinted_for_a_killed_node_which_converges() {
    let mut cluster = TestCluster::start_with_engine(3, "fjall");
    cluster.kill(2);
    let keys: Vec<String> = (0..300).map(|i| format!("batched-{i}")).collect();
    let mut c = cluster.node(0).conn().await;
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("SET").arg(key).arg(format!("{key}-v"));
    }
    let replies: Vec<Value> = pipe.query_async(&mut c).await.expect("writes");
    assert!(replies.iter().all(|r| *r == Value::Okay), "{replies:?}");
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut c)
        .await
        .expect("info");
    let queued: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("hints_queued:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("hints_queued in INFO cluster");
    assert!(queued >= 300, "a hint per write for node3: {info}");
    cluster.restart(2);
    let took = crate::handoff::wait_converged(&mut c, &keys, std::time::Duration::from_secs(30))
        .await
        .unwrap_or_else(|(key, replicas)| panic!("{key} did not converge: {replicas:?}"));
    eprintln!("every batched write reached node3 {took:?} after its restart");
    let mut node3 = cluster.node(2).conn().await;
    let () = redis::cmd("CONSISTENCY")
        .arg("READ")
        .arg("one")
        .query_async(&mut node3)
        .await
        .expect("consistency");
    let got: Vec<String> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut node3)
        .await
        .expect("mget");
    let want: Vec<String> = keys.iter().map(|k| format!("{k}-v")).collect();
    assert_eq!(got, want, "node3's own replica holds every key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_commands_fan_out_with_redis_semantics() {
    let cluster = TestCluster::start_with_engine(3, "memory");
    let mut c = cluster.node(1).conn().await;
    let ok: String = redis::cmd("MSET")
        .arg(&["a", "1", "b", "2", "a", "3"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["a", "b", "zz", "a"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Some("3".into()), Some("2".into()), None, Some("3".into())]
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&["a", "a", "zz"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 2, "a repeated key counts twice in EXISTS");
    let deleted: i64 = redis::cmd("DEL")
        .arg(&["a", "a", "b", "zz"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(deleted, 2, "a repeated key is deleted once");
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["a", "b"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got, vec![None, None]);
}
