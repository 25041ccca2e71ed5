//! `check_valid`: a model file a test wrote must pass
//! `onnx.checker.check_model(full_check=True)` and load in ONNX Runtime
//! (`tests/py/check_model.py` does both). qforge's own verifier cannot prove
//! that: ONNX Runtime refused models the checker and the verifier accepted.
//!
//! When the input model already fails a rule, the output failing that same
//! rule is inherited, not made by qforge: it is printed loudly and does not
//! fail the test. Without Python's onnx and onnxruntime the check is skipped
//! with a loud `*** SKIP ***` line, except under CI (`CI` set), which must
//! not skip.
//!
//! This file needs nothing from the test crate including it, so the plugins'
//! tests use it too (`#[path = ".../tests/common/check.rs"] mod check;`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `tests/py/check_model.py`, found above the including crate's manifest
/// folder (the workspace root, or a plugin two levels below it).
fn script() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|d| d.join("tests/py/check_model.py"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("tests/py/check_model.py not found above {}", here.display()))
}

fn skip(path: &Path, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!(
            "cannot check {} with onnx.checker and ONNX Runtime: {why}; CI must not skip this check \
             (pip install onnx onnxruntime)",
            path.display()
        );
    }
    eprintln!(
        "\n*** SKIP: not checking {} with onnx.checker and ONNX Runtime: {why} (pip install onnx onnxruntime) ***\n",
        path.display()
    );
}

/// One failed check of one model: (rule, message) by check name.
#[derive(Default)]
struct Findings {
    output: Vec<(String, String, String)>,
    input: Vec<(String, String, String)>,
}

/// Checks the model file at `path`; `input` is the model it was made from,
/// if any (only its failures excuse the same failures of `path`).
pub fn check_valid(path: &Path, input: Option<&Path>) {
    let mut cmd = Command::new("python3");
    cmd.arg(script()).arg(path);
    if let Some(i) = input {
        cmd.arg("--input").arg(i);
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => return skip(path, &format!("python3 cannot be started ({e})")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        return skip(path, stderr.trim());
    }
    assert!(out.status.success(), "tests/py/check_model.py failed on {}:\n{stderr}", path.display());
    let mut f = Findings::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if let [who, what, "fail", rule, msg] = cols[..] {
            let entry = (what.to_string(), rule.to_string(), msg.to_string());
            if who == "input" { f.input.push(entry) } else { f.output.push(entry) }
        }
    }
    let mut errors = Vec::new();
    for (what, rule, msg) in &f.output {
        let who = if what == "ort" { "ONNX Runtime" } else { "onnx.checker" };
        match f.input.iter().find(|(w, r, _)| w == what && r == rule) {
            Some((_, _, theirs)) => eprintln!(
                "\n*** INHERITED: {} fails {who}: {msg}\n    its input {} fails the same way: {theirs}\n    (not a qforge failure; fix the input model) ***\n",
                path.display(),
                input.map(|i| i.display().to_string()).unwrap_or_default()
            ),
            None => errors.push(format!("{who}: {msg}")),
        }
    }
    assert!(errors.is_empty(), "{} is not a valid ONNX model:\n  {}", path.display(), errors.join("\n  "));
}
