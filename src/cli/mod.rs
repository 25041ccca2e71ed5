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
    // The built-in passes register like a plugin's: referencing the crate
    // keeps the linker from dropping them.
    qforge_passes::builtin::link();
    let mut q = Plugin::default();
    for register in plugins {
        register(&mut q);
    }
    let extra = q.into_subcommands();
    if let Err(e) =
        check_subcommands(&extra).and_then(|()| qforge_passes::check_registrations().map_err(|e| e.to_string()))
    {
        eprintln!("error: this qforge binary is misconfigured: {e}");
        return ExitCode::from(1);
    }
    let mut command = Cli::command();
    for s in &extra {
        command = command.subcommand(s.command().clone());
    }
    let matches = match command.try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(2),
            };
        }
    };
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
