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
    /// rank is unchanged, the denotations of its dims.
    pub fn write_proto(&self, tp: &mut TypeProto) {
        let old_shape = match &tp.value {
            Some(type_proto::Value::TensorType(t)) => t.shape.clone(),
            _ => None,
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
            elem_type: self.dtype.map(DataType::onnx),
            shape,
        }));
    }

    /// A new `TypeProto` of this type.
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
