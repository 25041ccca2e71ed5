//! Ops that select, join or split along axes: Concat, Split, Slice, Gather
//! (and its Elements/ND forms), Scatter, Pad, Shape, Size, NonZero,
//! Compress. Shape, Gather, Concat and Slice carry partial values: they are
//! the in-graph shape arithmetic of PyTorch exports.

use qforge_ir::{DataType, Dim};

use super::OpDef;
use super::dims::{add, checked, norm_axes, norm_axis, product, slice_range, unify};
use super::eval;
use super::facts::{Cx, PVal};

fn concat(cx: &mut Cx<'_>) -> Option<()> {
    let n = cx.num_inputs();
    cx.set(0, (0..n).find_map(|i| cx.dtype(i)), None);
    let all: Vec<Option<Vec<Dim>>> = (0..n).map(|i| cx.dims(i)).collect();
    let rank = all.iter().flatten().map(Vec::len).next()?;
    if all.iter().flatten().any(|d| d.len() != rank) {
        return None;
    }
    let axis = norm_axis(cx.attr_int("axis")?, rank)?;
    let mut out = vec![Dim::Unknown; rank];
    for (a, o) in out.iter_mut().enumerate() {
        *o = if a == axis {
            all.iter().try_fold(Dim::Known(0), |acc, d| d.as_ref().map(|d| add(&acc, &d[a]))).unwrap_or(Dim::Unknown)
        } else {
            all.iter().flatten().map(|d| d[a].clone()).reduce(|x, y| unify(&x, &y)).unwrap_or(Dim::Unknown)
        };
    }
    cx.set(0, None, Some(out));
    if rank == 1 {
        let mut elems = Vec::new();
        for i in 0..n {
            elems.extend(cx.value(i)?.elems);
        }
        cx.set_value(0, PVal { scalar: false, elems });
    }
    Some(())
}

/// Output sizes of an unspecified split of `total` into `k` parts.
fn even_split(total: &Dim, k: usize, num_outputs_attr: bool) -> Vec<Dim> {
    let kk = k as i64;
    match total {
        Dim::Known(t) if k > 0 && t % kk == 0 => vec![Dim::Known(t / kk); k],
        Dim::Known(t) if k > 0 && num_outputs_attr => {
            // Opset 18: chunks of ceil(t / k), the last one smaller.
            let chunk = (t + kk - 1) / kk;
            let mut v = vec![Dim::Known(chunk); k];
            v[k - 1] = checked(Some(t - chunk * (kk - 1)));
            v
        }
        s @ Dim::Sym(_) if k == 1 => vec![s.clone()],
        _ => vec![Dim::Unknown; k],
    }
}

fn split(cx: &mut Cx<'_>) -> Option<()> {
    let k = cx.num_outputs();
    let dt = cx.dtype(0);
    for s in 0..k {
        cx.set(s, dt, None);
    }
    let x = cx.dims(0)?;
    let axis = norm_axis(cx.attr_int("axis").unwrap_or(0), x.len())?;
    let given = if cx.opset() < 13 {
        cx.attr_ints("split")
    } else if cx.has(1) {
        cx.ints(1)
    } else {
        None
    };
    let sizes: Vec<Dim> = match given {
        Some(p) if p.len() == k => p.iter().map(|&s| checked(Some(s))).collect(),
        Some(_) => return None,
        None if cx.has(1) && cx.opset() >= 13 => vec![Dim::Unknown; k],
        None => even_split(&x[axis], k, cx.attr_int("num_outputs").is_some()),
    };
    for (s, d) in sizes.iter().enumerate() {
        let mut o = x.clone();
        o[axis] = d.clone();
        cx.set(s, None, Some(o));
    }
    if let (Some(p), 1) = (cx.value(0), x.len()) {
        let mut at = 0usize;
        for (s, d) in sizes.iter().enumerate() {
            let Dim::Known(n) = d else { break };
            let part = p.elems.get(at..at + *n as usize)?.to_vec();
            at += *n as usize;
            cx.set_value(s, PVal { scalar: false, elems: part });
        }
    }
    Some(())
}

/// Slice's starts, ends, axes and steps: attributes before opset 10, inputs
/// after. `Err(())` when axes are given but not known (every axis may change).
#[allow(clippy::type_complexity)]
fn slice_params(cx: &Cx<'_>, rank: usize) -> Result<(Option<Vec<i64>>, Option<Vec<i64>>, Vec<usize>, Vec<i64>), ()> {
    let (starts, ends, axes, steps) = if cx.opset() < 10 {
        (cx.attr_ints("starts"), cx.attr_ints("ends"), cx.attr_ints("axes"), None)
    } else {
        let axes = if cx.has(3) { Some(cx.ints(3).ok_or(())?) } else { None };
        let steps = if cx.has(4) { Some(cx.ints(4).ok_or(())?) } else { None };
        (cx.ints(1), cx.ints(2), axes, steps)
    };
    let count = starts.as_ref().or(ends.as_ref()).map(Vec::len);
    let axes = match axes {
        Some(a) => norm_axes(&a, rank).ok_or(())?,
        None => (0..count.ok_or(())?).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; axes.len()]);
    if steps.len() != axes.len() || [&starts, &ends].iter().any(|v| v.as_ref().is_some_and(|v| v.len() != axes.len())) {
        return Err(());
    }
    Ok((starts, ends, axes, steps))
}

fn slice(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let Ok((starts, ends, axes, steps)) = slice_params(cx, x.len()) else {
        cx.set(0, None, Some(vec![Dim::Unknown; x.len()]));
        return None;
    };
    let mut out = x.clone();
    for (k, &a) in axes.iter().enumerate() {
        out[a] = match (&x[a], &starts, &ends) {
            (Dim::Known(len), Some(s), Some(e)) => {
                slice_range(*len, s[k], e[k], steps[k]).map(|r| Dim::Known(r.1)).unwrap_or(Dim::Unknown)
            }
            // The whole axis, forwards or backwards, keeps a symbol.
            (d @ Dim::Sym(_), Some(s), Some(e))
                if (steps[k] == 1 && s[k] == 0 && e[k] >= i64::MAX / 2)
                    || (steps[k] == -1 && s[k] == -1 && e[k] <= i64::MIN / 2) =>
            {
                d.clone()
            }
            _ => Dim::Unknown,
        };
    }
    cx.set(0, None, Some(out));
    if let (Some(p), 1, Some(s), Some(e)) = (cx.value(0), x.len(), &starts, &ends) {
        let (first, n) = slice_range(p.elems.len() as i64, s[0], e[0], steps[0])?;
        let elems = (0..n).map(|i| p.elems[(first + i * steps[0]) as usize].clone()).collect();
        cx.set_value(0, PVal { scalar: false, elems });
    }
    Some(())
}

fn gather(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let axis = norm_axis(cx.attr_int("axis").unwrap_or(0), x.len())?;
    let idx = cx
        .dims(1)
        .or_else(|| cx.value(1).map(|p| if p.scalar { vec![] } else { vec![Dim::Known(p.elems.len() as i64)] }))?;
    let scalar_idx = idx.is_empty();
    let mut out = x[..axis].to_vec();
    out.extend(idx);
    out.extend_from_slice(&x[axis + 1..]);
    cx.set(0, None, Some(out));
    if x.len() == 1 {
        let p = cx.value(0)?;
        let ids = cx.ints(1)?;
        let len = p.elems.len() as i64;
        let elems: Option<Vec<Dim>> = ids
            .iter()
            .map(|&i| {
                let i = if i < 0 { i + len } else { i };
                (0..len).contains(&i).then(|| p.elems[i as usize].clone())
            })
            .collect();
        cx.set_value(0, PVal { scalar: scalar_idx, elems: elems? });
    }
    Some(())
}

fn gather_elements(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), cx.dims(1));
    Some(())
}

fn gather_nd(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let (x, idx) = (cx.dims(0)?, cx.dims(1)?);
    let b = usize::try_from(cx.attr_int("batch_dims").unwrap_or(0)).ok()?;
    let Dim::Known(k) = idx.last()?.clone() else { return None };
    let mut out = idx[..idx.len() - 1].to_vec();
    out.extend_from_slice(x.get(b.checked_add(usize::try_from(k).ok()?)?..)?);
    cx.set(0, None, Some(out));
    Some(())
}

fn like_data(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), cx.dims(0));
    Some(())
}

fn pad(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let r = x.len();
    let pads = if cx.opset() < 11 { cx.attr_ints("pads").or_else(|| cx.attr_ints("paddings")) } else { cx.ints(1) };
    let axes = if cx.opset() >= 18 && cx.has(3) { norm_axes(&cx.ints(3)?, r) } else { Some((0..r).collect()) };
    let (Some(pads), Some(axes)) = (pads, axes) else {
        cx.set(0, None, Some(vec![Dim::Unknown; r]));
        return None;
    };
    if pads.len() != 2 * axes.len() {
        return None;
    }
    let mut out = x.clone();
    let n = axes.len();
    for (k, &a) in axes.iter().enumerate() {
        // A symbol plus zero padding stays the symbol.
        out[a] = add(&add(&x[a], &Dim::Known(pads[k])), &Dim::Known(pads[n + k]));
    }
    cx.set(0, None, Some(out));
    Some(())
}

fn shape(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, Some(DataType::I64), None);
    let x = cx.dims(0)?;
    let r = x.len() as i64;
    let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) } as usize;
    let (s, e) = (clamp(cx.attr_int("start").unwrap_or(0)), clamp(cx.attr_int("end").unwrap_or(r)));
    let elems = if s < e { x[s..e].to_vec() } else { Vec::new() };
    cx.set_value(0, PVal { scalar: false, elems });
    Some(())
}

fn size(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, Some(DataType::I64), Some(vec![]));
    let x = cx.dims(0)?;
    cx.set_value(0, PVal { scalar: true, elems: vec![product(&x)] });
    Some(())
}

fn non_zero(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, Some(DataType::I64), None);
    let r = cx.dims(0)?.len();
    cx.set(0, None, Some(vec![Dim::Known(r as i64), Dim::Unknown]));
    Some(())
}

fn compress(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let out = match cx.attr_int("axis") {
        Some(a) => {
            let mut x = cx.dims(0)?;
            let a = norm_axis(a, x.len())?;
            x[a] = Dim::Unknown;
            x
        }
        None => vec![Dim::Unknown],
    };
    cx.set(0, None, Some(out));
    Some(())
}

/// Selection ops.
pub(super) const DEFS: &[OpDef] = &[
    OpDef::std("Concat", concat).with_eval(eval::concat),
    OpDef::std("Split", split),
    OpDef::std("Slice", slice).with_eval(eval::slice),
    OpDef::std("Gather", gather).with_eval(eval::gather),
    OpDef::std("GatherElements", gather_elements),
    OpDef::std("GatherND", gather_nd),
    OpDef::std("Scatter", like_data),
    OpDef::std("ScatterElements", like_data),
    OpDef::std("ScatterND", like_data),
    OpDef::std("Pad", pad),
    OpDef::std("Shape", shape).with_eval(eval::shape),
    OpDef::std("Size", size).with_eval(eval::size),
    OpDef::std("NonZero", non_zero),
    OpDef::std("Compress", compress),
];
