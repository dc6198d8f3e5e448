//! First GPU performance check (issue 4): plain MLX 4-bit GEMV vs the fused rANS decode + GEMV,
//! decode-only throughput, and device-to-device copy bandwidth, all measured in one run on the
//! adapter `GpuContext::new` picks (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME` honoured).
//!
//! ```text
//! cargo run --release --example bench_gpu -- [--shapes 4096x4096,4096x14336,14336x4096]
//!     [--variants 16384:4,4096:8,2048:16] [--iters 50] [--rounds 7] [--set-mib 256] [--copy-mib 512]
//! ```
//!
//! Shapes are `ROWSxCOLS` (output x input features). Weights are Gaussian, quantized to MLX
//! 4-bit g64 by `ecq::quant::quantize_affine` and coded with `ecq::rans::encode`; each variant
//! `CHUNK_SYMBOLS:TILE_CHUNKS` sets the coded geometry. To measure memory and not cache, every
//! matrix is uploaded as several distinct copies (at least `--set-mib` MiB of weights in all)
//! and the timed dispatches rotate through them. Each round records `--iters` dispatches into
//! one command buffer between two `device.poll(wait)`; times are medians over `--rounds`.
//! Prints one markdown table.

use std::time::Instant;

use ecq::dtype::FloatDType;
use ecq::gpu::{CodedMatrixRef, DecodeOutput, Dispatch, FusedVariant, GpuContext, QuantParamsRef};
use ecq::quant::{quantize_affine, AffineParams};
use ecq::rans::{encode, EncodeOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Args {
    shapes: Vec<(usize, usize)>,
    variants: Vec<(usize, usize)>,
    iters: usize,
    rounds: usize,
    set_mib: f64,
    copy_mib: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        shapes: vec![(4096, 4096), (4096, 14336), (14336, 4096)],
        variants: vec![(16384, 4), (4096, 8), (2048, 16)],
        iters: 50,
        rounds: 7,
        set_mib: 256.0,
        copy_mib: 512,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        let pairs = |s: &str, sep: char| -> Vec<(usize, usize)> {
            s.split(',')
                .map(|p| {
                    let (x, y) = p.split_once(sep).expect("pair");
                    (x.parse().expect("number"), y.parse().expect("number"))
                })
                .collect()
        };
        match argv[i].as_str() {
            "--shapes" => a.shapes = pairs(&v, 'x'),
            "--variants" => a.variants = pairs(&v, ':'),
            "--iters" => a.iters = v.parse().expect("iters"),
            "--rounds" => a.rounds = v.parse().expect("rounds"),
            "--set-mib" => a.set_mib = v.parse().expect("set-mib"),
            "--copy-mib" => a.copy_mib = v.parse().expect("copy-mib"),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median seconds per dispatch: each round records `iters` dispatches (rotating through
/// `ds`) into one command buffer, submits and waits.
fn time_dispatches(ctx: &GpuContext, ds: &[Dispatch], iters: usize, rounds: usize) -> f64 {
    let run = |n: usize| {
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for i in 0..n {
                ds[i % ds.len()].record(&mut pass);
            }
        }
        let t = Instant::now();
        ctx.queue().submit([enc.finish()]);
        ctx.wait().expect("wait");
        t.elapsed().as_secs_f64()
    };
    run(ds.len().min(iters)); // warm up (pipelines, first touch)
    median((0..rounds).map(|_| run(iters) / iters as f64).collect())
}

fn copy_bandwidth(ctx: &GpuContext, mib: u64, rounds: usize) -> (f64, u64) {
    let limit = ctx.device().limits().max_buffer_size;
    let bytes = (mib << 20).min(limit / 4 * 4);
    let mk = |label| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let (a, b) = (mk("copy a"), mk("copy b"));
    let n = 10;
    let run = || {
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        for i in 0..n {
            if i % 2 == 0 {
                enc.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
            } else {
                enc.copy_buffer_to_buffer(&b, 0, &a, 0, bytes);
            }
        }
        let t = Instant::now();
        ctx.queue().submit([enc.finish()]);
        ctx.wait().expect("wait");
        t.elapsed().as_secs_f64() / n as f64
    };
    run();
    let t = median((0..rounds).map(|_| run()).collect());
    // bytes read + bytes written
    (2.0 * bytes as f64 / t, bytes)
}

/// The same copy through the shader cores (`wgsl/copy.wgsl`, vec4 loads and stores).
fn shader_copy_bandwidth(ctx: &GpuContext, mib: u64, rounds: usize) -> f64 {
    use wgpu::util::DeviceExt;
    let dev = ctx.device();
    let l = dev.limits();
    let bytes = (mib << 20)
        .min(l.max_storage_buffer_binding_size)
        .min(l.max_buffer_size)
        / 16
        * 16;
    let mk = |label| {
        dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (a, b) = (mk("copy src"), mk("copy dst"));
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("copy.wgsl"),
        source: wgpu::ShaderSource::Wgsl(include_str!("../wgsl/copy.wgsl").into()),
    });
    let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("copy"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let n_vec = (bytes / 16) as u32;
    let groups = n_vec.div_ceil(256 * 8).clamp(1, 65535);
    let params = [n_vec, groups * 256, 0, 0];
    let ub = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("copy params"),
        contents: bytemuck::cast_slice(&params),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let layout = pipeline.get_bind_group_layout(0);
    let bind = |s: &wgpu::Buffer, d: &wgpu::Buffer| {
        dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: ub.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: s.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: d.as_entire_binding(),
                },
            ],
        })
    };
    let (ab, ba) = (bind(&a, &b), bind(&b, &a));
    let n = 10;
    let run = || {
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            for i in 0..n {
                pass.set_bind_group(0, if i % 2 == 0 { &ab } else { &ba }, &[]);
                pass.dispatch_workgroups(groups, 1, 1);
            }
        }
        let t = Instant::now();
        ctx.queue().submit([enc.finish()]);
        ctx.wait().expect("wait");
        t.elapsed().as_secs_f64() / n as f64
    };
    run();
    let t = median((0..rounds).map(|_| run()).collect());
    2.0 * bytes as f64 / t
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn main() {
    let args = parse_args();
    let ctx = match GpuContext::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: no GPU adapter ({e})");
            return;
        }
    };
    let dev = ctx.device();
    let reg = ctx.registry();
    eprintln!("adapter: {}", ctx.describe());
    let (copy_bw, copy_bytes) = copy_bandwidth(&ctx, args.copy_mib, args.rounds);
    let shader_bw = shader_copy_bandwidth(&ctx, args.copy_mib, args.rounds);
    eprintln!(
        "copy {} MiB: copy_buffer_to_buffer {:.1} GB/s, copy.wgsl {:.1} GB/s (read + write)",
        copy_bytes >> 20,
        copy_bw / 1e9,
        shader_bw / 1e9
    );

    let mut rows_out = Vec::new();
    for &(r, k) in &args.shapes {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64((r * 31 + k) as u64);
        let w: Vec<f32> = (0..r * k).map(|_| gaussian(&mut rng) * 0.02).collect();
        let q = quantize_affine(&w, r, k, FloatDType::F32, AffineParams::new(4, 64).unwrap())
            .expect("quantize");
        drop(w);
        let syms = q.symbols();
        let x: Vec<f32> = (0..k).map(|_| gaussian(&mut rng)).collect();
        let packed_bytes = (r * k / 2) as f64;
        let sets = ((args.set_mib * 1048576.0) / packed_bytes).ceil().max(1.0) as usize;
        eprintln!(
            "{r}x{k}: quantized in {:.1}s, {sets} copies of every matrix",
            t0.elapsed().as_secs_f64()
        );

        let xb = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("x"),
            size: (k * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue().write_buffer(&xb, 0, bytemuck::cast_slice(&x));
        let mk_y = || {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("y"),
                size: (r * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let y_plain = mk_y();
        let y_fused = mk_y();

        let plain: Vec<_> = (0..sets)
            .map(|_| ctx.upload_quantized(&q).expect("upload"))
            .collect();
        let plain_d: Vec<Dispatch> = plain
            .iter()
            .map(|m| m.gemv_dispatch(dev, reg, &xb, &y_plain).expect("dispatch"))
            .collect();
        let t_plain = time_dispatches(&ctx, &plain_d, args.iters, args.rounds);
        drop(plain_d);
        drop(plain);

        for &(chunk_symbols, tile_chunks) in &args.variants {
            let t1 = Instant::now();
            let opts = EncodeOptions {
                chunk_symbols,
                tile_chunks,
                group_size: 64,
                ..Default::default()
            };
            let enc = encode(&syms, r, k, 4, &opts).expect("encode");
            let bpw = enc.total_bytes() as f64 * 8.0 / (r * k) as f64;
            eprintln!(
                "  variant {chunk_symbols}:{tile_chunks}: chunk_rows {}, {} chunks, {:.3} bits/weight, encoded in {:.1}s",
                enc.chunk_rows(),
                enc.n_chunks(),
                bpw,
                t1.elapsed().as_secs_f64()
            );
            let qp = QuantParamsRef {
                group_size: 64,
                scales: &q.scales,
                biases: &q.biases,
            };
            let coded: Vec<_> = (0..sets)
                .map(|_| {
                    ctx.upload_coded(CodedMatrixRef::from(&enc), Some(qp))
                        .expect("upload")
                })
                .collect();
            let mut variants = vec![FusedVariant::Workgroup];
            if reg.subgroups32() {
                variants.push(FusedVariant::Subgroup);
            }
            let m0 = ctx.upload_quantized(&q).expect("upload");
            let yp = ctx.gemv_quantized(&m0, &x).expect("plain gemv");
            drop(m0);
            let mut fused_times = Vec::new();
            for &v in &variants {
                let fused_d: Vec<Dispatch> = coded
                    .iter()
                    .map(|m| {
                        m.gemv_dispatch_with(dev, reg, &xb, &y_fused, v)
                            .expect("dispatch")
                    })
                    .collect();
                let t_fused = time_dispatches(&ctx, &fused_d, args.iters, args.rounds);
                drop(fused_d);
                // sanity: fused and plain agree on set 0, and the stream decodes cleanly
                let yf = coded[0]
                    .gemv_with(dev, ctx.queue(), reg, &x, v)
                    .expect("fused gemv");
                let scale = yp.iter().map(|v| v.abs() as f64).sum::<f64>() / r as f64;
                let maxdiff = yp
                    .iter()
                    .zip(&yf)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .fold(0.0, f64::max);
                if maxdiff > 1e-3 * scale.max(1e-30) {
                    eprintln!(
                        "  WARNING: fused {v:?} and plain differ by {maxdiff:e} (mean |y| {scale:e})"
                    );
                }
                fused_times.push((v, t_fused));
            }

            let dec_out = dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("decoded"),
                size: (r * k / 2) as u64,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let dec_d: Vec<Dispatch> = coded
                .iter()
                .map(|m| {
                    m.decode_dispatch(dev, reg, &dec_out, DecodeOutput::Packed)
                        .expect("dispatch")
                })
                .collect();
            let t_dec = time_dispatches(&ctx, &dec_d, args.iters, args.rounds);
            drop(dec_d);
            drop(coded);
            let n_syms = (r * k / enc.weights_per_symbol() as usize) as f64;
            for (v, t_fused) in fused_times {
                rows_out.push(format!(
                    "| {} | {r}x{k} | {chunk_symbols}:{tile_chunks} ({} rows/chunk) | {bpw:.3} | {:.1} | {:.1} ({v:?}) | {:.2}x | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} / {:.1} |",
                    ctx.adapter_name(),
                    enc.chunk_rows(),
                    t_plain * 1e6,
                    t_fused * 1e6,
                    t_fused / t_plain,
                    packed_bytes / t_plain / 1e9,
                    packed_bytes / t_fused / 1e9,
                    n_syms / t_dec / 1e9,
                    (r * k) as f64 / t_dec / 1e9,
                    copy_bw / 1e9,
                    shader_bw / 1e9,
                ));
            }
        }
    }
    println!(
        "| adapter | shape RxK | chunk_symbols:tile_chunks | coded bits/weight | plain 4-bit GEMV µs | fused GEMV µs (variant) | fused/plain | plain GB/s | fused GB/s | decode G symbols/s | decode G weights/s | copy GB/s (copy_buffer_to_buffer / copy.wgsl) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for l in rows_out {
        println!("{l}");
    }
    println!();
    println!(
        "GB/s columns = MLX 4-bit packed weight bytes (R*K/2) per second; copy GB/s = bytes read + written per second by copy_buffer_to_buffer and by the copy.wgsl kernel, {} MiB; medians of {} rounds x {} dispatches; {}.",
        copy_bytes >> 20,
        args.rounds,
        args.iters,
        ctx.describe()
    );
}
