// Rows of 32-bit words moved between buffers by a launch (ecq::gpu::copy_rows_dispatch): what
// the recorded layers (ecq::linear::GpuLinear) move in a call, activations into bindable or
// zero-padded slots and launch outputs into place, as launches, so that a whole call stays in
// the caller's compute pass (a pass a call cost ~8 µs a call on an H200, BENCHMARKS.md issue
// 5 step 93). Row r's words 0..width go from src[src_at + r src_stride + c] to
// dst[dst_at + r dst_stride + c]; its words width..fill are written zero. One invocation per
// written word; the host checks every index against the bound ranges.

struct Params {
    src_at: u32,
    src_stride: u32,
    dst_at: u32,
    dst_stride: u32,
    width: u32,  // words copied a row
    fill: u32,   // words written a row (width, then zeros)
    total: u32,  // rows * fill
    wg_x: u32,   // workgroups along x of the 2-D dispatch
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * P.wg_x + wid.x) * 256u + lid;
    if (i >= P.total) {
        return;
    }
    let r = i / P.fill;
    let c = i - r * P.fill;
    var v = 0u;
    if (c < P.width) {
        v = src[P.src_at + r * P.src_stride + c];
    }
    dst[P.dst_at + r * P.dst_stride + c] = v;
}
