//! The precision map of a run: each layer of the final graph with the
//! precision it computes in (INT8, FP16, FP32) and why a float layer is
//! float.
//!
//! Why it is assembled here and not by one pass: the decision is spread over
//! passes (`insert-qdq` leaves the detector's tail and user exclusions
//! float, `skip-sensitive` puts the most sensitive layers back in float,
//! `to-fp16` keeps overflowing ones in FP32), and only the final graph says
//! what each layer ended up as. So passes record their reasons by node name
//! in the context ([`FloatReasons::add`]), and the pass manager reads the
//! final graph once the pipeline is done ([`precision_map`]). A reason whose
//! node no longer exists, or whose layer ended up INT8 after all, is
//! ignored; the precision always comes from the graph.

use std::collections::BTreeMap;

use serde::Serialize;

use qforge_ir::{DataType, Graph, NodeId};

use crate::PassContext;
use crate::qdq_rules::{WEIGHTED_OPS, is_residual_add};

/// Why a node stays float, as a pass recorded it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// A short stable tag: `tail`, `excluded`, `first-conv`, `no-range`,
    /// `sensitivity`, `overflow`, `kept-fp32` (plugins may add their own).
    pub kind: String,
    /// The pass that decided it.
    pub pass: String,
    /// One sentence for people.
    pub why: String,
}

/// Reasons passes gave for keeping nodes float, by node name; kept in the
/// pass context ([`PassContext::ext`]).
#[derive(Debug, Clone, Default)]
pub struct FloatReasons(pub BTreeMap<String, Vec<Reason>>);

impl FloatReasons {
    /// Records that `pass` keeps the node named `node` float because `why`.
    pub fn add(cx: &mut PassContext, node: &str, pass: &str, kind: &str, why: impl Into<String>) {
        if cx.ext.get::<FloatReasons>().is_none() {
            cx.ext.insert(FloatReasons::default());
        }
        if let Some(r) = cx.ext.get_mut::<FloatReasons>() {
            let reason = Reason { kind: kind.to_string(), pass: pass.to_string(), why: why.into() };
            let list = r.0.entry(node.to_string()).or_default();
            if !list.contains(&reason) {
                list.push(reason);
            }
        }
    }
}

/// One row of the precision map.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerPrecision {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op: String,
    /// `INT8`, `FP16` or `FP32`.
    pub precision: &'static str,
    /// Why it is float (empty for INT8 layers, and for float layers no pass
    /// explained).
    pub reasons: Vec<Reason>,
}

fn reads_dq(g: &Graph, n: NodeId, slot: usize) -> bool {
    g.node(n).input(slot).and_then(|v| g.producer_node(v)).is_some_and(|p| g.node(p).is_op("DequantizeLinear"))
}

/// Whether `n` computes in INT8: a weighted op whose data input and weight
/// are both dequantized (both inputs of a MatMul), or a residual Add with a
/// dequantized input (TensorRT fuses it into the INT8 layer before it).
fn is_int8(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    if WEIGHTED_OPS.contains(&node.op_type()) {
        reads_dq(g, n, 0) && reads_dq(g, n, 1)
    } else {
        node.is_op("Add") && (0..node.inputs().len()).any(|s| reads_dq(g, n, s))
    }
}

/// The precision map of `g`: every weighted layer (Conv, ConvTranspose,
/// Gemm, MatMul), every residual Add and every node a pass gave a reason
/// for, in graph order, when their output is a float tensor. `None` for a
/// graph nothing quantized or converted (no Q/DQ, no float16, no reason).
pub fn precision_map(g: &Graph, reasons: Option<&FloatReasons>) -> Option<Vec<LayerPrecision>> {
    let empty = BTreeMap::new();
    let reasons = reasons.map(|r| &r.0).unwrap_or(&empty);
    let quantized = g.nodes().any(|n| g.node(n).is_op("QuantizeLinear") || g.node(n).is_op("DequantizeLinear"));
    let fp16 = g.value_ids().any(|v| g.dtype(v) == Some(DataType::F16));
    if !quantized && !fp16 && reasons.is_empty() {
        return None;
    }
    let mut rows = Vec::new();
    for n in g.nodes() {
        let node = g.node(n);
        let why = reasons.get(node.name()).filter(|_| !node.name().is_empty());
        if !(WEIGHTED_OPS.contains(&node.op_type()) || is_residual_add(g, n) || why.is_some()) {
            continue;
        }
        let precision = if is_int8(g, n) {
            "INT8"
        } else {
            match node.output(0).and_then(|v| g.dtype(v)) {
                Some(DataType::F16) => "FP16",
                Some(DataType::F32) | None => "FP32",
                Some(_) => continue,
            }
        };
        let reasons = if precision == "INT8" { Vec::new() } else { why.cloned().unwrap_or_default() };
        rows.push(LayerPrecision { node: node.name().to_string(), op: node.op_type().to_string(), precision, reasons });
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_comes_from_the_graph_and_reasons_from_the_passes() {
        let g = qforge_ir::parse_graph(
            r#"
graph g {
  opset ai.onnx 13
  input %x: f32[1,3,4,4]
  init @w: f32[3,3,1,1] = rand(1)
  init @wq: i8[3,3,1,1] = fill(1)
  init @s: f32[] = [0.1]
  init @z: i8[] = [0]
  init @ws: f32[3] = fill(0.1)
  init @wz: i8[3] = fill(0)
  %q = QuantizeLinear(%x, @s, @z) : i8[1,3,4,4]  # q
  %dq = DequantizeLinear(%q, @s, @z) : f32[1,3,4,4]  # dq
  %wd = DequantizeLinear(@wq, @ws, @wz) {axis=0} : f32[3,3,1,1]  # wdq
  %a = Conv(%dq, %wd) {kernel_shape=[1,1]} : f32[1,3,4,4]  # int8_conv
  %b = Conv(%a, @w) {kernel_shape=[1,1]} : f32[1,3,4,4]  # float_conv
  %c = Sigmoid(%b) : f32[1,3,4,4]  # tail_sigmoid
  %d = Relu(%c) : f32[1,3,4,4]  # unexplained_relu
  output %d
}
"#,
        )
        .expect("parses");
        let mut cx = PassContext::default();
        assert!(
            precision_map(&qforge_ir::parse_graph("graph e {\n  input %x: f32[1]\n  output %x\n}").unwrap(), None)
                .is_none()
        );
        FloatReasons::add(&mut cx, "float_conv", "skip-sensitive", "sensitivity", "helps");
        FloatReasons::add(&mut cx, "float_conv", "skip-sensitive", "sensitivity", "helps");
        FloatReasons::add(&mut cx, "tail_sigmoid", "insert-qdq", "tail", "post-processing");
        FloatReasons::add(&mut cx, "int8_conv", "insert-qdq", "no-range", "a stale reason the graph overrides");
        let map = precision_map(&g, cx.ext.get::<FloatReasons>()).expect("a quantized graph has a map");
        let row = |n: &str| map.iter().find(|r| r.node == n);
        assert_eq!(map.len(), 3, "{map:?}");
        assert_eq!(row("int8_conv").map(|r| (r.precision, r.reasons.len())), Some(("INT8", 0)));
        let f = row("float_conv").expect("listed");
        assert_eq!((f.precision, f.reasons.len()), ("FP32", 1), "{f:?}: one reason, recorded twice");
        assert_eq!(row("tail_sigmoid").map(|r| r.reasons[0].kind.as_str()), Some("tail"));
        assert!(row("unexplained_relu").is_none(), "not a layer and no reason: not listed");
    }
}
