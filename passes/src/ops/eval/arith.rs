//! Elementwise evaluators: arithmetic, comparisons, logic, Where, Cast.

use qforge_ir::DataType;

use super::{Data, EvalCx, Skip, Val, broadcast_dims, broadcast_index, kind, numel, round_to, wrap};

/// Binary arithmetic operators with ONNX Runtime's semantics.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Mod { fmod: bool },
}

fn signed(d: DataType) -> bool {
    matches!(d, DataType::I8 | DataType::I16 | DataType::I32 | DataType::I64)
}

/// Integer result of `a op b` in type `d`: signed overflow and division by
/// zero (undefined in C++) are refused; unsigned results wrap.
fn int_op(op: Bin, d: DataType, a: i64, b: i64) -> Option<i64> {
    let r = match op {
        Bin::Add => a.checked_add(b)?,
        Bin::Sub => a.checked_sub(b)?,
        Bin::Mul => a.checked_mul(b)?,
        Bin::Div => a.checked_div(b)?,
        Bin::Max => a.max(b),
        Bin::Min => a.min(b),
        Bin::Mod { fmod } => {
            let r = a.checked_rem(b)?;
            if !fmod && r != 0 && ((r < 0) != (b < 0)) { r + b } else { r }
        }
    };
    let w = wrap(d, r);
    if signed(d) && w != r { None } else { Some(w) }
}

/// Float result of `a op b` in type `d`, `None` for a NaN result (its bit
/// pattern is the platform's choice) or NaN operands of Max/Min.
fn float_op(op: Bin, d: DataType, a: f64, b: f64) -> Option<f64> {
    let r = match op {
        Bin::Add => a + b,
        Bin::Sub => a - b,
        Bin::Mul => a * b,
        Bin::Div => a / b,
        Bin::Max if !a.is_nan() && !b.is_nan() => a.max(b),
        Bin::Min if !a.is_nan() && !b.is_nan() => a.min(b),
        Bin::Mod { fmod: true } => a % b,
        _ => return None,
    };
    let r = round_to(d, r);
    (!r.is_nan()).then_some(r)
}

/// Broadcasts `a` and `b`, returning the output dims and the read indices.
/// The broadcast output shape and, per output element, the index into each operand.
type Pairing = (Vec<i64>, Vec<usize>, Vec<usize>);

fn pair(cx: &EvalCx<'_>, a: &Val, b: &Val) -> Result<Pairing, Skip> {
    let out = broadcast_dims(&[&a.dims, &b.dims]).ok_or(Skip::Unsupported)?;
    cx.budget(numel(&out).ok_or(Skip::Unsupported)?)?;
    let ia = broadcast_index(&a.dims, &out).ok_or(Skip::Unsupported)?;
    let ib = broadcast_index(&b.dims, &out).ok_or(Skip::Unsupported)?;
    Ok((out, ia, ib))
}

fn apply(cx: &EvalCx<'_>, op: Bin, a: &Val, b: &Val) -> Result<Val, Skip> {
    if a.dtype != b.dtype {
        return Err(Skip::Unsupported);
    }
    let d = a.dtype;
    let (dims, ia, ib) = pair(cx, a, b)?;
    let data = match (&a.data, &b.data) {
        (Data::I(x), Data::I(y)) => Data::I(
            ia.iter()
                .zip(&ib)
                .map(|(&i, &j)| int_op(op, d, x[i], y[j]))
                .collect::<Option<_>>()
                .ok_or(Skip::Unsupported)?,
        ),
        (Data::F(x), Data::F(y)) => Data::F(
            ia.iter()
                .zip(&ib)
                .map(|(&i, &j)| float_op(op, d, x[i], y[j]))
                .collect::<Option<_>>()
                .ok_or(Skip::Unsupported)?,
        ),
        _ => return Err(Skip::Unsupported),
    };
    Ok(Val { dtype: d, dims, data })
}

/// Applies `op` left to right over every input (Sum/Max/Min are variadic).
fn fold_inputs(cx: &EvalCx<'_>, op: Bin) -> Result<Vec<Val>, Skip> {
    let mut acc = cx.input(0)?.clone();
    for i in 1..cx.inputs.len() {
        acc = apply(cx, op, &acc, cx.input(i)?)?;
    }
    Ok(vec![acc])
}

/// `Add`.
pub(crate) fn add(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    fold_inputs(cx, Bin::Add)
}
/// `Sub`.
pub(crate) fn sub(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    fold_inputs(cx, Bin::Sub)
}
/// `Mul`.
pub(crate) fn mul(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    fold_inputs(cx, Bin::Mul)
}
/// `Div` (integers truncate toward zero, as ONNX Runtime does).
pub(crate) fn div(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    fold_inputs(cx, Bin::Div)
}
/// `Max`.
pub(crate) fn max(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    fold_inputs(cx, Bin::Max)
}
/// `Min`.
pub(crate) fn min(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    fold_inputs(cx, Bin::Min)
}
/// `Mod` (`fmod=0`: result has the divisor's sign; floats need `fmod=1`).
pub(crate) fn modulo(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let fmod = cx.node.attr_int("fmod").unwrap_or(0) == 1;
    fold_inputs(cx, Bin::Mod { fmod })
}

/// Comparisons and logic: two inputs, a boolean result.
fn compare(
    cx: &EvalCx<'_>,
    f: fn(std::cmp::Ordering) -> bool,
    logic: Option<fn(bool, bool) -> bool>,
) -> Result<Vec<Val>, Skip> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    if a.dtype != b.dtype {
        return Err(Skip::Unsupported);
    }
    let (dims, ia, ib) = pair(cx, a, b)?;
    let it = ia.iter().zip(&ib);
    let out: Vec<bool> = match (&a.data, &b.data, logic) {
        (Data::B(x), Data::B(y), Some(l)) => it.map(|(&i, &j)| l(x[i], y[j])).collect(),
        (_, _, Some(_)) => return Err(Skip::Unsupported),
        (Data::I(x), Data::I(y), None) => it.map(|(&i, &j)| f(x[i].cmp(&y[j]))).collect(),
        (Data::B(x), Data::B(y), None) => it.map(|(&i, &j)| f(x[i].cmp(&y[j]))).collect(),
        (Data::F(x), Data::F(y), None) => it.map(|(&i, &j)| x[i].partial_cmp(&y[j]).map(f).unwrap_or(false)).collect(),
        _ => return Err(Skip::Unsupported),
    };
    Ok(vec![Val { dtype: DataType::Bool, dims, data: Data::B(out) }])
}

/// `Equal`.
pub(crate) fn equal(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    compare(cx, |o| o.is_eq(), None)
}
/// `Less`.
pub(crate) fn less(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    compare(cx, |o| o.is_lt(), None)
}
/// `LessOrEqual`.
pub(crate) fn less_eq(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    compare(cx, |o| o.is_le(), None)
}
/// `Greater`.
pub(crate) fn greater(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    compare(cx, |o| o.is_gt(), None)
}
/// `GreaterOrEqual`.
pub(crate) fn greater_eq(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    compare(cx, |o| o.is_ge(), None)
}
/// `And`.
pub(crate) fn and(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    compare(cx, |_| false, Some(|a, b| a && b))
}
/// `Or`.
pub(crate) fn or(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    compare(cx, |_| false, Some(|a, b| a || b))
}
/// `Xor`.
pub(crate) fn xor(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    compare(cx, |_| false, Some(|a, b| a != b))
}

/// Unary ops: an integer form (`None` = refuse) and a float form.
fn unary(cx: &EvalCx<'_>, fi: Option<fn(i64) -> Option<i64>>, ff: fn(f64) -> f64) -> Result<Vec<Val>, Skip> {
    let x = cx.input(0)?;
    let d = x.dtype;
    let data = match (&x.data, fi) {
        (Data::I(v), Some(fi)) => Data::I(
            v.iter()
                .map(|&a| fi(a).filter(|&r| !signed(d) || wrap(d, r) == r).map(|r| wrap(d, r)))
                .collect::<Option<_>>()
                .ok_or(Skip::Unsupported)?,
        ),
        (Data::F(v), _) => {
            let out: Vec<f64> = v.iter().map(|&a| round_to(d, ff(a))).collect();
            if out.iter().any(|r| r.is_nan()) {
                return Err(Skip::Unsupported);
            }
            Data::F(out)
        }
        _ => return Err(Skip::Unsupported),
    };
    Ok(vec![Val { dtype: d, dims: x.dims.clone(), data }])
}

/// `Neg`.
pub(crate) fn neg(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    unary(cx, Some(|a| a.checked_neg()), |a| -a)
}
/// `Abs`.
pub(crate) fn abs(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    unary(cx, Some(|a| a.checked_abs()), f64::abs)
}
/// `Floor` (exact on floats).
pub(crate) fn floor(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    unary(cx, None, f64::floor)
}
/// `Ceil` (exact on floats).
pub(crate) fn ceil(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    unary(cx, None, f64::ceil)
}
/// `Round` (half to even, as `std::nearbyint`).
pub(crate) fn round(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    unary(cx, None, f64::round_ties_even)
}

/// `Not`.
pub(crate) fn not(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let x = cx.input(0)?;
    match &x.data {
        Data::B(v) => {
            Ok(vec![Val { dtype: DataType::Bool, dims: x.dims.clone(), data: Data::B(v.iter().map(|b| !b).collect()) }])
        }
        _ => Err(Skip::Unsupported),
    }
}

/// `Where(cond, x, y)`.
pub(crate) fn where_(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let (c, x, y) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let Data::B(cv) = &c.data else { return Err(Skip::Unsupported) };
    if x.dtype != y.dtype {
        return Err(Skip::Unsupported);
    }
    let dims = broadcast_dims(&[&c.dims, &x.dims, &y.dims]).ok_or(Skip::Unsupported)?;
    cx.budget(numel(&dims).ok_or(Skip::Unsupported)?)?;
    let ic = broadcast_index(&c.dims, &dims).ok_or(Skip::Unsupported)?;
    let ix = broadcast_index(&x.dims, &dims).ok_or(Skip::Unsupported)?;
    let iy = broadcast_index(&y.dims, &dims).ok_or(Skip::Unsupported)?;
    let pick = |k: usize| -> (bool, usize) { if cv[ic[k]] { (true, ix[k]) } else { (false, iy[k]) } };
    let data = match (&x.data, &y.data) {
        (Data::I(a), Data::I(b)) => {
            Data::I((0..ic.len()).map(&pick).map(|(t, i)| if t { a[i] } else { b[i] }).collect())
        }
        (Data::F(a), Data::F(b)) => {
            Data::F((0..ic.len()).map(&pick).map(|(t, i)| if t { a[i] } else { b[i] }).collect())
        }
        (Data::B(a), Data::B(b)) => {
            Data::B((0..ic.len()).map(&pick).map(|(t, i)| if t { a[i] } else { b[i] }).collect())
        }
        _ => return Err(Skip::Unsupported),
    };
    Ok(vec![Val { dtype: x.dtype, dims, data }])
}

/// Converts `x` to `to` as C++ `static_cast` does; `Unsupported` where that
/// is undefined (NaN or out-of-range float → integer) or for other types.
pub(crate) fn cast_val(x: &Val, to: DataType) -> Result<Val, Skip> {
    let k = kind(to).ok_or(Skip::Unsupported)?;
    let data = match (&x.data, k) {
        (Data::I(v), b'i') => Data::I(v.iter().map(|&a| wrap(to, a)).collect()),
        (Data::I(v), b'f') => {
            Data::F(v.iter().map(|&a| if to == DataType::F32 { f64::from(a as f32) } else { a as f64 }).collect())
        }
        (Data::I(v), _) => Data::B(v.iter().map(|&a| a != 0).collect()),
        (Data::F(v), b'i') => Data::I(
            v.iter()
                .map(|&a| {
                    let t = a.trunc();
                    // In range of the target type (checked through i64, which holds them all).
                    let ok = t.is_finite()
                        && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&t)
                        && wrap(to, t as i64) == t as i64;
                    ok.then_some(t as i64)
                })
                .collect::<Option<_>>()
                .ok_or(Skip::Unsupported)?,
        ),
        (Data::F(v), b'f') => Data::F(v.iter().map(|&a| round_to(to, a)).collect()),
        (Data::F(v), _) => Data::B(v.iter().map(|&a| a != 0.0).collect()),
        (Data::B(v), b'i') => Data::I(v.iter().map(|&a| i64::from(a)).collect()),
        (Data::B(v), b'f') => Data::F(v.iter().map(|&a| f64::from(u8::from(a))).collect()),
        (Data::B(v), _) => Data::B(v.clone()),
    };
    Ok(Val { dtype: to, dims: x.dims.clone(), data })
}

/// `Cast`.
pub(crate) fn cast(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    let to = cx.node.attr_int("to").and_then(|t| DataType::from_onnx(t as i32)).ok_or(Skip::Unsupported)?;
    Ok(vec![cast_val(cx.input(0)?, to)?])
}

/// `CastLike`.
pub(crate) fn cast_like(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    Ok(vec![cast_val(cx.input(0)?, cx.input(1)?.dtype)?])
}

/// `Identity`.
pub(crate) fn identity(cx: &EvalCx<'_>) -> Result<Vec<Val>, Skip> {
    Ok(vec![cx.input(0)?.clone()])
}
