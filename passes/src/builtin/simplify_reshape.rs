//! `Reshape(%x, Concat(k…, %d, k…))` => `Reshape(%x, [k…, -1, k…])`; a Reshape that keeps `%x`'s shape => `%x`.
//!
//! Dynamic torch exports build Reshape targets at run time from `Shape`
//! slices even when only one entry is unknown (YOLOv8's anchor grid:
//! `Reshape(%a, Concat(Shape(%a), [1]))`). A valid Reshape has as many
//! elements out as in, so when every other entry is a known positive
//! constant the run-time entry can only be `numel / product(others)`:
//! exactly what `-1` means. The target becomes one constant and the
//! `Shape`/`Concat` chain behind it is left to `eliminate-dead`.
//!
//! A Reshape to `[-1]` of a rank-1 tensor, or to a constant equal to its
//! input's fully known shape, changes nothing and is removed (readers read
//! the input).
//!
//! Left alone: `allowzero=1` (a literal 0 in the target), targets with a
//! 0 or -1 already among the constants, pieces of unknown length.

use serde::{Deserialize, Serialize};

use qforge_ir::{Graph, NodeId, Tensor, ValueId};

use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// `simplify-reshape` has no options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimplifyReshape {}

impl PassOptions for SimplifyReshape {
    const DOCS: &'static [(&'static str, &'static str)] = &[];
}

register_pass!(
    "simplify-reshape",
    SimplifyReshape,
    "Reshape(%x, Concat(k.., %d, k..)) => Reshape(%x, [k.., -1, k..]); a Reshape to %x's own shape => %x"
);

impl Pass for SimplifyReshape {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        for n in g.node_ids() {
            if !g.contains_node(n) || !g.node(n).is_op("Reshape") || g.node(n).attr_int("allowzero").unwrap_or(0) != 0 {
                continue;
            }
            if let Some(target) = one_unknown_target(g, n) {
                let name = format!("{}_shape", g.node(n).name());
                let v = g.add_initializer(&name, Tensor::new(&[target.len() as i64], &target));
                g.set_input(n, 1, Some(v));
                r.count("targets made constant", 1);
            }
            if keeps_shape(g, n) {
                let node = g.node(n);
                let (Some(x), Some(y)) = (node.input(0), node.output(0)) else { continue };
                if !g.can_replace(y, x) {
                    r.info("kept (graph output)", 1);
                    continue;
                }
                let what = describe(g, n);
                g.remove_node(n);
                g.replace_value(y, x).map_err(|e| PassError::ir(format!("removing {what}"), e))?;
                r.count("no-op reshapes removed", 1);
            }
        }
        Ok(r)
    }
}

/// The constant target of `n` when its target is a Concat (axis 0) of
/// one-element pieces, all known positive constants but one: that one
/// becomes -1.
fn one_unknown_target(g: &Graph, n: NodeId) -> Option<Vec<i64>> {
    let shape = g.node(n).input(1)?;
    if g.constant(shape).is_some() {
        return None;
    }
    let cat = g.producer_node(shape)?;
    let cat = g.node(cat);
    if !cat.is_op("Concat") || cat.attr_int("axis") != Some(0) {
        return None;
    }
    let mut target = Vec::new();
    let mut unknown = 0;
    for &piece in cat.inputs() {
        let piece = piece?;
        match g.constant(piece) {
            Some(t) => {
                let vals = t.to_i64_vec().ok()?;
                if vals.iter().any(|&k| k < 1) {
                    return None;
                }
                target.extend(vals);
            }
            None => {
                let len = one_dim_length(g, piece)?;
                if len != 1 {
                    return None;
                }
                unknown += 1;
                target.push(-1);
            }
        }
    }
    (unknown == 1).then_some(target)
}

/// The length of a rank-1 value of known size.
fn one_dim_length(g: &Graph, v: ValueId) -> Option<i64> {
    let dims = g.type_info(v)?.shape?.as_known()?;
    match dims[..] {
        [len] => Some(len),
        _ => None,
    }
}

/// Whether `n` (a Reshape with a constant target) returns its input as is.
fn keeps_shape(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let (Some(x), Some(s)) = (node.input(0), node.input(1)) else { return false };
    let Some(target) = g.constant(s).and_then(|t| t.to_i64_vec().ok()) else { return false };
    let Some(shape) = g.type_info(x).and_then(|t| t.shape) else { return false };
    if shape.rank() == 1 && target == [-1] {
        return true;
    }
    shape.as_known().is_some_and(|dims| dims.iter().all(|&d| d > 0) && dims == target)
}
