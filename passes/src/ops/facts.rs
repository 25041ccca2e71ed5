//! What a sweep knows about values: types inferred so far (an overlay on the
//! graph's own declarations) and partial values of small integer tensors.
//!
//! The overlay exists so a pass that must not write value_info
//! (`fold-constants`) can still type values on the fly, and so that a
//! declared type is only ever replaced by a strictly more precise one that
//! does not contradict it; contradictions are collected for the report.

use std::collections::HashMap;

use qforge_ir::{DataType, Dim, Graph, Node, NodeId, Shape, Tensor, TypeInfo, ValueDef, ValueId};

use super::op_def;

/// Largest partial value kept (elements): shape tensors are short.
const MAX_PVAL: usize = 64;
/// Largest constant a rule reads as integers or floats (starts, pads, scales…).
const MAX_CONST_READ: usize = 4096;

/// The partial value of a rank-0 or rank-1 integer tensor: each element is
/// a known number, a symbolic dim, or unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PVal {
    /// Rank 0 (one element) rather than rank 1.
    pub scalar: bool,
    /// The elements.
    pub elems: Vec<Dim>,
}

impl PVal {
    /// A value of known integers.
    pub fn ints(scalar: bool, v: &[i64]) -> PVal {
        PVal { scalar, elems: v.iter().map(|&x| Dim::Known(x)).collect() }
    }

    /// The elements when all are known.
    pub fn known(&self) -> Option<Vec<i64>> {
        self.elems.iter().map(|d| if let Dim::Known(k) = d { Some(*k) } else { None }).collect()
    }
}

/// A declared type that the inferred one contradicts (different dtype,
/// rank or known dim). The declaration is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Contradiction {
    /// The value.
    pub value: ValueId,
    /// What the model declares.
    pub declared: TypeInfo,
    /// What the producer's rule says.
    pub inferred: TypeInfo,
}

/// Types and partial values learnt while sweeping a graph in order.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    types: HashMap<ValueId, TypeInfo>,
    values: HashMap<ValueId, PVal>,
    contradictions: Vec<Contradiction>,
}

/// What a node's rule found: each output's type and partial value.
pub(crate) type NodeFacts = (Vec<Option<TypeInfo>>, Vec<Option<PVal>>);

impl Facts {
    /// The best type known for `v`: inferred in this sweep, else declared.
    pub fn type_of(&self, g: &Graph, v: ValueId) -> Option<TypeInfo> {
        match self.types.get(&v) {
            Some(t) => Some(t.clone()),
            None => g.type_info(v),
        }
    }

    /// The partial value of `v` (a small integer tensor), if anything is known.
    pub fn value_of(&self, g: &Graph, v: ValueId) -> Option<PVal> {
        if let Some(p) = self.values.get(&v) {
            return Some(p.clone());
        }
        let t = small_constant(g, v, MAX_CONST_READ)?;
        if t.dims().len() > 1 || !t.dtype().is_some_and(is_int) {
            return None;
        }
        Some(PVal::ints(t.dims().is_empty(), &t.to_i64_vec().ok()?))
    }

    /// Forgets what was inferred about `v` (its definition changed, e.g. it
    /// became an initializer).
    pub fn forget(&mut self, v: ValueId) {
        self.types.remove(&v);
        self.values.remove(&v);
    }

    /// Contradictions found so far (and clears the list).
    pub fn take_contradictions(&mut self) -> Vec<Contradiction> {
        std::mem::take(&mut self.contradictions)
    }

    /// Runs `n`'s rule and records what it learnt. Returns `None` when no
    /// rule knows the op, else one entry per output slot: the new type when
    /// it is strictly more precise than what was known (for the caller to
    /// write), `None` when nothing improved.
    pub fn infer(&mut self, g: &Graph, n: NodeId) -> Option<Vec<Option<TypeInfo>>> {
        let (types, vals) = self.infer_raw(g, n)?;
        let node = g.node(n);
        let mut better = Vec::with_capacity(types.len());
        for (slot, t) in types.into_iter().enumerate() {
            let Some(v) = node.output(slot) else {
                better.push(None);
                continue;
            };
            if let Some(Some(p)) = vals.get(slot)
                && p.elems.len() <= MAX_PVAL
            {
                self.values.insert(v, p.clone());
            }
            let Some(t) = t else {
                better.push(None);
                continue;
            };
            let old = self.type_of(g, v);
            match merge(old.as_ref(), &t) {
                Merge::Better(m) => {
                    self.types.insert(v, m.clone());
                    better.push(Some(m));
                }
                Merge::Same => better.push(None),
                Merge::Contradiction => {
                    if let Some(declared) = old {
                        self.contradictions.push(Contradiction { value: v, declared, inferred: t });
                    }
                    better.push(None);
                }
            }
        }
        Some(better)
    }

    /// Runs `n`'s rule and records its output types over what the graph
    /// declares: for bounding sizes, where a declaration that lies (a small
    /// shape on a huge tensor) must not hide what the node computes. Returns
    /// the type of each output slot afterwards (`None` where unknown), or
    /// `None` when no rule knows the op.
    pub(crate) fn infer_over_declared(&mut self, g: &Graph, n: NodeId) -> Option<Vec<Option<TypeInfo>>> {
        let (types, vals) = self.infer_raw(g, n)?;
        let node = g.node(n);
        let mut out = Vec::with_capacity(types.len());
        for (slot, t) in types.into_iter().enumerate() {
            let Some(v) = node.output(slot) else {
                out.push(None);
                continue;
            };
            if let Some(Some(p)) = vals.get(slot)
                && p.elems.len() <= MAX_PVAL
            {
                self.values.insert(v, p.clone());
            }
            match t {
                Some(t) if t.shape.as_ref().is_some_and(|s| s.as_known().is_some()) => {
                    self.types.insert(v, t.clone());
                    out.push(Some(t));
                }
                Some(t) => {
                    if let Merge::Better(m) = merge(self.type_of(g, v).as_ref(), &t) {
                        self.types.insert(v, m);
                    }
                    out.push(self.type_of(g, v));
                }
                None => out.push(self.type_of(g, v)),
            }
        }
        Some(out)
    }

    /// The rule's raw output (types and partial values) without recording it.
    pub(crate) fn infer_raw(&self, g: &Graph, n: NodeId) -> Option<NodeFacts> {
        let node = g.node(n);
        let def = op_def(node.domain(), node.op_type())?;
        let domain = if node.domain() == "ai.onnx" { "" } else { node.domain() };
        let k = node.outputs().len();
        let mut cx = Cx {
            g,
            node,
            opset: g.opset(domain).unwrap_or(if domain.is_empty() { 13 } else { 1 }),
            facts: self,
            out: vec![None; k],
            vals: vec![None; k],
        };
        let _ = (def.infer)(&mut cx);
        Some((cx.out, cx.vals))
    }
}

enum Merge {
    Better(TypeInfo),
    Same,
    Contradiction,
}

fn score(t: &TypeInfo) -> usize {
    let dims = t.shape.as_ref().map(|s| {
        1 + s
            .0
            .iter()
            .map(|d| match d {
                Dim::Known(_) => 2,
                Dim::Sym(_) => 1,
                Dim::Unknown => 0,
            })
            .sum::<usize>()
    });
    usize::from(t.dtype.is_some()) + dims.unwrap_or(0)
}

/// Combines a declared type with an inferred one: known beats symbolic
/// beats unknown; a declared symbol is kept over an inferred one.
fn merge(old: Option<&TypeInfo>, new: &TypeInfo) -> Merge {
    let Some(old) = old else {
        return if score(new) > 0 { Merge::Better(new.clone()) } else { Merge::Same };
    };
    let dtype = match (old.dtype, new.dtype) {
        (Some(a), Some(b)) if a != b => return Merge::Contradiction,
        (a, b) => a.or(b),
    };
    let shape = match (&old.shape, &new.shape) {
        (Some(a), Some(b)) => {
            if a.rank() != b.rank() {
                return Merge::Contradiction;
            }
            let mut out = Vec::with_capacity(a.rank());
            for (x, y) in a.0.iter().zip(&b.0) {
                out.push(match (x, y) {
                    (Dim::Known(p), Dim::Known(q)) if p != q => return Merge::Contradiction,
                    (Dim::Known(_), _) | (Dim::Sym(_), Dim::Sym(_) | Dim::Unknown) => x.clone(),
                    _ => y.clone(),
                });
            }
            Some(Shape(out))
        }
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    let m = TypeInfo { dtype, shape };
    if score(&m) > score(old) { Merge::Better(m) } else { Merge::Same }
}

/// True for the integer types (and bool) partial values are made of.
pub(crate) fn is_int(d: DataType) -> bool {
    use DataType::*;
    matches!(d, I8 | I16 | I32 | I64 | U8 | U16 | U32 | U64 | Bool)
}

/// The data of `v` when it is a compile-time constant of at most `limit`
/// elements (large weights are not copied).
pub(crate) fn small_constant(g: &Graph, v: ValueId, limit: usize) -> Option<Tensor> {
    match g.value(v).def() {
        ValueDef::Initializer if !g.is_graph_input(v) => g.initializer(v).filter(|t| t.numel() <= limit).cloned(),
        ValueDef::Node(p, 0) if g.node(p).is_op("Constant") => g.constant(v).filter(|t| t.numel() <= limit),
        _ => None,
    }
}

/// What a rule sees of one node: its inputs' types and values, its
/// attributes, and the outputs it fills in.
pub struct Cx<'a> {
    g: &'a Graph,
    node: &'a Node,
    opset: i64,
    facts: &'a Facts,
    out: Vec<Option<TypeInfo>>,
    vals: Vec<Option<PVal>>,
}

impl<'a> Cx<'a> {
    /// The node.
    pub fn node(&self) -> &'a Node {
        self.node
    }

    /// The graph.
    pub fn graph(&self) -> &'a Graph {
        self.g
    }

    /// The opset version of the node's domain.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Number of input slots (omitted optional inputs included).
    pub fn num_inputs(&self) -> usize {
        self.node.inputs().len()
    }

    /// Number of output slots.
    pub fn num_outputs(&self) -> usize {
        self.node.outputs().len()
    }

    /// True when input `i` is given.
    pub fn has(&self, i: usize) -> bool {
        self.node.input(i).is_some()
    }

    /// The type of input `i`.
    pub fn ty(&self, i: usize) -> Option<TypeInfo> {
        self.node.input(i).and_then(|v| self.facts.type_of(self.g, v))
    }

    /// The element type of input `i`.
    pub fn dtype(&self, i: usize) -> Option<DataType> {
        self.ty(i).and_then(|t| t.dtype)
    }

    /// The dims of input `i` (its rank is known).
    pub fn dims(&self, i: usize) -> Option<Vec<Dim>> {
        self.ty(i).and_then(|t| t.shape).map(|s| s.0)
    }

    /// The partial value of input `i`.
    pub fn value(&self, i: usize) -> Option<PVal> {
        self.node.input(i).and_then(|v| self.facts.value_of(self.g, v))
    }

    /// The integers of input `i`, when every one is known.
    pub fn ints(&self, i: usize) -> Option<Vec<i64>> {
        self.value(i).and_then(|p| p.known())
    }

    /// The numbers of a constant input `i` as f64 (floats or integers).
    pub fn floats(&self, i: usize) -> Option<Vec<f64>> {
        let t = small_constant(self.g, self.node.input(i)?, MAX_CONST_READ)?;
        match t.dtype()? {
            DataType::F64 => t.to_vec::<f64>().ok(),
            _ => t.to_f32_vec().ok().map(|v| v.into_iter().map(f64::from).collect()),
        }
    }

    /// A constant input `i` of at most `limit` elements.
    pub fn constant(&self, i: usize, limit: usize) -> Option<Tensor> {
        small_constant(self.g, self.node.input(i)?, limit)
    }

    /// An `INT` attribute.
    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.node.attr_int(name)
    }

    /// An `INTS` attribute.
    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.node.attr_ints(name).map(<[i64]>::to_vec)
    }

    /// A `STRING` attribute.
    pub fn attr_str(&self, name: &str) -> Option<&'a str> {
        self.node.attr_str(name)
    }

    /// Sets output `slot`'s element type and/or dims (fields left `None` keep
    /// what was set before). A negative dim becomes unknown.
    pub fn set(&mut self, slot: usize, dtype: Option<DataType>, dims: Option<Vec<Dim>>) {
        let Some(o) = self.out.get_mut(slot) else { return };
        let t = o.get_or_insert_with(TypeInfo::default);
        if dtype.is_some() {
            t.dtype = dtype;
        }
        if let Some(d) = dims {
            let d = d.into_iter().map(|x| if matches!(x, Dim::Known(k) if k < 0) { Dim::Unknown } else { x });
            t.shape = Some(Shape(d.collect()));
        }
    }

    /// Sets output `slot`'s partial value (and its rank-0/1 shape).
    pub fn set_value(&mut self, slot: usize, p: PVal) {
        let dims = if p.scalar { vec![] } else { vec![Dim::Known(p.elems.len() as i64)] };
        self.set(slot, None, Some(dims));
        if let Some(o) = self.vals.get_mut(slot) {
            *o = Some(p);
        }
    }

    /// The type set so far for output `slot`.
    pub fn output(&self, slot: usize) -> Option<&TypeInfo> {
        self.out.get(slot).and_then(Option::as_ref)
    }
}
