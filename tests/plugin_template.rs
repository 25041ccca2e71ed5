//! The plugin template, `examples/plugin/`, is what the README's "Writing
//! your own pass" says it is: a crate outside this workspace that builds a
//! `qforge` binary with its own pass, metric and subcommand through
//! `qforge::cli::main_with`. It is built here with cargo as a user would
//! (offline, from the cargo cache), into this build's target folder so the
//! dependencies compiled for the workspace (tract above all) are reused,
//! then run: `passes`, its subcommand, a pipeline with its pass under
//! `--check-numerics`, and `skip-sensitive` ranked by its metric.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qforge_ir::parse_graph;

/// The target folder and profile this test was built in (it runs from
/// `<target>/<profile>/deps/`).
fn target_and_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("<target>/<profile>/deps/<test>");
    let profile = profile_dir.file_name().and_then(|p| p.to_str()).expect("profile folder").to_string();
    (profile_dir.parent().expect("target folder").to_path_buf(), profile)
}

/// Builds the template and returns its `qforge` binary.
fn build_template() -> PathBuf {
    let root = common::root();
    let example = root.join("examples/plugin");
    // The workspace's lock file, so the template resolves the very versions
    // already compiled (its own lock file is not committed).
    std::fs::copy(root.join("Cargo.lock"), example.join("Cargo.lock")).expect("copying Cargo.lock");
    let (target, profile) = target_and_profile();
    let out_dir = target.join("plugin-template");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--offline", "--manifest-path"]).arg(example.join("Cargo.toml"));
    if profile == "release" {
        cmd.arg("--release");
    }
    // Intermediate artifacts go where the workspace's are (same versions,
    // features and profile settings: reused), the binary to its own folder
    // (it is also called `qforge`).
    cmd.env("CARGO_BUILD_BUILD_DIR", &target).env("CARGO_TARGET_DIR", &out_dir);
    let o = cmd.output().expect("cargo starts");
    assert!(
        o.status.success(),
        "cargo build --manifest-path examples/plugin/Cargo.toml failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let exe = out_dir.join(&profile).join(format!("qforge{}", std::env::consts::EXE_SUFFIX));
    assert!(exe.is_file(), "{} was not built", exe.display());
    exe
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(exe: &Path, args: &[&str]) -> Run {
    let o: Output = Command::new(exe).args(args).output().expect("the template binary starts");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Two Relu chains and an Abs chain whose inner node has another reader.
const CHAINS: &str = "graph g {
  opset ai.onnx 13
  input %x: f32[1,3,8,8]
  init @w: f32[4,3,3,3] = rand(1)
  %c = Conv(%x, @w) {kernel_shape=[3,3], pads=[1,1,1,1]}  # conv
  %r1 = Relu(%c)  # relu1
  %r2 = Relu(%r1)  # relu2
  %r3 = Relu(%r2)  # relu3
  %a1 = Abs(%c)  # abs1
  %a2 = Abs(%a1)  # abs2
  %s = Add(%a1, %a2)  # sum
  output %r3: f32[1,4,8,8]
  output %s: f32[1,4,8,8]
}
";

/// A small classifier (10 classes) for the metric.
const CLASSIFIER: &str = "graph g {
  opset ai.onnx 13
  input %x: f32[1,3,8,8]
  init @w0: f32[8,3,3,3] = rand(1)
  init @w1: f32[8,8,3,3] = rand(2)
  init @wfc: f32[10,8] = rand(3)
  %c0 = Conv(%x, @w0) {kernel_shape=[3,3], pads=[1,1,1,1]}  # conv0
  %a0 = Relu(%c0)  # relu0
  %c1 = Conv(%a0, @w1) {kernel_shape=[3,3], pads=[1,1,1,1]}  # conv1
  %a1 = Relu(%c1)  # relu1
  %p = GlobalAveragePool(%a1)  # pool
  %f = Flatten(%p)  # flat
  %y = Gemm(%f, @wfc) {transB=1}  # fc
  output %y: f32[1,10]
}
";

fn save(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let g = parse_graph(text).expect("test graph parses");
    qforge_ir::save(&qforge_ir::Model::new(g), &p, &Default::default()).expect("saved");
    p
}

fn ops(path: &Path, op: &str) -> usize {
    let m = qforge_ir::load(path).expect("output loads");
    m.graph.nodes().filter(|&n| m.graph.node(n).is_op(op)).count()
}

#[test]
fn the_plugin_template_builds_a_qforge_with_its_pass_metric_and_subcommand() {
    let exe = build_template();

    // Its pass and metric are registered next to the built-ins; qforge's
    // own plugin is not (each binary lists its plugins).
    let r = run(&exe, &["passes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for name in ["collapse-idempotent", "top1-agreement", "fold-batchnorm", "sqnr"] {
        assert!(r.stdout.contains(name), "`qforge passes` lacks {name}:\n{}", r.stdout);
    }
    assert!(!r.stdout.contains("yolo-map50"), "{}", r.stdout);
    let r = run(&exe, &["--help"]);
    assert!(r.stdout.contains("idempotent-chains") && !r.stdout.contains("agree"), "{}", r.stdout);

    let dir = common::tempdir();
    let model = save(dir.path(), "chains.onnx", CHAINS);

    // Its subcommand.
    let r = run(&exe, &["idempotent-chains", s(&model)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "relu2 reads relu1\nrelu3 reads relu2\n2 Relu(Relu(x)) chain(s)\n");
    let r = run(&exe, &["idempotent-chains", s(&model), "--op", "Abs"]);
    assert_eq!(r.stdout, "abs2 reads abs1\n1 Abs(Abs(x)) chain(s)\n");
    let r = run(&exe, &["idempotent-chains"]);
    assert_eq!(r.code, 2, "a usage error: {}", r.stderr);

    // Its pass in a pipeline, checked numerically and by ONNX Runtime.
    let pipe = dir.path().join("p.yaml");
    std::fs::write(&pipe, "passes:\n  - collapse-idempotent: {ops: [Relu, Abs]}\n  - eliminate-dead\n").unwrap();
    let out = dir.path().join("out.onnx");
    let report = dir.path().join("report.json");
    let r = run(&exe, &["run", s(&pipe), "-i", s(&model), "-o", s(&out), "--check-numerics", "--report", s(&report)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!((ops(&out, "Relu"), ops(&out, "Abs")), (1, 2), "abs1 stays: the Add reads it");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(j["runs"][0]["pass"], "collapse-idempotent");
    assert_eq!(j["runs"][0]["counters"]["collapsed"], 3, "{j}");
    assert!(j["runs"][0]["max_rel_err"].as_f64().is_some_and(|e| e <= 1e-6), "{j}");
    common::check_valid(&out, Some(&model));

    // Its option check.
    std::fs::write(&pipe, "passes:\n  - collapse-idempotent: {ops: [Sigmoid]}\n").unwrap();
    std::fs::remove_file(&out).unwrap();
    let r = run(&exe, &["run", s(&pipe), "-i", s(&model), "-o", s(&out)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("collapse-idempotent: ops: Sigmoid is not idempotent"), "{}", r.stderr);
    assert!(!out.exists());

    // Its metric ranks layers in skip-sensitive: scores are shares of 4 samples.
    let data = dir.path().join("npy");
    std::fs::create_dir(&data).unwrap();
    for i in 0..6 {
        let x: Vec<f32> = (0..3 * 8 * 8).map(|k| ((k * 7 + i * 13) % 29) as f32 / 29.0).collect();
        qforge_runtime::write_npy(&data.join(format!("{i}.npy")), &[1, 3, 8, 8], &x).unwrap();
    }
    let classifier = save(dir.path(), "classifier.onnx", CLASSIFIER);
    let ss = dir.path().join("ss.json");
    std::fs::write(
        &pipe,
        format!(
            "passes:\n  - calibrate: {{method: max, data: {{npy: {:?}}}}}\n  - insert-qdq: {{exclude_tail: false}}\n  - skip-sensitive: {{top_k: 1, metric: top1-agreement, samples: 4, local_samples: 2, shortlist: 2, report: {:?}}}\n",
            s(&data),
            s(&ss)
        ),
    )
    .unwrap();
    let r = run(&exe, &["run", s(&pipe), "-i", s(&classifier), "-o", s(&out), "--engine", "tract", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&ss).unwrap()).unwrap();
    assert_eq!(j["metric"], "top1-agreement", "{j}");
    for key in ["all_quantized", "final"] {
        let m = j[key]["metric"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&m) && (m * 4.0).fract() == 0.0, "{key}: {m} is not a share of 4 samples: {j}");
    }
    common::check_valid(&out, Some(&classifier));
}

/// The README's "Writing your own pass" shows the template's files as they
/// are, so what it teaches compiles (the test above builds them).
#[test]
fn the_readme_shows_the_template_verbatim() {
    let root = common::root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## Writing your own pass")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a \"Writing your own pass\" section");
    for file in ["Cargo.toml", "src/main.rs", "src/lib.rs", "src/collapse_idempotent.rs", "src/top1.rs"] {
        let text = std::fs::read_to_string(root.join("examples/plugin").join(file)).unwrap();
        assert!(
            section.contains(&text),
            "README.md's \"Writing your own pass\" does not show examples/plugin/{file} as it is; copy it again"
        );
    }
}
