//! Paths, child processes (python, pip, cargo, qforge) and small formatting helpers.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// `assets/` of the workspace, or `$QFORGE_ASSETS` (same rule as `tests/common`).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("QFORGE_ASSETS").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("assets"))
}

/// Cargo's target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { workspace_root().join(dir) }
        }
        None => workspace_root().join("target"),
    }
}

/// The release qforge binary, after [`build_qforge_release`].
pub fn qforge_release() -> PathBuf {
    target_dir().join("release").join(format!("qforge{}", std::env::consts::EXE_SUFFIX))
}

/// `cargo build --release -p qforge`, output streamed.
pub fn build_qforge_release() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // With the ONNX Runtime engine (`--engine ort`); it needs the library only when used.
    cmd.args(["build", "--release", "-p", "qforge", "--features", "ort"]).current_dir(workspace_root());
    println!("==> cargo build --release -p qforge --features ort");
    run_streaming(&mut cmd)?;
    let exe = qforge_release();
    if !exe.is_file() {
        bail!("`cargo build --release -p qforge --features ort` succeeded but {} does not exist", exe.display());
    }
    Ok(exe)
}

/// A command line as a shell would show it (for logs and error messages).
pub fn show(cmd: &Command) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c)) {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(quote(cmd.get_program())).chain(cmd.get_args().map(quote)).collect::<Vec<_>>().join(" ")
}

/// Runs with inherited stdio; fails on a non-zero exit.
pub fn run_streaming(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs with captured output; fails on a non-zero exit, with stderr in the message.
pub fn run_captured(cmd: &mut Command) -> Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start `{}`", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({})\n--- stderr ---\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out)
}

/// How to run Python and pip on this machine.
pub struct Python {
    /// The interpreter (`$PYTHON`, `python3` or `python`).
    pub exe: String,
    /// The pip command: `[exe, -m, pip]`, or `pip3` / `pip` when the interpreter has no pip module.
    pip: Vec<String>,
}

const INSTALL_HINT: &str = "install Python 3 with pip (Debian/Ubuntu: `apt-get install python3 python3-pip`), \
                            or point $PYTHON at a python3 that has pip";

impl Python {
    /// Finds a working Python 3 and pip, or says what to install.
    pub fn find() -> Result<Python> {
        let candidates: Vec<String> = match std::env::var("PYTHON") {
            Ok(p) if !p.is_empty() => vec![p],
            _ => vec!["python3".into(), "python".into()],
        };
        let exe = candidates
            .iter()
            .find(|c| probe(c, &["-c", "import sys; assert sys.version_info >= (3, 8)"]))
            .cloned()
            .with_context(|| format!("no Python 3 found (tried {}): {INSTALL_HINT}", candidates.join(", ")))?;
        let pip = if probe(&exe, &["-m", "pip", "--version"]) {
            vec![exe.clone(), "-m".into(), "pip".into()]
        } else if let Some(p) = ["pip3", "pip"].into_iter().find(|p| probe(p, &["--version"])) {
            vec![p.to_string()]
        } else {
            bail!("`{exe} -m pip` does not work and no `pip3`/`pip` is on PATH: {INSTALL_HINT}");
        };
        Ok(Python { exe, pip })
    }

    /// A `pip <args>` command.
    pub fn pip<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.pip[0]);
        cmd.args(&self.pip[1..]).args(args);
        cmd
    }

    /// A `python <args>` command.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args);
        cmd
    }

    /// True when `import <modules>` works.
    pub fn has_modules(&self, modules: &[&str]) -> bool {
        probe(&self.exe, &["-c", &format!("import {}", modules.join(", "))])
    }
}

/// True when `program args` starts and exits with success (output discarded).
fn probe(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when `path` is a file with at least one byte.
pub fn non_empty_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// Median of the samples (mean of the middle two for an even count); NaN when empty.
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A markdown table with a header row; cells are padded so it also reads well in a terminal.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).chain([header[i].chars().count()]).max()
    };
    let widths: Vec<usize> = (0..header.len()).map(|i| width(i).unwrap_or(0)).collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.to_vec());
    out += &format!("|{}|\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}
