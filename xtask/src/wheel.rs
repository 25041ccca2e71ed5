//! `cargo xtask wheel`: the Python wheel (`pip install qforge`), built by
//! maturin from `python/` (the PyO3 module and the `qforge` console script).
//!
//! One abi3 wheel serves every CPython >= 3.9 on this platform. maturin is
//! installed with pip when missing (it is a PyPI package, like the assets).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::util::{Python, run_streaming, show, target_dir, workspace_root};

/// Arguments of `cargo xtask wheel`.
#[derive(clap::Args)]
pub struct Args {
    /// Build with the dev profile (our crates lightly optimised, dependencies
    /// fully): faster to build, for tests; the default is a release wheel.
    #[arg(long)]
    dev: bool,
    /// Folder the wheel is written to.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// maturin versions this packaging was written for.
const MATURIN: &str = "maturin>=1.5,<2";

/// Builds the wheel and returns its path.
pub fn run(args: &Args) -> Result<PathBuf> {
    let py = Python::find()?;
    if !py.has_modules(&["maturin"]) {
        let mut pip = py.pip(["install", "--quiet", "--disable-pip-version-check", MATURIN]);
        println!("==> {}", show(&pip));
        run_streaming(&mut pip).context("installing maturin")?;
    }
    let out = args.out.clone().unwrap_or_else(|| target_dir().join("wheels"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let before: Vec<PathBuf> = wheels_in(&out);
    let manifest = workspace_root().join("python").join("Cargo.toml");
    let mut cmd = py.cmd(["-m", "maturin", "build", "--manifest-path"]);
    cmd.arg(&manifest).arg("--out").arg(&out).args(["--interpreter"]).arg(&py.exe);
    cmd.args(if args.dev { ["--profile", "dev"] } else { ["--profile", "release"] });
    cmd.current_dir(workspace_root());
    println!("==> {}", show(&cmd));
    run_streaming(&mut cmd)?;
    // The wheel written now: the newest qforge wheel in the folder.
    let mut made: Vec<PathBuf> = wheels_in(&out).into_iter().filter(|w| !before.contains(w)).collect();
    if made.is_empty() {
        made = wheels_in(&out);
    }
    made.sort_by_key(|w| std::fs::metadata(w).and_then(|m| m.modified()).ok());
    let Some(wheel) = made.pop() else {
        bail!("maturin succeeded but wrote no qforge wheel in {}", out.display());
    };
    println!("wheel: {}", wheel.display());
    println!(
        "install: pip install '{}[ort]'   (the [ort] extra brings ONNX Runtime, the fast engine)",
        wheel.display()
    );
    Ok(wheel)
}

fn wheels_in(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "whl")
                        && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("qforge-"))
                })
                .collect()
        })
        .unwrap_or_default()
}
