//! Small helpers shared by passes.

use qforge_ir::{Graph, NodeId, Tensor, ValueId};

use crate::context::PassError;

/// The constant value of input `slot` of `n`, if it is a constant.
pub fn const_input(g: &Graph, n: NodeId, slot: usize) -> Option<Tensor> {
    g.node(n).input(slot).and_then(|v| g.constant(v))
}

/// `node "name" (Op)` for messages.
pub fn describe(g: &Graph, n: NodeId) -> String {
    let node = g.node(n);
    format!("node \"{}\" ({})", node.name(), node.op_type())
}

/// The only node reading `v`, when `v` has exactly one reader and is not a
/// graph output.
pub fn sole_user(g: &Graph, v: ValueId) -> Option<NodeId> {
    let users = g.users(v);
    (users.len() == 1 && g.uses(v).len() == 1 && !g.is_graph_output(v)).then(|| users[0])
}

/// f32 data of a constant, with an error naming the node when it is not float.
pub fn f32_data(g: &Graph, t: &Tensor, n: NodeId, what: &str) -> Result<Vec<f32>, PassError> {
    t.to_f32_vec().map_err(|e| PassError::msg(format!("{} {what}: {e}", describe(g, n))))
}

/// Removes every value in `vs` that is left with no reader and no producer
/// (e.g. initializers a rewrite stopped using).
pub fn remove_if_unused(g: &mut Graph, vs: impl IntoIterator<Item = ValueId>) {
    for v in vs {
        if g.contains_value(v) && g.reader_count(v) == 0 && g.producer(v).is_none() && !g.is_graph_input(v) {
            let _ = g.remove_value(v);
        }
    }
}

/// Removes, until none is left, the nodes matching `pred` whose outputs
/// nothing reads, with their outputs and the constants only they used.
/// Returns how many nodes went.
pub fn remove_dead(g: &mut Graph, pred: impl Fn(&Graph, NodeId) -> bool) -> usize {
    let mut removed = 0;
    loop {
        let dead: Vec<NodeId> = g
            .nodes()
            .filter(|&n| pred(g, n) && g.node(n).outputs().iter().flatten().all(|&v| g.reader_count(v) == 0))
            .collect();
        if dead.is_empty() {
            return removed;
        }
        for n in dead {
            let outs: Vec<ValueId> = g.node(n).outputs().iter().flatten().copied().collect();
            let ins: Vec<ValueId> = g.node(n).inputs().iter().flatten().copied().collect();
            g.remove_node(n);
            for v in outs {
                let _ = g.remove_value(v);
            }
            remove_if_unused(g, ins);
            removed += 1;
        }
    }
}
