//! The blocked rANS kernels' decode tables built on the host, once per matrix, for the fused
//! GEMV kernels that read them from memory instead of building them from the frequencies in
//! every workgroup (`TABLE_MEM` in `wgsl/rans_gemv_blocked.wgsl`, `load_blocked_table` in
//! `wgsl/lib/rans_table_sg.wgsl` and `wgsl/lib/rans_table_byte.wgsl`; BENCHMARKS.md issue 5,
//! step 65).
//!
//! One layout serves both table forms: per tile, the owner of every slot (a byte, four to a
//! u32: the compact form's `slot_sym` as is), the cumulative frequencies as u16 pairs (the u32
//! form's `cum16`: symbol `s` in half `s % 2` of word `s / 2`, word 128 the total), and a word
//! that is nonzero where the tile's frequencies do not sum to `2^n` or the alphabet is larger
//! than 256, so that the kernels flag the tile's chunks with `ERR_TABLE` as their own build
//! does; tiles padded to 16 bytes. 2.5 KiB a tile at 11 probability bits, where the u32 form
//! itself would take 8 KiB.

/// The probability bits the host builds these tables for (the u32 form's entries hold 12-bit
/// frequencies and biases; below 8 bits the kernels build theirs): every kernel that reads them
/// and every caller deciding whether to build them asks this range.
pub(crate) const TABLE_PRECISION: std::ops::RangeInclusive<u32> = 8..=11;

/// u32 words per tile for `n`-bit probabilities (the stride the WGSL loaders compute).
pub(crate) fn tile_words(n: u32) -> usize {
    ((1usize << n) / 4 + 129 + 1).next_multiple_of(4)
}

/// The tables of `n_tiles` tiles of `alphabet` frequencies each (`freqs`, tile-major) with `n`
/// (8..=11) probability bits, concatenated.
pub(crate) fn blocked_slot_tables(
    freqs: &[u16],
    alphabet: usize,
    n: u32,
    n_tiles: usize,
) -> Vec<u32> {
    assert!(
        TABLE_PRECISION.contains(&n),
        "slot tables are built for n in 8..=11, not {n}"
    );
    assert_eq!(freqs.len(), alphabet * n_tiles, "freqs of {n_tiles} tiles");
    let m = 1usize << n;
    let stride = tile_words(n);
    let mut out = vec![0u32; stride * n_tiles];
    for (tile, t) in out.chunks_exact_mut(stride).enumerate() {
        let f = &freqs[tile * alphabet..(tile + 1) * alphabet];
        let total: u64 = f.iter().map(|&v| v as u64).sum();
        let (owners, rest) = t.split_at_mut(m / 4);
        let (cum16, rest) = rest.split_at_mut(129);
        if total != m as u64 || alphabet > 256 {
            // (owners and sums left zero: in range, and flagged)
            rest[0] = 1;
            continue;
        }
        let mut cum = 0usize;
        for s in 0..256 {
            let fr = f.get(s).map_or(0, |&v| v as usize);
            cum16[s / 2] |= (cum as u32) << (16 * (s % 2));
            for slot in cum..cum + fr {
                owners[slot / 4] |= (s as u32) << (8 * (slot % 4));
            }
            cum += fr;
        }
        cum16[128] = cum as u32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_sums_in_the_kernel_layout() {
        // two tiles of a 4-symbol alphabet at n = 8: one good, one summing to 255
        let freqs = [100u16, 0, 150, 6, 100, 0, 150, 5];
        let t = blocked_slot_tables(&freqs, 4, 8, 2);
        let stride = tile_words(8);
        assert_eq!(stride, 196);
        assert_eq!(tile_words(11), 644);
        assert_eq!(t.len(), 2 * stride);
        let owner = |slot: usize| (t[slot / 4] >> (8 * (slot % 4))) & 0xFF;
        assert_eq!(
            (
                owner(0),
                owner(99),
                owner(100),
                owner(249),
                owner(250),
                owner(255)
            ),
            (0, 0, 2, 2, 3, 3)
        );
        let cum16 = &t[64..64 + 129];
        // cums 0, 100, 100, 250, then 256 for every symbol past the alphabet
        assert_eq!(cum16[0], 100 << 16);
        assert_eq!(cum16[1], 100 | 250 << 16);
        assert!(cum16[2..128].iter().all(|&w| w == 256 | 256 << 16));
        assert_eq!(cum16[128], 256);
        assert_eq!(t[64 + 129], 0, "good tile flagged");
        assert!(t[stride..stride + 64 + 129].iter().all(|&w| w == 0));
        assert_eq!(t[stride + 64 + 129], 1, "bad tile not flagged");
    }
}
