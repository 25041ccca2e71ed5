//! Identity and mutation-counter tests: ids are never reused (not even when
//! petgraph reuses the slot), clones keep ids and never alias ids created
//! later, and every mutation API call changes [`Graph::generation`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::{Graph, InsertAt, NewNode, NodeId, ValueId};
use crate::parser::parse_graph;
use crate::shape::TypeInfo;
use crate::tensor::Tensor;
use crate::verify::verify;

const CHAIN: &str = r#"
graph g {
  opset ai.onnx 13
  input %x: f32[1,4]
  init @w: f32[4] = fill(2.0)
  %a = Relu(%x) : f32[1,4]  # relu_a
  %b = Mul(%a, @w) : f32[1,4]  # mul_b
  %c = Relu(%b) : f32[1,4]  # relu_c
  output %c: f32[1,4]
}
"#;

fn chain() -> Graph {
    parse_graph(CHAIN).expect("the test graph parses")
}

fn node_named(g: &Graph, name: &str) -> NodeId {
    g.find_node(name).unwrap_or_else(|| panic!("no node {name}"))
}

/// The panic message of `f`.
fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn remove_then_insert_does_not_alias_a_node() {
    let mut g = chain();
    let c = node_named(&g, "relu_c");
    let slot = g.ix(c).expect("live");
    let b_out = g.node(node_named(&g, "mul_b")).output(0).expect("mul output");
    let c_out = g.node(c).output(0).expect("relu output");
    g.remove_node(c);
    let n = g.insert_node(InsertAt::End, NewNode::new("Sigmoid", "sig", &[b_out], "s")).expect("insert");
    // petgraph hands the freed slot to the new node: exactly the aliasing
    // case this test is about.
    assert_eq!(g.ix(n), Some(slot), "petgraph reused the slot");
    assert_ne!(n, c);
    assert!(!g.contains_node(c));
    assert!(g.try_node(c).is_none());
    assert_eq!(g.node(n).op_type(), "Sigmoid");
    let msg = panic_message(|| {
        g.node(c);
    });
    assert!(msg.contains(&format!("node {c} ")) && msg.contains("was removed"), "{msg}");
    // Finish the rewrite and check the graph is sound.
    let s = g.node(n).output(0).expect("sigmoid output");
    g.replace_value(c_out, s).expect("replace");
    verify(&g).expect("verifies");
}

#[test]
fn replace_node_does_not_alias_the_old_id() {
    let mut g = chain();
    let a = node_named(&g, "relu_a");
    let slot = g.ix(a).expect("live");
    let x = g.find_value("x").expect("x");
    let new = g.replace_node(a, NewNode::new("Sigmoid", "sig_a", &[x], "")).expect("replace");
    assert_ne!(new, a);
    assert!(g.try_node(a).is_none(), "the replaced node's id is stale");
    // The next node lands in the freed petgraph slot; the old id still names nothing.
    let later = g.insert_node(InsertAt::End, NewNode::new("Relu", "later", &[x], "later")).expect("insert");
    assert_eq!(g.ix(later), Some(slot), "petgraph reused the slot");
    assert!(g.try_node(a).is_none());
    assert_ne!(later, a);
    let msg = panic_message(|| {
        g.node_mut(a);
    });
    assert!(msg.contains(&format!("node {a} ")) && msg.contains("was removed"), "{msg}");
    verify(&g).expect("verifies");
}

#[test]
fn remove_then_add_does_not_alias_a_value() {
    let mut g = chain();
    let mul = node_named(&g, "mul_b");
    let w = g.find_value("w").expect("w");
    let two = g.add_initializer("two", Tensor::new(&[4], &[2.0f32; 4]));
    g.set_input(mul, 1, Some(two));
    g.remove_value(w).expect("w is unused now");
    let again = g.add_initializer("w", Tensor::new(&[4], &[3.0f32; 4]));
    assert_ne!(again, w);
    assert!(again.index() > w.index(), "ids grow");
    assert!(g.try_value(w).is_none());
    assert_eq!(g.find_value("w"), Some(again), "the name is reused, the id is not");
    let msg = panic_message(|| {
        g.value(w);
    });
    assert!(msg.contains(&format!("value {w} ")) && msg.contains("was removed"), "{msg}");
    // Outputs of a replaced node keep their ids (replace_node's contract).
    let relu = node_named(&g, "relu_c");
    let out = g.node(relu).output(0).expect("out");
    let b = g.node(mul).output(0).expect("b");
    let new = g.replace_node(relu, NewNode::new("Sigmoid", "sig", &[b], "")).expect("replace");
    assert_eq!(g.node(new).output(0), Some(out));
    assert_eq!(g.producer_node(out), Some(new));
    verify(&g).expect("verifies");
}

#[test]
fn clone_keeps_ids_and_never_aliases_later_ones() {
    let mut g = chain();
    let a = node_named(&g, "relu_a");
    let x = g.find_value("x").expect("x");
    let before = g.clone();
    // Rewrite the original: relu_a becomes Sigmoid, plus a new value.
    let new = g.replace_node(a, NewNode::new("Sigmoid", "sig_a", &[x], "")).expect("replace");
    let k = g.add_initializer("k", Tensor::scalar(1.0f32));
    // The copy still resolves every id that existed when it was made...
    assert_eq!(before.node(a).op_type(), "Relu");
    assert_eq!(before.value_name(x), "x");
    // ...and does not know ids created after, for nodes and values.
    assert!(before.try_node(new).is_none());
    assert!(before.try_value(k).is_none());
    let msg = panic_message(|| {
        before.node(new);
    });
    assert!(msg.contains(&format!("node {new} ")) && msg.contains("another copy"), "{msg}");
    // Ids the copy creates now are unknown to the original, in turn, even
    // though both graphs have the same number of nodes.
    let mut copy = before.clone();
    let y = copy.insert_node(InsertAt::End, NewNode::new("Relu", "y", &[x], "y")).expect("insert");
    let yv = copy.node(y).output(0).expect("y out");
    assert_ne!(y, new);
    assert!(g.try_node(y).is_none());
    assert!(g.try_value(yv).is_none());
    assert!(copy.try_node(new).is_none());
    verify(&g).expect("original verifies");
    verify(&copy).expect("copy verifies");
}

#[test]
fn ids_of_another_graph_are_unknown() {
    let g1 = chain();
    let g2 = chain();
    let a1 = node_named(&g1, "relu_a");
    let x1 = g1.find_value("x").expect("x");
    assert!(g2.try_node(a1).is_none());
    assert!(g2.try_value(x1).is_none());
    assert_eq!(a1.to_string(), node_named(&g2, "relu_a").to_string(), "diagnostics do not show the graph tag");
    let msg = panic_message(|| {
        g2.value(x1);
    });
    assert!(msg.contains("belongs to another graph"), "{msg}");
}

/// Asserts that `f` changes the generation (`changes`) or not.
fn gen_after(g: &mut Graph, changes: bool, what: &str, f: impl FnOnce(&mut Graph)) {
    let before = g.generation();
    f(g);
    assert_eq!(g.generation() != before, changes, "{what}: generation {before} -> {}", g.generation());
}

#[test]
fn every_mutation_bumps_the_generation() {
    let mut g = chain();
    let a = node_named(&g, "relu_a");
    let mul = node_named(&g, "mul_b");
    let c = node_named(&g, "relu_c");
    let x = g.find_value("x").expect("x");
    let w = g.find_value("w").expect("w");
    let av = g.node(a).output(0).expect("a");

    gen_after(&mut g, false, "reads", |g| {
        let _ = (g.node(a).op_type().len(), g.value(x).uses().len(), g.users(av), g.type_info(av));
        let _ = (g.nodes().count(), g.value_ids().count(), g.find_node("relu_c"), g.to_string());
        verify(g).expect("verifies");
    });
    gen_after(&mut g, true, "node_mut (even to set the same attribute)", |g| {
        g.node_mut(a).set_name("relu_a");
    });
    gen_after(&mut g, true, "set_input", |g| g.set_input(mul, 1, Some(x)));
    gen_after(&mut g, false, "set_input to the same value", |g| g.set_input(mul, 1, Some(x)));
    gen_after(&mut g, true, "set_input back", |g| g.set_input(mul, 1, Some(w)));
    gen_after(&mut g, true, "add_initializer", |g| {
        g.add_initializer("k", Tensor::scalar(1.0f32));
    });
    let k = g.find_value("k").expect("k");
    gen_after(&mut g, true, "set_initializer", |g| g.set_initializer(k, Tensor::scalar(2.0f32)).expect("init"));
    let ty: TypeInfo = g.type_info(av).expect("typed");
    gen_after(&mut g, false, "set_type of an intermediate value to what it says", |g| {
        g.set_type(av, &ty);
    });
    let flat = TypeInfo::new(crate::DataType::F32, &[4]);
    gen_after(&mut g, true, "set_type of an intermediate value", |g| {
        g.set_type(av, &flat);
    });
    gen_after(&mut g, true, "set_type back", |g| {
        g.set_type(av, &ty);
    });
    gen_after(&mut g, true, "rename_value", |g| g.rename_value(k, "k2").expect("rename"));
    gen_after(&mut g, false, "rename_value to its own name", |g| g.rename_value(k, "k2").expect("rename"));
    gen_after(&mut g, true, "remove_value", |g| g.remove_value(k).expect("remove"));
    gen_after(&mut g, true, "insert_node", |g| {
        g.insert_node(InsertAt::After(a), NewNode::new("Identity", "id", &[av], "id")).expect("insert");
    });
    let id = node_named(&g, "id");
    let idv = g.node(id).output(0).expect("id out");
    gen_after(&mut g, true, "replace_uses", |g| {
        g.set_input(mul, 0, Some(idv));
        g.replace_uses(idv, av);
    });
    gen_after(&mut g, false, "replace_uses of a value by itself", |g| g.replace_uses(av, av));
    gen_after(&mut g, true, "move_node", |g| g.move_node(id, InsertAt::End).expect("move"));
    gen_after(&mut g, true, "remove_node", |g| {
        g.remove_node(id);
    });
    gen_after(&mut g, true, "remove_value of a removed node's output", |g| g.remove_value(idv).expect("remove"));
    let order = g.node_ids();
    gen_after(&mut g, false, "set_order with the same order", |g| g.set_order(order.clone()).expect("order"));
    gen_after(&mut g, true, "replace_node", |g| {
        g.replace_node(c, NewNode::new("Sigmoid", "sig", &[g.node(mul).output(0).expect("b")], "")).expect("rp");
    });
    gen_after(&mut g, true, "set_opset", |g| g.set_opset("", 17));
    gen_after(&mut g, false, "set_opset to the current version", |g| g.set_opset("", 17));
    gen_after(&mut g, true, "add_output", |g| g.add_output(av));
    gen_after(&mut g, true, "remove_output", |g| {
        g.remove_output(1).expect("port");
    });
    gen_after(&mut g, false, "remove_output out of range", |g| assert!(g.remove_output(9).is_none()));
    gen_after(&mut g, true, "input_port_mut", |g| {
        g.input_port_mut(0).expect("port");
    });
    gen_after(&mut g, true, "add_input", |g| {
        g.add_input("extra", &ty).expect("input");
    });
    verify(&g).expect("verifies");
}

#[test]
fn set_type_on_a_declared_output_bumps_the_generation_once() {
    let mut g = parse_graph("graph g {\n  opset ai.onnx 13\n  input %x: f32[1,4]\n  %y = Relu(%x)\n  output %y\n}\n")
        .expect("parses");
    let (x, y) = (g.find_value("x").expect("x"), g.find_value("y").expect("y"));
    let ty = g.type_info(x).expect("typed input");
    gen_after(&mut g, true, "set_type of an untyped output declaration", |g| assert!(g.set_type(y, &ty)));
    gen_after(&mut g, false, "set_type with what the declaration already says", |g| assert!(!g.set_type(y, &ty)));
}

#[test]
fn generations_tell_clones_apart() {
    let mut g = chain();
    let copy = g.clone();
    assert_eq!(copy.generation(), g.generation(), "a clone is the same state");
    let a = node_named(&g, "relu_a");
    let mut other = g.clone();
    g.node_mut(a).set_name("left");
    other.node_mut(a).set_name("right");
    assert_ne!(g.generation(), other.generation(), "diverged copies differ");
    assert_ne!(g.generation(), copy.generation());
    // A graph swapped for an older snapshot reads as changed.
    let changed = g.generation();
    g = copy.clone();
    assert_ne!(g.generation(), changed);
    // Unrelated graphs never share a generation.
    assert_ne!(chain().generation(), chain().generation());
}

#[test]
fn value_ids_lists_live_values_in_creation_order() {
    let mut g = chain();
    let before: Vec<ValueId> = g.value_ids().collect();
    let w = g.find_value("w").expect("w");
    let mul = node_named(&g, "mul_b");
    let k = g.add_initializer("k", Tensor::new(&[4], &[1.0f32; 4]));
    g.set_input(mul, 1, Some(k));
    g.remove_value(w).expect("unused");
    let after: Vec<ValueId> = g.value_ids().collect();
    let want: Vec<ValueId> = before.into_iter().filter(|&v| v != w).chain([k]).collect();
    assert_eq!(after, want);
    // A clone that creates values skips the numbers the other copy took.
    let mut copy = g.clone();
    let in_g = g.add_initializer("only_g", Tensor::scalar(0.0f32));
    let in_copy = copy.add_initializer("only_copy", Tensor::scalar(0.0f32));
    assert!(in_copy.index() > in_g.index());
    assert_eq!(copy.value_ids().last(), Some(in_copy));
    assert!(!copy.value_ids().any(|v| v == in_g));
}
