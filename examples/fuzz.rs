//! The runner behind `cargo xtask fuzz`: runs the `qforge-fuzz` targets and
//! prints what they found. It is an example of the root package (not part of
//! xtask) so it builds with the same dependency features as the tests and
//! reuses their build of tract instead of compiling it a second time.
//!
//! `cargo run --features ort --example fuzz -- --time-per-target 15 [--target T] [--seed S] [--case N]
//! [--threads N] [--budget SECONDS] [--json OUT.json]`

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use qforge_fuzz::{Options, Stats, TARGETS};

#[derive(Parser)]
#[command(about = "Run qforge's fuzz targets (use `cargo xtask fuzz`)")]
struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 15.0)]
    time_per_target: f64,
    /// Targets (default: all).
    #[arg(long, value_delimiter = ',')]
    target: Vec<String>,
    /// Seed of the run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only this case.
    #[arg(long)]
    case: Option<u64>,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds after which one execution is a hang.
    #[arg(long, default_value_t = 10)]
    budget: u64,
    /// Where saved findings go.
    #[arg(long)]
    findings: Option<PathBuf>,
    /// Write the statistics as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let names: Vec<&str> =
        if a.target.is_empty() { TARGETS.to_vec() } else { a.target.iter().map(String::as_str).collect() };
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut all = Vec::new();
    for name in names {
        let t = match qforge_fuzz::target(&root, name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let opts = Options {
            seed: a.seed,
            duration: if a.case.is_some() {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs_f64(a.time_per_target)
            },
            max_cases: None,
            only_case: a.case,
            threads,
            budget: Duration::from_secs(a.budget),
            findings_dir: a.findings.clone(),
            stop_on_hang: true,
        };
        let stats = qforge_fuzz::run(t, &opts);
        print_stats(&stats);
        all.push(stats);
    }
    if let Some(p) = &a.json {
        let json: Vec<serde_json::Value> = all.iter().map(to_json).collect();
        if let Err(e) = std::fs::write(p, serde_json::to_string_pretty(&json).unwrap_or_default()) {
            eprintln!("error: cannot write {}: {e}", p.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    // Hung workers cannot be joined: leave without waiting for them.
    let findings: usize = all.iter().map(|s| s.findings.len()).sum();
    std::process::exit(if findings > 0 { 1 } else { 0 })
}

fn print_stats(s: &Stats) {
    println!(
        "{:>9}: {:>9} executions in {:>6.1} s = {:>8.0}/s, {:>5.1}% accepted, {} finding(s)",
        s.target,
        s.executions,
        s.elapsed.as_secs_f64(),
        s.per_second(),
        100.0 * s.accepted as f64 / s.executions.max(1) as f64,
        s.findings.len()
    );
    for f in &s.findings {
        let first = f.message.lines().next().unwrap_or_default();
        println!("           {} ×{} (first: case {}): {first}", f.kind, f.count, f.case);
        if let Some(p) = &f.saved {
            println!("           input: {}", p.display());
        }
    }
}

fn to_json(s: &Stats) -> serde_json::Value {
    serde_json::json!({
        "target": s.target,
        "seed": s.seed,
        "executions": s.executions,
        "accepted": s.accepted,
        "seconds": s.elapsed.as_secs_f64(),
        "findings": s.findings.iter().map(|f| serde_json::json!({
            "kind": f.kind.to_string(),
            "case": f.case,
            "count": f.count,
            "message": f.message,
            "saved": f.saved.as_ref().map(|p| p.display().to_string()),
        })).collect::<Vec<_>>(),
    })
}
