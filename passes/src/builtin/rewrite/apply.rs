//! Replacing a match by the rule's `to` lines.
//!
//! The new nodes go right before the root's node: everything they read
//! (pattern inputs, matched intermediates) is computed before it, and
//! everything that read the root comes after it, so the order stays
//! topological. The result takes the root's name, readers and value_info
//! (a graph output keeps its name); new intermediates are named after the
//! root and get no type (`infer-shapes` can add one). Matched nodes nothing
//! reads any more are removed, consumers first, then the initializers only
//! they read.

use std::collections::HashMap;

use qforge_ir::proto::AttributeProto;
use qforge_ir::{Graph, InsertAt, NewNode, ValueId};

use super::matcher::Match;
use super::rule::Rule;
use crate::context::PassError;
use crate::util::{describe, remove_if_unused};

/// `a` with a `$name` reference replaced by the bound value.
fn substitute(a: &AttributeProto, bound: &HashMap<String, AttributeProto>) -> AttributeProto {
    match a.ref_attr_name.as_deref().and_then(|v| bound.get(v)) {
        Some(b) => AttributeProto { name: a.name.clone(), ..b.clone() },
        None => a.clone(),
    }
}

/// Rewrites the match `m` of `rule`.
pub fn apply(rule: &Rule, g: &mut Graph, m: &Match) -> Result<(), PassError> {
    let root = m.values[&rule.root];
    let root_node = *m.nodes.last().expect("a match has nodes");
    let root_name = g.value_name(root).to_string();
    let base = match g.node(root_node).name() {
        "" => root_name.clone(),
        name => name.to_string(),
    };
    let what = format!("rule `{}` at {}", rule.name(), describe(g, root_node));
    let ir = |e| PassError::ir(what.clone(), e);
    let was_output = g.is_graph_output(root);
    let ty = if was_output { None } else { g.type_info(root) };

    let to = &rule.to.graph;
    let mut map: HashMap<ValueId, ValueId> = rule.to_inputs.iter().map(|&(t, f)| (t, m.values[&f])).collect();
    let to_nodes: Vec<_> = to.nodes().collect();
    for (i, &tn) in to_nodes.iter().enumerate() {
        let node = to.node(tn);
        let last = i + 1 == to_nodes.len();
        if !matches!(node.domain(), "" | "ai.onnx") && g.opset(node.domain()).is_none() {
            // A domain the model does not import yet (com.microsoft): its first version.
            g.set_opset(node.domain(), 1);
        }
        let outputs: Vec<String> = node
            .outputs()
            .iter()
            .map(|o| match o {
                None => String::new(),
                Some(_) if last => root_name.clone(),
                Some(v) => format!("{root_name}/{}", to.value_name(*v)),
            })
            .collect();
        let name = match node.outputs().iter().flatten().next() {
            Some(_) if last => format!("{base}/{}", rule.name()),
            Some(v) => format!("{base}/{}/{}", rule.name(), to.value_name(*v)),
            None => format!("{base}/{}/{}", rule.name(), node.op_type()),
        };
        let new = NewNode {
            op_type: node.op_type().to_string(),
            domain: node.domain().to_string(),
            name,
            inputs: node.inputs().iter().map(|i| i.map(|v| map[&v])).collect(),
            outputs,
            attrs: node.attrs().iter().map(|a| substitute(a, &m.attrs)).collect(),
        };
        let n = g.insert_node(InsertAt::Before(root_node), new).map_err(ir)?;
        for (slot, o) in node.outputs().iter().enumerate() {
            if let (Some(o), Some(v)) = (o, g.node(n).output(slot)) {
                map.insert(*o, v);
            }
        }
    }
    let result = map[&rule.result];

    // The root's readers (and its graph-output name) move to the result.
    let old = g.remove_node(root_node);
    for &v in old.outputs().iter().flatten().filter(|&&v| v != root) {
        g.remove_value(v).map_err(ir)?;
    }
    g.replace_value(root, result).map_err(ir)?;
    if !was_output {
        g.rename_value(result, &root_name).map_err(ir)?;
        if let Some(ty) = ty {
            g.set_type(result, &ty);
        }
    }

    for &n in m.nodes[..m.nodes.len() - 1].iter().rev() {
        let outs: Vec<ValueId> = g.node(n).outputs().iter().flatten().copied().collect();
        if outs.iter().any(|&v| g.reader_count(v) > 0) {
            continue; // `to` reads it
        }
        g.remove_node(n);
        for v in outs {
            g.remove_value(v).map_err(ir)?;
        }
    }
    remove_if_unused(g, rule.inputs.iter().map(|(p, _)| m.values[p]));
    Ok(())
}
