//! ecq's affine quantization against golden vectors made by the real MLX
//! (`scripts/make_golden.py`, MLX 0.32.4, CPU): packed words, scales, biases and dequantized
//! values must be byte-identical. No Python needed.

use std::path::{Path, PathBuf};

use ecq::dtype::FloatDType;
use ecq::quant::{pack, quantize_affine, unpack, AffineParams, QuantizedMatrix};
use safetensors::SafeTensors;

const BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
const GROUP_SIZES: [u32; 3] = [32, 64, 128];
const DTYPES: [(&str, FloatDType); 3] = [
    ("float32", FloatDType::F32),
    ("float16", FloatDType::F16),
    ("bfloat16", FloatDType::BF16),
];

fn golden_path(dtype: &str, bits: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("affine_{dtype}_b{bits}.safetensors"))
}

struct Tensor {
    shape: Vec<usize>,
    dtype: safetensors::Dtype,
    bytes: Vec<u8>,
}

fn tensor(st: &SafeTensors<'_>, name: &str, file: &Path) -> Tensor {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{}: no tensor {name}: {e}", file.display()));
    Tensor {
        shape: t.shape().to_vec(),
        dtype: t.dtype(),
        bytes: t.data().to_vec(),
    }
}

fn words(t: &Tensor) -> Vec<u32> {
    assert_eq!(t.dtype, safetensors::Dtype::U32);
    t.bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Reports the first differing element of two byte buffers of `size`-byte elements.
#[track_caller]
fn assert_bytes_eq(what: &str, expected: &[u8], actual: &[u8], size: usize) {
    assert_eq!(expected.len(), actual.len(), "{what}: length");
    if let Some(i) = expected
        .chunks_exact(size)
        .zip(actual.chunks_exact(size))
        .position(|(a, b)| a != b)
    {
        panic!(
            "{what}: element {i} differs: MLX {:02x?}, ecq {:02x?}",
            &expected[i * size..(i + 1) * size],
            &actual[i * size..(i + 1) * size]
        );
    }
}

/// Runs `check` on every (dtype, bits, group size) golden case.
fn for_each_case(mut check: impl FnMut(&str, FloatDType, u32, u32, &SafeTensors<'_>, &Path)) {
    let mut cases = 0;
    for (name, dtype) in DTYPES {
        for bits in BITS {
            let path = golden_path(name, bits);
            let data = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (regenerate with scripts/make_golden.py)",
                    path.display()
                )
            });
            let st = SafeTensors::deserialize(&data).expect("valid safetensors");
            for gs in GROUP_SIZES {
                check(name, dtype, bits, gs, &st, &path);
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 54);
}

fn input(st: &SafeTensors<'_>, path: &Path, dtype: FloatDType) -> (Vec<f32>, usize, usize) {
    let w = tensor(st, "w", path);
    assert_eq!(FloatDType::from_safetensors(w.dtype).unwrap(), dtype);
    let (rows, cols) = (w.shape[0], w.shape[1]);
    (dtype.decode_le(&w.bytes).unwrap(), rows, cols)
}

#[test]
fn quantize_matches_mlx_bit_for_bit() {
    for_each_case(|name, dtype, bits, gs, st, path| {
        let case = format!("{name} bits {bits} group {gs}");
        let (w, rows, cols) = input(st, path, dtype);
        let m = quantize_affine(&w, rows, cols, dtype, AffineParams::new(bits, gs).unwrap())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let wq = tensor(st, &format!("g{gs}.wq"), path);
        assert_eq!(wq.shape, [rows, cols * bits as usize / 32], "{case}");
        let ours: Vec<u8> = m.packed.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_bytes_eq(&format!("{case}: packed words"), &wq.bytes, &ours, 4);
        for part in ["scales", "biases"] {
            let t = tensor(st, &format!("g{gs}.{part}"), path);
            assert_eq!(t.shape, [rows, cols / gs as usize], "{case}");
            assert_eq!(t.dtype, dtype.to_safetensors(), "{case}");
            let values = if part == "scales" {
                &m.scales
            } else {
                &m.biases
            };
            assert_bytes_eq(
                &format!("{case}: {part}"),
                &t.bytes,
                &dtype.encode_le(values),
                dtype.size_bytes(),
            );
        }
    });
}

#[test]
fn dequantize_matches_mlx_bit_for_bit() {
    for_each_case(|name, dtype, bits, gs, st, path| {
        let case = format!("{name} bits {bits} group {gs}");
        let (_, rows, cols) = input(st, path, dtype);
        // Built from MLX's own parts, so this checks dequantize independently of quantize.
        let wq = words(&tensor(st, &format!("g{gs}.wq"), path));
        let scales = dtype
            .decode_le(&tensor(st, &format!("g{gs}.scales"), path).bytes)
            .unwrap();
        let biases = dtype
            .decode_le(&tensor(st, &format!("g{gs}.biases"), path).bytes)
            .unwrap();
        let params = AffineParams::new(bits, gs).unwrap();
        let m = QuantizedMatrix::from_parts(rows, cols, params, dtype, wq, scales, biases)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let expected = tensor(st, &format!("g{gs}.dequant"), path);
        assert_eq!(expected.dtype, dtype.to_safetensors(), "{case}");
        assert_bytes_eq(
            &format!("{case}: dequantized"),
            &expected.bytes,
            &dtype.encode_le(&m.dequantize()),
            dtype.size_bytes(),
        );
    });
}

#[test]
fn mlx_words_unpack_and_repack_exactly() {
    for_each_case(|name, _, bits, gs, st, path| {
        let wq = words(&tensor(st, &format!("g{gs}.wq"), path));
        let n = wq.len() * 32 / bits as usize;
        let q = unpack(&wq, bits, n);
        assert!(q.iter().all(|&v| u32::from(v) < 1 << bits));
        assert_eq!(pack(&q, bits), wq, "{name} bits {bits} group {gs}");
    });
}
