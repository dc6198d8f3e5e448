//! `ecq encode`, `ecq decode`, `ecq verify`.

use std::path::PathBuf;

use ecq::container::{decode_model, encode_model_with, verify_model, MatrixCoding, Summary};
use ecq::lossless::container as lossless;
use ecq::model::{Dtype, Model};
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
    /// Make chunks smaller (down to 8192 weights or one row) where a matrix would otherwise
    /// have fewer chunks than this: more parallel decoders on a big GPU for ~0.1 bits/weight
    /// on the matrices it shrinks. 0 = off. Default: 0, or 8192 with --split or --window.
    #[arg(long)]
    min_chunks: Option<usize>,
    /// Store 4-bit matrices split: their high 2 bits coded (four weights per rANS step), their
    /// low 2 bits raw, in chunks small enough for 8192 decoders per matrix (see --min-chunks).
    /// 2-5% larger on MLX weights; the GPU's fused GEMV runs it faster than whole symbols
    /// (--window --row-pairs is faster still). Other widths stay whole. Files with a split
    /// matrix are container version 2.
    #[arg(long, conflicts_with_all = ["lossless", "window"])]
    split: bool,
    /// Store 4-bit matrices as window splits: one coded bit per weight (whether it lies outside
    /// the eight levels holding most weights; eight weights per rANS step), three raw bits, in
    /// chunks for 8192 decoders. ~0.25% larger than --split; with --row-pairs the form the
    /// GPU's fused GEMV runs fastest (1.2-1.4x --split --row-pairs on an H200). Split are the
    /// matrices that kernel runs: K a multiple of 512 in row pairs (even rows), of 1024 in
    /// rows; the others, and other widths, stay whole. Container version 2.
    #[arg(long, conflicts_with = "lossless")]
    window: bool,
    /// With --split or --window: interleave each pair of rows (where rows are even, and for
    /// --split K a multiple of 512), so the fused GEMV loads the activations once for two rows.
    #[arg(long)]
    row_pairs: bool,
    /// Code the float weights losslessly as 16-bit values (bf16/f16 kept bit for bit, f32
    /// converted to bf16 first) instead of MLX-quantized weights.
    #[arg(long)]
    lossless: bool,
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
    if a.row_pairs && !a.split && !a.window {
        return Err("--row-pairs needs --split or --window".into());
    }
    let model = Model::open(&a.input)?;
    let coding = if a.split {
        MatrixCoding::Split4 {
            row_pairs: a.row_pairs,
        }
    } else if a.window {
        MatrixCoding::Window4 {
            row_pairs: a.row_pairs,
        }
    } else {
        MatrixCoding::Whole
    };
    let opts = EncodeOptions {
        precision: a.precision,
        chunk_symbols: a.chunk_symbols,
        tile_chunks: a.tile_chunks,
        min_chunks: a.min_chunks.unwrap_or(coding.default_min_chunks()),
        ..EncodeOptions::default()
    };
    if a.lossless {
        return encode_lossless(&model, &a, &opts);
    }
    let pb = bar(0, "encode");
    let s = encode_model_with(&model, &a.output, &opts, coding, &pb)?;
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
    if a.split || a.window {
        let split = s.matrices.iter().filter(|m| m.low_bits > 0).count();
        outln!(
            "{split} of {} matrices stored split ({}{})",
            s.matrices.len(),
            if a.window {
                "window splits: one coded bit, three raw bits"
            } else {
                "coded high 2 bits, raw low 2 bits"
            },
            if a.row_pairs {
                ", row pairs where the shape allows"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Runs `ecq decode`.
pub fn decode(a: DecodeArgs) -> CliResult {
    let model = Model::open(&a.input)?;
    if lossless::is_lossless(&model) {
        let pb = bar(0, "decode");
        let s = lossless::decode_model(&model, &a.output, &pb)?;
        pb.finish_and_clear();
        outln!(
            "decoded {} lossless 16-bit matrices: {} -> {} at {}",
            s.matrices.len(),
            human_bytes(s.bytes_in),
            human_bytes(s.bytes_out),
            a.output.display()
        );
        let f32n = s.matrices.iter().filter(|m| m.input == Dtype::F32).count();
        if f32n > 0 {
            outln!("note: {f32n} matrices were f32 and are restored as their bf16 conversion");
        }
        return Ok(());
    }
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
    if lossless::is_lossless(&model) {
        let pb = bar(0, "verify");
        let s = lossless::verify_model(&model, &pb)?;
        pb.finish_and_clear();
        outln!(
            "ok: {} lossless 16-bit matrices decoded in full, every checksum matches",
            s.matrices.len()
        );
        print_lossless_summary(&s);
        return Ok(());
    }
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

fn print_lossless_summary(s: &lossless::Summary) {
    outln!(
        "{} matrices, {} weights: coded {:.3} bits/weight (exponent entropy bound + 8 raw bits: {:.3}); {} float tensors kept uncoded",
        s.matrices.len(),
        s.weights(),
        s.bits_per_weight(),
        s.entropy_bits_per_weight(),
        s.kept_raw.len(),
    );
}

fn print_conversion(c: &ecq::lossless::ConversionReport) {
    if c.values > 0 {
        outln!(
            "f32 -> bf16 (round to nearest even, as torch): {} of {} weights changed, max relative error {:.3e}, {} overflowed to infinity",
            c.changed,
            c.values,
            c.max_rel_error,
            c.overflows
        );
    }
}

/// `ecq encode --lossless`.
fn encode_lossless(model: &Model, a: &EncodeArgs, opts: &EncodeOptions) -> CliResult {
    let pb = bar(0, "encode");
    let s = lossless::encode_model(model, &a.output, opts, &pb)?;
    pb.finish_and_clear();
    outln!(
        "encoded {} -> {} (lossless 16-bit): {} -> {} ({:.1}% of the input)",
        a.input.display(),
        a.output.display(),
        human_bytes(s.bytes_in),
        human_bytes(s.bytes_out),
        100.0 * s.bytes_out as f64 / s.bytes_in.max(1) as f64
    );
    print_lossless_summary(&s);
    print_conversion(&s.conversion);
    Ok(())
}

/// Prints the lossless 16-bit estimate of a float model (`ecq inspect`).
pub fn print_estimate(e: &lossless::Estimate) {
    outln!();
    outln!(
        "lossless 16-bit (ecq encode --lossless): {} matrices, {} weights: exponent entropy {:.3} + 8 raw bits = {:.3} bits/weight (side information not counted)",
        e.matrices,
        e.weights,
        e.exponent_entropy,
        e.bits_per_weight()
    );
    if e.indexed_weights > 0 {
        outln!(
            "indexed bf16 form (GPU, ecq::lossless::indexed): {:.3} bits/weight, {} escapes ({:.2e} of its {} weights)",
            8.0 * e.indexed_bytes as f64 / e.indexed_weights as f64,
            e.indexed_escapes,
            e.indexed_escapes as f64 / e.indexed_weights as f64,
            e.indexed_weights
        );
    }
    print_conversion(&e.conversion);
}

/// Bits per weight of the indexed GPU form over the matrices that have it, and their weights.
fn indexed_bits(s: &lossless::Summary) -> Option<(f64, u64)> {
    let (bytes, n) = s
        .matrices
        .iter()
        .filter_map(|m| m.indexed_bytes.map(|b| (b, m.weights)))
        .fold((0u64, 0u64), |(b, n), (mb, mn)| (b + mb, n + mn));
    (n > 0).then(|| (8.0 * bytes as f64 / n as f64, n))
}

/// `ecq inspect` of a model with lossless 16-bit weights: decodes and checks every matrix.
pub fn inspect_lossless(model: &Model, as_json: bool) -> CliResult {
    let pb = bar(0, "decode");
    let s = lossless::verify_model(model, &pb)?;
    pb.finish_and_clear();
    if as_json {
        let m: Vec<serde_json::Value> = s
            .matrices
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.weight, "weights": m.weights, "input": format!("{:?}", m.input),
                    "coded_bits_per_weight": 8.0 * m.coded_bytes as f64 / m.weights.max(1) as f64,
                    "entropy_bound_bits_per_weight": m.entropy_bits / m.weights.max(1) as f64,
                    "indexed_bits_per_weight": m.indexed_bytes.map(|b| 8.0 * b as f64 / m.weights.max(1) as f64),
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "lossless16": true,
                "weights": s.weights(),
                "coded_bits_per_weight": s.bits_per_weight(),
                "entropy_bound_bits_per_weight": s.entropy_bits_per_weight(),
                "indexed_bits_per_weight": indexed_bits(&s).map(|(b, _)| b),
                "matrices": m,
            }))?
        );
        return Ok(());
    }
    for m in &s.matrices {
        outln!(
            "{} {} weights ({:?}): coded {:.3} bits/weight, bound {:.3}",
            m.weight,
            m.weights,
            m.input,
            8.0 * m.coded_bytes as f64 / m.weights.max(1) as f64,
            m.entropy_bits / m.weights.max(1) as f64
        );
    }
    print_lossless_summary(&s);
    if let Some((b, n)) = indexed_bits(&s) {
        outln!(
            "indexed bf16 form for the GPU (ecq::lossless::indexed, built at load time): {b:.3} bits/weight over {n} weights"
        );
    }
    Ok(())
}
