//! Each case is a small graph whose fusion the TensorRT developer guide
//! ("Explicit Quantization") documents; the rule is named beside it.

use qforge_ir::parse_graph;

use super::{Output, Rule, predict};

/// `%x` quantized as `%xd`, a second activation `%r` quantized as `%rd` (with
/// scale `@sr`), and a quantized 3x3 conv weight `@w`; `BODY` follows.
fn graph(body: &str) -> String {
    format!(
        r#"
graph g {{
  opset ai.onnx 13
  input %x: f32[1,4,8,8]
  input %r: f32[1,4,8,8]
  init @s: f32[] = [0.05]
  init @sr: f32[] = [0.07]
  init @z: i8[] = [0]
  init @wq: i8[4,4,3,3] = rand(1)
  init @ws: f32[4] = [0.01, 0.02, 0.03, 0.04]
  init @wz: i8[4] = [0, 0, 0, 0]
  %xq = QuantizeLinear(%x, @s, @z)  # xq
  %xd = DequantizeLinear(%xq, @s, @z)  # xdq
  %rq = QuantizeLinear(%r, @sr, @z)  # rq
  %rd = DequantizeLinear(%rq, @sr, @z)  # rdq
  %w = DequantizeLinear(@wq, @ws, @wz) {{axis=0}}  # wdq
{body}
}}
"#
    )
}

fn rules(text: &str) -> Vec<Rule> {
    predict(&parse_graph(text).unwrap()).findings.iter().map(|f| f.rule).collect()
}

#[test]
fn dq_fuses_into_the_conv_and_the_q_after_its_activation_into_its_output() {
    // Guide, Q/DQ fusion: DQ(x), DQ(w) -> Conv -> ReLU -> Q is one INT8-in,
    // INT8-out convolution.
    let text = graph(
        "  %c = Conv(%xd, %w) {pads=[1,1,1,1]}  # conv\n  %a = Relu(%c)  # relu\n  \
         %q = QuantizeLinear(%a, @s, @z)  # q\n  %y = DequantizeLinear(%q, @s, @z)  # ydq\n  \
         %o = Conv(%y, %w) {pads=[1,1,1,1]}  # conv2\n  output %o",
    );
    let f = predict(&parse_graph(&text).unwrap());
    assert!(f.findings.is_empty(), "{:?}", f.findings);
    assert_eq!(f.layers.len(), 2);
    assert_eq!((f.layers[0].layer.as_str(), &f.layers[0].output), ("conv", &Output::Int8));
    assert_eq!(f.layers[0].epilogue, ["Relu"]);
    // The last conv writes float (nothing quantizes it): not a finding.
    assert_eq!(f.layers[1].output, Output::Float);
}

#[test]
fn silu_is_part_of_the_epilogue() {
    let text = graph(
        "  %c = Conv(%xd, %w) {pads=[1,1,1,1]}  # conv\n  %g = Sigmoid(%c)  # sig\n  %m = Mul(%c, %g)  # silu\n  \
         %q = QuantizeLinear(%m, @s, @z)  # q\n  %y = DequantizeLinear(%q, @s, @z)  # ydq\n  \
         %o = Conv(%y, %w) {pads=[1,1,1,1]}  # conv2\n  output %o",
    );
    let f = predict(&parse_graph(&text).unwrap());
    assert!(f.findings.is_empty(), "{:?}", f.findings);
    assert_eq!(f.layers[0].epilogue, ["SiLU"]);
    assert_eq!(f.layers[0].output, Output::Int8);
}

#[test]
fn a_quantized_output_also_read_in_float_is_a_reformat() {
    // Guide, placement recommendations: the conv must write high precision for
    // the Sigmoid, so the Q cannot fuse into it.
    let text = graph(
        "  %c = Conv(%xd, %w) {pads=[1,1,1,1]}  # conv\n  %q = QuantizeLinear(%c, @s, @z)  # q\n  \
         %y = DequantizeLinear(%q, @s, @z)  # ydq\n  %o = Conv(%y, %w) {pads=[1,1,1,1]}  # conv2\n  \
         %p = Sigmoid(%c)  # head\n  output %o\n  output %p",
    );
    let f = predict(&parse_graph(&text).unwrap());
    assert_eq!(f.layers[0].output, Output::Mixed);
    assert_eq!(rules(&text), [Rule::MixedReaders]);
    assert!(f.findings[0].message.contains("\"head\" (Sigmoid)"), "{}", f.findings[0]);
}

#[test]
fn qdq_between_a_conv_and_its_residual_add_blocks_the_add_fusion() {
    // Guide, placement recommendations (residual connections): Q/DQ on the
    // conv's output before the Add keeps the Add out of the conv.
    let blocked = graph(
        "  %c = Conv(%xd, %w) {pads=[1,1,1,1]}  # conv\n  %q = QuantizeLinear(%c, @s, @z)  # q\n  \
         %y = DequantizeLinear(%q, @s, @z)  # ydq\n  %a = Add(%y, %rd)  # add\n  output %a",
    );
    assert_eq!(rules(&blocked), [Rule::ResidualQdq]);
    // Recommended: only the residual input is quantized; the Add joins the
    // conv's epilogue.
    let fused = graph("  %c = Conv(%xd, %w) {pads=[1,1,1,1]}  # conv\n  %a = Add(%c, %rd)  # add\n  output %a");
    let f = predict(&parse_graph(&fused).unwrap());
    assert!(f.findings.is_empty(), "{:?}", f.findings);
    assert_eq!(f.layers[0].epilogue, ["Add"]);
}

#[test]
fn dq_moves_across_maxpool_and_nearest_resize_but_not_into_float_ops() {
    // Guide, Q/DQ propagation: MaxPool and nearest Resize commute with
    // quantization, so the DQ reaches the conv.
    let commuting = graph(
        "  %m = MaxPool(%xd) {kernel_shape=[2,2], strides=[2,2]}  # pool\n  \
         init @sc: f32[4] = [1, 1, 2, 2]\n  %u = Resize(%m, _, @sc) {mode=\"nearest\"}  # up\n  \
         %o = Conv(%u, %w) {pads=[1,1,1,1]}  # conv\n  output %o",
    );
    assert!(rules(&commuting).is_empty(), "{:?}", rules(&commuting));
    // A linear Resize does not commute; a Sigmoid has no INT8 kernel: each
    // leaves a standalone DQ.
    let float = graph(
        "  init @sc: f32[4] = [1, 1, 2, 2]\n  %u = Resize(%xd, _, @sc) {mode=\"linear\"}  # up\n  \
         %p = Sigmoid(%rd)  # sig\n  output %u\n  output %p",
    );
    assert_eq!(rules(&float), [Rule::DqIntoConsumer, Rule::DqIntoConsumer]);
}

#[test]
fn concat_inputs_need_one_scale() {
    // Guide, Q/DQ propagation: a Concat runs in INT8 only with one scale on
    // all inputs.
    let mixed = graph("  %c = Concat(%xd, %rd) {axis=1}  # cat\n  output %c");
    assert_eq!(rules(&mixed), [Rule::ConcatScales]);
    let shared = graph("  %c = Concat(%xd, %xd) {axis=1}  # cat\n  output %c");
    assert!(rules(&shared).is_empty());
}
