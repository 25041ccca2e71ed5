//! Per-channel symmetric INT8 weights.

use qforge_ir::{Graph, Tensor, ValueId};

/// Quantized weights: int8 data and one scale per output channel.
pub struct QuantWeights {
    /// `round_half_even(w / scale_c)` clamped to ±127.
    pub data: Tensor,
    /// Scales, one per channel (or one when the channel axis has size 1).
    pub scales: Vec<f32>,
    /// The channel axis (`None`: per-tensor).
    pub axis: Option<usize>,
}

/// Quantizes constant weight `w` per channel along `axis` with the given
/// per-channel amax (computed from the data when `amax` is `None`).
pub fn quantize(g: &Graph, w: ValueId, axis: usize, amax: Option<&[f32]>) -> Result<QuantWeights, String> {
    let t = g.constant(w).ok_or_else(|| format!("weight \"{}\" is not constant", g.value_name(w)))?;
    let data = t.to_f32_vec().map_err(|e| e.to_string())?;
    let dims = t.dims().to_vec();
    let c = dims.get(axis).copied().unwrap_or(1).max(1) as usize;
    let inner: usize = dims.iter().skip(axis + 1).map(|&d| d.max(1) as usize).product();
    let computed;
    let amax = match amax.filter(|a| a.len() == c) {
        Some(a) => a,
        None => {
            computed = crate::calibrate::weight_amax(&data, &dims, axis, crate::calibrate::MethodName::Max, 100.0);
            &computed
        }
    };
    let scales: Vec<f32> =
        amax.iter().map(|&a| if a > 0.0 && a.is_finite() { a / 127.0 } else { 1.0 / 127.0 }).collect();
    let q: Vec<i8> = data
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let s = scales[(i / inner) % c];
            (x / s).round_ties_even().clamp(-127.0, 127.0) as i8
        })
        .collect();
    let per_tensor = c == 1;
    Ok(QuantWeights {
        data: Tensor::new(&dims, &q),
        scales: if per_tensor { vec![scales[0]] } else { scales },
        axis: (!per_tensor).then_some(axis),
    })
}
