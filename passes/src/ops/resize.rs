//! Resize and Upsample: output dims from `sizes` (possibly computed in-graph,
//! read as partial values) or `floor(input × scale)` in f32 arithmetic, as
//! both ONNX shape inference and ONNX Runtime compute it.

use qforge_ir::{AttrExt, Dim};

use super::OpDef;
use super::dims::{checked, norm_axes};
use super::facts::Cx;

/// `floor(x · s)` in f32 (a symbol survives a scale of exactly 1).
fn scaled(x: &Dim, s: f64) -> Dim {
    match x {
        Dim::Known(k) => {
            let p = (*k as f32 * s as f32).floor();
            if (0.0..1e12).contains(&p) { checked(Some(p as i64)) } else { Dim::Unknown }
        }
        d @ Dim::Sym(_) if s == 1.0 => d.clone(),
        _ => Dim::Unknown,
    }
}

fn resize(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let r = x.len();
    let upsample = cx.node().op_type() == "Upsample";
    // Which input holds what, by op and opset.
    let (scales_slot, sizes_slot) = if upsample || cx.opset() < 11 { (Some(1), None) } else { (Some(2), Some(3)) };
    let attr_scales =
        if upsample { cx.node().attr("scales").and_then(AttrExt::as_floats).map(|f| f.to_vec()) } else { None };
    let axes = match cx.attr_ints("axes") {
        Some(a) if !upsample => norm_axes(&a, r)?,
        _ => (0..r).collect(),
    };
    let mut out = x.clone();
    let unknown_axes = |out: &mut Vec<Dim>| {
        for &a in &axes {
            out[a] = Dim::Unknown;
        }
    };
    let sizes = sizes_slot.filter(|&s| cx.has(s)).map(|s| cx.value(s));
    let has_scales = scales_slot.is_some_and(|s| cx.has(s)) || attr_scales.is_some();
    let scales: Option<Vec<f64>> = match attr_scales {
        Some(a) => Some(a.into_iter().map(f64::from).collect()),
        None => scales_slot.filter(|&s| cx.has(s)).and_then(|s| cx.floats(s)),
    };
    let policy = cx.attr_str("keep_aspect_ratio_policy").unwrap_or("stretch");
    // tf_crop_and_resize scales the roi's extent, not the input's; without
    // an roi input the roi is the whole axis (as ONNX Runtime reads it), so
    // the output dims are those of any other mode.
    let crop = cx.attr_str("coordinate_transformation_mode") == Some("tf_crop_and_resize")
        && !(cx.node().op_type() == "Resize" && cx.opset() >= 11 && !cx.has(1));
    match (sizes, scales) {
        (Some(Some(p)), _) if p.elems.len() == axes.len() => {
            if policy == "stretch" {
                for (k, &a) in axes.iter().enumerate() {
                    out[a] = p.elems[k].clone();
                }
            } else {
                unknown_axes(&mut out);
            }
        }
        (Some(Some(_)), _) => return None,
        (Some(None), _) => unknown_axes(&mut out),
        (None, Some(s)) if s.len() == axes.len() && !crop => {
            for (k, &a) in axes.iter().enumerate() {
                out[a] = scaled(&x[a], s[k]);
            }
        }
        // An empty scales input (sizes omitted too) is invalid; anything
        // else we cannot read leaves the resized axes unknown.
        (None, Some(s)) if s.is_empty() => return None,
        _ if has_scales => unknown_axes(&mut out),
        _ => return None,
    }
    cx.set(0, None, Some(out));
    Some(())
}

/// Resizing ops.
pub(super) const DEFS: &[OpDef] = &[OpDef::std("Resize", resize), OpDef::std("Upsample", resize)];
