//! Coded matrices on the GPU: upload, decode (`wgsl/rans_decode.wgsl`) and the fused GEMV
//! (`wgsl/rans_gemv.wgsl`).

use super::slot_table::TABLE_PRECISION;
use super::{
    check_storage, grid, read_back, storage_empty, storage_init, wait, Dispatch, GpuError, Kernel,
    PipelineRegistry,
};

/// Groups of 32 lanes per workgroup in the rANS kernels (`G` in the WGSL).
const GROUPS_PER_WG: u32 = 4;

/// Invocations per workgroup of the lanes kernel (`WG` in `wgsl/rans_decode_lanes.wgsl`):
/// 128 / W chunks, a group of W invocations each.
const LANES_WG: u32 = 128;

/// A borrowed coded matrix in the layout of docs/FORMAT.md (the tensors of section 6 and the
/// header fields they need). Built from a [`crate::rans::EncodedMatrix`] with `From`, or by hand
/// (tests build corrupt ones).
#[derive(Debug, Clone, Copy)]
pub struct CodedMatrixRef<'a> {
    /// `R` rows.
    pub rows: usize,
    /// `K` weights per row.
    pub cols: usize,
    /// Bits per weight `b`, 1..=8.
    pub bits: u32,
    /// Weights per symbol `w`: 1, 2 or 4, `b * w <= 8`.
    pub weights_per_symbol: u32,
    /// Probability precision `n`, 8..=15 (a slot table is used for `n <= 11`, a binary search
    /// over the cumulative frequencies above).
    pub precision: u32,
    /// Rows per chunk.
    pub chunk_rows: usize,
    /// Chunks per tile.
    pub tile_chunks: usize,
    /// `n_tiles * A` frequencies.
    pub freqs: &'a [u16],
    /// `n_chunks * 32` initial states.
    pub states: &'a [u32],
    /// `n_chunks + 1` word offsets.
    pub offsets: &'a [u32],
    /// The u16 word stream.
    pub words: &'a [u16],
}

impl<'a> From<&'a crate::rans::EncodedMatrix> for CodedMatrixRef<'a> {
    fn from(e: &'a crate::rans::EncodedMatrix) -> Self {
        CodedMatrixRef {
            rows: e.rows(),
            cols: e.cols(),
            bits: e.bits(),
            weights_per_symbol: e.weights_per_symbol(),
            precision: e.precision(),
            chunk_rows: e.chunk_rows(),
            tile_chunks: e.tile_chunks(),
            freqs: e.freqs(),
            states: e.states(),
            offsets: e.offsets(),
            words: e.words(),
        }
    }
}

/// MLX scales and biases of a matrix (`rows * cols / group_size` each, row-major), for the
/// fused GEMV.
#[derive(Debug, Clone, Copy)]
pub struct QuantParamsRef<'a> {
    /// MLX group size (a multiple of the weights per symbol).
    pub group_size: u32,
    /// Scales.
    pub scales: &'a [f32],
    /// Biases.
    pub biases: &'a [f32],
    /// How to store them on the GPU; `None`: the narrowest exact format
    /// ([`super::SideFormat::exact_for`]). A format in which a value is not exact is an error.
    pub side: Option<super::SideFormat>,
}

/// A quantized matrix's group size, scales and biases, stored in the narrowest exact format.
impl<'a> From<&'a crate::quant::QuantizedMatrix> for QuantParamsRef<'a> {
    fn from(q: &'a crate::quant::QuantizedMatrix) -> Self {
        QuantParamsRef {
            group_size: q.group_size,
            scales: &q.scales,
            biases: &q.biases,
            side: None,
        }
    }
}

/// What the decode kernel writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeOutput {
    /// MLX packed `u32` words, `rows * cols * bits / 32` (needs `cols * bits % 32 == 0`).
    Packed,
    /// One byte per weight, four per `u32`, `rows * cols / 4` words (needs `cols % 4 == 0`).
    BytePerWeight,
}

/// What the fused GEMV kernels are specialised on: a matrix's symbol layout and row geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusedLayout {
    /// Weights per symbol `w`.
    pub wps: u32,
    /// Bits per weight `b`.
    pub bits: u32,
    /// Probability bits `n`.
    pub prec: u32,
    /// MLX group size.
    pub group_size: u32,
    /// `K`, weights per row.
    pub cols: u32,
    /// `T = ceil(K / (32 w))`, decode steps per row.
    pub steps_per_row: u32,
    /// Workgroups of the launch (the default picks the blocked kernels' table form by it).
    pub workgroups: u32,
    /// Raw low bits per weight beside the coded ones ([`crate::rans::SplitMatrix`]; 0 =
    /// none): 2 with 2-bit symbols of 4 weights, on the blocked and workgroup kernels.
    pub low_bits: u32,
    /// The coded symbols are in [`crate::rans::SplitOrder::RowPairs`] order: each coded row
    /// (`cols` here) is two matrix rows interleaved; the blocked kernels (with 8-step blocks)
    /// and the workgroup kernels run it, the subgroup kernels do not.
    pub row_pairs: bool,
    /// With `low_bits` 3: the window start of a window split
    /// ([`crate::rans::SplitMatrix::encode_window`]: 1-bit flags eight to a symbol, three raw
    /// bits per weight), which the blocked and the workgroup fused kernels run. 0 otherwise.
    pub window_start: u32,
    /// How the (scale, bias) pairs are stored.
    pub side: super::SideFormat,
    /// The kernel reads each tile's decode table from binding 1 as the host built it
    /// (`slot_table::blocked_slot_tables`, [`GpuCodedMatrix::set_tables_in_memory`]) instead
    /// of building it from the frequencies there: the blocked kernels, and the workgroup
    /// kernel at 8 to 11 probability bits; [`fused_gemv_pipeline`] refuses it for the others
    /// ([`GpuError::Unsupported`]).
    pub tables_in_memory: bool,
    /// The activations come quantized to 8 bits ([`super::quantize_x8_dispatch`],
    /// [`super::X8Order::Window`]) and the dot products run on `dot4I8Packed`: window splits
    /// on the blocked kernels only ([`GpuCodedMatrix::gemv_x8_dispatch`]; approximate).
    pub x8_activations: bool,
    /// Groups of 32 lanes per chunk in the blocked fused kernel (1, 2 or 4; `DUP` in
    /// `rans_gemv_blocked.wgsl`): above 1 each of them decodes the whole chunk and multiplies
    /// every `chunk_subgroups`-th block. Window splits with chunks of at most 4 coded rows
    /// only; the other kernels ignore it.
    pub chunk_subgroups: u32,
    /// Activation vectors multiplied per launch (`NVEC` in `rans_gemv_blocked.wgsl`): 1, or up
    /// to [`MAX_GEMV_VECTORS`] for window splits on the blocked kernels with f32 activations
    /// and one group of 32 lanes a chunk ([`GpuCodedMatrix::gemv_many_dispatch`]), each chunk
    /// decoded once for all of them.
    pub vectors: u32,
    /// The activations come in lane order ([`super::x_lane_order`], `XLANES`): window splits
    /// in row pairs on f32 activations, blocked kernels only
    /// ([`GpuCodedMatrix::gemv_many_lane_order_dispatch`]).
    pub lane_order_x: bool,
}

/// What a fused GEMV launch reads as activations.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Activations {
    /// f32, each vector in column order
    Columns,
    /// f32, each vector in lane order ([`super::x_lane_order`])
    Lanes,
    /// 8-bit ([`super::quantize_x8_dispatch`])
    X8,
}

/// The most activation vectors one launch of [`GpuCodedMatrix::gemv_many_dispatch`] multiplies
/// (the kernel's accumulators: two a vector and lane in row pairs).
pub const MAX_GEMV_VECTORS: u32 = 16;

/// From this many workgroups on, the blocked kernels run with the compact decode table by
/// default ([`FusedVariant::BlockedCompact`]). On an H100 and an H200 (132 SMs) the u32
/// table's build ran 1.4-1.6x longer at 704 workgroups than at 640, as if five of its
/// workgroups fit an SM (660 in one wave) where the compact build's registers allow ten; past
/// that the compact one was 1.15-1.49x faster at every form and shape measured (704-1024
/// workgroups), while at 512-640 workgroups with K = 14336 the u32 table was up to 1.10x
/// faster (BENCHMARKS.md issue 5, step 84; step 26 had set 1024 before window splits and
/// tables in memory). A GPU with fewer or smaller SMs fills up at fewer workgroups, so this
/// errs toward the u32 table there.
pub const COMPACT_TABLE_FROM_WORKGROUPS: u32 = 660;

/// From this many workgroups on, matrices of at most [`COMPACT_TABLE_MAX_SHORT_K`] inputs
/// take the compact decode table too: at K = 2048 and 4096 it was 1.00-1.10x faster from 512
/// workgroups (window splits, 2 + 2 splits and whole symbols; BENCHMARKS.md issue 5, step
/// 84), and 1.04-1.12x slower at 64-256.
pub const COMPACT_TABLE_SHORT_K_FROM_WORKGROUPS: u32 = 512;

/// The largest number of inputs (matrix columns) that [`COMPACT_TABLE_SHORT_K_FROM_WORKGROUPS`]
/// applies to.
pub const COMPACT_TABLE_MAX_SHORT_K: u32 = 4096;

impl FusedLayout {
    /// The steps per block of `rans_gemv_blocked.wgsl` for this layout (8, 4 or 2, the largest
    /// that divides the steps per row), or `None` where that kernel cannot run it: rows that
    /// are not whole steps (`K != 32 w T`), fewer than 2 steps per row or an odd count, more
    /// than 11 probability bits (no slot table), or an MLX group size that is not a multiple
    /// of `4 w` (the kernel multiplies words of four symbols with one (scale, bias); 0, no
    /// groups, is a decode-only matrix and passes).
    pub fn blocked_steps(&self) -> Option<u32> {
        let t = self.steps_per_row;
        if self.prec > 11
            || t == 0
            || self.cols as u64 != 32 * self.wps as u64 * t as u64
            || !self.group_size.is_multiple_of(4 * self.wps)
        {
            return None;
        }
        [8, 4, 2].into_iter().find(|b| t.is_multiple_of(*b))
    }

    /// The steps per block of `rans_gemv_blocked.wgsl` for a window split (4: a lane multiplies
    /// one word of four symbols per block), or `None` where it cannot run it (not a window
    /// split, or rows that are not whole 4-step blocks).
    pub fn window_block(&self) -> Option<u32> {
        (self.low_bits == WINDOW_LOW_BITS && self.blocked_steps().is_some())
            .then_some(4)
            .filter(|_| self.steps_per_row.is_multiple_of(4))
    }

    /// Whether the lanes fused GEMV (`rans_gemv_lanes.wgsl`, [`lanes_gemv_width`]) takes
    /// these byte symbols: coded whole (`bits * wps == 8`, rows in order) or a split 2 + 2
    /// matrix (2-bit symbols of four weights and two raw bits a weight, rows or row pairs),
    /// <= 11 probability bits, coded rows of whole words of four symbols and MLX groups of
    /// whole words (`4 wps` weights), so that each word multiplies one group's activations.
    pub fn lanes_symbol_words(&self) -> bool {
        let word = 4 * self.wps;
        let form = match self.low_bits {
            0 => !self.row_pairs,
            2 => true,
            _ => false,
        };
        form && self.bits * self.wps == 8
            && self.prec <= 11
            && self.cols > 0
            && self.cols.is_multiple_of(word)
            && self.group_size > 0
            && self.group_size.is_multiple_of(word)
    }

    /// The matrix's inputs: `cols`, or half of it in row-pair order (a coded row is two
    /// matrix rows).
    pub fn inputs(&self) -> u32 {
        if self.row_pairs {
            self.cols / 2
        } else {
            self.cols
        }
    }

    /// The blocked kernel's table form for this launch: [`FusedVariant::BlockedCompact`] for
    /// one vector of f32 activations of a window split in row pairs with one group of 32
    /// lanes a chunk, at any size (the one-vector GEMV ran 1.00-1.28x faster with it than
    /// with the u32 table at each of Llama-3-8B's five shapes on an H200 and an H100, in lane
    /// and in column order; BENCHMARKS.md issue 5, step 89); otherwise from
    /// [`COMPACT_TABLE_FROM_WORKGROUPS`] workgroups on, and from
    /// [`COMPACT_TABLE_SHORT_K_FROM_WORKGROUPS`] for at most [`COMPACT_TABLE_MAX_SHORT_K`]
    /// inputs; else [`FusedVariant::Blocked`]. (Several vectors a launch, 8-bit activations
    /// and several groups a chunk keep the workgroup rule: not re-timed.)
    pub fn blocked_variant(&self) -> FusedVariant {
        if self.low_bits == WINDOW_LOW_BITS
            && self.row_pairs
            && self.vectors <= 1
            && !self.x8_activations
            && self.chunk_subgroups <= 1
        {
            return FusedVariant::BlockedCompact;
        }
        let short_k = self.inputs() <= COMPACT_TABLE_MAX_SHORT_K;
        if self.workgroups >= COMPACT_TABLE_FROM_WORKGROUPS
            || (short_k && self.workgroups >= COMPACT_TABLE_SHORT_K_FROM_WORKGROUPS)
        {
            FusedVariant::BlockedCompact
        } else {
            FusedVariant::Blocked
        }
    }
}

/// The fused GEMV pipeline for a matrix's layout. The subgroup kernels are specialised per
/// layout through override constants, so the compiler drops the other layouts' code; every
/// launcher of `rans_gemv*.wgsl` (this module, `crate::linear`) takes its pipeline from here so
/// they run the same code. [`FusedVariant::Blocked`] fails with [`GpuError::Unsupported`] where
/// [`FusedLayout::blocked_steps`] is `None`.
pub fn fused_gemv_pipeline(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    variant: FusedVariant,
    layout: &FusedLayout,
) -> Result<wgpu::ComputePipeline, GpuError> {
    fused_gemv_pipeline_diag(device, registry, variant, layout, 0)
}

/// [`fused_gemv_pipeline`] with the blocked kernel's diagnostic build `diag` (0 = the kernel).
fn fused_gemv_pipeline_diag(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    variant: FusedVariant,
    layout: &FusedLayout,
    diag: u32,
) -> Result<wgpu::ComputePipeline, GpuError> {
    // 32 tells the kernels the group size is not a power of two: they divide.
    let gshift = if layout.group_size.is_power_of_two() {
        layout.group_size.trailing_zeros()
    } else {
        32
    };
    let blocked = variant.is_blocked();
    if layout.row_pairs
        && (variant == FusedVariant::Subgroup
            || (blocked && layout.blocked_steps() != Some(8) && layout.window_block().is_none()))
    {
        return Err(GpuError::Unsupported(format!(
            "row-pair order (SplitOrder::RowPairs) runs on the blocked fused kernel with 8-step \
             blocks and on the workgroup kernel, not the {variant:?} kernel ({} steps per coded \
             row)",
            layout.steps_per_row
        )));
    }
    if layout.x8_activations && (layout.low_bits != WINDOW_LOW_BITS || !blocked) {
        return Err(GpuError::Unsupported(format!(
            "8-bit activations run on the blocked fused kernels with window splits, not the \
             {variant:?} kernel with {} raw low bits per weight",
            layout.low_bits
        )));
    }
    if layout.vectors != 1 {
        check_gemv_vectors(layout.vectors)?;
        if !blocked
            || layout.low_bits != WINDOW_LOW_BITS
            || layout.x8_activations
            || layout.chunk_subgroups > 1
            || diag != 0
        {
            return Err(GpuError::Unsupported(format!(
                "{} activation vectors a launch run on the blocked fused kernels for window \
                 splits with f32 activations and one group of 32 lanes a chunk, not the \
                 {variant:?} kernel with {} raw low bits per weight, {} activations, {} groups \
                 a chunk{}",
                layout.vectors,
                layout.low_bits,
                if layout.x8_activations {
                    "8-bit"
                } else {
                    "f32"
                },
                layout.chunk_subgroups,
                if diag != 0 { ", diagnostic build" } else { "" }
            )));
        }
    }
    if layout.low_bits == WINDOW_LOW_BITS {
        check_window(layout.bits, layout.wps, layout.window_start)?;
        if variant == FusedVariant::Subgroup || layout.window_block().is_none() {
            return Err(GpuError::Unsupported(format!(
                "a window split (1-bit flags eight to a symbol, three raw bits) runs on the \
                 blocked fused kernel with 4-step blocks and on the workgroup kernel, for coded \
                 rows of whole 1024-weight blocks, not the {variant:?} kernel with {} steps per \
                 coded row",
                layout.steps_per_row
            )));
        }
    } else if layout.low_bits != 0 {
        check_low_bits(layout.low_bits, layout.bits, layout.wps)?;
        if variant == FusedVariant::Subgroup {
            return Err(GpuError::Unsupported(
                "the subgroup fused kernel cannot read raw low bits (the blocked and the \
                 workgroup kernels can)"
                    .into(),
            ));
        }
    }
    if layout.tables_in_memory && !fused_reads_tables(variant, layout.prec) {
        return Err(GpuError::Unsupported(format!(
            "the {variant:?} fused kernel does not read decode tables from memory at {} \
             probability bits",
            layout.prec
        )));
    }
    // (the workgroup variant on a registry with lanes kernels, of the forms the lanes decode
    // takes: the lanes fused GEMV, as the decode runs the lanes decode)
    if let Some(w) = variant_lanes_width(registry, variant, layout) {
        return registry.get(
            device,
            Kernel::RansGemvLanes,
            "main",
            &[
                ("LOW", layout.low_bits),
                ("WPS", layout.wps),
                ("BITS", layout.bits),
                ("PREC", layout.prec),
                ("PAIR", layout.row_pairs as u32),
                ("WSTART", layout.window_start),
                ("W", w),
                ("GSHIFT", gshift),
                layout.side.constant(),
            ],
        );
    }
    match variant {
        FusedVariant::Workgroup => registry.get(
            device,
            Kernel::RansGemv,
            "main",
            &[
                ("TABLE_MEM", layout.tables_in_memory as u32),
                layout.side.constant(),
            ],
        ),
        FusedVariant::Subgroup => registry.get(
            device,
            Kernel::RansGemvSubgroup,
            "main",
            &[
                ("WPS", layout.wps),
                ("BITS", layout.bits),
                ("PREC", layout.prec),
                ("GSHIFT", gshift),
                layout.side.constant(),
            ],
        ),
        FusedVariant::Blocked | FusedVariant::BlockedCompact => {
            let block =
                layout
                    .window_block()
                    .or(layout.blocked_steps())
                    .ok_or_else(|| {
                        GpuError::Unsupported(format!(
                    "the blocked fused kernel needs whole 32-symbol steps per row in an even \
                     count, <= 11 probability bits and groups of whole 4-symbol words (cols \
                     {}, {} weights per symbol, {} steps per row, precision {}, group size {})",
                    layout.cols, layout.wps, layout.steps_per_row, layout.prec, layout.group_size
                ))
                    })?;
            let kernel = if variant == FusedVariant::Blocked {
                Kernel::RansGemvBlocked
            } else {
                Kernel::RansGemvBlockedCompact
            };
            registry.get(
                device,
                kernel,
                "main",
                &[
                    ("WPS", layout.wps),
                    ("BITS", layout.bits),
                    ("PREC", layout.prec),
                    ("GSHIFT", gshift),
                    ("BLOCK", block),
                    ("DIAG", diag),
                    ("TABLE_MEM", layout.tables_in_memory as u32),
                    ("LOW", layout.low_bits),
                    // (see the kernel: late second-word loads keep the compact build with raw
                    // low bits at 8 workgroups per SM on an H200)
                    (
                        "LATE",
                        (variant == FusedVariant::BlockedCompact
                            && layout.low_bits != 0
                            && !layout.row_pairs) as u32,
                    ),
                    ("PAIR", layout.row_pairs as u32),
                    ("WSTART", layout.window_start),
                    ("XI8", layout.x8_activations as u32),
                    ("DUP", layout.chunk_subgroups.max(1)),
                    ("NVEC", layout.vectors.max(1)),
                    ("XLANES", layout.lane_order_x as u32),
                    layout.side.constant(),
                    // (not for window splits: with the branch their compact build runs
                    // 4096x4096 1.05x faster and a Llama-3-8B token 0.8%, issue 5 step 86)
                    (
                        "BRANCH_FREE_PLANES",
                        (variant == FusedVariant::BlockedCompact
                            && layout.row_pairs
                            && layout.low_bits != WINDOW_LOW_BITS) as u32,
                    ),
                ],
            )
        }
    }
}

/// Whether the fused GEMV `variant` reads host-built decode tables
/// ([`FusedLayout::tables_in_memory`]) where it is given them: the blocked kernels (issue 5
/// step 65) and, for 8 to 11 probability bits (the tables' range), the workgroup kernel
/// (`rans_gemv.wgsl`, step 122); the subgroup kernel builds its table.
pub(crate) fn fused_reads_tables(variant: FusedVariant, prec: u32) -> bool {
    variant.is_blocked() || (variant == FusedVariant::Workgroup && TABLE_PRECISION.contains(&prec))
}

/// The group width W at which the workgroup fused GEMV ([`FusedVariant::Workgroup`]) of
/// `layout` runs on the lanes kernels' decode (`rans_gemv_lanes.wgsl`: no barrier a step,
/// W invocations a chunk) instead of `rans_gemv.wgsl`: on a registry with lanes kernels
/// ([`PipelineRegistry::subgroup_lanes`]), for the forms the lanes decode takes, with <= 11
/// probability bits:
/// * a window split in coded rows of whole 4-step blocks ([`FusedLayout::window_block`]:
///   1024-weight rows, MLX groups of a multiple of 32);
/// * byte symbols (`bits * wps == 8`: coded whole, or a split 2 + 2 matrix, in rows or row
///   pairs) in rows of whole words of four symbols, with MLX groups of whole words
///   ([`FusedLayout::lanes_symbol_words`]);
///
/// whose decode tables the host built ([`FusedLayout::tables_in_memory`]), one vector of f32
/// activations in column order a launch and one group a chunk. `None` elsewhere. Its launches
/// run 128 / W chunks a workgroup.
pub fn lanes_gemv_width(registry: &PipelineRegistry, layout: &FusedLayout) -> Option<u32> {
    let form = match layout.low_bits {
        WINDOW_LOW_BITS => layout.window_block().is_some(),
        _ => layout.lanes_symbol_words(),
    };
    let runs = form
        && layout.tables_in_memory
        && layout.vectors <= 1
        && !layout.x8_activations
        && !layout.lane_order_x
        && layout.chunk_subgroups <= 1;
    registry.subgroup_lanes().filter(|_| runs)
}

/// [`lanes_gemv_width`] where the fused GEMV `variant` of `layout` runs on the lanes kernel:
/// the workgroup variant only (the other variants are the 32-wide subgroup kernels).
pub(crate) fn variant_lanes_width(
    registry: &PipelineRegistry,
    variant: FusedVariant,
    layout: &FusedLayout,
) -> Option<u32> {
    lanes_gemv_width(registry, layout).filter(|_| variant == FusedVariant::Workgroup)
}

/// `p` launched on a lanes kernel of group width `w` (`rans_decode_lanes.wgsl`,
/// `rans_gemv_lanes.wgsl`): `128 / w` chunks a workgroup of 128 invocations. The caller sets
/// `wg_x` from the new `total_wg`. `p` is left as it was on an error.
pub(crate) fn set_lanes_geometry(p: &mut CodedParams, w: u32) -> Result<(), GpuError> {
    let wg_per_tile = p.tile_chunks.div_ceil(LANES_WG / w);
    p.total_wg = u32_of("workgroups", p.n_tiles as usize * wg_per_tile as usize)?;
    p.wg_per_tile = wg_per_tile;
    Ok(())
}

/// Why the cooperative GEMV (`wgsl/rans_gemv_coop.wgsl`) cannot run the coded matrix `p`
/// describes, whatever the device: it needs a window split in row pairs of inputs a multiple
/// of [`super::COOP_BLOCK_COLS`], MLX groups of 64 or 128 and 8..=11 probability bits.
pub(crate) fn coop_layout_refusal(p: &CodedParams) -> Option<String> {
    let k = p.cols / 2;
    if p.low_bits != WINDOW_LOW_BITS || p.row_pairs == 0 {
        Some(format!(
            "the cooperative GEMV runs window splits in row pairs (window split {}, row pairs {})",
            p.low_bits == WINDOW_LOW_BITS,
            p.row_pairs != 0
        ))
    } else if k == 0 || !(k as usize).is_multiple_of(super::COOP_BLOCK_COLS) {
        Some(format!(
            "the cooperative GEMV needs inputs a multiple of {}, not {k}",
            super::COOP_BLOCK_COLS
        ))
    } else if p.group_size != 64 && p.group_size != 128 {
        Some(format!(
            "the cooperative GEMV needs MLX groups of 64 or 128, not {}",
            p.group_size
        ))
    } else if !TABLE_PRECISION.contains(&p.prec) {
        Some(format!(
            "the cooperative GEMV needs 8..=11 probability bits, not {}",
            p.prec
        ))
    } else {
        None
    }
}

/// `p` launched as the cooperative GEMV: eight chunks (groups of 32 lanes) a workgroup.
pub(crate) fn coop_params(device: &wgpu::Device, p: &CodedParams) -> Result<CodedParams, GpuError> {
    let mut q = *p;
    q.wg_per_tile = q.tile_chunks.div_ceil(8);
    q.total_wg = u32_of("workgroups", q.n_tiles as usize * q.wg_per_tile as usize)?;
    q.wg_x = grid(device, q.total_wg).0;
    q.out_mode = 2;
    Ok(q)
}

/// The cooperative GEMV's pipeline for `p`'s layout (checked by [`coop_layout_refusal`]),
/// (scale, bias) pairs in `side`, `vectors` vectors and diagnostic build `diag` (0: the
/// kernel). Every launcher of `rans_gemv_coop.wgsl` takes its pipeline from here.
pub(crate) fn coop_gemv_pipeline(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    p: &CodedParams,
    side: super::SideFormat,
    vectors: u32,
    diag: u32,
) -> Result<wgpu::ComputePipeline, GpuError> {
    registry.get(
        device,
        Kernel::RansGemvCoop,
        "main",
        &[
            ("PREC", p.prec),
            ("GSHIFT", p.group_size.trailing_zeros()),
            ("WSTART", p.window_start),
            ("NVEC", vectors),
            ("DIAG", diag),
            side.constant(),
        ],
    )
}

/// Raw low bits the GPU kernels run: 2 beside 2-bit symbols of four weights (4-bit weights).
/// Checks that coded rows of `cols` weights (`wps` per symbol) in row-pair order are two
/// matrix rows of whole runs ([`crate::rans::ROW_PAIR_RUN_SYMBOLS`] symbols); the reason if not.
pub(crate) fn check_row_pair_cols(cols: usize, wps: u32) -> Result<(), String> {
    let run = crate::rans::ROW_PAIR_RUN_SYMBOLS * wps as usize;
    if cols.is_multiple_of(2 * run) {
        Ok(())
    } else {
        Err(format!(
            "row-pair coded rows of {cols} weights are not two rows of whole {run}-weight runs"
        ))
    }
}

/// Checks a count of activation vectors per fused launch: 1..=[`MAX_GEMV_VECTORS`].
pub(crate) fn check_gemv_vectors(n: u32) -> Result<(), GpuError> {
    if (1..=MAX_GEMV_VECTORS).contains(&n) {
        Ok(())
    } else {
        Err(GpuError::InvalidInput(format!(
            "{n} activation vectors a fused GEMV launch: 1..={MAX_GEMV_VECTORS}"
        )))
    }
}

/// Raw bits per weight of a window split ([`crate::rans::SplitMatrix::encode_window`]).
pub(crate) const WINDOW_LOW_BITS: u32 = 3;

/// Checks the coded part of a window split: 1-bit flags, eight to a symbol, and a window start
/// below 16.
pub(crate) fn check_window(bits: u32, wps: u32, start: u32) -> Result<(), GpuError> {
    if bits == 1 && wps == crate::rans::WINDOW_FLAGS_PER_SYMBOL && start < 16 {
        Ok(())
    } else {
        Err(GpuError::Unsupported(format!(
            "a window split on the GPU: 1-bit flags eight to a symbol with a window start below \
             16, not {bits}-bit symbols of {wps} starting at {start}"
        )))
    }
}

pub(crate) fn check_low_bits(low_bits: u32, bits: u32, wps: u32) -> Result<(), GpuError> {
    if low_bits == 2 && bits == 2 && wps == 4 {
        Ok(())
    } else {
        Err(GpuError::Unsupported(format!(
            "raw low bits on the GPU: only 2 beside 2-bit symbols of 4 weights (4-bit weights), \
             not {low_bits} beside {bits}-bit symbols of {wps}"
        )))
    }
}

/// The fused kernel every launcher runs by default for `layout`: on adapters with 32-wide
/// subgroups the blocked kernel where [`FusedLayout::blocked_steps`] allows it (1.17-1.25x
/// faster than the subgroup kernel on an H200, BENCHMARKS.md issue 5 step 23), with the
/// table form [`FusedLayout::blocked_variant`] picks, else the subgroup kernel; the
/// workgroup-memory kernel on every other adapter.
pub fn default_fused_variant(registry: &PipelineRegistry, layout: &FusedLayout) -> FusedVariant {
    if !registry.subgroups32() {
        FusedVariant::Workgroup
    } else if layout.blocked_steps().is_none() {
        // (the subgroup kernel does not read a split matrix's raw low bits)
        if layout.low_bits == 0 {
            FusedVariant::Subgroup
        } else {
            FusedVariant::Workgroup
        }
    } else {
        layout.blocked_variant()
    }
}

/// Which implementation of the fused GEMV to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedVariant {
    /// `rans_gemv.wgsl`: workgroup-memory bitmask and one workgroupBarrier per step; runs on
    /// every adapter. Its decode counterpart is `rans_decode.wgsl`, or, for window splits,
    /// byte symbols and split 2 + 2 matrices decoded to packed words with the host's tables
    /// on a registry with lanes kernels, `rans_decode_lanes.wgsl` without the barrier
    /// ([`GpuCodedMatrix::decode_lanes_width`]).
    Workgroup,
    /// `rans_gemv_subgroup.wgsl`: subgroup ballot, shuffle and add; needs 32-wide subgroups
    /// ([`PipelineRegistry::subgroups32`]).
    Subgroup,
    /// `rans_gemv_blocked.wgsl`: the subgroup kernel decoding 2-8 steps before their dot
    /// products; needs 32-wide subgroups and a layout [`FusedLayout::blocked_steps`] accepts.
    Blocked,
    /// [`Self::Blocked`] with the compact decode table (`wgsl/lib/rans_table_byte.wgsl`: a
    /// byte per slot, 3.1 KB of workgroup memory instead of 8.7): one more dependent read per
    /// step, more workgroups resident per SM.
    BlockedCompact,
}

impl FusedVariant {
    /// Whether this is one of the blocked kernels ([`Self::Blocked`], [`Self::BlockedCompact`]),
    /// which share `rans_gemv_blocked.wgsl` and its decode tables.
    pub fn is_blocked(self) -> bool {
        matches!(self, FusedVariant::Blocked | FusedVariant::BlockedCompact)
    }
}

/// Uniform block of the rANS decode and fused GEMV kernels (`rans_decode*.wgsl`,
/// `rans_gemv*.wgsl`: the same field order), filled here and by the linear layers' bands.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CodedParams {
    pub(crate) rows: u32,
    pub(crate) cols: u32,
    pub(crate) bits: u32,
    pub(crate) wps: u32,
    pub(crate) prec: u32,
    pub(crate) chunk_rows: u32,
    pub(crate) tile_chunks: u32,
    pub(crate) n_chunks: u32,
    pub(crate) n_tiles: u32,
    pub(crate) syms_per_row: u32,
    pub(crate) steps_per_row: u32,
    pub(crate) alphabet: u32,
    pub(crate) n_words: u32,
    pub(crate) wg_per_tile: u32,
    pub(crate) total_wg: u32,
    pub(crate) out_mode: u32,
    pub(crate) out_row_words: u32,
    pub(crate) wg_x: u32,
    pub(crate) chunk_iters: u32,
    pub(crate) group_size: u32,
    pub(crate) groups_per_row: u32,
    /// u32 index in `words` where a split matrix's raw low bits start (blocked kernels).
    pub(crate) low_base: u32,
    /// Raw low bits per weight of a split matrix (0 or 2; the blocked kernels take it as the
    /// override `LOW`).
    pub(crate) low_bits: u32,
    /// Always 0. `rans_gemv_blocked.wgsl` ORs it into the constant of its int-to-float
    /// conversion, so the driver holds that constant in a register and masks and ORs each
    /// weight in one bit operation instead of two (BENCHMARKS.md issue 5, step 49).
    pub(crate) zero: u32,
    /// 1: the symbols are in [`crate::rans::SplitOrder::RowPairs`] order (the workgroup
    /// kernels read it from here, the blocked ones take the override `PAIR`).
    pub(crate) row_pairs: u32,
    /// The window start of a window split ([`crate::rans::SplitMatrix::encode_window`];
    /// `low_bits` 3, the blocked fused kernel takes it as the override `WSTART`), else 0.
    pub(crate) window_start: u32,
    /// Groups of 32 lanes per chunk of the blocked fused GEMV (0 or 1: one; see
    /// [`set_chunk_subgroups`]); the kernels read the override, not this field.
    pub(crate) chunk_subgroups: u32,
    pub(crate) _pad3: u32,
}

impl CodedParams {
    /// The fused GEMV layout these parameters describe, with (scale, bias) pairs in `side`.
    pub(crate) fn fused_layout(&self, side: super::SideFormat) -> FusedLayout {
        FusedLayout {
            wps: self.wps,
            bits: self.bits,
            prec: self.prec,
            group_size: self.group_size,
            cols: self.cols,
            steps_per_row: self.steps_per_row,
            // (with several groups a chunk, the launch's workgroups with one, from which the
            // default picks the table form either way)
            workgroups: if self.chunk_subgroups > 1 {
                self.n_tiles * self.tile_chunks.div_ceil(GROUPS_PER_WG)
            } else {
                self.total_wg
            },
            low_bits: self.low_bits,
            row_pairs: self.row_pairs != 0,
            window_start: self.window_start,
            side,
            tables_in_memory: false,
            x8_activations: false,
            chunk_subgroups: self.chunk_subgroups.max(1),
            vectors: 1,
            lane_order_x: false,
        }
    }
}

/// What the decode kernels bind of a coded matrix: its parameters and buffers, those of a
/// [`GpuCodedMatrix`] or of a linear layer's row band (`crate::linear`, which decodes a layer
/// into plain weights for calls of many rows).
pub(crate) struct DecodeSource<'a> {
    pub(crate) params: &'a CodedParams,
    pub(crate) side: super::SideFormat,
    pub(crate) freqs: &'a wgpu::Buffer,
    /// The tiles' decode tables built on the host (`super::slot_table`). A window split with
    /// them decodes in `rans_decode_window.wgsl`, which loads them instead of building its
    /// table from `freqs` in every workgroup; other matrices, and window splits without them,
    /// decode in `rans_decode_blocked.wgsl`, which builds it.
    pub(crate) tables: Option<&'a wgpu::Buffer>,
    pub(crate) states: &'a wgpu::Buffer,
    pub(crate) offsets: &'a wgpu::Buffer,
    pub(crate) words: &'a wgpu::Buffer,
    /// The per-chunk error flags the launch sets.
    pub(crate) errors: &'a wgpu::Buffer,
}

impl DecodeSource<'_> {
    /// Bits per weight, coded and raw together.
    fn bits(&self) -> u32 {
        self.params.bits + self.params.low_bits
    }

    /// u32 words of the output in `mode`.
    pub(crate) fn output_words(&self, mode: DecodeOutput) -> Result<u64, GpuError> {
        let p = self.params;
        let (r, k, bits) = (p.rows as u64, p.cols as u64, self.bits() as u64);
        match mode {
            DecodeOutput::Packed if !(k * bits).is_multiple_of(32) => Err(GpuError::Unsupported(
                format!("packed output needs cols * bits % 32 == 0 (cols {k}, bits {bits})"),
            )),
            DecodeOutput::Packed => Ok(r * (k * bits / 32)),
            DecodeOutput::BytePerWeight if k % 4 != 0 => Err(GpuError::Unsupported(format!(
                "byte-per-weight output needs cols % 4 == 0 (cols {k})"
            ))),
            DecodeOutput::BytePerWeight => Ok(r * k / 4),
        }
    }

    /// See [`GpuCodedMatrix::decode_blocked_supported`].
    pub(crate) fn blocked_supported(
        &self,
        registry: &PipelineRegistry,
        mode: DecodeOutput,
    ) -> bool {
        let p = self.params;
        let layout = p.fused_layout(self.side);
        registry.subgroups32()
            && mode == DecodeOutput::Packed
            && p.bits * p.wps == 8
            && if p.low_bits == WINDOW_LOW_BITS {
                // (4-step blocks)
                layout.window_block().is_some()
            } else {
                layout.blocked_steps() == Some(8)
            }
    }

    /// See [`GpuCodedMatrix::decode_subgroup_supported`].
    pub(crate) fn subgroup_supported(
        &self,
        registry: &PipelineRegistry,
        mode: DecodeOutput,
    ) -> bool {
        let bw = self.params.bits * self.params.wps;
        registry.subgroups32()
            && mode == DecodeOutput::Packed
            && matches!(bw, 1 | 2 | 4 | 8)
            && self.params.low_bits == 0
    }

    /// The kernel [`GpuCodedMatrix::decode_dispatch`] runs.
    pub(crate) fn default_variant(
        &self,
        registry: &PipelineRegistry,
        mode: DecodeOutput,
    ) -> FusedVariant {
        if self.blocked_supported(registry, mode) {
            self.params.fused_layout(self.side).blocked_variant()
        } else if self.subgroup_supported(registry, mode) {
            FusedVariant::Subgroup
        } else {
            FusedVariant::Workgroup
        }
    }

    /// Whether the decode of `variant` reads host-built decode tables where it is given them:
    /// the workgroup kernel (`rans_decode.wgsl`, `TABLE_MEM`) for every matrix with 8 to 11
    /// probability bits (the tables' range); among the blocked ones, window splits with them
    /// run their own kernel (`rans_decode_window.wgsl`); the others, and window splits
    /// without them, `rans_decode_blocked.wgsl`, which builds its table (issue 5 step 116:
    /// the byte-symbol decode ran slower with them).
    pub(crate) fn reads_tables(&self, variant: FusedVariant) -> bool {
        match variant {
            FusedVariant::Workgroup => TABLE_PRECISION.contains(&self.params.prec),
            _ => variant.is_blocked() && self.params.low_bits == WINDOW_LOW_BITS,
        }
    }

    /// The group width of the lanes kernel (`rans_decode_lanes.wgsl`) where the decode of
    /// `variant` runs on it: the workgroup variant decoding to packed words with the host's
    /// tables (`tables`) on a registry with lanes kernels
    /// ([`PipelineRegistry::subgroup_lanes`]), of a window split in coded rows of whole
    /// 1024-weight blocks, a matrix coded whole in byte symbols (`bits * wps == 8`) or a split
    /// 2 + 2 matrix. `None` where the decode runs elsewhere.
    fn lanes_width(
        &self,
        registry: &PipelineRegistry,
        mode: DecodeOutput,
        variant: FusedVariant,
        tables: bool,
    ) -> Option<u32> {
        let p = &self.params;
        // (a split matrix: 2-bit symbols of four weights' high bits and 2 raw bits a weight)
        let form = match p.low_bits {
            WINDOW_LOW_BITS => self.window_rows_whole(),
            0 | 2 => p.bits * p.wps == 8,
            _ => false,
        };
        let runs =
            variant == FusedVariant::Workgroup && tables && mode == DecodeOutput::Packed && form;
        registry.subgroup_lanes().filter(|_| runs)
    }

    /// Whether some decode kernel can run this matrix into `mode` on `registry`'s device (a
    /// window split needs coded rows of whole 1024-weight blocks: [`Self::window_rows_whole`]).
    pub(crate) fn decodable(&self, registry: &PipelineRegistry, mode: DecodeOutput) -> bool {
        self.output_words(mode).is_ok()
            && (self.params.low_bits != WINDOW_LOW_BITS
                || self.blocked_supported(registry, mode)
                || self.window_rows_whole())
    }

    /// Whether a window split's coded rows are whole 1024-weight blocks of raw words (32
    /// words of 32 weights, `ecq::rans::SplitMatrix::encode_window`'s planes), the rows the
    /// workgroup decode kernel runs (as the fused kernels do, [`FusedLayout::window_block`]).
    fn window_rows_whole(&self) -> bool {
        self.params.cols.is_multiple_of(32 * 32)
    }

    /// The decode launch of `variant` into `out` (see [`GpuCodedMatrix::decode_dispatch_with`]),
    /// its parameters in the uniform buffer `uniform` gives for them.
    pub(crate) fn dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        out: &wgpu::Buffer,
        mode: DecodeOutput,
        variant: FusedVariant,
        uniform: impl FnOnce(CodedParams) -> wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        // (bound whole: wgpu's validation would panic on a buffer past the binding limit)
        super::BufferRange::from(out).check_binding_size(device, "out")?;
        let blocked = variant.is_blocked();
        if blocked && !self.blocked_supported(registry, mode) {
            return Err(GpuError::Unsupported(
                "the blocked decode kernel needs 32-wide subgroups, packed output, byte symbols, \
                 whole 32-symbol steps per row in a multiple of 8 and <= 11 probability bits"
                    .into(),
            ));
        }
        if self.params.low_bits == WINDOW_LOW_BITS {
            check_window(self.params.bits, self.params.wps, self.params.window_start)?;
            if variant == FusedVariant::Workgroup && !self.window_rows_whole() {
                return Err(GpuError::Unsupported(format!(
                    "a window split decodes on the workgroup kernel in coded rows of whole \
                     1024-weight blocks, not of {} weights",
                    self.params.cols
                )));
            }
        }
        // (this also refuses row-pair order, which only split matrices have)
        if self.params.low_bits != 0 && variant == FusedVariant::Subgroup {
            return Err(GpuError::Unsupported(
                "the subgroup decode kernel cannot read raw low bits (the blocked and the \
                 workgroup kernels can)"
                    .into(),
            ));
        }
        if variant == FusedVariant::Subgroup && !self.subgroup_supported(registry, mode) {
            return Err(GpuError::Unsupported(
                "the subgroup decode kernel needs 32-wide subgroups, packed output and 1, 2, 4 or 8-bit symbols"
                    .into(),
            ));
        }
        let need = self.output_words(mode)? * 4;
        if out.size() < need {
            return Err(GpuError::InvalidInput(format!(
                "output buffer has {} bytes, needs {need}",
                out.size()
            )));
        }
        let mut p = *self.params;
        let tables = self.tables.filter(|_| self.reads_tables(variant));
        let lanes = self.lanes_width(registry, mode, variant, tables.is_some());
        if let Some(w) = lanes {
            set_lanes_geometry(&mut p, w)?;
        }
        let (x, y) = grid(device, p.total_wg);
        p.wg_x = x;
        p.out_mode = (mode == DecodeOutput::BytePerWeight) as u32;
        p.out_row_words = match mode {
            DecodeOutput::Packed => p.cols * self.bits() / 32,
            DecodeOutput::BytePerWeight => p.cols / 4,
        };
        let uniform = uniform(p);
        let compact = variant == FusedVariant::BlockedCompact;
        let pipeline = match (variant, lanes) {
            (FusedVariant::Workgroup, Some(w)) => registry.get(
                device,
                Kernel::RansDecodeLanes,
                "main",
                &[
                    ("LOW", p.low_bits),
                    ("PREC", p.prec),
                    ("PAIR", p.row_pairs),
                    ("WSTART", p.window_start),
                    ("W", w),
                ],
            )?,
            (FusedVariant::Workgroup, None) => registry.get(
                device,
                Kernel::RansDecode,
                "main",
                &[("TABLE_MEM", tables.is_some() as u32)],
            )?,
            (FusedVariant::Subgroup, _) => registry.get(
                device,
                Kernel::RansDecodeSubgroup,
                "main",
                &[("PREC", p.prec), ("BW", p.bits * p.wps)],
            )?,
            (FusedVariant::Blocked | FusedVariant::BlockedCompact, _) if tables.is_some() => {
                registry.get(
                    device,
                    if compact {
                        Kernel::RansDecodeWindowCompact
                    } else {
                        Kernel::RansDecodeWindow
                    },
                    "main",
                    &[
                        ("PREC", p.prec),
                        ("PAIR", p.row_pairs),
                        ("WSTART", p.window_start),
                    ],
                )?
            }
            (FusedVariant::Blocked | FusedVariant::BlockedCompact, _) => registry.get(
                device,
                if compact {
                    Kernel::RansDecodeBlockedCompact
                } else {
                    Kernel::RansDecodeBlocked
                },
                "main",
                &[
                    ("PREC", p.prec),
                    ("LOW", p.low_bits),
                    ("PAIR", p.row_pairs),
                    ("WSTART", p.window_start),
                ],
            )?,
        };
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("rans_decode"),
            layout: &layout,
            entries: &[
                entry(0, &uniform),
                entry(1, tables.unwrap_or(self.freqs)),
                entry(2, self.states),
                entry(3, self.offsets),
                entry(4, self.words),
                entry(5, self.errors),
                entry(6, out),
            ],
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            workgroups: (x, y),
        })
    }
}

fn u32_of(what: &str, v: usize) -> Result<u32, GpuError> {
    u32::try_from(v).map_err(|_| GpuError::InvalidInput(format!("{what} = {v} exceeds u32")))
}

/// Whether the blocked fused GEMV can run `p`'s matrix with `n` groups of 32 lanes per chunk
/// (`DUP` in `rans_gemv_blocked.wgsl`): 1 always; 2 or 4 for window splits with chunks of at
/// most 4 coded rows (the kernel adds a chunk's row sums in workgroup memory, four rows per
/// group).
pub(crate) fn check_chunk_subgroups(p: &CodedParams, n: u32) -> Result<(), GpuError> {
    if ![1, 2, 4].contains(&n) {
        return Err(GpuError::InvalidInput(format!(
            "groups of 32 lanes per chunk must be 1, 2 or 4, not {n}"
        )));
    }
    if n > 1 && (p.low_bits != WINDOW_LOW_BITS || p.chunk_rows > 4) {
        return Err(GpuError::Unsupported(format!(
            "{n} groups of 32 lanes a chunk need a window split on the blocked kernel with \
             chunks of at most 4 coded rows (chunk rows {}, {})",
            p.chunk_rows,
            if p.low_bits == WINDOW_LOW_BITS {
                "a window split"
            } else {
                "not a window split"
            }
        )));
    }
    Ok(())
}

/// `p` launched with `n` groups of 32 lanes per chunk (checked by [`check_chunk_subgroups`]):
/// `4 / n` chunks per workgroup of four groups.
/// `p` is left as it was on an error.
pub(crate) fn set_chunk_subgroups(p: &mut CodedParams, n: u32) -> Result<(), GpuError> {
    check_chunk_subgroups(p, n)?;
    let wg_per_tile = p.tile_chunks.div_ceil(GROUPS_PER_WG / n);
    p.total_wg = u32_of("workgroups", p.n_tiles as usize * wg_per_tile as usize)?;
    p.wg_per_tile = wg_per_tile;
    p.chunk_subgroups = n;
    Ok(())
}

impl CodedMatrixRef<'_> {
    /// Chunks: `ceil(rows / chunk_rows)`, 0 for an empty matrix.
    pub fn n_chunks(&self) -> usize {
        if self.rows == 0 || self.cols == 0 || self.chunk_rows == 0 {
            0
        } else {
            self.rows.div_ceil(self.chunk_rows)
        }
    }

    /// Tiles: `ceil(n_chunks / tile_chunks)`.
    pub fn n_tiles(&self) -> usize {
        self.n_chunks().div_ceil(self.tile_chunks.max(1))
    }

    /// Checks geometry and tensor lengths (not contents: the kernel reports corrupt contents
    /// per chunk).
    pub fn check(&self) -> Result<(), GpuError> {
        let bad = |s: String| Err(GpuError::InvalidInput(s));
        let (b, w) = (self.bits, self.weights_per_symbol);
        if !(1..=8).contains(&b) {
            return bad(format!("bits = {b}, must be 1..=8"));
        }
        if ![1, 2, 4, 8].contains(&w) || b * w > 8 {
            return bad(format!(
                "weights per symbol {w} with {b} bits (need 1, 2, 4 or 8 and b*w <= 8)"
            ));
        }
        if !self.cols.is_multiple_of(w as usize) {
            return bad(format!(
                "cols {} not a multiple of weights per symbol {w}",
                self.cols
            ));
        }
        if !(8..=15).contains(&self.precision) {
            return bad(format!("precision {} outside 8..=15", self.precision));
        }
        if self.chunk_rows == 0 || self.tile_chunks == 0 {
            return bad("chunk_rows and tile_chunks must be >= 1".into());
        }
        let nc = self.n_chunks();
        let a = 1usize << (b * w);
        if self.freqs.len() != self.n_tiles() * a {
            return bad(format!(
                "freqs has {} entries, expected n_tiles {} * A {a}",
                self.freqs.len(),
                self.n_tiles()
            ));
        }
        if self.states.len() != nc * 32 {
            return bad(format!(
                "states has {} entries, expected {}",
                self.states.len(),
                nc * 32
            ));
        }
        if self.offsets.len() != nc + 1 && !(nc == 0 && self.offsets.len() <= 1) {
            return bad(format!(
                "offsets has {} entries, expected {}",
                self.offsets.len(),
                nc + 1
            ));
        }
        u32_of("rows", self.rows)?;
        u32_of("cols", self.cols)?;
        u32_of("words", self.words.len())?;
        u32_of("rows * cols", self.rows.saturating_mul(self.cols))?;
        Ok(())
    }
}

/// A coded matrix uploaded to the GPU (plus, optionally, its scales and biases).
#[derive(Debug)]
pub struct GpuCodedMatrix {
    params: CodedParams,
    freqs: wgpu::Buffer,
    states: wgpu::Buffer,
    offsets: wgpu::Buffer,
    words: wgpu::Buffer,
    errors: wgpu::Buffer,
    sb: Option<wgpu::Buffer>,
    side: super::SideFormat,
    /// Uniform buffers made for launches, by their parameters' bytes (a launch's workgroup
    /// counts and output mode differ with the kernel and the groups a chunk).
    uniform_cache: std::sync::Mutex<Vec<(CodedParams, wgpu::Buffer)>>,
    coded_bytes: u64,
    /// [`crate::rans::SplitOrder::RowPairs`]: `params` describe the coded `rows / 2 x 2 cols`
    /// matrix (with the real row's groups in `groups_per_row`).
    row_pairs: bool,
    /// The tiles' frequencies, kept for the decode tables built on the host
    /// (`src/gpu/slot_table.rs`) the first time a launch reads them from memory.
    host_freqs: Vec<u16>,
    /// Those tables once built.
    slot_tables: std::sync::OnceLock<wgpu::Buffer>,
    /// The blocked fused kernels read those tables instead of building theirs
    /// ([`Self::set_tables_in_memory`]).
    tables_in_memory: bool,
    /// Groups of 32 lanes per chunk in the blocked fused GEMV ([`Self::set_chunk_subgroups`]).
    chunk_subgroups: u32,
}

impl GpuCodedMatrix {
    /// Uploads `m` (checked with [`CodedMatrixRef::check`]) and, for the fused GEMV, `quant`.
    pub fn upload(
        device: &wgpu::Device,
        m: CodedMatrixRef<'_>,
        quant: Option<QuantParamsRef<'_>>,
    ) -> Result<Self, GpuError> {
        Self::upload_with_low_bits(device, m, 0, &[], quant)
    }

    /// Uploads a [`crate::rans::SplitMatrix`]: its coded high bits and raw low bits. The GPU
    /// runs 4-bit weights split 2 + 2 only (other splits fail with [`GpuError::Unsupported`]),
    /// with the blocked kernels where they run and the workgroup kernels elsewhere; the
    /// subgroup kernels refuse them. The low bits' checksum is not checked here
    /// (see [`crate::rans::SplitMatrix::verify_checksums`]).
    pub fn upload_split(
        device: &wgpu::Device,
        m: &crate::rans::SplitMatrix,
        quant: Option<QuantParamsRef<'_>>,
    ) -> Result<Self, GpuError> {
        let row_pairs = m.order() == crate::rans::SplitOrder::RowPairs;
        Self::upload_parts(
            device,
            m.high().into(),
            m.low_bits(),
            m.low(),
            quant,
            row_pairs,
            m.window(),
        )
    }

    /// [`Self::upload`] with `low_bits` raw low bits per weight (MLX-packed, `rows * cols *
    /// low_bits / 32` words in `low`) beside the coded high bits of `m` (0: none, `low` empty).
    pub fn upload_with_low_bits(
        device: &wgpu::Device,
        m: CodedMatrixRef<'_>,
        low_bits: u32,
        low: &[u32],
        quant: Option<QuantParamsRef<'_>>,
    ) -> Result<Self, GpuError> {
        Self::upload_parts(device, m, low_bits, low, quant, false, None)
    }

    /// [`Self::upload_with_low_bits`]; with `row_pairs`, `m` is the coded part of a
    /// [`crate::rans::SplitOrder::RowPairs`] split matrix and `quant` the real matrix's.
    fn upload_parts(
        device: &wgpu::Device,
        m: CodedMatrixRef<'_>,
        low_bits: u32,
        low: &[u32],
        quant: Option<QuantParamsRef<'_>>,
        row_pairs: bool,
        window: Option<u8>,
    ) -> Result<Self, GpuError> {
        m.check()?;
        if m.weights_per_symbol == crate::rans::WINDOW_FLAGS_PER_SYMBOL && window.is_none() {
            return Err(GpuError::Unsupported(
                "eight weights per symbol: the GPU kernels take them only as a window split's \
                 flags (SplitMatrix::encode_window)"
                    .into(),
            ));
        }
        if row_pairs {
            check_row_pair_cols(m.cols, m.weights_per_symbol).map_err(GpuError::InvalidInput)?;
        }
        let low = if low_bits == 0 {
            if !low.is_empty() {
                return Err(GpuError::InvalidInput(
                    "low bits given with low_bits = 0".into(),
                ));
            }
            None
        } else {
            match window {
                Some(start) if low_bits == WINDOW_LOW_BITS => {
                    check_window(m.bits, m.weights_per_symbol, start.into())?
                }
                Some(_) => {
                    return Err(GpuError::InvalidInput(format!(
                        "a window split has {WINDOW_LOW_BITS} raw bits per weight, not {low_bits}"
                    )))
                }
                None => check_low_bits(low_bits, m.bits, m.weights_per_symbol)?,
            }
            let expected = m.rows as u64 * m.cols as u64 * low_bits as u64 / 32;
            if low.len() as u64 != expected {
                return Err(GpuError::InvalidInput(format!(
                    "low bits have {} words, expected {expected}",
                    low.len()
                )));
            }
            Some(low)
        };
        let nc = m.n_chunks();
        let b = m.bits;
        let w = m.weights_per_symbol;
        let s = m.cols / w as usize;
        let t = s.div_ceil(32);
        let wg_per_tile = m.tile_chunks.div_ceil(GROUPS_PER_WG as usize);
        let total_wg = m.n_tiles() * wg_per_tile;
        let mut params = CodedParams {
            rows: m.rows as u32,
            cols: m.cols as u32,
            bits: b,
            wps: w,
            prec: m.precision,
            chunk_rows: u32_of("chunk_rows", m.chunk_rows.min(m.rows.max(1)))?,
            tile_chunks: u32_of("tile_chunks", m.tile_chunks)?,
            n_chunks: u32_of("n_chunks", nc)?,
            n_tiles: u32_of("n_tiles", m.n_tiles())?,
            syms_per_row: s as u32,
            steps_per_row: t as u32,
            alphabet: 1 << (b * w),
            n_words: m.words.len() as u32,
            wg_per_tile: u32_of("workgroups per tile", wg_per_tile)?,
            total_wg: u32_of("workgroups", total_wg)?,
            chunk_iters: 1,
            ..Default::default()
        };
        // chunk_rows larger than rows: the only chunk has `rows` rows; keep the format's value
        // for the chunk-to-row mapping (chunk 0 starts at row 0 either way).
        params.chunk_rows = u32_of("chunk_rows", m.chunk_rows)?;
        params.row_pairs = row_pairs as u32;
        params.window_start = window.map_or(0, u32::from);
        let mut side = super::SideFormat::F32;
        let sb = match quant {
            None => None,
            Some(q) => {
                let gs = q.group_size as usize;
                // (a matrix row's weights: with row pairs a coded row holds two)
                let cols = m.cols / (1 + row_pairs as usize);
                if gs == 0 || !cols.is_multiple_of(gs) || !gs.is_multiple_of(w as usize) {
                    return Err(GpuError::InvalidInput(format!(
                        "group size {gs} must divide cols {cols} and be a multiple of w = {w}"
                    )));
                }
                let n = m.rows * (m.cols / gs);
                if q.scales.len() != n || q.biases.len() != n {
                    return Err(GpuError::InvalidInput(format!(
                        "scales/biases have {}/{} entries, expected {n}",
                        q.scales.len(),
                        q.biases.len()
                    )));
                }
                params.group_size = q.group_size;
                // (with row pairs, a matrix row's: the kernels index (scale, bias) by matrix
                // rows)
                params.groups_per_row = (cols / gs) as u32;
                side = q
                    .side
                    .unwrap_or_else(|| super::SideFormat::exact_for(q.scales, q.biases));
                side.check_exact(q.scales, q.biases)?;
                Some(storage_init(
                    device,
                    "scales+biases",
                    &side.pack(q.scales, q.biases),
                    wgpu::BufferUsages::empty(),
                )?)
            }
        };
        let none = wgpu::BufferUsages::empty();
        let offsets: &[u32] = if m.offsets.is_empty() {
            &[0]
        } else {
            m.offsets
        };
        // the stream's u16 words, then (split matrices) the raw low bits from a u32 boundary
        let stream: std::borrow::Cow<'_, [u16]> = match low {
            None => m.words.into(),
            Some(low) => {
                let mut v = m.words.to_vec();
                v.resize(m.words.len().next_multiple_of(2), 0);
                // (the raw bits go into `words` because the fused kernel's eight storage
                // buffers are WebGPU's default limit)
                params.low_base = u32_of("low bits offset", v.len() / 2)?;
                params.low_bits = low_bits;
                v.extend_from_slice(bytemuck::cast_slice(low));
                v.into()
            }
        };
        u32_of("words and low bits", stream.len())?;
        let coded_bytes =
            (m.freqs.len() * 2 + m.states.len() * 4 + m.offsets.len() * 4 + stream.len() * 2)
                as u64;
        Ok(GpuCodedMatrix {
            params,
            freqs: storage_init(device, "ecq_freqs", bytemuck::cast_slice(m.freqs), none)?,
            states: storage_init(device, "ecq_states", bytemuck::cast_slice(m.states), none)?,
            offsets: storage_init(device, "ecq_offsets", bytemuck::cast_slice(offsets), none)?,
            words: storage_init(device, "ecq_words", bytemuck::cast_slice(&stream), none)?,
            errors: storage_empty(device, "ecq chunk errors", nc as u64 * 4)?,
            sb,
            side,
            uniform_cache: Default::default(),
            coded_bytes,
            row_pairs,
            host_freqs: m.freqs.to_vec(),
            slot_tables: Default::default(),
            tables_in_memory: true,
            chunk_subgroups: 1,
        })
    }

    /// With `on` (the default), the blocked fused GEMV kernels ([`FusedVariant::Blocked`],
    /// [`FusedVariant::BlockedCompact`]) read each tile's decode table, built once on the host
    /// at the first such launch and kept in GPU memory (2.5 KiB a tile at 11 probability bits,
    /// about 0.02 bits per weight with the encoder's default tiles of 32 chunks; see
    /// `src/gpu/slot_table.rs`), instead of building it from the frequencies in every
    /// workgroup: 1.03-1.19x faster per matrix on an H200 (BENCHMARKS.md issue 5, step 65).
    /// The GPU decode of a window split reads them too (`rans_decode_window.wgsl`: 1.03-1.23x
    /// faster, step 116), and so do the workgroup kernels, the ones devices without 32-wide
    /// subgroups run (the decode `rans_decode.wgsl`, step 121, and the fused GEMV
    /// `rans_gemv.wgsl`, step 122); the other blocked decodes build theirs. Same results, bit
    /// for bit; corrupt frequencies are reported the same way. `false` saves that memory.
    pub fn set_tables_in_memory(&mut self, on: bool) {
        self.tables_in_memory = on;
    }

    /// Whether the kernels that can read host-built decode tables read them
    /// ([`Self::set_tables_in_memory`]).
    pub fn tables_in_memory(&self) -> bool {
        self.tables_in_memory
    }

    /// Groups of 32 lanes per chunk in the blocked fused GEMV of a window split: 1 (the
    /// default), 2 or 4. Above 1, each of a chunk's groups decodes the whole chunk and
    /// multiplies every second or fourth block; their row sums are added in workgroup memory,
    /// in a fixed order (results as exact as with 1, not bit-identical to them). That pays
    /// only where the launch leaves the GPU few groups to switch between: on an H100 and an
    /// H200 (132 SMs), two groups ran matrices of 128-512 chunks 1.10-1.15x faster
    /// (1024x4096 and 2048x2048 in row pairs), broke even at 1024 chunks and were 1.4-1.5x
    /// slower from 2048; four groups gained nothing (BENCHMARKS.md issue 5, step 80). So
    /// consider 2 for matrices of up to about four chunks per SM of the GPU
    /// ([`Self::n_chunks`]).
    /// The other fused kernels, the decode and the 8-bit-activation GEMV's pre-pass ignore it.
    ///
    /// Fails with [`GpuError::InvalidInput`] for other counts, and with
    /// [`GpuError::Unsupported`] above 1 unless the matrix is a window split
    /// ([`crate::rans::SplitMatrix::encode_window`]) with chunks of at most 4 coded rows.
    pub fn set_chunk_subgroups(&mut self, n: u32) -> Result<(), GpuError> {
        check_chunk_subgroups(&self.params, n)?;
        self.chunk_subgroups = n;
        Ok(())
    }

    /// Groups of 32 lanes per chunk in the blocked fused GEMV ([`Self::set_chunk_subgroups`]).
    pub fn chunk_subgroups(&self) -> u32 {
        self.chunk_subgroups
    }

    /// The tiles' decode tables (`src/gpu/slot_table.rs`), built on the host and uploaded on
    /// first use.
    fn slot_tables(&self, device: &wgpu::Device) -> Result<&wgpu::Buffer, GpuError> {
        if let Some(b) = self.slot_tables.get() {
            return Ok(b);
        }
        let p = &self.params;
        if !TABLE_PRECISION.contains(&p.prec) {
            return Err(GpuError::Unsupported(format!(
                "decode tables in memory need 8..=11 probability bits, not {}",
                p.prec
            )));
        }
        let t = super::slot_table::blocked_slot_tables(
            &self.host_freqs,
            p.alphabet as usize,
            p.prec,
            p.n_tiles as usize,
        );
        let b = storage_init(
            device,
            "ecq decode tables",
            bytemuck::cast_slice(&t),
            wgpu::BufferUsages::empty(),
        )?;
        // (a racing caller's buffer is dropped; both are the same table)
        Ok(self.slot_tables.get_or_init(|| b))
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.params.rows as usize * (1 + self.row_pairs as usize)
    }

    /// Weights per row.
    pub fn cols(&self) -> usize {
        self.params.cols as usize / (1 + self.row_pairs as usize)
    }

    /// Whether the coded symbols are in [`crate::rans::SplitOrder::RowPairs`] order.
    pub fn row_pairs(&self) -> bool {
        self.row_pairs
    }

    /// Bits per weight (coded and raw together).
    pub fn bits(&self) -> u32 {
        self.params.bits + self.params.low_bits
    }

    /// Raw low bits per weight beside the coded ones (0 unless uploaded split).
    pub fn low_bits(&self) -> u32 {
        self.params.low_bits
    }

    /// Chunks: each is decoded by one group of 32 lanes (or [`Self::chunk_subgroups`] of
    /// them), so this is the fused launch's parallelism.
    pub fn n_chunks(&self) -> usize {
        self.params.n_chunks as usize
    }

    /// Bytes of the coded tensors (frequencies, states, offsets, words, raw low bits) on the
    /// GPU.
    pub fn coded_bytes(&self) -> u64 {
        self.coded_bytes
    }

    /// Bytes of the decode tables held on the GPU for the kernels that read them
    /// ([`Self::set_tables_in_memory`]): 0 until its first launch that reads them.
    pub fn table_bytes(&self) -> u64 {
        self.slot_tables.get().map_or(0, wgpu::Buffer::size)
    }

    /// The interleaved (scale, bias) buffer and the MLX group size given at upload, if any.
    pub(crate) fn quant_params(&self) -> Option<(&wgpu::Buffer, u32, super::SideFormat)> {
        self.sb
            .as_ref()
            .map(|b| (b, self.params.group_size, self.side))
    }

    /// How the (scale, bias) pairs given at upload are stored.
    pub fn side_format(&self) -> super::SideFormat {
        self.side
    }

    /// The per-chunk error buffer (`n_chunks` u32, zero when clean). [`Self::decode`] and
    /// [`Self::gemv`] clear and check it; after recording [`Dispatch`]es yourself, clear it
    /// before and check it with [`Self::check_errors`] after.
    pub fn errors_buffer(&self) -> &wgpu::Buffer {
        &self.errors
    }

    fn uniform(&self, device: &wgpu::Device, params: CodedParams) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        let mut cache = self.uniform_cache.lock().expect("uniform cache");
        let key = bytemuck::bytes_of(&params);
        if let Some((_, b)) = cache.iter().find(|(p, _)| bytemuck::bytes_of(p) == key) {
            return b.clone();
        }
        let b = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("ecq params"),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        cache.push((params, b.clone()));
        b
    }

    /// The buffers and parameters the decode kernels bind, borrowed from this matrix.
    fn decode_source(&self) -> DecodeSource<'_> {
        DecodeSource {
            params: &self.params,
            side: self.side,
            freqs: &self.freqs,
            tables: None,
            states: &self.states,
            offsets: &self.offsets,
            words: &self.words,
            errors: &self.errors,
        }
    }

    /// The decode launch writing into `out` (at least the output size in bytes: `rows * cols *
    /// bits / 8` packed, `rows * cols` one byte per weight). Uses the blocked kernel where
    /// [`Self::decode_blocked_supported`] allows it (with the table form
    /// [`FusedLayout::blocked_variant`] picks), else the subgroup kernel where
    /// [`Self::decode_subgroup_supported`] does.
    pub fn decode_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        out: &wgpu::Buffer,
        mode: DecodeOutput,
    ) -> Result<Dispatch, GpuError> {
        let v = self.decode_source().default_variant(registry, mode);
        self.decode_dispatch_with(device, registry, out, mode, v)
    }

    /// Whether `rans_decode_blocked.wgsl` can decode this matrix: 32-wide subgroups, packed
    /// output, byte symbols (`bits * weights_per_symbol == 8`) and a layout whose
    /// [`FusedLayout::blocked_steps`] is 8 (for a window split: whose
    /// [`FusedLayout::window_block`] is set; with its tables in memory,
    /// [`Self::set_tables_in_memory`], it runs `rans_decode_window.wgsl` under the same
    /// conditions). Elsewhere window splits in coded rows of whole 1024-weight blocks decode
    /// in the workgroup kernel, `rans_decode.wgsl`, as every other matrix does.
    pub fn decode_blocked_supported(
        &self,
        registry: &PipelineRegistry,
        mode: DecodeOutput,
    ) -> bool {
        self.decode_source().blocked_supported(registry, mode)
    }

    /// The group width W at which [`FusedVariant::Workgroup`]'s decode of this matrix into
    /// `mode` runs the lanes kernel (`rans_decode_lanes.wgsl`: no barrier a step) instead of
    /// `rans_decode.wgsl` on `registry`'s device: where the registry has lanes kernels
    /// ([`PipelineRegistry::subgroup_lanes`]), for packed output of a window split in coded
    /// rows of whole 1024-weight blocks, of byte symbols (`bits * weights_per_symbol == 8`) or
    /// of a split 2 + 2 matrix, with the decode tables built on the host
    /// ([`Self::set_tables_in_memory`], 8 to 11 probability bits). `None` elsewhere.
    pub fn decode_lanes_width(
        &self,
        registry: &PipelineRegistry,
        mode: DecodeOutput,
    ) -> Option<u32> {
        let d = self.decode_source();
        let tables = self.decode_reads_host_tables(&d, FusedVariant::Workgroup);
        d.lanes_width(registry, mode, FusedVariant::Workgroup, tables)
    }

    /// Whether the decode of `variant` (through `source`, this matrix's) gets the decode
    /// tables built on the host: this matrix keeps them in memory
    /// ([`Self::set_tables_in_memory`]), the kernel reads them and the precision is in their
    /// range.
    fn decode_reads_host_tables(&self, source: &DecodeSource<'_>, variant: FusedVariant) -> bool {
        self.tables_in_memory
            && source.reads_tables(variant)
            && TABLE_PRECISION.contains(&self.params.prec)
    }

    /// Whether `rans_decode_subgroup.wgsl` can decode this matrix: 32-wide subgroups, packed
    /// output, symbols of `bits * weights_per_symbol` in 1, 2, 4 or 8 bits and no raw low
    /// bits.
    pub fn decode_subgroup_supported(
        &self,
        registry: &PipelineRegistry,
        mode: DecodeOutput,
    ) -> bool {
        self.decode_source().subgroup_supported(registry, mode)
    }

    /// [`decode_dispatch`](Self::decode_dispatch) with an explicit variant:
    /// [`FusedVariant::Workgroup`] runs `rans_decode.wgsl`, [`FusedVariant::Subgroup`]
    /// `rans_decode_subgroup.wgsl` (fails with [`GpuError::Unsupported`] unless
    /// [`Self::decode_subgroup_supported`]), [`FusedVariant::Blocked`] and
    /// [`FusedVariant::BlockedCompact`] `rans_decode_blocked.wgsl` with either table (unless
    /// [`Self::decode_blocked_supported`]; a window split reading its tables from memory,
    /// [`Self::set_tables_in_memory`], runs `rans_decode_window.wgsl` instead).
    pub fn decode_dispatch_with(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        out: &wgpu::Buffer,
        mode: DecodeOutput,
        variant: FusedVariant,
    ) -> Result<Dispatch, GpuError> {
        let mut source = self.decode_source();
        // (the fused GEMV's tables, where this matrix reads them from memory, built only for
        // a decode that reads them)
        if self.decode_reads_host_tables(&source, variant) {
            source.tables = Some(self.slot_tables(device)?);
        }
        source.dispatch(device, registry, out, mode, variant, |p| {
            self.uniform(device, p)
        })
    }

    /// The fused kernel [`Self::gemv_dispatch`] and [`Self::gemv`] run for this matrix on
    /// `registry`'s device ([`default_fused_variant`]).
    pub fn default_fused_variant(&self, registry: &PipelineRegistry) -> FusedVariant {
        default_fused_variant(registry, &self.fused_layout())
    }

    /// [`Self::default_fused_variant`] for a launch of `vectors` activation vectors, on 8-bit
    /// activations or not (the table form can depend on both,
    /// [`FusedLayout::blocked_variant`]).
    pub fn default_fused_variant_for(
        &self,
        registry: &PipelineRegistry,
        vectors: u32,
        x8: bool,
    ) -> FusedVariant {
        let mut layout = self.fused_layout();
        layout.vectors = vectors;
        layout.x8_activations = x8;
        default_fused_variant(registry, &layout)
    }

    /// The layout the fused kernels are specialised on.
    pub fn fused_layout(&self) -> FusedLayout {
        FusedLayout {
            tables_in_memory: self.tables_in_memory,
            ..self.params.fused_layout(self.side)
        }
    }

    /// The fused GEMV launch `y = W x` (`x`: `cols` f32, `y`: `rows` f32), with the subgroup
    /// variant where the registry allows it.
    pub fn gemv_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        let v = self.default_fused_variant(registry);
        self.gemv_dispatch_with(device, registry, x, y, v)
    }

    /// [`gemv_dispatch`](Self::gemv_dispatch) with an explicit variant;
    /// [`FusedVariant::Subgroup`] fails with [`GpuError::Unsupported`] unless
    /// [`PipelineRegistry::subgroups32`].
    pub fn gemv_dispatch_with(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        variant: FusedVariant,
    ) -> Result<Dispatch, GpuError> {
        self.gemv_dispatch_diag(device, registry, x, y, variant, 0, Activations::Columns, 1)
    }

    /// Whether [`Self::gemv_many_dispatch`] can multiply several vectors a launch on
    /// `registry`'s device: a window split ([`crate::rans::SplitMatrix::encode_window`]) whose
    /// default fused kernel is a blocked one (32-wide subgroups, rows of whole 4-step blocks),
    /// with one group of 32 lanes a chunk ([`Self::set_chunk_subgroups`]).
    pub fn gemv_many_supported(&self, registry: &PipelineRegistry) -> bool {
        self.params.low_bits == WINDOW_LOW_BITS
            && self.chunk_subgroups <= 1
            && self.default_fused_variant(registry).is_blocked()
    }

    /// The fused GEMV launch for `vectors` activation vectors at once, `Y = X W^T`: `x` holds
    /// `vectors` rows of `cols` f32, `y` receives `vectors` rows of `rows` f32. Each chunk is
    /// decoded once and its weights multiplied by every vector, so the launch costs far less
    /// than `vectors` launches of [`Self::gemv_dispatch`] (BENCHMARKS.md issue 5, step 87);
    /// each vector's outputs are computed with the one-vector kernel's arithmetic in the same
    /// order. `vectors` must be 1..=[`MAX_GEMV_VECTORS`] ([`GpuError::InvalidInput`]); above
    /// 1 only where [`Self::gemv_many_supported`] ([`GpuError::Unsupported`]).
    pub fn gemv_many_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        vectors: u32,
    ) -> Result<Dispatch, GpuError> {
        let v = self.default_fused_variant_for(registry, vectors, false);
        self.gemv_many_dispatch_with(device, registry, x, y, vectors, v)
    }

    /// [`Self::gemv_many_dispatch`] with an explicit kernel: above one vector
    /// [`FusedVariant::Blocked`] or [`FusedVariant::BlockedCompact`].
    pub fn gemv_many_dispatch_with(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        vectors: u32,
        variant: FusedVariant,
    ) -> Result<Dispatch, GpuError> {
        self.gemv_dispatch_diag(
            device,
            registry,
            x,
            y,
            variant,
            0,
            Activations::Columns,
            vectors,
        )
    }

    /// Whether [`Self::gemv_many_lane_order_dispatch`] runs this matrix on `registry`'s
    /// device: a window split in row pairs whose default fused kernel is a blocked one.
    pub fn lane_order_supported(&self, registry: &PipelineRegistry) -> bool {
        self.params.low_bits == WINDOW_LOW_BITS
            && self.params.row_pairs != 0
            && self.default_fused_variant(registry).is_blocked()
    }

    /// [`Self::gemv_many_dispatch`] on activations in lane order ([`super::x_lane_order`]):
    /// the same outputs bit for bit, with each block's activations read in whole 128-byte
    /// lines (BENCHMARKS.md issue 5, step 88). Window splits in row pairs only
    /// ([`Self::lane_order_supported`], else [`GpuError::Unsupported`]); one vector a launch
    /// runs the one-vector kernel, which reads lane order too.
    pub fn gemv_many_lane_order_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        vectors: u32,
    ) -> Result<Dispatch, GpuError> {
        let v = self.default_fused_variant_for(registry, vectors, false);
        self.gemv_many_lane_order_dispatch_with(device, registry, x, y, vectors, v)
    }

    /// [`Self::gemv_many_lane_order_dispatch`] with an explicit kernel:
    /// [`FusedVariant::Blocked`] or [`FusedVariant::BlockedCompact`].
    pub fn gemv_many_lane_order_dispatch_with(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        vectors: u32,
        variant: FusedVariant,
    ) -> Result<Dispatch, GpuError> {
        if !self.lane_order_supported(registry) || !variant.is_blocked() {
            return Err(GpuError::Unsupported(format!(
                "activations in lane order need a window split in row pairs on a blocked fused kernel (window split {}, row pairs {}, {variant:?})",
                self.params.low_bits == WINDOW_LOW_BITS,
                self.params.row_pairs != 0
            )));
        }
        self.gemv_dispatch_diag(
            device,
            registry,
            x,
            y,
            variant,
            0,
            Activations::Lanes,
            vectors,
        )
    }

    /// `Y = X W^T` for `vectors` activation vectors (`x`: `vectors` rows of `cols` f32), read
    /// back as `vectors` rows of `rows` f32: launches of [`Self::gemv_many_dispatch`] for up
    /// to [`MAX_GEMV_VECTORS`] vectors each where [`Self::gemv_many_supported`], else one
    /// [`Self::gemv`] a vector. Outputs are filled with NaN first so unwritten rows show.
    pub fn gemv_many(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        vectors: usize,
    ) -> Result<Vec<f32>, GpuError> {
        // (the table form of full launches; a last launch of one vector gives the same
        // outputs with either form)
        let v = self.default_fused_variant_for(registry, MAX_GEMV_VECTORS, false);
        self.gemv_many_with(device, queue, registry, x, vectors, v)
    }

    /// [`Self::gemv_many`] with an explicit kernel: several vectors a launch on the blocked
    /// kernels where [`Self::gemv_many_supported`], one launch a vector on the others.
    pub fn gemv_many_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        vectors: usize,
        variant: FusedVariant,
    ) -> Result<Vec<f32>, GpuError> {
        let many = variant.is_blocked() && self.gemv_many_supported(registry);
        super::gemv_many_runs(
            x,
            vectors,
            self.rows(),
            self.cols(),
            self.n_chunks() == 0,
            many,
            |xv| self.gemv_with(device, queue, registry, xv, variant),
            |xs, n| {
                let xb = super::upload_x(device, xs)?;
                let yb = super::nan_output(device, n * self.rows())?;
                let d =
                    self.gemv_many_dispatch_with(device, registry, &xb, &yb, n as u32, variant)?;
                self.run_and_read(device, queue, &d, &yb, n * self.rows())
            },
        )
    }

    /// Whether [`Self::gemv_x8_dispatch`] can run this matrix on `registry`'s device: a window
    /// split ([`crate::rans::SplitMatrix::encode_window`]) whose default fused kernel is a
    /// blocked one (32-wide subgroups, rows of whole 4-step blocks).
    pub fn x8_supported(&self, registry: &PipelineRegistry) -> bool {
        // (without 32-wide subgroups the default is the workgroup kernel)
        self.params.low_bits == WINDOW_LOW_BITS && self.default_fused_variant(registry).is_blocked()
    }

    /// The fused GEMV launch `y = W x` on activations quantized to 8 bits: `x8` holds
    /// [`super::x8_bytes`]`(cols)` bytes as [`super::quantize_x8_dispatch`] writes them in
    /// [`super::X8Order::Window`], and each lane's 16 columns are multiplied with
    /// `dot4I8Packed`, four weights an instruction, instead of an f32 multiply-add per weight
    /// (BENCHMARKS.md issue 5, step 69). **Approximate**, with [`super::X8Activations`]' bound:
    /// at most `|scale| * d / 2 * sum(q)` per 16-weight piece and row. Window splits only, on
    /// the blocked kernel the default picks ([`Self::x8_supported`]); others get
    /// [`GpuError::Unsupported`].
    pub fn gemv_x8_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x8: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        let v = self.default_fused_variant_for(registry, 1, true);
        self.gemv_x8_dispatch_with(device, registry, x8, y, v)
    }

    /// [`Self::gemv_x8_dispatch`] with an explicit kernel: [`FusedVariant::Blocked`] or
    /// [`FusedVariant::BlockedCompact`] (the others refuse 8-bit activations with
    /// [`GpuError::Unsupported`]).
    pub fn gemv_x8_dispatch_with(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x8: &wgpu::Buffer,
        y: &wgpu::Buffer,
        variant: FusedVariant,
    ) -> Result<Dispatch, GpuError> {
        self.gemv_dispatch_diag(device, registry, x8, y, variant, 0, Activations::X8, 1)
    }

    /// [`Self::gemv_x8_dispatch`] on `x` quantized on the GPU first, read back. `y` is filled
    /// with NaN first so unwritten rows show.
    pub fn gemv_x8(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
    ) -> Result<Vec<f32>, GpuError> {
        let v = self.default_fused_variant_for(registry, 1, true);
        self.gemv_x8_with(device, queue, registry, x, v)
    }

    /// [`Self::gemv_x8`] with an explicit kernel ([`Self::gemv_x8_dispatch_with`]).
    pub fn gemv_x8_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        variant: FusedVariant,
    ) -> Result<Vec<f32>, GpuError> {
        let (r, k) = (self.rows(), self.cols());
        super::check_x_len(x, k)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        let yb = super::nan_output(device, r)?;
        let d =
            super::quantized_launch(device, queue, registry, x, super::X8Order::Window, |x8| {
                self.gemv_x8_dispatch_with(device, registry, x8, &yb, variant)
            })?;
        self.run_and_read(device, queue, &d, &yb, r)
    }

    /// A diagnostic build of the blocked fused kernel (with the table the default picks), for
    /// measuring where its time goes (its
    /// `y` is meaningless): `diag` 1 = the decode alone (no dot products), 2 = the dot products
    /// alone (made-up symbols, the stream never read), 3 = the kernel with each block's second
    /// word multiplied by the first word's activations (a proxy for two rows sharing them), 4 =
    /// 2 and 3 together, 5 = the kernel with a free word supply (renormalisation shifts in a
    /// constant; the stream is never read), 6 = 1 and 5 together, 7 = the kernel with a word
    /// supply per lane (each lane reads words of its own, as a stream laid out by lane would
    /// allow; the words are not its stream's, so the result is wrong), 8 = 1 and 7 together;
    /// for window splits also 9 = the kernel without the sums of the activations (what sums
    /// computed once per token would save) and 10 = the kernel without the window start's
    /// addition (wrong weights), 11 = its loads, table build and chunk setup alone (neither
    /// decode nor dot products), 12 = its table build, chunk setup and row sums alone (no
    /// block run), 13 / 17 = its kernel with two / four rANS states a lane taking the steps in
    /// turn (the independent chains a format with 64 / 128 states a chunk would give; wrong
    /// symbols), 14 / 18 = 13 / 17 with the decode alone, and 15 = its kernel without a slot
    /// table, neither built nor read (wrong symbols), 19 / 20 = its kernel with two / four
    /// groups of 32 lanes a chunk (each decodes all of it and multiplies every second / fourth
    /// block; right results; chunks of at most 4 coded rows); for every layout 16 = the kernel
    /// reading its decode table from memory (built on the host once,
    /// `src/gpu/slot_table.rs`) instead of building it in every workgroup: right results, the
    /// default since step 65 (see [`Self::set_tables_in_memory`]). Other `diag` values are
    /// refused with [`GpuError::InvalidInput`]; layouts or adapters the blocked kernel cannot
    /// run with [`GpuError::Unsupported`].
    pub fn blocked_diagnostic_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        diag: u32,
    ) -> Result<Dispatch, GpuError> {
        let window = self.params.low_bits == WINDOW_LOW_BITS;
        let known = (1..=8).contains(&diag)
            || diag == 16
            || (window && ((9..=15).contains(&diag) || (17..=20).contains(&diag)));
        if !known {
            return Err(GpuError::InvalidInput(format!(
                "blocked diagnostic build {diag}: 1 (decode only), 2 (dot products only), 3 \
                 (activations shared by a block's two words), 4 (2 and 3), 5 (a free word \
                 supply), 6 (1 and 5), 7 (a word supply per lane) or 8 (1 and 7); for window \
                 splits 9 (no activation sums), 10 (no window start), 11 (loads and setup \
                 only), 12 (setup only), 13 / 17 (two / four rANS states a lane), 14 / 18 \
                 (13 / 17 with the decode alone), 15 (no table) or 19 / 20 (two / four \
                 groups of 32 lanes a chunk); 16 (the decode table read from memory)"
            )));
        }
        let v = match self.default_fused_variant(registry) {
            FusedVariant::BlockedCompact => FusedVariant::BlockedCompact,
            _ => FusedVariant::Blocked,
        };
        self.gemv_dispatch_diag(device, registry, x, y, v, diag, Activations::Columns, 1)
    }

    /// The fused launch with diagnostic build `diag` (0 = the kernel) on f32 activations, or on
    /// 8-bit ones (`x8`, window splits on the blocked kernels), for `vectors` activation
    /// vectors (above 1 [`Self::gemv_many_dispatch`]'s launch).
    #[allow(clippy::too_many_arguments)]
    fn gemv_dispatch_diag(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        variant: FusedVariant,
        diag: u32,
        acts: Activations,
        vectors: u32,
    ) -> Result<Dispatch, GpuError> {
        check_gemv_vectors(vectors)?;
        let x8 = acts == Activations::X8;
        if variant != FusedVariant::Workgroup && !registry.subgroups32() {
            return Err(GpuError::Unsupported(format!(
                "the {variant:?} fused kernel needs Features::SUBGROUP and 32-wide subgroups"
            )));
        }
        let sb = self.sb.as_ref().ok_or_else(|| {
            GpuError::InvalidInput("the fused GEMV needs scales and biases at upload".into())
        })?;
        let (r, k) = (self.rows() as u64, self.cols() as u64);
        let x_bytes = if x8 {
            super::x8_bytes(k as usize)
        } else {
            k * 4 * vectors as u64
        };
        let y_bytes = r * 4 * vectors as u64;
        if x.size() < x_bytes || y.size() < y_bytes {
            return Err(GpuError::InvalidInput(format!(
                "x/y buffers have {}/{} bytes, need {}/{} ({vectors} vector{})",
                x.size(),
                y.size(),
                x_bytes,
                y_bytes,
                if vectors == 1 { "" } else { "s" }
            )));
        }
        // (bound whole: wgpu's validation would panic on a buffer past the binding limit)
        super::BufferRange::from(x).check_binding_size(device, "x")?;
        super::BufferRange::from(y).check_binding_size(device, "y")?;
        let mut p = self.params;
        let mut layout = self.fused_layout();
        layout.x8_activations = x8;
        layout.vectors = vectors;
        layout.lane_order_x = acts == Activations::Lanes;
        let mut diag = diag;
        // groups of 32 lanes a chunk: the matrix's setting on the blocked kernel, or two or
        // four in diagnostic builds 19 and 20 (the same launch)
        let mut dup = if variant.is_blocked() {
            self.chunk_subgroups
        } else {
            1
        };
        if diag == 19 || diag == 20 {
            dup = if diag == 19 { 2 } else { 4 };
            diag = 0;
        }
        if dup > 1 {
            set_chunk_subgroups(&mut p, dup)?;
        }
        layout.chunk_subgroups = dup;
        let blocked = variant.is_blocked();
        layout.tables_in_memory = (blocked && diag == 16)
            || (self.tables_in_memory && fused_reads_tables(variant, self.params.prec));
        if diag == 16 {
            diag = 0;
        }
        // (the workgroup variant on the lanes kernel: its chunks a workgroup)
        if let Some(w) = variant_lanes_width(registry, variant, &layout) {
            set_lanes_geometry(&mut p, w)?;
        }
        let (gx, gy) = grid(device, p.total_wg);
        p.wg_x = gx;
        p.out_mode = 2;
        let uniform = self.uniform(device, p);
        if diag == 10 {
            // (the kernel with the window start taken as 0)
            layout.window_start = 0;
            diag = 0;
        }
        let pipeline = fused_gemv_pipeline_diag(device, registry, variant, &layout, diag)?;
        let tables = if layout.tables_in_memory {
            Some(self.slot_tables(device)?)
        } else {
            None
        };
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("rans_gemv"),
            layout: &layout,
            entries: &[
                entry(0, &uniform),
                entry(1, tables.unwrap_or(&self.freqs)),
                entry(2, &self.states),
                entry(3, &self.offsets),
                entry(4, &self.words),
                entry(5, &self.errors),
                entry(6, sb),
                entry(7, x),
                entry(8, y),
            ],
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            workgroups: (gx, gy),
        })
    }

    /// Why [`Self::gemv_coop_dispatch`] cannot run this matrix on `registry`'s device, or
    /// `None` where it can.
    fn coop_refusal(&self, registry: &PipelineRegistry) -> Option<String> {
        let p = &self.params;
        if self.sb.is_none() {
            Some("the fused GEMV needs scales and biases at upload".into())
        } else if !registry.cooperative_matrix() {
            Some(super::coop::NO_COOPERATIVE_DEVICE.into())
        } else {
            coop_layout_refusal(p)
        }
    }

    /// Whether [`Self::gemv_coop_dispatch`] runs this matrix on `registry`'s device: a window
    /// split in row pairs of inputs a multiple of [`super::COOP_BLOCK_COLS`], MLX groups of 64
    /// or 128, uploaded with scales and biases, on a registry with
    /// [`PipelineRegistry::cooperative_matrix`].
    pub fn coop_supported(&self, registry: &PipelineRegistry) -> bool {
        self.coop_refusal(registry).is_none()
    }

    /// The fused GEMV of `x.vectors()` activation vectors with its multiply on cooperative
    /// matrices (tensor cores; `wgsl/rans_gemv_coop.wgsl`, BENCHMARKS.md issue 5, step 90):
    /// `x` as [`super::coop_x_dispatch`] prepares it, `y` receives `x.vectors()` rows of
    /// `rows` f32. Each chunk is decoded once, as in [`Self::gemv_many_dispatch`], and the
    /// multiply costs about the same for 1 and 16 vectors. Not bit for bit the f32 kernels:
    /// the activations reach the tensor cores as f16 (each vector scaled per 512 inputs by a
    /// power of two): exact for activations that f16 holds so (f16 and bf16 values), else
    /// rounded to 11 bits, so each output is within 2^-11 of the sum of its terms' magnitudes
    /// of the exact value, plus the f32 sums' error (tests/gpu_coop.rs states and tests both
    /// bounds). [`GpuError::Unsupported`] where [`Self::coop_supported`] is false (naming
    /// why), [`GpuError::InvalidInput`] for `x` of another width or `y` too small. Decode
    /// tables are read from memory (built on the host once, as [`Self::set_tables_in_memory`]
    /// does) whatever that setting.
    pub fn gemv_coop_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopActivations,
        y: impl Into<super::BufferRange<'b>>,
    ) -> Result<Dispatch, GpuError> {
        self.gemv_coop_dispatch_diag(device, registry, x, y.into(), 0)
    }

    /// A diagnostic build of [`Self::gemv_coop_dispatch`], for measuring where its time goes
    /// (outputs meaningless; corrupt streams reported as by the kernel): 1 = the decode alone,
    /// 2 = the decode and the weight tile's stores and barriers without the cooperative
    /// multiply, 3 = the tile, multiply and flush on made-up symbols (the stream never read).
    /// Other numbers: [`GpuError::InvalidInput`].
    pub fn coop_diagnostic_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopActivations,
        y: &wgpu::Buffer,
        diag: u32,
    ) -> Result<Dispatch, GpuError> {
        if !(1..=3).contains(&diag) {
            return Err(GpuError::InvalidInput(format!(
                "cooperative GEMV diagnostic builds are 1..=3, not {diag}"
            )));
        }
        self.gemv_coop_dispatch_diag(device, registry, x, y.into(), diag)
    }

    fn gemv_coop_dispatch_diag(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopActivations,
        y: super::BufferRange<'_>,
        diag: u32,
    ) -> Result<Dispatch, GpuError> {
        if let Some(why) = self.coop_refusal(registry) {
            return Err(GpuError::Unsupported(why));
        }
        x.check_for(
            self.rows(),
            self.cols(),
            super::CoopOrder::Window,
            y,
            device,
        )?;
        let sb = self.sb.as_ref().expect("coop_refusal checks the scales");
        let p = coop_params(device, &self.params)?;
        let (gx, gy) = grid(device, p.total_wg);
        let uniform = self.uniform(device, p);
        let pipeline = coop_gemv_pipeline(device, registry, &p, self.side, x.vectors(), diag)?;
        let tables = self.slot_tables(device)?;
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("rans_gemv_coop"),
            layout: &layout,
            entries: &[
                entry(0, &uniform),
                entry(1, tables),
                entry(2, &self.states),
                entry(3, &self.offsets),
                entry(4, &self.words),
                entry(5, &self.errors),
                entry(6, sb),
                entry(7, x.tiles()),
                entry(8, x.sums()),
                y.entry(9),
            ],
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            workgroups: (gx, gy),
        })
    }

    /// `Y = X W^T` for `vectors` activation vectors (`x`: `vectors` rows of `cols` f32) through
    /// the cooperative kernels ([`super::coop_x_dispatch`], then [`Self::gemv_coop_dispatch`])
    /// in launches of up to [`super::COOP_VECTORS`], read back as `vectors` rows of `rows`
    /// f32 (filled with NaN first, so unwritten rows show). The refusals of
    /// [`Self::gemv_coop_dispatch`]; corrupt streams as [`GpuError::CorruptStream`].
    pub fn gemv_coop(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        vectors: usize,
    ) -> Result<Vec<f32>, GpuError> {
        if let Some(why) = self.coop_refusal(registry) {
            return Err(GpuError::Unsupported(why));
        }
        super::coop::coop_runs(
            device,
            queue,
            registry,
            x,
            vectors,
            (self.rows(), self.cols()),
            self.n_chunks() == 0,
            super::CoopOrder::Window,
            |acts, y| self.gemv_coop_dispatch(device, registry, acts, y),
            |prep, d| run_checked_launches(device, queue, &[(self, prep), (self, d)]),
        )
    }

    /// Reads the per-chunk error buffer and turns the first failing chunk into
    /// [`GpuError::CorruptStream`].
    pub fn check_errors(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<(), GpuError> {
        let nc = self.params.n_chunks as usize;
        if nc == 0 {
            return Ok(());
        }
        let bytes = read_back(device, queue, &self.errors, nc as u64 * 4)?;
        let flags: &[u32] = bytemuck::cast_slice(&bytes);
        let bad = flags.iter().filter(|&&f| f != 0).count();
        if let Some((chunk, &f)) = flags.iter().enumerate().find(|(_, &f)| f != 0) {
            return Err(GpuError::CorruptStream {
                chunk,
                tile: chunk / self.params.tile_chunks.max(1) as usize,
                flags: f,
                reason: GpuError::describe_flags(f),
                bad_chunks: bad,
            });
        }
        Ok(())
    }

    fn clear_errors(&self, enc: &mut wgpu::CommandEncoder) {
        enc.clear_buffer(&self.errors, 0, None);
    }

    /// Runs one of this matrix's launches to completion ([`run_checked_launches`]).
    pub(crate) fn run_checked(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        d: &Dispatch,
    ) -> Result<(), GpuError> {
        run_checked_launches(device, queue, &[(self, d)])
    }

    /// Runs one of this matrix's GEMV launches to completion ([`run_checked_launches`]) and
    /// reads the `rows` f32 of its output `y` back.
    fn run_and_read(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        d: &Dispatch,
        y: &wgpu::Buffer,
        rows: usize,
    ) -> Result<Vec<f32>, GpuError> {
        self.run_checked(device, queue, d)?;
        let bytes = read_back(device, queue, y, rows as u64 * 4)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Decodes into a new buffer and reads it back (`u32` words; for
    /// [`DecodeOutput::BytePerWeight`] four weights per word). The output buffer is filled with
    /// `0xFFFFFFFF` first so unwritten words show.
    pub fn decode(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        mode: DecodeOutput,
    ) -> Result<Vec<u32>, GpuError> {
        self.decode_with(device, queue, registry, mode, None)
    }

    /// [`Self::decode`] with an explicit kernel (`None`: as [`Self::decode_dispatch`] picks).
    pub fn decode_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        mode: DecodeOutput,
        variant: Option<FusedVariant>,
    ) -> Result<Vec<u32>, GpuError> {
        let n = self.decode_source().output_words(mode)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        check_storage(device, "decoded output", n * 4)?;
        let poison = vec![u32::MAX; n as usize];
        let out = storage_init(
            device,
            "decoded output",
            bytemuck::cast_slice(&poison),
            wgpu::BufferUsages::COPY_SRC,
        )?;
        let d = match variant {
            None => self.decode_dispatch(device, registry, &out, mode)?,
            Some(v) => self.decode_dispatch_with(device, registry, &out, mode, v)?,
        };
        self.run_checked(device, queue, &d)?;
        let bytes = read_back(device, queue, &out, n * 4)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Fused GEMV `y = W x`, read back, with the variant [`Self::gemv_dispatch`] picks. `y` is
    /// filled with NaN first so unwritten rows show.
    pub fn gemv(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
    ) -> Result<Vec<f32>, GpuError> {
        let v = self.default_fused_variant(registry);
        self.gemv_with(device, queue, registry, x, v)
    }

    /// [`gemv`](Self::gemv) with an explicit variant.
    pub fn gemv_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        variant: FusedVariant,
    ) -> Result<Vec<f32>, GpuError> {
        let (r, k) = (self.rows(), self.cols());
        super::check_x_len(x, k)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        if self.n_chunks() == 0 {
            return Ok(vec![0.0; r]);
        }
        let xb = super::upload_x(device, x)?;
        let yb = super::nan_output(device, r)?;
        let d = self.gemv_dispatch_with(device, registry, &xb, &yb, variant)?;
        self.run_and_read(device, queue, &d, &yb, r)
    }
}

/// Runs coded matrices' launches to completion in one submission and one wait: clears each
/// matrix's error buffer, records every launch in one pass, and turns a validation error or
/// the first (in order) matrix with a corrupt chunk into an error.
pub(crate) fn run_checked_launches(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    launches: &[(&GpuCodedMatrix, &Dispatch)],
) -> Result<(), GpuError> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut enc = device.create_command_encoder(&Default::default());
    for (m, _) in launches {
        m.clear_errors(&mut enc);
    }
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for (_, d) in launches {
            d.record(&mut pass);
        }
    }
    queue.submit([enc.finish()]);
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(GpuError::Wgpu(e.to_string()));
    }
    wait(device)?;
    for (m, _) in launches {
        m.check_errors(device, queue)?;
    }
    Ok(())
}

pub(crate) fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

#[cfg(test)]
mod tests {
    use super::{FusedLayout, FusedVariant};

    fn layout(cols: u32, wps: u32, prec: u32) -> FusedLayout {
        FusedLayout {
            wps,
            bits: 8 / wps,
            prec,
            group_size: 64,
            cols,
            steps_per_row: cols.div_ceil(32 * wps),
            workgroups: 1,
            low_bits: 0,
            row_pairs: false,
            window_start: 0,
            side: Default::default(),
            tables_in_memory: false,
            x8_activations: false,
            chunk_subgroups: 1,
            vectors: 1,
            lane_order_x: false,
        }
    }

    #[test]
    fn lanes_symbol_words_takes_byte_symbols_in_whole_words() {
        // coded whole: 4-bit two a symbol, 8-bit one, 2-bit four; rows ending inside a step
        assert!(layout(4096, 2, 11).lanes_symbol_words());
        assert!(layout(96, 2, 11).lanes_symbol_words()); // 48 symbols: 1.5 steps
        assert!(layout(352, 1, 8).lanes_symbol_words());
        assert!(layout(640, 4, 11).lanes_symbol_words());
        // rows of a part word, no table, not byte symbols, not coded whole in row pairs
        assert!(!layout(100, 2, 11).lanes_symbol_words()); // 50 symbols
        assert!(!layout(4096, 2, 12).lanes_symbol_words());
        assert!(!layout(0, 2, 11).lanes_symbol_words());
        let mut l = layout(4096, 2, 11);
        l.bits = 3;
        assert!(!l.lanes_symbol_words());
        let mut l = layout(4096, 2, 11);
        l.row_pairs = true;
        assert!(!l.lanes_symbol_words());
        // split 2 + 2 (2-bit symbols of four weights, two raw bits), rows and row pairs
        let mut l = layout(4096, 4, 11);
        l.low_bits = 2;
        assert!(l.lanes_symbol_words());
        l.row_pairs = true;
        assert!(l.lanes_symbol_words());
        // MLX groups of whole words (16 weights here), a window split elsewhere
        l.group_size = 24;
        assert!(!l.lanes_symbol_words());
        l.group_size = 0;
        assert!(!l.lanes_symbol_words());
        let mut l = layout(4096, 8, 11);
        l.low_bits = super::WINDOW_LOW_BITS;
        assert!(!l.lanes_symbol_words());
    }

    #[test]
    fn blocked_steps_is_the_largest_block_dividing_whole_steps() {
        assert_eq!(layout(4096, 2, 11).blocked_steps(), Some(8)); // 64 steps
        assert_eq!(layout(14336, 2, 11).blocked_steps(), Some(8)); // 224
        assert_eq!(layout(768, 2, 11).blocked_steps(), Some(4)); // 12
        assert_eq!(layout(640, 2, 11).blocked_steps(), Some(2)); // 10
        assert_eq!(layout(192, 1, 11).blocked_steps(), Some(2)); // 6
        assert_eq!(layout(64, 2, 11).blocked_steps(), None); // 1 step
        assert_eq!(layout(96, 2, 11).blocked_steps(), None); // 1.5 steps
        assert_eq!(layout(4160, 2, 11).blocked_steps(), None); // 65 steps
        assert_eq!(layout(4096, 2, 12).blocked_steps(), None); // no slot table
        assert_eq!(layout(0, 2, 11).blocked_steps(), None);
        // groups must hold whole words of four symbols
        for (group_size, wps, ok) in [(32, 4, true), (24, 2, true), (20, 2, false), (6, 1, false)] {
            let mut l = layout(4096, wps, 11);
            l.group_size = group_size;
            assert_eq!(
                l.blocked_steps().is_some(),
                ok,
                "group {group_size}, w {wps}"
            );
        }
        let mut l = layout(4096, 2, 11);
        l.group_size = 0;
        assert_eq!(
            l.blocked_steps(),
            Some(8),
            "decode-only matrices have no groups"
        );
    }

    #[test]
    fn compact_table_past_one_wave_of_the_u32_build_or_from_512_workgroups_at_short_k() {
        // (inputs, row pairs, workgroups, expected): K = 14336 keeps the u32 table up to 659
        // workgroups, K <= 4096 up to 511; row pairs count the inputs of one matrix row
        for (cols, pairs, wg, v) in [
            (14336, false, 1, FusedVariant::Blocked),
            (14336, false, 640, FusedVariant::Blocked),
            (14336, false, 659, FusedVariant::Blocked),
            (14336, false, 660, FusedVariant::BlockedCompact),
            (28672, true, 640, FusedVariant::Blocked),
            (28672, true, 704, FusedVariant::BlockedCompact),
            (8192, false, 512, FusedVariant::Blocked),
            (8192, true, 511, FusedVariant::Blocked),
            (8192, true, 512, FusedVariant::BlockedCompact),
            (4096, false, 384, FusedVariant::Blocked),
            (4096, false, 512, FusedVariant::BlockedCompact),
            (2048, true, 512, FusedVariant::BlockedCompact),
            (4096, false, 8016, FusedVariant::BlockedCompact),
        ] {
            let mut l = layout(cols, 2, 11);
            l.row_pairs = pairs;
            l.workgroups = wg;
            assert_eq!(l.inputs(), if pairs { cols / 2 } else { cols });
            assert_eq!(
                l.blocked_variant(),
                v,
                "{cols} cols, pairs {pairs}, {wg} workgroups"
            );
        }
        // window splits in row pairs: compact at any size for one vector of f32 activations
        // and one group a chunk; the workgroup rule otherwise
        let mut w = layout(8192, 8, 11);
        w.low_bits = super::WINDOW_LOW_BITS;
        w.row_pairs = true;
        w.workgroups = 128;
        assert_eq!(w.blocked_variant(), FusedVariant::BlockedCompact);
        let changes: [fn(&mut FusedLayout); 4] = [
            |l| l.vectors = 2,
            |l| l.x8_activations = true,
            |l| l.chunk_subgroups = 2,
            |l| l.row_pairs = false,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut l = w;
            change(&mut l);
            assert_eq!(l.blocked_variant(), FusedVariant::Blocked, "change {i}");
        }
    }
}
