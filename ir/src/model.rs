//! Models: a [`Graph`] plus the ModelProto fields around it, and the
//! functions that load, save, import and export them.
//!
//! Saving is atomic: bytes go to a temporary file in the destination folder,
//! which is then renamed over the target, so a failed or interrupted save
//! never leaves a half-written model behind.
//!
//! No invalid model leaves qforge: [`save`] runs the verifier (whose `types`,
//! `opset` and `names` rules are the ONNX validity rules ONNX Runtime and
//! `onnx.checker` enforce) and refuses to write a graph that fails it.
//! [`import`] drops the one kind of invalid entry that is safe to drop, a
//! `value_info` whose tensor type has no element type (ONNX Runtime refuses
//! the whole model for it), and lists what it dropped in
//! [`Model::repairs`] so the caller can say so. [`export`] derives what the
//! graph already knows: the IR version the opset needs, the `value_info` of
//! an initializer from its data, and a missing graph input/output type from
//! the value's known type.

use std::fs::File;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::IrError;
use crate::external::{self, ExternalWriter};
use crate::graph::Graph;
use crate::proto::{GraphProto, ModelProto, StringStringEntryProto, ValueInfoProto};
use crate::shape::{TypeInfo, lacks_elem_type};

/// An ONNX model: its main graph and everything else of the ModelProto.
#[derive(Debug, Clone)]
pub struct Model {
    /// The main graph.
    pub graph: Graph,
    /// All ModelProto fields except `graph` and `opset_import` (which the
    /// graph carries).
    rest: ModelProto,
    /// The folder the model was loaded from (external data is relative to it).
    pub dir: Option<PathBuf>,
    /// What [`import`] dropped because it was invalid ONNX, one line each.
    repairs: Vec<String>,
}

/// How [`save`] writes tensor data.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Write every initializer of at least this many bytes to an external
    /// data file (`<output file name>.data`). `None` keeps the input's
    /// choice: tensors that were external stay external, the rest inline.
    pub external_threshold: Option<usize>,
}

impl Model {
    /// A new model around `graph` (IR version 8, produced by qforge).
    pub fn new(graph: Graph) -> Model {
        Model {
            graph,
            rest: ModelProto {
                ir_version: Some(8),
                producer_name: Some("qforge".into()),
                producer_version: Some(env!("CARGO_PKG_VERSION").into()),
                ..Default::default()
            },
            dir: None,
            repairs: Vec::new(),
        }
    }

    /// What [`import`] dropped from the input because it was invalid ONNX
    /// (a `value_info` entry whose tensor type has no element type), one
    /// line each naming the tensor. Empty for a valid input. Callers report
    /// these: the written model differs from the input there.
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    /// The IR version.
    pub fn ir_version(&self) -> i64 {
        self.rest.ir_version()
    }

    /// Sets the IR version.
    pub fn set_ir_version(&mut self, v: i64) {
        self.rest.ir_version = Some(v);
    }

    /// Producer name and version.
    pub fn producer(&self) -> (&str, &str) {
        (self.rest.producer_name(), self.rest.producer_version())
    }

    /// Model metadata (`metadata_props`).
    pub fn metadata(&self) -> &[StringStringEntryProto] {
        &self.rest.metadata_props
    }

    /// Sets a `metadata_props` entry.
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        match self.rest.metadata_props.iter_mut().find(|e| e.key() == key) {
            Some(e) => e.value = Some(value.to_string()),
            None => self
                .rest
                .metadata_props
                .push(StringStringEntryProto { key: Some(key.into()), value: Some(value.into()) }),
        }
    }

    /// Number of model-local functions.
    pub fn function_count(&self) -> usize {
        self.rest.functions.len()
    }
}

/// Builds a model from a decoded ModelProto. `dir` is the folder external
/// data is read from.
pub fn import(mut proto: ModelProto, dir: Option<&Path>) -> Result<Model, IrError> {
    let mut gp = proto.graph.take().ok_or_else(|| IrError::Invalid("the model has no graph".into()))?;
    let mut external = Vec::new();
    for t in &mut gp.initializer {
        if external::is_external(t) {
            external::resolve(t, dir)?;
            external.push(t.name().to_string());
        }
    }
    let mut repairs = Vec::new();
    drop_untyped_value_info(&mut gp, "", &mut repairs);
    let opsets = std::mem::take(&mut proto.opset_import);
    let mut graph = Graph::from_proto(gp, opsets)?;
    for name in &external {
        graph.mark_external(name);
    }
    Ok(Model { graph, rest: proto, dir: dir.map(Path::to_path_buf), repairs })
}

/// Removes the `value_info` entries of `g` (and of its subgraphs) whose type
/// is a tensor type without an element type, noting each in `repairs`.
fn drop_untyped_value_info(g: &mut GraphProto, scope: &str, repairs: &mut Vec<String>) {
    g.value_info.retain(|info| {
        let bad = info.r#type.as_ref().is_some_and(lacks_elem_type);
        if bad {
            repairs.push(format!(
                "{scope}value_info \"{}\" declares a tensor type without an element type (invalid ONNX, which \
                 ONNX Runtime refuses to load); the entry is dropped",
                info.name()
            ));
        }
        !bad
    });
    for n in &mut g.node {
        let owner = format!("{scope}node \"{}\" ({}), ", n.name(), n.op_type());
        for a in &mut n.attribute {
            for sg in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                let scope = format!("{owner}subgraph \"{}\": ", sg.name());
                drop_untyped_value_info(sg, &scope, repairs);
            }
        }
    }
}

/// Decodes and imports ONNX bytes.
pub fn import_bytes(bytes: &[u8], dir: Option<&Path>) -> Result<Model, IrError> {
    let proto = ModelProto::decode(bytes).map_err(|source| IrError::Decode {
        path: dir.map(Path::to_path_buf).unwrap_or_else(|| "<memory>".into()),
        source,
    })?;
    import(proto, dir)
}

/// Loads an ONNX file (and its external data).
pub fn load(path: impl AsRef<Path>) -> Result<Model, IrError> {
    let path = path.as_ref();
    crate::files::regular_file(path)?;
    let bytes = prost::bytes::Bytes::from(crate::files::read_all(path).map_err(|e| IrError::io(path, e))?);
    // Decoding from `Bytes` makes each tensor's `raw_data` a slice of the
    // file's buffer rather than a copy (a 45 MB model is read once, not twice).
    let proto = ModelProto::decode(bytes).map_err(|source| IrError::Decode { path: path.to_path_buf(), source })?;
    let dir = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
    import(proto, dir).map_err(|e| match e {
        IrError::Invalid(m) => IrError::Invalid(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// The lowest IR version that allows the default-domain `opset`.
fn min_ir_version(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        _ => 11,
    }
}

/// The ModelProto, every tensor's data inline. The IR version is raised
/// when a pass raised the opset past what it allows (and only then), and set
/// when the model has none. What the graph knows better than its
/// declarations is written (see the module docs); everything else is as
/// imported.
pub fn export(model: &Model) -> ModelProto {
    let (mut graph, opsets) = model.graph.to_proto();
    let mut p = model.rest.clone();
    let need = min_ir_version(model.graph.opset("").unwrap_or(1));
    if p.ir_version.is_none_or(|v| v < need) {
        p.ir_version = Some(need);
    }
    derive_declared_types(&model.graph, &mut graph);
    p.graph = Some(graph);
    p.opset_import = opsets;
    p
}

/// The declarations of `gp` that the graph knows better: an initializer's
/// `value_info` (or graph input entry) takes the type of its data (a pass
/// may have converted it, e.g. `to-fp16`, and a stale entry contradicts
/// ONNX type inference); a graph input/output without element type or shape
/// takes what is known of its value. A `value_info` entry without element
/// type (which nothing in qforge creates) is not written.
fn derive_declared_types(g: &Graph, gp: &mut GraphProto) {
    let init_type = |name: &str| {
        let v = g.find_value(name)?;
        let t = g.initializer(v)?;
        Some(TypeInfo::new(t.dtype()?, t.dims()))
    };
    let declared = |info: &ValueInfoProto| info.r#type.as_ref().and_then(TypeInfo::from_proto);
    gp.value_info.retain(|info| !info.r#type.as_ref().is_some_and(lacks_elem_type));
    for info in gp.value_info.iter_mut().chain(gp.input.iter_mut()) {
        if let Some(t) = init_type(info.name())
            && declared(info).as_ref() != Some(&t)
        {
            t.write_into(&mut info.r#type);
        }
    }
    for info in gp.input.iter_mut().chain(gp.output.iter_mut()) {
        let Some(known) = g.find_value(info.name()).and_then(|v| g.type_info(v)) else { continue };
        let have = declared(info).unwrap_or_default();
        let fill = TypeInfo { dtype: have.dtype.or(known.dtype), shape: have.shape.clone().or(known.shape) };
        if fill != have {
            fill.write_into(&mut info.r#type);
        }
    }
}

/// A temporary file beside `path` that is renamed over it on `commit`, and
/// deleted if dropped uncommitted.
struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    file: Option<File>,
    committed: bool,
}

impl AtomicFile {
    fn create(path: &Path) -> Result<AtomicFile, IrError> {
        crate::files::writable_file(path)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| IrError::io(&tmp, e))?;
        Ok(AtomicFile { tmp, path: path.to_path_buf(), file: Some(file), committed: false })
    }

    /// Renames the finished file over `path`. No `fsync`: the rename makes
    /// the write atomic for every failure of qforge itself (an error, a
    /// kill, a panic), which is what "nothing half-written" asks; surviving
    /// a power cut is left to the filesystem, as compilers and `onnx.save`
    /// do. The sync cost 80–120 ms per 45 MB model here, a quarter of a
    /// whole fold run.
    fn commit(mut self) -> Result<(), IrError> {
        drop(self.file.take());
        std::fs::rename(&self.tmp, &self.path).map_err(|e| IrError::io(&self.path, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    /// Whatever failed (a write, the sync, the rename), the temporary file goes.
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Saves `model` to `path` atomically, writing external data (if any) to
/// `<file name>.data` beside it. A graph the verifier rejects is not
/// written: the error lists every violation (see [`crate::verify`]).
pub fn save(model: &Model, path: impl AsRef<Path>, opts: &ExportOptions) -> Result<(), IrError> {
    let path = path.as_ref();
    crate::verify::verify(&model.graph)?;
    let mut proto = export(model);
    let external: std::collections::HashSet<String> =
        model.graph.external_initializers().map(|v| model.graph.value_name(v).to_string()).collect();
    let gp = proto.graph.as_mut().expect("export always sets the graph");
    let goes_out = |t: &crate::proto::TensorProto| match opts.external_threshold {
        Some(th) => t.raw_data.as_ref().is_some_and(|r| r.len() >= th),
        None => external.contains(t.name()),
    };
    let mut data_file = None;
    if gp.initializer.iter().any(goes_out) {
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let location = format!("{file_name}.data");
        let data_path = path.with_file_name(&location);
        let mut af = AtomicFile::create(&data_path)?;
        let mut w = ExternalWriter { file: af.file.take().expect("just created"), location, offset: 0 };
        for t in gp.initializer.iter_mut().filter(|t| goes_out(t)) {
            let bytes = match t.raw_data.is_some() {
                true => None,
                // Typed storage: convert to raw bytes first so it can move out.
                false => crate::tensor::Tensor::from_proto(t.clone()).raw_bytes().ok().map(|c| c.into_owned()),
            };
            if let Some(b) = bytes {
                t.float_data.clear();
                t.int32_data.clear();
                t.int64_data.clear();
                t.double_data.clear();
                t.uint64_data.clear();
                t.raw_data = Some(b.into());
            }
            w.write(t).map_err(|e| IrError::io(&data_path, e))?;
        }
        af.file = Some(w.file);
        data_file = Some(af);
    }
    let mut af = AtomicFile::create(path)?;
    let mut sink = crate::sink::FileSink::new(af.file.as_mut().expect("just created"));
    proto.encode(&mut sink).map_err(|e| IrError::Invalid(format!("encoding {}: {e}", path.display())))?;
    sink.finish().map_err(|e| IrError::io(path, e))?;
    if let Some(d) = data_file {
        d.commit()?;
    }
    af.commit()
}
