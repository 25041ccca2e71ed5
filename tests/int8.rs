//! INT8 for TensorRT: Q/DQ placement (snapshot), the legality check, the
//! engine step without TensorRT, and the yolo-int8 pipeline on nudenet.

mod common;

use std::path::Path;

use qforge_ir::{DataType, parse_graph};
use qforge_passes::{ManagerOptions, PassContext, PassManager, Pipeline, find_pass};
use qforge_runtime::write_npy;

/// Conv-BN-SiLU twice, Concat, MaxPool, Resize (nearest ×2), a residual
/// Add, and a final Conv.
const SMALL: &str = r#"
graph small {
  opset ai.onnx 13
  input %x: f32[1,3,8,8]
  init @w0: f32[4,3,3,3] = rand(1)
  init @g0: f32[4] = [1.0,0.5,2.0,1.5]
  init @b0: f32[4] = [0.1,0.0,-0.1,0.2]
  init @m0: f32[4] = fill(0.0)
  init @v0: f32[4] = fill(1.0)
  init @w1: f32[4,4,1,1] = rand(2)
  init @w2: f32[8,8,1,1] = rand(3)
  init @scales: f32[4] = [1.0,1.0,2.0,2.0]
  init @w3: f32[8,8,1,1] = rand(4)
  %c0 = Conv(%x, @w0) {kernel_shape=[3,3], pads=[1,1,1,1], strides=[2,2]}  # conv0
  %n0 = BatchNormalization(%c0, @g0, @b0, @m0, @v0)  # bn0
  %s0 = Sigmoid(%n0)  # sig0
  %a0 = Mul(%n0, %s0)  # silu0
  %c1 = Conv(%a0, @w1) {kernel_shape=[1,1]}  # conv1
  %cat = Concat(%a0, %c1) {axis=1}  # cat
  %p = MaxPool(%cat) {kernel_shape=[3,3], pads=[1,1,1,1], strides=[1,1]}  # pool
  %c2 = Conv(%p, @w2) {kernel_shape=[1,1]}  # conv2
  %r = Add(%c2, %cat)  # residual
  %up = Resize(%r, _, @scales) {coordinate_transformation_mode="asymmetric", mode="nearest", nearest_mode="floor"}  # up
  %y = Conv(%up, @w3) {kernel_shape=[1,1]}  # head
  output %y
}
"#;

fn random_npy(dir: &Path, n: usize, shape: &[usize]) {
    common::random_npy(dir, n, shape, 42);
}

#[test]
fn insert_qdq_placement_and_shared_scales() {
    qforge_passes::builtin::link();
    let dir = common::tempdir();
    random_npy(dir.path(), 4, &[1, 3, 8, 8]);
    let yaml = format!(
        "passes:\n  - fold-batchnorm\n  - infer-shapes\n  - resize-to-conv-transpose\n  - calibrate: {{method: max, data: {{npy: {:?}}}}}\n  - insert-qdq: {{exclude_tail: false, quantize_ops: [MaxPool]}}\n",
        dir.path().to_str().unwrap()
    );
    let pipeline = Pipeline::parse(&yaml, "test.yaml").unwrap();
    let pm = PassManager::new(&pipeline, ManagerOptions::default()).unwrap();
    let mut g = parse_graph(SMALL).unwrap();
    let mut cx = PassContext { quiet: true, ..Default::default() };
    pm.run(&mut g, &mut cx).unwrap();
    qforge_ir::verify(&g).unwrap();
    let text = qforge_ir::print_graph(&g, &qforge_ir::PrintOptions { max_elements: 8, initializers: false });
    // Concat inputs and output, MaxPool in/out and the Add's inputs share one
    // scale; the conv inputs read the shared DQ of each tensor.
    insta::with_settings!({ omit_expression => true }, { insta::assert_snapshot!(text) });
    let scale = |name: &str| {
        let v = g.find_value(&format!("{name}_scale")).unwrap_or_else(|| panic!("no scale for {name}"));
        g.initializer(v).unwrap().to_vec::<f32>().unwrap()[0]
    };
    // a0 and c1 join in the Concat, which feeds the MaxPool: one group.
    assert_eq!(scale("cat"), scale("a0"));
    assert_eq!(scale("cat"), scale("p"));
    assert!(g.find_value("c1_scale").is_none(), "c1 feeds no weighted op: no pair of its own");
    // Every weighted op reads int8 weights through a per-channel DQ.
    for n in g.nodes() {
        let node = g.node(n);
        if node.is_op("Conv") || node.is_op("ConvTranspose") {
            let dq = g.producer_node(node.input(1).unwrap()).unwrap();
            assert!(g.node(dq).is_op("DequantizeLinear"), "{}", node.name());
            let w = g.node(dq).input(0).unwrap();
            assert_eq!(g.dtype(w), Some(DataType::I8));
        }
    }
}

/// `residual: fusable`: TensorRT fuses the residual Add into conv2 when
/// conv2's output stays unquantized (guide: Q/DQ placement, residual
/// connections), so only the residual input `cat` gets a pair; the fusion
/// prediction agrees. The default (`both`) is the snapshot above, where the
/// prediction flags the pair.
#[test]
fn residual_fusable_leaves_the_conv_side_of_the_add_unquantized() {
    use qforge_passes::tensorrt::fusion::{Rule, predict};
    let dir = common::tempdir();
    random_npy(dir.path(), 4, &[1, 3, 8, 8]);
    let run = |residual: &str| {
        let yaml = format!(
            "passes:\n  - fold-batchnorm\n  - infer-shapes\n  - calibrate: {{method: max, data: {{npy: {:?}}}}}\n  - insert-qdq: {{exclude_tail: false, residual: {residual}}}\n",
            dir.path().to_str().unwrap()
        );
        let mut g = parse_graph(SMALL).unwrap();
        run_pipeline(&mut g, &yaml).unwrap();
        qforge_ir::verify(&g).unwrap();
        g
    };
    let g = run("fusable");
    assert!(g.find_value("c2_scale").is_none(), "conv2 writes the Add's fused input");
    let add = g.find_node("residual").unwrap();
    assert!(g.producer_node(g.node(add).input(1).unwrap()).is_some_and(|p| g.node(p).is_op("DequantizeLinear")));
    let fusion = predict(&g);
    assert!(fusion.findings.iter().all(|f| f.rule != Rule::ResidualQdq), "{:?}", fusion.findings);
    assert_eq!(fusion.layers.iter().find(|l| l.layer == "conv2").unwrap().epilogue, ["Add"]);
    let both = predict(&run("both"));
    assert!(both.findings.iter().any(|f| f.rule == Rule::ResidualQdq && f.node == "conv2"), "{:?}", both.findings);
}

/// A scale FP16 cannot hold (an untrained model's tiny activations) keeps its
/// Q/DQ in FP32 behind Casts instead of becoming 0 (which TensorRT refuses
/// and which broke `yolo-int8` on the untrained YOLOv5n).
#[test]
fn to_fp16_keeps_q_dq_whose_scale_underflows_fp16_in_fp32() {
    let mut g = parse_graph(
        "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,2,4,4]\n  init @s: f32[] = [0.05]\n  init @t: f32[] = [1e-9]\n  init @z: i8[] = [0]\n  init @w: f32[2,2,1,1] = rand(1)\n  %r = Relu(%x) : f32[1,2,4,4]  # relu\n  %q = QuantizeLinear(%r, @s, @z) : i8[1,2,4,4]  # q\n  %d = DequantizeLinear(%q, @s, @z) : f32[1,2,4,4]  # dq\n  %c = Conv(%d, @w) : f32[1,2,4,4]  # conv\n  %q2 = QuantizeLinear(%c, @t, @z) : i8[1,2,4,4]  # tq\n  %d2 = DequantizeLinear(%q2, @t, @z) : f32[1,2,4,4]  # tdq\n  %y = Relu(%d2) : f32[1,2,4,4]  # out\n  output %y\n}\n",
    )
    .unwrap();
    let report = run_pipeline(&mut g, "passes:\n  - to-fp16\n").unwrap();
    qforge_ir::verify(&g).unwrap();
    let scale_type = |name: &str| g.dtype(g.node(g.find_node(name).unwrap()).input(1).unwrap());
    assert_eq!(scale_type("q"), Some(DataType::F16));
    assert_eq!(scale_type("dq"), Some(DataType::F16));
    assert_eq!(scale_type("tq"), Some(DataType::F32), "1e-9 is 0 in FP16");
    assert_eq!(scale_type("tdq"), Some(DataType::F32));
    let run = report.runs.iter().find(|p| p.name == "to-fp16").unwrap();
    assert_eq!(run.report.get("Q/DQ kept FP32 (scale below FP16)"), 2, "{:?}", run.report);
    assert!(qforge_passes::tensorrt::legality::check(&g, true).errors.is_empty());
}

/// Outputs calibration did not cover (the decode tail) stay FP32 when they
/// reach `rangeless_max` on the samples, and a float16-overflowing weight
/// keeps its reader FP32 (ModelOpt's rules); with the measure off, the tail
/// goes FP16.
#[test]
fn to_fp16_keeps_uncovered_large_outputs_and_huge_weights_fp32() {
    let dir = common::tempdir();
    random_npy(dir.path(), 3, &[1, 2, 4, 4]);
    let text = "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,2,4,4]\n  init @w: f32[2,2,1,1] = rand(1)\n  \
        init @k: f32[] = [1000.0]\n  init @h: f32[] = [100000.0]\n  init @u: f32[] = [0.001]\n  \
        %c = Conv(%x, @w)  # conv\n  %big = Mul(%c, @k)  # scale_up\n  %tail = Sub(%big, @k)  # tail\n  \
        %small = Mul(%tail, @u)  # back_down\n  %huge = Mul(%small, @h)  # huge_weight\n  %y = Relu(%huge)  # out\n  \
        output %y\n}\n";
    let out_type = |g: &qforge_ir::Graph, node: &str| g.dtype(g.node(g.find_node(node).unwrap()).output(0).unwrap());
    for samples in [2, 0] {
        let mut g = parse_graph(text).unwrap();
        let yaml = format!(
            "passes:\n  - infer-shapes\n  - calibrate: {{method: max, data: {{npy: {:?}}}}}\n  - insert-qdq: {{exclude_tail: true}}\n  - to-fp16: {{rangeless_samples: {samples}}}\n",
            dir.path().to_str().unwrap()
        );
        let report = run_pipeline(&mut g, &yaml).unwrap();
        qforge_ir::verify(&g).unwrap();
        let notes = report.runs.iter().find(|p| p.name == "to-fp16").unwrap().report.notes.join("\n");
        if samples > 0 {
            // |conv| <= a few, so the tail is around 1000: FP32, each said.
            for node in ["scale_up", "tail"] {
                assert_eq!(out_type(&g, node), Some(DataType::F32), "{node}: {notes}");
                assert!(notes.contains(&format!("\"{node}\"")) && notes.contains("did not cover"), "{notes}");
            }
            assert_eq!(out_type(&g, "back_down"), Some(DataType::F16), "~1 after scaling back: {notes}");
        } else {
            assert_eq!(out_type(&g, "tail"), Some(DataType::F16), "not measured: {notes}");
        }
        assert_eq!(out_type(&g, "huge_weight"), Some(DataType::F32), "100000 is not a float16: {notes}");
        let h = g.node(g.find_node("huge_weight").unwrap()).input(1).unwrap();
        assert_eq!(g.constant(h).unwrap().to_f32_vec().unwrap(), [100000.0]);
    }
}

fn tensorrt_error(text: &str) -> String {
    qforge_passes::builtin::link();
    let mut g = parse_graph(text).unwrap();
    let pass = (find_pass("tensorrt").unwrap().create)(&serde_json::json!({ "build": "never" })).unwrap();
    match pass.run(&mut g, &mut PassContext::default()) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn legality_reports_zero_point_3() {
    let e = tensorrt_error(
        "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,2,4,4]\n  init @s: f32[] = [0.1]\n  init @z: i8[] = [3]\n  init @w: f32[2,2,1,1] = rand(1)\n  %q = QuantizeLinear(%x, @s, @z)  # q\n  %d = DequantizeLinear(%q, @s, @z)  # dq\n  %y = Conv(%d, @w)  # conv\n  output %y\n}\n",
    );
    assert!(e.contains("\"q\" (QuantizeLinear): zero point 3, TensorRT needs 0"), "{e}");
    assert!(e.contains("\"dq\" (DequantizeLinear): zero point 3, TensorRT needs 0"), "{e}");
}

#[test]
fn legality_reports_per_channel_scale_on_the_wrong_axis() {
    let e = tensorrt_error(
        "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,3,4,4]\n  init @wq: i8[2,3,1,1] = [1,2,3,4,5,6]\n  init @ws: f32[3] = [0.1,0.2,0.3]\n  init @wz: i8[3] = [0,0,0]\n  %w = DequantizeLinear(@wq, @ws, @wz) {axis=1}  # wdq\n  %y = Conv(%x, %w)  # conv\n  output %y\n}\n",
    );
    assert!(
        e.contains("\"wdq\" (DequantizeLinear): per-channel axis 1 on the weight of \"conv\" (Conv), TensorRT needs axis 0 (its output channels)"),
        "{e}"
    );
}

#[test]
fn legality_reports_opset_11() {
    let e = tensorrt_error(
        "graph g {\n  opset ai.onnx 11\n  input %x: f32[1,2,4,4]\n  init @s: f32[] = [0.1]\n  init @z: i8[] = [0]\n  %q = QuantizeLinear(%x, @s, @z)  # q\n  %d = DequantizeLinear(%q, @s, @z)  # dq\n  output %d\n}\n",
    );
    assert!(e.contains("opset 11: TensorRT's Q/DQ (per-channel axis) needs opset 13 or later"), "{e}");
}

fn small_qdq_model(dir: &Path) -> std::path::PathBuf {
    let g = parse_graph(
        "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,2,4,4]\n  init @s: f32[] = [0.1]\n  init @z: i8[] = [0]\n  init @w: f32[2,2,1,1] = rand(1)\n  %q = QuantizeLinear(%x, @s, @z)  # q\n  %d = DequantizeLinear(%q, @s, @z)  # dq\n  %y = Conv(%d, @w)  # conv\n  output %y: f32[1,2,4,4]\n}\n",
    )
    .unwrap();
    let p = dir.join("qdq.onnx");
    qforge_ir::save(&qforge_ir::Model::new(g), &p, &Default::default()).unwrap();
    common::check_valid(&p, None);
    p
}

#[test]
fn engine_step_without_tensorrt_prints_the_command_or_fails_when_required() {
    let dir = common::tempdir();
    let model = small_qdq_model(dir.path());
    let out = dir.path().join("out.onnx");
    let run_for = |build: &str, version: &str| {
        let pipe = dir.path().join("p.yaml");
        std::fs::write(&pipe, format!("passes:\n  - tensorrt: {{build: {build}, version: \"{version}\"}}\n")).unwrap();
        common::qforge()
            .args(["run", pipe.to_str().unwrap(), "-i", model.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    };
    let run = |build: &str| run_for(build, "10");
    let base = format!("trtexec --onnx={} --saveEngine={}", out.display(), dir.path().join("out.engine").display());
    // Each TensorRT release gets its own command.
    for (version, flags) in [("8.6", " --int8 --fp16"), ("11", "")] {
        let o = run_for("auto", version);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert!(err.contains(&format!("{base}{flags}\n")), "{version}: {err}");
        std::fs::remove_file(&out).unwrap();
    }
    let o = run("auto");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let cmd = format!("{base} --stronglyTyped");
    // The FP32 rest of this graph would run in FP32 in a strongly typed build: said.
    let said = format!("{}{err}", String::from_utf8_lossy(&o.stdout));
    assert!(said.contains("add to-fp16 before tensorrt"), "{said}");
    assert!(err.contains("TensorRT (trtexec) is not installed here") && err.contains(&cmd), "{err}");
    assert!(out.exists());
    common::check_valid(&out, Some(&model));
    std::fs::remove_file(&out).unwrap();
    let o = run("required");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.lines().any(|l| l.starts_with("error:") && l.contains("not installed here")), "{err}");
    assert!(err.contains(&cmd), "{err}");
}

/// Runs `pipelines/NAME.yaml` on nudenet with the project's photos; its
/// stdout and stderr.
fn nudenet_pipeline(name: &str, model: &Path, photos: &Path, out: &Path, extra: &[&str]) -> String {
    let o = common::qforge()
        .args(["run", &format!("pipelines/{name}.yaml"), "-i", model.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--calib", photos.to_str().unwrap(), "--input-shape", "images=1,3,320,320"])
        .args(extra)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    format!("{stdout}{stderr}")
}

/// Zero points int8 0 on every Q/DQ, per-channel int8 weights on every Conv.
fn assert_tensorrt_int8(g: &qforge_ir::Graph) {
    for n in g.nodes() {
        let node = g.node(n);
        if node.is_op("QuantizeLinear") || node.is_op("DequantizeLinear") {
            let z = g.constant(node.input(2).unwrap()).unwrap();
            assert_eq!(z.dtype(), Some(DataType::I8));
            assert!(z.to_i64_vec().unwrap().iter().all(|&v| v == 0), "{}", node.name());
        }
        if node.is_op("Conv") {
            let dq = g.producer_node(node.input(1).unwrap()).expect("conv weight from a DQ");
            let w = g.node(dq).input(0).unwrap();
            assert_eq!(g.dtype(w), Some(DataType::I8), "{} weights", node.name());
            let scale = g.constant(g.node(dq).input(1).unwrap()).unwrap();
            let cout = g.known_dims(w).unwrap()[0];
            assert!(cout == 1 || scale.numel() as i64 == cout, "{}: per-channel scales", node.name());
        }
    }
}

/// The default pipeline writes the TensorRT 10 strongly typed form (FP16
/// rest, float16 Q/DQ scales, opset >= 19), valid, legal, run by ONNX
/// Runtime and by tract, and agreeing with FP32 on the photos.
#[test]
fn yolo_int8_on_nudenet_runs_everywhere_and_agrees_with_fp32() {
    let Some(model) = common::model("nudenet-320n.onnx") else { return };
    let Some(photos) = common::photos() else { return };
    let dir = common::tempdir();
    let out = dir.path().join("nudenet.int8.onnx");
    let stdout = nudenet_pipeline("yolo-int8", &model, &photos, &out, &["--set", "skip-sensitive.samples=16"]);
    assert!(stdout.contains("--stronglyTyped"), "{stdout}");
    // The fusion prediction runs on every TensorRT pipeline.
    assert!(stdout.contains("layers with INT8 output"), "{stdout}");
    assert!(!dir.path().join("nudenet.int8.cache").exists(), "no calibration cache for explicit quantization");
    common::check_valid(&out, Some(&model));
    let m = qforge_ir::load(&out).unwrap();
    let g = &m.graph;
    qforge_ir::verify(g).unwrap();
    assert!(g.opset("").unwrap() >= 19);
    assert!(qforge_passes::tensorrt::legality::check(g, true).errors.is_empty());
    assert_tensorrt_int8(g);
    let half_scales = g
        .nodes()
        .filter(|&n| g.node(n).is_op("DequantizeLinear"))
        .filter(|&n| g.dtype(g.node(n).input(1).unwrap()) == Some(DataType::F16))
        .count();
    assert!(half_scales >= 100, "{half_scales} float16 DQ scales");
    // tract runs it (the agreement below, through its float16 fixups), ONNX Runtime too.
    if common::python_ort() {
        let r =
            common::ort_compare(&model, &out, &["--input-shape", "1,3,320,320", "--images", photos.to_str().unwrap()]);
        assert!(r["runs"].as_u64().unwrap() >= 5, "{r}");
    }
    let a = qforge_yolo::agreement(&qforge_ir::load(&model).unwrap(), &m, &photos, 320, qforge_runtime::Engine::Tract)
        .unwrap();
    eprintln!("nudenet INT8 (FP16 rest) vs FP32, tract: {a}");
    // 29 FP32 detections: one detection ranked differently moves AP by ~0.03,
    // and float16 rounding of the rest reorders close scores (measured: 0.83
    // with the FP16 rest where the FP32 rest of the same Q/DQ gives 0.92, at
    // the same 24 dB SQNR; `bench/results.md` tracks the figures).
    assert!(a.map50 >= 0.80 && a.sqnr_db >= 22.0, "vs FP32 {a}");
}

/// `yolo-int8-trt8.yaml` keeps the TensorRT 8.6 form: FP32 rest and scales,
/// opset <= 17, a calibration cache, `--int8 --fp16`.
#[test]
fn yolo_int8_trt8_keeps_the_tensorrt_8_6_form() {
    let Some(model) = common::model("nudenet-320n.onnx") else { return };
    let Some(photos) = common::photos() else { return };
    let dir = common::tempdir();
    let out = dir.path().join("nudenet.int8.onnx");
    let few = ["--set", "calibrate.data.limit=4", "--set", "skip-sensitive.samples=4"];
    let stdout = nudenet_pipeline("yolo-int8-trt8", &model, &photos, &out, &few);
    assert!(stdout.contains("--int8 --fp16"), "{stdout}");
    assert!(dir.path().join("nudenet.int8.cache").exists());
    common::check_valid(&out, Some(&model));
    let g = qforge_ir::load(&out).unwrap().graph;
    assert!(g.opset("").unwrap() <= 17);
    assert!(qforge_passes::tensorrt::legality::check(&g, false).errors.is_empty());
    assert_tensorrt_int8(&g);
    for n in g.nodes().filter(|&n| g.node(n).is_op("DequantizeLinear")) {
        assert_eq!(g.dtype(g.node(n).input(1).unwrap()), Some(DataType::F32), "{}", g.node(n).name());
    }
}

/// The strongly typed form for TensorRT 10: after `to-fp16` the INT8 model
/// of nudenet has opset >= 19, float16 Q/DQ scales, no Cast next to a Q or
/// DQ, passes the checker, and agrees with FP32 as well as the FP32-rest
/// model does (within 0.01 mAP50, ONNX Runtime running all three).
#[test]
fn strongly_typed_int8_fp16_agrees_like_the_fp32_rest() {
    let Some(model) = common::model("nudenet-320n.onnx") else { return };
    let Some(photos) = common::photos() else { return };
    if !qforge_runtime::Engine::Ort.compiled() || qforge_runtime::ort_library_path().is_err() {
        return common::skip("ONNX Runtime is needed to run float16 Q/DQ (tract has no float16 scales)");
    }
    let dir = common::tempdir();
    let fold = common::root().join("pipelines/fold.yaml");
    let quant = |extra: &str, out: &Path| {
        let pipe = out.with_extension("yaml");
        std::fs::write(
            &pipe,
            format!(
                "include: [{fold:?}]\npasses:\n  - calibrate: {{method: max, data: {{views: true}}}}\n  \
                 - insert-qdq: {{exclude_tail: true}}\n{extra}"
            ),
        )
        .unwrap();
        let o = common::qforge()
            .args(["run", pipe.to_str().unwrap(), "-i", model.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .args(["--calib", photos.to_str().unwrap(), "--input-shape", "images=1,3,320,320", "-q"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (fp32_rest, fp16) = (dir.path().join("rest32.onnx"), dir.path().join("fp16.onnx"));
    quant("", &fp32_rest);
    quant("  - to-fp16\n", &fp16);
    common::check_valid(&fp16, Some(&model));
    let m = qforge_ir::load(&fp16).unwrap();
    let g = &m.graph;
    assert!(g.opset("").unwrap() >= 19);
    let qdq = |n| g.node(n).is_op("QuantizeLinear") || g.node(n).is_op("DequantizeLinear");
    let mut scales16 = 0;
    for n in g.nodes().filter(|&n| qdq(n)) {
        let scale = g.node(n).input(1).unwrap();
        // Only a Q of the FP32 graph input keeps an FP32 scale.
        let reads_input = g.node(n).input(0).is_some_and(|v| g.is_graph_input(v));
        if !reads_input {
            assert_eq!(g.dtype(scale), Some(DataType::F16), "{}", g.node(n).name());
            scales16 += 1;
        }
    }
    assert!(scales16 >= 100, "{scales16} float16 scales");
    for n in g.nodes().filter(|&n| g.node(n).is_op("Cast")) {
        let v = g.node(n).input(0).unwrap();
        let from_qdq = g.producer_node(v).is_some_and(qdq);
        let to_qdq = g.users(g.node(n).output(0).unwrap()).into_iter().any(qdq);
        assert!(!from_qdq && !to_qdq, "Cast {} next to a Q/DQ", g.node(n).name());
    }
    let fp32 = qforge_ir::load(&model).unwrap();
    let ort = qforge_runtime::Engine::Ort;
    let a16 = qforge_yolo::agreement(&fp32, &m, &photos, 320, ort).unwrap();
    let a32 = qforge_yolo::agreement(&fp32, &qforge_ir::load(&fp32_rest).unwrap(), &photos, 320, ort).unwrap();
    eprintln!("nudenet INT8, FP16 rest: {a16}; FP32 rest: {a32}");
    assert!((a16.map50 - a32.map50).abs() <= 0.01, "FP16 rest {a16} vs FP32 rest {a32}");
}

#[test]
fn to_fp16_keeps_the_interface_and_runs_in_onnxruntime() {
    let Some(model) = common::model("yolov5n-untrained-unfused-bn.onnx") else { return };
    let dir = common::tempdir();
    let pipe = dir.path().join("fp16.yaml");
    std::fs::write(
        &pipe,
        format!(
            "include: [{:?}]\npasses:\n  - to-fp16\n",
            common::root().join("pipelines/fold.yaml").to_str().unwrap()
        ),
    )
    .unwrap();
    let out = dir.path().join("fp16.onnx");
    let o = common::qforge()
        .args(["run", pipe.to_str().unwrap(), "-i", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    common::check_valid(&out, Some(&model));
    let m = qforge_ir::load(&out).unwrap();
    let g = &m.graph;
    let io: Vec<_> = g.runtime_inputs().into_iter().chain(g.outputs().iter().map(|p| p.value)).collect();
    for v in io {
        assert_eq!(g.dtype(v), Some(DataType::F32), "{} must stay FP32", g.value_name(v));
    }
    let convs16 = g
        .nodes()
        .filter(|&n| g.node(n).is_op("Conv"))
        .filter(|&n| g.dtype(g.node(n).output(0).unwrap()) == Some(DataType::F16))
        .count();
    assert_eq!(convs16, 60, "every Conv computes in FP16");
    if common::python_ort() {
        let r = common::ort_compare(&model, &out, &[]);
        let rel = r["max_rel"].as_f64().unwrap();
        eprintln!("yolov5n FP16 vs FP32 in ONNX Runtime: max relative difference {rel:.2e}");
        assert!(rel < 1e-2, "{r}");
    }
}

fn run_pipeline(g: &mut qforge_ir::Graph, yaml: &str) -> Result<qforge_passes::RunReport, String> {
    qforge_passes::builtin::link();
    let pipeline = Pipeline::parse(yaml, "test.yaml").map_err(|e| e.to_string())?;
    let pm = PassManager::new(&pipeline, ManagerOptions::default()).map_err(|e| e.to_string())?;
    pm.run(g, &mut PassContext { quiet: true, ..Default::default() }).map_err(|e| e.to_string())
}

#[test]
fn models_that_already_hold_qdq_are_refused_kept_or_requantized() {
    let dir = common::tempdir();
    random_npy(dir.path(), 2, &[1, 2, 4, 4]);
    let model = small_qdq_model(dir.path());
    let base = qforge_ir::load(&model).unwrap().graph;
    let npy = dir.path().to_str().unwrap().to_string();
    let yaml = |mode: &str| {
        format!(
            "passes:\n  - calibrate: {{method: max, data: {{npy: {npy:?}}}}}\n  - insert-qdq: {{on_quantized: {mode}}}\n"
        )
    };
    let mut g = base.clone();
    let e = run_pipeline(&mut g, &yaml("error")).unwrap_err();
    assert!(e.contains("already holds 2 QuantizeLinear/DequantizeLinear nodes") && e.contains("on_quantized"), "{e}");
    let mut g = base.clone();
    let r = run_pipeline(&mut g, &yaml("keep")).unwrap();
    assert_eq!(g.to_string(), base.to_string(), "keep leaves the model as it is");
    assert!(r.runs.iter().any(|p| p.report.get("existing Q/DQ kept") == 2));
    let mut g = base.clone();
    let r = run_pipeline(&mut g, &yaml("requantize")).unwrap();
    let ins = r.runs.iter().find(|p| p.name == "insert-qdq").unwrap();
    assert_eq!(ins.report.get("existing Q/DQ stripped"), 2);
    assert_eq!(ins.report.get("activation Q/DQ pairs"), 1, "{ins:?}");
    assert_eq!(ins.report.get("weights quantized"), 1);
    qforge_ir::verify(&g).unwrap();
}

#[test]
fn weights_can_be_stored_as_float_qdq_and_pairs_dedicated() {
    let dir = common::tempdir();
    random_npy(dir.path(), 2, &[1, 3, 8, 8]);
    let npy = dir.path().to_str().unwrap().to_string();
    let mut g = parse_graph(SMALL).unwrap();
    let yaml = format!(
        "passes:\n  - fold-batchnorm\n  - infer-shapes\n  - calibrate: {{method: max, data: {{npy: {npy:?}}}}}\n  - insert-qdq: {{exclude_tail: false, weights: qdq, dedicated_pairs: true, quantize_ops: [MaxPool]}}\n"
    );
    run_pipeline(&mut g, &yaml).unwrap();
    qforge_ir::verify(&g).unwrap();
    // Float weights behind Q/DQ, and `cat` (read by the residual Add and the
    // MaxPool's consumer chain) gets one pair per consumer.
    let conv0 = g.find_node("conv0").unwrap();
    let wdq = g.producer_node(g.node(conv0).input(1).unwrap()).unwrap();
    let wq = g.producer_node(g.node(wdq).input(0).unwrap()).unwrap();
    assert!(g.node(wq).is_op("QuantizeLinear"));
    assert_eq!(g.dtype(g.node(wq).input(0).unwrap()), Some(DataType::F32));
    let pairs = |t: &str| {
        g.nodes().filter(|&n| g.node(n).is_op("QuantizeLinear") && g.node(n).input(0) == g.find_value(t)).count()
    };
    assert_eq!(pairs("a0"), 1, "a0 has one quantized reader (conv1)");
    assert_eq!(pairs("cat"), 2, "cat is read by the MaxPool and the residual Add: a pair each");
}

/// `skip-sensitive` keeps a layer float only when the measured model improves:
/// its final score is never below the all-quantized one, the score it reports
/// is the score of the graph it leaves (re-measured here independently), and
/// the report lists every greedy step.
#[test]
fn skip_sensitive_never_makes_the_model_worse() {
    let dir = common::tempdir();
    random_npy(dir.path(), 6, &[1, 3, 8, 8]);
    let npy = dir.path().to_str().unwrap().to_string();
    for metric in ["sqnr", "cosine"] {
        let report = dir.path().join(format!("ss-{metric}.json"));
        let mut g = parse_graph(SMALL).unwrap();
        let yaml = format!(
            "passes:\n  - fold-batchnorm\n  - infer-shapes\n  - calibrate: {{method: max, data: {{npy: {npy:?}}}}}\n  - insert-qdq: {{exclude_tail: false}}\n  - skip-sensitive: {{top_k: 2, metric: {metric}, samples: 4, local_samples: 2, screen_samples: 2, shortlist: 4, report: {:?}}}\n",
            report.to_str().unwrap()
        );
        let float = {
            let mut f = parse_graph(SMALL).unwrap();
            run_pipeline(&mut f, "passes:\n  - fold-batchnorm\n").unwrap();
            f
        };
        let r = run_pipeline(&mut g, &yaml).unwrap();
        qforge_ir::verify(&g).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let (base, fin) = (&doc["all_quantized"], &doc["final"]);
        let m = |v: &serde_json::Value| v["metric"].as_f64().unwrap();
        assert!(m(fin) >= m(base), "{metric}: final {fin} is worse than all-quantized {base}");
        let steps = doc["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 4, "one entry per shortlisted layer: {doc}");
        assert_eq!(doc["local_ranking"].as_array().unwrap().len(), 5, "5 quantized layers: {doc}");
        // A step is accepted only once measured on all samples; one turned
        // down on the screen samples says so.
        for s in steps.iter().filter(|s| !s["combined"].is_null()) {
            let n = s["combined_samples"].as_u64().unwrap();
            assert!(n == 4 || (n == 2 && !s["accepted"].as_bool().unwrap()), "{metric}: {s}");
        }
        // Accepted steps raise the score; the last accepted one is the final score.
        let mut current = m(base);
        for s in steps.iter().filter(|s| s["accepted"].as_bool().unwrap()) {
            let c = m(&s["combined"]);
            assert!(c >= current, "{metric}: an accepted step lowered the metric: {s}");
            current = c;
        }
        assert_eq!(current, m(fin), "{doc}");
        let kept = steps.iter().filter(|s| s["accepted"].as_bool().unwrap()).count() as u64;
        let ss = r.runs.iter().find(|p| p.name == "skip-sensitive").unwrap();
        assert_eq!(ss.report.get("layers kept float"), kept);
        // The graph left behind scores what the report says, measured from scratch.
        let samples: Vec<qforge_runtime::HostTensor> = {
            let ds = qforge_runtime::Dataset::open(
                &qforge_runtime::Source::Npy(dir.path().to_path_buf()),
                &[1, 3, 8, 8],
                &Default::default(),
            )
            .unwrap();
            (0..4).map(|i| ds.load(i).unwrap()).collect()
        };
        let outs = |g: &qforge_ir::Graph| -> Vec<Vec<qforge_runtime::HostTensor>> {
            let s = qforge_runtime::session(&qforge_ir::Model::new(g.clone()), &Default::default()).unwrap();
            samples.iter().map(|x| s.run(std::slice::from_ref(x)).unwrap()).collect()
        };
        let score = (qforge_passes::find_metric(metric).unwrap().score)(&outs(&float), &outs(&g)).unwrap();
        assert!((score - m(fin)).abs() <= 1e-9 * score.abs().max(1.0), "{metric}: re-measured {score}, reported {fin}");
    }
}

/// `correct-bias` on a case whose answer is known: channel 0 of a 1×1 Conv
/// has weights [127, 0.3], which per-channel INT8 (scale 1) rounds to
/// [127, 0]; on an all-ones input the quantized output is 127 where the
/// float one is 127.3 plus the bias, a shift of exactly −0.3. Channel 1
/// ([1, 1]) quantizes exactly. After the pass, channel 0's bias is 0.3
/// higher, channel 1's unchanged, and the quantized model computes the float
/// model's outputs.
#[test]
fn correct_bias_cancels_a_known_rounding_shift() {
    let dir = common::tempdir();
    for i in 0..2 {
        write_npy(&dir.path().join(format!("{i}.npy")), &[1, 2, 4, 4], &[1.0; 32]).unwrap();
    }
    let text = "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,2,4,4]\n  \
        init @w: f32[2,2,1,1] = [127.0, 0.3, 1.0, 1.0]\n  init @b: f32[2] = [0.5, -0.5]\n  \
        %y = Conv(%x, @w, @b) {kernel_shape=[1,1]}  # conv\n  output %y\n}\n";
    let float = parse_graph(text).unwrap();
    let npy = dir.path().to_str().unwrap();
    let quantize = format!(
        "passes:\n  - infer-shapes\n  - calibrate: {{method: max, data: {{npy: {npy:?}}}}}\n  - insert-qdq: {{exclude_tail: false}}\n"
    );
    let run_on_ones = |g: &qforge_ir::Graph| -> Vec<f32> {
        let s = qforge_runtime::session(&qforge_ir::Model::new(g.clone()), &Default::default()).unwrap();
        let out = s.run(&[qforge_runtime::HostTensor::f32(vec![1, 2, 4, 4], vec![1.0; 32])]).unwrap();
        out[0].as_f32().unwrap().to_vec()
    };
    let expected = run_on_ones(&float);
    assert!((expected[0] - 127.8).abs() < 1e-4 && (expected[16] - 1.5).abs() < 1e-4, "{expected:?}");

    let mut plain = float.clone();
    run_pipeline(&mut plain, &quantize).unwrap();
    let before = run_on_ones(&plain);
    assert!((before[0] - 127.5).abs() < 1e-3, "the quantized model is off by −0.3 on channel 0: {before:?}");

    let mut g = float.clone();
    let report = run_pipeline(&mut g, &format!("{quantize}  - correct-bias\n")).unwrap();
    qforge_ir::verify(&g).unwrap();
    let run = report.runs.iter().find(|r| r.name == "correct-bias").unwrap();
    assert!(run.report.notes.iter().any(|n| n.contains("kept round 1")), "{:?}", run.report.notes);
    let conv = g.find_node("conv").unwrap();
    let bias = g.constant(g.node(conv).input(2).unwrap()).unwrap().to_f32_vec().unwrap();
    assert!((bias[0] - 0.8).abs() < 1e-4 && (bias[1] + 0.5).abs() < 1e-4, "{bias:?}");
    let after = run_on_ones(&g);
    for (a, e) in after.iter().zip(&expected) {
        assert!((a - e).abs() < 1e-3, "{after:?} vs {expected:?}");
    }
    let text = qforge_ir::print_graph(&g, &qforge_ir::PrintOptions { max_elements: 8, initializers: true });
    insta::with_settings!({ omit_expression => true }, { insta::assert_snapshot!(text) });
    // Without insert-qdq before it there is no float model to compare with.
    let e = run_pipeline(&mut float.clone(), "passes:\n  - correct-bias\n").unwrap_err();
    assert!(e.contains("run insert-qdq before correct-bias"), "{e}");
    // The written model is valid ONNX that ONNX Runtime loads.
    let path = dir.path().join("corrected.onnx");
    qforge_ir::save(&qforge_ir::Model::new(g), &path, &Default::default()).unwrap();
    common::check_valid(&path, None);
}

/// `insert-qdq: {weights_method: mse}` gives each weight channel a range no
/// wider than its max (the search starts at max and only keeps a narrower
/// range with less error), and the model stays valid.
#[test]
fn mse_weight_ranges_are_never_wider_than_max() {
    let dir = common::tempdir();
    random_npy(dir.path(), 2, &[1, 3, 8, 8]);
    let run = |method: &str| {
        let yaml = format!(
            "passes:\n  - fold-batchnorm\n  - infer-shapes\n  - calibrate: {{method: max, data: {{npy: {:?}}}}}\n  - insert-qdq: {{exclude_tail: false, weights_method: {method}}}\n",
            dir.path().to_str().unwrap()
        );
        let mut g = parse_graph(SMALL).unwrap();
        run_pipeline(&mut g, &yaml).unwrap();
        qforge_ir::verify(&g).unwrap();
        let mut scales: Vec<(String, Vec<f32>)> = g
            .initializers()
            .iter()
            .filter(|&&v| g.value_name(v).starts_with('w') && g.value_name(v).ends_with("_scale"))
            .map(|&v| (g.value_name(v).to_string(), g.initializer(v).unwrap().to_vec::<f32>().unwrap()))
            .collect();
        scales.sort_by(|a, b| a.0.cmp(&b.0));
        scales
    };
    let (max, mse) = (run("max"), run("mse"));
    assert_eq!(max.len(), 4, "{max:?}");
    assert_eq!(max.iter().map(|s| &s.0).collect::<Vec<_>>(), mse.iter().map(|s| &s.0).collect::<Vec<_>>());
    for ((name, a), (_, b)) in max.iter().zip(&mse) {
        assert!(a.iter().zip(b).all(|(x, y)| y <= x && *y > 0.0), "{name}: max {a:?} vs mse {b:?}");
    }
    let e = run_pipeline(&mut parse_graph(SMALL).unwrap(), "passes:\n  - insert-qdq: {weights_method: median}\n")
        .unwrap_err();
    assert!(e.contains("weights_method") || e.contains("median"), "{e}");
}

/// `tune-ranges` on cases whose answer is known. A 1×1 Conv reads a
/// tensor whose channel 0 lies in [-1, 1] and whose channel 1 is zero but
/// for one ±100 in every other sample (4 values in 65536: beyond the
/// 99.99th percentile), so `max` calibration gives it the range 100 and
/// channel 0 a rounding step of 0.8. When the Conv ignores channel 1
/// (weights [1, 0]), clipping the outliers costs nothing: the pass must
/// narrow the range to about 1 and the output error must fall. When the
/// Conv reads only channel 1 (weights [0, 1]), the outliers are the signal,
/// which the range 100 represents exactly: it must stay.
#[test]
fn tune_ranges_clips_what_the_output_ignores_and_keeps_what_it_needs() {
    let dir = common::tempdir();
    let mut state = 12345u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) as f32
    };
    for i in 0..8 {
        let mut x = vec![0.0f32; 2 * 4096];
        for v in x.iter_mut().take(4096) {
            *v = 2.0 * next() - 1.0;
        }
        if i % 2 == 0 {
            x[4096 + i * 97] = if i % 4 == 0 { 100.0 } else { -100.0 };
        }
        write_npy(&dir.path().join(format!("{i}.npy")), &[1, 2, 64, 64], &x).unwrap();
    }
    let npy = dir.path().to_str().unwrap();
    let range = |g: &qforge_ir::Graph| -> f32 {
        let q =
            g.nodes().find(|&n| g.node(n).is_op("QuantizeLinear") && g.node(n).input(0) == g.find_value("x")).unwrap();
        g.constant(g.node(q).input(1).unwrap()).unwrap().to_f32_vec().unwrap()[0] * 127.0
    };
    let run = |weights: &str| {
        let text = format!(
            "graph g {{\n  opset ai.onnx 13\n  input %x: f32[1,2,64,64]\n  init @w: f32[1,2,1,1] = [{weights}]\n  \
             %y = Conv(%x, @w) {{kernel_shape=[1,1]}}  # conv\n  output %y\n}}\n"
        );
        let mut g = parse_graph(&text).unwrap();
        let yaml = format!(
            "passes:\n  - infer-shapes\n  - calibrate: {{method: max, data: {{npy: {npy:?}}}}}\n  \
             - insert-qdq: {{exclude_tail: false}}\n  - tune-ranges: {{engine: tract}}\n"
        );
        let report = run_pipeline(&mut g, &yaml).unwrap();
        qforge_ir::verify(&g).unwrap();
        let notes = report.runs.iter().find(|r| r.name == "tune-ranges").unwrap().report.notes.clone();
        (g, notes)
    };
    let (ignored, notes) = run("1.0, 0.0");
    let r = range(&ignored);
    assert!(r > 0.9 && r < 2.0, "range {r}; {notes:?}");
    assert!(notes.iter().any(|n| n.contains(": kept")), "{notes:?}");
    let (needed, notes) = run("0.0, 1.0");
    assert_eq!(range(&needed), 100.0, "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("0 range(s) changed")), "{notes:?}");
    let text = qforge_ir::print_graph(&ignored, &qforge_ir::PrintOptions { max_elements: 8, initializers: true });
    insta::with_settings!({ omit_expression => true }, { insta::assert_snapshot!(text) });
    // Without insert-qdq before it there is no quantized model to tune.
    let mut bare = parse_graph(
        "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,2,64,64]\n  init @w: f32[1,2,1,1] = [1.0, 0.0]\n  \
         %y = Conv(%x, @w) {kernel_shape=[1,1]}  # conv\n  output %y\n}\n",
    )
    .unwrap();
    let e = run_pipeline(&mut bare, "passes:\n  - tune-ranges\n").unwrap_err();
    assert!(e.contains("run insert-qdq before tune-ranges"), "{e}");
    let path = dir.path().join("tuned.onnx");
    qforge_ir::save(&qforge_ir::Model::new(ignored), &path, &Default::default()).unwrap();
    common::check_valid(&path, None);
}
