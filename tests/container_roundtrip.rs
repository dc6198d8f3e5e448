//! Encode -> decode gives back every tensor byte for byte: synthetic sharded model with a
//! per-layer override, a 3-bit module, a rank-3 expert stack and unquantized tensors; a single
//! file; the real MiniLM model.

#[path = "model_common.rs"]
#[allow(unused)]
mod common;

use common::*;
use ecq::container::{
    decode_model, encode_model, verify_model, CodedModel, CONTAINER_VERSION, FORMAT_NAME,
};
use ecq::model::quantize::{quantize_to_dir, QuantizeOptions};
use ecq::model::write::WriteOptions;
use ecq::model::Model;
use ecq::rans::EncodeOptions;
use indicatif::ProgressBar;

fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn sharded_dir_round_trip_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, coded, back) = (
        tmp.path().join("src"),
        tmp.path().join("coded"),
        tmp.path().join("back"),
    );
    let model = synthetic_dir(&src, 20_000);
    assert!(
        model.shards.len() >= 3,
        "fixture should be sharded, got {}",
        model.shards.len()
    );

    let s = encode_model(
        &model,
        &coded,
        &EncodeOptions::default(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(s.matrices.len(), SYNTHETIC_MODULES);
    // (Matrices this small are not smaller once coded: headers and tables dominate.)
    assert!(s.bytes_out > 0 && s.bytes_in == model.file_bytes());

    let c = Model::open(&coded).unwrap();
    // Same shard names, ecq metadata, config entry, pass-through file.
    let names = |m: &Model| {
        m.shards
            .iter()
            .map(|s| s.file_name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&c), names(&model));
    for sh in &c.shards {
        assert_eq!(
            sh.metadata.get("ecq.format").map(String::as_str),
            Some(FORMAT_NAME)
        );
        assert_eq!(
            sh.metadata.get("ecq.version"),
            Some(&CONTAINER_VERSION.to_string())
        );
        assert_eq!(sh.metadata.get("ecq.lanes").map(String::as_str), Some("32"));
        assert_eq!(sh.metadata.get("format").map(String::as_str), Some("mlx"));
        for k in [
            "ecq.precision",
            "ecq.chunk_symbols",
            "ecq.tile_chunks",
            "ecq.min_chunks",
        ] {
            assert!(sh.metadata.contains_key(k), "{k} missing");
        }
    }
    let cfg = read_json(&coded.join("config.json"));
    assert_eq!(
        cfg["ecq"],
        serde_json::json!({"format": "ecq-rans", "version": 1})
    );
    assert_eq!(cfg["quantization"], synthetic_config()["quantization"]);
    assert!(coded.join("tokenizer.json").is_file());
    for m in model.quantized_modules().unwrap() {
        let w = format!("{}.weight", m.path);
        assert!(c.get(&w).is_none(), "{w} still stored");
        let h = c.get(&format!("{w}.ecq_header")).unwrap().to_u32().unwrap();
        assert_eq!(h[12] as usize, m.group_size, "{w}: group size in header");
        assert_eq!(h[13] as usize, m.weight.shape().len(), "{w}: ndim");
        let shape: Vec<usize> = h[14..].iter().map(|&d| d as usize).collect();
        assert_eq!(shape, m.weight.shape(), "{w}: packed shape");
        assert!(c.get(&format!("{}.scales", m.path)).unwrap().bytes() == m.scales.bytes());
    }
    let index = read_json(&coded.join("model.safetensors.index.json"));
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        c.tensors.len()
    );

    verify_model(&c, &ProgressBar::hidden()).unwrap();
    decode_model(&c, &back, &ProgressBar::hidden()).unwrap();
    let b = Model::open(&back).unwrap();
    assert_same_tensors(&model, &b);
    assert_eq!(names(&b), names(&model));
    for sh in &b.shards {
        assert_eq!(sh.metadata.len(), 1, "{:?}", sh.metadata);
        assert_eq!(sh.metadata["format"], "mlx");
    }
    let cfg = read_json(&back.join("config.json"));
    assert!(cfg.get("ecq").is_none());
    assert_eq!(cfg, synthetic_config());
    assert_eq!(
        std::fs::read(back.join("tokenizer.json")).unwrap(),
        std::fs::read(src.join("tokenizer.json")).unwrap()
    );
}

#[test]
fn coded_model_hands_out_matrices_by_module_path() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synthetic_dir(&tmp.path().join("src"), 1 << 30);
    encode_model(
        &model,
        &tmp.path().join("coded"),
        &EncodeOptions::default(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    let coded = CodedModel::open(tmp.path().join("coded")).unwrap();
    assert_eq!(coded.module_paths().len(), SYNTHETIC_MODULES);
    for m in model.quantized_modules().unwrap() {
        let cm = coded.module(&m.path).unwrap();
        assert_eq!(
            (cm.matrix.rows(), cm.matrix.cols(), cm.matrix.bits()),
            (m.rows, m.cols, m.bits)
        );
        assert_eq!(
            cm.matrix.decode_packed().unwrap(),
            m.weight.to_u32().unwrap(),
            "{}",
            m.path
        );
        assert!(cm.scales.unwrap().bytes() == m.scales.bytes());
        assert!(cm.biases.is_some());
    }
    let q = coded.module("model.layers.0.self_attn.q_proj").unwrap();
    assert!(q.bias.is_some());
    assert_eq!(
        coded
            .module("model.layers.1.experts")
            .unwrap()
            .matrix
            .shape(),
        &[4, 32, 16]
    );
    assert!(coded.tensor("model.norm.weight").is_some());
    assert!(coded.module("no.such.module").is_err());
}

#[test]
fn single_file_round_trip_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synthetic_dir(&tmp.path().join("src"), 1 << 30);
    let file = tmp.path().join("src/model.safetensors");
    let single = Model::open(&file).unwrap();
    assert!(!single.is_dir);
    let coded = tmp.path().join("coded.safetensors");
    let back = tmp.path().join("back.safetensors");
    encode_model(
        &single,
        &coded,
        &EncodeOptions::default(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    let c = Model::open(&coded).unwrap();
    verify_model(&c, &ProgressBar::hidden()).unwrap();
    decode_model(&c, &back, &ProgressBar::hidden()).unwrap();
    assert_same_tensors(&model, &Model::open(&back).unwrap());
}

#[test]
fn encode_options_are_recorded_and_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synthetic_dir(&tmp.path().join("src"), 1 << 30);
    let opts = EncodeOptions {
        precision: 9,
        chunk_symbols: 512,
        tile_chunks: 2,
        ..EncodeOptions::default()
    };
    encode_model(
        &model,
        &tmp.path().join("coded"),
        &opts,
        &ProgressBar::hidden(),
    )
    .unwrap();
    let c = Model::open(tmp.path().join("coded")).unwrap();
    assert_eq!(c.shards[0].metadata["ecq.precision"], "9");
    assert_eq!(c.shards[0].metadata["ecq.tile_chunks"], "2");
    let h = c
        .get("model.embed_tokens.weight.ecq_header")
        .unwrap()
        .to_u32()
        .unwrap();
    assert_eq!((h[6], h[9]), (9, 2));
    decode_model(&c, &tmp.path().join("back"), &ProgressBar::hidden()).unwrap();
    assert_same_tensors(&model, &Model::open(tmp.path().join("back")).unwrap());
}

#[test]
fn encoding_twice_or_decoding_plain_models_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synthetic_dir(&tmp.path().join("src"), 1 << 30);
    let err = decode_model(&model, &tmp.path().join("x"), &ProgressBar::hidden()).unwrap_err();
    assert!(
        err.to_string().contains("not an entropy-coded model"),
        "{err}"
    );
    encode_model(
        &model,
        &tmp.path().join("coded"),
        &EncodeOptions::default(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    let c = Model::open(tmp.path().join("coded")).unwrap();
    let err = encode_model(
        &c,
        &tmp.path().join("again"),
        &EncodeOptions::default(),
        &ProgressBar::hidden(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("already entropy-coded"), "{err}");
}

#[test]
fn real_model_round_trip_is_byte_identical() {
    let src = real_model_dir();
    let tmp = tempfile::tempdir().unwrap();
    let (q, coded, back) = (
        tmp.path().join("q"),
        tmp.path().join("c"),
        tmp.path().join("d"),
    );
    let float = Model::open(&src).unwrap();
    let n = quantize_to_dir(
        &float,
        &q,
        &QuantizeOptions::default(),
        &WriteOptions::default(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(
        n, 40,
        "MiniLM has 40 quantizable matrices (36 linear + 3 embeddings + pooler)"
    );
    let quant = Model::open(&q).unwrap();
    let s = encode_model(
        &quant,
        &coded,
        &EncodeOptions::default(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    // Measured 3.737 coded bits/weight, per-tile bound 3.700 (entropy per tensor 3.70).
    assert!(
        (3.6..3.8).contains(&s.coded_bits_per_weight()),
        "{}",
        s.coded_bits_per_weight()
    );
    assert!(s.coded_bits_per_weight() - s.entropy_bits_per_weight() < 0.1);
    let c = Model::open(&coded).unwrap();
    verify_model(&c, &ProgressBar::hidden()).unwrap();
    decode_model(&c, &back, &ProgressBar::hidden()).unwrap();
    assert_same_tensors(&quant, &Model::open(&back).unwrap());
}

mod props {
    use ecq::container::{decode_matrix, encode_module, load_matrix, matrix_tensors};
    use ecq::model::write::{write_model, WriteOptions};
    use ecq::model::Model;
    use ecq::rans::EncodeOptions;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Every MLX bit width and group size, odd row counts, tiny chunks and tiles: the stored
        /// tensors load back and decode to the packed weight exactly.
        #[test]
        fn stored_parts_round_trip(
            bits in prop::sample::select(vec![2u32, 3, 4, 5, 6, 8]),
            group in prop::sample::select(vec![32u32, 64, 128]),
            rows in 1usize..40,
            groups in 1usize..4,
            chunk_symbols in prop::sample::select(vec![16usize, 100, 16384]),
            tile_chunks in 1usize..4,
            seed in 0u64..1000,
        ) {
            let cols = group as usize * groups;
            let t = super::common::quantized("m.l", rows, cols, bits, group, 1, seed);
            let tmp = tempfile::tempdir().unwrap();
            let cfg = serde_json::json!({"quantization": {"group_size": group, "bits": bits}});
            write_model(tmp.path(), &t, Some(&cfg), &WriteOptions::default()).unwrap();
            let model = Model::open(tmp.path()).unwrap();
            let module = model.quantized_module("m.l").unwrap();
            let opts = EncodeOptions { chunk_symbols, tile_chunks, ..EncodeOptions::default() };
            let enc = encode_module(&module, &opts).unwrap();
            let parts = matrix_tensors("m.l.weight", &enc);
            let coded_dir = tmp.path().join("coded");
            write_model(&coded_dir, &parts, None, &WriteOptions::default()).unwrap();
            let coded = Model::open(&coded_dir).unwrap();
            let back = load_matrix(&coded, "m.l.weight").unwrap();
            let w = decode_matrix("m.l.weight", &back).unwrap();
            prop_assert_eq!(w.shape(), module.weight.shape());
            prop_assert!(w.bytes() == module.weight.bytes());
        }
    }
}
