//! Link faults for tests: cut, delayed and lossy links between named nodes,
//! per direction, changeable while the cluster runs.
//!
//! A [`FaultTable`] is shared by the in-memory network and by
//! [`FaultyTransport`], which puts the same faults in front of any real
//! transport. Invariants: a link is keyed by the ordered pair (from, to), so
//! one direction can fail alone; drops are decided by a per-link xorshift
//! generator seeded from the table's seed and the link's names, so a seeded
//! run drops the same messages of a link every time, whatever other links do.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{NetError, PeerId, Request, Response, Transport};

/// What happens to one message on one link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fate {
    /// The link is cut: the sender learns at once (connection refused).
    Cut,
    /// The message is silently lost.
    Lost,
    /// The message arrives after this delay.
    Deliver(Duration),
}

/// A small, seedable generator (xorshift64*); tests need reproducibility,
/// not quality.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // splitmix64 scramble, so nearby seeds diverge and the state is never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The faults of one direction of one link.
#[derive(Debug, Clone)]
struct Link {
    cut: bool,
    delay: Duration,
    drop_probability: f64,
    rng: XorShift,
}

#[derive(Debug, Default)]
struct Faults {
    seed: u64,
    /// from -> to -> faults (nested so lookups by `&str` do not allocate).
    links: HashMap<String, HashMap<String, Link>>,
    isolated: HashSet<String>,
}

impl Faults {
    fn link(&mut self, from: &str, to: &str) -> &mut Link {
        let seed = self.seed ^ xxhash_rust::xxh3::xxh3_64(format!("{from}\0{to}").as_bytes());
        self.links
            .entry(from.to_owned())
            .or_default()
            .entry(to.to_owned())
            .or_insert_with(|| Link {
                cut: false,
                delay: Duration::ZERO,
                drop_probability: 0.0,
                rng: XorShift::new(seed),
            })
    }
}

/// Runtime-controllable link faults. Cheap to clone; clones share state.
/// Nothing is faulty until told.
#[derive(Debug, Clone, Default)]
pub struct FaultTable {
    // NOTE: a plain mutex: held for one lookup per message, never across an await.
    inner: Arc<Mutex<Faults>>,
    /// False while the table holds no fault at all, so a transport that
    /// carries an empty table (every node of the real binary) skips the
    /// lock: one relaxed load per call. Only ever changed under `inner`.
    active: Arc<AtomicBool>,
}

impl FaultTable {
    /// A table whose drop decisions derive from `seed`.
    pub fn new(seed: u64) -> Self {
        let faults = Faults {
            seed,
            ..Faults::default()
        };
        Self {
            inner: Arc::new(Mutex::new(faults)),
            active: Arc::default(),
        }
    }

    /// Runs `change` on the faults and refreshes the `active` flag.
    fn update<R>(&self, change: impl FnOnce(&mut Faults) -> R) -> R {
        let mut faults = self.inner.lock();
        let result = change(&mut faults);
        let active = !faults.isolated.is_empty() || faults.links.values().any(|l| !l.is_empty());
        self.active.store(active, Ordering::Release);
        result
    }

    /// Whether any link of the table is faulty (cheap: no lock).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Cuts `from -> to`: requests that way fail with `Unreachable`, and
    /// responses that way are lost (their caller times out).
    pub fn cut(&self, from: &str, to: &str) {
        self.update(|f| f.link(from, to).cut = true);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: &str, b: &str) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Removes every fault (cut, delay, loss) of `from -> to`; isolation stays.
    pub fn heal(&self, from: &str, to: &str) {
        self.update(|f| {
            if let Some(links) = f.links.get_mut(from) {
                links.remove(to);
            }
        });
    }

    /// Heals both directions between `a` and `b`.
    pub fn heal_both(&self, a: &str, b: &str) {
        self.heal(a, b);
        self.heal(b, a);
    }

    /// Removes every fault of every link, and every isolation.
    pub fn heal_all(&self) {
        self.update(|f| {
            f.links.clear();
            f.isolated.clear();
        });
    }

    /// Delays every message `from -> to` by `delay`.
    pub fn set_delay(&self, from: &str, to: &str, delay: Duration) {
        self.update(|f| f.link(from, to).delay = delay);
    }

    /// Loses each message `from -> to` with probability `p` (clamped to [0, 1]).
    pub fn set_drop_probability(&self, from: &str, to: &str, p: f64) {
        self.update(|f| f.link(from, to).drop_probability = p.clamp(0.0, 1.0));
    }

    /// Cuts every link to and from `node`, including links to nodes that
    /// join later, until [`FaultTable::rejoin`] or [`FaultTable::heal_all`].
    pub fn isolate(&self, node: &str) {
        self.update(|f| f.isolated.insert(node.to_owned()));
    }

    /// Ends the isolation of `node` (per-link faults stay).
    pub fn rejoin(&self, node: &str) {
        self.update(|f| f.isolated.remove(node));
    }

    /// Whether messages `from -> to` are cut (by the link or an isolation).
    pub fn is_cut(&self, from: &str, to: &str) -> bool {
        let faults = self.inner.lock();
        faults.isolated.contains(from)
            || faults.isolated.contains(to)
            || faults
                .links
                .get(from)
                .and_then(|l| l.get(to))
                .is_some_and(|l| l.cut)
    }

    /// Decides the fate of one message `from -> to` (advances the link's
    /// generator if the link is lossy).
    pub(crate) fn fate(&self, from: &str, to: &str) -> Fate {
        let mut faults = self.inner.lock();
        if faults.isolated.contains(from) || faults.isolated.contains(to) {
            return Fate::Cut;
        }
        let Some(link) = faults.links.get_mut(from).and_then(|l| l.get_mut(to)) else {
            return Fate::Deliver(Duration::ZERO);
        };
        if link.cut {
            return Fate::Cut;
        }
        if link.drop_probability > 0.0 && link.rng.next_f64() < link.drop_probability {
            return Fate::Lost;
        }
        Fate::Deliver(link.delay)
    }
}

/// Waits out a delivery delay (no yield when there is none).
pub(crate) async fn delay(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// Puts a [`FaultTable`] in front of a real transport, on the sending side:
/// a cut request link fails fast with `Unreachable`; a lost request, or a
/// cut or lost response link, costs the caller the full `request_timeout`
/// and yields `Timeout` (with a cut response link the request *is* delivered
/// and handled, as in a real partition).
#[derive(Debug, Clone)]
pub struct FaultyTransport<T> {
    inner: T,
    me: String,
    faults: FaultTable,
    request_timeout: Duration,
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner`, which sends as node `me`.
    pub fn new(
        inner: T,
        me: impl Into<String>,
        faults: FaultTable,
        request_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            me: me.into(),
            faults,
            request_timeout,
        }
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The faults this transport obeys.
    pub fn faults(&self) -> &FaultTable {
        &self.faults
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    async fn call(&self, to: &PeerId, request: Request) -> Result<Response, NetError> {
        if !self.faults.is_active() {
            return self.inner.call(to, request).await;
        }
        // NOTE: boxed, so the future of a call without faults (every call
        // in production) does not carry the faulty path's timers.
        Box::pin(self.faulty_call(to, request)).await
    }
}

impl<T: Transport> FaultyTransport<T> {
    /// A call while some fault is set.
    async fn faulty_call(&self, to: &PeerId, request: Request) -> Result<Response, NetError> {
        let deadline = Instant::now() + self.request_timeout;
        let request_fate = self.faults.fate(&self.me, to);
        if request_fate == Fate::Cut {
            return Err(NetError::Unreachable(format!(
                "link {} -> {to} is cut",
                self.me
            )));
        }
        let exchange = async {
            let Fate::Deliver(d) = request_fate else {
                return std::future::pending().await;
            };
            delay(d).await;
            let response = self.inner.call(to, request).await?;
            match self.faults.fate(to, &self.me) {
                Fate::Cut | Fate::Lost => std::future::pending().await,
                Fate::Deliver(d) => delay(d).await,
            }
            Ok(response)
        };
        super::before(deadline, exchange).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_direction_cut_alone() {
        let t = FaultTable::new(1);
        t.cut("a", "b");
        assert_eq!(t.fate("a", "b"), Fate::Cut);
        assert_eq!(t.fate("b", "a"), Fate::Deliver(Duration::ZERO));
        t.heal("a", "b");
        assert_eq!(t.fate("a", "b"), Fate::Deliver(Duration::ZERO));
        t.isolate("c");
        assert!(t.is_cut("c", "a") && t.is_cut("a", "c"));
        assert!(t.is_active());
        t.heal_all();
        assert!(!t.is_cut("c", "a"));
        assert!(!t.is_active(), "an empty table is inactive");
        t.set_delay("a", "b", Duration::from_millis(5));
        assert!(t.is_active());
        t.heal("a", "b");
        assert!(
            !t.is_active(),
            "healing the last faulty link deactivates the table"
        );
    }

    #[test]
    fn drops_are_deterministic_per_seed_and_link() {
        let run = |seed: u64, noise: bool| {
            let t = FaultTable::new(seed);
            t.set_drop_probability("a", "b", 0.5);
            t.set_drop_probability("x", "y", 0.5);
            (0..200)
                .map(|_| {
                    if noise {
                        t.fate("x", "y");
                    }
                    t.fate("a", "b") == Fate::Lost
                })
                .collect::<Vec<_>>()
        };
        let first = run(7, false);
        assert_eq!(
            first,
            run(7, true),
            "other links must not shift a link's drops"
        );
        assert_ne!(first, run(8, false));
        let lost = first.iter().filter(|l| **l).count();
        assert!((60..140).contains(&lost), "lost {lost} of 200 at p = 0.5");
    }
}
