//! `pipelines/fold.yaml` on the forms real exporters write, not only on
//! models someone already simplified: the raw YOLOv8s torch export (Constant
//! nodes, Shape→Gather→Slice chains, no value_info), the same with dynamic
//! dims, Resize scales from one Constant node, Resize sizes computed in the
//! graph, an opset-9 Upsample, and the raw YOLOv5n. The variants are made by
//! `tests/py/make_variants.py` from the assets.
//!
//! For each: no BatchNormalization and no nearest Resize/Upsample left (each
//! rewritten to one ConvTranspose), the fixed-point group converges, no more
//! nodes than onnxslim leaves, `--check-numerics` passes, the written model
//! passes `onnx.checker` (full) and ONNX Runtime computes the same outputs
//! as on the input model.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A model to fold and what it holds.
#[derive(Debug, Clone)]
struct Case {
    path: PathBuf,
    /// Nearest Resize/Upsample nodes in the input.
    nearest: usize,
    /// `--input-shape` for dynamic inputs.
    input_shape: Option<String>,
}

/// Python with onnx, onnxruntime and onnxslim, or `None` after a loud SKIP line
/// (a failure under CI, where the packages are installed).
fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import onnx, onnxruntime, onnxslim, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        common::skip("python3 with onnx, onnxruntime, onnxslim and numpy is not available");
    }
    ok
}

/// The variants, generated once per test binary into a folder that lives as long as it.
fn variants() -> Option<&'static BTreeMap<String, Case>> {
    static DIR: OnceLock<Option<(tempfile::TempDir, BTreeMap<String, Case>)>> = OnceLock::new();
    DIR.get_or_init(|| {
        let models = common::model("yolov8s-torch-export-random.onnx")?;
        if !python_ready() {
            return None;
        }
        let dir = common::tempdir();
        let out = Command::new("python3")
            .arg(common::root().join("tests/py/make_variants.py"))
            .arg(models.parent().expect("models folder"))
            .arg(dir.path())
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "make_variants.py failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut cases = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
            let path = PathBuf::from(v["file"].as_str().expect("file"));
            let name = path.file_name().and_then(|n| n.to_str()).expect("file name").to_string();
            let case = Case {
                path,
                nearest: v["nearest"].as_u64().expect("nearest") as usize,
                input_shape: v["input_shape"].as_str().map(str::to_string),
            };
            cases.insert(name, case);
        }
        Some((dir, cases))
    })
    .as_ref()
    .map(|(_, c)| c)
}

fn ops(path: &Path) -> (usize, BTreeMap<String, usize>) {
    let m = qforge_ir::load(path).expect("qforge loads what it wrote");
    let mut h = BTreeMap::new();
    for n in m.graph.nodes() {
        *h.entry(m.graph.node(n).op_type().to_string()).or_insert(0) += 1;
    }
    (m.graph.node_count(), h)
}

/// Nodes onnxslim leaves on the same model.
fn onnxslim_nodes(model: &Path) -> usize {
    let out = Command::new("python3")
        .args(["-c", "import sys, onnxslim; print(len(onnxslim.slim(sys.argv[1]).graph.node))"])
        .arg(model)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "onnxslim failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().lines().last().and_then(|l| l.parse().ok()).expect("a node count")
}

/// Folds `case` and checks everything the module doc promises.
fn fold_and_check(case: &Case) {
    let dir = common::tempdir();
    let out = dir.path().join("out.onnx");
    let mut args: Vec<String> =
        ["run", "fold", "-i", case.path.to_str().unwrap(), "-o", out.to_str().unwrap()].map(String::from).to_vec();
    args.push("--check-numerics".into());
    if let Some(s) = &case.input_shape {
        args.extend(["--input-shape".into(), s.clone()]);
    }
    let o = common::qforge().args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "fold failed on {}:\n{stdout}\n{stderr}", case.path.display());
    assert!(!stdout.contains("still changed the graph"), "the fixed-point group did not converge:\n{stdout}");

    let (nodes, after) = ops(&out);
    let count = |op: &str| after.get(op).copied().unwrap_or(0);
    assert_eq!(count("BatchNormalization"), 0, "{stdout}");
    assert_eq!(count("Resize") + count("Upsample"), 0, "nearest upsampling left in place:\n{stdout}");
    assert_eq!(count("ConvTranspose"), case.nearest, "{stdout}");
    let slim = onnxslim_nodes(&case.path);
    assert!(nodes <= slim, "{}: qforge leaves {nodes} nodes, onnxslim {slim}:\n{stdout}", case.path.display());
    eprintln!("{}: {nodes} nodes after fold.yaml (onnxslim: {slim})", case.path.display());

    common::check_valid(&out, Some(&case.path));
    let mut extra = Vec::new();
    if let Some(s) = &case.input_shape {
        extra = vec!["--input-shape", s.split_once('=').map_or(s.as_str(), |p| p.1)];
    }
    let r = common::ort_compare(&case.path, &out, &extra);
    let rel = r["max_rel"].as_f64().unwrap();
    assert!(rel <= 1e-4, "ONNX Runtime outputs differ by {rel:e} relative: {r}");
}

fn variant(name: &str) -> Option<Case> {
    variants().map(|v| v.get(name).unwrap_or_else(|| panic!("make_variants.py wrote no {name}")).clone())
}

#[test]
fn yolov8s_torch_export() {
    let Some(path) = common::model("yolov8s-torch-export-random.onnx") else { return };
    if !python_ready() {
        return;
    }
    fold_and_check(&Case { path, nearest: 2, input_shape: None });
}

#[test]
fn yolov8s_dynamic_dims() {
    let Some(case) = variant("yolov8s-dynamic.onnx") else { return };
    fold_and_check(&case);
}

#[test]
fn yolov8s_resize_scales_from_one_constant() {
    let Some(case) = variant("yolov8s-const-scales.onnx") else { return };
    fold_and_check(&case);
}

#[test]
fn yolov8s_resize_sizes_computed_in_graph() {
    let Some(case) = variant("yolov8s-sizes.onnx") else { return };
    fold_and_check(&case);
}

#[test]
fn upsample_opset9() {
    let Some(case) = variant("upsample-opset9.onnx") else { return };
    fold_and_check(&case);
}

#[test]
fn yolov5n_torch_export() {
    let Some(path) = common::model("yolov5n-untrained-unfused-bn.onnx") else { return };
    if !python_ready() {
        return;
    }
    fold_and_check(&Case { path, nearest: 2, input_shape: None });
}
