//! nodes and initializers nothing reads => removed.
//!
//! A node is dead when no node reads any of its outputs and none is a graph
//! output; ONNX ops have no side effects, so removing it cannot change the
//! result. Walking the order backwards removes whole dead chains in one run.

use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, ValueId};

use crate::util::remove_if_unused;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `eliminate-dead`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EliminateDead {
    /// Also remove initializers that nothing reads.
    pub initializers: bool,
}

impl Default for EliminateDead {
    fn default() -> Self {
        EliminateDead { initializers: true }
    }
}

impl PassOptions for EliminateDead {
    const DOCS: &'static [(&'static str, &'static str)] =
        &[("initializers", "also remove initializers that nothing reads (default true)")];
}

register_pass!("eliminate-dead", EliminateDead, "nodes and initializers nothing reads => removed");

impl Pass for EliminateDead {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let mut order = g.node_ids();
        order.reverse();
        for n in order {
            let outs: Vec<ValueId> = g.node(n).outputs().iter().flatten().copied().collect();
            if outs.iter().any(|&v| g.reader_count(v) > 0) {
                continue;
            }
            let ins: Vec<ValueId> = g.node(n).inputs().iter().flatten().copied().collect();
            g.remove_node(n);
            for v in outs {
                g.remove_value(v).map_err(|e| PassError::ir("removing a dead node", e))?;
            }
            r.count("nodes removed", 1);
            if self.initializers {
                let before = g.initializers().len();
                remove_if_unused(g, ins);
                r.count("initializers removed", (before - g.initializers().len()) as u64);
            }
        }
        if self.initializers {
            let before = g.initializers().len();
            let all = g.initializers().to_vec();
            remove_if_unused(g, all);
            r.count("initializers removed", (before - g.initializers().len()) as u64);
        }
        Ok(r)
    }
}
