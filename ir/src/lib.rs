//! qforge's intermediate representation of ONNX models.
//!
//! Passes never see protobuf: they work on a [`Graph`], a petgraph
//! `StableDiGraph` behind typed [`NodeId`] / [`ValueId`] handles, whose
//! mutation API is the only way to change it, so producer/use lists and edges
//! cannot disagree. [`import`] and [`export`] convert from and to the ONNX
//! protobuf *losslessly*: every field the model carried and no pass touched is
//! written back unchanged (see `tests/roundtrip.rs` in the workspace root).
//!
//! The crate also holds the one canonical text form of a graph
//! ([`Graph`]'s `Display`, and [`parse_graph`] for tests) and the verifier
//! ([`verify()`]) that the pass manager runs after every pass.

#![deny(missing_docs)]

mod attr;
mod dtype;
mod error;
mod external;
mod files;
mod graph;
mod model;
mod parser;
mod printer;
pub mod proto;
mod shape;
mod sink;
mod tensor;
pub mod verify;

pub use attr::{Attr, AttrExt, attr_float, attr_floats, attr_int, attr_ints, attr_string, attr_tensor};
pub use dtype::DataType;
pub use error::IrError;
pub use external::check_location;
pub use files::{regular_file, writable_file};
pub use graph::{Graph, InsertAt, NewNode, Node, NodeId, Use, UseSlot, Value, ValueDef, ValueId};
pub use model::{ExportOptions, Model, export, import, import_bytes, load, save};
pub use parser::{Fragment, FreeValue, parse_fragment, parse_graph};
pub use printer::{PrintOptions, print_graph};
pub use shape::{Dim, Shape, TypeInfo};
pub use tensor::{Element, Tensor};
pub use verify::{Violation, verify};

/// The ONNX domain of the standard operators (`ai.onnx`), spelled as it is
/// stored in `NodeProto.domain` and `OperatorSetIdProto.domain`.
pub const DEFAULT_DOMAIN: &str = "";
