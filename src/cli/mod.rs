//! Subcommands of the `ecq` tool, one module each.

/// `println!` that ignores write errors (a closed pipe, as in `ecq inspect | head`, must not
/// panic).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `print!` that ignores write errors.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

mod coding;
mod demo;
mod inspect;
mod quantize;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Any error a subcommand reports; its message is printed as `error: <message>`.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// ecq: lossless entropy coding of MLX-quantized LLM weights.
#[derive(Debug, Parser)]
#[command(name = "ecq", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Quantize a float safetensors model (file or directory) into an mlx-lm model directory.
    Quantize(quantize::Args),
    /// Show per-tensor and total entropy, side information and error of quantization schemes.
    Inspect(inspect::Args),
    /// Entropy-code every quantized weight of an mlx-lm model (directory or single file).
    Encode(coding::EncodeArgs),
    /// Decode an entropy-coded model back to the original MLX model, byte for byte.
    Decode(coding::DecodeArgs),
    /// Decode everything in an entropy-coded model and check every checksum.
    Verify(coding::VerifyArgs),
    /// Quantize, encode and verify the cached MiniLM model and print a size/entropy table.
    Demo(demo::Args),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Quantize(a) => quantize::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Encode(a) => coding::encode(a),
        Command::Decode(a) => coding::decode(a),
        Command::Verify(a) => coding::verify(a),
        Command::Demo(a) => demo::run(a),
    }
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

/// Human-readable byte count.
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}
