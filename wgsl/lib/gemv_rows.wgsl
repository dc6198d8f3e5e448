// Shared by the bf16 GEMVs (bf16_plain_gemv.wgsl, bf16_indexed_gemv.wgsl), appended to them at
// load time: the reduction of a workgroup's partial sums into y. Uses the kernel's P.rows, y,
// TPR (threads per warp), WARPS (warps per workgroup), WG (= TPR * WARPS), ROWS and SPLIT.

var<workgroup> red: array<f32, 512>;  // WG partial sums for each of a warp's (up to) two rows

// Sums the partial sums of every thread, acc0 for its row `row` and acc1 for row + 1 (zero
// where the warp has one row), and writes y. Call from uniform control flow, once, at the end.
// Rows: warp w has row wg * WARPS * ROWS + w * ROWS (and the next with ROWS = 2); with SPLIT
// the warps 2p and 2p + 1 share rows wg * WARPS + 2p and the next.
fn reduce_rows_into_y(wg: u32, lid: u32, row: u32, acc0: f32, acc1: f32) {
    let l = lid % TPR;
    let warp = lid / TPR;
    if (SPLIT) {
        // row j of the workgroup (0..8) sums 64 slots: 32 threads of each of its two warps
        let j0 = (warp / 2u) * 2u;
        let slot = TPR * (warp % 2u) + l;
        red[64u * j0 + slot] = acc0;
        red[64u * (j0 + 1u) + slot] = acc1;
        workgroupBarrier();
        let j = warp;
        red[64u * j + l] += red[64u * j + l + TPR];
        workgroupBarrier();
        for (var s = TPR / 2u; s > 0u; s = s >> 1u) {
            if (l < s) {
                red[64u * j + l] += red[64u * j + l + s];
            }
            workgroupBarrier();
        }
        let r = wg * WARPS + j;
        if (l == 0u && r < P.rows) {
            y[r] = red[64u * j];
        }
        return;
    }
    red[lid] = acc0;
    red[WG + lid] = acc1;
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s = s >> 1u) {
        if (l < s) {
            red[lid] += red[lid + s];
            if (ROWS == 2u) {
                red[WG + lid] += red[WG + lid + s];
            }
        }
        workgroupBarrier();
    }
    if (l == 0u && row < P.rows) {
        y[row] = red[lid];
        if (ROWS == 2u && row + 1u < P.rows) {
            y[row + 1u] = red[WG + lid];
        }
    }
}
