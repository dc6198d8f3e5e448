//! CPU round trips of the lossless 16-bit codec (bf16 and f16), the f32 -> bf16 conversion and
//! corrupt input.

use ecq::lossless::{
    convert_f32, encode, encode_f32, f32_to_bf16, join, raw_byte, symbol, HalfType, LosslessError,
    LosslessMatrix, Source,
};
use ecq::rans::EncodeOptions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn opts() -> EncodeOptions {
    EncodeOptions::default()
}

fn small_chunks() -> EncodeOptions {
    EncodeOptions {
        chunk_symbols: 100,
        tile_chunks: 3,
        ..EncodeOptions::default()
    }
}

/// Gaussian-ish weights (sum of uniforms) with standard deviation `std`, as bf16 or f16 bits.
fn gaussian(rng: &mut ChaCha8Rng, n: usize, std: f32, half: HalfType) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let u: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 1.732;
            let x = u * std;
            match half {
                HalfType::BF16 => half::bf16::from_f32(x).to_bits(),
                _ => half::f16::from_f32(x).to_bits(),
            }
        })
        .collect()
}

/// Every special value of both formats.
fn specials(half: HalfType) -> Vec<u16> {
    match half {
        HalfType::BF16 => vec![
            0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0xFFFF, 0x0001, 0x8001, 0x007F,
            0x807F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80,
        ],
        _ => vec![
            0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0xFFFF, 0x0001, 0x8001, 0x03FF,
            0x83FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00,
        ],
    }
}

fn roundtrip(
    v: &[u16],
    rows: usize,
    cols: usize,
    half: HalfType,
    o: &EncodeOptions,
) -> LosslessMatrix {
    let m = encode(v, rows, cols, half, o).expect("encode");
    assert_eq!(m.decode().expect("decode"), v, "{rows}x{cols} {half:?}");
    // Through the stored tensors too.
    let t = m.to_tensors("w");
    let back =
        LosslessMatrix::from_tensors("w", |n| t.iter().find(|(k, _)| k == n).map(|(_, d)| d))
            .expect("from_tensors");
    assert_eq!(back, m);
    assert_eq!(back.decode().unwrap(), v);
    m
}

#[test]
fn split_and_join_are_inverse_for_every_pattern() {
    for h in 0..=u16::MAX {
        assert_eq!(join(symbol(h), raw_byte(h)), h);
    }
}

#[test]
fn every_pattern_roundtrips() {
    // All 65536 bit patterns in one 256 x 256 matrix, both types.
    let v: Vec<u16> = (0..=u16::MAX).collect();
    for half in [HalfType::BF16, HalfType::F16] {
        roundtrip(&v, 256, 256, half, &opts());
        roundtrip(&v, 256, 256, half, &small_chunks());
    }
}

#[test]
fn specials_gaussian_and_odd_shapes_roundtrip() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for half in [HalfType::BF16, HalfType::F16] {
        for &(rows, cols) in &[(1, 4), (3, 32), (7, 36), (33, 100), (64, 4096), (130, 96)] {
            let mut v = gaussian(&mut rng, rows * cols, 0.02, half);
            let sp = specials(half);
            for (i, s) in sp.iter().enumerate() {
                let j = (i * 7919) % v.len();
                v[j] = *s;
            }
            roundtrip(&v, rows, cols, half, &opts());
            roundtrip(&v, rows, cols, half, &small_chunks());
        }
    }
}

#[test]
fn skewed_and_constant_exponents_roundtrip() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // 99% one exponent, random mantissas and signs.
    let v: Vec<u16> = (0..96 * 64)
        .map(|_| {
            let e: u16 = if rng.random::<f32>() < 0.99 {
                120
            } else {
                rng.random::<u8>() as u16
            };
            (rng.random::<u16>() & 0x807F) | (e << 7)
        })
        .collect();
    let m = roundtrip(&v, 96, 64, HalfType::BF16, &opts());
    assert!(m.bits_per_weight() < 9.5, "{}", m.bits_per_weight());
    // A single exponent: zero words, 8 bits + side information.
    let c = vec![0x3C00u16; 64 * 64];
    let m = roundtrip(&c, 64, 64, HalfType::BF16, &opts());
    assert_eq!(m.exponents().words().len(), 0);
    // Uniform random patterns: about 16 bits.
    let u: Vec<u16> = (0..128 * 128).map(|_| rng.random()).collect();
    let m = roundtrip(&u, 128, 128, HalfType::F16, &opts());
    assert!(m.bits_per_weight() < 16.5, "{}", m.bits_per_weight());
}

#[test]
fn gaussian_bf16_codes_near_the_exponent_entropy() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let v = gaussian(&mut rng, 256 * 4096, 0.02, HalfType::BF16);
    let m = roundtrip(&v, 256, 4096, HalfType::BF16, &opts());
    let h = 8.0 + ecq::lossless::exponent_entropy(&v);
    let bpw = m.bits_per_weight();
    // Side information at the defaults: 128 bytes of lane states per 16384-weight chunk
    // (0.0625 bits/weight) plus one 512-byte table per 8 chunks (0.031).
    assert!(bpw > h - 0.01 && bpw < h + 0.1, "{bpw} vs entropy {h}");
    assert!(bpw < 11.0, "{bpw}");
}

#[test]
fn f32_to_bf16_matches_round_to_nearest_even() {
    // Reference: half's RNE for non-NaN; NaN -> 0x7FC0 like torch.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut xs: Vec<f32> = (0..100_000).map(|_| f32::from_bits(rng.random())).collect();
    xs.extend([
        0.0,
        -0.0,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x3F80_8000), // tie, even below: rounds down
        f32::from_bits(0x3F81_8000), // tie, odd below: rounds up
        f32::from_bits(0x3F80_8001), // above the tie: up
        f32::from_bits(0x7F7F_FFFF), // overflows to inf
    ]);
    for &x in &xs {
        let h = f32_to_bf16(x);
        if x.is_nan() {
            assert_eq!(h, 0x7FC0);
        } else {
            assert_eq!(
                h,
                half::bf16::from_f32(x).to_bits(),
                "{x:e} {:#x}",
                x.to_bits()
            );
        }
    }
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
    assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
    let (_, r) = convert_f32(&[1.0, 1.0 + 2f32.powi(-10), f32::MAX, f32::NAN]);
    assert_eq!(r.values, 4);
    assert_eq!(r.changed, 2); // rounded and overflowed; f32::NAN is 0x7FC00000 = bf16 0x7FC0
    assert_eq!(r.overflows, 1);
    assert!(r.max_rel_error > 0.0 && r.max_rel_error <= 2f64.powi(-8));
}

#[test]
fn f32_input_codes_its_bf16_conversion() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x: Vec<f32> = (0..32 * 64)
        .map(|_| (rng.random::<f32>() - 0.5) * 0.1)
        .collect();
    let (m, r) = encode_f32(&x, 32, 64, &opts()).unwrap();
    assert_eq!(m.source(), Source::F32);
    assert_eq!(r.values, x.len() as u64);
    assert!(r.changed > 0 && r.max_rel_error <= 2f64.powi(-8));
    let d = m.decode().unwrap();
    for (a, b) in x.iter().zip(&d) {
        assert_eq!(f32_to_bf16(*a), *b);
    }
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        encode(&[0; 10], 2, 4, HalfType::BF16, &opts()),
        Err(LosslessError::InvalidArgument(_))
    ));
    assert!(matches!(
        encode(&[0; 6], 2, 3, HalfType::BF16, &opts()),
        Err(LosslessError::InvalidArgument(_))
    ));
}

#[test]
fn corrupted_input_is_an_error_not_a_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let v = gaussian(&mut rng, 64 * 128, 0.02, HalfType::BF16);
    let m = encode(&v, 64, 128, HalfType::BF16, &small_chunks()).unwrap();
    let t = m.to_tensors("w");
    let load = |t: &Vec<(String, ecq::model::TensorData)>| {
        LosslessMatrix::from_tensors("w", |n| t.iter().find(|(k, _)| k == n).map(|(_, d)| d))
            .and_then(|m| m.decode())
    };
    assert_eq!(load(&t).unwrap(), v);
    // Flip one byte of every part, at several positions; every result is an error or (for
    // bytes no check covers) the same decode never panics.
    let mut errors = 0;
    for (pi, (name, data)) in t.iter().enumerate() {
        let n = data.bytes().len();
        for pos in [0, n / 3, n / 2, n.saturating_sub(1)] {
            if n == 0 {
                continue;
            }
            let mut b = data.bytes().to_vec();
            b[pos] ^= 0x5A;
            let mut t2 = t.clone();
            t2[pi].1 = ecq::model::TensorData::new(data.dtype(), data.shape().to_vec(), b);
            match load(&t2) {
                Err(_) => errors += 1,
                Ok(d) => assert_ne!(d, v, "{name}[{pos}] corrupted but decoded to the original"),
            }
        }
    }
    assert!(errors > 0);
    // Raw stream corruption is caught by its checksum.
    let mut t2 = t.clone();
    let ri = t2.iter().position(|(k, _)| k == "w.ecq16_raw").unwrap();
    let mut b = t2[ri].1.bytes().to_vec();
    b[5] ^= 1;
    t2[ri].1 = ecq::model::TensorData::new(t2[ri].1.dtype(), t2[ri].1.shape().to_vec(), b);
    assert!(matches!(load(&t2), Err(LosslessError::RawChecksum { .. })));
    // A missing part.
    let t3: Vec<_> = t
        .iter()
        .filter(|(k, _)| k != "w.ecq16_words")
        .cloned()
        .collect();
    assert!(matches!(load(&t3), Err(LosslessError::BadPart { .. })));
}
