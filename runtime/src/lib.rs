//! Executes qforge graphs on the CPU.
//!
//! Calibration and numeric checks need to run the float model and read any
//! intermediate tensor. One [`Session`] trait hides the engine; the default
//! is tract (pure Rust, embedded, no system install), which can expose any
//! tensor as an output and also runs QuantizeLinear/DequantizeLinear, so it
//! executes quantized graphs too.

#![deny(missing_docs)]

pub mod data;
mod host;
mod random;
pub mod resize;
mod tract_engine;

use std::collections::BTreeMap;

pub use data::{DataError, Dataset, PadPosition, Preprocess, Source, write_npy};
pub use host::{Data, HostTensor};
pub use random::random_inputs;
pub use tract_engine::TractSession;

use qforge_ir::{Dim, Graph, Model};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An input has dims that are not fixed and no fixed dims were given.
    #[error("input \"{input}\" has dynamic dims {dims}; give fixed dims, e.g. --input-shape {input}={example}")]
    DynamicInput {
        /// The input.
        input: String,
        /// Its declared dims.
        dims: String,
        /// A suggestion in `1,3,640,640` form.
        example: String,
    },
    /// The caller fed something that does not match the model.
    #[error("{0}")]
    BadInput(String),
    /// The engine refused the model or failed while running it.
    #[error("{engine}: {message}")]
    Engine {
        /// Which engine.
        engine: &'static str,
        /// Its error chain.
        message: String,
    },
}

/// What a session computes.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Tensors to fetch, by name; empty = the graph outputs.
    pub outputs: Vec<String>,
    /// Fixed dims for inputs whose declared dims are not all known.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
}

/// A model prepared for repeated runs.
pub trait Session: Send + Sync {
    /// Names of the inputs to feed, in order.
    fn input_names(&self) -> &[String];
    /// The shapes the session was prepared for, in input order.
    fn input_shapes(&self) -> &[Vec<usize>];
    /// Names of the fetched tensors, in the order `run` returns them.
    fn output_names(&self) -> &[String];
    /// Runs once; `inputs` in [`Session::input_names`] order.
    fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, RuntimeError>;
}

/// Opens a session on the default engine (tract).
pub fn session(model: &Model, opts: &SessionOptions) -> Result<Box<dyn Session>, RuntimeError> {
    Ok(Box::new(TractSession::new(model, opts)?))
}

/// The fixed shape of each runtime input: declared dims, or the ones given in
/// `given`; an error names the first input that stays dynamic.
pub fn resolve_input_shapes(
    g: &Graph,
    given: &BTreeMap<String, Vec<usize>>,
) -> Result<Vec<(String, Vec<usize>)>, RuntimeError> {
    let mut out = Vec::new();
    for v in g.runtime_inputs() {
        let name = g.value_name(v).to_string();
        if let Some(s) = given.get(&name) {
            out.push((name, s.clone()));
            continue;
        }
        let ty = g.type_info(v);
        let shape = ty.as_ref().and_then(|t| t.shape.clone());
        match shape.as_ref().and_then(|s| s.as_known()) {
            Some(d) if d.iter().all(|&x| x >= 0) => out.push((name, d.iter().map(|&x| x as usize).collect())),
            _ => {
                let dims = shape.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "[?]".into());
                let example = match &shape {
                    Some(s) => {
                        s.0.iter()
                            .enumerate()
                            .map(|(i, d)| match d {
                                Dim::Known(k) => k.to_string(),
                                _ if i == 0 => "1".into(),
                                _ => "640".into(),
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    }
                    None => "1,3,640,640".into(),
                };
                return Err(RuntimeError::DynamicInput { input: name, dims, example });
            }
        }
    }
    for name in given.keys() {
        if !out.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
            return Err(RuntimeError::BadInput(format!(
                "--input-shape names \"{name}\", which is not an input of the model (inputs: {})",
                known.join(", ")
            )));
        }
    }
    Ok(out)
}
