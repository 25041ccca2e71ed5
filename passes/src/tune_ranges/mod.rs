//! DQ(Q(%x, amax/127)) => DQ(Q(%x, amax'/127)), amax' the candidate range whose error at the detector's outputs is least.
//!
//! `tune-ranges`: each activation's INT8 range chosen by the error it causes
//! downstream, not by its own histogram alone.
//!
//! Why: no calibrator wins on a detector. Ranges that clip (MSE, percentile)
//! give each tensor less rounding noise, but a few rare large activations
//! carry the confident class scores, and clipping them loses detections;
//! `max` keeps them everywhere and wastes codes on every tensor where the
//! tail does not matter. Which one is right differs per tensor, and only the
//! tensor's effect on what follows can tell.
//!
//! So, after `insert-qdq` (in `yolo-int8`, after `skip-sensitive`), for
//! every group of activations that share a scale (one tensor, or the inputs
//! and output of a Concat/MaxPool/Resize):
//!
//! 1. Candidates come from the group's merged calibration histogram: the
//!    ranges of `max`, `percentile` 99.99, `mse` and `entropy`, the range the
//!    group has now, and the geometric midpoint of each neighbouring pair
//!    ([`candidates`]).
//! 2. The model's outputs judge them, with boxes and scores weighed as
//!    equals whatever their magnitudes ([`output`]): a score error must count
//!    as much as a box error, which an SQNR dominated by pixel coordinates
//!    cannot see. Groups are taken one at a time from the input to the
//!    output, each on the model with every choice made so far; from the
//!    current range, candidates are tried outwards while the error falls,
//!    and one is taken only if it lowers the error. A trial runs only the
//!    part of the model downstream of the group, with the scale as an input,
//!    so one prepared trial serves every candidate.
//! 3. Where that would cost more than `budget` (in runs of the whole model
//!    per sample; groups nearest the head are the cheapest and go first),
//!    a group is judged by the error it causes at the layers that read it
//!    instead, everything upstream quantized as deployed, weighted by the
//!    size of the activation it lands on ([`local`]): one graph measures
//!    every candidate of every group. It is the cheaper and the weaker
//!    measure: the error that matters is concentrated where activations
//!    are large and sparse (objects), and clipping errors there add up
//!    downstream in a way no single layer shows.
//!
//! The samples are spread over the calibration set (four views of one photo
//! are one photo). The pass measures its result against the ranges it was
//! given on the same samples and keeps them only if the output error is
//! lower, so it never writes a model its own measure says is worse.

mod candidates;
mod local;
mod output;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, NodeId, Tensor, ValueId};
use qforge_runtime::{Engine, HostTensor};

use crate::calibrate::CalibrationData;
use crate::calibrate::table::{CalibrationTable, int8_scale};
use crate::insert_qdq::FloatReference;
use crate::insert_qdq::placement::Groups;
use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, Tolerance, register_pass};

pub use candidates::{Candidate, candidates};
pub use output::{OutputError, output_error};

/// Options of `tune-ranges`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuneRanges {
    /// Calibration samples the errors are measured on.
    pub samples: usize,
    /// Candidates per group (besides its current range) measured on the
    /// model's outputs, the best ones by the layer error; 0: all.
    pub shortlist: usize,
    /// How much output measuring the pass may do, in runs of the whole
    /// model per sample: groups are judged on the outputs cheapest first
    /// (those nearest the head, whose trials run the least of the model)
    /// while their trials fit; the others by their layer error alone.
    pub budget: f64,
    /// Geometric midpoints added between neighbouring candidates.
    pub grid: usize,
    /// Engine that runs the models (default: the run's `--engine`).
    pub engine: Option<Engine>,
}

impl Default for TuneRanges {
    fn default() -> Self {
        TuneRanges { samples: 8, shortlist: 0, budget: 1000.0, grid: 1, engine: None }
    }
}

impl PassOptions for TuneRanges {
    const FLOAT_OUTPUTS: bool = true;
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("samples", "calibration samples the candidates are measured on (default 8)"),
        (
            "shortlist",
            "candidate ranges per group, besides its current one, that may be measured on the model outputs (the best by layer error; default 0: all)",
        ),
        (
            "budget",
            "output measuring allowed, in whole-model runs per sample, counting one trial per candidate; groups nearest the head first, the rest judged by layer error (default 1000: all on most models; 0: layer error only)",
        ),
        ("grid", "geometric midpoints added between neighbouring candidate ranges (default 1)"),
        ("engine", "tract | ort | auto (default: the run's --engine)"),
    ];
}

register_pass!(
    "tune-ranges",
    TuneRanges,
    "DQ(Q(%x, s)) => DQ(Q(%x, s')) with s' the candidate range whose downstream error (consuming layers, or the outputs near the head) is least"
);

/// Activations that share one scale, as `insert-qdq` left them.
#[derive(Debug, Clone)]
pub struct Group {
    /// The activation `QuantizeLinear` nodes of the group.
    pub quantizers: Vec<NodeId>,
    /// The activations they quantize.
    pub values: Vec<ValueId>,
    /// The range they have now.
    pub amax: f32,
}

/// The scalar float32 scale a per-tensor `QuantizeLinear` reads, if it is one.
fn scalar_scale(g: &Graph, q: NodeId) -> Option<f32> {
    let s = g.node(q).input(1)?;
    let t = g.initializer(s)?;
    (t.dims().iter().product::<i64>() == 1).then_some(())?;
    t.to_f32_vec().ok()?.first().copied()
}

/// The activation quantizers of `g`, grouped as `insert-qdq` shared their
/// scales: tensors joined by a scale-sharing op in the float model that got
/// the same scale (two tensors joined through a node `insert-qdq` left out
/// keep their own scales, and stay apart here).
pub fn groups(g: &Graph, float: &Graph) -> Vec<Group> {
    let mut joined = Groups::new(float, &HashSet::new());
    let mut by_key: BTreeMap<(String, u32), Group> = BTreeMap::new();
    for q in g.nodes().filter(|&n| g.node(n).is_op("QuantizeLinear")) {
        let Some(x) = g.node(q).input(0) else { continue };
        if g.initializer(x).is_some() {
            continue;
        }
        let Some(scale) = scalar_scale(g, q) else { continue };
        let root = float
            .find_value(g.value_name(x))
            .and_then(|v| joined.members(v).first().copied())
            .map_or_else(|| g.value_name(x).to_string(), |r| float.value_name(r).to_string());
        let e = by_key.entry((root, scale.to_bits())).or_insert_with(|| Group {
            quantizers: Vec::new(),
            values: Vec::new(),
            amax: scale * 127.0,
        });
        e.quantizers.push(q);
        if !e.values.contains(&x) {
            e.values.push(x);
        }
    }
    let order: HashMap<NodeId, usize> = g.nodes().enumerate().map(|(i, n)| (n, i)).collect();
    let mut out: Vec<Group> = by_key.into_values().collect();
    out.sort_by_key(|gr| gr.quantizers.iter().map(|q| order[q]).min());
    out
}

/// Sets the range of every quantizer of `group` (and its DequantizeLinear
/// readers) to `amax`, giving the group its own scale initializers.
pub fn set_range(g: &mut Graph, group: &Group, amax: f32) -> Result<(), PassError> {
    let scale = int8_scale(amax);
    for &q in &group.quantizers {
        let s = g.node(q).input(1).ok_or_else(|| PassError::msg(format!("{}: no scale", describe(g, q))))?;
        let readers = g.reader_count(s);
        let dqs: Vec<NodeId> = g
            .node(q)
            .output(0)
            .map(|o| g.users(o))
            .unwrap_or_default()
            .into_iter()
            .filter(|&d| g.node(d).is_op("DequantizeLinear") && g.node(d).input(1) == Some(s))
            .collect();
        if readers == 1 + dqs.len() {
            g.set_initializer(s, Tensor::scalar(scale)).map_err(|e| PassError::ir("tune-ranges", e))?;
        } else {
            let hint = format!("{}_scale", g.value_name(g.node(q).input(0).unwrap_or(s)));
            let new = g.add_initializer(&hint, Tensor::scalar(scale));
            g.set_input(q, 1, Some(new));
            for d in dqs {
                g.set_input(d, 1, Some(new));
            }
        }
    }
    Ok(())
}

/// Number of quantized weighted layers in the part of `g` downstream of `nodes`.
fn layers_downstream(g: &Graph, nodes: &[NodeId], layers: &HashSet<NodeId>) -> usize {
    crate::skip_sensitive::partial::downstream(g, nodes).iter().filter(|n| layers.contains(n)).count()
}

/// `n` calibration samples spread evenly over the data set, and the float
/// model's outputs on them.
///
/// Spread, not the first `n`: with four views per photo the first eight
/// samples are two photos, and ranges fitted to two photos were measured
/// to lose output SQNR on the others (nudenet, the whole pipeline: 33.3 dB
/// on all views against 35.1 dB untuned).
fn samples(
    cd: &CalibrationData,
    n: usize,
    float: &Graph,
    engine: Engine,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<(Vec<HostTensor>, Vec<Vec<HostTensor>>), PassError> {
    let len = cd.dataset.len();
    let n = n.max(1).min(len);
    let mut inputs = Vec::new();
    let mut kept = Vec::new();
    for k in 0..n {
        let i = k * len / n;
        let Ok(x) = cd.dataset.load(i) else { continue };
        inputs.push(x);
        kept.push(cd.float_outputs.get(i).cloned().flatten());
    }
    if inputs.is_empty() {
        return Err(PassError::msg("tune-ranges: no usable calibration sample"));
    }
    let reference = match kept.into_iter().collect::<Option<Vec<_>>>() {
        Some(r) => r,
        None => crate::skip_sensitive::judge::run_all(
            float,
            &inputs,
            Vec::new(),
            engine,
            shapes,
            "tune-ranges: float model",
        )?,
    };
    Ok((inputs, reference))
}

impl Pass for TuneRanges {
    fn tolerance(&self) -> Tolerance {
        Tolerance::Approximate
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let float =
            cx.ext.get::<FloatReference>().map(|f| f.0.clone()).ok_or_else(|| {
                PassError::msg("run insert-qdq before tune-ranges (it compares with the float model)")
            })?;
        let table = cx
            .ext
            .get::<CalibrationTable>()
            .cloned()
            .ok_or_else(|| PassError::msg("tune-ranges needs calibration histograms: run calibrate first"))?;
        let cd = cx
            .ext
            .get::<CalibrationData>()
            .ok_or_else(|| PassError::msg("tune-ranges measures on calibration samples: run calibrate first"))?;
        let mut r = PassReport::default();
        let groups = groups(g, &float);
        if groups.is_empty() {
            r.note("no per-tensor activation Q/DQ: nothing to tune");
            return Ok(r);
        }
        let mut shapes = BTreeMap::new();
        if let Some(&i) = g.runtime_inputs().first() {
            shapes.insert(g.value_name(i).to_string(), cd.shape.clone());
        }
        let engine = self.engine.unwrap_or(cx.engine);
        let (inputs, reference) = samples(cd, self.samples, &float, engine, &shapes)?;
        let cands: Vec<Vec<Candidate>> = groups.iter().map(|gr| candidates(&table, gr, self.grid)).collect();
        let started = std::time::Instant::now();

        let multi: Vec<usize> = (0..groups.len()).filter(|&i| cands[i].len() > 1).collect();
        let tried = |i: usize| match self.shortlist {
            0 => cands[i].len() - 1,
            n => n.min(cands[i].len() - 1),
        };

        // The groups judged on the outputs: cheapest trials first, while
        // they fit the budget. A trial runs the part of the model
        // downstream of the group; its cost is counted in quantized layers.
        let layers: HashSet<NodeId> = crate::skip_sensitive::quantized_layers(g).into_iter().collect();
        let mut by_cost: Vec<(usize, usize)> =
            multi.iter().map(|&i| (i, layers_downstream(g, &groups[i].quantizers, &layers))).collect();
        by_cost.sort_by_key(|&(i, c)| (c, i));
        let mut spent = 0.0;
        let mut on_outputs: Vec<usize> = Vec::new();
        for (i, cost) in by_cost {
            let runs = cost as f64 / layers.len().max(1) as f64 * tried(i) as f64;
            if spent + runs <= self.budget {
                spent += runs;
                on_outputs.push(i);
            }
        }
        // Input to output, as the model computes.
        on_outputs.sort();
        let near_head: HashSet<usize> = on_outputs.iter().copied().collect();

        // The error at the layers that read each group: for the groups left
        // out of the output search, and for shortlists.
        let by_layer: Vec<usize> =
            multi.iter().copied().filter(|i| self.shortlist > 0 || !near_head.contains(i)).collect();
        let local_groups: Vec<(&Group, &[Candidate])> =
            by_layer.iter().map(|&i| (&groups[i], cands[i].as_slice())).collect();
        let errors = local::measure(g, &float, &local_groups, &inputs, engine, &shapes)?;
        let mut chosen: Vec<usize> = cands.iter().map(|c| c.iter().position(|k| k.current).unwrap_or(0)).collect();
        let mut layer_errors: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
        for (&i, errs) in by_layer.iter().zip(errors) {
            chosen[i] = argmin(&errs).unwrap_or(chosen[i]);
            layer_errors[i] = errs;
        }
        let t_local = started.elapsed().as_secs_f64();
        let by_output: Vec<(usize, Vec<usize>)> =
            on_outputs.iter().map(|&i| (i, shortlist(&cands[i], &layer_errors[i], self.shortlist))).collect();
        let output_groups = on_outputs;

        // The layer-judged choices first; the output search starts from them.
        let mut start = g.clone();
        let mut layer_changed = 0u64;
        for i in multi.iter().copied().filter(|i| !near_head.contains(i)) {
            let c = &cands[i][chosen[i]];
            if !c.current {
                set_range(&mut start, &groups[i], c.amax)?;
                layer_changed += 1;
            }
        }
        let search = output::search(start, &groups, &cands, &by_output, &inputs, &reference, engine, &shapes)?;
        for (&i, &k) in output_groups.iter().zip(&search.picks) {
            chosen[i] = k;
        }
        let t_output = started.elapsed().as_secs_f64() - t_local;
        let given = if layer_changed == 0 {
            search.start.clone()
        } else {
            output::whole(g, &inputs, &reference, engine, &shapes)?
        };
        let after = search.end;
        let changed = layer_changed
            + search.picks.iter().zip(&output_groups).filter(|&(&k, &i)| !cands[i][k].current).count() as u64;
        let keep = changed > 0 && after.total() < given.total();
        let mut by_source: BTreeMap<String, u64> = BTreeMap::new();
        let mut ranges = serde_json::Map::new();
        for (i, gr) in groups.iter().enumerate() {
            let c = &cands[i][chosen[i]];
            *by_source.entry(c.source.clone()).or_default() += 1;
            let name = g.value_name(gr.values[0]).to_string();
            ranges.insert(
                name,
                serde_json::json!({ "amax": c.amax, "was": gr.amax, "by": c.source, "judged_on": if near_head.contains(&i) { "outputs" } else { "layers" } }),
            );
        }
        r.note(format!(
            "{} group(s) of activations sharing a range, {} with a choice: {} judged on the outputs ({}; {spent:.1} model runs of budget {}), {} by their layer error; on {} calibration sample(s); {} range(s) changed; chosen: {}",
            groups.len(),
            multi.len(),
            output_groups.len(),
            match self.shortlist {
                0 => "every candidate".to_string(),
                n => format!("the {n} best by layer error and the current range"),
            },
            self.budget,
            multi.len() - output_groups.len(),
            inputs.len(),
            changed,
            by_source.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        ));
        r.note(format!(
            "output error vs float (boxes and scores as equals): given ranges {}; tuned {}: {}",
            given.describe(),
            after.describe(),
            if keep {
                "kept"
            } else if changed == 0 {
                "nothing to change"
            } else {
                "worse, the given ranges are kept"
            }
        ));
        r.note(format!(
            "time: layers {t_local:.1} s, outputs {t_output:.1} s ({} candidate(s) measured on the outputs)",
            search.trials
        ));
        r.publish("ranges", serde_json::Value::Object(ranges));
        if keep {
            *g = search.graph;
            r.count("ranges changed", changed);
        }
        Ok(r)
    }
}

/// The candidates measured on the outputs: the current range and the `n`
/// others with the least layer error (all for 0), in candidate order.
fn shortlist(cands: &[Candidate], layer_errors: &[f64], n: usize) -> Vec<usize> {
    if n == 0 {
        return (0..cands.len()).collect();
    }
    let mut others: Vec<usize> = (0..cands.len()).filter(|&k| !cands[k].current).collect();
    others.sort_by(|&a, &b| {
        let e = |k: usize| layer_errors.get(k).copied().filter(|x| x.is_finite()).unwrap_or(f64::INFINITY);
        e(a).total_cmp(&e(b)).then(a.cmp(&b))
    });
    others.truncate(n);
    others.extend(cands.iter().position(|c| c.current));
    others.sort();
    others
}

/// Index of the smallest finite value (the first one on ties).
fn argmin(xs: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &x) in xs.iter().enumerate() {
        if x.is_finite() && best.is_none_or(|(_, b)| x < b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}
