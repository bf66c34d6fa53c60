//! An in-process network for cluster tests: nodes register a handler under
//! their name and call each other through [`MemTransport`], no sockets, with
//! the faults of a [`FaultTable`] applied to every message.
//!
//! Semantics follow a real network: a cut request link fails at once with
//! `Unreachable` and the request is never delivered; a lost request, or a
//! cut or lost response link, leaves the caller waiting out its timeout
//! (`Timeout`), and in the response case the request *was* handled, like an
//! applied-but-unacknowledged write. Delays use `tokio::time::sleep`, so
//! tests may pause time. Invariant: a delivered request runs to completion
//! even if its caller gave up.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::fault::{Fate, FaultTable, delay};
use super::{Handler, NetError, PeerId, Request, Response, Transport};

/// A type-erased request handler: (caller's name, request) -> response.
pub type BoxedHandler =
    Arc<dyn Fn(String, Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

struct Inner {
    // NOTE: a plain lock: lookups only, never held across an await.
    handlers: RwLock<HashMap<String, BoxedHandler>>,
    faults: FaultTable,
    request_timeout: Duration,
}

/// The in-memory network. Cheap to clone; clones are the same network.
#[derive(Clone)]
pub struct MemNetwork {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut nodes: Vec<_> = self.inner.handlers.read().keys().cloned().collect();
        nodes.sort();
        f.debug_struct("MemNetwork").field("nodes", &nodes).finish()
    }
}

impl MemNetwork {
    /// An empty network whose calls time out after `request_timeout` and
    /// whose lossy links draw from `seed`.
    pub fn new(request_timeout: Duration, seed: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                handlers: RwLock::new(HashMap::new()),
                faults: FaultTable::new(seed),
                request_timeout,
            }),
        }
    }

    /// Serves requests to `name` with `handler` (replacing any previous one).
    pub fn register<H: Handler>(&self, name: &str, handler: Arc<H>) {
        let boxed: BoxedHandler = Arc::new(move |from: String, request: Request| {
            let handler = handler.clone();
            Box::pin(async move { handler.handle(&from, request).await })
        });
        self.register_boxed(name, boxed);
    }

    /// Serves requests to `name` with a type-erased handler.
    pub fn register_boxed(&self, name: &str, handler: BoxedHandler) {
        self.inner.handlers.write().insert(name.to_owned(), handler);
    }

    /// Takes `name` off the network (a crashed node): calls to it fail with
    /// `Unreachable` until it registers again.
    pub fn unregister(&self, name: &str) {
        self.inner.handlers.write().remove(name);
    }

    /// A transport that sends as node `me`.
    pub fn transport(&self, me: &str) -> MemTransport {
        MemTransport::new(me, self.clone())
    }

    /// The network's faults (shareable with a [`super::FaultyTransport`]).
    pub fn faults(&self) -> &FaultTable {
        &self.inner.faults
    }

    /// See [`FaultTable::cut`].
    pub fn cut(&self, from: &str, to: &str) {
        self.inner.faults.cut(from, to);
    }

    /// See [`FaultTable::cut_both`].
    pub fn cut_both(&self, a: &str, b: &str) {
        self.inner.faults.cut_both(a, b);
    }

    /// See [`FaultTable::heal`].
    pub fn heal(&self, from: &str, to: &str) {
        self.inner.faults.heal(from, to);
    }

    /// See [`FaultTable::heal_both`].
    pub fn heal_both(&self, a: &str, b: &str) {
        self.inner.faults.heal_both(a, b);
    }

    /// See [`FaultTable::heal_all`].
    pub fn heal_all(&self) {
        self.inner.faults.heal_all();
    }

    /// See [`FaultTable::set_delay`].
    pub fn set_delay(&self, from: &str, to: &str, delay: Duration) {
        self.inner.faults.set_delay(from, to, delay);
    }

    /// See [`FaultTable::set_drop_probability`].
    pub fn set_drop_probability(&self, from: &str, to: &str, p: f64) {
        self.inner.faults.set_drop_probability(from, to, p);
    }

    /// See [`FaultTable::isolate`].
    pub fn isolate(&self, node: &str) {
        self.inner.faults.isolate(node);
    }

    /// See [`FaultTable::rejoin`].
    pub fn rejoin(&self, node: &str) {
        self.inner.faults.rejoin(node);
    }
}

/// One node's view of a [`MemNetwork`].
#[derive(Debug, Clone)]
pub struct MemTransport {
    me: String,
    network: MemNetwork,
}

impl MemTransport {
    /// A transport that sends as node `me` on `network`.
    pub fn new(me: impl Into<String>, network: MemNetwork) -> Self {
        Self {
            me: me.into(),
            network,
        }
    }

    /// The name this transport sends as.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The network it sends on.
    pub fn network(&self) -> &MemNetwork {
        &self.network
    }
}

impl Transport for MemTransport {
    async fn call(&self, to: &PeerId, request: Request) -> Result<Response, NetError> {
        let net = &self.network.inner;
        let deadline = Instant::now() + net.request_timeout;
        let request_fate = net.faults.fate(&self.me, to);
        if request_fate == Fate::Cut {
            return Err(NetError::Unreachable(format!(
                "link {} -> {to} is cut",
                self.me
            )));
        }
        let Some(handler) = net.handlers.read().get(to).cloned() else {
            return Err(NetError::Unreachable(format!(
                "no node {to} on the network"
            )));
        };
        let (answer_tx, answer_rx) = oneshot::channel();
        let (me, to, faults) = (self.me.clone(), to.to_owned(), net.faults.clone());
        // Delivered on its own task: a request in flight arrives and is
        // handled even if the caller stops waiting.
        tokio::spawn(async move {
            let Fate::Deliver(d) = request_fate else {
                return;
            };
            delay(d).await;
            let response = handler(me.clone(), request).await;
            match faults.fate(&to, &me) {
                Fate::Cut | Fate::Lost => return,
                Fate::Deliver(d) => delay(d).await,
            }
            let _ = answer_tx.send(response);
        });
        match tokio::time::timeout_at(deadline, answer_rx).await {
            Ok(Ok(response)) => Ok(response),
            // Lost on the way: the caller learns only by waiting it out.
            Ok(Err(_)) => {
                tokio::time::sleep_until(deadline).await;
                Err(NetError::Timeout)
            }
            Err(_) => Err(NetError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::net::FaultyTransport;

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// Counts calls and answers with the caller's name.
    #[derive(Default)]
    struct Echo {
        calls: AtomicUsize,
    }

    impl Handler for Echo {
        async fn handle(&self, from: &PeerId, _request: Request) -> Response {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Response::Record(Some(Bytes::from(from.to_owned())))
        }
    }

    fn network(seed: u64) -> (MemNetwork, Arc<Echo>, Arc<Echo>) {
        let net = MemNetwork::new(TIMEOUT, seed);
        let (a, b) = (Arc::new(Echo::default()), Arc::new(Echo::default()));
        net.register("a", a.clone());
        net.register("b", b.clone());
        (net, a, b)
    }

    fn from(name: &'static str) -> Result<Response, NetError> {
        Ok(Response::Record(Some(Bytes::from(name))))
    }

    #[tokio::test(start_paused = true)]
    async fn cut_request_direction_is_unreachable_and_never_delivered() {
        let (net, a, b) = network(1);
        net.cut("a", "b");
        let refused = net.transport("a").call("b", Request::Ping).await;
        assert!(
            matches!(refused, Err(NetError::Unreachable(_))),
            "{refused:?}"
        );
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
        // b's request to a arrives (b -> a is intact); only the answer,
        // travelling a -> b, is lost.
        let lost = net.transport("b").call("a", Request::Ping).await;
        assert_eq!(lost, Err(NetError::Timeout));
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
        net.heal("a", "b");
        assert_eq!(net.transport("a").call("b", Request::Ping).await, from("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn cut_response_direction_is_handled_but_times_out() {
        let (net, _a, b) = network(1);
        net.cut("b", "a");
        let started = Instant::now();
        let lost = net.transport("a").call("b", Request::Ping).await;
        assert_eq!(lost, Err(NetError::Timeout));
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(b.calls.load(Ordering::SeqCst), 1, "the request was applied");
        net.cut_both("a", "b");
        assert!(matches!(
            net.transport("b").call("a", Request::Ping).await,
            Err(NetError::Unreachable(_))
        ));
        net.heal_all();
        assert_eq!(net.transport("b").call("a", Request::Ping).await, from("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn delays_add_up_in_paused_time() {
        let (net, _a, b) = network(1);
        net.set_delay("a", "b", Duration::from_millis(300));
        net.set_delay("b", "a", Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(net.transport("a").call("b", Request::Ping).await, from("a"));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        net.set_delay("a", "b", Duration::from_millis(900));
        let started = Instant::now();
        assert_eq!(
            net.transport("a").call("b", Request::Ping).await,
            Err(NetError::Timeout)
        );
        assert_eq!(started.elapsed(), TIMEOUT);
        // Delivered late all the same.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(b.calls.load(Ordering::SeqCst), 2);
    }

    async fn lossy_run(seed: u64) -> Vec<bool> {
        let (net, _a, _b) = network(seed);
        net.set_drop_probability("a", "b", 0.3);
        net.set_drop_probability("b", "a", 0.3);
        let transport = net.transport("a");
        let mut answered = Vec::new();
        for _ in 0..100 {
            answered.push(transport.call("b", Request::Ping).await.is_ok());
        }
        answered
    }

    #[tokio::test(start_paused = true)]
    async fn drops_with_a_seed_are_deterministic() {
        let first = lossy_run(42).await;
        assert_eq!(first, lossy_run(42).await);
        assert_ne!(first, lossy_run(43).await);
        let answered = first.iter().filter(|ok| **ok).count();
        // Each call survives two 30% drops: about 49 of 100.
        assert!((30..70).contains(&answered), "{answered} of 100 answered");
    }

    #[tokio::test(start_paused = true)]
    async fn isolation_and_unregistered_nodes() {
        let (net, _a, _b) = network(1);
        net.register("c", Arc::new(Echo::default()));
        net.isolate("c");
        assert!(net.transport("a").call("c", Request::Ping).await.is_err());
        assert!(net.transport("c").call("b", Request::Ping).await.is_err());
        assert_eq!(net.transport("a").call("b", Request::Ping).await, from("a"));
        net.rejoin("c");
        assert_eq!(net.transport("a").call("c", Request::Ping).await, from("a"));
        net.unregister("c");
        assert!(matches!(
            net.transport("a").call("c", Request::Ping).await,
            Err(NetError::Unreachable(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn faulty_transport_applies_faults_on_the_sending_side() {
        let (net, _a, b) = network(1);
        let faults = FaultTable::new(9);
        let transport = FaultyTransport::new(net.transport("a"), "a", faults.clone(), TIMEOUT);
        faults.cut("a", "b");
        assert!(matches!(
            transport.call("b", Request::Ping).await,
            Err(NetError::Unreachable(_))
        ));
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
        faults.heal("a", "b");
        faults.cut("b", "a");
        let started = Instant::now();
        assert_eq!(
            transport.call("b", Request::Ping).await,
            Err(NetError::Timeout)
        );
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(b.calls.load(Ordering::SeqCst), 1);
        faults.heal_all();
        faults.set_delay("a", "b", Duration::from_millis(100));
        let started = Instant::now();
        assert_eq!(transport.call("b", Request::Ping).await, from("a"));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }
}
