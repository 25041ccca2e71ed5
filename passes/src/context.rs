//! What a pass receives besides the graph, what it returns, and its errors.
//!
//! The context is generic on purpose: it holds the run's settings, a typed
//! map in which passes leave state for later passes ([`Extensions`], one
//! value per type, so a new pass with state edits no framework code), and
//! the work that needs the written model file ([`AfterSave`]), which the
//! caller that writes the model runs once the file exists.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use qforge_ir::IrError;
use qforge_runtime::RuntimeError;

/// Shared state of one pipeline run.
#[derive(Debug, Default)]
pub struct PassContext {
    /// Folder of the input model (relative paths in options resolve here
    /// when they do not exist relative to the working directory).
    pub model_dir: Option<PathBuf>,
    /// Where the pipeline's output model goes (artifacts are written beside it).
    pub output_path: Option<PathBuf>,
    /// Fixed dims for dynamic inputs (`--input-shape`).
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Fixed dims the model's own metadata suggests for dynamic inputs
    /// (Ultralytics exports write `imgsz`): used only where neither
    /// `--input-shape` nor a pass option (e.g. `calibrate.data.size`) says.
    pub metadata_shapes: BTreeMap<String, Vec<usize>>,
    /// No progress bars.
    pub quiet: bool,
    /// The engine passes run the model on unless their own `engine` option
    /// says otherwise (`qforge run --engine`).
    pub engine: qforge_runtime::Engine,
    /// Seed of everything random.
    pub seed: u64,
    /// A run report was asked for (`qforge run --report`): passes may spend
    /// extra time on the data they publish for it ([`PassReport::publish`]),
    /// e.g. `calibrate` computing every method's threshold per tensor.
    pub report_detail: bool,
    /// Set by the pass manager for the running pass: whether a pass after
    /// it reads the float model's kept outputs
    /// ([`crate::PassOptions::FLOAT_OUTPUTS`]). `None` (a pass run on its
    /// own) counts as yes.
    pub float_outputs_later: Option<bool>,
    /// State passes keep for later passes, by type (e.g. a calibration
    /// table one pass measures and another consumes).
    pub ext: Extensions,
    /// Work to do on the written model file, in the order it was added.
    pub after_save: Vec<AfterSave>,
}

/// A map from a type to one value of it: the state passes hand to later
/// passes. The type is the key, so two passes agree on an entry by naming
/// the same type, and a plugin's state cannot collide with a built-in's.
#[derive(Default)]
pub struct Extensions {
    map: HashMap<TypeId, Entry>,
}

struct Entry {
    value: Box<dyn Any + Send + Sync>,
    type_name: &'static str,
}

impl Extensions {
    /// Stores `value`, returning the previous value of its type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        let entry = Entry { value: Box::new(value), type_name: std::any::type_name::<T>() };
        self.map.insert(TypeId::of::<T>(), entry).and_then(|old| old.value.downcast().ok().map(|b| *b))
    }

    /// The value of type `T`, if one was stored.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>()).and_then(|e| e.value.downcast_ref())
    }

    /// The value of type `T`, mutably.
    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.map.get_mut(&TypeId::of::<T>()).and_then(|e| e.value.downcast_mut())
    }

    /// Removes and returns the value of type `T`.
    pub fn take<T: Any>(&mut self) -> Option<T> {
        self.map.remove(&TypeId::of::<T>()).and_then(|e| e.value.downcast().ok().map(|b| *b))
    }

    /// Whether a value of type `T` is stored.
    pub fn contains<T: Any>(&self) -> bool {
        self.map.contains_key(&TypeId::of::<T>())
    }

    /// The type names of the stored values, sorted (for diagnostics).
    pub fn type_names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.map.values().map(|e| e.type_name).collect();
        v.sort_unstable();
        v
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.type_names()).finish()
    }
}

/// Work a pass leaves for after the model is written, because it needs the
/// file (an engine build, an upload): whoever writes the model (the CLI)
/// runs these in order once the atomic write succeeded, and writes nothing
/// more if one fails.
pub struct AfterSave {
    /// What it does, for errors (`tensorrt: engine build`).
    pub what: String,
    hook: Hook,
}

/// The work of an [`AfterSave`], on the written model's path.
type Hook = Box<dyn FnOnce(&Path) -> Result<(), String> + Send + Sync>;

impl AfterSave {
    /// Work described by `what`, to run on the written model's path.
    pub fn new(
        what: impl Into<String>,
        hook: impl FnOnce(&Path) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        AfterSave { what: what.into(), hook: Box::new(hook) }
    }

    /// Runs it on `model`, the written file; the error says what failed.
    pub fn run(self, model: &Path) -> Result<(), PassError> {
        let what = self.what;
        (self.hook)(model).map_err(|message| PassError::Failed { pass: what, message })
    }
}

impl fmt::Debug for AfterSave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfterSave").field("what", &self.what).finish_non_exhaustive()
    }
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
/// for the statistics table and the run report, and structured data for
/// the run report ([`PassReport::publish`]).
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
    /// Structured sections for the run report, by name (`"calibration"`,
    /// `"sensitivity"`): the JSON report carries them as they are and the
    /// HTML report draws the sections it knows, so both say the same thing.
    pub data: BTreeMap<String, serde_json::Value>,
    /// Things the user should act on although the pass succeeded (a range
    /// made up because a tensor saw no finite value); the pass manager also
    /// lists them among the run's warnings, prefixed with the pass name.
    pub warnings: Vec<String>,
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

    /// Publishes a section of structured data for the run report; a second
    /// section of the same name replaces the first. Keep it bounded: it is
    /// written into every report (downsample histograms, cap long lists).
    pub fn publish(&mut self, section: &str, value: serde_json::Value) {
        self.data.insert(section.to_string(), value);
    }

    /// Adds a warning.
    pub fn warn(&mut self, s: impl Into<String>) {
        self.warnings.push(s.into());
    }

    /// Folds another report into this one (fixed-point iterations); the
    /// other's data sections replace same-named ones.
    pub fn merge(&mut self, other: &PassReport) {
        for (k, v) in &other.counters {
            self.bump(k, *v);
        }
        self.notes.extend(other.notes.iter().cloned());
        self.data.extend(other.data.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.warnings.extend(other.warnings.iter().cloned());
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
    /// Two passes, or two metrics, are registered under one name.
    #[error("{kind} `{name}` is registered more than once, by {}; names must be unique (rename one)", modules.join(" and by "))]
    DuplicateName {
        /// `pass` or `metric`.
        kind: &'static str,
        /// The name.
        name: String,
        /// The modules that registered it (`module_path!()`), sorted.
        modules: Vec<String>,
    },
    /// The run was asked to stop ([`crate::interrupt::request`]).
    #[error("interrupted")]
    Interrupted,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Table(u32);
    #[derive(Debug, PartialEq)]
    struct Other(&'static str);

    #[test]
    fn extensions_are_keyed_by_type() {
        let mut x = Extensions::default();
        assert!(x.get::<Table>().is_none() && !x.contains::<Table>());
        assert_eq!(x.insert(Table(1)), None);
        assert_eq!(x.insert(Other("a")), None);
        assert_eq!(x.insert(Table(2)), Some(Table(1)), "one value per type; the old one comes back");
        x.get_mut::<Table>().expect("stored").0 += 1;
        assert_eq!(x.get::<Table>(), Some(&Table(3)));
        assert_eq!(x.get::<Other>(), Some(&Other("a")));
        assert_eq!(format!("{x:?}").matches("Table").count(), 1, "{x:?}");
        assert_eq!(x.take::<Table>(), Some(Table(3)));
        assert!(x.get::<Table>().is_none() && x.contains::<Other>());
    }

    #[test]
    fn after_save_errors_say_what_failed() {
        let ok =
            AfterSave::new("noop", |p: &Path| if p.ends_with("m.onnx") { Ok(()) } else { Err("wrong file".into()) });
        ok.run(Path::new("out/m.onnx")).expect("runs on the given path");
        let bad = AfterSave::new("tool: upload", |_: &Path| Err("no network".to_string()));
        assert_eq!(format!("{bad:?}"), "AfterSave { what: \"tool: upload\", .. }");
        assert_eq!(bad.run(Path::new("m.onnx")).unwrap_err().to_string(), "tool: upload: no network");
    }
}
