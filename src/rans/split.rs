//! Coded high bits, raw low bits: a quantized matrix whose high `bits - low_bits` bits per
//! weight are entropy-coded as an ordinary [`EncodedMatrix`] and whose low `low_bits` bits are
//! stored as they are, MLX-packed.
//!
//! Why: a rANS step costs the same whatever it decodes, and a GPU pays for steps, not bits
//! (BENCHMARKS.md, issue 5). A byte symbol holds two 4-bit weights but four 2-bit ones, so
//! coding only the high two bits of 4-bit weights halves the steps. On MLX affine weights the
//! low two bits are nearly uniform given the high two (1.95 of 2 bits on MiniLM g64), so storing
//! them raw costs little: MiniLM g64 4-bit codes to 3.798 bits/weight split against 3.747 whole
//! (+1.4%; g32 +0.8%, g128 +2.1%; `tests/rans_split.rs`). On peaked weights it is a loss
//! (per-tensor absmax: 2.53 against 1.11 bits/weight); [`SplitMatrix::encode`] does not choose
//! for the caller.
//!
//! `chunk_symbols` of [`EncodeOptions`] counts symbols, which hold four weights here:
//! [`SplitMatrix::default_options`] halves the default so the chunks, and so the GPU
//! parallelism, are those of whole 4-bit symbols at the default; the measurements above and in
//! BENCHMARKS.md use it. With `EncodeOptions::default()` the chunks hold twice the weights: on
//! an H200 the fused GEMV at 4096x14336 took 121 µs instead of 74 (BENCHMARKS.md issue 5, seventh
//! session's table).

use rayon::prelude::*;

use super::{encode, CodecError, EncodeOptions, EncodedMatrix};
use crate::quant::{pack_into, packed_len, unpack_into};

/// A matrix of `bits`-bit weights stored as its coded high bits and raw low bits: weight `i` is
/// `(high[i] << low_bits) | low[i]`.
///
/// Invariant: `1 <= low_bits < bits <= 8`, `high` has `bits - low_bits` bits per weight, `low`
/// holds exactly `rows * cols * low_bits / 32` words (`cols * low_bits` is a multiple of 32, so
/// every row's low bits start on a word), and `low_crc` is their CRC-32C when built by
/// [`encode`](Self::encode) (checked when decoding).
///
/// # Example
///
/// ```
/// use ecq::rans::SplitMatrix;
///
/// // A 4 x 64 matrix of 4-bit values: the high 2 bits coded (four weights per symbol), the
/// // low 2 bits raw.
/// let q: Vec<u8> = (0..4 * 64).map(|i| ((i * 7) % 16) as u8).collect();
/// let m = SplitMatrix::encode(&q, 4, 64, 4, 2, &SplitMatrix::default_options())?;
/// assert_eq!(m.high().bits(), 2);
/// assert_eq!(m.high().weights_per_symbol(), 4);
/// assert_eq!(m.low().len(), 4 * 64 * 2 / 32);
/// assert_eq!(m.decode_symbols()?, q);
/// assert_eq!(m.decode_packed()?, ecq::quant::pack(&q, 4));
/// # Ok::<(), ecq::rans::CodecError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SplitMatrix {
    high: EncodedMatrix,
    low: Vec<u32>,
    low_bits: u32,
    low_crc: u32,
}

fn arg<T>(s: String) -> Result<T, CodecError> {
    Err(CodecError::InvalidArgument(s))
}

fn check_split(bits: u32, low_bits: u32, cols: usize) -> Result<(), CodecError> {
    if !(2..=8).contains(&bits) || low_bits == 0 || low_bits >= bits {
        return arg(format!(
            "low_bits = {low_bits} with bits = {bits}: need 1 <= low_bits < bits <= 8"
        ));
    }
    if !(cols * low_bits as usize).is_multiple_of(32) {
        return arg(format!(
            "cols = {cols}: cols * low_bits ({low_bits}) is not a multiple of 32"
        ));
    }
    Ok(())
}

impl SplitMatrix {
    /// The encoder options for split 4-bit weights: the defaults with half the symbols per chunk
    /// ([`DEFAULT_CHUNK_SYMBOLS`](super::DEFAULT_CHUNK_SYMBOLS) / 2), so that a chunk holds as
    /// many weights as whole 4-bit symbols' chunks do.
    pub fn default_options() -> EncodeOptions {
        EncodeOptions {
            chunk_symbols: super::DEFAULT_CHUNK_SYMBOLS / 2,
            ..Default::default()
        }
    }

    /// Splits `symbols` (`rows * cols` values `< 2^bits`, row-major) into high and low bits and
    /// codes the high ones with [`encode`] and `opts` (weights per symbol from
    /// `bits - low_bits` unless `opts` sets it).
    ///
    /// # Errors
    ///
    /// [`CodecError::InvalidArgument`] unless `1 <= low_bits < bits <= 8` and `cols * low_bits`
    /// is a multiple of 32; everything [`encode`] rejects (a value `>= 2^bits` is reported at
    /// its index with the full `bits`).
    pub fn encode(
        symbols: &[u8],
        rows: usize,
        cols: usize,
        bits: u32,
        low_bits: u32,
        opts: &EncodeOptions,
    ) -> Result<Self, CodecError> {
        check_split(bits, low_bits, cols)?;
        if rows.checked_mul(cols) != Some(symbols.len()) {
            return arg(format!(
                "{} symbols given for a {rows} x {cols} matrix",
                symbols.len()
            ));
        }
        let fits = |v: u8| u32::from(v) >> bits == 0;
        if let Some(i) = symbols.par_iter().position_first(|&v| !fits(v)) {
            return Err(CodecError::SymbolOutOfRange {
                index: i,
                value: symbols[i],
                bits,
            });
        }
        let high_syms: Vec<u8> = symbols.par_iter().map(|&v| v >> low_bits).collect();
        let high = encode(&high_syms, rows, cols, bits - low_bits, opts)?;
        drop(high_syms);
        let mut low = vec![0u32; packed_len(symbols.len(), low_bits)];
        let row_words = cols * low_bits as usize / 32;
        if row_words > 0 {
            let block = 64;
            low.par_chunks_mut(row_words * block)
                .zip(symbols.par_chunks(cols * block))
                .for_each(|(o, s)| {
                    // pack_into uses only the low `low_bits` bits of each value
                    pack_into(s, low_bits, o).expect("whole rows of low bits");
                });
        }
        let low_crc = crc_of(&low);
        Ok(SplitMatrix {
            high,
            low,
            low_bits,
            low_crc,
        })
    }

    /// Builds a split matrix from its stored parts: the coded high bits, the raw low bits
    /// (`rows * cols * low_bits / 32` MLX-packed words) and their CRC-32C (checked when
    /// decoding, or by [`verify_checksums`](Self::verify_checksums)).
    ///
    /// # Errors
    ///
    /// [`CodecError::InvalidArgument`] if `high.bits() + low_bits` exceeds 8 or `cols *
    /// low_bits` is not a multiple of 32, [`CodecError::SizeMismatch`] if `low` has the wrong
    /// length.
    pub fn from_parts(
        high: EncodedMatrix,
        low: Vec<u32>,
        low_bits: u32,
        low_crc: u32,
    ) -> Result<Self, CodecError> {
        check_split(high.bits() + low_bits, low_bits, high.cols())?;
        let expected = high.weights() * low_bits as usize / 32;
        if low.len() != expected {
            return Err(CodecError::SizeMismatch {
                part: "low bits",
                expected: expected as u64,
                actual: low.len() as u64,
            });
        }
        Ok(SplitMatrix {
            high,
            low,
            low_bits,
            low_crc,
        })
    }

    /// Splits into `(high, low, low_bits, low_crc)`.
    pub fn into_parts(self) -> (EncodedMatrix, Vec<u32>, u32, u32) {
        (self.high, self.low, self.low_bits, self.low_crc)
    }

    /// The coded high bits.
    pub fn high(&self) -> &EncodedMatrix {
        &self.high
    }
    /// The raw low bits, MLX-packed, `cols * low_bits / 32` words per row.
    pub fn low(&self) -> &[u32] {
        &self.low
    }
    /// Raw low bits per weight.
    pub fn low_bits(&self) -> u32 {
        self.low_bits
    }
    /// The stored CRC-32C of the low bits.
    pub fn low_crc(&self) -> u32 {
        self.low_crc
    }
    /// Bits per weight, coded and raw together.
    pub fn bits(&self) -> u32 {
        self.high.bits() + self.low_bits
    }
    /// Rows.
    pub fn rows(&self) -> usize {
        self.high.rows()
    }
    /// Weights per row.
    pub fn cols(&self) -> usize {
        self.high.cols()
    }
    /// Number of weights.
    pub fn weights(&self) -> usize {
        self.high.weights()
    }
    /// Stored bytes: the coded matrix's, the low bits and their 4-byte checksum.
    pub fn total_bytes(&self) -> usize {
        self.high.total_bytes() + self.low.len() * 4 + 4
    }

    /// Verifies the coded part's tile checksums and the low bits' checksum.
    pub fn verify_checksums(&self) -> Result<(), CodecError> {
        self.high.verify_checksums()?;
        self.verify_low_checksum()
    }

    fn verify_low_checksum(&self) -> Result<(), CodecError> {
        let computed = crc_of(&self.low);
        if computed != self.low_crc {
            return Err(CodecError::LowBitsChecksumMismatch {
                stored: self.low_crc,
                computed,
            });
        }
        Ok(())
    }

    /// Decodes the weights, one `u8` per weight, row-major, verifying every checksum.
    pub fn decode_symbols(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![0u8; self.weights()];
        self.decode_symbols_into(&mut out)?;
        Ok(out)
    }

    /// [`decode_symbols`](Self::decode_symbols) into a caller's buffer of `rows * cols` bytes.
    pub fn decode_symbols_into(&self, out: &mut [u8]) -> Result<(), CodecError> {
        // (verifies the coded part's tile checksums as it decodes)
        self.high.decode_symbols_into(out)?;
        self.verify_low_checksum()?;
        let cols = self.cols();
        let row_words = cols * self.low_bits as usize / 32;
        if row_words == 0 {
            return Ok(());
        }
        let (lb, block) = (self.low_bits, 64);
        out.par_chunks_mut(cols * block)
            .zip(self.low.par_chunks(row_words * block))
            .for_each(|(o, l)| {
                let mut lows = vec![0u8; o.len()];
                unpack_into(l, lb, &mut lows).expect("whole rows of low bits");
                for (v, lo) in o.iter_mut().zip(lows) {
                    *v = (*v << lb) | lo;
                }
            });
        Ok(())
    }

    /// Decodes to MLX packed `u32` words of [`bits`](Self::bits) bits (`rows * cols * bits /
    /// 32`; needs `cols * bits` a multiple of 32), verifying every checksum.
    pub fn decode_packed(&self) -> Result<Vec<u32>, CodecError> {
        let bits = self.bits();
        if !(self.cols() * bits as usize).is_multiple_of(32) {
            return Err(CodecError::Unsupported(
                "MLX packing needs cols * bits to be a multiple of 32",
            ));
        }
        let q = self.decode_symbols()?;
        let mut out = vec![0u32; packed_len(q.len(), bits)];
        pack_into(&q, bits, &mut out)
            .map_err(|_| CodecError::Unsupported("MLX packing rejected the geometry"))?;
        Ok(out)
    }
}

/// CRC-32C of the raw low bits' little-endian bytes (the coded parts' checksum routine).
fn crc_of(low: &[u32]) -> u32 {
    super::crc_append(0, low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, bits: u32, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| rng.random_range(0..1u32 << bits) as u8)
            .collect()
    }

    #[test]
    fn round_trips_every_split() {
        for bits in 2..=8u32 {
            for low_bits in 1..bits {
                // 32 columns make cols * low_bits whole words for every low_bits
                for (rows, cols) in [(0, 32), (1, 32), (7, 64), (33, 96)] {
                    let q = random(rows * cols, bits, (bits * 100 + low_bits) as u64);
                    let m =
                        SplitMatrix::encode(&q, rows, cols, bits, low_bits, &Default::default())
                            .unwrap();
                    assert_eq!(m.bits(), bits);
                    assert_eq!(m.low().len(), rows * cols * low_bits as usize / 32);
                    assert_eq!(
                        m.decode_symbols().unwrap(),
                        q,
                        "{bits}/{low_bits} {rows}x{cols}"
                    );
                    assert_eq!(m.decode_packed().unwrap(), crate::quant::pack(&q, bits));
                    let (h, l, lb, c) = m.clone().into_parts();
                    assert_eq!(SplitMatrix::from_parts(h, l, lb, c).unwrap(), m);
                }
            }
        }
    }

    #[test]
    fn high_bits_take_four_weights_per_symbol() {
        let q = random(16 * 128, 4, 1);
        let m = SplitMatrix::encode(&q, 16, 128, 4, 2, &Default::default()).unwrap();
        assert_eq!(m.high().weights_per_symbol(), 4);
        assert_eq!(m.high().symbols_per_row(), 32);
        // exact size: the coded part, 2 raw bits per weight, 4 bytes of checksum
        assert_eq!(m.total_bytes(), m.high().total_bytes() + 16 * 128 / 4 + 4);
    }

    #[test]
    fn bad_arguments_are_named() {
        let q = vec![0u8; 64];
        let e = |r: Result<SplitMatrix, CodecError>| r.unwrap_err().to_string();
        let opts = EncodeOptions::default();
        assert!(e(SplitMatrix::encode(&q, 2, 32, 4, 0, &opts)).contains("low_bits = 0"));
        assert!(e(SplitMatrix::encode(&q, 2, 32, 4, 4, &opts)).contains("low_bits = 4"));
        assert!(e(SplitMatrix::encode(&q, 2, 32, 9, 2, &opts)).contains("bits = 9"));
        assert!(e(SplitMatrix::encode(&q, 4, 16, 4, 1, &opts)).contains("cols = 16"));
        assert!(e(SplitMatrix::encode(&q, 3, 32, 4, 2, &opts)).contains("64 symbols"));
        let mut bad = q.clone();
        bad[37] = 16;
        assert_eq!(
            SplitMatrix::encode(&bad, 2, 32, 4, 2, &opts).unwrap_err(),
            CodecError::SymbolOutOfRange {
                index: 37,
                value: 16,
                bits: 4
            }
        );
    }

    #[test]
    fn corrupt_low_bits_are_caught() {
        let q = random(8 * 64, 4, 2);
        let m = SplitMatrix::encode(&q, 8, 64, 4, 2, &Default::default()).unwrap();
        let (h, mut l, lb, c) = m.into_parts();
        l[3] ^= 1 << 7;
        let m = SplitMatrix::from_parts(h.clone(), l.clone(), lb, c).unwrap();
        assert!(matches!(
            m.decode_symbols(),
            Err(CodecError::LowBitsChecksumMismatch { stored, .. }) if stored == c
        ));
        l.pop();
        assert!(matches!(
            SplitMatrix::from_parts(h.clone(), l, lb, c),
            Err(CodecError::SizeMismatch {
                part: "low bits",
                ..
            })
        ));
        assert!(SplitMatrix::from_parts(h, vec![0; 8 * 64 * 7 / 32], 7, 0)
            .unwrap_err()
            .to_string()
            .contains("low_bits = 7 with bits = 9"));
    }
}
