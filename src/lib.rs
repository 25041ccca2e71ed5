//! qforge: a plugin-based compiler-pass framework for ONNX.
//!
//! This crate is the command-line tool and the one-stop dependency for
//! library users: it re-exports the IR ([`ir`]), the runtime ([`runtime`])
//! and the pass framework ([`passes`]). See the README for the pipeline
//! format and how to write a pass.

#![deny(missing_docs)]

pub mod cli;

pub use qforge_ir as ir;
pub use qforge_passes as passes;
pub use qforge_runtime as runtime;

/// Pipelines shipped with qforge, usable by name (`qforge run fold …`).
pub const BUILTIN_PIPELINES: &[(&str, &str)] = &[("fold", include_str!("../pipelines/fold.yaml"))];
