//! Raising the default-domain opset when a pass needs newer ops (Q/DQ with
//! `axis` needs 13).
//!
//! Raising the number is only legal when no op in the graph changed meaning
//! between the old and the new version; the table below lists, for the ops
//! detectors use, the versions whose semantics are incompatible with the
//! previous one (inputs that moved from attributes, changed axis rules).
//! A graph containing such an op in the affected range is refused with the
//! list, rather than silently changed.

use qforge_ir::{Graph, NodeId, Tensor, attr_int};

/// (op, version whose semantics break with the one before it).
const BREAKING: &[(&str, i64)] = &[
    ("Upsample", 10),
    ("Slice", 10),
    ("TopK", 10),
    ("Resize", 11),
    ("Clip", 11),
    ("Pad", 11),
    ("Scan", 9),
    ("Split", 13),
    ("Squeeze", 13),
    ("Unsqueeze", 13),
    ("ReduceSum", 13),
    ("Softmax", 13),
    ("LogSoftmax", 13),
    ("Hardmax", 13),
    ("Pad", 18),
    ("Split", 18),
    ("ReduceMean", 18),
    ("ReduceMax", 18),
    ("ReduceMin", 18),
    ("ReduceProd", 18),
    ("ReduceL1", 18),
    ("ReduceL2", 18),
    ("ReduceLogSum", 18),
    ("ReduceLogSumExp", 18),
    ("ReduceSumSquare", 18),
];

/// Raises the default-domain opset to at least `min`. Returns the old
/// version when it changed, or the ops that forbid the change.
pub fn ensure_opset(g: &mut Graph, min: i64) -> Result<Option<i64>, String> {
    let old = g.opset("").unwrap_or(1);
    if old >= min {
        return Ok(None);
    }
    // Crossing 13 and 18 in one go: each step's rewrites see the node as
    // the step before left it (a Split first takes its sizes as an input).
    if old < 13 && min > 13 {
        ensure_opset(g, 13)?;
        ensure_opset(g, min)?;
        return Ok(Some(old));
    }
    let mut blocking: Vec<String> = Vec::new();
    let mut fixes: Vec<(NodeId, Fix)> = Vec::new();
    for n in g.nodes() {
        let node = g.node(n);
        if !matches!(node.domain(), "" | "ai.onnx") {
            continue;
        }
        for &(op, v) in BREAKING {
            if node.op_type() == op && old < v && v <= min {
                let fix = match v {
                    13 => fix_for_13(g, n),
                    18 => fix_for_18(g, n),
                    _ => None,
                };
                if let Some(fix) = fix {
                    fixes.push((n, fix));
                    continue;
                }
                let s = format!("{op} (changed in opset {v})");
                if !blocking.contains(&s) {
                    blocking.push(s);
                }
            }
        }
    }
    if !blocking.is_empty() {
        return Err(format!(
            "the model uses opset {old} and needs {min}, but these ops changed meaning in between: {}; re-export the model at opset {min} or later",
            blocking.join(", ")
        ));
    }
    for (n, fix) in fixes {
        match fix {
            Fix::None => {}
            Fix::NumOutputs(k) => g.node_mut(n).set_attr(attr_int("num_outputs", k)),
            Fix::AxesInput(axes) => move_to_input(g, n, "axes", &axes),
            Fix::SplitInput(sizes) => move_to_input(g, n, "split", &sizes),
            Fix::Axis(a) => g.node_mut(n).set_attr(attr_int("axis", a)),
        }
    }
    g.set_opset("", min);
    Ok(Some(old))
}

/// An int64 list attribute of `n` becomes its input 1.
fn move_to_input(g: &mut Graph, n: NodeId, attr: &str, values: &[i64]) {
    let name = format!("{}_{attr}", g.node(n).name());
    let v = g.add_initializer(&name, Tensor::new(&[values.len() as i64], values));
    g.set_input(n, 1, Some(v));
    g.node_mut(n).remove_attr(attr);
}

/// How a node keeps its meaning across opset 13 or 18.
enum Fix {
    /// Nothing to change (the node does not use what changed).
    None,
    /// Split without sizes: opset 18 wants the number of outputs said.
    NumOutputs(i64),
    /// Reduce*/Squeeze/Unsqueeze with an `axes` attribute: the new version
    /// takes axes as input 1.
    AxesInput(Vec<i64>),
    /// Split with a `split` attribute: opset 13 takes the sizes as input 1.
    SplitInput(Vec<i64>),
    /// Softmax-family on its last axis: said explicitly (the default moved
    /// from 1 to -1).
    Axis(i64),
}

/// The rewrite that carries `n` across opset 13, if there is one.
fn fix_for_13(g: &Graph, n: NodeId) -> Option<Fix> {
    let node = g.node(n);
    match node.op_type() {
        "Split" => Some(match node.attr_ints("split") {
            Some(sizes) => Fix::SplitInput(sizes.to_vec()),
            None => Fix::None,
        }),
        "Squeeze" | "Unsqueeze" | "ReduceSum" => Some(match node.attr_ints("axes") {
            Some(axes) => Fix::AxesInput(axes.to_vec()),
            // Unsqueeze always had axes; Squeeze/ReduceSum without them
            // mean the same in 13 (all unit dims / all axes).
            None if node.op_type() != "Unsqueeze" => Fix::None,
            None => return None,
        }),
        // Before 13 these flatten the input to 2-D at `axis` (default 1)
        // and normalize each row; from 13 they normalize along `axis`
        // (default -1). The two agree when `axis` is the last axis.
        "Softmax" | "LogSoftmax" | "Hardmax" => {
            let rank = g.type_info(node.input(0)?)?.shape?.rank() as i64;
            let axis = node.attr_int("axis").unwrap_or(1);
            (axis == rank - 1 || axis == -1).then_some(Fix::Axis(-1))
        }
        _ => None,
    }
}

/// The rewrite that carries `n` across opset 18, if there is one.
fn fix_for_18(g: &Graph, n: NodeId) -> Option<Fix> {
    let node = g.node(n);
    match node.op_type() {
        // Split 13 with a `split` input reads the same at 18; without one it
        // splits evenly into as many outputs as it has.
        "Split" if node.input(1).is_some() => Some(Fix::None),
        "Split" if node.attr("split").is_none() => Some(Fix::NumOutputs(node.outputs().len() as i64)),
        // Pad 18 only adds an optional `axes` input.
        "Pad" => Some(Fix::None),
        op if op.starts_with("Reduce") && op != "ReduceSum" => match node.attr_ints("axes") {
            Some(axes) => Some(Fix::AxesInput(axes.to_vec())),
            None if node.input(1).is_none() => Some(Fix::None),
            None => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_when_safe_and_refuses_otherwise() {
        let mut g = qforge_ir::parse_graph(
            "graph g {\n  opset ai.onnx 11\n  input %x: f32[1]\n  %y = Relu(%x)\n  output %y\n}\n",
        )
        .unwrap();
        assert_eq!(ensure_opset(&mut g, 13), Ok(Some(11)));
        assert_eq!(g.opset(""), Some(13));
        let mut g = qforge_ir::parse_graph(
            "graph g {\n  opset ai.onnx 11\n  input %x: f32[1,2,3]\n  %y = Softmax(%x)\n  output %y\n}\n",
        )
        .unwrap();
        // Axis 1 of a rank-3 input: opset 11 normalizes over 2×3 rows, 13
        // over axis 1 alone, so the op cannot be carried over.
        let e = ensure_opset(&mut g, 13).unwrap_err();
        assert!(e.contains("Softmax (changed in opset 13)"), "{e}");
        assert_eq!(g.opset(""), Some(11));
    }

    /// Crossing opset 13 (and 18 in the same call): Split sizes, Squeeze
    /// and Unsqueeze axes move to inputs, a last-axis Softmax says its
    /// axis; the graph computes what it did, on random inputs.
    #[test]
    fn split_softmax_unsqueeze_are_carried_across_opset_13() {
        let text = "graph g {\n  opset ai.onnx 12\n  input %x: f32[2,6,3]\n  \
                    %a, %b = Split(%x) {axis=1, split=[2,4]}  # split\n  \
                    %s = Softmax(%b) {axis=2}  # soft\n  %l = LogSoftmax(%a) {axis=-1}  # logsoft\n  \
                    %r = ReduceSum(%s) {axes=[1], keepdims=1}  # rsum\n  \
                    %q = Squeeze(%r) {axes=[1]}  # squeeze\n  %u = Unsqueeze(%q) {axes=[1]}  # unsq\n  \
                    %y = Concat(%l, %u) {axis=1}  # cat\n  output %y\n}\n";
        let mut before = qforge_ir::parse_graph(text).unwrap();
        // The Softmax rule needs the rank of its input, which real
        // pipelines know from infer-shapes.
        crate::Pass::run(&crate::builtin::infer_shapes::InferShapes::default(), &mut before, &mut Default::default())
            .unwrap();
        for target in [13, 19] {
            let mut g = before.clone();
            assert_eq!(ensure_opset(&mut g, target), Ok(Some(12)), "to {target}");
            assert_eq!(g.opset(""), Some(target));
            let split = g.find_node("split").unwrap();
            assert!(g.node(split).attr("split").is_none());
            let sizes = g.node(split).input(1).and_then(|v| g.constant(v)).unwrap();
            assert_eq!(sizes.to_vec::<i64>().unwrap(), vec![2, 4]);
            for n in ["squeeze", "unsq", "rsum"] {
                let n = g.find_node(n).unwrap();
                assert!(g.node(n).attr("axes").is_none() && g.node(n).input(1).is_some());
            }
            assert_eq!(g.node(g.find_node("soft").unwrap()).attr_int("axis"), Some(-1));
            qforge_ir::verify(&g).unwrap();
            let x = qforge_runtime::random_inputs(&[("x".into(), vec![2, 6, 3], qforge_ir::DataType::F32)], 5);
            let run = |g: &Graph| {
                let opts =
                    qforge_runtime::SessionOptions { engine: qforge_runtime::Engine::Tract, ..Default::default() };
                let s = qforge_runtime::session(&qforge_ir::Model::new(g.clone()), &opts).unwrap();
                s.run(&x).unwrap()[0].to_f64_vec()
            };
            let (a, b) = (run(&before), run(&g));
            assert_eq!(a.len(), b.len());
            assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-6 * p.abs().max(1.0)), "to {target}");
        }
    }

    /// Crossing opset 18: an even Split says its number of outputs, a
    /// ReduceMax takes its axes as an input; both compute what they did.
    #[test]
    fn split_and_reduce_are_carried_across_opset_18() {
        let text = "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,4,2]\n  \
                    %a, %b = Split(%x) {axis=1}  # split\n  %m = ReduceMax(%a) {axes=[1], keepdims=1}  # rmax\n  \
                    %y = Add(%m, %b)  # add\n  output %y\n}\n";
        let before = qforge_ir::parse_graph(text).unwrap();
        let mut g = before.clone();
        assert_eq!(ensure_opset(&mut g, 19), Ok(Some(13)));
        let split = g.find_node("split").unwrap();
        assert_eq!(g.node(split).attr_int("num_outputs"), Some(2));
        let rmax = g.find_node("rmax").unwrap();
        assert!(g.node(rmax).attr("axes").is_none());
        let axes = g.node(rmax).input(1).and_then(|v| g.constant(v)).unwrap();
        assert_eq!(axes.to_vec::<i64>().unwrap(), vec![1]);
        qforge_ir::verify(&g).unwrap();
        // And the same numbers, each version read by the engine.
        let x = qforge_runtime::random_inputs(&[("x".into(), vec![1, 4, 2], qforge_ir::DataType::F32)], 3);
        let run = |g: &Graph| {
            let opts = qforge_runtime::SessionOptions { engine: qforge_runtime::Engine::Tract, ..Default::default() };
            let s = qforge_runtime::session(&qforge_ir::Model::new(g.clone()), &opts).unwrap();
            s.run(&x).unwrap()[0].to_f64_vec()
        };
        assert_eq!(run(&before), run(&g));
    }
}
