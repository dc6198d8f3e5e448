//! [`EntropyCodedLinear`]: a coded matrix resident on the GPU, with the fused GEMV for one
//! vector, the fused GEMVs of several and the batched `rans_gemm.wgsl` for few rows, and for
//! many rows (prefill) the decode into plain weights multiplied by the plain kernels.

use std::sync::Arc;

use super::call_buffers::{pipelined, CallScratch, LaunchLayout, PendingRead};
use super::device::{LinearDevice, LinearKernel};
use super::plain::QuantizedLinear;
use super::resident::{
    bias_buffer, prepare_call, PreparedForward, Resident, ResidentCall, RowsNeed,
};
use super::{add_bias, check_x, check_y, ActivationOrder, GpuLinear, Linear, LinearError};
use crate::gpu::{
    check_gemv_vectors, coop_gemv_pipeline, coop_layout_refusal, coop_params, coop_x_dispatch,
    default_fused_variant, entry, fused_gemv_pipeline, fused_reads_tables, quantize_x8_dispatch,
    set_chunk_subgroups, set_lanes_geometry, variant_lanes_width, x8_bytes, BufferRange,
    CodedParams, CoopActivations, CoopOrder, GpuError, SideFormat, X8Order,
};
use crate::gpu::{DecodeOutput, DecodeSource};
use crate::rans::{EncodedMatrix, SplitMatrix, SplitOrder};

/// Activation rows per dispatch of the batched kernel (4 per invocation, 128 invocations).
pub const MAX_M_PER_DISPATCH: usize = 512;
/// Activation rows per submission of `forward_batch`'s GEMV launches (eight launches of 16),
/// two submissions in flight, so that one's upload and read back overlap the other's
/// launches (BENCHMARKS.md, issue 5, step 91).
pub const GEMV_SUBMIT_ROWS: usize = 128;
/// Workgroups a batched dispatch aims for: when the matrix alone gives fewer (few chunks, or
/// few rows), the activation rows are split across workgroups in blocks of 128, 256 or 512
/// (each block decodes the chunks again), trading repeated decoding for parallelism. Timed
/// again on an H200 with the conflict-free slices (BENCHMARKS.md, Prefill, twentieth session):
/// the fastest of 256, 512 and 1024, or within 4% of it, at 16-512 rows of 1024x4096,
/// 4096x4096 and 4096x14336 window splits.
pub const TARGET_WORKGROUPS: u32 = 512;

/// Invocations of a batched kernel's workgroup sharing each activation row
/// (`wgsl/lib/gemm_slice.wgsl`) for blocks of `m` rows: 128 / `m` rounded to a power of two,
/// 1..=32, for `m <= 128`, so that all 128 invocations multiply; 1 above.
pub(crate) fn kparts(m: usize) -> u32 {
    if m == 0 || m > 128 {
        1
    } else {
        (128 / m.next_power_of_two()).clamp(1, 32) as u32
    }
}

/// Activation rows per workgroup and the number of blocks, for `m` rows and `wgs` workgroups
/// per block: more blocks (each decoding the chunks again) where the matrix alone gives few
/// workgroups, as many as keep the workgroups within `target` ([`TARGET_WORKGROUPS`] by
/// default, [`LinearOptions::gemm_target_workgroups`]), or (`round_up`,
/// for the portable `rans_gemm.wgsl`, whose slower decode gains more from parallelism than
/// it loses to repetition) the fewest that reach it. Above 128 rows, blocks of a multiple of
/// 128 rows (at most 512); up to 128 rows, blocks of at least [`MIN_SMALL_BLOCK_ROWS`] rows
/// within [`TARGET_WORKGROUPS`] (all 128 invocations share a block's rows, [`kparts`]).
/// Measured on an H200 (BENCHMARKS.md, Prefill): 4096x4096 (128 workgroups) ran 1.2-1.3x
/// faster at 32 rows in two blocks and 1.6-1.85x at 128 rows in four; 14336x4096 (448
/// workgroups) split in two ran 1.6-2.2x slower at 8-32 rows and, in the blocked kernel,
/// 1.26x slower at 256-512 rows than in one block (the portable kernel 1.2-1.25x faster).
pub(crate) fn m_split(m: usize, wgs: u32, round_up: bool, target: u32) -> (u32, u32) {
    if m <= 128 {
        let fit = (target / wgs.max(1)) as usize;
        let nb = fit.clamp(1, (m / MIN_SMALL_BLOCK_ROWS).max(1));
        let m_block = m.max(1).div_ceil(nb);
        return (m_block as u32, m.max(1).div_ceil(m_block) as u32);
    }
    let want = if round_up {
        target.div_ceil(wgs.max(1))
    } else {
        target / wgs.max(1)
    } as usize;
    let max_blocks = m.div_ceil(128);
    let nb = want.clamp(1, max_blocks);
    let m_block = m.div_ceil(nb).div_ceil(128).max(1) * 128;
    (m_block as u32, m.div_ceil(m_block) as u32)
}

/// Fewest activation rows of a block that [`m_split`] splits off with at most 128 rows.
pub(crate) const MIN_SMALL_BLOCK_ROWS: usize = 16;

/// Groups of 32 lanes per workgroup in the rANS kernels (`G` in the WGSL).
const GROUPS_PER_WG: usize = 4;

/// Activation rows up to which [`Linear::forward_batch`] runs one fused GEMV per row instead of
/// the batched kernel, for split matrices (2 + 2) of more than [`SMALL_LAYER_WEIGHTS`] weights,
/// where the fused GEMV is a subgroup kernel (32-wide subgroups). On an H200 (BENCHMARKS.md,
/// Prefill, twentieth session; row pairs, the chunks `ecq encode --split` writes; the batched
/// kernels with conflict-free slices) 6 GEMVs were 1.11-1.20x faster than one batched dispatch
/// at 14336x4096 and 4096x14336, 8 1.09-1.18x slower. (Was 9, before the slices' bank
/// conflicts were removed.)
pub const GEMV_BATCH_MAX_M: usize = 7;

/// [`GEMV_BATCH_MAX_M`] for split matrices of at most [`SMALL_LAYER_WEIGHTS`] weights: on the
/// same H200 runs 5 GEMVs were 1.10-1.23x faster at 4096x4096 and 1024x4096, 6 1.09x slower
/// and 1.03x faster.
pub const GEMV_BATCH_MAX_M_SMALL: usize = 5;

/// [`GEMV_BATCH_MAX_M`] for window splits ([`SplitMatrix::encode_window`], raw bits 3) of more
/// than [`MID_LAYER_WEIGHTS`] weights: on the same H200 runs (row pairs, the chunks
/// `ecq encode --window` writes) 12 GEMVs took 1.00-1.06x the batched dispatch's time at
/// 14336x4096 and 4096x14336, 8 were 1.21-1.29x faster and 16 1.23-1.27x slower. (Was 15,
/// interpolated, before the slices' bank conflicts were removed.)
pub const GEMV_BATCH_MAX_M_WINDOW: usize = 12;

/// [`GEMV_BATCH_MAX_M_WINDOW`] for window splits of more than [`SMALL_LAYER_WEIGHTS`] and at
/// most [`MID_LAYER_WEIGHTS`] weights (a merged q, k, v projection): at 6144x4096 on the same
/// runs 8 GEMVs were 1.09x faster and 10 1.06x slower.
pub const GEMV_BATCH_MAX_M_WINDOW_MID: usize = 9;

/// [`GEMV_BATCH_MAX_M_WINDOW`] for window splits of at most [`SMALL_LAYER_WEIGHTS`] weights: at
/// 1024x4096 and 4096x4096 on the same runs 6 GEMVs were 1.27-1.30x faster, 8 1.04x slower and
/// as fast. (Was 9.)
pub const GEMV_BATCH_MAX_M_WINDOW_SMALL: usize = 7;

/// The weights (`rows * cols`) up to which a split matrix takes [`GEMV_BATCH_MAX_M_SMALL`] or
/// [`GEMV_BATCH_MAX_M_WINDOW_SMALL`]: 4096x4096.
pub const SMALL_LAYER_WEIGHTS: usize = 1 << 24;

/// The weights up to which a window split takes [`GEMV_BATCH_MAX_M_WINDOW_MID`]: 8192x4096.
pub const MID_LAYER_WEIGHTS: usize = 1 << 25;

/// [`GEMV_BATCH_MAX_M`] for matrices coded whole (two weights per step make their GEMV
/// slower): on the same H200 runs (default chunks), 4 GEMVs were 1.11-1.28x faster than the
/// batched kernel, 5 1.11-1.12x slower up to 4096x4096 and 1.05-1.08x faster on the larger
/// layers, 6 1.12-1.34x slower everywhere.
pub const GEMV_BATCH_MAX_M_WHOLE: usize = 4;

/// The default of [`LinearOptions::gemv_vectors`]: activation vectors per fused GEMV launch
/// where `forward_batch` runs GEMVs on a window split, so `M` rows take launches of
/// `min(M, 16)` vectors. On an H200 (BENCHMARKS.md issue 5, step 87; Llama-3-8B's layer
/// shapes as window splits in row pairs) one launch of 2 vectors was 1.5-1.8x faster than two
/// one-vector launches, one of 16 1.9-5.5x faster than sixteen, and at 16-32 rows launches of
/// 16 were the fastest of 2, 4, 8 and 16 at every shape measured (with the accumulators in a
/// loop; written out since, which made 8 and 16 vectors up to 1.31x faster at four of the five
/// shapes and 1.16-1.4x slower at 6144x4096); the accumulators' registers stop it at 16
/// ([`crate::gpu::MAX_GEMV_VECTORS`]).
pub const GEMV_VECTORS: u32 = 16;

/// Activation rows from which a GEMV launch of a layer with
/// [`LinearOptions::cooperative_matrix`] multiplies on cooperative matrices: the cooperative
/// launch costs about the same for 1 and 16 rows, and on an H200 it overtook the f32 launch
/// on lane order between 8 and 16 rows at Llama-3-8B's shapes (4096x4096: 30.4 µs f32 at 8
/// rows, 48.0 at 16, against 40.1-40.6 cooperative; 1024x4096: 26.9 at 8 against 22.7), for
/// fused and plain layers alike (BENCHMARKS.md issue 5, step 90).
pub const COOP_MIN_ROWS: usize = 12;

/// The default of [`LinearOptions::decode_first_min_rows`] for layers whose launches multiply
/// in f32: calls of at least this many rows decode the layer's weights once and run the plain
/// 4-bit kernels on them. On an H200 (BENCHMARKS.md issue 5, step 96; 32 Llama-3-8B layers
/// of window splits, prepared calls on activations in lane order) decoding a layer cost about
/// one fused GEMV of it (5.8 ms a forward of the 32 layers), and each row then what it costs
/// plain, 0.88x the fused launches' row: 32 rows took 1.04x the fused launches' time, 64
/// rows 0.96x, 128 0.91x and 512 0.89x. With the plain tiled GEMM from 33 rows
/// ([`crate::linear::TILED_GEMM_MIN_ROWS_SUBGROUPS`]) 33 / 36 / 40 rows took 45.1 / 45.1 /
/// 45.3 ms decoding first against 46.1 / 49.8 / 55.1 in fused launches, 32 rows 44.7
/// against 41.2 (step 105). Layers that are not window splits:
/// [`DECODE_FIRST_MIN_ROWS_NOT_WINDOW`].
pub const DECODE_FIRST_MIN_ROWS: usize = 33;

/// [`DECODE_FIRST_MIN_ROWS`] for layers that are not window splits (coded whole, the file
/// format's default [`crate::container::MatrixCoding::Whole`], or split 2 + 2), on GPUs:
/// their fused launches cost several times a plain row a row, so every call of several rows
/// decodes first. One row (`forward`, and `forward_batch` of one) keeps the fused GEMV, the
/// form this library exists to run (devices running the portable kernels:
/// [`DECODE_FIRST_MIN_ROWS_PORTABLE`]).
/// Measured (BENCHMARKS.md issue 5, steps 106-107; ms a forward of 32 Llama-3-8B layers as
/// `ecq encode` writes them, prepared calls, on an H200):
///
/// | rows | 2 | 4 | 8 | 16 | 32 |
/// |---|---|---|---|---|---|
/// | whole, fused launches | 37 | 68 | 107 | 138 | 161 |
/// | whole, decoding first | 23 | 26 | 29 | 36 | 54 |
/// | split 2 + 2, fused launches | 15 | 28 | 51 | 63 | 92 |
/// | split 2 + 2, decoding first | 14 | 17 | 20 | 27 | 45 |
///
/// On cooperative matrices, which only their calls decoding first use, whole layers took
/// 30-32 ms at 12-32 rows against 138-190 in fused launches. A whole layer's one row costs
/// about the same either way there (21.6 ms fused). On lavapipe (2 cores) a whole-coded
/// 1024x4096 layer took 141 / 148 / 177 / 195 ms a call at 2 / 8 / 16 / 31 rows in the
/// fused batched kernel and 76 / 90 / 108 / 138 decoding first, with the plain layer's GEMV
/// a row below 32 rows ([`crate::linear::CPU_GEMV_MAX_ROWS`]); a split one 118 / 127 / 150
/// against 46 / 59 / 79 at 2 / 8 / 16 rows.
pub const DECODE_FIRST_MIN_ROWS_NOT_WINDOW: usize = 2;

/// [`DECODE_FIRST_MIN_ROWS_NOT_WINDOW`] on devices that run the portable kernels: CPU devices
/// (lavapipe, `DeviceType::Cpu`) and GPUs without 32-wide subgroups
/// ([`crate::gpu::PipelineRegistry::subgroups32`]). One row (`forward`) decodes first there
/// too: their fused GEMV is the workgroup kernel (a barrier a decode step), whose multiplies
/// inside the decode loop cost more than the decode kernel's stores and the plain layer's
/// one-vector GEMV on the decoded weights after it. Window splits, and split 2 + 2 matrices on
/// GPUs, whose fused GEMV runs on the lanes kernel (no barrier a step) keep it for one row:
/// [`DECODE_FIRST_MIN_ROWS_LANES`].
/// * On lavapipe (2 cores; BENCHMARKS.md issue 5, thirty-third session) a token of a
///   1024x4096 and a 4096x4096 layer took 1245 ms decoding first against 1965 fused coded
///   whole, and 778 against 1870 split 2 + 2; window splits 566 against 1099 (step 118).
/// * On an H200 running the portable kernels only (`GpuContext::without_subgroups`, step 119)
///   a token of 32 Llama-3-8B layers took 46.1 ms decoding first against 61.4 fused (window
///   splits in row pairs) and 147.3 against 187.6 (coded whole).
///
/// GPUs with 32-wide subgroups keep the fused GEMV for one row: there a whole layer's token
/// costs about the same either way alone (21.4 against ~23 ms for 32 Llama-3-8B layers on an
/// H200), and the fused GEMV reads the coded bytes only.
///
/// Window splits follow these two rules wherever the blocked batched kernel does not run them
/// (no 32-wide subgroups: they then decode in the workgroup kernel, `rans_decode.wgsl`): their
/// batched calls are fused GEMVs a row. On lavapipe (step 118) a 1024x4096 and a 4096x4096
/// window layer in row pairs took 566 / 557 / 1117 ms at 1 / 2 / 8 rows decoding first
/// against 1099 / 2183 / 8706 in fused GEMVs.
pub const DECODE_FIRST_MIN_ROWS_PORTABLE: usize = 1;

/// [`DECODE_FIRST_MIN_ROWS_PORTABLE`] for window splits whose fused GEMV runs on the lanes
/// kernel (`rans_gemv_lanes.wgsl`, [`EntropyCodedLinear::lanes_gemv_width`]: devices without
/// 32-wide subgroups that run the lanes kernels, and lavapipe), and for split 2 + 2 matrices
/// whose fused GEMV runs there on a GPU (not lavapipe; layers coded whole decode first:
/// BENCHMARKS.md issue 5, step 136): one row keeps the fused GEMV, calls of several rows
/// decode first. A token of 32 Llama-3-8B window layers in row pairs
/// took 8.0 ms in the lanes fused GEMV against 10.3 decoding first on an H200 running the
/// lanes kernels at W = 32 (`ECQ_KERNELS=lanes:32`), 11.0 against 13.8 at W = 16 and 12.3
/// against 14.9 at W = 8; on lavapipe a 1024x4096 and a 4096x4096 window layer took 87-104
/// ms against 127-129 (BENCHMARKS.md issue 5, step 133). Two rows in two fused GEMVs would
/// cost about twice one, more than the decode and two plain rows.
pub const DECODE_FIRST_MIN_ROWS_LANES: usize = 2;

/// [`DECODE_FIRST_MIN_ROWS`] for window splits on cooperative matrices
/// ([`LinearOptions::cooperative_matrix`]): from the fused launches' second launch of 16
/// rows, as the plain layers' cooperative GEMM ([`crate::linear::COOP_GEMM_MIN_ROWS`]). On an
/// H200 (BENCHMARKS.md issue 5, step 104; 32 Llama-3-8B layers of window splits, prepared
/// calls on activations in lane order) 17 / 24 / 32 rows took 19.3 / 19.5 / 20.0 ms a
/// forward decoding first against 21.3 / 29.6 / 29.7 in fused launches; 16 rows 16.8 in
/// one fused launch.
pub const DECODE_FIRST_MIN_ROWS_COOP: usize = 17;

/// [`GEMV_BATCH_MAX_M`] for window splits whose fused GEMV multiplies several vectors a launch
/// ([`EntropyCodedLinear::gemv_vectors`] above 1) in column order
/// ([`LinearOptions::column_order_activations`]; lane order:
/// [`GEMV_BATCH_MAX_M_LANE_ORDER`]), of at most [`SMALL_LAYER_WEIGHTS`] or more
/// than [`MID_LAYER_WEIGHTS`] weights: on an H200 (BENCHMARKS.md issue 5, step 87; row pairs,
/// the chunks `ecq encode --window --row-pairs` writes) launches of 16 vectors took 0.53-0.89x
/// the batched kernel's time at 48 rows (1024x4096, 4096x4096, 14336x4096, 4096x14336) and
/// 0.84-1.06x at 64 (slower at two of the four shapes).
pub const GEMV_BATCH_MAX_M_WINDOW_VECTORS: usize = 48;

/// [`GEMV_BATCH_MAX_M_WINDOW_VECTORS`] for window splits of more than [`SMALL_LAYER_WEIGHTS`]
/// and at most [`MID_LAYER_WEIGHTS`] weights (a merged q, k, v projection): at 6144x4096 on the
/// same runs launches of 16 vectors took 0.81x the batched kernel's time at 16 rows and 1.13x
/// at 32.
pub const GEMV_BATCH_MAX_M_WINDOW_VECTORS_MID: usize = 16;

/// [`GEMV_BATCH_MAX_M_WINDOW_VECTORS`] for layers whose fused GEMVs take activations in lane
/// order ([`EntropyCodedLinear::lane_order`]) with more than [`LANE_ORDER_SMALL_WEIGHTS`]
/// weights: every row count. On an H200 (BENCHMARKS.md issue 5, step 88; Prefill,
/// twenty-second session) launches of 16 vectors took 0.42-0.67x the batched kernel's time at
/// 64-128 rows and 0.44-0.55x at 192-512 rows at 4096x4096, 6144x4096, 14336x4096 and
/// 4096x14336, and both scale linearly in rows beyond (the batched kernel runs blocks of
/// [`MAX_M_PER_DISPATCH`]); a threshold of 512 made 2048-row calls at 14336x4096 take 54-63
/// ms on the batched kernel (step 91).
pub const GEMV_BATCH_MAX_M_LANE_ORDER: usize = usize::MAX;

/// [`GEMV_BATCH_MAX_M_LANE_ORDER`] for layers of at most [`LANE_ORDER_SMALL_WEIGHTS`]
/// weights: at 1024x4096 launches of 16 took 0.96x the batched kernel's time at 96 rows,
/// 1.17x at 128 and 1.08-1.28x at 256-512 (0.84x at 192).
pub const GEMV_BATCH_MAX_M_LANE_ORDER_SMALL: usize = 96;

/// The weights up to which a lane-order layer takes [`GEMV_BATCH_MAX_M_LANE_ORDER_SMALL`]:
/// 1024x4096.
pub const LANE_ORDER_SMALL_WEIGHTS: usize = 1 << 22;

/// The default of [`LinearOptions::gemv_batch_max_m`] for a window split of `weights` weights
/// whose fused GEMV multiplies several vectors a launch, on activations in lane order or not.
pub(crate) fn default_gemv_many_batch_max_m(weights: usize, lane_order: bool) -> usize {
    match lane_order {
        true if weights <= LANE_ORDER_SMALL_WEIGHTS => GEMV_BATCH_MAX_M_LANE_ORDER_SMALL,
        true => GEMV_BATCH_MAX_M_LANE_ORDER,
        false if weights > SMALL_LAYER_WEIGHTS && weights <= MID_LAYER_WEIGHTS => {
            GEMV_BATCH_MAX_M_WINDOW_VECTORS_MID
        }
        false => GEMV_BATCH_MAX_M_WINDOW_VECTORS,
    }
}

/// Whether one row of a layer whose fused GEMV runs on the lanes kernel
/// ([`EntropyCodedLinear::lanes_gemv_width`]) keeps that GEMV by default
/// ([`DECODE_FIRST_MIN_ROWS_LANES`]) instead of decoding first: window splits everywhere, split
/// 2 + 2 matrices on GPUs, not layers coded whole. Measured per token (BENCHMARKS.md issue 5,
/// steps 133 and 136): 32 Llama-3-8B layers on an H200 running the lanes kernels at W = 32 / 8
/// took 8.0 / 12.6 ms fused against 10.3 / 14.9 decoding first (window splits), 13.2 / 18.5
/// against 14.8 / 25.8 (split), 34.9 / 89.5 against 30.0 / 79.4 (whole); on lavapipe a
/// 1024x4096 and a 4096x4096 layer took 87-104 ms fused against 127-129 (window splits),
/// 168-171 against 152-154 (split) and 222-225 against 199-205 (whole).
fn lanes_gemv_one_row(dev: &LinearDevice, window: bool, low_bits: u32) -> bool {
    window || (low_bits == 2 && !dev.gpu().registry().cpu_device())
}

/// The default of [`LinearOptions::gemv_batch_max_m`] for a layer coded in byte symbols (whole
/// or split 2 + 2) whose fused GEMV runs on the lanes kernel (`rans_gemv_lanes.wgsl`,
/// [`EntropyCodedLinear::lanes_gemv_width`]): one row, the rows below
/// [`DECODE_FIRST_MIN_ROWS_LANES`], where such layers keep it by default. The batched kernel
/// those devices run otherwise (`rans_gemm.wgsl`, a barrier a decode step) took 9-10x the
/// lanes GEMV's time for one row on lavapipe (BENCHMARKS.md issue 5, step 136).
pub const GEMV_BATCH_MAX_M_LANES: usize = DECODE_FIRST_MIN_ROWS_LANES - 1;

/// The default of [`LinearOptions::gemv_batch_max_m`] for a layer of `weights` weights with
/// `low_bits` raw low bits (0: coded whole), on an adapter whose fused GEMV does (`subgroups32`)
/// or does not run as a 32-wide subgroup kernel.
pub(crate) fn default_gemv_batch_max_m(subgroups32: bool, low_bits: u32, weights: usize) -> usize {
    match (subgroups32, low_bits) {
        (false, _) => 0,
        (true, 0) => GEMV_BATCH_MAX_M_WHOLE,
        (true, 3) if weights <= SMALL_LAYER_WEIGHTS => GEMV_BATCH_MAX_M_WINDOW_SMALL,
        (true, 3) if weights <= MID_LAYER_WEIGHTS => GEMV_BATCH_MAX_M_WINDOW_MID,
        (true, 3) => GEMV_BATCH_MAX_M_WINDOW,
        (true, _) if weights <= SMALL_LAYER_WEIGHTS => GEMV_BATCH_MAX_M_SMALL,
        (true, _) => GEMV_BATCH_MAX_M,
    }
}

/// Upload options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinearOptions {
    /// Largest buffer to create, in bytes; `None` (default) uses the device limits
    /// ([`LinearDevice::max_buffer_bytes`]). A smaller value forces the split of a matrix into
    /// row bands (tests use it).
    pub max_buffer_bytes: Option<u64>,
    /// Activation rows up to which `forward_batch` runs fused GEMVs (a launch per row, or per
    /// [`Self::gemv_vectors`] rows) instead of the batched kernel; `None` (default):
    /// [`GEMV_BATCH_MAX_M`] (split matrices of more than [`SMALL_LAYER_WEIGHTS`] weights),
    /// [`GEMV_BATCH_MAX_M_SMALL`] (smaller split ones), [`GEMV_BATCH_MAX_M_WINDOW_VECTORS`] or
    /// [`GEMV_BATCH_MAX_M_WINDOW_VECTORS_MID`] (window splits whose GEMV launches take several
    /// vectors, [`EntropyCodedLinear::gemv_vectors`]), else [`GEMV_BATCH_MAX_M_WINDOW`],
    /// [`GEMV_BATCH_MAX_M_WINDOW_MID`] or [`GEMV_BATCH_MAX_M_WINDOW_SMALL`] (window splits by
    /// size) or [`GEMV_BATCH_MAX_M_WHOLE`] where 32-wide subgroups run the fused GEMV, else 0
    /// (the workgroup GEMV is slower than the batched kernel there). Calls of
    /// [`Self::decode_first_min_rows`] rows or more decode first whatever this says.
    pub gemv_batch_max_m: Option<usize>,
    /// Run `forward_batch` on the portable `rans_gemm.wgsl` even where the blocked subgroup
    /// build (`rans_gemm_blocked.wgsl`) could run (benchmarks and tests compare the two).
    pub portable_gemm: bool,
    /// How to store the scales and biases on the GPU; `None` (default): the narrowest exact
    /// format ([`SideFormat::exact_for`]: 16-bit for MLX's f16 and bf16 values, half the
    /// memory of f32 pairs). A format in which a value is not exact is an error.
    pub side: Option<SideFormat>,
    /// Let the blocked fused GEMV and the workgroup kernels (fused GEMV, batched and decode:
    /// the ones devices without 32-wide subgroups run) build each tile's decode table from the
    /// frequencies in every workgroup, as before step 65 of BENCHMARKS.md (issue 5), instead of
    /// reading the table the host builds at upload: saves that GPU memory (2.5 KiB a tile at
    /// 11 probability bits, about 0.02 bits/weight with the encoder's default tiles,
    /// [`EntropyCodedLinear::table_bytes`]) for GEMVs 1.02-1.09x slower on an H200. Same
    /// results either way.
    pub tables_built_in_kernel: bool,
    /// Run the fused GEMV (`forward`, and `forward_batch` up to
    /// [`Self::gemv_batch_max_m`] rows) on activations quantized to 8 bits on the GPU, 16 to a
    /// scale ([`crate::gpu::quantize_x8_dispatch`], then
    /// [`crate::gpu::GpuCodedMatrix::gemv_x8_dispatch`]'s kernel): 1.05-1.34x faster fused
    /// GEMVs on an H200 (BENCHMARKS.md issue 5, step 69), **approximate**: off the f32 result by
    /// at most `|scale| * d / 2 * sum(q)` per 16-weight piece and output (`d` = the piece's
    /// largest activation / 127). Takes effect only for window splits on the blocked fused
    /// kernel (32-wide subgroups); other layers, and the batched kernel, keep f32 activations.
    /// [`EntropyCodedLinear::x8_activations`] says which.
    pub x8_activations: bool,
    /// Groups of 32 lanes per chunk in the fused GEMV (`forward`, and `forward_batch` run as
    /// GEMVs): 0 or 1 (the default) one; 2 or 4 as
    /// [`crate::gpu::GpuCodedMatrix::set_chunk_subgroups`] describes (each group decodes the
    /// whole chunk and multiplies a share of its blocks). On an H100 and an H200 two paid for
    /// matrices of up to 512 chunks (1.10-1.15x) and lost 1.4-1.5x from 2048, so a model
    /// should bound it with [`Self::chunk_subgroups_max_chunks`]. Takes effect only for window
    /// splits with chunks of at most 4 coded rows on the blocked fused kernel (32-wide
    /// subgroups); other layers keep one. [`EntropyCodedLinear::chunk_subgroups`] says which.
    /// Other counts are an error at upload.
    pub chunk_subgroups: u32,
    /// Layers of more chunks than this ([`EntropyCodedLinear::n_chunks`]) keep one group a
    /// chunk whatever [`Self::chunk_subgroups`] asks; `None`: no limit. About four chunks per
    /// SM of the GPU suits two groups: 512 on an H100 or H200 (132 SMs).
    pub chunk_subgroups_max_chunks: Option<usize>,
    /// Workgroups the batched kernel (`forward_batch` above [`Self::gemv_batch_max_m`] rows)
    /// aims for when the matrix alone gives fewer, by splitting the activation rows into blocks
    /// that each decode the chunks again; `None` (default): [`TARGET_WORKGROUPS`]. 0 is an
    /// error at upload. Benchmarks sweep it (`examples/bench_prefill.rs --target-workgroups`).
    pub gemm_target_workgroups: Option<u32>,
    /// Activation vectors one fused GEMV launch multiplies where `forward_batch` runs GEMVs
    /// (window splits on the blocked fused kernel with f32 activations and one group of 32
    /// lanes a chunk: [`crate::gpu::GpuCodedMatrix::gemv_many_dispatch`], each chunk decoded
    /// once for all of them); `None` (default): [`GEMV_VECTORS`]. 1 runs one launch a row, as
    /// other layers do. Counts outside 1..=[`crate::gpu::MAX_GEMV_VECTORS`] are an error at
    /// upload. [`EntropyCodedLinear::gemv_vectors`] says what the layer runs.
    pub gemv_vectors: Option<u32>,
    /// Keep the fused GEMV's activations in column order. By default, window splits in row
    /// pairs on the blocked fused kernel with f32 activations take them in lane order
    /// ([`crate::gpu::x_lane_order`], permuted on the host as they are uploaded, so for
    /// free), which reads each block's activations in whole 128-byte lines: on an H200 one
    /// vector ran 1.05-1.10x faster at Llama-3-8B's shapes and 16 vectors a launch 1.7-2.0x
    /// (BENCHMARKS.md issue 5, step 88). Same results either way.
    /// [`EntropyCodedLinear::lane_order`] says what the layer runs.
    pub column_order_activations: bool,
    /// Let `forward_batch`'s GEMV launches of at least [`COOP_MIN_ROWS`] rows multiply on
    /// cooperative matrices (tensor cores; the kernel of
    /// [`crate::gpu::GpuCodedMatrix::gemv_coop_dispatch`]) where the device has them (a
    /// [`LinearDevice`] made from [`crate::gpu::GpuContext::with_cooperative_matrix`]) and
    /// the layer's launches take several rows with decode tables in memory (window splits in
    /// row pairs of inputs a multiple of 512, MLX groups of 64 or 128, f32 activations, one
    /// group a chunk): on an H200 a launch of 16 rows ran 1.22-1.52x faster (BENCHMARKS.md
    /// issue 5, step 90), and `forward_batch` of a layer of more than
    /// [`LANE_ORDER_SMALL_WEIGHTS`] weights then runs launches at every row count (submissions
    /// of [`GEMV_SUBMIT_ROWS`]) unless [`Self::gemv_batch_max_m`] says otherwise: at 512 rows
    /// they took 0.32-0.37x the batched kernel's GPU time there. Calls of
    /// [`Self::decode_first_min_rows`] rows or more decode first and run the plain layer's
    /// cooperative launches, from [`Self::coop_gemm_min_rows`] rows its cooperative GEMM,
    /// wherever those take the weights (4 bits, inputs a multiple of 512, MLX groups of 64
    /// or 128), also for layers whose fused launches cannot (coded whole or split 2 + 2;
    /// [`EntropyCodedLinear::decode_first_cooperative_matrix`]).
    /// **Approximate**: the activations are rounded to f16 there (exact for f16 and bf16
    /// ones; 2^-11 of the sum of the terms' magnitudes at most otherwise; in the GEMM the
    /// dequantized weights as well, 2^-10 in all).
    /// [`EntropyCodedLinear::cooperative_matrix`] says whether the layer does.
    pub cooperative_matrix: bool,
    /// Calls of at least this many activation rows (`forward_batch`, recorded calls) decode
    /// the layer's weights once on the GPU into plain MLX words (the kernel of
    /// [`crate::gpu::GpuCodedMatrix::decode_dispatch`], into a buffer the device keeps) and run
    /// the plain layer's kernels on them ([`super::QuantizedLinear`]'s launches, on cooperative
    /// matrices where [`Self::cooperative_matrix`] takes effect): the outputs are the plain
    /// layer's on the same weights, bit for bit. The decode costs about one fused GEMV's
    /// time, after which each row costs what it costs plain, so it pays for calls of many
    /// rows. `None` (default): [`DECODE_FIRST_MIN_ROWS_NOT_WINDOW`] for layers that are not
    /// window splits ([`DECODE_FIRST_MIN_ROWS_PORTABLE`] on CPU devices and GPUs without
    /// 32-wide subgroups); for window
    /// splits [`DECODE_FIRST_MIN_ROWS_COOP`] where they multiply on cooperative matrices,
    /// else [`DECODE_FIRST_MIN_ROWS`] where the blocked batched kernel runs them (32-wide
    /// subgroups), else [`DECODE_FIRST_MIN_ROWS_LANES`] where their fused GEMV runs on the
    /// lanes kernel (that of split 2 + 2 layers too, on GPUs), else as the others;
    /// `Some(usize::MAX)` never. Takes
    /// effect for layers in one row band whose weights a decode kernel runs on this device
    /// and the plain kernels take (2, 4 or 8 bits; a window split in coded rows of whole
    /// 1024-weight blocks); [`EntropyCodedLinear::decode_first_min_rows`] says what the
    /// layer does. Costs a buffer of the largest such layer's plain weights while calls hold
    /// it ([`LinearDevice::release_call_buffers`] frees it); recorded calls can take several
    /// in turn ([`LinearDevice::set_decoded_buffers`]), so that a call's decode runs beside
    /// the call before it. Corrupt streams are reported as on the fused path.
    pub decode_first_min_rows: Option<usize>,
    /// The rows from which calls decoding first ([`Self::decode_first_min_rows`]) on
    /// cooperative matrices run the plain cooperative GEMM
    /// ([`super::QuantizedLinear::set_coop_gemm_min_rows`]; `None`: its default).
    pub coop_gemm_min_rows: Option<usize>,
    /// The rows from which calls decoding first ([`Self::decode_first_min_rows`]) that run
    /// no cooperative kernel run the plain tiled f32 GEMM
    /// ([`super::QuantizedLinear::set_tiled_gemm_min_rows`]; `None`: its default).
    pub tiled_gemm_min_rows: Option<usize>,
    /// Upload every layer of a file in the form the file stores it. By default
    /// [`super::EntropyCodedModel`] uploads each 4-bit layer stored whole (`ecq encode`'s
    /// default, the smallest files) or split 2 + 2 as a window split in row pairs instead,
    /// where the shape allows it (an even number of outputs and inputs a multiple of 512, else
    /// rows with inputs a multiple of 1024: [`crate::container::window_split_of`]), decoded
    /// and re-coded on the host at load time: the same weights, in the form the GPU's kernels
    /// run fastest. On an H200 a token of 32 Llama-3-8B layers stored whole took 5.4 ms that
    /// way instead of 20.6, for 0.13 s of the host's 16 cores a layer at load and 3.4% more
    /// GPU memory (3.881 against 3.753 coded bits/weight; BENCHMARKS.md, issue 5, steps
    /// 126-127).
    /// Set this to keep the load time and memory, or to run the stored form.
    /// [`EntropyCodedLinear::upload`] always takes the form it is given.
    pub keep_stored_form: bool,
}

/// A borrowed coded matrix with its quantization parameters: the coded tensors as
/// little-endian bytes (as stored in the safetensors file, so they can be borrowed from a
/// memory map), geometry from the header.
///
/// A split matrix ([`SplitMatrix`], docs/FORMAT.md section 7) is described by its coded part
/// (`rows`, `cols`, `bits`, ... as in that part's header) plus `low_bits`, `low` and
/// `row_pairs`; with `row_pairs` the layer has `2 rows` outputs and `cols / 2` inputs.
#[derive(Debug, Clone, Copy)]
pub struct CodedLayerRef<'a> {
    /// `R` coded rows (outputs, or pairs of outputs with `row_pairs`).
    pub rows: usize,
    /// `K` coded weights per row (inputs, or two rows' inputs with `row_pairs`).
    pub cols: usize,
    /// Coded bits per weight (the high bits of a split matrix).
    pub bits: u32,
    /// Weights per symbol.
    pub weights_per_symbol: u32,
    /// Probability precision `n` (the kernels need `n <= 11`).
    pub precision: u32,
    /// Rows per chunk.
    pub chunk_rows: usize,
    /// Chunks per tile.
    pub tile_chunks: usize,
    /// `n_tiles * A` u16 frequencies, little-endian bytes.
    pub freqs: &'a [u8],
    /// `n_chunks * 32` u32 states, little-endian bytes.
    pub states: &'a [u8],
    /// `n_chunks + 1` u32 word offsets, little-endian bytes.
    pub offsets: &'a [u8],
    /// The u16 word stream, little-endian bytes.
    pub words: &'a [u8],
    /// MLX group size of the scales and biases.
    pub group_size: usize,
    /// Scales, `rows * cols / group_size`.
    pub scales: &'a [f32],
    /// Biases, `rows * cols / group_size`.
    pub biases: &'a [f32],
    /// The layer's additive bias (one value per output), if any.
    pub bias: Option<&'a [f32]>,
    /// Raw low bits per weight of a split matrix (0: coded whole; the GPU kernels take 2,
    /// beside 2 coded bits four weights to a symbol).
    pub low_bits: u32,
    /// A split matrix's raw low bits, MLX-packed row-major over the layer's rows, as
    /// little-endian bytes (empty when `low_bits` is 0).
    pub low: &'a [u8],
    /// The coded symbols are in [`SplitOrder::RowPairs`] order.
    pub row_pairs: bool,
    /// The window start of a window split ([`SplitMatrix::encode_window`]: `bits` 1, eight
    /// weights per symbol, `low_bits` 3 raw bits in coded order); `None` otherwise.
    pub window: Option<u8>,
}

impl<'a> CodedLayerRef<'a> {
    /// From an [`EncodedMatrix`] and its scales and biases.
    pub fn from_encoded(
        enc: &'a EncodedMatrix,
        group_size: usize,
        scales: &'a [f32],
        biases: &'a [f32],
        bias: Option<&'a [f32]>,
    ) -> Self {
        CodedLayerRef {
            rows: enc.rows(),
            cols: enc.cols(),
            bits: enc.bits(),
            weights_per_symbol: enc.weights_per_symbol(),
            precision: enc.precision(),
            chunk_rows: enc.chunk_rows(),
            tile_chunks: enc.tile_chunks(),
            freqs: bytemuck::cast_slice(enc.freqs()),
            states: bytemuck::cast_slice(enc.states()),
            offsets: bytemuck::cast_slice(enc.offsets()),
            words: bytemuck::cast_slice(enc.words()),
            group_size,
            scales,
            biases,
            bias,
            low_bits: 0,
            low: &[],
            row_pairs: false,
            window: None,
        }
    }

    /// From a [`SplitMatrix`] and the scales and biases of its matrix. (The low bits'
    /// checksum is not verified here: see [`SplitMatrix::verify_checksums`].)
    pub fn from_split(
        m: &'a SplitMatrix,
        group_size: usize,
        scales: &'a [f32],
        biases: &'a [f32],
        bias: Option<&'a [f32]>,
    ) -> Self {
        CodedLayerRef {
            low_bits: m.low_bits(),
            low: bytemuck::cast_slice(m.low()),
            row_pairs: m.order() == SplitOrder::RowPairs,
            window: m.window(),
            ..Self::from_encoded(m.high(), group_size, scales, biases, bias)
        }
    }

    /// Matrix rows per coded row: 2 with row pairs, else 1.
    fn rows_per_coded_row(&self) -> usize {
        1 + self.row_pairs as usize
    }

    /// The layer's outputs.
    fn out_features(&self) -> usize {
        self.rows * self.rows_per_coded_row()
    }

    /// The layer's inputs.
    fn in_features(&self) -> usize {
        self.cols / self.rows_per_coded_row()
    }

    fn n_chunks(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            self.rows.div_ceil(self.chunk_rows.max(1))
        }
    }

    fn alphabet(&self) -> usize {
        1 << (self.bits * self.weights_per_symbol)
    }

    /// Checks geometry and part sizes; returns the word offsets.
    fn check(&self, layer: &str) -> Result<Vec<u32>, LinearError> {
        let bad = |reason: String| LinearError::InvalidLayer {
            layer: layer.into(),
            reason,
        };
        let unsupported = |reason: String| LinearError::Unsupported {
            layer: layer.into(),
            reason,
        };
        let (b, w) = (self.bits, self.weights_per_symbol);
        let widths: &[u32] = if self.window.is_some() {
            &[8]
        } else {
            &[1, 2, 4]
        };
        if !(1..=8).contains(&b) || !widths.contains(&w) || b * w > 8 {
            return Err(bad(format!("bits {b} with {w} weights per symbol")));
        }
        if !self.cols.is_multiple_of(w as usize) || self.chunk_rows == 0 || self.tile_chunks == 0 {
            return Err(bad(format!(
                "cols {} / weights per symbol {w} / chunk_rows {} / tile_chunks {}",
                self.cols, self.chunk_rows, self.tile_chunks
            )));
        }
        if !(8..=crate::rans::GPU_MAX_PRECISION).contains(&self.precision) {
            return Err(unsupported(format!(
                "precision {} (the GPU kernels need 8..={})",
                self.precision,
                crate::rans::GPU_MAX_PRECISION
            )));
        }
        let nc = self.n_chunks();
        let nt = nc.div_ceil(self.tile_chunks);
        let want = [
            ("ecq_freqs", self.freqs.len(), nt * self.alphabet() * 2),
            ("ecq_states", self.states.len(), nc * 32 * 4),
            ("ecq_offsets", self.offsets.len(), (nc + 1) * 4),
        ];
        for (name, got, exp) in want {
            if got != exp && !(name == "ecq_offsets" && nc == 0 && got <= 4) {
                return Err(bad(format!(
                    "{name} has {got} bytes, the header implies {exp}"
                )));
            }
        }
        if !self.words.len().is_multiple_of(2) {
            return Err(bad(format!(
                "ecq_words has an odd number of bytes ({})",
                self.words.len()
            )));
        }
        if let Some(start) = self.window {
            crate::gpu::check_window(b, w, start.into()).map_err(|e| unsupported(e.to_string()))?;
            // raw words in coded order: three per 32 coded weights
            let low_bytes = self.rows as u64 * self.cols as u64 * 3 / 8;
            let run = 2
                * crate::rans::WINDOW_PAIR_RUN_SYMBOLS
                * crate::rans::WINDOW_FLAGS_PER_SYMBOL as usize;
            if self.low_bits != 3
                || !self.cols.is_multiple_of(32)
                || (self.row_pairs && !self.cols.is_multiple_of(run))
                || self.low.len() as u64 != low_bytes
            {
                return Err(bad(format!(
                    "a window split of {} coded rows of {} weights needs 3 raw bits ({} given) \
                     in {low_bytes} bytes ({} given), rows of whole 32-weight words{}",
                    self.rows,
                    self.cols,
                    self.low_bits,
                    self.low.len(),
                    if self.row_pairs {
                        " and whole pairs of 16-weight runs"
                    } else {
                        ""
                    }
                )));
            }
        } else if self.low_bits != 0 || self.row_pairs {
            crate::gpu::check_low_bits(self.low_bits, b, w).map_err(|e| match e {
                GpuError::Unsupported(reason) => unsupported(reason),
                e => unsupported(e.to_string()),
            })?;
            if self.row_pairs {
                crate::gpu::check_row_pair_cols(self.cols, w).map_err(bad)?;
            }
            let low_bytes = self.rows as u64 * self.cols as u64 * self.low_bits as u64 / 8;
            if !(self.in_features() * self.low_bits as usize).is_multiple_of(32)
                || self.low.len() as u64 != low_bytes
            {
                return Err(bad(format!(
                    "ecq_low has {} bytes, {} x {} weights of {} low bits need {low_bytes} in \
                     whole words per row",
                    self.low.len(),
                    self.out_features(),
                    self.in_features(),
                    self.low_bits
                )));
            }
        } else if !self.low.is_empty() {
            return Err(bad("low bits given for a matrix coded whole".into()));
        }
        let gs = self.group_size;
        let k = self.in_features();
        if gs == 0 || !k.is_multiple_of(gs) || !gs.is_multiple_of(w as usize) {
            return Err(bad(format!(
                "group size {gs} must divide cols {k} and be a multiple of w = {w}"
            )));
        }
        let groups = self.out_features() * (k / gs);
        if self.scales.len() != groups || self.biases.len() != groups {
            return Err(bad(format!(
                "scales/biases have {}/{} values, expected {groups}",
                self.scales.len(),
                self.biases.len()
            )));
        }
        if let Some(bias) = self.bias {
            if bias.len() != self.out_features() {
                return Err(bad(format!(
                    "bias has {} values, the layer has {} outputs",
                    bias.len(),
                    self.out_features()
                )));
            }
        }
        if u32::try_from(self.rows.saturating_mul(self.cols)).is_err() {
            return Err(unsupported(format!(
                "{} x {} weights (the kernels index weights with u32)",
                self.rows, self.cols
            )));
        }
        let offsets: Vec<u32> = self
            .offsets
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let n_words = (self.words.len() / 2) as u64;
        if offsets.first().is_some_and(|&o| o != 0)
            || offsets.windows(2).any(|p| p[1] < p[0])
            || offsets.last().is_some_and(|&o| o as u64 != n_words)
        {
            return Err(bad(format!(
                "ecq_offsets are not increasing from 0 to the {n_words} words of the stream"
            )));
        }
        Ok(offsets)
    }
}

/// The specialisation of `rans_gemm_blocked.wgsl` for layer `m` (weights per symbol, coded
/// bits, probability bits), or `None` where it cannot run it: adapters without 32-wide
/// subgroups, more than 11 probability bits, rows that are not whole steps or not a whole
/// number of 256-weight slices (`T` a multiple of `8 / w`; of 4 for a window split), or when
/// `opts` asks for the portable kernel.
fn blocked_gemm_layout(
    dev: &LinearDevice,
    m: &CodedLayerRef<'_>,
    opts: &LinearOptions,
) -> Option<(u32, u32, u32)> {
    let w = m.weights_per_symbol;
    let t = (m.cols / w as usize).div_ceil(32);
    // (a window split: 4-step blocks of eight-weight symbols)
    let block = if m.window.is_some() {
        4
    } else {
        8 / w as usize
    };
    let widths: &[u32] = if m.window.is_some() { &[8] } else { &[1, 2, 4] };
    let runs = dev.gpu().registry().subgroups32()
        && !opts.portable_gemm
        && m.precision <= 11
        && widths.contains(&w)
        && m.cols == 32 * w as usize * t
        && t.is_multiple_of(block);
    runs.then_some((w, m.bits, m.precision))
}

/// Uniform block of `rans_gemm.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    rows: u32,
    cols: u32,
    bits: u32,
    wps: u32,
    prec: u32,
    chunk_rows: u32,
    tile_chunks: u32,
    n_chunks: u32,
    n_tiles: u32,
    syms_per_row: u32,
    steps_per_row: u32,
    alphabet: u32,
    n_words: u32,
    wg_per_tile: u32,
    total_wg: u32,
    wg_x: u32,
    group_size: u32,
    groups_per_row: u32,
    m: u32,
    xs4: u32,
    y_stride: u32,
    row_base: u32,
    m_block: u32,
    total_grid: u32,
    /// u32 index in `words` where a split matrix's raw low bits start.
    low_base: u32,
    /// Raw low bits per weight (0: coded whole).
    low_bits: u32,
    /// Invocations sharing an activation row ([`kparts`]).
    kparts: u32,
    _pad: u32,
}

/// One row band of whole tiles, with its own buffers.
#[derive(Debug)]
struct Band {
    /// First output (matrix row) of the band.
    row0: usize,
    /// Outputs of the band.
    rows: usize,
    chunk0: usize,
    n_chunks: usize,
    freqs: wgpu::Buffer,
    /// The band's tiles' decode tables built on the host (`crate::gpu::slot_table`), which the
    /// blocked fused GEMV, the decode of a window split and, without 32-wide subgroups, the
    /// workgroup decode read instead of building them (`None` where none of those runs the
    /// band, [`EntropyCodedLinear::table_bytes`]).
    tables: Option<wgpu::Buffer>,
    states: wgpu::Buffer,
    offsets: wgpu::Buffer,
    words: wgpu::Buffer,
    errors: wgpu::Buffer,
    /// The error flags of recorded calls ([`super::GpuLinear`]), kept until
    /// [`super::GpuLinear::check_recorded`] (`errors` is cleared by every host call).
    record_errors: wgpu::Buffer,
    /// The cooperative launches' parameters and uniform buffer, made on first use.
    coop: std::sync::OnceLock<(CodedParams, wgpu::Buffer)>,
    sb: wgpu::Buffer,
    gemv: CodedParams,
    gemm: GemmParams,
    gemv_uniform: wgpu::Buffer,
    /// The decode kernels' parameters (`gemv` with one group of 32 lanes a chunk) and their
    /// uniform buffer, made on first use.
    decode: CodedParams,
    decode_uniform: std::sync::OnceLock<wgpu::Buffer>,
}

impl Band {
    /// The error flags the band's launches set: those of recorded calls where `recorded`.
    fn errors(&self, recorded: bool) -> &wgpu::Buffer {
        if recorded {
            &self.record_errors
        } else {
            &self.errors
        }
    }

    /// What the decode kernels bind of the band (scales and biases in `side`), setting the
    /// error flags of recorded calls where `recorded`.
    fn decode_source(&self, side: SideFormat, recorded: bool) -> DecodeSource<'_> {
        DecodeSource {
            params: &self.decode,
            side,
            freqs: &self.freqs,
            tables: self.tables.as_ref(),
            states: &self.states,
            offsets: &self.offsets,
            words: &self.words,
            errors: self.errors(recorded),
        }
    }
}

/// One recorded kernel launch of a linear layer (see [`EntropyCodedLinear::batch_dispatches`]):
/// the GPU module's launch, recorded into any compute pass with `record`.
pub type LinearDispatch = crate::gpu::Dispatch;

/// A linear layer whose weights stay entropy-coded on the GPU (uploaded once, resident).
/// One row, and calls of fewer than [`Self::decode_first_min_rows`] rows, run the fused
/// kernels, which decode the weights as they multiply; calls of more decode the weights once
/// into a kept buffer and multiply them with the plain 4-bit kernels
/// ([`LinearOptions::decode_first_min_rows`]: by default from 2 rows for layers coded whole
/// or split 2 + 2, from 1 on CPU devices and GPUs without 32-wide subgroups, from 33 for
/// window splits where the blocked batched kernel runs them, 17 on cooperative matrices).
///
/// ```no_run
/// use ecq::linear::{CodedLayerRef, EntropyCodedLinear, Linear, LinearDevice, LinearOptions};
/// use ecq::quant::{quantize_affine, AffineParams};
/// use ecq::dtype::FloatDType;
/// use ecq::rans::{encode, EncodeOptions};
///
/// let w: Vec<f32> = (0..64 * 256).map(|i| ((i * 7919) % 101) as f32 / 101.0 - 0.5).collect();
/// let q = quantize_affine(&w, 64, 256, FloatDType::F32, AffineParams::new(4, 64)?)?;
/// let enc = encode(&q.symbols(), 64, 256, 4, &EncodeOptions::default())?;
/// let dev = LinearDevice::new()?;
/// let layer = EntropyCodedLinear::upload(
///     &dev,
///     "demo",
///     CodedLayerRef::from_encoded(&enc, 64, &q.scales, &q.biases, None),
///     &LinearOptions::default(),
/// )?;
/// let y = layer.forward(&vec![1.0; 256])?;
/// let y8 = layer.forward_batch(&vec![1.0; 8 * 256], 8)?;
/// assert_eq!((y.len(), y8.len()), (64, 8 * 64));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct EntropyCodedLinear {
    dev: Arc<LinearDevice>,
    name: String,
    rows: usize,
    cols: usize,
    bits: u32,
    row_pairs: bool,
    tile_chunks: usize,
    bands: Vec<Band>,
    bias: Option<Vec<f32>>,
    /// The bias on the GPU for recorded calls, made on first use.
    bias_gpu: std::sync::OnceLock<wgpu::Buffer>,
    coded_bytes: u64,
    side_bytes: u64,
    /// Bytes of the bands' decode tables in memory (`Band::tables`).
    table_bytes: u64,
    max_buffer: (u64, &'static str),
    gemv_batch_max_m: usize,
    side: SideFormat,
    /// The blocked batched kernel's specialisation (weights per symbol, coded bits,
    /// probability bits) where it runs this layer; `None`: `rans_gemm.wgsl`.
    gemm_blocked: Option<(u32, u32, u32)>,
    /// The window start of a window split (only the blocked batched kernel reads those).
    window: Option<u8>,
    /// The fused GEMV takes 8-bit activations ([`LinearOptions::x8_activations`]).
    x8: bool,
    /// Groups of 32 lanes per chunk in the fused GEMV ([`LinearOptions::chunk_subgroups`]).
    chunk_subgroups: u32,
    /// The coded matrix's chunks.
    n_chunks: usize,
    /// [`LinearOptions::gemm_target_workgroups`], resolved.
    gemm_target_workgroups: u32,
    /// Activation vectors per fused GEMV launch ([`LinearOptions::gemv_vectors`], resolved;
    /// 1 where the layer cannot take more).
    gemv_vectors: u32,
    /// The fused GEMVs take their activations in lane order
    /// ([`LinearOptions::column_order_activations`], resolved).
    lane_order: bool,
    /// Launches of at least [`COOP_MIN_ROWS`] rows run on cooperative matrices
    /// ([`LinearOptions::cooperative_matrix`], resolved).
    coop: bool,
    /// [`LinearOptions::decode_first_min_rows`], resolved.
    decode_first_min_rows: usize,
    /// The group width of the lanes fused GEMV (`rans_gemv_lanes.wgsl`) where it runs this
    /// layer's fused GEMVs ([`crate::gpu::lanes_gemv_width`]).
    lanes_gemv: Option<u32>,
    /// Calls decoding first run the plain layer on cooperative matrices.
    decode_first_coop: bool,
    /// [`LinearOptions::coop_gemm_min_rows`].
    coop_gemm_min_rows: Option<usize>,
    /// [`LinearOptions::tiled_gemm_min_rows`].
    tiled_gemm_min_rows: Option<usize>,
}

impl EntropyCodedLinear {
    /// Uploads a coded layer: the coded tensors are written to GPU buffers straight from the
    /// borrowed slices (no host copy), scales and biases interleaved as `f32` pairs. A matrix
    /// whose buffers exceed the device limits (or [`LinearOptions::max_buffer_bytes`]) is split
    /// into row bands of whole tiles.
    pub fn upload(
        dev: &Arc<LinearDevice>,
        name: &str,
        m: CodedLayerRef<'_>,
        opts: &LinearOptions,
    ) -> Result<Self, LinearError> {
        let offsets = m.check(name)?;
        let side = opts
            .side
            .unwrap_or_else(|| SideFormat::exact_for(m.scales, m.biases));
        side.check_exact(m.scales, m.biases)
            .map_err(|source| LinearError::gpu(name, source))?;
        let max_buffer = match opts.max_buffer_bytes {
            Some(b) => (
                b.min(dev.max_buffer_bytes()),
                "LinearOptions::max_buffer_bytes",
            ),
            None => dev.max_buffer_limit(),
        };
        let too_large = |what: String, bytes: u64| LinearError::TooLarge {
            layer: name.into(),
            what,
            bytes,
            limit: max_buffer.0,
            limit_name: max_buffer.1,
            remedy: LinearError::REMEDY_TILES,
        };
        let nc = m.n_chunks();
        let tc = m.tile_chunks;
        let nt = nc.div_ceil(tc);
        let a = m.alphabet();
        // (a matrix row's groups; with row pairs a coded row holds two matrix rows)
        let gpr = m.in_features() / m.group_size;
        let rpc = m.rows_per_coded_row();
        let chunk_end_row = |c: usize| (c * m.chunk_rows).min(m.rows);
        // bytes of raw low bits per coded row
        let low_row_bytes = m.cols * m.low_bits as usize / 8;
        // u32 words of a tile's decode table, where the blocked fused GEMV can read one
        let table_words = if crate::gpu::slot_table::TABLE_PRECISION.contains(&m.precision) {
            crate::gpu::slot_table::tile_words(m.precision)
        } else {
            0
        };
        // the bytes of the largest buffer of a band of tiles [t0, t1)
        let band_bytes = |t0: usize, t1: usize| -> (u64, String) {
            let (c0, c1) = (t0 * tc, (t1 * tc).min(nc));
            let band_rows = (chunk_end_row(c1) - chunk_end_row(c0)) as u64;
            let words = ((offsets[c1] - (offsets[c0] & !1)) as u64 * 2).div_ceil(4) * 4
                + band_rows * low_row_bytes as u64;
            let words = words.div_ceil(16) * 16;
            let states = (c1 - c0) as u64 * 128;
            let sb = (band_rows * rpc as u64 * gpr as u64 * side.bytes_per_group() as u64)
                .next_multiple_of(8);
            let freqs = (t1 - t0) as u64 * a as u64 * 2;
            [
                (words, "ecq_words"),
                (states, "ecq_states"),
                (sb, "scales+biases"),
                (freqs, "ecq_freqs"),
            ]
            .into_iter()
            .max_by_key(|v| v.0)
            .map(|(b, w)| (b, w.to_string()))
            .unwrap_or_default()
        };
        // greedy row bands of whole tiles
        let mut plan = Vec::new();
        let mut t0 = 0;
        while t0 < nt {
            let (b, what) = band_bytes(t0, t0 + 1);
            if b > max_buffer.0 {
                return Err(too_large(format!("{what} of tile {t0}"), b));
            }
            let mut t1 = t0 + 1;
            while t1 < nt && band_bytes(t0, t1 + 1).0 <= max_buffer.0 {
                t1 += 1;
            }
            plan.push((t0, t1));
            t0 = t1;
        }
        if plan.len() > 1 && u32::try_from(m.rows).is_err() {
            return Err(LinearError::Unsupported {
                layer: name.into(),
                reason: format!("{} rows", m.rows),
            });
        }
        let s = m.cols / m.weights_per_symbol as usize;
        let t = s.div_ceil(32);
        let mut bands = Vec::with_capacity(plan.len());
        // (every band's fused GEMV a blocked kernel: what 8-bit activations need)
        let mut all_blocked = true;
        // (each band's group width of the lanes fused GEMV, where it runs on it)
        let mut lanes_widths = Vec::new();
        // groups of 32 lanes a chunk in the fused GEMV, where every band can take them
        let mut chunk_subgroups = opts.chunk_subgroups.max(1);
        if ![1, 2, 4].contains(&chunk_subgroups) {
            return Err(LinearError::Gpu {
                layer: name.into(),
                source: GpuError::InvalidInput(format!(
                    "LinearOptions::chunk_subgroups must be 0, 1, 2 or 4, not {}",
                    opts.chunk_subgroups
                )),
            });
        }
        if opts
            .chunk_subgroups_max_chunks
            .is_some_and(|most| nc > most)
        {
            chunk_subgroups = 1;
        }
        let gemm_target_workgroups = opts.gemm_target_workgroups.unwrap_or(TARGET_WORKGROUPS);
        if gemm_target_workgroups == 0 {
            return Err(LinearError::Gpu {
                layer: name.into(),
                source: GpuError::InvalidInput(
                    "LinearOptions::gemm_target_workgroups must be at least 1".into(),
                ),
            });
        }
        if let Some(v) = opts.gemv_vectors {
            check_gemv_vectors(v).map_err(|source| LinearError::gpu(name, source))?;
        }
        let mut all_dup = chunk_subgroups > 1;
        for (t0, t1) in plan {
            let (c0, c1) = (t0 * tc, (t1 * tc).min(nc));
            let (row0, row1) = (chunk_end_row(c0), chunk_end_row(c1));
            let e0 = offsets[c0] & !1;
            let band_offsets: Vec<u32> = offsets[c0..=c1].iter().map(|&o| o - e0).collect();
            let n_words = offsets[c1] - e0;
            let wbytes = &m.words[e0 as usize * 2..offsets[c1] as usize * 2];
            // a split matrix's raw low bits follow the stream from a u32 boundary
            let low_at = wbytes.len().next_multiple_of(4);
            let lbytes = &m.low[row0 * low_row_bytes..row1 * low_row_bytes];
            let freqs = dev.buffer(
                "ecq_freqs",
                ((t1 - t0) * a * 2) as u64,
                wgpu::BufferUsages::empty(),
            );
            dev.write(&freqs, &m.freqs[t0 * a * 2..t1 * a * 2]);
            let states = dev.buffer(
                "ecq_states",
                ((c1 - c0) * 128) as u64,
                wgpu::BufferUsages::empty(),
            );
            dev.write(&states, &m.states[c0 * 128..c1 * 128]);
            let offs = dev.buffer(
                "ecq_offsets",
                (band_offsets.len() * 4) as u64,
                wgpu::BufferUsages::empty(),
            );
            dev.write(&offs, bytemuck::cast_slice(&band_offsets));
            let words = dev.buffer(
                "ecq_words",
                (low_at + lbytes.len()) as u64,
                wgpu::BufferUsages::empty(),
            );
            dev.write(&words, wbytes);
            if !lbytes.is_empty() {
                dev.queue().write_buffer(&words, low_at as u64, lbytes);
            }
            let (mrow0, mrow1) = (row0 * rpc, row1 * rpc);
            let sbv = side.pack(
                &m.scales[mrow0 * gpr..mrow1 * gpr],
                &m.biases[mrow0 * gpr..mrow1 * gpr],
            );
            let sb = dev.buffer(
                "scales+biases",
                sbv.len() as u64,
                wgpu::BufferUsages::empty(),
            );
            dev.write(&sb, &sbv);
            let errors = dev.buffer(
                "ecq chunk errors",
                ((c1 - c0) * 4) as u64,
                wgpu::BufferUsages::COPY_SRC,
            );
            let record_errors = dev.buffer(
                "ecq recorded chunk errors",
                ((c1 - c0) * 4) as u64,
                wgpu::BufferUsages::COPY_SRC,
            );
            let n_tiles = t1 - t0;
            let wg_per_tile = tc.div_ceil(GROUPS_PER_WG);
            let total_wg = (n_tiles * wg_per_tile) as u32;
            let (gx, _) = dev.grid(total_wg);
            let mut gemv = CodedParams {
                rows: (row1 - row0) as u32,
                cols: m.cols as u32,
                bits: m.bits,
                wps: m.weights_per_symbol,
                prec: m.precision,
                chunk_rows: m.chunk_rows as u32,
                tile_chunks: tc as u32,
                n_chunks: (c1 - c0) as u32,
                n_tiles: n_tiles as u32,
                syms_per_row: s as u32,
                steps_per_row: t as u32,
                alphabet: a as u32,
                n_words,
                wg_per_tile: wg_per_tile as u32,
                total_wg,
                out_mode: 2,
                out_row_words: 0,
                wg_x: gx,
                chunk_iters: 1,
                group_size: m.group_size as u32,
                groups_per_row: gpr as u32,
                low_base: (low_at / 4) as u32,
                low_bits: m.low_bits,
                zero: 0,
                row_pairs: m.row_pairs as u32,
                window_start: m.window.map_or(0, u32::from),
                chunk_subgroups: 1,
                _pad3: 0,
            };
            let gemm = GemmParams {
                rows: gemv.rows,
                cols: gemv.cols,
                bits: gemv.bits,
                wps: gemv.wps,
                prec: gemv.prec,
                chunk_rows: gemv.chunk_rows,
                tile_chunks: gemv.tile_chunks,
                n_chunks: gemv.n_chunks,
                n_tiles: gemv.n_tiles,
                syms_per_row: gemv.syms_per_row,
                steps_per_row: gemv.steps_per_row,
                alphabet: gemv.alphabet,
                n_words,
                wg_per_tile: gemv.wg_per_tile,
                total_wg,
                wg_x: gx,
                group_size: gemv.group_size,
                groups_per_row: gemv.groups_per_row,
                m: 0,
                xs4: m.in_features().div_ceil(4) as u32,
                y_stride: m.out_features() as u32,
                row_base: mrow0 as u32,
                m_block: 0,
                total_grid: 0,
                low_base: gemv.low_base,
                low_bits: m.low_bits,
                kparts: 1,
                _pad: 0,
            };
            let decode = gemv;
            let variant = default_fused_variant(dev.gpu().registry(), &gemv.fused_layout(side));
            let blocked = variant.is_blocked();
            all_blocked &= blocked;
            // (after the batched kernel's parameters, which keep one group a chunk, and the
            // variant, which the default picks from one group's workgroups as well)
            // (a layout the groups cannot run keeps one)
            match (blocked && chunk_subgroups > 1)
                .then(|| set_chunk_subgroups(&mut gemv, chunk_subgroups))
            {
                Some(Ok(())) => gemv.wg_x = dev.grid(gemv.total_wg).0,
                None | Some(Err(GpuError::Unsupported(_))) => all_dup = false,
                Some(Err(source)) => return Err(LinearError::gpu(name, source)),
            }
            // (an optimisation: a band whose tables would exceed the buffer limit builds them;
            // the blocked fused kernels read them and, from 8 to 11 probability bits (where
            // `table_words` is not 0), so do the workgroup kernels, fused GEMV, batched and
            // decode alike, which run the layers the blocked kernels do not)
            let table_bytes = (t1 - t0) as u64 * table_words as u64 * 4;
            let tables = (!opts.tables_built_in_kernel
                && table_words > 0
                && table_bytes <= max_buffer.0)
                .then(|| {
                    let f: Vec<u16> = m.freqs[t0 * a * 2..t1 * a * 2]
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect();
                    let t =
                        crate::gpu::slot_table::blocked_slot_tables(&f, a, m.precision, t1 - t0);
                    let b = dev.buffer(
                        "ecq decode tables",
                        (t.len() * 4) as u64,
                        wgpu::BufferUsages::empty(),
                    );
                    dev.write(&b, bytemuck::cast_slice(&t));
                    b
                });
            // (a layer whose fused GEMV runs on the lanes kernel: its chunks a workgroup; the
            // variant and tables as the launches take them, `gemv_dispatch`)
            let mut layout = gemv.fused_layout(side);
            layout.tables_in_memory = tables.is_some() && fused_reads_tables(variant, m.precision);
            let lanes = variant_lanes_width(dev.gpu().registry(), variant, &layout);
            if let Some(w) = lanes {
                set_lanes_geometry(&mut gemv, w).map_err(|e| LinearError::gpu(name, e))?;
                gemv.wg_x = dev.grid(gemv.total_wg).0;
            }
            lanes_widths.push(lanes);
            let gemv_uniform = dev.uniform(bytemuck::bytes_of(&gemv));
            bands.push(Band {
                row0: mrow0,
                rows: mrow1 - mrow0,
                chunk0: c0,
                n_chunks: c1 - c0,
                freqs,
                tables,
                states,
                offsets: offs,
                words,
                errors,
                record_errors,
                coop: std::sync::OnceLock::new(),
                sb,
                gemv,
                gemm,
                gemv_uniform,
                decode,
                decode_uniform: std::sync::OnceLock::new(),
            });
        }
        // a window split runs on the blocked and the workgroup fused kernels, for rows of whole
        // 4-step blocks: refuse it here, at load, where neither can run it
        if m.window.is_some() {
            if let Some(band) = bands.first() {
                let registry = dev.gpu().registry();
                let layout = band.gemv.fused_layout(side);
                let variant = default_fused_variant(registry, &layout);
                fused_gemv_pipeline(dev.device(), registry, variant, &layout).map_err(|e| {
                    LinearError::Unsupported {
                        layer: name.into(),
                        reason: e.to_string(),
                    }
                })?;
            }
        }
        // flush the staged writes now, so their host memory is released layer by layer
        dev.queue().submit(std::iter::empty());
        let gemm_blocked = blocked_gemm_layout(dev, &m, opts);
        let table_bytes = bands
            .iter()
            .filter_map(|b| b.tables.as_ref().map(wgpu::Buffer::size))
            .sum();
        let x8 = opts.x8_activations && m.window.is_some() && all_blocked;
        let chunk_subgroups = if all_dup { chunk_subgroups } else { 1 };
        let gemv_vectors = if m.window.is_some() && all_blocked && !x8 && chunk_subgroups == 1 {
            opts.gemv_vectors.unwrap_or(GEMV_VECTORS)
        } else {
            1
        };
        let lane_order = m.window.is_some()
            && m.row_pairs
            && all_blocked
            && !x8
            && !opts.column_order_activations;
        let coop = opts.cooperative_matrix
            && dev.gpu().registry().cooperative_matrix()
            && gemv_vectors > 1
            && bands
                .iter()
                .all(|b| b.tables.is_some() && coop_layout_refusal(&b.gemv).is_none());
        // decode first where one band holds the layer, a decode kernel runs it here and the
        // plain kernels take its weights
        let bits = m.bits + m.low_bits;
        let (r, k) = (m.out_features(), m.in_features());
        let decodes = bands.len() == 1
            && bands.iter().all(|b| {
                b.decode_source(side, false)
                    .decodable(dev.gpu().registry(), DecodeOutput::Packed)
            })
            && QuantizedLinear::check_geometry(name, (r, k, bits, m.group_size), None).is_ok()
            && (r as u64 * k as u64 * bits as u64).div_ceil(8) <= dev.max_buffer_limit().0;
        // (calls decoding first run the plain layer on cooperative matrices where it takes
        // the weights, whether or not the fused launches can: whole-coded layers, the file
        // format's default, have no cooperative fused kernel)
        let decode_first_coop = decodes
            && opts.cooperative_matrix
            && crate::gpu::GpuQuantizedMatrix::coop_gemv_refusal(
                dev.gpu().registry(),
                bits,
                k,
                m.group_size as u32,
            )
            .is_none();
        debug_assert!(!decodes || !coop || decode_first_coop);
        let lanes_gemv = match lanes_widths.as_slice() {
            [first, rest @ ..] if rest.iter().all(|w| w == first) => *first,
            _ => None,
        };
        let decode_first_min_rows = if decodes {
            opts.decode_first_min_rows
                // (a layer whose fused launches multiply on cooperative matrices is one the
                // plain cooperative kernels take, so `decode_first_coop` covers `coop` here)
                // (a window split without the blocked batched kernel runs its batched calls
                // as fused GEMVs a row, several times a plain row each: it decodes first as
                // the layers that are not window splits do)
                .unwrap_or(
                    if lanes_gemv.is_some()
                        && lanes_gemv_one_row(dev, m.window.is_some(), m.low_bits)
                    {
                        DECODE_FIRST_MIN_ROWS_LANES
                    } else if m.window.is_none() || gemm_blocked.is_none() {
                        let registry = dev.gpu().registry();
                        if registry.cpu_device() || !registry.subgroups32() {
                            DECODE_FIRST_MIN_ROWS_PORTABLE
                        } else {
                            DECODE_FIRST_MIN_ROWS_NOT_WINDOW
                        }
                    } else if decode_first_coop {
                        DECODE_FIRST_MIN_ROWS_COOP
                    } else {
                        DECODE_FIRST_MIN_ROWS
                    },
                )
                .max(1)
        } else {
            usize::MAX
        };
        Ok(EntropyCodedLinear {
            dev: dev.clone(),
            name: name.into(),
            rows: m.out_features(),
            cols: m.in_features(),
            bits: m.bits + m.low_bits,
            row_pairs: m.row_pairs,
            tile_chunks: tc,
            bands,
            bias: m.bias.map(<[f32]>::to_vec),
            bias_gpu: std::sync::OnceLock::new(),
            coded_bytes: (m.freqs.len()
                + m.states.len()
                + m.offsets.len()
                + m.words.len()
                + m.low.len()) as u64,
            max_buffer,
            side,
            side_bytes: (m.scales.len() * side.bytes_per_group()) as u64,
            table_bytes,
            gemm_blocked,
            // (a window split without the blocked batched kernel: no batched kernel reads it,
            // so one fused GEMV per row, any count)
            gemv_batch_max_m: if m.window.is_some() && gemm_blocked.is_none() {
                usize::MAX
            } else {
                opts.gemv_batch_max_m.unwrap_or(
                    if coop && m.out_features() * m.in_features() > LANE_ORDER_SMALL_WEIGHTS {
                        // (launches at every row count: on an H200 at 512 rows the cooperative
                        // ones took 0.32-0.37x `rans_gemm`'s GPU time at the larger shapes and
                        // whole `forward_batch` calls 0.56-0.93x the time; at 1024x4096 the
                        // many launches' host work made the calls slower than the batched
                        // kernel's, so small layers keep their threshold. BENCHMARKS.md issue 5,
                        // step 90)
                        usize::MAX
                    } else if gemv_vectors > 1 {
                        default_gemv_many_batch_max_m(
                            m.out_features() * m.in_features(),
                            lane_order,
                        )
                    } else if lanes_gemv.is_some() {
                        // (byte symbols whose fused GEMV runs on the lanes kernel: one row
                        // there, as `forward` runs it, rather than in the workgroup batched
                        // kernel; calls of more rows decode first by default)
                        GEMV_BATCH_MAX_M_LANES
                    } else {
                        default_gemv_batch_max_m(
                            dev.gpu().registry().subgroups32(),
                            m.low_bits,
                            m.out_features() * m.in_features(),
                        )
                    },
                )
            },
            window: m.window,
            x8,
            chunk_subgroups,
            n_chunks: nc,
            gemm_target_workgroups,
            gemv_vectors,
            lane_order,
            coop,
            decode_first_min_rows,
            lanes_gemv,
            decode_first_coop,
            coop_gemm_min_rows: opts.coop_gemm_min_rows,
            tiled_gemm_min_rows: opts.tiled_gemm_min_rows,
        })
    }

    /// The fewest activation rows of a call that decodes the weights first and runs the plain
    /// kernels ([`LinearOptions::decode_first_min_rows`], resolved: `usize::MAX` where the
    /// layer cannot).
    pub fn decode_first_min_rows(&self) -> usize {
        self.decode_first_min_rows
    }

    /// Whether `forward_batch`'s GEMV launches of at least [`COOP_MIN_ROWS`] rows multiply on
    /// cooperative matrices ([`LinearOptions::cooperative_matrix`]: asked for, and the device
    /// and the layer allow it).
    pub fn cooperative_matrix(&self) -> bool {
        self.coop
    }

    /// Whether calls decoding first ([`Self::decode_first_min_rows`]) run the plain layer's
    /// kernels on cooperative matrices ([`LinearOptions::cooperative_matrix`] asked for, the
    /// device has them and the plain cooperative kernels take the weights: 4 bits, inputs a
    /// multiple of 512, MLX groups of 64 or 128), whatever the fused launches do (a
    /// whole-coded layer has no cooperative fused kernel).
    pub fn decode_first_cooperative_matrix(&self) -> bool {
        self.decode_first_coop
    }

    /// Whether the fused GEMVs of `forward` and `forward_batch` read their activations in lane
    /// order ([`LinearOptions::column_order_activations`]: window splits in row pairs on the
    /// blocked fused kernel with f32 activations, unless asked not to), the layout
    /// [`Self::vectors_lane_order_dispatch`] takes.
    pub fn lane_order(&self) -> bool {
        self.lane_order
    }

    /// The group width W where this layer's fused GEMVs run on the lanes kernel
    /// (`rans_gemv_lanes.wgsl`: W invocations a chunk, no barrier a decode step; window
    /// splits and byte symbols on devices that run the lanes kernels, where the layout allows
    /// it, [`crate::gpu::lanes_gemv_width`]), else `None` (one of the other fused kernels).
    pub fn lanes_gemv_width(&self) -> Option<u32> {
        self.lanes_gemv
    }

    /// Groups of 32 lanes per chunk in the fused GEMV ([`LinearOptions::chunk_subgroups`]
    /// asked for it and every band of this layer can take it), else 1.
    pub fn chunk_subgroups(&self) -> u32 {
        self.chunk_subgroups
    }

    /// Activation vectors one fused GEMV launch multiplies in `forward_batch`
    /// ([`LinearOptions::gemv_vectors`] where the layer can take several: a window split on the
    /// blocked fused kernel with f32 activations and one group of 32 lanes a chunk), else 1.
    pub fn gemv_vectors(&self) -> u32 {
        self.gemv_vectors
    }

    /// The coded matrix's chunks, each decoded by one group of 32 lanes (or
    /// [`Self::chunk_subgroups`]): the fused GEMV's parallelism.
    pub fn n_chunks(&self) -> usize {
        self.n_chunks
    }

    /// Whether the fused GEMV runs on 8-bit activations ([`LinearOptions::x8_activations`]
    /// asked for it and this layer can: a window split on the blocked fused kernel).
    pub fn x8_activations(&self) -> bool {
        self.x8
    }

    /// Bits per weight.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The window start of a window split ([`SplitMatrix::encode_window`]); `None` for the
    /// other forms.
    pub fn window(&self) -> Option<u8> {
        self.window
    }

    /// Bytes of the coded tensors (frequencies, states, offsets, words, a split matrix's raw
    /// low bits) held on the GPU.
    pub fn coded_bytes(&self) -> u64 {
        self.coded_bytes
    }

    /// Number of row bands the matrix was split into (1 unless it exceeds the buffer limits).
    pub fn n_bands(&self) -> usize {
        self.bands.len()
    }

    /// Bytes the layer's weights occupy on the GPU: the coded tensors
    /// ([`Self::coded_bytes`]), the scales and biases as held ([`Self::side_format`]) and the
    /// decode tables the blocked fused GEMV reads ([`Self::table_bytes`]).
    pub fn gpu_bytes(&self) -> u64 {
        self.coded_bytes + self.side_bytes + self.table_bytes
    }

    /// Bytes of the decode tables built on the host for the blocked fused GEMV and the
    /// workgroup kernels (fused GEMV, batched and decode), which read them instead of building
    /// them in every workgroup (2.5 KiB a tile at 11 probability bits,
    /// `GpuCodedMatrix::set_tables_in_memory`); 0 with
    /// [`LinearOptions::tables_built_in_kernel`] or probability bits outside 8..=11, and
    /// without the tables of a band whose tables exceed the buffer limit.
    pub fn table_bytes(&self) -> u64 {
        self.table_bytes
    }

    /// How the layer's scales and biases are stored on the GPU.
    pub fn side_format(&self) -> SideFormat {
        self.side
    }

    /// Whether the batched launches run the blocked subgroup kernel
    /// (`rans_gemm_blocked.wgsl`) rather than the portable `rans_gemm.wgsl`.
    pub fn blocked_gemm(&self) -> bool {
        self.gemm_blocked.is_some()
    }

    /// The layer's additive bias.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// The device the layer lives on.
    pub fn device(&self) -> &Arc<LinearDevice> {
        &self.dev
    }

    fn gpu_err(&self, source: GpuError) -> LinearError {
        LinearError::gpu(&self.name, source)
    }

    /// A call's buffer `what` of `bytes` within the device's limit (else too many rows).
    fn check_buffer(&self, what: &str, bytes: u64) -> Result<(), LinearError> {
        let (limit, limit_name) = self.dev.max_buffer_limit();
        if bytes > limit {
            return Err(LinearError::TooLarge {
                layer: self.name.clone(),
                what: what.into(),
                bytes,
                limit,
                limit_name,
                remedy: LinearError::REMEDY_ROWS,
            });
        }
        Ok(())
    }

    /// Band `band`'s cooperative launch parameters and their uniform buffer (made on the
    /// band's first cooperative launch and kept).
    fn coop_uniform<'b>(
        &self,
        band: &'b Band,
    ) -> Result<&'b (CodedParams, wgpu::Buffer), GpuError> {
        use wgpu::util::DeviceExt;
        if let Some(kept) = band.coop.get() {
            return Ok(kept);
        }
        let device = self.dev.device();
        let p = coop_params(device, &band.gemv)?;
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("ecq linear coop params"),
            contents: bytemuck::bytes_of(&p),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        Ok(band.coop.get_or_init(|| (p, uniform)))
    }

    /// Bytes from one launch's 8-bit activations to the next's in the buffer that holds them.
    fn x8_slot(&self) -> u64 {
        x8_bytes(self.cols).next_multiple_of(self.dev.storage_alignment())
    }

    /// GEMV launch `j`, of `n` rows of `x`, into `target(band)`, the error flags of recorded
    /// calls where `recorded`: a cooperative launch (its activation pass, then each band's
    /// GEMV) where it is one; else each band's fused GEMV on `x` in lane order where `lanes`,
    /// or on `x` quantized to 8 bits into slot `j` of `x8` where the layer takes them so.
    #[allow(clippy::too_many_arguments)]
    fn record_launch<'t>(
        &self,
        out: &mut Vec<LinearDispatch>,
        (j, n): (usize, usize),
        x: BufferRange<'_>,
        x8: Option<&wgpu::Buffer>,
        target: &dyn Fn(usize) -> BufferRange<'t>,
        lanes: bool,
        recorded: bool,
    ) -> Result<(), GpuError> {
        let (device, registry) = (self.dev.device(), self.dev.gpu().registry());
        if self.coop_launch(n) {
            let acts = self
                .dev
                .coop_activations(self.cols, n as u32, CoopOrder::Window)?;
            out.push(coop_x_dispatch(device, registry, x, &acts)?);
            for (b, band) in self.bands.iter().enumerate() {
                let params = self.coop_uniform(band)?;
                out.push(self.coop_dispatch(band, params, &acts, target(b), recorded)?);
            }
            return Ok(());
        }
        let x = match x8 {
            Some(x8) => {
                let k = self.cols;
                let r = BufferRange::new(x8, j as u64 * self.x8_slot(), x8_bytes(k));
                out.push(quantize_x8_dispatch(
                    device,
                    registry,
                    x,
                    r,
                    k,
                    X8Order::Window,
                )?);
                r
            }
            None => x,
        };
        for (b, band) in self.bands.iter().enumerate() {
            out.push(self.gemv_dispatch(band, x, target(b), n as u32, lanes, recorded)?);
        }
        Ok(())
    }

    /// Band `band`'s cooperative GEMV of the activations `x` prepared in window order, into
    /// `y` (`x.vectors()` rows of the band's outputs), with its parameters `(p, uniform)` from
    /// [`Self::coop_uniform`]; the error flags of recorded calls where `recorded`.
    fn coop_dispatch(
        &self,
        band: &Band,
        (p, uniform): &(CodedParams, wgpu::Buffer),
        x: &CoopActivations,
        y: BufferRange<'_>,
        recorded: bool,
    ) -> Result<LinearDispatch, GpuError> {
        let device = self.dev.device();
        let y_need = (band.rows * 4) as u64 * u64::from(x.vectors());
        y.check(device, "y")?;
        if y.size() < y_need {
            return Err(GpuError::InvalidInput(format!(
                "y has {} bytes, {} vectors need {y_need}",
                y.size(),
                x.vectors()
            )));
        }
        let pipeline = coop_gemv_pipeline(
            device,
            self.dev.gpu().registry(),
            p,
            self.side,
            x.vectors(),
            0,
        )?;
        let tables = band.tables.as_ref().ok_or_else(|| {
            GpuError::Unsupported("the cooperative GEMV reads decode tables in memory".into())
        })?;
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("ecq linear coop"),
            layout: &layout,
            entries: &[
                entry(0, uniform),
                entry(1, tables),
                entry(2, &band.states),
                entry(3, &band.offsets),
                entry(4, &band.words),
                entry(5, band.errors(recorded)),
                entry(6, &band.sb),
                entry(7, x.tiles()),
                entry(8, x.sums()),
                y.entry(9),
            ],
        });
        Ok(LinearDispatch::new(
            pipeline,
            bind_group,
            self.dev.grid(p.total_wg),
        ))
    }

    /// The fused-GEMV launch of one band computing `y = W x` without the bias for `vectors`
    /// activation vectors: `x` holds `vectors` rows of `in_features` f32 (in lane order where
    /// `lanes`), `y` `vectors` rows of the band's outputs; the error flags of recorded calls
    /// where `recorded`.
    fn gemv_dispatch(
        &self,
        band: &Band,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
        vectors: u32,
        lanes: bool,
        recorded: bool,
    ) -> Result<LinearDispatch, GpuError> {
        let registry = self.dev.gpu().registry();
        let device = self.dev.device();
        x.check(device, "x")?;
        y.check(device, "y")?;
        let x_need = if self.x8 {
            x8_bytes(self.cols) * u64::from(vectors)
        } else {
            (self.cols.div_ceil(4) * 4 * 4) as u64 * u64::from(vectors)
        };
        let y_need = (band.rows * 4) as u64 * u64::from(vectors);
        if x.size() < x_need || y.size() < y_need {
            return Err(GpuError::InvalidInput(format!(
                "x/y have {}/{} bytes, {vectors} vectors need {x_need}/{y_need}",
                x.size(),
                y.size()
            )));
        }
        let mut layout = band.gemv.fused_layout(self.side);
        // (the table form depends on the vectors and the activations' type too)
        layout.x8_activations = self.x8;
        layout.vectors = vectors;
        let variant = default_fused_variant(registry, &layout);
        let tables = band
            .tables
            .as_ref()
            .filter(|_| fused_reads_tables(variant, layout.prec));
        layout.tables_in_memory = tables.is_some();
        layout.lane_order_x = lanes;
        let pipeline = fused_gemv_pipeline(device, registry, variant, &layout)?;
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("ecq linear gemv"),
            layout: &layout,
            entries: &[
                entry(0, &band.gemv_uniform),
                entry(1, tables.unwrap_or(&band.freqs)),
                entry(2, &band.states),
                entry(3, &band.offsets),
                entry(4, &band.words),
                entry(5, band.errors(recorded)),
                entry(6, &band.sb),
                x.entry(7),
                y.entry(8),
            ],
        });
        Ok(LinearDispatch::new(
            pipeline,
            bind_group,
            self.dev.grid(band.gemv.total_wg),
        ))
    }

    /// The fused-GEMV launch computing `y = W x` (no bias) for one activation vector (`x`:
    /// `in_features` f32, or with [`Self::x8_activations`] their 8-bit form as
    /// [`crate::gpu::quantize_x8_dispatch`] writes it in [`crate::gpu::X8Order::Window`]; `y`:
    /// `out_features` f32), for benchmarks that record many launches between two waits. Only
    /// for layers held in one band ([`Self::n_bands`] == 1: a banded layer writes per-band
    /// scratch buffers, see [`Linear::forward`]).
    pub fn vector_dispatch(
        &self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<LinearDispatch, LinearError> {
        self.vectors_dispatch(x, y, 1)
    }

    /// [`Self::vector_dispatch`] for `vectors` activation vectors in one launch (`x`: `vectors`
    /// rows of `in_features` f32, `y`: `vectors` rows of `out_features` f32), each chunk
    /// decoded once for all of them: 1..=[`Self::gemv_vectors`] vectors, or
    /// [`LinearError::Unsupported`]. For benchmarks; layers held in one band only.
    pub fn vectors_dispatch(
        &self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        vectors: u32,
    ) -> Result<LinearDispatch, LinearError> {
        self.vectors_dispatch_in(x, y, vectors, false)
    }

    /// [`Self::vectors_dispatch`] on activations in lane order ([`crate::gpu::x_lane_order`],
    /// or [`crate::gpu::x_lane_order_dispatch`] on the GPU; what an engine's preceding operation
    /// could write directly), for layers where [`Self::lane_order`] holds, else
    /// [`LinearError::Unsupported`]. The same outputs bit for bit.
    pub fn vectors_lane_order_dispatch(
        &self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        vectors: u32,
    ) -> Result<LinearDispatch, LinearError> {
        if !self.lane_order {
            return Err(LinearError::Unsupported {
                layer: self.name.clone(),
                reason: "activations in lane order: window splits in row pairs on the blocked \
                         fused kernel with f32 activations only"
                    .into(),
            });
        }
        self.vectors_dispatch_in(x, y, vectors, true)
    }

    fn vectors_dispatch_in(
        &self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        vectors: u32,
        lanes: bool,
    ) -> Result<LinearDispatch, LinearError> {
        if vectors == 0 || vectors > self.gemv_vectors {
            return Err(LinearError::Unsupported {
                layer: self.name.clone(),
                reason: format!(
                    "{vectors} activation vectors a launch: this layer runs 1..={}",
                    self.gemv_vectors
                ),
            });
        }
        match self.bands.as_slice() {
            [band] => self
                .gemv_dispatch(band, x.into(), y.into(), vectors, lanes, false)
                .map_err(|e| self.gpu_err(e)),
            _ => Err(LinearError::Unsupported {
                layer: self.name.clone(),
                reason: format!("vectors_dispatch on a layer of {} bands", self.bands.len()),
            }),
        }
    }

    /// The batched launches (one per band) computing `Y = X W^T` (no bias) for `m <=`
    /// [`MAX_M_PER_DISPATCH`](crate::linear::MAX_M_PER_DISPATCH) activation rows: `x` holds `m` rows of `ceil(K/4)*4` f32 (rows
    /// zero-padded to a multiple of 4), `y` holds `m * out_features` f32. For benchmarks that
    /// record many launches between two waits; clear the error buffers yourself.
    pub fn batch_dispatches(
        &self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        m: usize,
    ) -> Result<Vec<LinearDispatch>, LinearError> {
        self.batch_dispatches_in(x.into(), y.into(), m, false)
    }

    /// [`Self::batch_dispatches`] on ranges, writing the error flags of recorded calls where
    /// `recorded`.
    fn batch_dispatches_in(
        &self,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
        m: usize,
        recorded: bool,
    ) -> Result<Vec<LinearDispatch>, LinearError> {
        if m == 0 || m > MAX_M_PER_DISPATCH {
            return Err(LinearError::InvalidLayer {
                layer: self.name.clone(),
                reason: format!("{m} activation rows per dispatch (1..={MAX_M_PER_DISPATCH})"),
            });
        }
        if self.window.is_some() && self.gemm_blocked.is_none() {
            return Err(LinearError::Unsupported {
                layer: self.name.clone(),
                reason: "a window split's batched launches run on the blocked kernel only \
                         (rans_gemm_blocked.wgsl, not the portable one)"
                    .into(),
            });
        }
        let xs = self.cols.div_ceil(4) as u64 * 16 * m as u64;
        let ys = (self.rows * m * 4) as u64;
        x.check(self.dev.device(), "x")
            .map_err(|e| self.gpu_err(e))?;
        y.check(self.dev.device(), "y")
            .map_err(|e| self.gpu_err(e))?;
        if x.size() < xs || y.size() < ys {
            return Err(LinearError::InvalidLayer {
                layer: self.name.clone(),
                reason: format!(
                    "x/y buffers have {}/{} bytes, need {xs}/{ys}",
                    x.size(),
                    y.size()
                ),
            });
        }
        // (the workgroup kernel reads a band's host-built tables where it has them; the
        // blocked one builds its own)
        let kernel = |tables: bool| match self.gemm_blocked {
            Some((wps, bits, prec)) => LinearKernel::RansGemmBlocked {
                row_pairs: self.row_pairs,
                side: self.side,
                wps,
                bits,
                prec,
                window: self.window,
            },
            None => LinearKernel::RansGemm {
                row_pairs: self.row_pairs,
                side: self.side,
                tables,
            },
        };
        let mut out = Vec::with_capacity(self.bands.len());
        for band in &self.bands {
            let tables = band.tables.as_ref().filter(|_| self.gemm_blocked.is_none());
            let pipeline = self
                .dev
                .pipeline(kernel(tables.is_some()))
                .map_err(|e| self.gpu_err(e))?;
            let layout = pipeline.get_bind_group_layout(0);
            let (m_block, blocks) = m_split(
                m,
                band.gemm.total_wg,
                self.gemm_blocked.is_none(),
                self.gemm_target_workgroups,
            );
            let total_grid = band.gemm.total_wg * blocks;
            let p = GemmParams {
                m: m as u32,
                m_block,
                total_grid,
                kparts: kparts(m_block as usize),
                wg_x: self.dev.grid(total_grid).0,
                ..band.gemm
            };
            let uniform = self.dev.uniform(bytemuck::bytes_of(&p));
            let bind_group = self
                .dev
                .device()
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("ecq linear gemm"),
                    layout: &layout,
                    entries: &[
                        entry(0, &uniform),
                        entry(1, tables.unwrap_or(&band.freqs)),
                        entry(2, &band.states),
                        entry(3, &band.offsets),
                        entry(4, &band.words),
                        entry(5, band.errors(recorded)),
                        entry(6, &band.sb),
                        x.entry(7),
                        y.entry(8),
                    ],
                });
            out.push(LinearDispatch::new(
                pipeline.clone(),
                bind_group,
                self.dev.grid(total_grid),
            ));
        }
        Ok(out)
    }

    /// A buffer to read every band's error flags back into, band after band, and its bytes
    /// (at least 4).
    fn errors_readback(&self) -> (wgpu::Buffer, u64) {
        let bytes: u64 = self.bands.iter().map(|b| (b.n_chunks * 4) as u64).sum();
        let readback = self.dev.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("ecq chunk errors read back"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        (readback, bytes.max(4))
    }

    /// The error flags in `readback` ([`Self::errors_readback`], mapped) checked
    /// ([`Self::check_errors`]); unmaps it.
    fn check_read_back(&self, readback: &wgpu::Buffer) -> Result<(), LinearError> {
        let errs = {
            let view = readback
                .slice(..)
                .get_mapped_range()
                .map_err(|e| self.gpu_err(GpuError::Map(e.to_string())))?;
            let mut at = 0;
            self.bands
                .iter()
                .map(|band| {
                    let n = band.n_chunks * 4;
                    let v = view[at..at + n].to_vec();
                    at += n;
                    v
                })
                .collect::<Vec<_>>()
        };
        readback.unmap();
        self.check_errors(&errs)
    }

    /// Turns the error words read back (band after band) into [`GpuError::CorruptStream`].
    fn check_errors(&self, errs: &[Vec<u8>]) -> Result<(), LinearError> {
        let mut first = None;
        let mut bad = 0;
        for (band, bytes) in self.bands.iter().zip(errs) {
            for (i, c) in bytes.chunks_exact(4).enumerate() {
                let f = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if f != 0 {
                    bad += 1;
                    first.get_or_insert((band.chunk0 + i, f));
                }
            }
        }
        if let Some((chunk, flags)) = first {
            return Err(self.gpu_err(GpuError::CorruptStream {
                chunk,
                tile: chunk / self.tile_chunks.max(1),
                flags,
                reason: GpuError::describe_flags(flags),
                bad_chunks: bad,
            }));
        }
        Ok(())
    }

    /// Whether a GEMV launch of `n` rows runs on cooperative matrices.
    fn coop_launch(&self, n: usize) -> bool {
        self.coop && n >= COOP_MIN_ROWS
    }

    /// The fused GEMVs of `m` activation rows (no bias), recorded into one submission whose
    /// read back of the `m` rows of outputs is under way when this returns
    /// ([`Self::finish_read`]): one launch per [`Self::gemv_vectors`] rows (one a row on
    /// 8-bit activations, which are quantized per row first).
    ///
    /// The launches share the call's buffers ([`LinearDevice`] keeps them): each reads its
    /// activations from its own range of one buffer and, for a layer in one band whose
    /// launches start at offsets the device can bind, writes its outputs in place in the
    /// outputs buffer; otherwise to a range of a parts buffer copied into place (a copy per
    /// launch, or per row and band for a layer in bands, whose launches write the band's
    /// outputs only).
    fn submit_gemv(&self, x: &[f32], m: usize) -> Result<PendingRead<'_>, LinearError> {
        let dev = &self.dev;
        let device = dev.device();
        let k = self.cols;
        let k4 = k.div_ceil(4) * 4;
        let align = dev.storage_alignment();
        // (1 on 8-bit activations: the upload resolves it so)
        let per = self.gemv_vectors as usize;
        let bands = self.bands.iter().map(|b| (b.row0, b.rows)).collect();
        let layout = LaunchLayout::new(m, per, k4, self.rows, bands, align);
        self.check_buffer("activations", layout.x_slots_bytes())?;
        self.check_buffer("outputs", (self.rows * 4 * m) as u64)?;
        let mut scratch = dev.call_scratch();
        let mut enc = device.create_command_encoder(&Default::default());
        let xb = scratch
            .upload_with(&mut enc, layout.x_values(), |w| {
                // (rows of k4 values: `finish` zero-pads them)
                layout.write_rows(w, |r, w| {
                    let row = &x[r * k..(r + 1) * k];
                    if self.lane_order && !self.coop_launch(per.min(m - r / per * per)) {
                        // (k % 512 == 0 for window splits in row pairs: no padding)
                        w.put_lane_order(row)
                    } else {
                        w.put(row);
                        Ok(())
                    }
                })
            })
            .map_err(|e| self.gpu_err(e))?;
        let y = scratch.y((self.rows * 4 * m) as u64);
        let parts = match layout.parts_bytes() {
            Some(bytes) => {
                self.check_buffer("launch outputs", bytes)?;
                Some(scratch.parts(bytes))
            }
            None => None,
        };
        let launches = m.div_ceil(per) as u64;
        let x8 = self.x8.then(|| scratch.aux(self.x8_slot() * launches));
        for band in &self.bands {
            enc.clear_buffer(&band.errors, 0, None);
        }
        let mut launches = Vec::new();
        for (j, i, n) in layout.launches() {
            let xr = layout.x_range(&xb, j, n);
            let target = |b: usize| layout.y_range((&y).into(), parts.as_ref(), (j, i, n), b);
            let lanes = self.lane_order;
            self.record_launch(
                &mut launches,
                (j, n),
                xr,
                x8.as_ref(),
                &target,
                lanes,
                false,
            )
            .map_err(|e| self.gpu_err(e))?;
        }
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in &launches {
                d.record(&mut pass);
            }
        }
        layout.record_copies(&mut enc, parts.as_ref(), (&y).into());
        self.submit_read(scratch, enc, &y, self.rows * m)
    }

    /// Submits `enc` with the read back of `values` outputs from the start of `y` and of the
    /// bands' error words.
    fn submit_read<'a>(
        &self,
        scratch: CallScratch<'a>,
        enc: wgpu::CommandEncoder,
        y: &wgpu::Buffer,
        values: usize,
    ) -> Result<PendingRead<'a>, LinearError> {
        let regions: Vec<(&wgpu::Buffer, u64)> = self
            .bands
            .iter()
            .map(|band| (&band.errors, (band.n_chunks * 4) as u64))
            .collect();
        scratch
            .submit_read(enc, y, values, &regions)
            .map_err(|e| self.gpu_err(e))
    }

    /// Waits for `pending`, reads its outputs into `out` and checks the bands' error words.
    fn finish_read(&self, pending: PendingRead<'_>, out: &mut [f32]) -> Result<(), LinearError> {
        let errs = pending.finish_into(out).map_err(|e| self.gpu_err(e))?;
        self.check_errors(&errs)
    }

    /// The batched kernel on `m` rows of `x` into `out`, a submission per
    /// [`MAX_M_PER_DISPATCH`] rows (fewer where the buffer limits demand), two in flight.
    fn run_gemm_into(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), LinearError> {
        let (r, k) = (self.rows, self.cols);
        let k4 = k.div_ceil(4) * 4;
        // activation rows per dispatch: at most 512, and within the buffer limits
        let per = gemm_rows_per_dispatch(&self.dev, &self.name, k4, r)?;
        let submit = |start: usize, mb: usize| {
            let mut scratch = self.dev.call_scratch();
            let mut enc = self
                .dev
                .device()
                .create_command_encoder(&Default::default());
            let xb = scratch
                .upload_padded_rows(&mut enc, &x[start * k..(start + mb) * k], (k, k4))
                .map_err(|e| self.gpu_err(e))?;
            let yb = scratch.y((mb * r * 4) as u64);
            for band in &self.bands {
                enc.clear_buffer(&band.errors, 0, None);
            }
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for d in self.batch_dispatches(&xb, &yb, mb)? {
                    d.record(&mut pass);
                }
            }
            self.submit_read(scratch, enc, &yb, mb * r)
        };
        pipelined(m, per, submit, |pending, start, mb| {
            self.finish_read(pending, &mut out[start * r..(start + mb) * r])
        })
    }

    /// Bytes of the layer's weights decoded to MLX words.
    fn decoded_bytes(&self) -> u64 {
        (self.rows as u64 * self.cols as u64 * self.bits as u64).div_ceil(8)
    }

    /// The decode launch of the layer's weights (one band) into `out` as MLX words, setting
    /// the error flags of recorded calls where `recorded`.
    fn decode_dispatch(
        &self,
        out: &wgpu::Buffer,
        recorded: bool,
    ) -> Result<LinearDispatch, GpuError> {
        let band = &self.bands[0];
        let source = band.decode_source(self.side, recorded);
        let registry = self.dev.gpu().registry();
        let mode = DecodeOutput::Packed;
        let variant = source.default_variant(registry, mode);
        source.dispatch(self.dev.device(), registry, out, mode, variant, |p| {
            band.decode_uniform
                .get_or_init(|| self.dev.uniform(bytemuck::bytes_of(&p)))
                .clone()
        })
    }

    /// The plain layer on the weights decoded into `packed` (no bias: the caller adds it), on
    /// cooperative matrices where this layer is.
    fn plain_on(&self, packed: wgpu::Buffer) -> Result<QuantizedLinear, LinearError> {
        let band = &self.bands[0];
        let group_size = band.decode.group_size as usize;
        let mut plain = QuantizedLinear::on_buffers(
            &self.dev,
            &self.name,
            (self.rows, self.cols, self.bits, group_size),
            (packed, band.sb.clone(), self.side),
            None,
        )?;
        plain.set_cooperative_matrix(self.decode_first_coop);
        plain.set_coop_gemm_min_rows(self.coop_gemm_min_rows);
        plain.set_tiled_gemm_min_rows(self.tiled_gemm_min_rows);
        Ok(plain)
    }

    /// `forward_batch` of `m` rows decoding first ([`LinearOptions::decode_first_min_rows`]):
    /// the decode into a buffer of this call, submitted with a copy of its error flags, then
    /// the plain layer's call on those weights (its submissions follow the decode's on the
    /// queue), then the flags checked. A corrupt stream is the error even where the plain
    /// call succeeded on the weights decoded from it.
    fn decode_first_into(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), LinearError> {
        let dev = &self.dev;
        let band = &self.bands[0];
        let gpu = |e| self.gpu_err(e);
        let mut scratch = dev.call_scratch();
        let decoded = scratch.decoded(self.decoded_bytes());
        let decode = self.decode_dispatch(&decoded, false).map_err(gpu)?;
        // (one band: its flags are all the read back holds)
        let (readback, bytes) = self.errors_readback();
        let mut enc = dev.device().create_command_encoder(&Default::default());
        enc.clear_buffer(&band.errors, 0, None);
        decode.record(&mut enc.begin_compute_pass(&Default::default()));
        enc.copy_buffer_to_buffer(&band.errors, 0, &readback, 0, (band.n_chunks * 4) as u64);
        let (submission, mapped) = dev
            .submit_mapped(enc, &readback, bytes, || {})
            .map_err(gpu)?;
        let run = self
            .plain_on(decoded)
            .and_then(|plain| plain.forward_batch_into(x, m, y));
        dev.wait_mapped(submission, mapped).map_err(gpu)?;
        self.check_read_back(&readback)?;
        // (the scratch, holding the decoded weights, goes back to the pool only now)
        drop(scratch);
        run
    }

    /// The buffer limit the bands were planned against (bytes, name).
    pub fn buffer_limit(&self) -> (u64, &'static str) {
        self.max_buffer
    }
}

/// Recorded calls ([`GpuLinear`]): the launches of `forward_batch` on activations and outputs
/// on the GPU.
impl EntropyCodedLinear {
    /// The fused GEMV launches of a recorded call, as [`Self::submit_gemv`] makes them for the
    /// same rows.
    fn record_gemv(
        &self,
        out: &mut Vec<LinearDispatch>,
        call: &ResidentCall<'_>,
    ) -> Result<(), GpuError> {
        let dev = &self.dev;
        let k4 = self.cols.div_ceil(4) * 4;
        let per = self.gemv_vectors as usize;
        let bands = self.bands.iter().map(|b| (b.row0, b.rows)).collect();
        let (layout, parts) = call.outputs(dev, per, k4, bands)?;
        // (a one-vector launch reads the order it is given, both kernels giving the same bits:
        // in a token's sequence of launches a permutation launch took ~13 µs on an H200, more
        // than lane order saves a one-vector GEMV (BENCHMARKS.md, issue 5, step 93))
        let need = |n: usize| RowsNeed {
            order: if self.lane_order
                && !self.coop_launch(n)
                && (n > 1 || call.order == ActivationOrder::Lanes)
            {
                ActivationOrder::Lanes
            } else {
                ActivationOrder::Columns
            },
            stride: k4,
        };
        let launches: Vec<_> = layout.launches().map(|(_, i, n)| (i, n, need(n))).collect();
        let rows = call.stage_rows(dev, out, &launches)?;
        let x8 = self
            .x8
            .then(|| dev.resident(Resident::Aux, self.x8_slot() * launches.len() as u64))
            .transpose()?;
        for (j, i, n) in layout.launches() {
            let target = |b: usize| layout.y_range(call.y, parts.as_ref(), (j, i, n), b);
            let lanes = need(n).order == ActivationOrder::Lanes;
            self.record_launch(
                out,
                (j, n),
                rows.range(j),
                x8.as_ref(),
                &target,
                lanes,
                true,
            )?;
        }
        call.place_outputs(dev, out, &layout, parts.as_ref())
    }

    /// The batched launches of a recorded call, in blocks of rows as [`Self::run_gemm_into`]
    /// makes them.
    fn record_gemm(
        &self,
        out: &mut Vec<LinearDispatch>,
        call: &ResidentCall<'_>,
    ) -> Result<(), LinearError> {
        let dev = &self.dev;
        let (r, k) = (self.rows, self.cols);
        let k4 = k.div_ceil(4) * 4;
        let per = gemm_rows_per_dispatch(dev, &self.name, k4, r)?;
        let gpu = |e| self.gpu_err(e);
        // (the batched kernel writes every band's outputs of its rows: one band for the layout)
        let (layout, parts) = call.outputs(dev, per, k4, vec![(0, r)]).map_err(gpu)?;
        let need = RowsNeed {
            order: ActivationOrder::Columns,
            stride: k4,
        };
        let launches: Vec<_> = layout.launches().map(|(_, i, n)| (i, n, need)).collect();
        let rows = call.stage_rows(dev, out, &launches).map_err(gpu)?;
        for (j, i, n) in layout.launches() {
            let yr = layout.y_range(call.y, parts.as_ref(), (j, i, n), 0);
            out.extend(self.batch_dispatches_in(rows.range(j), yr, n, true)?);
        }
        call.place_outputs(dev, out, &layout, parts.as_ref())
            .map_err(gpu)
    }
}

impl EntropyCodedLinear {
    /// The launches of a recorded call decoding first: the decode into the device's kept
    /// buffer (a prepared call holds the one it was made with), then the plain layer's
    /// launches on it, as [`Self::decode_first_into`] runs them; returns the buffer decoded
    /// into.
    fn record_decode_first(
        &self,
        out: &mut Vec<LinearDispatch>,
        call: &ResidentCall<'_>,
    ) -> Result<wgpu::Buffer, LinearError> {
        let gpu = |e| self.gpu_err(e);
        let decoded = self
            .dev
            .resident(Resident::Decoded, self.decoded_bytes())
            .map_err(gpu)?;
        debug_assert!(out.is_empty(), "the decode is the call's first launch");
        out.push(self.decode_dispatch(&decoded, true).map_err(gpu)?);
        let plain = self.plain_on(decoded.clone())?;
        plain.record_path(out, call, plain.path(call.m))?;
        Ok(decoded)
    }
}

impl GpuLinear for EntropyCodedLinear {
    fn linear_device(&self) -> &Arc<LinearDevice> {
        &self.dev
    }

    /// The launches `forward_batch` runs for `m` rows (from
    /// [`Self::decode_first_min_rows`] rows the decode and the plain layer's launches, else
    /// fused GEMVs up to [`LinearOptions::gemv_batch_max_m`] rows, else the batched kernel),
    /// then the bias.
    fn prepare_forward(
        &self,
        x: BufferRange<'_>,
        order: ActivationOrder,
        m: usize,
        y: BufferRange<'_>,
    ) -> Result<PreparedForward, LinearError> {
        let bias = bias_buffer(&self.dev, &self.bias_gpu, self.bias.as_deref());
        let (dev, dims) = (&self.dev, (self.cols, self.rows));
        let mut decoded = None;
        let prepared = prepare_call(
            dev,
            &self.name,
            (x, order, m),
            dims,
            y,
            bias,
            |out, call| {
                if self.bands.is_empty() {
                    call.zero_outputs(&self.dev, out)
                        .map_err(|e| self.gpu_err(e))
                } else if m >= self.decode_first_min_rows {
                    decoded = Some(self.record_decode_first(out, call)?);
                    Ok(())
                } else if m <= self.gemv_batch_max_m {
                    self.record_gemv(out, call).map_err(|e| self.gpu_err(e))
                } else {
                    self.record_gemm(out, call)
                }
            },
        )?;
        Ok(match decoded {
            Some(buffer) => prepared.decoding_first(&self.name, buffer),
            None => prepared,
        })
    }

    fn check_recorded(&self) -> Result<(), LinearError> {
        if self.bands.is_empty() {
            return Ok(());
        }
        let (readback, bytes) = self.errors_readback();
        let mut enc = self
            .dev
            .device()
            .create_command_encoder(&Default::default());
        let mut at = 0;
        for band in &self.bands {
            let n = (band.n_chunks * 4) as u64;
            enc.copy_buffer_to_buffer(&band.record_errors, 0, &readback, at, n);
            enc.clear_buffer(&band.record_errors, 0, None);
            at += n;
        }
        let (submission, mapped) = self
            .dev
            .submit_mapped(enc, &readback, bytes, || {})
            .map_err(|e| self.gpu_err(e))?;
        self.dev
            .wait_mapped(submission, mapped)
            .map_err(|e| self.gpu_err(e))?;
        self.check_read_back(&readback)
    }
}

/// Activation rows a batched launch of `layer` on `dev` takes for rows of `k4` inputs and `r`
/// outputs: at most [`MAX_M_PER_DISPATCH`], as many as the device binds of both;
/// [`LinearError::TooLarge`] where not one row fits.
pub(crate) fn gemm_rows_per_dispatch(
    dev: &LinearDevice,
    layer: &str,
    k4: usize,
    r: usize,
) -> Result<usize, LinearError> {
    let (xrow, yrow) = (k4 as u64 * 4, r as u64 * 4);
    let (limit, limit_name) = dev.max_buffer_limit();
    match (MAX_M_PER_DISPATCH as u64)
        .min(limit / xrow.max(1))
        .min(limit / yrow.max(1))
    {
        0 => Err(LinearError::TooLarge {
            layer: layer.into(),
            what: "one activation row".into(),
            bytes: xrow.max(yrow),
            limit,
            limit_name,
            remedy: LinearError::REMEDY_DEVICE,
        }),
        per => Ok(per as usize),
    }
}

impl Linear for EntropyCodedLinear {
    fn name(&self) -> &str {
        &self.name
    }

    fn in_features(&self) -> usize {
        self.cols
    }

    fn out_features(&self) -> usize {
        self.rows
    }

    /// The fused decode + dequantize + GEMV (`rans_gemv_subgroup.wgsl` where subgroups are 32
    /// wide, else `rans_gemv.wgsl`), then the bias on the host.
    fn forward(&self, x: &[f32]) -> Result<Vec<f32>, LinearError> {
        check_x(&self.name, self.cols, x.len(), 1)?;
        if self.rows == 0 {
            return Ok(Vec::new());
        }
        let mut y = vec![0.0; self.rows];
        if !self.bands.is_empty() {
            self.finish_read(self.submit_gemv(x, 1)?, &mut y)?;
        }
        add_bias(&mut y, self.bias.as_deref());
        Ok(y)
    }

    /// From [`EntropyCodedLinear::decode_first_min_rows`] rows (by default 2 for layers that
    /// are not window splits) the decode and the plain layer's kernels; below, the batched
    /// kernel (`rans_gemm_blocked.wgsl` where 32-wide subgroups run it, else
    /// `rans_gemm.wgsl`): every chunk decoded once per block of up to 512 activation rows; for
    /// at most [`LinearOptions::gemv_batch_max_m`] rows, fused GEMVs instead: a launch per
    /// [`EntropyCodedLinear::gemv_vectors`] rows (each chunk decoded once for them), or per
    /// row.
    fn forward_batch(&self, x: &[f32], m: usize) -> Result<Vec<f32>, LinearError> {
        check_x(&self.name, self.cols, x.len(), m)?;
        let mut y = vec![0.0; self.rows * m];
        self.forward_batch_into(x, m, &mut y)?;
        Ok(y)
    }

    /// [`Self::forward_batch`] read back straight into `y`.
    fn forward_batch_into(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), LinearError> {
        check_x(&self.name, self.cols, x.len(), m)?;
        check_y(&self.name, self.rows, y.len(), m)?;
        if self.rows == 0 || m == 0 {
            return Ok(());
        }
        if self.bands.is_empty() {
            y.fill(0.0);
        } else if m >= self.decode_first_min_rows {
            self.decode_first_into(x, m, y)?;
        } else if m <= self.gemv_batch_max_m {
            let (r, k) = (self.rows, self.cols);
            pipelined(
                m,
                GEMV_SUBMIT_ROWS,
                |start, mb| self.submit_gemv(&x[start * k..(start + mb) * k], mb),
                |pending, start, mb| self.finish_read(pending, &mut y[start * r..(start + mb) * r]),
            )?;
        } else {
            self.run_gemm_into(x, m, y)?;
        }
        add_bias(y, self.bias.as_deref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{default_gemv_batch_max_m, kparts, m_split as m_split_with, TARGET_WORKGROUPS};

    fn m_split(m: usize, wgs: u32, round_up: bool) -> (u32, u32) {
        m_split_with(m, wgs, round_up, TARGET_WORKGROUPS)
    }

    /// Per-row GEMVs only where the fused GEMV is a subgroup kernel; split layers up to 4096x4096
    /// switch to the batched kernel sooner than larger ones; whole layers at 4 rows.
    #[test]
    fn gemv_batch_thresholds() {
        for (sg, low, w, want) in [
            (false, 2, 1 << 20, 0),
            (false, 0, 1 << 30, 0),
            (true, 0, 1 << 20, 4),
            (true, 0, 4096 * 14336, 4),
            (true, 2, 1024 * 4096, 5),
            (true, 2, 4096 * 4096, 5),
            (true, 2, 4096 * 4096 + 1, 7),
            (true, 2, 128256 * 4096, 7),
            (true, 3, 1024 * 4096, 7),
            (true, 3, 4096 * 4096, 7),
            (true, 3, 4096 * 4096 + 1, 9),
            (true, 3, 6144 * 4096, 9),
            (true, 3, 8192 * 4096, 9),
            (true, 3, 8192 * 4096 + 1, 12),
            (true, 3, 4096 * 14336, 12),
        ] {
            assert_eq!(default_gemv_batch_max_m(sg, low, w), want, "{sg} {low} {w}");
        }
        // window splits whose GEMV launches take several vectors
        for (w, want) in [
            (1024 * 4096, 48),
            (4096 * 4096, 48),
            (4096 * 4096 + 1, 16),
            (8192 * 4096, 16),
            (8192 * 4096 + 1, 48),
            (128256 * 4096, 48),
        ] {
            assert_eq!(super::default_gemv_many_batch_max_m(w, false), want, "{w}");
        }
        // ... in lane order
        for (w, want) in [
            (512 * 4096, 96),
            (1024 * 4096, 96),
            (1024 * 4096 + 1, usize::MAX),
            (6144 * 4096, usize::MAX),
            (128256 * 4096, usize::MAX),
        ] {
            assert_eq!(super::default_gemv_many_batch_max_m(w, true), want, "{w}");
        }
    }

    /// Blocks cover the rows exactly once, hold at most 512 rows, reach the target workgroup
    /// count where the rows allow it, and the invocations sharing a row cover the block.
    #[test]
    fn activation_blocks_cover_the_rows() {
        for (wgs, up) in [1u32, 6, 128, 448, 512, 1024, 4096]
            .into_iter()
            .flat_map(|w| [(w, false), (w, true)])
        {
            for m in (1usize..=130).chain([200, 256, 300, 512]) {
                let (mb, nb) = m_split(m, wgs, up);
                let (mb, nb) = (mb as usize, nb as usize);
                assert!(
                    (1..=512).contains(&mb) && nb >= 1,
                    "m {m} wgs {wgs}: {mb} x {nb}"
                );
                assert!(
                    mb * nb >= m && mb * (nb - 1) < m,
                    "m {m} wgs {wgs}: {mb} x {nb}"
                );
                if m > 128 {
                    assert_eq!(mb % 128, 0);
                } else {
                    let want = (512usize).div_ceil(wgs as usize).min(m);
                    assert!(
                        nb >= want.min(m.div_ceil(mb)),
                        "m {m} wgs {wgs}: {nb} blocks"
                    );
                }
                // rows an invocation set covers: 4 per invocation, 128 / kparts invocation sets
                assert!(4 * (128 / kparts(mb) as usize) >= mb, "m {m}: block {mb}");
            }
        }
        assert_eq!(m_split(32, 128, false), (16, 2));
        assert_eq!(m_split(128, 128, false), (32, 4));
        assert_eq!(m_split(8, 128, false), (8, 1));
        assert_eq!(m_split(32, 448, false), (32, 1));
        assert_eq!(m_split(32, 512, false), (32, 1));
        assert_eq!(m_split(512, 128, false), (128, 4));
        assert_eq!(m_split(512, 448, false), (512, 1));
        assert_eq!(m_split(512, 448, true), (256, 2));
        // other targets (LinearOptions::gemm_target_workgroups)
        assert_eq!(m_split_with(128, 128, false, 1024), (16, 8));
        assert_eq!(m_split_with(128, 128, false, 1), (128, 1));
        assert_eq!(m_split_with(512, 128, false, 1024), (128, 4));
        assert_eq!(m_split_with(512, 128, false, 256), (256, 2));
    }
}
