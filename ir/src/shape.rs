//! Tensor types: element type plus shape, where each dimension is known,
//! symbolic (`batch`) or unknown. Unknown is explicit and never guessed.

use std::fmt;

use crate::dtype::DataType;
use crate::proto::{TensorShapeProto, TypeProto, tensor_shape_proto, type_proto};

/// One dimension of a shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Known(i64),
    /// A named, unknown size (`dim_param`), e.g. `batch`.
    Sym(String),
    /// Nothing is known.
    Unknown,
}

/// A tensor shape: the list of its dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape of known dims.
    pub fn known(dims: &[i64]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Known(d)).collect())
    }

    /// The dims when all are known.
    pub fn as_known(&self) -> Option<Vec<i64>> {
        self.0.iter().map(|d| if let Dim::Known(k) = d { Some(*k) } else { None }).collect()
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The proto form.
    pub fn to_proto(&self) -> TensorShapeProto {
        TensorShapeProto {
            dim: self
                .0
                .iter()
                .map(|d| tensor_shape_proto::Dimension {
                    value: match d {
                        Dim::Known(k) => Some(tensor_shape_proto::dimension::Value::DimValue(*k)),
                        Dim::Sym(s) => Some(tensor_shape_proto::dimension::Value::DimParam(s.clone())),
                        Dim::Unknown => None,
                    },
                    denotation: None,
                })
                .collect(),
        }
    }

    /// From the proto form.
    pub fn from_proto(p: &TensorShapeProto) -> Shape {
        Shape(
            p.dim
                .iter()
                .map(|d| match &d.value {
                    Some(tensor_shape_proto::dimension::Value::DimValue(k)) => Dim::Known(*k),
                    Some(tensor_shape_proto::dimension::Value::DimParam(s)) if !s.is_empty() => Dim::Sym(s.clone()),
                    _ => Dim::Unknown,
                })
                .collect(),
        )
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(k) => write!(f, "{k}"),
            Dim::Sym(s) => {
                if crate::printer::is_bare_name(s) && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                    f.write_str(s)
                } else {
                    write!(f, "{s:?}")
                }
            }
            Dim::Unknown => f.write_str("?"),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// What is known about a tensor value's type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TypeInfo {
    /// Element type, when known.
    pub dtype: Option<DataType>,
    /// Shape, when at least the rank is known.
    pub shape: Option<Shape>,
}

impl TypeInfo {
    /// A fully known type.
    pub fn new(dtype: DataType, dims: &[i64]) -> TypeInfo {
        TypeInfo { dtype: Some(dtype), shape: Some(Shape::known(dims)) }
    }

    /// Reads the tensor part of a `TypeProto`; `None` for non-tensor types
    /// (sequences, maps, optionals, …).
    pub fn from_proto(tp: &TypeProto) -> Option<TypeInfo> {
        match &tp.value {
            Some(type_proto::Value::TensorType(t)) => Some(TypeInfo {
                dtype: DataType::from_onnx(t.elem_type()),
                shape: t.shape.as_ref().map(Shape::from_proto),
            }),
            _ => None,
        }
    }

    /// Writes this type into `tp`, keeping its denotation and, where the
    /// rank is unchanged, the denotations of its dims. When this type's
    /// element type is unknown, the element type already in `tp` is kept:
    /// "unknown" never erases what was known.
    pub fn write_proto(&self, tp: &mut TypeProto) {
        let (old_shape, old_elem) = match &tp.value {
            Some(type_proto::Value::TensorType(t)) => (t.shape.clone(), defined_elem_type(t.elem_type)),
            _ => (None, None),
        };
        let shape = self.shape.as_ref().map(|s| {
            let mut p = s.to_proto();
            if let Some(old) = &old_shape
                && old.dim.len() == p.dim.len()
            {
                for (n, o) in p.dim.iter_mut().zip(&old.dim) {
                    n.denotation = o.denotation.clone();
                }
            }
            p
        });
        tp.value = Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: self.dtype.map(DataType::onnx).or(old_elem),
            shape,
        }));
    }

    /// Writes this type into the optional `TypeProto` of a `ValueInfoProto`,
    /// but only when the result has an element type (this type's, or the one
    /// `slot` already holds): a tensor type without one is invalid ONNX, and
    /// ONNX Runtime refuses the whole model ("Invalid tensor data type 0").
    /// Returns whether `slot` changed (writing what it already says is no
    /// change, so [`Graph::set_type`](crate::Graph::set_type) only counts
    /// real ones as mutations).
    pub fn write_into(&self, slot: &mut Option<TypeProto>) -> bool {
        let has_elem = match slot.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => defined_elem_type(t.elem_type).is_some(),
            _ => false,
        };
        if self.dtype.is_none() && !has_elem {
            return false;
        }
        let before = slot.clone();
        self.write_proto(slot.get_or_insert_with(Default::default));
        *slot != before
    }

    /// A new `TypeProto` of this type. Without a known element type the
    /// result is not valid ONNX on its own; see [`TypeInfo::write_into`].
    pub fn to_proto(&self) -> TypeProto {
        let mut tp = TypeProto::default();
        self.write_proto(&mut tp);
        tp
    }

    /// The dims when the shape is fully known.
    pub fn known_dims(&self) -> Option<Vec<i64>> {
        self.shape.as_ref().and_then(Shape::as_known)
    }
}

/// `elem_type` when it names a type: unset and 0 (`UNDEFINED`) do not.
pub(crate) fn defined_elem_type(elem_type: Option<i32>) -> Option<i32> {
    elem_type.filter(|&t| t != 0)
}

/// True when `tp` is, or holds (sequence, optional, map value), a tensor
/// type without an element type: invalid ONNX that ONNX Runtime refuses to
/// load. A `TypeProto` with no value at all says nothing and is not this.
pub(crate) fn lacks_elem_type(tp: &TypeProto) -> bool {
    match &tp.value {
        Some(type_proto::Value::TensorType(t)) => defined_elem_type(t.elem_type).is_none(),
        Some(type_proto::Value::SparseTensorType(t)) => defined_elem_type(t.elem_type).is_none(),
        Some(type_proto::Value::SequenceType(s)) => s.elem_type.as_deref().is_some_and(lacks_elem_type),
        Some(type_proto::Value::OptionalType(o)) => o.elem_type.as_deref().is_some_and(lacks_elem_type),
        Some(type_proto::Value::MapType(m)) => m.value_type.as_deref().is_some_and(lacks_elem_type),
        Some(type_proto::Value::OpaqueType(_)) | None => false,
    }
}

impl fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dtype {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("?")?,
        }
        if let Some(s) = &self.shape {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}
