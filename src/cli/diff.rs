//! `qforge diff`: what changed between two models, structurally.
//!
//! Nodes are matched by name (then by output tensor names for unnamed
//! nodes); initializers by name with a data digest. The op histogram delta
//! comes first because it answers the usual question ("did all BN fold?").

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use qforge_ir::{Graph, NodeId, PrintOptions};

use super::inspect::histogram;

/// Arguments of `qforge diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The original model.
    a: PathBuf,
    /// The changed model.
    b: PathBuf,
    /// List at most N changed nodes per category.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

fn key(g: &Graph, n: NodeId) -> String {
    let node = g.node(n);
    if !node.name().is_empty() {
        return node.name().to_string();
    }
    let outs: Vec<&str> = node.outputs().iter().flatten().map(|&v| g.value_name(v)).collect();
    format!("<{}>", outs.join(","))
}

/// The node line without its types (shape inference should not show as a change).
fn body(g: &Graph, n: NodeId) -> String {
    let line = g.node_line(n, &PrintOptions { max_elements: 0, initializers: false });
    let line = line.split("  # ").next().unwrap_or(&line);
    match line.rfind(" : ") {
        Some(i) if !line[i..].contains('(') => line[..i].to_string(),
        _ => line.to_string(),
    }
}

/// Runs the command.
pub fn run(a: DiffArgs) -> Result<()> {
    let ma = qforge_ir::load(&a.a).with_context(|| format!("loading {}", a.a.display()))?;
    let mb = qforge_ir::load(&a.b).with_context(|| format!("loading {}", a.b.display()))?;
    let (ga, gb) = (&ma.graph, &mb.graph);
    println!("--- {} ({} nodes)\n+++ {} ({} nodes)", a.a.display(), ga.node_count(), a.b.display(), gb.node_count());

    let ha: BTreeMap<String, usize> = histogram(ga).into_iter().collect();
    let hb: BTreeMap<String, usize> = histogram(gb).into_iter().collect();
    let ops: BTreeSet<&String> = ha.keys().chain(hb.keys()).collect();
    let mut changed_ops = Vec::new();
    for op in ops {
        let (x, y) = (ha.get(op).copied().unwrap_or(0), hb.get(op).copied().unwrap_or(0));
        if x != y {
            changed_ops.push(format!("{op} {x} → {y} ({:+})", y as i64 - x as i64));
        }
    }
    println!("ops: {}", if changed_ops.is_empty() { "unchanged".into() } else { changed_ops.join(", ") });

    let na: BTreeMap<String, NodeId> = ga.nodes().map(|n| (key(ga, n), n)).collect();
    let nb: BTreeMap<String, NodeId> = gb.nodes().map(|n| (key(gb, n), n)).collect();
    let removed: Vec<&String> = na.keys().filter(|k| !nb.contains_key(*k)).collect();
    let added: Vec<&String> = nb.keys().filter(|k| !na.contains_key(*k)).collect();
    let changed: Vec<(&String, String, String)> = na
        .iter()
        .filter_map(|(k, &x)| nb.get(k).map(|&y| (k, body(ga, x), body(gb, y))))
        .filter(|(_, x, y)| x != y)
        .collect();
    let show = |title: &str, items: Vec<String>| {
        println!("{title}: {}", items.len());
        for i in items.iter().take(a.limit) {
            println!("  {i}");
        }
        if items.len() > a.limit {
            println!("  … {} more", items.len() - a.limit);
        }
    };
    show("nodes removed", removed.iter().map(|k| format!("- {k} ({})", ga.node(na[*k]).op_type())).collect());
    show("nodes added", added.iter().map(|k| format!("+ {k} ({})", gb.node(nb[*k]).op_type())).collect());
    show("nodes changed", changed.iter().map(|(k, x, y)| format!("~ {k}\n      - {x}\n      + {y}")).collect());

    let ia: BTreeMap<&str, u64> =
        ga.initializers().iter().filter_map(|&v| Some((ga.value_name(v), ga.initializer(v)?.digest()))).collect();
    let ib: BTreeMap<&str, u64> =
        gb.initializers().iter().filter_map(|&v| Some((gb.value_name(v), gb.initializer(v)?.digest()))).collect();
    let i_removed = ia.keys().filter(|k| !ib.contains_key(*k)).count();
    let i_added = ib.keys().filter(|k| !ia.contains_key(*k)).count();
    let i_changed = ia.iter().filter(|(k, d)| ib.get(*k).is_some_and(|e| e != *d)).count();
    println!("initializers: {i_removed} removed, {i_added} added, {i_changed} changed data");
    let sig = |g: &Graph| -> Vec<(String, Option<qforge_ir::TypeInfo>)> {
        g.runtime_inputs()
            .iter()
            .chain(g.outputs().iter().map(|p| &p.value))
            .map(|&v| (g.value_name(v).to_string(), g.type_info(v)))
            .collect()
    };
    let (sa, sb) = (sig(ga), sig(gb));
    let show_sig = |s: &[(String, Option<qforge_ir::TypeInfo>)]| -> String {
        s.iter()
            .map(|(n, t)| format!("{n}: {}", t.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "?".into())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // An unknown type on one side is a refinement (shape inference), not a change.
    let conflict = sa.len() != sb.len()
        || sa.iter().zip(&sb).any(|((na, ta), (nb, tb))| na != nb || matches!((ta, tb), (Some(x), Some(y)) if x != y));
    if conflict {
        println!("interface changed:\n  - {}\n  + {}", show_sig(&sa), show_sig(&sb));
    } else if sa != sb {
        println!("interface: unchanged (types refined: {})", show_sig(&sb));
    } else {
        println!("interface: unchanged");
    }
    Ok(())
}
