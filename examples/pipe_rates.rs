//! Instruction rates of the GPU (issue 5, "the limit, measured"): how many 32-lane
//! instructions of each kind the adapter retires per second (`wgsl/pipe_rates.wgsl`), so that
//! a kernel's compiled instruction mix (`scripts/nvidia_sass.py`) gives a lower bound on its
//! time per execution pipe.
//!
//! ```text
//! cargo run --release --example pipe_rates -- [--iters 2048] [--groups 4096] [--rounds 7]
//!     [--sms 132 --clock-mhz 1980] [--wall]
//! ```
//!
//! Each kind runs `--groups` workgroups of 256 invocations, each 8 x `--iters` rounds of eight
//! independent updates (see the kernel), timed by GPU timestamps as the other benchmarks are
//! (`examples/common/timing.rs`), median of `--rounds` after a warm-up. Prints one markdown
//! table: per kind the time, 32-lane instructions per nanosecond, and the rate relative to f32
//! multiply-adds. With `--sms N --clock-mhz F` (the multiprocessor count, which wgpu does not
//! report, and the SM clock during the run, e.g. from `nvidia-smi --query-gpu=clocks.sm`) it
//! also prints instructions per clock per multiprocessor. The counts are of the operations as
//! written (each a single instruction where the compiler emits one); which instruction each
//! kind compiled to, and how many loop instructions came with it, must be read in the
//! compiled code.

#[path = "common/timing.rs"]
mod timing;
use timing::GpuTimer;

use ecq::gpu::GpuContext;

struct Args {
    iters: u32,
    groups: u32,
    rounds: usize,
    sms: Option<u32>,
    clock_mhz: Option<u32>,
    wall: bool,
}

fn usage_error(msg: &str) -> ! {
    eprintln!("pipe_rates: {msg}");
    eprintln!(
        "usage: pipe_rates [--iters N] [--groups N] [--rounds N] [--sms N --clock-mhz F] [--wall]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut a = Args {
        iters: 2048,
        groups: 4096,
        rounds: 7,
        sms: None,
        clock_mhz: None,
        wall: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--wall" {
            a.wall = true;
            continue;
        }
        let v = it
            .next()
            .unwrap_or_else(|| usage_error(&format!("{flag} needs a value")));
        let n: u64 = v
            .parse()
            .unwrap_or_else(|_| usage_error(&format!("{flag}: not a number: {v:?}")));
        if n == 0 || n > u32::MAX as u64 {
            usage_error(&format!("{flag}: out of range: {n}"));
        }
        match flag.as_str() {
            "--iters" => a.iters = n as u32,
            "--groups" if n > 65535 => usage_error("--groups above 65535 are not supported"),
            "--groups" => a.groups = n as u32,
            "--rounds" => a.rounds = n as usize,
            "--sms" => a.sms = Some(n as u32),
            "--clock-mhz" => a.clock_mhz = Some(n as u32),
            other => usage_error(&format!("unknown flag {other}")),
        }
    }
    a
}

/// (OP, name, instructions per update as the kernel is written)
const KINDS: [(u32, &str, u32); 7] = [
    (0, "f32 multiply-add (FFMA)", 1),
    (1, "3-input logic (LOP3)", 1),
    (2, "u32 right shift (SHF)", 1),
    (3, "u32 multiply-add (IMAD)", 1),
    (4, "3-input u32 add (IADD3)", 1),
    (5, "FFMA + LOP3 interleaved", 2),
    (6, "subgroup shuffle (SHFL)", 1),
];

fn main() {
    let args = parse_args();
    let ctx = GpuContext::new().unwrap_or_else(|e| {
        eprintln!("pipe_rates: no GPU adapter: {e}");
        std::process::exit(1);
    });
    let (device, queue) = (ctx.device(), ctx.queue());
    if !device.features().contains(wgpu::Features::SUBGROUP) {
        eprintln!("pipe_rates: the adapter lacks Features::SUBGROUP, which the probe uses");
        std::process::exit(1);
    }
    let timer = GpuTimer::new(device, queue, args.wall);
    // SAFETY: the only loop with a run-time bound runs P.iters rounds (from the host, finite);
    // dropping wgpu's injected loop counter keeps it out of the measured instruction stream.
    let module = unsafe {
        device.create_shader_module_trusted(
            wgpu::ShaderModuleDescriptor {
                label: Some("pipe_rates.wgsl"),
                source: wgpu::ShaderSource::Wgsl(include_str!("../wgsl/pipe_rates.wgsl").into()),
            },
            wgpu::ShaderRuntimeChecks {
                force_loop_bounding: false,
                ..wgpu::ShaderRuntimeChecks::checked()
            },
        )
    };
    let invocations = args.groups as u64 * 256;
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("pipe_rates out"),
        size: invocations * 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let params = [args.iters, 0x1234_5678, 7, 0];
    let uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("pipe_rates params"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&uniform, 0, bytemuck::cast_slice(&params));

    println!(
        "Instruction rates, {}, {}, clock: {}; {} workgroups x 256 invocations x 8 x {} rounds of \
         8 updates, median of {}",
        ctx.adapter_name(),
        ctx.backend(),
        timer.clock(),
        args.groups,
        args.iters,
        args.rounds
    );
    println!();
    let per_clock = args.sms.zip(args.clock_mhz);
    if let Some((sms, mhz)) = per_clock {
        println!(
            "| kind | time ms | 32-lane instr. per ns | relative to FFMA | per clock per SM ({sms} SMs at {mhz} MHz) |"
        );
        println!("|---|---|---|---|---|");
    } else {
        println!("| kind | time ms | 32-lane instr. per ns | relative to FFMA |");
        println!("|---|---|---|---|");
    }
    let mut ffma_rate = None;
    for (op, name, per_update) in KINDS {
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("OP", op as f64)],
                zero_initialize_workgroup_memory: true,
            },
            cache: None,
        });
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: out.as_entire_binding(),
                },
            ],
        });
        let run = || {
            timer.time_pass(device, queue, |pass| {
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(args.groups, 1, 1);
            })
        };
        run();
        let samples: Vec<_> = (0..args.rounds).map(|_| run()).collect();
        let t = timer.summarize(&samples, 1).t;
        let instr = (invocations / 32) as f64 * args.iters as f64 * 64.0 * per_update as f64;
        let rate = instr / (t * 1e9);
        let base = *ffma_rate.get_or_insert(rate);
        if let Some((sms, mhz)) = per_clock {
            println!(
                "| {name} | {:.3} | {:.1} | {:.2} | {:.2} |",
                t * 1e3,
                rate,
                rate / base,
                rate / (mhz as f64 * 1e-3 * sms as f64)
            );
        } else {
            println!(
                "| {name} | {:.3} | {:.1} | {:.2} |",
                t * 1e3,
                rate,
                rate / base
            );
        }
    }
}
