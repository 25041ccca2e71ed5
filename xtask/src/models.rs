//! The real models in `assets/models/` and what `qforge inspect` says about them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// Fixed input dims a model needs for `--check-numerics` (its inputs have symbolic dims).
pub fn numerics_input_shapes(model: &Path) -> &'static [&'static str] {
    match model.file_name().and_then(|n| n.to_str()) {
        Some("nudenet-320n.onnx") => &["images=1,3,320,320"],
        Some("ppocrv4-det.onnx") => &["x=1,3,640,640"],
        _ => &[],
    }
}

/// The `.onnx` files of `<assets>/models`, sorted by name; fails when there are none.
pub fn list(assets: &Path) -> Result<Vec<PathBuf>> {
    let dir = assets.join("models");
    let entries =
        fs::read_dir(&dir).with_context(|| format!("cannot list {} (run `cargo xtask assets`)", dir.display()))?;
    let mut models = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "onnx") && util::non_empty_file(&path) {
            models.push(path);
        }
    }
    models.sort();
    if models.is_empty() {
        bail!("no .onnx models in {} (run `cargo xtask assets`)", dir.display());
    }
    Ok(models)
}

/// `model.onnx` → `model`.
pub fn stem(model: &Path) -> String {
    model.file_stem().map_or_else(|| model.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// Node count and op histogram of a model.
#[derive(Debug, Default, Clone)]
pub struct Census {
    pub nodes: usize,
    pub ops: BTreeMap<String, usize>,
}

impl Census {
    /// How many nodes have this op type.
    pub fn op(&self, op: &str) -> usize {
        self.ops.get(op).copied().unwrap_or(0)
    }

    /// Runs `qforge inspect <model>` and parses its summary.
    pub fn of(qforge: &Path, model: &Path) -> Result<Census> {
        let mut cmd = Command::new(qforge);
        cmd.arg("inspect").arg(model);
        let out = util::run_captured(&mut cmd)?;
        let text = String::from_utf8_lossy(&out.stdout);
        Census::parse(&text).with_context(|| format!("cannot parse the output of `{}`:\n{text}", util::show(&cmd)))
    }

    /// Parses `  599 nodes, 78 initializers ...` and `  ops: Conv×60 Mul×69 ...` lines.
    fn parse(text: &str) -> Result<Census> {
        let mut census = Census::default();
        let mut saw_nodes = false;
        for line in text.lines().map(str::trim) {
            if let Some(ops) = line.strip_prefix("ops:") {
                for item in ops.split_whitespace() {
                    let (op, n) = item.rsplit_once('×').with_context(|| format!("op entry `{item}` is not `Op×N`"))?;
                    let n: usize = n.parse().with_context(|| format!("count in op entry `{item}`"))?;
                    *census.ops.entry(op.to_string()).or_default() += n;
                }
            } else if let Some(n) = line.strip_suffix(" nodes").or_else(|| line.split_once(" nodes,").map(|(n, _)| n)) {
                census.nodes = n.parse().with_context(|| format!("node count in `{line}`"))?;
                saw_nodes = true;
            }
        }
        if !saw_nodes {
            bail!("no `<N> nodes` line");
        }
        Ok(census)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inspect_summary() {
        let text = "graph \"g\": IR version 7\n  input  images: f32[1,3,640,640]\n  \
                    599 nodes, 78 initializers (7.46 MB), 0 model functions\n  ops: Conv×60 Resize×2 Mul×69\n";
        let c = Census::parse(text).unwrap();
        assert_eq!(c.nodes, 599);
        assert_eq!(c.op("Conv"), 60);
        assert_eq!(c.op("Resize"), 2);
        assert_eq!(c.op("BatchNormalization"), 0);
    }
}
