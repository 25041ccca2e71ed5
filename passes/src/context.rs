//! What a pass receives besides the graph, what it returns, and its errors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use qforge_ir::IrError;
use qforge_runtime::RuntimeError;

/// Shared state of one pipeline run.
#[derive(Debug, Clone, Default)]
pub struct PassContext {
    /// Folder of the input model (relative paths in options resolve here
    /// when they do not exist relative to the working directory).
    pub model_dir: Option<PathBuf>,
    /// Where the pipeline's output model goes (artifacts are written beside it).
    pub output_path: Option<PathBuf>,
    /// Fixed dims for dynamic inputs (`--input-shape`).
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// No progress bars.
    pub quiet: bool,
    /// The engine passes run the model on unless their own `engine` option
    /// says otherwise (`qforge run --engine`).
    pub engine: qforge_runtime::Engine,
    /// Seed of everything random.
    pub seed: u64,
    /// Activation and weight ranges from `calibrate` / `load-calibration`.
    pub calibration: Option<crate::calibrate::table::CalibrationTable>,
    /// The samples `calibrate` used, its held-out split and the float
    /// outputs it saw, for analyses that need real data later in the
    /// pipeline (`skip-sensitive`).
    pub calibration_data: Option<crate::calibrate::CalibrationData>,
    /// The graph as it was before `insert-qdq`, the float reference of
    /// quantization analyses. A clone: ids that existed when it was made
    /// resolve to the same nodes and values in both graphs; ids created
    /// later in either are unknown (`try_node` is `None`) in the other.
    pub float_graph: Option<qforge_ir::Graph>,
    /// The engine build the `tensorrt` pass asked for, run by whoever saves
    /// the model (the CLI) once the ONNX file exists.
    pub engine_build: Option<crate::tensorrt::build::EngineBuild>,
}

/// How close a pass's output must be numerically to its input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// An exact rewrite: outputs agree to 1e-5 relative, or the run fails.
    Exact,
    /// A lossy pass (quantization): the difference is reported, never fails.
    Approximate,
}

/// What a pass did: named counters (in the order first touched) and notes,
/// for the statistics table and the run report.
///
/// Whether the graph changed is not reported here: the pass manager reads
/// it from the graph's mutation counter ([`qforge_ir::Graph::generation`]),
/// so fixed-point groups and `--check-numerics` cannot be misled by a
/// forgotten or a spurious counter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    /// Counters such as `("folded", 57)`.
    pub counters: Vec<(String, u64)>,
    /// Human-readable remarks, e.g. why a candidate was left alone.
    pub notes: Vec<String>,
}

impl PassReport {
    /// Adds `n` to a counter of changes made (e.g. "folded").
    pub fn count(&mut self, key: &str, n: u64) {
        self.bump(key, n);
    }

    /// Adds `n` to a counter of what was seen rather than changed (e.g.
    /// "skipped"); shown the same way, kept apart for the reader of the code.
    pub fn info(&mut self, key: &str, n: u64) {
        self.bump(key, n);
    }

    fn bump(&mut self, key: &str, n: u64) {
        match self.counters.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v += n,
            None => self.counters.push((key.to_string(), n)),
        }
    }

    /// Reads a counter (0 when absent).
    pub fn get(&self, key: &str) -> u64 {
        self.counters.iter().find(|(k, _)| k == key).map(|c| c.1).unwrap_or(0)
    }

    /// Adds a note.
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    /// Folds another report into this one (fixed-point iterations).
    pub fn merge(&mut self, other: &PassReport) {
        for (k, v) in &other.counters {
            self.bump(k, *v);
        }
        self.notes.extend(other.notes.iter().cloned());
    }
}

/// Errors of passes, pipelines and the pass manager.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// A pass failed; the message names the node.
    #[error("{pass}: {message}")]
    Failed {
        /// The pass.
        pass: String,
        /// What went wrong.
        message: String,
    },
    /// A pipeline file or option problem, located in the YAML (or `--set`).
    #[error("{origin}: {message}")]
    Pipeline {
        /// Where.
        origin: crate::Origin,
        /// What is wrong, with suggestions.
        message: String,
    },
    /// The verifier rejected the graph a pass produced.
    #[error("IR verification failed after pass {pass}:\n{source}")]
    Verify {
        /// The pass.
        pass: String,
        /// The violations.
        source: IrError,
    },
    /// An exact pass changed the numbers.
    #[error(
        "numeric check failed after pass {pass}: output \"{output}\" differs by {rel_err:.3e} relative (tolerance {tolerance:.0e}); the rewrite is not exact"
    )]
    Numerics {
        /// The pass.
        pass: String,
        /// The output that differs most.
        output: String,
        /// Its max-abs relative error.
        rel_err: f64,
        /// The allowed error.
        tolerance: f64,
    },
    /// The runtime failed (numeric checks, calibration).
    #[error("{context}: {source}")]
    Runtime {
        /// What was being run.
        context: String,
        /// The engine's error.
        source: RuntimeError,
    },
    /// An IR error inside a pass.
    #[error("{context}: {source}")]
    Ir {
        /// Pass and node.
        context: String,
        /// The error.
        source: IrError,
    },
}

impl PassError {
    /// A pass failure; the manager fills in the pass name.
    pub fn msg(message: impl Into<String>) -> PassError {
        PassError::Failed { pass: String::new(), message: message.into() }
    }

    /// Wraps an IR error with context (`on node "x"`).
    pub fn ir(context: impl Into<String>, source: IrError) -> PassError {
        PassError::Ir { context: context.into(), source }
    }

    pub(crate) fn in_pass(self, name: &str) -> PassError {
        match self {
            PassError::Failed { pass, message } if pass.is_empty() => {
                PassError::Failed { pass: name.to_string(), message }
            }
            PassError::Ir { context, source } => PassError::Ir { context: format!("{name}: {context}"), source },
            other => other,
        }
    }
}
