//! The error type of the [`quant`](crate::quant) module.

use crate::dtype::FloatDType;

/// What can go wrong quantizing, packing or assembling a quantized matrix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// An affine bit width MLX does not support.
    #[error("unsupported bits {bits} (MLX supports 2, 3, 4, 5, 6, 8)")]
    UnsupportedBits {
        /// The bit width asked for.
        bits: u32,
    },
    /// An affine group size MLX does not support.
    #[error("unsupported group size {group_size} (MLX supports 32, 64, 128)")]
    UnsupportedGroupSize {
        /// The group size asked for.
        group_size: u32,
    },
    /// The number of columns is not a multiple of the group size.
    #[error("columns {cols} not divisible by group size {group_size}")]
    ColumnsNotDivisible {
        /// Columns (weights per row).
        cols: usize,
        /// The group size.
        group_size: u32,
    },
    /// A bit width for absmax quantization outside `2..=8`.
    #[error("unsupported absmax bits {bits} (supported: 2 to 8)")]
    UnsupportedAbsmaxBits {
        /// The bit width asked for.
        bits: u32,
    },
    /// A buffer does not hold the number of elements its shape requires.
    #[error("{what}: expected {expected} elements, got {actual}")]
    LengthMismatch {
        /// Which buffer (e.g. `"scales"`, `"packed weights"`).
        what: &'static str,
        /// The length the shape requires.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// `rows * cols` (or a derived size) does not fit in `usize`.
    #[error("matrix of {rows} x {cols} is too large")]
    TooLarge {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// An input weight is NaN or infinite (MLX's result is undefined for those).
    #[error("weight at row {row}, column {col} is not finite ({value})")]
    NonFinite {
        /// Row of the offending weight.
        row: usize,
        /// Column of the offending weight.
        col: usize,
        /// Its value.
        value: f32,
    },
    /// A scale or bias is not exactly representable in the matrix's float type.
    #[error("{what} {index} ({value:e}) is not exactly representable in {dtype}")]
    NotRepresentable {
        /// `"scale"` or `"bias"`.
        what: &'static str,
        /// Its index in the flattened scales or biases.
        index: usize,
        /// Its value.
        value: f32,
        /// The float type it should have been.
        dtype: FloatDType,
    },
    /// A symbol does not fit in the bit width.
    #[error("symbol {index} is {value}, which does not fit in {bits} bits")]
    SymbolOutOfRange {
        /// Index of the symbol.
        index: usize,
        /// Its value.
        value: u8,
        /// The bit width.
        bits: u32,
    },
}
