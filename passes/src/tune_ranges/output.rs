//! Scoring candidate ranges on the model's outputs, boxes and scores apart.
//!
//! A detector's output SQNR is dominated by its box coordinates (hundreds of
//! pixels) and barely sees its scores (at most 1), yet a lost score is a lost
//! detection. So the outputs are split into parts and each part's error is
//! taken relative to its own signal, `Σ (y − ŷ)² / Σ y²`, and the parts are
//! averaged: each counts as much as the others whatever its magnitude.
//!
//! The parts: a model with one rank-3 output (YOLO's `[1, 4 + C, N]` or
//! `[1, N, 4 + C]`, the attribute axis being the shorter one) splits it into
//! its first four attributes (the box) and the rest (objectness and class
//! scores); a model with several outputs (a head that writes boxes and
//! scores apart) takes each output as a part.
//!
//! For a candidate only the part of the model downstream of the group runs,
//! fed with the all-quantized model's values at its boundary
//! ([`crate::skip_sensitive::partial`]).

use std::collections::BTreeMap;

use qforge_ir::{DataType, Graph, InsertAt, NewNode, NodeId, Tensor, TypeInfo};
use qforge_runtime::{Engine, HostTensor};

use super::{Candidate, Group, set_range};
use crate::PassError;
use crate::calibrate::table::int8_scale;
use crate::metric::find_metric;
use crate::model_metric::Metric;
use crate::skip_sensitive::Judge;
use crate::skip_sensitive::partial::{BaseRun, boundary, region};

/// Memory the boundary values of all samples may take.
const CACHE_BUDGET: usize = 768 << 20;

/// Error of each output part, relative to its signal.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputError {
    /// (part, Σ (y − ŷ)², Σ y²).
    pub parts: Vec<(String, f64, f64)>,
}

impl OutputError {
    /// The mean of the parts' relative errors (lower is better): a 1 %
    /// error on the scores weighs what a 1 % error on the boxes does, so the
    /// part with the larger error leads. (Averaged in dB instead, a box gain
    /// could buy a score loss: on nudenet that took mAP50 from 0.95 to 0.77
    /// while the output SQNR rose by 1 dB.)
    pub fn total(&self) -> f64 {
        if self.parts.is_empty() {
            return 0.0;
        }
        let sum: f64 = self.parts.iter().map(|(_, n, s)| relative(*n, *s)).sum();
        sum / self.parts.len() as f64
    }

    /// `boxes 31.2 dB, scores 27.9 dB` (each part's SQNR).
    pub fn describe(&self) -> String {
        self.parts
            .iter()
            .map(|(p, n, s)| format!("{p} {:.2} dB", -10.0 * relative(*n, *s).log10()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn relative(noise: f64, signal: f64) -> f64 {
    if signal > 0.0 { noise / signal } else { noise }
}

/// The output error of `test` against `reference` (per sample, the graph outputs).
pub fn output_error(reference: &[Vec<HostTensor>], test: &[Vec<HostTensor>]) -> OutputError {
    let split = reference.first().and_then(|outs| match outs.as_slice() {
        [t] if t.shape.len() == 3 => {
            let axis = if t.shape[1] <= t.shape[2] { 1 } else { 2 };
            (t.shape[axis] > 4).then_some((axis, t.shape[axis], t.shape[2]))
        }
        _ => None,
    });
    let n_parts = match split {
        Some(_) => 2,
        None => reference.first().map_or(0, Vec::len),
    };
    let mut sums = vec![(0.0f64, 0.0f64); n_parts];
    for (r, t) in reference.iter().zip(test) {
        for (o, (a, b)) in r.iter().zip(t).enumerate() {
            let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
            for (i, (&y, &q)) in a.iter().zip(&b).enumerate() {
                let part = match split {
                    Some((1, attrs, n)) => usize::from((i / n) % attrs >= 4),
                    Some((_, attrs, _)) => usize::from(i % attrs >= 4),
                    None => o,
                };
                sums[part].0 += (y - q) * (y - q);
                sums[part].1 += y * y;
            }
        }
    }
    let names: Vec<String> = match split {
        Some(_) => vec!["boxes".into(), "scores".into()],
        None => (0..n_parts).map(|i| format!("output {i}")).collect(),
    };
    OutputError { parts: names.into_iter().zip(sums).map(|(p, (n, s))| (p, n, s)).collect() }
}

fn judge(
    inputs: &[HostTensor],
    reference: &[Vec<HostTensor>],
    engine: Engine,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<Judge, PassError> {
    let sqnr = find_metric("sqnr").ok_or_else(|| PassError::msg("the sqnr metric is not registered"))?;
    Ok(Judge {
        inputs: inputs.to_vec(),
        reference: reference.to_vec(),
        metric: Metric::Outputs(sqnr),
        engine,
        input_shapes: shapes.clone(),
        tie: 0.0,
    })
}

/// The output error of the whole model `g` on the samples.
pub fn whole(
    g: &Graph,
    inputs: &[HostTensor],
    reference: &[Vec<HostTensor>],
    engine: Engine,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<OutputError, PassError> {
    let outs = judge(inputs, reference, engine, shapes)?.outputs(g, "tune-ranges: tuned model")?;
    Ok(output_error(reference, &outs))
}

/// The graph input that carries the candidate scale of a trial.
const SCALE_INPUT: &str = "qforge_tune_scale";

/// `g` with the group's `DQ(Q(x, s))` computed as
/// `Clip(Round(x / s), -128, 127) · s`, `s` a scalar graph input: the same
/// values (ONNX's Round and QuantizeLinear both round half to even), but one
/// prepared trial serves every candidate scale, in engines that need a
/// QuantizeLinear's scale to be a constant (tract) too. Returns the graph
/// and the nodes that read `s`.
pub fn with_scale_input(g: &Graph, group: &Group) -> Result<(Graph, Vec<NodeId>), PassError> {
    let mut t = g.clone();
    let ir = |e| PassError::ir("tune-ranges: trial", e);
    let s = t.add_input(SCALE_INPUT, &TypeInfo::new(DataType::F32, &[])).map_err(ir)?;
    let lo = t.add_initializer("qforge_tune_lo", Tensor::scalar(-128.0f32));
    let hi = t.add_initializer("qforge_tune_hi", Tensor::scalar(127.0f32));
    let mut changed = Vec::new();
    for &q in &group.quantizers {
        let x = t.node(q).input(0).ok_or_else(|| PassError::msg("quantizer without input"))?;
        let q_out = t.node(q).output(0).ok_or_else(|| PassError::msg("quantizer without output"))?;
        let dqs: Vec<NodeId> = t.users(q_out).into_iter().filter(|&d| t.node(d).is_op("DequantizeLinear")).collect();
        let base = format!("{}/qforge_tune", t.value_name(x));
        let div = t
            .insert_node(
                InsertAt::After(q),
                NewNode::new("Div", &format!("{base}/div"), &[x, s], &format!("{base}/div")),
            )
            .map_err(ir)?;
        let dv = t.node(div).output(0).expect("one output");
        let round = t
            .insert_node(
                InsertAt::After(div),
                NewNode::new("Round", &format!("{base}/round"), &[dv], &format!("{base}/round")),
            )
            .map_err(ir)?;
        let rv = t.node(round).output(0).expect("one output");
        let clip = t
            .insert_node(
                InsertAt::After(round),
                NewNode::new("Clip", &format!("{base}/clip"), &[rv, lo, hi], &format!("{base}/clip")),
            )
            .map_err(ir)?;
        let cv = t.node(clip).output(0).expect("one output");
        let mul = t
            .insert_node(
                InsertAt::After(clip),
                NewNode::new("Mul", &format!("{base}/mul"), &[cv, s], &format!("{base}/mul")),
            )
            .map_err(ir)?;
        let mv = t.node(mul).output(0).expect("one output");
        for d in dqs {
            if let Some(o) = t.node(d).output(0) {
                t.replace_uses(o, mv);
                t.remove_node(d);
                let _ = t.remove_value(o);
            }
        }
        if t.reader_count(q_out) == 0 {
            let consts: Vec<_> = t.node(q).inputs().iter().skip(1).flatten().copied().collect();
            t.remove_node(q);
            let _ = t.remove_value(q_out);
            crate::util::remove_if_unused(&mut t, consts);
        }
        changed.extend([div, mul]);
    }
    Ok((t, changed))
}

/// What [`search`] found.
pub struct Search {
    /// The output error of the graph it started from.
    pub start: OutputError,
    /// The output error of the graph it ends with.
    pub end: OutputError,
    /// The candidate chosen for each group searched.
    pub picks: Vec<usize>,
    /// The graph with the chosen ranges.
    pub graph: Graph,
    /// Candidates measured.
    pub trials: usize,
}

/// Chooses the range of each group of `which` (a group and the candidates
/// to try) by the model's output error, one group at a time in the order
/// given: each candidate is tried on the model with every choice made so
/// far, and a candidate is taken only if it lowers the error, so the error
/// never rises. (Choices made independently and applied together were
/// measured to interfere: on nudenet each lowered the error alone, all
/// together raised the score error by 2 dB.)
///
/// A trial runs the part of the model downstream of the group, fed from a
/// run of the current model, which is run again after each change.
#[allow(clippy::too_many_arguments)]
pub fn search(
    g: Graph,
    groups: &[Group],
    cands: &[Vec<Candidate>],
    which: &[(usize, Vec<usize>)],
    inputs: &[HostTensor],
    reference: &[Vec<HostTensor>],
    engine: Engine,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<Search, PassError> {
    let judge = judge(inputs, reference, engine, shapes)?;
    let mut cached: Vec<String> = Vec::new();
    for (i, _) in which {
        for name in boundary(&g, &region(&g, &groups[*i].quantizers)) {
            if !cached.contains(&name) {
                cached.push(name);
            }
        }
    }
    let mut cur = g;
    let mut base = BaseRun::new(&cur, &judge, &cached, CACHE_BUDGET)?;
    let start = output_error(reference, &base.graph_outputs());
    let mut err = start.clone();
    let mut picks = Vec::with_capacity(which.len());
    let mut trials = 0usize;
    for (i, list) in which {
        let i = *i;
        crate::interrupt::check()?;
        let current = cands[i].iter().position(|c| c.current).unwrap_or(0);
        let (trial, changed) = with_scale_input(&cur, &groups[i])?;
        let what = format!("tune-ranges: {}", cur.value_name(groups[i].values[0]));
        let prepared = judge.prepare(&trial, &changed, Some(&base), &what)?;
        // Away from the current range on each side, one candidate after the
        // other, while the error keeps falling: the error is close to
        // unimodal in the range (less rounding noise one way, more clipping
        // the other), and most groups keep their range after one trial.
        let mut best: Option<(usize, f64)> = None;
        let below: Vec<usize> = list.iter().rev().copied().filter(|&k| k < current).collect();
        let above: Vec<usize> = list.iter().copied().filter(|&k| k > current).collect();
        for side in [below, above] {
            let mut last = err.total();
            for k in side {
                let scale = HostTensor::f32(Vec::new(), vec![int8_scale(cands[i][k].amax)]);
                let outs = prepared.outputs_with(0..inputs.len(), &[(SCALE_INPUT.to_string(), scale)])?;
                let e = output_error(reference, &outs).total();
                trials += 1;
                if !(e.is_finite() && e < last) {
                    break;
                }
                last = e;
                if e < best.map_or(err.total(), |(_, b)| b) {
                    best = Some((k, e));
                }
            }
        }
        drop(prepared);
        match best {
            Some((k, _)) => {
                set_range(&mut cur, &groups[i], cands[i][k].amax)?;
                base = BaseRun::new(&cur, &judge, &cached, CACHE_BUDGET)?;
                err = output_error(reference, &base.graph_outputs());
                picks.push(k);
            }
            None => picks.push(current),
        }
    }
    Ok(Search { start, end: err, picks, graph: cur, trials })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: Vec<f32>) -> HostTensor {
        HostTensor::f32(shape.to_vec(), data)
    }

    /// `[1, 5, 6]` YOLO-style (attributes first), boxes in the hundreds, a score below 1.
    fn yolo(scale_boxes: f32, scale_score: f32) -> HostTensor {
        let mut d = Vec::new();
        for a in 0..5 {
            for j in 0..6 {
                d.push(if a < 4 {
                    (100 * (a + 1) + j) as f32 * scale_boxes
                } else {
                    0.1 * (j + 1) as f32 * scale_score
                });
            }
        }
        t(&[1, 5, 6], d)
    }

    /// The same values with the attributes last (`[1, 6, 5]`).
    fn transposed(x: &HostTensor) -> HostTensor {
        let d = x.as_f32().unwrap();
        t(&[1, 6, 5], (0..30).map(|i| d[(i % 5) * 6 + i / 5]).collect())
    }

    #[test]
    fn boxes_and_scores_weigh_the_same_whatever_their_magnitudes() {
        let reference = vec![vec![yolo(1.0, 1.0)]];
        // The same relative error (10 %) on the boxes alone, then on the scores alone.
        let eb = output_error(&reference, &[vec![yolo(1.1, 1.0)]]);
        let es = output_error(&reference, &[vec![yolo(1.0, 1.1)]]);
        assert_eq!(eb.parts.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), ["boxes", "scores"]);
        assert!((eb.total() - es.total()).abs() < 1e-6, "{eb:?} vs {es:?}");
        assert!((eb.total() - 0.005).abs() < 1e-6, "{eb:?}");
        assert!(eb.parts[1].1 == 0.0 && es.parts[0].1 == 0.0, "{eb:?} {es:?}");
        // Attributes last: the same split, the same errors.
        let r2 = vec![vec![transposed(&reference[0][0])]];
        let e2 = output_error(&r2, &[vec![transposed(&yolo(1.0, 1.1))]]);
        assert_eq!(e2, es);
        // Several outputs: one part each.
        let two = vec![vec![t(&[1, 2], vec![1.0, 2.0]), t(&[1, 1], vec![3.0])]];
        let e3 = output_error(&two, &[vec![t(&[1, 2], vec![1.0, 2.0]), t(&[1, 1], vec![0.0])]]);
        assert_eq!(e3.parts.len(), 2);
        assert!((e3.total() - 0.5).abs() < 1e-12, "{e3:?}");
    }
}
