//! ops whose value is known before run time (Constant nodes, shape arithmetic, all-constant inputs) => initializers holding their values.
//!
//! PyTorch exports compute Resize scales, Slice bounds and Reshape targets
//! with chains like `Shape → Gather → Add → Div → Mul`; until those are
//! values, no pass can see that a Resize is a ×2 nearest upsample. This pass
//! walks the graph once in order and folds whole chains in that one sweep:
//! it types values on the fly with the [`crate::ops`] rules (without writing
//! value_info), so a `Shape` of an intermediate tensor folds as soon as its
//! dims are known, and partial values let `Gather(Shape(x))` fold even when
//! other dims of x are symbolic. Constant nodes become initializers, and an
//! op whose inputs are all constant is evaluated natively when the registry
//! has an exact evaluator (small integer and shape ops), else once by the
//! runtime. Results keep their tensor names; `max_elements` caps their size.

use serde::{Deserialize, Serialize};

use qforge_ir::{DataType, Graph, InsertAt, NewNode, NodeId, Tensor, TypeInfo, ValueDef, ValueId};
use qforge_runtime::SessionOptions;

use crate::ops::eval::{EvalCx, Skip, Val};
use crate::ops::{Facts, op_def};
use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Options of `fold-constants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FoldConstants {
    /// Results with more elements than this stay computed at run time (so a
    /// folded Expand or Tile cannot bloat the model).
    pub max_elements: usize,
    /// Turn `Constant` nodes into initializers.
    pub constant_nodes: bool,
}

impl Default for FoldConstants {
    fn default() -> Self {
        FoldConstants { max_elements: 1 << 20, constant_nodes: true }
    }
}

impl PassOptions for FoldConstants {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("max_elements", "results bigger than this many elements are not folded (default 1048576)"),
        ("constant_nodes", "turn Constant nodes into initializers (default true)"),
    ];
}

register_pass!("fold-constants", FoldConstants, "ops with only constant inputs => initializers holding their values");

/// Ops whose result is not a function of their inputs.
const NOT_FOLDABLE: &[&str] = &[
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
];

/// True when `v` is a compile-time constant (checked without copying data).
fn is_constant(g: &Graph, v: ValueId) -> bool {
    match g.value(v).def() {
        ValueDef::Initializer => !g.is_graph_input(v),
        ValueDef::Node(p, 0) => g.node(p).is_op("Constant"),
        _ => false,
    }
}

/// How a node's value was found.
enum Folded {
    /// From the partial values of the sweep (Shape and its arithmetic).
    Shape(Vec<Tensor>),
    /// By a native evaluator.
    Native(Vec<Tensor>),
    /// By the runtime.
    Runtime(Vec<Tensor>),
}

impl Pass for FoldConstants {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        let mut failed: Vec<String> = Vec::new();
        let mut facts = Facts::default();
        for n in g.node_ids() {
            let node = g.node(n);
            let op = node.op_type().to_string();
            let outs: Vec<ValueId> = node.outputs().iter().flatten().copied().collect();
            let foldable = matches!(node.domain(), "" | "ai.onnx")
                && !NOT_FOLDABLE.contains(&op.as_str())
                && !outs.is_empty()
                && !outs.iter().any(|&v| g.is_graph_output(v))
                && node.implicit_inputs().is_empty();
            if foldable && op == "Constant" {
                if let Some(t) = g.constant(outs[0]).filter(|_| self.constant_nodes) {
                    if t.numel() > self.max_elements {
                        r.info("too large", 1);
                    } else {
                        replace(g, n, &outs, vec![t], &mut facts)?;
                        r.count("constants → initializers", 1);
                    }
                    continue;
                }
            }
            facts.infer(g, n);
            if !foldable || op == "Constant" {
                continue;
            }
            let folded = match self.fold(g, n, &facts, &outs) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(Skip::TooLarge) => {
                    r.info("too large", 1);
                    continue;
                }
                Err(Skip::Unsupported) => match evaluate(g, n) {
                    Ok(v) => Folded::Runtime(v),
                    Err(e) => {
                        failed.push(format!("{}: {e}", describe(g, n)));
                        continue;
                    }
                },
            };
            let (how, values) = match folded {
                Folded::Shape(v) => ("from shapes", v),
                Folded::Native(v) => ("evaluated natively", v),
                Folded::Runtime(v) => ("evaluated by the runtime", v),
            };
            if values.len() != outs.len() {
                continue;
            }
            if values.iter().any(|t| t.numel() > self.max_elements) {
                r.info("too large", 1);
                continue;
            }
            replace(g, n, &outs, values, &mut facts)?;
            r.count("folded", 1);
            r.info(how, 1);
        }
        if !failed.is_empty() {
            r.info("not evaluable", failed.len() as u64);
            for f in failed.iter().take(3) {
                r.note(format!("left in place: {f}"));
            }
        }
        Ok(r)
    }
}

impl FoldConstants {
    /// The values of `n`'s outputs when known without the runtime:
    /// `Ok(None)` when they are not constant, `Err(Unsupported)` when they
    /// are but only the runtime can compute them.
    fn fold(&self, g: &Graph, n: NodeId, facts: &Facts, outs: &[ValueId]) -> Result<Option<Folded>, Skip> {
        if let Some(t) = outs.iter().map(|&v| from_facts(g, facts, v)).collect::<Option<Vec<Tensor>>>() {
            return Ok(Some(Folded::Shape(t)));
        }
        let node = g.node(n);
        let ins: Vec<ValueId> = node.inputs().iter().flatten().copied().collect();
        if ins.is_empty() || !ins.iter().all(|&v| is_constant(g, v)) {
            return Ok(None);
        }
        let types: Vec<Option<TypeInfo>> = node.outputs().iter().map(|o| o.and_then(|v| facts.type_of(g, v))).collect();
        // Refuse before computing anything when the inferred result is too big.
        for t in types.iter().flatten() {
            if let Some(d) = t.known_dims()
                && crate::ops::eval::numel(&d).is_none_or(|k| k > self.max_elements)
            {
                return Err(Skip::TooLarge);
            }
        }
        let Some(eval) = op_def(node.domain(), node.op_type()).and_then(|d| d.eval) else {
            return Err(Skip::Unsupported);
        };
        let inputs: Vec<Option<Val>> = node
            .inputs()
            .iter()
            .map(|i| i.map(|v| g.constant(v).ok_or(Skip::Unsupported).and_then(|t| Val::from_tensor(&t))).transpose())
            .collect::<Result<_, _>>()?;
        let cx = EvalCx {
            node,
            inputs,
            outputs: types,
            max_elements: self.max_elements,
            opset: g.opset(node.domain()).unwrap_or(13),
        };
        let vals = eval(&cx)?;
        Ok(Some(Folded::Native(vals.iter().map(Val::to_tensor).collect())))
    }
}

/// The tensor of `v` when the sweep knows every element of it (a shape
/// tensor of static dims) and its integer type.
fn from_facts(g: &Graph, facts: &Facts, v: ValueId) -> Option<Tensor> {
    let p = facts.value_of(g, v)?;
    let k = p.known()?;
    let dt = facts.type_of(g, v)?.dtype?;
    let dims: Vec<i64> = if p.scalar { vec![] } else { vec![k.len() as i64] };
    let val = Val { dtype: dt, dims, data: crate::ops::eval::Data::I(k) };
    match dt {
        DataType::Bool => crate::ops::eval::cast_val(&val, DataType::Bool).ok().map(|v| v.to_tensor()),
        d if crate::ops::eval::kind(d) == Some(b'i') => {
            // Values must already be in the type's range (no silent wrap).
            let ok = val.ints().ok()?.iter().all(|&x| crate::ops::eval::wrap(d, x) == x);
            ok.then(|| val.to_tensor())
        }
        _ => None,
    }
}

/// Replaces node `n` by initializers holding `values` under its outputs' names.
fn replace(
    g: &mut Graph,
    n: NodeId,
    outs: &[ValueId],
    values: Vec<Tensor>,
    facts: &mut Facts,
) -> Result<(), PassError> {
    let inputs: Vec<ValueId> = g.node(n).inputs().iter().flatten().copied().collect();
    g.remove_node(n);
    for (&v, t) in outs.iter().zip(values) {
        g.make_initializer(v, t).map_err(|e| PassError::ir("folding", e))?;
        facts.forget(v);
    }
    crate::util::remove_if_unused(g, inputs);
    Ok(())
}

/// Runs one node on its constant inputs with the runtime.
fn evaluate(g: &Graph, n: NodeId) -> Result<Vec<Tensor>, String> {
    let node = g.node(n);
    let mut mini = Graph::new("fold", g.opset("").unwrap_or(13));
    for o in g.opset_imports() {
        mini.set_opset(o.domain(), o.version());
    }
    let mut inputs: Vec<Option<ValueId>> = Vec::with_capacity(node.inputs().len());
    for i in node.inputs() {
        inputs.push(match i {
            Some(v) => {
                let t = g.constant(*v).ok_or_else(|| format!("input \"{}\" is not constant", g.value_name(*v)))?;
                Some(mini.add_initializer(g.value_name(*v), t))
            }
            None => None,
        });
    }
    let outputs: Vec<String> =
        node.outputs().iter().map(|o| o.map(|v| g.value_name(v).to_string()).unwrap_or_default()).collect();
    let m = mini
        .insert_node(
            InsertAt::End,
            NewNode {
                op_type: node.op_type().to_string(),
                domain: node.domain().to_string(),
                name: node.name().to_string(),
                inputs,
                outputs: outputs.clone(),
                attrs: node.attrs().to_vec(),
            },
        )
        .map_err(|e| e.to_string())?;
    let outs: Vec<ValueId> = mini.node(m).outputs().iter().flatten().copied().collect();
    for &v in &outs {
        mini.add_output(v);
    }
    // One thread: a thread pool per one-node session costs more than the node.
    let opts = SessionOptions { threads: 1, ..Default::default() };
    let s = crate::numerics::open_session(&mini, &opts).map_err(|e| e.to_string())?;
    let res = s.run(&[]).map_err(|e| e.to_string())?;
    Ok(res.iter().map(|t| t.to_ir()).collect())
}
