//! `ecq encode`, `ecq decode`, `ecq verify`.

use std::path::PathBuf;

use ecq::container::{decode_model, encode_model, verify_model, Summary};
use ecq::model::Model;
use ecq::rans::EncodeOptions;

use super::{bar, human_bytes, CliResult};

/// Arguments of `ecq encode`.
#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    /// MLX-quantized model directory or safetensors file.
    input: PathBuf,
    /// Output (a directory for a directory input, else a file).
    output: PathBuf,
    /// Probability precision in bits (8..=15; GPU kernels need <= 11).
    #[arg(long, default_value_t = ecq::rans::DEFAULT_PRECISION)]
    precision: u32,
    /// Target coded symbols per chunk (the unit of parallel decoding).
    #[arg(long, default_value_t = ecq::rans::DEFAULT_CHUNK_SYMBOLS)]
    chunk_symbols: usize,
    /// Chunks per tile (one frequency table and checksum per tile).
    #[arg(long, default_value_t = ecq::rans::DEFAULT_TILE_CHUNKS)]
    tile_chunks: usize,
}

/// Arguments of `ecq decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Entropy-coded model directory or file.
    input: PathBuf,
    /// Output (a directory for a directory input, else a file).
    output: PathBuf,
}

/// Arguments of `ecq verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Entropy-coded model directory or file.
    path: PathBuf,
}

/// Prints the size summary of an encode/decode/verify run.
pub fn print_summary(s: &Summary) {
    outln!(
        "{} matrices, {} weights: packed {:.3} bits/weight -> coded {:.3} (word stream {:.3}, per-tile entropy bound {:.3}); scales+biases {:.3} bits/weight",
        s.matrices.len(),
        s.weights(),
        s.packed_bits_per_weight(),
        s.coded_bits_per_weight(),
        s.payload_bits_per_weight(),
        s.entropy_bits_per_weight(),
        s.side_bits_per_weight(),
    );
}

/// Runs `ecq encode`.
pub fn encode(a: EncodeArgs) -> CliResult {
    let model = Model::open(&a.input)?;
    let opts = EncodeOptions {
        precision: a.precision,
        chunk_symbols: a.chunk_symbols,
        tile_chunks: a.tile_chunks,
        ..EncodeOptions::default()
    };
    let pb = bar(0, "encode");
    let s = encode_model(&model, &a.output, &opts, &pb)?;
    pb.finish_and_clear();
    outln!(
        "encoded {} -> {}: {} -> {} ({:.1}% of the input)",
        a.input.display(),
        a.output.display(),
        human_bytes(s.bytes_in),
        human_bytes(s.bytes_out),
        100.0 * s.bytes_out as f64 / s.bytes_in.max(1) as f64
    );
    print_summary(&s);
    Ok(())
}

/// Runs `ecq decode`.
pub fn decode(a: DecodeArgs) -> CliResult {
    let model = Model::open(&a.input)?;
    let pb = bar(0, "decode");
    let s = decode_model(&model, &a.output, &pb)?;
    pb.finish_and_clear();
    outln!(
        "decoded {} matrices: {} -> {} at {}",
        s.matrices.len(),
        human_bytes(s.bytes_in),
        human_bytes(s.bytes_out),
        a.output.display()
    );
    Ok(())
}

/// Runs `ecq verify`.
pub fn verify(a: VerifyArgs) -> CliResult {
    let model = Model::open(&a.path)?;
    let pb = bar(0, "verify");
    let s = verify_model(&model, &pb)?;
    pb.finish_and_clear();
    outln!(
        "ok: {} matrices decoded in full, every checksum matches",
        s.matrices.len()
    );
    print_summary(&s);
    Ok(())
}
