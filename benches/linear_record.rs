//! Criterion benches of the host's side of layers on GPU buffers (`ecq::linear::GpuLinear`,
//! BENCHMARKS.md issue 5, steps 93-94) on the adapter `LinearDevice::new` picks (the adapter
//! name is part of every label): what recording a layer's call into a compute pass costs the
//! host, nothing submitted. Per call (`record_forward_in`: the call's launches made, bind
//! groups and parameter buffers included, then recorded) against a call made into launches
//! once (`prepare_forward`) and recorded (`PreparedForward::record_in`), and the making alone.
//! The iterations record one call each into one compute pass (a forward's calls share one);
//! only the recording is timed.
//!
//! Layers: a fused window split in row pairs (what `ecq encode --window --row-pairs` writes) and
//! the plain MLX 4-bit layer of the same weights, `ECQ_LINEAR_BENCH_SHAPE=ROWSxCOLS` (default
//! 1024x4096), MLX g64 Gaussian weights; rows a call `ECQ_LINEAR_BENCH_ROWS` (default 1,16);
//! activations in `ECQ_LINEAR_BENCH_ORDER` (`columns`, the default, or `lanes`: where the fused
//! layer cannot read lane order, e.g. without 32-wide subgroups, its calls then permute first).

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use ecq::dtype::FloatDType;
use ecq::linear::{
    ActivationOrder, CodedLayerRef, EntropyCodedLinear, GpuLinear, LinearDevice, LinearOptions,
    QuantizedLinear,
};
use ecq::quant::{quantize_affine, AffineParams};
use ecq::rans::{EncodeOptions, SplitMatrix, SplitOrder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[path = "common/env.rs"]
mod env;
use env::env_shape;

fn bench(c: &mut Criterion) {
    let dev = match LinearDevice::new() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: no GPU adapter ({e})");
            return;
        }
    };
    let (r, k) = env_shape("ECQ_LINEAR_BENCH_SHAPE", (1024, 4096));
    let rows: Vec<usize> = std::env::var("ECQ_LINEAR_BENCH_ROWS")
        .unwrap_or_else(|_| "1,16".into())
        .split(',')
        .map(|v| v.trim().parse().expect("ECQ_LINEAR_BENCH_ROWS: numbers"))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(94);
    let w: Vec<f32> = (0..r * k)
        .map(|_| (rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5) * 0.02)
        .collect();
    let q = quantize_affine(&w, r, k, FloatDType::F32, AffineParams::new(4, 64).unwrap()).unwrap();
    let opts = EncodeOptions {
        group_size: 64,
        ..SplitMatrix::default_window_options()
    };
    let s = SplitMatrix::encode_window(&q.symbols(), r, k, &opts, SplitOrder::RowPairs).unwrap();
    let layer = CodedLayerRef::from_split(&s, 64, &q.scales, &q.biases, None);
    let fused =
        EntropyCodedLinear::upload(&dev, "fused", layer, &LinearOptions::default()).unwrap();
    let plain = QuantizedLinear::upload(&dev, "plain", &q, None).unwrap();
    let layers: [(&str, &dyn GpuLinear); 2] = [("fused", &fused), ("plain", &plain)];
    let order = match std::env::var("ECQ_LINEAR_BENCH_ORDER").as_deref() {
        Ok("lanes") => ActivationOrder::Lanes,
        Ok("columns") | Err(_) => ActivationOrder::Columns,
        Ok(other) => panic!("ECQ_LINEAR_BENCH_ORDER must be lanes or columns, not {other}"),
    };
    let mut g = c.benchmark_group(format!(
        "linear_record/{}/{r}x{k}_4bit_g64_{}",
        dev.gpu().adapter_name(),
        match order {
            ActivationOrder::Lanes => "lanes",
            ActivationOrder::Columns => "columns",
        }
    ));
    g.sample_size(20);
    for &m in &rows {
        let x = dev.activation_buffer(m * k);
        let y = dev.activation_buffer(m * r);
        for (name, layer) in layers {
            // (`n` calls recorded into one pass, as a forward's calls share one; only the
            // recording timed; the encoder dropped unsubmitted, then wgpu let free what the
            // calls made)
            let calls = |n: u64, call: &dyn Fn(&mut wgpu::ComputePass<'_>)| {
                let mut enc = dev.device().create_command_encoder(&Default::default());
                let mut pass = enc.begin_compute_pass(&Default::default());
                let t = Instant::now();
                for _ in 0..n {
                    call(&mut pass);
                }
                let spent = t.elapsed();
                drop(pass);
                drop(enc);
                dev.device().poll(wgpu::PollType::Poll).expect("poll");
                spent
            };
            g.bench_function(format!("{name}_m{m}_per_call"), |b| {
                b.iter_custom(|n| {
                    calls(n, &|pass| {
                        layer
                            .record_forward_in(pass, (&x).into(), order, m, (&y).into())
                            .unwrap()
                    })
                })
            });
            let prepared = layer
                .prepare_forward((&x).into(), order, m, (&y).into())
                .unwrap();
            g.bench_function(format!("{name}_m{m}_prepared"), |b| {
                b.iter_custom(|n| calls(n, &|pass| prepared.record_in(pass)))
            });
            g.bench_function(format!("{name}_m{m}_prepare_only"), |b| {
                b.iter_custom(|n| {
                    let t = Instant::now();
                    for _ in 0..n {
                        let p = layer.prepare_forward((&x).into(), order, m, (&y).into());
                        std::hint::black_box(p.unwrap());
                    }
                    let spent = t.elapsed();
                    dev.device().poll(wgpu::PollType::Poll).expect("poll");
                    spent
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
