//! Timed child processes (wall time and peak RSS from GNU time) and the runs the quantization
//! sections share: qforge pipelines, ONNX Runtime's `quantize_static` (`ort_quant.py`), NVIDIA
//! ModelOpt's ONNX PTQ (`modelopt_quant.py`), `qforge agree` and the ONNX Runtime SQNR check
//! (`sqnr.py`).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::Ctx;
use crate::util;

/// GNU time, which reports the peak RSS of the process it runs.
const GNU_TIME: &str = "/usr/bin/time";

/// What one timed process cost, and what it printed.
pub struct Measured {
    /// Wall time of the whole process.
    pub seconds: f64,
    /// Peak resident set size of the process, MB (GNU time's `%M` / 1024).
    pub peak_mb: f64,
    pub stdout: String,
}

/// Runs `cmd` under `/usr/bin/time -f '%e %M'`. On failure the error is the first error line of
/// the process (for a table cell); its whole stderr is printed.
pub fn timed(ctx: &Ctx, cmd: &Command) -> Result<Measured> {
    if !Path::new(GNU_TIME).is_file() {
        bail!("{GNU_TIME} is missing (GNU time measures peak RSS): install it, e.g. `apt-get install time`");
    }
    let stats = ctx.scratch.join("time.txt");
    let mut wrapped = Command::new(GNU_TIME);
    wrapped.arg("-o").arg(&stats).args(["-f", "%e %M", "--"]).arg(cmd.get_program()).args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    println!("    $ {}", util::show(cmd));
    let out = wrapped.stdin(Stdio::null()).output().with_context(|| format!("cannot start `{}`", util::show(cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("--- `{}` failed ({}); stderr:\n{}", util::show(cmd), out.status, stderr.trim_end());
        return Err(anyhow!(error_line(&stderr)));
    }
    let text = fs::read_to_string(&stats).with_context(|| format!("cannot read {}", stats.display()))?;
    // The last line: GNU time puts "Command exited with non-zero status" lines before it.
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let mut it = last.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next()) {
        (Some(Ok(seconds)), Some(Ok(kb))) => Ok(Measured { seconds, peak_mb: kb / 1024.0, stdout }),
        _ => bail!("cannot parse GNU time's output `{}`", text.trim()),
    }
}

/// The line of a failed process worth a table cell: its first `error…` line, else its last line
/// (a Python exception), shortened.
pub fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines
        .iter()
        .find(|l| l.to_ascii_lowercase().starts_with("error"))
        .or(lines.last())
        .map_or("failed without error output", |l| l);
    let short: String = line.chars().take(160).collect();
    if short.len() < line.len() { format!("{short}…") } else { short }
}

/// The last stdout line that is a JSON object.
pub fn last_json(stdout: &str, what: &str) -> Result<Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON line"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed invalid JSON: {line}"))
}

/// Writes a pipeline file into the scratch folder.
pub fn pipeline(ctx: &Ctx, name: &str, yaml: &str) -> Result<PathBuf> {
    let path = ctx.scratch.join(format!("{name}.yaml"));
    fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// `qforge run PIPELINE -i MODEL -o OUT --calib PHOTOS -q --report OUT.json [extra...]`, timed.
/// Returns the measurement and the run report.
pub fn qforge_run(ctx: &Ctx, pipeline: &Path, model: &Path, out: &Path, extra: &[&str]) -> Result<(Measured, Value)> {
    let report = out.with_extension("report.json");
    let mut cmd = Command::new(&ctx.qforge);
    cmd.current_dir(&ctx.root).arg("run").arg(pipeline).arg("-i").arg(model).arg("-o").arg(out);
    cmd.arg("--calib").arg(photos(ctx)).arg("-q").arg("--report").arg(&report).args(extra);
    let m = timed(ctx, &cmd)?;
    let text = fs::read_to_string(&report).with_context(|| format!("cannot read {}", report.display()))?;
    let json = serde_json::from_str(&text).with_context(|| format!("invalid JSON in {}", report.display()))?;
    Ok((m, json))
}

/// `qforge run PIPELINE -i MODEL -o OUT --calib PHOTOS [extra...]` as a user runs it (no run
/// report, whose extra analyses cost time), timed; returns the measurement and the seconds of the
/// first run of `pass` from the pass table qforge prints on stdout.
pub fn qforge_run_plain(
    ctx: &Ctx,
    pipeline: &Path,
    model: &Path,
    out: &Path,
    extra: &[&str],
    pass: &str,
) -> Result<(Measured, Option<f64>)> {
    let mut cmd = Command::new(&ctx.qforge);
    cmd.current_dir(&ctx.root).arg("run").arg(pipeline).arg("-i").arg(model).arg("-o").arg(out);
    cmd.arg("--calib").arg(photos(ctx)).args(extra);
    let m = timed(ctx, &cmd)?;
    let seconds = table_seconds(&m.stdout, pass)
        .with_context(|| format!("no `{pass}` row in the pass table `{}` printed", util::show(&cmd)))?;
    Ok((m, Some(seconds)))
}

/// The time of the first row for `pass` in qforge's pass table (`1  calibrate  1054.0 ms ...`).
pub fn table_seconds(stdout: &str, pass: &str) -> Option<f64> {
    stdout.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        it.next()?.parse::<usize>().ok()?;
        (it.next()? == pass).then_some(())?;
        let value: f64 = it.next()?.parse().ok()?;
        match it.next()? {
            "µs" => Some(value * 1e-6),
            "ms" => Some(value * 1e-3),
            "s" => Some(value),
            _ => None,
        }
    })
}

/// A counter of the first run of `pass` in a qforge run report.
pub fn report_counter(report: &Value, pass: &str, counter: &str) -> Option<f64> {
    let run = report["runs"].as_array()?.iter().find(|r| r["pass"] == pass)?;
    run["counters"][counter].as_f64()
}

/// Seconds of the first run of `pass` in a qforge run report.
pub fn report_seconds(report: &Value, pass: &str) -> Option<f64> {
    report["runs"].as_array()?.iter().find(|r| r["pass"] == pass)?["seconds"].as_f64()
}

/// Options of one `ort_quant.py` run.
pub struct OrtQuant<'a> {
    pub method: &'a str,
    pub exclude_file: Option<&'a Path>,
    pub repeat: usize,
    pub size: usize,
}

/// ONNX Runtime's `quantize_static` through `xtask/scripts/ort_quant.py`, timed; returns the
/// measurement and the script's JSON (samples, excluded counts, versions).
pub fn ort_quant(ctx: &Ctx, model: &Path, out: &Path, o: &OrtQuant) -> Result<(Measured, Value)> {
    ort_quant_with(ctx, model, out, o, &["--size", &o.size.to_string()])
}

/// [`ort_quant`] with the input given by `input_args` (`--size N` or `--resize H,W`) instead of
/// `o.size`.
pub fn ort_quant_with(
    ctx: &Ctx,
    model: &Path,
    out: &Path,
    o: &OrtQuant,
    input_args: &[&str],
) -> Result<(Measured, Value)> {
    let script = ctx.root.join("xtask/scripts/ort_quant.py");
    let mut cmd = ctx.python.cmd([script.as_os_str(), model.as_os_str(), photos(ctx).as_os_str(), out.as_os_str()]);
    cmd.args(["--method", o.method, "--repeat", &o.repeat.to_string()]).args(input_args);
    if let Some(f) = o.exclude_file {
        cmd.arg("--exclude-file").arg(f);
    }
    let m = timed(ctx, &cmd)?;
    let json = last_json(&m.stdout, "ort_quant.py")?;
    Ok((m, json))
}

/// Environment variable naming a Python that has `nvidia-modelopt[onnx]` (and torch, pillow).
pub const MODELOPT_PYTHON_VAR: &str = "QFORGE_BENCH_MODELOPT_PYTHON";

/// The Python that runs ModelOpt (`$QFORGE_BENCH_MODELOPT_PYTHON`, else the bench's own python)
/// and the versions `modelopt_quant.py --version` reports; `Err(reason)` when none can.
pub fn modelopt_python(ctx: &Ctx) -> std::result::Result<(String, Value), String> {
    let (exe, from_var) = match std::env::var(MODELOPT_PYTHON_VAR) {
        Ok(p) if !p.is_empty() => (p, true),
        _ => (ctx.python.exe.clone(), false),
    };
    let script = ctx.root.join("xtask/scripts/modelopt_quant.py");
    let mut cmd = Command::new(&exe);
    cmd.arg(&script).arg("--version").stdin(Stdio::null());
    let why = match cmd.output() {
        Ok(out) if out.status.success() => {
            match last_json(&String::from_utf8_lossy(&out.stdout), "modelopt_quant.py") {
                Ok(v) => return Ok((exe, v)),
                Err(e) => e.to_string(),
            }
        }
        Ok(out) => error_line(&String::from_utf8_lossy(&out.stderr)),
        Err(e) => format!("cannot start `{exe}`: {e}"),
    };
    Err(if from_var {
        format!("${MODELOPT_PYTHON_VAR} = `{exe}` cannot run ModelOpt: {why}")
    } else {
        format!(
            "no Python with nvidia-modelopt[onnx] (`{exe}`: {why}); set ${MODELOPT_PYTHON_VAR} to one, e.g. a venv \
             with `pip install torch nvidia-modelopt[onnx] pillow`"
        )
    })
}

/// NVIDIA ModelOpt's ONNX PTQ through `xtask/scripts/modelopt_quant.py` run by `python`
/// (calibration method `method`, input options `input_args`), timed; returns the measurement and
/// the script's JSON.
pub fn modelopt_quant(
    ctx: &Ctx,
    python: &str,
    model: &Path,
    out: &Path,
    method: &str,
    input_args: &[&str],
) -> Result<(Measured, Value)> {
    let script = ctx.root.join("xtask/scripts/modelopt_quant.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg(model).arg(photos(ctx)).arg(out).args(["--method", method]).args(input_args);
    let m = timed(ctx, &cmd)?;
    let json = last_json(&m.stdout, "modelopt_quant.py")?;
    Ok((m, json))
}

/// `ort_quant.py --floor`: ONNX Runtime alone running the float model on the photos in 4 views,
/// ×`repeat`; returns the script's JSON (`floor_seconds`: the runs only, `samples`).
pub fn ort_floor(ctx: &Ctx, model: &Path, size: usize, repeat: usize) -> Result<Value> {
    let script = ctx.root.join("xtask/scripts/ort_quant.py");
    let unused = ctx.scratch.join("floor-unused.onnx");
    let mut cmd = ctx.python.cmd([script.as_os_str(), model.as_os_str(), photos(ctx).as_os_str(), unused.as_os_str()]);
    cmd.args(["--floor", "--repeat", &repeat.to_string(), "--size", &size.to_string()]);
    let m = timed(ctx, &cmd)?;
    last_json(&m.stdout, "ort_quant.py --floor")
}

/// `qforge agree FP32 CAND --images PHOTOS --size SIZE --engine ENGINE --json`.
pub fn agree(ctx: &Ctx, fp32: &Path, cand: &Path, size: usize, engine: &str) -> Result<Value> {
    let mut cmd = Command::new(&ctx.qforge);
    cmd.arg("agree").arg(fp32).arg(cand).arg("--images").arg(photos(ctx));
    cmd.args(["--size", &size.to_string(), "--engine", engine, "--json"]);
    captured_json(&mut cmd, "qforge agree")
}

/// `cand` vs `fp32` run by ONNX Runtime (`xtask/scripts/sqnr.py EXTRA...`): the script's JSON
/// (`sqnr_db`, `baseline_db`; with `--detections` also `map50`, `recall`, `precision`).
pub fn ort_eval(ctx: &Ctx, fp32: &Path, cand: &Path, extra: &[&str]) -> Result<Value> {
    let script = ctx.root.join("xtask/scripts/sqnr.py");
    let mut cmd = ctx.python.cmd([script.as_os_str(), fp32.as_os_str(), cand.as_os_str(), photos(ctx).as_os_str()]);
    cmd.args(extra);
    let json = captured_json(&mut cmd, "sqnr.py")?;
    if json["sqnr_db"].as_f64().is_none() {
        bail!("sqnr.py: no finite sqnr_db (identical outputs?)");
    }
    Ok(json)
}

/// Runs a command that prints one JSON line; failure → its first error line.
fn captured_json(cmd: &mut Command, what: &str) -> Result<Value> {
    println!("    $ {}", util::show(cmd));
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start `{}`", util::show(cmd)))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("--- `{}` failed ({}); stderr:\n{}", util::show(cmd), out.status, stderr.trim_end());
        return Err(anyhow!(error_line(&stderr)));
    }
    last_json(&String::from_utf8_lossy(&out.stdout), what)
}

/// The calibration photos.
pub fn photos(ctx: &Ctx) -> PathBuf {
    util::assets_dir().join("photos").canonicalize().unwrap_or_else(|_| ctx.root.join("assets/photos"))
}

/// A model of the assets by file name.
pub fn model(ctx: &Ctx, file: &str) -> Result<PathBuf> {
    ctx.models
        .iter()
        .find(|m| m.file_name() == Some(OsStr::new(file)))
        .cloned()
        .with_context(|| format!("{file} is not in the assets (run `cargo xtask assets`)"))
}

/// `12.3` / `—` for a missing value.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    v.filter(|x| x.is_finite()).map_or_else(|| "—".into(), |x| format!("{x:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::table_seconds;

    #[test]
    fn pass_seconds_from_the_printed_table() {
        let table = "qforge: m.onnx (323 nodes) with pipeline `m` (2 steps)\n\
                     #  pass            time  verify      nodes  changes\n\
                     1  fold-batchnorm   812 µs  691 µs  323 → 323\n\
                     2  calibrate  1054.0 ms  691 µs  323 → 323  samples 40\n\
                     3  calibrate  12.31 s  1 ms  323 → 323\n";
        assert_eq!(table_seconds(table, "calibrate"), Some(1.054));
        assert_eq!(table_seconds(table, "fold-batchnorm"), Some(812e-6));
        assert_eq!(table_seconds(table, "insert-qdq"), None);
    }
}
