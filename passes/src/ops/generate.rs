//! Ops that make a tensor from attributes or a shape: Constant,
//! ConstantOfShape, Range, EyeLike and the random generators.

use qforge_ir::{AttrExt, DataType, Dim};

use super::OpDef;
use super::eval;
use super::facts::{Cx, PVal, is_int};

fn constant(cx: &mut Cx<'_>) -> Option<()> {
    let v = cx.node().output(0)?;
    let t = cx.graph().constant(v)?;
    cx.set(0, t.dtype(), Some(t.dims().iter().map(|&d| Dim::Known(d)).collect()));
    if t.dims().len() <= 1 && t.numel() <= 64 && t.dtype().is_some_and(is_int) {
        cx.set_value(0, PVal::ints(t.dims().is_empty(), &t.to_i64_vec().ok()?));
    }
    Some(())
}

fn constant_of_shape(cx: &mut Cx<'_>) -> Option<()> {
    let dt = match cx.node().attr("value").and_then(AttrExt::as_tensor) {
        Some(t) => t.dtype(),
        None => Some(DataType::F32),
    };
    cx.set(0, dt, None);
    let dims = match cx.value(0) {
        Some(p) => p.elems,
        None => {
            let Some(Dim::Known(n)) = cx.dims(0)?.first().cloned() else { return None };
            vec![Dim::Unknown; usize::try_from(n).ok()?]
        }
    };
    cx.set(0, None, Some(dims));
    Some(())
}

/// Number of elements of `Range(start, limit, delta)`, computed in the type
/// (f32 rounding for f32) as ONNX Runtime does.
fn range_len(cx: &Cx<'_>, dt: DataType) -> Option<i64> {
    if dt.is_float() {
        let (s, l, d) = (cx.floats(0)?, cx.floats(1)?, cx.floats(2)?);
        let (s, l, d) = (*s.first()?, *l.first()?, *d.first()?);
        let r = |x: f64| if dt == DataType::F32 { f64::from(x as f32) } else { x };
        let q = r(r(l - s) / d).ceil();
        (d != 0.0 && q.is_finite() && q < 1e12).then(|| q.max(0.0) as i64)
    } else {
        let (s, l, d) = (*cx.ints(0)?.first()?, *cx.ints(1)?.first()?, *cx.ints(2)?.first()?);
        if d == 0 {
            return None;
        }
        let (s, l, d) = (i128::from(s), i128::from(l), i128::from(d));
        let span = l - s;
        let n = span / d + i128::from(span % d != 0 && (span < 0) == (d < 0));
        i64::try_from(n.max(0)).ok()
    }
}

fn range(cx: &mut Cx<'_>) -> Option<()> {
    let dt = cx.dtype(0).or(cx.dtype(1)).or(cx.dtype(2));
    cx.set(0, dt, Some(vec![Dim::Unknown]));
    let n = range_len(cx, dt?)?;
    cx.set(0, None, Some(vec![Dim::Known(n)]));
    if is_int(dt?) && n <= 64 {
        let (s, d) = (*cx.ints(0)?.first()?, *cx.ints(2)?.first()?);
        let v: Option<Vec<i64>> = (0..n).map(|i| s.checked_add(i.checked_mul(d)?)).collect();
        cx.set_value(0, PVal::ints(false, &v?));
    }
    Some(())
}

fn dtype_attr(cx: &Cx<'_>) -> Option<DataType> {
    cx.attr_int("dtype").and_then(|d| DataType::from_onnx(d as i32))
}

/// EyeLike, RandomNormalLike, RandomUniformLike, Bernoulli: input's shape,
/// `dtype` attribute or input's type.
fn like_input(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, dtype_attr(cx).or(cx.dtype(0)), cx.dims(0));
    Some(())
}

/// RandomNormal, RandomUniform: `shape` attribute, `dtype` (f32 default).
fn random(cx: &mut Cx<'_>) -> Option<()> {
    let dims = cx.attr_ints("shape").map(|s| s.into_iter().map(Dim::Known).collect());
    cx.set(0, dtype_attr(cx).or(Some(DataType::F32)), dims);
    Some(())
}

fn multinomial(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, dtype_attr(cx).or(Some(DataType::I32)), None);
    let x = cx.dims(0)?;
    let n = cx.attr_int("sample_size").unwrap_or(1);
    cx.set(0, None, Some(vec![x.first()?.clone(), Dim::Known(n)]));
    Some(())
}

/// Generators.
pub(super) const DEFS: &[OpDef] = &[
    OpDef::std("Constant", constant),
    OpDef::std("ConstantOfShape", constant_of_shape).with_eval(eval::constant_of_shape),
    OpDef::std("Range", range).with_eval(eval::range),
    OpDef::std("EyeLike", like_input),
    OpDef::std("RandomNormalLike", like_input),
    OpDef::std("RandomUniformLike", like_input),
    OpDef::std("Bernoulli", like_input),
    OpDef::std("RandomNormal", random),
    OpDef::std("RandomUniform", random),
    OpDef::std("Multinomial", multinomial),
];
