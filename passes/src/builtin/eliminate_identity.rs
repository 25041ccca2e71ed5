//! %y = Identity(%x) => readers of %y read %x (a graph output keeps its name).
//!
//! A `Cast` to the type its input already has is an Identity too (torch
//! exports cast shape arithmetic to int64 that already is int64).
//!
//! PyTorch exports weights shared between modules as Identity chains
//! (213 of them in a YOLOv5n export); they hide constants from every
//! pattern-matching pass. An Identity whose output is a graph output is
//! removed only when its input can take over the output's name, i.e. when
//! the input is an intermediate tensor and not itself part of the interface.

use serde::{Deserialize, Serialize};

use qforge_ir::Graph;

use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `eliminate-identity`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EliminateIdentity {
    /// Also remove Dropout nodes (identity at inference) whose mask output is unused.
    pub dropout: bool,
}

impl Default for EliminateIdentity {
    fn default() -> Self {
        EliminateIdentity { dropout: true }
    }
}

impl PassOptions for EliminateIdentity {
    const DOCS: &'static [(&'static str, &'static str)] =
        &[("dropout", "also remove inference-mode Dropout whose mask output is unused (default true)")];
}

register_pass!("eliminate-identity", EliminateIdentity, "%y = Identity(%x) => readers of %y read %x");

impl Pass for EliminateIdentity {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        for n in g.node_ids() {
            let node = g.node(n);
            let is_dropout = self.dropout
                && node.is_op("Dropout")
                && node.output(1).is_none_or(|m| g.reader_count(m) == 0)
                // training_mode (input 2) must be absent or constant false.
                && node.input(2).is_none_or(|t| g.constant(t).and_then(|t| t.to_i64_vec().ok()) == Some(vec![0]));
            // A Cast to the input's own (known) type changes nothing.
            let is_noop_cast = node.is_op("Cast")
                && node
                    .input(0)
                    .and_then(|x| g.type_info(x)?.dtype)
                    .is_some_and(|t| node.attr_int("to") == Some(t.onnx() as i64));
            if !(node.is_op("Identity") || is_dropout || is_noop_cast) {
                continue;
            }
            let (Some(x), Some(y)) = (node.input(0), node.output(0)) else { continue };
            if !g.can_replace(y, x) {
                r.info("kept (graph output)", 1);
                continue;
            }
            let mask = node.output(1);
            let what = describe(g, n);
            g.remove_node(n);
            g.replace_value(y, x).map_err(|e| PassError::ir(format!("removing {what}"), e))?;
            if let Some(m) = mask {
                g.remove_value(m).map_err(|e| PassError::ir(format!("removing {what}"), e))?;
            }
            r.count("removed", 1);
        }
        Ok(r)
    }
}
