//! values of unknown type => value_info with the dtype and shape implied by their producer.
//!
//! Rewrites need shapes: the channel count of a Resize input, the rank of a
//! Conv output. ONNX exports often carry no value_info, so this pass sweeps
//! the graph once in order and asks each op's rule in the [`crate::ops`]
//! registry for its outputs' types, carrying the partial values of shape
//! tensors along (a `Shape` of a symbolic tensor feeding a Reshape target)
//! without writing them anywhere. An op without a rule leaves its outputs
//! unknown (never guessed); a declared type is only replaced by a strictly
//! more precise one that does not contradict it, and a contradiction is
//! reported, the declaration kept.

use serde::{Deserialize, Serialize};

use qforge_ir::Graph;

use crate::ops::Facts;
use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `infer-shapes` (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferShapes {}

impl PassOptions for InferShapes {}

register_pass!(
    "infer-shapes",
    InferShapes,
    "values of unknown type => value_info with dtype and shape from their producer"
);

impl Pass for InferShapes {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let mut unknown_ops: Vec<String> = Vec::new();
        let mut facts = Facts::default();
        for n in g.node_ids() {
            let Some(types) = facts.infer(g, n) else {
                let node = g.node(n);
                let op = if matches!(node.domain(), "" | "ai.onnx") {
                    node.op_type().to_string()
                } else {
                    format!("{}::{}", node.domain(), node.op_type())
                };
                if node.outputs().iter().flatten().any(|&v| g.type_info(v).is_none()) && !unknown_ops.contains(&op) {
                    unknown_ops.push(op);
                }
                continue;
            };
            let outs = g.node(n).outputs().to_vec();
            for (v, t) in outs.into_iter().zip(types) {
                if let (Some(v), Some(t)) = (v, t) {
                    g.set_type(v, &t);
                    r.count("typed", 1);
                }
            }
            for c in facts.take_contradictions() {
                r.info("contradictions", 1);
                r.note(format!(
                    "\"{}\" (output of {}) is declared {} but its producer gives {}; kept the declaration",
                    g.value_name(c.value),
                    describe(g, n),
                    c.declared,
                    c.inferred
                ));
            }
        }
        if !unknown_ops.is_empty() {
            unknown_ops.sort();
            r.note(format!("no shape rule for: {}", unknown_ops.join(", ")));
        }
        Ok(r)
    }
}
