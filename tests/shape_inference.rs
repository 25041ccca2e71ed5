//! `infer-shapes` against ONNX's own shape inference on real models, and
//! `fold-constants` against ONNX Runtime bit for bit.
//!
//! For every model in the assets (and the raw torch exports in
//! /work/shared/models when the assets lack them), value_info is stripped,
//! then qforge types the graph twice: with `infer-shapes` alone on the raw
//! export, and after the whole `fold` pipeline. `tests/py/shape_check.py`
//! runs `onnx.shape_inference.infer_shapes(strict_mode=True, data_prop=True)`
//! on the same model and compares every value both sides type: a different
//! dtype, rank or known dim fails the test with the value's name. Coverage
//! (values ONNX types that qforge leaves unknown) is printed, and after
//! `fold` every value of the YOLOv8s export and of YOLOv5n must be fully
//! typed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Models to check: the assets, plus the shared raw exports the assets lack.
fn models() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let dir = common::assets().join("models");
    match std::fs::read_dir(&dir) {
        Ok(rd) => out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "onnx"))),
        Err(_) => common::skip(&format!("{} is missing — run `cargo xtask assets`", dir.display())),
    }
    for name in ["yolov8s-torch-export-random.onnx", "yolov5n-untrained-unfused-bn.onnx"] {
        let shared = Path::new("/work/shared/models").join(name);
        if !out.iter().any(|p| p.file_name() == shared.file_name()) {
            if shared.exists() {
                out.push(shared);
            } else {
                common::skip(&format!("{name} is in neither the assets nor /work/shared/models"));
            }
        }
    }
    out.sort();
    out
}

/// True when python3 has onnx; else a loud SKIP line.
fn python_onnx() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import onnx, onnx.shape_inference"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        common::skip("python3 with onnx is not available (pip install onnx)");
    }
    ok
}

fn shape_check(args: &[&Path], mode: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(common::root().join("tests/py/shape_check.py"))
        .arg(mode)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "shape_check.py {mode} failed: {}", String::from_utf8_lossy(&out.stderr));
    if mode == "compare" {
        serde_json::from_slice(&out.stdout).expect("shape_check prints JSON")
    } else {
        serde_json::Value::Null
    }
}

fn run_pipeline(pipeline: &Path, input: &Path, output: &Path) -> String {
    let out = common::qforge()
        .args(["run"])
        .arg(pipeline)
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(output)
        .output()
        .expect("qforge runs");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "qforge run {} on {} failed:\n{log}", pipeline.display(), input.display());
    log
}

fn list(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| format!("{}: qforge {} vs onnx {}", e["name"].as_str().unwrap_or("?"), e["qforge"], e["onnx"]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn infer_shapes_agrees_with_onnx_shape_inference() {
    if !python_onnx() {
        return;
    }
    let models = models();
    if models.is_empty() {
        return;
    }
    let dir = common::tempdir();
    let raw = dir.path().join("infer.yaml");
    std::fs::write(&raw, "name: infer\npasses: [infer-shapes]\n").unwrap();
    let folded = dir.path().join("fold-infer.yaml");
    let fold = common::root().join("pipelines/fold.yaml");
    std::fs::write(
        &folded,
        format!("name: fold-infer\ninclude: [{:?}]\npasses: [infer-shapes]\n", fold.display().to_string()),
    )
    .unwrap();
    let mut failures: Vec<String> = Vec::new();
    for m in &models {
        let stem = m.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
        let stripped = dir.path().join(format!("{stem}.stripped.onnx"));
        shape_check(&[m, &stripped], "strip");
        for (label, pipeline) in [("raw", &raw), ("fold", &folded)] {
            let out = dir.path().join(format!("{stem}.{label}.onnx"));
            let log = run_pipeline(pipeline, &stripped, &out);
            let r = shape_check(&[&out], "compare");
            let (values, both) = (r["values"].as_u64().unwrap_or(0), r["both"].as_u64().unwrap_or(0));
            let onnx_more = list(&r, "onnx_more");
            let incomplete = list(&r, "incomplete");
            eprintln!(
                "{stem} ({label}): {values} values, {both} typed by both, {} where onnx knows more, {} where qforge knows more, {} not fully typed by qforge{}",
                onnx_more.len(),
                r["qforge_more"].as_array().map_or(0, Vec::len),
                incomplete.len(),
                r["onnx_error"].as_str().map(|e| format!(" (onnx inference failed: {e})")).unwrap_or_default()
            );
            for l in onnx_more.iter().take(5) {
                eprintln!("    onnx knows more: {l}");
            }
            for d in list(&r, "disagreements") {
                failures.push(format!("{stem} ({label}): {d}"));
            }
            if label == "fold" {
                if log.contains("fixed-point group still changed") {
                    failures.push(format!("{stem}: fold's fixed-point group hit its iteration cap"));
                }
                if stem.starts_with("yolov8s-torch-export") || stem.starts_with("yolov5n") {
                    for l in incomplete {
                        failures.push(format!("{stem} (fold): not fully typed: {l}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

/// Every fold-constants case folds to values ONNX Runtime reproduces bit for bit.
#[test]
fn folded_values_match_onnx_runtime_bit_for_bit() {
    qforge_passes::builtin::link();
    if !common::python_ort() {
        return;
    }
    let pass = (qforge_passes::find_pass("fold-constants").unwrap().create)(&serde_json::Value::Null).unwrap();
    let dir = common::tempdir();
    let cases = common::root().join("tests/passes/fold-constants");
    let mut checked = 0;
    for e in std::fs::read_dir(&cases).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "ir") {
            continue;
        }
        let before = qforge_ir::parse_graph(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let mut after = before.clone();
        let r = pass.run(&mut after, &mut qforge_passes::PassContext::default()).unwrap();
        assert!(r.get("folded") + r.get("constants → initializers") > 0, "{}: nothing folded", p.display());
        let (a, b) = (dir.path().join("before.onnx"), dir.path().join("after.onnx"));
        let opts = qforge_ir::ExportOptions::default();
        qforge_ir::save(&qforge_ir::Model::new(before), &a, &opts).unwrap();
        qforge_ir::save(&qforge_ir::Model::new(after), &b, &opts).unwrap();
        let rep = common::ort_compare(&a, &b, &[]);
        assert_eq!(rep["identical"], serde_json::Value::Bool(true), "{}: {rep}", p.display());
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} cases");
}
