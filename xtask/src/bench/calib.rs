//! Section `calib`: calibration throughput and memory, qforge vs ONNX Runtime's
//! `quantize_static`, on nudenet-320n with 4 views of every photo, and with the data repeated.

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
/// Targets: end-to-end speed-up over ONNX Runtime, peak RSS growth with the repeated data.
const MIN_SPEEDUP: f64 = 3.0;
const MAX_RSS_GROWTH: f64 = 0.10;
/// ONNX Runtime's repeated run is skipped unless its projected peak (1× peak × factor) fits in
/// this share of the available memory (its histogram calibrators keep every sample's outputs).
const MEM_SHARE: f64 = 0.6;
/// qforge's rows: (label, `--engine`). The speed target is the tract engine's
/// (the default); the ONNX Runtime engine's figure is reported beside it.
const QFORGE: [(&str, &str); 2] = [("qforge", "tract"), ("qforge --engine ort", "ort")];

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
    let methods: &[&'static str] = if quick { &["entropy"] } else { &["entropy", "percentile"] };
    let model = measure::model(ctx, MODEL)?;
    let mut runs: Vec<Run> = Vec::new();
    let mut notes = Vec::new();
    let mut ort_version = None;

    for &method in methods {
        for (tool, engine, rep) in QFORGE.iter().flat_map(|&(t, e)| [(t, e, 1), (t, e, repeat)]) {
            let data = format!("{{views: true, repeat: {rep}}}");
            let yaml = format!("name: bench-calib\npasses:\n  - calibrate: {{method: {method}, data: {data}}}\n");
            let name = format!("calib-{method}-{engine}-x{rep}");
            let result = measure::pipeline(ctx, &name, &yaml).and_then(|pipe| {
                let out = ctx.scratch.join(format!("{name}.onnx"));
                let (m, report) =
                    measure::qforge_run(ctx, &pipe, &model, &out, &["--input-shape", INPUT_SHAPE, "--engine", engine])?;
                let samples = measure::report_counter(&report, "calibrate", "samples").unwrap_or(f64::NAN);
                if let Some(s) = measure::report_seconds(&report, "calibrate") {
                    notes.push(format!(
                        "{tool} {method} ×{rep}: the calibrate pass alone took {s:.2} s ({:.1} samples/s)",
                        samples / s
                    ));
                }
                Ok((m, samples))
            });
            runs.push(Run { tool, method, repeat: rep, result });
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
    Ok(table(&runs, repeat, notes))
}

/// The markdown: table, targets, notes.
fn table(runs: &[Run], repeat: usize, mut notes: Vec<String>) -> SectionResult {
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
            "(reported; the target is the default tract engine's)".into()
        };
        let _ = writeln!(md, "- {}: {} {x} end to end vs ONNX Runtime: {target}", r.method, r.tool);
    }
    for tool in [QFORGE[0].0, QFORGE[1].0, "ONNX Runtime"] {
        for r in runs.iter().filter(|r| r.tool == tool && r.repeat > 1) {
            let base = runs.iter().find(|b| b.tool == tool && b.method == r.method && b.repeat == 1);
            let growth = base.and_then(Run::peak).zip(r.peak()).map(|(a, b)| b / a - 1.0);
            let mb = |x: Option<f64>| num(x, 0);
            let line = format!(
                "- {}: {tool} peak RSS ×1 → ×{} data: {} → {} MB ({})",
                r.method,
                r.repeat,
                mb(base.and_then(Run::peak)),
                mb(r.peak()),
                growth.map_or_else(|| "?".into(), |g| format!("{:+.1}%", g * 100.0))
            );
            let _ = if tool.starts_with("qforge") {
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
             qforge `run` of a pipeline holding only `calibrate` (load, calibrate, save); ORT: python start, \
             imports, static-shape copy, `quant_pre_process`, `quantize_static` (QDQ, per-channel, symmetric int8) \
             and save. images/s = samples / seconds. ORT calibrators use its defaults (entropy: 128 bins; \
             percentile: 99.999, 2048 bins); qforge: 2048 bins, percentile 99.99.",
            if repeat == REPEAT { "" } else { " (--quick)" }
        ),
    );
    for n in &notes {
        let _ = write!(md, "\n- {n}");
    }
    md.push('\n');
    SectionResult { markdown: md, failed }
}
