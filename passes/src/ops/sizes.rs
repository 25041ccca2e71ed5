//! The size of every tensor a model would make, from its shapes, before an
//! engine runs it.
//!
//! Why here: sizes are data (a Resize scale, MaxPool pads, a Reshape
//! target), and an engine asked for a 128 GB buffer aborts the process or
//! swaps instead of failing. The engine-independent bound is checked with
//! qforge's own shape rules, so it holds for ONNX Runtime as for tract (whose
//! session checks its own facts too, for ops qforge has no rule for).

use std::collections::BTreeMap;

use qforge_ir::{Graph, NodeId, TypeInfo};
use qforge_runtime::{RuntimeError, resolve_input_shapes, tensor_bytes};

use super::Facts;
use crate::util::describe;

/// Refuses `g` when a tensor it computes, with the runtime inputs fixed to
/// `input_shapes` (or their declared dims), would take more than `limit`
/// bytes; the error names the first such node in order of computation.
/// Tensors whose shape no rule knows are left to the engine's own check.
pub fn check_sizes(g: &Graph, input_shapes: &BTreeMap<String, Vec<usize>>, limit: u64) -> Result<(), RuntimeError> {
    let mut fixed = g.clone();
    for (v, (_, dims)) in g.runtime_inputs().into_iter().zip(resolve_input_shapes(g, input_shapes)?) {
        let dtype = g.dtype(v).unwrap_or(qforge_ir::DataType::F32);
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        fixed.set_type(v, &TypeInfo::new(dtype, &dims));
    }
    let mut facts = Facts::default();
    for n in computation_order(&fixed) {
        if let Some(why) = padded_beyond(&fixed, &facts, n, limit) {
            return Err(RuntimeError::BadInput(format!("{}: {why}", describe(&fixed, n))));
        }
        if let Some(why) = empty_window(&fixed, &facts, n) {
            return Err(RuntimeError::BadInput(format!("{}: {why}", describe(&fixed, n))));
        }
        let Some(types) = facts.infer_over_declared(&fixed, n) else { continue };
        for (slot, t) in types.into_iter().enumerate() {
            let Some(t) = t else { continue };
            let (Some(dtype), Some(dims)) = (t.dtype, t.shape.as_ref().and_then(|s| s.as_known())) else { continue };
            if dims.iter().any(|&d| d < 0) {
                continue;
            }
            let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            // An empty axis does not make the others free: engines still walk
            // them (tract's nearest Resize of a 1-pixel axis by 1e9 next to an
            // axis resized to 0 ran out of memory), so empty axes count as 1.
            let spans: Vec<usize> = dims.iter().map(|&d| d.max(1)).collect();
            let bytes = tensor_bytes(&spans, dtype.size().unwrap_or(1));
            if bytes > limit {
                let value = fixed.node(n).output(slot).map(|v| fixed.value_name(v).to_string()).unwrap_or_default();
                return Err(RuntimeError::TooLarge {
                    node: describe(&fixed, n),
                    value,
                    shape: format!("{dims:?}"),
                    bytes,
                    limit,
                });
            }
        }
    }
    Ok(())
}

/// Why a sliding-window op's padded input is bigger than `limit` bytes:
/// shape rules give up on such dims (above 2^40 they are "unknown"), so
/// the size check cannot see the tensors after it, while an engine walks
/// (or makes) the padded input (a Conv padded by 2^40 led tract to plan a
/// 4 TB index table for a Resize after it: an allocation abort).
fn padded_beyond(g: &Graph, facts: &Facts, n: NodeId, limit: u64) -> Option<String> {
    let node = g.node(n);
    if !matches!(node.op_type(), "Conv" | "ConvInteger" | "ConvTranspose" | "MaxPool" | "AveragePool" | "LpPool") {
        return None;
    }
    let pads = node.attr_ints("pads")?;
    let x_v = node.input(0)?;
    let t = facts.type_of(g, x_v)?;
    let x = t.shape?.as_known()?;
    let sp = x.len().checked_sub(2)?;
    if pads.len() != 2 * sp || x.iter().any(|&d| d < 0) {
        return None;
    }
    let mut padded: Vec<u64> = x.iter().map(|&d| d as u64).collect();
    for i in 0..sp {
        let p = x[2 + i].checked_add(pads[i]).and_then(|v| v.checked_add(pads[sp + i]));
        padded[2 + i] = p.and_then(|p| u64::try_from(p).ok()).unwrap_or(u64::MAX);
    }
    let elem = t.dtype.and_then(|d| d.size()).unwrap_or(4) as u64;
    let bytes = padded.iter().fold(elem, |acc, &d| acc.saturating_mul(d.max(1)));
    (bytes > limit).then(|| {
        format!(
            "its input \"{}\" padded would be {padded:?} ({}), above the {} one tensor may take; the model's \
             sizes are wrong, or raise the bound with {}=MiB",
            g.value_name(x_v),
            qforge_runtime::human_bytes(bytes),
            qforge_runtime::human_bytes(limit),
            qforge_runtime::MAX_TENSOR_ENV
        )
    })
}

/// Why a sliding-window op (Conv, pooling) would have an empty output:
/// its input is empty on a spatial axis (a Resize by 0.5 of a 1-pixel
/// axis), or its kernel, dilated, is longer than its padded input. ONNX
/// gives no meaning to it, ONNX Runtime refuses it, and tract reads out of
/// bounds (an abort in a debug build), so it is refused before any engine.
fn empty_window(g: &Graph, facts: &Facts, n: NodeId) -> Option<String> {
    let node = g.node(n);
    let w_slot = match node.op_type() {
        "Conv" | "ConvInteger" => Some(1),
        "MaxPool" | "AveragePool" | "LpPool" => None,
        _ => return None,
    };
    if node.attr_str("auto_pad").is_some_and(|a| a == "SAME_UPPER" || a == "SAME_LOWER") {
        return None;
    }
    let x = facts.type_of(g, node.input(0)?)?.shape?.as_known()?;
    let sp = x.len().checked_sub(2)?;
    let kernel: Vec<i64> = match (node.attr_ints("kernel_shape"), w_slot) {
        (Some(k), _) => k.to_vec(),
        (None, Some(slot)) => facts.type_of(g, node.input(slot)?)?.shape?.as_known()?.get(2..)?.to_vec(),
        (None, None) => return None,
    };
    let pads = if node.attr_str("auto_pad") == Some("VALID") {
        vec![0; 2 * sp]
    } else {
        node.attr_ints("pads").map(<[i64]>::to_vec).unwrap_or_else(|| vec![0; 2 * sp])
    };
    let dil = node.attr_ints("dilations").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; sp]);
    if kernel.len() != sp || pads.len() != 2 * sp || dil.len() != sp {
        return None;
    }
    if let Some(i) = (0..sp).find(|&i| x[2 + i] == 0) {
        return Some(format!("its input is empty on spatial axis {i} ({x:?}): the output would be empty"));
    }
    (0..sp).find_map(|i| {
        let eff = (kernel[i] - 1).checked_mul(dil[i])?.checked_add(1)?;
        let padded = x[2 + i].checked_add(pads[i])?.checked_add(pads[sp + i])?;
        (padded < eff).then(|| {
            format!(
                "on spatial axis {i} the padded input ({padded}) is shorter than the dilated kernel ({eff}): the output would be empty"
            )
        })
    })
}

/// The nodes in an order where every producer comes before its readers
/// (file order where legal; nodes in a cycle are left out).
fn computation_order(g: &Graph) -> Vec<NodeId> {
    let mut done = std::collections::HashSet::new();
    let mut order = Vec::new();
    let mut pending = g.node_ids();
    loop {
        let before = order.len();
        pending.retain(|&n| {
            let ready =
                g.node(n).inputs().iter().flatten().all(|&v| g.producer_node(v).is_none_or(|p| done.contains(&p)));
            if ready {
                done.insert(n);
                order.push(n);
            }
            !ready
        });
        if pending.is_empty() || order.len() == before {
            return order;
        }
    }
}
