//! Criterion benches of the GPU kernels on the adapter `GpuContext::new` picks (the adapter name
//! is part of every label). `iter_custom` records the iterations into one command buffer and
//! waits for the GPU inside the timed region.
//!
//! Shape: `ECQ_GPU_BENCH_SHAPE=ROWSxCOLS` (default 1024x4096), MLX g64 Gaussian weights of
//! `ECQ_GPU_BENCH_BITS` bits (2, 4 or 8; default 4: the coder packs 4, 2 and 1 weights per
//! symbol, so the bit width also sets the rANS steps per weight); `ECQ_GPU_BENCH_SETS` distinct
//! copies rotated per iteration (default 4); `ECQ_GPU_BENCH_CHUNK` symbols per chunk (default:
//! the coder's) so larger sets can exceed the L2 cache; `ECQ_GPU_BENCH_TILE` chunks per tile
//! (default: the coder's; 4 is `bench_gpu`'s `16384:4` geometry); `ECQ_GPU_BENCH_DIAG=N` adds
//! the blocked fused kernel's diagnostic build N (1 = decode only, 2 = dot products only:
//! `GpuCodedMatrix::blocked_diagnostic_dispatch`) as `fused_diagN`; `ECQ_GPU_BENCH_LOW_BITS=2`
//! (4-bit weights only) codes the high 2 bits of every weight and keeps the low 2 raw
//! (`ecq::rans::SplitMatrix`, four weights per rANS step; label `_split2`; default geometry:
//! `SplitMatrix::default_options`, what `ecq encode --split` writes: half the symbols per chunk,
//! shrunk for `SPLIT_MIN_CHUNKS` decoders; `ECQ_GPU_BENCH_MIN_CHUNKS` overrides that count, 0
//! = off), and with `ECQ_GPU_BENCH_ROW_PAIRS=1` too in row-pair order
//! (`ecq::rans::SplitOrder::RowPairs`; label `_split2p`); `ECQ_GPU_BENCH_LOW_BITS=3` codes a
//! window split instead (`SplitMatrix::encode_window`: one coded flag per weight, eight weights
//! per step, three raw bits; default geometry `SplitMatrix::default_window_options`, what
//! `ecq encode --window` writes; label `_window`, `_windowp` in row pairs), for which the
//! group also times the plain and the fused GEMV on activations quantized to 8 bits once
//! (`plain_qgemv_x8`, `fused_rans_gemv_x8`: `gemv_x8_dispatch`, approximate) where the
//! blocked fused kernel runs (32-wide subgroups), and one launch of `ECQ_GPU_BENCH_VECTORS`
//! activation vectors (default 8; 2..=16) of the fused GEMV and of its plain counterpart
//! (`fused_rans_gemv_many_vN`, `plain_qgemv4_many_vN`: `gemv_many_dispatch`, each chunk decoded
//! and each weight read once for all vectors; throughput in weight-vector products) where both
//! run (window splits, 32-wide subgroups), in row pairs also on activations in lane order
//! (`_many_lanes_vN`: `gemv_many_lane_order_dispatch`). With `ECQ_GPU_BENCH_COOP=1` the context
//! is `GpuContext::with_cooperative_matrix`, and where it got cooperative matrices the same
//! vectors also run on them (`fused_rans_gemv_coop_vN`, `plain_qgemv4_coop_vN`:
//! `gemv_coop_dispatch`, activations prepared once; `coop_x_pass_vN`, the preparing pass),
//! and the plain weights multiply `ECQ_GPU_BENCH_GEMM_ROWS` activation rows (default 512) on
//! the cooperative GEMM (`plain_qgemm_coop_mM`: `gemm_coop_dispatch`, throughput in
//! weight-row products; `plain_qgemm_coop_mM_splitS`, in column splits where
//! `gemm_coop_split` makes them or `ECQ_GPU_BENCH_SPLIT` asks; `coop_rows_pass_mM`, its
//! activation pass). With
//! `ECQ_GPU_BENCH_TILED=1` the plain weights multiply those rows on any device through the
//! tiled f32 GEMM (`plain_qgemm_tiled_mM`: `gemm_tiled_dispatch`, in the tile it picks or,
//! with `ECQ_GPU_BENCH_TILE=narrow|wide`, that one: `plain_qgemm_tiled_mM_Narrow`), in column
//! splits where `gemm_tiled_split_for` makes them (not on CPU devices) or `ECQ_GPU_BENCH_SPLIT` asks
//! (`plain_qgemm_tiled_mM_splitS`: the launch and its partial sums' addition) and, where
//! 32-wide subgroups run them, through launches of 16 rows of the multi-vector GEMV on
//! activations in lane order (`plain_qgemv4_many16_mM`: what the plain layers run in f32 for
//! fewer rows). Times are
//! GPU timestamps of the pass holding the iterations where the device has `TIMESTAMP_QUERY`,
//! else the wall clock after `finish()` (`examples/common/timing.rs`). For the full comparison
//! table use `examples/bench_gpu.rs`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ecq::dtype::FloatDType;
use ecq::gpu::{
    quantize_x8, CodedMatrixRef, DecodeOutput, Dispatch, GpuContext, QuantParamsRef, X8Order,
};
use ecq::quant::{quantize_affine, AffineParams};
use ecq::rans::{encode, EncodeOptions, SplitMatrix, SplitOrder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[path = "../examples/common/timing.rs"]
mod timing;

#[path = "common/env.rs"]
mod env;
use env::{env_num, env_shape};

fn run(ctx: &GpuContext, timer: &timing::GpuTimer, ds: &[Dispatch], iters: u64) -> Duration {
    let s = timer.time_pass(ctx.device(), ctx.queue(), |pass| {
        for i in 0..iters as usize {
            ds[i % ds.len()].record(pass);
        }
    });
    Duration::from_secs_f64(s.gpu.unwrap_or(s.wall))
}

fn bench(c: &mut Criterion) {
    let coop = env_num::<u32>("ECQ_GPU_BENCH_COOP").unwrap_or(0) != 0;
    let ctx = match if coop {
        GpuContext::with_cooperative_matrix()
    } else {
        GpuContext::new()
    } {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: no GPU adapter ({e})");
            return;
        }
    };
    let (r, k) = env_shape("ECQ_GPU_BENCH_SHAPE", (1024, 4096));
    let sets: usize = env_num("ECQ_GPU_BENCH_SETS").unwrap_or(4);
    let bits: u32 = env_num("ECQ_GPU_BENCH_BITS").unwrap_or(4);
    assert!(
        matches!(bits, 2 | 4 | 8),
        "ECQ_GPU_BENCH_BITS must be 2, 4 or 8"
    );
    let low_bits: u32 = env_num("ECQ_GPU_BENCH_LOW_BITS").unwrap_or(0);
    assert!(
        low_bits == 0 || (matches!(low_bits, 2 | 3) && bits == 4),
        "ECQ_GPU_BENCH_LOW_BITS must be 0, or 2 or 3 with 4-bit weights"
    );
    // the geometry `ecq encode` writes (whole, or `--split`: half the symbols per chunk, four
    // weights each, shrunk for SPLIT_MIN_CHUNKS decoders), unless the environment says otherwise
    let coder = match low_bits {
        0 => EncodeOptions::default(),
        3 => SplitMatrix::default_window_options(),
        _ => SplitMatrix::default_options(),
    };
    let timer = timing::GpuTimer::new(ctx.device(), ctx.queue(), false);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let w: Vec<f32> = (0..r * k)
        .map(|_| (rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5) * 0.02)
        .collect();
    let q = quantize_affine(
        &w,
        r,
        k,
        FloatDType::F32,
        AffineParams::new(bits, 64).unwrap(),
    )
    .unwrap();
    let x: Vec<f32> = (0..k).map(|_| rng.random::<f32>() - 0.5).collect();
    let opts = EncodeOptions {
        group_size: 64,
        chunk_symbols: env_num("ECQ_GPU_BENCH_CHUNK").unwrap_or(coder.chunk_symbols),
        tile_chunks: env_num("ECQ_GPU_BENCH_TILE").unwrap_or(coder.tile_chunks),
        min_chunks: env_num("ECQ_GPU_BENCH_MIN_CHUNKS").unwrap_or(coder.min_chunks),
        ..coder
    };
    let pairs = env_num::<u32>("ECQ_GPU_BENCH_ROW_PAIRS").unwrap_or(0) != 0;
    assert!(
        !pairs || low_bits != 0,
        "ECQ_GPU_BENCH_ROW_PAIRS needs ECQ_GPU_BENCH_LOW_BITS=2 or 3 (row pairs are an order of split matrices)"
    );
    let order = if pairs {
        SplitOrder::RowPairs
    } else {
        SplitOrder::Rows
    };
    let split = (low_bits != 0).then(|| {
        if low_bits == 3 {
            SplitMatrix::encode_window(&q.symbols(), r, k, &opts, order).unwrap()
        } else {
            SplitMatrix::encode_ordered(&q.symbols(), r, k, bits, low_bits, &opts, order).unwrap()
        }
    });
    let whole = split
        .is_none()
        .then(|| encode(&q.symbols(), r, k, bits, &opts).unwrap());
    // the coded symbols: the whole matrix's, or the split one's high bits
    let enc = whole
        .as_ref()
        .or(split.as_ref().map(SplitMatrix::high))
        .expect("one of the two");
    let (dev, reg) = (ctx.device(), ctx.registry());
    let mk = |size: u64| {
        dev.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let xb = mk(k as u64 * 4);
    ctx.queue().write_buffer(&xb, 0, bytemuck::cast_slice(&x));
    let yb = mk(r as u64 * 4);
    let out = mk((r * k * bits as usize / 8) as u64);
    let qp = QuantParamsRef::from(&q);
    let plain: Vec<_> = (0..sets)
        .map(|_| ctx.upload_quantized(&q).unwrap())
        .collect();
    let coded: Vec<_> = (0..sets)
        .map(|_| {
            match &split {
                None => ctx.upload_coded(CodedMatrixRef::from(enc), Some(qp)),
                Some(s) => ctx.upload_split(s, Some(qp)),
            }
            .unwrap()
        })
        .collect();
    let plain_d: Vec<_> = plain
        .iter()
        .map(|m| m.gemv_dispatch(dev, reg, &xb, &yb).unwrap())
        .collect();
    let fused_d: Vec<_> = coded
        .iter()
        .map(|m| m.gemv_dispatch(dev, reg, &xb, &yb).unwrap())
        .collect();
    // (no decode kernel runs some layouts here, e.g. a window split without 32-wide subgroups)
    let dec_d: Result<Vec<_>, _> = coded
        .iter()
        .map(|m| m.decode_dispatch(dev, reg, &out, DecodeOutput::Packed))
        .collect();
    // 8-bit activations, quantized once in each reader's byte order (window splits on the
    // blocked fused kernel)
    let x8 = coded[0].x8_supported(reg).then(|| {
        let quantized = |order| quantize_x8(dev, ctx.queue(), reg, &x, order).unwrap();
        let (xp, xw) = (quantized(X8Order::Plain), quantized(X8Order::Window));
        let plain_x8: Vec<_> = plain
            .iter()
            .map(|m| m.gemv_x8_dispatch(dev, reg, &xp, &yb, 0).unwrap())
            .collect();
        let fused_x8: Vec<_> = coded
            .iter()
            .map(|m| m.gemv_x8_dispatch(dev, reg, &xw, &yb).unwrap())
            .collect();
        (plain_x8, fused_x8)
    });

    // several vectors a launch (window splits on the blocked fused kernel, 32-wide subgroups)
    let vectors: u32 = env_num("ECQ_GPU_BENCH_VECTORS").unwrap_or(8);
    let many =
        (coded[0].gemv_many_supported(reg) && plain[0].gemv_many_supported(reg)).then(|| {
            let xm = mk(k as u64 * 4 * vectors as u64);
            let xs: Vec<f32> = (0..k * vectors as usize)
                .map(|_| rng.random::<f32>() - 0.5)
                .collect();
            ctx.queue().write_buffer(&xm, 0, bytemuck::cast_slice(&xs));
            let ym = mk(r as u64 * 4 * vectors as u64);
            let plain_m: Vec<_> = plain
                .iter()
                .map(|m| m.gemv_many_dispatch(dev, reg, &xm, &ym, vectors).unwrap())
                .collect();
            let fused_m: Vec<_> = coded
                .iter()
                .map(|m| m.gemv_many_dispatch(dev, reg, &xm, &ym, vectors).unwrap())
                .collect();
            // the same launches on activations in lane order (row pairs only)
            let lanes = coded[0].lane_order_supported(reg).then(|| {
                let xl = mk(k as u64 * 4 * vectors as u64);
                let lanes = ecq::gpu::x_lane_order(&xs, k).unwrap();
                ctx.queue()
                    .write_buffer(&xl, 0, bytemuck::cast_slice(&lanes));
                let plain_l: Vec<_> = plain
                    .iter()
                    .map(|m| {
                        m.gemv_many_lane_order_dispatch(dev, reg, &xl, &ym, vectors)
                            .unwrap()
                    })
                    .collect();
                let fused_l: Vec<_> = coded
                    .iter()
                    .map(|m| {
                        m.gemv_many_lane_order_dispatch(dev, reg, &xl, &ym, vectors)
                            .unwrap()
                    })
                    .collect();
                (plain_l, fused_l)
            });
            // the same vectors on cooperative matrices (activations prepared once)
            let coop_d =
                (coded[0].coop_supported(reg) && plain[0].coop_supported(reg)).then(|| {
                    use ecq::gpu::{coop_x_dispatch, CoopActivations, CoopOrder};
                    let acts = |order| CoopActivations::new(dev, k, vectors, order).unwrap();
                    let (aw, ap) = (acts(CoopOrder::Window), acts(CoopOrder::Packed));
                    let pass_w = coop_x_dispatch(dev, reg, &xm, &aw).unwrap();
                    let pass_p = coop_x_dispatch(dev, reg, &xm, &ap).unwrap();
                    let mut enc = dev.create_command_encoder(&Default::default());
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        pass_w.record(&mut pass);
                        pass_p.record(&mut pass);
                    }
                    ctx.queue().submit([enc.finish()]);
                    let plain_c: Vec<_> = plain
                        .iter()
                        .map(|m| m.gemv_coop_dispatch(dev, reg, &ap, &ym).unwrap())
                        .collect();
                    let fused_c: Vec<_> = coded
                        .iter()
                        .map(|m| m.gemv_coop_dispatch(dev, reg, &aw, &ym).unwrap())
                        .collect();
                    (plain_c, fused_c, vec![pass_w])
                });
            (plain_m, fused_m, lanes, coop_d)
        });

    // many rows on the cooperative GEMM (plain weights; activations prepared once)
    let gemm_rows: usize = env_num("ECQ_GPU_BENCH_GEMM_ROWS").unwrap_or(512);
    let gemm = (coop && plain[0].gemm_coop_supported(reg)).then(|| {
        let xg = mk(k as u64 * 4 * gemm_rows as u64);
        let xs: Vec<f32> = (0..k * gemm_rows)
            .map(|_| rng.random::<f32>() - 0.5)
            .collect();
        ctx.queue().write_buffer(&xg, 0, bytemuck::cast_slice(&xs));
        let rows = ecq::gpu::CoopRows::new(dev, k, gemm_rows).unwrap();
        let pass = ecq::gpu::coop_rows_dispatch(dev, reg, &xg, &rows).unwrap();
        let mut enc = dev.create_command_encoder(&Default::default());
        pass.record(&mut enc.begin_compute_pass(&Default::default()));
        ctx.queue().submit([enc.finish()]);
        let yg = mk(r as u64 * 4 * gemm_rows as u64);
        let gemm_d: Vec<_> = plain
            .iter()
            .map(|m| m.gemm_coop_dispatch(dev, reg, &rows, &yg).unwrap())
            .collect();
        // the same in column splits (ECQ_GPU_BENCH_SPLIT splits, else the rule's where it
        // splits): pairs of the GEMM launch and the partial sums' addition
        let tile_rows = plain[0].gemm_coop_tile_rows(gemm_rows);
        let split = match env_num::<usize>("ECQ_GPU_BENCH_SPLIT") {
            Some(n) => ecq::gpu::GemmSplit::coop(k, n),
            None => plain[0].gemm_coop_split(gemm_rows, tile_rows),
        };
        let split_d = split.map(|sp| {
            let part = mk(plain[0].gemm_split_bytes(gemm_rows, sp).max(4));
            let d: Vec<_> = plain
                .iter()
                .flat_map(|m| {
                    m.gemm_coop_split_dispatch(dev, reg, &rows, &yg, tile_rows, sp, &part)
                        .unwrap()
                })
                .collect();
            (sp, d)
        });
        (gemm_d, split_d, vec![pass])
    });

    // many rows in f32: the tiled GEMM, and launches of 16 rows of the multi-vector GEMV
    let tiled_on = env_num::<u32>("ECQ_GPU_BENCH_TILED").unwrap_or(0) != 0;
    let tile = match std::env::var("ECQ_GPU_BENCH_TILE").as_deref() {
        Ok("narrow") => Some(ecq::gpu::TiledGemmTile::Narrow),
        Ok("wide") => Some(ecq::gpu::TiledGemmTile::Wide),
        Ok(other) => panic!("ECQ_GPU_BENCH_TILE={other}: narrow or wide"),
        Err(_) => None,
    };
    let tiled = (tiled_on && plain[0].gemm_tiled_supported()).then(|| {
        let xs: Vec<f32> = (0..k * gemm_rows)
            .map(|_| rng.random::<f32>() - 0.5)
            .collect();
        let xg = mk(k as u64 * 4 * gemm_rows as u64);
        ctx.queue().write_buffer(&xg, 0, bytemuck::cast_slice(&xs));
        let xl = mk(k as u64 * 4 * gemm_rows as u64);
        let lanes = ecq::gpu::x_lane_order(&xs, k).unwrap();
        ctx.queue()
            .write_buffer(&xl, 0, bytemuck::cast_slice(&lanes));
        let yg = mk(r as u64 * 4 * gemm_rows as u64);
        let t = tile.unwrap_or(ecq::gpu::TiledGemmTile::for_device(reg, r, gemm_rows));
        let tiled_d: Vec<_> = plain
            .iter()
            .map(|m| {
                m.gemm_tiled_dispatch_with(dev, reg, &xg, &yg, gemm_rows, t)
                    .unwrap()
            })
            .collect();
        // the same in column splits (ECQ_GPU_BENCH_SPLIT splits, else the device's rule
        // where it splits): pairs of the GEMM launch and the partial sums' addition
        let split = match env_num::<usize>("ECQ_GPU_BENCH_SPLIT") {
            Some(n) => ecq::gpu::GemmSplit::tiled(k, n),
            None => plain[0].gemm_tiled_split_for(reg, gemm_rows, t),
        };
        let split_d: Vec<_> = split
            .map(|sp| {
                let part = mk(plain[0].gemm_split_bytes(gemm_rows, sp).max(4));
                plain
                    .iter()
                    .flat_map(|m| {
                        m.gemm_tiled_split_dispatch(dev, reg, &xg, &yg, gemm_rows, t, sp, &part)
                            .unwrap()
                    })
                    .collect()
            })
            .unwrap_or_default();
        // (launches of 16 rows, the last one of gemm_rows % 16 where 16 does not divide it)
        let many_d: Vec<_> = if plain[0].gemv_many_supported(reg) {
            let (xrow, yrow) = (k as u64 * 4, r as u64 * 4);
            plain
                .iter()
                .flat_map(|m| {
                    (0..gemm_rows).step_by(16).map(|first| {
                        let n = (gemm_rows - first).min(16) as u64;
                        let x = ecq::gpu::BufferRange::new(&xl, first as u64 * xrow, n * xrow);
                        let y = ecq::gpu::BufferRange::new(&yg, first as u64 * yrow, n * yrow);
                        m.gemv_many_lane_order_dispatch(dev, reg, x, y, n as u32)
                            .unwrap()
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        (tiled_d, split.map(|sp| (sp, split_d)), many_d)
    });

    // the label's chunk: the symbols a chunk holds as coded (after min_chunks)
    let chunk_symbols = enc.chunk_rows() * enc.cols() / enc.weights_per_symbol() as usize;
    let mut g = c.benchmark_group(format!(
        "gpu/{}/{r}x{k}_{bits}bit_g64_c{chunk_symbols}{}_{}",
        ctx.adapter_name(),
        match low_bits {
            0 => String::new(),
            3 => format!("_window{}", if pairs { "p" } else { "" }),
            _ => format!("_split{low_bits}{}", if pairs { "p" } else { "" }),
        },
        timer.short()
    ));
    g.throughput(Throughput::Bytes((r * k * bits as usize / 8) as u64));
    g.sample_size(10);
    g.bench_function("plain_qgemv", |b| {
        b.iter_custom(|n| run(&ctx, &timer, &plain_d, n))
    });
    g.bench_function("fused_rans_gemv", |b| {
        b.iter_custom(|n| run(&ctx, &timer, &fused_d, n))
    });
    if let Some((plain_x8, fused_x8)) = &x8 {
        g.bench_function("plain_qgemv_x8", |b| {
            b.iter_custom(|n| run(&ctx, &timer, plain_x8, n))
        });
        g.bench_function("fused_rans_gemv_x8", |b| {
            b.iter_custom(|n| run(&ctx, &timer, fused_x8, n))
        });
    }
    if let Some(diag) = env_num("ECQ_GPU_BENCH_DIAG") {
        let diag_d: Result<Vec<_>, _> = coded
            .iter()
            .map(|m| m.blocked_diagnostic_dispatch(dev, reg, &xb, &yb, diag))
            .collect();
        match diag_d {
            Ok(diag_d) => {
                g.bench_function(format!("fused_diag{diag}"), |b| {
                    b.iter_custom(|n| run(&ctx, &timer, &diag_d, n))
                });
            }
            Err(e) => eprintln!("fused_diag{diag} skipped: {e}"),
        }
    }
    if let Some((plain_m, fused_m, lanes, coop_d)) = &many {
        g.throughput(Throughput::Elements((r * k) as u64 * vectors as u64));
        g.bench_function(format!("plain_qgemv4_many_v{vectors}"), |b| {
            b.iter_custom(|n| run(&ctx, &timer, plain_m, n))
        });
        g.bench_function(format!("fused_rans_gemv_many_v{vectors}"), |b| {
            b.iter_custom(|n| run(&ctx, &timer, fused_m, n))
        });
        if let Some((plain_l, fused_l)) = lanes {
            g.bench_function(format!("plain_qgemv4_many_lanes_v{vectors}"), |b| {
                b.iter_custom(|n| run(&ctx, &timer, plain_l, n))
            });
            g.bench_function(format!("fused_rans_gemv_many_lanes_v{vectors}"), |b| {
                b.iter_custom(|n| run(&ctx, &timer, fused_l, n))
            });
        }
        if let Some((plain_c, fused_c, pass_w)) = coop_d {
            g.bench_function(format!("plain_qgemv4_coop_v{vectors}"), |b| {
                b.iter_custom(|n| run(&ctx, &timer, plain_c, n))
            });
            g.bench_function(format!("fused_rans_gemv_coop_v{vectors}"), |b| {
                b.iter_custom(|n| run(&ctx, &timer, fused_c, n))
            });
            g.throughput(Throughput::Elements(k as u64 * vectors as u64));
            g.bench_function(format!("coop_x_pass_v{vectors}"), |b| {
                b.iter_custom(|n| run(&ctx, &timer, pass_w, n))
            });
        } else if coop {
            eprintln!(
                "cooperative launches skipped: the adapter offers no 16x16x16 f16 cooperative \
                 matrices through wgpu, or the layout is not a window split in row pairs"
            );
        }
    } else if low_bits == 3 {
        eprintln!(
            "fused_rans_gemv_many skipped: several vectors a launch need the blocked fused \
             kernel (32-wide subgroups)"
        );
    }
    if let Some((gemm_d, split, pass)) = &gemm {
        g.throughput(Throughput::Elements((r * k * gemm_rows) as u64));
        g.bench_function(format!("plain_qgemm_coop_m{gemm_rows}"), |b| {
            b.iter_custom(|n| run(&ctx, &timer, gemm_d, n))
        });
        if let Some((sp, split_d)) = split {
            // (an iteration is a launch and its sum: two dispatches)
            g.bench_function(
                format!("plain_qgemm_coop_m{gemm_rows}_split{}", sp.splits()),
                |b| b.iter_custom(|n| run(&ctx, &timer, split_d, 2 * n)),
            );
        }
        g.throughput(Throughput::Elements((k * gemm_rows) as u64));
        g.bench_function(format!("coop_rows_pass_m{gemm_rows}"), |b| {
            b.iter_custom(|n| run(&ctx, &timer, pass, n))
        });
    }
    if let Some((tiled_d, split, many_d)) = &tiled {
        g.throughput(Throughput::Elements((r * k * gemm_rows) as u64));
        let name = match tile {
            Some(t) => format!("plain_qgemm_tiled_m{gemm_rows}_{t:?}"),
            None => format!("plain_qgemm_tiled_m{gemm_rows}"),
        };
        g.bench_function(&name, |b| b.iter_custom(|n| run(&ctx, &timer, tiled_d, n)));
        if let Some((sp, split_d)) = split {
            // (an iteration is a launch and its sum: two dispatches)
            g.bench_function(format!("{name}_split{}", sp.splits()), |b| {
                b.iter_custom(|n| run(&ctx, &timer, split_d, 2 * n))
            });
        }
        if many_d.is_empty() {
            eprintln!("plain_qgemv4_many16 skipped: it needs 32-wide subgroups");
        } else {
            // (an iteration is one launch of 16 rows: throughput in weight-row products
            // compares it with the GEMM's)
            g.throughput(Throughput::Elements((r * k * 16) as u64));
            g.bench_function(format!("plain_qgemv4_many16_m{gemm_rows}"), |b| {
                b.iter_custom(|n| run(&ctx, &timer, many_d, n))
            });
        }
    }
    g.throughput(Throughput::Elements((r * k) as u64));
    match dec_d {
        Ok(dec_d) => g.bench_function("rans_decode_packed", |b| {
            b.iter_custom(|n| run(&ctx, &timer, &dec_d, n))
        }),
        Err(e) => {
            eprintln!("rans_decode_packed skipped: {e}");
            &mut g
        }
    };
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
