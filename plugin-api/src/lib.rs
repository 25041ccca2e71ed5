//! The plugin interface of the `qforge` binary.
//!
//! A plugin is an ordinary crate. Its passes and metrics register themselves
//! (`register_pass!`, `register_metric!` from `qforge-passes`), but those
//! registrations live in the crate's object code, which the linker keeps
//! only if the final binary refers to the crate. So a plugin exports one
//! entry point, a [`Register`] function, and the binary lists it:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     qforge::cli::main_with(&[my_plugin::register])
//! }
//! ```
//!
//! Naming the function links the crate (its passes and metrics appear in
//! `qforge passes` and work in pipelines); calling it, which `main_with`
//! does before parsing the command line, lets the plugin add subcommands
//! through the [`Plugin`] it receives. The built-in passes, and any plugin
//! a binary lists, reach `qforge` the same way.
//!
//! This crate is separate from `qforge` (the CLI) so that a plugin shipped
//! with qforge's default binary can depend on it without a cycle; other
//! plugins use it through `qforge::cli`.

#![deny(missing_docs)]

use std::fmt;

pub use anyhow;
pub use clap;

/// A plugin's entry point: `pub fn register(q: &mut Plugin)`.
pub type Register = fn(&mut Plugin);

/// What the plugins of a binary added, collected by their [`Register`]
/// functions.
#[derive(Default)]
pub struct Plugin {
    commands: Vec<Subcommand>,
}

/// Runs a subcommand on its parsed arguments.
type RunFn = Box<dyn Fn(&clap::ArgMatches) -> anyhow::Result<()>>;

/// A subcommand a plugin added.
pub struct Subcommand {
    command: clap::Command,
    run: RunFn,
    /// Where the plugin added it (`file:line`), to tell two apart.
    at: String,
}

impl Subcommand {
    /// Its name on the command line.
    pub fn name(&self) -> &str {
        self.command.get_name()
    }

    /// Its clap definition (arguments, help).
    pub fn command(&self) -> &clap::Command {
        &self.command
    }

    /// Where the plugin added it (`src/lib.rs:12`).
    pub fn added_at(&self) -> &str {
        &self.at
    }

    /// Runs it on its parsed arguments.
    pub fn run(&self, args: &clap::ArgMatches) -> anyhow::Result<()> {
        (self.run)(args)
    }
}

impl fmt::Debug for Subcommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subcommand").field("name", &self.name()).field("at", &self.at).finish_non_exhaustive()
    }
}

impl Plugin {
    /// Adds `qforge NAME …`: its arguments are the clap [`Args`](clap::Args)
    /// struct `A` (derive it, with a doc comment per field for `--help`),
    /// parsed and handed to `run`. An error from `run` is printed as one
    /// `error:` line and exits 1, like the built-in subcommands; a usage
    /// error exits 2.
    #[track_caller]
    pub fn subcommand<A: clap::Args + 'static>(
        &mut self,
        name: &'static str,
        about: &'static str,
        run: fn(A) -> anyhow::Result<()>,
    ) {
        let at = std::panic::Location::caller();
        // `about` last: a doc comment on `A` would otherwise replace it.
        let command = A::augment_args(clap::Command::new(name)).about(about);
        let run = move |m: &clap::ArgMatches| {
            let args = <A as clap::FromArgMatches>::from_arg_matches(m).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            run(args)
        };
        self.commands.push(Subcommand { command, run: Box::new(run), at: format!("{}:{}", at.file(), at.line()) });
    }

    /// The subcommands added so far, in order.
    pub fn subcommands(&self) -> &[Subcommand] {
        &self.commands
    }

    /// Takes the subcommands out (the binary does, to build its parser).
    pub fn into_subcommands(self) -> Vec<Subcommand> {
        self.commands
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.commands).finish()
    }
}

/// Parses an `--engine` value (`auto`, `tract`, `ort`) and refuses an
/// engine this build cannot run, saying how to get it; for use as a clap
/// `value_parser` in plugin subcommands, as qforge's own use it.
pub fn parse_engine(s: &str) -> Result<qforge_runtime::Engine, String> {
    let e: qforge_runtime::Engine = s.parse()?;
    if !e.compiled() {
        return Err(format!(
            "this qforge was built without the `{e}` feature (rebuild with `--features {e}`, e.g. \
             `cargo install --path . --features {e}`)"
        ));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The struct's doc comment, which must not become the command's about.
    #[derive(Debug, clap::Args)]
    struct Greet {
        /// Who.
        name: String,
        /// How many times.
        #[arg(long, default_value_t = 1)]
        times: usize,
    }

    fn greet(a: Greet) -> anyhow::Result<()> {
        anyhow::ensure!(a.times > 0, "--times must be positive, got {}", a.times);
        anyhow::ensure!(a.name == "x", "unexpected {}", a.name);
        Ok(())
    }

    #[test]
    fn a_subcommand_parses_its_args_and_runs() {
        let mut q = Plugin::default();
        q.subcommand("greet", "Says hello.", greet);
        let line = line!() - 1;
        let s = &q.subcommands()[0];
        assert_eq!(s.name(), "greet");
        assert_eq!(s.added_at(), format!("{}:{line}", file!()));
        assert_eq!(s.command().get_about().map(|a| a.to_string()).as_deref(), Some("Says hello."));
        let cli = clap::Command::new("qforge").subcommand(s.command().clone());
        let m = cli.clone().try_get_matches_from(["qforge", "greet", "x", "--times", "2"]).expect("parses");
        let (name, sub) = m.subcommand().expect("a subcommand");
        assert_eq!(name, "greet");
        s.run(sub).expect("runs");
        let m = cli.clone().try_get_matches_from(["qforge", "greet", "x", "--times", "0"]).expect("parses");
        let e = s.run(m.subcommand().expect("sub").1).unwrap_err().to_string();
        assert_eq!(e, "--times must be positive, got 0");
        let e = cli.try_get_matches_from(["qforge", "greet"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn engines_this_build_lacks_are_refused() {
        assert_eq!(parse_engine("tract"), Ok(qforge_runtime::Engine::Tract));
        assert!(parse_engine("cuda").unwrap_err().contains("engines: auto, tract, ort"));
        let ort = parse_engine("ort");
        assert_eq!(ort.is_ok(), qforge_runtime::Engine::Ort.compiled(), "{ort:?}");
    }
}
