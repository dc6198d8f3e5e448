//! Coded high bits, raw low bits (`ecq::rans::SplitMatrix`), measured for size on the real
//! model (BENCHMARKS.md, issue 5, step 43). Coding only the high 2 bits of 4-bit weights puts
//! four weights in a byte symbol, so a rANS step yields twice the weights; the low 2 bits are
//! stored raw. What does that cost, for each quantizer?
//!
//! `cargo test --release --test rans_split -- --ignored --nocapture split_sweep` prints the
//! table; the other test checks the split's exact size on synthetic weights.

mod rans_common;

use ecq::dtype::FloatDType;
use ecq::quant::{quantize_absmax, quantize_affine, AbsmaxMode, AffineParams};
use ecq::rans::{
    encode, entropy_bits, EncodeOptions, SplitMatrix, DEFAULT_CHUNK_SYMBOLS, SPLIT_MIN_CHUNKS,
};
use rans_common::{real_model_weights, FMatrix};

/// One quantizer's 4-bit weights (values 0..16) for a matrix.
type Quantizer = fn(&FMatrix) -> Vec<u8>;

fn mlx(f: &FMatrix, group: u32) -> Vec<u8> {
    quantize_affine(
        &f.w,
        f.rows,
        f.cols,
        FloatDType::F32,
        AffineParams::new(4, group).unwrap(),
    )
    .unwrap()
    .symbols()
}

/// The split's stored size is the coded high bits, two raw bits per weight and a 4-byte
/// checksum, exactly; with half the symbols per chunk it has the chunks of the whole coding
/// (the geometry the GPU measurements compare), and the default options then shrink them to
/// `SPLIT_MIN_CHUNKS` decoders down to 8192 weights per chunk.
#[test]
fn split_size_is_exact() {
    let (rows, cols) = (64, 512);
    let q: Vec<u8> = (0..rows * cols)
        .map(|i| ((i * 2654435761usize) >> 7) as u8 & 15)
        .collect();
    let whole = encode(&q, rows, cols, 4, &EncodeOptions::default()).unwrap();
    let opts = SplitMatrix::default_options();
    assert_eq!(opts.chunk_symbols, DEFAULT_CHUNK_SYMBOLS / 2);
    assert_eq!(opts.min_chunks, ecq::rans::SPLIT_MIN_CHUNKS);
    let same_chunks = EncodeOptions {
        min_chunks: 0,
        ..opts.clone()
    };
    let s = SplitMatrix::encode(&q, rows, cols, 4, 2, &same_chunks).unwrap();
    assert_eq!(
        s.total_bytes(),
        s.high().total_bytes() + rows * cols / 4 + 4
    );
    assert_eq!(s.high().n_chunks(), whole.n_chunks());
    assert_eq!(s.high().chunk_rows(), whole.chunk_rows());
    assert_eq!(s.decode_symbols().unwrap(), q);
    // 8192 / 512 = 16 rows per chunk instead of all 64; the tile keeps its 64 rows
    let s = SplitMatrix::encode(&q, rows, cols, 4, 2, &opts).unwrap();
    assert_eq!(
        (
            s.high().chunk_rows(),
            s.high().n_chunks(),
            s.high().n_tiles()
        ),
        (16, 4, 1)
    );
    assert_eq!(s.decode_symbols().unwrap(), q);
}

#[test]
#[ignore = "prints the split size table (real model); run with --ignored --nocapture"]
fn split_sweep() {
    let quantizers: [(&str, u32, Quantizer); 5] = [
        ("MLX affine g32 4-bit", 32, |m| mlx(m, 32)),
        ("MLX affine g64 4-bit", 64, |m| mlx(m, 64)),
        ("MLX affine g128 4-bit", 128, |m| mlx(m, 128)),
        ("absmax per-channel 4-bit", 64, |m| {
            quantize_absmax(&m.w, m.rows, m.cols, 4, AbsmaxMode::PerChannel)
                .unwrap()
                .symbols
        }),
        ("absmax per-tensor 4-bit", 64, |m| {
            quantize_absmax(&m.w, m.rows, m.cols, 4, AbsmaxMode::PerTensor)
                .unwrap()
                .symbols
        }),
    ];
    println!("real model all-MiniLM-L6-v2; whole: default EncodeOptions; split: chunk_symbols {} (the same chunks), and SplitMatrix::default_options (min_chunks {SPLIT_MIN_CHUNKS}, the `ecq encode --split` default)", DEFAULT_CHUNK_SYMBOLS / 2);
    println!("| quantizer | entropy H(q) bits/weight (pooled histogram) | H(high 2 bits) | H(low 2 \\| high 2) | whole: coded bits/weight | split: coded high + 2 raw bits/weight | split / whole | split, default options | rANS steps per weight |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, group, quantize) in quantizers {
        let ms = real_model_weights(group).unwrap_or_else(|| rans_common::model_missing());
        let (mut whole, mut split, mut split_default, mut n) = (0.0, 0.0, 0.0, 0usize);
        let (mut cq, mut ch) = (vec![0u64; 16], vec![0u64; 4]);
        for m in &ms {
            let q = quantize(m);
            for &v in &q {
                cq[v as usize] += 1;
                ch[(v >> 2) as usize] += 1;
            }
            whole += (encode(&q, m.rows, m.cols, 4, &EncodeOptions::default())
                .unwrap()
                .total_bytes()
                * 8) as f64;
            let opts = SplitMatrix::default_options();
            let same_chunks = EncodeOptions {
                min_chunks: 0,
                ..opts.clone()
            };
            let s = SplitMatrix::encode(&q, m.rows, m.cols, 4, 2, &same_chunks).unwrap();
            assert_eq!(s.decode_symbols().unwrap(), q);
            split += (s.total_bytes() * 8) as f64;
            let s = SplitMatrix::encode(&q, m.rows, m.cols, 4, 2, &opts).unwrap();
            split_default += (s.total_bytes() * 8) as f64;
            n += q.len();
        }
        let w = n as f64;
        let (hq, hh) = (entropy_bits(&cq) / w, entropy_bits(&ch) / w);
        println!(
            "| {name} | {hq:.3} | {hh:.3} | {:.3} | {:.3} | {:.3} | {:+.1}% | {:.3} ({:+.1}%) | 0.5 -> 0.25 |",
            hq - hh,
            whole / w,
            split / w,
            100.0 * (split / whole - 1.0),
            split_default / w,
            100.0 * (split_default / whole - 1.0)
        );
    }
}

/// The window split (`SplitMatrix::encode_window`: one coded flag per weight, eight weights per
/// symbol, three raw bits) against whole symbols and the 2 + 2 split, each as `ecq encode`
/// would store it for the GPU (row pairs, the default options of each form).
#[test]
#[ignore = "prints the window split size table (real model); run with --ignored --nocapture"]
fn window_sweep() {
    use ecq::rans::SplitOrder;
    println!("real model all-MiniLM-L6-v2, MLX affine 4-bit; whole: default EncodeOptions; 2 + 2 split: SplitMatrix::default_options; window: SplitMatrix::default_window_options; both splits in row pairs (the 2 + 2 split where K is a multiple of 512, else rows)");
    println!("| group | whole bits/weight | 2 + 2 split | window split | window / 2 + 2 | window starts chosen | rANS steps per weight (whole / 2 + 2 / window) |");
    println!("|---|---|---|---|---|---|---|");
    for group in [32u32, 64, 128] {
        let ms = real_model_weights(group).unwrap_or_else(|| rans_common::model_missing());
        let (mut whole, mut split, mut window, mut n) = (0.0, 0.0, 0.0, 0usize);
        let mut starts = std::collections::BTreeMap::new();
        for m in &ms {
            let q = mlx(m, group);
            whole += (encode(&q, m.rows, m.cols, 4, &EncodeOptions::default())
                .unwrap()
                .total_bytes()
                * 8) as f64;
            // (row pairs where the 2 + 2 split allows them, as `ecq encode --row-pairs`)
            let order = if m.rows % 2 == 0 && m.cols % 512 == 0 {
                SplitOrder::RowPairs
            } else {
                SplitOrder::Rows
            };
            let s = SplitMatrix::encode_ordered(
                &q,
                m.rows,
                m.cols,
                4,
                2,
                &SplitMatrix::default_options(),
                order,
            )
            .unwrap();
            split += (s.total_bytes() * 8) as f64;
            let w = SplitMatrix::encode_window(
                &q,
                m.rows,
                m.cols,
                &SplitMatrix::default_window_options(),
                SplitOrder::RowPairs,
            )
            .unwrap();
            assert_eq!(w.decode_symbols().unwrap(), q);
            window += (w.total_bytes() * 8) as f64;
            *starts.entry(w.window().unwrap()).or_insert(0) += 1;
            n += q.len();
        }
        let w = n as f64;
        println!(
            "| g{group} | {:.3} | {:.3} | {:.3} | {:+.2}% | {starts:?} | 0.5 / 0.25 / 0.125 |",
            whole / w,
            split / w,
            window / w,
            100.0 * (window / split - 1.0)
        );
    }
}
