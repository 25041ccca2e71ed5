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
