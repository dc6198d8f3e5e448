//! Synthetic model fixtures shared by the model and container tests (included with `#[path]`;
//! as a test target of its own it only checks that the fixture builds).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ecq::dtype::FloatDType;
use ecq::model::quantize::matrix_tensors;
use ecq::model::write::{write_model, NamedTensor, WriteOptions};
use ecq::model::{Model, TensorData};
use ecq::quant::{quantize_affine, AffineParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Roughly Gaussian weights (sum of four uniforms) of scale 0.05 with a few outliers.
pub fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let g: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
            if i % 997 == 0 {
                g * 0.5
            } else {
                g * 0.05
            }
        })
        .collect()
}

/// A float tensor of `dtype` (values rounded to it).
pub fn float_tensor(dtype: FloatDType, shape: Vec<usize>, values: &[f32]) -> TensorData {
    TensorData::new(dtype.to_safetensors(), shape, dtype.encode_le(values))
}

/// `<path>.weight/.scales/.biases` of an MLX-quantized `rows x cols` matrix; with `experts`
/// > 1 the tensors get a leading expert dimension (`rows` split evenly).
pub fn quantized(
    path: &str,
    rows: usize,
    cols: usize,
    bits: u32,
    group: u32,
    experts: usize,
    seed: u64,
) -> Vec<NamedTensor> {
    let w = weights(rows * cols, seed);
    let m = quantize_affine(
        &w,
        rows,
        cols,
        FloatDType::F16,
        AffineParams::new(bits, group).unwrap(),
    )
    .unwrap();
    matrix_tensors(path, &m)
        .into_iter()
        .map(|(n, t)| {
            if experts > 1 {
                let mut shape = vec![experts, t.shape()[0] / experts];
                shape.push(t.shape()[1]);
                (n, TensorData::new(t.dtype(), shape, t.bytes().to_vec()))
            } else {
                (n, t)
            }
        })
        .collect()
}

/// The config of [`synthetic_tensors`]: 4-bit g64 by default, per-layer overrides for the gate
/// (8-bit g32) and the up projection (3-bit g64, mode omitted).
pub fn synthetic_config() -> serde_json::Value {
    serde_json::json!({
        "model_type": "synthetic",
        "hidden_size": 128,
        "quantization": {
            "group_size": 64, "bits": 4, "mode": "affine",
            "model.layers.0.mlp.gate": {"group_size": 32, "bits": 8, "mode": "affine"},
            "model.layers.0.mlp.up": {"group_size": 64, "bits": 3}
        }
    })
}

/// Quantized modules (4-bit embedding, 4-bit projection with a bias, an 8-bit g32 override, a
/// 3-bit override, a rank-3 expert stack) and unquantized tensors (norms in F16 and BF16, a
/// float 2-D weight whose rows the group size does not divide).
pub fn synthetic_tensors() -> Vec<NamedTensor> {
    let mut t = Vec::new();
    t.extend(quantized("model.embed_tokens", 256, 128, 4, 64, 1, 1));
    t.extend(quantized(
        "model.layers.0.self_attn.q_proj",
        128,
        128,
        4,
        64,
        1,
        2,
    ));
    t.push((
        "model.layers.0.self_attn.q_proj.bias".into(),
        float_tensor(FloatDType::F16, vec![128], &weights(128, 3)),
    ));
    t.extend(quantized("model.layers.0.mlp.gate", 64, 128, 8, 32, 1, 4));
    t.extend(quantized("model.layers.0.mlp.up", 192, 128, 3, 64, 1, 5));
    t.push((
        "model.layers.0.input_layernorm.weight".into(),
        float_tensor(FloatDType::F16, vec![128], &weights(128, 6)),
    ));
    t.extend(quantized("model.layers.1.experts", 128, 128, 4, 64, 4, 7));
    t.push((
        "model.layers.1.small.weight".into(),
        float_tensor(FloatDType::F32, vec![8, 40], &weights(320, 8)),
    ));
    t.push((
        "model.norm.weight".into(),
        float_tensor(FloatDType::BF16, vec![128], &weights(128, 9)),
    ));
    t
}

/// Number of quantized modules in [`synthetic_tensors`].
pub const SYNTHETIC_MODULES: usize = 5;

/// Writes the synthetic model as an mlx-lm directory with shards of at most `max_shard_bytes`
/// and a pass-through `tokenizer.json`.
pub fn synthetic_dir(dir: &Path, max_shard_bytes: u64) -> Model {
    let opts = WriteOptions {
        max_shard_bytes,
        ..WriteOptions::default()
    };
    write_model(dir, &synthetic_tensors(), Some(&synthetic_config()), &opts).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        br#"{"version": "1.0", "model": {}}"#,
    )
    .unwrap();
    Model::open(dir).unwrap()
}

/// The real model's directory, or a panic telling how to fetch it.
pub fn real_model_dir() -> PathBuf {
    let cache = std::env::var_os("ECQ_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"));
    let dir = cache.join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "real model missing at {}: run scripts/fetch-model.sh first",
        dir.display()
    );
    dir
}

/// Asserts that two models hold the same tensors, byte for byte.
#[track_caller]
pub fn assert_same_tensors(a: &Model, b: &Model) {
    assert_eq!(a.tensors.len(), b.tensors.len(), "tensor count");
    for t in &a.tensors {
        let u = b
            .get(&t.name)
            .unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!(t.data.dtype(), u.dtype(), "{} dtype", t.name);
        assert_eq!(t.data.shape(), u.shape(), "{} shape", t.name);
        assert!(t.data.bytes() == u.bytes(), "{} bytes differ", t.name);
    }
}

#[test]
fn synthetic_fixture_builds() {
    let dir = tempfile::tempdir().unwrap();
    let m = synthetic_dir(dir.path(), 1 << 30);
    assert_eq!(m.quantized_modules().unwrap().len(), SYNTHETIC_MODULES);
}
