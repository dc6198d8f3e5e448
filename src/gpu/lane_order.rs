//! Activations in lane order: the layout in which the multi-vector GEMVs
//! ([`super::GpuCodedMatrix::gemv_many_lane_order_dispatch`],
//! [`super::GpuQuantizedMatrix::gemv_many_lane_order_dispatch`]) read a block's activations in
//! whole 128-byte lines.
//!
//! Both kernels give lane `l` of a group of 32 the 16 columns `16 u .. 16 u + 15` of a block,
//! `u = 32 b + l`, and each lane loads them as four `vec4<f32>`. In column order lane `l`'s
//! `vec4` c sits at byte `64 u + 16 c`, so each of the group's four loads touches all 16 of
//! the block's 128-byte lines (a quarter of each): 64 L1 wavefronts a block and vector where
//! 16 would carry the same bytes (BENCHMARKS.md issue 5, step 88). In lane order the 16-column
//! pieces go in runs of 32 (fewer in a vector's last run), and within a run all pieces' `vec4`
//! 0 come first, then all `vec4` 1, and so on: piece `u`'s `vec4` c sits at
//! `128 (u / 32) + c nb + u % 32` (in `vec4`, `nb` the run's pieces), so the group's load of
//! `vec4` c reads 512 contiguous bytes.
//!
//! ```
//! let x: Vec<f32> = (0..48).map(|i| i as f32).collect(); // one vector of 48 columns
//! let lanes = ecq::gpu::x_lane_order(&x, 48).unwrap();
//! // three pieces of 16 in one run: each piece's first four columns, then the next four...
//! assert_eq!(&lanes[..12], &[0., 1., 2., 3., 16., 17., 18., 19., 32., 33., 34., 35.]);
//! assert_eq!(ecq::gpu::x_column_order(&lanes, 48).unwrap(), x);
//! ```

use super::{
    grid, vector_pass_dispatch, BufferRange, Dispatch, GpuError, Kernel, PipelineRegistry,
};

/// Pieces of 16 columns a run: a group of 32 lanes, one piece a lane.
const RUN: usize = 32;

/// Where column-order `vec4` `q` of a vector of `pieces` 16-column pieces goes in lane order.
fn lane_index(q: usize, pieces: usize) -> usize {
    let (u, c) = (q / 4, q % 4);
    let run = u / RUN * RUN;
    let nb = RUN.min(pieces - run);
    4 * run + c * nb + u % RUN
}

/// Checks that `values` activations are whole vectors of `cols`, a multiple of 16.
fn check(values: usize, cols: usize) -> Result<(), GpuError> {
    if cols == 0 || !cols.is_multiple_of(16) || !values.is_multiple_of(cols) {
        return Err(GpuError::InvalidInput(format!(
            "lane order needs vectors of a multiple of 16 columns (cols {cols}, {values} values)"
        )));
    }
    Ok(())
}

/// `x` (vectors of `cols` activations one after another, `cols % 16 == 0`) in lane order
/// (module doc); a permutation within each vector.
pub fn x_lane_order(x: &[f32], cols: usize) -> Result<Vec<f32>, GpuError> {
    let mut out = vec![0.0; x.len()];
    x_lane_order_into(x, cols, &mut out)?;
    Ok(out)
}

/// [`x_lane_order`] into `out` (as long as `x`; [`GpuError::InvalidInput`] otherwise).
pub fn x_lane_order_into(x: &[f32], cols: usize, out: &mut [f32]) -> Result<(), GpuError> {
    check(x.len(), cols)?;
    if out.len() != x.len() {
        return Err(GpuError::InvalidInput(format!(
            "lane order: out has {} values, x {}",
            out.len(),
            x.len()
        )));
    }
    let pieces = cols / 16;
    for (src, dst) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        // (whole runs of 32 pieces: piece u's vec4 c goes to 128 run + 32 c + u % 32)
        let whole = pieces / RUN * RUN * 16;
        for (s, d) in src[..whole]
            .chunks_exact(16 * RUN)
            .zip(dst[..whole].chunks_exact_mut(16 * RUN))
        {
            for (u, piece) in s.chunks_exact(16).enumerate() {
                for (c, v) in piece.chunks_exact(4).enumerate() {
                    let i = 4 * (c * RUN + u);
                    d[i..i + 4].copy_from_slice(v);
                }
            }
        }
        for (q, v) in src[whole..].chunks_exact(4).enumerate() {
            let i = 4 * lane_index(whole / 4 + q, pieces);
            dst[i..i + 4].copy_from_slice(v);
        }
    }
    Ok(())
}

/// The inverse of [`x_lane_order`].
pub fn x_column_order(x: &[f32], cols: usize) -> Result<Vec<f32>, GpuError> {
    check(x.len(), cols)?;
    let mut out = vec![0.0; x.len()];
    let pieces = cols / 16;
    for (src, dst) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        for (q, v) in dst.chunks_exact_mut(4).enumerate() {
            let i = 4 * lane_index(q, pieces);
            v.copy_from_slice(&src[i..i + 4]);
        }
    }
    Ok(out)
}

/// The launch permuting `vectors` vectors of `cols` f32 activations in `x` (column order)
/// into lane order in `out` (the same size), as [`x_lane_order`] does on the host, bit for
/// bit. `cols % 16 == 0` ([`GpuError::InvalidInput`], as are buffers too small). One
/// invocation per 16 bytes: a small launch beside the GEMVs that read its output.
pub fn x_lane_order_dispatch(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    vectors: usize,
    cols: usize,
) -> Result<Dispatch, GpuError> {
    x_order_dispatch(device, registry, x.into(), out.into(), vectors, cols, true)
}

/// [`x_lane_order_dispatch`] on ranges of buffers (bound where they start, which must be
/// multiples of the device's storage offset alignment), into lane order (`to_lanes`) or back
/// into column order as [`x_column_order`] does. `x` and `out` must not overlap.
pub fn x_order_dispatch(
    device: &wgpu::Device,
    registry: &PipelineRegistry,
    x: BufferRange<'_>,
    out: BufferRange<'_>,
    vectors: usize,
    cols: usize,
    to_lanes: bool,
) -> Result<Dispatch, GpuError> {
    check(vectors * cols, cols)?;
    let bytes = (vectors * cols * 4) as u64;
    if vectors == 0 {
        return Err(GpuError::InvalidInput("lane order: no vectors".into()));
    }
    x.check(device, "x")?;
    out.check(device, "out")?;
    if x.size() < bytes || out.size() < bytes {
        return Err(GpuError::InvalidInput(format!(
            "lane order: x/out ranges have {}/{} bytes, need {bytes} ({vectors} vectors of \
             {cols})",
            x.size(),
            out.size()
        )));
    }
    let too_large = || GpuError::InvalidInput(format!("{vectors} vectors of {cols} activations"));
    let total = u32::try_from(vectors * cols / 4).map_err(|_| too_large())?;
    let cols4 = u32::try_from(cols / 4).map_err(|_| too_large())?;
    let (gx, gy) = grid(device, total.div_ceil(256).max(1));
    let constants: &[(&'static str, u32)] = if to_lanes { &[] } else { &[("TO_COLUMNS", 1)] };
    let pipeline = registry.get(device, Kernel::XLaneOrder, "main", constants)?;
    Ok(vector_pass_dispatch(
        device,
        pipeline,
        &[cols4, total, gx, 0],
        BufferRange::new(x.buffer(), x.offset(), bytes),
        BufferRange::new(out.buffer(), out.offset(), bytes),
        (gx, gy),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A permutation of every vector, and the inverse undoes it, for runs of 32 pieces and a
    /// last shorter run.
    #[test]
    fn lane_order_is_a_permutation() {
        for cols in [16, 48, 512, 1024, 1040, 4096 + 16 * 7] {
            let x: Vec<f32> = (0..3 * cols).map(|i| i as f32).collect();
            let l = x_lane_order(&x, cols).unwrap();
            let mut seen = vec![false; x.len()];
            for (j, v) in l.iter().enumerate() {
                let i = *v as usize;
                assert_eq!(i / cols, j / cols, "cols {cols}: stays in its vector");
                assert!(!seen[i]);
                seen[i] = true;
            }
            assert_eq!(x_column_order(&l, cols).unwrap(), x, "cols {cols}");
        }
    }

    /// Lane l's vec4 c of a run is the run's column 16 l + 4 c.
    #[test]
    fn lane_order_puts_a_loads_columns_together() {
        let cols = 1024 + 48; // two runs of 32 pieces and one of 3
        let x: Vec<f32> = (0..cols).map(|i| i as f32).collect();
        let l = x_lane_order(&x, cols).unwrap();
        for (run, nb) in [(0, 32), (1, 32), (2, 3)] {
            for c in 0..4 {
                for lane in 0..nb {
                    let at = 4 * (128 * run + c * nb + lane);
                    let col = 512 * run + 16 * lane + 4 * c;
                    assert_eq!(l[at], col as f32);
                    assert_eq!(l[at + 3], (col + 3) as f32);
                }
            }
        }
    }

    /// The `_into` form writes what the allocating one returns, and refuses an output of
    /// another length.
    #[test]
    fn lane_order_into_matches_and_checks_the_output() {
        let cols = 1024 + 48;
        let x: Vec<f32> = (0..2 * cols).map(|i| (i as f32).sin()).collect();
        let mut out = vec![f32::NAN; x.len()];
        x_lane_order_into(&x, cols, &mut out).unwrap();
        assert_eq!(out, x_lane_order(&x, cols).unwrap());
        let mut short = vec![0.0; x.len() - 4];
        assert!(matches!(
            x_lane_order_into(&x, cols, &mut short),
            Err(GpuError::InvalidInput(_))
        ));
    }

    #[test]
    fn lane_order_refuses_other_widths() {
        for (len, cols) in [(24, 24), (32, 0), (40, 16)] {
            let r = x_lane_order(&vec![0.0; len], cols);
            assert!(
                matches!(&r, Err(GpuError::InvalidInput(e)) if e.contains("multiple of 16")),
                "{r:?}"
            );
        }
    }
}
