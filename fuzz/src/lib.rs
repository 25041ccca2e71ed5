//! Fuzz targets for qforge that run on stable Rust (`cargo xtask fuzz`).
//!
//! Why not libFuzzer: `cargo fuzz` needs a nightly toolchain, and the
//! targets must also run inside the ordinary test suite so they cannot rot.
//! Each target is a [`Target`]: it makes an input from a seeded generator
//! ([`Rng::for_case`]: case `n` of a run is a pure function of the seed, the
//! target and `n`, so a finding reproduces from those three) and executes it
//! against an oracle. [`run`] executes cases on every core until a deadline
//! or a case count, and records three kinds of [`Finding`]:
//!
//! - a panic (caught per execution; the panic hook is silenced inside
//!   executions and records the location),
//! - an oracle violation (the target's own check: a round trip that is not
//!   one, a pass whose output no longer verifies or computes something else),
//! - a hang (an execution over the time budget, seen by a watchdog).
//!
//! Each distinct finding's input is saved (`<target>-<seed>-<case>.<ext>`,
//! with a `.txt` saying what happened) for a regression test.
//!
//! Targets: [`import`] (mutated ONNX bytes), [`parser`] (mutated text IR),
//! [`pipeline`] (mutated pipeline YAML with includes), [`fold`] (generated
//! small graphs through `pipelines/fold.yaml`, checked numerically).

#![deny(missing_docs)]

pub mod fold;
pub mod graphs;
pub mod import;
pub mod mutate;
pub mod parser;
pub mod pipeline;
pub mod rng;

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub use rng::Rng;

/// What an execution did with an input that broke nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The input was accepted and every check passed.
    Accepted,
    /// The input was refused with an error (the expected fate of most
    /// mutated inputs).
    Rejected,
}

/// A fuzz target.
pub trait Target: Send + Sync {
    /// Its name (`import`, `parser`, …).
    fn name(&self) -> &'static str;
    /// File extension of its inputs, for saved findings.
    fn ext(&self) -> &'static str;
    /// The input of one case.
    fn generate(&self, rng: &mut Rng) -> Vec<u8>;
    /// Runs one input; `Err` is an oracle violation, described.
    fn execute(&self, input: &[u8]) -> Result<Outcome, String>;
}

/// Oracle findings known and not fixed yet, by a piece of their message,
/// with what they are. Reported like any finding; the smoke test in the
/// test suite tolerates these (and only these) so it stays green until they
/// are fixed.
pub const KNOWN_OPEN: &[(&str, &str)] = &[(
    "tract: running pass fuse",
    "tract fails to optimize some models resize-to-conv-transpose wrote (its own `fuse` pass: \"Trying to \
     substitute\"), models it ran before the rewrite; not yet reduced to a tract issue or a qforge fix",
)];

/// The names of the targets, in the order they run.
pub const TARGETS: [&str; 4] = ["import", "parser", "pipeline", "fold"];

/// The target called `name`, its seeds read from the workspace at `root`.
pub fn target(root: &Path, name: &str) -> Result<Arc<dyn Target>, String> {
    Ok(match name {
        "import" => Arc::new(import::Import::new(root)?),
        "parser" => Arc::new(parser::Parser::new(root)?),
        "pipeline" => Arc::new(pipeline::PipelineTarget::new(root)?),
        "fold" => Arc::new(fold::Fold::new(root)?),
        other => return Err(format!("unknown fuzz target `{other}` (targets: {})", TARGETS.join(", "))),
    })
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed of the run (printed, so a run can be repeated).
    pub seed: u64,
    /// Stop starting new cases after this long.
    pub duration: Duration,
    /// Stop after this many cases (whichever comes first).
    pub max_cases: Option<u64>,
    /// Only this case (reproducing a finding).
    pub only_case: Option<u64>,
    /// Worker threads.
    pub threads: usize,
    /// An execution longer than this is a hang.
    pub budget: Duration,
    /// Where distinct findings' inputs are saved (nothing saved when `None`).
    pub findings_dir: Option<PathBuf>,
    /// End the run at the first hang (default true): the stuck thread cannot
    /// be stopped, and what it holds may grow until the machine kills the
    /// run with every statistic (a runaway case went from 60 MB to the 24 GB
    /// OOM kill in a minute). The finding is saved; fix it and rerun.
    pub stop_on_hang: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            duration: Duration::from_secs(10),
            max_cases: None,
            only_case: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            budget: Duration::from_secs(10),
            findings_dir: None,
            stop_on_hang: true,
        }
    }
}

/// The kind of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The code under test panicked.
    Panic,
    /// The target's oracle failed.
    Oracle,
    /// An execution went over the time budget.
    Hang,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Panic => "panic",
            Kind::Oracle => "oracle",
            Kind::Hang => "hang",
        })
    }
}

/// One distinct problem, with the first case that showed it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What kind.
    pub kind: Kind,
    /// The first case that showed it.
    pub case: u64,
    /// How many cases showed it.
    pub count: u64,
    /// The panic message and location, or the oracle's description.
    pub message: String,
    /// Where its input was saved.
    pub saved: Option<PathBuf>,
}

/// What a run of one target did.
#[derive(Debug, Clone)]
pub struct Stats {
    /// The target.
    pub target: String,
    /// The seed.
    pub seed: u64,
    /// Executions finished.
    pub executions: u64,
    /// Of which accepted (the others were rejected or are findings).
    pub accepted: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Distinct findings.
    pub findings: Vec<Finding>,
}

impl Stats {
    /// Executions per second.
    pub fn per_second(&self) -> f64 {
        self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

thread_local! {
    /// Inside an execution: the last panic's message and location.
    static PANIC: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that stays silent inside executions and
/// records the message and location; elsewhere the previous hook runs.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let inside = PANIC.with(|p| {
                let mut p = p.borrow_mut();
                match p.as_mut() {
                    Some(slot) => {
                        let msg = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(non-string panic)".into());
                        let at = info.location().map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
                        *slot = Some(format!("{msg}{at}"));
                        true
                    }
                    None => false,
                }
            });
            if !inside {
                previous(info);
            }
        }));
    });
}

/// Executes one input with the panic caught: `Ok` for an accepted or
/// rejected input, `Err((kind, message))` for a finding. Regression tests
/// call this on saved findings.
pub fn execute(t: &dyn Target, input: &[u8]) -> Result<Outcome, (Kind, String)> {
    install_hook();
    PANIC.with(|p| *p.borrow_mut() = Some(None));
    let r = catch_unwind(AssertUnwindSafe(|| t.execute(input)));
    let last = PANIC.with(|p| p.borrow_mut().take().flatten());
    match r {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(m)) => Err((Kind::Oracle, m)),
        Err(_) => Err((Kind::Panic, last.unwrap_or_else(|| "panic".into()))),
    }
}

/// What findings are grouped by: a panic's location, an oracle message
/// without its numbers and names in quotes.
fn signature(kind: Kind, message: &str) -> String {
    let mut sig = String::new();
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' || c == '`' {
            quoted = !quoted;
            sig.push(c);
        } else if !quoted && !c.is_ascii_digit() {
            sig.push(c);
        }
    }
    let sig = match kind {
        Kind::Panic => sig.rsplit(" at ").next().unwrap_or(&sig).to_string(),
        _ => sig.chars().take(120).collect(),
    };
    format!("{kind}: {sig}")
}

struct Shared {
    next: AtomicU64,
    done: AtomicU64,
    accepted: AtomicU64,
    stop: AtomicBool,
    /// Per worker: the case it runs and since when.
    running: Vec<Mutex<Option<(u64, Instant)>>>,
    findings: Mutex<(Vec<Finding>, HashMap<String, usize>)>,
    hung: Mutex<Vec<u64>>,
}

impl Shared {
    fn record(&self, t: &dyn Target, opts: &Options, case: u64, kind: Kind, message: String) {
        let sig = signature(kind, &message);
        let mut f = self.findings.lock().unwrap_or_else(|e| e.into_inner());
        let (list, by_sig) = &mut *f;
        if let Some(&i) = by_sig.get(&sig) {
            list[i].count += 1;
            return;
        }
        let saved = opts.findings_dir.as_ref().and_then(|dir| save(dir, t, opts.seed, case, kind, &message).ok());
        by_sig.insert(sig, list.len());
        list.push(Finding { kind, case, count: 1, message, saved });
    }
}

/// Writes a finding's input and a note on how to reproduce it.
fn save(dir: &Path, t: &dyn Target, seed: u64, case: u64, kind: Kind, message: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let input = catch_unwind(AssertUnwindSafe(|| t.generate(&mut Rng::for_case(seed, t.name(), case))))
        .map_err(|_| std::io::Error::other("the generator panicked"))?;
    let path = dir.join(format!("{}-{seed}-{case}.{}", t.name(), t.ext()));
    std::fs::write(&path, input)?;
    let note = format!(
        "{kind} in fuzz target `{}`, seed {seed}, case {case}:\n{message}\n\nreproduce: cargo xtask fuzz --target {} --seed {seed} --case {case}\n",
        t.name(),
        t.name()
    );
    std::fs::write(path.with_extension(format!("{}.txt", t.ext())), note)?;
    Ok(path)
}

/// Runs `t` on `opts.threads` workers until the deadline or the case count.
pub fn run(t: Arc<dyn Target>, opts: &Options) -> Stats {
    install_hook();
    let threads = opts.threads.max(1);
    let first = opts.only_case.unwrap_or(0);
    let last = match (opts.only_case, opts.max_cases) {
        (Some(c), _) => c + 1,
        (None, Some(n)) => n,
        (None, None) => u64::MAX,
    };
    let shared = Arc::new(Shared {
        next: AtomicU64::new(first),
        done: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        running: (0..threads).map(|_| Mutex::new(None)).collect(),
        findings: Mutex::new((Vec::new(), HashMap::new())),
        hung: Mutex::new(Vec::new()),
    });
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..threads {
        let (t, shared, opts) = (t.clone(), shared.clone(), opts.clone());
        let trace = std::env::var_os("QFORGE_FUZZ_TRACE").is_some();
        let spawned = std::thread::Builder::new().name(format!("fuzz-{w}")).stack_size(8 << 20).spawn(move || {
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                let case = shared.next.fetch_add(1, Ordering::Relaxed);
                if case >= last {
                    return;
                }
                let generated =
                    catch_unwind(AssertUnwindSafe(|| t.generate(&mut Rng::for_case(opts.seed, t.name(), case))));
                let Ok(input) = generated else {
                    let what = "the target's generator panicked".to_string();
                    shared.record(t.as_ref(), &opts, case, Kind::Panic, what);
                    shared.done.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                *shared.running[w].lock().unwrap_or_else(|e| e.into_inner()) = Some((case, Instant::now()));
                // An abort (a dependency's non-unwinding panic) ends the
                // process with no statistics: the trace names the cases in flight.
                if trace {
                    eprintln!("fuzz trace: {} case {case} starts", t.name());
                    // With one case (`--case`), its input too, for a finding
                    // that leaves no statistics behind.
                    if let Some(dump) = std::env::var_os("QFORGE_FUZZ_DUMP") {
                        let _ = std::fs::write(dump, &input);
                    }
                }
                let r = execute(t.as_ref(), &input);
                *shared.running[w].lock().unwrap_or_else(|e| e.into_inner()) = None;
                match r {
                    Ok(Outcome::Accepted) => {
                        shared.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Outcome::Rejected) => {}
                    Err((kind, message)) => shared.record(t.as_ref(), &opts, case, kind, message),
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
        });
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => eprintln!("fuzz: cannot start worker {w}: {e}"),
        }
    }
    // The watchdog: deadline, hangs, and the end of the workers.
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if start.elapsed() >= opts.duration {
            shared.stop.store(true, Ordering::Relaxed);
        }
        for slot in &shared.running {
            let current = *slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((case, since)) = current
                && since.elapsed() > opts.budget
            {
                let mut hung = shared.hung.lock().unwrap_or_else(|e| e.into_inner());
                if !hung.contains(&case) {
                    hung.push(case);
                    let msg = format!("case still running after {:.1} s", since.elapsed().as_secs_f64());
                    shared.record(t.as_ref(), opts, case, Kind::Hang, msg);
                    if opts.stop_on_hang {
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        // Done when every worker has finished, or (after the deadline) is
        // stuck in a case already reported as a hang.
        let hung = shared.hung.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let stopped = shared.stop.load(Ordering::Relaxed);
        let over = workers.iter().enumerate().all(|(w, h)| {
            h.is_finished()
                || (stopped && shared.running[w].lock().is_ok_and(|s| s.is_some_and(|(case, _)| hung.contains(&case))))
        });
        if over {
            break;
        }
    }
    // Hung workers are left behind (a thread cannot be killed); the rest joined.
    for h in workers.into_iter().filter(|h| h.is_finished()) {
        let _ = h.join();
    }
    let findings = shared.findings.lock().unwrap_or_else(|e| e.into_inner()).0.clone();
    Stats {
        target: t.name().to_string(),
        seed: opts.seed,
        executions: shared.done.load(Ordering::Relaxed),
        accepted: shared.accepted.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        findings,
    }
}

/// The workspace files a target seeds from: `dir/*.ext` under `root`, sorted.
pub(crate) fn seed_files(root: &Path, dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == ext)).collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that panics, fails its oracle, hangs or passes by case.
    struct Toy;

    impl Target for Toy {
        fn name(&self) -> &'static str {
            "toy"
        }
        fn ext(&self) -> &'static str {
            "txt"
        }
        fn generate(&self, rng: &mut Rng) -> Vec<u8> {
            vec![rng.below(4) as u8]
        }
        fn execute(&self, input: &[u8]) -> Result<Outcome, String> {
            match input[0] {
                0 => panic!("boom {}", input.len()),
                1 => Err("the oracle says no".into()),
                2 => {
                    std::thread::sleep(Duration::from_millis(400));
                    Ok(Outcome::Rejected)
                }
                _ => Ok(Outcome::Accepted),
            }
        }
    }

    #[test]
    fn panics_oracle_failures_and_hangs_are_found_and_saved() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            seed: 9,
            duration: Duration::from_secs(60),
            max_cases: Some(40),
            threads: 2,
            budget: Duration::from_millis(100),
            findings_dir: Some(dir.path().to_path_buf()),
            // The toy's "hang" ends by itself; see the test below for the default.
            stop_on_hang: false,
            ..Default::default()
        };
        let stats = run(Arc::new(Toy), &opts);
        assert_eq!(stats.executions, 40);
        let kinds: Vec<Kind> = stats.findings.iter().map(|f| f.kind).collect();
        for k in [Kind::Panic, Kind::Oracle, Kind::Hang] {
            assert_eq!(kinds.iter().filter(|&&x| x == k).count(), 1, "{k}: {:#?}", stats.findings);
        }
        let panic = stats.findings.iter().find(|f| f.kind == Kind::Panic).unwrap();
        assert!(panic.message.starts_with("boom 1 at ") && panic.message.contains("lib.rs"), "{}", panic.message);
        // Each distinct finding's input is saved and replays to the same finding.
        for f in &stats.findings {
            let input = std::fs::read(f.saved.as_ref().unwrap()).unwrap();
            assert_eq!(input, Toy.generate(&mut Rng::for_case(9, "toy", f.case)));
        }
        let oracle = stats.findings.iter().find(|f| f.kind == Kind::Oracle).unwrap();
        let input = std::fs::read(oracle.saved.as_ref().unwrap()).unwrap();
        assert_eq!(execute(&Toy, &input), Err((Kind::Oracle, "the oracle says no".to_string())));
        assert!(stats.accepted > 0 && stats.accepted < 40);
    }

    #[test]
    fn a_hang_ends_the_run_by_default() {
        let opts = Options {
            seed: 9,
            duration: Duration::from_secs(60),
            max_cases: Some(400),
            threads: 2,
            budget: Duration::from_millis(100),
            ..Default::default()
        };
        let stats = run(Arc::new(Toy), &opts);
        assert!(stats.executions < 400, "{} executions: the run went on after the hang", stats.executions);
        assert_eq!(stats.findings.iter().filter(|f| f.kind == Kind::Hang).count(), 1, "{:#?}", stats.findings);
    }
}
