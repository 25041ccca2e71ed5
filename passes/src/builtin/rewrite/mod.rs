//! `from:` pattern in the text IR => `to:` replacement, rules written in the pipeline YAML.
//!
//! For the local rewrites that need no code:
//!
//! ```yaml
//! - rewrite:
//!     rules:
//!       - name: double-relu
//!         from: |
//!           %a = Relu(%x)
//!           %y = Relu(%a)
//!         to: |
//!           %y = Relu(%x)
//! ```
//!
//! Values `from` reads without defining are its inputs: `%x` binds any
//! value, `@w` only an initializer. `from`'s last value is the root; at a
//! match, `to` is inserted and the root's readers read `to`'s last value
//! (a graph output keeps its name). Attributes written in `from` must match
//! and the node may have no others; `attr=$name` binds the attribute's
//! value, which `to` can use. A match whose intermediate values are read
//! outside it (or are graph outputs) is left alone: removing it would
//! leave them without a producer, keeping it would compute them twice.
//!
//! Rules run in the order written, each at every match in graph order; the
//! list repeats until a round changes nothing (at most `max_iterations`
//! rounds). Rules are exact unless marked `approximate: true`, so
//! `--check-numerics` holds the pass to 1e-5 unless one is. Every rule is
//! parsed and checked when the pipeline is loaded, and its errors point at
//! the YAML line.

mod apply;
mod matcher;
mod rule;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use qforge_ir::Graph;

pub use rule::{Rule, RuleError, RuleSpec};

use crate::context::Tolerance;
use crate::located::{OptionCheck, OptionSpans};
use crate::util::describe;
use crate::{Pass, PassContext, PassError, PassOptions, PassReport, register_pass};

/// Explanations kept per rule with `explain`.
const MAX_EXPLAINED: usize = 20;

/// Options of `rewrite`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rewrite {
    /// The rules, applied in order.
    #[serde(deserialize_with = "unique_rules")]
    pub rules: Vec<Rule>,
    /// Most rounds over the rule list (at least 1).
    #[serde(deserialize_with = "positive")]
    pub max_iterations: usize,
    /// Note why candidate nodes did not match.
    pub explain: bool,
}

impl Default for Rewrite {
    fn default() -> Self {
        Rewrite { rules: Vec::new(), max_iterations: 8, explain: false }
    }
}

impl PassOptions for Rewrite {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("rules", "list of {name, from, to, approximate (false)}: `from` pattern => `to` replacement, in the text IR"),
        ("max_iterations", "most rounds over the rule list; a round that changes nothing ends the pass (default 8)"),
        ("explain", "note why nodes of a rule's root op did not match, first 20 per rule (default false)"),
    ];
}

register_pass!("rewrite", Rewrite, "YAML rules: `from` pattern in the text IR => `to` replacement");

inventory::submit! {
    OptionCheck { pass: "rewrite", check: check_located }
}

/// Two rules of one name would share a counter.
fn duplicate(rules: &[RuleSpec]) -> Option<(usize, usize)> {
    rules.iter().enumerate().find_map(|(j, r)| rules[..j].iter().position(|q| q.name == r.name).map(|i| (i, j)))
}

fn unique_rules<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Rule>, D::Error> {
    let rules = Vec::<Rule>::deserialize(d)?;
    let specs: Vec<RuleSpec> = rules.iter().map(|r| r.spec.clone()).collect();
    if let Some((i, j)) = duplicate(&specs) {
        return Err(serde::de::Error::custom(format!(
            "rules {} and {} are both named `{}`; each rule needs its own name",
            i + 1,
            j + 1,
            specs[j].name
        )));
    }
    Ok(rules)
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("max_iterations must be at least 1")),
        n => Ok(n),
    }
}

/// The rules' errors at their YAML lines, when the pipeline is loaded.
fn check_located(options: &Value, spans: &OptionSpans) -> Result<(), PassError> {
    let Some(rules) = options.get("rules").and_then(Value::as_array) else { return Ok(()) };
    let err = |origin, message| PassError::Pipeline { origin, message };
    let mut specs: Vec<RuleSpec> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let at = format!("/rules/{i}");
        let spec: RuleSpec = serde_json::from_value(r.clone())
            .map_err(|e| err(spans.origin(&at), format!("pass `rewrite`, rule {}: {e}", i + 1)))?;
        let name = spec.name.clone();
        if let Err(e) = Rule::parse(spec.clone()) {
            let pointer = format!("{at}/{}", e.field);
            let origin =
                if e.line == 0 { spans.origin(&pointer) } else { spans.text_origin(&pointer, e.line, e.column) };
            return Err(err(origin, format!("pass `rewrite`, rule `{name}` (`{}`): {}", e.field, e.message)));
        }
        specs.push(spec);
        if let Some((first, _)) = duplicate(&specs) {
            return Err(err(
                spans.origin(&format!("{at}/name")),
                format!("pass `rewrite`: rule `{name}` is named like rule {}; each rule needs its own name", first + 1),
            ));
        }
    }
    Ok(())
}

impl Pass for Rewrite {
    fn run(&self, g: &mut Graph, _cx: &mut PassContext) -> Result<PassReport, PassError> {
        let mut r = PassReport::default();
        for rule in &self.rules {
            r.count(rule.name(), 0);
        }
        let mut explained = vec![0usize; self.rules.len()];
        let mut converged = self.rules.is_empty();
        for round in 0..self.max_iterations {
            let mut changed = false;
            for (i, rule) in self.rules.iter().enumerate() {
                let op = rule.pattern().node(rule.root_node()).op_type();
                for n in g.node_ids() {
                    if !g.contains_node(n) || g.node(n).op_type() != op {
                        continue;
                    }
                    match matcher::match_at(rule, g, n) {
                        Ok(m) => {
                            apply::apply(rule, g, &m)?;
                            r.count(rule.name(), 1);
                            changed = true;
                        }
                        Err(why) if self.explain && round == 0 => {
                            explained[i] += 1;
                            if explained[i] <= MAX_EXPLAINED {
                                r.note(format!("{}: {} not matched: {why}", rule.name(), describe(g, n)));
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
            if !changed {
                converged = true;
                break;
            }
        }
        for (rule, &n) in self.rules.iter().zip(&explained) {
            if n > MAX_EXPLAINED {
                r.note(format!("{}: {} more candidates not matched", rule.name(), n - MAX_EXPLAINED));
            }
        }
        if !converged {
            r.note(format!(
                "rules still matched after {} rounds (max_iterations); do two rules undo each other?",
                self.max_iterations
            ));
        }
        Ok(r)
    }

    fn tolerance(&self) -> Tolerance {
        if self.rules.iter().any(Rule::approximate) { Tolerance::Approximate } else { Tolerance::Exact }
    }
}
