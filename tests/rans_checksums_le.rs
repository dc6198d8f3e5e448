//! `ecq::rans::verify_checksums_le`, the zero-copy checksum check of loaders that upload from a
//! memory map, must agree with `EncodedMatrix::verify_checksums` and catch what it catches.

use ecq::rans::{encode, verify_checksums_le, CodecError, EncodeOptions, EncodedMatrix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn matrix(seed: u64) -> EncodedMatrix {
    let (rows, cols) = (37, 256);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Skewed 4-bit symbols, so the stream has words to corrupt.
    let q: Vec<u8> = (0..rows * cols)
        .map(|_| (rng.random_range(0..16u32) * rng.random_range(0..16u32) / 15) as u8)
        .collect();
    let opts = EncodeOptions {
        chunk_symbols: 512,
        tile_chunks: 3,
        ..EncodeOptions::default()
    };
    encode(&q, rows, cols, 4, &opts).unwrap()
}

fn check(e: &EncodedMatrix, freqs: &[u8], states: &[u8], words: &[u8]) -> Result<(), CodecError> {
    let alphabet = 1usize << (e.bits() * e.weights_per_symbol());
    verify_checksums_le(
        alphabet,
        e.tile_chunks(),
        freqs,
        states,
        e.offsets(),
        words,
        e.crc(),
    )
}

#[test]
fn agrees_with_verify_checksums_and_catches_every_flipped_byte() {
    let e = matrix(1);
    e.verify_checksums().unwrap();
    let freqs: Vec<u8> = bytemuck::cast_slice(e.freqs()).to_vec();
    let states: Vec<u8> = bytemuck::cast_slice(e.states()).to_vec();
    let words: Vec<u8> = bytemuck::cast_slice(e.words()).to_vec();
    check(&e, &freqs, &states, &words).unwrap();
    assert!(e.crc().len() > 2, "several tiles");
    for part in 0..3 {
        let len = [freqs.len(), states.len(), words.len()][part];
        for at in (0..len).step_by(7) {
            let (mut f, mut s, mut w) = (freqs.clone(), states.clone(), words.clone());
            [&mut f, &mut s, &mut w][part][at] ^= 1 << (at % 8);
            let err = check(&e, &f, &s, &w).unwrap_err();
            assert!(
                matches!(err, CodecError::ChecksumMismatch { .. }),
                "part {part} byte {at}: {err:?}"
            );
        }
    }
}

#[test]
fn wrong_lengths_and_offsets_are_errors_not_panics() {
    let e = matrix(2);
    let freqs: Vec<u8> = bytemuck::cast_slice(e.freqs()).to_vec();
    let states: Vec<u8> = bytemuck::cast_slice(e.states()).to_vec();
    let words: Vec<u8> = bytemuck::cast_slice(e.words()).to_vec();
    let a = 1usize << (e.bits() * e.weights_per_symbol());
    let tc = e.tile_chunks();
    let short = |v: &[u8]| v[..v.len() - 1].to_vec();
    for (f, s, w) in [
        (short(&freqs), states.clone(), words.clone()),
        (freqs.clone(), short(&states), words.clone()),
        (freqs.clone(), states.clone(), short(&words)),
    ] {
        assert!(verify_checksums_le(a, tc, &f, &s, e.offsets(), &w, e.crc()).is_err());
    }
    assert!(
        verify_checksums_le(a, tc, &freqs, &states, e.offsets(), &words, &e.crc()[1..]).is_err()
    );
    let mut offsets = e.offsets().to_vec();
    offsets[1] = u32::MAX;
    assert!(matches!(
        verify_checksums_le(a, tc, &freqs, &states, &offsets, &words, e.crc()),
        Err(CodecError::BadOffsets { .. })
    ));
}
