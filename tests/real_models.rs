//! The fold pipeline on real detectors (from `cargo xtask assets`): what the
//! issue promises — no BatchNormalization or Identity left, nearest Resize
//! turned into ConvTranspose — and outputs that match the input model on
//! real photos in ONNX Runtime, and a written model that passes
//! `onnx.checker` (full check) and loads in ONNX Runtime. Each test skips
//! loudly when its model is missing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

fn ops(path: &Path) -> BTreeMap<String, usize> {
    let m = qforge_ir::load(path).unwrap();
    let mut h = BTreeMap::new();
    for n in m.graph.nodes() {
        *h.entry(m.graph.node(n).op_type().to_string()).or_insert(0) += 1;
    }
    h
}

fn count(h: &BTreeMap<String, usize>, op: &str) -> usize {
    h.get(op).copied().unwrap_or(0)
}

/// Runs `qforge run fold --check-numerics` into `out`, whatever its outcome.
fn run_fold(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    common::qforge()
        .args(["run", "fold", "-i", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--check-numerics"])
        .args(extra)
        .output()
        .unwrap()
}

/// Runs `qforge run fold --check-numerics`, returns (stdout, output path).
fn fold(model: &Path, dir: &Path, extra: &[&str]) -> (String, std::path::PathBuf) {
    let out = dir.join("out.onnx");
    let o = run_fold(model, &out, extra);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "fold failed:\n{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    common::check_valid(&out, Some(model));
    (stdout, out)
}

fn ort_on_photos(a: &Path, b: &Path, extra: &[&str]) {
    if !common::python_ort() {
        return;
    }
    let Some(photos) = common::photos() else { return };
    let mut args = vec!["--images", photos.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = common::ort_compare(a, b, &args);
    assert!(r["runs"].as_u64().unwrap() >= 5, "{r}");
    let rel = r["max_rel"].as_f64().unwrap();
    assert!(rel <= 1e-4, "ONNX Runtime outputs differ by {rel:e} relative on real photos: {r}");
    eprintln!("{}: max relative difference on {} photos in ONNX Runtime: {rel:.2e}", b.display(), r["runs"]);
}

#[test]
fn yolov5n_folds_exactly() {
    let Some(m) = common::model("yolov5n-untrained-unfused-bn.onnx") else { return };
    let dir = common::tempdir();
    let before = ops(&m);
    assert_eq!(count(&before, "BatchNormalization"), 57);
    let (stdout, out) = fold(&m, dir.path(), &[]);
    let after = ops(&out);
    assert_eq!(count(&after, "BatchNormalization"), 0, "{stdout}");
    assert_eq!(count(&after, "Identity"), 0);
    assert_eq!(count(&after, "Resize"), 0);
    assert_eq!(count(&after, "ConvTranspose"), 2);
    assert_eq!(count(&after, "Conv"), count(&before, "Conv"));
    // The statistics table says what each pass did.
    for line in ["eliminate-identity", "removed 213", "fold-batchnorm", "folded 57", "rewritten 2"] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    ort_on_photos(&m, &out, &[]);
}

#[test]
fn picodet_folds_all_94_batchnorms() {
    let Some(m) = common::model("picodet-layout-cdla.onnx") else { return };
    let dir = common::tempdir();
    assert_eq!(count(&ops(&m), "BatchNormalization"), 94);
    let (stdout, out) = fold(&m, dir.path(), &[]);
    let after = ops(&out);
    assert_eq!(count(&after, "BatchNormalization"), 0, "{stdout}");
    assert_eq!(count(&after, "Resize"), 0);
    assert_eq!(count(&after, "ConvTranspose"), 2);
    ort_on_photos(&m, &out, &[]);
}

/// nudenet's input is `[batch,3,height,width]`; its Ultralytics metadata
/// says `imgsz: [320, 320]`. qforge uses that for its own runs (numerics
/// check, calibration), says so, and keeps the written model dynamic.
#[test]
fn nudenet_dynamic_input_defaults_to_its_imgsz_metadata() {
    let Some(m) = common::model("nudenet-320n.onnx") else { return };
    let dir = common::tempdir();
    let out = dir.path().join("o.onnx");
    let o = run_fold(&m, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("input \"images\" has dynamic dims") && err.contains("1,3,320,320"), "{err}");
    common::check_valid(&out, Some(&m));
    let written = qforge_ir::load(&out).unwrap();
    let input = written.graph.runtime_inputs()[0];
    let dims = written.graph.type_info(input).and_then(|t| t.shape).unwrap();
    assert!(dims.as_known().is_none(), "the written input lost its dynamic dims: {dims:?}");
    let after = ops(&out);
    assert_eq!(count(&after, "Resize"), 0);
    assert_eq!(count(&after, "ConvTranspose"), 2);
    ort_on_photos(&m, &out, &["--input-shape", "1,3,320,320"]);
}

/// Without the metadata there is nothing to guess from: a clear refusal
/// that names the option, then the explicit shape works.
#[test]
fn dynamic_input_without_metadata_is_refused_clearly_then_handled() {
    let Some(m) = common::model("nudenet-320n.onnx") else { return };
    let dir = common::tempdir();
    let mut model = qforge_ir::load(&m).unwrap();
    model.set_metadata("imgsz", "");
    let bare = dir.path().join("bare.onnx");
    qforge_ir::save(&model, &bare, &qforge_ir::ExportOptions::default()).unwrap();
    let out = dir.path().join("o.onnx");
    let o = run_fold(&bare, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("input \"images\" has dynamic dims [batch,3,height,width]")
            && err.contains("--input-shape images="),
        "{err}"
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());
    let (_, out) = fold(&bare, dir.path(), &["--input-shape", "images=1,3,320,320"]);
    let after = ops(&out);
    assert_eq!(count(&after, "Resize"), 0);
    assert_eq!(count(&after, "ConvTranspose"), 2);
    ort_on_photos(&bare, &out, &["--input-shape", "1,3,320,320"]);
}

#[test]
fn ppocr_folds_conv_batchnorms_and_upsamples() {
    let Some(m) = common::model("ppocrv4-det.onnx") else { return };
    let dir = common::tempdir();
    let (stdout, out) = fold(&m, dir.path(), &["--input-shape", "x=1,3,320,320"]);
    let after = ops(&out);
    // Two BNs follow Convs; the third follows an Add (PaddlePaddle's separate
    // ConvTranspose bias), which fold-bias-add moves into the ConvTranspose
    // first, so all three fold.
    assert_eq!(count(&after, "BatchNormalization"), 0, "{stdout}");
    assert!(stdout.contains("fold-bias-add") && stdout.contains("folded 2"), "{stdout}");
    assert_eq!(count(&after, "Resize"), 0);
    ort_on_photos(&m, &out, &["--input-shape", "1,3,320,320"]);
}

/// The raw torch export (opset 17, no value_info): before qforge stopped
/// declaring unknown element types, `infer-shapes` left 68 `value_info`
/// entries with element type 0 and ONNX Runtime refused the output.
const YOLOV8S: &str = "yolov8s-torch-export-random.onnx";

#[test]
fn yolov8s_torch_export_folds_to_a_valid_model() {
    let Some(m) = common::model_or_shared(YOLOV8S) else { return };
    let dir = common::tempdir();
    let (stdout, out) = fold(&m, dir.path(), &[]);
    let after = ops(&out);
    assert_eq!(count(&after, "BatchNormalization"), 0, "{stdout}");
    assert!(stdout.contains("folded 57"), "{stdout}");
    ort_on_photos(&m, &out, &[]);
}

#[test]
fn yolov8s_int8_pipeline_writes_a_valid_model() {
    let Some(m) = common::model_or_shared(YOLOV8S) else { return };
    let Some(photos) = common::photos() else { return };
    let dir = common::tempdir();
    let out = dir.path().join("yolov8s.int8.onnx");
    let o = common::qforge()
        .args(["run", "pipelines/yolo-int8.yaml", "-i", m.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--calib", photos.to_str().unwrap()])
        // Two photos and two sensitivity samples: this test is about the
        // written file, not about accuracy (bench/ measures that).
        .args(["--set", "calibrate.data.limit=2", "--set", "skip-sensitive.samples=2"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let after = ops(&out);
    assert!(count(&after, "QuantizeLinear") > 50, "{after:?}");
    assert_eq!(count(&after, "BatchNormalization"), 0);
    // correct-bias and skip-sensitive compare against the float outputs
    // calibration kept (2 photos in 4 views), instead of running the float
    // model again.
    assert!(stdout.contains("kept the float model's outputs on 8 samples"), "{stdout}");
    common::check_valid(&out, Some(&m));
}
