// Shared by the bf16 GEMVs (bf16_plain_gemv.wgsl, bf16_indexed_gemv.wgsl), appended to them at
// load time: how a workgroup's warps share out rows and K, and the reduction of their partial
// sums into y. Uses the kernel's P.rows and y.

// Rows per warp, 1 or 2: with 2, each thread loads its x once for two rows, halving the x
// loads per weight (but halving the warps too).
override ROWS: u32 = 1u;
// With ROWS = 2: a pair of warps shares two rows, each warp taking every other piece of K of
// both, so x loads are halved without halving the warps (8 rows per workgroup, as with
// ROWS = 1). The host checks ROWS = 2.
override SPLIT: bool = false;
const TPR: u32 = 32u;         // threads per warp
const WARPS: u32 = 8u;        // warps per workgroup
const WG: u32 = 256u;         // = TPR * WARPS

// This thread's rows and pieces of K: (row, first piece, piece stride). The warp has rows
// `row` and, with ROWS = 2 or SPLIT, `row + 1`; a piece is whatever unit of K the kernel
// gives one thread per iteration.
fn warp_rows(wg: u32, lid: u32) -> vec3<u32> {
    let l = lid % TPR;
    let warp = lid / TPR;
    if (SPLIT) {
        return vec3<u32>(wg * WARPS + (warp / 2u) * 2u, l + TPR * (warp % 2u), 2u * TPR);
    }
    return vec3<u32>((wg * WARPS + warp) * ROWS, l, TPR);
}

var<workgroup> red: array<f32, 512>;  // WG partial sums for each of a warp's (up to) two rows

// Sums the partial sums of every thread, acc0 for its row `row` (warp_rows) and acc1 for
// row + 1 (zero where the warp has one row), and writes y. Call from uniform control flow,
// once, at the end.
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
