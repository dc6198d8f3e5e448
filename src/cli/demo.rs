//! `ecq demo`: the whole pipeline on the cached MiniLM model.

use std::path::PathBuf;
use std::time::Instant;

use ecq::analysis::analyze;
use ecq::container::{decode_model, encode_model, verify_model};
use ecq::model::quantize::{quantize_to_dir, QuantizeOptions};
use ecq::model::write::WriteOptions;
use ecq::model::Model;
use ecq::rans::EncodeOptions;
use indicatif::ProgressBar;

use super::{human_bytes, CliResult};

/// Directory name of the default model inside the cache.
const MODEL_DIR: &str = "all-MiniLM-L6-v2";

/// Arguments of `ecq demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Working directory for the quantized, coded and decoded models (default: <cache>/demo).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The cache directory: `$ECQ_CACHE`, else `<repo>/.cache`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ECQ_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

/// Runs `ecq demo`.
pub fn run(a: Args) -> CliResult {
    let start = Instant::now();
    let cache = cache_dir();
    let src = cache.join(MODEL_DIR);
    if !src.join("model.safetensors").is_file() {
        return Err(format!(
            "{}: model not found; run scripts/fetch-model.sh (it reads $ECQ_CACHE, default <repo>/.cache)",
            src.join("model.safetensors").display()
        )
        .into());
    }
    let work = a.dir.unwrap_or_else(|| cache.join("demo"));
    let (qdir, cdir, ddir) = (
        work.join("mlx-4bit-g64"),
        work.join("ecq"),
        work.join("decoded"),
    );
    let hidden = ProgressBar::hidden();

    let float = Model::open(&src)?;
    let n = quantize_to_dir(
        &float,
        &qdir,
        &QuantizeOptions {
            bits: 4,
            group_size: 64,
        },
        &WriteOptions::default(),
        &hidden,
    )?;
    let quant = Model::open(&qdir)?;
    let report = analyze(&quant, &[], &hidden)?;
    let enc = encode_model(&quant, &cdir, &EncodeOptions::default(), &hidden)?;
    let coded = Model::open(&cdir)?;
    verify_model(&coded, &hidden)?;
    decode_model(&coded, &ddir, &hidden)?;
    let decoded = Model::open(&ddir)?;
    let mut identical = 0;
    for t in &quant.tensors {
        let d = decoded
            .get(&t.name)
            .ok_or_else(|| format!("{}: missing after decode", t.name))?;
        if d.dtype() != t.data.dtype() || d.shape() != t.data.shape() || d.bytes() != t.data.bytes()
        {
            return Err(format!(
                "{}: decoded tensor differs from the MLX-quantized one",
                t.name
            )
            .into());
        }
        identical += 1;
    }
    if decoded.tensors.len() != quant.tensors.len() {
        return Err("decoded model has extra tensors".into());
    }

    let entropy = report
        .totals
        .first()
        .map(|t| t.entropy_per_weight())
        .unwrap_or(0.0);
    outln!(
        "ecq demo: {} ({} weights in {} quantized matrices)",
        src.display(),
        enc.weights(),
        n
    );
    outln!(
        "MLX affine 4-bit, group size 64 (F32 scales and biases, as mlx-lm keeps the input dtype)"
    );
    outln!();
    outln!("{:<44} {:>12}", "quantized weights only", "bits/weight");
    outln!(
        "{:<44} {:>12.3}",
        "MLX 4-bit packed",
        enc.packed_bits_per_weight()
    );
    outln!(
        "{:<44} {:>12.3}",
        "empirical entropy (one histogram per tensor)",
        entropy
    );
    outln!(
        "{:<44} {:>12.3}",
        "per-tile entropy bound (what ecq models)",
        enc.entropy_bits_per_weight()
    );
    outln!(
        "{:<44} {:>12.3}",
        "ecq word stream",
        enc.payload_bits_per_weight()
    );
    outln!(
        "{:<44} {:>12.3}",
        "ecq coded, everything stored",
        enc.coded_bits_per_weight()
    );
    outln!(
        "{:<44} {:>12.3}",
        "  overhead (header, tables, states, crc)",
        enc.coded_bits_per_weight() - enc.payload_bits_per_weight()
    );
    outln!(
        "{:<44} {:>12.3}",
        "scales + biases (unchanged)",
        enc.side_bits_per_weight()
    );
    outln!();
    outln!(
        "files: float {} -> MLX 4-bit {} -> ecq {} ({:.1}% of MLX)",
        human_bytes(float.file_bytes()),
        human_bytes(enc.bytes_in),
        human_bytes(enc.bytes_out),
        100.0 * enc.bytes_out as f64 / enc.bytes_in.max(1) as f64
    );
    outln!("verify: every checksum matches; decode: all {identical} tensors byte-identical to the MLX model");
    outln!(
        "outputs in {} ({:.1} s)",
        work.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
