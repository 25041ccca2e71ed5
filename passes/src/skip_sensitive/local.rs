//! The cheap local measure that ranks layers before anything is measured end
//! to end: how much each layer's own output moves when its inputs are
//! quantized, everything upstream being as deployed.
//!
//! One graph computes it for a whole group of layers at once: the quantized
//! model plus, beside each layer, a float twin (same op and attributes,
//! reading the layer's float activation `x` instead of `DQ(Q(x))` and the
//! float weights of the model before `insert-qdq`), and two
//! `ReduceSumSquare` nodes, of the twin's output and of the difference. Only
//! those scalars are fetched, so a run costs about twice the model and no
//! activation is copied out.

use std::collections::BTreeMap;

use qforge_ir::{Graph, InsertAt, NewNode, NodeId, attr_int};
use qforge_runtime::{Engine, HostTensor};
use rayon::prelude::*;

use super::judge::run_all;
use super::layers::{FloatInput, float_weight, quantized_inputs};
use crate::PassError;

/// Local output SQNR (dB) of each layer over the samples.
pub struct Local {
    /// Per layer, in the order given: `10·log10(Σ twin² / Σ (layer − twin)²)`.
    pub sqnr: Vec<f64>,
}

/// Adds `op(input) {keepdims=0}` after `at`; returns the new node and its output name.
fn reduce_all(g: &mut Graph, at: NodeId, op: &str, v: qforge_ir::ValueId, hint: &str) -> Result<NodeId, PassError> {
    let new = NewNode::new(op, hint, &[v], hint).attr(attr_int("keepdims", 0));
    g.insert_node(InsertAt::After(at), new).map_err(|e| PassError::ir("skip-sensitive: local measure", e))
}

/// Measures every layer in `layers` of the quantized graph `g` on `inputs`.
///
/// The layers are split in graph order into two groups (one on a single
/// core), each measured by its own graph, prepared and run in parallel:
/// preparing a session is single-threaded and grows faster than the graph
/// (tract), so two graphs with half the twins each are ready sooner than one
/// with all; the group of early layers also needs only the part of the model
/// before its last layer (the engine drops what the fetched sums do not
/// need). More groups would each run the model up to their layers again.
pub fn measure(
    g: &Graph,
    float: &Graph,
    layers: &[NodeId],
    inputs: &[HostTensor],
    engine: Engine,
    input_shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<Local, PassError> {
    let groups = rayon::current_num_threads().clamp(1, 2).min(layers.len().max(1));
    let order: std::collections::HashMap<NodeId, usize> = g.nodes().enumerate().map(|(i, n)| (n, i)).collect();
    let mut sorted = layers.to_vec();
    sorted.sort_by_key(|n| order.get(n).copied().unwrap_or(usize::MAX));
    let per = sorted.len().div_ceil(groups).max(1);
    let per_group: Vec<(Vec<NodeId>, Vec<NoiseSignal>)> = sorted
        .chunks(per)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|chunk| Ok((chunk.to_vec(), sums(g, float, chunk, inputs, engine, input_shapes)?)))
        .collect::<Result<_, PassError>>()?;
    let found: std::collections::HashMap<NodeId, NoiseSignal> =
        per_group.into_iter().flat_map(|(ls, s)| ls.into_iter().zip(s)).collect();
    let sqnr = layers
        .iter()
        .map(|l| {
            let (n, s) = found.get(l).copied().unwrap_or((f64::NAN, f64::NAN));
            if n == 0.0 { f64::INFINITY } else { 10.0 * (s / n).log10() }
        })
        .collect();
    Ok(Local { sqnr })
}

/// Σ (layer − twin)² and Σ twin² of one layer over the samples.
type NoiseSignal = (f64, f64);

/// The [`NoiseSignal`] sums of each layer of `layers`.
fn sums(
    g: &Graph,
    float: &Graph,
    layers: &[NodeId],
    inputs: &[HostTensor],
    engine: Engine,
    input_shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<Vec<NoiseSignal>, PassError> {
    let mut aug = g.clone();
    let err = |e| PassError::ir("skip-sensitive: local measure", e);
    // Only the per-layer sums: the graph outputs come from the base run.
    let mut fetch: Vec<String> = Vec::new();
    for &l in layers {
        let node = aug.node(l).clone();
        let mut ins = node.inputs().to_vec();
        for (slot, how) in quantized_inputs(&aug, l) {
            match how {
                FloatInput::Activation(x) => ins[slot] = Some(x),
                FloatInput::Weight => {
                    if let Some((name, t)) = float_weight(&aug, l, slot, float) {
                        ins[slot] = Some(aug.add_initializer(&format!("{name}/float"), t));
                    }
                }
            }
        }
        let y = node.output(0).ok_or_else(|| PassError::msg(format!("layer \"{}\" has no output", node.name())))?;
        let base = format!("{}/qforge_local", node.name());
        let twin = NewNode {
            op_type: node.op_type().to_string(),
            domain: node.domain().to_string(),
            name: format!("{base}/twin"),
            inputs: ins,
            outputs: vec![format!("{base}/twin_out")],
            attrs: node.attrs().to_vec(),
        };
        let t = aug.insert_node(InsertAt::After(l), twin).map_err(err)?;
        let ty = aug.node(t).output(0).ok_or_else(|| PassError::msg("twin without output"))?;
        let d = aug
            .insert_node(
                InsertAt::After(t),
                NewNode::new("Sub", &format!("{base}/diff"), &[y, ty], &format!("{base}/diff")),
            )
            .map_err(err)?;
        let dv = aug.node(d).output(0).ok_or_else(|| PassError::msg("Sub without output"))?;
        let e = reduce_all(&mut aug, d, "ReduceSumSquare", dv, &format!("{base}/noise"))?;
        let s = reduce_all(&mut aug, e, "ReduceSumSquare", ty, &format!("{base}/signal"))?;
        for n in [e, s] {
            let v = aug.node(n).output(0).ok_or_else(|| PassError::msg("reduction without output"))?;
            fetch.push(aug.value_name(v).to_string());
        }
    }
    let runs = run_all(&aug, inputs, fetch, engine, input_shapes, "skip-sensitive: local measure")?;
    let mut noise = vec![0.0f64; layers.len()];
    let mut signal = vec![0.0f64; layers.len()];
    for sums in runs {
        for (i, pair) in sums.chunks(2).enumerate() {
            let scalar = |t: &HostTensor| t.to_f64_vec().first().copied().unwrap_or(f64::NAN);
            noise[i] += scalar(&pair[0]);
            signal[i] += scalar(&pair[1]);
        }
    }
    Ok(noise.into_iter().zip(signal).collect())
}
