//! Executes qforge graphs on the CPU.
//!
//! Calibration and numeric checks need to run the float model and read any
//! intermediate tensor. One [`Session`] trait hides the engine ([`Engine`]):
//! the default is tract (pure Rust, embedded, no system install), which can
//! expose any tensor as an output and also runs QuantizeLinear/
//! DequantizeLinear, so it executes quantized graphs too. With the `ort`
//! feature, ONNX Runtime (loaded at run time from `ORT_DYLIB_PATH` or the
//! `onnxruntime` Python wheel) is the faster alternative.

#![deny(missing_docs)]

pub mod data;
mod host;
mod malloc;
#[cfg(feature = "ort")]
mod ort_engine;
#[cfg(feature = "ort")]
mod pyenv;
mod random;
pub mod resize;
mod tract_engine;
mod tract_fixups;
mod tract_qdq;

use std::collections::BTreeMap;

pub use data::{DataError, Dataset, PadPosition, Prepared, Preprocess, Source, write_npy};
pub use host::{Data, HostTensor, TensorView, ViewData};
#[cfg(feature = "ort")]
pub use ort_engine::{DYLIB_ENV, OrtSession, library_path as ort_library_path};
pub use random::random_inputs;
pub use tract_engine::TractSession;

use qforge_ir::{Dim, Graph, Model};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An input has dims that are not fixed and no fixed dims were given.
    #[error("input \"{input}\" has dynamic dims {dims}; give fixed dims, e.g. --input-shape {input}={example}")]
    DynamicInput {
        /// The input.
        input: String,
        /// Its declared dims.
        dims: String,
        /// A suggestion in `1,3,640,640` form.
        example: String,
    },
    /// The caller fed something that does not match the model.
    #[error("{0}")]
    BadInput(String),
    /// A tensor the model would make is bigger than the bound
    /// ([`SessionOptions::max_tensor_bytes`]); nothing was allocated.
    #[error(
        "{node}: its output \"{value}\" would be {shape} ({}), above the {} one tensor may take; \
         the model's sizes are wrong, or raise the bound with {MAX_TENSOR_ENV}=MiB",
        human_bytes(.bytes),
        human_bytes(.limit)
    )]
    TooLarge {
        /// The node that makes it (`Resize "up"`).
        node: String,
        /// The tensor.
        value: String,
        /// Its dims, written `[1, 3, 1000000000, 8]`.
        shape: String,
        /// Its size.
        bytes: u64,
        /// The bound.
        limit: u64,
    },
    /// The engine refused the model or failed while running it.
    #[error("{engine}: {message}")]
    Engine {
        /// Which engine.
        engine: &'static str,
        /// Its error chain.
        message: String,
    },
}

/// Which engine executes a graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// ONNX Runtime when this build has it and its library loads, else
    /// tract: the fast engine wherever it can serve ([`Engine::resolve`]).
    #[default]
    Auto,
    /// tract: embedded, pure Rust, always available.
    Tract,
    /// ONNX Runtime, loaded at run time (needs the `ort` feature and the
    /// library: `ORT_DYLIB_PATH` or `pip install onnxruntime`).
    Ort,
}

impl Engine {
    /// Every engine name, for listings.
    pub const ALL: [Engine; 3] = [Engine::Auto, Engine::Tract, Engine::Ort];

    /// Its name in options and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Tract => "tract",
            Engine::Ort => "ort",
        }
    }

    /// Whether this build can run it (`ort` needs the `ort` feature).
    pub fn compiled(self) -> bool {
        match self {
            Engine::Auto | Engine::Tract => true,
            Engine::Ort => cfg!(feature = "ort"),
        }
    }

    /// Its name, and for `auto` what it stands for here (for notes).
    pub fn describe(self) -> String {
        match self {
            Engine::Auto => format!("auto: {}", auto_choice().1),
            e => e.name().to_string(),
        }
    }

    /// The engine that runs: `auto` becomes `ort` or `tract` (decided once
    /// per process, see [`Engine::auto_choice`]); the others are themselves.
    pub fn resolve(self) -> Engine {
        match self {
            Engine::Auto => auto_choice().0,
            e => e,
        }
    }
}

/// Starts resolving `engine` on a background thread: finding and loading
/// ONNX Runtime (a Python subprocess locates the wheel's library) takes
/// 0.2–0.3 s, which then overlaps the caller's own start-up (reading the
/// model, the exact passes) instead of delaying the first pass that runs a
/// model. Tract needs nothing. Whoever asks next waits for the same result.
pub fn warm_up(engine: Engine) {
    if matches!(engine, Engine::Auto | Engine::Ort) {
        let thread = std::thread::spawn(move || {
            let _ = engine.resolve();
            #[cfg(feature = "ort")]
            if engine == Engine::Ort {
                let _ = ort_engine::available();
            }
        });
        let mut warming = WARMING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        warming.push(thread);
    }
}

/// Warm-up threads not yet waited for ([`settle`]).
static WARMING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> = std::sync::Mutex::new(Vec::new());

/// Waits for the [`warm_up`] threads. Call it before the process exits: a
/// process that exits while one is still loading ONNX Runtime runs the
/// library's static destructors under that thread, which then crashes
/// (a run refused at once, e.g. for a dynamic input without
/// `--input-shape`, died of SIGSEGV in `libonnxruntime` instead of exiting 1).
pub fn settle() {
    let threads = std::mem::take(&mut *WARMING.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for t in threads {
        let _ = t.join();
    }
}

/// What `auto` stands for in this process, and why, in words for a note:
/// ONNX Runtime when the build has it and its library loads (the
/// `onnxruntime` wheel or `ORT_DYLIB_PATH`), else tract.
pub fn auto_choice() -> &'static (Engine, String) {
    static CHOICE: std::sync::OnceLock<(Engine, String)> = std::sync::OnceLock::new();
    CHOICE.get_or_init(|| {
        #[cfg(feature = "ort")]
        {
            match ort_engine::available() {
                Ok(path) => (Engine::Ort, format!("ONNX Runtime ({})", path.display())),
                Err(e) => (Engine::Tract, format!("tract (ONNX Runtime not available: {e})")),
            }
        }
        #[cfg(not(feature = "ort"))]
        {
            (Engine::Tract, "tract (this qforge was built without the `ort` feature)".to_string())
        }
    })
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Engine, String> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown engine \"{s}\" (engines: auto, tract, ort)"))
    }
}

/// Receives tensors while a run computes them ([`SessionOptions::observe`]).
pub trait Observer: Send + Sync {
    /// Tensor `index` of [`Observe::tensors`], computed by the run that
    /// [`Session::run_tagged`] tagged `tag`. The view is only valid during
    /// the call.
    fn observe(&self, tag: u64, index: usize, t: &TensorView<'_>);
}

/// Tensors handed to an [`Observer`] during each run instead of being
/// fetched: with ONNX Runtime, each one goes through a node of qforge's own
/// (`qforge.runtime:Observe`) the moment it is computed, so it is read
/// while still in cache, and ONNX Runtime keeps reusing its buffer for
/// later tensors (a fetched tensor must outlive the run: on a 640×640
/// YOLOv8s that is ~180 MB of fresh memory per run, and runs ~25 % slower).
/// tract fetches them and calls the observer after the run. Only float32
/// tensors that are not graph inputs can be observed.
#[derive(Clone)]
pub struct Observe {
    /// The tensors, by name; the observer gets their index in this list.
    pub tensors: Vec<String>,
    /// Who gets them.
    pub observer: std::sync::Arc<dyn Observer>,
}

impl std::fmt::Debug for Observe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe").field("tensors", &self.tensors).finish_non_exhaustive()
    }
}

/// What a session computes.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Tensors to fetch, by name; empty = the graph outputs.
    pub outputs: Vec<String>,
    /// Tensors to hand to an observer during each run ([`Observe`]).
    pub observe: Option<Observe>,
    /// Fixed dims for inputs whose declared dims are not all known.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// The engine.
    pub engine: Engine,
    /// Threads one run may use; 0 (the default) lets the engine decide
    /// (all cores). A caller that runs samples concurrently on one session
    /// sets 1: on 2 cores, two runs of two threads each mostly wait for each
    /// other (measured with ONNX Runtime: skip-sensitive on a YOLOv8s 41 s
    /// → 33 s with 1). tract runs each call on the calling thread anyway.
    pub threads: usize,
    /// The largest tensor, in bytes, the engine may be asked to make: a
    /// model whose shapes imply a bigger one is refused before it runs
    /// ([`RuntimeError::TooLarge`]). Default: [`max_tensor_bytes`].
    pub max_tensor_bytes: u64,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            outputs: Vec::new(),
            observe: None,
            input_shapes: BTreeMap::new(),
            engine: Engine::default(),
            threads: 0,
            max_tensor_bytes: max_tensor_bytes(),
        }
    }
}

/// Environment variable that sets [`max_tensor_bytes`] in MiB.
pub const MAX_TENSOR_ENV: &str = "QFORGE_MAX_TENSOR_MB";

/// The default bound on one tensor an engine makes: 4 GiB, or
/// `$QFORGE_MAX_TENSOR_MB` MiB.
///
/// Why a bound: every size in a model is data (a Resize scale of 1e9, a
/// MaxPool pad of 2^40), and an engine asked for a 128 GB buffer aborts the
/// process or sends the machine into swap instead of failing. Real
/// detectors stay far below it (the largest activation of a YOLOv8s at
/// 640x640 is 13 MB).
pub fn max_tensor_bytes() -> u64 {
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var(MAX_TENSOR_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(4 << 30, |mb| mb.saturating_mul(1 << 20))
    })
}

/// Bytes of a tensor of `dims` with elements of `elem` bytes, saturating
/// (a product that overflows is as good as infinite here).
pub fn tensor_bytes(dims: &[usize], elem: usize) -> u64 {
    dims.iter().fold(elem as u64, |acc, &d| acc.saturating_mul(d as u64))
}

/// `1.5 GiB`, `12.0 MiB`, `300 B`: a size for a message.
pub fn human_bytes(b: impl std::borrow::Borrow<u64>) -> String {
    let b = *b.borrow();
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{x:.1} {}", UNITS[u]) }
}

/// A model prepared for repeated runs.
pub trait Session: Send + Sync {
    /// Names of the inputs to feed, in order.
    fn input_names(&self) -> &[String];
    /// The shapes the session was prepared for, in input order.
    fn input_shapes(&self) -> &[Vec<usize>];
    /// Names of the fetched tensors, in the order `run` returns them.
    fn output_names(&self) -> &[String];
    /// Runs once; `inputs` in [`Session::input_names`] order.
    fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, RuntimeError>;

    /// Runs once and lends the fetched tensors (in [`Session::output_names`]
    /// order) to `visit`, which must not keep them. An engine that can lend
    /// its own output buffers saves a copy of every fetched tensor, which is
    /// most of the memory traffic of calibration (hundreds of MB per sample
    /// on a 640×640 detector). The default copies, through [`Session::run`].
    fn run_visit(&self, inputs: &[HostTensor], visit: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), RuntimeError> {
        let out = self.run(inputs)?;
        let views: Vec<TensorView<'_>> = out.iter().map(TensorView::of).collect();
        visit(&views);
        Ok(())
    }

    /// [`Session::run_visit`], the run's observed tensors
    /// ([`SessionOptions::observe`]) going to the observer with `tag`.
    fn run_tagged(
        &self,
        inputs: &[HostTensor],
        tag: u64,
        visit: &mut dyn FnMut(&[TensorView<'_>]),
    ) -> Result<(), RuntimeError> {
        let _ = tag;
        self.run_visit(inputs, visit)
    }
}

/// Applies qforge's glibc malloc settings for running models over many
/// samples (see the `malloc` module: freed activations stay in the heap for
/// the next run). Call it first thing in a process, before any thread
/// starts: set later, from a thread racing the model load, the arena cap
/// did not always take (YOLOv8s calibration then faulted 670 k pages
/// instead of 170 k, 1.5 s of system time instead of 0.5 s, in about half
/// the runs). Sessions call it too, for library users.
pub fn tune_malloc() {
    malloc::tune();
}

/// Opens a session on `opts.engine`.
pub fn session(model: &Model, opts: &SessionOptions) -> Result<Box<dyn Session>, RuntimeError> {
    malloc::tune();
    match opts.engine.resolve() {
        Engine::Tract | Engine::Auto => Ok(Box::new(TractSession::new(model, opts)?)),
        #[cfg(feature = "ort")]
        Engine::Ort => Ok(Box::new(OrtSession::new(model, opts)?)),
        #[cfg(not(feature = "ort"))]
        Engine::Ort => Err(RuntimeError::Engine {
            engine: "onnxruntime",
            message: "this qforge was built without the `ort` feature: rebuild with `--features ort` \
                      (e.g. `cargo install --path . --features ort`) or use the tract engine"
                .into(),
        }),
    }
}

/// What a session was prepared for, the same for every engine: the inputs
/// in order with their fixed shapes and dtypes, and the fetched tensors.
struct Signature {
    inputs: Vec<String>,
    shapes: Vec<Vec<usize>>,
    dtypes: Vec<qforge_ir::DataType>,
    outputs: Vec<String>,
}

impl Signature {
    /// The signature of `g` under `opts` (outputs default to the graph outputs).
    fn new(g: &Graph, opts: &SessionOptions) -> Result<Signature, RuntimeError> {
        let (inputs, shapes) = resolve_input_shapes(g, &opts.input_shapes)?.into_iter().unzip();
        let dtypes = g.runtime_inputs().iter().map(|&v| g.dtype(v).unwrap_or(qforge_ir::DataType::F32)).collect();
        let outputs = if opts.outputs.is_empty() {
            g.outputs().iter().map(|p| g.value_name(p.value).to_string()).collect()
        } else {
            opts.outputs.clone()
        };
        Ok(Signature { inputs, shapes, dtypes, outputs })
    }

    /// Checks a feed against it (count, dtype, shape).
    fn check(&self, inputs: &[HostTensor]) -> Result<(), RuntimeError> {
        let names = &self.inputs;
        if inputs.len() != names.len() {
            return Err(RuntimeError::BadInput(format!(
                "{} inputs given, the model takes {} ({})",
                inputs.len(),
                names.len(),
                names.join(", ")
            )));
        }
        for (i, t) in inputs.iter().enumerate() {
            if t.shape != self.shapes[i] || t.dtype() != self.dtypes[i] {
                return Err(RuntimeError::BadInput(format!(
                    "input \"{}\" must be {}{:?}, got {}{:?}",
                    names[i],
                    self.dtypes[i],
                    self.shapes[i],
                    t.dtype(),
                    t.shape
                )));
            }
        }
        Ok(())
    }
}

/// The fixed shape of each runtime input: declared dims, or the ones given in
/// `given`; an error names the first input that stays dynamic.
pub fn resolve_input_shapes(
    g: &Graph,
    given: &BTreeMap<String, Vec<usize>>,
) -> Result<Vec<(String, Vec<usize>)>, RuntimeError> {
    let mut out = Vec::new();
    for v in g.runtime_inputs() {
        let name = g.value_name(v).to_string();
        if let Some(s) = given.get(&name) {
            out.push((name, s.clone()));
            continue;
        }
        let ty = g.type_info(v);
        let shape = ty.as_ref().and_then(|t| t.shape.clone());
        match shape.as_ref().and_then(|s| s.as_known()) {
            Some(d) if d.iter().all(|&x| x >= 0) => out.push((name, d.iter().map(|&x| x as usize).collect())),
            _ => {
                let dims = shape.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "[?]".into());
                let example = match &shape {
                    Some(s) => {
                        s.0.iter()
                            .enumerate()
                            .map(|(i, d)| match d {
                                Dim::Known(k) => k.to_string(),
                                _ if i == 0 => "1".into(),
                                _ => "640".into(),
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    }
                    None => "1,3,640,640".into(),
                };
                return Err(RuntimeError::DynamicInput { input: name, dims, example });
            }
        }
    }
    for name in given.keys() {
        if !out.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
            return Err(RuntimeError::BadInput(format!(
                "--input-shape names \"{name}\", which is not an input of the model (inputs: {})",
                known.join(", ")
            )));
        }
    }
    Ok(out)
}
