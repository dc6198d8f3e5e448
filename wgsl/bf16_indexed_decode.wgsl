// Decode of the indexed bf16 form (layout in wgsl/lib/indexed16.wgsl) to bf16 bit patterns:
// out word n = weights 2n (low half) and 2n + 1 (high half), row-major. Escapes come out as
// their dense slot's value; bf16_indexed_patch.wgsl, dispatched after this kernel, writes
// them.
//
// One workgroup = RPW rows x 32 threads; a thread turns one unit of 16 weights into two
// vec4<u32> stores per iteration: in this layout a rebuilt pair is already an output word.

// import: indexed16

const TPR: u32 = 32u;         // threads per row
const RPW: u32 = 8u;          // rows per workgroup

@group(0) @binding(0) var<uniform> P: IndexedParams;
@group(0) @binding(1) var<storage, read> words: array<vec2<u32>>;     // R * K * 3 / 16
@group(0) @binding(2) var<storage, read_write> out: array<vec4<u32>>;  // R * K / 8

fn octet(a: u32, b: u32, c: u32) -> vec4<u32> {
    let t = octet_targets(a, b, c);
    return vec4<u32>(true_pair(t.x), true_pair(t.y), true_pair(t.z), true_pair(t.w));
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let row = wg * RPW + lid / TPR;
    if (row >= P.rows) {
        return;
    }
    let n = P.cols / 16u;
    for (var u = lid % TPR; u < n; u += TPR) {
        let at = unit_words(row, u, n);
        let a = words[at.x];
        let b = words[at.x + at.y];
        let c = words[at.x + 2u * at.y];
        let o = 2u * (row * n + u);
        out[o] = octet(a.x, b.x, c.x);
        out[o + 1u] = octet(a.y, b.y, c.y);
    }
}
