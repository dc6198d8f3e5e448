//! End to end on a real model (issue 6): compress sentence-transformers all-MiniLM-L6-v2 (MLX
//! affine 4-bit, group 64, then ecq rANS coding), load every coded linear layer from the coded
//! directory onto the GPU, run each with a fixed seeded activation vector (`forward`: the fused
//! GEMV on GPUs with 32-wide subgroups; elsewhere one row decodes first,
//! `ecq::linear::DECODE_FIRST_MIN_ROWS_PORTABLE`)
//! and a batch (`forward_batch`: whole-coded layers decode their weights first and run the
//! plain kernels, `ecq::linear::DECODE_FIRST_MIN_ROWS_NOT_WINDOW`; window splits do so from
//! `ecq::linear::DECODE_FIRST_MIN_ROWS` rows where 32-wide subgroups run their batched
//! kernel), and compare
//! with the same layer
//! computed on the CPU from the original 4-bit weights; the batch also recorded on activations
//! and outputs in GPU buffers (`GpuLinear::prepare_forward`, made into launches once and run on
//! that batch and on a second one), which must give `forward_batch`'s outputs bit for bit. Then run one whole BERT layer
//! (self-attention, 12 heads, output dense + residual + LayerNorm, intermediate dense + GELU,
//! output dense + residual + LayerNorm) on a seeded sequence of hidden states with the six linear
//! layers entropy-coded on the GPU, against the same layer with the f32 weights and with the
//! 4-bit weights on the CPU, and print the sizes. The model is coded as `ecq encode` codes it by
//! default (whole symbols), and the loader re-codes the 4-bit layers of a window split's shapes
//! as window splits (here the six output dense layers, K = 1536; the others have K = 384);
//! `--stored-form` uploads every layer as stored (`LinearOptions::keep_stored_form`).
//!
//! ```text
//! cargo run --release --example minilm_linear -- [--model DIR] [--work DIR] [--layer 0]
//!     [--tokens 16] [--batch 16] [--stored-form]
//! ```
//!
//! Defaults: the model cached by `scripts/fetch-model.sh` (`.cache/all-MiniLM-L6-v2`), a fresh
//! temporary work directory. Runs on whatever adapter wgpu picks (`WGPU_ADAPTER_NAME`,
//! `WGPU_BACKEND`); no platform-specific code. Exits with status 1 if a layer is outside the
//! tolerance of `ecq::linear::tolerance`.

use std::path::PathBuf;

use ecq::container::encode_model;
use ecq::linear::{
    tolerance, ActivationOrder, CpuLinear, EntropyCodedModel, GpuLinear, Linear, LinearDevice,
    LinearOptions,
};
use ecq::model::quantize::{quantize_to_dir, QuantizeOptions};
use ecq::model::write::WriteOptions;
use ecq::model::Model;
use ecq::rans::EncodeOptions;
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Args {
    model: PathBuf,
    work: Option<PathBuf>,
    layer: usize,
    tokens: usize,
    batch: usize,
    stored_form: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/all-MiniLM-L6-v2"),
        work: None,
        layer: 0,
        tokens: 16,
        batch: 16,
        stored_form: false,
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--stored-form") {
        args.remove(i);
        a.stored_form = true;
    }
    for pair in args.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--model" => a.model = v.into(),
            "--work" => a.work = Some(v.into()),
            "--layer" => a.layer = v.parse().expect("--layer N"),
            "--tokens" => a.tokens = v.parse().expect("--tokens N"),
            "--batch" => a.batch = v.parse().expect("--batch N"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Per-layer comparison of a GPU result with the CPU reference: (max abs diff, max abs diff /
/// max |y|, largest error / tolerance).
fn compare(cpu: &CpuLinear, x: &[f32], m: usize, got: &[f32]) -> (f64, f64, f64) {
    let (want, sum_abs) = cpu.reference(x, m).expect("reference");
    let k = cpu.in_features();
    let (mut max_abs, mut max_y, mut worst) = (0f64, 0f64, 0f64);
    for i in 0..want.len() {
        let e = (got[i] as f64 - want[i]).abs();
        max_abs = max_abs.max(e);
        max_y = max_y.max(want[i].abs());
        worst = worst.max(e / tolerance(k, sum_abs[i]));
    }
    (max_abs, max_abs / max_y.max(f64::MIN_POSITIVE), worst)
}

/// erf, Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, below f32 resolution of GELU's
/// output scale); the same function for all three variants of the layer.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

fn layer_norm(x: &mut [f32], dim: usize, w: &[f32], b: &[f32], eps: f64) {
    for row in x.chunks_exact_mut(dim) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            *v = ((*v as f64 - mean) * inv * w[i] as f64 + b[i] as f64) as f32;
        }
    }
}

/// The six linear layers of one BERT layer.
struct BertLinears<'a> {
    q: &'a dyn Linear,
    k: &'a dyn Linear,
    v: &'a dyn Linear,
    attn_out: &'a dyn Linear,
    inter: &'a dyn Linear,
    out: &'a dyn Linear,
}

/// LayerNorm parameters and shape of one BERT layer.
struct BertNorms {
    ln1: (Vec<f32>, Vec<f32>),
    ln2: (Vec<f32>, Vec<f32>),
    heads: usize,
    eps: f64,
}

/// One BERT encoder layer on `t` tokens of hidden states `h` (row-major `t x d`), every linear
/// layer through `forward_batch`, everything else on the CPU.
fn bert_layer(
    lin: &BertLinears<'_>,
    n: &BertNorms,
    h: &[f32],
    t: usize,
) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let d = lin.q.in_features();
    let hd = d / n.heads;
    let q = lin.q.forward_batch(h, t)?;
    let k = lin.k.forward_batch(h, t)?;
    let v = lin.v.forward_batch(h, t)?;
    let mut ctx = vec![0f32; t * d];
    let scale = 1.0 / (hd as f64).sqrt();
    for head in 0..n.heads {
        let o = head * hd;
        for i in 0..t {
            let scores: Vec<f64> = (0..t)
                .map(|j| {
                    (0..hd)
                        .map(|c| q[i * d + o + c] as f64 * k[j * d + o + c] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..hd {
                let s: f64 = (0..t).map(|j| e[j] / z * v[j * d + o + c] as f64).sum();
                ctx[i * d + o + c] = s as f32;
            }
        }
    }
    let mut h1 = lin.attn_out.forward_batch(&ctx, t)?;
    for (a, b) in h1.iter_mut().zip(h) {
        *a += b;
    }
    layer_norm(&mut h1, d, &n.ln1.0, &n.ln1.1, n.eps);
    let inter: Vec<f32> = lin
        .inter
        .forward_batch(&h1, t)?
        .into_iter()
        .map(gelu)
        .collect();
    let mut h2 = lin.out.forward_batch(&inter, t)?;
    for (a, b) in h2.iter_mut().zip(&h1) {
        *a += b;
    }
    layer_norm(&mut h2, d, &n.ln2.0, &n.ln2.1, n.eps);
    Ok(h2)
}

fn linears<'a>(v: &[&'a dyn Linear]) -> BertLinears<'a> {
    BertLinears {
        q: v[0],
        k: v[1],
        v: v[2],
        attn_out: v[3],
        inter: v[4],
        out: v[5],
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse_args();
    let tmp = tempfile::tempdir()?;
    let work = a.work.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let (qdir, cdir) = (work.join("mlx-4bit-g64"), work.join("ecq"));
    let quiet = ProgressBar::hidden();

    // 1. compress: MLX affine 4-bit g64, then rANS coding
    let float = Model::open(&a.model).map_err(|e| format!("{e} (run scripts/fetch-model.sh)"))?;
    quantize_to_dir(
        &float,
        &qdir,
        &QuantizeOptions {
            bits: 4,
            group_size: 64,
        },
        &WriteOptions::default(),
        &quiet,
    )?;
    let mlx = Model::open(&qdir)?;
    let summary = encode_model(&mlx, &cdir, &EncodeOptions::default(), &quiet)?;

    // 2. load every coded layer onto the GPU (uploaded from the memory-mapped coded file)
    let dev = LinearDevice::new()?;
    println!("adapter: {}", dev.gpu().describe());
    let opts = LinearOptions {
        keep_stored_form: a.stored_form,
        ..Default::default()
    };
    let coded = EntropyCodedModel::open_with(&dev, &cdir, &opts)?;
    let recoded = coded
        .layer_paths()
        .into_iter()
        .filter(|p| coded.layer(p).is_ok_and(|l| l.window().is_some()))
        .count();
    println!(
        "{} coded layers loaded from {} ({recoded} re-coded as window splits)\n",
        coded.layer_paths().len(),
        cdir.display()
    );

    // 3. every layer: GPU (coded) vs CPU (original 4-bit weights)
    let cpu_layer = |path: &str| -> Result<CpuLinear, Box<dyn std::error::Error>> {
        let q = mlx.quantized_module(path)?.to_matrix()?;
        let bias = mlx.get(&format!("{path}.bias")).and_then(|t| t.to_f32());
        Ok(CpuLinear::from_quantized(path, &q, bias)?)
    };
    println!(
        "| layer | R x K | forward max abs diff | forward max rel diff | forward err/tol | forward_batch (M = {}) max abs diff | max rel diff | err/tol | recorded on GPU buffers (prepared once, two batches) = forward_batch |",
        a.batch
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut worst = 0f64;
    let mut recorded_differs = false;
    for path in coded.layer_paths() {
        let gpu = coded.layer(path)?;
        let cpu = cpu_layer(path)?;
        let k = gpu.in_features();
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let x: Vec<f32> = (0..k).map(|_| gaussian(&mut rng)).collect();
        let xb: Vec<f32> = (0..a.batch * k).map(|_| gaussian(&mut rng)).collect();
        let (d1, r1, w1) = compare(&cpu, &x, 1, &gpu.forward(&x)?);
        let yb = gpu.forward_batch(&xb, a.batch)?;
        let (d2, r2, w2) = compare(&cpu, &xb, a.batch, &yb);
        // the same batch recorded on activations and outputs in GPU buffers: bit for bit
        let (xg, yg) = (
            dev.activation_buffer(xb.len()),
            dev.activation_buffer(yb.len()),
        );
        // (made into launches once, then run on this batch and on another one)
        let cols = ActivationOrder::Columns;
        let prepared = gpu.prepare_forward((&xg).into(), cols, a.batch, (&yg).into())?;
        let run = |x: &[f32], want: &[f32]| -> Result<bool, Box<dyn std::error::Error>> {
            dev.queue().write_buffer(&xg, 0, bytemuck::cast_slice(x));
            let mut enc = dev.device().create_command_encoder(&Default::default());
            prepared.record(&mut enc);
            dev.queue().submit([enc.finish()]);
            gpu.check_recorded()?;
            let got = dev.read_f32((&yg).into())?;
            Ok(got
                .iter()
                .zip(want)
                .all(|(r, f)| r.to_bits() == f.to_bits()))
        };
        let xb2: Vec<f32> = (0..a.batch * k).map(|_| gaussian(&mut rng)).collect();
        let same = run(&xb, &yb)? && run(&xb2, &gpu.forward_batch(&xb2, a.batch)?)?;
        recorded_differs |= !same;
        worst = worst.max(w1).max(w2);
        println!(
            "| {path} | {} x {k} | {d1:.2e} | {r1:.2e} | {w1:.3} | {d2:.2e} | {r2:.2e} | {w2:.3} | {} |",
            gpu.out_features(),
            if same { "yes" } else { "NO" }
        );
    }
    println!(
        "\nworst error / tolerance over all layers: {worst:.3} (tolerance: ecq::linear::tolerance, 2^-24 * (K + 64) * sum |terms|)\n"
    );

    // 4. one BERT layer: coded on the GPU vs f32 and 4-bit on the CPU
    let cfg = coded.config().cloned().unwrap_or_default();
    let d = cfg["hidden_size"].as_u64().unwrap_or(384) as usize;
    let heads = cfg["num_attention_heads"].as_u64().unwrap_or(12) as usize;
    let eps = cfg["layer_norm_eps"].as_f64().unwrap_or(1e-12);
    let p = format!("encoder.layer.{}", a.layer);
    let names = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ];
    let f32_tensor = |name: &str| -> Result<Vec<f32>, String> {
        float
            .get(name)
            .and_then(|t| t.to_f32())
            .ok_or_else(|| format!("{name} missing from the float model"))
    };
    let norms = BertNorms {
        ln1: (
            f32_tensor(&format!("{p}.attention.output.LayerNorm.weight"))?,
            f32_tensor(&format!("{p}.attention.output.LayerNorm.bias"))?,
        ),
        ln2: (
            f32_tensor(&format!("{p}.output.LayerNorm.weight"))?,
            f32_tensor(&format!("{p}.output.LayerNorm.bias"))?,
        ),
        heads,
        eps,
    };
    let mut dense = Vec::new();
    let mut q4 = Vec::new();
    for n in names {
        let path = format!("{p}.{n}");
        let w = float
            .get(&format!("{path}.weight"))
            .ok_or_else(|| format!("{path}.weight missing"))?;
        let (r, k) = (w.shape()[0], w.shape()[1]);
        let bias = f32_tensor(&format!("{path}.bias")).ok();
        dense.push(CpuLinear::from_dense(
            &path,
            r,
            k,
            w.to_f32().ok_or("float weight")?,
            bias,
        )?);
        q4.push(cpu_layer(&path)?);
    }
    let gpu: Vec<&dyn Linear> = names
        .iter()
        .map(|n| coded.layer(&format!("{p}.{n}")).map(|l| l as &dyn Linear))
        .collect::<Result<_, _>>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let h: Vec<f32> = (0..a.tokens * d).map(|_| gaussian(&mut rng)).collect();
    let y_f32 = bert_layer(
        &linears(&dense.iter().map(|l| l as &dyn Linear).collect::<Vec<_>>()),
        &norms,
        &h,
        a.tokens,
    )?;
    let y_q4 = bert_layer(
        &linears(&q4.iter().map(|l| l as &dyn Linear).collect::<Vec<_>>()),
        &norms,
        &h,
        a.tokens,
    )?;
    let y_gpu = bert_layer(&linears(&gpu), &norms, &h, a.tokens)?;
    println!(
        "BERT layer {} ({} tokens of seeded N(0,1) hidden states, d = {d}, {heads} heads, GELU erf form):",
        a.layer, a.tokens
    );
    println!("| compared | cosine similarity | max abs diff |");
    println!("|---|---|---|");
    for (label, x, y) in [
        ("coded 4-bit on GPU vs f32 weights (CPU)", &y_gpu, &y_f32),
        ("4-bit weights (CPU) vs f32 weights (CPU)", &y_q4, &y_f32),
        ("coded 4-bit on GPU vs 4-bit weights (CPU)", &y_gpu, &y_q4),
    ] {
        println!(
            "| {label} | {:.9} | {:.3e} |",
            cosine(x, y),
            max_abs_diff(x, y)
        );
    }

    // 5. sizes
    let dir_bytes = |m: &Model| m.file_bytes();
    let coded_model = Model::open(&cdir)?;
    println!("\n| form | safetensors bytes | bits/weight of the coded matrices |");
    println!("|---|---|---|");
    println!("| f32 original | {} | 32 |", dir_bytes(&float));
    println!(
        "| MLX 4-bit g64 | {} | {:.3} (+ {:.3} scales/biases) |",
        dir_bytes(&mlx),
        summary.packed_bits_per_weight(),
        summary.side_bits_per_weight()
    );
    println!(
        "| ecq coded | {} | {:.3} (entropy bound {:.3}; + {:.3} scales/biases) |",
        dir_bytes(&coded_model),
        summary.coded_bits_per_weight(),
        summary.entropy_bits_per_weight(),
        summary.side_bits_per_weight()
    );
    // what the coded layers hold on the GPU (coded tensors, and scales and biases in the
    // narrowest exact format: 16-bit for these f16 values), against the MLX 4-bit bytes
    let weights = summary.weights().max(1) as f64;
    let side = coded
        .layer_paths()
        .first()
        .map(|p| coded.layer(p).map(|l| l.side_format()))
        .transpose()?;
    println!(
        "| ecq coded, held on the GPU ({} layers, scales/biases as {:?}) | {} | {:.3} (all included) |",
        coded.layer_paths().len(),
        side.unwrap_or_default(),
        coded.gpu_bytes(),
        coded.gpu_bytes() as f64 * 8.0 / weights
    );
    if worst > 1.0 {
        eprintln!("FAILED: a layer is outside the tolerance (error / tolerance {worst:.3})");
        std::process::exit(1);
    }
    if recorded_differs {
        eprintln!("FAILED: a layer's recorded call differs from its forward_batch");
        std::process::exit(1);
    }
    Ok(())
}
