//! Redis command semantics, checked through the `redis` crate against an
//! in-process node: what a Redis user would see.

use std::time::Duration;

use redis::Value;
use ringkv::config::KeyspaceConfig;

use crate::support::{client_for, connect, err, field, map_pairs, ok, q, start_node, unix_ms};

#[tokio::test]
async fn set_then_get_returns_the_value_binary_safe() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "k"]).await, None);
    assert_eq!(ok::<String>(&mut c, &["SET", "k", "v1"]).await, "OK");
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "v1");
    ok::<()>(&mut c, &["SET", "k", "v2"]).await;
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "v2");

    let binary: &[u8] = b"a\r\n\0b\xff$3\r\n";
    let _: () = redis::cmd("SET")
        .arg(&b"bin\r\nkey"[..])
        .arg(binary)
        .query_async(&mut c)
        .await
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET")
        .arg(&b"bin\r\nkey"[..])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(back, binary);
    let empty: String = {
        ok::<()>(&mut c, &["SET", "empty", ""]).await;
        ok(&mut c, &["GET", "empty"]).await
    };
    assert_eq!(empty, "");
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "empty"]).await, 1);
    node.shutdown().await;
}

#[tokio::test]
async fn set_expiry_options_set_the_ttl() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;

    ok::<()>(&mut c, &["SET", "ex", "v", "EX", "100"]).await;
    assert!((99..=100).contains(&ok::<i64>(&mut c, &["TTL", "ex"]).await));

    ok::<()>(&mut c, &["SET", "px", "v", "px", "100000"]).await;
    let pttl: i64 = ok(&mut c, &["PTTL", "px"]).await;
    assert!((95_000..=100_000).contains(&pttl), "pttl {pttl}");

    let at_s = unix_ms() / 1000 + 200;
    ok::<()>(&mut c, &["SET", "exat", "v", "EXAT", &at_s.to_string()]).await;
    assert_eq!(ok::<i64>(&mut c, &["EXPIRETIME", "exat"]).await, at_s);
    assert!((195..=200).contains(&ok::<i64>(&mut c, &["TTL", "exat"]).await));

    let at_ms = unix_ms() + 300_000;
    ok::<()>(&mut c, &["SET", "pxat", "v", "PXAT", &at_ms.to_string()]).await;
    assert_eq!(ok::<i64>(&mut c, &["PEXPIRETIME", "pxat"]).await, at_ms);

    // A plain SET clears the TTL; KEEPTTL keeps it and still replaces the value.
    ok::<()>(&mut c, &["SET", "pxat", "v2", "KEEPTTL"]).await;
    assert_eq!(ok::<i64>(&mut c, &["PEXPIRETIME", "pxat"]).await, at_ms);
    assert_eq!(ok::<String>(&mut c, &["GET", "pxat"]).await, "v2");
    ok::<()>(&mut c, &["SET", "pxat", "v3"]).await;
    assert_eq!(ok::<i64>(&mut c, &["TTL", "pxat"]).await, -1);

    // An absolute time in the past deletes the key, as in Redis.
    ok::<()>(&mut c, &["SET", "past", "v", "PXAT", "1000"]).await;
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "past"]).await, 0);
    node.shutdown().await;
}

#[tokio::test]
async fn set_nx_xx_get_combinations() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;

    assert_eq!(
        ok::<Value>(&mut c, &["SET", "k", "a", "NX"]).await,
        Value::Okay
    );
    assert_eq!(
        ok::<Value>(&mut c, &["SET", "k", "b", "NX"]).await,
        Value::Nil
    );
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "a");

    assert_eq!(
        ok::<Value>(&mut c, &["SET", "new", "x", "XX"]).await,
        Value::Nil
    );
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "new"]).await, 0);
    assert_eq!(
        ok::<Value>(&mut c, &["SET", "k", "c", "XX"]).await,
        Value::Okay
    );
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "c");

    // GET returns the old value (nil when there was none) and still writes.
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "k", "d", "GET"])
            .await
            .as_deref(),
        Some("c")
    );
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "g", "1", "GET"]).await,
        None
    );
    assert_eq!(ok::<String>(&mut c, &["GET", "g"]).await, "1");

    // NX GET on an existing key: old value back, nothing written.
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "k", "e", "NX", "GET"])
            .await
            .as_deref(),
        Some("d")
    );
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "d");
    // XX GET on a missing key: nil, nothing created.
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "nope", "e", "XX", "GET"]).await,
        None
    );
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "nope"]).await, 0);
    // XX GET EX on an existing key: old value back, new value and TTL set.
    let old: Option<String> = ok(&mut c, &["SET", "k", "f", "XX", "GET", "EX", "50"]).await;
    assert_eq!(old.as_deref(), Some("d"));
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "f");
    assert!((49..=50).contains(&ok::<i64>(&mut c, &["TTL", "k"]).await));

    for bad in [
        &["SET", "k", "v", "NX", "XX"][..],
        &["SET", "k", "v", "EX", "10", "PX", "10"],
        &["SET", "k", "v", "EX", "10", "KEEPTTL"],
        &["SET", "k", "v", "EX"],
        &["SET", "k", "v", "BOGUS"],
    ] {
        assert_eq!(err(&mut c, bad).await, "ERR syntax error", "{bad:?}");
    }
    assert_eq!(
        ok::<String>(&mut c, &["GET", "k"]).await,
        "f",
        "failed SETs wrote nothing"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn setex_psetex_setnx() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    assert_eq!(
        ok::<String>(&mut c, &["SETEX", "a", "100", "va"]).await,
        "OK"
    );
    assert_eq!(ok::<String>(&mut c, &["GET", "a"]).await, "va");
    assert!((99..=100).contains(&ok::<i64>(&mut c, &["TTL", "a"]).await));
    assert_eq!(
        ok::<String>(&mut c, &["PSETEX", "b", "50000", "vb"]).await,
        "OK"
    );
    let pttl: i64 = ok(&mut c, &["PTTL", "b"]).await;
    assert!((45_000..=50_000).contains(&pttl), "pttl {pttl}");
    assert_eq!(
        err(&mut c, &["SETEX", "a", "0", "v"]).await,
        "ERR invalid expire time in 'setex' command"
    );
    assert_eq!(
        err(&mut c, &["PSETEX", "a", "-5", "v"]).await,
        "ERR invalid expire time in 'psetex' command"
    );
    assert_eq!(
        err(&mut c, &["SETEX", "a", "soon", "v"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(ok::<String>(&mut c, &["GET", "a"]).await, "va");

    assert_eq!(ok::<i64>(&mut c, &["SETNX", "n", "1"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["SETNX", "n", "2"]).await, 0);
    assert_eq!(ok::<String>(&mut c, &["GET", "n"]).await, "1");
    node.shutdown().await;
}

#[tokio::test]
async fn getdel_and_getex() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    ok::<()>(&mut c, &["SET", "k", "v"]).await;
    assert_eq!(
        ok::<Option<String>>(&mut c, &["GETDEL", "k"])
            .await
            .as_deref(),
        Some("v")
    );
    assert_eq!(ok::<Option<String>>(&mut c, &["GETDEL", "k"]).await, None);
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "k"]).await, 0);

    ok::<()>(&mut c, &["SET", "k", "v"]).await;
    assert_eq!(ok::<String>(&mut c, &["GETEX", "k"]).await, "v");
    assert_eq!(ok::<i64>(&mut c, &["TTL", "k"]).await, -1);
    assert_eq!(
        ok::<String>(&mut c, &["GETEX", "k", "EX", "100"]).await,
        "v"
    );
    assert!((99..=100).contains(&ok::<i64>(&mut c, &["TTL", "k"]).await));
    assert_eq!(
        ok::<String>(&mut c, &["GETEX", "k", "PX", "200000"]).await,
        "v"
    );
    assert!((195..=200).contains(&ok::<i64>(&mut c, &["TTL", "k"]).await));
    let at = unix_ms() / 1000 + 500;
    assert_eq!(
        ok::<String>(&mut c, &["GETEX", "k", "EXAT", &at.to_string()]).await,
        "v"
    );
    assert_eq!(ok::<i64>(&mut c, &["EXPIRETIME", "k"]).await, at);
    assert_eq!(ok::<String>(&mut c, &["GETEX", "k", "PERSIST"]).await, "v");
    assert_eq!(ok::<i64>(&mut c, &["TTL", "k"]).await, -1);

    assert_eq!(
        ok::<Option<String>>(&mut c, &["GETEX", "missing", "EX", "10"]).await,
        None
    );
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "missing"]).await, 0);
    assert_eq!(
        err(&mut c, &["GETEX", "k", "BOGUS"]).await,
        "ERR syntax error"
    );
    assert_eq!(
        err(&mut c, &["GETEX", "k", "EX", "0"]).await,
        "ERR invalid expire time in 'getex' command"
    );
    assert_eq!(ok::<i64>(&mut c, &["TTL", "k"]).await, -1);
    node.shutdown().await;
}

#[tokio::test]
async fn mset_then_mget_in_order_with_nils() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    assert_eq!(
        ok::<String>(&mut c, &["MSET", "a", "1", "b", "2", "c", "3"]).await,
        "OK"
    );
    let got: Vec<Option<String>> = ok(&mut c, &["MGET", "a", "b", "missing", "c", "a"]).await;
    let want = [Some("1"), Some("2"), None, Some("3"), Some("1")];
    assert_eq!(got, want.map(|v| v.map(String::from)));
    assert_eq!(
        err(&mut c, &["MSET", "a", "1", "b"]).await,
        "ERR wrong number of arguments for 'mset' command"
    );
    assert_eq!(ok::<String>(&mut c, &["GET", "a"]).await, "1");
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 3);
    node.shutdown().await;
}

#[tokio::test]
async fn del_unlink_and_exists_count_keys() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    ok::<()>(&mut c, &["MSET", "a", "1", "b", "2", "c", "3", "d", "4"]).await;
    assert_eq!(
        ok::<i64>(&mut c, &["EXISTS", "a", "a", "b", "missing"]).await,
        3
    );
    assert_eq!(ok::<i64>(&mut c, &["DEL", "a", "b", "missing"]).await, 2);
    assert_eq!(ok::<i64>(&mut c, &["DEL", "a"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["UNLINK", "c", "c", "missing"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "a", "b", "c", "d"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 1);
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "a"]).await, None);
    node.shutdown().await;
}

#[tokio::test]
async fn expire_family_honours_nx_xx_gt_lt() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "missing", "100"]).await, 0);
    ok::<()>(&mut c, &["SET", "k", "v"]).await;

    // No TTL yet: XX and GT refuse (no TTL counts as infinite), NX sets.
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "100", "XX"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "100", "GT"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["TTL", "k"]).await, -1);
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "100", "NX"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "200", "NX"]).await, 0);
    assert!((99..=100).contains(&ok::<i64>(&mut c, &["TTL", "k"]).await));

    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "50", "GT"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "300", "GT"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "400", "LT"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "150", "LT"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "250", "XX"]).await, 1);
    assert!((249..=250).contains(&ok::<i64>(&mut c, &["TTL", "k"]).await));
    assert_eq!(
        ok::<i64>(&mut c, &["EXPIRE", "k", "260", "XX", "GT"]).await,
        1
    );
    assert!((259..=260).contains(&ok::<i64>(&mut c, &["TTL", "k"]).await));

    // LT on a key without TTL sets one (infinite is larger than anything).
    ok::<()>(&mut c, &["SET", "p", "v"]).await;
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "p", "100", "LT"]).await, 1);

    // The other units land on the exact absolute time.
    let at_ms = unix_ms() + 400_000;
    assert_eq!(
        ok::<i64>(&mut c, &["PEXPIREAT", "k", &at_ms.to_string()]).await,
        1
    );
    assert_eq!(ok::<i64>(&mut c, &["PEXPIRETIME", "k"]).await, at_ms);
    let at_s = unix_ms() / 1000 + 500;
    assert_eq!(
        ok::<i64>(&mut c, &["EXPIREAT", "k", &at_s.to_string()]).await,
        1
    );
    assert_eq!(ok::<i64>(&mut c, &["EXPIRETIME", "k"]).await, at_s);
    assert_eq!(ok::<i64>(&mut c, &["PEXPIRE", "k", "90000"]).await, 1);
    let pttl: i64 = ok(&mut c, &["PTTL", "k"]).await;
    assert!((85_000..=90_000).contains(&pttl), "pttl {pttl}");

    // A time in the past deletes the key.
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "k", "-1"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "k"]).await, 0);
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "k"]).await, None);

    ok::<()>(&mut c, &["SET", "k", "v"]).await;
    assert_eq!(
        err(&mut c, &["EXPIRE", "k", "soon"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        err(&mut c, &["EXPIRE", "k", "10", "NX", "GT"]).await,
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    );
    assert_eq!(
        err(&mut c, &["EXPIRE", "k", "10", "GT", "LT"]).await,
        "ERR GT and LT options at the same time are not compatible"
    );
    assert_eq!(
        err(&mut c, &["EXPIRE", "k", "10", "SOON"]).await,
        "ERR Unsupported option SOON"
    );
    assert_eq!(
        err(&mut c, &["EXPIRE", "k", "9223372036854775807"]).await,
        "ERR invalid expire time in 'expire' command"
    );
    assert_eq!(
        ok::<i64>(&mut c, &["TTL", "k"]).await,
        -1,
        "failed EXPIREs changed nothing"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn ttl_family_reports_missing_and_persistent_keys() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    ok::<()>(&mut c, &["SET", "forever", "v"]).await;
    for cmd in ["TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"] {
        assert_eq!(
            ok::<i64>(&mut c, &[cmd, "missing"]).await,
            -2,
            "{cmd} missing"
        );
        assert_eq!(
            ok::<i64>(&mut c, &[cmd, "forever"]).await,
            -1,
            "{cmd} forever"
        );
    }
    ok::<()>(&mut c, &["SET", "t", "v", "EX", "100"]).await;
    assert_eq!(ok::<i64>(&mut c, &["PERSIST", "t"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["TTL", "t"]).await, -1);
    assert_eq!(ok::<i64>(&mut c, &["PERSIST", "t"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["PERSIST", "missing"]).await, 0);
    assert_eq!(ok::<String>(&mut c, &["GET", "t"]).await, "v");
    node.shutdown().await;
}

#[tokio::test]
async fn type_strlen_dbsize() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 0);
    ok::<()>(&mut c, &["SET", "k", "hello"]).await;
    ok::<()>(&mut c, &["SET", "j", "héllo"]).await;
    assert_eq!(ok::<String>(&mut c, &["TYPE", "k"]).await, "string");
    assert_eq!(ok::<String>(&mut c, &["TYPE", "missing"]).await, "none");
    assert_eq!(ok::<i64>(&mut c, &["STRLEN", "k"]).await, 5);
    assert_eq!(
        ok::<i64>(&mut c, &["STRLEN", "j"]).await,
        6,
        "bytes, not chars"
    );
    assert_eq!(ok::<i64>(&mut c, &["STRLEN", "missing"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 2);
    ok::<()>(&mut c, &["SET", "k", "again"]).await;
    assert_eq!(
        ok::<i64>(&mut c, &["DBSIZE"]).await,
        2,
        "overwrite is not a new key"
    );
    ok::<()>(&mut c, &["DEL", "k"]).await;
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 1);
    node.shutdown().await;
}

#[tokio::test]
async fn an_expired_key_is_never_returned() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    ok::<()>(&mut c, &["SET", "short", "v", "PX", "50"]).await;
    ok::<()>(&mut c, &["SET", "other", "v", "PX", "50"]).await;
    ok::<()>(&mut c, &["SET", "nx", "v", "PX", "50"]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "short"]).await, None);
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "short"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["TTL", "short"]).await, -2);
    assert_eq!(ok::<i64>(&mut c, &["PTTL", "short"]).await, -2);
    assert_eq!(ok::<String>(&mut c, &["TYPE", "short"]).await, "none");
    assert_eq!(ok::<i64>(&mut c, &["STRLEN", "short"]).await, 0);
    assert_eq!(
        ok::<Vec<Option<String>>>(&mut c, &["MGET", "short", "other"]).await,
        [None, None]
    );
    assert_eq!(
        ok::<Option<String>>(&mut c, &["GETDEL", "other"]).await,
        None
    );
    assert_eq!(
        ok::<Option<String>>(&mut c, &["GETEX", "other", "PERSIST"]).await,
        None
    );
    assert_eq!(ok::<i64>(&mut c, &["EXPIRE", "short", "100"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["PERSIST", "short"]).await, 0);
    assert_eq!(ok::<i64>(&mut c, &["DEL", "short"]).await, 0);
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "short", "x", "XX", "GET"]).await,
        None
    );
    assert_eq!(
        ok::<i64>(&mut c, &["EXISTS", "short"]).await,
        0,
        "XX on an expired key"
    );
    // An expired key counts as absent for NX.
    assert_eq!(ok::<i64>(&mut c, &["SETNX", "nx", "fresh"]).await, 1);
    assert_eq!(ok::<String>(&mut c, &["GET", "nx"]).await, "fresh");
    assert_eq!(
        ok::<i64>(&mut c, &["TTL", "nx"]).await,
        -1,
        "the old TTL is gone"
    );
    // Still gone much later, after the sweep had its chance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "short"]).await, None);
    assert_eq!(ok::<i64>(&mut c, &["TTL", "short"]).await, -2);
    node.shutdown().await;
}

fn with_cache_keyspace(cfg: &mut ringkv::config::Config) {
    cfg.keyspaces.push(KeyspaceConfig {
        name: "cache".into(),
        n: 1,
        ..Default::default()
    });
}

#[tokio::test]
async fn select_switches_between_separate_keyspaces() {
    let node = start_node(with_cache_keyspace).await;
    let mut c = node.conn().await;
    ok::<()>(&mut c, &["SET", "k", "in-default"]).await;
    ok::<()>(&mut c, &["SET", "only-default", "x"]).await;

    assert_eq!(ok::<String>(&mut c, &["SELECT", "cache"]).await, "OK");
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "k"]).await, None);
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 0);
    ok::<()>(&mut c, &["SET", "k", "in-cache"]).await;
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 1);

    assert_eq!(ok::<String>(&mut c, &["SELECT", "0"]).await, "OK");
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "in-default");
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 2);
    assert_eq!(ok::<String>(&mut c, &["SELECT", "1"]).await, "OK");
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "in-cache");
    assert_eq!(ok::<i64>(&mut c, &["DEL", "only-default"]).await, 0);
    assert_eq!(ok::<String>(&mut c, &["SELECT", "default"]).await, "OK");
    assert_eq!(ok::<String>(&mut c, &["GET", "only-default"]).await, "x");

    assert_eq!(
        err(&mut c, &["SELECT", "7"]).await,
        "ERR DB index is out of range"
    );
    let unknown = err(&mut c, &["SELECT", "nope"]).await;
    assert!(
        unknown.starts_with("ERR unknown keyspace 'nope'"),
        "{unknown}"
    );
    assert_eq!(
        ok::<String>(&mut c, &["GET", "k"]).await,
        "in-default",
        "a failed SELECT keeps the keyspace"
    );

    // A redis:// URL with a database number selects that keyspace.
    let mut db1 = connect(&client_for(node.resp_addr, "/1")).await;
    assert_eq!(ok::<String>(&mut db1, &["GET", "k"]).await, "in-cache");
    // Each connection has its own keyspace.
    let mut fresh = node.conn().await;
    assert_eq!(ok::<String>(&mut fresh, &["GET", "k"]).await, "in-default");
    node.shutdown().await;
}

#[tokio::test]
async fn ping_and_echo() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    assert_eq!(ok::<String>(&mut c, &["PING"]).await, "PONG");
    assert_eq!(
        ok::<String>(&mut c, &["PING", "hi there"]).await,
        "hi there"
    );
    assert_eq!(
        ok::<String>(&mut c, &["ECHO", "héllo\r\n"]).await,
        "héllo\r\n"
    );
    assert_eq!(
        err(&mut c, &["PING", "a", "b"]).await,
        "ERR wrong number of arguments for 'ping' command"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn hello_3_switches_the_connection_to_resp3() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    let reply: Value = ok(&mut c, &["HELLO", "3"]).await;
    assert!(
        matches!(reply, Value::Map(_)),
        "HELLO 3 must answer a RESP3 map: {reply:?}"
    );
    let hello = map_pairs(reply);
    assert_eq!(field(&hello, "proto"), &Value::Int(3));
    assert_eq!(
        field(&hello, "server"),
        &Value::BulkString(b"redis".to_vec())
    );
    let version: String = redis::from_redis_value(field(&hello, "version").clone()).unwrap();
    assert!(version.starts_with('7'), "version {version}");

    ok::<()>(&mut c, &["SET", "k", "v"]).await;
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "v");
    assert_eq!(ok::<Value>(&mut c, &["GET", "missing"]).await, Value::Nil);
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "k"]).await, 1);
    assert!(matches!(
        ok::<Value>(&mut c, &["CONSISTENCY"]).await,
        Value::Map(_)
    ));
    assert_eq!(
        err(&mut c, &["HELLO", "4"]).await,
        "NOPROTO unsupported protocol version"
    );
    assert_eq!(
        err(&mut c, &["HELLO", "three"]).await,
        "ERR Protocol version is not an integer or out of range"
    );

    // A client configured for RESP3 from the start works too.
    let mut resp3 = connect(&client_for(node.resp_addr, "/?protocol=resp3")).await;
    assert_eq!(ok::<String>(&mut resp3, &["GET", "k"]).await, "v");
    assert_eq!(
        ok::<Vec<Option<String>>>(&mut resp3, &["MGET", "k", "x"]).await,
        [Some("v".into()), None]
    );
    node.shutdown().await;
}

#[tokio::test]
async fn client_setname_getname_id() {
    let node = start_node(|_| {}).await;
    let mut a = node.conn().await;
    let mut b = node.conn().await;
    assert_eq!(
        ok::<Option<String>>(&mut a, &["CLIENT", "GETNAME"]).await,
        None
    );
    assert_eq!(
        ok::<String>(&mut a, &["CLIENT", "SETNAME", "worker-1"]).await,
        "OK"
    );
    assert_eq!(
        ok::<String>(&mut a, &["CLIENT", "GETNAME"]).await,
        "worker-1"
    );
    assert_eq!(
        ok::<Option<String>>(&mut b, &["CLIENT", "GETNAME"]).await,
        None
    );
    let id_a: i64 = ok(&mut a, &["CLIENT", "ID"]).await;
    let id_b: i64 = ok(&mut b, &["CLIENT", "ID"]).await;
    assert!(id_a > 0 && id_b > 0 && id_a != id_b, "ids {id_a} {id_b}");
    assert_eq!(
        ok::<i64>(&mut a, &["CLIENT", "ID"]).await,
        id_a,
        "stable per connection"
    );
    assert_eq!(
        err(&mut a, &["CLIENT", "SETNAME", "has space"]).await,
        "ERR Client names cannot contain spaces, newlines or special characters."
    );
    assert_eq!(
        ok::<String>(&mut a, &["CLIENT", "GETNAME"]).await,
        "worker-1"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn config_get_info_and_command_answer_what_tools_ask() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    let save = map_pairs(ok(&mut c, &["CONFIG", "GET", "save"]).await);
    assert_eq!(save, [("save".to_owned(), Value::BulkString(Vec::new()))]);
    let aof = map_pairs(ok(&mut c, &["CONFIG", "GET", "appendonly"]).await);
    assert_eq!(
        aof,
        [("appendonly".to_owned(), Value::BulkString(b"no".to_vec()))],
        "memory engine"
    );
    let both = map_pairs(ok(&mut c, &["CONFIG", "GET", "save", "appendonly"]).await);
    assert_eq!(both.len(), 2);
    let nothing = map_pairs(ok(&mut c, &["CONFIG", "GET", "no-such-param"]).await);
    assert!(nothing.is_empty());

    let info: String = ok(&mut c, &["INFO"]).await;
    assert!(info.contains("redis_version:"), "{info}");
    assert!(info.contains("connected_clients:"), "{info}");
    assert!(
        info.contains("# Cluster\r\ncluster_enabled:0\r\n"),
        "{info}"
    );
    let server: String = ok(&mut c, &["INFO", "server"]).await;
    assert!(server.contains("redis_mode:standalone"), "{server}");
    assert!(
        !server.contains("# Keyspace"),
        "INFO server is one section: {server}"
    );

    let count: i64 = ok(&mut c, &["COMMAND", "COUNT"]).await;
    let all: Vec<Value> = ok(&mut c, &["COMMAND"]).await;
    assert_eq!(count as usize, all.len());
    assert!(count >= 35, "COMMAND COUNT {count}");
    let names: Vec<String> = all
        .into_iter()
        .map(|entry| match entry {
            Value::Array(mut parts) => redis::from_redis_value(parts.swap_remove(0)).unwrap(),
            other => panic!("COMMAND entry {other:?}"),
        })
        .collect();
    for name in ["get", "set", "mget", "expire", "hello", "consistency"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    node.shutdown().await;
}

/// Tools (redis-cli, sentinels, dashboards) read the port from INFO and
/// CONFIG GET; with `resp_addr = 127.0.0.1:0` they must see the bound port.
#[tokio::test]
async fn info_and_config_report_the_bound_port() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    let port = node.resp_addr.port().to_string();
    let server: String = ok(&mut c, &["INFO", "server"]).await;
    assert!(server.contains(&format!("tcp_port:{port}\r\n")), "{server}");
    let config = map_pairs(ok(&mut c, &["CONFIG", "GET", "port"]).await);
    assert_eq!(
        config,
        [("port".to_owned(), Value::BulkString(port.into_bytes()))]
    );
    node.shutdown().await;
}

#[tokio::test]
async fn consistency_levels_for_a_single_node() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    let shown = map_pairs(ok(&mut c, &["CONSISTENCY"]).await);
    assert_eq!(
        field(&shown, "read"),
        &Value::BulkString(b"quorum".to_vec())
    );
    assert_eq!(
        field(&shown, "write"),
        &Value::BulkString(b"quorum".to_vec())
    );
    assert_eq!(field(&shown, "n"), &Value::Int(1));

    let set = map_pairs(ok(&mut c, &["CONSISTENCY", "WRITE", "all"]).await);
    assert_eq!(field(&set, "write"), &Value::BulkString(b"all".to_vec()));
    let set = map_pairs(ok(&mut c, &["CONSISTENCY", "READ", "one", "WRITE", "1"]).await);
    assert_eq!(field(&set, "read"), &Value::BulkString(b"one".to_vec()));
    assert_eq!(field(&set, "write"), &Value::BulkString(b"1".to_vec()));
    ok::<()>(&mut c, &["SET", "k", "v"]).await;
    assert_eq!(ok::<String>(&mut c, &["GET", "k"]).await, "v");

    let two = err(&mut c, &["CONSISTENCY", "WRITE", "two"]).await;
    assert!(
        two.starts_with("ERR consistency level two needs 2 replicas"),
        "{two}"
    );
    let bogus = err(&mut c, &["CONSISTENCY", "READ", "most"]).await;
    assert!(
        bogus.starts_with("ERR invalid consistency level"),
        "{bogus}"
    );
    assert_eq!(
        err(&mut c, &["CONSISTENCY", "READ"]).await,
        "ERR syntax error"
    );
    let after = map_pairs(ok(&mut c, &["CONSISTENCY"]).await);
    assert_eq!(
        field(&after, "read"),
        &Value::BulkString(b"one".to_vec()),
        "errors change nothing"
    );
    assert_eq!(field(&after, "sloppy"), &Value::BulkString(b"off".to_vec()));
    let sloppy = map_pairs(ok(&mut c, &["CONSISTENCY", "SLOPPY", "on"]).await);
    assert_eq!(field(&sloppy, "sloppy"), &Value::BulkString(b"on".to_vec()));
    assert_eq!(field(&sloppy, "read"), &Value::BulkString(b"one".to_vec()));
    assert_eq!(
        err(&mut c, &["CONSISTENCY", "SLOPPY", "maybe"]).await,
        "ERR SLOPPY takes ON or OFF"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn error_replies_use_redis_texts() {
    let node = start_node(|_| {}).await;
    let mut c = node.conn().await;
    assert_eq!(
        err(&mut c, &["GET"]).await,
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        err(&mut c, &["get", "a", "b"]).await,
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        err(&mut c, &["SET", "k"]).await,
        "ERR wrong number of arguments for 'set' command"
    );
    assert_eq!(
        err(&mut c, &["SET", "k", "v", "XY"]).await,
        "ERR syntax error"
    );
    assert_eq!(
        err(&mut c, &["PEXPIRE", "k", "1.5"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        err(&mut c, &["SET", "k", "v", "EX", "0"]).await,
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        err(&mut c, &["SET", "k", "v", "PX", "-100"]).await,
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        err(&mut c, &["FLUBBER", "a", "b c"]).await,
        "ERR unknown command 'FLUBBER', with args beginning with: 'a' 'b c' "
    );
    // The connection is still healthy after all of that.
    assert_eq!(ok::<String>(&mut c, &["PING"]).await, "PONG");
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 0);
    node.shutdown().await;
}

#[tokio::test]
async fn kv_commands_take_per_request_levels_and_where_names_the_replica() {
    let node = start_node(|c| c.node.name = "solo".into()).await;
    let mut c = node.conn().await;
    assert_eq!(
        ok::<String>(&mut c, &["KV.PUT", "k", "v", "W", "one"]).await,
        "OK"
    );
    assert_eq!(
        ok::<String>(&mut c, &["KV.GET", "k", "R", "all"]).await,
        "v"
    );
    assert_eq!(
        ok::<String>(&mut c, &["KV.PUT", "t", "v", "PX", "100000", "W", "quorum"]).await,
        "OK"
    );
    let pttl: i64 = ok(&mut c, &["PTTL", "t"]).await;
    assert!((1..=100_000).contains(&pttl), "pttl {pttl}");
    let e = err(&mut c, &["KV.GET", "k", "R", "two"]).await;
    assert!(e.contains("needs 2 replicas") && e.contains("n=1"), "{e}");
    let e = err(&mut c, &["KV.GET", "k", "R", "most"]).await;
    assert!(e.contains("invalid consistency level"), "{e}");
    assert!(
        err(&mut c, &["KV.PUT", "k", "v", "W"])
            .await
            .contains("syntax error")
    );
    ok::<()>(
        &mut c,
        &["KV.PUT", "s", "v", "SLOPPY", "W", "1", "EX", "100"],
    )
    .await;
    ok::<()>(&mut c, &["KV.PUT", "s", "v", "W", "1", "SLOPPY"]).await;
    assert!(
        err(&mut c, &["KV.GET", "s", "SLOPPY"])
            .await
            .contains("syntax error"),
        "reads take no SLOPPY"
    );
    let Value::Array(replicas) = ok::<Value>(&mut c, &["KV.INSPECT", "s"]).await else {
        panic!("KV.INSPECT answers an array");
    };
    let replica = map_pairs(replicas.into_iter().next().expect("one replica"));
    assert_eq!(
        field(&replica, "node"),
        &Value::BulkString(b"solo".to_vec())
    );
    assert_eq!(
        field(&replica, "state"),
        &Value::BulkString(b"value".to_vec())
    );
    assert_eq!(
        field(&replica, "expiry_ms"),
        &Value::Nil,
        "the last PUT cleared it"
    );
    let Value::BulkString(digest) = field(&replica, "digest") else {
        panic!("digest is text: {replica:?}");
    };
    assert_eq!(digest.len(), 16);
    assert_eq!(ok::<i64>(&mut c, &["KV.DEL", "s", "SLOPPY"]).await, 1);
    let Value::Array(replicas) = ok::<Value>(&mut c, &["KV.INSPECT", "s"]).await else {
        panic!("KV.INSPECT answers an array");
    };
    let replica = map_pairs(replicas.into_iter().next().expect("one replica"));
    assert_eq!(
        field(&replica, "state"),
        &Value::BulkString(b"tombstone".to_vec())
    );
    let Value::Array(replicas) = ok::<Value>(&mut c, &["KV.INSPECT", "never"]).await else {
        panic!("KV.INSPECT answers an array");
    };
    let replica = map_pairs(replicas.into_iter().next().expect("one replica"));
    assert_eq!(
        field(&replica, "state"),
        &Value::BulkString(b"missing".to_vec())
    );
    assert_eq!(ok::<i64>(&mut c, &["KV.DEL", "k", "W", "1"]).await, 1);
    assert_eq!(ok::<i64>(&mut c, &["KV.DEL", "k"]).await, 0);
    assert_eq!(ok::<Option<String>>(&mut c, &["KV.GET", "k"]).await, None);

    let pairs = map_pairs(q::<Value>(&mut c, &["KV.WHERE", "k"]).await.unwrap());
    let Value::Int(partition) = field(&pairs, "partition") else {
        panic!("partition is not an integer: {pairs:?}");
    };
    assert!((0..1024).contains(partition));
    assert_eq!(
        field(&pairs, "primaries"),
        &Value::Array(vec![Value::BulkString(b"solo".to_vec())])
    );
    assert_eq!(field(&pairs, "fallbacks"), &Value::Array(vec![]));
    node.shutdown().await;
}

#[tokio::test]
async fn keyspace_levels_apply_until_the_connection_chooses_its_own() {
    let node = start_node(|cfg| {
        cfg.keyspaces.push(KeyspaceConfig {
            name: "fast".into(),
            n: 1,
            read_level: ringkv::coordinator::Level::One,
            write_level: ringkv::coordinator::Level::One,
            ..Default::default()
        });
    })
    .await;
    let mut c = node.conn().await;
    let levels = |v: redis::Value| {
        let pairs = map_pairs(v);
        (
            format!("{:?}", field(&pairs, "read")),
            format!("{:?}", field(&pairs, "write")),
        )
    };
    let start = levels(ok(&mut c, &["CONSISTENCY"]).await);
    assert!(
        start.0.contains("quorum") && start.1.contains("quorum"),
        "{start:?}"
    );
    ok::<()>(&mut c, &["SELECT", "fast"]).await;
    let fast = levels(ok(&mut c, &["CONSISTENCY"]).await);
    assert!(fast.0.contains("one") && fast.1.contains("one"), "{fast:?}");
    ok::<redis::Value>(&mut c, &["CONSISTENCY", "WRITE", "all"]).await;
    ok::<()>(&mut c, &["SELECT", "0"]).await;
    let chosen = levels(ok(&mut c, &["CONSISTENCY"]).await);
    assert!(
        chosen.0.contains("one") && chosen.1.contains("all"),
        "{chosen:?}"
    );
    node.shutdown().await;
}
