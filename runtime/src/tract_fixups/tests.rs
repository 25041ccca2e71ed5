//! Which `DequantizeLinear` nodes are rewritten, that the rewrite is exact,
//! and that tract without it still gets `DQ → Softmax → Q` wrong (if a tract
//! upgrade fixes that, `tract_alone_still_bakes_softmax_into_a_table` fails:
//! the fixup can then go).

use qforge_ir::{DataType, Model, parse_graph};

use super::{apply, plan};
use crate::host::{Data, HostTensor};
use crate::tract_engine::TractSession;
use crate::{Session, SessionOptions};

/// `%x` (f32) quantized with `@s`/`@z`, dequantized, through `CHAIN`, then
/// quantized again with `@so`/`@zo` and dequantized.
fn chain_graph(dtype: &str, zp: i32, zp_out: i32, scale_out: f32, chain: &str) -> String {
    format!(
        r#"
graph g {{
  opset ai.onnx 13
  input %x: f32[1,16,2,3]
  init @s: f32[] = [0.05]
  init @z: {dtype}[] = [{zp}]
  init @so: f32[] = [{scale_out}]
  init @zo: {dtype}[] = [{zp_out}]
  %q = QuantizeLinear(%x, @s, @z)  # q
  %d = DequantizeLinear(%q, @s, @z)  # dq
{chain}
  %q2 = QuantizeLinear(%c, @so, @zo)  # q2
  %y = DequantizeLinear(%q2, @so, @zo)  # dq2
  output %y
}}
"#
    )
}

const SOFTMAX: &str = "  %c = Softmax(%d) {axis=1}  # softmax";

fn planned(text: &str) -> Vec<String> {
    plan(&parse_graph(text).unwrap()).into_iter().map(|r| r.output).collect()
}

#[test]
fn only_dequantize_nodes_feeding_a_non_elementwise_table_are_planned() {
    // DQ → Softmax → Q: the bug.
    assert_eq!(planned(&chain_graph("i8", 0, 0, 1.0 / 127.0, SOFTMAX)), ["d"]);
    assert_eq!(planned(&chain_graph("u8", 128, 0, 1.0 / 255.0, SOFTMAX)), ["d"]);
    // Through element-wise and layout ops to a Softmax: still the bug.
    let long =
        "  %a = Sigmoid(%d)  # sig\n  %t = Transpose(%a) {perm=[0,1,3,2]}  # tr\n  %c = LogSoftmax(%t) {axis=1}  # lsm";
    assert_eq!(planned(&chain_graph("i8", 0, 0, 0.1, long)), ["d"]);
    // Element-wise only: tract's table is right, nothing to do.
    assert!(planned(&chain_graph("i8", 0, 0, 1.0 / 127.0, "  %c = Sigmoid(%d)  # sig")).is_empty());
    assert!(
        planned(
            &chain_graph("i8", 0, 0, 0.1, "  %c = Reshape(%d, @shape)  # r")
                .replace("init @s: f32[] = [0.05]", "init @s: f32[] = [0.05]\n  init @shape: i64[2] = [16, 6]")
        )
        .is_empty()
    );
    // The Softmax output has a second reader: tract makes no table.
    let forked = chain_graph("i8", 0, 0, 1.0 / 127.0, SOFTMAX)
        .replace("  output %y", "  %e = Exp(%c)  # exp\n  output %y\n  output %e");
    assert!(planned(&forked).is_empty());
    // A per-channel constant operand is not the same function for every element.
    let per_channel = "  %c = Mul(%d, @k)  # mul";
    let text = chain_graph("i8", 0, 0, 0.1, per_channel)
        .replace("init @s: f32[] = [0.05]", "init @s: f32[] = [0.05]\n  init @k: f32[1,16,1,1] = rand(3)");
    assert_eq!(planned(&text), ["d"]);
}

/// Every code of `dtype` through `DequantizeLinear(scale, zp)`, in tract, as
/// is and spelled out by [`apply`].
fn dequantize_both_ways(dtype: DataType, zp: i32) -> (Vec<f32>, Vec<f32>) {
    let ty = if dtype == DataType::I8 { "i8" } else { "u8" };
    let text = format!(
        r#"
graph g {{
  opset ai.onnx 13
  input %x: {ty}[2,128]
  init @s: f32[] = [0.0371]
  init @z: {ty}[] = [{zp}]
  %y = DequantizeLinear(%x, @s, @z)  # dq
  output %y
}}
"#
    );
    let model = Model::new(parse_graph(&text).unwrap());
    let codes: Vec<u8> = (0..=255).collect();
    let x = HostTensor {
        shape: vec![2, 128],
        data: if dtype == DataType::I8 { Data::I8(codes.iter().map(|&c| c as i8).collect()) } else { Data::U8(codes) },
    };
    let opts = SessionOptions::default();
    let plain = TractSession::new(&model, &opts).unwrap().run(std::slice::from_ref(&x)).unwrap();
    // The rewrite forced on a DQ that `plan` leaves alone (nothing follows it).
    let mut proto = qforge_ir::export(&model);
    let rewrites = vec![super::DequantizeRewrite {
        node: "dq".into(),
        input: "x".into(),
        output: "y".into(),
        scale: 0.0371,
        zero_point: zp,
        half: false,
    }];
    assert_eq!(apply(proto.graph.as_mut().unwrap(), &rewrites).unwrap(), 1);
    let ops: Vec<&str> = proto.graph.as_ref().unwrap().node.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, if zp == 0 { vec!["Cast", "Mul"] } else { vec!["Cast", "Sub", "Mul"] });
    let rewritten = qforge_ir::import(proto, None).unwrap();
    let spelled = TractSession::new(&rewritten, &opts).unwrap().run(std::slice::from_ref(&x)).unwrap();
    let f = |t: &HostTensor| t.as_f32().unwrap().to_vec();
    (f(&plain[0]), f(&spelled[0]))
}

#[test]
fn the_float_spelling_is_bit_identical_to_dequantize_linear() {
    for (dt, zp) in [(DataType::I8, 0), (DataType::I8, -7), (DataType::U8, 0), (DataType::U8, 131)] {
        let (a, b) = dequantize_both_ways(dt, zp);
        assert_eq!(a.len(), 256);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert_eq!(p.to_bits(), q.to_bits(), "{dt} zp {zp}, code #{i}: {p} vs {q}");
        }
        // And it is the spec's (x - zp) * scale.
        let codes: Vec<i32> =
            if dt == DataType::I8 { (0..=255u8).map(|c| c as i8 as i32).collect() } else { (0..=255).collect() };
        for (c, v) in codes.iter().zip(&a) {
            assert_eq!(*v, (c - zp) as f32 * 0.0371f32);
        }
    }
}

/// Softmax over axis 1 of `x` [1, C, H, W], quantized per the spec
/// (round half to even, saturate) with `scale`/`zp` into `lo..=hi`.
fn softmax_codes(x: &[f32], shape: &[usize], scale: f32, zp: i32, lo: i32, hi: i32) -> Vec<i32> {
    let (c, inner) = (shape[1], shape[2] * shape[3]);
    let mut out = vec![0; x.len()];
    for i in 0..inner {
        let col: Vec<f64> = (0..c).map(|k| x[k * inner + i] as f64).collect();
        let m = col.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = col.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        for k in 0..c {
            let q = ((e[k] / s) as f32 / scale).round_ties_even() as i32 + zp;
            out[k * inner + i] = q.clamp(lo, hi);
        }
    }
    out
}

/// tract's codes after the second QuantizeLinear of [`chain_graph`].
fn tract_codes(text: &str, x: &HostTensor, fixups: bool) -> Vec<i32> {
    let model = Model::new(parse_graph(text).unwrap());
    let opts = SessionOptions { outputs: vec!["q2".into()], ..Default::default() };
    let out = TractSession::build(&model, &opts, fixups).unwrap().run(std::slice::from_ref(x)).unwrap();
    out[0].to_f64_vec().iter().map(|&v| v as i32).collect()
}

fn dequantized_input(x: &HostTensor, scale: f32, zp: i32, lo: i32, hi: i32) -> Vec<f32> {
    let x = x.as_f32().unwrap();
    x.iter()
        .map(|v| ((v / scale).round_ties_even() as i32 + zp).clamp(lo, hi))
        .map(|q| (q - zp) as f32 * scale)
        .collect()
}

#[test]
fn tract_alone_still_bakes_softmax_into_a_table() {
    let x = crate::random_inputs(&[("x".into(), vec![1, 16, 2, 3], DataType::F32)], 5).remove(0);
    for (ty, zp, zp_out, scale_out, lo, hi) in
        [("i8", 0, 0, 1.0f32 / 127.0, -128, 127), ("u8", 128, 0, 1.0 / 255.0, 0, 255)]
    {
        let text = chain_graph(ty, zp, zp_out, scale_out, SOFTMAX);
        let reference =
            softmax_codes(&dequantized_input(&x, 0.05, zp, lo, hi), &[1, 16, 2, 3], scale_out, zp_out, lo, hi);
        // Without the fixup every code is QuantizeLinear(1.0).
        let wrong = tract_codes(&text, &x, false);
        assert!(wrong.iter().all(|&q| q == hi), "{ty}: tract without the fixup gave {wrong:?}");
        assert!(reference.iter().any(|&q| q != hi));
        // With it, the spec's codes (one step where a value sits on a rounding edge).
        let right = tract_codes(&text, &x, true);
        let worst = right.iter().zip(&reference).map(|(a, b)| (a - b).abs()).max().unwrap();
        assert!(worst <= 1, "{ty}: tract {right:?} vs spec {reference:?}");
    }
}

/// A TensorRT 10/11 style Q/DQ pair: float16 input, scale and output, opset 19.
const HALF_QDQ: &str = r#"
graph g {
  opset ai.onnx 19
  input %x: f16[4,64]
  init @s: f16[] = [0.0371]
  init @z: i8[] = [0]
  %q = QuantizeLinear(%x, @s, @z)  # q
  %y = DequantizeLinear(%q, @s, @z)  # dq
  output %y
}
"#;

#[test]
fn float16_scales_run_in_tract_as_the_spec_says() {
    let model = Model::new(parse_graph(HALF_QDQ).unwrap());
    // Without the widening tract refuses the graph outright.
    let mut proto = qforge_ir::export(&model);
    let graph = proto.graph.as_mut().unwrap();
    assert_eq!(super::widen_half_scales(graph).unwrap(), 2);
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, ["Cast", "QuantizeLinear", "DequantizeLinear", "Cast"]);
    assert_eq!(graph.node.last().unwrap().output, ["y"], "the Cast takes over the output name");
    assert!(TractSession::build(&model, &SessionOptions::default(), false).is_err(), "tract accepts f16 scales now");

    // Values across the whole int8 range and beyond it (saturation).
    let xs: Vec<half::f16> = (0..256).map(|i| half::f16::from_f32((i as f32 - 128.0) * 0.0413)).collect();
    let x = HostTensor { shape: vec![4, 64], data: Data::F16(xs.clone()) };
    let out = TractSession::new(&model, &SessionOptions::default()).unwrap().run(std::slice::from_ref(&x)).unwrap();
    let Data::F16(y) = &out[0].data else { panic!("float16 output expected, got {:?}", out[0].data) };
    let scale = half::f16::from_f32(0.0371).to_f32();
    for (i, (xi, yi)) in xs.iter().zip(y).enumerate() {
        let q = (xi.to_f32() / scale).round_ties_even().clamp(-128.0, 127.0);
        let expected = half::f16::from_f32(q * scale);
        assert_eq!(yi.to_bits(), expected.to_bits(), "#{i}: x {xi} gave {yi}, spec {expected}");
    }
}

#[test]
fn float16_softmax_tables_are_spelled_out_too() {
    // The DFL pattern DQ → Softmax → Q in a strongly typed graph.
    let text = chain_graph("i8", 0, 0, 1.0 / 127.0, SOFTMAX)
        .replace("opset ai.onnx 13", "opset ai.onnx 19")
        .replace("f32", "f16");
    let plans = plan(&parse_graph(&text).unwrap());
    assert_eq!(plans.iter().map(|r| r.output.as_str()).collect::<Vec<_>>(), ["d"]);
    assert!(plans[0].half);
    let x = crate::random_inputs(&[("x".into(), vec![1, 16, 2, 3], DataType::F32)], 5).remove(0);
    let reference =
        softmax_codes(&dequantized_input(&x, 0.05, 0, -128, 127), &[1, 16, 2, 3], 1.0 / 127.0, 0, -128, 127);
    let x16 = HostTensor {
        shape: x.shape.clone(),
        data: Data::F16(x.as_f32().unwrap().iter().map(|&v| half::f16::from_f32(v)).collect()),
    };
    let right = tract_codes(&text, &x16, true);
    // float16 arithmetic moves values near a rounding edge by one code at most.
    let worst = right.iter().zip(&reference).map(|(a, b)| (a - b).abs()).max().unwrap();
    assert!(worst <= 1, "tract {right:?} vs spec {reference:?}");
    assert!(right.iter().any(|&q| q != 127), "the table bug is back: {right:?}");
}

#[test]
fn float16_convolutions_run_through_f32_and_round_once() {
    let text = r#"
graph g {
  opset ai.onnx 19
  input %x: f16[1,4,5,5]
  init @w: f16[3,4,3,3] = rand(7)
  init @b: f16[3] = rand(8)
  %y = Conv(%x, @w, @b) {pads=[1,1,1,1]}  # conv
  output %y
}
"#;
    let g = parse_graph(text).unwrap();
    let planned = super::half_products(&g);
    assert_eq!(planned.iter().collect::<Vec<_>>(), ["y"]);
    let mut proto = qforge_ir::export(&Model::new(g.clone()));
    let graph = proto.graph.as_mut().unwrap();
    assert_eq!(super::widen_half_products(graph, &planned), 1);
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type()).collect();
    assert_eq!(ops, ["Cast", "Cast", "Cast", "Conv", "Cast"]);
    assert_eq!(graph.node.last().unwrap().output, ["y"]);

    let x = crate::random_inputs(&[("x".into(), vec![1, 4, 5, 5], DataType::F16)], 3).remove(0);
    let model = Model::new(g.clone());
    let out = TractSession::new(&model, &SessionOptions::default()).unwrap().run(std::slice::from_ref(&x)).unwrap();
    let Data::F16(y) = &out[0].data else { panic!("float16 output expected") };
    // The convolution in f64 on the same float16 operands, rounded to float16 once.
    let f = |v: qforge_ir::ValueId| g.constant(v).unwrap().to_f32_vec().unwrap();
    let node = g.node(g.nodes().next().unwrap());
    let (w, b) = (f(node.input(1).unwrap()), f(node.input(2).unwrap()));
    let xs: Vec<f64> = x.to_f64_vec();
    for o in 0..3 {
        for i in 0..5i64 {
            for j in 0..5i64 {
                let mut acc = b[o] as f64;
                for c in 0..4 {
                    for (di, dj) in (0..3).flat_map(|a| (0..3).map(move |b| (a, b))) {
                        let (si, sj) = (i + di - 1, j + dj - 1);
                        if (0..5).contains(&si) && (0..5).contains(&sj) {
                            let xv = xs[(c * 25 + si * 5 + sj) as usize];
                            acc += xv * w[o * 36 + c as usize * 9 + (di * 3 + dj) as usize] as f64;
                        }
                    }
                }
                let got = y[o * 25 + (i * 5 + j) as usize].to_f64();
                let ulp = half::f16::from_f64(acc).to_f64().abs().max(1e-3) * 2f64.powi(-10);
                assert!((got - acc).abs() <= ulp, "y[{o},{i},{j}] = {got}, exact {acc}");
            }
        }
    }
}
