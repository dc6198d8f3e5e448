//! Lossless bf16 performance table (issue 7): plain bf16 GEMV (`wgsl/bf16_plain_gemv.wgsl`) vs
//! the fused lossless decode + GEMV (`wgsl/bf16_gemv.wgsl`), and the decode-only rate
//! (`wgsl/bf16_decode.wgsl`), on the adapter `GpuContext::new` picks (`WGPU_BACKEND`,
//! `WGPU_ADAPTER_NAME` honoured).
//!
//! ```text
//! cargo run --release --example bench_lossless -- [--shapes 4096x4096,4096x14336,14336x4096]
//!     [--chunks 16384,4096] [--iters 30] [--rounds 5] [--set-mib 256] [--minilm PATH] [--wall]
//!     [--indexed-only] [--diagnose]
//! ```
//!
//! A second table times the indexed form (`ecq::lossless::indexed`: 4-bit exponent index + raw
//! byte + escapes, `wgsl/bf16_indexed_gemv.wgsl`) against the same plain baseline, timed again
//! after it; `--indexed-only` skips the rANS kernels; `--diagnose` also times the kernels'
//! diagnostic variants (loads only; arithmetic only on cache-resident weights) on stderr.
//!
//! Shapes are `ROWSxCOLS` (output x input features). Weights: Gaussian, sigma 0.02, rounded to
//! bf16 (round to nearest even). Each `--chunks` value is a `chunk_symbols` setting of the coder
//! (the unit of parallel decoding: smaller chunks = more parallelism, more side information).
//! Every matrix is uploaded as several distinct copies (at least `--set-mib` MiB per kind) and
//! the timed dispatches rotate through them, so weights come from memory, not from the L2.
//! Each round records `--iters` dispatches into one command buffer between two waits; times are
//! medians over `--rounds`, after a time-based warm-up. Prints one markdown table on stdout.
//!
//! Clock (`examples/common/timing.rs`): where the device has `TIMESTAMP_QUERY`, times are the
//! GPU duration of the compute pass holding the `--iters` dispatches divided by `--iters`
//! (barriers between dispatches included; the host's command translation, submit and wait
//! not); `--wall`, or an adapter without timestamps, reports the wall clock from submit to the
//! end of the wait, started after `finish()`. The table says which, and keeps a wall-clock
//! column for plain and best fused.

use std::time::Instant;

#[path = "common/timing.rs"]
mod timing;
use timing::{GpuTimer, Timing};

use ecq::gpu::GpuContext;
use ecq::lossless::gpu::{LosslessDispatch, LosslessGpu};
use ecq::lossless::indexed::IndexedMatrix;
use ecq::lossless::{encode, HalfType};
use ecq::rans::EncodeOptions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

struct Args {
    shapes: Vec<(usize, usize)>,
    chunks: Vec<usize>,
    iters: usize,
    rounds: usize,
    set_mib: f64,
    minilm: String,
    wall: bool,
    indexed_only: bool,
    diagnose: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        shapes: vec![(4096, 4096), (4096, 14336), (14336, 4096)],
        chunks: vec![16384, 4096],
        iters: 30,
        rounds: 5,
        set_mib: 256.0,
        minilm: ".cache/all-MiniLM-L6-v2/model.safetensors".into(),
        wall: false,
        indexed_only: false,
        diagnose: false,
    };
    let mut v: Vec<String> = std::env::args().skip(1).collect();
    if let Some(p) = v.iter().position(|s| s == "--diagnose") {
        a.diagnose = true;
        v.remove(p);
    }
    if let Some(p) = v.iter().position(|s| s == "--indexed-only") {
        a.indexed_only = true;
        v.remove(p);
    }
    if let Some(p) = v.iter().position(|s| s == "--wall") {
        a.wall = true;
        v.remove(p);
    }
    let mut i = 0;
    while i + 1 < v.len() {
        let val = &v[i + 1];
        match v[i].as_str() {
            "--shapes" => {
                a.shapes = val
                    .split(',')
                    .map(|s| {
                        let (r, k) = s.split_once('x').expect("ROWSxCOLS");
                        (r.parse().expect("rows"), k.parse().expect("cols"))
                    })
                    .collect()
            }
            "--chunks" => a.chunks = val.split(',').map(|s| s.parse().expect("chunk")).collect(),
            "--iters" => a.iters = val.parse().expect("iters"),
            "--rounds" => a.rounds = val.parse().expect("rounds"),
            "--set-mib" => a.set_mib = val.parse().expect("set-mib"),
            "--minilm" => a.minilm = val.clone(),
            o => panic!("unknown option {o}"),
        }
        i += 2;
    }
    a
}

/// Median seconds per dispatch (clock: see the module doc), after a warm-up of at least 0.5 s
/// (GPU clocks).
fn time(
    g: &LosslessGpu,
    timer: &GpuTimer,
    ds: &[LosslessDispatch],
    iters: usize,
    rounds: usize,
) -> Timing {
    time_groups(g, timer, ds, 1, iters, rounds)
}

/// [`time`] for operations of `per` consecutive dispatches each (`ds.len()` a multiple of
/// `per`): median seconds per operation.
fn time_groups(
    g: &LosslessGpu,
    timer: &GpuTimer,
    ds: &[LosslessDispatch],
    per: usize,
    iters: usize,
    rounds: usize,
) -> Timing {
    let run = |n: usize| {
        timer.time_pass(g.device(), g.queue(), |pass| {
            for i in 0..n * per {
                ds[i % ds.len()].record(pass);
            }
        })
    };
    let t0 = Instant::now();
    let mut n = 0;
    while n < 2 || t0.elapsed().as_secs_f64() < 0.5 {
        run(iters.max(ds.len() / per));
        n += 1;
    }
    let samples: Vec<_> = (0..rounds).map(|_| run(iters)).collect();
    timer.summarize(&samples, iters)
}

/// Distinct copies of `bytes` bytes needed to fill `set_mib` MiB (at least one).
fn copies(set_mib: f64, bytes: f64) -> usize {
    ((set_mib * 1048576.0) / bytes).ceil().max(1.0) as usize
}

/// Largest absolute difference between two outputs.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

fn bf16_gaussian(r: usize, k: usize, seed: u64) -> Vec<u16> {
    let mut w = vec![0u16; r * k];
    w.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
        for v in row {
            // Box-Muller
            let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            *v = ecq::lossless::f32_to_bf16(0.02 * z);
        }
    });
    w
}

fn sig(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn minilm_line(path: &str) -> String {
    let Ok(model) = ecq::model::Model::open(path) else {
        return format!("MiniLM: {path} not found (scripts/fetch-model.sh)");
    };
    let mut bytes = 0u64;
    let mut weights = 0u64;
    let mut ent = 0.0;
    let (mut ibytes, mut iesc) = (0u64, 0u64);
    for t in &model.tensors {
        if !ecq::lossless::container::is_codable(&t.name, &t.data) {
            continue;
        }
        let (m, _) = ecq::lossless::container::encode_tensor(&t.name, &t.data, &Default::default())
            .expect("encode");
        let n = (m.rows() * m.cols()) as u64;
        bytes += m.total_bytes() as u64;
        weights += n;
        ent += ecq::lossless::exponent_entropy(&m.decode().expect("decode")) * n as f64;
        let im = IndexedMatrix::from_lossless(&m).expect("indexed form");
        ibytes += im.total_bytes() as u64;
        iesc += im.escapes().len() as u64;
    }
    format!(
        "MiniLM (all-MiniLM-L6-v2, f32 -> bf16, {weights} weights in the coded matrices): exponent entropy {:.3} + 8 = {:.3} bits/weight; coded at the defaults {:.3} bits/weight (side information included), {:.3}x smaller than bf16",
        ent / weights as f64,
        8.0 + ent / weights as f64,
        8.0 * bytes as f64 / weights as f64,
        16.0 / (8.0 * bytes as f64 / weights as f64)
    ) + &format!(
        "; indexed form {:.3} bits/weight ({:.3}x smaller than bf16), {iesc} escapes ({:.2e} of the weights)",
        8.0 * ibytes as f64 / weights as f64,
        16.0 / (8.0 * ibytes as f64 / weights as f64),
        iesc as f64 / weights as f64
    )
}

fn main() {
    let args = parse_args();
    let ctx = GpuContext::new().expect("GPU adapter");
    let g = LosslessGpu::new(&ctx).expect("kernels");
    eprintln!("adapter: {}", ctx.describe());
    let timer = GpuTimer::new(ctx.device(), ctx.queue(), args.wall);
    eprintln!("clock: {}", timer.clock());
    let mut lines = Vec::new();
    let mut ilines = Vec::new();
    for &(r, k) in &args.shapes {
        let t0 = Instant::now();
        let w = bf16_gaussian(r, k, 7 + r as u64 * 31 + k as u64);
        let x: Vec<f32> = {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            (0..k).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
        };
        let xb = g
            .storage("x", bytemuck::cast_slice(&x), wgpu::BufferUsages::empty())
            .unwrap();
        let yb = g
            .storage("y", &vec![0u8; r * 4], wgpu::BufferUsages::COPY_SRC)
            .unwrap();
        let plain_bytes = 2.0 * (r * k) as f64;
        let sets = copies(args.set_mib, plain_bytes);
        let plain: Vec<_> = (0..sets)
            .map(|_| g.upload_plain(&w, r, k, HalfType::BF16).unwrap())
            .collect();
        let y_plain = g.gemv_plain(&plain[0], &x).unwrap();
        let pds: Vec<_> = plain
            .iter()
            .map(|m| g.plain_dispatch(m, &xb, &yb).unwrap())
            .collect();
        let plain_t = time(&g, &timer, &pds, args.iters, args.rounds);
        let t_plain = plain_t.t;
        eprintln!(
            "{r}x{k}: plain {:.1} us ({:.0} GB/s), setup {:.1}s",
            t_plain * 1e6,
            plain_bytes / t_plain / 1e9,
            t0.elapsed().as_secs_f64()
        );
        {
            // The indexed form, then the plain baseline again (drift check).
            let im = IndexedMatrix::from_bf16(&w, r, k).unwrap();
            let first = g.upload_indexed(&im).unwrap();
            let yi = g.gemv_indexed(&first, &x).unwrap();
            let d = max_diff(&yi, &y_plain);
            assert!(d < 1e-3, "indexed vs plain differ by {d}");
            if r * k <= 1 << 24 {
                assert_eq!(g.decode_indexed(&first).unwrap(), w, "GPU indexed decode");
            }
            let ib = first.bytes() as f64;
            let isets = copies(args.set_mib, ib);
            let mut mats = vec![first];
            for _ in 1..isets {
                mats.push(g.upload_indexed(&im).unwrap());
            }
            let ids: Vec<_> = mats
                .iter()
                .map(|m| g.indexed_gemv_dispatch(m, &xb, &yb).unwrap())
                .collect();
            let it = time(&g, &timer, &ids, args.iters, args.rounds);

            let plain_again = time(&g, &timer, &pds, args.iters, args.rounds);
            if args.diagnose {
                // Where the limit is: the access pattern alone, the arithmetic alone
                // (weights cache-resident), for the indexed and the plain kernel.
                let mut d = Vec::new();
                let variants: [(&str, &[(&str, f64)]); 8] = [
                    ("loads only", &[("DIAG", 1.0)]),
                    ("arithmetic only", &[("DIAG", 2.0)]),
                    ("loads only without x", &[("DIAG", 3.0)]),
                    ("ROWS=1", &[("ROWS", 1.0)]),
                    ("ROWS=2", &[("ROWS", 2.0)]),
                    ("SPLIT", &[("ROWS", 2.0), ("SPLIT", 1.0)]),
                    (
                        "SPLIT loads only",
                        &[("ROWS", 2.0), ("SPLIT", 1.0), ("DIAG", 1.0)],
                    ),
                    (
                        "SPLIT arithmetic only",
                        &[("ROWS", 2.0), ("SPLIT", 1.0), ("DIAG", 2.0)],
                    ),
                ];
                for (name, c) in variants {
                    let ds: Vec<_> = mats
                        .iter()
                        .map(|m| g.indexed_gemv_diagnostic_dispatch(m, &xb, &yb, c).unwrap())
                        .collect();
                    let t = time(&g, &timer, &ds, args.iters, args.rounds).t;
                    d.push(format!("indexed {name} {:.1} us", t * 1e6));
                }
                let variants: [(&str, &[(&str, f64)]); 5] = [
                    ("loads only", &[("DIAG", 1.0)]),
                    ("arithmetic only", &[("DIAG", 2.0)]),
                    ("ROWS=1", &[("ROWS", 1.0)]),
                    ("ROWS=2", &[("ROWS", 2.0)]),
                    ("SPLIT", &[("ROWS", 2.0), ("SPLIT", 1.0)]),
                ];
                for (name, c) in variants {
                    let ds: Vec<_> = plain
                        .iter()
                        .map(|m| g.plain_diagnostic_dispatch(m, &xb, &yb, c).unwrap())
                        .collect();
                    let t = time(&g, &timer, &ds, args.iters, args.rounds).t;
                    d.push(format!("plain {name} {:.1} us", t * 1e6));
                }
                eprintln!("  diagnose: {}", d.join(", "));
            }
            let out = g
                .storage(
                    "decoded",
                    &vec![0u8; r * k * 2],
                    wgpu::BufferUsages::empty(),
                )
                .unwrap();
            let dds: Vec<_> = mats
                .iter()
                .flat_map(|m| g.indexed_decode_dispatches(m, &out).unwrap())
                .collect();
            let t_dec = time_groups(&g, &timer, &dds, 2, args.iters, args.rounds).t;
            eprintln!(
                "  indexed: {:.3} bits/weight, {:.2e} escapes, GEMV {:.1} us, plain again {:.1} us, decode {:.1} us",
                im.bits_per_weight(),
                im.escape_rate(),
                it.t * 1e6,
                plain_again.t * 1e6,
                t_dec * 1e6
            );
            ilines.push(format!(
                "| {r}x{k} | {:.3} | {:.2e} | {} / {} ({}) | {} ({}) | {} / {} | {:.2}x | {} ({}) |",
                im.bits_per_weight(),
                im.escape_rate(),
                sig(t_plain * 1e6),
                sig(plain_again.t * 1e6),
                sig(plain_bytes / t_plain / 1e9),
                sig(it.t * 1e6),
                sig(ib / it.t / 1e9),
                sig(plain_t.wall * 1e6),
                sig(it.wall * 1e6),
                it.t / t_plain.min(plain_again.t),
                sig((r * k) as f64 / t_dec / 1e9),
                sig(plain_bytes / t_dec / 1e9),
            ));
        }
        drop(pds);
        drop(plain);
        if args.indexed_only {
            continue;
        }
        for &cs in &args.chunks {
            let opts = EncodeOptions {
                chunk_symbols: cs,
                ..EncodeOptions::default()
            };
            let m = encode(&w, r, k, HalfType::BF16, &opts).unwrap();
            let bpw = m.bits_per_weight();
            let first = g.upload(&m).unwrap();
            // Correctness: fused vs plain, and (small shapes) decode bit-exact.
            let y = g.gemv_with(&first, &x, false).unwrap();
            let maxdiff = max_diff(&y, &y_plain);
            assert!(maxdiff < 1e-3, "fused vs plain differ by {maxdiff}");
            if r * k <= 1 << 24 {
                assert_eq!(g.decode(&first).unwrap(), w, "GPU decode");
            }
            let coded = first.coded_bytes() as f64;
            let csets = copies(args.set_mib, coded);
            let mut mats = vec![first];
            for _ in 1..csets {
                mats.push(g.upload(&m).unwrap());
            }
            let variants: &[bool] = if g.uses_subgroups() {
                &[true, false]
            } else {
                &[false]
            };
            let mut t_fused = f64::INFINITY;
            let mut wall_fused = f64::INFINITY;
            let mut kernel = "workgroup";
            let mut notes = Vec::new();
            for &sub in variants {
                let ys = g.gemv_with(&mats[0], &x, sub);
                match ys {
                    Ok(ys) => {
                        let d = max_diff(&ys, &y_plain);
                        assert!(d < 1e-3, "fused (subgroup {sub}) vs plain differ by {d}");
                    }
                    Err(e) => panic!("fused (subgroup {sub}): {e}"),
                }
                let fds: Vec<_> = mats
                    .iter()
                    .map(|c| g.gemv_dispatch_with(c, &xb, &yb, sub).unwrap())
                    .collect();
                let Timing { t, wall } = time(&g, &timer, &fds, args.iters, args.rounds);
                let name = if sub { "subgroup" } else { "workgroup" };
                notes.push(format!("{name} {}", sig(t * 1e6)));
                if t < t_fused {
                    t_fused = t;
                    wall_fused = wall;
                    kernel = name;
                }
            }
            let out = g
                .storage(
                    "decoded",
                    &vec![0u8; r * k * 2],
                    wgpu::BufferUsages::empty(),
                )
                .unwrap();
            let dds: Vec<_> = mats
                .iter()
                .map(|c| g.decode_dispatch(c, &out).unwrap())
                .collect();
            let t_dec = time(&g, &timer, &dds, args.iters, args.rounds).t;
            for c in &mats {
                g.check_errors(c).expect("no kernel errors");
            }
            eprintln!(
                "  chunk_symbols {cs}: {bpw:.3} bits/weight, fused {:.1} us ({kernel}), decode {:.1} us",
                t_fused * 1e6,
                t_dec * 1e6
            );
            lines.push(format!(
                "| {r}x{k} | {cs} ({} rows/chunk) | {bpw:.3} | {} ({}) | {} ({}; {}) | {} / {} | {:.2}x | {} ({}) |",
                m.exponents().chunk_rows(),
                sig(t_plain * 1e6),
                sig(plain_bytes / t_plain / 1e9),
                sig(t_fused * 1e6),
                sig(coded / t_fused / 1e9),
                notes.join(" / "),
                sig(plain_t.wall * 1e6),
                sig(wall_fused * 1e6),
                t_fused / t_plain,
                sig((r * k) as f64 / t_dec / 1e9),
                sig(plain_bytes / t_dec / 1e9),
            ));
        }
    }
    let clock = timer.short();
    println!("Adapter: {}", ctx.describe());
    println!();
    println!(
        "Clock: {} (wall-clock column: submit to end of wait, after finish()).",
        timer.clock()
    );
    println!();
    println!("| shape (R x K) | chunk symbols | bits/weight | plain bf16 GEMV µs [{clock}] (GB/s) | fused lossless GEMV µs [{clock}], best (GB/s coded; per kernel µs) | wall-clock µs (plain / fused best) | fused / plain | decode-only G weights/s [{clock}] (GB/s bf16 out) |");
    println!("|---|---|---|---|---|---|---|---|");
    for l in &lines {
        println!("{l}");
    }
    println!();
    println!(
        "Indexed form (4-bit exponent index + raw byte + escapes, `wgsl/bf16_indexed_gemv.wgsl`):"
    );
    println!();
    println!("| shape (R x K) | bits/weight | escape rate | plain bf16 GEMV µs [{clock}], before / after (GB/s) | indexed GEMV µs [{clock}] (GB/s read) | wall-clock µs (plain / indexed) | indexed / faster plain | indexed decode-only G weights/s [{clock}] (GB/s bf16 out) |");
    println!("|---|---|---|---|---|---|---|---|");
    for l in &ilines {
        println!("{l}");
    }
    println!();
    println!(
        "Weights: Gaussian sigma 0.02 rounded to bf16; bits/weight = every stored part (exponent stream, lane states, offsets, tables, checksums, raw bytes) per weight; GB/s = bytes of the weights read per second (plain: 2 per weight; fused: the coded tensors); fused / plain > 1 means the fused kernel is slower; medians of {} rounds x {} dispatches, at least {} MiB of distinct copies per kind.",
        args.rounds, args.iters, args.set_mib
    );
    println!();
    println!("{}", minilm_line(&args.minilm));
}
