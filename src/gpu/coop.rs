//! The fused GEMV of several activation vectors with its multiply on cooperative matrices
//! (tensor cores): `wgsl/rans_gemv_coop.wgsl` and the activation pass `wgsl/x_coop.wgsl`
//! (BENCHMARKS.md issue 5, step 90).
//!
//! wgpu 30 exposes cooperative matrices as the experimental
//! `Features::EXPERIMENTAL_COOPERATIVE_MATRIX` (Vulkan `VK_KHR_cooperative_matrix`, Metal
//! simdgroup matrices). [`GpuContext::with_cooperative_matrix`](super::GpuContext::with_cooperative_matrix)
//! asks for it where the adapter offers 16x16x16 multiplies of f16 inputs with f32
//! accumulators (NVIDIA's shape; Apple's simdgroup matrices are 8x8, which these kernels do not
//! use), and marks its registry ([`PipelineRegistry::cooperative_matrix`]). Nothing else in
//! ecq needs the feature.
//!
//! The result is not bit for bit the f32 kernels': the activations go to the tensor cores as
//! f16 (scaled per 512 inputs: exact for f16 and bf16 activations, else rounded to 11 bits),
//! the weights exactly, and the sums are f32; see the kernels.

use super::{grid, Dispatch, GpuError, Kernel, PipelineRegistry};

/// Activation vectors one cooperative launch multiplies (the multiply's N; fewer are padded
/// with zeros and cost the same).
pub const COOP_VECTORS: u32 = 16;

/// Matrix columns per block of the cooperative kernels: inputs must be a multiple of it.
pub const COOP_BLOCK_COLS: usize = 512;

/// The adapter property these kernels need: 16x16x16 multiply-adds of f16 inputs with f32
/// accumulators (and results).
pub fn offers_coop_f16_16x16(props: &[wgpu::CooperativeMatrixProperties]) -> bool {
    props.iter().any(|p| {
        p.m_size == 16
            && p.n_size == 16
            && p.k_size == 16
            && p.ab_type == wgpu::CooperativeScalarType::F16
            && p.cr_type == wgpu::CooperativeScalarType::F32
    })
}

/// Workgroup memory `rans_gemv_coop.wgsl` declares (W tile, B tiles, D tiles, compact table,
/// and the table library's scan arrays, which it does not use), bytes.
pub const COOP_WORKGROUP_BYTES: u32 =
    2080 * 8 + 2048 * 8 + 512 * 16 + (512 + 257) * 4 + (64 + 64 + 12 + 1) * 4;

/// Storage buffers `rans_gemv_coop.wgsl` binds.
pub const COOP_STORAGE_BUFFERS: u32 = 9;

/// The column order of the activation tiles, which must match the weight tile's of the GEMV
/// that reads them (`wgsl/x_coop.wgsl` says how each lays out a block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CoopOrder {
    /// For [`GpuCodedMatrix::gemv_coop_dispatch`](super::GpuCodedMatrix::gemv_coop_dispatch):
    /// a window split's nibble words as decoded.
    Window,
    /// For [`GpuQuantizedMatrix::gemv_coop_dispatch`](super::GpuQuantizedMatrix::gemv_coop_dispatch):
    /// MLX's packed words as loaded.
    Packed,
}

/// `vectors` activation vectors of `cols` inputs prepared for
/// [`GpuCodedMatrix::gemv_coop_dispatch`](super::GpuCodedMatrix::gemv_coop_dispatch) by
/// [`coop_x_dispatch`]: f16 tiles of each vector scaled per 512-column block, and per 64
/// columns the sums and the scalings; or for the plain baseline
/// ([`GpuQuantizedMatrix::gemv_coop_dispatch`](super::GpuQuantizedMatrix::gemv_coop_dispatch))
/// in its column order. The count and order are fixed here so that both launches agree.
#[derive(Debug, Clone)]
pub struct CoopActivations {
    tiles: wgpu::Buffer,
    sums: wgpu::Buffer,
    cols: usize,
    vectors: u32,
    order: CoopOrder,
}

impl CoopActivations {
    /// Buffers for `vectors` (1..=[`COOP_VECTORS`]) vectors of `cols` inputs (a positive
    /// multiple of [`COOP_BLOCK_COLS`]) in `order`; [`GpuError::InvalidInput`] otherwise.
    pub fn new(
        device: &wgpu::Device,
        cols: usize,
        vectors: u32,
        order: CoopOrder,
    ) -> Result<Self, GpuError> {
        if !(1..=COOP_VECTORS).contains(&vectors) {
            return Err(GpuError::InvalidInput(format!(
                "cooperative launches take 1..={COOP_VECTORS} vectors, not {vectors}"
            )));
        }
        if cols == 0 || !cols.is_multiple_of(COOP_BLOCK_COLS) {
            return Err(GpuError::InvalidInput(format!(
                "cooperative launches need inputs a positive multiple of {COOP_BLOCK_COLS}, not \
                 {cols}"
            )));
        }
        // an f16 a vector and input; (sum, scaling) a vector per 64 inputs
        let tile_bytes = 2 * COOP_VECTORS as u64 * cols as u64;
        let sum_bytes = 8 * COOP_VECTORS as u64 * (cols / 64) as u64;
        Ok(CoopActivations {
            tiles: super::storage_empty(device, "coop activation tiles", tile_bytes)?,
            sums: super::storage_empty(device, "coop activation sums", sum_bytes)?,
            cols,
            vectors,
            order,
        })
    }

    /// The column order.
    pub fn order(&self) -> CoopOrder {
        self.order
    }

    /// Inputs per vector.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Vectors.
    pub fn vectors(&self) -> u32 {
        self.vectors
    }

    /// Checks that these activations serve a GEMV of `rows x cols` reading `order`, writing
    /// `y`: [`GpuError::InvalidInput`] for another width or order, or `y` too small for
    /// [`Self::vectors`] rows of outputs.
    pub(crate) fn check_for(
        &self,
        rows: usize,
        cols: usize,
        order: CoopOrder,
        y: super::BufferRange<'_>,
        device: &wgpu::Device,
    ) -> Result<(), GpuError> {
        y.check(device, "y")?;
        if self.cols != cols || self.order != order {
            return Err(GpuError::InvalidInput(format!(
                "cooperative activations have {} inputs in {:?} order, the matrix {cols} in \
                 {order:?} order",
                self.cols, self.order
            )));
        }
        let y_bytes = rows as u64 * 4 * self.vectors as u64;
        if y.size() < y_bytes {
            return Err(GpuError::InvalidInput(format!(
                "y has {} bytes, {} vectors of {rows} outputs need {y_bytes}",
                y.size(),
                self.vectors
            )));
        }
        Ok(())
    }

    pub(crate) fn tiles(&self) -> &wgpu::Buffer {
        &self.tiles
    }

    pub(crate) fn sums(&self) -> &wgpu::Buffer {
        &self.sums
    }
}

/// The launch preparing `out.vectors()` vectors of `out.cols()` f32 activations in `x`
/// (column order, one vector after another) for the cooperative GEMV. Needs the registry's
/// cooperative matrices ([`GpuError::Unsupported`]) and `x` large enough
/// ([`GpuError::InvalidInput`]). One group of 32 invocations per 512 inputs and vector
/// slot (16 slots).
pub fn coop_x_dispatch<'b>(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    x: impl Into<super::BufferRange<'b>>,
    out: &CoopActivations,
) -> Result<Dispatch, GpuError> {
    if !registry.cooperative_matrix() {
        return Err(GpuError::Unsupported(NO_COOPERATIVE_DEVICE.into()));
    }
    let x = x.into();
    x.check(device, "x")?;
    let bytes = out.vectors as u64 * out.cols as u64 * 4;
    if x.size() < bytes {
        return Err(GpuError::InvalidInput(format!(
            "x has {} bytes, {} vectors of {} need {bytes}",
            x.size(),
            out.vectors,
            out.cols
        )));
    }
    let blocks = u32::try_from(out.cols / COOP_BLOCK_COLS)
        .map_err(|_| GpuError::InvalidInput(format!("{} inputs", out.cols)))?;
    let cols = u32::try_from(out.cols)
        .map_err(|_| GpuError::InvalidInput(format!("{} inputs", out.cols)))?;
    let (gx, gy) = grid(device, blocks * COOP_VECTORS);
    let pipeline = registry.get(device, Kernel::XCoop, "main", &[])?;
    use wgpu::util::DeviceExt;
    let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("coop x params"),
        contents: bytemuck::cast_slice(&[
            cols,
            out.vectors,
            blocks,
            gx,
            (out.order == CoopOrder::Packed) as u32,
            0,
            0,
            0,
        ]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let layout = pipeline.get_bind_group_layout(0);
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("coop x"),
        layout: &layout,
        entries: &[
            super::decode::entry(0, &uniform),
            x.entry(1),
            super::decode::entry(2, &out.tiles),
            super::decode::entry(3, &out.sums),
        ],
    });
    Ok(Dispatch {
        pipeline,
        bind_group,
        workgroups: (gx, gy),
    })
}

/// Inputs of the cooperative GEMM ([`GpuQuantizedMatrix::gemm_coop_dispatch`](super::GpuQuantizedMatrix::gemm_coop_dispatch))
/// must be a multiple of this: its steps of columns.
pub const COOP_GEMM_COLS: usize = 64;

/// [`GpuQuantizedMatrix::gemm_coop_dispatch`](super::GpuQuantizedMatrix::gemm_coop_dispatch)
/// takes 128 activation rows a workgroup where that still makes at least this many
/// workgroups, else 64 (about one an SM of an H100 or H200). On an H200 (BENCHMARKS.md issue
/// 5, step 97) 128 made Llama-3-8B's 4096-row matrices take the wide tiles at 512 tokens too,
/// and a forward of 32 layers 1.30-1.33x faster than 256, which left them 64-row tiles.
pub const COOP_GEMM_WIDE_MIN_WORKGROUPS: usize = 128;

/// Workgroups [`GpuQuantizedMatrix::gemm_coop_split`](super::GpuQuantizedMatrix::gemm_coop_split)
/// splits a grid of fewer tiles into: about one an SM of an H100 or H200. On an H200
/// (BENCHMARKS.md issue 5, step 103; grids below 128 tiles split, whatever the target) 32
/// Llama-3-8B layers at 48-128 tokens ran fastest with 128 of those tried (64, 128, 256,
/// 512): 256 took 1.04-1.11x as long, 64 1.12-1.24x, 512 (of at least 256 columns)
/// 1.15-1.33x.
pub const COOP_GEMM_SPLIT_WORKGROUPS: usize = 128;

/// Columns a split of [`GpuQuantizedMatrix::gemm_coop_split`](super::GpuQuantizedMatrix::gemm_coop_split)
/// takes at the least (8 steps of the loop), so that the partial sums cost little against
/// the steps (1024 took 1.04-1.05x as long at 48-64 tokens on an H200, step 103).
pub const COOP_GEMM_SPLIT_MIN_COLS: usize = 512;

/// Workgroup memory `qgemm_coop.wgsl` declares (accumulators on their way out, weight tile,
/// activation tile of 128 rows), bytes.
pub const COOP_GEMM_WORKGROUP_BYTES: u32 = 512 * 16 + 2304 * 8 + 2304 * 8;

/// Activation rows prepared for [`GpuQuantizedMatrix::gemm_coop_dispatch`](super::GpuQuantizedMatrix::gemm_coop_dispatch)
/// by [`coop_rows_dispatch`]: `rows` rows of `cols` f16 values, each row scaled by a power of
/// two that puts its largest magnitude in [2^13, 2^14) (exact for activations that are f16 or
/// bf16 values, down to 2^-27 of the row's largest; else rounded to 11 bits), and per row the
/// scaling back (NaN for a row holding a NaN or an infinity).
#[derive(Debug, Clone)]
pub struct CoopRows {
    values: wgpu::Buffer,
    scalings: wgpu::Buffer,
    cols: usize,
    rows: usize,
}

impl CoopRows {
    /// Buffers for `rows` (at least 1) rows of `cols` inputs (a positive multiple of
    /// [`COOP_GEMM_COLS`]); [`GpuError::InvalidInput`] otherwise, [`GpuError::TooLarge`] past
    /// the device's limits.
    pub fn new(device: &wgpu::Device, cols: usize, rows: usize) -> Result<Self, GpuError> {
        if rows == 0 || cols == 0 || !cols.is_multiple_of(COOP_GEMM_COLS) {
            return Err(GpuError::InvalidInput(format!(
                "cooperative GEMM activations need rows and inputs a positive multiple of \
                 {COOP_GEMM_COLS} ({rows} rows of {cols})"
            )));
        }
        let bytes = 2 * rows as u64 * cols as u64;
        super::check_storage(device, "cooperative GEMM activations", bytes)?;
        Ok(CoopRows {
            values: super::storage_empty(device, "coop gemm activations", bytes)?,
            scalings: super::storage_empty(device, "coop gemm scalings", 4 * rows as u64)?,
            cols,
            rows,
        })
    }

    /// Inputs per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn values(&self) -> &wgpu::Buffer {
        &self.values
    }

    pub(crate) fn scalings(&self) -> &wgpu::Buffer {
        &self.scalings
    }

    /// GPU bytes held.
    pub(crate) fn gpu_bytes(&self) -> u64 {
        self.values.size() + self.scalings.size()
    }

    /// The same buffers for `rows` rows, where they hold that many (a pass and a GEMM of
    /// fewer rows read and write only theirs).
    pub(crate) fn for_rows(&self, rows: usize) -> Option<CoopRows> {
        let capacity = rows_held(self.values.size(), self.scalings.size(), self.cols);
        (rows > 0 && rows <= capacity).then(|| CoopRows {
            rows,
            ..self.clone()
        })
    }
}

/// Rows of `cols` inputs that buffers of `values` and `scalings` bytes hold: the values
/// decide, since the scalings' buffer is at least 16 bytes (four rows) however few rows it
/// was made for.
fn rows_held(values: u64, scalings: u64, cols: usize) -> usize {
    (values / (2 * cols.max(1) as u64)).min(scalings / 4) as usize
}

/// The launch preparing `out.rows()` rows of `out.cols()` f32 activations in `x` (one row
/// after another) for the cooperative GEMM (`wgsl/x_rows_f16.wgsl`, a workgroup a row). Needs
/// the registry's cooperative matrices ([`GpuError::Unsupported`]) and `x` large enough
/// ([`GpuError::InvalidInput`]).
pub fn coop_rows_dispatch<'b>(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    x: impl Into<super::BufferRange<'b>>,
    out: &CoopRows,
) -> Result<Dispatch, GpuError> {
    if !registry.cooperative_matrix() {
        return Err(GpuError::Unsupported(NO_COOPERATIVE_DEVICE.into()));
    }
    let x = x.into();
    x.check(device, "x")?;
    let bytes = out.rows as u64 * out.cols as u64 * 4;
    if x.size() < bytes {
        return Err(GpuError::InvalidInput(format!(
            "x has {} bytes, {} rows of {} need {bytes}",
            x.size(),
            out.rows,
            out.cols
        )));
    }
    let as_u32 = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| GpuError::InvalidInput(format!("{v} {what}")))
    };
    let (cols, rows) = (as_u32(out.cols, "inputs")?, as_u32(out.rows, "rows")?);
    let (gx, gy) = grid(device, rows);
    let pipeline = registry.get(device, Kernel::XRowsF16, "main", &[])?;
    use wgpu::util::DeviceExt;
    let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("coop rows params"),
        contents: bytemuck::cast_slice(&[cols, rows, gx, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let layout = pipeline.get_bind_group_layout(0);
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("coop rows"),
        layout: &layout,
        entries: &[
            super::decode::entry(0, &uniform),
            x.entry(1),
            super::decode::entry(2, &out.values),
            super::decode::entry(3, &out.scalings),
        ],
    });
    Ok(Dispatch {
        pipeline,
        bind_group,
        workgroups: (gx, gy),
    })
}

/// Why the cooperative entry points refuse a device that was not created for them.
pub(crate) const NO_COOPERATIVE_DEVICE: &str = "the device has no cooperative matrices \
     (GpuContext::with_cooperative_matrix on an adapter offering 16x16x16 f16 multiplies with \
     f32 accumulators)";

/// The activations for `vectors` vectors of `cols` in `order` from `cache`, made there the
/// first time: a layer's launches of one `forward_batch` call run one after another in a pass,
/// so those of the same count can share one set of buffers.
impl CoopActivations {
    /// Whether these are the buffers for `vectors` vectors of `cols` inputs in `order`.
    pub(crate) fn is_for(&self, cols: usize, vectors: u32, order: CoopOrder) -> bool {
        (self.cols, self.vectors, self.order) == (cols, vectors, order)
    }

    /// GPU bytes held.
    pub(crate) fn gpu_bytes(&self) -> u64 {
        self.tiles.size() + self.sums.size()
    }
}

/// What the fused and plain `gemv_coop` share: `Y = X W^T` for `vectors` vectors of `cols`
/// in `x`, in launches of up to [`COOP_VECTORS`]: each uploads its vectors, runs the
/// activation pass in `order` and `gemv(activations, y)` through `run` (which submits the two
/// launches and waits, checking what it checks), and reads its `rows` outputs a vector back
/// (filled with NaN first, so unwritten ones show).
#[allow(clippy::too_many_arguments)]
pub(crate) fn coop_runs(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    registry: &PipelineRegistry,
    x: &[f32],
    vectors: usize,
    (rows, cols): (usize, usize),
    empty: bool,
    order: CoopOrder,
    gemv: impl Fn(&CoopActivations, &wgpu::Buffer) -> Result<Dispatch, GpuError>,
    run: impl Fn(&Dispatch, &Dispatch) -> Result<(), GpuError>,
) -> Result<Vec<f32>, GpuError> {
    super::gemv_many_runs(
        x,
        vectors,
        rows,
        cols,
        empty,
        true,
        |_| unreachable!("gemv_many_runs takes `launch` where `many`"),
        |xs, n| {
            let xb = super::upload_x(device, xs)?;
            let acts = CoopActivations::new(device, cols, n as u32, order)?;
            let yb = super::nan_output(device, n * rows)?;
            let prep = coop_x_dispatch(device, registry, &xb, &acts)?;
            let d = gemv(&acts, &yb)?;
            run(&prep, &d)?;
            let bytes = super::read_back(device, queue, &yb, (n * rows) as u64 * 4)?;
            Ok(bytemuck::cast_slice(&bytes).to_vec())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set made for one row holds one, though its scalings' buffer has room for four.
    #[test]
    fn rows_held_follows_the_values() {
        assert_eq!(rows_held(2 * 64, 16, 64), 1);
        assert_eq!(rows_held(2 * 3 * 128, 16, 128), 3);
        assert_eq!(rows_held(2 * 512 * 4096, 4 * 512, 4096), 512);
    }

    fn prop(m: u32, ab: wgpu::CooperativeScalarType) -> wgpu::CooperativeMatrixProperties {
        wgpu::CooperativeMatrixProperties {
            m_size: m,
            n_size: m,
            k_size: m,
            ab_type: ab,
            cr_type: wgpu::CooperativeScalarType::F32,
            saturating_accumulation: false,
        }
    }

    /// Only the 16x16x16 f16 -> f32 shape serves; Apple's 8x8 and f32 inputs do not.
    #[test]
    fn needs_the_f16_16x16_shape() {
        use wgpu::CooperativeScalarType::{F16, F32};
        assert!(offers_coop_f16_16x16(&[prop(8, F16), prop(16, F16)]));
        assert!(!offers_coop_f16_16x16(&[prop(8, F16), prop(8, F32)]));
        assert!(!offers_coop_f16_16x16(&[prop(16, F32)]));
        assert!(!offers_coop_f16_16x16(&[]));
    }

    /// The kernel's declared workgroup memory, as the host counts it, fits the 48 KiB the
    /// NVIDIA Vulkan driver offers.
    #[test]
    fn workgroup_memory_fits_48_kib() {
        const { assert!(COOP_WORKGROUP_BYTES <= 49152) };
        const { assert!(COOP_GEMM_WORKGROUP_BYTES <= 49152) };
        let gemm = Kernel::QGemmCoop.source();
        assert!(gemm.contains("d: array<vec4<f32>, 512>,"));
        assert!(gemm.contains("w: array<vec4<f16>, 2304>,"));
        assert!(gemm.contains("x: array<vec4<f16>, 2304>,"));
        let src = Kernel::RansGemvCoop.source();
        assert!(src.contains("d: array<vec4<f32>, 512>,"));
        assert!(src.contains("w: array<vec4<f16>, 2080>,"));
        assert!(src.contains("b: array<vec4<f16>, 2048>,"));
    }
}
