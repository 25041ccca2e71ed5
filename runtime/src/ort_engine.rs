//! The ONNX Runtime engine (feature `ort`).
//!
//! ONNX Runtime is the reference executor of ONNX and its CPU kernels are
//! several times faster than tract's on convolution-heavy detectors, so it
//! is the fast engine for calibration and accuracy checks. It is loaded at
//! run time (`ort`'s `load-dynamic`): nothing is linked at build time and no
//! binary is downloaded; the library comes from `ORT_DYLIB_PATH` or from the
//! `onnxruntime` Python wheel (`pip install onnxruntime`), which ships
//! `onnxruntime/capi/libonnxruntime.so.*`.
//!
//! ONNX Runtime can only fetch graph outputs, so the requested tensors are
//! made outputs of a copy of the graph before the session is built (without
//! a declared type when none is known: ONNX Runtime infers it, and a guess
//! would be wrong for e.g. QuantizeLinear's int8 output).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use half::f16;
use ort::session::Session as OrtInner;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use crate::host::{Data, HostTensor, TensorView, ViewData};
use crate::{RuntimeError, SessionOptions, Signature};
use qforge_ir::Model;
use qforge_ir::proto::{AttributeProto, NodeProto, OperatorSetIdProto, ValueInfoProto};

/// The environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

fn engine_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Engine { engine: "onnxruntime", message: e.to_string() }
}

/// The process-wide ONNX Runtime environment: the library is loaded once.
fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        crate::malloc::tune();
        let path = library_path()?;
        let builder =
            ort::init_from(&path).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        builder
            .with_name("qforge")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime ({}): {e}", path.display()))
    });
    env.as_ref().map_err(|m| RuntimeError::Engine { engine: "onnxruntime", message: m.clone() })
}

/// Loads ONNX Runtime (once) and says where from, or why it cannot.
pub(crate) fn available() -> Result<PathBuf, String> {
    environment().map_err(|e| e.to_string())?;
    library_path()
}

/// Where `libonnxruntime` is: `$ORT_DYLIB_PATH`, else the `onnxruntime`
/// wheel of `$PYTHON` / `python3` / `python`. Found once per process: the
/// search starts a Python (0.02 s without `site`, see `FAST_SEARCH`; behind
/// a pyenv shim, the interpreter the shim would run, see `pyenv`, saving the
/// shim's 0.1 s), and loading the library and saying where it came from
/// both ask.
pub fn library_path() -> Result<PathBuf, String> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(find_library).clone()
}

fn find_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(DYLIB_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{DYLIB_ENV}={} is not a file (it must name libonnxruntime.so)", p.display()))
        };
    }
    let pythons: Vec<String> = std::env::var("PYTHON").into_iter().chain(["python3".into(), "python".into()]).collect();
    for py in &pythons {
        // A pyenv shim's interpreter directly (see `pyenv`), else the shim.
        let direct = crate::pyenv::interpreter(py).and_then(|exe| wheel_library(exe.as_os_str()));
        if let Some(p) = direct.or_else(|| wheel_library(py.as_ref())) {
            return Ok(p);
        }
    }
    Err(format!(
        "the `ort` engine needs the ONNX Runtime library: set {DYLIB_ENV} to libonnxruntime.so, or \
         `pip install onnxruntime` for {} (its wheel ships the library)",
        pythons.join(" / ")
    ))
}

/// The library inside the `onnxruntime` wheel of `python`, if it has one.
///
/// Asked first of a Python started with `-S` (no `site` at start-up, see
/// [`FAST_SEARCH`]), which answers in a quarter of the time; the full search
/// runs only when that one finds no library.
fn wheel_library(python: &std::ffi::OsStr) -> Option<PathBuf> {
    library_in(python, &["-S", "-c", FAST_SEARCH]).or_else(|| library_in(python, &["-c", FULL_SEARCH]))
}

/// Finds the package without importing it: importing onnxruntime imports
/// numpy, which took 0.4 s of every run that uses this engine.
const FULL_SEARCH: &str = "import importlib.util as u, os; s = u.find_spec('onnxruntime'); \
                           print(os.path.join(s.submodule_search_locations[0], 'capi'))";

/// The same search without running `site.main()`: the `.pth` files it
/// processes at start-up (some import modules, e.g. certifi) made the full
/// search cost 0.08 s against 0.02 s here, on the critical path of every
/// run. The directories searched are the ones the import system would
/// search, in its order: `sys.path` (the script's directory, `PYTHONPATH`,
/// the standard library), the user site when it is enabled, then the
/// site-packages of `sys.prefix`. What only `site.main()` sets up is left to
/// the full search: paths from `.pth` files, and virtual environments (a
/// `pyvenv.cfg` beside the interpreter or one level up, as `site` looks for
/// it), whose prefix, site-packages and user site `site` alone decides.
const FAST_SEARCH: &str = r"import os, site, sys
exe = os.path.dirname(os.path.abspath(sys.executable))
if not any(os.path.isfile(os.path.join(d, 'pyvenv.cfg')) for d in (exe, os.path.dirname(exe))):
    user = [site.getusersitepackages()] if site.check_enableusersite() else []
    for d in sys.path + user + site.getsitepackages():
        p = os.path.join(d or '.', 'onnxruntime')
        if os.path.isfile(os.path.join(p, '__init__.py')):
            print(os.path.join(p, 'capi'))
            break
";

/// Runs `python args` and looks for the library in the directory it prints.
fn library_in(python: &std::ffi::OsStr, args: &[&str]) -> Option<PathBuf> {
    let out = Command::new(python).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if dir.as_os_str().is_empty() {
        return None;
    }
    let mut libs: Vec<PathBuf> =
        std::fs::read_dir(&dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_library(p)).collect();
    libs.sort();
    libs.pop()
}

fn is_library(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.starts_with("libonnxruntime.so") || name == "libonnxruntime.dylib" || name == "onnxruntime.dll"
}

/// A model loaded into ONNX Runtime.
///
/// ONNX Runtime's `run` takes `&mut self`, and callers such as calibration
/// run samples from several threads at once: each concurrent caller takes an
/// idle session from a pool, which grows on demand (a sequential caller only
/// ever builds one). Intra-op threads do not spin between runs, so the
/// caller's own work (histograms) gets the cores back at once.
pub struct OrtSession {
    /// The model with the fetched tensors as outputs, to build more sessions.
    bytes: Vec<u8>,
    idle: Mutex<Vec<Inner>>,
    sig: Signature,
    /// Intra-op threads of each session (0: ONNX Runtime's default).
    threads: usize,
    observer: Option<Arc<dyn crate::Observer>>,
}

/// One ONNX Runtime session of the pool, and the tag its observe nodes
/// hand the observer (set before each run).
struct Inner {
    session: OrtInner,
    tag: Arc<AtomicU64>,
}

/// The custom op domain of observe nodes ([`crate::Observe`]).
const OBSERVE_DOMAIN: &str = "qforge.runtime";

/// `qforge.runtime:Observe(x) -> y`: hands `x` to the observer with the
/// node's `index` attribute and the session's current tag; `y` is one
/// zero, made a graph output so the node is kept.
struct ObserveOp {
    observer: Arc<dyn crate::Observer>,
    tag: Arc<AtomicU64>,
}

impl ort::operator::Operator for ObserveOp {
    type Kernel<'attr> = ort::operator::BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "Observe"
    }

    fn inputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorInput> {
        [ort::operator::OperatorInput::required(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = ort::operator::OperatorOutput> {
        [ort::operator::OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, kctx: &ort::operator::KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let index = kctx.get::<i64>("index").ok_or_else(|| ort::Error::new("Observe without an index"))? as usize;
        let (observer, tag) = (self.observer.clone(), self.tag.clone());
        Ok(Box::new(move |ctx: &ort::operator::ComputeContext| {
            let x = ctx.input(0)?.ok_or_else(|| ort::Error::new("Observe without its input"))?;
            let (shape, data) = x.try_extract_tensor::<f32>()?;
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            // An empty tensor may come with a null data pointer (see `from_ort`).
            let data = if shape.contains(&0) { &[][..] } else { data };
            observer.observe(tag.load(Ordering::SeqCst), index, &TensorView { shape, data: ViewData::F32(data) });
            let mut y = ctx.output(0, [1usize])?.ok_or_else(|| ort::Error::new("Observe without its output"))?;
            y.try_extract_tensor_mut::<f32>()?.1[0] = 0.0;
            Ok(())
        }))
    }
}

/// Name of the graph output of observe node `index`.
fn observe_output(index: usize) -> String {
    format!("qforge_observed_{index}")
}

impl OrtSession {
    /// Prepares `model` to compute `opts.outputs` (or the graph outputs).
    pub fn new(model: &Model, opts: &SessionOptions) -> Result<OrtSession, RuntimeError> {
        let g = &model.graph;
        let sig = Signature::new(g, opts)?;
        // Added to the exported proto, not to a clone of the graph (which
        // would copy every weight once more).
        let mut proto = qforge_ir::export(model);
        let graph = proto.graph.get_or_insert_with(Default::default);
        for name in &sig.outputs {
            let v = g
                .find_value(name)
                .ok_or_else(|| RuntimeError::BadInput(format!("tensor \"{name}\" to fetch is not in the graph")))?;
            // A graph input is handed back from the caller's own feed (see
            // `run`): ONNX Runtime returns an input fetched as an output
            // without copying it, pointing into a buffer freed with the feed.
            if !g.is_graph_output(v) && !sig.inputs.contains(name) {
                graph.output.push(ValueInfoProto { name: Some(name.clone()), ..Default::default() });
            }
        }
        if let Some(o) = &opts.observe {
            for name in &o.tensors {
                let v = g.find_value(name).ok_or_else(|| {
                    RuntimeError::BadInput(format!("tensor \"{name}\" to observe is not in the graph"))
                })?;
                // An unknown type is left to ONNX Runtime, which refuses
                // anything but float32 for the node's input.
                if g.dtype(v).is_some_and(|t| t != qforge_ir::DataType::F32) || sig.inputs.contains(name) {
                    return Err(RuntimeError::BadInput(format!(
                        "tensor \"{name}\" cannot be observed: only float32 tensors that are not inputs can"
                    )));
                }
            }
            for index in observe_order(&graph.node, &o.tensors) {
                let name = &o.tensors[index];
                graph.node.push(NodeProto {
                    input: vec![name.clone()],
                    output: vec![observe_output(index)],
                    name: Some(format!("qforge_observe_{index}")),
                    op_type: Some("Observe".into()),
                    domain: Some(OBSERVE_DOMAIN.into()),
                    attribute: vec![AttributeProto {
                        name: Some("index".into()),
                        r#type: Some(qforge_ir::proto::attribute_proto::AttributeType::Int as i32),
                        i: Some(index as i64),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                graph.output.push(ValueInfoProto { name: Some(observe_output(index)), ..Default::default() });
            }
            proto.opset_import.push(OperatorSetIdProto { domain: Some(OBSERVE_DOMAIN.into()), version: Some(1) });
        }
        let bytes = prost::Message::encode_to_vec(&proto);
        let observer = opts.observe.as_ref().map(|o| o.observer.clone());
        // The first session now, so a model ONNX Runtime refuses fails here.
        let first = build(&bytes, opts.threads, observer.as_ref())?;
        Ok(OrtSession { bytes, idle: Mutex::new(vec![first]), sig, threads: opts.threads, observer })
    }
}

/// The order in which to append the observe nodes of `tensors` to `nodes`
/// (a topologically sorted node list): the tensor produced last first.
///
/// ONNX Runtime's default execution order is a depth-first walk back from
/// the graph's leaf nodes, the leaf with the highest node index first, each
/// node emitted once its inputs are. Observe nodes are leaves: appended in
/// production order, the last one's walk emitted nearly the whole model
/// before any of them ran (the first at node 219 of 380 on nudenet), so every
/// observed tensor stayed alive, and left the cache, until the end of the
/// run. Appended in reverse, each runs right after its tensor is made, while
/// it is in cache, and its buffer can be reused at once.
fn observe_order(nodes: &[NodeProto], tensors: &[String]) -> Vec<usize> {
    let made_at: std::collections::HashMap<&str, usize> =
        nodes.iter().enumerate().flat_map(|(k, n)| n.output.iter().map(move |o| (o.as_str(), k))).collect();
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    // Stable: tensors of one node keep their request order among themselves.
    order.sort_by_key(|&i| std::cmp::Reverse(made_at.get(tensors[i].as_str()).copied()));
    order
}

fn build(bytes: &[u8], threads: usize, observer: Option<&Arc<dyn crate::Observer>>) -> Result<Inner, RuntimeError> {
    let tag = Arc::new(AtomicU64::new(0));
    let mut builder = OrtInner::builder(environment()?).map_err(engine_err)?;
    if let Some(observer) = observer {
        let op = ObserveOp { observer: observer.clone(), tag: tag.clone() };
        let domain = ort::operator::OperatorDomain::new(OBSERVE_DOMAIN).and_then(|d| d.add(op)).map_err(engine_err)?;
        // Without the memory pattern, ONNX Runtime allocates each tensor
        // when it is made and frees it when it is dead, instead of one block
        // for the whole run: with observe nodes (which let it reuse buffers)
        // that kept peak RSS flat (nudenet, 1x -> 8x the data: 187 -> 199 MB,
        // where one block per run grew 209 -> 327 MB in the same sitting)
        // and cut system time (YOLOv8s 1.3 -> 0.45 s).
        builder = builder.with_operators(domain).map_err(engine_err)?.with_memory_pattern(false).map_err(engine_err)?;
    }
    // No CPU memory arena: its blocks are kept at their high-water mark and
    // extended as they fragment, so peak RSS crept up with the number of
    // runs; plain malloc (tuned in `malloc`) stays flat.
    // SAFETY: the pointer is the builder's live OrtSessionOptions; the API
    // table is the loaded library's; a returned status is released once.
    unsafe {
        let api = ort::api();
        let status = (api.DisableCpuMemArena)(ort::AsPointer::ptr_mut(&mut builder));
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Err(engine_err("cannot disable ONNX Runtime's CPU memory arena"));
        }
    }
    builder
        .with_log_level(ort::logging::LogLevel::Error)
        .map_err(engine_err)?
        .with_intra_op_spinning(false)
        .map_err(engine_err)?
        .with_intra_threads(threads)
        .map_err(engine_err)?
        .commit_from_memory(bytes)
        .map(|session| Inner { session, tag })
        .map_err(engine_err)
}

fn to_ort(t: &HostTensor) -> Result<DynValue, RuntimeError> {
    let shape = t.shape.clone();
    let v = match &t.data {
        Data::F32(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
        Data::F16(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
        Data::F64(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
        Data::I64(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
        Data::I32(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
        Data::I8(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
        Data::U8(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
        Data::Bool(v) => Tensor::from_array((shape, v.clone())).map(Tensor::into_dyn),
    };
    v.map_err(engine_err)
}

fn from_ort(name: &str, v: &DynValue) -> Result<HostTensor, RuntimeError> {
    fn take<T: ort::value::PrimitiveTensorElementType + Clone>(
        v: &DynValue,
    ) -> Result<(Vec<usize>, Vec<T>), RuntimeError> {
        let (shape, data) = v.try_extract_tensor::<T>().map_err(engine_err)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        // An empty tensor may come with a null data pointer, which a slice
        // copy must not touch.
        if shape.contains(&0) {
            return Ok((shape, Vec::new()));
        }
        Ok((shape, data.to_vec()))
    }
    let ty = match v.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(RuntimeError::BadInput(format!("output \"{name}\" is not a tensor ({other:?})"))),
    };
    let (shape, data) = match ty {
        TensorElementType::Float32 => take::<f32>(v).map(|(s, d)| (s, Data::F32(d)))?,
        TensorElementType::Float16 => take::<f16>(v).map(|(s, d)| (s, Data::F16(d)))?,
        TensorElementType::Float64 => take::<f64>(v).map(|(s, d)| (s, Data::F64(d)))?,
        TensorElementType::Int64 => take::<i64>(v).map(|(s, d)| (s, Data::I64(d)))?,
        TensorElementType::Int32 => take::<i32>(v).map(|(s, d)| (s, Data::I32(d)))?,
        TensorElementType::Int8 => take::<i8>(v).map(|(s, d)| (s, Data::I8(d)))?,
        TensorElementType::Uint8 => take::<u8>(v).map(|(s, d)| (s, Data::U8(d)))?,
        TensorElementType::Bool => take::<bool>(v).map(|(s, d)| (s, Data::Bool(d)))?,
        other => {
            return Err(RuntimeError::BadInput(format!(
                "output \"{name}\" has type {other:?}, which qforge cannot read back"
            )));
        }
    };
    Ok(HostTensor { shape, data })
}

impl crate::Session for OrtSession {
    fn input_names(&self) -> &[String] {
        &self.sig.inputs
    }
    fn input_shapes(&self) -> &[Vec<usize>] {
        &self.sig.shapes
    }
    fn output_names(&self) -> &[String] {
        &self.sig.outputs
    }
    fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, RuntimeError> {
        self.with_outputs(inputs, |out| {
            self.sig
                .outputs
                .iter()
                .map(|n| {
                    if let Some(i) = self.sig.inputs.iter().position(|x| x == n) {
                        return Ok(inputs[i].clone());
                    }
                    from_ort(n, output(out, n)?)
                })
                .collect()
        })
    }

    fn run_visit(&self, inputs: &[HostTensor], visit: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), RuntimeError> {
        self.run_tagged(inputs, 0, visit)
    }

    fn run_tagged(
        &self,
        inputs: &[HostTensor],
        tag: u64,
        visit: &mut dyn FnMut(&[TensorView<'_>]),
    ) -> Result<(), RuntimeError> {
        self.with_tagged_outputs(inputs, tag, |out| {
            let views = self
                .sig
                .outputs
                .iter()
                .map(|n| match self.sig.inputs.iter().position(|x| x == n) {
                    Some(i) => Ok(TensorView::of(&inputs[i])),
                    None => view(n, output(out, n)?),
                })
                .collect::<Result<Vec<_>, _>>()?;
            visit(&views);
            Ok(())
        })
    }
}

impl OrtSession {
    /// Runs on an idle session (building one if none is) and hands its
    /// outputs to `f` before the session goes back to the pool.
    fn with_outputs<R>(
        &self,
        inputs: &[HostTensor],
        f: impl FnOnce(&ort::session::SessionOutputs<'_>) -> Result<R, RuntimeError>,
    ) -> Result<R, RuntimeError> {
        self.with_tagged_outputs(inputs, 0, f)
    }

    /// [`OrtSession::with_outputs`], observe nodes handing `tag` to the observer.
    fn with_tagged_outputs<R>(
        &self,
        inputs: &[HostTensor],
        tag: u64,
        f: impl FnOnce(&ort::session::SessionOutputs<'_>) -> Result<R, RuntimeError>,
    ) -> Result<R, RuntimeError> {
        self.sig.check(inputs)?;
        let feed: Vec<(String, DynValue)> =
            self.sig.inputs.iter().cloned().zip(inputs.iter().map(to_ort).collect::<Result<Vec<_>, _>>()?).collect();
        let poisoned = || engine_err("a previous run panicked");
        let taken = self.idle.lock().map_err(|_| poisoned())?.pop();
        let mut session = match taken {
            Some(s) => s,
            None => build(&self.bytes, self.threads, self.observer.as_ref())?,
        };
        session.tag.store(tag, Ordering::SeqCst);
        let result = session.session.run(feed).map_err(engine_err).and_then(|out| f(&out));
        self.idle.lock().map_err(|_| poisoned())?.push(session);
        result
    }
}

fn output<'s>(out: &'s ort::session::SessionOutputs<'_>, name: &str) -> Result<&'s DynValue, RuntimeError> {
    out.get(name).ok_or_else(|| engine_err(format!("no output \"{name}\"")))
}

/// An output as a view: f32 data where ONNX Runtime wrote it, anything else copied.
fn view<'a>(name: &str, v: &'a DynValue) -> Result<TensorView<'a>, RuntimeError> {
    if matches!(v.dtype(), ValueType::Tensor { ty: TensorElementType::Float32, .. }) {
        let (shape, data) = v.try_extract_tensor::<f32>().map_err(engine_err)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        // An empty tensor may come with a null data pointer (see `from_ort`).
        let data = if shape.contains(&0) { &[][..] } else { data };
        return Ok(TensorView { shape, data: ViewData::F32(data) });
    }
    let t = from_ort(name, v)?;
    Ok(TensorView { shape: t.shape, data: ViewData::Owned(t.data) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interpreter `python3` runs (through a pyenv shim when it is one),
    /// and the library its full search finds; `None` (a loud skip, or a
    /// failure under `CI`) when that Python has no `onnxruntime` wheel.
    fn python_with_wheel(test: &str) -> Option<(PathBuf, PathBuf)> {
        let py = crate::pyenv::interpreter("python3").unwrap_or_else(|| PathBuf::from("python3"));
        match library_in(py.as_os_str(), &["-c", FULL_SEARCH]) {
            Some(lib) => Some((py, lib)),
            None if std::env::var_os("CI").is_some() => {
                panic!("{test}: CI is set, so this must not be skipped: python3 has no onnxruntime wheel")
            }
            None => {
                eprintln!("\n*** SKIP: {test}: python3 has no onnxruntime wheel ***\n");
                None
            }
        }
    }

    #[test]
    fn fast_search_finds_what_the_full_search_finds() {
        let Some((py, full)) = python_with_wheel("fast_search_finds_what_the_full_search_finds") else { return };
        assert_eq!(library_in(py.as_os_str(), &["-S", "-c", FAST_SEARCH]), Some(full.clone()));
        assert_eq!(wheel_library(py.as_os_str()), Some(full));
    }

    /// A virtual environment sees the base's site-packages only when it was
    /// made with `--system-site-packages`, which only `site.main()` applies
    /// (without it, `sys.prefix` is the base's): the fast search leaves
    /// every virtual environment to the full search.
    #[test]
    fn virtual_environments_see_what_python_sees() {
        let Some((py, full)) = python_with_wheel("virtual_environments_see_what_python_sees") else { return };
        let base = std::env::temp_dir().join(format!("qforge-venv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let venv = |name: &str, system: bool| {
            let dir = base.join(name);
            let mut cmd = Command::new(&py);
            cmd.args(["-m", "venv", "--without-pip"]);
            if system {
                cmd.arg("--system-site-packages");
            }
            let st = cmd.arg(&dir).status().expect("python3 -m venv");
            assert!(st.success(), "python3 -m venv {} failed", dir.display());
            dir.join("bin").join("python")
        };
        let isolated = venv("isolated", false);
        assert_eq!(library_in(isolated.as_os_str(), &["-S", "-c", FAST_SEARCH]), None);
        assert_eq!(wheel_library(isolated.as_os_str()), None, "an isolated venv has no onnxruntime");
        // When python3 is itself a venv's, the wheel is in that venv, which
        // a venv made from it does not see even with the system packages.
        let in_venv = Command::new(&py)
            .args(["-c", "import sys; print(sys.prefix != sys.base_prefix)"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "True");
        if !in_venv {
            let shared = venv("shared", true);
            assert_eq!(library_in(shared.as_os_str(), &["-S", "-c", FAST_SEARCH]), None);
            assert_eq!(wheel_library(shared.as_os_str()), Some(full), "the full search sees the base's packages");
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
