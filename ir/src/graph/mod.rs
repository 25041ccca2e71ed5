//! The graph: ops as petgraph nodes, tensors as values with one producer and
//! a use-list.
//!
//! Why this shape: passes ask "who produces this tensor / who reads it" far
//! more often than anything else, so both are stored, not searched. Edges of
//! the underlying `StableDiGraph` (producer → consumer, one per use) are
//! derived from those lists by the mutation API in [`mutate`](self) and exist
//! so petgraph's algorithms (cycle checks, toposort) apply directly. Callers
//! see [`NodeId`] / [`ValueId`], never petgraph indices: petgraph reuses a
//! removed node's slot, while our ids are never reused, so a stale id is an
//! error instead of another node (the id table and why it was chosen over
//! never freeing slots are in [`ids`]). The same module holds
//! [`Graph::generation`], the counter every mutation bumps.
//!
//! Everything from the protobuf that qforge does not interpret (doc strings,
//! metadata, unknown attributes, subgraphs, orphan `value_info` entries) is
//! kept next to the parts it does, so export is lossless.

mod convert;
mod ids;
mod mutate;
mod subgraph;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};

pub use ids::{NodeId, ValueId};
pub use mutate::{InsertAt, NewNode};

use crate::attr::AttrExt;
use crate::dtype::DataType;
use crate::proto::{AttributeProto, GraphProto, NodeProto, OperatorSetIdProto, SparseTensorProto, ValueInfoProto};
use crate::shape::{Shape, TypeInfo};
use crate::tensor::Tensor;

/// Which input of a node reads a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UseSlot {
    /// Regular input number `i`.
    Input(usize),
    /// Read from inside one of the node's subgraphs (an If/Loop body that
    /// captures an outer tensor by name); `i` indexes the node's implicit inputs.
    Implicit(usize),
}

/// One read of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Use {
    /// The reading node.
    pub node: NodeId,
    /// Where it reads it.
    pub slot: UseSlot,
}

/// How a value comes into existence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueDef {
    /// A graph input without initializer.
    Input,
    /// An initializer (constant unless it is also listed as a graph input).
    Initializer,
    /// A sparse initializer.
    SparseInitializer,
    /// Output `slot` of a node.
    Node(NodeId, usize),
    /// Nothing defines it (transiently, between mutations; the verifier
    /// rejects a used value in this state).
    Undefined,
}

/// A tensor of the graph.
#[derive(Debug, Clone)]
pub struct Value {
    pub(crate) name: String,
    pub(crate) def: ValueDef,
    pub(crate) tensor: Option<Tensor>,
    pub(crate) sparse: Option<SparseTensorProto>,
    pub(crate) uses: Vec<Use>,
    /// This value's entry of `GraphProto.value_info`, if it has one.
    pub(crate) info: Option<ValueInfoProto>,
}

impl Value {
    /// The tensor name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What defines it.
    pub fn def(&self) -> ValueDef {
        self.def
    }
    /// Its reads by nodes (graph outputs are not uses; see [`Graph::is_graph_output`]).
    pub fn uses(&self) -> &[Use] {
        &self.uses
    }
    /// Initializer data, for initializers.
    pub fn initializer(&self) -> Option<&Tensor> {
        self.tensor.as_ref()
    }
}

/// An op node. Inputs and outputs are changed through [`Graph`]'s mutation
/// API; name, op type, domain and attributes can be changed here.
#[derive(Debug, Clone)]
pub struct Node {
    /// Every NodeProto field except `input`/`output`, which are derived
    /// from `inputs`/`outputs` at export.
    pub(crate) proto: NodeProto,
    pub(crate) inputs: Vec<Option<ValueId>>,
    pub(crate) outputs: Vec<Option<ValueId>>,
    pub(crate) implicit: Vec<ValueId>,
}

impl Node {
    /// The op type (`Conv`).
    pub fn op_type(&self) -> &str {
        self.proto.op_type()
    }
    /// The operator domain (`""` for the standard ONNX ops).
    pub fn domain(&self) -> &str {
        self.proto.domain()
    }
    /// True for the standard op `op` (default domain or `ai.onnx`).
    pub fn is_op(&self, op: &str) -> bool {
        self.op_type() == op && matches!(self.domain(), "" | "ai.onnx")
    }
    /// The node name (may be empty).
    pub fn name(&self) -> &str {
        self.proto.name()
    }
    /// Sets the node name.
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.proto.name = Some(name.into());
    }
    /// Sets the op type (the caller keeps inputs and attributes meaningful).
    pub fn set_op_type(&mut self, op: impl Into<String>) {
        self.proto.op_type = Some(op.into());
    }
    /// Inputs by slot; `None` is an omitted optional input (`""` in ONNX).
    pub fn inputs(&self) -> &[Option<ValueId>] {
        &self.inputs
    }
    /// Input `i`, if present.
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }
    /// Outputs by slot.
    pub fn outputs(&self) -> &[Option<ValueId>] {
        &self.outputs
    }
    /// Output `i`, if present.
    pub fn output(&self, i: usize) -> Option<ValueId> {
        self.outputs.get(i).copied().flatten()
    }
    /// Outer-scope values its subgraphs read.
    pub fn implicit_inputs(&self) -> &[ValueId] {
        &self.implicit
    }
    /// All attributes, in file order.
    pub fn attrs(&self) -> &[AttributeProto] {
        &self.proto.attribute
    }
    /// The attributes in a canonical byte form (sorted by name, each
    /// encoded length-delimited): equal bytes mean equal attributes, so
    /// passes can key nodes by what they compute.
    pub fn attrs_key(&self) -> Vec<u8> {
        use prost::Message;
        let mut attrs: Vec<&AttributeProto> = self.proto.attribute.iter().collect();
        attrs.sort_by(|a, b| a.name().cmp(b.name()));
        let mut bytes = Vec::new();
        for a in attrs {
            bytes.extend(a.encode_length_delimited_to_vec());
        }
        bytes
    }
    /// The attribute called `name`.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name() == name)
    }
    /// An `INT` attribute.
    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.attr(name).and_then(AttrExt::as_int)
    }
    /// A `FLOAT` attribute.
    pub fn attr_float(&self, name: &str) -> Option<f32> {
        self.attr(name).and_then(AttrExt::as_float)
    }
    /// A `STRING` attribute.
    pub fn attr_str(&self, name: &str) -> Option<&str> {
        self.attr(name).and_then(AttrExt::as_str)
    }
    /// An `INTS` attribute.
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).and_then(AttrExt::as_ints)
    }
    /// Sets (replacing one of the same name, else appending) an attribute.
    pub fn set_attr(&mut self, attr: AttributeProto) {
        match self.proto.attribute.iter_mut().find(|a| a.name() == attr.name()) {
            Some(slot) => *slot = attr,
            None => self.proto.attribute.push(attr),
        }
    }
    /// Removes an attribute, returning it.
    pub fn remove_attr(&mut self, name: &str) -> Option<AttributeProto> {
        let i = self.proto.attribute.iter().position(|a| a.name() == name)?;
        Some(self.proto.attribute.remove(i))
    }
    /// The protobuf fields other than inputs/outputs (doc string, metadata, …).
    pub fn proto(&self) -> &NodeProto {
        &self.proto
    }
}

/// Edge weight: the value carried and the consumer slot reading it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge {
    pub(crate) value: ValueId,
    pub(crate) slot: UseSlot,
}

/// A graph input or output: the value and its interface declaration.
#[derive(Debug, Clone)]
pub struct Port {
    /// The value.
    pub value: ValueId,
    /// Its `ValueInfoProto` (name is rewritten from the value at export).
    pub info: ValueInfoProto,
}

/// One entry of `GraphProto.value_info`, in file order.
#[derive(Debug, Clone)]
pub(crate) enum InfoEntry {
    /// Describes a live value (its proto is in `Value::info`).
    Attached(ValueId),
    /// Describes a name that nothing in the graph defines; kept verbatim.
    Orphan(ValueInfoProto),
}

/// An ONNX graph in qforge's IR.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub(crate) dag: StableDiGraph<Node, Edge, u32>,
    /// Id allocator, shared with this graph's clones (see [`ids`]).
    pub(crate) ids: Arc<ids::IdSpace>,
    /// `NodeId` sequence number → petgraph index.
    pub(crate) node_slots: Vec<ids::Slot<NodeIndex<u32>>>,
    /// Values by `ValueId` sequence number.
    pub(crate) values: Vec<ids::Slot<Value>>,
    /// See [`Graph::generation`].
    pub(crate) generation: ids::Generation,
    pub(crate) by_name: HashMap<String, ValueId>,
    /// Node order of the file; kept topological by the mutation API.
    pub(crate) order: Vec<NodeId>,
    pub(crate) inputs: Vec<Port>,
    pub(crate) outputs: Vec<Port>,
    pub(crate) value_info: Vec<InfoEntry>,
    pub(crate) initializers: Vec<ValueId>,
    pub(crate) sparse_initializers: Vec<ValueId>,
    /// The GraphProto fields not represented above (name, doc string,
    /// quantization annotations, metadata), with its lists emptied.
    pub(crate) header: GraphProto,
    pub(crate) opset_import: Vec<OperatorSetIdProto>,
}

impl Graph {
    /// An empty graph called `name`, importing the default domain at `opset`.
    pub fn new(name: &str, opset: i64) -> Graph {
        Graph {
            header: GraphProto { name: Some(name.to_string()), ..Default::default() },
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
            ..Default::default()
        }
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        self.header.name()
    }

    /// The value's name.
    pub fn value_name(&self, v: ValueId) -> &str {
        &self.value(v).name
    }

    /// Nodes in graph order (topological).
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.order.iter().copied()
    }

    /// A snapshot of the node order, for passes that mutate while walking.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.order.clone()
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    /// The value called `name`.
    pub fn find_value(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }

    /// The first node called `name`.
    pub fn find_node(&self, name: &str) -> Option<NodeId> {
        self.nodes().find(|&n| self.node(n).name() == name)
    }

    /// The node and output slot producing `v`.
    pub fn producer(&self, v: ValueId) -> Option<(NodeId, usize)> {
        match self.value(v).def {
            ValueDef::Node(n, s) => Some((n, s)),
            _ => None,
        }
    }

    /// The node producing `v`.
    pub fn producer_node(&self, v: ValueId) -> Option<NodeId> {
        self.producer(v).map(|p| p.0)
    }

    /// Reads of `v` by nodes.
    pub fn uses(&self, v: ValueId) -> &[Use] {
        &self.value(v).uses
    }

    /// Distinct nodes reading `v`, in use order.
    pub fn users(&self, v: ValueId) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for u in &self.value(v).uses {
            if !out.contains(&u.node) {
                out.push(u.node);
            }
        }
        out
    }

    /// Graph inputs (including initializers listed as inputs).
    pub fn inputs(&self) -> &[Port] {
        &self.inputs
    }

    /// Graph outputs.
    pub fn outputs(&self) -> &[Port] {
        &self.outputs
    }

    /// Graph inputs that are not initializers: what a caller must feed.
    pub fn runtime_inputs(&self) -> Vec<ValueId> {
        self.inputs.iter().map(|p| p.value).filter(|&v| self.value(v).def == ValueDef::Input).collect()
    }

    /// True when `v` is a graph output.
    pub fn is_graph_output(&self, v: ValueId) -> bool {
        self.outputs.iter().any(|p| p.value == v)
    }

    /// True when `v` is listed as a graph input.
    pub fn is_graph_input(&self, v: ValueId) -> bool {
        self.inputs.iter().any(|p| p.value == v)
    }

    /// Node uses plus graph-output appearances: zero means `v` is dead.
    pub fn reader_count(&self, v: ValueId) -> usize {
        self.value(v).uses.len() + self.outputs.iter().filter(|p| p.value == v).count()
    }

    /// Initializers in file order.
    pub fn initializers(&self) -> &[ValueId] {
        &self.initializers
    }

    /// The initializer data of `v`.
    pub fn initializer(&self, v: ValueId) -> Option<&Tensor> {
        self.value(v).tensor.as_ref()
    }

    /// The value of `v` when it is a compile-time constant: an initializer
    /// that is not overridable (not a graph input), or the output of a
    /// `Constant` node.
    pub fn constant(&self, v: ValueId) -> Option<Tensor> {
        let val = self.value(v);
        match val.def {
            ValueDef::Initializer if !self.is_graph_input(v) => val.tensor.clone(),
            ValueDef::Node(n, 0) if self.node(n).is_op("Constant") => constant_node_value(self.node(n)),
            _ => None,
        }
    }

    /// What is known about `v`'s type: from its initializer, its
    /// `value_info`, or its graph input/output declaration, in that order.
    pub fn type_info(&self, v: ValueId) -> Option<TypeInfo> {
        let val = self.value(v);
        if let Some(t) = &val.tensor {
            return Some(TypeInfo { dtype: t.dtype(), shape: Some(Shape::known(t.dims())) });
        }
        let from = |info: &ValueInfoProto| info.r#type.as_ref().and_then(TypeInfo::from_proto);
        if let Some(t) = val.info.as_ref().and_then(from) {
            return Some(t);
        }
        if let Some(t) = self.inputs.iter().chain(&self.outputs).filter(|p| p.value == v).find_map(|p| from(&p.info)) {
            return Some(t);
        }
        if let ValueDef::Node(n, 0) = val.def
            && self.node(n).is_op("Constant")
            && let Some(t) = constant_node_value(self.node(n))
        {
            return Some(TypeInfo { dtype: t.dtype(), shape: Some(Shape::known(t.dims())) });
        }
        None
    }

    /// The element type of `v`, when known.
    pub fn dtype(&self, v: ValueId) -> Option<DataType> {
        self.type_info(v).and_then(|t| t.dtype)
    }

    /// The fully known dims of `v`.
    pub fn known_dims(&self, v: ValueId) -> Option<Vec<i64>> {
        self.type_info(v).and_then(|t| t.known_dims())
    }

    /// The opset version imported for `domain` (`""` = standard ops).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| if d == "ai.onnx" { String::new() } else { d.to_string() };
        self.opset_import.iter().find(|o| norm(o.domain()) == norm(domain)).map(|o| o.version())
    }

    /// Sets (or adds) the opset version of `domain`.
    pub fn set_opset(&mut self, domain: &str, version: i64) {
        if self.opset_import.iter().any(|o| o.domain() == domain && o.version() == version) {
            return;
        }
        self.touch();
        match self.opset_import.iter_mut().find(|o| o.domain() == domain) {
            Some(o) => o.version = Some(version),
            None => {
                self.opset_import.push(OperatorSetIdProto { domain: Some(domain.to_string()), version: Some(version) })
            }
        }
    }

    /// The opset imports.
    pub fn opset_imports(&self) -> &[OperatorSetIdProto] {
        &self.opset_import
    }
}

/// The tensor of a `Constant` node, from whichever `value*` attribute it uses.
fn constant_node_value(node: &Node) -> Option<Tensor> {
    let a = node.attrs().first()?;
    if node.attrs().len() != 1 {
        return None;
    }
    match a.name() {
        "value" => a.as_tensor(),
        "value_float" => a.as_float().map(Tensor::scalar),
        "value_floats" => a.as_floats().map(|f| Tensor::new(&[f.len() as i64], f)),
        "value_int" => a.as_int().map(Tensor::scalar),
        "value_ints" => a.as_ints().map(|i| Tensor::new(&[i.len() as i64], i)),
        _ => None,
    }
}
