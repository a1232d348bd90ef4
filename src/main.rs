//! Entry point: parse, run, print the error chain once, map it to an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    fireclaw::main_with_args(std::env::args_os())
}
