//! The command-line interface: argument parsing and the subcommands.
//!
//! A `qforge` binary is [`main_with`] and the plugins it lists: the
//! built-in passes are always there; each plugin's entry point links its
//! passes and metrics and may add subcommands ([`Plugin::subcommand`]).
//! Everything a plugin author needs is re-exported here, so a plugin
//! crate depends on `qforge` alone.
//!
//! Exit codes: 0 success, 1 error (bad model, failed pass, I/O), 2 usage.

mod diff;
mod inspect;
mod list;
mod report_html;
mod run;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand as _};

pub use qforge_plugin::{Plugin, Register, Subcommand, anyhow, clap, parse_engine};

/// qforge — compile ONNX models with YAML pipelines of passes
/// (BatchNorm folding, exact rewrites, INT8 Q/DQ for TensorRT).
#[derive(Debug, Parser)]
#[command(name = "qforge", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run a pipeline on a model and write the result.
    Run(run::RunArgs),
    /// List the registered passes with their options and defaults.
    Passes(list::PassesArgs),
    /// Summarize a model: inputs, outputs, op histogram, optionally the text IR.
    Inspect(inspect::InspectArgs),
    /// Structural difference of two models.
    Diff(diff::DiffArgs),
}

/// The `qforge` command with the given plugins: parses the arguments, runs
/// the subcommand, maps the outcome to an exit code. This is the whole
/// `main` of a binary:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     qforge::cli::main_with(&[/* my_plugin::register, … */])
/// }
/// ```
///
/// Each [`Register`] function is called once, before the arguments are
/// parsed; naming it is what links its crate's passes and metrics. Two
/// registrations of one pass, metric or subcommand name are an error at
/// start-up that names both.
pub fn main_with(plugins: &[Register]) -> ExitCode {
    main_from(plugins, std::env::args_os())
}

/// [`main_with`] on the given command line (its first item is the program
/// name). Prints errors as the binary does and returns the exit code: what
/// an embedding program such as the Python wheel's `qforge` script calls.
pub fn main_from<I, T>(plugins: &[Register], args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Before any thread starts (the engine warm-up, rayon's pool).
    qforge_runtime::tune_malloc();
    ExitCode::from(exit_code(plugins, args))
}

/// The exit code of [`main_from`] as a number (0 success, 1 error, 2 usage).
pub fn exit_code<I, T>(plugins: &[Register], args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match dispatch(plugins, args) {
        Ok(()) => 0,
        Err(Err(e)) => {
            // clap prints help to stdout and errors to stderr, in colour on a terminal.
            let _ = e.print();
            match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 2,
            }
        }
        Err(Ok(msg)) => {
            eprintln!("error: {msg}");
            1
        }
    }
}

/// Why a command did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// `--help` or `--version` was asked for: the text to print (not an error).
    Help(String),
    /// The command line is wrong: clap's message, usage included.
    Usage(String),
    /// The command failed: the one-line message the binary prints after `error: `.
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Help(t) | Failure::Usage(t) => f.write_str(t.trim_end()),
            Failure::Error(m) => f.write_str(m),
        }
    }
}

/// Runs a command line (first item: the program name) without printing the
/// outcome: the entry point of APIs that report errors their own way (the
/// Python module raises the [`Failure::Error`] line as an exception). A panic
/// in a pass or an engine is contained and becomes an "internal error".
pub fn try_main<I, T>(plugins: &[Register], args: I) -> Result<(), Failure>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    dispatch(plugins, args).map_err(|e| match e {
        Ok(msg) => Failure::Error(msg),
        Err(e) => {
            let text = e.render().to_string();
            match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => Failure::Help(text),
                _ => Failure::Usage(text),
            }
        }
    })
}

/// Parses and runs; the error is the one-line message of a failed command,
/// or clap's error for a command line that asks for help or is wrong.
/// Returns only once the engine warm-up has ended, so that neither the binary
/// nor a Python program that called it exits while ONNX Runtime is still
/// loading ([`qforge_runtime::settle`]).
fn dispatch<I, T>(plugins: &[Register], args: I) -> Result<(), Result<String, clap::Error>>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let result = parse_and_run(plugins, args);
    qforge_runtime::settle();
    result
}

fn parse_and_run<I, T>(plugins: &[Register], args: I) -> Result<(), Result<String, clap::Error>>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // The built-in passes register like a plugin's: referencing the crate
    // keeps the linker from dropping them.
    qforge_passes::builtin::link();
    let mut q = Plugin::default();
    for register in plugins {
        register(&mut q);
    }
    let extra = q.into_subcommands();
    check_subcommands(&extra)
        .and_then(|()| qforge_passes::check_registrations().map_err(|e| e.to_string()))
        .map_err(|e| Ok(format!("this qforge binary is misconfigured: {e}")))?;
    let mut command = Cli::command();
    for s in &extra {
        command = command.subcommand(s.command().clone());
    }
    let matches = command.try_get_matches_from(args).map_err(Err)?;
    install_panic_hook();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        if let Some((name, args)) = matches.subcommand()
            && let Some(s) = extra.iter().find(|s| s.name() == name)
        {
            return s.run(args);
        }
        match Cli::from_arg_matches(&matches)?.command {
            Command::Run(a) => run::run(a),
            Command::Passes(a) => list::run(a),
            Command::Inspect(a) => inspect::run(a),
            Command::Diff(a) => diff::run(a),
        }
    }));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Ok(one_line(&e))),
        Err(_) => {
            let what = LAST_PANIC.lock().ok().and_then(|m| m.clone()).unwrap_or_else(|| "unknown".into());
            Err(Ok(format!(
                "internal error in qforge: {what} (this is a bug; please report it with the command line; \
                 QFORGE_BACKTRACE=1 prints the backtrace)"
            )))
        }
    }
}

/// Plugin subcommands must not take a built-in's name or each other's.
fn check_subcommands(extra: &[Subcommand]) -> Result<(), String> {
    let builtin: Vec<String> = Command::augment_subcommands(clap::Command::new("qforge"))
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .chain(["help".to_string()])
        .collect();
    for (i, s) in extra.iter().enumerate() {
        if builtin.iter().any(|b| b == s.name()) {
            return Err(format!("subcommand `{}` (added at {}) is a built-in subcommand", s.name(), s.added_at()));
        }
        if let Some(first) = extra[..i].iter().find(|f| f.name() == s.name()) {
            return Err(format!(
                "subcommand `{}` is added twice, at {} and at {}; names must be unique",
                s.name(),
                first.added_at(),
                s.added_at()
            ));
        }
    }
    Ok(())
}

/// The message and place of the last panic, for the one-line report.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A panic becomes one "internal error" line and exit code 1, not a
/// multi-line dump and 101. Panics that are caught on purpose (an engine
/// crash turned into an error at the engine boundary) print nothing.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(set_panic_hook);
}

fn set_panic_hook() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Args)]
    struct NoArgs {}

    fn nothing(_: NoArgs) -> anyhow::Result<()> {
        Ok(())
    }

    #[test]
    fn plugin_subcommands_cannot_shadow_or_repeat() {
        let mut q = Plugin::default();
        q.subcommand("hello", "Says hello.", nothing);
        let first = line!() - 1;
        q.subcommand("bye", "Says bye.", nothing);
        assert_eq!(check_subcommands(q.subcommands()), Ok(()));
        q.subcommand("hello", "Says hello again.", nothing);
        let second = line!() - 1;
        let e = check_subcommands(q.subcommands()).unwrap_err();
        let f = file!();
        assert_eq!(
            e,
            format!("subcommand `hello` is added twice, at {f}:{first} and at {f}:{second}; names must be unique")
        );
        for name in ["run", "passes", "help"] {
            let mut q = Plugin::default();
            q.subcommand(name, "Shadows a built-in.", nothing);
            let e = check_subcommands(q.subcommands()).unwrap_err();
            assert!(
                e.starts_with(&format!("subcommand `{name}` (added at {f}:"))
                    && e.ends_with("is a built-in subcommand"),
                "{e}"
            );
        }
    }
}
