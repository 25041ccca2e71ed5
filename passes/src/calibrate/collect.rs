//! Runs the model over a data set and streams the requested tensors into
//! per-tensor histograms.
//!
//! One run per sample computes every requested tensor, and each is folded
//! into its histogram straight from the engine's buffer, with no copy: the
//! float tensors are observed ([`qforge_runtime::Observe`]), handed over by
//! the engine the moment they are computed (with ONNX Runtime, while still
//! in cache, and its buffer is then reused for later tensors); the others
//! are fetched and folded after the run
//! ([`qforge_runtime::Session::run_tagged`]). While the engine opens, which
//! keeps one core busy, the first samples are decoded and resized on the
//! other ([`preload`], within [`PRELOAD_BYTES`] of 8-bit pixels). Beyond
//! those, memory holds only the samples in flight (one per worker),
//! whatever the size of the data set. There is
//! one worker per core, each with its own single-threaded run. Every
//! histogram takes the samples in sample order (each tensor has its own
//! turn), so the result does not depend on the number of threads.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use qforge_ir::{Graph, ValueId};
use qforge_runtime::{DataError, Dataset, Engine, HostTensor, Observe, Observer, Prepared, SessionOptions, TensorView};

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
    /// Where the time went ([`Phases`]).
    pub phases: Phases,
    /// The graph outputs of the first samples (`None` past
    /// [`CollectOptions::keep_outputs`] or for a skipped sample), so later
    /// analyses compare against the float model without running it again.
    pub outputs: Vec<Option<Vec<HostTensor>>>,
}

/// Where a collection's time went, in seconds: opening the model once
/// (wall), then per sample summed over the workers (so with two workers
/// they can add up to twice the wall time).
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    /// Preparing the model in the engine (session creation).
    pub open: f64,
    /// Tensors handed over during the runs.
    pub observed: usize,
    /// Tensors fetched after the runs.
    pub fetched: usize,
    /// Samples prepared while the engine opened ([`preload`]).
    pub preloaded: usize,
    /// Loading samples: decoding photos, views, letterbox, normalising.
    pub load: (f64, f64),
    /// The engine's runs, handing back the fetched tensors included.
    pub run: (f64, f64),
    /// Waiting for the earlier samples to be folded in (asleep: no CPU).
    pub wait: (f64, f64),
    /// Folding the tensors into the histograms (and keeping outputs); the
    /// CPU figure is the wall time ([`Clock::add_busy`]).
    pub fold: (f64, f64),
}

impl Phases {
    /// One line for the pass notes.
    pub fn describe(&self) -> String {
        format!(
            "{} tensors observed during the runs, {} fetched; open {:.2} s ({} samples prepared meanwhile); summed over the workers (wall/cpu): load {:.2}/{:.2} s, engine runs {:.2}/{:.2} s, fold {:.2}/{:.2} s, waiting for turn {:.2}/{:.2} s",
            self.observed,
            self.fetched,
            self.open,
            self.preloaded,
            self.load.0,
            self.load.1,
            self.run.0,
            self.run.1,
            self.fold.0,
            self.fold.1,
            self.wait.0,
            self.wait.1
        )
    }
}

/// Nanoseconds summed from several threads: wall and this thread's CPU.
#[derive(Default)]
struct Clock(AtomicU64, AtomicU64);

/// A start for [`Clock::add`].
#[derive(Clone, Copy)]
struct Start(Instant, u64);

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU seconds of the whole process so far.
pub fn process_cpu() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn now() -> Start {
    Start(Instant::now(), thread_cpu_ns())
}

impl Clock {
    fn add(&self, since: Start) {
        self.0.fetch_add(since.0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.1.fetch_add(thread_cpu_ns().saturating_sub(since.1), Ordering::Relaxed);
    }
    /// Adds the wall time since `since` as wall and as CPU time, for work
    /// that keeps its thread busy throughout: reading a thread's CPU clock
    /// is a system call (no vDSO), and the folds would read it four times
    /// per tensor per sample (0.03 of 1.3 CPU-s on nudenet).
    fn add_busy(&self, since: Instant) -> u64 {
        let ns = since.elapsed().as_nanos() as u64;
        self.0.fetch_add(ns, Ordering::Relaxed);
        self.1.fetch_add(ns, Ordering::Relaxed);
        ns
    }
    /// Adds the wall time since `since`, as time spent asleep (no CPU).
    fn add_asleep(&self, since: Instant) -> u64 {
        let ns = since.elapsed().as_nanos() as u64;
        self.0.fetch_add(ns, Ordering::Relaxed);
        ns
    }
    fn sub(&self, wall: u64, cpu: u64) {
        self.0.fetch_sub(wall, Ordering::Relaxed);
        self.1.fetch_sub(cpu, Ordering::Relaxed);
    }
    fn seconds(&self) -> (f64, f64) {
        (self.0.load(Ordering::Relaxed) as f64 * 1e-9, self.1.load(Ordering::Relaxed) as f64 * 1e-9)
    }
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
    // The input itself is read from the feed. Float tensors that are not
    // graph outputs are observed: the engine hands each one over as it is
    // computed (ONNX Runtime: while in cache, its buffer then reused; see
    // `qforge_runtime::Observe`). The rest is fetched, the graph outputs
    // after the targets (once, even when one is both).
    let is_output = |v: ValueId| g.outputs().iter().any(|p| p.value == v);
    // A model without value_info: the types `infer-shapes` finds (on a
    // copy). A tensor whose type stays unknown is tried too: if ONNX
    // Runtime finds one that is not float32, everything is fetched.
    let typed = targets.iter().any(|&v| g.dtype(v).is_none()).then(|| {
        let mut t = g.clone();
        let _ =
            crate::Pass::run(&crate::builtin::infer_shapes::InferShapes::default(), &mut t, &mut Default::default());
        t
    });
    let dtype = |v: ValueId| typed.as_ref().map_or_else(|| g.dtype(v), |t| t.dtype(v));
    // Tensors the types say are not float (shape arithmetic in a raw
    // export without value_info, once `infer-shapes` typed it) are neither
    // fetched nor observed: they are left out as not float from the start.
    let known_other: Vec<bool> =
        targets.iter().map(|&v| v != input && dtype(v).is_some_and(|t| t != qforge_ir::DataType::F32)).collect();
    let observable: Vec<ValueId> = targets
        .iter()
        .copied()
        .filter(|&v| v != input && !is_output(v) && matches!(dtype(v), Some(qforge_ir::DataType::F32) | None))
        .collect();
    drop(typed);
    let slot_of = |v: &ValueId| targets.iter().position(|t| t == v).unwrap_or(0);
    let input_slot = targets.iter().position(|&t| t == input);
    let (load_clock, run_clock) = (Clock::default(), Clock::default());
    let slots = Arc::new(Slots {
        slots: known_other
            .iter()
            .map(|&other| {
                (
                    Mutex::new(Slot {
                        next: if other { NEVER } else { 0 },
                        ahead: Default::default(),
                        histogram: Histogram::new(opts.bins),
                        not_float: other,
                    }),
                    Condvar::new(),
                )
            })
            .collect(),
        slot_of_observed: observable.iter().map(slot_of).collect(),
        wait: Clock::default(),
        fold: Clock::default(),
    });
    let mut shapes = std::collections::BTreeMap::new();
    shapes.insert(g.value_name(input).to_string(), input_shape.to_vec());
    // The session observing `observed` and fetching the other targets and
    // the graph outputs; with which tensors it fetches, and where the graph
    // outputs are among them.
    let open = |observed: &[ValueId]| {
        let fetched: Vec<ValueId> = targets
            .iter()
            .zip(&known_other)
            .filter(|&(&v, &other)| v != input && !other && !observed.contains(&v))
            .map(|(&v, _)| v)
            .collect();
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
        let observe = (!observed.is_empty()).then(|| Observe {
            tensors: observed.iter().map(|&v| g.value_name(v).to_string()).collect(),
            observer: slots.clone() as Arc<dyn Observer>,
        });
        let session = crate::numerics::open_session(
            g,
            // Samples run concurrently, one thread each (see `SessionOptions::threads`).
            &SessionOptions {
                outputs: names,
                observe,
                input_shapes: shapes.clone(),
                engine: opts.engine,
                threads: 1,
                ..Default::default()
            },
        );
        session.map(|s| (s, fetched, output_fetch))
    };
    let open_observing = || match open(&observable) {
        Ok((s, f, o)) => Ok((s, f, o, observable.len())),
        Err(_) if !observable.is_empty() => {
            let (s, f, o) = open(&[]).map_err(runtime_err("preparing the model for calibration"))?;
            Ok((s, f, o, 0))
        }
        Err(e) => Err(runtime_err("preparing the model for calibration")(e)),
    };
    // Opening the engine (finding and loading ONNX Runtime, building its
    // session) keeps one core busy for 0.1-0.3 s and leaves the other
    // idle: the first samples are prepared on it meanwhile.
    let opened = Instant::now();
    let opening = AtomicBool::new(true);
    let (session, open_seconds, preloaded) = std::thread::scope(|scope| {
        let preloader = scope.spawn(|| preload(data, &opening, &load_clock, PRELOAD_BYTES));
        let session = open_observing();
        let seconds = opened.elapsed().as_secs_f64();
        opening.store(false, Ordering::SeqCst);
        (session, seconds, preloader.join().unwrap_or_default())
    });
    let (session, fetched, output_fetch, n_observed) = session?;
    let n_preloaded = preloaded.len();
    let preloaded: Vec<Mutex<Option<Result<Prepared, DataError>>>> = preloaded.into_iter().map(Mutex::new).collect();
    let n_fetched = fetched.len();
    let slot_of_fetched: Vec<usize> = fetched.iter().map(slot_of).collect();

    let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(data.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("calibrating {bar:30} {pos}/{len} images, {per_sec}, ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let folded = Mutex::new(Folded::default());
    let next_sample = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let workers = rayon::current_num_threads().clamp(1, data.len().max(1));
    // Each worker takes the next sample, loads it and runs it. Every
    // tensor's histogram takes the samples in sample order (each has its
    // own turn, `Slots`, and a sample the bins already cover goes at once),
    // whichever worker ran them, so the result does not depend on the
    // number of threads. What a sample leaves besides (counted, skipped,
    // its outputs kept, an error) is applied in sample order too
    // (`Folded::finish`), without making a worker wait for the sample
    // before it. Only the samples in flight (one per worker) are ever
    // alive, whatever the size of the data.
    let finish = |i: usize, outcome: Outcome| {
        folded.lock().unwrap_or_else(PoisonError::into_inner).finish(i, outcome, opts.keep_outputs, &bar);
    };
    let work = || {
        while !stop.load(Ordering::SeqCst) {
            let i = next_sample.fetch_add(1, Ordering::SeqCst);
            if i >= data.len() {
                break;
            }
            // A sample that is not run still takes its turn on every tensor.
            let pass = || slots.pass_all(i);
            if let Err(e) = crate::interrupt::check() {
                pass();
                stop.store(true, Ordering::SeqCst);
                finish(i, Outcome::Failed(e));
                continue;
            }
            let loading = now();
            let ready = preloaded.get(i).and_then(|p| p.lock().unwrap_or_else(PoisonError::into_inner).take());
            let loaded = match ready {
                Some(prepared) => prepared.map(|p| data.finish(p)),
                None => data.load(i),
            };
            load_clock.add(loading);
            let x = match loaded {
                Ok(x) => x,
                Err(e) => {
                    pass();
                    if !matches!(e, DataError::Sample { .. }) {
                        stop.store(true, Ordering::SeqCst);
                    }
                    finish(i, Outcome::Unusable(e));
                    continue;
                }
            };
            let mut kept = None;
            let mut visit = |outs: &[TensorView<'_>]| {
                let input_view = TensorView::of(&x);
                let jobs = outs.iter().enumerate().filter_map(|(k, t)| slot_of_fetched.get(k).map(|&s| (s, t)));
                for (s, t) in jobs.chain(input_slot.map(|s| (s, &input_view))) {
                    slots.fold(s, i, t);
                }
                if i < opts.keep_outputs {
                    let o: Vec<HostTensor> =
                        output_fetch.iter().filter_map(|&k| outs.get(k).map(TensorView::to_host)).collect();
                    // Only a complete set of outputs is kept (see `Folded::finish`).
                    kept = Some(if o.len() == output_fetch.len() { o } else { Vec::new() });
                }
            };
            let running = now();
            let before = IN_SLOTS.with(|t| t.get());
            let ran = session.run_tagged(std::slice::from_ref(&x), i as u64, &mut visit);
            run_clock.add(running);
            // The engine's time, without the folds it called and the visit.
            let after = IN_SLOTS.with(|t| t.get());
            run_clock.sub(after.0 - before.0, after.1 - before.1);
            let outcome = match ran {
                Ok(()) => Outcome::Ran(kept),
                Err(e) => {
                    // Tensors observed before the failure are in their
                    // histograms already: then the collection cannot go on.
                    let partial = slots.pass_all(i);
                    let e = DataError::Sample {
                        path: data.path(i).to_path_buf(),
                        reason: format!("running the model: {e}"),
                    };
                    if partial {
                        stop.store(true, Ordering::SeqCst);
                        Outcome::Failed(PassError::msg(format!("{e} (after part of the sample was counted)")))
                    } else {
                        Outcome::Unusable(e)
                    }
                }
            };
            finish(i, outcome);
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
    drop(session);
    let Folded { samples, skipped, kept, error, .. } = folded.into_inner().unwrap_or_else(PoisonError::into_inner);
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
    let slots = Arc::into_inner(slots).ok_or_else(|| PassError::msg("calibration: the engine kept its observer"))?;
    let (histograms, not_float): (Vec<Histogram>, Vec<bool>) = slots
        .slots
        .into_iter()
        .map(|(m, _)| {
            let s = m.into_inner().unwrap_or_else(PoisonError::into_inner);
            (s.histogram, s.not_float)
        })
        .unzip();
    let (wait, fold) = (slots.wait.seconds(), slots.fold.seconds());
    Ok(Collected {
        histograms,
        samples,
        skipped,
        not_float: targets.iter().zip(not_float).filter(|(_, nf)| *nf).map(|(&v, _)| v).collect(),
        seconds: start.elapsed().as_secs_f64(),
        phases: Phases {
            open: open_seconds,
            observed: n_observed,
            fetched: n_fetched,
            preloaded: n_preloaded,
            load: load_clock.seconds(),
            run: run_clock.seconds(),
            wait,
            fold,
        },
        outputs: kept,
    })
}

/// The most sample data [`preload`] holds (8-bit pixels: 104 samples of
/// 320×320, 26 of 640×640), so memory stays flat in the number of samples.
const PRELOAD_BYTES: usize = 32 << 20;

/// Prepares samples from the first on while `opening` holds, until they
/// hold `budget` bytes (the sample that crosses it included), stopping at
/// the first one that fails (its error is kept, for the worker that takes it).
fn preload(
    data: &Dataset,
    opening: &AtomicBool,
    clock: &Clock,
    budget: usize,
) -> Vec<Option<Result<Prepared, DataError>>> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while opening.load(Ordering::SeqCst) && out.len() < data.len() && bytes < budget {
        let start = now();
        let prepared = data.prepare(out.len());
        clock.add(start);
        let failed = prepared.is_err();
        bytes += prepared.as_ref().map_or(0, Prepared::byte_len);
        out.push(Some(prepared));
        if failed {
            break;
        }
    }
    out
}

thread_local! {
    /// Wall and CPU nanoseconds this thread spent in [`Slots::fold`] (CPU:
    /// the wall time not spent waiting for a turn, see [`Clock::add_busy`]).
    static IN_SLOTS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Adds the time from its start to its drop to [`IN_SLOTS`], less
/// [`Spent::waited`] for the CPU.
struct Spent {
    start: Instant,
    waited: u64,
}

impl Drop for Spent {
    fn drop(&mut self) {
        let w = self.start.elapsed().as_nanos() as u64;
        IN_SLOTS.with(|t| t.set((t.get().0 + w, t.get().1 + w.saturating_sub(self.waited))));
    }
}

/// [`Slot::next`] of a tensor no sample is folded into (known not to be
/// float): every turn has passed there.
const NEVER: usize = usize::MAX;

/// One tensor's histogram and its turn: the sample it takes next.
struct Slot {
    next: usize,
    /// Later samples already folded in out of turn, because the bins as
    /// they were covered them ([`Histogram::add_if_covered`]): the turn
    /// skips them when it gets there.
    ahead: std::collections::BTreeSet<usize>,
    histogram: Histogram,
    not_float: bool,
}

impl Slot {
    /// Passes the turn on from sample `i`, over the samples folded ahead.
    fn done(&mut self, i: usize) {
        self.next = i + 1;
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
    }
}

/// Every requested tensor's [`Slot`] (with its condition variable), and
/// the observer that folds observed tensors into them during the runs.
struct Slots {
    slots: Vec<(Mutex<Slot>, Condvar)>,
    /// Slot of each observed tensor, by its index in [`Observe::tensors`].
    slot_of_observed: Vec<usize>,
    /// Time spent waiting for turns and folding during the runs.
    wait: Clock,
    fold: Clock,
}

impl Slots {
    /// Slot `s` once every sample before `i` has taken its turn there.
    fn turn(&self, s: usize, i: usize) -> MutexGuard<'_, Slot> {
        let (m, cv) = &self.slots[s];
        let mut slot = m.lock().unwrap_or_else(PoisonError::into_inner);
        while slot.next < i {
            slot = cv.wait(slot).unwrap_or_else(PoisonError::into_inner);
        }
        slot
    }

    /// Folds sample `i`'s value of tensor `s` in: at once when the bins as
    /// they are cover it (the result is the same as in turn, see
    /// [`Histogram::add_if_covered`]), else in its turn. Waiting for the
    /// turn stalls the engine thread that calls this; with two workers in
    /// step, the one a sample ahead waited on nearly every tensor (0.45 s
    /// of 4.6 s on the 640×640 YOLOv8s).
    fn fold(&self, s: usize, i: usize, t: &TensorView<'_>) {
        let start = Instant::now();
        let mut spent = Spent { start, waited: 0 };
        let (m, cv) = &self.slots[s];
        let mut slot = m.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.next < i {
            if let Some(xs) = t.as_f32()
                && slot.histogram.add_if_covered(xs)
            {
                slot.ahead.insert(i);
                drop(slot);
                self.fold.add_busy(start);
                return;
            }
            let waiting = Instant::now();
            while slot.next < i {
                slot = cv.wait(slot).unwrap_or_else(PoisonError::into_inner);
            }
            spent.waited = self.wait.add_asleep(waiting);
        }
        let folding = Instant::now();
        if slot.next == i {
            match t.as_f32() {
                Some(xs) => slot.histogram.add(xs),
                None => slot.not_float = true,
            }
            slot.done(i);
        }
        drop(slot);
        cv.notify_all();
        self.fold.add_busy(folding);
    }

    /// Lets sample `i` take its turn on every tensor without adding
    /// anything where it has not been folded in; returns whether some
    /// tensor had it already.
    fn pass_all(&self, i: usize) -> bool {
        let mut had = false;
        for s in 0..self.slots.len() {
            let mut slot = self.turn(s, i);
            if slot.next == NEVER {
                continue;
            }
            if slot.next == i {
                slot.done(i);
            } else {
                had = true;
            }
            drop(slot);
            self.slots[s].1.notify_all();
        }
        had
    }
}

impl Observer for Slots {
    fn observe(&self, tag: u64, index: usize, t: &TensorView<'_>) {
        if let Some(&s) = self.slot_of_observed.get(index) {
            self.fold(s, tag as usize, t);
        }
    }
}

/// What became of one sample, applied in sample order by [`Folded::finish`].
enum Outcome {
    /// Run and folded in, with its graph outputs when it is among the
    /// samples whose outputs are kept.
    Ran(Option<Vec<HostTensor>>),
    /// Not usable: skipped with a warning (a bad sample), or the end of
    /// the collection (a problem of the data set as a whole).
    Unusable(DataError),
    /// The end of the collection.
    Failed(PassError),
}

/// What the samples finished so far produced (behind the collection's mutex).
#[derive(Default)]
struct Folded {
    /// The first sample not applied yet.
    next: usize,
    /// Samples finished out of order, waiting for the ones before them.
    pending: std::collections::BTreeMap<usize, Outcome>,
    samples: u64,
    skipped: Vec<String>,
    kept: Vec<Option<Vec<HostTensor>>>,
    kept_bytes: usize,
    /// The first error that ends the collection.
    error: Option<PassError>,
}

impl Folded {
    /// Records sample `i`'s outcome and applies every outcome now in order:
    /// the counts, warnings, kept outputs and first error are those of a
    /// sequential run. Every sample handed to a worker is finished, so
    /// nothing stays pending.
    fn finish(&mut self, i: usize, outcome: Outcome, keep_outputs: usize, bar: &ProgressBar) {
        self.pending.insert(i, outcome);
        while let Some(o) = self.pending.remove(&self.next) {
            self.next += 1;
            match o {
                Outcome::Ran(kept) => {
                    self.samples += 1;
                    if self.kept.len() < keep_outputs {
                        let o = kept.unwrap_or_default();
                        self.kept_bytes += o.iter().map(HostTensor::byte_len).sum::<usize>();
                        let keep = self.kept_bytes <= KEPT_OUTPUT_BYTES && !o.is_empty();
                        self.kept.push(keep.then_some(o));
                    }
                }
                Outcome::Unusable(e) => self.fail(e, keep_outputs, bar),
                Outcome::Failed(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
    }

    /// Records a sample that could not be used: skipped with a warning, or,
    /// for a problem of the data set as a whole, the end of the collection.
    fn fail(&mut self, e: DataError, keep_outputs: usize, bar: &ProgressBar) {
        match e {
            DataError::Sample { path, reason } => {
                bar.suspend(|| eprintln!("warning: skipping {}: {reason}", path.display()));
                self.skipped.push(format!("{}: {reason}", path.display()));
                if self.kept.len() < keep_outputs {
                    self.kept.push(None);
                }
            }
            e => {
                self.error.get_or_insert_with(|| PassError::msg(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_runtime::{Preprocess, Source, write_npy};

    /// Five `.npy` samples; the fourth file is cut short once listed, so it
    /// fails to load.
    fn npy_dataset(dir: &std::path::Path) -> Dataset {
        std::fs::create_dir_all(dir).unwrap();
        for (k, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            write_npy(&dir.join(format!("{name}.npy")), &[1, 3, 2, 2], &[k as f32; 12]).unwrap();
        }
        let data = Dataset::open(&Source::Npy(dir.to_path_buf()), &[1, 3, 2, 2], &Preprocess::default()).unwrap();
        let cut = dir.join("d.npy");
        let len = std::fs::metadata(&cut).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(len - 8).unwrap();
        data
    }

    #[test]
    fn preload_prepares_samples_in_order_within_its_bounds() {
        let dir = std::env::temp_dir().join(format!("qforge-preload-{}", std::process::id()));
        let data = npy_dataset(&dir);
        let clock = Clock::default();
        let finished = |p: Option<Result<Prepared, DataError>>| p.unwrap().map(|p| data.finish(p));
        // While the engine opens: every sample in order, up to the first that
        // fails, whose error is kept for the worker that takes it.
        let all = preload(&data, &AtomicBool::new(true), &clock, PRELOAD_BYTES);
        assert_eq!(all.len(), 4);
        for (i, p) in all.into_iter().enumerate() {
            match (finished(p), data.load(i)) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "sample {i}"),
                (Err(got), Err(want)) => {
                    assert_eq!(i, 3);
                    assert_eq!(got.to_string(), want.to_string());
                }
                (got, want) => panic!("sample {i}: preloaded {got:?}, loaded {want:?}"),
            }
        }
        assert!(clock.seconds().0 > 0.0, "preloading counts as loading time");
        // Nothing once the engine is open.
        assert!(preload(&data, &AtomicBool::new(false), &clock, PRELOAD_BYTES).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn preload_stops_at_its_byte_budget() {
        // 48 bytes per sample: the third crosses 100 bytes and is the last.
        let dir = std::env::temp_dir().join(format!("qforge-preload-budget-{}", std::process::id()));
        let mut data = npy_dataset(&dir);
        data.limit(3, None);
        data.repeat(4);
        let got = preload(&data, &AtomicBool::new(true), &Clock::default(), 100);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|p| matches!(p, Some(Ok(p)) if p.byte_len() == 48)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
