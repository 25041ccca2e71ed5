//! Native evaluation of small ops on constant inputs, for `fold-constants`.
//!
//! Why native: exports compute Reshape targets, Slice bounds and Resize
//! sizes with long chains of tiny integer ops; building a runtime session per
//! node made folding slow and forced one chain level per pass iteration.
//! These evaluators cover the integer/shape ops and exact float arithmetic,
//! and match ONNX Runtime bit for bit: integer division truncates (C++
//! semantics), integers wrap to their type, f32 arithmetic is done in f64
//! and rounded once (exact for + − × ÷ since f64 has more than twice f32's
//! precision), casts follow C++ `static_cast`. Anything whose ONNX Runtime
//! result is implementation-defined (division by zero, NaN results,
//! out-of-range float→int casts) or any other type returns
//! [`Skip::Unsupported`], and the caller falls back to the runtime.

mod arith;
mod tensor;

pub(crate) use arith::*;
pub(crate) use tensor::*;

use qforge_ir::{DataType, Node, Tensor, TypeInfo};

/// A native evaluator.
pub type EvalFn = fn(&EvalCx<'_>) -> Result<Vec<Val>, Skip>;

/// Why a native evaluation did not produce a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// A type, attribute or value this evaluator does not handle exactly;
    /// the runtime may still fold it.
    Unsupported,
    /// The result would exceed the element budget.
    TooLarge,
}

/// Element storage: integers (any width, kept wrapped to the dtype), floats
/// (f32 values are exactly representable), booleans.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Integers.
    I(Vec<i64>),
    /// Floats.
    F(Vec<f64>),
    /// Booleans.
    B(Vec<bool>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::I(v) => v.len(),
            Data::F(v) => v.len(),
            Data::B(v) => v.len(),
        }
    }

    /// The elements at `idx`, in that order.
    pub(crate) fn pick(&self, idx: impl Iterator<Item = usize>) -> Data {
        match self {
            Data::I(v) => Data::I(idx.map(|i| v[i]).collect()),
            Data::F(v) => Data::F(idx.map(|i| v[i]).collect()),
            Data::B(v) => Data::B(idx.map(|i| v[i]).collect()),
        }
    }

    /// An empty store of the same kind.
    pub(crate) fn empty_like(&self) -> Data {
        match self {
            Data::I(_) => Data::I(Vec::new()),
            Data::F(_) => Data::F(Vec::new()),
            Data::B(_) => Data::B(Vec::new()),
        }
    }

    /// Appends `other` (of the same kind) to `self`.
    pub(crate) fn extend(&mut self, other: &Data) -> Result<(), Skip> {
        match (self, other) {
            (Data::I(a), Data::I(b)) => a.extend_from_slice(b),
            (Data::F(a), Data::F(b)) => a.extend_from_slice(b),
            (Data::B(a), Data::B(b)) => a.extend_from_slice(b),
            _ => return Err(Skip::Unsupported),
        }
        Ok(())
    }
}

/// A constant tensor being evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Val {
    /// Element type.
    pub dtype: DataType,
    /// Dims.
    pub dims: Vec<i64>,
    /// Elements, row-major.
    pub data: Data,
}

/// The kind of storage a dtype uses, `None` for types evaluated elsewhere.
pub(crate) fn kind(d: DataType) -> Option<u8> {
    use DataType::*;
    match d {
        I8 | I16 | I32 | I64 | U8 | U16 | U32 => Some(b'i'),
        F32 | F64 => Some(b'f'),
        Bool => Some(b'b'),
        _ => None,
    }
}

/// Wraps an integer to the range of `d` (two's complement, like C++).
pub(crate) fn wrap(d: DataType, x: i64) -> i64 {
    use DataType::*;
    match d {
        I8 => x as i8 as i64,
        I16 => x as i16 as i64,
        I32 => x as i32 as i64,
        U8 => x as u8 as i64,
        U16 => x as u16 as i64,
        U32 => x as u32 as i64,
        _ => x,
    }
}

/// Rounds a float to `d`'s precision.
pub(crate) fn round_to(d: DataType, x: f64) -> f64 {
    if d == DataType::F32 { f64::from(x as f32) } else { x }
}

/// Number of elements of `dims`, `None` on a negative dim or overflow.
pub(crate) fn numel(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
}

impl Val {
    /// Reads a tensor, `Unsupported` for types evaluated elsewhere.
    pub fn from_tensor(t: &Tensor) -> Result<Val, Skip> {
        let dtype = t.dtype().ok_or(Skip::Unsupported)?;
        let data = match (kind(dtype).ok_or(Skip::Unsupported)?, dtype) {
            (b'i', _) => Data::I(t.to_i64_vec().map_err(|_| Skip::Unsupported)?),
            (b'f', DataType::F64) => Data::F(t.to_vec::<f64>().map_err(|_| Skip::Unsupported)?),
            (b'f', _) => {
                Data::F(t.to_vec::<f32>().map_err(|_| Skip::Unsupported)?.into_iter().map(f64::from).collect())
            }
            _ => Data::B(t.to_vec::<bool>().map_err(|_| Skip::Unsupported)?),
        };
        Ok(Val { dtype, dims: t.dims().to_vec(), data })
    }

    /// Writes the value as a tensor of its dtype.
    pub fn to_tensor(&self) -> Tensor {
        use DataType::*;
        let d = &self.dims;
        match &self.data {
            Data::I(v) => match self.dtype {
                I8 => Tensor::new(d, &v.iter().map(|&x| x as i8).collect::<Vec<_>>()),
                I16 => Tensor::new(d, &v.iter().map(|&x| x as i16).collect::<Vec<_>>()),
                I32 => Tensor::new(d, &v.iter().map(|&x| x as i32).collect::<Vec<_>>()),
                U8 => Tensor::new(d, &v.iter().map(|&x| x as u8).collect::<Vec<_>>()),
                U16 => Tensor::new(d, &v.iter().map(|&x| x as u16).collect::<Vec<_>>()),
                U32 => Tensor::new(d, &v.iter().map(|&x| x as u32).collect::<Vec<_>>()),
                _ => Tensor::new(d, v),
            },
            Data::F(v) => match self.dtype {
                F64 => Tensor::new(d, v),
                _ => Tensor::new(d, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
            },
            Data::B(v) => Tensor::new(d, v),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as integers (for index-like inputs).
    pub(crate) fn ints(&self) -> Result<&[i64], Skip> {
        match &self.data {
            Data::I(v) => Ok(v),
            _ => Err(Skip::Unsupported),
        }
    }
}

/// What an evaluator sees: the node, its constant inputs, the output types
/// the shape rules inferred, and the element budget.
pub struct EvalCx<'a> {
    /// The node.
    pub node: &'a Node,
    /// Inputs by slot (`None` for omitted optional inputs).
    pub inputs: Vec<Option<Val>>,
    /// Inferred output types, by slot.
    pub outputs: Vec<Option<TypeInfo>>,
    /// Largest result allowed, in elements.
    pub max_elements: usize,
    /// Opset of the node's domain.
    pub opset: i64,
}

impl EvalCx<'_> {
    /// Input `i`, which must be given.
    pub fn input(&self, i: usize) -> Result<&Val, Skip> {
        self.inputs.get(i).and_then(Option::as_ref).ok_or(Skip::Unsupported)
    }

    /// The fully known dims inferred for output `slot`.
    pub fn out_dims(&self, slot: usize) -> Result<Vec<i64>, Skip> {
        self.outputs.get(slot).and_then(Option::as_ref).and_then(TypeInfo::known_dims).ok_or(Skip::Unsupported)
    }

    /// Fails with `TooLarge` when `n` exceeds the budget.
    pub fn budget(&self, n: usize) -> Result<(), Skip> {
        if n > self.max_elements { Err(Skip::TooLarge) } else { Ok(()) }
    }
}

/// Row-major strides of `dims`.
pub(crate) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// For each element of a tensor of dims `out`, the flat index it reads in a
/// tensor of dims `input` broadcast to `out` (numpy rules, `input` aligned
/// right). `None` when `input` does not broadcast to `out`.
pub(crate) fn broadcast_index(input: &[i64], out: &[i64]) -> Option<Vec<usize>> {
    if input.len() > out.len() {
        return None;
    }
    let off = out.len() - input.len();
    let out_u: Vec<usize> = out.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let in_u: Vec<usize> = input.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    for (i, &d) in in_u.iter().enumerate() {
        if d != 1 && d != out_u[off + i] {
            return None;
        }
    }
    let in_st = strides(&in_u);
    let total = out_u.iter().product::<usize>();
    let mut idx = Vec::with_capacity(total);
    let mut coord = vec![0usize; out_u.len()];
    for _ in 0..total {
        let mut f = 0;
        for (i, &d) in in_u.iter().enumerate() {
            if d != 1 {
                f += coord[off + i] * in_st[i];
            }
        }
        idx.push(f);
        for a in (0..coord.len()).rev() {
            coord[a] += 1;
            if coord[a] < out_u[a] {
                break;
            }
            coord[a] = 0;
        }
    }
    Some(idx)
}

/// The broadcast dims of several known shapes, `None` when they do not broadcast.
pub(crate) fn broadcast_dims(shapes: &[&[i64]]) -> Option<Vec<i64>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1i64; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    Some(out)
}
