//! Criterion benches of the lossless bf16 kernels (issue 7) on the adapter `GpuContext::new`
//! picks (the adapter name is part of every label): the plain bf16 GEMV baseline, the fused
//! rANS GEMV and the GEMV on the indexed form (`ecq::lossless::indexed`). `iter_custom` records
//! the iterations into one command buffer; times are GPU timestamps of that pass where the
//! device has `TIMESTAMP_QUERY`, else the wall clock after `finish()`
//! (`examples/common/timing.rs`).
//!
//! Shape: `ECQ_GPU_BENCH_SHAPE=ROWSxCOLS` (default 1024x4096); Gaussian sigma 0.02 weights
//! rounded to bf16; `ECQ_GPU_BENCH_SETS` distinct copies rotated per iteration (default 4) so
//! that larger sets can exceed the L2 cache. Throughput is in weights. For the full table use
//! `examples/bench_lossless.rs`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ecq::gpu::GpuContext;
use ecq::lossless::gpu::{LosslessDispatch, LosslessGpu};
use ecq::lossless::indexed::IndexedMatrix;
use ecq::lossless::{encode, f32_to_bf16, HalfType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[path = "../examples/common/timing.rs"]
mod timing;

#[path = "common/env.rs"]
mod env;
use env::{env_num, env_shape};

fn run(g: &LosslessGpu, timer: &timing::GpuTimer, ds: &[LosslessDispatch], iters: u64) -> Duration {
    let s = timer.time_pass(g.device(), g.queue(), |pass| {
        for i in 0..iters as usize {
            ds[i % ds.len()].record(pass);
        }
    });
    Duration::from_secs_f64(s.gpu.unwrap_or(s.wall))
}

fn bench(c: &mut Criterion) {
    let ctx = match GpuContext::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: no GPU adapter ({e})");
            return;
        }
    };
    let g = LosslessGpu::new(&ctx).expect("lossless kernels");
    let (r, k) = env_shape("ECQ_GPU_BENCH_SHAPE", (1024, 4096));
    let sets: usize = env_num("ECQ_GPU_BENCH_SETS").unwrap_or(4);
    let timer = timing::GpuTimer::new(g.device(), g.queue(), false);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let w: Vec<u16> = (0..r * k)
        .map(|_| {
            let u: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 1.732;
            f32_to_bf16(0.02 * u)
        })
        .collect();
    let x: Vec<f32> = (0..k).map(|_| rng.random::<f32>() - 0.5).collect();
    let none = wgpu::BufferUsages::empty();
    let xb = g.storage("x", bytemuck::cast_slice(&x), none).unwrap();
    let yb = g.storage("y", &vec![0u8; 4 * r], none).unwrap();
    let coded = encode(&w, r, k, HalfType::BF16, &Default::default()).unwrap();
    let indexed = IndexedMatrix::from_lossless(&coded).unwrap();

    let plain: Vec<_> = (0..sets)
        .map(|_| g.upload_plain(&w, r, k, HalfType::BF16).unwrap())
        .collect();
    let fused: Vec<_> = (0..sets).map(|_| g.upload(&coded).unwrap()).collect();
    let idx: Vec<_> = (0..sets)
        .map(|_| g.upload_indexed(&indexed).unwrap())
        .collect();
    let plain_d: Vec<_> = plain
        .iter()
        .map(|m| g.plain_dispatch(m, &xb, &yb).unwrap())
        .collect();
    let fused_d: Vec<_> = fused
        .iter()
        .map(|m| g.gemv_dispatch(m, &xb, &yb).unwrap())
        .collect();
    let idx_d: Vec<_> = idx
        .iter()
        .map(|m| g.indexed_gemv_dispatch(m, &xb, &yb).unwrap())
        .collect();

    let mut group = c.benchmark_group(format!(
        "lossless/{}/{r}x{k}_bf16_{}",
        ctx.adapter_name(),
        timer.short()
    ));
    group.throughput(Throughput::Elements((r * k) as u64));
    group.sample_size(10);
    group.bench_function("plain_bf16_gemv", |b| {
        b.iter_custom(|n| run(&g, &timer, &plain_d, n))
    });
    group.bench_function("indexed_gemv", |b| {
        b.iter_custom(|n| run(&g, &timer, &idx_d, n))
    });
    group.bench_function("fused_rans_gemv", |b| {
        b.iter_custom(|n| run(&g, &timer, &fused_d, n))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
