//! The GPU context shared by the linear layers, with a cache of the batched kernels' pipelines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::call_buffers::{CallBuffers, CallScratch};
use super::resident::{PreparedForward, Resident, ResidentBuffers};
use super::LinearError;

/// Where a read back's mapping reports its outcome.
pub(crate) type MapReceiver = std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>;
use crate::gpu::{BufferRange, CoopActivations, CoopOrder, CoopRows, GpuContext, GpuError};

/// The batched kernels of this module (one WGSL file each in `wgsl/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LinearKernel {
    /// `wgsl/rans_gemm.wgsl`: batched fused decode + dequantize + matmul; `row_pairs` sets
    /// its override `PAIR` (split matrices in row-pair order: two accumulators per row).
    RansGemm {
        /// Row-pair order.
        row_pairs: bool,
        /// How the scales and biases are stored (override `SIDE`).
        side: crate::gpu::SideFormat,
        /// The decode tables built on the host are bound in place of the frequencies
        /// (override `TABLE_MEM`, `wgsl/lib/rans_table_mem.wgsl`).
        tables: bool,
    },
    /// `wgsl/rans_gemm_blocked.wgsl`: `RansGemm` with the blocked subgroup decoder (32-wide
    /// subgroups; rows of whole steps, a multiple of `8 / wps` of them; precision <= 11).
    RansGemmBlocked {
        /// Row-pair order.
        row_pairs: bool,
        /// How the scales and biases are stored (override `SIDE`).
        side: crate::gpu::SideFormat,
        /// Weights per symbol (override `WPS`; `BLOCK` = 8 / wps).
        wps: u32,
        /// Coded bits per weight (override `BITS`).
        bits: u32,
        /// Probability bits (override `PREC`).
        prec: u32,
        /// The window start of a window split (overrides `WIN`, `WSTART`; `BLOCK` = 4).
        window: Option<u8>,
    },
    /// `wgsl/qgemm.wgsl`: plain batched quantized matmul (the baseline).
    QGemm {
        /// How the scales and biases are stored (override `SIDE`).
        side: crate::gpu::SideFormat,
    },
}

impl LinearKernel {
    fn source(self) -> &'static str {
        match self {
            LinearKernel::RansGemm { .. } => crate::gpu::wgsl_with_libs!(
                "../../wgsl/rans_gemm.wgsl",
                "rans_consts",
                "rans_table",
                "rans_table_mem",
                "split_bits",
                "side",
                "gemm_slice",
                "rans_gemm_slice"
            ),
            LinearKernel::RansGemmBlocked { .. } => crate::gpu::wgsl_with_libs!(
                "../../wgsl/rans_gemm_blocked.wgsl",
                "rans_consts",
                "rans_table_scan",
                "rans_table_byte",
                "rans_subgroup",
                "rans_block",
                "split_bits",
                "window_bits",
                "side",
                "gemm_slice",
                "rans_gemm_slice"
            ),
            LinearKernel::QGemm { .. } => {
                crate::gpu::wgsl_with_libs!("../../wgsl/qgemm.wgsl", "side", "gemm_slice")
            }
        }
    }

    /// The pipeline's override constants.
    fn constants(self) -> Vec<(&'static str, f64)> {
        let (name, side) = match self {
            LinearKernel::RansGemm { side, .. }
            | LinearKernel::RansGemmBlocked { side, .. }
            | LinearKernel::QGemm { side } => side.constant(),
        };
        let mut c = vec![(name, f64::from(side))];
        match self {
            LinearKernel::RansGemm {
                row_pairs, tables, ..
            } => c.extend([
                ("PAIR", f64::from(u8::from(row_pairs))),
                ("TABLE_MEM", f64::from(u8::from(tables))),
            ]),
            LinearKernel::RansGemmBlocked {
                row_pairs,
                wps,
                bits,
                prec,
                window,
                ..
            } => c.extend([
                ("PAIR", f64::from(u8::from(row_pairs))),
                ("WPS", f64::from(wps)),
                ("BITS", f64::from(bits)),
                ("PREC", f64::from(prec)),
                (
                    "BLOCK",
                    f64::from(if window.is_some() { 4 } else { 8 / wps.max(1) }),
                ),
                ("WIN", f64::from(u8::from(window.is_some()))),
                ("WSTART", f64::from(window.unwrap_or(0))),
            ]),
            _ => {}
        }
        c
    }

    fn file_name(self) -> &'static str {
        match self {
            LinearKernel::RansGemm { .. } => "rans_gemm.wgsl",
            LinearKernel::RansGemmBlocked { .. } => "rans_gemm_blocked.wgsl",
            LinearKernel::QGemm { .. } => "qgemm.wgsl",
        }
    }
}

/// A [`GpuContext`] plus the compiled pipelines of the batched kernels, shared (through `Arc`)
/// by every layer uploaded to it.
///
/// It also keeps the buffers of its layers' calls (activations, outputs, read back) for the
/// next call: they grow to the largest call's needs and stay until
/// [`LinearDevice::release_call_buffers`] ([`LinearDevice::call_buffer_bytes`] says how much).
#[derive(Debug)]
pub struct LinearDevice {
    gpu: GpuContext,
    pipelines: Mutex<HashMap<LinearKernel, wgpu::ComputePipeline>>,
    /// One set a call running at once (usually one).
    call_buffers: Mutex<Vec<CallBuffers>>,
    /// The buffers of recorded calls ([`super::GpuLinear`]).
    resident: Mutex<ResidentBuffers>,
    /// The cooperative launches' activation buffers, by inputs, vectors and order (written by
    /// each launch's activation pass and read by the launch after it, so calls can share them).
    coop_activations: Mutex<Vec<CoopActivations>>,
    /// The cooperative GEMM's activation rows, by inputs and rows (as `coop_activations`).
    coop_rows: Mutex<Vec<CoopRows>>,
    /// How many kept buffers recorded calls decoding first take in turn.
    decoded_buffers: AtomicUsize,
}

impl LinearDevice {
    /// Picks an adapter as [`GpuContext::new`] does (honours `WGPU_BACKEND`,
    /// `WGPU_ADAPTER_NAME`).
    pub fn new() -> Result<Arc<Self>, GpuError> {
        Ok(Self::from_context(GpuContext::new()?))
    }

    /// Wraps an existing context (e.g. one made with [`GpuContext::from_device`]).
    pub fn from_context(gpu: GpuContext) -> Arc<Self> {
        Arc::new(LinearDevice {
            gpu,
            pipelines: Mutex::new(HashMap::new()),
            call_buffers: Mutex::new(Vec::new()),
            resident: Mutex::new(ResidentBuffers::default()),
            coop_activations: Mutex::new(Vec::new()),
            coop_rows: Mutex::new(Vec::new()),
            decoded_buffers: AtomicUsize::new(1),
        })
    }

    /// The GPU context.
    pub fn gpu(&self) -> &GpuContext {
        &self.gpu
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        self.gpu.device()
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        self.gpu.queue()
    }

    /// Drops the buffers kept from earlier layer calls, recorded ones included (the next
    /// call makes new ones; recorded work not yet run keeps its own until it ran).
    pub fn release_call_buffers(&self) {
        self.call_buffers.lock().expect("call buffers lock").clear();
        *self.resident.lock().expect("resident buffers lock") = ResidentBuffers::default();
        self.coop_activations
            .lock()
            .expect("cooperative activations lock")
            .clear();
        self.coop_rows
            .lock()
            .expect("cooperative rows lock")
            .clear();
    }

    /// Sets how many kept buffers the coded layers' recorded and prepared calls decoding first
    /// ([`super::LinearOptions::decode_first_min_rows`]) write their decoded weights into,
    /// taken in turn as the calls are recorded or prepared (default 1; 0 is taken as 1).
    /// [`Self::encode_calls`] needs a buffer a call decoding first: there a layer's seven
    /// decodes run together, the larger gain for layers coded whole (BENCHMARKS.md, issue 5,
    /// step 111).
    ///
    /// wgpu places a barrier before a buffer's reuse within a command buffer, and a barrier
    /// waits for every launch recorded before it. With one buffer, each call's decode waits
    /// for the call before it to finish. Where `n` calls in a row (a transformer layer's
    /// seven, say) each have a buffer of their own and the command buffer holding them uses
    /// each buffer once, a call's decode runs beside the launches of the call before it, so
    /// the decode's time hides behind the multiply where the GPU has room. A layer's error
    /// flags are one buffer too: a layer called twice in one command buffer waits there
    /// (still correct, without the overlap). Each buffer grows to the largest layer it
    /// decodes: taken in order by the seven calls of a Llama-3-8B layer, seven buffers hold
    /// 109 MB against one's 29. The buffers a prepared call was made with stay its own;
    /// calls made after a change take the new count.
    ///
    /// Measured on an H200 (BENCHMARKS.md, issue 5, step 102), 32 Llama-3-8B layers on
    /// tensor cores, prepared calls, each layer's seven calls in a command encoder of their
    /// own with seven buffers, before the cooperative GEMM split its columns (step 103): 64
    /// tokens 32.6 ms coded against 29.7 plain (1.10x, from 1.18x
    /// with one buffer), 512 tokens 58.8 against 56.9 (1.03x, from 1.11x); on an H100 1.12x
    /// and 1.04x (from 1.18x and 1.08x). A command encoder a layer cost ~25 µs each there
    /// (~40 on the H100), plain and coded alike. It loses where calls run launches of 16
    /// rows (32 tokens: 1.2 ms a forward). In f32 nothing changed where the GEMM splits its
    /// columns: the next call's decode then runs beside the short sum launch only. Since the
    /// cooperative GEMM splits its columns too (measured with a split rule of 256
    /// workgroups), it gains 0.5 ms a forward at 128 tokens and 1.4 at 512 and loses
    /// 1.1-1.3 ms at 48-64, where the split grids fill the GPU. With today's split rule and
    /// 8 distinct layers' calls in one encoder (no encoder cost, no layer twice in 56 calls)
    /// 8 buffers gained nothing beyond noise at 17-512 tokens (0.1-0.4 ms; step 104): a
    /// split call ends in its sum launch, so the next decode has little to run beside.
    /// wgpu's Metal backend encodes passes with Metal's serial dispatch type, which orders a
    /// pass's launches whatever wgpu's barriers: on Apple GPUs this is expected to change
    /// nothing (not measured).
    pub fn set_decoded_buffers(&self, n: usize) {
        self.decoded_buffers.store(n.max(1), Ordering::Relaxed);
    }

    /// How many kept buffers calls decoding first take in turn
    /// ([`Self::set_decoded_buffers`]).
    pub fn decoded_buffers(&self) -> usize {
        self.decoded_buffers.load(Ordering::Relaxed)
    }

    /// Records prepared calls into a command buffer of their own, the decodes of the calls
    /// decoding first ([`PreparedForward::decodes_first`]) ahead of every call's other
    /// launches, then those in the calls' order. Submitted in the caller's sequence of
    /// command buffers, the outputs are each call's [`PreparedForward::record_in`]'s bit for
    /// bit.
    ///
    /// A decode reads neither the activations nor another call's outputs, so it may run
    /// before the launches of calls ahead of it. One decode of a layer's matrix leaves much
    /// of a large GPU idle (its chunks are its decoders); the decodes of, say, a transformer
    /// layer's seven matrices fill it together, on GPUs that run launches without a barrier
    /// between them at once (NVIDIA's Vulkan driver does). wgpu places a barrier before a
    /// launch that writes a buffer used before it in the same command buffer, and a barrier
    /// waits for every launch before it; a buffer's first use in a command buffer takes its
    /// transition at submission instead. So the decodes go to a command buffer of their own,
    /// where each call's kept buffer, and each layer's error flags, are first written by its
    /// decode. A layer given twice writes its flags twice: correct, with a barrier there.
    ///
    /// Each call decoding first needs a kept buffer of its own, else a later decode would
    /// overwrite weights an earlier call has yet to multiply: calls prepared one after
    /// another after [`Self::set_decoded_buffers`] of at least their number take distinct
    /// ones. Where two share one, nothing is recorded and the error is
    /// [`LinearError::SharedDecodedBuffer`].
    ///
    /// Measured on an H200 (BENCHMARKS.md, issue 5, step 111), 32 Llama-3-8B layers of MLX
    /// 4-bit g64 weights coded whole (`ecq encode`'s default form), a command buffer a
    /// layer's seven calls with seven kept buffers: 22.2 ms a forward against 30.0 at 16
    /// tokens on tensor cores, 25.5 against 33.7 at 64, 62.9 against 71.7 at 512 (the H100
    /// agrees); in f32 14.3 against 23.2 at 2 tokens, and one token decoding first
    /// (`LinearOptions::decode_first_min_rows` `Some(1)`) 12.2 against the fused GEMV's
    /// 21.4. Window splits, whose decodes fill more of the GPU, gain 0.3-0.6 ms. The plain
    /// layers in such command buffers took up to ~1 ms a forward longer on tensor cores.
    /// The same decodes recorded first into one pass with the rest of the forward gained
    /// nothing (the barriers above).
    pub fn encode_calls<'a>(
        &self,
        calls: impl IntoIterator<Item = &'a PreparedForward>,
    ) -> Result<wgpu::CommandBuffer, LinearError> {
        self.encode_calls_with(calls, |_, _| {})
    }

    /// [`Self::encode_calls`] with the caller's launches between the calls: `before(i, pass)`
    /// records into the command buffer's pass what must run before call `i`'s multiply, after
    /// every decode. A transformer layer's calls depend on the engine's work between them (o
    /// on the attention over q, k and v's outputs; down on the activation of gate and up's),
    /// and their decodes do not: so one command buffer a layer holds the seven decodes, then
    /// the layer's work in order. (Command buffers of only the calls that need no work
    /// between them, q k v | o | gate up | down, gain little: 32 whole-coded Llama-3-8B
    /// layers took 28.7 ms at 16 tokens on tensor cores against 30.0 in one command buffer
    /// and 22.2 with one a layer; BENCHMARKS.md, issue 5, step 111.)
    ///
    /// ```no_run
    /// use ecq::linear::{ActivationOrder, EntropyCodedModel, GpuLinear, Linear, LinearDevice};
    ///
    /// let dev = LinearDevice::new()?;
    /// let model = EntropyCodedModel::open(&dev, "coded-model-dir")?;
    /// let (up, down) = (model.layer("mlp.up_proj")?, model.layer("mlp.down_proj")?);
    /// let m = 64; // tokens
    /// let (x, h, y) = (
    ///     dev.activation_buffer(m * up.in_features()),
    ///     dev.activation_buffer(m * up.out_features()),
    ///     dev.activation_buffer(m * down.out_features()),
    /// );
    /// dev.set_decoded_buffers(2); // before preparing: each call a kept buffer of its own
    /// let cols = ActivationOrder::Columns;
    /// let calls = [
    ///     up.prepare_forward((&x).into(), cols, m, (&h).into())?,
    ///     down.prepare_forward((&h).into(), cols, m, (&y).into())?,
    /// ];
    /// // ... x written by the engine ...
    /// let layer = dev.encode_calls_with(&calls, |i, _pass| {
    ///     if i == 1 {
    ///         // (the engine's activation function on `h` would be recorded here)
    ///     }
    /// })?;
    /// dev.queue().submit([layer]);
    /// up.check_recorded()?;
    /// down.check_recorded()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encode_calls_with<'a>(
        &self,
        calls: impl IntoIterator<Item = &'a PreparedForward>,
        before: impl FnMut(usize, &mut wgpu::ComputePass<'_>),
    ) -> Result<wgpu::CommandBuffer, LinearError> {
        let calls: Vec<&PreparedForward> = calls.into_iter().collect();
        let mut enc = self
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("ecq calls, decodes first"),
            });
        PreparedForward::record_decodes_first_in(
            &calls,
            &mut enc.begin_compute_pass(&Default::default()),
            before,
        )?;
        Ok(enc.finish())
    }

    /// GPU bytes of the buffers kept from earlier layer calls (activations, outputs and the
    /// read back of the largest calls so far, host-visible for the read back; the scratch of
    /// recorded calls).
    pub fn call_buffer_bytes(&self) -> u64 {
        let pool = self.call_buffers.lock().expect("call buffers lock");
        pool.iter().map(CallBuffers::gpu_bytes).sum::<u64>()
            + self
                .resident
                .lock()
                .expect("resident buffers lock")
                .gpu_bytes()
            + self
                .coop_activations
                .lock()
                .expect("cooperative activations lock")
                .iter()
                .map(CoopActivations::gpu_bytes)
                .sum::<u64>()
            + self
                .coop_rows
                .lock()
                .expect("cooperative rows lock")
                .iter()
                .map(CoopRows::gpu_bytes)
                .sum::<u64>()
    }

    /// The kept activation buffers of cooperative launches of `vectors` vectors of `cols`
    /// inputs in `order` (made on first use; they were made every call, ~130 KB each).
    pub(crate) fn coop_activations(
        &self,
        cols: usize,
        vectors: u32,
        order: CoopOrder,
    ) -> Result<CoopActivations, GpuError> {
        let mut kept = self
            .coop_activations
            .lock()
            .expect("cooperative activations lock");
        if let Some(a) = kept.iter().find(|a| a.is_for(cols, vectors, order)) {
            return Ok(a.clone());
        }
        let a = CoopActivations::new(self.device(), cols, vectors, order)?;
        kept.push(a.clone());
        Ok(a)
    }

    /// The kept activation rows of cooperative GEMM launches of `rows` rows of `cols` inputs:
    /// one set of buffers a width, grown to the most rows asked for (so calls of many
    /// different row counts keep one, not one a count).
    pub(crate) fn coop_rows(&self, cols: usize, rows: usize) -> Result<CoopRows, GpuError> {
        let mut kept = self.coop_rows.lock().expect("cooperative rows lock");
        let at = kept.iter().position(|a| a.cols() == cols);
        if let Some(view) = at.and_then(|i| kept[i].for_rows(rows)) {
            return Ok(view);
        }
        if let Some(i) = at {
            // (the smaller set goes first: the new one may be large)
            kept.swap_remove(i);
        }
        let a = CoopRows::new(self.device(), cols, rows)?;
        kept.push(a.clone());
        Ok(a)
    }

    /// A zeroed buffer of exactly `values` f32 (at least one) for activations or outputs of recorded calls
    /// ([`super::GpuLinear`]): `STORAGE | COPY_SRC | COPY_DST`, so that calls read and write
    /// it, `queue().write_buffer` fills it and [`Self::read_f32`] reads it back.
    pub fn activation_buffer(&self, values: usize) -> wgpu::Buffer {
        self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("ecq activations"),
            // (exactly the values, so that the whole buffer is the call's range)
            size: (values as u64 * 4).max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// The f32 values of `range` (a multiple of 4 bytes, in a buffer with `COPY_SRC` usage),
    /// read back once the work submitted so far has run.
    pub fn read_f32(&self, range: BufferRange<'_>) -> Result<Vec<f32>, GpuError> {
        let (b, at, bytes) = (range.buffer(), range.offset(), range.size());
        if !b.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(GpuError::InvalidInput(format!(
                "read back: the buffer has usage {:?}, needs COPY_SRC",
                b.usage()
            )));
        }
        let end = at.checked_add(bytes).filter(|&e| e <= b.size());
        if !at.is_multiple_of(4) || !bytes.is_multiple_of(4) || end.is_none() {
            return Err(GpuError::InvalidInput(format!(
                "read back: bytes {at}..{} of a buffer of {} (whole f32 inside it)",
                at.saturating_add(bytes),
                b.size()
            )));
        }
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let readback = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("ecq read back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device().create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(b, at, &readback, 0, bytes);
        let (submission, mapped) = self.submit_mapped(enc, &readback, bytes, || {})?;
        self.wait_mapped(submission, mapped)?;
        let values = {
            let view = readback
                .slice(..)
                .get_mapped_range()
                .map_err(|e| GpuError::Map(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        readback.unmap();
        Ok(values)
    }

    /// The kept buffer `which` of recorded calls, at least `bytes` (within the device's buffer
    /// limit).
    pub(crate) fn resident(&self, which: Resident, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        let mut kept = self.resident.lock().expect("resident buffers lock");
        kept.get(self, which, bytes)
    }

    /// A call's buffers, from the pool (given back when the returned value drops).
    pub(crate) fn call_scratch(&self) -> CallScratch<'_> {
        let bufs = self
            .call_buffers
            .lock()
            .expect("call buffers lock")
            .pop()
            .unwrap_or_default();
        CallScratch::new(self, bufs)
    }

    pub(crate) fn give_back_call_buffers(&self, bufs: CallBuffers) {
        if let Ok(mut pool) = self.call_buffers.lock() {
            pool.push(bufs);
        }
    }

    /// Where a storage binding may start: offsets are multiples of this.
    pub(crate) fn storage_alignment(&self) -> u64 {
        u64::from(self.device().limits().min_storage_buffer_offset_alignment).max(4)
    }

    /// Submits `enc`, runs `after_submit`, and asks for `readback`'s first `bytes` mapped for
    /// reading once the submission is done: the submission and the receiver of the mapping's
    /// outcome, for [`Self::wait_mapped`].
    pub(crate) fn submit_mapped(
        &self,
        enc: wgpu::CommandEncoder,
        readback: &wgpu::Buffer,
        bytes: u64,
        after_submit: impl FnOnce(),
    ) -> Result<(wgpu::SubmissionIndex, MapReceiver), GpuError> {
        let scope = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let submission = self.queue().submit([enc.finish()]);
        after_submit();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Wgpu(e.to_string()));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        readback.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = tx.send(r);
        });
        Ok((submission, rx))
    }

    /// Waits for `submission` (not for later ones) and the mapping `mapped` reports on.
    pub(crate) fn wait_mapped(
        &self,
        submission: wgpu::SubmissionIndex,
        mapped: MapReceiver,
    ) -> Result<(), GpuError> {
        self.device()
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| GpuError::Wgpu(e.to_string()))?;
        mapped
            .recv()
            .map_err(|e| GpuError::Map(e.to_string()))?
            .map_err(|e| GpuError::Map(e.to_string()))
    }

    /// The largest storage buffer the kernels can bind on this device.
    pub fn max_buffer_bytes(&self) -> u64 {
        self.max_buffer_limit().0
    }

    /// [`Self::max_buffer_bytes`] and the name of the `wgpu::Limits` field that sets it.
    pub(crate) fn max_buffer_limit(&self) -> (u64, &'static str) {
        let l = self.device().limits();
        if l.max_storage_buffer_binding_size <= l.max_buffer_size {
            (
                l.max_storage_buffer_binding_size,
                "max_storage_buffer_binding_size",
            )
        } else {
            (l.max_buffer_size, "max_buffer_size")
        }
    }

    pub(crate) fn pipeline(&self, k: LinearKernel) -> Result<wgpu::ComputePipeline, GpuError> {
        if let Some(p) = self.pipelines.lock().expect("pipeline cache").get(&k) {
            return Ok(p.clone());
        }
        let device = self.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(k.file_name()),
            source: wgpu::ShaderSource::Wgsl(crate::gpu::with_f16_pair(
                k.source(),
                self.gpu().registry().f16_unpack(),
            )),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(k.file_name()),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &k.constants(),
                zero_initialize_workgroup_memory: true,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Wgpu(format!("{}: {e}", k.file_name())));
        }
        self.pipelines
            .lock()
            .expect("pipeline cache")
            .insert(k, pipeline.clone());
        Ok(pipeline)
    }

    /// Splits `total` workgroups into a 2-D grid within the per-dimension limit.
    pub(crate) fn grid(&self, total: u32) -> (u32, u32) {
        if total == 0 {
            return (0, 0);
        }
        let max = self
            .device()
            .limits()
            .max_compute_workgroups_per_dimension
            .max(1);
        let x = total.min(max);
        (x, total.div_ceil(x))
    }

    /// A zero-filled storage buffer of at least `bytes` (rounded up to 16).
    pub(crate) fn buffer(
        &self,
        label: &str,
        bytes: u64,
        extra: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.div_ceil(16).max(1) * 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra,
            mapped_at_creation: false,
        })
    }

    /// Writes `bytes` at the start of `buf` (which is at least `bytes.len()` rounded up to 4):
    /// the 4-byte-aligned bulk straight from the borrowed slice, the last 1-3 bytes padded.
    pub(crate) fn write(&self, buf: &wgpu::Buffer, bytes: &[u8]) {
        let n4 = bytes.len() / 4 * 4;
        if n4 > 0 {
            self.queue().write_buffer(buf, 0, &bytes[..n4]);
        }
        if n4 < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - n4].copy_from_slice(&bytes[n4..]);
            self.queue().write_buffer(buf, n4 as u64, &tail);
        }
    }

    /// A uniform buffer holding `data`.
    pub(crate) fn uniform(&self, data: &[u8]) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("ecq linear params"),
                contents: data,
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::LinearKernel;
    use crate::gpu::SideFormat;

    /// Every batched kernel as the device builds it (its libraries, either f16 conversion)
    /// parses and validates with naga: the blocked one cannot run on lavapipe in CI.
    #[test]
    fn batched_kernel_sources_validate() {
        let side = SideFormat::F16;
        let kernels = [
            LinearKernel::RansGemm {
                row_pairs: false,
                side,
                tables: true,
            },
            LinearKernel::RansGemmBlocked {
                row_pairs: true,
                side,
                wps: 4,
                bits: 2,
                prec: 11,
                window: None,
            },
            LinearKernel::RansGemmBlocked {
                row_pairs: true,
                side,
                wps: 8,
                bits: 1,
                prec: 11,
                window: Some(5),
            },
            LinearKernel::QGemm { side },
        ];
        for k in kernels {
            for unpack in [false, true] {
                let src = crate::gpu::with_f16_pair(k.source(), unpack);
                let module = naga::front::wgsl::parse_str(&src)
                    .unwrap_or_else(|e| panic!("{}: {}", k.file_name(), e.emit_to_string(&src)));
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::all(),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("{}: {e:?}", k.file_name()));
                assert!(!k.constants().is_empty());
            }
        }
    }
}
