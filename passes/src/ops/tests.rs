//! Rule tests on small graphs in the text IR: the type each value gets after
//! a sweep, compared with what ONNX's own inference says for the same graph
//! (values worked out from the spec by hand).

use qforge_ir::{Graph, parse_graph};

use super::Facts;

/// Sweeps `text`'s graph and returns the printed type of each named value.
fn sweep(text: &str) -> (Graph, Facts) {
    let g = parse_graph(text).unwrap_or_else(|e| panic!("{e}"));
    let mut f = Facts::default();
    for n in g.node_ids() {
        f.infer(&g, n);
    }
    (g, f)
}

fn ty(g: &Graph, f: &Facts, name: &str) -> String {
    let v = g.find_value(name).unwrap_or_else(|| panic!("no value {name}"));
    f.type_of(g, v).map(|t| t.to_string()).unwrap_or_else(|| "none".into())
}

fn graph(opset: i64, input: &str, body: &str) -> String {
    format!("graph g {{\n  opset ai.onnx {opset}\n  input %x: {input}\n{body}\n  output %y\n}}\n")
}

/// (opset, input type, body, expected type of %y)
const CASES: &[(i64, &str, &str, &str)] = &[
    // C2f split done with shape arithmetic: Shape→Gather→Add→Div→Mul→Slice.
    (
        17,
        "f32[1,64,80,80]",
        "  init @one: i64[1] = [1]\n  init @two: i64[1] = [2]\n  init @zero: i64[1] = [0]\n  %s = Shape(%x)\n  %c = Gather(%s, @one) {axis=0}\n  %a = Add(%c, @one)\n  %d = Div(%a, @two)\n  %m = Mul(%d, @one)\n  %y = Slice(%x, @zero, %m, @one)",
        "f32[1,32,80,80]",
    ),
    // Dynamic batch Reshape: 0 copies, -1 cancels the symbol.
    (13, "f32[N,64,20,20]", "  init @t: i64[3] = [0,64,-1]\n  %y = Reshape(%x, @t)", "f32[N,64,400]"),
    (13, "f32[N,64,20,20]", "  init @t: i64[2] = [-1,400]\n  %y = Reshape(%x, @t)", "f32[?,400]"),
    (14, "f32[2,0,3]", "  init @t: i64[2] = [0,3]\n  %y = Reshape(%x, @t) {allowzero=1}", "f32[0,3]"),
    // Reshape target built from Shape of a symbolic tensor.
    (
        13,
        "f32[N,3,H,W]",
        "  init @i: i64[2] = [0,1]\n  init @m: i64[1] = [-1]\n  %s = Shape(%x)\n  %nc = Gather(%s, @i) {axis=0}\n  %t = Concat(%nc, @m) {axis=0}\n  %y = Reshape(%x, %t)",
        "f32[N,3,?]",
    ),
    // Resize with sizes computed in-graph from Shape.
    (
        13,
        "f32[1,8,10,12]",
        "  init @i: i64[2] = [2,3]\n  init @two: i64[1] = [2]\n  init @nc: i64[2] = [1,8]\n  %s = Shape(%x)\n  %hw = Gather(%s, @i) {axis=0}\n  %hw2 = Mul(%hw, @two)\n  %sz = Concat(@nc, %hw2) {axis=0}\n  %y = Resize(%x, _, _, %sz) {mode=\"nearest\"}",
        "f32[1,8,20,24]",
    ),
    // Resize scales: floor(x·s) in f32; a symbol survives a scale of 1.
    (13, "f32[N,8,7,7]", "  init @s: f32[4] = [1.0,1.0,1.5,2.0]\n  %y = Resize(%x, _, @s)", "f32[N,8,10,14]"),
    (18, "f32[1,8,7,7]", "  init @s: f32[2] = [2.0,3.0]\n  %y = Resize(%x, _, @s) {axes=[2,3]}", "f32[1,8,14,21]"),
    (
        9,
        "f32[1,8,7,7]",
        "  init @s: f32[4] = [1.0,1.0,2.0,2.0]\n  %y = Upsample(%x, @s) {mode=\"nearest\"}",
        "f32[1,8,14,14]",
    ),
    // Slice: negative steps, clamping, attribute form.
    (
        13,
        "f32[10,6]",
        "  init @s: i64[1] = [-1]\n  init @e: i64[1] = [-9223372036854775807]\n  init @a: i64[1] = [0]\n  init @st: i64[1] = [-3]\n  %y = Slice(%x, @s, @e, @a, @st)",
        "f32[4,6]",
    ),
    (9, "f32[10,6]", "  %y = Slice(%x) {starts=[1], ends=[100], axes=[1]}", "f32[10,5]"),
    (
        13,
        "f32[N,6]",
        "  init @s: i64[1] = [0]\n  init @e: i64[1] = [9223372036854775807]\n  init @a: i64[1] = [0]\n  %y = Slice(%x, @s, @e, @a)",
        "f32[N,6]",
    ),
    (13, "f32[N,6]", "  init @s: i64[1] = [1]\n  init @e: i64[1] = [3]\n  %y = Slice(%x, @s, @e)", "f32[?,6]"),
    // Split forms.
    (18, "f32[1,10,4]", "  %y, %b, %c = Split(%x) {axis=1, num_outputs=3}", "f32[1,4,4]"),
    (13, "f32[1,10,4]", "  init @sp: i64[2] = [3,7]\n  %y, %b = Split(%x, @sp) {axis=1}", "f32[1,3,4]"),
    (11, "f32[1,10,4]", "  %b, %y = Split(%x) {axis=1, split=[3,7]}", "f32[1,7,4]"),
    (13, "f32[6,N]", "  %y, %b = Split(%x)", "f32[3,N]"),
    // Gather with a scalar index drops the axis.
    (13, "f32[5,7,3]", "  init @i: i64[] = [2]\n  %y = Gather(%x, @i) {axis=1}", "f32[5,3]"),
    // Concat: a symbol on the axis becomes unknown; other axes unify.
    (13, "f32[N,3]", "  %y = Concat(%x, %x) {axis=0}", "f32[?,3]"),
    (13, "f32[N,3]", "  %y = Concat(%x, %x) {axis=1}", "f32[N,6]"),
    // Broadcasting: symbol against 1 stays, against a known k is k.
    (13, "f32[N,1,5]", "  init @b: f32[1,4,1] = fill(1.0)\n  %y = Add(%x, @b)", "f32[N,4,5]"),
    // Conv: a symbolic H survives a stride-1 same conv only.
    (13, "f32[N,3,H,W]", "  init @w: f32[8,3,3,3] = fill(0.1)\n  %y = Conv(%x, @w) {pads=[1,1,1,1]}", "f32[N,8,H,W]"),
    (
        13,
        "f32[N,3,H,W]",
        "  init @w: f32[8,3,3,3] = fill(0.1)\n  %y = Conv(%x, @w) {pads=[1,1,1,1], strides=[2,2]}",
        "f32[N,8,?,?]",
    ),
    // A zero stride gives unknown, not a panic.
    (13, "f32[1,3,8,8]", "  init @w: f32[8,3,3,3] = fill(0.1)\n  %y = Conv(%x, @w) {strides=[0,1]}", "f32[1,8,?,6]"),
    (
        13,
        "f32[1,8,5,5]",
        "  init @w: f32[8,2,3,3] = fill(0.1)\n  %y = ConvTranspose(%x, @w) {group=2, strides=[2,2], pads=[1,1,1,1], output_padding=[1,1]}",
        "f32[1,4,10,10]",
    ),
    (13, "f32[1,8,5,5]", "  %y = MaxPool(%x) {kernel_shape=[2,2], strides=[2,2], ceil_mode=1}", "f32[1,8,3,3]"),
    (13, "f32[1,8,5,5]", "  %y = GlobalAveragePool(%x)", "f32[1,8,1,1]"),
    // Pad forms.
    (11, "f32[1,3,4,4]", "  init @p: i64[8] = [0,0,1,2,0,0,3,-1]\n  %y = Pad(%x, @p)", "f32[1,3,8,5]"),
    (2, "f32[1,3,4,4]", "  %y = Pad(%x) {pads=[0,0,1,1,0,0,1,1]}", "f32[1,3,6,6]"),
    (
        18,
        "f32[1,3,4,4]",
        "  init @p: i64[4] = [1,1,1,1]\n  init @a: i64[2] = [-2,-1]\n  %y = Pad(%x, @p, _, @a)",
        "f32[1,3,6,6]",
    ),
    // Squeeze/Unsqueeze, attribute and input forms.
    (11, "f32[1,3,1,5]", "  %y = Squeeze(%x) {axes=[0,2]}", "f32[3,5]"),
    (13, "f32[1,3,1,5]", "  %y = Squeeze(%x)", "f32[3,5]"),
    (13, "f32[3,5]", "  init @a: i64[2] = [0,-1]\n  %y = Unsqueeze(%x, @a)", "f32[1,3,5,1]"),
    (11, "f32[3,5]", "  %y = Unsqueeze(%x) {axes=[1]}", "f32[3,1,5]"),
    // Expand, Tile, Transpose, Flatten.
    (13, "f32[3,1]", "  init @s: i64[3] = [2,1,4]\n  %y = Expand(%x, @s)", "f32[2,3,4]"),
    (13, "f32[3,2]", "  init @r: i64[2] = [2,3]\n  %y = Tile(%x, @r)", "f32[6,6]"),
    (13, "f32[N,3,4]", "  %y = Transpose(%x) {perm=[2,0,1]}", "f32[4,N,3]"),
    (13, "f32[N,3,4,5]", "  %y = Flatten(%x) {axis=2}", "f32[?,20]"),
    (13, "f32[N,3,4,5]", "  %y = Flatten(%x) {axis=1}", "f32[N,60]"),
    // Reductions: attribute axes, input axes, noop_with_empty_axes.
    (13, "f32[2,3,4]", "  %y = ReduceMean(%x) {axes=[1], keepdims=0}", "f32[2,4]"),
    (13, "f32[2,3,4]", "  init @a: i64[1] = [-1]\n  %y = ReduceSum(%x, @a)", "f32[2,3,1]"),
    (18, "f32[2,3,4]", "  %y = ReduceMax(%x) {noop_with_empty_axes=1}", "f32[2,3,4]"),
    (18, "f32[2,3,4]", "  %y = ReduceMax(%x) {keepdims=0}", "f32[]"),
    (13, "f32[2,3,4]", "  %y = ArgMax(%x) {axis=1, keepdims=0}", "i64[2,4]"),
    (13, "f32[2,3,4]", "  init @k: i64[1] = [2]\n  %y, %i = TopK(%x, @k)", "f32[2,3,2]"),
    (13, "f32[N,3,4]", "  init @b: f32[4,5] = fill(1.0)\n  %y = MatMul(%x, @b)", "f32[N,3,5]"),
    (13, "f32[4]", "  init @b: f32[2,4,5] = fill(1.0)\n  %y = MatMul(%x, @b)", "f32[2,5]"),
    (13, "f32[3,4]", "  init @b: f32[5,4] = fill(1.0)\n  %y = Gemm(%x, @b) {transB=1}", "f32[3,5]"),
    (
        13,
        "f32[2,3,4]",
        "  init @b: f32[2,4,5] = fill(1.0)\n  %y = Einsum(%x, @b) {equation=\"bij,bjk->bik\"}",
        "f32[2,3,5]",
    ),
    (13, "f32[2,3,4]", "  %y = Einsum(%x) {equation=\"...ij\"}", "f32[2,3,4]"),
    // Shape with start/end, Cast, Range, ConstantOfShape, NonZero, Where.
    (15, "f32[N,3,4,5]", "  %y = Shape(%x) {start=1, end=-1}", "i64[2]"),
    (13, "f32[2,3]", "  %y = Cast(%x) {to=7}", "i64[2,3]"),
    (
        13,
        "f32[2,3]",
        "  init @s: i64[] = [0]\n  init @l: i64[] = [10]\n  init @d: i64[] = [3]\n  %y = Range(@s, @l, @d)",
        "i64[4]",
    ),
    (
        13,
        "f32[2,3]",
        "  init @s: f32[] = [0.0]\n  init @l: f32[] = [1.0]\n  init @d: f32[] = [0.3]\n  %y = Range(@s, @l, @d)",
        "f32[4]",
    ),
    (13, "f32[N,3]", "  %s = Shape(%x)\n  %y = ConstantOfShape(%s) {value=tensor(i64[1] = [1])}", "i64[N,3]"),
    (13, "f32[2,3]", "  %y = NonZero(%x)", "i64[2,?]"),
    (13, "f32[N,3]", "  init @c: bool[3] = [1,0,1]\n  init @z: f32[] = [0.0]\n  %y = Where(@c, %x, @z)", "f32[N,3]"),
    (
        13,
        "f32[N,3]",
        "  init @one: i64[1] = [1]\n  %s = Shape(%x)\n  %e = Equal(%s, @one)\n  %y = Where(%e, %s, @one)",
        "i64[2]",
    ),
    (11, "f32[1,100,4]", "  init @sc: f32[1,1,100] = fill(0.5)\n  %y = NonMaxSuppression(%x, @sc)", "i64[?,3]"),
    (13, "f32[2,3]", "  %y = Softmax(%x)", "f32[2,3]"),
    (
        13,
        "f32[2,3,4]",
        "  init @s: f32[4] = fill(1.0)\n  %y, %m, %v = LayerNormalization(%x, @s) {axis=-1}",
        "f32[2,3,4]",
    ),
];

#[test]
fn rules_give_the_expected_types() {
    let mut failed = Vec::new();
    for (opset, input, body, want) in CASES {
        let text = graph(*opset, input, body);
        let (g, f) = sweep(&text);
        let got = ty(&g, &f, "y");
        if got != *want {
            failed.push(format!("opset {opset}, {input}:\n{body}\n  => {got}, expected {want}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn partial_values_flow_through_shape_arithmetic() {
    let (g, f) = sweep(&graph(
        13,
        "f32[N,3,H,W]",
        "  init @i: i64[] = [1]\n  init @two: i64[] = [2]\n  init @ax: i64[1] = [0]\n  %s = Shape(%x)\n  %c = Gather(%s, @i) {axis=0}\n  %u = Unsqueeze(%c, @ax)\n  %y = Mul(%u, @two)",
    ));
    let v = g.find_value("y").unwrap();
    assert_eq!(f.value_of(&g, v).and_then(|p| p.known()), Some(vec![6]));
    let s = g.find_value("s").unwrap();
    assert_eq!(f.value_of(&g, s).map(|p| p.elems.len()), Some(4));
}

#[test]
fn a_declared_type_is_only_refined_and_contradictions_are_reported() {
    let text = "graph g {\n  opset ai.onnx 13\n  input %x: f32[1,3,8,8]\n  %a = Relu(%x) : f32[1,?,8,8]\n  %b = Relu(%a) : f32[1,4,8,8]\n  output %b\n}\n";
    let g = parse_graph(text).unwrap();
    let mut f = Facts::default();
    for n in g.node_ids() {
        f.infer(&g, n);
    }
    assert_eq!(ty(&g, &f, "a"), "f32[1,3,8,8]");
    // %b declares 4 channels where 3 flow in: kept as declared, reported.
    assert_eq!(ty(&g, &f, "b"), "f32[1,4,8,8]");
    let c = f.take_contradictions();
    assert_eq!(c.len(), 1);
    assert_eq!(g.value_name(c[0].value), "b");
}

#[test]
fn absurd_attributes_give_unknown_without_panicking() {
    for body in [
        "  init @w: f32[8,3,3,3] = fill(0.1)\n  %y = Conv(%x, @w) {strides=[0,0], dilations=[0,0]}",
        "  %y = MaxPool(%x) {kernel_shape=[0,0]}",
        "  %y = MaxPool(%x) {kernel_shape=[3,3], pads=[-9,-9,-9,-9]}",
        "  init @w: f32[8,2,3,3] = fill(0.1)\n  %y = ConvTranspose(%x, @w) {strides=[0,0], group=0}",
        "  init @t: i64[2] = [-1,-1]\n  %y = Reshape(%x, @t)",
        "  init @t: i64[2] = [-5,4]\n  %y = Reshape(%x, @t)",
        "  init @s: f32[4] = [1.0,1.0,1e30,-1.0]\n  %y = Resize(%x, _, @s)",
        "  init @r: i64[4] = [9223372036854775807,9223372036854775807,2,2]\n  %y = Tile(%x, @r)",
        "  init @s: i64[4] = [9223372036854775807,1,1,1]\n  %y = Expand(%x, @s)",
        "  %y = DepthToSpace(%x) {blocksize=0}",
        "  %y = Split(%x) {axis=9}",
        "  init @s: i64[] = [0]\n  init @l: i64[] = [9223372036854775807]\n  init @d: i64[] = [0]\n  %y = Range(@s, @l, @d)",
    ] {
        let (g, f) = sweep(&graph(13, "f32[1,8,4,4]", body));
        // Whatever it is, it is not a negative or absurd known dim.
        if let Some(t) = g.find_value("y").and_then(|v| f.type_of(&g, v)) {
            for d in t.shape.iter().flat_map(|s| s.0.iter()) {
                if let qforge_ir::Dim::Known(k) = d {
                    assert!((0..=super::dims::MAX_DIM).contains(k), "{body}: {t}");
                }
            }
        }
    }
}
