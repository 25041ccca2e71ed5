//! Weight `DequantizeLinear` nodes computed before tract reads the graph.
//!
//! A quantized model keeps each weight as int8 codes behind a
//! `DequantizeLinear` with constant scale and zero point. tract folds such a
//! node to a float constant itself, but inside its optimizer, one model patch
//! per node, and tract 0.23 compares every node a patch adds with every node
//! of the model (`ModelPatch::apply`): the cost grows with the square of the
//! graph's size. On nudenet's Q/DQ model (66 weights) preparing a session took
//! 0.375 s with the nodes and 0.199 s without; `skip-sensitive` prepares one
//! per trial.
//!
//! The values are those tract (and ONNX Runtime) compute: `y = (x - zp) ·
//! scale` with the integer difference exact in f32 and one f32 product, per
//! tensor or per channel of `axis`. Only 8-bit codes with f32 scales are
//! folded; blocked, float16 or graph-output dequantizations are left to tract.

use std::collections::HashSet;

use qforge_ir::proto::GraphProto;
use qforge_ir::{DataType, Graph, Tensor};

/// One weight `DequantizeLinear` and the float tensor it computes.
#[derive(Debug, Clone)]
pub(crate) struct FoldedWeight {
    /// The node's output, which the tensor replaces (same name).
    output: String,
    tensor: Tensor,
    /// The codes' initializer, when nothing else reads it.
    codes: Option<String>,
}

/// `(x - zp) · scale` of a constant `DequantizeLinear`, or `None` when it
/// is not one this module folds.
fn dequantize(g: &Graph, n: qforge_ir::NodeId) -> Option<Tensor> {
    let node = g.node(n);
    if node.attr_int("block_size").is_some_and(|b| b != 0) {
        return None;
    }
    let x = g.constant(node.input(0)?)?;
    if !matches!(x.dtype(), Some(DataType::I8 | DataType::U8)) {
        return None;
    }
    let scale = g.constant(node.input(1)?)?;
    if scale.dtype() != Some(DataType::F32) {
        return None;
    }
    let scale = scale.to_f32_vec().ok()?;
    let zp = match node.input(2) {
        Some(z) => {
            let t = g.constant(z)?;
            if t.dtype() != x.dtype() {
                return None;
            }
            t.to_i64_vec().ok()?
        }
        None => vec![0; scale.len()],
    };
    if zp.len() != scale.len() || scale.is_empty() {
        return None;
    }
    let dims = x.dims().to_vec();
    let codes = x.to_i64_vec().ok()?;
    let (channels, inner) = if scale.len() == 1 {
        (1, codes.len().max(1))
    } else {
        let rank = dims.len() as i64;
        let axis = node.attr_int("axis").unwrap_or(1);
        let axis = if axis < 0 { axis + rank } else { axis };
        if !(0..rank).contains(&axis) || dims[axis as usize] as usize != scale.len() {
            return None;
        }
        let inner: i64 = dims[axis as usize + 1..].iter().product();
        (scale.len(), inner.max(1) as usize)
    };
    let mut y: Vec<f32> = Vec::with_capacity(codes.len());
    for (k, block) in codes.chunks(inner).enumerate() {
        let c = k % channels;
        y.extend(block.iter().map(|&q| (q - zp[c]) as f32 * scale[c]));
    }
    Some(Tensor::new(&dims, &y))
}

/// The weight `DequantizeLinear` nodes of `g` to fold, with their values.
pub(crate) fn plan_weights(g: &Graph) -> Vec<FoldedWeight> {
    let outputs: HashSet<_> = g.outputs().iter().map(|p| p.value).collect();
    g.nodes()
        .filter(|&n| g.node(n).is_op("DequantizeLinear") && g.node(n).domain().is_empty())
        .filter_map(|n| {
            let y = g.node(n).output(0)?;
            if outputs.contains(&y) || g.node(n).outputs().len() != 1 {
                return None;
            }
            let tensor = dequantize(g, n)?;
            let x = g.node(n).input(0)?;
            let codes = (g.uses(x).len() == 1 && !g.is_graph_input(x)).then(|| g.value_name(x).to_string());
            Some(FoldedWeight { output: g.value_name(y).to_string(), tensor, codes })
        })
        .collect()
}

/// Replaces each planned node of the exported `graph` by an initializer
/// holding its value, and drops the code initializers only it read (kept
/// when the graph has subgraphs, which may read outer names); returns how
/// many nodes were folded.
pub(crate) fn fold_weights(graph: &mut GraphProto, folded: Vec<FoldedWeight>) -> usize {
    if folded.is_empty() {
        return 0;
    }
    let targets: HashSet<&str> = folded.iter().map(|f| f.output.as_str()).collect();
    let before = graph.node.len();
    graph.node.retain(|n| {
        !(n.op_type() == "DequantizeLinear" && n.output.first().is_some_and(|o| targets.contains(o.as_str())))
    });
    let count = before - graph.node.len();
    let subgraphs = graph.node.iter().any(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()));
    let mut unread: HashSet<String> = HashSet::new();
    for f in folded {
        if let Some(c) = f.codes.filter(|_| !subgraphs) {
            unread.insert(c);
        }
        let mut t = f.tensor.into_proto();
        t.name = Some(f.output);
        graph.initializer.push(t);
    }
    graph.initializer.retain(|t| !unread.contains(t.name()));
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tract_engine::TractSession;
    use crate::{Session, SessionOptions};
    use qforge_ir::{Model, parse_graph};

    /// Per-channel int8 weights (axis 0, nonzero zero points) and a
    /// per-tensor uint8 one, each behind a DequantizeLinear.
    const WEIGHTS: &str = "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,3,6,6]\n  \
        init @wq: i8[4,3,3,3] = rand(1)\n  init @ws: f32[4] = [0.011, 0.023, 0.0071, 0.05]\n  init @wz: i8[4] = [0, 3, -2, 0]\n  \
        init @vq: u8[2,4,1,1] = rand(2)\n  init @vs: f32[] = [0.0131]\n  init @vz: u8[] = [121]\n  \
        %w = DequantizeLinear(@wq, @ws, @wz) {axis=0}  # dqw\n  %a = Conv(%x, %w) {pads=[1,1,1,1]}  # conv1\n  \
        %v = DequantizeLinear(@vq, @vs, @vz)  # dqv\n  %y = Conv(%a, %v)  # conv2\n  output %y\n}\n";

    #[test]
    fn weight_dequantizations_are_folded_to_the_values_tract_computes() {
        let g = parse_graph(WEIGHTS).unwrap();
        let planned = plan_weights(&g);
        let names: Vec<&str> = planned.iter().map(|f| f.output.as_str()).collect();
        assert_eq!(names, ["w", "v"]);
        // Spot values against the spec's formula.
        let w = planned[0].tensor.to_f32_vec().unwrap();
        let codes = g.constant(g.find_value("wq").unwrap()).unwrap().to_i64_vec().unwrap();
        for (i, (&q, &y)) in codes.iter().zip(&w).enumerate() {
            let c = i / 27;
            let (s, z) = ([0.011f32, 0.023, 0.0071, 0.05][c], [0i64, 3, -2, 0][c]);
            assert_eq!(y.to_bits(), ((q - z) as f32 * s).to_bits(), "#{i}");
        }
        let mut proto = qforge_ir::export(&Model::new(g.clone()));
        let graph = proto.graph.as_mut().unwrap();
        assert_eq!(fold_weights(graph, planned), 2);
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type()).collect();
        assert_eq!(ops, ["Conv", "Conv"]);
        let inits: Vec<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        for gone in ["wq", "vq"] {
            assert!(!inits.contains(&gone), "the codes {gone} are read by nothing now: {inits:?}");
        }
        // The model with the fold (fixups on) computes bit for bit what tract
        // computes from the nodes (fixups off: nothing else applies here).
        let model = Model::new(g);
        let x = crate::random_inputs(&[("x".into(), vec![1, 3, 6, 6], DataType::F32)], 4).remove(0);
        let opts = SessionOptions::default();
        let folded = TractSession::build(&model, &opts, true).unwrap().run(std::slice::from_ref(&x)).unwrap();
        let nodes = TractSession::build(&model, &opts, false).unwrap().run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(folded, nodes);
    }

    #[test]
    fn codes_read_elsewhere_and_graph_outputs_stay() {
        // The codes are also a graph output, the second DQ's output too.
        let text = "graph g {\n  opset ai.onnx 13\n  input %x: f32[2]\n  init @c: i8[2] = [3, -4]\n  init @s: f32[] = [0.5]\n  \
            %w = DequantizeLinear(@c, @s)  # dq\n  %u = DequantizeLinear(@c, @s)  # dq_out\n  %y = Add(%x, %w)  # add\n  \
            output %y\n  output %u\n}\n";
        let g = parse_graph(text).unwrap();
        let planned = plan_weights(&g);
        assert_eq!(planned.len(), 1, "the graph output's DQ is left to tract");
        assert_eq!(planned[0].codes, None, "@c has another reader");
        let mut proto = qforge_ir::export(&Model::new(g));
        let graph = proto.graph.as_mut().unwrap();
        fold_weights(graph, planned);
        assert!(graph.initializer.iter().any(|t| t.name() == "c"));
    }
}
