//! The float element types of weights, scales and biases.
//!
//! ecq handles every float tensor as `f32` in memory; [`FloatDType`] says which type the values
//! came from (and are stored back as), and converts exactly between that type's little-endian
//! bytes and `f32`. Every `f16` and `bf16` value is exactly representable as `f32`, so decoding is
//! lossless; encoding and [`FloatDType::round`] round to nearest, ties to even, the way MLX's
//! `astype` does, and keep NaN a NaN.
//!
//! # Example
//!
//! ```
//! use ecq::dtype::FloatDType;
//!
//! let dt = FloatDType::BF16;
//! let bytes = dt.encode_le(&[1.0, -0.5, 3.0e38]);
//! assert_eq!(bytes.len(), 3 * dt.size_bytes());
//! let back = dt.decode_le(&bytes).unwrap();
//! assert_eq!(back[..2], [1.0, -0.5]);
//! assert_eq!(back[2], dt.round(3.0e38));
//! ```

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};

/// The float types ecq reads and writes: MLX's `float32`, `float16` and `bfloat16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatDType {
    /// IEEE 754 binary32 (`F32` in safetensors, `mx.float32`).
    F32,
    /// IEEE 754 binary16 (`F16` in safetensors, `mx.float16`).
    F16,
    /// bfloat16: the upper half of a binary32 (`BF16` in safetensors, `mx.bfloat16`).
    BF16,
}

/// What can go wrong converting bytes or names to a [`FloatDType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DTypeError {
    /// The safetensors dtype is not a float type ecq handles.
    #[error("unsupported tensor dtype {0} (expected F32, F16 or BF16)")]
    Unsupported(String),
    /// A byte buffer's length is not a multiple of the element size.
    #[error("{len} bytes is not a whole number of {dtype} elements ({size} bytes each)")]
    RaggedBytes {
        /// Length of the buffer in bytes.
        len: usize,
        /// The element type.
        dtype: FloatDType,
        /// Size of one element in bytes.
        size: usize,
    },
    /// An output buffer does not hold exactly as many elements as the input.
    #[error("output holds {actual} elements but the input has {expected}")]
    OutputLength {
        /// Elements in the input.
        expected: usize,
        /// Elements the output slice holds.
        actual: usize,
    },
}

impl FloatDType {
    /// All supported types, widest first.
    pub const ALL: [FloatDType; 3] = [FloatDType::F32, FloatDType::F16, FloatDType::BF16];

    /// Size of one element in bytes (4, 2 or 2).
    pub const fn size_bytes(self) -> usize {
        match self {
            FloatDType::F32 => 4,
            FloatDType::F16 | FloatDType::BF16 => 2,
        }
    }

    /// The short name: `"f32"`, `"f16"` or `"bf16"`.
    pub const fn name(self) -> &'static str {
        match self {
            FloatDType::F32 => "f32",
            FloatDType::F16 => "f16",
            FloatDType::BF16 => "bf16",
        }
    }

    /// MLX's (and numpy's) name: `"float32"`, `"float16"` or `"bfloat16"`.
    pub const fn mlx_name(self) -> &'static str {
        match self {
            FloatDType::F32 => "float32",
            FloatDType::F16 => "float16",
            FloatDType::BF16 => "bfloat16",
        }
    }

    /// The matching safetensors dtype.
    pub const fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            FloatDType::F32 => safetensors::Dtype::F32,
            FloatDType::F16 => safetensors::Dtype::F16,
            FloatDType::BF16 => safetensors::Dtype::BF16,
        }
    }

    /// The float type of a safetensors dtype; an error for every other dtype.
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Result<Self, DTypeError> {
        match dtype {
            safetensors::Dtype::F32 => Ok(FloatDType::F32),
            safetensors::Dtype::F16 => Ok(FloatDType::F16),
            safetensors::Dtype::BF16 => Ok(FloatDType::BF16),
            other => Err(DTypeError::Unsupported(format!("{other:?}"))),
        }
    }

    /// Rounds `x` to the nearest value representable in this type (ties to even; overflow gives
    /// an infinity; NaN stays NaN). The identity for [`FloatDType::F32`].
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            FloatDType::F32 => x,
            FloatDType::F16 => f16::from_f32(x).to_f32(),
            FloatDType::BF16 => round_bf16(x),
        }
    }

    /// Rounds every value of `values` in place, like [`FloatDType::round`] but vectorized (F16C
    /// where the CPU has it, branch-free bit arithmetic for `bf16`).
    pub fn round_slice(self, values: &mut [f32]) {
        match self {
            FloatDType::F32 => {}
            FloatDType::F16 => {
                use half::slice::HalfFloatSliceExt;
                let mut buf = [f16::ZERO; 256];
                for chunk in values.chunks_mut(256) {
                    let h = &mut buf[..chunk.len()];
                    h.convert_from_f32_slice(chunk);
                    h.convert_to_f32_slice(chunk);
                }
            }
            FloatDType::BF16 => {
                for v in values.iter_mut() {
                    *v = round_bf16(*v);
                }
            }
        }
    }

    /// Whether `x` is exactly representable in this type (NaN counts as representable).
    #[inline]
    pub fn is_representable(self, x: f32) -> bool {
        x.is_nan() || self.round(x).to_bits() == x.to_bits()
    }

    /// Decodes little-endian bytes of this type into `f32`, exactly.
    pub fn decode_le(self, bytes: &[u8]) -> Result<Vec<f32>, DTypeError> {
        let n = self.element_count(bytes.len())?;
        let mut out = vec![0.0f32; n];
        self.decode_le_into(bytes, &mut out)?;
        Ok(out)
    }

    /// Decodes little-endian bytes of this type into `out`, which must hold exactly
    /// `bytes.len() / size_bytes()` elements.
    pub fn decode_le_into(self, bytes: &[u8], out: &mut [f32]) -> Result<(), DTypeError> {
        let n = self.element_count(bytes.len())?;
        if out.len() != n {
            return Err(DTypeError::OutputLength {
                expected: n,
                actual: out.len(),
            });
        }
        match self {
            FloatDType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            FloatDType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            FloatDType::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    // bf16 is the upper half of an f32.
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
                }
            }
        }
        Ok(())
    }

    /// Encodes `values` as little-endian bytes of this type, rounding to nearest, ties to even
    /// (see [`FloatDType::round`]).
    pub fn encode_le(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size_bytes());
        match self {
            FloatDType::F32 => {
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            FloatDType::F16 => {
                for &v in values {
                    out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
                }
            }
            FloatDType::BF16 => {
                for &v in values {
                    out.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
                }
            }
        }
        out
    }

    fn element_count(self, len: usize) -> Result<usize, DTypeError> {
        let size = self.size_bytes();
        if !len.is_multiple_of(size) {
            return Err(DTypeError::RaggedBytes {
                len,
                dtype: self,
                size,
            });
        }
        Ok(len / size)
    }
}

/// `f32` to the nearest `bf16`, ties to even, as an `f32` (same result as `half::bf16::from_f32`:
/// overflow rounds to infinity, NaN stays a quiet NaN with its sign and upper payload).
#[inline]
fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = if b & 0x7fff_ffff > 0x7f80_0000 {
        b | 0x0040_0000
    } else {
        b.wrapping_add(0x7fff + ((b >> 16) & 1))
    };
    f32::from_bits(rounded & 0xffff_0000)
}

impl fmt::Display for FloatDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FloatDType {
    type Err = DTypeError;

    /// Accepts `f32`/`float32`/`F32`, `f16`/`float16`/`F16`, `bf16`/`bfloat16`/`BF16`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(FloatDType::F32),
            "f16" | "float16" | "half" => Ok(FloatDType::F16),
            "bf16" | "bfloat16" => Ok(FloatDType::BF16),
            _ => Err(DTypeError::Unsupported(s.to_string())),
        }
    }
}

impl TryFrom<safetensors::Dtype> for FloatDType {
    type Error = DTypeError;

    fn try_from(dtype: safetensors::Dtype) -> Result<Self, Self::Error> {
        FloatDType::from_safetensors(dtype)
    }
}

impl From<FloatDType> for safetensors::Dtype {
    fn from(dtype: FloatDType) -> Self {
        dtype.to_safetensors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounding() {
        for dt in FloatDType::ALL {
            let vals = [0.0f32, -0.0, 1.0, -2.5, 65504.0, 1.0e-7, f32::INFINITY];
            let rounded: Vec<f32> = vals.iter().map(|&v| dt.round(v)).collect();
            let back = dt.decode_le(&dt.encode_le(&vals)).unwrap();
            for (a, b) in rounded.iter().zip(&back) {
                assert_eq!(a.to_bits(), b.to_bits(), "{dt}");
            }
            assert!(dt.decode_le(&dt.encode_le(&[f32::NAN])).unwrap()[0].is_nan());
            assert!(dt.round(f32::NAN).is_nan());
        }
        // Ties to even: 1 + 2^-8 lies halfway between two bf16 values.
        assert_eq!(FloatDType::BF16.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(FloatDType::BF16.round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(FloatDType::F16.round(1.0 + 1.0 / 2048.0), 1.0);
        assert_eq!(FloatDType::F16.round(70000.0), f32::INFINITY);
        assert!(FloatDType::BF16.is_representable(1.5));
        assert!(!FloatDType::BF16.is_representable(1.0 + 1.0 / 1024.0));
    }

    #[test]
    fn fast_rounding_matches_half() {
        let mut state = 0x9e37_79b9_u32;
        let mut xs: Vec<f32> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                f32::from_bits(state)
            })
            .collect();
        xs.extend([
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            1.0e-45,
            65520.0,
            65519.0,
            f32::NAN,
        ]);
        for dt in FloatDType::ALL {
            let mut v = xs.clone();
            dt.round_slice(&mut v);
            for (&x, &r) in xs.iter().zip(&v) {
                let expected = match dt {
                    FloatDType::F32 => x,
                    FloatDType::F16 => f16::from_f32(x).to_f32(),
                    FloatDType::BF16 => bf16::from_f32(x).to_f32(),
                };
                assert_eq!(r.to_bits(), expected.to_bits(), "{dt} {x:e}");
                assert_eq!(dt.round(x).to_bits(), expected.to_bits(), "{dt} {x:e}");
            }
        }
    }

    #[test]
    fn errors() {
        assert!(matches!(
            FloatDType::F16.decode_le(&[0, 0, 0]),
            Err(DTypeError::RaggedBytes { len: 3, .. })
        ));
        assert!(FloatDType::from_safetensors(safetensors::Dtype::U32).is_err());
        assert_eq!("bfloat16".parse::<FloatDType>().unwrap(), FloatDType::BF16);
        assert!("int8".parse::<FloatDType>().is_err());
    }
}
