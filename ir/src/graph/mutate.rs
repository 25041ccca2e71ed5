//! The mutation API: the only code that changes a [`Graph`]'s structure.
//!
//! Each function updates, together, the node's input/output slots, the
//! values' producer and use-lists, and the petgraph edges, so the three can
//! never disagree (the verifier re-checks that after every pass). Names of new
//! values and nodes are derived from a hint and made unique deterministically.

use petgraph::Direction;
use petgraph::visit::EdgeRef;

use super::{Edge, Graph, InfoEntry, Node, NodeId, Port, Use, UseSlot, Value, ValueDef, ValueId, subgraph};
use crate::error::IrError;
use crate::proto::{AttributeProto, NodeProto, ValueInfoProto};
use crate::shape::TypeInfo;
use crate::tensor::Tensor;

/// Where [`Graph::insert_node`] puts the new node in the node order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertAt {
    /// Right before this node.
    Before(NodeId),
    /// Right after this node.
    After(NodeId),
    /// At the end of the graph.
    End,
}

/// Description of a node to insert.
#[derive(Debug, Clone, Default)]
pub struct NewNode {
    /// Op type.
    pub op_type: String,
    /// Domain (`""` for standard ops).
    pub domain: String,
    /// Node name hint (made unique).
    pub name: String,
    /// Inputs by slot.
    pub inputs: Vec<Option<ValueId>>,
    /// Name hints for the outputs (made unique); `""` leaves the slot empty.
    pub outputs: Vec<String>,
    /// Attributes.
    pub attrs: Vec<AttributeProto>,
}

impl NewNode {
    /// A standard-domain op with the given inputs, one output named after `out`.
    pub fn new(op_type: &str, name: &str, inputs: &[ValueId], out: &str) -> NewNode {
        NewNode {
            op_type: op_type.to_string(),
            name: name.to_string(),
            inputs: inputs.iter().map(|&v| Some(v)).collect(),
            outputs: vec![out.to_string()],
            ..Default::default()
        }
    }

    /// Adds an attribute.
    pub fn attr(mut self, a: AttributeProto) -> NewNode {
        self.attrs.push(a);
        self
    }
}

impl Graph {
    /// A value name derived from `hint` that no value has yet
    /// (`hint`, `hint_1`, `hint_2`, …).
    pub fn unique_value_name(&self, hint: &str) -> String {
        let hint = if hint.is_empty() { "v" } else { hint };
        if !self.by_name.contains_key(hint) {
            return hint.to_string();
        }
        (1..).map(|i| format!("{hint}_{i}")).find(|n| !self.by_name.contains_key(n)).unwrap_or_default()
    }

    /// A node name derived from `hint` that no node has yet.
    pub fn unique_node_name(&self, hint: &str) -> String {
        let taken: std::collections::HashSet<&str> = self.order.iter().map(|&n| self.node(n).name()).collect();
        if !hint.is_empty() && !taken.contains(hint) {
            return hint.to_string();
        }
        let hint = if hint.is_empty() { "node" } else { hint };
        (1..).map(|i| format!("{hint}_{i}")).find(|n| !taken.contains(n.as_str())).unwrap_or_default()
    }

    pub(crate) fn new_value(&mut self, name: String, def: ValueDef) -> ValueId {
        let id = self.register_value(Value {
            name: name.clone(),
            def,
            tensor: None,
            sparse: None,
            uses: Vec::new(),
            info: None,
        });
        self.by_name.insert(name, id);
        id
    }

    /// Adds a graph input (name must be unused).
    pub fn add_input(&mut self, name: &str, ty: &TypeInfo) -> Result<ValueId, IrError> {
        if self.by_name.contains_key(name) {
            return Err(IrError::DuplicateValue(name.to_string()));
        }
        let v = self.new_value(name.to_string(), ValueDef::Input);
        let info = ValueInfoProto { name: Some(name.to_string()), r#type: Some(ty.to_proto()), ..Default::default() };
        self.inputs.push(Port { value: v, info });
        Ok(v)
    }

    /// Declares `v` a graph output (its type is taken from what is known).
    pub fn add_output(&mut self, v: ValueId) {
        let ty = self.type_info(v).map(|t| t.to_proto());
        let info = ValueInfoProto { name: Some(self.value(v).name.clone()), r#type: ty, ..Default::default() };
        self.touch();
        self.outputs.push(Port { value: v, info });
    }

    /// Adds an initializer named after `hint` (made unique).
    pub fn add_initializer(&mut self, hint: &str, mut tensor: Tensor) -> ValueId {
        let name = self.unique_value_name(hint);
        tensor.proto.name = Some(name.clone());
        let v = self.new_value(name, ValueDef::Initializer);
        self.value_mut(v).tensor = Some(tensor);
        self.initializers.push(v);
        v
    }

    /// Replaces the data of initializer `v` (other readers see the change:
    /// create a new initializer instead when `v` is shared).
    pub fn set_initializer(&mut self, v: ValueId, mut tensor: Tensor) -> Result<(), IrError> {
        let val = self.value_mut(v);
        if val.def != ValueDef::Initializer {
            return Err(IrError::Mutation(format!("\"{}\" is not an initializer", val.name)));
        }
        tensor.proto.name = Some(val.name.clone());
        if let Some(old) = &val.tensor {
            tensor.external = old.external;
        }
        val.tensor = Some(tensor);
        Ok(())
    }

    /// Records what is known of `v`'s type: in its graph input/output
    /// declaration when it has one, else in its `value_info` entry (created
    /// if needed). Initializers carry their own type and are left alone. A
    /// type whose element type is unknown is only merged into a declaration
    /// that already names one (see [`TypeInfo::write_into`]); it never
    /// creates an entry. Returns whether anything was recorded.
    pub fn set_type(&mut self, v: ValueId, ty: &TypeInfo) -> bool {
        let wrote = self.record_type(v, ty);
        if wrote {
            self.touch();
        }
        wrote
    }

    fn record_type(&mut self, v: ValueId, ty: &TypeInfo) -> bool {
        if self.value(v).tensor.is_some() {
            return false;
        }
        let (mut declared, mut wrote) = (false, false);
        for p in self.inputs.iter_mut().chain(self.outputs.iter_mut()).filter(|p| p.value == v) {
            wrote |= ty.write_into(&mut p.info.r#type);
            declared = true;
        }
        if declared {
            return wrote;
        }
        let name = self.value(v).name.clone();
        // `set_type` counts the change, and only when there is one.
        let val = self.value_mut_untracked(v);
        match &mut val.info {
            Some(info) => ty.write_into(&mut info.r#type),
            None => {
                let mut r#type = None;
                if !ty.write_into(&mut r#type) {
                    return false;
                }
                val.info = Some(ValueInfoProto { name: Some(name), r#type, ..Default::default() });
                self.value_info.push(InfoEntry::Attached(v));
                true
            }
        }
    }

    /// Inserts a node; its outputs are new values named after the hints.
    /// The caller places it so that the order stays topological (after the
    /// producers of its inputs, before the readers of its outputs).
    pub fn insert_node(&mut self, at: InsertAt, new: NewNode) -> Result<NodeId, IrError> {
        for v in new.inputs.iter().flatten() {
            if !self.contains_value(*v) {
                return Err(IrError::Mutation(format!("new node \"{}\" reads a removed value", new.name)));
            }
        }
        let name = self.unique_node_name(&new.name);
        let proto = NodeProto {
            name: Some(name),
            op_type: Some(new.op_type),
            domain: (!new.domain.is_empty()).then_some(new.domain),
            attribute: new.attrs,
            ..Default::default()
        };
        let n = self.add_node_raw(proto);
        self.place(n, at)?;
        for (slot, v) in new.inputs.into_iter().enumerate() {
            self.set_input(n, slot, v);
        }
        for hint in new.outputs {
            let slot = self.node(n).outputs.len();
            if hint.is_empty() {
                self.node_mut(n).outputs.push(None);
            } else {
                let name = self.unique_value_name(&hint);
                let v = self.new_value(name, ValueDef::Node(n, slot));
                self.node_mut(n).outputs.push(Some(v));
            }
        }
        Ok(n)
    }

    /// Adds a node with no inputs or outputs and no place in the order.
    pub(crate) fn add_node_raw(&mut self, proto: NodeProto) -> NodeId {
        let ix = self.dag.add_node(Node { proto, inputs: Vec::new(), outputs: Vec::new(), implicit: Vec::new() });
        self.register_node(ix)
    }

    fn place(&mut self, n: NodeId, at: InsertAt) -> Result<(), IrError> {
        let pos = match at {
            InsertAt::End => self.order.len(),
            InsertAt::Before(a) | InsertAt::After(a) => {
                let i = self
                    .order
                    .iter()
                    .position(|&x| x == a)
                    .ok_or_else(|| IrError::Mutation("insertion anchor is not in the graph".into()))?;
                if matches!(at, InsertAt::After(_)) { i + 1 } else { i }
            }
        };
        self.touch();
        self.order.insert(pos, n);
        Ok(())
    }

    fn connect(&mut self, v: ValueId, node: NodeId, slot: UseSlot) {
        self.value_mut(v).uses.push(Use { node, slot });
        if let ValueDef::Node(p, _) = self.value(v).def {
            let (from, to) = (self.live_ix(p), self.live_ix(node));
            self.dag.add_edge(from, to, Edge { value: v, slot });
        }
    }

    fn disconnect(&mut self, v: ValueId, node: NodeId, slot: UseSlot) {
        let val = self.value_mut(v);
        if let Some(i) = val.uses.iter().position(|u| u.node == node && u.slot == slot) {
            val.uses.remove(i);
        }
        let edge = self
            .dag
            .edges_directed(self.live_ix(node), Direction::Incoming)
            .find(|e| e.weight().value == v && e.weight().slot == slot)
            .map(|e| e.id());
        if let Some(e) = edge {
            self.dag.remove_edge(e);
        }
    }

    /// Sets input `slot` of `n` to `v` (`None` = omitted optional input);
    /// a slot past the end extends the input list with empty slots.
    pub fn set_input(&mut self, n: NodeId, slot: usize, v: Option<ValueId>) {
        if self.node(n).inputs.get(slot) == Some(&v) {
            return;
        }
        if let Some(Some(old)) = self.node(n).inputs.get(slot).copied() {
            self.disconnect(old, n, UseSlot::Input(slot));
        }
        let node = self.node_mut(n);
        if node.inputs.len() <= slot {
            node.inputs.resize(slot + 1, None);
        }
        node.inputs[slot] = v;
        if let Some(v) = v {
            self.connect(v, n, UseSlot::Input(slot));
        }
    }

    /// Drops trailing empty input slots of `n`.
    pub fn trim_inputs(&mut self, n: NodeId) {
        if self.node(n).inputs.last() != Some(&None) {
            return;
        }
        let node = self.node_mut(n);
        while node.inputs.last() == Some(&None) {
            node.inputs.pop();
        }
    }

    /// Removes input `slot` of `n`, shifting the later inputs down by one.
    pub fn remove_input(&mut self, n: NodeId, slot: usize) {
        let inputs = self.node(n).inputs.clone();
        if slot >= inputs.len() {
            return;
        }
        for (i, v) in inputs.iter().enumerate().skip(slot) {
            if let Some(v) = v {
                self.disconnect(*v, n, UseSlot::Input(i));
            }
        }
        self.node_mut(n).inputs.truncate(slot);
        for (i, v) in inputs.into_iter().enumerate().skip(slot + 1) {
            self.set_input(n, i - 1, v);
        }
    }

    pub(crate) fn add_implicit(&mut self, n: NodeId, v: ValueId) {
        let slot = self.node(n).implicit.len();
        self.node_mut(n).implicit.push(v);
        self.connect(v, n, UseSlot::Implicit(slot));
    }

    /// Replaces node `old` by a new node at the same place in the order that
    /// produces the same output values (same names, same readers): the way
    /// to turn one op into another. `new.outputs` is ignored.
    pub fn replace_node(&mut self, old: NodeId, new: NewNode) -> Result<NodeId, IrError> {
        let outputs = self.node(old).outputs.clone();
        let n = self.insert_node(InsertAt::Before(old), NewNode { outputs: Vec::new(), ..new })?;
        self.remove_node(old);
        for (slot, v) in outputs.into_iter().enumerate() {
            if let Some(v) = v {
                self.value_mut(v).def = ValueDef::Node(n, slot);
                for u in self.value(v).uses.clone() {
                    let (from, to) = (self.live_ix(n), self.live_ix(u.node));
                    self.dag.add_edge(from, to, Edge { value: v, slot: u.slot });
                }
            }
            self.node_mut(n).outputs.push(v);
        }
        Ok(n)
    }

    /// Turns `v`, which nothing produces any more (its node was removed),
    /// into an initializer holding `tensor`; name and readers are kept.
    pub fn make_initializer(&mut self, v: ValueId, mut tensor: Tensor) -> Result<(), IrError> {
        let val = self.value(v);
        if val.def != ValueDef::Undefined {
            return Err(IrError::Mutation(format!("\"{}\" still has a definition", val.name)));
        }
        tensor.proto.name = Some(val.name.clone());
        let val = self.value_mut(v);
        val.def = ValueDef::Initializer;
        val.tensor = Some(tensor);
        // An initializer's type comes from its data; drop a stale value_info.
        val.info = None;
        self.value_info.retain(|e| !matches!(e, InfoEntry::Attached(x) if *x == v));
        self.initializers.push(v);
        Ok(())
    }

    /// Removes a node. Its inputs lose this use; its outputs stay as values
    /// with no producer, for the caller to reconnect (`replace_value`) or
    /// remove (`remove_value`).
    pub fn remove_node(&mut self, n: NodeId) -> Node {
        let node = self.node(n).clone();
        for (slot, v) in node.inputs.iter().enumerate() {
            if let Some(v) = v {
                let val = self.value_mut(*v);
                val.uses.retain(|u| !(u.node == n && u.slot == UseSlot::Input(slot)));
            }
        }
        for (slot, &v) in node.implicit.iter().enumerate() {
            self.value_mut(v).uses.retain(|u| !(u.node == n && u.slot == UseSlot::Implicit(slot)));
        }
        for v in node.outputs.iter().flatten() {
            self.value_mut(*v).def = ValueDef::Undefined;
        }
        self.order.retain(|&x| x != n);
        let ix = self.unregister_node(n);
        self.dag.remove_node(ix).unwrap_or(node)
    }

    /// Makes every node that reads `old` read `new` instead (graph outputs
    /// are not touched; see [`Graph::replace_value`]).
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        if old == new {
            return;
        }
        let uses = std::mem::take(&mut self.value_mut(old).uses);
        for u in &uses {
            let edge = self
                .dag
                .edges_directed(self.live_ix(u.node), Direction::Incoming)
                .find(|e| e.weight().value == old && e.weight().slot == u.slot)
                .map(|e| e.id());
            if let Some(e) = edge {
                self.dag.remove_edge(e);
            }
            match u.slot {
                UseSlot::Input(i) => self.node_mut(u.node).inputs[i] = Some(new),
                UseSlot::Implicit(i) => {
                    let (from, to) = (self.value(old).name.clone(), self.value(new).name.clone());
                    let node = self.node_mut(u.node);
                    node.implicit[i] = new;
                    subgraph::rename_captured(&mut node.proto, &from, &to);
                }
            }
            self.connect(new, u.node, u.slot);
        }
    }

    /// Whether [`Graph::replace_value`]`(old, new)` can keep the model's
    /// interface: when `old` is a graph output, `new` must be a plain
    /// intermediate value that can take over its name.
    pub fn can_replace(&self, old: ValueId, new: ValueId) -> bool {
        if !self.is_graph_output(old) {
            return true;
        }
        matches!(self.value(new).def, ValueDef::Node(..)) && !self.is_graph_output(new) && !self.is_graph_input(new)
    }

    /// Makes every reader of `old` — nodes and graph outputs — read `new`.
    /// When `old` is a graph output, `new` takes over its name so the
    /// model's interface does not change (`old`, which must then have no
    /// producer any more, is removed). When `old` is left with no producer
    /// and no reader it is removed as well.
    pub fn replace_value(&mut self, old: ValueId, new: ValueId) -> Result<(), IrError> {
        if old == new {
            return Ok(());
        }
        if !self.can_replace(old, new) {
            return Err(IrError::Mutation(format!(
                "cannot replace graph output \"{}\" by \"{}\": that value is itself a graph input, output or initializer",
                self.value(old).name,
                self.value(new).name
            )));
        }
        if self.is_graph_output(old) && matches!(self.value(old).def, ValueDef::Node(..)) {
            return Err(IrError::Mutation(format!(
                "graph output \"{}\" still has a producer: remove it before replacing the value",
                self.value(old).name
            )));
        }
        self.replace_uses(old, new);
        if self.is_graph_output(old) {
            let name = self.value(old).name.clone();
            for p in self.outputs.iter_mut().filter(|p| p.value == old) {
                p.value = new;
            }
            self.remove_value(old)?;
            self.rename_value(new, &name)?;
        } else if self.value(old).def == ValueDef::Undefined {
            self.remove_value(old)?;
        }
        Ok(())
    }

    /// Removes a value that nothing reads and nothing produces (an unused
    /// initializer, or a removed node's output). Graph inputs cannot be
    /// removed this way.
    pub fn remove_value(&mut self, v: ValueId) -> Result<(), IrError> {
        let val = self.value(v);
        let why = if !val.uses.is_empty() || self.is_graph_output(v) {
            Some("it is still read")
        } else if matches!(val.def, ValueDef::Node(..)) {
            Some("a node still produces it")
        } else if self.is_graph_input(v) {
            Some("it is a graph input")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(IrError::Mutation(format!("cannot remove value \"{}\": {why}", val.name)));
        }
        let name = val.name.clone();
        self.by_name.remove(&name);
        self.initializers.retain(|&x| x != v);
        self.sparse_initializers.retain(|&x| x != v);
        self.value_info.retain(|e| !matches!(e, InfoEntry::Attached(x) if *x == v));
        self.unregister_value(v);
        Ok(())
    }

    /// Removes `v`'s `value_info` entry and returns it (for the parser: a
    /// type written on the node line of a graph output belongs to the
    /// output's declaration).
    pub(crate) fn take_value_info(&mut self, v: ValueId) -> Option<crate::proto::ValueInfoProto> {
        let info = self.value_mut_untracked(v).info.take()?;
        self.value_info.retain(|e| !matches!(e, InfoEntry::Attached(x) if *x == v));
        Some(info)
    }

    /// Renames a value (the new name must be free). Subgraphs that capture
    /// it and quantization annotations follow.
    pub fn rename_value(&mut self, v: ValueId, name: &str) -> Result<(), IrError> {
        let old = self.value(v).name.clone();
        if old == name {
            return Ok(());
        }
        if self.by_name.contains_key(name) {
            return Err(IrError::DuplicateValue(name.to_string()));
        }
        self.by_name.remove(&old);
        self.by_name.insert(name.to_string(), v);
        self.value_mut(v).name = name.to_string();
        for u in self.value(v).uses.clone() {
            if let UseSlot::Implicit(_) = u.slot {
                subgraph::rename_captured(&mut self.node_mut(u.node).proto, &old, name);
            }
        }
        for a in &mut self.header.quantization_annotation {
            if a.tensor_name() == old {
                a.tensor_name = Some(name.to_string());
            }
        }
        Ok(())
    }

    /// Replaces the node order (used by `topo-sort`); must be a permutation
    /// of the live nodes.
    pub fn set_order(&mut self, order: Vec<NodeId>) -> Result<(), IrError> {
        let mut a = order.clone();
        let mut b = self.order.clone();
        a.sort();
        b.sort();
        if a != b {
            return Err(IrError::Mutation("new node order is not a permutation of the graph's nodes".into()));
        }
        if order != self.order {
            self.touch();
            self.order = order;
        }
        Ok(())
    }

    /// Moves node `n` to a new place in the order.
    pub fn move_node(&mut self, n: NodeId, at: InsertAt) -> Result<(), IrError> {
        let old =
            self.order.iter().position(|&x| x == n).ok_or_else(|| IrError::Mutation("node not in order".into()))?;
        self.touch();
        self.order.remove(old);
        if let Err(e) = self.place(n, at) {
            self.order.insert(old, n);
            return Err(e);
        }
        Ok(())
    }

    /// Points graph output `index` at another value (its declaration keeps
    /// its name field, rewritten from the value at export).
    pub fn set_output_value(&mut self, index: usize, v: ValueId) {
        if self.outputs.get(index).is_some_and(|p| p.value != v) {
            self.touch();
            self.outputs[index].value = v;
        }
    }

    /// Removes a graph output port (the value stays).
    pub fn remove_output(&mut self, index: usize) -> Option<Port> {
        (index < self.outputs.len()).then(|| {
            self.touch();
            self.outputs.remove(index)
        })
    }

    /// Mutable access to a graph input declaration (e.g. to fix dims).
    pub fn input_port_mut(&mut self, index: usize) -> Option<&mut Port> {
        if index < self.inputs.len() {
            self.touch();
        }
        self.inputs.get_mut(index)
    }
}
