//! The command-line interface: argument parsing and the subcommands.
//!
//! Exit codes: 0 success, 1 error (bad model, failed pass, I/O), 2 usage.

mod agree;
mod diff;
mod inspect;
mod list;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// qforge — compile ONNX models with YAML pipelines of passes
/// (BatchNorm folding, exact rewrites, INT8 Q/DQ for TensorRT).
#[derive(Debug, Parser)]
#[command(name = "qforge", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline on a model and write the result.
    Run(run::RunArgs),
    /// List the registered passes with their options and defaults.
    Passes(list::PassesArgs),
    /// Summarize a model: inputs, outputs, op histogram, optionally the text IR.
    Inspect(inspect::InspectArgs),
    /// Structural difference of two models.
    Diff(diff::DiffArgs),
    /// Detection agreement of a candidate (e.g. INT8) YOLO model with its FP32 reference on photos.
    Agree(agree::AgreeArgs),
}

/// `--engine` values: `tract`, or `ort` when this build has the `ort` feature.
pub(crate) fn parse_engine(s: &str) -> Result<qforge_runtime::Engine, String> {
    let e: qforge_runtime::Engine = s.parse()?;
    if !e.compiled() {
        return Err(format!(
            "this qforge was built without the `{e}` feature (rebuild with `--features {e}`, e.g. \
             `cargo install --path . --features {e}`)"
        ));
    }
    Ok(e)
}

/// Parses arguments, runs the command, maps the outcome to an exit code.
pub fn main() -> ExitCode {
    // Plugins register passes and metrics through `inventory`; referencing
    // them keeps the linker from dropping those registrations.
    qforge_passes::builtin::link();
    qforge_yolo::link();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(2),
            };
        }
    };
    install_panic_hook();
    let result = std::panic::catch_unwind(move || match cli.command {
        Command::Run(a) => run::run(a),
        Command::Passes(a) => list::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Agree(a) => agree::run(a),
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
        Err(_) => {
            let what = LAST_PANIC.lock().ok().and_then(|m| m.clone()).unwrap_or_else(|| "unknown".into());
            eprintln!(
                "error: internal error in qforge: {what} (this is a bug; please report it with the command line; \
                 QFORGE_BACKTRACE=1 prints the backtrace)"
            );
            ExitCode::from(1)
        }
    }
}

/// The message and place of the last panic, for the one-line report.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A panic becomes one "internal error" line and exit code 1, not a
/// multi-line dump and 101. Panics that are caught on purpose (an engine
/// crash turned into an error at the engine boundary) print nothing.
fn install_panic_hook() {
    let verbose = std::env::var_os("QFORGE_BACKTRACE").is_some();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(format!("{msg}{at}"));
        }
        if verbose {
            default(info);
        }
    }));
}

/// The error and its causes on one line, without repeating a prefix (such as
/// the file name) that an outer context already printed.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if msg.contains(&c) {
            continue;
        }
        let c = match c.split_once(": ") {
            Some((head, rest)) if msg.contains(head) => rest.to_string(),
            _ => c,
        };
        msg = format!("{msg}: {c}");
    }
    msg.replace('\n', " ")
}
