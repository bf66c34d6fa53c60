//! A gossip transport that drops the datagrams of cut links: the gossip
//! half of a network partition in the fault tests (`debug.fault_injection`).
//!
//! Invariant: a datagram to or from an address in the [`GossipBlocklist`]
//! never reaches chitchat or the wire; every other datagram passes unchanged.
//! The sender is told the datagram went out, as UDP would (0 bytes).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use parking_lot::RwLock;

/// Gossip addresses whose datagrams are dropped. Cheap to clone; clones
/// share state.
#[derive(Debug, Clone, Default)]
pub struct GossipBlocklist {
    // NOTE: a blocking lock, held for one lookup per datagram, never across an await.
    blocked: Arc<RwLock<HashSet<SocketAddr>>>,
}

impl GossipBlocklist {
    /// Replaces the blocked addresses.
    pub fn set(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        *self.blocked.write() = addrs.into_iter().collect();
    }

    /// Whether datagrams to or from `addr` are dropped.
    pub fn is_blocked(&self, addr: &SocketAddr) -> bool {
        self.blocked.read().contains(addr)
    }
}

/// Wraps a chitchat transport so its sockets obey a [`GossipBlocklist`].
#[derive(Debug)]
pub struct FilteredGossipTransport<T> {
    inner: T,
    blocklist: GossipBlocklist,
}

impl<T: Transport> FilteredGossipTransport<T> {
    /// `inner`, filtered by `blocklist`.
    pub fn new(inner: T, blocklist: GossipBlocklist) -> Self {
        Self { inner, blocklist }
    }
}

#[async_trait]
impl<T: Transport> Transport for FilteredGossipTransport<T> {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        Ok(Box::new(FilteredSocket {
            inner,
            blocklist: self.blocklist.clone(),
        }))
    }
}

struct FilteredSocket {
    inner: Box<dyn Socket>,
    blocklist: GossipBlocklist,
}

#[async_trait]
impl Socket for FilteredSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if self.blocklist.is_blocked(&to) {
            // NOTE: chitchat only counts these bytes for its statistics, and
            // keeps the envelope's size to itself.
            drop(envelope);
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let received = self.inner.recv().await?;
            if !self.blocklist.is_blocked(&received.from_addr) {
                return Ok(received);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chitchat::transport::ChannelTransport;
    use chitchat::{ChitchatMessage, ProtocolVersion};

    use super::*;

    fn envelope() -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::BadCluster,
        }
    }

    async fn arrives(socket: &mut Box<dyn Socket>) -> Option<SocketAddr> {
        tokio::time::timeout(Duration::from_millis(100), socket.recv())
            .await
            .ok()
            .map(|r| r.expect("channel socket").from_addr)
    }

    #[tokio::test]
    async fn blocked_addresses_neither_send_nor_receive() {
        let net = ChannelTransport::default();
        let blocklist = GossipBlocklist::default();
        let filtered = FilteredGossipTransport::new(net.clone(), blocklist.clone());
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let mut a_sock = filtered.open(a).await.unwrap();
        let mut b_sock = net.open(b).await.unwrap();

        a_sock.send(b, envelope()).await.unwrap();
        assert_eq!(arrives(&mut b_sock).await, Some(a), "nothing blocked yet");
        blocklist.set([b]);
        a_sock.send(b, envelope()).await.unwrap();
        assert_eq!(
            arrives(&mut b_sock).await,
            None,
            "sent to a blocked address"
        );
        b_sock.send(a, envelope()).await.unwrap();
        assert_eq!(arrives(&mut a_sock).await, None, "from a blocked address");
        blocklist.set([]);
        b_sock.send(a, envelope()).await.unwrap();
        assert_eq!(arrives(&mut a_sock).await, Some(b), "healed");
    }
}
