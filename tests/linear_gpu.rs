//! `EntropyCodedLinear` (fused GEMV and batched `rans_gemm.wgsl`) and `QuantizedLinear`
//! (`qgemm.wgsl`) against the CPU reference, errors, row-band splitting, and loading every
//! layer of a coded model written to a temporary directory.
//!
//! Runs on any adapter wgpu finds (lavapipe in CI); prints `SKIPPED: no GPU adapter` and passes
//! when there is none. Tolerance: `ecq::linear::tolerance` (see `TOLERANCE_PER_TERM`).

mod gpu_common;

use std::sync::{Arc, OnceLock};

use ecq::dtype::FloatDType;
use ecq::linear::{
    tolerance, CodedLayerRef, CpuLinear, EntropyCodedLinear, EntropyCodedModel, Linear,
    LinearDevice, LinearError, LinearOptions, QuantizedLinear,
};
use ecq::quant::{quantize_affine, AffineParams, QuantizedMatrix};
use ecq::rans::{encode, EncodeOptions, EncodedMatrix, SplitMatrix, SplitOrder};
use half::f16;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use gpu_common::{bits, gaussian};

fn dev() -> Option<&'static Arc<LinearDevice>> {
    static DEV: OnceLock<Option<Arc<LinearDevice>>> = OnceLock::new();
    DEV.get_or_init(|| match LinearDevice::new() {
        Ok(d) => {
            eprintln!("GPU adapter: {}", d.gpu().describe());
            Some(d)
        }
        Err(e) => {
            gpu_common::announce_skip(&e);
            None
        }
    })
    .as_ref()
}

struct Case {
    q: QuantizedMatrix,
    enc: EncodedMatrix,
    bias: Vec<f32>,
}

fn case(
    seed: u64,
    rows: usize,
    cols: usize,
    bits: u32,
    gs: u32,
    chunk_symbols: usize,
    tile_chunks: usize,
) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let q = gpu_common::quantized_gaussian(&mut rng, rows, cols, bits, gs);
    let opts = EncodeOptions {
        chunk_symbols,
        tile_chunks,
        group_size: gs,
        ..Default::default()
    };
    let enc = encode(&q.symbols(), rows, cols, bits, &opts).expect("encode");
    let bias = (0..rows).map(|_| gaussian(&mut rng) * 0.1).collect();
    Case { q, enc, bias }
}

fn activations(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    (0..n).map(|_| gaussian(&mut rng)).collect()
}

/// Options whose calls run the fused kernels at every row count, never decoding first: layers
/// that are not window splits, and window splits where the blocked batched kernel does not run
/// them, decode first from 2 rows by default (`DECODE_FIRST_MIN_ROWS_NOT_WINDOW`; from 1 on CPU
/// devices), so the tests of the fused paths ask for them.
fn fused_only() -> LinearOptions {
    LinearOptions {
        decode_first_min_rows: Some(usize::MAX),
        keep_stored_form: true,
        ..Default::default()
    }
}

/// The defaults, with a model's layers uploaded in their stored form (the tests of a form).
fn stored_form() -> LinearOptions {
    LinearOptions {
        keep_stored_form: true,
        ..Default::default()
    }
}

/// A layer's coded form, for the default rows of decoding first.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    Whole,
    Split,
    Window,
}

/// The rows from which a layer of `form` that can decode first does by default (in f32), its
/// fused GEMV on the lanes kernel or not (`lanes_gemv`, `EntropyCodedLinear::lanes_gemv_width`):
/// `DECODE_FIRST_MIN_ROWS_LANES` where that GEMV keeps one row (window splits, and split
/// matrices on GPUs); a window split's `DECODE_FIRST_MIN_ROWS` where the blocked batched kernel
/// runs it (32-wide subgroups); the others' `DECODE_FIRST_MIN_ROWS_NOT_WINDOW` (on CPU devices
/// and GPUs without 32-wide subgroups `DECODE_FIRST_MIN_ROWS_PORTABLE`), window splits
/// elsewhere included.
fn default_decode_first_rows(d: &LinearDevice, form: Form, lanes_gemv: bool) -> usize {
    let registry = d.gpu().registry();
    let lanes_one_row =
        lanes_gemv && (form == Form::Window || (form == Form::Split && !registry.cpu_device()));
    if lanes_one_row {
        ecq::linear::DECODE_FIRST_MIN_ROWS_LANES
    } else if form == Form::Window && registry.subgroups32() {
        ecq::linear::DECODE_FIRST_MIN_ROWS
    } else if registry.cpu_device() || !registry.subgroups32() {
        ecq::linear::DECODE_FIRST_MIN_ROWS_PORTABLE
    } else {
        ecq::linear::DECODE_FIRST_MIN_ROWS_NOT_WINDOW
    }
}

fn upload(
    d: &Arc<LinearDevice>,
    c: &Case,
    opts: &LinearOptions,
) -> Result<EntropyCodedLinear, LinearError> {
    EntropyCodedLinear::upload(
        d,
        "test",
        CodedLayerRef::from_encoded(
            &c.enc,
            c.q.group_size as usize,
            &c.q.scales,
            &c.q.biases,
            Some(&c.bias),
        ),
        opts,
    )
}

/// Checks `got` (m rows) against the CPU reference within `tolerance` (plus `rel` of |y| for
/// outputs rounded to f16).
#[track_caller]
fn assert_close(label: &str, cpu: &CpuLinear, x: &[f32], m: usize, got: &[f32], rel: f64) {
    let (want, sum_abs) = cpu.reference(x, m).unwrap();
    assert_eq!(got.len(), want.len(), "{label}: output length");
    let k = cpu.in_features();
    for i in 0..got.len() {
        let tol = tolerance(k, sum_abs[i]) + rel * want[i].abs();
        let err = (got[i] as f64 - want[i]).abs();
        assert!(
            err <= tol,
            "{label}: y[{}][{}] = {} expected {} (error {err:e} > tolerance {tol:e})",
            i / cpu.out_features(),
            i % cpu.out_features(),
            got[i],
            want[i]
        );
    }
}

const SHAPES: &[(usize, usize, u32, u32, usize, usize)] = &[
    // rows, cols, bits, group, chunk_symbols, tile_chunks
    (64, 256, 4, 64, 16384, 8),
    (37, 384, 4, 64, 1024, 2), // ragged last chunk and tile, K not a multiple of 256
    (96, 512, 2, 32, 4096, 3), // w = 4
    (40, 192, 8, 64, 2048, 4), // w = 1
    (33, 320, 3, 32, 700, 5),  // 3 bits, w = 2
    (130, 1024, 4, 128, 2048, 1),
];

#[test]
fn forward_matches_cpu_reference() {
    let Some(d) = dev() else { return };
    for (i, &(r, k, b, gs, cs, tc)) in SHAPES.iter().enumerate() {
        let c = case(i as u64, r, k, b, gs, cs, tc);
        let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
        let x = activations(i as u64, k);
        // (the defaults, which on CPU devices decode first, and the fused GEMV)
        for (how, opts) in [
            ("defaults", LinearOptions::default()),
            ("fused", fused_only()),
        ] {
            let gpu = upload(d, &c, &opts).unwrap();
            assert_eq!((gpu.in_features(), gpu.out_features()), (k, r));
            let y = gpu.forward(&x).unwrap();
            assert_close(
                &format!("forward {r}x{k} b{b}, {how}"),
                &cpu,
                &x,
                1,
                &y,
                0.0,
            );
        }
    }
}

#[test]
fn forward_batch_matches_cpu_reference() {
    let Some(d) = dev() else { return };
    for (i, &(r, k, b, gs, cs, tc)) in SHAPES.iter().enumerate() {
        let c = case(100 + i as u64, r, k, b, gs, cs, tc);
        let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
        // (by default, and the fused kernels at every row count)
        for (how, opts) in [("", LinearOptions::default()), (", fused", fused_only())] {
            let gpu = upload(d, &c, &opts).unwrap();
            for m in [1usize, 2, 7, 33, 130] {
                let x = activations(1000 * i as u64 + m as u64, m * k);
                let y = gpu.forward_batch(&x, m).unwrap();
                assert_close(
                    &format!("forward_batch {r}x{k} b{b} m{m}{how}"),
                    &cpu,
                    &x,
                    m,
                    &y,
                    0.0,
                );
            }
        }
    }
}

#[test]
fn forward_batch_beyond_one_dispatch() {
    let Some(d) = dev() else { return };
    let c = case(7, 24, 128, 4, 64, 512, 2);
    let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
    let gpu = upload(d, &c, &LinearOptions::default()).unwrap();
    let m = 515; // 512 + 3: two blocks
    let x = activations(7, m * 128);
    assert_close(
        "m = 515",
        &cpu,
        &x,
        m,
        &gpu.forward_batch(&x, m).unwrap(),
        0.0,
    );
}

#[test]
fn plain_batched_baseline_matches_cpu_reference() {
    let Some(d) = dev() else { return };
    for (i, &(r, k, b, gs, _, _)) in SHAPES.iter().enumerate() {
        if ![2, 4, 8].contains(&b) {
            continue;
        }
        let c = case(200 + i as u64, r, k, b, gs, 16384, 8);
        let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
        let plain = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
        // (2..=8 rows of 4-bit weights: one launch of qgemv4_many where subgroups are 32
        // wide)
        for m in [1usize, 2, 5, 8, 9, 129] {
            let x = activations(i as u64 + 77 * m as u64, m * k);
            let y = plain.forward_batch(&x, m).unwrap();
            assert_close(&format!("qgemm {r}x{k} b{b} m{m}"), &cpu, &x, m, &y, 0.0);
        }
        // one vector: the plain GEMV where it takes the matrix, else qgemm
        let x = activations(i as u64 + 5000, k);
        let y = plain.forward(&x).unwrap();
        assert_close(&format!("plain forward {r}x{k} b{b}"), &cpu, &x, 1, &y, 0.0);
    }
}

/// The plain layer's tiled f32 GEMM (`QuantizedLinear::set_tiled_gemm`): on, off and by
/// default, with column splits on, off and by default (`set_tiled_gemm_splits`), at row
/// counts around `TILED_GEMM_MIN_ROWS` and past one launch (600 rows), on 4-bit shapes with
/// ragged tiles and every group size, within the CPU reference's tolerance; recorded calls
/// are `forward_batch`'s outputs bit for bit.
#[test]
fn plain_tiled_gemm_matches_cpu_reference() {
    use ecq::linear::{ActivationOrder, TILED_GEMM_MIN_ROWS};
    use gpu_common::{recorded, Placement};
    let Some(d) = dev() else { return };
    for (i, &(r, k, gs)) in [
        (64, 256, 64),
        (130, 1024, 128),
        (37, 384, 32),
        (37, 2048, 64),
    ]
    .iter()
    .enumerate()
    {
        let c = case(250 + i as u64, r, k, 4, gs, 16384, 8);
        let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
        for (tiled, splits) in [
            (Some(true), Some(false)),
            (Some(true), Some(true)),
            (Some(false), None),
            (None, None),
        ] {
            let mut plain = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
            plain.set_tiled_gemm(tiled);
            plain.set_tiled_gemm_splits(splits);
            // (qgemm's rows: no multi-vector launches)
            plain.set_gemv_many_max_m(Some(0));
            for m in [TILED_GEMM_MIN_ROWS - 1, TILED_GEMM_MIN_ROWS, 129, 600] {
                let label = format!("{r}x{k} g{gs} tiled {tiled:?} splits {splits:?}, {m} rows");
                let x = activations(900 + i as u64 + 31 * m as u64, m * k);
                let y = plain.forward_batch(&x, m).unwrap();
                assert_close(&label, &cpu, &x, m, &y, 0.0);
                let got = recorded(&plain, &x, ActivationOrder::Columns, m, Placement::START);
                assert_eq!(bits(got.unwrap()), bits(y), "{label}: recorded");
            }
        }
        // the layer on, without a bias, is the GPU module's tiled GEMM bit for bit, unsplit
        // and in the rule's splits
        let x = activations(990 + i as u64, 129 * k);
        let m = d.gpu().upload_quantized(&c.q).unwrap();
        let (dev, queue, reg) = (d.device(), d.queue(), d.gpu().registry());
        // (the layer's tile: the wide one on CPU devices)
        let tile = ecq::gpu::TiledGemmTile::for_device(reg, r, 129);
        for splits in [false, true] {
            let mut plain = QuantizedLinear::upload(d, "plain", &c.q, None).unwrap();
            plain.set_tiled_gemm(Some(true));
            plain.set_tiled_gemm_splits(Some(splits));
            let want = match m.gemm_tiled_split(129, tile).filter(|_| splits) {
                Some(sp) => m.gemm_tiled_split_with(dev, queue, reg, &x, 129, tile, sp),
                None => m.gemm_tiled(dev, queue, reg, &x, 129),
            };
            let got = plain.forward_batch(&x, 129).unwrap();
            assert_eq!(bits(got), bits(want.unwrap()), "{r}x{k}, splits {splits}");
        }
    }
}

/// On devices that run no multi-vector GEMV (CPU devices, GPUs without 32-wide subgroups: a
/// GPU with them is checked through `GpuContext::without_subgroups`), a plain layer's calls of
/// 2 to `CPU_GEMV_MAX_ROWS` rows (on GPUs `PORTABLE_GPU_GEMV_MAX_ROWS`) run the one-vector
/// GEMV a row: `forward` row by row bit for bit, host and recorded calls, activations given in
/// column and in lane order (a 4-bit layer, on lane order, and an 8-bit one, on columns);
/// `set_gemv_many_max_m` moves the bound (`Some(0)`: `qgemm`, within the CPU reference's
/// tolerance), and the tiled GEMM takes over from its rows (`TILED_GEMM_MIN_ROWS`, on GPUs
/// `TILED_GEMM_MIN_ROWS_PORTABLE_GPU`).
#[test]
fn plain_portable_device_gemv_a_row() {
    use ecq::linear::{
        ActivationOrder, CPU_GEMV_MAX_ROWS, PORTABLE_GPU_GEMV_MAX_ROWS, TILED_GEMM_MIN_ROWS,
        TILED_GEMM_MIN_ROWS_PORTABLE_GPU,
    };
    use gpu_common::{recorded, Placement};
    let Some(d) = dev() else { return };
    let portable;
    let d = if d.gpu().registry().subgroups32() {
        portable = LinearDevice::from_context(
            ecq::gpu::GpuContext::new()
                .expect("a second context on the test adapter")
                .without_subgroups(),
        );
        &portable
    } else {
        d
    };
    let (max_rows, tiled_rows) = if d.gpu().registry().cpu_device() {
        (CPU_GEMV_MAX_ROWS, TILED_GEMM_MIN_ROWS)
    } else {
        (PORTABLE_GPU_GEMV_MAX_ROWS, TILED_GEMM_MIN_ROWS_PORTABLE_GPU)
    };
    assert!(max_rows < tiled_rows);
    for (seed, r, k, b) in [(2700u64, 70usize, 512usize, 4u32), (2701, 40, 256, 8)] {
        let c = case(seed, r, k, b, 64, 2048, 4);
        let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
        let plain = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
        let row_by_row = |x: &[f32]| -> Vec<u32> {
            bits(
                x.chunks(k)
                    .flat_map(|row| plain.forward(row).unwrap())
                    .collect::<Vec<f32>>(),
            )
        };
        for m in [2, 5, max_rows] {
            let label = format!("{r}x{k} b{b}, {m} rows");
            let x = activations(seed + m as u64, m * k);
            let want = row_by_row(&x);
            assert_eq!(bits(plain.forward_batch(&x, m).unwrap()), want, "{label}");
            let got = recorded(&plain, &x, ActivationOrder::Columns, m, Placement::START);
            assert_eq!(bits(got.unwrap()), want, "{label}: recorded");
            if b == 4 {
                let lanes = ecq::gpu::x_lane_order(&x, k).unwrap();
                let got = recorded(&plain, &lanes, ActivationOrder::Lanes, m, Placement::START);
                assert_eq!(bits(got.unwrap()), want, "{label}: recorded, lane order");
            }
        }
        // the bound moved: GEMVs up to 40 rows, and `qgemm` from 2
        let mut wider = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
        wider.set_gemv_many_max_m(Some(40));
        let mut qgemm = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
        qgemm.set_gemv_many_max_m(Some(0));
        let m = tiled_rows + 3;
        let x = activations(seed + 99, m * k);
        assert_eq!(
            bits(wider.forward_batch(&x, m).unwrap()),
            row_by_row(&x),
            "{r}x{k} b{b}: GEMVs up to 40 rows"
        );
        for (what, layer) in [("qgemm", &qgemm), ("default", &plain)] {
            let y = layer.forward_batch(&x[..3 * k], 3).unwrap();
            assert_close(
                &format!("{r}x{k} b{b} {what}"),
                &cpu,
                &x[..3 * k],
                3,
                &y,
                0.0,
            );
        }
        // from the tiled GEMM's rows (4 bits) the GEMM, not the GEMVs
        if b == 4 {
            let m = d.gpu().upload_quantized(&c.q).unwrap();
            let (dev, queue, reg) = (d.device(), d.queue(), d.gpu().registry());
            let rows = tiled_rows;
            let x = activations(seed + 7, rows * k);
            let tile = ecq::gpu::TiledGemmTile::for_device(reg, r, rows);
            let mut want = m.gemm_tiled_with(dev, queue, reg, &x, rows, tile).unwrap();
            for (i, v) in want.iter_mut().enumerate() {
                *v += c.bias[i % r];
            }
            // (unsplit, as `want`: GPUs split the GEMM's columns by default, another order of
            // sums)
            let mut unsplit = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
            unsplit.set_tiled_gemm_splits(Some(false));
            assert_eq!(
                bits(unsplit.forward_batch(&x, rows).unwrap()),
                bits(want),
                "{r}x{k}: the tiled GEMM from {rows} rows"
            );
        }
    }
}

/// `QuantizedLinear::set_tiled_gemm_min_rows` runs the tiled f32 GEMM from the rows it names
/// (the module's GEMM bit for bit there, `qgemm`'s outputs below), `set_tiled_gemm` maps onto
/// it, and `LinearOptions::tiled_gemm_min_rows` gives a coded layer's calls decoding first
/// the same choice (the plain layer's outputs bit for bit on both sides of it).
#[test]
fn plain_tiled_gemm_from_the_rows_asked_for() {
    use ecq::linear::{
        TILED_GEMM_MIN_ROWS, TILED_GEMM_MIN_ROWS_PORTABLE_GPU, TILED_GEMM_MIN_ROWS_SUBGROUPS,
    };
    let Some(d) = dev() else { return };
    let (r, k, from) = (70, 512, 5);
    let c = case(260, r, k, 4, 64, 2048, 4);
    let upload_plain = |min: Option<usize>| {
        let mut p = QuantizedLinear::upload(d, "plain", &c.q, None).unwrap();
        p.set_tiled_gemm_min_rows(min);
        p.set_tiled_gemm_splits(Some(false));
        p.set_gemv_many_max_m(Some(0));
        p
    };
    let default = upload_plain(None);
    let registry = d.gpu().registry();
    let by_device = if registry.subgroups32() {
        TILED_GEMM_MIN_ROWS_SUBGROUPS
    } else if registry.cpu_device() {
        TILED_GEMM_MIN_ROWS
    } else {
        TILED_GEMM_MIN_ROWS_PORTABLE_GPU
    };
    assert_eq!(default.tiled_gemm_min_rows(), by_device);
    assert_eq!(upload_plain(Some(0)).tiled_gemm_min_rows(), 2);
    let mut switched = upload_plain(None);
    switched.set_tiled_gemm(Some(true));
    assert_eq!(switched.tiled_gemm_min_rows(), TILED_GEMM_MIN_ROWS);
    switched.set_tiled_gemm(Some(false));
    assert_eq!(switched.tiled_gemm_min_rows(), usize::MAX);
    switched.set_tiled_gemm(None);
    assert_eq!(switched.tiled_gemm_min_rows(), by_device);

    let plain = upload_plain(Some(from));
    let never = upload_plain(Some(usize::MAX));
    assert_eq!(plain.tiled_gemm_min_rows(), from);
    let m = d.gpu().upload_quantized(&c.q).unwrap();
    let (dev, queue, reg) = (d.device(), d.queue(), d.gpu().registry());
    for rows in [from - 1, from, 33] {
        let x = activations(2600 + rows as u64, rows * k);
        let got = bits(plain.forward_batch(&x, rows).unwrap());
        if rows >= from {
            let tile = ecq::gpu::TiledGemmTile::for_device(reg, r, rows);
            let want = m.gemm_tiled_with(dev, queue, reg, &x, rows, tile).unwrap();
            assert_eq!(got, bits(want), "{rows} rows: the tiled GEMM");
        } else {
            let want = never.forward_batch(&x, rows).unwrap();
            assert_eq!(got, bits(want), "{rows} rows: below the GEMM's rows");
        }
    }
    // a coded layer decoding first takes the plain layer's choice (the layer with its bias,
    // and the other choices at their defaults, as the coded layer's plain layer has them)
    let mut plain = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
    plain.set_tiled_gemm_min_rows(Some(from));
    let opts = LinearOptions {
        decode_first_min_rows: Some(2),
        tiled_gemm_min_rows: Some(from),
        ..Default::default()
    };
    let coded = upload(d, &c, &opts).unwrap();
    assert_eq!(coded.decode_first_min_rows(), 2);
    for rows in [from - 1, from] {
        let x = activations(2700 + rows as u64, rows * k);
        assert_eq!(
            bits(coded.forward_batch(&x, rows).unwrap()),
            bits(plain.forward_batch(&x, rows).unwrap()),
            "coded, decoding first, {rows} rows"
        );
    }
}

/// `forward_batch_into` writes what `forward_batch` returns, bit for bit, through calls of
/// growing and shrinking row counts that reuse the device's kept buffers (a call never sees an
/// earlier call's activations or outputs): coded layers whole and in bands, with outputs in
/// place and copied (37 rows: launch offsets the device cannot bind), on the batched kernel
/// and on GEMVs (300 rows: submissions of `GEMV_SUBMIT_ROWS`, two in flight), and the plain
/// layer;
/// `release_call_buffers` drops the kept buffers and the next call makes new ones. A `y` of
/// another length is an error naming both lengths.
#[test]
fn forward_batch_into_reuses_the_call_buffers() {
    if dev().is_none() {
        return;
    }
    // (a device of its own: the other tests' calls would change its kept buffers)
    let d = LinearDevice::new().expect("a second device on the same adapter");
    for (seed, rows, limit) in [(60u64, 37usize, None), (61, 64, None), (62, 50, Some(1024))] {
        let c = case(seed, rows, 512, 4, 64, 256, 2);
        let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
        let coded = upload(
            &d,
            &c,
            &LinearOptions {
                max_buffer_bytes: limit,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(coded.n_bands() > 1, limit.is_some());
        // (fused GEMVs up to 300 rows: submissions of GEMV_SUBMIT_ROWS, two in flight)
        let coded_gemv = upload(
            &d,
            &c,
            &LinearOptions {
                max_buffer_bytes: limit,
                gemv_batch_max_m: Some(300),
                ..fused_only()
            },
        )
        .unwrap();
        let plain = QuantizedLinear::upload(&d, "plain", &c.q, Some(&c.bias)).unwrap();
        // (multi-vector launches at every row count where the device runs them, and never)
        let mut plain_many = QuantizedLinear::upload(&d, "plain", &c.q, Some(&c.bias)).unwrap();
        plain_many.set_gemv_many_max_m(Some(512));
        let mut plain_qgemm = QuantizedLinear::upload(&d, "plain", &c.q, Some(&c.bias)).unwrap();
        plain_qgemm.set_gemv_many_max_m(Some(0));
        for (round, m) in [9usize, 1, 20, 3, 600, 2, 300].into_iter().enumerate() {
            let x = activations(seed * 100 + round as u64, m * 512);
            for (name, layer) in [
                ("coded", &coded as &dyn Linear),
                ("coded, GEMVs up to 300 rows", &coded_gemv),
                ("plain", &plain),
                ("plain, launches up to 512 rows", &plain_many),
                ("plain, qgemm from 2 rows", &plain_qgemm),
            ] {
                let label = format!("{name} {rows} rows, {} bands, m {m}", coded.n_bands());
                let mut y = vec![f32::NAN; m * rows];
                layer.forward_batch_into(&x, m, &mut y).unwrap();
                assert_close(&label, &cpu, &x, m, &y, 0.0);
                let again = layer.forward_batch(&x, m).unwrap();
                assert_eq!(bits(y), bits(again), "{label}: into against allocating");
            }
        }
        assert!(d.call_buffer_bytes() > 0);
        d.release_call_buffers();
        assert_eq!(d.call_buffer_bytes(), 0);
        let x = activations(seed, 4 * 512);
        assert_close(
            "after the release",
            &cpu,
            &x,
            4,
            &coded.forward_batch(&x, 4).unwrap(),
            0.0,
        );
        let mut short = vec![0.0; 4 * rows - 1];
        for layer in [&coded as &dyn Linear, &plain] {
            match layer.forward_batch_into(&x, 4, &mut short) {
                Err(LinearError::OutputMismatch {
                    got,
                    expected,
                    out_features,
                    ..
                }) => assert_eq!(
                    (got, expected, out_features),
                    (4 * rows - 1, 4 * rows, rows)
                ),
                other => panic!("expected OutputMismatch, got {other:?}"),
            }
        }
    }
}

#[test]
fn f16_activations() {
    let Some(d) = dev() else { return };
    let c = case(9, 48, 256, 4, 64, 2048, 2);
    let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
    let gpu = upload(d, &c, &LinearOptions::default()).unwrap();
    let x16: Vec<f16> = activations(9, 3 * 256)
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    let x32: Vec<f32> = x16.iter().map(|v| v.to_f32()).collect();
    // outputs are rounded to f16 once: relative error 2^-11
    let rel = 1.0 / 2048.0;
    let y1: Vec<f32> = gpu
        .forward_f16(&x16[..256])
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert_close("forward_f16", &cpu, &x32[..256], 1, &y1, rel);
    let y3: Vec<f32> = gpu
        .forward_batch_f16(&x16, 3)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert_close("forward_batch_f16", &cpu, &x32, 3, &y3, rel);
}

/// The decode tables the host builds for the blocked fused GEMV and the workgroup kernels
/// (the default) change no result: a layer uploaded with `tables_built_in_kernel` gives the
/// same outputs bit for bit, one vector and a batch, fused and decoding first, in one row band
/// and in several (one vector within the CPU reference's tolerance where the host's tables put
/// it on the lanes fused GEMV), and holds no tables; the default holds one per tile. On the test adapter
/// and, where it has 32-wide subgroups, on a context of the portable kernels
/// (`GpuContext::without_subgroups`: the workgroup fused GEMV, batched kernel and decode).
#[test]
fn decode_tables_in_memory_change_no_result() {
    let Some(d) = dev() else { return };
    let mut devices = vec![("adapter", d.clone())];
    if d.gpu().registry().subgroups32() {
        let portable = ecq::gpu::GpuContext::new()
            .expect("a second context on the test adapter")
            .without_subgroups();
        devices.push(("portable", LinearDevice::from_context(portable)));
    }
    // 3 tiles of 2 one-row chunks (and a last tile of one), ~1.9 KB of stream a tile
    let c = case(31, 7, 2048, 4, 64, 512, 2);
    let x = activations(31, 3 * 2048);
    for (what, d) in &devices {
        let d: &Arc<LinearDevice> = d;
        let up =
            |opts: &LinearOptions| upload(d, &c, opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        let with =
            |tables_built_in_kernel, decode_first_min_rows, max_buffer_bytes| LinearOptions {
                tables_built_in_kernel,
                decode_first_min_rows,
                max_buffer_bytes,
                ..Default::default()
            };
        // fused, in one band and in bands of one tile (a buffer limit that still holds a
        // tile's table, 2576 bytes: a band whose tables exceed it builds them)
        for bands in [None, Some(2600)] {
            let mem = up(&with(false, Some(usize::MAX), bands));
            let built = up(&with(true, Some(usize::MAX), bands));
            let n_bands = if bands.is_some() { 4 } else { 1 };
            assert_eq!(mem.n_bands(), n_bands, "{what}");
            assert_eq!(built.table_bytes(), 0, "{what}");
            assert_eq!(mem.table_bytes(), 4 * 2576, "{what} {bands:?}");
            assert_eq!(
                mem.gpu_bytes(),
                built.gpu_bytes() + mem.table_bytes(),
                "{what}"
            );
            // (one row with the host's tables runs the lanes fused GEMV where the device runs
            // the lanes kernels, a kernel summing in another order: both within the CPU
            // reference's tolerance there)
            let (one_mem, one_built) = (
                mem.forward(&x[..2048]).unwrap(),
                built.forward(&x[..2048]).unwrap(),
            );
            assert_eq!(built.lanes_gemv_width(), None, "{what}");
            if mem.lanes_gemv_width().is_some() {
                let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
                let label = format!("{what} {bands:?} one row");
                assert_close(&label, &cpu, &x[..2048], 1, &one_mem, 0.0);
                assert_close(&label, &cpu, &x[..2048], 1, &one_built, 0.0);
            } else {
                assert_eq!(bits(one_mem), bits(one_built), "{what} {bands:?} one row");
            }
            assert_eq!(
                bits(mem.forward_batch(&x, 3).unwrap()),
                bits(built.forward_batch(&x, 3).unwrap()),
                "{what} {bands:?} three rows"
            );
        }
        // decoding first (the blocked decode builds its table for these layers either way; the
        // workgroup one loads the host's)
        let (mem, built) = (
            up(&with(false, Some(1), None)),
            up(&with(true, Some(1), None)),
        );
        assert_eq!(
            bits(mem.forward_batch(&x, 3).unwrap()),
            bits(built.forward_batch(&x, 3).unwrap()),
            "{what} decoding first"
        );
    }
}

#[test]
fn row_bands_when_buffers_are_limited() {
    let Some(d) = dev() else { return };
    // 1 row per chunk, 2 chunks per tile: tiles of 2 rows; a 1 KiB limit forces many bands
    let c = case(11, 50, 512, 4, 64, 256, 2);
    let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
    let opts = LinearOptions {
        max_buffer_bytes: Some(1024),
        ..Default::default()
    };
    let gpu = upload(d, &c, &opts).unwrap();
    assert!(
        gpu.n_bands() > 1,
        "expected a split, got {} band(s)",
        gpu.n_bands()
    );
    let x = activations(11, 512);
    assert_close(
        "banded forward",
        &cpu,
        &x,
        1,
        &gpu.forward(&x).unwrap(),
        0.0,
    );
    let xb = activations(12, 5 * 512);
    assert_close(
        "banded forward_batch",
        &cpu,
        &xb,
        5,
        &gpu.forward_batch(&xb, 5).unwrap(),
        0.0,
    );
}

#[test]
fn tile_larger_than_the_limit_is_an_error() {
    let Some(d) = dev() else { return };
    let c = case(13, 64, 256, 4, 64, 16384, 8);
    let err = upload(
        d,
        &c,
        &LinearOptions {
            max_buffer_bytes: Some(64),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, LinearError::TooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("tile 0") && msg.contains("64"), "{msg}");
}

#[test]
fn wrong_activation_length_is_an_error() {
    let Some(d) = dev() else { return };
    let c = case(14, 32, 128, 4, 64, 16384, 8);
    let gpu = upload(d, &c, &LinearOptions::default()).unwrap();
    for (res, m) in [
        (gpu.forward(&[0.0; 127]), 1),
        (gpu.forward_batch(&[0.0; 3 * 128 + 1], 3), 3),
    ] {
        match res {
            Err(LinearError::ShapeMismatch {
                got,
                expected,
                in_features,
                ..
            }) => {
                assert_eq!((expected, in_features), (m * 128, 128));
                assert_ne!(got, expected);
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }
    }
}

/// A 32x256 layer whose chunk 1 starts in a state below 2^16, uploaded with `opts` (and the
/// case it was coded from).
fn corrupt_layer(d: &Arc<LinearDevice>, opts: &LinearOptions) -> (EntropyCodedLinear, Case) {
    let c = case(15, 32, 256, 4, 64, 2048, 2);
    let mut states = c.enc.states().to_vec();
    states[40] = 5; // below 2^16: chunk 1
    let mut m = CodedLayerRef::from_encoded(&c.enc, 64, &c.q.scales, &c.q.biases, None);
    m.states = bytemuck::cast_slice(&states);
    let gpu = EntropyCodedLinear::upload(d, "corrupt", m, opts).unwrap();
    (gpu, c)
}

#[test]
fn corrupt_stream_is_reported() {
    let Some(d) = dev() else { return };
    for portable_gemm in [false, true] {
        let opts = LinearOptions {
            portable_gemm,
            ..fused_only()
        };
        let (gpu, _) = corrupt_layer(d, &opts);
        // (2 rows: per-row GEMVs where subgroups are 32 wide; 9 rows: the batched kernel,
        // blocked there unless portable_gemm)
        for res in [
            gpu.forward(&[1.0; 256]),
            gpu.forward_batch(&[1.0; 512], 2),
            gpu.forward_batch(&[1.0; 9 * 256], 9),
        ] {
            let msg = res.unwrap_err().to_string();
            assert!(msg.contains("corrupt") && msg.contains("chunk 1"), "{msg}");
        }
    }
}

/// Calls on one device from several threads at once, some of them failing (a corrupt
/// stream, found while a second submission is still in flight), each get their own kept
/// buffers: every good call gives bit for bit what it gives alone, and the failing ones name
/// the corrupt chunk.
#[test]
fn concurrent_calls_and_failing_calls_share_the_device() {
    if dev().is_none() {
        return;
    }
    let d = LinearDevice::new().expect("a second device on the same adapter");
    let c = case(70, 48, 512, 4, 64, 1024, 2);
    let good = upload(&d, &c, &LinearOptions::default()).unwrap();
    let plain = QuantizedLinear::upload(&d, "plain", &c.q, Some(&c.bias)).unwrap();
    let mut states = c.enc.states().to_vec();
    states[40] = 5; // below 2^16: chunk 1
    let mut m = CodedLayerRef::from_encoded(&c.enc, 64, &c.q.scales, &c.q.biases, None);
    m.states = bytemuck::cast_slice(&states);
    let bad = EntropyCodedLinear::upload(&d, "corrupt", m, &LinearOptions::default()).unwrap();
    // (600 rows: two submissions of the batched kernel, the failing calls abandoning the
    // second in flight)
    let rows: Vec<usize> = vec![1, 3, 17, 130, 9, 40, 600];
    let inputs: Vec<Vec<f32>> = rows
        .iter()
        .enumerate()
        .map(|(i, &m)| activations(700 + i as u64, m * 512))
        .collect();
    let alone: Vec<(Vec<u32>, Vec<u32>)> = rows
        .iter()
        .zip(&inputs)
        .map(|(&m, x)| {
            (
                bits(good.forward_batch(x, m).unwrap()),
                bits(plain.forward_batch(x, m).unwrap()),
            )
        })
        .collect();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (good, plain, bad) = (&good, &plain, &bad);
            let (rows, inputs, alone) = (&rows, &inputs, &alone);
            scope.spawn(move || {
                for round in 0..3 {
                    for (i, (&m, x)) in rows.iter().zip(inputs).enumerate() {
                        if (i + t + round) % 3 == 0 {
                            let err = bad.forward_batch(x, m).unwrap_err().to_string();
                            assert!(err.contains("chunk 1"), "{err}");
                        }
                        let label = format!("thread {t} round {round} m {m}");
                        assert_eq!(
                            bits(good.forward_batch(x, m).unwrap()),
                            alone[i].0,
                            "{label}"
                        );
                        assert_eq!(
                            bits(plain.forward_batch(x, m).unwrap()),
                            alone[i].1,
                            "{label}"
                        );
                    }
                }
            });
        }
    });
    assert!(d.call_buffer_bytes() > 0);
}

#[test]
fn coded_model_in_tempdir() {
    use ecq::container::encode_model;
    use ecq::model::quantize::matrix_tensors;
    use ecq::model::write::{write_model, WriteOptions};
    use ecq::model::{Model, TensorData};

    let Some(d) = dev() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mlx, coded) = (dir.path().join("mlx"), dir.path().join("ecq"));
    let layers = [
        ("blk.0.q", 64usize, 128usize),
        ("blk.0.up", 96, 256),
        ("blk.1.down", 48, 384),
    ];
    let mut tensors = Vec::new();
    let mut cases = Vec::new();
    for (i, &(p, r, k)) in layers.iter().enumerate() {
        let c = case(20 + i as u64, r, k, 4, 64, 16384, 8);
        tensors.extend(matrix_tensors(p, &c.q));
        let bias: Vec<u8> = c.bias.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((
            format!("{p}.bias"),
            TensorData::new(ecq::model::Dtype::F32, vec![r], bias),
        ));
        cases.push(c);
    }
    let config =
        serde_json::json!({"model_type": "test", "quantization": {"group_size": 64, "bits": 4}});
    write_model(&mlx, &tensors, Some(&config), &WriteOptions::default()).unwrap();
    let quiet = indicatif::ProgressBar::hidden();
    encode_model(
        &Model::open(&mlx).unwrap(),
        &coded,
        &EncodeOptions {
            group_size: 64,
            ..Default::default()
        },
        &quiet,
    )
    .unwrap();

    let model = EntropyCodedModel::open(d, &coded).unwrap();
    assert_eq!(
        model.layer_paths(),
        vec!["blk.0.q", "blk.0.up", "blk.1.down"]
    );
    assert_eq!(model.config().unwrap()["model_type"], "test");
    for (i, &(p, r, k)) in layers.iter().enumerate() {
        let layer = model.layer(p).unwrap();
        assert_eq!((layer.out_features(), layer.in_features()), (r, k));
        let cpu = CpuLinear::from_quantized(p, &cases[i].q, Some(cases[i].bias.clone())).unwrap();
        // the CPU path of the loader decodes the same weights
        assert_eq!(model.cpu_layer(p).unwrap().weights(), cpu.weights());
        let x = activations(i as u64, 4 * k);
        assert_close(p, &cpu, &x[..k], 1, &layer.forward(&x[..k]).unwrap(), 0.0);
        assert_close(p, &cpu, &x, 4, &layer.forward_batch(&x, 4).unwrap(), 0.0);
    }
    match model.layer("blk.0.k") {
        Err(e @ LinearError::MissingLayer { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("blk.0.k") && msg.contains("3 coded layers"),
                "{msg}"
            );
        }
        other => panic!("expected MissingLayer, got {other:?}"),
    }
}

/// A model stored whole (`ecq encode`'s default) or split 2 + 2 opens with its 4-bit layers of
/// a window split's shapes uploaded as the window splits `ecq encode --window --row-pairs`
/// stores (the same coded bytes on the GPU, the same outputs bit for bit as that file's
/// layers), the other layers as stored, and every layer matches the CPU reference of the
/// weights; `LinearOptions::keep_stored_form` uploads them as stored.
#[test]
fn coded_model_opens_as_window_splits() {
    use ecq::container::{encode_model_with, MatrixCoding};
    use ecq::model::quantize::matrix_tensors;
    use ecq::model::write::{write_model, WriteOptions};
    use ecq::model::Model;

    let Some(d) = dev() else { return };
    let dir = tempfile::tempdir().unwrap();
    // (row pairs of K = 512 and 1024; K = 384 is not a window split's shape)
    let layers = [
        ("blk.0.q", 64usize, 512usize, true),
        ("blk.0.up", 96, 1024, true),
        ("blk.1.down", 48, 384, false),
    ];
    let mut tensors = Vec::new();
    let mut cases = Vec::new();
    for (i, &(p, r, k, _)) in layers.iter().enumerate() {
        let c = case(60 + i as u64, r, k, 4, 64, 16384, 8);
        tensors.extend(matrix_tensors(p, &c.q));
        cases.push(c);
    }
    let mlx = dir.path().join("mlx");
    write_model(&mlx, &tensors, None, &WriteOptions::default()).unwrap();
    let mlx = Model::open(&mlx).unwrap();
    let quiet = indicatif::ProgressBar::hidden();
    let encoded = |name: &str, coding: MatrixCoding| {
        let out = dir.path().join(name);
        let opts = EncodeOptions {
            min_chunks: coding.default_min_chunks(),
            ..Default::default()
        };
        encode_model_with(&mlx, &out, &opts, coding, &quiet).unwrap();
        out
    };
    let window = EntropyCodedModel::open(
        d,
        encoded("window", MatrixCoding::Window4 { row_pairs: true }),
    )
    .unwrap();
    for coding in [
        MatrixCoding::Whole,
        MatrixCoding::Split4 { row_pairs: true },
    ] {
        let file = encoded(&format!("{coding:?}"), coding);
        let stored = EntropyCodedModel::open_with(d, &file, &stored_form()).unwrap();
        let progress = indicatif::ProgressBar::hidden();
        let model = EntropyCodedModel::open_with_progress(d, &file, &Default::default(), &progress)
            .unwrap();
        assert_eq!((progress.position(), progress.length()), (3, Some(3)));
        for (i, &(p, _, k, takes_window)) in layers.iter().enumerate() {
            let label = format!("{p} from {coding:?}");
            let (layer, direct) = (model.layer(p).unwrap(), window.layer(p).unwrap());
            assert_eq!(layer.window().is_some(), takes_window, "{label}");
            assert_eq!(stored.layer(p).unwrap().window(), None, "{label}");
            let x = activations(60 + i as u64, 3 * k);
            if takes_window {
                assert_eq!(layer.window(), direct.window(), "{label}");
                assert_eq!(layer.coded_bytes(), direct.coded_bytes(), "{label}");
                for m in [1, 3] {
                    assert_eq!(
                        bits(layer.forward_batch(&x[..m * k], m).unwrap()),
                        bits(direct.forward_batch(&x[..m * k], m).unwrap()),
                        "{label}, {m} rows"
                    );
                }
            } else {
                let s = stored.layer(p).unwrap();
                assert_eq!(layer.coded_bytes(), s.coded_bytes(), "{label}");
            }
            let cpu = CpuLinear::from_quantized(p, &cases[i].q, None).unwrap();
            assert_close(
                &label,
                &cpu,
                &x[..k],
                1,
                &layer.forward(&x[..k]).unwrap(),
                0.0,
            );
            assert_close(
                &label,
                &cpu,
                &x,
                3,
                &layer.forward_batch(&x, 3).unwrap(),
                0.0,
            );
        }
    }
}

/// `forward` runs the gpu module's fused GEMV kernel on the layer's own buffers (its uniform
/// block mirrors `src/gpu/decode.rs`): the result must be bit-identical to
/// `GpuContext::gemv_coded` on the same matrix, which catches a drift of that block.
#[test]
fn forward_is_the_gpu_module_fused_gemv() {
    use ecq::gpu::{CodedMatrixRef, QuantParamsRef};
    let Some(d) = dev() else { return };
    for (i, &(r, k, b, gs, cs, tc)) in SHAPES.iter().enumerate() {
        let c = case(300 + i as u64, r, k, b, gs, cs, tc);
        let x = activations(300 + i as u64, k);
        let m = d
            .gpu()
            .upload_coded(
                CodedMatrixRef::from(&c.enc),
                Some(QuantParamsRef::from(&c.q)),
            )
            .unwrap();
        let layer =
            CodedLayerRef::from_encoded(&c.enc, gs as usize, &c.q.scales, &c.q.biases, None);
        assert_forward_is_gemv_coded(d, &m, layer, &x, &format!("{r}x{k} b{b}"));
    }
}

/// The layer's `forward` on `x` is bit for bit `GpuContext::gemv_coded` of `m`.
#[track_caller]
fn assert_forward_is_gemv_coded(
    d: &Arc<LinearDevice>,
    m: &ecq::gpu::GpuCodedMatrix,
    layer: CodedLayerRef<'_>,
    x: &[f32],
    label: &str,
) {
    let want = d.gpu().gemv_coded(m, x).unwrap();
    let layer = EntropyCodedLinear::upload(d, "nobias", layer, &LinearOptions::default()).unwrap();
    let got = layer.forward(x).unwrap();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "{label}"
    );
}

/// A single coded safetensors file loads too; a model that is not coded is a clear error.
#[test]
fn coded_single_file_and_uncoded_model() {
    use ecq::container::encode_model;
    use ecq::model::quantize::matrix_tensors;
    use ecq::model::write::write_safetensors;
    use ecq::model::Model;

    let Some(d) = dev() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mlx, coded) = (
        dir.path().join("m.safetensors"),
        dir.path().join("c.safetensors"),
    );
    let c = case(31, 40, 256, 4, 64, 1024, 2);
    write_safetensors(&mlx, &matrix_tensors("lin", &c.q), &Default::default()).unwrap();
    let quiet = indicatif::ProgressBar::hidden();
    encode_model(
        &Model::open(&mlx).unwrap(),
        &coded,
        &EncodeOptions::default(),
        &quiet,
    )
    .unwrap();
    let model = EntropyCodedModel::open(d, &coded).unwrap();
    let layer = model.layer("lin").unwrap();
    let cpu = CpuLinear::from_quantized("lin", &c.q, None).unwrap();
    let x = activations(31, 3 * 256);
    assert_close(
        "single file",
        &cpu,
        &x,
        3,
        &layer.forward_batch(&x, 3).unwrap(),
        0.0,
    );

    let err = EntropyCodedModel::open(d, &mlx).unwrap_err();
    assert!(matches!(err, LinearError::Container(_)), "{err:?}");
    assert!(
        err.to_string().contains("not an entropy-coded model"),
        "{err}"
    );
}

/// A coded file whose word stream was altered is refused at load time by the tile checksum,
/// before anything reaches the GPU (whose kernels check structure, not checksums: a flipped word
/// can decode "cleanly" to wrong weights).
#[test]
fn altered_coded_file_is_refused_at_load() {
    use ecq::container::encode_model;
    use ecq::model::quantize::matrix_tensors;
    use ecq::model::write::write_safetensors;
    use ecq::model::Model;

    let Some(d) = dev() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mlx, coded) = (
        dir.path().join("m.safetensors"),
        dir.path().join("c.safetensors"),
    );
    let c = case(41, 40, 256, 4, 64, 1024, 2);
    write_safetensors(&mlx, &matrix_tensors("lin", &c.q), &Default::default()).unwrap();
    let quiet = indicatif::ProgressBar::hidden();
    encode_model(
        &Model::open(&mlx).unwrap(),
        &coded,
        &EncodeOptions::default(),
        &quiet,
    )
    .unwrap();
    flip_bits_in_tensor(&coded, "lin.weight.ecq_words", 2, 0x10);
    let err = EntropyCodedModel::open(d, &coded).unwrap_err();
    assert!(
        matches!(
            err,
            LinearError::Codec {
                source: ecq::rans::CodecError::ChecksumMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("lin") && err.to_string().contains("checksum"),
        "{err}"
    );
}

/// Split matrices (`SplitMatrix`, 4-bit weights split 2 + 2) in row order and in row-pair
/// order: `forward` (the fused GEMV) and `forward_batch` (`rans_gemm.wgsl` with raw low bits,
/// and its `PAIR` build) against the CPU reference, in one band and in many.
fn split_shapes() -> Vec<(usize, usize, u32, usize, usize, SplitOrder)> {
    vec![
        // rows, cols, group, chunk_symbols, tile_chunks, order
        (64, 1024, 64, 8192, 8, SplitOrder::RowPairs),
        (38, 512, 128, 300, 3, SplitOrder::RowPairs), // ragged last chunk and tile
        (33, 384, 64, 1024, 2, SplitOrder::Rows),     // odd rows, K not a multiple of 512
        (48, 2048, 32, 4096, 1, SplitOrder::Rows),
    ]
}

fn split_case(
    seed: u64,
    rows: usize,
    cols: usize,
    gs: u32,
    chunk_symbols: usize,
    tile_chunks: usize,
    order: SplitOrder,
) -> (Case, SplitMatrix) {
    let c = case(seed, rows, cols, 4, gs, 16384, 8);
    let opts = EncodeOptions {
        chunk_symbols,
        tile_chunks,
        group_size: gs,
        ..Default::default()
    };
    let s = SplitMatrix::encode_ordered(&c.q.symbols(), rows, cols, 4, 2, &opts, order).unwrap();
    assert_eq!(s.order(), order);
    (c, s)
}

#[test]
fn split_layers_match_cpu_reference() {
    let Some(d) = dev() else { return };
    for (i, (r, k, gs, cs, tc, order)) in split_shapes().into_iter().enumerate() {
        let (c, whole_tiles) = split_case(400 + i as u64, r, k, gs, cs, tc, order);
        // one coded row per chunk, two chunks per tile, for the banded uploads
        let (_, small_tiles) = split_case(400 + i as u64, r, k, gs, 1, 2, order);
        let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
        // (banded layers never decode first; whole ones by default and fused)
        for (s, limit, fused) in [
            (&whole_tiles, None, false),
            (&whole_tiles, None, true),
            (&small_tiles, Some(4096), false),
        ] {
            let base = if fused {
                fused_only()
            } else {
                LinearOptions::default()
            };
            let gpu = EntropyCodedLinear::upload(
                d,
                "split",
                CodedLayerRef::from_split(s, gs as usize, &c.q.scales, &c.q.biases, Some(&c.bias)),
                &LinearOptions {
                    max_buffer_bytes: limit,
                    ..base
                },
            )
            .unwrap();
            assert_eq!(
                (gpu.out_features(), gpu.in_features(), gpu.bits()),
                (r, k, 4)
            );
            if limit.is_some() {
                assert!(gpu.n_bands() > 1, "{r}x{k}: expected several bands");
            }
            let label = format!(
                "{r}x{k} g{gs} {order:?} bands {}{}",
                gpu.n_bands(),
                if fused { ", fused" } else { "" }
            );
            let x = activations(400 + i as u64, k);
            assert_close(&label, &cpu, &x, 1, &gpu.forward(&x).unwrap(), 0.0);
            for m in [1usize, 3, 130] {
                let x = activations(4000 + 10 * i as u64 + m as u64, m * k);
                let y = gpu.forward_batch(&x, m).unwrap();
                assert_close(&format!("{label} m{m}"), &cpu, &x, m, &y, 0.0);
            }
        }
    }
}

/// A split layer's `forward` runs the gpu module's fused GEMV: bit-identical to
/// `GpuContext::gemv_coded` on the same split matrix.
#[test]
fn split_forward_is_the_gpu_module_fused_gemv() {
    use ecq::gpu::QuantParamsRef;
    let Some(d) = dev() else { return };
    for (i, (r, k, gs, cs, tc, order)) in split_shapes().into_iter().enumerate() {
        let (c, s) = split_case(500 + i as u64, r, k, gs, cs, tc, order);
        let x = activations(500 + i as u64, k);
        let m = d
            .gpu()
            .upload_split(&s, Some(QuantParamsRef::from(&c.q)))
            .unwrap();
        let layer = CodedLayerRef::from_split(&s, gs as usize, &c.q.scales, &c.q.biases, None);
        assert_forward_is_gemv_coded(d, &m, layer, &x, &format!("{r}x{k} {order:?}"));
    }
}

#[test]
fn split_layer_with_bad_low_bits_is_an_error() {
    let Some(d) = dev() else { return };
    let (c, s) = split_case(600, 64, 1024, 64, 8192, 8, SplitOrder::RowPairs);
    let mut m = CodedLayerRef::from_split(&s, 64, &c.q.scales, &c.q.biases, None);
    let short = &m.low[..m.low.len() - 4];
    m.low = short;
    let err = EntropyCodedLinear::upload(d, "short", m, &LinearOptions::default()).unwrap_err();
    assert!(matches!(err, LinearError::InvalidLayer { .. }), "{err:?}");
    assert!(err.to_string().contains("ecq_low"), "{err}");
    let mut m = CodedLayerRef::from_split(&s, 64, &c.q.scales, &c.q.biases, None);
    m.low_bits = 1;
    let err = EntropyCodedLinear::upload(d, "one", m, &LinearOptions::default()).unwrap_err();
    assert!(matches!(err, LinearError::Unsupported { .. }), "{err:?}");
}

/// Opens the [`coded_model`] at `coded` and checks every layer against the CPU reference of
/// `cases`: its shape and bits, its decoded weights, and the same results as the CPU, exactly,
/// from `forward` and from `forward_batch` with each of `batch_rows` rows (activations from
/// `seed` + the layer's index).
fn check_coded_model(
    d: &Arc<LinearDevice>,
    coded: &std::path::Path,
    cases: &[Case],
    seed: u64,
    batch_rows: &[usize],
) {
    let model = EntropyCodedModel::open_with(d, coded, &stored_form()).unwrap();
    // (one row in the fused GEMV too: with the defaults CPU devices decode first)
    let fused = EntropyCodedModel::open_with(d, coded, &fused_only()).unwrap();
    let most = batch_rows.iter().copied().max().unwrap_or(1);
    for (i, &(p, r, k, b)) in MODEL_LAYERS.iter().enumerate() {
        let layer = model.layer(p).unwrap();
        assert_eq!(
            (layer.out_features(), layer.in_features(), layer.bits()),
            (r, k, b)
        );
        let cpu = CpuLinear::from_quantized(p, &cases[i].q, None).unwrap();
        assert_eq!(model.cpu_layer(p).unwrap().weights(), cpu.weights(), "{p}");
        let x = activations(seed + i as u64, most * k);
        assert_close(p, &cpu, &x[..k], 1, &layer.forward(&x[..k]).unwrap(), 0.0);
        let y = fused.layer(p).unwrap().forward(&x[..k]).unwrap();
        assert_close(&format!("{p} fused"), &cpu, &x[..k], 1, &y, 0.0);
        for &m in batch_rows {
            let y = layer.forward_batch(&x[..m * k], m).unwrap();
            assert_close(&format!("{p} m{m}"), &cpu, &x[..m * k], m, &y, 0.0);
        }
    }
}

/// The layers of [`coded_model`]: (module path, rows, cols, bits).
const MODEL_LAYERS: [(&str, usize, usize, u32); 3] = [
    ("blk.0.pairs", 64, 1024, 4),
    ("blk.0.rows", 36, 384, 4),
    ("blk.1.three", 32, 512, 3),
];

/// An MLX model of [`MODEL_LAYERS`] (random g64 weights from `seed`) written to `mlx` and coded
/// as `coding` asks into `coded`: the layers' cases and the encode summary.
fn coded_model(
    mlx: &std::path::Path,
    coded: &std::path::Path,
    seed: u64,
    coding: ecq::container::MatrixCoding,
) -> (Vec<Case>, ecq::container::Summary) {
    use ecq::model::quantize::matrix_tensors;
    use ecq::model::write::{write_model, WriteOptions};

    let mut tensors = Vec::new();
    let mut cases = Vec::new();
    for (i, &(p, r, k, b)) in MODEL_LAYERS.iter().enumerate() {
        let c = case(seed + i as u64, r, k, b, 64, 16384, 8);
        tensors.extend(matrix_tensors(p, &c.q));
        cases.push(c);
    }
    let config = serde_json::json!({"quantization": {"group_size": 64, "bits": 4,
        "blk.1.three": {"group_size": 64, "bits": 3}}});
    write_model(mlx, &tensors, Some(&config), &WriteOptions::default()).unwrap();
    let s = ecq::container::encode_model_with(
        &ecq::model::Model::open(mlx).unwrap(),
        coded,
        &EncodeOptions::default(),
        coding,
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    (cases, s)
}

/// `ecq encode --split --row-pairs` output loads as a model: every layer (row pairs, row order
/// and a 3-bit layer coded whole) matches the CPU reference; a flipped raw low bit is refused
/// at load by its checksum.
#[test]
fn split_coded_model_in_tempdir() {
    let Some(d) = dev() else { return };
    let dir = tempfile::tempdir().unwrap();
    let coded = dir.path().join("ecq");
    let (cases, s) = coded_model(
        &dir.path().join("mlx"),
        &coded,
        700,
        ecq::container::MatrixCoding::Split4 { row_pairs: true },
    );
    assert_eq!(s.matrices.iter().filter(|m| m.low_bits == 2).count(), 2);
    check_coded_model(d, &coded, &cases, 700, &[3]);

    // flip one raw low bit of blk.0.pairs in its shard
    let shard = std::fs::read_dir(&coded)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    flip_bits_in_tensor(&shard, "blk.0.pairs.weight.ecq_low", 3, 0x02);
    let err = EntropyCodedModel::open(d, &coded).unwrap_err();
    assert!(
        matches!(
            err,
            LinearError::Codec {
                source: ecq::rans::CodecError::LowBitsChecksumMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("blk.0.pairs"), "{err}");
}

/// `ecq encode --window --row-pairs` output loads as a model: the window-split layer (64 x 1024
/// in row pairs) and the layers coded whole (K = 384, which the window's 1024-weight blocks do
/// not divide, and a 3-bit layer) match the CPU reference, `forward_batch` included (where
/// 32-wide subgroups run the blocked kernels, fused GEMVs per row for few rows and the batched
/// kernel for more; elsewhere, where no batched kernel reads window splits, the weights decoded
/// first).
#[test]
fn window_coded_model_in_tempdir() {
    let Some(d) = dev() else { return };
    let dir = tempfile::tempdir().unwrap();
    let coded = dir.path().join("ecq");
    let (cases, s) = coded_model(
        &dir.path().join("mlx"),
        &coded,
        750,
        ecq::container::MatrixCoding::Window4 { row_pairs: true },
    );
    assert_eq!(s.matrices.iter().filter(|m| m.window.is_some()).count(), 1);
    // 3 and 7 rows: fused GEMVs (up to GEMV_BATCH_MAX_M_WINDOW_SMALL); 40: the batched kernel
    // (where 32-wide subgroups run them; elsewhere every call decodes first)
    check_coded_model(d, &coded, &cases, 750, &[3, 7, 40]);
}

/// `forward_batch` with few rows runs one fused GEMV per row (the default where 32-wide
/// subgroups run the fused GEMV; forced here so that every adapter takes both paths): the same
/// results as the batched kernel within the tolerance, for whole, split and banded layers.
#[test]
fn forward_batch_by_gemv_rows_matches_cpu_reference() {
    let Some(d) = dev() else { return };
    let c = case(800, 50, 512, 4, 64, 256, 2);
    // (one coded row per chunk, two chunks per tile: banded under a 4 KiB limit)
    let (cs, s) = split_case(801, 64, 1024, 64, 1, 2, SplitOrder::RowPairs);
    let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
    let cpu_s = CpuLinear::from_quantized("cpu", &cs.q, Some(cs.bias.clone())).unwrap();
    for (limit, gemv_rows) in [(None, 8), (Some(1024), 8), (None, 0)] {
        let opts = LinearOptions {
            max_buffer_bytes: limit,
            gemv_batch_max_m: Some(gemv_rows),
            ..fused_only()
        };
        let whole = upload(d, &c, &opts).unwrap();
        let split = EntropyCodedLinear::upload(
            d,
            "split",
            CodedLayerRef::from_split(&s, 64, &cs.q.scales, &cs.q.biases, Some(&cs.bias)),
            &LinearOptions {
                max_buffer_bytes: limit.map(|_| 4096),
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!(whole.n_bands() > 1, limit.is_some());
        assert_eq!(split.n_bands() > 1, limit.is_some());
        for m in [1usize, 2, 8, 9] {
            let label = format!("bands {} gemv rows <= {gemv_rows} m{m}", whole.n_bands());
            let x = activations(800 + m as u64, m * 512);
            assert_close(
                &label,
                &cpu,
                &x,
                m,
                &whole.forward_batch(&x, m).unwrap(),
                0.0,
            );
            let x = activations(900 + m as u64, m * 1024);
            let y = split.forward_batch(&x, m).unwrap();
            assert_close(&format!("split {label}"), &cpu_s, &x, m, &y, 0.0);
        }
    }
}

/// Scales and biases of f16- or bf16-quantized weights are held in 16 bits on the GPU
/// (`SideFormat`, half the memory): `forward` (fused GEMV), `forward_batch` (`rans_gemm.wgsl`
/// and the per-row GEMVs) and the plain `qgemm.wgsl` give bit for bit the results of f32
/// pairs, whole and split.
#[test]
fn sixteen_bit_side_is_bit_identical_to_f32() {
    use ecq::gpu::SideFormat;
    let Some(d) = dev() else { return };
    // (bf16 values of this size are exact in f16 too: the bf16 case takes weights whose
    // scales lie below f16's normal range)
    for (dtype, magnitude, want) in [
        (FloatDType::F16, 1.0, SideFormat::F16),
        (FloatDType::BF16, 1e-7, SideFormat::Bf16),
    ] {
        let (rows, cols) = (64usize, 1024usize);
        let mut rng = ChaCha8Rng::seed_from_u64(1000);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| gaussian(&mut rng) * 0.02 * magnitude)
            .collect();
        let q = quantize_affine(&w, rows, cols, dtype, AffineParams::new(4, 64).unwrap()).unwrap();
        let opts = EncodeOptions {
            chunk_symbols: 2048,
            group_size: 64,
            ..Default::default()
        };
        let enc = encode(&q.symbols(), rows, cols, 4, &opts).unwrap();
        let split = SplitMatrix::encode_ordered(
            &q.symbols(),
            rows,
            cols,
            4,
            2,
            &opts,
            SplitOrder::RowPairs,
        )
        .unwrap();
        for (what, layer) in [
            (
                "whole",
                CodedLayerRef::from_encoded(&enc, 64, &q.scales, &q.biases, None),
            ),
            (
                "split",
                CodedLayerRef::from_split(&split, 64, &q.scales, &q.biases, None),
            ),
        ] {
            let up = |side, gemv_rows| {
                let opts = LinearOptions {
                    side,
                    gemv_batch_max_m: Some(gemv_rows),
                    ..fused_only()
                };
                EntropyCodedLinear::upload(d, what, layer, &opts).unwrap()
            };
            for gemv_rows in [0, 8] {
                let (narrow, wide) = (up(None, gemv_rows), up(Some(SideFormat::F32), gemv_rows));
                assert_eq!(
                    (narrow.side_format(), wide.side_format()),
                    (want, SideFormat::F32)
                );
                // the GPU footprint: coded tensors, decode tables (the same for both) plus 4
                // (16-bit) or 8 (f32) bytes per group
                let groups = (rows * cols / 64) as u64;
                let tables = narrow.table_bytes();
                assert_eq!(wide.table_bytes(), tables);
                assert_eq!(
                    narrow.gpu_bytes(),
                    narrow.coded_bytes() + tables + 4 * groups
                );
                assert_eq!(wide.gpu_bytes(), wide.coded_bytes() + tables + 8 * groups);
                let x = activations(1001, 3 * cols);
                let label = format!("{what} {dtype:?} gemv rows <= {gemv_rows}");
                assert_eq!(
                    bits(narrow.forward(&x[..cols]).unwrap()),
                    bits(wide.forward(&x[..cols]).unwrap()),
                    "{label}"
                );
                assert_eq!(
                    bits(narrow.forward_batch(&x, 3).unwrap()),
                    bits(wide.forward_batch(&x, 3).unwrap()),
                    "{label}"
                );
            }
        }
        // a format the values are not exact in is refused
        let q32 = quantize_affine(
            &w,
            rows,
            cols,
            FloatDType::F32,
            AffineParams::new(4, 64).unwrap(),
        )
        .unwrap();
        let err = EntropyCodedLinear::upload(
            d,
            "narrowed",
            CodedLayerRef::from_encoded(&enc, 64, &q32.scales, &q32.biases, None),
            &LinearOptions {
                side: Some(SideFormat::F16),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("not exact in F16"), "{err}");
        // the plain batched baseline: 16-bit pairs when exact
        let plain = QuantizedLinear::upload(d, "plain", &q, None).unwrap();
        let cpu = CpuLinear::from_quantized("cpu", &q, None).unwrap();
        let x = activations(1002, 5 * cols);
        assert_close(
            "qgemm 16-bit side",
            &cpu,
            &x,
            5,
            &plain.forward_batch(&x, 5).unwrap(),
            0.0,
        );
    }
}

/// XORs `mask` into the byte at 1 / `at` of tensor `name`'s data in the safetensors file
/// `path` (the tensor must have more than 8 bytes).
fn flip_bits_in_tensor(path: &std::path::Path, name: &str, at: usize, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let data = st.tensor(name).unwrap().data();
        assert!(
            data.len() > 8,
            "{name}: the fixture must have data to alter"
        );
        data.as_ptr() as usize - bytes.as_ptr() as usize + data.len() / at
    };
    bytes[i] ^= mask;
    std::fs::write(path, &bytes).unwrap();
}

/// Where 32-wide subgroups run it, `forward_batch` uses the blocked subgroup decoder
/// (`rans_gemm_blocked.wgsl`): the same dequantized weights and the same multiply as the
/// portable `rans_gemm.wgsl`, so bit for bit the same outputs, for whole symbols of 1, 2 and 4
/// weights and for split matrices in both orders, in one band and in several.
#[test]
fn blocked_batched_kernel_is_bit_identical_to_portable() {
    let Some(d) = dev() else { return };
    let mut layers: Vec<(String, Case, Option<SplitMatrix>)> = Vec::new();
    for (i, &(r, k, b, gs)) in [
        (40usize, 512usize, 4u32, 64u32),
        (36, 1024, 2, 32),
        (24, 256, 8, 64),
    ]
    .iter()
    .enumerate()
    {
        layers.push((
            format!("{r}x{k} b{b}"),
            case(1200 + i as u64, r, k, b, gs, 2048, 2),
            None,
        ));
    }
    for (i, order) in [SplitOrder::Rows, SplitOrder::RowPairs]
        .into_iter()
        .enumerate()
    {
        let (c, s) = split_case(1210 + i as u64, 38, 1024, 64, 1, 2, order);
        layers.push((format!("split 38x1024 {order:?}"), c, Some(s)));
    }
    let mut ran = false;
    for (label, c, split) in &layers {
        let layer = match split {
            None => CodedLayerRef::from_encoded(
                &c.enc,
                c.q.group_size as usize,
                &c.q.scales,
                &c.q.biases,
                None,
            ),
            Some(s) => CodedLayerRef::from_split(
                s,
                c.q.group_size as usize,
                &c.q.scales,
                &c.q.biases,
                None,
            ),
        };
        for limit in [None, Some(4096)] {
            let up = |portable_gemm| {
                let opts = LinearOptions {
                    max_buffer_bytes: limit,
                    portable_gemm,
                    ..Default::default()
                };
                EntropyCodedLinear::upload(d, label, layer, &opts).unwrap()
            };
            let (blocked, portable) = (up(false), up(true));
            assert!(!portable.blocked_gemm());
            if !blocked.blocked_gemm() {
                continue;
            }
            ran = true;
            let k = blocked.in_features();
            for m in [9usize, 130] {
                let x = activations(1300 + m as u64, m * k);
                assert_eq!(
                    bits(blocked.forward_batch(&x, m).unwrap()),
                    bits(portable.forward_batch(&x, m).unwrap()),
                    "{label} bands {} m{m}",
                    blocked.n_bands()
                );
            }
        }
    }
    if !ran {
        gpu_common::announce_unsupported(
            "blocked batched kernel (rans_gemm_blocked.wgsl): needs 32-wide subgroups; the portable one was checked",
        );
    }
}

/// A 16 x 2048 MLX g64 layer and its window split in row pairs: chunks of one coded row (eight
/// of them), tiles of two chunks.
fn window_case(seed: u64) -> (Case, SplitMatrix) {
    let c = case(seed, 16, 2048, 4, 64, 16384, 8);
    let opts = EncodeOptions {
        chunk_symbols: 256,
        tile_chunks: 2,
        group_size: 64,
        ..Default::default()
    };
    let s =
        SplitMatrix::encode_window(&c.q.symbols(), 16, 2048, &opts, SplitOrder::RowPairs).unwrap();
    (c, s)
}

/// `GpuContext::without_subgroups`: the portable kernels only, on this device (what one whose
/// subgroups are not 32 wide runs; on lavapipe nothing changes). A window-split layer there
/// decodes first from one row (`DECODE_FIRST_MIN_ROWS_PORTABLE`: no batched kernel reads it,
/// and the fused GEMV is the workgroup kernel), into the plain layer's outputs bit for bit,
/// and its fused GEMVs and its GPU decode (the workgroup kernels) match the CPU; cooperative
/// matrices are not offered.
#[test]
fn portable_context_runs_window_layers() {
    let Some(d) = dev() else { return };
    let portable = LinearDevice::from_context(
        ecq::gpu::GpuContext::new()
            .expect("a second context on the test adapter")
            .without_subgroups(),
    );
    let reg = portable.gpu().registry();
    assert!(!reg.subgroups32() && !reg.cooperative_matrix());
    assert_eq!(reg.cpu_device(), d.gpu().registry().cpu_device());
    let (c, s) = window_case(920);
    let layer = CodedLayerRef::from_split(&s, 64, &c.q.scales, &c.q.biases, Some(&c.bias));
    let gpu =
        EntropyCodedLinear::upload(&portable, "portable", layer, &Default::default()).unwrap();
    let fused =
        EntropyCodedLinear::upload(&portable, "portable fused", layer, &fused_only()).unwrap();
    let min = ecq::linear::DECODE_FIRST_MIN_ROWS_PORTABLE;
    assert_eq!(gpu.decode_first_min_rows(), min);
    let plain = QuantizedLinear::upload(&portable, "plain", &c.q, Some(&c.bias)).unwrap();
    let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
    for m in [1usize, 2, 5] {
        let x = activations(920 + m as u64, m * 2048);
        let got = gpu.forward_batch(&x, m).unwrap();
        assert_close(&format!("portable m{m}"), &cpu, &x, m, &got, 0.0);
        if m >= min {
            let want = plain.forward_batch(&x, m).unwrap();
            assert_eq!(
                bits(got),
                bits(want),
                "portable m{m}: the plain layer's outputs"
            );
        }
        let got = fused.forward_batch(&x, m).unwrap();
        assert_close(&format!("portable fused m{m}"), &cpu, &x, m, &got, 0.0);
    }
    let g = portable.gpu().upload_split(&s, None).unwrap();
    assert_eq!(
        portable.gpu().decode_packed(&g).unwrap(),
        s.decode_packed().unwrap()
    );
}

/// A window-split layer whose tile 1 has a frequency too many (its decode table does not sum to
/// 2^n; nothing on the host checks the sums at upload) reports that tile's first chunk, on
/// calls that decode first and on one-row calls, whether its decode tables are built on the
/// host (the default: the decode runs `rans_decode_window.wgsl` where subgroups are 32 wide)
/// or in the kernel (`tables_built_in_kernel`: `rans_decode_blocked.wgsl`).
#[test]
fn window_corrupt_table_is_reported() {
    let Some(d) = dev() else { return };
    let (c, s) = window_case(901);
    let a = s.high().alphabet_size();
    let mut freqs = s.high().freqs().to_vec();
    let i = (a..2 * a).find(|&i| freqs[i] > 0).unwrap();
    freqs[i] += 1;
    let mut layer = CodedLayerRef::from_split(&s, 64, &c.q.scales, &c.q.biases, None);
    layer.freqs = bytemuck::cast_slice(&freqs);
    for tables_built_in_kernel in [false, true] {
        let opts = LinearOptions {
            tables_built_in_kernel,
            decode_first_min_rows: Some(2),
            ..Default::default()
        };
        let gpu = EntropyCodedLinear::upload(d, "window table", layer, &opts).unwrap();
        // (decoding first from 2 rows, on the workgroup decode kernel where subgroups are not
        // 32 wide; one row runs the fused kernels, which report it as well)
        for res in [
            gpu.forward(&[1.0; 2048]),
            gpu.forward_batch(&vec![1.0; 4 * 2048], 4),
        ] {
            let msg = res.unwrap_err().to_string();
            assert!(
                msg.contains("corrupt") && msg.contains("chunk 2"),
                "tables built in the kernel {tables_built_in_kernel}: {msg}"
            );
        }
    }
}

/// `LinearOptions::x8_activations`: a window-split layer's fused GEMV on 8-bit activations is
/// the library's `GpuCodedMatrix::gemv_x8` bit for bit, one vector and each row of a batch run
/// as GEMVs, and so is the same layer in row bands; an initial state below 2^16 in one chunk is
/// reported for that chunk, as with f32 activations. Where the blocked fused kernel cannot run
/// (no 32-wide subgroups), and for layers that are not window splits, the option has no effect:
/// the outputs are the f32 ones, bit for bit.
#[test]
fn x8_activations_layer_is_gemv_x8() {
    let Some(d) = dev() else { return };
    let (c, s) = window_case(900);
    let layer = CodedLayerRef::from_split(&s, 64, &c.q.scales, &c.q.biases, None);
    let x8 = LinearOptions {
        x8_activations: true,
        gemv_batch_max_m: Some(8),
        ..fused_only()
    };
    let f32_layer = EntropyCodedLinear::upload(d, "f32", layer, &fused_only()).unwrap();
    let one = EntropyCodedLinear::upload(d, "x8", layer, &x8).unwrap();
    let banded = EntropyCodedLinear::upload(
        d,
        "x8 banded",
        layer,
        &LinearOptions {
            max_buffer_bytes: Some(8192),
            ..x8.clone()
        },
    )
    .unwrap();
    assert!(banded.n_bands() > 1);
    assert!(!f32_layer.x8_activations());
    let x = activations(900, 3 * 2048);
    let subgroups = d.gpu().registry().subgroups32();
    assert_eq!(
        (one.x8_activations(), banded.x8_activations()),
        (subgroups, subgroups)
    );
    let want: Vec<Vec<f32>> = if subgroups {
        let m = d
            .gpu()
            .upload_split(&s, Some(ecq::gpu::QuantParamsRef::from(&c.q)))
            .unwrap();
        x.chunks_exact(2048)
            .map(|xr| {
                m.gemv_x8(d.device(), d.gpu().queue(), d.gpu().registry(), xr)
                    .unwrap()
            })
            .collect()
    } else {
        x.chunks_exact(2048)
            .map(|xr| f32_layer.forward(xr).unwrap())
            .collect()
    };
    for layer in [&one, &banded] {
        assert_eq!(
            bits(layer.forward(&x[..2048]).unwrap()),
            bits(want[0].clone())
        );
        assert_eq!(
            bits(layer.forward_batch(&x, 3).unwrap()),
            bits(want.concat())
        );
    }
    // chunk 2 with a bad initial state (lane 5's: 17 < 2^16)
    let mut states = layer.states.to_vec();
    states[(2 * 32 + 5) * 4..(2 * 32 + 6) * 4].copy_from_slice(&17u32.to_le_bytes());
    let corrupt = EntropyCodedLinear::upload(
        d,
        "x8 corrupt",
        CodedLayerRef {
            states: &states,
            ..layer
        },
        &x8,
    )
    .unwrap();
    match corrupt.forward(&x[..2048]) {
        Err(LinearError::Gpu {
            source: ecq::gpu::GpuError::CorruptStream { chunk, .. },
            ..
        }) => assert_eq!(chunk, 2),
        other => panic!("expected CorruptStream in chunk 2, got {other:?}"),
    }
    // a layer coded whole ignores the option
    let w = upload(d, &c, &fused_only()).unwrap();
    let w8 = upload(d, &c, &x8).unwrap();
    assert!(!w8.x8_activations());
    assert_eq!(
        bits(w8.forward(&x[..2048]).unwrap()),
        bits(w.forward(&x[..2048]).unwrap())
    );
    if !subgroups {
        gpu_common::announce_unsupported(
            "8-bit activations: the fused window kernel needs 32-wide subgroups; the layers' f32 fallback was checked",
        );
    }
}

/// `LinearOptions::chunk_subgroups`: a window-split layer's fused GEMV with two or four groups
/// of 32 lanes a chunk is the library's `GpuCodedMatrix::gemv` with the same setting, bit for
/// bit, one vector and each row of a batch run as GEMVs, in one band and in several, on f32
/// and on 8-bit activations. Where the blocked fused kernel cannot run (no 32-wide subgroups),
/// for layers coded whole and for layers of more chunks than `chunk_subgroups_max_chunks`,
/// the option has no effect: the outputs are one group's, bit for bit. A count other than 0,
/// 1, 2 or 4 is refused at upload.
#[test]
fn chunk_subgroups_layer_is_gemv_coded() {
    let Some(d) = dev() else { return };
    let (c, s) = window_case(901);
    let layer = CodedLayerRef::from_split(&s, 64, &c.q.scales, &c.q.biases, None);
    let one = EntropyCodedLinear::upload(d, "one", layer, &fused_only()).unwrap();
    assert_eq!((one.chunk_subgroups(), one.n_chunks()), (1, 8));
    let x = activations(901, 3 * 2048);
    let subgroups = d.gpu().registry().subgroups32();
    for n in [2, 4] {
        for x8 in [false, true] {
            let o = LinearOptions {
                chunk_subgroups: n,
                x8_activations: x8,
                gemv_batch_max_m: Some(8),
                ..fused_only()
            };
            let banded_o = LinearOptions {
                max_buffer_bytes: Some(8192),
                ..o.clone()
            };
            let l = EntropyCodedLinear::upload(d, "dup", layer, &o).unwrap();
            let banded = EntropyCodedLinear::upload(d, "dup banded", layer, &banded_o).unwrap();
            assert!(banded.n_bands() > 1);
            let label = format!("groups {n} x8 {x8}");
            let want: Vec<Vec<f32>> = if subgroups {
                assert_eq!(
                    (l.chunk_subgroups(), banded.chunk_subgroups()),
                    (n, n),
                    "{label}"
                );
                let mut m = d
                    .gpu()
                    .upload_split(&s, Some(ecq::gpu::QuantParamsRef::from(&c.q)))
                    .unwrap();
                m.set_chunk_subgroups(n).unwrap();
                x.chunks_exact(2048)
                    .map(|xr| {
                        let (dv, q, r) = (d.device(), d.gpu().queue(), d.gpu().registry());
                        if x8 {
                            m.gemv_x8(dv, q, r, xr).unwrap()
                        } else {
                            m.gemv(dv, q, r, xr).unwrap()
                        }
                    })
                    .collect()
            } else {
                assert_eq!(l.chunk_subgroups(), 1, "{label}");
                x.chunks_exact(2048)
                    .map(|xr| one.forward(xr).unwrap())
                    .collect()
            };
            for layer in [&l, &banded] {
                assert_eq!(
                    bits(layer.forward(&x[..2048]).unwrap()),
                    bits(want[0].clone()),
                    "{label}"
                );
                assert_eq!(
                    bits(layer.forward_batch(&x, 3).unwrap()),
                    bits(want.concat()),
                    "{label} batch"
                );
            }
        }
    }
    // a layer of more chunks than the bound keeps one group (8 chunks here)
    for (most, want) in [(7, 1), (8, if subgroups { 2 } else { 1 })] {
        let l = EntropyCodedLinear::upload(
            d,
            "bounded",
            layer,
            &LinearOptions {
                chunk_subgroups: 2,
                chunk_subgroups_max_chunks: Some(most),
                ..fused_only()
            },
        )
        .unwrap();
        assert_eq!(l.chunk_subgroups(), want, "at most {most} chunks");
        if want == 1 {
            assert_eq!(
                bits(l.forward(&x[..2048]).unwrap()),
                bits(one.forward(&x[..2048]).unwrap())
            );
        }
    }
    // a layer coded whole ignores the option
    let w = upload(d, &c, &fused_only()).unwrap();
    let w2 = upload(
        d,
        &c,
        &LinearOptions {
            chunk_subgroups: 2,
            ..fused_only()
        },
    )
    .unwrap();
    assert_eq!(w2.chunk_subgroups(), 1);
    assert_eq!(
        bits(w2.forward(&x[..2048]).unwrap()),
        bits(w.forward(&x[..2048]).unwrap())
    );
    // other counts
    for n in [3, 8] {
        let r = EntropyCodedLinear::upload(
            d,
            "bad",
            layer,
            &LinearOptions {
                chunk_subgroups: n,
                ..fused_only()
            },
        );
        assert!(
            matches!(&r, Err(LinearError::Gpu { source: ecq::gpu::GpuError::InvalidInput(e), .. })
                if e.contains("0, 1, 2 or 4")),
            "{n}: {:?}",
            r.err()
        );
    }
    if !subgroups {
        gpu_common::announce_unsupported(
            "groups per chunk: the fused window kernel needs 32-wide subgroups; the layers' one-group fallback was checked",
        );
    }
}

/// `LinearOptions::gemv_vectors`: a window-split layer's `forward_batch` run as GEMVs with
/// several vectors a launch is, bit for bit, one fused GEMV a row (`gemv_vectors` 1) and the
/// library's `GpuCodedMatrix::gemv_many`, in one band and in several, for row counts below,
/// at and above the launch's vectors (the last launch partial). The layer takes one vector a
/// launch where it cannot take more (no 32-wide subgroups, 8-bit activations, groups per
/// chunk, a layer coded whole); counts outside 1..=16 are refused at upload.
#[test]
fn gemv_vectors_layer_is_gemv_many() {
    let Some(d) = dev() else { return };
    let (c, s) = window_case(902);
    let layer = CodedLayerRef::from_split(&s, 64, &c.q.scales, &c.q.biases, None);
    let subgroups = d.gpu().registry().subgroups32();
    let opts = |v: u32| LinearOptions {
        gemv_vectors: Some(v),
        gemv_batch_max_m: Some(64),
        ..fused_only()
    };
    let one = EntropyCodedLinear::upload(d, "one", layer, &opts(1)).unwrap();
    assert_eq!(one.gemv_vectors(), 1);
    let x = activations(902, 21 * 2048);
    let m = d
        .gpu()
        .upload_split(&s, Some(ecq::gpu::QuantParamsRef::from(&c.q)))
        .unwrap();
    let want_all = one.forward_batch(&x, 21).unwrap();
    let many = m
        .gemv_many(d.device(), d.gpu().queue(), d.gpu().registry(), &x, 21)
        .unwrap();
    assert_eq!(bits(many), bits(want_all.clone()));
    for v in [3, 8, 16] {
        let l = EntropyCodedLinear::upload(d, "many", layer, &opts(v)).unwrap();
        let banded = EntropyCodedLinear::upload(
            d,
            "many banded",
            layer,
            &LinearOptions {
                max_buffer_bytes: Some(8192),
                ..opts(v)
            },
        )
        .unwrap();
        assert!(banded.n_bands() > 1);
        let want_v = if subgroups { v } else { 1 };
        assert_eq!((l.gemv_vectors(), banded.gemv_vectors()), (want_v, want_v));
        for rows in [1, 2, v as usize, v as usize + 1, 21] {
            for layer in [&l, &banded] {
                assert_eq!(
                    bits(layer.forward_batch(&x[..rows * 2048], rows).unwrap()),
                    bits(&want_all[..rows * 16]),
                    "{v} vectors a launch, {rows} rows, {} bands",
                    layer.n_bands()
                );
            }
        }
    }
    // the default: GEMV_VECTORS where the layer can take several
    let default =
        EntropyCodedLinear::upload(d, "default", layer, &LinearOptions::default()).unwrap();
    assert_eq!(
        default.gemv_vectors(),
        if subgroups {
            ecq::linear::GEMV_VECTORS
        } else {
            1
        }
    );
    // one vector a launch where the layer cannot take more
    for o in [
        LinearOptions {
            x8_activations: true,
            ..opts(8)
        },
        LinearOptions {
            chunk_subgroups: 2,
            ..opts(8)
        },
    ] {
        let l = EntropyCodedLinear::upload(d, "fallback", layer, &o).unwrap();
        assert_eq!(l.gemv_vectors(), 1, "{o:?}");
        assert_eq!(l.forward_batch(&x[..3 * 2048], 3).unwrap().len(), 48);
    }
    let w = upload(d, &c, &opts(8)).unwrap();
    assert_eq!(w.gemv_vectors(), 1);
    for v in [0, 17] {
        let r = EntropyCodedLinear::upload(d, "bad", layer, &opts(v));
        assert!(
            matches!(&r, Err(LinearError::Gpu { source: ecq::gpu::GpuError::InvalidInput(e), .. })
                if e.contains("1..=16")),
            "{v}: {:?}",
            r.err()
        );
    }
    if !subgroups {
        gpu_common::announce_unsupported(
            "several vectors a launch: the fused window kernel needs 32-wide subgroups; the layers' one-vector fallback was checked",
        );
    }
}

/// The batched kernel's target workgroup count only changes how the activation rows are split
/// into blocks (each decoding the chunks again): every target gives the CPU reference's result,
/// and a target of 0 is refused at upload, naming the option.
#[test]
fn batched_target_workgroups_change_the_blocks_not_the_result() {
    let Some(d) = dev() else { return };
    let c = case(21, 64, 256, 4, 64, 2048, 2);
    let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
    for target in [Some(1), Some(7), Some(4096), None] {
        let opts = LinearOptions {
            gemm_target_workgroups: target,
            gemv_batch_max_m: Some(0),
            ..fused_only()
        };
        let gpu = upload(d, &c, &opts).unwrap();
        for m in [2usize, 33, 129, 300] {
            let x = activations(31 + m as u64, m * 256);
            assert_close(
                &format!("target {target:?} m {m}"),
                &cpu,
                &x,
                m,
                &gpu.forward_batch(&x, m).unwrap(),
                0.0,
            );
        }
    }
    let zero = LinearOptions {
        gemm_target_workgroups: Some(0),
        ..Default::default()
    };
    let err = upload(d, &c, &zero).unwrap_err().to_string();
    assert!(err.contains("gemm_target_workgroups"), "{err}");
}

/// Activations in lane order (`LinearOptions::column_order_activations`, off by default): a
/// window-split layer in row pairs gives, bit for bit, the outputs of the same layer on
/// column-order activations, one vector and batches run as GEMVs (one and several vectors a
/// launch, in one band and in several), and its `vectors_lane_order_dispatch` reads
/// `x_lane_order`'s layout; layers that cannot take lane order (no 32-wide subgroups,
/// row-major window splits, 8-bit activations) refuse that launch. The plain layer's 4-bit
/// GEMVs (lane order) give `GpuQuantizedMatrix`'s column-order GEMVs bit for bit (one vector,
/// and 2-21 rows in launches of up to 16 where 32-wide subgroups run them).
#[test]
fn lane_order_layers_match_column_order() {
    let Some(d) = dev() else { return };
    let (c, s) = window_case(910);
    let layer = CodedLayerRef::from_split(&s, 64, &c.q.scales, &c.q.biases, None);
    let subgroups = d.gpu().registry().subgroups32();
    let opts = |v: u32, max_buffer: Option<u64>, column: bool| LinearOptions {
        gemv_vectors: Some(v),
        gemv_batch_max_m: Some(64),
        max_buffer_bytes: max_buffer,
        column_order_activations: column,
        ..fused_only()
    };
    let x = activations(910, 21 * 2048);
    let want = EntropyCodedLinear::upload(d, "columns", layer, &opts(1, None, true)).unwrap();
    assert!(!want.lane_order());
    let want_all = want.forward_batch(&x, 21).unwrap();
    assert_eq!(
        bits(want.forward(&x[..2048]).unwrap()),
        bits(&want_all[..16])
    );
    for (v, max_buffer) in [(1, None), (16, None), (5, Some(8192))] {
        let l = EntropyCodedLinear::upload(d, "lanes", layer, &opts(v, max_buffer, false)).unwrap();
        assert_eq!(l.lane_order(), subgroups);
        let label = format!("{v} vectors a launch, {} bands", l.n_bands());
        assert_eq!(
            bits(l.forward(&x[..2048]).unwrap()),
            bits(&want_all[..16]),
            "{label}: forward"
        );
        for rows in [2, 5, 16, 21] {
            assert_eq!(
                bits(l.forward_batch(&x[..rows * 2048], rows).unwrap()),
                bits(&want_all[..rows * 16]),
                "{label}: {rows} rows"
            );
        }
    }
    // the launch for benchmarks and engines, on x_lane_order's layout
    let l = EntropyCodedLinear::upload(d, "lanes", layer, &opts(16, None, false)).unwrap();
    let xl = d.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (3 * 2048 * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    d.gpu().queue().write_buffer(
        &xl,
        0,
        bytemuck::cast_slice(&ecq::gpu::x_lane_order(&x[..3 * 2048], 2048).unwrap()),
    );
    let yl = d.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (3 * 16 * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    match l.vectors_lane_order_dispatch(&xl, &yl, 3) {
        Ok(launch) => {
            assert!(subgroups);
            let mut enc = d.device().create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                launch.record(&mut pass);
            }
            let staging = d.device().create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: yl.size(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            enc.copy_buffer_to_buffer(&yl, 0, &staging, 0, yl.size());
            d.gpu().queue().submit([enc.finish()]);
            staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
            d.gpu().wait().unwrap();
            let got: Vec<f32> =
                bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).unwrap());
            assert_eq!(bits(got), bits(&want_all[..3 * 16]), "lane-order launch");
        }
        Err(e) => {
            assert!(!subgroups, "{e}");
            assert!(e.to_string().contains("lane order"), "{e}");
        }
    }
    // layers that keep column order
    let rows_split = SplitMatrix::encode_window(
        &c.q.symbols(),
        16,
        2048,
        &EncodeOptions {
            chunk_symbols: 256,
            tile_chunks: 2,
            group_size: 64,
            ..Default::default()
        },
        SplitOrder::Rows,
    )
    .unwrap();
    let row_major = CodedLayerRef::from_split(&rows_split, 64, &c.q.scales, &c.q.biases, None);
    let x8 = LinearOptions {
        x8_activations: true,
        ..fused_only()
    };
    for (what, l) in [
        (
            "row-major",
            EntropyCodedLinear::upload(d, "rows", row_major, &LinearOptions::default()).unwrap(),
        ),
        (
            "x8",
            EntropyCodedLinear::upload(d, "x8", layer, &x8).unwrap(),
        ),
    ] {
        assert!(!l.lane_order(), "{what}");
        let r = l.vectors_lane_order_dispatch(&xl, &yl, 1);
        assert!(
            matches!(&r, Err(e) if e.to_string().contains("lane order")),
            "{what}"
        );
    }
    // the plain layer
    let plain = QuantizedLinear::upload(d, "plain", &c.q, None).unwrap();
    let m = d.gpu().upload_quantized(&c.q).unwrap();
    let (reg, q) = (d.gpu().registry(), d.gpu().queue());
    assert_eq!(
        bits(plain.forward(&x[..2048]).unwrap()),
        bits(m.gemv(d.device(), q, reg, &x[..2048]).unwrap())
    );
    // (without 32-wide subgroups the layer runs qgemm there, another summation order)
    let many_rows: &[usize] = if m.gemv_many_supported(reg) {
        &[2, 7, 16, 21]
    } else {
        &[]
    };
    for &rows in many_rows {
        assert_eq!(
            bits(plain.forward_batch(&x[..rows * 2048], rows).unwrap()),
            bits(
                m.gemv_many(d.device(), q, reg, &x[..rows * 2048], rows)
                    .unwrap()
            ),
            "plain, {rows} rows"
        );
    }
}

/// `GpuLinear::record_forward` runs `forward_batch`'s launches on activations and outputs in
/// GPU buffers: bit for bit `forward_batch`'s outputs (bias included) for coded layers whole,
/// in row bands and as window splits (lane order where 32-wide subgroups run it, in bands
/// too), with GEMVs or the batched kernel, and for the plain layer with each of its paths; at
/// 1 to 600 rows (two batched blocks; a 37-row layer's launches write outputs at offsets the
/// device cannot bind; 17 rows end in a one-vector launch, which reads the order it is given),
/// with activations and outputs at other offsets, in one buffer, and activations given in lane
/// order.
#[test]
fn recorded_calls_are_forward_batch_bit_for_bit() {
    use ecq::linear::{ActivationOrder, GpuLinear};
    use gpu_common::{recorded, Placement};
    let Some(d) = dev() else { return };
    let align = u64::from(d.device().limits().min_storage_buffer_offset_alignment);
    let c = case(70, 37, 512, 4, 64, 256, 2);
    let coded = |limit: Option<u64>, gemv_max: Option<usize>, fused: bool| {
        let opts = LinearOptions {
            max_buffer_bytes: limit,
            gemv_batch_max_m: gemv_max,
            decode_first_min_rows: fused.then_some(usize::MAX),
            ..Default::default()
        };
        upload(d, &c, &opts).unwrap()
    };
    let (cw, s) = window_case(71);
    let window = |limit: Option<u64>| {
        let opts = LinearOptions {
            max_buffer_bytes: limit,
            ..Default::default()
        };
        let layer = CodedLayerRef::from_split(&s, 64, &cw.q.scales, &cw.q.biases, Some(&cw.bias));
        EntropyCodedLinear::upload(d, "window", layer, &opts).unwrap()
    };
    let plain = |many: Option<usize>| {
        let mut p = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
        p.set_gemv_many_max_m(many);
        p
    };
    let (whole, fused, banded, gemvs) = (
        coded(None, None, false),
        coded(None, None, true),
        coded(Some(1024), None, false),
        coded(None, Some(300), true),
    );
    assert!(banded.n_bands() > 1);
    let (win, win_banded) = (window(None), window(Some(8192)));
    assert!(win_banded.n_bands() > 1);
    let plains = [plain(None), plain(Some(512)), plain(Some(0))];
    let layers: Vec<(&str, &dyn GpuLinear, &[usize])> = vec![
        ("coded", &whole, &[1, 2, 9, 20, 37, 600]),
        ("coded, fused", &fused, &[2, 9, 37, 600]),
        ("coded in bands", &banded, &[1, 9, 37, 600]),
        ("coded, GEMVs up to 300 rows", &gemvs, &[1, 20, 300]),
        ("window split", &win, &[1, 2, 17, 20, 37]),
        ("window split in bands", &win_banded, &[1, 20]),
        ("plain", &plains[0], &[1, 2, 9, 37, 600]),
        (
            "plain, launches up to 512 rows",
            &plains[1],
            &[2, 17, 20, 37],
        ),
        ("plain, qgemm from 2 rows", &plains[2], &[2, 37, 600]),
    ];
    for (name, layer, ms) in layers {
        let k = layer.in_features();
        for &m in ms {
            let label = format!("{name}, {m} rows");
            let x = activations(7000 + m as u64, m * k);
            let want = bits(layer.forward_batch(&x, m).unwrap());
            let x_bytes = (m * k * 4) as u64;
            for at in [
                Placement::START,
                Placement {
                    x_at: align,
                    y_at: 3 * align,
                    one_buffer: false,
                },
                Placement {
                    x_at: 0,
                    y_at: x_bytes.next_multiple_of(align),
                    one_buffer: true,
                },
            ] {
                let got = recorded(layer, &x, ActivationOrder::Columns, m, at).unwrap();
                assert_eq!(bits(got), want, "{label}, {at:?}");
            }
            let lanes = ecq::gpu::x_lane_order(&x, k).unwrap();
            let got = recorded(layer, &lanes, ActivationOrder::Lanes, m, Placement::START);
            assert_eq!(bits(got.unwrap()), want, "{label}, lane order");
        }
    }
    assert!(d.call_buffer_bytes() > 0);
}

/// A recorded call's ranges, usages and shapes are checked before anything is recorded: too
/// small, unaligned, overlapping or without the usages they need, each an error naming it;
/// no rows records nothing.
#[test]
fn recorded_calls_check_their_arguments() {
    use ecq::gpu::BufferRange;
    use ecq::linear::{ActivationOrder, GpuLinear};
    let Some(d) = dev() else { return };
    let c = case(72, 32, 256, 4, 64, 2048, 2);
    let coded = upload(d, &c, &LinearOptions::default()).unwrap();
    let plain = QuantizedLinear::upload(d, "plain", &c.q, None).unwrap();
    let buffer = |bytes: u64, usage: wgpu::BufferUsages| {
        d.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    use wgpu::BufferUsages as U;
    let all = U::STORAGE | U::COPY_SRC | U::COPY_DST;
    let (x, y) = (
        buffer(4 * 256 * 4 + 1024, all),
        buffer(4 * 32 * 4 + 1024, all),
    );
    let no_storage = buffer(4 * 256 * 4, U::COPY_SRC | U::COPY_DST);
    let cols = ActivationOrder::Columns;
    for layer in [&coded as &dyn GpuLinear, &plain] {
        let call = |xr: BufferRange<'_>, yr: BufferRange<'_>| {
            let mut enc = d.device().create_command_encoder(&Default::default());
            let r = layer.record_forward(&mut enc, xr, cols, 4, yr);
            r.map_err(|e| e.to_string())
        };
        let xr = |at: u64, bytes: u64| BufferRange::new(&x, at, bytes);
        let yr = |at: u64, bytes: u64| BufferRange::new(&y, at, bytes);
        for (what, res) in [
            ("x range has 4092 bytes", call(xr(0, 4092), yr(0, 512))),
            ("y range has 508 bytes", call(xr(0, 4096), yr(0, 508))),
            ("offset 4 is not a multiple", call(xr(0, 4096), yr(4, 512))),
            (
                "usage",
                call(BufferRange::new(&no_storage, 0, 4096), yr(0, 512)),
            ),
            (
                "overlap",
                call(xr(0, 4096), BufferRange::new(&x, 3840, 512)),
            ),
        ] {
            let msg = res.unwrap_err();
            assert!(msg.contains(what), "{}: {msg}", layer.name());
        }
        let mut enc = d.device().create_command_encoder(&Default::default());
        let empty = layer.record_forward(&mut enc, xr(0, 16), cols, 0, yr(0, 16));
        assert!(empty.is_ok());
        assert!(layer.check_recorded().is_ok());
    }
}

/// A corrupt stream met by recorded calls is reported by `check_recorded` (naming the chunk),
/// which clears it; host calls in between report their own and leave it there.
#[test]
fn recorded_calls_report_a_corrupt_stream() {
    use ecq::linear::{ActivationOrder, GpuLinear};
    use gpu_common::{recorded, Placement};
    let Some(d) = dev() else { return };
    let (gpu, c) = corrupt_layer(d, &fused_only());
    let cols = ActivationOrder::Columns;
    for rows in [1, 2, 9] {
        let x = vec![1.0; rows * 256];
        let msg = recorded(&gpu, &x, cols, rows, Placement::START)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("corrupt") && msg.contains("chunk 1"), "{msg}");
        assert!(gpu.check_recorded().is_ok(), "cleared by the check");
    }
    // recorded, then a host call, then the check
    let x = d.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1024,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let y = d.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 128,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = d.device().create_command_encoder(&Default::default());
    gpu.record_forward(&mut enc, (&x).into(), cols, 1, (&y).into())
        .unwrap();
    d.queue().submit([enc.finish()]);
    assert!(gpu.forward(&[1.0; 256]).is_err());
    let msg = gpu.check_recorded().unwrap_err().to_string();
    assert!(msg.contains("chunk 1"), "{msg}");
    let good = upload(d, &c, &LinearOptions::default()).unwrap();
    assert!(recorded(&good, &[1.0; 256], cols, 1, Placement::START).is_ok());
}

/// `GpuLinear::record_forward_in`: a forward's calls in one compute pass, each reading what
/// the one before wrote (coded, plain, coded again, some in bands), give bit for bit what the
/// host calls give one after another: wgpu orders the dependent launches inside the pass.
#[test]
fn recorded_calls_share_one_pass() {
    use ecq::gpu::BufferRange;
    use ecq::linear::{ActivationOrder, GpuLinear};
    let Some(d) = dev() else { return };
    let up = case(80, 512, 256, 4, 64, 2048, 2);
    let down = case(81, 64, 512, 4, 64, 1024, 3);
    let banded = LinearOptions {
        max_buffer_bytes: Some(8192),
        ..Default::default()
    };
    let up_coded = upload(d, &up, &LinearOptions::default()).unwrap();
    let down_banded = upload(d, &down, &banded).unwrap();
    assert!(down_banded.n_bands() > 1);
    let up_plain = QuantizedLinear::upload(d, "plain up", &up.q, Some(&up.bias)).unwrap();
    let down_coded = upload(d, &down, &LinearOptions::default()).unwrap();
    let chain: [(&dyn GpuLinear, &dyn GpuLinear); 2] =
        [(&up_coded, &down_banded), (&up_plain, &down_coded)];
    for m in [1usize, 5, 40] {
        let x = activations(8000 + m as u64, m * 256);
        let buffer = |values: usize| d.activation_buffer(values);
        let (xb, hb, yb) = (buffer(m * 256), buffer(m * 512), buffer(2 * m * 64));
        d.queue().write_buffer(&xb, 0, bytemuck::cast_slice(&x));
        let mut enc = d.device().create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            let cols = ActivationOrder::Columns;
            for (c, (a, b)) in chain.iter().enumerate() {
                let y = BufferRange::new(&yb, (c * m * 64 * 4) as u64, (m * 64 * 4) as u64);
                a.record_forward_in(&mut pass, (&xb).into(), cols, m, (&hb).into())
                    .unwrap();
                b.record_forward_in(&mut pass, (&hb).into(), cols, m, y)
                    .unwrap();
            }
        }
        d.queue().submit([enc.finish()]);
        let got = d
            .read_f32(BufferRange::new(&yb, 0, (2 * m * 64 * 4) as u64))
            .unwrap();
        for (c, (a, b)) in chain.iter().enumerate() {
            let want = b
                .forward_batch(&a.forward_batch(&x, m).unwrap(), m)
                .unwrap();
            let part = got[c * m * 64..(c + 1) * m * 64].to_vec();
            assert_eq!(bits(part), bits(want), "chain {c}, {m} rows");
            a.check_recorded().unwrap();
            b.check_recorded().unwrap();
        }
    }
}

/// `GpuLinear::prepare_forward`: a call made into launches once and recorded again and again
/// reads what its activation buffer holds at each run and gives `forward_batch`'s bits every
/// time: in passes of its own and in one pass with other calls, after the device dropped the
/// buffers it keeps for recorded calls and after a larger call regrew them (the prepared
/// launches hold the ones they were made with). A call without rows has no launches.
#[test]
fn prepared_calls_replay_forward_batch_bit_for_bit() {
    use ecq::gpu::BufferRange;
    use ecq::linear::{ActivationOrder, GpuLinear};
    if dev().is_none() {
        return;
    }
    // (a device of its own: it releases the kept buffers, which the other tests' calls, and
    // `recorded_calls_are_forward_batch_bit_for_bit`'s check that they exist, share)
    let own = LinearDevice::new().expect("a second device on the same adapter");
    let d = &own;
    let align = u64::from(d.device().limits().min_storage_buffer_offset_alignment);
    let c = case(90, 70, 512, 4, 64, 256, 2);
    let coded = upload(d, &c, &LinearOptions::default()).unwrap();
    let banded = upload(
        d,
        &c,
        &LinearOptions {
            max_buffer_bytes: Some(1024),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(banded.n_bands() > 1);
    let (cw, s) = window_case(91);
    let layer = CodedLayerRef::from_split(&s, 64, &cw.q.scales, &cw.q.biases, Some(&cw.bias));
    let window = EntropyCodedLinear::upload(d, "window", layer, &Default::default()).unwrap();
    let plain = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
    // (a larger call between replays regrows the kept buffers)
    let other = upload(d, &case(92, 48, 1024, 4, 64, 256, 2), &Default::default()).unwrap();
    let layers: [(&str, &dyn GpuLinear, &[usize]); 4] = [
        ("coded", &coded, &[1, 2, 37, 600]),
        ("coded in bands", &banded, &[1, 9, 600]),
        ("window split", &window, &[1, 17, 37]),
        ("plain", &plain, &[1, 9, 600]),
    ];
    for (name, layer, ms) in layers {
        let (k, r) = (layer.in_features(), layer.out_features());
        for &m in ms {
            for order in [ActivationOrder::Columns, ActivationOrder::Lanes] {
                let label = format!("{name}, {m} rows, {order:?}");
                let (x_at, y_at) = (align, 3 * align);
                let (x_bytes, y_bytes) = ((m * k * 4) as u64, (m * r * 4) as u64);
                let xb = d.activation_buffer(((x_at + x_bytes) / 4) as usize);
                let yb = d.activation_buffer(((y_at + y_bytes) / 4) as usize);
                let (xr, yr) = (
                    BufferRange::new(&xb, x_at, x_bytes),
                    BufferRange::new(&yb, y_at, y_bytes),
                );
                let prepared = layer.prepare_forward(xr, order, m, yr).unwrap();
                assert!(prepared.launches() > 0, "{label}");
                for round in 0..4u64 {
                    let x = activations(9000 + 10 * m as u64 + round, m * k);
                    let want = bits(layer.forward_batch(&x, m).unwrap());
                    let given = match order {
                        ActivationOrder::Lanes => ecq::gpu::x_lane_order(&x, k).unwrap(),
                        ActivationOrder::Columns => x,
                    };
                    d.queue()
                        .write_buffer(&xb, x_at, bytemuck::cast_slice(&given));
                    let nan = vec![f32::NAN; m * r];
                    d.queue()
                        .write_buffer(&yb, y_at, bytemuck::cast_slice(&nan));
                    match round {
                        1 => d.release_call_buffers(),
                        2 => {
                            let x = activations(1, 700 * 1024);
                            other.forward_batch(&x, 700).unwrap();
                            gpu_common::recorded(
                                &other,
                                &x,
                                order,
                                700,
                                gpu_common::Placement::START,
                            )
                            .unwrap();
                        }
                        _ => {}
                    }
                    let mut enc = d.device().create_command_encoder(&Default::default());
                    if round == 3 {
                        // (in one pass after another call writing the same outputs)
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        layer
                            .record_forward_in(&mut pass, xr, order, m, yr)
                            .unwrap();
                        prepared.record_in(&mut pass);
                    } else {
                        prepared.record(&mut enc);
                    }
                    d.queue().submit([enc.finish()]);
                    layer.check_recorded().unwrap();
                    let got = d.read_f32(yr).unwrap();
                    assert_eq!(bits(got), want, "{label}, round {round}");
                }
            }
        }
        let xb = d.activation_buffer(k);
        let yb = d.activation_buffer(r);
        let cols = ActivationOrder::Columns;
        let empty = layer
            .prepare_forward((&xb).into(), cols, 0, (&yb).into())
            .unwrap();
        assert_eq!(empty.launches(), 0, "{name}");
    }
}

/// A layer device like the tests' whose storage buffers bind at most `bytes` (`None` where
/// there is no adapter).
fn device_binding_at_most(bytes: u64) -> Option<Arc<LinearDevice>> {
    gpu_common::context_binding_at_most(bytes).map(LinearDevice::from_context)
}

/// A buffer over the device's limit is `LinearError::TooLarge` on every path, naming the
/// buffer, the limit and what avoids it: plain weights at upload, a coded matrix's tile at
/// upload, a recorded call's activations; the GPU entry points given a buffer they would bind
/// past the limit return `GpuError::TooLarge` (wgpu's validation would panic).
#[test]
fn buffers_over_the_limit_are_too_large_on_every_path() {
    use ecq::linear::{ActivationOrder, GpuLinear};
    let Some(d) = device_binding_at_most(64 * 1024) else {
        return;
    };
    assert_eq!(d.max_buffer_bytes(), 64 * 1024);
    let too_large = |r: Result<(), LinearError>, what: &str, remedy: &str| {
        let e = r.expect_err(what);
        let msg = e.to_string();
        match e {
            LinearError::TooLarge {
                remedy: got,
                limit,
                limit_name,
                ..
            } => {
                assert_eq!(got, remedy, "{msg}");
                assert_eq!(
                    (limit, limit_name),
                    (65536, "max_storage_buffer_binding_size")
                );
            }
            other => panic!("{what}: not TooLarge: {other:?}"),
        }
        assert!(msg.contains(what) && msg.contains("65536"), "{msg}");
    };
    // plain weights: 256 x 1024 4-bit = 128 KiB packed
    let big = case(93, 256, 1024, 4, 64, 256, 2);
    too_large(
        QuantizedLinear::upload(&d, "plain", &big.q, None).map(|_| ()),
        "packed weights",
        LinearError::REMEDY_DEVICE,
    );
    // a coded tile of 64 chunks of 4096 symbols
    let tiles = case(94, 256, 1024, 4, 64, 4096, 64);
    too_large(
        upload(&d, &tiles, &LinearOptions::default()).map(|_| ()),
        "tile",
        LinearError::REMEDY_TILES,
    );
    // a call's activations: 100 rows of 256 in lane order, which launches of several
    // vectors in column order... read whole (100 KiB): the permutation's buffer
    let c = case(95, 32, 256, 4, 64, 2048, 2);
    let coded = upload(&d, &c, &LinearOptions::default()).unwrap();
    let plain = QuantizedLinear::upload(&d, "plain", &c.q, None).unwrap();
    let m = 100;
    let xb = d.activation_buffer(m * 256);
    let yb = d.activation_buffer(m * 32);
    for layer in [&coded as &dyn GpuLinear, &plain] {
        let r = layer.prepare_forward((&xb).into(), ActivationOrder::Lanes, m, (&yb).into());
        too_large(r.map(|_| ()), "activations", LinearError::REMEDY_ROWS);
    }
    // the GPU entry points given a buffer past the binding limit (100 KiB) where they bind it
    // whole: an error, not wgpu's validation panic
    use ecq::gpu::{CodedMatrixRef, GpuError, QuantParamsRef};
    let (ctx, registry) = (d.gpu(), d.gpu().registry());
    let past = |r: Result<ecq::gpu::Dispatch, GpuError>, what: &str| match r {
        Err(GpuError::TooLarge { what: w, limit, .. }) => {
            assert_eq!((w.as_str(), limit), (what, 65536));
        }
        other => panic!("{what}: not TooLarge: {other:?}"),
    };
    let m8 = ctx
        .upload_coded(
            CodedMatrixRef::from(&c.enc),
            Some(QuantParamsRef::from(&c.q)),
        )
        .unwrap();
    let y = d.activation_buffer(32);
    past(m8.gemv_dispatch(d.device(), registry, &xb, &y), "x");
    let packed = ecq::gpu::DecodeOutput::Packed;
    past(m8.decode_dispatch(d.device(), registry, &xb, packed), "out");
    let q = ctx.upload_quantized(&c.q).unwrap();
    past(q.gemv_dispatch(d.device(), registry, &xb, &y), "x");
    let lanes = ecq::gpu::BufferRange::from(&xb);
    past(
        ecq::gpu::x_order_dispatch(d.device(), registry, lanes, (&y).into(), 1, 256, true),
        "x",
    );
}

/// `ecq::gpu::copy_rows_dispatch`: rows moved between strides at offsets no binding could start
/// at, padded with zeros, in a launch; refused for unaligned, overlapping or out-of-range rows
/// and for one buffer on both sides.
#[test]
fn row_copies_move_and_pad() {
    use ecq::gpu::{copy_rows_dispatch, RowCopy};
    let Some(d) = dev() else { return };
    let (device, registry) = (d.device(), d.gpu().registry());
    let words: Vec<u32> = (0..1000).collect();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = |bytes: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (buffer(4000), buffer(4000));
    d.queue()
        .write_buffer(&src, 0, bytemuck::cast_slice(&words));
    d.queue().write_buffer(&dst, 0, &[0xffu8; 4000]);
    // 3 rows of 5 words from word 3 (stride 7) to word 301 (stride 9), padded to 8 words
    let c = RowCopy {
        src_at: 12,
        src_stride: 28,
        dst_at: 1204,
        dst_stride: 36,
        width: 20,
        fill: 32,
        rows: 3,
    };
    let launch = copy_rows_dispatch(device, registry, &src, &dst, &c).unwrap();
    let read = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4000,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    launch.record(&mut enc.begin_compute_pass(&Default::default()));
    enc.copy_buffer_to_buffer(&dst, 0, &read, 0, 4000);
    d.queue().submit([enc.finish()]);
    read.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    d.gpu().wait().unwrap();
    let got: Vec<u32> = bytemuck::cast_slice(&read.slice(..).get_mapped_range().unwrap()).to_vec();
    let mut want = vec![u32::MAX; 1000];
    for r in 0..3 {
        for c in 0..8 {
            want[301 + 9 * r + c] = if c < 5 { (3 + 7 * r + c) as u32 } else { 0 };
        }
    }
    assert_eq!(got, want);
    for (bad, what) in [
        (RowCopy { src_at: 2, ..c }, "multiples of 4"),
        (
            RowCopy {
                dst_stride: 28,
                ..c
            },
            "overlap",
        ),
        (RowCopy { rows: 200, ..c }, "past the buffer"),
        (RowCopy { width: 40, ..c }, "width above fill"),
    ] {
        let msg = copy_rows_dispatch(device, registry, &src, &dst, &bad)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(what), "{msg}");
    }
    let msg = copy_rows_dispatch(device, registry, &src, &src, &c)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("one buffer"), "{msg}");
}

/// Calls whose activations and outputs are more than the device binds at once run in launches
/// it can bind (the bias added in blocks of rows): recorded calls give `forward_batch`'s bits
/// on a device binding 64 KiB.
#[test]
fn calls_past_the_binding_limit_run_in_launches_it_binds() {
    use ecq::linear::{ActivationOrder, GpuLinear};
    use gpu_common::{recorded, Placement};
    let Some(d) = device_binding_at_most(64 * 1024) else {
        return;
    };
    let c = case(96, 40, 256, 4, 64, 2048, 2);
    let coded = EntropyCodedLinear::upload(
        &d,
        "coded",
        CodedLayerRef::from_encoded(&c.enc, 64, &c.q.scales, &c.q.biases, Some(&c.bias)),
        &LinearOptions::default(),
    )
    .unwrap();
    let plain = QuantizedLinear::upload(&d, "plain", &c.q, Some(&c.bias)).unwrap();
    // (600 rows: 600 KiB of activations, 94 KiB of outputs)
    let m = 600;
    let x = activations(97, m * 256);
    for layer in [&coded as &dyn GpuLinear, &plain] {
        let want = bits(layer.forward_batch(&x, m).unwrap());
        let got = recorded(layer, &x, ActivationOrder::Columns, m, Placement::START).unwrap();
        assert_eq!(bits(got), want, "{}", layer.name());
    }
}

/// `LinearDevice::set_decoded_buffers`: prepared calls decoding first take the device's kept
/// decoded-weight buffers in turn. Ten calls of five layers (each layer twice, so that every
/// count below reuses a buffer within one compute pass), recorded into one pass and into
/// command encoders of `n` calls each, give each layer's plain outputs bit for bit for 1, 2,
/// 3 and 7 buffers; more buffers keep more bytes; 0 is taken as 1.
#[test]
fn decode_first_calls_take_decoded_buffers_in_turn() {
    use ecq::gpu::BufferRange;
    use ecq::linear::{ActivationOrder, GpuLinear, DECODE_FIRST_MIN_ROWS};
    let Some(_) = dev() else { return };
    // (a device of its own: the buffer count is the device's, and other tests share theirs)
    let d = &LinearDevice::new().unwrap();
    assert_eq!(d.decoded_buffers(), 1);
    let shapes = [
        (37, 384, 4, 64, 1024, 2),
        (96, 512, 2, 32, 4096, 3),
        (40, 192, 8, 64, 2048, 4),
        (64, 256, 4, 64, 256, 1),
        (33, 512, 4, 32, 2048, 2),
    ];
    let m = DECODE_FIRST_MIN_ROWS + 3;
    let max_k = 512;
    let x = activations(4500, m * max_k);
    let xb = d.activation_buffer(x.len());
    d.queue().write_buffer(&xb, 0, bytemuck::cast_slice(&x));
    let mut layers = Vec::new();
    for (i, &(r, k, b, gs, cs, tc)) in shapes.iter().enumerate() {
        let c = case(4510 + i as u64, r, k, b, gs, cs, tc);
        let gpu = upload(d, &c, &LinearOptions::default()).unwrap();
        assert_eq!(
            gpu.decode_first_min_rows(),
            default_decode_first_rows(d, Form::Whole, false),
            "{r}x{k}"
        );
        let plain = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
        let want = bits(plain.forward_batch(&x[..m * k], m).unwrap());
        layers.push((gpu, want));
    }
    let calls: Vec<usize> = (0..2 * layers.len()).map(|i| i % layers.len()).collect();
    let mut kept = Vec::new();
    for n in [1, 2, 3, 7] {
        d.set_decoded_buffers(n);
        assert_eq!(d.decoded_buffers(), n);
        let ys: Vec<wgpu::Buffer> = calls
            .iter()
            .map(|&l| d.activation_buffer(m * layers[l].0.out_features()))
            .collect();
        let prepared: Vec<_> = calls
            .iter()
            .zip(&ys)
            .map(|(&l, y)| {
                let gpu = &layers[l].0;
                let xr = BufferRange::new(&xb, 0, (m * gpu.in_features() * 4) as u64);
                gpu.prepare_forward(xr, ActivationOrder::Columns, m, y.into())
                    .unwrap()
            })
            .collect();
        for group in [calls.len(), n] {
            for (y, &l) in ys.iter().zip(&calls) {
                let nan = vec![f32::NAN; m * layers[l].0.out_features()];
                d.queue().write_buffer(y, 0, bytemuck::cast_slice(&nan));
            }
            let cbs: Vec<_> = prepared
                .chunks(group)
                .map(|calls| {
                    let mut enc = d.device().create_command_encoder(&Default::default());
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        for call in calls {
                            call.record_in(&mut pass);
                        }
                    }
                    enc.finish()
                })
                .collect();
            d.queue().submit(cbs);
            for (j, (y, &l)) in ys.iter().zip(&calls).enumerate() {
                let (gpu, want) = &layers[l];
                gpu.check_recorded().unwrap();
                let got = d.read_f32(y.into()).unwrap();
                assert_eq!(
                    bits(got),
                    *want,
                    "{n} buffers, {group} calls a pass: call {j}"
                );
            }
        }
        kept.push(d.call_buffer_bytes());
    }
    assert!(
        kept[2] > kept[0],
        "kept bytes by buffers 1, 2, 3, 7: {kept:?}"
    );
    d.set_decoded_buffers(0);
    assert_eq!(d.decoded_buffers(), 1);
}

/// `LinearDevice::encode_calls`: prepared calls in a command buffer of their own with the
/// decodes first give each call's outputs bit for bit: layers coded whole at 2, 4 and 8 bits,
/// a plain layer between them (nothing to decode), a layer given twice (its error flags written
/// twice), two such command buffers in one submission; with `encode_calls_with`, the caller's
/// launch between two calls (a plain layer writing the next call's input) runs before that
/// call's multiply and after the decodes; calls sharing a kept buffer are refused before
/// anything is recorded; no calls make an empty command buffer; a corrupt stream among them is
/// reported by its layer's check, naming the chunk, and the other calls are right.
#[test]
fn encoded_calls_decode_first_and_give_each_calls_outputs() {
    use ecq::gpu::BufferRange;
    use ecq::linear::{ActivationOrder, GpuLinear};
    let Some(_) = dev() else { return };
    // (a device of its own: the buffer count is the device's)
    let d = &LinearDevice::new().unwrap();
    let shapes = [
        (37, 384, 4, 64, 1024, 2),
        (96, 512, 2, 32, 4096, 3),
        (40, 192, 8, 64, 2048, 4),
    ];
    let m = default_decode_first_rows(d, Form::Whole, false) + 4;
    let max_k = 512;
    let x = activations(4600, m * max_k);
    let xb = d.activation_buffer(x.len());
    d.queue().write_buffer(&xb, 0, bytemuck::cast_slice(&x));
    let mut coded = Vec::new();
    let mut wants = Vec::new();
    let mut plain = Vec::new();
    for (i, &(r, k, b, gs, cs, tc)) in shapes.iter().enumerate() {
        let c = case(4610 + i as u64, r, k, b, gs, cs, tc);
        coded.push(upload(d, &c, &LinearOptions::default()).unwrap());
        let p = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
        wants.push(bits(p.forward_batch(&x[..m * k], m).unwrap()));
        plain.push(p);
    }
    // (coded 0, coded 1, plain 2, coded 2, coded 0 again)
    let layers: [(&dyn GpuLinear, usize); 5] = [
        (&coded[0], 0),
        (&coded[1], 1),
        (&plain[2], 2),
        (&coded[2], 2),
        (&coded[0], 0),
    ];
    let prepare = |ys: &[wgpu::Buffer]| -> Vec<_> {
        layers
            .iter()
            .zip(ys)
            .map(|(&(layer, _), y)| {
                let xr = BufferRange::new(&xb, 0, (m * layer.in_features() * 4) as u64);
                layer
                    .prepare_forward(xr, ActivationOrder::Columns, m, y.into())
                    .unwrap()
            })
            .collect()
    };
    let outputs = || -> Vec<wgpu::Buffer> {
        layers
            .iter()
            .map(|&(l, _)| {
                let y = d.activation_buffer(m * l.out_features());
                let nan = vec![f32::NAN; m * l.out_features()];
                d.queue().write_buffer(&y, 0, bytemuck::cast_slice(&nan));
                y
            })
            .collect()
    };
    d.set_decoded_buffers(4);
    let (ys, ys2) = (outputs(), outputs());
    let (calls, calls2) = (prepare(&ys), prepare(&ys2));
    let decoding: Vec<bool> = calls.iter().map(|c| c.decodes_first()).collect();
    assert_eq!(decoding, [true, true, false, true, true]);
    d.queue().submit([
        d.encode_calls(&calls).unwrap(),
        d.encode_calls(&calls2).unwrap(),
    ]);
    for (&(layer, w), (y, y2)) in layers.iter().zip(ys.iter().zip(&ys2)) {
        layer.check_recorded().unwrap();
        assert_eq!(bits(d.read_f32(y.into()).unwrap()), wants[w], "layer {w}");
        assert_eq!(
            bits(d.read_f32(y2.into()).unwrap()),
            wants[w],
            "layer {w}, second"
        );
    }
    // (the caller's launches between the calls: a plain layer writing what call 1 reads)
    let pc = case(4620, 512, 384, 4, 64, 1024, 2);
    let first = QuantizedLinear::upload(d, "first", &pc.q, Some(&pc.bias)).unwrap();
    let h_host = first.forward_batch(&x[..m * 384], m).unwrap();
    let want_chained = bits(plain[1].forward_batch(&h_host, m).unwrap());
    let h = d.activation_buffer(m * 512);
    let cols = ActivationOrder::Columns;
    let xr = |k: usize| BufferRange::new(&xb, 0, (m * k * 4) as u64);
    let ys = outputs();
    let (y0, y1, y2) = (&ys[0], &ys[1], &ys[3]);
    let chain = [
        coded[0]
            .prepare_forward(xr(384), cols, m, y0.into())
            .unwrap(),
        coded[1]
            .prepare_forward((&h).into(), cols, m, y1.into())
            .unwrap(),
        coded[2]
            .prepare_forward(xr(192), cols, m, y2.into())
            .unwrap(),
    ];
    let writes_h = first
        .prepare_forward(xr(384), cols, m, (&h).into())
        .unwrap();
    let mut seen = Vec::new();
    let cb = d
        .encode_calls_with(&chain, |i, pass| {
            seen.push(i);
            if i == 1 {
                writes_h.record_in(pass);
            }
        })
        .unwrap();
    assert_eq!(seen, [0, 1, 2]);
    d.queue().submit([cb]);
    for (layer, y, want) in [
        (&coded[0], y0, &wants[0]),
        (&coded[1], y1, &want_chained),
        (&coded[2], y2, &wants[2]),
    ] {
        layer.check_recorded().unwrap();
        assert_eq!(bits(d.read_f32(y.into()).unwrap()), *want, "chained");
    }
    // (two buffers for four calls decoding first: the third takes the first's)
    d.set_decoded_buffers(2);
    let ys = outputs();
    let calls = prepare(&ys);
    match d.encode_calls(&calls) {
        Err(e @ LinearError::SharedDecodedBuffer { decoding: 4, .. }) => {
            assert!(e.to_string().contains("decoded_buffers"), "{e}")
        }
        other => panic!("calls sharing a kept buffer: {other:?}"),
    }
    // (but one by one they are fine)
    for call in &calls {
        d.queue().submit([d.encode_calls([call]).unwrap()]);
    }
    for (&(layer, w), y) in layers.iter().zip(&ys) {
        layer.check_recorded().unwrap();
        assert_eq!(
            bits(d.read_f32(y.into()).unwrap()),
            wants[w],
            "layer {w}, one by one"
        );
    }
    d.queue()
        .submit([d.encode_calls(std::iter::empty()).unwrap()]);
    // (a corrupt stream among them: its check names the chunk, the other call is right)
    let (bad, _) = corrupt_layer(d, &LinearOptions::default());
    let yb = d.activation_buffer(m * bad.out_features());
    let ys = outputs();
    let calls = [
        coded[0]
            .prepare_forward(xr(384), cols, m, (&ys[0]).into())
            .unwrap(),
        bad.prepare_forward(xr(256), cols, m, (&yb).into()).unwrap(),
    ];
    assert!(calls.iter().all(|c| c.decodes_first()));
    d.queue().submit([d.encode_calls(&calls).unwrap()]);
    let msg = bad.check_recorded().unwrap_err().to_string();
    assert!(msg.contains("corrupt") && msg.contains("chunk 1"), "{msg}");
    coded[0].check_recorded().unwrap();
    assert_eq!(
        bits(d.read_f32((&ys[0]).into()).unwrap()),
        wants[0],
        "beside a corrupt call"
    );
}

/// `LinearOptions::decode_first_min_rows`: a call of at least that many rows decodes the
/// layer's weights and runs the plain layer's kernels on them, so its outputs are
/// `QuantizedLinear`'s on the same weights bit for bit (host and recorded calls, with a bias,
/// beyond one batched launch), for whole-symbol layers of 2, 4 and 8 bits and split ones (by
/// default from 2 rows, from 1 on CPU devices and GPUs without 32-wide subgroups, except split
/// ones on GPUs whose fused GEMV runs on the lanes kernel: from `DECODE_FIRST_MIN_ROWS_LANES`)
/// and window splits (by default from `DECODE_FIRST_MIN_ROWS` where the blocked batched kernel
/// runs them, from `DECODE_FIRST_MIN_ROWS_LANES` where their fused GEMV runs on the lanes
/// kernel, else as the others); a call of fewer rows stays fused, within the CPU reference's
/// tolerance. Layers the plain kernels or
/// no decode kernel can run, and layers in several row bands, never decode first. A corrupt
/// stream is reported on this path too, host and recorded.
#[test]
fn decode_first_calls_are_the_plain_layer_bit_for_bit() {
    use ecq::linear::ActivationOrder;
    use gpu_common::{recorded, Placement};
    let Some(d) = dev() else { return };
    let min = default_decode_first_rows(d, Form::Whole, false);
    // (rows, cols, bits, group, chunk symbols, tile chunks) coded whole
    let whole = [
        (37, 384, 4, 64, 1024, 2),
        (96, 512, 2, 32, 4096, 3),
        (40, 192, 8, 64, 2048, 4),
    ];
    let mut layers: Vec<(String, Case, EntropyCodedLinear, usize)> = Vec::new();
    for (i, &(r, k, b, gs, cs, tc)) in whole.iter().enumerate() {
        let c = case(4100 + i as u64, r, k, b, gs, cs, tc);
        let gpu = upload(d, &c, &LinearOptions::default()).unwrap();
        assert_eq!(gpu.decode_first_min_rows(), min, "{r}x{k} b{b}");
        layers.push((format!("whole {r}x{k} b{b}"), c, gpu, min));
    }
    for (i, (r, k, gs, cs, tc, order)) in split_shapes().into_iter().take(3).enumerate() {
        let (c, s) = split_case(4200 + i as u64, r, k, gs, cs, tc, order);
        let m = CodedLayerRef::from_split(&s, gs as usize, &c.q.scales, &c.q.biases, Some(&c.bias));
        let gpu = EntropyCodedLinear::upload(d, "split", m, &LinearOptions::default()).unwrap();
        // (its fused GEMV on the lanes kernel where the device runs the lanes kernels and not
        // the 32-wide subgroup ones; with them, where the blocked kernel cannot take it)
        let registry = d.gpu().registry();
        if !registry.subgroups32() {
            assert_eq!(
                gpu.lanes_gemv_width(),
                registry.subgroup_lanes(),
                "split {r}x{k} {order:?}"
            );
        }
        let split_min = default_decode_first_rows(d, Form::Split, gpu.lanes_gemv_width().is_some());
        assert_eq!(
            gpu.decode_first_min_rows(),
            split_min,
            "split {r}x{k} {order:?}"
        );
        layers.push((format!("split {r}x{k} {order:?}"), c, gpu, split_min));
    }
    let (c, s) = window_case(4300);
    let m = CodedLayerRef::from_split(&s, 64, &c.q.scales, &c.q.biases, Some(&c.bias));
    let gpu = EntropyCodedLinear::upload(d, "window", m, &LinearOptions::default()).unwrap();
    let window_min = default_decode_first_rows(d, Form::Window, gpu.lanes_gemv_width().is_some());
    assert_eq!(gpu.decode_first_min_rows(), window_min);
    // (its one-row calls on the lanes fused GEMV where the device runs the lanes kernels and
    // not the 32-wide subgroup ones)
    let registry = d.gpu().registry();
    assert_eq!(
        gpu.lanes_gemv_width(),
        registry
            .subgroup_lanes()
            .filter(|_| !registry.subgroups32())
    );
    layers.push(("window 16x2048".into(), c, gpu, window_min));
    for (label, c, gpu, min) in &layers {
        let min = *min;
        let (r, k) = (gpu.out_features(), gpu.in_features());
        let plain = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
        let cpu = CpuLinear::from_quantized("cpu", &c.q, Some(c.bias.clone())).unwrap();
        // (a fused call below the threshold, where there is one: on CPU devices layers coded
        // whole or split decode first from one row)
        for m in [min - 1, min, 77, 515].into_iter().filter(|&m| m > 0) {
            let x = activations(r as u64 * 1000 + m as u64, m * k);
            let got = gpu.forward_batch(&x, m).unwrap();
            assert_close(&format!("{label} m{m}"), &cpu, &x, m, &got, 0.0);
            let rec = recorded(gpu, &x, ActivationOrder::Columns, m, Placement::START).unwrap();
            assert_eq!(bits(rec), bits(got.clone()), "{label} m{m}: recorded");
            if m >= min {
                let want = plain.forward_batch(&x, m).unwrap();
                assert_eq!(
                    bits(got),
                    bits(want),
                    "{label} m{m}: the plain layer's outputs"
                );
            }
        }
    }
    // never: 3 bits (no plain kernel), several bands, or asked not to
    let c = case(4400, 33, 320, 3, 32, 700, 5);
    assert_eq!(
        upload(d, &c, &LinearOptions::default())
            .unwrap()
            .decode_first_min_rows(),
        usize::MAX
    );
    let c = case(4401, 64, 256, 4, 64, 256, 1);
    let banded = LinearOptions {
        max_buffer_bytes: Some(4096),
        ..Default::default()
    };
    let gpu = upload(d, &c, &banded).unwrap();
    assert!(gpu.n_bands() > 1);
    assert_eq!(gpu.decode_first_min_rows(), usize::MAX);
    let never = LinearOptions {
        decode_first_min_rows: Some(usize::MAX),
        ..Default::default()
    };
    assert_eq!(
        upload(d, &c, &never).unwrap().decode_first_min_rows(),
        usize::MAX
    );
    let from_two = LinearOptions {
        decode_first_min_rows: Some(2),
        ..Default::default()
    };
    assert_eq!(upload(d, &c, &from_two).unwrap().decode_first_min_rows(), 2);
    // a corrupt stream decoded first is reported, host and recorded, naming the chunk
    let (gpu, _) = corrupt_layer(d, &LinearOptions::default());
    assert_eq!(gpu.decode_first_min_rows(), min);
    let x = vec![1.0; min * 256];
    for res in [
        gpu.forward_batch(&x, min),
        recorded(&gpu, &x, ActivationOrder::Columns, min, Placement::START),
    ] {
        let msg = res.unwrap_err().to_string();
        assert!(msg.contains("corrupt") && msg.contains("chunk 1"), "{msg}");
    }
    // and the layer is usable again afterwards (the flags were cleared)
    let c = case(15, 32, 256, 4, 64, 2048, 2);
    let good = upload(d, &c, &LinearOptions::default()).unwrap();
    let x = activations(4402, min * 256);
    let plain = QuantizedLinear::upload(d, "plain", &c.q, Some(&c.bias)).unwrap();
    assert_eq!(
        bits(good.forward_batch(&x, min).unwrap()),
        bits(plain.forward_batch(&x, min).unwrap())
    );
}
