//! What TensorRT will fuse, predicted offline from the Q/DQ graph.
//!
//! Why: a Q/DQ pair TensorRT cannot fuse is not free. It runs as its own
//! quantize or dequantize kernel, a reformat between INT8 and FP16 in the
//! middle of the network, and it can keep a layer from running in INT8 at
//! all. Users only see that after an engine build on the GPU machine, in
//! per-layer timings; this module tells them before, from the rules of the
//! TensorRT developer guide's chapter on explicit quantization (the rule
//! each finding rests on is named in [`Rule`]).
//!
//! The model of TensorRT used here, for each *quantized layer* (a
//! Conv/ConvTranspose/Gemm/MatMul whose data input and weight both come from
//! a `DequantizeLinear`):
//!
//! - its input DQs fuse into it ([`Rule::DqIntoConsumer`]);
//! - the point-wise ops after it that TensorRT folds into its epilogue
//!   (activations, SiLU as `Mul(x, Sigmoid(x))`, a residual `Add`) are
//!   followed to the tensor the fused layer writes;
//! - that tensor is INT8 when every reader is a `QuantizeLinear`: the Q fuses
//!   into the layer's output ([`Rule::QIntoProducer`]); when a float layer
//!   reads it beside a Q, the layer writes FP16 and the Q runs alone, a
//!   reformat ([`Rule::MixedReaders`]); with no Q it writes float, which is
//!   not a finding;
//! - a Q/DQ pair between the layer's output chain and a residual `Add`
//!   whose other input is quantized keeps the `Add` out of the layer
//!   ([`Rule::ResidualQdq`]): the guide places Q/DQ on the residual input only.
//!
//! Beyond the layers: a DQ read by an op TensorRT does not run in INT8 is a
//! standalone dequantize ([`Rule::DqIntoConsumer`] cannot apply), unless DQ
//! propagation moves it across ops that commute with quantization (MaxPool,
//! nearest Resize, data movement) to a quantized consumer
//! ([`Rule::Commuting`]); a Concat whose inputs are dequantized with different
//! scales cannot run in INT8 ([`Rule::ConcatScales`]).

use std::fmt;

use qforge_ir::{Graph, NodeId, ValueId};

use crate::qdq_rules::{WEIGHTED_OPS, fused_epilogue};

/// The rule of the TensorRT developer guide ("Explicit Quantization") a
/// finding rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// "Q/DQ Fusion": a DQ is fused into the quantizable layer that reads it.
    DqIntoConsumer,
    /// "Q/DQ Fusion": a Q after a quantized layer (and its fused point-wise
    /// epilogue) is fused into the layer's output, which becomes INT8.
    QIntoProducer,
    /// "Q/DQ Layer-Placement Recommendations": quantizing a tensor that a
    /// float layer also reads forces the producer to write high precision
    /// and a separate quantize.
    MixedReaders,
    /// "Q/DQ Layer-Placement Recommendations" (residual connections): Q/DQ on
    /// the output of the layer before an element-wise Add prevents fusing the
    /// Add into it; quantize the residual input only.
    ResidualQdq,
    /// "Q/DQ Propagation": DQ moves forward, Q backward, across layers that
    /// commute with quantization (MaxPool, nearest Resize, data movement).
    Commuting,
    /// "Q/DQ Propagation" / Concat: a Concat runs in INT8 only when every
    /// input carries the same scale.
    ConcatScales,
}

impl Rule {
    /// The guide's section, for the report.
    pub fn section(self) -> &'static str {
        match self {
            Rule::DqIntoConsumer | Rule::QIntoProducer => "Q/DQ fusion",
            Rule::MixedReaders | Rule::ResidualQdq => "Q/DQ layer-placement recommendations",
            Rule::Commuting | Rule::ConcatScales => "Q/DQ propagation",
        }
    }
}

/// How the output of a quantized layer leaves the fused kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Every reader is a Q: INT8 output.
    Int8,
    /// No Q reads it: FP16/FP32 output (normal before float layers).
    Float,
    /// Q and float readers: high-precision output plus a standalone Q.
    Mixed,
}

/// The prediction for one quantized layer.
#[derive(Debug, Clone)]
pub struct LayerFusion {
    /// Node name.
    pub layer: String,
    /// Op type.
    pub op: String,
    /// The point-wise ops fused after it (op types, in order).
    pub epilogue: Vec<String>,
    /// What it writes.
    pub output: Output,
}

/// A Q/DQ that will not fuse, or a precision boundary that costs a reformat.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The rule it follows from.
    pub rule: Rule,
    /// The node the finding is about.
    pub node: String,
    /// What happens and what to change.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\": {} [TensorRT guide: {}]", self.node, self.message, self.rule.section())
    }
}

/// The whole prediction.
#[derive(Debug, Clone, Default)]
pub struct Fusion {
    /// Every quantized layer, in graph order.
    pub layers: Vec<LayerFusion>,
    /// Everything that will not fuse.
    pub findings: Vec<Finding>,
}

impl Fusion {
    /// The per-layer table, one line per quantized layer, then the findings.
    pub fn to_text(&self) -> String {
        let mut s = String::from(
            "# TensorRT fusion prediction (explicit quantization rules)\n# layer\top\tfused epilogue\toutput\n",
        );
        for l in &self.layers {
            let out = match l.output {
                Output::Int8 => "INT8 (Q fused)",
                Output::Float => "float",
                Output::Mixed => "float + standalone Q (reformat)",
            };
            let epi = if l.epilogue.is_empty() { "-".to_string() } else { l.epilogue.join("+") };
            s.push_str(&format!("{}\t{}\t{epi}\t{out}\n", l.layer, l.op));
        }
        s.push_str(&format!("# {} finding(s)\n", self.findings.len()));
        for f in &self.findings {
            s.push_str(&format!("{f}\n"));
        }
        s
    }
}

/// Ops DQ propagation moves across (they commute with per-tensor quantization).
const COMMUTING: &[&str] =
    &["MaxPool", "Resize", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity"];

/// Ops that run in INT8 when their inputs are dequantized.
const QUANTIZABLE: &[&str] =
    &["Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "AveragePool", "GlobalAveragePool", "Concat"];

fn is(g: &Graph, n: NodeId, op: &str) -> bool {
    g.node(n).is_op(op)
}

fn name(g: &Graph, n: NodeId) -> String {
    let node = g.node(n);
    if node.name().is_empty() {
        node.output(0).map(|v| g.value_name(v).to_string()).unwrap_or_default()
    } else {
        node.name().to_string()
    }
}

fn from_dq(g: &Graph, v: Option<ValueId>) -> Option<NodeId> {
    g.producer_node(v?).filter(|&p| is(g, p, "DequantizeLinear"))
}

/// Whether `n` is a quantized weighted layer.
fn quantized_layer(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    WEIGHTED_OPS.contains(&node.op_type()) && from_dq(g, node.input(0)).is_some() && from_dq(g, node.input(1)).is_some()
}

/// The Add a residual join ends in, when `v` is read by exactly one Add.
fn sole_add(g: &Graph, v: ValueId) -> Option<NodeId> {
    match g.users(v).as_slice() {
        [a] if is(g, *a, "Add") => Some(*a),
        _ => None,
    }
}

/// Where a DQ's value ends up after DQ propagation: the first readers that
/// do not commute with quantization.
fn propagated_readers(g: &Graph, v: ValueId) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut stack = vec![(v, 0)];
    while let Some((v, depth)) = stack.pop() {
        for u in g.users(v) {
            let node = g.node(u);
            let commutes = COMMUTING.contains(&node.op_type())
                && (!node.is_op("Resize") || node.attr_str("mode").is_none_or(|m| m == "nearest"));
            if commutes && depth < 16 {
                stack.extend(node.outputs().iter().flatten().map(|&o| (o, depth + 1)));
            } else {
                out.push(u);
            }
        }
    }
    out
}

/// Predicts what TensorRT will fuse in `g`.
pub fn predict(g: &Graph) -> Fusion {
    let mut f = Fusion::default();
    for n in g.nodes() {
        if !quantized_layer(g, n) {
            continue;
        }
        let node = g.node(n);
        let Some(y) = node.output(0) else { continue };
        let (end, epi) = fused_epilogue(g, y);
        let readers = g.users(end);
        let qs = readers.iter().filter(|&&r| is(g, r, "QuantizeLinear")).count();
        let output = match (qs, readers.len() - qs) {
            (0, _) => Output::Float,
            (_, 0) if !g.is_graph_output(end) => Output::Int8,
            _ => Output::Mixed,
        };
        if output == Output::Mixed {
            let floats: Vec<String> = readers
                .iter()
                .filter(|&&r| !is(g, r, "QuantizeLinear"))
                .map(|&r| format!("\"{}\" ({})", name(g, r), g.node(r).op_type()))
                .collect();
            f.findings.push(Finding {
                rule: Rule::MixedReaders,
                node: name(g, n),
                message: format!(
                    "its output is quantized and also read in float by {}{}: the layer writes high precision \
                     and the Q runs alone (a reformat); quantize every reader or none",
                    floats.join(", "),
                    if g.is_graph_output(end) { " and the graph output" } else { "" }
                ),
            });
        }
        // A Q/DQ pair between the epilogue and a residual Add.
        if qs == 1 && readers.len() == 1 {
            let q = readers[0];
            let dq = g.node(q).output(0).and_then(|o| match g.users(o).as_slice() {
                [d] if is(g, *d, "DequantizeLinear") => Some(*d),
                _ => None,
            });
            if let Some(add) = dq.and_then(|d| g.node(d).output(0)).and_then(|o| sole_add(g, o)) {
                let add_inputs = g.node(add).inputs().iter().flatten().copied().collect::<Vec<_>>();
                if add_inputs.len() == 2 && add_inputs.iter().all(|&i| from_dq(g, Some(i)).is_some()) {
                    f.findings.push(Finding {
                        rule: Rule::ResidualQdq,
                        node: name(g, n),
                        message: format!(
                            "a Q/DQ pair sits between it and the residual Add \"{}\": TensorRT cannot fuse the Add \
                             into it; quantize only the Add's other input",
                            name(g, add)
                        ),
                    });
                }
            }
        }
        f.layers.push(LayerFusion { layer: name(g, n), op: node.op_type().to_string(), epilogue: epi, output });
    }
    for n in g.nodes() {
        if !is(g, n, "DequantizeLinear") {
            continue;
        }
        let Some(x) = g.node(n).input(0) else { continue };
        if g.constant(x).is_some()
            || g.producer_node(x).is_some_and(|p| g.node(p).input(0).is_some_and(|w| g.constant(w).is_some()))
        {
            continue; // weights: folded into the layer at build time
        }
        let Some(y) = g.node(n).output(0) else { continue };
        for r in propagated_readers(g, y) {
            let op = g.node(r).op_type();
            if !QUANTIZABLE.contains(&op) && op != "QuantizeLinear" {
                f.findings.push(Finding {
                    rule: Rule::DqIntoConsumer,
                    node: name(g, n),
                    message: format!(
                        "read by \"{}\" ({op}), which TensorRT does not run in INT8: a standalone dequantize \
                         (INT8 -> float reformat)",
                        name(g, r)
                    ),
                });
            }
        }
    }
    for n in g.nodes().filter(|&n| is(g, n, "Concat")) {
        let scales: Vec<Option<Vec<f32>>> = g
            .node(n)
            .inputs()
            .iter()
            .map(|&i| {
                from_dq(g, i)
                    .and_then(|d| g.node(d).input(1))
                    .and_then(|s| g.constant(s))
                    .and_then(|t| t.to_f32_vec().ok())
            })
            .collect();
        if scales.iter().all(Option::is_some) && scales.len() > 1 && scales.windows(2).any(|w| w[0] != w[1]) {
            f.findings.push(Finding {
                rule: Rule::ConcatScales,
                node: name(g, n),
                message: "its inputs are dequantized with different scales: it cannot run in INT8 (each input is \
                          dequantized, concatenated in float and requantized); give its inputs one shared scale"
                    .into(),
            });
        }
    }
    f
}

#[cfg(test)]
mod tests;
