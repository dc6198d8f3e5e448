//! Split matrices in the container (docs/FORMAT.md section 7, `ecq encode --split
//! [--row-pairs]`): encode -> decode gives back every tensor byte for byte, the matrices the
//! shape allows are split (in row-pair order where asked and possible), the others coded
//! whole; files declare container version 2; altered descriptors, low bits and versions are
//! refused with errors naming the tensor.

#[path = "model_common.rs"]
#[allow(unused)]
mod common;

use std::path::Path;

use common::*;
use ecq::container::{
    check_coded, decode_model, encode_model_with, load_matrix, load_weight, split_descriptor_crc,
    verify_model, window_split_of, CodedModel, CodedWeight, ContainerError, MatrixCoding,
    WindowRecoder, CONTAINER_VERSION, SPLIT_CONTAINER_VERSION, SPLIT_SUFFIXES,
};
use ecq::model::quantize::{quantize_to_dir, QuantizeOptions};
use ecq::model::write::{write_model, write_safetensors, WriteOptions};
use ecq::model::{Model, TensorData};
use ecq::rans::{EncodeOptions, SplitOrder};
use indicatif::ProgressBar;

/// 4-bit modules of every kind the split meets: row pairs possible (even rows, K = 1024), odd
/// rows (row order), K = 128 (row order), a rank-3 expert stack (64 rows of K = 512: row
/// pairs), a 3-bit and an 8-bit module (coded whole).
fn split_fixture(dir: &Path, max_shard_bytes: u64) -> Model {
    let mut t = Vec::new();
    t.extend(quantized("m.pairs", 64, 1024, 4, 64, 1, 1));
    t.extend(quantized("m.odd", 33, 512, 4, 64, 1, 2));
    t.extend(quantized("m.narrow", 16, 128, 4, 32, 1, 3));
    t.extend(quantized("m.experts", 64, 512, 4, 128, 2, 4));
    t.extend(quantized("m.three", 32, 512, 3, 64, 1, 5));
    t.extend(quantized("m.eight", 16, 256, 8, 64, 1, 6));
    t.push((
        "m.norm.weight".into(),
        float_tensor(ecq::dtype::FloatDType::F16, vec![64], &weights(64, 7)),
    ));
    let cfg = serde_json::json!({
        "model_type": "split-test",
        "quantization": {
            "group_size": 64, "bits": 4,
            "m.narrow": {"group_size": 32, "bits": 4},
            "m.experts": {"group_size": 128, "bits": 4},
            "m.three": {"group_size": 64, "bits": 3},
            "m.eight": {"group_size": 64, "bits": 8}
        }
    });
    let opts = WriteOptions {
        max_shard_bytes,
        ..WriteOptions::default()
    };
    write_model(dir, &t, Some(&cfg), &opts).unwrap();
    Model::open(dir).unwrap()
}

fn quiet() -> ProgressBar {
    ProgressBar::hidden()
}

/// (module, expected order; None = coded whole) with and without row pairs.
fn expected(row_pairs: bool) -> Vec<(&'static str, Option<SplitOrder>)> {
    let pairs = if row_pairs {
        SplitOrder::RowPairs
    } else {
        SplitOrder::Rows
    };
    vec![
        ("m.pairs", Some(pairs)),
        ("m.odd", Some(SplitOrder::Rows)),
        ("m.narrow", Some(SplitOrder::Rows)),
        ("m.experts", Some(pairs)),
        ("m.three", None),
        ("m.eight", None),
    ]
}

/// Writes the sharded [`split_fixture`], codes it as `coding` asks, checks what every split
/// coding writes (container version 2 in every shard and in `config.json`, `ecq.split`
/// starting with `split_meta`), runs `check` on the source model, the coded one and the
/// summary, then verifies the coded model and decodes it back byte for byte, without `ecq.`
/// metadata.
fn split_round_trip(
    coding: MatrixCoding,
    split_meta: &str,
    check: impl FnOnce(&Model, &Model, &ecq::container::Summary),
) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, coded, back) = (
        tmp.path().join("src"),
        tmp.path().join("coded"),
        tmp.path().join("back"),
    );
    let model = split_fixture(&src, 60_000);
    assert!(model.shards.len() >= 2, "fixture should be sharded");
    let s = encode_model_with(&model, &coded, &EncodeOptions::default(), coding, &quiet()).unwrap();
    assert_eq!(s.matrices.len(), 6);
    let c = Model::open(&coded).unwrap();
    for sh in &c.shards {
        assert_eq!(
            sh.metadata["ecq.version"],
            SPLIT_CONTAINER_VERSION.to_string()
        );
        assert!(sh.metadata["ecq.split"].starts_with(split_meta));
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(coded.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["ecq"]["version"], SPLIT_CONTAINER_VERSION);
    check(&model, &c, &s);
    verify_model(&c, &quiet()).unwrap();
    decode_model(&c, &back, &quiet()).unwrap();
    let b = Model::open(&back).unwrap();
    assert_same_tensors(&model, &b);
    for sh in &b.shards {
        assert!(!sh.metadata.keys().any(|k| k.starts_with("ecq.")));
    }
}

#[test]
fn split_round_trips_are_byte_identical() {
    for row_pairs in [false, true] {
        let coding = MatrixCoding::Split4 { row_pairs };
        split_round_trip(coding, "4=2+2", |model, c, s| {
            assert_eq!(s.matrices.iter().filter(|m| m.low_bits == 2).count(), 4);
            let cm = CodedModel::open(&c.path).unwrap();
            for (path, order) in expected(row_pairs) {
                let m = model.quantized_module(path).unwrap();
                let module = cm.module(path).unwrap();
                let w = &module.matrix;
                assert_eq!(
                    w.split().map(|s| s.order()),
                    order,
                    "{path} (row pairs {row_pairs})"
                );
                assert_eq!((w.rows(), w.cols(), w.bits()), (m.rows, m.cols, m.bits));
                let shape: Vec<usize> = w.shape().iter().map(|&d| d as usize).collect();
                assert_eq!(shape, m.weight.shape(), "{path}");
                assert_eq!(w.group_size() as usize, m.group_size, "{path}");
                assert_eq!(w.decode_packed().unwrap(), m.weight.to_u32().unwrap());
                if let Some(split) = w.split() {
                    // chunks hold as many weights as whole 4-bit chunks: half the symbols
                    assert_eq!(split.high().weights_per_symbol(), 4);
                    assert!(c.get(&format!("{path}.weight.ecq_low")).is_some());
                    assert!(c.get(&format!("{path}.weight")).is_none());
                }
            }
        });
    }
}

#[test]
fn whole_coding_still_writes_version_1() {
    let tmp = tempfile::tempdir().unwrap();
    let model = split_fixture(&tmp.path().join("src"), 1 << 30);
    let out = tmp.path().join("coded");
    let s = encode_model_with(
        &model,
        &out,
        &EncodeOptions::default(),
        MatrixCoding::Whole,
        &quiet(),
    )
    .unwrap();
    assert!(s.matrices.iter().all(|m| m.low_bits == 0));
    let c = Model::open(&out).unwrap();
    assert_eq!(
        c.shards[0].metadata["ecq.version"],
        CONTAINER_VERSION.to_string()
    );
    assert!(!c.shards[0].metadata.contains_key("ecq.split"));
    assert!(c.tensors.iter().all(|t| !t.name.ends_with(".ecq_split")));
    // a model with no 4-bit matrix stays version 1 even when asked to split
    let three = tmp.path().join("three");
    write_model(
        &three,
        &quantized("m.three", 32, 512, 3, 64, 1, 5),
        Some(&serde_json::json!({"quantization": {"group_size": 64, "bits": 3}})),
        &WriteOptions::default(),
    )
    .unwrap();
    let out3 = tmp.path().join("three-coded");
    encode_model_with(
        &Model::open(&three).unwrap(),
        &out3,
        &EncodeOptions::default(),
        MatrixCoding::Split4 { row_pairs: true },
        &quiet(),
    )
    .unwrap();
    assert_eq!(
        Model::open(&out3).unwrap().shards[0].metadata["ecq.version"],
        "1"
    );
}

/// A single coded file with split matrices, and a copy of it with `edit` applied to its
/// tensors and metadata.
fn altered(
    tmp: &Path,
    edit: impl FnOnce(&mut Vec<(String, TensorData)>, &mut std::collections::BTreeMap<String, String>),
) -> Model {
    altered_with(tmp, MatrixCoding::Split4 { row_pairs: true }, edit)
}

/// [`altered`] with the matrices coded as `coding` asks.
fn altered_with(
    tmp: &Path,
    coding: MatrixCoding,
    edit: impl FnOnce(&mut Vec<(String, TensorData)>, &mut std::collections::BTreeMap<String, String>),
) -> Model {
    let model = split_fixture(&tmp.join("src"), 1 << 30);
    let single = Model::open(tmp.join("src/model.safetensors")).unwrap();
    assert_eq!(single.tensors.len(), model.tensors.len());
    let coded = tmp.join("coded.safetensors");
    encode_model_with(&single, &coded, &EncodeOptions::default(), coding, &quiet()).unwrap();
    let c = Model::open(&coded).unwrap();
    let mut tensors: Vec<(String, TensorData)> = c
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.data.clone()))
        .collect();
    let mut meta = c.shards[0].metadata.clone();
    edit(&mut tensors, &mut meta);
    let out = tmp.join("altered.safetensors");
    write_safetensors(&out, &tensors, &meta).unwrap();
    Model::open(&out).unwrap()
}

fn set_u32(tensors: &mut [(String, TensorData)], name: &str, f: impl FnOnce(&mut Vec<u32>)) {
    let t = tensors.iter_mut().find(|(n, _)| n == name).unwrap();
    let mut v = t.1.to_u32().unwrap();
    f(&mut v);
    t.1 = TensorData::from_u32(vec![v.len()], &v);
}

/// Edits the split descriptor of `m.pairs` and stores a checksum that matches the edit, so
/// that the field checks behind the checksum are reached.
fn set_descriptor(tensors: &mut [(String, TensorData)], f: impl FnOnce(&mut Vec<u32>)) {
    set_u32(tensors, "m.pairs.weight.ecq_split", |v| {
        f(v);
        if v.len() > 6 {
            v[6] = split_descriptor_crc(v);
        }
    })
}

#[test]
fn altered_split_files_are_refused_with_the_tensor_named() {
    let tmp = tempfile::tempdir().unwrap();
    // (the edit, what the error must say)
    type Edit = Box<
        dyn FnOnce(&mut Vec<(String, TensorData)>, &mut std::collections::BTreeMap<String, String>),
    >;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "a flipped low bit",
            Box::new(|t, _| set_u32(t, "m.pairs.weight.ecq_low", |v| v[7] ^= 4)),
            "low bits",
        ),
        (
            "a bad magic",
            Box::new(|t, _| set_u32(t, "m.pairs.weight.ecq_split", |v| v[0] ^= 1)),
            "not a split descriptor",
        ),
        (
            "a changed order (the descriptor's checksum)",
            Box::new(|t, _| set_u32(t, "m.pairs.weight.ecq_split", |v| v[4] ^= 1)),
            "descriptor checksum mismatch",
        ),
        (
            "a changed order and shape that fit each other (the descriptor's checksum)",
            Box::new(|t, _| {
                set_u32(t, "m.pairs.weight.ecq_split", |v| {
                    // row order over the coded 32 x 2048 part: a 32-row, 2048-weight matrix
                    v[4] = 0;
                    v[8] = 32;
                    v[9] = 256;
                })
            }),
            "descriptor checksum mismatch",
        ),
        (
            "an unknown order",
            Box::new(|t, _| set_descriptor(t, |v| v[4] = 7)),
            "order 7",
        ),
        (
            "a descriptor version",
            Box::new(|t, _| set_descriptor(t, |v| v[1] = 9)),
            "descriptor version 9",
        ),
        (
            "bits that disagree with the coded part",
            Box::new(|t, _| set_descriptor(t, |v| v[3] = 3)),
            "raw low bits",
        ),
        (
            "a truncated descriptor",
            Box::new(|t, _| set_descriptor(t, |v| v.truncate(9))),
            "ndim",
        ),
        (
            "a shape that does not hold the matrix",
            Box::new(|t, _| set_descriptor(t, |v| v[8] = 65)),
            "packed shape",
        ),
        (
            "truncated low bits",
            Box::new(|t, _| set_u32(t, "m.pairs.weight.ecq_low", |v| v.truncate(v.len() - 1))),
            "low bits",
        ),
        (
            "missing low bits",
            Box::new(|t, _| t.retain(|(n, _)| n != "m.pairs.weight.ecq_low")),
            "missing",
        ),
        (
            "version 1 declared",
            Box::new(|_, m| {
                m.insert("ecq.version".into(), "1".into());
            }),
            "need version 2",
        ),
        (
            "version 3 declared",
            Box::new(|_, m| {
                m.insert("ecq.version".into(), "3".into());
            }),
            "this ecq reads \"1 or 2\"",
        ),
    ];
    for (i, (what, edit, says)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let m = altered(&dir, edit);
        let err = match check_coded(&m) {
            Err(e) => e,
            Ok(_) => verify_model(&m, &quiet()).unwrap_err(),
        };
        let msg = err.to_string();
        assert!(msg.contains(says), "{what}: {msg}");
        // the tensor (or, for the version, the file) is named
        assert!(
            msg.contains("m.pairs") || msg.contains("m.experts") || msg.contains("altered"),
            "{what}: {msg}"
        );
        // never silently decoded
        assert!(
            decode_model(&m, &dir.join("back.safetensors"), &quiet()).is_err(),
            "{what}"
        );
    }
}

#[test]
fn load_matrix_refuses_a_split_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let m = altered(tmp.path(), |_, _| {});
    let err = load_matrix(&m, "m.pairs.weight").unwrap_err();
    assert!(
        matches!(err, ContainerError::Inconsistent { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("load_weight"), "{err}");
    assert!(matches!(
        load_weight(&m, "m.pairs.weight").unwrap(),
        CodedWeight::Split { .. }
    ));
    assert!(matches!(
        load_weight(&m, "m.three.weight").unwrap(),
        CodedWeight::Whole(_)
    ));
    assert!(m
        .tensors
        .iter()
        .any(|t| t.name == format!("m.pairs.weight{}", SPLIT_SUFFIXES[0])));
}

/// MiniLM-L6 quantized by ecq like `mlx_lm.convert` (4-bit g64): split in row pairs, the model
/// decodes back byte for byte, and the split costs what the codec's tests measured (+1.4%).
#[test]
fn real_model_split_round_trip_is_byte_identical() {
    let src = real_model_dir();
    let tmp = tempfile::tempdir().unwrap();
    let (q, whole, split, back) = (
        tmp.path().join("q"),
        tmp.path().join("w"),
        tmp.path().join("s"),
        tmp.path().join("d"),
    );
    quantize_to_dir(
        &Model::open(&src).unwrap(),
        &q,
        &QuantizeOptions::default(),
        &WriteOptions::default(),
        &quiet(),
    )
    .unwrap();
    let quant = Model::open(&q).unwrap();
    let opts = EncodeOptions::default();
    let w = encode_model_with(&quant, &whole, &opts, MatrixCoding::Whole, &quiet()).unwrap();
    let s = encode_model_with(
        &quant,
        &split,
        &opts,
        MatrixCoding::Split4 { row_pairs: true },
        &quiet(),
    )
    .unwrap();
    let ratio = s.coded_bits_per_weight() / w.coded_bits_per_weight();
    eprintln!(
        "MiniLM g64: whole {:.3}, split (row pairs) {:.3} bits/weight ({:+.2}%)",
        w.coded_bits_per_weight(),
        s.coded_bits_per_weight(),
        (ratio - 1.0) * 100.0
    );
    assert!((1.0..1.03).contains(&ratio), "{ratio}");
    assert_eq!(s.matrices.iter().filter(|m| m.low_bits == 2).count(), 40);
    let c = Model::open(&split).unwrap();
    verify_model(&c, &quiet()).unwrap();
    decode_model(&c, &back, &quiet()).unwrap();
    assert_same_tensors(&quant, &Model::open(&back).unwrap());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Any one word of a split descriptor or of the raw low bits changed: loading or
        /// decoding fails with an error, never a panic and never other weights.
        #[test]
        fn one_changed_word_is_an_error(
            in_low in any::<bool>(),
            at in 0usize..10_000,
            flip in 1u32..,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let name = if in_low { "m.pairs.weight.ecq_low" } else { "m.pairs.weight.ecq_split" };
            let m = altered(tmp.path(), |t, _| {
                set_u32(t, name, |v| {
                    let i = at % v.len();
                    v[i] ^= flip;
                })
            });
            let res = load_weight(&m, "m.pairs.weight")
                .and_then(|w| ecq::container::decode_weight("m.pairs.weight", &w));
            prop_assert!(res.is_err(), "{name} word {at} ^ {flip:#x} decoded");
        }
    }
}

/// Window splits (`ecq encode --window [--row-pairs]`, descriptor version 2): the 4-bit matrices
/// whose coded rows are whole 1024-weight blocks (row pairs of K a multiple of 512, rows of K
/// a multiple of 1024) are stored as window splits, the rest whole, and the model decodes back
/// byte for byte.
#[test]
fn window_round_trips_are_byte_identical() {
    for row_pairs in [false, true] {
        let coding = MatrixCoding::Window4 { row_pairs };
        split_round_trip(coding, "4=window1+3", |model, c, s| {
            let want = if row_pairs { 2 } else { 1 };
            assert_eq!(s.matrices.iter().filter(|m| m.low_bits == 3).count(), want);
            assert!(s
                .matrices
                .iter()
                .all(|m| (m.low_bits == 3) == m.window.is_some()));
            let cm = CodedModel::open(&c.path).unwrap();
            for (path, order) in expected(row_pairs) {
                let m = model.quantized_module(path).unwrap();
                let w = &cm.module(path).unwrap().matrix;
                // (split where coded rows are whole 1024-weight blocks: row pairs of K = 512
                // or 1024, rows of K = 1024)
                let order = match (path, row_pairs) {
                    ("m.pairs", _) | ("m.experts", true) => order,
                    _ => None,
                };
                assert_eq!(w.split().map(|s| s.order()), order, "{path} ({row_pairs})");
                if let Some(split) = w.split() {
                    assert!(split.window().is_some(), "{path}");
                    assert_eq!(split.high().weights_per_symbol(), 8);
                }
                assert_eq!(w.decode_packed().unwrap(), m.weight.to_u32().unwrap());
            }
        });
    }
}

/// `window_split_of` re-codes a weight stored whole or split 2 + 2 into exactly the window
/// split `ecq encode --window [--row-pairs]` stores (same tables, states, words and raw bits),
/// and leaves the weights that form codes whole, and window splits, alone (`None`); one
/// `WindowRecoder` re-coding every weight in turn (buffers grown by the larger ones, reused by
/// the smaller ones) gives the same.
#[test]
fn window_split_of_is_what_ecq_encode_window_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let model = split_fixture(&tmp.path().join("src"), 1 << 30);
    let encoded = |name: &str, coding: MatrixCoding| {
        let out = tmp.path().join(name);
        let opts = EncodeOptions {
            min_chunks: coding.default_min_chunks(),
            ..Default::default()
        };
        encode_model_with(&model, &out, &opts, coding, &quiet()).unwrap();
        CodedModel::open(&out).unwrap()
    };
    let whole = encoded("whole", MatrixCoding::Whole);
    let split = encoded("split", MatrixCoding::Split4 { row_pairs: true });
    let mut recoder = WindowRecoder::new();
    for row_pairs in [false, true] {
        let window = encoded(
            &format!("window{row_pairs}"),
            MatrixCoding::Window4 { row_pairs },
        );
        for (path, _) in expected(row_pairs) {
            let weight = format!("{path}.weight");
            let want = window.module(path).unwrap().matrix;
            let want = want.split();
            for from in [&whole, &split] {
                let w = from.module(path).unwrap().matrix;
                let got = window_split_of(&weight, &w, row_pairs).unwrap();
                assert_eq!(got.as_ref(), want, "{path} ({row_pairs})");
                let reused = recoder.window_split_of(&weight, &w, row_pairs).unwrap();
                assert_eq!(reused, got, "{path} ({row_pairs}), kept buffers");
                if let Some(s) = &got {
                    assert_eq!(s.decode_symbols().unwrap(), w.decode_symbols().unwrap());
                }
            }
            let w = window.module(path).unwrap().matrix;
            assert_eq!(window_split_of(&weight, &w, row_pairs).unwrap(), None);
        }
    }
    // a stored weight that does not decode is an error naming it
    let mut w = whole.module("m.pairs").unwrap().matrix;
    let CodedWeight::Whole(enc) = &mut w else {
        panic!("m.pairs is coded whole")
    };
    let (header, freqs, states, offsets, mut words, crc) = enc.clone().into_parts();
    words[3] ^= 0x40;
    *enc =
        ecq::rans::EncodedMatrix::from_parts(&header, freqs, states, offsets, words, crc).unwrap();
    let err = window_split_of("m.pairs.weight", &w, true).unwrap_err();
    assert!(
        matches!(
            &err,
            ContainerError::Codec {
                source: ecq::rans::CodecError::ChecksumMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("m.pairs.weight"), "{err}");
}

#[test]
fn altered_window_files_are_refused_with_the_tensor_named() {
    let window = MatrixCoding::Window4 { row_pairs: true };
    // (the edit of m.pairs' descriptor, what the error must say)
    type Edit = Box<dyn FnOnce(&mut Vec<u32>)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("form 0", Box::new(|d| d[8] = 0), "form 0"),
        ("form 17", Box::new(|d| d[8] = 17), "form 17"),
        (
            "version 1 (no form word)",
            Box::new(|d| d[1] = 1),
            "the descriptor's ndim",
        ),
        ("version 3", Box::new(|d| d[1] = 3), "descriptor version 3"),
    ];
    for (what, edit, says) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let m = altered_with(tmp.path(), window, |t, _| set_descriptor(t, edit));
        let e = load_weight(&m, "m.pairs.weight").unwrap_err().to_string();
        assert!(e.contains(says), "{what}: {e}");
        assert!(e.contains("m.pairs.weight"), "{what}: {e}");
    }
}

/// The descriptor's checksum covers the window start: a changed start, which would decode to
/// other weights without any other error, is refused.
#[test]
fn a_changed_window_start_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let m = altered_with(
        tmp.path(),
        MatrixCoding::Window4 { row_pairs: true },
        |t, _| set_u32(t, "m.pairs.weight.ecq_split", |d| d[8] ^= 2),
    );
    let e = load_weight(&m, "m.pairs.weight").unwrap_err().to_string();
    assert!(e.contains("descriptor checksum mismatch"), "{e}");
}
