//! The IR verifier. The pass manager runs it after every pass; it collects
//! every violation before failing, so one run shows the whole damage.
//!
//! Invariants checked (the rule name appears in each report):
//!
//! - `slots`: every node input/output/implicit slot names a live value; graph
//!   inputs, outputs and initializer lists name live values of the right kind.
//! - `ssa`: a value has at most one producer, and a value whose definition
//!   says "output `s` of node `n`" is exactly that node's output `s`.
//! - `uses`: each value's use-list equals the set of node slots reading it.
//! - `edges`: the petgraph edges are exactly one producer → consumer edge per
//!   use of a produced value.
//! - `dangling`: every value that is read (by a node or as a graph output) is
//!   defined: by a node, a graph input or an initializer.
//! - `names`: value names are non-empty and unique, and the name index agrees;
//!   node names, where given, are unique (ONNX Runtime refuses a model with
//!   two nodes of one name).
//! - `order`: the node order lists every node once and is topological (which
//!   also proves the graph acyclic).
//! - `tensor`: initializer data matches its dtype and dims.
//! - `qdq`: QuantizeLinear/DequantizeLinear dtypes agree (float side, integer
//!   side, zero point of the integer type, per-axis scale length = axis dim).
//! - `types`: no graph input, graph output or `value_info` entry (in
//!   subgraphs too) declares a tensor type without an element type: that is
//!   invalid ONNX, and ONNX Runtime refuses the whole model ("Invalid tensor
//!   data type 0"). Unknown types are left undeclared instead.
//! - `opset`: every node's operator domain (in subgraphs too) has an opset
//!   import; `onnx.checker` rejects a model without one.
//! - `attrs`: attributes ONNX calls invalid on the ops detectors use, which
//!   would otherwise reach an engine (and crash it): Conv/ConvTranspose/pool
//!   strides, dilations and kernel sizes below 1, negative pads, a `group`
//!   below 1 or not dividing the weight's channels, a `kernel_shape` that
//!   disagrees with the weight, Resize/Upsample scales that are not finite
//!   and positive, and Gather/Concat/Flatten/Softmax axes out of range.

use std::collections::{HashMap, HashSet};
use std::fmt;

use petgraph::visit::IntoEdgeReferences;

use crate::dtype::DataType;
use crate::error::IrError;
use crate::graph::{Graph, InfoEntry, NodeId, UseSlot, ValueDef, ValueId};
use crate::proto::{GraphProto, NodeProto, ValueInfoProto};
use crate::shape::lacks_elem_type;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (see the module docs).
    pub rule: &'static str,
    /// What is wrong, naming nodes and tensors.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.rule, self.message)
    }
}

struct Checker<'g> {
    g: &'g Graph,
    out: Vec<Violation>,
}

impl Checker<'_> {
    fn report(&mut self, rule: &'static str, message: String) {
        self.out.push(Violation { rule, message });
    }
    fn node_desc(&self, n: NodeId) -> String {
        let node = self.g.node(n);
        format!("node \"{}\" ({})", node.name(), node.op_type())
    }
    fn live(&self, v: ValueId) -> bool {
        self.g.contains_value(v)
    }
    fn vname(&self, v: ValueId) -> String {
        if self.live(v) { format!("\"{}\"", self.g.value_name(v)) } else { format!("<removed value #{}>", v.index()) }
    }
}

/// Checks every invariant; `Err` lists all violations.
pub fn verify(g: &Graph) -> Result<(), IrError> {
    let violations = check(g);
    if violations.is_empty() { Ok(()) } else { Err(IrError::Verify(violations)) }
}

/// All violations, possibly none.
pub fn check(g: &Graph) -> Vec<Violation> {
    let mut c = Checker { g, out: Vec::new() };
    check_slots_and_ssa(&mut c);
    check_uses_and_edges(&mut c);
    check_names(&mut c);
    check_order(&mut c);
    check_tensors(&mut c);
    check_qdq(&mut c);
    check_types(&mut c);
    check_opsets(&mut c);
    check_attrs(&mut c);
    c.out
}

/// Ops with spatial windows and the attributes that must be at least 1.
const WINDOWED: &[&str] = &["Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"];

fn check_attrs(c: &mut Checker) {
    let g = c.g;
    for n in g.nodes().filter(|&n| g.contains_node(n)) {
        let node = g.node(n);
        if !matches!(node.domain(), "" | "ai.onnx") {
            continue;
        }
        let op = node.op_type();
        let mut bad: Vec<String> = Vec::new();
        if WINDOWED.contains(&op) {
            for key in ["strides", "dilations", "kernel_shape"] {
                if let Some(v) = node.attr_ints(key).filter(|v| v.iter().any(|&x| x < 1)) {
                    bad.push(format!("{key} {v:?} (each must be at least 1)"));
                }
            }
            if let Some(v) = node.attr_ints("pads").filter(|v| v.iter().any(|&x| x < 0)) {
                bad.push(format!("pads {v:?} (negative)"));
            }
            if let Some(k) = node.attr_int("group").filter(|&k| k < 1) {
                bad.push(format!("group {k} (must be at least 1)"));
            }
            // The weight (input 1 of Conv/ConvTranspose) against the attributes.
            let weight = if matches!(op, "Conv" | "ConvTranspose") { node.input(1) } else { None };
            if let Some(dims) = weight.and_then(|w| g.known_dims(w)) {
                if let Some(k) = node.attr_ints("kernel_shape")
                    && (dims.len() != k.len() + 2 || dims[2..] != *k)
                {
                    bad.push(format!("kernel_shape {k:?} does not match the weight's dims {dims:?}"));
                }
                let group = node.attr_int("group").unwrap_or(1);
                if group >= 1 && dims.len() >= 2 {
                    // Conv: [M, C/group, k…]; ConvTranspose: [C, M/group, k…].
                    if dims[0] % group != 0 {
                        bad.push(format!("group {group} does not divide the weight's {} channels", dims[0]));
                    } else if op == "Conv"
                        && let Some(c_in) = node.input(0).and_then(|x| g.known_dims(x)).and_then(|d| d.get(1).copied())
                        && dims[1] * group != c_in
                    {
                        bad.push(format!(
                            "the weight takes {} channels per group × group {group}, the input has {c_in}",
                            dims[1]
                        ));
                    }
                }
            }
        }
        if matches!(op, "Resize" | "Upsample") {
            let slot = if op == "Resize" { 2 } else { 1 };
            let scales = node.input(slot).and_then(|v| g.constant(v)).and_then(|t| t.to_vec::<f32>().ok());
            if let Some(s) = scales.filter(|s| s.iter().any(|x| !x.is_finite() || *x <= 0.0)) {
                bad.push(format!("scales {s:?} (each must be finite and positive)"));
            }
        }
        let axis_of = match op {
            "Gather" | "Concat" | "Flatten" | "Softmax" | "LogSoftmax" => node.attr_int("axis"),
            _ => None,
        };
        if let Some(axis) = axis_of
            && let Some(rank) = node.input(0).and_then(|x| g.type_info(x)).and_then(|t| t.shape).map(|s| s.0.len())
        {
            let r = rank as i64;
            // Flatten's axis may equal the rank.
            let hi = if op == "Flatten" { r } else { r - 1 };
            if axis < -r || axis > hi {
                bad.push(format!("axis {axis} is out of range for rank {rank}"));
            }
        }
        for b in bad {
            let what = c.node_desc(n);
            c.report("attrs", format!("{what}: {b}"));
        }
    }
}

fn check_slots_and_ssa(c: &mut Checker) {
    let g = c.g;
    for n in g.nodes() {
        if !g.contains_node(n) {
            c.report("order", format!("the node order lists removed node #{}", n.index()));
            continue;
        }
        let node = g.node(n);
        for (i, v) in node.inputs().iter().enumerate() {
            if let Some(v) = v
                && !c.live(*v)
            {
                c.report("slots", format!("{} input {i} reads a removed value", c.node_desc(n)));
            }
        }
        for &v in node.implicit_inputs() {
            if !c.live(v) {
                c.report("slots", format!("{} captures a removed value", c.node_desc(n)));
            }
        }
        for (s, v) in node.outputs().iter().enumerate() {
            let Some(v) = *v else { continue };
            if !c.live(v) {
                c.report("slots", format!("{} output {s} is a removed value", c.node_desc(n)));
            } else if g.value(v).def() != ValueDef::Node(n, s) {
                c.report(
                    "ssa",
                    format!(
                        "{} output {s} is {}, but that value's definition is {:?}",
                        c.node_desc(n),
                        c.vname(v),
                        g.value(v).def()
                    ),
                );
            }
        }
    }
    for v in g.value_ids() {
        match g.value(v).def() {
            ValueDef::Node(n, s) => {
                if !g.contains_node(n) || g.node(n).output(s) != Some(v) {
                    c.report(
                        "ssa",
                        format!("value {} claims to be output {s} of a node that does not produce it", c.vname(v)),
                    );
                }
            }
            ValueDef::Initializer => {
                if !g.initializers().contains(&v) || g.initializer(v).is_none() {
                    c.report(
                        "slots",
                        format!("initializer {} is missing from the initializer list or has no data", c.vname(v)),
                    );
                }
            }
            ValueDef::Input => {
                if !g.is_graph_input(v) {
                    c.report("slots", format!("value {} is marked as a graph input but is not listed", c.vname(v)));
                }
            }
            ValueDef::SparseInitializer | ValueDef::Undefined => {}
        }
    }
    for &v in g.initializers() {
        if !c.live(v) || g.value(v).def() != ValueDef::Initializer {
            c.report("slots", format!("the initializer list names {}, which is not an initializer", c.vname(v)));
        }
    }
    for p in g.inputs() {
        if !c.live(p.value) || !matches!(g.value(p.value).def(), ValueDef::Input | ValueDef::Initializer) {
            c.report("slots", format!("graph input {} is not an input or initializer value", c.vname(p.value)));
        }
    }
    for p in g.outputs() {
        if !c.live(p.value) {
            c.report("slots", format!("graph output {} was removed", c.vname(p.value)));
        } else if g.value(p.value).def() == ValueDef::Undefined {
            c.report("dangling", format!("graph output {} is not defined by anything", c.vname(p.value)));
        }
    }
}

fn check_uses_and_edges(c: &mut Checker) {
    let g = c.g;
    // Expected uses, from the nodes' slots.
    let mut expected: HashMap<ValueId, Vec<(NodeId, UseSlot)>> = HashMap::new();
    for n in g.nodes().filter(|&n| g.contains_node(n)) {
        let node = g.node(n);
        for (i, v) in node.inputs().iter().enumerate() {
            if let Some(v) = v {
                expected.entry(*v).or_default().push((n, UseSlot::Input(i)));
            }
        }
        for (i, &v) in node.implicit_inputs().iter().enumerate() {
            expected.entry(v).or_default().push((n, UseSlot::Implicit(i)));
        }
    }
    let mut edge_count = 0usize;
    for v in g.value_ids() {
        let mut want: Vec<(NodeId, UseSlot)> = expected.remove(&v).unwrap_or_default();
        let mut have: Vec<(NodeId, UseSlot)> = g.uses(v).iter().map(|u| (u.node, u.slot)).collect();
        want.sort();
        have.sort();
        if want != have {
            c.report("uses", format!("use-list of {} is {have:?} but the nodes read it at {want:?}", c.vname(v)));
        }
        if !want.is_empty() && g.value(v).def() == ValueDef::Undefined {
            let readers: Vec<String> = want.iter().map(|(n, _)| c.node_desc(*n)).collect();
            c.report("dangling", format!("{} is read by {} but nothing defines it", c.vname(v), readers.join(", ")));
        }
        if let ValueDef::Node(p, _) = g.value(v).def() {
            edge_count += want.len();
            for (n, slot) in &want {
                let found = g.edges_between(p, *n).filter(|e| e.value == v && e.slot == *slot).count();
                if found != 1 {
                    c.report("edges", format!("{found} edges carry {} to {} (want 1)", c.vname(v), c.node_desc(*n)));
                }
            }
        }
    }
    for (v, _) in expected {
        c.report("slots", format!("a node reads {}, which is not a live value", c.vname(v)));
    }
    let total = g.dag.edge_references().count();
    if total != edge_count {
        c.report("edges", format!("the graph has {total} edges but {edge_count} uses of produced values"));
    }
    for e in g.dag.edge_references() {
        if !g.contains_value(e.weight().value) {
            c.report("edges", "an edge carries a removed value".into());
        }
    }
}

fn check_names(c: &mut Checker) {
    let g = c.g;
    let mut seen: HashSet<&str> = HashSet::new();
    for v in g.value_ids() {
        let name = g.value_name(v);
        if name.is_empty() {
            c.report("names", format!("value #{} has an empty name", v.index()));
        }
        if !seen.insert(name) {
            c.report("names", format!("two values are called \"{name}\""));
        }
        if g.find_value(name) != Some(v) {
            c.report("names", format!("the name index does not map \"{name}\" to its value"));
        }
    }
    if g.by_name.len() != seen.len() {
        c.report("names", "the name index holds names of removed values".into());
    }
    let mut nodes: HashMap<&str, usize> = HashMap::new();
    for n in g.nodes().filter(|&n| g.contains_node(n)) {
        let name = g.node(n).name();
        if !name.is_empty() {
            *nodes.entry(name).or_default() += 1;
        }
    }
    let mut dups: Vec<(&str, usize)> = nodes.into_iter().filter(|e| e.1 > 1).collect();
    dups.sort();
    for (name, k) in dups {
        c.report("names", format!("{k} nodes are called \"{name}\" (ONNX Runtime refuses duplicate node names)"));
    }
}

fn check_order(c: &mut Checker) {
    let g = c.g;
    let live = g.dag.node_count();
    let listed: HashSet<NodeId> = g.nodes().collect();
    if listed.len() != g.node_count() {
        c.report("order", "the node order lists a node twice".into());
    }
    if listed.len() != live {
        c.report("order", format!("the node order lists {} nodes but the graph has {live}", listed.len()));
    }
    let mut done: HashSet<NodeId> = HashSet::new();
    let mut late = 0;
    for n in g.nodes().filter(|&n| g.contains_node(n)) {
        let node = g.node(n);
        for v in node.inputs().iter().flatten().chain(node.implicit_inputs()) {
            if c.live(*v)
                && let ValueDef::Node(p, _) = g.value(*v).def()
                && !done.contains(&p)
            {
                late += 1;
                if late <= 5 {
                    c.report(
                        "order",
                        format!(
                            "{} reads {} before its producer {} (not topological)",
                            c.node_desc(n),
                            c.vname(*v),
                            c.node_desc(p)
                        ),
                    );
                }
            }
        }
        done.insert(n);
    }
    if late > 5 {
        c.report("order", format!("... and {} more reads before their producer", late - 5));
    }
    if petgraph::algo::is_cyclic_directed(&g.dag) {
        c.report("order", "the graph has a cycle".into());
    }
}

fn check_tensors(c: &mut Checker) {
    let g = c.g;
    for &v in g.initializers() {
        if let Some(t) = g.initializer(v).filter(|_| c.live(v))
            && t.dtype().and_then(DataType::size).is_some()
            && let Err(e) = t.raw_bytes()
        {
            c.report("tensor", format!("initializer {}: {e}", c.vname(v)));
        }
    }
}

fn check_qdq(c: &mut Checker) {
    let g = c.g;
    for n in g.nodes().filter(|&n| g.contains_node(n)) {
        let node = g.node(n);
        let (is_q, is_dq) = (node.is_op("QuantizeLinear"), node.is_op("DequantizeLinear"));
        if !is_q && !is_dq {
            continue;
        }
        let dt = |slot: usize| node.input(slot).and_then(|v| g.dtype(v));
        let out = node.output(0).and_then(|v| g.dtype(v));
        let (x, scale, zp) = (dt(0), dt(1), dt(2));
        let desc = c.node_desc(n);
        if let Some(s) = scale
            && !s.is_float()
        {
            c.report("qdq", format!("{desc}: scale is {s}, must be a float type"));
        }
        if is_q {
            if let Some(x) = x
                && !x.is_float()
            {
                c.report("qdq", format!("{desc}: input is {x}, must be a float type"));
            }
            if let Some(z) = zp
                && !z.is_quantized_int()
                && !z.is_float()
            {
                c.report("qdq", format!("{desc}: zero point is {z}, must be an integer type such as i8 or u8"));
            }
            let expect = zp.or(Some(DataType::U8));
            if let (Some(o), Some(e)) = (out, expect)
                && node.attr_int("output_dtype").is_none()
                && o != e
            {
                c.report("qdq", format!("{desc}: output is {o} but the zero point makes it {e}"));
            }
        } else {
            if let Some(x) = x
                && x.is_float()
                && !matches!(x, DataType::F32 | DataType::F16 | DataType::BF16)
            {
                c.report("qdq", format!("{desc}: input is {x}, must be a quantized integer type"));
            }
            if let Some(x) = x
                && !x.is_float()
                && !x.is_quantized_int()
                && x != DataType::I32
            {
                c.report("qdq", format!("{desc}: input is {x}, must be a quantized integer type"));
            }
            if let (Some(x), Some(z)) = (x, zp)
                && x != z
            {
                c.report("qdq", format!("{desc}: input is {x} but the zero point is {z}; they must match"));
            }
            if let (Some(o), Some(s)) = (out, scale)
                && o != s
            {
                c.report("qdq", format!("{desc}: output is {o} but the scale is {s}; they must match"));
            }
        }
        // Per-axis: the scale's length must equal the quantized axis' size.
        let scale_dims = node.input(1).and_then(|v| g.known_dims(v));
        let x_dims = node.input(0).and_then(|v| g.known_dims(v));
        if let (Some(sd), Some(xd)) = (scale_dims, x_dims)
            && sd.len() == 1
            && sd[0] > 1
        {
            let axis = node.attr_int("axis").unwrap_or(1);
            let ax = if axis < 0 { axis + xd.len() as i64 } else { axis };
            match xd.get(ax.max(0) as usize) {
                Some(&d) if ax >= 0 && d == sd[0] => {}
                Some(&d) if ax >= 0 => c.report(
                    "qdq",
                    format!("{desc}: per-axis scale has {} values but axis {axis} of the input has size {d}", sd[0]),
                ),
                _ => c.report("qdq", format!("{desc}: axis {axis} is out of range for a rank-{} input", xd.len())),
            }
        }
        if let (Some(sv), Some(zv)) = (node.input(1), node.input(2))
            && let (Some(sd), Some(zd)) = (g.known_dims(sv), g.known_dims(zv))
            && sd != zd
        {
            c.report("qdq", format!("{desc}: scale dims {sd:?} and zero point dims {zd:?} differ"));
        }
    }
}

/// Nested graphs in a node's attributes (If/Loop/Scan bodies).
fn subgraphs(node: &NodeProto) -> impl Iterator<Item = &GraphProto> {
    node.attribute.iter().flat_map(|a| a.g.iter().chain(&a.graphs))
}

fn check_types(c: &mut Checker) {
    let g = c.g;
    let bad = |info: &ValueInfoProto| info.r#type.as_ref().is_some_and(lacks_elem_type);
    const WHY: &str = "declares a tensor type without an element type (invalid ONNX; ONNX Runtime refuses it)";
    for (what, ports) in [("input", g.inputs()), ("output", g.outputs())] {
        for p in ports.iter().filter(|p| bad(&p.info)) {
            c.report("types", format!("graph {what} {} {WHY}", c.vname(p.value)));
        }
    }
    for e in &g.value_info {
        match e {
            InfoEntry::Attached(v) if c.live(*v) => {
                if g.value(*v).info.as_ref().is_some_and(bad) {
                    c.report("types", format!("the value_info of {} {WHY}", c.vname(*v)));
                }
            }
            InfoEntry::Attached(_) => {}
            InfoEntry::Orphan(info) if bad(info) => {
                c.report("types", format!("the value_info entry \"{}\" {WHY}", info.name()));
            }
            InfoEntry::Orphan(_) => {}
        }
    }
    fn walk(c: &mut Checker, owner: &str, sg: &GraphProto) {
        let bad = |info: &ValueInfoProto| info.r#type.as_ref().is_some_and(lacks_elem_type);
        for info in sg.input.iter().chain(&sg.output).chain(&sg.value_info).filter(|i| bad(i)) {
            c.report("types", format!("{owner}, subgraph \"{}\": \"{}\" {WHY}", sg.name(), info.name()));
        }
        for n in &sg.node {
            for inner in subgraphs(n) {
                walk(c, owner, inner);
            }
        }
    }
    for n in g.nodes().filter(|&n| g.contains_node(n)) {
        let owner = c.node_desc(n);
        for sg in subgraphs(g.node(n).proto()) {
            walk(c, &owner, sg);
        }
    }
}

fn check_opsets(c: &mut Checker) {
    let g = c.g;
    // The standard domain may be imported as "" or "ai.onnx".
    let imported =
        |d: &str| g.opset_imports().iter().any(|o| o.domain() == d || (d.is_empty() && o.domain() == "ai.onnx"));
    let mut missing: Vec<(String, String)> = Vec::new();
    fn walk(nodes: &[NodeProto], missing: &mut Vec<(String, String)>, imported: &dyn Fn(&str) -> bool) {
        for n in nodes {
            if !imported(n.domain()) && !missing.iter().any(|m| m.0 == n.domain()) {
                missing.push((n.domain().to_string(), format!("node \"{}\" ({})", n.name(), n.op_type())));
            }
            for sg in subgraphs(n) {
                walk(&sg.node, missing, imported);
            }
        }
    }
    for n in g.nodes().filter(|&n| g.contains_node(n)) {
        let node = g.node(n);
        if !imported(node.domain()) && !missing.iter().any(|m| m.0 == node.domain()) {
            missing.push((node.domain().to_string(), c.node_desc(n)));
        }
        for sg in subgraphs(node.proto()) {
            walk(&sg.node, &mut missing, &imported);
        }
    }
    for (domain, first) in missing {
        let shown = if domain.is_empty() { "the standard domain (\"\")".to_string() } else { format!("\"{domain}\"") };
        c.report("opset", format!("{first} uses operator domain {shown}, which the model does not import"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(body: &str) -> Vec<String> {
        let text = format!("graph g {{\n  opset ai.onnx 13\n  input %x: f32[1,4,8,8]\n{body}\n  output %y\n}}\n");
        check(&crate::parse_graph(&text).unwrap())
            .into_iter()
            .filter(|v| v.rule == "attrs")
            .map(|v| v.message)
            .collect()
    }

    #[test]
    fn invalid_attributes_are_located_errors() {
        let w = "  init @w: f32[8,4,3,3] = fill(0.1)\n";
        assert!(violations(&format!("{w}  %y = Conv(%x, @w) {{kernel_shape=[3,3], pads=[1,1,1,1]}}  # ok")).is_empty());
        for (body, needle) in [
            (format!("{w}  %y = Conv(%x, @w) {{strides=[0,0]}}  # c"), "strides [0, 0]"),
            (format!("{w}  %y = Conv(%x, @w) {{dilations=[1,0]}}  # c"), "dilations"),
            (format!("{w}  %y = Conv(%x, @w) {{pads=[-1,0,0,0]}}  # c"), "pads"),
            (format!("{w}  %y = Conv(%x, @w) {{kernel_shape=[5,5]}}  # c"), "kernel_shape [5, 5] does not match"),
            (format!("{w}  %y = Conv(%x, @w) {{group=3}}  # c"), "group 3 does not divide"),
            (format!("{w}  %y = Conv(%x, @w) {{group=2}}  # c"), "the input has 4"),
            (format!("{w}  %y = Conv(%x, @w) {{group=0}}  # c"), "group 0"),
            ("  %y = MaxPool(%x) {kernel_shape=[0,0]}  # p".to_string(), "kernel_shape [0, 0]"),
            ("  init @s: f32[4] = [1.0,1.0,0.0,2.0]\n  %y = Resize(%x, _, @s)  # r".to_string(), "scales"),
            ("  %y = Softmax(%x) {axis=4}  # s".to_string(), "axis 4 is out of range for rank 4"),
            ("  %y = Flatten(%x) {axis=-5}  # f".to_string(), "axis -5"),
        ] {
            let v = violations(&body);
            assert!(v.iter().any(|m| m.contains(needle)), "{body}: {v:?}");
            assert!(v.iter().all(|m| m.starts_with("node \"")), "{v:?}");
        }
        assert!(violations("  %y = Flatten(%x) {axis=4}  # f").is_empty(), "Flatten's axis may equal the rank");
    }
}
