//! The internode transport through its public API only: real sockets, the
//! cluster-secret handshake, and faults injected on the sending side.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ringkv::net::{
    FaultTable, FaultyTransport, Handler, NetError, PeerConfig, PeerId, Request, Response,
    TcpTransport, Transport, bind_peer_server,
};

/// Stores nothing; counts writes and names the caller in read answers.
#[derive(Default)]
struct Replica {
    writes: AtomicUsize,
}

impl Handler for Replica {
    async fn handle(&self, from: &PeerId, request: Request) -> Response {
        match request {
            Request::Ping => Response::Pong,
            Request::Read { .. } => Response::Record(Some(Bytes::from(from.to_owned()))),
            Request::Write { .. } => {
                self.writes.fetch_add(1, Ordering::SeqCst);
                Response::Written
            }
            other => Response::Error(format!("not served here: {other:?}")),
        }
    }
}

fn write() -> Request {
    Request::Write {
        keyspace: "default".into(),
        key: Bytes::from_static(b"k"),
        record: Bytes::from_static(b"r"),
    }
}

#[tokio::test]
async fn a_write_over_a_one_way_partition_is_applied_but_unacknowledged() {
    let replica = Arc::new(Replica::default());
    let config = PeerConfig::new("b", "cluster-secret");
    let server = bind_peer_server("127.0.0.1:0".parse().unwrap(), config, replica.clone())
        .await
        .unwrap();
    let timeout = Duration::from_millis(300);
    let tcp = TcpTransport::new(PeerConfig {
        request_timeout: timeout,
        ..PeerConfig::new("a", "cluster-secret")
    });
    tcp.set_peer("b", server.local_addr());
    let faults = FaultTable::new(3);
    let a = FaultyTransport::new(tcp, "a", faults.clone(), timeout);

    let read = Request::Read {
        keyspace: "default".into(),
        key: Bytes::from_static(b"k"),
    };
    assert_eq!(
        a.call("b", read).await,
        Ok(Response::Record(Some(Bytes::from("a"))))
    );

    faults.cut("a", "b");
    assert!(matches!(
        a.call("b", write()).await,
        Err(NetError::Unreachable(_))
    ));
    assert_eq!(
        replica.writes.load(Ordering::SeqCst),
        0,
        "a cut request is never delivered"
    );

    faults.heal("a", "b");
    faults.cut("b", "a");
    assert_eq!(a.call("b", write()).await, Err(NetError::Timeout));
    assert_eq!(
        replica.writes.load(Ordering::SeqCst),
        1,
        "the write was applied"
    );

    faults.heal_all();
    assert_eq!(a.call("b", write()).await, Ok(Response::Written));
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_without_the_secret_cannot_write() {
    let replica = Arc::new(Replica::default());
    let server = bind_peer_server(
        "127.0.0.1:0".parse().unwrap(),
        PeerConfig::new("b", "cluster-secret"),
        replica.clone(),
    )
    .await
    .unwrap();
    let intruder = TcpTransport::new(PeerConfig::new("a", "not-the-secret"));
    intruder.set_peer("b", server.local_addr());
    for _ in 0..3 {
        let refused = intruder.call("b", write()).await;
        assert!(
            matches!(
                refused,
                Err(NetError::Auth(_)) | Err(NetError::Unreachable(_))
            ),
            "{refused:?}"
        );
    }
    assert_eq!(replica.writes.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}
