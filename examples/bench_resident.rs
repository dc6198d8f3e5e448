//! Layer stacks through the public layer API on activations that stay on the GPU (issue 5,
//! step 93): `GpuLinear::record_forward` of every linear layer of `--layers` transformer
//! layers (Llama-3-8B's seven shapes by default) recorded into one command encoder, submitted
//! once and waited for, for M tokens. Fused layers (window splits in row pairs, as `ecq encode
//! --window --row-pairs` writes them) against the plain MLX 4-bit layers, in f32 and, with
//! `--coop` where the device has them, on cooperative matrices; activations given in column
//! order and in lane order (what an engine's preceding operation could write).
//!
//! ```text
//! cargo run --release --example bench_resident -- [--layers 32] [--ms 1,16,512] [--rounds 7]
//!     [--copies 2] [--shapes 4096x4096,1024x4096,...] [--coop] [--own-outputs] [--prebuilt]
//!     [--one-pass] [--prepared] [--decode-first N|never] [--coop-gemm N|never] [--tiled-gemm N|never]
//!     [--orders columns,lanes] [--passes 2] [--decoded-buffers 1] [--calls-per-encoder N] [--decode-ahead N[,N..]] [--coop-only]
//!     [--coding window|split|whole] [--min-chunks N] [--recode] [--portable] [--tables-built]
//! ```
//!
//! Weights: Gaussian (sigma 0.02), MLX affine 4-bit g64, coded as window splits in row pairs
//! (`--coding window`, the default), splits 2 + 2 in row pairs (`--coding split`, `ecq encode
//! --split --row-pairs`) or whole (`--coding whole`, as plain `ecq encode` writes them: the
//! file format's default), in the chunks `ecq encode` writes for the form (`--min-chunks` as
//! its option), `--copies` distinct copies of each
//! shape (layer `l` uses copy `l % copies`, so a forward streams more than the L2 cache holds).
//! `--recode` re-codes whole or split 2 + 2 weights as the window splits in row pairs that
//! `EntropyCodedModel` uploads for them (`ecq::container::WindowRecoder`, one for all layers as
//! the loader keeps), timing that (wall clock, every core) on stderr.
//! Every layer reads the same activation buffer and writes its shape's output buffer (with
//! `--own-outputs` buffers of its own, so that no two launches write one buffer and wgpu
//! places no barrier between them for the outputs; a diagnostic: an engine's layers depend on
//! each other; `--prebuilt` adds a token's launches made once, with the library's dispatch
//! entry points, and recorded into one compute pass a forward). Each call records into a pass
//! of its own (`record_forward`), or with `--one-pass` all of a forward's calls into one
//! (`record_forward_in`); with `--prepared` every call is made into launches once
//! (`prepare_forward`) before the timing and recorded from them (`PreparedForward::record_in`,
//! `record`), as an engine reusing its activation buffers would. `--decode-first` sets the
//! fused layers' `LinearOptions::decode_first_min_rows` (`never`: the fused launches at every
//! row count; default: the library's), `--coop-gemm` the cooperative layers' rows from which
//! they run the cooperative GEMM (`QuantizedLinear::set_coop_gemm_min_rows`,
//! `LinearOptions::coop_gemm_min_rows`; `never`: launches of 16 rows), `--tiled-gemm` the f32
//! layers' rows from which they run the tiled f32 GEMM (`QuantizedLinear::set_tiled_gemm_min_rows`,
//! `LinearOptions::tiled_gemm_min_rows`; default: the library's), `--decoded-buffers` the
//! kept buffers the calls decoding first take in turn (`LinearDevice::set_decoded_buffers`),
//! `--calls-per-encoder` records every N calls into a command encoder of their own (a
//! forward's encoders submitted at once; default: one encoder a forward), and with
//! `--prepared`, `--decode-ahead N[,N...]` records the calls into command buffers of their own
//! of N calls (the sizes taken in turn, e.g. `3,1,2,1` for a layer's q k v | o | gate up |
//! down) with their decodes first (`LinearDevice::encode_calls`; give as many
//! `--decoded-buffers` as the largest N, plain layers' calls are grouped alike); `--coop-only` times
//! the cooperative layers only; `--portable` runs the portable kernels only
//! (`GpuContext::without_subgroups`: what a device without 32-wide subgroups runs);
//! `--tables-built` uploads the fused layers with `LinearOptions::tables_built_in_kernel`
//! (every workgroup builds its decode table instead of loading the host's). Times are
//! wall clock after a second of warm-up forwards: "record" (the host's recording of all calls)
//! and "run" (submit to the end of the wait) are medians of `--rounds` forwards one at a time;
//! "pipelined" is `--rounds` forwards back to back, each recorded and submitted while the one
//! before runs (two in flight, what an engine does), their wall clock over their number. Every
//! variant is timed `--passes` times (default 2), fused and plain alternating, for each of
//! `--orders`. Prints a markdown table on stdout.

use std::sync::Arc;
use std::time::Instant;

use ecq::container::{CodedWeight, MatrixCoding, WindowRecoder};
use ecq::dtype::FloatDType;
use ecq::gpu::GpuContext;
use ecq::linear::{
    ActivationOrder, CodedLayerRef, EntropyCodedLinear, GpuLinear, LinearDevice, LinearOptions,
    QuantizedLinear,
};
use ecq::quant::{quantize_affine, AffineParams};
use ecq::rans::{encode, EncodeOptions, EncodedMatrix, SplitMatrix, SplitOrder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const LLAMA3_8B: &[(usize, usize)] = &[
    (4096, 4096),
    (1024, 4096),
    (1024, 4096),
    (4096, 4096),
    (14336, 4096),
    (14336, 4096),
    (4096, 14336),
];

struct Args {
    layers: usize,
    ms: Vec<usize>,
    rounds: usize,
    copies: usize,
    shapes: Vec<(usize, usize)>,
    coop: bool,
    /// every layer writes outputs of its own (no two launches write one buffer)
    own_outputs: bool,
    /// also one token's launches made once and recorded into one compute pass
    prebuilt: bool,
    /// every call of a forward in one compute pass (`record_forward_in`)
    one_pass: bool,
    /// calls made into launches once (`prepare_forward`), recorded every forward
    prepared: bool,
    /// the fused layers' `LinearOptions::decode_first_min_rows` (`None`: the default)
    decode_first: Option<usize>,
    /// the cooperative layers' `coop_gemm_min_rows` (`None`: the default)
    coop_gemm: Option<usize>,
    /// the f32 layers' `tiled_gemm_min_rows` (`None`: the default)
    tiled_gemm: Option<usize>,
    /// `LinearDevice::set_decoded_buffers`
    decoded_buffers: usize,
    /// calls a command encoder (`None`: a forward's)
    calls_per_encoder: Option<usize>,
    /// prepared calls in command buffers of these many in turn, decodes first
    /// (`LinearDevice::encode_calls`; `None`: as `calls_per_encoder` says)
    decode_ahead: Option<Vec<usize>>,
    /// the cooperative layers only (no f32 columns)
    coop_only: bool,
    /// the portable kernels only (`GpuContext::without_subgroups`)
    portable: bool,
    /// `LinearOptions::tables_built_in_kernel` for the fused layers
    tables_built: bool,
    /// the activation orders timed
    orders: Vec<ActivationOrder>,
    /// how the fused layers are coded
    coding: Coding,
    /// `EncodeOptions::min_chunks` (`None`: `ecq encode`'s default for the form)
    min_chunks: Option<usize>,
    /// re-code the fused layers as window splits (`window_split_of`), timed
    recode: bool,
    /// times each variant is timed
    passes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        layers: 32,
        ms: vec![1, 16, 512],
        rounds: 7,
        copies: 2,
        shapes: LLAMA3_8B.to_vec(),
        coop: false,
        own_outputs: false,
        prebuilt: false,
        one_pass: false,
        prepared: false,
        decode_first: None,
        coop_gemm: None,
        tiled_gemm: None,
        decoded_buffers: 1,
        calls_per_encoder: None,
        decode_ahead: None,
        coop_only: false,
        portable: false,
        tables_built: false,
        orders: vec![ActivationOrder::Columns, ActivationOrder::Lanes],
        passes: 2,
        coding: Coding::Window,
        min_chunks: None,
        recode: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .ok_or_else(|| format!("{} needs a value", args[i]))
        };
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        // (a row threshold: a count, or `never`)
        let rows_from = |v: &str| match v {
            "never" => Ok(usize::MAX),
            v => number(v),
        };
        let flag = match args[i].as_str() {
            "--coop" => Some(&mut a.coop),
            "--portable" => Some(&mut a.portable),
            "--recode" => Some(&mut a.recode),
            "--tables-built" => Some(&mut a.tables_built),
            "--own-outputs" => Some(&mut a.own_outputs),
            "--prebuilt" => Some(&mut a.prebuilt),
            "--one-pass" => Some(&mut a.one_pass),
            "--prepared" => Some(&mut a.prepared),
            "--coop-only" => Some(&mut a.coop_only),
            _ => None,
        };
        if let Some(f) = flag {
            *f = true;
            i += 1;
            continue;
        }
        match args[i].as_str() {
            "--layers" => a.layers = number(value()?)?,
            "--decoded-buffers" => a.decoded_buffers = number(value()?)?.max(1),
            "--calls-per-encoder" => a.calls_per_encoder = Some(number(value()?)?.max(1)),
            "--decode-ahead" => {
                a.decode_ahead = Some(
                    value()?
                        .split(',')
                        .map(|n| number(n).map(|n| n.max(1)))
                        .collect::<Result<_, _>>()?,
                )
            }
            "--coop-gemm" => a.coop_gemm = Some(rows_from(value()?)?),
            "--tiled-gemm" => a.tiled_gemm = Some(rows_from(value()?)?),
            "--decode-first" => a.decode_first = Some(rows_from(value()?)?),
            "--rounds" => a.rounds = number(value()?)?.max(1),
            "--passes" => a.passes = number(value()?)?.max(1),
            "--orders" => {
                a.orders = value()?
                    .split(',')
                    .map(|o| match o {
                        "columns" => Ok(ActivationOrder::Columns),
                        "lanes" => Ok(ActivationOrder::Lanes),
                        _ => Err(format!("order {o}: columns or lanes")),
                    })
                    .collect::<Result<_, String>>()?
            }
            "--copies" => a.copies = number(value()?)?.max(1),
            "--min-chunks" => a.min_chunks = Some(number(value()?)?),
            "--coding" => {
                a.coding = match value()?.as_str() {
                    "window" => Coding::Window,
                    "split" => Coding::Split,
                    "whole" => Coding::Whole,
                    c => return Err(format!("coding {c}: window, split or whole")),
                }
            }
            "--ms" => a.ms = value()?.split(',').map(number).collect::<Result<_, _>>()?,
            "--shapes" => {
                a.shapes = value()?
                    .split(',')
                    .map(|s| {
                        let (r, k) = s.split_once('x').ok_or(format!("shape {s}: RxK"))?;
                        Ok((number(r)?, number(k)?))
                    })
                    .collect::<Result<_, String>>()?
            }
            other => return Err(format!("unknown argument {other}")),
        }
        i += 2;
    }
    Ok(a)
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// `--coding`: window splits in row pairs (`ecq encode --window --row-pairs`), splits 2 + 2
/// in row pairs (`ecq encode --split --row-pairs`), or whole symbols (`ecq encode`).
#[derive(Clone, Copy, PartialEq)]
enum Coding {
    Window,
    Split,
    Whole,
}

/// A shape's coded weights, as `--coding` asks.
enum Coded {
    /// A window split or a split 2 + 2.
    Split(SplitMatrix),
    Whole(EncodedMatrix),
}

/// One copy of every shape, fused and plain, with and without cooperative matrices.
struct Stack {
    fused: Vec<EntropyCodedLinear>,
    fused_coop: Vec<EntropyCodedLinear>,
    plain: Vec<QuantizedLinear>,
    plain_coop: Vec<QuantizedLinear>,
    /// The plain GEMV's matrices, for the launches made once (`--prebuilt`).
    plain_gemv: Vec<ecq::gpu::GpuQuantizedMatrix>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_resident: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse_args()?;
    if a.decode_ahead.is_some() && !(a.prepared && a.calls_per_encoder.is_none()) {
        return Err("--decode-ahead needs --prepared and no --calls-per-encoder".into());
    }
    if a.coop && a.portable {
        return Err("--coop needs the subgroup kernels; --portable drops them".into());
    }
    let dev: Arc<LinearDevice> = if a.coop {
        LinearDevice::from_context(GpuContext::with_cooperative_matrix()?)
    } else if a.portable {
        LinearDevice::from_context(GpuContext::new()?.without_subgroups())
    } else {
        LinearDevice::new()?
    };
    eprintln!("adapter: {}", dev.gpu().describe());
    dev.set_decoded_buffers(a.decoded_buffers);
    let mut rng = ChaCha8Rng::seed_from_u64(93);
    let mut stacks: Vec<Stack> = Vec::new();
    let mut recode_secs = 0.0;
    // (one recoder for every layer, as `EntropyCodedModel` keeps one for a model)
    let mut recoder = WindowRecoder::new();
    for copy in 0..a.copies {
        let mut st = Stack {
            fused: Vec::new(),
            fused_coop: Vec::new(),
            plain: Vec::new(),
            plain_coop: Vec::new(),
            plain_gemv: Vec::new(),
        };
        for &(r, k) in &a.shapes {
            let w: Vec<f32> = (0..r * k).map(|_| gaussian(&mut rng) * 0.02).collect();
            let q = quantize_affine(&w, r, k, FloatDType::F32, AffineParams::new(4, 64)?)?;
            // (`ecq encode`'s chunks for the form: 16384 whole symbols, a half as many of a
            // split's, a quarter of a window split's; its default minimum unless --min-chunks)
            let (form, per_symbol) = match a.coding {
                Coding::Whole => (MatrixCoding::Whole, 1),
                Coding::Split => (MatrixCoding::Split4 { row_pairs: true }, 2),
                Coding::Window => (MatrixCoding::Window4 { row_pairs: true }, 4),
            };
            let o = EncodeOptions {
                chunk_symbols: ecq::rans::DEFAULT_CHUNK_SYMBOLS / per_symbol,
                min_chunks: a.min_chunks.unwrap_or(form.default_min_chunks()),
                group_size: 64,
                ..Default::default()
            };
            let (syms, order) = (q.symbols(), SplitOrder::RowPairs);
            let mut coded = match a.coding {
                Coding::Whole => Coded::Whole(encode(&syms, r, k, 4, &o)?),
                Coding::Split => {
                    Coded::Split(SplitMatrix::encode_ordered(&syms, r, k, 4, 2, &o, order)?)
                }
                Coding::Window => Coded::Split(SplitMatrix::encode_window(&syms, r, k, &o, order)?),
            };
            if a.recode {
                let shape = vec![r as u32, (k / 8) as u32];
                let weight = match coded {
                    Coded::Whole(e) => CodedWeight::Whole(e),
                    Coded::Split(matrix) => CodedWeight::Split { matrix, shape },
                };
                let t = Instant::now();
                let recoded = recoder.window_split_of(&format!("{r}x{k}"), &weight, true)?;
                let secs = t.elapsed().as_secs_f64();
                coded = match recoded {
                    Some(s) => {
                        eprintln!(
                            "copy {copy}, {r}x{k}: re-coded as a window split in {:.1} ms \
                             ({:.0} M weights/s, {} threads)",
                            secs * 1e3,
                            (r * k) as f64 / secs / 1e6,
                            rayon::current_num_threads()
                        );
                        recode_secs += secs;
                        Coded::Split(s)
                    }
                    None => match weight {
                        CodedWeight::Whole(e) => Coded::Whole(e),
                        CodedWeight::Split { matrix, .. } => Coded::Split(matrix),
                        _ => unreachable!("made above"),
                    },
                };
            }
            let layer = || match &coded {
                Coded::Split(s) => CodedLayerRef::from_split(s, 64, &q.scales, &q.biases, None),
                Coded::Whole(e) => CodedLayerRef::from_encoded(e, 64, &q.scales, &q.biases, None),
            };
            let with = |coop: bool| {
                let opts = LinearOptions {
                    cooperative_matrix: coop,
                    decode_first_min_rows: a.decode_first,
                    coop_gemm_min_rows: a.coop_gemm,
                    tiled_gemm_min_rows: a.tiled_gemm,
                    tables_built_in_kernel: a.tables_built,
                    ..Default::default()
                };
                EntropyCodedLinear::upload(&dev, &format!("{r}x{k}"), layer(), &opts)
            };
            st.fused.push(with(false)?);
            st.fused_coop.push(with(true)?);
            let mut p = QuantizedLinear::upload(&dev, &format!("{r}x{k}"), &q, None)?;
            p.set_tiled_gemm_min_rows(a.tiled_gemm);
            st.plain.push(p);
            let mut p = QuantizedLinear::upload(&dev, &format!("{r}x{k}"), &q, None)?;
            p.set_cooperative_matrix(true);
            p.set_coop_gemm_min_rows(a.coop_gemm);
            st.plain_coop.push(p);
            if a.prebuilt {
                st.plain_gemv
                    .push(ecq::gpu::GpuQuantizedMatrix::upload(dev.device(), &q)?);
            }
            eprintln!(
                "copy {copy}, {r}x{k}: {:.3} coded bits/weight",
                match &coded {
                    Coded::Split(s) => s.total_bytes(),
                    Coded::Whole(e) => e.total_bytes(),
                } as f64
                    * 8.0
                    / (r * k) as f64
            );
        }
        stacks.push(st);
    }
    if a.recode {
        eprintln!(
            "re-coded {} copies of {:?} in {:.2} s, {:.2} s a layer",
            a.copies,
            a.shapes,
            recode_secs,
            recode_secs / a.copies as f64
        );
    }
    // (whole-coded layers have no cooperative fused kernel: their calls decoding first do)
    let coop_on = stacks[0].fused_coop[0].cooperative_matrix()
        || stacks[0].fused_coop[0].decode_first_cooperative_matrix();
    let max_k = a.shapes.iter().map(|s| s.1).max().unwrap_or(0);
    let from = |n: usize| match n {
        usize::MAX => "never".to_string(),
        n => format!("from {n} rows"),
    };
    let decode_first = format!(
        "{} (on cooperative matrices {}); tiled f32 GEMM: {}; cooperative GEMM: {}; \
         {} decoded-weight buffers; {} calls a command encoder{}{}",
        from(stacks[0].fused[0].decode_first_min_rows()),
        from(stacks[0].fused_coop[0].decode_first_min_rows()),
        from(stacks[0].plain[0].tiled_gemm_min_rows()),
        from(stacks[0].plain_coop[0].coop_gemm_min_rows()),
        dev.decoded_buffers(),
        a.calls_per_encoder
            .map_or("all".to_string(), |n| n.to_string()),
        a.decode_ahead.as_ref().map_or(String::new(), |n| format!(
            " (--decode-ahead: command buffers of {n:?} calls in turn, `LinearDevice::encode_calls`)"
        )),
        if a.tables_built {
            "; decode tables built in every workgroup"
        } else {
            ""
        }
    );
    println!(
        "`bench_resident`, {} ({} layers of {:?}, {} copies; fused layers decode first: {}; \
         wall clock, ms a forward: record / run / pipelined; fused/plain of run / pipelined)\n",
        dev.gpu().adapter_name(),
        a.layers,
        a.shapes,
        a.copies,
        decode_first
    );
    println!("| M | pass | activations | fused f32 | plain f32 | fused/plain | fused coop | plain coop | fused/plain coop |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &m in &a.ms {
        let x: Vec<f32> = (0..m * max_k).map(|_| gaussian(&mut rng)).collect();
        let storage = |bytes: usize| {
            dev.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench_resident"),
                size: (bytes.max(16) as u64).next_multiple_of(16),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let xb = storage(x.len() * 4);
        dev.queue().write_buffer(&xb, 0, bytemuck::cast_slice(&x));
        // (one set of outputs, or one a layer with --own-outputs)
        let sets = if a.own_outputs { a.layers } else { 1 };
        let ys: Vec<Vec<wgpu::Buffer>> = (0..sets)
            .map(|_| a.shapes.iter().map(|s| storage(m * s.0 * 4)).collect())
            .collect();
        // (every call of a forward: its layer, activations and outputs)
        let calls = |pick: &dyn Fn(&Stack, usize) -> &dyn GpuLinear| {
            let mut calls = Vec::new();
            for l in 0..a.layers {
                let st = &stacks[l % stacks.len()];
                for (i, &(_, k)) in a.shapes.iter().enumerate() {
                    let xr = ecq::gpu::BufferRange::new(&xb, 0, (m * k * 4) as u64);
                    calls.push((pick(st, i), xr, (&ys[l % sets][i]).into()));
                }
            }
            calls
        };
        let record = |pick: &dyn Fn(&Stack, usize) -> &dyn GpuLinear,
                      order: ActivationOrder,
                      prepared: Option<&[ecq::linear::PreparedForward]>|
         -> Result<Vec<wgpu::CommandBuffer>, Box<dyn std::error::Error>> {
            let mut cbs = Vec::new();
            if let (Some(sizes), Some(prepared)) = (&a.decode_ahead, prepared) {
                let mut at = 0;
                for &n in sizes.iter().cycle() {
                    if at == prepared.len() {
                        break;
                    }
                    let end = (at + n).min(prepared.len());
                    cbs.push(dev.encode_calls(&prepared[at..end])?);
                    at = end;
                }
                return Ok(cbs);
            }
            let group = a.calls_per_encoder.unwrap_or(a.layers * a.shapes.len());
            let all = calls(pick);
            for (g, layers) in all.chunks(group.max(1)).enumerate() {
                let mut enc = dev.device().create_command_encoder(&Default::default());
                let mut pass = a.one_pass.then(|| {
                    enc.begin_compute_pass(&Default::default())
                        .forget_lifetime()
                });
                if let Some(prepared) = prepared {
                    let mine = prepared.iter().skip(g * group).take(layers.len());
                    match pass.as_mut() {
                        Some(p) => mine.for_each(|call| call.record_in(p)),
                        None => mine.for_each(|call| call.record(&mut enc)),
                    }
                } else {
                    for &(layer, xr, y) in layers {
                        match pass.as_mut() {
                            Some(p) => layer.record_forward_in(p, xr, order, m, y)?,
                            None => layer.record_forward(&mut enc, xr, order, m, y)?,
                        }
                    }
                }
                drop(pass);
                cbs.push(enc.finish());
            }
            Ok(cbs)
        };
        // (record, run, pipelined): medians of the recording and of submit-to-wait, one
        // forward at a time; then `rounds` forwards back to back, two in flight, the wall
        // clock of all over their number
        let time = |pick: &dyn Fn(&Stack, usize) -> &dyn GpuLinear,
                    order: ActivationOrder|
         -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
            let prepared = if a.prepared {
                let made: Result<Vec<_>, _> = calls(pick)
                    .into_iter()
                    .map(|(layer, xr, y)| layer.prepare_forward(xr, order, m, y))
                    .collect();
                Some(made?)
            } else {
                None
            };
            let record = |pick: &dyn Fn(&Stack, usize) -> &dyn GpuLinear, order| {
                record(pick, order, prepared.as_deref())
            };
            // (warm up for a second: the SM clock idles at 345 MHz on the H200 and takes
            // longer than one forward to come back)
            let warm = Instant::now();
            while warm.elapsed().as_secs_f64() < 1.0 {
                dev.queue().submit(record(pick, order)?);
                dev.gpu().wait()?;
            }
            let mut rec = Vec::new();
            let mut run = Vec::new();
            for _ in 0..a.rounds {
                let s = Instant::now();
                let cb = record(pick, order)?;
                rec.push(s.elapsed().as_secs_f64() * 1e3);
                let s = Instant::now();
                dev.queue().submit(cb);
                dev.gpu().wait()?;
                run.push(s.elapsed().as_secs_f64() * 1e3);
            }
            let s = Instant::now();
            // (two forwards in flight: each is recorded and submitted while the one before
            // runs, and the host waits for a forward only once the next one is queued)
            let mut running: Option<wgpu::SubmissionIndex> = None;
            for _ in 0..a.rounds {
                let queued = dev.queue().submit(record(pick, order)?);
                if let Some(before) = running.replace(queued) {
                    dev.device()
                        .poll(wgpu::PollType::Wait {
                            submission_index: Some(before),
                            timeout: None,
                        })
                        .map_err(|e| e.to_string())?;
                }
            }
            dev.gpu().wait()?;
            let pipelined = s.elapsed().as_secs_f64() * 1e3 / a.rounds as f64;
            for st in &stacks {
                for (l, lc) in st.fused.iter().zip(&st.fused_coop) {
                    l.check_recorded()?;
                    lc.check_recorded()?;
                }
            }
            rec.sort_by(f64::total_cmp);
            run.sort_by(f64::total_cmp);
            Ok((rec[rec.len() / 2], run[run.len() / 2], pipelined))
        };
        // --prebuilt, one token: the same launches made once (`vectors_lane_order_dispatch`,
        // the plain GEMV's `gemv_lane_order_dispatch`) and recorded into one compute pass a
        // forward: what recording costs without making bind groups, and what the GPU takes
        // without a pass a call
        if a.prebuilt && m == 1 {
            let registry = dev.gpu().registry();
            let sets = ys.len();
            let mut fused = Vec::new();
            let mut plain = Vec::new();
            for l in 0..a.layers {
                let st = &stacks[l % stacks.len()];
                for (i, y) in ys[l % sets].iter().enumerate() {
                    fused.push(st.fused[i].vectors_lane_order_dispatch(&xb, y, 1)?);
                    let g = &st.plain_gemv[i];
                    plain.push(g.gemv_lane_order_dispatch(dev.device(), registry, &xb, y)?);
                }
            }
            for pass in 1..=2 {
                let mut cells = Vec::new();
                for launches in [&fused, &plain] {
                    let forward = || -> Result<(f64, f64), Box<dyn std::error::Error>> {
                        let s = Instant::now();
                        let mut enc = dev.device().create_command_encoder(&Default::default());
                        {
                            let mut cp = enc.begin_compute_pass(&Default::default());
                            for d in launches {
                                d.record(&mut cp);
                            }
                        }
                        let cb = enc.finish();
                        let rec = s.elapsed().as_secs_f64() * 1e3;
                        let s = Instant::now();
                        dev.queue().submit([cb]);
                        dev.gpu().wait()?;
                        Ok((rec, s.elapsed().as_secs_f64() * 1e3))
                    };
                    let warm = Instant::now();
                    while warm.elapsed().as_secs_f64() < 1.0 {
                        forward()?;
                    }
                    let mut t: Vec<(f64, f64)> =
                        (0..a.rounds).map(|_| forward()).collect::<Result<_, _>>()?;
                    t.sort_by(|a, b| a.1.total_cmp(&b.1));
                    let rec = {
                        let mut r: Vec<f64> = t.iter().map(|v| v.0).collect();
                        r.sort_by(f64::total_cmp);
                        r[r.len() / 2]
                    };
                    cells.push((rec, t[t.len() / 2].1));
                }
                println!(
                    "| 1 | {pass} | prebuilt, lanes | {:.2} / {:.2} / - | {:.2} / {:.2} / - | {:.2}x / - | - | - | - |",
                    cells[0].0,
                    cells[0].1,
                    cells[1].0,
                    cells[1].1,
                    cells[0].1 / cells[1].1
                );
            }
        }
        for pass in 1..=a.passes {
            for &order in &a.orders {
                let (f, p) = if a.coop_only {
                    (None, None)
                } else {
                    (
                        Some(time(&|st, i| &st.fused[i], order)?),
                        Some(time(&|st, i| &st.plain[i], order)?),
                    )
                };
                let (fc, pc) = if coop_on && m >= ecq::linear::COOP_MIN_ROWS {
                    (
                        Some(time(&|st, i| &st.fused_coop[i], order)?),
                        Some(time(&|st, i| &st.plain_coop[i], order)?),
                    )
                } else {
                    (None, None)
                };
                let cell = |t: Option<(f64, f64, f64)>| {
                    t.map_or("-".to_string(), |(r, g, p)| {
                        format!("{r:.2} / {g:.2} / {p:.2}")
                    })
                };
                let ratio = |f: Option<(f64, f64, f64)>, p: Option<(f64, f64, f64)>| match (f, p) {
                    (Some(f), Some(p)) => format!("{:.2}x / {:.2}x", f.1 / p.1, f.2 / p.2),
                    _ => "-".to_string(),
                };
                let how = match (a.prepared, a.one_pass) {
                    (true, true) => ", prepared, one pass",
                    (true, false) => ", prepared",
                    (false, true) => ", one pass",
                    (false, false) => "",
                };
                println!(
                    "| {m} | {pass} | {order:?}{how} | {} | {} | {} | {} | {} | {} |",
                    cell(f),
                    cell(p),
                    ratio(f, p),
                    cell(fc),
                    cell(pc),
                    ratio(fc, pc),
                );
            }
        }
    }
    Ok(())
}
