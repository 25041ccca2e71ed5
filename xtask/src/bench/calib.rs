//! Section `calib`: calibration throughput and memory, qforge vs ONNX Runtime's
//! `quantize_static`, on nudenet-320n with 4 views of every photo, and with the data repeated;
//! then, on nudenet and on the 640×640 YOLOv8s export, the `calibrate` pass against the floor
//! (ONNX Runtime only running the model on the same samples) and `pipelines/calibrate.yaml`
//! against ONNX Runtime's fastest quantizer (MinMax), whole process ([`against_floor`]).

use std::fmt::Write as _;

use anyhow::Result;

use super::measure::{self, Measured, OrtQuant, num};
use super::{Ctx, SectionResult, doc, verdict};
use crate::util;

const MODEL: &str = "nudenet-320n.onnx";
const INPUT_SHAPE: &str = "images=1,3,320,320";
const SIZE: usize = 320;
/// How many times the data is repeated for the memory measurement (`--quick`: 2).
const REPEAT: usize = 8;
const QUICK_REPEAT: usize = 2;
/// The second point of qforge's memory series: the data once repeated. The
/// first pass over the data grows the heap to its working size; ×2 → ×8
/// shows whether anything grows past that.
const STEADY: usize = 2;
/// Rounds of qforge's runs in the first table (`--quick`: 1); its figures are medians.
const MEMORY_ROUNDS: usize = 3;
/// Targets: end-to-end speed-up over ONNX Runtime, peak RSS growth with the repeated data.
const MIN_SPEEDUP: f64 = 3.0;
const MAX_RSS_GROWTH: f64 = 0.10;
/// ONNX Runtime's repeated run is skipped unless its projected peak (1× peak × factor) fits in
/// this share of the available memory (its histogram calibrators keep every sample's outputs).
const MEM_SHARE: f64 = 0.6;
/// qforge's rows: (label, `--engine`). The speed target is the tract engine's
/// (the default when it was set, and the embedded fallback now); the ONNX
/// Runtime engine's figure, what `auto` picks where the library is found,
/// is reported beside it.
const QFORGE: [(&str, &str); 2] = [("qforge --engine tract", "tract"), ("qforge --engine ort", "ort")];

/// One measured configuration.
struct Run {
    tool: &'static str,
    method: &'static str,
    repeat: usize,
    result: Result<(Measured, f64)>,
}

impl Run {
    fn ok(&self) -> Option<&(Measured, f64)> {
        self.result.as_ref().ok()
    }
    fn seconds(&self) -> Option<f64> {
        self.ok().map(|(m, _)| m.seconds)
    }
    fn peak(&self) -> Option<f64> {
        self.ok().map(|(m, _)| m.peak_mb)
    }
}

pub fn calib(ctx: &mut Ctx) -> Result<SectionResult> {
    let quick = ctx.args.quick;
    let repeat = if quick { QUICK_REPEAT } else { REPEAT };
    let rounds = if quick { 1 } else { MEMORY_ROUNDS };
    let methods: &[&'static str] = if quick { &["entropy"] } else { &["entropy", "percentile"] };
    let model = measure::model(ctx, MODEL)?;
    let mut runs: Vec<Run> = Vec::new();
    let mut notes = Vec::new();
    let mut ort_version = None;

    for &method in methods {
        // Every qforge configuration `rounds` times, one round after the
        // other, medians reported: a single peak RSS varies by ±5% between
        // runs here, as much as the growth the target bounds.
        let configs: Vec<(&'static str, &str, usize)> = QFORGE
            .iter()
            .flat_map(|&(t, e)| [(t, e, 1), (t, e, STEADY), (t, e, repeat)])
            .filter(|&(.., r)| r != STEADY || repeat > STEADY)
            .collect();
        let mut results: Vec<Vec<Result<PassRun>>> = configs.iter().map(|_| Vec::new()).collect();
        let mut samples = vec![f64::NAN; configs.len()];
        for round in 0..rounds {
            super::progress(&format!("    {method}: qforge round {}/{rounds} ...\n", round + 1));
            for (k, &(_, engine, rep)) in configs.iter().enumerate() {
                let data = format!("{{views: true, repeat: {rep}}}");
                let yaml = format!("name: bench-calib\npasses:\n  - calibrate: {{method: {method}, data: {data}}}\n");
                let name = format!("calib-{method}-{engine}-x{rep}");
                let result = measure::pipeline(ctx, &name, &yaml).and_then(|pipe| {
                    let out = ctx.scratch.join(format!("{name}.onnx"));
                    let args = ["--input-shape", INPUT_SHAPE, "--engine", engine];
                    let (m, report) = measure::qforge_run(ctx, &pipe, &model, &out, &args)?;
                    if let Some(n) = measure::report_counter(&report, "calibrate", "samples") {
                        samples[k] = n;
                    }
                    Ok((m, measure::report_seconds(&report, "calibrate")))
                });
                results[k].push(result);
            }
        }
        for ((tool, _, rep), (result, samples)) in configs.into_iter().zip(results.into_iter().zip(samples)) {
            let result = median_run(result);
            if let Ok((_, Some(s))) = &result {
                notes.push(format!(
                    "{tool} {method} ×{rep}: the calibrate pass alone took {s:.2} s ({:.1} samples/s)",
                    samples / s
                ));
            }
            runs.push(Run { tool, method, repeat: rep, result: result.map(|(m, _)| (m, samples)) });
        }

        let out = ctx.scratch.join(format!("ort-{method}.onnx"));
        let ort = |rep| {
            let o = OrtQuant { method, exclude_file: None, repeat: rep, size: SIZE };
            measure::ort_quant(ctx, &model, &out, &o).map(|(m, j)| {
                let samples = j["samples"].as_f64().unwrap_or(f64::NAN);
                (m, samples, j["onnxruntime_version"].as_str().map(String::from))
            })
        };
        let first = ort(1);
        let peak1 = first.as_ref().ok().map(|(m, ..)| m.peak_mb);
        if let Ok((_, _, Some(v))) = &first {
            ort_version = Some(v.clone());
        }
        runs.push(Run { tool: "ONNX Runtime", method, repeat: 1, result: first.map(|(m, s, _)| (m, s)) });
        // The repeated run, at the largest factor whose projected peak fits in memory.
        let avail_mb = doc::meminfo_kb("MemAvailable:").map_or(0.0, |kb| kb / 1024.0);
        let fits = |r: usize| peak1.is_some_and(|p| p * r as f64 <= avail_mb * MEM_SHARE);
        let factors: Vec<usize> = std::iter::successors(Some(repeat), |r| (*r > 2).then_some(r / 2)).collect();
        match factors.iter().copied().find(|&r| fits(r)) {
            Some(rep) => {
                if rep != repeat {
                    notes.push(format!(
                        "ONNX Runtime {method}: ×{repeat} not run: projected peak {:.0} MB (×{repeat} the ×1 peak) \
                         > {:.0}% of the {avail_mb:.0} MB available; ran ×{rep} instead",
                        peak1.unwrap_or(f64::NAN) * repeat as f64,
                        MEM_SHARE * 100.0
                    ));
                }
                runs.push(Run { tool: "ONNX Runtime", method, repeat: rep, result: ort(rep).map(|(m, s, _)| (m, s)) });
            }
            None if peak1.is_none() => {
                notes.push(format!("ONNX Runtime {method}: repeated run not started (×1 failed)"))
            }
            None => notes.push(format!(
                "ONNX Runtime {method}: repeated run not started: even ×2 is projected above {:.0}% of the \
                 {avail_mb:.0} MB available (×1 peak {} MB)",
                MEM_SHARE * 100.0,
                num(peak1, 0)
            )),
        }
    }
    if let Some(v) = ort_version {
        ctx.tools.push(format!("onnxruntime {v} (quantize_static, xtask/scripts/ort_quant.py)"));
    }
    let mut result = table(&runs, repeat, rounds, notes);
    let methods: &[&str] = if quick { &["entropy"] } else { &["max", "percentile", "entropy"] };
    let (md, failed) = against_floor(ctx, methods)?;
    result.markdown.push_str(&md);
    result.failed |= failed;
    Ok(result)
}

/// Models of the floor comparison: (file, `--input-shape` or "", input side).
const FLOOR_MODELS: [(&str, &str, usize); 2] =
    [(MODEL, INPUT_SHAPE, SIZE), ("yolov8s-torch-export-random.onnx", "", 640)];
/// Target: the calibrate pass within this factor of the floor.
const MAX_FLOOR_RATIO: f64 = 1.5;

/// Rounds of the floor comparison (`--quick`: 1): its runs take seconds and
/// the machine's speed drifts by a third within minutes (the floor on the
/// YOLOv8s export measured 2.9 to 5.3 s in one sitting).
const FLOOR_ROUNDS: usize = 3;

/// The medians of one configuration's rounds, each column apart; the first
/// failure if any round failed.
fn median_run(results: Vec<Result<PassRun>>) -> Result<PassRun> {
    let ok = results.into_iter().collect::<Result<Vec<_>>>()?;
    let col = |f: &dyn Fn(&PassRun) -> f64| util::median(&ok.iter().map(f).collect::<Vec<_>>());
    let pass = ok.iter().all(|(_, p)| p.is_some()).then(|| col(&|(_, p)| p.unwrap_or(f64::NAN)));
    let (seconds, peak_mb) = (col(&|(m, _)| m.seconds), col(&|(m, _)| m.peak_mb));
    let stdout = ok.into_iter().next().map(|(m, _)| m.stdout).unwrap_or_default();
    Ok((Measured { seconds, peak_mb, stdout }, pass))
}

/// A qforge or ONNX Runtime process and the calibrate pass's seconds in it.
type PassRun = (Measured, Option<f64>);

/// One row of the floor table.
struct FloorRow {
    label: String,
    result: Result<PassRun>,
}

/// The `calibrate` pass (default build and engine) against ONNX Runtime just running the model
/// on the same 40 samples, and `pipelines/calibrate.yaml` against ORT's MinMax `quantize_static`,
/// whole process, on each of [`FLOOR_MODELS`]. Returns the markdown and whether a run failed.
fn against_floor(ctx: &mut Ctx, methods: &[&str]) -> Result<(String, bool)> {
    let mut md = String::from(
        "\n### The calibrate pass against the floor, and `pipelines/calibrate.yaml` against ONNX Runtime MinMax\n\n",
    );
    let mut failed = false;
    let mut targets = Vec::new();
    let mut rows_md = Vec::new();
    let mut breakdowns = Vec::new();
    for (file, shape, size) in FLOOR_MODELS {
        let model = measure::model(ctx, file)?;
        let short = file.trim_end_matches(".onnx");
        let shape_args: Vec<&str> = if shape.is_empty() { vec![] } else { vec!["--input-shape", shape] };
        // A qforge run of `pipe` on the model: the whole process and the calibrate pass's seconds.
        let run = |ctx: &Ctx, name: &str, pipe: &Result<std::path::PathBuf>, args: &[&str]| {
            let pipe = pipe.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let out = ctx.scratch.join(format!("{name}.onnx"));
            measure::qforge_run_plain(ctx, pipe, &model, &out, args, "calibrate")
        };
        let mut labels: Vec<(String, String, Result<std::path::PathBuf>, Vec<&str>)> = methods
            .iter()
            .map(|&method| {
                let name = format!("floor-{short}-{method}");
                let yaml =
                    format!("name: {name}\npasses:\n  - calibrate: {{method: {method}, data: {{views: true}}}}\n");
                (
                    format!("qforge calibrate {method}"),
                    name.clone(),
                    measure::pipeline(ctx, &name, &yaml),
                    shape_args.clone(),
                )
            })
            .collect();
        let mut cal_args = shape_args.clone();
        cal_args.extend(["--set", "calibrate.data.views=true"]);
        labels.push((
            "qforge `pipelines/calibrate.yaml` (fold + entropy)".into(),
            format!("e2e-{short}"),
            Ok(ctx.root.join("pipelines/calibrate.yaml")),
            cal_args,
        ));
        // Every run `rounds` times, one round after the other, so a slow
        // spell of the machine falls on all of them alike; medians reported.
        let rounds = if ctx.args.quick { 1 } else { FLOOR_ROUNDS };
        let mut floors: Vec<Result<serde_json::Value>> = Vec::new();
        let mut measured: Vec<Vec<Result<PassRun>>> = (0..=labels.len()).map(|_| Vec::new()).collect();
        for round in 0..rounds {
            super::progress(&format!("    {short}: round {}/{rounds} ...\n", round + 1));
            floors.push(measure::ort_floor(ctx, &model, size, 1));
            for (k, (_, name, pipe, args)) in labels.iter().enumerate() {
                measured[k].push(run(ctx, name, pipe, args));
            }
            let ort_out = ctx.scratch.join(format!("ort-minmax-{short}.onnx"));
            let o = OrtQuant { method: "minmax", exclude_file: None, repeat: 1, size };
            measured[labels.len()].push(measure::ort_quant(ctx, &model, &ort_out, &o).map(|(m, _)| (m, None)));
        }
        let floor: Result<f64> = floors
            .into_iter()
            .map(|f| f.and_then(|j| j["floor_seconds"].as_f64().ok_or_else(|| anyhow::anyhow!("no floor_seconds"))))
            .collect::<Result<Vec<f64>>>()
            .map(|v| util::median(&v));
        let floor_s = floor.as_ref().ok().copied();
        let mut rows: Vec<FloorRow> = labels
            .iter()
            .map(|(l, ..)| l.clone())
            .chain(["ONNX Runtime `quantize_static` MinMax".to_string()])
            .zip(measured)
            .map(|(label, results)| FloorRow { label, result: median_run(results) })
            .collect();
        let ort = rows.pop().map_or_else(|| Err(anyhow::anyhow!("not run")), |r| r.result);
        let e2e = rows.pop().map_or_else(|| Err(anyhow::anyhow!("not run")), |r| r.result);

        for r in rows.iter().filter(|r| r.label.starts_with("qforge calibrate ")) {
            let ratio = r.result.as_ref().ok().and_then(|(_, p)| p.zip(floor_s).map(|(p, f)| p / f));
            targets.push(format!(
                "- {short}: {} pass {} the floor: {}",
                r.label.trim_start_matches("qforge "),
                ratio.map_or_else(|| "?".into(), |x| format!("{x:.2}×")),
                verdict(&format!("≤ {MAX_FLOOR_RATIO}×"), ratio.map(|x| x <= MAX_FLOOR_RATIO))
            ));
        }
        let secs = |r: &Result<PassRun>| r.as_ref().ok().map(|(m, _)| m.seconds);
        let peak = |r: &Result<PassRun>| r.as_ref().ok().map(|(m, _)| m.peak_mb);
        let (qs, os) = (secs(&e2e), secs(&ort));
        targets.push(format!(
            "- {short}: `pipelines/calibrate.yaml` {} s vs ONNX Runtime MinMax {} s, whole process ({}): {}",
            num(qs, 2),
            num(os, 2),
            qs.zip(os).map_or_else(|| "?".into(), |(q, o)| format!("{:.2}× faster", o / q)),
            verdict("faster", qs.zip(os).map(|(q, o)| q < o))
        ));
        let (qp, op) = (peak(&e2e), peak(&ort));
        targets.push(format!(
            "- {short}: peak RSS {} MB vs {} MB: {}",
            num(qp, 0),
            num(op, 0),
            verdict("below ONNX Runtime's", qp.zip(op).map(|(q, o)| q < o))
        ));
        rows.push(FloorRow { label: "qforge `pipelines/calibrate.yaml` (fold + entropy)".into(), result: e2e });
        rows.push(FloorRow { label: "ONNX Runtime `quantize_static` MinMax".into(), result: ort });

        rows_md.push(vec![
            short.to_string(),
            "floor: ONNX Runtime running the float model".into(),
            "—".into(),
            match &floor {
                Ok(f) => format!("{f:.2}"),
                Err(e) => {
                    failed = true;
                    format!("FAILED: {e}")
                }
            },
            "1.00×".into(),
            "—".into(),
        ]);
        for r in &rows {
            // Where the pass's time went, as qforge's own note says (first round).
            let note =
                r.result.as_ref().ok().and_then(|(m, _)| m.stdout.lines().find(|l| l.contains("calibrate: time:")));
            if let Some(line) = note {
                breakdowns.push(format!(
                    "- {short}, {}: {}",
                    r.label.trim_start_matches("qforge "),
                    line.trim_start_matches("note: calibrate: time: ")
                ));
            }
        }
        for r in rows {
            rows_md.push(match &r.result {
                Ok((m, pass)) => vec![
                    short.to_string(),
                    r.label,
                    format!("{:.2}", m.seconds),
                    num(*pass, 2),
                    pass.zip(floor_s).map_or_else(|| "—".into(), |(p, f)| format!("{:.2}×", p / f)),
                    format!("{:.0}", m.peak_mb),
                ],
                Err(e) => {
                    failed = true;
                    vec![short.to_string(), r.label, format!("FAILED: {e}"), "—".into(), "—".into(), "—".into()]
                }
            });
        }
    }
    let header = ["model", "run", "whole process s", "calibrate pass s (floor: runs only)", "× floor", "peak RSS MB"];
    md.push_str(&util::markdown_table(&header, &rows_md));
    let _ = writeln!(md, "\nTargets:\n");
    for t in targets {
        let _ = writeln!(md, "{t}");
    }
    let _ = writeln!(
        md,
        "\n- 40 samples: every photo of assets/photos in 4 views, the same letterbox for all tools. The floor \
         (`ort_quant.py --floor`) prepares every sample first, then times only ONNX Runtime's runs of the float \
         model, one session with its default threads; qforge runs as a user runs it, without a run report \
         (`--report` adds every method's threshold for every tensor, 0.13 s on nudenet), and the calibrate pass's \
         time, read from the pass table qforge prints, includes everything it does: finding and opening the \
         engine, decoding the photos, the runs, the histograms and the ranges. qforge rows: the release binary with its default engine (auto: ONNX Runtime when its library is \
         found). ONNX Runtime MinMax: as in the table above (`ort_quant.py --method minmax`). Every figure is the \
         median of {rounds} rounds, each round running the floor, every qforge row and MinMax once in turn.",
        rounds = if ctx.args.quick { 1 } else { FLOOR_ROUNDS }
    );
    let _ = writeln!(
        md,
        "\nWhere the calibrate pass's time went (qforge's note, first round; the phases are summed over its two \
         workers, wall/CPU seconds, so they can add up to twice the wall time; the floor times only what is \
         summed under \"engine runs\", with one session on two threads):\n"
    );
    for b in breakdowns {
        let _ = writeln!(md, "{b}");
    }
    Ok((md, failed))
}

/// The markdown: table, targets, notes.
fn table(runs: &[Run], repeat: usize, rounds: usize, mut notes: Vec<String>) -> SectionResult {
    let ort_same = |r: &Run| {
        runs.iter().find(|o| o.tool == "ONNX Runtime" && o.method == r.method && o.repeat == r.repeat)?.seconds()
    };
    let mut rows = Vec::new();
    let mut failed = false;
    for r in runs {
        let label = format!("{} {} ×{}", r.tool, r.method, r.repeat);
        match &r.result {
            Ok((m, samples)) => {
                let speedup = r.tool.starts_with("qforge").then(|| ort_same(r).map(|o| o / m.seconds)).flatten();
                rows.push(vec![
                    label,
                    num(Some(*samples), 0),
                    format!("{:.2}", m.seconds),
                    num(Some(samples / m.seconds), 1),
                    format!("{:.0}", m.peak_mb),
                    speedup.map_or_else(|| "—".into(), |x| format!("{x:.2}×")),
                ]);
            }
            Err(e) => {
                failed = true;
                rows.push(vec![label, "—".into(), format!("FAILED: {e}"), "—".into(), "—".into(), "—".into()]);
            }
        }
    }
    let header = ["tool / method ×repeat", "samples", "seconds", "images/s", "peak RSS MB", "speed-up vs ORT"];
    let mut md = util::markdown_table(&header, &rows);

    let _ = writeln!(md, "\nTargets:\n");
    for r in runs.iter().filter(|r| r.tool.starts_with("qforge") && r.repeat == 1) {
        let speedup = r.seconds().zip(ort_same(r)).map(|(q, o)| o / q);
        let x = speedup.map_or_else(|| "?".into(), |x| format!("{x:.2}×"));
        let target = if r.tool == QFORGE[0].0 {
            verdict(&format!("≥ {MIN_SPEEDUP}×"), speedup.map(|x| x >= MIN_SPEEDUP))
        } else {
            "(reported; the target is the tract engine's)".into()
        };
        let _ = writeln!(md, "- {}: {} {x} end to end vs ONNX Runtime: {target}", r.method, r.tool);
    }
    for tool in [QFORGE[0].0, QFORGE[1].0, "ONNX Runtime"] {
        let qforge = tool.starts_with("qforge");
        for r in runs.iter().filter(|r| r.tool == tool && r.repeat > 1 && (!qforge || r.repeat == repeat)) {
            let same = |rep: usize| runs.iter().find(|b| b.tool == tool && b.method == r.method && b.repeat == rep);
            let base = same(1);
            let growth_from = |b: Option<&Run>| b.and_then(Run::peak).zip(r.peak()).map(|(a, b)| b / a - 1.0);
            let growth = growth_from(base);
            let mb = |x: Option<f64>| num(x, 0);
            let pct = |g: Option<f64>| g.map_or_else(|| "?".into(), |g| format!("{:+.1}%", g * 100.0));
            let steady = match same(STEADY).filter(|_| qforge && repeat > STEADY) {
                Some(s) => {
                    format!("; from ×{STEADY}: {} → {} MB ({})", mb(s.peak()), mb(r.peak()), pct(growth_from(Some(s))))
                }
                None => String::new(),
            };
            let line = format!(
                "- {}: {tool} peak RSS ×1 → ×{} data: {} → {} MB ({}{steady})",
                r.method,
                r.repeat,
                mb(base.and_then(Run::peak)),
                mb(r.peak()),
                pct(growth)
            );
            let _ = if qforge {
                writeln!(
                    md,
                    "{line}: {}",
                    verdict(&format!("< +{:.0}%", MAX_RSS_GROWTH * 100.0), growth.map(|g| g < MAX_RSS_GROWTH))
                )
            } else {
                writeln!(md, "{line} (for comparison)")
            };
        }
    }
    notes.insert(
        0,
        format!(
            "Model {MODEL} (`--input-shape {INPUT_SHAPE}`), every photo of assets/photos in 4 views, the list repeated \
             ×N (`data: {{views: true, repeat: N}}`; ORT: `ort_quant.py --repeat N`, same letterbox and views); \
             ×{repeat} is the memory measurement{}. seconds and peak RSS: the whole process \
             (`/usr/bin/time -f '%e %M'`): \
             qforge `run` of a pipeline holding only `calibrate` (load, calibrate, save), every qforge figure \
             the median of {rounds} rounds (all qforge rows once per round, in turn); ORT, run once: python start, \
             imports, static-shape copy, `quant_pre_process`, `quantize_static` (QDQ, per-channel, symmetric int8) \
             and save. images/s = samples / seconds. ORT calibrators use its defaults (entropy: 128 bins; \
             percentile: 99.999, 2048 bins); qforge: 2048 bins, percentile 99.99.",
            if repeat == REPEAT {
                format!(" (qforge also ×{STEADY}: its first pass over the data grows the heap to its working size)")
            } else {
                " (--quick)".to_string()
            }
        ),
    );
    for n in &notes {
        let _ = write!(md, "\n- {n}");
    }
    md.push('\n');
    SectionResult { markdown: md, failed }
}
