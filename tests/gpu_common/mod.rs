//! What every GPU test binary shares: the adapter, and a skip that cannot go unseen.
#![allow(dead_code)] // each test binary uses its own subset

use std::fmt::Display;
use std::io::Write;
use std::sync::OnceLock;

use ecq::dtype::FloatDType;
use ecq::gpu::GpuContext;
use ecq::quant::{quantize_affine, AffineParams, QuantizedMatrix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Says on the process's stderr that a GPU test was skipped. It writes to the stderr handle
/// directly: the test harness captures `eprintln!` of passing tests, which would make a skip
/// look like a silent pass.
pub fn announce_skip(reason: &dyn Display) {
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: no GPU adapter ({reason}) ***\n"
    );
}

/// The one GPU context of this test binary, or `None` (announced) where no adapter exists.
pub fn ctx() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new() {
        Ok(c) => {
            eprintln!("GPU adapter: {}", c.describe());
            Some(c)
        }
        Err(e) => {
            announce_skip(&e);
            None
        }
    })
    .as_ref()
}

/// Says on stderr, where it cannot be captured, that part of a GPU test could not run on this
/// adapter (and what was checked instead).
pub fn announce_unsupported(what: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** PARTLY SKIPPED: {what} ***\n");
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Gaussian weights (sigma 0.02) drawn from `rng`, quantized by MLX's affine `bits`-bit
/// scheme in groups of `gs`.
pub fn quantized_gaussian(
    rng: &mut ChaCha8Rng,
    rows: usize,
    cols: usize,
    bits: u32,
    gs: u32,
) -> QuantizedMatrix {
    let w: Vec<f32> = (0..rows * cols).map(|_| gaussian(rng) * 0.02).collect();
    quantize_affine(
        &w,
        rows,
        cols,
        FloatDType::F32,
        AffineParams::new(bits, gs).unwrap(),
    )
    .expect("quantize")
}

/// [`quantized_gaussian`] weights and one activation vector of `cols` standard normal
/// values, from `seed` (the weights drawn first, so the matrix of a seed does not depend on
/// the vector).
pub fn random_matrix(
    seed: u64,
    rows: usize,
    cols: usize,
    bits: u32,
    gs: u32,
) -> (QuantizedMatrix, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let q = quantized_gaussian(&mut rng, rows, cols, bits, gs);
    let x: Vec<f32> = (0..cols).map(|_| gaussian(&mut rng)).collect();
    (q, x)
}
