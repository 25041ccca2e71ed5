//! Matcher, rewrite and rule-error tests on small graphs in the text IR.

use qforge_ir::{Graph, parse_graph};

use super::*;
use crate::Pipeline;

/// A `rewrite` pass from its options in YAML.
fn pass(yaml: &str) -> Rewrite {
    let v: Value = serde_saphyr::from_str(yaml).expect("options are YAML");
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

/// The options' error, as the pass reports it without a file.
fn options_error(yaml: &str) -> String {
    let v: Value = serde_saphyr::from_str(yaml).expect("options are YAML");
    serde_json::from_value::<Rewrite>(v).map(|_| ()).unwrap_err().to_string()
}

fn graph(body: &str) -> Graph {
    let g = parse_graph(&format!("graph g {{\n  opset ai.onnx 13\n{body}}}\n")).unwrap_or_else(|e| panic!("{e}"));
    qforge_ir::verify(&g).unwrap_or_else(|e| panic!("{e}"));
    g
}

/// Runs the pass; the result verifies.
fn run(p: &Rewrite, g: &mut Graph) -> PassReport {
    let r = p.run(g, &mut PassContext::default()).unwrap_or_else(|e| panic!("{e}"));
    qforge_ir::verify(g).unwrap_or_else(|e| panic!("{e}\n{g}"));
    r
}

/// The node lines of the graph, without names.
fn lines(g: &Graph) -> Vec<String> {
    let opts = qforge_ir::PrintOptions::default();
    g.nodes().map(|n| g.node_line(n, &opts).split("  #").next().unwrap_or_default().to_string()).collect()
}

const DOUBLE_RELU: &str = "
rules:
  - name: double-relu
    from: |
      %a = Relu(%x)
      %y = Relu(%a)
    to: |
      %y = Relu(%x)
";

#[test]
fn a_match_is_replaced_and_the_result_takes_the_roots_name_and_type() {
    let mut g = graph(
        "  input %x: f32[1,4]\n  %a = Relu(%x)  # r0\n  %y = Relu(%a) : f32[1,4]  # r1\n  %z = Neg(%y)  # neg\n  output %z: f32[1,4]\n",
    );
    let generation = g.generation();
    let r = run(&pass(DOUBLE_RELU), &mut g);
    assert_eq!(r.get("double-relu"), 1);
    assert_ne!(g.generation(), generation, "the graph records the change");
    assert_eq!(lines(&g), ["%y = Relu(%x) : f32[1,4]", "%z = Neg(%y) : f32[1,4]"]);
    let n = g.find_node("r1/double-relu").expect("the new node is named after the root's");
    assert_eq!(g.node(n).op_type(), "Relu");
    assert!(g.find_value("a").is_none(), "the intermediate is gone");
}

#[test]
fn a_graph_output_root_keeps_its_name() {
    let mut g = graph("  input %x: f32[1,4]\n  %a = Relu(%x)\n  %y = Relu(%a)\n  output %y: f32[1,4]\n");
    let r = run(&pass(DOUBLE_RELU), &mut g);
    assert_eq!(r.get("double-relu"), 1);
    assert_eq!(lines(&g), ["%y = Relu(%x) : f32[1,4]"]);
    assert_eq!(g.value_name(g.outputs()[0].value), "y");
}

#[test]
fn attributes_must_match_and_no_other_may_be_present() {
    let p = pass(
        "
explain: true
rules:
  - name: nchw-roundtrip
    from: |
      %t = Transpose(%x) {perm=[0,2,3,1]}
      %y = Transpose(%t) {perm=[0,3,1,2]}
    to: |
      %y = Identity(%x)
",
    );
    let body = |perm: &str| {
        format!(
            "  input %x: f32[1,2,3,4]\n  %t = Transpose(%x) {{perm=[0,2,3,1]}}\n  %y = Transpose(%t) {{{perm}}}  # t1\n  output %y\n"
        )
    };
    let mut g = graph(&body("perm=[0,3,1,2]"));
    assert_eq!(run(&p, &mut g).get("nchw-roundtrip"), 1);
    assert_eq!(lines(&g), ["%y = Identity(%x)"]);

    let mut g = graph(&body("perm=[0,3,2,1]"));
    let before = g.to_string();
    let generation = g.generation();
    let r = run(&p, &mut g);
    assert_eq!(r.get("nchw-roundtrip"), 0);
    assert_eq!(g.generation(), generation, "no match, no mutation");
    assert_eq!(g.to_string(), before);
    assert!(r.notes.iter().any(|n| n.contains("attribute `perm`") && n.contains("`from` line 2")), "{:?}", r.notes);

    // An attribute the pattern does not list could change the meaning.
    let mut g = graph("  input %x: f32[4]\n  %a = Relu(%x)\n  %y = Relu(%a) {extra=1}\n  output %y\n");
    let r = run(&pass(&format!("explain: true\n{DOUBLE_RELU}")), &mut g);
    assert_eq!(r.get("double-relu"), 0);
    assert!(r.notes.iter().any(|n| n.contains("attribute `extra`")), "{:?}", r.notes);
}

#[test]
fn integer_attributes_in_a_rule_match_floats() {
    let p = pass(
        "
rules:
  - name: leaky-one
    from: '%y = LeakyRelu(%x) {alpha=1}'
    to: '%y = Identity(%x)'
",
    );
    let mut g = graph("  input %x: f32[4]\n  %y = LeakyRelu(%x) {alpha=1.0}\n  output %y\n");
    assert_eq!(run(&p, &mut g).get("leaky-one"), 1);
    let mut g = graph("  input %x: f32[4]\n  %y = LeakyRelu(%x) {alpha=0.5}\n  output %y\n");
    assert_eq!(run(&p, &mut g).get("leaky-one"), 0);
}

#[test]
fn an_intermediate_read_outside_the_match_blocks_it() {
    let p = pass(&format!("explain: true\n{DOUBLE_RELU}"));
    let mut g = graph(
        "  input %x: f32[4]\n  %a = Relu(%x)  # r0\n  %y = Relu(%a)  # r1\n  %n = Neg(%a)  # neg\n  output %y\n  output %n\n",
    );
    let before = g.to_string();
    let r = run(&p, &mut g);
    assert_eq!(r.get("double-relu"), 0);
    assert_eq!(g.to_string(), before);
    assert!(r.notes.iter().any(|n| n.contains("\"a\"") && n.contains("also read by node \"neg\"")), "{:?}", r.notes);

    // A graph output is read outside too.
    let mut g = graph("  input %x: f32[4]\n  %a = Relu(%x)\n  %y = Relu(%a)\n  output %y\n  output %a\n");
    let r = run(&p, &mut g);
    assert_eq!(r.get("double-relu"), 0);
    assert!(r.notes.iter().any(|n| n.contains("is a graph output")), "{:?}", r.notes);
}

#[test]
fn at_binds_initializers_only() {
    let p = pass(
        "
rules:
  - name: bias-first
    from: '%y = Add(%x, @b)'
    to: '%y = Add(@b, %x)'
",
    );
    let mut g = graph(
        "  input %x: f32[4]\n  input %z: f32[4]\n  init @b: f32[4] = fill(1.0)\n  init @c: f32[4] = fill(2.0) (input)\n  %y = Add(%x, @b)\n  %y2 = Add(%x, %z)\n  %y3 = Add(%x, @c)\n  output %y\n  output %y2\n  output %y3\n",
    );
    let r = run(&p, &mut g);
    // `%z` is a graph input and `@c` can be overridden at run time: neither is constant.
    assert_eq!(r.get("bias-first"), 1, "{g}");
    assert_eq!(lines(&g), ["%y = Add(@b, %x)", "%y2 = Add(%x, %z)", "%y3 = Add(%x, @c)"]);
}

#[test]
fn attribute_variables_carry_values_to_the_replacement() {
    let p = pass(
        "
rules:
  - name: relu-before-transpose
    from: |
      %t = Transpose(%x) {perm=$p}
      %y = Relu(%t)
    to: |
      %r = Relu(%x)
      %y = Transpose(%r) {perm=$p}
",
    );
    let mut g = graph(
        "  input %x: f32[1,2,3]\n  %t = Transpose(%x) {perm=[2,0,1]}  # tr\n  %y = Relu(%t)  # relu\n  output %y\n",
    );
    assert_eq!(run(&p, &mut g).get("relu-before-transpose"), 1);
    assert_eq!(lines(&g), ["%y/r = Relu(%x)", "%y = Transpose(%y/r) {perm=[2,0,1]}"]);
    assert!(g.find_node("relu/relu-before-transpose/r").is_some());

    // One variable used twice binds one value.
    let p = pass(
        "
rules:
  - name: same-perm
    from: |
      %t = Transpose(%x) {perm=$p}
      %y = Transpose(%t) {perm=$p}
    to: '%y = Identity(%x)'
",
    );
    let twice = |a: &str, b: &str| {
        graph(&format!(
            "  input %x: f32[2,2]\n  %t = Transpose(%x) {{perm={a}}}\n  %y = Transpose(%t) {{perm={b}}}\n  output %y\n"
        ))
    };
    assert_eq!(run(&p, &mut twice("[1,0]", "[1,0]")).get("same-perm"), 1);
    assert_eq!(run(&p, &mut twice("[1,0]", "[0,1]")).get("same-perm"), 0);
}

#[test]
fn rules_run_in_order_and_count_separately() {
    let p = pass(&format!(
        "{DOUBLE_RELU}
  - name: double-neg
    from: |
      %a = Neg(%x)
      %y = Neg(%a)
    to: '%y = Identity(%x)'
  - name: unused
    from: '%y = Sigmoid(%x)'
    to: '%y = Sigmoid(%x)'
"
    ));
    let mut g = graph(
        "  input %x: f32[4]\n  %a = Relu(%x)\n  %b = Relu(%a)\n  %c = Neg(%b)\n  %d = Neg(%c)\n  %e = Relu(%d)\n  %f = Relu(%e)\n  output %f\n",
    );
    let r = run(&p, &mut g);
    assert_eq!(r.counters, [("double-relu".into(), 2), ("double-neg".into(), 1), ("unused".into(), 0)]);
    assert_eq!(lines(&g), ["%b = Relu(%x)", "%d = Identity(%b)", "%f = Relu(%d)"]);
}

#[test]
fn overlapping_matches_collapse_a_chain_and_a_shared_value_blocks_both() {
    let p = pass(DOUBLE_RELU);
    let mut g =
        graph("  input %x: f32[4]\n  %a = Relu(%x)\n  %b = Relu(%a)\n  %c = Relu(%b)\n  %d = Relu(%c)\n  output %d\n");
    let r = run(&p, &mut g);
    assert_eq!(r.get("double-relu"), 3, "each rewrite makes the next match");
    assert_eq!(lines(&g), ["%d = Relu(%x)"]);

    // %a feeds two candidate matches: either one would take it from the other.
    let mut g =
        graph("  input %x: f32[4]\n  %a = Relu(%x)\n  %b = Relu(%a)\n  %c = Relu(%a)\n  output %b\n  output %c\n");
    assert_eq!(run(&p, &mut g).get("double-relu"), 0);
    assert_eq!(g.node_count(), 3);
}

#[test]
fn the_replacement_may_read_an_intermediate_which_then_stays() {
    let p = pass(
        "
rules:
  - name: swap
    from: |
      %s = Sigmoid(%x)
      %y = Mul(%x, %s)
    to: '%y = Mul(%s, %x)'
",
    );
    let mut g = graph("  input %x: f32[4]\n  %s = Sigmoid(%x)\n  %y = Mul(%x, %s)\n  output %y\n");
    let r = run(&p, &mut g);
    assert_eq!(r.get("swap"), 1);
    assert_eq!(lines(&g), ["%s = Sigmoid(%x)", "%y = Mul(%s, %x)"]);
}

#[test]
fn a_new_domain_is_imported_and_rules_that_never_settle_are_reported() {
    let p = pass(
        "
max_iterations: 3
rules:
  - name: silu
    from: |
      %s = Sigmoid(%x)
      %y = Mul(%x, %s)
    to: '%y = com.microsoft::QuickGelu(%x) {alpha=1.0}'
  - name: forever
    from: '%y = Neg(%x)'
    to: '%y = Neg(%x)'
",
    );
    let mut g = graph("  input %x: f32[4]\n  %s = Sigmoid(%x)\n  %y = Mul(%x, %s)\n  %z = Neg(%y)\n  output %z\n");
    let r = run(&p, &mut g);
    assert_eq!(g.opset("com.microsoft"), Some(1));
    assert_eq!(lines(&g)[0], "%y = com.microsoft::QuickGelu(%x) {alpha=1.0}");
    assert_eq!((r.get("silu"), r.get("forever")), (1, 3));
    assert!(r.notes.iter().any(|n| n.contains("still matched after 3 rounds")), "{:?}", r.notes);
}

#[test]
fn approximate_rules_make_the_pass_approximate() {
    assert_eq!(pass(DOUBLE_RELU).tolerance(), Tolerance::Exact);
    let p = pass(&format!("{DOUBLE_RELU}    approximate: true\n"));
    assert_eq!(p.tolerance(), Tolerance::Approximate);
    assert_eq!(Rewrite::default().tolerance(), Tolerance::Exact);
}

#[test]
fn rule_errors_say_where_in_the_rule() {
    let rule = |from: &str, to: &str| {
        Rule::parse(RuleSpec { name: "r".into(), from: from.into(), to: to.into(), approximate: false })
            .map(|_| ())
            .unwrap_err()
    };
    let e = rule("%a = Relu(%x)\n%y = Relu %a\n", "%y = Relu(%x)");
    assert_eq!((e.field, e.line, e.column), ("from", 2, 11), "{e:?}");
    let e = rule("%y = Relu(%x)", "%y = Add(%x, %z)");
    assert_eq!((e.field, e.line, e.column), ("to", 1, 14), "{e:?}");
    assert!(e.message.contains("`%z` is not bound by `from`"), "{e:?}");
    let e = rule("%y = Relu(%x)", "%z = Neg(%y)");
    assert!(e.message.contains("`%y` is the root of `from`"), "{e:?}");
    let e = rule("%y = Relu(%x)", "%y = Neg(%y)");
    assert!(e.message.contains("read by the line that defines it"), "{e:?}");
    let e = rule("%t = Transpose(%x) {perm=$p}", "%y = Transpose(%x) {perm=$q}");
    assert_eq!((e.field, e.line, e.column), ("to", 1, 26), "{e:?}");
    let e = rule("%a = Relu(%x)\n%b = Neg(%x)\n%y = Relu(%a)", "%y = Relu(%x)");
    assert_eq!((e.field, e.line), ("from", 2), "a line that does not feed the root: {e:?}");
    let e = rule("%a, %b = Split(%x)", "%y = Relu(%x)");
    assert!(e.message.contains("exactly one value"), "{e:?}");
    let e = rule("%y = Relu(%x) : f32[4]", "%y = Relu(%x)");
    assert!(e.message.contains("types are not part of a rule"), "{e:?}");
    let e = rule("# nothing\n", "%y = Relu(%x)");
    assert_eq!((e.field, e.line), ("from", 0));

    // Without a file (options from `--set`), the error says rule, field, line and column.
    let e = options_error("rules: [{name: r, from: '%y = Relu(%x)', to: '%y = Add(%x, %z)'}]");
    assert!(e.contains("rule `r`, `to` line 1, column 14: `%z` is not bound by `from`"), "{e}");
    let e = options_error(
        "rules: [{name: r, from: '%y = Relu(%x)', to: '%y = Relu(%x)'}, {name: r, from: '%y = Neg(%x)', to: '%y = Neg(%x)'}]",
    );
    assert!(e.contains("rules 1 and 2 are both named `r`"), "{e}");
    assert!(options_error("max_iterations: 0").contains("at least 1"));
}

#[test]
fn pipeline_errors_point_at_the_yaml_line_of_the_rule() {
    let yaml = "\
name: t
passes:
  - topo-sort
  - rewrite:
      rules:
        - name: ok
          from: |
            %a = Relu(%x)
            %y = Relu(%a)
          to: '%y = Relu(%x)'
        - name: broken
          from: |
            %a = Relu(%x)

            %y = Relu(%a
          to: |
            %y = Relu(%x)
";
    let e = Pipeline::parse(yaml, "rules.yaml").unwrap_err().to_string();
    // `from` line 3 of rule 2 is file line 15; the missing `)` is at its column 25.
    assert!(e.starts_with("rules.yaml:15:25: pass `rewrite`, rule `broken` (`from`): expected `,`"), "{e}");

    let bad_to = yaml
        .replace("%y = Relu(%a\n", "%y = Relu(%a)\n")
        .replace("            %y = Relu(%x)\n", "            %q = Relu(%x)\n            %y = Add(%q, %w)\n");
    let e = Pipeline::parse(&bad_to, "rules.yaml").unwrap_err().to_string();
    assert!(
        e.starts_with("rules.yaml:18:26: pass `rewrite`, rule `broken` (`to`): `%w` is not bound by `from`"),
        "{e}"
    );

    // Inside a fixed-point group too, and field-level errors point at the field.
    let grouped = "passes:\n  - fixed-point:\n      passes:\n        - rewrite:\n            rules:\n              - {name: r, from: '', to: '%y = Relu(%x)'}\n";
    let e = Pipeline::parse(grouped, "g.yaml").unwrap_err().to_string();
    assert!(e.starts_with("g.yaml:6:"), "{e}");
    assert!(e.contains("(`from`): no node lines"), "{e}");

    let dup = "passes:\n  - rewrite:\n      rules:\n        - {name: r, from: '%y = Relu(%x)', to: '%y = Relu(%x)'}\n        - {name: r, from: '%y = Neg(%x)', to: '%y = Neg(%x)'}\n";
    let e = Pipeline::parse(dup, "d.yaml").unwrap_err().to_string();
    assert!(e.starts_with("d.yaml:5:18: pass `rewrite`: rule `r` is named like rule 1"), "{e}");

    // A valid pipeline loads, and its rules are the pass's.
    let ok = yaml.replace("%y = Relu(%a\n", "%y = Relu(%a)\n");
    let p = Pipeline::parse(&ok, "rules.yaml").unwrap();
    assert_eq!(p.steps.len(), 2);
}
