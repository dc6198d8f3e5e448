//! The CPU reference: dequantized `f32` weights, products summed in `f64`.

use super::{add_bias, check_x, Linear, LinearError};
use crate::quant::QuantizedMatrix;
use crate::rans::EncodedMatrix;

/// A linear layer on the CPU, the reference of the GPU layers (same [`Linear`] interface).
///
/// Weights are held dequantized in `f32` (`scale * q + bias` per weight, as the GPU kernels
/// compute them; for dense layers the weights themselves); each output is summed in `f64`, then
/// rounded to `f32`.
///
/// ```
/// use ecq::linear::{CpuLinear, Linear};
///
/// let l = CpuLinear::from_dense("dense", 2, 3, vec![1.0, 2.0, 3.0, 0.0, 1.0, 0.0], Some(vec![0.5, 0.0]))?;
/// assert_eq!(l.forward(&[1.0, 1.0, 1.0])?, vec![6.5, 1.0]);
/// # Ok::<(), ecq::linear::LinearError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CpuLinear {
    name: String,
    rows: usize,
    cols: usize,
    weights: Vec<f32>,
    /// `|scale * q| + |bias|` per weight (the magnitude the GPU rounds relative to), or `|w|`.
    magnitude: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl CpuLinear {
    /// A dense layer from row-major `rows x cols` weights.
    pub fn from_dense(
        name: &str,
        rows: usize,
        cols: usize,
        weights: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self, LinearError> {
        if weights.len() != rows * cols {
            return Err(LinearError::InvalidLayer {
                layer: name.into(),
                reason: format!("{} weights for {rows} x {cols}", weights.len()),
            });
        }
        check_bias(name, rows, bias.as_deref())?;
        let magnitude = weights.iter().map(|w| w.abs()).collect();
        Ok(CpuLinear {
            name: name.into(),
            rows,
            cols,
            weights,
            magnitude,
            bias,
        })
    }

    /// From MLX affine symbols (one `u8` per weight, row-major) with their scales and biases
    /// (`rows * cols / group_size` each).
    #[allow(clippy::too_many_arguments)]
    pub fn from_symbols(
        name: &str,
        rows: usize,
        cols: usize,
        group_size: usize,
        symbols: &[u8],
        scales: &[f32],
        biases: &[f32],
        bias: Option<Vec<f32>>,
    ) -> Result<Self, LinearError> {
        let bad = |reason: String| LinearError::InvalidLayer {
            layer: name.into(),
            reason,
        };
        if group_size == 0 || !cols.is_multiple_of(group_size) {
            return Err(bad(format!(
                "group size {group_size} does not divide cols {cols}"
            )));
        }
        let groups = rows * (cols / group_size);
        if symbols.len() != rows * cols || scales.len() != groups || biases.len() != groups {
            return Err(bad(format!(
                "{} symbols, {} scales, {} biases for {rows} x {cols} g{group_size}",
                symbols.len(),
                scales.len(),
                biases.len()
            )));
        }
        check_bias(name, rows, bias.as_deref())?;
        let mut weights = Vec::with_capacity(rows * cols);
        let mut magnitude = Vec::with_capacity(rows * cols);
        for (i, &q) in symbols.iter().enumerate() {
            let g = (i / cols) * (cols / group_size) + (i % cols) / group_size;
            let sq = scales[g] * q as f32;
            weights.push(sq + biases[g]);
            magnitude.push(sq.abs() + biases[g].abs());
        }
        Ok(CpuLinear {
            name: name.into(),
            rows,
            cols,
            weights,
            magnitude,
            bias,
        })
    }

    /// From an MLX quantized matrix.
    pub fn from_quantized(
        name: &str,
        q: &QuantizedMatrix,
        bias: Option<Vec<f32>>,
    ) -> Result<Self, LinearError> {
        Self::from_symbols(
            name,
            q.rows,
            q.cols,
            q.group_size as usize,
            &q.symbols(),
            &q.scales,
            &q.biases,
            bias,
        )
    }

    /// From a coded matrix, decoded on the CPU (tile checksums verified).
    pub fn from_encoded(
        name: &str,
        enc: &EncodedMatrix,
        group_size: usize,
        scales: &[f32],
        biases: &[f32],
        bias: Option<Vec<f32>>,
    ) -> Result<Self, LinearError> {
        let codec = |source| LinearError::Codec {
            layer: name.into(),
            source,
        };
        enc.verify_checksums().map_err(codec)?;
        let symbols = enc.decode_symbols().map_err(codec)?;
        Self::from_symbols(
            name,
            enc.rows(),
            enc.cols(),
            group_size,
            &symbols,
            scales,
            biases,
            bias,
        )
    }

    /// From a stored coded weight, whole or split, decoded on the CPU (every checksum
    /// verified).
    pub fn from_coded(
        name: &str,
        w: &crate::container::CodedWeight,
        group_size: usize,
        scales: &[f32],
        biases: &[f32],
        bias: Option<Vec<f32>>,
    ) -> Result<Self, LinearError> {
        let symbols = w.decode_symbols().map_err(|source| LinearError::Codec {
            layer: name.into(),
            source,
        })?;
        Self::from_symbols(
            name,
            w.rows(),
            w.cols(),
            group_size,
            &symbols,
            scales,
            biases,
            bias,
        )
    }

    /// The dequantized weights, row-major.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// The additive bias, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// The exact (`f64`) outputs of `m` activation rows and, per output, the sum of the absolute
    /// values of its terms (`sum_k (|scale*q_k| + |bias_g|) |x_k|`), the scale of the GPU's
    /// rounding error ([`super::tolerance`]).
    pub fn reference(&self, x: &[f32], m: usize) -> Result<(Vec<f64>, Vec<f64>), LinearError> {
        check_x(&self.name, self.cols, x.len(), m)?;
        let (r, k) = (self.rows, self.cols);
        let mut y = vec![0.0f64; m * r];
        let mut a = vec![0.0f64; m * r];
        for mi in 0..m {
            let xr = &x[mi * k..(mi + 1) * k];
            for row in 0..r {
                let w = &self.weights[row * k..(row + 1) * k];
                let mg = &self.magnitude[row * k..(row + 1) * k];
                let (mut s, mut sa) = (0.0f64, 0.0f64);
                for i in 0..k {
                    s += w[i] as f64 * xr[i] as f64;
                    sa += mg[i] as f64 * (xr[i] as f64).abs();
                }
                if let Some(b) = &self.bias {
                    s += b[row] as f64;
                    sa += (b[row] as f64).abs();
                }
                y[mi * r + row] = s;
                a[mi * r + row] = sa;
            }
        }
        Ok((y, a))
    }
}

fn check_bias(name: &str, rows: usize, bias: Option<&[f32]>) -> Result<(), LinearError> {
    if let Some(b) = bias {
        if b.len() != rows {
            return Err(LinearError::InvalidLayer {
                layer: name.into(),
                reason: format!("bias has {} values, the layer {rows} outputs", b.len()),
            });
        }
    }
    Ok(())
}

impl Linear for CpuLinear {
    fn name(&self) -> &str {
        &self.name
    }

    fn in_features(&self) -> usize {
        self.cols
    }

    fn out_features(&self) -> usize {
        self.rows
    }

    fn forward(&self, x: &[f32]) -> Result<Vec<f32>, LinearError> {
        self.forward_batch(x, 1)
    }

    fn forward_batch(&self, x: &[f32], m: usize) -> Result<Vec<f32>, LinearError> {
        check_x(&self.name, self.cols, x.len(), m)?;
        let (r, k) = (self.rows, self.cols);
        let mut y = vec![0.0f32; m * r];
        for mi in 0..m {
            let xr = &x[mi * k..(mi + 1) * k];
            for row in 0..r {
                let w = &self.weights[row * k..(row + 1) * k];
                let s: f64 = w.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                y[mi * r + row] = s as f32;
            }
        }
        add_bias(&mut y, self.bias.as_deref());
        Ok(y)
    }
}
