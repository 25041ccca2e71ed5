//! `cargo xtask fuzz`: runs the stable-Rust fuzz targets of `qforge-fuzz`
//! (`fuzz/`) on every core, prints executions per second and findings, and
//! with `--write` records the run as the `## Fuzzing` section of
//! `bench/results.md` (the other sections are kept, as `bench --only` does).
//!
//! The targets run in the root package's `fuzz` example (`examples/fuzz.rs`),
//! a child process built with `--workspace` (the tests' feature union, so
//! their build is reused), and xtask itself stays small.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::doc;
use crate::util;

/// Title of the section in `bench/results.md`.
pub const TITLE: &str = "Fuzzing";

/// The targets, in the order they run (as `qforge_fuzz::TARGETS`).
const TARGETS: [&str; 4] = ["import", "parser", "pipeline", "fold"];

/// Findings of earlier runs, fixed in the code, each with its regression
/// test: `(target, what it was, how it was fixed)`. The section lists them
/// so the record of what fuzzing found survives the next run.
const FIXED: &[(&str, &str, &str)] = &[
    (
        "parser",
        "the parser stored the type written on a graph output's node line as a value_info entry that the printed graph \
     did not have, so a graph parsed from its own print exported to other bytes.",
        "the type moves to the output's declaration (`ir/src/parser.rs`); test \
     `a_typed_graph_output_parses_back_without_a_value_info_entry`.",
    ),
    (
        "import, parser",
        "a tensor's element count was a plain product of its dims: dims from a file (2^40 × 2^40) overflowed it \
     (a panic in `Tensor::numel`), and in the text form `fill()`/`rand()` allocated what the dims said (a 900 GB \
     allocation aborted the process).",
        "`numel` saturates; the parser refuses a tensor above 2^20 elements or whose dims overflow, with an error \
     naming the line; test `tensor_dims_whose_product_overflows_are_refused` replays both saved inputs.",
    ),
    (
        "fold",
        "a Conv with a 2^40 pad made a 5·10^11-pixel axis, and `resize-to-conv-transpose` checked the nearest \
     mapping at every output position (a hang).",
        "axes above 65 536 pixels are left alone with a reason; test \
     `a_resize_on_a_2_to_the_40_pixel_axis_is_not_checked_pixel_by_pixel`.",
    ),
    (
        "fold",
        "a Conv whose dilated kernel is longer than its padded input, or whose input is empty on a spatial axis (a \
     nearest Resize by 0.5 of a 1-pixel axis), made tract read out of bounds in `im2col` (a non-unwinding panic \
     in a debug build: the whole process aborted).",
        "the size check every engine session goes through (`ops::check_sizes`, now also for `fold-constants`) \
     refuses both, naming the node, and the Resize shape rule now covers `tf_crop_and_resize` without roi (so \
     the check sees the Conv after it); test `a_conv_whose_kernel_is_longer_than_its_padded_input_is_refused_before_tract`.",
    ),
    (
        "import",
        "the oracle flagged a model whose graph output re-declares a graph input without element type: export \
     completes the declaration from the input's type, so the re-import verifies.",
        "the oracle accepts invalid → valid when every violation was such a declaration (a repair by design); test \
     `an_output_declared_without_element_type_is_completed_by_export`.",
    ),
    (
        "fold",
        "memory grew over a long run until the OOM kill (24 GB within a minute at worst): a case that hangs keeps \
     running on its thread, which cannot be stopped, and two hanging cases kept allocating. Case 16312: a nearest \
     Resize scaling a 1-pixel axis by 1e9 next to an axis resized to 0 (an empty output, under every bound, while \
     tract walked the 1e9-long axis). Case 58763: a Conv padded by 2^40 made an axis past what shape rules track, so \
     the size check saw nothing after it, and tract aborted on a 4 TB allocation planning the Resize after it.",
        "a hang now ends the target's run (its input saved); the size bound counts empty axes as 1 and refuses a \
     window op whose padded input exceeds it; tests `a_resize_to_1e9_pixels_next_to_an_empty_axis_is_refused_before_tract`, \
     `a_conv_padded_beyond_the_tensor_bound_is_refused_before_tract`, `a_hang_ends_the_run_by_default`.",
    ),
    (
        "fold",
        "`fold-batchnorm` folded a BatchNormalization with a negative variance (case 13354): NaN on one channel \
     became NaN over the whole layer.",
        "a BN whose scale or shift is not finite is left alone; snapshot case `tests/passes/fold-batchnorm/negative_variance.ir`.",
    ),
];

/// Findings still open: `(target, what)`. Listed so a run that leaves a
/// target out says why.
const OPEN: &[(&str, &str)] = &[
    (
        "fold",
        "tract's own `fuse` pass fails on some models `resize-to-conv-transpose` wrote (\"Trying to substitute\"), \
     models it ran before the rewrite; not yet reduced to a tract issue or a qforge fix.",
    ),
    (
        "fold",
        "a Slice with step -1 and end = INT64_MAX (case 46515): the ONNX clamping rule, `onnx.shape_inference` \
     (strict) and `onnx.reference` give an empty axis, and `fold-constants` folds the Shape after it so; tract \
     and ONNX Runtime return the whole axis, so tract then fails to analyse the Reshape that reads the folded \
     shape. qforge follows the spec; the engines disagree with it.",
    ),
];

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds in all, shared evenly by the targets run.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Run only these targets (comma-separated: import, parser, pipeline, fold).
    #[arg(long, value_delimiter = ',', value_parser = target_name)]
    pub target: Vec<String>,
    /// Seed of the run (default: from the clock; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run only this case (with --seed and one --target): reproduces a finding.
    #[arg(long)]
    pub case: Option<u64>,
    /// Worker threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds after which one execution counts as a hang.
    #[arg(long, default_value_t = 10)]
    pub budget: u64,
    /// Write the `## Fuzzing` section of `bench/results.md`.
    #[arg(long)]
    pub write: bool,
}

fn target_name(s: &str) -> Result<String, String> {
    if TARGETS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!("unknown target (targets: {})", TARGETS.join(", ")))
    }
}

pub fn run(args: &Args) -> Result<()> {
    let root = util::workspace_root();
    let names: Vec<&str> =
        if args.target.is_empty() { TARGETS.to_vec() } else { args.target.iter().map(String::as_str).collect() };
    if args.case.is_some() && (names.len() != 1 || args.seed.is_none()) {
        bail!("--case reproduces one case: give one --target and the run's --seed");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let findings_dir = util::target_dir().join("fuzz").join("findings");
    let json = util::target_dir().join("fuzz").join(format!("run-{seed}.json"));
    std::fs::create_dir_all(&findings_dir).with_context(|| format!("cannot create {}", findings_dir.display()))?;
    let per_target = args.time as f64 / names.len() as f64;
    println!(
        "==> fuzz: seed {seed}, {threads} thread(s), {per_target:.0} s per target, budget {} s per execution",
        args.budget
    );
    // Built as part of the workspace (`--workspace`): the same feature union
    // as `cargo test --workspace --features ort`, so every dependency and
    // crate of ours is reused from the tests' build. A plain `cargo run
    // --example` resolves the root package's features alone and builds all
    // of our crates a second time.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(&root).args(["build", "--quiet", "--workspace", "--features", "ort", "--example", "fuzz"]);
    println!("==> {}", util::show(&build));
    let built = build.status().with_context(|| format!("cannot run {}", util::show(&build)))?;
    if !built.success() {
        bail!("{} failed ({built})", util::show(&build));
    }
    let exe = util::target_dir().join("debug").join("examples").join(format!("fuzz{}", std::env::consts::EXE_SUFFIX));
    let mut cmd = Command::new(&exe);
    cmd.current_dir(&root);
    cmd.arg("--time-per-target").arg(per_target.to_string());
    cmd.arg("--target").arg(names.join(","));
    cmd.arg("--seed").arg(seed.to_string());
    cmd.arg("--threads").arg(threads.to_string());
    cmd.arg("--budget").arg(args.budget.to_string());
    cmd.arg("--findings").arg(&findings_dir).arg("--json").arg(&json);
    if let Some(c) = args.case {
        cmd.arg("--case").arg(c.to_string());
    }
    // A statistics file left by an earlier run with the same seed must not
    // pass for this run's when the runner dies before writing its own.
    let _ = std::fs::remove_file(&json);
    let status = cmd.status().with_context(|| format!("cannot run {}", util::show(&cmd)))?;
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("{} wrote no statistics ({status})", util::show(&cmd)))?;
    let all: Vec<Value> = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
    let total: u64 = all.iter().map(|s| s["executions"].as_u64().unwrap_or(0)).sum();
    let findings: usize = all.iter().map(|s| s["findings"].as_array().map_or(0, Vec::len)).sum();
    println!("==> {total} executions, {findings} finding(s)");
    if args.write {
        let path = root.join("bench").join("results.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let md = format!("{}{}", doc::stamp(&root), section(&all, seed, threads, args));
        let text = doc::merge(&root, &[], &old, &crate::bench::section_titles(), &[(TITLE, md)]);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("==> wrote {}", path.display());
    }
    if findings > 0 {
        bail!("{findings} finding(s); inputs saved in {}", findings_dir.display());
    }
    if !status.success() {
        bail!("{} failed ({status})", util::show(&cmd));
    }
    Ok(())
}

/// The markdown of the section (after its stamp).
fn section(all: &[Value], seed: u64, threads: usize, args: &Args) -> String {
    let mut rows = Vec::new();
    let (mut total, mut secs, mut found) = (0u64, 0f64, 0usize);
    let mut open = Vec::new();
    for s in all {
        let target = s["target"].as_str().unwrap_or("?");
        let execs = s["executions"].as_u64().unwrap_or(0);
        let accepted = s["accepted"].as_u64().unwrap_or(0);
        let seconds = s["seconds"].as_f64().unwrap_or(0.0);
        let list = s["findings"].as_array().cloned().unwrap_or_default();
        let kinds = |k: &str| list.iter().filter(|f| f["kind"] == k).count();
        rows.push(vec![
            target.to_string(),
            execs.to_string(),
            format!("{seconds:.1}"),
            format!("{:.0}", execs as f64 / seconds.max(1e-9)),
            format!("{:.1}%", 100.0 * accepted as f64 / execs.max(1) as f64),
            format!("{} / {} / {}", kinds("panic"), kinds("oracle"), kinds("hang")),
        ]);
        for f in &list {
            let msg = f["message"].as_str().unwrap_or_default().lines().next().unwrap_or_default();
            open.push(format!(
                "- `{target}` {} ×{} (case {}): {msg}",
                f["kind"].as_str().unwrap_or("?"),
                f["count"],
                f["case"]
            ));
        }
        total += execs;
        secs += seconds;
        found += list.len();
    }
    rows.push(vec![
        "**total**".into(),
        total.to_string(),
        format!("{secs:.1}"),
        format!("{:.0}", total as f64 / secs.max(1e-9)),
        String::new(),
        found.to_string(),
    ]);
    let header = ["target", "executions", "seconds", "executions/s", "accepted", "findings (panic / oracle / hang)"];
    let mut md = util::markdown_table(&header, &rows);
    let _ = write!(
        md,
        "\n`cargo xtask fuzz --time {} --seed {seed}{}` (dev profile, {threads} thread(s), one execution over {} s is a hang). \
         Accepted: the input was valid and every check passed; the rest were refused with an error, as most mutated inputs must be. \
         Targets (`fuzz/src/`): `import` mutates the fixtures and snapshot cases as ONNX bytes (bits, truncation, splices, protobuf \
         varints, lengths and fields) and round-trips what imports; `parser` mutates printer output and checks print → parse → print; \
         `pipeline` mutates `pipelines/*.yaml` (with includes and `--set`) through the loader and option checks; `fold` generates \
         small graphs with random, partly invalid attributes and runs `pipelines/fold.yaml` with the verifier and a numeric check on \
         tract.\n",
        args.time,
        if args.target.is_empty() { String::new() } else { format!(" --target {}", args.target.join(",")) },
        args.budget,
    );
    if !open.is_empty() {
        md.push_str("\nOpen findings of this run:\n\n");
        md.push_str(&open.join("\n"));
        md.push('\n');
    }
    if !FIXED.is_empty() {
        md.push_str(
            "\nFindings of earlier runs, fixed (each has a regression test in `tests/fuzz_regressions.rs`):\n\n",
        );
        for (target, what, fix) in FIXED {
            let _ = writeln!(md, "- `{target}`: {what} Fixed: {fix}");
        }
    }
    if !OPEN.is_empty() {
        md.push_str("\nOpen:\n\n");
        for (target, what) in OPEN {
            let _ = writeln!(md, "- `{target}`: {what}");
        }
    }
    md
}
