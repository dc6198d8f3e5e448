// Activations into lane order (ecq::gpu::x_lane_order, which says why): vectors of K f32
// activations, each permuted on its own. One invocation per vec4 of the column order; piece
// u's vec4 c goes to 128 (u / 32) + c nb + u % 32 of its vector, nb = the pieces of u's run of
// 32 (fewer in a vector's last run). With TO_COLUMNS = 1 the inverse: each invocation fetches
// its column-order vec4 from there (ecq::gpu::x_column_order). Needs K % 16 == 0; the host
// checks it and the buffer sizes (`x_order_dispatch`).

override TO_COLUMNS: u32 = 0u;

struct Params {
    cols4: u32,  // vec4 a vector = K / 4
    total: u32,  // vec4 in all vectors
    wg_x: u32,   // workgroups along x of the 2-D dispatch
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * P.wg_x + wid.x) * 256u + lid;
    if (i >= P.total) {
        return;
    }
    let q = i % P.cols4;
    let u = q >> 2u;
    let run = u & ~31u;
    let nb = min(32u, (P.cols4 >> 2u) - run);
    let lane = (i - q) + (run << 2u) + (q & 3u) * nb + (u & 31u);
    if (TO_COLUMNS != 0u) {
        dst[i] = src[lane];
    } else {
        dst[lane] = src[i];
    }
}
