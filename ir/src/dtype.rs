//! Element types of ONNX tensors.
//!
//! ONNX stores the element type as an `i32` (`TensorProto.DataType`); we keep
//! the number in protos (so unknown future types survive a round trip) and
//! convert to this enum where code needs to reason about it.

use std::fmt;

/// An ONNX tensor element type (`TensorProto.DataType`).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    F32,
    U8,
    I8,
    U16,
    I16,
    I32,
    I64,
    String,
    Bool,
    F16,
    F64,
    U32,
    U64,
    Complex64,
    Complex128,
    BF16,
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    U4,
    I4,
    F4E2M1,
    F8E8M0,
    U2,
    I2,
    F6E2M3,
    F6E3M2,
}

/// (type, ONNX number, short name used by the text form)
const TABLE: &[(DataType, i32, &str)] = &[
    (DataType::F32, 1, "f32"),
    (DataType::U8, 2, "u8"),
    (DataType::I8, 3, "i8"),
    (DataType::U16, 4, "u16"),
    (DataType::I16, 5, "i16"),
    (DataType::I32, 6, "i32"),
    (DataType::I64, 7, "i64"),
    (DataType::String, 8, "str"),
    (DataType::Bool, 9, "bool"),
    (DataType::F16, 10, "f16"),
    (DataType::F64, 11, "f64"),
    (DataType::U32, 12, "u32"),
    (DataType::U64, 13, "u64"),
    (DataType::Complex64, 14, "c64"),
    (DataType::Complex128, 15, "c128"),
    (DataType::BF16, 16, "bf16"),
    (DataType::F8E4M3FN, 17, "f8e4m3fn"),
    (DataType::F8E4M3FNUZ, 18, "f8e4m3fnuz"),
    (DataType::F8E5M2, 19, "f8e5m2"),
    (DataType::F8E5M2FNUZ, 20, "f8e5m2fnuz"),
    (DataType::U4, 21, "u4"),
    (DataType::I4, 22, "i4"),
    (DataType::F4E2M1, 23, "f4e2m1"),
    (DataType::F8E8M0, 24, "f8e8m0"),
    (DataType::U2, 25, "u2"),
    (DataType::I2, 26, "i2"),
    (DataType::F6E2M3, 27, "f6e2m3"),
    (DataType::F6E3M2, 28, "f6e3m2"),
];

impl DataType {
    /// The type for an ONNX `TensorProto.DataType` number; `None` for 0
    /// (undefined) and numbers this build does not know.
    pub fn from_onnx(code: i32) -> Option<DataType> {
        TABLE.iter().find(|e| e.1 == code).map(|e| e.0)
    }

    /// The ONNX `TensorProto.DataType` number.
    pub fn onnx(self) -> i32 {
        self.entry().1
    }

    /// The short name of the text form (`f32`, `i64`, `bool`, …).
    pub fn short_name(self) -> &'static str {
        self.entry().2
    }

    /// Parses a short name of the text form.
    pub fn from_short_name(name: &str) -> Option<DataType> {
        TABLE.iter().find(|e| e.2 == name).map(|e| e.0)
    }

    fn entry(self) -> &'static (DataType, i32, &'static str) {
        // The table lists every variant exactly once.
        TABLE.iter().find(|e| e.0 == self).unwrap_or(&TABLE[0])
    }

    /// Size in bytes of one element when the type is byte-addressable
    /// (`None` for strings and sub-byte types).
    pub fn size(self) -> Option<usize> {
        use DataType::*;
        Some(match self {
            U8 | I8 | Bool | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 => 1,
            U16 | I16 | F16 | BF16 => 2,
            F32 | I32 | U32 => 4,
            F64 | I64 | U64 | Complex64 => 8,
            Complex128 => 16,
            String | U4 | I4 | F4E2M1 | U2 | I2 | F6E2M3 | F6E3M2 => return None,
        })
    }

    /// True for the IEEE and brain floating-point types a float model uses.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F16 | DataType::F64 | DataType::BF16)
    }

    /// True for the integer types Q/DQ use as quantized storage.
    pub fn is_quantized_int(self) -> bool {
        matches!(self, DataType::I8 | DataType::U8 | DataType::I16 | DataType::U16 | DataType::I4 | DataType::U4)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips_every_code() {
        for code in 1..=28 {
            let t = DataType::from_onnx(code).expect("known code");
            assert_eq!(t.onnx(), code);
            assert_eq!(DataType::from_short_name(t.short_name()), Some(t));
        }
        assert_eq!(DataType::from_onnx(0), None);
        assert_eq!(DataType::from_onnx(99), None);
    }
}
