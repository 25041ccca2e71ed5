//! The `rewrite` pass from the command line: `pipelines/rewrite-example.yaml`
//! on a real YOLOv5n export (every SiLU fused, outputs unchanged under
//! `--check-numerics`, the written model valid for onnx.checker and ONNX
//! Runtime), a broken rule reported at its line of the YAML with nothing
//! written, and `--check-numerics` failing an inexact rule unless it is
//! marked `approximate`. The matcher's own cases are unit tests beside it
//! (`passes/src/builtin/rewrite/tests.rs`); before ⇒ after snapshots, with
//! numeric checks, are in `tests/passes/rewrite/`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qforge_ir::{ExportOptions, Model, parse_graph};

use common::{run as qforge, s};

fn ops(path: &Path) -> BTreeMap<String, usize> {
    let m = qforge_ir::load(path).unwrap();
    let mut h = BTreeMap::new();
    for n in m.graph.nodes() {
        *h.entry(m.graph.node(n).op_type().to_string()).or_insert(0) += 1;
    }
    h
}

/// The end-to-end error `--check-numerics` printed.
fn end_to_end(stdout: &str) -> f64 {
    let line = stdout.lines().find(|l| l.starts_with("numerics: ")).unwrap_or_else(|| panic!("{stdout}"));
    let figure = line.split(" by ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap();
    figure.parse().unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn example_pipeline_fuses_every_silu_of_yolov5n_exactly() {
    let Some(m) = common::model("yolov5n-untrained-unfused-bn.onnx") else { return };
    let before = ops(&m);
    assert_eq!((before["Sigmoid"], before["Mul"]), (60, 69));
    let dir = common::tempdir();
    let out = dir.path().join("out.onnx");
    let pipeline = common::root().join("pipelines/rewrite-example.yaml");
    let r = qforge(&["run", s(&pipeline), "-i", s(&m), "-o", s(&out), "--check-numerics"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // The statistics table counts matches per rule (a rule that matched
    // nothing is not listed).
    assert!(r.stdout.contains("silu-to-quickgelu 57"), "{}", r.stdout);
    assert!(!r.stdout.contains("nchw-roundtrip"), "{}", r.stdout);
    let err = end_to_end(&r.stdout);
    assert!(err <= 1e-5, "the fused model differs by {err:e}:\n{}", r.stdout);

    let after = ops(&out);
    assert_eq!(after.get("QuickGelu"), Some(&57), "{after:?}");
    // The detection head's three Sigmoids are not SiLUs.
    assert_eq!((after["Sigmoid"], after["Mul"]), (3, 12), "{after:?}");
    let model = qforge_ir::load(&out).unwrap();
    assert_eq!(model.graph.opset("com.microsoft"), Some(1));
    assert_eq!(model.graph.outputs().len(), qforge_ir::load(&m).unwrap().graph.outputs().len());
    common::check_valid(&out, Some(&m));
}

/// A model with one SiLU, at opset 14 (HardSwish needs it).
fn silu_model(dir: &Path) -> PathBuf {
    let g = parse_graph(
        "graph silu {\n  opset ai.onnx 14\n  input %x: f32[1,8]\n  %s = Sigmoid(%x) : f32[1,8]  # act/Sigmoid\n  %y = Mul(%x, %s) : f32[1,8]  # act/Mul\n  output %y: f32[1,8]\n}\n",
    )
    .unwrap();
    let path = dir.join("silu.onnx");
    qforge_ir::save(&Model::new(g), &path, &ExportOptions::default()).unwrap();
    path
}

fn pipeline(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const BROKEN_TO: &str = "\
passes:
  - rewrite:
      rules:
        - name: silu
          from: |
            %s = Sigmoid(%x)
            %y = Mul(%x, %s)
          to: |
            %y = com.microsoft::QuickGelu(%z) {alpha=1.0}
";

#[test]
fn a_broken_rule_fails_at_its_yaml_line_and_writes_nothing() {
    let dir = common::tempdir();
    let model = silu_model(dir.path());
    let out = dir.path().join("out.onnx");
    let cases = [
        // `%z` in `to` (line 9): 12 spaces of indentation + `%y = com.microsoft::QuickGelu(`.
        (BROKEN_TO.to_string(), "9:43: pass `rewrite`, rule `silu` (`to`): `%z` is not bound by `from`"),
        // A missing `(` in `from` line 2 (file line 7).
        (
            BROKEN_TO.replace("Mul(%x, %s)", "Mul %x, %s").replace("(%z)", "(%x)"),
            "7:22: pass `rewrite`, rule `silu` (`from`): expected `(`",
        ),
        // `$a` is bound by nothing.
        (
            BROKEN_TO.replace("(%z) {alpha=1.0}", "(%x) {alpha=$a}"),
            "9:54: pass `rewrite`, rule `silu` (`to`): `$a` is not bound by `from`",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let p = pipeline(dir.path(), &format!("bad{i}.yaml"), text);
        let r = qforge(&["run", s(&p), "-i", s(&model), "-o", s(&out)]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        let errors: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors, [format!("error: {}:{expected}", p.display())], "{}", r.stderr);
        assert!(!out.exists(), "nothing is written");
    }
}

const TO_HARDSWISH: &str = "\
passes:
  - rewrite:
      rules:
        - name: silu-to-hardswish
          from: |
            %s = Sigmoid(%x)
            %y = Mul(%x, %s)
          to: |
            %y = HardSwish(%x)
";

#[test]
fn check_numerics_fails_an_inexact_rule_unless_it_is_approximate() {
    let dir = common::tempdir();
    let model = silu_model(dir.path());
    let out = dir.path().join("out.onnx");
    // HardSwish is a piecewise-linear stand-in for SiLU, not SiLU.
    let p = pipeline(dir.path(), "exact.yaml", TO_HARDSWISH);
    let r = qforge(&["run", s(&p), "-i", s(&model), "-o", s(&out), "--check-numerics"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("numeric check failed after pass rewrite"), "{}", r.stderr);
    assert!(!out.exists());

    let p = pipeline(dir.path(), "approximate.yaml", &format!("{TO_HARDSWISH}          approximate: true\n"));
    let r = qforge(&["run", s(&p), "-i", s(&model), "-o", s(&out), "--check-numerics"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("silu-to-hardswish 1"), "{}", r.stdout);
    let err = end_to_end(&r.stdout);
    assert!(err > 1e-3, "the difference is reported ({err:e}):\n{}", r.stdout);
    assert_eq!(ops(&out).get("HardSwish"), Some(&1));
    common::check_valid(&out, Some(&model));
}
