//! `cargo xtask demo`: the README's main job on every real model, with a before/after summary.
//!
//! The demo is a list of [`Step`]s applied to each model in `assets/models/`; a new step (e.g.
//! INT8 calibration + Q/DQ) is one more entry in [`STEPS`].

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::models::{self, Census};
use crate::{assets, util};

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Only the models whose file name contains TEXT (repeatable).
    #[arg(long = "model", value_name = "TEXT")]
    pub models: Vec<String>,
    /// Do not run `cargo xtask assets` first (use what is in the assets folder).
    #[arg(long)]
    pub skip_assets: bool,
    /// Only the fold step (no INT8 quantization of the detectors).
    #[arg(long)]
    pub no_int8: bool,
}

/// What a step needs to build its command line.
#[allow(dead_code, reason = "for steps with extra arguments, e.g. calibration images from `assets/photos`")]
pub struct StepInput<'a> {
    /// The assets folder (models, photos).
    pub assets: &'a Path,
    /// The original model.
    pub model: &'a Path,
}

/// One qforge run applied to every model.
struct Step {
    /// Short name, used in the summary and in the output file name `<model>.<name>.onnx`.
    name: &'static str,
    /// Pipeline YAML, relative to the workspace root.
    pipeline: &'static str,
    /// Run with `--check-numerics` (adds the model's fixed input shapes).
    check_numerics: bool,
    /// Further qforge arguments (e.g. `--set calibrate.data.images=<photos>`).
    extra_args: fn(&StepInput) -> Vec<OsString>,
}

const STEPS: &[Step] =
    &[Step { name: "fold", pipeline: "pipelines/fold.yaml", check_numerics: true, extra_args: |_| Vec::new() }];

/// Op types whose counts the summary shows, before → after.
const WATCHED_OPS: &[&str] = &["BatchNormalization", "Resize", "ConvTranspose"];

/// The outcome of one step on one model.
struct Row {
    model: String,
    step: &'static str,
    before: Option<Census>,
    after: Option<Census>,
    seconds: f64,
    status: String,
    ok: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let assets = if args.skip_assets { util::assets_dir() } else { assets::run(&assets::Args { check: false })? };
    let root = util::workspace_root();
    let out_dir = util::target_dir().join("demo");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;

    let all = models::list(&assets)?;
    let selected: Vec<PathBuf> = all
        .into_iter()
        .filter(|m| args.models.is_empty() || args.models.iter().any(|t| models::stem(m).contains(t.as_str())))
        .collect();
    if selected.is_empty() {
        bail!("no model in {} matches --model {:?}", assets.join("models").display(), args.models);
    }
    let qforge = util::build_qforge_release()?;

    let mut rows = Vec::new();
    for model in &selected {
        let before = Census::of(&qforge, model);
        if let Err(e) = &before {
            eprintln!("warning: cannot inspect {}: {e:#}", model.display());
        }
        for step in STEPS {
            let out = out_dir.join(format!("{}.{}.onnx", models::stem(model), step.name));
            let mut cmd = Command::new(&qforge);
            cmd.current_dir(&root).arg("run").arg(step.pipeline).arg("-i").arg(model).arg("-o").arg(&out);
            cmd.arg("--report").arg(out.with_extension("report.json"));
            if step.check_numerics {
                cmd.arg("--check-numerics");
                for shape in models::numerics_input_shapes(model) {
                    cmd.args(["--input-shape", shape]);
                }
            }
            cmd.args((step.extra_args)(&StepInput { assets: &assets, model }));
            println!("\n==> [{}] {}", step.name, util::show(&cmd));
            let start = Instant::now();
            let result = util::run_streaming(&mut cmd);
            let seconds = start.elapsed().as_secs_f64();
            let mut row = Row {
                model: models::stem(model),
                step: step.name,
                before: before.as_ref().ok().cloned(),
                after: None,
                seconds,
                status: "ok".into(),
                ok: true,
            };
            match result.and_then(|()| Census::of(&qforge, &out)) {
                Ok(after) => row.after = Some(after),
                Err(e) => {
                    eprintln!("error: {} on {}: {e:#}", step.name, model.display());
                    row.status = "FAILED".into();
                    row.ok = false;
                }
            }
            rows.push(row);
        }
    }

    let (int8, int8_ok) =
        if args.no_int8 { (String::new(), true) } else { crate::demo_int8::run(&selected, &qforge, &out_dir)? };
    let mut table = summary(&rows);
    if !int8.is_empty() {
        table = format!("{table}\nINT8 for TensorRT (`pipelines/yolo-int8.yaml`):\n\n{int8}");
    }
    println!("\n==> summary (outputs in {})\n\n{table}", out_dir.display());
    let summary_path = out_dir.join("summary.md");
    fs::write(&summary_path, &table).with_context(|| format!("cannot write {}", summary_path.display()))?;
    let mut failed: Vec<String> = rows.iter().filter(|r| !r.ok).map(|r| format!("{} ({})", r.model, r.step)).collect();
    if !int8_ok {
        failed.push("yolo-int8 (see the table)".into());
    }
    if !failed.is_empty() {
        bail!("{} of {} runs failed: {}", failed.len(), rows.len(), failed.join(", "));
    }
    println!("all {} runs ok", rows.len());
    Ok(())
}

/// The markdown summary table.
fn summary(rows: &[Row]) -> String {
    let arrow = |f: &dyn Fn(&Census) -> usize, r: &Row| {
        let show = |c: Option<&Census>| c.map_or_else(|| "?".to_string(), |c| f(c).to_string());
        format!("{} → {}", show(r.before.as_ref()), show(r.after.as_ref()))
    };
    let mut header = vec!["model", "step", "nodes"];
    header.extend(WATCHED_OPS);
    header.extend(["time s", "status"]);
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![r.model.clone(), r.step.to_string(), arrow(&|c| c.nodes, r)];
            cells.extend(WATCHED_OPS.iter().map(|op| arrow(&|c| c.op(op), r)));
            cells.extend([format!("{:.2}", r.seconds), r.status.clone()]);
            cells
        })
        .collect();
    util::markdown_table(&header, &table)
}
