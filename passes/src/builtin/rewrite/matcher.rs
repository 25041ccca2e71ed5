//! Matching a rule's pattern at one node of the graph.
//!
//! Anchored at the root: the candidate node stands for the pattern's last
//! line, and the pattern is followed backwards through the producers of
//! its inputs, so each pattern node has at most one candidate and matching
//! costs the pattern's size. A node matches a pattern line when op, domain,
//! inputs (arity and omitted slots) and attributes agree: the attributes it
//! has must be exactly those the line lists, since an unlisted one (a
//! `ceil_mode`, a `perm`) could change what the node computes and the
//! replacement would drop it. A miss says why, for `explain`.

use std::collections::HashMap;

use qforge_ir::proto::AttributeProto;
use qforge_ir::proto::attribute_proto::AttributeType;
use qforge_ir::{AttrExt, Graph, NodeId, ValueDef, ValueId};

use super::rule::{Bind, Rule};
use crate::util::describe;

/// Where a rule matched.
#[derive(Debug, Clone)]
pub struct Match {
    /// The graph node of each pattern node, in pattern order (the last is the root's).
    pub nodes: Vec<NodeId>,
    /// The graph value of each pattern value.
    pub values: HashMap<ValueId, ValueId>,
    /// The value of each `$name` variable.
    pub attrs: HashMap<String, AttributeProto>,
}

struct Matcher<'a> {
    rule: &'a Rule,
    g: &'a Graph,
    nodes: HashMap<NodeId, NodeId>,
    values: HashMap<ValueId, ValueId>,
    attrs: HashMap<String, AttributeProto>,
}

fn same_domain(a: &str, b: &str) -> bool {
    fn norm(d: &str) -> &str {
        if d == "ai.onnx" { "" } else { d }
    }
    norm(a) == norm(b)
}

fn trimmed(v: &[Option<ValueId>]) -> &[Option<ValueId>] {
    let n = v.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
    &v[..n]
}

/// Whether a graph attribute has the value a pattern attribute writes. An
/// integer written in the rule matches the same float (`alpha=1` and 1.0).
pub(super) fn attr_eq(pattern: &AttributeProto, actual: &AttributeProto) -> bool {
    use AttributeType as T;
    match (pattern.kind(), actual.kind()) {
        (T::Int, T::Int) => pattern.i() == actual.i(),
        (T::Float, T::Float) => pattern.f() == actual.f(),
        (T::Int, T::Float) => pattern.i() as f32 == actual.f(),
        (T::String, T::String) => pattern.s() == actual.s(),
        (T::Ints, T::Ints) => pattern.ints == actual.ints,
        (T::Floats, T::Floats) => pattern.floats == actual.floats,
        (T::Ints, T::Floats) => {
            pattern.ints.len() == actual.floats.len()
                && pattern.ints.iter().zip(&actual.floats).all(|(&i, &f)| i as f32 == f)
        }
        (T::Strings, T::Strings) => pattern.strings == actual.strings,
        (T::Tensor, T::Tensor) => match (pattern.as_tensor(), actual.as_tensor()) {
            (Some(a), Some(b)) => a.dims() == b.dims() && a.dtype() == b.dtype() && a.digest() == b.digest(),
            _ => false,
        },
        (a, b) if a == b => {
            let strip = |x: &AttributeProto| AttributeProto { name: None, doc_string: None, ..x.clone() };
            strip(pattern) == strip(actual)
        }
        _ => false,
    }
}

impl Matcher<'_> {
    fn pattern_line(&self, p: NodeId) -> String {
        format!("`from` line {}", self.rule.line_of(p))
    }

    /// Matches pattern node `p` at graph node `n`, then its producers.
    fn node(&mut self, p: NodeId, n: NodeId) -> Result<(), String> {
        if let Some(&already) = self.nodes.get(&p) {
            return if already == n {
                Ok(())
            } else {
                Err(format!(
                    "{} would be two nodes ({} and {})",
                    self.pattern_line(p),
                    describe(self.g, already),
                    describe(self.g, n)
                ))
            };
        }
        if self.nodes.values().any(|&x| x == n) {
            return Err(format!("{} would stand for two lines of the pattern", describe(self.g, n)));
        }
        let (pg, g) = (self.rule.pattern(), self.g);
        let (pn, gn) = (pg.node(p), g.node(n));
        if pn.op_type() != gn.op_type() || !same_domain(pn.domain(), gn.domain()) {
            return Err(format!("{} is not the {} of {}", describe(g, n), pn.op_type(), self.pattern_line(p)));
        }
        self.nodes.insert(p, n);
        self.attributes(p, n)?;
        self.outputs(p, n)?;
        let (pins, gins) = (trimmed(pn.inputs()), trimmed(gn.inputs()));
        if pins.len() != gins.len() {
            return Err(format!(
                "{} has {} input(s), {} has {}",
                describe(g, n),
                gins.len(),
                self.pattern_line(p),
                pins.len()
            ));
        }
        for (slot, (pi, gi)) in pins.iter().zip(gins).enumerate() {
            match (pi, gi) {
                (None, None) => {}
                (Some(_), None) | (None, Some(_)) => {
                    return Err(format!("input {slot} of {} is omitted on one side only", describe(g, n)));
                }
                (Some(pv), Some(gv)) => self.input(*pv, *gv, slot, n)?,
            }
        }
        Ok(())
    }

    fn bind(&mut self, pv: ValueId, gv: ValueId) -> Result<(), String> {
        match self.values.insert(pv, gv) {
            Some(prev) if prev != gv => Err(format!(
                "%{} would be both \"{}\" and \"{}\"",
                self.rule.pattern().value_name(pv),
                self.g.value_name(prev),
                self.g.value_name(gv)
            )),
            _ => Ok(()),
        }
    }

    fn input(&mut self, pv: ValueId, gv: ValueId, slot: usize, n: NodeId) -> Result<(), String> {
        let (pg, g) = (self.rule.pattern(), self.g);
        match pg.value(pv).def() {
            ValueDef::Node(pp, pslot) => {
                let Some((gp, gslot)) = g.producer(gv) else {
                    return Err(format!(
                        "input {slot} of {} is \"{}\", which no node computes ({} wants a {})",
                        describe(g, n),
                        g.value_name(gv),
                        self.pattern_line(pp),
                        pg.node(pp).op_type()
                    ));
                };
                if gslot != pslot {
                    return Err(format!("\"{}\" is output {gslot} of its node, not {pslot}", g.value_name(gv)));
                }
                self.bind(pv, gv)?;
                self.node(pp, gp)
            }
            _ => {
                if self.rule.bind_of(pv) == Some(Bind::Initializer)
                    && (g.value(gv).def() != ValueDef::Initializer || g.is_graph_input(gv))
                {
                    return Err(format!(
                        "@{} must be an initializer, and \"{}\" (input {slot} of {}) is not one",
                        pg.value_name(pv),
                        g.value_name(gv),
                        describe(g, n)
                    ));
                }
                self.bind(pv, gv)
            }
        }
    }

    fn attributes(&mut self, p: NodeId, n: NodeId) -> Result<(), String> {
        let (pn, gn) = (self.rule.pattern().node(p), self.g.node(n));
        for pa in pn.attrs() {
            let Some(ga) = gn.attr(pa.name()) else {
                return Err(format!("{} has no attribute `{}`", describe(self.g, n), pa.name()));
            };
            match pa.ref_attr_name.as_deref() {
                Some(var) => match self.attrs.get(var) {
                    Some(bound) if !attr_eq(bound, ga) => {
                        return Err(format!("`${var}` would take two values at {}", describe(self.g, n)));
                    }
                    Some(_) => {}
                    None => {
                        self.attrs.insert(var.to_string(), ga.clone());
                    }
                },
                None if !attr_eq(pa, ga) => {
                    return Err(format!(
                        "attribute `{}` of {} differs from {}",
                        pa.name(),
                        describe(self.g, n),
                        self.pattern_line(p)
                    ));
                }
                None => {}
            }
        }
        if let Some(extra) = gn.attrs().iter().find(|a| pn.attr(a.name()).is_none()) {
            return Err(format!(
                "{} has attribute `{}`, which {} does not list",
                describe(self.g, n),
                extra.name(),
                self.pattern_line(p)
            ));
        }
        Ok(())
    }

    fn outputs(&mut self, p: NodeId, n: NodeId) -> Result<(), String> {
        let (pouts, gouts) = (self.rule.pattern().node(p).outputs(), self.g.node(n).outputs());
        for (slot, pv) in pouts.iter().enumerate() {
            if let Some(pv) = pv {
                let Some(Some(gv)) = gouts.get(slot) else {
                    return Err(format!("{} has no output {slot}", describe(self.g, n)));
                };
                self.bind(*pv, *gv)?;
            }
        }
        Ok(())
    }

    /// Outputs of matched nodes other than the root are removed with the
    /// match: nothing outside it may read them.
    fn contained(&self, root: NodeId, root_value: ValueId) -> Result<(), String> {
        let g = self.g;
        for &n in self.nodes.values() {
            for &v in g.node(n).outputs().iter().flatten() {
                if n == root && v == root_value {
                    continue;
                }
                if g.is_graph_output(v) {
                    return Err(format!("\"{}\" ({}) is a graph output", g.value_name(v), describe(g, n)));
                }
                if let Some(u) = g.uses(v).iter().find(|u| !self.nodes.values().any(|&m| m == u.node)) {
                    return Err(format!(
                        "\"{}\" of {} is also read by {}, outside the match",
                        g.value_name(v),
                        describe(g, n),
                        describe(g, u.node)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Matches `rule` with its root at graph node `n`, or says why not.
pub fn match_at(rule: &Rule, g: &Graph, n: NodeId) -> Result<Match, String> {
    let mut m = Matcher { rule, g, nodes: HashMap::new(), values: HashMap::new(), attrs: HashMap::new() };
    m.node(rule.root_node(), n)?;
    let root_value = m.values[&rule.root];
    m.contained(n, root_value)?;
    let nodes = rule.from_nodes.iter().map(|p| m.nodes[p]).collect();
    Ok(Match { nodes, values: m.values, attrs: m.attrs })
}
