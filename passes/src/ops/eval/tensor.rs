//! Data-movement evaluators: Gather, Concat, Slice, Reshape-likes, Expand,
//! Tile, Transpose, Range, ConstantOfShape, Shape, Size.

use qforge_ir::{AttrExt, DataType};

use super::super::dims::{norm_axes, norm_axis, slice_range};
use super::{Data, EvalCx, Skip, Val, broadcast_dims, broadcast_index, numel, round_to, strides, wrap};

/// For each coordinate of a tensor of dims `out` (row-major), `f(coord)`.
fn map_coords(out: &[usize], mut f: impl FnMut(&[usize]) -> usize) -> Vec<usize> {
    let total: usize = out.iter().product();
    let mut idx = Vec::with_capacity(total);
    let mut coord = vec![0usize; out.len()];
    for _ in 0..total {
        idx.push(f(&coord));
        for a in (0..coord.len()).rev() {
            coord[a] += 1;
            if coord[a] < out[a] {
                break;
            }
            coord[a] = 0;
        }
    }
    idx
}

fn udims(d: &[i64]) -> Result<Vec<usize>, Skip> {
    d.iter().map(|&x| usize::try_from(x).map_err(|_| Skip::Unsupported)).collect()
}

fn checked_numel(cx: &EvalCx<'_>, dims: &[i64]) -> Result<usize, Skip> {
    let n = numel(dims).ok_or(Skip::Unsupported)?;
    cx.budget(n)?;
    Ok(n)
}

/// Reshape, Flatten, Squeeze, Unsqueeze: the data unchanged under the dims
/// the shape rule inferred.
pub(crate) fn same_data(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let x = cx.input(0)?;
    let dims = cx.out_dims(0)?;
    if numel(&dims) != Some(x.len()) {
        return Err(Skip::Unsupported);
    }
    Ok(vec![Val { dtype: x.dtype, dims, data: x.data.clone() }])
}

/// `Shape` of a constant.
pub(crate) fn shape(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let x = cx.input(0)?;
    let r = x.dims.len() as i64;
    let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) } as usize;
    let (s, e) = (clamp(cx.node.attr_int("start").unwrap_or(0)), clamp(cx.node.attr_int("end").unwrap_or(r)));
    let d: Vec<i64> = if s < e { x.dims[s..e].to_vec() } else { Vec::new() };
    Ok(vec![Val { dtype: DataType::I64, dims: vec![d.len() as i64], data: Data::I(d) }])
}

/// `Size` of a constant.
pub(crate) fn size(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let x = cx.input(0)?;
    Ok(vec![Val { dtype: DataType::I64, dims: vec![], data: Data::I(vec![x.len() as i64]) }])
}

/// `Gather` along `axis`; negative indices count from the end, out-of-range
/// ones are refused.
pub(crate) fn gather(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let (x, ind) = (cx.input(0)?, cx.input(1)?);
    let axis = norm_axis(cx.node.attr_int("axis").unwrap_or(0), x.dims.len()).ok_or(Skip::Unsupported)?;
    let xd = udims(&x.dims)?;
    let len = xd[axis] as i64;
    let ids: Vec<usize> = ind
        .ints()?
        .iter()
        .map(|&i| {
            let i = if i < 0 { i + len } else { i };
            (0..len).contains(&i).then_some(i as usize)
        })
        .collect::<Option<_>>()
        .ok_or(Skip::Unsupported)?;
    let mut dims = x.dims[..axis].to_vec();
    dims.extend_from_slice(&ind.dims);
    dims.extend_from_slice(&x.dims[axis + 1..]);
    checked_numel(cx, &dims)?;
    let outer: usize = xd[..axis].iter().product();
    let inner: usize = xd[axis + 1..].iter().product();
    let mut idx = Vec::new();
    for o in 0..outer {
        for &i in &ids {
            let base = (o * xd[axis] + i) * inner;
            idx.extend(base..base + inner);
        }
    }
    Ok(vec![Val { dtype: x.dtype, dims, data: x.data.pick(idx.into_iter()) }])
}

/// `Concat` along `axis`.
pub(crate) fn concat(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let xs: Vec<&Val> = (0..cx.inputs.len()).map(|i| cx.input(i)).collect::<Result<_, _>>()?;
    let first = xs.first().ok_or(Skip::Unsupported)?;
    let r = first.dims.len();
    let axis = norm_axis(cx.node.attr_int("axis").ok_or(Skip::Unsupported)?, r).ok_or(Skip::Unsupported)?;
    let mut dims = first.dims.clone();
    dims[axis] = 0;
    for x in &xs {
        if x.dtype != first.dtype || x.dims.len() != r {
            return Err(Skip::Unsupported);
        }
        for a in (0..r).filter(|&a| a != axis) {
            if x.dims[a] != first.dims[a] {
                return Err(Skip::Unsupported);
            }
        }
        dims[axis] += x.dims[axis];
    }
    checked_numel(cx, &dims)?;
    let outer: usize = udims(&dims[..axis])?.iter().product();
    let mut data = first.data.empty_like();
    for o in 0..outer {
        for x in &xs {
            let block = x.len() / outer.max(1);
            if block > 0 {
                data.extend(&x.data.pick(o * block..(o + 1) * block))?;
            }
        }
    }
    Ok(vec![Val { dtype: first.dtype, dims, data }])
}

/// `Slice` (inputs from opset 10, attributes before).
pub(crate) fn slice(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let x = cx.input(0)?;
    let r = x.dims.len();
    type SliceArgs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>, Option<Vec<i64>>);
    let (starts, ends, axes, steps): SliceArgs = if cx.opset < 10 {
        let a = |n: &str| cx.node.attr(n).and_then(AttrExt::as_ints).map(<[i64]>::to_vec);
        (a("starts").ok_or(Skip::Unsupported)?, a("ends").ok_or(Skip::Unsupported)?, a("axes"), None)
    } else {
        let i = |k: usize| cx.inputs.get(k).and_then(Option::as_ref).map(|v| v.ints().map(<[i64]>::to_vec));
        (i(1).ok_or(Skip::Unsupported)??, i(2).ok_or(Skip::Unsupported)??, i(3).transpose()?, i(4).transpose()?)
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(Skip::Unsupported);
    }
    let axes = norm_axes(&axes, r).ok_or(Skip::Unsupported)?;
    let mut first: Vec<i64> = vec![0; r];
    let mut step: Vec<i64> = vec![1; r];
    let mut dims = x.dims.clone();
    for (k, &a) in axes.iter().enumerate() {
        let (s, n) = slice_range(x.dims[a], starts[k], ends[k], steps[k]).ok_or(Skip::Unsupported)?;
        first[a] = s;
        step[a] = steps[k];
        dims[a] = n;
    }
    checked_numel(cx, &dims)?;
    let st = strides(&udims(&x.dims)?);
    let idx = map_coords(&udims(&dims)?, |c| {
        c.iter().enumerate().map(|(a, &ci)| (first[a] + ci as i64 * step[a]) as usize * st[a]).sum()
    });
    Ok(vec![Val { dtype: x.dtype, dims, data: x.data.pick(idx.into_iter()) }])
}

/// `Expand` (bidirectional broadcast to the given shape).
pub(crate) fn expand(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let (x, shape) = (cx.input(0)?, cx.input(1)?);
    let dims = broadcast_dims(&[&x.dims, shape.ints()?]).ok_or(Skip::Unsupported)?;
    checked_numel(cx, &dims)?;
    let idx = broadcast_index(&x.dims, &dims).ok_or(Skip::Unsupported)?;
    Ok(vec![Val { dtype: x.dtype, dims, data: x.data.pick(idx.into_iter()) }])
}

/// `Tile`.
pub(crate) fn tile(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let (x, reps) = (cx.input(0)?, cx.input(1)?.ints()?);
    if reps.len() != x.dims.len() || reps.iter().any(|&r| r < 0) {
        return Err(Skip::Unsupported);
    }
    let dims: Vec<i64> =
        x.dims.iter().zip(reps).map(|(&d, &r)| d.checked_mul(r)).collect::<Option<_>>().ok_or(Skip::Unsupported)?;
    checked_numel(cx, &dims)?;
    let xd = udims(&x.dims)?;
    let st = strides(&xd);
    let idx = map_coords(&udims(&dims)?, |c| c.iter().enumerate().map(|(a, &ci)| (ci % xd[a]) * st[a]).sum());
    Ok(vec![Val { dtype: x.dtype, dims, data: x.data.pick(idx.into_iter()) }])
}

/// `Transpose`.
pub(crate) fn transpose(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let x = cx.input(0)?;
    let r = x.dims.len();
    let perm: Vec<usize> = match cx.node.attr_ints("perm") {
        Some(p) => norm_axes(p, r).filter(|p| p.len() == r).ok_or(Skip::Unsupported)?,
        None => (0..r).rev().collect(),
    };
    let dims: Vec<i64> = perm.iter().map(|&p| x.dims[p]).collect();
    let st = strides(&udims(&x.dims)?);
    let idx = map_coords(&udims(&dims)?, |c| c.iter().enumerate().map(|(a, &ci)| ci * st[perm[a]]).sum());
    Ok(vec![Val { dtype: x.dtype, dims, data: x.data.pick(idx.into_iter()) }])
}

/// `Range(start, limit, delta)`: `max(ceil((limit - start) / delta), 0)`
/// elements, each the previous plus delta (accumulated in the type, like
/// ONNX Runtime).
pub(crate) fn range(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let (s, l, d) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    if s.len() != 1 || l.len() != 1 || d.len() != 1 || s.dtype != l.dtype || s.dtype != d.dtype {
        return Err(Skip::Unsupported);
    }
    let t = s.dtype;
    let data = match (&s.data, &l.data, &d.data) {
        (Data::I(s), Data::I(l), Data::I(d)) => {
            let (s, l, d) = (i128::from(s[0]), i128::from(l[0]), i128::from(d[0]));
            if d == 0 {
                return Err(Skip::Unsupported);
            }
            let span = l - s;
            let n = (span / d + i128::from(span % d != 0 && (span < 0) == (d < 0))).max(0);
            let n = usize::try_from(n).map_err(|_| Skip::TooLarge)?;
            cx.budget(n)?;
            let out: Vec<i64> = (0..n as i128)
                .map(|i| s + i * d)
                .map(|v| i64::try_from(v).map(|v| wrap(t, v)))
                .collect::<Result<_, _>>()
                .map_err(|_| Skip::Unsupported)?;
            Data::I(out)
        }
        (Data::F(s), Data::F(l), Data::F(d)) => {
            let (s, l, d) = (s[0], l[0], d[0]);
            let q = round_to(t, round_to(t, l - s) / d).ceil();
            if !q.is_finite() || d == 0.0 {
                return Err(Skip::Unsupported);
            }
            let n = q.max(0.0);
            if n > cx.max_elements as f64 {
                return Err(Skip::TooLarge);
            }
            let mut out = Vec::with_capacity(n as usize);
            let mut v = s;
            for _ in 0..n as usize {
                out.push(v);
                v = round_to(t, v + d);
            }
            Data::F(out)
        }
        _ => return Err(Skip::Unsupported),
    };
    let n = match &data {
        Data::I(v) => v.len(),
        Data::F(v) => v.len(),
        Data::B(v) => v.len(),
    };
    Ok(vec![Val { dtype: t, dims: vec![n as i64], data }])
}

/// `ConstantOfShape`: the `value` attribute's single element (default f32 0)
/// repeated.
pub(crate) fn constant_of_shape(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let dims = cx.input(0)?.ints()?.to_vec();
    let n = checked_numel(cx, &dims)?;
    let fill = match cx.node.attr("value").and_then(AttrExt::as_tensor) {
        Some(t) => Val::from_tensor(&t)?,
        None => Val { dtype: DataType::F32, dims: vec![1], data: Data::F(vec![0.0]) },
    };
    if fill.len() != 1 {
        return Err(Skip::Unsupported);
    }
    Ok(vec![Val { dtype: fill.dtype, dims, data: fill.data.pick(std::iter::repeat_n(0, n)) }])
}
