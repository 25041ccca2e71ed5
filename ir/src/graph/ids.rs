//! Node and value identity, and the graph's mutation counter.
//!
//! Why ids are not petgraph indices: `StableDiGraph` hands a freed node slot
//! to the next `add_node`, so after `remove_node` + `insert_node` (which is
//! what `replace_node` does) an index kept from before silently names the new
//! node. A pass holding such an id — or a clone of the graph made before a
//! rewrite, indexed with ids of the rewritten graph — would then read or
//! change the wrong op without any error.
//!
//! So a [`NodeId`] / [`ValueId`] is a sequence number that is never handed
//! out twice, plus the tag of the graph *lineage* it belongs to. A lineage is
//! a graph and every clone of it: they share one id allocator ([`IdSpace`],
//! behind an `Arc`), so ids created in one copy after a clone are numbers the
//! other copy has never seen — unknown there, never another node. Ids of an
//! unrelated graph carry another tag and are unknown too. The graph maps
//! sequence numbers to petgraph indices with a dense table (`node_slots`;
//! values live directly in the dense `values` table), so a lookup is one
//! tag compare and one array index on top of petgraph's own.
//!
//! The alternative, never freeing petgraph slots (tombstone nodes), was
//! rejected: it keeps every removed node's weight alive and, more
//! importantly, still aliases across clones (two copies each add "the next
//! slot"), which is the case `skip-sensitive`'s float reference hits.
//! Cost, measured with the `graph_timing` example on the 482-node YOLOv8s
//! torch export (instructions under callgrind, one run; wall-time changes
//! were below the noise of a shared machine): export unchanged, import
//! +11 % (3.5 M → 3.8 M, against 56 M to decode the protobuf), a mutation
//! workload touching every node +4 %, verify +25 % (3.1 M → 3.8 M), a pure
//! lookup walk +20 % (about one compare and one index more per lookup).
//!
//! The mutation counter ([`Graph::generation`]) is drawn from one
//! process-wide sequence, so equal generations mean "the same state": a
//! graph and its unmodified clones. Every mutation API call that can change
//! the graph takes a fresh number; [`Graph::node_mut`] does so whether or not
//! the caller then writes, so read-only code uses [`Graph::node`].

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use petgraph::stable_graph::NodeIndex;

use super::{Edge, Graph, Node, Value};

/// Handle of an op node. Never reused: once its node is removed, the id
/// names nothing (lookups fail, [`Graph::try_node`] returns `None`). Valid in
/// the graph that made it and in clones made after it was created.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    lineage: u32,
    seq: u32,
}

/// Handle of a value (tensor). Never reused, like [`NodeId`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId {
    lineage: u32,
    seq: u32,
}

impl NodeId {
    /// A number for diagnostics (`n12`): unique within the graph and its
    /// clones, in creation order.
    pub fn index(self) -> usize {
        self.seq as usize
    }
}

impl ValueId {
    /// A number for diagnostics and side tables: unique within the graph and
    /// its clones, in creation order.
    pub fn index(self) -> usize {
        self.seq as usize
    }
}

// The lineage tag is left out on purpose: it depends on how many graphs the
// process made before, and diagnostics must be reproducible.
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.seq)
    }
}
impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.seq)
    }
}
impl fmt::Debug for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Tags of lineages created so far in this process.
static LINEAGES: AtomicU32 = AtomicU32::new(0);
/// The process-wide source of generation numbers.
static TICKS: AtomicU64 = AtomicU64::new(1);

/// The id allocator of one lineage (a graph and its clones, which share it).
#[derive(Debug)]
pub(crate) struct IdSpace {
    lineage: u32,
    next_node: AtomicU64,
    next_value: AtomicU64,
}

impl Default for IdSpace {
    fn default() -> Self {
        IdSpace { lineage: LINEAGES.fetch_add(1, Ordering::Relaxed), next_node: 0.into(), next_value: 0.into() }
    }
}

/// The next number of `counter`; 64-bit so it cannot wrap back to a used id.
fn take(counter: &AtomicU64, what: &str) -> u32 {
    let i = counter.fetch_add(1, Ordering::Relaxed);
    u32::try_from(i).unwrap_or_else(|_| panic!("graph lineage ran out of {what} ids (2^32 created)"))
}

/// A graph's mutation counter; a fresh graph starts with a fresh number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation(u64);

impl Default for Generation {
    fn default() -> Self {
        Generation(TICKS.fetch_add(1, Ordering::Relaxed))
    }
}

/// One entry of a dense id table.
#[derive(Debug, Clone, Default)]
pub(crate) enum Slot<T> {
    /// Never created in this graph (made by another copy after the clone).
    #[default]
    Unknown,
    /// Live.
    Live(T),
    /// Created here, then removed.
    Removed,
}

impl<T> Slot<T> {
    pub(crate) fn live(&self) -> Option<&T> {
        match self {
            Slot::Live(t) => Some(t),
            _ => None,
        }
    }
    fn live_mut(&mut self) -> Option<&mut T> {
        match self {
            Slot::Live(t) => Some(t),
            _ => None,
        }
    }
}

/// Puts `item` at `seq` of `table`, padding the numbers other copies took.
fn put<T>(table: &mut Vec<Slot<T>>, seq: u32, item: T) {
    let i = seq as usize;
    if table.len() <= i {
        table.resize_with(i + 1, Slot::default);
    }
    table[i] = Slot::Live(item);
}

impl Graph {
    /// A number that changes on every mutation. Equal generations mean the
    /// same state: a graph and its clones until one of them is changed, so a
    /// pass manager can tell from the graph itself whether a pass changed
    /// it. [`Graph::node_mut`] counts as a change even if the caller only
    /// reads; read through [`Graph::node`].
    pub fn generation(&self) -> u64 {
        self.generation.0
    }

    /// Records a change (a fresh generation number).
    pub(crate) fn touch(&mut self) {
        self.generation = Generation::default();
    }

    /// The petgraph index of `n`, if `n` is live here.
    #[inline]
    pub(crate) fn ix(&self, n: NodeId) -> Option<NodeIndex<u32>> {
        if n.lineage != self.ids.lineage {
            return None;
        }
        self.node_slots.get(n.seq as usize).and_then(Slot::live).copied()
    }

    /// The petgraph index of live node `n`.
    ///
    /// # Panics
    /// If `n` is stale, like [`Graph::node`].
    #[track_caller]
    #[inline]
    pub(crate) fn live_ix(&self, n: NodeId) -> NodeIndex<u32> {
        match self.ix(n) {
            Some(ix) => ix,
            None => self.stale_node(n),
        }
    }

    /// Gives the just-added petgraph node `ix` a fresh id.
    pub(crate) fn register_node(&mut self, ix: NodeIndex<u32>) -> NodeId {
        self.touch();
        let seq = take(&self.ids.next_node, "node");
        put(&mut self.node_slots, seq, ix);
        NodeId { lineage: self.ids.lineage, seq }
    }

    /// Retires `n` for good and returns its petgraph index.
    #[track_caller]
    pub(crate) fn unregister_node(&mut self, n: NodeId) -> NodeIndex<u32> {
        let ix = self.live_ix(n);
        self.touch();
        self.node_slots[n.seq as usize] = Slot::Removed;
        ix
    }

    /// Stores a new value under a fresh id.
    pub(crate) fn register_value(&mut self, value: Value) -> ValueId {
        self.touch();
        let seq = take(&self.ids.next_value, "value");
        put(&mut self.values, seq, value);
        ValueId { lineage: self.ids.lineage, seq }
    }

    /// Retires `v` for good.
    #[track_caller]
    pub(crate) fn unregister_value(&mut self, v: ValueId) {
        if self.try_value(v).is_none() {
            self.stale_value(v);
        }
        self.touch();
        self.values[v.seq as usize] = Slot::Removed;
    }

    /// The node, or `None` when `n` names no live node of this graph: it was
    /// removed, belongs to an unrelated graph, or was created in another copy
    /// after this graph was cloned from it.
    #[inline]
    pub fn try_node(&self, n: NodeId) -> Option<&Node> {
        self.ix(n).and_then(|ix| self.dag.node_weight(ix))
    }

    /// The node.
    ///
    /// # Panics
    /// If `n` is stale (see [`Graph::try_node`]): a bug in the calling pass.
    /// The message names the id and why it does not resolve.
    #[track_caller]
    #[inline]
    pub fn node(&self, n: NodeId) -> &Node {
        match self.try_node(n) {
            Some(node) => node,
            None => self.stale_node(n),
        }
    }

    /// The node, mutably (name, op type, attributes). Counts as a change
    /// (see [`Graph::generation`]).
    ///
    /// # Panics
    /// If `n` is stale, like [`Graph::node`].
    #[track_caller]
    pub fn node_mut(&mut self, n: NodeId) -> &mut Node {
        let ix = self.live_ix(n);
        self.touch();
        match self.dag.node_weight_mut(ix) {
            Some(node) => node,
            None => unreachable!("id table names a petgraph slot that holds no node"),
        }
    }

    /// True while the node exists.
    #[inline]
    pub fn contains_node(&self, n: NodeId) -> bool {
        self.ix(n).is_some()
    }

    /// The value, or `None` when `v` names no live value of this graph (see
    /// [`Graph::try_node`]).
    #[inline]
    pub fn try_value(&self, v: ValueId) -> Option<&Value> {
        if v.lineage != self.ids.lineage {
            return None;
        }
        self.values.get(v.seq as usize).and_then(Slot::live)
    }

    /// The value.
    ///
    /// # Panics
    /// If `v` is stale (see [`Graph::try_value`]); the message names the id.
    #[track_caller]
    #[inline]
    pub fn value(&self, v: ValueId) -> &Value {
        match self.try_value(v) {
            Some(val) => val,
            None => self.stale_value(v),
        }
    }

    /// The value, mutably; counts as a change.
    #[track_caller]
    pub(crate) fn value_mut(&mut self, v: ValueId) -> &mut Value {
        self.touch();
        self.value_mut_untracked(v)
    }

    /// The value, mutably, without counting a change: for callers that
    /// [`touch`](Graph::touch) themselves once they know they changed it.
    #[track_caller]
    pub(crate) fn value_mut_untracked(&mut self, v: ValueId) -> &mut Value {
        if self.try_value(v).is_none() {
            self.stale_value(v);
        }
        match self.values.get_mut(v.seq as usize).and_then(Slot::live_mut) {
            Some(val) => val,
            None => unreachable!("checked live above"),
        }
    }

    /// True while the value exists.
    #[inline]
    pub fn contains_value(&self, v: ValueId) -> bool {
        self.try_value(v).is_some()
    }

    /// All live values, in creation order.
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> + '_ {
        let lineage = self.ids.lineage;
        self.values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.live().is_some())
            .map(move |(i, _)| ValueId { lineage, seq: i as u32 })
    }

    /// The weights of the petgraph edges from `from` to `to` (none when
    /// either is not live).
    pub(crate) fn edges_between(&self, from: NodeId, to: NodeId) -> impl Iterator<Item = &Edge> + '_ {
        let pair = self.ix(from).zip(self.ix(to));
        pair.into_iter().flat_map(move |(a, b)| self.dag.edges_connecting(a, b).map(|e| e.weight()))
    }

    fn why_missing<T>(&self, lineage: u32, seq: u32, table: &[Slot<T>]) -> &'static str {
        if lineage != self.ids.lineage {
            "it belongs to another graph (ids are meaningful only in the graph that made them and its clones)"
        } else if matches!(table.get(seq as usize), Some(Slot::Removed)) {
            "it was removed"
        } else {
            "it was created in another copy of this graph after the copies were cloned apart"
        }
    }

    #[cold]
    #[track_caller]
    fn stale_node(&self, n: NodeId) -> ! {
        let why = self.why_missing(n.lineage, n.seq, &self.node_slots);
        panic!("stale NodeId: node {n} is not in graph \"{}\": {why} (a bug in the calling pass)", self.name())
    }

    #[cold]
    #[track_caller]
    fn stale_value(&self, v: ValueId) -> ! {
        let why = self.why_missing(v.lineage, v.seq, &self.values);
        panic!("stale ValueId: value {v} is not in graph \"{}\": {why} (a bug in the calling pass)", self.name())
    }
}
