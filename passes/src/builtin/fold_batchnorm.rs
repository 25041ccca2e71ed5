//! %y = BatchNormalization(Conv|ConvTranspose|Gemm(%x, @w, @b)) => Conv|ConvTranspose|Gemm(%x, @w·s, (@b − mean)·s + β), s = γ/√(var+ε).
//!
//! Legal when the BN is in inference mode with all four parameters constant,
//! the producer's weights (and bias, if any) are constant, and the
//! producer's output is read by the BN alone (a graph output or a second
//! reader would still need the unnormalised value). Arithmetic is done in
//! f64 and rounded once. Weight layouts: Conv `[Cout, Cin/g, k…]` scales axis
//! 0; ConvTranspose `[Cin, Cout/g, k…]` scales, for input channel `i` of
//! group `i / (Cin/g)`, the output channel `group·(Cout/g) + j`; Gemm scales
//! the output column of `B` (rows when `transB = 1`). Shared weights are
//! copied, never changed under another reader.

use serde::{Deserialize, Serialize};

use qforge_ir::{DataType, Graph, NodeId, Tensor, ValueId, attr_float};

use crate::util::{describe, remove_if_unused, sole_user};
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `fold-batchnorm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FoldBatchNorm {
    /// Producer op types to fold into.
    pub into: Vec<String>,
}

impl Default for FoldBatchNorm {
    fn default() -> Self {
        FoldBatchNorm { into: vec!["Conv".into(), "ConvTranspose".into(), "Gemm".into()] }
    }
}

impl PassOptions for FoldBatchNorm {
    const DOCS: &'static [(&'static str, &'static str)] =
        &[("into", "producer ops to fold into (default [Conv, ConvTranspose, Gemm])")];
}

register_pass!(
    "fold-batchnorm",
    FoldBatchNorm,
    "BatchNormalization(Conv|ConvTranspose|Gemm) => the producer with scaled weights and shifted bias"
);

impl Pass for FoldBatchNorm {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        for bn in g.node_ids() {
            if !g.contains_node(bn) || !g.node(bn).is_op("BatchNormalization") {
                continue;
            }
            match self.try_fold(g, bn) {
                Ok(true) => r.count("folded", 1),
                Ok(false) => r.info("not foldable", 1),
                Err(e) => return Err(e),
            }
        }
        Ok(r)
    }
}

/// BN parameters as per-channel scale and shift: y = x·scale + shift.
struct Affine {
    scale: Vec<f64>,
    shift: Vec<f64>,
}

fn bn_affine(g: &Graph, bn: NodeId) -> Result<Option<Affine>, PassError> {
    let node = g.node(bn);
    if node.attr_int("training_mode") == Some(1)
        || node.outputs().iter().skip(1).flatten().any(|&v| g.reader_count(v) > 0)
    {
        return Ok(None);
    }
    let eps = f64::from(node.attr_float("epsilon").unwrap_or(1e-5));
    let mut p: Vec<Vec<f64>> = Vec::with_capacity(4);
    for slot in 1..=4 {
        let Some(t) = node.input(slot).and_then(|v| g.constant(v)) else { return Ok(None) };
        let v = t.to_f32_vec().map_err(|e| PassError::msg(format!("{}: {e}", describe(g, bn))))?;
        p.push(v.into_iter().map(f64::from).collect());
    }
    let c = p[0].len();
    if p.iter().any(|v| v.len() != c) {
        return Err(PassError::msg(format!("{}: scale, bias, mean and var have different lengths", describe(g, bn))));
    }
    let scale: Vec<f64> = (0..c).map(|i| p[0][i] / (p[3][i] + eps).sqrt()).collect();
    let shift: Vec<f64> = (0..c).map(|i| p[1][i] - p[2][i] * scale[i]).collect();
    // A negative variance (or an infinite parameter) makes the BN's output
    // NaN/inf on that channel only; folded, the NaN would spread through the
    // whole layer, so it is not an exact rewrite (found by the fuzzer).
    if scale.iter().chain(&shift).any(|x| !x.is_finite()) {
        return Ok(None);
    }
    Ok(Some(Affine { scale, shift }))
}

/// Writes `data` to the initializer behind `v` when `owner` is its only
/// reader, else to a new initializer; returns the value to read.
fn store(g: &mut Graph, v: Option<ValueId>, owner: NodeId, hint: &str, t: Tensor) -> Result<ValueId, PassError> {
    if let Some(v) = v
        && g.value(v).def() == qforge_ir::ValueDef::Initializer
        && !g.is_graph_input(v)
        && g.uses(v).len() == 1
        && g.uses(v)[0].node == owner
    {
        g.set_initializer(v, t).map_err(|e| PassError::ir("fold-batchnorm", e))?;
        return Ok(v);
    }
    Ok(g.add_initializer(hint, t))
}

impl FoldBatchNorm {
    fn try_fold(&self, g: &mut Graph, bn: NodeId) -> Result<bool, PassError> {
        let Some(x) = g.node(bn).input(0) else { return Ok(false) };
        let Some(y) = g.node(bn).output(0) else { return Ok(false) };
        let Some(p) = g.producer_node(x) else { return Ok(false) };
        let op = g.node(p).op_type().to_string();
        if !self.into.contains(&op) || !matches!(g.node(p).domain(), "" | "ai.onnx") || sole_user(g, x) != Some(bn) {
            return Ok(false);
        }
        let Some(aff) = bn_affine(g, bn)? else { return Ok(false) };
        let (w_v, b_v) = (g.node(p).input(1), g.node(p).input(2));
        let Some(w) = w_v.and_then(|v| g.constant(v)) else { return Ok(false) };
        let Some(dt) = w.dtype().filter(|d| d.is_float()) else { return Ok(false) };
        let dims = w.dims().to_vec();
        let n_weights = w.numel();
        let c = aff.scale.len();
        let group = g.node(p).attr_int("group").unwrap_or(1).max(1) as usize;
        // For each weight element, the output channel it feeds.
        let channel_of: Box<dyn Fn(usize) -> usize> = match op.as_str() {
            "Conv" => {
                if dims.is_empty() || dims[0] as usize != c {
                    return Ok(false);
                }
                let per = n_weights / c;
                Box::new(move |i| i / per)
            }
            "ConvTranspose" => {
                if dims.len() < 2 || dims[1] as usize * group != c || dims[0] as usize % group != 0 {
                    return Ok(false);
                }
                let (cin, cout_g) = (dims[0] as usize, dims[1] as usize);
                let spatial = n_weights / (cin * cout_g).max(1);
                let cin_g = cin / group;
                Box::new(move |i| {
                    let ci = i / (cout_g * spatial);
                    let j = (i / spatial) % cout_g;
                    (ci / cin_g) * cout_g + j
                })
            }
            "Gemm" => {
                if dims.len() != 2 {
                    return Ok(false);
                }
                let trans_b = g.node(p).attr_int("transB") == Some(1);
                let (rows, cols) = (dims[0] as usize, dims[1] as usize);
                let n_out = if trans_b { rows } else { cols };
                if n_out != c {
                    return Ok(false);
                }
                if trans_b { Box::new(move |i| i / cols) } else { Box::new(move |i| i % cols) }
            }
            _ => return Ok(false),
        };
        // Bias: Conv/ConvTranspose `B` [C]; Gemm `beta·C` broadcast to [C].
        let old_bias: Vec<f64> = match b_v {
            None => vec![0.0; c],
            Some(bv) => {
                let Some(b) = g.constant(bv) else { return Ok(false) };
                let mut v: Vec<f64> = b
                    .to_f32_vec()
                    .map_err(|e| PassError::msg(format!("{}: {e}", describe(g, p))))?
                    .into_iter()
                    .map(f64::from)
                    .collect();
                if op == "Gemm" {
                    let beta = f64::from(g.node(p).attr_float("beta").unwrap_or(1.0));
                    v.iter_mut().for_each(|x| *x *= beta);
                }
                match v.len() {
                    n if n == c => v,
                    1 => vec![v[0]; c],
                    _ => return Ok(false),
                }
            }
        };
        // The products in f64, rounded once to the weight's type. Conv (the
        // common case) scales whole output-channel blocks from the stored
        // bytes to new bytes, with no lookup per element and no copy
        // between: 11 M weights of a YOLOv8s fold in a few ms.
        let w_t = if dt == DataType::F32 && op == "Conv" {
            let raw = w.raw_bytes().map_err(|e| PassError::msg(format!("{}: {e}", describe(g, p))))?;
            let per = (raw.len() / 4 / c).max(1) * 4;
            let mut out = vec![0u8; raw.len()];
            for ((src, dst), &k) in raw.chunks(per).zip(out.chunks_mut(per)).zip(&aff.scale) {
                for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(4)) {
                    let x = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    d.copy_from_slice(&((f64::from(x) * k) as f32).to_le_bytes());
                }
            }
            Tensor::from_raw(DataType::F32, &dims, out)
        } else {
            let wd: Vec<f32> = w.to_f32_vec().map_err(|e| PassError::msg(format!("{}: {e}", describe(g, p))))?;
            let new_w: Vec<f64> =
                wd.iter().enumerate().map(|(i, &x)| f64::from(x) * aff.scale[channel_of(i)]).collect();
            let Some(t) = Tensor::from_f64(dt, &dims, &new_w) else { return Ok(false) };
            t
        };
        let new_b: Vec<f64> = (0..c).map(|i| old_bias[i] * aff.scale[i] + aff.shift[i]).collect();
        let Some(b_t) = Tensor::from_f64(dt, &[c as i64], &new_b) else { return Ok(false) };

        let bn_inputs: Vec<ValueId> = g.node(bn).inputs().iter().flatten().copied().collect();
        let extra_outputs: Vec<ValueId> = g.node(bn).outputs().iter().skip(1).flatten().copied().collect();
        let beta_name = g.node(bn).input(2).map(|v| g.value_name(v).to_string()).unwrap_or_default();
        let w_name = w_v.map(|v| g.value_name(v).to_string()).unwrap_or_default();
        let what = describe(g, bn);
        let new_wv = store(g, w_v, p, &format!("{w_name}_bnfold"), w_t)?;
        g.set_input(p, 1, Some(new_wv));
        let new_bv = match b_v {
            Some(_) => store(g, b_v, p, &format!("{beta_name}_bnfold"), b_t)?,
            None => {
                // Free the BN's beta name first so the new bias can take it.
                g.remove_node(bn);
                remove_if_unused(g, bn_inputs.iter().copied().filter(|&v| v != x));
                g.add_initializer(&beta_name, b_t)
            }
        };
        g.set_input(p, 2, Some(new_bv));
        if op == "Gemm" {
            g.node_mut(p).set_attr(attr_float("beta", 1.0));
        }
        if g.contains_node(bn) {
            g.remove_node(bn);
        }
        g.replace_value(y, x).map_err(|e| PassError::ir(format!("folding {what}"), e))?;
        remove_if_unused(g, bn_inputs.into_iter().filter(|&v| v != x));
        remove_if_unused(g, extra_outputs);
        if let Some(old) = w_v {
            remove_if_unused(g, [old]);
        }
        if let Some(old) = b_v {
            remove_if_unused(g, [old]);
        }
        Ok(true)
    }
}
