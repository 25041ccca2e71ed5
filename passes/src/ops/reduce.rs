//! Reductions and contractions: Reduce*, ArgMax/ArgMin, TopK, MatMul,
//! Gemm, Einsum, NonMaxSuppression.

use std::collections::HashMap;

use qforge_ir::{DataType, Dim};

use super::OpDef;
use super::dims::{broadcast, norm_axes, norm_axis};
use super::facts::Cx;

/// True when this Reduce op takes its axes as input 1 at the node's opset
/// (ReduceSum from opset 13, the others from 18).
fn axes_as_input(cx: &Cx<'_>) -> bool {
    if cx.node().op_type() == "ReduceSum" { cx.opset() >= 13 } else { cx.opset() >= 18 }
}

fn reduce(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let x = cx.dims(0)?;
    let keep = cx.attr_int("keepdims").unwrap_or(1) != 0;
    let axes = if axes_as_input(cx) {
        if cx.has(1) {
            match cx.ints(1) {
                Some(a) => Some(a),
                None => {
                    if keep {
                        cx.set(0, None, Some(vec![Dim::Unknown; x.len()]));
                    }
                    return None;
                }
            }
        } else {
            None
        }
    } else {
        cx.attr_ints("axes")
    };
    let axes: Vec<usize> = match axes.filter(|a| !a.is_empty()) {
        Some(a) => norm_axes(&a, x.len())?,
        None if cx.attr_int("noop_with_empty_axes") == Some(1) => {
            cx.set(0, None, Some(x));
            return Some(());
        }
        None => (0..x.len()).collect(),
    };
    let out: Vec<Dim> = x
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keep) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::Known(1)),
            (true, false) => None,
        })
        .collect();
    cx.set(0, None, Some(out));
    Some(())
}

fn arg_reduce(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, Some(DataType::I64), None);
    let mut x = cx.dims(0)?;
    let a = norm_axis(cx.attr_int("axis").unwrap_or(0), x.len())?;
    if cx.attr_int("keepdims").unwrap_or(1) != 0 {
        x[a] = Dim::Known(1);
    } else {
        x.remove(a);
    }
    cx.set(0, None, Some(x));
    Some(())
}

fn top_k(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    cx.set(1, Some(DataType::I64), None);
    let mut x = cx.dims(0)?;
    let a = norm_axis(cx.attr_int("axis").unwrap_or(-1), x.len())?;
    let k = if cx.opset() < 10 { cx.attr_int("k") } else { cx.ints(1).and_then(|v| v.first().copied()) };
    x[a] = match k {
        Some(k) if k >= 0 => Dim::Known(k),
        _ => Dim::Unknown,
    };
    cx.set(0, None, Some(x.clone()));
    cx.set(1, None, Some(x));
    Some(())
}

fn matmul(cx: &mut Cx<'_>) -> Option<()> {
    let dt = match cx.node().op_type() {
        "MatMulInteger" => Some(DataType::I32),
        "QLinearMatMul" => cx.dtype(7),
        _ => cx.dtype(0).or(cx.dtype(1)),
    };
    cx.set(0, dt, None);
    let b_slot = if cx.node().op_type() == "QLinearMatMul" { 3 } else { 1 };
    let (a, b) = (cx.dims(0)?, cx.dims(b_slot)?);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a2 = if a.len() == 1 { vec![Dim::Known(1), a[0].clone()] } else { a.clone() };
    let b2 = if b.len() == 1 { vec![b[0].clone(), Dim::Known(1)] } else { b.clone() };
    let mut out = broadcast(&[a2[..a2.len() - 2].to_vec(), b2[..b2.len() - 2].to_vec()])?;
    if a.len() > 1 {
        out.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        out.push(b2[b2.len() - 1].clone());
    }
    cx.set(0, None, Some(out));
    Some(())
}

fn gemm(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0).or(cx.dtype(1)), None);
    let (a, b) = (cx.dims(0)?, cx.dims(1)?);
    if a.len() != 2 || b.len() != 2 {
        return None;
    }
    let m = if cx.attr_int("transA") == Some(1) { a[1].clone() } else { a[0].clone() };
    let n = if cx.attr_int("transB") == Some(1) { b[0].clone() } else { b[1].clone() };
    cx.set(0, None, Some(vec![m, n]));
    Some(())
}

/// Einsum: letters name axes; `...` broadcasts; without `->` the output is
/// the ellipsis then the letters used once, in alphabetical order.
fn einsum(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0), None);
    let eq: String = cx.attr_str("equation")?.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != cx.num_inputs() {
        return None;
    }
    let mut letters: HashMap<char, Dim> = HashMap::new();
    let mut count: HashMap<char, usize> = HashMap::new();
    let mut ellipsis: Vec<Vec<Dim>> = Vec::new();
    for (i, term) in terms.iter().enumerate() {
        let dims = cx.dims(i)?;
        let (before, after) = match term.split_once("...") {
            Some((b, a)) => (b, Some(a)),
            None => (*term, None),
        };
        let nb = before.chars().count();
        let na = after.map(|a| a.chars().count()).unwrap_or(0);
        let ell = match after {
            Some(_) => dims.len().checked_sub(nb + na)?,
            None if dims.len() == nb => 0,
            None => return None,
        };
        if after.is_some() {
            ellipsis.push(dims[nb..nb + ell].to_vec());
        }
        let named = before.chars().zip(&dims[..nb]).chain(after.unwrap_or("").chars().zip(&dims[nb + ell..]));
        for (c, d) in named {
            if !c.is_ascii_alphabetic() {
                return None;
            }
            *count.entry(c).or_default() += 1;
            let e = letters.entry(c).or_insert(Dim::Known(1));
            *e = broadcast(&[vec![e.clone()], vec![d.clone()]])?.remove(0);
        }
    }
    let ell = broadcast(&ellipsis).unwrap_or_default();
    let mut out = Vec::new();
    match rhs {
        Some(r) => {
            let (b, a) = match r.split_once("...") {
                Some((b, a)) => (b.to_string(), Some(a.to_string())),
                None => (r, None),
            };
            for c in b.chars() {
                out.push(letters.get(&c)?.clone());
            }
            if let Some(a) = a {
                out.extend(ell);
                for c in a.chars() {
                    out.push(letters.get(&c)?.clone());
                }
            }
        }
        None => {
            out.extend(ell);
            let mut once: Vec<char> = count.iter().filter(|(_, n)| **n == 1).map(|(c, _)| *c).collect();
            once.sort_unstable();
            out.extend(once.into_iter().map(|c| letters[&c].clone()));
        }
    }
    cx.set(0, None, Some(out));
    Some(())
}

fn nms(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, Some(DataType::I64), Some(vec![Dim::Unknown, Dim::Known(3)]));
    Some(())
}

const fn r(op: &'static str) -> OpDef {
    OpDef::std(op, reduce)
}

/// Reductions and contractions.
pub(super) const DEFS: &[OpDef] = &[
    r("ReduceSum"),
    r("ReduceMean"),
    r("ReduceMax"),
    r("ReduceMin"),
    r("ReduceProd"),
    r("ReduceL1"),
    r("ReduceL2"),
    r("ReduceLogSum"),
    r("ReduceLogSumExp"),
    r("ReduceSumSquare"),
    OpDef::std("ArgMax", arg_reduce),
    OpDef::std("ArgMin", arg_reduce),
    OpDef::std("TopK", top_k),
    OpDef::std("MatMul", matmul),
    OpDef::std("MatMulInteger", matmul),
    OpDef::std("QLinearMatMul", matmul),
    OpDef::std("Gemm", gemm),
    OpDef::std("Einsum", einsum),
    OpDef::std("NonMaxSuppression", nms),
];
