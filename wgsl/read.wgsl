// A streaming read through the shader cores (vec4<u32> loads, grid-stride loop), nothing
// written: the time one dispatch takes to read a buffer once, the floor under any kernel that
// reads the same bytes in one dispatch (examples/bench_gpu.rs measures it for the plain 4-bit
// GEMV's weights, scales and activations: issue 5's first target). The loads are XORed
// together and the result is stored only if it equals a value the host never uploads (`magic`,
// over zeroed buffers), so the compiler must keep every load and the kernel writes nothing.

struct Params {
    n_vec: u32,     // vec4<u32> to read
    stride: u32,    // invocations in the whole dispatch
    magic: u32,     // nonzero; the buffers hold zeros
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> sink: array<vec4<u32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var i = gid.x; i < P.n_vec; i += P.stride) {
        acc ^= src[i];
    }
    if (all(acc == vec4<u32>(P.magic))) {
        sink[0] = acc;
    }
}
