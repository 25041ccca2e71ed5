//! Building the engine with `trtexec`, after the ONNX file is written.
//!
//! The `tensorrt` pass records an [`EngineBuild`]; the caller that saved the
//! model (the CLI) calls [`EngineBuild::run`] with the file. Without
//! TensorRT it prints one notice with the exact command to run on the GPU
//! machine, and fails only when the build was `required`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A pending engine build.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineBuild {
    /// `trtexec` to use; `None` searches `PATH`.
    pub trtexec: Option<PathBuf>,
    /// The engine file (`None`: the ONNX path with `.engine`).
    pub engine: Option<PathBuf>,
    /// `--stronglyTyped` (TensorRT 10+: precisions from the graph) instead of `--int8 --fp16`.
    pub strongly_typed: bool,
    /// `--timingCacheFile`.
    pub timing_cache: Option<PathBuf>,
    /// More `trtexec` arguments.
    pub extra_args: Vec<String>,
    /// Fail when TensorRT is not available.
    pub required: bool,
}

/// What a build did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildOutcome {
    /// The command line.
    pub command: String,
    /// False when TensorRT is not installed here.
    pub built: bool,
    /// `Throughput: … qps` from the log.
    pub throughput_qps: Option<f64>,
    /// Mean latency in ms from the log.
    pub latency_mean_ms: Option<f64>,
    /// Where the full log went.
    pub log: Option<PathBuf>,
}

fn find_in_path(exe: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(exe)).find(|p| p.is_file())
}

/// The number after `key` on a trtexec log line (`Throughput: 1234.5 qps`,
/// `Latency: min = …, max = …, mean = 0.9 ms`).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let i = line.find(key)? + key.len();
    line[i..]
        .trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
        .next()?
        .parse()
        .ok()
}

impl EngineBuild {
    /// The trtexec arguments for `onnx`.
    pub fn args(&self, onnx: &Path) -> Vec<String> {
        let engine = self.engine.clone().unwrap_or_else(|| onnx.with_extension("engine"));
        let mut a = vec![format!("--onnx={}", onnx.display()), format!("--saveEngine={}", engine.display())];
        if self.strongly_typed {
            a.push("--stronglyTyped".into());
        } else {
            a.push("--int8".into());
            a.push("--fp16".into());
        }
        if let Some(t) = &self.timing_cache {
            a.push(format!("--timingCacheFile={}", t.display()));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// Builds (or explains how to build) the engine of the saved `onnx`.
    pub fn run(&self, onnx: &Path, quiet: bool) -> Result<BuildOutcome, String> {
        let args = self.args(onnx);
        let exe = self.trtexec.clone().or_else(|| find_in_path("trtexec"));
        let shown = format!(
            "{} {}",
            exe.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "trtexec".into()),
            args.join(" ")
        );
        let Some(exe) = exe.filter(|p| p.is_file()) else {
            let msg = format!(
                "TensorRT (trtexec) is not installed here; build the engine on the GPU machine with:\n  {shown}"
            );
            if self.required {
                return Err(format!("{msg}\n(tensorrt.build is `required`)"));
            }
            if !quiet {
                eprintln!("note: {msg}");
            }
            return Ok(BuildOutcome { command: shown, ..Default::default() });
        };
        let log = onnx.with_extension("trtexec.log");
        let mut child = Command::new(&exe)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let mut out =
            BuildOutcome { command: shown.clone(), built: true, log: Some(log.clone()), ..Default::default() };
        let mut text = String::new();
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !quiet {
                    eprintln!("trtexec: {line}");
                }
                if line.contains("Throughput:") {
                    out.throughput_qps = number_after(&line, "Throughput:");
                }
                if line.contains("Latency:") && out.latency_mean_ms.is_none() {
                    out.latency_mean_ms = number_after(&line, "mean =");
                }
                text.push_str(&line);
                text.push('\n');
            }
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        std::fs::write(&log, &text).map_err(|e| format!("{}: {e}", log.display()))?;
        if !status.success() {
            return Err(format!("trtexec failed ({status}); log: {}\n  command: {shown}", log.display()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trtexec_summary_lines() {
        assert_eq!(number_after("[I] Throughput: 1234.5 qps", "Throughput:"), Some(1234.5));
        let l = "[I] Latency: min = 0.8 ms, max = 1.2 ms, mean = 0.93 ms, median = 0.9 ms";
        assert_eq!(number_after(l, "mean ="), Some(0.93));
    }
}
