//! The chunk encoder (FORMAT.md section 4, run backwards).

use super::decode::L;
use super::table::EncSymbol;
use super::LANES;

/// Codes one symbol into lane state `x`, writing at most one word just below `buf[*pos]`.
///
/// Invariant: `x` in `[2^16, 2^32)` before and after; `*pos >= 1` on entry (the caller sizes
/// `buf` to one word per symbol plus one).
#[inline(always)]
fn put(x: &mut u32, e: &EncSymbol, buf: &mut [u16], pos: &mut usize) {
    // Emit the low 16 bits iff x >= f << (32 - n); written unconditionally, kept iff emitted.
    let emit = u32::from(u64::from(*x) >= e.thresh);
    buf[*pos - 1] = *x as u16;
    *pos -= emit as usize;
    *x >>= emit * 16;
    // x = (x / f) * 2^n + x % f + c  ==  x + bias + q * (2^n - f)
    let q = ((u128::from(*x) * u128::from(e.rcp)) >> 64) as u32;
    *x = x.wrapping_add(e.bias).wrapping_add(q.wrapping_mul(e.cmpl));
}

/// Encodes one chunk: `syms` holds its rows (`syms.len() / syms_per_row` of them, row-major
/// coded symbols). Returns the 32 final states (the decoder's initial states), and a buffer
/// and start index: `buf[start..]` is the word stream in decoding order.
#[inline(never)]
pub(crate) fn encode_chunk(
    syms: &[u8],
    syms_per_row: usize,
    table: &[EncSymbol; 256],
    precision: u32,
) -> ([u32; LANES], Vec<u16>, usize) {
    let mut x = [L; LANES];
    debug_assert!((8..=15).contains(&precision));
    let mut buf = vec![0u16; syms.len() + 1];
    let mut pos = buf.len();
    if syms_per_row > 0 {
        for row in syms.chunks_exact(syms_per_row).rev() {
            let full = row.len() / LANES;
            let rem = &row[full * LANES..];
            for (l, &s) in rem.iter().enumerate().rev() {
                put(&mut x[l], &table[s as usize], &mut buf, &mut pos);
            }
            for step in row[..full * LANES].chunks_exact(LANES).rev() {
                let step: &[u8; LANES] = step.try_into().unwrap();
                for l in (0..LANES).rev() {
                    put(&mut x[l], &table[step[l] as usize], &mut buf, &mut pos);
                }
            }
        }
    }
    (x, buf, pos)
}
