//! %y = Add(Conv|ConvTranspose(%x, @w, @b), @c) => Conv|ConvTranspose(%x, @w, @b + @c), @c constant per output channel.
//!
//! Exporters that keep the bias apart from the convolution (Paddle's
//! `conv2d_transpose` + `elementwise_add`, some TF converters) leave an
//! `Add` of a `[1, C, 1, 1]` constant after the layer. Merged into the
//! layer's bias it costs nothing at run time, and it lets `fold-batchnorm`
//! reach a BatchNormalization that follows (PP-OCR's detector has one).
//!
//! Legal when the constant broadcasts over the layer's output without
//! changing its shape and varies at most along the channel axis (shape
//! `[C]` would broadcast along the width, so it is not a bias and is left
//! alone), has the weights' float type, and the layer's output is read by
//! the `Add` alone. The sum is done in f64 and rounded once; the layer now
//! adds one bias where it added two, so results may differ in the last bit.

use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, NodeId, Tensor, ValueId};

use crate::util::{describe, remove_if_unused, sole_user};
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `fold-bias-add` (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FoldBiasAdd {}

impl PassOptions for FoldBiasAdd {
    const DOCS: &'static [(&'static str, &'static str)] = &[];
}

register_pass!(
    "fold-bias-add",
    FoldBiasAdd,
    "Add(Conv|ConvTranspose, per-channel constant) => the layer with the constant added to its bias"
);

impl Pass for FoldBiasAdd {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        for add in g.node_ids() {
            if g.contains_node(add) && g.node(add).is_op("Add") && try_fold(g, add)? {
                r.count("folded", 1);
            }
        }
        Ok(r)
    }
}

/// The layer and the constant of `add` when one input is a foldable layer
/// output and the other a constant.
fn operands(g: &Graph, add: NodeId) -> Option<(NodeId, ValueId, ValueId)> {
    let (a, b) = (g.node(add).input(0)?, g.node(add).input(1)?);
    [(a, b), (b, a)].into_iter().find_map(|(layer_out, c)| {
        let p = g.producer_node(layer_out)?;
        let node = g.node(p);
        let is_layer = matches!(node.op_type(), "Conv" | "ConvTranspose") && matches!(node.domain(), "" | "ai.onnx");
        (is_layer && g.constant(c).is_some() && sole_user(g, layer_out) == Some(add)).then_some((p, layer_out, c))
    })
}

/// The layer's output channel count and output rank, from its weights.
fn layer_channels(g: &Graph, p: NodeId, w: &Tensor) -> Option<(usize, usize)> {
    let dims = w.dims();
    if dims.len() < 3 {
        return None;
    }
    let c = match g.node(p).op_type() {
        "Conv" => dims[0],
        _ => dims[1].checked_mul(g.node(p).attr_int("group").unwrap_or(1))?,
    };
    (c > 0).then_some((c as usize, dims.len()))
}

/// The constant as one value per output channel, when its shape broadcasts
/// to `[N, C, spatial…]` without growing it and varies only along `C`.
fn per_channel(t: &Tensor, c: usize, rank: usize) -> Option<Vec<f64>> {
    let dims = t.dims();
    if dims.len() > rank {
        return None;
    }
    // Broadcasting aligns the last dims: dim `i` meets output axis `rank - len + i`.
    for (i, &d) in dims.iter().enumerate() {
        let is_channel = rank - dims.len() + i == 1;
        if d != 1 && !(is_channel && d as usize == c) {
            return None;
        }
    }
    let v: Vec<f64> = t.to_f32_vec().ok()?.into_iter().map(f64::from).collect();
    match v.len() {
        1 => Some(vec![v[0]; c]),
        n if n == c => Some(v),
        _ => None,
    }
}

fn try_fold(g: &mut Graph, add: NodeId) -> Result<bool, PassError> {
    let Some((p, layer_out, c_v)) = operands(g, add) else { return Ok(false) };
    let Some(y) = g.node(add).output(0) else { return Ok(false) };
    let Some(w) = g.node(p).input(1).and_then(|v| g.constant(v)) else { return Ok(false) };
    let Some(dt) = w.dtype().filter(|d| d.is_float()) else { return Ok(false) };
    let Some((c, rank)) = layer_channels(g, p, &w) else { return Ok(false) };
    let Some(konst) = g.constant(c_v) else { return Ok(false) };
    if konst.dtype() != Some(dt) {
        return Ok(false);
    }
    let Some(add_c) = per_channel(&konst, c, rank) else { return Ok(false) };
    let b_v = g.node(p).input(2);
    let old_bias: Vec<f64> = match b_v {
        None => vec![0.0; c],
        Some(bv) => {
            let Some(b) = g.constant(bv) else { return Ok(false) };
            if b.dims() != [c as i64] {
                return Ok(false);
            }
            let v = b.to_f32_vec().map_err(|e| PassError::msg(format!("{}: {e}", describe(g, p))))?;
            v.into_iter().map(f64::from).collect()
        }
    };
    let sum: Vec<f64> = old_bias.iter().zip(&add_c).map(|(a, b)| a + b).collect();
    let Some(bias) = Tensor::from_f64(dt, &[sum.len() as i64], &sum) else { return Ok(false) };
    let what = describe(g, add);
    let hint = match b_v {
        Some(bv) => format!("{}_biasadd", g.value_name(bv)),
        None => format!("{}_bias", g.node(p).name()),
    };
    let new_b = g.add_initializer(&hint, bias);
    g.set_input(p, 2, Some(new_b));
    g.remove_node(add);
    g.replace_value(y, layer_out).map_err(|e| PassError::ir(format!("folding {what}"), e))?;
    remove_if_unused(g, [c_v].into_iter().chain(b_v));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_constants_that_vary_along_the_channel_axis_are_biases() {
        let t = |dims: &[i64], n: usize| Tensor::new(dims, &vec![1.5f32; n]);
        assert_eq!(per_channel(&t(&[1, 4, 1, 1], 4), 4, 4), Some(vec![1.5; 4]));
        assert_eq!(per_channel(&t(&[4, 1, 1], 4), 4, 4), Some(vec![1.5; 4]));
        assert_eq!(per_channel(&t(&[], 1), 4, 4), Some(vec![1.5; 4]));
        assert_eq!(per_channel(&t(&[1], 1), 4, 4), Some(vec![1.5; 4]));
        // [C] lines up with the width, [1, C, 1, 1, 1] would grow the rank,
        // [1, 1, 2, 1] varies along the height.
        assert_eq!(per_channel(&t(&[4], 4), 4, 4), None);
        assert_eq!(per_channel(&t(&[1, 4, 1, 1, 1], 4), 4, 4), None);
        assert_eq!(per_channel(&t(&[1, 1, 2, 1], 2), 4, 4), None);
        assert_eq!(per_channel(&t(&[1, 3, 1, 1], 3), 4, 4), None);
    }
}
