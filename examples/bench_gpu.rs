//! GPU performance table (issues 4 and 5): plain MLX 4-bit GEMV (the default `QGemvVariant::Auto` = `qgemv4_pipe.wgsl` r4, the issue-4
//! `qgemv.wgsl`, and the approximate 8-bit-activation `qgemv4_dp4a.wgsl` for comparison) vs the fused rANS decode + GEMV, decode-only throughput
//! and copy bandwidth, all measured in one run on the adapter `GpuContext::new` picks
//! (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME` honoured).
//!
//! ```text
//! cargo run --release --example bench_gpu -- [--shapes 4096x4096,4096x14336,14336x4096,128256x4096]
//!     [--sources g64,g128,absmax] [--variants 4096:8] [--iters 50] [--rounds 7] [--set-mib 256]
//!     [--copy-mib 512] [--ksplit-sweep] [--workgroup] [--fused subgroup,blocked] [--wall]
//!     [--plain-variants 2,4,x1,x2,x4] [--plain-only] [--diagnose] [--low-bits 0,2,2p]
//! ```
//!
//! Shapes are `ROWSxCOLS` (output x input features). Weights are Gaussian (sigma 0.02) with one
//! weight in 65536 set to +-16 sigma (a heavy-tail stand-in), quantized
//! by ecq to one of three symbol sources: `g64` / `g128` = MLX affine 4-bit with group 64 / 128
//! (`ecq::quant::quantize_affine`), `absmax` = per-tensor symmetric absmax 4-bit
//! (`ecq::quant::quantize_absmax`, symbols `q + 8`, run as an affine matrix with one scale and
//! bias `-8 * scale` per 64 weights so both kernels see the same layout). The symbols are coded
//! with `ecq::rans::encode` at each `CHUNK_SYMBOLS:TILE_CHUNKS` of `--variants`; with
//! `--low-bits 2` (or `0,2`) also split (`ecq::rans::SplitMatrix`: the high 2 bits of every
//! weight coded, four weights per symbol, the low 2 bits raw), shown as source `g64+raw2`;
//! `2p` the same in row-pair order (`ecq::rans::SplitOrder::RowPairs`), `g64+raw2+pairs`.
//! `--scales f16` (or `bf16`) makes the scales and biases values of that type, as MLX stores
//! them; every kernel then reads them as 16-bit pairs (`ecq::gpu::SideFormat`); the default
//! `f32` keeps f32 pairs.
//!
//! To measure memory and not cache, every matrix is uploaded as several distinct copies (at
//! least `--set-mib` MiB of packed weights in all) and the timed dispatches rotate through them;
//! the "L2" columns time one small copy reused (resident in the 50-60 MB L2 of an H100/H200
//! when it fits), i.e. the ALU-bound rate. Each round records `--iters` dispatches into one
//! compute pass of one command buffer between two `device.poll(wait)`; times are medians over
//! `--rounds`. Prints one markdown table on stdout; diagnostics (K-split sweep, per-variant
//! notes) go to stderr.
//!
//! Clock (`examples/common/timing.rs`): where the device has `TIMESTAMP_QUERY` the reported time
//! per dispatch is the GPU duration of the compute pass holding the `--iters` dependent
//! dispatches (timestamps at its beginning and end) divided by `--iters`: the barriers between
//! dispatches are in, the host's command translation, submit and wait are not. `--wall` (or an
//! adapter without timestamps) reports the wall clock from submit to the end of the wait
//! instead, started after `finish()`; the table keeps a wall-clock column for the plain kernel
//! either way. (lavapipe has timestamps.)
//!
//! `--plain-variants [x]ROWS[:KSPLIT],...` times the candidate plain 4-bit kernels against the
//! current default in the same process, on the same copies: `QGemvVariant::Nibble4` (auto K
//! split) and for each entry `QGemvVariant::Stream { rows: ROWS, ksplit: KSPLIT }`, or with the
//! `x` prefix `QGemvVariant::Staged { .. }` (activations staged in workgroup memory); KSPLIT 0
//! or omitted = automatic; `p[ROWS[:KSPLIT]]` = `QGemvVariant::Pipelined { rows, ksplit }`
//! (qgemv4 software-pipelined; ROWS 4, the default, or 8). E.g.
//! `--plain-variants p,p8,p4:2,x2,x4,4`. It
//! prints a second table with each kernel's time (weights streamed, and one copy reused, in
//! L2 when it fits), GB/s, share of the `copy.wgsl` bandwidth and largest difference from
//! qgemv4.
//! `--fused K,...` times each named fused kernel (`workgroup`, `subgroup`, `blocked`, `compact`
//! = blocked with the compact table; default:
//! the one `GpuCodedMatrix::gemv_dispatch` picks; `--workgroup` = `--fused workgroup`), one
//! table row each; the decode-only column then gives the rate of each named kernel's decode
//! counterpart that can decode the matrix, in that order.
//! `--tables-built` makes the blocked fused kernels, and the workgroup fused GEMV and decode,
//! build each tile's decode table from the frequencies in every workgroup, as before step 65,
//! instead of reading it from memory where the host built it once
//! (`GpuCodedMatrix::set_tables_in_memory`, on by default).
//! `--x8` also times, for window splits on each blocked kernel timed, the fused GEMV on activations
//! quantized to 8 bits once per vector (`GpuCodedMatrix::gemv_x8_dispatch`, approximate)
//! against the plain int8-dot kernel on the same pre-quantized activations
//! (`GpuQuantizedMatrix::gemv_x8_dispatch`), and the quantizing pre-pass
//! (`ecq::gpu::quantize_x8_dispatch`) on its own; the per-token table gets a row `x8` (plain
//! there = the int8-dot kernel on pre-quantized activations) and a row `x8 + pre-passes`
//! adding one quantizing pre-pass per distinct input vector of a layer to both kernels.
//! `--lane-order` likewise times, for window splits in row pairs on each blocked kernel timed,
//! the fused GEMV on activations in lane order (`GpuCodedMatrix::gemv_many_lane_order_dispatch`,
//! one vector; the same outputs, checked) against the plain 4-bit kernel on them
//! (`GpuQuantizedMatrix::gemv_lane_order_dispatch`), and the permutation into lane order
//! (`ecq::gpu::x_lane_order_dispatch`) on its own; the per-token table gets a row `lane
//! order` and a row `lane order + permutes` adding one permutation per distinct input vector
//! of a layer to both kernels.
//! `--variants file` codes each matrix as `ecq encode` writes it (`EncodeOptions::default()`
//! whole, `SplitMatrix::default_options()` split: chunks for `SPLIT_MIN_CHUNKS` decoders).
//! `--per-token llama3-8b` times the linear-layer shapes of that model (q, o 4096x4096; k, v
//! 1024x4096; gate, up 14336x4096; down 4096x14336; lm_head 128256x4096) and prints a second
//! table summing the medians over one layer and over one token (32 layers and the lm_head),
//! plain against fused, per symbol source, chunk variant and kernel (`llama3.2-1b`: that
//! model's 16 layers of q, o 2048x2048, k, v 512x2048, gate, up 8192x2048, down 2048x8192 and
//! its 128256x2048 lm_head; `tiny`: a smoke test).
//! `--plain-only` skips the fused, decode and coding work (and the main table). `--diagnose`
//! prints, on stderr, the default plain 4-bit kernel's diagnostic builds (loads only,
//! arithmetic on cache-resident weights, loads without the activations:
//! `GpuQuantizedMatrix::pipelined_diagnostic_dispatch`) next to its time, the floor of
//! reading its bytes at all (`wgsl/read.wgsl`: the packed weights alone, and with the scales,
//! biases and activations, once per dispatch, against issue 5's 80%-of-copy target), and for
//! the blocked fused kernel its decode alone and its dot products alone
//! (`GpuCodedMatrix::blocked_diagnostic_dispatch`), streamed and from one set.
//! `--diag-builds N,...` runs only those blocked fused builds (and none of the plain kernel's).
//! `--chunk-subgroups N:MAX` runs the fused GEMV of every matrix of at most MAX chunks that
//! can take it with N groups of 32 lanes a chunk (`GpuCodedMatrix::set_chunk_subgroups`).

use std::time::Instant;

#[path = "common/timing.rs"]
mod timing;
use timing::{GpuTimer, Timing};

use ecq::dtype::FloatDType;
use ecq::gpu::{
    CodedMatrixRef, DecodeOutput, Dispatch, FusedVariant, GpuContext, GpuError, QGemvVariant,
    QuantParamsRef,
};
use ecq::quant::{
    pack, quantize_absmax, quantize_affine, AbsmaxMode, AffineParams, QuantizedMatrix,
};
use ecq::rans::{encode, EncodeOptions, SplitMatrix, SplitOrder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

struct Args {
    shapes: Vec<(usize, usize)>,
    sources: Vec<String>,
    /// `CHUNK_SYMBOLS:TILE_CHUNKS`, or `None`: the chunks `ecq encode` writes (`file`)
    variants: Vec<Option<(usize, usize)>>,
    /// `--per-token`: the model whose per-token sum is printed
    per_token: Option<&'static ModelShapes>,
    iters: usize,
    rounds: usize,
    set_mib: f64,
    copy_mib: u64,
    ksplit_sweep: bool,
    fused: Vec<FusedVariant>,
    /// `--tables-built`: the blocked fused kernels (and the workgroup ones) build their decode
    /// tables in every workgroup instead of reading them from memory
    tables_built: bool,
    /// `--x8`: also the fused and plain GEMVs on 8-bit activations
    x8: bool,
    /// `--lane-order`: also the fused and plain GEMVs on activations in lane order
    lane_order: bool,
    wall: bool,
    plain_variants: Vec<QGemvVariant>,
    plain_only: bool,
    diagnose: bool,
    /// `--diag-builds N,...`: only these blocked fused diagnostic builds, without the plain
    /// kernel's (implies the fused part of `--diagnose`)
    diag_builds: Option<Vec<u32>>,
    /// `--chunk-subgroups N:MAX`: matrices of at most MAX chunks run the fused GEMV with N
    /// groups of 32 lanes a chunk (`GpuCodedMatrix::set_chunk_subgroups`)
    chunk_subgroups: Option<(u32, usize)>,
    /// (raw low bits, row-pair order)
    low_bits: Vec<(u32, bool)>,
    scales_dtype: FloatDType,
}

/// The linear layers of a decoder-only model, for `--per-token`.
struct ModelShapes {
    name: &'static str,
    layers: usize,
    /// (rows, cols, matrices of that shape per layer)
    per_layer: &'static [(usize, usize, usize)],
    /// The output projection (rows, cols), once per token.
    head: (usize, usize),
    /// (K, distinct activation vectors of that width per layer): the inputs a layer's
    /// matrices share (`--x8` quantizes each once)
    inputs_per_layer: &'static [(usize, usize)],
    what: &'static str,
}

impl ModelShapes {
    fn shapes(&self) -> Vec<(usize, usize)> {
        let mut v: Vec<_> = self.per_layer.iter().map(|&(r, k, _)| (r, k)).collect();
        v.push(self.head);
        v
    }
}

const MODELS: &[ModelShapes] = &[
    ModelShapes {
        name: "llama3-8b",
        layers: 32,
        per_layer: &[
            (4096, 4096, 2),
            (1024, 4096, 2),
            (14336, 4096, 2),
            (4096, 14336, 1),
        ],
        head: (128256, 4096),
        // the attention input (q, k, v), o's input, the MLP input (gate, up), down's input
        inputs_per_layer: &[(4096, 3), (14336, 1)],
        what: "Llama-3-8B: 32 layers of q, o 4096x4096, k, v 1024x4096 (8 KV heads), gate, up \
           14336x4096, down 4096x14336; lm_head 128256x4096",
    },
    ModelShapes {
        name: "llama3.2-1b",
        layers: 16,
        per_layer: &[
            (2048, 2048, 2),
            (512, 2048, 2),
            (8192, 2048, 2),
            (2048, 8192, 1),
        ],
        head: (128256, 2048),
        inputs_per_layer: &[(2048, 3), (8192, 1)],
        what: "Llama-3.2-1B: 16 layers of q, o 2048x2048, k, v 512x2048 (8 KV heads), gate, up \
           8192x2048, down 2048x8192; lm_head 128256x2048 (tied to the embeddings)",
    },
    ModelShapes {
        name: "tiny",
        layers: 2,
        per_layer: &[(64, 512, 2), (128, 512, 1)],
        head: (256, 512),
        inputs_per_layer: &[(512, 2)],
        what:
            "a smoke test for slow adapters: 2 layers of two 64x512 and one 128x512; head 256x512",
    },
];

/// One timed row of the main table, kept for the `--per-token` sums.
struct Timed {
    shape: (usize, usize),
    /// symbols, chunk variant and kernel: the rows summed together
    key: String,
    t_plain: f64,
    t_fused: f64,
}

const USAGE: &str = "usage: bench_gpu [--shapes RxK,...] [--sources g64,g128,absmax] \
[--variants CHUNK:TILE|file,...] [--per-token llama3-8b|llama3.2-1b] [--iters N] [--rounds N] [--set-mib MIB] [--copy-mib MIB] \
[--ksplit-sweep] [--workgroup] [--fused workgroup,subgroup,blocked,compact] [--tables-built] [--x8] [--lane-order] [--wall] \
[--plain-variants [x|p]ROWS[:KSPLIT],...] [--plain-only] [--diagnose] [--diag-builds N,...] \
[--chunk-subgroups N:MAX] \
[--low-bits 0,2,2p] [--scales f32|f16|bf16]";

/// A bad command line: the problem and the usage on stderr, exit status 2.
fn usage_error(msg: &str) -> ! {
    eprintln!("bench_gpu: {msg}\n{USAGE}");
    std::process::exit(2)
}

/// `v` parsed as a number, or a usage error naming `what`.
fn num<T: std::str::FromStr>(v: &str, what: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| usage_error(&format!("{what}: not a number: {v:?}")))
}

fn parse_args() -> Args {
    let mut a = Args {
        shapes: vec![(4096, 4096), (4096, 14336), (14336, 4096), (128256, 4096)],
        sources: vec!["g64".into(), "g128".into(), "absmax".into()],
        variants: vec![Some((4096, 8))],
        per_token: None,
        iters: 50,
        rounds: 7,
        set_mib: 256.0,
        copy_mib: 512,
        ksplit_sweep: false,
        fused: Vec::new(),
        tables_built: false,
        x8: false,
        lane_order: false,
        wall: false,
        plain_variants: Vec::new(),
        plain_only: false,
        low_bits: vec![(0, false)],
        diagnose: false,
        diag_builds: None,
        chunk_subgroups: None,
        scales_dtype: FloatDType::F32,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        let pairs = |s: &str, sep: char| -> Vec<(usize, usize)> {
            s.split(',')
                .map(|p| {
                    let (x, y) = p
                        .split_once(sep)
                        .unwrap_or_else(|| usage_error(&format!("expected A{sep}B, got {p:?}")));
                    (num(x, "pair"), num(y, "pair"))
                })
                .collect()
        };
        match argv[i].as_str() {
            "--shapes" => a.shapes = pairs(&v, 'x'),
            "--sources" => a.sources = v.split(',').map(String::from).collect(),
            "--variants" => {
                a.variants = v
                    .split(',')
                    .map(|p| (p != "file").then(|| pairs(p, ':')[0]))
                    .collect()
            }
            "--per-token" => {
                let m = MODELS
                    .iter()
                    .find(|m| m.name == v)
                    .unwrap_or_else(|| usage_error(&format!("--per-token: unknown model {v:?}")));
                a.shapes = m.shapes();
                a.per_token = Some(m);
            }
            "--scales" => {
                a.scales_dtype = match v.as_str() {
                    "f32" => FloatDType::F32,
                    "f16" => FloatDType::F16,
                    "bf16" => FloatDType::BF16,
                    other => usage_error(&format!("--scales: {other:?} (f32, f16 or bf16)")),
                }
            }
            "--low-bits" => {
                a.low_bits = v
                    .split(',')
                    .map(|b| match b {
                        "0" => (0, false),
                        "2" => (2, false),
                        "2p" => (2, true),
                        "3w" => (3, false),
                        "3wp" => (3, true),
                        _ => usage_error(&format!(
                            "--low-bits: {b} (0 = whole symbols, 2 = split 2 + 2, 2p = split in \
                             row-pair order, 3w = window split (1 coded bit, 3 raw), 3wp = window \
                             split in row-pair order)"
                        )),
                    })
                    .collect();
            }
            "--iters" => a.iters = num(&v, "--iters"),
            "--rounds" => a.rounds = num(&v, "--rounds"),
            "--set-mib" => a.set_mib = num(&v, "--set-mib"),
            "--copy-mib" => a.copy_mib = num(&v, "--copy-mib"),
            "--ksplit-sweep" => {
                a.ksplit_sweep = true;
                i += 1;
                continue;
            }
            "--workgroup" => {
                a.fused = vec![FusedVariant::Workgroup];
                i += 1;
                continue;
            }
            "--fused" => {
                a.fused = v
                    .split(',')
                    .map(|f| match f {
                        "workgroup" => FusedVariant::Workgroup,
                        "subgroup" => FusedVariant::Subgroup,
                        "blocked" => FusedVariant::Blocked,
                        "compact" => FusedVariant::BlockedCompact,
                        other => usage_error(&format!(
                        "--fused: unknown kernel {other} (workgroup, subgroup, blocked, compact)"
                    )),
                    })
                    .collect()
            }
            "--tables-built" => {
                a.tables_built = true;
                i += 1;
                continue;
            }
            "--x8" => {
                a.x8 = true;
                i += 1;
                continue;
            }
            "--lane-order" => {
                a.lane_order = true;
                i += 1;
                continue;
            }
            "--wall" => {
                a.wall = true;
                i += 1;
                continue;
            }
            "--plain-only" => {
                a.plain_only = true;
                i += 1;
                continue;
            }
            "--diagnose" => {
                a.diagnose = true;
                i += 1;
                continue;
            }
            "--chunk-subgroups" => {
                let (n, most) = pairs(&v, ':')[0];
                a.chunk_subgroups = Some((n as u32, most));
            }
            "--diag-builds" => {
                a.diag_builds = Some(
                    v.split(',')
                        .map(|b| num(b.trim(), "--diag-builds"))
                        .collect(),
                );
            }
            "--plain-variants" => {
                a.plain_variants = v
                    .split(',')
                    .map(|p| {
                        let p = p.trim();
                        if let Some(rest) = p.strip_prefix('p') {
                            let (rows, ks) = rest.split_once(':').unwrap_or((rest, "0"));
                            return QGemvVariant::Pipelined {
                                rows: rows.parse().unwrap_or(4),
                                ksplit: num(ks, "plain variant p[ROWS[:KSPLIT]]"),
                            };
                        }
                        let (staged, p) = match p.strip_prefix('x') {
                            Some(rest) => (true, rest),
                            None => (false, p),
                        };
                        let (rows, ks) = p.split_once(':').unwrap_or((p, "0"));
                        let rows = num(rows, "plain variant [x]ROWS[:KSPLIT]");
                        let ksplit = num(ks, "plain variant [x]ROWS[:KSPLIT]");
                        if staged {
                            QGemvVariant::Staged { rows, ksplit }
                        } else {
                            QGemvVariant::Stream { rows, ksplit }
                        }
                    })
                    .collect()
            }
            "--bench" => {
                i += 1;
                continue;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => usage_error(&format!("unknown argument {other}")),
        }
        i += 2;
    }
    if let Some(bad) = a
        .sources
        .iter()
        .find(|s| !["g64", "g128", "absmax"].contains(&s.as_str()))
    {
        usage_error(&format!(
            "--sources: unknown source {bad} (g64, g128, absmax)"
        ));
    }
    a
}

/// When the last timed GPU work ended (see [`warm_up`]).
static LAST_GPU: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// Runs `f` until enough time has passed (at least twice): pipelines, first touch of new
/// buffers, and above all the GPU's clocks, which drop while the host prepares the next matrix.
/// Without it the first kernel timed after a long host-side preparation ran up to 4x slow (the
/// issue-4 measurements of the larger shapes); 0.25 s was not always enough after 2.5 s of host
/// work, so after more than 0.5 s without GPU work the warm-up lasts 1.5 s.
fn warm_up(mut f: impl FnMut() -> f64) {
    let idle = LAST_GPU
        .lock()
        .unwrap()
        .is_none_or(|t| t.elapsed().as_secs_f64() > 0.5);
    let secs = if idle { 1.5 } else { 0.25 };
    let t = Instant::now();
    let mut n = 0;
    while n < 2 || t.elapsed().as_secs_f64() < secs {
        f();
        n += 1;
    }
}

/// Marks the end of timed GPU work.
fn gpu_done() {
    *LAST_GPU.lock().unwrap() = Some(Instant::now());
}

/// Median seconds per dispatch: each round records `iters` dispatches (rotating through
/// `ds`) into one compute pass, submits and waits (clock: see the module doc).
fn time_dispatches(
    ctx: &GpuContext,
    timer: &GpuTimer,
    ds: &[Dispatch],
    iters: usize,
    rounds: usize,
) -> Timing {
    let run = |n: usize| {
        timer.time_pass(ctx.device(), ctx.queue(), |pass| {
            for i in 0..n {
                ds[i % ds.len()].record(pass);
            }
        })
    };
    warm_up(|| run(iters.max(ds.len())).wall);
    let samples: Vec<_> = (0..rounds).map(|_| run(iters)).collect();
    gpu_done();
    timer.summarize(&samples, iters)
}

fn copy_bandwidth(ctx: &GpuContext, timer: &GpuTimer, mib: u64, rounds: usize) -> (f64, u64) {
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
        timer.time_encoder(ctx.device(), ctx.queue(), |enc| {
            for i in 0..n {
                if i % 2 == 0 {
                    enc.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
                } else {
                    enc.copy_buffer_to_buffer(&b, 0, &a, 0, bytes);
                }
            }
        })
    };
    warm_up(|| run().wall);
    let samples: Vec<_> = (0..rounds).map(|_| run()).collect();
    gpu_done();
    let t = timer.summarize(&samples, n).t;
    // bytes read + bytes written
    (2.0 * bytes as f64 / t, bytes)
}

/// A streaming kernel of this bench (`wgsl/copy.wgsl`, `wgsl/read.wgsl`: 256 invocations per
/// workgroup in a grid-stride loop over `n_vec` vec4s, about eight each): its pipeline, its
/// parameters (`n_vec`, the invocations of the grid, `extra`, 0) and its workgroup count.
fn streaming_kernel(
    dev: &wgpu::Device,
    name: &str,
    source: &str,
    n_vec: u32,
    extra: u32,
) -> (wgpu::ComputePipeline, wgpu::Buffer, u32) {
    use wgpu::util::DeviceExt;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let groups = n_vec.div_ceil(256 * 8).clamp(1, 65535);
    let params = [n_vec, groups * 256, extra, 0];
    let ub = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(name),
        contents: bytemuck::cast_slice(&params),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    (pipeline, ub, groups)
}

/// A bind group of a streaming kernel: its parameters, source and destination.
fn streaming_bind(
    dev: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    params: &wgpu::Buffer,
    src: wgpu::BindingResource<'_>,
    dst: wgpu::BindingResource<'_>,
) -> wgpu::BindGroup {
    dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: src,
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: dst,
            },
        ],
    })
}

/// The same copy through the shader cores (`wgsl/copy.wgsl`, vec4 loads and stores).
fn shader_copy_bandwidth(ctx: &GpuContext, timer: &GpuTimer, mib: u64, rounds: usize) -> f64 {
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
    let (pipeline, ub, groups) = streaming_kernel(
        dev,
        "copy.wgsl",
        include_str!("../wgsl/copy.wgsl"),
        (bytes / 16) as u32,
        0,
    );
    let bind = |s: &wgpu::Buffer, d: &wgpu::Buffer| {
        streaming_bind(
            dev,
            &pipeline,
            &ub,
            s.as_entire_binding(),
            d.as_entire_binding(),
        )
    };
    let binds = [bind(&a, &b), bind(&b, &a)];
    2.0 * bytes as f64 / time_streaming(ctx, timer, &pipeline, &binds, groups, 10, rounds).t
}

/// Median seconds per dispatch of a streaming kernel: each round records `iters` dispatches
/// of `groups` workgroups, rotating through `binds`, into one compute pass (as
/// `time_dispatches` does for the library's kernels).
fn time_streaming(
    ctx: &GpuContext,
    timer: &GpuTimer,
    pipeline: &wgpu::ComputePipeline,
    binds: &[wgpu::BindGroup],
    groups: u32,
    iters: usize,
    rounds: usize,
) -> Timing {
    let run = |n: usize| {
        timer.time_pass(ctx.device(), ctx.queue(), |pass| {
            pass.set_pipeline(pipeline);
            for i in 0..n {
                pass.set_bind_group(0, &binds[i % binds.len()], &[]);
                pass.dispatch_workgroups(groups, 1, 1);
            }
        })
    };
    warm_up(|| run(iters.max(binds.len())).wall);
    let samples: Vec<_> = (0..rounds).map(|_| run(iters)).collect();
    gpu_done();
    timer.summarize(&samples, iters)
}

/// Seconds per dispatch of `wgsl/read.wgsl` reading `bytes` once, timed like every kernel here
/// (`iters` dependent dispatches per pass, medians of `rounds`), rotating through windows of
/// one buffer holding at least `set_bytes` so that the reads come from memory, not L2: the
/// floor under a kernel that reads those bytes in one dispatch.
fn read_floor(
    ctx: &GpuContext,
    timer: &GpuTimer,
    bytes: u64,
    set_bytes: u64,
    iters: usize,
    rounds: usize,
) -> Option<Timing> {
    let dev = ctx.device();
    let l = dev.limits();
    let size = bytes.div_ceil(16) * 16;
    if size > l.max_storage_buffer_binding_size {
        return None;
    }
    let align = u64::from(l.min_storage_buffer_offset_alignment);
    let window = size.div_ceil(align) * align;
    let windows = set_bytes
        .div_ceil(size)
        .clamp(1, (l.max_buffer_size / window).max(1));
    let buf = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read src"),
        size: windows * window,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let sink = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read sink"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    // magic: a value the zeroed buffer never XORs to
    let (pipeline, ub, groups) = streaming_kernel(
        dev,
        "read.wgsl",
        include_str!("../wgsl/read.wgsl"),
        (size / 16) as u32,
        0x9E37_79B9,
    );
    let binds: Vec<_> = (0..windows)
        .map(|i| {
            let src = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &buf,
                offset: i * window,
                size: std::num::NonZeroU64::new(size),
            });
            streaming_bind(dev, &pipeline, &ub, src, sink.as_entire_binding())
        })
        .collect();
    Some(time_streaming(
        ctx, timer, &pipeline, &binds, groups, iters, rounds,
    ))
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Gaussian weights (sigma 0.02), generated in parallel blocks of rows (deterministic).
fn weights(r: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut w = vec![0.0f32; r * k];
    w.par_chunks_mut(k * 64).enumerate().for_each(|(i, c)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((i as u64) << 20));
        for v in c.iter_mut() {
            *v = gaussian(&mut rng) * 0.02;
        }
        // heavy-tail stand-in: one weight in 65536 at +-16 sigma, so that per-tensor absmax
        // 4-bit gives ~1.1 bits/weight as on real weights (1.07 on MiniLM); one MLX group in
        // 1024 holds one
        for j in (rng.random_range(0..65536usize)..c.len()).step_by(65536) {
            c[j] = if rng.random::<bool>() { 0.32 } else { -0.32 };
        }
    });
    w
}

/// The matrix of one symbol source, as an MLX-layout 4-bit matrix whose scales and biases are
/// values of `dtype` (MLX stores them as f16 or bf16; the GPU then holds them in 16 bits).
fn quantize_source(
    w: &[f32],
    r: usize,
    k: usize,
    source: &str,
    dtype: FloatDType,
) -> QuantizedMatrix {
    match source {
        "g64" | "g128" => {
            let gs = if source == "g64" { 64 } else { 128 };
            quantize_affine(w, r, k, dtype, AffineParams::new(4, gs).unwrap()).expect("quantize")
        }
        "absmax" => {
            let a = quantize_absmax(w, r, k, 4, AbsmaxMode::PerTensor).expect("absmax");
            // (a power of two times an f16/bf16 value keeps -8 s exact too)
            let s = dtype.round(a.scales[0]);
            let groups = r * k / 64;
            QuantizedMatrix {
                rows: r,
                cols: k,
                bits: 4,
                group_size: 64,
                dtype,
                packed: pack(&a.symbols, 4),
                scales: vec![s; groups],
                biases: vec![-8.0 * s; groups],
            }
        }
        other => panic!("unknown source {other} (g64, g128, absmax)"),
    }
}

/// Three significant digits at most (GB/s spans lavapipe's 0.05 to an H200's 3000).
/// The benchmark's sanity check of a kernel's output `got` against the plain one `want`: a
/// warning on stderr where they differ by more than 1e-3 of the mean |y|.
fn warn_if_apart(what: &str, want: &[f32], got: &[f32]) {
    let scale = want.iter().map(|v| v.abs() as f64).sum::<f64>() / want.len().max(1) as f64;
    let maxdiff = want
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    if maxdiff > 1e-3 * scale.max(1e-30) {
        eprintln!("  WARNING: {what} differ by {maxdiff:e} (mean |y| {scale:e})");
    }
}

/// The first `n` f32 of `b` (a buffer with `COPY_SRC`), after the work submitted so far.
fn read_f32(ctx: &GpuContext, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("read"),
        size: (n * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(b, 0, &staging, 0, (n * 4) as u64);
    ctx.queue().submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |_| {});
    ctx.wait().expect("wait");
    let v = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).expect("map"));
    staging.unmap();
    v
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn sig(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
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
    let timer = GpuTimer::new(dev, ctx.queue(), args.wall);
    eprintln!("clock: {}", timer.clock());
    let (copy_bw, copy_bytes) = copy_bandwidth(&ctx, &timer, args.copy_mib, args.rounds);
    let shader_bw = shader_copy_bandwidth(&ctx, &timer, args.copy_mib, args.rounds);
    eprintln!(
        "copy {} MiB: copy_buffer_to_buffer {:.1} GB/s, copy.wgsl {:.1} GB/s (read + write)",
        copy_bytes >> 20,
        copy_bw / 1e9,
        shader_bw / 1e9
    );
    let max_binding = dev.limits().max_storage_buffer_binding_size;
    // per-dispatch floor: the plain kernel on a 32x4096 matrix (64 KiB), dispatches dependent
    // through y as in every timing below
    let floor = {
        let (r, k) = (32, 4096);
        let q = quantize_source(&weights(r, k, 1), r, k, "g64", args.scales_dtype);
        let ms: Vec<_> = (0..16)
            .map(|_| ctx.upload_quantized(&q).expect("upload"))
            .collect();
        let xb = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("x"),
            size: (k * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let yb = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("y"),
            size: (r * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let ds: Vec<Dispatch> = ms
            .iter()
            .map(|m| m.gemv_dispatch(dev, reg, &xb, &yb).expect("dispatch"))
            .collect();
        time_dispatches(&ctx, &timer, &ds, args.iters, args.rounds)
    };
    let floor_us = floor.t * 1e6;
    eprintln!(
        "per-dispatch floor (32x4096 plain GEMV): {floor_us:.1} us ({}), wall clock {:.1} us",
        timer.short(),
        floor.wall * 1e6
    );

    let mut rows_out = Vec::new();
    let mut plain_rows = Vec::new();
    let mut timed = Vec::new();
    // (K, seconds) of the quantizing pre-pass (--x8), per activation width
    let mut prepass: Vec<(usize, f64)> = Vec::new();
    let mut lane_prepass: Vec<(usize, f64)> = Vec::new();
    for &(r, k) in &args.shapes {
        let t0 = Instant::now();
        let w = weights(r, k, (r * 31 + k) as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let x: Vec<f32> = (0..k).map(|_| gaussian(&mut rng)).collect();
        let packed_bytes = (r * k / 2) as f64;
        if packed_bytes as u64 > max_binding {
            eprintln!("{r}x{k}: {packed_bytes} bytes of weights exceed the binding limit {max_binding}; skipped");
            continue;
        }
        let sets = ((args.set_mib * 1048576.0) / packed_bytes).ceil().max(1.0) as usize;
        eprintln!(
            "{r}x{k}: weights in {:.1}s, {sets} copies of every matrix",
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
        if args.diagnose {
            // Issue 5's first target against the floor of reading the bytes at all: the
            // packed weights alone, and with what the plain kernel also reads (f32 scale and
            // bias per 64 weights, the activations), each once in one dispatch.
            let target_us = packed_bytes / (0.8 * shader_bw) * 1e6;
            let set_bytes = (args.set_mib * 1048576.0) as u64;
            let mut d = vec![format!(
                "target (80% of copy.wgsl on packed bytes) {target_us:.1} us"
            )];
            for (what, bytes) in [
                ("packed weights", r * k / 2),
                (
                    "+ g64 scales/biases + x",
                    r * k / 2 + r * k / 64 * 8 + k * 4,
                ),
            ] {
                match read_floor(
                    &ctx,
                    &timer,
                    bytes as u64,
                    set_bytes,
                    args.iters,
                    args.rounds,
                ) {
                    Some(t) => d.push(format!(
                        "{what} ({:.1} MB) {:.1} us = {:.0} GB/s",
                        bytes as f64 / 1e6,
                        t.t * 1e6,
                        bytes as f64 / t.t / 1e9
                    )),
                    None => d.push(format!("{what}: over the binding limit")),
                }
            }
            eprintln!("{r}x{k} read floor (read.wgsl): {}", d.join(", "));
        }

        for source in &args.sources {
            let t1 = Instant::now();
            let q = quantize_source(&w, r, k, source, args.scales_dtype);
            let syms = q.symbols();
            let gs = q.group_size;
            eprintln!(
                "  {source}: quantized in {:.1}s, scales and biases held on the GPU as {:?} pairs",
                t1.elapsed().as_secs_f64(),
                ecq::gpu::SideFormat::exact_for(&q.scales, &q.biases)
            );

            // plain 4-bit: the new kernel (auto K split), the issue-4 kernel, and L2-resident
            let plain: Vec<_> = (0..sets)
                .map(|_| ctx.upload_quantized(&q).expect("upload"))
                .collect();
            let time_plain_both = |v: QGemvVariant, n: usize| {
                let ds: Vec<Dispatch> = plain[..n]
                    .iter()
                    .map(|m| {
                        m.gemv_dispatch_with(dev, reg, &xb, &y_plain, v)
                            .expect("dispatch")
                    })
                    .collect();
                time_dispatches(&ctx, &timer, &ds, args.iters, args.rounds)
            };
            let time_plain = |v: QGemvVariant, n: usize| time_plain_both(v, n).t;
            if !args.plain_variants.is_empty() {
                plain_rows.extend(plain_variant_rows(
                    &ctx,
                    &plain,
                    &x,
                    &args.plain_variants,
                    (r, k, source),
                    &time_plain_both,
                    shader_bw,
                ));
            }
            if args.diagnose && plain[0].nibble4_supported() {
                // What limits the plain 4-bit kernel: its diagnostic builds, same weight sets.
                let mut d = vec![format!(
                    "kernel {:.1} us",
                    time_plain(QGemvVariant::Auto, sets) * 1e6
                )];
                for (name, diag) in [
                    ("loads only", 1),
                    ("arithmetic only (cache-resident)", 2),
                    ("loads without x", 3),
                ] {
                    let ds: Vec<Dispatch> = plain
                        .iter()
                        .map(|m| {
                            m.pipelined_diagnostic_dispatch(dev, reg, &xb, &y_plain, diag)
                                .expect("diagnostic dispatch")
                        })
                        .collect();
                    let t = time_dispatches(&ctx, &timer, &ds, args.iters, args.rounds).t;
                    d.push(format!("{name} {:.1} us", t * 1e6));
                }
                eprintln!("{r}x{k} plain 4-bit diagnose: {}", d.join(", "));
            }
            if args.plain_only {
                continue;
            }
            let plain_auto = time_plain_both(QGemvVariant::Auto, sets);
            let t_plain = plain_auto.t;
            let t_plain_old = time_plain(QGemvVariant::Generic, sets);
            let t_plain_l2 = time_plain(QGemvVariant::Auto, 1);
            let t_plain_i8 = time_plain(QGemvVariant::Int8Dot { ksplit: 0 }, sets);
            eprintln!(
                "  plain {source}: default (ksplit {}) {:.1} us ({:.0} GB/s), issue-4 qgemv {:.1} us ({:.0} GB/s), int8-dot {:.1} us ({:.0} GB/s), default one set {:.1} us",
                plain[0].pipelined_auto_ksplit(4),
                t_plain * 1e6,
                packed_bytes / t_plain / 1e9,
                t_plain_old * 1e6,
                packed_bytes / t_plain_old / 1e9,
                t_plain_i8 * 1e6,
                packed_bytes / t_plain_i8 / 1e9,
                t_plain_l2 * 1e6
            );
            if args.ksplit_sweep && source == &args.sources[0] {
                for ks in [1u32, 2, 4, 8] {
                    let t = time_plain(QGemvVariant::Nibble4 { ksplit: ks }, sets);
                    let ti = time_plain(QGemvVariant::Int8Dot { ksplit: ks }, sets);
                    eprintln!(
                        "    ksplit {ks}: qgemv4 {:.1} us, {:.0} GB/s; int8-dot {:.1} us, {:.0} GB/s",
                        t * 1e6,
                        packed_bytes / t / 1e9,
                        ti * 1e6,
                        packed_bytes / ti / 1e9
                    );
                }
                let t = time_plain(QGemvVariant::Generic, 1);
                eprintln!(
                    "    issue-4 qgemv, one set (L2 when it fits): {:.1} us",
                    t * 1e6
                );
            }
            let yp = ctx.gemv_quantized(&plain[0], &x).expect("plain gemv");
            // --x8: the activations quantized once (both byte orders), the plain int8-dot
            // kernel on them, and the quantizing pre-pass alone
            let x8 = (args.x8 && plain[0].nibble4_supported()).then(|| {
                let buf = |order| {
                    let b = dev.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("x8"),
                        size: ecq::gpu::x8_bytes(k),
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    });
                    let d = ecq::gpu::quantize_x8_dispatch(dev, reg, &xb, &b, k, order)
                        .expect("x8 dispatch");
                    (b, d)
                };
                let (plain_x8, d_plain) = buf(ecq::gpu::X8Order::Plain);
                let (window_x8, d_window) = buf(ecq::gpu::X8Order::Window);
                d_plain.submit(dev, ctx.queue());
                d_window.submit(dev, ctx.queue());
                let t_pre = time_dispatches(&ctx, &timer, &[d_window], args.iters, args.rounds).t;
                let ds: Vec<Dispatch> = plain
                    .iter()
                    .map(|m| {
                        m.gemv_x8_dispatch(dev, reg, &plain_x8, &y_plain, 0)
                            .expect("x8 dispatch")
                    })
                    .collect();
                let t_plain_x8 = time_dispatches(&ctx, &timer, &ds, args.iters, args.rounds).t;
                let yp8 = plain[0]
                    .gemv_x8(dev, ctx.queue(), reg, &x, 0)
                    .expect("plain x8 gemv");
                eprintln!(
                    "  plain {source}: int8-dot on pre-quantized activations {:.1} us (in-register {:.1} us), quantizing pre-pass (K = {k}) {:.1} us",
                    t_plain_x8 * 1e6,
                    t_plain_i8 * 1e6,
                    t_pre * 1e6
                );
                if !prepass.iter().any(|&(kk, _)| kk == k) {
                    prepass.push((k, t_pre));
                }
                (window_x8, t_plain_x8, yp8)
            });
            // --lane-order: the activations permuted on the GPU, the plain kernel on them, and
            // the permutation alone
            let lanes = (args.lane_order && plain[0].nibble4_supported()).then(|| {
                let xl = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("x lane order"),
                    size: (k * 4) as u64,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                });
                let d = ecq::gpu::x_lane_order_dispatch(dev, reg, &xb, &xl, 1, k)
                    .expect("lane order dispatch");
                d.submit(dev, ctx.queue());
                let t_perm = time_dispatches(&ctx, &timer, &[d], args.iters, args.rounds).t;
                let ds: Vec<Dispatch> = plain
                    .iter()
                    .map(|m| {
                        m.gemv_lane_order_dispatch(dev, reg, &xl, &y_plain)
                            .expect("lane order dispatch")
                    })
                    .collect();
                let t_plain_lanes = time_dispatches(&ctx, &timer, &ds, args.iters, args.rounds).t;
                ds[0].submit(dev, ctx.queue());
                let ypl = read_f32(&ctx, &y_plain, r);
                if bits_of(&ypl) != bits_of(&yp) {
                    eprintln!("WARNING: {r}x{k} {source}: the plain GEMV on lane order differs");
                }
                eprintln!(
                    "  plain {source}: on activations in lane order {:.1} us (column order {:.1} us), permutation (K = {k}) {:.1} us",
                    t_plain_lanes * 1e6,
                    t_plain * 1e6,
                    t_perm * 1e6
                );
                if !lane_prepass.iter().any(|&(kk, _)| kk == k) {
                    lane_prepass.push((k, t_perm));
                }
                (xl, t_plain_lanes)
            });
            drop(plain);

            for (&variant, &(low_bits, pairs)) in args
                .variants
                .iter()
                .flat_map(|v| args.low_bits.iter().map(move |b| (v, b)))
            {
                let t2 = Instant::now();
                let opts = match variant {
                    Some((chunk_symbols, tile_chunks)) => EncodeOptions {
                        chunk_symbols,
                        tile_chunks,
                        group_size: gs,
                        ..Default::default()
                    },
                    // what `ecq encode` (`--split`) writes
                    None if low_bits == 3 => EncodeOptions {
                        group_size: gs,
                        ..SplitMatrix::default_window_options()
                    },
                    None if low_bits != 0 => EncodeOptions {
                        group_size: gs,
                        ..SplitMatrix::default_options()
                    },
                    None => EncodeOptions {
                        group_size: gs,
                        ..Default::default()
                    },
                };
                // whole 4-bit symbols, or the high 2 bits coded and the low 2 raw (rows in pairs)
                let order = if pairs {
                    SplitOrder::RowPairs
                } else {
                    SplitOrder::Rows
                };
                let split = (low_bits != 0).then(|| {
                    if low_bits == 3 {
                        SplitMatrix::encode_window(&syms, r, k, &opts, order)
                    } else {
                        SplitMatrix::encode_ordered(&syms, r, k, 4, low_bits, &opts, order)
                    }
                    .expect("encode")
                });
                let whole = split
                    .is_none()
                    .then(|| encode(&syms, r, k, 4, &opts).expect("encode"));
                // the coded symbols: the whole matrix's, or the split one's high bits
                let enc = whole
                    .as_ref()
                    .or(split.as_ref().map(SplitMatrix::high))
                    .expect("one of the two");
                let source = &match &split {
                    None => source.to_string(),
                    Some(s) => {
                        let coded = match s.window() {
                            Some(start) => format!("window{start}"),
                            None => format!("raw{}", s.low_bits()),
                        };
                        format!("{source}+{coded}{}", if pairs { "+pairs" } else { "" })
                    }
                };
                // matrix rows per chunk (a coded row is two with row pairs)
                let chunk_rows = enc.chunk_rows() * (1 + pairs as usize);
                let geometry = match variant {
                    Some((c, t)) => format!("{c}:{t}"),
                    None => format!(
                        "file = {}:{}",
                        enc.chunk_rows() * enc.cols() / enc.weights_per_symbol() as usize,
                        enc.tile_chunks()
                    ),
                };
                let coded_bytes = split
                    .as_ref()
                    .map_or(enc.total_bytes(), |s| s.total_bytes())
                    as f64;
                let bpw = coded_bytes * 8.0 / (r * k) as f64;
                eprintln!(
                    "  {source} {geometry}: chunk_rows {}, {} chunks, {:.3} bits/weight, encoded in {:.1}s",
                    chunk_rows,
                    enc.n_chunks(),
                    bpw,
                    t2.elapsed().as_secs_f64()
                );
                let qp = QuantParamsRef::from(&q);
                let csets = ((args.set_mib * 1048576.0) / coded_bytes).ceil().max(1.0) as usize;
                let coded: Vec<_> = (0..csets)
                    .map(|_| {
                        let mut m = match &split {
                            None => ctx.upload_coded(CodedMatrixRef::from(enc), Some(qp)),
                            Some(s) => ctx.upload_split(s, Some(qp)),
                        }
                        .expect("upload");
                        m.set_tables_in_memory(!args.tables_built);
                        if let Some((n, most)) = args.chunk_subgroups {
                            // (where the matrix can take them; others keep one group)
                            if m.n_chunks() <= most {
                                let _ = m.set_chunk_subgroups(n);
                            }
                        }
                        m
                    })
                    .collect();
                // load time: the coded matrix decoded once on the GPU into a plain one, alone
                // and all copies with one wait (allocation, decodes, wait and error checks;
                // wall clock, the second of two runs each)
                let all: Vec<_> = coded.iter().collect();
                for batch in [&all[..1], &all[..]] {
                    let _ = ctx.decode_many_to_quantized(batch);
                    let t_load = Instant::now();
                    match ctx.decode_many_to_quantized(batch) {
                        Ok(ms) => {
                            let s = t_load.elapsed().as_secs_f64();
                            drop(ms);
                            eprintln!(
                                "  {source} {geometry}: decode {} matrices to plain ones at load {:.3} ms wall clock ({:.0} G weights/s)",
                                batch.len(),
                                s * 1e3,
                                (batch.len() * r * k) as f64 / s / 1e9
                            );
                        }
                        Err(e) => eprintln!("  {source}: decode to plain matrices: {e}"),
                    }
                }
                let time_fused = |v: FusedVariant, n: usize| {
                    let ds: Vec<Dispatch> = coded[..n]
                        .iter()
                        .map(|m| {
                            m.gemv_dispatch_with(dev, reg, &xb, &y_fused, v)
                                .expect("dispatch")
                        })
                        .collect();
                    time_dispatches(&ctx, &timer, &ds, args.iters, args.rounds)
                };
                let dec_out = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("decoded"),
                    size: (r * k / 2) as u64,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                });
                // the decode kernel of each `--fused` kernel that can decode this matrix, or
                // the default one
                let dec_variants: Vec<Option<FusedVariant>> = if args.fused.is_empty() {
                    vec![None]
                } else {
                    args.fused
                        .iter()
                        .filter(|v| match v {
                            FusedVariant::Workgroup => true,
                            FusedVariant::Subgroup => {
                                coded[0].decode_subgroup_supported(reg, DecodeOutput::Packed)
                            }
                            FusedVariant::Blocked | FusedVariant::BlockedCompact => {
                                coded[0].decode_blocked_supported(reg, DecodeOutput::Packed)
                            }
                        })
                        .map(|&v| Some(v))
                        .collect()
                };
                let n_syms = (r * k / enc.weights_per_symbol() as usize) as f64;
                let mut dec_rates = Vec::new();
                for dv in dec_variants {
                    let dec_d: Vec<Dispatch> = match coded
                        .iter()
                        .map(|m| match dv {
                            None => m.decode_dispatch(dev, reg, &dec_out, DecodeOutput::Packed),
                            Some(v) => {
                                m.decode_dispatch_with(dev, reg, &dec_out, DecodeOutput::Packed, v)
                            }
                        })
                        .collect::<Result<_, _>>()
                    {
                        Ok(d) => d,
                        // (a matrix no decode kernel runs: a window split of rows that are
                        // not whole 1024-weight blocks)
                        Err(GpuError::Unsupported(e)) => {
                            eprintln!("  {source} {geometry}: no decode: {e}");
                            dec_rates.push("n/a".to_string());
                            continue;
                        }
                        Err(e) => panic!("decode dispatch: {e}"),
                    };
                    let t_dec = time_dispatches(&ctx, &timer, &dec_d, args.iters, args.rounds).t;
                    eprintln!(
                        "  {source} {geometry}: decode {} {:.1} us ({:.1} G symbols/s)",
                        dv.map_or("default".to_string(), |v| format!("{v:?}")),
                        t_dec * 1e6,
                        n_syms / t_dec / 1e9
                    );
                    dec_rates.push(sig((r * k) as f64 / t_dec / 1e9));
                }
                let dec_col = dec_rates.join(" / ");
                // the kernels timed: `--fused`, or the one `gemv_dispatch` picks
                let default_variant = coded[0].default_fused_variant(reg);
                let variants = if args.fused.is_empty() {
                    vec![default_variant]
                } else {
                    args.fused.clone()
                };
                for fused_variant in variants {
                    let blocked = fused_variant.is_blocked();
                    // (the subgroup kernel does not read a split matrix's raw low bits)
                    if (blocked && coded[0].fused_layout().blocked_steps().is_none())
                        || (fused_variant == FusedVariant::Subgroup && coded[0].low_bits() != 0)
                    {
                        eprintln!("  {source} {geometry}: {fused_variant:?} cannot run this layout, skipped");
                        continue;
                    }
                    let fused = time_fused(fused_variant, csets);
                    let t_fused = fused.t;
                    let t_fused_l2 = time_fused(fused_variant, 1).t;
                    // sanity: fused and plain agree, and the stream decodes cleanly
                    let yf = coded[0]
                        .gemv_with(dev, ctx.queue(), reg, &x, fused_variant)
                        .expect("fused gemv");
                    warn_if_apart(&format!("fused {fused_variant:?} and plain"), &yp, &yf);
                    eprintln!(
                        "  {source} {geometry}: fused {fused_variant:?} {:.1} us ({:.2}x plain), one set {:.1} us",
                        t_fused * 1e6,
                        t_fused / t_plain,
                        t_fused_l2 * 1e6,
                    );
                    if (args.diagnose || args.diag_builds.is_some())
                        && fused_variant == default_variant
                        && default_variant.is_blocked()
                    {
                        // where the blocked kernel's time goes: its decode alone and its dot
                        // products alone, streamed and from one set
                        let mut d = Vec::new();
                        let builds: &[(&str, u32)] = if coded[0].low_bits() == 3 {
                            // (a window split: builds 3-8 are the kernel itself there)
                            &[
                                ("decode only", 1),
                                ("dot products only", 2),
                                ("no activation sums", 9),
                                ("no window start", 10),
                                ("loads and setup only", 11),
                                ("setup only", 12),
                                ("no table", 15),
                                ("table from memory", 16),
                                ("two states a lane", 13),
                                ("decode only, two states a lane", 14),
                                ("four states a lane", 17),
                                ("decode only, four states a lane", 18),
                                ("two groups a chunk", 19),
                                ("four groups a chunk", 20),
                            ]
                        } else {
                            &[
                                ("decode only", 1),
                                ("dot products only", 2),
                                ("activations shared by a block's two words", 3),
                                ("dot products only, activations shared", 4),
                                ("free word supply", 5),
                                ("decode only, free word supply", 6),
                                ("word supply per lane", 7),
                                ("decode only, word supply per lane", 8),
                                ("table from memory", 16),
                            ]
                        };
                        let wanted =
                            |diag: u32| args.diag_builds.as_ref().is_none_or(|w| w.contains(&diag));
                        for &(name, diag) in builds.iter().filter(|b| wanted(b.1)) {
                            for n in [csets, 1] {
                                // (a build this layout cannot run is named and skipped)
                                let ds: Result<Vec<Dispatch>, GpuError> = coded[..n]
                                    .iter()
                                    .map(|m| {
                                        m.blocked_diagnostic_dispatch(dev, reg, &xb, &y_fused, diag)
                                    })
                                    .collect();
                                let ds = match ds {
                                    Ok(ds) => ds,
                                    Err(GpuError::Unsupported(e)) => {
                                        d.push(format!("{name}: not run ({e})"));
                                        break;
                                    }
                                    Err(e) => panic!("diagnostic dispatch: {e}"),
                                };
                                let t =
                                    time_dispatches(&ctx, &timer, &ds, args.iters, args.rounds).t;
                                d.push(format!(
                                    "{name}{} {:.1} us",
                                    if n == 1 { " (one set)" } else { "" },
                                    t * 1e6
                                ));
                            }
                        }
                        eprintln!(
                            "{r}x{k} {source} {geometry} blocked diagnose: kernel {:.1} us (one set {:.1} us), {}",
                            t_fused * 1e6,
                            t_fused_l2 * 1e6,
                            d.join(", ")
                        );
                    }
                    // the per-token table's key: symbols, chunks, and the kernel when named
                    let chunks = variant.map_or("file".into(), |(c, t)| format!("{c}:{t}"));
                    let named = (!args.fused.is_empty()).then(|| format!("{fused_variant:?}"));
                    if let Some((window_x8, t_plain_x8, yp8)) = x8
                        .as_ref()
                        .filter(|_| blocked && coded[0].x8_supported(reg))
                    {
                        let ds: Vec<Dispatch> = coded
                            .iter()
                            .map(|m| {
                                m.gemv_x8_dispatch_with(
                                    dev,
                                    reg,
                                    window_x8,
                                    &y_fused,
                                    fused_variant,
                                )
                                .expect("x8 dispatch")
                            })
                            .collect();
                        let t_x8 = time_dispatches(&ctx, &timer, &ds, args.iters, args.rounds).t;
                        let t_x8_l2 =
                            time_dispatches(&ctx, &timer, &ds[..1], args.iters, args.rounds).t;
                        let yf8 = coded[0]
                            .gemv_x8(dev, ctx.queue(), reg, &x)
                            .expect("fused x8");
                        warn_if_apart("fused x8 and plain x8", yp8, &yf8);
                        eprintln!(
                            "  {source} {geometry}: fused x8 {fused_variant:?} {:.1} us ({:.2}x plain int8-dot on the same activations, {:.2}x plain f32; f32 fused {:.2}x its kernel), one set {:.1} us",
                            t_x8 * 1e6,
                            t_x8 / t_plain_x8,
                            t_x8 / t_plain,
                            t_fused / t_x8,
                            t_x8_l2 * 1e6
                        );
                        timed.push(Timed {
                            shape: (r, k),
                            key: format!(
                                "{source} | {chunks} | x8{}",
                                named.as_ref().map_or(String::new(), |n| format!(" {n}"))
                            ),
                            t_plain: *t_plain_x8,
                            t_fused: t_x8,
                        });
                    }
                    if let Some((xl, t_plain_lanes)) = lanes
                        .as_ref()
                        .filter(|_| blocked && coded[0].lane_order_supported(reg))
                    {
                        let ds: Vec<Dispatch> = coded
                            .iter()
                            .map(|m| {
                                m.gemv_many_lane_order_dispatch_with(
                                    dev,
                                    reg,
                                    xl,
                                    &y_fused,
                                    1,
                                    fused_variant,
                                )
                                .expect("lane order dispatch")
                            })
                            .collect();
                        let t_lanes = time_dispatches(&ctx, &timer, &ds, args.iters, args.rounds).t;
                        ds[0].submit(dev, ctx.queue());
                        if bits_of(&read_f32(&ctx, &y_fused, r)) != bits_of(&yf) {
                            eprintln!(
                                "WARNING: {r}x{k} {source} {geometry}: the fused GEMV on lane order differs"
                            );
                        }
                        eprintln!(
                            "  {source} {geometry}: fused {fused_variant:?} on activations in lane order {:.1} us ({:.2}x plain on lane order; column order {:.1} us)",
                            t_lanes * 1e6,
                            t_lanes / t_plain_lanes,
                            t_fused * 1e6
                        );
                        timed.push(Timed {
                            shape: (r, k),
                            key: format!(
                                "{source} | {chunks} | lane order{}",
                                named.as_ref().map_or(String::new(), |n| format!(" {n}"))
                            ),
                            t_plain: *t_plain_lanes,
                            t_fused: t_lanes,
                        });
                    }
                    timed.push(Timed {
                        shape: (r, k),
                        key: format!(
                            "{source} | {chunks} | {}",
                            named.as_deref().unwrap_or("default")
                        ),
                        t_plain,
                        t_fused,
                    });
                    rows_out.push(format!(
                        "| {r}x{k} | {source} | {geometry} ({} rows/chunk) | {bpw:.3} | {:.1} / {:.1} / {:.1} | {:.1} ({fused_variant:?}) | {:.1} / {:.1} | {:.2}x | {} | {} / {} | {:.1} / {:.1} | {} | {} / {} |",
                        chunk_rows,
                        t_plain * 1e6,
                        t_plain_old * 1e6,
                        t_plain_i8 * 1e6,
                        t_fused * 1e6,
                        plain_auto.wall * 1e6,
                        fused.wall * 1e6,
                        t_fused / t_plain,
                        sig(packed_bytes / t_plain / 1e9),
                        sig(packed_bytes / t_fused / 1e9),
                        sig(coded_bytes / t_fused / 1e9),
                        t_plain_l2 * 1e6,
                        t_fused_l2 * 1e6,
                        dec_col,
                        sig(copy_bw / 1e9),
                        sig(shader_bw / 1e9),
                    ));
                }
                drop(coded);
            }
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
    if !rows_out.is_empty() {
        println!(
            "| shape RxK | symbols | chunk_symbols:tile_chunks | coded bits/weight | plain 4-bit µs [{clock}] (default = qgemv4_pipe r4 / issue-4 qgemv / int8-dot, approximate) | fused µs [{clock}] (kernel) | wall-clock µs (plain default / fused) | fused/plain | plain GB/s | fused GB/s (MLX 4-bit / coded bytes) | one set, µs [{clock}] (plain / fused) | decode-only G weights/s | copy GB/s [{clock}] (copy_buffer_to_buffer / copy.wgsl) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for l in rows_out {
            println!("{l}");
        }
        println!();
    }
    if let Some(m) = args.per_token {
        print_per_token(m, &timed, &prepass, &lane_prepass, clock);
    }
    if !plain_rows.is_empty() {
        println!(
            "| shape RxK | symbols | plain kernel (rows per 32-lane group : K split) | µs [{clock}] | wall-clock µs | one set µs [{clock}] | GB/s [{clock}] (MLX 4-bit packed) | % of copy.wgsl | vs qgemv4 | max rel. diff vs qgemv4 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for l in plain_rows {
            println!("{l}");
        }
        println!();
    }
    println!(
        "Weights: Gaussian (sigma 0.02) with one in 65536 at +-16 sigma. g64/g128: MLX affine 4-bit; absmax: per-tensor absmax 4-bit. GB/s = bytes per second of MLX 4-bit packed weights (R*K/2; scales and biases not counted) or of the coded tensors; \"one set\" = one copy reused (L2-resident when it fits in ~50 MB); copy GB/s = bytes read + written per second, {} MiB ({}); per-dispatch floor (a 32x4096 plain GEMV, dispatches dependent through y like all timings here) {floor_us:.1} µs [{clock}], {:.1} µs wall clock; medians of {} rounds x {} dispatches.",
        copy_bytes >> 20,
        sig(copy_bw / 1e9) + " / " + &sig(shader_bw / 1e9) + " GB/s",
        floor.wall * 1e6,
        args.rounds,
        args.iters,
    );
}

/// The `--per-token` table: for each symbol source, chunk variant and kernel timed at every
/// shape of `m`, the sums of the per-matrix medians over one layer and over one token; for the
/// `x8` rows also with the quantizing pre-passes (`prepass`: seconds per activation width), one
/// per distinct input vector, added to both kernels (both read pre-quantized activations); the
/// `lane order` rows likewise with the permutations into lane order (`lane_prepass`).
fn print_per_token(
    m: &ModelShapes,
    timed: &[Timed],
    prepass: &[(usize, f64)],
    lane_prepass: &[(usize, f64)],
    clock: &str,
) {
    let mut keys: Vec<&str> = Vec::new();
    for t in timed {
        if !keys.contains(&t.key.as_str()) {
            keys.push(&t.key);
        }
    }
    println!(
        "Per token, {} ({}): sums of the medians above, each matrix timed on its own (attention and the rest of the model not included).",
        m.name, m.what
    );
    println!();
    println!(
        "| symbols | chunks | kernel | one layer: plain µs [{clock}] | fused µs [{clock}] | fused/plain | one token ({} layers + lm_head): plain ms | fused ms | fused/plain |",
        m.layers
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for key in keys {
        let find = |shape: (usize, usize)| {
            timed
                .iter()
                .find(|t| t.key == key && t.shape == shape)
                .map(|t| (t.t_plain, t.t_fused))
        };
        let mut layer = (0.0, 0.0);
        let mut complete = true;
        for &(r, k, n) in m.per_layer {
            match find((r, k)) {
                Some((p, f)) => {
                    layer.0 += n as f64 * p;
                    layer.1 += n as f64 * f;
                }
                None => complete = false,
            }
        }
        let Some(head) = find(m.head).filter(|_| complete) else {
            eprintln!(
                "per token: {key} was not timed at every shape of {}",
                m.name
            );
            continue;
        };
        let token = (
            m.layers as f64 * layer.0 + head.0,
            m.layers as f64 * layer.1 + head.1,
        );
        println!(
            "| {key} | {:.1} | {:.1} | {:.2}x | {:.2} | {:.2} | {:.2}x |",
            layer.0 * 1e6,
            layer.1 * 1e6,
            layer.1 / layer.0,
            token.0 * 1e3,
            token.1 * 1e3,
            token.1 / token.0
        );
        let (passes, what) = if key.contains("| lane order") {
            (lane_prepass, "permutes")
        } else {
            (prepass, "pre-passes")
        };
        let pre_of = |k: usize| passes.iter().find(|&&(kk, _)| kk == k).map(|&(_, t)| t);
        let pre_layer: Option<f64> = m
            .inputs_per_layer
            .iter()
            .map(|&(k, n)| pre_of(k).map(|t| n as f64 * t))
            .sum();
        let passes_apply = key.contains("| x8") || key.contains("| lane order");
        if let (true, Some(pl), Some(ph)) = (passes_apply, pre_layer, pre_of(m.head.1)) {
            let pt = m.layers as f64 * pl + ph;
            println!(
                "| {key} + {what} | {:.1} | {:.1} | {:.2}x | {:.2} | {:.2} | {:.2}x |",
                (layer.0 + pl) * 1e6,
                (layer.1 + pl) * 1e6,
                (layer.1 + pl) / (layer.0 + pl),
                (token.0 + pt) * 1e3,
                (token.1 + pt) * 1e3,
                (token.1 + pt) / (token.0 + pt)
            );
        }
    }
    println!();
}

/// The plain-kernel comparison rows of one matrix (`--plain-variants`): the default qgemv4
/// (auto K split) and each `QGemvVariant::Stream` of the list, all on the same copies, with
/// their results checked against qgemv4's.
fn plain_variant_rows(
    ctx: &GpuContext,
    plain: &[ecq::gpu::GpuQuantizedMatrix],
    x: &[f32],
    variants: &[QGemvVariant],
    (r, k, source): (usize, usize, &str),
    time: &dyn Fn(QGemvVariant, usize) -> Timing,
    shader_bw: f64,
) -> Vec<String> {
    let m = &plain[0];
    let packed = m.packed_bytes() as f64;
    let (dev, q, reg) = (ctx.device(), ctx.queue(), ctx.registry());
    let y_ref = m
        .gemv_with(dev, q, reg, x, QGemvVariant::Nibble4 { ksplit: 0 })
        .expect("qgemv4");
    let scale = y_ref.iter().fold(0f32, |s, v| s.max(v.abs())).max(1e-30);
    let mut cands = vec![(
        format!("qgemv4 (4 : {})", m.auto_ksplit()),
        QGemvVariant::Nibble4 { ksplit: 0 },
    )];
    for &v in variants {
        let (kind, rows, ks) = match v {
            QGemvVariant::Stream { rows, ksplit: 0 } => {
                ("stream", rows, m.stream_auto_ksplit(rows))
            }
            QGemvVariant::Stream { rows, ksplit } => ("stream", rows, ksplit),
            QGemvVariant::Staged { rows, ksplit: 0 } => {
                ("staged", rows, m.staged_auto_ksplit(rows))
            }
            QGemvVariant::Staged { rows, ksplit } => ("staged", rows, ksplit),
            QGemvVariant::Pipelined { rows, ksplit: 0 } => {
                ("pipelined", rows, m.pipelined_auto_ksplit(rows))
            }
            QGemvVariant::Pipelined { rows, ksplit } => ("pipelined", rows, ksplit),
            other => panic!("not a candidate plain kernel: {other:?}"),
        };
        let name = if m.stream_supported() {
            format!("{kind} r{rows} ({rows} : {ks})")
        } else {
            format!("{kind} r{rows} (unsupported shape: qgemv4 fallback)")
        };
        cands.push((name, v));
    }
    let mut base = None;
    let mut out = Vec::new();
    for (name, v) in cands {
        let t = time(v, plain.len());
        let t1 = time(v, 1).t;
        let y = m.gemv_with(dev, q, reg, x, v).expect("plain gemv");
        let diff = y
            .iter()
            .zip(&y_ref)
            .fold(0f32, |s, (a, b)| s.max((a - b).abs()))
            / scale;
        let b = *base.get_or_insert(t.t);
        eprintln!(
            "  plain {source} {name}: {:.1} us ({:.0} GB/s), wall {:.1} us, one set {:.1} us, max rel diff {diff:.1e}",
            t.t * 1e6,
            packed / t.t / 1e9,
            t.wall * 1e6,
            t1 * 1e6
        );
        out.push(format!(
            "| {r}x{k} | {source} | {name} | {:.1} | {:.1} | {:.1} | {} | {:.0}% | {:.2}x | {diff:.1e} |",
            t.t * 1e6,
            t.wall * 1e6,
            t1 * 1e6,
            sig(packed / t.t / 1e9),
            100.0 * packed / t.t / shader_bw,
            b / t.t,
        ));
    }
    out
}
