// Second pass of the indexed-form decode (after bf16_indexed_decode.wgsl, same uniform block):
// writes each escape's bf16 bits over its dense slot. The row's 32 threads take its escapes;
// two escapes can share an output word, so each clears and sets its half atomically (the two
// operations on different halves commute).

// import: indexed16

const TPR: u32 = 32u;         // threads per row
const RPW: u32 = 8u;          // rows per workgroup

@group(0) @binding(0) var<uniform> P: IndexedParams;
@group(0) @binding(1) var<storage, read> esc_rows: array<u32>;      // R + 1
@group(0) @binding(2) var<storage, read> esc: array<vec2<u32>>;     // escapes
@group(0) @binding(3) var<storage, read_write> out: array<atomic<u32>>;  // R * K / 2

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
    let e_end = esc_rows[row + 1u];
    for (var e = esc_rows[row] + lid % TPR; e < e_end; e += TPR) {
        let v = esc[e];
        let n = row * P.cols + v.x;
        let sh = 16u * (n % 2u);
        atomicAnd(&out[n / 2u], ~(0xFFFFu << sh));
        atomicOr(&out[n / 2u], v.y << sh);
    }
}
