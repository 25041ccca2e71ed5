//! Scoring candidate ranges by the error they cause at the layers that read
//! the quantized tensor.
//!
//! One graph measures every candidate of many groups: the quantized model,
//! plus beside each layer `c` that reads a group, a float twin (activations
//! read before their Q/DQ, float weights of the model before `insert-qdq`)
//! and, per candidate range, a copy of `c` whose input from the group is
//! quantized with that range instead (its other inputs as deployed; for the
//! current range, the layer itself). Each copy's `Σ (copy − twin)² · |twin|`
//! and each twin's `Σ twin² · |twin|` are the only values fetched, so a run
//! costs a few times the model and copies out scalars. Everything upstream
//! is quantized as deployed: the error a candidate is charged with is the
//! one it would add to the model as it stands.
//!
//! Why `|twin|` weighs the error: a detector's evidence is in its large,
//! sparse activations (where objects are), which clipping hits and plain
//! MSE, summed over a mostly quiet feature map, underweighs. On nudenet the
//! unweighted choice lost 2.3 dB on the boxes and 1.4 dB on the scores at
//! the outputs; weighted, it kept the boxes and gained 1.1 dB on the scores.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use qforge_ir::{Graph, InsertAt, NewNode, NodeId, Tensor, ValueId, attr_int};
use qforge_runtime::{Engine, HostTensor};

use super::{Candidate, Group};
use crate::PassError;
use crate::calibrate::table::int8_scale;
use crate::skip_sensitive::layers::{FloatInput, float_weight, quantized_inputs};

/// The layers that read `group`: readers of its DequantizeLinear outputs,
/// leaving out a scale-sharing op whose own output is in the group (its
/// error is measured where its output is read). With each, the slots it
/// reads the group at and the quantizer each slot reads.
fn readers(g: &Graph, group: &Group) -> Vec<(NodeId, Vec<(usize, NodeId)>)> {
    let mut out: Vec<(NodeId, Vec<(usize, NodeId)>)> = Vec::new();
    for &q in &group.quantizers {
        let Some(qo) = g.node(q).output(0) else { continue };
        for d in g.users(qo).into_iter().filter(|&d| g.node(d).is_op("DequantizeLinear")) {
            let Some(dv) = g.node(d).output(0) else { continue };
            for c in g.users(dv) {
                if g.node(c).output(0).is_some_and(|o| group.values.contains(&o)) {
                    continue;
                }
                let slots: Vec<(usize, NodeId)> = g
                    .node(c)
                    .inputs()
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| **v == Some(dv))
                    .map(|(i, _)| (i, q))
                    .collect();
                match out.iter_mut().find(|(n, _)| *n == c) {
                    Some((_, s)) => s.extend(slots),
                    None => out.push((c, slots)),
                }
            }
        }
    }
    out
}

fn ir(e: qforge_ir::IrError) -> PassError {
    PassError::ir("tune-ranges: layer errors", e)
}

/// `Σ v² · w`, added after `at`.
fn weighted_sum(g: &mut Graph, at: NodeId, v: ValueId, w: ValueId, hint: &str) -> Result<(NodeId, String), PassError> {
    let sq = g
        .insert_node(InsertAt::After(at), NewNode::new("Mul", &format!("{hint}/sq"), &[v, v], &format!("{hint}/sq")))
        .map_err(ir)?;
    let sqv = g.node(sq).output(0).ok_or_else(|| PassError::msg("Mul without output"))?;
    let m = g
        .insert_node(InsertAt::After(sq), NewNode::new("Mul", &format!("{hint}/w"), &[sqv, w], &format!("{hint}/w")))
        .map_err(ir)?;
    let mv = g.node(m).output(0).ok_or_else(|| PassError::msg("Mul without output"))?;
    let n = g
        .insert_node(InsertAt::After(m), NewNode::new("ReduceSum", hint, &[mv], hint).attr(attr_int("keepdims", 0)))
        .map_err(ir)?;
    let out = g.node(n).output(0).ok_or_else(|| PassError::msg("reduction without output"))?;
    Ok((n, g.value_name(out).to_string()))
}

/// A copy of `c` named `name` reading `inputs`, inserted after `at`; its first output.
fn copy_of(
    g: &mut Graph,
    c: NodeId,
    inputs: Vec<Option<ValueId>>,
    name: &str,
    at: NodeId,
) -> Result<(NodeId, ValueId), PassError> {
    let node = g.node(c).clone();
    let outputs = (0..node.outputs().len().max(1)).map(|i| format!("{name}_out{i}")).collect();
    let new = NewNode {
        op_type: node.op_type().to_string(),
        domain: node.domain().to_string(),
        name: name.to_string(),
        inputs,
        outputs,
        attrs: node.attrs().to_vec(),
    };
    let n = g.insert_node(InsertAt::After(at), new).map_err(ir)?;
    let out = g.node(n).output(0).ok_or_else(|| PassError::msg(format!("{name}: no output")))?;
    Ok((n, out))
}

/// What to fetch for a chunk of groups: per group, per candidate, per
/// reader, the error sum's name and the reader's index (for its signal).
struct Plan {
    graph: Graph,
    fetch: Vec<String>,
    /// `errors[group][candidate]` = (fetch index, reader index) per reader.
    errors: Vec<Vec<Vec<(usize, usize)>>>,
    /// Fetch index of each reader's signal.
    signals: Vec<usize>,
}

fn plan(g: &Graph, float: &Graph, groups: &[(&Group, &[Candidate])]) -> Result<Plan, PassError> {
    let mut aug = g.clone();
    let mut fetch: Vec<String> = Vec::new();
    let mut twins: HashMap<NodeId, (ValueId, usize)> = HashMap::new();
    let mut signals: Vec<usize> = Vec::new();
    let mut weights: HashMap<NodeId, ValueId> = HashMap::new();
    let mut anchor: HashMap<NodeId, NodeId> = HashMap::new();
    let mut errors = Vec::with_capacity(groups.len());
    for (gi, (group, cands)) in groups.iter().enumerate() {
        let rd = readers(g, group);
        let mut per_cand = vec![Vec::new(); cands.len()];
        for (c, slots) in rd {
            // The reader's float twin and its signal, once per reader.
            let (twin, reader) = match twins.get(&c) {
                Some(&t) => t,
                None => {
                    let mut ins = g.node(c).inputs().to_vec();
                    for (slot, how) in quantized_inputs(g, c) {
                        match how {
                            FloatInput::Activation(x) => ins[slot] = Some(x),
                            FloatInput::Weight => {
                                if let Some((name, t)) = float_weight(g, c, slot, float) {
                                    ins[slot] = Some(aug.add_initializer(&format!("{name}/float"), t));
                                }
                            }
                        }
                    }
                    let base = format!("{}/qforge_tune", g.node(c).name());
                    let (t, tv) = copy_of(&mut aug, c, ins, &format!("{base}/twin"), c)?;
                    // The weight |twin|: an error counts in proportion to
                    // the activation it lands on.
                    let wn = aug
                        .insert_node(
                            InsertAt::After(t),
                            NewNode::new("Abs", &format!("{base}/weight"), &[tv], &format!("{base}/weight")),
                        )
                        .map_err(ir)?;
                    let w = aug.node(wn).output(0).ok_or_else(|| PassError::msg("Abs without output"))?;
                    let t = wn;
                    weights.insert(c, w);
                    let (sn, s) = weighted_sum(&mut aug, t, tv, w, &format!("{base}/signal"))?;
                    anchor.insert(c, sn);
                    fetch.push(s);
                    signals.push(fetch.len() - 1);
                    twins.insert(c, (tv, signals.len() - 1));
                    (tv, signals.len() - 1)
                }
            };
            for (k, cand) in cands.iter().enumerate() {
                let scale = int8_scale(cand.amax);
                let base = format!("{}/qforge_tune/g{gi}k{k}", g.node(c).name());
                let s = aug.add_initializer(&format!("{base}/scale"), Tensor::scalar(scale));
                let mut ins = g.node(c).inputs().to_vec();
                // After the twin and everything added for this reader so far,
                // so the nodes stay in topological order.
                let mut at = anchor[&c];
                // The current range: the layer as deployed is that copy (a
                // copy identical to it would be merged into it by tract's
                // optimizer, which then fails to run the merged node).
                let deployed = if cand.current { g.node(c).output(0) } else { None };
                for &(slot, q) in slots.iter().filter(|_| deployed.is_none()) {
                    let qn = g.node(q);
                    let x = qn.input(0).ok_or_else(|| PassError::msg("quantizer without input"))?;
                    let z = qn.input(2);
                    let mut q_in = vec![x, s];
                    q_in.extend(z);
                    let nq = aug
                        .insert_node(
                            InsertAt::After(at),
                            NewNode::new(
                                "QuantizeLinear",
                                &format!("{base}/q{slot}"),
                                &q_in,
                                &format!("{base}/q{slot}"),
                            ),
                        )
                        .map_err(ir)?;
                    let qv = aug.node(nq).output(0).ok_or_else(|| PassError::msg("Q without output"))?;
                    let mut dq_in = vec![qv, s];
                    dq_in.extend(z);
                    let nd = aug
                        .insert_node(
                            InsertAt::After(nq),
                            NewNode::new(
                                "DequantizeLinear",
                                &format!("{base}/dq{slot}"),
                                &dq_in,
                                &format!("{base}/dq{slot}"),
                            ),
                        )
                        .map_err(ir)?;
                    ins[slot] = aug.node(nd).output(0);
                    at = nd;
                }
                let (cn, cv) = match deployed {
                    Some(out) => (at, out),
                    None => copy_of(&mut aug, c, ins, &format!("{base}/layer"), at)?,
                };
                let d = aug
                    .insert_node(
                        InsertAt::After(cn),
                        NewNode::new("Sub", &format!("{base}/diff"), &[cv, twin], &format!("{base}/diff")),
                    )
                    .map_err(ir)?;
                let dv = aug.node(d).output(0).ok_or_else(|| PassError::msg("Sub without output"))?;
                let (en, e) = weighted_sum(&mut aug, d, dv, weights[&c], &format!("{base}/noise"))?;
                anchor.insert(c, en);
                fetch.push(e);
                per_cand[k].push((fetch.len() - 1, reader));
            }
        }
        errors.push(per_cand);
    }
    Ok(Plan { graph: aug, fetch, errors, signals })
}

/// Per group (in the order given), per candidate: the sum over the layers
/// reading the group of `Σ (copy − twin)² / Σ twin²` over the samples.
/// A group no layer reads gets NaN for every candidate.
pub fn measure(
    g: &Graph,
    float: &Graph,
    groups: &[(&Group, &[Candidate])],
    inputs: &[HostTensor],
    engine: Engine,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<Vec<Vec<f64>>, PassError> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    // Two graphs of half the groups each, prepared and run side by side:
    // preparing one session is single-threaded and grows faster than the
    // graph (tract), and the early half needs only the model up to its
    // last reader.
    let chunks = rayon::current_num_threads().clamp(1, 2).min(groups.len());
    let per = groups.len().div_ceil(chunks);
    let parts: Vec<Vec<Vec<f64>>> = groups
        .chunks(per)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|chunk| {
            let p = plan(g, float, chunk)?;
            let runs = crate::skip_sensitive::judge::run_all(
                &p.graph,
                inputs,
                p.fetch.clone(),
                engine,
                shapes,
                "tune-ranges: layer errors",
            )?;
            let mut sums = vec![0.0f64; p.fetch.len()];
            for run in &runs {
                for (s, t) in sums.iter_mut().zip(run) {
                    *s += t.to_f64_vec().first().copied().unwrap_or(f64::NAN);
                }
            }
            Ok(p.errors
                .iter()
                .map(|per_cand| {
                    per_cand
                        .iter()
                        .map(|readers| {
                            if readers.is_empty() {
                                return f64::NAN;
                            }
                            readers
                                .iter()
                                .map(|&(e, r)| {
                                    let signal = sums[p.signals[r]];
                                    sums[e] / if signal > 0.0 { signal } else { 1.0 }
                                })
                                .sum()
                        })
                        .collect()
                })
                .collect())
        })
        .collect::<Result<_, PassError>>()?;
    Ok(parts.into_iter().flatten().collect())
}
