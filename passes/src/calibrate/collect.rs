//! Runs the model over a data set and streams the requested tensors into
//! per-tensor histograms.
//!
//! One run per sample fetches every requested tensor at once, and they are
//! folded into their histograms straight from the engine's output buffers
//! ([`qforge_runtime::Session::run_visit`]): no copy of the activations is
//! made, so memory holds only the samples in flight (one per worker),
//! whatever the size of the data set. There is one worker per core, each
//! with its own single-threaded run: while one worker folds its sample in,
//! the others run theirs. Samples are folded in in sample order (a turn
//! passed from one to the next), so the result does not depend on the
//! number of threads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use qforge_ir::{Graph, ValueId};
use qforge_runtime::{DataError, Dataset, Engine, HostTensor, SessionOptions, TensorView};

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

    let slot_of_fetched: Vec<usize> =
        fetched.iter().map(|v| targets.iter().position(|t| t == v).unwrap_or(0)).collect();
    let input_slot = targets.iter().position(|&t| t == input);

    let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(data.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("calibrating {bar:30} {pos}/{len} images, {per_sec}, ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let folded = Mutex::new(Folded {
        next: 0,
        histograms: targets.iter().map(|_| Histogram::new(opts.bins)).collect(),
        not_float: vec![false; targets.len()],
        samples: 0,
        skipped: Vec::new(),
        kept: Vec::new(),
        kept_bytes: 0,
        error: None,
    });
    let turns = Condvar::new();
    let next_sample = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let workers = rayon::current_num_threads().clamp(1, data.len().max(1));
    // Each worker takes the next sample, loads it, runs it, and folds the
    // fetched tensors into the histograms straight from the engine's
    // buffers when the samples before it are folded in. So one core folds
    // while the others run, and only one sample's tensors per worker are
    // ever alive.
    let work = || {
        // `stop`, not the mutex: a worker must not wait for another's fold
        // before starting its next sample.
        while !stop.load(Ordering::SeqCst) {
            let i = next_sample.fetch_add(1, Ordering::SeqCst);
            if i >= data.len() {
                break;
            }
            let turn = Turn { index: i, folded: &folded, turns: &turns };
            if let Err(e) = crate::interrupt::check() {
                stop.store(true, Ordering::SeqCst);
                turn.take().error.get_or_insert(e);
                continue;
            }
            let x = match data.load(i) {
                Ok(x) => x,
                Err(e) => {
                    if turn.take().fail(e, opts.keep_outputs, &bar) {
                        stop.store(true, Ordering::SeqCst);
                    }
                    continue;
                }
            };
            let mut fold = |outs: &[TensorView<'_>]| {
                let mut f = turn.take();
                f.samples += 1;
                if f.kept.len() < opts.keep_outputs {
                    let o: Vec<HostTensor> =
                        output_fetch.iter().filter_map(|&k| outs.get(k).map(TensorView::to_host)).collect();
                    f.kept_bytes += o.iter().map(HostTensor::byte_len).sum::<usize>();
                    let keep = f.kept_bytes <= KEPT_OUTPUT_BYTES && o.len() == output_fetch.len();
                    f.kept.push(keep.then_some(o));
                }
                let Folded { histograms, not_float, .. } = &mut *f;
                let input_view = TensorView::of(&x);
                let jobs = outs.iter().enumerate().filter_map(|(k, t)| slot_of_fetched.get(k).map(|&s| (s, t)));
                for (s, t) in jobs.chain(input_slot.map(|s| (s, &input_view))) {
                    match t.as_f32() {
                        Some(xs) => histograms[s].add(xs),
                        None => not_float[s] = true,
                    }
                }
            };
            if let Err(e) = session.run_visit(std::slice::from_ref(&x), &mut fold) {
                let e =
                    DataError::Sample { path: data.path(i).to_path_buf(), reason: format!("running the model: {e}") };
                if turn.take().fail(e, opts.keep_outputs, &bar) {
                    stop.store(true, Ordering::SeqCst);
                }
            }
            drop(turn);
            bar.inc(1);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..workers {
            scope.spawn(work);
        }
        work();
    });
    bar.finish_and_clear();
    let Folded { histograms, not_float, samples, skipped, kept, error, .. } =
        folded.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = error {
        return Err(e);
    }
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

/// What the samples folded so far produced (behind the collection's mutex).
struct Folded {
    /// The sample whose turn it is to be folded in.
    next: usize,
    histograms: Vec<Histogram>,
    not_float: Vec<bool>,
    samples: u64,
    skipped: Vec<String>,
    kept: Vec<Option<Vec<HostTensor>>>,
    kept_bytes: usize,
    /// The first error that ends the collection.
    error: Option<PassError>,
}

impl Folded {
    /// Records a sample that could not be used: skipped with a warning, or,
    /// for a problem of the data set as a whole, the end of the collection
    /// (then returns true).
    fn fail(&mut self, e: DataError, keep_outputs: usize, bar: &ProgressBar) -> bool {
        match e {
            DataError::Sample { path, reason } => {
                bar.suspend(|| eprintln!("warning: skipping {}: {reason}", path.display()));
                self.skipped.push(format!("{}: {reason}", path.display()));
                if self.kept.len() < keep_outputs {
                    self.kept.push(None);
                }
                false
            }
            e => {
                self.error.get_or_insert_with(|| PassError::msg(e.to_string()));
                true
            }
        }
    }
}

/// Sample `index`'s turn to fold: [`Turn::take`] waits until every earlier
/// sample is folded in (so results do not depend on the number of threads),
/// and dropping the turn passes it on, taken or not, on every path out of a
/// worker (errors and panics included), so no later sample waits forever.
struct Turn<'a> {
    index: usize,
    folded: &'a Mutex<Folded>,
    turns: &'a Condvar,
}

impl<'a> Turn<'a> {
    fn take(&self) -> MutexGuard<'a, Folded> {
        let mut f = self.folded.lock().unwrap_or_else(PoisonError::into_inner);
        while f.next < self.index {
            f = self.turns.wait(f).unwrap_or_else(PoisonError::into_inner);
        }
        f
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.take().next = self.index + 1;
        self.turns.notify_all();
    }
}
