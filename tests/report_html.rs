//! `qforge run --report run.html`: the report of a real INT8 pipeline
//! (calibration, Q/DQ, sensitivity analysis, FP16, TensorRT check) on a
//! small detector-shaped model, checked as a person would see it: rendered
//! by headless Chromium, which must run the page's script to the end (it
//! sets `data-rendered="ok"` on `<body>`) without a script error, and show
//! the pass table, the precision map and the histograms. The JSON report of
//! the same run carries the same sections.
//!
//! Chromium is Debian's `chromium` package (`$CHROMIUM` names another
//! binary); without it the rendering test skips loudly, and fails under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::s;

/// A small detector: a stem Conv with SiLU, a residual block, a neck Conv
/// with huge weights (its output overflows FP16; the pipeline excludes it),
/// a head Conv, and a decode tail (Sigmoid, scale) with no weighted op after it.
const MODEL: &str = r#"
graph det {
  opset ai.onnx 13
  input %images: f32[1,3,16,16]
  init @w0: f32[8,3,3,3] = rand(1)
  init @b0: f32[8] = fill(0.1)
  init @w1: f32[8,8,3,3] = rand(2)
  init @wb: f32[8,8,1,1] = fill(1000.0)
  init @w2: f32[6,8,1,1] = rand(3)
  init @k: f32[] = [640.0]
  %c0 = Conv(%images, @w0, @b0) {kernel_shape=[3,3], pads=[1,1,1,1], strides=[2,2]}  # /stem/conv
  %s0 = Sigmoid(%c0)  # /stem/sigmoid
  %a0 = Mul(%c0, %s0)  # /stem/silu
  %c1 = Conv(%a0, @w1) {kernel_shape=[3,3], pads=[1,1,1,1]}  # /block/conv
  %r = Add(%c1, %a0)  # /block/add
  %cb = Conv(%r, @wb) {kernel_shape=[1,1]}  # /neck/big
  %h = Conv(%cb, @w2) {kernel_shape=[1,1]}  # /head/conv
  %p = Sigmoid(%h)  # /head/sigmoid
  %y = Mul(%p, @k)  # /head/scale
  output %y: f32[1,6,8,8]
}
"#;

/// Writes the model, `n` seeded random samples and the pipeline into `dir`.
fn fixture(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let model = dir.join("det.onnx");
    let g = qforge_ir::parse_graph(MODEL).expect("fixture parses");
    qforge_ir::save(&qforge_ir::Model::new(g), &model, &Default::default()).expect("fixture saves");
    let npy = dir.join("npy");
    std::fs::create_dir_all(&npy).unwrap();
    common::random_npy(&npy, n, &[1, 3, 16, 16], 7);
    let pipeline = dir.join("int8.yaml");
    let yaml = format!(
        "name: report-test\npasses:\n  - infer-shapes\n  - calibrate: {{method: entropy, data: {{npy: {:?}}}}}\n  \
         - insert-qdq: {{exclude: {{names: [/neck/big]}}}}\n  \
         - skip-sensitive: {{top_k: 1, metric: sqnr, samples: 4, local_samples: 2, shortlist: 3}}\n  \
         - to-fp16: {{max_fp16: 100}}\n  - tensorrt: {{build: never, strict: false}}\n",
        s(&npy)
    );
    std::fs::write(&pipeline, yaml).unwrap();
    (model, pipeline)
}

/// Runs the fixture's pipeline with `--report report`.
fn run_with_report(dir: &Path, report: &Path) {
    let (model, pipeline) = fixture(dir, 6);
    let out = dir.join("det.int8.onnx");
    let r = common::run(&["run", s(&pipeline), "-i", s(&model), "-o", s(&out), "--report", s(report), "-q"]);
    assert_eq!(r.code, 0, "qforge run failed:\n{}", r.stderr);
    assert!(report.is_file(), "no report at {}", report.display());
}

/// The Chromium binary, or `None` after a loud SKIP line (a failure under CI).
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    common::skip("chromium is not installed (apt-get install chromium): the HTML report is not rendered");
    None
}

/// Headless Chromium on `page` with `extra` arguments (`--dump-dom`,
/// `--screenshot=…`): a fresh profile, nothing fetched, a deadline.
pub fn headless(chromium: &Path, page: &Path, extra: &[&str]) -> String {
    let profile = common::tempdir();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
        ])
        .args(extra)
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    // Read stdout on a thread so a large DOM cannot block the child.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chromium did not finish rendering {} within 120 s", page.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    let dom = reader.join().unwrap().expect("chromium output is text");
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
    assert!(status.success(), "chromium failed ({status}):\n{err}");
    dom
}

#[test]
fn html_report_renders_in_chromium() {
    let Some(chromium) = chromium() else { return };
    let dir = common::tempdir();
    let page = dir.path().join("run.html");
    run_with_report(dir.path(), &page);
    let html = std::fs::read_to_string(&page).unwrap();
    for banned in ["http://", "https://", "<link", "src=\"", "@import", "url("] {
        assert!(!html.contains(banned), "the page must fetch nothing, but it holds `{banned}`");
    }
    let dom = headless(&chromium, &page, &["--dump-dom"]);
    let body = dom.find("<body").map(|i| &dom[i..dom[i..].find('>').map_or(dom.len(), |j| i + j)]).unwrap_or("");
    assert!(!body.contains("data-script-error"), "the page's script failed: {}", script_errors(&dom));
    assert!(body.contains("data-rendered=\"ok\""), "the page's script did not run to the end: {body}");
    assert!(script_errors(&dom).is_empty(), "script errors: {}", script_errors(&dom));

    // Not an empty page: every section with content, as the JSON says.
    let json = dir.path().join("run.json");
    run_with_report(dir.path(), &json);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = j["runs"].as_array().unwrap();
    assert!(dom.matches("<tr").count() > runs.len(), "the pass table has fewer rows than passes");
    for r in runs {
        assert!(
            dom.contains(&format!(">{}<", r["pass"].as_str().unwrap())),
            "pass {} missing from the page",
            r["pass"]
        );
    }
    let precision = j["precision"].as_array().expect("a precision map");
    for row in precision {
        let name = row["node"].as_str().unwrap();
        assert!(dom.contains(&format!("data-name=\"{name}\"")), "layer {name} missing from the precision map");
    }
    let neck = precision.iter().find(|r| r["node"] == "/neck/big").expect("the excluded Conv is listed");
    assert_eq!(neck["precision"], "FP32", "{neck}");
    let kinds: Vec<&str> = neck["reasons"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"excluded") && kinds.contains(&"overflow"), "{neck}");
    let calib = runs.iter().find_map(|r| r["data"].get("calibration")).expect("calibrate published its histograms");
    let tensors = calib["tensors"].as_array().unwrap();
    assert!(!tensors.is_empty());
    for t in tensors {
        let name = t["tensor"].as_str().unwrap();
        assert!(dom.contains(&format!("<figure data-name=\"{name}\"")), "no histogram of {name}");
    }
    // Precision map, ranking, and one histogram per tensor: all drawn.
    assert!(dom.matches("<svg").count() >= 2 + tensors.len(), "SVGs missing");
    assert!(dom.contains("aria-label=\"precision map\"") && dom.contains("aria-label=\"sensitivity ranking\""));

    if let Some(shot) = std::env::var_os("QFORGE_REPORT_SCREENSHOT") {
        headless(&chromium, &page, &[&format!("--screenshot={}", shot.to_string_lossy()), "--window-size=1280,2000"]);
    }
}

/// The text of the page's `#script-errors` element.
fn script_errors(dom: &str) -> String {
    let Some(i) = dom.find("id=\"script-errors\"") else { return "(no #script-errors element)".into() };
    let rest = &dom[i..];
    let start = rest.find('>').map_or(0, |j| j + 1);
    let end = rest.find("</pre>").unwrap_or(rest.len());
    rest[start..end].trim().to_string()
}

/// The JSON report holds what the HTML page draws: the precision map with
/// a reason for each float layer, calibration histograms with every
/// method's threshold, the sensitivity ranking and its greedy steps.
#[test]
fn json_report_carries_the_report_sections() {
    let dir = common::tempdir();
    let json = dir.path().join("run.json");
    run_with_report(dir.path(), &json);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["pipeline"], "report-test");
    let runs = j["runs"].as_array().unwrap();
    let section =
        |name: &str| runs.iter().find_map(|r| r["data"].get(name)).unwrap_or_else(|| panic!("no {name}: {j}"));
    let calib = section("calibration");
    for t in calib["tensors"].as_array().unwrap() {
        let counts = t["counts"].as_array().unwrap();
        assert_eq!(counts.len() as u64, calib["bins"].as_u64().unwrap(), "{t}");
        let total: f64 = counts.iter().map(|c| c.as_f64().unwrap()).sum();
        assert!((total - t["values"].as_f64().unwrap()).abs() <= counts.len() as f64, "counts lost in {t}");
        let th = t["thresholds"].as_object().unwrap();
        assert_eq!(th.len(), 4, "{t}");
        let amax = t["amax"].as_f64().unwrap();
        assert_eq!(th["entropy"].as_f64().unwrap(), amax, "entropy was the chosen method: {t}");
        assert!(th.values().all(|v| v.as_f64().unwrap() <= t["max"].as_f64().unwrap() * 1.001 + 1e-6), "{t}");
    }
    let sens = section("sensitivity");
    let steps = sens["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && !sens["local_ranking"].as_array().unwrap().is_empty(), "{sens}");
    // Each layer skip-sensitive kept float is FP16 in the map, with that reason.
    let precision = j["precision"].as_array().unwrap();
    for st in steps.iter().filter(|s| s["accepted"] == true) {
        let row = precision.iter().find(|r| r["node"] == st["node"]).unwrap_or_else(|| panic!("{st} not in the map"));
        assert_ne!(row["precision"], "INT8", "{row}");
        assert!(row["reasons"].as_array().unwrap().iter().any(|r| r["kind"] == "sensitivity"), "{row}");
    }
    let sensitive = precision
        .iter()
        .filter(|r| r["reasons"].as_array().unwrap().iter().any(|x| x["kind"] == "sensitivity"))
        .count();
    assert_eq!(sensitive, steps.iter().filter(|s| s["accepted"] == true).count());
    // The decode tail is float for that reason; every float layer has a reason.
    let tail = precision.iter().find(|r| r["node"] == "/head/sigmoid").expect("the tail is listed");
    assert_eq!(tail["reasons"][0]["kind"], "tail", "{tail}");
    for row in precision.iter().filter(|r| r["precision"] != "INT8") {
        assert!(!row["reasons"].as_array().unwrap().is_empty(), "float without a reason: {row}");
    }
    assert!(precision.iter().any(|r| r["precision"] == "INT8"), "nothing INT8: {j}");
    // insert-qdq says which range each quantized tensor got.
    assert!(section("ranges").as_object().is_some_and(|m| !m.is_empty()));
}

/// The extension picks the format: anything else is a usage error before
/// any work, and a failed run leaves no report.
#[test]
fn report_extension_is_checked_before_any_work() {
    let dir = common::tempdir();
    let (model, pipeline) = fixture(dir.path(), 2);
    let out = dir.path().join("o.onnx");
    let bad = dir.path().join("run.txt");
    let r = common::run(&["run", s(&pipeline), "-i", s(&model), "-o", s(&out), "--report", s(&bad)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(".json or .html"), "{}", r.stderr);
    assert!(!out.exists() && !bad.exists());
    // A failing pass (no such calibration data): neither model nor report.
    let page = dir.path().join("run.html");
    let r = common::run(&[
        "run",
        s(&pipeline),
        "-i",
        s(&model),
        "-o",
        s(&out),
        "--report",
        s(&page),
        "--set",
        "calibrate.data.npy=/nonexistent/npy",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!out.exists() && !page.exists(), "a failed run wrote something");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains(".tmp")), "temporary files left: {left:?}");
}
