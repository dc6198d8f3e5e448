//! # ecq — entropy-coded quantization
//!
//! ecq shrinks MLX-quantized LLM weights further with lossless interleaved rANS coding and runs
//! inference directly on the coded form on any GPU through wgpu/WGSL.
//!
//! * [`quant`]: MLX-exact affine quantization (`mx.quantize`), bit-exact packing, per-tensor and
//!   per-channel absmax quantization.
//! * [`rans`]: the CPU reference codec (32 interleaved lanes, 32-bit state, 16-bit words, per-tile
//!   frequency tables). Its byte layout is specified in `docs/FORMAT.md`. [`rans::SplitMatrix`]
//!   codes only the high bits of each weight and keeps the low bits raw (fewer rANS steps per
//!   weight, for the GPU; in memory only, not yet in the file format).
//! * [`model`]: reading and writing mlx-lm model directories and safetensors files.
//! * [`analysis`]: what entropy coding can win on a model (`ecq inspect`).
//! * [`container`]: entropy-coded models stored as safetensors files.
//! * [`gpu`]: wgpu context, GPU rANS decode and the fused decode + dequantize + GEMV kernel.
//! * [`linear`]: linear layers on the coded weights (GEMV and batched prefill on the GPU, a CPU
//!   reference) and a loader of every coded layer of a model.
#![warn(missing_docs)]

pub mod analysis;
pub mod container;
pub mod dtype;
pub mod gpu;
pub mod linear;
pub mod lossless;
pub mod model;
pub mod quant;
pub mod rans;

/// The README's Rust example, compiled and run as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
