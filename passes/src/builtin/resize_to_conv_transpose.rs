//! %y = Resize|Upsample(%x) {nearest, integer scales sh×sw, NCHW} => %y = ConvTranspose(%x, @ones[C,1,sh,sw]) {group=C, kernel=strides=[sh,sw]}.
//!
//! TensorRT fuses a quantized ConvTranspose but runs Resize in higher
//! precision with a requantize around it; the seed's section 9 replaces
//! nearest upsampling by a depthwise transposed convolution with a kernel of
//! ones, which copies each input pixel into an sh×sw block: exactly nearest
//! upsampling — *when* the op's coordinate mapping is "output x reads input
//! x / s". Rather than trusting a table of modes, the pass evaluates the
//! ONNX coordinate formula of the node's `coordinate_transformation_mode` and
//! `nearest_mode` for every output position and rewrites only when it equals
//! `x / s` everywhere (e.g. `asymmetric`+`floor` for any s, `half_pixel` +
//! `round_prefer_floor` for any s, `asymmetric`+`round_prefer_floor` only
//! for s ≤ 2, even `align_corners` + rounding at s = 2). Anything else is left alone with the reason in the report.

use serde::{Deserialize, Serialize};

use qforge_ir::{AttrExt, DataType, Graph, NewNode, NodeId, Tensor, attr_int, attr_ints};

use crate::util::{describe, remove_if_unused};
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `resize-to-conv-transpose`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResizeToConvTranspose {
    /// Largest spatial scale to rewrite (the kernel grows with it).
    pub max_scale: i64,
}

impl Default for ResizeToConvTranspose {
    fn default() -> Self {
        ResizeToConvTranspose { max_scale: 8 }
    }
}

impl PassOptions for ResizeToConvTranspose {
    const DOCS: &'static [(&'static str, &'static str)] =
        &[("max_scale", "largest integer spatial scale to rewrite (default 8)")];
}

register_pass!(
    "resize-to-conv-transpose",
    ResizeToConvTranspose,
    "nearest Resize/Upsample with integer scales => depthwise ConvTranspose with a ones kernel"
);

impl Pass for ResizeToConvTranspose {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        for n in g.node_ids() {
            let node = g.node(n);
            if !(node.is_op("Resize") || node.is_op("Upsample")) {
                continue;
            }
            match self.plan(g, n) {
                Ok((c, sh, sw)) => {
                    rewrite(g, n, c, sh, sw)?;
                    r.count("rewritten", 1);
                }
                Err(reason) => {
                    r.info("left alone", 1);
                    r.note(format!("left {} alone: {reason}", describe(g, n)));
                }
            }
        }
        Ok(r)
    }
}

/// How an output coordinate maps to an input one, per the ONNX Resize spec.
#[derive(Debug, Clone, Copy)]
struct Mapping<'a> {
    transform: &'a str,
    nearest: &'a str,
}

impl Mapping<'_> {
    /// Input index read by output index `x` (lengths `l_in` → `l_out`, scale `s`).
    fn source(&self, x: i64, l_in: i64, l_out: i64, s: f64) -> Option<i64> {
        let xf = x as f64;
        let orig = match self.transform {
            "half_pixel" | "half_pixel_symmetric" => (xf + 0.5) / s - 0.5,
            "pytorch_half_pixel" => {
                if l_out > 1 {
                    (xf + 0.5) / s - 0.5
                } else {
                    0.0
                }
            }
            "align_corners" => {
                if l_out > 1 {
                    xf * (l_in - 1) as f64 / (l_out - 1) as f64
                } else {
                    0.0
                }
            }
            "asymmetric" => xf / s,
            "tf_half_pixel_for_nn" => (xf + 0.5) / s,
            _ => return None,
        };
        let i = match self.nearest {
            "round_prefer_floor" => {
                if orig.fract() == 0.5 {
                    orig.floor()
                } else {
                    orig.round()
                }
            }
            "round_prefer_ceil" => {
                if orig.fract() == 0.5 {
                    orig.ceil()
                } else {
                    orig.round()
                }
            }
            "floor" => orig.floor(),
            "ceil" => orig.ceil(),
            _ => return None,
        };
        Some((i as i64).clamp(0, l_in - 1))
    }

    /// True when every output position reads `x / s`, for input length
    /// `l_in` (or, when unknown, for every length up to 16).
    fn is_replication(&self, s: i64, l_in: Option<i64>) -> bool {
        let lens: Vec<i64> = match l_in {
            Some(l) => vec![l],
            None => (1..=16).collect(),
        };
        lens.into_iter().all(|l| {
            let l_out = l * s;
            (0..l_out).all(|x| self.source(x, l, l_out, s as f64) == Some(x / s))
        })
    }
}

/// Longest spatial axis whose pixel mapping is checked position by position.
const MAX_CHECKED_LEN: i64 = 1 << 16;

impl ResizeToConvTranspose {
    /// Checks legality; returns (channels, scale h, scale w) or the reason not to.
    fn plan(&self, g: &Graph, n: NodeId) -> Result<(i64, i64, i64), String> {
        let node = g.node(n);
        let opset = g.opset("").unwrap_or(13);
        let mode = node.attr_str("mode").unwrap_or("nearest");
        if mode != "nearest" {
            return Err(format!("mode \"{mode}\" is not nearest"));
        }
        let x = node.input(0).ok_or("no input")?;
        let dims = g.type_info(x).and_then(|t| t.shape).ok_or("input shape unknown (run infer-shapes first)")?;
        if dims.rank() != 4 {
            return Err(format!("input has rank {}, not 4 (NCHW)", dims.rank()));
        }
        let known = |i: usize| {
            dims.as_known().map(|d| d[i]).or(match &dims.0[i] {
                qforge_ir::Dim::Known(k) => Some(*k),
                _ => None,
            })
        };
        let c = known(1).ok_or("channel count unknown (run infer-shapes first)")?;
        let is_resize = node.is_op("Resize");
        let (transform, nearest) = if !is_resize || opset < 11 {
            ("asymmetric", "floor")
        } else {
            (
                node.attr_str("coordinate_transformation_mode").unwrap_or("half_pixel"),
                node.attr_str("nearest_mode").unwrap_or("round_prefer_floor"),
            )
        };
        if is_resize && node.attr("axes").is_some() {
            return Err("the `axes` attribute is not supported".into());
        }
        if is_resize && node.attr_str("keep_aspect_ratio_policy").is_some_and(|p| p != "stretch") {
            return Err("keep_aspect_ratio_policy other than stretch".into());
        }
        let scales: Vec<f64> = if !is_resize {
            let attr = node.attr("scales").and_then(|a| a.as_floats().map(<[f32]>::to_vec));
            let s = attr.or_else(|| node.input(1).and_then(|v| g.constant(v)).and_then(|t| t.to_f32_vec().ok()));
            s.ok_or("scales are not constant (run fold-constants first)")?.into_iter().map(f64::from).collect()
        } else if opset < 11 {
            let t = node
                .input(1)
                .and_then(|v| g.constant(v))
                .ok_or("scales are not constant (run fold-constants first)")?;
            t.to_f32_vec().map_err(|e| e.to_string())?.into_iter().map(f64::from).collect()
        } else {
            let s =
                node.input(2).and_then(|v| g.constant(v)).and_then(|t| t.to_f32_vec().ok()).filter(|s| !s.is_empty());
            match s {
                Some(s) => s.into_iter().map(f64::from).collect(),
                None => {
                    let sizes = node
                        .input(3)
                        .and_then(|v| g.constant(v))
                        .and_then(|t| t.to_i64_vec().ok())
                        .ok_or("neither scales nor sizes are constant (run fold-constants first)")?;
                    let in_dims = dims.as_known().ok_or("sizes given but input dims unknown")?;
                    if sizes.len() != 4 {
                        return Err("sizes must have 4 entries".into());
                    }
                    sizes
                        .iter()
                        .zip(&in_dims)
                        .map(|(&o, &i)| if i > 0 { o as f64 / i as f64 } else { f64::NAN })
                        .collect()
                }
            }
        };
        if scales.len() != 4 {
            return Err(format!("{} scales for a rank-4 input", scales.len()));
        }
        if scales[0] != 1.0 || scales[1] != 1.0 {
            return Err("batch or channel axis is scaled".into());
        }
        let int_scale = |s: f64| -> Result<i64, String> {
            if s.fract() != 0.0 || s < 1.0 {
                return Err(format!("scale {s} is not an integer ≥ 1"));
            }
            if s as i64 > self.max_scale {
                return Err(format!("scale {s} exceeds max_scale {}", self.max_scale));
            }
            Ok(s as i64)
        };
        let (sh, sw) = (int_scale(scales[2])?, int_scale(scales[3])?);
        if sh == 1 && sw == 1 {
            return Err("scale 1×1 (a no-op, not an upsample)".into());
        }
        let m = Mapping { transform, nearest };
        for (axis, s) in [(2, sh), (3, sw)] {
            // Every output position is evaluated: bound the work (a real
            // feature map is a few thousand pixels; a hostile dim is 2^40).
            if let Some(l) = known(axis).filter(|&l| l > MAX_CHECKED_LEN) {
                return Err(format!(
                    "input size {l} on axis {axis} is above {MAX_CHECKED_LEN}: replication not checked, left alone"
                ));
            }
            if !m.is_replication(s, known(axis)) {
                return Err(format!(
                    "coordinate_transformation_mode \"{transform}\" with nearest_mode \"{nearest}\" is not pixel replication at scale {s}"
                ));
            }
        }
        match g.dtype(x) {
            Some(DataType::F32 | DataType::F16) => Ok((c, sh, sw)),
            other => Err(format!("input type {other:?} is not f32/f16")),
        }
    }
}

fn rewrite(g: &mut Graph, n: NodeId, c: i64, sh: i64, sw: i64) -> Result<(), PassError> {
    let node = g.node(n);
    let x = node.input(0).expect("planned");
    let name = node.name().to_string();
    let old_inputs: Vec<_> = node.inputs().iter().flatten().copied().filter(|&v| v != x).collect();
    let numel = (c * sh * sw) as usize;
    let dims = [c, 1, sh, sw];
    let ones = match g.dtype(x) {
        Some(DataType::F16) => Tensor::new(&dims, &vec![half::f16::ONE; numel]),
        _ => Tensor::new(&dims, &vec![1.0f32; numel]),
    };
    let base = if name.is_empty() { g.value_name(x).to_string() } else { name.clone() };
    let w = g.add_initializer(&format!("{base}/ConvTranspose.weight"), ones);
    let new = NewNode::new("ConvTranspose", &format!("{base}/ConvTranspose"), &[x, w], "")
        .attr(attr_int("group", c))
        .attr(attr_ints("kernel_shape", &[sh, sw]))
        .attr(attr_ints("strides", &[sh, sw]));
    g.replace_node(n, new).map_err(|e| PassError::ir(format!("rewriting node \"{name}\""), e))?;
    remove_if_unused(g, old_inputs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m<'a>(t: &'a str, n: &'a str) -> Mapping<'a> {
        Mapping { transform: t, nearest: n }
    }

    #[test]
    fn replication_modes_match_the_spec_analysis() {
        for s in 1..=6 {
            assert!(m("asymmetric", "floor").is_replication(s, None), "asym floor {s}");
            assert!(m("half_pixel", "round_prefer_floor").is_replication(s, None), "hp rpf {s}");
            assert!(m("half_pixel", "round_prefer_ceil").is_replication(s, None), "hp rpc {s}");
            assert!(m("tf_half_pixel_for_nn", "floor").is_replication(s, None), "tf floor {s}");
        }
        assert!(m("asymmetric", "round_prefer_floor").is_replication(2, None));
        assert!(!m("asymmetric", "round_prefer_floor").is_replication(3, None));
        assert!(!m("asymmetric", "ceil").is_replication(2, None));
        assert!(!m("half_pixel", "floor").is_replication(2, None));
        assert!(!m("align_corners", "floor").is_replication(2, None));
        // Less obvious, but true: x·(L−1)/(2L−1) rounds to ⌊x/2⌋ for every L.
        assert!(m("align_corners", "round_prefer_floor").is_replication(2, None));
    }
}
