//! Elementwise ops: unary ops keep their input's type; binary and variadic
//! ops broadcast; comparisons give bool; Cast, Where, quantization and
//! normalisation ops. Integer arithmetic also carries partial values, which
//! is how `Shape → Gather → Add → Div` chains keep their meaning.

use qforge_ir::{DataType, Dim};

use super::OpDef;
use super::dims::{add, broadcast, mul, norm_axis};
use super::eval;
use super::facts::{Cx, PVal, is_int};

/// Output 0 has input 0's type.
fn same(cx: &mut Cx<'_>) -> Option<()> {
    let t = cx.ty(0)?;
    cx.set(0, t.dtype, t.shape.map(|s| s.0));
    Some(())
}

/// Identity also forwards the partial value.
fn identity(cx: &mut Cx<'_>) -> Option<()> {
    same(cx);
    let p = cx.value(0)?;
    cx.set_value(0, p);
    Some(())
}

/// Input 0's dims with a fixed element type.
fn same_shape_as(cx: &mut Cx<'_>, dtype: DataType) -> Option<()> {
    cx.set(0, Some(dtype), None);
    let d = cx.dims(0)?;
    cx.set(0, None, Some(d));
    Some(())
}

fn is_nan_like(cx: &mut Cx<'_>) -> Option<()> {
    same_shape_as(cx, DataType::Bool)
}

/// Broadcast of all given inputs.
fn broadcast_inputs(cx: &Cx<'_>) -> Option<Vec<Dim>> {
    let shapes: Option<Vec<Vec<Dim>>> = (0..cx.num_inputs()).filter(|&i| cx.has(i)).map(|i| cx.dims(i)).collect();
    broadcast(&shapes?)
}

/// Element `i` of a partial value broadcast to a longer one.
fn elem(p: &PVal, i: usize) -> Option<&Dim> {
    if p.elems.len() == 1 { p.elems.first() } else { p.elems.get(i) }
}

/// Elementwise arithmetic on partial values (equal lengths or one of length 1).
fn pval_binary(cx: &mut Cx<'_>, f: fn(&Dim, &Dim) -> Dim) -> Option<()> {
    if !cx.dtype(0).is_some_and(is_int) {
        return None;
    }
    let (a, b) = (cx.value(0)?, cx.value(1)?);
    let n = a.elems.len().max(b.elems.len());
    if (a.elems.len() != n && a.elems.len() != 1) || (b.elems.len() != n && b.elems.len() != 1) {
        return None;
    }
    let elems: Option<Vec<Dim>> = (0..n).map(|i| Some(f(elem(&a, i)?, elem(&b, i)?))).collect();
    cx.set_value(0, PVal { scalar: a.scalar && b.scalar, elems: elems? });
    Some(())
}

fn known2(f: fn(i64, i64) -> Option<i64>) -> impl Fn(&Dim, &Dim) -> Dim {
    move |a, b| match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => f(*x, *y).map(Dim::Known).unwrap_or(Dim::Unknown),
        _ => Dim::Unknown,
    }
}

fn arith(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(0).or_else(|| cx.dtype(1)), None);
    if let Some(d) = broadcast_inputs(cx) {
        cx.set(0, None, Some(d));
    }
    if cx.num_inputs() == 2 {
        match cx.node().op_type() {
            "Add" => pval_binary(cx, add),
            "Mul" => pval_binary(cx, mul),
            "Sub" => pval_binary(cx, |a, b| match (a, b) {
                (s, Dim::Known(0)) => s.clone(),
                _ => known2(i64::checked_sub)(a, b),
            }),
            "Div" => pval_binary(cx, |a, b| match (a, b) {
                (s @ Dim::Sym(_), Dim::Known(1)) => s.clone(),
                _ => known2(i64::checked_div)(a, b),
            }),
            "Max" => pval_binary(cx, |a, b| known2(|x, y| Some(x.max(y)))(a, b)),
            "Min" => pval_binary(cx, |a, b| known2(|x, y| Some(x.min(y)))(a, b)),
            _ => None,
        };
    }
    Some(())
}

fn logic(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, Some(DataType::Bool), None);
    let d = broadcast_inputs(cx)?;
    cx.set(0, None, Some(d));
    if cx.node().op_type() == "Equal" {
        pval_binary_bool(cx);
    }
    Some(())
}

/// `Equal` on two partial values is known where both elements are.
fn pval_binary_bool(cx: &mut Cx<'_>) -> Option<()> {
    let (a, b) = (cx.value(0)?, cx.value(1)?);
    if a.elems.len() != b.elems.len() {
        return None;
    }
    let elems = a
        .elems
        .iter()
        .zip(&b.elems)
        .map(|(x, y)| match (x, y) {
            (Dim::Known(p), Dim::Known(q)) => Dim::Known(i64::from(p == q)),
            (Dim::Sym(p), Dim::Sym(q)) if p == q => Dim::Known(1),
            _ => Dim::Unknown,
        })
        .collect();
    cx.set_value(0, PVal { scalar: a.scalar && b.scalar, elems });
    Some(())
}

fn where_(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(1).or_else(|| cx.dtype(2)), None);
    let d = broadcast_inputs(cx)?;
    cx.set(0, None, Some(d));
    // Partial values: the branch each known condition picks.
    let (c, x, y) = (cx.value(0)?, cx.value(1)?, cx.value(2)?);
    let n = c.elems.len().max(x.elems.len()).max(y.elems.len());
    let at = |p: &PVal, i: usize| if p.elems.len() == 1 { p.elems.first().cloned() } else { p.elems.get(i).cloned() };
    let elems: Option<Vec<Dim>> = (0..n)
        .map(|i| match at(&c, i)? {
            Dim::Known(0) => at(&y, i),
            Dim::Known(_) => at(&x, i),
            _ => Some(Dim::Unknown),
        })
        .collect();
    cx.set_value(0, PVal { scalar: c.scalar && x.scalar && y.scalar, elems: elems? });
    Some(())
}

fn cast(cx: &mut Cx<'_>) -> Option<()> {
    let to = cx.attr_int("to").and_then(|t| DataType::from_onnx(t as i32));
    cx.set(0, to, cx.dims(0));
    // Shape values stay what they are through a cast between the wide
    // integer types (a known value must fit; a symbolic dim is assumed to).
    let wide = |t: DataType| matches!(t, DataType::I64 | DataType::I32);
    if to.is_some_and(wide) && cx.dtype(0).is_some_and(wide) {
        let p = cx.value(0)?;
        let fits = p.elems.iter().all(|d| !matches!(d, Dim::Known(k) if i32::try_from(*k).is_err()));
        if to == Some(DataType::I64) || fits {
            cx.set_value(0, p);
        }
    }
    Some(())
}

fn cast_like(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, cx.dtype(1), cx.dims(0));
    Some(())
}

/// Dropout: output, then an optional bool mask of the same shape.
fn dropout(cx: &mut Cx<'_>) -> Option<()> {
    same(cx)?;
    cx.set(1, Some(DataType::Bool), cx.dims(0));
    Some(())
}

/// BatchNormalization: output like X; training outputs (running mean and
/// variance) like the scale.
fn batch_norm(cx: &mut Cx<'_>) -> Option<()> {
    same(cx)?;
    for slot in 1..cx.num_outputs() {
        cx.set(slot, cx.dtype(3).or(cx.dtype(0)), cx.dims(3));
    }
    Some(())
}

/// LayerNormalization: Y like X; Mean and InvStdDev keep the leading axes
/// and have 1 from `axis` on, in the `stash_type` (float by default).
fn layer_norm(cx: &mut Cx<'_>) -> Option<()> {
    same(cx)?;
    let d = cx.dims(0)?;
    let axis = norm_axis(cx.attr_int("axis").unwrap_or(-1), d.len())?;
    let stash = DataType::from_onnx(cx.attr_int("stash_type").unwrap_or(1) as i32);
    let st: Vec<Dim> = d.iter().enumerate().map(|(i, x)| if i < axis { x.clone() } else { Dim::Known(1) }).collect();
    for slot in 1..cx.num_outputs().min(3) {
        cx.set(slot, stash, Some(st.clone()));
    }
    Some(())
}

fn quantize(cx: &mut Cx<'_>) -> Option<()> {
    let dt = cx
        .attr_int("output_dtype")
        .filter(|&d| d != 0)
        .and_then(|d| DataType::from_onnx(d as i32))
        .or_else(|| cx.dtype(2))
        .or(Some(DataType::U8));
    cx.set(0, dt, cx.dims(0));
    Some(())
}

fn dequantize(cx: &mut Cx<'_>) -> Option<()> {
    let dt =
        cx.attr_int("output_dtype").filter(|&d| d != 0).and_then(|d| DataType::from_onnx(d as i32)).or(cx.dtype(1));
    cx.set(0, dt, cx.dims(0));
    Some(())
}

fn dynamic_quantize(cx: &mut Cx<'_>) -> Option<()> {
    cx.set(0, Some(DataType::U8), cx.dims(0));
    cx.set(1, Some(DataType::F32), Some(vec![]));
    cx.set(2, Some(DataType::U8), Some(vec![]));
    Some(())
}

const fn u(op: &'static str) -> OpDef {
    OpDef::std(op, same)
}

/// Elementwise ops.
pub(super) const DEFS: &[OpDef] = &[
    OpDef::std("Identity", identity).with_eval(eval::identity),
    u("Relu"),
    u("Sigmoid"),
    u("Tanh"),
    u("LeakyRelu"),
    u("HardSigmoid"),
    u("HardSwish"),
    u("Clip"),
    u("Exp"),
    u("Log"),
    u("Sqrt"),
    u("Erf"),
    u("Elu"),
    u("Selu"),
    u("Celu"),
    u("Gelu"),
    u("Mish"),
    u("Softplus"),
    u("Softsign"),
    u("Reciprocal"),
    u("Sin"),
    u("Cos"),
    u("Tan"),
    u("Asin"),
    u("Acos"),
    u("Atan"),
    u("Sinh"),
    u("Cosh"),
    u("Asinh"),
    u("Acosh"),
    u("Atanh"),
    u("Sign"),
    u("ThresholdedRelu"),
    u("Shrink"),
    u("BitwiseNot"),
    u("LRN"),
    u("InstanceNormalization"),
    u("MeanVarianceNormalization"),
    u("GroupNormalization"),
    u("LpNormalization"),
    u("Softmax"),
    u("LogSoftmax"),
    u("Hardmax"),
    u("CumSum"),
    u("Trilu"),
    u("ReverseSequence"),
    u("PRelu"),
    OpDef::std("Neg", same).with_eval(eval::neg),
    OpDef::std("Abs", same).with_eval(eval::abs),
    OpDef::std("Floor", same).with_eval(eval::floor),
    OpDef::std("Ceil", same).with_eval(eval::ceil),
    OpDef::std("Round", same).with_eval(eval::round),
    OpDef::std("Not", same).with_eval(eval::not),
    OpDef::std("IsNaN", is_nan_like),
    OpDef::std("IsInf", is_nan_like),
    OpDef::std("Add", arith).with_eval(eval::add),
    OpDef::std("Sub", arith).with_eval(eval::sub),
    OpDef::std("Mul", arith).with_eval(eval::mul),
    OpDef::std("Div", arith).with_eval(eval::div),
    OpDef::std("Max", arith).with_eval(eval::max),
    OpDef::std("Min", arith).with_eval(eval::min),
    OpDef::std("Mod", arith).with_eval(eval::modulo),
    OpDef::std("Pow", arith),
    OpDef::std("Sum", arith),
    OpDef::std("Mean", arith),
    OpDef::std("BitShift", arith),
    OpDef::std("BitwiseAnd", arith),
    OpDef::std("BitwiseOr", arith),
    OpDef::std("BitwiseXor", arith),
    OpDef::std("Equal", logic).with_eval(eval::equal),
    OpDef::std("Less", logic).with_eval(eval::less),
    OpDef::std("LessOrEqual", logic).with_eval(eval::less_eq),
    OpDef::std("Greater", logic).with_eval(eval::greater),
    OpDef::std("GreaterOrEqual", logic).with_eval(eval::greater_eq),
    OpDef::std("And", logic).with_eval(eval::and),
    OpDef::std("Or", logic).with_eval(eval::or),
    OpDef::std("Xor", logic).with_eval(eval::xor),
    OpDef::std("Where", where_).with_eval(eval::where_),
    OpDef::std("Cast", cast).with_eval(eval::cast),
    OpDef::std("CastLike", cast_like).with_eval(eval::cast_like),
    OpDef::std("Dropout", dropout),
    OpDef::std("BatchNormalization", batch_norm),
    OpDef::std("LayerNormalization", layer_norm),
    OpDef::std("QuantizeLinear", quantize),
    OpDef::std("DequantizeLinear", dequantize),
    OpDef::std("DynamicQuantizeLinear", dynamic_quantize),
];
