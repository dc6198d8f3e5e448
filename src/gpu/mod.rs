//! GPU kernels through wgpu/WGSL: rANS decode of the ecq coded format (docs/FORMAT.md), the
//! fused decode + dequantize + GEMV kernel, and a plain MLX quantized GEMV (the baseline).
//!
//! * [`GpuContext`] is the long-lived entry point: device, queue, adapter information and a
//!   [`PipelineRegistry`] caching compiled pipelines keyed by kernel, entry point and
//!   pipeline-overridable constants. Its methods block (through `pollster`).
//! * Lower-level pieces take `&Device, &Queue` (plus a registry) so applications can bring their
//!   own device: [`GpuCodedMatrix::upload`], [`GpuQuantizedMatrix::upload`], and the
//!   [`Dispatch`] values that record a kernel into a compute pass without reading anything back.
//!
//! Kernels live in `wgsl/`, one per file ([`Kernel`]). They stay within the WebGPU default
//! limits (at most 16 KiB of workgroup memory, 256 invocations per workgroup, 8 storage buffers
//! per stage, 65535 workgroups per dimension: larger launches use a 2-D grid), except the
//! opt-in cooperative-matrix kernels below, which need more workgroup memory and storage
//! buffers and run only on a device created for them; storage buffer sizes are checked
//! against `device.limits()` and reported as [`GpuError::TooLarge`].
//! [`GpuContext::new`] asks the adapter for its largest storage-buffer binding and buffer sizes
//! and for `Features::SUBGROUP` and `Features::TIMESTAMP_QUERY` where offered (everything else
//! stays at the WebGPU defaults).
//!
//! * `rans_decode.wgsl`: a workgroup of 4 x 32 lanes builds the tile's slot table (2^n `u32`
//!   entries `(slot-cum) | freq << 12 | symbol << 24`, n <= 11; a binary search over the
//!   cumulative frequencies above) in workgroup memory, then each group of 32 decodes one chunk,
//!   one lane per rANS lane; renormalisation reads use a workgroup-memory bitmask and one
//!   `workgroupBarrier` per step. Output: MLX packed words (a step's symbols are staged in
//!   workgroup memory and gathered into whole words, for every bit width; a window split's
//!   symbol is one word of eight weights, which its lane writes) or one byte per weight.
//! * `rans_decode_subgroup.wgsl`: the subgroup decode loop below, writing MLX packed words
//!   (symbols OR-ed into words with `subgroupShuffleXor`); [`GpuCodedMatrix::decode_dispatch`]
//!   picks it for 1, 2, 4 or 8-bit symbols on 32-wide subgroups.
//! * `rans_gemv.wgsl` / `rans_gemv_subgroup.wgsl`: the same decode, multiplied in registers
//!   (`scale * sum(q*x) + bias * sum(x)` per symbol, accumulated per row, lane sums reduced in
//!   workgroup memory or with `subgroupAdd`); the weights are never written to memory. The
//!   subgroup version ([`FusedVariant::Subgroup`]) replaces the barrier by `subgroupBallot`, keeps
//!   four 64-word planes of the stream in registers (two `u32` shuffles per step), decodes in
//!   every lane without per-lane branches in a loop whose bounds are broadcast (so the compiler
//!   sees it is uniform), is specialised per symbol layout (pipeline-overridable constants)
//!   and is chosen when the adapter's subgroups are exactly 32 wide
//!   ([`PipelineRegistry::subgroups32`]); every other adapter runs the workgroup-memory version,
//!   or for window splits and byte symbols where it has the lanes kernels
//!   ([`PipelineRegistry::subgroup_lanes`])
//!   `rans_gemv_lanes.wgsl`: the lanes decode (`rans_decode_lanes.wgsl`, W invocations a
//!   chunk, no barrier a step) with each word of four symbols multiplied where that kernel
//!   writes it ([`lanes_gemv_width`]).
//! * `rans_gemv_blocked.wgsl` / `rans_decode_blocked.wgsl` ([`FusedVariant::Blocked`], the
//!   default on 32-wide subgroups where the layout allows it): the subgroup decode step run for
//!   a block of 2-8 steps with the symbols kept packed in two registers, then the block's dot
//!   products (fused) or its 64 output words written with 8 shuffles and two coalesced stores
//!   per lane (decode); rows must be whole 32-symbol steps ([`FusedLayout::blocked_steps`],
//!   [`GpuCodedMatrix::decode_blocked_supported`]). Window splits whose decode tables are built
//!   on the host decode in `rans_decode_window.wgsl`, a kernel of their own.
//! * `qgemv4.wgsl`: plain MLX 4-bit GEMV ([`QGemvVariant::Nibble4`]): no
//!   integer-to-float conversion (nibbles OR-ed into the exponent of 2^23), 4 rows x 2 pieces of
//!   16 weights per lane, K split over 1-8 groups of 32 lanes chosen from the row count.
//! * `qgemv.wgsl`: plain MLX GEMV after MLX's `qmv_fast` (16-byte weight loads, activations
//!   pre-scaled so masked values need no shift), 4 rows per workgroup with K split over up to 8
//!   groups of 32 lanes; used for 2 and 8 bits ([`QGemvVariant::Generic`]).
//! * `qgemv4_dp4a.wgsl`: `qgemv4.wgsl` with each 16-weight piece's activations quantized to 8
//!   bits in registers and `dot4I8Packed` (WGSL `packed_4x8_integer_dot_product`); approximate,
//!   only on request ([`QGemvVariant::Int8Dot`]); with `PRE` on activations quantized once
//!   per vector instead ([`GpuQuantizedMatrix::gemv_x8_dispatch`]).
//! * `quantize_x8.wgsl`: activations quantized to 8 bits once per vector ([`quantize_x8`]),
//!   for the fused window-split GEMV on 8-bit activations
//!   ([`GpuCodedMatrix::gemv_x8_dispatch`], the blocked kernel's `XI8` build; approximate)
//!   and its plain baseline.
//! * `qgemv4_stream.wgsl`: candidate exact 4-bit kernels (16-byte loads, 1, 2 or 4 rows per
//!   group of 32 lanes, no activation pre-scaling; activations through L1 or staged in
//!   workgroup memory), only on request ([`QGemvVariant::Stream`], [`QGemvVariant::Staged`]).
//! * `qgemv4_pipe.wgsl`: `qgemv4.wgsl` software-pipelined (next weights loaded before the
//!   current ones are multiplied); with 4 rows per group the default for 4 bits
//!   ([`QGemvVariant::Auto`] picks [`QGemvVariant::Pipelined`]).
//! * `x_lane_order.wgsl`: activation vectors permuted into lane order ([`x_lane_order`], the
//!   host's form, says why), which the blocked fused GEMV of window splits in row pairs,
//!   `qgemv4_many.wgsl` and `qgemv4_pipe.wgsl` read in whole 128-byte lines (`XLANES`:
//!   [`GpuCodedMatrix::gemv_many_lane_order_dispatch`],
//!   [`GpuQuantizedMatrix::gemv_many_lane_order_dispatch`],
//!   [`GpuQuantizedMatrix::gemv_lane_order_dispatch`]; the same outputs bit for bit).
//! * `rans_gemv_coop.wgsl` / `qgemv4_coop.wgsl` / `x_coop.wgsl` (opt-in, `src/gpu/coop.rs`
//!   docs): the fused GEMV of up to 16 vectors of window splits in row pairs, and its plain
//!   4-bit baseline, with the multiply on 16x16x16 f16 cooperative matrices (tensor cores;
//!   wgpu's experimental `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`, asked for by
//!   [`GpuContext::with_cooperative_matrix`]); activations rounded to f16 by the pass
//!   ([`coop_x_dispatch`]), so not bit for bit the f32 kernels
//!   ([`GpuCodedMatrix::gemv_coop_dispatch`], [`GpuQuantizedMatrix::gemv_coop_dispatch`]).
//!
//! All loops are bounded by the matrix geometry and every word read is bounds-checked, so corrupt
//! input sets per-chunk error bits ([`error_bits`]) and never hangs the device; the host reports
//! them as [`GpuError::CorruptStream`]. The GPU does not verify the tile CRCs (the CPU codec
//! does): a rare corrupt word can decode "cleanly" to wrong values, exactly as in the CPU
//! decoder without checksum verification.
//!
//! Activations are `f32`; `f16` activations are converted to `f32` on the host before upload
//! (no `SHADER_F16` requirement).
//!
//! # Example
//!
//! ```no_run
//! use ecq::gpu::{CodedMatrixRef, GpuContext};
//! use ecq::rans::{encode, EncodeOptions};
//!
//! let q: Vec<u8> = (0..64 * 256).map(|i| (i % 7) as u8).collect();
//! let enc = encode(&q, 64, 256, 4, &EncodeOptions::default())?;
//! let ctx = GpuContext::new()?;
//! println!("{}", ctx.describe());
//! let m = ctx.upload_coded(CodedMatrixRef::from(&enc), None)?;
//! assert_eq!(ctx.decode_symbols(&m)?, q);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bias;
mod coop;
mod copy_rows;
mod decode;
mod gemv;
mod lane_order;
pub(crate) mod slot_table;
mod x8;

use std::collections::HashMap;
use std::sync::Mutex;

pub use bias::add_bias_dispatch;
pub use coop::{
    coop_rows_dispatch, coop_x_dispatch, offers_coop_f16_16x16, CoopActivations, CoopOrder,
    CoopRows, COOP_BLOCK_COLS, COOP_GEMM_COLS, COOP_GEMM_SPLIT_MIN_COLS,
    COOP_GEMM_SPLIT_WORKGROUPS, COOP_GEMM_WIDE_MIN_WORKGROUPS, COOP_GEMM_WORKGROUP_BYTES,
    COOP_STORAGE_BUFFERS, COOP_VECTORS, COOP_WORKGROUP_BYTES,
};
pub use copy_rows::{copy_rows_dispatch, RowCopy};
pub(crate) use decode::{
    check_gemv_vectors, check_low_bits, check_row_pair_cols, check_window, coop_gemv_pipeline,
    coop_layout_refusal, coop_params, entry, fused_reads_tables, set_chunk_subgroups,
    set_lanes_geometry, variant_lanes_width, CodedParams, DecodeSource,
};
pub use decode::{
    default_fused_variant, fused_gemv_pipeline, lanes_gemv_width, CodedMatrixRef, DecodeOutput,
    FusedLayout, FusedVariant, GpuCodedMatrix, QuantParamsRef, COMPACT_TABLE_FROM_WORKGROUPS,
    COMPACT_TABLE_MAX_SHORT_K, COMPACT_TABLE_SHORT_K_FROM_WORKGROUPS, MAX_GEMV_VECTORS,
};
pub use gemv::{
    GemmSplit, GpuQuantizedMatrix, QGemvVariant, TiledGemmTile, TILED_GEMM_COLS,
    TILED_GEMM_SPLIT_MIN_COLS, TILED_GEMM_SPLIT_WORKGROUPS, TILED_GEMM_TILE,
    TILED_GEMM_WIDE_MIN_WORKGROUPS,
};
pub use lane_order::{
    x_column_order, x_lane_order, x_lane_order_dispatch, x_lane_order_into, x_order_dispatch,
};
use x8::quantized_launch;
pub use x8::{
    quantize_x8, quantize_x8_dispatch, quantize_x8_into, quantize_x8_read, x8_bytes, X8Activations,
    X8Order, X8_PIECE,
};

/// Errors of the GPU module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No adapter matched (none at all, or none matching `WGPU_ADAPTER_NAME` / `WGPU_BACKEND`).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("request_device failed: {0}")]
    RequestDevice(String),
    /// The arguments are inconsistent (lengths, geometry, shapes).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The kernels do not support this case (named in the message).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A buffer would exceed a device limit.
    #[error("{what} needs {bytes} bytes, more than the device limit {limit} ({limit_name})")]
    TooLarge {
        /// Which buffer.
        what: String,
        /// Its size in bytes.
        bytes: u64,
        /// The device limit.
        limit: u64,
        /// The name of the limit in `wgpu::Limits`.
        limit_name: &'static str,
    },
    /// The coded stream is corrupt: the first failing chunk (in index order) is named; `flags`
    /// holds the kernel's error bits for it (see [`GpuError::describe_flags`]).
    #[error(
        "corrupt stream in chunk {chunk} (tile {tile}): {reason}; {bad_chunks} chunk(s) failed"
    )]
    CorruptStream {
        /// First failing chunk.
        chunk: usize,
        /// Its tile.
        tile: usize,
        /// Kernel error bits of that chunk.
        flags: u32,
        /// The bits in words.
        reason: String,
        /// How many chunks failed.
        bad_chunks: usize,
    },
    /// A wgpu validation or out-of-memory error (shader compilation, pipeline creation,
    /// dispatch).
    #[error("wgpu: {0}")]
    Wgpu(String),
    /// Mapping a buffer for readback failed.
    #[error("buffer mapping failed: {0}")]
    Map(String),
}

/// Kernel error bits written to the per-chunk error buffer (mirrors `wgsl/lib/rans_consts.wgsl`).
pub mod error_bits {
    /// An initial state is below 2^16.
    pub const BAD_STATE: u32 = 1;
    /// A slot fell on a zero-frequency symbol.
    pub const ZERO_FREQ: u32 = 2;
    /// A renormalisation read went past the chunk's words.
    pub const OVER_READ: u32 = 4;
    /// A final state is not 2^16.
    pub const FINAL_STATE: u32 = 8;
    /// The chunk's words were not all consumed.
    pub const UNCONSUMED: u32 = 16;
    /// The tile's frequency table does not sum to 2^n.
    pub const TABLE: u32 = 32;
    /// The chunk's offsets are decreasing or past the word stream.
    pub const OFFSETS: u32 = 64;
    /// A subgroup kernel ran with subgroups it cannot use: not 32 wide (the 32-wide
    /// kernels), or not holding its groups of W consecutive invocations (the lanes kernels).
    pub const SUBGROUP_SIZE: u32 = 128;
}

impl GpuError {
    /// Names the kernel error bits of a chunk.
    pub fn describe_flags(flags: u32) -> String {
        use error_bits::*;
        let names = [
            (BAD_STATE, "initial state below 2^16"),
            (ZERO_FREQ, "slot on a zero-frequency symbol"),
            (OVER_READ, "read past the chunk's words"),
            (FINAL_STATE, "final state != 2^16"),
            (UNCONSUMED, "words not fully consumed"),
            (TABLE, "frequency table does not sum to 2^n"),
            (OFFSETS, "invalid word offsets"),
            (
                SUBGROUP_SIZE,
                "subgroup kernel ran with subgroups of another size or layout",
            ),
        ];
        let v: Vec<&str> = names
            .iter()
            .filter(|(b, _)| flags & b != 0)
            .map(|(_, n)| *n)
            .collect();
        if v.is_empty() {
            format!("error bits {flags:#x}")
        } else {
            v.join(", ")
        }
    }
}

/// How a matrix's MLX (scale, bias) pairs are stored on the GPU: the kernels that dequantize
/// read them through `wgsl/lib/side.wgsl` (override `SIDE`). MLX stores scales and biases as
/// f16 or bf16, so a 16-bit pair holds them exactly at half the memory and traffic of an f32
/// pair; the numbers the kernels compute with are the same, so results are bit for bit equal.
/// [`SideFormat::exact_for`] picks the narrowest exact format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SideFormat {
    /// Two f32 per group (8 bytes).
    #[default]
    F32,
    /// Two f16 in one u32 per group (scale in the low half).
    F16,
    /// Two bf16 in one u32 per group (scale in the low half).
    Bf16,
}

impl SideFormat {
    /// The narrowest of f16, bf16 and f32 that represents every value of `scales` and
    /// `biases` exactly (bit for bit, signed zeros included). f16 takes finite values without
    /// f16 subnormals (the kernels' conversion is exact for zeros and normals: see
    /// `wgsl/lib/side.wgsl`), bf16 finite values; anything else keeps f32.
    pub fn exact_for(scales: &[f32], biases: &[f32]) -> Self {
        [SideFormat::F16, SideFormat::Bf16]
            .into_iter()
            .find(|f| f.check_exact(scales, biases).is_ok())
            .unwrap_or(SideFormat::F32)
    }

    /// Checks that every value is exact in this format as the kernels read it
    /// ([`GpuError::InvalidInput`] names the first that is not): any value in f32; finite
    /// values that round-trip through bf16; finite zeros and normal values that round-trip
    /// through f16.
    pub fn check_exact(self, scales: &[f32], biases: &[f32]) -> Result<(), GpuError> {
        let ok = |v: f32| match self {
            SideFormat::F32 => true,
            SideFormat::F16 => {
                let h = half::f16::from_f32(v);
                h.to_f32().to_bits() == v.to_bits() && (v == 0.0 || h.is_normal())
            }
            SideFormat::Bf16 => {
                v.is_finite() && half::bf16::from_f32(v).to_f32().to_bits() == v.to_bits()
            }
        };
        for (what, vals) in [("scale", scales), ("bias", biases)] {
            if let Some(i) = vals.iter().position(|&v| !ok(v)) {
                return Err(GpuError::InvalidInput(format!(
                    "{what} {i} = {:e} is not exact in {self:?} as the kernels read it",
                    vals[i]
                )));
            }
        }
        Ok(())
    }

    /// Bytes per group.
    pub fn bytes_per_group(self) -> usize {
        match self {
            SideFormat::F32 => 8,
            SideFormat::F16 | SideFormat::Bf16 => 4,
        }
    }

    /// The kernels' override constant.
    pub(crate) fn constant(self) -> (&'static str, u32) {
        let v = match self {
            SideFormat::F32 => 0,
            SideFormat::F16 => 1,
            SideFormat::Bf16 => 2,
        };
        ("SIDE", v)
    }

    /// The pairs of `scales` and `biases` in this format, as the kernels read them (padded to
    /// whole 8-byte `vec2<u32>`). Values must be exact in the format: [`Self::exact_for`] or
    /// a wider one ([`Self::check_exact`]).
    pub(crate) fn pack(self, scales: &[f32], biases: &[f32]) -> Vec<u8> {
        let pairs = scales.iter().zip(biases);
        // (scale, bias) as 16-bit patterns, the scale first (the low half of the u32)
        let halves = |bits: fn(f32) -> u16| -> Vec<u8> {
            pairs
                .clone()
                .flat_map(|(&s, &b)| [bits(s).to_le_bytes(), bits(b).to_le_bytes()])
                .flatten()
                .collect()
        };
        let mut out: Vec<u8> = match self {
            SideFormat::F32 => pairs
                .clone()
                .flat_map(|(s, b)| [s.to_le_bytes(), b.to_le_bytes()])
                .flatten()
                .collect(),
            SideFormat::F16 => halves(|v| half::f16::from_f32(v).to_bits()),
            SideFormat::Bf16 => halves(|v| half::bf16::from_f32(v).to_bits()),
        };
        out.resize(out.len().next_multiple_of(8), 0);
        out
    }
}

/// The kernels, one WGSL file each in `wgsl/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// `wgsl/rans_decode.wgsl`: parallel rANS decode to MLX packed words or bytes per weight.
    RansDecode,
    /// `wgsl/rans_gemv.wgsl`: fused decode + dequantize + GEMV.
    RansGemv,
    /// `wgsl/rans_gemv_subgroup.wgsl`: the fused kernel with subgroup ballot/shuffle/add, for
    /// adapters with 32-wide subgroups and `Features::SUBGROUP`.
    RansGemvSubgroup,
    /// `wgsl/rans_decode_subgroup.wgsl`: decode to MLX packed words with subgroup ballot and
    /// shuffle, for adapters with 32-wide subgroups and symbols of 1, 2, 4 or 8 bits.
    RansDecodeSubgroup,
    /// `wgsl/rans_gemv_blocked.wgsl`: the subgroup fused kernel decoding a block of steps
    /// before their dot products.
    RansGemvBlocked,
    /// `wgsl/rans_decode_blocked.wgsl`: the subgroup decode writing a block of 8 steps as whole
    /// coalesced words.
    RansDecodeBlocked,
    /// `wgsl/rans_gemv_blocked.wgsl` with the compact table (`wgsl/lib/rans_table_byte.wgsl`).
    RansGemvBlockedCompact,
    /// `wgsl/rans_decode_blocked.wgsl` with the compact table.
    RansDecodeBlockedCompact,
    /// `wgsl/rans_decode_window.wgsl`: the blocked decode of window splits whose tiles'
    /// decode tables are built on the host.
    RansDecodeWindow,
    /// `wgsl/rans_decode_window.wgsl` with the compact table.
    RansDecodeWindowCompact,
    /// `wgsl/rans_decode_lanes.wgsl`: the decode of window splits, byte symbols and split
    /// 2 + 2 matrices whose tiles' decode tables are built on the host, without a barrier a
    /// step, for subgroups of any size that is a multiple of the group width `W` (4 to 32;
    /// [`PipelineRegistry::subgroup_lanes`]).
    RansDecodeLanes,
    /// `wgsl/rans_gemv_lanes.wgsl`: the fused GEMV of window splits, byte symbols and split
    /// 2 + 2 matrices on the lanes kernel's decode (no barrier a step, groups of `W`
    /// invocations a chunk), with the tiles' decode
    /// tables built on the host and one vector of activations in column order
    /// ([`decode::lanes_gemv_width`]).
    RansGemvLanes,
    /// `wgsl/qgemv.wgsl`: plain MLX quantized GEMV (2, 4, 8 bits).
    QGemv,
    /// `wgsl/qgemv4.wgsl`: plain MLX 4-bit GEMV without integer-to-float conversions (the
    /// default 4-bit baseline).
    QGemv4,
    /// `wgsl/qgemv4_dp4a.wgsl`: `qgemv4.wgsl` with activations quantized to 8 bits per
    /// 16-weight piece and `dot4I8Packed` (approximate; WGSL language extension
    /// `packed_4x8_integer_dot_product`).
    QGemv4Dp4a,
    /// `wgsl/qgemv4_stream.wgsl`: candidate plain 4-bit GEMV kernels with 16-byte loads and
    /// 1, 2 or 4 rows per group of 32 lanes (entry points `main_r1`, `main_r2`, `main_r4`;
    /// exact f32, only on request).
    QGemv4Stream,
    /// `wgsl/qgemv4_pipe.wgsl`: `qgemv4.wgsl` with the next iteration's weights loaded before
    /// the current one is multiplied (exact f32; the default 4-bit plain GEMV).
    QGemv4Pipe,
    /// `wgsl/quantize_x8.wgsl`: activations quantized to 8 bits once per vector, for the
    /// GEMV launches that take them so (`gemv_x8_dispatch`; approximate).
    QuantizeX8,
    /// `wgsl/qgemv4_many.wgsl`: plain MLX 4-bit GEMV of up to 16 activation vectors in one
    /// launch, the weights read once (`GpuQuantizedMatrix::gemv_many_dispatch`; 32-wide
    /// subgroups).
    QGemv4Many,
    /// `wgsl/x_lane_order.wgsl`: activation vectors permuted into lane order
    /// ([`x_lane_order_dispatch`]), the layout the multi-vector GEMVs read in whole lines.
    XLaneOrder,
    /// `wgsl/rans_gemv_coop.wgsl`: the fused GEMV of up to 16 vectors of window splits in row
    /// pairs with its multiply on cooperative matrices
    /// ([`GpuCodedMatrix::gemv_coop_dispatch`]; `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`).
    RansGemvCoop,
    /// `wgsl/x_coop.wgsl`: activation vectors as the cooperative GEMVs read them
    /// ([`coop_x_dispatch`]).
    XCoop,
    /// `wgsl/qgemv4_coop.wgsl`: the plain 4-bit GEMV of up to 16 vectors with the same
    /// cooperative multiply, the baseline of [`Kernel::RansGemvCoop`]
    /// ([`GpuQuantizedMatrix::gemv_coop_dispatch`]).
    QGemv4Coop,
    /// `wgsl/qgemm_coop.wgsl`: the plain 4-bit GEMM of many activation rows on cooperative
    /// matrices, tiles of 128 matrix rows x 64 activation rows
    /// ([`GpuQuantizedMatrix::gemm_coop_dispatch`]).
    QGemmCoop,
    /// `wgsl/x_rows_f16.wgsl`: activation rows as [`Kernel::QGemmCoop`] reads them
    /// ([`coop_rows_dispatch`]).
    XRowsF16,
    /// `wgsl/qgemm_tiled.wgsl`: the plain 4-bit GEMM of many activation rows in f32, tiles of
    /// 64 or 128 matrix rows x 64 activation rows in workgroup memory
    /// ([`GpuQuantizedMatrix::gemm_tiled_dispatch`]).
    QGemmTiled,
    /// `wgsl/split_k_sum.wgsl`: a split-K GEMM's partial sums added to its outputs in split
    /// order ([`GpuQuantizedMatrix::gemm_tiled_split_dispatch`],
    /// [`GpuQuantizedMatrix::gemm_coop_split_dispatch`]).
    SplitKSum,
    /// `wgsl/add_bias.wgsl`: a layer's bias added to outputs on the GPU
    /// ([`add_bias_dispatch`]).
    AddBias,
    /// `wgsl/copy_rows.wgsl`: rows of words moved between buffers by a launch
    /// ([`copy_rows_dispatch`]).
    CopyRows,
}

/// A kernel's source with the `wgsl/lib/NAME.wgsl` files it `// import`s appended, in the
/// order given: `wgsl_with_libs!("../../wgsl/k.wgsl", "rans_table", "rans_subgroup")`. WGSL has
/// no includes, and module-scope declarations may come in any order. For files two levels below
/// the crate root (`src/*/`), as every caller is; `tests/wgsl_portability.rs` composes kernels
/// from their `// import:` lines the same way, and `tests::library_kernel_sources_validate`
/// checks what this builds.
macro_rules! wgsl_with_libs {
    ($kernel:literal $(, $lib:literal)* $(,)?) => {
        concat!(
            include_str!($kernel)
            $(, "\n", include_str!(concat!("../../wgsl/lib/", $lib, ".wgsl")))*
        )
    };
}
pub(crate) use wgsl_with_libs;

impl Kernel {
    /// The WGSL source.
    pub fn source(self) -> &'static str {
        match self {
            Kernel::RansDecode => {
                wgsl_with_libs!(
                    "../../wgsl/rans_decode.wgsl",
                    "rans_consts",
                    "rans_table",
                    "rans_table_mem",
                    "split_bits",
                    "window_word"
                )
            }
            Kernel::RansGemv => {
                wgsl_with_libs!(
                    "../../wgsl/rans_gemv.wgsl",
                    "rans_consts",
                    "rans_table",
                    "rans_table_mem",
                    "split_bits",
                    "window_word",
                    "side"
                )
            }
            Kernel::RansGemvSubgroup => wgsl_with_libs!(
                "../../wgsl/rans_gemv_subgroup.wgsl",
                "rans_consts",
                "rans_table",
                "rans_subgroup",
                "side"
            ),
            Kernel::RansDecodeSubgroup => {
                wgsl_with_libs!(
                    "../../wgsl/rans_decode_subgroup.wgsl",
                    "rans_consts",
                    "rans_table",
                    "rans_subgroup"
                )
            }
            Kernel::RansGemvBlocked => wgsl_with_libs!(
                "../../wgsl/rans_gemv_blocked.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_sg",
                "rans_subgroup",
                "rans_block",
                "split_bits",
                "window_bits",
                "window_dot",
                "symbol_dot",
                "side"
            ),
            Kernel::RansDecodeBlocked => wgsl_with_libs!(
                "../../wgsl/rans_decode_blocked.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_sg",
                "rans_subgroup",
                "rans_block",
                "split_bits",
                "window_bits",
                "window_mlx"
            ),
            Kernel::RansGemvBlockedCompact => wgsl_with_libs!(
                "../../wgsl/rans_gemv_blocked.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_byte",
                "rans_subgroup",
                "rans_block",
                "split_bits",
                "window_bits",
                "window_dot",
                "symbol_dot",
                "side"
            ),
            Kernel::RansDecodeBlockedCompact => wgsl_with_libs!(
                "../../wgsl/rans_decode_blocked.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_byte",
                "rans_subgroup",
                "rans_block",
                "split_bits",
                "window_bits",
                "window_mlx"
            ),
            Kernel::RansDecodeWindow => wgsl_with_libs!(
                "../../wgsl/rans_decode_window.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_sg",
                "rans_subgroup",
                "rans_block",
                "window_bits",
                "window_mlx"
            ),
            Kernel::RansDecodeWindowCompact => wgsl_with_libs!(
                "../../wgsl/rans_decode_window.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_byte",
                "rans_subgroup",
                "rans_block",
                "window_bits",
                "window_mlx"
            ),
            Kernel::RansDecodeLanes => wgsl_with_libs!(
                "../../wgsl/rans_decode_lanes.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_sg",
                "rans_lanes",
                "window_bits",
                "window_mlx",
                "window_word",
                "split_bits"
            ),
            Kernel::RansGemvLanes => wgsl_with_libs!(
                "../../wgsl/rans_gemv_lanes.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_sg",
                "rans_lanes",
                "window_bits",
                "window_dot",
                "symbol_dot",
                "split_bits",
                "side"
            ),
            Kernel::QGemv => wgsl_with_libs!("../../wgsl/qgemv.wgsl", "side"),
            Kernel::QGemv4 => wgsl_with_libs!("../../wgsl/qgemv4.wgsl", "side"),
            Kernel::QGemv4Dp4a => wgsl_with_libs!("../../wgsl/qgemv4_dp4a.wgsl", "side", "x8"),
            Kernel::QGemv4Stream => wgsl_with_libs!("../../wgsl/qgemv4_stream.wgsl", "side"),
            Kernel::QGemv4Pipe => wgsl_with_libs!("../../wgsl/qgemv4_pipe.wgsl", "side"),
            Kernel::QuantizeX8 => wgsl_with_libs!("../../wgsl/quantize_x8.wgsl", "x8"),
            Kernel::QGemv4Many => wgsl_with_libs!("../../wgsl/qgemv4_many.wgsl", "side"),
            Kernel::XLaneOrder => include_str!("../../wgsl/x_lane_order.wgsl"),
            Kernel::RansGemvCoop => wgsl_with_libs!(
                "../../wgsl/rans_gemv_coop.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_byte",
                "rans_subgroup",
                "rans_block",
                "window_bits",
                "side",
                "coop_tile"
            ),
            Kernel::QGemv4Coop => {
                wgsl_with_libs!("../../wgsl/qgemv4_coop.wgsl", "side", "coop_tile")
            }
            Kernel::XCoop => include_str!("../../wgsl/x_coop.wgsl"),
            Kernel::QGemmCoop => wgsl_with_libs!("../../wgsl/qgemm_coop.wgsl", "side"),
            Kernel::XRowsF16 => include_str!("../../wgsl/x_rows_f16.wgsl"),
            Kernel::QGemmTiled => wgsl_with_libs!("../../wgsl/qgemm_tiled.wgsl", "side"),
            Kernel::SplitKSum => include_str!("../../wgsl/split_k_sum.wgsl"),
            Kernel::AddBias => include_str!("../../wgsl/add_bias.wgsl"),
            Kernel::CopyRows => include_str!("../../wgsl/copy_rows.wgsl"),
        }
    }

    /// Whether every loop of the kernel is bounded by a count from its uniform block or a
    /// constant (checked by reading the kernel), so the registry may drop wgpu's injected loop
    /// counter (`ShaderRuntimeChecks::force_loop_bounding`): in the subgroup rANS kernels it
    /// cost about 5 of ~95 instructions per decode step on an H200 (read from the compiled
    /// code). Bounds checks stay on unless [`Self::indices_in_range_by_construction`].
    pub fn loops_bounded_by_construction(self) -> bool {
        matches!(
            self,
            Kernel::RansGemvSubgroup
                | Kernel::RansDecodeSubgroup
                | Kernel::RansGemvBlocked
                | Kernel::RansDecodeBlocked
                | Kernel::RansGemvBlockedCompact
                | Kernel::RansDecodeBlockedCompact
                | Kernel::RansDecodeWindow
                | Kernel::RansDecodeWindowCompact
                | Kernel::RansDecodeLanes
                | Kernel::RansGemvLanes
                | Kernel::QGemv4Many
                | Kernel::RansGemvCoop
                | Kernel::QGemv4Coop
                | Kernel::QGemmCoop
                | Kernel::QGemmTiled
                | Kernel::SplitKSum
        )
    }

    /// Whether every index of the kernel is in range by construction, for any buffer contents
    /// (checked by reading the kernel and its libraries), so the registry may drop naga's
    /// bounds checks (`ShaderRuntimeChecks::bounds_checks`): on an H200 they cost the blocked
    /// kernels 4-7% where the grid fills the GPU (BENCHMARKS.md issue 5, step 33). What
    /// makes each index safe:
    /// * stream-dependent indices are explicit in the source: slot tables are indexed by the
    ///   state masked to `PREC` <= 11 bits (the table holds 2^11 slots) or by a byte symbol
    ///   (256 + 1 entries); stream words are read through `plane_at` (tests the length) or
    ///   `block_plane_at` (clamps to it; `storage_init` makes every buffer >= 16 bytes);
    /// * every other index comes from the uniform block and the lane, and the host checks
    ///   the buffers behind them: [`CodedMatrixRef::check`] (frequencies per tile, 32 states
    ///   per chunk, `n_chunks + 1` offsets, `bits * w <= 8` so alphabets <= 256), the upload
    ///   (scales and biases per group, raw low bits per row, workgroups = tiles x workgroups
    ///   per tile) and each dispatch (`x`, `y` and the decode output sized for the matrix);
    ///   chunks past the tile's end read and write nothing (the raw low bits are clamped to
    ///   their buffer as well);
    /// * workgroup arrays are indexed by `local_invocation_index / 32` (< 4) or by the
    ///   lane's symbol pair (< 128), and the table build loops stop at `2^prec` slots, the
    ///   precision the host requires to be <= 11 before it builds these pipelines.
    ///
    /// `qgemv4_many.wgsl`, the plain baseline of the blocked fused kernel's multi-vector
    /// launches, runs as they do: its weight indices are clamped to the row, the others come
    /// from the uniform block and the lane, and `gemv_many_dispatch` checks `x` and `y`.
    ///
    /// `rans_gemv_coop.wgsl` decodes with the blocked kernels' libraries; its own indices are
    /// its workgroup arrays' (from the group, lane and constant loop counters), the activation
    /// tiles and sums (from the block and group below the counts `CoopActivations` is sized
    /// for, which `gemv_coop_dispatch` checks against the matrix), and scales and outputs of
    /// rows it tests against the chunk's end. Without naga's checks its cooperative loads from
    /// storage are plain loads: with them they became conditional loads, which the NVIDIA
    /// driver's compiler failed on in some builds (BENCHMARKS.md issue 5, step 90).
    /// `qgemv4_coop.wgsl`, its plain baseline, runs as it does: its weight, scale and output
    /// indices are tested against the matrix's rows, the others come from the uniform block,
    /// the group and the lane (`GpuQuantizedMatrix::gemv_coop_dispatch` checks the
    /// activations' width and `y`).
    /// `qgemm_coop.wgsl` indexes weights, scales, activation rows and outputs of matrix rows
    /// and activation rows it tests against the shape (`gemm_coop_dispatch` checks the
    /// buffers against it), and its tiles by the invocation and constant loop counters.
    /// `qgemm_tiled.wgsl` does the same (`gemm_tiled_dispatch_with` checks `x` and `y`; its
    /// tiles hold 128 matrix rows, the most `ROW_TILE_SHIFT` allows); with naga's loop
    /// counters its four-trip loops stayed loops on an H200 and the GEMM ran 5.4x slower
    /// (BENCHMARKS.md issue 5, step 100); its split entry writes partial sums of the splits
    /// below the workgroup count over the tiles, which `gemm_tiled_split_dispatch` sizes
    /// `part` for. `split_k_sum.wgsl`, which adds them, tests its output index against the
    /// count the same dispatch checks `y` and `part` for.
    pub fn indices_in_range_by_construction(self) -> bool {
        matches!(
            self,
            Kernel::RansGemvBlocked
                | Kernel::RansDecodeBlocked
                | Kernel::RansGemvBlockedCompact
                | Kernel::RansDecodeBlockedCompact
                | Kernel::RansDecodeWindow
                | Kernel::RansDecodeWindowCompact
                | Kernel::QGemv4Many
                | Kernel::RansGemvCoop
                | Kernel::QGemv4Coop
                | Kernel::QGemmCoop
                | Kernel::QGemmTiled
                | Kernel::SplitKSum
        )
    }

    /// The file name in `wgsl/` (naming the table for the compact blocked kernels, which
    /// share their file with the other blocked kernels).
    pub fn file_name(self) -> &'static str {
        match self {
            Kernel::RansDecode => "rans_decode.wgsl",
            Kernel::RansGemv => "rans_gemv.wgsl",
            Kernel::RansGemvSubgroup => "rans_gemv_subgroup.wgsl",
            Kernel::RansDecodeSubgroup => "rans_decode_subgroup.wgsl",
            Kernel::RansGemvBlocked => "rans_gemv_blocked.wgsl",
            Kernel::RansDecodeBlocked => "rans_decode_blocked.wgsl",
            Kernel::RansGemvBlockedCompact => "rans_gemv_blocked.wgsl (compact table)",
            Kernel::RansDecodeBlockedCompact => "rans_decode_blocked.wgsl (compact table)",
            Kernel::RansDecodeWindow => "rans_decode_window.wgsl",
            Kernel::RansDecodeWindowCompact => "rans_decode_window.wgsl (compact table)",
            Kernel::RansDecodeLanes => "rans_decode_lanes.wgsl",
            Kernel::RansGemvLanes => "rans_gemv_lanes.wgsl",
            Kernel::QGemv => "qgemv.wgsl",
            Kernel::QGemv4 => "qgemv4.wgsl",
            Kernel::QGemv4Dp4a => "qgemv4_dp4a.wgsl",
            Kernel::QGemv4Stream => "qgemv4_stream.wgsl",
            Kernel::QGemv4Pipe => "qgemv4_pipe.wgsl",
            Kernel::QuantizeX8 => "quantize_x8.wgsl",
            Kernel::QGemv4Many => "qgemv4_many.wgsl",
            Kernel::XLaneOrder => "x_lane_order.wgsl",
            Kernel::RansGemvCoop => "rans_gemv_coop.wgsl",
            Kernel::QGemv4Coop => "qgemv4_coop.wgsl",
            Kernel::XCoop => "x_coop.wgsl",
            Kernel::QGemmCoop => "qgemm_coop.wgsl",
            Kernel::XRowsF16 => "x_rows_f16.wgsl",
            Kernel::QGemmTiled => "qgemm_tiled.wgsl",
            Kernel::SplitKSum => "split_k_sum.wgsl",
            Kernel::AddBias => "add_bias.wgsl",
            Kernel::CopyRows => "copy_rows.wgsl",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    kernel: Kernel,
    entry: &'static str,
    constants: Vec<(&'static str, u32)>,
}

/// A cache of compute pipelines for one device, keyed by kernel, entry point and
/// pipeline-overridable constants. Shader modules are compiled once per kernel.
#[derive(Debug, Default)]
pub struct PipelineRegistry {
    modules: Mutex<HashMap<Kernel, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    subgroup32: bool,
    subgroup_lanes: Option<u32>,
    f16_unpack: bool,
    cooperative_matrix: bool,
    cpu_device: bool,
}

/// `src` with the `f16_pair` library appended where it reads (scale, bias) pairs through
/// `wgsl/lib/side.wgsl`: `unpack2x16float` where the device validates it (`unpack`), integer
/// operations elsewhere.
pub(crate) fn with_f16_pair(src: &'static str, unpack: bool) -> std::borrow::Cow<'static, str> {
    if !src.contains("fn side(i: u32)") {
        return src.into();
    }
    let lib = if unpack {
        include_str!("../../wgsl/lib/side_f16_unpack.wgsl")
    } else {
        include_str!("../../wgsl/lib/side_f16_bits.wgsl")
    };
    format!("{src}\n{lib}").into()
}

/// Whether `device` accepts `unpack2x16float` (naga's SHADER_FLOAT16_IN_FLOAT32, which wgpu
/// grants by the adapter's `DownlevelFlags::SHADER_F16_IN_F32`): a one-line shader compiled
/// in an error scope.
fn probe_f16_unpack(device: &wgpu::Device) -> bool {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let _module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("ecq f16 probe"),
        source: wgpu::ShaderSource::Wgsl(
            "@compute @workgroup_size(1) fn main() { _ = unpack2x16float(0x3C003C00u); }".into(),
        ),
    });
    pollster::block_on(scope.pop()).is_none()
}

/// The subgroup size with which every invocation of a 128-invocation workgroup runs a compute
/// kernel on `device` (`wgsl/subgroup_size_probe.wgsl`), where the subgroup operations behave
/// as that size says: `subgroupAdd` and `subgroupBallot` count it, `subgroupExclusiveAdd`
/// and `subgroupShuffle` agree with `subgroup_invocation_id`, and each subgroup is that many
/// consecutive local invocations from a multiple of it (the layout the 32-wide kernels take).
/// `None` where the device lacks `Features::SUBGROUP`, the probe fails, its invocations report
/// different sizes, or the operations disagree with the size: a driver reporting a size it does
/// not run (lavapipe with `LP_NATIVE_VECTOR_WIDTH=1024` reports 32 and runs 16) would make the
/// subgroup kernels decode wrong. A driver that picks the size per kernel (Intel's 8 to 32,
/// AMD's 32 or 64) may run other kernels at another size; [`subgroups_are_32`] and
/// [`subgroup_lanes_width`] allow for that.
pub fn probe_subgroup_size(device: &wgpu::Device, queue: &wgpu::Queue) -> Option<u32> {
    if !device.features().contains(wgpu::Features::SUBGROUP) {
        return None;
    }
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("ecq subgroup size probe"),
        source: wgpu::ShaderSource::Wgsl(
            include_str!("../../wgsl/subgroup_size_probe.wgsl").into(),
        ),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("ecq subgroup size probe"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let sizes = storage_empty(device, "ecq subgroup size probe", 128 * 4).ok()?;
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("ecq subgroup size probe"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[entry(0, &sizes)],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    queue.submit([enc.finish()]);
    if pollster::block_on(scope.pop()).is_some() {
        return None;
    }
    let bytes = read_back(device, queue, &sizes, 128 * 4).ok()?;
    let got: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (got[0] > 0 && got.iter().all(|&v| v == got[0])).then_some(got[0])
}

/// Whether the 32-wide subgroup kernels may run on a device created from the adapter `info`
/// describes, with `Features::SUBGROUP` or not (`subgroup`), whose subgroups a probe kernel
/// found to run at `probed` ([`probe_subgroup_size`]; `None` where it found them broken):
/// where the probe found 32 and the adapter reports its subgroups exactly 32 wide
/// (`subgroup_min_size == subgroup_max_size == 32`: NVIDIA on Vulkan and D3D12), or is an Apple
/// GPU through Metal. wgpu's Metal backend reports 4..64 for every device (a fixed range in
/// wgpu-hal 30), while an Apple GPU's SIMD groups are 32 wide for every kernel; on other
/// devices a range means the driver picks the size per kernel, which one probe cannot settle.
/// Without a probe (a registry made without a queue, [`PipelineRegistry::for_device`]) pass the
/// smallest reported size: the report is then trusted. The rANS kernels check the size they
/// run with and report every chunk otherwise ([`error_bits::SUBGROUP_SIZE`]), never a wrong
/// result; the plain multi-vector GEMV (`qgemv4_many.wgsl`) and the cooperative kernels'
/// activation pass (`x_coop.wgsl`) have no such check and rely on this rule.
pub fn subgroups_are_32(subgroup: bool, info: &wgpu::AdapterInfo, probed: Option<u32>) -> bool {
    let reported_32 = info.subgroup_min_size == 32 && info.subgroup_max_size == 32;
    let apple = info.backend == wgpu::Backend::Metal && info.name.starts_with("Apple");
    subgroup && probed == Some(32) && (reported_32 || apple)
}

/// The group width of the lanes kernels (`wgsl/rans_decode_lanes.wgsl`: a chunk's 32 lanes run
/// by W invocations of one subgroup) on a device created from the adapter `info` describes,
/// with `Features::SUBGROUP` or not (`subgroup`), whose subgroups a probe kernel found to run
/// at `probed` (as for [`subgroups_are_32`]): the largest of 4, 8, 16 and 32 that is at most
/// the smallest subgroup size the adapter reports and the probe found, so that every subgroup
/// the driver may pick (AMD 32..64, Intel 8..32, wgpu's Metal backend 4..64 for every device)
/// is a multiple of it. `None` without `Features::SUBGROUP`, where the probe found the
/// subgroup operations broken, or where the size is below 4. The kernel checks its subgroups
/// at run time and reports every chunk where a group is not W consecutive invocations of one
/// subgroup ([`error_bits::SUBGROUP_SIZE`]).
pub fn subgroup_lanes_width(
    subgroup: bool,
    info: &wgpu::AdapterInfo,
    probed: Option<u32>,
) -> Option<u32> {
    let size = info.subgroup_min_size.min(probed?);
    if !subgroup {
        return None;
    }
    [32, 16, 8, 4].into_iter().find(|&w| w <= size)
}

/// The group widths the lanes kernels take ([`PipelineRegistry::with_subgroup_lanes`]).
pub const SUBGROUP_LANE_WIDTHS: [u32; 4] = [4, 8, 16, 32];

impl PipelineRegistry {
    /// An empty registry that uses no subgroup kernels. Use one registry per device.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry for `device` created from the adapter described by `info`: the
    /// 32-wide subgroup kernels are used when the device has `Features::SUBGROUP` and the
    /// adapter's subgroups are exactly 32 wide (`subgroup_min_size == subgroup_max_size ==
    /// 32`), the lanes kernels at the width its smallest size allows. Without a queue it cannot
    /// probe the subgroups, so it trusts the report: Apple GPUs through Metal, whose reported
    /// range is 4..64, stay off the 32-wide kernels, and a driver whose subgroup operations do
    /// not match its report goes unnoticed. [`Self::for_device_probed`] probes, and
    /// [`GpuContext`] uses it.
    pub fn for_device(device: &wgpu::Device, info: &wgpu::AdapterInfo) -> Self {
        Self::with_subgroups(device, info, Some(info.subgroup_min_size))
    }

    /// [`Self::for_device`], with the subgroups probed on `device` ([`probe_subgroup_size`]):
    /// Apple GPUs through wgpu's Metal backend, which reports 4..64 for every device, get the
    /// 32-wide kernels where the probe finds 32 ([`subgroups_are_32`]), and a device whose
    /// subgroup operations disagree with the size it reports gets no subgroup kernels at all.
    pub fn for_device_probed(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        info: &wgpu::AdapterInfo,
    ) -> Self {
        Self::with_subgroups(device, info, probe_subgroup_size(device, queue))
    }

    fn with_subgroups(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        probed: Option<u32>,
    ) -> Self {
        let subgroup = device.features().contains(wgpu::Features::SUBGROUP);
        PipelineRegistry {
            subgroup32: subgroups_are_32(subgroup, info, probed),
            subgroup_lanes: subgroup_lanes_width(subgroup, info, probed),
            f16_unpack: probe_f16_unpack(device),
            cpu_device: info.device_type == wgpu::DeviceType::Cpu,
            ..Self::default()
        }
    }

    /// Whether this registry's device is a CPU (lavapipe, `DeviceType::Cpu`): a few threads
    /// that any grid fills, where the launch rules that fill a GPU's cores do not pay
    /// ([`TiledGemmTile::for_device`], [`GpuQuantizedMatrix::gemm_tiled_split_for`]).
    pub fn cpu_device(&self) -> bool {
        self.cpu_device
    }

    /// Whether the kernels convert f16 (scale, bias) pairs with `unpack2x16float` on this
    /// registry's device (else with integer operations; see `wgsl/lib/side.wgsl`).
    pub fn f16_unpack(&self) -> bool {
        self.f16_unpack
    }

    /// This registry with the integer f16 conversion even where `unpack2x16float` validates
    /// (tests compare the two; a driver whose conversion misbehaves can be avoided). Drops the
    /// compiled kernels.
    pub fn without_f16_unpack(self) -> Self {
        PipelineRegistry {
            subgroup32: self.subgroup32,
            subgroup_lanes: self.subgroup_lanes,
            cooperative_matrix: self.cooperative_matrix,
            cpu_device: self.cpu_device,
            ..Self::default()
        }
    }

    /// This registry without any subgroup kernel: not the 32-wide ones, nor the cooperative
    /// ones, which need them, nor the lanes kernels ([`Self::subgroup_lanes`]): every launch
    /// runs the portable kernels, as on a device without `Features::SUBGROUP`. Measures and
    /// tests that path on any device ([`GpuContext::without_subgroups`]). Drops the compiled
    /// kernels.
    pub fn without_subgroups(self) -> Self {
        PipelineRegistry {
            f16_unpack: self.f16_unpack,
            cpu_device: self.cpu_device,
            ..Self::default()
        }
    }

    /// Whether the 32-wide subgroup kernels may be used on this registry's device.
    pub fn subgroups32(&self) -> bool {
        self.subgroup32
    }

    /// The group width W of the lanes kernels on this registry's device, `None` where they
    /// do not run ([`subgroup_lanes_width`]). Window splits, byte symbols and split 2 + 2
    /// matrices decode on them instead of the workgroup kernel
    /// ([`GpuCodedMatrix::decode_lanes_width`]): a chunk's 32 lanes run by W invocations of
    /// one subgroup, 32 / W lanes each, without the workgroup kernel's barrier a step.
    pub fn subgroup_lanes(&self) -> Option<u32> {
        self.subgroup_lanes
    }

    /// This registry with the lanes kernels at group width `w` (one of
    /// [`SUBGROUP_LANE_WIDTHS`]), or without them (`None`), whatever the adapter reported:
    /// tests and measures each width on one device, and, after [`Self::without_subgroups`],
    /// runs what a device whose subgroups are not 32 wide runs (AMD, Intel). A width the
    /// device's subgroups are not a multiple of makes the lanes kernels report every chunk
    /// ([`error_bits::SUBGROUP_SIZE`]). Errors: a width outside the list, or a device without
    /// `Features::SUBGROUP`.
    pub fn with_subgroup_lanes(
        mut self,
        device: &wgpu::Device,
        w: Option<u32>,
    ) -> Result<Self, GpuError> {
        if let Some(w) = w {
            if !SUBGROUP_LANE_WIDTHS.contains(&w) {
                return Err(GpuError::InvalidInput(format!(
                    "lanes kernel group width {w}: must be one of {SUBGROUP_LANE_WIDTHS:?}"
                )));
            }
            if !device.features().contains(wgpu::Features::SUBGROUP) {
                return Err(GpuError::Unsupported(
                    "the lanes kernels need Features::SUBGROUP, which this device lacks".into(),
                ));
            }
        }
        self.subgroup_lanes = w;
        Ok(self)
    }

    /// Whether the cooperative-matrix kernels ([`Kernel::RansGemvCoop`], [`Kernel::XCoop`])
    /// may be used on this registry's device: set by
    /// [`GpuContext::with_cooperative_matrix`] where it got the features and limits they
    /// need (see [`Self::with_cooperative_matrix`]).
    pub fn cooperative_matrix(&self) -> bool {
        self.cooperative_matrix
    }

    /// This registry marked for the cooperative-matrix kernels, for an application's own
    /// device. The caller vouches that `device` was created with
    /// `Features::EXPERIMENTAL_COOPERATIVE_MATRIX` and `Features::SHADER_F16` from an adapter
    /// offering 16x16x16 f16 multiplies with f32 accumulators ([`offers_coop_f16_16x16`]), and
    /// with at least [`COOP_WORKGROUP_BYTES`] and [`COOP_GEMM_WORKGROUP_BYTES`] of workgroup
    /// memory and
    /// [`COOP_STORAGE_BUFFERS`] storage buffers per stage; the features and limits are
    /// checked here (a missing one leaves the registry unmarked), the adapter's shapes cannot
    /// be. The subgroup kernels must be usable too ([`Self::subgroups32`]).
    pub fn with_cooperative_matrix(mut self, device: &wgpu::Device) -> Self {
        let need = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
        let l = device.limits();
        self.cooperative_matrix = self.subgroup32
            && device.features().contains(need)
            && l.max_compute_workgroup_storage_size
                >= COOP_WORKGROUP_BYTES.max(COOP_GEMM_WORKGROUP_BYTES)
            && l.max_storage_buffers_per_shader_stage >= COOP_STORAGE_BUFFERS;
        self
    }

    /// Number of cached pipelines.
    pub fn len(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Whether no pipeline is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pipeline for `kernel`'s entry point `entry` with the given overridable constants,
    /// compiled on first use. Compilation errors are returned as [`GpuError::Wgpu`].
    pub fn get(
        &self,
        device: &wgpu::Device,
        kernel: Kernel,
        entry: &'static str,
        constants: &[(&'static str, u32)],
    ) -> Result<wgpu::ComputePipeline, GpuError> {
        let key = PipelineKey {
            kernel,
            entry,
            constants: constants.to_vec(),
        };
        if let Some(p) = self.pipelines.lock().expect("registry lock").get(&key) {
            return Ok(p.clone());
        }
        // (a driver that fails to compile a pipeline reports an internal error, not a
        // validation one)
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = self.modules.lock().expect("registry lock");
            modules
                .entry(kernel)
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.file_name()),
                        source: wgpu::ShaderSource::Wgsl(with_f16_pair(
                            kernel.source(),
                            self.f16_unpack,
                        )),
                    };
                    if kernel.loops_bounded_by_construction() {
                        // SAFETY: see `loops_bounded_by_construction`: every loop of these
                        // kernels runs at most a count taken from the uniform block or a
                        // constant, so none can run forever; only the injected per-iteration
                        // loop counter is dropped. Bounds checks stay on except for the
                        // kernels whose every index is in range by construction (see
                        // `indices_in_range_by_construction` for why).
                        unsafe {
                            device.create_shader_module_trusted(
                                desc,
                                wgpu::ShaderRuntimeChecks {
                                    force_loop_bounding: false,
                                    bounds_checks: !kernel.indices_in_range_by_construction(),
                                    ..wgpu::ShaderRuntimeChecks::checked()
                                },
                            )
                        }
                    } else {
                        device.create_shader_module(desc)
                    }
                })
                .clone()
        };
        let consts: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.file_name()),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &consts,
                zero_initialize_workgroup_memory: true,
            },
            cache: None,
        });
        // (where the driver's compiler failed, the error may reach no scope until the pipeline
        // is used: asking for its layout inside the scopes turns it into one here)
        let _ = pipeline.get_bind_group_layout(0);
        let validation = pollster::block_on(scope.pop());
        if let Some(e) = validation.or(pollster::block_on(internal.pop())) {
            return Err(GpuError::Wgpu(format!("{}: {e}", kernel.file_name())));
        }
        self.pipelines
            .lock()
            .expect("registry lock")
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }
}

/// The part of a storage buffer a launch binds: a whole buffer (a `&wgpu::Buffer` converts
/// into one) or `size` bytes from `offset`. Several launches can then share one buffer, each
/// reading or writing its own range: a layer's launches of 16 activation vectors write their
/// outputs straight into place in one output buffer instead of a buffer each copied into it.
///
/// WebGPU allows a binding to start only at a multiple of the device's
/// `min_storage_buffer_offset_alignment` (256 bytes by default); the launches that take a
/// range refuse others with [`GpuError::InvalidInput`] ([`BufferRange::check`]).
#[derive(Debug, Clone, Copy)]
pub struct BufferRange<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl<'a> BufferRange<'a> {
    /// `size` bytes of `buffer` from `offset` (checked when a launch binds it).
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        BufferRange {
            buffer,
            offset,
            size,
        }
    }

    /// The buffer.
    pub fn buffer(&self) -> &'a wgpu::Buffer {
        self.buffer
    }

    /// Where the range starts in the buffer, in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of the range.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `device` can bind the range: it lies inside the buffer, is not empty, starts
    /// at a multiple of the device's storage offset alignment ([`GpuError::InvalidInput`]
    /// otherwise) and is no larger than the device binds ([`GpuError::TooLarge`]: pass a range
    /// of the bytes a launch reads rather than a whole larger buffer). `what` names the range
    /// in the error.
    pub fn check(&self, device: &wgpu::Device, what: &str) -> Result<(), GpuError> {
        // (the device's limits copied once: `Device::limits` returns them by value)
        let limits = device.limits();
        self.placement_within(&limits, what)?;
        self.binding_size_within(&limits, what)
    }

    /// [`Self::check`] but for the size limit: for a range whose launches bind parts of it.
    pub(crate) fn check_placement(
        &self,
        device: &wgpu::Device,
        what: &str,
    ) -> Result<(), GpuError> {
        self.placement_within(&device.limits(), what)
    }

    fn placement_within(&self, limits: &wgpu::Limits, what: &str) -> Result<(), GpuError> {
        let align = u64::from(limits.min_storage_buffer_offset_alignment).max(1);
        let end = self.offset.checked_add(self.size);
        if self.size == 0 || end.is_none_or(|e| e > self.buffer.size()) {
            return Err(GpuError::InvalidInput(format!(
                "{what}: bytes {}..{} of a buffer of {}",
                self.offset,
                self.offset.saturating_add(self.size),
                self.buffer.size()
            )));
        }
        if !self.offset.is_multiple_of(align) {
            return Err(GpuError::InvalidInput(format!(
                "{what}: offset {} is not a multiple of the device's storage offset alignment \
                 {align}",
                self.offset
            )));
        }
        Ok(())
    }

    /// [`GpuError::TooLarge`] where the range is larger than the device binds (a launch
    /// binding it whole would fail wgpu's validation). `what` names the range.
    pub(crate) fn check_binding_size(
        &self,
        device: &wgpu::Device,
        what: &str,
    ) -> Result<(), GpuError> {
        self.binding_size_within(&device.limits(), what)
    }

    fn binding_size_within(&self, limits: &wgpu::Limits, what: &str) -> Result<(), GpuError> {
        let limit = limits.max_storage_buffer_binding_size;
        if self.size > limit {
            return Err(GpuError::TooLarge {
                what: what.to_string(),
                bytes: self.size,
                limit,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(())
    }

    /// The bind group entry `binding` for the range.
    pub(crate) fn entry(&self, binding: u32) -> wgpu::BindGroupEntry<'a> {
        wgpu::BindGroupEntry {
            binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buffer,
                offset: self.offset,
                size: std::num::NonZeroU64::new(self.size),
            }),
        }
    }
}

impl<'a> From<&'a wgpu::Buffer> for BufferRange<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        BufferRange::new(buffer, 0, buffer.size())
    }
}

/// One recorded kernel launch: pipeline, bind group and workgroup counts. Record it into any
/// compute pass with [`Dispatch::record`] (benchmarks record many between two waits).
#[derive(Debug, Clone)]
pub struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: (u32, u32),
}

impl Dispatch {
    pub(crate) fn new(
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        workgroups: (u32, u32),
    ) -> Self {
        Dispatch {
            pipeline,
            bind_group,
            workgroups,
        }
    }

    /// Records the launch into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.workgroups.0 == 0 || self.workgroups.1 == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups.0, self.workgroups.1, 1);
    }

    /// Workgroups launched (x, y).
    pub fn workgroups(&self) -> (u32, u32) {
        self.workgroups
    }

    /// Records the launch in its own compute pass and submits it.
    pub fn submit(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> wgpu::SubmissionIndex {
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.record(&mut pass);
        }
        queue.submit([enc.finish()])
    }
}

/// A long-lived GPU context: device, queue, adapter information and the pipeline registry.
#[derive(Debug)]
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    registry: PipelineRegistry,
}

impl GpuContext {
    /// Picks an adapter and creates a device.
    ///
    /// Honours `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`, `gl`; through
    /// `wgpu::InstanceDescriptor::with_env`), `WGPU_ADAPTER_NAME` (a case-insensitive substring
    /// of the adapter name) and `WGPU_POWER_PREF`. Without `WGPU_ADAPTER_NAME` the
    /// highest-performance adapter wgpu offers is taken (a software adapter such as lavapipe
    /// when there is nothing else). Requests the WebGPU default limits, raised to the adapter's
    /// maximum storage-buffer binding and buffer sizes, and `Features::SUBGROUP` and
    /// `Features::TIMESTAMP_QUERY` where the adapter offers them (neither is required).
    ///
    /// `ECQ_KERNELS=portable` gives the context of [`Self::without_subgroups`]: the portable
    /// kernels only, whatever the adapter (a way round the subgroup kernels on a device where
    /// they misbehave, and a comparison of both paths with any program).
    /// `ECQ_KERNELS=lanes` gives what a device whose subgroups are not 32 wide runs: the
    /// portable kernels and the lanes kernels at the adapter's width
    /// ([`PipelineRegistry::subgroup_lanes`]); `ECQ_KERNELS=lanes:W` the same at group width W
    /// ([`Self::with_subgroup_lanes`]). Another value is [`GpuError::InvalidInput`].
    pub fn new() -> Result<Self, GpuError> {
        pollster::block_on(Self::new_async(false))
    }

    /// [`Self::new`], plus the cooperative-matrix kernels where the adapter can run them
    /// (tensor cores; [`GpuCodedMatrix::gemv_coop_dispatch`]): where it offers
    /// `Features::EXPERIMENTAL_COOPERATIVE_MATRIX` with 16x16x16 f16 multiplies and f32
    /// accumulators ([`offers_coop_f16_16x16`]), `Features::SHADER_F16`, 32-wide subgroups
    /// and the workgroup memory and storage buffers the kernel needs, the device is created
    /// with those features (wgpu's experimental features enabled for it) and limits, and
    /// [`PipelineRegistry::cooperative_matrix`] is true. Elsewhere this is [`Self::new`]'s
    /// context with the flag false, so callers can always ask and fall back.
    pub fn with_cooperative_matrix() -> Result<Self, GpuError> {
        pollster::block_on(Self::new_async(true))
    }

    async fn new_async(coop: bool) -> Result<Self, GpuError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env());
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(want) => {
                let want = want.to_lowercase();
                let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want))
                    .ok_or_else(|| {
                        GpuError::NoAdapter(format!(
                            "WGPU_ADAPTER_NAME={want:?} matches none of {names:?}"
                        ))
                    })?
            }
            Err(_) => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env()
                        .unwrap_or(wgpu::PowerPreference::HighPerformance),
                    ..Default::default()
                })
                .await
                .map_err(|e| GpuError::NoAdapter(e.to_string()))?,
        };
        let info = adapter.get_info();
        let al = adapter.limits();
        // Subgroup operations only where the adapter offers them (the fused kernel has a
        // workgroup-memory version for every other adapter); timestamp queries where offered,
        // for the benchmarks' GPU-side timing (no kernel needs them).
        let mut features =
            adapter.features() & (wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY);
        let mut limits = wgpu::Limits {
            max_storage_buffer_binding_size: al.max_storage_buffer_binding_size,
            max_buffer_size: al.max_buffer_size,
            ..wgpu::Limits::default()
        };
        let coop_features = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
            | wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP;
        let coop = coop
            && adapter.features().contains(coop_features)
            && info.subgroup_min_size == 32
            && info.subgroup_max_size == 32
            && al.max_compute_workgroup_storage_size
                >= COOP_WORKGROUP_BYTES.max(COOP_GEMM_WORKGROUP_BYTES)
            && al.max_storage_buffers_per_shader_stage >= COOP_STORAGE_BUFFERS
            && offers_coop_f16_16x16(&adapter.cooperative_matrix_properties());
        let mut experimental = wgpu::ExperimentalFeatures::disabled();
        if coop {
            features |= coop_features;
            limits.max_compute_workgroup_storage_size = al.max_compute_workgroup_storage_size;
            limits.max_storage_buffers_per_shader_stage = COOP_STORAGE_BUFFERS;
            // SAFETY: wgpu marks cooperative matrices experimental: its validation of them
            // may be incomplete. ecq's cooperative kernels are validated by naga like every
            // other (tests/wgsl_portability.rs), index their buffers with naga's bounds checks
            // on, and load their matrices only from ranges the host sizes
            // (`GpuCodedMatrix::gemv_coop_dispatch` checks them); no other kernel uses the
            // feature.
            experimental = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("ecq"),
                required_features: features,
                required_limits: limits,
                experimental_features: experimental,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let mut ctx = Self::from_device(device, queue, info);
        if coop {
            ctx.registry = std::mem::take(&mut ctx.registry).with_cooperative_matrix(&ctx.device);
        }
        match std::env::var("ECQ_KERNELS") {
            Ok(v) if v == "portable" => Ok(ctx.without_subgroups()),
            Ok(v) if v == "lanes" => {
                let w = ctx.registry.subgroup_lanes();
                ctx.without_subgroups().with_subgroup_lanes(w)
            }
            Ok(v) if v.starts_with("lanes:") => match v["lanes:".len()..].parse::<u32>() {
                Ok(w) if SUBGROUP_LANE_WIDTHS.contains(&w) => {
                    ctx.without_subgroups().with_subgroup_lanes(Some(w))
                }
                _ => Err(GpuError::InvalidInput(format!(
                    "ECQ_KERNELS={v:?}: `lanes:W` takes a group width W, one of \
                     {SUBGROUP_LANE_WIDTHS:?}"
                ))),
            },
            Ok(v) if !v.is_empty() => Err(GpuError::InvalidInput(format!(
                "ECQ_KERNELS={v:?}: the values are `portable` (the portable kernels only), \
                 `lanes` (the kernels of devices whose subgroups are not 32 wide) and `lanes:W` \
                 (those at group width W)"
            ))),
            _ => Ok(ctx),
        }
    }

    /// Wraps an application's own device and queue (`info` from its adapter, used for reports
    /// and to decide whether the subgroup kernels may run, see
    /// [`PipelineRegistry::for_device_probed`]).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        let registry = PipelineRegistry::for_device_probed(&device, &queue, &info);
        GpuContext {
            device,
            queue,
            info,
            registry,
        }
    }

    /// This context running the portable kernels only
    /// ([`PipelineRegistry::without_subgroups`]): what a device whose subgroups are not 32
    /// wide runs, on this one.
    pub fn without_subgroups(mut self) -> Self {
        self.registry = std::mem::take(&mut self.registry).without_subgroups();
        self
    }

    /// This context with the lanes kernels at group width `w`, or without them
    /// ([`PipelineRegistry::with_subgroup_lanes`], which says what it checks).
    pub fn with_subgroup_lanes(mut self, w: Option<u32>) -> Result<Self, GpuError> {
        self.registry = std::mem::take(&mut self.registry).with_subgroup_lanes(&self.device, w)?;
        Ok(self)
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The pipeline registry.
    pub fn registry(&self) -> &PipelineRegistry {
        &self.registry
    }

    /// The adapter information.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The adapter name (e.g. "NVIDIA H100", "llvmpipe (LLVM 15.0.7, 256 bits)").
    pub fn adapter_name(&self) -> &str {
        &self.info.name
    }

    /// The backend (Vulkan, Metal, Dx12, Gl, BrowserWebGpu).
    pub fn backend(&self) -> wgpu::Backend {
        self.info.backend
    }

    /// One line naming adapter, backend, driver, device type and subgroup sizes.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver {} {}, subgroups {}..{}{}{}{}{})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info,
            self.info.subgroup_min_size,
            self.info.subgroup_max_size,
            if self.registry.subgroups32() {
                ", subgroup kernels on"
            } else {
                ""
            },
            match self.registry.subgroup_lanes() {
                Some(w) => format!(", lanes kernels W={w}"),
                None => String::new(),
            },
            if self.registry.f16_unpack() {
                ", unpack2x16float"
            } else {
                ""
            },
            if self.registry.cooperative_matrix() {
                ", cooperative matrices"
            } else {
                ""
            }
        )
    }

    /// Waits until the GPU has finished all submitted work.
    pub fn wait(&self) -> Result<(), GpuError> {
        wait(&self.device)
    }

    /// Uploads a coded matrix (and optionally its MLX scales and biases for the fused GEMV).
    ///
    /// The kernels check the stream's structure (states, offsets, tables, word counts) and
    /// report corrupt chunks, but not the tile checksums: a flipped word can decode cleanly to
    /// wrong weights. Verify untrusted data first ([`crate::rans::EncodedMatrix::verify_checksums`],
    /// or [`crate::rans::verify_checksums_le`] on file bytes, as `linear::EntropyCodedModel`
    /// does).
    pub fn upload_coded(
        &self,
        m: CodedMatrixRef<'_>,
        quant: Option<QuantParamsRef<'_>>,
    ) -> Result<GpuCodedMatrix, GpuError> {
        GpuCodedMatrix::upload(&self.device, m, quant)
    }

    /// Uploads a [`crate::rans::SplitMatrix`] (coded high bits, raw low bits) and optionally
    /// its scales and biases: see [`GpuCodedMatrix::upload_split`] for what the GPU runs.
    pub fn upload_split(
        &self,
        m: &crate::rans::SplitMatrix,
        quant: Option<QuantParamsRef<'_>>,
    ) -> Result<GpuCodedMatrix, GpuError> {
        GpuCodedMatrix::upload_split(&self.device, m, quant)
    }

    /// Uploads an MLX quantized matrix for the plain GEMV.
    pub fn upload_quantized(
        &self,
        q: &crate::quant::QuantizedMatrix,
    ) -> Result<GpuQuantizedMatrix, GpuError> {
        GpuQuantizedMatrix::upload(&self.device, q)
    }

    /// Decodes a coded matrix on the GPU into a plain one for [`Self::gemv_quantized`]
    /// ([`GpuQuantizedMatrix::decode_from`]): the way to load coded weights where the plain
    /// GEMV is the faster kernel.
    pub fn decode_to_quantized(&self, m: &GpuCodedMatrix) -> Result<GpuQuantizedMatrix, GpuError> {
        GpuQuantizedMatrix::decode_from(&self.device, &self.queue, &self.registry, m)
    }

    /// [`Self::decode_to_quantized`] for many matrices with one wait for all of them
    /// ([`GpuQuantizedMatrix::decode_many`]).
    pub fn decode_many_to_quantized(
        &self,
        ms: &[&GpuCodedMatrix],
    ) -> Result<Vec<GpuQuantizedMatrix>, GpuError> {
        GpuQuantizedMatrix::decode_many(&self.device, &self.queue, &self.registry, ms)
    }

    /// Decodes to MLX packed `u32` words (`rows * cols * bits / 32`), bit-exact with
    /// `EncodedMatrix::decode_packed`. Corruption is reported as [`GpuError::CorruptStream`].
    pub fn decode_packed(&self, m: &GpuCodedMatrix) -> Result<Vec<u32>, GpuError> {
        m.decode(
            &self.device,
            &self.queue,
            &self.registry,
            DecodeOutput::Packed,
        )
    }

    /// Decodes to one byte per weight (`rows * cols`), bit-exact with
    /// `EncodedMatrix::decode_symbols`.
    pub fn decode_symbols(&self, m: &GpuCodedMatrix) -> Result<Vec<u8>, GpuError> {
        let words = m.decode(
            &self.device,
            &self.queue,
            &self.registry,
            DecodeOutput::BytePerWeight,
        )?;
        let mut bytes: Vec<u8> = bytemuck::cast_slice(&words).to_vec();
        bytes.truncate(m.rows() * m.cols());
        Ok(bytes)
    }

    /// Fused decode + dequantize + GEMV: `y = W x` with `W` in coded form (needs the scales and
    /// biases given to [`upload_coded`](Self::upload_coded)).
    pub fn gemv_coded(&self, m: &GpuCodedMatrix, x: &[f32]) -> Result<Vec<f32>, GpuError> {
        m.gemv(&self.device, &self.queue, &self.registry, x)
    }

    /// [`gemv_coded`](Self::gemv_coded) with `f16` activations, converted to `f32` on the host.
    pub fn gemv_coded_f16(
        &self,
        m: &GpuCodedMatrix,
        x: &[half::f16],
    ) -> Result<Vec<f32>, GpuError> {
        let x: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        self.gemv_coded(m, &x)
    }

    /// Plain quantized GEMV `y = W x` over MLX packed weights (2, 4 or 8 bits).
    pub fn gemv_quantized(&self, m: &GpuQuantizedMatrix, x: &[f32]) -> Result<Vec<f32>, GpuError> {
        m.gemv(&self.device, &self.queue, &self.registry, x)
    }

    /// [`gemv_quantized`](Self::gemv_quantized) with `f16` activations, converted to `f32` on
    /// the host.
    pub fn gemv_quantized_f16(
        &self,
        m: &GpuQuantizedMatrix,
        x: &[half::f16],
    ) -> Result<Vec<f32>, GpuError> {
        let x: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        self.gemv_quantized(m, &x)
    }
}

/// Blocks until all submitted work on `device` is done.
pub fn wait(device: &wgpu::Device) -> Result<(), GpuError> {
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| GpuError::Wgpu(e.to_string()))
}

/// Checks a storage buffer size against the device limits.
pub(crate) fn check_storage(device: &wgpu::Device, what: &str, bytes: u64) -> Result<(), GpuError> {
    let l = device.limits();
    if bytes > l.max_storage_buffer_binding_size {
        return Err(GpuError::TooLarge {
            what: what.to_string(),
            bytes,
            limit: l.max_storage_buffer_binding_size,
            limit_name: "max_storage_buffer_binding_size",
        });
    }
    if bytes > l.max_buffer_size {
        return Err(GpuError::TooLarge {
            what: what.to_string(),
            bytes,
            limit: l.max_buffer_size,
            limit_name: "max_buffer_size",
        });
    }
    Ok(())
}

/// A storage buffer holding `bytes` (padded with zeros to a multiple of 16 bytes, at least 16,
/// so it can also be bound as an array of 16-byte vectors).
pub(crate) fn storage_init(
    device: &wgpu::Device,
    what: &str,
    bytes: &[u8],
    extra: wgpu::BufferUsages,
) -> Result<wgpu::Buffer, GpuError> {
    use wgpu::util::DeviceExt;
    let len = bytes.len().div_ceil(16).max(1) * 16;
    check_storage(device, what, len as u64)?;
    let contents: std::borrow::Cow<[u8]> = if len == bytes.len() {
        bytes.into()
    } else {
        let mut v = bytes.to_vec();
        v.resize(len, 0);
        v.into()
    };
    Ok(
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(what),
            contents: &contents,
            usage: wgpu::BufferUsages::STORAGE | extra,
        }),
    )
}

/// The launch of a pass over activation vectors (`quantize_x8.wgsl`, `x_lane_order.wgsl`):
/// `params` as the kernel's uniform block at binding 0, `x` read at 1, `out` written at 2.
/// Callers pass ranges within what they checked with [`BufferRange::check`] (which refuses a
/// range past the binding limit).
pub(crate) fn vector_pass_dispatch(
    device: &wgpu::Device,
    pipeline: wgpu::ComputePipeline,
    params: &[u32],
    x: BufferRange<'_>,
    out: BufferRange<'_>,
    workgroups: (u32, u32),
) -> Dispatch {
    use wgpu::util::DeviceExt;
    let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("vector pass params"),
        contents: bytemuck::cast_slice(params),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let layout = pipeline.get_bind_group_layout(0);
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("vector pass"),
        layout: &layout,
        entries: &[decode::entry(0, &uniform), x.entry(1), out.entry(2)],
    });
    Dispatch {
        pipeline,
        bind_group,
        workgroups,
    }
}

/// Checks that `x` holds one activation per column.
pub(crate) fn check_x_len(x: &[f32], cols: usize) -> Result<(), GpuError> {
    if x.len() != cols {
        return Err(GpuError::InvalidInput(format!(
            "x has {} entries, cols = {cols}",
            x.len()
        )));
    }
    Ok(())
}

/// What the `gemv_many` entry points share: checks that `x` holds `vectors` rows of `cols`;
/// gives no outputs for no rows or vectors, zeros for an empty matrix (`empty`), and else the
/// outputs of `launch(xs, n)` over runs of up to [`MAX_GEMV_VECTORS`] vectors where `many`,
/// or of `one(x)` a vector.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemv_many_runs(
    x: &[f32],
    vectors: usize,
    rows: usize,
    cols: usize,
    empty: bool,
    many: bool,
    mut one: impl FnMut(&[f32]) -> Result<Vec<f32>, GpuError>,
    mut launch: impl FnMut(&[f32], usize) -> Result<Vec<f32>, GpuError>,
) -> Result<Vec<f32>, GpuError> {
    if x.len() != vectors * cols {
        return Err(GpuError::InvalidInput(format!(
            "x has {} entries, {vectors} vectors of cols = {cols} need {}",
            x.len(),
            vectors * cols
        )));
    }
    if rows == 0 || vectors == 0 {
        return Ok(Vec::new());
    }
    if cols == 0 || empty {
        return Ok(vec![0.0; vectors * rows]);
    }
    let mut y = Vec::with_capacity(vectors * rows);
    if many {
        for xs in x.chunks(MAX_GEMV_VECTORS as usize * cols) {
            y.extend(launch(xs, xs.len() / cols)?);
        }
    } else {
        for xv in x.chunks_exact(cols) {
            y.extend(one(xv)?);
        }
    }
    Ok(y)
}

/// Activations `x` as a storage buffer.
pub(crate) fn upload_x(device: &wgpu::Device, x: &[f32]) -> Result<wgpu::Buffer, GpuError> {
    storage_init(
        device,
        "x",
        bytemuck::cast_slice(x),
        wgpu::BufferUsages::empty(),
    )
}

/// An output buffer of `n` f32 filled with NaN, to be read back: entries a launch leaves
/// unwritten show.
pub(crate) fn nan_output(device: &wgpu::Device, n: usize) -> Result<wgpu::Buffer, GpuError> {
    storage_init(
        device,
        "y",
        bytemuck::cast_slice(&vec![f32::NAN; n]),
        wgpu::BufferUsages::COPY_SRC,
    )
}

/// An uninitialised storage buffer of `bytes` (at least 16), usable as copy source and
/// destination.
pub(crate) fn storage_empty(
    device: &wgpu::Device,
    what: &str,
    bytes: u64,
) -> Result<wgpu::Buffer, GpuError> {
    let len = bytes.div_ceil(4).max(4) * 4;
    check_storage(device, what, len)?;
    Ok(device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(what),
        size: len,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    }))
}

/// Copies `bytes` bytes of `src` to the host (blocking).
pub(crate) fn read_back(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    src: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<u8>, GpuError> {
    let len = bytes.div_ceil(4).max(4) * 4;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("ecq readback"),
        size: len,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(src, 0, &staging, 0, len);
    queue.submit([enc.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    wait(device)?;
    rx.recv()
        .map_err(|e| GpuError::Map(e.to_string()))?
        .map_err(|e| GpuError::Map(e.to_string()))?;
    let out = {
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| GpuError::Map(e.to_string()))?;
        view[..bytes as usize].to_vec()
    };
    staging.unmap();
    Ok(out)
}

/// Splits `total` workgroups into a 2-D dispatch within the device's per-dimension limit.
pub(crate) fn grid(device: &wgpu::Device, total: u32) -> (u32, u32) {
    if total == 0 {
        return (0, 0);
    }
    let max = device.limits().max_compute_workgroups_per_dimension.max(1);
    let x = total.min(max);
    (x, total.div_ceil(x))
}

#[cfg(test)]
mod tests {
    use super::SideFormat;

    #[test]
    fn side_format_is_the_narrowest_exact_one() {
        let f16 = [0.0f32, -0.0, 0.5, -0.0029296875, 65504.0];
        assert_eq!(SideFormat::exact_for(&f16, &f16), SideFormat::F16);
        // an f16 subnormal (exact in f16, but the kernels take normals only) and values
        // below f16's range go to bf16 when exact there
        let sub = [0.0f32, half::f16::from_bits(3).to_f32()];
        assert_eq!(SideFormat::exact_for(&sub, &[0.5, -2.0]), SideFormat::Bf16);
        let tiny = [2.0f32.powi(-100)];
        assert_eq!(SideFormat::exact_for(&tiny, &tiny), SideFormat::Bf16);
        for odd in [f32::INFINITY, f32::NAN, 1.0 + f32::EPSILON] {
            assert_eq!(SideFormat::exact_for(&[odd], &[0.5]), SideFormat::F32);
        }
        let err = SideFormat::F16.check_exact(&[0.5], &[1.0e-30]).unwrap_err();
        assert!(err.to_string().contains("bias 0"), "{err}");
    }

    #[test]
    fn side_pairs_are_packed_as_the_kernels_read_them() {
        // f32: (scale, bias) per 8 bytes; 16-bit: scale in the low half, padded to 8 bytes
        let (s, b) = ([1.5f32, -2.0, 0.25], [0.0f32, 4.0, -0.5]);
        let p = SideFormat::F32.pack(&s, &b);
        assert_eq!(p.len(), 24);
        assert_eq!(
            &p[8..16],
            [(-2.0f32).to_le_bytes(), 4.0f32.to_le_bytes()].concat()
        );
        let p = SideFormat::F16.pack(&s, &b);
        assert_eq!(p.len(), 16);
        let w = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(w & 0xFFFF, half::f16::from_f32(-2.0).to_bits() as u32);
        assert_eq!(w >> 16, half::f16::from_f32(4.0).to_bits() as u32);
        let p = SideFormat::Bf16.pack(&s, &b);
        let w = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
        // the kernel's bf16 read: scale = w << 16, bias = w & 0xFFFF0000
        assert_eq!(
            (f32::from_bits(w << 16), f32::from_bits(w & 0xFFFF_0000)),
            (0.25, -0.5)
        );
    }

    /// The rule for the 32-wide subgroup kernels: an adapter reporting exactly 32 where the
    /// probe agrees; Apple GPUs through Metal (reported 4..64 by wgpu) where the probe finds
    /// 32; never without `Features::SUBGROUP`, never where the probe found the subgroups
    /// broken, never a range elsewhere, whatever a probe would say.
    #[test]
    fn subgroups_are_32_rule() {
        use super::subgroups_are_32;
        use wgpu::{AdapterInfo, Backend, DeviceType};
        let info = |backend, name: &str, min, max| AdapterInfo {
            name: name.into(),
            subgroup_min_size: min,
            subgroup_max_size: max,
            ..AdapterInfo::new(DeviceType::DiscreteGpu, backend)
        };
        let nvidia = info(Backend::Vulkan, "NVIDIA H200", 32, 32);
        assert!(subgroups_are_32(true, &nvidia, Some(32)));
        assert!(!subgroups_are_32(false, &nvidia, Some(32)));
        // a driver whose subgroup operations do not match its report
        assert!(!subgroups_are_32(true, &nvidia, Some(16)));
        assert!(!subgroups_are_32(true, &nvidia, None));
        let apple = info(Backend::Metal, "Apple M2 Pro", 4, 64);
        assert!(subgroups_are_32(true, &apple, Some(32)));
        assert!(!subgroups_are_32(true, &apple, Some(16)));
        assert!(!subgroups_are_32(true, &apple, None));
        // (without a probe, the smallest reported size stands in)
        assert!(!subgroups_are_32(true, &apple, Some(4)));
        assert!(!subgroups_are_32(false, &apple, Some(32)));
        // AMD and Intel pick the size per kernel: a range is never settled by one probe
        for other in [
            info(Backend::Metal, "AMD Radeon Pro 5500M", 4, 64),
            info(
                Backend::Vulkan,
                "AMD Radeon RX 7900 XTX (RADV NAVI31)",
                32,
                64,
            ),
            info(
                Backend::Vulkan,
                "Intel(R) Arc(tm) A770 Graphics (DG2)",
                8,
                32,
            ),
            info(Backend::Dx12, "Apple-named adapter elsewhere", 4, 64),
            info(Backend::Vulkan, "llvmpipe (LLVM 15.0.6, 256 bits)", 8, 8),
            // lavapipe with 1024-bit vectors reports 32 and runs 16
            info(Backend::Vulkan, "llvmpipe (LLVM 15.0.6, 1024 bits)", 32, 32),
        ] {
            let probed = if other.subgroup_min_size == 32 {
                None
            } else {
                Some(32)
            };
            assert!(!subgroups_are_32(true, &other, probed), "{}", other.name);
        }
    }

    /// The lanes kernels' group width: the largest of 4, 8, 16, 32 at most the adapter's
    /// smallest subgroup size and the probe's; none without `Features::SUBGROUP`, where the
    /// probe found the subgroups broken, or below 4.
    #[test]
    fn subgroup_lanes_width_rule() {
        use super::subgroup_lanes_width;
        use wgpu::{AdapterInfo, Backend, DeviceType};
        let info = |min, max| AdapterInfo {
            subgroup_min_size: min,
            subgroup_max_size: max,
            ..AdapterInfo::new(DeviceType::DiscreteGpu, Backend::Vulkan)
        };
        for (min, max, probed, want) in [
            (32, 32, Some(32), Some(32)), // NVIDIA
            (32, 64, Some(64), Some(32)), // AMD RDNA
            (64, 64, Some(64), Some(32)), // AMD GCN
            (8, 32, Some(16), Some(8)),   // Intel
            (4, 64, Some(32), Some(4)),   // wgpu's Metal backend, every device
            (16, 16, Some(16), Some(16)), // lavapipe, 512-bit vectors
            (8, 8, Some(8), Some(8)),     // lavapipe, 256-bit vectors
            (32, 32, None, None),         // lavapipe, 1024-bit vectors: broken subgroups
            (32, 32, Some(16), Some(16)), // a probe finding less than the report
            (24, 24, Some(24), Some(16)),
            (2, 2, Some(2), None),
            (0, 0, Some(0), None),
        ] {
            let got = subgroup_lanes_width(true, &info(min, max), probed);
            assert_eq!(got, want, "{min}..{max} probed {probed:?}");
            assert_eq!(subgroup_lanes_width(false, &info(min, max), probed), None);
        }
    }

    use super::Kernel;

    /// Every kernel the registry builds.
    const ALL_KERNELS: [Kernel; 29] = [
        Kernel::RansDecode,
        Kernel::RansDecodeLanes,
        Kernel::RansGemvLanes,
        Kernel::RansGemv,
        Kernel::RansGemvSubgroup,
        Kernel::RansDecodeSubgroup,
        Kernel::RansGemvBlocked,
        Kernel::RansDecodeBlocked,
        Kernel::RansGemvBlockedCompact,
        Kernel::RansDecodeBlockedCompact,
        Kernel::RansDecodeWindow,
        Kernel::RansDecodeWindowCompact,
        Kernel::QGemv,
        Kernel::QGemv4,
        Kernel::QGemv4Dp4a,
        Kernel::QGemv4Stream,
        Kernel::QGemv4Pipe,
        Kernel::QuantizeX8,
        Kernel::QGemv4Many,
        Kernel::XLaneOrder,
        Kernel::RansGemvCoop,
        Kernel::XCoop,
        Kernel::QGemv4Coop,
        Kernel::QGemmCoop,
        Kernel::XRowsF16,
        Kernel::QGemmTiled,
        Kernel::SplitKSum,
        Kernel::AddBias,
        Kernel::CopyRows,
    ];

    /// The registry drops bounds checks only on the trusted path it takes for kernels with
    /// loops bounded by construction; a kernel marked in range but not bounded would keep its
    /// checks silently, so the two marks must go together.
    #[test]
    fn kernels_without_bounds_checks_are_loop_bounded() {
        let unchecked: Vec<Kernel> = ALL_KERNELS
            .into_iter()
            .filter(|k| k.indices_in_range_by_construction())
            .collect();
        assert_eq!(
            unchecked.len(),
            12,
            "only the six blocked kernels, their plain multi-vector baseline, the \
             cooperative ones and the tiled f32 GEMM with its split-K sum"
        );
        for k in unchecked {
            assert!(k.loops_bounded_by_construction(), "{k:?}");
        }
    }

    /// Every kernel as the library loads it (with its imports appended) parses and validates
    /// with every capability. lavapipe never builds the subgroup pipelines (its subgroups are
    /// 8 wide), so this is where a kernel whose library source lacks an import would show
    /// before a device run.
    #[test]
    fn library_kernel_sources_validate() {
        let sources = ALL_KERNELS.map(|k| (k.file_name(), k.source()));
        let extra = [
            ("bf16_decode.wgsl", crate::lossless::gpu::BF16_DECODE_SOURCE),
            ("bf16_gemv.wgsl", crate::lossless::gpu::BF16_GEMV_SOURCE),
            (
                "bf16_plain_gemv.wgsl",
                crate::lossless::gpu::BF16_PLAIN_GEMV_SOURCE,
            ),
            (
                "bf16_gemv_subgroup.wgsl",
                crate::lossless::gpu::BF16_GEMV_SUBGROUP_SOURCE,
            ),
            (
                "bf16_decode_subgroup.wgsl",
                crate::lossless::gpu::BF16_DECODE_SUBGROUP_SOURCE,
            ),
            (
                "bf16_indexed_gemv.wgsl",
                crate::lossless::gpu::BF16_INDEXED_GEMV_SOURCE,
            ),
            (
                "bf16_indexed_decode.wgsl",
                crate::lossless::gpu::BF16_INDEXED_DECODE_SOURCE,
            ),
            (
                "bf16_indexed_patch.wgsl",
                crate::lossless::gpu::BF16_INDEXED_PATCH_SOURCE,
            ),
        ];
        // the two blocked forms share their kernel files and differ only in the table library
        for (word, compact) in [
            (Kernel::RansGemvBlocked, Kernel::RansGemvBlockedCompact),
            (Kernel::RansDecodeBlocked, Kernel::RansDecodeBlockedCompact),
            (Kernel::RansDecodeWindow, Kernel::RansDecodeWindowCompact),
        ] {
            assert!(word.source().contains("var<workgroup> table:"), "{word:?}");
            assert!(!word.source().contains("slot_sym"), "{word:?}");
            assert!(
                compact.source().contains("var<workgroup> slot_sym:"),
                "{compact:?}"
            );
            assert!(
                !compact.source().contains("var<workgroup> table:"),
                "{compact:?}"
            );
        }
        // (as the registry builds them: with either f16_pair library where they read side)
        for unpack in [false, true] {
            for (name, src) in sources.iter().chain(&extra) {
                let src = &*super::with_f16_pair(src, unpack);
                let module = naga::front::wgsl::parse_str(src)
                    .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::all(),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            }
        }
    }
}
