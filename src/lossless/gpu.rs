//! Lossless 16-bit weights on the GPU: decode to 16-bit patterns (`wgsl/bf16_decode.wgsl`), the
//! fused decode + GEMV (`wgsl/bf16_gemv.wgsl`, or `wgsl/bf16_gemv_subgroup.wgsl` on adapters with
//! 32-wide subgroups) and the plain bf16/f16 GEMV baseline
//! (`wgsl/bf16_plain_gemv.wgsl`).
//!
//! The kernels keep their own pipelines (compiled once by [`LosslessGpu::new`]) and use only the
//! public device and queue of a [`GpuContext`].
//!
//! ```no_run
//! use ecq::gpu::GpuContext;
//! use ecq::lossless::{encode, gpu::LosslessGpu, HalfType};
//!
//! let ctx = GpuContext::new()?;
//! let gpu = LosslessGpu::new(&ctx)?;
//! let w: Vec<u16> = (0..64 * 128).map(|i| half::bf16::from_f32((i as f32).cos() * 0.02).to_bits()).collect();
//! let m = encode(&w, 64, 128, HalfType::BF16, &Default::default())?;
//! let g = gpu.upload(&m)?;
//! assert_eq!(gpu.decode(&g)?, w);
//! let y = gpu.gemv(&g, &vec![1.0; 128])?;
//! assert_eq!(y.len(), 64);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::indexed::IndexedMatrix;
use super::{HalfType, LosslessMatrix};
use crate::gpu::{GpuContext, GpuError};
use crate::rans::{GPU_MAX_PRECISION, LANES};

/// The lossless kernels with the `wgsl/lib` files they `// import` appended.
pub(crate) const BF16_DECODE_SOURCE: &str = crate::gpu::wgsl_with_libs!(
    "../../wgsl/bf16_decode.wgsl",
    "rans_consts",
    "rans_table",
    "lossless16",
    "f16"
);
pub(crate) const BF16_GEMV_SOURCE: &str = crate::gpu::wgsl_with_libs!(
    "../../wgsl/bf16_gemv.wgsl",
    "rans_consts",
    "rans_table",
    "lossless16",
    "f16"
);
pub(crate) const BF16_DECODE_SUBGROUP_SOURCE: &str = crate::gpu::wgsl_with_libs!(
    "../../wgsl/bf16_decode_subgroup.wgsl",
    "rans_consts",
    "rans_table",
    "lossless16",
    "f16",
    "rans_subgroup"
);
pub(crate) const BF16_GEMV_SUBGROUP_SOURCE: &str = crate::gpu::wgsl_with_libs!(
    "../../wgsl/bf16_gemv_subgroup.wgsl",
    "rans_consts",
    "rans_table",
    "lossless16",
    "f16",
    "rans_subgroup"
);
pub(crate) const BF16_PLAIN_GEMV_SOURCE: &str =
    crate::gpu::wgsl_with_libs!("../../wgsl/bf16_plain_gemv.wgsl", "f16", "gemv_rows");
pub(crate) const BF16_INDEXED_GEMV_SOURCE: &str = crate::gpu::wgsl_with_libs!(
    "../../wgsl/bf16_indexed_gemv.wgsl",
    "indexed16",
    "gemv_rows"
);
pub(crate) const BF16_INDEXED_DECODE_SOURCE: &str =
    crate::gpu::wgsl_with_libs!("../../wgsl/bf16_indexed_decode.wgsl", "indexed16");
pub(crate) const BF16_INDEXED_PATCH_SOURCE: &str =
    crate::gpu::wgsl_with_libs!("../../wgsl/bf16_indexed_patch.wgsl", "indexed16");
/// The exponent the GEMV gives index 0 (`DENSE_BASE` in `wgsl/lib/indexed16.wgsl`).
const INDEXED_DENSE_BASE: u32 = 112;
/// Warps (of 32 threads, one per row or pair of rows) per workgroup of the plain and indexed
/// GEMVs (`WARPS` in the WGSL).
const GEMV_WARPS: usize = 8;
/// Rows per warp of the plain and indexed GEMVs (their `override ROWS`, set from here) when a
/// matrix has fewer than [`GEMV_TWO_ROWS_FROM`] rows.
const GEMV_ROWS_PER_WARP: usize = 1;
/// From this many rows the plain GEMV takes two rows per warp (each thread's x loads serve
/// both): measured on an H200 (BENCHMARKS.md, issue 7), 14336 and 128256 rows gain a little
/// (33.5 -> 32.9 and 247 -> 244 µs), 4096 rows lose, with too few workgroups left to fill the
/// GPU (36.7 -> 56.6 µs). Two warps sharing two rows (`SPLIT`) did not help it (36.7, 33.3,
/// 247 µs). The indexed GEMV always runs `SPLIT`, which it gains from at every shape (H200:
/// 37.0 -> 29.0 µs at 4096x14336, 299.5 -> 213.3 at 128256x4096).
const GEMV_TWO_ROWS_FROM: usize = 8192;

/// Rows per warp for a GEMV over `rows` rows.
fn gemv_rows_per_warp(rows: usize) -> usize {
    if rows >= GEMV_TWO_ROWS_FROM {
        2
    } else {
        GEMV_ROWS_PER_WARP
    }
}
/// Rows per workgroup of the indexed decode kernels (`RPW` in the WGSL).
const INDEXED_ROWS_PER_WG: usize = 8;
/// Weights per unit of the indexed-form kernels (`wgsl/lib/indexed16.wgsl`): `cols` must be a
/// multiple of it.
pub const INDEXED_UNIT: usize = super::indexed::GPU_UNIT;
/// Groups of 32 lanes per workgroup (`G` in the WGSL).
const GROUPS_PER_WG: usize = 4;

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    prec: u32,
    chunk_rows: u32,
    tile_chunks: u32,
    n_chunks: u32,
    n_tiles: u32,
    steps_per_row: u32,
    n_words: u32,
    wg_per_tile: u32,
    total_wg: u32,
    wg_x: u32,
    half_f16: u32,
    alphabet: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct PlainParams {
    rows: u32,
    cols: u32,
    wg_x: u32,
    total_wg: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct IndexedParams {
    rows: u32,
    cols: u32,
    wg_x: u32,
    total_wg: u32,
    base_bits: u32,
    scale: f32,
    escape_slot: f32,
    _pad: u32,
}

/// One recorded kernel launch (pipeline, bind group, workgroups). Benchmarks record many into
/// one compute pass.
#[derive(Debug, Clone)]
pub struct LosslessDispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: (u32, u32),
}

impl LosslessDispatch {
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
}

/// A lossless 16-bit matrix uploaded to the GPU.
#[derive(Debug)]
pub struct GpuLosslessMatrix {
    params: Params,
    freqs: wgpu::Buffer,
    states: wgpu::Buffer,
    offsets: wgpu::Buffer,
    words: wgpu::Buffer,
    raw: wgpu::Buffer,
    errors: wgpu::Buffer,
    coded_bytes: u64,
}

impl GpuLosslessMatrix {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.params.rows as usize
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.params.cols as usize
    }

    /// Bytes the kernels read for the weights (word stream, raw bytes, states, offsets,
    /// tables).
    pub fn coded_bytes(&self) -> u64 {
        self.coded_bytes
    }

    /// The per-chunk error flags buffer (clear it before a launch recorded by hand, check it
    /// with [`LosslessGpu::check_errors`] after).
    pub fn errors_buffer(&self) -> &wgpu::Buffer {
        &self.errors
    }
}

/// A plain (uncoded) bf16 or f16 matrix on the GPU, for the baseline GEMV.
#[derive(Debug)]
pub struct GpuHalfMatrix {
    rows: usize,
    cols: usize,
    half: HalfType,
    weights: wgpu::Buffer,
}

impl GpuHalfMatrix {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the weights (2 per weight).
    pub fn bytes(&self) -> u64 {
        2 * (self.rows * self.cols) as u64
    }
}

/// A bf16 matrix in the indexed form ([`IndexedMatrix`]) on the GPU.
#[derive(Debug)]
pub struct GpuIndexedMatrix {
    params: IndexedParams,
    words: wgpu::Buffer,
    escape_rows: wgpu::Buffer,
    escapes: wgpu::Buffer,
    bytes: u64,
}

impl GpuIndexedMatrix {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.params.rows as usize
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.params.cols as usize
    }

    /// Bytes of the form the GEMV reads (weights at 12 bits, escape offsets and pairs).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The lossless kernels for one device: compiled pipelines plus the device and queue.
#[derive(Debug)]
pub struct LosslessGpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    decode: wgpu::ComputePipeline,
    decode_subgroup: Option<wgpu::ComputePipeline>,
    fused: wgpu::ComputePipeline,
    fused_subgroup: Option<wgpu::ComputePipeline>,
    /// By rows per warp: 1, 2.
    plain_bf16: [wgpu::ComputePipeline; 2],
    plain_f16: [wgpu::ComputePipeline; 2],
    /// Two rows per pair of warps (`ROWS = 2`, `SPLIT`).
    indexed_gemv: wgpu::ComputePipeline,
    indexed_gemv_module: wgpu::ShaderModule,
    plain_module: wgpu::ShaderModule,
    indexed_decode: wgpu::ComputePipeline,
    indexed_patch: wgpu::ComputePipeline,
}

/// Rows per workgroup of a GEMV variant from its `ROWS` and `SPLIT` constants (`ROWS` set to
/// the default when absent; only 1 and 2 exist in the kernels, and `SPLIT` needs 2).
fn variant_rows_per_wg(consts: &mut Vec<(&str, f64)>) -> Result<usize, GpuError> {
    let rows = match consts.iter().find(|(k, _)| *k == "ROWS") {
        None => {
            consts.push(("ROWS", GEMV_ROWS_PER_WARP as f64));
            GEMV_ROWS_PER_WARP
        }
        Some(&(_, v)) if v == 1.0 || v == 2.0 => v as usize,
        Some(&(_, v)) => return Err(GpuError::InvalidInput(format!("ROWS = {v}: 1 or 2"))),
    };
    let split = consts.iter().any(|&(k, v)| k == "SPLIT" && v != 0.0);
    if split && rows != 2 {
        return Err(GpuError::InvalidInput("SPLIT needs ROWS = 2".into()));
    }
    Ok(if split { GEMV_WARPS } else { GEMV_WARPS * rows })
}

/// The pipeline of `module`'s entry point `main` with `override` constants set.
fn compute_pipeline(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    label: &str,
    consts: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: None,
        module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: consts,
            zero_initialize_workgroup_memory: true,
        },
        cache: None,
    })
}

/// Checks that the GEMV's x and y buffers hold `cols` and `rows` f32s.
fn check_xy(x: &wgpu::Buffer, cols: usize, y: &wgpu::Buffer, rows: usize) -> Result<(), GpuError> {
    for (what, b, n) in [("x", x, cols), ("y", y, rows)] {
        if b.size() < 4 * n as u64 {
            return Err(GpuError::InvalidInput(format!(
                "{what} buffer has {} bytes, the GEMV needs {n} f32s",
                b.size()
            )));
        }
    }
    Ok(())
}

/// Checks that a decode's `out` buffer holds a `rows x cols` matrix's 16-bit patterns (the
/// kernels' writes past a smaller one would be dropped: silently missing weights).
fn check_out(out: &wgpu::Buffer, rows: usize, cols: usize) -> Result<(), GpuError> {
    let bytes = 2 * rows as u64 * cols as u64;
    if out.size() < bytes {
        return Err(GpuError::InvalidInput(format!(
            "out buffer has {} bytes, the decode of {rows} x {cols} 16-bit weights needs {bytes}",
            out.size()
        )));
    }
    Ok(())
}

fn u32_of(what: &str, v: usize) -> Result<u32, GpuError> {
    u32::try_from(v).map_err(|_| GpuError::Unsupported(format!("{what} = {v} exceeds u32")))
}

impl LosslessGpu {
    /// Compiles the kernels on `ctx`'s device; the fused GEMV uses the subgroup kernel
    /// (`wgsl/bf16_gemv_subgroup.wgsl`) when `ctx.registry().subgroups32()`.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        Self::from_device(ctx.device(), ctx.queue(), ctx.registry().subgroups32())
    }

    /// Compiles the kernels on a caller's device. `subgroups32`: the device has
    /// `Features::SUBGROUP` and subgroups of exactly 32 lanes (then the fused GEMV uses the
    /// subgroup kernel).
    pub fn from_device(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        subgroups32: bool,
    ) -> Result<Self, GpuError> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = |name: &str, src: &str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            })
        };
        let dec = module("bf16_decode.wgsl", BF16_DECODE_SOURCE);
        let fus = module("bf16_gemv.wgsl", BF16_GEMV_SOURCE);
        let pla = module("bf16_plain_gemv.wgsl", BF16_PLAIN_GEMV_SOURCE);
        let pipe = |m: &wgpu::ShaderModule, name: &str, consts: &[(&str, f64)]| {
            compute_pipeline(device, m, name, consts)
        };
        let decode = pipe(&dec, "bf16_decode", &[]);
        let fused = pipe(&fus, "bf16_gemv", &[]);
        let fused_subgroup = subgroups32.then(|| {
            let m = module("bf16_gemv_subgroup.wgsl", BF16_GEMV_SUBGROUP_SOURCE);
            pipe(&m, "bf16_gemv_subgroup", &[])
        });
        let decode_subgroup = subgroups32.then(|| {
            let m = module("bf16_decode_subgroup.wgsl", BF16_DECODE_SUBGROUP_SOURCE);
            pipe(&m, "bf16_decode_subgroup", &[])
        });
        let plain_bf16 =
            [1.0, 2.0].map(|r| pipe(&pla, "bf16_plain_gemv", &[("F16", 0.0), ("ROWS", r)]));
        let plain_f16 =
            [1.0, 2.0].map(|r| pipe(&pla, "bf16_plain_gemv f16", &[("F16", 1.0), ("ROWS", r)]));

        let ig = module("bf16_indexed_gemv.wgsl", BF16_INDEXED_GEMV_SOURCE);
        let indexed_gemv = pipe(&ig, "bf16_indexed_gemv", &[("ROWS", 2.0), ("SPLIT", 1.0)]);
        let id = module("bf16_indexed_decode.wgsl", BF16_INDEXED_DECODE_SOURCE);
        let indexed_decode = pipe(&id, "bf16_indexed_decode", &[]);
        let ip = module("bf16_indexed_patch.wgsl", BF16_INDEXED_PATCH_SOURCE);
        let indexed_patch = pipe(&ip, "bf16_indexed_patch", &[]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Wgpu(format!("lossless kernels: {e}")));
        }
        Ok(LosslessGpu {
            device: device.clone(),
            queue: queue.clone(),
            decode,
            decode_subgroup,
            fused,
            fused_subgroup,
            plain_bf16,
            plain_f16,
            indexed_gemv,
            indexed_gemv_module: ig,
            plain_module: pla,
            indexed_decode,
            indexed_patch,
        })
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    fn check_size(&self, what: &str, bytes: u64) -> Result<(), GpuError> {
        let l = self.device.limits();
        if bytes > l.max_storage_buffer_binding_size {
            return Err(GpuError::TooLarge {
                what: what.into(),
                bytes,
                limit: l.max_storage_buffer_binding_size,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        if bytes > l.max_buffer_size {
            return Err(GpuError::TooLarge {
                what: what.into(),
                bytes,
                limit: l.max_buffer_size,
                limit_name: "max_buffer_size",
            });
        }
        Ok(())
    }

    /// A storage buffer holding `bytes`, zero-padded to a multiple of 16 (at least 16).
    pub fn storage(
        &self,
        what: &str,
        bytes: &[u8],
        extra: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, GpuError> {
        let len = bytes.len().div_ceil(16).max(1) * 16;
        self.check_size(what, len as u64)?;
        let mut v = bytes.to_vec();
        v.resize(len, 0);
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents: &v,
                usage: wgpu::BufferUsages::STORAGE | extra,
            }))
    }

    /// Uploads a coded matrix. Needs `cols` a multiple of 32 and precision <= 11
    /// ([`GPU_MAX_PRECISION`]).
    pub fn upload(&self, m: &LosslessMatrix) -> Result<GpuLosslessMatrix, GpuError> {
        let e = m.exponents();
        let (r, k) = (m.rows(), m.cols());
        if !k.is_multiple_of(LANES) {
            return Err(GpuError::Unsupported(format!(
                "lossless GPU kernels need cols a multiple of 32, got {k}"
            )));
        }
        if e.precision() > GPU_MAX_PRECISION {
            return Err(GpuError::Unsupported(format!(
                "precision {} > {GPU_MAX_PRECISION}",
                e.precision()
            )));
        }
        if e.alphabet_size() != 256 || e.weights_per_symbol() != 1 {
            return Err(GpuError::InvalidInput(format!(
                "exponent stream has alphabet {} and w = {}, expected 256 and 1",
                e.alphabet_size(),
                e.weights_per_symbol()
            )));
        }
        // Indices up to R * K must fit u32 in the kernels.
        u32_of("rows * cols", r * k)?;
        let wg_per_tile = e.tile_chunks().div_ceil(GROUPS_PER_WG);
        let total_wg = e.n_tiles() * wg_per_tile;
        let params = Params {
            rows: u32_of("rows", r)?,
            cols: u32_of("cols", k)?,
            prec: e.precision(),
            chunk_rows: u32_of("chunk_rows", e.chunk_rows())?,
            tile_chunks: u32_of("tile_chunks", e.tile_chunks())?,
            n_chunks: u32_of("n_chunks", e.n_chunks())?,
            n_tiles: u32_of("n_tiles", e.n_tiles())?,
            steps_per_row: u32_of("steps", k / LANES)?,
            n_words: u32_of("words", e.words().len())?,
            wg_per_tile: u32_of("workgroups per tile", wg_per_tile)?,
            total_wg: u32_of("workgroups", total_wg)?,
            wg_x: 0,
            half_f16: u32::from(m.half_type() == HalfType::F16),
            // the exponent alphabet (checked above); the shared table builder reads it
            alphabet: 256,
            _pad: [0; 2],
        };
        let none = wgpu::BufferUsages::empty();
        let bytes = |v: &[u8]| v.len() as u64;
        let freqs = self.storage("ecq16 freqs", bytemuck::cast_slice(e.freqs()), none)?;
        let states = self.storage("ecq16 states", bytemuck::cast_slice(e.states()), none)?;
        let offsets = self.storage("ecq16 offsets", bytemuck::cast_slice(e.offsets()), none)?;
        let words = self.storage("ecq16 words", bytemuck::cast_slice(e.words()), none)?;
        let raw = self.storage("ecq16 raw", m.raw(), none)?;
        let nc = e.n_chunks().max(1) * 4;
        self.check_size("ecq16 errors", nc as u64)?;
        let errors = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ecq16 errors"),
            size: nc.div_ceil(16) as u64 * 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let coded_bytes = bytes(bytemuck::cast_slice(e.freqs()))
            + bytes(bytemuck::cast_slice(e.states()))
            + bytes(bytemuck::cast_slice(e.offsets()))
            + bytes(bytemuck::cast_slice(e.words()))
            + m.raw().len() as u64;
        Ok(GpuLosslessMatrix {
            params,
            freqs,
            states,
            offsets,
            words,
            raw,
            errors,
            coded_bytes,
        })
    }

    /// Uploads plain 16-bit patterns (`rows x cols`, row-major) for [`Self::gemv_plain`].
    /// Needs `cols` a multiple of 8.
    pub fn upload_plain(
        &self,
        bits: &[u16],
        rows: usize,
        cols: usize,
        half: HalfType,
    ) -> Result<GpuHalfMatrix, GpuError> {
        if rows.checked_mul(cols) != Some(bits.len()) || !cols.is_multiple_of(8) {
            return Err(GpuError::InvalidInput(format!(
                "{} values for {rows} x {cols} (cols must be a multiple of 8)",
                bits.len()
            )));
        }
        u32_of("rows * cols", rows * cols)?;
        let weights = self.storage(
            "bf16 weights",
            bytemuck::cast_slice(bits),
            wgpu::BufferUsages::empty(),
        )?;
        Ok(GpuHalfMatrix {
            rows,
            cols,
            half,
            weights,
        })
    }

    fn grid(&self, total: u32) -> (u32, u32) {
        if total == 0 {
            return (0, 0);
        }
        let max = self
            .device
            .limits()
            .max_compute_workgroups_per_dimension
            .max(1);
        let x = total.min(max);
        (x, total.div_ceil(x))
    }

    fn uniform<T: Pod>(&self, v: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("ecq16 params"),
                contents: bytemuck::bytes_of(v),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// A launch of `pipeline` with `bufs` bound at bindings 0, 1, ... of group 0.
    fn launch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        label: &str,
        bufs: &[&wgpu::Buffer],
        workgroups: (u32, u32),
    ) -> Result<LosslessDispatch, GpuError> {
        // (every buffer is bound whole: wgpu's validation would panic on one past the limit)
        for b in bufs {
            crate::gpu::BufferRange::from(*b).check_binding_size(&self.device, label)?;
        }
        let entries: Vec<wgpu::BindGroupEntry> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Ok(LosslessDispatch {
            pipeline: pipeline.clone(),
            bind_group,
            workgroups,
        })
    }

    fn coded_dispatch(
        &self,
        m: &GpuLosslessMatrix,
        pipeline: &wgpu::ComputePipeline,
        tail: &[&wgpu::Buffer],
    ) -> Result<LosslessDispatch, GpuError> {
        let mut p = m.params;
        let (gx, gy) = self.grid(p.total_wg);
        p.wg_x = gx;
        let ub = self.uniform(&p);
        let mut bufs: Vec<&wgpu::Buffer> = vec![
            &ub, &m.freqs, &m.states, &m.offsets, &m.words, &m.errors, &m.raw,
        ];
        bufs.extend_from_slice(tail);
        self.launch(pipeline, "ecq16", &bufs, (gx, gy))
    }

    /// The decode launch writing `m`'s 16-bit patterns into `out` (`rows * cols / 2` u32
    /// words, low half first), with the subgroup kernel (`wgsl/bf16_decode_subgroup.wgsl`)
    /// when available. [`GpuError::InvalidInput`] for an `out` too small,
    /// [`GpuError::TooLarge`] for one past the device's binding limit.
    pub fn decode_dispatch(
        &self,
        m: &GpuLosslessMatrix,
        out: &wgpu::Buffer,
    ) -> Result<LosslessDispatch, GpuError> {
        self.decode_dispatch_with(m, out, self.uses_subgroups())
    }

    /// [`Self::decode_dispatch`] with an explicit kernel: `subgroup` = the subgroup kernel
    /// (falls back to the workgroup kernel where unavailable).
    pub fn decode_dispatch_with(
        &self,
        m: &GpuLosslessMatrix,
        out: &wgpu::Buffer,
        subgroup: bool,
    ) -> Result<LosslessDispatch, GpuError> {
        check_out(out, m.rows(), m.cols())?;
        let p = match (&self.decode_subgroup, subgroup) {
            (Some(p), true) => p,
            _ => &self.decode,
        };
        self.coded_dispatch(m, p, &[out])
    }

    /// Whether the fused GEMV uses the subgroup kernel by default.
    pub fn uses_subgroups(&self) -> bool {
        self.fused_subgroup.is_some()
    }

    /// The fused decode + GEMV launch `y = W x` (`x`: `cols` f32, `y`: `rows` f32), with the
    /// subgroup kernel when available. [`GpuError::InvalidInput`] for `x` or `y` too small,
    /// [`GpuError::TooLarge`] for one past the device's binding limit.
    pub fn gemv_dispatch(
        &self,
        m: &GpuLosslessMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<LosslessDispatch, GpuError> {
        self.gemv_dispatch_with(m, x, y, self.uses_subgroups())
    }

    /// [`Self::gemv_dispatch`] with an explicit kernel: `subgroup` = the subgroup kernel (falls
    /// back to the workgroup kernel where unavailable).
    pub fn gemv_dispatch_with(
        &self,
        m: &GpuLosslessMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        subgroup: bool,
    ) -> Result<LosslessDispatch, GpuError> {
        check_xy(x, m.cols(), y, m.rows())?;
        let p = match (&self.fused_subgroup, subgroup) {
            (Some(p), true) => p,
            _ => &self.fused,
        };
        self.coded_dispatch(m, p, &[x, y])
    }

    /// The plain GEMV launch `y = W x` (`x`, `y` must hold cols and rows f32s).
    pub fn plain_dispatch(
        &self,
        m: &GpuHalfMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<LosslessDispatch, GpuError> {
        let rows = gemv_rows_per_warp(m.rows);
        let pipeline = match m.half {
            HalfType::F16 => &self.plain_f16[rows - 1],
            _ => &self.plain_bf16[rows - 1],
        };
        self.plain_launch(m, x, y, pipeline, GEMV_WARPS * rows)
    }

    fn plain_launch(
        &self,
        m: &GpuHalfMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        pipeline: &wgpu::ComputePipeline,
        rows_per_wg: usize,
    ) -> Result<LosslessDispatch, GpuError> {
        check_xy(x, m.cols, y, m.rows)?;
        let total = u32_of("workgroups", m.rows.div_ceil(rows_per_wg))?;
        let (gx, gy) = self.grid(total);
        let p = PlainParams {
            rows: u32_of("rows", m.rows)?,
            cols: u32_of("cols", m.cols)?,
            wg_x: gx,
            total_wg: total,
        };
        let ub = self.uniform(&p);
        self.launch(pipeline, "bf16 plain", &[&ub, &m.weights, x, y], (gx, gy))
    }

    /// Copies `bytes` bytes of `src` to the host (blocking).
    pub fn read_back(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, GpuError> {
        let len = bytes.div_ceil(4).max(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ecq16 readback"),
            size: len,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, len);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        crate::gpu::wait(&self.device)?;
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

    /// Reads `m`'s per-chunk error flags; the first failing chunk becomes
    /// [`GpuError::CorruptStream`].
    pub fn check_errors(&self, m: &GpuLosslessMatrix) -> Result<(), GpuError> {
        let nc = m.params.n_chunks as usize;
        if nc == 0 {
            return Ok(());
        }
        let bytes = self.read_back(&m.errors, nc as u64 * 4)?;
        let flags: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let bad = flags.iter().filter(|&&f| f != 0).count();
        if let Some((chunk, &f)) = flags.iter().enumerate().find(|(_, &f)| f != 0) {
            return Err(GpuError::CorruptStream {
                chunk,
                tile: chunk / m.params.tile_chunks.max(1) as usize,
                flags: f,
                reason: GpuError::describe_flags(f),
                bad_chunks: bad,
            });
        }
        Ok(())
    }

    /// Records the launches into one pass, in order (after clearing `m`'s error flags where
    /// given), waits, and checks `m`'s error flags.
    fn run(&self, m: Option<&GpuLosslessMatrix>, ds: &[&LosslessDispatch]) -> Result<(), GpuError> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self.device.create_command_encoder(&Default::default());
        if let Some(m) = m {
            enc.clear_buffer(&m.errors, 0, None);
        }
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in ds {
                d.record(&mut pass);
            }
        }
        self.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Wgpu(e.to_string()));
        }
        crate::gpu::wait(&self.device)?;
        match m {
            Some(m) => self.check_errors(m),
            None => Ok(()),
        }
    }

    /// Decodes `m` on the GPU to its 16-bit patterns (row-major), checking the error flags;
    /// the subgroup kernel where available.
    pub fn decode(&self, m: &GpuLosslessMatrix) -> Result<Vec<u16>, GpuError> {
        self.decode_with(m, self.uses_subgroups())
    }

    /// [`Self::decode`] with an explicit kernel (see [`Self::decode_dispatch_with`]).
    pub fn decode_with(&self, m: &GpuLosslessMatrix, subgroup: bool) -> Result<Vec<u16>, GpuError> {
        let n = m.rows() * m.cols();
        if n == 0 {
            return Ok(Vec::new());
        }
        let out = self.storage(
            "ecq16 decoded",
            &vec![0xFF; n * 2],
            wgpu::BufferUsages::COPY_SRC,
        )?;
        let d = self.decode_dispatch_with(m, &out, subgroup)?;
        self.run(Some(m), &[&d])?;
        self.read_u16(&out, n)
    }

    fn read_u16(&self, b: &wgpu::Buffer, n: usize) -> Result<Vec<u16>, GpuError> {
        let b = self.read_back(b, n as u64 * 2)?;
        Ok(b.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    fn xy(&self, x: &[f32], rows: usize) -> Result<(wgpu::Buffer, wgpu::Buffer), GpuError> {
        let xb = self.storage("x", bytemuck::cast_slice(x), wgpu::BufferUsages::empty())?;
        let poison = vec![f32::NAN; rows];
        let yb = self.storage(
            "y",
            bytemuck::cast_slice(&poison),
            wgpu::BufferUsages::COPY_SRC,
        )?;
        Ok((xb, yb))
    }

    /// Runs a GEMV over a `rows x cols` matrix on `x`: checks `x`, uploads it and a poisoned y,
    /// records the launch `dispatch` makes for them (checking `errors`' flags where given) and
    /// reads y back.
    fn run_gemv(
        &self,
        (rows, cols): (usize, usize),
        x: &[f32],
        errors: Option<&GpuLosslessMatrix>,
        dispatch: impl FnOnce(&wgpu::Buffer, &wgpu::Buffer) -> Result<LosslessDispatch, GpuError>,
    ) -> Result<Vec<f32>, GpuError> {
        if x.len() != cols {
            return Err(GpuError::InvalidInput(format!(
                "x has {} entries, cols = {cols}",
                x.len()
            )));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        let (xb, yb) = self.xy(x, rows)?;
        let d = dispatch(&xb, &yb)?;
        self.run(errors, &[&d])?;
        self.read_f32(&yb, rows)
    }

    fn read_f32(&self, y: &wgpu::Buffer, n: usize) -> Result<Vec<f32>, GpuError> {
        let b = self.read_back(y, n as u64 * 4)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Fused decode + GEMV `y = W x` (f32 accumulation), read back, error flags checked.
    pub fn gemv(&self, m: &GpuLosslessMatrix, x: &[f32]) -> Result<Vec<f32>, GpuError> {
        self.gemv_with(m, x, self.uses_subgroups())
    }

    /// [`Self::gemv`] with an explicit kernel (see [`Self::gemv_dispatch_with`]).
    pub fn gemv_with(
        &self,
        m: &GpuLosslessMatrix,
        x: &[f32],
        subgroup: bool,
    ) -> Result<Vec<f32>, GpuError> {
        self.run_gemv((m.rows(), m.cols()), x, Some(m), |xb, yb| {
            self.gemv_dispatch_with(m, xb, yb, subgroup)
        })
    }

    /// Plain GEMV `y = W x` on uncoded 16-bit weights (the baseline), read back.
    pub fn gemv_plain(&self, m: &GpuHalfMatrix, x: &[f32]) -> Result<Vec<f32>, GpuError> {
        self.run_gemv((m.rows, m.cols), x, None, |xb, yb| {
            self.plain_dispatch(m, xb, yb)
        })
    }

    /// Uploads a matrix in the indexed form. Needs `cols` a multiple of [`INDEXED_UNIT`].
    pub fn upload_indexed(&self, m: &IndexedMatrix) -> Result<GpuIndexedMatrix, GpuError> {
        let (r, k) = (m.rows(), m.cols());
        if !k.is_multiple_of(INDEXED_UNIT) {
            return Err(GpuError::Unsupported(format!(
                "the indexed-form kernels need cols a multiple of {INDEXED_UNIT}, got {k}"
            )));
        }
        // Word indices up to R * K / 2 and escape positions R * K must fit u32.
        u32_of("rows * cols", r * k)?;
        let params = IndexedParams {
            rows: u32_of("rows", r)?,
            cols: u32_of("cols", k)?,
            // both set per launch (indexed_dispatch)
            wg_x: 0,
            total_wg: 0,
            base_bits: (u32::from(m.base()) << 7) | (u32::from(m.base()) << 23),
            // 2^(base - DENSE_BASE): base >= 1 keeps it >= 2^-111, a normal f32
            scale: f32::from_bits((u32::from(m.base()) + 127 - INDEXED_DENSE_BASE) << 23),
            escape_slot: m.escape_slot_value(),
            _pad: 0,
        };
        let none = wgpu::BufferUsages::empty();
        let pairs: Vec<u32> = m
            .escapes()
            .iter()
            .flat_map(|e| [e.col, u32::from(e.bits)])
            .collect();
        let gw = m
            .gpu_words()
            .map_err(|e| GpuError::Unsupported(e.to_string()))?;
        let words = self.storage("indexed words", bytemuck::cast_slice(&gw), none)?;
        let escape_rows = self.storage(
            "indexed escape rows",
            bytemuck::cast_slice(m.escape_rows()),
            none,
        )?;
        let escapes = self.storage("indexed escapes", bytemuck::cast_slice(&pairs), none)?;
        let bytes = 4 * gw.len() as u64 + 4 * m.escape_rows().len() as u64 + 4 * pairs.len() as u64;
        Ok(GpuIndexedMatrix {
            params,
            words,
            escape_rows,
            escapes,
            bytes,
        })
    }

    /// A launch of `pipeline` over `m`'s rows, `rows_per_wg` rows per workgroup, with
    /// bindings: the uniform block, then `bufs`.
    fn indexed_dispatch(
        &self,
        m: &GpuIndexedMatrix,
        pipeline: &wgpu::ComputePipeline,
        rows_per_wg: usize,
        bufs: &[&wgpu::Buffer],
    ) -> Result<LosslessDispatch, GpuError> {
        let mut p = m.params;
        // fits: rows fits u32 (upload_indexed)
        p.total_wg = p.rows.div_ceil(rows_per_wg as u32);
        let (gx, gy) = self.grid(p.total_wg);
        p.wg_x = gx;
        let ub = self.uniform(&p);
        let mut bufs = bufs.to_vec();
        bufs.insert(0, &ub);
        self.launch(pipeline, "bf16 indexed", &bufs, (gx, gy))
    }

    /// The fused GEMV launch on the indexed form (`wgsl/bf16_indexed_gemv.wgsl`): `y = W x`,
    /// `x`, `y` must hold cols and rows f32s.
    pub fn indexed_gemv_dispatch(
        &self,
        m: &GpuIndexedMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<LosslessDispatch, GpuError> {
        check_xy(x, m.cols(), y, m.rows())?;
        self.indexed_dispatch(
            m,
            &self.indexed_gemv,
            GEMV_WARPS,
            &[&m.words, &m.escape_rows, &m.escapes, x, y],
        )
    }

    /// A pipeline of `module` with `override` constants set (diagnostic variants).
    fn variant(
        &self,
        module: &wgpu::ShaderModule,
        consts: &[(&str, f64)],
    ) -> Result<wgpu::ComputePipeline, GpuError> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let p = compute_pipeline(&self.device, module, "diagnostic variant", consts);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Wgpu(format!("kernel variant {consts:?}: {e}")));
        }
        Ok(p)
    }

    /// [`Self::indexed_gemv_dispatch`] with the kernel's diagnostic `override` constants set
    /// (`DIAG` in `wgsl/bf16_indexed_gemv.wgsl`): for measuring where the limit is, not for
    /// results. Compiles a pipeline per call.
    pub fn indexed_gemv_diagnostic_dispatch(
        &self,
        m: &GpuIndexedMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        consts: &[(&str, f64)],
    ) -> Result<LosslessDispatch, GpuError> {
        check_xy(x, m.cols(), y, m.rows())?;
        let mut c = consts.to_vec();
        let rows_per_wg = variant_rows_per_wg(&mut c)?;
        let p = self.variant(&self.indexed_gemv_module, &c)?;
        self.indexed_dispatch(
            m,
            &p,
            rows_per_wg,
            &[&m.words, &m.escape_rows, &m.escapes, x, y],
        )
    }

    /// [`Self::plain_dispatch`] (bf16) with the kernel's diagnostic `override` constants set
    /// (`DIAG` in `wgsl/bf16_plain_gemv.wgsl`): for measurements, not results.
    pub fn plain_diagnostic_dispatch(
        &self,
        m: &GpuHalfMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        consts: &[(&str, f64)],
    ) -> Result<LosslessDispatch, GpuError> {
        if m.half != HalfType::BF16 {
            return Err(GpuError::InvalidInput(
                "diagnostic plain variants are bf16 only".into(),
            ));
        }
        let mut c = consts.to_vec();
        c.push(("F16", 0.0));
        let rows_per_wg = variant_rows_per_wg(&mut c)?;
        let p = self.variant(&self.plain_module, &c)?;
        self.plain_launch(m, x, y, &p, rows_per_wg)
    }

    /// The two decode launches of the indexed form writing the bf16 patterns into `out`
    /// (`rows * cols / 2` u32 words, low half first): the dense weights
    /// (`wgsl/bf16_indexed_decode.wgsl`), then the escapes (`wgsl/bf16_indexed_patch.wgsl`).
    /// Record both, in order, into one pass. [`GpuError::InvalidInput`] for an `out` too
    /// small, [`GpuError::TooLarge`] for one past the device's binding limit.
    pub fn indexed_decode_dispatches(
        &self,
        m: &GpuIndexedMatrix,
        out: &wgpu::Buffer,
    ) -> Result<[LosslessDispatch; 2], GpuError> {
        check_out(out, m.rows(), m.cols())?;
        Ok([
            self.indexed_dispatch(
                m,
                &self.indexed_decode,
                INDEXED_ROWS_PER_WG,
                &[&m.words, out],
            )?,
            self.indexed_dispatch(
                m,
                &self.indexed_patch,
                INDEXED_ROWS_PER_WG,
                &[&m.escape_rows, &m.escapes, out],
            )?,
        ])
    }

    /// Fused GEMV `y = W x` on the indexed form (f32 accumulation), read back.
    pub fn gemv_indexed(&self, m: &GpuIndexedMatrix, x: &[f32]) -> Result<Vec<f32>, GpuError> {
        self.run_gemv((m.rows(), m.cols()), x, None, |xb, yb| {
            self.indexed_gemv_dispatch(m, xb, yb)
        })
    }

    /// Decodes the indexed form on the GPU to bf16 patterns (row-major).
    pub fn decode_indexed(&self, m: &GpuIndexedMatrix) -> Result<Vec<u16>, GpuError> {
        let n = m.rows() * m.cols();
        if n == 0 {
            return Ok(Vec::new());
        }
        // poisoned, so that a word the kernel misses cannot pass as decoded
        let out = self.storage(
            "indexed decoded",
            &vec![0xA5; n * 2],
            wgpu::BufferUsages::COPY_SRC,
        )?;
        let [dense, patch] = self.indexed_decode_dispatches(m, &out)?;
        self.run(None, &[&dense, &patch])?;
        self.read_u16(&out, n)
    }
}
