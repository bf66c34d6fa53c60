//! Crash recovery with the real binary and the fjall engine: what a server
//! acknowledged is there after `kill -9` and a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::support::{ServerProcess, ok, run_bounded};

fn fjall_args<'a>(dir: &'a str, fsync: &'a str) -> [&'a str; 6] {
    ["--engine", "fjall", "--fsync", fsync, "--data-dir", dir]
}

/// Writes `key{i}` = `value{i}` for `range`, one acknowledged SET at a time.
async fn write_keys(con: &mut MultiplexedConnection, range: std::ops::Range<usize>) {
    for i in range {
        let reply: String = ok(con, &["SET", &format!("key{i}"), &format!("value{i}")]).await;
        assert_eq!(reply, "OK");
    }
}

/// Asserts every `key{i}` for `range` reads back, in batches of MGET.
async fn assert_keys(con: &mut MultiplexedConnection, range: std::ops::Range<usize>) {
    let indices: Vec<usize> = range.collect();
    for batch in indices.chunks(200) {
        let mut cmd = redis::cmd("MGET");
        for i in batch {
            cmd.arg(format!("key{i}"));
        }
        let values: Vec<Option<String>> = cmd.query_async(con).await.expect("MGET");
        for (i, value) in batch.iter().zip(values) {
            assert_eq!(value, Some(format!("value{i}")), "acknowledged key{i} lost");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_always_keeps_every_acknowledged_write_across_kill_9() {
    const N: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let server = ServerProcess::start(&fjall_args(dir_arg, "always"));
    let mut con = server.conn().await;
    write_keys(&mut con, 0..N).await;
    drop(con);
    server.kill9();

    let server = ServerProcess::start(&fjall_args(dir_arg, "always"));
    let mut con = server.conn().await;
    assert_keys(&mut con, 0..N).await;
    assert_eq!(ok::<i64>(&mut con, &["DBSIZE"]).await, N as i64);
    // And the restarted server takes writes as usual.
    ok::<()>(&mut con, &["SET", "after", "restart"]).await;
    assert_eq!(ok::<String>(&mut con, &["GET", "after"]).await, "restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let server = ServerProcess::start(&fjall_args(dir_arg, "always"));
    // Four writers; each records how far its acknowledgements reached.
    let mut acked = Vec::new();
    let mut writers = Vec::new();
    for w in 0..4 {
        let count = Arc::new(AtomicUsize::new(0));
        acked.push(count.clone());
        let mut con = server.conn().await;
        writers.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let key = format!("w{w}-{i}");
                let set: redis::RedisResult<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(i)
                    .query_async(&mut con)
                    .await;
                if set.is_err() {
                    return;
                }
                count.store(i + 1, Ordering::SeqCst);
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum::<usize>()
        < 400
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writers made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .expect("writer did not notice the dead server")
            .unwrap();
    }

    let server = ServerProcess::start(&fjall_args(dir_arg, "always"));
    let mut con = server.conn().await;
    let mut total = 0;
    for (w, count) in acked.iter().enumerate() {
        let count = count.load(Ordering::SeqCst);
        total += count;
        for i in 0..count {
            let got: Option<i64> = ok(&mut con, &["GET", &format!("w{w}-{i}")]).await;
            assert_eq!(got, Some(i as i64), "acknowledged w{w}-{i} lost");
        }
    }
    // Writes in flight at the kill may or may not have landed; no more than
    // one per writer.
    let dbsize: i64 = ok(&mut con, &["DBSIZE"]).await;
    assert!(
        (total as i64..=total as i64 + 4).contains(&dbsize),
        "dbsize {dbsize}, acknowledged {total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_everysec_keeps_writes_older_than_a_second_across_kill_9() {
    const N: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let server = ServerProcess::start(&fjall_args(dir_arg, "everysec"));
    let mut con = server.conn().await;
    write_keys(&mut con, 0..N).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();

    let server = ServerProcess::start(&fjall_args(dir_arg, "everysec"));
    let mut con = server.conn().await;
    assert_keys(&mut con, 0..N).await;
    assert_eq!(ok::<i64>(&mut con, &["DBSIZE"]).await, N as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_keeps_the_data() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    // fsync "no": nothing is synced before the shutdown flush.
    let server = ServerProcess::start(&fjall_args(dir_arg, "no"));
    let mut con = server.conn().await;
    write_keys(&mut con, 0..N).await;
    ok::<()>(&mut con, &["DEL", "key0"]).await;
    drop(con);
    let (server, status) = tokio::task::spawn_blocking(move || {
        let mut server = server;
        let status = server.terminate();
        (server, status)
    })
    .await
    .unwrap();
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        server.stderr()
    );
    assert!(
        server.wait_for_log("shutdown complete"),
        "stderr:\n{}",
        server.stderr()
    );
    drop(server);

    let server = ServerProcess::start(&fjall_args(dir_arg, "no"));
    let mut con = server.conn().await;
    assert_keys(&mut con, 1..N).await;
    assert_eq!(
        ok::<Option<String>>(&mut con, &["GET", "key0"]).await,
        None,
        "the delete survived too"
    );
    assert_eq!(ok::<i64>(&mut con, &["DBSIZE"]).await, N as i64 - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let server = ServerProcess::start(&fjall_args(dir_arg, "always"));
    let mut con = server.conn().await;
    ok::<()>(&mut con, &["SET", "long", "v", "EX", "1000"]).await;
    ok::<()>(&mut con, &["SET", "short", "v", "PX", "100"]).await;
    ok::<()>(&mut con, &["SET", "forever", "v"]).await;
    let expiretime: i64 = ok(&mut con, &["PEXPIRETIME", "long"]).await;
    server.kill9();

    let server = ServerProcess::start(&fjall_args(dir_arg, "always"));
    let mut con = server.conn().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ok::<i64>(&mut con, &["PEXPIRETIME", "long"]).await,
        expiretime
    );
    let ttl: i64 = ok(&mut con, &["TTL", "long"]).await;
    assert!((950..=1000).contains(&ttl), "ttl after restart {ttl}");
    assert_eq!(ok::<i64>(&mut con, &["TTL", "forever"]).await, -1);
    assert_eq!(
        ok::<Option<String>>(&mut con, &["GET", "short"]).await,
        None
    );
    assert_eq!(ok::<i64>(&mut con, &["EXISTS", "short"]).await, 0);
    assert_eq!(ok::<i64>(&mut con, &["TTL", "short"]).await, -2);
}

/// A cluster coordinator writes its own replica in place and makes it
/// durable with the batch's commit, before `+OK`: with the other two
/// replicas down, a write at `W one` lives only there, and must survive
/// kill -9 of the coordinator under `fsync = always`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_write_acknowledged_by_the_coordinators_own_replica_survives_kill_9() {
    let mut cluster =
        crate::cluster::TestCluster::start_with_flags(3, "fjall", &["--fsync", "always"]);
    cluster.kill(1);
    cluster.kill(2);
    let mut con = cluster.node(0).conn().await;
    for i in 0..50 {
        let key = format!("own-{i}");
        let value = format!("v{i}");
        let reply: String = ok(&mut con, &["KV.PUT", &key, &value, "W", "one"]).await;
        assert_eq!(reply, "OK");
    }
    // A pipelined run of plain SETs is written as one batch: committed
    // before its replies too.
    let _: redis::Value = ok(&mut con, &["CONSISTENCY", "WRITE", "one"]).await;
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("SET").arg(format!("run-{i}")).arg(format!("r{i}"));
    }
    let replies: Vec<redis::Value> = pipe.query_async(&mut con).await.expect("pipelined SETs");
    assert!(
        replies.iter().all(|r| *r == redis::Value::Okay),
        "{replies:?}"
    );
    cluster.kill(0);
    cluster.restart(0);
    let mut con = cluster.node(0).conn().await;
    for i in 0..50 {
        let key = format!("own-{i}");
        let got: Option<String> = ok(&mut con, &["KV.GET", &key, "R", "one"]).await;
        assert_eq!(got, Some(format!("v{i}")), "{key} after kill -9");
        let key = format!("run-{i}");
        let got: Option<String> = ok(&mut con, &["KV.GET", &key, "R", "one"]).await;
        assert_eq!(got, Some(format!("r{i}")), "{key} after kill -9");
    }
}

/// The partition count is fixed when a data directory is created: a restart
/// with another `cluster.partitions` would look up every key in the wrong
/// partition (the data would seem lost), so it is refused with the count to
/// use, and the data is there under the original count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_partition_count_is_refused_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let server = ServerProcess::start(&fjall_args(dir_arg, "always"));
    let mut con = server.conn().await;
    write_keys(&mut con, 0..100).await;
    drop(con);
    server.kill9();

    let config = dir.path().join("other-partitions.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nengine = \"fjall\"\ndata_dir = {dir_arg:?}\n[cluster]\npartitions = 2048\n"
        ),
    )
    .unwrap();
    let output = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_ringkv")).args([
            "server",
            "--config",
            config.to_str().unwrap(),
            "--resp-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(20),
    );
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "started with 2048 partitions: {errors}"
    );
    assert!(
        errors.contains("1024 partitions") && errors.contains("set cluster.partitions = 1024"),
        "{errors}"
    );

    let server = ServerProcess::start(&fjall_args(dir_arg, "always"));
    let mut con = server.conn().await;
    assert_keys(&mut con, 0..100).await;
}
