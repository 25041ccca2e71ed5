//! Exact rewrites applied to a graph just before tract reads it, for tract
//! behaviour that changes results.
//!
//! Why: qforge measures quantization with tract by default, so tract must
//! compute a Q/DQ graph as the ONNX spec (and ONNX Runtime) does. One
//! optimisation of tract 0.23 does not:
//!
//! **A `DequantizeLinear` whose chain of sole consumers ends in a
//! `QuantizeLinear` is baked into a 256-entry lookup table, even when the
//! chain holds an op that is not element-wise.** tract-core's
//! `DequantizeLinearF32::declutter` follows single successors while their
//! axes mapping is "natural" (`AxesMapping::is_element_wise_unary`) and then
//! evaluates DQ → chain → Q once on the 256 possible int8/uint8 codes, laid
//! out as a rank-1 tensor. `Softmax` (and `LogSoftmax`) also declare a
//! natural mapping, but each output depends on the whole axis: evaluated on
//! that rank-1 table, the softmax axis is out of range, every code becomes its
//! own one-element softmax, 1.0, and the table maps every input to
//! `QuantizeLinear(1.0)`: 127 for int8 with scale 1/127, 255 for uint8 with
//! scale 1/255. ONNX Runtime's `quantize_static` writes exactly that pattern
//! around the DFL softmax of YOLOv8 heads (`DQ → Softmax → Q`), which turned
//! the box distances into constants and the output SQNR into 3–4 dB.
//!
//! The fix: such a `DequantizeLinear` (per-tensor, constant f32 scale, int8 or
//! uint8 zero point) becomes `Cast(to float)`, `Sub(zero point)` (left out for
//! a zero point of 0) and `Mul(scale)`. That is the spec's
//! `y = (x - x_zero_point) * x_scale` in the same f32 arithmetic tract's own
//! op uses (the difference of two 8-bit integers is exact in f32), so results
//! are bit-identical, and tract no longer sees a `DequantizeLinear` to start a
//! table from. Chains made only of element-wise ops (`DQ → Sigmoid → Q`)
//! keep tract's table, which is correct for them.
//!
//! The decision is made on the qforge graph (uses, constants, op types); the
//! edit on the exported protobuf, so no weight is copied.
//!
//! Weight dequantizations are computed before tract sees them
//! ([`fold_weights`]): the same values, without tract's quadratic folding.
//!
//! Two more fixups make float16 graphs (TensorRT 10/11 strongly typed ones,
//! opset 19) usable in tract: [`widen_half_scales`] gives float16 Q/DQ scales,
//! which tract 0.23 rejects, f32 copies; [`widen_half_products`] runs float16
//! convolutions and matrix products through f32, where tract has fast kernels.

use std::collections::HashSet;

use qforge_ir::proto::{GraphProto, NodeProto, TensorProto};
use qforge_ir::{DataType, Graph, NodeId, Tensor, UseSlot, ValueDef, ValueId, attr_int};

use crate::RuntimeError;

/// One `DequantizeLinear` to spell out as float ops.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DequantizeRewrite {
    /// Its node name (for the new nodes' names).
    node: String,
    /// The quantized input.
    input: String,
    /// The output, which keeps its name.
    output: String,
    scale: f32,
    zero_point: i32,
    /// The scale (so the output) is float16: the float spelling computes in
    /// f32 and casts the result back.
    half: bool,
}

/// Ops whose output element depends only on the same input element (and
/// constant attributes or scalar constant operands): a lookup table over the
/// 256 codes computes them exactly, so tract's table is right for them.
const POINTWISE: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "Cast",
    "Ceil",
    "Celu",
    "Clip",
    "Cos",
    "Cosh",
    "Div",
    "Elu",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LeakyRelu",
    "Log",
    "Max",
    "Min",
    "Mish",
    "Mul",
    "Neg",
    "Pow",
    "Reciprocal",
    "Relu",
    "Round",
    "Selu",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Sub",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
];

/// Ops that only move or select elements. tract never puts them inside a
/// table (their axes mapping is not the identity), and when it removes one as
/// a no-op the chain simply continues: the walk looks through them too.
const LAYOUT: &[&str] = &["Flatten", "Reshape", "Slice", "Squeeze", "Transpose", "Unsqueeze"];

/// Whether `v` is known before the graph runs (tract folds it to a constant).
fn is_const(g: &Graph, v: ValueId) -> bool {
    match g.value(v).def() {
        ValueDef::Initializer => !g.is_graph_input(v),
        ValueDef::Node(n, _) => g.node(n).is_op("Constant"),
        _ => false,
    }
}

/// The single element of a constant holding exactly one.
fn scalar(g: &Graph, v: Option<ValueId>) -> Option<Tensor> {
    let t = g.constant(v?)?;
    (t.numel() == 1).then_some(t)
}

/// The sole reader of `v` when exactly one node reads it, once, as a
/// regular input.
fn sole_reader(g: &Graph, v: ValueId) -> Option<NodeId> {
    match g.uses(v) {
        [u] if matches!(u.slot, UseSlot::Input(_)) => Some(u.node),
        _ => None,
    }
}

/// How the walk treats a node reading the chain's tensor.
enum Step {
    /// `QuantizeLinear`: the chain ends in a table candidate.
    Quantize,
    /// Continue through it; `true` when a table over it would be wrong.
    Through(bool),
    /// The chain ends without a `QuantizeLinear` (no table).
    Stop,
}

fn step(g: &Graph, n: NodeId, v: ValueId) -> Step {
    let node = g.node(n);
    let std_domain = matches!(node.domain(), "" | "ai.onnx");
    if !std_domain {
        return Step::Stop;
    }
    if node.op_type() == "QuantizeLinear" {
        return if node.input(0) == Some(v) { Step::Quantize } else { Step::Stop };
    }
    let outputs = node.outputs().iter().flatten().count();
    let others: Vec<ValueId> = node.inputs().iter().flatten().copied().filter(|&i| i != v).collect();
    if outputs != 1 || !others.iter().all(|&i| is_const(g, i)) {
        return Step::Stop;
    }
    let op = node.op_type();
    if LAYOUT.contains(&op) {
        return Step::Through(false);
    }
    // A constant operand of more than one element (per-channel Mul, PRelu
    // slopes) is not the same function for every element.
    let scalar_operands = others.iter().all(|&i| scalar(g, Some(i)).is_some());
    Step::Through(!(POINTWISE.contains(&op) && scalar_operands))
}

/// Whether tract would bake the chain below `dq`'s output into a table that
/// holds a non-element-wise op.
fn feeds_wrong_table(g: &Graph, dq: NodeId) -> bool {
    let Some(mut v) = g.node(dq).output(0) else { return false };
    let mut suspect = false;
    // A graph is acyclic; the bound only guards against a malformed one.
    for _ in 0..=g.node_count() {
        let Some(n) = sole_reader(g, v) else { return false };
        match step(g, n, v) {
            Step::Quantize => return suspect,
            Step::Stop => return false,
            Step::Through(bad) => suspect |= bad,
        }
        match g.node(n).outputs().iter().flatten().next() {
            Some(&out) => v = out,
            None => return false,
        }
    }
    false
}

/// The `DequantizeLinear` nodes of `g` that tract would compute wrongly.
pub(crate) fn plan(g: &Graph) -> Vec<DequantizeRewrite> {
    let mut out = Vec::new();
    for n in g.nodes() {
        let node = g.node(n);
        if !node.is_op("DequantizeLinear") || node.attr_int("block_size").is_some_and(|b| b != 0) {
            continue;
        }
        let (Some(x), Some(y)) = (node.input(0), node.output(0)) else { continue };
        if is_const(g, x) {
            continue; // folded by tract before any table is made
        }
        let Some(scale) = scalar(g, node.input(1)).filter(|t| matches!(t.dtype(), Some(DataType::F32 | DataType::F16)))
        else {
            continue;
        };
        let half = scale.dtype() == Some(DataType::F16);
        let Some(scale) = scale.to_f32_vec().ok().and_then(|s| s.first().copied()) else { continue };
        // Tables are only made for 8-bit codes; without a zero point the input
        // type decides (uint8 by default).
        let zero_point = match node.input(2) {
            Some(z) => {
                let Some(t) = scalar(g, Some(z)) else { continue };
                if !matches!(t.dtype(), Some(DataType::I8 | DataType::U8)) {
                    continue;
                }
                match t.to_i64_vec().ok().and_then(|z| z.first().copied()) {
                    Some(z) => z as i32,
                    None => continue,
                }
            }
            None if matches!(g.dtype(x), Some(DataType::I8 | DataType::U8) | None) => 0,
            None => continue,
        };
        if feeds_wrong_table(g, n) {
            out.push(DequantizeRewrite {
                node: node.name().to_string(),
                input: g.value_name(x).to_string(),
                output: g.value_name(y).to_string(),
                scale,
                zero_point,
                half,
            });
        }
    }
    out
}

/// Fresh names next to the graph's own.
struct Names(HashSet<String>);

impl Names {
    fn of(graph: &GraphProto) -> Names {
        let mut s = HashSet::new();
        for n in &graph.node {
            s.extend(n.output.iter().cloned());
            s.insert(n.name().to_string());
        }
        s.extend(graph.input.iter().map(|v| v.name().to_string()));
        s.extend(graph.output.iter().map(|v| v.name().to_string()));
        s.extend(graph.value_info.iter().map(|v| v.name().to_string()));
        s.extend(graph.initializer.iter().map(|t| t.name().to_string()));
        Names(s)
    }

    fn fresh(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut i = 1;
        while self.0.contains(&name) {
            name = format!("{hint}_{i}");
            i += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

fn f32_scalar(name: String, x: f32) -> TensorProto {
    let mut t = Tensor::scalar(x).into_proto();
    t.name = Some(name);
    t
}

fn op(op_type: &str, name: String, inputs: Vec<String>, output: String) -> NodeProto {
    NodeProto {
        op_type: Some(op_type.into()),
        name: Some(name),
        input: inputs,
        output: vec![output],
        ..Default::default()
    }
}

/// Replaces each planned `DequantizeLinear` of the exported `graph` by its
/// float spelling; returns how many were replaced.
pub(crate) fn apply(graph: &mut GraphProto, rewrites: &[DequantizeRewrite]) -> Result<usize, RuntimeError> {
    if rewrites.is_empty() {
        return Ok(0);
    }
    let mut names = Names::of(graph);
    for r in rewrites {
        let at = graph
            .node
            .iter()
            .position(|n| n.op_type() == "DequantizeLinear" && n.output.first() == Some(&r.output))
            .ok_or_else(|| RuntimeError::Engine {
                engine: "tract",
                message: format!("internal: DequantizeLinear \"{}\" to rewrite is not in the exported graph", r.output),
            })?;
        let base = if r.node.is_empty() { r.output.clone() } else { r.node.clone() };
        let float = names.fresh(&format!("{}/tract_float", r.output));
        let mut cast = op("Cast", names.fresh(&format!("{base}/tract_cast")), vec![r.input.clone()], float.clone());
        cast.attribute.push(attr_int("to", DataType::F32.onnx() as i64));
        let mut nodes = vec![cast];
        let mut centered = float;
        if r.zero_point != 0 {
            let zp = names.fresh(&format!("{}/tract_zero_point", r.output));
            graph.initializer.push(f32_scalar(zp.clone(), r.zero_point as f32));
            let out = names.fresh(&format!("{}/tract_centered", r.output));
            nodes.push(op("Sub", names.fresh(&format!("{base}/tract_sub")), vec![centered, zp], out.clone()));
            centered = out;
        }
        // A rank-0 scale: a [1]-shaped one would turn a scalar input into [1].
        let scale = names.fresh(&format!("{}/tract_scale", r.output));
        graph.initializer.push(f32_scalar(scale.clone(), r.scale));
        if r.half {
            let product = names.fresh(&format!("{}/tract_product", r.output));
            nodes.push(op("Mul", names.fresh(&format!("{base}/tract_mul")), vec![centered, scale], product.clone()));
            let mut back = op("Cast", names.fresh(&format!("{base}/tract_cast_back")), vec![product], r.output.clone());
            back.attribute.push(attr_int("to", DataType::F16.onnx() as i64));
            nodes.push(back);
        } else {
            nodes.push(op("Mul", names.fresh(&format!("{base}/tract_mul")), vec![centered, scale], r.output.clone()));
        }
        graph.node.splice(at..=at, nodes);
    }
    Ok(rewrites.len())
}

mod half;
mod weights;
pub(crate) use half::{half_products, widen_half_products, widen_half_scales};
pub(crate) use weights::{fold_weights, plan_weights};

#[cfg(test)]
mod tests;
