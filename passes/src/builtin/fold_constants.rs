//! ops whose inputs are all constant (Constant nodes, shape arithmetic) => initializers holding their values.
//!
//! PyTorch exports compute Resize scales and Reshape targets with chains of
//! Constant/Shape/Gather/Concat nodes; until those are values, no pass can
//! see that a Resize is a ×2 nearest upsample. Constant nodes become
//! initializers directly, `Shape` of a tensor with known dims becomes its
//! dims, and any other standard op whose inputs are all constant is
//! evaluated once by the runtime. Results keep their tensor names.

use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, InsertAt, Model, NewNode, NodeId, Tensor, ValueId};
use qforge_runtime::{SessionOptions, session};

use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `fold-constants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FoldConstants {
    /// Results with more elements than this stay computed at run time (so a
    /// folded Expand or Tile cannot bloat the model).
    pub max_elements: usize,
    /// Turn `Constant` nodes into initializers.
    pub constant_nodes: bool,
}

impl Default for FoldConstants {
    fn default() -> Self {
        FoldConstants { max_elements: 1 << 20, constant_nodes: true }
    }
}

impl PassOptions for FoldConstants {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("max_elements", "results bigger than this many elements are not folded (default 1048576)"),
        ("constant_nodes", "turn Constant nodes into initializers (default true)"),
    ];
}

register_pass!("fold-constants", FoldConstants, "ops with only constant inputs => initializers holding their values");

/// Ops whose result is not a function of their inputs.
const NOT_FOLDABLE: &[&str] = &[
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
];

impl Pass for FoldConstants {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let mut failed: Vec<String> = Vec::new();
        for n in g.node_ids() {
            let node = g.node(n);
            if !matches!(node.domain(), "" | "ai.onnx") || NOT_FOLDABLE.contains(&node.op_type()) {
                continue;
            }
            let outs: Vec<ValueId> = node.outputs().iter().flatten().copied().collect();
            if outs.is_empty() || outs.iter().any(|&v| g.is_graph_output(v)) || !node.implicit_inputs().is_empty() {
                continue;
            }
            let values: Option<Vec<Tensor>> = match node.op_type() {
                "Constant" if self.constant_nodes => g.constant(outs[0]).map(|t| vec![t]),
                "Constant" => None,
                "Shape" => shape_of(g, n).map(|t| vec![t]),
                _ => {
                    let ins: Vec<ValueId> = node.inputs().iter().flatten().copied().collect();
                    if ins.is_empty() || !ins.iter().all(|&v| g.constant(v).is_some()) {
                        continue;
                    }
                    match evaluate(g, n) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            failed.push(format!("{}: {e}", describe(g, n)));
                            None
                        }
                    }
                }
            };
            let Some(values) = values else { continue };
            if values.len() != outs.len() {
                continue;
            }
            if values.iter().any(|t| t.numel() > self.max_elements) {
                r.info("too large", 1);
                continue;
            }
            let op = g.node(n).op_type().to_string();
            let inputs: Vec<ValueId> = g.node(n).inputs().iter().flatten().copied().collect();
            g.remove_node(n);
            for (v, t) in outs.into_iter().zip(values) {
                g.make_initializer(v, t).map_err(|e| PassError::ir("folding", e))?;
            }
            r.count(if op == "Constant" { "constants → initializers" } else { "folded" }, 1);
            crate::util::remove_if_unused(g, inputs);
        }
        if !failed.is_empty() {
            r.info("not evaluable", failed.len() as u64);
            for f in failed.iter().take(3) {
                r.note(format!("left in place: {f}"));
            }
        }
        Ok(r)
    }
}

/// `Shape(x)` when x's dims are all known.
fn shape_of(g: &Graph, n: NodeId) -> Option<Tensor> {
    let node = g.node(n);
    let dims = g.known_dims(node.input(0)?)?;
    let rank = dims.len() as i64;
    let clamp = |v: i64| if v < 0 { (v + rank).max(0) } else { v.min(rank) } as usize;
    let (s, e) = (clamp(node.attr_int("start").unwrap_or(0)), clamp(node.attr_int("end").unwrap_or(rank)));
    let d = if s < e { dims[s..e].to_vec() } else { Vec::new() };
    Some(Tensor::new(&[d.len() as i64], &d))
}

/// Runs one node on its constant inputs.
fn evaluate(g: &Graph, n: NodeId) -> Result<Vec<Tensor>, String> {
    let node = g.node(n);
    let mut mini = Graph::new("fold", g.opset("").unwrap_or(13));
    for o in g.opset_imports() {
        mini.set_opset(o.domain(), o.version());
    }
    let inputs: Vec<Option<ValueId>> = node
        .inputs()
        .iter()
        .map(|i| i.map(|v| mini.add_initializer(g.value_name(v), g.constant(v).expect("checked constant"))))
        .collect();
    let outputs: Vec<String> =
        node.outputs().iter().map(|o| o.map(|v| g.value_name(v).to_string()).unwrap_or_default()).collect();
    let m = mini
        .insert_node(
            InsertAt::End,
            NewNode {
                op_type: node.op_type().to_string(),
                domain: node.domain().to_string(),
                name: node.name().to_string(),
                inputs,
                outputs: outputs.clone(),
                attrs: node.attrs().to_vec(),
            },
        )
        .map_err(|e| e.to_string())?;
    let outs: Vec<ValueId> = mini.node(m).outputs().iter().flatten().copied().collect();
    for &v in &outs {
        mini.add_output(v);
    }
    let s = session(&Model::new(mini), &SessionOptions::default()).map_err(|e| e.to_string())?;
    let res = s.run(&[]).map_err(|e| e.to_string())?;
    Ok(res.iter().map(|t| t.to_ir()).collect())
}
