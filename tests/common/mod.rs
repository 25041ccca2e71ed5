//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod check;
#[allow(unused_imports)] // not every test binary writes models
pub use check::check_valid;

/// Reports a test that cannot run here: a loud SKIP line on a developer's
/// machine, a failure under CI (`CI` set), where every asset and package is
/// installed and a skipped test would pass without having run.
pub fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "CI must not skip: {why}");
    eprintln!("\n*** SKIP: {why} ***\n");
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `assets/` (or `$QFORGE_ASSETS`), where `cargo xtask assets` puts models and photos.
pub fn assets() -> PathBuf {
    std::env::var_os("QFORGE_ASSETS").map(PathBuf::from).unwrap_or_else(|| root().join("assets"))
}

/// A real model from the assets, or `None` after printing a loud SKIP line.
pub fn model(name: &str) -> Option<PathBuf> {
    let p = assets().join("models").join(name);
    if p.exists() {
        Some(p)
    } else {
        skip(&format!("{} is missing — run `cargo xtask assets` to fetch the real models", p.display()));
        None
    }
}

/// Where raw exports live on the development machines until they are in
/// the assets (read-only).
const SHARED_MODELS: &str = "/work/shared/models";

/// A real model from the assets, else from the shared model folder, or
/// `None` after printing a loud SKIP line.
pub fn model_or_shared(name: &str) -> Option<PathBuf> {
    let p = assets().join("models").join(name);
    let shared = Path::new(SHARED_MODELS).join(name);
    if p.exists() {
        Some(p)
    } else if shared.exists() {
        Some(shared)
    } else {
        skip(&format!(
            "{name} is in neither {} nor {SHARED_MODELS} — run `cargo xtask assets`",
            p.parent().map(|d| d.display().to_string()).unwrap_or_default()
        ));
        None
    }
}

/// The photo folder, or `None` after a loud SKIP line.
pub fn photos() -> Option<PathBuf> {
    let p = assets().join("photos");
    if p.is_dir() && std::fs::read_dir(&p).map(|mut d| d.next().is_some()).unwrap_or(false) {
        Some(p)
    } else {
        skip(&format!("{} is missing — run `cargo xtask assets`", p.display()));
        None
    }
}

/// True when `python3 -c "import onnxruntime, numpy, PIL"` works; else a loud SKIP line.
pub fn python_ort() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import onnxruntime, numpy, PIL"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        skip("python3 with onnxruntime, numpy and pillow is not available (pip install onnxruntime numpy pillow)");
    }
    ok
}

/// Runs `tests/py/ort_compare.py` and returns its JSON report.
pub fn ort_compare(a: &Path, b: &Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(root().join("tests/py/ort_compare.py"))
        .arg(a)
        .arg(b)
        .args(extra)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "ort_compare failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("ort_compare prints JSON")
}

/// The qforge binary under test.
pub fn qforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
}

/// A fresh temporary folder.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// What a finished `qforge` command left: exit code and output.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `qforge` binary with `args` to the end.
pub fn run(args: &[&str]) -> Out {
    let o = qforge().args(args).output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A path as `&str` for command lines.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `n` samples `0.npy`, `1.npy`, … of `shape` with values in [0, 1)
/// from a xorshift generator seeded with `seed` (the same files every run).
#[allow(dead_code)] // not every test binary calibrates
pub fn random_npy(dir: &std::path::Path, n: usize, shape: &[usize], seed: u64) {
    let mut x = seed.max(1);
    let len: usize = shape.iter().product();
    for i in 0..n {
        let data: Vec<f32> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        qforge_runtime::write_npy(&dir.join(format!("{i}.npy")), shape, &data).unwrap();
    }
}
