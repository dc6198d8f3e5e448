// Device-to-device copy through the shader cores (vec4<u32> loads and stores, grid-stride
// loop): the bandwidth reference of examples/bench_gpu.rs beside copy_buffer_to_buffer (which
// may run on a DMA engine that is slower than the SMs).

struct Params {
    n_vec: u32,     // vec4<u32> to copy
    stride: u32,    // invocations in the whole dispatch
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    for (var i = gid.x; i < P.n_vec; i += P.stride) {
        dst[i] = src[i];
    }
}
