//! `qforge idempotent-chains MODEL`: what `collapse-idempotent` would do,
//! without doing it.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `qforge idempotent-chains`.
#[derive(Debug, clap::Args)]
pub struct ChainsArgs {
    /// The ONNX model.
    model: PathBuf,
    /// The op to look for.
    #[arg(long, default_value = "Relu")]
    op: String,
}

/// Prints each `F(F(x))` pair, outer then inner node, and their number.
pub fn run(a: ChainsArgs) -> anyhow::Result<()> {
    let model = qforge::ir::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let g = &model.graph;
    let mut found = 0;
    for n in g.nodes() {
        let node = g.node(n);
        let inner = node.input(0).and_then(|x| g.producer_node(x));
        if let Some(inner) = inner.filter(|&i| node.is_op(&a.op) && g.node(i).is_op(&a.op)) {
            println!("{} reads {}", node.name(), g.node(inner).name());
            found += 1;
        }
    }
    println!("{found} {op}({op}(x)) chain(s)", op = a.op);
    Ok(())
}
