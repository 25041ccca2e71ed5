//! The pass manager: runs a pipeline and owns everything that is not a
//! rewrite — timing, the verifier after each pass, `--print-ir-after`
//! dumps, `--stop-after` bisecting, fixed-point groups, `--check-numerics`,
//! and the statistics table.

use std::fmt;
use std::time::{Duration, Instant};

use qforge_ir::Graph;

use crate::Pass;
use crate::context::{PassContext, PassError, PassReport, Tolerance};
use crate::numerics::{self, NumericsOptions, Reference, compare_outputs};
use crate::pipeline::{Origin, PassStep, Pipeline, Step};
use crate::registry::find_pass;

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
    /// Compare outputs before/after each pass on random inputs.
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
    /// Wall time of the pass itself.
    pub time: Duration,
    /// Node count before.
    pub nodes_before: usize,
    /// Node count after.
    pub nodes_after: usize,
    /// What it reported.
    pub report: PassReport,
    /// Worst output and its relative error vs. before the pass, when checked.
    pub numerics: Option<(String, f64)>,
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
    /// Warnings (e.g. a fixed-point group that did not converge).
    pub warnings: Vec<String>,
    /// With `--check-numerics`: worst output error of the final graph vs. the input.
    pub end_to_end: Option<(String, f64)>,
}

impl PassManager {
    /// Instantiates every pass of the pipeline; option errors point at the
    /// YAML line (or `--set`) that wrote them.
    pub fn new(pipeline: &Pipeline, opts: ManagerOptions) -> Result<PassManager, PassError> {
        let inst = |s: &PassStep| -> Result<Instance, PassError> {
            let info = find_pass(&s.name).ok_or_else(|| PassError::Pipeline {
                origin: s.origin.clone(),
                message: format!("unknown pass `{}`", s.name),
            })?;
            let pass = (info.create)(&s.options).map_err(|m| PassError::Pipeline {
                origin: s.origin.clone(),
                message: format!("pass `{}`: {m}", s.name),
            })?;
            Ok(Instance { step: s.clone(), pass })
        };
        let planned = pipeline
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
            .collect::<Result<Vec<_>, PassError>>()?;
        Ok(PassManager { planned, opts })
    }

    /// Runs the pipeline on `g`. On error the graph may be partly rewritten;
    /// callers write nothing in that case.
    pub fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<RunReport, PassError> {
        let start = Instant::now();
        let mut st = RunState { report: RunReport::default(), reference: None, initial: None, count: 0 };
        if let Some(n) = &self.opts.check_numerics {
            let r = numerics::reference(g, n)?;
            st.initial = Some(r.outputs.clone());
            st.reference = Some(r);
        }
        'outer: for p in &self.planned {
            match p {
                Planned::Single(i) => {
                    self.exec(i, None, g, cx, &mut st)?;
                    if self.stop(&st) {
                        break 'outer;
                    }
                }
                Planned::Group { max_iterations, passes, origin } => {
                    let mut converged = false;
                    for it in 1..=*max_iterations {
                        let mut changed = false;
                        for i in passes {
                            changed |= self.exec(i, Some(it), g, cx, &mut st)?;
                            if self.stop(&st) {
                                break 'outer;
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
        if let (Some(init), Some(r)) = (&st.initial, &st.reference) {
            st.report.end_to_end = compare_outputs(init, &r.outputs).ok();
        }
        st.report.total = start.elapsed();
        Ok(st.report)
    }

    fn stop(&self, st: &RunState) -> bool {
        self.opts.stop_after.is_some_and(|n| st.count >= n)
    }

    /// Runs one pass with all checks; returns whether it changed the graph.
    fn exec(
        &self,
        i: &Instance,
        iteration: Option<usize>,
        g: &mut Graph,
        cx: &mut PassContext,
        st: &mut RunState,
    ) -> Result<bool, PassError> {
        let name = i.step.name.as_str();
        st.count += 1;
        let nodes_before = g.node_count();
        let t = Instant::now();
        let report = i.pass.run(g, cx).map_err(|e| e.in_pass(name))?;
        let time = t.elapsed();
        if self.opts.verify {
            qforge_ir::verify(g).map_err(|source| PassError::Verify { pass: name.to_string(), source })?;
        }
        if let Some(pa) = &self.opts.print_ir_after
            && (*pa == PrintAfter::All || *pa == PrintAfter::Pass(name.to_string()))
        {
            eprintln!("// ---- IR after {name} (#{}) ----\n{g}", st.count);
        }
        let mut num = None;
        if let (Some(opts), Some(r)) = (&self.opts.check_numerics, st.reference.as_mut())
            && report.changed
        {
            let after = numerics::run(g, &r.inputs, opts, &format!("--check-numerics after pass {name}"))?;
            let (output, rel_err) = compare_outputs(&r.outputs, &after)
                .map_err(|m| PassError::Failed { pass: name.to_string(), message: m })?;
            if i.pass.tolerance() == Tolerance::Exact && rel_err > opts.tolerance {
                return Err(PassError::Numerics { pass: name.to_string(), output, rel_err, tolerance: opts.tolerance });
            }
            r.outputs = after;
            num = Some((output, rel_err));
        }
        let changed = report.changed;
        st.report.runs.push(PassRun {
            index: st.count,
            name: name.to_string(),
            iteration,
            time,
            nodes_before,
            nodes_after: g.node_count(),
            report,
            numerics: num,
        });
        if self.stop(st) {
            st.report.stopped_early = true;
        }
        Ok(changed)
    }
}

struct RunState {
    report: RunReport,
    reference: Option<Reference>,
    initial: Option<Vec<(String, qforge_runtime::HostTensor)>>,
    count: usize,
}

fn fmt_time(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else if ms < 1e4 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

impl fmt::Display for RunReport {
    /// The statistics table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checked = self.runs.iter().any(|r| r.numerics.is_some());
        let rows: Vec<[String; 6]> = self
            .runs
            .iter()
            .map(|r| {
                let name = match r.iteration {
                    Some(it) => format!("{} (iter {it})", r.name),
                    None => r.name.clone(),
                };
                let changes: Vec<String> =
                    r.report.counters.iter().filter(|c| c.1 > 0).map(|(k, v)| format!("{k} {v}")).collect();
                [
                    r.index.to_string(),
                    name,
                    fmt_time(r.time),
                    format!("{} → {}", r.nodes_before, r.nodes_after),
                    if changes.is_empty() { "—".into() } else { changes.join(", ") },
                    match &r.numerics {
                        Some((_, e)) => format!("{e:.1e}"),
                        None if checked => "(unchanged)".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let head = ["#", "pass", "time", "nodes", "changes", if checked { "max rel err" } else { "" }];
        let mut w = [0usize; 6];
        for r in rows.iter().chain(std::iter::once(&head.map(String::from))) {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, r: &[String; 6]| -> fmt::Result {
            let pad = |s: &str, n: usize| format!("{s}{}", " ".repeat(n.saturating_sub(s.chars().count())));
            let s = format!(
                "{:>w0$}  {}  {:>w2$}  {:>w3$}  {}  {}",
                r[0],
                pad(&r[1], w[1]),
                r[2],
                r[3],
                pad(&r[4], w[4]),
                r[5],
                w0 = w[0],
                w2 = w[2],
                w3 = w[3]
            );
            writeln!(f, "{}", s.trim_end())
        };
        line(f, &head.map(String::from))?;
        for r in &rows {
            line(f, r)?;
        }
        for r in &self.runs {
            for n in &r.report.notes {
                writeln!(f, "note: {}: {n}", r.name)?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if let Some((o, e)) = &self.end_to_end {
            writeln!(
                f,
                "numerics: output \"{o}\" differs from the input model by {e:.2e} relative (max over outputs)"
            )?;
        }
        if self.stopped_early {
            writeln!(f, "stopped after pass #{} (--stop-after)", self.runs.len())?;
        }
        write!(f, "total {}", fmt_time(self.total))
    }
}
