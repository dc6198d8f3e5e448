//! The fused GEMV with its multiply on cooperative matrices (tensor cores;
//! `GpuCodedMatrix::gemv_coop`, `wgsl/rans_gemv_coop.wgsl`, `wgsl/x_coop.wgsl`) against a CPU
//! f64 reference, its refusals, and corrupt streams.
//!
//! The context is `GpuContext::with_cooperative_matrix`. Only adapters offering
//! `Features::EXPERIMENTAL_COOPERATIVE_MATRIX` with 16x16x16 f16 multiplies (NVIDIA's tensor
//! cores through Vulkan) run the kernels; elsewhere (lavapipe in CI) the tests check that
//! every entry point refuses by name and say loudly that the kernels did not run.

mod gpu_common;

use std::sync::OnceLock;

use ecq::dtype::FloatDType;
use ecq::gpu::{CoopOrder, GpuCodedMatrix, GpuContext, GpuError, QuantParamsRef};
use ecq::quant::{quantize_affine, AffineParams, QuantizedMatrix};
use ecq::rans::{EncodeOptions, EncodedMatrix, SplitMatrix, SplitOrder};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use gpu_common::{bits, gaussian, random_matrix};

/// Error bound of the summation, per accumulated term, relative to the sum of the terms'
/// magnitudes: the f32 kernels are held to `2^-24 (K + 64) sum|terms|` (tests/gpu_gemv.rs says
/// why). The tensor cores add in f32, aligned to the largest addend and truncated (Fasi et al.
/// 2021 measured this on NVIDIA GPUs): at most 2^-23 of the sum's magnitude a step, so
/// `2^-22 (K + 64) sum|terms|` holds with a margin.
const TOL_PER_TERM: f64 = 1.0 / (1u64 << 22) as f64;

/// The activations' rounding, relative to the sum of the terms' magnitudes: x goes to the
/// tensor cores as f16 of x 2^e (scaled per 512 columns to below 2^14), within 2^-11 |x|, or
/// 2^-25 of the scaled units (2^-39 of the block's largest |x|) where it falls below f16's
/// normal range; the weights' q are exact in f16 and the products exact in f32. Zero for
/// activations that f16 holds after the scaling (the f16-valued ones tested here).
const TOL_F16_ROUNDING: f64 = 1.0 / (1u64 << 11) as f64;

/// The cooperative context of this binary, or `None` (announced) where no adapter exists.
fn ctx() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::with_cooperative_matrix() {
        Ok(c) => {
            eprintln!("GPU adapter: {}", c.describe());
            Some(c)
        }
        Err(e) => {
            gpu_common::announce_skip(&e);
            None
        }
    })
    .as_ref()
}

/// `q` as a window split in row pairs, `chunk` symbols a chunk, three chunks a tile.
fn window(q: &QuantizedMatrix, chunk: usize) -> SplitMatrix {
    let syms = q.symbols();
    SplitMatrix::encode_window_at(
        &syms,
        q.rows,
        q.cols,
        ecq::rans::window_start(&syms),
        &EncodeOptions {
            chunk_symbols: chunk,
            tile_chunks: 3,
            group_size: q.group_size,
            ..Default::default()
        },
        SplitOrder::RowPairs,
    )
    .unwrap()
}

/// f64 reference `Y = X W^T` and per output the sum of its terms' magnitudes.
fn reference(q: &QuantizedMatrix, x: &[f32], vectors: usize) -> (Vec<f64>, Vec<f64>) {
    let (r, k, gs) = (q.rows, q.cols, q.group_size as usize);
    let sym = q.symbols();
    let mut y = vec![0.0; vectors * r];
    let mut a = vec![0.0; vectors * r];
    for v in 0..vectors {
        for row in 0..r {
            let (mut t, mut m) = (0.0, 0.0);
            for g in 0..k / gs {
                let s = q.scales[row * (k / gs) + g] as f64;
                let b = q.biases[row * (k / gs) + g] as f64;
                for kk in g * gs..(g + 1) * gs {
                    let xv = x[v * k + kk] as f64;
                    let qv = sym[row * k + kk] as f64;
                    t += (s * qv + b) * xv;
                    m += (s * qv * xv).abs() + (b * xv).abs();
                }
            }
            y[v * r + row] = t;
            a[v * r + row] = m;
        }
    }
    (y, a)
}

/// Each output within the summation bound plus, for activations f16 does not hold
/// (`rounded`), their rounding.
#[track_caller]
fn assert_close(label: &str, got: &[f32], want: &[f64], sum_abs: &[f64], k: usize, rounded: bool) {
    let rounding = if rounded { TOL_F16_ROUNDING } else { 0.0 };
    assert_within(label, got, want, sum_abs, k, rounding);
}

/// Each output within the summation bound plus `rounding` of the sum of its terms'
/// magnitudes.
#[track_caller]
fn assert_within(label: &str, got: &[f32], want: &[f64], sum_abs: &[f64], k: usize, rounding: f64) {
    assert_eq!(got.len(), want.len(), "{label}");
    for i in 0..got.len() {
        let tol = (TOL_PER_TERM * (k as f64 + 64.0) + rounding) * sum_abs[i] + 1e-30;
        let err = (got[i] as f64 - want[i]).abs();
        assert!(
            err <= tol,
            "{label}: y[{i}] = {} expected {} (error {err:e} > tolerance {tol:e})",
            got[i],
            want[i]
        );
    }
}

/// The cooperative GEMM's `m` rows of outputs against the f64 reference: the summation
/// bound, the weights' rounding to f16 (2^-11 of the terms' magnitudes), the activations'
/// where f16 does not hold them (`rounded`), and 2^-25 of a row's |x| for activations that
/// the scaling puts below f16's normal range.
#[track_caller]
fn assert_gemm_close(
    label: &str,
    got: &[f32],
    q: &QuantizedMatrix,
    x: &[f32],
    m: usize,
    rounded: bool,
) {
    let (r, k) = (q.rows, q.cols);
    let (want, sum_abs) = reference(q, x, m);
    assert_eq!(got.len(), want.len(), "{label}");
    let x_rounding = if rounded { TOL_F16_ROUNDING } else { 0.0 };
    for (j, ((&g, &w), &a)) in got.iter().zip(&want).zip(&sum_abs).enumerate() {
        let row = j / r;
        let x_abs: f64 = x[row * k..(row + 1) * k]
            .iter()
            .map(|v| v.abs() as f64)
            .sum();
        let tol = (TOL_PER_TERM * (k as f64 + 64.0) + TOL_F16_ROUNDING + x_rounding) * a
            + x_abs / (1u64 << 25) as f64
            + 1e-30;
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol,
            "{label}: y[{row}][{}] = {g} expected {w} (error {err:e} > tolerance {tol:e})",
            j % r
        );
    }
}

/// Says loudly that the kernels did not run here, after the refusals were checked.
fn announce_no_coop(ctx: &GpuContext) {
    gpu_common::announce_unsupported(&format!(
        "cooperative-matrix GEMV: {} offers no 16x16x16 f16 cooperative matrices through \
         wgpu; the refusals were checked",
        ctx.adapter_name()
    ));
}

/// Against the f64 reference within the bound above: matrices of one and several tiles with
/// tiles that leave groups of a workgroup idle (three chunks a tile, eight groups a
/// workgroup), chunks of one and of several coded rows, MLX groups of 64 and 128, inputs of
/// two and of 28 blocks of 512, window starts from the data; 1, 3, 16 and 19 vectors (two
/// launches). Activations Gaussian, and with a dynamic range of 10^10 within a vector; the same
/// rounded to f16, within the summation bound alone. The plain baseline
/// (`GpuQuantizedMatrix::gemv_coop`, rows not a multiple of 16 included) within the same
/// bounds.
#[test]
fn coop_gemv_matches_reference() {
    let Some(ctx) = ctx() else { return };
    let (dev, queue, reg) = (ctx.device(), ctx.queue(), ctx.registry());
    // (rows, cols, group size, chunk symbols)
    let shapes = [
        (16, 1024, 64, 256),
        (46, 4096, 64, 1024),
        (30, 1024, 128, 1024),
        (12, 14336, 64, 3584),
        (8, 2048, 128, 4096),
    ];
    for (i, &(rows, cols, gs, chunk)) in shapes.iter().enumerate() {
        let q = random_matrix(3100 + i as u64, rows, cols, 4, gs).0;
        let s = window(&q, chunk);
        let m = ctx
            .upload_split(&s, Some(QuantParamsRef::from(&q)))
            .unwrap();
        let plain = ctx.upload_quantized(&q).unwrap();
        if !reg.cooperative_matrix() {
            assert!(!m.coop_supported(reg));
            let r = m.gemv_coop(dev, queue, reg, &vec![0.0; cols], 1);
            assert!(
                matches!(&r, Err(GpuError::Unsupported(e)) if e.contains("cooperative")),
                "{r:?}"
            );
            continue;
        }
        assert!(m.coop_supported(reg), "{rows}x{cols} g{gs}");
        let mut rng = ChaCha8Rng::seed_from_u64(3200 + i as u64);
        for &n in &[1usize, 3, 16, 19] {
            let mut x: Vec<f32> = (0..n * cols).map(|_| gaussian(&mut rng)).collect();
            if n == 3 {
                // vector 1 spans ten decades: |x| from 1e-6 to 1e4
                for (j, v) in x[cols..2 * cols].iter_mut().enumerate() {
                    *v *= 10f32.powi((j % 11) as i32 - 6);
                }
            }
            let label = format!("{rows}x{cols} g{gs} chunks of {chunk} symbols, {n} vectors");
            let got = m
                .gemv_coop(dev, queue, reg, &x, n)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let (want, sum_abs) = reference(&q, &x, n);
            assert_close(&label, &got, &want, &sum_abs, cols, true);
            // the same vectors rounded to f16 (as an f16 model's activations are): exact
            // products, only the summation's error
            let x16: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            let got = m
                .gemv_coop(dev, queue, reg, &x16, n)
                .unwrap_or_else(|e| panic!("{label}, f16 values: {e}"));
            let (want, sum_abs) = reference(&q, &x16, n);
            assert_close(
                &format!("{label}, f16 values"),
                &got,
                &want,
                &sum_abs,
                cols,
                false,
            );
            // the plain baseline on the same multiply: the same bounds
            let got = plain
                .gemv_coop(dev, queue, reg, &x16, n)
                .unwrap_or_else(|e| panic!("{label}, plain: {e}"));
            assert_close(
                &format!("{label}, plain, f16 values"),
                &got,
                &want,
                &sum_abs,
                cols,
                false,
            );
            let got = plain.gemv_coop(dev, queue, reg, &x, n).unwrap();
            let (want, sum_abs) = reference(&q, &x, n);
            assert_close(
                &format!("{label}, plain"),
                &got,
                &want,
                &sum_abs,
                cols,
                true,
            );
        }
    }
    if !reg.cooperative_matrix() {
        announce_no_coop(ctx);
    }
}

/// Edge cases of the activations: a vector of zeros gives zeros exactly; a NaN or an infinity
/// in a vector makes that vector's outputs NaN (as the f32 kernels' are NaN or infinite) and
/// leaves the others' within the bound.
#[test]
fn coop_gemv_zero_and_non_finite_activations() {
    let Some(ctx) = ctx() else { return };
    let (dev, queue, reg) = (ctx.device(), ctx.queue(), ctx.registry());
    if !reg.cooperative_matrix() {
        announce_no_coop(ctx);
        return;
    }
    let (rows, cols) = (16, 1024);
    let q = random_matrix(3300, rows, cols, 4, 64).0;
    let m = ctx
        .upload_split(&window(&q, 512), Some(QuantParamsRef::from(&q)))
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3301);
    let mut x: Vec<f32> = (0..4 * cols).map(|_| gaussian(&mut rng)).collect();
    x[..cols].fill(0.0);
    x[cols + 700] = f32::NAN;
    x[2 * cols + 5] = f32::INFINITY;
    let got = m.gemv_coop(dev, queue, reg, &x, 4).unwrap();
    assert!(got[..rows].iter().all(|&v| v == 0.0), "{:?}", &got[..rows]);
    for v in [1, 2] {
        let ys = &got[v * rows..(v + 1) * rows];
        assert!(ys.iter().all(|y| y.is_nan()), "vector {v}: {ys:?}");
    }
    let (want, sum_abs) = reference(&q, &x[3 * cols..], 1);
    assert_close("vector 3", &got[3 * rows..], &want, &sum_abs, cols, true);
}

/// What the cooperative launches refuse, by name: matrices coded whole, window splits in
/// row-major order, MLX groups of 32, matrices without scales, activations of another width
/// or count, outputs too small; and every entry point on a device without the feature. (Inputs
/// not a multiple of 512 are refused too, but no window split in row pairs has them: the
/// upload needs whole 1024-weight runs.)
#[test]
fn coop_gemv_refusals() {
    let Some(ctx) = ctx() else { return };
    let (dev, reg) = (ctx.device(), ctx.registry());
    let unsupported = |label: &str, r: Result<ecq::gpu::Dispatch, GpuError>, want: &str| match r {
        Err(GpuError::Unsupported(e)) => assert!(e.contains(want), "{label}: {e}"),
        Err(e) => panic!("{label}: expected Unsupported, got {e}"),
        Ok(_) => panic!("{label}: expected Unsupported, got a launch"),
    };
    let invalid = |label: &str, r: Result<ecq::gpu::Dispatch, GpuError>| {
        assert!(
            matches!(&r, Err(GpuError::InvalidInput(_))),
            "{label}: {:?}",
            r.err()
        )
    };
    for bad in [0, 17] {
        assert!(matches!(
            ecq::gpu::CoopActivations::new(dev, 1024, bad, CoopOrder::Window),
            Err(GpuError::InvalidInput(_))
        ));
    }
    assert!(matches!(
        ecq::gpu::CoopActivations::new(dev, 1000, 2, CoopOrder::Window),
        Err(GpuError::InvalidInput(_))
    ));
    let acts = ecq::gpu::CoopActivations::new(dev, 1024, 2, CoopOrder::Window).unwrap();
    let x = gpu_common::storage(dev, 2 * 1024 * 4);
    let y = |bytes: u64| gpu_common::storage(dev, bytes);
    let q = random_matrix(3400, 8, 1024, 4, 64).0;
    let good = ctx
        .upload_split(&window(&q, 512), Some(QuantParamsRef::from(&q)))
        .unwrap();
    if !reg.cooperative_matrix() {
        unsupported(
            "activations",
            ecq::gpu::coop_x_dispatch(dev, reg, &x, &acts),
            "cooperative",
        );
        unsupported(
            "GEMV",
            good.gemv_coop_dispatch(dev, reg, &acts, &y(8 * 4 * 2)),
            "cooperative",
        );
        let packed = ecq::gpu::CoopActivations::new(dev, 1024, 2, CoopOrder::Packed).unwrap();
        let plain = ctx.upload_quantized(&q).unwrap();
        assert!(!plain.coop_supported(reg));
        unsupported(
            "plain GEMV",
            plain.gemv_coop_dispatch(dev, reg, &packed, &y(8 * 4 * 2)),
            "cooperative",
        );
        announce_no_coop(ctx);
        return;
    }
    invalid(
        "x too small",
        ecq::gpu::coop_x_dispatch(dev, reg, &y(1024 * 4), &acts),
    );
    invalid(
        "y too small",
        good.gemv_coop_dispatch(dev, reg, &acts, &y(8 * 4 * 2 - 4)),
    );
    let narrow = ecq::gpu::CoopActivations::new(dev, 512, 2, CoopOrder::Window).unwrap();
    invalid(
        "activations of 512 for 1024 inputs",
        good.gemv_coop_dispatch(dev, reg, &narrow, &y(8 * 4 * 2)),
    );
    let packed = ecq::gpu::CoopActivations::new(dev, 1024, 2, CoopOrder::Packed).unwrap();
    invalid(
        "activations in the packed order",
        good.gemv_coop_dispatch(dev, reg, &packed, &y(8 * 4 * 2)),
    );
    // the plain baseline: the window order, groups of 32 and 2 bits refused
    let plain = ctx.upload_quantized(&q).unwrap();
    assert!(plain.coop_supported(reg));
    invalid(
        "plain, activations in the window order",
        plain.gemv_coop_dispatch(dev, reg, &acts, &y(8 * 4 * 2)),
    );
    invalid(
        "plain, y too small",
        plain.gemv_coop_dispatch(dev, reg, &packed, &y(8 * 4 * 2 - 4)),
    );
    for (bits, gs) in [(4, 32), (2, 64)] {
        let w: Vec<f32> = (0..8 * 1024)
            .map(|i| ((i * 7919) % 113) as f32 - 56.0)
            .collect();
        let qq = quantize_affine(
            &w,
            8,
            1024,
            FloatDType::F32,
            AffineParams::new(bits, gs).unwrap(),
        )
        .unwrap();
        let m = ctx.upload_quantized(&qq).unwrap();
        unsupported(
            &format!("plain {bits} bits, groups of {gs}"),
            m.gemv_coop_dispatch(dev, reg, &packed, &y(1 << 12)),
            "cooperative 4-bit GEMV needs",
        );
    }
    let whole = ecq::rans::encode(
        &q.symbols(),
        8,
        1024,
        4,
        &EncodeOptions {
            group_size: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let m = ctx
        .upload_coded((&whole).into(), Some(QuantParamsRef::from(&q)))
        .unwrap();
    unsupported(
        "coded whole",
        m.gemv_coop_dispatch(dev, reg, &acts, &y(1 << 12)),
        "window splits in row pairs",
    );
    let rows_order = SplitMatrix::encode_window(
        &q.symbols(),
        8,
        1024,
        &EncodeOptions::default(),
        SplitOrder::Rows,
    )
    .unwrap();
    let m = ctx
        .upload_split(&rows_order, Some(QuantParamsRef::from(&q)))
        .unwrap();
    unsupported(
        "row-major window split",
        m.gemv_coop_dispatch(dev, reg, &acts, &y(1 << 12)),
        "window splits in row pairs",
    );
    let q32 = random_matrix(3401, 8, 1024, 4, 32).0;
    let m = ctx
        .upload_split(&window(&q32, 512), Some(QuantParamsRef::from(&q32)))
        .unwrap();
    unsupported(
        "groups of 32",
        m.gemv_coop_dispatch(dev, reg, &acts, &y(1 << 12)),
        "groups of 64 or 128",
    );
    let q2048 = random_matrix(3402, 8, 2048, 4, 64).0;
    let upload = GpuCodedMatrix::upload_split(dev, &window(&q2048, 512), None).unwrap();
    unsupported(
        "no scales",
        upload.gemv_coop_dispatch(dev, reg, &acts, &y(1 << 12)),
        "scales and biases",
    );
}

/// A corrupt window split is reported by chunk, never multiplied into silently wrong output:
/// a flipped word in the middle of chunk 1 and of the last chunk.
#[test]
fn coop_gemv_reports_corrupt_stream() {
    let Some(ctx) = ctx() else { return };
    let (dev, queue, reg) = (ctx.device(), ctx.queue(), ctx.registry());
    if !reg.cooperative_matrix() {
        announce_no_coop(ctx);
        return;
    }
    let (rows, cols) = (16, 1024);
    let q = random_matrix(3500, rows, cols, 4, 64).0;
    let quant = QuantParamsRef::from(&q);
    let s = window(&q, 256);
    let n = s.high().n_chunks();
    assert!(n >= 3, "{n} chunks");
    let start = s.window().unwrap();
    let (high, low, _, low_crc) = s.into_parts();
    let (header, freqs, states, offsets, words, crc) = high.into_parts();
    let x = vec![1.0f32; 2 * cols];
    for chunk in [1, n - 1] {
        let mut words = words.clone();
        words[(offsets[chunk] + offsets[chunk + 1]) as usize / 2] ^= 0x5A5A;
        let high = EncodedMatrix::from_parts(
            &header,
            freqs.clone(),
            states.clone(),
            offsets.clone(),
            words,
            crc.clone(),
        )
        .unwrap();
        let s =
            SplitMatrix::from_parts_window(high, low.clone(), low_crc, SplitOrder::RowPairs, start)
                .unwrap();
        let m = ctx.upload_split(&s, Some(quant)).unwrap();
        match m.gemv_coop(dev, queue, reg, &x, 2) {
            Err(GpuError::CorruptStream { chunk: c, .. }) => assert_eq!(c, chunk),
            r => panic!("chunk {chunk}: expected a corrupt stream, got {r:?}"),
        }
    }
}

/// The diagnostic builds (`GpuCodedMatrix::coop_diagnostic_dispatch`) run, and those that
/// decode (1: the decode alone, 2: with the tile's stores and barriers) report no stream
/// errors on a valid matrix, as the kernel reports none; 3 reads no stream, so its chunks end
/// unconsumed; other numbers are refused. The plain kernel's builds
/// (`GpuQuantizedMatrix::coop_diagnostic_dispatch`, 1-5) run; other numbers are refused.
#[test]
fn coop_diagnostic_builds() {
    let Some(ctx) = ctx() else { return };
    let (dev, queue, reg) = (ctx.device(), ctx.queue(), ctx.registry());
    if !reg.cooperative_matrix() {
        announce_no_coop(ctx);
        return;
    }
    let (rows, cols) = (16, 1024);
    let q = random_matrix(3600, rows, cols, 4, 64).0;
    let m = ctx
        .upload_split(&window(&q, 256), Some(QuantParamsRef::from(&q)))
        .unwrap();
    let x = vec![0.5f32; 2 * cols];
    let xb = dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (x.len() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&xb, 0, bytemuck::cast_slice(&x));
    let yb = dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (2 * rows * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let acts = ecq::gpu::CoopActivations::new(dev, cols, 2, CoopOrder::Window).unwrap();
    let prep = ecq::gpu::coop_x_dispatch(dev, reg, &xb, &acts).unwrap();
    let mut failures = Vec::new();
    let kernel = m.gemv_coop_dispatch(dev, reg, &acts, &yb).unwrap();
    for diag in 0..=3 {
        let d = if diag == 0 {
            kernel.clone()
        } else {
            m.coop_diagnostic_dispatch(dev, reg, &acts, &yb, diag)
                .unwrap()
        };
        let mut enc = dev.create_command_encoder(&Default::default());
        enc.clear_buffer(m.errors_buffer(), 0, None);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            prep.record(&mut pass);
            d.record(&mut pass);
        }
        queue.submit([enc.finish()]);
        ctx.wait().unwrap();
        // (build 3 never reads the stream: every chunk ends unconsumed)
        match (diag, m.check_errors(dev, queue)) {
            (3, Err(GpuError::CorruptStream { .. })) | (0..=2, Ok(())) => {}
            (_, r) => failures.push(format!("build {diag}: {r:?}")),
        }
    }
    for bad in [0, 4] {
        assert!(matches!(
            m.coop_diagnostic_dispatch(dev, reg, &acts, &yb, bad),
            Err(GpuError::InvalidInput(_))
        ));
    }
    assert!(failures.is_empty(), "{failures:?}");
    // the plain kernel's builds 1-5 build and run; 0 and 6 are refused
    let plain = ctx.upload_quantized(&q).unwrap();
    let packed = ecq::gpu::CoopActivations::new(dev, cols, 2, CoopOrder::Packed).unwrap();
    let prep = ecq::gpu::coop_x_dispatch(dev, reg, &xb, &packed).unwrap();
    let mut enc = dev.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        prep.record(&mut pass);
        for diag in 1..=5 {
            plain
                .coop_diagnostic_dispatch(dev, reg, &packed, &yb, diag)
                .unwrap()
                .record(&mut pass);
        }
    }
    queue.submit([enc.finish()]);
    ctx.wait().unwrap();
    for bad in [0, 6] {
        assert!(matches!(
            plain.coop_diagnostic_dispatch(dev, reg, &packed, &yb, bad),
            Err(GpuError::InvalidInput(_))
        ));
    }
}

/// The activations' rounding is what the bound above allows and no more: with `x_k = ±(1 +
/// 2^-12)`, signed like `w_k` so that every term adds, f16 rounds each `x` to ±1 and the
/// outputs come out `2^-12` low, within `2^-11` of the sum of the terms' magnitudes; with
/// `x_k = ±(1 + 2^-10)`, which f16 holds, within the summation bound.
#[test]
fn coop_gemv_rounds_activations_to_f16() {
    let Some(ctx) = ctx() else { return };
    let (dev, queue, reg) = (ctx.device(), ctx.queue(), ctx.registry());
    if !reg.cooperative_matrix() {
        announce_no_coop(ctx);
        return;
    }
    let (rows, cols) = (16, 4096);
    let q = random_matrix(3700, rows, cols, 4, 64).0;
    let m = ctx
        .upload_split(&window(&q, 1024), Some(QuantParamsRef::from(&q)))
        .unwrap();
    let sym = q.symbols();
    let gpr = cols / 64;
    for (delta, rounded) in [(1.0 / 4096.0, true), (1.0 / 1024.0, false)] {
        // one vector per row: x signed like that row's dequantized weights
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let (row, k) = (i / cols, i % cols);
                let g = row * gpr + k / 64;
                let w = q.scales[g] * sym[row * cols + k] as f32 + q.biases[g];
                (1.0 + delta) * if w < 0.0 { -1.0 } else { 1.0 }
            })
            .collect();
        let got = m.gemv_coop(dev, queue, reg, &x, rows).unwrap();
        let (want, sum_abs) = reference(&q, &x, rows);
        assert_close(
            &format!("x = ±(1 + {delta})"),
            &got,
            &want,
            &sum_abs,
            cols,
            rounded,
        );
    }
}

/// A whole-coded layer (the file format's default) has no cooperative fused kernel, but with
/// `LinearOptions::cooperative_matrix` its calls decoding first run the plain layer's
/// cooperative kernels where the device has them: `decode_first_cooperative_matrix()` says so
/// (and is false for 8-bit weights, inputs not a multiple of 512, and without the option), it
/// decodes first from `DECODE_FIRST_MIN_ROWS_NOT_WINDOW` rows as without the option (from
/// `DECODE_FIRST_MIN_ROWS_PORTABLE` on CPU devices and GPUs without 32-wide subgroups), and its
/// outputs are the plain cooperative layer's bit for bit (host and recorded calls, f32 and
/// cooperative launches and the cooperative GEMM), within the cooperative bounds of the f64
/// reference. Elsewhere (lavapipe) the layer
/// decodes first in f32, as without the option.
#[test]
fn coop_whole_layers_decode_first_on_cooperative_matrices() {
    use ecq::linear::{
        CodedLayerRef, EntropyCodedLinear, Linear, LinearDevice, LinearOptions, QuantizedLinear,
        DECODE_FIRST_MIN_ROWS_NOT_WINDOW, DECODE_FIRST_MIN_ROWS_PORTABLE,
    };
    use gpu_common::{recorded, Placement};
    if ctx().is_none() {
        return;
    }
    let dev = LinearDevice::from_context(GpuContext::with_cooperative_matrix().unwrap());
    let offered = dev.gpu().registry().cooperative_matrix();
    let coop = LinearOptions {
        cooperative_matrix: true,
        ..Default::default()
    };
    let whole = |q: &QuantizedMatrix| {
        let opts = EncodeOptions {
            chunk_symbols: 2048,
            group_size: q.group_size,
            ..Default::default()
        };
        ecq::rans::encode(&q.symbols(), q.rows, q.cols, q.bits, &opts).unwrap()
    };
    // 8-bit weights and inputs not a multiple of 512: no cooperative plain kernel
    for (seed, rows, cols, b) in [(3900u64, 48, 1024, 8), (3901, 48, 768, 4)] {
        let q = random_matrix(seed, rows, cols, b, 64).0;
        let e = whole(&q);
        let layer = CodedLayerRef::from_encoded(&e, 64, &q.scales, &q.biases, None);
        let gpu = EntropyCodedLinear::upload(&dev, "whole", layer, &coop).unwrap();
        assert!(!gpu.cooperative_matrix() && !gpu.decode_first_cooperative_matrix());
    }
    let (rows, cols) = (300, 1024);
    let q = random_matrix(3902, rows, cols, 4, 64).0;
    let e = whole(&q);
    let layer = || CodedLayerRef::from_encoded(&e, 64, &q.scales, &q.biases, None);
    let gpu = EntropyCodedLinear::upload(&dev, "whole coop", layer(), &coop).unwrap();
    let f32_layer =
        EntropyCodedLinear::upload(&dev, "whole", layer(), &LinearOptions::default()).unwrap();
    assert!(!gpu.cooperative_matrix());
    assert_eq!(gpu.decode_first_cooperative_matrix(), offered);
    assert!(!f32_layer.decode_first_cooperative_matrix());
    // (CPU devices and GPUs without 32-wide subgroups decode such layers first from one row)
    let min = if dev.gpu().registry().cpu_device() || !dev.gpu().registry().subgroups32() {
        DECODE_FIRST_MIN_ROWS_PORTABLE
    } else {
        DECODE_FIRST_MIN_ROWS_NOT_WINDOW
    };
    assert_eq!(gpu.decode_first_min_rows(), min);
    assert_eq!(f32_layer.decode_first_min_rows(), min);
    if !offered {
        announce_no_coop(dev.gpu());
        return;
    }
    let mut plain = QuantizedLinear::upload(&dev, "plain", &q, None).unwrap();
    assert!(plain.set_cooperative_matrix(true));
    let mut rng = ChaCha8Rng::seed_from_u64(3903);
    // (f32 launches below COOP_MIN_ROWS, cooperative launches of 16 below the GEMM's rows,
    // the GEMM from them)
    for m in [DECODE_FIRST_MIN_ROWS_NOT_WINDOW, 12, 16, 40, 130] {
        let x: Vec<f32> = (0..m * cols).map(|_| gaussian(&mut rng)).collect();
        let got = gpu.forward_batch(&x, m).unwrap();
        assert_eq!(
            bits(&got),
            bits(plain.forward_batch(&x, m).unwrap()),
            "{m} rows: the plain cooperative layer's outputs"
        );
        let columns = ecq::linear::ActivationOrder::Columns;
        let rec = recorded(&gpu, &x, columns, m, Placement::START).unwrap();
        assert_eq!(bits(&rec), bits(&got), "{m} rows recorded");
        let (want, sum_abs) = reference(&q, &x, m);
        assert_within(
            &format!("{m} rows"),
            &got,
            &want,
            &sum_abs,
            cols,
            2.0 * TOL_F16_ROUNDING,
        );
    }
}

/// The layers' cooperative launches (`LinearOptions::cooperative_matrix`,
/// `QuantizedLinear::set_cooperative_matrix`): `forward_batch` of 20 rows (a launch of 16 on
/// cooperative matrices, one of 4 in f32), and where the device has cooperative matrices of
/// 600 rows of a layer of more than 2^22 weights (launches in two submissions, where the
/// layers would otherwise run the batched kernel), within the bounds above of the f64
/// reference, for a
/// window split in row pairs and for the plain layer; `cooperative_matrix()` says whether a
/// layer takes them, which it does exactly where the device has them (elsewhere, lavapipe in
/// CI, the same rows run in f32); without the option no layer does.
#[test]
fn coop_layers_match_reference() {
    use ecq::linear::{
        CodedLayerRef, EntropyCodedLinear, GpuLinear, Linear, LinearDevice, LinearOptions,
        QuantizedLinear,
    };
    use gpu_common::{recorded, Placement};
    let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    if ctx().is_none() {
        return;
    }
    let dev = LinearDevice::from_context(GpuContext::with_cooperative_matrix().unwrap());
    let offered = dev.gpu().registry().cooperative_matrix();
    let (rows, cols, m) = (40, 2048, 20);
    let q = random_matrix(3800, rows, cols, 4, 64).0;
    let s = window(&q, 512);
    let layer_ref = || CodedLayerRef::from_split(&s, 64, &q.scales, &q.biases, None);
    let coop = LinearOptions {
        cooperative_matrix: true,
        ..Default::default()
    };
    let fused = EntropyCodedLinear::upload(&dev, "coop", layer_ref(), &coop).unwrap();
    assert_eq!(fused.cooperative_matrix(), offered);
    let f32_layer =
        EntropyCodedLinear::upload(&dev, "f32", layer_ref(), &LinearOptions::default()).unwrap();
    assert!(!f32_layer.cooperative_matrix());
    let mut plain = QuantizedLinear::upload(&dev, "coop plain", &q, None).unwrap();
    assert!(!plain.cooperative_matrix());
    assert_eq!(plain.set_cooperative_matrix(true), offered);
    let mut rng = ChaCha8Rng::seed_from_u64(3801);
    let x: Vec<f32> = (0..m * cols).map(|_| gaussian(&mut rng)).collect();
    let (want, sum_abs) = reference(&q, &x, m);
    for (label, got) in [
        ("fused", fused.forward_batch(&x, m).unwrap()),
        ("plain", plain.forward_batch(&x, m).unwrap()),
    ] {
        assert_close(
            &format!("{label}, {m} rows"),
            &got,
            &want,
            &sum_abs,
            cols,
            true,
        );
    }
    // the cooperative GEMM from 2 rows: 2 rows, then 3 and 5, more than the activation rows
    // the device kept for 2 hold (their scalings' buffer has room for four)
    if offered {
        let mut gemm = QuantizedLinear::upload(&dev, "coop gemm", &q, None).unwrap();
        assert!(gemm.set_cooperative_matrix(true));
        gemm.set_coop_gemm_min_rows(Some(2));
        for m in [2, 3, 5] {
            let x: Vec<f32> = (0..m * cols).map(|_| gaussian(&mut rng)).collect();
            let (want, sum_abs) = reference(&q, &x, m);
            assert_within(
                &format!("cooperative GEMM, {m} rows"),
                &gemm.forward_batch(&x, m).unwrap(),
                &want,
                &sum_abs,
                cols,
                2.0 * TOL_F16_ROUNDING,
            );
        }
    }
    // a layer of more than 2^22 weights runs launches at every row count with the option: 600
    // rows in two submissions (where the cooperative launches run; on lavapipe this would be
    // minutes of software GPU for nothing new)
    if offered {
        let (rows, m) = (2112, 600);
        let q = random_matrix(3802, rows, cols, 4, 64).0;
        let s = window(&q, 512);
        let layer_ref = CodedLayerRef::from_split(&s, 64, &q.scales, &q.biases, None);
        // (the fused launches at every row count, and the same layer decoding first, whose
        // outputs are the plain layer's bit for bit)
        let fused_opts = LinearOptions {
            decode_first_min_rows: Some(usize::MAX),
            ..coop.clone()
        };
        let fused = EntropyCodedLinear::upload(&dev, "coop big", layer_ref, &fused_opts).unwrap();
        let layer_ref = CodedLayerRef::from_split(&s, 64, &q.scales, &q.biases, None);
        let decoding = EntropyCodedLinear::upload(&dev, "coop big dec", layer_ref, &coop).unwrap();
        assert_eq!(
            decoding.decode_first_min_rows(),
            ecq::linear::DECODE_FIRST_MIN_ROWS_COOP
        );
        let mut plain = QuantizedLinear::upload(&dev, "coop big plain", &q, None).unwrap();
        assert!(fused.cooperative_matrix() && plain.set_cooperative_matrix(true));
        assert_eq!(plain.coop_gemm_min_rows(), ecq::linear::COOP_GEMM_MIN_ROWS);
        // (the plain layer's launches of 16 rows instead of the cooperative GEMM)
        let mut plain_gemv = QuantizedLinear::upload(&dev, "coop big gemv", &q, None).unwrap();
        plain_gemv.set_cooperative_matrix(true);
        plain_gemv.set_coop_gemm_min_rows(Some(usize::MAX));
        let x: Vec<f32> = (0..m * cols).map(|_| gaussian(&mut rng)).collect();
        let (want, sum_abs) = reference(&q, &x, m);
        assert_eq!(
            bits(&decoding.forward_batch(&x, m).unwrap()),
            bits(&plain.forward_batch(&x, m).unwrap()),
            "decoding first, {m} rows"
        );
        for (label, layer, gemm) in [
            ("fused", &fused as &dyn GpuLinear, false),
            ("decoding first", &decoding, true),
            ("plain", &plain, true),
            ("plain, launches of 16", &plain_gemv, false),
        ] {
            let got = layer.forward_batch(&x, m).unwrap();
            // (the cooperative GEMM rounds the dequantized weights to f16 as well)
            let weights = if gemm { TOL_F16_ROUNDING } else { 0.0 };
            assert_within(
                &format!("{label}, {m} rows"),
                &got,
                &want,
                &sum_abs,
                cols,
                TOL_F16_ROUNDING + weights,
            );
            // recorded on GPU buffers: the same launches, so the same bits (lane order given
            // too: the cooperative launches take column order back)
            let columns = ecq::linear::ActivationOrder::Columns;
            let rec = recorded(layer, &x, columns, m, Placement::START).unwrap();
            assert_eq!(bits(&rec), bits(&got), "{label}, {m} rows recorded");
            let lanes = ecq::gpu::x_lane_order(&x, cols).unwrap();
            let order = ecq::linear::ActivationOrder::Lanes;
            let rec = recorded(layer, &lanes, order, m, Placement::START).unwrap();
            assert_eq!(
                bits(&rec),
                bits(&got),
                "{label}, {m} rows recorded, lane order"
            );
        }
        // calls of other row counts, host and recorded, reuse the GEMM's kept activation rows
        // (one set a width, grown to the most rows, not one a row count): a second round of
        // new counts keeps what the first left
        let round = |ms: &[usize], rng: &mut ChaCha8Rng| {
            for &m in ms {
                let x: Vec<f32> = (0..m * cols).map(|_| gaussian(rng)).collect();
                let columns = ecq::linear::ActivationOrder::Columns;
                for layer in [&decoding as &dyn GpuLinear, &plain] {
                    let got = layer.forward_batch(&x, m).unwrap();
                    let rec = recorded(layer, &x, columns, m, Placement::START).unwrap();
                    assert_eq!(bits(&rec), bits(&got), "{m} rows recorded");
                }
            }
            dev.call_buffer_bytes()
        };
        let first = round(&[65, 77, 100, 130, 300], &mut rng);
        let second = round(&[66, 78, 101, 131, 299], &mut rng);
        assert_eq!(
            second, first,
            "bytes kept after a second round of row counts"
        );
    }
    if !offered {
        announce_no_coop(dev.gpu());
    }
}

/// The cooperative GEMM (`GpuQuantizedMatrix::gemm_coop`, `wgsl/qgemm_coop.wgsl` after
/// `wgsl/x_rows_f16.wgsl`) against the f64 reference: the summation bound, plus 2^-11 for the
/// weights rounded to f16 once dequantized (2^-25 absolute below f16's normal range, times the
/// activations' magnitudes), plus 2^-11 for activations f16 does not hold. Matrix rows and
/// activation rows that leave tiles partly empty (37, 200, 300 rows; 1, 7, 100, 513 activation
/// rows), tiles of 64 and of 128 activation rows, MLX groups of 32, 64 and 128, inputs of 64
/// to 4096; Gaussian activations, with a dynamic range of 10^10 within a row, and f16-valued
/// ones. A row holding a NaN gives NaN
/// outputs and leaves the other rows alone. Refusals by name: no cooperative device (lavapipe),
/// 2 bits, inputs not a multiple of 64, activations of another width, `y` too small.
#[test]
fn coop_gemm_matches_reference() {
    let Some(ctx) = ctx() else { return };
    let (dev, queue, reg) = (ctx.device(), ctx.queue(), ctx.registry());
    let offered = reg.cooperative_matrix();
    assert!(matches!(
        ecq::gpu::CoopRows::new(dev, 100, 4),
        Err(GpuError::InvalidInput(_))
    ));
    assert!(matches!(
        ecq::gpu::CoopRows::new(dev, 128, 0),
        Err(GpuError::InvalidInput(_))
    ));
    let q = random_matrix(3900, 40, 256, 4, 64).0;
    let gq = ecq::gpu::GpuQuantizedMatrix::upload(dev, &q).unwrap();
    let rows = ecq::gpu::CoopRows::new(dev, 256, 5).unwrap();
    let storage = |bytes: u64| gpu_common::storage(dev, bytes);
    let (xb, yb) = (storage(5 * 256 * 4), storage(5 * 40 * 4));
    if !offered {
        for r in [
            gq.gemm_coop_dispatch(dev, reg, &rows, &yb),
            ecq::gpu::coop_rows_dispatch(dev, reg, &xb, &rows),
        ] {
            match r {
                Err(GpuError::Unsupported(e)) => assert!(e.contains("cooperative"), "{e}"),
                other => panic!("expected Unsupported, got {:?}", other.err()),
            }
        }
        assert!(!gq.gemm_coop_supported(reg));
        announce_no_coop(ctx);
        return;
    }
    assert!(gq.gemm_coop_supported(reg));
    // refusals on a cooperative device
    let two_bit =
        ecq::gpu::GpuQuantizedMatrix::upload(dev, &random_matrix(3901, 16, 256, 2, 64).0).unwrap();
    assert!(matches!(
        two_bit.gemm_coop_dispatch(dev, reg, &rows, &yb),
        Err(GpuError::Unsupported(_))
    ));
    let narrow = ecq::gpu::GpuQuantizedMatrix::upload(dev, &random_matrix(3902, 16, 96, 4, 32).0);
    if let Ok(narrow) = narrow {
        assert!(!narrow.gemm_coop_supported(reg));
    }
    assert!(matches!(
        gq.gemm_coop_dispatch_with(dev, reg, &rows, &yb, 96),
        Err(GpuError::InvalidInput(_))
    ));
    let other_width = ecq::gpu::CoopRows::new(dev, 512, 5).unwrap();
    assert!(matches!(
        gq.gemm_coop_dispatch(dev, reg, &other_width, &yb),
        Err(GpuError::InvalidInput(_))
    ));
    assert!(matches!(
        gq.gemm_coop_dispatch(dev, reg, &rows, &storage(5 * 40 * 4 - 16)),
        Err(GpuError::InvalidInput(_))
    ));
    assert!(matches!(
        ecq::gpu::coop_rows_dispatch(dev, reg, &storage(5 * 256 * 4 - 16), &rows),
        Err(GpuError::InvalidInput(_))
    ));
    // (rows, cols, group size, activation rows)
    let shapes = [
        (37, 64, 32, 1),
        (200, 512, 64, 100),
        (128, 1024, 128, 64),
        (40, 192, 32, 7),
        (300, 4096, 64, 513),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(3903);
    for (i, &(r, k, gs, m)) in shapes.iter().enumerate() {
        let q = random_matrix(3910 + i as u64, r, k, 4, gs).0;
        let gq = ecq::gpu::GpuQuantizedMatrix::upload(dev, &q).unwrap();
        let gaussian_x: Vec<f32> = (0..m * k).map(|_| gaussian(&mut rng)).collect();
        let ranged: Vec<f32> = gaussian_x
            .iter()
            .enumerate()
            .map(|(j, &v)| v * 10f32.powi((j % k) as i32 % 11 - 5))
            .collect();
        let f16_valued: Vec<f32> = gaussian_x
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        for (what, x, rounded, tile) in [
            ("gaussian", &gaussian_x, true, 64),
            ("gaussian", &gaussian_x, true, 128),
            ("range 10^10", &ranged, true, 64),
            ("f16 values", &f16_valued, false, 128),
        ] {
            let got = gq.gemm_coop_with(dev, queue, reg, x, m, tile).unwrap();
            let label = format!("{r}x{k} g{gs}, {m} rows, {what}, tiles of {tile}");
            assert_gemm_close(&label, &got, &q, x, m, rounded);
        }
        // a NaN in one row: that row's outputs NaN, the others as without it
        if m >= 2 {
            let mut x = gaussian_x.clone();
            x[k + k / 2] = f32::NAN;
            let tile = if i % 2 == 0 { 64 } else { 128 };
            let got = gq.gemm_coop_with(dev, queue, reg, &x, m, tile).unwrap();
            let clean = gq
                .gemm_coop_with(dev, queue, reg, &gaussian_x, m, tile)
                .unwrap();
            for (j, (&g, &c)) in got.iter().zip(&clean).enumerate() {
                if j / r == 1 {
                    assert!(g.is_nan(), "{r}x{k}: row 1 output {} = {g}", j % r);
                } else {
                    assert_eq!(g.to_bits(), c.to_bits(), "{r}x{k}: output {j}");
                }
            }
        }
    }
}

/// The cooperative GEMM in column splits (`gemm_coop_split_dispatch`, split-K): 2 to 64
/// splits, ragged last ranges, tiles of 64 and 128 activation rows, matrices and activation
/// rows that leave tiles partly empty: within the unsplit GEMM's bound of the f64 reference
/// (another order of f32 sums) and the same bits on a second run (the partial sums start as
/// NaN); a NaN in one row leaves the other rows as without it. The rule
/// (`gemm_coop_split`), the split counts and the refusals, on every device.
#[test]
fn coop_gemm_split_matches_reference() {
    use ecq::gpu::{GemmSplit, COOP_GEMM_SPLIT_MIN_COLS, COOP_GEMM_SPLIT_WORKGROUPS};
    let Some(ctx) = ctx() else { return };
    let (dev, queue, reg) = (ctx.device(), ctx.queue(), ctx.registry());
    // the counts: ranges of whole 64-column steps, each holding one at the least
    assert_eq!(GemmSplit::coop(1024, 1), None);
    assert_eq!(GemmSplit::coop(64, 2), None);
    assert_eq!(GemmSplit::coop(1056, 2), None, "not a multiple of 64");
    let counts = |cols, n| GemmSplit::coop(cols, n).map(|s| (s.splits(), s.cols_per_split()));
    assert_eq!(counts(128, 2), Some((2, 64)));
    assert_eq!(counts(192, 2), Some((2, 128)));
    assert_eq!(counts(4096, 3), Some((3, 1408)));
    assert_eq!(counts(4096, 1000), Some((64, 64)));
    // the rule: grids below COOP_GEMM_SPLIT_WORKGROUPS split up to that many workgroups,
    // each split COOP_GEMM_SPLIT_MIN_COLS columns at the least
    let q = random_matrix(3960, 1024, 4096, 4, 64).0;
    let kv = ecq::gpu::GpuQuantizedMatrix::upload(dev, &q).unwrap();
    let rule = |m, tile| kv.gemm_coop_split(m, tile).map(|s| s.splits());
    // (8 tiles: 32 splits asked, 4096 / 512 = 8 allowed)
    assert_eq!(rule(64, 64), Some(4096 / COOP_GEMM_SPLIT_MIN_COLS));
    // (8 * 16 = 128 tiles: no split)
    assert_eq!(rule(1024, 64), None);
    // (8 * 8 = 64 tiles: 4 splits)
    assert_eq!(rule(512, 64), Some(COOP_GEMM_SPLIT_WORKGROUPS / 64));
    assert_eq!(rule(0, 64), None);
    let q = random_matrix(3961, 128, 512, 4, 64).0;
    let one_step = ecq::gpu::GpuQuantizedMatrix::upload(dev, &q).unwrap();
    assert_eq!(
        one_step.gemm_coop_split(64, 64),
        None,
        "512 columns: one split"
    );
    // refusals
    let storage = |bytes: u64| gpu_common::storage(dev, bytes);
    let rows = ecq::gpu::CoopRows::new(dev, 4096, 2).unwrap();
    let (yb, part) = (storage(2 * 1024 * 4), storage(2 * 1024 * 4));
    let split = GemmSplit::coop(4096, 3).unwrap();
    let e = kv
        .gemm_coop_split_dispatch(dev, reg, &rows, &yb, 64, split, &part)
        .unwrap_err();
    if !reg.cooperative_matrix() {
        assert!(matches!(e, GpuError::Unsupported(_)), "{e}");
        let e = kv
            .gemm_coop_split_with(dev, queue, reg, &vec![0.0; 2 * 4096], 2, 64, split)
            .unwrap_err();
        assert!(matches!(e, GpuError::Unsupported(_)), "{e}");
        announce_no_coop(ctx);
        return;
    }
    assert!(
        e.to_string().contains(
            "partial sums have 8192 bytes, 3 splits of 2 rows of 1024 outputs need 16384"
        ),
        "{e}"
    );
    for other in [GemmSplit::coop(512, 2), GemmSplit::tiled(4096, 3)] {
        let e = kv
            .gemm_coop_split_dispatch(dev, reg, &rows, &yb, 64, other.unwrap(), &part)
            .unwrap_err();
        assert!(
            matches!(e, GpuError::InvalidInput(_)) && e.to_string().contains("a split of"),
            "{e}"
        );
    }
    // (rows, cols, group size, activation rows, splits asked for)
    let cases = [
        (200, 1024, 64, 100, vec![2, 3, 16]),
        (37, 4096, 128, 65, vec![5, 8, 64]),
        (300, 512, 32, 130, vec![2, 8]),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(3970);
    for (i, (r, k, gs, m, asked)) in cases.into_iter().enumerate() {
        let q = random_matrix(3971 + i as u64, r, k, 4, gs).0;
        let gq = ecq::gpu::GpuQuantizedMatrix::upload(dev, &q).unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| gaussian(&mut rng)).collect();
        let mut with_nan = x.clone();
        with_nan[k + k / 3] = f32::NAN;
        for n in asked {
            let split = GemmSplit::coop(k, n).unwrap();
            for tile in [64, 128] {
                let label = format!("{r}x{k} g{gs}, {m} rows, {n} splits, tiles of {tile}");
                let run = |x: &[f32]| {
                    gq.gemm_coop_split_with(dev, queue, reg, x, m, tile, split)
                        .unwrap_or_else(|e| panic!("{label}: {e}"))
                };
                let got = run(&x);
                assert_gemm_close(&label, &got, &q, &x, m, true);
                assert_eq!(bits(run(&x)), bits(&got), "{label}: again");
                let nan = run(&with_nan);
                for (j, (&g, &c)) in nan.iter().zip(&got).enumerate() {
                    if j / r == 1 {
                        assert!(g.is_nan(), "{label}: row 1 output {} = {g}", j % r);
                    } else {
                        assert_eq!(g.to_bits(), c.to_bits(), "{label}: output {j}");
                    }
                }
            }
        }
    }
}
