//! Convolutions and pooling: sliding windows over the spatial axes.

use qforge_ir::{DataType, Dim};

use super::OpDef;
use super::dims::{AutoPad, Window, checked, known, mul, window_out};
use super::facts::Cx;

/// Per-axis window attributes for `sp` spatial axes; `None` when an
/// attribute has the wrong length.
fn windows(cx: &Cx<'_>, kernel: &[i64], sp: usize) -> Option<Vec<Window>> {
    let strides = cx.attr_ints("strides").unwrap_or_else(|| vec![1; sp]);
    let dil = cx.attr_ints("dilations").unwrap_or_else(|| vec![1; sp]);
    let pads = cx.attr_ints("pads").unwrap_or_else(|| vec![0; 2 * sp]);
    if kernel.len() != sp || strides.len() != sp || dil.len() != sp || pads.len() != 2 * sp {
        return None;
    }
    Some(
        (0..sp)
            .map(|i| Window {
                kernel: kernel[i],
                stride: strides[i],
                dilation: dil[i],
                pad_begin: pads[i],
                pad_end: pads[sp + i],
            })
            .collect(),
    )
}

/// The kernel's spatial size: the attribute, else the weight's trailing dims.
fn kernel(cx: &Cx<'_>, w: Option<&[Dim]>) -> Option<Vec<i64>> {
    match cx.attr_ints("kernel_shape") {
        Some(k) => Some(k),
        None => w?.get(2..)?.iter().map(known).collect(),
    }
}

/// Spatial output dims of a window op over `x`.
fn spatial(cx: &Cx<'_>, x: &[Dim], kernel: &[i64], ceil: bool) -> Option<Vec<Dim>> {
    let sp = x.len().checked_sub(2)?;
    let ws = windows(cx, kernel, sp)?;
    let auto = AutoPad::parse(cx.attr_str("auto_pad"))?;
    Some(ws.into_iter().enumerate().map(|(i, w)| window_out(&x[2 + i], w, auto, ceil)).collect())
}

/// Conv, ConvInteger, QLinearConv: [N, M, out…] with M from the weight.
fn conv(cx: &mut Cx<'_>) -> Option<()> {
    let (w_slot, dtype) = match cx.node().op_type() {
        "QLinearConv" => (3, cx.dtype(7).or(cx.dtype(0))),
        "ConvInteger" => (1, Some(DataType::I32)),
        _ => (1, cx.dtype(0).or(cx.dtype(1))),
    };
    cx.set(0, dtype, None);
    let x = cx.dims(0)?;
    let w = cx.dims(w_slot);
    if x.len() < 2 {
        return None;
    }
    let mut out = vec![x[0].clone(), w.as_ref().and_then(|w| w.first().cloned()).unwrap_or(Dim::Unknown)];
    match kernel(cx, w.as_deref()).and_then(|k| spatial(cx, &x, &k, false)) {
        Some(s) => out.extend(s),
        None => out.extend(std::iter::repeat_n(Dim::Unknown, x.len() - 2)),
    }
    cx.set(0, None, Some(out));
    Some(())
}

/// ConvTranspose: [N, W[1]·group, out…], out from `output_shape` or
/// `stride·(in−1) + output_padding + (k−1)·dilation + 1 − pads`.
fn conv_transpose(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0).or(cx.dtype(1)), None);
    let x = cx.dims(0)?;
    let sp = x.len().checked_sub(2)?;
    let w = cx.dims(1);
    let group = cx.attr_int("group").unwrap_or(1);
    let c = w.as_ref().and_then(|w| w.get(1)).map(|c| mul(c, &Dim::Known(group))).unwrap_or(Dim::Unknown);
    let mut out = vec![x[0].clone(), if group > 0 { c } else { Dim::Unknown }];
    let spatial = (|| -> Option<Vec<Dim>> {
        if let Some(os) = cx.attr_ints("output_shape") {
            let tail = os.get(os.len().checked_sub(sp)?..)?;
            return Some(tail.iter().map(|&d| checked(Some(d))).collect());
        }
        let k = kernel(cx, w.as_deref())?;
        let strides = cx.attr_ints("strides").unwrap_or_else(|| vec![1; sp]);
        let dil = cx.attr_ints("dilations").unwrap_or_else(|| vec![1; sp]);
        let pads = cx.attr_ints("pads").unwrap_or_else(|| vec![0; 2 * sp]);
        let opad = cx.attr_ints("output_padding").unwrap_or_else(|| vec![0; sp]);
        if [k.len(), strides.len(), dil.len(), opad.len()].iter().any(|&l| l != sp) || pads.len() != 2 * sp {
            return None;
        }
        if k.iter().chain(&strides).chain(&dil).any(|&v| v <= 0) {
            return None;
        }
        let auto = AutoPad::parse(cx.attr_str("auto_pad"))?;
        Some(
            (0..sp)
                .map(|i| {
                    let Dim::Known(xi) = x[2 + i] else { return Dim::Unknown };
                    let full = (|| {
                        let r = strides[i].checked_mul(xi.checked_sub(1)?)?;
                        let eff = (k[i] - 1).checked_mul(dil[i])?.checked_add(1)?;
                        r.checked_add(opad[i])?.checked_add(eff)
                    })();
                    match auto {
                        AutoPad::Same => checked(strides[i].checked_mul(xi)),
                        AutoPad::Valid => checked(full),
                        AutoPad::NotSet => {
                            checked(full.and_then(|f| f.checked_sub(pads[i])?.checked_sub(pads[sp + i])))
                        }
                    }
                })
                .collect(),
        )
    })();
    out.extend(spatial.unwrap_or_else(|| vec![Dim::Unknown; sp]));
    cx.set(0, None, Some(out));
    Some(())
}

/// MaxPool, AveragePool, LpPool: [N, C, out…]; MaxPool's optional second
/// output holds int64 indices of the same shape.
fn pool(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    if cx.num_outputs() > 1 {
        cx.set(1, Some(DataType::I64), None);
    }
    let x = cx.dims(0)?;
    if x.len() < 2 {
        return None;
    }
    let mut out = vec![x[0].clone(), x[1].clone()];
    let ceil = cx.attr_int("ceil_mode") == Some(1);
    match cx.attr_ints("kernel_shape").and_then(|k| spatial(cx, &x, &k, ceil)) {
        Some(s) => out.extend(s),
        None => out.extend(std::iter::repeat_n(Dim::Unknown, x.len() - 2)),
    }
    cx.set(0, None, Some(out.clone()));
    if cx.num_outputs() > 1 {
        cx.set(1, None, Some(out));
    }
    Some(())
}

/// Global pooling: [N, C, 1, …].
fn global_pool(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    if x.len() < 2 {
        return None;
    }
    let mut out = x[..2].to_vec();
    out.extend(std::iter::repeat_n(Dim::Known(1), x.len() - 2));
    cx.set(0, None, Some(out));
    Some(())
}

/// Window ops.
pub(super) const DEFS: &[OpDef] = &[
    OpDef::std("Conv", conv),
    OpDef::std("ConvInteger", conv),
    OpDef::std("QLinearConv", conv),
    OpDef::std("ConvTranspose", conv_transpose),
    OpDef::std("MaxPool", pool),
    OpDef::std("AveragePool", pool),
    OpDef::std("LpPool", pool),
    OpDef::std("GlobalAveragePool", global_pool),
    OpDef::std("GlobalMaxPool", global_pool),
    OpDef::std("GlobalLpPool", global_pool),
];
