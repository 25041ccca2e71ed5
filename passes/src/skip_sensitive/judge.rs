//! Judging a candidate model: its outputs on real samples scored against the
//! float model's, and the rule that decides whether one candidate is better
//! than another.
//!
//! Why a rule and not a plain comparison: a task metric such as mAP50 over a
//! few samples moves in steps (one box more or less), so two candidates often
//! tie, and a comparison on the metric alone would accept changes that only
//! add noise. The metric decides; within `tie` of each other, the output
//! SQNR decides; and a candidate never wins by scoring lower on the metric,
//! so accepting only winners can never make the model worse by its own
//! measure.

use std::collections::BTreeMap;

use rayon::prelude::*;

use qforge_ir::{Graph, Model};
use qforge_runtime::{Engine, HostTensor, SessionOptions};

use crate::PassError;
use crate::metric::sqnr_db;
use crate::model_metric::Metric;

/// What a candidate scored: the metric (higher is better) and the SQNR of
/// all outputs against the float model, in dB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// The chosen metric.
    pub metric: f64,
    /// Output SQNR vs float, dB.
    pub sqnr: f64,
}

/// Scores models on fixed samples against the float model's outputs.
pub struct Judge {
    /// The samples, fed to the single runtime input.
    pub inputs: Vec<HostTensor>,
    /// The float model's outputs on them.
    pub reference: Vec<Vec<HostTensor>>,
    /// The metric: of the outputs, or of the model file (the user's evaluation).
    pub metric: Metric,
    /// The engine that runs candidates.
    pub engine: Engine,
    /// Fixed dims of the input, by name.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Metric differences up to this are ties, broken by SQNR.
    pub tie: f64,
}

pub(super) fn runtime(context: &str) -> impl Fn(qforge_runtime::RuntimeError) -> PassError + '_ {
    move |source| PassError::Runtime { context: context.to_string(), source }
}

/// A single-threaded session on `g` fetching `fetch` (or the graph
/// outputs): every run of the search is one sample on one core, samples in
/// parallel.
pub(super) fn open(
    g: Graph,
    fetch: Vec<String>,
    engine: Engine,
    input_shapes: &BTreeMap<String, Vec<usize>>,
    what: &str,
) -> Result<Box<dyn qforge_runtime::Session>, PassError> {
    let opts =
        SessionOptions { outputs: fetch, input_shapes: input_shapes.clone(), engine, threads: 1, ..Default::default() };
    qforge_runtime::session(&Model::new(g), &opts).map_err(runtime(what))
}

/// The graph outputs of `g` (or the tensors named in `fetch`) on each input.
pub fn run_all(
    g: &Graph,
    inputs: &[HostTensor],
    fetch: Vec<String>,
    engine: Engine,
    input_shapes: &BTreeMap<String, Vec<usize>>,
    what: &str,
) -> Result<Vec<Vec<HostTensor>>, PassError> {
    let s = open(g.clone(), fetch, engine, input_shapes, what)?;
    // Samples in parallel: a session runs concurrently (each run has its
    // own state), and the sequential steps of the search (the base run, the
    // greedy combinations) would otherwise use one core.
    inputs.par_iter().map(|x| s.run(std::slice::from_ref(x)).map_err(runtime(what))).collect()
}

impl Judge {
    /// The same judge on the first `n` samples only.
    pub fn subset(&self, n: usize) -> Judge {
        let n = n.min(self.inputs.len());
        Judge {
            inputs: self.inputs[..n].to_vec(),
            reference: self.reference[..n].to_vec(),
            metric: self.metric.clone(),
            engine: self.engine,
            input_shapes: self.input_shapes.clone(),
            tie: self.tie,
        }
    }

    /// Outputs of `g` on the samples.
    pub fn outputs(&self, g: &Graph, what: &str) -> Result<Vec<Vec<HostTensor>>, PassError> {
        run_all(g, &self.inputs, Vec::new(), self.engine, &self.input_shapes, what)
    }

    /// The score of `g`, whose outputs on the samples were computed
    /// elsewhere: the metric on them, or on the model file for a model
    /// metric; the SQNR always from the outputs.
    pub fn score_model(&self, g: &Graph, test: &[Vec<HostTensor>]) -> Result<Score, PassError> {
        let m = match &self.metric {
            Metric::Outputs(info) => {
                (info.score)(&self.reference, test).map_err(|e| PassError::msg(format!("metric {}: {e}", info.name)))?
            }
            Metric::Model { .. } => self.metric.score_graph(g)?,
        };
        Ok(Score { metric: m, sqnr: sqnr_db(&self.reference, test) })
    }

    /// Runs `g` and scores it.
    pub fn score(&self, g: &Graph, what: &str) -> Result<Score, PassError> {
        self.score_model(g, &self.outputs(g, what)?)
    }

    /// True when `a` is better than `b`: a higher metric beyond the tie
    /// margin, or a metric at least as high within it and a higher SQNR.
    /// Never true when `a`'s metric is lower.
    pub fn better(&self, a: Score, b: Score) -> bool {
        if a.metric < b.metric || a.metric.is_nan() {
            return false;
        }
        a.metric - b.metric > self.tie || a.sqnr > b.sqnr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(tie: f64) -> Judge {
        Judge {
            inputs: Vec::new(),
            reference: Vec::new(),
            metric: Metric::Outputs(crate::metric::find_metric("sqnr").expect("sqnr is built in")),
            engine: Engine::Tract,
            input_shapes: BTreeMap::new(),
            tie,
        }
    }

    #[test]
    fn better_never_accepts_a_lower_metric_and_breaks_ties_by_sqnr() {
        let j = judge(0.01);
        let s = |metric, sqnr| Score { metric, sqnr };
        assert!(j.better(s(0.90, 10.0), s(0.80, 30.0)), "clearly higher metric wins whatever the SQNR");
        assert!(!j.better(s(0.799, 40.0), s(0.80, 30.0)), "a lower metric never wins");
        assert!(j.better(s(0.805, 31.0), s(0.80, 30.0)), "near tie: higher SQNR wins");
        assert!(!j.better(s(0.805, 29.0), s(0.80, 30.0)), "near tie: lower SQNR loses");
        assert!(!j.better(s(0.80, 30.0), s(0.80, 30.0)), "equal is not better");
        assert!(!j.better(s(f64::NAN, 50.0), s(0.1, 1.0)));
    }
}
