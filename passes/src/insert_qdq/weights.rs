//! Per-channel symmetric INT8 weights.

use qforge_ir::{Graph, Tensor, ValueId};

use super::WeightsMethod;
use crate::calibrate::table::CalibrationTable;
use crate::calibrate::{MethodName, weight_amax};

/// Quantized weights: int8 data and one scale per output channel.
pub struct QuantWeights {
    /// `round_half_even(w / scale_c)` clamped to ±127.
    pub data: Tensor,
    /// Scales, one per channel (or one when the channel axis has size 1).
    pub scales: Vec<f32>,
    /// The channel axis (`None`: per-tensor).
    pub axis: Option<usize>,
}

/// Quantizes constant weight `w` per channel along `axis`, its per-channel
/// amax chosen by `method` (`Table`: the table's entry for `w`, else max).
pub fn quantize(
    g: &Graph,
    w: ValueId,
    axis: usize,
    method: WeightsMethod,
    table: &CalibrationTable,
) -> Result<QuantWeights, String> {
    let t = g.constant(w).ok_or_else(|| format!("weight \"{}\" is not constant", g.value_name(w)))?;
    let data = t.to_f32_vec().map_err(|e| e.to_string())?;
    let dims = t.dims().to_vec();
    let c = dims.get(axis).copied().unwrap_or(1).max(1) as usize;
    let inner: usize = dims.iter().skip(axis + 1).map(|&d| d.max(1) as usize).product();
    let from_table = table.weights.get(&w).filter(|r| r.axis == axis && r.amax.len() == c);
    let computed;
    let amax = match (method, from_table) {
        (WeightsMethod::Table, Some(r)) => r.amax.as_slice(),
        (WeightsMethod::Mse, _) => {
            computed = weight_amax(&data, &dims, axis, MethodName::Mse, 100.0);
            &computed
        }
        _ => {
            computed = weight_amax(&data, &dims, axis, MethodName::Max, 100.0);
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
