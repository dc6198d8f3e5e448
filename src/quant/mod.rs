//! MLX-exact affine quantization, packing and dequantization; symmetric absmax quantization.
//!
//! * [`quantize_affine`] reproduces `mx.quantize(w, group_size, bits)` (affine mode) of MLX's CPU
//!   backend bit for bit for `f32`, `f16` and `bf16` weights, giving a [`QuantizedMatrix`]
//!   (packed words, scales, biases) whose [`QuantizedMatrix::dequantize`] matches
//!   `mx.dequantize` bit for bit. `tests/quant_golden.rs` checks both against vectors made by the
//!   real MLX (`scripts/make_golden.py`; `pip install "mlx[cpu]" numpy` to regenerate them).
//! * [`pack`] / [`unpack`] convert between one `u8` per weight ("symbols") and MLX's packed `u32`
//!   words for every bit width.
//! * [`quantize_absmax`] is symmetric absmax quantization per tensor or per row, used to
//!   reproduce published entropy-coding measurements.
//!
//! # MLX affine quantization
//!
//! Per group of `group_size` consecutive weights of a row, in `f32` whatever the input type:
//!
//! ```text
//! n_bins = 2^bits - 1;  eps = 1e-7
//! scale  = max((w_max - w_min) / n_bins, eps)
//! side   = |w_min| > |w_max|;  scale = side ? scale : -scale;  edge = side ? w_min : w_max
//! q0     = rint(edge / scale)
//! if q0 != 0 { scale = edge / q0; bias = edge } else { bias = 0 }
//! q      = clamp(rint((w - bias) / scale), 0, n_bins)        (rint: half to even)
//! ```
//!
//! The `q` are computed with the `f32` scale and bias; only then are the stored scale and bias
//! rounded to the input type (`static_cast<T>` in MLX's `quantize` of
//! `mlx/backend/cpu/quantized.cpp`). Dequantization is `scale * q + bias` done as two operations
//! in the input type: for `f16`/`bf16` the product is rounded to that type before the bias is
//! added and the sum is rounded again (no fused multiply-add), which is what MLX 0.32.4 returns.
//!
//! MLX's Metal kernel differs from its CPU backend (it rounds half away from zero and starts
//! `w_max` at 0), so files quantized on an Apple GPU need not match [`quantize_affine`]; ecq
//! never re-quantizes stored files, it keeps their words, scales and biases as they are.
//!
//! # Packing
//!
//! MLX packs a row of `b`-bit values as one continuous little-endian bit stream: value `i`
//! occupies bits `[b*i, b*(i+1))` of the stream, least significant bit first, and bit `k` of the
//! stream is bit `k % 32` of word `k / 32`. For 2, 4 and 8 bits that is "element `i` of a word at
//! bits `[b*i, b*(i+1))`"; for 3, 5 and 6 bits values straddle word boundaries (MLX writes 8
//! values in 3 or 5 bytes, or 4 values in 3 bytes, which is the same stream). A row of a
//! multiple of 32 values (every MLX row) ends on a word boundary, so a whole matrix is also one
//! stream: [`pack`] and [`unpack`] work on a row or on a whole matrix alike.
//!
//! # Example
//!
//! ```
//! use ecq::dtype::FloatDType;
//! use ecq::quant::{quantize_affine, unpack, AffineParams};
//!
//! let w: Vec<f32> = (0..4 * 128).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
//! let m = quantize_affine(&w, 4, 128, FloatDType::BF16, AffineParams::new(3, 64)?)?;
//! let q = unpack(&m.packed, 3, 4 * 128);
//! assert_eq!(q, m.symbols());
//! assert!(m.scales.iter().all(|&s| FloatDType::BF16.is_representable(s)));
//! # Ok::<(), ecq::quant::QuantError>(())
//! ```

mod absmax;
mod affine;
mod error;
mod pack;
mod params;

pub use absmax::{quantize_absmax, AbsmaxMode, AbsmaxQuantized};
pub use affine::{quantize_affine, QuantizedMatrix};
pub use error::QuantError;
pub use pack::{pack, pack_into, packed_len, unpack, unpack_into};
pub use params::AffineParams;
