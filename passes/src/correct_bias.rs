//! Conv(DQ(Q(%x)), DQ(@w_int8), @b) => Conv(…, @b − mean_c(quantized − float output)), measured on calibration samples.
//!
//! `correct-bias`: each quantized Conv/ConvTranspose/Gemm's float bias
//! absorbs the mean error that quantization adds to its output.
//!
//! Why: rounding weights to INT8 (and clipping activations) does not only
//! add noise, it shifts the mean of each output channel, and a shifted mean
//! is passed on, through the activation, to every layer downstream. A
//! per-channel constant is exactly what a bias can cancel. The shift is
//! measured, not modelled: the float model (the graph `insert-qdq` saw) and
//! the quantized one run on calibration samples, and for each layer the
//! per-channel mean of `quantized output − float output` is subtracted from
//! its bias (a zero bias is added where the layer has none).
//!
//! What "float output" means decides whether this works. Comparing with the
//! float model's own activations (errors of every layer upstream included)
//! and correcting all layers at once removes a shift twice, once where it
//! arises and again downstream where it shows up: on nudenet that took the
//! output SQNR from 32.6 dB to 23.6 dB. So each layer is compared, in the
//! quantized model as it runs, with the same layer computed in float from
//! the same upstream activation: `Conv(x, W)` beside `Conv(DQ(Q(x)), DQ(W_q))`,
//! an extra float node per layer added to a copy of the graph for the
//! measurement only, with the per-channel mean of the difference computed
//! in the graph, so only a vector per layer is fetched. The shift measured
//! is then this layer's own (its weight rounding and its input's
//! quantization), all layers can be corrected at once, and a second round
//! only mops up how the first changed the upstream activations.
//!
//! Each round's model is scored by its output SQNR against the float model
//! on the same samples, and the best state (the uncorrected model included)
//! is kept: the pass never writes a model its own measure says is worse
//! than the one it was given.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use qforge_ir::{DataType, Graph, InsertAt, NewNode, NodeId, Tensor, ValueId};
use qforge_runtime::{Engine, HostTensor, SessionOptions};

use crate::calibrate::CalibrationData;
use crate::insert_qdq::FloatReference;
use crate::metric::find_metric;
use crate::model_metric::{Metric, MetricSpec};
use crate::skip_sensitive::{Judge, Score};
use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, Tolerance, register_pass};

/// Options of `correct-bias`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrectBias {
    /// Calibration samples the means are taken over.
    pub samples: usize,
    /// Correction rounds (each runs the quantized model once more).
    pub rounds: usize,
    /// Engine that runs the models (default: the run's `--engine`).
    pub engine: Option<Engine>,
    /// What judges a round: a registered metric (`sqnr`, or `yolo-map50`
    /// from the YOLO plugin), `{command: …}` or `{callback: …}`, as for
    /// `skip-sensitive`. A round is kept only if it scores no lower and,
    /// within ties, has the higher output SQNR.
    pub metric: MetricSpec,
}

impl Default for CorrectBias {
    fn default() -> Self {
        CorrectBias { samples: 16, rounds: 2, engine: None, metric: MetricSpec::default() }
    }
}

impl PassOptions for CorrectBias {
    const FLOAT_OUTPUTS: bool = true;
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("samples", "calibration samples the per-channel means are taken over (default 16)"),
        ("rounds", "correction rounds, each measured; the best state is kept (default 2)"),
        ("engine", "tract | ort | auto (default: the run's --engine)"),
        (
            "metric",
            "judges each round: sqnr (default) | any registered metric (`qforge passes` lists them) | {command: ...} | {callback: ...}; a round that scores lower is never kept",
        ),
    ];
}

register_pass!(
    "correct-bias",
    CorrectBias,
    "Conv(DQ(Q(%x)), DQ(@w_int8), @b) => same with @b − mean(quantized − float output) per channel, measured on calibration samples"
);

/// A layer whose bias can absorb its shift.
struct Site {
    node: NodeId,
    /// Its output value's name (the same in the float graph).
    output: String,
    /// Its float weights and bias (from the float graph): the twin keeps
    /// them while the layer's own bias is corrected.
    weights: Tensor,
    bias: Option<Tensor>,
}

/// Quantized weighted layers (weights read through a DequantizeLinear) whose
/// output the float graph also has and whose bias is absent or a float32
/// constant.
fn sites(g: &Graph, float: &Graph) -> Vec<Site> {
    g.nodes()
        .filter(|&n| {
            let node = g.node(n);
            matches!(node.op_type(), "Conv" | "ConvTranspose" | "Gemm")
                && node.input(1).and_then(|w| g.producer_node(w)).is_some_and(|p| g.node(p).is_op("DequantizeLinear"))
                && match node.input(2) {
                    None => true,
                    Some(b) => g.constant(b).is_some_and(|t| t.dtype() == Some(DataType::F32) && t.dims().len() == 1),
                }
        })
        .filter_map(|n| {
            let out = g.node(n).output(0)?;
            let name = g.value_name(out).to_string();
            let fnode = float.producer_node(float.find_value(&name)?)?;
            let weights = float.constant(float.node(fnode).input(1)?)?;
            let bias = match float.node(fnode).input(2) {
                Some(b) => Some(float.constant(b)?),
                None => None,
            };
            (float.node(fnode).op_type() == g.node(n).op_type()).then_some(Site {
                node: n,
                output: name,
                weights,
                bias,
            })
        })
        .collect()
}

/// The activation a quantized input was made from: `x` of `DQ(Q(x))`.
fn before_qdq(g: &Graph, v: ValueId) -> ValueId {
    let q_input =
        |v: ValueId, op: &str| g.producer_node(v).filter(|&p| g.node(p).is_op(op)).and_then(|p| g.node(p).input(0));
    q_input(v, "DequantizeLinear").and_then(|q| q_input(q, "QuantizeLinear")).unwrap_or(v)
}

/// A copy of `g` where each site also has a float twin reading the
/// activation before its input's Q/DQ, with the float weights and the same
/// bias and attributes, and the per-channel shift computed in the graph:
/// `GlobalAveragePool(layer − twin)` (`[N, C, 1, …]`) for a convolution,
/// `layer − twin` itself for a Gemm (`[N, C]`, small). Returns the copy and,
/// per site, the name of the value to fetch: only those small tensors leave
/// the engine, not two activations per layer (on a 640×640 YOLOv8s that
/// was ~0.4 GB copied per sample).
fn with_float_twins(g: &Graph, sites: &[Site]) -> Result<(Graph, Vec<String>), PassError> {
    let mut aug = g.clone();
    let mut fetch = Vec::with_capacity(sites.len());
    let ir = |e| PassError::ir("correct-bias", e);
    for s in sites {
        let node = g.node(s.node);
        let x = node.input(0).ok_or_else(|| PassError::msg(format!("{}: no input", describe(g, s.node))))?;
        let w = aug.add_initializer(&format!("{}_float_w", s.output), s.weights.clone());
        let mut inputs = vec![before_qdq(g, x), w];
        if let Some(b) = &s.bias {
            inputs.push(aug.add_initializer(&format!("{}_float_b", s.output), b.clone()));
        }
        let mut twin =
            NewNode::new(node.op_type(), &format!("{}_float", node.name()), &inputs, &format!("{}_float", s.output));
        twin.attrs = node.attrs().to_vec();
        let t = aug.insert_node(InsertAt::After(s.node), twin).map_err(ir)?;
        let twin_out = aug.node(t).output(0).expect("one output");
        let out = aug.node(s.node).output(0).expect("a site has an output");
        let diff =
            NewNode::new("Sub", &format!("{}_shift", node.name()), &[out, twin_out], &format!("{}_shift", s.output));
        let d = aug.insert_node(InsertAt::After(t), diff).map_err(ir)?;
        let mut last = d;
        if node.op_type() != "Gemm" {
            let d_out = aug.node(d).output(0).expect("one output");
            let pool = NewNode::new(
                "GlobalAveragePool",
                &format!("{}_shift_mean", node.name()),
                &[d_out],
                &format!("{}_shift_mean", s.output),
            );
            last = aug.insert_node(InsertAt::After(d), pool).map_err(ir)?;
        }
        let fetched = aug.node(last).output(0).expect("one output");
        fetch.push(aug.value_name(fetched).to_string());
    }
    Ok((aug, fetch))
}

/// What one run of a model gave: per-site, per-channel sums of its shift
/// and element counts, and the graph outputs of each sample.
struct Run {
    sums: Vec<Vec<f64>>,
    counts: Vec<f64>,
    outputs: Vec<Vec<HostTensor>>,
}

impl Run {
    fn means(&self) -> Vec<Vec<f64>> {
        self.sums.iter().zip(&self.counts).map(|(s, &c)| s.iter().map(|x| x / c.max(1.0)).collect()).collect()
    }
}

/// Runs `g` on `inputs`, fetching the values named (each site's shift,
/// summed per channel, axis 1, as they come) and the graph outputs.
fn run(
    g: &Graph,
    names: &[String],
    inputs: &[HostTensor],
    engine: Engine,
    shapes: &BTreeMap<String, Vec<usize>>,
    what: &str,
) -> Result<Run, PassError> {
    let outputs: Vec<String> = g.outputs().iter().map(|p| g.value_name(p.value).to_string()).collect();
    let fetch: Vec<String> = names.iter().chain(&outputs).cloned().collect();
    // ONNX Runtime runs one sample at a time on every core: two concurrent
    // runs of the model with its float twins took the YOLOv8s pipeline's
    // peak RSS from 1.25 to 1.78 GB for 5 s less. tract, whose kernels use
    // one core better than several, runs samples in parallel, one core each
    // (its peak stayed at 1.17 GB).
    let parallel = engine.resolve() != Engine::Ort;
    let threads = if parallel { 1 } else { rayon::current_num_threads() };
    let opts = SessionOptions { outputs: fetch, input_shapes: shapes.clone(), engine, threads, ..Default::default() };
    let session = crate::numerics::open_session(g, &opts)
        .map_err(|source| PassError::Runtime { context: what.to_string(), source })?;
    let one = |x: &HostTensor| -> Result<Run, PassError> {
        crate::interrupt::check()?;
        let mut got = session
            .run(std::slice::from_ref(x))
            .map_err(|source| PassError::Runtime { context: what.to_string(), source })?;
        let outs = got.split_off(names.len());
        let mut one = Run { sums: Vec::new(), counts: Vec::new(), outputs: vec![outs] };
        for (t, name) in got.iter().zip(names) {
            let data = t.as_f32().ok_or_else(|| PassError::msg(format!("{name}: not a float32 tensor")))?;
            let c = t.shape.get(1).copied().unwrap_or(1).max(1);
            let inner: usize = t.shape.iter().skip(2).product::<usize>().max(1);
            let mut s = vec![0.0f64; c];
            for (i, &v) in data.iter().enumerate() {
                s[(i / inner) % c] += v as f64;
            }
            one.counts.push((data.len() / c) as f64);
            one.sums.push(s);
        }
        Ok(one)
    };
    let per_sample: Vec<Run> = if parallel {
        inputs.par_iter().map(one).collect::<Result<_, PassError>>()?
    } else {
        inputs.iter().map(one).collect::<Result<_, PassError>>()?
    };
    // Folded in sample order: the sums do not depend on the thread count.
    let mut total = Run { sums: vec![Vec::new(); names.len()], counts: vec![0.0; names.len()], outputs: Vec::new() };
    for one in per_sample {
        for (k, s) in one.sums.into_iter().enumerate() {
            if total.sums[k].is_empty() {
                total.sums[k] = s;
            } else if total.sums[k].len() == s.len() {
                total.sums[k].iter_mut().zip(s).for_each(|(a, b)| *a += b);
            }
            total.counts[k] += one.counts[k];
        }
        total.outputs.extend(one.outputs);
    }
    Ok(total)
}

/// Subtracts `shift` from the bias of `n` (adding a bias when it has none;
/// copying a bias another node also reads).
fn apply(g: &mut Graph, n: NodeId, shift: &[f64]) -> Result<(), PassError> {
    let c = shift.len();
    let current: Vec<f32> = match g.node(n).input(2) {
        Some(b) => g.constant(b).and_then(|t| t.to_f32_vec().ok()).unwrap_or_default(),
        None => vec![0.0; c],
    };
    if current.len() != c {
        return Err(PassError::msg(format!(
            "{}: bias has {} values, the output {c} channels",
            describe(g, n),
            current.len()
        )));
    }
    let new: Vec<f32> = current.iter().zip(shift).map(|(&b, &d)| (b as f64 - d) as f32).collect();
    let tensor = Tensor::new(&[c as i64], &new);
    match g.node(n).input(2) {
        Some(b) if g.initializer(b).is_some() && g.reader_count(b) == 1 => {
            g.set_initializer(b, tensor).map_err(|e| PassError::ir("correct-bias", e))?;
        }
        _ => {
            let hint = format!("{}_bias_corrected", g.node(n).name());
            let b = g.add_initializer(&hint, tensor);
            g.set_input(n, 2, Some(b));
        }
    }
    Ok(())
}

impl Pass for CorrectBias {
    fn tolerance(&self) -> Tolerance {
        Tolerance::Approximate
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let float =
            cx.ext.get::<FloatReference>().map(|f| f.0.clone()).ok_or_else(|| {
                PassError::msg("run insert-qdq before correct-bias (it compares with the float model)")
            })?;
        let cd = cx
            .ext
            .get::<CalibrationData>()
            .ok_or_else(|| PassError::msg("correct-bias measures on calibration samples: run calibrate first"))?;
        let mut r = PassReport::default();
        let sites = sites(g, &float);
        if sites.is_empty() {
            r.note("no quantized Conv/ConvTranspose/Gemm with a float32 bias: nothing to correct");
            return Ok(r);
        }
        // The float model's outputs on these samples come from `calibrate`
        // when it kept them (it ran the same float graph), else one run.
        let mut inputs: Vec<HostTensor> = Vec::new();
        let mut kept: Vec<Option<Vec<HostTensor>>> = Vec::new();
        for i in 0..cd.dataset.len() {
            if inputs.len() == self.samples.max(1) {
                break;
            }
            let Ok(x) = cd.dataset.load(i) else { continue };
            inputs.push(x);
            kept.push(cd.float_outputs.get(i).cloned().flatten());
        }
        if inputs.is_empty() {
            return Err(PassError::msg("correct-bias: no usable calibration sample"));
        }
        let mut shapes = BTreeMap::new();
        if let Some(&i) = g.runtime_inputs().first() {
            shapes.insert(g.value_name(i).to_string(), cd.shape.clone());
        }
        let engine = self.engine.unwrap_or(cx.engine);
        let metric = self.metric.resolve()?;
        let reference = match kept.into_iter().collect::<Option<Vec<_>>>() {
            Some(r) => r,
            None => run(&float, &[], &inputs, engine, &shapes, "correct-bias: float model")?.outputs,
        };
        let mut judge = Judge { inputs: Vec::new(), reference, metric, engine, input_shapes: shapes.clone(), tie: 0.0 };

        let mut state = g.clone();
        let mut best: Option<(Score, usize, Graph)> = None;
        let mut history = Vec::new();
        for round in 0..=self.rounds {
            let (aug, names) = with_float_twins(&state, &sites)?;
            let what = format!("correct-bias: quantized model, round {round}");
            let q = run(&aug, &names, &inputs, engine, &shapes, &what)?;
            let score = match judge.score_model(&state, &q.outputs) {
                Ok(s) => s,
                // A task metric that cannot judge these samples (the float
                // model detects nothing) falls back to SQNR, as in
                // skip-sensitive; the user's own evaluation failing is an error.
                Err(e) if round == 0 && matches!(judge.metric, Metric::Outputs(m) if m.name != "sqnr") => {
                    r.note(format!("{e}; judging by sqnr instead"));
                    judge.metric = Metric::Outputs(
                        find_metric("sqnr").ok_or_else(|| PassError::msg("the sqnr metric is not registered"))?,
                    );
                    judge.score_model(&state, &q.outputs)?
                }
                Err(e) => return Err(e),
            };
            history.push(format!("{} {:.4}, SQNR {:.2} dB", judge.metric.name(), score.metric, score.sqnr));
            if best.as_ref().is_none_or(|b| judge.better(score, b.0)) {
                best = Some((score, round, state.clone()));
            }
            if round == self.rounds {
                break;
            }
            for (site, shift) in sites.iter().zip(q.means()) {
                apply(&mut state, site.node, &shift)?;
            }
        }
        let (_, round, graph) = best.expect("round 0 always runs");
        r.note(format!(
            "on {} calibration sample(s) against the float model, by round (0 = uncorrected): {}; kept round {round}",
            inputs.len(),
            history.join(" → ")
        ));
        if round > 0 {
            *g = graph;
            r.count("layers corrected", sites.len() as u64);
        } else {
            r.note("no round improved on the uncorrected model: it is left as it was");
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_without_bias_gets_one_and_a_shared_bias_is_copied() {
        let mut g = qforge_ir::parse_graph(
            "graph t {\n  opset ai.onnx 13\n  input %x: f32[1,2,3,3]\n  init @w: f32[2,2,1,1] = fill(1.0)\n  \
             init @b: f32[2] = fill(0.5)\n  %y = Conv(%x, @w)  # c0\n  %z = Conv(%x, @w, @b)  # c1\n  \
             %u = Conv(%x, @w, @b)  # c2\n  output %y\n  output %z\n  output %u\n}\n",
        )
        .expect("parses");
        let convs: Vec<NodeId> = g.nodes().filter(|&n| g.node(n).is_op("Conv")).collect();
        apply(&mut g, convs[0], &[1.0, -1.0]).unwrap();
        let b0 = g.node(convs[0]).input(2).expect("a bias was added");
        assert_eq!(g.constant(b0).unwrap().to_f32_vec().unwrap(), vec![-1.0, 1.0]);
        // @b is read by two Convs: the corrected one gets its own copy.
        apply(&mut g, convs[1], &[0.25, 0.5]).unwrap();
        let b1 = g.node(convs[1]).input(2).unwrap();
        assert_eq!(g.constant(b1).unwrap().to_f32_vec().unwrap(), vec![0.25, 0.0]);
        let shared = g.node(convs[2]).input(2).unwrap();
        assert_ne!(b1, shared);
        assert_eq!(g.constant(shared).unwrap().to_f32_vec().unwrap(), vec![0.5, 0.5]);
        // A wrong channel count is an error naming the node, not a silent write.
        let e = apply(&mut g, convs[2], &[1.0]).unwrap_err().to_string();
        assert!(e.contains("bias has 2 values, the output 1 channels"), "{e}");
        qforge_ir::verify(&g).unwrap();
    }
}
