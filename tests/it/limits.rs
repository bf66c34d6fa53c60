//! Limits and the wire protocol's edges: oversized keys and values, protocol
//! errors, the connection cap, AUTH, pipelining and inline commands.

use std::time::Duration;

use crate::support::{
    Reply, client_for, connect, encode_command, err, ok, start_node, try_connect,
};

#[tokio::test]
async fn an_oversized_key_is_refused_and_nothing_is_written() {
    let node = start_node(|cfg| cfg.limits.max_key_bytes = 16).await;
    let mut c = node.conn().await;
    let long = "k".repeat(17);
    let at_limit = "k".repeat(16);
    for cmd in [
        &["SET", &long, "v"][..],
        &["SETNX", &long, "v"],
        &["SETEX", &long, "10", "v"],
        &["GET", &long],
    ] {
        let e = err(&mut c, cmd).await;
        assert_eq!(
            e, "ERR key too large (17 bytes; max_key_bytes is 16)",
            "{}",
            cmd[0]
        );
    }
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 0);
    assert_eq!(ok::<String>(&mut c, &["SET", &at_limit, "v"]).await, "OK");
    assert_eq!(ok::<String>(&mut c, &["GET", &at_limit]).await, "v");
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 1);
    node.shutdown().await;
}

#[tokio::test]
async fn an_oversized_value_is_refused_and_nothing_is_written() {
    let node = start_node(|cfg| cfg.limits.max_value_bytes = 64).await;
    let mut c = node.conn().await;
    let big = "v".repeat(65);
    let at_limit = "v".repeat(64);
    ok::<()>(&mut c, &["SET", "kept", "old"]).await;
    for cmd in [
        &["SET", "k", &big][..],
        &["SET", "kept", &big],
        &["SETNX", "k", &big],
        &["SETEX", "k", "10", &big],
        &["PSETEX", "k", "10000", &big],
    ] {
        let e = err(&mut c, cmd).await;
        assert_eq!(
            e, "ERR value too large (65 bytes; max_value_bytes is 64)",
            "{}",
            cmd[0]
        );
    }
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "k"]).await, None);
    assert_eq!(ok::<String>(&mut c, &["GET", "kept"]).await, "old");
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 1);
    assert_eq!(ok::<String>(&mut c, &["SET", "k", &at_limit]).await, "OK");
    assert_eq!(ok::<i64>(&mut c, &["STRLEN", "k"]).await, 64);
    node.shutdown().await;
}

#[tokio::test]
async fn mset_with_one_oversized_pair_writes_none_of_them() {
    let node = start_node(|cfg| {
        cfg.limits.max_value_bytes = 64;
        cfg.limits.max_key_bytes = 16;
    })
    .await;
    let mut c = node.conn().await;
    let big = "v".repeat(65);
    let e = err(&mut c, &["MSET", "a", "1", "b", &big, "c", "3"]).await;
    assert!(e.starts_with("ERR value too large"), "{e}");
    let long_key = "k".repeat(17);
    let e = err(&mut c, &["MSET", "a", "1", "c", "3", &long_key, "x"]).await;
    assert!(e.starts_with("ERR key too large"), "{e}");
    let got: Vec<Option<String>> = ok(&mut c, &["MGET", "a", "b", "c"]).await;
    assert_eq!(got, [None, None, None]);
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]).await, 0);
    node.shutdown().await;
}

/// Small protocol limits so the tests can exceed them cheaply.
fn small_protocol_limits(cfg: &mut ringkv::config::Config) {
    cfg.limits.max_multibulk_len = 16;
    cfg.limits.max_bulk_bytes = 1024;
    cfg.limits.max_key_bytes = 64;
    cfg.limits.max_value_bytes = 512;
}

/// Requests that break the protocol, and the error text Redis answers each with.
const PROTOCOL_VIOLATIONS: [(&[u8], &str); 7] = [
    (
        b"*99999999\r\n",
        "ERR Protocol error: invalid multibulk length",
    ),
    (b"*17\r\n", "ERR Protocol error: invalid multibulk length"),
    (
        b"*2\r\n$3\r\nGET\r\n$99999\r\n",
        "ERR Protocol error: invalid bulk length",
    ),
    (
        b"*2\r\n$3\r\nGET\r\n$1025\r\n",
        "ERR Protocol error: invalid bulk length",
    ),
    (
        b"*2\r\n$3\r\nGET\r\n$-5\r\n",
        "ERR Protocol error: invalid bulk length",
    ),
    (
        b"*1\r\nfoo\r\n",
        "ERR Protocol error: expected '$', got 'f'",
    ),
    (
        b"SET x \"unterminated\r\n",
        "ERR Protocol error: unbalanced quotes in request",
    ),
];

/// Sends each violation on a fresh connection after a good command; returns
/// the error texts received. Each connection must then be closed.
async fn send_violations(node: &crate::support::TestNode) -> Vec<String> {
    let mut texts = Vec::new();
    for (input, _) in PROTOCOL_VIOLATIONS {
        let mut raw = node.raw().await;
        // A good command first: an error must not eat earlier replies.
        assert_eq!(
            raw.cmd(&["SET", "before", "1"]).await,
            Reply::Simple("OK".into())
        );
        raw.send(input).await;
        let shown = String::from_utf8_lossy(input);
        match raw.read_reply().await {
            Reply::Error(text) => texts.push(text),
            other => panic!("{shown:?}: expected an error, got {other:?}"),
        }
        raw.expect_closed().await;
    }
    texts
}

#[tokio::test]
async fn protocol_errors_close_the_connection_but_not_the_server() {
    let node = start_node(small_protocol_limits).await;
    let texts = send_violations(&node).await;
    for (text, (_, want)) in texts.iter().zip(PROTOCOL_VIOLATIONS) {
        // The exact text (with its ERR prefix) is checked by
        // protocol_errors_use_redis_texts.
        let core = want.trim_start_matches("ERR ");
        assert!(text.ends_with(core), "got {text:?}, want {want:?}");
    }
    // At the limits exactly, everything is accepted.
    let mut raw = node.raw().await;
    let args: Vec<&str> = std::iter::once("MGET").chain(["k"; 15]).collect();
    assert!(matches!(raw.cmd(&args).await, Reply::Array(Some(v)) if v.len() == 15));
    let value = "v".repeat(512);
    assert_eq!(
        raw.cmd(&["SET", "full", &value]).await,
        Reply::Simple("OK".into())
    );
    // The server still serves new connections and clients.
    let mut c = node.conn().await;
    assert_eq!(ok::<String>(&mut c, &["GET", "before"]).await, "1");
    assert_eq!(ok::<i64>(&mut c, &["STRLEN", "full"]).await, 512);
    node.shutdown().await;
}

/// Redis replies `-ERR Protocol error: ...`; clients match on the `ERR` code.
#[tokio::test]
async fn protocol_errors_use_redis_texts() {
    let node = start_node(small_protocol_limits).await;
    let texts = send_violations(&node).await;
    let want: Vec<&str> = PROTOCOL_VIOLATIONS.iter().map(|(_, w)| *w).collect();
    assert_eq!(texts, want);
    node.shutdown().await;
}

#[tokio::test]
async fn too_many_connections_are_refused_with_a_redis_error() {
    let node = start_node(|cfg| cfg.limits.max_connections = 2).await;
    let mut first = node.raw().await;
    let mut second = node.raw().await;
    assert_eq!(first.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    assert_eq!(second.cmd(&["PING"]).await, Reply::Simple("PONG".into()));

    let mut third = node.raw().await;
    assert_eq!(
        third.read_reply().await,
        Reply::Error("ERR max number of clients reached".into())
    );
    third.expect_closed().await;
    assert_eq!(
        first.cmd(&["PING"]).await,
        Reply::Simple("PONG".into()),
        "existing clients unaffected"
    );

    // Once a client leaves, its slot frees up (the release is asynchronous).
    drop(second);
    let mut admitted = false;
    for _ in 0..100 {
        let mut next = node.raw().await;
        next.send(&encode_command(&[b"PING"])).await;
        if next.read_reply().await == Reply::Simple("PONG".into()) {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        admitted,
        "a slot never freed up after a client disconnected"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn requirepass_gates_everything_behind_auth() {
    let node = start_node(|cfg| cfg.node.requirepass = Some("s3cret".into())).await;
    let mut raw = node.raw().await;
    let noauth = Reply::Error("NOAUTH Authentication required.".into());
    assert_eq!(raw.cmd(&["GET", "k"]).await, noauth);
    assert_eq!(raw.cmd(&["SET", "k", "v"]).await, noauth);
    assert_eq!(raw.cmd(&["PING"]).await, noauth);
    let wrongpass =
        Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into());
    assert_eq!(raw.cmd(&["AUTH", "guess"]).await, wrongpass);
    assert_eq!(raw.cmd(&["AUTH", "admin", "s3cret"]).await, wrongpass);
    assert_eq!(raw.cmd(&["GET", "k"]).await, noauth);
    assert_eq!(
        raw.cmd(&["AUTH", "s3cret"]).await,
        Reply::Simple("OK".into())
    );
    assert_eq!(
        raw.cmd(&["SET", "k", "v"]).await,
        Reply::Simple("OK".into())
    );
    assert_eq!(raw.cmd(&["GET", "k"]).await, Reply::bulk("v"));

    let mut named = node.raw().await;
    assert_eq!(
        named.cmd(&["AUTH", "default", "s3cret"]).await,
        Reply::Simple("OK".into())
    );
    assert_eq!(named.cmd(&["GET", "k"]).await, Reply::bulk("v"));

    // HELLO without AUTH is refused; with AUTH it authenticates and switches.
    let mut hello = node.raw().await;
    let Reply::Error(e) = hello.cmd(&["HELLO", "3"]).await else {
        panic!("HELLO 3 without AUTH must fail");
    };
    assert!(e.starts_with("NOAUTH"), "{e}");
    assert_eq!(
        hello.cmd(&["HELLO", "3", "AUTH", "default", "nope"]).await,
        wrongpass
    );
    let Reply::Map(fields) = hello
        .cmd(&["HELLO", "3", "AUTH", "default", "s3cret"])
        .await
    else {
        panic!("HELLO 3 AUTH must answer a RESP3 map");
    };
    assert!(
        fields.contains(&(Reply::bulk("proto"), Reply::Int(3))),
        "{fields:?}"
    );
    assert_eq!(hello.cmd(&["GET", "k"]).await, Reply::bulk("v"));
    assert_eq!(
        hello.cmd(&["GET", "missing"]).await,
        Reply::Null,
        "RESP3 null"
    );

    // Client libraries: a password in the URL just works; none gets NOAUTH.
    let mut with_pw = connect(&client_for(node.resp_addr, "")).await;
    assert_eq!(
        err(&mut with_pw, &["GET", "k"]).await,
        "NOAUTH Authentication required."
    );
    let url = format!("redis://:s3cret@{}/", node.resp_addr);
    let mut authed = try_connect(&redis::Client::open(url).unwrap())
        .await
        .expect("a client with the right password connects");
    assert_eq!(ok::<String>(&mut authed, &["GET", "k"]).await, "v");
    let bad_url = format!("redis://:wrong@{}/", node.resp_addr);
    assert!(
        try_connect(&redis::Client::open(bad_url).unwrap())
            .await
            .is_err()
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_thousand_pipelined_commands_answer_in_order() {
    let node = start_node(|_| {}).await;
    let mut raw = node.raw().await;
    const N: usize = 1000;
    let mut sets = Vec::new();
    for i in 0..N {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        sets.extend(encode_command(&[b"SET", k.as_bytes(), v.as_bytes()]));
    }
    raw.send(&sets).await;
    for i in 0..N {
        assert_eq!(
            raw.read_reply().await,
            Reply::Simple("OK".into()),
            "reply {i}"
        );
    }
    let mut gets = Vec::new();
    for i in 0..N {
        gets.extend(encode_command(&[b"GET", format!("k{i}").as_bytes()]));
    }
    raw.send(&gets).await;
    for i in 0..N {
        assert_eq!(
            raw.read_reply().await,
            Reply::bulk(&format!("v{i}")),
            "reply {i}"
        );
    }
    // An error in the middle of a pipeline keeps its place.
    let mut mixed = encode_command(&[b"SET", b"m", b"1"]);
    mixed.extend(encode_command(&[b"GET"]));
    mixed.extend(encode_command(&[b"GET", b"m"]));
    raw.send(&mixed).await;
    assert_eq!(raw.read_reply().await, Reply::Simple("OK".into()));
    assert_eq!(
        raw.read_reply().await,
        Reply::Error("ERR wrong number of arguments for 'get' command".into())
    );
    assert_eq!(raw.read_reply().await, Reply::bulk("1"));
    assert_eq!(raw.cmd(&["DBSIZE"]).await, Reply::Int(N as i64 + 1));
    node.shutdown().await;
}

#[tokio::test]
async fn inline_commands_work_like_redis_cli_over_telnet() {
    let node = start_node(|_| {}).await;
    let mut raw = node.raw().await;
    raw.send(b"PING\r\n").await;
    assert_eq!(raw.read_reply().await, Reply::Simple("PONG".into()));
    raw.send(b"SET a \"b c\"\r\n").await;
    assert_eq!(raw.read_reply().await, Reply::Simple("OK".into()));
    raw.send(b"GET a\r\n").await;
    assert_eq!(raw.read_reply().await, Reply::bulk("b c"));
    raw.send(b"exists a missing a\n").await;
    assert_eq!(raw.read_reply().await, Reply::Int(2));
    raw.send(b"SET q 'single quoted'\r\nGET q\r\n").await;
    assert_eq!(raw.read_reply().await, Reply::Simple("OK".into()));
    assert_eq!(raw.read_reply().await, Reply::bulk("single quoted"));
    // Inline and multibulk may be mixed on one connection.
    assert_eq!(raw.cmd(&["GET", "a"]).await, Reply::bulk("b c"));
    node.shutdown().await;
}
