//! Reading and writing safetensors files and mlx-lm model directories; `quantize_model`.

#[path = "model_common.rs"]
#[allow(unused)]
mod common;

use common::*;
use ecq::dtype::FloatDType;
use ecq::model::quantize::{quantize_model, quantize_to_dir, QuantizeOptions};
use ecq::model::write::{plan_shards, shard_file_name, write_model, WriteOptions};
use ecq::model::{Dtype, LayerOverride, Model, ModelError, QuantConfig, TensorData};
use indicatif::ProgressBar;
use serde_json::json;

/// Largest relative RMS error of 4-bit g64 quantization on the fixture weights.
const REL_RMS_4BIT: f64 = 0.15;

#[test]
fn directory_with_index_lists_every_tensor_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let m = synthetic_dir(tmp.path(), 20_000);
    let names: Vec<_> = synthetic_tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(m.tensors.len(), names.len());
    for n in &names {
        assert!(m.get(n).is_some(), "{n}");
    }
    assert!(m.shards.len() > 1);
    for (i, s) in m.shards.iter().enumerate() {
        assert_eq!(s.file_name, shard_file_name(i, m.shards.len()));
        assert_eq!(s.metadata["format"], "mlx");
    }
    assert_eq!(
        m.extra_files,
        vec![std::path::PathBuf::from("tokenizer.json")]
    );
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let total: u64 = m.tensors.iter().map(|t| t.data.bytes().len() as u64).sum();
    assert_eq!(index["metadata"]["total_size"], json!(total));
    // Each shard stays within the limit unless a single tensor exceeds it.
    for s in 0..m.shards.len() {
        let ts: Vec<_> = m.tensors.iter().filter(|t| t.shard == s).collect();
        let bytes: usize = ts.iter().map(|t| t.data.bytes().len()).sum();
        assert!(
            bytes <= 20_000 || ts.len() == 1,
            "shard {s}: {bytes} bytes in {} tensors",
            ts.len()
        );
    }
    // No temporary files left behind.
    for e in std::fs::read_dir(tmp.path()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with('.'), "leftover {n}");
    }
}

#[test]
fn directory_without_index_and_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    synthetic_dir(tmp.path(), 1 << 30);
    std::fs::remove_file(tmp.path().join("model.safetensors.index.json")).unwrap();
    let d = Model::open(tmp.path()).unwrap();
    assert_eq!(d.shards.len(), 1);
    let f = Model::open(tmp.path().join("model.safetensors")).unwrap();
    assert!(!f.is_dir && f.extra_files.is_empty());
    assert_eq!(f.tensors.len(), d.tensors.len());
    // The single file picks up the config beside it.
    assert_eq!(f.quantized_modules().unwrap().len(), SYNTHETIC_MODULES);
}

#[test]
fn quantized_modules_follow_config_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let m = synthetic_dir(tmp.path(), 1 << 30);
    let mods = m.quantized_modules().unwrap();
    let get = |p: &str| {
        mods.iter()
            .find(|q| q.path == p)
            .unwrap_or_else(|| panic!("{p}"))
    };
    let gate = get("model.layers.0.mlp.gate");
    assert_eq!(
        (gate.bits, gate.group_size, gate.rows, gate.cols),
        (8, 32, 64, 128)
    );
    let up = get("model.layers.0.mlp.up");
    assert_eq!(
        (up.bits, up.group_size, up.rows, up.cols),
        (3, 64, 192, 128)
    );
    let ex = get("model.layers.1.experts");
    assert_eq!((ex.bits, ex.rows, ex.cols), (4, 128, 128));
    assert_eq!(ex.weight.shape(), &[4, 32, 16]);
    // Dequantized values are close to the weights they came from.
    let emb = get("model.embed_tokens").to_matrix().unwrap();
    let deq = emb.dequantize();
    let w = weights(256 * 128, 1);
    let (e, n) = w.iter().zip(&deq).fold((0.0, 0.0), |(e, n), (a, b)| {
        (e + ((a - b) as f64).powi(2), n + (*a as f64).powi(2))
    });
    assert!((e / n).sqrt() < REL_RMS_4BIT, "rel rms {}", (e / n).sqrt());
}

#[test]
fn config_parsing() {
    let c = QuantConfig::from_config(&json!({"quantization_config": {"group_size": 32, "bits": 8,
        "a.b": false, "c": {"group_size": 128, "bits": 2, "mode": "affine"}}}))
    .unwrap()
    .unwrap();
    assert_eq!(c.default.mode, "affine", "missing mode means affine");
    assert_eq!((c.default.group_size, c.default.bits), (32, 8));
    assert_eq!(c.overrides["a.b"], LayerOverride::Float);
    assert!(c.for_module("a.b").is_none());
    assert_eq!(c.for_module("c").unwrap().group_size, 128);
    assert_eq!(c.for_module("z").unwrap().bits, 8);
    assert!(QuantConfig::from_config(&json!({"model_type": "x"}))
        .unwrap()
        .is_none());
    assert!(QuantConfig::from_config(&json!({"quantization": {"bits": 4}})).is_err());
    let mut cfg = json!({"model_type": "x"});
    c.store_in(&mut cfg);
    assert_eq!(cfg["quantization"], cfg["quantization_config"]);
    assert_eq!(QuantConfig::from_config(&cfg).unwrap().unwrap(), c);
}

fn write_module(
    dir: &std::path::Path,
    scales_shape: Vec<usize>,
    quant: serde_json::Value,
) -> Model {
    let t = vec![
        (
            "l.weight".to_string(),
            TensorData::from_u32(vec![8, 16], &[7; 128]),
        ),
        (
            "l.scales".to_string(),
            TensorData::new(
                Dtype::F16,
                scales_shape.clone(),
                vec![0; scales_shape.iter().product::<usize>() * 2],
            ),
        ),
        (
            "l.biases".to_string(),
            TensorData::new(Dtype::F16, vec![8, 2], vec![0; 32]),
        ),
    ];
    write_model(
        dir,
        &t,
        Some(&json!({"quantization": quant})),
        &WriteOptions::default(),
    )
    .unwrap();
    Model::open(dir).unwrap()
}

#[test]
fn module_errors_name_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_module(
        &tmp.path().join("a"),
        vec![8, 3],
        json!({"group_size": 64, "bits": 4}),
    );
    let e = m.quantized_modules().unwrap_err();
    assert!(
        matches!(&e, ModelError::ShapeMismatch { tensor, expected, actual }
        if tensor == "l.scales" && expected == &vec![8, 2] && actual == &vec![8, 3]),
        "{e}"
    );
    assert_eq!(e.to_string(), "l.scales: shape [8, 3], expected [8, 2]");

    let m = write_module(
        &tmp.path().join("b"),
        vec![8, 2],
        json!({"group_size": 64, "bits": 7}),
    );
    assert_eq!(
        m.quantized_modules().unwrap_err().to_string(),
        "l.weight: unsupported bits 7 (supported: 2, 3, 4, 5, 6, 8)"
    );

    let m = write_module(
        &tmp.path().join("c"),
        vec![8, 2],
        json!({"group_size": 256, "bits": 4}),
    );
    assert!(matches!(
        m.quantized_modules().unwrap_err(),
        ModelError::UnsupportedGroupSize {
            group_size: 256,
            ..
        }
    ));

    let m = write_module(
        &tmp.path().join("d"),
        vec![8, 2],
        json!({"group_size": 64, "bits": 4, "mode": "mxfp4"}),
    );
    assert!(matches!(
        m.quantized_modules().unwrap_err(),
        ModelError::UnsupportedMode { .. }
    ));

    // 2 bits: 16 words hold 256 weights, 2 groups would need group size 128: not 64.
    let m = write_module(
        &tmp.path().join("e"),
        vec![8, 2],
        json!({"group_size": 64, "bits": 2}),
    );
    assert_eq!(
        m.quantized_modules().unwrap_err().to_string(),
        "l.scales: shape [8, 2], expected [8, 4]"
    );

    // Without a config, bits and group size are inferred (4-bit g64 here).
    let dir = tmp.path().join("f");
    write_module(&dir, vec![8, 2], json!(null));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let q = Model::open(&dir).unwrap().quantized_modules().unwrap();
    assert_eq!((q[0].bits, q[0].group_size, q[0].cols), (4, 64, 128));
}

#[test]
fn file_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Model::open(tmp.path().join("missing")).unwrap_err();
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
    let p = tmp.path().join("x.safetensors");
    std::fs::write(&p, [1u8, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
    assert!(matches!(
        Model::open(&p).unwrap_err(),
        ModelError::NotSafetensors { .. }
    ));
    std::fs::write(tmp.path().join("config.json"), "{not json").unwrap();
    assert!(matches!(
        Model::open(tmp.path()).unwrap_err(),
        ModelError::BadJson { .. }
    ));
}

#[test]
fn shard_planning() {
    let t = |n: usize| {
        (
            "t".to_string(),
            TensorData::new(Dtype::U8, vec![n], vec![0; n]),
        )
    };
    let ts = vec![t(10), t(10), t(25), t(5), t(5)];
    assert_eq!(plan_shards(&ts, 20), vec![vec![0, 1], vec![2], vec![3, 4]]);
    assert_eq!(plan_shards(&ts, 1000), vec![vec![0, 1, 2, 3, 4]]);
    assert_eq!(plan_shards(&[], 10), vec![Vec::<usize>::new()]);
    assert_eq!(shard_file_name(0, 1), "model.safetensors");
    assert_eq!(shard_file_name(1, 3), "model-00002-of-00003.safetensors");
}

#[test]
fn quantize_follows_mlx_lm_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("float");
    let t = vec![
        (
            "emb.weight".to_string(),
            float_tensor(FloatDType::BF16, vec![64, 128], &weights(64 * 128, 1)),
        ),
        (
            "l.weight".to_string(),
            float_tensor(FloatDType::F16, vec![32, 64], &weights(32 * 64, 2)),
        ),
        (
            "l.bias".to_string(),
            float_tensor(FloatDType::F16, vec![32], &weights(32, 3)),
        ),
        (
            "odd.weight".to_string(),
            float_tensor(FloatDType::F32, vec![8, 40], &weights(320, 4)),
        ),
        (
            "conv.weight".to_string(),
            float_tensor(FloatDType::F32, vec![4, 4, 64], &weights(1024, 5)),
        ),
        (
            "ids".to_string(),
            TensorData::new(Dtype::I64, vec![4], vec![0; 32]),
        ),
    ];
    write_model(
        &src,
        &t,
        Some(&json!({"model_type": "x"})),
        &WriteOptions::default(),
    )
    .unwrap();
    std::fs::write(src.join("tokenizer.json"), "{}").unwrap();
    let model = Model::open(&src).unwrap();
    let (out, cfg) = quantize_model(
        &model,
        &QuantizeOptions {
            bits: 4,
            group_size: 64,
        },
        &ProgressBar::hidden(),
    )
    .unwrap();
    // Input (file) order, each quantized weight followed by its scales and biases.
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "conv.weight",
            "emb.biases",
            "emb.scales",
            "emb.weight",
            "ids",
            "l.bias",
            "l.biases",
            "l.scales",
            "l.weight",
            "odd.weight"
        ]
    );
    let at = |n: &str| names.iter().position(|m| *m == n).unwrap();
    assert_eq!(
        (at("emb.scales"), at("emb.biases")),
        (at("emb.weight") + 1, at("emb.weight") + 2)
    );
    assert_eq!(
        cfg["quantization"],
        json!({"group_size": 64, "bits": 4, "mode": "affine"})
    );
    assert_eq!(cfg["quantization_config"], cfg["quantization"]);
    assert_eq!(cfg["model_type"], "x");
    let get = |n: &str| &out.iter().find(|(m, _)| m == n).unwrap().1;
    assert_eq!(get("emb.weight").shape(), &[64, 16]);
    assert_eq!(
        get("emb.scales").dtype(),
        Dtype::BF16,
        "scales keep the input dtype"
    );
    assert_eq!(get("l.scales").dtype(), Dtype::F16);
    assert!(get("odd.weight").bytes() == t[3].1.bytes());

    let dst = tmp.path().join("q");
    quantize_to_dir(
        &model,
        &dst,
        &QuantizeOptions::default(),
        &WriteOptions::default(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    let q = Model::open(&dst).unwrap();
    assert_eq!(q.quantized_modules().unwrap().len(), 2);
    assert_eq!(q.shards[0].metadata["format"], "mlx");
    assert!(dst.join("tokenizer.json").is_file());
    // Quantizing a quantized model is refused.
    let e = quantize_model(&q, &QuantizeOptions::default(), &ProgressBar::hidden()).unwrap_err();
    assert!(e.to_string().contains("already quantized"), "{e}");
}

#[test]
fn real_model_quantizes_every_matrix() {
    let model = Model::open(real_model_dir()).unwrap();
    let (out, _) =
        quantize_model(&model, &QuantizeOptions::default(), &ProgressBar::hidden()).unwrap();
    let n = out.iter().filter(|(n, _)| n.ends_with(".scales")).count();
    assert_eq!(n, 40);
}

#[test]
fn real_model_entropy_matches_reference_measurements() {
    use ecq::analysis::{analyze, Scheme};
    let model = Model::open(real_model_dir()).unwrap();
    let schemes = [
        Scheme::Affine {
            bits: 4,
            group_size: 64,
        },
        Scheme::Affine {
            bits: 3,
            group_size: 64,
        },
        Scheme::AbsmaxTensor { bits: 4 },
    ];
    let r = analyze(&model, &schemes, &ProgressBar::hidden()).unwrap();
    let h: Vec<f64> = r.totals.iter().map(|t| t.entropy_per_weight()).collect();
    // Reference (numpy + real MLX 0.32.4): 3.70, 2.68, 1.07 bits/weight.
    assert!((h[0] - 3.70).abs() < 0.02, "{h:?}");
    assert!((h[1] - 2.68).abs() < 0.03, "{h:?}");
    assert!((h[2] - 1.07).abs() < 0.02, "{h:?}");
    assert_eq!(
        r.totals[0].side_per_weight(),
        1.0,
        "f32 scale + bias per 64 weights"
    );
    assert!(r.totals[2].rel_rms().unwrap() > 5.0 * r.totals[0].rel_rms().unwrap());
}
