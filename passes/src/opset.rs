//! Raising the default-domain opset when a pass needs newer ops (Q/DQ with
//! `axis` needs 13).
//!
//! Raising the number is only legal when no op in the graph changed meaning
//! between the old and the new version; the table below lists, for the ops
//! detectors use, the versions whose semantics are incompatible with the
//! previous one (inputs that moved from attributes, changed axis rules).
//! A graph containing such an op in the affected range is refused with the
//! list, rather than silently changed.

use qforge_ir::Graph;

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
    let mut blocking: Vec<String> = Vec::new();
    for n in g.nodes() {
        let node = g.node(n);
        if !matches!(node.domain(), "" | "ai.onnx") {
            continue;
        }
        for &(op, v) in BREAKING {
            if node.op_type() == op && old < v && v <= min {
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
    g.set_opset("", min);
    Ok(Some(old))
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
            "graph g {\n  opset ai.onnx 11\n  input %x: f32[1,2]\n  %y = Softmax(%x)\n  output %y\n}\n",
        )
        .unwrap();
        let e = ensure_opset(&mut g, 13).unwrap_err();
        assert!(e.contains("Softmax (changed in opset 13)"), "{e}");
        assert_eq!(g.opset(""), Some(11));
    }
}
