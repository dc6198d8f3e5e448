//! Property and seeded tests of `ecq::quant`: packing round trips, reconstruction error bounds,
//! edge cases, and the error variant of every kind of bad input.

use ecq::dtype::FloatDType;
use ecq::quant::{
    pack, pack_into, packed_len, quantize_absmax, quantize_affine, unpack, unpack_into, AbsmaxMode,
    AffineParams, QuantError, QuantizedMatrix,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
const GROUP_SIZES: [u32; 3] = [32, 64, 128];

/// Relative rounding unit of each type (half an ulp at 1.0).
fn unit(dtype: FloatDType) -> f32 {
    match dtype {
        FloatDType::F32 => f32::EPSILON / 2.0,
        FloatDType::F16 => 1.0 / 2048.0,
        FloatDType::BF16 => 1.0 / 256.0,
    }
}

/// The smallest positive (subnormal) value of each type, twice the absolute rounding error
/// floor: that floor dominates for scales in the subnormal range (f16 scales below 6.1e-5 are
/// common for small-magnitude groups).
fn tiny(dtype: FloatDType) -> f32 {
    match dtype {
        FloatDType::F32 => f32::from_bits(1),
        FloatDType::F16 => 2f32.powi(-24),
        FloatDType::BF16 => f32::from_bits(1) * 2f32.powi(16),
    }
}

/// Seeded matrix mixing several distributions and scales.
fn random_matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let scale = [0.02f32, 1.0, 1e-3, 30.0][r % 4];
        let offset = if r % 3 == 0 { 0.5 * scale } else { 0.0 };
        for _ in 0..cols {
            w.push(offset + scale * (rng.random::<f32>() * 2.0 - 1.0));
        }
    }
    w
}

/// Checks, for every weight, `|w - deq| <= |s|/2 + clamp excess + rounding slack`, where the
/// clamp excess `max(0, range - n_bins*|s|)` covers the far extreme that MLX's adjusted scale can
/// push past the last bin.
#[track_caller]
fn assert_error_bound(w: &[f32], m: &QuantizedMatrix) {
    let gs = m.group_size as usize;
    let n_bins = ((1u32 << m.bits) - 1) as f32;
    let u = unit(m.dtype);
    let deq = m.dequantize();
    for (g, (wg, dg)) in w.chunks(gs).zip(deq.chunks(gs)).enumerate() {
        let wg: Vec<f32> = wg.iter().map(|&x| m.dtype.round(x)).collect();
        let (s, b) = (m.scales[g].abs(), m.biases[g].abs());
        let max = wg.iter().fold(f32::MIN, |a, &x| a.max(x));
        let min = wg.iter().fold(f32::MAX, |a, &x| a.min(x));
        let excess = ((max - min) - n_bins * s).max(0.0);
        for (i, (&x, &y)) in wg.iter().zip(dg).enumerate() {
            // Scale and bias rounded to the dtype (after q was chosen), the product and the sum
            // each rounded once more; f32 gets a few ulps. Each rounding errs by at most
            // u*|v| relative, or by the subnormal floor `tiny` (q up to n_bins multiplies the
            // scale's rounding error).
            let slack = 4.0 * u * (n_bins * s + b + x.abs()) + 4.0 * (n_bins + 2.0) * tiny(m.dtype);
            let err = (x - y).abs();
            assert!(
                err <= s / 2.0 * (1.0 + 4.0 * u) + excess + slack,
                "{} bits {} group {gs}: group {g} weight {i}: w {x} deq {y} err {err} scale {s} \
                 excess {excess}",
                m.dtype,
                m.bits
            );
        }
    }
}

proptest! {
    #[test]
    fn pack_unpack_round_trip(bits in 1u32..=8, raw in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mask = ((1u16 << bits) - 1) as u8;
        let q: Vec<u8> = raw.iter().map(|v| v & mask).collect();
        let packed = pack(&q, bits);
        prop_assert_eq!(packed.len(), packed_len(q.len(), bits));
        prop_assert_eq!(unpack(&packed, bits, q.len()), q.clone());
        // The _into forms agree, and high bits of the input are ignored.
        let mut words = vec![0u32; packed.len()];
        pack_into(&raw, bits, &mut words).unwrap();
        prop_assert_eq!(&words, &packed);
        let mut back = vec![0u8; q.len()];
        unpack_into(&packed, bits, &mut back).unwrap();
        prop_assert_eq!(back, q);
    }

    #[test]
    fn rows_are_word_aligned_streams(bits_i in 0usize..6, rows in 1usize..8, blocks in 1usize..5, seed in any::<u64>()) {
        let bits = BITS[bits_i];
        let cols = 32 * blocks;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q: Vec<u8> = (0..rows * cols).map(|_| rng.random_range(0..1u16 << bits) as u8).collect();
        let whole = pack(&q, bits);
        let by_row: Vec<u32> = q.chunks(cols).flat_map(|r| pack(r, bits)).collect();
        prop_assert_eq!(&whole, &by_row);
        prop_assert_eq!(whole.len(), rows * cols * bits as usize / 32);
    }

    #[test]
    fn affine_error_is_bounded(
        bits_i in 0usize..6, gs_i in 0usize..3, dt_i in 0usize..3,
        rows in 1usize..6, seed in any::<u64>(),
    ) {
        let (bits, gs, dtype) = (BITS[bits_i], GROUP_SIZES[gs_i], FloatDType::ALL[dt_i]);
        let cols = 256;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w = random_matrix(&mut rng, rows, cols);
        let m = quantize_affine(&w, rows, cols, dtype, AffineParams::new(bits, gs).unwrap()).unwrap();
        m.validate().unwrap();
        assert_error_bound(&w, &m);
        // Symbols round-trip through from_symbols.
        let again = QuantizedMatrix::from_symbols(
            rows, cols, m.params().unwrap(), dtype, &m.symbols(), m.scales.clone(), m.biases.clone(),
        ).unwrap();
        prop_assert_eq!(again, m);
    }
}

#[test]
fn odd_row_counts_unpack_per_row_and_whole() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for bits in BITS {
        for rows in [1usize, 3, 5, 7, 33] {
            let cols = 96;
            let w = random_matrix(&mut rng, rows, cols);
            let m = quantize_affine(
                &w,
                rows,
                cols,
                FloatDType::F32,
                AffineParams::new(bits, 32).unwrap(),
            )
            .unwrap();
            let all = m.symbols();
            let wpr = m.words_per_row();
            for r in 0..rows {
                let row = unpack(&m.packed[r * wpr..(r + 1) * wpr], bits, cols);
                assert_eq!(
                    row,
                    all[r * cols..(r + 1) * cols],
                    "bits {bits} rows {rows} row {r}"
                );
            }
            assert_eq!(pack(&all, bits), m.packed);
        }
    }
}

#[test]
fn large_matrix_parallel_equals_row_by_row() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (rows, cols) = (301, 512);
    let w = random_matrix(&mut rng, rows, cols);
    for dtype in FloatDType::ALL {
        let params = AffineParams::new(4, 64).unwrap();
        let m = quantize_affine(&w, rows, cols, dtype, params).unwrap();
        let deq = m.dequantize();
        let (wpr, gpr) = (cols * 4 / 32, cols / 64);
        for r in [0, 1, 150, 300] {
            let one =
                quantize_affine(&w[r * cols..(r + 1) * cols], 1, cols, dtype, params).unwrap();
            assert_eq!(one.packed, m.packed[r * wpr..(r + 1) * wpr]);
            assert_eq!(one.scales, m.scales[r * gpr..(r + 1) * gpr]);
            assert_eq!(one.biases, m.biases[r * gpr..(r + 1) * gpr]);
            assert_eq!(one.dequantize(), deq[r * cols..(r + 1) * cols]);
        }
    }
}

#[test]
fn constant_and_zero_groups_reconstruct_exactly() {
    for dtype in FloatDType::ALL {
        for bits in BITS {
            for c in [0.0f32, 0.3, -0.3, 1e-8, -3e-7, -7.5, 1000.0] {
                let c = dtype.round(c);
                let w = vec![c; 2 * 64];
                let m = quantize_affine(&w, 2, 64, dtype, AffineParams::new(bits, 32).unwrap())
                    .unwrap();
                let deq = m.dequantize();
                // Below eps / 2 MLX's q0 is 0, so the bias is 0 and the group decodes to 0.
                let expected = if c.abs() < 5e-8 { 0.0 } else { c };
                assert!(
                    deq.iter().all(|&y| y == expected),
                    "{dtype} bits {bits} constant {c}: {deq:?}"
                );
                assert!(m.symbols().iter().all(|&q| q == 0));
            }
        }
    }
}

#[test]
fn all_negative_groups_use_a_positive_scale() {
    let w: Vec<f32> = (0..64).map(|i| -1.0 - i as f32 * 0.01).collect();
    let m = quantize_affine(
        &w,
        1,
        64,
        FloatDType::F32,
        AffineParams::new(4, 64).unwrap(),
    )
    .unwrap();
    // The larger-magnitude extreme (w_min) is q = 0: positive scale, bias = w_min.
    assert!(m.scales[0] > 0.0);
    assert_eq!(m.biases[0], -1.63);
    assert_eq!(m.symbols()[63], 0);
    assert_error_bound(&w, &m);
}

#[test]
fn ties_round_half_to_even() {
    // One 32-group spanning [0, 15] in halves: scale = -1, bias = 15, (w - 15) / -1 = 15 - w.
    let mut w: Vec<f32> = (0..32).map(|i| (i % 31) as f32 / 2.0).collect();
    w[31] = 15.0;
    let m = quantize_affine(
        &w,
        1,
        32,
        FloatDType::F32,
        AffineParams::new(4, 32).unwrap(),
    )
    .unwrap();
    assert_eq!((m.scales[0], m.biases[0]), (-1.0, 15.0));
    let q = m.symbols();
    assert_eq!(q[1], 14); // 15 - 0.5 = 14.5 -> 14
    assert_eq!(q[3], 14); // 13.5 -> 14
    assert_eq!(q[5], 12); // 12.5 -> 12
}

#[test]
fn empty_inputs_are_allowed() {
    let p = AffineParams::new(4, 64).unwrap();
    let m = quantize_affine(&[], 0, 128, FloatDType::F16, p).unwrap();
    assert!(m.packed.is_empty() && m.scales.is_empty() && m.is_empty());
    assert!(m.dequantize().is_empty() && m.symbols().is_empty());
    let m = quantize_affine(&[], 3, 0, FloatDType::F32, p).unwrap();
    assert_eq!(m.rows, 3);
    assert!(m.dequantize().is_empty());
    let a = quantize_absmax(&[], 0, 0, 4, AbsmaxMode::PerChannel).unwrap();
    assert!(a.symbols.is_empty() && a.dequantize().is_empty());
    assert!(pack(&[], 3).is_empty() && unpack(&[], 3, 0).is_empty());
}

#[test]
fn bad_parameters_give_the_right_error() {
    assert_eq!(
        AffineParams::new(7, 64),
        Err(QuantError::UnsupportedBits { bits: 7 })
    );
    assert_eq!(
        AffineParams::new(7, 64).unwrap_err().to_string(),
        "unsupported bits 7 (MLX supports 2, 3, 4, 5, 6, 8)"
    );
    assert_eq!(
        AffineParams::new(1, 64),
        Err(QuantError::UnsupportedBits { bits: 1 })
    );
    assert_eq!(
        AffineParams::new(4, 16),
        Err(QuantError::UnsupportedGroupSize { group_size: 16 })
    );
    let p = AffineParams::new(4, 64).unwrap();
    let err = quantize_affine(&[0.0; 200], 2, 100, FloatDType::F32, p).unwrap_err();
    assert_eq!(
        err,
        QuantError::ColumnsNotDivisible {
            cols: 100,
            group_size: 64
        }
    );
    assert_eq!(
        err.to_string(),
        "columns 100 not divisible by group size 64"
    );
    assert!(matches!(
        quantize_affine(&[0.0; 100], 2, 64, FloatDType::F32, p),
        Err(QuantError::LengthMismatch {
            what: "weights",
            expected: 128,
            actual: 100
        })
    ));
    assert!(matches!(
        quantize_affine(&[0.0; 4], usize::MAX, 64, FloatDType::F32, p),
        Err(QuantError::TooLarge { .. })
    ));
}

#[test]
fn non_finite_weights_are_rejected_with_their_position() {
    let p = AffineParams::new(4, 32).unwrap();
    let mut w = vec![0.5f32; 3 * 64];
    w[64 + 10] = f32::NAN;
    assert!(matches!(
        quantize_affine(&w, 3, 64, FloatDType::F32, p),
        Err(QuantError::NonFinite {
            row: 1,
            col: 10,
            ..
        })
    ));
    // Finite in f32 but infinite once rounded to f16.
    let mut w = vec![0.5f32; 64];
    w[3] = 70000.0;
    assert!(matches!(
        quantize_affine(&w, 1, 64, FloatDType::F16, p),
        Err(QuantError::NonFinite { row: 0, col: 3, .. })
    ));
    assert!(quantize_affine(&w, 1, 64, FloatDType::BF16, p).is_ok());
    assert!(matches!(
        quantize_absmax(&[1.0, f32::INFINITY], 1, 2, 4, AbsmaxMode::PerTensor),
        Err(QuantError::NonFinite { row: 0, col: 1, .. })
    ));
}

#[test]
fn from_parts_checks_shapes_and_values() {
    let p = AffineParams::new(4, 64).unwrap();
    let (rows, cols) = (3, 128);
    let ok = || (vec![0u32; 48], vec![0.5f32; 6], vec![0.0f32; 6]);
    let (pk, s, b) = ok();
    assert!(QuantizedMatrix::from_parts(rows, cols, p, FloatDType::F16, pk, s, b).is_ok());
    let (pk, _, b) = ok();
    let err = QuantizedMatrix::from_parts(rows, cols, p, FloatDType::F16, pk, vec![0.5; 5], b)
        .unwrap_err();
    assert_eq!(
        err,
        QuantError::LengthMismatch {
            what: "scales",
            expected: 6,
            actual: 5
        }
    );
    assert_eq!(err.to_string(), "scales: expected 6 elements, got 5");
    let (_, s, b) = ok();
    assert!(matches!(
        QuantizedMatrix::from_parts(rows, cols, p, FloatDType::F16, vec![0; 47], s, b),
        Err(QuantError::LengthMismatch {
            what: "packed weights",
            expected: 48,
            actual: 47
        })
    ));
    let (pk, s, _) = ok();
    assert!(matches!(
        QuantizedMatrix::from_parts(rows, cols, p, FloatDType::F16, pk, s, vec![0.0; 7]),
        Err(QuantError::LengthMismatch {
            what: "biases",
            expected: 6,
            actual: 7
        })
    ));
    let (pk, mut s, b) = ok();
    s[4] = 0.1; // not an f16 value
    assert!(matches!(
        QuantizedMatrix::from_parts(rows, cols, p, FloatDType::F16, pk, s, b),
        Err(QuantError::NotRepresentable {
            what: "scale",
            index: 4,
            ..
        })
    ));
    let (pk, s, b) = ok();
    assert!(matches!(
        QuantizedMatrix::from_parts(rows, 100, p, FloatDType::F16, pk, s, b),
        Err(QuantError::ColumnsNotDivisible {
            cols: 100,
            group_size: 64
        })
    ));
    let mut sym = vec![0u8; rows * cols];
    sym[9] = 16;
    let (_, s, b) = ok();
    assert!(matches!(
        QuantizedMatrix::from_symbols(rows, cols, p, FloatDType::F16, &sym, s, b),
        Err(QuantError::SymbolOutOfRange {
            index: 9,
            value: 16,
            bits: 4
        })
    ));
    // Hand-broken public fields: the _into forms report instead of panicking.
    let (pk, s, b) = ok();
    let mut m = QuantizedMatrix::from_parts(rows, cols, p, FloatDType::F16, pk, s, b).unwrap();
    m.bits = 7;
    assert!(matches!(
        m.dequantize_into(&mut vec![0.0; rows * cols]),
        Err(QuantError::UnsupportedBits { bits: 7 })
    ));
    m.bits = 4;
    m.scales.pop();
    assert!(m.dequantize_into(&mut vec![0.0; rows * cols]).is_err());
    assert!(m.symbols_into(&mut vec![0; rows * cols - 1]).is_err());
}

#[test]
fn pack_errors() {
    assert_eq!(
        pack_into(&[1, 2], 9, &mut [0u32; 1]),
        Err(QuantError::UnsupportedBits { bits: 9 })
    );
    assert!(matches!(
        unpack_into(&[0u32; 2], 3, &mut [0u8; 32]),
        Err(QuantError::LengthMismatch {
            what: "packed input",
            expected: 3,
            actual: 2
        })
    ));
}

#[test]
fn absmax_bounds_and_symbols() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (rows, cols) = (9, 100);
    let w = random_matrix(&mut rng, rows, cols);
    for bits in 2..=8u32 {
        for mode in [AbsmaxMode::PerTensor, AbsmaxMode::PerChannel] {
            let a = quantize_absmax(&w, rows, cols, bits, mode).unwrap();
            assert_eq!(
                a.scales.len(),
                if mode == AbsmaxMode::PerTensor {
                    1
                } else {
                    rows
                }
            );
            assert!(a
                .symbols
                .iter()
                .all(|&s| s >= 1 && u32::from(s) < 1 << bits));
            let deq = a.dequantize();
            for (i, (&x, &y)) in w.iter().zip(&deq).enumerate() {
                let s = a.scale_of_row(i / cols);
                assert!(
                    (x - y).abs() <= s / 2.0 + 4.0 * f32::EPSILON * x.abs().max(s),
                    "bits {bits} {mode:?} weight {i}: {x} vs {y}"
                );
            }
        }
    }
    // The absmax weight maps to the extreme symbol; zero rows get scale 0 and q = 0.
    let w = [0.0f32, 0.0, 0.0, 0.0, -2.0, 1.2, 0.0, 0.5];
    let a = quantize_absmax(&w, 2, 4, 4, AbsmaxMode::PerChannel).unwrap();
    assert_eq!(a.scales, vec![0.0, 2.0 / 7.0]);
    assert_eq!(a.symbols, vec![8, 8, 8, 8, 1, 12, 8, 10]);
    assert_eq!(a.dequantize()[..4], [0.0; 4]);
    for bits in [0, 1, 9] {
        assert_eq!(
            quantize_absmax(&w, 2, 4, bits, AbsmaxMode::PerTensor),
            Err(QuantError::UnsupportedAbsmaxBits { bits })
        );
    }
    assert!(matches!(
        quantize_absmax(&w, 3, 4, 4, AbsmaxMode::PerTensor),
        Err(QuantError::LengthMismatch {
            what: "weights",
            expected: 12,
            actual: 8
        })
    ));
}
