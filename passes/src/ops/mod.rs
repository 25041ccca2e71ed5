//! What qforge knows about each ONNX operator, in one registry.
//!
//! Why one registry: a pass that needs an op's output shape (`infer-shapes`,
//! `resize-to-conv-transpose` reading a Resize input) and a pass that needs
//! an op's value on constant inputs (`fold-constants`) must agree on what the
//! op *is*. Keeping those facts in lists spread over passes lets them drift;
//! here every op has one [`OpDef`]: its shape/type rule and, for the small
//! integer and shape ops exports compute in-graph, a native evaluator. A
//! plugin teaches qforge a custom op by submitting its own `OpDef` with
//! [`inventory::submit!`] (built-ins are found first, then plugins, keyed by
//! domain and op type).
//!
//! Rules live in small modules by op family ([`elementwise`], [`nn`],
//! [`movement`], [`index`], [`generate`], [`reduce`], [`resize`]). A rule reads
//! its inputs' types and, for small integer tensors, their *partial values*
//! (a `Shape` of a tensor with symbolic dims is a 1-D tensor whose elements
//! are those dims; Gather/Concat/Slice/arithmetic on it keep what can be
//! kept), which lets Reshape, Expand and Resize get output shapes before any
//! folding. Partial values stay internal to this module and its sweeps.
//!
//! "Unknown" stays explicit: a rule that cannot say something leaves it
//! unknown, every division, allocation and size is guarded (zero strides or
//! kernels, negative sizes, absurd counts give "unknown", never a panic).

mod dims;
mod elementwise;
pub(crate) mod eval;
mod facts;
mod generate;
mod index;
mod movement;
mod nn;
mod reduce;
mod resize;
mod sizes;

use std::collections::HashMap;
use std::sync::OnceLock;

use qforge_ir::{Graph, NodeId, TypeInfo};

pub use facts::{Contradiction, Cx, Facts, PVal};
pub use sizes::check_sizes;

/// An op's shape/type rule: reads the node's inputs through [`Cx`] and sets
/// what it can of its outputs. Returning `None` (usually through `?`) just
/// stops early; whatever was already set stands.
pub type InferFn = fn(&mut Cx<'_>) -> Option<()>;

/// What qforge knows about one operator.
#[derive(Debug, Clone, Copy)]
pub struct OpDef {
    /// Operator domain (`""` for the standard ops).
    pub domain: &'static str,
    /// Op type (`Conv`).
    pub op: &'static str,
    /// Its shape and type rule.
    pub infer: InferFn,
    /// Native evaluation on constant inputs (exact, bit-identical to ONNX
    /// Runtime for the types it accepts); `None` falls back to the runtime.
    pub eval: Option<eval::EvalFn>,
}

impl OpDef {
    /// A standard-domain op with a shape rule and no native evaluator.
    pub const fn std(op: &'static str, infer: InferFn) -> OpDef {
        OpDef { domain: "", op, infer, eval: None }
    }

    /// The same definition with a native evaluator.
    pub const fn with_eval(mut self, eval: eval::EvalFn) -> OpDef {
        self.eval = Some(eval);
        self
    }
}

inventory::collect!(OpDef);

fn registry() -> &'static HashMap<(&'static str, &'static str), &'static OpDef> {
    static REG: OnceLock<HashMap<(&'static str, &'static str), &'static OpDef>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut m: HashMap<(&'static str, &'static str), &'static OpDef> = HashMap::new();
        // Plugins first so that a built-in of the same name wins.
        for d in inventory::iter::<OpDef> {
            m.insert((d.domain, d.op), d);
        }
        for family in
            [elementwise::DEFS, nn::DEFS, movement::DEFS, index::DEFS, generate::DEFS, reduce::DEFS, resize::DEFS]
        {
            for d in family {
                m.insert((d.domain, d.op), d);
            }
        }
        m
    })
}

/// The definition of `op` in `domain` (`"ai.onnx"` is the standard domain).
pub fn op_def(domain: &str, op: &str) -> Option<&'static OpDef> {
    let domain = if domain == "ai.onnx" { "" } else { domain };
    registry().get(&(domain, op)).copied()
}

/// Output types of node `n` from what the graph itself says about its
/// inputs (declared types and constants); `None` when no rule knows the op.
/// One entry per output slot, `None` where nothing is known. For whole
/// chains (partial values carried from node to node) use a [`Facts`] sweep.
pub fn infer_node(g: &Graph, n: NodeId) -> Option<Vec<Option<TypeInfo>>> {
    Facts::default().infer_raw(g, n).map(|r| r.0)
}

#[cfg(test)]
mod tests;
