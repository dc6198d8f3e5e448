// The partial sums of a split-K GEMM added to its outputs in split order (issue 5, step 101):
// y[t, r] = ((y[t, r] + part[0][t, r]) + part[1][t, r]) + ..., for the m x R outputs of
// `qgemm_tiled.wgsl`'s and `qgemm_coop.wgsl`'s `main_split` (split 0 wrote y, split s > 0
// part[s - 1], rows of R; step 103 for the latter). One invocation per output. Every index
// is below P.total (tested) or a partial of the P.parts the host sized `part` for
// (`GpuQuantizedMatrix::gemm_tiled_split_dispatch`, `gemm_coop_split_dispatch`).

struct Params {
    rows: u32,         // R, outputs a row
    total: u32,        // m * R
    parts: u32,        // splits - 1
    part_stride: u32,  // m * R
    y_stride: u32,     // outputs between activation rows in y
    wg_x: u32,         // workgroups along x of the 2-D dispatch
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
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
    let at = (i / P.rows) * P.y_stride + i % P.rows;
    var v = y[at];
    for (var p = 0u; p < P.parts; p++) {
        v += part[p * P.part_stride + i];
    }
    y[at] = v;
}
