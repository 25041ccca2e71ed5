//! float32 tensors and ops => float16, with Casts only where FP32 must stay (graph I/O, Resize scales, kept ops, overflow).
//!
//! TensorRT 10's strongly typed engines take each layer's precision from
//! the graph, so an INT8 model whose float parts are FP32 runs them in FP32.
//! This pass converts every float op it can to FP16: float32 initializers
//! become float16 (a copy when some reader must keep FP32), outputs of
//! converted ops become float16, and a Cast is inserted wherever an FP16
//! value meets a reader that needs FP32 or the other way round. FP32 stays
//! at the graph inputs and outputs (option), on Resize/Upsample scales and
//! roi, around ops named in `keep_ops`/`keep_names`, on ops whose
//! calibrated output range does not fit FP16 with headroom (`max_fp16`),
//! on ops calibration did not cover whose output reaches `rangeless_max`
//! (512) on a few calibration samples, and on readers of a weight beyond
//! FP16 (|w| > 65504): ModelOpt's two rules for tensors without a range. A
//! node whose output type is unknown is kept FP32, and so are its readers,
//! so no value of unknown type ever crosses between the two precisions.
//!
//! Q/DQ (`qdq: auto`, the default) go FP16 too, scales included, which
//! needs opset 19: the opset is raised when every op keeps its meaning (see
//! [`crate::opset`]), so TensorRT fuses each Q/DQ into its FP16 neighbours
//! with no Cast between them. Where the opset cannot be raised (or with
//! `qdq: fp32`) they stay FP32 with a Cast on each side, and the pass says
//! why.

use std::collections::{HashMap, HashSet};

use half::f16;
use serde::{Deserialize, Serialize};

use qforge_ir::{
    DataType, Graph, InsertAt, NewNode, NodeId, Tensor, TypeInfo, ValueDef, ValueId, attr_int, attr_tensor,
};

use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, Tolerance, register_pass};

/// Options of `to-fp16`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToFp16 {
    /// Keep graph inputs and outputs FP32 (Casts at the boundary).
    pub keep_io: bool,
    /// Op types that stay FP32.
    pub keep_ops: Vec<String>,
    /// Node names that stay FP32.
    pub keep_names: Vec<String>,
    /// Q/DQ precision: `auto` (FP16 scales at opset 19 when the opset can
    /// be raised, else FP32 behind Casts), `fp16` (fail if it cannot), `fp32`.
    pub qdq: String,
    /// Ops whose calibrated output range exceeds this stay FP32.
    pub max_fp16: f32,
    /// Ops whose output calibration did not cover (the decode tail, shape
    /// arithmetic) stay FP32 when it reaches this on the samples (ModelOpt's
    /// activation rule).
    pub rangeless_max: f32,
    /// Calibration samples run to measure those outputs (0: not measured).
    pub rangeless_samples: usize,
}

impl Default for ToFp16 {
    fn default() -> Self {
        ToFp16 {
            keep_io: true,
            keep_ops: Vec::new(),
            keep_names: Vec::new(),
            qdq: "auto".into(),
            max_fp16: 8192.0,
            rangeless_max: 512.0,
            rangeless_samples: 2,
        }
    }
}

impl PassOptions for ToFp16 {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("keep_io", "keep graph inputs and outputs FP32, with Casts at the boundary (default true)"),
        ("keep_ops", "op types that stay FP32 (default [])"),
        ("keep_names", "node names that stay FP32 (default [])"),
        (
            "qdq",
            "auto (default: FP16 Q/DQ with FP16 scales at opset 19 when the opset can be raised, else FP32 behind Casts) | fp16 | fp32",
        ),
        (
            "max_fp16",
            "ops whose calibrated output range |x| exceeds this stay FP32 (default 8192, 8x below the FP16 limit)",
        ),
        (
            "rangeless_max",
            "ops whose output calibration did not cover stay FP32 when |x| reaches this on the samples (default 512, ModelOpt's rule)",
        ),
        (
            "rangeless_samples",
            "calibration samples run to measure outputs calibration did not cover (default 2; 0: not measured)",
        ),
    ];
}

register_pass!(
    "to-fp16",
    ToFp16,
    "float32 ops, tensors and Q/DQ scales => float16, Casts only where FP32 must stay (I/O, Resize scales, overflow)"
);

/// Ops whose ONNX type constraints have no float16 (they stay FP32).
const NO_FP16: &[&str] = &["Range", "NonMaxSuppression", "Multinomial", "RandomNormal", "RandomUniform"];

const F32: i64 = 1;
const F16: i64 = 10;

/// Input slots that must stay FP32 whatever the node's precision.
fn fp32_slot(g: &Graph, n: NodeId, slot: usize) -> bool {
    let op = g.node(n).op_type();
    match op {
        "Resize" => slot == 1 || slot == 2,
        "Upsample" => slot == 1,
        _ => false,
    }
}

impl ToFp16 {
    /// Nodes that compute in FP16: every float op but the kept ones; Q/DQ
    /// when `qdq16`; never a producer of a value in `overflow`.
    fn converted(
        &self,
        g: &Graph,
        qdq16: bool,
        overflow: &HashSet<ValueId>,
        huge: &HashSet<ValueId>,
    ) -> HashSet<NodeId> {
        let mut conv: HashSet<NodeId> = HashSet::new();
        let mut unknown_values: HashSet<ValueId> = HashSet::new();
        for n in g.nodes() {
            let node = g.node(n);
            let outs: Vec<ValueId> = node.outputs().iter().flatten().copied().collect();
            let out_unknown = outs.iter().any(|&v| g.dtype(v).is_none());
            let reads_unknown = node.inputs().iter().flatten().any(|v| unknown_values.contains(v));
            if out_unknown || reads_unknown {
                unknown_values.extend(outs.iter().copied());
                continue;
            }
            let is_q = node.is_op("QuantizeLinear");
            // A QuantizeLinear computes on its float input, not its int8 output.
            let float_out = outs.iter().any(|&v| g.dtype(v) == Some(DataType::F32))
                || (is_q && node.input(0).is_some_and(|v| g.dtype(v) == Some(DataType::F32)));
            // A QuantizeLinear of an FP32 value (the graph input) stays FP32,
            // so no Cast sits in front of it; its DequantizeLinear still
            // yields FP16 through a float16 copy of the scale.
            let q_reads_fp32 =
                is_q && node.input(0).is_some_and(|v| g.producer_node(v).is_none_or(|p| !conv.contains(&p)));
            let is_qdq = is_q || node.is_op("DequantizeLinear");
            let keep = !matches!(node.domain(), "" | "ai.onnx")
                || (!qdq16 && is_qdq)
                || (is_qdq && !scale_fits_f16(g, n))
                || q_reads_fp32
                || outs.iter().any(|v| overflow.contains(v))
                || node.inputs().iter().flatten().any(|v| huge.contains(v))
                // Constant nodes keep their FP32 data (fold-constants makes them
                // initializers, which are converted); readers get a Cast.
                || node.is_op("Constant")
                || NO_FP16.contains(&node.op_type())
                || self.keep_ops.iter().any(|o| o == node.op_type())
                || self.keep_names.iter().any(|o| o == node.name())
                || !node.implicit_inputs().is_empty();
            if float_out && !keep {
                conv.insert(n);
            }
        }
        conv
    }
}

/// The largest |x| of each value of `vs` over the first `samples`
/// calibration samples (NaN and ±Inf count as infinite), and how many
/// samples ran; `None` without calibration samples or values to measure.
fn rangeless_max(
    g: &Graph,
    cx: &PassContext,
    vs: &[ValueId],
    samples: usize,
) -> Result<Option<(Vec<f32>, usize)>, PassError> {
    let Some(cd) = cx.ext.get::<crate::calibrate::CalibrationData>() else { return Ok(None) };
    if vs.is_empty() || cd.dataset.is_empty() {
        return Ok(None);
    }
    let mut input_shapes = std::collections::BTreeMap::new();
    if let Some(&i) = g.runtime_inputs().first() {
        input_shapes.insert(g.value_name(i).to_string(), cd.shape.clone());
    }
    let opts = qforge_runtime::SessionOptions {
        outputs: vs.iter().map(|&v| g.value_name(v).to_string()).collect(),
        input_shapes,
        engine: cx.engine,
        ..Default::default()
    };
    let what = "to-fp16: measuring outputs calibration did not cover";
    let rt = |source| PassError::Runtime { context: what.to_string(), source };
    let s = qforge_runtime::session(&qforge_ir::Model::new(g.clone()), &opts).map_err(rt)?;
    let mut maxes = vec![0.0f32; vs.len()];
    let mut ran = 0;
    for i in 0..cd.dataset.len().min(samples) {
        let Ok(x) = cd.dataset.load(i) else { continue };
        s.run_visit(std::slice::from_ref(&x), &mut |outs| {
            for (m, t) in maxes.iter_mut().zip(outs) {
                if let Some(xs) = t.as_f32() {
                    for &x in xs {
                        let a = if x.is_nan() { f32::INFINITY } else { x.abs() };
                        *m = m.max(a);
                    }
                }
            }
        })
        .map_err(rt)?;
        ran += 1;
    }
    Ok((ran > 0).then_some((maxes, ran)))
}

/// The float32 initializers holding a finite value float16 cannot (|x| >
/// 65504; NaN/Inf stay as they are): their readers keep FP32 rather than
/// read infinities (ModelOpt's initializer rule).
fn beyond_f16(g: &Graph) -> HashSet<ValueId> {
    g.initializers()
        .iter()
        .copied()
        .filter(|&v| {
            g.initializer(v)
                .filter(|t| t.dtype() == Some(DataType::F32))
                .and_then(|t| t.to_f32_vec().ok())
                .is_some_and(|xs| xs.iter().any(|x| x.abs() > 65504.0 && x.is_finite()))
        })
        .collect()
}

/// Inserts `Cast(v, to)` right after `v` is defined; returns the cast output.
fn cast(g: &mut Graph, v: ValueId, to: i64, first: NodeId) -> Result<ValueId, PassError> {
    let name = g.value_name(v).to_string();
    let suffix = if to == F16 { "fp16" } else { "fp32" };
    let at = match g.producer_node(v) {
        Some(p) => InsertAt::After(p),
        None => InsertAt::Before(first),
    };
    let n = g
        .insert_node(
            at,
            NewNode::new("Cast", &format!("{name}/Cast_{suffix}"), &[v], &format!("{name}_{suffix}"))
                .attr(attr_int("to", to)),
        )
        .map_err(|e| PassError::ir("to-fp16", e))?;
    let out = g.node(n).output(0).expect("one output");
    let shape = g.type_info(v).and_then(|t| t.shape);
    g.set_type(out, &TypeInfo { dtype: Some(if to == F16 { DataType::F16 } else { DataType::F32 }), shape });
    Ok(out)
}

/// Whether every value of a Q/DQ's constant scale survives float16 within
/// 1%: tiny scales (an untrained model's activations, amax/127 below ~6e-6)
/// become float16 subnormals or 0, which would change or break the
/// quantization; such a Q/DQ stays FP32 behind Casts.
fn scale_fits_f16(g: &Graph, n: NodeId) -> bool {
    let Some(t) = g.node(n).input(1).and_then(|s| g.constant(s)) else { return true };
    let Ok(v) = t.to_f32_vec() else { return true };
    v.iter().all(|&x| {
        let h = f16::from_f32(x).to_f32();
        h.is_finite() && h > 0.0 && ((h - x) / x).abs() <= 0.01
    })
}

fn to_f16(t: &Tensor) -> Result<Tensor, String> {
    let v = t.to_vec::<f32>().map_err(|e| e.to_string())?;
    Ok(Tensor::new(t.dims(), &v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>()))
}

impl Pass for ToFp16 {
    fn tolerance(&self) -> Tolerance {
        Tolerance::Approximate
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let has_qdq = g.nodes().any(|n| g.node(n).is_op("QuantizeLinear") || g.node(n).is_op("DequantizeLinear"));
        let qdq16 = match self.qdq.as_str() {
            "fp32" => false,
            _ if !has_qdq => false,
            "auto" | "fp16" => match crate::opset::ensure_opset(g, 19) {
                Ok(raised) => {
                    if let Some(old) = raised {
                        r.note(format!("opset {old} raised to 19 for float16 Q/DQ scales"));
                    }
                    true
                }
                Err(e) if self.qdq == "auto" => {
                    r.note(format!("Q/DQ stay FP32 behind Casts: {e}"));
                    false
                }
                Err(e) => return Err(PassError::msg(format!("qdq: fp16: {e}"))),
            },
            other => return Err(PassError::msg(format!("qdq: \"{other}\" is not auto, fp16 or fp32"))),
        };
        let huge = beyond_f16(g);
        // Ranges calibration measured: outputs too large for FP16 keep FP32.
        let mut overflow: HashSet<ValueId> = HashSet::new();
        let mut reasons: Vec<(String, &str, String)> = Vec::new();
        if let Some(t) = cx.ext.get::<crate::calibrate::table::CalibrationTable>() {
            for (&v, range) in &t.tensors {
                if g.contains_value(v) && range.amax > self.max_fp16 {
                    overflow.insert(v);
                    if let Some(p) = g.producer_node(v) {
                        let detail =
                            format!("its calibrated range {:.0} exceeds max_fp16 {}", range.amax, self.max_fp16);
                        r.note(format!("{} stays FP32: {detail}", describe(g, p)));
                        reasons.push((g.node(p).name().to_string(), "overflow", format!("FP32: {detail}")));
                    }
                }
            }
        }
        // Outputs calibration did not cover (the decode tail's box
        // coordinates, in the hundreds): measured on a few samples.
        if self.rangeless_samples > 0 {
            let uncovered: Vec<ValueId> = {
                let calibrated: HashSet<ValueId> = cx
                    .ext
                    .get::<crate::calibrate::table::CalibrationTable>()
                    .map(|t| t.tensors.keys().copied().collect())
                    .unwrap_or_default();
                let conv = self.converted(g, qdq16, &overflow, &huge);
                let mut vs: Vec<ValueId> = Vec::new();
                for n in g.nodes().filter(|n| conv.contains(n) && !g.node(*n).is_op("QuantizeLinear")) {
                    vs.extend(
                        g.node(n)
                            .outputs()
                            .iter()
                            .flatten()
                            .filter(|&&v| g.dtype(v) == Some(DataType::F32) && !calibrated.contains(&v)),
                    );
                }
                vs
            };
            match rangeless_max(g, cx, &uncovered, self.rangeless_samples)? {
                Some((maxes, n)) => {
                    let top = maxes.iter().copied().fold(0.0f32, f32::max);
                    r.note(format!(
                        "measured the {} output(s) calibration did not cover on {n} sample(s): largest |x| {top:.1}",
                        uncovered.len()
                    ));
                    for (v, m) in uncovered.into_iter().zip(maxes) {
                        if m >= self.rangeless_max
                            && let Some(p) = g.producer_node(v)
                        {
                            overflow.insert(v);
                            let detail = format!(
                                "calibration did not cover its output, which reached {m:.0} on {n} sample(s) (>= rangeless_max {})",
                                self.rangeless_max
                            );
                            r.note(format!("{} stays FP32: {detail}", describe(g, p)));
                            reasons.push((g.node(p).name().to_string(), "overflow", format!("FP32: {detail}")));
                        }
                    }
                }
                None if !uncovered.is_empty() => r.note(format!(
                    "{} output(s) calibration did not cover were not measured (no calibration samples): they go FP16",
                    uncovered.len()
                )),
                None => {}
            }
        }
        let conv = self.converted(g, qdq16, &overflow, &huge);
        for n in g.nodes() {
            let node = g.node(n);
            if self.keep_ops.iter().any(|o| o == node.op_type()) || self.keep_names.iter().any(|o| o == node.name()) {
                let why = "FP32: kept by to-fp16.keep_ops / keep_names".to_string();
                reasons.push((node.name().to_string(), "kept-fp32", why));
            }
        }
        for (node, kind, why) in reasons {
            crate::precision::FloatReasons::add(cx, &node, "to-fp16", kind, why);
        }
        if qdq16 {
            let tiny = g
                .nodes()
                .filter(|&n| g.node(n).is_op("QuantizeLinear") || g.node(n).is_op("DequantizeLinear"))
                .filter(|&n| !scale_fits_f16(g, n))
                .count();
            if tiny > 0 {
                r.info("Q/DQ kept FP32 (scale below FP16)", tiny as u64);
                r.note(format!("{tiny} Q/DQ keep FP32 scales behind Casts: their scales underflow FP16"));
            }
        }
        let Some(first) = g.nodes().next() else { return Ok(r) };
        // Which side of each float value is FP16: its definition, and each read.
        let values: Vec<ValueId> = g.value_ids().filter(|&v| g.dtype(v) == Some(DataType::F32)).collect();
        // Shape and Size read any type: they never need a Cast.
        let wants16 = |g: &Graph, n: NodeId, slot: usize| {
            (conv.contains(&n) && !fp32_slot(g, n, slot)) || g.node(n).is_op("Shape") || g.node(n).is_op("Size")
        };
        let mut casts = 0u64;
        for v in values {
            let uses: Vec<(NodeId, usize)> = g
                .uses(v)
                .iter()
                .filter_map(|u| match u.slot {
                    qforge_ir::UseSlot::Input(s) => Some((u.node, s)),
                    qforge_ir::UseSlot::Implicit(_) => None,
                })
                .collect();
            let (r16, r32): (Vec<_>, Vec<_>) = uses.iter().partition(|&&(n, s)| wants16(g, n, s));
            match g.value(v).def() {
                ValueDef::Initializer if !g.is_graph_input(v) => {
                    let t = g.initializer(v).cloned().ok_or_else(|| PassError::msg("initializer without data"))?;
                    let h = to_f16(&t).map_err(|e| PassError::msg(format!("{}: {e}", g.value_name(v))))?;
                    if r32.is_empty() && !r16.is_empty() && !g.is_graph_output(v) {
                        g.set_initializer(v, h).map_err(|e| PassError::ir("to-fp16", e))?;
                        r.count("initializers converted", 1);
                    } else if !r16.is_empty() {
                        let c = g.add_initializer(&format!("{}_fp16", g.value_name(v)), h);
                        for &(n, s) in &r16 {
                            g.set_input(n, s, Some(c));
                        }
                        r.count("initializers copied to fp16", 1);
                    }
                }
                ValueDef::Node(p, _) if conv.contains(&p) => {
                    let shape = g.type_info(v).and_then(|t| t.shape);
                    g.set_type(v, &TypeInfo { dtype: Some(DataType::F16), shape });
                    let out_port = g.is_graph_output(v) && self.keep_io;
                    if !r32.is_empty() || out_port {
                        let c = cast(g, v, F32, first)?;
                        casts += 1;
                        for &(n, s) in &r32 {
                            g.set_input(n, s, Some(c));
                        }
                        if out_port {
                            // The interface keeps its name and FP32: the cast takes the name.
                            let name = g.value_name(v).to_string();
                            g.rename_value(v, &format!("{name}_fp16_out")).map_err(|e| PassError::ir("to-fp16", e))?;
                            g.rename_value(c, &name).map_err(|e| PassError::ir("to-fp16", e))?;
                            let idx: Vec<usize> =
                                g.outputs().iter().enumerate().filter(|(_, p)| p.value == v).map(|(i, _)| i).collect();
                            for i in idx {
                                g.set_output_value(i, c);
                            }
                            // Types follow the values now that the port moved.
                            let shape = g.type_info(c).and_then(|t| t.shape);
                            g.set_type(c, &TypeInfo { dtype: Some(DataType::F32), shape: shape.clone() });
                            g.set_type(v, &TypeInfo { dtype: Some(DataType::F16), shape });
                        }
                    }
                }
                ValueDef::Input if !self.keep_io => {
                    return Err(PassError::msg("keep_io: false is not supported yet: graph inputs stay FP32"));
                }
                _ => {
                    if !r16.is_empty() {
                        let c = cast(g, v, F16, first)?;
                        casts += 1;
                        for &(n, s) in &r16 {
                            g.set_input(n, s, Some(c));
                        }
                    }
                }
            }
        }
        // Ops whose attributes name the float type follow their node.
        let mut fixed: HashMap<&str, u64> = HashMap::new();
        for &n in &conv {
            let node = g.node(n);
            if node.is_op("Cast") && node.attr_int("to") == Some(F32) {
                g.node_mut(n).set_attr(attr_int("to", F16));
                *fixed.entry("Cast").or_default() += 1;
            } else if node.is_op("ConstantOfShape")
                && let Some(t) = node.attr("value").and_then(qforge_ir::AttrExt::as_tensor)
                && t.dtype() == Some(DataType::F32)
            {
                let h = to_f16(&t).map_err(|e| PassError::msg(format!("{}: {e}", describe(g, n))))?;
                g.node_mut(n).set_attr(attr_tensor("value", h));
                *fixed.entry("ConstantOfShape").or_default() += 1;
            }
        }
        for (op, k) in fixed {
            r.count(&format!("{op} retyped"), k);
        }
        if qdq16 {
            r.count(
                "Q/DQ in fp16",
                conv.iter()
                    .filter(|&&n| g.node(n).is_op("QuantizeLinear") || g.node(n).is_op("DequantizeLinear"))
                    .count() as u64,
            );
        }
        r.count("ops in fp16", conv.len() as u64);
        r.count("casts inserted", casts);
        Ok(r)
    }
}
