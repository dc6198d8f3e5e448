// Shared by the batched rANS kernels (rans_gemm.wgsl, rans_gemm_blocked.wgsl), after
// lib/gemm_slice.wgsl: writing a finished row set. Uses the importing kernel's `P` (y_stride,
// row_base) and `Y`.

// Stores one activation row m's results for the workgroup's 4 matrix rows `rowv` (those in
// `okv`; rows are the band's, Y's are the matrix's).
fn store_row(m: u32, acc: vec4<f32>, rowv: vec4<u32>, okv: vec4<bool>) {
    let yb = m * P.y_stride + P.row_base;
    if (okv.x) { Y[yb + rowv.x] = acc.x; }
    if (okv.y) { Y[yb + rowv.y] = acc.y; }
    if (okv.z) { Y[yb + rowv.z] = acc.z; }
    if (okv.w) { Y[yb + rowv.w] = acc.w; }
}

// Sums the parts of the invocation's activation rows m0 + j rstride (j < 4, below m_hi) and
// stores them (sum_parts of lib/gemm_slice.wgsl: every invocation of the workgroup calls this
// together, after the last reads of the slice in wbuf).
fn store_rows(
    acc: array<vec4<f32>, 4>,
    m0: u32,
    rstride: u32,
    m_hi: u32,
    lid: u32,
    part: u32,
    rowv: vec4<u32>,
    okv: vec4<bool>,
) {
    var a = acc;
    for (var j = 0u; j < 4u; j++) {
        let s = sum_parts(a[j], lid, part);
        let m = m0 + j * rstride;
        if (part == 0u && m < m_hi) {
            store_row(m, s, rowv, okv);
        }
    }
}
