//! Symbols of four 4-bit weights, measured for size before anyone builds them (BENCHMARKS.md,
//! issue 5, step 40). The format codes two 4-bit weights per byte symbol; with four, a rANS
//! step yields twice the weights (step 39: the fused GEMV 1.68x faster), but a 16-bit tuple
//! does not fit the byte alphabet or an 11-bit slot table. The candidate: per matrix, the 255
//! most frequent tuples become byte symbols 0..254 through a dictionary, every other tuple the
//! escape symbol 255 plus its 16 bits in a side list. What does that cost in bits, on the real
//! model, for each quantizer?
//!
//! `cargo test --release --test rans_tuples -- --ignored --nocapture tuple_sweep` prints the
//! table; the other tests check the mapping the sweep relies on.

mod rans_common;

use ecq::dtype::FloatDType;
use ecq::quant::{quantize_absmax, quantize_affine, AbsmaxMode, AffineParams};
use ecq::rans::{encode, EncodeOptions};
use rand::{Rng, SeedableRng};
use rans_common::{real_model_weights, FMatrix};

/// The symbol standing for a tuple outside the dictionary.
const ESCAPE: u8 = 255;

/// A matrix's 4-bit weights as 4-weight tuples through a dictionary.
struct TupleSymbols {
    /// One byte per tuple: its dictionary index, or ESCAPE.
    indices: Vec<u8>,
    /// The tuples of indices 0..len (at most 255), most frequent first.
    dictionary: Vec<u16>,
    /// The escaped tuples, in order.
    escapes: Vec<u16>,
}

/// Weights `4t..4t+3` (values < 16) as one 16-bit tuple, weight `4t + i` in bits `4i..4i+4`.
fn tuples(q: &[u8]) -> Vec<u16> {
    assert_eq!(q.len() % 4, 0, "whole tuples only");
    q.chunks_exact(4)
        .map(|c| {
            c.iter().enumerate().fold(0u16, |t, (i, &v)| {
                assert!(v < 16, "4-bit weights only");
                t | (u16::from(v) << (4 * i))
            })
        })
        .collect()
}

/// The 255 most frequent tuples (ties: the smaller tuple first) as the dictionary.
fn tuple_symbols(q: &[u8]) -> TupleSymbols {
    let ts = tuples(q);
    let mut counts = vec![0u64; 1 << 16];
    for &t in &ts {
        counts[t as usize] += 1;
    }
    let mut order: Vec<u16> = (0..=u16::MAX).filter(|&t| counts[t as usize] > 0).collect();
    order.sort_by_key(|&t| (std::cmp::Reverse(counts[t as usize]), t));
    order.truncate(ESCAPE as usize);
    let mut index = vec![ESCAPE; 1 << 16];
    for (i, &t) in order.iter().enumerate() {
        index[t as usize] = i as u8;
    }
    let mut escapes = Vec::new();
    let indices = ts
        .iter()
        .map(|&t| {
            let i = index[t as usize];
            if i == ESCAPE {
                escapes.push(t);
            }
            i
        })
        .collect();
    TupleSymbols {
        indices,
        dictionary: order,
        escapes,
    }
}

/// The weights back from [`tuple_symbols`].
fn weights_of(s: &TupleSymbols) -> Vec<u8> {
    let mut esc = s.escapes.iter();
    let mut out = Vec::with_capacity(s.indices.len() * 4);
    for &i in &s.indices {
        let t = if i == ESCAPE {
            *esc.next()
                .expect("an escaped tuple for every escape symbol")
        } else {
            s.dictionary[i as usize]
        };
        out.extend((0..4).map(|k| ((t >> (4 * k)) & 15) as u8));
    }
    assert!(esc.next().is_none(), "escaped tuples left over");
    out
}

/// Seeded 4-bit weights concentrated on a few values (like per-tensor absmax), so that some
/// tuples fall outside the dictionary.
fn skewed(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            match u {
                u if u < 0.6 => 8,
                u if u < 0.8 => 7,
                u if u < 0.95 => 9,
                _ => rng.random_range(0..16),
            }
        })
        .collect()
}

#[test]
fn tuple_symbols_round_trip() {
    for (n, seed) in [(0, 1), (4, 2), (4096, 3), (65536, 4)] {
        let q = skewed(n, seed);
        let s = tuple_symbols(&q);
        assert_eq!(s.indices.len(), n / 4);
        assert!(s.dictionary.len() <= 255);
        assert_eq!(
            s.escapes.len(),
            s.indices.iter().filter(|&&i| i == ESCAPE).count()
        );
        assert_eq!(weights_of(&s), q, "n {n}");
    }
}

#[test]
fn dictionary_holds_the_most_frequent_tuples() {
    let q = skewed(1 << 16, 5);
    let s = tuple_symbols(&q);
    // with 5% of the weights spread over 16 values, more than 255 distinct tuples occur
    assert_eq!(s.dictionary.len(), 255);
    assert!(!s.escapes.is_empty());
    let ts = tuples(&q);
    let count = |t: u16| ts.iter().filter(|&&u| u == t).count();
    let least_kept = count(*s.dictionary.last().unwrap());
    assert!(s.escapes.iter().all(|&t| count(t) <= least_kept));
    assert!(s.dictionary.windows(2).all(|w| count(w[0]) >= count(w[1])));
    // the all-8 tuple (0.6^4 of the tuples) comes first
    assert_eq!(s.dictionary[0], 0x8888);
}

/// One quantizer's 4-bit weights (values 0..16) for a matrix.
type Quantizer = fn(&FMatrix) -> Vec<u8>;

fn mlx_g64(f: &FMatrix) -> Vec<u8> {
    quantize_affine(
        &f.w,
        f.rows,
        f.cols,
        FloatDType::F32,
        AffineParams::new(4, 64).unwrap(),
    )
    .unwrap()
    .symbols()
}

fn absmax_channel(f: &FMatrix) -> Vec<u8> {
    quantize_absmax(&f.w, f.rows, f.cols, 4, AbsmaxMode::PerChannel)
        .unwrap()
        .symbols
}

fn absmax_tensor(f: &FMatrix) -> Vec<u8> {
    quantize_absmax(&f.w, f.rows, f.cols, 4, AbsmaxMode::PerTensor)
        .unwrap()
        .symbols
}

#[test]
#[ignore = "prints the tuple-symbol size table (slow); run with --ignored --nocapture"]
fn tuple_sweep() {
    let ms = real_model_weights(64).unwrap_or_else(|| rans_common::model_missing());
    let n: usize = ms.iter().map(|m| m.rows * m.cols).sum();
    println!(
        "real model all-MiniLM-L6-v2, {} matrices, {n} weights; default EncodeOptions",
        ms.len()
    );
    println!(
        "| quantizer | 2 weights per symbol: coded bits/weight | 4 per symbol (dictionary + escapes): coded bits/weight | of which escapes | of which dictionaries | escaped tuples | rANS steps per weight |"
    );
    println!("|---|---|---|---|---|---|---|");
    let quantizers: [(&str, Quantizer); 3] = [
        ("MLX affine g64 4-bit", mlx_g64),
        ("absmax per-channel 4-bit", absmax_channel),
        ("absmax per-tensor 4-bit", absmax_tensor),
    ];
    for (name, quantize) in quantizers {
        let (mut pair_bits, mut tuple_bits, mut esc_bits, mut dict_bits) = (0.0, 0.0, 0.0, 0.0);
        let (mut escaped, mut tuples_total) = (0usize, 0usize);
        for m in &ms {
            let q = quantize(m);
            let opts = EncodeOptions::default();
            let pairs = encode(&q, m.rows, m.cols, 4, &opts).unwrap();
            pair_bits += (pairs.total_bytes() * 8) as f64;
            let s = tuple_symbols(&q);
            assert_eq!(weights_of(&s), q);
            // the indices coded as 8-bit symbols, one per "weight" of a cols/4-wide matrix
            let coded = encode(&s.indices, m.rows, m.cols / 4, 8, &opts).unwrap();
            let e = 16.0 * s.escapes.len() as f64;
            let d = 16.0 * s.dictionary.len() as f64;
            tuple_bits += (coded.total_bytes() * 8) as f64 + e + d;
            esc_bits += e;
            dict_bits += d;
            escaped += s.escapes.len();
            tuples_total += s.indices.len();
        }
        let w = n as f64;
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.4} | {:.2}% | 0.5 -> 0.25 |",
            pair_bits / w,
            tuple_bits / w,
            esc_bits / w,
            dict_bits / w,
            100.0 * escaped as f64 / tuples_total as f64
        );
    }
}
