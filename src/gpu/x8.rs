//! Activations quantized to 8 bits once per vector (`wgsl/quantize_x8.wgsl`), for the GEMV
//! kernels that multiply them with `dot4I8Packed`: the fused window-split GEMV
//! ([`GpuCodedMatrix::gemv_x8_dispatch`](super::GpuCodedMatrix::gemv_x8_dispatch)) and, as its
//! like-for-like baseline, the plain 4-bit one
//! ([`GpuQuantizedMatrix::gemv_x8_dispatch`](super::GpuQuantizedMatrix::gemv_x8_dispatch)).
//!
//! Each piece of [`X8_PIECE`] consecutive activations gets one scale `d = max|x| / 127` and
//! integers `q = round(x * 127 / max|x|)` (round half to even; all zero for an all-zero piece),
//! exactly as [`QGemvVariant::Int8Dot`](super::QGemvVariant::Int8Dot) quantizes in registers,
//! plus the piece's exact f32 sum for the bias term. **Approximate:** a GEMV on them is off the
//! f32 one by at most `|scale| * d / 2 * sum(q)` per piece and row (`q` the 4-bit weights), as
//! with ggml's 8-bit activations.
//!
//! The GPU buffer ([`x8_bytes`] bytes): the pieces' integers, 16 bytes a piece in the byte order
//! of the kernel that reads them ([`X8Order`]), then a `(d, sum)` pair of f32 per piece.

use super::{
    grid, read_back, storage_empty, vector_pass_dispatch, Dispatch, GpuError, Kernel,
    PipelineRegistry,
};

/// Activations per quantization piece (one scale each).
pub const X8_PIECE: usize = 16;

/// Bytes of the 8-bit form of `cols` activations: 16 integers and a `(d, sum)` pair of f32 per
/// piece of [`X8_PIECE`], 1.5 bytes per activation.
pub fn x8_bytes(cols: usize) -> u64 {
    (cols / X8_PIECE) as u64 * 24
}

/// The byte order of a piece's four words of integers: each reader multiplies a word of four
/// weights (bytes) with a word of four activations, and the weights' bytes come out of its
/// nibble words in an order of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum X8Order {
    /// `qgemv4_dp4a.wgsl`'s: the even and odd nibbles of its two weight words, activations
    /// (0, 2, 4, 6), (1, 3, 5, 7), (8, 10, 12, 14), (9, 11, 13, 15).
    Plain,
    /// The fused window-split kernel's (`rans_gemv_blocked.wgsl`, `window_x8_dot`): word `c`
    /// holds activations (c, 8 + c, 4 + c, 12 + c).
    Window,
}

impl X8Order {
    /// The activation (within its piece) of byte `j` of word `c`.
    pub fn activation(self, c: usize, j: usize) -> usize {
        match self {
            X8Order::Plain => 8 * (c / 2) + 2 * j + c % 2,
            X8Order::Window => c + [0, 8, 4, 12][j],
        }
    }

    fn constant(self) -> u32 {
        match self {
            X8Order::Plain => 0,
            X8Order::Window => 1,
        }
    }
}

/// Activations in 8 bits, pieces in natural order (what the GPU buffer holds, unpacked).
#[derive(Debug, Clone, PartialEq)]
pub struct X8Activations {
    /// One integer per activation, in [-127, 127].
    pub q: Vec<i8>,
    /// Per piece, the scale `d = max|x| / 127` (0 for an all-zero piece).
    pub d: Vec<f32>,
    /// Per piece, the f32 sum of its activations.
    pub sum: Vec<f32>,
}

impl X8Activations {
    /// The CPU reference of the quantization (f32 arithmetic as the kernels write it; a GPU's
    /// division may differ from this one by an ulp, so a `q` exactly at a rounding tie may
    /// differ by one). Refuses lengths that are not whole pieces.
    ///
    /// ```
    /// use ecq::gpu::X8Activations;
    ///
    /// let x: Vec<f32> = (0..32).map(|i| i as f32 - 8.0).collect(); // two pieces
    /// let a = X8Activations::quantize(&x)?;
    /// assert_eq!((a.q[0], a.q[15], a.q[31]), (-127, 111, 127)); // -8, 7 of max 8; 23 of 23
    /// assert_eq!((a.d[0], a.sum[1]), (8.0 / 127.0, 248.0));
    /// assert!(X8Activations::quantize(&x[..24]).is_err()); // not whole pieces
    /// # Ok::<(), ecq::gpu::GpuError>(())
    /// ```
    pub fn quantize(x: &[f32]) -> Result<Self, GpuError> {
        check_cols(x.len())?;
        let n = x.len() / X8_PIECE;
        let mut out = X8Activations {
            q: Vec::with_capacity(x.len()),
            d: Vec::with_capacity(n),
            sum: Vec::with_capacity(n),
        };
        for p in x.chunks_exact(X8_PIECE) {
            let m = p.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let inv = if m > 0.0 { 127.0 / m } else { 0.0 };
            out.q
                .extend(p.iter().map(|&v| (v * inv).round_ties_even() as i8));
            out.d.push(m / 127.0);
            // the kernels' order: (x0 + x1) + (x2 + x3) per component of four vectors, then
            // the components
            let v: Vec<f32> = (0..4)
                .map(|c| (p[c] + p[4 + c]) + (p[8 + c] + p[12 + c]))
                .collect();
            out.sum.push((v[0] + v[1]) + (v[2] + v[3]));
        }
        Ok(out)
    }

    /// Unpacks a GPU buffer's bytes (`x8_bytes(cols)` of them, pieces in `order`).
    pub fn unpack(bytes: &[u8], cols: usize, order: X8Order) -> Result<Self, GpuError> {
        check_cols(cols)?;
        if (bytes.len() as u64) < x8_bytes(cols) {
            return Err(GpuError::InvalidInput(format!(
                "8-bit activations: {} bytes, {cols} activations need {}",
                bytes.len(),
                x8_bytes(cols)
            )));
        }
        let n = cols / X8_PIECE;
        let mut q = vec![0i8; cols];
        for p in 0..n {
            for c in 0..4 {
                for j in 0..4 {
                    q[p * X8_PIECE + order.activation(c, j)] = bytes[p * 16 + c * 4 + j] as i8;
                }
            }
        }
        let f = |i: usize| {
            let o = n * 16 + i * 4;
            f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]])
        };
        Ok(X8Activations {
            q,
            d: (0..n).map(|p| f(2 * p)).collect(),
            sum: (0..n).map(|p| f(2 * p + 1)).collect(),
        })
    }
}

fn check_cols(cols: usize) -> Result<(), GpuError> {
    if cols == 0 || !cols.is_multiple_of(X8_PIECE) {
        return Err(GpuError::InvalidInput(format!(
            "8-bit activations need a positive multiple of {X8_PIECE} of them, not {cols}"
        )));
    }
    Ok(())
}

/// The launch quantizing `cols` f32 activations in `x` into `out` (at least
/// [`x8_bytes`]`(cols)` bytes) in `order`.
pub fn quantize_x8_dispatch<'b>(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    x: impl Into<super::BufferRange<'b>>,
    out: impl Into<super::BufferRange<'b>>,
    cols: usize,
    order: X8Order,
) -> Result<Dispatch, GpuError> {
    check_cols(cols)?;
    let (x, out) = (x.into(), out.into());
    x.check(device, "x")?;
    out.check(device, "8-bit activations")?;
    if x.size() < cols as u64 * 4 || out.size() < x8_bytes(cols) {
        return Err(GpuError::InvalidInput(format!(
            "8-bit activations: x/out buffers have {}/{} bytes, need {}/{}",
            x.size(),
            out.size(),
            cols * 4,
            x8_bytes(cols)
        )));
    }
    let pieces = u32::try_from(cols / X8_PIECE)
        .map_err(|_| GpuError::InvalidInput(format!("{cols} activations")))?;
    let total_wg = pieces.div_ceil(64);
    let (gx, gy) = grid(device, total_wg);
    let pipeline = registry.get(
        device,
        Kernel::QuantizeX8,
        "main",
        &[("ORDER", order.constant())],
    )?;
    Ok(vector_pass_dispatch(
        device,
        pipeline,
        &[pieces, gx, 0, 0],
        x,
        out,
        (gx, gy),
    ))
}

/// `x` uploaded and quantized on the GPU into a new buffer of [`x8_bytes`] bytes (the input of
/// the `gemv_x8` launches), submitted without waiting.
pub fn quantize_x8(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    registry: &PipelineRegistry,
    x: &[f32],
    order: X8Order,
) -> Result<wgpu::Buffer, GpuError> {
    check_cols(x.len())?;
    let out = storage_empty(device, "8-bit activations", x8_bytes(x.len()))?;
    quantize_x8_into(device, queue, registry, x, &out, order)?;
    Ok(out)
}

/// [`quantize_x8`] into a buffer the caller holds (at least [`x8_bytes`] bytes): uploads `x`
/// and submits its quantizing pass in `order` without waiting.
pub fn quantize_x8_into(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    registry: &PipelineRegistry,
    x: &[f32],
    out: &wgpu::Buffer,
    order: X8Order,
) -> Result<(), GpuError> {
    let xb = super::upload_x(device, x)?;
    quantize_x8_dispatch(device, registry, &xb, out, x.len(), order)?.submit(device, queue);
    Ok(())
}

/// A `gemv_x8` launch on `x` quantized on the GPU: makes the buffer for the 8-bit activations
/// and hands it to `launch` first, so that a launch refusing the matrix or device does so, by
/// name, before any work is submitted; then quantizes `x` into it ([`quantize_x8_into`]).
/// Returns the launch (its bind group keeps the buffer alive).
pub(crate) fn quantized_launch(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    registry: &PipelineRegistry,
    x: &[f32],
    order: X8Order,
    launch: impl FnOnce(&wgpu::Buffer) -> Result<Dispatch, GpuError>,
) -> Result<Dispatch, GpuError> {
    let x8 = storage_empty(device, "8-bit activations", x8_bytes(x.len()))?;
    let d = launch(&x8)?;
    quantize_x8_into(device, queue, registry, x, &x8, order)?;
    Ok(d)
}

/// [`quantize_x8`] read back and unpacked (for tests and inspection).
pub fn quantize_x8_read(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    registry: &PipelineRegistry,
    x: &[f32],
    order: X8Order,
) -> Result<X8Activations, GpuError> {
    let out = quantize_x8(device, queue, registry, x, order)?;
    let bytes = read_back(device, queue, &out, x8_bytes(x.len()))?;
    X8Activations::unpack(&bytes, x.len(), order)
}
