//! `--check-numerics` without preparing a model after every pass.
//!
//! Preparing a model in an engine costs far more than the exact rewrites it
//! checks (tract: about 1.5 s for YOLOv8s, where the whole fold pipeline
//! takes 0.3 s), so the graph is run once per stretch of exact passes that
//! changed it, and compared with the previous check's outputs (the input
//! model's, at first). When that comparison fails, the stretch is replayed
//! pass by pass on a copy of the graph as it was at the previous check, each
//! checked, so the error still names the pass that changed the numbers.
//! A lossy pass (quantization) is checked on its own, since its error is
//! reported rather than failed. Passes that changed nothing are neither
//! checked nor replayed.

use std::time::{Duration, Instant};

use qforge_ir::Graph;
use qforge_runtime::{Engine, HostTensor};

use super::{NumericCheck, NumericsReport, RunReport};
use crate::Pass;
use crate::context::{PassContext, PassError};
use crate::numerics::{self, NumericsOptions, Outputs, compare_outputs};

/// A pass that changed the graph since the last check.
#[derive(Clone, Copy)]
struct Pending<'a> {
    index: usize,
    name: &'a str,
    pass: &'a dyn Pass,
    exact: bool,
}

/// The state of `--check-numerics` over one run.
pub(super) struct Checker<'a> {
    opts: &'a NumericsOptions,
    inputs: Vec<HostTensor>,
    engine: Engine,
    engine_note: Option<String>,
    reference_time: Duration,
    /// The input model's outputs.
    initial: Outputs,
    /// The outputs at the last check, and the graph they came from.
    outputs: Outputs,
    graph: Graph,
    pending: Vec<Pending<'a>>,
    checks: Vec<NumericCheck>,
}

impl<'a> Checker<'a> {
    /// Runs the input model once: the first reference.
    pub(super) fn new(g: &Graph, opts: &'a NumericsOptions) -> Result<Checker<'a>, PassError> {
        let t = Instant::now();
        let r = numerics::reference(g, opts)?;
        Ok(Checker {
            opts,
            inputs: r.inputs,
            engine: r.engine,
            engine_note: r.engine_note,
            reference_time: t.elapsed(),
            initial: r.outputs.clone(),
            outputs: r.outputs,
            graph: g.clone(),
            pending: Vec::new(),
            checks: Vec::new(),
        })
    }

    /// Whether every changed pass is checked on its own.
    pub(super) fn each_pass(&self) -> bool {
        self.opts.each_pass
    }

    /// Notes that pass execution `index` changed the graph.
    pub(super) fn changed(&mut self, index: usize, name: &'a str, pass: &'a dyn Pass, exact: bool) {
        self.pending.push(Pending { index, name, pass, exact });
    }

    fn run(&self, g: &Graph, context: &str) -> Result<Outputs, PassError> {
        numerics::run(g, &self.inputs, self.opts, self.engine, context)
    }

    /// Runs `g` and compares it with the last check; the error names `name`.
    fn measure(
        &self,
        g: &Graph,
        prev: &Outputs,
        name: &str,
        context: &str,
    ) -> Result<(Outputs, String, f64), PassError> {
        let after = self.run(g, context)?;
        let (output, err) =
            compare_outputs(prev, &after).map_err(|m| PassError::Failed { pass: name.to_string(), message: m })?;
        Ok((after, output, err))
    }

    fn too_far(&self, p: &Pending, err: f64) -> bool {
        p.exact && err > self.opts.tolerance
    }

    /// Checks the passes since the last check, if any changed the graph.
    pub(super) fn flush(&mut self, g: &Graph, cx: &mut PassContext, report: &mut RunReport) -> Result<(), PassError> {
        let (Some(&first), Some(&last)) = (self.pending.first(), self.pending.last()) else { return Ok(()) };
        let t = Instant::now();
        let single = self.pending.len() == 1;
        let context = if single {
            format!("--check-numerics after pass {}", last.name)
        } else {
            format!("--check-numerics after passes #{}–#{} ({}…{})", first.index, last.index, first.name, last.name)
        };
        let outcome = self.measure(g, &self.outputs, last.name, &context);
        let failed = match &outcome {
            Err(_) => true,
            Ok((_, _, err)) => self.pending.iter().all(|p| p.exact) && *err > self.opts.tolerance,
        };
        if failed && !single {
            // Name the pass: the first one whose own change fails.
            self.replay(cx)?;
        }
        let (after, output, err) = outcome?;
        if failed {
            if single {
                return Err(PassError::Numerics {
                    pass: last.name.to_string(),
                    output,
                    rel_err: err,
                    tolerance: self.opts.tolerance,
                });
            }
            report.warnings.push(format!(
                "--check-numerics: passes #{}–#{} each stay within {:.0e}, but together output \"{output}\" moved by \
                 {err:.2e} relative",
                first.index, last.index, self.opts.tolerance
            ));
        }
        for p in &self.pending {
            if let Some(r) = report.runs.iter_mut().find(|r| r.index == p.index) {
                r.checked_at = Some(last.index);
            }
        }
        if let Some(r) = report.runs.iter_mut().find(|r| r.index == last.index) {
            r.numerics = Some((output.clone(), err));
        }
        self.checks.push(NumericCheck {
            first: first.index,
            last: last.index,
            output,
            rel_err: err,
            exact: self.pending.iter().all(|p| p.exact),
            time: t.elapsed(),
        });
        self.outputs = after;
        self.graph = g.clone();
        self.pending.clear();
        Ok(())
    }

    /// Re-runs the pending passes one by one on the graph of the last
    /// check, checking each; fails naming the first that breaks the
    /// numbers (or that the engine cannot run), and returns normally when
    /// none does on its own.
    fn replay(&self, cx: &mut PassContext) -> Result<(), PassError> {
        let (first, last) = (self.pending[0].index, self.pending[self.pending.len() - 1].index);
        let mut h = self.graph.clone();
        let mut prev = self.outputs.clone();
        for p in &self.pending {
            let generation = h.generation();
            p.pass.run(&mut h, cx).map_err(|e| e.in_pass(p.name))?;
            if h.generation() == generation {
                continue;
            }
            let context = format!(
                "--check-numerics after pass {} (#{}; replayed after the check of #{first}–#{last} failed)",
                p.name, p.index
            );
            let (after, output, err) = self.measure(&h, &prev, p.name, &context)?;
            if self.too_far(p, err) {
                return Err(PassError::Numerics {
                    pass: p.name.to_string(),
                    output,
                    rel_err: err,
                    tolerance: self.opts.tolerance,
                });
            }
            prev = after;
        }
        Ok(())
    }

    /// The summary, with the final graph's error vs. the input model.
    pub(super) fn finish(self) -> NumericsReport {
        NumericsReport {
            engine: self.engine.name().to_string(),
            engine_note: self.engine_note,
            reference_time: self.reference_time,
            end_to_end: compare_outputs(&self.initial, &self.outputs).ok(),
            checks: self.checks,
        }
    }
}
