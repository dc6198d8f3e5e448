//! The `ecq` command-line tool: quantize, inspect, entropy-code, decode and verify MLX models.
//!
//! Errors go to stderr as one line `error: <tensor or file>: <problem>` with exit code 1.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace(['\n', '\r'], " ");
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr().lock(), "error: {msg}");
            ExitCode::FAILURE
        }
    }
}
