//! `ecq encode --lossless` -> `ecq verify` -> `ecq decode` gives back a bf16/f16 model byte for
//! byte; f32 matrices come back as their bf16 conversion; `ecq inspect` reports bits/weight.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use ecq::lossless::f32_to_bf16;
use ecq::model::write::write_safetensors;
use ecq::model::{Dtype, Model, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ecq(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ecq"))
        .args(args)
        .output()
        .expect("run ecq");
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "ecq {args:?} failed:\n{s}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s
}

fn half_tensor(rng: &mut ChaCha8Rng, dtype: Dtype, rows: usize, cols: usize) -> TensorData {
    let mut bits: Vec<u16> = (0..rows * cols)
        .map(|_| {
            let x = (rng.random::<f32>() - 0.5) * 0.06;
            match dtype {
                Dtype::BF16 => half::bf16::from_f32(x).to_bits(),
                _ => half::f16::from_f32(x).to_bits(),
            }
        })
        .collect();
    // Specials: NaN with payload, infinities, -0, subnormal.
    for (i, s) in [0x7FC1u16, 0xFF80, 0x8000, 0x0001, 0x7C00]
        .iter()
        .enumerate()
    {
        bits[i * 3] = *s;
    }
    let shape = if rows == 1 {
        vec![cols]
    } else {
        vec![rows, cols]
    };
    TensorData::new(
        dtype,
        shape,
        bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
    )
}

fn write_model(path: &Path) -> Vec<(String, TensorData)> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let tensors = vec![
        (
            "embed.weight".to_string(),
            half_tensor(&mut rng, Dtype::BF16, 50, 64),
        ),
        (
            "layer.0.q.weight".to_string(),
            half_tensor(&mut rng, Dtype::BF16, 96, 128),
        ),
        (
            "layer.0.k.weight".to_string(),
            half_tensor(&mut rng, Dtype::F16, 33, 96),
        ),
        // K not a multiple of 32: kept raw.
        (
            "layer.0.odd.weight".to_string(),
            half_tensor(&mut rng, Dtype::BF16, 8, 40),
        ),
        // 1-D: kept raw.
        (
            "layer.0.norm.weight".to_string(),
            half_tensor(&mut rng, Dtype::BF16, 1, 128),
        ),
        (
            "layer.0.q.bias".to_string(),
            half_tensor(&mut rng, Dtype::BF16, 1, 96),
        ),
    ];
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(path, &tensors, &meta).unwrap();
    tensors
}

#[test]
fn bf16_model_round_trip_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, coded, back) = (
        tmp.path().join("m.safetensors"),
        tmp.path().join("c.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    let tensors = write_model(&src);
    let out = ecq(&[
        "encode",
        "--lossless",
        src.to_str().unwrap(),
        coded.to_str().unwrap(),
    ]);
    assert!(out.contains("3 matrices"), "{out}");
    let m = Model::open(&coded).unwrap();
    assert!(m.get("layer.0.q.weight").is_none());
    assert!(m.get("layer.0.q.weight.ecq16_raw").is_some());
    assert!(m.get("layer.0.odd.weight").is_some());
    let out = ecq(&["verify", coded.to_str().unwrap()]);
    assert!(out.starts_with("ok: 3 lossless"), "{out}");
    let out = ecq(&["inspect", coded.to_str().unwrap()]);
    assert!(out.contains("bits/weight"), "{out}");
    assert!(out.contains("indexed bf16 form"), "{out}");
    ecq(&["decode", coded.to_str().unwrap(), back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    let b = Model::open(&back).unwrap();
    for (n, t) in &tensors {
        assert_eq!(b.get(n).unwrap().bytes(), t.bytes(), "{n}");
    }
    // Coding twice is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_ecq"))
        .args([
            "encode",
            "--lossless",
            coded.to_str().unwrap(),
            back.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn f32_model_decodes_to_its_bf16_conversion() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, coded, back) = (
        tmp.path().join("m.safetensors"),
        tmp.path().join("c.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x: Vec<f32> = (0..16 * 64)
        .map(|_| (rng.random::<f32>() - 0.5) * 0.1)
        .collect();
    let t = TensorData::new(
        Dtype::F32,
        vec![16, 64],
        x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    write_safetensors(&src, &[("w.weight".into(), t)], &BTreeMap::new()).unwrap();
    let out = ecq(&["inspect", src.to_str().unwrap()]);
    assert!(out.contains("lossless 16-bit"), "{out}");
    assert!(out.contains("indexed bf16 form"), "{out}");
    let out = ecq(&[
        "encode",
        "--lossless",
        src.to_str().unwrap(),
        coded.to_str().unwrap(),
    ]);
    assert!(out.contains("f32 -> bf16"), "{out}");
    let out = ecq(&["decode", coded.to_str().unwrap(), back.to_str().unwrap()]);
    assert!(out.contains("bf16 conversion"), "{out}");
    let b = Model::open(&back).unwrap();
    let d = b.get("w.weight").unwrap();
    assert_eq!(d.dtype(), Dtype::BF16);
    let expected: Vec<u8> = x
        .iter()
        .flat_map(|&v| f32_to_bf16(v).to_le_bytes())
        .collect();
    assert_eq!(d.bytes(), expected.as_slice());
}

#[test]
fn corrupt_coded_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, coded, back) = (
        tmp.path().join("m.safetensors"),
        tmp.path().join("c.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    write_model(&src);
    ecq(&[
        "encode",
        "--lossless",
        src.to_str().unwrap(),
        coded.to_str().unwrap(),
    ]);
    // Flip a byte near the end of the file (raw bytes or words of the last tensors).
    let mut bytes = std::fs::read(&coded).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x40;
    std::fs::write(&coded, &bytes).unwrap();
    for cmd in ["verify", "decode"] {
        let mut args = vec![cmd, coded.to_str().unwrap()];
        if cmd == "decode" {
            args.push(back.to_str().unwrap());
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ecq"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} accepted a corrupt file");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn sharded_directory_round_trip() {
    use ecq::model::write::{write_model, WriteOptions};
    let tmp = tempfile::tempdir().unwrap();
    let (src, coded, back) = (
        tmp.path().join("src"),
        tmp.path().join("coded"),
        tmp.path().join("back"),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut tensors: Vec<(String, TensorData)> = Vec::new();
    for i in 0..4 {
        tensors.push((
            format!("model.layers.{i}.mlp.weight"),
            half_tensor(&mut rng, Dtype::BF16, 64, 96),
        ));
    }
    tensors.push((
        "model.norm.weight".to_string(),
        half_tensor(&mut rng, Dtype::BF16, 1, 96),
    ));
    let config = serde_json::json!({"model_type": "test", "hidden_size": 96});
    let opts = WriteOptions {
        max_shard_bytes: 20_000,
        ..WriteOptions::default()
    };
    write_model(&src, &tensors, Some(&config), &opts).unwrap();
    let m = Model::open(&src).unwrap();
    assert!(m.shards.len() >= 3, "{} shards", m.shards.len());
    let out = ecq(&[
        "encode",
        "--lossless",
        src.to_str().unwrap(),
        coded.to_str().unwrap(),
    ]);
    assert!(out.contains("4 matrices"), "{out}");
    ecq(&["verify", coded.to_str().unwrap()]);
    ecq(&["decode", coded.to_str().unwrap(), back.to_str().unwrap()]);
    let b = Model::open(&back).unwrap();
    assert_eq!(b.shards.len(), m.shards.len());
    for t in &m.tensors {
        assert_eq!(
            b.get(&t.name).unwrap().bytes(),
            t.data.bytes(),
            "{}",
            t.name
        );
    }
    assert_eq!(b.tensors.len(), m.tensors.len());
    assert_eq!(b.config, m.config);
}

#[test]
fn minilm_codes_to_about_10_7_bits() {
    let dir = std::env::var_os("ECQ_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"))
        .join("all-MiniLM-L6-v2");
    let path = dir.join("model.safetensors");
    assert!(
        path.is_file(),
        "real model missing at {}: run scripts/fetch-model.sh first",
        path.display()
    );
    let model = Model::open(&path).unwrap();
    let e = ecq::lossless::container::estimate(&model);
    assert_eq!(e.matrices, 40);
    // Measured: 2.614 bits of exponent entropy (RESEARCH.md: 2.61).
    assert!(
        (e.exponent_entropy - 2.614).abs() < 0.01,
        "{}",
        e.exponent_entropy
    );
    assert!(e.conversion.max_rel_error <= 2f64.powi(-8));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("c.safetensors");
    let s = ecq::lossless::container::encode_model(
        &model,
        &out,
        &Default::default(),
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    assert!(
        s.bits_per_weight() > 10.6 && s.bits_per_weight() < 10.75,
        "{}",
        s.bits_per_weight()
    );
    let coded = Model::open(&out).unwrap();
    let v =
        ecq::lossless::container::verify_model(&coded, &indicatif::ProgressBar::hidden()).unwrap();
    assert_eq!(v.matrices.len(), 40);
    // One matrix decodes to the torch-style bf16 conversion of the f32 original.
    let name = "encoder.layer.0.attention.self.query.weight";
    let m = ecq::lossless::LosslessMatrix::from_tensors(name, |n| coded.get(n)).unwrap();
    let orig = model.get(name).unwrap().to_f32().unwrap();
    let expected: Vec<u16> = orig.iter().map(|&x| f32_to_bf16(x)).collect();
    assert_eq!(m.decode().unwrap(), expected);
}
