//! `GpuContext`: adapter selection through `WGPU_ADAPTER_NAME`, `from_device` with an
//! application's own device, and the pipeline registry cache. Its own test binary because it
//! sets environment variables (the test functions run one after another through a mutex).

mod gpu_common;

use std::sync::Mutex;

use ecq::gpu::{CodedMatrixRef, GpuContext, GpuError, Kernel, PipelineRegistry};
use ecq::rans::{encode, EncodeOptions};

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
