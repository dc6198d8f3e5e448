//! A linear layer's bias added to its outputs on the GPU (`wgsl/add_bias.wgsl`), for outputs
//! that stay there ([`crate::linear::GpuLinear`]).

use super::{
    grid, vector_pass_dispatch, BufferRange, Dispatch, GpuError, Kernel, PipelineRegistry,
};

/// The launch adding `bias` (one f32 per output, `n` of them) to every one of the `rows` rows
/// of `n` f32 outputs in `y`: `y[r n + i] += bias[i]`, the same f32 addition as on the host,
/// so the same bits. [`GpuError::InvalidInput`] for ranges too small, unbindable or empty
/// shapes, [`GpuError::TooLarge`] for outputs past the device's binding limit.
pub fn add_bias_dispatch(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    bias: BufferRange<'_>,
    y: BufferRange<'_>,
    rows: usize,
    n: usize,
) -> Result<Dispatch, GpuError> {
    let total = rows
        .checked_mul(n)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|&t| t > 0)
        .ok_or_else(|| GpuError::InvalidInput(format!("bias: {rows} rows of {n} outputs")))?;
    bias.check(device, "bias")?;
    y.check(device, "y")?;
    let (bias_bytes, y_bytes) = (n as u64 * 4, u64::from(total) * 4);
    if bias.size() < bias_bytes || y.size() < y_bytes {
        return Err(GpuError::InvalidInput(format!(
            "bias: bias/y ranges have {}/{} bytes, need {bias_bytes}/{y_bytes}",
            bias.size(),
            y.size()
        )));
    }
    let (gx, gy) = grid(device, total.div_ceil(256));
    let pipeline = registry.get(device, Kernel::AddBias, "main", &[])?;
    Ok(vector_pass_dispatch(
        device,
        pipeline,
        &[n as u32, total, gx, 0],
        BufferRange::new(bias.buffer(), bias.offset(), bias_bytes),
        BufferRange::new(y.buffer(), y.offset(), y_bytes),
        (gx, gy),
    ))
}
