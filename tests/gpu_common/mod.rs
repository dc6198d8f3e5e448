//! What every GPU test binary shares: the adapter, and a skip that cannot go unseen.
#![allow(dead_code)] // each test binary uses its own subset

use std::fmt::Display;
use std::io::Write;
use std::sync::OnceLock;

use ecq::dtype::FloatDType;
use ecq::gpu::GpuContext;
use ecq::quant::{quantize_affine, AffineParams, QuantizedMatrix};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Says on the process's stderr that a GPU test was skipped. It writes to the stderr handle
/// directly: the test harness captures `eprintln!` of passing tests, which would make a skip
/// look like a silent pass.
pub fn announce_skip(reason: &dyn Display) {
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: no GPU adapter ({reason}) ***\n"
    );
}

/// The one GPU context of this test binary, or `None` (announced) where no adapter exists.
pub fn ctx() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new() {
        Ok(c) => {
            eprintln!("GPU adapter: {}", c.describe());
            Some(c)
        }
        Err(e) => {
            announce_skip(&e);
            None
        }
    })
    .as_ref()
}

/// Registries on the tests' device for the lanes kernels at each group width W of
/// `ecq::gpu::SUBGROUP_LANE_WIDTHS`, the 32-wide subgroup kernels off (what a device whose
/// subgroups are not 32 wide runs), each with whether W divides the subgroup size the probe
/// finds here (where it does not, the lanes kernels must report every chunk). Empty without
/// `Features::SUBGROUP` (announced by the caller).
pub fn lanes_registries() -> &'static [(u32, bool, ecq::gpu::PipelineRegistry)] {
    static REGS: OnceLock<Vec<(u32, bool, ecq::gpu::PipelineRegistry)>> = OnceLock::new();
    REGS.get_or_init(|| {
        let Some(ctx) = ctx() else { return Vec::new() };
        let Some(size) = ecq::gpu::probe_subgroup_size(ctx.device(), ctx.queue()) else {
            return Vec::new();
        };
        ecq::gpu::SUBGROUP_LANE_WIDTHS
            .iter()
            .map(|&w| {
                let reg = ecq::gpu::PipelineRegistry::for_device(ctx.device(), ctx.adapter_info())
                    .without_subgroups()
                    .with_subgroup_lanes(ctx.device(), Some(w))
                    .expect("a lanes registry");
                (w, size % w == 0, reg)
            })
            .collect()
    })
}

/// What a lanes kernel must give at a group width W wider than the device's subgroups (or
/// not dividing them): every chunk of the matrix flagged with the subgroup error, never a
/// result.
#[track_caller]
pub fn assert_every_chunk_flagged<T: std::fmt::Debug>(
    r: Result<T, ecq::gpu::GpuError>,
    n_chunks: usize,
    label: &str,
) {
    match r {
        Err(ecq::gpu::GpuError::CorruptStream {
            flags, bad_chunks, ..
        }) => {
            assert!(
                flags & ecq::gpu::error_bits::SUBGROUP_SIZE != 0,
                "{label}: {flags:#x}"
            );
            assert_eq!(bad_chunks, n_chunks, "{label}: chunks reported");
        }
        r => panic!("{label} on wider groups than subgroups: {r:?}"),
    }
}

/// A context on the tests' adapter whose storage buffers bind at most `bytes` (`None` where
/// there is no adapter: [`ctx`] announced that), for the errors a small device must give.
pub fn context_binding_at_most(bytes: u64) -> Option<GpuContext> {
    let want = ctx()?.adapter_name().to_string();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env());
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .find(|a| a.get_info().name == want)
        .expect("the tests' adapter");
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("ecq small bindings"),
        required_limits: wgpu::Limits {
            max_storage_buffer_binding_size: bytes,
            ..Default::default()
        },
        ..Default::default()
    }))
    .expect("a device with smaller limits");
    Some(GpuContext::from_device(device, queue, info))
}

/// Says on stderr, where it cannot be captured, that part of a GPU test could not run on this
/// adapter (and what was checked instead).
pub fn announce_unsupported(what: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** PARTLY SKIPPED: {what} ***\n");
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Gaussian weights (sigma 0.02) drawn from `rng`, quantized by MLX's affine `bits`-bit
/// scheme in groups of `gs`.
pub fn quantized_gaussian(
    rng: &mut ChaCha8Rng,
    rows: usize,
    cols: usize,
    bits: u32,
    gs: u32,
) -> QuantizedMatrix {
    let w: Vec<f32> = (0..rows * cols).map(|_| gaussian(rng) * 0.02).collect();
    quantize_affine(
        &w,
        rows,
        cols,
        FloatDType::F32,
        AffineParams::new(bits, gs).unwrap(),
    )
    .expect("quantize")
}

/// [`quantized_gaussian`] weights and one activation vector of `cols` standard normal
/// values, from `seed` (the weights drawn first, so the matrix of a seed does not depend on
/// the vector).
pub fn random_matrix(
    seed: u64,
    rows: usize,
    cols: usize,
    bits: u32,
    gs: u32,
) -> (QuantizedMatrix, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let q = quantized_gaussian(&mut rng, rows, cols, bits, gs);
    let x: Vec<f32> = (0..cols).map(|_| gaussian(&mut rng)).collect();
    (q, x)
}

/// Where [`recorded`] puts a call's activations and outputs: byte offsets in their buffers, or
/// both in one buffer.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub x_at: u64,
    pub y_at: u64,
    pub one_buffer: bool,
}

impl Placement {
    pub const START: Placement = Placement {
        x_at: 0,
        y_at: 0,
        one_buffer: false,
    };
}

/// `layer.record_forward` of `m` rows of `x` (in `order`) placed as `at` says, submitted, and
/// its outputs read back; then `check_recorded`. Outputs start as NaN, so unwritten ones show.
pub fn recorded(
    layer: &dyn ecq::linear::GpuLinear,
    x: &[f32],
    order: ecq::linear::ActivationOrder,
    m: usize,
    at: Placement,
) -> Result<Vec<f32>, ecq::linear::LinearError> {
    use ecq::gpu::BufferRange;
    let dev = layer.linear_device();
    let (x_bytes, y_bytes) = ((x.len() * 4) as u64, (m * layer.out_features() * 4) as u64);
    let values = |bytes: u64| (bytes / 4) as usize;
    let (xb, yb) = if at.one_buffer {
        let b = dev.activation_buffer(values((at.x_at + x_bytes).max(at.y_at + y_bytes)));
        (b.clone(), b)
    } else {
        (
            dev.activation_buffer(values(at.x_at + x_bytes)),
            dev.activation_buffer(values(at.y_at + y_bytes)),
        )
    };
    dev.queue()
        .write_buffer(&xb, at.x_at, bytemuck::cast_slice(x));
    let nan = vec![f32::NAN; m * layer.out_features()];
    dev.queue()
        .write_buffer(&yb, at.y_at, bytemuck::cast_slice(&nan));
    let mut enc = dev.device().create_command_encoder(&Default::default());
    let y = BufferRange::new(&yb, at.y_at, y_bytes);
    layer.record_forward(
        &mut enc,
        BufferRange::new(&xb, at.x_at, x_bytes),
        order,
        m,
        y,
    )?;
    dev.queue().submit([enc.finish()]);
    layer.check_recorded()?;
    Ok(dev.read_f32(y).expect("read back"))
}

/// A storage buffer of `bytes` for launches that are never run (refusals, shapes).
pub fn storage(dev: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
    dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

/// The bit patterns of `v`, for comparing GPU outputs bit for bit (NaNs included).
pub fn bits(v: impl AsRef<[f32]>) -> Vec<u32> {
    v.as_ref().iter().map(|x| x.to_bits()).collect()
}
