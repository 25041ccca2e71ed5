//! GraphProto ⇄ Graph.
//!
//! Import resolves every name to a value (two passes, so a model whose nodes
//! are not in topological order still loads; `topo-sort` fixes the order)
//! and keeps every field it does not interpret. Export writes nodes in graph
//! order and everything else in the order it was read, with names taken from
//! the values, so an untouched graph round-trips to an identical proto.

use super::{Graph, InfoEntry, NodeId, Port, UseSlot, ValueDef, ValueId, subgraph};
use crate::error::IrError;
use crate::proto::{GraphProto, OperatorSetIdProto, ValueInfoProto};
use crate::tensor::Tensor;

impl Graph {
    /// Builds the IR of a (top-level) graph. External data must already be
    /// resolved.
    pub(crate) fn from_proto(mut gp: GraphProto, opset_import: Vec<OperatorSetIdProto>) -> Result<Graph, IrError> {
        let mut g = Graph { opset_import, ..Default::default() };
        let nodes = std::mem::take(&mut gp.node);
        let inits = std::mem::take(&mut gp.initializer);
        let sparse = std::mem::take(&mut gp.sparse_initializer);
        let inputs = std::mem::take(&mut gp.input);
        let outputs = std::mem::take(&mut gp.output);
        let value_info = std::mem::take(&mut gp.value_info);
        g.header = gp;

        let define = |g: &mut Graph, name: &str, def: ValueDef| -> Result<ValueId, IrError> {
            if name.is_empty() {
                return Err(IrError::Invalid("a tensor definition has an empty name".into()));
            }
            if g.by_name.contains_key(name) {
                return Err(IrError::DuplicateValue(name.to_string()));
            }
            Ok(g.new_value(name.to_string(), def))
        };

        for t in inits {
            let v = define(&mut g, t.name(), ValueDef::Initializer)?;
            g.value_mut(v).tensor = Some(Tensor::from_proto(t));
            g.initializers.push(v);
        }
        for s in sparse {
            let name = s.values.as_ref().map(|t| t.name().to_string()).unwrap_or_default();
            let v = define(&mut g, &name, ValueDef::SparseInitializer)?;
            g.value_mut(v).sparse = Some(s);
            g.sparse_initializers.push(v);
        }
        for info in inputs {
            let v = match g.by_name.get(info.name()) {
                // Older IR versions list initializers among the inputs too.
                Some(&v) if g.value(v).def == ValueDef::Initializer && !g.is_graph_input(v) => v,
                _ => define(&mut g, info.name(), ValueDef::Input)?,
            };
            g.inputs.push(Port { value: v, info });
        }

        // First pass: create nodes and the values they define.
        let mut pending: Vec<(NodeId, Vec<String>)> = Vec::with_capacity(nodes.len());
        for mut np in nodes {
            let ins = std::mem::take(&mut np.input);
            let outs = std::mem::take(&mut np.output);
            let n = g.add_node_raw(np);
            g.order.push(n);
            for (slot, name) in outs.iter().enumerate() {
                let v = if name.is_empty() { None } else { Some(define(&mut g, name, ValueDef::Node(n, slot))?) };
                g.node_mut(n).outputs.push(v);
            }
            pending.push((n, ins));
        }
        // Second pass: resolve what each node reads.
        for (n, ins) in pending {
            let undefined = |g: &Graph, name: &str| IrError::UndefinedValue {
                node: g.node(n).name().to_string(),
                op: g.node(n).op_type().to_string(),
                tensor: name.to_string(),
            };
            for (slot, name) in ins.iter().enumerate() {
                let v =
                    if name.is_empty() { None } else { Some(g.find_value(name).ok_or_else(|| undefined(&g, name))?) };
                g.set_input(n, slot, v);
            }
            for name in subgraph::captured_names(&g.node(n).proto) {
                let v = g.find_value(&name).ok_or_else(|| undefined(&g, &name))?;
                g.add_implicit(n, v);
            }
        }
        for info in outputs {
            let v = g.find_value(info.name()).ok_or_else(|| {
                IrError::Invalid(format!(
                    "graph output \"{}\" is not produced by any node, input or initializer",
                    info.name()
                ))
            })?;
            g.outputs.push(Port { value: v, info });
        }
        for info in value_info {
            match g.find_value(info.name()) {
                Some(v) if g.value(v).info.is_none() => {
                    g.value_mut(v).info = Some(info);
                    g.value_info.push(InfoEntry::Attached(v));
                }
                _ => g.value_info.push(InfoEntry::Orphan(info)),
            }
        }
        Ok(g)
    }

    /// The protobuf form, plus the opset imports (which live on the model).
    pub(crate) fn to_proto(&self) -> (GraphProto, Vec<OperatorSetIdProto>) {
        let name = |v: ValueId| self.value(v).name.clone();
        let mut gp = self.header.clone();
        gp.node = self
            .order
            .iter()
            .map(|&n| {
                let node = self.node(n);
                let mut p = node.proto.clone();
                p.input = node.inputs.iter().map(|v| v.map(name).unwrap_or_default()).collect();
                p.output = node.outputs.iter().map(|v| v.map(name).unwrap_or_default()).collect();
                p
            })
            .collect();
        gp.initializer = self
            .initializers
            .iter()
            .filter_map(|&v| {
                let mut t = self.value(v).tensor.clone()?.proto;
                t.name = Some(name(v));
                Some(t)
            })
            .collect();
        gp.sparse_initializer = self
            .sparse_initializers
            .iter()
            .filter_map(|&v| {
                let mut s = self.value(v).sparse.clone()?;
                if let Some(t) = s.values.as_mut() {
                    t.name = Some(name(v));
                }
                Some(s)
            })
            .collect();
        let port = |p: &Port| ValueInfoProto { name: Some(name(p.value)), ..p.info.clone() };
        gp.input = self.inputs.iter().map(port).collect();
        gp.output = self.outputs.iter().map(port).collect();
        gp.value_info = self
            .value_info
            .iter()
            .filter_map(|e| match e {
                InfoEntry::Attached(v) => {
                    let info = self.value(*v).info.clone()?;
                    Some(ValueInfoProto { name: Some(name(*v)), ..info })
                }
                InfoEntry::Orphan(info) => Some(info.clone()),
            })
            .collect();
        (gp, self.opset_import.clone())
    }

    /// Initializers whose data came from external files.
    pub(crate) fn external_initializers(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.initializers.iter().copied().filter(|&v| self.value(v).tensor.as_ref().is_some_and(|t| t.external))
    }

    pub(crate) fn mark_external(&mut self, name: &str) {
        if let Some(v) = self.find_value(name)
            && let Some(t) = self.value_mut(v).tensor.as_mut()
        {
            t.external = true;
        }
    }

    /// Which uses of `v` are implicit (subgraph captures).
    pub fn has_implicit_uses(&self, v: ValueId) -> bool {
        self.value(v).uses.iter().any(|u| matches!(u.slot, UseSlot::Implicit(_)))
    }
}
