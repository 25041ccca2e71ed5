//! A `QuantizeLinear → DequantizeLinear` pair on f32 activations computed
//! as one vectorised pass, after tract's optimizer.
//!
//! Why: every quantized activation of a Q/DQ model goes through tract's
//! `QuantizeLinearI8` (a scalar loop per element: multiply, a bit-twiddled
//! round, an integer clamp, into a fresh int8 tensor) and then
//! `DequantizeLinearF32` (a second pass back to f32). On a 640×640 YOLOv8s
//! the pair took about 30 % of a Q/DQ run, which is what `skip-sensitive`
//! and `qforge agree` spend their time on. [`QuantDequant`] computes the
//! same f32 values in one loop that the compiler vectorises, in place when
//! tract hands it the only reference to its input.
//!
//! Why it is exact: with `inv` the reciprocal tract's `QuantizeLinearI8`
//! multiplies by, zero point `z` and code range `[lo, hi]`, tract computes
//! `q = clamp(round_even(x·inv) + z, lo, hi)` and then `(q − z)·scale`. With
//! the same zero point on both sides that is `clamp(round_even(x·inv), lo −
//! z, hi − z)·scale`; rounding commutes with a clamp to integer bounds (it is
//! monotone and fixes integers), so the clamp can come first, and then
//! `(c + 1.5·2²³) − 1.5·2²³` rounds `c` (|c| ≤ 255) half to even in the
//! default rounding mode, giving `+0.0` where tract's integer path gives
//! `+0.0`. A NaN input becomes 0, as tract's `NaN as i32 = 0` does. The
//! values differ only where tract's `i32` addition would overflow
//! (|x·inv| ≥ 2³¹, i.e. infinities with a non-zero zero point).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

/// `DequantizeLinear(QuantizeLinear(x))` on f32, in one pass.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantDequant {
    /// What `QuantizeLinear` multiplies by (tract's reciprocal of the scale).
    inv: f32,
    /// The dequantization scale.
    scale: f32,
    /// The lowest code minus the zero point.
    lo: f32,
    /// The highest code minus the zero point.
    hi: f32,
}

impl Eq for QuantDequant {}

/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude below 2²²
/// to an integer, half to even.
const ROUNDER: f32 = 12_582_912.0;

impl QuantDequant {
    #[inline(always)]
    fn value(&self, x: f32) -> f32 {
        let t = x * self.inv;
        let c = t.max(self.lo).min(self.hi);
        let r = (c + ROUNDER) - ROUNDER;
        if t.is_nan() { 0.0 } else { r * self.scale }
    }

    #[inline(always)]
    fn each(&self, xs: &[f32], ys: &mut [f32]) {
        for (x, y) in xs.iter().zip(ys) {
            *y = self.value(*x);
        }
    }

    #[inline(always)]
    fn each_in_place(&self, xs: &mut [f32]) {
        for x in xs {
            *x = self.value(*x);
        }
    }

    /// The same loops compiled for AVX2 (8 lanes instead of SSE2's 4): the
    /// same IEEE operations lane by lane, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn each_avx2(&self, xs: &[f32], ys: &mut [f32]) {
        self.each(xs, ys)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn each_in_place_avx2(&self, xs: &mut [f32]) {
        self.each_in_place(xs)
    }

    fn apply(&self, xs: &[f32], ys: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.each_avx2(xs, ys) };
        }
        self.each(xs, ys)
    }

    fn apply_in_place(&self, xs: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.each_in_place_avx2(xs) };
        }
        self.each_in_place(xs)
    }
}

impl Op for QuantDequant {
    fn name(&self) -> StaticName {
        "QforgeQuantDequant".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("1/scale: {} scale: {} codes - zero point: [{}, {}]", self.inv, self.scale, self.lo, self.hi)])
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for QuantDequant {
    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let Some(x) = inputs.pop() else { bail!("QforgeQuantDequant takes one input") };
        if x.is_exclusive() {
            let mut t = x.into_tensor();
            self.apply_in_place(t.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
            return Ok(tvec!(t.into_tvalue()));
        }
        let mut y = unsafe { Tensor::uninitialized::<f32>(x.shape())? };
        self.apply(x.try_as_plain_ram()?.as_slice::<f32>()?, y.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(y.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for QuantDequant {
    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::datum_type().fact(inputs[0].shape.clone())))
    }
}

/// Ops that only change the layout of a tensor, whatever its type: tract
/// places them between a quantize and its dequantize (moving axes through
/// element-wise ops), and an element-wise op commutes with them.
fn is_layout(n: &TypedNode) -> bool {
    n.inputs.len() == 1 && (n.op_is::<IntoShape>() || n.op_is::<AxisOp>())
}

/// A pair found: the quantize's f32 input, the layout ops between the two
/// (from the quantize on), and the fused op.
struct Pair {
    x: OutletId,
    layout: Vec<usize>,
    op: QuantDequant,
}

/// The pair ending at `dq` when it dequantizes the output of an f32
/// `QuantizeLinear` with the same zero point, through layout ops only.
fn pair(model: &TypedModel, dq: &TypedNode) -> Option<Pair> {
    let d = dq.op_as::<DequantizeLinearF32>()?;
    let mut layout = Vec::new();
    let mut q = model.node(dq.inputs.first()?.node);
    while is_layout(q) && layout.len() < 8 {
        layout.push(q.id);
        q = model.node(q.inputs[0].node);
    }
    layout.reverse();
    let mini = &q.op_as::<ElementWiseOp>()?.0;
    let (inv, z, lo, hi) = if let Some(op) = mini.downcast_ref::<QuantizeLinearI8>() {
        (op.scale, op.zero_point as i32, i8::MIN as i32, i8::MAX as i32)
    } else if let Some(op) = mini.downcast_ref::<QuantizeLinearU8>() {
        (op.scale, op.zero_point as i32, u8::MIN as i32, u8::MAX as i32)
    } else {
        return None;
    };
    let x = *q.inputs.first()?;
    let f32_in = model.outlet_fact(x).ok()?.datum_type == f32::datum_type();
    (f32_in && z == d.zero_point).then(|| Pair {
        x,
        layout,
        op: QuantDequant { inv, scale: d.scale, lo: (lo - z) as f32, hi: (hi - z) as f32 },
    })
}

/// Replaces every f32 `QuantizeLinear → DequantizeLinear` pair of the
/// optimized `model` (layout ops between them applied to the f32 input
/// instead) by one [`QuantDequant`]; a quantize read by nothing else goes
/// away.
pub(crate) fn fuse(model: &mut TypedModel) -> TractResult<Fused> {
    let found: Vec<(usize, Pair)> = model.nodes().iter().filter_map(|n| pair(model, n).map(|p| (n.id, p))).collect();
    for (id, p) in &found {
        let name = model.node(*id).name.clone();
        let mut patch = TypedModelPatch::default();
        let mut wire = patch.tap_model(model, p.x)?;
        for (k, &l) in p.layout.iter().enumerate() {
            let op = model.node(l).op.clone();
            wire = patch.wire_node(format!("{name}.qforge_layout{k}"), op, &[wire])?[0];
        }
        let y = patch.wire_node(format!("{name}.qforge_qdq"), p.op.clone(), &[wire])?;
        patch.shunt_outside(model, OutletId::new(*id, 0), y[0])?;
        patch.obliterate(*id)?;
        patch.apply(model)?;
    }
    if !found.is_empty() {
        *model = std::mem::take(model).into_compact()?;
    }
    Ok(Fused { pairs: found.len(), through_layout: found.iter().filter(|(_, p)| !p.layout.is_empty()).count() })
}

/// What [`fuse`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Fused {
    /// Pairs replaced.
    pub pairs: usize,
    /// Of which with layout ops between the two.
    pub through_layout: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::quant::quantize_linear_f32_i8;

    /// The fused value is tract's two-op value, bit for bit, on values
    /// around every rounding tie and beyond both ends of the code range.
    #[test]
    fn one_pass_equals_tracts_quantize_then_dequantize() {
        for (scale, z) in [(0.0173f32, 0i32), (0.05, 3), (1.0 / 127.0, 0), (0.31, -7)] {
            let inv = scale.recip();
            let op = QuantDequant { inv, scale, lo: (-128 - z) as f32, hi: (127 - z) as f32 };
            let mut xs: Vec<f32> = Vec::new();
            for k in -300..=300 {
                // Exact ties (k + 0.5)·scale, and values just off them.
                let t = (k as f32 + 0.5) * scale;
                xs.extend([t, f32::from_bits(t.to_bits() + 1), f32::from_bits(t.to_bits().saturating_sub(1))]);
                xs.push(k as f32 * scale * 0.37);
            }
            xs.extend([0.0, -0.0, 1e-30, -1e-30, f32::NAN, f32::MIN_POSITIVE]);
            // Far out of range: saturated as the spec says (tract's own i32
            // sum wraps there when the zero point is not 0).
            for (x, code) in [(1e30f32, 127), (-1e30, -128), (f32::INFINITY, 127), (f32::NEG_INFINITY, -128)] {
                assert_eq!(op.value(x), (code - z) as f32 * scale, "x {x:e} z {z}");
            }
            if z == 0 {
                xs.extend([1e30, -1e30]);
            }
            // Through the vectorised loops (both forms), not only `value`.
            let mut ys = vec![0.0; xs.len()];
            op.apply(&xs, &mut ys);
            let mut inplace = xs.clone();
            op.apply_in_place(&mut inplace);
            for (k, &x) in xs.iter().enumerate() {
                let q = quantize_linear_f32_i8(x, inv, z);
                let want = (q as i32 - z) as f32 * scale;
                for got in [ys[k], inplace[k], op.value(x)] {
                    assert_eq!(got.to_bits(), want.to_bits(), "x {x:e} scale {scale} z {z}: {got} vs {want}");
                }
            }
        }
    }

    /// A layout op between the quantize and the dequantize (tract pushes a
    /// convolution's output reshape there on YOLOv8) is applied to the f32
    /// input instead: same values, bit for bit.
    #[test]
    fn layout_ops_between_the_pair_are_moved_before_it() -> TractResult<()> {
        use tract_onnx::tract_core::ops::quant::quantize_linear_i8;
        let (scale, z) = (0.0173f32, 2i8);
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 3, 5]))?;
        let q = m.wire_node("q", quantize_linear_i8(scale.recip(), z), &[x])?;
        let moved = m.wire_node("move", AxisOp::Move(0, 2), &q)?;
        let shaped = m.wire_node("reshape", AxisOp::Reshape(0, tvec!(3.into(), 5.into()), tvec!(15.into())), &moved)?;
        let y = m.wire_node("dq", DequantizeLinearF32::new(scale, z as i32), &shaped)?;
        m.select_output_outlets(&y)?;
        let mut f = m.clone();
        assert_eq!(fuse(&mut f)?, Fused { pairs: 1, through_layout: 1 });
        assert!(!f.nodes().iter().any(|n| n.op_is::<DequantizeLinearF32>() || n.op_is::<ElementWiseOp>()));
        let input: Vec<f32> = (0..30).map(|i| (i as f32 - 14.5) * 0.61).collect();
        let input = tensor1(&input).into_shape(&[2, 3, 5])?;
        let run = |m: TypedModel| -> TractResult<Vec<u32>> {
            let out = SimplePlan::new(m)?.run(tvec!(input.clone().into_tvalue()))?.remove(0);
            Ok(out.try_as_plain_ram()?.as_slice::<f32>()?.iter().map(|v| v.to_bits()).collect())
        };
        assert_eq!(run(m)?, run(f)?);
        Ok(())
    }

    /// A Q/DQ model (int8 and uint8 activations, a shared activation read
    /// twice, a residual Add) gives bit-identical outputs with and without
    /// the fusion, and the fusion happened.
    #[test]
    fn a_qdq_model_runs_the_same_fused() {
        use crate::tract_engine::TractSession;
        use crate::{Session, SessionOptions};
        let text = "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,16,32,32]\n  \
            init @w1: f32[32,16,3,3] = rand(1)\n  init @w2: f32[32,32,3,3] = rand(2)\n  init @b1: f32[32] = rand(3)\n  \
            init @s: f32[] = [0.0173]\n  init @z: i8[] = [0]\n  init @su: f32[] = [0.005]\n  init @zu: u8[] = [128]\n  \
            %q0 = QuantizeLinear(%x, @s, @z)  # q0\n  %d0 = DequantizeLinear(%q0, @s, @z)  # d0\n  \
            %a = Conv(%d0, @w1, @b1) {pads=[1,1,1,1]}  # conv1\n  %sg = Sigmoid(%a)  # sigmoid\n  %sa = Mul(%a, %sg)  # silu\n  \
            %q1 = QuantizeLinear(%sa, @su, @zu)  # q1\n  %d1 = DequantizeLinear(%q1, @su, @zu)  # d1\n  \
            %d1b = DequantizeLinear(%q1, @su, @zu)  # d1b\n  \
            %b = Conv(%d1, @w2) {pads=[1,1,1,1]}  # conv2\n  %y = Add(%b, %d1b)  # add\n  %r = Relu(%a)  # relu\n  \
            output %y\n  output %r\n}\n";
        let model = qforge_ir::Model::new(qforge_ir::parse_graph(text).unwrap());
        let opts = SessionOptions::default();
        let plain = TractSession::build_with(&model, &opts, true, false).unwrap();
        let fused = TractSession::build_with(&model, &opts, true, true).unwrap();
        assert_eq!(plain.fused, Fused::default());
        assert!(fused.fused.pairs >= 2, "{:?}", fused.fused);
        for seed in 0..4 {
            let x = crate::random_inputs(&[("x".into(), vec![1, 16, 32, 32], qforge_ir::DataType::F32)], seed);
            let (a, b) = (plain.run(&x).unwrap(), fused.run(&x).unwrap());
            assert_eq!(a.len(), 2);
            for (a, b) in a.iter().zip(&b) {
                let bits = |t: &crate::HostTensor| t.as_f32().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(b), "seed {seed}");
            }
        }
    }
}
