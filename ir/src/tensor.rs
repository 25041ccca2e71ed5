//! Tensor data with typed access.
//!
//! A [`Tensor`] keeps the `TensorProto` it came from, so a tensor no pass
//! touched is exported exactly as it was read (same storage field, same
//! extra fields). Reading goes through [`Tensor::to_vec`] / [`Tensor::to_f32_vec`],
//! which understand every storage form ONNX allows (`raw_data` or the typed
//! `*_data` lists); new tensors are always written as little-endian `raw_data`.

use std::borrow::Cow;

use half::{bf16, f16};

use crate::dtype::DataType;
use crate::error::IrError;
use crate::proto::TensorProto;

/// A dense tensor: element type, dims and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub(crate) proto: TensorProto,
    /// Set when the data came from an external file; export writes it back
    /// externally.
    pub(crate) external: bool,
}

/// A Rust type that is one ONNX tensor element.
pub trait Element: Copy + Send + Sync + 'static {
    /// Its ONNX element type.
    const DTYPE: DataType;
    /// Bytes per element (a constant, so the loops over elements compile
    /// to straight copies: converting 11 M weights is a few ms).
    const SIZE: usize;
    /// Decodes one element from its little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
    /// Writes the little-endian bytes of one element to `out` (`SIZE` bytes).
    fn write_le(self, out: &mut [u8]);
}

macro_rules! element {
    ($t:ty, $dt:ident) => {
        impl Element for $t {
            const DTYPE: DataType = DataType::$dt;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&bytes[..std::mem::size_of::<$t>()]);
                <$t>::from_le_bytes(a)
            }
            fn write_le(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);
element!(i8, I8);
element!(u8, U8);
element!(i16, I16);
element!(u16, U16);
element!(i32, I32);
element!(u32, U32);
element!(i64, I64);
element!(u64, U64);
element!(f16, F16);
element!(bf16, BF16);

impl Element for bool {
    const DTYPE: DataType = DataType::Bool;
    const SIZE: usize = 1;
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn write_le(self, out: &mut [u8]) {
        out[0] = self as u8;
    }
}

impl Tensor {
    /// A tensor of `T` with the given dims, stored as `raw_data`.
    ///
    /// # Panics
    /// When `data.len()` is not the product of `dims`: that is a bug in the
    /// calling pass, not bad user input.
    pub fn new<T: Element>(dims: &[i64], data: &[T]) -> Tensor {
        let n: i64 = dims.iter().product();
        assert_eq!(n as usize, data.len(), "tensor data length does not match dims {dims:?}");
        let mut raw = vec![0u8; data.len() * T::SIZE];
        for (out, &x) in raw.chunks_exact_mut(T::SIZE).zip(data) {
            x.write_le(out);
        }
        Tensor::from_raw(T::DTYPE, dims, raw)
    }

    /// A float tensor of `dtype` (f32, f64, f16 or bf16) from f64 values,
    /// each rounded once; `None` for other types. Passes that compute in
    /// f64 (folds) write their result back in the weights' own type with it.
    pub fn from_f64(dtype: DataType, dims: &[i64], v: &[f64]) -> Option<Tensor> {
        Some(match dtype {
            DataType::F32 => Tensor::new(dims, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
            DataType::F64 => Tensor::new(dims, v),
            DataType::F16 => Tensor::new(dims, &v.iter().map(|&x| f16::from_f64(x)).collect::<Vec<_>>()),
            DataType::BF16 => Tensor::new(dims, &v.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>()),
            _ => return None,
        })
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(x: T) -> Tensor {
        Tensor::new(&[], &[x])
    }

    /// A tensor from little-endian element bytes.
    pub fn from_raw(dtype: DataType, dims: &[i64], raw: Vec<u8>) -> Tensor {
        Tensor {
            proto: TensorProto {
                dims: dims.to_vec(),
                data_type: Some(dtype.onnx()),
                raw_data: Some(raw.into()),
                ..Default::default()
            },
            external: false,
        }
    }

    /// Wraps a protobuf tensor as read from a model (external data must
    /// already be resolved).
    pub fn from_proto(proto: TensorProto) -> Tensor {
        Tensor { proto, external: false }
    }

    /// The underlying protobuf message.
    pub fn proto(&self) -> &TensorProto {
        &self.proto
    }

    /// Consumes the tensor, returning its protobuf message.
    pub fn into_proto(self) -> TensorProto {
        self.proto
    }

    /// The element type (`None` when the model uses a type this build does not know).
    pub fn dtype(&self) -> Option<DataType> {
        DataType::from_onnx(self.proto.data_type())
    }

    /// The dims.
    pub fn dims(&self) -> &[i64] {
        &self.proto.dims
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        // Saturating: dims come from files, and 2^40 × 2^40 must read as
        // "too many", not overflow.
        self.proto.dims.iter().fold(1usize, |n, &d| n.saturating_mul(d.max(0) as usize))
    }

    /// The tensor's name as stored in the proto (the graph's value name is
    /// authoritative for initializers).
    pub fn name(&self) -> &str {
        self.proto.name()
    }

    fn err(&self, reason: impl Into<String>) -> IrError {
        IrError::TensorData { tensor: self.proto.name().to_string(), reason: reason.into() }
    }

    /// The data as little-endian element bytes, whatever field stores it.
    pub fn raw_bytes(&self) -> Result<Cow<'_, [u8]>, IrError> {
        let dt = self.dtype().ok_or_else(|| self.err(format!("unsupported data_type {}", self.proto.data_type())))?;
        let size = dt.size().ok_or_else(|| self.err(format!("{dt} data has no fixed element size")))?;
        let n = self.numel();
        let Some(total) = n.checked_mul(size) else {
            return Err(self.err(format!("dims {:?} of {dt} hold more bytes than a machine can", self.proto.dims)));
        };
        if let Some(raw) = &self.proto.raw_data {
            if raw.len() != total {
                return Err(self.err(format!(
                    "raw_data holds {} bytes but dims {:?} of {dt} need {}",
                    raw.len(),
                    self.proto.dims,
                    total
                )));
            }
            return Ok(Cow::Borrowed(raw));
        }
        let p = &self.proto;
        // The capacity the data fields can fill, not what the dims claim.
        let mut out = Vec::with_capacity(total.min(1 << 20));
        let count = match dt {
            DataType::F32 => {
                p.float_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                p.float_data.len()
            }
            DataType::Complex64 => {
                p.float_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                p.float_data.len() / 2
            }
            DataType::F64 => {
                p.double_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                p.double_data.len()
            }
            DataType::Complex128 => {
                p.double_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                p.double_data.len() / 2
            }
            DataType::I64 => {
                p.int64_data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                p.int64_data.len()
            }
            DataType::U32 | DataType::U64 => {
                for &x in &p.uint64_data {
                    out.extend_from_slice(&x.to_le_bytes()[..size]);
                }
                p.uint64_data.len()
            }
            // Everything narrower than 32 bits is stored one element per
            // int32 (floats of 16 bits as their bit pattern).
            _ => {
                for &x in &p.int32_data {
                    out.extend_from_slice(&x.to_le_bytes()[..size]);
                }
                p.int32_data.len()
            }
        };
        if count != n {
            return Err(self.err(format!("holds {count} elements but dims {:?} need {n}", p.dims)));
        }
        Ok(Cow::Owned(out))
    }

    /// The elements as `T`, which must be the tensor's element type.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, IrError> {
        let dt = self.dtype();
        if dt != Some(T::DTYPE) {
            return Err(self.err(format!(
                "read as {} but its element type is {}",
                T::DTYPE,
                dt.map(|d| d.to_string()).unwrap_or_else(|| "unknown".into())
            )));
        }
        let raw = self.raw_bytes()?;
        Ok(raw.chunks_exact(T::SIZE).map(T::read_le).collect())
    }

    /// The elements converted to `f32` from any real numeric type (bool as 0/1).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, IrError> {
        Ok(match self.dtype() {
            Some(DataType::F32) => self.to_vec::<f32>()?,
            Some(DataType::F64) => self.to_vec::<f64>()?.into_iter().map(|x| x as f32).collect(),
            Some(DataType::F16) => self.to_vec::<f16>()?.into_iter().map(f32::from).collect(),
            Some(DataType::BF16) => self.to_vec::<bf16>()?.into_iter().map(f32::from).collect(),
            _ => self.to_i64_vec()?.into_iter().map(|x| x as f32).collect(),
        })
    }

    /// The elements converted to `i64` from any integer type (bool as 0/1).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, IrError> {
        Ok(match self.dtype() {
            Some(DataType::I64) => self.to_vec::<i64>()?,
            Some(DataType::I32) => self.to_vec::<i32>()?.into_iter().map(i64::from).collect(),
            Some(DataType::I16) => self.to_vec::<i16>()?.into_iter().map(i64::from).collect(),
            Some(DataType::I8) => self.to_vec::<i8>()?.into_iter().map(i64::from).collect(),
            Some(DataType::U8) => self.to_vec::<u8>()?.into_iter().map(i64::from).collect(),
            Some(DataType::U16) => self.to_vec::<u16>()?.into_iter().map(i64::from).collect(),
            Some(DataType::U32) => self.to_vec::<u32>()?.into_iter().map(i64::from).collect(),
            Some(DataType::U64) => self.to_vec::<u64>()?.into_iter().map(|x| x as i64).collect(),
            Some(DataType::Bool) => self.to_vec::<bool>()?.into_iter().map(i64::from).collect(),
            other => {
                return Err(self.err(format!(
                    "read as integers but its element type is {}",
                    other.map(|d| d.to_string()).unwrap_or_else(|| "unknown".into())
                )));
            }
        })
    }

    /// A 64-bit FNV-1a digest of dtype, dims and data: a stable fingerprint
    /// for the text form of tensors too big to print.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for &x in b {
                h ^= u64::from(x);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(&self.proto.data_type().to_le_bytes());
        for d in &self.proto.dims {
            eat(&d.to_le_bytes());
        }
        match self.raw_bytes() {
            Ok(raw) => eat(&raw),
            Err(_) => {
                for s in &self.proto.string_data {
                    eat(s);
                }
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_and_raw_data_decode_alike() {
        let raw = Tensor::new(&[2, 2], &[1.0f32, -2.0, 3.5, 0.0]);
        let typed = Tensor::from_proto(TensorProto {
            dims: vec![2, 2],
            data_type: Some(1),
            float_data: vec![1.0, -2.0, 3.5, 0.0],
            ..Default::default()
        });
        assert_eq!(raw.to_vec::<f32>().unwrap(), typed.to_vec::<f32>().unwrap());
        assert_eq!(raw.raw_bytes().unwrap(), typed.raw_bytes().unwrap());
        assert_eq!(raw.digest(), typed.digest());
    }

    #[test]
    fn narrow_ints_are_stored_one_per_int32() {
        let t = Tensor::from_proto(TensorProto {
            dims: vec![3],
            data_type: Some(DataType::I8.onnx()),
            int32_data: vec![-128, 0, 127],
            ..Default::default()
        });
        assert_eq!(t.to_vec::<i8>().unwrap(), vec![-128, 0, 127]);
        assert_eq!(t.to_f32_vec().unwrap(), vec![-128.0, 0.0, 127.0]);
    }

    #[test]
    fn wrong_type_and_wrong_length_are_errors() {
        let t = Tensor::new(&[2], &[1i64, 2]);
        assert!(t.to_vec::<f32>().is_err());
        let bad = Tensor::from_raw(DataType::F32, &[3], vec![0; 8]);
        let e = bad.to_vec::<f32>().unwrap_err().to_string();
        assert!(e.contains("raw_data holds 8 bytes"), "{e}");
    }
}
