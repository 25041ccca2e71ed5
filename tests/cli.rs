//! The command line: errors for bad input (one clear line, exit 1, never a
//! panic, nothing written), usage errors (exit 2), and the run options.

mod common;

use std::path::{Path, PathBuf};

use prost::Message;
use qforge_ir::proto::{ModelProto, StringStringEntryProto};

fn rich() -> PathBuf {
    common::root().join("tests/fixtures/rich.onnx")
}

fn rich_proto() -> ModelProto {
    ModelProto::decode(&std::fs::read(rich()).unwrap()[..]).unwrap()
}

use common::{run as qforge, s};

/// Runs the fold pipeline on `input` and checks: exit 1, exactly one error
/// line mentioning `needle`, no panic, no output file.
fn fails_cleanly(input: &Path, extra: &[&str], needle: &str) {
    let dir = common::tempdir();
    let out = dir.path().join("out.onnx");
    let mut args = vec!["run", "fold", "-i", s(input), "-o", s(&out)];
    args.extend_from_slice(extra);
    let r = qforge(&args);
    assert_eq!(r.code, 1, "exit code; stderr: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let errors: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(errors[0].contains(needle), "expected {needle:?} in {:?}", errors[0]);
    assert!(!out.exists(), "an output was written despite the error");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn truncated_file() {
    let dir = common::tempdir();
    let bytes = std::fs::read(rich()).unwrap();
    let p = write(dir.path(), "truncated.onnx", &bytes[..bytes.len() / 2]);
    fails_cleanly(&p, &[], "not a valid ONNX model");
}

#[test]
fn random_bytes() {
    let dir = common::tempdir();
    let mut x: u64 = 0x1234_5678;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let p = write(dir.path(), "random.onnx", &bytes);
    fails_cleanly(&p, &[], "random.onnx");
}

#[test]
fn missing_file() {
    fails_cleanly(Path::new("/nonexistent/model.onnx"), &[], "/nonexistent/model.onnx");
}

#[test]
fn node_reading_a_missing_tensor() {
    let dir = common::tempdir();
    let mut m = rich_proto();
    m.graph.as_mut().unwrap().node[0].input[0] = "nope".into();
    let p = write(dir.path(), "missing.onnx", &m.encode_to_vec());
    fails_cleanly(&p, &[], "reads tensor \"nope\", which no node, graph input or initializer defines");
}

#[test]
fn qdq_with_wrong_zero_point_dtype() {
    // DequantizeLinear of int8 data with a uint8 zero point.
    let g = qforge_ir::parse_graph(
        "graph q {\n  opset ai.onnx 13\n  input %x: f32[4]\n  init @w: i8[4] = [1,2,3,4]\n  init @s: f32[] = [0.5]\n  init @z: u8[] = [0]\n  %d = DequantizeLinear(@w, @s, @z)  # dq\n  %y = Add(%x, %d)  # add\n  output %y\n}\n",
    )
    .unwrap();
    let dir = common::tempdir();
    let p = dir.path().join("qdq.onnx");
    // Deliberately invalid, so written from the proto: `save` refuses it.
    let e = qforge_ir::save(&qforge_ir::Model::new(g.clone()), &p, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("input is i8 but the zero point is u8"), "{e}");
    std::fs::write(&p, qforge_ir::export(&qforge_ir::Model::new(g)).encode_to_vec()).unwrap();
    let moved = common::tempdir();
    let q = moved.path().join("qdq.onnx");
    std::fs::copy(&p, &q).unwrap();
    fails_cleanly(&q, &[], "input is i8 but the zero point is u8");
}

#[test]
fn external_data_escaping_the_folder() {
    let dir = common::tempdir();
    let mut m = rich_proto();
    let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.name() == "w").unwrap();
    t.float_data.clear();
    t.data_location = Some(1);
    t.external_data =
        vec![StringStringEntryProto { key: Some("location".into()), value: Some("../../etc/passwd".into()) }];
    let p = write(dir.path(), "escape.onnx", &m.encode_to_vec());
    fails_cleanly(&p, &[], "`..` is refused");
}

fn pipeline_error(yaml: &str, needle: &str) {
    let dir = common::tempdir();
    let pipe = write(dir.path(), "p.yaml", yaml.as_bytes());
    let out = dir.path().join("out.onnx");
    let r = qforge(&["run", s(&pipe), "-i", s(&rich()), "-o", s(&out)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let errors: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(errors[0].contains(needle), "expected {needle:?} in {:?}", errors[0]);
    assert!(!out.exists());
}

#[test]
fn yaml_unknown_pass_names_file_line_and_suggestion() {
    pipeline_error(
        "passes:\n  - topo-sort\n  - fold-batchnrom\n",
        "p.yaml:3:5: unknown pass `fold-batchnrom`; did you mean `fold-batchnorm`?",
    );
}

#[test]
fn yaml_unknown_option_names_line_and_suggestion() {
    pipeline_error(
        "passes:\n  - fold-constants:\n      max_elemnts: 10\n",
        "p.yaml:2:5: pass `fold-constants`: unknown option `max_elemnts`; did you mean `max_elements`?",
    );
}

#[test]
fn yaml_bad_option_value() {
    pipeline_error(
        "passes:\n  - fold-constants: {max_elements: lots}\n",
        "p.yaml:2:5: pass `fold-constants`: bad option value",
    );
}

#[test]
fn yaml_syntax_and_schema_errors() {
    pipeline_error("passes: [topo-sort\n", "p.yaml:");
    pipeline_error("pases:\n  - topo-sort\n", "unknown field");
}

#[test]
fn set_override_errors_name_the_override() {
    let dir = common::tempdir();
    let out = dir.path().join("o.onnx");
    let r = qforge(&["run", "fold", "-i", s(&rich()), "-o", s(&out), "--set", "fold-batchnorm.int=[Conv]"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(
            "--set fold-batchnorm.int=[Conv]: pass `fold-batchnorm`: unknown option `int`; did you mean `into`?"
        ),
        "{}",
        r.stderr
    );
    let r = qforge(&["run", "fold", "-i", s(&rich()), "-o", s(&out), "--set", "fold-batchnrom.into=[Conv]"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("did you mean `fold-batchnorm`?"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(qforge(&["run"]).code, 2);
    assert_eq!(qforge(&["frobnicate"]).code, 2);
    assert_eq!(qforge(&["--help"]).code, 0);
}

#[test]
fn input_is_never_overwritten_unless_forced() {
    let dir = common::tempdir();
    let p = dir.path().join("m.onnx");
    std::fs::copy(rich(), &p).unwrap();
    let r = qforge(&["run", "fold", "-i", s(&p), "-o", s(&p)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(rich()).unwrap());
    let r = qforge(&["run", "fold", "-i", s(&p), "-o", s(&p), "--force", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    common::check_valid(&p, Some(&rich()));
}

#[test]
fn run_writes_output_report_and_honours_stop_after() {
    let dir = common::tempdir();
    let out = dir.path().join("o.onnx");
    let report = dir.path().join("r.json");
    let r = qforge(&[
        "run",
        "fold",
        "-i",
        s(&rich()),
        "-o",
        s(&out),
        "--report",
        s(&report),
        "--stop-after",
        "2",
        "--print-ir-after",
        "eliminate-identity",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("stopped after pass #2"), "{}", r.stdout);
    assert!(r.stderr.contains("// ---- IR after eliminate-identity (#2) ----"), "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(j["runs"].as_array().unwrap().len(), 2);
    assert_eq!(j["runs"][1]["pass"], "eliminate-identity");
    qforge_ir::load(&out).unwrap();
    common::check_valid(&out, Some(&rich()));
}

#[test]
fn passes_inspect_and_diff() {
    let r = qforge(&["passes"]);
    assert_eq!(r.code, 0);
    for p in ["fold-batchnorm", "resize-to-conv-transpose", "fold-constants", "eliminate-dead"] {
        assert!(r.stdout.contains(p), "{p} missing from `qforge passes`");
    }
    assert!(r.stdout.contains("max_elements = 1048576"), "{}", r.stdout);
    let r = qforge(&["passes", "fold-batchnrom"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("did you mean `fold-batchnorm`"));

    let r = qforge(&["inspect", s(&rich()), "--ir", "--verify"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("ops: If×1 LeakyRelu×1 local::Twice×1"), "{}", r.stdout);
    assert!(r.stdout.contains("verifier: ok"));
    assert!(r.stdout.contains("%t = LeakyRelu(%x) {alpha=0.0} : f32[1,4]  # relu"), "{}", r.stdout);

    let dir = common::tempdir();
    // The case's graph output, declared (ONNX requires a type on it).
    let text = include_str!("passes/fold-batchnorm/conv.ir").replace("output %y", "output %y: f32[1,4,8,8]");
    let g = qforge_ir::parse_graph(&text).unwrap();
    let a = dir.path().join("a.onnx");
    qforge_ir::save(&qforge_ir::Model::new(g), &a, &Default::default()).unwrap();
    common::check_valid(&a, None);
    let b = dir.path().join("b.onnx");
    assert_eq!(qforge(&["run", "fold", "-i", s(&a), "-o", s(&b), "-q"]).code, 0);
    common::check_valid(&b, Some(&a));
    let r = qforge(&["diff", s(&a), s(&b)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("ops: BatchNormalization 1 → 0 (-1)"), "{}", r.stdout);
    assert!(r.stdout.contains("- bn (BatchNormalization)"), "{}", r.stdout);
    assert!(r.stdout.contains("interface: unchanged"), "{}", r.stdout);
}

/// The default binary links qforge-yolo like any plugin: its metric and its
/// `agree` subcommand, which scores a candidate against its FP32 model.
#[test]
fn the_default_binary_links_the_yolo_plugin() {
    let r = qforge(&["passes"]);
    assert!(r.stdout.contains("yolo-map50"), "{}", r.stdout);
    let r = qforge(&["--help"]);
    assert!(r.stdout.contains("agree ") && r.stdout.contains("Detection agreement"), "{}", r.stdout);
    let r = qforge(&["agree", "a.onnx"]);
    assert_eq!(r.code, 2, "a usage error: {}", r.stderr);
    assert!(r.stderr.contains("--images"), "{}", r.stderr);
    let (Some(model), Some(photos)) = (common::model("nudenet-320n.onnx"), common::photos()) else { return };
    let dir = common::tempdir();
    std::fs::copy(photos.join("bus.jpg"), dir.path().join("bus.jpg")).unwrap();
    let m = s(&model);
    let r = qforge(&["agree", m, m, "--images", s(dir.path()), "--size", "320", "--engine", "tract", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["images"], 4, "one photo, 4 views: {j}");
    assert_eq!(
        (j["recall"].as_f64(), j["precision"].as_f64()),
        (Some(1.0), Some(1.0)),
        "the model agrees with itself: {j}"
    );
    let r = qforge(&["agree", m, m, "--images", "/nonexistent/photos", "--size", "320", "--engine", "tract"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("error: ") && r.stderr.contains("/nonexistent/photos"), "{}", r.stderr);
}

/// `--calib` goes to the passes that say they read a data set; a pipeline
/// without one is told so.
#[test]
fn calib_without_a_pass_that_reads_data() {
    let dir = common::tempdir();
    let out = dir.path().join("out.onnx");
    let r = qforge(&["run", "fold", "-i", s(&rich()), "-o", s(&out), "--calib", s(dir.path())]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("--calib: no pass of pipeline `fold` reads a data set"), "{}", r.stderr);
    assert!(!out.exists());
    let r = qforge(&["passes", "calibrate"]);
    assert!(r.stdout.contains("takes `qforge run --calib PATH`"), "{}", r.stdout);
}
