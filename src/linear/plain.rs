//! [`QuantizedLinear`]: the plain MLX quantized baseline on the GPU (`wgsl/qgemm.wgsl`).

use std::sync::Arc;

use super::call_buffers::{pipelined, LaunchLayout, PendingRead};
use super::coded::{
    gemm_rows_per_dispatch, kparts, m_split, LinearDispatch, MAX_M_PER_DISPATCH, TARGET_WORKGROUPS,
};
use super::device::{LinearDevice, LinearKernel};
use super::resident::{bias_buffer, prepare_call, PreparedForward, ResidentCall, RowsNeed};
use super::{add_bias, check_x, check_y, ActivationOrder, GpuLinear, Linear, LinearError};
use crate::gpu::entry;
use crate::gpu::BufferRange;
use crate::quant::QuantizedMatrix;

/// Activation rows up to which [`QuantizedLinear`]'s `forward_batch` runs launches of up to
/// [`crate::gpu::MAX_GEMV_VECTORS`] rows of the plain multi-vector GEMV
/// (`wgsl/qgemv4_many.wgsl`, on activations in lane order) instead of `qgemm`, where it can:
/// every row count. On an H200 (BENCHMARKS.md, Prefill, twenty-second session) they took
/// 0.37-0.67x `qgemm`'s time at 16-512 rows at 4096x4096, 6144x4096, 14336x4096 and
/// 4096x14336, and both scale linearly in rows beyond (`qgemm` runs blocks of 512); a
/// threshold of 512 made 2048-row calls at 14336x4096 take 56-67 ms on `qgemm` (issue 5,
/// step 91). See [`PLAIN_GEMV_MANY_MAX_M_SMALL`] for smaller matrices.
pub const PLAIN_GEMV_MANY_MAX_M: usize = usize::MAX;

/// [`PLAIN_GEMV_MANY_MAX_M`] for matrices of at most 2^22 weights (1024x4096: 0.87x `qgemm`'s
/// time at 48 rows, 1.12x at 64 and 0.93-1.31x from 96 to 512 on an H200).
pub const PLAIN_GEMV_MANY_MAX_M_SMALL: usize = 48;

/// Activation rows from which [`QuantizedLinear`]'s `forward_batch` on cooperative matrices
/// ([`QuantizedLinear::set_cooperative_matrix`]) runs the cooperative GEMM
/// ([`crate::gpu::GpuQuantizedMatrix::gemm_coop_dispatch`], tiles of 128 matrix rows x 64
/// activation rows, weights dequantized to f16, small grids in column splits) instead of
/// launches of 16 rows of the cooperative GEMV (see [`QuantizedLinear::set_coop_gemm_min_rows`]):
/// from the second launch. A GEMM launch costs about the same for 1 to 64 rows (one tile of
/// activation rows); with column splits about one launch of 16: on an H200 a forward of 32
/// Llama-3-8B layers took 13.3 ms in one launch of 16 rows at 16 rows, and 16.2 / 23.7 /
/// 24.2 ms in launches against 13.6 / 13.7 / 14.3 on the GEMM at 17 / 24 / 32 rows
/// (BENCHMARKS.md issue 5, step 104).
pub const COOP_GEMM_MIN_ROWS: usize = 17;

/// Activation rows from which [`QuantizedLinear`]'s `forward_batch` runs the tiled f32 GEMM
/// ([`crate::gpu::GpuQuantizedMatrix::gemm_tiled_dispatch`], tiles of 64 activation rows)
/// where the device runs no 32-wide subgroups (see [`QuantizedLinear::set_tiled_gemm`]): a
/// tile costs the same for 1 to 64 rows. On lavapipe (2 cores) at 1024x4096 `qgemm` took
/// 34.7 ms for 2 rows, 63.7 for 16, 131 for 32 and 189 for 64, the tiled GEMM 88-94 for 2 to
/// 64 rows and 717 against 1100 for 512 (BENCHMARKS.md issue 5, step 99).
pub const TILED_GEMM_MIN_ROWS: usize = 32;

/// The most activation rows for which [`QuantizedLinear`]'s `forward_batch` on a CPU device
/// ([`crate::gpu::PipelineRegistry::cpu_device`]) runs one launch of the plain GEMV a row
/// instead of `qgemm`, where the GEMV takes the matrix
/// ([`QuantizedLinear::set_gemv_many_max_m`] sets another count; the tiled f32 GEMM, from
/// [`TILED_GEMM_MIN_ROWS`] rows by default, comes first). On lavapipe (2 cores) at 1024x4096
/// the GEMV took 2.2-2.3 ms a row (4.6 ms for 2 rows, 36 for 16) against `qgemm`'s
/// 34 / 61 / 126 ms at 2 / 16 / 32 rows and the tiled GEMM's 49-57 at 2-32; at 4096x4096 and
/// 4096x14336 together 32 ms a row against the tiled GEMM's 910-1010 ms at 16-32 rows
/// (BENCHMARKS.md issue 5, step 106).
pub const CPU_GEMV_MAX_ROWS: usize = 31;

/// [`CPU_GEMV_MAX_ROWS`] on GPUs without 32-wide subgroups (no multi-vector GEMV there); from
/// one more row the tiled f32 GEMM runs ([`TILED_GEMM_MIN_ROWS_PORTABLE_GPU`]). On an H200
/// running the portable kernels only (`GpuContext::without_subgroups`; BENCHMARKS.md issue 5,
/// step 120), 32 Llama-3-8B layers took, ms a forward:
///
/// | rows | 2 | 4 | 8 | 12 | 16 | 24 | 31 | 32 (tiled GEMM) |
/// |---|---|---|---|---|---|---|---|---|
/// | `qgemm` | 22.1 | 23.7 | 25.9 | 35.4 | 37.6 | 58.7 | 66.1 | 37.2 |
/// | the GEMV a row | 5.4 | 10.3 | 20.2 | 30.5 | 40.4 | 60.6 | 78.0 | |
///
/// The GEMV a row costs ~2.5 ms a row, the tiled GEMM ~37 ms for up to 64 rows: they cross
/// at ~15 rows.
pub const PORTABLE_GPU_GEMV_MAX_ROWS: usize = 14;

/// [`TILED_GEMM_MIN_ROWS`] on GPUs without 32-wide subgroups: after the GEMV a row
/// ([`PORTABLE_GPU_GEMV_MAX_ROWS`]), where `qgemm` took as long as the tiled GEMM at 16 rows
/// and 1.6-1.8x as long at 24-31 on an H200 running the portable kernels (step 120).
pub const TILED_GEMM_MIN_ROWS_PORTABLE_GPU: usize = 15;

/// [`TILED_GEMM_MIN_ROWS`] where 32-wide subgroups run the multi-vector launches of 16 rows
/// instead: from their third launch. With column splits to 1024 workgroups
/// ([`crate::gpu::TILED_GEMM_SPLIT_WORKGROUPS`]) 32 Llama-3-8B layers in f32 took 38.5-39.4 ms
/// a forward on the GEMM at every row count from 24 to 48 on an H200, and in launches 28.9 /
/// 35.5 / 38.7 / 42.9 / 46.9 ms at 24 / 32 / 33 / 36 / 40 rows (BENCHMARKS.md issue 5, step
/// 105; step 101's rule, from 48, left 33-47 rows in launches).
pub const TILED_GEMM_MIN_ROWS_SUBGROUPS: usize = 33;

/// Uniform block of `qgemm.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    bits: u32,
    words_per_row: u32,
    groups_per_row: u32,
    group_size: u32,
    wg_x: u32,
    total_wg: u32,
    m: u32,
    xs4: u32,
    y_stride: u32,
    m_block: u32,
    total_grid: u32,
    /// Invocations sharing an activation row (`coded::kparts`).
    kparts: u32,
    _pad: [u32; 2],
}

/// The launches of a plain call ([`QuantizedLinear::path`]).
pub(crate) enum PlainPath<'a> {
    /// One row: the plain GEMV.
    Vector(&'a crate::gpu::GpuQuantizedMatrix),
    /// Launches of the multi-vector GEMV.
    Many(&'a crate::gpu::GpuQuantizedMatrix),
    /// Launches of the cooperative GEMM.
    CoopGemm(&'a crate::gpu::GpuQuantizedMatrix),
    /// Launches of the tiled f32 GEMM.
    TiledGemm(&'a crate::gpu::GpuQuantizedMatrix),
    /// `qgemm`.
    Gemm,
}

/// A plain MLX quantized layer (2, 4 or 8 bits) on the GPU: the baseline of
/// [`super::EntropyCodedLinear`]. `forward_batch` runs `qgemm.wgsl`, whose multiply is the
/// same as `rans_gemm.wgsl`'s (4 rows per workgroup, slices of 256 weights dequantized into
/// workgroup memory), so the two differ only in where the weights come from. `forward` (one
/// vector) runs the dedicated plain GEMV of [`crate::gpu::GpuQuantizedMatrix`] on the same
/// buffers where it takes the matrix (`cols * bits` a multiple of 128): on an H200 `qgemm`
/// took 42.2 µs for one vector at 1024x4096 and the GEMV 5.4 (BENCHMARKS.md, issue 5, tenth
/// session); elsewhere `qgemm` with one row. For 2 to [`PLAIN_GEMV_MANY_MAX_M`] rows of 4-bit
/// weights ([`PLAIN_GEMV_MANY_MAX_M_SMALL`] for small matrices) `forward_batch` runs launches
/// of up to 16 rows of `wgsl/qgemv4_many.wgsl` where 32-wide subgroups allow it
/// ([`crate::gpu::GpuQuantizedMatrix::gemv_many_dispatch`], the weights read once a launch),
/// and on a CPU device the plain GEMV a row up to [`CPU_GEMV_MAX_ROWS`] rows (where a few
/// threads run `qgemm` several times slower), on other GPUs without 32-wide subgroups up to
/// [`PORTABLE_GPU_GEMV_MAX_ROWS`]. Both GEMVs of 4-bit weights take their activations in lane order
/// ([`crate::gpu::x_lane_order`], permuted on the host as they are uploaded), as the fused
/// layer's do ([`super::EntropyCodedLinear::lane_order`]): the same results, read in whole
/// lines. Calls of 4-bit weights run the tiled f32 GEMM from [`TILED_GEMM_MIN_ROWS`] rows
/// on CPU devices, from [`TILED_GEMM_MIN_ROWS_PORTABLE_GPU`] on other GPUs without 32-wide
/// subgroups and from [`TILED_GEMM_MIN_ROWS_SUBGROUPS`]
/// where it does, unless they run on cooperative matrices ([`Self::set_tiled_gemm`]).
#[derive(Debug)]
pub struct QuantizedLinear {
    dev: Arc<LinearDevice>,
    name: String,
    params: Params,
    packed: wgpu::Buffer,
    sb: wgpu::Buffer,
    side: crate::gpu::SideFormat,
    bias: Option<Vec<f32>>,
    /// The bias on the GPU for recorded calls, made on first use.
    bias_gpu: std::sync::OnceLock<wgpu::Buffer>,
    /// The plain GEMV's matrix, holding `packed` and `sb` (None where it cannot run it).
    vector: Option<crate::gpu::GpuQuantizedMatrix>,
    /// Launches of at least [`super::COOP_MIN_ROWS`] rows run on cooperative matrices
    /// ([`Self::set_cooperative_matrix`]).
    coop: bool,
    /// The most rows `forward_batch` runs as multi-vector GEMV launches instead of `qgemm`
    /// ([`Self::set_gemv_many_max_m`]; `None`: by size).
    many_max_m: Option<usize>,
    /// The fewest rows that run the cooperative GEMM ([`Self::set_coop_gemm_min_rows`]).
    coop_gemm_min_m: usize,
    /// The fewest rows that run the tiled f32 GEMM ([`Self::set_tiled_gemm_min_rows`];
    /// `None`: by the device's subgroups).
    tiled_min_m: Option<usize>,
    /// Column splits of the tiled GEMM ([`Self::set_tiled_gemm_splits`]; `None`: on GPUs).
    tiled_splits: Option<bool>,
}

impl QuantizedLinear {
    /// Uploads `q` (packed words and interleaved scale/bias pairs in the narrowest exact
    /// format, [`crate::gpu::SideFormat::exact_for`]).
    pub fn upload(
        dev: &Arc<LinearDevice>,
        name: &str,
        q: &QuantizedMatrix,
        bias: Option<&[f32]>,
    ) -> Result<Self, LinearError> {
        let (r, k, b, gs) = (q.rows, q.cols, q.bits, q.group_size as usize);
        Self::check_geometry(name, (r, k, b, gs), bias)?;
        let (limit, limit_name) = dev.max_buffer_limit();
        let bytes = (q.packed.len() * 4) as u64;
        if bytes > limit {
            return Err(LinearError::TooLarge {
                layer: name.into(),
                what: "packed weights".into(),
                bytes,
                limit,
                limit_name,
                remedy: LinearError::REMEDY_DEVICE,
            });
        }
        let side = crate::gpu::SideFormat::exact_for(&q.scales, &q.biases);
        // the plain GEMV's upload where it runs the matrix, whose buffers qgemm shares (the
        // same MLX words and pairs); else buffers of our own
        let vector = crate::gpu::GpuQuantizedMatrix::upload_with_side(dev.device(), q, side).ok();
        let (packed, sb) = match &vector {
            Some(v) => {
                let (p, s) = v.buffers();
                (p.clone(), s.clone())
            }
            None => {
                let packed = dev.buffer("packed weights", bytes, wgpu::BufferUsages::empty());
                dev.write(&packed, bytemuck::cast_slice(&q.packed));
                let sbv = side.pack(&q.scales, &q.biases);
                let sb = dev.buffer(
                    "scales+biases",
                    sbv.len() as u64,
                    wgpu::BufferUsages::empty(),
                );
                dev.write(&sb, &sbv);
                (packed, sb)
            }
        };
        dev.queue().submit(std::iter::empty());
        Ok(Self::assemble(
            dev,
            name,
            (r, k, b, gs),
            (packed, sb, side),
            vector,
            bias,
        ))
    }

    /// A layer over weights already on the GPU: `packed` holds the `r` x `k` matrix's MLX
    /// words of `b` bits (from the start) and `sb` its (scale, bias) pairs of groups of `gs`
    /// in `side`. The coded layer's calls of many rows run on such a layer over the weights
    /// they decode ([`super::LinearOptions::decode_first_min_rows`]).
    pub(crate) fn on_buffers(
        dev: &Arc<LinearDevice>,
        name: &str,
        (r, k, b, gs): (usize, usize, u32, usize),
        (packed, sb, side): (wgpu::Buffer, wgpu::Buffer, crate::gpu::SideFormat),
        bias: Option<&[f32]>,
    ) -> Result<Self, LinearError> {
        Self::check_geometry(name, (r, k, b, gs), bias)?;
        let vector = crate::gpu::GpuQuantizedMatrix::on_buffers(
            (r, k, b, gs),
            packed.clone(),
            sb.clone(),
            side,
        )
        .ok();
        Ok(Self::assemble(
            dev,
            name,
            (r, k, b, gs),
            (packed, sb, side),
            vector,
            bias,
        ))
    }

    /// What the plain kernels take: 2, 4 or 8 bits, whole words a row, groups of whole words
    /// dividing the row; a bias of one value an output.
    pub(crate) fn check_geometry(
        name: &str,
        (r, k, b, gs): (usize, usize, u32, usize),
        bias: Option<&[f32]>,
    ) -> Result<(), LinearError> {
        let unsupported = |reason: String| LinearError::Unsupported {
            layer: name.into(),
            reason,
        };
        if ![2, 4, 8].contains(&b) || !(k * b as usize).is_multiple_of(32) {
            return Err(unsupported(format!(
                "plain batched kernel needs 2, 4 or 8 bits and whole u32 words per row (bits {b}, cols {k})"
            )));
        }
        if gs == 0 || !k.is_multiple_of(gs) || !gs.is_multiple_of(32 / b as usize) {
            return Err(unsupported(format!("group size {gs} with cols {k}")));
        }
        if let Some(bv) = bias {
            if bv.len() != r {
                return Err(LinearError::InvalidLayer {
                    layer: name.into(),
                    reason: format!("bias has {} values, the layer {r} outputs", bv.len()),
                });
            }
        }
        Ok(())
    }

    fn assemble(
        dev: &Arc<LinearDevice>,
        name: &str,
        (r, k, b, gs): (usize, usize, u32, usize),
        (packed, sb, side): (wgpu::Buffer, wgpu::Buffer, crate::gpu::SideFormat),
        vector: Option<crate::gpu::GpuQuantizedMatrix>,
        bias: Option<&[f32]>,
    ) -> Self {
        let total_wg = r.div_ceil(4) as u32;
        let params = Params {
            rows: r as u32,
            cols: k as u32,
            bits: b,
            words_per_row: (k * b as usize / 32) as u32,
            groups_per_row: (k / gs) as u32,
            group_size: gs as u32,
            wg_x: dev.grid(total_wg).0,
            total_wg,
            m: 0,
            xs4: k.div_ceil(4) as u32,
            y_stride: r as u32,
            m_block: 0,
            total_grid: 0,
            kparts: 1,
            _pad: [0; 2],
        };
        QuantizedLinear {
            dev: dev.clone(),
            name: name.into(),
            params,
            packed,
            sb,
            side,
            bias: bias.map(<[f32]>::to_vec),
            bias_gpu: std::sync::OnceLock::new(),
            vector,
            coop: false,
            many_max_m: None,
            coop_gemm_min_m: COOP_GEMM_MIN_ROWS,
            tiled_min_m: None,
            tiled_splits: None,
        }
    }

    /// Whether `forward_batch` runs the tiled f32 GEMM
    /// ([`crate::gpu::GpuQuantizedMatrix::gemm_tiled_dispatch`]) for calls of 4-bit matrices
    /// that do not run on cooperative matrices: `None` (the default) from
    /// [`TILED_GEMM_MIN_ROWS`] rows where the device runs no 32-wide subgroups (on lavapipe
    /// 2.5x faster than `qgemm` at 64 rows, steps 99-100) and from [`TILED_GEMM_MIN_ROWS_SUBGROUPS`] where
    /// it does (the multi-vector launches take fewer rows), `Some(true)` from
    /// [`TILED_GEMM_MIN_ROWS`] on every device, `Some(false)` never
    /// ([`Self::set_tiled_gemm_min_rows`] takes any row count). Rows that
    /// [`Self::set_gemv_many_max_m`] sends to the multi-vector launches stay there. Same
    /// precision as `qgemm`: f32 throughout, summed in another order.
    pub fn set_tiled_gemm(&mut self, on: Option<bool>) {
        self.set_tiled_gemm_min_rows(on.map(|on| match on {
            true => TILED_GEMM_MIN_ROWS,
            false => usize::MAX,
        }));
    }

    /// [`Self::set_tiled_gemm`] from `m` rows: `None` (the default) by the device's subgroups,
    /// `Some(usize::MAX)` never, `Some(m)` from `m` rows (at least 2) on every device.
    pub fn set_tiled_gemm_min_rows(&mut self, m: Option<usize>) {
        self.tiled_min_m = m.map(|m| m.max(2));
    }

    /// The fewest rows a call needs to run the tiled f32 GEMM (`usize::MAX`: never; it also
    /// needs a matrix the GEMM takes and no cooperative kernel for the call).
    pub fn tiled_gemm_min_rows(&self) -> usize {
        match self.tiled_min_m {
            Some(m) => m,
            None if self.dev.gpu().registry().subgroups32() => TILED_GEMM_MIN_ROWS_SUBGROUPS,
            None if !self.dev.gpu().registry().cpu_device() => TILED_GEMM_MIN_ROWS_PORTABLE_GPU,
            None => TILED_GEMM_MIN_ROWS,
        }
    }

    /// Whether the GEMMs' launches split their columns where their tiles alone make too
    /// small a grid: the tiled f32 GEMM's below [`crate::gpu::TILED_GEMM_SPLIT_WORKGROUPS`]
    /// workgroups ([`crate::gpu::GpuQuantizedMatrix::gemm_tiled_split`]), the cooperative
    /// GEMM's below [`crate::gpu::COOP_GEMM_SPLIT_WORKGROUPS`]
    /// ([`crate::gpu::GpuQuantizedMatrix::gemm_coop_split`]); the partial sums in a buffer
    /// the device keeps. `None` (the default) on GPUs and not on CPU devices (lavapipe, which
    /// runs no cooperative matrices), `Some(true)` on every device, `Some(false)` never. The
    /// outputs are the unsplit launch's within f32 rounding (another order of sums).
    pub fn set_tiled_gemm_splits(&mut self, on: Option<bool>) {
        self.tiled_splits = on;
    }

    /// Whether a call of `m` rows that runs no cooperative kernel may run the tiled GEMM `v`.
    fn tiled_gemm(&self, v: &crate::gpu::GpuQuantizedMatrix, m: usize) -> bool {
        m >= self.tiled_gemm_min_rows() && v.gemm_tiled_supported()
    }

    /// Lets `forward_batch`'s launches of at least [`super::COOP_MIN_ROWS`] rows multiply on
    /// cooperative matrices ([`crate::gpu::GpuQuantizedMatrix::gemv_coop_dispatch`]), the
    /// plain counterpart of [`super::LinearOptions::cooperative_matrix`], where the device
    /// has them and the matrix allows them (4 bits, inputs a multiple of 512, MLX groups of
    /// 64 or 128). `forward_batch` of a matrix of more than 2^22 weights then runs launches of
    /// 16 rows up to [`Self::coop_gemm_min_rows`] rows instead of `qgemm` (submissions of
    /// [`super::GEMV_SUBMIT_ROWS`]), and from there the cooperative GEMM (matrices of any size
    /// it takes: [`Self::set_coop_gemm_min_rows`]).
    /// **Approximate** as there: the activations are rounded to f16 (and in the GEMM the
    /// dequantized weights too). Returns whether the layer now does
    /// ([`Self::cooperative_matrix`]).
    pub fn set_cooperative_matrix(&mut self, on: bool) -> bool {
        let registry = self.dev.gpu().registry();
        self.coop = on
            && self
                .vector
                .as_ref()
                .is_some_and(|v| v.coop_supported(registry));
        self.coop
    }

    /// The most activation rows `forward_batch` runs as launches of the multi-vector GEMV
    /// (16 rows a launch) instead of `qgemm`, the plain counterpart of
    /// [`super::LinearOptions::gemv_batch_max_m`]: `None` (the default) picks by size
    /// ([`PLAIN_GEMV_MANY_MAX_M`], [`PLAIN_GEMV_MANY_MAX_M_SMALL`] up to 2^22 weights, every
    /// row count with the cooperative option above 2^22 weights); `Some(0)` runs `qgemm` for
    /// every row count but one (one row runs the plain GEMV, as `forward` does). Matrices the
    /// multi-vector GEMV cannot run keep `qgemm`, except on a CPU device or a GPU without
    /// 32-wide subgroups, which run no multi-vector GEMV: there these rows run the one-vector
    /// GEMV a row where it takes the matrix (`None`: up to [`CPU_GEMV_MAX_ROWS`] rows on CPU
    /// devices, [`PORTABLE_GPU_GEMV_MAX_ROWS`] on GPUs).
    pub fn set_gemv_many_max_m(&mut self, m: Option<usize>) {
        self.many_max_m = m;
    }

    /// Whether `forward_batch`'s launches of at least [`super::COOP_MIN_ROWS`] rows multiply on
    /// cooperative matrices.
    pub fn cooperative_matrix(&self) -> bool {
        self.coop
    }

    /// The launch computing `Y = X W^T` (no bias) for `1..=512` rows; buffers as in
    /// [`super::EntropyCodedLinear::batch_dispatches`].
    pub fn batch_dispatch(
        &self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        m: usize,
    ) -> Result<LinearDispatch, LinearError> {
        self.batch_dispatch_in(x.into(), y.into(), m)
    }

    /// [`Self::batch_dispatch`] on ranges.
    fn batch_dispatch_in(
        &self,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
        m: usize,
    ) -> Result<LinearDispatch, LinearError> {
        let gpu = |source| LinearError::gpu(&self.name, source);
        if m == 0 || m > MAX_M_PER_DISPATCH {
            return Err(LinearError::InvalidLayer {
                layer: self.name.clone(),
                reason: format!("{m} activation rows per dispatch (1..={MAX_M_PER_DISPATCH})"),
            });
        }
        let device = self.dev.device();
        x.check(device, "x").map_err(gpu)?;
        y.check(device, "y").map_err(gpu)?;
        let (k4, r) = (self.in_features().div_ceil(4) * 4, self.out_features());
        let (xs, ys) = ((k4 * 4 * m) as u64, (r * 4 * m) as u64);
        if x.size() < xs || y.size() < ys {
            return Err(gpu(crate::gpu::GpuError::InvalidInput(format!(
                "x/y ranges have {}/{} bytes, {m} rows need {xs}/{ys}",
                x.size(),
                y.size()
            ))));
        }
        let pipeline = self
            .dev
            .pipeline(LinearKernel::QGemm { side: self.side })
            .map_err(gpu)?;
        // (qgemm repeats no decode: a block costs only its share of the weights' reads)
        let (m_block, blocks) = m_split(m, self.params.total_wg, true, TARGET_WORKGROUPS);
        let total_grid = self.params.total_wg * blocks;
        let p = Params {
            m: m as u32,
            m_block,
            total_grid,
            kparts: kparts(m_block as usize),
            wg_x: self.dev.grid(total_grid).0,
            ..self.params
        };
        let uniform = self.dev.uniform(bytemuck::bytes_of(&p));
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = self
            .dev
            .device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("qgemm"),
                layout: &layout,
                entries: &[
                    entry(0, &uniform),
                    entry(1, &self.packed),
                    entry(2, &self.sb),
                    x.entry(3),
                    y.entry(4),
                ],
            });
        Ok(LinearDispatch::new(
            pipeline,
            bind_group,
            self.dev.grid(total_grid),
        ))
    }
}

impl QuantizedLinear {
    /// Records one launch reading the activations `x` (rows of `k` values, each padded with
    /// zeros to `k4`) and writing `out_values` outputs (`record` gets the buffers of x and y)
    /// and submits it with the outputs' read back under way ([`PendingRead::finish_into`]).
    fn submit_one(
        &self,
        x: &[f32],
        (k, k4): (usize, usize),
        out_values: usize,
        record: impl FnOnce(
            &wgpu::Buffer,
            &wgpu::Buffer,
            &mut wgpu::ComputePass<'_>,
        ) -> Result<(), LinearError>,
    ) -> Result<PendingRead<'_>, LinearError> {
        let gpu_err = |source| LinearError::gpu(&self.name, source);
        let mut scratch = self.dev.call_scratch();
        let mut enc = self
            .dev
            .device()
            .create_command_encoder(&Default::default());
        let xb = scratch
            .upload_padded_rows(&mut enc, x, (k, k4))
            .map_err(gpu_err)?;
        let yb = scratch.y((out_values * 4) as u64);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            record(&xb, &yb, &mut pass)?;
        }
        scratch
            .submit_read(enc, &yb, out_values, &[])
            .map_err(gpu_err)
    }

    /// Waits for `pending` and reads its outputs into `out`.
    fn finish_read(&self, pending: PendingRead<'_>, out: &mut [f32]) -> Result<(), LinearError> {
        pending
            .finish_into(out)
            .map(|_| ())
            .map_err(|source| LinearError::gpu(&self.name, source))
    }

    /// The plain multi-vector GEMV of `m` rows of `x` (`many`; 4-bit, `cols % 16 == 0`: no
    /// padding; no bias), in launches of up to [`crate::gpu::MAX_GEMV_VECTORS`] rows on
    /// activations in lane order (or, with the cooperative option, launches of at least
    /// [`super::COOP_MIN_ROWS`] on cooperative matrices), or the one-vector GEMV a row (in
    /// lane order where it takes it, as `forward`; no padding either: the GEMV takes only
    /// matrices of whole words a row), recorded into one submission whose
    /// read back is under way when this returns ([`Self::finish_read`]). The
    /// launches share the call's buffers as [`EntropyCodedLinear`](super::EntropyCodedLinear)'s
    /// do: activations from ranges of one buffer, outputs in place where the device can bind
    /// their offsets, else in a parts buffer copied into place.
    fn submit_gemvs<'a>(
        &'a self,
        v: &crate::gpu::GpuQuantizedMatrix,
        many: bool,
        x: &[f32],
        m: usize,
    ) -> Result<PendingRead<'a>, LinearError> {
        let (r, k) = (self.out_features(), self.in_features());
        let gpu_err = |source| LinearError::gpu(&self.name, source);
        let (device, registry) = (self.dev.device(), self.dev.gpu().registry());
        let per = if many {
            crate::gpu::MAX_GEMV_VECTORS as usize
        } else {
            1
        };
        // (the one-vector GEMV reads lane order where it takes it, as `forward`)
        let lanes = many || v.nibble4_supported();
        let layout = LaunchLayout::new(m, per, k, r, vec![(0, r)], self.dev.storage_alignment());
        let mut scratch = self.dev.call_scratch();
        let mut enc = device.create_command_encoder(&Default::default());
        let xb = scratch
            .upload_with(&mut enc, layout.x_values(), |w| {
                layout.write_rows(w, |row_at, w| {
                    let row = &x[row_at * k..(row_at + 1) * k];
                    // (cooperative launches read column order, which their pass rearranges)
                    if !lanes || (many && self.coop_launch(per.min(m - row_at / per * per))) {
                        w.put(row);
                        return Ok(());
                    }
                    w.put_lane_order(row)
                })
            })
            .map_err(gpu_err)?;
        let y = scratch.y((r * 4 * m) as u64);
        let parts = layout.parts_bytes().map(|bytes| scratch.parts(bytes));
        let mut launches = Vec::new();
        for (j, i, n) in layout.launches() {
            let xr = layout.x_range(&xb, j, n);
            let yr = layout.y_range((&y).into(), parts.as_ref(), (j, i, n), 0);
            if many {
                self.record_many(v, &mut launches, xr, yr, n, true)
                    .map_err(gpu_err)?;
            } else if lanes {
                launches.push(
                    v.gemv_lane_order_dispatch(device, registry, xr, yr)
                        .map_err(gpu_err)?,
                );
            } else {
                launches.push(v.gemv_dispatch(device, registry, xr, yr).map_err(gpu_err)?);
            }
        }
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in &launches {
                d.record(&mut pass);
            }
        }
        layout.record_copies(&mut enc, parts.as_ref(), (&y).into());
        scratch.submit_read(enc, &y, r * m, &[]).map_err(gpu_err)
    }

    /// With cooperative matrices ([`Self::set_cooperative_matrix`]), `forward_batch` calls of
    /// at least `m` rows run the cooperative GEMM where the matrix allows it (4 bits, inputs
    /// a multiple of 64; [`crate::gpu::GpuQuantizedMatrix::gemm_coop_supported`]), in
    /// launches of up to [`super::MAX_M_PER_DISPATCH`] rows: `None` (default)
    /// [`COOP_GEMM_MIN_ROWS`], `Some(usize::MAX)` never. Its weights are rounded to f16 once
    /// dequantized (as MLX's quantized matmul stages them): within about 2^-10 of the sum of
    /// the terms' magnitudes of the f32 result, where the cooperative GEMV's are within
    /// 2^-11.
    pub fn set_coop_gemm_min_rows(&mut self, m: Option<usize>) {
        self.coop_gemm_min_m = m.unwrap_or(COOP_GEMM_MIN_ROWS).max(2);
    }

    /// The fewest rows a call needs to run the cooperative GEMM (`usize::MAX`: never; it
    /// also needs [`Self::cooperative_matrix`]).
    pub fn coop_gemm_min_rows(&self) -> usize {
        self.coop_gemm_min_m
    }

    /// The GEMM `v` of `n` rows of `x` (`n * cols` f32, column order) into `y`: on
    /// cooperative matrices where `coop` (its activation pass, then the GEMM), else the tiled
    /// f32 GEMM.
    fn record_gemm(
        &self,
        (v, coop): (&crate::gpu::GpuQuantizedMatrix, bool),
        out: &mut Vec<LinearDispatch>,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
        n: usize,
    ) -> Result<(), crate::gpu::GpuError> {
        let (device, registry) = (self.dev.device(), self.dev.gpu().registry());
        // (a split's partial sums: a buffer the device keeps)
        let partials = |split| {
            self.dev.resident(
                super::resident::Resident::SplitSums,
                v.gemm_split_bytes(n, split),
            )
        };
        if !coop {
            let tile = self.tiled_tile(v, n);
            match self.tiled_split(v, n, tile) {
                Some(split) => out.extend(v.gemm_tiled_split_dispatch(
                    device,
                    registry,
                    x,
                    y,
                    n,
                    tile,
                    split,
                    &partials(split)?,
                )?),
                None => out.push(v.gemm_tiled_dispatch_with(device, registry, x, y, n, tile)?),
            }
            return Ok(());
        }
        let rows = self.dev.coop_rows(self.in_features(), n)?;
        out.push(crate::gpu::coop_rows_dispatch(device, registry, x, &rows)?);
        let tile = v.gemm_coop_tile_rows(n);
        // (cooperative matrices run on GPUs only: by default they split)
        let split = match self.tiled_splits {
            Some(false) => None,
            _ => v.gemm_coop_split(n, tile),
        };
        match split {
            Some(split) => out.extend(v.gemm_coop_split_dispatch(
                device,
                registry,
                &rows,
                y,
                tile,
                split,
                &partials(split)?,
            )?),
            None => out.push(v.gemm_coop_dispatch_with(device, registry, &rows, y, tile)?),
        }
        Ok(())
    }

    /// The tile of a tiled GEMM launch of `n` rows ([`crate::gpu::TiledGemmTile::for_device`]:
    /// the wide one on CPU devices).
    fn tiled_tile(
        &self,
        v: &crate::gpu::GpuQuantizedMatrix,
        n: usize,
    ) -> crate::gpu::TiledGemmTile {
        crate::gpu::TiledGemmTile::for_device(self.dev.gpu().registry(), v.rows(), n)
    }

    /// The column splits of a tiled GEMM launch of `n` rows (split-K): by default
    /// [`crate::gpu::GpuQuantizedMatrix::gemm_tiled_split_for`] (on GPUs, where the tiles
    /// alone leave cores idle; never on a CPU device), with [`Self::set_tiled_gemm_splits`]
    /// `Some(true)` the GPU rule on any device.
    fn tiled_split(
        &self,
        v: &crate::gpu::GpuQuantizedMatrix,
        n: usize,
        tile: crate::gpu::TiledGemmTile,
    ) -> Option<crate::gpu::GemmSplit> {
        match self.tiled_splits {
            Some(false) => None,
            Some(true) => v.gemm_tiled_split(n, tile),
            None => v.gemm_tiled_split_for(self.dev.gpu().registry(), n, tile),
        }
    }

    /// Whether a multi-vector launch of `n` rows multiplies on cooperative matrices.
    fn coop_launch(&self, n: usize) -> bool {
        self.coop && n >= super::COOP_MIN_ROWS
    }

    /// A launch of the multi-vector GEMV `v` on `n` rows of `x` into `y`: on cooperative
    /// matrices where [`Self::coop_launch`] (its activation pass first, from column order),
    /// else on activations in lane order where `lanes`, in column order otherwise.
    fn record_many(
        &self,
        v: &crate::gpu::GpuQuantizedMatrix,
        out: &mut Vec<LinearDispatch>,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
        n: usize,
        lanes: bool,
    ) -> Result<(), crate::gpu::GpuError> {
        let (device, registry) = (self.dev.device(), self.dev.gpu().registry());
        let d = if self.coop_launch(n) {
            let order = crate::gpu::CoopOrder::Packed;
            let acts = self
                .dev
                .coop_activations(self.in_features(), n as u32, order)?;
            out.push(crate::gpu::coop_x_dispatch(device, registry, x, &acts)?);
            v.gemv_coop_dispatch(device, registry, &acts, y)?
        } else if lanes {
            v.gemv_many_lane_order_dispatch(device, registry, x, y, n as u32)?
        } else {
            v.gemv_many_dispatch(device, registry, x, y, n as u32)?
        };
        out.push(d);
        Ok(())
    }

    /// Rows a `qgemm` launch takes ([`gemm_rows_per_dispatch`]).
    fn gemm_rows_per_dispatch(&self) -> Result<usize, LinearError> {
        let k4 = self.in_features().div_ceil(4) * 4;
        gemm_rows_per_dispatch(&self.dev, &self.name, k4, self.out_features())
    }

    /// Which launches `forward_batch` runs for `m > 0` rows.
    pub(crate) fn path(&self, m: usize) -> PlainPath<'_> {
        let Some(v) = self.vector.as_ref() else {
            return PlainPath::Gemm;
        };
        if m == 1 {
            return PlainPath::Vector(v);
        }
        if self.coop
            && m >= self.coop_gemm_min_m
            && v.gemm_coop_supported(self.dev.gpu().registry())
        {
            return PlainPath::CoopGemm(v);
        }
        let (r, k) = (self.out_features(), self.in_features());
        let many_max = self.many_max_m.unwrap_or(if r * k <= 1 << 22 {
            PLAIN_GEMV_MANY_MAX_M_SMALL
        } else {
            PLAIN_GEMV_MANY_MAX_M
        });
        // with cooperative matrices, launches of 16 rows at every row count for matrices of
        // more than 2^22 weights: on an H200 at 512 rows they took 0.22-0.27x `qgemm`'s GPU
        // time there; at 1024x4096 the many launches' host work made whole calls slower than
        // `qgemm`'s (BENCHMARKS.md issue 5, step 90)
        let coop_all = self.coop && r * k > 1 << 22 && self.many_max_m.is_none();
        let many_ok = v.gemv_many_supported(self.dev.gpu().registry());
        if coop_all && many_ok {
            return PlainPath::Many(v);
        }
        let many = many_ok && (2..=many_max).contains(&m);
        // (devices that run no multi-vector GEMV, CPUs and GPUs without 32-wide subgroups:
        // the one-vector GEMV a row instead, for few rows)
        let registry = self.dev.gpu().registry();
        let vector_max = if registry.cpu_device() {
            CPU_GEMV_MAX_ROWS
        } else if !registry.subgroups32() {
            PORTABLE_GPU_GEMV_MAX_ROWS
        } else {
            0
        };
        let gemvs = !many_ok && (2..=self.many_max_m.unwrap_or(vector_max)).contains(&m);
        if self.tiled_gemm(v, m) && !((many || gemvs) && self.many_max_m.is_some()) {
            return PlainPath::TiledGemm(v);
        }
        if many {
            return PlainPath::Many(v);
        }
        if gemvs {
            return PlainPath::Vector(v);
        }
        PlainPath::Gemm
    }

    /// `x` (rows of `in_features`, a multiple of 16) in lane order.
    fn lane_order(&self, x: &[f32]) -> Result<Vec<f32>, LinearError> {
        crate::gpu::x_lane_order(x, self.in_features())
            .map_err(|source| LinearError::gpu(&self.name, source))
    }

    /// [`Self::run_into`] of one launch of the plain GEMV matrix (`launch(x, y)`), plus the
    /// bias.
    fn run_with_bias(
        &self,
        x: &[f32],
        n: usize,
        launch: impl FnOnce(
            &wgpu::Buffer,
            &wgpu::Buffer,
        ) -> Result<crate::gpu::Dispatch, crate::gpu::GpuError>,
    ) -> Result<Vec<f32>, LinearError> {
        let mut y = vec![0.0; n];
        let pending = self.submit_one(x, (x.len(), x.len()), n, |xb, yb, pass| {
            launch(xb, yb)
                .map_err(|source| LinearError::gpu(&self.name, source))?
                .record(pass);
            Ok(())
        })?;
        self.finish_read(pending, &mut y)?;
        add_bias(&mut y, self.bias.as_deref());
        Ok(y)
    }
}

impl Linear for QuantizedLinear {
    fn name(&self) -> &str {
        &self.name
    }

    fn in_features(&self) -> usize {
        self.params.cols as usize
    }

    fn out_features(&self) -> usize {
        self.params.rows as usize
    }

    fn forward(&self, x: &[f32]) -> Result<Vec<f32>, LinearError> {
        let Some(v) = &self.vector else {
            return self.forward_batch(x, 1);
        };
        check_x(&self.name, self.in_features(), x.len(), 1)?;
        let registry = self.dev.gpu().registry();
        if v.nibble4_supported() {
            let lanes = self.lane_order(x)?;
            return self.run_with_bias(&lanes, self.out_features(), |xb, yb| {
                v.gemv_lane_order_dispatch(self.dev.device(), registry, xb, yb)
            });
        }
        self.run_with_bias(x, self.out_features(), |xb, yb| {
            v.gemv_dispatch(self.dev.device(), registry, xb, yb)
        })
    }

    fn forward_batch(&self, x: &[f32], m: usize) -> Result<Vec<f32>, LinearError> {
        check_x(&self.name, self.in_features(), x.len(), m)?;
        let mut y = vec![0.0; self.out_features() * m];
        self.forward_batch_into(x, m, &mut y)?;
        Ok(y)
    }

    fn forward_batch_into(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), LinearError> {
        let (r, k) = (self.out_features(), self.in_features());
        check_x(&self.name, k, x.len(), m)?;
        check_y(&self.name, r, y.len(), m)?;
        if m == 0 || r == 0 {
            return Ok(());
        }
        let path = self.path(m);
        let coop = matches!(path, PlainPath::CoopGemm(_));
        match path {
            PlainPath::Vector(_) if m == 1 => {
                // (the plain GEMV, as `forward`: `qgemm` took 1.1 ms for one row at 4096x14336
                // on an H200, the GEMV's whole call 0.4)
                y.copy_from_slice(&self.forward(x)?);
                return Ok(());
            }
            PlainPath::Vector(v) | PlainPath::Many(v) => {
                let many = matches!(path, PlainPath::Many(_));
                pipelined(
                    m,
                    super::GEMV_SUBMIT_ROWS,
                    |start, mb| self.submit_gemvs(v, many, &x[start * k..(start + mb) * k], mb),
                    |pending, start, mb| {
                        self.finish_read(pending, &mut y[start * r..(start + mb) * r])
                    },
                )?
            }
            PlainPath::CoopGemm(v) | PlainPath::TiledGemm(v) => {
                self.run_blocks(x, m, y, k, |xb, yb, mb, pass| {
                    let mut launches = Vec::new();
                    let xr = BufferRange::new(xb, 0, (mb * k * 4) as u64);
                    let yr = BufferRange::new(yb, 0, (mb * r * 4) as u64);
                    self.record_gemm((v, coop), &mut launches, xr, yr, mb)
                        .map_err(|source| LinearError::gpu(&self.name, source))?;
                    for d in &launches {
                        d.record(pass);
                    }
                    Ok(())
                })?
            }
            PlainPath::Gemm => {
                self.run_blocks(x, m, y, k.div_ceil(4) * 4, |xb, yb, mb, pass| {
                    self.batch_dispatch(xb, yb, mb)?.record(pass);
                    Ok(())
                })?
            }
        }
        add_bias(y, self.bias.as_deref());
        Ok(())
    }
}

impl QuantizedLinear {
    /// `m` rows of `x` into `y` in submissions of the rows a batched launch takes
    /// ([`Self::gemm_rows_per_dispatch`]), two in flight: each uploads its rows padded to
    /// `k4` values and records `record(x, y, rows, pass)`.
    fn run_blocks(
        &self,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        k4: usize,
        record: impl Fn(
            &wgpu::Buffer,
            &wgpu::Buffer,
            usize,
            &mut wgpu::ComputePass<'_>,
        ) -> Result<(), LinearError>,
    ) -> Result<(), LinearError> {
        let (r, k) = (self.out_features(), self.in_features());
        let per = self.gemm_rows_per_dispatch()?;
        pipelined(
            m,
            per,
            |start, mb| {
                self.submit_one(
                    &x[start * k..(start + mb) * k],
                    (k, k4),
                    mb * r,
                    |xb, yb, pass| record(xb, yb, mb, pass),
                )
            },
            |pending, start, mb| self.finish_read(pending, &mut y[start * r..(start + mb) * r]),
        )
    }
}

/// Recorded calls ([`GpuLinear`]): the launches of `forward_batch` on activations and outputs
/// on the GPU.
impl QuantizedLinear {
    /// The launches of a recorded call on `path`'s kernels, as `forward_batch` makes them.
    pub(crate) fn record_path(
        &self,
        out: &mut Vec<LinearDispatch>,
        call: &ResidentCall<'_>,
        path: PlainPath<'_>,
    ) -> Result<(), LinearError> {
        let gpu = |source| LinearError::gpu(&self.name, source);
        let dev = &self.dev;
        let (device, registry) = (dev.device(), dev.gpu().registry());
        let (r, k) = (self.out_features(), self.in_features());
        let k4 = k.div_ceil(4) * 4;
        let (per, row_values) = match path {
            PlainPath::Vector(_) => (1, k),
            PlainPath::Many(_) => (crate::gpu::MAX_GEMV_VECTORS as usize, k),
            PlainPath::CoopGemm(_) | PlainPath::TiledGemm(_) => (self.gemm_rows_per_dispatch()?, k),
            PlainPath::Gemm => (self.gemm_rows_per_dispatch()?, k4),
        };
        let (layout, parts) = call
            .outputs(dev, per, row_values, vec![(0, r)])
            .map_err(gpu)?;
        // (one-vector launches read the order they are given, as the coded layer's do)
        let given_lanes = call.order == ActivationOrder::Lanes;
        let need = |n: usize| {
            let lanes = match path {
                PlainPath::Vector(v) => v.nibble4_supported() && given_lanes,
                PlainPath::Many(_) => !self.coop_launch(n) && (n > 1 || given_lanes),
                PlainPath::CoopGemm(_) | PlainPath::TiledGemm(_) | PlainPath::Gemm => false,
            };
            RowsNeed {
                order: if lanes {
                    ActivationOrder::Lanes
                } else {
                    ActivationOrder::Columns
                },
                stride: row_values,
            }
        };
        let launches: Vec<_> = layout.launches().map(|(_, i, n)| (i, n, need(n))).collect();
        let rows = call.stage_rows(dev, out, &launches).map_err(gpu)?;
        for (j, i, n) in layout.launches() {
            let (xr, yr) = (
                rows.range(j),
                layout.y_range(call.y, parts.as_ref(), (j, i, n), 0),
            );
            let lanes = need(n).order == ActivationOrder::Lanes;
            let d = match path {
                PlainPath::Vector(v) if lanes => {
                    v.gemv_lane_order_dispatch(device, registry, xr, yr)
                }
                PlainPath::Vector(v) => v.gemv_dispatch(device, registry, xr, yr),
                PlainPath::Many(v) => {
                    self.record_many(v, out, xr, yr, n, lanes).map_err(gpu)?;
                    continue;
                }
                PlainPath::CoopGemm(v) | PlainPath::TiledGemm(v) => {
                    let coop = matches!(path, PlainPath::CoopGemm(_));
                    self.record_gemm((v, coop), out, xr, yr, n).map_err(gpu)?;
                    continue;
                }
                PlainPath::Gemm => {
                    out.push(self.batch_dispatch_in(xr, yr, n)?);
                    continue;
                }
            };
            out.push(d.map_err(gpu)?);
        }
        call.place_outputs(dev, out, &layout, parts.as_ref())
            .map_err(gpu)
    }
}

impl GpuLinear for QuantizedLinear {
    fn linear_device(&self) -> &Arc<LinearDevice> {
        &self.dev
    }

    /// The launches `forward_batch` runs for `m` rows (the plain GEMV for one, launches of
    /// the multi-vector GEMV or `qgemm`), then the bias.
    fn prepare_forward(
        &self,
        x: BufferRange<'_>,
        order: ActivationOrder,
        m: usize,
        y: BufferRange<'_>,
    ) -> Result<PreparedForward, LinearError> {
        let bias = bias_buffer(&self.dev, &self.bias_gpu, self.bias.as_deref());
        let (dev, dims) = (&self.dev, (self.in_features(), self.out_features()));
        prepare_call(
            dev,
            &self.name,
            (x, order, m),
            dims,
            y,
            bias,
            |out, call| self.record_path(out, call, self.path(m)),
        )
    }

    /// Plain weights have no stream to corrupt.
    fn check_recorded(&self) -> Result<(), LinearError> {
        Ok(())
    }
}
