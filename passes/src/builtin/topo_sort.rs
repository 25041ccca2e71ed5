//! nodes in any order => the same nodes in topological order, file order kept wherever it is legal.
//!
//! ONNX requires topologically sorted nodes, but some exporters and hand
//! edits break that; every other pass and the verifier rely on it. The sort
//! is Kahn's algorithm that always picks the ready node that came first in
//! the file, so an already sorted graph is left exactly as it is.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, NodeId, ValueDef};

use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `topo-sort` (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopoSort {}

impl PassOptions for TopoSort {}

register_pass!("topo-sort", TopoSort, "nodes in any order => stable topological order (file order kept where legal)");

impl Pass for TopoSort {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let order = g.node_ids();
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut pending: HashMap<NodeId, usize> = HashMap::new();
        let mut readers: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for &n in &order {
            let node = g.node(n);
            let mut deps = 0;
            for &v in node.inputs().iter().flatten().chain(node.implicit_inputs()) {
                if let ValueDef::Node(p, _) = g.value(v).def() {
                    deps += 1;
                    readers.entry(p).or_default().push(n);
                }
            }
            pending.insert(n, deps);
        }
        let mut ready: BinaryHeap<Reverse<usize>> =
            order.iter().filter(|n| pending[n] == 0).map(|n| Reverse(pos[n])).collect();
        let mut sorted = Vec::with_capacity(order.len());
        while let Some(Reverse(i)) = ready.pop() {
            let n = order[i];
            sorted.push(n);
            for r in readers.get(&n).map(Vec::as_slice).unwrap_or(&[]) {
                let c = pending.get_mut(r).expect("every reader is a node");
                *c -= 1;
                if *c == 0 {
                    ready.push(Reverse(pos[r]));
                }
            }
        }
        if sorted.len() != order.len() {
            let stuck: Vec<String> = order
                .iter()
                .filter(|n| pending[n] > 0)
                .take(5)
                .map(|&n| format!("\"{}\" ({})", g.node(n).name(), g.node(n).op_type()))
                .collect();
            return Err(PassError::msg(format!("the graph has a cycle through {}", stuck.join(", "))));
        }
        let moved = sorted.iter().zip(&order).filter(|(a, b)| a != b).count() as u64;
        let mut r = PassReport::default();
        if moved > 0 {
            g.set_order(sorted).map_err(|e| PassError::ir("reordering", e))?;
        }
        r.count("moved", moved);
        Ok(r)
    }
}
