//! MLX's packing of quantized values into `u32` words.
//!
//! The layout is documented on the [`quant`](crate::quant) module.

use super::QuantError;

/// Number of `u32` words that hold `n` values of `bits` bits (`ceil(n * bits / 32)`).
pub const fn packed_len(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(32)
}

fn check_bits(bits: u32) -> Result<(), QuantError> {
    if (1..=8).contains(&bits) {
        Ok(())
    } else {
        Err(QuantError::UnsupportedBits { bits })
    }
}

/// Packs `q` (one value per byte, only the low `bits` bits are used) into MLX words.
///
/// The last word is zero-padded when `q.len() * bits` is not a multiple of 32.
///
/// # Panics
///
/// If `bits` is not in `1..=8` (a programming error; [`pack_into`] returns an error instead).
///
/// # Example
///
/// ```
/// use ecq::quant::{pack, unpack};
///
/// let q: Vec<u8> = (0..64).map(|i| (i % 8) as u8).collect();
/// let words = pack(&q, 3);
/// assert_eq!(words.len(), 6); // 64 values * 3 bits / 32
/// assert_eq!(words[0] & 0x1ff, 0b010_001_000); // values 0, 1, 2, LSB first
/// assert_eq!(unpack(&words, 3, q.len()), q);
/// ```
pub fn pack(q: &[u8], bits: u32) -> Vec<u32> {
    let mut out = vec![0u32; packed_len(q.len(), bits)];
    if let Err(e) = pack_into(q, bits, &mut out) {
        panic!("ecq::quant::pack: {e}");
    }
    out
}

/// Packs `q` into `out`, which must hold exactly [`packed_len`]`(q.len(), bits)` words. Only the
/// low `bits` bits of each value are used.
///
/// # Errors
///
/// [`QuantError::UnsupportedBits`] if `bits` is not in `1..=8`,
/// [`QuantError::LengthMismatch`] if `out` has the wrong length.
pub fn pack_into(q: &[u8], bits: u32, out: &mut [u32]) -> Result<(), QuantError> {
    check_bits(bits)?;
    let expected = packed_len(q.len(), bits);
    if out.len() != expected {
        return Err(QuantError::LengthMismatch {
            what: "packed output",
            expected,
            actual: out.len(),
        });
    }
    let whole = match bits {
        1 => pack_chunks::<1>(q, out),
        2 => pack_chunks::<2>(q, out),
        3 => pack_chunks::<3>(q, out),
        4 => pack_chunks::<4>(q, out),
        5 => pack_chunks::<5>(q, out),
        6 => pack_chunks::<6>(q, out),
        7 => pack_chunks::<7>(q, out),
        _ => pack_chunks::<8>(q, out),
    };
    // Tail (fewer than 32 values): generic bit writer.
    let tail_words = &mut out[whole * bits as usize..];
    tail_words.fill(0);
    let mask = (1u32 << bits) - 1;
    for (i, &v) in q[whole * 32..].iter().enumerate() {
        let v = u32::from(v) & mask;
        let bit = i * bits as usize;
        let (w, off) = (bit / 32, bit % 32);
        tail_words[w] |= v << off;
        if off + bits as usize > 32 {
            tail_words[w + 1] |= v >> (32 - off);
        }
    }
    Ok(())
}

/// Packs every whole chunk of 32 values (which fill exactly `B` words); returns the number of
/// chunks done.
#[inline]
fn pack_chunks<const B: usize>(q: &[u8], out: &mut [u32]) -> usize {
    let mask = (1u32 << B) - 1;
    let mut chunks = 0;
    for (src, dst) in q.chunks_exact(32).zip(out.chunks_exact_mut(B)) {
        let mut w = [0u32; 9];
        for (i, &v) in src.iter().enumerate() {
            let v = u32::from(v) & mask;
            let bit = i * B;
            let (wi, off) = (bit / 32, bit % 32);
            w[wi] |= v << off;
            if off + B > 32 {
                w[wi + 1] |= v >> (32 - off);
            }
        }
        dst.copy_from_slice(&w[..B]);
        chunks += 1;
    }
    chunks
}

/// Unpacks the first `n` values of `bits` bits from MLX words, one value per byte.
///
/// # Panics
///
/// If `bits` is not in `1..=8` or `packed` holds fewer than [`packed_len`]`(n, bits)` words (a
/// programming error; [`unpack_into`] returns an error instead).
pub fn unpack(packed: &[u32], bits: u32, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    if let Err(e) = unpack_into(packed, bits, &mut out) {
        panic!("ecq::quant::unpack: {e}");
    }
    out
}

/// Unpacks `out.len()` values of `bits` bits from MLX words into `out`, one value per byte.
/// Words of `packed` beyond the ones needed are ignored.
///
/// # Errors
///
/// [`QuantError::UnsupportedBits`] if `bits` is not in `1..=8`,
/// [`QuantError::LengthMismatch`] if `packed` holds fewer than [`packed_len`]`(out.len(), bits)`
/// words.
pub fn unpack_into(packed: &[u32], bits: u32, out: &mut [u8]) -> Result<(), QuantError> {
    check_bits(bits)?;
    let expected = packed_len(out.len(), bits);
    if packed.len() < expected {
        return Err(QuantError::LengthMismatch {
            what: "packed input",
            expected,
            actual: packed.len(),
        });
    }
    let whole = match bits {
        1 => unpack_chunks::<1>(packed, out),
        2 => unpack_chunks::<2>(packed, out),
        3 => unpack_chunks::<3>(packed, out),
        4 => unpack_chunks::<4>(packed, out),
        5 => unpack_chunks::<5>(packed, out),
        6 => unpack_chunks::<6>(packed, out),
        7 => unpack_chunks::<7>(packed, out),
        _ => unpack_chunks::<8>(packed, out),
    };
    let words = &packed[whole * bits as usize..];
    let mask = (1u32 << bits) - 1;
    for (i, o) in out[whole * 32..].iter_mut().enumerate() {
        let bit = i * bits as usize;
        let (w, off) = (bit / 32, bit % 32);
        let mut v = words[w] >> off;
        if off + bits as usize > 32 {
            v |= words[w + 1] << (32 - off);
        }
        *o = (v & mask) as u8;
    }
    Ok(())
}

/// Unpacks every whole chunk of 32 values (held in exactly `B` words); returns the number of
/// chunks done.
#[inline]
fn unpack_chunks<const B: usize>(packed: &[u32], out: &mut [u8]) -> usize {
    let mask = (1u64 << B) - 1;
    let mut chunks = 0;
    for (dst, src) in out.chunks_exact_mut(32).zip(packed.chunks_exact(B)) {
        let dst: &mut [u8; 32] = dst.try_into().expect("chunk of 32");
        let mut w = [0u32; 9];
        w[..B].copy_from_slice(src);
        if B == 7 {
            // 8 values span 56 bits, which may not fit a 64-bit window at a byte offset.
            for (i, o) in dst.iter_mut().enumerate() {
                let bit = i * B;
                let (wi, off) = (bit / 32, bit % 32);
                let x = u64::from(w[wi]) | (u64::from(w[wi + 1]) << 32);
                *o = ((x >> off) & mask) as u8;
            }
        } else {
            // Four runs of 8 values, each `B` whole bytes starting at a byte offset: one 64-bit
            // window per run, then constant shifts (all indices are compile-time constants).
            for (k, run) in dst.chunks_exact_mut(8).enumerate() {
                let bit = k * 8 * B;
                let (wi, off) = (bit / 32, bit % 32);
                let x = (u64::from(w[wi]) | (u64::from(w[wi + 1]) << 32)) >> off;
                for (j, o) in run.iter_mut().enumerate() {
                    *o = ((x >> (j * B)) & mask) as u8;
                }
            }
        }
        chunks += 1;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: bit by bit.
    fn pack_ref(q: &[u8], bits: u32) -> Vec<u32> {
        let mut out = vec![0u32; packed_len(q.len(), bits)];
        for (i, &v) in q.iter().enumerate() {
            for b in 0..bits as usize {
                if (v >> b) & 1 == 1 {
                    let k = i * bits as usize + b;
                    out[k / 32] |= 1 << (k % 32);
                }
            }
        }
        out
    }

    #[test]
    fn matches_bitwise_reference() {
        for bits in 1..=8u32 {
            for n in [0usize, 1, 5, 31, 32, 33, 64, 100, 257] {
                let q: Vec<u8> = (0..n)
                    .map(|i| ((i * 2654435761usize) >> 7) as u8 & ((1u16 << bits) - 1) as u8)
                    .collect();
                let p = pack(&q, bits);
                assert_eq!(p, pack_ref(&q, bits), "bits {bits} n {n}");
                assert_eq!(unpack(&p, bits, n), q, "bits {bits} n {n}");
            }
        }
    }

    #[test]
    fn bad_arguments() {
        let mut out = [0u32; 1];
        assert_eq!(
            pack_into(&[0; 8], 0, &mut out),
            Err(QuantError::UnsupportedBits { bits: 0 })
        );
        assert!(matches!(
            pack_into(&[0; 64], 4, &mut out),
            Err(QuantError::LengthMismatch {
                expected: 8,
                actual: 1,
                ..
            })
        ));
        let mut out = [0u8; 64];
        assert!(matches!(
            unpack_into(&[0; 7], 4, &mut out),
            Err(QuantError::LengthMismatch {
                expected: 8,
                actual: 7,
                ..
            })
        ));
    }
}
