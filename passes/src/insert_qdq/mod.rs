//! %y = Conv(%x, @w) => %y = Conv(DQ(Q(%x)), DQ(@w_q)): INT8 Q/DQ where TensorRT fuses them (explicit quantization).
//!
//! Placement follows TensorRT's rules (DESIGN.md, NVIDIA's yolo_deepstream):
//! Q/DQ on the *inputs* of Conv/ConvTranspose/Gemm/MatMul and on both inputs
//! of residual Adds (`residual: fusable` leaves out the one a Conv and its
//! activation write, so TensorRT fuses the Add into that Conv), never on
//! outputs; optionally on the inputs of
//! pooling/Resize/Concat (`quantize_ops`). Activations are per-tensor
//! symmetric INT8 (zero point 0, scale amax/127 from the calibration table);
//! weights per output channel (Conv/Gemm axis 0, ConvTranspose axis 1),
//! stored as int8 initializers + DequantizeLinear (or float + Q/DQ). Bias
//! stays float. Tensors joined by Concat or pooling/Resize share one scale,
//! computed from their merged histograms. The detector's post-processing
//! tail (no weighted op downstream) stays float by default.

pub(crate) mod placement;
mod weights;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use qforge_ir::{DataType, Graph, InsertAt, NewNode, NodeId, Tensor, TypeInfo, ValueId, attr_int};

use crate::calibrate::table::CalibrationTable;
use crate::precision::FloatReasons;
use crate::qdq_rules::{WEIGHTED_OPS, is_activation, is_residual_add, weight_and_axis};
use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, Tolerance, register_pass};
pub use placement::tail_nodes;
use placement::{Excluder, Groups};

/// The graph as it was before `insert-qdq`, the float reference of
/// quantization analyses (`skip-sensitive`), kept in the pass context
/// ([`PassContext::ext`]). A clone: ids that existed when it was made
/// resolve to the same nodes and values in both graphs; ids created later
/// in either are unknown (`try_node` is `None`) in the other.
#[derive(Debug, Clone)]
pub struct FloatReference(pub Graph);

/// User exclusions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Exclude {
    /// Node names.
    pub names: Vec<String>,
    /// Regular expressions over node names.
    pub regex: Vec<String>,
    /// Op types.
    pub ops: Vec<String>,
}

/// How weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightStorage {
    /// int8 initializer + DequantizeLinear (smaller file; TensorRT's preferred form).
    Int8,
    /// float initializer + QuantizeLinear + DequantizeLinear.
    Qdq,
}

/// What to do with a model that already holds Q/DQ nodes (e.g. a QAT export).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnQuantized {
    /// Refuse, with an explanation.
    Error,
    /// Leave the existing Q/DQ as they are and insert nothing.
    Keep,
    /// Strip the existing Q/DQ (dequantizing constant weights) and quantize
    /// again from the calibration table.
    Requantize,
}

/// Options of `insert-qdq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InsertQdq {
    /// Nodes whose inputs stay float.
    pub exclude: Exclude,
    /// Keep the post-processing tail (nodes with no weighted op downstream) float.
    pub exclude_tail: bool,
    /// Keep the first Conv's input float (the image).
    pub exclude_first_conv: bool,
    /// Extra ops whose inputs get Q/DQ (MaxPool, AveragePool, GlobalAveragePool, Resize, Concat).
    pub quantize_ops: Vec<String>,
    /// Weight storage: int8 or qdq.
    pub weights: WeightStorage,
    /// One Q/DQ pair per consumer instead of one per tensor.
    pub dedicated_pairs: bool,
    /// Give tensors joined by Concat/pooling/Resize one scale.
    pub share_scales: bool,
    /// Existing Q/DQ: error, keep or requantize.
    pub on_quantized: OnQuantized,
    /// Range of the inputs of head layers (weighted ops whose outputs feed
    /// only the post-processing tail): `max` keeps the rare large
    /// activations that make confident detections; `table` uses the
    /// calibration method like every other tensor.
    pub head_range: HeadRange,
    /// Which inputs of a residual Add get Q/DQ.
    pub residual: Residual,
    /// Where per-channel weight ranges come from.
    pub weights_method: WeightsMethod,
}

/// Where the per-channel weight ranges come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsMethod {
    /// The calibration table's (`calibrate.weights`; max when it has none).
    Table,
    /// Max |w| of each output channel.
    Max,
    /// Per channel, the range with the least squared rounding-plus-clipping
    /// error ([`crate::calibrate::mse_amax`]).
    Mse,
}

/// Which inputs of a residual `Add` are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Residual {
    /// TensorRT's placement: not the input written by a weighted layer (and
    /// its activation) that TensorRT fuses the Add into; the other one.
    Fusable,
    /// Both inputs (a Q/DQ pair then separates the layer from its Add). The
    /// default until measurements favour `fusable`: on nudenet the pipeline
    /// with `fusable` ended at 0.853 mAP50 / 23.5 dB against 0.894 / 32.6 dB
    /// (its all-quantized model is better, 0.886 vs 0.696 mAP50, but the
    /// sensitive-layer search then finds less to keep float).
    Both,
}

/// How head-layer inputs get their range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadRange {
    /// The exact max |x| seen during calibration.
    Max,
    /// The calibration table's amax.
    Table,
}

impl Default for InsertQdq {
    fn default() -> Self {
        InsertQdq {
            exclude: Exclude::default(),
            exclude_tail: true,
            exclude_first_conv: false,
            quantize_ops: Vec::new(),
            weights: WeightStorage::Int8,
            dedicated_pairs: false,
            share_scales: true,
            on_quantized: OnQuantized::Error,
            head_range: HeadRange::Max,
            residual: Residual::Both,
            weights_method: WeightsMethod::Table,
        }
    }
}

impl PassOptions for InsertQdq {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("exclude", "{names: [...], regex: [...], ops: [...]}: nodes whose inputs stay float"),
        ("exclude_tail", "keep the post-processing tail (no weighted op downstream) float (default true)"),
        ("exclude_first_conv", "keep the first Conv's input (the image) float (default false)"),
        (
            "quantize_ops",
            "extra ops whose inputs get Q/DQ: MaxPool, AveragePool, GlobalAveragePool, Resize, Concat (default [])",
        ),
        ("weights", "int8 (int8 initializer + DequantizeLinear, default) | qdq (float + Q/DQ)"),
        (
            "weights_method",
            "per-channel weight ranges: table (the calibration table's, default) | max | mse (least rounding + clipping error per channel)",
        ),
        ("dedicated_pairs", "one Q/DQ pair per consumer instead of one per tensor (default false)"),
        (
            "share_scales",
            "one scale for tensors joined by Concat/pooling/Resize, from merged histograms (default true)",
        ),
        ("on_quantized", "model already has Q/DQ: error (default) | keep | requantize"),
        (
            "residual",
            "inputs of residual Adds that get Q/DQ: both (default) | fusable (not the one a Conv and its activation write, so TensorRT fuses the Add into that Conv; the guide's placement, see bench)",
        ),
        (
            "head_range",
            "inputs of head layers (outputs feed only the tail): max (default, keeps confident scores) | table",
        ),
    ];
}

register_pass!(
    "insert-qdq",
    InsertQdq,
    "%y = Conv(%x, @w) => %y = Conv(DQ(Q(%x)), DQ(@w_int8)) with calibrated scales, per TensorRT's placement rules"
);

/// This pass's name, for the reasons it gives ([`FloatReasons`]).
const PASS: &str = "insert-qdq";

fn is_qdq(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.is_op("QuantizeLinear") || node.is_op("DequantizeLinear")
}

fn fail(e: impl std::fmt::Display) -> PassError {
    PassError::msg(e.to_string())
}

/// Adds Q and DQ of `v` with the given scale/zero-point tensors, placed at
/// `at`; returns the DQ output.
fn add_pair(
    g: &mut Graph,
    v: ValueId,
    scale: Tensor,
    zp: Tensor,
    axis: Option<usize>,
    at: InsertAt,
    base: &str,
) -> Result<ValueId, PassError> {
    let ty = g.type_info(v);
    let s = g.add_initializer(&format!("{base}_scale"), scale);
    let z = g.add_initializer(&format!("{base}_zero_point"), zp);
    let mut q = NewNode::new("QuantizeLinear", &format!("{base}/QuantizeLinear"), &[v, s, z], &format!("{base}_q"));
    let mut dq = NewNode::new("DequantizeLinear", &format!("{base}/DequantizeLinear"), &[], &format!("{base}_dq"));
    if let Some(a) = axis {
        q = q.attr(attr_int("axis", a as i64));
        dq = dq.attr(attr_int("axis", a as i64));
    }
    let qn = g.insert_node(at, q).map_err(|e| PassError::ir("inserting Q/DQ", e))?;
    let qo = g.node(qn).output(0).expect("one output");
    dq.inputs = vec![Some(qo), Some(s), Some(z)];
    let dn = g.insert_node(InsertAt::After(qn), dq).map_err(|e| PassError::ir("inserting Q/DQ", e))?;
    let out = g.node(dn).output(0).expect("one output");
    let shape = ty.and_then(|t| t.shape);
    g.set_type(qo, &TypeInfo { dtype: Some(DataType::I8), shape: shape.clone() });
    g.set_type(out, &TypeInfo { dtype: Some(DataType::F32), shape });
    Ok(out)
}

/// Removes every Q/DQ pair (DQ(Q(x)) => x) and dequantizes constant
/// weights into float initializers. Returns the number of nodes removed.
pub fn strip_qdq(g: &mut Graph) -> Result<usize, PassError> {
    let mut removed = 0;
    for n in g.node_ids() {
        if !g.contains_node(n) || !g.node(n).is_op("DequantizeLinear") {
            continue;
        }
        let node = g.node(n);
        let (Some(x), Some(out)) = (node.input(0), node.output(0)) else { continue };
        let what = describe(g, n);
        if let Some((p, _)) = g.producer(x)
            && g.node(p).is_op("QuantizeLinear")
            && let Some(f) = g.node(p).input(0)
        {
            g.remove_node(n);
            g.replace_value(out, f).map_err(|e| PassError::ir(format!("stripping {what}"), e))?;
            removed += 1;
        } else if let Some(t) = g.constant(x) {
            let scale = node
                .input(1)
                .and_then(|v| g.constant(v))
                .ok_or_else(|| fail(format!("{what}: scale is not constant")))?;
            let zp = node.input(2).and_then(|v| g.constant(v));
            let axis = node.attr_int("axis").unwrap_or(1);
            let q = t.to_f32_vec().map_err(fail)?;
            let s = scale.to_f32_vec().map_err(fail)?;
            let z = zp.map(|z| z.to_f32_vec()).transpose().map_err(fail)?.unwrap_or_else(|| vec![0.0; s.len()]);
            let dims = t.dims().to_vec();
            let ax = if axis < 0 { axis + dims.len() as i64 } else { axis } as usize;
            let c = if s.len() > 1 { dims.get(ax).copied().unwrap_or(1) as usize } else { 1 };
            let inner: usize = if s.len() > 1 { dims.iter().skip(ax + 1).map(|&d| d as usize).product() } else { 1 };
            let f: Vec<f32> = q
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let k = if c > 1 { (i / inner) % c } else { 0 };
                    (v - z[k]) * s[k]
                })
                .collect();
            g.remove_node(n);
            g.make_initializer(out, Tensor::new(&dims, &f))
                .map_err(|e| PassError::ir(format!("stripping {what}"), e))?;
            removed += 1;
        }
    }
    removed += crate::util::remove_dead(g, |g, n| g.node(n).is_op("QuantizeLinear"));
    Ok(removed)
}

impl Pass for InsertQdq {
    fn tolerance(&self) -> Tolerance {
        Tolerance::Approximate
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let existing = g.nodes().filter(|&n| is_qdq(g, n)).count();
        if existing > 0 {
            match self.on_quantized {
                OnQuantized::Error => {
                    return Err(fail(format!(
                        "the model already holds {existing} QuantizeLinear/DequantizeLinear nodes (a QAT export?); set insert-qdq.on_quantized to keep (legalize them as they are) or requantize (strip them and quantize from the calibration table)"
                    )));
                }
                OnQuantized::Keep => {
                    r.info("existing Q/DQ kept", existing as u64);
                    r.note("the model already had Q/DQ: nothing inserted (on_quantized: keep)");
                    return Ok(r);
                }
                OnQuantized::Requantize => {
                    let n = strip_qdq(g)?;
                    r.count("existing Q/DQ stripped", n as u64);
                }
            }
        }
        if let Some(old) = crate::opset::ensure_opset(g, 13).map_err(fail)? {
            r.count("opset raised", 1);
            r.note(format!("default-domain opset raised from {old} to 13 (per-channel Q/DQ needs it)"));
        }
        let table = cx
            .ext
            .get::<CalibrationTable>()
            .cloned()
            .ok_or_else(|| fail("no calibration table: run calibrate (or load-calibration) before insert-qdq"))?;
        // Later analyses (skip-sensitive) compare against the float model.
        cx.ext.insert(FloatReference(g.clone()));

        let ex = Excluder::new(&self.exclude.names, &self.exclude.regex, &self.exclude.ops).map_err(fail)?;
        for n in ex.unmatched_names(g) {
            r.note(format!("exclude.names: no node is called \"{n}\""));
        }
        let mut excluded: HashSet<NodeId> = g.nodes().filter(|&n| ex.excludes(g, n)).collect();
        r.info("excluded by name/op/regex", excluded.len() as u64);
        for &n in &excluded {
            let why = "excluded by the user (insert-qdq.exclude: names, regex or ops)";
            FloatReasons::add(cx, g.node(n).name(), PASS, "excluded", why);
        }
        let tail = tail_nodes(g);
        let heads: HashSet<NodeId> = g
            .nodes()
            .filter(|&n| {
                WEIGHTED_OPS.contains(&g.node(n).op_type())
                    && g.node(n)
                        .outputs()
                        .iter()
                        .flatten()
                        .all(|&v| !g.is_graph_output(v) && g.users(v).iter().all(|u| tail.contains(u)))
            })
            .collect();
        if self.exclude_tail {
            r.info("post-processing tail (float)", tail.len() as u64);
            excluded.extend(tail.iter().copied());
            for &n in &tail {
                let why = "post-processing tail: no weighted op downstream (insert-qdq.exclude_tail)";
                FloatReasons::add(cx, g.node(n).name(), PASS, "tail", why);
            }
        }
        if self.exclude_first_conv
            && let Some(first) = g.nodes().find(|&n| g.node(n).is_op("Conv"))
        {
            excluded.insert(first);
            let why = "the first Conv reads the image (insert-qdq.exclude_first_conv)";
            FloatReasons::add(cx, g.node(first).name(), PASS, "first-conv", why);
        }
        for op in &self.quantize_ops {
            if !crate::qdq_rules::SCALE_SHARING_OPS.contains(&op.as_str()) {
                return Err(fail(format!(
                    "quantize_ops: {op} is not one of {}",
                    crate::qdq_rules::SCALE_SHARING_OPS.join(", ")
                )));
            }
        }
        let mut groups = if self.share_scales { Some(Groups::new(g, &excluded)) } else { None };
        if let Some(gr) = groups.as_mut() {
            r.info("shared-scale groups", gr.shared_count() as u64);
        }

        // Tensors a weighted layer (with its fused activation) writes for a
        // residual Add alone: TensorRT fuses the Add into that layer when the
        // tensor stays unquantized (the tensorrt fusion prediction uses the same rule).
        let fusable_ends: HashSet<ValueId> = if self.residual == Residual::Fusable {
            g.nodes()
                .filter(|&n| !excluded.contains(&n) && WEIGHTED_OPS.contains(&g.node(n).op_type()))
                .filter_map(|n| g.node(n).output(0))
                .map(|y| crate::qdq_rules::fused_epilogue(g, y).0)
                .filter(|&end| g.users(end).len() == 1 && !g.is_graph_output(end))
                .collect()
        } else {
            HashSet::new()
        };
        let mut residual_fused = 0;
        // Collect sites first (the graph changes while inserting).
        let mut act_sites: Vec<(ValueId, NodeId, usize)> = Vec::new();
        let mut weight_sites: Vec<(NodeId, ValueId, usize)> = Vec::new();
        for n in g.nodes() {
            if excluded.contains(&n) {
                continue;
            }
            let node = g.node(n);
            let op = node.op_type();
            if !matches!(node.domain(), "" | "ai.onnx") {
                continue;
            }
            if WEIGHTED_OPS.contains(&op) {
                if let Some(x) = node.input(0).filter(|&x| is_activation(g, x)) {
                    act_sites.push((x, n, 0));
                }
                if op == "MatMul"
                    && let Some(b) = node.input(1).filter(|&b| is_activation(g, b))
                {
                    act_sites.push((b, n, 1));
                }
                if let Some((w, axis)) = weight_and_axis(g, n) {
                    weight_sites.push((n, w, axis));
                }
            } else if is_residual_add(g, n) {
                // At most one input is left for the fused layer to write.
                let fused = node.inputs().iter().position(|v| v.is_some_and(|v| fusable_ends.contains(&v)));
                residual_fused += fused.is_some() as u64;
                for (slot, v) in node.inputs().iter().enumerate() {
                    if let Some(v) = v
                        && Some(slot) != fused
                    {
                        act_sites.push((*v, n, slot));
                    }
                }
            } else if self.quantize_ops.iter().any(|o| o == op) {
                let slots: Vec<usize> = if op == "Concat" { (0..node.inputs().len()).collect() } else { vec![0] };
                for slot in slots {
                    if let Some(v) = node.input(slot).filter(|&v| is_activation(g, v)) {
                        act_sites.push((v, n, slot));
                    }
                }
            }
        }

        // Activations: one pair per tensor (or per consumer), shared scales.
        let mut pairs: HashMap<ValueId, ValueId> = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        let first = g.nodes().next();
        let mut group_amax: HashMap<Vec<ValueId>, Option<f32>> = HashMap::new();
        // The amax each quantized tensor got (shared scales and head ranges
        // can differ from the table's), for the run report.
        let mut ranges = serde_json::Map::new();
        for (v, n, slot) in act_sites {
            let amax = match groups.as_mut() {
                Some(gr) => {
                    let members = gr.members(v);
                    *group_amax.entry(members).or_insert_with_key(|m| table.shared_amax(m))
                }
                None => table.tensors.get(&v).map(|t| t.amax),
            };
            // Head layers: the exact max of the (group's) calibration data.
            let amax = if self.head_range == HeadRange::Max && heads.contains(&n) {
                let members = match groups.as_mut() {
                    Some(gr) => gr.members(v),
                    None => vec![v],
                };
                members
                    .iter()
                    .filter_map(|m| table.tensors.get(m))
                    .map(|t| t.histogram.as_ref().map(|h| h.max_abs()).unwrap_or(t.amax))
                    .reduce(f32::max)
            } else {
                amax
            };
            let Some(amax) = amax.filter(|_| table.tensors.contains_key(&v)) else {
                let name = g.value_name(v).to_string();
                let why = format!("its input \"{name}\" has no calibration range");
                FloatReasons::add(cx, g.node(n).name(), PASS, "no-range", why);
                if !missing.contains(&name) {
                    missing.push(name);
                }
                continue;
            };
            let scale = crate::calibrate::table::int8_scale(amax);
            let dq = if !self.dedicated_pairs
                && let Some(&dq) = pairs.get(&v)
            {
                dq
            } else {
                let at = if self.dedicated_pairs {
                    InsertAt::Before(n)
                } else {
                    match g.producer_node(v) {
                        Some(p) => InsertAt::After(p),
                        None => InsertAt::Before(first.unwrap_or(n)),
                    }
                };
                let base = g.value_name(v).to_string();
                let dq = add_pair(g, v, Tensor::scalar(scale), Tensor::scalar(0i8), None, at, &base)?;
                r.count("activation Q/DQ pairs", 1);
                ranges.insert(base, serde_json::json!(amax));
                pairs.insert(v, dq);
                dq
            };
            g.set_input(n, slot, Some(dq));
        }
        r.info("residual Adds left to fuse", residual_fused);
        r.publish("ranges", serde_json::Value::Object(ranges));
        if !missing.is_empty() {
            r.info("left float (no range)", missing.len() as u64);
            r.note(format!(
                "{} tensor(s) have no calibration range and stay float, first: {}",
                missing.len(),
                missing[0]
            ));
        }

        // Weights: per output channel, quantized once per weight tensor.
        let mut done: HashMap<ValueId, ValueId> = HashMap::new();
        for (n, w, axis) in weight_sites {
            let dq = match done.get(&w) {
                Some(&d) => d,
                None => {
                    let qw = weights::quantize(g, w, axis, self.weights_method, &table)
                        .map_err(|e| fail(format!("{}: {e}", describe(g, n))))?;
                    let base = g.value_name(w).to_string();
                    let c = qw.scales.len();
                    let (scale, zp) = match qw.axis {
                        Some(_) => (Tensor::new(&[c as i64], &qw.scales), Tensor::new(&[c as i64], &vec![0i8; c])),
                        None => (Tensor::scalar(qw.scales[0]), Tensor::scalar(0i8)),
                    };
                    let dq = match self.weights {
                        WeightStorage::Int8 => {
                            let wq = g.add_initializer(&format!("{base}_q"), qw.data);
                            let s = g.add_initializer(&format!("{base}_scale"), scale);
                            let z = g.add_initializer(&format!("{base}_zero_point"), zp);
                            let mut node = NewNode::new(
                                "DequantizeLinear",
                                &format!("{base}/DequantizeLinear"),
                                &[wq, s, z],
                                &format!("{base}_dq"),
                            );
                            if let Some(a) = qw.axis {
                                node = node.attr(attr_int("axis", a as i64));
                            }
                            let d =
                                g.insert_node(InsertAt::Before(n), node).map_err(|e| PassError::ir("weights", e))?;
                            let out = g.node(d).output(0).expect("one output");
                            let dims = g.initializer(wq).map(|t| t.dims().to_vec()).unwrap_or_default();
                            g.set_type(out, &TypeInfo::new(DataType::F32, &dims));
                            out
                        }
                        WeightStorage::Qdq => add_pair(g, w, scale, zp, qw.axis, InsertAt::Before(n), &base)?,
                    };
                    r.count("weights quantized", 1);
                    done.insert(w, dq);
                    dq
                }
            };
            g.set_input(n, 1, Some(dq));
            crate::util::remove_if_unused(g, [w]);
        }
        Ok(r)
    }
}
