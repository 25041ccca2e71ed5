//! float32 tensors and ops => float16, with Casts where FP32 must stay (graph I/O, Q/DQ, Resize scales, kept ops).
//!
//! TensorRT 10's strongly typed engines take each layer's precision from
//! the graph, so an INT8 model whose float parts are FP32 runs them in FP32.
//! This pass converts every float op it can to FP16: float32 initializers
//! become float16 (a copy when some reader must keep FP32), outputs of
//! converted ops become float16, and a Cast is inserted wherever an FP16
//! value meets a reader that needs FP32 or the other way round. FP32 stays
//! at the graph inputs and outputs (option), around Q/DQ (their scales and
//! the quantized tensor are FP32 before opset 19), on Resize/Upsample
//! scales and roi, and around ops named in `keep_ops`/`keep_names`. A node
//! whose output type is unknown is kept FP32, and so are its readers, so no
//! value of unknown type ever crosses between the two precisions.
//!
//! Q/DQ stay FP32 with a Cast on each side: ONNX Runtime and tract run that,
//! but TensorRT fuses Q/DQ into FP16 layers only when the scales themselves
//! are FP16 (opset 19), which this pass does not do yet; the `tensorrt` pass
//! reports such DequantizeLinear → Cast pairs. For `--int8 --fp16` builds
//! (the default of the `tensorrt` pass) this pass is not needed.

use std::collections::{HashMap, HashSet};

use half::f16;
use serde::{Deserialize, Serialize};

use qforge_ir::{
    DataType, Graph, InsertAt, NewNode, NodeId, Tensor, TypeInfo, ValueDef, ValueId, attr_int, attr_tensor,
};

use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, Tolerance, register_pass};

/// Options of `to-fp16`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToFp16 {
    /// Keep graph inputs and outputs FP32 (Casts at the boundary).
    pub keep_io: bool,
    /// Op types that stay FP32.
    pub keep_ops: Vec<String>,
    /// Node names that stay FP32.
    pub keep_names: Vec<String>,
}

impl Default for ToFp16 {
    fn default() -> Self {
        ToFp16 { keep_io: true, keep_ops: Vec::new(), keep_names: Vec::new() }
    }
}

impl PassOptions for ToFp16 {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("keep_io", "keep graph inputs and outputs FP32, with Casts at the boundary (default true)"),
        ("keep_ops", "op types that stay FP32 (default [])"),
        ("keep_names", "node names that stay FP32 (default [])"),
    ];
}

register_pass!(
    "to-fp16",
    ToFp16,
    "float32 ops and tensors => float16, Casts where FP32 must stay (I/O, Q/DQ, Resize scales)"
);

/// Ops whose ONNX type constraints have no float16 (they stay FP32).
const NO_FP16: &[&str] = &["Range", "NonMaxSuppression", "Multinomial", "RandomNormal", "RandomUniform"];

const F32: i64 = 1;
const F16: i64 = 10;

/// Input slots that must stay FP32 whatever the node's precision.
fn fp32_slot(g: &Graph, n: NodeId, slot: usize) -> bool {
    let op = g.node(n).op_type();
    match op {
        "Resize" => slot == 1 || slot == 2,
        "Upsample" => slot == 1,
        _ => false,
    }
}

impl ToFp16 {
    /// Nodes that compute in FP16.
    fn converted(&self, g: &Graph) -> HashSet<NodeId> {
        let mut conv: HashSet<NodeId> = HashSet::new();
        let mut unknown_values: HashSet<ValueId> = HashSet::new();
        for n in g.nodes() {
            let node = g.node(n);
            let outs: Vec<ValueId> = node.outputs().iter().flatten().copied().collect();
            let out_unknown = outs.iter().any(|&v| g.dtype(v).is_none());
            let reads_unknown = node.inputs().iter().flatten().any(|v| unknown_values.contains(v));
            if out_unknown || reads_unknown {
                unknown_values.extend(outs.iter().copied());
                continue;
            }
            let float_out = outs.iter().any(|&v| g.dtype(v) == Some(DataType::F32));
            let keep = !matches!(node.domain(), "" | "ai.onnx")
                || node.is_op("QuantizeLinear")
                || node.is_op("DequantizeLinear")
                // Constant nodes keep their FP32 data (fold-constants makes them
                // initializers, which are converted); readers get a Cast.
                || node.is_op("Constant")
                || NO_FP16.contains(&node.op_type())
                || self.keep_ops.iter().any(|o| o == node.op_type())
                || self.keep_names.iter().any(|o| o == node.name())
                || !node.implicit_inputs().is_empty();
            if float_out && !keep {
                conv.insert(n);
            }
        }
        conv
    }
}

/// Inserts `Cast(v, to)` right after `v` is defined; returns the cast output.
fn cast(g: &mut Graph, v: ValueId, to: i64, first: NodeId) -> Result<ValueId, PassError> {
    let name = g.value_name(v).to_string();
    let suffix = if to == F16 { "fp16" } else { "fp32" };
    let at = match g.producer_node(v) {
        Some(p) => InsertAt::After(p),
        None => InsertAt::Before(first),
    };
    let n = g
        .insert_node(
            at,
            NewNode::new("Cast", &format!("{name}/Cast_{suffix}"), &[v], &format!("{name}_{suffix}"))
                .attr(attr_int("to", to)),
        )
        .map_err(|e| PassError::ir("to-fp16", e))?;
    let out = g.node(n).output(0).expect("one output");
    let shape = g.type_info(v).and_then(|t| t.shape);
    g.set_type(out, &TypeInfo { dtype: Some(if to == F16 { DataType::F16 } else { DataType::F32 }), shape });
    Ok(out)
}

fn to_f16(t: &Tensor) -> Result<Tensor, String> {
    let v = t.to_vec::<f32>().map_err(|e| e.to_string())?;
    Ok(Tensor::new(t.dims(), &v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>()))
}

impl Pass for ToFp16 {
    fn tolerance(&self) -> Tolerance {
        Tolerance::Approximate
    }

    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let conv = self.converted(g);
        let Some(first) = g.nodes().next() else { return Ok(r) };
        // Which side of each float value is FP16: its definition, and each read.
        let values: Vec<ValueId> = g.value_ids().filter(|&v| g.dtype(v) == Some(DataType::F32)).collect();
        let wants16 = |g: &Graph, n: NodeId, slot: usize| conv.contains(&n) && !fp32_slot(g, n, slot);
        let mut casts = 0u64;
        for v in values {
            let uses: Vec<(NodeId, usize)> = g
                .uses(v)
                .iter()
                .filter_map(|u| match u.slot {
                    qforge_ir::UseSlot::Input(s) => Some((u.node, s)),
                    qforge_ir::UseSlot::Implicit(_) => None,
                })
                .collect();
            let (r16, r32): (Vec<_>, Vec<_>) = uses.iter().partition(|&&(n, s)| wants16(g, n, s));
            match g.value(v).def() {
                ValueDef::Initializer if !g.is_graph_input(v) => {
                    let t = g.initializer(v).cloned().ok_or_else(|| PassError::msg("initializer without data"))?;
                    let h = to_f16(&t).map_err(|e| PassError::msg(format!("{}: {e}", g.value_name(v))))?;
                    if r32.is_empty() && !r16.is_empty() && !g.is_graph_output(v) {
                        g.set_initializer(v, h).map_err(|e| PassError::ir("to-fp16", e))?;
                        r.count("initializers converted", 1);
                    } else if !r16.is_empty() {
                        let c = g.add_initializer(&format!("{}_fp16", g.value_name(v)), h);
                        for &(n, s) in &r16 {
                            g.set_input(n, s, Some(c));
                        }
                        r.count("initializers copied to fp16", 1);
                    }
                }
                ValueDef::Node(p, _) if conv.contains(&p) => {
                    let shape = g.type_info(v).and_then(|t| t.shape);
                    g.set_type(v, &TypeInfo { dtype: Some(DataType::F16), shape });
                    let out_port = g.is_graph_output(v) && self.keep_io;
                    if !r32.is_empty() || out_port {
                        let c = cast(g, v, F32, first)?;
                        casts += 1;
                        for &(n, s) in &r32 {
                            g.set_input(n, s, Some(c));
                        }
                        if out_port {
                            // The interface keeps its name and FP32: the cast takes the name.
                            let name = g.value_name(v).to_string();
                            g.rename_value(v, &format!("{name}_fp16_out")).map_err(|e| PassError::ir("to-fp16", e))?;
                            g.rename_value(c, &name).map_err(|e| PassError::ir("to-fp16", e))?;
                            let idx: Vec<usize> =
                                g.outputs().iter().enumerate().filter(|(_, p)| p.value == v).map(|(i, _)| i).collect();
                            for i in idx {
                                g.set_output_value(i, c);
                            }
                            // Types follow the values now that the port moved.
                            let shape = g.type_info(c).and_then(|t| t.shape);
                            g.set_type(c, &TypeInfo { dtype: Some(DataType::F32), shape: shape.clone() });
                            g.set_type(v, &TypeInfo { dtype: Some(DataType::F16), shape });
                        }
                    }
                }
                ValueDef::Input if !self.keep_io => {
                    return Err(PassError::msg("keep_io: false is not supported yet: graph inputs stay FP32"));
                }
                _ => {
                    if !r16.is_empty() {
                        let c = cast(g, v, F16, first)?;
                        casts += 1;
                        for &(n, s) in &r16 {
                            g.set_input(n, s, Some(c));
                        }
                    }
                }
            }
        }
        // Ops whose attributes name the float type follow their node.
        let mut fixed: HashMap<&str, u64> = HashMap::new();
        for &n in &conv {
            let node = g.node(n);
            if node.is_op("Cast") && node.attr_int("to") == Some(F32) {
                g.node_mut(n).set_attr(attr_int("to", F16));
                *fixed.entry("Cast").or_default() += 1;
            } else if node.is_op("ConstantOfShape")
                && let Some(t) = node.attr("value").and_then(qforge_ir::AttrExt::as_tensor)
                && t.dtype() == Some(DataType::F32)
            {
                let h = to_f16(&t).map_err(|e| PassError::msg(format!("{}: {e}", describe(g, n))))?;
                g.node_mut(n).set_attr(attr_tensor("value", h));
                *fixed.entry("ConstantOfShape").or_default() += 1;
            }
        }
        for (op, k) in fixed {
            r.count(&format!("{op} retyped"), k);
        }
        r.count("ops in fp16", conv.len() as u64);
        r.count("casts inserted", casts);
        Ok(r)
    }
}
