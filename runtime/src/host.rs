//! Tensors as the runtime hands them in and out: a shape and a typed `Vec`.

use half::f16;
use qforge_ir::{DataType, Tensor};

/// Element data of a [`HostTensor`].
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

impl Data {
    /// Element type.
    pub fn dtype(&self) -> DataType {
        match self {
            Data::F32(_) => DataType::F32,
            Data::F16(_) => DataType::F16,
            Data::F64(_) => DataType::F64,
            Data::I64(_) => DataType::I64,
            Data::I32(_) => DataType::I32,
            Data::I8(_) => DataType::I8,
            Data::U8(_) => DataType::U8,
            Data::Bool(_) => DataType::Bool,
        }
    }
}

/// A dense tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dims.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Data,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> HostTensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data: Data::F32(data) }
    }

    /// The f32 elements, if the tensor is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Element type.
    pub fn dtype(&self) -> DataType {
        self.data.dtype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of element data held.
    pub fn byte_len(&self) -> usize {
        self.len() * self.dtype().size().unwrap_or(1)
    }

    /// Elements converted to f64 (for comparisons).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::F16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::F64(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
        }
    }

    /// As an IR tensor (e.g. to fold a computed constant into the graph).
    pub fn to_ir(&self) -> Tensor {
        let dims: Vec<i64> = self.shape.iter().map(|&d| d as i64).collect();
        match &self.data {
            Data::F32(v) => Tensor::new(&dims, v),
            Data::F16(v) => Tensor::new(&dims, v),
            Data::F64(v) => Tensor::new(&dims, v),
            Data::I64(v) => Tensor::new(&dims, v),
            Data::I32(v) => Tensor::new(&dims, v),
            Data::I8(v) => Tensor::new(&dims, v),
            Data::U8(v) => Tensor::new(&dims, v),
            Data::Bool(v) => Tensor::new(&dims, v),
        }
    }
}

/// A fetched tensor lent by an engine for the length of a
/// [`crate::Session::run_visit`] call: f32 data (nearly everything a float
/// model computes) is read where the engine wrote it; anything else comes
/// as an owned copy.
#[derive(Debug)]
pub struct TensorView<'a> {
    /// Dims.
    pub shape: Vec<usize>,
    /// The elements.
    pub data: ViewData<'a>,
}

/// Elements of a [`TensorView`].
#[derive(Debug)]
pub enum ViewData<'a> {
    /// f32 elements in the engine's own buffer.
    F32(&'a [f32]),
    /// Any other type, copied out.
    Owned(Data),
}

impl<'a> TensorView<'a> {
    /// A view of a host tensor.
    pub fn of(t: &'a HostTensor) -> TensorView<'a> {
        let data = match &t.data {
            Data::F32(v) => ViewData::F32(v),
            other => ViewData::Owned(other.clone()),
        };
        TensorView { shape: t.shape.clone(), data }
    }

    /// The f32 elements, if the tensor is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            ViewData::F32(v) => Some(v),
            ViewData::Owned(_) => None,
        }
    }

    /// An owned copy.
    pub fn to_host(&self) -> HostTensor {
        let data = match &self.data {
            ViewData::F32(v) => Data::F32(v.to_vec()),
            ViewData::Owned(d) => d.clone(),
        };
        HostTensor { shape: self.shape.clone(), data }
    }
}
