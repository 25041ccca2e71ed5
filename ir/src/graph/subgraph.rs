//! Subgraphs (If/Loop/Scan bodies) stay as `GraphProto`s inside their node's
//! attributes: qforge does not rewrite inside them. What the outer graph must
//! know is which outer tensors they read by name ("captures"), so those count
//! as uses and are never deleted or renamed behind the subgraph's back.

use std::collections::HashSet;

use crate::proto::{GraphProto, NodeProto};

/// Outer-scope names that the subgraphs in `node`'s attributes read, in
/// first-seen order.
pub(crate) fn captured_names(node: &NodeProto) -> Vec<String> {
    let mut out = Vec::new();
    for a in &node.attribute {
        for g in a.g.iter().chain(&a.graphs) {
            for n in free_names(g) {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
    }
    out
}

fn defined_names(g: &GraphProto) -> HashSet<&str> {
    let mut d: HashSet<&str> = HashSet::new();
    d.extend(g.input.iter().map(|i| i.name()));
    d.extend(g.initializer.iter().map(|t| t.name()));
    d.extend(g.sparse_initializer.iter().filter_map(|s| s.values.as_ref()).map(|t| t.name()));
    for n in &g.node {
        d.extend(n.output.iter().map(String::as_str));
    }
    d
}

/// Names read in `g` (or its nested subgraphs) that `g` does not define.
fn free_names(g: &GraphProto) -> Vec<String> {
    let defined = defined_names(g);
    let mut out: Vec<String> = Vec::new();
    let add = |name: &str, out: &mut Vec<String>| {
        if !name.is_empty() && !defined.contains(name) && !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    };
    for n in &g.node {
        for i in &n.input {
            add(i, &mut out);
        }
        for c in captured_names(n) {
            add(&c, &mut out);
        }
    }
    for o in &g.output {
        add(o.name(), &mut out);
    }
    out
}

/// Renames the captured outer name `from` to `to` in every subgraph of
/// `node`, stopping where a subgraph defines `from` itself (shadowing).
pub(crate) fn rename_captured(node: &mut NodeProto, from: &str, to: &str) {
    for a in &mut node.attribute {
        for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
            rename_free(g, from, to);
        }
    }
}

fn rename_free(g: &mut GraphProto, from: &str, to: &str) {
    if defined_names(g).contains(from) {
        return;
    }
    for n in &mut g.node {
        for i in &mut n.input {
            if i == from {
                *i = to.to_string();
            }
        }
        rename_captured(n, from, to);
    }
    for o in &mut g.output {
        if o.name() == from {
            o.name = Some(to.to_string());
        }
    }
}
