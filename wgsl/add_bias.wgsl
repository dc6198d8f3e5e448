// The bias of a linear layer added to its outputs on the GPU (ecq::gpu::add_bias_dispatch):
// rows of N f32 outputs, y[i] += bias[i % N]. One invocation per output; the f32 addition is
// the one the host does (`ecq::linear`'s `add_bias`), so both give the same bits.

struct Params {
    n: u32,      // outputs a row (the bias' length)
    total: u32,  // outputs in all rows
    wg_x: u32,   // workgroups along x of the 2-D dispatch
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * P.wg_x + wid.x) * 256u + lid;
    if (i >= P.total) {
        return;
    }
    y[i] = y[i] + bias[i % P.n];
}
