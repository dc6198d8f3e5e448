//! Prefill table (issue 6): the batched fused rANS kernel (`wgsl/rans_gemm_blocked.wgsl` where
//! 32-wide subgroups run it, else `wgsl/rans_gemm.wgsl`, timed too as "portable"; each chunk
//! decoded once per dispatch and reused for up to 512 activation rows) against the plain MLX
//! 4-bit batched kernel (`wgsl/qgemm.wgsl`, same multiply, weights read from packed words), and
//! against M calls of the one-vector kernels (plain `qgemv` and the fused rANS GEMV), at
//! several token counts M, on the adapter `GpuContext::new` picks.
//!
//! ```text
//! cargo run --release --example bench_prefill -- [--shapes 4096x4096,4096x14336]
//!     [--ms 1,8,32,128,512] [--rounds 5] [--target-ms 30] [--set-mib 256] [--max-gemv-m 512]
//!     [--chunk-symbols 16384] [--tile-chunks 32] [--min-chunks N]
//!     [--coding whole,split,pairs,window] [--target-workgroups 256,512,1024]
//!     [--vectors 2,4,8,16] [--vectors-tables] [--many-diag 1,2,3] [--lane-order] [--coop]
//!     [--calls] [--wall]
//! ```
//!
//! Weights: Gaussian (sigma 0.02), MLX affine 4-bit g64 (`ecq::quant::quantize_affine`), coded
//! by `ecq::rans::encode` at precision 11 with the given chunk geometry (`--coding whole`, the
//! default), or split 2 + 2 (`ecq::rans::SplitMatrix`, `ecq encode --split`: `split` in row
//! order, `pairs` in row-pair order) with half the symbols per chunk, as `ecq encode` does, or
//! as a window split in row pairs (`window`, `ecq encode --window --row-pairs`, a quarter);
//! `--min-chunks` as `ecq encode`'s (default as there: 0 whole, 8192 split). Every matrix is
//! uploaded as several distinct copies (at least `--set-mib` MiB of packed weights in all) and
//! the timed work rotates through them, so weights come from memory, not the L2 cache. One
//! "forward" = the work for M tokens: one dispatch of a batched kernel (or M dispatches of a
//! one-vector kernel, all with the same activation vector). Each round records as many
//! forwards as fill about `--target-ms` into one command buffer between two `device.poll`
//! waits; times are medians over `--rounds`, per forward. The one-vector baselines are skipped
//! (`-`) above `--max-gemv-m`. `--target-workgroups` times the coded batched kernel once for
//! each value of `LinearOptions::gemm_target_workgroups` (default: the library's), a row each;
//! the one-vector kernels and `qgemm` are timed once per M and shown on its first row. For window
//! splits the fused GEMV is also timed multiplying several vectors a launch
//! (`EntropyCodedLinear::vectors_dispatch`, each chunk decoded once per launch), and so is its
//! plain counterpart (`GpuQuantizedMatrix::gemv_many_dispatch`, `wgsl/qgemv4_many.wgsl`, the
//! weights read once per launch): M rows in launches of V = each `--vectors` value (at most M)
//! vectors, up to `--max-gemv-m` rows, both results checked against `qgemm`'s;
//! `--vectors-tables` adds the fused launches with each decode table form forced
//! (`GpuCodedMatrix::gemv_many_dispatch_with`, `FusedVariant::Blocked` = u32 table,
//! `BlockedCompact`; on lane order with `--lane-order`), and `--many-diag` the
//! plain multi-vector launches in each listed build of
//! `GpuQuantizedMatrix::gemv_many_diagnostic_dispatch` (1, 2: diagnostics, 3: four rows a
//! group, 4: the same on lane order; the last listed checked against `qgemm` when 3 or 4); `--lane-order` the fused and plain
//! launches on activations in lane order (`ecq::gpu::x_lane_order`, permuted on the host:
//! `gemv_many_lane_order_dispatch`), also checked, and the permutation of a launch's vectors
//! on the GPU alone (`x_lane_order_dispatch`); `--coop` creates the context with
//! `GpuContext::with_cooperative_matrix` and adds the cooperative-matrix launches where it
//! got them (`ecq::gpu::coop_x_dispatch` then `GpuCodedMatrix::gemv_coop_dispatch`, each
//! launch's activation pass included, and that pass alone; the plain baseline on the same
//! multiply, `GpuQuantizedMatrix::gemv_coop_dispatch`; the fused kernel's diagnostic builds
//! 1-3; and, on stderr, whole `forward_batch` calls of a window-split layer and its plain
//! layer with and without the cooperative option (the fused launches at every row count, and
//! the layer decoding first as by default, `LinearOptions::decode_first_min_rows`), wall clock, each through `forward_batch` and
//! through `forward_batch_into` with a reused output vector, and recorded on activations and
//! outputs in GPU buffers (`GpuLinear::record_forward`, record + submit + wait, activations
//! given in column and in lane order); `--calls` times only those calls,
//! on whatever context it gets), checked too (the cooperative outputs, on f16 activations, differ from `qgemm`'s by
//! about 2^-11 of the largest output). Prints a markdown table on stdout.
//!
//! Clock (`examples/common/timing.rs`): where the device has `TIMESTAMP_QUERY`, times are the
//! GPU duration of the compute pass holding a round's forwards divided by their number
//! (barriers between dispatches included; the host's command translation, submit and wait
//! not); `--wall`, or an adapter without timestamps, reports the wall clock from submit to the
//! end of the wait, started after `finish()`. The output says which, and keeps wall-clock
//! figures for the two batched kernels.

use std::sync::Arc;

#[path = "common/timing.rs"]
mod timing;
use timing::{GpuTimer, Timing};

use ecq::container::MatrixCoding;
use ecq::dtype::FloatDType;
use ecq::gpu::GpuQuantizedMatrix;
use ecq::linear::{
    ActivationOrder, CodedLayerRef, EntropyCodedLinear, GpuLinear, Linear, LinearDevice,
    LinearDispatch, LinearOptions, QuantizedLinear,
};
use ecq::quant::{quantize_affine, AffineParams, QuantizedMatrix};
use ecq::rans::{encode, EncodeOptions, EncodedMatrix, SplitMatrix, SplitOrder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Args {
    shapes: Vec<(usize, usize)>,
    ms: Vec<usize>,
    rounds: usize,
    target_ms: f64,
    set_mib: f64,
    max_gemv_m: usize,
    chunk_symbols: usize,
    tile_chunks: usize,
    /// `None`: `ecq encode`'s default for the coding
    min_chunks: Option<usize>,
    codings: Vec<String>,
    /// `LinearOptions::gemm_target_workgroups` values (`None`: the default)
    targets: Vec<Option<u32>>,
    /// activation vectors per launch of the multi-vector fused GEMV (window splits)
    vectors: Vec<u32>,
    /// also time the multi-vector fused GEMV with each table form forced
    vectors_tables: bool,
    /// builds of `gemv_many_diagnostic_dispatch` to time next to the plain launches
    many_diag: Vec<u32>,
    /// also time the launches on activations in lane order
    lane_order: bool,
    /// also time the cooperative-matrix launches (a context with cooperative matrices)
    coop: bool,
    /// time whole `forward_batch` calls only (window splits), not the launches
    calls: bool,
    wall: bool,
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',')
        .map(|v| v.trim().parse().ok().expect("bad list value"))
        .collect()
}

fn parse_args() -> Args {
    let mut a = Args {
        shapes: vec![(4096, 4096), (4096, 14336)],
        ms: vec![1, 8, 32, 128, 512],
        rounds: 5,
        target_ms: 30.0,
        set_mib: 256.0,
        max_gemv_m: 512,
        chunk_symbols: ecq::rans::DEFAULT_CHUNK_SYMBOLS,
        tile_chunks: ecq::rans::DEFAULT_TILE_CHUNKS,
        min_chunks: None,
        codings: vec!["whole".into()],
        targets: vec![None],
        vectors: vec![2, 4, 8, 16],
        vectors_tables: false,
        many_diag: Vec::new(),
        lane_order: false,
        coop: false,
        calls: false,
        wall: false,
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(p) = args.iter().position(|s| s == "--wall") {
        a.wall = true;
        args.remove(p);
    }
    if let Some(p) = args.iter().position(|s| s == "--vectors-tables") {
        a.vectors_tables = true;
        args.remove(p);
    }
    if let Some(p) = args.iter().position(|s| s == "--lane-order") {
        a.lane_order = true;
        args.remove(p);
    }
    if let Some(p) = args.iter().position(|s| s == "--coop") {
        a.coop = true;
        args.remove(p);
    }
    if let Some(p) = args.iter().position(|s| s == "--calls") {
        a.calls = true;
        args.remove(p);
    }
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--shapes" => {
                a.shapes = v
                    .split(',')
                    .map(|s| {
                        let (r, k) = s.split_once('x').expect("shape RxK");
                        (r.parse().expect("rows"), k.parse().expect("cols"))
                    })
                    .collect()
            }
            "--ms" => a.ms = list(&v),
            "--rounds" => a.rounds = v.parse().expect("rounds"),
            "--target-ms" => a.target_ms = v.parse().expect("target-ms"),
            "--set-mib" => a.set_mib = v.parse().expect("set-mib"),
            "--max-gemv-m" => a.max_gemv_m = v.parse().expect("max-gemv-m"),
            "--chunk-symbols" => a.chunk_symbols = v.parse().expect("chunk-symbols"),
            "--tile-chunks" => a.tile_chunks = v.parse().expect("tile-chunks"),
            "--min-chunks" => a.min_chunks = Some(v.parse().expect("min-chunks")),
            "--target-workgroups" => a.targets = list(&v).into_iter().map(Some).collect(),
            "--vectors" => a.vectors = list(&v),
            "--many-diag" => a.many_diag = list(&v),
            "--coding" => {
                a.codings = v.split(',').map(String::from).collect();
                for c in &a.codings {
                    assert!(
                        ["whole", "split", "pairs", "window"].contains(&c.as_str()),
                        "--coding: {c} (whole, split, pairs or window)"
                    );
                }
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// The median of `rounds` runs of `call` (milliseconds it returns), after one warm-up run.
fn median_ms<E>(rounds: usize, mut call: impl FnMut() -> Result<f64, E>) -> Result<f64, E> {
    call()?;
    let mut t: Vec<f64> = (0..rounds).map(|_| call()).collect::<Result<_, _>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn buffer(dev: &LinearDevice, bytes: u64, data: Option<&[f32]>) -> wgpu::Buffer {
    let b = dev.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench"),
        size: bytes.div_ceil(16).max(1) * 16,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    if let Some(d) = data {
        dev.queue().write_buffer(&b, 0, bytemuck::cast_slice(d));
    }
    b
}

/// Median seconds per forward (clock: see the module doc); `record(pass, i)` records forward
/// `i` (rotating copies). The number of forwards per round is sized by the wall clock. Before
/// measuring, the forwards run for `warm_s` seconds: GPU clocks drop during seconds of host
/// work (encoding, uploads), and a single warm-up forward did not bring them back (the first
/// timing of each matrix was up to 3.7x slow; BENCHMARKS.md, issue 6).
fn time(
    dev: &LinearDevice,
    timer: &GpuTimer,
    rounds: usize,
    target_ms: f64,
    warm_s: f64,
    record: &dyn Fn(&mut wgpu::ComputePass<'_>, usize),
) -> Timing {
    let run = |n: usize, start: usize| {
        timer.time_pass(dev.device(), dev.queue(), |pass| {
            for i in 0..n {
                record(pass, start + i);
            }
        })
    };
    run(1, 0); // pipelines, first touch
    let one = run(1, 1).wall;
    let n = ((target_ms / 1e3 / one.max(1e-7)).round() as usize).clamp(1, 1000);
    let warm = std::time::Instant::now();
    while warm.elapsed().as_secs_f64() < warm_s {
        run(n, 0);
    }
    let samples: Vec<_> = (0..rounds.max(1)).map(|r| run(n, r * n)).collect();
    timer.summarize(&samples, n)
}

fn read(dev: &LinearDevice, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    let staging = dev.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("read"),
        size: (n * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = dev.device().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(b, 0, &staging, 0, (n * 4) as u64);
    dev.queue().submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |_| {});
    dev.gpu().wait().expect("wait");
    let v = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).expect("map"));
    staging.unmap();
    v
}

/// For each copy of a matrix, the launches that cover `m` activation rows in runs of at most
/// `per` vectors (`launch(copy, n)` makes one of `n` vectors, reading the buffers' first rows).
fn vector_runs<C, D, E>(
    copies: &[C],
    m: usize,
    per: usize,
    launch: impl Fn(&C, u32) -> Result<D, E>,
) -> Result<Vec<Vec<D>>, E> {
    copies
        .iter()
        .map(|c| {
            (0..m)
                .step_by(per)
                .map(|i| launch(c, per.min(m - i) as u32))
                .collect()
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse_args();
    let dev: Arc<LinearDevice> = if a.coop {
        LinearDevice::from_context(ecq::gpu::GpuContext::with_cooperative_matrix()?)
    } else {
        LinearDevice::new()?
    };
    let adapter = dev.gpu().adapter_name().to_string();
    eprintln!("adapter: {}", dev.gpu().describe());
    let timer = GpuTimer::new(dev.device(), dev.queue(), a.wall);
    let clock = timer.short();
    println!(
        "Clock: {} (wall-clock column: submit to end of wait, after finish()).",
        timer.clock()
    );
    println!();
    println!(
        "| adapter | shape RxK | coding | M | batched target workgroups | plain qgemv x M µs [{clock}] | fused rANS GEMV x M µs [{clock}] | plain qgemm µs [{clock}] | rans_gemm µs [{clock}] (blocked where subgroups are 32 wide) | portable rans_gemm µs [{clock}] | wall-clock µs (qgemm / rans_gemm) | rans_gemm / qgemm | rans_gemm / (fused GEMV x M) | rans_gemm tokens/s | max abs diff rans_gemm vs qgemm / max abs y | V vectors a launch (window splits), V: fused / plain qgemv4_many µs [{clock}] | best fused V / rans_gemm | best fused V / best plain V | max abs diff V-vector GEMVs vs qgemm / max abs y |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &(r, k) in &a.shapes {
        let mut rng = ChaCha8Rng::seed_from_u64((r * 31 + k) as u64);
        let w: Vec<f32> = (0..r * k).map(|_| gaussian(&mut rng) * 0.02).collect();
        let q: QuantizedMatrix =
            quantize_affine(&w, r, k, FloatDType::F32, AffineParams::new(4, 64)?)?;
        drop(w);
        let opts = EncodeOptions {
            chunk_symbols: a.chunk_symbols,
            tile_chunks: a.tile_chunks,
            group_size: 64,
            ..Default::default()
        };
        for coding in &a.codings {
            // whole symbols, or split 2 + 2 with half the symbols per chunk (as `ecq encode --split`)
            let (enc, split): (Option<EncodedMatrix>, Option<SplitMatrix>) = match coding.as_str() {
                "whole" => {
                    let o = EncodeOptions {
                        min_chunks: a
                            .min_chunks
                            .unwrap_or(MatrixCoding::Whole.default_min_chunks()),
                        ..opts.clone()
                    };
                    (Some(encode(&q.symbols(), r, k, 4, &o)?), None)
                }
                "window" => {
                    // a window split in row pairs with a quarter of the symbols per chunk (as
                    // `ecq encode --window --row-pairs`)
                    let coding = MatrixCoding::Window4 { row_pairs: true };
                    let o = EncodeOptions {
                        chunk_symbols: (a.chunk_symbols / 4).max(1),
                        min_chunks: a.min_chunks.unwrap_or(coding.default_min_chunks()),
                        ..opts.clone()
                    };
                    let s =
                        SplitMatrix::encode_window(&q.symbols(), r, k, &o, SplitOrder::RowPairs)?;
                    (None, Some(s))
                }
                c => {
                    let order = if c == "pairs" {
                        SplitOrder::RowPairs
                    } else {
                        SplitOrder::Rows
                    };
                    let coding = MatrixCoding::Split4 {
                        row_pairs: order == SplitOrder::RowPairs,
                    };
                    let o = EncodeOptions {
                        chunk_symbols: (a.chunk_symbols / 2).max(1),
                        min_chunks: a.min_chunks.unwrap_or(coding.default_min_chunks()),
                        ..opts.clone()
                    };
                    let s = SplitMatrix::encode_ordered(&q.symbols(), r, k, 4, 2, &o, order)?;
                    (None, Some(s))
                }
            };
            let layer_ref = || match (&enc, &split) {
                (Some(e), _) => CodedLayerRef::from_encoded(e, 64, &q.scales, &q.biases, None),
                (_, Some(s)) => CodedLayerRef::from_split(s, 64, &q.scales, &q.biases, None),
                _ => unreachable!(),
            };
            let packed_mib = (r * k / 2) as f64 / (1 << 20) as f64;
            let copies = ((a.set_mib / packed_mib).ceil() as usize).clamp(1, 64);
            let (coded_bytes, chunk_rows) = match (&enc, &split) {
                (Some(e), _) => (e.total_bytes(), e.chunk_rows()),
                (_, Some(s)) => (s.total_bytes(), s.high().chunk_rows()),
                _ => unreachable!(),
            };
            let coded_bits = coded_bytes as f64 * 8.0 / (r * k) as f64;
            eprintln!(
            "{r}x{k} {coding}: {copies} copies, {coded_bits:.3} coded bits/weight, coded chunk_rows {chunk_rows}"
        );
            let upload = |portable_gemm, target| -> Result<Vec<EntropyCodedLinear>, _> {
                let opts = LinearOptions {
                    portable_gemm,
                    gemm_target_workgroups: target,
                    // (every count of vectors a launch the benchmark times)
                    gemv_vectors: Some(ecq::gpu::MAX_GEMV_VECTORS),
                    ..Default::default()
                };
                (0..copies)
                    .map(|_| EntropyCodedLinear::upload(&dev, "bench", layer_ref(), &opts))
                    .collect()
            };
            // one set of copies per batched target workgroup count (the others only once the
            // first shows that a batched kernel runs this coding)
            let mut coded_by_target = vec![upload(false, a.targets[0])?];
            if coding == "window" && !coded_by_target[0][0].blocked_gemm() {
                // (no batched kernel reads a window split without 32-wide subgroups, and the
                // fused GEMVs alone are what `forward_batch` runs there)
                eprintln!(
                    "{r}x{k} window: skipped, no batched kernel for window splits on this adapter \
                     (rans_gemm_blocked.wgsl needs 32-wide subgroups)"
                );
                continue;
            }
            for &t in &a.targets[1..] {
                coded_by_target.push(upload(false, t)?);
            }
            let coded = &coded_by_target[0];
            // the portable batched kernel too, where the default is the blocked one (it does
            // not read window splits)
            let portable = if coded[0].blocked_gemm() && coding != "window" {
                Some(upload(true, a.targets[0])?)
            } else {
                None
            };
            let plain: Vec<QuantizedLinear> = (0..copies)
                .map(|_| QuantizedLinear::upload(&dev, "bench", &q, None))
                .collect::<Result<_, _>>()?;
            let qv: Vec<GpuQuantizedMatrix> = (0..copies)
                .map(|_| GpuQuantizedMatrix::upload(dev.device(), &q))
                .collect::<Result<_, _>>()?;
            // (--vectors-tables, --lane-order: the window split as GpuCodedMatrix copies, for
            // forced tables and lane order)
            let forced: Vec<ecq::gpu::GpuCodedMatrix> =
                match (&split, a.vectors_tables || a.lane_order || a.coop) {
                    (Some(s), true) if coding == "window" => (0..copies)
                        .map(|_| {
                            dev.gpu()
                                .upload_split(s, Some(ecq::gpu::QuantParamsRef::from(&q)))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => Vec::new(),
                };
            dev.gpu().wait()?;
            let registry = dev.gpu().registry();
            let xv = buffer(&dev, (k * 4) as u64, Some(&vec![0.5f32; k]));
            let yv = buffer(&dev, (r * 4) as u64, None);
            let gemv_plain: Vec<_> = qv
                .iter()
                .map(|m| m.gemv_dispatch(dev.device(), registry, &xv, &yv))
                .collect::<Result<_, _>>()?;
            let gemv_coded: Vec<LinearDispatch> = coded
                .iter()
                .map(|m| m.vector_dispatch(&xv, &yv))
                .collect::<Result<_, _>>()?;
            // --coop or --calls: whole `forward_batch` calls (host upload, launches, read back;
            // wall clock, medians of --rounds, at least 9, after one warm-up call) of a layer
            // with and without the cooperative option, fused and plain, at each M, on stderr;
            // each also through `forward_batch_into` with one output vector reused
            if (a.coop || a.calls) && coding == "window" {
                // (the fused launches at every row count; the layers decoding first, as by
                // default, apart)
                let with = |on: bool, decode_first: Option<usize>| {
                    let opts = LinearOptions {
                        cooperative_matrix: on,
                        decode_first_min_rows: decode_first,
                        ..Default::default()
                    };
                    EntropyCodedLinear::upload(&dev, "bench", layer_ref(), &opts)
                };
                let (fused_f32, fused_coop) = (
                    with(false, Some(usize::MAX))?,
                    with(true, Some(usize::MAX))?,
                );
                let (decoding_f32, decoding_coop) = (with(false, None)?, with(true, None)?);
                let plain_f32 = QuantizedLinear::upload(&dev, "bench", &q, None)?;
                let mut plain_coop = QuantizedLinear::upload(&dev, "bench", &q, None)?;
                plain_coop.set_cooperative_matrix(true);
                // (the cooperative layers with GEMV launches at every row count, whatever the
                // size rule says)
                let fused_all = EntropyCodedLinear::upload(
                    &dev,
                    "bench",
                    layer_ref(),
                    &LinearOptions {
                        cooperative_matrix: true,
                        gemv_batch_max_m: Some(ecq::linear::MAX_M_PER_DISPATCH),
                        decode_first_min_rows: Some(usize::MAX),
                        ..Default::default()
                    },
                )?;
                let mut plain_all = QuantizedLinear::upload(&dev, "bench", &q, None)?;
                plain_all.set_cooperative_matrix(true);
                plain_all.set_gemv_many_max_m(Some(ecq::linear::MAX_M_PER_DISPATCH));
                for &m in &a.ms {
                    let x: Vec<f32> = (0..m * k).map(|_| gaussian(&mut rng)).collect();
                    let mut y = vec![0.0f32; m * r];
                    let mut wall =
                        |l: &dyn Linear, into: bool| -> Result<f64, Box<dyn std::error::Error>> {
                            let call = || -> Result<f64, ecq::linear::LinearError> {
                                let s = std::time::Instant::now();
                                if into {
                                    l.forward_batch_into(&x, m, &mut y)?;
                                } else {
                                    l.forward_batch(&x, m)?;
                                }
                                Ok(s.elapsed().as_secs_f64() * 1e3)
                            };
                            Ok(median_ms(a.rounds.max(9), call)?)
                        };
                    let mut both = |l: &dyn Linear| -> Result<String, Box<dyn std::error::Error>> {
                        Ok(format!("{:.3} / {:.3}", wall(l, false)?, wall(l, true)?))
                    };
                    eprintln!(
                        "forward_batch {r}x{k} M={m} (wall clock, ms, allocating / into): fused \
                         f32 {}, cooperative ({}) {}, cooperative launches at every row count \
                         {}; decoding first (from {} / {} rows) f32 {}, cooperative {}; plain \
                         f32 {}, cooperative ({}) {}, at every row count {}",
                        both(&fused_f32)?,
                        fused_coop.cooperative_matrix(),
                        both(&fused_coop)?,
                        both(&fused_all)?,
                        decoding_f32.decode_first_min_rows(),
                        decoding_coop.decode_first_min_rows(),
                        both(&decoding_f32)?,
                        both(&decoding_coop)?,
                        both(&plain_f32)?,
                        plain_coop.cooperative_matrix(),
                        both(&plain_coop)?,
                        both(&plain_all)?,
                    );
                    // the same calls recorded on activations and outputs in GPU buffers
                    // (`GpuLinear::record_forward`): record, submit, wait, wall clock
                    let xb = buffer(&dev, (m * k * 4) as u64, Some(&x));
                    let yb = buffer(&dev, (m * r * 4) as u64, None);
                    let rec = |l: &dyn GpuLinear,
                               order: ActivationOrder|
                     -> Result<f64, Box<dyn std::error::Error>> {
                        let call = || -> Result<f64, Box<dyn std::error::Error>> {
                            let s = std::time::Instant::now();
                            let mut enc = dev.device().create_command_encoder(&Default::default());
                            l.record_forward(&mut enc, (&xb).into(), order, m, (&yb).into())?;
                            dev.queue().submit([enc.finish()]);
                            dev.gpu().wait()?;
                            Ok(s.elapsed().as_secs_f64() * 1e3)
                        };
                        let t = median_ms(a.rounds.max(9), call)?;
                        l.check_recorded()?;
                        Ok(t)
                    };
                    let both = |l: &dyn GpuLinear| -> Result<String, Box<dyn std::error::Error>> {
                        Ok(format!(
                            "{:.3} / {:.3}",
                            rec(l, ActivationOrder::Columns)?,
                            rec(l, ActivationOrder::Lanes)?
                        ))
                    };
                    eprintln!(
                        "record_forward {r}x{k} M={m} (wall clock, ms, activations in column / \
                         lane order): fused f32 {}, cooperative {}, cooperative launches at \
                         every row count {}; decoding first f32 {}, cooperative {}; plain f32 \
                         {}, cooperative {}, at every row count {}",
                        both(&fused_f32)?,
                        both(&fused_coop)?,
                        both(&fused_all)?,
                        both(&decoding_f32)?,
                        both(&decoding_coop)?,
                        both(&plain_f32)?,
                        both(&plain_coop)?,
                        both(&plain_all)?,
                    );
                }
            }
            if a.calls {
                continue;
            }
            for &m in &a.ms {
                let k4 = k.div_ceil(4) * 4;
                let x: Vec<f32> = (0..m * k4).map(|_| gaussian(&mut rng)).collect();
                let xb = buffer(&dev, (x.len() * 4) as u64, Some(&x));
                let xl = buffer(
                    &dev,
                    (x.len() * 4) as u64,
                    Some(&ecq::gpu::x_lane_order(&x, k4)?),
                );
                let yb = buffer(&dev, (m * r * 4) as u64, None);
                let yq = buffer(&dev, (m * r * 4) as u64, None);
                let batched_portable: Option<Vec<Vec<LinearDispatch>>> = portable
                    .as_ref()
                    .map(|p| p.iter().map(|c| c.batch_dispatches(&xb, &yb, m)).collect())
                    .transpose()?;
                let batched_plain: Vec<LinearDispatch> = plain
                    .iter()
                    .map(|p| p.batch_dispatch(&xb, &yq, m))
                    .collect::<Result<_, _>>()?;
                // (1.5 s of warm-up after the host's encoding and uploads, 0.25 s between timings)
                let first = m == a.ms[0];
                let qgemm = time(
                    &dev,
                    &timer,
                    a.rounds,
                    a.target_ms,
                    if first { 1.5 } else { 0.25 },
                    &|pass, i| batched_plain[i % copies].record(pass),
                );
                let t_portable = batched_portable.as_ref().map(|bp| {
                    time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                        for d in &bp[i % copies] {
                            d.record(pass)
                        }
                    })
                    .t
                });
                let (t_qv, t_fv) = if m <= a.max_gemv_m {
                    (
                        Some(
                            time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                                for j in 0..m {
                                    gemv_plain[(i * m + j) % copies].record(pass)
                                }
                            })
                            .t,
                        ),
                        Some(
                            time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                                for j in 0..m {
                                    gemv_coded[(i * m + j) % copies].record(pass)
                                }
                            })
                            .t,
                        ),
                    )
                } else {
                    (None, None)
                };
                // the multi-vector fused GEMV: M rows in launches of V vectors (all reading the
                // first V rows of xb: the time does not depend on which)
                let ym = buffer(&dev, (m * r * 4) as u64, None);
                let yp = buffer(&dev, (m * r * 4) as u64, None);
                let yd = buffer(&dev, (m * r * 4) as u64, None);
                let mut multi: Vec<(usize, f64, f64)> = Vec::new();
                let mut forced_t: Vec<(f64, f64)> = Vec::new();
                let mut diag_t: Vec<Vec<(u32, f64)>> = Vec::new();
                let mut lanes_t: Vec<(f64, f64, f64)> = Vec::new();
                let mut coop_t: Vec<(f64, f64, Vec<f64>, f64)> = Vec::new();
                // (max abs diff of the fused and plain cooperative outputs vs qgemm / max abs y,
                // two per launch size)
                let mut coop_d: Vec<f32> = Vec::new();
                let yc = buffer(&dev, (m * r * 4) as u64, None);
                let ycp = buffer(&dev, (m * r * 4) as u64, None);
                let xperm = buffer(&dev, (x.len() * 4) as u64, None);
                let yl = buffer(&dev, (m * r * 4) as u64, None);
                let ylp = buffer(&dev, (m * r * 4) as u64, None);
                let mut multi_diff = None;
                if m <= a.max_gemv_m
                    && coded[0].gemv_vectors() > 1
                    && qv[0].gemv_many_supported(registry)
                {
                    for &v in &a.vectors {
                        let per = (v as usize).min(m);
                        if multi.iter().any(|&(p, _, _)| p == per) {
                            continue;
                        }
                        let plain_launches = vector_runs(&qv, m, per, |q, n| {
                            q.gemv_many_dispatch(dev.device(), registry, &xb, &yp, n)
                        })?;
                        let tp = time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                            for d in &plain_launches[i % copies] {
                                d.record(pass)
                            }
                        })
                        .t;
                        let launches =
                            vector_runs(coded, m, per, |c, n| c.vectors_dispatch(&xb, &ym, n))?;
                        let t = time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                            for d in &launches[i % copies] {
                                d.record(pass)
                            }
                        })
                        .t;
                        multi.push((per, t, tp));
                        let mut dts = Vec::new();
                        for &diag in &a.many_diag {
                            let launches = vector_runs(&qv, m, per, |q, n| {
                                // (build 4 reads lane order)
                                q.gemv_many_diagnostic_dispatch(
                                    dev.device(),
                                    registry,
                                    if diag == 4 { &xl } else { &xb },
                                    &yd,
                                    n,
                                    diag,
                                )
                            })?;
                            let t = time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                                for d in &launches[i % copies] {
                                    d.record(pass)
                                }
                            })
                            .t;
                            dts.push((diag, t));
                        }
                        diag_t.push(dts);
                        if a.lane_order && !forced.is_empty() {
                            let fl = vector_runs(&forced, m, per, |c, n| {
                                c.gemv_many_lane_order_dispatch(dev.device(), registry, &xl, &yl, n)
                            })?;
                            let pl = vector_runs(&qv, m, per, |q, n| {
                                q.gemv_many_lane_order_dispatch(
                                    dev.device(),
                                    registry,
                                    &xl,
                                    &ylp,
                                    n,
                                )
                            })?;
                            // the permutation of the launch's vectors into lane order, alone
                            let perm = ecq::gpu::x_lane_order_dispatch(
                                dev.device(),
                                registry,
                                &xb,
                                &xperm,
                                per,
                                k4,
                            )?;
                            let tperm =
                                time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, _| {
                                    perm.record(pass)
                                })
                                .t;
                            let mut ts = [0.0; 3];
                            ts[2] = tperm;
                            for (ti, l) in [&fl, &pl].into_iter().enumerate() {
                                ts[ti] =
                                    time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                                        for d in &l[i % copies] {
                                            d.record(pass)
                                        }
                                    })
                                    .t;
                            }
                            lanes_t.push((ts[0], ts[1], ts[2]));
                        }
                        if a.coop && !forced.is_empty() && forced[0].coop_supported(registry) {
                            let (window, packed) =
                                (ecq::gpu::CoopOrder::Window, ecq::gpu::CoopOrder::Packed);
                            let acts = |n, order| {
                                ecq::gpu::CoopActivations::new(dev.device(), k, n, order)
                            };
                            let time_sets = |sets: &[Vec<ecq::gpu::Dispatch>]| {
                                time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                                    for d in &sets[i % copies] {
                                        d.record(pass);
                                    }
                                })
                                .t
                            };
                            // each launch: its activation pass, then the GEMV (the passes
                            // alone timed too)
                            let launches = vector_runs(&forced, m, per, |c, n| {
                                let act = acts(n, window)?;
                                let prep =
                                    ecq::gpu::coop_x_dispatch(dev.device(), registry, &xb, &act)?;
                                let gemv =
                                    c.gemv_coop_dispatch(dev.device(), registry, &act, &yc)?;
                                Ok::<_, ecq::gpu::GpuError>(vec![prep, gemv])
                            })?;
                            // (a copy's launches recorded in turn; the passes alone)
                            let both = |sets: &[Vec<Vec<ecq::gpu::Dispatch>>]| -> Vec<Vec<_>> {
                                sets.iter().map(|set| set.concat()).collect()
                            };
                            let preps: Vec<Vec<_>> = launches
                                .iter()
                                .map(|set| set.iter().map(|l| l[0].clone()).collect())
                                .collect();
                            let t = time_sets(&both(&launches));
                            let tp = time_sets(&preps);
                            // the GEMV's diagnostic builds (1: decode alone, 2: with the
                            // tile and barriers, 3: tile, multiply and flush alone), prepared
                            // activations as above
                            let mut td = Vec::new();
                            for diag in 1..=3 {
                                td.push(time_sets(&vector_runs(&forced, m, per, |c, n| {
                                    let act = acts(n, window)?;
                                    c.coop_diagnostic_dispatch(
                                        dev.device(),
                                        registry,
                                        &act,
                                        &yd,
                                        diag,
                                    )
                                })?));
                            }
                            // the plain baseline on the same multiply, its activation pass
                            // included, and its diagnostic builds 1-5
                            let tq = time_sets(&both(&vector_runs(&qv, m, per, |q, n| {
                                let act = acts(n, packed)?;
                                let prep =
                                    ecq::gpu::coop_x_dispatch(dev.device(), registry, &xb, &act)?;
                                let gemv =
                                    q.gemv_coop_dispatch(dev.device(), registry, &act, &ycp)?;
                                Ok::<_, ecq::gpu::GpuError>(vec![prep, gemv])
                            })?));
                            for diag in 1..=5 {
                                td.push(time_sets(&vector_runs(&qv, m, per, |q, n| {
                                    let act = acts(n, packed)?;
                                    q.coop_diagnostic_dispatch(
                                        dev.device(),
                                        registry,
                                        &act,
                                        &yd,
                                        diag,
                                    )
                                })?));
                            }
                            coop_t.push((t, tp, td, tq));
                        }
                        if a.vectors_tables && !forced.is_empty() {
                            let mut ts = [0.0; 2];
                            for (ti, variant) in [
                                ecq::gpu::FusedVariant::Blocked,
                                ecq::gpu::FusedVariant::BlockedCompact,
                            ]
                            .into_iter()
                            .enumerate()
                            {
                                // (on lane order with --lane-order)
                                let launches = vector_runs(&forced, m, per, |c, n| {
                                    if a.lane_order {
                                        c.gemv_many_lane_order_dispatch_with(
                                            dev.device(),
                                            registry,
                                            &xl,
                                            &ym,
                                            n,
                                            variant,
                                        )
                                    } else {
                                        c.gemv_many_dispatch_with(
                                            dev.device(),
                                            registry,
                                            &xb,
                                            &ym,
                                            n,
                                            variant,
                                        )
                                    }
                                })?;
                                ts[ti] =
                                    time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                                        for d in &launches[i % copies] {
                                            d.record(pass)
                                        }
                                    })
                                    .t;
                            }
                            forced_t.push((ts[0], ts[1]));
                        }
                        // rows 0..per of ym and yp are the first launches': x's first per
                        // rows, as qgemm's first per rows of yq
                        let want = read(&dev, &yq, per * r);
                        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs())).max(1e-30);
                        // (yd: the last diagnostic build's outputs, a GEMV only for build 3)
                        let four_rows = matches!(a.many_diag.last(), Some(3 | 4));
                        let mut checked: Vec<(&str, &wgpu::Buffer)> =
                            vec![("fused", &ym), ("plain", &yp)];
                        if four_rows {
                            checked.push(("plain four-row", &yd));
                        }
                        if !lanes_t.is_empty() {
                            checked.push(("fused lane-order", &yl));
                            checked.push(("plain lane-order", &ylp));
                        }
                        if !coop_t.is_empty() {
                            checked.push(("fused cooperative", &yc));
                            checked.push(("plain cooperative", &ycp));
                        }
                        for (what, b) in checked {
                            let got = read(&dev, b, per * r);
                            let d = got
                                .iter()
                                .zip(&want)
                                .fold(0f32, |s, (a, b)| s.max((a - b).abs()))
                                / scale;
                            // (the cooperative GEMVs multiply f16 activations: ~2^-11)
                            let bound = if what.contains("cooperative") {
                                4e-3
                            } else {
                                1e-4
                            };
                            if d.is_nan() || d > bound {
                                eprintln!(
                                    "WARNING: the {per}-vector {what} GEMV and qgemm disagree \
                                     at {r}x{k} M={m}: {d:e}"
                                );
                            }
                            if what.contains("cooperative") {
                                coop_d.push(d);
                            } else {
                                multi_diff = Some(multi_diff.map_or(d, |m: f32| m.max(d)));
                            }
                        }
                    }
                }
                let t_qgemm = qgemm.t;
                let us = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{:.1}", t * 1e6));
                for (ti, (target, coded)) in a.targets.iter().zip(&coded_by_target).enumerate() {
                    let batched_coded: Vec<Vec<LinearDispatch>> = coded
                        .iter()
                        .map(|c| c.batch_dispatches(&xb, &yb, m))
                        .collect::<Result<_, _>>()?;
                    let gemm = time(&dev, &timer, a.rounds, a.target_ms, 0.25, &|pass, i| {
                        for d in &batched_coded[i % copies] {
                            d.record(pass)
                        }
                    });
                    let t_gemm = gemm.t;
                    // the two batched kernels must agree (same weights, same activations)
                    let (yc, yp) = (read(&dev, &yb, m * r), read(&dev, &yq, m * r));
                    let scale = yp.iter().fold(0f32, |s, v| s.max(v.abs())).max(1e-30);
                    let diff = yc
                        .iter()
                        .zip(&yp)
                        .fold(0f32, |s, (a, b)| s.max((a - b).abs()));
                    let rel_diff = diff / scale;
                    if rel_diff > 1e-4 {
                        eprintln!(
                            "WARNING: rans_gemm and qgemm disagree at {r}x{k} M={m}: {rel_diff:e}"
                        );
                    }
                    // the one-vector kernels and the portable kernel on the first row only
                    let (t_qv, t_fv, t_portable) = if ti == 0 {
                        (t_qv, t_fv, t_portable)
                    } else {
                        (None, None, None)
                    };
                    let ratio = |t: Option<f64>| {
                        t.map_or("-".to_string(), |t| format!("{:.2}x", t_gemm / t))
                    };
                    let target = target.map_or("default".to_string(), |t| t.to_string());
                    let (multi_col, multi_ratio, plain_ratio, multi_diff_col) = if ti == 0
                        && !multi.is_empty()
                    {
                        let best = multi.iter().map(|&(_, t, _)| t).fold(f64::MAX, f64::min);
                        let best_p = multi.iter().map(|&(_, _, t)| t).fold(f64::MAX, f64::min);
                        (
                            multi
                                .iter()
                                .enumerate()
                                .map(|(i, &(v, t, tp))| {
                                    let tables = forced_t.get(i).map_or(String::new(), |f| {
                                        format!(
                                            " (u32 table {:.1}, compact {:.1})",
                                            f.0 * 1e6,
                                            f.1 * 1e6
                                        )
                                    });
                                    let diags = diag_t.get(i).map_or(String::new(), |d| {
                                        d.iter()
                                            .map(|(k, t)| format!(" [build {k} {:.1}]", t * 1e6))
                                            .collect()
                                    });
                                    let lanes = lanes_t.get(i).map_or(String::new(), |l| {
                                        format!(
                                            " (lane order {:.1} / {:.1}, permutation {:.1})",
                                            l.0 * 1e6,
                                            l.1 * 1e6,
                                            l.2 * 1e6
                                        )
                                    });
                                    let coop = coop_t.get(i).map_or(String::new(), |c| {
                                        format!(
                                            " (cooperative {:.1} / plain {:.1}, activation \
                                             pass {:.1}, diff vs qgemm {}; builds {} \
                                             (fused 1-3, plain 1-5))",
                                            c.0 * 1e6,
                                            c.3 * 1e6,
                                            c.1 * 1e6,
                                            coop_d[2 * i..(2 * i + 2).min(coop_d.len())]
                                                .iter()
                                                .map(|d| format!("{d:.1e}"))
                                                .collect::<Vec<_>>()
                                                .join(" / "),
                                            c.2.iter()
                                                .map(|t| format!("{:.1}", t * 1e6))
                                                .collect::<Vec<_>>()
                                                .join(" / ")
                                        )
                                    });
                                    format!(
                                        "{v}: {:.1} / {:.1}{lanes}{coop}{tables}{diags}",
                                        t * 1e6,
                                        tp * 1e6
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("; "),
                            format!("{:.2}x", best / t_gemm),
                            format!("{:.2}x", best / best_p),
                            multi_diff.map_or("-".into(), |d| format!("{d:.1e}")),
                        )
                    } else {
                        ("-".into(), "-".into(), "-".into(), "-".into())
                    };
                    println!(
                        "| {adapter} | {r}x{k} | {coding} | {m} | {target} | {} | {} | {:.1} | {:.1} | {} | {:.1} / {:.1} | {:.2}x | {} | {:.0} | {:.1e} | {multi_col} | {multi_ratio} | {plain_ratio} | {multi_diff_col} |",
                        us(t_qv),
                        us(t_fv),
                        t_qgemm * 1e6,
                        t_gemm * 1e6,
                        us(t_portable),
                        qgemm.wall * 1e6,
                        gemm.wall * 1e6,
                        t_gemm / t_qgemm,
                        ratio(t_fv),
                        m as f64 / t_gemm,
                        rel_diff
                    );
                }
            }
        }
    }
    Ok(())
}
