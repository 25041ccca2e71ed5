//! `cargo xtask bench`: side-by-side timings against the reference tools, written to
//! `bench/results.md`.
//!
//! The bench is a list of [`Section`]s sharing one [`Ctx`] (release qforge, python, models,
//! runs); each returns a markdown section. A new measurement (calibration throughput,
//! quantization accuracy vs ONNX Runtime's `quantize_static`) is one more entry in [`SECTIONS`].
//! Targets are reported as PASS/MISS: the bench fails only when a tool cannot run.
//!
//! Sections: `fold` (qforge's fold pipeline vs onnxslim), `calib` (calibration throughput and
//! memory vs ONNX Runtime, [`calib`]), `int8` (INT8 accuracy vs ONNX Runtime's `quantize_static` and ModelOpt,
//! [`int8`]). `--only` runs some of them and keeps the others' text in `bench/results.md`
//! ([`doc`]); `--quick` shrinks each to a smoke run.

mod calib;
pub(crate) mod doc;
pub(crate) mod int8;
pub(crate) mod measure;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::assets;
use crate::models::{self, Census};
use crate::util::{self, Python};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Timed runs per tool and model (the median is reported); one untimed warm-up run comes first.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Restrict onnxslim to constant folding + its Conv/ConvTranspose-BN fusion patterns
    /// (default: `onnxslim.slim(model)` with default arguments).
    #[arg(long)]
    pub slim_fusion_only: bool,
    /// Print the results but do not write `bench/results.md`.
    #[arg(long)]
    pub no_write: bool,
    /// Do not run `cargo xtask assets` first (use what is in the assets folder).
    #[arg(long)]
    pub skip_assets: bool,
    /// Run only these sections (comma-separated: fold, calib, int8); the others are kept from the
    /// existing `bench/results.md`.
    #[arg(long, value_delimiter = ',', value_parser = section_name)]
    pub only: Vec<String>,
    /// Smoke run: one timed fold run; calib with entropy only and ×2 data; int8 with the default
    /// pipeline and ORT MinMax (tail float) only.
    #[arg(long)]
    pub quick: bool,
}

impl Args {
    /// The settings other tasks (the demo) measure with: one run, nothing written.
    pub(crate) fn for_demo() -> Args {
        Args { runs: 1, slim_fusion_only: false, no_write: true, skip_assets: true, only: Vec::new(), quick: true }
    }
}

/// A `--only` value: the name of a section.
fn section_name(s: &str) -> Result<String, String> {
    match SECTIONS.iter().find(|sec| sec.name == s) {
        Some(_) => Ok(s.to_string()),
        None => Err(format!("unknown section (sections: {})", SECTIONS.map(|sec| sec.name).join(", "))),
    }
}

/// Everything the sections share.
pub struct Ctx<'a> {
    args: &'a Args,
    root: PathBuf,
    qforge: PathBuf,
    python: Python,
    models: Vec<PathBuf>,
    /// Scratch folder for outputs, removed at the end.
    scratch: PathBuf,
    /// Versions of the python tools, filled by the sections that use them (for the header).
    tools: Vec<String>,
}

impl<'a> Ctx<'a> {
    /// A context for other tasks (the demo) that reuse the bench's measurements.
    pub(crate) fn new(args: &'a Args, qforge: PathBuf, python: Python, models: Vec<PathBuf>, scratch: PathBuf) -> Self {
        Ctx { args, root: util::workspace_root(), qforge, python, models, scratch, tools: vec![] }
    }
}

/// One part of the results: runs its measurements, returns markdown; `failed` when a tool
/// could not run (the bench then exits non-zero after writing everything).
struct Section {
    /// Short name for `--only`.
    name: &'static str,
    title: &'static str,
    run: fn(&mut Ctx) -> Result<SectionResult>,
}

struct SectionResult {
    markdown: String,
    failed: bool,
}

const SECTIONS: [Section; 3] = [
    Section { name: "fold", title: "Fold pipeline vs onnxslim", run: fold_vs_onnxslim },
    Section { name: "calib", title: "Calibration throughput and memory vs ONNX Runtime", run: calib::calib },
    Section { name: "int8", title: "INT8 accuracy vs ONNX Runtime quantize_static and ModelOpt", run: int8::int8 },
];

/// Every section of `bench/results.md` in order: the bench's, then the
/// ones other tasks write (`cargo xtask fuzz`), so each keeps the others.
pub(crate) fn section_titles() -> Vec<&'static str> {
    SECTIONS.iter().map(|s| s.title).chain([crate::fuzz::TITLE]).collect()
}

pub fn run(args: &Args) -> Result<()> {
    let assets = if args.skip_assets { util::assets_dir() } else { assets::run(&assets::Args { check: false })? };
    let qforge = util::build_qforge_release()?;
    let python = Python::find()?;
    ensure_python_tools(&python)?;
    let scratch = std::env::temp_dir().join(format!("qforge-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let mut ctx = Ctx {
        args,
        root: util::workspace_root(),
        qforge,
        python,
        models: models::list(&assets)?,
        scratch,
        tools: vec![],
    };

    let mut fresh = Vec::new();
    let mut failed = Vec::new();
    for section in SECTIONS.iter().filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.name)) {
        println!("\n==> bench: {} ({})", section.title, section.name);
        let result = (section.run)(&mut ctx).with_context(|| format!("bench section `{}`", section.title))?;
        let markdown = format!("{}{}", doc::stamp(&ctx.root), result.markdown);
        println!("\n{markdown}");
        if result.failed {
            failed.push(section.title);
        }
        fresh.push((section.title, markdown));
    }
    let _ = fs::remove_dir_all(&ctx.scratch);

    let path = ctx.root.join("bench").join("results.md");
    if args.no_write {
        println!("(--no-write: bench/results.md left unchanged)");
    } else {
        let old = fs::read_to_string(&path).unwrap_or_default();
        let text = doc::merge(&ctx.root, &ctx.tools, &old, &section_titles(), &fresh);
        fs::create_dir_all(ctx.root.join("bench")).with_context(|| format!("cannot create {}", path.display()))?;
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("==> wrote {}", path.display());
    }
    if !failed.is_empty() {
        bail!("a tool failed to run in: {}", failed.join(", "));
    }
    Ok(())
}

/// The python modules the sections import.
const PY_MODULES: &[&str] = &["onnxslim", "onnx", "onnxruntime", "numpy", "PIL"];

/// Installs onnxslim, onnx, onnxruntime, numpy and pillow with pip when one of them is missing.
pub(crate) fn ensure_python_tools(py: &Python) -> Result<()> {
    if py.has_modules(PY_MODULES) {
        return Ok(());
    }
    let mut cmd =
        py.pip(["install", "--disable-pip-version-check", "onnxslim", "onnxruntime", "onnx", "numpy", "pillow"]);
    println!("==> python tools are missing: {}", util::show(&cmd));
    util::run_streaming(&mut cmd).context("cannot install the python tools with pip")?;
    if !py.has_modules(PY_MODULES) {
        bail!("`import {}` still fails in `{}` after pip install", PY_MODULES.join(", "), py.exe);
    }
    Ok(())
}

/// Targets of the fold comparison.
const YOLO_MAX_S: f64 = 0.2;
const MIN_SPEEDUP: f64 = 5.0;
/// `--check-numerics` on the YOLOv8s export, whole process.
const CHECK_MAX_S: f64 = 5.0;

/// qforge `run pipelines/fold.yaml` (whole process) vs `onnxslim.slim` (in-process), per model.
fn fold_vs_onnxslim(ctx: &mut Ctx) -> Result<SectionResult> {
    let runs = if ctx.args.quick { 1 } else { ctx.args.runs as usize };
    let script = ctx.root.join("xtask/scripts/slim_time.py");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut failed = false;
    let mut slim_version = None;
    for model in &ctx.models {
        let name = models::stem(model);
        let mb = model.metadata().map_or(0.0, |m| m.len() as f64 / 1e6);
        let out = ctx.scratch.join(format!("{name}.fold.onnx"));

        progress(&format!("    {name}: qforge ×{runs} ..."));
        let ours = time_qforge(ctx, model, &out, runs);
        let ours_census = ours.as_ref().ok().and_then(|_| Census::of(&ctx.qforge, &out).ok());
        let ours_bn = ours_census.as_ref().map(|c| c.op("BatchNormalization"));
        let ours_nodes = ours_census.as_ref().map(|c| c.nodes as u64);
        match &ours {
            Ok(t) => progress(&format!(" {t:.3} s")),
            Err(e) => {
                failed = true;
                notes.push(format!("{name}: qforge failed: {}", short_error(e)));
                progress(" FAILED");
            }
        }
        progress("; with --check-numerics ...");
        let checked = time_qforge_checked(ctx, model, &out);
        match &checked {
            Ok(t) => progress(&format!(" {t:.2} s")),
            // The check needs fixed dims, and the bench does not guess them.
            Err(e) if format!("{e:#}").contains("has dynamic dims") => progress(" n/a (dynamic input)"),
            Err(e) => {
                failed = true;
                notes.push(format!("{name}: qforge --check-numerics failed: {}", short_error(e)));
                progress(" FAILED");
            }
        }
        progress(&format!("; onnxslim ×{runs} ..."));
        let mut cmd = ctx.python.cmd([script.as_os_str(), model.as_os_str()]);
        cmd.arg("--runs").arg(runs.to_string());
        if ctx.args.slim_fusion_only {
            cmd.arg("--fusion-only");
        }
        let theirs = util::run_captured(&mut cmd).and_then(|o| parse_slim_json(&o.stdout));
        match &theirs {
            Ok(j) => {
                progress(&format!(" {:.3} s", j["median_s"].as_f64().unwrap_or(f64::NAN)));
                slim_version = j["onnxslim_version"].as_str().map(|v| {
                    format!(
                        "onnxslim {v}, onnx {}, python {}",
                        j["onnx_version"].as_str().unwrap_or("?"),
                        j["python"].as_str().unwrap_or("?")
                    )
                });
            }
            Err(e) => {
                notes.push(format!("{name}: onnxslim failed: {}", short_error(e)));
                progress(" FAILED");
            }
        }
        println!();

        let ours_s = ours.as_ref().ok().copied();
        let theirs_s = theirs.as_ref().ok().and_then(|j| j["median_s"].as_f64());
        let theirs_bn = theirs.as_ref().ok().and_then(|j| j["bn_after"].as_u64());
        let theirs_nodes = theirs.as_ref().ok().and_then(|j| j["nodes_after"].as_u64());
        let checked_s = checked.as_ref().ok().copied();
        let bn_before = Census::of(&ctx.qforge, model).ok().map(|c| c.op("BatchNormalization") as u64);
        let speedup = ours_s.zip(theirs_s).map(|(a, b)| b / a);
        let mut targets = Vec::new();
        if name.contains("yolov5n") {
            targets.push(verdict(&format!("≤ {YOLO_MAX_S} s"), ours_s.map(|s| s <= YOLO_MAX_S)));
        }
        targets.push(verdict(&format!("≥ {MIN_SPEEDUP}×"), speedup.map(|x| x >= MIN_SPEEDUP)));
        if name.contains("yolov8s-torch-export") {
            targets.push(verdict(&format!("checked ≤ {CHECK_MAX_S} s"), checked_s.map(|s| s <= CHECK_MAX_S)));
        }
        targets.push(verdict("nodes ≤ onnxslim", ours_nodes.zip(theirs_nodes).map(|(a, b)| a <= b)));
        let opt = |v: Option<String>| v.unwrap_or_else(|| "error".into());
        let count = |v: Option<u64>| v.map_or_else(|| "?".into(), |n| n.to_string());
        rows.push(vec![
            name,
            format!("{mb:.1}"),
            opt(ours_s.map(|s| format!("{s:.3}"))),
            opt(theirs_s.map(|s| format!("{s:.3}"))),
            opt(speedup.map(|x| format!("{x:.1}×"))),
            opt(checked_s.map(|s| format!("{s:.2}"))),
            format!("{} / {}", count(ours_nodes), count(theirs_nodes)),
            format!("{} → {} / {}", count(bn_before), count(ours_bn.map(|n| n as u64)), count(theirs_bn)),
            targets.join(", "),
        ]);
    }
    if let Some(v) = slim_version {
        ctx.tools.push(v);
    }

    let header = [
        "model",
        "size MB",
        "qforge median s",
        "onnxslim median s",
        "speed-up ×",
        "qforge --check-numerics s",
        "nodes after qforge / onnxslim",
        "BN before → after qforge / onnxslim",
        "target",
    ];
    let mut md = util::markdown_table(&header, &rows);
    let slim_call = if ctx.args.slim_fusion_only {
        "`onnxslim.slim(model, ...)` restricted to constant folding + FusionConvBN/FusionConvTransposeBN, no shape inference"
    } else {
        "`onnxslim.slim(model)` with default arguments (constant folding, shape inference, all fusions, to a fixed point)"
    };
    let _ = write!(
        md,
        "\nqforge: wall time of the whole process `qforge run pipelines/fold.yaml -i M -o OUT -q` \
         (process start, load, fold pipeline, save). onnxslim: {slim_call} + `onnx.save`, timed in-process \
         (python start, imports and `onnx.load` excluded). Median of {runs} runs after 1 warm-up. \
         `--check-numerics`: one whole qforge process with the check on (tract runs the input model \
         and the folded model on random inputs). \
         Targets: ≤ {YOLO_MAX_S} s for YOLOv5n, ≥ {MIN_SPEEDUP}× faster than onnxslim, no more nodes than \
         onnxslim leaves, `--check-numerics` ≤ {CHECK_MAX_S} s on the YOLOv8s export.\n"
    );
    for note in &notes {
        let _ = write!(md, "\n- {note}");
    }
    if !notes.is_empty() {
        md.push('\n');
    }
    Ok(SectionResult { markdown: md, failed })
}

/// Median wall time of `runs` qforge fold runs (after one warm-up).
fn time_qforge(ctx: &Ctx, model: &Path, out: &Path, runs: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        let mut cmd = Command::new(&ctx.qforge);
        cmd.current_dir(&ctx.root).arg("run").arg("pipelines/fold.yaml").arg("-i").arg(model).arg("-o").arg(out);
        cmd.arg("-q").stdout(Stdio::null());
        let start = Instant::now();
        util::run_captured(&mut cmd)?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(util::median(&times))
}

/// Wall time of one qforge fold run with `--check-numerics`.
fn time_qforge_checked(ctx: &Ctx, model: &Path, out: &Path) -> Result<f64> {
    let mut cmd = Command::new(&ctx.qforge);
    cmd.current_dir(&ctx.root).arg("run").arg("pipelines/fold.yaml").arg("-i").arg(model).arg("-o").arg(out);
    cmd.arg("-q").arg("--check-numerics").stdout(Stdio::null());
    for shape in models::numerics_input_shapes(model) {
        cmd.arg("--input-shape").arg(shape);
    }
    let start = Instant::now();
    util::run_captured(&mut cmd)?;
    Ok(start.elapsed().as_secs_f64())
}

/// The JSON object slim_time.py prints as its last stdout line.
fn parse_slim_json(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).context("slim_time.py printed no JSON")?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("slim_time.py printed invalid JSON: {line}"))?;
    if v["median_s"].as_f64().is_none() {
        bail!("slim_time.py JSON has no median_s: {line}");
    }
    Ok(v)
}

/// `print!` that shows up before a long measurement starts.
fn progress(text: &str) {
    print!("{text}");
    let _ = std::io::stdout().flush();
}

fn verdict(label: &str, pass: Option<bool>) -> String {
    match pass {
        Some(true) => format!("{label} PASS"),
        Some(false) => format!("{label} MISS"),
        None => format!("{label} n/a"),
    }
}

/// Prints the whole error chain to stderr and returns its first line for the table notes.
fn short_error(e: &anyhow::Error) -> String {
    eprintln!("\n{e:#}");
    format!("{e:#}").lines().next().unwrap_or_default().to_string()
}
