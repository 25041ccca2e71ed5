//! What a "layer" is for sensitivity analysis, and how one goes back to float.
//!
//! A layer is a weighted op or a residual Add that reads at least one input
//! through DequantizeLinear. Putting it back in float means reading each
//! activation `DQ(Q(x))` as `x` (and, on request, each int8 weight as the
//! float weight of the model before `insert-qdq`). The float copy is matched
//! by node name, never by id: ids of the quantized graph name nodes the copy
//! may not have.

use qforge_ir::{Graph, NodeId, ValueId};

use crate::PassError;
use crate::qdq_rules::{WEIGHTED_OPS, is_residual_add};
use crate::util::describe;

/// Quantized layers, in graph order.
pub fn quantized_layers(g: &Graph) -> Vec<NodeId> {
    g.nodes()
        .filter(|&n| {
            let node = g.node(n);
            (WEIGHTED_OPS.contains(&node.op_type()) || is_residual_add(g, n))
                && node.output(0).is_some()
                && node.inputs().iter().flatten().any(|&v| dq_producer(g, v).is_some())
        })
        .collect()
}

fn dq_producer(g: &Graph, v: ValueId) -> Option<NodeId> {
    g.producer_node(v).filter(|&d| g.node(d).is_op("DequantizeLinear"))
}

/// How input `slot` of layer `n` reads in float, if it is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatInput {
    /// An activation `DQ(Q(x))`: read `x`.
    Activation(ValueId),
    /// A quantized constant (a weight): its float version is in the float model.
    Weight,
}

/// The quantized inputs of `n`: slot and how it reads in float.
pub fn quantized_inputs(g: &Graph, n: NodeId) -> Vec<(usize, FloatInput)> {
    let mut out = Vec::new();
    for (slot, v) in g.node(n).inputs().iter().enumerate() {
        let Some(d) = v.and_then(|v| dq_producer(g, v)) else { continue };
        let q = g.node(d).input(0).and_then(|s| g.producer_node(s)).filter(|&q| g.node(q).is_op("QuantizeLinear"));
        match q.and_then(|q| g.node(q).input(0)) {
            Some(x) => out.push((slot, FloatInput::Activation(x))),
            None => out.push((slot, FloatInput::Weight)),
        }
    }
    out
}

/// The float weight at input `slot` of the node named like `n` in `float`.
pub fn float_weight(g: &Graph, n: NodeId, slot: usize, float: &Graph) -> Option<(String, qforge_ir::Tensor)> {
    let name = g.node(n).name();
    if name.is_empty() {
        return None;
    }
    let mut same = float.nodes().filter(|&f| float.node(f).name() == name);
    let f = same.next()?;
    if same.next().is_some() || float.node(f).op_type() != g.node(n).op_type() {
        return None;
    }
    let w = float.node(f).input(slot)?;
    Some((float.value_name(w).to_string(), float.constant(w)?))
}

/// Rewires `n` to read float inputs: activations always, weights when
/// `weights` is set (from `float`, matched by node name).
pub fn to_float(g: &mut Graph, n: NodeId, float: &Graph, weights: bool) -> Result<(), PassError> {
    for (slot, input) in quantized_inputs(g, n) {
        match input {
            FloatInput::Activation(x) => g.set_input(n, slot, Some(x)),
            FloatInput::Weight if weights => {
                let (name, t) = float_weight(g, n, slot, float).ok_or_else(|| {
                    PassError::msg(format!(
                        "{}: cannot find its float weight (input {slot}) in the model before insert-qdq",
                        describe(g, n)
                    ))
                })?;
                let w = g.add_initializer(&name, t);
                g.set_input(n, slot, Some(w));
            }
            FloatInput::Weight => {}
        }
    }
    Ok(())
}
