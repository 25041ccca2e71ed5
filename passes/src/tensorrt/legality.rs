//! What TensorRT's explicit quantization accepts, checked on the graph.
//!
//! Rules (TensorRT developer guide, "Explicit Quantization"): Q/DQ need
//! opset 13 or later; zero points must be int8 constants equal to 0
//! (symmetric INT8); scales positive finite constants; activation scales per
//! tensor; weight scales per output channel (Conv/Gemm axis 0,
//! ConvTranspose axis 1). Violations are errors; Q/DQ feeding ops TensorRT
//! does not run in INT8 are reported as warnings, and the per-layer
//! precision TensorRT will pick is summarised.

use std::collections::BTreeMap;

use qforge_ir::{DataType, Graph, NodeId, ValueId};

/// Ops TensorRT fuses with a preceding DequantizeLinear (runs in INT8).
const INT8_CONSUMERS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
    "Resize",
    "Relu",
    "QuantizeLinear",
    "Identity",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Split",
];

/// Result of the check.
#[derive(Debug, Default, Clone)]
pub struct Legality {
    /// Rule violations: TensorRT would refuse or mis-handle the model.
    pub errors: Vec<String>,
    /// Q/DQ that TensorRT cannot use (it will run the op in higher precision).
    pub warnings: Vec<String>,
    /// Layer count per precision: `INT8`, `FP16`, `FP32`.
    pub precisions: BTreeMap<&'static str, usize>,
    /// Names of the weighted layers that stay float (for the report).
    pub float_layers: Vec<String>,
}

fn name(g: &Graph, n: NodeId) -> String {
    format!("\"{}\" ({})", g.node(n).name(), g.node(n).op_type())
}

fn produced_by(g: &Graph, v: ValueId, op: &str) -> Option<NodeId> {
    g.producer_node(v).filter(|&p| g.node(p).is_op(op))
}

/// Checks `g`; `fp16` says whether float layers will run in FP16.
pub fn check(g: &Graph, fp16: bool) -> Legality {
    let mut l = Legality::default();
    let opset = g.opset("").unwrap_or(1);
    if opset < 13 {
        l.errors.push(format!(
            "opset {opset}: TensorRT's Q/DQ (per-channel axis) needs opset 13 or later (insert-qdq raises it; or re-export)"
        ));
    }
    for n in g.nodes() {
        let node = g.node(n);
        let (is_q, is_dq) = (node.is_op("QuantizeLinear"), node.is_op("DequantizeLinear"));
        if !is_q && !is_dq {
            continue;
        }
        let desc = name(g, n);
        // Zero point: present, constant int8, all zeros.
        match node.input(2) {
            None => l
                .errors
                .push(format!("{desc}: no zero point (it defaults to uint8); TensorRT needs an int8 zero point of 0")),
            Some(z) => match g.constant(z) {
                None => l.errors.push(format!("{desc}: zero point \"{}\" is not a constant", g.value_name(z))),
                Some(t) => {
                    if t.dtype() != Some(DataType::I8) {
                        l.errors.push(format!(
                            "{desc}: zero point is {}, TensorRT needs int8",
                            t.dtype().map(|d| d.to_string()).unwrap_or_else(|| "of unknown type".into())
                        ));
                    }
                    if let Ok(v) = t.to_i64_vec()
                        && let Some(bad) = v.iter().find(|&&x| x != 0)
                    {
                        l.errors.push(format!("{desc}: zero point {bad}, TensorRT needs 0 (symmetric quantization)"));
                    }
                }
            },
        }
        // Scale: constant, positive, finite.
        let scale = node.input(1).and_then(|s| g.constant(s));
        let scale_len = match &scale {
            None => {
                l.errors.push(format!("{desc}: scale is not a constant"));
                0
            }
            Some(t) => {
                let v = t.to_f32_vec().unwrap_or_default();
                if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                    l.errors.push(format!("{desc}: scale {bad} is not a positive finite number"));
                }
                v.len()
            }
        };
        // Per-channel: only weights, on the output-channel axis.
        if scale_len > 1 {
            let axis = node.attr_int("axis").unwrap_or(1);
            let x = node.input(0);
            let is_weight = x.is_some_and(|x| {
                g.constant(x).is_some()
                    || produced_by(g, x, "QuantizeLinear")
                        .is_some_and(|q| g.node(q).input(0).is_some_and(|w| g.constant(w).is_some()))
            });
            if !is_weight {
                l.errors.push(format!("{desc}: per-channel scale ({scale_len} values) on an activation; TensorRT needs per-tensor activation scales"));
            } else if is_dq {
                let out = node.output(0);
                for u in out.map(|o| g.uses(o).to_vec()).unwrap_or_default() {
                    if let Some(want) = crate::qdq_rules::weight_axis(g, u.node).map(|a| a as i64) {
                        let rank = out.and_then(|o| g.known_dims(o)).map(|d| d.len() as i64).unwrap_or(4);
                        let got = if axis < 0 { axis + rank } else { axis };
                        if got != want {
                            l.errors.push(format!(
                                "{desc}: per-channel axis {axis} on the weight of {}, TensorRT needs axis {want} (its output channels)",
                                name(g, u.node)
                            ));
                        }
                    }
                }
            }
        }
        if is_dq && let Some(out) = node.output(0) {
            for u in g.users(out) {
                let op = g.node(u).op_type();
                if !INT8_CONSUMERS.contains(&op) {
                    l.warnings.push(format!(
                        "{desc} feeds {}, which TensorRT does not run in INT8 (it will dequantize first)",
                        name(g, u)
                    ));
                }
            }
        }
    }
    // Precision per weighted layer.
    for n in g.nodes() {
        let Some(p) = layer_precision(g, n, fp16) else { continue };
        if p != "INT8" {
            l.float_layers.push(g.node(n).name().to_string());
        }
        *l.precisions.entry(p).or_default() += 1;
    }
    l
}

/// The precision TensorRT runs weighted layer `n` in (`None` for other
/// ops): `INT8` when both its data and weight come through
/// DequantizeLinear, else `FP16` when it computes in float16 or the build
/// lets float layers run in FP16 (`fp16_rest`), else `FP32`.
pub fn layer_precision(g: &Graph, n: NodeId, fp16_rest: bool) -> Option<&'static str> {
    let node = g.node(n);
    if !crate::qdq_rules::WEIGHTED_OPS.contains(&node.op_type()) {
        return None;
    }
    let dq = |slot: usize| node.input(slot).is_some_and(|v| produced_by(g, v, "DequantizeLinear").is_some());
    let half = node.output(0).and_then(|o| g.dtype(o)) == Some(DataType::F16);
    Some(if dq(0) && dq(1) {
        "INT8"
    } else if half || fp16_rest {
        "FP16"
    } else {
        "FP32"
    })
}
