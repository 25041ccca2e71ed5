//! `qforge` with this crate's pass, metric and subcommand, plus everything
//! built in.

fn main() -> std::process::ExitCode {
    qforge::cli::main_with(&[my_plugin::register])
}
