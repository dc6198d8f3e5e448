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
use ecq::lossless::indexed::IndexedMatrix;
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

/// Magnitudes log-uniform over 2^-40 .. 2^40 with random signs: far more than 15 exponents, so
/// most weights are escapes, rows hold more escapes than a row has threads, and neighbouring
/// escapes share an output word.
fn wide_weights(rng: &mut ChaCha8Rng, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let e = rng.random_range(-40i32..40);
            let s = if rng.random::<bool>() { -1.0 } else { 1.0 };
            half::bf16::from_f32(s * 2f32.powi(e) * (1.0 + rng.random::<f32>())).to_bits()
        })
        .collect()
}

fn indexed_cases(rng: &mut ChaCha8Rng) -> Vec<(usize, usize, Vec<u16>)> {
    let mut v = Vec::new();
    // 1056 = 33 units of 32: a full tile of 32 units and a partial one
    for (r, k) in [
        (64, 4096),
        (37, 96),
        (130, 256),
        (5, 32),
        (1, 32),
        (9, 1056),
    ] {
        let mut w = weights(rng, r * k, 0.02, HalfType::BF16);
        for (i, s) in [0x8000u16, 0x0000, 0x0001, 0x8001, 0x4700]
            .iter()
            .enumerate()
        {
            w[(i * 17) % (r * k)] = *s;
        }
        v.push((r, k, w));
    }
    v.push((24, 1024, wide_weights(rng, 24 * 1024)));
    v.push((3, 32, vec![half::bf16::from_f32(0.5).to_bits(); 96]));
    // from 8192 rows the GEMVs take two rows per warp; an odd count leaves one warp a single row
    v.push((8193, 32, weights(rng, 8193 * 32, 0.02, HalfType::BF16)));
    v
}

/// Runs a GEMV launch made by `make` on fresh x and y buffers and reads y back.
fn run_dispatch(
    g: &LosslessGpu,
    rows: usize,
    x: &[f32],
    make: impl Fn(
        &wgpu::Buffer,
        &wgpu::Buffer,
    ) -> Result<ecq::lossless::gpu::LosslessDispatch, GpuError>,
) -> Vec<f32> {
    let none = wgpu::BufferUsages::empty();
    let xb = g.storage("x", bytemuck::cast_slice(x), none).unwrap();
    let yb = g
        .storage("y", &vec![0xFFu8; 4 * rows], wgpu::BufferUsages::COPY_SRC)
        .unwrap();
    let d = make(&xb, &yb).unwrap();
    let mut enc = g.device().create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        d.record(&mut pass);
    }
    g.queue().submit([enc.finish()]);
    bytemuck::pod_collect_to_vec(&g.read_back(&yb, 4 * rows as u64).unwrap())
}

#[test]
fn indexed_form_decodes_bit_exact_on_the_gpu() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(24);
    let mut cases = indexed_cases(&mut rng);
    // every 16-bit pattern, NaN payloads and infinities included
    cases.push((256, 256, (0..=u16::MAX).collect()));
    for (r, k, w) in cases {
        let m = IndexedMatrix::from_bf16(&w, r, k).unwrap();
        assert_eq!(m.decode(), w, "CPU {r}x{k}");
        let gm = g.upload_indexed(&m).unwrap();
        assert_eq!(
            g.decode_indexed(&gm).unwrap(),
            w,
            "GPU {r}x{k}, {} escapes",
            m.escapes().len()
        );
    }
}

#[test]
fn indexed_gemv_matches_the_f64_reference() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(25);
    let mut saw_many_escapes = false;
    for (r, k, w) in indexed_cases(&mut rng) {
        let x: Vec<f32> = (0..k).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        let refs = reference(&w, r, k, HalfType::BF16, &x);
        // through the rANS form, as a loader would
        let coded = encode(&w, r, k, HalfType::BF16, &EncodeOptions::default()).unwrap();
        let m = IndexedMatrix::from_lossless(&coded).unwrap();
        saw_many_escapes |= (0..r).any(|i| m.row_escapes(i).len() > 64);
        let gm = g.upload_indexed(&m).unwrap();
        // The kernel's chain per thread is at most K/32 dense products plus the row's escapes
        // (at most K/32 more per thread), then a 5-level tree: within the doubled
        // (K/32 + 33) u sum|w x| bound of `tolerance`.
        let y = g.gemv_indexed(&gm, &x).unwrap();
        assert_close(&y, &refs, k, &format!("indexed {r}x{k}"));
        // one and two rows per warp, and two rows shared by two warps (odd row counts leave a
        // warp, or a pair, with one row)
        let pm = g.upload_plain(&w, r, k, HalfType::BF16).unwrap();
        let shapes: [&[(&str, f64)]; 3] = [
            &[("ROWS", 1.0)],
            &[("ROWS", 2.0)],
            &[("ROWS", 2.0), ("SPLIT", 1.0)],
        ];
        for c in shapes {
            let yr = run_dispatch(g, r, &x, |xb, yb| {
                g.indexed_gemv_diagnostic_dispatch(&gm, xb, yb, c)
            });
            assert_close(&yr, &refs, k, &format!("indexed {c:?} {r}x{k}"));
            let yp = run_dispatch(g, r, &x, |xb, yb| {
                g.plain_diagnostic_dispatch(&pm, xb, yb, c)
            });
            assert_close(&yp, &refs, k, &format!("plain {c:?} {r}x{k}"));
        }
        let yp = g.gemv_plain(&pm, &x).unwrap();
        assert_close(&yp, &refs, k, &format!("plain {r}x{k}"));
    }
    assert!(saw_many_escapes);
}

#[test]
fn indexed_form_errors() {
    let Some(g) = gpu() else { return };
    let w = vec![0x3F80u16; 4 * 24];
    let m = IndexedMatrix::from_bf16(&w, 4, 24).unwrap();
    assert!(matches!(
        g.upload_indexed(&m),
        Err(GpuError::Unsupported(_))
    ));
    let w = vec![0x3F80u16; 4 * 32];
    let m = IndexedMatrix::from_bf16(&w, 4, 32).unwrap();
    let gm = g.upload_indexed(&m).unwrap();
    assert!(matches!(
        g.gemv_indexed(&gm, &[1.0; 31]),
        Err(GpuError::InvalidInput(_))
    ));
    assert_eq!(g.gemv_indexed(&gm, &[1.0; 32]).unwrap(), vec![32.0; 4]);
    // short x or y buffers are refused on the host
    let none = wgpu::BufferUsages::empty();
    let x16 = g.storage("x", &[0u8; 16 * 4], none).unwrap();
    let x32 = g.storage("x", &[0u8; 32 * 4], none).unwrap();
    let y4 = g.storage("y", &[0u8; 16], none).unwrap();
    assert!(matches!(
        g.indexed_gemv_dispatch(&gm, &x16, &y4),
        Err(GpuError::InvalidInput(_))
    ));
    assert!(g.indexed_gemv_dispatch(&gm, &x32, &y4).is_ok());
    // the diagnostic variants build (their results are not GEMVs)
    for v in [1.0, 2.0] {
        assert!(g
            .indexed_gemv_diagnostic_dispatch(&gm, &x32, &y4, &[("DIAG", v)])
            .is_ok());
    }
    let pm = g.upload_plain(&w, 4, 32, HalfType::BF16).unwrap();
    assert!(g
        .plain_diagnostic_dispatch(&pm, &x32, &y4, &[("DIAG", 2.0)])
        .is_ok());
    let big = g
        .upload_indexed(&IndexedMatrix::from_bf16(&vec![0x3F80u16; 8 * 32], 8, 32).unwrap())
        .unwrap();
    assert!(matches!(
        g.indexed_gemv_dispatch(&big, &x32, &y4),
        Err(GpuError::InvalidInput(_))
    ));
    let empty = g
        .upload_indexed(&IndexedMatrix::from_bf16(&[], 0, 32).unwrap())
        .unwrap();
    assert_eq!(
        g.gemv_indexed(&empty, &[1.0; 32]).unwrap(),
        Vec::<f32>::new()
    );
    assert_eq!(g.decode_indexed(&empty).unwrap(), Vec::<u16>::new());
    // f16 has no indexed form
    let f = encode(&w, 4, 32, HalfType::F16, &EncodeOptions::default()).unwrap();
    let e = IndexedMatrix::from_lossless(&f).unwrap_err().to_string();
    assert!(e.contains("bf16 only"), "{e}");
}

/// The dispatch entry points check the buffers they bind: an `out` or `x`/`y` too small is
/// `InvalidInput` (the kernels would drop the writes past it: silently missing values), one
/// past the device's binding limit `TooLarge` (wgpu's validation would panic).
#[test]
fn dispatches_check_their_buffers() {
    let Some(g) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(61);
    let (r, k) = (8, 64);
    let w = weights(&mut rng, r * k, 0.02, HalfType::BF16);
    let m = encode(&w, r, k, HalfType::BF16, &small()).unwrap();
    let gm = g.upload(&m).unwrap();
    let gi = g
        .upload_indexed(&IndexedMatrix::from_bf16(&wide_weights(&mut rng, r * k), r, k).unwrap())
        .unwrap();
    let none = wgpu::BufferUsages::empty();
    let buf = |bytes: usize| g.storage("b", &vec![0u8; bytes], none).unwrap();
    let short = |r: Result<(), GpuError>, what: &str| match r {
        Err(GpuError::InvalidInput(e)) => assert!(e.contains(what), "{e}"),
        other => panic!("{what}: {other:?}"),
    };
    // (storage buffers are padded to 16 bytes: short by 16)
    let (out_short, out) = (buf(r * k * 2 - 16), buf(r * k * 2));
    let (x, y) = (buf(k * 4), buf(r * 4));
    short(g.decode_dispatch(&gm, &out_short).map(|_| ()), "out buffer");
    short(
        g.indexed_decode_dispatches(&gi, &out_short).map(|_| ()),
        "out buffer",
    );
    short(
        g.gemv_dispatch(&gm, &buf(k * 4 - 16), &y).map(|_| ()),
        "x buffer",
    );
    short(
        g.gemv_dispatch(&gm, &x, &buf(r * 4 - 16)).map(|_| ()),
        "y buffer",
    );
    assert!(g.decode_dispatch(&gm, &out).is_ok());
    assert!(g.indexed_decode_dispatches(&gi, &out).is_ok());
    assert!(g.gemv_dispatch(&gm, &x, &y).is_ok());
    // on a device binding 64 KiB, buffers of 100 KiB
    let Some(ctx) = gpu_common::context_binding_at_most(64 * 1024) else {
        return;
    };
    let small_g = LosslessGpu::new(&ctx).unwrap();
    let gm = small_g.upload(&m).unwrap();
    // (a caller's buffer: the context's own `storage` refuses one past the limit)
    let big = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("big"),
        size: 100 * 1024,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let y = small_g.storage("y", &[0u8; 32], none).unwrap();
    for (what, r) in [
        ("decode", small_g.decode_dispatch(&gm, &big).map(|_| ())),
        ("gemv", small_g.gemv_dispatch(&gm, &big, &y).map(|_| ())),
    ] {
        assert!(
            matches!(r, Err(GpuError::TooLarge { limit: 65536, .. })),
            "{what}: {r:?}"
        );
    }
}
