//! `pip install qforge` as a user meets it: the wheel is built with maturin
//! (dev profile, into this build's target folder, so the dependencies
//! compiled for the tests are reused), installed into a new virtual
//! environment, and exercised by `tests/py/test_wheel.py` with that
//! environment's python from an empty folder: the `qforge` command on PATH,
//! `import qforge`, the API, errors, Ctrl-C, and the user's own metric from
//! the command line (`metric: {command: …}`) and from Python
//! (`metric=callable`), on nudenet with the photos.
//!
//! The environment sees the system's site-packages: the metric scripts use
//! numpy and onnxruntime as a user's would, and the run with `--engine auto`
//! finds ONNX Runtime through them. That the wheel itself needs nothing is
//! checked on its metadata (no required dependency) and by installing it
//! with `--no-index --no-deps`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn ok(cmd: &mut Command, what: &str) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{what} failed ({}):\n{out}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    out
}

/// Builds the wheel into `out` and returns it.
fn build_wheel(out: &Path) -> PathBuf {
    let root = common::root();
    ok(
        Command::new(python())
            .args(["-m", "maturin", "build", "--profile", "dev", "--manifest-path"])
            .arg(root.join("python/Cargo.toml"))
            .arg("--out")
            .arg(out)
            .args(["--interpreter", &python()])
            .current_dir(&root),
        "maturin build",
    );
    let wheels: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    assert_eq!(wheels.len(), 1, "one wheel expected in {}: {wheels:?}", out.display());
    wheels.into_iter().next().unwrap()
}

#[test]
fn the_wheel_installs_and_works_from_a_fresh_environment() {
    let (Some(_), photos) = (common::model("nudenet-320n.onnx"), common::assets().join("photos")) else { return };
    if !photos.is_dir() {
        return common::skip("assets/photos is missing — run `cargo xtask assets`");
    }
    let probe = Command::new(python()).args(["-c", "import maturin, numpy, onnx, onnxruntime"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return common::skip(
            "python3 lacks maturin, numpy, onnx or onnxruntime (pip install maturin numpy onnx onnxruntime)",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let wheel = build_wheel(&tmp.path().join("dist"));
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("qforge-") && name.contains("abi3"), "{name}");

    // Nothing is required at install time; ONNX Runtime is the `ort` extra.
    let meta = ok(
        Command::new(python()).arg("-c").arg(format!(
            "import zipfile; z = zipfile.ZipFile({:?}); \
             print(z.read(next(n for n in z.namelist() if n.endswith('METADATA'))).decode())",
            wheel.to_str().unwrap()
        )),
        "reading the wheel's METADATA",
    );
    let requires: Vec<&str> = meta.lines().filter(|l| l.starts_with("Requires-Dist:")).collect();
    assert!(
        requires.iter().all(|r| r.replace('\'', "\"").contains("extra == \"ort\"")) && !requires.is_empty(),
        "the wheel must require nothing but offer the ort extra: {requires:?}"
    );

    let venv = tmp.path().join("venv");
    ok(Command::new(python()).args(["-m", "venv", "--system-site-packages"]).arg(&venv), "python -m venv");
    let vpy = venv.join("bin/python");
    let probe = Command::new(&vpy).args(["-c", "import qforge"]).output().unwrap();
    assert!(!probe.status.success(), "qforge must not be importable before the install");
    ok(
        Command::new(&vpy)
            .args(["-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check", "--quiet"])
            .arg(&wheel),
        "pip install the wheel",
    );
    assert!(venv.join("bin/qforge").is_file(), "the wheel puts no `qforge` command in the environment");

    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = ok(
        Command::new(&vpy)
            .arg(common::root().join("tests/py/test_wheel.py"))
            .arg(common::assets())
            .arg(&work)
            .env("PATH", format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default()))
            .env_remove("ORT_DYLIB_PATH"),
        "tests/py/test_wheel.py",
    );
    eprintln!("{out}");
    assert!(out.trim_end().ends_with("wheel OK"), "{out}");
}
