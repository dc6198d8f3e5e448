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
@group(0) @binding(1) var<storage, read> codes: array<vec2<u32>>;   // R * K / 16
@group(0) @binding(2) var<storage, read> raw: array<vec4<u32>>;     // R * K / 16
@group(0) @binding(3) var<storage, read_write> out: array<vec4<u32>>;  // R * K / 8

// Eight weights of one code word and two raw words: four words of two bf16 patterns.
fn oct(c: u32, r0: u32, r1: u32) -> vec4<u32> {
    return vec4<u32>(
        true_pair(pair_code(c, 0u), pair_raw(r0, 0u)),
        true_pair(pair_code(c, 1u), pair_raw(r0, 1u)),
        true_pair(pair_code(c, 2u), pair_raw(r1, 0u)),
        true_pair(pair_code(c, 3u), pair_raw(r1, 1u)),
    );
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
    let n16 = P.cols / 16u;
    let base = row * n16;
    for (var i = lid % TPR; i < n16; i += TPR) {
        let c = codes[base + i];
        let rw = raw[base + i];
        out[2u * (base + i)] = oct(c.x, rw.x, rw.y);
        out[2u * (base + i) + 1u] = oct(c.y, rw.z, rw.w);
    }
}
