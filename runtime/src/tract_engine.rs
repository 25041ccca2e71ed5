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
//! convolutions through f32 kernels. After tract's optimizer, softmaxes over
//! a middle axis are moved to the last ([`trailing_softmax`]) and each
//! activation's quantize → dequantize pair becomes one vectorised op
//! ([`crate::tract_qdq`]): faster, same values.

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
    /// Observed tensors ([`crate::Observe`]): fetched after `sig.outputs`,
    /// then handed over; (position among the fetched, index).
    observed: Vec<(usize, usize)>,
    /// Names of everything fetched: the outputs, then the observed tensors.
    fetched: Vec<String>,
    observer: Option<std::sync::Arc<dyn crate::Observer>>,
    /// Quantize → dequantize pairs run as one op ([`crate::tract_qdq`]);
    /// the tests read it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fused: crate::tract_qdq::Fused,
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
        TractSession::build_with(model, opts, fixups, fixups)
    }

    /// [`TractSession::build`], with the quantize → dequantize fusion of
    /// [`crate::tract_qdq`] chosen apart from the other fixups (so a test
    /// can compare the two).
    pub(crate) fn build_with(
        model: &Model,
        opts: &SessionOptions,
        fixups: bool,
        fuse_pairs: bool,
    ) -> Result<TractSession, RuntimeError> {
        let sig = Signature::new(&model.graph, opts)?;
        // Observed tensors are fetched too, after the outputs.
        let mut fetch = sig.outputs.clone();
        let mut observed = Vec::new();
        for (index, name) in opts.observe.iter().flat_map(|o| o.tensors.iter()).enumerate() {
            let at = fetch.iter().position(|n| n == name).unwrap_or_else(|| {
                fetch.push(name.clone());
                fetch.len() - 1
            });
            observed.push((at, index));
        }
        let mut proto = qforge_ir::export(model);
        if fixups {
            let rewrites = crate::tract_fixups::plan(&model.graph);
            let products = crate::tract_fixups::half_products(&model.graph);
            let weights = crate::tract_fixups::plan_weights(&model.graph);
            let graph = proto.graph.get_or_insert_with(Default::default);
            crate::tract_fixups::fold_weights(graph, weights);
            crate::tract_fixups::apply(graph, &rewrites)?;
            crate::tract_fixups::widen_half_scales(graph)?;
            crate::tract_fixups::widen_half_products(graph, &products);
        }
        let bytes = proto.encode_to_vec();
        let mut fused = Default::default();
        let plan = contained("preparing the model", || {
            let mut onnx = tract_onnx::onnx();
            onnx.op_register.insert("Upsample", upsample);
            let mut m = onnx.with_ignore_value_info(true).model_for_read(&mut &bytes[..]).map_err(engine_err)?;
            for (i, (shape, dt)) in sig.shapes.iter().zip(&sig.dtypes).enumerate() {
                let fact = InferenceFact::dt_shape(datum(*dt)?, shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
                m.set_input_fact(i, fact).map_err(engine_err)?;
            }
            m.select_outputs_by_name(&fetch).map_err(engine_err)?;
            let typed = m.into_typed().map_err(engine_err)?;
            check_sizes(&typed, opts.max_tensor_bytes)?;
            let mut optimized = typed.into_optimized().map_err(engine_err)?;
            trailing_softmax(&mut optimized).map_err(engine_err)?;
            if fuse_pairs {
                fused = crate::tract_qdq::fuse(&mut optimized).map_err(engine_err)?;
            }
            optimized.into_runnable().map_err(engine_err)
        })?;
        let observer = opts.observe.as_ref().map(|o| o.observer.clone());
        Ok(TractSession { plan, sig, observed, fetched: fetch, observer, fused })
    }
}

/// Moves the axis of every softmax that is not over the last axis to the
/// end and back, after tract's optimizer (which would push the moves away
/// again).
///
/// Why: tract 0.23 computes a softmax over the trailing axis with one
/// vectorised kernel per row, but any other axis lane by lane through
/// generic strided iteration. YOLOv8's DFL head takes a softmax over axis 1
/// of `[1, 16, 4, anchors]`: on nudenet (320×320) that one node cost ~17 ms
/// a run, about a fifth of a Q/DQ trial's time in `skip-sensitive`. Two
/// copies of the tensor cost a fraction of that, and the numbers do not
/// change: each lane goes through the same per-row softmax arithmetic.
fn trailing_softmax(model: &mut TypedModel) -> TractResult<()> {
    use tract_onnx::tract_core::ops::change_axes::AxisOp;
    use tract_onnx::tract_core::ops::nn::Softmax;
    let candidates: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| {
            let Some(op) = n.op_as::<Softmax>() else { return false };
            let Ok(fact) = model.outlet_fact(n.inputs[0]) else { return false };
            let rank = fact.rank();
            op.axes.len() == 1
                && op.axes[0] + 1 < rank
                && op.quant_output_dt.is_none()
                && matches!(fact.datum_type, DatumType::F32 | DatumType::F16)
        })
        .map(|n| n.id)
        .collect();
    for &id in &candidates {
        let node = model.node(id).clone();
        let Some(op) = node.op_as::<Softmax>() else { continue };
        let rank = model.outlet_fact(node.inputs[0])?.rank();
        let axis = op.axes[0];
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let moved = patch.wire_node(format!("{}.qforge_to_last", node.name), AxisOp::Move(axis, rank - 1), &[x])?;
        let last = Softmax { axes: tvec!(rank - 1), ..op.clone() };
        let y = patch.wire_node(format!("{}.qforge_last", node.name), last, &moved)?;
        let back = patch.wire_node(format!("{}.qforge_back", node.name), AxisOp::Move(rank - 1, axis), &y)?;
        patch.shunt_outside(model, OutletId::new(id, 0), back[0])?;
        patch.obliterate(id)?;
        patch.apply(model)?;
    }
    if !candidates.is_empty() {
        *model = std::mem::take(model).into_compact()?;
    }
    Ok(())
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
        self.run_tagged(inputs, 0, visit)
    }

    fn run_tagged(
        &self,
        inputs: &[HostTensor],
        tag: u64,
        visit: &mut dyn FnMut(&[TensorView<'_>]),
    ) -> Result<(), RuntimeError> {
        let out = self.outputs(inputs)?;
        let mut views = out
            .iter()
            .zip(&self.fetched)
            .map(|(t, n)| {
                if t.datum_type() == f32::datum_type() {
                    let data = t.try_as_plain_ram().map_err(engine_err)?.as_slice::<f32>().map_err(engine_err)?;
                    return Ok(TensorView { shape: t.shape().to_vec(), data: ViewData::F32(data) });
                }
                let h = from_tract(n, t)?;
                Ok(TensorView { shape: h.shape, data: ViewData::Owned(h.data) })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        if let Some(observer) = &self.observer {
            for &(at, index) in &self.observed {
                if let Some(v) = views.get(at) {
                    observer.observe(tag, index, v);
                }
            }
        }
        views.truncate(self.sig.outputs.len());
        visit(&views);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Session;
    use qforge_ir::parse_graph;

    /// Softmax over each lane of `axis` of a row-major `shape`, in f64.
    fn softmax_ref(x: &[f32], shape: &[usize], axis: usize, log: bool) -> Vec<f64> {
        let inner: usize = shape[axis + 1..].iter().product();
        let n = shape[axis];
        let mut y = vec![0.0f64; x.len()];
        for start in (0..x.len()).filter(|i| (i / inner) % n == 0) {
            let lane: Vec<f64> = (0..n).map(|k| x[start + k * inner] as f64).collect();
            let m = lane.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = lane.iter().map(|v| (v - m).exp()).sum();
            for k in 0..n {
                y[start + k * inner] = if log { lane[k] - m - sum.ln() } else { (lane[k] - m).exp() / sum };
            }
        }
        y
    }

    /// A softmax over a middle axis (YOLOv8's DFL head) runs through the
    /// moved-to-last form and computes the spec's values.
    #[test]
    fn softmax_over_a_middle_axis_is_moved_last_and_exact() {
        for (op, axis, log) in [("Softmax", 1, false), ("LogSoftmax", 2, true), ("Softmax", 3, false)] {
            let text = format!(
                "graph g {{\n  opset ai.onnx 13\n  input %x: f32[1,16,4,7]\n  %y = {op}(%x) {{axis={axis}}}  # sm\n  output %y\n}}\n"
            );
            let model = Model::new(parse_graph(&text).unwrap());
            let x = crate::random_inputs(&[("x".into(), vec![1, 16, 4, 7], DataType::F32)], 11).remove(0);
            let s = TractSession::new(&model, &SessionOptions::default()).unwrap();
            let moved = s.plan.model().nodes().iter().any(|n| n.name.ends_with(".qforge_last"));
            assert_eq!(moved, axis != 3, "{op} axis {axis}: moved to last {moved}");
            let y = s.run(std::slice::from_ref(&x)).unwrap();
            let want = softmax_ref(x.as_f32().unwrap(), &[1, 16, 4, 7], axis, log);
            for (i, (a, b)) in y[0].as_f32().unwrap().iter().zip(&want).enumerate() {
                assert!((*a as f64 - b).abs() <= 1e-6 * b.abs().max(1.0), "{op} axis {axis} #{i}: {a} vs {b}");
            }
        }
    }
}
