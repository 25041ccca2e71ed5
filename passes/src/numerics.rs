//! `--check-numerics`: run the graph before and after passes on the same
//! seeded random inputs and compare the outputs.
//!
//! The error of one output is `max|a - b| / max(max|a|, 1)`: the largest
//! difference relative to the output's own scale, which is stable for
//! outputs that mix large values (box coordinates) with small ones (scores).
//! Outputs within [-1, 1] (probabilities) are compared absolutely: on random
//! inputs a detector's score map is often saturated near 0, and a 1e-7
//! wobble of an all-but-zero sigmoid is not a relative error of 1%. The
//! error is 0 only for bit-identical results.
//!
//! Which engine runs the checks: ONNX Runtime when this build has it (the
//! `ort` feature) and its library loads, because it prepares a model several
//! times faster than tract and, being the reference executor, also refuses
//! a rewritten model that is not valid ONNX; tract otherwise. The choice is
//! made once, on the input model, and reported.

use std::collections::BTreeMap;

use qforge_ir::{Graph, Model};
use qforge_runtime::{
    Engine, HostTensor, RuntimeError, Session, SessionOptions, random_inputs, resolve_input_shapes, session,
};

use crate::context::PassError;

/// Settings of the numeric check.
#[derive(Debug, Clone)]
pub struct NumericsOptions {
    /// Seed of the random inputs.
    pub seed: u64,
    /// Fixed dims for dynamic inputs.
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// Allowed relative error of exact passes.
    pub tolerance: f64,
    /// The engine that runs the checks; `None` picks ONNX Runtime when it is
    /// built in and loads, tract otherwise.
    pub engine: Option<Engine>,
    /// Check after every pass that changed the graph, instead of once per
    /// run of consecutive exact passes (a failing run is replayed pass by
    /// pass to name the pass either way; this gives every pass its figure).
    pub each_pass: bool,
    /// The largest tensor a check may make, in bytes (see
    /// [`qforge_runtime::max_tensor_bytes`]); a model above it fails the
    /// check with an error naming the node, before any engine runs.
    pub max_tensor_bytes: u64,
}

impl Default for NumericsOptions {
    fn default() -> Self {
        NumericsOptions {
            seed: 0x5eed,
            input_shapes: BTreeMap::new(),
            tolerance: 1e-5,
            engine: None,
            each_pass: false,
            max_tensor_bytes: qforge_runtime::max_tensor_bytes(),
        }
    }
}

/// Named graph outputs of one run.
pub(crate) type Outputs = Vec<(String, HostTensor)>;

/// Random inputs, the engine that runs the checks, and the input model's
/// outputs on those inputs.
#[derive(Debug, Clone)]
pub(crate) struct Reference {
    pub(crate) inputs: Vec<HostTensor>,
    pub(crate) outputs: Outputs,
    pub(crate) engine: Engine,
    /// Why the engine is not the preferred one, when it is not.
    pub(crate) engine_note: Option<String>,
}

fn runtime_err(context: &str) -> impl Fn(qforge_runtime::RuntimeError) -> PassError + '_ {
    move |source| PassError::Runtime { context: context.to_string(), source }
}

/// Makes the inputs and runs the input model once, choosing the engine.
pub(crate) fn reference(g: &Graph, opts: &NumericsOptions) -> Result<Reference, PassError> {
    let shapes = resolve_input_shapes(g, &opts.input_shapes).map_err(runtime_err("--check-numerics"))?;
    let specs: Vec<_> = g
        .runtime_inputs()
        .iter()
        .zip(shapes)
        .map(|(&v, (name, shape))| (name, shape, g.dtype(v).unwrap_or(qforge_ir::DataType::F32)))
        .collect();
    let inputs = random_inputs(&specs, opts.seed);
    let context = "--check-numerics on the input model";
    let (engine, engine_note, outputs) = match opts.engine {
        Some(e) => (e, None, run(g, &inputs, opts, e, context)?),
        None if Engine::Ort.compiled() => match run(g, &inputs, opts, Engine::Ort, context) {
            Ok(out) => (Engine::Ort, None, out),
            Err(e) => {
                let note = format!("ONNX Runtime cannot run the input model ({e}); checking with tract");
                (Engine::Tract, Some(note), run(g, &inputs, opts, Engine::Tract, context)?)
            }
        },
        None => (Engine::Tract, None, run(g, &inputs, opts, Engine::Tract, context)?),
    };
    Ok(Reference { inputs, outputs, engine, engine_note })
}

/// Opens an engine session on `g`, after checking with qforge's shape rules
/// that no tensor it computes exceeds `opts.max_tensor_bytes`: every pass
/// that runs a model opens it here, so the bound holds for every engine.
pub(crate) fn open_session(g: &Graph, opts: &SessionOptions) -> Result<Box<dyn Session>, RuntimeError> {
    crate::ops::check_sizes(g, &opts.input_shapes, opts.max_tensor_bytes)?;
    session(&Model::new(g.clone()), opts)
}

/// Runs the graph's outputs on `inputs` with `engine`.
pub(crate) fn run(
    g: &Graph,
    inputs: &[HostTensor],
    opts: &NumericsOptions,
    engine: Engine,
    context: &str,
) -> Result<Outputs, PassError> {
    let so = SessionOptions {
        input_shapes: opts.input_shapes.clone(),
        engine,
        max_tensor_bytes: opts.max_tensor_bytes,
        ..Default::default()
    };
    let s = open_session(g, &so).map_err(runtime_err(context))?;
    let out = s.run(inputs).map_err(runtime_err(context))?;
    Ok(s.output_names().iter().cloned().zip(out).collect())
}
/// The output that differs most between `a` (reference) and `b`, and its
/// relative error. Outputs are matched by position.
pub fn compare_outputs(a: &[(String, HostTensor)], b: &[(String, HostTensor)]) -> Result<(String, f64), String> {
    if a.len() != b.len() {
        return Err(format!("the number of outputs changed from {} to {}", a.len(), b.len()));
    }
    let mut worst = (String::new(), 0.0f64);
    for ((name, x), (_, y)) in a.iter().zip(b) {
        if x.shape != y.shape {
            return Err(format!("output \"{name}\" changed shape from {:?} to {:?}", x.shape, y.shape));
        }
        let (xs, ys) = (x.to_f64_vec(), y.to_f64_vec());
        let scale = xs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut diff = 0.0f64;
        for (p, q) in xs.iter().zip(&ys) {
            let d = (p - q).abs();
            // NaN where the reference is finite counts as an infinite error.
            let d = if d.is_nan() && !(p.is_nan() && q.is_nan()) {
                f64::INFINITY
            } else if d.is_nan() {
                0.0
            } else {
                d
            };
            diff = diff.max(d);
        }
        let rel = if diff == 0.0 { 0.0 } else { diff / scale.max(1.0) };
        if rel > worst.1 || worst.0.is_empty() {
            worst = (name.clone(), rel);
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_scaled_by_the_reference() {
        let small = vec![("p".to_string(), HostTensor::f32(vec![2], vec![1e-5, 0.0]))];
        let small2 = vec![("p".to_string(), HostTensor::f32(vec![2], vec![1e-5, 2e-7]))];
        assert!((compare_outputs(&small, &small2).unwrap().1 - 2e-7).abs() < 1e-12);
        let a = vec![("y".to_string(), HostTensor::f32(vec![3], vec![100.0, 0.5, -2.0]))];
        let b = vec![("y".to_string(), HostTensor::f32(vec![3], vec![100.0, 0.6, -2.0]))];
        let (name, rel) = compare_outputs(&a, &b).unwrap();
        assert_eq!(name, "y");
        assert!((rel - 0.1 / 100.0).abs() < 1e-6, "{rel}");
        assert_eq!(compare_outputs(&a, &a).unwrap().1, 0.0);
        let c = vec![("y".to_string(), HostTensor::f32(vec![3], vec![f32::NAN, 0.5, -2.0]))];
        assert!(compare_outputs(&a, &c).unwrap().1.is_infinite());
    }
}
