//! Snapshot tests of every pass: each `tests/passes/<pass>/<case>.ir` holds
//! a small graph in the text IR; the pass named by the folder runs on it
//! (options from an optional `# options: {...}` line), and the snapshot
//! records the IR before ⇒ after plus the pass report. Every case is also
//! run on seeded random inputs before and after the pass: exact passes must
//! agree to 1e-5 relative (`cargo insta review` to accept changes), and
//! the rewritten graph, saved, must pass `onnx.checker` and load in ONNX
//! Runtime.

mod common;

use qforge_ir::{Graph, Model, parse_graph};
use qforge_passes::{PassContext, Tolerance, compare_outputs, find_pass};
use qforge_runtime::{SessionOptions, random_inputs, resolve_input_shapes, session};

type Outputs = Vec<(String, qforge_runtime::HostTensor)>;

fn run_graph(g: &Graph, seed: u64) -> Result<Outputs, qforge_runtime::RuntimeError> {
    // Symbolic inputs make this an error, and the caller checks with ONNX
    // Runtime instead (which feeds 1 for every symbolic dim).
    let shapes = resolve_input_shapes(g, &Default::default())?;
    let specs: Vec<_> = g
        .runtime_inputs()
        .iter()
        .zip(shapes)
        .map(|(&v, (n, s))| (n, s, g.dtype(v).unwrap_or(qforge_ir::DataType::F32)))
        .collect();
    let inputs = random_inputs(&specs, seed);
    // tract on purpose: the embedded engine is the one every build has.
    let opts = SessionOptions { engine: qforge_runtime::Engine::Tract, ..Default::default() };
    let s = session(&Model::new(g.clone()), &opts)?;
    let out = s.run(&inputs)?;
    Ok(s.output_names().iter().cloned().zip(out).collect())
}

/// Worst relative output difference of `before` vs `after` on random
/// inputs: with tract, or with ONNX Runtime for ops tract lacks (Upsample).
fn numeric_difference(before: &Graph, after: &Graph, path: &std::path::Path) -> Option<(String, f64)> {
    let mut worst = (String::new(), 0.0f64);
    for seed in [1, 2] {
        match (run_graph(before, seed), run_graph(after, seed)) {
            (Ok(a), Ok(b)) => {
                let (o, e) = compare_outputs(&a, &b).unwrap();
                if e >= worst.1 {
                    worst = (o, e);
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("{}: tract cannot run it ({e}); checking with ONNX Runtime", path.display());
                if !common::python_ort() {
                    return None;
                }
                let dir = common::tempdir();
                let (a, b) = (dir.path().join("before.onnx"), dir.path().join("after.onnx"));
                let opts = qforge_ir::ExportOptions::default();
                qforge_ir::save(&Model::new(before.clone()), &a, &opts).unwrap();
                qforge_ir::save(&Model::new(after.clone()), &b, &opts).unwrap();
                let r = common::ort_compare(&a, &b, &[]);
                return Some(("(ort)".into(), r["max_rel"].as_f64().unwrap()));
            }
        }
    }
    Some(worst)
}

#[test]
fn pass_cases() {
    qforge_passes::builtin::link();
    insta::glob!("passes/*/*.ir", |path| {
        let pass = path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).expect("pass folder");
        let text = std::fs::read_to_string(path).unwrap();
        let options: serde_json::Value = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("# options:"))
            .map(|o| serde_saphyr::from_str(o).expect("options are YAML"))
            .unwrap_or(serde_json::Value::Null);
        let before = parse_graph(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        qforge_ir::verify(&before).unwrap_or_else(|e| panic!("{}: input does not verify: {e}", path.display()));
        let info = find_pass(pass).unwrap_or_else(|| panic!("no pass named {pass}"));
        let p = (info.create)(&options).unwrap();
        let mut after = before.clone();
        let report = p.run(&mut after, &mut PassContext::default()).unwrap();
        qforge_ir::verify(&after).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Some((output, err)) = numeric_difference(&before, &after, path)
            && p.tolerance() == Tolerance::Exact
        {
            assert!(err <= 1e-5, "{}: output {output} differs by {err:e} after {pass}", path.display());
        }
        // The rewritten graph, written as a model, is valid ONNX (failures
        // the case's own input has, e.g. an undeclared output type, excepted).
        let dir = common::tempdir();
        let (a, b) = (dir.path().join("before.onnx"), dir.path().join("after.onnx"));
        let opts = qforge_ir::ExportOptions::default();
        qforge_ir::save(&Model::new(before.clone()), &a, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        qforge_ir::save(&Model::new(after.clone()), &b, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        common::check_valid(&b, Some(&a));
        let counters: Vec<String> = report.counters.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let notes: Vec<String> = report.notes.iter().map(|n| format!("note: {n}")).collect();
        insta::with_settings!({ omit_expression => true }, {
            insta::assert_snapshot!(format!(
            "{before}=>\n{after}report: {}\n{}",
            if counters.is_empty() { "—".into() } else { counters.join(", ") },
            notes.join("\n")
            ));
        });
    });
}

#[test]
fn topo_sort_restores_order_and_keeps_sorted_graphs() {
    qforge_passes::builtin::link();
    let text = "graph g {\n  opset ai.onnx 13\n  input %x: f32[2]\n  %a = Relu(%x)  # first\n  %b = Neg(%a)  # second\n  %c = Abs(%x)  # third\n  output %b\n  output %c\n}\n";
    let mut g = parse_graph(text).unwrap();
    let sorted = g.to_string();
    let pass = (find_pass("topo-sort").unwrap().create)(&serde_json::Value::Null).unwrap();
    // Already sorted: nothing moves.
    let generation = g.generation();
    pass.run(&mut g, &mut PassContext::default()).unwrap();
    assert_eq!(g.generation(), generation, "a sorted graph is left alone");
    assert_eq!(g.to_string(), sorted);
    // Move the reader before its producer: the verifier objects, topo-sort fixes it.
    let second = g.find_node("second").unwrap();
    let first = g.find_node("first").unwrap();
    g.move_node(second, qforge_ir::InsertAt::Before(first)).unwrap();
    let e = qforge_ir::verify(&g).unwrap_err().to_string();
    assert!(e.contains("not topological"), "{e}");
    let generation = g.generation();
    pass.run(&mut g, &mut PassContext::default()).unwrap();
    assert_ne!(g.generation(), generation);
    qforge_ir::verify(&g).unwrap();
    assert_eq!(g.to_string(), sorted);
}
