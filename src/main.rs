//! The `qforge` command.

use std::process::ExitCode;

fn main() -> ExitCode {
    qforge::cli::main()
}
