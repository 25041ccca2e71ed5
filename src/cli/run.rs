//! `qforge run`: load, run a pipeline, write atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use qforge_ir::ExportOptions;
use qforge_passes::{ManagerOptions, NumericsOptions, PassContext, PassManager, Pipeline, PrintAfter, RunReport};

/// Arguments of `qforge run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline: a YAML file, or the name of a built-in pipeline (fold, calibrate, yolo-int8, yolo-int8-trt8, yolo-int8-tuned; `qforge passes --pipelines`).
    pipeline: String,
    /// Input ONNX model.
    #[arg(short, long)]
    input: PathBuf,
    /// Output ONNX model (written atomically; external data goes to OUTPUT.data).
    #[arg(short, long)]
    output: PathBuf,
    /// Calibration data for the pipeline's passes that read a data set (a
    /// folder of photos, or `.npy` tensors: file or folder); `qforge
    /// passes` says which passes take it and what it sets.
    #[arg(long, value_name = "PATH")]
    calib: Option<PathBuf>,
    /// Override an option: PASS.OPTION=VALUE (VALUE is YAML). Repeatable.
    #[arg(long = "set", value_name = "PASS.OPTION=VALUE")]
    set: Vec<String>,
    /// Run the graph before and after the passes on seeded random inputs;
    /// exact passes must agree to 1e-5 relative. The graph is run once per
    /// stretch of exact passes that changed it; a failing stretch is
    /// replayed pass by pass, so the error names the pass.
    #[arg(long)]
    check_numerics: bool,
    /// With --check-numerics: also check after every pass that changed the
    /// graph (slower; gives each pass its own figure).
    #[arg(long, requires = "check_numerics")]
    check_each_pass: bool,
    /// With --check-numerics: the engine that runs the checks. `auto` is
    /// ONNX Runtime when built in (feature `ort`) and its library loads,
    /// else tract.
    #[arg(long, value_name = "auto|tract|ort", default_value = "auto", requires = "check_numerics")]
    check_engine: String,
    /// Fixed dims for a dynamic input, e.g. images=1,3,640,640. Repeatable.
    /// Used for qforge's own runs (numeric checks, calibration); the
    /// written model keeps its dynamic dims. Without it, a single NCHW
    /// image input takes its size from the model's Ultralytics `imgsz`
    /// metadata when present (qforge says so).
    #[arg(long = "input-shape", value_name = "NAME=D0,D1,...")]
    input_shape: Vec<String>,
    /// Print the text IR after this pass (or `all`) to stderr.
    #[arg(long, value_name = "PASS|all")]
    print_ir_after: Option<String>,
    /// Stop after the N-th pass execution and write that state (for bisecting).
    #[arg(long, value_name = "N")]
    stop_after: Option<usize>,
    /// Skip the IR verifier after each pass.
    #[arg(long)]
    no_verify: bool,
    /// Allow the output to replace the input file.
    #[arg(long)]
    force: bool,
    /// Write the run report (passes, counters, times, numerics, the
    /// precision map and what passes publish: calibration histograms,
    /// sensitivity ranking): FILE.json as JSON, FILE.html as one
    /// self-contained page (no network).
    #[arg(long, value_name = "FILE.json|FILE.html", value_parser = parse_report_path)]
    report: Option<PathBuf>,
    /// Engine that runs the model in passes that execute it (calibration,
    /// sensitivity analysis), unless a pass's own `engine` option says otherwise:
    /// auto (ONNX Runtime when its library is found, else tract; the run
    /// says which), tract (embedded, pure Rust), or ort (ONNX Runtime; the
    /// library comes from ORT_DYLIB_PATH or the onnxruntime Python wheel).
    #[arg(long, value_name = "auto|tract|ort", default_value = "auto", value_parser = super::parse_engine)]
    engine: qforge_runtime::Engine,
    /// Seed of random inputs and sampling.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// No progress output, no statistics table.
    #[arg(short, long)]
    quiet: bool,
}

/// Fixed dims for the dynamic image input of a model whose metadata says
/// what size it was trained at: Ultralytics exports write `imgsz` (`[640,
/// 640]` or `640`) beside dynamic `[batch, 3, height, width]` inputs. Only
/// a single rank-4 input not named by `--input-shape` gets one.
fn metadata_shapes(model: &qforge_ir::Model, explicit: &BTreeMap<String, Vec<usize>>) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    let g = &model.graph;
    let inputs = g.runtime_inputs();
    let [input] = inputs[..] else { return out };
    let name = g.value_name(input);
    let Some(dims) = g.type_info(input).and_then(|t| t.shape) else { return out };
    if explicit.contains_key(name) || dims.rank() != 4 || dims.as_known().is_some() {
        return out;
    }
    let meta = |key: &str| model.metadata().iter().find(|e| e.key() == key).map(|e| e.value().to_string());
    let Some(hw) = meta("imgsz").and_then(|v| parse_imgsz(&v)) else { return out };
    let known = |i: usize| match &dims.0[i] {
        qforge_ir::Dim::Known(k) if *k > 0 => Some(*k as usize),
        _ => None,
    };
    // NCHW with 1 or 3 channels declared; an NHWC or odd input is left to
    // the user.
    let channels = known(1).or_else(|| meta("channels").and_then(|c| c.trim().parse().ok())).unwrap_or(3);
    if !matches!(channels, 1 | 3) || known(3).is_some_and(|w| w <= 4) {
        return out;
    }
    let shape = vec![known(0).unwrap_or(1), channels, known(2).unwrap_or(hw[0]), known(3).unwrap_or(hw[1])];
    out.insert(name.to_string(), shape);
    out
}

/// `[640, 640]`, `(640, 640)` or `640` (square).
fn parse_imgsz(v: &str) -> Option<[usize; 2]> {
    let nums: Vec<usize> = v
        .trim_matches(|c: char| c == '[' || c == ']' || c == '(' || c == ')' || c.is_whitespace())
        .split(',')
        .map(|d| d.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()?;
    match nums[..] {
        [s] => Some([s, s]),
        [h, w] => Some([h, w]),
        _ => None,
    }
}

/// Parses `name=1,3,640,640`.
pub(crate) fn parse_input_shapes(items: &[String]) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut out = BTreeMap::new();
    for s in items {
        let (name, dims) = s
            .split_once('=')
            .with_context(|| format!("--input-shape {s}: expected NAME=D0,D1,... (e.g. images=1,3,640,640)"))?;
        let dims: Result<Vec<usize>, _> = dims.split(',').map(|d| d.trim().parse::<usize>()).collect();
        let dims = dims.with_context(|| format!("--input-shape {s}: dims must be positive integers"))?;
        if dims.is_empty() || dims.contains(&0) {
            bail!("--input-shape {s}: dims must be positive integers");
        }
        out.insert(name.to_string(), dims);
    }
    Ok(out)
}

/// The formats of `--report`, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportFormat {
    Json,
    Html,
}

fn report_format(path: &Path) -> Option<ReportFormat> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "json" => Some(ReportFormat::Json),
        "html" | "htm" => Some(ReportFormat::Html),
        _ => None,
    }
}

/// `--report FILE`: the extension picks the format, so an unknown one is a
/// usage error before any work.
fn parse_report_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    match report_format(&p) {
        Some(_) => Ok(p),
        None => Err(format!("{s}: the extension picks the report format: .json or .html")),
    }
}

/// Loads a pipeline file, or a built-in pipeline by name.
pub(crate) fn load_pipeline(spec: &str) -> Result<Pipeline> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(Pipeline::load(path)?);
    }
    if crate::BUILTIN_PIPELINES.iter().any(|(n, _)| *n == spec) {
        return Ok(Pipeline::load_builtin(spec, crate::BUILTIN_PIPELINES)?);
    }
    let names: Vec<&str> = crate::BUILTIN_PIPELINES.iter().map(|p| p.0).collect();
    bail!("pipeline {spec}: no such file, and not a built-in pipeline ({})", names.join(", "))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Runs the command.
pub fn run(a: RunArgs) -> Result<()> {
    let mut pipeline = load_pipeline(&a.pipeline)?;
    if let Some(c) = &a.calib {
        // Each pass that reads data says which of its options PATH sets.
        let mut takers = 0;
        for name in pipeline.pass_names() {
            if let Some(overrides) = qforge_passes::find_pass(&name).and_then(|p| p.calib) {
                for o in overrides(c) {
                    pipeline.set(&format!("{name}.{o}")).context("--calib")?;
                }
                takers += 1;
            }
        }
        if takers == 0 {
            bail!(
                "--calib: no pass of pipeline `{}` reads a data set (`qforge passes` marks the ones that take --calib)",
                pipeline.name
            );
        }
    }
    for s in &a.set {
        pipeline.set(s)?;
    }
    let input_shapes = parse_input_shapes(&a.input_shape)?;
    let check_engine = match a.check_engine.as_str() {
        "auto" => None,
        e => Some(super::parse_engine(e).map_err(anyhow::Error::msg).context("--check-engine")?),
    };
    let opts = ManagerOptions {
        verify: !a.no_verify,
        print_ir_after: a
            .print_ir_after
            .as_deref()
            .map(|p| if p == "all" { PrintAfter::All } else { PrintAfter::Pass(p.to_string()) }),
        stop_after: a.stop_after,
        check_numerics: a.check_numerics.then(|| NumericsOptions {
            seed: a.seed,
            input_shapes: input_shapes.clone(),
            engine: check_engine,
            each_pass: a.check_each_pass,
            ..Default::default()
        }),
    };
    if let Some(PrintAfter::Pass(p)) = &opts.print_ir_after
        && qforge_passes::find_pass(p).is_none()
    {
        bail!("--print-ir-after {p}: no such pass (use a pass name or `all`)");
    }
    let mut manager = PassManager::new(&pipeline, opts)?;
    if same_file(&a.input, &a.output) && !a.force {
        bail!("output {} is the input file; pass --force to overwrite it", a.output.display());
    }
    // Every path is checked before any work, so a bad one costs nothing and
    // nothing is written after a failure.
    qforge_ir::regular_file(&a.input).context("-i")?;
    qforge_ir::writable_file(&a.output).context("-o")?;
    if let Some(r) = &a.report {
        qforge_ir::writable_file(r).context("--report")?;
    }
    // A pipeline that runs the model (on samples, or to check numerics)
    // gets its engine ready while the model loads.
    if pipeline.pass_names().iter().any(|n| qforge_passes::find_pass(n).is_some_and(|p| p.calib.is_some())) {
        qforge_runtime::warm_up(a.engine);
    }
    if a.check_numerics {
        qforge_runtime::warm_up(check_engine.unwrap_or_default());
    }
    let mut model = qforge_ir::load(&a.input).with_context(|| format!("loading {}", a.input.display()))?;
    // Invalid entries the import dropped: the output differs there, so say so.
    let repairs = model.repairs();
    for r in repairs.iter().take(5) {
        eprintln!("warning: {}: {r}", a.input.display());
    }
    if repairs.len() > 5 {
        eprintln!("warning: {}: ... and {} more such value_info entries dropped", a.input.display(), repairs.len() - 5);
    }
    // Check the input before any pass runs, so a broken model is reported as
    // such and not as a failure of the first pass. Node order is exempt:
    // `topo-sort` repairs it.
    let problems: Vec<String> = qforge_ir::verify::check(&model.graph)
        .into_iter()
        .filter(|v| v.rule != "order")
        .map(|v| v.to_string())
        .collect();
    if !problems.is_empty() {
        bail!("{}: the input model is invalid: {}", a.input.display(), problems.join("; "));
    }
    let metadata_shapes = metadata_shapes(&model, &input_shapes);
    for (name, dims) in &metadata_shapes {
        if !a.quiet {
            eprintln!(
                "note: input \"{name}\" has dynamic dims; runs of the model use {} from the model's metadata \
                 (imgsz), unless --input-shape or a pass option (calibrate.data.size) says otherwise; the output keeps the dynamic dims",
                dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
            );
        }
    }
    manager.default_numerics_shapes(&metadata_shapes);
    let mut cx = PassContext {
        model_dir: model.dir.clone(),
        output_path: Some(a.output.clone()),
        metadata_shapes,
        input_shapes,
        quiet: a.quiet,
        seed: a.seed,
        engine: a.engine,
        report_detail: a.report.is_some(),
        ..Default::default()
    };
    if !a.quiet {
        eprintln!(
            "qforge: {} ({} nodes) with pipeline `{}` ({} steps)",
            a.input.display(),
            model.graph.node_count(),
            pipeline.name,
            pipeline.steps.len()
        );
    }
    let report = manager.run(&mut model.graph, &mut cx)?;
    qforge_ir::save(&model, &a.output, &ExportOptions::default())
        .with_context(|| format!("writing {}", a.output.display()))?;
    if let Some(path) = &a.report {
        write_report(path, &report, &a, &pipeline, model.repairs())?;
    }
    // Work passes left for the written file (e.g. a backend's engine build).
    for hook in std::mem::take(&mut cx.after_save) {
        hook.run(&a.output)?;
    }
    if !a.quiet {
        println!("{report}");
        println!("wrote {} ({} nodes)", a.output.display(), model.graph.node_count());
    }
    Ok(())
}

/// The run report as JSON: the one document both formats are made from, so
/// the HTML page shows exactly what the JSON holds.
fn report_json(r: &RunReport, a: &RunArgs, pipeline: &Pipeline, repairs: &[String]) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = r
        .runs
        .iter()
        .map(|p| {
            serde_json::json!({
                "index": p.index,
                "pass": p.name,
                "iteration": p.iteration,
                "seconds": p.time.as_secs_f64(),
                "verify_seconds": p.verify_time.as_secs_f64(),
                "nodes_before": p.nodes_before,
                "nodes_after": p.nodes_after,
                "changed": p.changed,
                "counters": p.report.counters.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                "notes": p.report.notes,
                "data": p.report.data,
                "max_rel_err": p.numerics.as_ref().map(|n| n.1),
                "checked_at": p.checked_at,
            })
        })
        .collect();
    let numerics = r.numerics.as_ref().map(|n| {
        serde_json::json!({
            "engine": n.engine,
            "engine_note": n.engine_note,
            "reference_seconds": n.reference_time.as_secs_f64(),
            "checks": n.checks.iter().map(|c| serde_json::json!({
                "first": c.first,
                "last": c.last,
                "output": c.output,
                "max_rel_err": c.rel_err,
                "exact": c.exact,
                "seconds": c.time.as_secs_f64(),
            })).collect::<Vec<_>>(),
        })
    });
    serde_json::json!({
        "qforge": env!("CARGO_PKG_VERSION"),
        "pipeline": pipeline.name,
        "input": a.input,
        "output": a.output,
        "runs": runs,
        "warnings": r.warnings,
        "input_repairs": repairs,
        "stopped_early": r.stopped_early,
        "seconds": r.total.as_secs_f64(),
        "verify_seconds": r.verify_time().as_secs_f64(),
        "numerics": numerics,
        "end_to_end_max_rel_err": r.end_to_end.as_ref().map(|e| e.1),
        "precision": r.precision,
    })
}

/// Writes the report atomically (temporary file + rename) in the format
/// its extension names.
fn write_report(path: &Path, r: &RunReport, a: &RunArgs, pipeline: &Pipeline, repairs: &[String]) -> Result<()> {
    let doc = report_json(r, a, pipeline, repairs);
    let text = match report_format(path) {
        Some(ReportFormat::Html) => super::report_html::render(&doc),
        _ => serde_json::to_string_pretty(&doc)?,
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}", path.display())
    })?;
    Ok(())
}
