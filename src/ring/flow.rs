//! Flow: an exact minimum-cost maximum flow for the claim (`claim.rs`).
//!
//! A directed graph with integer capacities and small non-negative integer
//! costs. [`Graph::min_cost_max_flow`] pushes as much flow as it can from a
//! source to a sink at the least total cost, starting from whatever flow the
//! caller already placed (that flow must use cost-0 edges only, so it is a
//! cheapest flow of its value and the potentials may start at zero).
//!
//! The method is primal-dual: a Dijkstra search on reduced costs updates the
//! node potentials, then a blocking flow (Dinic) saturates every shortest
//! path at once, and the two repeat until the sink is unreachable.
//! Invariant: every residual edge keeps a non-negative reduced cost, so each
//! augmentation is along a cheapest path and the final flow is a cheapest
//! maximum flow. Deterministic: edges are tried in insertion order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Index of a vertex.
pub(super) type Vertex = usize;

/// Index of an edge; `e ^ 1` is its residual twin.
pub(super) type Edge = usize;

/// Unreached distance.
const FAR: i64 = i64::MAX / 4;

/// `x` as an edge capacity: 0 below zero, `i32::MAX` above it.
pub(super) fn capacity(x: i64) -> i32 {
    i32::try_from(x.max(0)).unwrap_or(i32::MAX)
}

/// A flow network in adjacency-list form.
pub(super) struct Graph {
    /// Edges leaving each vertex, in insertion order.
    out: Vec<Vec<Edge>>,
    /// Head of each edge.
    to: Vec<Vertex>,
    /// Remaining capacity of each edge.
    cap: Vec<i32>,
    /// Cost per unit of flow; the twin has the negation.
    cost: Vec<i64>,
    /// Vertex potentials of the last search (the optimality certificate).
    dual: Vec<i64>,
}

impl Graph {
    pub(super) fn new() -> Self {
        Self {
            out: Vec::new(),
            to: Vec::new(),
            cap: Vec::new(),
            cost: Vec::new(),
            dual: Vec::new(),
        }
    }

    /// Adds a vertex and returns it.
    pub(super) fn vertex(&mut self) -> Vertex {
        self.out.push(Vec::new());
        self.out.len() - 1
    }

    /// Adds an edge `from -> to` and returns it (its twin is `edge ^ 1`).
    pub(super) fn edge(&mut self, from: Vertex, to: Vertex, cap: i32, cost: i64) -> Edge {
        assert!(cost >= 0, "the claim only uses non-negative costs");
        let e = self.to.len();
        self.to.extend([to, from]);
        self.cap.extend([cap, 0]);
        self.cost.extend([cost, -cost]);
        self.out[from].push(e);
        self.out[to].push(e ^ 1);
        e
    }

    /// Flow on a forward edge.
    pub(super) fn flow(&self, e: Edge) -> i32 {
        self.cap[e ^ 1]
    }

    /// Remaining capacity of an edge.
    pub(super) fn room(&self, e: Edge) -> i32 {
        self.cap[e]
    }

    /// Pushes one unit along a path of forward cost-0 edges, each of which
    /// must have room (the caller's starting flow).
    pub(super) fn push_unit(&mut self, path: &[Edge]) {
        for &e in path {
            assert!(
                self.cap[e] > 0 && self.cost[e] == 0,
                "starting flow uses free cost-0 edges"
            );
            self.cap[e] -= 1;
            self.cap[e ^ 1] += 1;
        }
    }

    /// Pushes the most flow it can from `source` to `sink` on top of the
    /// current flow, at the least cost; returns the flow added.
    pub(super) fn min_cost_max_flow(&mut self, source: Vertex, sink: Vertex) -> i64 {
        let n = self.out.len();
        let mut dual = vec![0i64; n];
        let mut added = 0;
        while self.refine_duals(source, sink, &mut dual) {
            added += self.blocking_flows(source, sink, &dual);
        }
        self.dual = dual;
        added
    }

    /// The total cost of the current flow.
    #[cfg(test)]
    pub(super) fn total_cost(&self) -> i64 {
        let forward = (0..self.to.len()).step_by(2);
        forward
            .map(|e| self.cost[e] * i64::from(self.flow(e)))
            .sum()
    }

    /// Whether the last search's potentials certify that no cheaper flow of
    /// the same size exists: every residual edge has a non-negative reduced
    /// cost, so the residual graph has no negative cycle.
    #[cfg(test)]
    pub(super) fn certified_cheapest(&self) -> bool {
        self.dual.len() == self.out.len()
            && (0..self.to.len()).all(|e| self.cap[e] == 0 || self.reduced(e, &self.dual) >= 0)
    }

    fn reduced(&self, e: Edge, dual: &[i64]) -> i64 {
        let from = self.to[e ^ 1];
        self.cost[e] - dual[self.to[e]] + dual[from]
    }

    /// Dijkstra on reduced costs; lowers the potential of every settled
    /// vertex so that the cheapest paths to `sink` have reduced cost 0.
    /// Returns whether `sink` is reachable.
    fn refine_duals(&self, source: Vertex, sink: Vertex, dual: &mut [i64]) -> bool {
        let n = self.out.len();
        let mut dist = vec![FAR; n];
        let mut settled = vec![false; n];
        let mut order = Vec::new();
        let mut heap = BinaryHeap::new();
        dist[source] = 0;
        heap.push(Reverse((0i64, source)));
        while let Some(Reverse((d, v))) = heap.pop() {
            if settled[v] {
                continue;
            }
            settled[v] = true;
            order.push(v);
            if v == sink {
                break;
            }
            for &e in &self.out[v] {
                if self.cap[e] == 0 {
                    continue;
                }
                let w = self.to[e];
                let next = d + self.reduced(e, dual);
                if !settled[w] && next < dist[w] {
                    dist[w] = next;
                    heap.push(Reverse((next, w)));
                }
            }
        }
        if !settled[sink] {
            return false;
        }
        // NOTE: only settled vertices move (as in the AtCoder library's
        // primal-dual), which keeps every residual reduced cost >= 0.
        for v in order {
            dual[v] -= dist[sink] - dist[v];
        }
        true
    }

    /// Dinic's blocking flows on the edges of reduced cost 0 until `sink`
    /// is unreachable through them.
    fn blocking_flows(&mut self, source: Vertex, sink: Vertex, dual: &[i64]) -> i64 {
        let n = self.out.len();
        let mut added = 0;
        loop {
            let mut level = vec![u32::MAX; n];
            level[source] = 0;
            let mut queue = VecDeque::from([source]);
            while let Some(v) = queue.pop_front() {
                for &e in &self.out[v] {
                    let w = self.to[e];
                    if self.cap[e] > 0 && level[w] == u32::MAX && self.reduced(e, dual) == 0 {
                        level[w] = level[v] + 1;
                        queue.push_back(w);
                    }
                }
            }
            if level[sink] == u32::MAX {
                return added;
            }
            let mut next_arc = vec![0usize; n];
            loop {
                let pushed = self.augment(source, sink, dual, &mut level, &mut next_arc);
                if pushed == 0 {
                    break;
                }
                added += i64::from(pushed);
            }
        }
    }

    /// One augmenting path of the level graph (iterative depth-first search
    /// with current-arc pointers); returns the flow pushed, 0 if none.
    fn augment(
        &mut self,
        source: Vertex,
        sink: Vertex,
        dual: &[i64],
        level: &mut [u32],
        next_arc: &mut [usize],
    ) -> i32 {
        let mut path: Vec<Edge> = Vec::new();
        let mut v = source;
        loop {
            if v == sink {
                let pushed = path.iter().map(|&e| self.cap[e]).min().unwrap_or(0);
                for &e in &path {
                    self.cap[e] -= pushed;
                    self.cap[e ^ 1] += pushed;
                }
                return pushed;
            }
            let mut advanced = false;
            while next_arc[v] < self.out[v].len() {
                let e = self.out[v][next_arc[v]];
                let w = self.to[e];
                let fits = self.cap[e] > 0
                    && level[w] != u32::MAX
                    && level[w] == level[v] + 1
                    && self.reduced(e, dual) == 0;
                if fits {
                    path.push(e);
                    v = w;
                    advanced = true;
                    break;
                }
                next_arc[v] += 1;
            }
            if advanced {
                continue;
            }
            // Dead end: retire `v` and step back.
            level[v] = u32::MAX;
            let Some(e) = path.pop() else {
                return 0;
            };
            v = self.to[e ^ 1];
            next_arc[v] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cheapest_assignment() {
        // Two workers, two jobs; worker 0 is cheap for job 1 only.
        let mut g = Graph::new();
        let (s, t) = (g.vertex(), g.vertex());
        let workers = [g.vertex(), g.vertex()];
        let jobs = [g.vertex(), g.vertex()];
        for &w in &workers {
            g.edge(s, w, 1, 0);
        }
        let e00 = g.edge(workers[0], jobs[0], 1, 1);
        let e01 = g.edge(workers[0], jobs[1], 1, 0);
        let e10 = g.edge(workers[1], jobs[0], 1, 1);
        let e11 = g.edge(workers[1], jobs[1], 1, 1);
        for &j in &jobs {
            g.edge(j, t, 1, 0);
        }
        assert_eq!(g.min_cost_max_flow(s, t), 2);
        assert!(g.certified_cheapest());
        assert_eq!(g.total_cost(), 1);
        assert_eq!(
            [e00, e01, e10, e11].map(|e| g.flow(e)),
            [0, 1, 1, 0],
            "worker 0 takes its free job"
        );
    }

    #[test]
    fn reroutes_a_starting_flow_when_that_is_cheaper() {
        // Worker 0 starts on job 0 (free); job 1 can only go to worker 0,
        // so worker 0 must give job 0 to worker 1 at cost 1.
        let mut g = Graph::new();
        let (s, t) = (g.vertex(), g.vertex());
        let (w0, w1, j0, j1) = (g.vertex(), g.vertex(), g.vertex(), g.vertex());
        let s0 = g.edge(s, j0, 1, 0);
        g.edge(s, j1, 1, 0);
        let a = g.edge(j0, w0, 1, 0);
        let b = g.edge(j0, w1, 1, 1);
        let c = g.edge(j1, w0, 1, 1);
        let t0 = g.edge(w0, t, 1, 0);
        g.edge(w1, t, 1, 0);
        g.push_unit(&[s0, a, t0]);
        assert_eq!(g.min_cost_max_flow(s, t), 1);
        assert_eq!([a, b, c].map(|e| g.flow(e)), [0, 1, 1]);
        assert_eq!(g.room(a), 1);
    }
}
