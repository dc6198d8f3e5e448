//! The buffers a layer call needs (activations in, outputs out, the read back), kept by the
//! [`LinearDevice`] for the next call.
//!
//! Why: a `forward_batch` call of 512 rows at 14336x4096 on an H200 spent ~60-75 ms of host
//! time around ~4 ms of GPU work when every call made its buffers anew: a buffer per launch
//! for the activations and one for the outputs, a read-back buffer, and two fresh host
//! vectors for the outputs (BENCHMARKS.md, issue 5, step 91). Fresh memory costs page faults
//! and the driver's allocation; reused buffers cost neither. The launches of a call share the
//! buffers through ranges ([`crate::gpu::BufferRange`]) at offsets the device can bind; the
//! activations are written straight into the kept staging memory ([`StagingWriter`]), and
//! the host's copies run on the rayon pool.
//!
//! Invariants: a [`CallBuffers`] serves one submission at a time (the pool hands each its
//! own: a call with two submissions in flight, [`pipelined`], holds two); the read-back
//! buffer is unmapped whenever it is in the pool (a failed or abandoned read drops it); an
//! upload recorded but never submitted drops the staging belt with it; the kept buffers only
//! grow, up to the largest submission's needs, until [`LinearDevice::release_call_buffers`].

use super::device::{LinearDevice, MapReceiver};
use crate::gpu::{BufferRange, GpuError, RowCopy};

/// Buffers of at most this many bytes are rounded up to a power of two, larger ones to a
/// multiple of it, so that calls of slightly different sizes reuse them.
const ROUND_BYTES: u64 = 1 << 20;

/// The kept buffers of one call (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct CallBuffers {
    /// Activations (`STORAGE | COPY_DST`).
    x: Option<wgpu::Buffer>,
    /// Outputs (`STORAGE | COPY_DST | COPY_SRC`).
    y: Option<wgpu::Buffer>,
    /// Launch outputs copied into `y` where they cannot be written in place
    /// (`STORAGE | COPY_SRC`).
    parts: Option<wgpu::Buffer>,
    /// Activations a launch prepares for another (`STORAGE`).
    aux: Option<wgpu::Buffer>,
    /// A coded layer's weights decoded for a call of many rows (`STORAGE`; see
    /// [`super::LinearOptions::decode_first_min_rows`]).
    decoded: Option<wgpu::Buffer>,
    /// The read back (`MAP_READ | COPY_DST`).
    readback: Option<wgpu::Buffer>,
    /// The upload's mapped staging memory and its chunk size: `Queue::write_buffer` makes new
    /// staging memory every time, which cost milliseconds a call at 29 MB.
    belt: Option<(wgpu::util::StagingBelt, u64)>,
}

impl CallBuffers {
    /// GPU bytes held.
    pub(crate) fn gpu_bytes(&self) -> u64 {
        let staging = self.belt.as_ref().map_or(0, |(_, chunk)| *chunk);
        [
            &self.x,
            &self.y,
            &self.parts,
            &self.aux,
            &self.decoded,
            &self.readback,
        ]
        .iter()
        .filter_map(|b| b.as_ref().map(|b| b.size()))
        .sum::<u64>()
            + staging
    }
}

/// A [`CallBuffers`] taken from the device's pool for one call, given back when dropped.
pub(crate) struct CallScratch<'a> {
    dev: &'a LinearDevice,
    bufs: Option<CallBuffers>,
    /// An upload was recorded and its encoder not yet submitted: if the call ends so (an
    /// error), the belt's chunks would never come back, so the belt is dropped.
    pending_upload: bool,
}

/// Writes an upload front to back into the staging memory ([`CallScratch::upload_with`]).
pub(crate) struct StagingWriter<'a> {
    rest: wgpu::WriteOnly<'a, [u8]>,
    overflow: bool,
}

// SAFETY: a writer holds only a `WriteOnly<'a, [u8]>` (an exclusive view of mapped memory,
// valid for 'a, which writers split off never share) and a flag. wgpu-types 30 implements
// `Send` for `WriteOnly<'_, T>` with `T: Send` and an implicit `T: Sized`, so not for the
// slice `[u8]`; such a view is `&'a mut [u8]` in all but name (no reads, no atomics), and
// `&mut [u8]` is `Send`. `fill_rows` moves writers of disjoint rows to the rayon pool.
unsafe impl Send for StagingWriter<'_> {}

impl<'a> StagingWriter<'a> {
    /// The next `n` values as a writer of their own, to fill apart (on another thread, see
    /// [`fill_rows`]) and [`Self::finish`]; an error past the end.
    pub(crate) fn split(&mut self, n: usize) -> Result<StagingWriter<'a>, GpuError> {
        match self.rest.split_off(..n * 4) {
            Some(rest) => Ok(StagingWriter {
                rest,
                overflow: false,
            }),
            None => {
                self.overflow = true;
                Err(GpuError::InvalidInput(
                    "activation upload: a part split off past its end".into(),
                ))
            }
        }
    }

    /// Ends a writer split off: zeros what is left unwritten; an error if anything was
    /// written past its end.
    pub(crate) fn finish(mut self) -> Result<(), GpuError> {
        self.rest.fill(0);
        if self.overflow {
            return Err(GpuError::InvalidInput(
                "activation upload: a part written past its end".into(),
            ));
        }
        Ok(())
    }

    /// Writes `values` next (nothing, and an error for the upload, past its end).
    pub(crate) fn put(&mut self, values: &[f32]) {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        match self.rest.split_off(..bytes.len()) {
            Some(mut head) => head.copy_from_slice(bytes),
            None => self.overflow = true,
        }
    }

    /// Writes `row` (a multiple of 16 values) next in lane order
    /// ([`crate::gpu::x_lane_order`]), permuted a run of 512 values at a time so that the
    /// staging memory is still written front to back.
    pub(crate) fn put_lane_order(&mut self, row: &[f32]) -> Result<(), GpuError> {
        let mut run = [0.0f32; 512];
        for src in row.chunks(512) {
            let dst = &mut run[..src.len()];
            crate::gpu::x_lane_order_into(src, src.len(), dst)?;
            self.put(dst);
        }
        Ok(())
    }

    /// Passes over the next `n` values, leaving whatever the staging memory held there: for
    /// gaps no launch reads.
    pub(crate) fn skip(&mut self, n: usize) {
        if self.rest.split_off(..n * 4).is_none() {
            self.overflow = true;
        }
    }
}

/// Fills the `rows` writers split off an upload, `fill(i, writer)` for row `i`, on the rayon
/// pool in runs of at least 256 KiB (one run, on this thread, for a small upload): writing
/// 29 MB of activations took 5-9 ms on one thread of an H200's host (BENCHMARKS.md, issue 5,
/// step 91).
pub(crate) fn fill_rows(
    rows: Vec<StagingWriter<'_>>,
    row_values: usize,
    fill: impl Fn(usize, &mut StagingWriter<'_>) -> Result<(), GpuError> + Sync,
) -> Result<(), GpuError> {
    use rayon::prelude::*;
    let per_task = (PARALLEL_BYTES / (row_values * 4).max(1)).max(1);
    rows.into_par_iter()
        .enumerate()
        .with_min_len(per_task)
        .try_for_each(|(i, mut w)| {
            fill(i, &mut w)?;
            w.finish()
        })
}

/// Where the GEMV launches of one submission of `m` rows, `per` rows a launch, read their
/// activations and write their outputs in the kept buffers. Launch `j` (rows `i = j * per`
/// on, `n` of them) reads its rows, `row_values` apart, from activation slot `j` (slots at
/// offsets the device can bind; the last launch's rows only are uploaded). Its outputs go in
/// place in the outputs buffer (`out_rows` a row) where the layer is one band and the
/// launches' offsets can be bound; otherwise each band's outputs go to a slot of a parts
/// buffer, copied into place after the pass (a copy a launch for one band, a copy a row and
/// band for several, whose launches write their band's rows only).
pub(crate) struct LaunchLayout {
    m: usize,
    per: usize,
    row_values: usize,
    /// Bytes from one launch's activation slot to the next.
    x_slot: u64,
    /// Bytes of one row of outputs.
    row_bytes: u64,
    /// The bands' first output and outputs (one band `(0, out_rows)` for a whole layer).
    bands: Vec<(usize, usize)>,
    /// Each band's place in a launch's parts slot, and the slot's bytes.
    part_at: Vec<u64>,
    part_stride: u64,
    in_place: bool,
}

impl LaunchLayout {
    /// The layout for `m` rows of `row_values` activations, `per` a launch, `out_rows` outputs
    /// a row in `bands`, on a device binding storage at multiples of `align` bytes.
    pub(crate) fn new(
        m: usize,
        per: usize,
        row_values: usize,
        out_rows: usize,
        bands: Vec<(usize, usize)>,
        align: u64,
    ) -> Self {
        let per = per.max(1);
        let row_bytes = (out_rows * 4) as u64;
        let mut part_at = Vec::with_capacity(bands.len());
        let mut part_stride = 0u64;
        for &(_, rows) in &bands {
            part_at.push(part_stride);
            part_stride += ((per * rows * 4) as u64).next_multiple_of(align);
        }
        let in_place =
            bands.len() == 1 && (m <= per || (per as u64 * row_bytes).is_multiple_of(align));
        LaunchLayout {
            m,
            per,
            row_values,
            x_slot: ((per * row_values * 4) as u64).next_multiple_of(align),
            row_bytes,
            bands,
            part_at,
            part_stride,
            in_place,
        }
    }

    /// The launches: (index `j`, first row `i`, rows `n`).
    pub(crate) fn launches(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.m)
            .step_by(self.per)
            .enumerate()
            .map(|(j, i)| (j, i, self.per.min(self.m - i)))
    }

    /// Bytes of the activation slots of every launch (what the device limit is checked
    /// against).
    pub(crate) fn x_slots_bytes(&self) -> u64 {
        self.x_slot * self.m.div_ceil(self.per) as u64
    }

    /// Values the upload holds: whole slots for every launch but the last, that one's rows
    /// only (a token's GEMV uploads one row, not a slot of 16).
    pub(crate) fn x_values(&self) -> usize {
        let last = (self.m - 1) / self.per;
        last * (self.x_slot / 4) as usize + (self.m - last * self.per) * self.row_values
    }

    /// Writes the `m` rows into their slots, `fill(row, writer)` a row on the rayon pool
    /// ([`fill_rows`]), leaving the gaps between slots unwritten: no launch reads them.
    pub(crate) fn write_rows(
        &self,
        w: &mut StagingWriter<'_>,
        fill: impl Fn(usize, &mut StagingWriter<'_>) -> Result<(), GpuError> + Sync,
    ) -> Result<(), GpuError> {
        let mut rows = Vec::with_capacity(self.m);
        for (_, i, n) in self.launches() {
            for _ in 0..n {
                rows.push(w.split(self.row_values)?);
            }
            if i + n < self.m {
                w.skip((self.x_slot / 4) as usize - n * self.row_values);
            }
        }
        fill_rows(rows, self.row_values, fill)
    }

    /// Launch `j`'s activations (`n` rows) in `x`.
    pub(crate) fn x_range<'b>(&self, x: &'b wgpu::Buffer, j: usize, n: usize) -> BufferRange<'b> {
        BufferRange::new(x, j as u64 * self.x_slot, (n * self.row_values * 4) as u64)
    }

    /// Bytes of the parts buffer, where the outputs cannot be written in place.
    pub(crate) fn parts_bytes(&self) -> Option<u64> {
        (!self.in_place).then(|| self.part_stride * self.m.div_ceil(self.per) as u64)
    }

    /// Where launch `(j, i, n)` writes band `b`'s outputs: in `y` (the call's outputs from its
    /// start), or in `parts` where [`Self::parts_bytes`] asked for one.
    pub(crate) fn y_range<'b>(
        &self,
        y: BufferRange<'b>,
        parts: Option<&'b wgpu::Buffer>,
        (j, i, n): (usize, usize, usize),
        b: usize,
    ) -> BufferRange<'b> {
        match parts {
            Some(p) if !self.in_place => BufferRange::new(
                p,
                j as u64 * self.part_stride + self.part_at[b],
                (n * self.bands[b].1 * 4) as u64,
            ),
            _ => BufferRange::new(
                y.buffer(),
                y.offset() + i as u64 * self.row_bytes,
                n as u64 * self.row_bytes,
            ),
        }
    }

    /// The moves of the parts into their places in `y` (offsets from `y`'s start; none where
    /// the outputs were written in place): a launch's outputs for one band, a launch's rows of
    /// a band's outputs for several.
    pub(crate) fn moves(&self) -> Vec<RowCopy> {
        if self.in_place {
            return Vec::new();
        }
        let mut moves = Vec::new();
        for (j, i, n) in self.launches() {
            for (b, &(row0, rows)) in self.bands.iter().enumerate() {
                let from = j as u64 * self.part_stride + self.part_at[b];
                let to = i as u64 * self.row_bytes + (row0 * 4) as u64;
                if self.bands.len() == 1 {
                    moves.push(RowCopy::contiguous(from, to, n as u64 * self.row_bytes));
                    continue;
                }
                let band_bytes = (rows * 4) as u64;
                moves.push(RowCopy {
                    src_at: from,
                    src_stride: band_bytes,
                    dst_at: to,
                    dst_stride: self.row_bytes,
                    width: band_bytes,
                    fill: band_bytes,
                    rows: n as u64,
                });
            }
        }
        moves
    }

    /// Records the copies of the parts into their places in `y` ([`Self::moves`], a copy a
    /// row).
    pub(crate) fn record_copies(
        &self,
        enc: &mut wgpu::CommandEncoder,
        parts: Option<&wgpu::Buffer>,
        y: BufferRange<'_>,
    ) {
        let Some(p) = parts else {
            return;
        };
        let (y, y0) = (y.buffer(), y.offset());
        for c in self.moves() {
            for r in 0..c.rows {
                let (from, to) = (
                    c.src_at + r * c.src_stride,
                    y0 + c.dst_at + r * c.dst_stride,
                );
                enc.copy_buffer_to_buffer(p, from, y, to, c.width);
            }
        }
    }
}

/// Copies `src` into `dst` (the same length) on the rayon pool in pieces of
/// [`PARALLEL_BYTES`]: a single thread read 29 MB back from mapped memory in 4.3-5.0 ms on an
/// H200's host.
fn copy_parallel(dst: &mut [u8], src: &[u8]) {
    use rayon::prelude::*;
    dst.par_chunks_mut(PARALLEL_BYTES)
        .zip(src.par_chunks(PARALLEL_BYTES))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// The piece of host copies worth a task of its own.
const PARALLEL_BYTES: usize = 256 << 10;

/// The size a kept buffer of at least `bytes` gets (see [`ROUND_BYTES`]), within `max`.
fn rounded(bytes: u64, max: u64) -> u64 {
    let r = if bytes <= ROUND_BYTES {
        bytes.max(256).next_power_of_two()
    } else {
        bytes.div_ceil(ROUND_BYTES) * ROUND_BYTES
    };
    r.min(max).max(bytes)
}

impl<'a> CallScratch<'a> {
    pub(crate) fn new(dev: &'a LinearDevice, bufs: CallBuffers) -> Self {
        CallScratch {
            dev,
            bufs: Some(bufs),
            pending_upload: false,
        }
    }

    fn bufs(&mut self) -> &mut CallBuffers {
        self.bufs.as_mut().expect("taken only on drop")
    }

    /// The buffer in `slot` if it holds at least `bytes`, else a new one (kept in `slot`).
    pub(crate) fn grow(
        dev: &LinearDevice,
        slot: &mut Option<wgpu::Buffer>,
        label: &str,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        if let Some(b) = slot.as_ref().filter(|b| b.size() >= bytes) {
            return b.clone();
        }
        // (drop the old one first: the new one may be large)
        *slot = None;
        let size = rounded(bytes.max(4).div_ceil(16) * 16, dev.max_buffer_bytes());
        let b = dev.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        *slot = Some(b.clone());
        b
    }

    /// The outputs buffer, at least `bytes`.
    pub(crate) fn y(&mut self, bytes: u64) -> wgpu::Buffer {
        let dev = self.dev;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        Self::grow(dev, &mut self.bufs().y, "ecq call outputs", bytes, usage)
    }

    /// The buffer for launch outputs copied into place, at least `bytes`.
    pub(crate) fn parts(&mut self, bytes: u64) -> wgpu::Buffer {
        let dev = self.dev;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        Self::grow(dev, &mut self.bufs().parts, "ecq call parts", bytes, usage)
    }

    /// The buffer for activations a launch prepares, at least `bytes`.
    pub(crate) fn aux(&mut self, bytes: u64) -> wgpu::Buffer {
        let dev = self.dev;
        let usage = wgpu::BufferUsages::STORAGE;
        Self::grow(dev, &mut self.bufs().aux, "ecq call aux", bytes, usage)
    }

    /// The buffer for a coded layer's decoded weights, at least `bytes`.
    pub(crate) fn decoded(&mut self, bytes: u64) -> wgpu::Buffer {
        let dev = self.dev;
        let usage = wgpu::BufferUsages::STORAGE;
        Self::grow(
            dev,
            &mut self.bufs().decoded,
            "ecq call decoded weights",
            bytes,
            usage,
        )
    }

    /// The activations buffer holding `values` f32 that `fill` writes in order, straight into
    /// the kept staging memory (which may be write-combining: written once, front to back,
    /// never read); the copy from there is recorded into `enc`, which
    /// [`Self::submit_read`] must submit.
    /// Whatever `fill` leaves unwritten at the end is zero; writing past `values` is an error.
    pub(crate) fn upload_with(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        values: usize,
        fill: impl FnOnce(&mut StagingWriter<'_>) -> Result<(), GpuError>,
    ) -> Result<wgpu::Buffer, GpuError> {
        let dev = self.dev;
        let bytes = (values * 4) as u64;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let buf = Self::grow(
            dev,
            &mut self.bufs().x,
            "ecq call activations",
            bytes,
            usage,
        );
        let Some(size) = wgpu::BufferSize::new(bytes) else {
            return Ok(buf);
        };
        let bufs = self.bufs();
        // (a belt whose chunks are smaller than this upload is replaced: one chunk an upload,
        // reused from call to call)
        if bufs.belt.as_ref().is_none_or(|(_, chunk)| *chunk < bytes) {
            let chunk = rounded(bytes, u64::MAX);
            bufs.belt = Some((
                wgpu::util::StagingBelt::new(dev.device().clone(), chunk),
                chunk,
            ));
        }
        let (belt, _) = bufs.belt.as_mut().expect("made above");
        let mut view = belt.write_buffer(enc, &buf, 0, size);
        self.pending_upload = true;
        let mut w = StagingWriter {
            rest: view.slice(..),
            overflow: false,
        };
        let filled = fill(&mut w);
        w.rest.fill(0);
        if w.overflow {
            return Err(GpuError::InvalidInput(format!(
                "activation upload: written past its {values} values"
            )));
        }
        filled.map(|()| buf)
    }

    /// [`Self::upload_with`] of the rows of `k` values in `x`, each zero-padded to `k4` (the
    /// batched kernels' and the one-row GEMV's activations), the rows on the rayon pool.
    pub(crate) fn upload_padded_rows(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        x: &[f32],
        (k, k4): (usize, usize),
    ) -> Result<wgpu::Buffer, GpuError> {
        let rows = x.len() / k.max(1);
        self.upload_with(enc, rows * k4, |w| {
            let parts = (0..rows).map(|_| w.split(k4)).collect::<Result<_, _>>()?;
            fill_rows(parts, k4, |r, w| {
                w.put(&x[r * k..(r + 1) * k]);
                Ok(())
            })
        })
    }

    /// Records the copy of `y_values` f32 from the start of `y`, then of the listed
    /// `(buffer, bytes)` regions, into the read-back buffer and submits `enc`: the read back is
    /// under way when this returns, and [`PendingRead::finish_into`] waits for it (for this
    /// submission only, so that the caller can record and submit the next one meanwhile).
    pub(crate) fn submit_read(
        mut self,
        mut enc: wgpu::CommandEncoder,
        y: &wgpu::Buffer,
        y_values: usize,
        regions: &[(&wgpu::Buffer, u64)],
    ) -> Result<PendingRead<'a>, GpuError> {
        let dev = self.dev;
        let y_bytes = (y_values * 4) as u64;
        let sizes: Vec<(u64, u64)> = regions.iter().map(|r| (r.1, r.1.div_ceil(4) * 4)).collect();
        let total = y_bytes + sizes.iter().map(|s| s.1).sum::<u64>();
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let readback = Self::grow(dev, &mut self.bufs().readback, "ecq readback", total, usage);
        // (back in the pool only once it is unmapped again)
        self.bufs().readback = None;
        if y_bytes > 0 {
            enc.copy_buffer_to_buffer(y, 0, &readback, 0, y_bytes);
        }
        let mut off = y_bytes;
        for (&(b, _), &(_, s)) in regions.iter().zip(&sizes) {
            if s > 0 {
                enc.copy_buffer_to_buffer(b, 0, &readback, off, s);
            }
            off += s;
        }
        // (the belt's chunks are unmapped for the copies, and mapped again for the next call
        // once the submission is done)
        let mut belt = self.bufs().belt.take();
        if let Some((b, _)) = belt.as_mut() {
            b.finish();
        }
        let submitted = dev.submit_mapped(enc, &readback, total, || {
            if let Some((b, _)) = belt.as_mut() {
                b.recall();
            }
        });
        self.bufs().belt = belt;
        self.pending_upload = false;
        let (submission, mapped) = submitted?;
        Ok(PendingRead {
            scratch: self,
            readback,
            submission,
            mapped,
            y_bytes,
            sizes,
            total,
        })
    }
}

/// Runs `m` rows as submissions of `step` rows, two in flight: `submit(start, rows)`
/// records and submits a run, and run `s`'s read back is waited for and copied out
/// (`finish(pending, start, rows)`) only once run `s + 1` is submitted, so that the host's
/// uploads and copies overlap the GPU's work. Each run in flight holds a set of the
/// device's kept buffers.
pub(crate) fn pipelined<P, E>(
    m: usize,
    step: usize,
    mut submit: impl FnMut(usize, usize) -> Result<P, E>,
    mut finish: impl FnMut(P, usize, usize) -> Result<(), E>,
) -> Result<(), E> {
    let mut in_flight: Option<(P, usize, usize)> = None;
    for start in (0..m).step_by(step.max(1)) {
        let rows = step.max(1).min(m - start);
        let pending = submit(start, rows)?;
        if let Some((p, s, r)) = in_flight.replace((pending, start, rows)) {
            finish(p, s, r)?;
        }
    }
    match in_flight {
        Some((p, s, r)) => finish(p, s, r),
        None => Ok(()),
    }
}

/// A submitted call whose read back is on its way ([`CallScratch::submit_read`]). Dropped
/// unfinished, it gives its buffers back without the read back (a new one is made later).
pub(crate) struct PendingRead<'a> {
    scratch: CallScratch<'a>,
    readback: wgpu::Buffer,
    submission: wgpu::SubmissionIndex,
    mapped: MapReceiver,
    y_bytes: u64,
    /// Each region's bytes and its size in the read back.
    sizes: Vec<(u64, u64)>,
    total: u64,
}

impl PendingRead<'_> {
    /// Waits for the submission, copies the outputs into `out` (as many as were read back)
    /// and each region into a host vector of its own, and gives the buffers back.
    pub(crate) fn finish_into(mut self, out: &mut [f32]) -> Result<Vec<Vec<u8>>, GpuError> {
        let dev = self.scratch.dev;
        dev.wait_mapped(self.submission.clone(), self.mapped)?;
        if out.len() * 4 != self.y_bytes as usize {
            return Err(GpuError::InvalidInput(format!(
                "read back of {} bytes into {} outputs",
                self.y_bytes,
                out.len()
            )));
        }
        let view = self
            .readback
            .get_mapped_range(..self.total)
            .map_err(|e| GpuError::Map(e.to_string()))?;
        copy_parallel(
            bytemuck::cast_slice_mut::<f32, u8>(out),
            &view[..self.y_bytes as usize],
        );
        let mut parts = Vec::with_capacity(self.sizes.len());
        let mut off = self.y_bytes as usize;
        for &(n, s) in &self.sizes {
            parts.push(view[off..off + n as usize].to_vec());
            off += s as usize;
        }
        drop(view);
        self.readback.unmap();
        self.scratch.bufs().readback = Some(self.readback);
        Ok(parts)
    }
}

impl Drop for CallScratch<'_> {
    fn drop(&mut self) {
        if let Some(mut bufs) = self.bufs.take() {
            if self.pending_upload {
                bufs.belt = None;
            }
            self.dev.give_back_call_buffers(bufs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{rounded, StagingWriter, ROUND_BYTES};

    /// The writer fills its memory front to back, leaves what it skips as it was, and marks
    /// (without writing) what would go past the end.
    #[test]
    fn staging_writer_writes_in_order_and_stops_at_the_end() {
        let mut mem = [0xAAu8; 20];
        let mut w = StagingWriter {
            rest: wgpu::WriteOnly::from_mut(mem.as_mut_slice()),
            overflow: false,
        };
        w.put(&[1.0, 2.0]);
        w.skip(1);
        w.put(&[3.0]);
        assert!(!w.overflow);
        w.put(&[4.0, 5.0]);
        assert!(w.overflow);
        w.overflow = false;
        w.skip(2);
        assert!(w.overflow);
        w.rest.fill(0);
        let got: Vec<u32> = mem
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let f = |v: f32| v.to_bits();
        assert_eq!(got, [f(1.0), f(2.0), 0xAAAA_AAAA, f(3.0), 0]);
    }

    /// Runs cover the rows once, in order, and each is finished only after the next one is
    /// submitted (two in flight); an error stops the runs.
    #[test]
    fn pipelined_runs_keep_two_in_flight() {
        let mut log = Vec::new();
        let log_cell = std::cell::RefCell::new(&mut log);
        super::pipelined::<_, ()>(
            300,
            128,
            |start, rows| {
                log_cell.borrow_mut().push(format!("submit {start}+{rows}"));
                Ok(start)
            },
            |p, start, rows| {
                assert_eq!(p, start);
                log_cell.borrow_mut().push(format!("finish {start}+{rows}"));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            log,
            [
                "submit 0+128",
                "submit 128+128",
                "finish 0+128",
                "submit 256+44",
                "finish 128+128",
                "finish 256+44"
            ]
        );
        let mut finished = 0;
        let r = super::pipelined(
            300,
            100,
            |start, _| if start == 200 { Err("full") } else { Ok(()) },
            |_, _, _| {
                finished += 1;
                Ok(())
            },
        );
        assert_eq!((r, finished), (Err("full"), 1));
        super::pipelined::<(), ()>(0, 128, |_, _| panic!("no rows"), |_, _, _| Ok(())).unwrap();
    }

    /// Launches cover the rows in runs of `per`; the upload holds whole slots but the last
    /// launch's rows only; outputs go in place only for one band whose launch offsets the
    /// device can bind (or a single launch), else to parts slots at bindable offsets.
    #[test]
    fn launch_layouts() {
        use super::LaunchLayout;
        // 20 rows of 4096, 16 a launch, 4096 outputs, one band: in place
        let l = LaunchLayout::new(20, 16, 4096, 4096, vec![(0, 4096)], 256);
        assert_eq!(l.launches().collect::<Vec<_>>(), [(0, 0, 16), (1, 16, 4)]);
        assert_eq!(l.x_values(), 16 * 4096 + 4 * 4096);
        assert_eq!(l.x_slots_bytes(), 2 * 16 * 4096 * 4);
        assert_eq!(l.parts_bytes(), None);
        // 37 outputs a row: launch offsets 16 * 37 * 4 bytes apart cannot be bound
        let l = LaunchLayout::new(20, 16, 100, 37, vec![(0, 37)], 256);
        assert_eq!(l.x_values(), 16 * 100 + 4 * 100);
        assert_eq!(l.parts_bytes(), Some(2 * 2560));
        // ... unless there is one launch
        let l = LaunchLayout::new(9, 16, 100, 37, vec![(0, 37)], 256);
        assert_eq!((l.x_values(), l.parts_bytes()), (900, None));
        // bands always go through parts, each band's slot bindable
        let l = LaunchLayout::new(3, 1, 512, 50, vec![(0, 20), (20, 30)], 256);
        assert_eq!(l.x_values(), 2 * 512 + 512);
        assert_eq!(l.parts_bytes(), Some(3 * (256 + 256)));
    }

    /// Parts split off are filled apart, on the rayon pool: each row lands in its place,
    /// what a part leaves unwritten is zero, and writing or splitting past an end is an error.
    #[test]
    fn split_parts_fill_their_own_rows() {
        let mut mem = [0xAAu8; 4 * 12];
        let mut w = StagingWriter {
            rest: wgpu::WriteOnly::from_mut(mem.as_mut_slice()),
            overflow: false,
        };
        let rows: Vec<_> = (0..3).map(|_| w.split(3).unwrap()).collect();
        w.put(&[9.0]);
        super::fill_rows(rows, 3, |i, w| {
            w.put(&vec![i as f32 + 1.0; i + 1]);
            Ok(())
        })
        .unwrap();
        assert!(w.split(3).is_err() && w.overflow);
        w.rest.fill(0);
        let got: Vec<f32> = mem
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got, [1., 0., 0., 2., 2., 0., 3., 3., 3., 9., 0., 0.]);
        let mut mem = [0u8; 8];
        let mut w = StagingWriter {
            rest: wgpu::WriteOnly::from_mut(mem.as_mut_slice()),
            overflow: false,
        };
        let part = w.split(1).unwrap();
        let err = super::fill_rows(vec![part], 1, |_, w| {
            w.put(&[1.0, 2.0]);
            Ok(())
        });
        assert!(err.is_err());
    }

    /// Kept buffers hold what was asked, are rounded so that nearby sizes share them, and
    /// stay within the device limit unless the request itself exceeds it.
    #[test]
    fn kept_sizes_round_up_within_the_limit() {
        assert_eq!(rounded(1, u64::MAX), 256);
        assert_eq!(rounded(300, u64::MAX), 512);
        assert_eq!(rounded(ROUND_BYTES, u64::MAX), ROUND_BYTES);
        assert_eq!(rounded(ROUND_BYTES + 1, u64::MAX), 2 * ROUND_BYTES);
        assert_eq!(rounded(29_360_128 + 4, u64::MAX), 29 * ROUND_BYTES);
        assert_eq!(
            rounded(3 * ROUND_BYTES + 5, 3 * ROUND_BYTES + 100),
            3 * ROUND_BYTES + 100
        );
        assert_eq!(rounded(500, 400), 500);
        for b in (1..5000u64)
            .step_by(37)
            .chain([1 << 24, (1 << 24) + 3, 1 << 30])
        {
            let r = rounded(b, 1 << 29);
            assert!(r >= b && (r <= 1 << 29 || r == b), "{b} -> {r}");
        }
    }
}
