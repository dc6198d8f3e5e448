//! Round trips of the rANS codec: `decode(encode(x)) == x` bit for bit, exact sizes, MLX packing.

use ecq::rans::{encode, CodecError, EncodeOptions, EncodedMatrix, LANES};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Reference MLX packing: one LSB-first bit stream per row over little-endian u32 words.
fn mlx_pack(q: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<u32> {
    let wpr = cols * bits as usize / 32;
    let mut out = vec![0u32; rows * wpr];
    for r in 0..rows {
        for k in 0..cols {
            let bit = k * bits as usize;
            for b in 0..bits as usize {
                if (q[r * cols + k] >> b) & 1 == 1 {
                    let pos = bit + b;
                    out[r * wpr + pos / 32] |= 1 << (pos % 32);
                }
            }
        }
    }
    out
}

/// Encodes, checks every decode path and the parts round trip; returns the encoded matrix.
#[track_caller]
fn roundtrip(q: &[u8], rows: usize, cols: usize, bits: u32, opts: &EncodeOptions) -> EncodedMatrix {
    let enc = encode(q, rows, cols, bits, opts).expect("encode");
    let dec = enc.decode_symbols().expect("decode_symbols");
    assert!(
        dec == q,
        "decode_symbols differs ({rows}x{cols}, {bits} bits, {opts:?})"
    );
    let mut buf = vec![0xAAu8; q.len()];
    enc.decode_symbols_unverified_into(&mut buf).unwrap();
    assert!(buf == q);
    if (cols * bits as usize).is_multiple_of(32) {
        let packed = enc.decode_packed().unwrap();
        assert_eq!(packed, mlx_pack(q, rows, cols, bits), "decode_packed");
        assert_eq!(
            packed,
            ecq::quant::pack(q, bits),
            "decode_packed vs quant::pack"
        );
    }
    let (h, f, s, o, w, c) = enc.clone().into_parts();
    assert_eq!(h.len(), 14 + enc.shape().len());
    let back = EncodedMatrix::from_parts(&h, f, s, o, w, c).expect("from_parts");
    assert_eq!(back, enc);
    assert_eq!(back.decode_symbols().unwrap(), q);
    // Entropy from decoded symbols equals the encoder's.
    let e0 = enc.entropy_bound_bits().unwrap();
    let e1 = back.entropy_bound_bits().unwrap();
    assert!((e0 - e1).abs() <= 1e-6 * e0.max(1.0));
    // Structural facts.
    assert_eq!(enc.states().len(), enc.n_chunks() * LANES);
    assert_eq!(enc.offsets().len(), enc.n_chunks() + 1);
    assert_eq!(enc.freqs().len(), enc.n_tiles() * enc.alphabet_size());
    for t in enc.freqs().chunks(enc.alphabet_size().max(1)) {
        assert_eq!(
            t.iter().map(|&f| u32::from(f)).sum::<u32>(),
            1 << enc.precision()
        );
    }
    enc
}

fn random_matrix(rng: &mut ChaCha8Rng, n: usize, bits: u32, dist: u8) -> Vec<u8> {
    let max = (1u32 << bits) - 1;
    match dist {
        // flat
        0 => (0..n).map(|_| rng.random_range(0..=max) as u8).collect(),
        // skewed (geometric-ish around the middle)
        1 => (0..n)
            .map(|_| {
                let g: f64 = rng.random::<f64>().powi(3);
                let mid = (max / 2) as f64;
                let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                (mid + sign * g * mid).round().clamp(0.0, max as f64) as u8
            })
            .collect(),
        // single symbol
        2 => vec![rng.random_range(0..=max) as u8; n],
        // two symbols, very unbalanced
        3 => {
            let a = rng.random_range(0..=max) as u8;
            let b = rng.random_range(0..=max) as u8;
            (0..n)
                .map(|_| if rng.random_range(0..1000) == 0 { b } else { a })
                .collect()
        }
        // extremes only
        _ => (0..n)
            .map(|_| if rng.random::<bool>() { 0 } else { max as u8 })
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn roundtrip_random(
        seed in any::<u64>(),
        rows in 0usize..70,
        k32 in 1usize..24,
        bits in 1u32..=8,
        wsel in 0usize..4,
        precision in 8u32..=15,
        chunk_symbols in prop_oneof![Just(1usize), 1usize..200, 200usize..20000],
        tile_chunks in prop_oneof![Just(1usize), 1usize..5, Just(1000)],
        dist in 0u8..5,
    ) {
        let cols = 32 * k32;
        let wps = [None, Some(1), Some(2), Some(4)][wsel];
        let wps = wps.filter(|&w| bits * w <= 8);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q = random_matrix(&mut rng, rows * cols, bits, dist);
        let opts = EncodeOptions { precision, weights_per_symbol: wps, chunk_symbols, tile_chunks, min_chunks: 0, group_size: 64 };
        roundtrip(&q, rows, cols, bits, &opts);
    }

    /// Split matrices (`SplitMatrix`: high bits coded, low bits raw) round-trip for every
    /// split of every width, decode to the MLX packing of the whole weights, and survive their
    /// stored parts.
    #[test]
    fn split_roundtrip_random(
        seed in any::<u64>(),
        rows in 0usize..40,
        k32 in 1usize..12,
        bits in 2u32..=8,
        low_sel in 0u32..7,
        chunk_symbols in prop_oneof![Just(1usize), 1usize..200, 200usize..20000],
        tile_chunks in prop_oneof![Just(1usize), 1usize..5],
        dist in 0u8..5,
    ) {
        let low_bits = 1 + low_sel % (bits - 1);
        let cols = 32 * k32;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q = random_matrix(&mut rng, rows * cols, bits, dist);
        let opts = EncodeOptions { chunk_symbols, tile_chunks, ..Default::default() };
        let s = ecq::rans::SplitMatrix::encode(&q, rows, cols, bits, low_bits, &opts).unwrap();
        prop_assert_eq!(s.bits(), bits);
        prop_assert_eq!(s.high().bits(), bits - low_bits);
        prop_assert_eq!(s.decode_symbols().unwrap(), q.clone());
        prop_assert_eq!(s.decode_packed().unwrap(), mlx_pack(&q, rows, cols, bits));
        let (h, l, lb, c) = s.clone().into_parts();
        prop_assert_eq!(ecq::rans::SplitMatrix::from_parts(h, l, lb, c).unwrap(), s);
    }

    /// Split matrices in row-pair order round-trip too, with the raw bits and the decoded
    /// weights of row-major order: every split whose high bits fit a byte symbol, runs of one
    /// to three per row.
    #[test]
    fn split_row_pairs_roundtrip_random(
        seed in any::<u64>(),
        pairs in 0usize..6,
        runs in 1usize..4,
        bits in 2u32..=8,
        low_sel in 0u32..7,
        chunk_symbols in prop_oneof![Just(1usize), 1usize..2000, 2000usize..20000],
        dist in 0u8..5,
    ) {
        let low_bits = 1 + low_sel % (bits - 1);
        let wps = [4u32, 2, 1].into_iter().find(|w| (bits - low_bits) * w <= 8).unwrap();
        let (rows, cols) = (2 * pairs, runs * ecq::rans::ROW_PAIR_RUN_SYMBOLS * wps as usize);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q = random_matrix(&mut rng, rows * cols, bits, dist);
        let opts = EncodeOptions { chunk_symbols, tile_chunks: 2, ..Default::default() };
        let order = ecq::rans::SplitOrder::RowPairs;
        let s = ecq::rans::SplitMatrix::encode_ordered(&q, rows, cols, bits, low_bits, &opts, order)
            .unwrap();
        prop_assert_eq!((s.rows(), s.cols()), (rows, cols));
        prop_assert_eq!(s.decode_symbols().unwrap(), q.clone());
        prop_assert_eq!(s.decode_packed().unwrap(), mlx_pack(&q, rows, cols, bits));
        let rm = ecq::rans::SplitMatrix::encode(&q, rows, cols, bits, low_bits, &opts).unwrap();
        prop_assert_eq!(s.low(), rm.low());
        let (h, l, lb, c) = s.clone().into_parts();
        prop_assert_eq!(
            ecq::rans::SplitMatrix::from_parts_ordered(h, l, lb, c, order).unwrap(),
            s
        );
    }

    #[test]
    fn roundtrip_wide(seed in any::<u64>(), rows in 1usize..4, k in prop_oneof![Just(16384usize), 32usize..16384], bits in prop_oneof![Just(4u32), 1u32..=8], dist in 0u8..5) {
        let cols = k / 32 * 32;
        prop_assume!(cols > 0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q = random_matrix(&mut rng, rows * cols, bits, dist);
        roundtrip(&q, rows, cols, bits, &EncodeOptions::default());
        roundtrip(&q, rows, cols, bits, &EncodeOptions { weights_per_symbol: Some(1), chunk_symbols: 100, ..Default::default() });
    }
}

#[test]
fn empty_matrices() {
    for (rows, cols) in [(0, 0), (0, 64), (5, 0)] {
        let enc = roundtrip(&[], rows, cols, 4, &EncodeOptions::default());
        assert_eq!(enc.n_chunks(), 0);
        assert_eq!(enc.n_tiles(), 0);
        assert_eq!(enc.words().len(), 0);
        assert_eq!(enc.offsets(), &[0]);
    }
}

#[test]
fn odd_rows_and_partial_chunks() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for rows in [1, 3, 17, 33, 101] {
        for cols in [32, 96, 352, 4096] {
            for bits in [2, 3, 4, 5, 6, 8] {
                let q = random_matrix(&mut rng, rows * cols, bits, 1);
                for chunk_symbols in [1, 50, 1000, 16384] {
                    let opts = EncodeOptions {
                        chunk_symbols,
                        tile_chunks: 3,
                        ..Default::default()
                    };
                    let enc = roundtrip(&q, rows, cols, bits, &opts);
                    assert!(enc.chunk_rows() >= 1);
                }
            }
        }
    }
}

/// A tile holding one symbol codes to zero words; the states stay 2^16.
#[test]
fn single_symbol_codes_to_nothing() {
    for bits in 1..=8u32 {
        for precision in 8..=15 {
            let q = vec![((1u32 << bits) - 1) as u8; 37 * 64];
            let enc = roundtrip(
                &q,
                37,
                64,
                bits,
                &EncodeOptions {
                    precision,
                    chunk_symbols: 300,
                    ..Default::default()
                },
            );
            assert_eq!(enc.words().len(), 0);
            assert!(enc.states().iter().all(|&s| s == 1 << 16));
            assert_eq!(enc.entropy_bound_bits().unwrap(), 0.0);
            let a = enc.alphabet_size();
            for t in enc.freqs().chunks(a) {
                assert_eq!(t.iter().filter(|&&f| f > 0).count(), 1);
            }
        }
    }
}

/// Hand-computed: one row of 32 weights, two equiprobable symbols at precision 8 (f = 128
/// each, so each symbol costs exactly 1 bit). 32 lanes each code one symbol: starting from
/// x = 2^16 no word is emitted (x < 128 << 24), and x becomes (x / 128) * 256 + x % 128 + c =
/// 2^17 + c. The stream is empty and the states are 2^17 or 2^17 + 128.
#[test]
fn hand_computed_small_case() {
    let q: Vec<u8> = (0..32).map(|i| (i % 2) as u8).collect();
    let opts = EncodeOptions {
        precision: 8,
        weights_per_symbol: Some(1),
        ..Default::default()
    };
    let enc = roundtrip(&q, 1, 32, 1, &opts);
    assert_eq!(enc.freqs(), &[128, 128]);
    assert_eq!(enc.words().len(), 0);
    let expect: Vec<u32> = (0..32).map(|l| (1 << 17) + 128 * (l % 2)).collect();
    assert_eq!(enc.states(), &expect[..]);

    // 17 rows of 32 weights in one chunk: each lane codes 17 symbols of exactly 1 bit
    // (x -> 2x + c while x % 128 == 0). From 2^16 the state passes 2^31 = 128 << 24 after 15
    // symbols, so one word is emitted before the 16th: exactly one word per lane, and the final
    // state is 2^17 + (bits of the last two symbols).
    let q: Vec<u8> = (0..17 * 32).map(|i| (i % 2) as u8).collect();
    let enc = roundtrip(&q, 17, 32, 1, &opts);
    assert_eq!(enc.n_chunks(), 1);
    assert_eq!(enc.words().len(), 32);
    assert_eq!(enc.payload_bytes(), 64);
    assert!((enc.entropy_bound_bits().unwrap() - (17 * 32) as f64).abs() < 1e-9);
}

/// Flat 4-bit data at 1 weight per symbol, precision 11: every symbol gets f = 128 and the
/// state grows by exactly 4 bits per symbol (x -> 16 x + c while x % 128 == 0). From 2^16 the
/// state passes 128 << 21 = 2^28 after 3 symbols, so a word is emitted before every 4th symbol.
#[test]
fn exact_size_flat() {
    let rows = 64;
    let cols = 512;
    let q: Vec<u8> = (0..rows * cols).map(|i| (i % 16) as u8).collect();
    let opts = EncodeOptions {
        weights_per_symbol: Some(1),
        chunk_symbols: 1 << 20,
        ..Default::default()
    };
    let enc = roundtrip(&q, rows, cols, 4, &opts);
    assert!(enc.freqs().iter().all(|&f| f == 128));
    // Each lane codes 64 * 512 / 32 = 1024 symbols: 256 words, final state in [2^16, 2^17).
    assert_eq!(enc.words().len(), 32 * 256);
    assert!(enc
        .states()
        .iter()
        .all(|&s| (1 << 16..1 << 17).contains(&s)));
}

#[test]
fn shapes_and_header() {
    let q = vec![1u8; 6 * 64];
    let mut enc = encode(
        &q,
        6,
        64,
        4,
        &EncodeOptions {
            group_size: 64,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(enc.shape(), &[6, 8]);
    assert_eq!(enc.group_size(), 64);
    enc.set_shape(&[2, 3, 8]).unwrap();
    assert!(enc.set_shape(&[2, 2, 8]).is_err());
    assert!(enc.set_shape(&[6, 9]).is_err());
    let h = enc.header();
    assert_eq!(h.len(), 17);
    assert_eq!(&h[14..], &[2, 3, 8]);
    let (h, f, s, o, w, c) = enc.into_parts();
    let back = EncodedMatrix::from_parts(&h, f, s, o, w, c).unwrap();
    assert_eq!(back.shape(), &[2, 3, 8]);
}

#[test]
fn bad_arguments() {
    let opts = EncodeOptions::default();
    assert!(matches!(
        encode(&[0; 10], 1, 32, 4, &opts),
        Err(CodecError::InvalidArgument(_))
    ));
    assert!(matches!(
        encode(&[16; 32], 1, 32, 4, &opts),
        Err(CodecError::SymbolOutOfRange {
            index: 0,
            value: 16,
            bits: 4
        })
    ));
    assert!(encode(&[0; 32], 1, 32, 9, &opts).is_err());
    assert!(encode(&[0; 32], 1, 32, 0, &opts).is_err());
    assert!(encode(
        &[0; 32],
        1,
        32,
        4,
        &EncodeOptions {
            precision: 7,
            ..Default::default()
        }
    )
    .is_err());
    assert!(encode(
        &[0; 32],
        1,
        32,
        4,
        &EncodeOptions {
            precision: 16,
            ..Default::default()
        }
    )
    .is_err());
    assert!(encode(
        &[0; 32],
        1,
        32,
        4,
        &EncodeOptions {
            weights_per_symbol: Some(4),
            ..Default::default()
        }
    )
    .is_err());
    assert!(encode(
        &[0; 32],
        1,
        32,
        4,
        &EncodeOptions {
            weights_per_symbol: Some(3),
            ..Default::default()
        }
    )
    .is_err());
    assert!(encode(
        &[0; 32],
        1,
        32,
        4,
        &EncodeOptions {
            tile_chunks: 0,
            ..Default::default()
        }
    )
    .is_err());
    // cols * bits not a multiple of 32
    assert!(encode(&[0; 12], 1, 12, 4, &opts).is_err());
}

/// The optimal table is never worse than the entropy by more than the table's quantisation
/// loss, and for large skewed data the payload is within 1% of the entropy.
#[test]
fn size_close_to_entropy() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let rows = 512;
    let cols = 1024;
    let q = random_matrix(&mut rng, rows * cols, 4, 1);
    for wps in [1, 2] {
        let enc = roundtrip(
            &q,
            rows,
            cols,
            4,
            &EncodeOptions {
                weights_per_symbol: Some(wps),
                precision: 12,
                ..Default::default()
            },
        );
        let h = enc.entropy_bound_bits().unwrap();
        let coded = (enc.payload_bytes() * 8) as f64;
        assert!(coded < h * 1.01, "wps {wps}: {coded} vs {h}");
        assert!(coded + (enc.states().len() * 32) as f64 > h * 0.999);
    }
}

/// `min_chunks` shrinks chunks (never grows them) until the matrix has that many, but not
/// below `MIN_PARALLEL_CHUNK_WEIGHTS` weights or one row, and grows the chunks per tile by the
/// same factor; the geometry is exactly the documented formula and the round trip stays exact.
#[test]
fn min_chunks_shrinks_chunks_for_parallel_decoding() {
    use ecq::rans::{DEFAULT_CHUNK_SYMBOLS, DEFAULT_TILE_CHUNKS, MIN_PARALLEL_CHUNK_WEIGHTS};
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    // (rows, cols, bits, weights per symbol, min_chunks, expected chunk_rows)
    let cases = [
        // 2048 symbols per row: default 8 rows; 512 / 128 = 4 rows per chunk
        (512usize, 4096usize, 4u32, None, 128usize, 4usize),
        // 512 / 1024 < 1 row, but chunks stay >= 8192 weights = 2 rows
        (512, 4096, 4, None, 1024, 2),
        // four 2-bit weights per symbol (the high bits of a split matrix of K = 4096 in row
        // pairs): 2048 symbols per row, default 8 rows, the floor is one row
        (512, 8192, 2, None, 1024, 1),
        // already enough chunks with the default: unchanged (8 rows)
        (512, 4096, 4, None, 16, 8),
        // rows longer than the floor: one row per chunk at most
        (64, 14336, 4, None, 1000, 1),
        // 8-bit, 1 weight per symbol: 1000 symbols per row, default 16, floor 9 rows
        (300, 1000, 8, None, 100, 9),
        // odd row count: 301 / 7 = 43 rows
        (301, 1000, 8, None, 7, 16),
        // 4-bit weights one per symbol: 4096 symbols per row, default 4 rows, floor 2 rows
        (512, 4096, 4, Some(1), 1024, 2),
    ];
    for &(rows, cols, bits, wps, min_chunks, want_rows) in &cases {
        let q = random_matrix(&mut rng, rows * cols, bits, 0);
        let opts = EncodeOptions {
            min_chunks,
            weights_per_symbol: wps,
            ..Default::default()
        };
        let e = roundtrip(&q, rows, cols, bits, &opts);
        let spr = cols / e.weights_per_symbol() as usize;
        let default_rows = ((DEFAULT_CHUNK_SYMBOLS + spr / 2) / spr).clamp(1, rows);
        assert!(e.chunk_rows() <= default_rows);
        assert_eq!(
            e.chunk_rows(),
            want_rows,
            "{rows}x{cols} b{bits} min_chunks {min_chunks}"
        );
        // a tile keeps the rows it had at the default chunks (rounded down)
        assert_eq!(
            e.tile_chunks(),
            DEFAULT_TILE_CHUNKS * default_rows / want_rows,
            "{rows}x{cols} b{bits} min_chunks {min_chunks}: tile chunks"
        );
        // as many chunks as asked for, unless the floor stops it first
        let floor_rows = MIN_PARALLEL_CHUNK_WEIGHTS.div_ceil(cols);
        assert!(
            e.n_chunks() >= min_chunks.min(rows / floor_rows),
            "{rows}x{cols}: {} chunks",
            e.n_chunks()
        );
    }
}
