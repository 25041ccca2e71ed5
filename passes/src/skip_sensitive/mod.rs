//! quantized layers => the layers whose quantization hurts the model most back in float, only where that measurably helps.
//!
//! The seed's section 7, made safe and fast. Quantize everything; rank the
//! layers by a cheap local measure (each layer's own output error with its
//! inputs quantized, all layers in one run: [`local`]); measure a shortlist
//! end to end, each layer alone back in float; then add layers greedily in
//! that order, re-measuring the combination each time, and keep a layer in
//! float only if the model with it (and the ones already chosen) scores
//! better than without ([`judge::Judge::better`]) on all samples. A step
//! runs on the screen samples first and is turned down there when it is no
//! better: turning down keeps the model already measured, so it can only
//! cost a layer that would have helped, never make the result worse. Stops at `top_k` layers or
//! once the metric reaches `target`. The result is never worse than the
//! all-quantized model on the pass's own metric: every accepted step was
//! measured to improve it.
//!
//! The float model's outputs come from `calibrate` when it saw the samples,
//! so the float model is not run again; the samples are the held-out split
//! of `calibrate` when it made one, the `data` option's, or else the
//! calibration samples (said in the report).

pub(crate) mod judge;
pub(crate) mod layers;
mod local;
pub(crate) mod partial;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, NodeId};
use qforge_runtime::{Dataset, Engine, HostTensor, Source};

pub use judge::{Judge, Score};
pub use layers::{quantized_layers, to_float};

use crate::calibrate::CalibrationData;
use crate::insert_qdq::FloatReference;
use crate::metric::find_metric;
use crate::model_metric::{Metric, MetricSpec};
use crate::precision::FloatReasons;
use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, Tolerance, register_pass};

/// Options of `skip-sensitive`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SkipSensitive {
    /// At most this many layers go back to float.
    pub top_k: usize,
    /// The quality metric: a registered name (`sqnr`, `cosine`, or one a
    /// plugin registers; `qforge passes` lists them), or the user's own
    /// evaluation (`{command: …}`, `{callback: …}`, see [`MetricSpec`]).
    pub metric: MetricSpec,
    /// Stop once the metric reaches this value.
    pub target: Option<f64>,
    /// Samples the model is judged on.
    pub samples: usize,
    /// Samples of the local measure that ranks layers (cheap: one run each).
    pub local_samples: usize,
    /// Samples each shortlisted layer is first measured on alone (the
    /// first of `samples`); a greedy step runs on them first, is turned
    /// down there when no better, and is accepted only once measured on
    /// all samples. Output metrics only: a model metric judges the file.
    pub screen_samples: usize,
    /// Layers measured end to end (the worst by the local measure); default `2·top_k + 2`.
    pub shortlist: Option<usize>,
    /// Metric differences up to this are ties, broken by output SQNR.
    pub tie: f64,
    /// A folder of photos or `.npy` samples to judge on instead of
    /// `calibrate`'s (preprocessed the same way).
    pub data: Option<PathBuf>,
    /// Write the ranking and the greedy steps as JSON here (relative: beside the output model).
    pub report: Option<PathBuf>,
    /// Also put a skipped layer's weights back in float (default false: the
    /// int8 weights and their DequantizeLinear stay, only the activation
    /// goes float, so every layer keeps per-channel int8 weights).
    pub float_weights: bool,
    /// The engine that runs the trials (default: the run's, `qforge run --engine`).
    pub engine: Option<Engine>,
}

impl Default for SkipSensitive {
    fn default() -> Self {
        SkipSensitive {
            top_k: 3,
            metric: MetricSpec::default(),
            target: None,
            samples: 8,
            local_samples: 4,
            screen_samples: 8,
            shortlist: None,
            tie: 0.002,
            data: None,
            report: None,
            float_weights: false,
            engine: None,
        }
    }
}

impl PassOptions for SkipSensitive {
    const FLOAT_OUTPUTS: bool = true;
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("top_k", "at most this many layers go back to float (default 3)"),
        (
            "metric",
            "quality metric, higher is better: sqnr (default), cosine, a plugin's (`qforge passes` lists them), or your own evaluation: {command: \"python val.py --model {model}\", timeout: SECONDS} runs it on each candidate model and reads the score from the last line it prints; near-ties broken by SQNR",
        ),
        ("target", "stop once the metric reaches this value (default none)"),
        ("samples", "samples the model is judged on (default 8)"),
        ("local_samples", "samples of the local per-layer measure that ranks candidates (default 4)"),
        (
            "screen_samples",
            "samples each shortlisted layer is first measured on alone; a greedy step runs there first and is turned down there when no better; it is accepted only on all samples (default 8)",
        ),
        ("shortlist", "layers measured end to end, the worst by the local measure (default 2*top_k+2)"),
        ("tie", "metric differences up to this are ties, broken by output SQNR (default 0.002)"),
        (
            "data",
            "folder of photos or .npy samples to judge on (default: calibrate's held-out split, else its samples)",
        ),
        ("report", "write the ranking and greedy steps as JSON to this file"),
        ("float_weights", "also put skipped layers' weights back in float (default false: only activations go float)"),
        (
            "engine",
            "auto | tract | ort (ONNX Runtime); default: the run's --engine (auto: ONNX Runtime when found, else tract)",
        ),
    ];
}

register_pass!(
    "skip-sensitive",
    SkipSensitive,
    "quantized layers => the most sensitive back in float, each kept only if the measured model improves"
);

/// A model's outputs, per sample.
type Outputs = Vec<Vec<HostTensor>>;

/// One layer measured end to end, and what the greedy search made of it.
struct Candidate {
    layer: NodeId,
    name: String,
    op: String,
    local_sqnr: f64,
    alone: Score,
    /// The trial's outputs on the samples `alone` was measured on.
    alone_outputs: Outputs,
    /// The combination measured with this layer added, if it was tried.
    combined: Option<Score>,
    /// The samples `combined` was measured on (the screen samples when it
    /// was turned down there).
    combined_samples: usize,
    accepted: bool,
    why: &'static str,
}

/// The samples to judge on, where they come from, and the float outputs on
/// them when `calibrate` kept them.
struct Samples {
    inputs: Vec<HostTensor>,
    from: String,
    reference: Option<Vec<Vec<HostTensor>>>,
}

impl SkipSensitive {
    fn samples(&self, cx: &PassContext) -> Result<Samples, PassError> {
        let cd = cx
            .ext
            .get::<CalibrationData>()
            .ok_or_else(|| PassError::msg("skip-sensitive measures on real samples: run calibrate first"))?;
        let (ds, from, cached) = if let Some(p) = &self.data {
            let npy = p.extension().is_some_and(|e| e == "npy")
                || (p.is_dir()
                    && std::fs::read_dir(p)
                        .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "npy")))
                        .unwrap_or(false));
            let source = if npy { Source::Npy(p.clone()) } else { Source::Images(p.clone()) };
            let ds = Dataset::open(&source, &cd.shape, cd.dataset.preprocess())
                .map_err(|e| PassError::msg(format!("skip-sensitive data: {e}")))?;
            (std::borrow::Cow::Owned(ds), format!("samples of {}", p.display()), false)
        } else if let Some(h) = &cd.holdout {
            (std::borrow::Cow::Borrowed(h), "samples held out of calibration".to_string(), false)
        } else {
            let from = "calibration samples (the ones that set the ranges; calibrate holds some out with >= 32 photos, or set skip-sensitive.data)";
            (std::borrow::Cow::Borrowed(&cd.dataset), from.to_string(), true)
        };
        let n = self.samples.min(ds.len()).max(1);
        let mut inputs = Vec::with_capacity(n);
        let mut reference = Vec::with_capacity(n);
        for i in 0..ds.len() {
            if inputs.len() == n {
                break;
            }
            let Ok(x) = ds.load(i) else { continue };
            inputs.push(x);
            reference.push(if cached { cd.float_outputs.get(i).cloned().flatten() } else { None });
        }
        if inputs.is_empty() {
            return Err(PassError::msg("no usable sample to measure sensitivity on"));
        }
        Ok(Samples { inputs, from, reference: reference.into_iter().collect() })
    }
}

impl Pass for SkipSensitive {
    fn tolerance(&self) -> Tolerance {
        Tolerance::Approximate
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let float = cx
            .ext
            .get::<FloatReference>()
            .map(|f| f.0.clone())
            .ok_or_else(|| PassError::msg("run insert-qdq before skip-sensitive"))?;
        let metric = self.metric.resolve()?;
        let Samples { inputs, from, reference: cached } = self.samples(cx)?;
        let shape = cx.ext.get::<CalibrationData>().map(|c| c.shape.clone()).unwrap_or_default();
        let mut input_shapes = BTreeMap::new();
        if let Some(&i) = g.runtime_inputs().first() {
            input_shapes.insert(g.value_name(i).to_string(), shape);
        }
        let engine = self.engine.unwrap_or(cx.engine);
        let mut r = PassReport::default();
        let reference = match cached {
            Some(c) => c,
            None => judge::run_all(&float, &inputs, Vec::new(), engine, &input_shapes, "skip-sensitive: float model")?,
        };
        let mut judge = Judge { inputs, reference, metric, engine, input_shapes, tie: self.tie };
        let mut clock = Phases::default();
        let layers = quantized_layers(g);
        if layers.is_empty() {
            r.note("no quantized layer: nothing to measure");
            return Ok(r);
        }

        // Local ranking, and the quantized model's outputs on those samples.
        let k = self.local_samples.clamp(1, judge.inputs.len());
        let loc = local::measure(g, &float, &layers, &judge.inputs[..k], engine, &judge.input_shapes)?;
        clock.lap("local measure");

        // Shortlist: the worst layers by the local measure, each as a trial
        // graph with that layer back in float.
        let mut order: Vec<usize> = (0..layers.len()).collect();
        order.sort_by(|&a, &b| loc.sqnr[a].total_cmp(&loc.sqnr[b]).then(a.cmp(&b)));
        let m = self.shortlist.unwrap_or(2 * self.top_k + 2).clamp(1, layers.len());
        let short: Vec<usize> = order[..m].to_vec();
        let trials: Vec<Graph> = short
            .iter()
            .map(|&i| {
                let mut trial = g.clone();
                to_float(&mut trial, layers[i], &float, self.float_weights)?;
                Ok(trial)
            })
            .collect::<Result<_, PassError>>()?;

        // The all-quantized model on every sample, keeping the values the
        // trials read from upstream of their change (see `partial`).
        let mut cached: Vec<String> = Vec::new();
        for (t, &i) in trials.iter().zip(&short) {
            for name in partial::boundary(t, &partial::region(t, &[layers[i]])) {
                if !cached.contains(&name) {
                    cached.push(name);
                }
            }
        }
        let base_run = partial::BaseRun::new(g, &judge, &cached, CACHE_BUDGET)?;
        if !cached.is_empty() && !base_run.cached() {
            r.note(format!(
                "trials run the whole model: caching the {} values they read would take {:.0} MB (> {} MB)",
                cached.len(),
                base_run.bytes as f64 / 1e6,
                CACHE_BUDGET / 1_000_000
            ));
        }
        if base_run.cached() {
            r.note(format!(
                "trials run only what they change, from {} cached values of the all-quantized model ({:.0} MB)",
                cached.len(),
                base_run.bytes as f64 / 1e6
            ));
        }
        let cache = base_run.cached().then_some(&base_run);
        let base_outputs = base_run.graph_outputs();
        clock.lap("all-quantized run");
        // A task metric that cannot judge these samples (e.g. the float model
        // detects nothing) falls back to SQNR rather than failing the pipeline.
        // The user's own evaluation failing is an error, never replaced.
        let base = match judge.score_model(g, &base_outputs) {
            Ok(s) => s,
            Err(e) if matches!(judge.metric, Metric::Outputs(m) if m.name != "sqnr") => {
                r.note(format!("{e}; judging by sqnr instead"));
                judge.metric = Metric::Outputs(
                    find_metric("sqnr").ok_or_else(|| PassError::msg("the sqnr metric is not registered"))?,
                );
                judge.score_model(g, &base_outputs)?
            }
            Err(e) => return Err(e),
        };
        let name = judge.metric.name().to_string();
        r.note(format!(
            "everything quantized: {name} {:.4}, SQNR {:.2} dB on {} {from}",
            base.metric,
            base.sqnr,
            judge.inputs.len()
        ));

        r.note(format!(
            "local measure on {k} sample(s) ranked {} layers; the worst {m} measured end to end (engine {})",
            layers.len(),
            engine.describe()
        ));

        // Layers alone on the first `screen_samples` (a ranking for the
        // greedy order, never a decision: each step is measured on all).
        let n_screen = match judge.metric {
            Metric::Outputs(_) => self.screen_samples.clamp(1, judge.inputs.len()),
            Metric::Model { .. } => judge.inputs.len(),
        };
        // A subset the metric cannot judge (a task metric on samples where
        // the float model finds nothing) is no screen: all samples are used.
        let screen = (n_screen < judge.inputs.len())
            .then(|| judge.subset(n_screen))
            .and_then(|sj| sj.score_model(g, &base_outputs[..n_screen]).ok().map(|b| (sj, b)));
        let (screen, screen_base) = match screen {
            Some((sj, b)) => (Some(sj), b),
            None => (None, base),
        };
        let n_screen = screen.as_ref().map_or(judge.inputs.len(), |sj| sj.inputs.len());
        let screen_judge = screen.as_ref().unwrap_or(&judge);
        if screen.is_some() {
            r.note(format!(
                "layers alone measured on {n_screen} of the {} samples; each greedy step on all",
                judge.inputs.len()
            ));
        }
        let bar = progress(cx.quiet, m as u64, "sensitivity {bar:30} {pos}/{len} layers alone, ETA {eta}");
        // Each trial's outputs on the screen samples are kept (a few hundred
        // KB each): the first greedy step completes them on the other
        // samples instead of running these again.
        let alone: Result<Vec<(Score, Outputs)>, PassError> = short
            .par_iter()
            .zip(&trials)
            .map(|(&i, trial)| {
                crate::interrupt::check()?;
                let outs = judge.trial_outputs(trial, &[layers[i]], cache, 0..n_screen, "skip-sensitive: trial")?;
                let s = screen_judge.score_model(trial, &outs)?;
                bar.inc(1);
                Ok((s, outs))
            })
            .collect();
        drop(trials);
        bar.finish_and_clear();
        clock.lap("layers alone");
        let mut cands: Vec<Candidate> = short
            .iter()
            .zip(alone?)
            .map(|(&i, (s, outs))| Candidate {
                layer: layers[i],
                name: g.node(layers[i]).name().to_string(),
                op: g.node(layers[i]).op_type().to_string(),
                local_sqnr: loc.sqnr[i],
                alone: s,
                alone_outputs: outs,
                combined: None,
                combined_samples: 0,
                accepted: false,
                why: "not reached",
            })
            .collect();
        // Most helpful alone first.
        cands.sort_by(|a, b| b.alone.metric.total_cmp(&a.alone.metric).then(b.alone.sqnr.total_cmp(&a.alone.sqnr)));

        // Greedy forward selection, each step measured.
        let mut current = base;
        // The outputs of the model as it stands (the base, then each accepted step).
        let mut current_outputs: Outputs = base_outputs;
        let mut chosen: Vec<NodeId> = Vec::new();
        let n = judge.inputs.len();
        for c in &mut cands {
            crate::interrupt::check()?;
            if chosen.len() >= self.top_k {
                c.why = "top_k reached";
                continue;
            }
            if self.target.is_some_and(|t| current.metric >= t) {
                c.why = "target reached";
                continue;
            }
            if !screen_judge.better(c.alone, screen_base) {
                c.why = "no better than all-quantized when alone";
                continue;
            }
            let mut trial = g.clone();
            let changed: Vec<NodeId> = chosen.iter().chain([&c.layer]).copied().collect();
            for &l in &changed {
                to_float(&mut trial, l, &float, self.float_weights)?;
            }
            // The first step starts from the layer alone, already run on the
            // screen samples; a later one runs there first, and a
            // combination that is no better there is turned down without
            // the other samples (turning down keeps the measured model).
            let mut prepared = None;
            let mut outs = if chosen.is_empty() {
                std::mem::take(&mut c.alone_outputs)
            } else {
                let p = prepared.insert(judge.prepare(&trial, &changed, cache, "skip-sensitive: combination")?);
                p.outputs(0..n_screen)?
            };
            if let Some(sj) = screen.as_ref().filter(|_| !chosen.is_empty()) {
                let here = sj.score_model(&trial, &outs)?;
                if !sj.better(here, sj.score_model(g, &current_outputs[..n_screen])?) {
                    c.combined = Some(here);
                    c.combined_samples = n_screen;
                    c.why = "the combination is no better on the screen samples";
                    r.note(format!(
                        "tried {} float: {name} {:.4}, SQNR {:.2} dB on the {n_screen} screen samples, no better there (alone {:.4}, {:.2} dB; local SQNR {:.1} dB)",
                        describe(g, c.layer),
                        here.metric,
                        here.sqnr,
                        c.alone.metric,
                        c.alone.sqnr,
                        c.local_sqnr
                    ));
                    continue;
                }
            }
            if n_screen < n {
                let p = match prepared {
                    Some(p) => p,
                    None => judge.prepare(&trial, &changed, cache, "skip-sensitive: all samples")?,
                };
                outs.extend(p.outputs(n_screen..n)?);
            }
            let combined = judge.score_model(&trial, &outs)?;
            c.combined = Some(combined);
            c.combined_samples = n;
            if judge.better(combined, current) {
                c.accepted = true;
                c.why = "improves the model";
                chosen.push(c.layer);
                let why = format!(
                    "sensitive: back in float, {name} {:.4} → {:.4}, SQNR {:.2} → {:.2} dB",
                    current.metric, combined.metric, current.sqnr, combined.sqnr
                );
                FloatReasons::add(cx, &c.name, "skip-sensitive", "sensitivity", why);
                current = combined;
                current_outputs = outs;
            } else {
                c.why = "the combination is no better";
            }
            r.note(format!(
                "{} {} float: {name} {:.4}, SQNR {:.2} dB (alone {:.4}, {:.2} dB; local SQNR {:.1} dB)",
                if c.accepted { "kept" } else { "tried" },
                describe(g, c.layer),
                combined.metric,
                combined.sqnr,
                c.alone.metric,
                c.alone.sqnr,
                c.local_sqnr
            ));
        }
        clock.lap("combinations");
        r.note(clock.summary());
        for &l in &chosen {
            to_float(g, l, &float, self.float_weights)?;
        }
        r.count("layers kept float", chosen.len() as u64);
        crate::util::remove_dead(g, |g, n| g.node(n).is_op("QuantizeLinear") || g.node(n).is_op("DequantizeLinear"));
        r.note(format!(
            "after keeping {} layer(s) float: {name} {:.4}, SQNR {:.2} dB (all quantized: {:.4}, {:.2} dB)",
            chosen.len(),
            current.metric,
            current.sqnr,
            base.metric,
            base.sqnr
        ));
        let mut doc = report_json(&name, &from, base, current, &layers, &loc.sqnr, layer_names(&layers, g), &cands);
        doc["alone_samples"] = serde_json::json!(n_screen);
        if let Some(p) = &self.report {
            let p = match cx.output_path.as_ref().and_then(|o| o.parent()) {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p.clone(),
            };
            crate::calibrate::table::write_atomic(&p, &serde_json::to_string_pretty(&doc).unwrap_or_default())
                .map_err(PassError::msg)?;
        }
        r.publish("sensitivity", doc);
        Ok(r)
    }
}

/// Wall time of the search's phases, for the report: where the time goes
/// is what a user tunes (`samples`, `shortlist`, `engine`).
struct Phases {
    last: std::time::Instant,
    laps: Vec<(&'static str, f64)>,
}

impl Default for Phases {
    fn default() -> Self {
        Phases { last: std::time::Instant::now(), laps: Vec::new() }
    }
}

impl Phases {
    fn lap(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((what, (now - self.last).as_secs_f64()));
        self.last = now;
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self.laps.iter().map(|(w, s)| format!("{w} {s:.2} s")).collect();
        format!("time: {}", parts.join(", "))
    }
}

/// Most bytes of base-model values kept for downstream-only trials, over all samples.
const CACHE_BUDGET: usize = 768_000_000;

fn progress(quiet: bool, len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(len) };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// (name, op) of each layer of the quantized graph.
fn layer_names(layers: &[NodeId], g: &Graph) -> Vec<(String, String)> {
    layers.iter().map(|&l| (g.node(l).name().to_string(), g.node(l).op_type().to_string())).collect()
}

#[allow(clippy::too_many_arguments)]
fn report_json(
    metric: &str,
    from: &str,
    base: Score,
    last: Score,
    layers: &[NodeId],
    local: &[f64],
    names: Vec<(String, String)>,
    cands: &[Candidate],
) -> serde_json::Value {
    let score = |s: Score| serde_json::json!({ "metric": s.metric, "sqnr_db": s.sqnr });
    let ranking: Vec<serde_json::Value> = layers
        .iter()
        .zip(local)
        .zip(names)
        .map(|((_, &l), (name, op))| serde_json::json!({ "node": name, "op": op, "local_sqnr_db": l }))
        .collect();
    let steps: Vec<serde_json::Value> = cands
        .iter()
        .map(|c| {
            serde_json::json!({
                "node": c.name,
                "op": c.op,
                "local_sqnr_db": c.local_sqnr,
                "alone": score(c.alone),
                "combined": c.combined.map(score),
                "combined_samples": c.combined_samples,
                "accepted": c.accepted,
                "why": c.why,
            })
        })
        .collect();
    serde_json::json!({
        "metric": metric,
        "samples": from,
        "all_quantized": score(base),
        "final": score(last),
        "local_ranking": ranking,
        "steps": steps,
    })
}
