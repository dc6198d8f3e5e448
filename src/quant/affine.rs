//! MLX affine quantization (`mx.quantize` / `mx.dequantize`, mode `"affine"`), bit for bit as
//! MLX's CPU backend computes it.
//!
//! The formulas are documented on the [`quant`](crate::quant) module.

use rayon::prelude::*;

use super::{pack_into, unpack_into, AffineParams, QuantError};
use crate::dtype::FloatDType;

/// Weights per rayon task, at least.
const PAR_MIN_WEIGHTS: usize = 1 << 16;

/// One MLX affine-quantized matrix: packed words, scales and biases.
///
/// Invariants (checked by [`QuantizedMatrix::from_parts`] and [`QuantizedMatrix::validate`],
/// guaranteed by [`quantize_affine`]): `bits`/`group_size` are valid [`AffineParams`], `cols` is
/// a multiple of `group_size`, `packed.len() == rows * cols * bits / 32`,
/// `scales.len() == biases.len() == rows * cols / group_size`, and every scale and bias is exactly
/// representable in `dtype`.
///
/// # Example
///
/// ```
/// use ecq::dtype::FloatDType;
/// use ecq::quant::{quantize_affine, AffineParams};
///
/// let w: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
/// let m = quantize_affine(&w, 2, 64, FloatDType::F32, AffineParams::new(4, 32)?)?;
/// assert_eq!(m.packed.len(), 2 * 64 * 4 / 32);
/// assert_eq!(m.scales.len(), 2 * 64 / 32);
/// let q = m.symbols();
/// assert!(q.iter().all(|&s| s < 16));
/// let back = m.dequantize();
/// for (i, (&x, &y)) in w.iter().zip(&back).enumerate() {
///     let g = i / 32;
///     assert_eq!(y, m.scales[g] * f32::from(q[i]) + m.biases[g]);
///     // Within half a step, or one step for the far extreme (MLX's adjusted scale can push it
///     // just past the last bin).
///     assert!((x - y).abs() <= m.scales[g].abs() + 1e-6);
/// }
/// # Ok::<(), ecq::quant::QuantError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    /// Rows (output features; leading dimensions flattened).
    pub rows: usize,
    /// Weights per row (input features).
    pub cols: usize,
    /// Bits per weight: 2, 3, 4, 5, 6 or 8.
    pub bits: u32,
    /// Weights per group: 32, 64 or 128.
    pub group_size: u32,
    /// The float type of the original weights, scales and biases.
    pub dtype: FloatDType,
    /// MLX packed words, `cols * bits / 32` per row, row after row.
    pub packed: Vec<u32>,
    /// One scale per group, `cols / group_size` per row (exactly representable in `dtype`).
    pub scales: Vec<f32>,
    /// One bias per group, `cols / group_size` per row (exactly representable in `dtype`).
    pub biases: Vec<f32>,
}

/// Quantizes a row-major `rows x cols` matrix exactly like `mx.quantize(w, group_size, bits)`
/// (affine mode) on MLX's CPU backend, with `w` held in `dtype`.
///
/// Values of `w` are first rounded to `dtype` (like `mx.array(w).astype(dtype)`); pass values
/// already representable in `dtype` to quantize them as they are. `rows == 0` gives an empty
/// matrix.
///
/// # Errors
///
/// [`QuantError::LengthMismatch`] if `w.len() != rows * cols`, [`QuantError::ColumnsNotDivisible`]
/// if `cols % group_size != 0`, [`QuantError::NonFinite`] for a NaN or infinite weight (after
/// rounding to `dtype`), [`QuantError::TooLarge`] if `rows * cols` overflows.
pub fn quantize_affine(
    w: &[f32],
    rows: usize,
    cols: usize,
    dtype: FloatDType,
    params: AffineParams,
) -> Result<QuantizedMatrix, QuantError> {
    let n = rows
        .checked_mul(cols)
        .ok_or(QuantError::TooLarge { rows, cols })?;
    let groups = params.groups_per_row(cols)?;
    let words = params.words_per_row(cols)?;
    if w.len() != n {
        return Err(QuantError::LengthMismatch {
            what: "weights",
            expected: n,
            actual: w.len(),
        });
    }
    let mut m = QuantizedMatrix {
        rows,
        cols,
        bits: params.bits(),
        group_size: params.group_size(),
        dtype,
        packed: vec![0; rows * words],
        scales: vec![0.0; rows * groups],
        biases: vec![0.0; rows * groups],
    };
    if n == 0 {
        return Ok(m);
    }
    if let Some((row, col, value)) = first_non_finite(w, cols, dtype) {
        return Err(QuantError::NonFinite { row, col, value });
    }
    let min_rows = PAR_MIN_WEIGHTS.div_ceil(cols);
    w.par_chunks(cols)
        .zip(m.packed.par_chunks_mut(words))
        .zip(m.scales.par_chunks_mut(groups))
        .zip(m.biases.par_chunks_mut(groups))
        .with_min_len(min_rows)
        .for_each(|(((w_row, p_row), s_row), b_row)| {
            quantize_row(w_row, dtype, params, p_row, s_row, b_row)
        });
    Ok(m)
}

/// The first weight that is not finite once rounded to `dtype`, as (row, column, value).
fn first_non_finite(w: &[f32], cols: usize, dtype: FloatDType) -> Option<(usize, usize, f32)> {
    w.par_chunks(cols)
        .enumerate()
        .with_min_len(PAR_MIN_WEIGHTS.div_ceil(cols))
        .find_map_first(|(r, row)| {
            row.iter()
                .position(|&x| !dtype.round(x).is_finite())
                .map(|c| (r, c, row[c]))
        })
}

/// C++ `std::max(a, b)`: `a < b ? b : a`.
#[inline]
fn cpp_max(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// C++ `std::min(a, b)`: `b < a ? b : a`.
#[inline]
fn cpp_min(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

/// Quantizes one row (MLX CPU `quantize`, group by group).
fn quantize_row(
    w_row: &[f32],
    dtype: FloatDType,
    params: AffineParams,
    packed: &mut [u32],
    scales: &mut [f32],
    biases: &mut [f32],
) {
    let gs = params.group_size() as usize;
    let bits = params.bits();
    let words_per_group = gs / 32 * bits as usize;
    let n_bins = params.max_symbol() as f32;
    // MLX: `float eps = 1e-7;` (the double 1e-7 rounded to float).
    let eps = 1e-7f64 as f32;
    let mut x = [0.0f32; 128];
    let mut q = [0u8; 128];
    for (g, group) in w_row.chunks_exact(gs).enumerate() {
        let x = &mut x[..gs];
        x.copy_from_slice(group);
        dtype.round_slice(x);
        let mut w_min = f32::INFINITY;
        let mut w_max = -w_min;
        for &xi in x.iter() {
            w_max = cpp_max(w_max, xi);
            w_min = cpp_min(w_min, xi);
        }
        let side = w_min.abs() > w_max.abs();
        let mut scale = cpp_max((w_max - w_min) / n_bins, eps);
        scale = if side { scale } else { -scale };
        let edge = if side { w_min } else { w_max };
        let q0 = (edge / scale).round_ties_even();
        let mut bias = 0.0f32;
        if q0 != 0.0 {
            scale = edge / q0;
            bias = edge;
        }
        for (qi, &xi) in q[..gs].iter_mut().zip(x.iter()) {
            let v = ((xi - bias) / scale).round_ties_even();
            // Finite inputs keep v finite or +-inf, never NaN; `as u8` saturates anyway.
            *qi = cpp_min(cpp_max(v, 0.0), n_bins) as u8;
        }
        pack_into(
            &q[..gs],
            bits,
            &mut packed[g * words_per_group..(g + 1) * words_per_group],
        )
        .expect("group of a valid size");
        scales[g] = dtype.round(scale);
        biases[g] = dtype.round(bias);
    }
}

impl QuantizedMatrix {
    /// Assembles a matrix from its stored parts (e.g. tensors read from a file), checking every
    /// invariant listed on [`QuantizedMatrix`].
    ///
    /// # Errors
    ///
    /// [`QuantError::ColumnsNotDivisible`], [`QuantError::LengthMismatch`] naming the part
    /// (`"packed weights"`, `"scales"`, `"biases"`) with expected and actual lengths,
    /// [`QuantError::NotRepresentable`] for a scale or bias that is not a `dtype` value,
    /// [`QuantError::TooLarge`].
    pub fn from_parts(
        rows: usize,
        cols: usize,
        params: AffineParams,
        dtype: FloatDType,
        packed: Vec<u32>,
        scales: Vec<f32>,
        biases: Vec<f32>,
    ) -> Result<Self, QuantError> {
        let m = QuantizedMatrix {
            rows,
            cols,
            bits: params.bits(),
            group_size: params.group_size(),
            dtype,
            packed,
            scales,
            biases,
        };
        m.validate()?;
        Ok(m)
    }

    /// Builds a matrix from unpacked symbols (one `u8` per weight, `< 2^bits`), packing them.
    ///
    /// # Errors
    ///
    /// As [`QuantizedMatrix::from_parts`], plus [`QuantError::LengthMismatch`] for `symbols` and
    /// [`QuantError::SymbolOutOfRange`].
    pub fn from_symbols(
        rows: usize,
        cols: usize,
        params: AffineParams,
        dtype: FloatDType,
        symbols: &[u8],
        scales: Vec<f32>,
        biases: Vec<f32>,
    ) -> Result<Self, QuantError> {
        let n = rows
            .checked_mul(cols)
            .ok_or(QuantError::TooLarge { rows, cols })?;
        params.check_cols(cols)?;
        if symbols.len() != n {
            return Err(QuantError::LengthMismatch {
                what: "symbols",
                expected: n,
                actual: symbols.len(),
            });
        }
        let max = params.max_symbol();
        if let Some(index) = symbols.iter().position(|&s| u32::from(s) > max) {
            return Err(QuantError::SymbolOutOfRange {
                index,
                value: symbols[index],
                bits: params.bits(),
            });
        }
        let mut packed = vec![0u32; n / 32 * params.bits() as usize];
        pack_into(symbols, params.bits(), &mut packed)?;
        Self::from_parts(rows, cols, params, dtype, packed, scales, biases)
    }

    /// The quantization parameters.
    ///
    /// # Errors
    ///
    /// [`QuantError::UnsupportedBits`] / [`QuantError::UnsupportedGroupSize`] if the public
    /// fields were set to unsupported values by hand.
    pub fn params(&self) -> Result<AffineParams, QuantError> {
        AffineParams::new(self.bits, self.group_size)
    }

    /// Number of weights, `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the matrix holds no weights.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Groups (scales) per row.
    pub fn groups_per_row(&self) -> usize {
        self.cols / self.group_size.max(1) as usize
    }

    /// Packed words per row.
    pub fn words_per_row(&self) -> usize {
        self.cols * self.bits as usize / 32
    }

    /// Checks every invariant listed on [`QuantizedMatrix`].
    ///
    /// # Errors
    ///
    /// See [`QuantizedMatrix::from_parts`].
    pub fn validate(&self) -> Result<(), QuantError> {
        let params = self.params()?;
        let (rows, cols) = (self.rows, self.cols);
        let n = rows
            .checked_mul(cols)
            .ok_or(QuantError::TooLarge { rows, cols })?;
        params.check_cols(cols)?;
        let checks = [
            (
                "packed weights",
                n / 32 * params.bits() as usize,
                self.packed.len(),
            ),
            (
                "scales",
                n / params.group_size() as usize,
                self.scales.len(),
            ),
            (
                "biases",
                n / params.group_size() as usize,
                self.biases.len(),
            ),
        ];
        for (what, expected, actual) in checks {
            if expected != actual {
                return Err(QuantError::LengthMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        for (what, values) in [("scale", &self.scales), ("bias", &self.biases)] {
            if let Some(index) = values.iter().position(|&v| !self.dtype.is_representable(v)) {
                return Err(QuantError::NotRepresentable {
                    what,
                    index,
                    value: values[index],
                    dtype: self.dtype,
                });
            }
        }
        Ok(())
    }

    /// The quantized values, one `u8` per weight, row-major (MLX's `q`, in `0..2^bits`).
    ///
    /// # Panics
    ///
    /// If the public fields were made inconsistent by hand (see [`QuantizedMatrix::validate`]);
    /// [`QuantizedMatrix::symbols_into`] returns an error instead.
    pub fn symbols(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len()];
        if let Err(e) = self.symbols_into(&mut out) {
            panic!("QuantizedMatrix::symbols: {e}");
        }
        out
    }

    /// Unpacks the quantized values into `out` (`rows * cols` bytes).
    ///
    /// # Errors
    ///
    /// [`QuantError::LengthMismatch`] if `out` or `packed` has the wrong length, or the errors of
    /// [`QuantizedMatrix::params`].
    pub fn symbols_into(&self, out: &mut [u8]) -> Result<(), QuantError> {
        let params = self.params()?;
        let n = self.len();
        if out.len() != n {
            return Err(QuantError::LengthMismatch {
                what: "symbol output",
                expected: n,
                actual: out.len(),
            });
        }
        params.check_cols(self.cols)?;
        let words = params.words_per_row(self.cols)?;
        if self.packed.len() != self.rows * words {
            return Err(QuantError::LengthMismatch {
                what: "packed weights",
                expected: self.rows * words,
                actual: self.packed.len(),
            });
        }
        if n == 0 {
            return Ok(());
        }
        // Rows start on word boundaries: split the stream into row blocks for rayon.
        let rows_per_task = PAR_MIN_WEIGHTS.div_ceil(self.cols);
        out.par_chunks_mut(rows_per_task * self.cols)
            .zip(self.packed.par_chunks(rows_per_task * words))
            .try_for_each(|(o, p)| unpack_into(p, params.bits(), o))
    }

    /// Dequantizes to `rows * cols` values exactly as `mx.dequantize` does on MLX's CPU backend
    /// (`scale * q + bias` in `dtype` arithmetic; see the [`quant`](crate::quant) module docs). Every value is
    /// exactly representable in `dtype`.
    ///
    /// # Panics
    ///
    /// If the public fields were made inconsistent by hand (see [`QuantizedMatrix::validate`]);
    /// [`QuantizedMatrix::dequantize_into`] returns an error instead.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.len()];
        if let Err(e) = self.dequantize_into(&mut out) {
            panic!("QuantizedMatrix::dequantize: {e}");
        }
        out
    }

    /// Dequantizes into `out` (`rows * cols` values).
    ///
    /// # Errors
    ///
    /// [`QuantError::LengthMismatch`] if `out` or a part has the wrong length, or the errors of
    /// [`QuantizedMatrix::params`].
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<(), QuantError> {
        let params = self.params()?;
        let n = self.len();
        if out.len() != n {
            return Err(QuantError::LengthMismatch {
                what: "dequantized output",
                expected: n,
                actual: out.len(),
            });
        }
        let groups = params.groups_per_row(self.cols)?;
        let words = params.words_per_row(self.cols)?;
        for (what, expected, actual) in [
            ("packed weights", self.rows * words, self.packed.len()),
            ("scales", self.rows * groups, self.scales.len()),
            ("biases", self.rows * groups, self.biases.len()),
        ] {
            if expected != actual {
                return Err(QuantError::LengthMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        if n == 0 {
            return Ok(());
        }
        let gs = params.group_size() as usize;
        let bits = params.bits();
        let dtype = self.dtype;
        out.par_chunks_mut(self.cols)
            .zip(self.packed.par_chunks(words))
            .zip(self.scales.par_chunks(groups))
            .zip(self.biases.par_chunks(groups))
            .with_min_len(PAR_MIN_WEIGHTS.div_ceil(self.cols))
            .try_for_each(|(((o, p), s), b)| -> Result<(), QuantError> {
                let mut q = [0u8; 128];
                let wpg = gs / 32 * bits as usize;
                for (g, og) in o.chunks_exact_mut(gs).enumerate() {
                    unpack_into(&p[g * wpg..(g + 1) * wpg], bits, &mut q[..gs])?;
                    dequantize_group(&q[..gs], s[g], b[g], dtype, og);
                }
                Ok(())
            })
    }
}

/// `scale * q + bias` per weight as MLX computes it in `dtype`.
#[inline]
fn dequantize_group(q: &[u8], scale: f32, bias: f32, dtype: FloatDType, out: &mut [f32]) {
    for (o, &qi) in out.iter_mut().zip(q) {
        *o = scale * f32::from(qi);
    }
    // In f16/bf16 the product (exact in f32: at most 8 + 11 significant bits) is rounded to the
    // type before the bias is added, and the sum is rounded again, as MLX's float16_t /
    // bfloat16_t arithmetic does. In f32 both are plain f32 operations (no fused multiply-add).
    dtype.round_slice(out);
    for o in out.iter_mut() {
        *o += bias;
    }
    dtype.round_slice(out);
}
