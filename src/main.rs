//! The `pipe` binary: parse arguments, run, map the outcome to an exit code.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
