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
use std::sync::{Mutex, OnceLock};

use half::f16;
use ort::session::Session as OrtInner;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use crate::host::{Data, HostTensor, TensorView, ViewData};
use crate::{RuntimeError, SessionOptions, Signature};
use qforge_ir::Model;
use qforge_ir::proto::ValueInfoProto;

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
/// wheel of `$PYTHON` / `python3` / `python`.
pub fn library_path() -> Result<PathBuf, String> {
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
        if let Some(p) = wheel_library(py) {
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
fn wheel_library(python: &str) -> Option<PathBuf> {
    // Finds the package without importing it: importing onnxruntime
    // imports numpy, which took 0.4 s of every run that uses this engine.
    const SCRIPT: &str = "import importlib.util as u, os; s = u.find_spec('onnxruntime'); \
                          print(os.path.join(s.submodule_search_locations[0], 'capi'))";
    let out = Command::new(python).args(["-c", SCRIPT]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
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
    idle: Mutex<Vec<OrtInner>>,
    sig: Signature,
    /// Intra-op threads of each session (0: ONNX Runtime's default).
    threads: usize,
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
        let bytes = prost::Message::encode_to_vec(&proto);
        // The first session now, so a model ONNX Runtime refuses fails here.
        let first = build(&bytes, opts.threads)?;
        Ok(OrtSession { bytes, idle: Mutex::new(vec![first]), sig, threads: opts.threads })
    }
}

fn build(bytes: &[u8], threads: usize) -> Result<OrtInner, RuntimeError> {
    let mut builder = OrtInner::builder(environment()?).map_err(engine_err)?;
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
        self.with_outputs(inputs, |out| {
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
        self.sig.check(inputs)?;
        let feed: Vec<(String, DynValue)> =
            self.sig.inputs.iter().cloned().zip(inputs.iter().map(to_ort).collect::<Result<Vec<_>, _>>()?).collect();
        let poisoned = || engine_err("a previous run panicked");
        let taken = self.idle.lock().map_err(|_| poisoned())?.pop();
        let mut session = match taken {
            Some(s) => s,
            None => build(&self.bytes, self.threads)?,
        };
        let result = session.run(feed).map_err(engine_err).and_then(|out| f(&out));
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
