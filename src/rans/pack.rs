//! MLX packing of one row of quantized values (private copy; `quant::pack` is the public one).
//!
//! Every MLX bit width packs as one continuous LSB-first bit stream over little-endian `u32`
//! words (for 2/4/8 bits this is "element i at bits `[b*i, b*(i+1))`"), restarting at each row.

/// Packs `vals` (each `< 2^bits`) into `out` (`vals.len() * bits / 32` words).
///
/// Requires `vals.len() * bits` to be a multiple of 32.
#[inline]
pub(crate) fn pack_row(vals: &[u8], bits: u32, out: &mut [u32]) {
    debug_assert_eq!(vals.len() * bits as usize, out.len() * 32);
    match bits {
        8 => {
            for (o, v) in out.iter_mut().zip(vals.chunks_exact(4)) {
                *o = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            }
        }
        4 => {
            for (o, v) in out.iter_mut().zip(vals.chunks_exact(8)) {
                let mut w = 0u32;
                for (i, &q) in v.iter().enumerate() {
                    w |= u32::from(q) << (4 * i);
                }
                *o = w;
            }
        }
        _ => {
            let mut acc = 0u64;
            let mut nb = 0u32;
            let mut oi = 0usize;
            for &v in vals {
                acc |= u64::from(v) << nb;
                nb += bits;
                if nb >= 32 {
                    out[oi] = acc as u32;
                    oi += 1;
                    acc >>= 32;
                    nb -= 32;
                }
            }
        }
    }
}
