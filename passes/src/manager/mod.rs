//! The pass manager: runs a pipeline and owns everything that is not a
//! rewrite — timing, the verifier after each pass, `--print-ir-after`
//! dumps, `--stop-after` bisecting, fixed-point groups, `--check-numerics`,
//! and the statistics table.
//!
//! Timers nest (as in Cranelift's `timing.rs`): a pass's figure is the pass
//! alone; the verifier after it and the numeric checks are timed and shown
//! on their own, so a slow check never reads as a slow pass.

mod checks;
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use qforge_ir::Graph;

use crate::Pass;
use crate::context::{PassContext, PassError, PassReport, Tolerance};
use crate::numerics::NumericsOptions;
use crate::pipeline::{Origin, PassStep, Pipeline, Step};
use crate::registry::unique_pass;

use checks::Checker;

/// Which passes' output IR to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrintAfter {
    /// Every pass.
    All,
    /// Passes of this name.
    Pass(String),
}

/// Cross-cutting settings of a run.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Run `ir::verify` after every pass (on by default).
    pub verify: bool,
    /// Print the text IR to stderr after matching passes.
    pub print_ir_after: Option<PrintAfter>,
    /// Stop after this many pass executions (for bisecting a bad pipeline).
    pub stop_after: Option<usize>,
    /// Compare outputs before/after passes on random inputs.
    pub check_numerics: Option<NumericsOptions>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions { verify: true, print_ir_after: None, stop_after: None, check_numerics: None }
    }
}

struct Instance {
    step: PassStep,
    pass: Box<dyn Pass>,
    /// It reads the float model's kept outputs ([`crate::PassOptions::FLOAT_OUTPUTS`]).
    reads_float_outputs: bool,
    /// A pass run after it does ([`PassContext::float_outputs_later`]).
    float_outputs_later: bool,
}

impl Instance {
    fn new(step: PassStep, pass: Box<dyn Pass>, reads_float_outputs: bool) -> Instance {
        Instance { step, pass, reads_float_outputs, float_outputs_later: false }
    }
}

/// Sets [`Instance::float_outputs_later`], walking from the end. A
/// fixed-point group repeats, so each of its passes also runs after the
/// others.
fn mark_float_outputs_later(planned: &mut [Planned]) {
    let mut later = false;
    for p in planned.iter_mut().rev() {
        match p {
            Planned::Single(i) => {
                i.float_outputs_later = later;
                later |= i.reads_float_outputs;
            }
            Planned::Group { passes, .. } => {
                later |= passes.iter().any(|i| i.reads_float_outputs);
                for i in passes.iter_mut() {
                    i.float_outputs_later = later;
                }
            }
        }
    }
}

enum Planned {
    Single(Instance),
    Group { max_iterations: usize, passes: Vec<Instance>, origin: Origin },
}

/// A pipeline ready to run: every pass instantiated and its options checked.
pub struct PassManager {
    planned: Vec<Planned>,
    opts: ManagerOptions,
}

/// One execution of one pass.
#[derive(Debug, Clone)]
pub struct PassRun {
    /// 1-based execution number (what `--stop-after` counts).
    pub index: usize,
    /// Pass name.
    pub name: String,
    /// Iteration, inside a fixed-point group.
    pub iteration: Option<usize>,
    /// Wall time of the pass itself (not the verifier, not checks).
    pub time: Duration,
    /// Wall time of the verifier after it (zero when it did not run).
    pub verify_time: Duration,
    /// Node count before.
    pub nodes_before: usize,
    /// Node count after.
    pub nodes_after: usize,
    /// Whether it changed the graph, from the graph's own mutation counter
    /// ([`Graph::generation`]), not from what the pass reported.
    pub changed: bool,
    /// What it reported.
    pub report: PassReport,
    /// With `--check-numerics`, on the pass that ended a check: the output
    /// that differs most from the previous check and its relative error
    /// (the check covers the passes listed in [`RunReport::checks`]).
    pub numerics: Option<(String, f64)>,
    /// With `--check-numerics`, on a pass that changed the graph: the
    /// execution number of the pass whose check covered it.
    pub checked_at: Option<usize>,
}

/// One `--check-numerics` run of the graph, compared with the previous one.
#[derive(Debug, Clone)]
pub struct NumericCheck {
    /// First and last pass execution it covers (1-based, inclusive): every
    /// pass that changed the graph since the previous check.
    pub first: usize,
    /// See `first`.
    pub last: usize,
    /// The output that differs most.
    pub output: String,
    /// Its relative error.
    pub rel_err: f64,
    /// Whether the covered passes are exact (a failure stops the run);
    /// otherwise the error is reported only.
    pub exact: bool,
    /// Wall time: preparing the model in the engine and running it, plus
    /// replaying the passes one by one when the check failed.
    pub time: Duration,
}

/// What `--check-numerics` did over a run.
#[derive(Debug, Clone, Default)]
pub struct NumericsReport {
    /// The engine that ran the checks (`tract` or `ort`).
    pub engine: String,
    /// Why it is not ONNX Runtime, when ONNX Runtime was wanted but failed.
    pub engine_note: Option<String>,
    /// Wall time of the input model's one run (the first reference).
    pub reference_time: Duration,
    /// The checks, in order.
    pub checks: Vec<NumericCheck>,
    /// Worst output error of the final graph vs. the input model.
    pub end_to_end: Option<(String, f64)>,
}

/// Everything a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Pass executions in order.
    pub runs: Vec<PassRun>,
    /// True when `--stop-after` ended the run.
    pub stopped_early: bool,
    /// Total wall time, checks included.
    pub total: Duration,
    /// Warnings: a fixed-point group that did not converge, and those the
    /// passes reported ([`PassReport::warnings`], as `pass: warning`).
    pub warnings: Vec<String>,
    /// With `--check-numerics`: worst output error of the final graph vs. the input.
    pub end_to_end: Option<(String, f64)>,
    /// With `--check-numerics`: engine, times and every check.
    pub numerics: Option<NumericsReport>,
    /// Each layer's precision in the final graph and why float ones are
    /// float ([`crate::precision`]); `None` when nothing was quantized or
    /// converted.
    pub precision: Option<Vec<crate::precision::LayerPrecision>>,
}

impl RunReport {
    /// Total wall time of the verifier over all passes.
    pub fn verify_time(&self) -> Duration {
        self.runs.iter().map(|r| r.verify_time).sum()
    }
}

impl PassManager {
    /// Instantiates every pass of the pipeline; option errors point at the
    /// YAML line (or `--set`) that wrote them.
    pub fn new(pipeline: &Pipeline, opts: ManagerOptions) -> Result<PassManager, PassError> {
        let inst = |s: &PassStep| -> Result<Instance, PassError> {
            let info = unique_pass(&s.name)
                .map_err(|e| PassError::Pipeline { origin: s.origin.clone(), message: e.to_string() })?
                .ok_or_else(|| PassError::Pipeline {
                    origin: s.origin.clone(),
                    message: format!("unknown pass `{}`", s.name),
                })?;
            let pass = (info.create)(&s.options).map_err(|m| PassError::Pipeline {
                origin: s.origin.clone(),
                message: format!("pass `{}`: {m}", s.name),
            })?;
            Ok(Instance::new(s.clone(), pass, info.float_outputs))
        };
        let mut planned = pipeline
            .steps
            .iter()
            .map(|s| match s {
                Step::Pass(p) => inst(p).map(Planned::Single),
                Step::FixedPoint { max_iterations, passes, origin } => Ok(Planned::Group {
                    max_iterations: *max_iterations,
                    passes: passes.iter().map(inst).collect::<Result<_, _>>()?,
                    origin: origin.clone(),
                }),
            })
            .collect::<Result<Vec<Planned>, PassError>>()?;
        mark_float_outputs_later(&mut planned);
        Ok(PassManager { planned, opts })
    }

    /// Fills `--check-numerics` input shapes not given explicitly (e.g.
    /// from the model's metadata, known only once it is loaded).
    pub fn default_numerics_shapes(&mut self, defaults: &BTreeMap<String, Vec<usize>>) {
        if let Some(n) = &mut self.opts.check_numerics {
            for (k, v) in defaults {
                n.input_shapes.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }

    /// Runs the pipeline on `g`. On error the graph may be partly rewritten;
    /// callers write nothing in that case.
    pub fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<RunReport, PassError> {
        let start = Instant::now();
        let mut st = RunState { report: RunReport::default(), checker: None, count: 0 };
        if let Some(n) = &self.opts.check_numerics {
            st.checker = Some(Checker::new(g, n)?);
        }
        self.run_steps(g, cx, &mut st)?;
        if let Some(mut c) = st.checker.take() {
            c.flush(g, cx, &mut st.report)?;
            let nr = c.finish();
            st.report.end_to_end = nr.end_to_end.clone();
            st.report.numerics = Some(nr);
        }
        st.report.precision = crate::precision::precision_map(g, cx.ext.get::<crate::precision::FloatReasons>());
        st.report.total = start.elapsed();
        Ok(st.report)
    }

    fn run_steps<'a>(&'a self, g: &mut Graph, cx: &mut PassContext, st: &mut RunState<'a>) -> Result<(), PassError> {
        for p in &self.planned {
            match p {
                Planned::Single(i) => {
                    self.exec(i, None, g, cx, st)?;
                    if self.stop(st) {
                        return Ok(());
                    }
                }
                Planned::Group { max_iterations, passes, origin } => {
                    let mut converged = false;
                    for it in 1..=*max_iterations {
                        let mut changed = false;
                        for i in passes {
                            changed |= self.exec(i, Some(it), g, cx, st)?;
                            if self.stop(st) {
                                return Ok(());
                            }
                        }
                        if !changed {
                            converged = true;
                            break;
                        }
                    }
                    if !converged {
                        st.report.warnings.push(format!(
                            "{origin}: fixed-point group still changed the graph after {max_iterations} iterations"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn stop(&self, st: &RunState) -> bool {
        self.opts.stop_after.is_some_and(|n| st.count >= n)
    }

    /// Runs one pass with all checks; returns whether it changed the graph.
    fn exec<'a>(
        &'a self,
        i: &'a Instance,
        iteration: Option<usize>,
        g: &mut Graph,
        cx: &mut PassContext,
        st: &mut RunState<'a>,
    ) -> Result<bool, PassError> {
        crate::interrupt::check()?;
        let name = i.step.name.as_str();
        let exact = i.pass.tolerance() == Tolerance::Exact;
        // A lossy pass gets a check of its own: close the exact ones' first.
        if !exact && let Some(c) = st.checker.as_mut() {
            c.flush(g, cx, &mut st.report)?;
        }
        st.count += 1;
        let nodes_before = g.node_count();
        let generation = g.generation();
        let t = Instant::now();
        cx.float_outputs_later = Some(i.float_outputs_later);
        let report = i.pass.run(g, cx);
        cx.float_outputs_later = None;
        let report = report.map_err(|e| e.in_pass(name))?;
        let time = t.elapsed();
        // The graph says whether it changed: a pass that forgets a counter
        // is still re-checked, and one that only counts is not.
        let changed = g.generation() != generation;
        let mut verify_time = Duration::ZERO;
        if self.opts.verify {
            let t = Instant::now();
            qforge_ir::verify(g).map_err(|source| PassError::Verify { pass: name.to_string(), source })?;
            verify_time = t.elapsed();
        }
        st.report.warnings.extend(report.warnings.iter().map(|w| format!("{name}: {w}")));
        if let Some(pa) = &self.opts.print_ir_after
            && (*pa == PrintAfter::All || *pa == PrintAfter::Pass(name.to_string()))
        {
            eprintln!("// ---- IR after {name} (#{}) ----\n{g}", st.count);
        }
        st.report.runs.push(PassRun {
            index: st.count,
            name: name.to_string(),
            iteration,
            time,
            verify_time,
            nodes_before,
            nodes_after: g.node_count(),
            changed,
            report,
            numerics: None,
            checked_at: None,
        });
        if let Some(c) = st.checker.as_mut()
            && changed
        {
            c.changed(st.count, name, i.pass.as_ref(), exact);
            if !exact || c.each_pass() {
                c.flush(g, cx, &mut st.report)?;
            }
        }
        if self.stop(st) {
            st.report.stopped_early = true;
        }
        Ok(changed)
    }
}

struct RunState<'a> {
    report: RunReport,
    checker: Option<Checker<'a>>,
    count: usize,
}

#[cfg(test)]
mod tests;
