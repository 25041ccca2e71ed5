//! Errors of the IR crate. Every variant names what the user can act on: the
//! file, the node, the tensor.

use std::path::PathBuf;

use crate::verify::Violation;

/// An error from importing, exporting, parsing, mutating or verifying a graph.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an ONNX ModelProto (truncated, not protobuf, wrong file).
    #[error("{path}: not a valid ONNX model ({source})")]
    Decode {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// What protobuf decoding reported.
        #[source]
        source: prost::DecodeError,
    },
    /// The model is well-formed protobuf but not a usable ONNX model.
    #[error("{0}")]
    Invalid(String),
    /// A node reads a tensor that nothing defines.
    #[error("node \"{node}\" ({op}) reads tensor \"{tensor}\", which no node, graph input or initializer defines")]
    UndefinedValue {
        /// Node name.
        node: String,
        /// Node op type.
        op: String,
        /// The missing tensor name.
        tensor: String,
    },
    /// Two definitions of one tensor name (the graph would not be SSA).
    #[error("tensor \"{0}\" is defined more than once")]
    DuplicateValue(String),
    /// External data that is missing, out of bounds or outside the model's folder.
    #[error("external data of tensor \"{tensor}\" (location \"{location}\"): {reason}")]
    ExternalData {
        /// The tensor.
        tensor: String,
        /// Its `location` entry.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// Tensor bytes that do not match the declared dtype and dims, or an
    /// access with the wrong element type.
    #[error("tensor \"{tensor}\": {reason}")]
    TensorData {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A text-IR parse error.
    #[error("line {line}, column {column}: {message}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was expected.
        message: String,
    },
    /// A mutation that would break an invariant (the message says which).
    #[error("{0}")]
    Mutation(String),
    /// The verifier found violations (all of them are listed).
    #[error("IR verification failed with {} violation(s):\n{}", .0.len(), .0.iter().map(|v| format!("  - {v}")).collect::<Vec<_>>().join("\n"))]
    Verify(Vec<Violation>),
}

impl IrError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> IrError {
        IrError::Io { path: path.into(), source }
    }
}
