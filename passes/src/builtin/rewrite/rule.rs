//! A rule as written in YAML, and the checked form the matcher uses.
//!
//! Everything that can be wrong with a rule is found here, once, when the
//! pipeline is loaded, and located in the rule's text: a rule that parses
//! cannot fail halfway through a rewrite.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use qforge_ir::{Fragment, Graph, IrError, NodeId, ValueDef, ValueId, parse_fragment};

/// One rule, as written in the pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Names the rule in counters and errors.
    pub name: String,
    /// The pattern, node lines in the text IR.
    pub from: String,
    /// The replacement, node lines in the text IR.
    pub to: String,
    /// The replacement only approximates the pattern (not held to 1e-5 by
    /// `--check-numerics`).
    #[serde(default)]
    pub approximate: bool,
}

/// What a pattern input may bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// `%x`: any value.
    Any,
    /// `@w`: an initializer (a constant: not also a graph input).
    Initializer,
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(super) spec: RuleSpec,
    /// The pattern; its graph inputs are the pattern inputs.
    pub(super) from: Fragment,
    /// The pattern's nodes in order; the last one defines the root.
    pub(super) from_nodes: Vec<NodeId>,
    /// The root (the last line's value).
    pub(super) root: ValueId,
    /// Pattern inputs and what they may bind.
    pub(super) inputs: Vec<(ValueId, Bind)>,
    /// The replacement.
    pub(super) to: Fragment,
    /// The replacement's result (its last line's value).
    pub(super) result: ValueId,
    /// Each value `to` reads without defining it, with the `from` value of
    /// the same name.
    pub(super) to_inputs: Vec<(ValueId, ValueId)>,
}

/// What is wrong with a rule, and where in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The field: `name`, `from` or `to`.
    pub field: &'static str,
    /// 1-based line in the field's text; 0 for the field as a whole.
    pub line: usize,
    /// 1-based column in that line.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl RuleError {
    fn at(field: &'static str, line: usize, column: usize, message: impl Into<String>) -> RuleError {
        RuleError { field, line, column, message: message.into() }
    }

    /// The error as one line for an error that has no file position.
    pub fn describe(&self, rule: &str) -> String {
        if self.line == 0 {
            format!("rule `{rule}`, `{}`: {}", self.field, self.message)
        } else {
            format!("rule `{rule}`, `{}` line {}, column {}: {}", self.field, self.line, self.column, self.message)
        }
    }
}

impl TryFrom<RuleSpec> for Rule {
    type Error = String;
    fn try_from(spec: RuleSpec) -> Result<Rule, String> {
        let name = spec.name.clone();
        Rule::parse(spec).map_err(|e| e.describe(&name))
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.spec.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rule, D::Error> {
        Rule::try_from(RuleSpec::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Parses one side of a rule; errors are located in it.
fn fragment(field: &'static str, text: &str) -> Result<Fragment, RuleError> {
    let f = parse_fragment(text).map_err(|e| match e {
        IrError::Parse { line, column, message } => RuleError::at(field, line, column, message),
        other => RuleError::at(field, 0, 0, other.to_string()),
    })?;
    let n = f.graph.node_count();
    if n == 0 {
        return Err(RuleError::at(field, 0, 0, "no node lines"));
    }
    for (i, node) in f.graph.nodes().enumerate() {
        let typed = f.graph.node(node).outputs().iter().flatten().any(|&v| f.graph.type_info(v).is_some());
        if typed {
            let line = f.lines[i];
            return Err(RuleError::at(field, line, 1, "types are not part of a rule; remove the `: …` after the node"));
        }
    }
    Ok(f)
}

/// The last line's only value, and the nodes that do not lead to it
/// (every line must feed the result, or it has no meaning).
fn result(field: &'static str, f: &Fragment, what: &str) -> Result<(Vec<NodeId>, ValueId), RuleError> {
    let nodes: Vec<NodeId> = f.graph.nodes().collect();
    let last = *nodes.last().expect("fragment has nodes");
    let outs = f.graph.node(last).outputs();
    let line = *f.lines.last().expect("one line per node");
    let value = match outs {
        [Some(v)] => *v,
        _ => {
            return Err(RuleError::at(
                field,
                line,
                1,
                format!(
                    "the last line defines {what}, so it must define exactly one value (it defines {})",
                    outs.len()
                ),
            ));
        }
    };
    let mut reach: HashSet<NodeId> = HashSet::from([last]);
    let mut stack = vec![last];
    while let Some(n) = stack.pop() {
        for v in f.graph.node(n).inputs().iter().flatten() {
            if let Some(p) = f.graph.producer_node(*v)
                && reach.insert(p)
            {
                stack.push(p);
            }
        }
    }
    if let Some(i) = nodes.iter().position(|n| !reach.contains(n)) {
        return Err(RuleError::at(
            field,
            f.lines[i],
            1,
            format!("this line does not lead to {what} (the last line's value): every line must feed a later one"),
        ));
    }
    Ok((nodes, value))
}

/// `$name` variables of a fragment's attributes, with the node line.
fn variables(f: &Fragment) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, n) in f.graph.nodes().enumerate() {
        for a in f.graph.node(n).attrs() {
            if let Some(v) = a.ref_attr_name.as_deref() {
                out.push((v.to_string(), f.lines[i]));
            }
        }
    }
    out
}

/// Column of `needle` in line `line` of `text` (1-based), or 1.
fn column_of(text: &str, line: usize, needle: &str) -> usize {
    let l = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    l.find(needle).map(|b| l[..b].chars().count() + 1).unwrap_or(1)
}

impl Rule {
    /// Parses and checks a rule.
    pub fn parse(spec: RuleSpec) -> Result<Rule, RuleError> {
        if spec.name.trim().is_empty() {
            return Err(RuleError::at("name", 0, 0, "a rule needs a name (counters and errors use it)"));
        }
        let from = fragment("from", &spec.from)?;
        let (from_nodes, root) = result("from", &from, "the root")?;
        let inputs =
            from.free.iter().map(|f| (f.value, if f.sigil == '@' { Bind::Initializer } else { Bind::Any })).collect();
        let to = fragment("to", &spec.to)?;
        let (_, result) = result("to", &to, "the result")?;
        let mut to_inputs = Vec::new();
        for f in &to.free {
            let name = to.graph.value_name(f.value);
            let at = |m: String| RuleError::at("to", f.line, f.column, m);
            match from.graph.find_value(name) {
                None => return Err(at(format!("`{}{name}` is not bound by `from`", f.sigil))),
                Some(v) if v == root => {
                    return Err(at(format!(
                        "`%{name}` is the root of `from`: its readers move to the result, so `to` cannot read it"
                    )));
                }
                Some(v) => to_inputs.push((f.value, v)),
            }
        }
        let bound: BTreeSet<String> = variables(&from).into_iter().map(|v| v.0).collect();
        if let Some((v, line)) = variables(&to).into_iter().find(|v| !bound.contains(&v.0)) {
            let column = column_of(&spec.to, line, &format!("${v}"));
            return Err(RuleError::at("to", line, column, format!("`${v}` is not bound by `from`")));
        }
        Ok(Rule { spec, from, from_nodes, root, inputs, to, result, to_inputs })
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether the rule is marked approximate.
    pub fn approximate(&self) -> bool {
        self.spec.approximate
    }

    /// The pattern graph.
    pub(super) fn pattern(&self) -> &Graph {
        &self.from.graph
    }

    /// The line of pattern node `n` (for explanations).
    pub(super) fn line_of(&self, n: NodeId) -> usize {
        self.from_nodes.iter().position(|&x| x == n).map(|i| self.from.lines[i]).unwrap_or(0)
    }

    /// The root's node.
    pub(super) fn root_node(&self) -> NodeId {
        *self.from_nodes.last().expect("a rule has nodes")
    }

    /// What pattern input `v` may bind, or `None` when `v` is defined by the pattern.
    pub(super) fn bind_of(&self, v: ValueId) -> Option<Bind> {
        match self.from.graph.value(v).def() {
            ValueDef::Node(..) => None,
            _ => self.inputs.iter().find(|i| i.0 == v).map(|i| i.1),
        }
    }
}
