//! float16 graphs in tract: Q/DQ scales it can read, products it computes
//! at f32 speed.
//!
//! **Scales.** The TensorRT 10/11 form of a quantized model (`to-fp16` with
//! float16 Q/DQ, opset 19) gives `QuantizeLinear` a float16 input and scale
//! and `DequantizeLinear` a float16 scale and output. tract 0.23 only
//! accepts f32 scales ("Impossible to unify F16 with F32"), so without this
//! every strongly typed model qforge writes could be measured with ONNX
//! Runtime only.
//!
//! The rewrite, on the exported protobuf: a float16 scale becomes an f32
//! initializer holding the same values (f16 → f32 is exact); a
//! `QuantizeLinear` reading it gets its input through `Cast(to float)`, and
//! a `DequantizeLinear` writes f32 into a `Cast(to float16)` that takes over
//! its output name. The float16 input converts exactly to f32, so `x /
//! scale` is computed on the same operands, in f32 where ONNX Runtime's CPU
//! kernels also compute (they cast float16 Q/DQ to f32 internally); the
//! dequantized value `(q - zp) * scale` is rounded to float16 once, as the
//! spec's float16 output is.
//!
//! **Products.** tract 0.23 has no float16 matrix kernels on x86: a float16
//! `Conv` runs its generic kernel with software float16 multiply-adds,
//! about 100x slower than f32 (one nudenet 320 image took seconds). So
//! `Conv`, `ConvTranspose`, `MatMul` and `Gemm` with float16 operands read
//! them through `Cast(to float)` and write through `Cast(to float16)`: the
//! operands are the same values, the sum is accumulated in f32 (as TensorRT's
//! float16 convolutions and ONNX Runtime's CPU provider, which has no float16
//! Conv kernel on x86 either and inserts the same Casts, do) and the result is
//! rounded to float16 once, at the op's output as in the graph.

use std::collections::{HashMap, HashSet};

use qforge_ir::proto::{GraphProto, TensorProto};
use qforge_ir::{DataType, Graph, Tensor, attr_int};

use super::{Names, op};
use crate::RuntimeError;

/// Rewrites every `QuantizeLinear`/`DequantizeLinear` of `graph` whose scale
/// is a float16 initializer; returns how many nodes were rewritten.
pub(crate) fn widen_half_scales(graph: &mut GraphProto) -> Result<usize, RuntimeError> {
    let is_qdq = |t: &str| matches!(t, "QuantizeLinear" | "DequantizeLinear");
    let half: HashMap<&str, &TensorProto> =
        graph.initializer.iter().filter(|t| t.data_type() == DataType::F16.onnx()).map(|t| (t.name(), t)).collect();
    let mut targets = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        if matches!(n.domain(), "" | "ai.onnx")
            && is_qdq(n.op_type())
            && n.input.get(1).is_some_and(|s| half.contains_key(s.as_str()))
        {
            targets.push(i);
        }
    }
    if targets.is_empty() {
        return Ok(0);
    }
    let mut names = Names::of(graph);
    // One f32 copy per float16 scale, shared by all its readers.
    let mut widened: HashMap<String, String> = HashMap::new();
    let mut new_inits = Vec::new();
    for &i in &targets {
        let scale = graph.node[i].input[1].clone();
        if widened.contains_key(&scale) {
            continue;
        }
        let t = Tensor::from_proto(half[scale.as_str()].clone());
        let values = t.to_f32_vec().map_err(|e| RuntimeError::Engine {
            engine: "tract",
            message: format!("float16 scale \"{scale}\" cannot be read: {e}"),
        })?;
        let name = names.fresh(&format!("{scale}/tract_f32"));
        let mut p = Tensor::new(t.dims(), &values).into_proto();
        p.name = Some(name.clone());
        new_inits.push(p);
        widened.insert(scale, name);
    }
    graph.initializer.extend(new_inits);
    // Back to front, so the indices of the nodes still to rewrite hold.
    for &i in targets.iter().rev() {
        let node = &mut graph.node[i];
        node.input[1] = widened[&node.input[1]].clone();
        let base = if node.name().is_empty() {
            node.output.first().cloned().unwrap_or_default()
        } else {
            node.name().to_string()
        };
        if node.op_type() == "QuantizeLinear" {
            let x = node.input[0].clone();
            let wide = names.fresh(&format!("{x}/tract_f32"));
            node.input[0] = wide.clone();
            let mut cast = op("Cast", names.fresh(&format!("{base}/tract_cast")), vec![x], wide);
            cast.attribute.push(attr_int("to", DataType::F32.onnx() as i64));
            graph.node.insert(i, cast);
        } else {
            let Some(y) = node.output.first().cloned() else { continue };
            let wide = names.fresh(&format!("{y}/tract_f32"));
            node.output[0] = wide.clone();
            let mut cast = op("Cast", names.fresh(&format!("{base}/tract_cast")), vec![wide], y);
            cast.attribute.push(attr_int("to", DataType::F16.onnx() as i64));
            graph.node.insert(i + 1, cast);
        }
    }
    Ok(targets.len())
}

/// Ops computed through f32 when their operands are float16.
const PRODUCTS: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];

/// The first output names of the products of `g` that read float16 operands:
/// a typed input, a float16 constant, or a `DequantizeLinear` with a float16
/// scale (its output type is the scale's).
pub(crate) fn half_products(g: &Graph) -> HashSet<String> {
    let half = |v| {
        if g.dtype(v) == Some(DataType::F16) {
            return true;
        }
        if let Some(t) = g.constant(v) {
            return t.dtype() == Some(DataType::F16);
        }
        g.producer_node(v).is_some_and(|p| {
            let p = g.node(p);
            p.is_op("DequantizeLinear")
                && p.input(1).and_then(|s| g.constant(s)).is_some_and(|s| s.dtype() == Some(DataType::F16))
        })
    };
    g.nodes()
        .map(|n| g.node(n))
        .filter(|n| matches!(n.domain(), "" | "ai.onnx") && PRODUCTS.contains(&n.op_type()))
        .filter(|n| n.inputs().iter().flatten().any(|&v| half(v)))
        .filter_map(|n| n.output(0).map(|y| g.value_name(y).to_string()))
        .collect()
}

/// Puts the Casts of the module doc around the products named (by first
/// output) in `planned`; returns how many were rewritten.
pub(crate) fn widen_half_products(graph: &mut GraphProto, planned: &HashSet<String>) -> usize {
    if planned.is_empty() {
        return 0;
    }
    let mut names = Names::of(graph);
    let mut out = Vec::with_capacity(graph.node.len() + 4 * planned.len());
    let mut count = 0;
    for mut node in std::mem::take(&mut graph.node) {
        let Some(y) = node.output.first().filter(|y| planned.contains(y.as_str())).cloned() else {
            out.push(node);
            continue;
        };
        let base = if node.name().is_empty() { y.clone() } else { node.name().to_string() };
        for (i, x) in node.input.iter_mut().enumerate().filter(|(_, x)| !x.is_empty()) {
            let wide = names.fresh(&format!("{x}/tract_f32"));
            let mut cast = op("Cast", names.fresh(&format!("{base}/tract_cast_in{i}")), vec![x.clone()], wide.clone());
            cast.attribute.push(attr_int("to", DataType::F32.onnx() as i64));
            out.push(cast);
            *x = wide;
        }
        let wide = names.fresh(&format!("{y}/tract_f32"));
        node.output[0] = wide.clone();
        out.push(node);
        let mut back = op("Cast", names.fresh(&format!("{base}/tract_cast_out")), vec![wide], y);
        back.attribute.push(attr_int("to", DataType::F16.onnx() as i64));
        out.push(back);
        count += 1;
    }
    graph.node = out;
    count
}
