//! quantized layers => the k layers whose quantization hurts the output most, back in float (Q/DQ removed).
//!
//! The seed's section 7: quantize everything, then for each quantized layer
//! measure the model with only that layer back in float, rank the layers by
//! how much that recovers, and keep the worst offenders in float. The metric
//! here is the SQNR of the graph outputs against the float model
//! (`10·log10(Σy² / Σ(y − ŷ)²)` over the calibration samples), computed with
//! the runtime on the samples `calibrate` used, or any registered metric
//! (qforge-yolo's `yolo-map50` judges detections). Ties are broken by SQNR.
//! A layer is a weighted op or residual Add whose inputs come from
//! DequantizeLinear.

use std::collections::HashSet;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, Model, NodeId, ValueId};
use qforge_runtime::{Engine, HostTensor, SessionOptions};

use crate::metric::{all_metrics, find_metric, sqnr_db};
use crate::qdq_rules::{WEIGHTED_OPS, is_residual_add};
use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, Tolerance, register_pass};

/// Options of `skip-sensitive`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SkipSensitive {
    /// Layers to keep in float (the most sensitive first).
    pub top_k: usize,
    /// The quality metric (a registered name: `sqnr`, `cosine`, plugin metrics such as `yolo-map50`).
    pub metric: String,
    /// Stop skipping once the metric reaches this value (then `top_k` is the cap).
    pub target: Option<f64>,
    /// Calibration samples used for the measurement.
    pub samples: usize,
    /// Write the full ranking as JSON here (relative: beside the output model).
    pub report: Option<std::path::PathBuf>,
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
            metric: "sqnr".into(),
            target: None,
            samples: 8,
            report: None,
            float_weights: false,
            engine: None,
        }
    }
}

impl PassOptions for SkipSensitive {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("top_k", "layers to keep in float, most sensitive first (default 3)"),
        (
            "metric",
            "quality metric, higher is better: sqnr (default), cosine, or a plugin's (yolo-map50); ties broken by SQNR",
        ),
        ("target", "stop once the metric reaches this value (top_k is then the cap; default none)"),
        ("samples", "calibration samples used to measure (default 8)"),
        ("report", "write the sensitivity ranking as JSON to this file"),
        ("float_weights", "also put skipped layers' weights back in float (default false: only activations go float)"),
        ("engine", "tract | ort (ONNX Runtime; build with --features ort); default: the run's --engine (tract)"),
    ];
}

register_pass!(
    "skip-sensitive",
    SkipSensitive,
    "quantized layers => the top-k most sensitive (by a quality metric vs float) back in float"
);

fn runtime(context: &str) -> impl Fn(qforge_runtime::RuntimeError) -> PassError + '_ {
    move |source| PassError::Runtime { context: context.to_string(), source }
}

/// Outputs of `g` on each sample.
fn outputs(g: &Graph, inputs: &[HostTensor], run: &Run, what: &str) -> Result<Vec<Vec<HostTensor>>, PassError> {
    let mut shapes = std::collections::BTreeMap::new();
    if let Some(&i) = g.runtime_inputs().first() {
        shapes.insert(g.value_name(i).to_string(), run.shape.to_vec());
    }
    let opts = SessionOptions { outputs: Vec::new(), input_shapes: shapes, engine: run.engine };
    let s = qforge_runtime::session(&Model::new(g.clone()), &opts).map_err(runtime(what))?;
    inputs.iter().map(|x| s.run(std::slice::from_ref(x)).map_err(runtime(what))).collect()
}

/// How the model is run: input shape and engine.
struct Run<'a> {
    shape: &'a [usize],
    engine: Engine,
}

/// A layer and its (metric, SQNR) with it in float.
type Ranked = (NodeId, (f64, f64));

/// Quantized layers: nodes with an input read through DequantizeLinear.
fn quantized_layers(g: &Graph) -> Vec<NodeId> {
    g.nodes()
        .filter(|&n| {
            let node = g.node(n);
            (WEIGHTED_OPS.contains(&node.op_type()) || is_residual_add(g, n))
                && node
                    .inputs()
                    .iter()
                    .flatten()
                    .any(|&v| g.producer_node(v).is_some_and(|p| g.node(p).is_op("DequantizeLinear")))
        })
        .collect()
}

/// Rewires `n` to read float inputs: an activation DQ(Q(x)) becomes x; with
/// `weights`, a quantized weight becomes the float weight of the reference graph.
fn to_float(g: &mut Graph, n: NodeId, float: &Graph, weights: bool) -> Result<(), PassError> {
    let inputs: Vec<Option<ValueId>> = g.node(n).inputs().to_vec();
    for (slot, v) in inputs.into_iter().enumerate() {
        let Some(v) = v else { continue };
        let Some(d) = g.producer_node(v).filter(|&d| g.node(d).is_op("DequantizeLinear")) else { continue };
        let src = g.node(d).input(0);
        if let Some(q) = src.and_then(|s| g.producer_node(s)).filter(|&q| g.node(q).is_op("QuantizeLinear")) {
            let x = g.node(q).input(0);
            g.set_input(n, slot, x);
        } else if !weights {
            continue;
        } else if float.contains_node(n)
            && let Some(fw) = float.node(n).input(slot)
            && let Some(t) = float.constant(fw)
        {
            let w = g.add_initializer(float.value_name(fw), t);
            g.set_input(n, slot, Some(w));
        } else {
            return Err(PassError::msg(format!("{}: cannot find the float weight of input {slot}", describe(g, n))));
        }
    }
    Ok(())
}

impl Pass for SkipSensitive {
    fn tolerance(&self) -> Tolerance {
        Tolerance::Approximate
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let float = cx.float_graph.clone().ok_or_else(|| PassError::msg("run insert-qdq before skip-sensitive"))?;
        let (data, shape) = cx
            .calibration_data
            .clone()
            .ok_or_else(|| PassError::msg("skip-sensitive measures on the calibration samples: run calibrate first"))?;
        let n = self.samples.min(data.len()).max(1);
        let inputs: Vec<HostTensor> = (0..n).filter_map(|i| data.load(i).ok()).collect();
        if inputs.is_empty() {
            return Err(PassError::msg("no usable calibration sample to measure sensitivity on"));
        }
        let metric = find_metric(&self.metric).ok_or_else(|| {
            let names: Vec<&str> = all_metrics().iter().map(|m| m.name).collect();
            PassError::msg(format!("unknown metric `{}` (metrics: {})", self.metric, names.join(", ")))
        })?;
        let run = Run { shape: &shape, engine: self.engine.unwrap_or(cx.engine) };
        let reference = outputs(&float, &inputs, &run, "skip-sensitive: float model")?;
        let quantized = outputs(g, &inputs, &run, "skip-sensitive: quantized model")?;
        let mut r = PassReport::default();
        // A task metric that cannot judge these samples (e.g. the float model
        // detects nothing) falls back to SQNR rather than failing the pipeline.
        let metric = match (metric.score)(&reference, &quantized) {
            Ok(_) => metric,
            Err(e) if metric.name != "sqnr" => {
                r.note(format!("metric {} is unusable here ({e}); ranking by sqnr instead", metric.name));
                find_metric("sqnr").ok_or_else(|| PassError::msg("the sqnr metric is not registered"))?
            }
            Err(e) => return Err(PassError::msg(e)),
        };
        // (metric, SQNR): the metric ranks, SQNR breaks ties.
        let score = |test: &[Vec<HostTensor>]| -> Result<(f64, f64), PassError> {
            let m =
                (metric.score)(&reference, test).map_err(|e| PassError::msg(format!("metric {}: {e}", metric.name)))?;
            Ok((m, sqnr_db(&reference, test)))
        };
        let base = score(&quantized)?;
        let layers = quantized_layers(g);
        let bar =
            if cx.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(layers.len() as u64) };
        bar.set_style(
            indicatif::ProgressStyle::with_template("sensitivity {bar:30} {pos}/{len} layers, ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        // Trials are independent: one per core, each with its own session.
        let trials: Result<Vec<Ranked>, PassError> = layers
            .par_iter()
            .map(|&l| {
                let mut trial = g.clone();
                to_float(&mut trial, l, &float, self.float_weights)?;
                let s = score(&outputs(&trial, &inputs, &run, "skip-sensitive: trial")?)?;
                bar.inc(1);
                Ok((l, s))
            })
            .collect();
        let mut ranking = trials?;
        bar.finish_and_clear();
        // Most sensitive first: the layer whose float version recovers the most.
        ranking.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then(b.1.1.total_cmp(&a.1.1)).then(a.0.cmp(&b.0)));
        let name = metric.name;
        r.note(format!(
            "everything quantized: {name} {:.4}, SQNR {:.2} dB on {} samples",
            base.0,
            base.1,
            inputs.len()
        ));
        let mut skipped: HashSet<NodeId> = HashSet::new();
        let mut current = base;
        for &(l, s) in ranking.iter().take(self.top_k) {
            if self.target.is_some_and(|t| current.0 >= t) {
                break;
            }
            to_float(g, l, &float, self.float_weights)?;
            skipped.insert(l);
            r.count("layers kept float", 1);
            r.note(format!("kept {} float (alone: {name} {:.4}, SQNR {:.2} dB)", describe(g, l), s.0, s.1));
            current = score(&outputs(g, &inputs, &run, "skip-sensitive: result")?)?;
        }
        crate::util::remove_dead(g, |g, n| g.node(n).is_op("QuantizeLinear") || g.node(n).is_op("DequantizeLinear"));
        r.note(format!(
            "after keeping {} layer(s) float: {name} {:.4}, SQNR {:.2} dB",
            skipped.len(),
            current.0,
            current.1
        ));
        if let Some(p) = &self.report {
            let p = match cx.output_path.as_ref().and_then(|o| o.parent()) {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p.clone(),
            };
            let rows: Vec<serde_json::Value> = ranking
                .iter()
                .map(|&(l, s)| {
                    serde_json::json!({
                        "node": g.node(l).name(),
                        "op": g.node(l).op_type(),
                        "metric_if_float": s.0,
                        "sqnr_db_if_float": s.1,
                        "kept_float": skipped.contains(&l),
                    })
                })
                .collect();
            let doc = serde_json::json!({
                "metric": name,
                "all_quantized": { "metric": base.0, "sqnr_db": base.1 },
                "final": { "metric": current.0, "sqnr_db": current.1 },
                "layers": rows,
            });
            crate::calibrate::table::write_atomic(&p, &serde_json::to_string_pretty(&doc).unwrap_or_default())
                .map_err(PassError::msg)?;
        }
        Ok(r)
    }
}
