//! Section `int8`: INT8 accuracy of qforge's pipelines vs ONNX Runtime's `quantize_static` and
//! NVIDIA ModelOpt's ONNX PTQ (where a Python with ModelOpt is found), as detection agreement
//! with the FP32 model (`qforge agree`) and output SQNR (whole, boxes, scores), plus the
//! yolo-int8 pipeline, its technique ablations and the same reference tools on the other
//! detectors (output SQNR with ONNX Runtime, `sqnr.py`).

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
/// The FP16-rest model scored against the FP32-rest model's own detections should reach this
/// mAP50: what the FP16 rest alone changes (same calibration and layer choices), rather than
/// the difference of two scores against FP32. Still ~30 boxes on nudenet: one box ≈ 0.03.
const MIN_FP16_VS_FP32_REST: f64 = 1.0 - MAX_FP16_REST_GAP;
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
    /// `modelopt_quant.py --method M`.
    ModelOpt(&'static str),
}

/// Whose quantizer made a candidate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Qforge,
    Ort,
    ModelOpt,
}

impl How {
    fn kind(&self) -> Kind {
        match self {
            How::Qforge(..) => Kind::Qforge,
            How::Ort(..) => Kind::Ort,
            How::ModelOpt(_) => Kind::ModelOpt,
        }
    }
}

/// The ablations of the default pipeline (issue 15's techniques): label, `insert-qdq`'s
/// `weights_method`, whether `correct-bias` runs.
const ABLATIONS: [(&str, &str, bool); 3] =
    [("max weights", "table", true), ("no correct-bias", "mse", false), ("neither", "table", false)];

/// ModelOpt's calibration methods: its default (entropy) and max.
const MODELOPT_METHODS: [(&str, &str); 2] = [("entropy", "ModelOpt entropy (its default)"), ("max", "ModelOpt max")];

/// The default pipeline (`pipelines/yolo-int8.yaml`) with MSE weights and/or `correct-bias`
/// switched off, written to the scratch folder: no `--set` removes a pass, so each ablation is
/// its own pipeline file (same passes and options otherwise).
fn ablation_pipeline(ctx: &Ctx, tag: &str, weights: &str, bias: bool) -> Result<PathBuf> {
    let fold = ctx.root.join("pipelines/fold.yaml");
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
    measure::pipeline(ctx, &format!("int8-{}", tag.replace(' ', "-")), &yaml)
}

struct Outcome {
    label: String,
    /// The quantized model written (when `run` succeeded).
    out: PathBuf,
    default: bool,
    kind: Kind,
    /// Why the candidate was not made (a tool that is not installed): no number, not a failure.
    not_run: Option<String>,
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
    let modelopt = measure::modelopt_python(ctx);
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
    // The default plus each activation's range chosen by the outputs
    // (`tune-ranges`, issue 15 item 1): not in yolo-int8, since on a 640×640
    // YOLOv8s it takes minutes on this machine, so only nudenet runs it.
    cands.push((
        "qforge yolo-int8-tuned --engine tract (yolo-int8 + tune-ranges after skip-sensitive)".into(),
        How::Qforge(
            ctx.root.join("pipelines/yolo-int8-tuned.yaml"),
            [shape(), vec!["--engine".into(), "tract".into()]].concat(),
        ),
    ));
    if !ctx.args.quick {
        let fold = ctx.root.join("pipelines/fold.yaml");
        // The default pipeline without each of issue 15's techniques and
        // without both: MSE weight ranges (`insert-qdq.weights_method`) and
        // bias correction after the sensitive-layer search.
        for (tag, weights, bias) in ABLATIONS {
            let pipe = ablation_pipeline(ctx, tag, weights, bias)?;
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
    if !ctx.args.quick {
        for (m, label) in MODELOPT_METHODS {
            cands.push((label.to_string(), How::ModelOpt(m)));
        }
    }

    if modelopt.is_ok() && !ctx.args.quick {
        notes.push(
            "ModelOpt rows: `xtask/scripts/modelopt_quant.py`, i.e. `modelopt.onnx.quantization.quantize` with \
             quantize_mode int8, `calibration_eps=[\"cpu\"]` and its other defaults (its own Q/DQ placement \
             through ONNX Runtime's quantize_static, per-channel weights, the float rest in FP16, FP32 model \
             inputs and outputs), calibration_method entropy (its default) or max, on the same 40 samples \
             (photos × 4 views, same letterbox). Its time and peak RSS include importing torch and ModelOpt."
                .into(),
        );
    }
    let mut outcomes = Vec::new();
    let mut ort_version = None;
    for (i, (label, how)) in cands.into_iter().enumerate() {
        println!("    [{}] {label}", i + 1);
        let out = ctx.scratch.join(format!("int8-{i}.onnx"));
        let mut skip_s = None;
        let mut not_run = None;
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
            How::ModelOpt(method) => match &modelopt {
                Ok((py, _)) => {
                    measure::modelopt_quant(ctx, py, &model, &out, method, &["--size", "320,320"]).map(|(m, j)| {
                        notes.push(format!(
                            "{label}: of its time and peak RSS, the python start and imports (ModelOpt, torch, \
                             onnx, ONNX Runtime) took {} s and {} MB, before any work",
                            num(j["import_seconds"].as_f64(), 1),
                            num(j["import_rss_mb"].as_f64(), 0)
                        ));
                        m
                    })
                }
                Err(why) => {
                    not_run = Some(why.clone());
                    Err(anyhow::anyhow!("not run"))
                }
            },
        };
        let (agree, agree_ort, ort_eval) = match run {
            Ok(_) => (
                Some(measure::agree(ctx, &model, &out, SIZE, "tract")),
                Some(measure::agree(ctx, &model, &out, SIZE, "ort")),
                Some(measure::ort_eval(ctx, &model, &out, &["--size", "320,320", "--detections", "--split-yolo"])),
            ),
            Err(_) => (None, None, None),
        };
        // The row the targets apply to: the pipeline on the embedded engine.
        let default = matches!(&how, How::Qforge(p, extra) if p.ends_with("yolo-int8.yaml")
            && extra.windows(2).any(|w| w[0] == "--engine" && w[1] == "tract"));
        outcomes.push(Outcome {
            label,
            out,
            default,
            kind: how.kind(),
            not_run,
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
    match &modelopt {
        Ok((py, v)) => {
            let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
            ctx.tools.push(format!(
                "nvidia-modelopt {} with torch {}, onnxruntime-gpu {}, python {} (`{py}`; ONNX PTQ, \
                 xtask/scripts/modelopt_quant.py)",
                s("nvidia-modelopt"),
                s("torch"),
                s("onnxruntime-gpu"),
                s("python")
            ));
        }
        Err(why) if !ctx.args.quick => notes.push(format!("ModelOpt rows not run: {why}")),
        Err(_) => {}
    }

    let mut failed = false;
    let direct = fp16_vs_fp32_rest(ctx, &outcomes);
    let mut md = nudenet_table(&outcomes, &direct, &mut notes, &mut failed);
    if !ctx.args.quick {
        md += &other_models(ctx, &modelopt, &mut failed)?;
    }
    Ok(SectionResult { markdown: md, failed })
}

/// The default (FP16 rest) model against the TensorRT 8.6 form (FP32 rest) of the same pipeline
/// run: both come from the same calibration, layer choice and bias correction, so this isolates
/// what `to-fp16` changes. `(engine, qforge agree JSON)` for tract and ONNX Runtime; empty when
/// either model is missing.
fn fp16_vs_fp32_rest(ctx: &Ctx, outcomes: &[Outcome]) -> Vec<(&'static str, Result<Value>)> {
    let ran = |o: &&Outcome| o.run.is_ok();
    let ours = outcomes.iter().filter(ran).find(|o| o.default);
    let trt8 = outcomes.iter().filter(ran).find(|o| o.label.starts_with(TRT8_LABEL));
    let (Some(ours), Some(trt8)) = (ours, trt8) else { return Vec::new() };
    println!("    FP16 rest against the FP32 rest's detections");
    ["tract", "ort"].into_iter().map(|e| (e, measure::agree(ctx, &trt8.out, &ours.out, SIZE, e))).collect()
}

/// `qforge inspect MODEL --tail` into a file (node names, one per line).
pub(crate) fn tail_file(ctx: &Ctx, model: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new(&ctx.qforge);
    cmd.arg("inspect").arg(model).arg("--tail");
    let out = util::run_captured(&mut cmd)?;
    let path = ctx.scratch.join(format!("tail-{}.txt", crate::models::stem(model)));
    fs::write(&path, &out.stdout).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The nudenet table, its targets and notes.
fn nudenet_table(
    outcomes: &[Outcome],
    direct: &[(&str, Result<Value>)],
    notes: &mut Vec<String>,
    failed: &mut bool,
) -> String {
    let dash = || "—".to_string();
    let mut rows = Vec::new();
    for o in outcomes {
        let mut row = vec![o.label.clone()];
        if let Some(why) = &o.not_run {
            row.push(format!("not run: {why}"));
            row.extend(std::iter::repeat_with(dash).take(8));
            rows.push(row);
            continue;
        }
        let Ok(m) = &o.run else {
            *failed = true;
            let e = o.run.as_ref().err().map(ToString::to_string).unwrap_or_default();
            row.push(format!("FAILED: {e}"));
            row.extend(std::iter::repeat_with(dash).take(8));
            rows.push(row);
            continue;
        };
        let mark = if consistent(o) == Some(false) { " †" } else { "" };
        for (i, (scores, mark)) in [(&o.agree, mark), (&o.agree_ort, ""), (&o.ort_eval, "")].into_iter().enumerate() {
            // tract may not run another tool's output (its ops or FP16 I/O): then the
            // ONNX Runtime measurements stand for it, and that is no failure of the bench.
            if i == 0
                && o.kind == Kind::ModelOpt
                && let Some(Err(e)) = scores
            {
                row.extend([format!("tract cannot run it: {e}"), "—".into()]);
                continue;
            }
            row.extend(score_cells(scores, mark, failed));
        }
        // sqnr.py's SQNR cell: whole / boxes / scores.
        if let Some(Ok(j)) = &o.ort_eval
            && let Some(cell) = row.last_mut()
        {
            *cell =
                format!("{cell} / {} / {}", num(j["sqnr_boxes_db"].as_f64(), 2), num(j["sqnr_scores_db"].as_f64(), 2));
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
        "SQNR dB whole / boxes / scores",
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
        let best = |kind: Kind| {
            outcomes
                .iter()
                .filter(|o| o.kind == kind && (!only_consistent || consistent(o) == Some(true)))
                .filter_map(|o| map50(o).map(|m| (m, o.label.as_str())))
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        let (best_ort, best_mo) = (best(Kind::Ort), best(Kind::ModelOpt));
        let vs = |b: Option<(f64, &str)>, who: &str| {
            b.map_or_else(|| format!("no comparable {who} row"), |(m, l)| format!("{l}: {m:.3}"))
        };
        let _ = writeln!(
            md,
            "- {runtime}: qforge default (yolo-int8) mAP50 {}: {}; ≥ the best ORT configuration ({}): {}; ≥ the \
             best ModelOpt configuration ({}): {}",
            num(ours, 3),
            verdict(&format!("≥ {MIN_MAP50:.2}"), ours.map(|m| m >= MIN_MAP50)),
            vs(best_ort, "ORT"),
            verdict("≥ best ORT", ours.zip(best_ort).map(|(a, (b, _))| a >= b)),
            vs(best_mo, "ModelOpt"),
            verdict("≥ best ModelOpt", ours.zip(best_mo).map(|(a, (b, _))| a >= b))
        );
    }
    // FP16 rest (the default, TensorRT 10/11) against FP32 rest (8.6), both on tract.
    let trt8 = outcomes.iter().find(|o| o.label.starts_with(TRT8_LABEL));
    if let (Some(ours), Some(trt8)) = (outcomes.iter().find(|o| o.default), trt8) {
        for (runtime, map50, _) in measures {
            let gap = map50(ours).zip(map50(trt8)).map(|(a, b)| a - b);
            let _ = writeln!(
                md,
                "- {runtime}: FP16 rest (yolo-int8) − FP32 rest (yolo-int8-trt8) mAP50 against FP32 = {} (two scores \
                 on ~30 boxes, one box ≈ 0.03): {}",
                num(gap, 3),
                verdict(&format!("within ±{MAX_FP16_REST_GAP}"), gap.map(|g| g.abs() <= MAX_FP16_REST_GAP))
            );
        }
    }
    for (engine, r) in direct {
        let line = match r {
            Ok(j) => {
                let m = j["map50"].as_f64();
                format!(
                    "mAP50 / recall / precision {} / {} / {} on its {} boxes (one box ≈ {}), SQNR {} dB: {}",
                    num(m, 3),
                    num(j["recall"].as_f64(), 3),
                    num(j["precision"].as_f64(), 3),
                    j["fp32_dets"],
                    num(j["fp32_dets"].as_f64().filter(|&n| n > 0.0).map(|n| 1.0 / n), 3),
                    num(j["sqnr_db"].as_f64(), 1),
                    verdict(&format!("mAP50 ≥ {MIN_FP16_VS_FP32_REST:.2}"), m.map(|m| m >= MIN_FP16_VS_FP32_REST))
                )
            }
            Err(e) => {
                *failed = true;
                format!("FAILED: {e}")
            }
        };
        let _ = writeln!(
            md,
            "- FP16 rest (yolo-int8) scored against the FP32 rest's own detections (yolo-int8-trt8 as the \
             reference, `qforge agree --engine {engine}`): {line}"
        );
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
             mAP50/recall/precision measure tract, not the quantization; such ORT and ModelOpt rows are left out \
             of the `qforge agree` (tract) target (the ONNX Runtime targets use every row)"
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

/// A detector of [`other_models`] and how each tool feeds it.
struct Detector {
    file: &'static str,
    /// qforge's `--set` arguments (skip-sensitive samples, preprocessing), engine excluded.
    qforge_sets: Vec<&'static str>,
    /// `sqnr.py`'s arguments (preprocessing, how to split boxes from scores).
    sqnr_args: Vec<&'static str>,
    /// `ort_quant.py`'s and `modelopt_quant.py`'s input arguments.
    ort_input: Vec<&'static str>,
    modelopt_input: Vec<&'static str>,
    /// The ablations and the ORT and ModelOpt rows too (else the default pipeline only).
    full: bool,
    /// Extra qforge runs: (engine, the TensorRT 8.6 form).
    extra_runs: Vec<(&'static str, bool)>,
    inputs: &'static str,
}

/// One candidate of [`other_models`].
enum Cand {
    /// Pipeline file, its name in the table, engine.
    Qforge(PathBuf, String, &'static str),
    Ort(bool),
    ModelOpt(&'static str, &'static str),
}

/// The PicoDet outputs that are boxes: per-side distance distributions (4 sides × 8 bins), one
/// per stride; the other four are the sigmoid class scores.
const PICODET_BOXES: &str = "transpose_1.tmp_0,transpose_3.tmp_0,transpose_5.tmp_0,transpose_7.tmp_0";

/// The yolo-int8 pipeline, its ablations, ONNX Runtime's quantize_static and ModelOpt on the
/// YOLOv8s export and PicoDet (and the default pipeline on the untrained YOLOv5n): output SQNR
/// vs FP32 with ONNX Runtime, whole and split into boxes and scores.
fn other_models(
    ctx: &mut Ctx,
    modelopt: &std::result::Result<(String, Value), String>,
    failed: &mut bool,
) -> Result<String> {
    let default_pipe = ctx.root.join("pipelines/yolo-int8.yaml");
    let trt8_pipe = ctx.root.join("pipelines/yolo-int8-trt8.yaml");
    let detectors = [
        Detector {
            file: "yolov8s-torch-export-random.onnx",
            qforge_sets: vec!["--set", "skip-sensitive.samples=16"],
            sqnr_args: vec!["--split-yolo"],
            ort_input: vec!["--size", "640"],
            modelopt_input: vec![],
            full: true,
            // The skip-sensitive target is set for the embedded engine: measured with it too.
            extra_runs: vec![("tract", false), ("auto", true)],
            inputs: "640×640 letterbox (as qforge calibrates); the raw torch export, random weights",
        },
        Detector {
            file: "picodet-layout-cdla.onnx",
            qforge_sets: vec!["--set", "skip-sensitive.samples=8", "--set", "calibrate.data.letterbox=false"],
            sqnr_args: vec!["--resize", "--box-outputs", PICODET_BOXES],
            ort_input: vec!["--resize", "800,608"],
            modelopt_input: vec!["--resize"],
            full: true,
            extra_runs: vec![],
            inputs: "plain resize to 608×800 (W×H), /255, for every tool and for sqnr.py (qforge: \
                     `calibrate.data.letterbox=false`)",
        },
        Detector {
            file: "yolov5n-untrained-unfused-bn.onnx",
            qforge_sets: vec!["--set", "skip-sensitive.samples=8"],
            sqnr_args: vec!["--split-yolo"],
            ort_input: vec![],
            modelopt_input: vec![],
            full: false,
            extra_runs: vec![],
            inputs: "640×640 letterbox (as qforge calibrates); untrained",
        },
    ];
    let mut ablations = Vec::new();
    for (tag, weights, bias) in ABLATIONS {
        ablations.push((tag, ablation_pipeline(ctx, tag, weights, bias)?));
    }
    let mut rows = Vec::new();
    let mut lines = String::new();
    let mut notes = Vec::new();
    // Output SQNR of the YOLOv8s export: (FP16 rest, FP32 rest), engine auto.
    let mut forms: (Option<f64>, Option<f64>) = (None, None);
    let mut ort_version = None;
    for d in &detectors {
        let model = match measure::model(ctx, d.file) {
            Ok(m) => m,
            Err(e) => {
                let mut row = vec![d.file.to_string(), "—".into(), format!("SKIPPED: {e}")];
                row.extend(std::iter::repeat_with(|| "—".to_string()).take(6));
                rows.push(row);
                continue;
            }
        };
        notes.push(format!("{}: {}", d.file, d.inputs));
        let mut cands = vec![Cand::Qforge(default_pipe.clone(), "qforge yolo-int8".into(), "auto")];
        for &(engine, trt8) in &d.extra_runs {
            let (pipe, name) = if trt8 {
                (&trt8_pipe, "qforge yolo-int8-trt8 (float rest FP32)")
            } else {
                (&default_pipe, "qforge yolo-int8")
            };
            cands.push(Cand::Qforge(pipe.clone(), name.into(), engine));
        }
        if d.full {
            for (tag, pipe) in &ablations {
                cands.push(Cand::Qforge(pipe.clone(), format!("qforge yolo-int8, {tag}"), "auto"));
            }
            cands.extend([Cand::Ort(false), Cand::Ort(true)]);
            cands.extend(MODELOPT_METHODS.iter().map(|&(m, l)| Cand::ModelOpt(m, l)));
        }
        let tail = if d.full { Some(tail_file(ctx, &model)?) } else { None };
        let stem = crate::models::stem(&model);
        for (i, cand) in cands.into_iter().enumerate() {
            let out = ctx.scratch.join(format!("{stem}.{i}.onnx"));
            let (label, run) = match &cand {
                Cand::Qforge(pipe, name, engine) => {
                    let mut extra = d.qforge_sets.clone();
                    extra.extend(["--engine", *engine]);
                    println!("    {name} on {}", d.file);
                    let label = format!("{name} `{}`", extra.join(" "));
                    let run = measure::qforge_run(ctx, pipe, &model, &out, &extra).map(|(m, report)| {
                        let skip = measure::report_seconds(&report, "skip-sensitive");
                        (m, skip)
                    });
                    // The skip-sensitive target: the default pipeline on the YOLOv8s export.
                    if let (true, Ok((_, skip))) = (d.file.starts_with("yolov8s") && pipe == &default_pipe, &run) {
                        let engine = if *engine == "tract" { "tract" } else { qforge_engine_auto() };
                        lines += &format!(
                            "- skip-sensitive on {} (16 samples, engine {engine}): {} s: {}\n",
                            d.file,
                            num(*skip, 1),
                            verdict(&format!("≤ {MAX_SKIP_S_YOLOV8S} s"), skip.map(|s| s <= MAX_SKIP_S_YOLOV8S))
                        );
                    }
                    (label, run.map(|(m, skip)| (Some(m), skip)))
                }
                Cand::Ort(exclude) => {
                    let label = format!("ORT MinMax{}", if *exclude { ", tail float" } else { "" });
                    println!("    {label} on {}", d.file);
                    let o = OrtQuant {
                        method: "minmax",
                        exclude_file: if *exclude { tail.as_deref() } else { None },
                        repeat: 1,
                        size: 0,
                    };
                    let run = measure::ort_quant_with(ctx, &model, &out, &o, &d.ort_input).map(|(m, j)| {
                        ort_version = j["onnxruntime_version"].as_str().map(String::from);
                        if *exclude {
                            notes.push(format!(
                                "{}, {label}: {} of the {} tail names (`qforge inspect --tail`) are still nodes \
                                 after ORT's `quant_pre_process` and were passed as `nodes_to_exclude`",
                                d.file, j["excluded"], j["exclude_requested"]
                            ));
                        }
                        (Some(m), None)
                    });
                    (label, run)
                }
                Cand::ModelOpt(method, label) => {
                    println!("    {label} on {}", d.file);
                    let run = match modelopt {
                        Ok((py, _)) => measure::modelopt_quant(ctx, py, &model, &out, method, &d.modelopt_input)
                            .map(|(m, _)| (Some(m), None)),
                        Err(_) => Ok((None, None)),
                    };
                    (label.to_string(), run)
                }
            };
            let mut row = vec![d.file.to_string(), label];
            match run {
                Ok((Some(m), skip)) => {
                    let db = measure::ort_eval(ctx, &model, &out, &d.sqnr_args);
                    *failed |= db.is_err();
                    if let (Cand::Qforge(pipe, _, "auto"), Ok(j)) = (&cand, &db)
                        && d.file.starts_with("yolov8s")
                    {
                        if pipe == &trt8_pipe {
                            forms.1 = j["sqnr_db"].as_f64();
                        } else if pipe == &default_pipe {
                            forms.0 = j["sqnr_db"].as_f64();
                        }
                    }
                    match db {
                        Ok(j) => row.extend(
                            ["sqnr_db", "sqnr_boxes_db", "sqnr_scores_db", "baseline_db"]
                                .map(|k| num(j[k].as_f64(), 2)),
                        ),
                        Err(e) => {
                            row.push(format!("sqnr FAILED: {e}"));
                            row.extend(std::iter::repeat_with(|| "—".to_string()).take(3));
                        }
                    }
                    row.extend([format!("{:.2}", m.seconds), num(skip, 2), format!("{:.0}", m.peak_mb)]);
                }
                Ok((None, _)) => {
                    let why = modelopt.as_ref().err().cloned().unwrap_or_default();
                    row.push(format!("not run: {why}"));
                    row.extend(std::iter::repeat_with(|| "—".to_string()).take(6));
                }
                Err(e) => {
                    *failed = true;
                    row.push(format!("FAILED: {e}"));
                    row.extend(std::iter::repeat_with(|| "—".to_string()).take(6));
                }
            }
            rows.push(row);
        }
    }
    if let Some(v) = ort_version
        && !ctx.tools.iter().any(|t| t.starts_with("onnxruntime "))
    {
        ctx.tools.push(format!("onnxruntime {v} (quantize_static, xtask/scripts/ort_quant.py)"));
    }
    let header = [
        "model",
        "candidate",
        "output SQNR dB (ORT runtime)",
        "boxes dB",
        "scores dB",
        "FP32 grey-image baseline dB",
        "time s",
        "of which skip-sensitive s",
        "peak RSS MB",
    ];
    let mut md = String::from(
        "\nThe yolo-int8 pipeline, its ablations, ONNX Runtime's quantize_static and ModelOpt on the other \
         detectors:\n\n",
    );
    md += &util::markdown_table(&header, &rows);
    md += "\n";
    md += &lines;
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
    md += "\n- Rows: the default pipeline (`pipelines/yolo-int8.yaml`) with the default engine (auto) and, on the \
           YOLOv8s export, with tract and in its TensorRT 8.6 form; the ablations as on nudenet (pipeline files: \
           `insert-qdq.weights_method: table` for max weights, without the `correct-bias` pass, or both), engine \
           auto; ONNX Runtime's quantize_static MinMax (`ort_quant.py`, QDQ, per-channel, symmetric int8), with \
           and without the tail (`qforge inspect --tail`) excluded; ModelOpt (entropy, its default, and max) as on \
           nudenet. time s and peak RSS MB: the whole quantizing process (`/usr/bin/time`). `skip-sensitive.samples=8` \
           (instead of the pipeline's 16) on YOLOv5n and PicoDet, 16 on the YOLOv8s export.\n";
    md += "- Output SQNR = 10·log10(Σ y² / Σ (y − ŷ)²) over all outputs of every photo × 4 views (40 samples), \
           both models run by ONNX Runtime (`xtask/scripts/sqnr.py`). boxes / scores: the same over the box and \
           the score part (`--split-yolo`: rows 0..4 (cx, cy, w, h) vs the class rows of a YOLOv8 head [1, 4+C, N]; \
           columns 0..4 vs objectness and classes of a YOLOv5 head [1, N, 5+C]; PicoDet, `--box-outputs`: its four \
           [N, 32] outputs, per-side distance distributions over 8 bins (logits, not coordinates), vs its four \
           [N, 10] sigmoid class scores). The box parts carry nearly all of Σ y² (YOLO box \
           coordinates are hundreds of pixels, scores at most 1; PicoDet's box logits are several units, its \
           sigmoid scores mostly near 0), so the whole SQNR follows the boxes' one; the scores' SQNR \
           is the part detection confidence depends on. `qforge agree` is not used here: the YOLOv8s export has random \
           weights and YOLOv5n is untrained (no meaningful detections); PicoDet's head is not a YOLO head. \
           Baseline: the same formula with ŷ = the FP32 outputs on a plain grey image: how much the outputs \
           depend on the image at all; an output SQNR near or below it says nothing about quantization (an \
           untrained model barely looks at its input).\n";
    for n in notes {
        md += &format!("- {n}\n");
    }
    Ok(md)
}
