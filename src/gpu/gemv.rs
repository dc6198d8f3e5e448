//! The plain MLX quantized GEMV (`wgsl/qgemv4.wgsl` for 4 bits, `wgsl/qgemv.wgsl` for 2 and 8
//! bits), the baseline of the fused kernel, and the candidate streaming 4-bit kernels
//! (`wgsl/qgemv4_stream.wgsl`, only on request).

use super::decode::entry;
use super::{
    grid, read_back, storage_init, wait, BufferRange, Dispatch, GpuError, Kernel, PipelineRegistry,
};

/// Rows per workgroup of `qgemv.wgsl` (ROWS).
const ROWS_PER_WG: usize = 4;
/// Most groups of 32 lanes splitting K in one workgroup (256 invocations, the WebGPU default
/// limit).
const MAX_KSPLIT: u32 = 8;
/// Groups of 32 lanes the 4-bit kernel aims to launch (about 31 per SM on a 132-SM GPU, the
/// best of a K-split sweep on an H200); fewer rows split K over more groups.
const TARGET_GROUPS: usize = 4096;

/// Which plain GEMV kernel [`GpuQuantizedMatrix::gemv_dispatch_with`] launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QGemvVariant {
    /// `Pipelined { rows: 4, ksplit: 0 }` for 4-bit matrices whose rows and groups hold whole
    /// 16-weight pieces (measured 4-9% faster than `Nibble4` on an H200, same arithmetic),
    /// `Generic` otherwise.
    #[default]
    Auto,
    /// `wgsl/qgemv.wgsl` (2, 4, 8 bits; the issue-4 kernel, kept for comparison and for 2/8
    /// bits).
    Generic,
    /// `wgsl/qgemv4.wgsl` with `ksplit` (1, 2, 4 or 8) groups of 32 lanes per 4 rows; 0 picks
    /// automatically. 4 bits only.
    Nibble4 {
        /// Groups of 32 lanes splitting K per block of 4 rows; 0 = automatic.
        ksplit: u32,
    },
    /// `wgsl/qgemv4_dp4a.wgsl`: as `Nibble4`, with the activations of each 16-weight piece
    /// quantized to 8 bits in registers (scale `max|x| / 127`) and multiplied by the packed
    /// 4x8-bit integer dot product. **Approximate**: adds at most `|scale| * d / 2 * sum(q)` per
    /// piece (`d` = the piece's activation scale), like ggml's 8-bit activations. Never picked by
    /// `Auto`. Needs the WGSL language extension `packed_4x8_integer_dot_product` (wgpu 30 has
    /// it on every backend, natively where the device has integer dot products, else
    /// polyfilled); if the shader is refused the dispatch returns [`GpuError::Wgpu`].
    Int8Dot {
        /// Groups of 32 lanes splitting K per block of 4 rows; 0 = automatic.
        ksplit: u32,
    },
    /// `wgsl/qgemv4_stream.wgsl` (candidate, exact f32 like `Nibble4`, never picked by
    /// `Auto`): 16-byte weight loads, `rows` (1, 2 or 4) rows per group of 32 lanes, no
    /// activation pre-scaling; see the kernel's header. Needs 4 bits, `cols % 32 == 0` and
    /// group size `% 32 == 0` ([`GpuQuantizedMatrix::stream_supported`]); other 4-bit matrices
    /// run `qgemv4.wgsl` ([`QGemvVariant::Nibble4`], automatic K split) instead, or
    /// [`QGemvVariant::Generic`] where that cannot run either.
    Stream {
        /// Rows per group of 32 lanes: 1, 2 or 4.
        rows: u32,
        /// Groups of 32 lanes splitting K per row set (1, 2, 4 or 8); 0 = automatic
        /// ([`GpuQuantizedMatrix::stream_auto_ksplit`]).
        ksplit: u32,
    },
    /// `wgsl/qgemv4_stream.wgsl`'s `staged_r*` entry points (candidate, exact f32, never
    /// picked by `Auto`): as `Stream`, with the activations copied once per chunk of 2048
    /// weights into workgroup memory, transposed so that a lane's 32 activations are 8
    /// conflict-free 16-byte reads (8 KiB, two barriers per chunk; the next chunk's weights are
    /// loaded before the current one is multiplied). Same shape requirements and fallback as
    /// `Stream`.
    Staged {
        /// Rows per group of 32 lanes: 1, 2 or 4.
        rows: u32,
        /// Groups of 32 lanes per row set, each taking 2 / ksplit of a chunk's two tiles: 1 or
        /// 2 (4 rows: 2 only); 0 = automatic ([`GpuQuantizedMatrix::staged_auto_ksplit`]).
        ksplit: u32,
    },
    /// `wgsl/qgemv4_pipe.wgsl` (exact f32; `rows: 4` is what `Auto` picks for 4 bits): `Nibble4`'s
    /// layout with the next iteration's weights loaded before the current one is multiplied,
    /// and no activation pre-scaling; with `rows: 8`, 8 rows x 1 piece per iteration instead
    /// of 4 x 2 (activations shared by twice the rows). Same requirements as `Nibble4`.
    Pipelined {
        /// Rows per group of 32 lanes: 4 or 8.
        rows: u32,
        /// Groups of 32 lanes splitting K per row block (1, 2, 4 or 8); 0 = automatic
        /// ([`GpuQuantizedMatrix::pipelined_auto_ksplit`]).
        ksplit: u32,
    },
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    vec_per_row: u32,
    groups_per_row: u32,
    wg_x: u32,
    total_wg: u32,
    /// Always 0: `qgemv4_pipe.wgsl` ORs it into its int-to-float constant, so the driver
    /// holds that constant in a register (BENCHMARKS.md issue 5, step 50).
    zero: u32,
    _pad1: u32,
}

/// The last uniform buffer, keyed by (workgroups along x, total workgroups, vectors per row).
type UniformCache = ((u32, u32, u32), wgpu::Buffer);

/// Inputs of the tiled f32 GEMM ([`GpuQuantizedMatrix::gemm_tiled_dispatch`]) must be a
/// multiple of this: its steps of columns.
pub const TILED_GEMM_COLS: usize = 16;

/// Activation rows of a workgroup's tile in [`GpuQuantizedMatrix::gemm_tiled_dispatch`], and
/// the matrix rows of its narrow tile ([`TiledGemmTile::Narrow`]).
pub const TILED_GEMM_TILE: usize = 64;

/// Workgroups of wide tiles from which [`TiledGemmTile::for_shape`] picks them: on an H200
/// (132 SMs) a grid of 128 narrow tiles took 190 µs where the same work in 64 wide ones took
/// 300, and 512 narrow ones 710-840 µs where 256 wide ones took 550 (BENCHMARKS.md issue 5,
/// step 100).
pub const TILED_GEMM_WIDE_MIN_WORKGROUPS: usize = 256;

/// Workgroups [`GpuQuantizedMatrix::gemm_tiled_split`] splits a grid of fewer tiles into, as
/// far as [`TILED_GEMM_SPLIT_MIN_COLS`] allows. Its workgroups are small (within WebGPU's
/// default limits), so several share an SM: on an H200 and an H100 (BENCHMARKS.md issue 5,
/// step 104) 32 Llama-3-8B layers in f32 took 38.9-40.1 ms plain at 48-64 tokens with 1024
/// against 42.4-43.4 with 256 (step 101's rule) and 41.1-42.1 with 512; 2048 ran as 1024,
/// 4096 (splits of at least 256 columns) 1.00-1.02x as long. Grids of 256 to 1023 tiles split
/// too since step 110 (they did not before): on an H200 the same layers took 75.9 ms plain
/// at 128 tokens against 86.3, and with q, k, v and gate, up merged 37.6 / 38.6 ms at 33 / 64
/// tokens against 42.2 / 43.8 (70.6 against 69.8 at 128).
pub const TILED_GEMM_SPLIT_WORKGROUPS: usize = 1024;

/// Columns a split of [`GpuQuantizedMatrix::gemm_tiled_split`] takes at the least (16 steps
/// of the GEMM's loop): fewer would spend more on the partial sums than the grid gains. 256
/// against 512 (BENCHMARKS.md issue 5, steps 108 and 112; 32 Llama-3-8B layers in f32,
/// 33-64 rows, where grids of 4096-column matrices split 8 or 16 ways): 1.2-1.6% faster
/// plain on an H100 and 1.9-2.8% on an H200; at 128 rows equal on the H100, 0.6% slower on
/// the H200 (before step 110's rule).
pub const TILED_GEMM_SPLIT_MIN_COLS: usize = 256;

/// Column splits (split-K) of a tiled GEMM, for grids too small to fill a GPU: `splits`
/// ranges of `steps` steps of the kernel's columns each (the last one shorter), every range
/// holding at least one step. [`Self::tiled`] for the tiled f32 GEMM
/// ([`GpuQuantizedMatrix::gemm_tiled_split_dispatch`], steps of [`TILED_GEMM_COLS`]),
/// [`Self::coop`] for the cooperative one
/// ([`GpuQuantizedMatrix::gemm_coop_split_dispatch`], steps of
/// [`COOP_GEMM_COLS`](super::COOP_GEMM_COLS)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmSplit {
    cols: usize,
    step_cols: usize,
    splits: usize,
    steps: usize,
}

impl GemmSplit {
    /// At most `splits` ranges of `cols` inputs (a multiple of [`TILED_GEMM_COLS`]) for the
    /// tiled f32 GEMM, of equal steps but the last; `None` for fewer than two (no split).
    pub fn tiled(cols: usize, splits: usize) -> Option<Self> {
        Self::new(cols, TILED_GEMM_COLS, splits)
    }

    /// [`Self::tiled`] for the cooperative GEMM: `cols` a multiple of
    /// [`COOP_GEMM_COLS`](super::COOP_GEMM_COLS), ranges of whole steps of that many.
    pub fn coop(cols: usize, splits: usize) -> Option<Self> {
        Self::new(cols, super::COOP_GEMM_COLS, splits)
    }

    fn new(cols: usize, step_cols: usize, splits: usize) -> Option<Self> {
        let total = cols / step_cols;
        if splits < 2 || total < 2 || !cols.is_multiple_of(step_cols) {
            return None;
        }
        let steps = total.div_ceil(splits.min(total));
        let splits = total.div_ceil(steps);
        (splits >= 2).then_some(Self {
            cols,
            step_cols,
            splits,
            steps,
        })
    }

    /// The ranges (at most the count asked for: every range holds a step).
    pub fn splits(self) -> usize {
        self.splits
    }

    /// Columns of each range but the last.
    pub fn cols_per_split(self) -> usize {
        self.steps * self.step_cols
    }

    /// [`GpuError::InvalidInput`] unless this split is of `cols` inputs in steps of
    /// `step_cols` (the GEMM it is given to).
    fn check(self, cols: usize, step_cols: usize, gemm: &str) -> Result<(), GpuError> {
        if self.cols != cols || self.step_cols != step_cols {
            return Err(GpuError::InvalidInput(format!(
                "a split of {} inputs in steps of {} for the {gemm} GEMM of a matrix of {cols} \
                 inputs in steps of {step_cols}",
                self.cols, self.step_cols
            )));
        }
        Ok(())
    }
}

/// The matrix rows of a workgroup's tile in the tiled f32 GEMM
/// ([`GpuQuantizedMatrix::gemm_tiled_dispatch_with`]); both tiles are
/// [`TILED_GEMM_TILE`] activation rows and fit WebGPU's default limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TiledGemmTile {
    /// 64 matrix rows, 4 x 4 outputs an invocation: twice the workgroups of the wide tile.
    Narrow,
    /// 128 matrix rows, 8 x 4 outputs an invocation: each activation tile serves twice the
    /// weights, and twice the multiply-adds a step hide the step's loads and barriers.
    Wide,
}

impl TiledGemmTile {
    /// Matrix rows of the tile.
    pub fn rows(self) -> usize {
        match self {
            TiledGemmTile::Narrow => 64,
            TiledGemmTile::Wide => 128,
        }
    }

    /// The tile for `rows` matrix rows and `m` activation rows: wide where its grid has at
    /// least [`TILED_GEMM_WIDE_MIN_WORKGROUPS`] workgroups, narrow where fewer would leave
    /// a GPU's cores idle.
    pub fn for_shape(rows: usize, m: usize) -> Self {
        let wide = rows.div_ceil(128) * m.div_ceil(TILED_GEMM_TILE);
        if wide >= TILED_GEMM_WIDE_MIN_WORKGROUPS {
            TiledGemmTile::Wide
        } else {
            TiledGemmTile::Narrow
        }
    }

    /// [`Self::for_shape`] on a GPU; the wide tile on a CPU device
    /// ([`PipelineRegistry::cpu_device`]), whose few threads any grid fills and where each
    /// activation tile then serves twice the weights (lavapipe: 1.12-1.24x faster at
    /// 1024x4096 and 4096x4096, 64 and 512 rows; BENCHMARKS.md issue 5, step 101).
    pub fn for_device(registry: &PipelineRegistry, rows: usize, m: usize) -> Self {
        if registry.cpu_device() {
            TiledGemmTile::Wide
        } else {
            Self::for_shape(rows, m)
        }
    }
}

/// An MLX quantized matrix (2, 4 or 8 bits) uploaded for the plain GEMV.
#[derive(Debug)]
pub struct GpuQuantizedMatrix {
    params: Params,
    bits: u32,
    group_size: u32,
    packed: wgpu::Buffer,
    sb: wgpu::Buffer,
    side: super::SideFormat,
    uniform: std::sync::Mutex<Option<UniformCache>>,
}

impl GpuQuantizedMatrix {
    /// Uploads `q`. Supports 2, 4 and 8 bits with `cols * bits % 128 == 0` (rows of whole
    /// 16-byte vectors) and group sizes holding whole `u32` words (all of MLX's 32, 64, 128).
    /// Scales and biases are uploaded as interleaved pairs in the narrowest exact format
    /// ([`super::SideFormat::exact_for`]: 16-bit for MLX's f16/bf16 values).
    pub fn upload(
        device: &wgpu::Device,
        q: &crate::quant::QuantizedMatrix,
    ) -> Result<Self, GpuError> {
        Self::upload_with_side(
            device,
            q,
            super::SideFormat::exact_for(&q.scales, &q.biases),
        )
    }

    /// [`Self::upload`] with the scales and biases stored as `side` (benchmarks compare the
    /// formats); [`GpuError::InvalidInput`] if a value is not exact in it.
    pub fn upload_with_side(
        device: &wgpu::Device,
        q: &crate::quant::QuantizedMatrix,
        side: super::SideFormat,
    ) -> Result<Self, GpuError> {
        let (r, k, b, gs) = (q.rows, q.cols, q.bits, q.group_size as usize);
        let params = Self::params_for(r, k, b, gs)?;
        let groups = r * (k / gs);
        if q.packed.len() != r * k * b as usize / 32
            || q.scales.len() != groups
            || q.biases.len() != groups
        {
            return Err(GpuError::InvalidInput(format!(
                "packed/scales/biases have {}/{}/{} entries for {r}x{k} {b}-bit g{gs}",
                q.packed.len(),
                q.scales.len(),
                q.biases.len()
            )));
        }
        side.check_exact(&q.scales, &q.biases)?;
        let inter = side.pack(&q.scales, &q.biases);
        let none = wgpu::BufferUsages::empty();
        Ok(GpuQuantizedMatrix {
            params,
            bits: b,
            group_size: gs as u32,
            packed: storage_init(
                device,
                "packed weights",
                bytemuck::cast_slice(&q.packed),
                none,
            )?,
            sb: storage_init(device, "scales+biases", &inter, none)?,
            side,
            uniform: Default::default(),
        })
    }

    /// An `r` x `k` matrix of `b`-bit weights in groups of `gs` on buffers already on the GPU:
    /// `packed` holds its MLX words (from the start) and `sb` its (scale, bias) pairs in
    /// `side`. Checks what [`Self::upload`] checks of the geometry, and the buffers' sizes.
    pub(crate) fn on_buffers(
        (r, k, b, gs): (usize, usize, u32, usize),
        packed: wgpu::Buffer,
        sb: wgpu::Buffer,
        side: super::SideFormat,
    ) -> Result<Self, GpuError> {
        let params = Self::params_for(r, k, b, gs)?;
        let words = r as u64 * k as u64 * b as u64 / 8;
        let pairs = r as u64 * (k / gs) as u64 * side.bytes_per_group() as u64;
        if packed.size() < words || sb.size() < pairs {
            return Err(GpuError::InvalidInput(format!(
                "packed/pairs buffers have {}/{} bytes, a {r}x{k} {b}-bit g{gs} matrix needs \
                 {words}/{pairs}",
                packed.size(),
                sb.size()
            )));
        }
        Ok(GpuQuantizedMatrix {
            params,
            bits: b,
            group_size: gs as u32,
            packed,
            sb,
            side,
            uniform: Default::default(),
        })
    }

    /// The kernels' parameters for an `r` x `k` matrix of `b`-bit weights in groups of `gs`,
    /// or why the plain GEMV cannot run it.
    fn params_for(r: usize, k: usize, b: u32, gs: usize) -> Result<Params, GpuError> {
        if ![2, 4, 8].contains(&b) {
            return Err(GpuError::Unsupported(format!(
                "plain GEMV supports 2, 4 and 8 bits, not {b}"
            )));
        }
        if !(k * b as usize).is_multiple_of(128) {
            return Err(GpuError::Unsupported(format!(
                "plain GEMV needs cols * bits % 128 == 0 (cols {k}, bits {b})"
            )));
        }
        if gs == 0 || !k.is_multiple_of(gs) || !gs.is_multiple_of(32 / b as usize) {
            return Err(GpuError::InvalidInput(format!(
                "group size {gs} must divide cols {k} and hold whole u32 words"
            )));
        }
        Ok(Params {
            rows: u32::try_from(r).map_err(|_| GpuError::InvalidInput("rows".into()))?,
            cols: u32::try_from(k).map_err(|_| GpuError::InvalidInput("cols".into()))?,
            vec_per_row: (k * b as usize / 128) as u32,
            groups_per_row: (k / gs) as u32,
            total_wg: r.div_ceil(ROWS_PER_WG) as u32,
            ..Default::default()
        })
    }

    /// Decodes a coded matrix on the GPU into a new plain matrix, with no trip through the
    /// host: the decode kernel writes the MLX packed words into the new matrix's buffer and
    /// the scales and biases given to the coded matrix's upload are shared. For loading a
    /// model on a GPU where the plain GEMV is faster than the fused one (an H100 or H200:
    /// BENCHMARKS.md, issue 5). One call waits for the GPU once; for many matrices
    /// [`Self::decode_many`] waits once for all.
    ///
    /// # Errors
    ///
    /// [`GpuError::InvalidInput`] if `coded` was uploaded without scales and biases,
    /// [`GpuError::Unsupported`] where the plain GEMV cannot run the matrix (see
    /// [`Self::upload`]), [`GpuError::CorruptStream`] for a stream the kernel finds corrupt.
    /// Checksums are not verified (see [`crate::gpu::GpuContext::upload_coded`]).
    pub fn decode_from(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        coded: &super::GpuCodedMatrix,
    ) -> Result<Self, GpuError> {
        let mut v = Self::decode_many(device, queue, registry, &[coded])?;
        Ok(v.pop().expect("one matrix in, one out"))
    }

    /// [`Self::decode_from`] for many matrices: every decode recorded in one submission and
    /// one wait for all of them, then each matrix's error buffer checked; the first matrix (in
    /// order) that fails gives the error. Every matrix is checked before any GPU work starts.
    pub fn decode_many(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        coded: &[&super::GpuCodedMatrix],
    ) -> Result<Vec<Self>, GpuError> {
        let mut out = Vec::with_capacity(coded.len());
        let mut launches = Vec::new();
        for m in coded {
            let (sb, gs, side) = m.quant_params().ok_or_else(|| {
                GpuError::InvalidInput(
                    "decoding to a plain matrix needs the scales and biases at upload".into(),
                )
            })?;
            let (r, k, b) = (m.rows(), m.cols(), m.bits());
            // (checked before the buffer is made)
            Self::params_for(r, k, b, gs as usize)?;
            let bytes = r as u64 * k as u64 * b as u64 / 8;
            super::check_storage(device, "decoded packed weights", bytes)?;
            let packed = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("packed weights (decoded)"),
                size: bytes.max(16),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            if m.n_chunks() > 0 {
                launches.push((
                    *m,
                    m.decode_dispatch(device, registry, &packed, super::DecodeOutput::Packed)?,
                ));
            }
            out.push(Self::on_buffers(
                (r, k, b, gs as usize),
                packed,
                sb.clone(),
                side,
            )?);
        }
        if !launches.is_empty() {
            let launches: Vec<_> = launches.iter().map(|(m, d)| (*m, d)).collect();
            super::decode::run_checked_launches(device, queue, &launches)?;
        }
        Ok(out)
    }

    /// How the scales and biases are stored on the GPU.
    pub fn side_format(&self) -> super::SideFormat {
        self.side
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.params.rows as usize
    }

    /// Weights per row.
    pub fn cols(&self) -> usize {
        self.params.cols as usize
    }

    /// Bits per weight.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The packed words' and the (scale, bias) pairs' buffers (MLX words as uploaded, pairs in
    /// [`Self::side_format`]), for the linear layers' batched kernel on the same weights.
    pub(crate) fn buffers(&self) -> (&wgpu::Buffer, &wgpu::Buffer) {
        (&self.packed, &self.sb)
    }

    /// Bytes of packed weights (what MLX reads per GEMV, without scales and biases).
    pub fn packed_bytes(&self) -> u64 {
        self.rows() as u64 * self.cols() as u64 * self.bits as u64 / 8
    }

    /// The GEMV launch `y = W x` (`x`: `cols` f32, `y`: `rows` f32), kernel chosen
    /// automatically ([`QGemvVariant::Auto`]).
    pub fn gemv_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: impl Into<BufferRange<'b>>,
        y: impl Into<BufferRange<'b>>,
    ) -> Result<Dispatch, GpuError> {
        self.gemv_dispatch_with(device, registry, x, y, QGemvVariant::Auto)
    }

    /// [`Self::gemv_dispatch`]'s 4-bit kernel (`qgemv4_pipe.wgsl`, 4 rows a group, the
    /// automatic K split) on activations in lane order ([`super::x_lane_order`]): the same
    /// outputs bit for bit, with each piece's activations read in whole 128-byte lines (the
    /// plain counterpart of the fused kernel on lane order, BENCHMARKS.md issue 5, step 88).
    /// Matrices [`Self::nibble4_supported`] refuses get [`GpuError::Unsupported`].
    pub fn gemv_lane_order_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: impl Into<BufferRange<'b>>,
        y: impl Into<BufferRange<'b>>,
    ) -> Result<Dispatch, GpuError> {
        let (x, y) = (x.into(), y.into());
        if !self.nibble4_supported() {
            return Err(GpuError::Unsupported(format!(
                "activations in lane order need 4 bits, cols % 16 == 0 and group size % 16 == 0 \
                 ({} bits, cols {}, group size {})",
                self.bits,
                self.cols(),
                self.group_size
            )));
        }
        self.check_vector_buffers(device, x, y)?;
        let ks = self.pipelined_auto_ksplit(4);
        let kernel = (Kernel::QGemv4Pipe, "main", self.params.cols / 16);
        self.stream_dispatch(device, registry, x, y, kernel, 4, ks, &[("XLANES", 1)])
    }

    /// Checks that `x` and `y` hold one vector's activations and outputs.
    fn check_vector_buffers(
        &self,
        device: &wgpu::Device,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
    ) -> Result<(), GpuError> {
        x.check(device, "x")?;
        y.check(device, "y")?;
        if x.size() < self.cols() as u64 * 4 || y.size() < self.rows() as u64 * 4 {
            return Err(GpuError::InvalidInput(format!(
                "x/y ranges have {}/{} bytes, need {}/{}",
                x.size(),
                y.size(),
                self.cols() * 4,
                self.rows() * 4
            )));
        }
        Ok(())
    }

    /// Whether the 4-bit kernel (`qgemv4.wgsl`) can run this matrix.
    pub fn nibble4_supported(&self) -> bool {
        self.bits == 4 && self.cols().is_multiple_of(16) && self.group_size.is_multiple_of(16)
    }

    /// The K split [`QGemvVariant::Nibble4`] `{ ksplit: 0 }` picks: enough groups of 32 lanes
    /// to fill a large GPU, while every group still gets two 16-weight pieces per row.
    pub fn auto_ksplit(&self) -> u32 {
        let row_blocks = self.rows().div_ceil(4);
        let n2 = self.cols() / 16;
        let mut ks = 1usize;
        while ks < MAX_KSPLIT as usize && row_blocks * ks < TARGET_GROUPS && n2 >= 64 * ks * 2 {
            ks *= 2;
        }
        ks as u32
    }

    /// Whether the streaming kernels ([`QGemvVariant::Stream`]) can run this matrix: 4 bits,
    /// rows of whole 16-byte vectors (`cols % 32 == 0`) and groups of whole 32-weight pieces.
    pub fn stream_supported(&self) -> bool {
        self.bits == 4 && self.cols().is_multiple_of(32) && self.group_size.is_multiple_of(32)
    }

    /// The K split [`QGemvVariant::Stream`] `{ rows, ksplit: 0 }` picks: as
    /// [`auto_ksplit`](Self::auto_ksplit), about 4096 groups of 32 lanes while every lane keeps
    /// at least two 32-weight pieces per row.
    pub fn stream_auto_ksplit(&self, rows_per_group: u32) -> u32 {
        let sets = self.rows().div_ceil(rows_per_group.max(1) as usize);
        let n4 = self.cols() / 32;
        let mut ks = 1usize;
        while ks < MAX_KSPLIT as usize && sets * ks < TARGET_GROUPS && n4 >= 64 * ks * 2 {
            ks *= 2;
        }
        ks as u32
    }

    /// The K split [`QGemvVariant::Staged`] `{ rows, ksplit: 0 }` picks: 2 (each group takes
    /// one tile of a chunk) while fewer than about 4096 row sets exist and K holds a whole
    /// chunk, else 1; always 2 for 4 rows.
    pub fn staged_auto_ksplit(&self, rows_per_group: u32) -> u32 {
        let sets = self.rows().div_ceil(rows_per_group.max(1) as usize);
        if rows_per_group >= 4 || (sets < TARGET_GROUPS && self.cols() >= 2048) {
            2
        } else {
            1
        }
    }

    /// The K split [`QGemvVariant::Pipelined`] `{ rows, ksplit: 0 }` picks: as
    /// [`auto_ksplit`](Self::auto_ksplit) for blocks of `rows_per_group` rows.
    pub fn pipelined_auto_ksplit(&self, rows_per_group: u32) -> u32 {
        let blocks = self.rows().div_ceil(rows_per_group.max(1) as usize);
        let n2 = self.cols() / 16;
        let mut ks = 1usize;
        while ks < MAX_KSPLIT as usize && blocks * ks < TARGET_GROUPS && n2 >= 64 * ks * 2 {
            ks *= 2;
        }
        ks as u32
    }

    /// The GEMV launch with an explicit kernel choice (benchmarks, tests).
    pub fn gemv_dispatch_with<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: impl Into<BufferRange<'b>>,
        y: impl Into<BufferRange<'b>>,
        variant: QGemvVariant,
    ) -> Result<Dispatch, GpuError> {
        let (x, y) = (x.into(), y.into());
        self.check_vector_buffers(device, x, y)?;
        // Auto: the pipelined 4-bit kernel where it runs (4-9% faster than qgemv4 on an H200,
        // the same results at the same K split; BENCHMARKS.md, issue 5 step 10)
        let variant = match variant {
            QGemvVariant::Auto if self.nibble4_supported() => {
                QGemvVariant::Pipelined { rows: 4, ksplit: 0 }
            }
            v => v,
        };
        let variant = match variant {
            QGemvVariant::Stream { rows, ksplit } if self.stream_supported() => {
                if ![1, 2, 4].contains(&rows) {
                    return Err(GpuError::InvalidInput(format!(
                        "stream rows per group {rows} is not 1, 2 or 4"
                    )));
                }
                let ks = match ksplit {
                    0 => self.stream_auto_ksplit(rows),
                    1 | 2 | 4 | 8 => ksplit,
                    _ => {
                        return Err(GpuError::InvalidInput(format!(
                            "ksplit {ksplit} is not 1, 2, 4 or 8"
                        )))
                    }
                };
                let entry_point = ["main_r1", "main_r2", "main_r4"][rows.trailing_zeros() as usize];
                let kernel = (Kernel::QGemv4Stream, entry_point, self.params.cols / 32);
                return self.stream_dispatch(device, registry, x, y, kernel, rows, ks, &[]);
            }
            QGemvVariant::Staged { rows, ksplit } if self.stream_supported() => {
                let ks = match (rows, ksplit) {
                    (1 | 2 | 4, 0) => self.staged_auto_ksplit(rows),
                    (1 | 2, 1 | 2) | (4, 2) => ksplit,
                    _ => {
                        return Err(GpuError::InvalidInput(format!(
                            "staged kernel: rows {rows} (1, 2 or 4) with ksplit {ksplit} \
                             (0, 1 or 2; 4 rows: 0 or 2)"
                        )))
                    }
                };
                let entry_point =
                    ["staged_r1", "staged_r2", "staged_r4"][rows.trailing_zeros() as usize];
                let kernel = (Kernel::QGemv4Stream, entry_point, self.params.cols / 32);
                return self.stream_dispatch(device, registry, x, y, kernel, rows, ks, &[]);
            }
            QGemvVariant::Pipelined { rows, ksplit } if self.nibble4_supported() => {
                let ks = match ksplit {
                    0 => self.pipelined_auto_ksplit(rows),
                    1 | 2 | 4 | 8 => ksplit,
                    _ => {
                        return Err(GpuError::InvalidInput(format!(
                            "ksplit {ksplit} is not 1, 2, 4 or 8"
                        )))
                    }
                };
                let entry_point = match rows {
                    4 => "main",
                    8 => "main8",
                    _ => {
                        return Err(GpuError::InvalidInput(format!(
                            "pipelined rows per group {rows} is not 4 or 8"
                        )))
                    }
                };
                let kernel = (Kernel::QGemv4Pipe, entry_point, self.params.cols / 16);
                return self.stream_dispatch(device, registry, x, y, kernel, rows, ks, &[]);
            }
            // shapes the streaming kernels cannot run fall back to qgemv4, or the generic
            // kernel where that cannot run either
            QGemvVariant::Stream { .. } | QGemvVariant::Staged { .. } if self.bits == 4 => {
                if self.nibble4_supported() {
                    QGemvVariant::Nibble4 { ksplit: 0 }
                } else {
                    QGemvVariant::Generic
                }
            }
            v => v,
        };
        let nibble = match variant {
            // Auto reaches here only for matrices the 4-bit kernels cannot run (see above)
            QGemvVariant::Auto => None,
            QGemvVariant::Stream { .. } | QGemvVariant::Staged { .. } => {
                return Err(GpuError::Unsupported(format!(
                    "qgemv4_stream needs 4 bits, not {}",
                    self.bits
                )))
            }
            QGemvVariant::Generic => None,
            QGemvVariant::Nibble4 { ksplit }
            | QGemvVariant::Int8Dot { ksplit }
            | QGemvVariant::Pipelined { ksplit, .. } => Some(self.nibble4_ksplit(ksplit)?),
        };
        if let Some(ks) = nibble {
            let kernel = if matches!(variant, QGemvVariant::Int8Dot { .. }) {
                Kernel::QGemv4Dp4a
            } else {
                Kernel::QGemv4
            };
            return self.nibble4_dispatch(device, registry, (kernel, ks, &[]), x, y);
        }
        let total_wg = self.params.total_wg;
        let (gx, gy) = grid(device, total_wg);
        let uniform = self.uniform(device, gx, total_wg, self.params.vec_per_row);
        // one group per 16-byte step of a row, up to MAX_KSPLIT groups
        let ksplit = self.params.vec_per_row.div_ceil(32).clamp(1, MAX_KSPLIT);
        let pipeline = registry.get(
            device,
            Kernel::QGemv,
            "main",
            &[
                ("BITS", self.bits),
                ("GS", self.group_size),
                ("KSPLIT", ksplit),
                ("WGS", 32 * ksplit),
                self.side.constant(),
            ],
        )?;
        Ok(self.bind(device, pipeline, &uniform, x, y, (gx, gy)))
    }

    /// The K split the 4-bit kernels (`qgemv4.wgsl`, `qgemv4_dp4a.wgsl`) run with for
    /// `ksplit` (0 = automatic), or why they cannot run this matrix.
    fn nibble4_ksplit(&self, ksplit: u32) -> Result<u32, GpuError> {
        if !self.nibble4_supported() {
            return Err(GpuError::Unsupported(format!(
                "qgemv4 needs 4 bits, cols % 16 == 0 and group size % 16 == 0 \
                 ({} bits, cols {}, group size {})",
                self.bits,
                self.cols(),
                self.group_size
            )));
        }
        match ksplit {
            0 => Ok(self.auto_ksplit()),
            1 | 2 | 4 | 8 => Ok(ksplit),
            _ => Err(GpuError::InvalidInput(format!(
                "ksplit {ksplit} is not 1, 2, 4 or 8"
            ))),
        }
    }

    /// A launch of `kernel` (`qgemv4.wgsl` or `qgemv4_dp4a.wgsl`) with `ks` groups of 32 lanes
    /// per 4 rows and the `extra` pipeline constants.
    fn nibble4_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        (kernel, ks, extra): (Kernel, u32, &[(&'static str, u32)]),
        x: BufferRange<'_>,
        y: BufferRange<'_>,
    ) -> Result<Dispatch, GpuError> {
        let total_wg = self.params.rows.div_ceil(32 / ks);
        let (gx, gy) = grid(device, total_wg);
        let uniform = self.uniform(device, gx, total_wg, self.params.cols / 16);
        let mut constants = vec![
            ("GS", self.group_size),
            ("KSPLIT", ks),
            self.side.constant(),
        ];
        constants.extend_from_slice(extra);
        let pipeline = registry.get(device, kernel, "main", &constants)?;
        Ok(self.bind(device, pipeline, &uniform, x, y, (gx, gy)))
    }

    /// The uniform parameters for a launch (the last one is cached).
    fn uniform(
        &self,
        device: &wgpu::Device,
        gx: u32,
        total_wg: u32,
        vec_per_row: u32,
    ) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        let mut u = self.uniform.lock().expect("uniform");
        let key = (gx, total_wg, vec_per_row);
        let p = Params {
            wg_x: gx,
            total_wg,
            vec_per_row,
            ..self.params
        };
        match u.as_ref() {
            Some((k, b)) if *k == key => b.clone(),
            _ => {
                let b = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("qgemv params"),
                    contents: bytemuck::bytes_of(&p),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
                *u = Some((key, b.clone()));
                b
            }
        }
    }

    fn bind(
        &self,
        device: &wgpu::Device,
        pipeline: wgpu::ComputePipeline,
        uniform: &wgpu::Buffer,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
        workgroups: (u32, u32),
    ) -> Dispatch {
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("qgemv"),
            layout: &layout,
            entries: &[
                entry(0, uniform),
                entry(1, &self.packed),
                entry(2, &self.sb),
                x.entry(3),
                y.entry(4),
            ],
        });
        Dispatch {
            pipeline,
            bind_group,
            workgroups,
        }
    }

    /// A candidate kernel `(kernel, entry point, vectors per row)` with `rows` rows per group
    /// and `ksplit` groups per row set (both checked by the caller): 8 * rows / ksplit rows per
    /// workgroup of 8 groups.
    #[allow(clippy::too_many_arguments)]
    fn stream_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
        (kernel, entry_point, vec_per_row): (Kernel, &'static str, u32),
        rows: u32,
        ksplit: u32,
        extra: &[(&'static str, u32)],
    ) -> Result<Dispatch, GpuError> {
        let total_wg = self.params.rows.div_ceil(8 * rows / ksplit);
        let (gx, gy) = grid(device, total_wg);
        let uniform = self.uniform(device, gx, total_wg, vec_per_row);
        let mut constants = vec![
            ("GS", self.group_size),
            ("KSPLIT", ksplit),
            self.side.constant(),
        ];
        constants.extend_from_slice(extra);
        let pipeline = registry.get(device, kernel, entry_point, &constants)?;
        Ok(self.bind(device, pipeline, &uniform, x, y, (gx, gy)))
    }

    /// [`QGemvVariant::Int8Dot`] on activations quantized once per vector instead of in
    /// registers: `x8` holds [`super::x8_bytes`]`(cols)` bytes as
    /// [`super::quantize_x8_dispatch`] writes them in [`super::X8Order::Plain`] (the same
    /// integers `Int8Dot` computes, so the same result up to f32 rounding). The like-for-like
    /// baseline of [`super::GpuCodedMatrix::gemv_x8_dispatch`], which takes its activations so
    /// too. `ksplit` as for `Int8Dot` (0 = automatic).
    pub fn gemv_x8_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x8: &wgpu::Buffer,
        y: &wgpu::Buffer,
        ksplit: u32,
    ) -> Result<Dispatch, GpuError> {
        let ks = self.nibble4_ksplit(ksplit)?;
        let need = super::x8_bytes(self.cols());
        if x8.size() < need || y.size() < self.rows() as u64 * 4 {
            return Err(GpuError::InvalidInput(format!(
                "x8/y buffers have {}/{} bytes, need {need}/{}",
                x8.size(),
                y.size(),
                self.rows() * 4
            )));
        }
        self.nibble4_dispatch(
            device,
            registry,
            (Kernel::QGemv4Dp4a, ks, &[("PRE", 1)]),
            x8.into(),
            y.into(),
        )
    }

    /// [`Self::gemv_x8_dispatch`] on `x` quantized on the GPU first ([`super::quantize_x8`]),
    /// read back. `y` is filled with NaN first so unwritten rows show.
    pub fn gemv_x8(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        ksplit: u32,
    ) -> Result<Vec<f32>, GpuError> {
        let (r, k) = (self.rows(), self.cols());
        super::check_x_len(x, k)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        let yb = super::nan_output(device, r)?;
        let d = super::quantized_launch(device, queue, registry, x, super::X8Order::Plain, |x8| {
            self.gemv_x8_dispatch(device, registry, x8, &yb, ksplit)
        })?;
        run_and_read(device, queue, &d, &yb, r)
    }

    /// A diagnostic build of the default plain 4-bit kernel ([`QGemvVariant::Pipelined`]
    /// `{ rows: 4, ksplit: 0 }`, `override DIAG` of `wgsl/qgemv4_pipe.wgsl`), for measuring
    /// what limits it; its output is not a GEMV. `diag`: 1 = the same loads with next to no
    /// arithmetic, 2 = the arithmetic on row 0's weights and scales for every row
    /// (cache-resident), 3 = as 1 without the activation loads.
    pub fn pipelined_diagnostic_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        diag: u32,
    ) -> Result<Dispatch, GpuError> {
        if !self.nibble4_supported() || !(1..=3).contains(&diag) {
            return Err(GpuError::InvalidInput(format!(
                "diagnostic {diag} of the pipelined 4-bit kernel (1..=3, 4-bit shapes only)"
            )));
        }
        let ks = self.pipelined_auto_ksplit(4);
        let kernel = (Kernel::QGemv4Pipe, "main", self.params.cols / 16);
        self.stream_dispatch(
            device,
            registry,
            x.into(),
            y.into(),
            kernel,
            4,
            ks,
            &[("DIAG", diag)],
        )
    }

    /// Whether [`Self::gemv_many_dispatch`] can run this matrix on `registry`'s device: 4-bit
    /// weights with `cols % 16 == 0` and group size `% 16 == 0`, and 32-wide subgroups.
    pub fn gemv_many_supported(&self, registry: &PipelineRegistry) -> bool {
        self.nibble4_supported() && registry.subgroups32()
    }

    /// The plain GEMV launch for `vectors` activation vectors at once, `Y = X W^T`
    /// (`wgsl/qgemv4_many.wgsl`): `x` holds `vectors` rows of `cols` f32, `y` receives
    /// `vectors` rows of `rows` f32. The weights are read and converted once for all vectors;
    /// the plain counterpart of [`super::GpuCodedMatrix::gemv_many_dispatch`], with its layout
    /// (two rows a group of 32 lanes, 16 weights a lane and block) and its arithmetic per
    /// vector (BENCHMARKS.md issue 5, step 87). `vectors` must be
    /// 1..=[`super::MAX_GEMV_VECTORS`] ([`GpuError::InvalidInput`]); matrices or adapters
    /// [`Self::gemv_many_supported`] refuses get [`GpuError::Unsupported`].
    pub fn gemv_many_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: impl Into<BufferRange<'b>>,
        y: impl Into<BufferRange<'b>>,
        vectors: u32,
    ) -> Result<Dispatch, GpuError> {
        self.many_dispatch(device, registry, x.into(), y.into(), vectors, 1, 0, false)
    }

    /// [`Self::gemv_many_dispatch`] on activations in lane order ([`super::x_lane_order`]):
    /// the same outputs bit for bit, with each block's activations read in whole 128-byte
    /// lines, as [`super::GpuCodedMatrix::gemv_many_lane_order_dispatch`] reads them.
    pub fn gemv_many_lane_order_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: impl Into<BufferRange<'b>>,
        y: impl Into<BufferRange<'b>>,
        vectors: u32,
    ) -> Result<Dispatch, GpuError> {
        self.many_dispatch(device, registry, x.into(), y.into(), vectors, 1, 0, true)
    }

    /// Builds of [`Self::gemv_many_dispatch`] that measure where its per-vector time goes
    /// (BENCHMARKS.md issue 5, step 88). `diag`: 1 = every vector reads vector 0's
    /// activations, 2 = only vector 0's activations are loaded and the others derived from
    /// them by one add a value (1 and 2 do not compute the GEMV), 3 = four rows a group of 32
    /// lanes instead of two, so each activation load serves four rows (the GEMV, the same
    /// outputs bit for bit), 4 = 3 on activations in lane order
    /// ([`Self::gemv_many_lane_order_dispatch`]'s `x`).
    pub fn gemv_many_diagnostic_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: impl Into<BufferRange<'b>>,
        y: impl Into<BufferRange<'b>>,
        vectors: u32,
        diag: u32,
    ) -> Result<Dispatch, GpuError> {
        let (x, y) = (x.into(), y.into());
        match diag {
            1 | 2 => self.many_dispatch(device, registry, x, y, vectors, 1, diag, false),
            3 | 4 => self.many_dispatch(device, registry, x, y, vectors, 2, 0, diag == 4),
            _ => Err(GpuError::InvalidInput(format!(
                "diagnostic {diag} of the multi-vector 4-bit kernel (1..=4)"
            ))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn many_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
        vectors: u32,
        pairs: u32,
        xmode: u32,
        lanes: bool,
    ) -> Result<Dispatch, GpuError> {
        super::check_gemv_vectors(vectors)?;
        if !self.gemv_many_supported(registry) {
            return Err(GpuError::Unsupported(format!(
                "qgemv4_many needs 4 bits, cols % 16 == 0, group size % 16 == 0 and 32-wide \
                 subgroups ({} bits, cols {}, group size {}, 32-wide subgroups {})",
                self.bits,
                self.cols(),
                self.group_size,
                registry.subgroups32()
            )));
        }
        let (r, k) = (self.rows() as u64, self.cols() as u64);
        let (xb, yb) = (k * 4 * vectors as u64, r * 4 * vectors as u64);
        x.check(device, "x")?;
        y.check(device, "y")?;
        if x.size() < xb || y.size() < yb {
            return Err(GpuError::InvalidInput(format!(
                "x/y buffers have {}/{} bytes, need {xb}/{yb} ({vectors} vectors)",
                x.size(),
                y.size(),
            )));
        }
        // two rows (a pair) a group of 32 lanes, four groups a workgroup
        let total_wg = self.params.rows.div_ceil(8 * pairs);
        let (gx, gy) = grid(device, total_wg);
        let uniform = self.uniform(device, gx, total_wg, self.params.cols / 16);
        let pipeline = registry.get(
            device,
            Kernel::QGemv4Many,
            "main",
            &[
                ("GS", self.group_size),
                ("NVEC", vectors),
                ("PAIRS", pairs),
                ("XMODE", xmode),
                ("XLANES", lanes as u32),
                self.side.constant(),
            ],
        )?;
        Ok(self.bind(device, pipeline, &uniform, x, y, (gx, gy)))
    }

    /// Why [`Self::gemv_coop_dispatch`] cannot run this matrix on `registry`'s device, or
    /// `None` where it can.
    fn coop_refusal(&self, registry: &PipelineRegistry) -> Option<String> {
        Self::coop_gemv_refusal(registry, self.bits, self.cols(), self.group_size)
    }

    /// [`Self::coop_refusal`] for a matrix of `bits`, `cols` inputs and MLX groups of
    /// `group_size` before there is one (a coded layer's weights decoded first).
    pub(crate) fn coop_gemv_refusal(
        registry: &PipelineRegistry,
        bits: u32,
        cols: usize,
        group_size: u32,
    ) -> Option<String> {
        let gs = group_size;
        coop_refusal_for(
            registry,
            (bits, cols, gs),
            "GEMV",
            super::COOP_BLOCK_COLS,
            (gs == 64 || gs == 128, "of 64 or 128"),
        )
    }

    /// Whether [`Self::gemv_coop_dispatch`] runs this matrix on `registry`'s device.
    pub fn coop_supported(&self, registry: &PipelineRegistry) -> bool {
        self.coop_refusal(registry).is_none()
    }

    /// The plain 4-bit GEMV of `x.vectors()` activation vectors with its multiply on
    /// cooperative matrices (`wgsl/qgemv4_coop.wgsl`): the baseline of
    /// [`super::GpuCodedMatrix::gemv_coop_dispatch`], with its tiles, multiply and flush and
    /// the weights read from the packed matrix. `x` as [`super::coop_x_dispatch`] prepares it
    /// in [`super::CoopOrder::Packed`] order; `y` receives `x.vectors()` rows of `rows` f32.
    /// The same precision as the fused launch (f16 activations, exact weights, f32 sums).
    /// [`GpuError::Unsupported`] where [`Self::coop_supported`] is false (naming why),
    /// [`GpuError::InvalidInput`] for `x` of another width or order or `y` too small.
    pub fn gemv_coop_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopActivations,
        y: impl Into<BufferRange<'b>>,
    ) -> Result<Dispatch, GpuError> {
        self.coop_dispatch(device, registry, x, y.into(), 0)
    }

    /// Diagnostic builds of [`Self::gemv_coop_dispatch`], for measuring where its time goes
    /// (outputs meaningless): 1 = the loads, tile stores and barriers without the multiply and
    /// flush, 2 = the kernel without the tiles' stores, 3 = the kernel with zero weights staged
    /// instead of the loaded ones converted, 4 = 1 without the stores (loads and barriers),
    /// 5 = 4 without the barriers (the loads alone). Other numbers: [`GpuError::InvalidInput`].
    pub fn coop_diagnostic_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopActivations,
        y: &wgpu::Buffer,
        diag: u32,
    ) -> Result<Dispatch, GpuError> {
        if !(1..=5).contains(&diag) {
            return Err(GpuError::InvalidInput(format!(
                "plain cooperative GEMV diagnostic builds are 1..=5, not {diag}"
            )));
        }
        self.coop_dispatch(device, registry, x, y.into(), diag)
    }

    fn coop_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopActivations,
        y: BufferRange<'_>,
        diag: u32,
    ) -> Result<Dispatch, GpuError> {
        if let Some(why) = self.coop_refusal(registry) {
            return Err(GpuError::Unsupported(why));
        }
        x.check_for(
            self.rows(),
            self.cols(),
            super::CoopOrder::Packed,
            y,
            device,
        )?;
        // 16 rows a workgroup
        let total_wg = self.params.rows.div_ceil(16);
        let (gx, gy) = grid(device, total_wg);
        let uniform = self.uniform(device, gx, total_wg, self.params.cols / 16);
        let pipeline = registry.get(
            device,
            Kernel::QGemv4Coop,
            "main",
            &[
                ("GSHIFT", self.group_size.trailing_zeros()),
                ("NVEC", x.vectors()),
                ("DIAG", diag),
                self.side.constant(),
            ],
        )?;
        let layout = pipeline.get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("qgemv4_coop"),
            layout: &layout,
            entries: &[
                entry(0, &uniform),
                entry(1, &self.packed),
                entry(2, &self.sb),
                entry(3, x.tiles()),
                entry(4, x.sums()),
                y.entry(5),
            ],
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            workgroups: (gx, gy),
        })
    }

    /// Why [`Self::gemm_coop_dispatch`] cannot run this matrix on `registry`'s device, if it
    /// cannot.
    fn gemm_coop_refusal(&self, registry: &PipelineRegistry) -> Option<String> {
        coop_refusal_for(
            registry,
            (self.bits, self.cols(), self.group_size),
            "GEMM",
            super::COOP_GEMM_COLS,
            (self.group_size >= 16, "of at least 16"),
        )
    }

    /// Whether [`Self::gemm_coop_dispatch`] runs this matrix on `registry`'s device.
    pub fn gemm_coop_supported(&self, registry: &PipelineRegistry) -> bool {
        self.gemm_coop_refusal(registry).is_none()
    }

    /// The cooperative GEMM launch (`wgsl/qgemm_coop.wgsl`): `x.rows()` rows of outputs into
    /// `y` (`rows` f32 a row, one row after another), `Y = X W^T` with the weights dequantized
    /// to f16 as MLX's quantized matmul does and the activations as [`super::coop_rows_dispatch`]
    /// prepared them, the sums in f32: within about 2^-10 of the sum of the terms' magnitudes
    /// of the f32 GEMM, for many rows at once (tiles of 128 matrix rows x 64 activation rows,
    /// the weights staged once a tile). Refuses ([`GpuError::Unsupported`]) a device without
    /// cooperative matrices and matrices other than 4-bit ones of inputs a multiple of
    /// [`super::COOP_GEMM_COLS`]; [`GpuError::InvalidInput`] for activations of another width
    /// or a `y` too small.
    pub fn gemm_coop_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopRows,
        y: impl Into<BufferRange<'b>>,
    ) -> Result<Dispatch, GpuError> {
        let tile = self.gemm_coop_tile_rows(x.rows());
        self.gemm_coop_dispatch_with(device, registry, x, y, tile)
    }

    /// The activation rows a workgroup of [`Self::gemm_coop_dispatch`] takes for `m` rows:
    /// 128 where that still makes at least [`super::COOP_GEMM_WIDE_MIN_WORKGROUPS`]
    /// workgroups (the weights staged once for twice the rows), else 64.
    pub fn gemm_coop_tile_rows(&self, m: usize) -> u32 {
        let wide = self.rows().div_ceil(128) * m.div_ceil(128);
        if wide >= super::COOP_GEMM_WIDE_MIN_WORKGROUPS {
            128
        } else {
            64
        }
    }

    /// [`Self::gemm_coop_dispatch`] with `tile_rows` (64 or 128, else
    /// [`GpuError::InvalidInput`]) activation rows a workgroup.
    pub fn gemm_coop_dispatch_with<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopRows,
        y: impl Into<BufferRange<'b>>,
        tile_rows: u32,
    ) -> Result<Dispatch, GpuError> {
        self.gemm_coop_launch(device, registry, x, y.into(), tile_rows, None)
    }

    /// Column splits for [`Self::gemm_coop_split_dispatch`] on a GPU: enough for
    /// [`super::COOP_GEMM_SPLIT_WORKGROUPS`] workgroups where tiles of `tile_rows` activation
    /// rows make fewer (about one an SM of an H100 or H200), each split of at least
    /// [`super::COOP_GEMM_SPLIT_MIN_COLS`] columns;
    /// `None` where the tiles fill the GPU or the columns allow one split only.
    pub fn gemm_coop_split(&self, m: usize, tile_rows: u32) -> Option<GemmSplit> {
        let grid = self.rows().div_ceil(128) * m.div_ceil(tile_rows.max(1) as usize);
        self.split_for_grid(
            grid,
            super::COOP_GEMM_SPLIT_WORKGROUPS,
            super::COOP_GEMM_SPLIT_MIN_COLS,
            super::COOP_GEMM_COLS,
        )
    }

    /// The split rule both GEMMs share: a grid of `grid` tiles, fewer than `target`, split
    /// into enough ranges for `target` workgroups, each of at least `min_cols` columns, in
    /// whole steps of `step_cols`; `None` otherwise or where the columns allow one range only.
    fn split_for_grid(
        &self,
        grid: usize,
        target: usize,
        min_cols: usize,
        step_cols: usize,
    ) -> Option<GemmSplit> {
        if grid == 0 || grid >= target {
            return None;
        }
        let by_cols = self.cols() / min_cols;
        GemmSplit::new(self.cols(), step_cols, target.div_ceil(grid).min(by_cols))
    }

    /// Bytes of the partial sums a split GEMM of `m` rows needs
    /// ([`Self::gemm_coop_split_dispatch`], [`Self::gemm_tiled_split_dispatch`]).
    pub fn gemm_split_bytes(&self, m: usize, split: GemmSplit) -> u64 {
        (split.splits() as u64 - 1) * m as u64 * self.rows() as u64 * 4
    }

    /// [`Self::gemm_coop_dispatch_with`] in column splits (split-K, for grids too small to
    /// fill a GPU; `split` from [`GemmSplit::coop`]): the GEMM launch, whose first split
    /// writes `y` and the others their sums into `partials` ([`Self::gemm_split_bytes`]),
    /// then `wgsl/split_k_sum.wgsl` adding those to `y` in split order. Outputs within the
    /// cooperative GEMM's tolerance of the unsplit launch's (another order of f32 sums); the
    /// same bits for the same split. Its refusals; [`GpuError::InvalidInput`] for a split of
    /// another matrix or GEMM, or `partials` too small.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_coop_split_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopRows,
        y: impl Into<BufferRange<'b>>,
        tile_rows: u32,
        split: GemmSplit,
        partials: impl Into<BufferRange<'b>>,
    ) -> Result<[Dispatch; 2], GpuError> {
        let (y, partials) = (y.into(), partials.into());
        split.check(self.cols(), super::COOP_GEMM_COLS, "cooperative")?;
        let gemm =
            self.gemm_coop_launch(device, registry, x, y, tile_rows, Some((split, partials)))?;
        Ok([
            gemm,
            self.split_sum_dispatch(device, registry, x.rows(), split, partials, y)?,
        ])
    }

    /// The cooperative GEMM's launch ([`Self::gemm_coop_dispatch_with`], split with `split`).
    fn gemm_coop_launch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: &super::CoopRows,
        y: BufferRange<'_>,
        tile_rows: u32,
        split: Option<(GemmSplit, BufferRange<'_>)>,
    ) -> Result<Dispatch, GpuError> {
        if tile_rows != 64 && tile_rows != 128 {
            return Err(GpuError::InvalidInput(format!(
                "cooperative GEMM tiles hold 64 or 128 activation rows, not {tile_rows}"
            )));
        }
        if let Some(why) = self.gemm_coop_refusal(registry) {
            return Err(GpuError::Unsupported(why));
        }
        if x.cols() != self.cols() {
            return Err(GpuError::InvalidInput(format!(
                "cooperative GEMM activations have {} inputs, the matrix {}",
                x.cols(),
                self.cols()
            )));
        }
        self.gemm_launch(
            device,
            registry,
            (
                Kernel::QGemmCoop,
                &[
                    ("GSHIFT", self.group_size.trailing_zeros()),
                    ("WIDE", (tile_rows == 128) as u32),
                    self.side.constant(),
                ],
            ),
            (128, tile_rows as usize),
            x.rows(),
            &[entry(3, x.values()), entry(4, x.scalings())],
            y,
            split,
        )
    }

    /// A GEMM launch of `kernel` with its pipeline constants: tiles of `tiles.0` matrix rows x
    /// `tiles.1` activation rows over `m` activation rows, the uniform block both GEMMs read
    /// (rows, cols, m, groups per row, row tiles, workgroups along x, workgroups, y's stride,
    /// then the tiled GEMM's tiles, steps a split and partial sums a split), the matrix at
    /// bindings 1 and 2, the activations' `inputs` and `y` after them. With `split` (splits,
    /// partial sums) the `main_split` entry over that many splits of the columns, the partial
    /// sums bound after `y`. [`GpuError::InvalidInput`] for a `y` or partial sums too small.
    #[allow(clippy::too_many_arguments)]
    fn gemm_launch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        (kernel, constants): (Kernel, &[(&'static str, u32)]),
        tiles: (usize, usize),
        m: usize,
        inputs: &[wgpu::BindGroupEntry<'_>],
        y: BufferRange<'_>,
        split: Option<(GemmSplit, BufferRange<'_>)>,
    ) -> Result<Dispatch, GpuError> {
        y.check(device, "y")?;
        let r = self.rows();
        let y_bytes = r as u64 * m as u64 * 4;
        if y.size() < y_bytes {
            return Err(GpuError::InvalidInput(format!(
                "y has {} bytes, {m} rows of {r} outputs need {y_bytes}",
                y.size()
            )));
        }
        let row_tiles = r.div_ceil(tiles.0);
        let too_many = || GpuError::InvalidInput(format!("{m} rows of {r} outputs"));
        let n_tiles = u32::try_from(row_tiles * m.div_ceil(tiles.1)).map_err(|_| too_many())?;
        let (splits, split_steps) = match &split {
            Some((sp, part)) => {
                part.check(device, "partial sums")?;
                let need = self.gemm_split_bytes(m, *sp);
                if part.size() < need {
                    return Err(GpuError::InvalidInput(format!(
                        "partial sums have {} bytes, {} splits of {m} rows of {r} outputs \
                         need {need}",
                        part.size(),
                        sp.splits
                    )));
                }
                (sp.splits, sp.steps)
            }
            // (only the `main_split` entries read the steps a split takes)
            None => (1, 0),
        };
        let total_wg = n_tiles.checked_mul(splits as u32).ok_or_else(too_many)?;
        let m32 = u32::try_from(m).map_err(|_| too_many())?;
        let part_stride = u32::try_from(m * r).map_err(|_| too_many())?;
        let (gx, gy) = grid(device, total_wg);
        let params: [u32; 12] = [
            self.params.rows,
            self.params.cols,
            m32,
            self.params.groups_per_row,
            row_tiles as u32,
            gx,
            total_wg,
            self.params.rows,
            n_tiles,
            split_steps as u32,
            part_stride,
            0,
        ];
        use wgpu::util::DeviceExt;
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("gemm params"),
            contents: bytemuck::cast_slice(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let entry_point = if split.is_some() {
            "main_split"
        } else {
            "main"
        };
        let pipeline = registry.get(device, kernel, entry_point, constants)?;
        let layout = pipeline.get_bind_group_layout(0);
        let mut entries = vec![
            entry(0, &uniform),
            entry(1, &self.packed),
            entry(2, &self.sb),
        ];
        entries.extend_from_slice(inputs);
        entries.push(y.entry(3 + inputs.len() as u32));
        if let Some((_, part)) = &split {
            entries.push(part.entry(4 + inputs.len() as u32));
        }
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.file_name()),
            layout: &layout,
            entries: &entries,
        });
        Ok(Dispatch {
            pipeline,
            bind_group,
            workgroups: (gx, gy),
        })
    }

    /// `Y = X W^T` for `m` activation rows (`x`: `m * cols` f32) through the cooperative GEMM
    /// ([`super::coop_rows_dispatch`], then [`Self::gemm_coop_dispatch`]) in one submission,
    /// read back as `m` rows of `rows` f32. The refusals of [`Self::gemm_coop_dispatch`];
    /// [`GpuError::InvalidInput`] for an `x` of another length.
    pub fn gemm_coop(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        m: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let tile = self.gemm_coop_tile_rows(m);
        self.gemm_coop_with(device, queue, registry, x, m, tile)
    }

    /// [`Self::gemm_coop`] with `tile_rows` activation rows a workgroup
    /// ([`Self::gemm_coop_dispatch_with`]).
    pub fn gemm_coop_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        m: usize,
        tile_rows: u32,
    ) -> Result<Vec<f32>, GpuError> {
        if let Some(why) = self.gemm_coop_refusal(registry) {
            return Err(GpuError::Unsupported(why));
        }
        self.gemm_on_host(device, queue, x, m, |xb, yb| {
            let rows = super::CoopRows::new(device, self.cols(), m)?;
            Ok(vec![
                super::coop_rows_dispatch(device, registry, xb, &rows)?,
                self.gemm_coop_dispatch_with(device, registry, &rows, yb, tile_rows)?,
            ])
        })
    }

    /// [`Self::gemm_coop_with`] in column splits ([`Self::gemm_coop_split_dispatch`], the
    /// partial sums in a buffer of this call, filled with NaN first).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_coop_split_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        m: usize,
        tile_rows: u32,
        split: GemmSplit,
    ) -> Result<Vec<f32>, GpuError> {
        if let Some(why) = self.gemm_coop_refusal(registry) {
            return Err(GpuError::Unsupported(why));
        }
        let part = super::nan_output(device, (self.gemm_split_bytes(m, split) / 4) as usize)?;
        self.gemm_on_host(device, queue, x, m, |xb, yb| {
            let rows = super::CoopRows::new(device, self.cols(), m)?;
            let [gemm, sum] = self
                .gemm_coop_split_dispatch(device, registry, &rows, yb, tile_rows, split, &part)?;
            Ok(vec![
                super::coop_rows_dispatch(device, registry, xb, &rows)?,
                gemm,
                sum,
            ])
        })
    }

    /// `x` (`m` rows of `cols` f32) uploaded, the outputs filled with NaN, the `launches` on
    /// them (x, y) recorded into one pass and submitted, and `m` rows of `rows` f32 read back;
    /// [`GpuError::InvalidInput`] for an `x` of another length, nothing run for no rows.
    fn gemm_on_host(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        x: &[f32],
        m: usize,
        launches: impl FnOnce(&wgpu::Buffer, &wgpu::Buffer) -> Result<Vec<Dispatch>, GpuError>,
    ) -> Result<Vec<f32>, GpuError> {
        let (r, k) = (self.rows(), self.cols());
        if x.len() != m * k {
            return Err(GpuError::InvalidInput(format!(
                "x has {} values, {m} rows of {k} need {}",
                x.len(),
                m * k
            )));
        }
        if m == 0 || r == 0 {
            return Ok(Vec::new());
        }
        let xb = super::upload_x(device, x)?;
        let yb = super::nan_output(device, m * r)?;
        let ds = launches(&xb, &yb)?;
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in &ds {
                d.record(&mut pass);
            }
        }
        queue.submit([enc.finish()]);
        let bytes = super::read_back(device, queue, &yb, (m * r) as u64 * 4)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Why [`Self::gemm_tiled_dispatch`] cannot run this matrix, if it cannot.
    fn gemm_tiled_refusal(&self) -> Option<String> {
        (self.bits != 4
            || self.cols() == 0
            || !self.cols().is_multiple_of(TILED_GEMM_COLS)
            || self.group_size < 16)
            .then(|| {
                format!(
                    "the tiled 4-bit GEMM needs 4 bits, inputs a positive multiple of \
                     {TILED_GEMM_COLS} and MLX groups of at least 16 ({} bits, {} inputs, \
                     groups of {})",
                    self.bits,
                    self.cols(),
                    self.group_size
                )
            })
    }

    /// Whether [`Self::gemm_tiled_dispatch`] runs this matrix (any device).
    pub fn gemm_tiled_supported(&self) -> bool {
        self.gemm_tiled_refusal().is_none()
    }

    /// The tiled f32 GEMM launch (`wgsl/qgemm_tiled.wgsl`): `m` rows of activations in `x`
    /// (`cols` f32 a row, one row after another, column order) multiplied into `y` (`rows`
    /// f32 a row), `Y = X W^T` with the weights dequantized in f32 (`scale q + bias`) into
    /// workgroup memory once for 64 activation rows, within WebGPU's default limits, in the
    /// tile [`TiledGemmTile::for_device`] picks. For devices without cooperative matrices.
    /// [`GpuError::Unsupported`] for matrices other than 4-bit ones of inputs a multiple of
    /// [`TILED_GEMM_COLS`] with groups of at least 16; [`GpuError::InvalidInput`] for `x` or
    /// `y` too small.
    pub fn gemm_tiled_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: impl Into<BufferRange<'b>>,
        y: impl Into<BufferRange<'b>>,
        m: usize,
    ) -> Result<Dispatch, GpuError> {
        let tile = TiledGemmTile::for_device(registry, self.rows(), m);
        self.gemm_tiled_dispatch_with(device, registry, x, y, m, tile)
    }

    /// [`Self::gemm_tiled_dispatch`] in the given tile (both give the same sums: each
    /// output adds its columns in the same order).
    pub fn gemm_tiled_dispatch_with<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: impl Into<BufferRange<'b>>,
        y: impl Into<BufferRange<'b>>,
        m: usize,
        tile: TiledGemmTile,
    ) -> Result<Dispatch, GpuError> {
        self.gemm_tiled_launch(device, registry, x.into(), y.into(), m, tile, None)
    }

    /// Column splits for [`Self::gemm_tiled_split_dispatch`] on a GPU: enough for
    /// [`TILED_GEMM_SPLIT_WORKGROUPS`] workgroups where the tiles alone are fewer, each of at
    /// least [`TILED_GEMM_SPLIT_MIN_COLS`] columns; `None` where the tiles fill the grid or
    /// the columns allow one split only. (A CPU device gains nothing from more workgroups:
    /// [`Self::gemm_tiled_split_for`].)
    pub fn gemm_tiled_split(&self, m: usize, tile: TiledGemmTile) -> Option<GemmSplit> {
        let grid = self.rows().div_ceil(tile.rows()) * m.div_ceil(TILED_GEMM_TILE);
        self.split_for_grid(
            grid,
            TILED_GEMM_SPLIT_WORKGROUPS,
            TILED_GEMM_SPLIT_MIN_COLS,
            TILED_GEMM_COLS,
        )
    }

    /// [`Self::gemm_tiled_split`] on a GPU, `None` on a CPU device
    /// ([`PipelineRegistry::cpu_device`]): on lavapipe a split gained nothing (1024x4096 at 64
    /// rows: 78.3 ms in 8 splits, 79.0 unsplit; BENCHMARKS.md issue 5, step 101).
    pub fn gemm_tiled_split_for(
        &self,
        registry: &PipelineRegistry,
        m: usize,
        tile: TiledGemmTile,
    ) -> Option<GemmSplit> {
        if registry.cpu_device() {
            None
        } else {
            self.gemm_tiled_split(m, tile)
        }
    }

    /// [`Self::gemm_tiled_dispatch_with`] in column splits (split-K, for grids too small to
    /// fill a GPU): the GEMM launch, whose first split writes `y` and the others their sums
    /// into `partials` ([`Self::gemm_split_bytes`]), then `wgsl/split_k_sum.wgsl`
    /// adding those to `y` in split order. Outputs within the f32 tolerance of the unsplit
    /// launch's (another order of sums); the same bits for the same split. Its refusals;
    /// [`GpuError::InvalidInput`] for `partials` too small.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_tiled_split_dispatch<'b>(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: impl Into<BufferRange<'b>>,
        y: impl Into<BufferRange<'b>>,
        m: usize,
        tile: TiledGemmTile,
        split: GemmSplit,
        partials: impl Into<BufferRange<'b>>,
    ) -> Result<[Dispatch; 2], GpuError> {
        let (y, partials) = (y.into(), partials.into());
        split.check(self.cols(), TILED_GEMM_COLS, "tiled")?;
        let gemm = self.gemm_tiled_launch(
            device,
            registry,
            x.into(),
            y,
            m,
            tile,
            Some((split, partials)),
        )?;
        Ok([
            gemm,
            self.split_sum_dispatch(device, registry, m, split, partials, y)?,
        ])
    }

    /// `wgsl/split_k_sum.wgsl` adding the partial sums of a split GEMM's `m` rows to `y` in
    /// split order (the GEMM launch checked both buffers).
    fn split_sum_dispatch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        m: usize,
        split: GemmSplit,
        partials: BufferRange<'_>,
        y: BufferRange<'_>,
    ) -> Result<Dispatch, GpuError> {
        let r = self.rows();
        let too_many = || GpuError::InvalidInput(format!("{m} rows of {r} outputs"));
        let total = u32::try_from(m * r).map_err(|_| too_many())?;
        let (gx, gy) = grid(device, total.div_ceil(256));
        let pipeline = registry.get(device, Kernel::SplitKSum, "main", &[])?;
        Ok(super::vector_pass_dispatch(
            device,
            pipeline,
            &[
                self.params.rows,
                total,
                split.splits() as u32 - 1,
                total,
                self.params.rows,
                gx,
                0,
                0,
            ],
            partials,
            y,
            (gx, gy),
        ))
    }

    /// The tiled GEMM's launch ([`Self::gemm_tiled_dispatch_with`], split with `split`).
    #[allow(clippy::too_many_arguments)]
    fn gemm_tiled_launch(
        &self,
        device: &wgpu::Device,
        registry: &PipelineRegistry,
        x: BufferRange<'_>,
        y: BufferRange<'_>,
        m: usize,
        tile: TiledGemmTile,
        split: Option<(GemmSplit, BufferRange<'_>)>,
    ) -> Result<Dispatch, GpuError> {
        if let Some(why) = self.gemm_tiled_refusal() {
            return Err(GpuError::Unsupported(why));
        }
        x.check(device, "x")?;
        let x_bytes = m as u64 * self.cols() as u64 * 4;
        if x.size() < x_bytes {
            return Err(GpuError::InvalidInput(format!(
                "x has {} bytes, {m} rows of {} inputs need {x_bytes}",
                x.size(),
                self.cols()
            )));
        }
        self.gemm_launch(
            device,
            registry,
            (
                Kernel::QGemmTiled,
                &[
                    ("GSHIFT", self.group_size.trailing_zeros()),
                    ("ROW_TILE_SHIFT", tile.rows().trailing_zeros()),
                    self.side.constant(),
                ],
            ),
            (tile.rows(), TILED_GEMM_TILE),
            m,
            &[x.entry(3)],
            y,
            split,
        )
    }

    /// `Y = X W^T` for `m` activation rows (`x`: `m * cols` f32) through
    /// [`Self::gemm_tiled_dispatch`] in one submission, read back as `m` rows of `rows` f32.
    /// Its refusals; [`GpuError::InvalidInput`] for an `x` of another length.
    pub fn gemm_tiled(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        m: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let tile = TiledGemmTile::for_device(registry, self.rows(), m);
        self.gemm_tiled_with(device, queue, registry, x, m, tile)
    }

    /// [`Self::gemm_tiled_with`] in column splits ([`Self::gemm_tiled_split_dispatch`], the
    /// partial sums in a buffer of this call, filled with NaN first).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_tiled_split_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        m: usize,
        tile: TiledGemmTile,
        split: GemmSplit,
    ) -> Result<Vec<f32>, GpuError> {
        if let Some(why) = self.gemm_tiled_refusal() {
            return Err(GpuError::Unsupported(why));
        }
        let part = super::nan_output(device, (self.gemm_split_bytes(m, split) / 4) as usize)?;
        self.gemm_on_host(device, queue, x, m, |xb, yb| {
            Ok(self
                .gemm_tiled_split_dispatch(device, registry, xb, yb, m, tile, split, &part)?
                .into())
        })
    }

    /// [`Self::gemm_tiled`] in the given tile.
    pub fn gemm_tiled_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        m: usize,
        tile: TiledGemmTile,
    ) -> Result<Vec<f32>, GpuError> {
        if let Some(why) = self.gemm_tiled_refusal() {
            return Err(GpuError::Unsupported(why));
        }
        self.gemm_on_host(device, queue, x, m, |xb, yb| {
            Ok(vec![self.gemm_tiled_dispatch_with(
                device, registry, xb, yb, m, tile,
            )?])
        })
    }

    /// `Y = X W^T` for `vectors` activation vectors through the cooperative kernels
    /// ([`super::coop_x_dispatch`] in packed order, then [`Self::gemv_coop_dispatch`]) in
    /// launches of up to [`super::COOP_VECTORS`], read back as `vectors` rows of `rows` f32
    /// (filled with NaN first). The refusals of [`Self::gemv_coop_dispatch`].
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
            false,
            super::CoopOrder::Packed,
            |acts, y| self.gemv_coop_dispatch(device, registry, acts, y),
            |prep, d| {
                let mut enc = device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    prep.record(&mut pass);
                    d.record(&mut pass);
                }
                queue.submit([enc.finish()]);
                wait(device)
            },
        )
    }

    /// `Y = X W^T` for `vectors` activation vectors (`x`: `vectors` rows of `cols` f32), read
    /// back as `vectors` rows of `rows` f32: launches of [`Self::gemv_many_dispatch`] for up
    /// to [`super::MAX_GEMV_VECTORS`] vectors each where [`Self::gemv_many_supported`], else
    /// one [`Self::gemv`] a vector. Outputs are filled with NaN first so unwritten rows show.
    pub fn gemv_many(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        vectors: usize,
    ) -> Result<Vec<f32>, GpuError> {
        super::gemv_many_runs(
            x,
            vectors,
            self.rows(),
            self.cols(),
            false,
            self.gemv_many_supported(registry),
            |xv| self.gemv(device, queue, registry, xv),
            |xs, n| {
                let xb = super::upload_x(device, xs)?;
                let yb = super::nan_output(device, n * self.rows())?;
                let d = self.gemv_many_dispatch(device, registry, &xb, &yb, n as u32)?;
                run_and_read(device, queue, &d, &yb, n * self.rows())
            },
        )
    }

    /// `y = W x`, read back. `y` is filled with NaN first so unwritten rows show.
    pub fn gemv(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
    ) -> Result<Vec<f32>, GpuError> {
        self.gemv_with(device, queue, registry, x, QGemvVariant::Auto)
    }

    /// `y = W x` with an explicit kernel choice, read back.
    pub fn gemv_with(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        registry: &PipelineRegistry,
        x: &[f32],
        variant: QGemvVariant,
    ) -> Result<Vec<f32>, GpuError> {
        let (r, k) = (self.rows(), self.cols());
        super::check_x_len(x, k)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        let xb = super::upload_x(device, x)?;
        let yb = super::nan_output(device, r)?;
        let d = self.gemv_dispatch_with(device, registry, &xb, &yb, variant)?;
        run_and_read(device, queue, &d, &yb, r)
    }
}

/// Submits `d` (a validation error is returned as such), waits, and reads the `rows` f32 of `y`
/// back.
fn run_and_read(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    d: &Dispatch,
    y: &wgpu::Buffer,
    rows: usize,
) -> Result<Vec<f32>, GpuError> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    d.submit(device, queue);
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(GpuError::Wgpu(e.to_string()));
    }
    wait(device)?;
    let bytes = read_back(device, queue, y, rows as u64 * 4)?;
    Ok(bytemuck::cast_slice(&bytes).to_vec())
}

/// Why a cooperative 4-bit kernel (`kernel` names it) cannot run a matrix of `bits`, `cols`
/// inputs and MLX groups of `group_size` on `registry`'s device, or `None` where it can: it
/// needs cooperative matrices, 4 bits, inputs a positive multiple of `cols_step`, and MLX
/// groups `groups` accepts (its second part says which).
fn coop_refusal_for(
    registry: &PipelineRegistry,
    (bits, cols, group_size): (u32, usize, u32),
    kernel: &str,
    cols_step: usize,
    groups: (bool, &str),
) -> Option<String> {
    if !registry.cooperative_matrix() {
        Some(super::coop::NO_COOPERATIVE_DEVICE.into())
    } else if bits != 4 || cols == 0 || !cols.is_multiple_of(cols_step) || !groups.0 {
        Some(format!(
            "the cooperative 4-bit {kernel} needs 4 bits, inputs a positive multiple of \
             {cols_step} and MLX groups {} ({bits} bits, {cols} inputs, groups of {group_size})",
            groups.1,
        ))
    } else {
        None
    }
}
