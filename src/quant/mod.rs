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
