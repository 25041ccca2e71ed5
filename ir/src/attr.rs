//! Node attributes.
//!
//! Attributes stay `AttributeProto`s so that anything we do not interpret
//! (graphs, sparse tensors, type protos, doc strings, `ref_attr_name`) is kept
//! as is. [`AttrExt`] gives typed reads; the `attr_*` functions build new ones.

use crate::proto::{AttributeProto, attribute_proto::AttributeType};
use crate::tensor::Tensor;

/// Typed reads of an attribute. Each returns `None` when the attribute holds
/// another type, so a malformed model is an error for the caller to report,
/// never a panic.
pub trait AttrExt {
    /// The attribute's type, inferred from the set field when `type` is missing
    /// (some old exporters omit it).
    fn kind(&self) -> AttributeType;
    /// An `INT`.
    fn as_int(&self) -> Option<i64>;
    /// A `FLOAT`.
    fn as_float(&self) -> Option<f32>;
    /// A `STRING`, as UTF-8.
    fn as_str(&self) -> Option<&str>;
    /// `INTS`.
    fn as_ints(&self) -> Option<&[i64]>;
    /// `FLOATS`.
    fn as_floats(&self) -> Option<&[f32]>;
    /// A `TENSOR`.
    fn as_tensor(&self) -> Option<Tensor>;
}

impl AttrExt for AttributeProto {
    fn kind(&self) -> AttributeType {
        if let Some(t) = self.r#type
            && let Ok(k) = AttributeType::try_from(t)
            && k != AttributeType::Undefined
        {
            return k;
        }
        if self.f.is_some() {
            AttributeType::Float
        } else if self.i.is_some() {
            AttributeType::Int
        } else if self.s.is_some() {
            AttributeType::String
        } else if self.t.is_some() {
            AttributeType::Tensor
        } else if self.g.is_some() {
            AttributeType::Graph
        } else if self.sparse_tensor.is_some() {
            AttributeType::SparseTensor
        } else if self.tp.is_some() {
            AttributeType::TypeProto
        } else if !self.floats.is_empty() {
            AttributeType::Floats
        } else if !self.ints.is_empty() {
            AttributeType::Ints
        } else if !self.strings.is_empty() {
            AttributeType::Strings
        } else if !self.tensors.is_empty() {
            AttributeType::Tensors
        } else if !self.graphs.is_empty() {
            AttributeType::Graphs
        } else if !self.sparse_tensors.is_empty() {
            AttributeType::SparseTensors
        } else if !self.type_protos.is_empty() {
            AttributeType::TypeProtos
        } else {
            AttributeType::Undefined
        }
    }

    fn as_int(&self) -> Option<i64> {
        (self.kind() == AttributeType::Int).then(|| self.i())
    }

    fn as_float(&self) -> Option<f32> {
        (self.kind() == AttributeType::Float).then(|| self.f())
    }

    fn as_str(&self) -> Option<&str> {
        if self.kind() == AttributeType::String { std::str::from_utf8(self.s()).ok() } else { None }
    }

    fn as_ints(&self) -> Option<&[i64]> {
        (self.kind() == AttributeType::Ints).then_some(&self.ints[..])
    }

    fn as_floats(&self) -> Option<&[f32]> {
        (self.kind() == AttributeType::Floats).then_some(&self.floats[..])
    }

    fn as_tensor(&self) -> Option<Tensor> {
        if self.kind() == AttributeType::Tensor { self.t.clone().map(Tensor::from_proto) } else { None }
    }
}

fn base(name: &str, t: AttributeType) -> AttributeProto {
    AttributeProto { name: Some(name.to_string()), r#type: Some(t as i32), ..Default::default() }
}

/// A new `INT` attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { i: Some(v), ..base(name, AttributeType::Int) }
}

/// A new `FLOAT` attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { f: Some(v), ..base(name, AttributeType::Float) }
}

/// A new `STRING` attribute.
pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto { s: Some(v.as_bytes().to_vec()), ..base(name, AttributeType::String) }
}

/// A new `INTS` attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { ints: v.to_vec(), ..base(name, AttributeType::Ints) }
}

/// A new `FLOATS` attribute.
pub fn attr_floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto { floats: v.to_vec(), ..base(name, AttributeType::Floats) }
}

/// A new `TENSOR` attribute.
pub fn attr_tensor(name: &str, t: Tensor) -> AttributeProto {
    AttributeProto { t: Some(t.into_proto()), ..base(name, AttributeType::Tensor) }
}

/// The typed payload of an attribute, for code that prefers `match`.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// `INT`
    Int(i64),
    /// `FLOAT`
    Float(f32),
    /// `STRING`
    String(Vec<u8>),
    /// `INTS`
    Ints(Vec<i64>),
    /// `FLOATS`
    Floats(Vec<f32>),
    /// Any other kind, not interpreted here.
    Other(AttributeType),
}

impl From<&AttributeProto> for Attr {
    fn from(a: &AttributeProto) -> Attr {
        match a.kind() {
            AttributeType::Int => Attr::Int(a.i()),
            AttributeType::Float => Attr::Float(a.f()),
            AttributeType::String => Attr::String(a.s().to_vec()),
            AttributeType::Ints => Attr::Ints(a.ints.clone()),
            AttributeType::Floats => Attr::Floats(a.floats.clone()),
            k => Attr::Other(k),
        }
    }
}
