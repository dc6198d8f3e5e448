//! Corrupt, truncated and hostile inputs: the decoder errors, never panics, never reads out of
//! bounds and never allocates according to absurd header fields.

#[path = "../fuzz/common/split.rs"]
mod split;

use ecq::rans::{encode, CodecError, EncodeOptions, EncodedMatrix};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type PartsTuple = (Vec<u32>, Vec<u16>, Vec<u32>, Vec<u32>, Vec<u16>, Vec<u32>);

/// A small matrix with several tiles and chunks, partial steps and skewed symbols.
fn sample(bits: u32, wps: Option<u32>) -> (Vec<u8>, EncodedMatrix) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (rows, cols) = (13, 96);
    let max = (1u32 << bits) - 1;
    let q: Vec<u8> = (0..rows * cols)
        .map(|_| {
            let v: f64 = rng.random::<f64>().powi(2);
            (v * max as f64).round() as u8
        })
        .collect();
    let opts = EncodeOptions {
        weights_per_symbol: wps,
        chunk_symbols: 250,
        tile_chunks: 2,
        min_chunks: 0,
        precision: 10,
        group_size: 32,
    };
    let enc = encode(&q, rows, cols, bits, &opts).unwrap();
    assert!(
        enc.n_tiles() >= 2 && enc.n_chunks() >= 3 && !enc.words().is_empty(),
        "{enc:?}"
    );
    (q, enc)
}

fn load(p: &PartsTuple) -> Result<EncodedMatrix, CodecError> {
    EncodedMatrix::from_parts(
        &p.0,
        p.1.clone(),
        p.2.clone(),
        p.3.clone(),
        p.4.clone(),
        p.5.clone(),
    )
}

/// Flips bit `bit` of element `i` of part `part` (0 header .. 5 crc).
fn flip(p: &mut PartsTuple, part: usize, i: usize, bit: u32) {
    match part {
        0 => p.0[i] ^= 1 << bit,
        1 => p.1[i] ^= 1 << bit,
        2 => p.2[i] ^= 1 << bit,
        3 => p.3[i] ^= 1 << bit,
        4 => p.4[i] ^= 1 << bit,
        _ => p.5[i] ^= 1 << bit,
    }
}

fn part_shape(p: &PartsTuple) -> [(usize, u32); 6] {
    [
        (p.0.len(), 32),
        (p.1.len(), 16),
        (p.2.len(), 32),
        (p.3.len(), 32),
        (p.4.len(), 16),
        (p.5.len(), 32),
    ]
}

/// Every single-bit flip of every part is rejected (by `from_parts` or by the checksums when
/// decoding), except in the informational group-size header word, which decodes to the
/// original. Without checksum verification no flip panics.
#[test]
fn every_single_bit_flip() {
    for (bits, wps) in [(4, Some(1)), (4, None), (3, None), (8, None)] {
        let (q, enc) = sample(bits, wps);
        let parts = enc.clone().into_parts();
        let mut accepted = 0;
        let mut out = vec![0u8; q.len()];
        for (part, (len, width)) in part_shape(&parts).into_iter().enumerate() {
            for i in 0..len {
                for bit in 0..width {
                    let mut p = parts.clone();
                    flip(&mut p, part, i, bit);
                    let Ok(m) = load(&p) else { continue };
                    match m.decode_symbols() {
                        Err(_) => {}
                        Ok(d) => {
                            assert_eq!(
                                (part, i),
                                (0, 12),
                                "flip of part {part}[{i}] bit {bit} accepted"
                            );
                            assert!(d == q);
                            accepted += 1;
                        }
                    }
                    // The checksums cover tables, states and words (not the header, nor offsets
                    // inside a tile's word range, which the end-of-chunk checks catch): any
                    // flip of those must fail verification on its own.
                    if part != 0 && part != 3 {
                        assert!(m.verify_checksums().is_err(), "part {part}[{i}] bit {bit}");
                    }
                    // Bypassing the checksums: an error or some output, never a panic.
                    let _ = m.decode_symbols_unverified_into(&mut out);
                }
            }
        }
        assert_eq!(accepted, 32, "only the 32 group-size bits may be accepted");
    }
}

/// The stream checks alone catch most corruption of states and words: flip every bit of the
/// states and words with the checksums recomputed (a forged stream), and count what the
/// consistency checks reject. Nothing panics; most flips are caught.
#[test]
fn stream_checks_without_crc() {
    let (q, enc) = sample(4, Some(1));
    let parts = enc.clone().into_parts();
    let mut out = vec![0u8; q.len()];
    let (mut total, mut caught) = (0, 0);
    for part in [2usize, 4] {
        let (len, width) = part_shape(&parts)[part];
        for i in 0..len {
            for bit in 0..width {
                let mut p = parts.clone();
                flip(&mut p, part, i, bit);
                let Ok(m) = load(&p) else {
                    caught += 1;
                    total += 1;
                    continue;
                };
                total += 1;
                match m.decode_symbols_unverified_into(&mut out) {
                    Err(_) => caught += 1,
                    Ok(()) => assert!(out != q, "a flip that decodes must change the output"),
                }
            }
        }
    }
    eprintln!("stream checks caught {caught} of {total} forged flips");
    assert!(caught * 2 > total);
}

#[test]
fn truncated_and_extended_parts() {
    let (_, enc) = sample(4, None);
    let parts = enc.into_parts();
    for part in 0..6 {
        for delta in [-1i64, 1] {
            let mut p = parts.clone();
            match (part, delta) {
                (0, -1) => {
                    p.0.pop();
                }
                (0, _) => p.0.push(0),
                (1, -1) => {
                    p.1.pop();
                }
                (1, _) => p.1.push(0),
                (2, -1) => {
                    p.2.pop();
                }
                (2, _) => p.2.push(1 << 16),
                (3, -1) => {
                    p.3.pop();
                }
                (3, _) => p.3.push(*p.3.last().unwrap()),
                (4, -1) => {
                    p.4.pop();
                }
                (4, _) => p.4.push(0),
                (5, -1) => {
                    p.5.pop();
                }
                _ => p.5.push(0),
            }
            assert!(load(&p).is_err(), "part {part} changed by {delta} accepted");
        }
    }
    // Empty everything.
    assert!(EncodedMatrix::from_parts(&[], vec![], vec![], vec![], vec![], vec![]).is_err());
}

#[test]
fn wrong_offsets() {
    let (_, enc) = sample(4, None);
    let parts = enc.into_parts();
    let n = parts.3.len();
    // offsets[0] != 0
    let mut p = parts.clone();
    p.3[0] = 1;
    assert!(matches!(
        load(&p),
        Err(CodecError::BadOffsets { chunk: 0, .. })
    ));
    // decreasing
    let mut p = parts.clone();
    p.3.swap(1, 2);
    if p.3[1] != p.3[2] {
        assert!(matches!(load(&p), Err(CodecError::BadOffsets { .. })));
    }
    // last != words.len()
    let mut p = parts.clone();
    p.3[n - 1] -= 1;
    assert!(matches!(
        load(&p),
        Err(CodecError::SizeMismatch { part: "words", .. } | CodecError::BadOffsets { .. })
    ));
    // shifted boundary between chunks (CRC bypassed): overrun or trailing words, no panic.
    for c in 1..n - 1 {
        for d in [-2i64, -1, 1, 2] {
            let mut p = parts.clone();
            let v = p.3[c] as i64 + d;
            if v < p.3[c - 1] as i64 || v > p.3[c + 1] as i64 {
                continue;
            }
            p.3[c] = v as u32;
            let m = load(&p).unwrap();
            let mut out = vec![0u8; m.weights()];
            let e = m.decode_symbols_unverified_into(&mut out).unwrap_err();
            assert!(
                matches!(
                    e,
                    CodecError::StreamOverrun { .. }
                        | CodecError::TrailingWords { .. }
                        | CodecError::BadFinalState { .. }
                ),
                "{e}"
            );
            assert!(m.decode_symbols().is_err());
        }
    }
}

/// Headers that would describe enormous matrices are rejected before anything is allocated
/// (if they were not, `decode_symbols` would try to allocate petabytes and abort the test).
#[test]
fn absurd_headers() {
    let (_, enc) = sample(4, None);
    let h = enc.header();
    let set = |i: usize, v: u32| {
        let mut h = h.clone();
        h[i] = v;
        h
    };
    let cases = [
        set(2, u32::MAX),      // rows
        set(3, u32::MAX - 31), // cols
        set(8, u32::MAX),      // chunk_rows
        set(9, 0),             // tile_chunks
        set(10, u32::MAX),     // n_chunks
        set(11, u32::MAX),     // n_tiles
        set(13, u32::MAX),     // ndim
        set(13, 0),            // ndim
        set(0, 0),             // magic
        set(1, 2),             // version
        set(7, 64),            // lanes
        set(4, 9),             // bits
        set(5, 3),             // weights per symbol
        set(6, 16),            // precision
        set(6, 7),             // precision
    ];
    for h in cases {
        let p = enc.clone().into_parts();
        let r = EncodedMatrix::from_parts(&h, p.1, p.2, p.3, p.4, p.5);
        assert!(r.is_err(), "{h:?}");
    }
    // A consistent header for 2^32 x 2^31 weights: one chunk of all rows, one tile, a
    // single-symbol table, no words. Every size agrees, but rows * cols exceeds MAX_WEIGHTS.
    let mut h = vec![0u32; 16];
    h[..14].copy_from_slice(&[
        ecq::rans::MAGIC,
        1,
        u32::MAX,
        1 << 31,
        4,
        1,
        11,
        32,
        u32::MAX,
        1,
        1,
        1,
        64,
        2,
    ]);
    h[14] = u32::MAX;
    h[15] = 1 << 28;
    let mut f = vec![0u16; 16];
    f[0] = 2048;
    let r = EncodedMatrix::from_parts(&h, f, vec![1 << 16; 32], vec![0, 0], vec![], vec![0]);
    assert!(matches!(r, Err(CodecError::BadHeader { .. })), "{r:?}");
}

/// Initial states below 2^16 and tables that do not sum to 2^n are rejected on load.
#[test]
fn invalid_states_and_tables() {
    let (_, enc) = sample(4, None);
    let p = enc.into_parts();
    let mut q = p.clone();
    q.2[5] = 0xffff;
    assert!(matches!(
        load(&q),
        Err(CodecError::BadInitialState { lane: 5, .. })
    ));
    let mut q = p.clone();
    q.1[3] = q.1[3].wrapping_add(1);
    assert!(matches!(
        load(&q),
        Err(CodecError::BadFrequencyTable { tile: 0, .. })
    ));
    let mut q = p.clone();
    q.1[0] = u16::MAX;
    assert!(matches!(
        load(&q),
        Err(CodecError::BadFrequencyTable { .. })
    ));
}

#[test]
fn error_messages_name_tile_chunk_and_offset() {
    let (_, enc) = sample(4, Some(1));
    let mut p = enc.into_parts();
    let last = p.4.len() - 1;
    p.4[last] ^= 0x8000;
    let m = load(&p).unwrap();
    let e = m.decode_symbols().unwrap_err();
    assert!(matches!(e, CodecError::ChecksumMismatch { .. }));
    assert!(e.to_string().contains("tile"), "{e}");
    let mut out = vec![0u8; m.weights()];
    if let Err(e) = m.decode_symbols_unverified_into(&mut out) {
        let s = e.to_string();
        assert!(s.contains("tile") && s.contains("chunk"), "{s}");
    }
    // Output buffer of the wrong size.
    let mut small = vec![0u8; m.weights() - 1];
    assert!(matches!(
        m.decode_symbols_into(&mut small),
        Err(CodecError::SizeMismatch { part: "output", .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Arbitrary bytes through the fuzz target's splitter: never panics.
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        split::run(&data);
    }

    /// Plausible headers (valid magic, small fields) with random parts of matching sizes:
    /// reaches the decoder proper. Never panics.
    #[test]
    fn random_streams_never_panic(
        seed in any::<u64>(),
        rows in 0u32..40,
        k32 in 0u32..4,
        bits in 1u32..=8,
        wsel in 0usize..3,
        chunk_rows in prop_oneof![1u32..8, Just(u32::MAX)],
        tile_chunks in prop_oneof![1u32..4, Just(u32::MAX)],
        precision in 8u32..=15,
        verify in any::<bool>(),
    ) {
        let cols = 32 * k32;
        let wps = [1u32, 2, 4][..=wsel].iter().copied().filter(|&w| bits * w <= 8).max().unwrap();
        let n_chunks = if rows > 0 && cols > 0 { rows.div_ceil(chunk_rows) } else { 0 };
        let n_tiles = n_chunks.div_ceil(tile_chunks);
        let a = 1usize << (bits * wps);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let header = vec![
            ecq::rans::MAGIC, 1, rows, cols, bits, wps, precision, 32, chunk_rows, tile_chunks,
            n_chunks, n_tiles, 0, 2, rows, cols * bits / 32,
        ];
        // Valid-looking tables: random split of 2^n.
        let m = 1u32 << precision;
        let mut freqs = Vec::new();
        for _ in 0..n_tiles {
            let mut f = vec![0u16; a];
            let mut left = m;
            while left > 0 {
                let s = rng.random_range(0..a);
                let take = rng.random_range(1..=left.min(m / 4).max(1));
                f[s] += take as u16;
                left -= take;
            }
            freqs.extend(f);
        }
        let states: Vec<u32> = (0..n_chunks * 32).map(|_| rng.random_range(1u32 << 16..=u32::MAX)).collect();
        let mut offsets = vec![0u32];
        for _ in 0..n_chunks {
            let last = *offsets.last().unwrap();
            offsets.push(last + rng.random_range(0..64));
        }
        let words: Vec<u16> = (0..*offsets.last().unwrap()).map(|_| rng.random()).collect();
        let crc: Vec<u32> = (0..n_tiles).map(|_| rng.random()).collect();
        let p = split::Parts { verify, header, freqs, states, offsets, words, crc };
        split::run(&split::join(&p));
    }
}

/// Replays the committed fuzz seeds (`fuzz/seeds/decode/`) so CI needs no nightly. Seeds named
/// `valid-*` must decode; the rest must not panic.
#[test]
fn fuzz_seed_corpus_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz/seeds/decode exists") {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let ok = split::run(&data);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("valid-") {
            assert!(ok, "{name} should decode");
        }
        n += 1;
    }
    assert!(n >= 4, "only {n} seeds");
}

/// Writes the seed corpus (run once with `--ignored`; the files are committed).
#[test]
#[ignore = "writes fuzz/seeds/decode"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, enc: EncodedMatrix, verify: bool| {
        let (header, freqs, states, offsets, words, crc) = enc.into_parts();
        let p = split::Parts {
            verify,
            header,
            freqs,
            states,
            offsets,
            words,
            crc,
        };
        std::fs::write(dir.join(name), split::join(&p)).unwrap();
    };
    for (name, bits, wps) in [
        ("valid-4bit-w1", 4, Some(1)),
        ("valid-4bit-w2", 4, None),
        ("valid-3bit", 3, None),
        ("valid-8bit", 8, None),
    ] {
        let (_, enc) = sample(bits, wps);
        write(name, enc.clone(), true);
        // A corrupted word, checksums bypassed.
        let mut p = enc.into_parts();
        p.4[0] ^= 0x0100;
        let m = load(&p).unwrap();
        write(&format!("corrupt-{name}"), m, false);
    }
    let q = vec![5u8; 64 * 4];
    write(
        "valid-single-symbol",
        encode(&q, 4, 64, 4, &EncodeOptions::default()).unwrap(),
        true,
    );
    write(
        "valid-empty",
        encode(&[], 0, 64, 4, &EncodeOptions::default()).unwrap(),
        true,
    );
}

/// Huge but consistent `chunk_rows` / `tile_chunks` (one chunk, one tile) must decode, not
/// overflow a size computation.
#[test]
fn huge_chunk_and_tile_fields_are_harmless() {
    let q: Vec<u8> = (0..13 * 96).map(|i| (i % 7) as u8).collect();
    let opts = EncodeOptions {
        chunk_symbols: usize::MAX / 2,
        tile_chunks: usize::MAX,
        ..Default::default()
    };
    let enc = encode(&q, 13, 96, 4, &opts).unwrap();
    assert_eq!((enc.n_chunks(), enc.n_tiles()), (1, 1));
    assert_eq!(enc.decode_symbols().unwrap(), q);
    let (mut h, f, s, o, w, c) = enc.into_parts();
    h[8] = u32::MAX; // chunk_rows: still one chunk
    h[9] = u32::MAX; // tile_chunks
    let m = EncodedMatrix::from_parts(&h, f, s, o, w, c).unwrap();
    assert_eq!(m.decode_symbols().unwrap(), q);
    assert_eq!(m.decode_packed().unwrap(), ecq::quant::pack(&q, 4));
    assert!(m.entropy_bound_bits().unwrap() > 0.0);
}
