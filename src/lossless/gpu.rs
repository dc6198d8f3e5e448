//! GPU kernels for lossless 16-bit weights.
