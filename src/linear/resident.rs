//! Layers whose activations and outputs stay on the GPU ([`GpuLinear`]): an engine's way to
//! chain layers without a host round trip.
//!
//! [`Linear::forward_batch`] uploads host activations, runs the launches and reads the outputs
//! back: at 512 tokens a Llama-3-8B layer's seven calls moved ~165 MB across PCIe and waited
//! seven times, 2.2-2.9x the launches' GPU time (BENCHMARKS.md, issue 5, step 91).
//! [`GpuLinear::record_forward`] records the same launches into the caller's command encoder
//! on activations already on the GPU, writing the outputs (bias included) into a range of the
//! caller's buffer. It picks the same kernels as `forward_batch` for the same row count, so
//! its outputs are `forward_batch`'s bit for bit.
//!
//! What the launches need that the caller's buffers may not give is prepared on the GPU, in
//! buffers the [`LinearDevice`] keeps ([`LinearDevice::release_call_buffers`] drops them too):
//! * activations in the other order ([`ActivationOrder`]): one permutation launch for all rows,
//!   where launches of several vectors read lane order (1.7-2.2x faster on an H200 than column
//!   order, step 88) or the cooperative and batched launches column order. One-vector GEMVs
//!   read either order (the same bits), so a token's calls need no permutation: in a token's
//!   224 launches one took ~13 µs on an H200, more than lane order saves such a GEMV (step 93);
//! * launches whose rows start at offsets the device cannot bind, or rows the batched kernels
//!   read zero-padded to a multiple of 4: moved into aligned slots;
//! * outputs of launches at offsets the device cannot bind, or of layers in bands: written to a
//!   parts buffer and moved into place, as `forward_batch` copies them.
//!
//! The moves are launches too (`wgsl/copy_rows.wgsl`), so a call is nothing but launches in
//! the caller's compute pass ([`GpuLinear::record_forward_in`]): a forward's calls can share one
//! pass, where a pass a call cost ~8 µs a call on an H200 (BENCHMARKS.md, issue 5, step 93).
//!
//! [`GpuLinear::prepare_forward`] makes a call's launches once, to record as often as the
//! caller likes ([`PreparedForward`]): an engine that reuses its activation buffers saves
//! the bind groups and parameter buffers a call makes, most of its host time (BENCHMARKS.md,
//! issue 5, step 94).
//!
//! Corrupt coded streams set flags on the GPU as in every call; a recorded call cannot return
//! them, so they collect until [`GpuLinear::check_recorded`] reads and clears them.

use std::sync::Arc;

use super::call_buffers::{CallScratch, LaunchLayout};
use super::device::LinearDevice;
use super::{Linear, LinearError};
use crate::gpu::{
    add_bias_dispatch, copy_rows_dispatch, x_order_dispatch, BufferRange, Dispatch, GpuError,
    RowCopy,
};

/// The order of an activation row's values in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationOrder {
    /// Column order: value `c` of a row at index `c`.
    Columns,
    /// Lane order ([`crate::gpu::x_lane_order`]): what the GEMV launches of layers with
    /// [`super::EntropyCodedLinear::lane_order`] (and the plain layer's 4-bit GEMVs) read.
    /// An engine whose preceding operation writes it saves the permutation launch (2.1-2.6 µs
    /// on an H200, step 88). Needs `in_features % 16 == 0`.
    Lanes,
}

/// A linear layer resident on a [`LinearDevice`] that records its work into a command
/// encoder on activations and outputs in GPU buffers (module doc).
///
/// ```no_run
/// use ecq::linear::{ActivationOrder, EntropyCodedModel, GpuLinear, Linear, LinearDevice};
///
/// let dev = LinearDevice::new()?;
/// let model = EntropyCodedModel::open(&dev, "coded-model-dir")?;
/// let (up, down) = (model.layer("mlp.up_proj")?, model.layer("mlp.down_proj")?);
/// let m = 8; // tokens
/// let (x, h, y) = (
///     dev.activation_buffer(m * up.in_features()),
///     dev.activation_buffer(m * up.out_features()),
///     dev.activation_buffer(m * down.out_features()),
/// );
/// // ... x written by the engine ...
/// let mut enc = dev.device().create_command_encoder(&Default::default());
/// {
///     // (a forward's calls in one pass; `record_forward` makes a pass of its own)
///     let mut pass = enc.begin_compute_pass(&Default::default());
///     let cols = ActivationOrder::Columns;
///     up.record_forward_in(&mut pass, (&x).into(), cols, m, (&h).into())?;
///     // (an activation function on `h` would go here)
///     down.record_forward_in(&mut pass, (&h).into(), cols, m, (&y).into())?;
/// }
/// dev.queue().submit([enc.finish()]);
/// up.check_recorded()?; // waits; reports a corrupt stream met since the last check
/// down.check_recorded()?;
/// let out: Vec<f32> = dev.read_f32((&y).into())?; // m rows of down's outputs
/// assert_eq!(out.len(), m * down.out_features());
///
/// // the same calls made into launches once, recorded every step on what `x` then holds
/// let cols = ActivationOrder::Columns;
/// let calls = [
///     up.prepare_forward((&x).into(), cols, m, (&h).into())?,
///     down.prepare_forward((&h).into(), cols, m, (&y).into())?,
/// ];
/// for _step in 0..3 {
///     // ... x written by the engine ...
///     let mut enc = dev.device().create_command_encoder(&Default::default());
///     {
///         let mut pass = enc.begin_compute_pass(&Default::default());
///         for call in &calls {
///             call.record_in(&mut pass);
///         }
///     }
///     dev.queue().submit([enc.finish()]);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait GpuLinear: Linear {
    /// The device the layer lives on: `x` and `y` must be its buffers.
    fn linear_device(&self) -> &Arc<LinearDevice>;

    /// Makes the launches of `Y = X W^T + bias` for `m` rows, to record into compute passes
    /// as often as the caller likes ([`PreparedForward::record_in`]): `x` holds `m` rows of
    /// `in_features` f32 in `order` from its start, `y` gets `m` rows of `out_features` f32
    /// from its start. Both ranges start at multiples of the device's storage offset
    /// alignment; both buffers need `STORAGE` usage, and the ranges must not overlap (in one
    /// buffer the activations are moved first: a launch binds a buffer either read-only or
    /// writable). The launches read whatever `x` holds when they run, so an engine that
    /// reuses its activation buffers prepares each call once and records it every token,
    /// without the bind groups and parameter buffers a call makes (BENCHMARKS.md, issue 5,
    /// step 94). The launches hold `x`'s and `y`'s buffers, and the buffers the device keeps
    /// for recorded calls as they were when prepared, until dropped. Every recording's
    /// outputs are [`Linear::forward_batch`]'s bit for bit.
    fn prepare_forward(
        &self,
        x: BufferRange<'_>,
        order: ActivationOrder,
        m: usize,
        y: BufferRange<'_>,
    ) -> Result<PreparedForward, LinearError>;

    /// Records `Y = X W^T + bias` for `m` rows into `pass`: [`Self::prepare_forward`]'s
    /// launches, recorded once. Everything the call does is launches in `pass`, so the calls
    /// of a forward can share one pass: a pass a call cost ~8 µs a call on an H200
    /// (BENCHMARKS.md, issue 5, step 93). Launches that read what an earlier one wrote are
    /// ordered by wgpu. Nothing runs until the caller submits.
    fn record_forward_in(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        x: BufferRange<'_>,
        order: ActivationOrder,
        m: usize,
        y: BufferRange<'_>,
    ) -> Result<(), LinearError> {
        self.prepare_forward(x, order, m, y)?.record_in(pass);
        Ok(())
    }

    /// [`Self::record_forward_in`] in a compute pass of its own in `enc`.
    fn record_forward(
        &self,
        enc: &mut wgpu::CommandEncoder,
        x: BufferRange<'_>,
        order: ActivationOrder,
        m: usize,
        y: BufferRange<'_>,
    ) -> Result<(), LinearError> {
        self.prepare_forward(x, order, m, y)?.record(enc);
        Ok(())
    }

    /// Waits for the work submitted so far and reports a corrupt coded stream that any
    /// recorded call met since the last check ([`crate::gpu::GpuError::CorruptStream`]), then
    /// clears the flags. The outputs of such calls are garbage. Layers that cannot meet one
    /// return `Ok`.
    fn check_recorded(&self) -> Result<(), LinearError>;
}

/// A layer's call made into launches ([`GpuLinear::prepare_forward`]), recorded as often as
/// the caller likes. It holds the buffers its launches bind.
#[derive(Debug, Clone)]
pub struct PreparedForward {
    launches: Vec<Dispatch>,
    /// A call decoding first: its layer, and the kept buffer its first launch decodes the
    /// weights into ([`LinearDevice::encode_calls`]). That launch reads the layer's coded
    /// weights only and writes that buffer and the layer's error flags.
    decode: Option<(String, wgpu::Buffer)>,
}

impl PreparedForward {
    /// Records the launches into `pass` (ordered by wgpu after the work recorded before them
    /// that writes what they read).
    pub fn record_in(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.launches {
            d.record(pass);
        }
    }

    /// [`Self::record_in`] in a compute pass of its own in `enc`.
    pub fn record(&self, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&Default::default());
        self.record_in(&mut pass);
    }

    /// How many launches the call takes (none for a call without outputs).
    pub fn launches(&self) -> usize {
        self.launches.len()
    }

    /// The call of `layer` whose first launch decodes its weights into `buffer`.
    pub(crate) fn decoding_first(mut self, layer: &str, buffer: wgpu::Buffer) -> Self {
        debug_assert!(!self.launches.is_empty());
        self.decode = Some((layer.to_owned(), buffer));
        self
    }

    /// Whether the call decodes the layer's weights first (a coded layer's call of at least
    /// [`super::EntropyCodedLinear::decode_first_min_rows`] rows).
    pub fn decodes_first(&self) -> bool {
        self.decode.is_some()
    }

    /// Records `calls` into `pass`, the decodes of those decoding first ahead of every call's
    /// other launches, then those in the calls' order, each call's after `before(i, pass)`
    /// ([`LinearDevice::encode_calls_with`]).
    /// Nothing is recorded where two calls decoding first share a kept buffer
    /// ([`LinearError::SharedDecodedBuffer`]).
    pub(crate) fn record_decodes_first_in(
        calls: &[&PreparedForward],
        pass: &mut wgpu::ComputePass<'_>,
        mut before: impl FnMut(usize, &mut wgpu::ComputePass<'_>),
    ) -> Result<(), LinearError> {
        let decoding: Vec<&(String, wgpu::Buffer)> =
            calls.iter().filter_map(|c| c.decode.as_ref()).collect();
        for (i, (layer, buffer)) in decoding.iter().enumerate() {
            if let Some((earlier, _)) = decoding[..i].iter().find(|(_, b)| b == buffer) {
                return Err(LinearError::SharedDecodedBuffer {
                    first: earlier.clone(),
                    second: layer.clone(),
                    decoding: decoding.len(),
                });
            }
        }
        for call in calls {
            if call.decode.is_some() {
                call.launches[0].record(pass);
            }
        }
        for (i, call) in calls.iter().enumerate() {
            before(i, pass);
            let skip = usize::from(call.decode.is_some());
            for d in &call.launches[skip..] {
                d.record(pass);
            }
        }
        Ok(())
    }
}

/// The buffers a device keeps for recorded calls (module doc), grown to the largest call's
/// needs. A recorded call holds clones of them until its work ran, so a later call growing one
/// leaves earlier ones their own; calls recorded one after another into the same encoder share
/// them, ordered by wgpu's barriers between launches.
#[derive(Debug, Default)]
pub(crate) struct ResidentBuffers {
    /// Activations in the other order.
    reordered: Option<wgpu::Buffer>,
    /// Activation slots at bindable offsets.
    slots: Option<wgpu::Buffer>,
    /// Launch outputs copied into place.
    parts: Option<wgpu::Buffer>,
    /// Activations a launch prepares for another (8-bit activations).
    aux: Option<wgpu::Buffer>,
    /// Zeros, the source of [`ResidentCall::zero_outputs`]'s fill (never read).
    zeros: Option<wgpu::Buffer>,
    /// Coded layers' weights decoded for calls of many rows: [`LinearDevice::decoded_buffers`]
    /// of them, taken in turn (`decoded_next`) by the calls as they are recorded or prepared.
    decoded: Vec<Option<wgpu::Buffer>>,
    decoded_next: usize,
    /// The partial sums of the GEMMs' column splits (tiled f32 and cooperative).
    split_sums: Option<wgpu::Buffer>,
}

/// Which of [`ResidentBuffers`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resident {
    Reordered,
    Slots,
    Parts,
    Aux,
    Zeros,
    Decoded,
    SplitSums,
}

impl ResidentBuffers {
    pub(crate) fn gpu_bytes(&self) -> u64 {
        [
            &self.reordered,
            &self.slots,
            &self.parts,
            &self.aux,
            &self.zeros,
            &self.split_sums,
        ]
        .into_iter()
        .chain(&self.decoded)
        .filter_map(|b| b.as_ref().map(|b| b.size()))
        .sum()
    }

    /// The kept buffer `which`, at least `bytes`, or [`GpuError::TooLarge`] where that is
    /// more than the device's buffer limit.
    pub(crate) fn get(
        &mut self,
        dev: &LinearDevice,
        which: Resident,
        bytes: u64,
    ) -> Result<wgpu::Buffer, GpuError> {
        let (slot, label, what) = match which {
            Resident::Reordered => (
                &mut self.reordered,
                "ecq resident reordered activations",
                "activations in the other order",
            ),
            Resident::Slots => (
                &mut self.slots,
                "ecq resident activation slots",
                "activation slots",
            ),
            Resident::Parts => (&mut self.parts, "ecq resident parts", "launch outputs"),
            Resident::Aux => (&mut self.aux, "ecq resident aux", "8-bit activations"),
            Resident::Zeros => (&mut self.zeros, "ecq resident zeros", "zeros"),
            Resident::Decoded => {
                // (in turn: wgpu places a barrier before a buffer's reuse in a command buffer,
                // and a barrier waits for every launch before it; a decode into a buffer of its
                // own runs beside the launches of the call before it)
                let n = dev.decoded_buffers();
                self.decoded.resize(n, None);
                let i = self.decoded_next % n;
                self.decoded_next = (i + 1) % n;
                (
                    &mut self.decoded[i],
                    "ecq resident decoded weights",
                    "decoded weights",
                )
            }
            Resident::SplitSums => (
                &mut self.split_sums,
                "ecq resident split-K partial sums",
                "split-K partial sums",
            ),
        };
        let (limit, limit_name) = dev.max_buffer_limit();
        if bytes > limit {
            return Err(GpuError::TooLarge {
                what: what.into(),
                bytes,
                limit,
                limit_name,
            });
        }
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        Ok(CallScratch::grow(dev, slot, label, bytes, usage))
    }
}

/// What a launch reads: rows in `order`, `stride` values apart (the row's values, or rows
/// zero-padded to a multiple of 4 for the kernels that read them so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowsNeed {
    pub(crate) order: ActivationOrder,
    pub(crate) stride: usize,
}

/// A checked recorded call: `m` rows of `k` activations in `x` in `order`, `m` rows of `r`
/// outputs into `y`.
pub(crate) struct ResidentCall<'a> {
    pub(crate) x: BufferRange<'a>,
    pub(crate) order: ActivationOrder,
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) y: BufferRange<'a>,
    pub(crate) r: usize,
}

impl<'a> ResidentCall<'a> {
    /// Checks the call's ranges, usages and shapes for `layer` on `dev`; `x` and `y` are cut
    /// to the call's bytes. `None` for a call without outputs (no rows or no outputs).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dev: &LinearDevice,
        layer: &str,
        x: BufferRange<'a>,
        order: ActivationOrder,
        m: usize,
        (k, r): (usize, usize),
        y: BufferRange<'a>,
    ) -> Result<Option<Self>, LinearError> {
        let bad = |reason: String| LinearError::Gpu {
            layer: layer.to_string(),
            source: GpuError::InvalidInput(reason),
        };
        let bytes = |rows: usize, values: usize| {
            rows.checked_mul(values)
                .and_then(|v| v.checked_mul(4))
                .map(|b| b as u64)
                .ok_or_else(|| bad(format!("{rows} rows of {values} values")))
        };
        let (x_bytes, y_bytes) = (bytes(m, k)?, bytes(m, r)?);
        if order == ActivationOrder::Lanes && !k.is_multiple_of(16) {
            return Err(bad(format!(
                "activations in lane order need in_features % 16 == 0 (in_features {k})"
            )));
        }
        if y_bytes == 0 {
            return Ok(None);
        }
        let device = dev.device();
        let x = BufferRange::new(x.buffer(), x.offset(), x_bytes.min(x.size()));
        let y = BufferRange::new(y.buffer(), y.offset(), y_bytes.min(y.size()));
        if x.size() < x_bytes {
            return Err(bad(format!(
                "x range has {} bytes, {m} rows of {k} f32 need {x_bytes}",
                x.size()
            )));
        }
        if y.size() < y_bytes {
            return Err(bad(format!(
                "y range has {} bytes, {m} rows of {r} f32 need {y_bytes}",
                y.size()
            )));
        }
        let need = |range: &BufferRange<'_>, what: &str, usage: wgpu::BufferUsages| {
            if !range.buffer().usage().contains(usage) {
                return Err(bad(format!(
                    "{what}'s buffer has usage {:?}, needs {usage:?}",
                    range.buffer().usage()
                )));
            }
            Ok(())
        };
        use wgpu::BufferUsages as U;
        need(&y, "y", U::STORAGE)?;
        y.check_placement(device, "y")
            .map_err(|source| LinearError::gpu(layer, source))?;
        if x_bytes > 0 {
            need(&x, "x", U::STORAGE)?;
            x.check_placement(device, "x")
                .map_err(|source| LinearError::gpu(layer, source))?;
            let overlap = x.offset() < y.offset() + y.size() && y.offset() < x.offset() + x.size();
            if x.buffer() == y.buffer() && overlap {
                return Err(bad(format!(
                    "x (bytes {}..{}) and y (bytes {}..{}) overlap in one buffer",
                    x.offset(),
                    x.offset() + x.size(),
                    y.offset(),
                    y.offset() + y.size()
                )));
            }
        }
        Ok(Some(ResidentCall {
            x,
            order,
            m,
            k,
            y,
            r,
        }))
    }

    /// Makes the activations of `launches` (first row, rows, what the launch reads) bindable
    /// (module doc), the work appended to `out`: each launch's range, in launch order.
    pub(crate) fn stage_rows(
        &self,
        dev: &LinearDevice,
        out: &mut Vec<Dispatch>,
        launches: &[(usize, usize, RowsNeed)],
    ) -> Result<StagedRows, GpuError> {
        let (device, registry) = (dev.device(), dev.gpu().registry());
        let (k, row) = (self.k, self.k as u64 * 4);
        let align = dev.storage_alignment();
        let reordered = if launches.iter().any(|l| l.2.order != self.order) {
            let bytes = self.m as u64 * row;
            let buf = dev.resident(Resident::Reordered, bytes)?;
            let to_lanes = self.order == ActivationOrder::Columns;
            let to = BufferRange::new(&buf, 0, bytes);
            out.push(x_order_dispatch(
                device, registry, self.x, to, self.m, k, to_lanes,
            )?);
            Some(buf)
        } else {
            None
        };
        // (a launch binding `y`'s buffer read-only would conflict with its writable binding)
        let shared = self.x.buffer() == self.y.buffer();
        let mut places = Vec::with_capacity(launches.len());
        let mut moves = Vec::new();
        let mut slots_bytes = 0u64;
        for &(i, n, need) in launches {
            let (src, base) = match &reordered {
                Some(b) if need.order != self.order => (b.clone(), 0),
                _ => (self.x.buffer().clone(), self.x.offset()),
            };
            let from = base + i as u64 * row;
            let bytes = (n * need.stride * 4) as u64;
            let own = shared && src == *self.x.buffer();
            if need.stride == k && from.is_multiple_of(align) && !own {
                places.push(Place::Bound(src, from, bytes));
                continue;
            }
            places.push(Place::Slot(slots_bytes, bytes));
            // (rows zero-padded to the stride the launch reads)
            let stride = (need.stride * 4) as u64;
            let c = RowCopy {
                src_at: from,
                src_stride: row,
                dst_at: slots_bytes,
                dst_stride: stride,
                width: row,
                fill: stride,
                rows: n as u64,
            };
            moves.push((src, c));
            slots_bytes += bytes.next_multiple_of(align);
        }
        let slots = if slots_bytes > 0 {
            let slots = dev.resident(Resident::Slots, slots_bytes)?;
            for (src, c) in moves {
                out.push(copy_rows_dispatch(device, registry, &src, &slots, &c)?);
            }
            Some(slots)
        } else {
            None
        };
        let ranges = places
            .into_iter()
            .map(|place| match place {
                Place::Bound(b, at, bytes) => (b, at, bytes),
                Place::Slot(at, bytes) => (slots.clone().expect("slots made"), at, bytes),
            })
            .collect();
        Ok(StagedRows { ranges })
    }

    /// The outputs' layout for launches of `per` rows writing `bands` (first output, outputs),
    /// and the parts buffer it asks for.
    pub(crate) fn outputs(
        &self,
        dev: &LinearDevice,
        per: usize,
        row_values: usize,
        bands: Vec<(usize, usize)>,
    ) -> Result<(LaunchLayout, Option<wgpu::Buffer>), GpuError> {
        let layout = LaunchLayout::new(
            self.m,
            per,
            row_values,
            self.r,
            bands,
            dev.storage_alignment(),
        );
        let parts = layout
            .parts_bytes()
            .map(|bytes| dev.resident(Resident::Parts, bytes))
            .transpose()?;
        Ok((layout, parts))
    }

    /// Records the moves of `layout`'s parts into place in `y` (nothing where the outputs were
    /// written in place).
    pub(crate) fn place_outputs(
        &self,
        dev: &LinearDevice,
        out: &mut Vec<Dispatch>,
        layout: &LaunchLayout,
        parts: Option<&wgpu::Buffer>,
    ) -> Result<(), GpuError> {
        let Some(parts) = parts else {
            return Ok(());
        };
        let (device, registry) = (dev.device(), dev.gpu().registry());
        for c in layout.moves() {
            let c = RowCopy {
                dst_at: self.y.offset() + c.dst_at,
                ..c
            };
            out.push(copy_rows_dispatch(
                device,
                registry,
                parts,
                self.y.buffer(),
                &c,
            )?);
        }
        Ok(())
    }

    /// Records zeros into the outputs (a layer without inputs).
    pub(crate) fn zero_outputs(
        &self,
        dev: &LinearDevice,
        out: &mut Vec<Dispatch>,
    ) -> Result<(), GpuError> {
        let zeros = dev.resident(Resident::Zeros, 16)?;
        let c = RowCopy {
            src_at: 0,
            src_stride: 0,
            dst_at: self.y.offset(),
            dst_stride: 0,
            width: 0,
            fill: self.y.size(),
            rows: 1,
        };
        let d = copy_rows_dispatch(
            dev.device(),
            dev.gpu().registry(),
            &zeros,
            self.y.buffer(),
            &c,
        )?;
        out.push(d);
        Ok(())
    }

    /// The bias' addition to the outputs (nothing without a bias), in blocks of rows the
    /// device can bind where the outputs are more than it binds at once.
    pub(crate) fn add_bias(
        &self,
        dev: &LinearDevice,
        out: &mut Vec<Dispatch>,
        bias: Option<&wgpu::Buffer>,
    ) -> Result<(), GpuError> {
        let Some(bias) = bias else {
            return Ok(());
        };
        let (row, align) = (self.r as u64 * 4, dev.storage_alignment());
        let limit = dev.device().limits().max_storage_buffer_binding_size;
        // (blocks of whole rows whose bytes are a multiple of the alignment, so that every
        // block starts at a bindable offset; none fitting leaves one block, which reports it)
        let step = align / gcd(row, align);
        let per = match (limit / row / step * step) as usize {
            0 => self.m,
            per => per.min(self.m),
        };
        for start in (0..self.m).step_by(per) {
            let n = per.min(self.m - start);
            let y = BufferRange::new(
                self.y.buffer(),
                self.y.offset() + start as u64 * row,
                n as u64 * row,
            );
            let d = add_bias_dispatch(
                dev.device(),
                dev.gpu().registry(),
                bias.into(),
                y,
                n,
                self.r,
            )?;
            out.push(d);
        }
        Ok(())
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

enum Place {
    Bound(wgpu::Buffer, u64, u64),
    Slot(u64, u64),
}

/// Where each launch of a recorded call reads its activations
/// ([`ResidentCall::stage_rows`]).
pub(crate) struct StagedRows {
    ranges: Vec<(wgpu::Buffer, u64, u64)>,
}

impl StagedRows {
    /// Launch `j`'s activations.
    pub(crate) fn range(&self, j: usize) -> BufferRange<'_> {
        let (b, at, bytes) = &self.ranges[j];
        BufferRange::new(b, *at, *bytes)
    }
}

/// What every layer's [`GpuLinear::prepare_forward`] does around its launches: checks the
/// call ([`ResidentCall::new`]; no launches without outputs), makes `launches` for it, then
/// the bias' addition.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare_call(
    dev: &LinearDevice,
    layer: &str,
    (x, order, m): (BufferRange<'_>, ActivationOrder, usize),
    (k, r): (usize, usize),
    y: BufferRange<'_>,
    bias: Option<&wgpu::Buffer>,
    launches: impl FnOnce(&mut Vec<Dispatch>, &ResidentCall<'_>) -> Result<(), LinearError>,
) -> Result<PreparedForward, LinearError> {
    let mut out = Vec::new();
    let Some(call) = ResidentCall::new(dev, layer, x, order, m, (k, r), y)? else {
        return Ok(PreparedForward {
            launches: out,
            decode: None,
        });
    };
    let gpu = |source| LinearError::gpu(layer, source);
    if k == 0 {
        call.zero_outputs(dev, &mut out).map_err(gpu)?;
    } else {
        launches(&mut out, &call)?;
    }
    call.add_bias(dev, &mut out, bias).map_err(gpu)?;
    Ok(PreparedForward {
        launches: out,
        decode: None,
    })
}

/// The layer's bias as a GPU buffer, made on first use (`None` without a bias).
pub(crate) fn bias_buffer<'a>(
    dev: &LinearDevice,
    cell: &'a std::sync::OnceLock<wgpu::Buffer>,
    bias: Option<&[f32]>,
) -> Option<&'a wgpu::Buffer> {
    let bias = bias.filter(|b| !b.is_empty())?;
    Some(cell.get_or_init(|| {
        let b = dev.buffer(
            "ecq bias",
            (bias.len() * 4) as u64,
            wgpu::BufferUsages::empty(),
        );
        dev.write(&b, bytemuck::cast_slice(bias));
        b
    }))
}
