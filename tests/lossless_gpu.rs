//! Lossless 16-bit kernels against the CPU: GPU decode bit-exact (`wgsl/bf16_decode.wgsl`),
//! fused decode + GEMV (`wgsl/bf16_gemv.wgsl`) and the plain bf16/f16 GEMV
//! (`wgsl/bf16_plain_gemv.wgsl`) against an f64 reference, corrupt streams reported as errors.
//!
//! Runs on any adapter wgpu finds (lavapipe in CI); prints `SKIPPED: no GPU adapter` and passes
//! when there is none.

mod gpu_common;

use std::sync::OnceLock;

use ecq::gpu::{GpuContext, GpuError};
use ecq::lossless::gpu::LosslessGpu;
use ecq::lossless::{encode, HalfType, LosslessMatrix};
use ecq::rans::EncodeOptions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Accumulation error bound, in units of the f32 unit roundoff `u = 2^-24` times `sum |w_k x_k|`,
/// per term of the longest summation chain. The weights are exact in f32 (bf16/f16 widen
/// exactly), so the only errors are the rounding of each product and of each addition: the fused
/// kernel sums K/32 products per lane, then the 32 lane sums (chain K/32 + 32, plus one product
/// rounding); the plain kernel sums K/64 dot8 results per accumulator (each a chain of 8), two
/// accumulators and a 5-level tree: shorter. The classical bound `|error| <= (n) u sum|terms|`
/// for a chain of n operations gives `(K/32 + 33) u sum |w_k x_k|`; FMA contraction only lowers
/// it. Doubled for margin.
const TOL_CHAIN_FACTOR: f64 = 2.0;

fn tolerance(k: usize, abs_sum: f64) -> f64 {
    TOL_CHAIN_FACTOR * (k / 32 + 33) as f64 * 2f64.powi(-24) * abs_sum + 1e-30
}

fn gpu() -> Option<&'static LosslessGpu> {
    static G: OnceLock<Option<LosslessGpu>> = OnceLock::new();
    G.get_or_init(|| match GpuContext::new() {
        Ok(c) => {
            eprintln!("GPU adapter: {}", c.describe());
            let g = LosslessGpu::new(&c).expect("lossless kernels compile");
            eprintln!("fused kernel uses subgroups: {}", g.uses_subgroups());
            Some(g)
        }
        Err(e) => {
            gpu_common::announce_skip(&e);
            None
        }
    })
    .as_ref()
}

fn weights(rng: &mut ChaCha8Rng, n: usize, std: f32, half: HalfType) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let u: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 1.732;
            match half {
                HalfType::BF16 => half::bf16::from_f32(u * std).to_bits(),
                _ => half::f16::from_f32(u * std).to_bits(),
            }
        })
        .collect()
}

fn small() -> EncodeOptions {
    EncodeOptions {
        chunk_symbols: 100,
        tile_chunks: 3,
        ..EncodeOptions::default()
    }
}

fn cases() -> Vec<(usize, usize, HalfType, EncodeOptions)> {
    vec![
        (64, 4096, HalfType::BF16, EncodeOptions::default()),
        (37, 96, HalfType::BF16, small()),
        (130, 256, HalfType::BF16, EncodeOptions::default()),
        (5, 32, HalfType::BF16, EncodeOptions::default()),
        (50, 512, HalfType::F16, small()),
        (64, 1024, HalfType::F16, EncodeOptions::default()),
    ]
}

#[test]
fn gpu_decode_is_bit_exact() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for (r, k, half, o) in cases() {
        let mut w = weights(&mut rng, r * k, 0.02, half);
        // Every special pattern, including NaN payloads and both zeros.
        for (i, s) in [
            0x7FC1u16, 0xFFFF, 0x7F80, 0xFC00, 0x8000, 0x0000, 0x0001, 0x8001,
        ]
        .iter()
        .enumerate()
        {
            w[(i * 13) % (r * k)] = *s;
        }
        let m = encode(&w, r, k, half, &o).unwrap();
        let gm = g.upload(&m).unwrap();
        // both decode kernels (the subgroup one only where subgroups are 32 wide; elsewhere
        // `decode_with(.., true)` falls back to the workgroup kernel)
        for sub in [false, true] {
            assert_eq!(
                g.decode_with(&gm, sub).unwrap(),
                w,
                "{r}x{k} {half:?} subgroup {sub}"
            );
        }
    }
    // Every 16-bit pattern in one matrix.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let m = encode(&all, 256, 256, HalfType::BF16, &small()).unwrap();
    let gm = g.upload(&m).unwrap();
    for sub in [false, true] {
        assert_eq!(g.decode_with(&gm, sub).unwrap(), all, "subgroup {sub}");
    }
}

fn reference(w: &[u16], r: usize, k: usize, half: HalfType, x: &[f32]) -> Vec<(f64, f64)> {
    (0..r)
        .map(|i| {
            let (mut s, mut a) = (0.0f64, 0.0f64);
            for j in 0..k {
                let p = f64::from(half.to_f32(w[i * k + j])) * f64::from(x[j]);
                s += p;
                a += p.abs();
            }
            (s, a)
        })
        .collect()
}

#[track_caller]
fn assert_close(y: &[f32], refs: &[(f64, f64)], k: usize, what: &str) {
    assert_eq!(y.len(), refs.len());
    for (i, (&v, &(s, a))) in y.iter().zip(refs).enumerate() {
        let tol = tolerance(k, a);
        assert!(
            (f64::from(v) - s).abs() <= tol,
            "{what}: row {i}: got {v}, expected {s} (tolerance {tol:e})"
        );
    }
}

#[test]
fn fused_and_plain_gemv_match_the_f64_reference() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    for (r, k, half, o) in cases() {
        let mut w = weights(&mut rng, r * k, 0.02, half);
        // Finite specials only (NaN/inf would make the reference meaningless): zeros, subnormals,
        // large values.
        for (i, s) in [0x8000u16, 0x0000, 0x0001, 0x8001, 0x4700]
            .iter()
            .enumerate()
        {
            w[(i * 17) % (r * k)] = *s;
        }
        let x: Vec<f32> = (0..k).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        let refs = reference(&w, r, k, half, &x);
        let m = encode(&w, r, k, half, &o).unwrap();
        let gm = g.upload(&m).unwrap();
        for sub in [false, true] {
            let y = g.gemv_with(&gm, &x, sub).unwrap();
            assert_close(
                &y,
                &refs,
                k,
                &format!("fused {r}x{k} {half:?} subgroup {sub}"),
            );
        }
        let pm = g.upload_plain(&w, r, k, half).unwrap();
        let yp = g.gemv_plain(&pm, &x).unwrap();
        assert_close(&yp, &refs, k, &format!("plain {r}x{k} {half:?}"));
    }
}

#[test]
fn unsupported_shapes_and_bad_x_are_errors() {
    let Some(g) = gpu() else { return };
    let w = vec![0x3F80u16; 4 * 36];
    let m = encode(&w, 4, 36, HalfType::BF16, &EncodeOptions::default()).unwrap();
    assert!(matches!(g.upload(&m), Err(GpuError::Unsupported(_))));
    let w = vec![0x3F80u16; 4 * 64];
    let m = encode(&w, 4, 64, HalfType::BF16, &EncodeOptions::default()).unwrap();
    let gm = g.upload(&m).unwrap();
    assert!(matches!(
        g.gemv(&gm, &[1.0; 63]),
        Err(GpuError::InvalidInput(_))
    ));
    assert_eq!(g.gemv(&gm, &[1.0; 64]).unwrap(), vec![64.0; 4]);
    assert!(g.upload_plain(&w, 4, 60, HalfType::BF16).is_err());
}

#[test]
fn corrupt_streams_are_errors_not_hangs() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let (r, k) = (48, 256);
    let w = weights(&mut rng, r * k, 0.02, HalfType::BF16);
    let m = encode(&w, r, k, HalfType::BF16, &small()).unwrap();
    let t = m.to_tensors("w");
    let corrupt = |suffix: &str, pos: usize, xor: u8| {
        let mut t2 = t.clone();
        let i = t2.iter().position(|(n, _)| n.ends_with(suffix)).unwrap();
        let mut b = t2[i].1.bytes().to_vec();
        let p = pos % b.len();
        b[p] ^= xor;
        t2[i].1 = ecq::model::TensorData::new(t2[i].1.dtype(), t2[i].1.shape().to_vec(), b);
        LosslessMatrix::from_tensors("w", |n| t2.iter().find(|(k, _)| k == n).map(|(_, d)| d))
    };
    let x = vec![1.0f32; k];
    let mut cases = 0;
    for pos in [0usize, 101, 333, 1000, 2047] {
        for (suffix, xor) in [(".ecq16_words", 0x21u8), (".ecq16_states", 0x10)] {
            let Ok(cm) = corrupt(suffix, pos, xor) else {
                continue; // rejected before the GPU
            };
            assert!(cm.decode().is_err(), "CPU accepted {suffix}[{pos}]");
            let gm = g.upload(&cm).unwrap();
            for sub in [false, true] {
                let d = g.decode_with(&gm, sub);
                assert!(
                    matches!(d, Err(GpuError::CorruptStream { .. })),
                    "{suffix}[{pos}] subgroup {sub}: decode gave {:?}",
                    d.map(|v| v.len())
                );
            }
            for sub in [false, true] {
                assert!(matches!(
                    g.gemv_with(&gm, &x, sub),
                    Err(GpuError::CorruptStream { .. })
                ));
            }
            cases += 1;
        }
    }
    assert!(cases >= 5);
    // A frequency table that does not sum to 2^n is rejected on the CPU before upload.
    assert!(corrupt(".ecq16_freqs", 10, 0x01).is_err());
}
