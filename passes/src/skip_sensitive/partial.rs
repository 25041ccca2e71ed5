//! Trials that run only what a change touches.
//!
//! Putting layers back in float rewires only those layers' inputs, so every
//! node that is not downstream of them computes exactly what it computes in
//! the all-quantized model. A trial therefore runs only the downstream part
//! (the *cut*): each value that part reads from upstream becomes a graph input
//! fed with the all-quantized model's value on the same sample, fetched once
//! by the base run ([`BaseRun`]); graph outputs the cut does not produce are
//! taken from the base run too. For a layer deep in the network that is a
//! small fraction of the model, and preparing the smaller graph is cheaper in
//! every engine.
//!
//! Why the cache covers every combination the greedy search tries: the
//! downstream set of several layers is the union of their downstream sets,
//! and a value read by the union from outside it is read by one of the sets
//! from outside that set; so the boundary of a combination lies within the
//! union of its members' boundaries. A trial whose boundary is not cached
//! anyway (or a base run too large to keep) runs the whole model.

use std::collections::{BTreeSet, HashMap};

use rayon::prelude::*;

use qforge_ir::{Graph, NodeId, TypeInfo, ValueDef, ValueId};
use qforge_runtime::HostTensor;

use super::judge::{Judge, Score, open, runtime};
use crate::PassError;

/// Suffix of the cut's inputs that stand for base-model values.
const FED: &str = "::base";

/// The nodes `changed` and everything that reads what they produce.
pub fn downstream(g: &Graph, changed: &[NodeId]) -> BTreeSet<NodeId> {
    let mut seen: BTreeSet<NodeId> = BTreeSet::new();
    let mut todo: Vec<NodeId> = changed.to_vec();
    while let Some(n) = todo.pop() {
        if !seen.insert(n) {
            continue;
        }
        for v in g.node(n).outputs().iter().flatten() {
            todo.extend(g.users(*v));
        }
    }
    seen
}

/// What a trial runs: the nodes downstream of `changed`, plus the producers
/// of three kinds of value they would read from outside:
///
/// - shape arithmetic (non-float values other than quantized codes, and
///   `Shape` outputs): an engine such as tract needs a Reshape's target as
///   a constant of the graph, not as a fed input;
/// - values computed from constants alone (a weight's `DequantizeLinear`):
///   the same on every sample, so never worth a per-sample copy;
/// - dequantized activations: their `DequantizeLinear` joins the trial, so
///   the base run keeps the int8 codes it reads, a quarter of the bytes of
///   the f32 values (on a 640×640 YOLOv8s the cache of 16 samples would
///   otherwise take most of a GB).
///
/// Those producers compute what they compute in the base model, so adding
/// them is always correct.
pub fn region(g: &Graph, changed: &[NodeId]) -> BTreeSet<NodeId> {
    let mut d = downstream(g, changed);
    let op_is = |v: ValueId, op: &str| g.producer_node(v).is_some_and(|p| g.node(p).is_op(op));
    loop {
        let mut added = false;
        for name in boundary(g, &d) {
            let Some(v) = g.find_value(&name) else { continue };
            let shape_like =
                (g.dtype(v).is_some_and(|t| !t.is_float()) && !op_is(v, "QuantizeLinear")) || op_is(v, "Shape");
            let dequantized = g.producer_node(v).is_some_and(|p| {
                let n = g.node(p);
                n.is_op("DequantizeLinear") && n.input(0).is_some_and(|c| !stored(g, c))
            });
            let from_constants =
                g.producer_node(v).is_some_and(|p| g.node(p).inputs().iter().flatten().all(|&c| stored(g, c)));
            if let Some(p) = g.producer_node(v).filter(|_| shape_like || dequantized || from_constants) {
                added |= d.insert(p);
            }
        }
        if !added {
            return d;
        }
    }
}

/// Whether `v` is an initializer (checked without copying its data).
fn stored(g: &Graph, v: ValueId) -> bool {
    matches!(g.value(v).def(), ValueDef::Initializer | ValueDef::SparseInitializer)
}

/// Non-constant values that nodes of `d` read and no node of `d` produces,
/// by name, in graph order (the sample input included when `d` reads it).
pub fn boundary(g: &Graph, d: &BTreeSet<NodeId>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in g.nodes().filter(|n| d.contains(n)) {
        for &v in g.node(n).inputs().iter().flatten() {
            let inside = g.producer_node(v).is_some_and(|p| d.contains(&p));
            let constant = stored(g, v);
            let name = g.value_name(v);
            if !inside && !constant && !out.iter().any(|o| o == name) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// The all-quantized model's graph outputs and boundary values on every sample.
pub struct BaseRun {
    /// Graph output names, in order.
    pub outputs: Vec<String>,
    /// Per sample: the graph outputs, then the cached values.
    pub values: Vec<Vec<HostTensor>>,
    /// Cached value name → index into a sample's `values` (empty when the
    /// cache was over budget).
    pub index: HashMap<String, usize>,
    /// What the cached values of all samples weigh (or would have weighed).
    pub bytes: usize,
}

impl BaseRun {
    /// Runs `g` on the judge's samples, fetching its outputs and `cached`.
    ///
    /// The cache is kept only while it fits `budget` bytes over all
    /// samples: the first sample is run alone and its values weighed
    /// (shapes may be symbolic until a sample has run), then the others run
    /// in parallel; over budget, only the graph outputs are kept and
    /// `cached()` is false, so trials run the whole model.
    pub fn new(g: &Graph, judge: &Judge, cached: &[String], budget: usize) -> Result<BaseRun, PassError> {
        let outputs: Vec<String> = g.outputs().iter().map(|p| g.value_name(p.value).to_string()).collect();
        let cached: Vec<String> = cached.iter().filter(|c| !outputs.contains(c)).cloned().collect();
        let fetch: Vec<String> = outputs.iter().chain(&cached).cloned().collect();
        let what = "skip-sensitive: quantized model";
        let rt = runtime(what);
        let s = open(g.clone(), fetch.clone(), judge.engine, &judge.input_shapes, what)?;
        let n_out = outputs.len();
        let Some((first, rest)) = judge.inputs.split_first() else {
            return Ok(BaseRun { outputs, values: Vec::new(), index: HashMap::new(), bytes: 0 });
        };
        let mut values = vec![s.run(std::slice::from_ref(first)).map_err(&rt)?];
        let bytes: usize = values[0][n_out..].iter().map(HostTensor::byte_len).sum();
        let keep = !cached.is_empty() && bytes.saturating_mul(judge.inputs.len()) <= budget;
        if !keep {
            values[0].truncate(n_out);
        }
        let more: Result<Vec<Vec<HostTensor>>, PassError> = rest
            .par_iter()
            .map(|x| {
                let mut v = s.run(std::slice::from_ref(x)).map_err(&rt)?;
                if !keep {
                    v.truncate(n_out);
                }
                Ok(v)
            })
            .collect();
        values.extend(more?);
        let index = if keep { fetch.into_iter().enumerate().map(|(i, n)| (n, i)).collect() } else { HashMap::new() };
        Ok(BaseRun { outputs, values, index, bytes: bytes * judge.inputs.len() })
    }

    /// Whether the boundary values were kept (trials can run a cut).
    pub fn cached(&self) -> bool {
        !self.index.is_empty()
    }

    /// The graph outputs alone, per sample.
    pub fn graph_outputs(&self) -> Vec<Vec<HostTensor>> {
        self.values.iter().map(|v| v[..self.outputs.len()].to_vec()).collect()
    }
}

/// `trial` (the base graph with `changed` rewired) cut down to what the
/// change touches, or `None` when a value it needs is not in `base`.
fn cut(trial: &Graph, changed: &[NodeId], base: &BaseRun, sample_input: &str) -> Option<(Graph, Vec<Option<usize>>)> {
    let d = region(trial, changed);
    let mut c = trial.clone();
    for name in boundary(trial, &d) {
        // Graph inputs stay inputs: the sample, and any a caller feeds
        // itself ([`Prepared::outputs_with`]).
        if name == sample_input || trial.find_value(&name).is_some_and(|v| trial.is_graph_input(v)) {
            continue;
        }
        let i = *base.index.get(&name)?;
        let t = &base.values.first()?[i];
        let dims: Vec<i64> = t.shape.iter().map(|&x| x as i64).collect();
        let v = c.find_value(&name)?;
        let w = c.add_input(&format!("{name}{FED}"), &TypeInfo::new(t.dtype(), &dims)).ok()?;
        c.replace_uses(v, w);
    }
    // Graph outputs: the cut's own, or the base run's.
    let mut from_cut: Vec<Option<usize>> = Vec::new();
    let mut kept = 0;
    for i in (0..c.outputs().len()).rev() {
        let v = c.outputs()[i].value;
        if c.producer_node(v).is_some_and(|p| d.contains(&p)) {
            from_cut.push(Some(0));
        } else {
            c.remove_output(i);
            from_cut.push(None);
        }
    }
    from_cut.reverse();
    for slot in from_cut.iter_mut().flatten() {
        *slot = kept;
        kept += 1;
    }
    let order: Vec<NodeId> = c.nodes().collect();
    for n in order.into_iter().rev().filter(|n| !d.contains(n)) {
        let outs: Vec<ValueId> = c.node(n).outputs().iter().flatten().copied().collect();
        let ins: Vec<ValueId> = c.node(n).inputs().iter().flatten().copied().collect();
        c.remove_node(n);
        for v in outs {
            let _ = c.remove_value(v);
        }
        crate::util::remove_if_unused(&mut c, ins);
    }
    Some((c, from_cut))
}

impl Judge {
    /// Scores `trial` (the base graph with the layers `changed` rewired),
    /// running only what the change touches when `base` holds the values
    /// that needs; else the whole model.
    pub fn score_trial(
        &self,
        trial: &Graph,
        changed: &[NodeId],
        base: Option<&BaseRun>,
        what: &str,
    ) -> Result<Score, PassError> {
        let outputs = self.trial_outputs(trial, changed, base, 0..self.inputs.len(), what)?;
        self.score_model(trial, &outputs)
    }

    /// The outputs of `trial` on the samples in `range` (see
    /// [`Judge::score_trial`]): a trial measured on some samples can be
    /// completed on the others without running the first ones again.
    pub fn trial_outputs(
        &self,
        trial: &Graph,
        changed: &[NodeId],
        base: Option<&BaseRun>,
        range: std::ops::Range<usize>,
        what: &str,
    ) -> Result<Vec<Vec<HostTensor>>, PassError> {
        self.prepare(trial, changed, base, what)?.outputs(range)
    }

    /// `trial` prepared once in the engine (cut down when `base` allows),
    /// to run on any samples.
    pub fn prepare<'a>(
        &'a self,
        trial: &Graph,
        changed: &[NodeId],
        base: Option<&'a BaseRun>,
        what: &str,
    ) -> Result<Prepared<'a>, PassError> {
        let sample_input = trial.runtime_inputs().first().map(|&v| trial.value_name(v).to_string()).unwrap_or_default();
        let cutted = match base {
            Some(b) => cut(trial, changed, b, &sample_input).map(|c| (b, c)),
            None => None,
        };
        let Some((base, (c, from_cut))) = cutted else {
            let session = open(trial.clone(), Vec::new(), self.engine, &self.input_shapes, what)?;
            return Ok(Prepared { judge: self, session, cut: None, what: what.to_string() });
        };
        let mut shapes = self.input_shapes.clone();
        for &v in &c.runtime_inputs() {
            let name = c.value_name(v);
            if let Some(b) = name.strip_suffix(FED)
                && let Some(&i) = base.index.get(b)
            {
                shapes.insert(name.to_string(), base.values[0][i].shape.clone());
            }
        }
        let session = open(c, Vec::new(), self.engine, &shapes, what)?;
        Ok(Prepared { judge: self, session, cut: Some((base, from_cut)), what: what.to_string() })
    }
}

/// A trial ready to run: its session, and for a cut, where its inputs and
/// the outputs it does not compute come from.
pub struct Prepared<'a> {
    judge: &'a Judge,
    session: Box<dyn qforge_runtime::Session>,
    cut: Option<(&'a BaseRun, Vec<Option<usize>>)>,
    what: String,
}

impl Prepared<'_> {
    /// The trial's graph outputs on the judge's samples in `range`.
    pub fn outputs(&self, range: std::ops::Range<usize>) -> Result<Vec<Vec<HostTensor>>, PassError> {
        self.outputs_with(range, &[])
    }

    /// [`Prepared::outputs`] of a trial with graph inputs of its own besides
    /// the sample, fed `extra` (by name) on every sample.
    pub fn outputs_with(
        &self,
        range: std::ops::Range<usize>,
        extra: &[(String, HostTensor)],
    ) -> Result<Vec<Vec<HostTensor>>, PassError> {
        let inputs = &self.judge.inputs[range.clone()];
        let s = &self.session;
        let rt = runtime(&self.what);
        let own =
            |n: &str, x: &HostTensor| extra.iter().find(|(e, _)| e == n).map_or_else(|| x.clone(), |(_, t)| t.clone());
        let Some((base, from_cut)) = &self.cut else {
            return inputs
                .par_iter()
                .map(|x| {
                    let feed: Vec<HostTensor> = s.input_names().iter().map(|n| own(n, x)).collect();
                    s.run(&feed).map_err(&rt)
                })
                .collect();
        };
        let run = |(k, x): (usize, &HostTensor)| -> Result<Vec<HostTensor>, PassError> {
            let feed: Vec<HostTensor> = s
                .input_names()
                .iter()
                .map(|n| match n.strip_suffix(FED) {
                    Some(b) => base.values[k][base.index[b]].clone(),
                    None => own(n, x),
                })
                .collect();
            let out = s.run(&feed).map_err(&rt)?;
            Ok(from_cut
                .iter()
                .enumerate()
                .map(|(j, slot)| match slot {
                    Some(i) => out[*i].clone(),
                    None => base.values[k][j].clone(),
                })
                .collect())
        };
        // Samples in parallel (see `run_all`); `k` indexes the base run.
        inputs.par_iter().enumerate().map(|(k, x)| run((range.start + k, x))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_ir::parse_graph;
    use std::collections::BTreeMap;

    #[test]
    fn downstream_and_boundary_follow_the_data() {
        let g = parse_graph(
            "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,4]\n  init @k: f32[1,4] = fill(1.0)\n  \
             %a = Relu(%x)  # a\n  %b = Neg(%a)  # b\n  %c = Add(%b, @k)  # c\n  %d = Mul(%c, %a)  # d\n  \
             %e = Abs(%x)  # e\n  output %d\n  output %e\n}\n",
        )
        .unwrap();
        let b = g.find_node("b").unwrap();
        let d = downstream(&g, &[b]);
        let names: Vec<&str> = d.iter().map(|&n| g.node(n).name()).collect();
        assert_eq!(names.len(), 3);
        for n in ["b", "c", "d"] {
            assert!(names.contains(&n), "{names:?}");
        }
        // The constant @k is not a boundary value; %a (read by b and d) is.
        assert_eq!(boundary(&g, &d), vec!["a".to_string()]);
    }

    /// A downstream-only trial scores exactly what running the whole trial
    /// model scores, for one layer and for a combination.
    #[test]
    fn a_cut_scores_like_the_whole_model() {
        let text = "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,2,6,6]\n  \
            init @w1: f32[2,2,3,3] = rand(1)\n  init @w2: f32[2,2,3,3] = rand(2)\n  init @w3q: i8[2,2,1,1] = [3, -5, 7, 1]\n  \
            init @s: f32[] = [0.02]\n  init @z: i8[] = [0]\n  \
            %q0 = QuantizeLinear(%x, @s, @z)  # q0\n  %d0 = DequantizeLinear(%q0, @s, @z)  # d0\n  \
            %a = Conv(%d0, @w1) {pads=[1,1,1,1]}  # conv1\n  \
            %q1 = QuantizeLinear(%a, @s, @z)  # q1\n  %d1 = DequantizeLinear(%q1, @s, @z)  # d1\n  \
            %b = Conv(%d1, @w2) {pads=[1,1,1,1]}  # conv2\n  \
            %q2 = QuantizeLinear(%b, @s, @z)  # q2\n  %d2 = DequantizeLinear(%q2, @s, @z)  # d2\n  \
            %w3 = DequantizeLinear(@w3q, @s, @z)  # w3dq\n  %c = Conv(%d2, %w3)  # conv3\n  %y = Mul(%c, %d1)  # skip\n  \
            output %y\n  output %b\n}\n";
        let g = parse_graph(text).unwrap();
        let float = g.clone();
        let layers = super::super::quantized_layers(&g);
        assert_eq!(layers.len(), 3);
        let inputs = qforge_runtime::random_inputs(&[("x".into(), vec![1, 2, 6, 6], qforge_ir::DataType::F32)], 7);
        let engine = qforge_runtime::Engine::Tract;
        let shapes = BTreeMap::new();
        // The reference: every layer in float.
        let mut all_float = g.clone();
        for &l in &layers {
            super::super::to_float(&mut all_float, l, &float, false).unwrap();
        }
        let reference = super::super::judge::run_all(&all_float, &inputs, Vec::new(), engine, &shapes, "ref").unwrap();
        let judge = Judge {
            inputs,
            reference,
            metric: crate::model_metric::Metric::Outputs(crate::metric::find_metric("sqnr").unwrap()),
            engine,
            input_shapes: shapes,
            tie: 0.0,
        };
        // Three samples: a trial measured on the first, then completed on
        // the other two, has exactly the outputs of one run on all three.
        let mut judge = judge;
        for seed in [8, 9] {
            let x = qforge_runtime::random_inputs(&[("x".into(), vec![1, 2, 6, 6], qforge_ir::DataType::F32)], seed);
            judge.reference.extend(
                super::super::judge::run_all(&all_float, &x, Vec::new(), engine, &judge.input_shapes, "ref").unwrap(),
            );
            judge.inputs.extend(x);
        }
        let mut trial = g.clone();
        super::super::to_float(&mut trial, layers[1], &float, false).unwrap();
        let wanted = boundary(&trial, &region(&trial, &[layers[1]]));
        // conv2 float reads the float %a; the skip Mul downstream reads the
        // dequantized %d1 from outside, which is fed as its int8 codes %q1
        // (its DequantizeLinear joins the cut); conv3's weight %w3, computed
        // from constants, is computed in the cut, never fed.
        assert_eq!(wanted, vec!["q1".to_string(), "a".to_string()]);
        let mut t3 = g.clone();
        super::super::to_float(&mut t3, layers[2], &float, false).unwrap();
        assert_eq!(boundary(&t3, &region(&t3, &[layers[2]])), vec!["q1".to_string(), "b".to_string()]);
        let base = BaseRun::new(&g, &judge, &wanted, usize::MAX).unwrap();
        assert!(base.cached());
        // Over budget: the values are weighed on the first sample, then
        // dropped; the graph outputs are the same.
        let over = BaseRun::new(&g, &judge, &wanted, base.bytes - 1).unwrap();
        assert!(!over.cached() && over.bytes == base.bytes, "{} vs {}", over.bytes, base.bytes);
        assert_eq!(over.graph_outputs(), base.graph_outputs());
        assert!(over.values.iter().all(|v| v.len() == over.outputs.len()));
        let whole = judge.trial_outputs(&trial, &[layers[1]], Some(&base), 0..3, "all").unwrap();
        let mut parts = judge.trial_outputs(&trial, &[layers[1]], Some(&base), 0..1, "first").unwrap();
        parts.extend(judge.trial_outputs(&trial, &[layers[1]], Some(&base), 1..3, "rest").unwrap());
        assert_eq!(whole, parts);
        assert_eq!(
            judge.score_model(&trial, &whole).unwrap(),
            judge.score_trial(&trial, &[layers[1]], Some(&base), "s").unwrap()
        );
        let sub = judge.subset(1);
        assert_eq!((sub.inputs.len(), sub.reference.len()), (1, 1));
        assert_eq!(
            sub.score_model(&trial, &whole[..1]).unwrap(),
            sub.score_trial(&trial, &[layers[1]], Some(&base), "s").unwrap()
        );

        for changed in [vec![layers[1]], vec![layers[2]], vec![layers[1], layers[2]], vec![layers[0]]] {
            let mut trial = g.clone();
            let mut cached = Vec::new();
            for &l in &changed {
                super::super::to_float(&mut trial, l, &float, false).unwrap();
            }
            for &l in &changed {
                cached.extend(boundary(&trial, &region(&trial, &[l])));
            }
            let base = BaseRun::new(&g, &judge, &cached, usize::MAX).unwrap();
            let whole = judge.score(&trial, "whole").unwrap();
            let part = judge.score_trial(&trial, &changed, Some(&base), "cut").unwrap();
            assert!((whole.sqnr - part.sqnr).abs() < 1e-9, "{changed:?}: {whole:?} vs {part:?}");
            assert!(cut(&trial, &changed, &base, "x").is_some(), "{changed:?}: the cut was not used");
        }
    }
}
