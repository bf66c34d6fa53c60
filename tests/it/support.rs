//! Test harness: in-process nodes, the real binary as a child process, a raw
//! RESP connection and a raw HTTP GET.
//!
//! Invariant: every wait here is bounded (see [`WAIT`]) and panics with a
//! message saying what did not happen, so a broken server fails a test
//! instead of hanging the suite.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, Value};
use ringkv::config::{Config, EngineKind};
use ringkv::node::Node;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any single wait in the harness may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A node running inside the test process.
pub struct TestNode {
    node: Option<Node>,
    /// Where the Redis protocol is served.
    pub resp_addr: SocketAddr,
    /// Where /health and /metrics are served.
    pub http_addr: SocketAddr,
    /// A client for `resp_addr`.
    pub client: redis::Client,
    /// Kept alive so the data directory lives as long as the node.
    _data_dir: TempDir,
}

/// Starts a node on `127.0.0.1:0` (both listeners) with the memory engine and
/// a fresh data directory; `tweak` adjusts the config before start.
pub async fn start_node(tweak: impl FnOnce(&mut Config)) -> TestNode {
    let data_dir = tempfile::tempdir().expect("create a temp data dir");
    let mut config = Config::default();
    config.node.resp_addr = "127.0.0.1:0".parse().unwrap();
    config.node.http_addr = "127.0.0.1:0".parse().unwrap();
    config.storage.engine = EngineKind::Memory;
    config.storage.data_dir = data_dir.path().to_owned();
    tweak(&mut config);
    let node = tokio::time::timeout(WAIT, Node::start(config))
        .await
        .expect("node did not start within 20 s")
        .expect("node failed to start");
    let resp_addr = node.resp_addr();
    let http_addr = node.http_addr();
    TestNode {
        node: Some(node),
        resp_addr,
        http_addr,
        client: client_for(resp_addr, ""),
        _data_dir: data_dir,
    }
}

impl TestNode {
    /// A new multiplexed connection (its own server-side session).
    pub async fn conn(&self) -> MultiplexedConnection {
        connect(&self.client).await
    }

    /// A raw TCP connection to the RESP port.
    pub async fn raw(&self) -> RawConn {
        RawConn::connect(self.resp_addr).await
    }

    /// Stops the node and waits for its final flush.
    pub async fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            tokio::time::timeout(WAIT, node.shutdown())
                .await
                .expect("node did not shut down within 20 s")
                .expect("node shutdown failed");
        }
    }
}

/// A client for `addr`; `url_suffix` is appended after the host (e.g. `/1`
/// or `/?protocol=resp3`).
pub fn client_for(addr: SocketAddr, url_suffix: &str) -> redis::Client {
    redis::Client::open(format!("redis://{addr}{url_suffix}")).expect("valid redis URL")
}

/// Connects with generous timeouts: the defaults (500 ms per reply) are too
/// tight for a debug build on a busy two-core machine with fsync on.
pub async fn connect(client: &redis::Client) -> MultiplexedConnection {
    try_connect(client)
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e}"))
}

/// Like [`connect`], but hands the error back.
pub async fn try_connect(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(WAIT))
        .set_response_timeout(Some(WAIT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Runs one command given as words.
pub async fn q<T: FromRedisValue>(
    con: &mut MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    cmd.arg(&args[1..]);
    cmd.query_async(con).await
}

/// Runs one command that must succeed.
pub async fn ok<T: FromRedisValue>(con: &mut MultiplexedConnection, args: &[&str]) -> T {
    q(con, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// Runs one command that must fail and returns the full error text, as the
/// server sent it (`ERR syntax error`).
pub async fn err(con: &mut MultiplexedConnection, args: &[&str]) -> String {
    match q::<Value>(con, args).await {
        Ok(v) => panic!("{args:?} should have failed, got {v:?}"),
        Err(e) => error_text(&e),
    }
}

/// The error line the server sent, reassembled from the client's error.
pub fn error_text(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_owned(),
        _ => e.to_string(),
    }
}

/// The key/value pairs of a map reply (RESP3 map, or RESP2 flat array).
pub fn map_pairs(value: Value) -> Vec<(String, Value)> {
    let pairs = match value {
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            assert!(items.len() % 2 == 0, "odd-length map array: {items:?}");
            let mut it = items.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        other => panic!("expected a map reply, got {other:?}"),
    };
    pairs
        .into_iter()
        .map(|(k, v)| (redis::from_redis_value::<String>(k).expect("string key"), v))
        .collect()
}

/// Looks a field up in [`map_pairs`] output.
pub fn field<'a>(pairs: &'a [(String, Value)], name: &str) -> &'a Value {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no field {name:?} in {pairs:?}"))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

// ---------------------------------------------------------------- raw RESP

/// A reply as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`
    Simple(String),
    /// `-text`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` (`None` for `$-1`), also verbatim strings (format prefix kept).
    Bulk(Option<Vec<u8>>),
    /// `*n` (`None` for `*-1`), also RESP3 sets.
    Array(Option<Vec<Reply>>),
    /// `%n`
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `_`
    Null,
}

impl Reply {
    /// A bulk reply holding `text`.
    pub fn bulk(text: &str) -> Reply {
        Reply::Bulk(Some(text.as_bytes().to_vec()))
    }
}

/// Parses one reply from the front of `buf`; `None` if incomplete.
fn parse_reply(buf: &[u8]) -> Option<(Reply, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..line_end]).expect("utf-8 header line");
    let after = line_end + 2;
    let int = || line.parse::<i64>().expect("integer in header");
    match buf[0] {
        b'+' => Some((Reply::Simple(line.into()), after)),
        b'-' => Some((Reply::Error(line.into()), after)),
        b':' => Some((Reply::Int(int()), after)),
        b'_' => Some((Reply::Null, after)),
        b'$' | b'=' if int() < 0 => Some((Reply::Bulk(None), after)),
        b'$' | b'=' => {
            let len = int() as usize;
            let data = buf.get(after..after + len)?;
            buf.get(after + len..after + len + 2)?;
            Some((Reply::Bulk(Some(data.to_vec())), after + len + 2))
        }
        b'*' | b'~' if int() < 0 => Some((Reply::Array(None), after)),
        b'*' | b'~' | b'%' => {
            let count = int() as usize * if buf[0] == b'%' { 2 } else { 1 };
            let mut items = Vec::with_capacity(count);
            let mut at = after;
            for _ in 0..count {
                let (item, used) = parse_reply(&buf[at..])?;
                items.push(item);
                at += used;
            }
            if buf[0] != b'%' {
                return Some((Reply::Array(Some(items)), at));
            }
            let mut it = items.into_iter();
            let pairs = std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect();
            Some((Reply::Map(pairs), at))
        }
        other => panic!(
            "unexpected reply type byte {:?} in {:?}",
            char::from(other),
            String::from_utf8_lossy(buf)
        ),
    }
}

/// Encodes a command as a RESP multibulk array.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A plain TCP connection speaking RESP by hand, for what a client library
/// would not send (garbage, huge headers, raw pipelines, inline commands).
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Sends a command and reads its reply.
    pub async fn cmd(&mut self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&encode_command(&args)).await;
        self.read_reply().await
    }

    /// Reads the next reply; panics on EOF or after [`WAIT`].
    pub async fn read_reply(&mut self) -> Reply {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if !self.buf.is_empty()
                && let Some((reply, used)) = parse_reply(&self.buf)
            {
                self.buf.drain(..used);
                return reply;
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("no complete reply within 20 s")
                .expect("read failed");
            assert!(
                read > 0,
                "server closed the connection; partial data: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Asserts the server closes the connection without sending anything more.
    pub async fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected extra reply bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut scratch = [0u8; 1024];
        let read = tokio::time::timeout(WAIT, self.stream.read(&mut scratch))
            .await
            .expect("server did not close the connection within 20 s");
        if let Ok(n @ 1..) = read {
            panic!(
                "expected the connection to be closed, got more data: {:?}",
                String::from_utf8_lossy(&scratch[..n])
            );
        }
    }
}

// ---------------------------------------------------------------- raw HTTP

/// `GET path` over HTTP/1.1; returns the status code, the lower-cased header
/// block and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_request(addr, "GET", path, "", "").await
}

/// `GET path` with `Authorization: Bearer <token>`.
pub async fn http_get_with_token(
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> (u16, String, String) {
    let header = format!("Authorization: Bearer {token}\r\n");
    http_request(addr, "GET", path, "", &header).await
}

/// `POST path` with a JSON `body`; returns what [`http_get`] does.
pub async fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String, String) {
    http_request(addr, "POST", path, body, "").await
}

async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    extra_headers: &str,
) -> (u16, String, String) {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("http connect timed out")
        .expect("http connect failed");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("http response not complete within 20 s")
        .expect("http read failed");
    let text = String::from_utf8(raw).expect("utf-8 http response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed http response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

// ---------------------------------------------------------------- child process

/// The `ringkv server` binary running as a child process. Dropping it kills
/// exactly that child (by its own handle) and reaps it.
pub struct ServerProcess {
    child: Child,
    /// Where the Redis protocol is served.
    pub resp_addr: SocketAddr,
    /// Where /health and /metrics are served.
    pub http_addr: SocketAddr,
    /// Every stderr line so far, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

/// Removes ANSI colour sequences (`ESC [ ... letter`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `count` loopback ports, free for TCP and UDP, that no other test of this
/// process was given, from below the kernel's ephemeral range.
///
/// NOTE: a node restarted on its port (peers know it) must find it free.
/// Ports the kernel picks (`bind` to port 0) are ephemeral: while the node
/// was down, the source port of any new connection, or another test's
/// port, could take it (seen: "Address already in use" on restart).
pub fn free_ports(count: usize) -> Vec<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    const LOWEST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral > LOWEST + 1_000,
        "the ephemeral port range starts at {ephemeral}: no room below it for test ports"
    );
    let mut given = GIVEN.lock().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut state = (u64::from(std::process::id()) << 32 ^ nanos) | 1;
    let mut ports = Vec::with_capacity(count);
    for _ in 0..100_000 {
        if ports.len() == count {
            break;
        }
        // NOTE: xorshift; the seed differs per process, so concurrent test
        // binaries start at different ports.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = LOWEST + (state % u64::from(ephemeral - LOWEST)) as u16;
        let free = || {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        };
        if !given.contains(&port) && free() {
            given.push(port);
            ports.push(port);
        }
    }
    assert_eq!(
        ports.len(),
        count,
        "no free loopback ports below {ephemeral}"
    );
    ports
}

/// The value of `name=` in a structured log line.
fn log_field(line: &str, name: &str) -> Option<SocketAddr> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

impl ServerProcess {
    /// Runs `ringkv server --resp-addr 127.0.0.1:0 --http-addr 127.0.0.1:0
    /// <args>` and waits for its `ringkv ready` line.
    pub fn start(args: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
            .args(["server", "--resp-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(args)
            .env("RINGKV_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the ringkv binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (line_tx, line_rx) = mpsc::channel();
        let thread_log = log.clone();
        // NOTE: the thread drains stderr for the child's whole life, so the
        // pipe never fills and blocks the server's logging.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = strip_ansi(String::from_utf8_lossy(&raw).trim_end());
                thread_log.lock().unwrap().push(line.clone());
                let _ = line_tx.send(line);
            }
        });
        let mut process = ServerProcess {
            child,
            resp_addr: "0.0.0.0:0".parse().unwrap(),
            http_addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        process.wait_ready(&line_rx);
        process
    }

    fn wait_ready(&mut self, line_rx: &mpsc::Receiver<String>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match line_rx.recv_timeout(left) {
                Ok(line) if line.contains("ringkv ready") => {
                    let resp = log_field(&line, "resp_addr");
                    let http = log_field(&line, "http_addr");
                    let (Some(resp), Some(http)) = (resp, http) else {
                        panic!("cannot parse addresses from {line:?}");
                    };
                    self.resp_addr = resp;
                    self.http_addr = http;
                    return;
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "ringkv did not log 'ringkv ready' within 20 s; stderr:\n{}",
                        self.stderr()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "ringkv exited before it was ready ({status:?}); stderr:\n{}",
                        self.stderr()
                    )
                }
            }
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (bounded) until a stderr line contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client for the RESP port.
    pub fn client(&self) -> redis::Client {
        client_for(self.resp_addr, "")
    }

    /// A connection to the RESP port.
    pub async fn conn(&self) -> MultiplexedConnection {
        connect(&self.client()).await
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to exactly this child.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// SIGTERM, then waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed: {status}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ringkv did not exit within 20 s of SIGTERM; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs a program with a time limit; kills it (by its own handle) on timeout.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}
