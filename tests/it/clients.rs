//! Real Redis programs against the real binary: redis-cli, redis-benchmark
//! and redis-py. A missing program skips the test locally and fails it in CI
//! (where the env var `CI` is set and the programs are installed).

use std::process::Command;
use std::time::Duration;

use crate::support::{ServerProcess, run_bounded};

/// True if `program --version` runs; otherwise skips (or fails under CI).
fn available(program: &str, version_args: &[&str]) -> bool {
    let found = Command::new(program)
        .args(version_args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is required in CI but is not available"
        );
        eprintln!("SKIPPED: {program} is not available (set CI=1 to make this a failure)");
    }
    found
}

fn memory_server(extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--engine", "memory"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

fn run_cli(server: &ServerProcess, args: &[&str]) -> std::process::Output {
    let port = server.resp_addr.port().to_string();
    run_bounded(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args),
        Duration::from_secs(30),
    )
}

/// Runs redis-cli for an error reply; returns stdout and stderr together
/// (redis-cli versions differ in where errors go and in the exit code).
fn cli_error(server: &ServerProcess, args: &[&str]) -> String {
    let out = run_cli(server, args);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs redis-cli against `server` and returns its trimmed stdout.
fn cli(server: &ServerProcess, args: &[&str]) -> String {
    let out = run_cli(server, args);
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

#[test]
fn redis_cli_reads_and_writes() {
    if !available("redis-cli", &["--version"]) {
        return;
    }
    let server = memory_server(&[]);
    assert_eq!(cli(&server, &["ping"]), "PONG");
    assert_eq!(cli(&server, &["set", "k", "v"]), "OK");
    assert_eq!(cli(&server, &["get", "k"]), "v");
    assert_eq!(cli(&server, &["--no-raw", "get", "k"]), "\"v\"");
    assert_eq!(cli(&server, &["--no-raw", "get", "missing"]), "(nil)");
    assert_eq!(
        cli(&server, &["--no-raw", "exists", "k", "k"]),
        "(integer) 2"
    );
    assert_eq!(cli(&server, &["set", "t", "x", "ex", "100"]), "OK");
    let ttl: i64 = cli(&server, &["ttl", "t"]).parse().unwrap();
    assert!((99..=100).contains(&ttl), "ttl {ttl}");
    assert_eq!(cli(&server, &["mset", "a", "1", "b", "2"]), "OK");
    assert_eq!(cli(&server, &["mget", "a", "missing", "b"]), "1\n\n2");
    assert_eq!(cli(&server, &["dbsize"]), "4");
    assert_eq!(cli(&server, &["-3", "get", "k"]), "v");
    let err = cli_error(&server, &["--no-raw", "get"]);
    assert!(
        err.contains("ERR wrong number of arguments for 'get' command"),
        "{err}"
    );
    let info = cli(&server, &["info", "server"]);
    assert!(info.contains("redis_version:"), "{info}");
    // Commands piped through stdin, as in scripts.
    let port = server.resp_addr.port().to_string();
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), "set piped yes\nget piped\n").unwrap();
    let out = run_bounded(
        Command::new("sh").arg("-c").arg(format!(
            "redis-cli -p {port} < '{}'",
            script.path().display()
        )),
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\nyes\n");
}

#[test]
fn redis_cli_authenticates_with_a_password() {
    if !available("redis-cli", &["--version"]) {
        return;
    }
    let server = memory_server(&["--requirepass", "pw123"]);
    let denied = cli_error(&server, &["get", "k"]);
    assert!(denied.contains("NOAUTH"), "{denied}");
    assert_eq!(
        cli(
            &server,
            &["-a", "pw123", "--no-auth-warning", "set", "k", "v"]
        ),
        "OK"
    );
    assert_eq!(
        cli(&server, &["-a", "pw123", "--no-auth-warning", "get", "k"]),
        "v"
    );
}

#[test]
fn redis_benchmark_runs_set_and_get() {
    if !available("redis-benchmark", &["--version"]) {
        return;
    }
    let server = memory_server(&[]);
    let port = server.resp_addr.port().to_string();
    let out = run_bounded(
        Command::new("redis-benchmark").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "set,get",
            "-n",
            "2000",
            "-c",
            "5",
            "-q",
        ]),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stdout} {stderr}", out.status);
    for name in ["SET", "GET"] {
        let line = stdout
            .split(['\n', '\r'])
            .find(|l| l.starts_with(&format!("{name}: ")) && l.contains("requests per second"))
            .unwrap_or_else(|| panic!("no {name} result in:\n{stdout}\n{stderr}"));
        let rps: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the rate in {line:?}"));
        assert!(rps > 0.0, "{line}");
    }
}

const REDIS_PY_SCRIPT: &str = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), decode_responses=True)
assert r.ping()
assert r.set("k", "v") is True
assert r.get("k") == "v"
assert r.get("missing") is None
assert r.expire("k", 100) is True
assert 99 <= r.ttl("k") <= 100, r.ttl("k")
assert r.set("n", "1", nx=True) is True
assert r.set("n", "2", nx=True) is None
assert r.mset({"a": "1", "b": "2"}) is True
assert r.mget(["a", "missing", "b"]) == ["1", None, "2"]
p = r.pipeline(transaction=False)
for i in range(100):
    p.set(f"p{i}", i)
for i in range(100):
    p.get(f"p{i}")
results = p.execute()
assert results[:100] == [True] * 100, results[:100]
assert results[100:] == [str(i) for i in range(100)], results[100:]
assert r.delete("a", "b", "missing") == 2
assert r.exists("a", "k", "k") == 2
assert r.dbsize() == 102, r.dbsize()  # k, n, p0..p99
try:
    r.execute_command("GET")
    raise SystemExit("GET without a key should fail")
except redis.ResponseError as e:
    assert "wrong number of arguments" in str(e), e
if int(redis.__version__.split(".")[0]) >= 5:
    r3 = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), protocol=3, decode_responses=True)
    assert r3.get("k") == "v"
print("redis-py ok")
"#;

#[test]
fn redis_py_client_works_unchanged() {
    let has_redis_py = Command::new("python3")
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_redis_py {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with the redis module is required in CI"
        );
        eprintln!("SKIPPED: python3 with the redis module is not available");
        return;
    }
    let server = memory_server(&[]);
    let port = server.resp_addr.port().to_string();
    let out = run_bounded(
        Command::new("python3").args(["-c", REDIS_PY_SCRIPT, &port]),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-py script failed: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("redis-py ok"), "{stdout}");
}
