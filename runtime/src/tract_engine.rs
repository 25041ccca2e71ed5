//! The tract engine.
//!
//! The graph is exported to ONNX bytes and parsed by tract-onnx with
//! `value_info` ignored: tract then infers every shape from the concrete
//! input facts, which avoids the failure seen on models whose value_info
//! carries symbolic dims ("Impossible to unify Sym(batch) with Val(1)").
//! Before that, [`crate::tract_fixups`] spells out the `DequantizeLinear`
//! nodes tract would fold into a wrong lookup table (`DQ → Softmax → Q`), so
//! tract computes Q/DQ graphs as ONNX Runtime does, and gives float16 Q/DQ
//! scales (TensorRT 10/11 graphs) f32 copies tract accepts, and runs float16
//! convolutions through f32 kernels.

use std::sync::Arc;

use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{InferenceOp, bail};

use crate::host::{Data, HostTensor, TensorView, ViewData};
use crate::{RuntimeError, SessionOptions, Signature};
use qforge_ir::{DataType, Model};

type Plan = Arc<TypedRunnableModel>;

/// A model optimized and planned by tract.
pub struct TractSession {
    plan: Plan,
    sig: Signature,
}

fn engine_err(e: impl std::fmt::Display) -> RuntimeError {
    // `{:#}` prints anyhow's whole context chain on one line, without backtraces.
    RuntimeError::Engine { engine: "tract", message: format!("{e:#}") }
}

fn datum(dt: DataType) -> Result<DatumType, RuntimeError> {
    Ok(match dt {
        DataType::F32 => f32::datum_type(),
        DataType::F16 => f16::datum_type(),
        DataType::F64 => f64::datum_type(),
        DataType::I64 => i64::datum_type(),
        DataType::I32 => i32::datum_type(),
        DataType::I8 => i8::datum_type(),
        DataType::U8 => u8::datum_type(),
        DataType::Bool => bool::datum_type(),
        other => return Err(RuntimeError::BadInput(format!("inputs of type {other} are not supported"))),
    })
}

impl TractSession {
    /// Prepares `model` to compute `opts.outputs` (or the graph outputs).
    pub fn new(model: &Model, opts: &SessionOptions) -> Result<TractSession, RuntimeError> {
        TractSession::build(model, opts, true)
    }

    /// [`TractSession::new`], with the fixups of [`crate::tract_fixups`] or
    /// (for tests that show why they exist) without.
    pub(crate) fn build(model: &Model, opts: &SessionOptions, fixups: bool) -> Result<TractSession, RuntimeError> {
        let sig = Signature::new(&model.graph, opts)?;
        let mut proto = qforge_ir::export(model);
        if fixups {
            let rewrites = crate::tract_fixups::plan(&model.graph);
            let products = crate::tract_fixups::half_products(&model.graph);
            let graph = proto.graph.get_or_insert_with(Default::default);
            crate::tract_fixups::apply(graph, &rewrites)?;
            crate::tract_fixups::widen_half_scales(graph)?;
            crate::tract_fixups::widen_half_products(graph, &products);
        }
        let bytes = proto.encode_to_vec();
        let plan = contained("preparing the model", || {
            let mut onnx = tract_onnx::onnx();
            onnx.op_register.insert("Upsample", upsample);
            let mut m = onnx.with_ignore_value_info(true).model_for_read(&mut &bytes[..]).map_err(engine_err)?;
            for (i, (shape, dt)) in sig.shapes.iter().zip(&sig.dtypes).enumerate() {
                let fact = InferenceFact::dt_shape(datum(*dt)?, shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
                m.set_input_fact(i, fact).map_err(engine_err)?;
            }
            m.select_outputs_by_name(&sig.outputs).map_err(engine_err)?;
            let typed = m.into_typed().map_err(engine_err)?;
            check_sizes(&typed, opts.max_tensor_bytes)?;
            typed.into_optimized().map_err(engine_err)?.into_runnable().map_err(engine_err)
        })?;
        Ok(TractSession { plan, sig })
    }
}

/// Refuses a model whose typed facts (every shape concrete, from the input
/// facts) hold a tensor above `limit` bytes, before tract optimizes or runs
/// it: tract would otherwise ask for the memory and abort the process.
fn check_sizes(typed: &TypedModel, limit: u64) -> Result<(), RuntimeError> {
    for node in typed.nodes() {
        for (slot, out) in node.outputs.iter().enumerate() {
            let Some(dims) = out.fact.shape.as_concrete() else { continue };
            let bytes = crate::tensor_bytes(dims, out.fact.datum_type.size_of());
            if bytes > limit {
                let value = typed.outlet_label(OutletId::new(node.id, slot)).unwrap_or(node.name.as_str()).to_string();
                return Err(RuntimeError::TooLarge {
                    node: format!("node \"{}\" ({})", node.name, node.op.name()),
                    value,
                    shape: format!("{dims:?}"),
                    bytes,
                    limit,
                });
            }
        }
    }
    Ok(())
}

/// tract has no `Upsample` (deprecated since opset 10, still written by
/// old exporters). From opset 9 on it is exactly opset 10's `Resize`: the
/// same inputs (X, scales), the same `mode`, asymmetric coordinates and
/// floor rounding; so it is parsed as that. Opsets 7–8 kept the scales in
/// an attribute and get a clear error.
fn upsample(
    ctx: &tract_onnx::model::ParsingContext,
    node: &tract_onnx::pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if ctx.onnx_operator_set_version < 9 {
        bail!("Upsample before opset 9 (scales as an attribute) is not supported by the tract engine")
    }
    let Some(resize) = ctx.framework.op_register.0.get("Resize") else { bail!("tract has no Resize") };
    let as_resize_10 = tract_onnx::model::ParsingContext {
        onnx_operator_set_version: 10,
        framework: ctx.framework,
        model: ctx.model,
        parent_graphs: ctx.parent_graphs.clone(),
        model_dir: ctx.model_dir,
        template: ctx.template.clone(),
    };
    resize(&as_resize_10, node)
}

/// Runs `f`, turning a panic inside tract into an engine error: a malformed
/// graph that slipped past our checks (a zero stride, a negative Range
/// step) must give the user a message, not a crash of the whole process.
fn contained<T>(what: &str, f: impl FnOnce() -> Result<T, RuntimeError>) -> Result<T, RuntimeError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(RuntimeError::Engine { engine: "tract", message: format!("tract crashed while {what}: {msg}") })
        }
    }
}

fn to_tract(t: &HostTensor) -> Result<Tensor, RuntimeError> {
    let shape = &t.shape;
    let r = match &t.data {
        Data::F32(v) => Tensor::from_shape(shape, v),
        Data::F16(v) => Tensor::from_shape(shape, v),
        Data::F64(v) => Tensor::from_shape(shape, v),
        Data::I64(v) => Tensor::from_shape(shape, v),
        Data::I32(v) => Tensor::from_shape(shape, v),
        Data::I8(v) => Tensor::from_shape(shape, v),
        Data::U8(v) => Tensor::from_shape(shape, v),
        Data::Bool(v) => Tensor::from_shape(shape, v),
    };
    r.map_err(engine_err)
}

fn plain<D: Datum + Clone>(t: &Tensor) -> Result<Vec<D>, RuntimeError> {
    Ok(t.try_as_plain_ram().map_err(engine_err)?.as_slice::<D>().map_err(engine_err)?.to_vec())
}

fn from_tract(name: &str, t: &Tensor) -> Result<HostTensor, RuntimeError> {
    let shape = t.shape().to_vec();
    let dt = t.datum_type();
    let data = if dt == f32::datum_type() {
        Data::F32(plain::<f32>(t)?)
    } else if dt == f16::datum_type() {
        Data::F16(plain::<f16>(t)?)
    } else if dt == f64::datum_type() {
        Data::F64(plain::<f64>(t)?)
    } else if dt == i64::datum_type() {
        Data::I64(plain::<i64>(t)?)
    } else if dt == TDim::datum_type() {
        // Shape arithmetic comes back symbolic-typed but concrete.
        let c = t.cast_to_dt(i64::datum_type()).map_err(engine_err)?;
        Data::I64(plain::<i64>(&c)?)
    } else if dt == i32::datum_type() {
        Data::I32(plain::<i32>(t)?)
    } else if dt == bool::datum_type() {
        Data::Bool(plain::<bool>(t)?)
    } else if dt.unquantized() == i8::datum_type() {
        let c = t.cast_to_dt(i8::datum_type()).map_err(engine_err)?;
        Data::I8(plain::<i8>(&c)?)
    } else if dt.unquantized() == u8::datum_type() {
        let c = t.cast_to_dt(u8::datum_type()).map_err(engine_err)?;
        Data::U8(plain::<u8>(&c)?)
    } else {
        return Err(RuntimeError::BadInput(format!(
            "output \"{name}\" has type {dt:?}, which qforge cannot read back"
        )));
    };
    Ok(HostTensor { shape, data })
}

impl TractSession {
    fn outputs(&self, inputs: &[HostTensor]) -> Result<TVec<TValue>, RuntimeError> {
        self.sig.check(inputs)?;
        let feed: TVec<TValue> =
            inputs.iter().map(|t| to_tract(t).map(Tensor::into_tvalue)).collect::<Result<_, _>>()?;
        contained("running the model", || self.plan.run(feed).map_err(engine_err))
    }
}

impl crate::Session for TractSession {
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
        let out = self.outputs(inputs)?;
        out.iter().zip(&self.sig.outputs).map(|(t, n)| from_tract(n, t)).collect()
    }

    fn run_visit(&self, inputs: &[HostTensor], visit: &mut dyn FnMut(&[TensorView<'_>])) -> Result<(), RuntimeError> {
        let out = self.outputs(inputs)?;
        let views = out
            .iter()
            .zip(&self.sig.outputs)
            .map(|(t, n)| {
                if t.datum_type() == f32::datum_type() {
                    let data = t.try_as_plain_ram().map_err(engine_err)?.as_slice::<f32>().map_err(engine_err)?;
                    return Ok(TensorView { shape: t.shape().to_vec(), data: ViewData::F32(data) });
                }
                let h = from_tract(n, t)?;
                Ok(TensorView { shape: h.shape, data: ViewData::Owned(h.data) })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        visit(&views);
        Ok(())
    }
}
