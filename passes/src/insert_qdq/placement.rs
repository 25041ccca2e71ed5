//! Where Q/DQ go: excluded nodes, the detector's post-processing tail, and
//! the groups of tensors that must share one scale.

use std::collections::{HashMap, HashSet};

use regex::Regex;

use qforge_ir::{Graph, NodeId, ValueId};

use crate::qdq_rules::{SCALE_SHARING_OPS, WEIGHTED_OPS, is_activation};

/// Nodes of the post-processing tail: non-weighted nodes from which no path
/// to a graph output passes a weighted op (a YOLO head's decode: box
/// coordinates in the hundreds concatenated with 0–1 scores, which one INT8
/// scale cannot hold).
pub fn tail_nodes(g: &Graph) -> HashSet<NodeId> {
    // Walk backwards: a node "feeds a weighted op" if any reader is weighted
    // or feeds one.
    let mut feeds: HashMap<NodeId, bool> = HashMap::new();
    let order = g.node_ids();
    for &n in order.iter().rev() {
        let mut f = false;
        for &v in g.node(n).outputs().iter().flatten() {
            for u in g.users(v) {
                if WEIGHTED_OPS.contains(&g.node(u).op_type()) || feeds.get(&u).copied().unwrap_or(false) {
                    f = true;
                }
            }
        }
        feeds.insert(n, f);
    }
    order.into_iter().filter(|n| !WEIGHTED_OPS.contains(&g.node(*n).op_type()) && !feeds[n]).collect()
}

/// User exclusions, compiled.
pub struct Excluder {
    names: HashSet<String>,
    ops: HashSet<String>,
    regex: Vec<Regex>,
}

impl Excluder {
    /// Compiles the lists; a bad regex is an error naming it.
    pub fn new(names: &[String], regex: &[String], ops: &[String]) -> Result<Excluder, String> {
        let regex = regex
            .iter()
            .map(|r| Regex::new(r).map_err(|e| format!("exclude.regex {r:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Excluder { names: names.iter().cloned().collect(), ops: ops.iter().cloned().collect(), regex })
    }

    /// True when the node is excluded by name, op type or regex.
    pub fn excludes(&self, g: &Graph, n: NodeId) -> bool {
        let node = g.node(n);
        self.names.contains(node.name())
            || self.ops.contains(node.op_type())
            || self.regex.iter().any(|r| r.is_match(node.name()))
    }

    /// Names given that match no node (typos), for the report.
    pub fn unmatched_names(&self, g: &Graph) -> Vec<String> {
        let present: HashSet<&str> = g.nodes().map(|n| g.node(n).name()).collect();
        let mut v: Vec<String> = self.names.iter().filter(|n| !present.contains(n.as_str())).cloned().collect();
        v.sort();
        v
    }
}

/// Union-find over values: tensors joined by a scale-sharing op (Concat
/// inputs and output; pooling and Resize input and output) end up in one
/// group and get one scale, so TensorRT needs no requantize between them.
pub struct Groups {
    parent: HashMap<ValueId, ValueId>,
}

impl Groups {
    /// Groups over the non-excluded scale-sharing nodes.
    pub fn new(g: &Graph, excluded: &HashSet<NodeId>) -> Groups {
        let mut s = Groups { parent: HashMap::new() };
        for n in g.nodes() {
            let node = g.node(n);
            if excluded.contains(&n) || !SCALE_SHARING_OPS.contains(&node.op_type()) {
                continue;
            }
            let Some(out) = node.output(0) else { continue };
            let ins: Vec<ValueId> = if node.op_type() == "Concat" {
                node.inputs().iter().flatten().copied().collect()
            } else {
                node.input(0).into_iter().collect()
            };
            for v in ins {
                if is_activation(g, v) {
                    s.union(v, out);
                }
            }
        }
        s
    }

    fn find(&mut self, v: ValueId) -> ValueId {
        let p = *self.parent.get(&v).unwrap_or(&v);
        if p == v {
            return v;
        }
        let r = self.find(p);
        self.parent.insert(v, r);
        r
    }

    fn union(&mut self, a: ValueId, b: ValueId) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // Deterministic: the smaller id becomes the root.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent.insert(hi, lo);
        }
    }

    /// Every member of `v`'s group (just `v` when it is alone).
    pub fn members(&mut self, v: ValueId) -> Vec<ValueId> {
        let keys: Vec<ValueId> = self.parent.keys().copied().collect();
        let root = self.find(v);
        let mut out: Vec<ValueId> = keys.into_iter().filter(|&k| self.find(k) == root).collect();
        if !out.contains(&v) {
            out.push(v);
        }
        out.sort();
        out
    }

    /// Number of groups with more than one member.
    pub fn shared_count(&mut self) -> usize {
        let keys: Vec<ValueId> = self.parent.keys().copied().collect();
        let mut roots: HashMap<ValueId, usize> = HashMap::new();
        for k in keys {
            *roots.entry(self.find(k)).or_default() += 1;
        }
        roots.values().filter(|&&c| c > 1).count()
    }
}
