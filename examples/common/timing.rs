//! GPU-side timing shared by the benchmark examples (`#[path]`-included by `bench_gpu`,
//! `bench_lossless` and `bench_prefill`).
//!
//! Every measurement records its work into one command encoder and calls `finish()` (where
//! wgpu 30 translates the recorded commands to the backend, `wgpu-core`'s `encode_commands`)
//! **before** the wall clock starts, so the wall-clock figure covers submit + GPU execution +
//! wait only. Where the device has `Features::TIMESTAMP_QUERY` (`GpuContext::new` requests it
//! where the adapter offers it) the timed compute pass also carries `timestamp_writes` at its
//! beginning and end; their difference (ticks x `queue.get_timestamp_period()`) is the GPU time
//! of the pass, including the barriers between dependent dispatches but not the launch
//! latency of the submit or the host's wait. That GPU time is the primary figure; the wall
//! clock is kept for comparison with older tables (and is the fallback, said in the output,
//! where timestamps are missing, or with `--wall`; lavapipe has them).
#![allow(dead_code)]

use std::time::Instant;

/// One timed batch: seconds of the whole batch.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Pass duration from GPU timestamps (`None` without `TIMESTAMP_QUERY`, or when the
    /// driver returned an end before the start).
    pub gpu: Option<f64>,
    /// Submit + execution + wait, by the host's clock, after `finish()`.
    pub wall: f64,
}

/// A median over rounds of both clocks, per unit of work (seconds).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The figure to report: GPU time where the timer uses timestamps, else wall clock.
    pub t: f64,
    /// The wall-clock figure.
    pub wall: f64,
}

/// Timestamp query set, resolve and read-back buffers for one device.
pub struct GpuTimer {
    ts: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
    period_ns: f64,
    wanted_gpu: bool,
}

impl GpuTimer {
    /// A timer for `device`. With `force_wall` (the examples' `--wall`) or without
    /// `TIMESTAMP_QUERY` the reported figure is the wall clock.
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, force_wall: bool) -> Self {
        let has = device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let ts = has.then(|| {
            let qs = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp read"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (qs, resolve, read)
        });
        GpuTimer {
            ts,
            period_ns: queue.get_timestamp_period() as f64,
            wanted_gpu: !force_wall,
        }
    }

    /// Whether the device has timestamp queries.
    pub fn has_timestamps(&self) -> bool {
        self.ts.is_some()
    }

    /// Whether the reported figure ([`Timing::t`]) is GPU time.
    pub fn uses_gpu(&self) -> bool {
        self.wanted_gpu && self.ts.is_some()
    }

    /// Names the clock of the reported figures, for table headers.
    pub fn clock(&self) -> &'static str {
        if self.uses_gpu() {
            "GPU timestamps (compute-pass duration / dispatches)"
        } else if self.ts.is_some() {
            "wall clock (--wall; submit to wait, after finish())"
        } else {
            "wall clock (no TIMESTAMP_QUERY on this adapter; submit to wait, after finish())"
        }
    }

    /// Short name of the reported clock ("GPU" or "wall").
    pub fn short(&self) -> &'static str {
        if self.uses_gpu() {
            "GPU"
        } else {
            "wall"
        }
    }

    fn writes(&self, begin: bool, end: bool) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        self.ts
            .as_ref()
            .map(|(qs, _, _)| wgpu::ComputePassTimestampWrites {
                query_set: qs,
                beginning_of_pass_write_index: begin.then_some(0),
                end_of_pass_write_index: end.then_some(1),
            })
    }

    /// Times one compute pass holding what `record` records (timestamps at the pass's
    /// beginning and end).
    pub fn time_pass(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>),
    ) -> Sample {
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed"),
                timestamp_writes: self.writes(true, true),
            });
            record(&mut pass);
        }
        self.finish_and_run(device, queue, enc)
    }

    /// Times encoder-level work (buffer copies): an empty compute pass writes the start
    /// timestamp (Vulkan: at the bottom of the pipe, after all earlier work), `record`
    /// records, another empty pass writes the end timestamp.
    pub fn time_encoder(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        record: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Sample {
        let mut enc = device.create_command_encoder(&Default::default());
        if self.ts.is_some() {
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed start"),
                timestamp_writes: self.writes(true, false),
            });
        }
        record(&mut enc);
        if self.ts.is_some() {
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed end"),
                timestamp_writes: self.writes(false, true),
            });
        }
        self.finish_and_run(device, queue, enc)
    }

    fn finish_and_run(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        mut enc: wgpu::CommandEncoder,
    ) -> Sample {
        if let Some((qs, resolve, read)) = &self.ts {
            enc.resolve_query_set(qs, 0..2, resolve, 0);
            enc.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        }
        // translation of the recorded commands happens here, outside the timed region
        let cb = enc.finish();
        let t = Instant::now();
        queue.submit([cb]);
        ecq::gpu::wait(device).expect("wait");
        let wall = t.elapsed().as_secs_f64();
        let gpu = self.ts.as_ref().and_then(|(_, _, read)| {
            let (tx, rx) = std::sync::mpsc::channel();
            read.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            ecq::gpu::wait(device).expect("wait");
            rx.recv().expect("map").expect("map");
            let ticks: [u64; 2] = {
                let v = read.get_mapped_range(..).expect("mapped");
                bytemuck::pod_read_unaligned(&v[..16])
            };
            read.unmap();
            (ticks[1] > ticks[0]).then(|| (ticks[1] - ticks[0]) as f64 * self.period_ns * 1e-9)
        });
        Sample { gpu, wall }
    }

    /// Medians over `samples` (each covering `per` units of work) of the reported clock and
    /// the wall clock, per unit. A sample without a GPU time counts by its wall clock.
    pub fn summarize(&self, samples: &[Sample], per: usize) -> Timing {
        let per = per.max(1) as f64;
        let t = median(
            samples
                .iter()
                .map(|s| {
                    if self.uses_gpu() {
                        s.gpu.unwrap_or(s.wall)
                    } else {
                        s.wall
                    }
                })
                .collect(),
        );
        let wall = median(samples.iter().map(|s| s.wall).collect());
        Timing {
            t: t / per,
            wall: wall / per,
        }
    }
}

/// The median (upper middle for even counts).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}
