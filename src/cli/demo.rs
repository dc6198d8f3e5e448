//! `ecq demo`.

use super::CliResult;

/// Arguments of `ecq demo`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `ecq demo`.
pub fn run(_a: Args) -> CliResult {
    Err("demo: not yet implemented".into())
}
