//! %y = F(F(%x)) => %y = F(%x), for an idempotent unary op F (Relu, Abs, …).
//!
//! Exact: these ops satisfy F(F(x)) = F(x) element by element. The outer
//! node reads the inner one's input; the inner node goes when nothing else
//! reads it.

use qforge::ir::Graph;
use qforge::passes::util::describe;
use qforge::passes::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};
use serde::{Deserialize, Serialize};

/// Unary ops with F(F(x)) = F(x).
const IDEMPOTENT: &[&str] = &["Relu", "Abs", "Ceil", "Floor", "Round", "Sign"];

/// Options of `collapse-idempotent` (the pass is its own options struct).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollapseIdempotent {
    /// The ops to collapse.
    pub ops: Vec<String>,
}

impl Default for CollapseIdempotent {
    fn default() -> Self {
        CollapseIdempotent { ops: vec!["Relu".into()] }
    }
}

impl PassOptions for CollapseIdempotent {
    const DOCS: &'static [(&'static str, &'static str)] =
        &[("ops", "ops to collapse, any of Relu, Abs, Ceil, Floor, Round, Sign (default [Relu])")];
}

register_pass!("collapse-idempotent", CollapseIdempotent, "%y = F(F(%x)) => %y = F(%x), F idempotent (Relu, …)");

impl Pass for CollapseIdempotent {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        if let Some(op) = self.ops.iter().find(|op| !IDEMPOTENT.contains(&op.as_str())) {
            return Err(PassError::msg(format!("ops: {op} is not idempotent (use {})", IDEMPOTENT.join(", "))));
        }
        let mut report = PassReport::default();
        for n in g.node_ids() {
            let node = g.node(n);
            let Some(op) = self.ops.iter().find(|op| node.is_op(op)) else { continue };
            let Some(x) = node.input(0) else { continue };
            let Some(inner) = g.producer_node(x) else { continue };
            if !g.node(inner).is_op(op) {
                continue;
            }
            let src = g.node(inner).input(0);
            g.set_input(n, 0, src);
            report.count("collapsed", 1);
            if g.reader_count(x) == 0 {
                let what = describe(g, inner);
                g.remove_node(inner);
                g.remove_value(x).map_err(|e| PassError::ir(format!("removing {what}"), e))?;
            }
        }
        Ok(report)
    }
}
