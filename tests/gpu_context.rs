//! `GpuContext`: adapter selection through `WGPU_ADAPTER_NAME`, `from_device` with an
//! application's own device, and the pipeline registry cache. Its own test binary because it
//! sets environment variables (the test functions run one after another through a mutex).

mod gpu_common;

use std::sync::Mutex;

use ecq::gpu::{
    quantize_x8_dispatch, x8_bytes, BufferRange, CodedMatrixRef, GpuContext, GpuError, Kernel,
    PipelineRegistry, X8Order,
};
use ecq::rans::{encode, EncodeOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

static ENV: Mutex<()> = Mutex::new(());

fn default_ctx() -> Option<GpuContext> {
    match GpuContext::new() {
        Ok(c) => Some(c),
        Err(e) => {
            gpu_common::announce_skip(&e);
            None
        }
    }
}

#[test]
fn adapter_name_that_matches_nothing_is_an_error_not_a_panic() {
    let _g = ENV.lock().unwrap();
    std::env::set_var("WGPU_ADAPTER_NAME", "no-such-adapter-ecq-test");
    let r = GpuContext::new();
    std::env::remove_var("WGPU_ADAPTER_NAME");
    match r {
        Err(GpuError::NoAdapter(msg)) => assert!(msg.contains("no-such-adapter"), "{msg}"),
        Err(e) => panic!("expected NoAdapter, got {e}"),
        Ok(c) => panic!("matched adapter {}", c.adapter_name()),
    }
}

#[test]
fn adapter_name_substring_selects_the_adapter() {
    let _g = ENV.lock().unwrap();
    let Some(ctx) = default_ctx() else { return };
    let name = ctx.adapter_name().to_string();
    eprintln!("adapter: {}", ctx.describe());
    let part: String = name.chars().take(6).collect::<String>().to_uppercase();
    std::env::set_var("WGPU_ADAPTER_NAME", &part);
    let r = GpuContext::new();
    std::env::remove_var("WGPU_ADAPTER_NAME");
    let c = r.expect("adapter by name");
    assert!(c.adapter_name().to_uppercase().contains(&part));
}

/// The subgroup-size probe reports the size the adapter states where it states one (32 on
/// NVIDIA, 8 on lavapipe with 256-bit vectors), a size within the stated range otherwise, and
/// nothing without `Features::SUBGROUP`. The registry rule built on it: an adapter described as
/// an Apple GPU through Metal (wgpu reports 4..64 there) gets the 32-wide subgroup kernels
/// exactly where the probe on this device finds 32.
#[test]
fn subgroup_size_probe_and_the_metal_rule() {
    let _g = ENV.lock().unwrap();
    let Some(ctx) = default_ctx() else { return };
    let info = ctx.adapter_info().clone();
    let got = ecq::gpu::probe_subgroup_size(ctx.device(), ctx.queue());
    eprintln!("adapter: {}; probe: {got:?}", ctx.describe());
    if !ctx.device().features().contains(wgpu::Features::SUBGROUP) {
        assert_eq!(got, None);
        gpu_common::announce_unsupported("the subgroup-size probe: no Features::SUBGROUP");
        return;
    }
    let size = got.expect("a subgroup size");
    assert!(
        (info.subgroup_min_size..=info.subgroup_max_size).contains(&size),
        "{size} outside {}..{}",
        info.subgroup_min_size,
        info.subgroup_max_size
    );
    if info.subgroup_min_size == info.subgroup_max_size {
        assert_eq!(size, info.subgroup_min_size);
    }
    // this device described as an Apple GPU through wgpu's Metal backend
    let apple = wgpu::AdapterInfo {
        name: "Apple M2 Pro (stand-in)".into(),
        backend: wgpu::Backend::Metal,
        subgroup_min_size: 4,
        subgroup_max_size: 64,
        ..info.clone()
    };
    let reg = PipelineRegistry::for_device_probed(ctx.device(), ctx.queue(), &apple);
    assert_eq!(reg.subgroups32(), size == 32, "probe {size}");
    assert!(!PipelineRegistry::for_device(ctx.device(), &apple).subgroups32());
    assert_eq!(
        PipelineRegistry::for_device_probed(ctx.device(), ctx.queue(), &info).subgroups32(),
        ctx.registry().subgroups32()
    );
}

/// `ECQ_KERNELS=portable` gives a context of the portable kernels only (no 32-wide subgroup
/// kernels, no cooperative ones) on the same adapter; another value is an error naming it.
#[test]
fn ecq_kernels_portable_selects_the_portable_kernels() {
    let _g = ENV.lock().unwrap();
    let Some(ctx) = default_ctx() else { return };
    std::env::set_var("ECQ_KERNELS", "portable");
    let portable = GpuContext::with_cooperative_matrix();
    std::env::set_var("ECQ_KERNELS", "fastest");
    let bad = GpuContext::new();
    std::env::remove_var("ECQ_KERNELS");
    let portable = portable.expect("a portable context");
    assert_eq!(portable.adapter_name(), ctx.adapter_name());
    let reg = portable.registry();
    assert!(!reg.subgroups32() && !reg.cooperative_matrix());
    assert_eq!(reg.cpu_device(), ctx.registry().cpu_device());
    match bad {
        Err(GpuError::InvalidInput(msg)) => assert!(msg.contains("fastest"), "{msg}"),
        Err(e) => panic!("expected InvalidInput, got {e}"),
        Ok(c) => panic!("ECQ_KERNELS=fastest gave a context on {}", c.adapter_name()),
    }
    // the portable context runs: a small decode matches the CPU's
    let q: Vec<u8> = (0..9 * 64).map(|i| (i * 5 % 16) as u8).collect();
    let enc = encode(&q, 9, 64, 4, &EncodeOptions::default()).unwrap();
    let m = portable
        .upload_coded(CodedMatrixRef::from(&enc), None)
        .unwrap();
    assert_eq!(
        portable.decode_packed(&m).unwrap(),
        enc.decode_packed().unwrap()
    );
}

/// `ECQ_KERNELS=lanes` gives what a device whose subgroups are not 32 wide runs (AMD, Intel):
/// no 32-wide subgroup kernels, the lanes kernels at the width the adapter's smallest
/// subgroup size allows; `lanes:W` at width W. A window split and a byte-symbol matrix then
/// decode on the lanes kernel, equal to the CPU decode. A width outside 4, 8, 16, 32 or not a
/// number is an error naming it, and so is a width on a device without `Features::SUBGROUP`.
#[test]
fn ecq_kernels_lanes_selects_the_lanes_kernels() {
    use ecq::gpu::{DecodeOutput, SUBGROUP_LANE_WIDTHS};
    let _g = ENV.lock().unwrap();
    let Some(ctx) = default_ctx() else { return };
    let subgroup = ctx.device().features().contains(wgpu::Features::SUBGROUP);
    let run = |v: &str| {
        std::env::set_var("ECQ_KERNELS", v);
        let r = GpuContext::new();
        std::env::remove_var("ECQ_KERNELS");
        r
    };
    let lanes = run("lanes").expect("a lanes context");
    assert_eq!(
        lanes.registry().subgroup_lanes(),
        ctx.registry().subgroup_lanes()
    );
    assert_eq!(ctx.registry().subgroup_lanes().is_some(), subgroup);
    assert!(!lanes.registry().subgroups32() && !lanes.registry().cooperative_matrix());
    for bad in ["lanes:12", "lanes:", "lanes:eight"] {
        match run(bad) {
            Err(GpuError::InvalidInput(msg)) => assert!(msg.contains(bad), "{msg}"),
            r => panic!("ECQ_KERNELS={bad}: {:?}", r.map(|c| c.describe())),
        }
    }
    let Some(size) = ecq::gpu::probe_subgroup_size(ctx.device(), ctx.queue()) else {
        assert!(matches!(run("lanes:8"), Err(GpuError::Unsupported(_))));
        gpu_common::announce_unsupported("lanes kernels: no Features::SUBGROUP");
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let q: Vec<u8> = (0..6 * 1024).map(|_| rng.random_range(6..=10u8)).collect();
    let opts = EncodeOptions::default();
    let whole = encode(&q, 6, 1024, 4, &opts).unwrap();
    let window =
        ecq::rans::SplitMatrix::encode_window(&q, 6, 1024, &opts, ecq::rans::SplitOrder::RowPairs)
            .unwrap();
    for w in SUBGROUP_LANE_WIDTHS.into_iter().filter(|w| size % w == 0) {
        let c = run(&format!("lanes:{w}")).expect("a lanes:W context");
        assert_eq!(c.registry().subgroup_lanes(), Some(w));
        let m = c.upload_coded(CodedMatrixRef::from(&whole), None).unwrap();
        assert_eq!(
            m.decode_lanes_width(c.registry(), DecodeOutput::Packed),
            Some(w)
        );
        assert_eq!(
            c.decode_packed(&m).unwrap(),
            whole.decode_packed().unwrap(),
            "W={w}"
        );
        let m = c.upload_split(&window, None).unwrap();
        assert_eq!(
            m.decode_lanes_width(c.registry(), DecodeOutput::Packed),
            Some(w)
        );
        assert_eq!(
            c.decode_packed(&m).unwrap(),
            window.decode_packed().unwrap(),
            "W={w}"
        );
        // one byte per weight stays on the workgroup kernel
        assert_eq!(
            m.decode_lanes_width(c.registry(), DecodeOutput::BytePerWeight),
            None
        );
        assert_eq!(c.decode_symbols(&m).unwrap(), q, "W={w}");
    }
}

/// A driver whose subgroup operations do not match the size it reports gets no subgroup
/// kernel. lavapipe with `LP_NATIVE_VECTOR_WIDTH=1024` reports 32-wide subgroups and runs 16
/// lanes (Mesa 22.3.6): the 32-wide decode kernels then decoded wrong words without flagging a
/// chunk. The probe finds the operations broken there, so the context runs the portable
/// kernels and decodes right. Runs this test binary again with that setting (which Mesa reads
/// once a process); on other adapters the variable changes nothing and the child checks only
/// that the probe agrees with the report.
#[test]
fn subgroups_that_disagree_with_their_report_get_no_subgroup_kernels() {
    let _g = ENV.lock().unwrap();
    if default_ctx().is_none() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "lavapipe_1024_bit_child",
            "--nocapture",
        ])
        .env("LP_NATIVE_VECTOR_WIDTH", "1024")
        .output()
        .expect("the test binary runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

/// The child of `subgroups_that_disagree_with_their_report_get_no_subgroup_kernels`.
#[test]
#[ignore = "run by subgroups_that_disagree_with_their_report_get_no_subgroup_kernels"]
fn lavapipe_1024_bit_child() {
    let Some(ctx) = default_ctx() else { return };
    let info = ctx.adapter_info();
    let probed = ecq::gpu::probe_subgroup_size(ctx.device(), ctx.queue());
    eprintln!("adapter: {}; probe: {probed:?}", ctx.describe());
    if info.name.starts_with("llvmpipe") && info.subgroup_min_size == 32 {
        assert_eq!(probed, None, "lavapipe's 16 lanes reported as 32");
        assert!(!ctx.registry().subgroups32());
        assert_eq!(ctx.registry().subgroup_lanes(), None);
        // the report alone would have taken the broken kernels
        assert!(PipelineRegistry::for_device(ctx.device(), info).subgroups32());
    } else if info.subgroup_min_size == info.subgroup_max_size && probed.is_some() {
        assert_eq!(probed, Some(info.subgroup_min_size));
    }
    let q: Vec<u8> = (0..33 * 512)
        .map(|i| ((i * 7 + i / 5) % 16) as u8)
        .collect();
    let enc = encode(&q, 33, 512, 4, &EncodeOptions::default()).unwrap();
    let m = ctx.upload_coded(CodedMatrixRef::from(&enc), None).unwrap();
    assert_eq!(ctx.decode_packed(&m).unwrap(), enc.decode_packed().unwrap());
}

#[test]
fn from_device_and_registry_cache() {
    let _g = ENV.lock().unwrap();
    let Some(ctx) = default_ctx() else { return };
    // an application's own device: take the context's adapter again through wgpu directly
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env());
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .find(|a| a.get_info().name == ctx.adapter_name())
        .expect("same adapter");
    let info = adapter.get_info();
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .expect("device");
    let own = GpuContext::from_device(device, queue, info);
    assert!(own.registry().is_empty());
    let q: Vec<u8> = (0..9 * 64).map(|i| (i * 7 % 16) as u8).collect();
    let enc = encode(&q, 9, 64, 4, &EncodeOptions::default()).unwrap();
    let m = own.upload_coded(CodedMatrixRef::from(&enc), None).unwrap();
    assert_eq!(own.decode_symbols(&m).unwrap(), q);
    assert_eq!(own.registry().len(), 1);
    assert_eq!(own.decode_packed(&m).unwrap(), enc.decode_packed().unwrap());
    assert_eq!(
        own.registry().len(),
        1,
        "pipeline compiled once, then cached"
    );
    // a registry by itself, for lower-level use
    let reg = PipelineRegistry::new();
    let p1 = reg.get(
        own.device(),
        Kernel::QGemv,
        "main",
        &[("BITS", 4), ("GS", 64)],
    );
    let p2 = reg.get(
        own.device(),
        Kernel::QGemv,
        "main",
        &[("BITS", 8), ("GS", 64)],
    );
    assert!(p1.is_ok() && p2.is_ok());
    assert_eq!(reg.len(), 2);
    // an entry point that does not exist is an error, not a panic
    assert!(matches!(
        reg.get(own.device(), Kernel::RansDecode, "nope", &[]),
        Err(GpuError::Wgpu(_))
    ));
}

/// A buffer range binds where it lies inside its buffer, is not empty and starts at a multiple
/// of the device's storage offset alignment; launches taking ranges refuse others with an
/// error naming the range, before anything is recorded.
#[test]
fn buffer_ranges_are_checked() {
    let _g = ENV.lock().unwrap();
    let Some(ctx) = default_ctx() else { return };
    let device = ctx.device();
    let align = u64::from(device.limits().min_storage_buffer_offset_alignment);
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 * align,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let whole = BufferRange::from(&buf);
    assert_eq!((whole.offset(), whole.size()), (0, 4 * align));
    whole.check(device, "whole").unwrap();
    BufferRange::new(&buf, align, 3 * align)
        .check(device, "aligned")
        .unwrap();
    for (offset, size, what) in [
        (4, 64, "alignment"),
        (align, 4 * align, "bytes"),
        (0, 0, "bytes"),
        (u64::MAX - 3, 8, "bytes"),
    ] {
        match BufferRange::new(&buf, offset, size).check(device, "y") {
            Err(GpuError::InvalidInput(msg)) => {
                assert!(msg.starts_with("y: ") && msg.contains(what), "{msg}")
            }
            other => panic!("{offset}+{size}: expected InvalidInput, got {other:?}"),
        }
    }
    // a launch that takes ranges: the 8-bit activation pass
    let cols = 4096;
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: x8_bytes(cols),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let x = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 * cols as u64 + align,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let registry = ctx.registry();
    let ok = quantize_x8_dispatch(
        device,
        registry,
        BufferRange::new(&x, align, 4 * cols as u64),
        &out,
        cols,
        X8Order::Window,
    );
    assert!(ok.is_ok(), "{ok:?}");
    match quantize_x8_dispatch(
        device,
        registry,
        BufferRange::new(&x, 16, 4 * cols as u64),
        &out,
        cols,
        X8Order::Window,
    ) {
        Err(GpuError::InvalidInput(msg)) => assert!(msg.contains("alignment"), "{msg}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}
