//! Building the engine with `trtexec`, after the ONNX file is written.
//!
//! The `tensorrt` pass leaves an [`EngineBuild`] as after-save work
//! ([`crate::AfterSave`]); whoever writes the model runs it with the file
//! ([`EngineBuild::run`]). Without
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
    /// The TensorRT release the graph was made for (flags, version check).
    pub target: super::Target,
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

/// (major, minor) from trtexec's banner, e.g. `[TensorRT v100100]` is 10.1
/// and `[TensorRT v8601]` is 8.6.
pub fn parse_trtexec_version(text: &str) -> Option<(u32, u32)> {
    let i = text.find("TensorRT v")? + "TensorRT v".len();
    let digits: String = text[i..].chars().take_while(char::is_ascii_digit).collect();
    let v: u32 = digits.parse().ok()?;
    // 8.x used MMmp (8601); 10 and later MMmmpp (100100).
    if digits.len() <= 4 { Some((v / 1000, (v / 100) % 10)) } else { Some((v / 10000, (v / 100) % 100)) }
}

/// The version of the trtexec at `exe`, when it says.
fn trtexec_version(exe: &Path) -> Option<(u32, u32)> {
    let out = Command::new(exe).arg("--version").output().ok()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    parse_trtexec_version(&text)
}

impl EngineBuild {
    /// The trtexec arguments for `onnx`.
    pub fn args(&self, onnx: &Path) -> Vec<String> {
        let engine = self.engine.clone().unwrap_or_else(|| onnx.with_extension("engine"));
        let mut a = vec![format!("--onnx={}", onnx.display()), format!("--saveEngine={}", engine.display())];
        match self.target {
            super::Target::Trt86 => {
                a.push("--int8".into());
                a.push("--fp16".into());
            }
            super::Target::Trt10 => a.push("--stronglyTyped".into()),
            // TensorRT 11 removed the precision flags: every network is strongly typed.
            super::Target::Trt11 => {}
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
        if let Some(found) = trtexec_version(&exe)
            && found.0 != self.target.major()
        {
            return Err(format!(
                "{} is TensorRT {}.{}, but the model was made for TensorRT {} (tensorrt.version); \
                 set tensorrt.version to match, or point tensorrt.trtexec at that release",
                exe.display(),
                found.0,
                found.1,
                self.target.major()
            ));
        }
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
    fn reads_trtexec_versions() {
        assert_eq!(parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec"), Some((8, 6)));
        assert_eq!(parse_trtexec_version("[TensorRT v100100] # trtexec --version"), Some((10, 1)));
        assert_eq!(parse_trtexec_version("[TensorRT v110000]"), Some((11, 0)));
        assert_eq!(parse_trtexec_version("no banner"), None);
    }

    #[test]
    fn each_target_gets_its_flags() {
        let b = |target| EngineBuild {
            trtexec: None,
            engine: None,
            target,
            timing_cache: None,
            extra_args: Vec::new(),
            required: false,
        };
        let flags = |t| b(t).args(Path::new("m.onnx"))[2..].to_vec();
        assert_eq!(flags(super::super::Target::Trt86), ["--int8", "--fp16"]);
        assert_eq!(flags(super::super::Target::Trt10), ["--stronglyTyped"]);
        assert!(flags(super::super::Target::Trt11).is_empty());
    }

    #[test]
    fn parses_trtexec_summary_lines() {
        assert_eq!(number_after("[I] Throughput: 1234.5 qps", "Throughput:"), Some(1234.5));
        let l = "[I] Latency: min = 0.8 ms, max = 1.2 ms, mean = 0.93 ms, median = 0.9 ms";
        assert_eq!(number_after(l, "mean ="), Some(0.93));
    }
}
