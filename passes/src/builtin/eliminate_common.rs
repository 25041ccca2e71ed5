//! two nodes with the same op, attributes and inputs => one, read by both; equal small constants => one.
//!
//! Torch exports recompute what they need where they need it: a dynamic
//! YOLOv8 head takes `Shape` of one tensor three times and unsqueezes the
//! same batch size into six `Concat`s, each through its own `[0]` axes
//! initializer. Constant folding cannot remove these (the shape is not
//! known), but they are the same computation: ONNX ops are pure functions
//! of their inputs and attributes, so a node that repeats an earlier one
//! (same domain, op, attributes and input values) can hand its readers the
//! earlier node's outputs. Small constant initializers with equal type,
//! dims and bytes are merged first, so that repeats reading equal
//! constants through different names are found too.
//!
//! Not merged: ops whose result is random (`RandomNormal`, `Bernoulli`, …),
//! nodes of non-standard domains (a custom op may have effects), nodes with
//! subgraphs, and a repeat whose output is a graph output when the kept
//! node's is one as well (ONNX output names must stay distinct).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, NodeId, ValueId};

use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `eliminate-common`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EliminateCommon {
    /// Merge equal constant initializers with at most this many elements
    /// (0: none). Weights stay apart: a later pass may want to treat two
    /// layers' weights differently even when they start out equal.
    pub max_constant_elements: usize,
}

impl Default for EliminateCommon {
    fn default() -> Self {
        EliminateCommon { max_constant_elements: 64 }
    }
}

impl PassOptions for EliminateCommon {
    const DOCS: &'static [(&'static str, &'static str)] = &[(
        "max_constant_elements",
        "merge equal constant initializers up to this many elements (default 64; 0: none)",
    )];
}

register_pass!(
    "eliminate-common",
    EliminateCommon,
    "two nodes with the same op, attributes and inputs => one, read by both"
);

/// Ops whose outputs differ between two runs on the same inputs.
const RANDOM_OPS: &[&str] =
    &["RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"];

impl Pass for EliminateCommon {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        if self.max_constant_elements > 0 {
            let merged = merge_constants(g, self.max_constant_elements);
            if merged > 0 {
                r.count("constants merged", merged);
            }
        }
        // Keyed by everything a node's result depends on; the first node in
        // graph order is kept, so every reader of a later repeat can read it.
        let mut seen: HashMap<(Vec<u8>, Vec<Option<ValueId>>), NodeId> = HashMap::new();
        for n in g.node_ids() {
            let Some(key) = key(g, n) else { continue };
            let Some(&kept) = seen.get(&key) else {
                seen.insert(key, n);
                continue;
            };
            let pairs: Vec<(ValueId, ValueId)> =
                g.node(n).outputs().iter().zip(g.node(kept).outputs()).filter_map(|(&o, &k)| Some((o?, k?))).collect();
            // An output slot the kept node leaves unnamed, or a graph
            // output that cannot hand over its name: keep both nodes.
            let complete =
                g.node(n).outputs().iter().zip(g.node(kept).outputs()).all(|(o, k)| o.is_none() || k.is_some());
            if !complete || pairs.iter().any(|&(o, k)| !g.can_replace(o, k)) {
                r.info("kept (graph output)", 1);
                continue;
            }
            let what = describe(g, n);
            g.remove_node(n);
            for (o, k) in pairs {
                g.replace_value(o, k).map_err(|e| PassError::ir(format!("merging {what}"), e))?;
                if g.contains_value(o) {
                    g.remove_value(o).map_err(|e| PassError::ir(format!("merging {what}"), e))?;
                }
            }
            r.count("nodes merged", 1);
        }
        Ok(r)
    }
}

/// What a node's outputs depend on: its domain, op, output count and
/// attributes (encoded, sorted by name) and its input values; `None` for a
/// node that must not be merged.
fn key(g: &Graph, n: NodeId) -> Option<(Vec<u8>, Vec<Option<ValueId>>)> {
    let node = g.node(n);
    if !matches!(node.domain(), "" | "ai.onnx") || RANDOM_OPS.contains(&node.op_type()) {
        return None;
    }
    if !node.implicit_inputs().is_empty() || node.attrs().iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) {
        return None;
    }
    let mut bytes = Vec::new();
    for part in [node.domain(), node.op_type()] {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part.as_bytes());
    }
    bytes.extend_from_slice(&(node.outputs().len() as u64).to_le_bytes());
    bytes.extend(node.attrs_key());
    Some((bytes, node.inputs().to_vec()))
}

/// Makes readers of each small constant initializer read the first one
/// with the same dtype, dims and bytes; returns how many were merged (and
/// removed, when nothing else reads them).
fn merge_constants(g: &mut Graph, max_elements: usize) -> u64 {
    let mut first: HashMap<(i32, Vec<i64>, Vec<u8>), ValueId> = HashMap::new();
    let mut merged = 0;
    for v in g.initializers().to_vec() {
        if g.is_graph_input(v) || g.is_graph_output(v) {
            continue;
        }
        let Some(t) = g.type_info(v).and_then(|t| t.shape).and_then(|s| s.as_known()) else { continue };
        if t.iter().product::<i64>().max(0) as usize > max_elements {
            continue;
        }
        let Some(t) = g.constant(v) else { continue };
        let Ok(raw) = t.raw_bytes() else { continue };
        let k = (t.proto().data_type(), t.dims().to_vec(), raw.into_owned());
        match first.get(&k) {
            None => {
                first.insert(k, v);
            }
            Some(&keep) => {
                g.replace_uses(v, keep);
                if g.reader_count(v) == 0 && g.remove_value(v).is_ok() {
                    merged += 1;
                }
            }
        }
    }
    merged
}
