//! Rows of words moved between buffers by a launch (`wgsl/copy_rows.wgsl`), where a copy
//! command would end the caller's compute pass ([`crate::linear::GpuLinear`]).

use super::{decode, grid, Dispatch, GpuError, Kernel, PipelineRegistry};

/// What [`copy_rows_dispatch`] moves, in bytes (multiples of 4): `rows` rows, row `r`'s first
/// `width` bytes from `src_at + r src_stride` to `dst_at + r dst_stride`, then zeros up to
/// `fill` bytes of the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCopy {
    /// Where row 0 starts in the source.
    pub src_at: u64,
    /// Bytes from a source row to the next.
    pub src_stride: u64,
    /// Where row 0 goes in the destination.
    pub dst_at: u64,
    /// Bytes from a destination row to the next.
    pub dst_stride: u64,
    /// Bytes copied a row.
    pub width: u64,
    /// Bytes written a row (`width`, then zeros); at least `width`.
    pub fill: u64,
    /// Rows.
    pub rows: u64,
}

impl RowCopy {
    /// `bytes` contiguous bytes from `src_at` to `dst_at`, as one row.
    pub fn contiguous(src_at: u64, dst_at: u64, bytes: u64) -> Self {
        RowCopy {
            src_at,
            src_stride: 0,
            dst_at,
            dst_stride: 0,
            width: bytes,
            fill: bytes,
            rows: 1,
        }
    }
}

/// The launch moving `c` from `src` to `dst` (two different buffers; [`GpuError::InvalidInput`]
/// for unaligned or out-of-range rows, overlapping rows in the destination, or a launch too
/// large). `src` is not read where `c.width` is 0 (a fill with zeros) but must still be a
/// buffer of at least 4 bytes with `STORAGE` usage. Each side is bound from the device's
/// storage alignment below its first byte, so ranges anywhere in large buffers work.
pub fn copy_rows_dispatch(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    c: &RowCopy,
) -> Result<Dispatch, GpuError> {
    let bad = |why: &str| GpuError::InvalidInput(format!("row copy {c:?}: {why}"));
    let fields = [
        c.src_at,
        c.src_stride,
        c.dst_at,
        c.dst_stride,
        c.width,
        c.fill,
    ];
    if fields.iter().any(|v| v % 4 != 0) {
        return Err(bad("offsets, strides and widths must be multiples of 4"));
    }
    if c.rows == 0 || c.fill == 0 || c.width > c.fill {
        return Err(bad("no rows, nothing written, or width above fill"));
    }
    if c.rows > 1 && c.dst_stride < c.fill {
        return Err(bad("destination rows overlap"));
    }
    if src == dst {
        return Err(bad("source and destination are one buffer"));
    }
    let align = u64::from(device.limits().min_storage_buffer_offset_alignment).max(4);
    let max_binding = device.limits().max_storage_buffer_binding_size;
    // the window of a side: from `at` rounded down to the alignment through its last row
    let window = |buffer: &wgpu::Buffer, at: u64, stride: u64, width: u64, what: &str| {
        let end = (c.rows - 1)
            .checked_mul(stride)
            .and_then(|v| v.checked_add(at))
            .and_then(|v| v.checked_add(width.max(4)))
            .filter(|&e| e <= buffer.size())
            .ok_or_else(|| {
                bad(&format!(
                    "{what} rows end past the buffer's {} bytes",
                    buffer.size()
                ))
            })?;
        let lo = at / align * align;
        if end - lo > max_binding {
            return Err(bad(&format!("{what} spans more than one binding")));
        }
        Ok((lo, end - lo, (at - lo) / 4))
    };
    let (s_lo, s_size, s_at) = if c.width == 0 {
        (0, 4.min(src.size()), 0)
    } else {
        window(src, c.src_at, c.src_stride, c.width, "source")?
    };
    let (d_lo, d_size, d_at) = window(dst, c.dst_at, c.dst_stride, c.fill, "destination")?;
    let words = |v: u64| u32::try_from(v / 4).map_err(|_| bad("larger than 2^32 words"));
    let total = c
        .rows
        .checked_mul(c.fill / 4)
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| bad("more than 2^32 words written"))?;
    if s_size < 4 {
        return Err(bad("the source has no word to bind"));
    }
    let (gx, gy) = grid(device, total.div_ceil(256));
    let params = [
        u32::try_from(s_at).map_err(|_| bad("source offset"))?,
        words(c.src_stride)?,
        u32::try_from(d_at).map_err(|_| bad("destination offset"))?,
        words(c.dst_stride)?,
        words(c.width)?,
        words(c.fill)?,
        total,
        gx,
    ];
    use wgpu::util::DeviceExt;
    let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("copy rows params"),
        contents: bytemuck::cast_slice(&params),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let pipeline = registry.get(device, Kernel::CopyRows, "main", &[])?;
    let layout = pipeline.get_bind_group_layout(0);
    let range = |buffer, offset, size| {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset,
            size: std::num::NonZeroU64::new(size),
        })
    };
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("copy rows"),
        layout: &layout,
        entries: &[
            decode::entry(0, &uniform),
            wgpu::BindGroupEntry {
                binding: 1,
                resource: range(src, s_lo, s_size),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: range(dst, d_lo, d_size),
            },
        ],
    });
    Ok(Dispatch {
        pipeline,
        bind_group,
        workgroups: (gx, gy),
    })
}
