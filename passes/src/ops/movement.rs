//! Ops that rearrange a tensor without changing its elements' values:
//! Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Expand, Tile,
//! DepthToSpace, SpaceToDepth.

use qforge_ir::Dim;

use super::OpDef;
use super::dims::{MAX_DIM, broadcast, div_exact, mul, norm_axes, norm_axis, product};
use super::eval;
use super::facts::{Cx, PVal};

/// Splits dims into a known product and the list of symbols; `None` when a
/// dim is unknown or the product overflows.
fn factor(ds: &[Dim]) -> Option<(i64, Vec<&str>)> {
    let mut k: i64 = 1;
    let mut syms = Vec::new();
    for d in ds {
        match d {
            Dim::Known(x) => k = k.checked_mul(*x)?,
            Dim::Sym(s) => syms.push(s.as_str()),
            Dim::Unknown => return None,
        }
    }
    Some((k, syms))
}

/// The size a Reshape's -1 stands for: input elements over the others,
/// cancelling symbols that appear on both sides.
fn solve_minus_one(input: &[Dim], rest: &[Dim]) -> Dim {
    let (Some((ki, mut si)), Some((kr, sr))) = (factor(input), factor(rest)) else { return Dim::Unknown };
    for s in sr {
        match si.iter().position(|x| *x == s) {
            Some(p) => {
                si.remove(p);
            }
            None => return Dim::Unknown,
        }
    }
    if kr <= 0 || ki % kr != 0 {
        return Dim::Unknown;
    }
    match (si.as_slice(), ki / kr) {
        ([], q) => Dim::Known(q),
        ([s], 1) => Dim::Sym((*s).to_string()),
        _ => Dim::Unknown,
    }
}

/// Forwards a partial value through a reshape to rank 0 or 1.
fn forward_value(cx: &mut Cx<'_>, out_rank: usize) {
    if let Some(p) = cx.value(0)
        && out_rank <= 1
        && (out_rank == 1 || p.elems.len() == 1)
    {
        cx.set_value(0, PVal { scalar: out_rank == 0, elems: p.elems });
    }
}

fn reshape(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let target: Vec<Dim> = if cx.opset() < 5 {
        cx.attr_ints("shape")?.into_iter().map(Dim::Known).collect()
    } else {
        match cx.value(1) {
            Some(p) => p.elems,
            None => {
                // Rank is the target's length even when its values are not known.
                let Some(Dim::Known(n)) = cx.dims(1)?.first().cloned() else { return None };
                cx.set(0, None, Some(vec![Dim::Unknown; usize::try_from(n).ok()?]));
                return None;
            }
        }
    };
    let x = cx.dims(0);
    let allow_zero = cx.attr_int("allowzero") == Some(1);
    let mut out = Vec::with_capacity(target.len());
    let mut minus_one = None;
    for (i, t) in target.iter().enumerate() {
        out.push(match t {
            Dim::Known(0) if !allow_zero => x.as_ref().and_then(|x| x.get(i).cloned()).unwrap_or(Dim::Unknown),
            Dim::Known(-1) => {
                if minus_one.replace(i).is_some() {
                    return None;
                }
                Dim::Unknown
            }
            Dim::Known(k) if *k < -1 => return None,
            other => other.clone(),
        });
    }
    if let (Some(pos), Some(x)) = (minus_one, &x) {
        let rest: Vec<Dim> = out.iter().enumerate().filter(|(i, _)| *i != pos).map(|(_, d)| d.clone()).collect();
        out[pos] = solve_minus_one(x, &rest);
    }
    let r = out.len();
    cx.set(0, None, Some(out));
    forward_value(cx, r);
    Some(())
}

fn flatten(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let axis = norm_axis(cx.attr_int("axis").unwrap_or(1), x.len() + 1)?;
    cx.set(0, None, Some(vec![product(&x[..axis]), product(&x[axis..])]));
    Some(())
}

fn transpose(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let perm = match cx.attr_ints("perm") {
        Some(p) => norm_axes(&p, x.len()).filter(|p| p.len() == x.len())?,
        None => (0..x.len()).rev().collect(),
    };
    cx.set(0, None, Some(perm.iter().map(|&p| x[p].clone()).collect()));
    Some(())
}

/// Axes from the attribute (before opset 13) or input 1.
fn axes(cx: &Cx<'_>) -> Option<Option<Vec<i64>>> {
    if cx.opset() < 13 {
        return Some(cx.attr_ints("axes"));
    }
    if !cx.has(1) {
        return Some(None);
    }
    cx.ints(1).map(Some)
}

fn squeeze(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let out: Vec<Dim> = match axes(cx)? {
        Some(a) => {
            let ax = norm_axes(&a, x.len())?;
            if ax.iter().any(|&i| matches!(x[i], Dim::Known(k) if k != 1)) {
                return None;
            }
            x.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, d)| d.clone()).collect()
        }
        None if x.iter().all(|d| matches!(d, Dim::Known(_))) => x.into_iter().filter(|d| *d != Dim::Known(1)).collect(),
        None => return None,
    };
    let r = out.len();
    cx.set(0, None, Some(out));
    forward_value(cx, r);
    Some(())
}

fn unsqueeze(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let a = axes(cx)??;
    let rank = x.len() + a.len();
    let mut ax = norm_axes(&a, rank)?;
    ax.sort_unstable();
    let mut out = x;
    for i in ax {
        out.insert(i, Dim::Known(1));
    }
    let r = out.len();
    cx.set(0, None, Some(out));
    forward_value(cx, r);
    Some(())
}

fn expand(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let target = match cx.value(1) {
        Some(p) => p.elems,
        None => {
            let Some(Dim::Known(n)) = cx.dims(1)?.first().cloned() else { return None };
            vec![Dim::Unknown; usize::try_from(n).ok()?]
        }
    };
    if target.iter().any(|d| matches!(d, Dim::Known(k) if !(0..=MAX_DIM).contains(k))) {
        return None;
    }
    cx.set(0, None, Some(broadcast(&[x, target])?));
    Some(())
}

fn tile(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let reps = match cx.value(1) {
        Some(p) if p.elems.len() == x.len() => p.elems,
        _ => vec![Dim::Unknown; x.len()],
    };
    cx.set(0, None, Some(x.iter().zip(&reps).map(|(a, b)| mul(a, b)).collect()));
    Some(())
}

fn depth_space(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let b = cx.attr_int("blocksize").filter(|&b| b > 0)?;
    if x.len() != 4 {
        return None;
    }
    let bb = Dim::Known(b);
    let out = if cx.node().op_type() == "DepthToSpace" {
        vec![x[0].clone(), div_exact(&x[1], b.checked_mul(b)?), mul(&x[2], &bb), mul(&x[3], &bb)]
    } else {
        vec![x[0].clone(), mul(&x[1], &Dim::Known(b.checked_mul(b)?)), div_exact(&x[2], b), div_exact(&x[3], b)]
    };
    cx.set(0, None, Some(out));
    Some(())
}

/// Layout ops.
pub(super) const DEFS: &[OpDef] = &[
    OpDef::std("Reshape", reshape).with_eval(eval::same_data),
    OpDef::std("Flatten", flatten).with_eval(eval::same_data),
    OpDef::std("Squeeze", squeeze).with_eval(eval::same_data),
    OpDef::std("Unsqueeze", unsqueeze).with_eval(eval::same_data),
    OpDef::std("Transpose", transpose).with_eval(eval::transpose),
    OpDef::std("Expand", expand).with_eval(eval::expand),
    OpDef::std("Tile", tile).with_eval(eval::tile),
    OpDef::std("DepthToSpace", depth_space),
    OpDef::std("SpaceToDepth", depth_space),
];
