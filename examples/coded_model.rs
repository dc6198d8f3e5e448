//! Library tour: quantize a float safetensors model, entropy-code it, and load the coded
//! matrices by module path the way the GPU path does.
//!
//! `cargo run --release --example coded_model -- [MODEL] [WORKDIR]`
//! (default: the cached MiniLM model from `scripts/fetch-model.sh`, a temporary directory).

use std::path::PathBuf;

use ecq::container::{encode_model, CodedModel};
use ecq::model::quantize::{quantize_to_dir, QuantizeOptions};
use ecq::model::write::WriteOptions;
use ecq::model::Model;
use ecq::rans::EncodeOptions;
use indicatif::ProgressBar;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let src = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/all-MiniLM-L6-v2")
    });
    let work = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ecq-example"));
    let (qdir, cdir) = (work.join("mlx"), work.join("ecq"));
    let quiet = ProgressBar::hidden();

    let float = Model::open(&src).map_err(|e| format!("{e} (run scripts/fetch-model.sh)"))?;
    quantize_to_dir(
        &float,
        &qdir,
        &QuantizeOptions {
            bits: 4,
            group_size: 64,
        },
        &WriteOptions::default(),
        &quiet,
    )?;
    let summary = encode_model(
        &Model::open(&qdir)?,
        &cdir,
        &EncodeOptions::default(),
        &quiet,
    )?;
    println!(
        "{} matrices: {:.3} coded bits/weight (entropy bound {:.3})",
        summary.matrices.len(),
        summary.coded_bits_per_weight(),
        summary.entropy_bits_per_weight()
    );

    let coded = CodedModel::open(&cdir)?;
    for path in coded.module_paths().iter().take(3) {
        let m = coded.module(path)?;
        let packed = m.matrix.decode_packed()?;
        println!(
            "{path}: {} x {} at {} bits, {} coded words -> {} packed u32, scales {:?}",
            m.matrix.rows(),
            m.matrix.cols(),
            m.matrix.bits(),
            m.matrix.coded().words().len(),
            packed.len(),
            m.scales.as_ref().map(|s| s.shape().to_vec())
        );
    }
    Ok(())
}
