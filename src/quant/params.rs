//! Validated parameters of MLX affine quantization.

use super::QuantError;

/// Bit width and group size of MLX affine quantization, validated: `bits` is one of 2, 3, 4, 5,
/// 6, 8 and `group_size` one of 32, 64, 128.
///
/// # Example
///
/// ```
/// use ecq::quant::{AffineParams, QuantError};
///
/// let p = AffineParams::new(4, 64)?;
/// assert_eq!((p.bits(), p.group_size()), (4, 64));
/// assert_eq!(p.words_per_row(256)?, 32);
/// assert!(matches!(AffineParams::new(7, 64), Err(QuantError::UnsupportedBits { bits: 7 })));
/// # Ok::<(), QuantError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AffineParams {
    bits: u32,
    group_size: u32,
}

impl AffineParams {
    /// Bit widths MLX supports.
    pub const SUPPORTED_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
    /// Group sizes MLX supports.
    pub const SUPPORTED_GROUP_SIZES: [u32; 3] = [32, 64, 128];

    /// Validates and builds the parameters.
    pub fn new(bits: u32, group_size: u32) -> Result<Self, QuantError> {
        if !Self::SUPPORTED_BITS.contains(&bits) {
            return Err(QuantError::UnsupportedBits { bits });
        }
        if !Self::SUPPORTED_GROUP_SIZES.contains(&group_size) {
            return Err(QuantError::UnsupportedGroupSize { group_size });
        }
        Ok(AffineParams { bits, group_size })
    }

    /// Bits per weight.
    pub const fn bits(self) -> u32 {
        self.bits
    }

    /// Weights per group sharing one scale and bias.
    pub const fn group_size(self) -> u32 {
        self.group_size
    }

    /// `2^bits - 1`, the largest quantized value.
    pub const fn max_symbol(self) -> u32 {
        (1 << self.bits) - 1
    }

    /// Checks that `cols` is a multiple of the group size.
    pub fn check_cols(self, cols: usize) -> Result<(), QuantError> {
        if !cols.is_multiple_of(self.group_size as usize) {
            return Err(QuantError::ColumnsNotDivisible {
                cols,
                group_size: self.group_size,
            });
        }
        Ok(())
    }

    /// Groups (scales, biases) per row of `cols` weights.
    pub fn groups_per_row(self, cols: usize) -> Result<usize, QuantError> {
        self.check_cols(cols)?;
        Ok(cols / self.group_size as usize)
    }

    /// Packed `u32` words per row of `cols` weights (`cols * bits / 32`).
    pub fn words_per_row(self, cols: usize) -> Result<usize, QuantError> {
        self.check_cols(cols)?;
        // cols is a multiple of 32, so cols * bits / 32 == cols / 32 * bits.
        Ok(cols / 32 * self.bits as usize)
    }
}

impl Default for AffineParams {
    /// MLX's defaults: 4 bits, group size 64.
    fn default() -> Self {
        AffineParams {
            bits: 4,
            group_size: 64,
        }
    }
}
