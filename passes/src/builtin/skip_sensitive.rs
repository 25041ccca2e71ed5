//! quantized layers => the k layers whose quantization hurts the output most, back in float (Q/DQ removed).
//!
//! The seed's section 7: quantize everything, then for each quantized layer
//! measure the model with only that layer back in float, rank the layers by
//! how much that recovers, and keep the worst offenders in float. The metric
//! here is the SQNR of the graph outputs against the float model
//! (`10·log10(Σy² / Σ(y − ŷ)²)` over the calibration samples), computed with
//! the runtime on the samples `calibrate` used. A layer is a weighted op or
//! residual Add whose inputs come from DequantizeLinear.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, Model, NodeId, ValueId};
use qforge_runtime::{HostTensor, SessionOptions};

use crate::qdq_rules::{WEIGHTED_OPS, is_residual_add};
use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, Tolerance, register_pass};

/// Options of `skip-sensitive`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SkipSensitive {
    /// Layers to keep in float (the most sensitive first).
    pub top_k: usize,
    /// Stop skipping once the output SQNR reaches this many dB (then `top_k` is the cap).
    pub target_sqnr_db: Option<f64>,
    /// Calibration samples used for the measurement.
    pub samples: usize,
    /// Write the full ranking as JSON here (relative: beside the output model).
    pub report: Option<std::path::PathBuf>,
}

impl Default for SkipSensitive {
    fn default() -> Self {
        SkipSensitive { top_k: 3, target_sqnr_db: None, samples: 8, report: None }
    }
}

impl PassOptions for SkipSensitive {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("top_k", "layers to keep in float, most sensitive first (default 3)"),
        ("target_sqnr_db", "stop once the output SQNR vs float reaches this (top_k is then the cap; default none)"),
        ("samples", "calibration samples used to measure (default 8)"),
        ("report", "write the sensitivity ranking as JSON to this file"),
    ];
}

register_pass!(
    "skip-sensitive",
    SkipSensitive,
    "quantized layers => the top-k most sensitive (by output SQNR) back in float"
);

fn runtime(context: &str) -> impl Fn(qforge_runtime::RuntimeError) -> PassError + '_ {
    move |source| PassError::Runtime { context: context.to_string(), source }
}

/// Outputs of `g` on each sample.
fn outputs(g: &Graph, inputs: &[HostTensor], shape: &[usize], what: &str) -> Result<Vec<Vec<HostTensor>>, PassError> {
    let mut shapes = std::collections::BTreeMap::new();
    if let Some(&i) = g.runtime_inputs().first() {
        shapes.insert(g.value_name(i).to_string(), shape.to_vec());
    }
    let s =
        qforge_runtime::session(&Model::new(g.clone()), &SessionOptions { outputs: Vec::new(), input_shapes: shapes })
            .map_err(runtime(what))?;
    inputs.iter().map(|x| s.run(std::slice::from_ref(x)).map_err(runtime(what))).collect()
}

/// SQNR in dB of `test` against `reference`, over all samples and outputs.
pub fn sqnr_db(reference: &[Vec<HostTensor>], test: &[Vec<HostTensor>]) -> f64 {
    let (mut sig, mut noise) = (0.0f64, 0.0f64);
    for (a, b) in reference.iter().zip(test) {
        for (x, y) in a.iter().zip(b) {
            for (p, q) in x.to_f64_vec().into_iter().zip(y.to_f64_vec()) {
                sig += p * p;
                noise += (p - q) * (p - q);
            }
        }
    }
    if noise == 0.0 { f64::INFINITY } else { 10.0 * (sig / noise).log10() }
}

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

/// Rewires `n` to read float inputs: an activation DQ(Q(x)) becomes x, a
/// quantized weight becomes the float weight of the reference graph.
fn to_float(g: &mut Graph, n: NodeId, float: &Graph) -> Result<(), PassError> {
    let inputs: Vec<Option<ValueId>> = g.node(n).inputs().to_vec();
    for (slot, v) in inputs.into_iter().enumerate() {
        let Some(v) = v else { continue };
        let Some(d) = g.producer_node(v).filter(|&d| g.node(d).is_op("DequantizeLinear")) else { continue };
        let src = g.node(d).input(0);
        if let Some(q) = src.and_then(|s| g.producer_node(s)).filter(|&q| g.node(q).is_op("QuantizeLinear")) {
            let x = g.node(q).input(0);
            g.set_input(n, slot, x);
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

/// Removes Q/DQ nodes (and their constants) that nothing reads any more.
fn sweep(g: &mut Graph) {
    loop {
        let dead: Vec<NodeId> = g
            .nodes()
            .filter(|&n| {
                let node = g.node(n);
                (node.is_op("QuantizeLinear") || node.is_op("DequantizeLinear"))
                    && node.outputs().iter().flatten().all(|&v| g.reader_count(v) == 0)
            })
            .collect();
        if dead.is_empty() {
            return;
        }
        for n in dead {
            let outs: Vec<ValueId> = g.node(n).outputs().iter().flatten().copied().collect();
            let ins: Vec<ValueId> = g.node(n).inputs().iter().flatten().copied().collect();
            g.remove_node(n);
            for v in outs {
                let _ = g.remove_value(v);
            }
            crate::util::remove_if_unused(g, ins);
        }
    }
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
        let reference = outputs(&float, &inputs, &shape, "skip-sensitive: float model")?;
        let base = sqnr_db(&reference, &outputs(g, &inputs, &shape, "skip-sensitive: quantized model")?);
        let layers = quantized_layers(g);
        let bar =
            if cx.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(layers.len() as u64) };
        bar.set_style(
            indicatif::ProgressStyle::with_template("sensitivity {bar:30} {pos}/{len} layers, ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut ranking: Vec<(NodeId, f64)> = Vec::with_capacity(layers.len());
        for &l in &layers {
            let mut trial = g.clone();
            to_float(&mut trial, l, &float)?;
            let s = sqnr_db(&reference, &outputs(&trial, &inputs, &shape, "skip-sensitive: trial")?);
            ranking.push((l, s));
            bar.inc(1);
        }
        bar.finish_and_clear();
        // Most sensitive first: the layer whose float version recovers the most.
        ranking.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut r = PassReport::default();
        r.note(format!("output SQNR vs float with everything quantized: {base:.2} dB on {} samples", inputs.len()));
        let mut skipped: HashSet<NodeId> = HashSet::new();
        let mut current = base;
        for &(l, s) in ranking.iter().take(self.top_k) {
            if self.target_sqnr_db.is_some_and(|t| current >= t) {
                break;
            }
            to_float(g, l, &float)?;
            skipped.insert(l);
            r.count("layers kept float", 1);
            r.note(format!("kept {} float (alone: {s:.2} dB, +{:.2})", describe(g, l), s - base));
            current = sqnr_db(&reference, &outputs(g, &inputs, &shape, "skip-sensitive: result")?);
        }
        sweep(g);
        r.note(format!("output SQNR vs float after skipping {}: {current:.2} dB", skipped.len()));
        if let Some(p) = &self.report {
            let p = match cx.output_path.as_ref().and_then(|o| o.parent()) {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p.clone(),
            };
            let rows: Vec<serde_json::Value> = ranking
                .iter()
                .map(|&(l, s)| {
                    let name = float.node(l).name().to_string();
                    serde_json::json!({ "node": name, "op": float.node(l).op_type(), "sqnr_db_if_float": s, "gain_db": s - base, "kept_float": skipped.contains(&l) })
                })
                .collect();
            let doc = serde_json::json!({ "metric": "output SQNR vs float (dB)", "all_quantized_db": base, "final_db": current, "layers": rows });
            crate::calibrate::table::write_atomic(&p, &serde_json::to_string_pretty(&doc).unwrap_or_default())
                .map_err(PassError::msg)?;
        }
        Ok(r)
    }
}
