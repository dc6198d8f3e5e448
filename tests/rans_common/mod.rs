//! Shared by the rANS tests and `benches/rans.rs`: the real model's weights quantized MLX-style.
#![allow(dead_code)]

use std::path::PathBuf;

use ecq::dtype::FloatDType;
use ecq::quant::{quantize_affine, AffineParams};

/// One quantized matrix: name, rows, cols, one value per weight.
pub struct QMatrix {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub q: Vec<u8>,
}

/// Path of the real model (`$ECQ_CACHE` or `.cache`), whether or not it exists.
pub fn model_path() -> PathBuf {
    let cache = std::env::var_os("ECQ_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"));
    cache.join("all-MiniLM-L6-v2").join("model.safetensors")
}

/// One float matrix of the real model: name, rows, cols, row-major weights.
pub struct FMatrix {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<f32>,
}

/// Every 2-D float `*.weight` tensor of the real model whose columns divide by `group` (Linear
/// and Embedding weights, what `mlx_lm.convert -q` quantizes), sorted by name. `None` if the
/// model file is missing.
pub fn real_model_weights(group: u32) -> Option<Vec<FMatrix>> {
    let bytes = std::fs::read(model_path()).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("model.safetensors parses");
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let t = st.tensor(&name).unwrap();
        let shape = t.shape();
        if !name.ends_with(".weight")
            || shape.len() != 2
            || t.dtype() != safetensors::Dtype::F32
            || shape[1] % group as usize != 0
        {
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]);
        let w: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.push(FMatrix {
            name,
            rows,
            cols,
            w,
        });
    }
    Some(out)
}

/// The matrices of [`real_model_weights`] quantized with MLX affine `bits`/`group`. `None` if
/// the model file is missing.
pub fn real_model(bits: u32, group: u32) -> Option<Vec<QMatrix>> {
    let params = AffineParams::new(bits, group).expect("params");
    let out = real_model_weights(group)?
        .into_iter()
        .map(|f| {
            let m =
                quantize_affine(&f.w, f.rows, f.cols, FloatDType::F32, params).expect("quantize");
            QMatrix {
                name: f.name,
                rows: f.rows,
                cols: f.cols,
                q: m.symbols(),
            }
        })
        .collect();
    Some(out)
}

/// The real model's matrices, or panics naming the fetch script.
pub fn real_model_or_panic(bits: u32, group: u32) -> Vec<QMatrix> {
    real_model(bits, group).unwrap_or_else(|| model_missing())
}

/// Panics naming the missing model file and the script that fetches it.
pub fn model_missing() -> ! {
    panic!(
        "real model missing at {}: run scripts/fetch-model.sh (or set ECQ_CACHE)",
        model_path().display()
    )
}

/// Gaussian weights (seeded) quantized MLX-style: the fallback when the model is missing.
pub fn gaussian(rows: usize, cols: usize, bits: u32, group: u32, seed: u64) -> QMatrix {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| {
            // Box-Muller
            let u1: f64 = rng.random::<f64>().max(1e-300);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * 0.05) as f32
        })
        .collect();
    let m = quantize_affine(
        &w,
        rows,
        cols,
        FloatDType::F32,
        AffineParams::new(bits, group).unwrap(),
    )
    .unwrap();
    QMatrix {
        name: format!("gaussian {rows}x{cols}"),
        rows,
        cols,
        q: m.symbols(),
    }
}
