//! Tests of the TCP transport and peer server over real loopback sockets.

use std::sync::atomic::AtomicUsize;

use bytes::BytesMut;
use futures_util::SinkExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::codec::FramedWrite;

use super::*;
use crate::net::frame::{NONCE_LEN, decode_frame, frame_codec};
use crate::net::{Handler, PeerServerHandle, spawn_peer_server};

const SECRET: &str = "correct horse";

/// Echoes keys back; keyspace "slow" sleeps 300 ms first, "gate" waits for
/// a permit from `gate`.
struct TestHandler {
    calls: AtomicUsize,
    gate: Semaphore,
}

impl Default for TestHandler {
    fn default() -> Self {
        Self {
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }
    }
}

impl Handler for TestHandler {
    async fn handle(&self, from: &PeerId, request: Request) -> Response {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match request {
            Request::Ping => Response::Pong,
            Request::Read { keyspace, key } => {
                match keyspace.as_str() {
                    "slow" => tokio::time::sleep(Duration::from_millis(300)).await,
                    "gate" => drop(self.gate.acquire().await),
                    "from" => return Response::Record(Some(Bytes::from(from.to_owned()))),
                    _ => {}
                }
                Response::Record(Some(key))
            }
            Request::Write { .. } | Request::Hint { .. } => Response::Written,
            Request::Aae(_) | Request::ReadMany { .. } | Request::WriteMany { .. } => {
                Response::Error("not served".into())
            }
        }
    }
}

fn read(keyspace: &str, key: impl Into<Bytes>) -> Request {
    Request::Read {
        keyspace: keyspace.into(),
        key: key.into(),
    }
}

fn server_config() -> PeerConfig {
    PeerConfig::new("server", SECRET)
}

async fn serve_on(listener: TcpListener, handler: Arc<TestHandler>) -> PeerServerHandle {
    spawn_peer_server(listener, server_config(), handler).unwrap()
}

async fn start(handler: Arc<TestHandler>) -> PeerServerHandle {
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler).await
}

fn client(server: SocketAddr, config: PeerConfig) -> TcpTransport {
    let transport = TcpTransport::new(config);
    transport.set_peer("server", server);
    transport
}

#[tokio::test]
async fn concurrent_calls_share_one_connection_and_get_their_own_answers() {
    let handler = Arc::new(TestHandler::default());
    let server = start(handler.clone()).await;
    let transport = client(server.local_addr(), PeerConfig::new("client", SECRET));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let transport = transport.clone();
        calls.spawn(async move {
            let answer = transport.call("server", read("ks", i.to_string())).await;
            (i, answer)
        });
    }
    while let Some(joined) = calls.join_next().await {
        let (i, answer) = joined.unwrap();
        assert_eq!(
            answer,
            Ok(Response::Record(Some(Bytes::from(i.to_string()))))
        );
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1000);
    // The server sees the client's proven name.
    let from = transport.call("server", read("from", "")).await;
    assert_eq!(from, Ok(Response::Record(Some(Bytes::from("client")))));
    let slot = transport.slot("server");
    assert!(
        slot.current
            .lock()
            .as_ref()
            .unwrap()
            .pending
            .lock()
            .is_empty()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn reconnects_after_server_restart_once_backoff_passes() {
    let handler = Arc::new(TestHandler::default());
    let server = start(handler.clone()).await;
    let addr = server.local_addr();
    let config = PeerConfig {
        reconnect_backoff_min: Duration::from_millis(200),
        ..PeerConfig::new("client", SECRET)
    };
    let transport = client(addr, config);
    assert_eq!(
        transport.call("server", Request::Ping).await,
        Ok(Response::Pong)
    );
    server.shutdown().await;

    // The old connection is dead and the reconnect is refused: backoff starts.
    let down = transport.call("server", Request::Ping).await;
    assert!(matches!(down, Err(NetError::Unreachable(_))), "{down:?}");
    let down = transport.call("server", Request::Ping).await;
    assert!(matches!(down, Err(NetError::Unreachable(_))), "{down:?}");

    let server = serve_on(TcpListener::bind(addr).await.unwrap(), handler).await;
    // Within the backoff window calls fail fast without trying.
    let started = Instant::now();
    let fast = transport.call("server", Request::Ping).await;
    assert!(
        matches!(&fast, Err(NetError::Unreachable(m)) if m.contains("backing off")),
        "{fast:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(50));

    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        transport.call("server", Request::Ping).await,
        Ok(Response::Pong)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn slow_calls_time_out_and_leave_the_connection_usable() {
    let handler = Arc::new(TestHandler::default());
    let server = start(handler.clone()).await;
    let config = PeerConfig {
        request_timeout: Duration::from_millis(100),
        ..PeerConfig::new("client", SECRET)
    };
    let transport = client(server.local_addr(), config);
    let started = Instant::now();
    // NOTE: the outer timeout only keeps a broken sweep from hanging the test.
    let call = transport.call("server", read("slow", "k"));
    let result = tokio::time::timeout(Duration::from_secs(5), call).await;
    assert_eq!(
        result,
        Ok(Err(NetError::Timeout)),
        "the connection sweeps expired calls"
    );
    assert!(started.elapsed() < Duration::from_millis(250));
    // The timed-out call's entry is gone; its late answer is dropped harmlessly.
    let slot = transport.slot("server");
    assert!(
        slot.current
            .lock()
            .as_ref()
            .unwrap()
            .pending
            .lock()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        transport.call("server", Request::Ping).await,
        Ok(Response::Pong)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn in_flight_limit_answers_overloaded() {
    let handler = Arc::new(TestHandler::default());
    let server = start(handler.clone()).await;
    let config = PeerConfig {
        max_in_flight_per_peer: 2,
        ..PeerConfig::new("client", SECRET)
    };
    let transport = client(server.local_addr(), config);
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let transport = transport.clone();
            tokio::spawn(async move { transport.call("server", read("gate", "k")).await })
        })
        .collect();
    while handler.calls.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        transport.call("server", Request::Ping).await,
        Err(NetError::Overloaded(2))
    );
    handler.gate.add_permits(2);
    for call in blocked {
        assert!(call.await.unwrap().is_ok());
    }
    assert_eq!(
        transport.call("server", Request::Ping).await,
        Ok(Response::Pong)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_secret_is_refused_and_nothing_is_handled() {
    let handler = Arc::new(TestHandler::default());
    let server = start(handler.clone()).await;
    let transport = client(server.local_addr(), PeerConfig::new("client", "guess"));
    let refused = transport.call("server", Request::Ping).await;
    assert!(matches!(refused, Err(NetError::Auth(_))), "{refused:?}");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

/// Sends `frames` on a raw socket, then reads until the server closes.
async fn raw_session(addr: SocketAddr, frames: Vec<Frame>) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut read_half, write_half) = stream.split();
    let mut sink = FramedWrite::new(write_half, frame_codec(1 << 20));
    for frame in frames {
        sink.send(encode_frame(&frame).unwrap()).await.unwrap();
    }
    let mut seen = Vec::new();
    let read = read_half.read_to_end(&mut seen);
    // The server must close; a hang here is a failure too.
    let _ = tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .unwrap();
    seen
}

#[tokio::test]
async fn peers_skipping_the_handshake_get_nothing_handled() {
    let handler = Arc::new(TestHandler::default());
    let server = start(handler.clone()).await;
    let request = Frame::Request {
        id: 1,
        request: Request::Ping,
    };
    // No handshake at all.
    let seen = raw_session(server.local_addr(), vec![request.clone()]).await;
    assert!(seen.is_empty(), "server answered {seen:?}");
    // A hello, then straight to data without a proof.
    let hello = Frame::Hello {
        node_name: "mallory".into(),
        nonce: [0; NONCE_LEN],
    };
    let seen = raw_session(server.local_addr(), vec![hello, request]).await;
    let mut buf = BytesMut::from(&seen[..]);
    let mut codec = frame_codec(1 << 20);
    let first = tokio_util::codec::Decoder::decode(&mut codec, &mut buf)
        .unwrap()
        .unwrap();
    assert!(matches!(decode_frame(&first), Ok(Frame::Hello { .. })));
    assert!(buf.is_empty(), "server sent more than its hello");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn frames_over_the_limit_are_refused() {
    let handler = Arc::new(TestHandler::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_config = PeerConfig {
        max_frame_bytes: 4096,
        ..server_config()
    };
    let server = spawn_peer_server(listener, server_config, handler.clone()).unwrap();
    let big = Request::Write {
        keyspace: "ks".into(),
        key: Bytes::from_static(b"k"),
        record: Bytes::from(vec![7u8; 8192]),
    };
    // Over the client's own limit: refused before it leaves.
    let small = PeerConfig {
        max_frame_bytes: 4096,
        ..PeerConfig::new("client", SECRET)
    };
    let transport = client(server.local_addr(), small);
    let refused = transport.call("server", big.clone()).await;
    assert!(matches!(refused, Err(NetError::Codec(_))), "{refused:?}");
    // Over the server's limit: the server drops the connection.
    let transport = client(server.local_addr(), PeerConfig::new("client", SECRET));
    let refused = transport.call("server", big).await;
    assert!(
        matches!(refused, Err(NetError::Unreachable(_))),
        "{refused:?}"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    // The client reconnects for the next, acceptable call.
    assert_eq!(
        transport.call("server", Request::Ping).await,
        Ok(Response::Pong)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_and_misaddressed_peers() {
    let server = start(Arc::new(TestHandler::default())).await;
    let transport = TcpTransport::new(PeerConfig::new("client", SECRET));
    let unknown = transport.call("server", Request::Ping).await;
    assert_eq!(unknown, Err(NetError::UnknownPeer("server".into())));
    // Another node answers at the address: not the peer we meant.
    transport.set_peer("n9", server.local_addr());
    let wrong = transport.call("n9", Request::Ping).await;
    assert!(
        matches!(&wrong, Err(NetError::Unreachable(m)) if m.contains("\"server\"")),
        "{wrong:?}"
    );
    transport.remove_peer("n9");
    assert!(matches!(
        transport.call("n9", Request::Ping).await,
        Err(NetError::UnknownPeer(_))
    ));
    server.shutdown().await;
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let config = PeerConfig::default();
    assert_eq!(config.backoff(1), Duration::from_millis(50));
    assert_eq!(config.backoff(2), Duration::from_millis(100));
    assert_eq!(config.backoff(6), Duration::from_millis(1600));
    assert_eq!(config.backoff(7), Duration::from_secs(2));
    assert_eq!(config.backoff(u32::MAX), Duration::from_secs(2));
}

#[tokio::test]
async fn unknown_protocol_version_closes_the_connection() {
    let handler = Arc::new(TestHandler::default());
    let server = start(handler.clone()).await;
    let stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = handshake_reader(read_half);
    let name = client_handshake(&mut reader, &mut write_half, "client", SECRET).await;
    assert_eq!(name.unwrap(), "server");
    let body = encode_frame(&Frame::Request {
        id: 1,
        request: Request::Ping,
    })
    .unwrap();
    let mut forged = body.to_vec();
    forged[0] = crate::net::PROTOCOL_VERSION + 1;
    let mut sink = FramedWrite::new(&mut write_half, frame_codec(1 << 20));
    sink.send(Bytes::from(forged)).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut reader)).await;
    assert!(
        matches!(closed, Ok(Err(NetError::Unreachable(_)))),
        "{closed:?}"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_call_over_the_in_flight_limit_waits_for_a_slot() {
    let handler = Arc::new(TestHandler::default());
    let server = start(handler.clone()).await;
    let config = PeerConfig {
        max_in_flight_per_peer: 1,
        ..PeerConfig::new("client", SECRET)
    };
    let transport = client(server.local_addr(), config);
    let blocked = {
        let transport = transport.clone();
        tokio::spawn(async move { transport.call("server", read("gate", "k")).await })
    };
    while handler.calls.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiting = {
        let transport = transport.clone();
        tokio::spawn(async move { transport.call("server", Request::Ping).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    handler.gate.add_permits(1);
    assert!(blocked.await.unwrap().is_ok());
    assert_eq!(waiting.await.unwrap(), Ok(Response::Pong));
    server.shutdown().await;
}

/// A peer that authenticates, then never reads again (a stopped process):
/// calls with large requests fill the socket, then the write queue, and
/// every one still ends with `Timeout` near its deadline.
#[tokio::test]
async fn calls_to_a_peer_that_stopped_reading_time_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
    let peer = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read_half, mut write_half) = stream.into_split();
        let mut reader = super::super::auth::handshake_reader(read_half);
        super::super::auth::server_handshake(&mut reader, &mut write_half, "server", SECRET)
            .await
            .unwrap();
        // NOTE: hold both halves, read nothing, until the test ends.
        let _ = stalled_rx.await;
        drop((reader, write_half));
    });
    let config = PeerConfig {
        request_timeout: Duration::from_millis(300),
        write_queue_frames: 1,
        ..PeerConfig::new("client", SECRET)
    };
    let transport = client(addr, config);
    let big = Request::Write {
        keyspace: "ks".into(),
        key: Bytes::from_static(b"k"),
        record: Bytes::from(vec![7u8; 1 << 20]),
    };
    let started = Instant::now();
    let calls = (0..16).map(|_| transport.call("server", big.clone()));
    // NOTE: the outer timeout only keeps a hang from blocking the test run.
    let results = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("every call ends");
    assert!(
        results.iter().all(|r| *r == Err(NetError::Timeout)),
        "{results:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let _ = stalled_tx.send(());
    peer.await.unwrap();
}

/// However the connection task ends (here: aborted while the `Conn` that
/// owns it lives on), the calls waiting on it fail at once instead of
/// waiting for a sweep that no longer runs.
#[tokio::test]
async fn calls_fail_when_their_connection_task_is_aborted() {
    let handler = Arc::new(TestHandler::default());
    let server = start(handler.clone()).await;
    let config = PeerConfig {
        request_timeout: Duration::from_secs(30),
        ..PeerConfig::new("client", SECRET)
    };
    let transport = client(server.local_addr(), config);
    assert_eq!(
        transport.call("server", Request::Ping).await,
        Ok(Response::Pong)
    );
    let waiting = {
        let transport = transport.clone();
        tokio::spawn(async move { transport.call("server", read("slow", "k")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let slot = transport.slot("server");
    slot.current.lock().as_ref().unwrap().task.abort();
    let result = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the call ends when its connection task does")
        .unwrap();
    assert!(
        matches!(result, Err(NetError::Unreachable(_))),
        "{result:?}"
    );
    server.shutdown().await;
}
