//! The `qforge` command: the built-in passes and the plugins shipped in
//! this repository, linked through the same entry point any plugin uses.

use std::process::ExitCode;

fn main() -> ExitCode {
    qforge::cli::main_with(&[qforge_yolo::register])
}
