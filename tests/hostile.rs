//! Hostile input: paths that are not regular files, data files that lie
//! about their size, folders that loop, pipelines that fan out. Each must end
//! quickly with exit 1 and one clear line, and leave nothing behind. None of
//! these needs a downloaded asset.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qforge_runtime::{Dataset, Preprocess, Source, write_npy};

fn rich() -> PathBuf {
    common::root().join("tests/fixtures/rich.onnx")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs qforge with a deadline (a hang is a failure, not a stuck test run);
/// returns (exit code, stderr).
fn run_with_deadline(args: &[&str]) -> (i32, String) {
    let mut child =
        common::qforge().args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("qforge starts");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("qforge {args:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn one_error(code: i32, stderr: &str, needle: &str) {
    assert_eq!(code, 1, "exit code; stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(needle), "expected {needle:?} in {:?}", errors[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn mkfifo(p: &Path) -> bool {
    Command::new("mkfifo").arg(p).status().is_ok_and(|s| s.success())
}

#[test]
fn a_fifo_or_a_folder_is_not_a_model() {
    let dir = common::tempdir();
    let out = dir.path().join("out.onnx");
    let fifo = dir.path().join("model.onnx");
    if mkfifo(&fifo) {
        let (code, err) = run_with_deadline(&["run", "fold", "-i", s(&fifo), "-o", s(&out)]);
        one_error(code, &err, "FIFO");
    }
    let (code, err) = run_with_deadline(&["run", "fold", "-i", s(dir.path()), "-o", s(&out)]);
    one_error(code, &err, "folder");
    assert!(!out.exists());
}

#[test]
fn output_must_be_a_regular_file_in_an_existing_folder() {
    let dir = common::tempdir();
    // A folder as -o: refused before any work, no temporary file left.
    let target = dir.path().join("adir");
    std::fs::create_dir(&target).unwrap();
    let (code, err) = run_with_deadline(&["run", "fold", "-i", s(&rich()), "-o", s(&target)]);
    one_error(code, &err, "folder");
    let fifo = dir.path().join("pipe.onnx");
    if mkfifo(&fifo) {
        let (code, err) = run_with_deadline(&["run", "fold", "-i", s(&rich()), "-o", s(&fifo)]);
        one_error(code, &err, "FIFO");
        let meta = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(!meta.is_file(), "the FIFO was replaced by a file");
    }
    // A report in a missing folder: refused before the model is written.
    let out = dir.path().join("out.onnx");
    let report = dir.path().join("nodir/r.json");
    let (code, err) = run_with_deadline(&["run", "fold", "-i", s(&rich()), "-o", s(&out), "--report", s(&report)]);
    one_error(code, &err, "folder does not exist");
    assert!(!out.exists(), "the model was written although the run failed");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "adir" && n != "pipe.onnx")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_npy_header_that_lies_is_refused_before_allocating() {
    let dir = common::tempdir();
    // A valid header claiming 2^40 samples of 3x8x8, and no data.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 3, 8, 8), }";
    let mut h = header.to_string();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    let p = dir.path().join("big.npy");
    std::fs::write(&p, &bytes).unwrap();
    let e = Dataset::open(&Source::Npy(p), &[1, 3, 8, 8], &Preprocess::default()).unwrap_err().to_string();
    assert!(e.contains("declares") && e.contains("bytes"), "{e}");
}

#[test]
fn a_folder_walk_counts_each_file_once_and_survives_loops() {
    let dir = common::tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_npy(&data.join("a.npy"), &[1, 3, 8, 8], &[0.5; 192]).unwrap();
    // A link to the folder itself, a link to the file, a dangling link.
    std::os::unix::fs::symlink(&data, data.join("self")).unwrap();
    std::os::unix::fs::symlink(data.join("a.npy"), data.join("b.npy")).unwrap();
    std::os::unix::fs::symlink(data.join("missing.npy"), data.join("c.npy")).unwrap();
    if mkfifo(&data.join("d.npy")) {
        // A FIFO among the samples must be left out, not read (it would block).
    }
    let ds = Dataset::open(&Source::Npy(data), &[1, 3, 8, 8], &Preprocess::default()).unwrap();
    assert_eq!(ds.len(), 1);
}

#[test]
fn pipeline_includes_are_bounded() {
    let dir = common::tempdir();
    // p0 includes p1 twice, p1 includes p2 twice, ...: 2^12 expansions.
    for i in 0..12 {
        std::fs::write(
            dir.path().join(format!("p{i}.yaml")),
            format!("name: p{i}\ninclude: [p{n}.yaml, p{n}.yaml]\npasses: [topo-sort]\n", n = i + 1),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("p12.yaml"), "name: p12\npasses: [topo-sort]\n").unwrap();
    let out = dir.path().join("out.onnx");
    let (code, err) = run_with_deadline(&["run", s(&dir.path().join("p0.yaml")), "-i", s(&rich()), "-o", s(&out)]);
    one_error(code, &err, "includes expand too far");
    assert!(!out.exists());
}

/// A small model as text IR, saved as ONNX in `dir`.
fn small_model(dir: &Path, name: &str, text: &str) -> PathBuf {
    let g = qforge_ir::parse_graph(text).expect("test graph parses");
    let p = dir.join(name);
    qforge_ir::save(&qforge_ir::Model::new(g), &p, &Default::default()).expect("test model saves");
    p
}

#[test]
fn calibration_data_without_a_finite_value_warns_naming_the_tensor() {
    let dir = common::tempdir();
    let model = small_model(
        dir.path(),
        "m.onnx",
        "graph g {
  opset ai.onnx 13
  input %x: f32[1,3,8,8]
  init @w: f32[4,3,3,3] = rand(1)
  %c = Conv(%x, @w) {kernel_shape=[3,3], pads=[1,1,1,1]} : f32[1,4,8,8]
  %y = Relu(%c) : f32[1,4,8,8]
  output %y
}",
    );
    let calibrate = |values: f32| {
        let data = dir.path().join(format!("d{}.npy", values.to_bits()));
        write_npy(&data, &[1, 3, 8, 8], &[values; 192]).unwrap();
        let out = dir.path().join("o.onnx");
        let args = ["run", "pipelines/calibrate.yaml", "-i", s(&model), "-o", s(&out), "--calib", s(&data)];
        let mut cmd = common::qforge();
        cmd.current_dir(common::root()).args(args).args(["--set", "calibrate.method=max"]);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // All NaN: the input of the Conv saw no finite value; the range is made up and said so.
    let stdout = calibrate(f32::NAN);
    let warning = stdout.lines().find(|l| l.starts_with("warning: calibrate:")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        warning.contains("only NaN/Inf") && warning.contains(": x (") && warning.contains(" NaN, 0 ±Inf)"),
        "{warning}"
    );
    // Finite data gives no such warning (the check is not always on).
    let stdout = calibrate(0.5);
    assert!(!stdout.contains("warning: calibrate:"), "{stdout}");
}

#[test]
fn check_numerics_refuses_a_tensor_too_big_to_make_naming_the_node() {
    let dir = common::tempdir();
    let out = dir.path().join("o.onnx");
    // A Resize whose scale asks for 4e9 rows, and a MaxPool padded by 2^40:
    // both are valid graphs whose outputs no machine can hold.
    let cases = [
        (
            "resize.onnx",
            "graph g {
  opset ai.onnx 13
  input %x: f32[1,3,4,5]
  init @scales: f32[4] = [1.0,1.0,1000000000.0,1.0]
  %y = Resize(%x, _, @scales) {mode=\"nearest\"}  # huge_up
  output %y
}",
            "node \"huge_up\" (Resize)",
        ),
        (
            "maxpool.onnx",
            "graph g {
  opset ai.onnx 13
  input %x: f32[1,3,4,5]
  %y = MaxPool(%x) {kernel_shape=[2,2], pads=[0,0,1099511627776,1099511627776]}  # huge_pool
  output %y
}",
            "node \"huge_pool\" (MaxPool)",
        ),
    ];
    for (file, text, node) in cases {
        let model = small_model(dir.path(), file, text);
        for engine in ["tract", "auto"] {
            let args = ["run", "fold", "-i", s(&model), "-o", s(&out), "--check-numerics", "--check-engine", engine];
            let start = Instant::now();
            let (code, err) = run_with_deadline(&args);
            one_error(code, &err, node);
            assert!(err.contains("one tensor may take"), "{err}");
            assert!(start.elapsed() < Duration::from_secs(30), "{file} took {:?}", start.elapsed());
            assert!(!out.exists());
        }
    }
}
