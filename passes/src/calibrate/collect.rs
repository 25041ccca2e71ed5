//! Runs the model over a data set and streams the requested tensors into
//! per-tensor histograms.
//!
//! One run per sample fetches every requested tensor at once; the tensors
//! are folded into their histograms and dropped, so memory holds only the
//! activations of the samples in flight (a few per core), whatever the size
//! of the data set. Samples run in parallel, but are folded in in sample
//! order, so the result does not depend on the number of threads.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use qforge_ir::{Graph, ValueId};
use qforge_runtime::{DataError, Dataset, Engine, HostTensor, SessionOptions};

use super::histogram::Histogram;
use crate::PassError;

/// What collection produced.
pub struct Collected {
    /// One histogram per requested tensor, in request order.
    pub histograms: Vec<Histogram>,
    /// Samples folded in.
    pub samples: u64,
    /// Samples skipped, with the reason.
    pub skipped: Vec<String>,
    /// Requested tensors that turned out not to be float (left out).
    pub not_float: Vec<ValueId>,
    /// Wall time of the whole collection.
    pub seconds: f64,
    /// The graph outputs of the first samples (`None` past
    /// [`CollectOptions::keep_outputs`] or for a skipped sample), so later
    /// analyses compare against the float model without running it again.
    pub outputs: Vec<Option<Vec<HostTensor>>>,
}

/// Settings of a collection run.
pub struct CollectOptions {
    /// Bins of each new histogram.
    pub bins: usize,
    /// Hide the progress bar.
    pub quiet: bool,
    /// The engine that runs the model.
    pub engine: Engine,
    /// Keep the graph outputs of this many leading samples (within
    /// [`KEPT_OUTPUT_BYTES`] in all).
    pub keep_outputs: usize,
}

/// The most output data [`collect`] keeps (a segmentation model's outputs can
/// be as large as its input; a detector's are a few hundred kB).
pub const KEPT_OUTPUT_BYTES: usize = 256 << 20;

fn runtime_err(context: &str) -> impl Fn(qforge_runtime::RuntimeError) -> PassError + '_ {
    move |source| PassError::Runtime { context: context.to_string(), source }
}

/// Runs `g` on every sample of `data` (fed to its single runtime input) and
/// builds histograms of `targets`.
pub fn collect(
    g: &Graph,
    targets: &[ValueId],
    data: &Dataset,
    input_shape: &[usize],
    opts: &CollectOptions,
) -> Result<Collected, PassError> {
    let start = Instant::now();
    let inputs = g.runtime_inputs();
    let [input] = inputs[..] else {
        return Err(PassError::msg(format!(
            "calibration feeds one input, but the model has {} ({})",
            inputs.len(),
            inputs.iter().map(|&v| g.value_name(v)).collect::<Vec<_>>().join(", ")
        )));
    };
    // The input itself is read from the feed; everything else is fetched,
    // the graph outputs after the targets (once, even when one is both).
    let fetched: Vec<ValueId> = targets.iter().copied().filter(|&v| v != input).collect();
    let mut names: Vec<String> = fetched.iter().map(|&v| g.value_name(v).to_string()).collect();
    let output_fetch: Vec<usize> = g
        .outputs()
        .iter()
        .map(|p| {
            let name = g.value_name(p.value).to_string();
            names.iter().position(|n| *n == name).unwrap_or_else(|| {
                names.push(name);
                names.len() - 1
            })
        })
        .collect();
    let mut shapes = std::collections::BTreeMap::new();
    shapes.insert(g.value_name(input).to_string(), input_shape.to_vec());
    let session = crate::numerics::open_session(
        g,
        // Samples run concurrently, one thread each (see `SessionOptions::threads`).
        &SessionOptions { outputs: names, input_shapes: shapes, engine: opts.engine, threads: 1, ..Default::default() },
    )
    .map_err(runtime_err("preparing the model for calibration"))?;

    let mut histograms: Vec<Histogram> = targets.iter().map(|_| Histogram::new(opts.bins)).collect();
    let mut not_float = vec![false; targets.len()];
    let slot_of_fetched: Vec<usize> =
        fetched.iter().map(|v| targets.iter().position(|t| t == v).unwrap_or(0)).collect();
    let input_slot = targets.iter().position(|&t| t == input);

    let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(data.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("calibrating {bar:30} {pos}/{len} images, {per_sec}, ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut samples = 0u64;
    let mut skipped = Vec::new();
    let mut kept: Vec<Option<Vec<HostTensor>>> = Vec::new();
    let mut kept_bytes = 0usize;
    let chunk = (rayon::current_num_threads() * 2).max(1);
    let indices: Vec<usize> = (0..data.len()).collect();
    for group in indices.chunks(chunk) {
        crate::interrupt::check()?;
        let results: Vec<Result<(HostTensor, Vec<HostTensor>), DataError>> = group
            .par_iter()
            .map(|&i| {
                let x = data.load(i)?;
                let out = session.run(std::slice::from_ref(&x)).map_err(|e| DataError::Sample {
                    path: data.path(i).to_path_buf(),
                    reason: format!("running the model: {e}"),
                })?;
                Ok((x, out))
            })
            .collect();
        for r in results {
            match r {
                Err(DataError::Sample { path, reason }) => {
                    bar.suspend(|| eprintln!("warning: skipping {}: {reason}", path.display()));
                    skipped.push(format!("{}: {reason}", path.display()));
                    if kept.len() < opts.keep_outputs {
                        kept.push(None);
                    }
                }
                Err(e) => return Err(PassError::msg(e.to_string())),
                Ok((x, outs)) => {
                    samples += 1;
                    if kept.len() < opts.keep_outputs {
                        let o: Vec<HostTensor> = output_fetch.iter().filter_map(|&k| outs.get(k).cloned()).collect();
                        kept_bytes += o.iter().map(HostTensor::byte_len).sum::<usize>();
                        kept.push((kept_bytes <= KEPT_OUTPUT_BYTES && o.len() == output_fetch.len()).then_some(o));
                    }
                    let mut jobs: Vec<(usize, &HostTensor)> =
                        outs.iter().enumerate().filter_map(|(k, t)| slot_of_fetched.get(k).map(|&s| (s, t))).collect();
                    if let Some(s) = input_slot {
                        jobs.push((s, &x));
                    }
                    // Each tensor has its own histogram: fold them in in parallel.
                    let mut by_slot: Vec<Option<&HostTensor>> = vec![None; targets.len()];
                    for (s, t) in jobs {
                        by_slot[s] = Some(t);
                    }
                    histograms.par_iter_mut().zip(not_float.par_iter_mut()).zip(by_slot.par_iter()).for_each(
                        |((h, nf), t)| {
                            if let Some(t) = t {
                                match t.as_f32() {
                                    Some(xs) => h.add(xs),
                                    None => *nf = true,
                                }
                            }
                        },
                    );
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if samples == 0 {
        return Err(PassError::msg(format!(
            "no usable calibration sample among {} (first problem: {})",
            data.len(),
            skipped.first().map(String::as_str).unwrap_or("none")
        )));
    }
    Ok(Collected {
        histograms,
        samples,
        skipped,
        not_float: targets.iter().zip(not_float).filter(|(_, nf)| *nf).map(|(&v, _)| v).collect(),
        seconds: start.elapsed().as_secs_f64(),
        outputs: kept,
    })
}
