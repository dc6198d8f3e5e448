//! Every user error of the `ecq` binary is one stderr line `error: <tensor or file>: <problem>`
//! with exit code 1, never a panic. Fixtures are written with the safetensors crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn ecq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ecq"))
        .args(args)
        .output()
        .expect("run ecq")
}

/// Runs ecq, expects failure, returns the single stderr line.
#[track_caller]
fn fails(args: &[&str]) -> String {
    let out = ecq(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "ecq {args:?}: status {:?}, stderr {stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked"),
        "ecq {args:?} panicked: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "ecq {args:?}: expected one stderr line, got {stderr:?}"
    );
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    lines[0].to_string()
}

#[track_caller]
fn succeeds(args: &[&str]) -> String {
    let out = ecq(args);
    assert!(
        out.status.success(),
        "ecq {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A raw tensor for the safetensors writer.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn u32s(shape: &[usize], seed: u32) -> Raw {
    let n: usize = shape.iter().product();
    let data = (0..n as u32)
        .flat_map(|i| {
            (i.wrapping_mul(2_654_435_761) ^ seed)
                .wrapping_mul(0x9e37_79b9)
                .to_le_bytes()
        })
        .collect();
    Raw {
        dtype: Dtype::U32,
        shape: shape.to_vec(),
        data,
    }
}

fn f16s(shape: &[usize]) -> Raw {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .flat_map(|i| half::f16::from_f32(0.01 * (i % 7) as f32 + 0.01).to_le_bytes())
        .collect();
    Raw {
        dtype: Dtype::F16,
        shape: shape.to_vec(),
        data,
    }
}

fn f32s(shape: &[usize]) -> Raw {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .flat_map(|i| ((i as f32 * 0.37).sin() * 0.05).to_le_bytes())
        .collect();
    Raw {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data,
    }
}

fn write_st(path: &Path, tensors: Vec<(&str, Raw)>) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, r)| {
            (
                n.to_string(),
                TensorView::new(r.dtype, r.shape.clone(), &r.data).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "mlx".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

/// An mlx-lm directory with one quantized module `l` (packed `[rows, words]`, scales/biases
/// `[rows, groups]`) and the given quantization section.
fn quant_dir(
    dir: &Path,
    words: usize,
    groups: usize,
    scale_groups: usize,
    quant: serde_json::Value,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write_st(
        &dir.join("model.safetensors"),
        vec![
            ("l.weight", u32s(&[16, words], 1)),
            ("l.scales", f16s(&[16, scale_groups])),
            ("l.biases", f16s(&[16, groups])),
            ("norm.weight", f16s(&[64])),
        ],
    );
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"quantization": quant}).to_string(),
    )
    .unwrap();
    dir.to_path_buf()
}

fn good_dir(dir: &Path) -> PathBuf {
    // 4-bit g64: 128 weights per row = 16 words, 2 groups.
    quant_dir(
        dir,
        16,
        2,
        2,
        serde_json::json!({"group_size": 64, "bits": 4}),
    )
}

#[test]
fn missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("nope.safetensors");
    for cmd in ["inspect", "verify"] {
        let e = fails(&[cmd, s(&p)]);
        assert!(
            e.contains("nope.safetensors") && e.contains("No such file"),
            "{e}"
        );
    }
    let e = fails(&["encode", s(&p), s(&tmp.path().join("out"))]);
    assert!(e.contains("nope.safetensors"), "{e}");
}

#[test]
fn not_a_safetensors_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("junk.safetensors");
    std::fs::write(&p, b"this is not a safetensors file at all").unwrap();
    for args in [
        vec!["inspect", s(&p)],
        vec!["quantize", s(&p), "/nonexistent-out"],
        vec!["decode", s(&p), "/nonexistent-out"],
    ] {
        let e = fails(&args);
        assert!(
            e.contains("junk.safetensors: not a safetensors file"),
            "{e}"
        );
    }
    // A directory without any safetensors file.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = fails(&["inspect", s(&empty)]);
    assert!(e.contains("empty: no .safetensors file found"), "{e}");
}

#[test]
fn group_size_does_not_divide_the_rows() {
    let tmp = tempfile::tempdir().unwrap();
    // 4-bit, 4 words = 32 weights per row, config group size 64.
    let d = quant_dir(
        &tmp.path().join("m"),
        4,
        1,
        1,
        serde_json::json!({"group_size": 64, "bits": 4}),
    );
    for args in [
        vec!["encode", s(&d), s(&tmp.path().join("out"))],
        vec!["inspect", s(&d)],
    ] {
        let e = fails(&args);
        assert_eq!(
            e,
            "error: l.weight: 32 weights per row is not a multiple of 64 (group size)"
        );
    }
}

#[test]
fn unsupported_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let d = quant_dir(
        &tmp.path().join("m"),
        14,
        1,
        1,
        serde_json::json!({"group_size": 64, "bits": 7}),
    );
    let e = fails(&["encode", s(&d), s(&tmp.path().join("out"))]);
    assert_eq!(
        e,
        "error: l.weight: unsupported bits 7 (supported: 2, 3, 4, 5, 6, 8)"
    );
    // quantize --bits 7 on a float model.
    let f = tmp.path().join("float.safetensors");
    write_st(
        &f,
        vec![("a.norm", f32s(&[64])), ("a.weight", f32s(&[4, 64]))],
    );
    let e = fails(&["quantize", s(&f), s(&tmp.path().join("q")), "--bits", "7"]);
    assert!(e.starts_with("error: a.weight: unsupported bits 7"), "{e}");
    let e = fails(&[
        "quantize",
        s(&f),
        s(&tmp.path().join("q")),
        "--group-size",
        "48",
    ]);
    assert!(
        e.starts_with("error: a.weight: unsupported group size 48"),
        "{e}"
    );
}

#[test]
fn mismatched_scales_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let d = quant_dir(
        &tmp.path().join("m"),
        16,
        2,
        3,
        serde_json::json!({"group_size": 64, "bits": 4}),
    );
    for args in [
        vec!["encode", s(&d), s(&tmp.path().join("out"))],
        vec!["inspect", s(&d)],
    ] {
        let e = fails(&args);
        assert_eq!(e, "error: l.scales: shape [16, 3], expected [16, 2]");
    }
}

#[test]
fn missing_biases_and_wrong_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    std::fs::create_dir_all(&d).unwrap();
    write_st(
        &d.join("model.safetensors"),
        vec![
            ("l.weight", u32s(&[16, 16], 1)),
            ("l.scales", f16s(&[16, 2])),
        ],
    );
    std::fs::write(
        d.join("config.json"),
        r#"{"quantization": {"group_size": 64, "bits": 4}}"#,
    )
    .unwrap();
    let e = fails(&["encode", s(&d), s(&tmp.path().join("out"))]);
    assert_eq!(e, "error: l.biases: missing (needed by quantized module l)");
}

#[test]
fn corrupted_coded_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good_dir(&tmp.path().join("m"));
    let coded = tmp.path().join("coded");
    succeeds(&["encode", s(&d), s(&coded)]);
    succeeds(&["verify", s(&coded)]);
    let file = coded.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let words = meta.info("l.weight.ecq_words").unwrap().data_offsets;
    assert!(words.1 > words.0, "fixture must code to some words");

    // A flipped byte in the word stream: checksum mismatch, named by tensor.
    let mut flipped = bytes.clone();
    flipped[8 + n + (words.0 + words.1) / 2] ^= 0x20;
    std::fs::write(&file, &flipped).unwrap();
    let e = fails(&["verify", s(&coded)]);
    assert!(e.starts_with("error: l.weight: "), "{e}");
    let e2 = fails(&["decode", s(&coded), s(&tmp.path().join("back"))]);
    assert!(e2.starts_with("error: l.weight: "), "{e2}");

    // A flipped header field.
    let header = meta.info("l.weight.ecq_header").unwrap().data_offsets;
    let mut bad = bytes.clone();
    bad[8 + n + header.0 + 4 * 4] ^= 0x01; // bits 4 -> 5
    std::fs::write(&file, &bad).unwrap();
    let e = fails(&["verify", s(&coded)]);
    assert!(e.starts_with("error: l.weight"), "{e}");

    // A truncated file.
    std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
    let e = fails(&["verify", s(&coded)]);
    assert!(
        e.contains("model.safetensors: not a safetensors file"),
        "{e}"
    );
    let e = fails(&["decode", s(&coded), s(&tmp.path().join("back"))]);
    assert!(e.contains("not a safetensors file"), "{e}");

    // The intact file still verifies.
    std::fs::write(&file, &bytes).unwrap();
    succeeds(&["verify", s(&coded)]);
}

#[test]
fn decode_or_verify_of_a_plain_model() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good_dir(&tmp.path().join("m"));
    let e = fails(&["verify", s(&d)]);
    assert!(e.contains("not an entropy-coded model"), "{e}");
    let f = tmp.path().join("float.safetensors");
    write_st(&f, vec![("a.weight", f32s(&[4, 64]))]);
    let e = fails(&["encode", s(&f), s(&tmp.path().join("c"))]);
    assert!(e.contains("no MLX-quantized weights"), "{e}");
}

#[test]
fn good_paths_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good_dir(&tmp.path().join("m"));
    let out = succeeds(&["inspect", s(&d)]);
    assert!(out.contains("affine g64 4-bit"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&succeeds(&["inspect", s(&d), "--json"])).unwrap();
    assert_eq!(json["quantized"], true);
    let coded = tmp.path().join("c");
    succeeds(&["encode", s(&d), s(&coded)]);
    succeeds(&["decode", s(&coded), s(&tmp.path().join("back"))]);
    // --min-chunks is accepted, recorded, and the round trip stays byte for byte
    let coded2 = tmp.path().join("c2");
    succeeds(&["encode", "--min-chunks", "4", s(&d), s(&coded2)]);
    succeeds(&["decode", s(&coded2), s(&tmp.path().join("back2"))]);
    assert_eq!(
        std::fs::read(tmp.path().join("back2/model.safetensors")).unwrap(),
        std::fs::read(d.join("model.safetensors")).unwrap()
    );
    let meta = std::fs::read(coded2.join("model.safetensors")).unwrap();
    assert!(
        String::from_utf8_lossy(&meta[..4096.min(meta.len())]).contains("\"ecq.min_chunks\":\"4\""),
        "metadata lacks ecq.min_chunks"
    );
    let out = succeeds(&["inspect", s(&coded)]);
    assert!(out.contains("l.weight") && out.contains("total"), "{out}");
    let f = tmp.path().join("float.safetensors");
    write_st(
        &f,
        vec![("a.weight", f32s(&[4, 64])), ("b.weight", f32s(&[4, 40]))],
    );
    let svg = tmp.path().join("chart.svg");
    let out = succeeds(&["inspect", s(&f), "--plot", s(&svg)]);
    assert!(out.contains("affine g64 4-bit"), "{out}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    succeeds(&[
        "quantize",
        s(&f),
        s(&tmp.path().join("q")),
        "--bits",
        "3",
        "--group-size",
        "32",
    ]);
}

/// A 4-bit g64 model of one 16 x 1024 matrix (128 words a row) in `dir/m`: row pairs apply.
fn split_model(dir: &Path) -> PathBuf {
    quant_dir(
        &dir.join("m"),
        128,
        16,
        16,
        serde_json::json!({"group_size": 64, "bits": 4}),
    )
}

/// `ecq decode` of `coded` (into `dir/back`) gives back the model file of `original` byte for
/// byte.
#[track_caller]
fn decodes_back(dir: &Path, coded: &Path, original: &Path) {
    succeeds(&["decode", s(coded), s(&dir.join("back"))]);
    assert_eq!(
        std::fs::read(dir.join("back/model.safetensors")).unwrap(),
        std::fs::read(original.join("model.safetensors")).unwrap()
    );
}

/// Each argument list fails (a usage error or a refusal) without a panic.
#[track_caller]
fn refused(cases: &[&[&str]]) {
    for args in cases {
        let out = ecq(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}

/// `ecq encode --split --row-pairs`: verify, inspect (the split shown as 2+2) and decode back
/// byte for byte; a flipped raw low bit is a checksum error naming the weight; --row-pairs
/// needs --split, and --split does not go with --lossless.
#[test]
fn split_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let d = split_model(tmp.path());
    let coded = tmp.path().join("c");
    let out = succeeds(&["encode", "--split", "--row-pairs", s(&d), s(&coded)]);
    assert!(out.contains("1 of 1 matrices stored split"), "{out}");
    succeeds(&["verify", s(&coded)]);
    // --split asks for SPLIT_MIN_CHUNKS decoders unless told otherwise; whole keeps 0
    let min_chunks = |dir: &std::path::Path| {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        meta.metadata().as_ref().unwrap()["ecq.min_chunks"].clone()
    };
    assert_eq!(min_chunks(&coded), ecq::rans::SPLIT_MIN_CHUNKS.to_string());
    let (c0, cw) = (tmp.path().join("c0"), tmp.path().join("cw"));
    succeeds(&["encode", "--split", "--min-chunks", "0", s(&d), s(&c0)]);
    succeeds(&["encode", s(&d), s(&cw)]);
    assert_eq!((min_chunks(&c0), min_chunks(&cw)), ("0".into(), "0".into()));
    succeeds(&["verify", s(&c0)]);
    // row pairs: 8 coded rows of 2048 weights, chunks of 8192 weights (4 rows) with the split
    // default; row order without min_chunks: one chunk of all 16 rows (8192 symbols > 16 x 256)
    let chunk_rows = |dir: &std::path::Path| {
        let m = ecq::model::Model::open(dir).unwrap();
        match ecq::container::load_weight(&m, "l.weight").unwrap() {
            ecq::container::CodedWeight::Split { matrix, .. } => matrix.high().chunk_rows(),
            w => panic!("not split: {w:?}"),
        }
    };
    assert_eq!((chunk_rows(&coded), chunk_rows(&c0)), (4, 16));
    // `ecq inspect` reports them: 8 coded rows in chunks of 4, the GPU's decoders
    let json: serde_json::Value =
        serde_json::from_str(&succeeds(&["inspect", s(&coded), "--json"])).unwrap();
    assert_eq!(json["matrices"][0]["chunks"], 2, "{json}");
    assert!(succeeds(&["inspect", s(&coded)]).contains("chunks"));
    let out = succeeds(&["inspect", s(&coded)]);
    assert!(out.contains("2+2"), "{out}");
    decodes_back(tmp.path(), &coded, &d);

    let file = coded.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let low = meta.info("l.weight.ecq_low").unwrap().data_offsets;
    bytes[8 + n + (low.0 + low.1) / 2] ^= 0x04;
    std::fs::write(&file, &bytes).unwrap();
    let e = fails(&["verify", s(&coded)]);
    assert!(
        e.starts_with("error: l.weight: ") && e.contains("low bits"),
        "{e}"
    );

    refused(&[
        &["encode", "--row-pairs", s(&d), "x"],
        &["encode", "--split", "--lossless", s(&d), "x"],
    ]);
}

/// `ecq encode --window --row-pairs`: window splits (shown as w5:1+3 or another start), verified
/// and decoded back byte for byte; --window goes with neither --split nor --lossless, and
/// --row-pairs alone is refused with a message naming what it needs.
#[test]
fn window_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let d = split_model(tmp.path());
    let coded = tmp.path().join("c");
    let out = succeeds(&["encode", "--window", "--row-pairs", s(&d), s(&coded)]);
    assert!(
        out.contains("1 of 1 matrices stored split (window splits"),
        "{out}"
    );
    succeeds(&["verify", s(&coded)]);
    let out = succeeds(&["inspect", s(&coded)]);
    assert!(out.contains(":1+3"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&succeeds(&["inspect", s(&coded), "--json"])).unwrap();
    assert!(json["matrices"][0]["window_start"].is_u64(), "{json}");
    decodes_back(tmp.path(), &coded, &d);
    let e = fails(&["encode", "--row-pairs", s(&d), s(&tmp.path().join("x"))]);
    assert!(e.contains("--row-pairs needs --split or --window"), "{e}");
    refused(&[
        &["encode", "--window", "--split", s(&d), "x"],
        &["encode", "--window", "--lossless", s(&d), "x"],
    ]);
}
