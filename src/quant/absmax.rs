//! Symmetric absmax quantization, per tensor or per row ("channel").
//!
//! `scale = absmax / (2^(bits-1) - 1)`, `q = clamp(rint(w / scale), -(2^(bits-1) - 1),
//! 2^(bits-1) - 1)` (rint: half to even), stored as the symbol `q + 2^(bits-1)` in
//! `1..2^bits`. This is the scheme behind the low bits-per-weight figures some entropy-coding
//! papers report (EntroLLM's ~1.2 bits/weight): with one scale for a whole tensor most weights
//! fall into a few central bins. It is here to reproduce those measurements, not as an
//! alternative to MLX's affine format (its reconstruction error is far larger).

use rayon::prelude::*;

use super::QuantError;

/// Weights per rayon task, at least.
const PAR_MIN_WEIGHTS: usize = 1 << 16;

/// Where one absmax scale applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbsmaxMode {
    /// One scale for the whole matrix.
    PerTensor,
    /// One scale per row (output channel).
    PerChannel,
}

/// A matrix quantized with symmetric absmax scales.
///
/// # Example
///
/// ```
/// use ecq::quant::{quantize_absmax, AbsmaxMode};
///
/// let w = [0.5f32, -1.0, 0.25, 0.0, 2.0, -0.5, 1.0, 0.1];
/// let a = quantize_absmax(&w, 2, 4, 4, AbsmaxMode::PerChannel)?;
/// assert_eq!(a.scales, vec![1.0 / 7.0, 2.0 / 7.0]);
/// assert_eq!(a.symbols[1], 8 - 7); // -1.0 is the row's absmax: q = -7
/// let back = a.dequantize();
/// assert!((back[4] - 2.0).abs() < 1e-6);
/// # Ok::<(), ecq::quant::QuantError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AbsmaxQuantized {
    /// Rows.
    pub rows: usize,
    /// Weights per row.
    pub cols: usize,
    /// Bits per weight, 2 to 8.
    pub bits: u32,
    /// Per tensor or per row.
    pub mode: AbsmaxMode,
    /// `q + 2^(bits-1)` per weight, row-major, in `1..2^bits`.
    pub symbols: Vec<u8>,
    /// One scale (`PerTensor`) or one per row (`PerChannel`); 0 where the absmax is 0.
    pub scales: Vec<f32>,
}

/// Quantizes a row-major `rows x cols` matrix with symmetric absmax scales.
///
/// A scale of 0 (an all-zero tensor or row) gives `q = 0` for every weight.
///
/// # Errors
///
/// [`QuantError::UnsupportedAbsmaxBits`] if `bits` is not in `2..=8`,
/// [`QuantError::LengthMismatch`] if `w.len() != rows * cols`, [`QuantError::NonFinite`] for a
/// NaN or infinite weight, [`QuantError::TooLarge`].
pub fn quantize_absmax(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    mode: AbsmaxMode,
) -> Result<AbsmaxQuantized, QuantError> {
    if !(2..=8).contains(&bits) {
        return Err(QuantError::UnsupportedAbsmaxBits { bits });
    }
    let n = rows
        .checked_mul(cols)
        .ok_or(QuantError::TooLarge { rows, cols })?;
    if w.len() != n {
        return Err(QuantError::LengthMismatch {
            what: "weights",
            expected: n,
            actual: w.len(),
        });
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(QuantError::NonFinite {
            row: i / cols,
            col: i % cols,
            value: w[i],
        });
    }
    let qmax = ((1u32 << (bits - 1)) - 1) as f32;
    let offset = 1i32 << (bits - 1);
    let absmax = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scales: Vec<f32> = match mode {
        AbsmaxMode::PerTensor => vec![absmax(w) / qmax],
        AbsmaxMode::PerChannel if n == 0 => vec![0.0; rows],
        AbsmaxMode::PerChannel => w.chunks_exact(cols).map(|r| absmax(r) / qmax).collect(),
    };
    let mut symbols = vec![0u8; n];
    if n > 0 {
        let scale_of = |r: usize| match mode {
            AbsmaxMode::PerTensor => scales[0],
            AbsmaxMode::PerChannel => scales[r],
        };
        symbols
            .par_chunks_mut(cols)
            .zip(w.par_chunks(cols))
            .enumerate()
            .with_min_len(PAR_MIN_WEIGHTS.div_ceil(cols))
            .for_each(|(r, (s_row, w_row))| {
                let scale = scale_of(r);
                for (s, &x) in s_row.iter_mut().zip(w_row) {
                    let q = if scale == 0.0 {
                        0.0
                    } else {
                        (x / scale).round_ties_even().clamp(-qmax, qmax)
                    };
                    *s = (q as i32 + offset) as u8;
                }
            });
    }
    Ok(AbsmaxQuantized {
        rows,
        cols,
        bits,
        mode,
        symbols,
        scales,
    })
}

impl AbsmaxQuantized {
    /// The scale of row `r`.
    ///
    /// # Panics
    ///
    /// If `r` is out of range for the scales.
    pub fn scale_of_row(&self, r: usize) -> f32 {
        match self.mode {
            AbsmaxMode::PerTensor => self.scales[0],
            AbsmaxMode::PerChannel => self.scales[r],
        }
    }

    /// Reconstructs `scale * q` per weight, in `f32`.
    ///
    /// # Panics
    ///
    /// If the public fields were made inconsistent by hand (too few scales).
    pub fn dequantize(&self) -> Vec<f32> {
        let offset = 1i32 << (self.bits.clamp(1, 8) - 1);
        let mut out = vec![0.0f32; self.symbols.len()];
        if self.cols == 0 {
            return out;
        }
        for (r, (o_row, s_row)) in out
            .chunks_mut(self.cols)
            .zip(self.symbols.chunks(self.cols))
            .enumerate()
        {
            let scale = self.scale_of_row(r);
            for (o, &s) in o_row.iter_mut().zip(s_row) {
                *o = scale * (i32::from(s) - offset) as f32;
            }
        }
        out
    }
}
