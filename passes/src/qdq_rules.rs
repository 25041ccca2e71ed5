//! Which tensors INT8 quantization touches (TensorRT explicit quantization,
//! DESIGN.md "Quantization rules"): shared by `calibrate`, which must collect
//! statistics for exactly those tensors, and `insert-qdq`, which places Q/DQ
//! on them.

use qforge_ir::{Graph, NodeId, ValueDef, ValueId};

/// Ops whose inputs get Q/DQ: TensorRT fuses them into INT8 kernels.
pub const WEIGHTED_OPS: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];

/// Ops whose input and output must share one scale (TensorRT runs them in
/// INT8 without a requantize only then).
pub const SCALE_SHARING_OPS: &[&str] = &["Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize"];

/// True when `v` is computed at run time (not an initializer or Constant).
pub fn is_activation(g: &Graph, v: ValueId) -> bool {
    g.constant(v).is_none() && !matches!(g.value(v).def(), ValueDef::Initializer | ValueDef::SparseInitializer)
}

fn is_float_or_unknown(g: &Graph, v: ValueId) -> bool {
    g.dtype(v).is_none_or(|d| d.is_float())
}

/// True for an `Add` whose two inputs are both activations (a residual join).
pub fn is_residual_add(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.is_op("Add")
        && node.inputs().len() == 2
        && node.inputs().iter().all(|i| i.is_some_and(|v| is_activation(g, v)))
}

/// The activation tensors a quantized graph may carry in INT8: inputs of
/// weighted ops, both inputs of residual Adds, the data inputs and outputs
/// of scale-sharing ops, and the inputs of existing QuantizeLinear nodes.
/// In graph order, without duplicates.
pub fn activation_targets(g: &Graph) -> Vec<ValueId> {
    let mut out: Vec<ValueId> = Vec::new();
    let push = |v: ValueId, out: &mut Vec<ValueId>| {
        if is_activation(g, v) && is_float_or_unknown(g, v) && !out.contains(&v) {
            out.push(v);
        }
    };
    for n in g.nodes() {
        let node = g.node(n);
        if !matches!(node.domain(), "" | "ai.onnx") {
            continue;
        }
        let op = node.op_type();
        if WEIGHTED_OPS.contains(&op) {
            // Data input, and a MatMul's second input when it is computed.
            for slot in [0, 1] {
                if let Some(v) = node.input(slot)
                    && (slot == 0 || op == "MatMul")
                {
                    push(v, &mut out);
                }
            }
        } else if op == "QuantizeLinear" {
            // A model that already holds Q/DQ (QAT export): calibrate the
            // float tensors being quantized, so `on_quantized: requantize`
            // has ranges once the old pairs are stripped.
            if let Some(v) = node.input(0) {
                push(v, &mut out);
            }
        } else if is_residual_add(g, n) {
            node.inputs().iter().flatten().for_each(|&v| push(v, &mut out));
        } else if SCALE_SHARING_OPS.contains(&op) {
            let data_inputs: Vec<ValueId> = if op == "Concat" {
                node.inputs().iter().flatten().copied().collect()
            } else {
                node.input(0).into_iter().collect()
            };
            for v in data_inputs.into_iter().chain(node.output(0)) {
                push(v, &mut out);
            }
        }
    }
    out
}

/// Every float activation: graph inputs and node outputs.
pub fn all_float_activations(g: &Graph) -> Vec<ValueId> {
    let mut out: Vec<ValueId> = g.runtime_inputs().into_iter().filter(|&v| is_float_or_unknown(g, v)).collect();
    for n in g.nodes() {
        for &v in g.node(n).outputs().iter().flatten() {
            if is_activation(g, v) && is_float_or_unknown(g, v) && !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

/// The output-channel axis of the weight (input 1) of a weighted op:
/// Conv and Gemm with transB: 0; ConvTranspose, Gemm without transB, MatMul: 1.
pub fn weight_axis(g: &Graph, n: NodeId) -> Option<usize> {
    let node = g.node(n);
    Some(match node.op_type() {
        "Conv" => 0,
        "ConvTranspose" => 1,
        "Gemm" if node.attr_int("transB") == Some(1) => 0,
        "Gemm" | "MatMul" => 1,
        _ => return None,
    })
}

/// The constant weight of a weighted op and its output-channel axis.
pub fn weight_and_axis(g: &Graph, n: NodeId) -> Option<(ValueId, usize)> {
    let w = g.node(n).input(1)?;
    g.constant(w)?;
    Some((w, weight_axis(g, n)?))
}

/// Point-wise ops TensorRT fuses into a convolution's epilogue.
const ACTIVATIONS: &[&str] =
    &["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus", "PRelu"];

fn is_op(g: &Graph, n: NodeId, op: &str) -> bool {
    g.node(n).is_op(op)
}

/// Follows the epilogue TensorRT fuses after a weighted layer writing `v`
/// (activations, SiLU as `Mul(x, Sigmoid(x))`, a residual `Add` whose other
/// input is dequantized or constant); returns the tensor the fused kernel
/// writes and the fused op types. Shared by `insert-qdq` (which input of a
/// residual Add to leave unquantized) and the `tensorrt` fusion prediction.
pub fn fused_epilogue(g: &Graph, mut v: ValueId) -> (ValueId, Vec<String>) {
    let mut ops = Vec::new();
    for _ in 0..8 {
        let users = g.users(v);
        // SiLU: x read by Sigmoid and by Mul(x, Sigmoid(x)).
        if let [a, b] = users.as_slice() {
            let (s, m) = if is_op(g, *a, "Sigmoid") { (*a, *b) } else { (*b, *a) };
            if is_op(g, s, "Sigmoid") && is_op(g, m, "Mul") {
                let sig_out = g.node(s).output(0);
                let mul_in: Vec<ValueId> = g.node(m).inputs().iter().flatten().copied().collect();
                if sig_out.is_some_and(|so| mul_in.contains(&so) && g.users(so).len() == 1) && mul_in.contains(&v) {
                    let Some(out) = g.node(m).output(0) else { break };
                    ops.push("SiLU".to_string());
                    v = out;
                    continue;
                }
            }
        }
        let [u] = users.as_slice() else { break };
        let op = g.node(*u).op_type();
        let Some(out) = g.node(*u).output(0) else { break };
        if ACTIVATIONS.contains(&op) {
            ops.push(op.to_string());
            v = out;
        } else if op == "Add" {
            // A residual Add joins the epilogue when its other input is
            // dequantized INT8 or a constant (a bias).
            let other = g.node(*u).inputs().iter().flatten().copied().find(|&i| i != v);
            if other.is_some_and(|o| {
                g.producer_node(o).is_some_and(|p| is_op(g, p, "DequantizeLinear")) || g.constant(o).is_some()
            }) {
                ops.push("Add".to_string());
                v = out;
            } else {
                break;
            }
        } else {
            break;
        }
    }
    (v, ops)
}
