//! Fused rANS GEMV (`wgsl/rans_gemv.wgsl`) and plain quantized GEMV (`wgsl/qgemv.wgsl`) against
//! a CPU f64 reference on the dequantized weights.
//!
//! Runs on any adapter wgpu finds (lavapipe in CI); prints `SKIPPED: no GPU adapter` and passes
//! when there is none. `y` is poisoned with NaN by the library before each run.

mod gpu_common;

use ecq::dtype::FloatDType;
use ecq::gpu::{
    CodedMatrixRef, DecodeOutput, FusedVariant, GpuContext, QGemvVariant, QuantParamsRef,
    TiledGemmTile,
};
use ecq::quant::{quantize_affine, AffineParams, QuantizedMatrix};
use ecq::rans::{encode, EncodeOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Error bound per accumulated term, relative to the sum of absolute values.
///
/// The kernels compute `y[r] = sum_g scale_g * sum_{k in g} q_k x_k + bias_g * sum_{k in g} x_k`
/// in f32 (products exact up to one rounding each; the pre-scaling by powers of two in qgemv is
/// exact). Recursive f32 summation of `n` terms has error at most `gamma_n * sum |terms|` with
/// `gamma_n ~= n * 2^-24` (Higham, Accuracy and Stability, 4.2); the terms here are
/// `|scale_g| |q_k x_k|` and `|bias_g| |x_k|`, at most `K + 2 * K / group + 2` of them in any
/// one chain, plus the final reductions over 32 lanes (5 levels). We allow
/// `TOL_PER_TERM * (K + 64) * sum_abs` with `TOL_PER_TERM = 2^-24`, i.e. the worst-case bound
/// with a small margin for the reduction; in practice errors are far smaller (random rounding
/// errors grow like sqrt(K)).
const TOL_PER_TERM: f64 = 1.0 / (1u64 << 24) as f64;

use gpu_common::{bits, ctx, gaussian, random_matrix, storage};

/// f64 reference `y` and the per-row bound `sum_abs` of the factored computation.
fn reference(q: &QuantizedMatrix, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    reference_symbols(q, &q.symbols(), x)
}

/// [`reference`] with the symbols given (for group sizes `QuantizedMatrix::symbols` refuses).
fn reference_symbols(q: &QuantizedMatrix, sym: &[u8], x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (r, k, gs) = (q.rows, q.cols, q.group_size as usize);
    let mut y = vec![0.0; r];
    let mut a = vec![0.0; r];
    for row in 0..r {
        for g in 0..k / gs {
            let s = q.scales[row * (k / gs) + g] as f64;
            let b = q.biases[row * (k / gs) + g] as f64;
            for kk in g * gs..(g + 1) * gs {
                let qv = sym[row * k + kk] as f64;
                let xv = x[kk] as f64;
                y[row] += (s * qv + b) * xv;
                a[row] += (s * qv * xv).abs() + (b * xv).abs();
            }
        }
    }
    (y, a)
}

#[track_caller]
fn assert_close(label: &str, got: &[f32], want: &[f64], sum_abs: &[f64], k: usize) {
    assert_eq!(got.len(), want.len(), "{label}");
    for i in 0..got.len() {
        let tol = TOL_PER_TERM * (k as f64 + 64.0) * sum_abs[i] + 1e-30;
        let err = (got[i] as f64 - want[i]).abs();
        assert!(
            err <= tol,
            "{label}: y[{i}] = {} expected {} (error {err:e} > tolerance {tol:e})",
            got[i],
            want[i]
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check_fused(
    ctx: &GpuContext,
    seed: u64,
    rows: usize,
    cols: usize,
    bits: u32,
    gs: u32,
    chunk_symbols: usize,
    tile_chunks: usize,
    wps: Option<u32>,
) {
    let (q, x) = random_matrix(seed, rows, cols, bits, gs);
    let opts = EncodeOptions {
        weights_per_symbol: wps,
        chunk_symbols,
        tile_chunks,
        group_size: gs,
        ..Default::default()
    };
    let enc = encode(&q.symbols(), rows, cols, bits, &opts).expect("encode");
    let label = format!(
        "fused {rows}x{cols} b{bits} g{gs} w{} chunk_rows {} tile_chunks {tile_chunks}",
        enc.weights_per_symbol(),
        enc.chunk_rows()
    );
    let m = ctx
        .upload_coded(CodedMatrixRef::from(&enc), Some(QuantParamsRef::from(&q)))
        .unwrap();
    let (want, sum_abs) = reference(&q, &x);
    // the default variant, then each variant explicitly (the subgroup one where the adapter
    // has 32-wide subgroups)
    let y = ctx
        .gemv_coded(&m, &x)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_close(&label, &y, &want, &sum_abs, cols);
    for v in fused_variants(ctx, &m) {
        let y = m
            .gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v)
            .unwrap_or_else(|e| panic!("{label} {v:?}: {e}"));
        assert_close(&format!("{label} {v:?}"), &y, &want, &sum_abs, cols);
    }
}

/// Every fused kernel that can run `m` on this adapter: the workgroup-memory one everywhere,
/// the subgroup ones on 32-wide subgroups (the blocked one where the layout allows it; it is
/// refused otherwise).
fn fused_variants(ctx: &GpuContext, m: &ecq::gpu::GpuCodedMatrix) -> Vec<FusedVariant> {
    let mut variants = vec![FusedVariant::Workgroup];
    if ctx.registry().subgroups32() {
        variants.push(FusedVariant::Subgroup);
        if m.fused_layout().blocked_steps().is_some() {
            variants.push(FusedVariant::Blocked);
            variants.push(FusedVariant::BlockedCompact);
        }
    }
    let refused: Vec<FusedVariant> = [
        FusedVariant::Subgroup,
        FusedVariant::Blocked,
        FusedVariant::BlockedCompact,
    ]
    .into_iter()
    .filter(|v| !variants.contains(v))
    .collect();
    // (an empty matrix returns before any kernel is picked)
    for v in refused
        .into_iter()
        .filter(|_| m.rows() > 0 && m.n_chunks() > 0)
    {
        let x = vec![0.0; m.cols()];
        assert!(
            matches!(
                m.gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v),
                Err(ecq::gpu::GpuError::Unsupported(_))
            ),
            "{v:?} must be refused here"
        );
    }
    variants
}

/// The blocked fused kernel at every block size (8, 4 and 2 steps), every symbol width it
/// takes, MLX group sizes 32/64/128, chunks of one step up to several rows, and a matrix whose
/// rows are not whole steps (refused, run by the others).
#[test]
fn fused_gemv_blocked_layouts() {
    let Some(ctx) = ctx() else { return };
    // (rows, cols, bits, group size, chunk symbols, wps): 4-bit w2 has 64 weights per step
    for (i, &(rows, cols, bits, gs, chunk, wps)) in [
        (17, 512, 4, 64, 16384, 2),  // 8 steps per row: block 8
        (33, 768, 4, 32, 700, 2),    // 12: block 4, chunks of about one row
        (9, 640, 4, 128, 32, 2),     // 10: block 2, one-step chunks
        (5, 14336, 4, 64, 16384, 2), // 224: block 8, chunk of about one row
        (11, 512, 8, 64, 4096, 1),   // 8-bit w1: 16 steps
        (7, 1024, 2, 32, 4096, 4),   // 2-bit w4: 8 steps
        (6, 192, 3, 32, 4096, 1),    // 3-bit w1: 6 steps, block 2
        (5, 96, 4, 32, 4096, 2),     // 1.5 steps per row: not whole steps
    ]
    .iter()
    .enumerate()
    {
        check_fused(
            ctx,
            600 + i as u64,
            rows,
            cols,
            bits,
            gs,
            chunk,
            3,
            Some(wps),
        );
    }
}

fn check_plain(ctx: &GpuContext, seed: u64, rows: usize, cols: usize, bits: u32, gs: u32) {
    let (q, x) = random_matrix(seed, rows, cols, bits, gs);
    let label = format!("qgemv {rows}x{cols} b{bits} g{gs}");
    let m = ctx.upload_quantized(&q).unwrap();
    let y = ctx
        .gemv_quantized(&m, &x)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let (want, sum_abs) = reference(&q, &x);
    assert_close(&label, &y, &want, &sum_abs, cols);
}

/// Every plain-GEMV kernel that can run `q`: the generic one, and for 4 bits `qgemv4.wgsl` with
/// each K split and `qgemv4_stream.wgsl` with each rows-per-group and K split, against the f64
/// reference.
fn check_plain_variants(ctx: &GpuContext, seed: u64, rows: usize, cols: usize, gs: u32) {
    let (q, x) = random_matrix(seed, rows, cols, 4, gs);
    let m = ctx.upload_quantized(&q).unwrap();
    let (want, sum_abs) = reference(&q, &x);
    let mut variants = vec![QGemvVariant::Generic];
    if m.nibble4_supported() {
        for ksplit in [0, 1, 2, 4, 8] {
            variants.push(QGemvVariant::Nibble4 { ksplit });
            variants.push(QGemvVariant::Pipelined { rows: 4, ksplit });
            variants.push(QGemvVariant::Pipelined { rows: 8, ksplit });
        }
    }
    if m.stream_supported() {
        for rows in [1, 2, 4] {
            for ksplit in [0, 1, 2, 4, 8] {
                variants.push(QGemvVariant::Stream { rows, ksplit });
            }
            for ksplit in [0, 1, 2] {
                if rows < 4 || ksplit != 1 {
                    variants.push(QGemvVariant::Staged { rows, ksplit });
                }
            }
        }
    }
    for v in variants {
        if v == QGemvVariant::Generic && !(cols * 4).is_multiple_of(128) {
            continue;
        }
        let label = format!("qgemv {rows}x{cols} g{gs} {v:?}");
        let y = m
            .gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_close(&label, &y, &want, &sum_abs, cols);
    }
}

/// `QGemvVariant::Int8Dot` (8-bit activations per 16-weight piece, `dot4I8Packed`) against the
/// f64 reference, within its stated bound: per piece `|scale| * d / 2 * sum(q)` with
/// `d = max|x| / 127`, plus the f32 tolerance of the exact kernels.
fn check_int8(ctx: &GpuContext, seed: u64, rows: usize, cols: usize, gs: u32) {
    let (q, x) = random_matrix(seed, rows, cols, 4, gs);
    let m = ctx.upload_quantized(&q).unwrap();
    let (want, sum_abs) = reference(&q, &x);
    let sym = q.symbols();
    let gpr = cols / gs as usize;
    for ksplit in [0, 1, 2, 4, 8] {
        let label = format!("qgemv int8 {rows}x{cols} g{gs} ksplit {ksplit}");
        let y = m
            .gemv_with(
                ctx.device(),
                ctx.queue(),
                ctx.registry(),
                &x,
                QGemvVariant::Int8Dot { ksplit },
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        for r in 0..rows {
            let mut quant = 0.0f64;
            for p in 0..cols / 16 {
                let xs = &x[p * 16..p * 16 + 16];
                let d = xs.iter().fold(0.0f64, |a, &v| a.max(v.abs() as f64)) / 127.0;
                let s = q.scales[r * gpr + p * 16 / gs as usize].abs() as f64;
                let qs: f64 = sym[r * cols + p * 16..r * cols + p * 16 + 16]
                    .iter()
                    .map(|&v| v as f64)
                    .sum();
                quant += s * d / 2.0 * qs;
            }
            let tol = quant * 1.001 + TOL_PER_TERM * (cols as f64 + 64.0) * (sum_abs[r] + quant);
            let err = (y[r] as f64 - want[r]).abs();
            assert!(
                err <= tol + 1e-30,
                "{label}: y[{r}] = {} expected {} (error {err:e} > bound {tol:e})",
                y[r],
                want[r]
            );
        }
    }
}

#[test]
fn plain_gemv_int8_dot_within_bound() {
    let Some(ctx) = ctx() else { return };
    for (i, &(rows, cols, gs)) in [(1, 32, 32), (37, 1024, 64), (9, 1056, 32), (33, 14336, 128)]
        .iter()
        .enumerate()
    {
        check_int8(ctx, 950 + i as u64, rows, cols, gs);
    }
}

#[test]
fn plain_gemv_4bit_every_ksplit() {
    let Some(ctx) = ctx() else { return };
    // rows not a multiple of 4 or of 32 / ksplit; K pieces not a multiple of the group stride
    for (i, &(rows, cols, gs)) in [
        (1, 32, 32),
        (5, 64, 64),
        (37, 1024, 64),
        (70, 4096, 128),
        (9, 1056, 32),
        (33, 14336, 64),
        (131, 2080, 32),
    ]
    .iter()
    .enumerate()
    {
        check_plain_variants(ctx, 900 + i as u64, rows, cols, gs);
    }
    // the K split choice
    let (q, _) = random_matrix(1, 8, 4096, 4, 64);
    let m = ctx.upload_quantized(&q).unwrap();
    assert_eq!(m.auto_ksplit(), 4);
    assert!(m.nibble4_supported());
    let (q, _) = random_matrix(1, 4, 256, 8, 64);
    let m = ctx.upload_quantized(&q).unwrap();
    assert!(!m.nibble4_supported());
    assert!(m
        .gemv_with(
            ctx.device(),
            ctx.queue(),
            ctx.registry(),
            &[0.0; 256],
            QGemvVariant::Nibble4 { ksplit: 0 }
        )
        .is_err());
}

/// `QGemvVariant::Stream` on matrices it cannot run: 4-bit groups that are not whole 32-weight
/// pieces fall back to the default kernel (still exact), other bit widths and bad parameters
/// are refused.
#[test]
fn plain_gemv_stream_fallback_and_errors() {
    let Some(ctx) = ctx() else { return };
    // 4 bits, group size 16 (not an MLX size, but the upload accepts it): qgemv4 runs it
    let (rows, cols, gs) = (7usize, 96usize, 16u32);
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let symbols: Vec<u8> = (0..rows * cols)
        .map(|_| rng.random_range(0..16u8))
        .collect();
    let groups = rows * cols / gs as usize;
    let q = QuantizedMatrix {
        rows,
        cols,
        bits: 4,
        group_size: gs,
        dtype: FloatDType::F32,
        packed: ecq::quant::pack(&symbols, 4),
        scales: (0..groups).map(|_| gaussian(&mut rng) * 0.01).collect(),
        biases: (0..groups).map(|_| gaussian(&mut rng) * 0.1).collect(),
    };
    let x: Vec<f32> = (0..cols).map(|_| gaussian(&mut rng)).collect();
    let m = ctx.upload_quantized(&q).unwrap();
    assert!(m.nibble4_supported());
    assert!(!m.stream_supported());
    let (want, sum_abs) = reference_symbols(&q, &symbols, &x);
    for v in [1, 2, 4].into_iter().flat_map(|rows| {
        [
            QGemvVariant::Stream { rows, ksplit: 0 },
            QGemvVariant::Staged { rows, ksplit: 0 },
        ]
    }) {
        let y = m
            .gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v)
            .unwrap();
        assert_close(&format!("fallback {v:?}"), &y, &want, &sum_abs, cols);
    }
    // supported shape, bad parameters
    let (q, x) = random_matrix(78, 5, 256, 4, 64);
    let m = ctx.upload_quantized(&q).unwrap();
    assert!(m.stream_supported());
    for v in [
        QGemvVariant::Stream { rows: 3, ksplit: 0 },
        QGemvVariant::Stream { rows: 2, ksplit: 3 },
        QGemvVariant::Staged { rows: 3, ksplit: 0 },
        QGemvVariant::Staged { rows: 2, ksplit: 4 },
        QGemvVariant::Staged { rows: 4, ksplit: 1 },
        QGemvVariant::Pipelined { rows: 2, ksplit: 0 },
        QGemvVariant::Pipelined { rows: 8, ksplit: 3 },
    ] {
        assert!(m
            .gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v)
            .is_err());
    }
    // 8 bits: no 4-bit kernel at all
    let (q, x) = random_matrix(79, 4, 256, 8, 64);
    let m = ctx.upload_quantized(&q).unwrap();
    assert!(!m.stream_supported());
    assert!(m
        .gemv_with(
            ctx.device(),
            ctx.queue(),
            ctx.registry(),
            &x,
            QGemvVariant::Stream { rows: 2, ksplit: 0 }
        )
        .is_err());
    // the automatic K split keeps >= TARGET groups where K allows it
    let (q, _) = random_matrix(1, 8, 4096, 4, 64);
    let m = ctx.upload_quantized(&q).unwrap();
    assert_eq!(m.stream_auto_ksplit(1), 2);
    assert_eq!(m.stream_auto_ksplit(4), 2);
    assert_eq!(m.staged_auto_ksplit(1), 2);
    assert_eq!(m.staged_auto_ksplit(4), 2);
    let (q, _) = random_matrix(1, 4096, 1024, 4, 64);
    let m = ctx.upload_quantized(&q).unwrap();
    assert_eq!(m.staged_auto_ksplit(1), 1);
    assert_eq!(m.staged_auto_ksplit(2), 1);
}

fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(10, 0xEC0_0001))]
    #[test]
    fn fused_gemv_matches_reference(
        seed in any::<u64>(),
        rows in 1usize..40,
        groups in 1usize..6,
        bits in prop::sample::select(vec![2u32, 3, 4, 5, 6, 8]),
        gs in prop::sample::select(vec![32u32, 64, 128]),
        chunk_symbols in prop::sample::select(vec![1usize, 100, 16384]),
        tile_chunks in 1usize..6,
    ) {
        let Some(ctx) = ctx() else { return Ok(()) };
        check_fused(ctx, seed, rows, groups * gs as usize, bits, gs, chunk_symbols, tile_chunks, None);
    }

    #[test]
    fn plain_gemv_matches_reference(
        seed in any::<u64>(),
        rows in 1usize..40,
        groups in 1usize..6,
        bits in prop::sample::select(vec![2u32, 4, 8]),
        gs in prop::sample::select(vec![32u32, 64, 128]),
    ) {
        let Some(ctx) = ctx() else { return Ok(()) };
        let mut cols = groups * gs as usize;
        // rows of whole 16-byte vectors: cols * bits % 128 == 0
        while !(cols * bits as usize).is_multiple_of(128) {
            cols += gs as usize;
        }
        check_plain(ctx, seed, rows, cols, bits, gs);
    }
}

#[test]
fn fused_gemv_all_symbol_widths() {
    let Some(ctx) = ctx() else { return };
    let mut seed = 500;
    for bits in [2u32, 3, 4, 5, 6, 8] {
        for wps in [1u32, 2, 4] {
            if bits * wps > 8 {
                continue;
            }
            check_fused(ctx, seed, 9, 256, bits, 64, 512, 2, Some(wps));
            seed += 1;
        }
    }
}

#[test]
fn gemv_large_k() {
    let Some(ctx) = ctx() else { return };
    check_plain(ctx, 1, 5, 16384, 4, 64);
    check_plain(ctx, 2, 3, 16384, 8, 128);
    check_plain(ctx, 3, 3, 16384, 2, 32);
    check_fused(ctx, 4, 5, 16384, 4, 64, 16384, 4, None);
    check_fused(ctx, 5, 3, 16384, 3, 64, 4096, 1, None);
}

#[test]
fn gemv_f16_activations() {
    let Some(ctx) = ctx() else { return };
    let (q, x) = random_matrix(77, 13, 512, 4, 64);
    let xh: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    let xr: Vec<f32> = xh.iter().map(|v| v.to_f32()).collect();
    let (want, sum_abs) = reference(&q, &xr);
    let m = ctx.upload_quantized(&q).unwrap();
    assert_close(
        "qgemv f16",
        &ctx.gemv_quantized_f16(&m, &xh).unwrap(),
        &want,
        &sum_abs,
        512,
    );
    let enc = encode(&q.symbols(), 13, 512, 4, &EncodeOptions::default()).unwrap();
    let m = ctx
        .upload_coded(CodedMatrixRef::from(&enc), Some(QuantParamsRef::from(&q)))
        .unwrap();
    assert_close(
        "fused f16",
        &ctx.gemv_coded_f16(&m, &xh).unwrap(),
        &want,
        &sum_abs,
        512,
    );
}

#[test]
fn fused_gemv_reports_corrupt_stream() {
    let Some(ctx) = ctx() else { return };
    let (q, x) = random_matrix(78, 16, 256, 4, 64);
    let opts = EncodeOptions {
        chunk_symbols: 256,
        tile_chunks: 2,
        ..Default::default()
    };
    let enc = encode(&q.symbols(), 16, 256, 4, &opts).unwrap();
    // an initial state below 2^16 in chunk 3
    let mut states = enc.states().to_vec();
    let c = 3;
    states[c * 32 + 4] = 17;
    let mut r = CodedMatrixRef::from(&enc);
    r.states = &states;
    let m = ctx.upload_coded(r, Some(QuantParamsRef::from(&q))).unwrap();
    match ctx.gemv_coded(&m, &x) {
        Err(ecq::gpu::GpuError::CorruptStream { chunk, .. }) => assert_eq!(chunk, c),
        other => panic!("expected CorruptStream, got {other:?}"),
    }
    for v in fused_variants(ctx, &m) {
        match m.gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v) {
            Err(ecq::gpu::GpuError::CorruptStream { chunk, .. }) => assert_eq!(chunk, c, "{v:?}"),
            other => panic!("{v:?}: expected CorruptStream, got {other:?}"),
        }
    }
    // the lanes fused GEMV (byte symbols) at every group width the device's subgroups take
    for (w, _, reg) in gpu_common::lanes_registries().iter().filter(|l| l.1) {
        assert_eq!(ecq::gpu::lanes_gemv_width(reg, &m.fused_layout()), Some(*w));
        match m.gemv_with(ctx.device(), ctx.queue(), reg, &x, FusedVariant::Workgroup) {
            Err(ecq::gpu::GpuError::CorruptStream { chunk, .. }) => assert_eq!(chunk, c, "W={w}"),
            other => panic!("lanes W={w}: expected CorruptStream, got {other:?}"),
        }
    }
}

/// The plain 4-bit kernel's diagnostic builds (for measuring its limit) compile and launch;
/// other diagnostic numbers and shapes the kernel cannot run are refused.
#[test]
fn plain_gemv_diagnostic_builds() {
    let Some(ctx) = ctx() else { return };
    let (q, _) = random_matrix(79, 8, 256, 4, 64);
    let m = ctx.upload_quantized(&q).unwrap();
    let buf = |n: u64| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 4 * n,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (xb, yb) = (buf(256), buf(8));
    for diag in 1..=3 {
        let d = m
            .pipelined_diagnostic_dispatch(ctx.device(), ctx.registry(), &xb, &yb, diag)
            .unwrap();
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            d.record(&mut pass);
        }
        ctx.queue().submit([enc.finish()]);
    }
    for diag in [0, 4] {
        assert!(matches!(
            m.pipelined_diagnostic_dispatch(ctx.device(), ctx.registry(), &xb, &yb, diag),
            Err(ecq::gpu::GpuError::InvalidInput(_))
        ));
    }
}

/// The blocked fused kernel's diagnostic builds (decode only, dot products only) compile and
/// launch where the kernel runs, and are refused elsewhere; other diagnostic numbers are
/// refused.
#[test]
fn fused_blocked_diagnostic_builds() {
    let Some(ctx) = ctx() else { return };
    let (q, _) = random_matrix(80, 8, 512, 4, 64);
    let enc = encode(&q.symbols(), 8, 512, 4, &EncodeOptions::default()).unwrap();
    let m = ctx
        .upload_coded(CodedMatrixRef::from(&enc), Some(QuantParamsRef::from(&q)))
        .unwrap();
    let buf = |n: u64| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 4 * n,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    // launches the builds, or checks that they are refused without 32-wide subgroups
    let launch = |m: &ecq::gpu::GpuCodedMatrix, cols: u64, diags: &[u32]| {
        let (xb, yb) = (buf(cols), buf(8));
        for &diag in diags {
            let d = m.blocked_diagnostic_dispatch(ctx.device(), ctx.registry(), &xb, &yb, diag);
            if !ctx.registry().subgroups32() {
                assert!(
                    matches!(d, Err(ecq::gpu::GpuError::Unsupported(_))),
                    "{d:?}"
                );
                continue;
            }
            let d = d.unwrap();
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                d.record(&mut pass);
            }
            ctx.queue().submit([enc.finish()]);
        }
    };
    launch(&m, 512, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let (xb, yb) = (buf(512), buf(8));
    for diag in [0, 9, 13, 17] {
        assert!(matches!(
            m.blocked_diagnostic_dispatch(ctx.device(), ctx.registry(), &xb, &yb, diag),
            Err(ecq::gpu::GpuError::InvalidInput(_))
        ));
    }
    // a window split's builds: decode only, dot products only, no activation sums, no window
    // start, loads and setup only, setup only, two states a lane (kernel, decode only), no
    // table build, four states a lane (kernel, decode only)
    let (m, _) = upload_window(ctx, 81, 8, 1024, ecq::rans::SplitOrder::RowPairs);
    launch(&m, 1024, &[1, 2, 9, 10, 11, 12, 13, 14, 15, 17, 18]);
    let (xb, yb) = (buf(1024), buf(8));
    for diag in [21, 100] {
        assert!(matches!(
            m.blocked_diagnostic_dispatch(ctx.device(), ctx.registry(), &xb, &yb, diag),
            Err(ecq::gpu::GpuError::InvalidInput(_))
        ));
    }
}

/// The blocked fused kernels and the workgroup one reading their decode tables from memory
/// (built once on the host, `GpuCodedMatrix::set_tables_in_memory`, the default) give, bit for
/// bit, what they give building the tables in every workgroup (with them on a device running
/// the lanes kernels, the lanes fused GEMV runs instead, within the reference's bound either
/// way), and the blocked decodes of the same matrices give
/// the CPU's words either way (a window split reading the tables decodes in
/// `rans_decode_window.wgsl`, the others build theirs): whole symbols, the 2 + 2 split and a
/// window split in row pairs, tiles of three chunks (several tables a matrix), both table
/// forms. Frequencies that do not sum to 2^n in one tile are reported for that tile's first
/// chunk by the fused GEMV and the decode, as with the built tables.
#[test]
fn fused_tables_in_memory_bit_identical() {
    let Some(ctx) = ctx() else { return };
    let (q, x) = random_matrix(2300, 24, 1024, 4, 64);
    let quant = QuantParamsRef::from(&q);
    let syms = q.symbols();
    let whole = encode(&syms, 24, 1024, 4, &small_tiles(512, 64)).unwrap();
    let pairs = ecq::rans::SplitMatrix::encode_ordered(
        &syms,
        24,
        1024,
        4,
        2,
        &small_tiles(1024, 64),
        ecq::rans::SplitOrder::RowPairs,
    )
    .unwrap();
    let window = ecq::rans::SplitMatrix::encode_window(
        &syms,
        24,
        1024,
        &small_tiles(256, 64),
        ecq::rans::SplitOrder::RowPairs,
    )
    .unwrap();
    let upload = |what: &str| match what {
        "whole" => ctx.upload_coded(CodedMatrixRef::from(&whole), Some(quant)),
        "2 + 2 pairs" => ctx.upload_split(&pairs, Some(quant)),
        _ => ctx.upload_split(&window, Some(quant)),
    };
    let cpu_words = |what: &str| match what {
        "whole" => whole.decode_packed().unwrap(),
        "2 + 2 pairs" => pairs.decode_packed().unwrap(),
        _ => window.decode_packed().unwrap(),
    };
    let gemv = |m: &ecq::gpu::GpuCodedMatrix, v| {
        m.gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v)
    };
    for what in ["whole", "2 + 2 pairs", "window pairs"] {
        let want = cpu_words(what);
        let mut built = upload(what).unwrap();
        let mem = upload(what).unwrap();
        assert!(mem.tables_in_memory(), "the default");
        built.set_tables_in_memory(false);
        assert!(!built.tables_in_memory());
        for v in [FusedVariant::Blocked, FusedVariant::BlockedCompact] {
            let (a, b) = (gemv(&built, v), gemv(&mem, v));
            if !ctx.registry().subgroups32() {
                assert!(
                    matches!(b, Err(ecq::gpu::GpuError::Unsupported(_))),
                    "{what} {v:?}: {b:?}"
                );
                continue;
            }
            let (a, b) = (
                a.unwrap(),
                b.unwrap_or_else(|e| panic!("{what} {v:?}: {e}")),
            );
            assert_eq!(bits(a), bits(b), "{what} {v:?}");
            for m in [&built, &mem] {
                let got = m
                    .decode_with(
                        ctx.device(),
                        ctx.queue(),
                        ctx.registry(),
                        DecodeOutput::Packed,
                        Some(v),
                    )
                    .unwrap_or_else(|e| panic!("{what} {v:?} decode: {e}"));
                assert!(
                    got == want,
                    "{what} {v:?} decode, tables in memory {}: GPU and CPU words differ",
                    m.tables_in_memory()
                );
            }
            // 2.5 KiB a tile at 11 probability bits, held once the first launch built them
            assert_eq!(
                (built.table_bytes(), mem.table_bytes() % 2576),
                (0, 0),
                "{what}"
            );
            assert!(
                mem.table_bytes() >= 2 * 2576,
                "{what}: {}",
                mem.table_bytes()
            );
        }
        // the workgroup kernel reads them too (every device), bit for bit what it gives
        // building them
        let wg = |m: &ecq::gpu::GpuCodedMatrix| {
            gemv(m, FusedVariant::Workgroup).unwrap_or_else(|e| panic!("{what} Workgroup: {e}"))
        };
        // (except where the host's tables put the matrix on the lanes fused GEMV, devices
        // without 32-wide subgroups that run the lanes kernels: a kernel summing in another
        // order, checked against the reference)
        let y = wg(&mem);
        let (want, sum_abs) = reference(&q, &x);
        if ecq::gpu::lanes_gemv_width(ctx.registry(), &mem.fused_layout()).is_none() {
            assert_eq!(bits(y.clone()), bits(wg(&built)), "{what} Workgroup");
        } else {
            let y = wg(&built);
            assert_close(
                &format!("{what} Workgroup built"),
                &y,
                &want,
                &sum_abs,
                1024,
            );
        }
        assert!(mem.table_bytes() >= 2 * 2576, "{what} Workgroup");
        assert_close(&format!("{what} Workgroup"), &y, &want, &sum_abs, 1024);
    }
    // tile 1 (chunks 3..6) of the whole matrix with one frequency too many
    let mut freqs = whole.freqs().to_vec();
    let a = 1usize << (whole.bits() * whole.weights_per_symbol());
    let s = (a..2 * a).find(|&i| freqs[i] > 0).unwrap();
    freqs[s] += 1;
    let mut r = CodedMatrixRef::from(&whole);
    r.freqs = &freqs;
    let expect_bad_tile_1 = |what: String, r: Result<(), ecq::gpu::GpuError>| match r {
        Err(ecq::gpu::GpuError::CorruptStream {
            chunk, tile, flags, ..
        }) => {
            assert_eq!((chunk, tile), (3, 1), "{what}");
            assert_ne!(flags & ecq::gpu::error_bits::TABLE, 0, "{what}: {flags:#x}");
        }
        other => panic!("{what}: expected CorruptStream, got {other:?}"),
    };
    for on in [false, true] {
        let mut m = ctx.upload_coded(r, Some(quant)).unwrap();
        m.set_tables_in_memory(on);
        expect_bad_tile_1(
            format!("fused GEMV, tables in memory {on} Workgroup"),
            gemv(&m, FusedVariant::Workgroup).map(drop),
        );
        if !ctx.registry().subgroups32() {
            continue;
        }
        for v in [FusedVariant::Blocked, FusedVariant::BlockedCompact] {
            expect_bad_tile_1(
                format!("fused GEMV, tables in memory {on} {v:?}"),
                gemv(&m, v).map(drop),
            );
            expect_bad_tile_1(
                format!("decode, tables in memory {on} {v:?}"),
                m.decode_with(
                    ctx.device(),
                    ctx.queue(),
                    ctx.registry(),
                    DecodeOutput::Packed,
                    Some(v),
                )
                .map(drop),
            );
        }
    }
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "decode tables in memory: the blocked fused kernels need 32-wide subgroups; the workgroup kernel was checked",
        );
    }
}

/// A random 4-bit g64 matrix as a window split (default options) on the GPU, and activations.
fn upload_window(
    ctx: &GpuContext,
    seed: u64,
    rows: usize,
    cols: usize,
    order: ecq::rans::SplitOrder,
) -> (ecq::gpu::GpuCodedMatrix, Vec<f32>) {
    let (q, x) = random_matrix(seed, rows, cols, 4, 64);
    let w = ecq::rans::SplitMatrix::encode_window(
        &q.symbols(),
        rows,
        cols,
        &EncodeOptions::default(),
        order,
    )
    .unwrap();
    let quant = QuantParamsRef::from(&q);
    (ctx.upload_split(&w, Some(quant)).unwrap(), x)
}

/// Encoder options for the split and window cases: `chunk` symbols a chunk, tiles of three
/// chunks (several tables per matrix), MLX group size `gs`.
fn small_tiles(chunk: usize, gs: u32) -> EncodeOptions {
    EncodeOptions {
        chunk_symbols: chunk,
        tile_chunks: 3,
        group_size: gs,
        ..Default::default()
    }
}

/// The fused GEMV of a split matrix `m` (the weights of `q`) against the f64 reference within
/// the tolerance above: the default kernel, the workgroup one and, with 32-wide subgroups, both
/// blocked ones; the subgroup kernel refuses split matrices.
fn check_split_gemv(
    ctx: &GpuContext,
    m: &ecq::gpu::GpuCodedMatrix,
    q: &QuantizedMatrix,
    x: &[f32],
    label: &str,
) {
    let r = m.gemv_with(
        ctx.device(),
        ctx.queue(),
        ctx.registry(),
        x,
        FusedVariant::Subgroup,
    );
    assert!(
        matches!(r, Err(ecq::gpu::GpuError::Unsupported(_))),
        "{label}: {r:?}"
    );
    let (want, sum_abs) = reference(q, x);
    let y = ctx
        .gemv_coded(m, x)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_close(label, &y, &want, &sum_abs, q.cols);
    let mut kernels = vec![FusedVariant::Workgroup];
    if ctx.registry().subgroups32() {
        kernels.extend([FusedVariant::Blocked, FusedVariant::BlockedCompact]);
    }
    for v in kernels {
        let y = m
            .gemv_with(ctx.device(), ctx.queue(), ctx.registry(), x, v)
            .unwrap_or_else(|e| panic!("{label} {v:?}: {e}"));
        assert_close(&format!("{label} {v:?}"), &y, &want, &sum_abs, q.cols);
    }
}

/// Split matrices (coded high 2 bits, raw low 2 bits of MLX 4-bit weights) in the blocked fused
/// kernel at every block size (8, 4 and 2 steps of four weights per symbol) and in the workgroup
/// kernel, MLX group sizes 32/64/128 and chunks of one step up to several rows, against the f64
/// reference on the same weights within the tolerance above (the merge is exact integer work,
/// the sums are those of unsplit weights); the subgroup kernel refuses them.
#[test]
fn fused_gemv_split_low_bits() {
    let Some(ctx) = ctx() else { return };
    // (rows, cols, group size, chunk symbols): 4-bit split has 128 weights per step
    for (i, &(rows, cols, gs, chunk)) in [
        (17, 1024, 64, 16384), // 8 steps per row: block 8
        (33, 1536, 32, 300),   // 12: block 4, chunks of about one row
        (9, 1280, 128, 32),    // 10: block 2, one-step chunks
        (5, 14336, 64, 16384), // 112: block 8
        (3, 4096, 64, 2048),   // 32: block 8, one row per chunk
    ]
    .iter()
    .enumerate()
    {
        let (q, x) = random_matrix(900 + i as u64, rows, cols, 4, gs);
        let opts = small_tiles(chunk, gs);
        let s = ecq::rans::SplitMatrix::encode(&q.symbols(), rows, cols, 4, 2, &opts).unwrap();
        let label = format!(
            "split {rows}x{cols} g{gs} chunk_rows {}",
            s.high().chunk_rows()
        );
        let m = ctx
            .upload_split(&s, Some(QuantParamsRef::from(&q)))
            .unwrap();
        check_split_gemv(ctx, &m, &q, &x, &label);
    }
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "split fused GEMV: the blocked kernel needs 32-wide subgroups; the workgroup kernel was checked",
        );
    }
}

/// Split matrices in row-pair order (`SplitOrder::RowPairs`: two rows' symbols interleaved in
/// runs of four steps, so a block's two words share their activations) in the blocked fused
/// kernel, both tables, and in the workgroup kernel (lavapipe in CI), against the f64
/// reference within the tolerance above (the same exact merge, the same sums per row); decoded
/// on the GPU into a plain matrix, whose GEMV matches a host upload of the same weights bit
/// for bit. The subgroup kernel refuses the order.
#[test]
fn fused_gemv_row_pairs() {
    let Some(ctx) = ctx() else { return };
    // (rows, cols, group size, chunk symbols): a coded row is two rows, 8 steps per 512 columns
    for (i, &(rows, cols, gs, chunk)) in [
        (2, 512, 64, 16384),  // one pair, one 8-step block per coded row
        (18, 1536, 32, 300),  // 24 steps per coded row, a pair per chunk
        (6, 14336, 64, 8192), // 224 steps per coded row
        (8, 4096, 128, 2048), // one pair per chunk
        (34, 1024, 64, 4096), // 8 pairs per chunk, a last chunk of one
    ]
    .iter()
    .enumerate()
    {
        let (q, x) = random_matrix(1400 + i as u64, rows, cols, 4, gs);
        let opts = small_tiles(chunk, gs);
        let s = ecq::rans::SplitMatrix::encode_ordered(
            &q.symbols(),
            rows,
            cols,
            4,
            2,
            &opts,
            ecq::rans::SplitOrder::RowPairs,
        )
        .unwrap();
        let label = format!(
            "row pairs {rows}x{cols} g{gs} coded chunk_rows {}",
            s.high().chunk_rows()
        );
        let quant = QuantParamsRef::from(&q);
        let m = ctx.upload_split(&s, Some(quant)).unwrap();
        assert!(m.row_pairs(), "{label}");
        assert_eq!((m.rows(), m.cols()), (rows, cols), "{label}");
        check_split_gemv(ctx, &m, &q, &x, &label);
        assert_decodes_to_plain(ctx, &m, &q, &x, &label);
    }
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "row-pair fused GEMV: the blocked kernel needs 32-wide subgroups; the workgroup kernel was checked",
        );
    }
}

/// Window splits (`SplitMatrix::encode_window`: one coded flag bit per weight, eight weights per
/// symbol, three raw bits) in the blocked fused kernel, both tables, the workgroup one and
/// the lanes one at every group width (`check_lanes_gemv`), row-major and in row pairs,
/// MLX group sizes 32/64/128, window starts 0 (no rotation), 5 (MLX weights' usual) and 13, against
/// the f64 reference within the tolerance above (the merge is exact integer work); the GPU
/// decode (blocked kernels or workgroup one) gives the CPU's MLX words exactly. The subgroup
/// fused kernel refuses them with `Unsupported`.
#[test]
fn fused_gemv_window_split() {
    let Some(ctx) = ctx() else { return };
    // (rows, cols, group size, chunk symbols, row pairs): 8-step blocks of 256 weights a step
    for (i, &(rows, cols, gs, chunk, pairs)) in [
        (17, 2048, 64, 4096, false), // 8 steps per row, two rows per chunk
        (5, 14336, 32, 900, false),  // 56 steps per row, one row per chunk
        (3, 4096, 128, 64, false),   // one-row chunks
        (2, 1024, 64, 4096, true),   // one pair, one block per coded row
        (10, 4096, 64, 1024, true),  // one pair per chunk
        (6, 14336, 128, 8192, true), // 112 steps per coded row, a last chunk of one pair
    ]
    .iter()
    .enumerate()
    {
        let (q, x) = random_matrix(2100 + i as u64, rows, cols, 4, gs);
        let opts = small_tiles(chunk, gs);
        let order = if pairs {
            ecq::rans::SplitOrder::RowPairs
        } else {
            ecq::rans::SplitOrder::Rows
        };
        let quant = QuantParamsRef::from(&q);
        let syms = q.symbols();
        for start in [ecq::rans::window_start(&syms), 0, 13] {
            let s =
                ecq::rans::SplitMatrix::encode_window_at(&syms, rows, cols, start, &opts, order)
                    .unwrap();
            let label = format!(
                "window {start} {rows}x{cols} g{gs} pairs {pairs} coded chunk_rows {}",
                s.high().chunk_rows()
            );
            let mut m = ctx.upload_split(&s, Some(quant)).unwrap();
            assert_eq!((m.rows(), m.cols(), m.bits()), (rows, cols, 4), "{label}");
            let r = m.gemv_with(
                ctx.device(),
                ctx.queue(),
                ctx.registry(),
                &x,
                FusedVariant::Subgroup,
            );
            assert!(
                matches!(r, Err(ecq::gpu::GpuError::Unsupported(_))),
                "{label}: {r:?}"
            );
            let (want, sum_abs) = reference(&q, &x);
            let y = ctx
                .gemv_coded(&m, &x)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_close(&label, &y, &want, &sum_abs, cols);
            let y = m
                .gemv_with(
                    ctx.device(),
                    ctx.queue(),
                    ctx.registry(),
                    &x,
                    FusedVariant::Workgroup,
                )
                .unwrap_or_else(|e| panic!("{label} Workgroup: {e}"));
            assert_close(&format!("{label} Workgroup"), &y, &want, &sum_abs, cols);
            // decoded on the GPU (the blocked kernels with 32-wide subgroups, else the
            // workgroup one): the CPU's MLX words exactly, and a plain GEMV on them bit for bit
            // the one on a host upload
            assert_eq!(
                ctx.decode_packed(&m)
                    .unwrap_or_else(|e| panic!("{label}: {e}")),
                s.decode_packed().unwrap(),
                "{label}: GPU decode"
            );
            assert_decodes_to_plain(ctx, &m, &q, &x, &label);
            check_lanes_gemv(ctx, &mut m, &x, (&want, &sum_abs), &label);
            if !ctx.registry().subgroups32() {
                continue;
            }
            for v in [FusedVariant::Blocked, FusedVariant::BlockedCompact] {
                let y = m
                    .gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v)
                    .unwrap_or_else(|e| panic!("{label} {v:?}: {e}"));
                assert_close(&format!("{label} {v:?}"), &y, &want, &sum_abs, cols);
            }
        }
    }
    // rows of two steps are not whole 4-step blocks: refused by name (the lanes kernels too)
    let (m, x) = upload_window(ctx, 2199, 4, 512, ecq::rans::SplitOrder::Rows);
    for (_, _, reg) in gpu_common::lanes_registries() {
        assert_eq!(ecq::gpu::lanes_gemv_width(reg, &m.fused_layout()), None);
        let r = m.gemv_with(ctx.device(), ctx.queue(), reg, &x, FusedVariant::Workgroup);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("1024-weight")),
            "{r:?}"
        );
    }
    let r = m.gemv_with(
        ctx.device(),
        ctx.queue(),
        ctx.registry(),
        &x,
        FusedVariant::Blocked,
    );
    assert!(
        matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e))
            if e.contains("4-step blocks") || !ctx.registry().subgroups32()),
        "{r:?}"
    );
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "window split: the blocked fused and decode kernels need 32-wide subgroups; the workgroup fused and decode kernels were checked",
        );
    }
}

/// The fused GEMV of the window split `m` on the lanes kernel (`rans_gemv_lanes.wgsl`: a
/// chunk's 32 lanes run by W invocations, 32 / W lanes each; what GPUs without 32-wide
/// subgroups run) at every group width W, against the reference `(want, sum_abs)` within the
/// tolerance above (its sums come in another order, a butterfly over the group's W partial
/// sums; the bound holds for any order); where W does not divide the device's subgroups
/// every chunk is reported (the layout check), never a wrong `y`. Without the host's tables
/// the workgroup kernel runs it instead (`m` gets them back after).
fn check_lanes_gemv(
    ctx: &GpuContext,
    m: &mut ecq::gpu::GpuCodedMatrix,
    x: &[f32],
    (want, sum_abs): (&[f64], &[f64]),
    label: &str,
) {
    let lanes = gpu_common::lanes_registries();
    for (w, fits, reg) in lanes {
        assert_eq!(
            ecq::gpu::lanes_gemv_width(reg, &m.fused_layout()),
            Some(*w),
            "{label}: the lanes GEMV should take this matrix"
        );
        let r = m.gemv_with(ctx.device(), ctx.queue(), reg, x, FusedVariant::Workgroup);
        let label = format!("{label} lanes W={w}");
        if *fits {
            let y = r.unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_close(&label, &y, want, sum_abs, x.len());
        } else {
            gpu_common::assert_every_chunk_flagged(r, m.n_chunks(), &label);
        }
    }
    if let Some((w, _, reg)) = lanes.iter().find(|l| l.1) {
        m.set_tables_in_memory(false);
        assert_eq!(ecq::gpu::lanes_gemv_width(reg, &m.fused_layout()), None);
        let y = m
            .gemv_with(ctx.device(), ctx.queue(), reg, x, FusedVariant::Workgroup)
            .unwrap_or_else(|e| panic!("{label} W={w}, tables built: {e}"));
        assert_close(&format!("{label} W={w} built"), &y, want, sum_abs, x.len());
        m.set_tables_in_memory(true);
    }
}

/// Byte symbols in the lanes fused GEMV (`rans_gemv_lanes.wgsl`, devices without 32-wide
/// subgroups) at every group width W (`check_lanes_gemv`), against the f64 reference within
/// the tolerance above: matrices coded whole at two 4-bit weights, one 8-bit or four 2-bit
/// weights a symbol, rows of whole steps and rows whose last step holds fewer than 32 symbols
/// (or a row of fewer than 32), MLX groups of 32 to 128, chunks of a few symbols to several
/// rows; split 2 + 2 matrices in rows and in row pairs. Forms it does not take (symbols other
/// than bytes) are left to the workgroup kernel, which gives the same result.
#[test]
fn fused_gemv_lanes_byte_symbols() {
    let Some(ctx) = ctx() else { return };
    if gpu_common::lanes_registries().is_empty() {
        gpu_common::announce_unsupported("lanes fused GEMV: no subgroup operations here");
        return;
    }
    // (rows, cols, bits, weights per symbol, group size, chunk symbols)
    for (i, &(rows, cols, bits, wps, gs, chunk)) in [
        (9, 256, 4, 2, 64, 512),    // 4 steps a row, two rows a chunk
        (7, 96, 4, 2, 32, 100),     // 48 symbols a row: a last step of 16
        (3, 32, 4, 2, 32, 16),      // 16 symbols a row, chunks of one row
        (5, 4096, 4, 2, 128, 4096), // 64 steps a row
        (6, 160, 8, 1, 32, 300),    // 8-bit, 5 steps a row
        (4, 352, 8, 1, 32, 700),    // 11 steps a row
        (11, 640, 2, 4, 128, 1000), // 2-bit, 5 steps a row
        (2, 1536, 2, 4, 64, 96),    // 12 steps a row, 96-symbol chunks
    ]
    .iter()
    .enumerate()
    {
        let (q, x) = random_matrix(2500 + i as u64, rows, cols, bits, gs);
        let opts = EncodeOptions {
            weights_per_symbol: Some(wps),
            chunk_symbols: chunk,
            tile_chunks: 3,
            group_size: gs,
            ..Default::default()
        };
        let enc = encode(&q.symbols(), rows, cols, bits, &opts).expect("encode");
        let label = format!(
            "whole {rows}x{cols} b{bits} w{wps} g{gs} chunk_rows {}",
            enc.chunk_rows()
        );
        let mut m = ctx
            .upload_coded(CodedMatrixRef::from(&enc), Some(QuantParamsRef::from(&q)))
            .unwrap();
        assert!(m.fused_layout().lanes_symbol_words(), "{label}");
        let (want, sum_abs) = reference(&q, &x);
        check_lanes_gemv(ctx, &mut m, &x, (&want, &sum_abs), &label);
    }
    // split 2 + 2: (rows, cols, group size, chunk symbols, order)
    for (i, &(rows, cols, gs, chunk, pairs)) in [
        (17, 1024, 64, 16384, false), // 8 steps a row
        (9, 1280, 128, 32, false),    // 10 steps a row, one-step chunks
        (18, 1536, 32, 300, true),    // 24 steps a coded row, a pair a chunk
        (34, 1024, 64, 4096, true),   // 8 pairs a chunk, a last chunk of one
    ]
    .iter()
    .enumerate()
    {
        let (q, x) = random_matrix(2550 + i as u64, rows, cols, 4, gs);
        let order = if pairs {
            ecq::rans::SplitOrder::RowPairs
        } else {
            ecq::rans::SplitOrder::Rows
        };
        let opts = small_tiles(chunk, gs);
        let s =
            ecq::rans::SplitMatrix::encode_ordered(&q.symbols(), rows, cols, 4, 2, &opts, order)
                .unwrap();
        let label = format!(
            "split {rows}x{cols} g{gs} pairs {pairs} chunk_rows {}",
            s.high().chunk_rows()
        );
        let mut m = ctx
            .upload_split(&s, Some(QuantParamsRef::from(&q)))
            .unwrap();
        let (want, sum_abs) = reference(&q, &x);
        check_lanes_gemv(ctx, &mut m, &x, (&want, &sum_abs), &label);
    }
    // symbols other than bytes (3-bit weights two a symbol, 4-bit ones a symbol): the
    // workgroup kernel
    for (bits, wps) in [(3u32, 2u32), (4, 1)] {
        let (q, x) = random_matrix(2590 + bits as u64, 5, 256, bits, 64);
        let opts = EncodeOptions {
            weights_per_symbol: Some(wps),
            chunk_symbols: 256,
            tile_chunks: 2,
            group_size: 64,
            ..Default::default()
        };
        let enc = encode(&q.symbols(), 5, 256, bits, &opts).expect("encode");
        let m = ctx
            .upload_coded(CodedMatrixRef::from(&enc), Some(QuantParamsRef::from(&q)))
            .unwrap();
        let (want, sum_abs) = reference(&q, &x);
        for (w, _, reg) in gpu_common::lanes_registries() {
            let label = format!("b{bits} w{wps} W={w}");
            assert_eq!(
                ecq::gpu::lanes_gemv_width(reg, &m.fused_layout()),
                None,
                "{label}"
            );
            let y = m
                .gemv_with(ctx.device(), ctx.queue(), reg, &x, FusedVariant::Workgroup)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_close(&label, &y, &want, &sum_abs, 256);
        }
    }
}

/// Runs blocked diagnostic build `diag` of `m` on `x` and reads `y` back (NaN where the kernel
/// wrote nothing).
fn run_blocked_diag(
    ctx: &GpuContext,
    m: &ecq::gpu::GpuCodedMatrix,
    x: &[f32],
    diag: u32,
) -> Result<Vec<f32>, ecq::gpu::GpuError> {
    use wgpu::util::DeviceExt;
    let dev = ctx.device();
    let xb = input(dev, x);
    let yb = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("y"),
        contents: bytemuck::cast_slice(&vec![f32::NAN; m.rows()]),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let d = m.blocked_diagnostic_dispatch(dev, ctx.registry(), &xb, &yb, diag)?;
    let y = run_read(ctx, &d, &yb, m.rows());
    m.check_errors(dev, ctx.queue())?;
    Ok(y)
}

/// Window splits in the blocked fused kernel with two and four groups of 32 lanes a chunk
/// (`GpuCodedMatrix::set_chunk_subgroups`: each group decodes the whole chunk and multiplies
/// every second or fourth block, the row sums meet in workgroup memory) agree with the f64
/// reference within the tolerance above, both tables and both table forms, row-major and in
/// row pairs, chunks of one to four coded rows, a last chunk of fewer rows, blocks per row
/// not a multiple of the groups; on 8-bit activations they give what one group gives within
/// the x8 kernel's own rounding (the same products, summed in another order). Diagnostic
/// builds 19 and 20 are the same launches, bit for bit. Other counts are refused, and so are
/// chunks of more than four coded rows and matrices coded whole, by name.
#[test]
fn fused_window_groups_per_chunk() {
    let Some(ctx) = ctx() else { return };
    // (rows, cols, group size, chunk symbols, row pairs)
    for (i, &(rows, cols, gs, chunk, pairs)) in [
        (10, 4096, 64, 1024, true),  // one pair per chunk, 8 blocks a coded row
        (10, 4096, 64, 2048, true),  // two pairs per chunk, the last one pair
        (8, 1024, 128, 256, true),   // one pair per chunk, 2 blocks a coded row
        (13, 3072, 64, 1536, false), // four rows per chunk, 3 blocks a row, last chunk one row
        (5, 14336, 32, 1792, false), // one row per chunk, 14 blocks a row
    ]
    .iter()
    .enumerate()
    {
        let (q, x) = random_matrix(2400 + i as u64, rows, cols, 4, gs);
        let order = if pairs {
            ecq::rans::SplitOrder::RowPairs
        } else {
            ecq::rans::SplitOrder::Rows
        };
        let s = ecq::rans::SplitMatrix::encode_window(
            &q.symbols(),
            rows,
            cols,
            &small_tiles(chunk, gs),
            order,
        )
        .unwrap();
        let label = format!(
            "{rows}x{cols} g{gs} pairs {pairs} coded chunk_rows {}",
            s.high().chunk_rows()
        );
        assert!(s.high().chunk_rows() <= 4, "{label}");
        let mut m = ctx
            .upload_split(&s, Some(QuantParamsRef::from(&q)))
            .unwrap();
        assert_eq!(
            m.n_chunks(),
            rows.div_ceil(s.high().chunk_rows() << pairs as u32)
        );
        if !ctx.registry().subgroups32() {
            continue;
        }
        let (want, sum_abs) = reference(&q, &x);
        let x8_one = m
            .gemv_x8(ctx.device(), ctx.queue(), ctx.registry(), &x)
            .unwrap();
        for tables in [true, false] {
            m.set_tables_in_memory(tables);
            for n in [2, 4] {
                m.set_chunk_subgroups(n).unwrap();
                assert_eq!(m.chunk_subgroups(), n);
                let l = format!("{label} tables in memory {tables} groups {n}");
                for v in [FusedVariant::Blocked, FusedVariant::BlockedCompact] {
                    let y = m
                        .gemv_with(ctx.device(), ctx.queue(), ctx.registry(), &x, v)
                        .unwrap_or_else(|e| panic!("{l} {v:?}: {e}"));
                    assert_close(&format!("{l} {v:?}"), &y, &want, &sum_abs, cols);
                }
                let y = ctx
                    .gemv_coded(&m, &x)
                    .unwrap_or_else(|e| panic!("{l}: {e}"));
                assert_close(&l, &y, &want, &sum_abs, cols);
                // diagnostic build 19 / 20 (the matrix set back to one group): the same launch
                m.set_chunk_subgroups(1).unwrap();
                let d = run_blocked_diag(ctx, &m, &x, if n == 2 { 19 } else { 20 })
                    .unwrap_or_else(|e| panic!("{l} build: {e}"));
                assert_eq!(bits(d), bits(y), "{l}: diagnostic build");
                m.set_chunk_subgroups(n).unwrap();
                // 8-bit activations: per row the same products in another order; the bound
                // is f32 summation over the row's pieces
                let y8 = m
                    .gemv_x8(ctx.device(), ctx.queue(), ctx.registry(), &x)
                    .unwrap_or_else(|e| panic!("{l} x8: {e}"));
                for r in 0..rows {
                    let tol = TOL_PER_TERM * (cols as f64 + 64.0) * sum_abs[r] + 1e-30;
                    assert!(
                        (y8[r] as f64 - x8_one[r] as f64).abs() <= tol,
                        "{l} x8: y[{r}] = {} against {} with one group",
                        y8[r],
                        x8_one[r]
                    );
                }
                m.set_chunk_subgroups(1).unwrap();
            }
        }
    }
    // refused: other counts; chunks of 8 coded rows; a matrix coded whole
    let (q, x) = random_matrix(2499, 16, 1024, 4, 64);
    let s = ecq::rans::SplitMatrix::encode_window(
        &q.symbols(),
        16,
        1024,
        &small_tiles(1024, 64),
        ecq::rans::SplitOrder::Rows,
    )
    .unwrap();
    assert_eq!(s.high().chunk_rows(), 8);
    let mut m = ctx
        .upload_split(&s, Some(QuantParamsRef::from(&q)))
        .unwrap();
    for n in [0, 3, 8] {
        let r = m.set_chunk_subgroups(n);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::InvalidInput(e)) if e.contains("1, 2 or 4")),
            "{n}: {r:?}"
        );
    }
    let r = m.set_chunk_subgroups(2);
    assert!(
        matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("at most 4 coded rows")),
        "{r:?}"
    );
    assert_eq!(m.chunk_subgroups(), 1);
    if ctx.registry().subgroups32() {
        let r = run_blocked_diag(ctx, &m, &x, 19);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("at most 4 coded rows")),
            "{r:?}"
        );
    }
    let enc = encode(&q.symbols(), 16, 1024, 4, &small_tiles(256, 64)).unwrap();
    let mut whole = ctx
        .upload_coded(CodedMatrixRef::from(&enc), Some(QuantParamsRef::from(&q)))
        .unwrap();
    let r = whole.set_chunk_subgroups(2);
    assert!(
        matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("not a window split")),
        "{r:?}"
    );
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "window split, groups per chunk: the blocked fused kernel needs 32-wide subgroups; the refusals were checked",
        );
    }
}

/// The plain GEMV of several activation vectors in one launch (`GpuQuantizedMatrix::
/// gemv_many`, `wgsl/qgemv4_many.wgsl`: the weights read once for all vectors) against the f64
/// reference within the tolerance above: odd row counts (a last group of one row), rows not
/// whole 512-weight blocks, group sizes 32/64/128, 1 to 16 vectors a launch and counts that
/// take two and three launches. Without 32-wide subgroups `gemv_many` runs one plain GEMV a
/// vector, checked the same way; the launch refuses other bit widths, counts outside 1..=16,
/// small buffers and (there) the adapter, by name.
#[test]
fn plain_gemv_many_vectors() {
    let Some(ctx) = ctx() else { return };
    let (dev, reg) = (ctx.device(), ctx.registry());
    let most = ecq::gpu::MAX_GEMV_VECTORS as usize;
    for (i, &(rows, cols, gs)) in [(7, 512, 64), (33, 1024, 32), (8, 4096, 128), (3, 96, 32)]
        .iter()
        .enumerate()
    {
        let (q, _) = random_matrix(2700 + i as u64, rows, cols, 4, gs);
        let m = ctx.upload_quantized(&q).unwrap();
        assert_eq!(m.gemv_many_supported(reg), reg.subgroups32());
        let mut rng = ChaCha8Rng::seed_from_u64(2750 + i as u64);
        let xs: Vec<f32> = (0..(2 * most + 3) * cols)
            .map(|_| gaussian(&mut rng))
            .collect();
        let counts = if reg.subgroups32() {
            vec![1, 2, 5, most, most + 1, 2 * most + 3]
        } else {
            vec![2, most + 1]
        };
        for n in counts {
            let label = format!("{rows}x{cols} g{gs} {n} vectors");
            let y = m
                .gemv_many(dev, ctx.queue(), reg, &xs[..n * cols], n)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(y.len(), n * rows, "{label}");
            for (j, (yj, x)) in y.chunks_exact(rows).zip(xs.chunks_exact(cols)).enumerate() {
                let (want, sum_abs) = reference(&q, x);
                assert_close(&format!("{label}: vector {j}"), yj, &want, &sum_abs, cols);
            }
            // the four-row builds (diagnostics 3, and 4 on lane order) compute the same sums
            // in the same order; builds 1 and 2 only launch (they do not compute the GEMV)
            if reg.subgroups32() && n <= most {
                let xb = input(dev, &xs[..n * cols]);
                let xl = input(dev, &ecq::gpu::x_lane_order(&xs[..n * cols], cols).unwrap());
                let yb = readable(dev, (4 * n * rows) as u64);
                let d = m.gemv_many_dispatch(dev, reg, &xb, &yb, n as u32).unwrap();
                let two = run_read(ctx, &d, &yb, n * rows);
                assert_eq!(bits(two.clone()), bits(y.clone()), "{label}: one launch");
                for diag in [3, 4, 1, 2] {
                    let x = if diag == 4 { &xl } else { &xb };
                    let d = m
                        .gemv_many_diagnostic_dispatch(dev, reg, x, &yb, n as u32, diag)
                        .unwrap_or_else(|e| panic!("{label} build {diag}: {e}"));
                    let got = run_read(ctx, &d, &yb, n * rows);
                    if diag >= 3 {
                        assert_eq!(bits(got), bits(two.clone()), "{label}: build {diag}");
                    }
                }
            }
        }
    }
    // refusals
    let (q, _) = random_matrix(2790, 4, 1024, 4, 64);
    let m = ctx.upload_quantized(&q).unwrap();
    let xb = storage(dev, 4 * 1024 * 17);
    let yb = storage(dev, 4 * 4 * 17);
    for n in [0, 17] {
        let r = m.gemv_many_dispatch(dev, reg, &xb, &yb, n);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::InvalidInput(e)) if e.contains("1..=16")),
            "{n} vectors: {}",
            outcome(r)
        );
    }
    for diag in [0, 5] {
        let r = m.gemv_many_diagnostic_dispatch(dev, reg, &xb, &yb, 2, diag);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::InvalidInput(e)) if e.contains("1..=4")),
            "build {diag}: {}",
            outcome(r)
        );
    }
    let r = m.gemv_many_dispatch(dev, reg, &storage(dev, 4 * 1024 * 3), &yb, 4);
    if reg.subgroups32() {
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::InvalidInput(e)) if e.contains("4 vectors")),
            "{}",
            outcome(r)
        );
    } else {
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("32-wide")),
            "{}",
            outcome(r)
        );
    }
    let (q8, x8) = random_matrix(2791, 4, 1024, 8, 64);
    let m8 = ctx.upload_quantized(&q8).unwrap();
    assert!(!m8.gemv_many_supported(reg));
    let r = m8.gemv_many_dispatch(dev, reg, &xb, &yb, 2);
    assert!(
        matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("4 bits")),
        "{}",
        outcome(r)
    );
    let (want, sum_abs) = reference(&q8, &x8);
    let y = m8.gemv_many(dev, ctx.queue(), reg, &x8, 1).unwrap();
    assert_close("8-bit, one vector a launch", &y, &want, &sum_abs, 1024);
    if !reg.subgroups32() {
        gpu_common::announce_unsupported(
            "plain GEMV, several vectors a launch: qgemv4_many needs 32-wide subgroups; one \
             launch a vector and the refusals were checked",
        );
    }
}

/// A buffer the kernels write and the host reads back.
fn readable(dev: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
    dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes.max(4),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// Runs `d` and reads the first `n` f32 of `y` back.
fn run_read(ctx: &GpuContext, d: &ecq::gpu::Dispatch, y: &wgpu::Buffer, n: usize) -> Vec<f32> {
    let dev = ctx.device();
    let staging = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("staging"),
        size: 4 * n as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = dev.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        d.record(&mut pass);
    }
    enc.copy_buffer_to_buffer(y, 0, &staging, 0, 4 * n as u64);
    ctx.queue().submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    ctx.wait().unwrap();
    bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).unwrap())
}

/// A launch's result in an assertion message (`Dispatch` has no `Debug`).
fn outcome<T>(r: Result<T, ecq::gpu::GpuError>) -> String {
    r.err().map_or("Ok".into(), |e| e.to_string())
}

/// The fused GEMV of several activation vectors in one launch (`GpuCodedMatrix::gemv_many`,
/// `NVEC` in `rans_gemv_blocked.wgsl`: each chunk decoded once for all vectors) of window
/// splits: every vector's outputs are bit for bit those of the one-vector kernel on that
/// vector (the same products and sums in the same order), so also within the tolerance above
/// of the f64 reference; both table forms, tables in memory and built in the kernel, row-major
/// and in row pairs, window starts that wrap, 1 to 16 vectors a launch and counts that take
/// two and three launches. Elsewhere (no 32-wide subgroups, the workgroup kernel, a matrix
/// coded whole) `gemv_many` runs one launch a vector, with the same results; the launch
/// itself refuses other layouts, counts outside 1..=16 and buffers too small, by name.
#[test]
fn fused_gemv_window_many_vectors() {
    let Some(ctx) = ctx() else { return };
    let most = ecq::gpu::MAX_GEMV_VECTORS as usize;
    // (rows, cols, group size, chunk symbols, row pairs, window start or the usual one)
    for (i, &(rows, cols, gs, chunk, pairs, start)) in [
        (10, 4096, 64, 1024, true, None),      // one pair per chunk
        (6, 14336, 128, 8192, true, Some(13)), // a last chunk of one pair, wrapping window
        (17, 2048, 64, 4096, false, None),     // two rows per chunk, a last one of one
        (5, 3072, 32, 900, false, Some(0)),    // one row per chunk, 3 blocks a row
    ]
    .iter()
    .enumerate()
    {
        let (q, _) = random_matrix(2600 + i as u64, rows, cols, 4, gs);
        let order = if pairs {
            ecq::rans::SplitOrder::RowPairs
        } else {
            ecq::rans::SplitOrder::Rows
        };
        let syms = q.symbols();
        let start = start.unwrap_or_else(|| ecq::rans::window_start(&syms));
        let s = ecq::rans::SplitMatrix::encode_window_at(
            &syms,
            rows,
            cols,
            start,
            &small_tiles(chunk, gs),
            order,
        )
        .unwrap();
        let mut m = ctx
            .upload_split(&s, Some(QuantParamsRef::from(&q)))
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2650 + i as u64);
        let xs: Vec<f32> = (0..(2 * most + 3) * cols)
            .map(|_| gaussian(&mut rng))
            .collect();
        let label = format!("window {start} {rows}x{cols} g{gs} pairs {pairs}");
        let mut kernels = vec![FusedVariant::Workgroup];
        if ctx.registry().subgroups32() {
            kernels.extend([FusedVariant::Blocked, FusedVariant::BlockedCompact]);
            assert!(m.gemv_many_supported(ctx.registry()), "{label}");
        } else {
            assert!(!m.gemv_many_supported(ctx.registry()), "{label}");
        }
        for tables in [true, false] {
            m.set_tables_in_memory(tables);
            for &v in &kernels {
                // the one-vector kernel on each vector, and the reference
                let one: Vec<Vec<f32>> = xs
                    .chunks_exact(cols)
                    .map(|x| {
                        m.gemv_with(ctx.device(), ctx.queue(), ctx.registry(), x, v)
                            .unwrap_or_else(|e| panic!("{label} {v:?}: {e}"))
                    })
                    .collect();
                for (j, x) in xs.chunks_exact(cols).enumerate().step_by(7) {
                    let (want, sum_abs) = reference(&q, x);
                    let l = format!("{label} {v:?} vector {j}");
                    assert_close(&l, &one[j], &want, &sum_abs, cols);
                }
                // (one launch a vector without 32-wide subgroups: two counts suffice there)
                let counts = if ctx.registry().subgroups32() {
                    vec![1, 2, 3, 5, 8, most, most + 1, 2 * most + 3]
                } else {
                    vec![2, most + 1]
                };
                for n in counts {
                    let l = format!("{label} tables in memory {tables} {v:?} {n} vectors");
                    let y = m
                        .gemv_many_with(
                            ctx.device(),
                            ctx.queue(),
                            ctx.registry(),
                            &xs[..n * cols],
                            n,
                            v,
                        )
                        .unwrap_or_else(|e| panic!("{l}: {e}"));
                    assert_eq!(y.len(), n * rows, "{l}");
                    for (j, yj) in y.chunks_exact(rows).enumerate() {
                        assert_eq!(bits(yj), bits(one[j].clone()), "{l}: vector {j}");
                    }
                }
            }
        }
        // the default kernel through the context's entry point
        let y = m
            .gemv_many(
                ctx.device(),
                ctx.queue(),
                ctx.registry(),
                &xs[..4 * cols],
                4,
            )
            .unwrap();
        let y1 = ctx.gemv_coded(&m, &xs[3 * cols..4 * cols]).unwrap();
        assert_eq!(bits(&y[3 * rows..]), bits(y1), "{label}: default");
    }
    // refusals and edge cases
    let (m, x) = upload_window(ctx, 2690, 4, 1024, ecq::rans::SplitOrder::RowPairs);
    let (dev, reg) = (ctx.device(), ctx.registry());
    let xb = storage(dev, 4 * 1024 * 17);
    let yb = storage(dev, 4 * 4 * 17);
    for n in [0, 17] {
        let r = m.gemv_many_dispatch(dev, reg, &xb, &yb, n);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::InvalidInput(e)) if e.contains("1..=16")),
            "{n} vectors: {}",
            outcome(r)
        );
    }
    let r = m.gemv_many(dev, ctx.queue(), reg, &x, 2);
    assert!(
        matches!(&r, Err(ecq::gpu::GpuError::InvalidInput(e)) if e.contains("2 vectors")),
        "{r:?}"
    );
    assert_eq!(
        m.gemv_many(dev, ctx.queue(), reg, &[], 0).unwrap(),
        Vec::<f32>::new()
    );
    let r = m.gemv_many_with(dev, ctx.queue(), reg, &x, 1, FusedVariant::Workgroup);
    assert_eq!(r.unwrap().len(), 4);
    if ctx.registry().subgroups32() {
        // buffers for 16 vectors, not 17
        let small = storage(dev, 4 * 4 * 16);
        let r = m.gemv_many_dispatch(dev, reg, &xb, &small, 16);
        assert!(r.is_ok(), "{}", r.err().unwrap());
        let xs = storage(dev, 4 * 1024 * 15);
        let r = m.gemv_many_dispatch(dev, reg, &xs, &yb, 16);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::InvalidInput(e)) if e.contains("16 vectors")),
            "{}",
            outcome(r)
        );
        let mut m2 = m;
        m2.set_chunk_subgroups(2).unwrap();
        assert!(!m2.gemv_many_supported(reg));
        let r = m2.gemv_many_dispatch(dev, reg, &xb, &yb, 2);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("one group")),
            "{}",
            outcome(r)
        );
    } else {
        let r = m.gemv_many_dispatch(dev, reg, &xb, &yb, 2);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("blocked fused")),
            "{}",
            outcome(r)
        );
    }
    // a matrix coded whole: one launch a vector, refused as one launch
    let (q, _) = random_matrix(2691, 8, 1024, 4, 64);
    let enc = encode(&q.symbols(), 8, 1024, 4, &small_tiles(512, 64)).unwrap();
    let whole = ctx
        .upload_coded(CodedMatrixRef::from(&enc), Some(QuantParamsRef::from(&q)))
        .unwrap();
    assert!(!whole.gemv_many_supported(reg));
    let x2: Vec<f32> = (0..2 * 1024)
        .map(|i| ((i * 37) % 11) as f32 - 5.0)
        .collect();
    let y = whole.gemv_many(dev, ctx.queue(), reg, &x2, 2).unwrap();
    assert_eq!(
        bits(&y[8..]),
        bits(ctx.gemv_coded(&whole, &x2[1024..]).unwrap())
    );
    let r = whole.gemv_many_dispatch(dev, reg, &xb, &yb, 2);
    assert!(
        matches!(&r, Err(ecq::gpu::GpuError::Unsupported(_))),
        "{}",
        outcome(r)
    );
    if !ctx.registry().subgroups32() {
        gpu_common::announce_unsupported(
            "window split, several vectors a launch: the blocked fused kernel needs 32-wide \
             subgroups; one launch a vector and the refusals were checked",
        );
    }
}

/// An f32 buffer holding `x`, for the kernels to read.
fn input(dev: &wgpu::Device, x: &[f32]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("x"),
        contents: bytemuck::cast_slice(x),
        usage: wgpu::BufferUsages::STORAGE,
    })
}

/// The GPU's permutation into lane order (`ecq::gpu::x_lane_order_dispatch`) is the host's
/// (`x_lane_order`) bit for bit: one and several vectors, rows of whole runs of 32 pieces
/// and a last shorter run; widths that are not whole pieces and small buffers are refused.
#[test]
fn x_lane_order_on_gpu_matches_host() {
    let Some(ctx) = ctx() else { return };
    let (dev, reg) = (ctx.device(), ctx.registry());
    let mut rng = ChaCha8Rng::seed_from_u64(3000);
    for (cols, vectors) in [
        (16, 1),
        (48, 3),
        (1040, 2),
        (4096, 16),
        (14336, 5),
        (4112, 1),
    ] {
        let x: Vec<f32> = (0..cols * vectors).map(|_| gaussian(&mut rng)).collect();
        let out = readable(dev, (4 * x.len()) as u64);
        let d = ecq::gpu::x_lane_order_dispatch(dev, reg, &input(dev, &x), &out, vectors, cols)
            .unwrap();
        let got = run_read(ctx, &d, &out, x.len());
        let want = ecq::gpu::x_lane_order(&x, cols).unwrap();
        assert_eq!(bits(got), bits(want), "{vectors} vectors of {cols}");
    }
    let b = storage(dev, 4 * 1024);
    for (vectors, cols, what) in [(1, 24, "multiple of 16"), (2, 1024, "need 8192")] {
        let r = ecq::gpu::x_lane_order_dispatch(dev, reg, &b, &b, vectors, cols);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::InvalidInput(e)) if e.contains(what)),
            "{vectors} x {cols}: {}",
            outcome(r)
        );
    }
}

/// The plain 4-bit GEMV on activations in lane order (`gemv_lane_order_dispatch`,
/// `qgemv4_pipe.wgsl` with `XLANES`) gives `gemv_dispatch`'s outputs bit for bit (the same
/// kernel and K split on the same values), at K splits from 1 to 8 and with a last run of
/// fewer pieces; other widths are refused.
#[test]
fn plain_gemv_lane_order_matches_column_order() {
    let Some(ctx) = ctx() else { return };
    let (dev, reg) = (ctx.device(), ctx.registry());
    for (i, &(rows, cols, gs)) in [
        (7, 4096, 64),
        (33, 1056, 32),
        (5, 14336, 128),
        (300, 512, 32),
    ]
    .iter()
    .enumerate()
    {
        let (q, x) = random_matrix(3010 + i as u64, rows, cols, 4, gs);
        let m = ctx.upload_quantized(&q).unwrap();
        let (xc, xl) = (
            input(dev, &x),
            input(dev, &ecq::gpu::x_lane_order(&x, cols).unwrap()),
        );
        let yb = readable(dev, (4 * rows) as u64);
        let want = run_read(
            ctx,
            &m.gemv_dispatch(dev, reg, &xc, &yb).unwrap(),
            &yb,
            rows,
        );
        let d = m.gemv_lane_order_dispatch(dev, reg, &xl, &yb).unwrap();
        let got = run_read(ctx, &d, &yb, rows);
        assert_eq!(bits(got), bits(want), "{rows}x{cols} g{gs}");
    }
    let (q8, x8) = random_matrix(3019, 4, 1024, 8, 64);
    let m8 = ctx.upload_quantized(&q8).unwrap();
    let b = input(dev, &x8);
    let r = m8.gemv_lane_order_dispatch(dev, reg, &b, &b);
    assert!(
        matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("4 bits")),
        "{}",
        outcome(r)
    );
}

/// The multi-vector GEMVs on activations in lane order (`ecq::gpu::x_lane_order`,
/// `gemv_many_lane_order_dispatch`) give the column-order launches' outputs bit for bit: the
/// fused kernel on window splits in row pairs (both table forms, tables in memory and built,
/// 1 to 16 vectors, rows of several runs of 32 pieces), the plain one on 4-bit matrices with
/// a last run of fewer pieces. Other layouts are refused by name.
#[test]
fn gemv_many_lane_order_matches_column_order() {
    let Some(ctx) = ctx() else { return };
    let (dev, reg) = (ctx.device(), ctx.registry());
    let most = ecq::gpu::MAX_GEMV_VECTORS as usize;
    if !reg.subgroups32() {
        let (m, _) = upload_window(ctx, 2900, 4, 1024, ecq::rans::SplitOrder::RowPairs);
        assert!(!m.lane_order_supported(reg));
        let b = storage(dev, 4 * 1024);
        let r = m.gemv_many_lane_order_dispatch(dev, reg, &b, &b, 1);
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("lane order")),
            "{}",
            outcome(r)
        );
        gpu_common::announce_unsupported(
            "GEMVs on activations in lane order: the multi-vector kernels need 32-wide subgroups; the refusal was checked",
        );
        return;
    }
    // fused: (rows, cols, group size, chunk symbols)
    for (i, &(rows, cols, gs, chunk)) in [
        (10, 4096, 64, 1024),
        (6, 14336, 128, 8192),
        (4, 1024, 32, 512),
    ]
    .iter()
    .enumerate()
    {
        let (q, _) = random_matrix(2910 + i as u64, rows, cols, 4, gs);
        let syms = q.symbols();
        let s = ecq::rans::SplitMatrix::encode_window_at(
            &syms,
            rows,
            cols,
            ecq::rans::window_start(&syms),
            &small_tiles(chunk, gs),
            ecq::rans::SplitOrder::RowPairs,
        )
        .unwrap();
        let mut m = ctx
            .upload_split(&s, Some(QuantParamsRef::from(&q)))
            .unwrap();
        assert!(m.lane_order_supported(reg));
        let mut rng = ChaCha8Rng::seed_from_u64(2950 + i as u64);
        let xs: Vec<f32> = (0..most * cols).map(|_| gaussian(&mut rng)).collect();
        let (xc, xl) = (
            input(dev, &xs),
            input(dev, &ecq::gpu::x_lane_order(&xs, cols).unwrap()),
        );
        let yb = readable(dev, (4 * most * rows) as u64);
        for tables in [true, false] {
            m.set_tables_in_memory(tables);
            for v in [FusedVariant::Blocked, FusedVariant::BlockedCompact] {
                for n in [1, 2, 5, most] {
                    let l =
                        format!("fused {rows}x{cols} g{gs} tables in memory {tables} {v:?} {n}");
                    let d = m
                        .gemv_many_dispatch_with(dev, reg, &xc, &yb, n as u32, v)
                        .unwrap();
                    let want = run_read(ctx, &d, &yb, n * rows);
                    let d = m
                        .gemv_many_lane_order_dispatch_with(dev, reg, &xl, &yb, n as u32, v)
                        .unwrap_or_else(|e| panic!("{l}: {e}"));
                    let got = run_read(ctx, &d, &yb, n * rows);
                    assert_eq!(bits(got), bits(want), "{l}");
                }
            }
        }
        m.check_errors(dev, ctx.queue()).unwrap();
    }
    // plain: (rows, cols, group size); 1056 and 4128 columns end in a run of 2 and 2 pieces
    for (i, &(rows, cols, gs)) in [(7, 4096, 64), (9, 1056, 32), (5, 4128, 32)]
        .iter()
        .enumerate()
    {
        let (q, _) = random_matrix(2960 + i as u64, rows, cols, 4, gs);
        let m = ctx.upload_quantized(&q).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2970 + i as u64);
        let xs: Vec<f32> = (0..most * cols).map(|_| gaussian(&mut rng)).collect();
        let (xc, xl) = (
            input(dev, &xs),
            input(dev, &ecq::gpu::x_lane_order(&xs, cols).unwrap()),
        );
        let yb = readable(dev, (4 * most * rows) as u64);
        for n in [1, 3, most] {
            let d = m.gemv_many_dispatch(dev, reg, &xc, &yb, n as u32).unwrap();
            let want = run_read(ctx, &d, &yb, n * rows);
            let d = m
                .gemv_many_lane_order_dispatch(dev, reg, &xl, &yb, n as u32)
                .unwrap();
            let got = run_read(ctx, &d, &yb, n * rows);
            assert_eq!(bits(got), bits(want), "plain {rows}x{cols} g{gs} {n}");
        }
    }
    // refusals: row-major window splits, matrices coded whole
    let (m, _) = upload_window(ctx, 2990, 4, 1024, ecq::rans::SplitOrder::Rows);
    assert!(!m.lane_order_supported(reg));
    let b = storage(dev, 4 * 1024 * 2);
    let r = m.gemv_many_lane_order_dispatch(dev, reg, &b, &b, 2);
    assert!(
        matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("row pairs false")),
        "{}",
        outcome(r)
    );
    let (q, _) = random_matrix(2991, 8, 1024, 4, 64);
    let enc = encode(&q.symbols(), 8, 1024, 4, &small_tiles(512, 64)).unwrap();
    let whole = ctx
        .upload_coded(CodedMatrixRef::from(&enc), Some(QuantParamsRef::from(&q)))
        .unwrap();
    let r = whole.gemv_many_lane_order_dispatch(dev, reg, &b, &b, 1);
    assert!(
        matches!(&r, Err(ecq::gpu::GpuError::Unsupported(e)) if e.contains("window split false")),
        "{}",
        outcome(r)
    );
}

/// A coded matrix decoded on the GPU into a plain one (`GpuQuantizedMatrix::decode_from`, no
/// trip through the host) gives the plain GEMV, bit for bit, the output of the same weights
/// uploaded from the host: whole and split symbols, every group size, rows the blocked decode
/// kernel cannot take; so do all of them decoded with one wait (`decode_many`). A coded
/// matrix without scales and biases is refused, a corrupt stream reported, alone or in a batch.
#[test]
fn decode_to_quantized_matches_upload() {
    let Some(ctx) = ctx() else { return };
    let mut cases = Vec::new();
    for (i, &(rows, cols, gs, split)) in [
        (9, 512, 64, false),
        (33, 1024, 32, true),
        (5, 4096, 128, false),
        (6, 1280, 64, true),
        (7, 4096, 64, true),
    ]
    .iter()
    .enumerate()
    {
        let (q, x) = random_matrix(1200 + i as u64, rows, cols, 4, gs);
        let quant = QuantParamsRef::from(&q);
        let coded = if split {
            let s = ecq::rans::SplitMatrix::encode(
                &q.symbols(),
                rows,
                cols,
                4,
                2,
                &ecq::rans::SplitMatrix::default_options(),
            )
            .unwrap();
            ctx.upload_split(&s, Some(quant))
        } else {
            let opts = EncodeOptions {
                group_size: gs,
                ..Default::default()
            };
            let e = encode(&q.symbols(), rows, cols, 4, &opts).unwrap();
            ctx.upload_coded(CodedMatrixRef::from(&e), Some(quant))
        }
        .unwrap();
        let label = format!("{rows}x{cols} g{gs} split {split}");
        let want = assert_decodes_to_plain(ctx, &coded, &q, &x, &label);
        cases.push((coded, x, want, label));
    }
    let all: Vec<_> = cases.iter().map(|c| &c.0).collect();
    let decoded = ctx.decode_many_to_quantized(&all).unwrap();
    for (m, (_, x, want, label)) in decoded.iter().zip(&cases) {
        assert_eq!(
            &bits(ctx.gemv_quantized(m, x).unwrap()),
            want,
            "{label} (batch)"
        );
    }
    let (q, _) = random_matrix(1300, 8, 512, 4, 64);
    let e = encode(&q.symbols(), 8, 512, 4, &EncodeOptions::default()).unwrap();
    let bare = ctx.upload_coded(CodedMatrixRef::from(&e), None).unwrap();
    assert!(matches!(
        ctx.decode_to_quantized(&bare),
        Err(ecq::gpu::GpuError::InvalidInput(_))
    ));
    let mut states = e.states().to_vec();
    states[3] = 1;
    let quant = QuantParamsRef::from(&q);
    let corrupt = ctx
        .upload_coded(
            CodedMatrixRef {
                states: &states,
                ..CodedMatrixRef::from(&e)
            },
            Some(quant),
        )
        .unwrap();
    assert!(matches!(
        ctx.decode_to_quantized(&corrupt),
        Err(ecq::gpu::GpuError::CorruptStream { chunk: 0, .. })
    ));
    assert!(matches!(
        ctx.decode_many_to_quantized(&[all[0], &corrupt, all[1]]),
        Err(ecq::gpu::GpuError::CorruptStream { chunk: 0, .. })
    ));
}

/// `m` decoded on the GPU to a plain matrix of `q`'s shape whose GEMV of `x` is, bit for bit,
/// the one on a host upload of `q`; returns those bits.
fn assert_decodes_to_plain(
    ctx: &GpuContext,
    m: &ecq::gpu::GpuCodedMatrix,
    q: &QuantizedMatrix,
    x: &[f32],
    label: &str,
) -> Vec<u32> {
    let decoded = ctx
        .decode_to_quantized(m)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(
        (decoded.rows(), decoded.cols(), decoded.bits()),
        (q.rows, q.cols, q.bits),
        "{label}"
    );
    let want = bits(
        ctx.gemv_quantized(&ctx.upload_quantized(q).unwrap(), x)
            .unwrap(),
    );
    assert_eq!(
        bits(ctx.gemv_quantized(&decoded, x).unwrap()),
        want,
        "{label}: decoded to plain"
    );
    want
}

/// Scales and biases of f16- or bf16-quantized weights are uploaded as 16-bit pairs
/// (`SideFormat::exact_for`): every plain GEMV kernel and every fused one (whole and split
/// matrices) gives bit for bit the result of f32 pairs, since the values are the same.
#[test]
fn sixteen_bit_side_is_bit_identical_to_f32() {
    use ecq::gpu::{GpuQuantizedMatrix, PipelineRegistry, SideFormat};
    let Some(ctx) = ctx() else { return };
    // the device's f16 conversion (`unpack2x16float` where it validates) and the integer one,
    // on the kernels the context runs (`ECQ_KERNELS` may have put it on others than the
    // adapter's own: the fused GEMVs differ in their order of sums)
    let mut bits_registry = PipelineRegistry::for_device(ctx.device(), ctx.adapter_info());
    if !ctx.registry().subgroups32() {
        bits_registry = bits_registry.without_subgroups();
    }
    let bits_registry = bits_registry
        .with_subgroup_lanes(ctx.device(), ctx.registry().subgroup_lanes())
        .expect("the context's lanes kernels")
        .without_f16_unpack();
    let registries = [ctx.registry(), &bits_registry];
    // (bf16 values of this size are exact in f16 too: the bf16 case takes weights whose
    // scales lie below f16's normal range)
    for (dtype, magnitude, want) in [
        (FloatDType::F16, 1.0, SideFormat::F16),
        (FloatDType::BF16, 1e-7, SideFormat::Bf16),
    ] {
        for (i, &(rows, cols, b, gs)) in [
            (64usize, 1024usize, 4u32, 64u32),
            (33, 512, 4, 32),
            (40, 256, 8, 128),
            (24, 512, 2, 64),
        ]
        .iter()
        .enumerate()
        {
            let mut rng = ChaCha8Rng::seed_from_u64(1100 + i as u64);
            let w: Vec<f32> = (0..rows * cols)
                .map(|_| gaussian(&mut rng) * 0.02 * magnitude)
                .collect();
            let x: Vec<f32> = (0..cols).map(|_| gaussian(&mut rng)).collect();
            let q =
                quantize_affine(&w, rows, cols, dtype, AffineParams::new(b, gs).unwrap()).unwrap();
            let label = format!("{rows}x{cols} b{b} g{gs} {dtype:?}");
            // plain: every variant that runs the matrix
            let narrow = ctx.upload_quantized(&q).unwrap();
            assert_eq!(narrow.side_format(), want, "{label}");
            let wide =
                GpuQuantizedMatrix::upload_with_side(ctx.device(), &q, SideFormat::F32).unwrap();
            let mut variants = vec![QGemvVariant::Auto];
            if (cols * b as usize).is_multiple_of(128) {
                variants.push(QGemvVariant::Generic);
            }
            if narrow.nibble4_supported() {
                variants.push(QGemvVariant::Nibble4 { ksplit: 0 });
                variants.push(QGemvVariant::Pipelined { rows: 4, ksplit: 0 });
            }
            if narrow.stream_supported() {
                variants.push(QGemvVariant::Stream { rows: 2, ksplit: 0 });
                variants.push(QGemvVariant::Staged { rows: 2, ksplit: 0 });
            }
            for v in variants {
                let run = |m: &GpuQuantizedMatrix, reg: &PipelineRegistry| {
                    m.gemv_with(ctx.device(), ctx.queue(), reg, &x, v).unwrap()
                };
                let want = bits(run(&wide, ctx.registry()));
                for reg in registries {
                    let unpack = reg.f16_unpack();
                    assert_eq!(
                        bits(run(&narrow, reg)),
                        want,
                        "{label} {v:?} unpack {unpack}"
                    );
                }
            }
            // fused: whole symbols, and for 4 bits split in row-pair order
            let opts = EncodeOptions {
                chunk_symbols: 1024,
                group_size: gs,
                ..Default::default()
            };
            let enc = encode(&q.symbols(), rows, cols, b, &opts).unwrap();
            let params = |side| {
                Some(QuantParamsRef {
                    side,
                    ..QuantParamsRef::from(&q)
                })
            };
            let pair = [
                ctx.upload_coded(CodedMatrixRef::from(&enc), params(None))
                    .unwrap(),
                ctx.upload_coded(CodedMatrixRef::from(&enc), params(Some(SideFormat::F32)))
                    .unwrap(),
            ];
            let mut coded = vec![("whole", pair)];
            if b == 4 && rows % 2 == 0 {
                let s = ecq::rans::SplitMatrix::encode_ordered(
                    &q.symbols(),
                    rows,
                    cols,
                    4,
                    2,
                    &opts,
                    ecq::rans::SplitOrder::RowPairs,
                )
                .unwrap();
                coded.push((
                    "split",
                    [
                        ctx.upload_split(&s, params(None)).unwrap(),
                        ctx.upload_split(&s, params(Some(SideFormat::F32))).unwrap(),
                    ],
                ));
            }
            for (what, [narrow, wide]) in &coded {
                assert_eq!(
                    (narrow.side_format(), wide.side_format()),
                    (want, SideFormat::F32)
                );
                for v in fused_variants(ctx, narrow) {
                    let run = |m: &ecq::gpu::GpuCodedMatrix, reg: &PipelineRegistry| {
                        m.gemv_with(ctx.device(), ctx.queue(), reg, &x, v)
                    };
                    for reg in registries {
                        let unpack = reg.f16_unpack();
                        match (run(narrow, reg), run(wide, ctx.registry())) {
                            (Ok(a), Ok(b)) => {
                                assert_eq!(bits(a), bits(b), "{label} {what} {v:?} unpack {unpack}")
                            }
                            // (a variant refusing the layout refuses it in both formats)
                            (Err(_), Err(_)) => {}
                            (a, b) => panic!("{label} {what} {v:?}: {a:?} vs {b:?}"),
                        }
                    }
                }
            }
        }
    }
    // forcing a format the values are not exact in is refused
    let (q, _) = random_matrix(1199, 8, 256, 4, 64);
    let err = GpuQuantizedMatrix::upload_with_side(ctx.device(), &q, SideFormat::F16).unwrap_err();
    assert!(err.to_string().contains("not exact in F16"), "{err}");
}

/// Activations quantized to 8 bits on the GPU (`quantize_x8`, both byte orders) against the CPU
/// reference `X8Activations::quantize`: the same scale per 16-activation piece to an ulp (the
/// GPU's division may round differently), the same integers except at an exact rounding tie,
/// where they may differ by one, and the f32 sums within 16 roundings. Covers an all-zero piece
/// (scale 0, integers 0), a piece of one nonzero value (+-127), ties, tiny and huge magnitudes.
/// Lengths that are not whole pieces are refused by name.
#[test]
fn quantize_x8_matches_cpu_reference() {
    use ecq::gpu::{quantize_x8_read, X8Activations, X8Order};
    let Some(ctx) = ctx() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(3100);
    let mut x: Vec<f32> = (0..4096).map(|_| gaussian(&mut rng)).collect();
    x[16..32].fill(0.0); // all zero
    x[32..48].fill(0.0);
    x[40] = -3.5; // one nonzero
                  // near rounding ties: max 1, the others (j + 1/2) / 127
    x[48] = 1.0;
    for (j, v) in x[49..64].iter_mut().enumerate() {
        *v = (j as f32 - 7.0 + 0.5) / 127.0;
    }
    for v in &mut x[64..80] {
        *v *= 1e-30;
    }
    for v in &mut x[80..96] {
        *v *= 1e30;
    }
    let cpu = X8Activations::quantize(&x).unwrap();
    let mut one = [0i8; 16];
    one[8] = -127;
    assert_eq!(cpu.q[32..48], one);
    assert_eq!((cpu.d[1], cpu.d[2]), (0.0, 3.5 / 127.0));
    for order in [X8Order::Plain, X8Order::Window] {
        let gpu = quantize_x8_read(ctx.device(), ctx.queue(), ctx.registry(), &x, order)
            .unwrap_or_else(|e| panic!("{order:?}: {e}"));
        for p in 0..x.len() / 16 {
            let (dg, dc) = (gpu.d[p], cpu.d[p]);
            assert!(
                (dg - dc).abs() <= dc * f32::EPSILON,
                "{order:?} piece {p}: d {dg:e} vs {dc:e}"
            );
            let piece = &x[p * 16..p * 16 + 16];
            let m = piece.iter().fold(0.0f64, |a, &v| a.max(v.abs() as f64));
            let abs: f64 = piece.iter().map(|&v| v.abs() as f64).sum();
            assert!(
                (gpu.sum[p] as f64 - cpu.sum[p] as f64).abs() <= 16.0 * TOL_PER_TERM * abs,
                "{order:?} piece {p}: sum {} vs {}",
                gpu.sum[p],
                cpu.sum[p]
            );
            for (k, &xk) in piece.iter().enumerate().map(|(j, v)| (p * 16 + j, v)) {
                let (qg, qc) = (gpu.q[k] as i32, cpu.q[k] as i32);
                if qg != qc {
                    let t = xk as f64 * 127.0 / m;
                    assert!(
                        (qg - qc).abs() == 1 && (t.abs().fract() - 0.5).abs() < 1e-4,
                        "{order:?} x[{k}] = {xk}: q {qg} vs {qc} (x * 127 / max = {t})"
                    );
                }
            }
        }
    }
    for bad in [0usize, 24] {
        let r = quantize_x8_read(
            ctx.device(),
            ctx.queue(),
            ctx.registry(),
            &vec![1.0; bad],
            X8Order::Window,
        );
        assert!(
            matches!(&r, Err(ecq::gpu::GpuError::InvalidInput(e)) if e.contains("multiple of 16")),
            "{bad}: {r:?}"
        );
    }
}

/// f64 `y` of the matrix `q` on 8-bit activations `a` (per piece `scale * d * sum(q xq) + bias *
/// sum`), the bound of its f32 evaluation (sums of absolute terms), and the bound of its
/// distance from the f32 activations' `y`: `|scale| * d / 2 * sum(q)` per piece.
fn reference_x8(
    q: &QuantizedMatrix,
    a: &ecq::gpu::X8Activations,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (r, k, gs) = (q.rows, q.cols, q.group_size as usize);
    let sym = q.symbols();
    let (mut y, mut abs, mut quant) = (vec![0.0; r], vec![0.0; r], vec![0.0; r]);
    for row in 0..r {
        for p in 0..k / 16 {
            let g = row * (k / gs) + p * 16 / gs;
            let (s, b) = (q.scales[g] as f64, q.biases[g] as f64);
            let (d, sum) = (a.d[p] as f64, a.sum[p] as f64);
            let (mut iq, mut qs) = (0i64, 0.0f64);
            for kk in p * 16..p * 16 + 16 {
                iq += sym[row * k + kk] as i64 * a.q[kk] as i64;
                qs += sym[row * k + kk] as f64;
            }
            y[row] += s * d * iq as f64 + b * sum;
            abs[row] += (s * d * iq as f64).abs() + (b * sum).abs();
            quant[row] += s.abs() * d / 2.0 * qs;
        }
    }
    (y, abs, quant)
}

/// The fused GEMV of window splits on 8-bit activations (`GpuCodedMatrix::gemv_x8`, 32-wide
/// subgroups) and its plain baseline on the same activations (`GpuQuantizedMatrix::gemv_x8`,
/// any adapter): against the f64 evaluation on the GPU's own 8-bit activations within the f32
/// tolerance above (the integer dot products are exact, only the f32 sums round), and against
/// the f64 reference on the f32 activations within the 8-bit bound `|scale| * d / 2 * sum(q)`
/// per piece; the plain kernel's in-register quantization (`Int8Dot`) too. Row-major and row
/// pairs, group sizes 32/64/128, window starts 5 and 13 (wrap-around), both blocked kernels.
/// Whole symbols, the workgroup kernel, and any matrix on an adapter without the blocked
/// kernel are refused with `Unsupported`.
#[test]
fn fused_gemv_window_x8_within_bound() {
    use ecq::gpu::{quantize_x8_read, GpuError, X8Order};
    let Some(ctx) = ctx() else { return };
    let (dev, queue, reg) = (ctx.device(), ctx.queue(), ctx.registry());
    let mut fused_checked = false;
    for (i, &(rows, cols, gs, chunk, pairs, start)) in [
        (17, 2048, 64, 4096, false, 5u8),
        (5, 14336, 32, 900, false, 13),
        (10, 4096, 64, 1024, true, 5),
        (2, 1024, 64, 4096, true, 13),
        (6, 14336, 128, 8192, true, 5),
    ]
    .iter()
    .enumerate()
    {
        let (q, x) = random_matrix(3200 + i as u64, rows, cols, 4, gs);
        let order = if pairs {
            ecq::rans::SplitOrder::RowPairs
        } else {
            ecq::rans::SplitOrder::Rows
        };
        let syms = q.symbols();
        let s = ecq::rans::SplitMatrix::encode_window_at(
            &syms,
            rows,
            cols,
            start,
            &small_tiles(chunk, gs),
            order,
        )
        .unwrap();
        let label = format!("x8 window {start} {rows}x{cols} g{gs} pairs {pairs}");
        let m = ctx
            .upload_split(&s, Some(QuantParamsRef::from(&q)))
            .unwrap();
        let a = quantize_x8_read(dev, queue, reg, &x, X8Order::Window).unwrap();
        let (y8, abs8, quant) = reference_x8(&q, &a);
        let (want, sum_abs) = reference(&q, &x);
        let check = |what: &str, y: &[f32]| {
            assert_eq!(y.len(), rows, "{label} {what}");
            for r in 0..rows {
                let err8 = (y[r] as f64 - y8[r]).abs();
                let tol8 = TOL_PER_TERM * (cols as f64 + 64.0) * abs8[r] + 1e-30;
                assert!(
                    err8 <= tol8,
                    "{label} {what}: y[{r}] = {} vs {} on the 8-bit activations (error {err8:e} > {tol8:e})",
                    y[r],
                    y8[r]
                );
                let err = (y[r] as f64 - want[r]).abs();
                let tol =
                    quant[r] * 1.001 + tol8 + TOL_PER_TERM * (cols as f64 + 64.0) * sum_abs[r];
                assert!(
                    err <= tol,
                    "{label} {what}: y[{r}] = {} vs {} (error {err:e} > 8-bit bound {tol:e})",
                    y[r],
                    want[r]
                );
            }
        };
        let plain = ctx.upload_quantized(&q).unwrap();
        for ksplit in [0, 2] {
            let y = plain
                .gemv_x8(dev, queue, reg, &x, ksplit)
                .unwrap_or_else(|e| panic!("{label} plain x8: {e}"));
            check(&format!("plain x8 ksplit {ksplit}"), &y);
        }
        let y = plain
            .gemv_with(dev, queue, reg, &x, QGemvVariant::Int8Dot { ksplit: 0 })
            .unwrap();
        check("plain Int8Dot", &y);
        if m.x8_supported(reg) {
            let y = m
                .gemv_x8(dev, queue, reg, &x)
                .unwrap_or_else(|e| panic!("{label} fused x8: {e}"));
            check("fused x8", &y);
            for v in [FusedVariant::Blocked, FusedVariant::BlockedCompact] {
                let y = m
                    .gemv_x8_with(dev, queue, reg, &x, v)
                    .unwrap_or_else(|e| panic!("{label} fused x8 {v:?}: {e}"));
                check(&format!("fused x8 {v:?}"), &y);
            }
            let r = m.gemv_x8_with(dev, queue, reg, &x, FusedVariant::Workgroup);
            assert!(matches!(r, Err(GpuError::Unsupported(_))), "{label}: {r:?}");
            fused_checked = true;
        } else {
            let r = m.gemv_x8(dev, queue, reg, &x);
            assert!(matches!(r, Err(GpuError::Unsupported(_))), "{label}: {r:?}");
        }
        // refused: a wrong length, a short buffer
        let r = m.gemv_x8(dev, queue, reg, &x[1..]);
        assert!(
            matches!(r, Err(GpuError::InvalidInput(_))),
            "{label}: {r:?}"
        );
        if m.x8_supported(reg) {
            let small = dev.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: (cols * 4) as u64 / 4,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let r = m.gemv_x8_dispatch(dev, reg, &small, &small);
            assert!(
                matches!(r, Err(GpuError::InvalidInput(_))),
                "{label}: {r:?}"
            );
        }
    }
    // whole symbols have no 8-bit path
    let (q, x) = random_matrix(3299, 4, 1024, 4, 64);
    let enc = encode(&q.symbols(), 4, 1024, 4, &EncodeOptions::default()).unwrap();
    let m = ctx
        .upload_coded(CodedMatrixRef::from(&enc), Some(QuantParamsRef::from(&q)))
        .unwrap();
    assert!(!m.x8_supported(reg));
    let r = m.gemv_x8(dev, queue, reg, &x);
    assert!(
        matches!(&r, Err(GpuError::Unsupported(e)) if e.contains("window")
            || !reg.subgroups32()),
        "{r:?}"
    );
    if !fused_checked {
        gpu_common::announce_unsupported(
            "8-bit activations: the fused window kernel needs 32-wide subgroups; the plain kernel on the same activations and the refusals were checked",
        );
    }
}

/// The tiled f32 GEMM (`wgsl/qgemm_tiled.wgsl`) against the f64 reference, row by row:
/// partial tiles of matrix rows and activation rows, every MLX group size, K from 64 to
/// 4096, f32 and 16-bit scales, a row of zeros and a row holding a NaN (only that row's
/// outputs are NaN), and its refusals by name.
#[test]
fn plain_gemm_tiled_matches_reference() {
    let Some(ctx) = ctx() else { return };
    let (dev, reg) = (ctx.device(), ctx.registry());
    let cases = [
        (7, 512, 64, 65),
        (65, 1024, 32, 64),
        (130, 4096, 128, 3),
        (64, 64, 32, 130),
        (3, 96, 32, 1),
    ];
    for (i, &(rows, cols, gs, n)) in cases.iter().enumerate() {
        let (q, _) = random_matrix(2900 + i as u64, rows, cols, 4, gs);
        let mut rng = ChaCha8Rng::seed_from_u64(2950 + i as u64);
        let mut xs: Vec<f32> = (0..n * cols).map(|_| gaussian(&mut rng)).collect();
        let (zero_row, nan_row) = (n / 2, n - 1);
        if n > 2 {
            xs[zero_row * cols..(zero_row + 1) * cols].fill(0.0);
            xs[nan_row * cols + cols / 3] = f32::NAN;
        }
        for side in [None, Some(ecq::gpu::SideFormat::F32)] {
            let m = match side {
                None => ctx.upload_quantized(&q).unwrap(),
                Some(s) => ecq::gpu::GpuQuantizedMatrix::upload_with_side(dev, &q, s).unwrap(),
            };
            assert!(m.gemm_tiled_supported());
            let label = format!("{rows}x{cols} g{gs} {n} rows, side {side:?}");
            let y = m
                .gemm_tiled(dev, ctx.queue(), reg, &xs, n)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(y.len(), n * rows, "{label}");
            // Both tiles add each output's columns in the same order: the same bits.
            for tile in [TiledGemmTile::Narrow, TiledGemmTile::Wide] {
                let yt = m
                    .gemm_tiled_with(dev, ctx.queue(), reg, &xs, n, tile)
                    .unwrap_or_else(|e| panic!("{label}, {tile:?}: {e}"));
                assert_eq!(bits(&yt), bits(&y), "{label}, {tile:?}");
            }
            for (j, (yj, x)) in y.chunks_exact(rows).zip(xs.chunks_exact(cols)).enumerate() {
                if n > 2 && j == nan_row {
                    assert!(yj.iter().all(|v| v.is_nan()), "{label}: NaN row {j}");
                    continue;
                }
                let (want, sum_abs) = reference(&q, x);
                assert_close(&format!("{label}: row {j}"), yj, &want, &sum_abs, cols);
            }
        }
    }
    // the tile rule: wide from TILED_GEMM_WIDE_MIN_WORKGROUPS wide tiles
    let w = ecq::gpu::TILED_GEMM_WIDE_MIN_WORKGROUPS;
    assert_eq!(TiledGemmTile::for_shape(128 * w, 1), TiledGemmTile::Wide);
    assert_eq!(
        TiledGemmTile::for_shape(128 * w - 128, 64),
        TiledGemmTile::Narrow
    );
    assert_eq!(TiledGemmTile::for_shape(4096, 512), TiledGemmTile::Wide);
    assert_eq!(TiledGemmTile::for_shape(4096, 448), TiledGemmTile::Narrow);
    assert_eq!(TiledGemmTile::for_shape(1024, 512), TiledGemmTile::Narrow);
    assert_eq!(TiledGemmTile::for_shape(0, 0), TiledGemmTile::Narrow);
    assert_eq!(
        (TiledGemmTile::Narrow.rows(), TiledGemmTile::Wide.rows()),
        (64, 128)
    );
    // on a CPU device (lavapipe) the wide tile whatever the shape, elsewhere the rule
    let cpu = reg.cpu_device();
    assert_eq!(cpu, ctx.adapter_info().device_type == wgpu::DeviceType::Cpu);
    for (r, m) in [(1024, 64), (4096, 512), (0, 0)] {
        let want = if cpu {
            TiledGemmTile::Wide
        } else {
            TiledGemmTile::for_shape(r, m)
        };
        assert_eq!(TiledGemmTile::for_device(reg, r, m), want, "{r} rows, {m}");
    }
    // refusals: other bit widths, and buffers too small for the shape
    for bits in [2, 8] {
        let (q, x) = random_matrix(2990 + bits as u64, 4, 512, bits, 64);
        let m = ctx.upload_quantized(&q).unwrap();
        assert!(!m.gemm_tiled_supported());
        let e = m.gemm_tiled(dev, ctx.queue(), reg, &x, 1).unwrap_err();
        assert!(
            matches!(e, ecq::gpu::GpuError::Unsupported(ref s) if s.contains("4 bits")),
            "{bits} bits: {e}"
        );
    }
    let (q, x) = random_matrix(2999, 4, 512, 4, 64);
    let m = ctx.upload_quantized(&q).unwrap();
    assert_eq!(
        m.gemm_tiled(dev, ctx.queue(), reg, &[], 0).unwrap(),
        Vec::<f32>::new()
    );
    let e = m.gemm_tiled(dev, ctx.queue(), reg, &x, 2).unwrap_err();
    assert!(e.to_string().contains("2 rows of 512 need 1024"), "{e}");
    let xb = storage(dev, 4 * 512 * 3);
    let yb = storage(dev, 4 * 4 * 3);
    let e = m.gemm_tiled_dispatch(dev, reg, &xb, &yb, 4).unwrap_err();
    assert!(e.to_string().contains("x has 6144 bytes"), "{e}");
    let e = m.gemm_tiled_dispatch(dev, reg, &yb, &yb, 3).unwrap_err();
    assert!(e.to_string().contains("x has 48 bytes"), "{e}");
    let big = storage(dev, 4 * 512 * 5);
    let e = m.gemm_tiled_dispatch(dev, reg, &big, &yb, 5).unwrap_err();
    assert!(
        e.to_string()
            .contains("y has 48 bytes, 5 rows of 4 outputs"),
        "{e}"
    );
}

/// The tiled GEMM in column splits (split-K): every split count from 2 to one step a split,
/// ragged ranges and tiles, both tiles (the same bits for the same split), within the f32
/// tolerance of the CPU reference, a NaN row's outputs NaN and no others (the partial sums
/// start as NaN, so a sum left unwritten shows), the same bits on a second run; the split
/// rule and counts; refusals by name.
#[test]
fn plain_gemm_tiled_split_matches_reference() {
    use ecq::gpu::{
        GemmSplit, TILED_GEMM_SPLIT_MIN_COLS, TILED_GEMM_SPLIT_WORKGROUPS,
        TILED_GEMM_WIDE_MIN_WORKGROUPS,
    };
    let Some(ctx) = ctx() else { return };
    let (dev, reg) = (ctx.device(), ctx.registry());
    // (rows, cols, group, activation rows, splits asked for)
    let cases = [
        (70, 1056, 32, 65, vec![2, 3, 4, 5, 7, 66, 100]),
        (129, 512, 64, 3, vec![2, 32]),
        (5, 4096, 128, 130, vec![8]),
    ];
    for (i, (rows, cols, gs, n, splits)) in cases.into_iter().enumerate() {
        let (q, _) = random_matrix(3100 + i as u64, rows, cols, 4, gs);
        let mut rng = ChaCha8Rng::seed_from_u64(3150 + i as u64);
        let mut xs: Vec<f32> = (0..n * cols).map(|_| gaussian(&mut rng)).collect();
        let nan_row = n - 1;
        xs[nan_row * cols + cols - 1] = f32::NAN;
        let m = ctx.upload_quantized(&q).unwrap();
        for asked in splits {
            let split = GemmSplit::tiled(cols, asked).unwrap();
            let steps = cols / 16;
            assert_eq!(
                split.splits(),
                steps.div_ceil(steps.div_ceil(asked.min(steps)))
            );
            assert!((split.splits() - 1) * split.cols_per_split() < cols);
            let label = format!("{rows}x{cols} g{gs} {n} rows, {asked} splits");
            let run = |tile| {
                m.gemm_tiled_split_with(dev, ctx.queue(), reg, &xs, n, tile, split)
                    .unwrap_or_else(|e| panic!("{label}, {tile:?}: {e}"))
            };
            let y = run(TiledGemmTile::Narrow);
            assert_eq!(bits(run(TiledGemmTile::Wide)), bits(&y), "{label}: wide");
            assert_eq!(bits(run(TiledGemmTile::Narrow)), bits(&y), "{label}: again");
            for (j, (yj, x)) in y.chunks_exact(rows).zip(xs.chunks_exact(cols)).enumerate() {
                if j == nan_row {
                    assert!(yj.iter().all(|v| v.is_nan()), "{label}: NaN row {j}");
                    continue;
                }
                let (want, sum_abs) = reference(&q, x);
                assert_close(&format!("{label}: row {j}"), yj, &want, &sum_abs, cols);
            }
        }
    }
    // the split counts: ranges of equal steps, each holding one at the least
    assert_eq!(GemmSplit::tiled(1056, 1), None);
    assert_eq!(GemmSplit::tiled(16, 2), None);
    assert_eq!(GemmSplit::tiled(1000, 2), None, "not a multiple of 16");
    let counts = |cols, n| GemmSplit::tiled(cols, n).map(|s| (s.splits(), s.cols_per_split()));
    assert_eq!(counts(32, 2), Some((2, 16)));
    assert_eq!(counts(64, 3), Some((2, 32)));
    assert_eq!(counts(1056, 4), Some((4, 272)));
    assert_eq!(counts(1056, 1000), Some((66, 16)));
    // the rule: grids below TILED_GEMM_SPLIT_WORKGROUPS split up to that many workgroups,
    // of at least TILED_GEMM_SPLIT_MIN_COLS columns (grids of as many tiles as the wide
    // tile's threshold too)
    let w = TILED_GEMM_SPLIT_WORKGROUPS;
    let by_cols = 4096 / TILED_GEMM_SPLIT_MIN_COLS;
    let (q, _) = random_matrix(3190, 64, 4096, 4, 64);
    let small = ctx.upload_quantized(&q).unwrap();
    let rule = |m, tile| small.gemm_tiled_split(m, tile).map(|s| s.splits());
    assert_eq!(rule(64, TiledGemmTile::Narrow), Some(by_cols));
    assert_eq!(rule(64 * w, TiledGemmTile::Narrow), None);
    assert_eq!(
        rule(64 * (w / 2), TiledGemmTile::Wide),
        Some(TILED_GEMM_SPLIT_WORKGROUPS.div_ceil(w / 2).min(by_cols))
    );
    let wide_min = TILED_GEMM_WIDE_MIN_WORKGROUPS;
    assert_eq!(
        rule(64 * wide_min, TiledGemmTile::Narrow),
        Some(TILED_GEMM_SPLIT_WORKGROUPS.div_ceil(wide_min).min(by_cols))
    );
    assert_eq!(
        rule(64 * (w - 1), TiledGemmTile::Narrow),
        Some(TILED_GEMM_SPLIT_WORKGROUPS.div_ceil(w - 1).min(by_cols))
    );
    assert_eq!(rule(0, TiledGemmTile::Narrow), None);
    // (never on a CPU device by default)
    let for_device = small.gemm_tiled_split_for(reg, 64, TiledGemmTile::Narrow);
    if reg.cpu_device() {
        assert_eq!(for_device, None);
    } else {
        assert_eq!(
            for_device,
            small.gemm_tiled_split(64, TiledGemmTile::Narrow)
        );
    }
    // (a matrix of one split's columns never splits)
    let (q, _) = random_matrix(3191, 64, TILED_GEMM_SPLIT_MIN_COLS, 4, 64);
    let narrow = ctx.upload_quantized(&q).unwrap();
    assert_eq!(narrow.gemm_tiled_split(64, TiledGemmTile::Narrow), None);
    // refusals: partial sums too small, a split of another width
    let split = GemmSplit::tiled(4096, 3).unwrap();
    let xb = storage(dev, 4 * 4096 * 2);
    let yb = storage(dev, 4 * 64 * 2);
    let part = storage(dev, 4 * 64 * 2);
    let t = TiledGemmTile::Narrow;
    let e = small
        .gemm_tiled_split_dispatch(dev, reg, &xb, &yb, 2, t, split, &part)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("partial sums have 512 bytes, 3 splits of 2 rows of 64 outputs need 1024"),
        "{e}"
    );
    let other = GemmSplit::tiled(512, 2).unwrap();
    let e = small
        .gemm_tiled_split_dispatch(dev, reg, &xb, &yb, 2, t, other, &part)
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "a split of 512 inputs in steps of 16 for the tiled GEMM of a matrix of 4096 \
             inputs in steps of 16"
        ),
        "{e}"
    );
    // (the cooperative GEMM's steps of 64 columns)
    let coop = GemmSplit::coop(4096, 3).unwrap();
    let e = small
        .gemm_tiled_split_dispatch(dev, reg, &xb, &yb, 2, t, coop, &part)
        .unwrap_err();
    assert!(
        e.to_string().contains("in steps of 64 for the tiled GEMM"),
        "{e}"
    );
}
