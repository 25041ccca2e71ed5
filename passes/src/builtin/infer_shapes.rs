//! values of unknown type => value_info with the dtype and shape implied by their producer (common CNN ops).
//!
//! Rewrites need shapes: the channel count of a Resize input, the rank of a
//! Conv output. ONNX exports often carry no value_info, so this pass derives
//! them op by op in graph order. It covers the ops detectors use; an op it
//! does not know leaves its outputs unknown (never guessed), and a declared
//! shape is only replaced by a strictly more precise one.

use serde::{Deserialize, Serialize};

use qforge_ir::{DataType, Dim, Graph, NodeId, Shape, TypeInfo, ValueId};

use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `infer-shapes` (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferShapes {}

impl PassOptions for InferShapes {}

register_pass!(
    "infer-shapes",
    InferShapes,
    "values of unknown type => value_info with dtype and shape from their producer"
);

impl Pass for InferShapes {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let mut unknown_ops: Vec<String> = Vec::new();
        for n in g.node_ids() {
            let Some(types) = infer(g, n) else {
                let op = g.node(n).op_type().to_string();
                if g.node(n).outputs().iter().flatten().any(|&v| g.type_info(v).is_none()) && !unknown_ops.contains(&op)
                {
                    unknown_ops.push(op);
                }
                continue;
            };
            let outs: Vec<Option<ValueId>> = g.node(n).outputs().to_vec();
            for (v, t) in outs.into_iter().zip(types) {
                let (Some(v), Some(t)) = (v, t) else { continue };
                if better(&t, g.type_info(v).as_ref()) {
                    g.set_type(v, &t);
                    r.count("typed", 1);
                }
            }
        }
        if !unknown_ops.is_empty() {
            unknown_ops.sort();
            r.note(format!("no shape rule for: {}", unknown_ops.join(", ")));
        }
        Ok(r)
    }
}

fn score(t: &TypeInfo) -> usize {
    let dims = t.shape.as_ref().map(|s| 1 + s.0.iter().filter(|d| matches!(d, Dim::Known(_))).count()).unwrap_or(0);
    usize::from(t.dtype.is_some()) + dims
}

/// True when `new` says strictly more than `old` without contradicting it.
fn better(new: &TypeInfo, old: Option<&TypeInfo>) -> bool {
    let Some(old) = old else { return true };
    if let (Some(a), Some(b)) = (new.dtype, old.dtype)
        && a != b
    {
        return false;
    }
    if let (Some(a), Some(b)) = (&new.shape, &old.shape) {
        if a.rank() != b.rank() {
            return false;
        }
        for (x, y) in a.0.iter().zip(&b.0) {
            if let (Dim::Known(p), Dim::Known(q)) = (x, y)
                && p != q
            {
                return false;
            }
        }
    }
    score(new) > score(old)
}

fn ti(g: &Graph, v: Option<ValueId>) -> Option<TypeInfo> {
    v.and_then(|v| g.type_info(v))
}

fn dims(g: &Graph, v: Option<ValueId>) -> Option<Vec<Dim>> {
    ti(g, v).and_then(|t| t.shape).map(|s| s.0)
}

fn const_ints(g: &Graph, v: Option<ValueId>) -> Option<Vec<i64>> {
    v.and_then(|v| g.constant(v)).and_then(|t| t.to_i64_vec().ok())
}

fn const_floats(g: &Graph, v: Option<ValueId>) -> Option<Vec<f32>> {
    v.and_then(|v| g.constant(v)).and_then(|t| t.to_f32_vec().ok())
}

fn known(d: &Dim) -> Option<i64> {
    if let Dim::Known(k) = d { Some(*k) } else { None }
}

fn map_known(d: &Dim, f: impl Fn(i64) -> i64) -> Dim {
    match d {
        Dim::Known(k) => Dim::Known(f(*k)),
        _ => Dim::Unknown,
    }
}

fn ty(dtype: Option<DataType>, dims: Option<Vec<Dim>>) -> Option<TypeInfo> {
    Some(TypeInfo { dtype, shape: dims.map(Shape) })
}

fn broadcast(shapes: &[Vec<Dim>]) -> Option<Vec<Dim>> {
    let rank = shapes.iter().map(Vec::len).max()?;
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut d = Dim::Known(1);
        for s in shapes {
            let Some(x) = (i + s.len()).checked_sub(rank).map(|j| &s[j]) else { continue };
            d = match (&d, x) {
                (Dim::Known(1), x) => x.clone(),
                (_, Dim::Known(1)) => d,
                (a, b) if a == b => d,
                (Dim::Known(_), Dim::Known(_)) => return None,
                _ => Dim::Unknown,
            };
        }
        out.push(d);
    }
    Some(out)
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// Output spatial size of a convolution-like window.
fn window(g: &Graph, n: NodeId, input: &[Dim], kernel: &[i64], ceil: bool) -> Option<Vec<Dim>> {
    let node = g.node(n);
    let sp = input.len().checked_sub(2)?;
    if kernel.len() != sp {
        return None;
    }
    let strides = node.attr_ints("strides").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; sp]);
    let dil = node.attr_ints("dilations").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; sp]);
    let pads = node.attr_ints("pads").map(<[i64]>::to_vec).unwrap_or_else(|| vec![0; 2 * sp]);
    let auto = node.attr_str("auto_pad").unwrap_or("NOTSET");
    if strides.len() != sp || dil.len() != sp || pads.len() != 2 * sp {
        return None;
    }
    let mut out = Vec::with_capacity(sp);
    for i in 0..sp {
        let d = match (&input[2 + i], auto) {
            (Dim::Known(x), "SAME_UPPER" | "SAME_LOWER") => Dim::Known((x + strides[i] - 1) / strides[i]),
            (Dim::Known(x), "VALID") => Dim::Known((x - ((kernel[i] - 1) * dil[i] + 1)) / strides[i] + 1),
            (Dim::Known(x), _) => {
                let span = x + pads[i] + pads[sp + i] - ((kernel[i] - 1) * dil[i] + 1);
                let q = if ceil { (span + strides[i] - 1) / strides[i] } else { span / strides[i] };
                Dim::Known(q + 1)
            }
            _ => Dim::Unknown,
        };
        out.push(d);
    }
    Some(out)
}

/// Types of `n`'s outputs, `None` for an op without a rule.
fn infer(g: &Graph, n: NodeId) -> Option<Vec<Option<TypeInfo>>> {
    let node = g.node(n);
    if !matches!(node.domain(), "" | "ai.onnx") {
        return None;
    }
    let x = node.input(0);
    let x_t = ti(g, x);
    let x_dt = x_t.as_ref().and_then(|t| t.dtype);
    let x_dims = dims(g, x);
    let one = |t: Option<TypeInfo>| Some(vec![t]);
    match node.op_type() {
        "Relu"
        | "Sigmoid"
        | "Tanh"
        | "LeakyRelu"
        | "HardSigmoid"
        | "HardSwish"
        | "Clip"
        | "Exp"
        | "Log"
        | "Abs"
        | "Neg"
        | "Sqrt"
        | "Erf"
        | "Floor"
        | "Ceil"
        | "Round"
        | "Identity"
        | "Softmax"
        | "LogSoftmax"
        | "Elu"
        | "Selu"
        | "Gelu"
        | "Mish"
        | "Softplus"
        | "Reciprocal"
        | "LRN"
        | "InstanceNormalization"
        | "Sin"
        | "Cos"
        | "Not"
        | "Sign" => one(x_t),
        "Dropout" | "BatchNormalization" | "LayerNormalization" => {
            let mut v = vec![x_t];
            v.resize(node.outputs().len(), None);
            Some(v)
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" | "PRelu" | "Mod" => {
            let shapes: Option<Vec<Vec<Dim>>> = node.inputs().iter().map(|&v| dims(g, v)).collect();
            one(ty(x_dt, shapes.and_then(|s| broadcast(&s))))
        }
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            let shapes: Option<Vec<Vec<Dim>>> = node.inputs().iter().map(|&v| dims(g, v)).collect();
            one(ty(Some(DataType::Bool), shapes.and_then(|s| broadcast(&s))))
        }
        "Where" => {
            let shapes: Option<Vec<Vec<Dim>>> = node.inputs().iter().map(|&v| dims(g, v)).collect();
            one(ty(ti(g, node.input(1)).and_then(|t| t.dtype), shapes.and_then(|s| broadcast(&s))))
        }
        "Cast" => one(ty(node.attr_int("to").and_then(|t| DataType::from_onnx(t as i32)), x_dims)),
        "QuantizeLinear" => {
            let dt = node
                .attr_int("output_dtype")
                .filter(|&d| d != 0)
                .and_then(|d| DataType::from_onnx(d as i32))
                .or_else(|| ti(g, node.input(2)).and_then(|t| t.dtype))
                .or(Some(DataType::U8));
            one(ty(dt, x_dims))
        }
        "DequantizeLinear" => one(ty(ti(g, node.input(1)).and_then(|t| t.dtype), x_dims)),
        "Conv" => {
            let w = dims(g, node.input(1))?;
            let xd = x_dims?;
            let kernel: Vec<i64> = match node.attr_ints("kernel_shape") {
                Some(k) => k.to_vec(),
                None => w.get(2..)?.iter().map(known).collect::<Option<_>>()?,
            };
            let mut out = vec![xd[0].clone(), w[0].clone()];
            out.extend(window(g, n, &xd, &kernel, false)?);
            one(ty(x_dt, Some(out)))
        }
        "ConvTranspose" => {
            let w = dims(g, node.input(1))?;
            let xd = x_dims?;
            let sp = xd.len().checked_sub(2)?;
            let group = node.attr_int("group").unwrap_or(1);
            let cout = map_known(&w[1], |c| c * group);
            let kernel: Vec<i64> = match node.attr_ints("kernel_shape") {
                Some(k) => k.to_vec(),
                None => w.get(2..)?.iter().map(known).collect::<Option<_>>()?,
            };
            let mut out = vec![xd[0].clone(), cout];
            if let Some(os) = node.attr_ints("output_shape") {
                out.extend(os.iter().rev().take(sp).rev().map(|&d| Dim::Known(d)));
            } else {
                if node.attr_str("auto_pad").is_some_and(|a| a != "NOTSET") {
                    return None;
                }
                let strides = node.attr_ints("strides").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; sp]);
                let dil = node.attr_ints("dilations").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; sp]);
                let pads = node.attr_ints("pads").map(<[i64]>::to_vec).unwrap_or_else(|| vec![0; 2 * sp]);
                let opad = node.attr_ints("output_padding").map(<[i64]>::to_vec).unwrap_or_else(|| vec![0; sp]);
                if strides.len() != sp
                    || dil.len() != sp
                    || pads.len() != 2 * sp
                    || opad.len() != sp
                    || kernel.len() != sp
                {
                    return None;
                }
                for i in 0..sp {
                    out.push(map_known(&xd[2 + i], |x| {
                        strides[i] * (x - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - pads[i] - pads[sp + i]
                    }));
                }
            }
            one(ty(x_dt, Some(out)))
        }
        "MaxPool" | "AveragePool" | "LpPool" => {
            let xd = x_dims?;
            let kernel = node.attr_ints("kernel_shape")?.to_vec();
            let mut out = vec![xd[0].clone(), xd[1].clone()];
            out.extend(window(g, n, &xd, &kernel, node.attr_int("ceil_mode") == Some(1))?);
            let mut v = vec![ty(x_dt, Some(out.clone()))];
            if node.outputs().len() > 1 {
                v.push(ty(Some(DataType::I64), Some(out)));
            }
            Some(v)
        }
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => {
            let xd = x_dims?;
            let mut out = vec![xd[0].clone(), xd.get(1)?.clone()];
            out.extend(std::iter::repeat_n(Dim::Known(1), xd.len().saturating_sub(2)));
            one(ty(x_dt, Some(out)))
        }
        "Concat" => {
            let all: Option<Vec<Vec<Dim>>> = node.inputs().iter().map(|&v| dims(g, v)).collect();
            let all = all?;
            let rank = all.first()?.len();
            let axis = norm_axis(node.attr_int("axis")?, rank)?;
            let mut out = all[0].clone();
            out[axis] = all.iter().try_fold(Dim::Known(0), |acc, s| match (acc, s.get(axis)?) {
                (Dim::Known(a), Dim::Known(b)) => Some(Dim::Known(a + b)),
                _ => Some(Dim::Unknown),
            })?;
            for (i, d) in out.iter_mut().enumerate() {
                if i != axis && matches!(d, Dim::Unknown) {
                    *d = all
                        .iter()
                        .find_map(|s| s.get(i).filter(|x| matches!(x, Dim::Known(_))).cloned())
                        .unwrap_or(Dim::Unknown);
                }
            }
            one(ty(x_dt, Some(out)))
        }
        "Resize" | "Upsample" => {
            let xd = x_dims?;
            let opset = g.opset("").unwrap_or(13);
            let (scales, sizes) = if node.op_type() == "Upsample" {
                (
                    node.attr("scales")
                        .and_then(|a| qforge_ir::AttrExt::as_floats(a).map(<[f32]>::to_vec))
                        .or_else(|| const_floats(g, node.input(1))),
                    None,
                )
            } else if opset < 11 {
                (const_floats(g, node.input(1)), None)
            } else {
                (const_floats(g, node.input(2)).filter(|s| !s.is_empty()), const_ints(g, node.input(3)))
            };
            if node.attr("axes").is_some() {
                return None;
            }
            let out: Vec<Dim> = if let Some(sz) = sizes.filter(|s| s.len() == xd.len()) {
                sz.into_iter().map(Dim::Known).collect()
            } else {
                let sc = scales.filter(|s| s.len() == xd.len())?;
                xd.iter().zip(sc).map(|(d, s)| map_known(d, |x| (x as f64 * f64::from(s)).floor() as i64)).collect()
            };
            one(ty(x_dt, Some(out)))
        }
        "Reshape" => {
            let target = const_ints(g, node.input(1))?;
            let allow_zero = node.attr_int("allowzero") == Some(1);
            let mut out: Vec<Dim> = Vec::with_capacity(target.len());
            for (i, &t) in target.iter().enumerate() {
                out.push(match t {
                    0 if !allow_zero => x_dims.as_ref().and_then(|x| x.get(i).cloned()).unwrap_or(Dim::Unknown),
                    -1 => Dim::Unknown,
                    k => Dim::Known(k),
                });
            }
            if let Some(pos) = target.iter().position(|&t| t == -1) {
                let total: Option<i64> = x_dims.as_ref().and_then(|x| x.iter().map(known).product());
                let rest: Option<i64> =
                    out.iter().enumerate().filter(|(i, _)| *i != pos).map(|(_, d)| known(d)).product();
                if let (Some(t), Some(r)) = (total, rest)
                    && r > 0
                {
                    out[pos] = Dim::Known(t / r);
                }
            }
            one(ty(x_dt, Some(out)))
        }
        "Transpose" => {
            let xd = x_dims?;
            let perm: Vec<i64> =
                node.attr_ints("perm").map(<[i64]>::to_vec).unwrap_or_else(|| (0..xd.len() as i64).rev().collect());
            let out: Option<Vec<Dim>> = perm.iter().map(|&p| xd.get(p as usize).cloned()).collect();
            one(ty(x_dt, out))
        }
        "Flatten" => {
            let xd = x_dims?;
            let axis = norm_axis(node.attr_int("axis").unwrap_or(1), xd.len() + 1)?;
            let prod = |s: &[Dim]| -> Dim {
                s.iter().map(known).product::<Option<i64>>().map(Dim::Known).unwrap_or(Dim::Unknown)
            };
            one(ty(x_dt, Some(vec![prod(&xd[..axis]), prod(&xd[axis..])])))
        }
        "Gemm" => {
            let a = x_dims?;
            let b = dims(g, node.input(1))?;
            if a.len() != 2 || b.len() != 2 {
                return None;
            }
            let m = if node.attr_int("transA") == Some(1) { a[1].clone() } else { a[0].clone() };
            let nn = if node.attr_int("transB") == Some(1) { b[0].clone() } else { b[1].clone() };
            one(ty(x_dt, Some(vec![m, nn])))
        }
        "MatMul" => {
            let a = x_dims?;
            let b = dims(g, node.input(1))?;
            if a.len() < 2 || b.len() < 2 {
                return None;
            }
            let batch = broadcast(&[a[..a.len() - 2].to_vec(), b[..b.len() - 2].to_vec()])?;
            let mut out = batch;
            out.push(a[a.len() - 2].clone());
            out.push(b[b.len() - 1].clone());
            one(ty(x_dt, Some(out)))
        }
        "Split" => {
            let xd = x_dims?;
            let axis = norm_axis(node.attr_int("axis").unwrap_or(0), xd.len())?;
            let k = node.outputs().len();
            let parts: Vec<i64> =
                match node.attr_ints("split").map(<[i64]>::to_vec).or_else(|| const_ints(g, node.input(1))) {
                    Some(p) => p,
                    None => {
                        let total = known(&xd[axis])?;
                        if total % k as i64 != 0 {
                            return None;
                        }
                        vec![total / k as i64; k]
                    }
                };
            if parts.len() != k {
                return None;
            }
            Some(
                parts
                    .into_iter()
                    .map(|p| {
                        let mut d = xd.clone();
                        d[axis] = Dim::Known(p);
                        ty(x_dt, Some(d))
                    })
                    .collect(),
            )
        }
        "Unsqueeze" => {
            let xd = x_dims?;
            let axes = node.attr_ints("axes").map(<[i64]>::to_vec).or_else(|| const_ints(g, node.input(1)))?;
            let rank = xd.len() + axes.len();
            let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect::<Option<_>>()?;
            ax.sort();
            let mut out = xd;
            for a in ax {
                if a > out.len() {
                    return None;
                }
                out.insert(a, Dim::Known(1));
            }
            one(ty(x_dt, Some(out)))
        }
        "Squeeze" => {
            let xd = x_dims?;
            let axes = node.attr_ints("axes").map(<[i64]>::to_vec).or_else(|| const_ints(g, node.input(1)));
            let out: Vec<Dim> = match axes {
                Some(a) => {
                    let ax: Vec<usize> = a.iter().map(|&a| norm_axis(a, xd.len())).collect::<Option<_>>()?;
                    xd.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, d)| d.clone()).collect()
                }
                None if xd.iter().all(|d| matches!(d, Dim::Known(_))) => {
                    xd.into_iter().filter(|d| *d != Dim::Known(1)).collect()
                }
                None => return None,
            };
            one(ty(x_dt, Some(out)))
        }
        "Shape" => {
            let rank = x_dims?.len() as i64;
            let start = node.attr_int("start").unwrap_or(0);
            let end = node.attr_int("end").unwrap_or(rank);
            let clamp = |v: i64| if v < 0 { (v + rank).max(0) } else { v.min(rank) };
            one(ty(Some(DataType::I64), Some(vec![Dim::Known((clamp(end) - clamp(start)).max(0))])))
        }
        "Gather" => {
            let xd = x_dims?;
            let idx = dims(g, node.input(1))?;
            let axis = norm_axis(node.attr_int("axis").unwrap_or(0), xd.len())?;
            let mut out = xd[..axis].to_vec();
            out.extend(idx);
            out.extend_from_slice(&xd[axis + 1..]);
            one(ty(x_dt, Some(out)))
        }
        "Slice" => {
            let xd = x_dims?;
            let starts = const_ints(g, node.input(1))?;
            let ends = const_ints(g, node.input(2))?;
            let axes = match node.input(3) {
                Some(_) => const_ints(g, node.input(3))?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match node.input(4) {
                Some(_) => const_ints(g, node.input(4))?,
                None => vec![1; starts.len()],
            };
            let mut out = xd.clone();
            for (i, &start) in starts.iter().enumerate() {
                let a = norm_axis(*axes.get(i)?, xd.len())?;
                let step = *steps.get(i)?;
                out[a] = match &xd[a] {
                    Dim::Known(len) if step != 0 => {
                        let len = *len;
                        let clampi = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
                        let norm = |v: i64| if v < 0 { v + len } else { v };
                        let (s, e) = if step > 0 {
                            (clampi(norm(start), 0, len), clampi(norm(*ends.get(i)?), 0, len))
                        } else {
                            (clampi(norm(start), -1, len - 1), clampi(norm(*ends.get(i)?), -1, len - 1))
                        };
                        let span = if step > 0 { e - s } else { s - e };
                        Dim::Known(if span <= 0 { 0 } else { (span + step.abs() - 1) / step.abs() })
                    }
                    _ => Dim::Unknown,
                };
            }
            one(ty(x_dt, Some(out)))
        }
        "Constant" => {
            let t = node.output(0).and_then(|v| g.constant(v))?;
            one(Some(TypeInfo { dtype: t.dtype(), shape: Some(Shape::known(t.dims())) }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy_rules() {
        let k = |v: &[i64]| v.iter().map(|&d| Dim::Known(d)).collect::<Vec<_>>();
        assert_eq!(
            broadcast(&[k(&[1, 3, 1]), k(&[4, 1, 5])]),
            Some(k(&[1, 3, 5]).into_iter().enumerate().map(|(i, d)| if i == 0 { Dim::Known(4) } else { d }).collect())
        );
        assert_eq!(broadcast(&[k(&[2, 3]), k(&[4, 3])]), None);
        assert_eq!(
            broadcast(&[k(&[3]), vec![Dim::Sym("n".into()), Dim::Known(3)]]),
            Some(vec![Dim::Sym("n".into()), Dim::Known(3)])
        );
    }
}
