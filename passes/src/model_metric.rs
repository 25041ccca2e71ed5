//! Metrics that score a whole model file rather than its outputs: the
//! user's own evaluation.
//!
//! The number an ML engineer trusts is their validation mAP, computed by
//! their own code on their own labels. `skip-sensitive` can be driven by it:
//!
//! - `metric: {command: "python val.py --model {model}", timeout: 900}` runs
//!   the command (through `sh -c`) on each candidate model, written to a
//!   temporary ONNX file whose path replaces `{model}` (shell-quoted) and is
//!   also in `$QFORGE_MODEL`; the score is the number on the last line the
//!   command prints (a line `mAP50 0.734` or `0.734` both give 0.734);
//! - `metric: {callback: NAME}` calls a function an embedding program
//!   registered with [`register_callback`] (the Python module's
//!   `qforge.run(..., metric=fn)`), in-process, with the same file.
//!
//! Higher is better, as for every metric. A command that fails, times out or
//! prints no number is an error naming the command and showing the end of
//! what it printed; nothing is guessed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use qforge_ir::{ExportOptions, Graph, Model};

use crate::PassError;
use crate::metric::{MetricInfo, all_metrics, find_metric};

/// A function that scores a model file; higher is better.
pub type ModelScore = Arc<dyn Fn(&Path) -> Result<f64, String> + Send + Sync>;

static CALLBACKS: Mutex<BTreeMap<String, ModelScore>> = Mutex::new(BTreeMap::new());

/// Makes `f` available to pipelines as `metric: {callback: NAME}`, replacing
/// an earlier one of that name.
pub fn register_callback(name: &str, f: ModelScore) {
    if let Ok(mut m) = CALLBACKS.lock() {
        m.insert(name.to_string(), f);
    }
}

/// Removes the callback `name` (after the run that used it).
pub fn unregister_callback(name: &str) {
    if let Ok(mut m) = CALLBACKS.lock() {
        m.remove(name);
    }
}

fn callback(name: &str) -> Option<ModelScore> {
    CALLBACKS.lock().ok()?.get(name).cloned()
}

/// A metric as a pipeline names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum MetricSpec {
    /// A registered output metric (`sqnr`, `cosine`, a plugin's).
    Name(String),
    /// The user's command, run on each candidate model file.
    Command {
        /// Shell command; `{model}` becomes the candidate's path.
        command: String,
        /// Seconds before the command is killed (default: no limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<f64>,
    },
    /// A function registered in-process ([`register_callback`]).
    Callback {
        /// Its name.
        callback: String,
    },
}

impl Default for MetricSpec {
    fn default() -> Self {
        MetricSpec::Name("sqnr".into())
    }
}

impl MetricSpec {
    /// The metric to measure with, checked (an unknown name or callback is
    /// an error listing what exists).
    pub fn resolve(&self) -> Result<Metric, PassError> {
        match self {
            MetricSpec::Name(n) => find_metric(n).map(Metric::Outputs).ok_or_else(|| {
                let names: Vec<&str> = all_metrics().iter().map(|m| m.name).collect();
                PassError::msg(format!(
                    "unknown metric `{n}` (metrics: {}; or {{command: \"...{{model}}...\"}} to run your own evaluation)",
                    names.join(", ")
                ))
            }),
            MetricSpec::Command { command, timeout } => {
                if command.trim().is_empty() {
                    return Err(PassError::msg("metric command is empty"));
                }
                if timeout.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
                    return Err(PassError::msg(format!(
                        "metric timeout {} must be a positive number of seconds",
                        timeout.unwrap_or_default()
                    )));
                }
                let cmd = command.clone();
                let limit = timeout.map(Duration::from_secs_f64);
                Ok(Metric::Model {
                    name: "command".into(),
                    score: Arc::new(move |p: &Path| run_command(&cmd, p, limit)),
                })
            }
            MetricSpec::Callback { callback: n } => callback(n)
                .map(|score| Metric::Model { name: n.clone(), score })
                .ok_or_else(|| PassError::msg(format!("no metric callback named `{n}` is registered in this process"))),
        }
    }
}

/// A resolved metric.
#[derive(Clone)]
pub enum Metric {
    /// Scores outputs against the float model's.
    Outputs(&'static MetricInfo),
    /// Scores a model file.
    Model {
        /// For reports.
        name: String,
        /// The scorer.
        score: ModelScore,
    },
}

impl Metric {
    /// Name for reports.
    pub fn name(&self) -> &str {
        match self {
            Metric::Outputs(m) => m.name,
            Metric::Model { name, .. } => name,
        }
    }

    /// Writes `g` to a temporary ONNX file and scores it (model metrics only).
    pub fn score_graph(&self, g: &Graph) -> Result<f64, PassError> {
        let Metric::Model { name, score } = self else {
            return Err(PassError::msg("an output metric scores outputs, not a model"));
        };
        let dir = tempfile::Builder::new()
            .prefix("qforge-candidate-")
            .tempdir()
            .map_err(|e| PassError::msg(format!("metric {name}: cannot make a temporary folder: {e}")))?;
        let path = dir.path().join("candidate.onnx");
        qforge_ir::save(&Model::new(g.clone()), &path, &ExportOptions::default())
            .map_err(|e| PassError::msg(format!("metric {name}: writing the candidate model: {e}")))?;
        let s = score(&path).map_err(|e| PassError::msg(format!("metric {name}: {e}")))?;
        if !s.is_finite() {
            return Err(PassError::msg(format!("metric {name}: the score {s} is not a finite number")));
        }
        Ok(s)
    }
}

/// `s` quoted for `sh` (single quotes, embedded ones escaped).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The last lines of `text`, on one line, for an error message.
fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

/// The score on the last non-empty line of `stdout`: the whole line, or its
/// last word (`mAP50: 0.734`).
pub fn parse_score(stdout: &str) -> Result<f64, String> {
    let Some(last) = stdout.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
        return Err("it printed nothing; print the score as the last line".into());
    };
    let word = last.split_whitespace().last().unwrap_or(last);
    last.parse::<f64>()
        .or_else(|_| word.parse::<f64>())
        .map_err(|_| format!("its last line `{last}` is not a number; print the score as the last line"))
}

/// Runs `command` on `model` and reads its score.
fn run_command(command: &str, model: &Path, timeout: Option<Duration>) -> Result<f64, String> {
    let line = command.replace("{model}", &shell_quote(&model.to_string_lossy()));
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&line).env("QFORGE_MODEL", model).stdin(Stdio::null()).stdout(Stdio::piped());
    cmd.stderr(Stdio::piped());
    // Its own process group, so a timeout kills the whole evaluation, not
    // just the shell.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| format!("`{command}` did not start: {e}"))?;
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = child.stdout.take().map(|s| read(Box::new(s)));
    let err = child.stderr.take().map(|s| read(Box::new(s)));
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| format!("waiting for `{command}`: {e}"))? {
            Some(s) => break s,
            None if timeout.is_some_and(|t| start.elapsed() > t) => {
                kill_group(&mut child);
                return Err(format!(
                    "`{command}` did not finish within its timeout of {:.0} s (killed)",
                    timeout.unwrap_or_default().as_secs_f64()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(format!("`{command}` failed ({status}); its last output: {}", tail(&stderr, 3)));
    }
    parse_score(&stdout).map_err(|e| format!("`{command}`: {e}"))
}

fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        // SAFETY: kill(2) on the group this child leads; no memory involved.
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_is_the_last_line_or_its_last_word() {
        assert_eq!(parse_score("loading\n0.5\n"), Ok(0.5));
        assert_eq!(parse_score("progress 10%\nmAP50: 0.734\n\n"), Ok(0.734));
        assert!(parse_score("").unwrap_err().contains("printed nothing"));
        assert!(parse_score("0.5\ndone\n").unwrap_err().contains("`done` is not a number"));
    }

    #[test]
    fn specs_parse_from_yaml_and_resolve() {
        let s: MetricSpec = serde_saphyr::from_str("sqnr").unwrap();
        assert_eq!(s, MetricSpec::Name("sqnr".into()));
        assert_eq!(s.resolve().unwrap().name(), "sqnr");
        let s: MetricSpec = serde_saphyr::from_str("{command: \"echo 1\", timeout: 5}").unwrap();
        assert_eq!(s, MetricSpec::Command { command: "echo 1".into(), timeout: Some(5.0) });
        assert!(matches!(s.resolve().unwrap(), Metric::Model { .. }));
        let e = MetricSpec::Name("nope".into()).resolve().err().unwrap().to_string();
        assert!(e.contains("unknown metric `nope`") && e.contains("sqnr"), "{e}");
        let e = MetricSpec::Callback { callback: "absent".into() }.resolve().err().unwrap().to_string();
        assert!(e.contains("no metric callback named `absent`"), "{e}");
        let e = MetricSpec::Command { command: "x".into(), timeout: Some(0.0) }.resolve().err().unwrap().to_string();
        assert!(e.contains("positive"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn commands_get_the_model_path_and_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("it's a model.onnx");
        std::fs::write(&model, b"12345").unwrap();
        // The path arrives quoted (spaces, a quote) and in $QFORGE_MODEL.
        let size = run_command("wc -c < {model}", &model, None).unwrap();
        assert_eq!(size, 5.0);
        let same = run_command("test \"$QFORGE_MODEL\" = {model} && echo 'score 2.5'", &model, None).unwrap();
        assert_eq!(same, 2.5);
        let e = run_command("echo oops >&2; exit 3", &model, None).unwrap_err();
        assert!(e.contains("failed") && e.contains("oops"), "{e}");
        let e = run_command("echo hello", &model, None).unwrap_err();
        assert!(e.contains("`hello` is not a number"), "{e}");
        let t = Instant::now();
        let e = run_command("sleep 30; echo 1", &model, Some(Duration::from_millis(300))).unwrap_err();
        assert!(e.contains("timeout") && t.elapsed() < Duration::from_secs(10), "{e}");
    }

    #[test]
    fn callbacks_are_found_by_name_until_removed() {
        register_callback(
            "test-size",
            Arc::new(|p: &Path| Ok(std::fs::metadata(p).map_err(|e| e.to_string())?.len() as f64)),
        );
        let m = MetricSpec::Callback { callback: "test-size".into() }.resolve().unwrap();
        let g = Graph::default();
        assert!(m.score_graph(&g).unwrap() > 0.0, "the candidate file was written and scored");
        unregister_callback("test-size");
        assert!(MetricSpec::Callback { callback: "test-size".into() }.resolve().is_err());
    }
}
