//! `qforge inspect`: what is in a model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use qforge_ir::{Graph, Model, PrintOptions, ValueDef};

/// Arguments of `qforge inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Also print the text IR.
    #[arg(long)]
    ir: bool,
    /// In the text IR, print tensors with up to N elements in full.
    #[arg(long, default_value_t = 16)]
    max_elements: usize,
    /// Run the IR verifier and list violations.
    #[arg(long)]
    verify: bool,
    /// List the nodes of the post-processing tail (no weighted op
    /// downstream), which insert-qdq keeps float by default; one per line.
    #[arg(long)]
    tail: bool,
}

/// Op type → count, sorted by count then name.
pub(crate) fn histogram(g: &Graph) -> Vec<(String, usize)> {
    let mut h: BTreeMap<String, usize> = BTreeMap::new();
    for n in g.nodes() {
        let node = g.node(n);
        let key = if node.domain().is_empty() {
            node.op_type().to_string()
        } else {
            format!("{}::{}", node.domain(), node.op_type())
        };
        *h.entry(key).or_default() += 1;
    }
    let mut v: Vec<_> = h.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn summary(m: &Model) -> String {
    let g = &m.graph;
    let mut s = String::new();
    let (p, pv) = m.producer();
    let opsets: Vec<String> = g
        .opset_imports()
        .iter()
        .map(|o| format!("{}={}", if o.domain().is_empty() { "ai.onnx" } else { o.domain() }, o.version()))
        .collect();
    s += &format!(
        "graph {:?}: IR version {}, opsets {}, producer {p} {pv}\n",
        g.name(),
        m.ir_version(),
        opsets.join(" ")
    );
    for p in g.inputs() {
        if g.value(p.value).def() == ValueDef::Input {
            let t = g.type_info(p.value).map(|t| t.to_string()).unwrap_or_else(|| "?".into());
            s += &format!("  input  {}: {t}\n", g.value_name(p.value));
        }
    }
    for p in g.outputs() {
        let t = g.type_info(p.value).map(|t| t.to_string()).unwrap_or_else(|| "?".into());
        s += &format!("  output {}: {t}\n", g.value_name(p.value));
    }
    let bytes: usize = g
        .initializers()
        .iter()
        .filter_map(|&v| g.initializer(v))
        .map(|t| t.numel() * t.dtype().and_then(|d| d.size()).unwrap_or(0))
        .sum();
    s += &format!(
        "  {} nodes, {} initializers ({:.2} MB), {} model functions, {} metadata entries\n",
        g.node_count(),
        g.initializers().len(),
        bytes as f64 / 1e6,
        m.function_count(),
        m.metadata().len()
    );
    s += "  ops:";
    for (op, n) in histogram(g) {
        s += &format!(" {op}×{n}");
    }
    s.push('\n');
    s
}

/// Runs the command.
pub fn run(a: InspectArgs) -> Result<()> {
    let m = qforge_ir::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    if a.tail {
        let tail = qforge_passes::insert_qdq::tail_nodes(&m.graph);
        for n in m.graph.nodes().filter(|n| tail.contains(n)) {
            println!("{}", m.graph.node(n).name());
        }
        return Ok(());
    }
    print!("{}", summary(&m));
    let verdict = a.verify.then(|| qforge_ir::verify(&m.graph));
    if let Some(Ok(())) = &verdict {
        println!("  verifier: ok");
    }
    if a.ir {
        print!(
            "{}",
            qforge_ir::print_graph(&m.graph, &PrintOptions { max_elements: a.max_elements, initializers: true })
        );
    }
    // A model the verifier rejects is a failed check: exit 1, so scripts see it.
    if let Some(Err(e)) = verdict {
        bail!("{}: {e}", a.model.display());
    }
    Ok(())
}
