//! Linear layers that run on the entropy-coded form of their weights (issue 6).
//!
//! * [`Linear`] is the common interface: `y = W x + bias` for one activation vector
//!   ([`Linear::forward`]) or for `M` row-major activation rows at once
//!   ([`Linear::forward_batch`], prefill), with `f32` or `f16` activations;
//!   [`Linear::forward_batch_into`] writes into a slice the caller reuses.
//! * [`EntropyCodedLinear`] holds one coded matrix (docs/FORMAT.md) resident on the GPU,
//!   uploaded once. `forward` runs the fused decode + dequantize + GEMV of [`crate::gpu`]
//!   (`wgsl/rans_gemv*.wgsl`); `forward_batch` runs the batched kernel, which decodes every
//!   chunk once per dispatch into workgroup memory and multiplies it with up to 512 activation
//!   rows (larger `M` is processed in blocks of 512): `wgsl/rans_gemm_blocked.wgsl` (the
//!   blocked subgroup decoder) where 32-wide subgroups run it, else the portable
//!   `wgsl/rans_gemm.wgsl`. For at most [`GEMV_BATCH_MAX_M`] rows (split matrices;
//!   [`GEMV_BATCH_MAX_M_SMALL`] for split layers up to [`SMALL_LAYER_WEIGHTS`];
//!   [`GEMV_BATCH_MAX_M_WHOLE`] whole; [`GEMV_BATCH_MAX_M_WINDOW`],
//!   [`GEMV_BATCH_MAX_M_WINDOW_MID`] (up to [`MID_LAYER_WEIGHTS`]) and
//!   [`GEMV_BATCH_MAX_M_WINDOW_SMALL`] window splits) on such adapters it runs one fused GEMV
//!   per row instead, which is faster there. Window splits run up to
//!   [`GEMV_BATCH_MAX_M_LANE_ORDER`] rows ([`GEMV_BATCH_MAX_M_LANE_ORDER_SMALL`] up to
//!   [`LANE_ORDER_SMALL_WEIGHTS`]) as fused GEMVs of [`GEMV_VECTORS`] rows a launch, each
//!   chunk decoded once per launch ([`crate::gpu::GpuCodedMatrix::gemv_many_dispatch`];
//!   [`LinearOptions::gemv_vectors`]), on activations in lane order for row pairs
//!   ([`EntropyCodedLinear::lane_order`]; in column order up to
//!   [`GEMV_BATCH_MAX_M_WINDOW_VECTORS`] rows, [`GEMV_BATCH_MAX_M_WINDOW_VECTORS_MID`] from
//!   [`SMALL_LAYER_WEIGHTS`] to [`MID_LAYER_WEIGHTS`]). With
//!   [`LinearOptions::cooperative_matrix`] on a device that has cooperative matrices, launches
//!   of at least [`COOP_MIN_ROWS`] rows multiply on them (tensor cores; activations rounded to
//!   f16) and such launches run at every row count instead of the batched kernel.
//! * [`QuantizedLinear`] is the plain MLX quantized baseline on the GPU (the plain GEMV for one
//!   vector, `wgsl/qgemv4_many.wgsl` in launches of up to 16 rows for 2 to
//!   [`PLAIN_GEMV_MANY_MAX_M`] rows of 4-bit weights where subgroups are 32 wide, both on
//!   activations in lane order, on a CPU device the plain GEMV a row up to
//!   [`CPU_GEMV_MAX_ROWS`] rows and on other GPUs without 32-wide subgroups up to
//!   [`PORTABLE_GPU_GEMV_MAX_ROWS`], `wgsl/qgemm.wgsl` for a batch, with the same multiply as
//!   `rans_gemm.wgsl`; for 4-bit weights the tiled f32 GEMM `wgsl/qgemm_tiled.wgsl` from
//!   [`TILED_GEMM_MIN_ROWS`] rows ([`TILED_GEMM_MIN_ROWS_PORTABLE_GPU`] on GPUs without
//!   32-wide subgroups), or [`TILED_GEMM_MIN_ROWS_SUBGROUPS`] where the launches of
//!   16 rows run, its columns split across workgroups where its tiles are few on a GPU;
//!   [`QuantizedLinear::set_cooperative_matrix`] as the coded layer's option, with the
//!   cooperative GEMM `wgsl/qgemm_coop.wgsl` from [`COOP_GEMM_MIN_ROWS`] rows, its columns
//!   split too where its tiles are fewer than about one an SM).
//! * [`CpuLinear`] is the reference: dequantized weights in `f32`, products summed in `f64`.
//! * [`EntropyCodedModel`] opens an encoded mlx-lm directory or file and uploads every coded
//!   linear layer straight from the memory-mapped file (borrowed slices into
//!   `queue.write_buffer`, no host copy of the coded streams), keyed by module path.
//! * Split matrices (`ecq encode --split [--row-pairs]`, docs/FORMAT.md section 7,
//!   [`CodedLayerRef::from_split`]) run the same way: their raw low bits follow the word stream
//!   in the layer's buffer; the fused GEMV merges them with the decoded high bits, and
//!   `rans_gemm.wgsl` does too (with two accumulators per row in row-pair order).
//!
//! A call's buffers (activations, outputs, the read back and the upload's staging memory) are
//! kept on the [`LinearDevice`] for the next call, and the launches of a call share them
//! through [`crate::gpu::BufferRange`]s: making them anew every call, with a fresh host
//! vector for the outputs, cost several times the GPU work of a 512-row call (BENCHMARKS.md,
//! issue 5, step 91). [`LinearDevice::release_call_buffers`] drops them.
//!
//! Matrices larger than the device's buffer limits are split into row bands of whole tiles
//! (each tile a whole number of chunks), each with its own buffers and dispatch; only a single
//! tile larger than the limit is an error ([`LinearError::TooLarge`]).
//!
//! # Example
//!
//! ```no_run
//! use ecq::linear::{EntropyCodedModel, Linear, LinearDevice};
//!
//! let dev = LinearDevice::new()?;
//! let model = EntropyCodedModel::open(&dev, "coded-model-dir")?;
//! let q = model.layer("encoder.layer.0.attention.self.query")?;
//! let x = vec![0.5f32; q.in_features()];
//! let y = q.forward(&x)?; // one token
//! let xb = [x.clone(), x].concat();
//! let yb = q.forward_batch(&xb, 2)?; // two tokens
//! assert_eq!(yb.len(), 2 * y.len());
//! let mut out = vec![0.0; yb.len()]; // reused from call to call
//! q.forward_batch_into(&xb, 2, &mut out)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod call_buffers;
mod coded;
mod cpu;
mod device;
mod model;
mod plain;
mod resident;

pub use coded::{
    CodedLayerRef, EntropyCodedLinear, LinearDispatch, LinearOptions, COOP_MIN_ROWS,
    DECODE_FIRST_MIN_ROWS, DECODE_FIRST_MIN_ROWS_COOP, DECODE_FIRST_MIN_ROWS_LANES,
    DECODE_FIRST_MIN_ROWS_NOT_WINDOW, DECODE_FIRST_MIN_ROWS_PORTABLE, GEMV_BATCH_MAX_M,
    GEMV_BATCH_MAX_M_LANES, GEMV_BATCH_MAX_M_LANE_ORDER, GEMV_BATCH_MAX_M_LANE_ORDER_SMALL,
    GEMV_BATCH_MAX_M_SMALL, GEMV_BATCH_MAX_M_WHOLE, GEMV_BATCH_MAX_M_WINDOW,
    GEMV_BATCH_MAX_M_WINDOW_MID, GEMV_BATCH_MAX_M_WINDOW_SMALL, GEMV_BATCH_MAX_M_WINDOW_VECTORS,
    GEMV_BATCH_MAX_M_WINDOW_VECTORS_MID, GEMV_SUBMIT_ROWS, GEMV_VECTORS, LANE_ORDER_SMALL_WEIGHTS,
    MAX_M_PER_DISPATCH, MID_LAYER_WEIGHTS, SMALL_LAYER_WEIGHTS, TARGET_WORKGROUPS,
};
pub use cpu::CpuLinear;
pub use device::LinearDevice;
pub use model::EntropyCodedModel;
pub use plain::{
    QuantizedLinear, COOP_GEMM_MIN_ROWS, CPU_GEMV_MAX_ROWS, PLAIN_GEMV_MANY_MAX_M,
    PLAIN_GEMV_MANY_MAX_M_SMALL, PORTABLE_GPU_GEMV_MAX_ROWS, TILED_GEMM_MIN_ROWS,
    TILED_GEMM_MIN_ROWS_PORTABLE_GPU, TILED_GEMM_MIN_ROWS_SUBGROUPS,
};
pub use resident::{ActivationOrder, GpuLinear, PreparedForward};

use half::f16;

use crate::container::ContainerError;
use crate::gpu::GpuError;

/// Error bound of the GPU kernels per accumulated term, relative to the sum of absolute values
/// of the terms (`sum_k (|scale*q_k| + |bias|) |x_k|`, see [`CpuLinear::reference`]).
///
/// The GPU computes each dequantized weight as `scale * q + bias` in `f32` (at most two
/// roundings, each `<= 2^-24` relative to `|scale*q| + |bias|`), each product `w * x` in `f32`
/// (one rounding) and sums the products of a row recursively in `f32`. Recursive summation of
/// `n` terms has error at most `gamma_n * sum |terms|` with `gamma_n ~= n * 2^-24` (Higham,
/// *Accuracy and Stability of Numerical Algorithms*, 4.2), so the whole error of a row of `K`
/// weights is below `2^-24 * (K + 3) * sum_abs`. The tests and examples allow
/// `TOLERANCE_PER_TERM * (K + 64) * sum_abs` (the margin covers the 32-lane reductions of the
/// GEMV kernels); real errors are far smaller (rounding errors grow like `sqrt(K)`).
pub const TOLERANCE_PER_TERM: f64 = 1.0 / (1u64 << 24) as f64;

/// The allowed absolute error of one output of a layer with `k` inputs whose terms have
/// absolute sum `sum_abs` (see [`TOLERANCE_PER_TERM`]).
pub fn tolerance(k: usize, sum_abs: f64) -> f64 {
    TOLERANCE_PER_TERM * (k as f64 + 64.0) * sum_abs + f64::MIN_POSITIVE
}

/// Errors of the linear layers and their loader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinearError {
    /// The model has no coded linear layer at this module path.
    #[error("no entropy-coded linear layer {path:?} in {model} ({available} coded layers, e.g. {example:?})")]
    MissingLayer {
        /// The module path asked for.
        path: String,
        /// The model (file or directory).
        model: String,
        /// How many coded layers it has.
        available: usize,
        /// One of them (empty if none).
        example: String,
    },
    /// The activations do not fit the layer.
    #[error(
        "{layer}: x has {got} values, expected {expected} ({m} row(s) of {in_features} inputs)"
    )]
    ShapeMismatch {
        /// The layer.
        layer: String,
        /// Values given.
        got: usize,
        /// Values expected (`m * in_features`).
        expected: usize,
        /// Activation rows.
        m: usize,
        /// The layer's inputs per row.
        in_features: usize,
    },
    /// The output slice given to [`Linear::forward_batch_into`] does not fit the call.
    #[error(
        "{layer}: y has {got} values, expected {expected} ({m} row(s) of {out_features} outputs)"
    )]
    OutputMismatch {
        /// The layer.
        layer: String,
        /// Values given.
        got: usize,
        /// Values expected (`m * out_features`).
        expected: usize,
        /// Activation rows.
        m: usize,
        /// The layer's outputs per row.
        out_features: usize,
    },
    /// A buffer the layer or a call needs is larger than the device allows: one tile of the
    /// coded matrix (the smallest unit a matrix is split into), the plain weights, or a call's
    /// rows. Every path reports it so, the host's checks and the GPU entry points'
    /// ([`crate::gpu::GpuError::TooLarge`]) alike; `remedy` says what avoids it.
    #[error("{layer}: {what} needs {bytes} bytes, more than the device limit {limit} ({limit_name}); {remedy}")]
    TooLarge {
        /// The layer.
        layer: String,
        /// Which buffer.
        what: String,
        /// Its size in bytes.
        bytes: u64,
        /// The limit.
        limit: u64,
        /// The limit's name in `wgpu::Limits` (or `LinearOptions::max_buffer_bytes`).
        limit_name: &'static str,
        /// What avoids it: [`LinearError::REMEDY_TILES`], [`LinearError::REMEDY_ROWS`] or
        /// [`LinearError::REMEDY_DEVICE`].
        remedy: &'static str,
    },
    /// The coded layer is inconsistent (header against parts, scales, bias).
    #[error("{layer}: {reason}")]
    InvalidLayer {
        /// The layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// The layer is not supported by these kernels (named in the message).
    #[error("{layer}: unsupported: {reason}")]
    Unsupported {
        /// The layer.
        layer: String,
        /// Why.
        reason: String,
    },
    /// A GPU error (device, pipeline, corrupt stream found by the kernel).
    #[error("{layer}: {source}")]
    Gpu {
        /// The layer.
        layer: String,
        /// The GPU error.
        source: GpuError,
    },
    /// Two calls given to [`LinearDevice::encode_calls`] decode into the same
    /// kept buffer: the later decode would overwrite the weights of the earlier call before
    /// its multiply.
    #[error(
        "calls of {first} and {second} decode into the same kept buffer: record at most as many \
         calls decoding first together as LinearDevice::decoded_buffers ({decoding} here decode \
         first), prepared after LinearDevice::set_decoded_buffers"
    )]
    SharedDecodedBuffer {
        /// The layer of the earlier call.
        first: String,
        /// The layer of the later call.
        second: String,
        /// How many of the calls decode first.
        decoding: usize,
    },
    /// Opening the coded model failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The CPU codec rejected a matrix (CPU reference path).
    #[error("{layer}: {source}")]
    Codec {
        /// The layer.
        layer: String,
        /// The codec error.
        source: crate::rans::CodecError,
    },
}

impl LinearError {
    /// [`LinearError::TooLarge`]'s remedy for a coded matrix's tile.
    pub const REMEDY_TILES: &'static str =
        "split the matrix into smaller tiles (ecq encode --tile-chunks) or use a device with larger buffers";
    /// [`LinearError::TooLarge`]'s remedy for a call's activations or outputs.
    pub const REMEDY_ROWS: &'static str =
        "pass fewer rows a call or use a device with larger buffers";
    /// [`LinearError::TooLarge`]'s remedy for what only a larger device holds (plain weights).
    pub const REMEDY_DEVICE: &'static str = "use a device with larger buffers";

    /// `source`, met by `layer`: a buffer over a device limit becomes [`LinearError::TooLarge`]
    /// (with [`Self::REMEDY_ROWS`]: at a call, rows are what the caller controls), so that the
    /// host's checks and the GPU entry points report it alike; anything else
    /// [`LinearError::Gpu`].
    pub(crate) fn gpu(layer: &str, source: GpuError) -> Self {
        match source {
            GpuError::TooLarge {
                what,
                bytes,
                limit,
                limit_name,
            } => LinearError::TooLarge {
                layer: layer.into(),
                what,
                bytes,
                limit,
                limit_name,
                remedy: Self::REMEDY_ROWS,
            },
            source => LinearError::Gpu {
                layer: layer.into(),
                source,
            },
        }
    }
}

/// A linear layer `y = W x + bias` with `W` of shape `out_features x in_features`.
///
/// Activations of a batch are row-major: `m` rows of `in_features` values in, `m` rows of
/// `out_features` values out.
pub trait Linear {
    /// A name for messages (the module path for loaded layers).
    fn name(&self) -> &str;
    /// Inputs per row (`K`).
    fn in_features(&self) -> usize;
    /// Outputs per row (`R`).
    fn out_features(&self) -> usize;
    /// `y = W x + bias` for one activation vector.
    fn forward(&self, x: &[f32]) -> Result<Vec<f32>, LinearError>;
    /// `Y = X W^T + bias` for `m` activation rows (prefill).
    fn forward_batch(&self, x: &[f32], m: usize) -> Result<Vec<f32>, LinearError>;

    /// [`forward_batch`](Self::forward_batch) into `y` (`m` rows of `out_features`), which
    /// the caller can reuse from call to call: the GPU layers copy their outputs from the read
    /// back straight into it, where a new vector would cost page faults on its first use
    /// (BENCHMARKS.md, issue 5, step 91). [`LinearError::OutputMismatch`] if `y` has another
    /// length; on an error `y` holds no meaningful values.
    fn forward_batch_into(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), LinearError> {
        check_y(self.name(), self.out_features(), y.len(), m)?;
        let out = self.forward_batch(x, m)?;
        y.copy_from_slice(&out);
        Ok(())
    }

    /// [`forward`](Self::forward) with `f16` activations in and out (computed in `f32`,
    /// rounded to `f16` once at the end).
    fn forward_f16(&self, x: &[f16]) -> Result<Vec<f16>, LinearError> {
        let x: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        Ok(self.forward(&x)?.into_iter().map(f16::from_f32).collect())
    }

    /// [`forward_batch`](Self::forward_batch) with `f16` activations in and out.
    fn forward_batch_f16(&self, x: &[f16], m: usize) -> Result<Vec<f16>, LinearError> {
        let x: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        Ok(self
            .forward_batch(&x, m)?
            .into_iter()
            .map(f16::from_f32)
            .collect())
    }
}

/// Checks that `x` holds `m` rows of `k` values.
pub(crate) fn check_x(layer: &str, k: usize, got: usize, m: usize) -> Result<(), LinearError> {
    let expected = m.saturating_mul(k);
    if got != expected {
        return Err(LinearError::ShapeMismatch {
            layer: layer.to_string(),
            got,
            expected,
            m,
            in_features: k,
        });
    }
    Ok(())
}

/// Checks that `y` holds `m` rows of `r` values.
pub(crate) fn check_y(layer: &str, r: usize, got: usize, m: usize) -> Result<(), LinearError> {
    let expected = m.saturating_mul(r);
    if got != expected {
        return Err(LinearError::OutputMismatch {
            layer: layer.to_string(),
            got,
            expected,
            m,
            out_features: r,
        });
    }
    Ok(())
}

/// Adds `bias` (one value per output) to every row of `y`.
pub(crate) fn add_bias(y: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        if b.is_empty() {
            return;
        }
        for row in y.chunks_exact_mut(b.len()) {
            for (v, &bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
}
