//! Section `int8`: INT8 accuracy of qforge's pipelines vs ONNX Runtime's `quantize_static`,
//! as detection agreement with the FP32 model (`qforge agree`), plus the output SQNR of the
//! yolo-int8 pipeline on the other detectors (ONNX Runtime, `sqnr.py`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use super::measure::{self, Measured, OrtQuant, num};
use super::{Ctx, SectionResult, verdict};
use crate::util;

const MODEL: &str = "nudenet-320n.onnx";
const INPUT_SHAPE: &str = "images=1,3,320,320";
const SIZE: usize = 320;
const MIN_MAP50: f64 = 0.90;
/// The strongly typed (FP16 rest) output may differ from the FP32-rest one by at most this mAP50.
const MAX_FP16_REST_GAP: f64 = 0.01;
const TRT8_LABEL: &str = "qforge TensorRT 8.6 form (yolo-int8-trt8: float rest FP32)";
/// skip-sensitive targets (issue: seconds, not minutes).
const MAX_SKIP_S_NUDENET: f64 = 5.0;
const MAX_SKIP_S_YOLOV8S: f64 = 30.0;
/// Two SQNRs of one model (tract in `qforge agree`, ONNX Runtime in `sqnr.py`) further apart
/// than this mean one runtime executes it differently: its agreement numbers are not comparable.
const MAX_RUNTIME_GAP_DB: f64 = 3.0;

enum How {
    /// `qforge run PIPELINE` with extra arguments.
    Qforge(PathBuf, Vec<String>),
    /// `ort_quant.py --method M`, with the tail excluded or not.
    Ort(&'static str, bool),
}

struct Outcome {
    label: String,
    default: bool,
    ort: bool,
    run: Result<Measured>,
    /// Seconds of the `skip-sensitive` pass, from qforge's run report.
    skip_s: Option<f64>,
    agree: Option<Result<Value>>,
    /// `qforge agree --engine ort`: qforge's preprocessing and scoring, ONNX Runtime running both models.
    agree_ort: Option<Result<Value>>,
    /// `sqnr.py --detections`: the same scores with ONNX Runtime running both models.
    ort_eval: Option<Result<Value>>,
}

pub(super) fn int8(ctx: &mut Ctx) -> Result<SectionResult> {
    let model = measure::model(ctx, MODEL)?;
    let tail = tail_file(ctx, &model)?;
    let tail_len = fs::read_to_string(&tail).map_or(0, |t| t.lines().filter(|l| !l.trim().is_empty()).count());
    let mut notes = vec![format!(
        "Model {MODEL}, FP32 = the original file; calibration and agreement on every photo of assets/photos in 4 \
         views at {SIZE}×{SIZE} (qforge: `--calib assets/photos --input-shape {INPUT_SHAPE}`). Three measurements of \
         the same candidate, same definitions (mAP50, recall and precision against the FP32 detections; output \
         SQNR): `qforge agree FP32 CAND --images assets/photos --size {SIZE} --json` with tract running both models; \
         the same with `--engine ort` (ONNX Runtime runs both models, qforge's decoding and letterbox); \
         `xtask/scripts/sqnr.py --detections` (ONNX Runtime, photos decoded and resized by PIL). With {SIZE}×{SIZE} \
         inputs and a nudity detector on general photos the FP32 model finds few boxes (see fp32_dets in the JSON, \
         ~30), so one box more or less moves mAP50 by a few hundredths: read differences between the three \
         measurements of one row as that noise. time s and peak RSS MB: the whole quantizing process \
         (`/usr/bin/time`). The tail list ({tail_len} nodes) is `qforge inspect {MODEL} --tail` on the original model."
    )];

    let mut cands: Vec<(String, How)> = Vec::new();
    let shape = || vec!["--input-shape".to_string(), INPUT_SHAPE.to_string()];
    cands.push((
        "qforge yolo-int8 --engine tract (max, skip-sensitive top 3 by yolo-map50)".into(),
        How::Qforge(
            ctx.root.join("pipelines/yolo-int8.yaml"),
            [shape(), vec!["--engine".into(), "tract".into()]].concat(),
        ),
    ));
    cands.push((
        "qforge yolo-int8 --engine ort (calibrate and skip-sensitive run by ONNX Runtime)".into(),
        How::Qforge(
            ctx.root.join("pipelines/yolo-int8.yaml"),
            [shape(), vec!["--engine".into(), "ort".into()]].concat(),
        ),
    ));
    // The TensorRT 8.6 form of the same pipeline (float rest in FP32): the
    // strongly typed default must agree with FP32 as well as it does.
    cands.push((
        format!("{TRT8_LABEL} --engine tract"),
        How::Qforge(
            ctx.root.join("pipelines/yolo-int8-trt8.yaml"),
            [shape(), vec!["--engine".into(), "tract".into()]].concat(),
        ),
    ));
    if !ctx.args.quick {
        let fold = ctx.root.join("pipelines/fold.yaml");
        // The default pipeline without each of issue 15's techniques and
        // without both: MSE weight ranges (`insert-qdq.weights_method`) and
        // bias correction after the sensitive-layer search.
        let ablations =
            [("max weights", "table", true), ("no correct-bias", "mse", false), ("neither", "table", false)];
        for (tag, weights, bias) in ablations {
            let yaml = format!(
                "name: bench-int8-{}\ninclude: [\"{}\"]\npasses:\n  \
                 - calibrate: {{method: max, data: {{views: true}}}}\n  \
                 - insert-qdq: {{exclude_tail: true, weights_method: {weights}}}\n  \
                 - skip-sensitive: {{top_k: 3, metric: yolo-map50, samples: 16}}\n{}  - to-fp16: {{}}\n  \
                 - tensorrt: {{build: never}}\n",
                tag.replace(' ', "-"),
                fold.display(),
                if bias { "  - correct-bias: {samples: 8, rounds: 1}\n" } else { "" }
            );
            let pipe = measure::pipeline(ctx, &format!("int8-{}", tag.replace(' ', "-")), &yaml)?;
            cands.push((
                format!("qforge yolo-int8, {tag} --engine tract"),
                How::Qforge(pipe, [shape(), vec!["--engine".into(), "tract".into()]].concat()),
            ));
        }
        for m in ["max", "entropy", "percentile", "mse"] {
            let yaml = format!(
                "name: bench-int8-{m}\ninclude: [\"{}\"]\npasses:\n  \
                 - calibrate: {{method: {m}, data: {{views: true}}}}\n  - insert-qdq: {{}}\n  \
                 - tensorrt: {{build: never}}\n",
                fold.display()
            );
            let pipe = measure::pipeline(ctx, &format!("int8-{m}"), &yaml)?;
            cands.push((format!("qforge {m}, no skip-sensitive"), How::Qforge(pipe, shape())));
        }
    }
    let ort_methods: &[&str] = if ctx.args.quick { &["minmax"] } else { &["minmax", "entropy", "percentile"] };
    for &m in ort_methods {
        let name = match m {
            "minmax" => "MinMax",
            "entropy" => "Entropy",
            _ => "Percentile",
        };
        for exclude in [false, true] {
            if ctx.args.quick && !exclude {
                continue;
            }
            let label = format!("ORT {name}{}", if exclude { ", tail float" } else { "" });
            cands.push((label, How::Ort(m, exclude)));
        }
    }

    let mut outcomes = Vec::new();
    let mut ort_version = None;
    for (i, (label, how)) in cands.into_iter().enumerate() {
        println!("    [{}] {label}", i + 1);
        let out = ctx.scratch.join(format!("int8-{i}.onnx"));
        let mut skip_s = None;
        let run = match &how {
            How::Qforge(pipe, extra) => {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                measure::qforge_run(ctx, pipe, &model, &out, &extra).map(|(m, report)| {
                    skip_s = measure::report_seconds(&report, "skip-sensitive");
                    m
                })
            }
            How::Ort(method, exclude) => {
                let o = OrtQuant { method, exclude_file: exclude.then_some(tail.as_path()), repeat: 1, size: SIZE };
                measure::ort_quant(ctx, &model, &out, &o).map(|(m, j)| {
                    ort_version = j["onnxruntime_version"].as_str().map(String::from);
                    if *exclude {
                        notes.push(format!(
                            "{label}: {} of the {} tail names are still nodes after ORT's `quant_pre_process` and \
                             were passed as `nodes_to_exclude` (the others are shape computations it folds away)",
                            j["excluded"], j["exclude_requested"]
                        ));
                    }
                    m
                })
            }
        };
        let (agree, agree_ort, ort_eval) = match run {
            Ok(_) => (
                Some(measure::agree(ctx, &model, &out, SIZE, "tract")),
                Some(measure::agree(ctx, &model, &out, SIZE, "ort")),
                Some(measure::ort_eval(ctx, &model, &out, &["--size", "320,320", "--detections"])),
            ),
            Err(_) => (None, None, None),
        };
        // The row the targets apply to: the pipeline on the embedded engine.
        let default = matches!(&how, How::Qforge(p, extra) if p.ends_with("yolo-int8.yaml")
            && extra.windows(2).any(|w| w[0] == "--engine" && w[1] == "tract"));
        outcomes.push(Outcome {
            label,
            default,
            ort: matches!(how, How::Ort(..)),
            run,
            skip_s,
            agree,
            agree_ort,
            ort_eval,
        });
    }
    if let Some(v) = ort_version {
        ctx.tools.push(format!("onnxruntime {v} (quantize_static, xtask/scripts/ort_quant.py)"));
    }

    let mut failed = false;
    let mut md = nudenet_table(&outcomes, &mut notes, &mut failed);
    if !ctx.args.quick {
        md += &other_models(ctx, &mut failed)?;
    }
    Ok(SectionResult { markdown: md, failed })
}

/// `qforge inspect MODEL --tail` into a file (node names, one per line).
pub(crate) fn tail_file(ctx: &Ctx, model: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new(&ctx.qforge);
    cmd.arg("inspect").arg(model).arg("--tail");
    let out = util::run_captured(&mut cmd)?;
    let path = ctx.scratch.join("tail.txt");
    fs::write(&path, &out.stdout).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The nudenet table, its targets and notes.
fn nudenet_table(outcomes: &[Outcome], notes: &mut Vec<String>, failed: &mut bool) -> String {
    let dash = || "—".to_string();
    let mut rows = Vec::new();
    for o in outcomes {
        let mut row = vec![o.label.clone()];
        let Ok(m) = &o.run else {
            *failed = true;
            let e = o.run.as_ref().err().map(ToString::to_string).unwrap_or_default();
            row.push(format!("FAILED: {e}"));
            row.extend(std::iter::repeat_with(dash).take(8));
            rows.push(row);
            continue;
        };
        let mark = if consistent(o) == Some(false) { " †" } else { "" };
        for (scores, mark) in [(&o.agree, mark), (&o.agree_ort, ""), (&o.ort_eval, "")] {
            row.extend(score_cells(scores, mark, failed));
        }
        row.extend([format!("{:.2}", m.seconds), num(o.skip_s, 2), format!("{:.0}", m.peak_mb)]);
        rows.push(row);
    }
    let header = [
        "candidate",
        "qforge agree (tract): mAP50 / recall / precision",
        "SQNR dB",
        "qforge agree --engine ort: mAP50 / recall / precision",
        "SQNR dB",
        "sqnr.py (ONNX Runtime, PIL): mAP50 / recall / precision",
        "SQNR dB",
        "time s",
        "of which skip-sensitive s",
        "peak RSS MB",
    ];
    let mut md = util::markdown_table(&header, &rows);

    let tract = |o: &Outcome| o.agree.as_ref()?.as_ref().ok()?["map50"].as_f64();
    let agree_ort = |o: &Outcome| o.agree_ort.as_ref()?.as_ref().ok()?["map50"].as_f64();
    let ort = |o: &Outcome| o.ort_eval.as_ref()?.as_ref().ok()?["map50"].as_f64();
    let _ = writeln!(
        md,
        "\nTargets, by each of the three measurements (`qforge agree` with tract is the one specified):\n"
    );
    let measures: [Measure; 3] = [
        ("qforge agree (tract)", &tract, true),
        ("qforge agree --engine ort", &agree_ort, false),
        ("sqnr.py (ONNX Runtime, PIL preprocessing)", &ort, false),
    ];
    for (runtime, map50, only_consistent) in measures {
        let ours = outcomes.iter().find(|o| o.default).and_then(map50);
        let best_ort = outcomes
            .iter()
            .filter(|o| o.ort && (!only_consistent || consistent(o) == Some(true)))
            .filter_map(|o| map50(o).map(|m| (m, o.label.as_str())))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let vs = best_ort.map_or_else(|| "no comparable ORT row".into(), |(m, l)| format!("{l}: {m:.3}"));
        let _ = writeln!(
            md,
            "- {runtime}: qforge default (yolo-int8) mAP50 {}: {}; ≥ the best ORT configuration ({vs}): {}",
            num(ours, 3),
            verdict(&format!("≥ {MIN_MAP50:.2}"), ours.map(|m| m >= MIN_MAP50)),
            verdict("≥ best ORT", ours.zip(best_ort).map(|(a, (b, _))| a >= b))
        );
    }
    // FP16 rest (the default, TensorRT 10/11) against FP32 rest (8.6), both on tract.
    let trt8 = outcomes.iter().find(|o| o.label.starts_with(TRT8_LABEL));
    if let (Some(ours), Some(trt8)) = (outcomes.iter().find(|o| o.default), trt8) {
        for (runtime, map50, _) in measures {
            let gap = map50(ours).zip(map50(trt8)).map(|(a, b)| a - b);
            let _ = writeln!(
                md,
                "- {runtime}: FP16 rest (yolo-int8) − FP32 rest (yolo-int8-trt8) mAP50 = {}: {}",
                num(gap, 3),
                verdict(&format!("within ±{MAX_FP16_REST_GAP}"), gap.map(|g| g.abs() <= MAX_FP16_REST_GAP))
            );
        }
    }
    // Both engines' figures: tract is the embedded one, ONNX Runtime what
    // the default engine (auto) uses wherever its library is found.
    for o in outcomes.iter().filter(|o| o.label.starts_with("qforge yolo-int8 --engine")) {
        let engine = if o.label.contains("--engine ort") { "ONNX Runtime" } else { "tract" };
        let _ = writeln!(
            md,
            "- skip-sensitive on {MODEL} (16 samples, {engine}): {} s: {}",
            num(o.skip_s, 1),
            verdict(&format!("≤ {MAX_SKIP_S_NUDENET} s"), o.skip_s.map(|s| s <= MAX_SKIP_S_NUDENET))
        );
    }
    if outcomes.iter().any(|o| consistent(o) == Some(false)) {
        notes.push(format!(
            "† tract (`qforge agree`) and ONNX Runtime disagree on this model: output SQNR more than \
             {MAX_RUNTIME_GAP_DB} dB apart, so tract does not execute it as ONNX Runtime does and its \
             mAP50/recall/precision measure tract, not the quantization; such ORT rows are left out of the \
             `qforge agree` (tract) target (the ONNX Runtime targets use every row)"
        ));
    }
    for n in notes.iter() {
        let _ = write!(md, "\n- {n}");
    }
    md.push('\n');
    md
}

/// A measurement: its name, the mAP50 it gave a row, and whether rows tract misexecutes are left out.
type Measure<'a> = (&'a str, &'a dyn Fn(&Outcome) -> Option<f64>, bool);

/// The two cells of one measurement: `mAP50 / recall / precision` and SQNR (`mark` appended).
fn score_cells(scores: &Option<Result<Value>>, mark: &str, failed: &mut bool) -> [String; 2] {
    match scores {
        Some(Ok(j)) => [
            format!(
                "{} / {} / {}",
                num(j["map50"].as_f64(), 3),
                num(j["recall"].as_f64(), 3),
                num(j["precision"].as_f64(), 3)
            ),
            format!("{}{mark}", num(j["sqnr_db"].as_f64(), 2)),
        ],
        Some(Err(e)) => {
            *failed = true;
            [format!("FAILED: {e}"), "—".into()]
        }
        None => ["—".into(), "—".into()],
    }
}

/// Whether `qforge agree`'s SQNR (tract) and ONNX Runtime's agree within [`MAX_RUNTIME_GAP_DB`].
fn consistent(o: &Outcome) -> Option<bool> {
    let tract = o.agree.as_ref()?.as_ref().ok()?["sqnr_db"].as_f64()?;
    let ort = o.ort_eval.as_ref()?.as_ref().ok()?["sqnr_db"].as_f64()?;
    Some((tract - ort).abs() <= MAX_RUNTIME_GAP_DB)
}

/// What `--engine auto` runs on this machine, in words.
fn qforge_engine_auto() -> &'static str {
    if std::process::Command::new("python3")
        .args(["-c", "import onnxruntime"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "auto = ONNX Runtime here"
    } else {
        "auto = tract here"
    }
}

/// One run of [`other_models`].
struct Case {
    file: &'static str,
    /// The TensorRT 8.6 form (`yolo-int8-trt8`, float rest FP32) instead of the default (FP16 rest).
    trt8: bool,
    /// qforge's arguments.
    extra: Vec<&'static str>,
    /// `sqnr.py`'s arguments.
    sqnr_args: Vec<&'static str>,
    inputs: &'static str,
}

/// yolo-int8 on the untrained YOLOv5n and on PicoDet: output SQNR vs FP32 with ONNX Runtime.
fn other_models(ctx: &Ctx, failed: &mut bool) -> Result<String> {
    let default_pipe = ctx.root.join("pipelines/yolo-int8.yaml");
    let trt8_pipe = ctx.root.join("pipelines/yolo-int8-trt8.yaml");
    // The default engine (auto: ONNX Runtime where its library is found).
    let samples = ["--set", "skip-sensitive.samples=8", "--engine", "auto"];
    let full = ["--set", "skip-sensitive.samples=16", "--engine", "auto"];
    // The skip-sensitive target is set for the embedded engine: measured with it too.
    let full_tract = ["--set", "skip-sensitive.samples=16", "--engine", "tract"];
    let v8 = "640×640 letterbox (as qforge calibrates); the raw torch export, random weights";
    let case = |file, trt8, extra: Vec<&'static str>, sqnr_args, inputs| Case { file, trt8, extra, sqnr_args, inputs };
    let cases = [
        case("yolov8s-torch-export-random.onnx", false, full.to_vec(), vec![], v8),
        case("yolov8s-torch-export-random.onnx", false, full_tract.to_vec(), vec![], v8),
        case("yolov8s-torch-export-random.onnx", true, full.to_vec(), vec![], v8),
        case(
            "yolov5n-untrained-unfused-bn.onnx",
            false,
            samples.to_vec(),
            vec![],
            "640×640 letterbox (as qforge calibrates)",
        ),
        case(
            "picodet-layout-cdla.onnx",
            false,
            [&samples[..], &["--set", "calibrate.data.letterbox=false"]].concat(),
            vec!["--resize"],
            "plain resize to 608×800 (W×H), /255; calibrated the same way (`calibrate.data.letterbox=false`)",
        ),
    ];
    let mut rows = Vec::new();
    let mut skip_line = String::new();
    // Output SQNR of the YOLOv8s export: (FP16 rest, FP32 rest), engine auto.
    let mut forms: (Option<f64>, Option<f64>) = (None, None);
    for Case { file, trt8, extra, sqnr_args, inputs } in cases {
        let pipe = if trt8 { &trt8_pipe } else { &default_pipe };
        let model = match measure::model(ctx, file) {
            Ok(m) => m,
            Err(e) => {
                rows.push(vec![
                    file.into(),
                    "—".into(),
                    format!("SKIPPED: {e}"),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    inputs.into(),
                ]);
                continue;
            }
        };
        println!("    yolo-int8 on {file}");
        let out = ctx.scratch.join(format!("{}.int8.onnx", crate::models::stem(&model)));
        let settings = format!("{} `{}`", if trt8 { "yolo-int8-trt8" } else { "yolo-int8" }, extra.join(" "));
        let cells = match measure::qforge_run(ctx, pipe, &model, &out, &extra) {
            Ok((m, report)) => {
                let skip = measure::report_seconds(&report, "skip-sensitive");
                if file.starts_with("yolov8s") && !trt8 {
                    let engine = if extra.contains(&"tract") { "tract" } else { qforge_engine_auto() };
                    skip_line += &format!(
                        "- skip-sensitive on {file} (16 samples, engine {engine}): {} s: {}\n",
                        num(skip, 1),
                        verdict(&format!("≤ {MAX_SKIP_S_YOLOV8S} s"), skip.map(|s| s <= MAX_SKIP_S_YOLOV8S))
                    );
                }
                let db = measure::ort_eval(ctx, &model, &out, &sqnr_args);
                *failed |= db.is_err();
                if let (true, Ok(j)) = (file.starts_with("yolov8s") && extra.contains(&"auto"), &db) {
                    *(if trt8 { &mut forms.1 } else { &mut forms.0 }) = j["sqnr_db"].as_f64();
                }
                let (db, base) = match db {
                    Ok(j) => (num(j["sqnr_db"].as_f64(), 2), num(j["baseline_db"].as_f64(), 2)),
                    Err(e) => (format!("sqnr FAILED: {e}"), "—".into()),
                };
                [db, base, format!("{:.2}", m.seconds), num(skip, 2), format!("{:.0}", m.peak_mb)]
            }
            Err(e) => {
                *failed = true;
                [format!("FAILED: {e}"), "—".into(), "—".into(), "—".into(), "—".into()]
            }
        };
        let mut row = vec![file.to_string(), settings];
        row.extend(cells);
        row.push(inputs.into());
        rows.push(row);
    }
    let header = [
        "model",
        "pipeline",
        "output SQNR dB (ORT runtime)",
        "FP32 grey-image baseline dB",
        "time s",
        "of which skip-sensitive s",
        "peak RSS MB",
        "inputs",
    ];
    let mut md = String::from("\nThe yolo-int8 pipeline on the other detectors:\n\n");
    md += &util::markdown_table(&header, &rows);
    md += "\n";
    md += &skip_line;
    if forms.0.is_some() || forms.1.is_some() {
        let _ = writeln!(
            md,
            "- yolov8s-torch-export-random.onnx, engine auto: output SQNR {} dB with the float rest in FP16 \
             (yolo-int8, TensorRT 10/11) vs {} dB in FP32 (yolo-int8-trt8, TensorRT 8.6); random weights: \
             no detection agreement there",
            num(forms.0, 2),
            num(forms.1, 2)
        );
    }
    md += "\n- `skip-sensitive.samples=8` (instead of the pipeline's 16) on YOLOv5n and PicoDet, 16 on the YOLOv8s \
           export, run with the default engine and with tract; output SQNR = 10·log10(Σ y² / Σ (y − ŷ)²) over all outputs of every \
           photo × 4 views, both models run by ONNX Runtime (`xtask/scripts/sqnr.py`); `qforge agree` is not used here \
           (YOLOv5n is untrained: no detections; PicoDet's head is not a YOLO head). Baseline: the same formula \
           with ŷ = the FP32 outputs on a plain grey image: how much the outputs depend on the image at all; an \
           output SQNR near or below it says nothing about quantization (an untrained model barely looks at its \
           input).\n";
    Ok(md)
}
