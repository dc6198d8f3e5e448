//! `ecq quantize IN OUT`.

use std::path::PathBuf;

use ecq::model::quantize::{quantize_to_dir, QuantizeOptions};
use ecq::model::write::WriteOptions;
use ecq::model::Model;

use super::{bar, human_bytes, CliResult};

/// Arguments of `ecq quantize`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Float (F32/F16/BF16) safetensors file or model directory.
    input: PathBuf,
    /// Output mlx-lm model directory.
    output: PathBuf,
    /// Bits per weight (2, 3, 4, 5, 6, 8).
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Weights per scale/bias group (32, 64, 128).
    #[arg(long, default_value_t = 64)]
    group_size: usize,
    /// Largest shard, in bytes.
    #[arg(long, default_value_t = ecq::model::write::DEFAULT_MAX_SHARD_BYTES)]
    max_shard_bytes: u64,
}

/// Runs `ecq quantize`.
pub fn run(a: Args) -> CliResult {
    let model = Model::open(&a.input)?;
    let pb = bar(model.tensors.len() as u64, "quantize");
    let opts = QuantizeOptions {
        bits: a.bits,
        group_size: a.group_size,
    };
    let write = WriteOptions {
        max_shard_bytes: a.max_shard_bytes,
        ..WriteOptions::default()
    };
    let n = quantize_to_dir(&model, &a.output, &opts, &write, &pb)?;
    pb.finish_and_clear();
    let out = Model::open(&a.output)?;
    outln!(
        "quantized {n} matrices to {}-bit g{}: {} -> {} in {} shard(s) at {}",
        a.bits,
        a.group_size,
        human_bytes(model.file_bytes()),
        human_bytes(out.file_bytes()),
        out.shards.len(),
        a.output.display()
    );
    Ok(())
}
